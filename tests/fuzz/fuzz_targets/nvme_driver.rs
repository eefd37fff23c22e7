//! Fuzz target: a hostile device against parastor's NVMe driver — the
//! emulated controller behind the fault-injection middleware, with a plan
//! (dropped, delayed, duplicated, reordered and corrupted completions,
//! hostile Identify data, falsified registers, CFS, surprise removal,
//! swallowed interrupts) decoded from the input; bring-up, I/O, resets and
//! shutdown (see `parastor_tests::fuzz_nvme_driver`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    parastor_tests::fuzz_nvme_driver::nvme_driver(data);
});
