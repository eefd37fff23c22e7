//! Whole-blob reading: format detection and namespace chunks.

mod common;

use common::pb_len;
use parastor_vtl2_settings::read::{Format, detect};
use parastor_vtl2_settings::{ErrorCode, Errors, read};

const B64_V1_FIXED: &str = "eyJ2ZXJzaW9uIjoiVjEiLCJmaXhlZCI6eyJpb19yaW5nX3NpemUiOjY0fX0="; // {"version":"V1","fixed":{"io_ring_size":64}}

fn err(s: &str) -> Errors {
    read(s.as_bytes()).unwrap_err()
}

fn b64(s: &str) -> String {
    common::base64(s.as_bytes())
}

#[test]
fn read_detects_format() {
    assert_eq!(detect(b"  \n{}"), Format::Json);
    assert_eq!(detect(b"\x12\x00"), Format::Protobuf);
    assert_eq!(detect(b""), Format::Protobuf);
    // Field 2 (version) with the wrong wire type.
    let e = read(b"\x12\x02\x08\x01").unwrap_err();
    assert_eq!(e.codes(), [ErrorCode::ProtobufFormatError]);
    assert_eq!(e.0[0].path, "version");
    let e = read(b" {\"version\":").unwrap_err();
    assert_eq!(e.codes(), [ErrorCode::JsonFormatError]);
}

#[test]
fn read_base_chunk() {
    let s = read(
        format!(r#"{{"namespace_settings":[{{"namespace":"Base","settings":"{B64_V1_FIXED}"}}]}}"#)
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(s.fixed.io_ring_size, 64);
    assert_eq!(
        b64(r#"{"version":"V1","fixed":{"io_ring_size":64}}"#),
        B64_V1_FIXED
    );
}

#[test]
fn read_base_chunk_replaces_top_level() {
    let s = read(
        format!(
            r#"{{"version":"V1","fixed":{{"io_ring_size":8}},
            "namespace_settings":[{{"namespace":"Base","settings":"{B64_V1_FIXED}"}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(s.fixed.io_ring_size, 64);
}

#[test]
fn read_unknown_namespace() {
    let e = err(r#"{"namespace_settings":[{"namespace":"Storage","settings":"e30="}]}"#);
    assert_eq!(e.codes(), [ErrorCode::UnsupportedSchemaNamespace]);
    assert_eq!(e.0[0].path, "namespace_settings[0].namespace");
}

#[test]
fn read_empty_chunk() {
    let e = err(
        r#"{"namespace_settings":[{"namespace":"Base"},{"namespace":"NetworkDevice","settings":""}]}"#,
    );
    assert_eq!(
        e.codes(),
        [
            ErrorCode::EmptyNamespaceChunk,
            ErrorCode::EmptyNamespaceChunk
        ]
    );
    assert_eq!(e.0[1].path, "namespace_settings[1].settings");
}

#[test]
fn read_chunk_errors_carry_chunk_path() {
    let inner = b64(
        r#"{"version":"V1","dynamic":{"storage_controllers":[{"instance_id":"x","protocol":"SCSI"}]}}"#,
    );
    let e = err(&format!(
        r#"{{"namespace_settings":[{{"namespace":"Base","settings":"{inner}"}}]}}"#
    ));
    assert_eq!(e.codes(), [ErrorCode::InvalidInstanceId]);
    assert_eq!(
        e.0[0].path,
        "namespace_settings[0].settings.dynamic.storage_controllers[0].instance_id"
    );
    let inner = b64(r#"{"version":"V1","fixd":{}}"#);
    let e = err(&format!(
        r#"{{"namespace_settings":[{{"namespace":"Base","settings":"{inner}"}}]}}"#
    ));
    assert_eq!(e.codes(), [ErrorCode::JsonFormatError]);
    assert_eq!(e.0[0].path, "namespace_settings[0].settings.fixd");
    let e = err(&format!(
        r#"{{"namespace_settings":[{{"namespace":"Base","settings":"{}"}}]}}"#,
        b64("{")
    ));
    assert_eq!(e.0[0].path, "namespace_settings[0].settings");
    // A protobuf chunk inside JSON is detected and decoded on its own.
    // `EAE=` is field 2 (`fixed`) as a varint: the wrong wire type.
    let e = err(r#"{"namespace_settings":[{"namespace":"Base","settings":"EAE="}]}"#);
    assert_eq!(e.codes(), [ErrorCode::ProtobufFormatError]);
    assert_eq!(e.0[0].path, "namespace_settings[0].settings.fixed");
    // `CAA=` is protobuf `version: UNKNOWN`: a Base chunk is base content.
    let e = err(r#"{"namespace_settings":[{"namespace":"Base","settings":"CAA="}]}"#);
    assert_eq!(e.codes(), [ErrorCode::UnsupportedSchemaVersion]);
    assert_eq!(e.0[0].path, "namespace_settings[0].settings.version");
    // `CAEaAA==` is `version: V1, dynamic: {}`; `CAESAA==` is `version: V1, fixed: {}`.
    assert!(
        read(br#"{"namespace_settings":[{"namespace":"Base","settings":"CAEaAA=="}]}"#).is_ok()
    );
    let s =
        read(br#"{"namespace_settings":[{"namespace":"Base","settings":"CAESAA=="}]}"#).unwrap();
    assert_eq!(s.fixed.io_ring_size, 256);
}

#[test]
fn read_network_device_replaces_legacy_nics() {
    let nd = b64(r#"{"nic_devices":[{"instance_id":"11111111-1111-1111-1111-111111111111"}]}"#);
    let s = read(
        format!(
            r#"{{"version":"V1","dynamic":{{"nic_devices":[
            {{"instance_id":"22222222-2222-2222-2222-222222222222"}},
            {{"instance_id":"33333333-3333-3333-3333-333333333333"}}]}},
            "namespace_settings":[{{"namespace":"NetworkDevice","settings":"{nd}"}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(s.nics.len(), 1);
    assert_eq!(s.nics[0].instance_id.data1.get(), 0x1111_1111);
}

#[test]
fn read_protobuf_outer_json_chunk() {
    // OpenHCL's smoke_test_namespace_mix_protobuf_json: the outer document
    // re-encoded as protobuf while the Base chunk stays JSON.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
    let inner = std::fs::read(format!("{dir}vtl2s_test_json.json")).unwrap();
    let chunk = [pb_len(1, b"Base"), pb_len(2, &inner)].concat();
    let outer = pb_len(1, &chunk);
    let plain = read(&inner).unwrap();
    assert_eq!(read(&outer).unwrap(), plain);
    assert_eq!(
        read(&std::fs::read(format!("{dir}vtl2s_test_namespace.json")).unwrap()).unwrap(),
        plain
    );
}

#[test]
fn read_json_failure_reports_json_errors() {
    // Starts with `{` (protobuf field 15, start group) but is neither.
    let e = read(b"{\"version\":\"V2\"}").unwrap_err();
    assert_eq!(e.codes(), [ErrorCode::JsonFormatError]);
    assert_eq!(e.0[0].path, "version");
}

#[test]
fn read_network_acceleration_last_entry_wins() {
    let (a, b) = (
        "11111111-1111-1111-1111-111111111111",
        "22222222-2222-2222-2222-222222222222",
    );
    let (x, y, zero) = (
        "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa",
        "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb",
        "00000000-0000-0000-0000-000000000000",
    );
    let accel = |entries: &[(&str, &str)]| {
        let list: Vec<_> = entries
            .iter()
            .map(|(id, sub)| {
                format!(r#"{{"instance_id":"{id}","subordinate_instance_id":"{sub}"}}"#)
            })
            .collect();
        let chunk = b64(&format!(r#"{{"nic_acceleration":[{}]}}"#, list.join(",")));
        format!(r#"{{"namespace":"NetworkAcceleration","settings":"{chunk}"}}"#)
    };
    let doc = format!(
        r#"{{"version":"V1","dynamic":{{"nic_devices":[{{"instance_id":"{a}"}},
        {{"instance_id":"{b}","subordinate_instance_id":"{x}"}},{{"instance_id":"{a}"}}]}},
        "namespace_settings":[{},{}]}}"#,
        accel(&[(a, x), ("33333333-3333-3333-3333-333333333333", x)]),
        accel(&[(a, y), (b, zero)]),
    );
    let s = read(doc.as_bytes()).unwrap();
    let subs: Vec<_> = s
        .nics
        .iter()
        .map(|n| n.subordinate_instance_id.map(|g| g.data1.get()))
        .collect();
    // Both NICs with id a take the last entry for a; b's zero GUID clears
    // its subordinate; the entry for an unknown NIC changes nothing.
    assert_eq!(subs, [Some(0xbbbb_bbbb), None, Some(0xbbbb_bbbb)]);
}
