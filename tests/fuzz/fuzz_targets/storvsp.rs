//! Fuzz target: a StorVSP controller with a few RAM-backed LUNs driven by a
//! hostile guest over real VMBus rings — raw packets of any type,
//! GPA-direct ranges, SRBs, raw ring writes, hot add / remove (see
//! `parastor_tests::fuzz_storvsp`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    parastor_tests::fuzz_storvsp::storvsp(data);
});
