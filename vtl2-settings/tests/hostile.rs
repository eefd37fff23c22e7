//! Hostile input: any bytes, mutated documents and token soup never panic,
//! and the invariants of `fuzz::check_blob` hold.

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
    let b64 = {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in inner.as_bytes().chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                out.push(if i <= c.len() {
                    A[(n >> (18 - 6 * i) & 63) as usize] as char
                } else {
                    '='
                });
            }
        }
        out
    };
    let doc = format!(r#"{{"namespace_settings":[{{"namespace":"Base","settings":"{b64}"}}]}}"#);
    assert!(read(doc.as_bytes()).is_err());
    let doc = format!("{}{}", "{\"a\":[".repeat(50_000), "]}".repeat(50_000));
    assert!(read(doc.as_bytes()).is_err());
}
