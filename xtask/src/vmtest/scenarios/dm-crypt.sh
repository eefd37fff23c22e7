# dm-crypt: parastor's crypt decorator and the kernel's dm-crypt
# (aes-xts-plain64, a 512-bit key = data key + tweak key) read each other's
# images, at 512- and 4096-byte sectors. parastor writes, dm-crypt reads;
# then dm-crypt writes, parastor reads.
#
# parastor's tweak is the LBA in the disk's own sectors. dm-crypt counts its
# IV in 512-byte units whatever its sector size, unless `iv_large_sectors`
# (cryptsetup --iv-large-sectors, plain mode only) says otherwise: the
# 4096-byte case needs it, and the scenario checks that without it the
# plaintext differs.

dir=/tmp/vmtest/crypt
mkdir -p $dir
key=$dir/key
head -c 64 /dev/urandom >$key
size=$((4 * 1024 * 1024))
trap 'cryptsetup close vmtest-crypt 2>/dev/null || true' EXIT

# open SECTOR IMAGE [EXTRA...]: the image as /dev/mapper/vmtest-crypt.
open() {
    sector=$1 image=$2
    shift 2
    cryptsetup open --type plain --cipher aes-xts-plain64 --key-size 512 \
        --key-file $key --sector-size $sector "$@" $image vmtest-crypt
}

for sector in 512 4096; do
    if [ $sector = 512 ]; then spec=file:; else spec=file@$sector:; fi
    image=$dir/image-$sector
    plain=$dir/plain-$sector
    sectors=$((size / sector))
    rm -f $image
    truncate -s $size $image
    head -c $size /dev/urandom >$plain

    # parastor writes, dm-crypt reads.
    parastor disk write "crypt:$key:$spec$image" 0 <$plain
    cmp -s $plain $image && fail "$sector: the image holds the plaintext"
    extra=
    [ $sector = 4096 ] && extra=--iv-large-sectors
    open $sector $image $extra
    cmp /dev/mapper/vmtest-crypt $plain ||
        fail "$sector: dm-crypt does not read what parastor wrote"
    cryptsetup close vmtest-crypt
    log "ok: $sector-byte sectors: dm-crypt reads parastor's image"
    if [ $sector = 4096 ]; then
        open $sector $image
        ! cmp -s /dev/mapper/vmtest-crypt $plain ||
            fail "4096: without --iv-large-sectors dm-crypt should read other bytes"
        cryptsetup close vmtest-crypt
        log "ok: 4096-byte sectors need --iv-large-sectors (512-byte IV units otherwise)"
    fi

    # dm-crypt writes, parastor reads.
    head -c $size /dev/urandom >$plain
    open $sector $image $extra
    dd if=$plain of=/dev/mapper/vmtest-crypt bs=1M conv=fsync 2>/dev/null
    cryptsetup close vmtest-crypt
    parastor disk read "crypt:$key:$spec$image" 0 $sectors >$dir/read-$sector
    cmp $dir/read-$sector $plain || fail "$sector: parastor does not read what dm-crypt wrote"
    log "ok: $sector-byte sectors: parastor reads dm-crypt's image"
    figure "sector$sector" ok
    rm -f $image $plain $dir/read-$sector
done
figure bytes $size
