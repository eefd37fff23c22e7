# scsi-conformance: libiscsi's SCSI conformance suite (iscsi-test-cu
# --dataloss over SG_IO) against parastor's SCSI adapter served through
# TCMU, on a RAM disk (mem:) and on a file (file:, on tmpfs).
#
# Pass rule: parastor fails no test that the kernel's own fileio backstore
# does not fail, computed in this boot: kernel-fileio's results when it ran
# before (it is first in the registry), else this scenario runs the kernel
# backstore itself. REGRESSION lines name any such test; GAIN lines the
# tests parastor passes fully that the kernel failed or skipped.
size=$((64 * 1024 * 1024))
img=/tmp/vmtest/conformance.img
cleanup() {
    parastor_tcmu_stop_all
    kernel_fileio_remove kconf
    rm -f $img /tmp/vmtest/kconf.img
}
cleanup_on_exit

if [ ! -s /tmp/vmtest/conformance-kernel.tests ]; then
    log "no kernel-fileio results in this boot: running the kernel backstore first"
    devices=$(kernel_fileio_create kconf /tmp/vmtest/kconf.img $size)
    set -- $devices
    conformance_run kernel $2
    kernel_fileio_remove kconf
    rm -f /tmp/vmtest/kconf.img
fi
set -- $(cut -d' ' -f1 /tmp/vmtest/conformance-kernel.tests | sort | uniq -c | awk '{ printf "%s=%s ", $2, $1 }')
log "kernel fileio reference: $*"

regressions=0
for backing in mem file; do
    case $backing in
    mem) spec=mem:$size ;;
    file)
        rm -f $img
        truncate -s $size $img
        spec=file:$img
        ;;
    esac
    parastor_tcmu_start vmtest-conf "$spec"
    conformance_run $backing $PARASTOR_SG
    parastor_tcmu_stop vmtest-conf
    conformance_compare kernel $backing
    figure ${backing}_passed $CONF_PASSED
    figure ${backing}_skipped $CONF_SKIPPED
    figure ${backing}_failed $CONF_FAILED
    figure ${backing}_regressions $CONF_REGRESSIONS
    figure ${backing}_gains $CONF_GAINS
    regressions=$((regressions + CONF_REGRESSIONS))
done
[ $regressions -eq 0 ] ||
    fail "$regressions test(s) the kernel backstore does not fail failed on parastor (REGRESSION lines)"
