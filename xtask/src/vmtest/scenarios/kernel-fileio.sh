# kernel-fileio: libiscsi's SCSI conformance suite against the kernel's own
# fileio backstore (a file on tmpfs) through tcm_loop: re-derives the
# reference scsi-conformance holds parastor to, and prints how this kernel
# differs from the stored one (REFERENCE-DIFF lines; a kernel update shows
# here: then replace xtask/src/vmtest/scenarios/kernel-conformance.tests
# with the `REFERENCE-NOW` lines). Needs no TCMU; run when named. Passes
# when the suite ran; the figures are its score. Per-suite lines
# (SUITE-RESULT), failed tests (TEST-FAILED) and their output
# (FAILED-OUTPUT) go to the serial log.
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
sort /vmtest/data/kernel-conformance.tests >/tmp/vmtest/reference.sorted
sort /tmp/vmtest/conformance-kernel.tests >/tmp/vmtest/now.sorted
# Unified diff: `-OUTCOME TEST` stored, `+OUTCOME TEST` now.
diff /tmp/vmtest/reference.sorted /tmp/vmtest/now.sorted | grep '^[-+][a-z]' |
    sed 's/^/REFERENCE-DIFF /' >/tmp/vmtest/reference.diff || true
differences=$(grep -c . /tmp/vmtest/reference.diff || true)
if [ "$differences" -gt 0 ]; then
    cat /tmp/vmtest/reference.diff
    sed 's/^/REFERENCE-NOW /' /tmp/vmtest/conformance-kernel.tests
fi
log "$differences difference(s) from the stored reference"
figure reference_differences $differences
