# nvme-vfio: parastor's NVMe driver over QEMU's NVMe controller through
# VFIO (the emulated VT-d), checked against the kernel's own nvme driver on
# the same device.
#
# 1. The kernel's nvme driver writes random data to both namespaces
#    (nsid 1: 512-byte LBAs, nsid 2: 4096-byte LBAs), and data that
#    parastor will deallocate.
# 2. The function is rebound to vfio-pci; `parastor nvme-check` brings the
#    controller up, checks NN and the LBA sizes, reads the kernel's data
#    back, writes its own, deallocates (DSM), flushes, resets the
#    controller and the function, and reads its data back after each.
#    `parastor nvme-diff` then runs its command script against this
#    controller and against parastor's emulator and compares (it writes
#    only above the data checked here).
# 3. The function is rebound to nvme; the kernel reads parastor's data and
#    the deallocated range and compares.
# 4. Any IOMMU (DMAR) fault in the kernel log fails the scenario: QEMU
#    completes a DMA to an unmapped address with success status.

dir=/tmp/vmtest/nvme-vfio
mkdir -p $dir

nvme_function

# Bytes at byte offset $2 of device $1, $3 bytes, to file $4.
read_dev() {
    dd if=$1 of=$4 bs=4096 skip=$(($2 / 4096)) count=$(($3 / 4096)) 2>/dev/null
}

mib=$((1024 * 1024))
for f in k1 k2 p1 p2 z1; do
    head -c $mib /dev/urandom >$dir/$f
done

# 1. The kernel writes.
dev1=$(ns_dev 1) || fail "no block device for namespace 1"
dev2=$(ns_dev 2) || fail "no block device for namespace 2"
expect_eq "namespace 1 LBA size" "$(cat /sys/block/${dev1#/dev/}/queue/logical_block_size)" 512
expect_eq "namespace 2 LBA size" "$(cat /sys/block/${dev2#/dev/}/queue/logical_block_size)" 4096
# k1 at byte 0 of each namespace, z1 (to be deallocated) at 4 MiB of ns 1.
dd if=$dir/k1 of=$dev1 bs=64k conv=fsync 2>/dev/null
dd if=$dir/k2 of=$dev2 bs=64k conv=fsync 2>/dev/null
dd if=$dir/z1 of=$dev1 bs=64k seek=64 conv=fsync 2>/dev/null
log "kernel wrote 3 MiB"

# 2. parastor's driver through VFIO.
bind vfio-pci
wait_for_file /dev/vfio/vfio 5 || fail "no /dev/vfio/vfio"
start=$(uptime_seconds)
parastor nvme-check --pci $addr --serial deadbeef --nn 256 --namespaces 1,2 --lba-size 1:512 --lba-size 2:4096 \
    --expect 1:0:$dir/k1 --expect 2:0:$dir/k2 \
    --write 1:4096:$dir/p1 --write 2:512:$dir/p2 \
    --deallocate 1:8192:2048 >$dir/check.out 2>&1 || {
    cat $dir/check.out
    fail "parastor nvme-check failed"
}
cat $dir/check.out
end=$(uptime_seconds)
figure check_s "$(echo "$start $end" | awk '{ printf "%.1f", $2 - $1 }')"
grep -q "nvme-check: ok" $dir/check.out || fail "nvme-check printed no ok line"

# The differential: one command script against QEMU's controller and
# against parastor's emulator in process, completions compared.
parastor nvme-diff --pci $addr >$dir/diff.out 2>&1 || {
    cat $dir/diff.out
    fail "parastor nvme-diff: the emulator differs from QEMU"
}
cat $dir/diff.out
grep -q "nvme-diff: ok" $dir/diff.out || fail "nvme-diff printed no ok line"
figure diff_commands "$(sed -n 's/.*nvme-diff: ok: \([0-9]*\) commands.*/\1/p' $dir/diff.out)"

# 3. The kernel reads parastor's data back.
bind nvme
dev1=$(ns_dev 1) || fail "no block device for namespace 1 after rebinding"
dev2=$(ns_dev 2) || fail "no block device for namespace 2 after rebinding"
read_dev $dev1 $((2 * mib)) $mib $dir/p1.back
read_dev $dev2 $((2 * mib)) $mib $dir/p2.back
cmp $dir/p1 $dir/p1.back || fail "namespace 1: the kernel reads other data than parastor wrote"
cmp $dir/p2 $dir/p2.back || fail "namespace 2: the kernel reads other data than parastor wrote"
read_dev $dev1 0 $mib $dir/k1.back
cmp $dir/k1 $dir/k1.back || fail "namespace 1: the kernel's own data changed"
log "ok: the kernel reads parastor's writes on both namespaces"
if grep -q "namespace 1: .* unmap zeroes" $dir/check.out; then
    read_dev $dev1 $((4 * mib)) $mib $dir/z1.back
    head -c $mib /dev/zero | cmp - $dir/z1.back ||
        fail "namespace 1: the deallocated range does not read as zeros (DLFEAT says it does)"
    log "ok: the deallocated range reads as zeros"
fi

# 4. No IOMMU faults.
if dmesg | grep -E "DMAR: \[DMA|DMAR: DRHD: handling fault" | grep -q fault; then
    dmesg | grep DMAR >&2
    fail "IOMMU (DMAR) faults in the kernel log"
fi
log "ok: no DMAR faults"
