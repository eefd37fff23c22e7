//! Fuzz target: arbitrary bytes restored as every component's saved state
//! (persistent reservations, SCSI disk, DVD drive, VMBus rings) into fresh
//! objects, as whole blobs and as payloads in a valid envelope (see
//! `parastor_tests::fuzz_state`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    parastor_tests::fuzz_state::state_restore(data);
});
