# scsi-fs: an ext4 file system made, filled and unmounted through
# parastor's TCMU LUN (the Linux initiator's own block I/O: discards from
# mkfs, journal writes, flushes), then checked after parastor stopped: the
# image read back with `parastor disk read` passes e2fsck and holds every
# file byte for byte.
size=$((64 * 1024 * 1024))
img=/tmp/vmtest/fs.img
readback=/tmp/vmtest/fs-readback.img
cleanup() {
    umount /mnt 2>/dev/null || true
    parastor_tcmu_stop_all
    rm -f $img $readback
}
cleanup_on_exit

truncate -s $size $img
parastor_tcmu_start vmtest-fs "file:$img" --serial VMTFS01
disk=$PARASTOR_DISK
mkfs.ext4 -q -F /dev/$disk
mount -t ext4 /dev/$disk /mnt
mkdir -p /mnt/dir /tmp/vmtest/fs-src
head -c $((3 * 1024 * 1024 + 123)) /dev/urandom >/mnt/big.bin
echo "parastor scsi-fs" >/mnt/hello.txt
i=0
while [ $i -lt 64 ]; do
    head -c $((i * 97 + 1)) /dev/urandom >/mnt/dir/f$i
    i=$((i + 1))
done
(cd /mnt && find . -type f | sort | xargs sha256sum) >/tmp/vmtest/fs.sums
files=$(wc -l </tmp/vmtest/fs.sums)
sync
umount /mnt
parastor_tcmu_stop vmtest-fs

parastor disk read "file:$img" 0 $((size / 512)) >$readback
e2fsck -fn $readback >/tmp/vmtest/fsck.out 2>&1 || {
    cat /tmp/vmtest/fsck.out
    fail "e2fsck found problems in the image parastor reads back"
}
mount -t ext4 -o loop,ro $readback /mnt
(cd /mnt && sha256sum -c -s /tmp/vmtest/fs.sums) || fail "files differ in the image read back"
umount /mnt
log "ok: $files files intact, e2fsck clean"
figure files $files
