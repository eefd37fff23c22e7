//! Hostile input: any bytes, mutated documents and token soup never panic,
//! and the invariants of `fuzz::check_blob` hold.

mod common;

use parastor_vtl2_settings::postcard;
use parastor_vtl2_settings::read;
use proptest::prelude::*;

const SAMPLES: &[&[u8]] = &[
    include_bytes!("data/vtl2s_test_json.json"),
    include_bytes!("data/vtl2s_test_namespace.json"),
    include_bytes!("data/vtl2s_test_compat.json"),
    include_bytes!("data/vtl2s_test_nic_namespaces.json"),
    include_bytes!("data/vtl2s_test_storage_controllers_exceeds_limits.json"),
];

fn check(data: &[u8]) {
    parastor_vtl2_settings::fuzz::check_blob(data);
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "false",
    "0",
    "1",
    "-1",
    "\"1\"",
    "4294967296",
    "1e9",
    "\"version\"",
    "\"V1\"",
    "\"dynamic\"",
    "\"storageControllers\"",
    "\"storage_controllers\"",
    "\"luns\"",
    "\"location\"",
    "\"protocol\"",
    "\"SCSI\"",
    "\"IDE\"",
    "\"NVME\"",
    "\"channel\"",
    "\"is_dvd\"",
    "\"physical_devices\"",
    "\"type\"",
    "\"striping\"",
    "\"device\"",
    "\"devices\"",
    "\"device_type\"",
    "\"device_path\"",
    "\"sub_device_path\"",
    "\"instance_id\"",
    "\"0bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4\"",
    "\"namespace_settings\"",
    "\"namespace\"",
    "\"Base\"",
    "\"settings\"",
    "\"e30=\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn hostile_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&data);
    }

    #[test]
    fn hostile_json_prefixed_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut d = b"{".to_vec();
        d.extend(data);
        check(&d);
    }

    #[test]
    fn hostile_token_soup(tokens in proptest::collection::vec(0..TOKENS.len(), 0..64)) {
        let s: String = tokens.iter().map(|&i| TOKENS[i]).collect();
        check(s.as_bytes());
    }

    #[test]
    fn hostile_mutated_postcard(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let s = read(SAMPLES[0]).unwrap();
        let mut d = postcard::encode(&s);
        for (pos, byte) in edits {
            let at = postcard::MAGIC.len() + 1 + pos % (d.len() - postcard::MAGIC.len() - 1);
            d[at] = byte;
        }
        check(&d);
    }

    #[test]
    fn hostile_mutated_samples(
        which in 0..SAMPLES.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..8),
    ) {
        let mut d = SAMPLES[which].to_vec();
        for (pos, byte, op) in edits {
            let at = pos % (d.len() + 1);
            match op {
                0 => d.insert(at, byte),
                1 if at < d.len() => { d.remove(at); }
                _ if at < d.len() => d[at] = byte,
                _ => {}
            }
        }
        check(&d);
    }
}

#[test]
fn hostile_deep_nesting_in_chunk() {
    // Deep nesting inside a base64 chunk is bounded too.
    let inner = "[".repeat(10_000);
    let b64 = common::base64(inner.as_bytes());
    let doc = format!(r#"{{"namespace_settings":[{{"namespace":"Base","settings":"{b64}"}}]}}"#);
    assert!(read(doc.as_bytes()).is_err());
    let doc = format!("{}{}", "{\"a\":[".repeat(50_000), "]}".repeat(50_000));
    assert!(read(doc.as_bytes()).is_err());
}

#[test]
fn hostile_error_count_is_bounded() {
    use parastor_vtl2_settings::ErrorCode;
    use parastor_vtl2_settings::error::MAX_ERRORS;
    // `version` with the wrong wire type: one error every two bytes.
    let e = read(&[0x12, 0x00].repeat(MAX_ERRORS + 10)).unwrap_err();
    assert_eq!(e.0.len(), MAX_ERRORS + 1);
    let last = e.0.last().unwrap();
    assert_eq!(last.code, ErrorCode::ProtobufFormatError);
    assert_eq!(
        last.message,
        format!("10 more errors not reported (at most {MAX_ERRORS} are)")
    );
    // Exactly at the limit, nothing is summarized.
    let e = read(&[0x12, 0x00].repeat(MAX_ERRORS)).unwrap_err();
    assert_eq!(e.0.len(), MAX_ERRORS);
    // Validation: two errors per empty NVMe namespace (NSID 0, no backing).
    let luns = vec!["{}"; MAX_ERRORS].join(",");
    let doc = format!(
        r#"{{"version":"V1","dynamic":{{"storage_controllers":[{{"instance_id":
        "0bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4","protocol":"NVME","luns":[{luns}]}}]}}}}"#
    );
    let e = read(doc.as_bytes()).unwrap_err();
    assert_eq!(e.0.len(), MAX_ERRORS + 1);
    assert_eq!(e.0[MAX_ERRORS - 1].path, {
        let j = MAX_ERRORS / 2 - 1;
        format!("dynamic.storage_controllers[0].luns[{j}].physical_devices")
    });
    assert!(
        e.0[MAX_ERRORS]
            .message
            .starts_with(&format!("{MAX_ERRORS} more errors"))
    );
    // Chunks: each chunk's errors are merged under the same bound.
    let chunk = common::base64(&[0x0a, 0x00].repeat(MAX_ERRORS));
    let chunks =
        vec![format!(r#"{{"namespace":"NetworkAcceleration","settings":"{chunk}"}}"#); 3].join(",");
    let e = read(format!(r#"{{"namespace_settings":[{chunks}]}}"#).as_bytes()).unwrap_err();
    assert_eq!(e.0.len(), MAX_ERRORS + 1);
}

#[test]
fn hostile_protobuf_size_limit() {
    use parastor_vtl2_settings::ErrorCode;
    // `version` = 1, repeated (the last wins) up to exactly the limit: fine.
    let max = [0x10, 0x01].repeat(read::MAX_BLOB_LEN / 2);
    assert!(read(&max).is_ok());
    let mut over = max;
    over.push(0x10);
    let e = read(&over).unwrap_err();
    assert_eq!(e.codes(), [ErrorCode::ProtobufFormatError]);
    assert!(e.0[0].message.contains("byte limit"), "{e}");
}

#[test]
fn hostile_long_values_are_quoted_short() {
    use parastor_vtl2_settings::Object;
    use parastor_vtl2_settings::error::MAX_QUOTED;
    // Two-byte characters after one ASCII byte: byte MAX_QUOTED falls
    // inside a character, so the cut must back off to a boundary.
    let id = format!("x{}", "é".repeat(50_000));
    let doc = format!(
        r#"{{"version":"V1","dynamic":{{"storage_controllers":[{{"instance_id":"{id}",
        "protocol":"SCSI","luns":[{{"location":1,"vendor_id":"{id}"}},{{"location":1}}]}}]}}}}"#
    );
    let e = read(doc.as_bytes()).unwrap_err();
    assert!(e.0.len() >= 4, "{e}");
    for err in &e.0 {
        let quoted = match err.object.as_ref().unwrap() {
            Object::Instance(id)
            | Object::ScsiLun {
                instance_id: id, ..
            } => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(quoted.len(), MAX_QUOTED - 1 + '…'.len_utf8(), "{err}");
        assert!(quoted.starts_with("xé") && quoted.ends_with("é…"));
        assert!(err.message.len() < 2 * MAX_QUOTED + 100, "{}", err.message);
    }
}
