//! Fuzz target: arbitrary CDBs, data buffers and initiators through the
//! SCSI disk adapter over a small RAM disk (see
//! `parastor_tests::fuzz_scsi`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    parastor_tests::fuzz_scsi::scsi_cdb(data);
});
