//! Hostile blobs of at most 1 MiB cost at most a few MiB to read.
//!
//! Measured with the process's peak virtual size (`VmPeak`, Linux), which
//! counts every allocation, used or not: the crate forbids `unsafe`, so a
//! counting allocator is not an option. One test in its own binary, so no
//! other test allocates meanwhile.

mod common;

use common::varint;
use parastor_vtl2_settings::read;

/// Peak virtual memory of this process, in bytes.
fn vm_peak() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmPeak:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A controller whose 128 KiB instance id every one of its 1000 LUNs'
/// errors used to copy (256 MiB).
fn long_instance_id() -> Vec<u8> {
    let id = "x".repeat(128 << 10);
    let luns = vec!["{}"; 1000].join(",");
    format!(
        r#"{{"version":"V1","dynamic":{{"storage_controllers":[
        {{"instance_id":"{id}","protocol":"NVME","luns":[{luns}]}}]}}}}"#
    )
    .into_bytes()
}

/// `version` with the wrong wire type, 512 Ki times: an error every two
/// bytes (about 128 MiB of errors when all were kept).
fn protobuf_error_per_two_bytes() -> Vec<u8> {
    [0x12, 0x00].repeat(512 << 10)
}

/// The same, 4 MiB of it: larger than any blob is allowed to be.
fn protobuf_too_large() -> Vec<u8> {
    [0x12, 0x00].repeat(2 << 20)
}

/// A postcard model whose controller, child and striped-device counts each
/// claim nearly all the bytes left: sized up front, that was ~300 MiB of
/// vectors before the decoder found the data short.
fn postcard_hostile_lengths() -> Vec<u8> {
    let mut b = b"\0PSTSET\x01".to_vec();
    b.extend([0, 0, 0]); // fixed settings
    let n = 1_000_000;
    varint(&mut b, n); // controllers
    b.extend([0x11; 16]); // instance id
    b.extend([0, 0]); // SCSI, no queue depth
    varint(&mut b, n); // children
    b.extend([0, 0]); // SCSI LUN 0
    b.push(0); // no device id
    b.extend([0; 5]); // five empty identity strings
    b.extend([0, 0, 0, 1, 0, 0, 0, 0]); // parameters
    b.push(0); // not a DVD
    b.push(2); // striped
    varint(&mut b, n); // devices
    b.resize(1 << 20, 0); // zero devices until the data runs out
    b
}

#[test]
fn hostile_blobs_cost_little_memory() {
    let cases = [
        ("long instance id", long_instance_id()),
        (
            "protobuf error per two bytes",
            protobuf_error_per_two_bytes(),
        ),
        ("protobuf too large", protobuf_too_large()),
        ("postcard hostile lengths", postcard_hostile_lengths()),
    ];
    let Some(before) = vm_peak() else {
        eprintln!("no /proc/self/status: skipped");
        return;
    };
    for (name, blob) in &cases {
        let errors = read(blob).unwrap_err();
        assert!(!errors.0.is_empty(), "{name}");
        let printed = errors.to_string();
        assert!(printed.len() < 1 << 20, "{name}: {} bytes", printed.len());
        let grown = vm_peak().unwrap().saturating_sub(before);
        assert!(grown < 100 << 20, "{name}: peak grew by {grown} bytes");
    }
}
