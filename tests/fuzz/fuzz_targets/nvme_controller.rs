//! Fuzz target: parastor's NVMe controller over RAM-backed namespaces,
//! driven by a hostile guest — register and doorbell writes, admin and NVM
//! commands, PRP lists and SGLs, raw queue memory, resets, hot add/remove,
//! save/restore (see `parastor_tests::fuzz_nvme`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    parastor_tests::fuzz_nvme::nvme_controller(data);
});
