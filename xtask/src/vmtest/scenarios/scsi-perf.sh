# scsi-perf: fio 4 KiB random reads (libaio, O_DIRECT) at queue depth 1 and
# 32 on parastor's TCMU LUN and on the kernel's own fileio backstore, both
# over a file on tmpfs, in the same boot. Informative: the figures are the
# IOPS of each and parastor's ratio to the kernel (ratio > 1: parastor is
# faster). It fails only if fio does not run.
size=$((128 * 1024 * 1024))
seconds=8
pimg=/tmp/vmtest/perf-parastor.img
kimg=/tmp/vmtest/perf-kernel.img
cleanup() {
    parastor_tcmu_stop_all
    kernel_fileio_remove kperf
    rm -f $pimg $kimg
}
cleanup_on_exit

# Both files fully allocated with the same bytes.
dd if=/dev/zero of=$kimg bs=1M count=$((size / 1024 / 1024)) 2>/dev/null
cp $kimg $pimg
devices=$(kernel_fileio_create kperf $kimg $size)
set -- $devices
kdisk=$1
parastor_tcmu_start vmtest-perf "file:$pimg"
pdisk=$PARASTOR_DISK

for qd in 1 32; do
    kernel=$(fio_randread_iops $kdisk $qd $seconds)
    parastor=$(fio_randread_iops $pdisk $qd $seconds)
    ratio=$(awk "BEGIN { printf \"%.2f\", $parastor / $kernel }")
    log "QD$qd: parastor $parastor IOPS, kernel fileio $kernel IOPS, ratio $ratio"
    figure parastor_qd$qd $parastor
    figure kernel_qd$qd $kernel
    figure ratio_qd$qd $ratio
done
