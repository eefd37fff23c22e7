# scsi-conformance: libiscsi's SCSI conformance suite (iscsi-test-cu
# --dataloss over SG_IO) against parastor's SCSI adapter served through
# TCMU, on a RAM disk (mem:) and on a file (file:, on tmpfs), and against
# the kernel's own fileio backstore as the reference: three LUNs, three
# suites at once (the suite's time is mostly waiting for the target, and a
# TCMU round trip under TCG takes milliseconds).
#
# Pass rule: parastor fails no test that the kernel's backstore does not
# fail in this boot. REGRESSION lines name any such test; GAIN lines the
# tests parastor passes fully that the kernel failed or skipped.
size=$((64 * 1024 * 1024))
img=/tmp/vmtest/conformance-file.img
kimg=/tmp/vmtest/conformance-kernel.img
cleanup() {
    parastor_tcmu_stop_all
    kernel_fileio_remove kconf
    rm -f $img $kimg
}
cleanup_on_exit

devices=$(kernel_fileio_create kconf $kimg $size)
set -- $devices
kernel_sg=$2
parastor_tcmu_start vmtest-mem "mem:$size"
mem_sg=$PARASTOR_SG
truncate -s $size $img
parastor_tcmu_start vmtest-file "file:$img"
file_sg=$PARASTOR_SG

log "running the suite on kernel (/dev/$kernel_sg), mem (/dev/$mem_sg), file (/dev/$file_sg)"
conformance_exec kernel $kernel_sg &
kernel_job=$!
conformance_exec mem $mem_sg &
mem_job=$!
conformance_exec file $file_sg &
file_job=$!
wait $kernel_job $mem_job $file_job
parastor_tcmu_stop vmtest-mem
parastor_tcmu_stop vmtest-file

conformance_report kernel
figure kernel_passed $CONF_PASSED
figure kernel_skipped $CONF_SKIPPED
figure kernel_failed $CONF_FAILED
figure kernel_cunit_passed $CONF_CUNIT_PASSED
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
