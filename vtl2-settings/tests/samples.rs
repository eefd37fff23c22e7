//! The sample documents under `tests/data/` decode and validate as expected.

use parastor_vtl2_settings::model::{Backing, ChildAddress, PhysicalDeviceKind, Protocol};
use parastor_vtl2_settings::{ErrorCode, Guid, Settings, read};

fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ok(name: &str) -> Settings {
    read(&data(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn sample_version_only() {
    assert_eq!(ok("sample.json"), Settings::default());
}

#[test]
fn sample_full_json() {
    let s = ok("vtl2s_test_json.json");
    assert_eq!(s.fixed.scsi_sub_channels, 31);
    assert_eq!(s.controllers.len(), 3);
    let protocols: Vec<_> = s.controllers.iter().map(|c| c.protocol).collect();
    assert_eq!(protocols, [Protocol::Ide, Protocol::Scsi, Protocol::Scsi]);
    assert_eq!(
        s.controllers[0].children[0].address,
        ChildAddress::Ide {
            channel: 0,
            drive: 0
        }
    );
    let luns: Vec<_> = s.controllers[1]
        .children
        .iter()
        .map(|c| c.address)
        .collect();
    assert_eq!(luns, [ChildAddress::ScsiLun(0), ChildAddress::ScsiLun(1)]);
    let striped = &s.controllers[2].children[0];
    assert_eq!(striped.address, ChildAddress::ScsiLun(2));
    let Backing::Striped {
        devices,
        chunk_size_kb,
    } = &striped.backing
    else {
        panic!("{:?}", striped.backing)
    };
    assert_eq!(devices.len(), 6);
    assert!(devices.iter().all(|d| d.kind == PhysicalDeviceKind::Nvme));
    assert_eq!(*chunk_size_kb, 128);
    assert_eq!(s.nics.len(), 1);
}

#[test]
fn sample_namespace_equals_plain() {
    assert_eq!(ok("vtl2s_test_namespace.json"), ok("vtl2s_test_json.json"));
}

#[test]
fn sample_compat_legacy_fields() {
    let s = ok("vtl2s_test_compat.json");
    let subs: Vec<_> = s
        .controllers
        .iter()
        .flat_map(|c| &c.children)
        .map(|c| match &c.backing {
            Backing::Single(d) => (d.kind, d.sub_device),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        subs,
        [
            (PhysicalDeviceKind::Nvme, 1),
            (PhysicalDeviceKind::Nvme, 2),
            (PhysicalDeviceKind::Nvme, 3)
        ]
    );
}

#[test]
fn sample_max_storage_controllers() {
    assert_eq!(
        ok("vtl2s_test_max_storage_controllers.json")
            .controllers
            .len(),
        4
    );
}

#[test]
fn sample_storage_controllers_exceeds_limits() {
    let e = read(&data("vtl2s_test_storage_controllers_exceeds_limits.json")).unwrap_err();
    assert_eq!(
        e.codes(),
        [ErrorCode::StorageScsiControllerExceedsMaxLimits]
    );
    assert_eq!(
        e.0[0].to_string(),
        "Configuration.StorageScsiControllerExceedsMaxLimits: dynamic.storage_controllers[4]: \
         exceeded 4 max SCSI controllers, instance ID: 5a6b7c0e-1000-400e-8000-00123456789e"
    );
}

#[test]
fn sample_nic_namespaces() {
    let s = ok("vtl2s_test_nic_namespaces.json");
    assert_eq!(s.nics.len(), 3);
    assert_eq!(s.nics[0].subordinate_instance_id, None);
    assert_eq!(
        s.nics[1].subordinate_instance_id,
        Some(Guid::parse("5a6b7c46-1000-4046-8000-0012345678d6").unwrap())
    );
    assert_eq!(s.nics[2].subordinate_instance_id, None);
}

#[test]
fn sample_no_nic() {
    let s = ok("vtl2s_test_json_no_nic.json");
    assert!(s.controllers.is_empty());
    assert!(s.nics.is_empty());
}

#[test]
fn samples_keep_every_invariant() {
    // Round trips through postcard, JSON and protobuf, and self-update.
    for name in [
        "sample.json",
        "vtl2s_test_json.json",
        "vtl2s_test_namespace.json",
        "vtl2s_test_compat.json",
        "vtl2s_test_max_storage_controllers.json",
        "vtl2s_test_storage_controllers_exceeds_limits.json",
        "vtl2s_test_nic_namespaces.json",
        "vtl2s_test_json_no_nic.json",
    ] {
        parastor_vtl2_settings::fuzz::check_blob(&data(name));
    }
}
