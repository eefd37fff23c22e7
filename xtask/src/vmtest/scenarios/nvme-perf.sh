# nvme-perf: 4 KiB random reads at QD1 and QD32 on QEMU's NVMe namespace 1,
# first through the kernel's nvme driver (fio, libaio, O_DIRECT), then
# through parastor's driver over VFIO (`parastor nvme-bench`, buffers in
# memory attached at IOVA = GPA). Informative: TCG makes both slow; the
# figures are the two sides and their ratio in the same boot.

seconds=3
nvme_function
# The kernel's driver first (nvme-vfio leaves the function bound to nvme).
[ "$(basename "$(readlink $fn/driver)")" = nvme ] || bind nvme
dev=$(ns_dev 1) || fail "no block device for namespace 1"
kernel_qd1=$(fio_randread_iops ${dev#/dev/} 1 $seconds)
kernel_qd32=$(fio_randread_iops ${dev#/dev/} 32 $seconds)

bind vfio-pci
parastor nvme-bench --pci $addr --nsid 1 --seconds $seconds --depth 1,32 \
    >/tmp/vmtest/nvme-bench.out 2>&1 || {
    cat /tmp/vmtest/nvme-bench.out
    fail "parastor nvme-bench failed"
}
cat /tmp/vmtest/nvme-bench.out
bind nvme

for qd in 1 32; do
    parastor=$(sed -n "s/^nvme-bench: qd$qd iops=\([0-9]*\).*/\1/p" /tmp/vmtest/nvme-bench.out)
    [ -n "$parastor" ] && [ "$parastor" -gt 0 ] || fail "nvme-bench gave no QD$qd figure"
    eval kernel=\$kernel_qd$qd
    ratio=$(echo "$parastor $kernel" | awk '{ printf "%.2f", $1 / $2 }')
    log "QD$qd: parastor $parastor IOPS, kernel $kernel IOPS (ratio $ratio)"
    figure parastor_qd$qd $parastor
    figure kernel_qd$qd $kernel
    figure ratio_qd$qd $ratio
done
