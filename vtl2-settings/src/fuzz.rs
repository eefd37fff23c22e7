//! The body of the settings fuzz target, kept next to the code whose
//! invariants it checks. A cargo-fuzz target (which lives with the other
//! targets under `tests/fuzz`) only has to call [`check_blob`]; the
//! property tests in `tests/hostile.rs` call it too.

use crate::model::Settings;
use crate::update::read_update;
use crate::{json_out, postcard, protobuf_out, read, wire};

/// Reads `data` as a settings blob and, when it is valid, checks the
/// crate's invariants on the result:
///
/// - a rejection carries at least one error;
/// - the model survives postcard and the host's JSON and protobuf written
///   back;
/// - the blob is a no-change update of its own settings.
///
/// Reading never panics on any input; this function panics only when an
/// invariant above is broken — that is what the fuzzer looks for.
pub fn check_blob(data: &[u8]) {
    let _ = read_update(data, &Settings::default());
    let s = match read(data) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.0.is_empty(), "rejection without an error");
            return;
        }
    };
    let again = read(&postcard::encode(&s));
    assert_eq!(again.as_ref(), Ok(&s), "postcard round trip");
    let base = wire::base_from_model(&s);
    let text = json_out::to_json(&base);
    let again = read(text.as_bytes());
    assert_eq!(again.as_ref(), Ok(&s), "JSON round trip");
    let again = read(&protobuf_out::to_protobuf(&base));
    assert_eq!(again.as_ref(), Ok(&s), "protobuf round trip");
    match read_update(data, &s) {
        Ok((new, changes)) => {
            assert_eq!(new, s, "self-update changed the settings");
            assert!(changes.changes.is_empty(), "self-update has changes");
        }
        Err(e) => panic!("self-update rejected: {e}"),
    }
}
