//! Fuzz target: arbitrary bytes as a VTL2 settings blob (JSON, protobuf or
//! postcard), checked by `parastor_vtl2_settings::fuzz::check_blob`:
//! reading never panics, a rejection carries an error, and a valid
//! document survives postcard, JSON and protobuf written back and is a
//! no-change update of itself.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    parastor_vtl2_settings::fuzz::check_blob(data);
});
