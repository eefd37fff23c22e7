# scsi-tools: sg3_utils (and udev's scsi_id) against parastor's TCMU LUN,
# each answer checked against the disk's parameters: size, block size, the
# identity strings given on the command line; reservations between two
# initiators (two paths); UNIT ATTENTION and the kernel's rescan after a
# resize; a DVD drive's media going in and out.
#
# sg3_utils' exit statuses used: 0 good, 2 NOT READY, 6 UNIT ATTENTION,
# 14 MISCOMPARE, 24 RESERVATION CONFLICT.
vendor=PARASTOR
product=VMTEST-DISK
revision=0.1
serial=VMT-0001
size=$((64 * 1024 * 1024))
grown=$((128 * 1024 * 1024))
dir=/tmp/vmtest/tools
cleanup() {
    parastor_tcmu_stop_all
    rm -rf $dir
}
cleanup_on_exit
mkdir -p $dir

# run VAR CMD...: runs CMD, its output (stdout and stderr) in $VAR and its
# exit status in $rc, without tripping `set -e`.
run() {
    var=$1
    shift
    rc=0
    eval "$var=\$(\"\$@\" 2>&1)" || rc=$?
}

# expect_rc WHAT WANT: fails unless $rc is WANT.
expect_rc() {
    [ "$rc" = "$2" ] || fail "$1: exit status $rc, expected $2"
}

# read_blocks SG LBA COUNT FILE: COUNT 512-byte blocks from LBA into FILE
# (a new file: sg_dd does not truncate).
read_blocks() {
    rm -f $4
    sg_dd if=$1 of=$4 bs=512 skip=$2 count=$3 2>/dev/null
}

parastor_tcmu_start vmtest-tools "mem:$size" --vendor $vendor --product $product \
    --revision $revision --serial $serial --paths 2 --control /tmp/vmtest/vmtest-tools.ctl
set -- $PARASTOR_DEVICES
[ $# -eq 4 ] || fail "--paths 2 should give two devices, got: $PARASTOR_DEVICES"
disk=$1 sg=/dev/$2 disk2=$3 sg2=/dev/$4

# --- INQUIRY and VPD pages -------------------------------------------------
run out sg_inq $sg
expect_rc "sg_inq" 0
expect_contains "sg_inq" "$out" "Peripheral device type: disk"
expect_contains "sg_inq" "$out" "Vendor identification: $vendor"
expect_contains "sg_inq" "$out" "Product identification: $product"
expect_contains "sg_inq" "$out" "Product revision level: $revision"
run out sg_inq -p 0x00 $sg
expect_rc "sg_inq -p 0x00" 0
for page in 0x80 0x83 0xb0 0xb1 0xb2; do
    expect_contains "sg_inq -p 0x00" "$out" "$page"
    run page_out sg_inq -p $page $sg
    expect_rc "sg_inq -p $page" 0
done
run out sg_inq -p 0x80 $sg
expect_contains "sg_inq -p 0x80" "$out" "Unit serial number: $serial"
run out sg_vpd -p sv $sg
expect_rc "sg_vpd -p sv" 0
run out sg_vpd -p bl $sg
expect_rc "sg_vpd -p bl (0xb0)" 0
expect_contains "sg_vpd -p bl" "$out" "Maximum unmap LBA count"
run out sg_vpd -p bdc $sg
expect_rc "sg_vpd -p bdc (0xb1)" 0
run out sg_vpd -p lbpv $sg
expect_rc "sg_vpd -p lbpv (0xb2)" 0
expect_contains "sg_vpd -p lbpv" "$out" "Unmap command supported (LBPU): 1"
run designators sg_vpd -p di $sg
expect_rc "sg_vpd -p di (0x83)" 0

# --- what udev would name /dev/disk/by-id/* ---------------------------------
run ids /lib/udev/scsi_id --whitelisted --export --device=/dev/$disk
expect_rc "scsi_id" 0
echo "$ids" | sed 's/^/    /'
idval() { echo "$1" | sed -n "s/^$2=//p"; }
expect_eq "scsi_id ID_VENDOR" "$(idval "$ids" ID_VENDOR)" $vendor
expect_eq "scsi_id ID_MODEL" "$(idval "$ids" ID_MODEL)" $product
expect_eq "scsi_id ID_REVISION" "$(idval "$ids" ID_REVISION)" $revision
expect_eq "scsi_id ID_SCSI_SERIAL" "$(idval "$ids" ID_SCSI_SERIAL)" $serial
id_serial=$(idval "$ids" ID_SERIAL)
wwn=$(idval "$ids" ID_WWN_WITH_EXTENSION)
[ -n "$id_serial" ] && [ -n "$wwn" ] || fail "scsi_id gave no ID_SERIAL / ID_WWN"
# The WWN is VPD 0x83's NAA designator, as sg_vpd shows it.
expect_contains "sg_vpd -p di" "$(echo "$designators" | tr A-F a-f)" \
    "$(echo "$wwn" | tr A-F a-f)"
run ids2 /lib/udev/scsi_id --whitelisted --export --device=/dev/$disk2
expect_eq "the second path's ID_SERIAL (same LUN)" "$(idval "$ids2" ID_SERIAL)" "$id_serial"
figure by_id "scsi-$id_serial"
figure wwn "$wwn"

# --- capacity ---------------------------------------------------------------
run out sg_readcap -l $sg
expect_rc "sg_readcap -l" 0
expect_contains "sg_readcap -l" "$out" "Number of logical blocks=$((size / 512))"
expect_contains "sg_readcap -l" "$out" "Logical block length=512 bytes"
lbprz=$(echo "$out" | sed -n 's/.*lbprz=\([01]\).*/\1/p')
expect_eq "/sys/block/$disk/size" "$(cat /sys/block/$disk/size)" $((size / 512))

# --- WRITE SAME, UNMAP, COMPARE AND WRITE ------------------------------------
head -c 512 /dev/urandom >$dir/p
cat $dir/p $dir/p $dir/p $dir/p $dir/p $dir/p $dir/p $dir/p >$dir/p8
run out sg_write_same --lba=100 --num=8 --in=$dir/p $sg
expect_rc "sg_write_same --lba=100 --num=8" 0
read_blocks $sg 100 8 $dir/r
cmp $dir/r $dir/p8 || fail "WRITE SAME did not repeat the block over LBAs 100..107"
log "ok: WRITE SAME"
run out sg_write_same --16 --lba=8 --num=8 --in=$dir/p $sg
expect_rc "sg_write_same --16" 0
run out sg_unmap --force --lba=8 --num=8 $sg
expect_rc "sg_unmap --force" 0
if [ "$lbprz" = 1 ]; then
    read_blocks $sg 8 8 $dir/r
    head -c 4096 /dev/zero | cmp - $dir/r || fail "LBPRZ=1 but unmapped blocks do not read as zeros"
    log "ok: UNMAP (unmapped blocks read as zeros, LBPRZ=1)"
else
    log "ok: UNMAP (LBPRZ=0: unmapped contents unspecified)"
fi
head -c 512 /dev/urandom >$dir/q
cat $dir/p $dir/q >$dir/cw
run out sg_compare_and_write --in=$dir/cw --lba=100 --num=1 $sg
expect_rc "sg_compare_and_write (matching)" 0
read_blocks $sg 100 1 $dir/r
cmp $dir/r $dir/q || fail "COMPARE AND WRITE did not write its data"
run out sg_compare_and_write --in=$dir/cw --lba=100 --num=1 $sg
expect_rc "sg_compare_and_write (miscompare)" 14
read_blocks $sg 100 1 $dir/r
cmp $dir/r $dir/q || fail "a miscompare changed the block"
log "ok: COMPARE AND WRITE"

# --- REPORT SUPPORTED OPERATION CODES (sg_opcodes) ---------------------------
run out sg_opcodes $sg
expect_rc "sg_opcodes" 0
for name in "Read(10)" "Write(10)" "Read(16)" "Write(16)" "Unmap" "Write same(16)" \
    "Compare and write" "Persistent reserve in" "Persistent reserve out"; do
    echo "$out" | grep -qiF "$name" || fail "sg_opcodes does not list $name: $out"
done
log "ok: sg_opcodes lists the commands used here"

# --- persistent reservations between the two paths ---------------------------
run out sg_persist --out --register --param-sark=0x1111 $sg
expect_rc "PR register (path 1)" 0
run out sg_persist --out --register --param-sark=0x2222 $sg2
expect_rc "PR register (path 2)" 0
run out sg_persist --in --read-keys $sg
expect_contains "PR read keys" "$out" "0x1111"
expect_contains "PR read keys" "$out" "0x2222"
run out sg_persist --out --reserve --param-rk=0x1111 --prout-type=1 $sg
expect_rc "PR reserve, Write Exclusive (path 1)" 0
run out sg_persist --in --read-reservation $sg2
expect_contains "PR read reservation (path 2)" "$out" "Key=0x1111"
expect_contains "PR read reservation (path 2)" "$out" "Write Exclusive"
run out sg_write_same --lba=0 --num=1 --in=$dir/p $sg2
expect_rc "a write from the path not holding the reservation" 24
run out read_blocks $sg2 0 1 $dir/r
expect_rc "a read from the path not holding the reservation" 0
run out sg_write_same --lba=0 --num=1 --in=$dir/p $sg
expect_rc "a write from the reservation holder" 0
run out sg_persist --out --release --param-rk=0x1111 --prout-type=1 $sg
expect_rc "PR release (path 1)" 0
run out sg_write_same --lba=0 --num=1 --in=$dir/p $sg2
expect_rc "a write from path 2 after the release" 0
run out sg_persist --out --clear --param-rk=0x2222 $sg2
expect_rc "PR clear (path 2)" 0
# SPC-4 (PERSISTENT RESERVE OUT, CLEAR): every other registered I_T nexus
# gets a UNIT ATTENTION, RESERVATIONS PREEMPTED, reported to its next
# command and then cleared.
run out sg_persist --in --read-keys $sg
expect_rc "the command after another path's CLEAR (UNIT ATTENTION expected)" 6
expect_contains "the UNIT ATTENTION after another path's CLEAR" "$out" "eservations preempted"
clear_ua=yes
run out sg_persist --in --read-keys $sg
expect_rc "PR read keys after the UNIT ATTENTION" 0
expect_contains "PR read keys after clear" "$out" "NO registered reservation keys"
log "ok: persistent reservations between two initiators (UNIT ATTENTION after CLEAR: $clear_ua)"
figure pr ok
figure pr_clear_ua $clear_ua

# --- resize: UNIT ATTENTION, then the kernel's rescan ------------------------
parastor_control vmtest-tools "resize $grown"
for path in $sg $sg2; do
    run out sg_turs -v $path
    case $rc in
    6) expect_contains "sg_turs after resize ($path)" "$out" "apacity data has changed" ;;
    0) dmesg | grep -q "Capacity data has changed" ||
        fail "no UNIT ATTENTION after the resize on $path (sg_turs: $out)" ;;
    *) fail "sg_turs after resize ($path): exit status $rc: $out" ;;
    esac
done
echo 1 >/sys/block/$disk/device/rescan
expect_eq "/sys/block/$disk/size after resize + rescan" "$(cat /sys/block/$disk/size)" \
    $((grown / 512))
run out sg_readcap -l $sg
expect_contains "sg_readcap -l after resize" "$out" "Number of logical blocks=$((grown / 512))"
figure resized_to $grown

# --- a DVD drive: empty, media inserted, ejected -----------------------------
parastor_tcmu_start vmtest-dvd --dvd --control /tmp/vmtest/vmtest-dvd.ctl
set -- $PARASTOR_DEVICES
dvd=$1 dsg=/dev/$2
case $dvd in sr*) ;; *) fail "a DVD drive should be srN, got $dvd" ;; esac
run out sg_inq $dsg
expect_contains "sg_inq (DVD)" "$out" "Peripheral device type: cd/dvd"
run out sg_turs $dsg
expect_rc "sg_turs on an empty drive (NOT READY)" 2
head -c $((4 * 1024 * 1024)) /dev/urandom >$dir/media
parastor_control vmtest-dvd "insert file:$dir/media"
# Ready after at most a UNIT ATTENTION (medium may have changed).
saw_ua=no
tries=10
while :; do
    run out sg_turs $dsg
    [ $rc = 0 ] && break
    [ $rc = 6 ] && saw_ua=yes
    tries=$((tries - 1))
    [ $tries -gt 0 ] || fail "the drive did not become ready after insert (last sg_turs $rc: $out)"
done
expect_eq "UNIT ATTENTION before ready after insert" $saw_ua yes
run out sg_readcap $dsg
expect_contains "sg_readcap (DVD)" "$out" "Logical block length=2048 bytes"
expect_contains "sg_readcap (DVD)" "$out" "Number of logical blocks=2048"
dd if=/dev/$dvd bs=2048 count=2048 2>/dev/null | cmp - $dir/media ||
    fail "/dev/$dvd does not read the inserted medium"
log "ok: DVD reads the inserted medium"
parastor_control vmtest-dvd eject
tries=10
while :; do
    run out sg_turs $dsg
    [ $rc = 2 ] && break
    tries=$((tries - 1))
    [ $tries -gt 0 ] || fail "the drive still has a medium after eject (sg_turs $rc: $out)"
done
log "ok: DVD empty after eject"
figure dvd ok
parastor_tcmu_stop vmtest-dvd
parastor_tcmu_stop vmtest-tools
