//! Fuzz target: arbitrary bytes as a hostile kernel's TCMU map (mailbox,
//! command ring, head moves and bytes changed under the handler) through
//! the handler's command ring (see `parastor_tests::fuzz_tcmu`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    parastor_tests::fuzz_tcmu::tcmu_ring(data);
});
