# scsi-conformance: libiscsi's SCSI conformance suite (iscsi-test-cu
# --dataloss over SG_IO) against parastor's SCSI adapter served through
# TCMU, on a RAM disk (mem:) and on a file (file:, on tmpfs), both at once
# (two LUNs, two suites: the guest's two vCPUs are shared).
#
# Pass rule: parastor fails no test that the kernel's own fileio backstore
# does not fail. The kernel's outcomes are stored
# (/vmtest/data/kernel-conformance.tests, from Debian's 6.1 kernel; the
# `kernel-fileio` scenario re-derives them and shows any difference):
# running the kernel's suite here too would cost a third more guest time.
# REGRESSION lines name any such test; GAIN lines the tests parastor passes
# fully that the kernel failed or skipped.
size=$((64 * 1024 * 1024))
img=/tmp/vmtest/conformance-file.img
cleanup() {
    parastor_tcmu_stop_all
    rm -f $img
}
cleanup_on_exit

cp /vmtest/data/kernel-conformance.tests /tmp/vmtest/conformance-kernel.tests
set -- $(cut -d' ' -f1 /tmp/vmtest/conformance-kernel.tests | sort | uniq -c | awk '{ printf "%s=%s ", $2, $1 }')
log "kernel fileio reference (stored): $*"

parastor_tcmu_start vmtest-mem "mem:$size"
mem_sg=$PARASTOR_SG
truncate -s $size $img
parastor_tcmu_start vmtest-file "file:$img"
file_sg=$PARASTOR_SG

log "running the suite on mem (/dev/$mem_sg) and file (/dev/$file_sg)"
conformance_exec mem $mem_sg &
mem_job=$!
conformance_exec file $file_sg &
file_job=$!
wait $mem_job $file_job
parastor_tcmu_stop vmtest-mem
parastor_tcmu_stop vmtest-file

regressions=0
for backing in mem file; do
    conformance_report $backing
    conformance_compare kernel $backing
    figure ${backing}_passed $CONF_PASSED
    figure ${backing}_skipped $CONF_SKIPPED
    figure ${backing}_failed $CONF_FAILED
    figure ${backing}_cunit_passed $CONF_CUNIT_PASSED
    figure ${backing}_regressions $CONF_REGRESSIONS
    figure ${backing}_gains $CONF_GAINS
    regressions=$((regressions + CONF_REGRESSIONS))
done
[ $regressions -eq 0 ] ||
    fail "$regressions test(s) the kernel backstore does not fail failed on parastor (REGRESSION lines)"
