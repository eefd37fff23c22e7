//! Fuzz target: arbitrary disk stacks and requests, checked against the
//! reference model (see `parastor_tests::fuzz_disk`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    parastor_tests::fuzz_disk::disk_ops(data);
});
