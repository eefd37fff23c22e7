# kernel-fileio: libiscsi's SCSI conformance suite against the kernel's own
# fileio backstore (a file on tmpfs) through tcm_loop: the reference the
# parastor scenarios are compared with (scsi-conformance reuses these
# results in the same boot). Passes when the suite ran; the figures are
# its score. Per-suite lines (SUITE-RESULT), failed tests (TEST-FAILED) and
# their output (FAILED-OUTPUT) go to the serial log.
img=/tmp/vmtest/kernel-fileio.img
set -- $(kernel_fileio_create kfileio $img $((64 * 1024 * 1024)))
disk=$1 sg=$2
log "kernel fileio backstore: /dev/$disk /dev/$sg"
trap 'kernel_fileio_remove kfileio; rm -f $img' EXIT
conformance_run kernel $sg
figure passed $CONF_PASSED
figure skipped $CONF_SKIPPED
figure failed $CONF_FAILED
figure total $CONF_TOTAL
figure cunit_passed $CONF_CUNIT_PASSED
