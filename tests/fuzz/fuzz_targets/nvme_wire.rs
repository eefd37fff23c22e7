//! Fuzz target: arbitrary bytes through the NVMe and PCI wire parsers in
//! `hw` (see `parastor_tests::fuzz_nvme_wire`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    parastor_tests::fuzz_nvme_wire::nvme_wire(data);
});
