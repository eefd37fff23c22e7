# kernel-fileio: libiscsi's SCSI conformance suite against the kernel's own
# fileio backstore (a file on tmpfs) through tcm_loop, alone: the reference
# scsi-conformance runs beside parastor. Not in the default run (named
# only): it needs no TCMU. Passes when the suite ran; the figures are
# its score. Per-suite lines (SUITE-RESULT), failed tests (TEST-FAILED) and
# their output (FAILED-OUTPUT) go to the serial log.
img=/tmp/vmtest/kernel-fileio.img
cleanup() {
    kernel_fileio_remove kfileio
    rm -f $img
}
cleanup_on_exit
devices=$(kernel_fileio_create kfileio $img $((64 * 1024 * 1024)))
set -- $devices
log "kernel fileio backstore: /dev/$1 /dev/$2"
conformance_run kernel $2
figure passed $CONF_PASSED
figure skipped $CONF_SKIPPED
figure failed $CONF_FAILED
figure total $CONF_TOTAL
figure cunit_passed $CONF_CUNIT_PASSED
