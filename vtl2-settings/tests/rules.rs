//! One test per validation rule of the reference, through the public
//! [`read`] entry point on JSON documents.

use parastor_vtl2_settings::model::{
    Backing, ChildAddress, PhysicalDevice, PhysicalDeviceKind, Protocol,
};
use parastor_vtl2_settings::{ErrorCode, Errors, Guid, Object, Settings, read};

const C0: &str = "0bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4";
const C1: &str = "1bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4";
const C2: &str = "2bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4";
const C3: &str = "3bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4";
const C4: &str = "4bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4";
const C5: &str = "5bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4";
const DEV: &str = "f8b3781a-1e82-4818-a1c3-63d806ec15bb";
const DISK_ID: &str = "a0e4b1c2-0000-4000-8000-0000000000aa";

/// A LUN backed by one NVMe namespace, with extra fields.
fn lun(location: u32, extra: &str) -> String {
    format!(
        r#"{{"location":{location},"device_id":"{DISK_ID}",
        "physical_devices":{{"type":"single","device":{{"device_type":"nvme",
        "device_path":"{DEV}","sub_device_path":1}}}}{extra}}}"#
    )
}

/// A LUN with only the given fields (plus location).
fn bare_lun(location: u32, fields: &str) -> String {
    format!(r#"{{"location":{location}{fields}}}"#)
}

fn controller(id: &str, protocol: &str, luns: &[String]) -> String {
    format!(
        r#"{{"instance_id":"{id}","protocol":"{protocol}","luns":[{}]}}"#,
        luns.join(",")
    )
}

fn doc(controllers: &[String]) -> String {
    format!(
        r#"{{"version":"V1","dynamic":{{"storage_controllers":[{}]}}}}"#,
        controllers.join(",")
    )
}

/// A document with one SCSI controller (`C0`) holding one disk at LUN 0
/// with device id `DISK_ID` and the given extra fields.
fn scsi_disk_doc(fields: &str) -> String {
    doc(&[controller(
        C0,
        "SCSI",
        &[bare_lun(0, &format!(r#","device_id":"{DISK_ID}"{fields}"#))],
    )])
}

fn ok(s: &str) -> Settings {
    read(s.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{s}"))
}

fn err(s: &str) -> Errors {
    match read(s.as_bytes()) {
        Ok(v) => panic!("accepted: {v:?}\n{s}"),
        Err(e) => e,
    }
}

/// Asserts exactly one error, with `code` at `path`.
fn one(s: &str, code: ErrorCode, path: &str) -> parastor_vtl2_settings::Error {
    let e = err(s);
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].code, code, "{e}");
    assert_eq!(e.0[0].path, path, "{e}");
    e.0.into_iter().next().unwrap()
}

fn g(s: &str) -> Guid {
    s.parse().unwrap()
}

#[test]
fn valid_document_builds_model() {
    let s = ok(&format!(
        r#"{{"version":"V1","fixed":{{"scsi_sub_channels":31}},"dynamic":{{"storage_controllers":[
        {},{}]}}}}"#,
        controller(
            C0,
            "SCSI",
            &[lun(
                3,
                r#","vendor_id":"Msft","fua":true,"disable_thin_provisioning":true"#
            )]
        ),
        controller(C1, "NVME", &[lun(7, "")]),
    ));
    assert_eq!(s.fixed.scsi_sub_channels, 31);
    assert_eq!(s.fixed.io_ring_size, 256);
    assert_eq!(s.fixed.max_bounce_buffer_pages, 2048);
    assert_eq!(s.controllers.len(), 2);
    let c = &s.controllers[0];
    assert_eq!(c.instance_id, g(C0));
    assert_eq!(c.protocol, Protocol::Scsi);
    let d = &c.children[0];
    assert_eq!(d.address, ChildAddress::ScsiLun(3));
    assert_eq!(d.identity.device_id, Some(g(DISK_ID)));
    assert_eq!(d.identity.vendor_id, "Msft");
    assert_eq!(d.params.fua, Some(true));
    assert!(!d.params.unmap);
    assert_eq!(
        d.backing,
        Backing::Single(PhysicalDevice {
            kind: PhysicalDeviceKind::Nvme,
            instance_id: g(DEV),
            sub_device: 1
        })
    );
    assert_eq!(
        s.controllers[1].children[0].address,
        ChildAddress::NvmeNsid(7)
    );
}

#[test]
fn rule_version_must_be_v1() {
    one(
        r#"{"version":"UNKNOWN","fixed":{}}"#,
        ErrorCode::UnsupportedSchemaVersion,
        "version",
    );
    one(
        r#"{"dynamic":{}}"#,
        ErrorCode::UnsupportedSchemaVersion,
        "version",
    );
    // No base content: version is not checked.
    ok(r#"{"version":"V1"}"#);
    ok(r#"{"version":"UNKNOWN"}"#);
    ok("{}");
}

#[test]
fn rule_invalid_instance_ids() {
    let e = one(
        &doc(&[controller("not-a-guid", "SCSI", &[])]),
        ErrorCode::InvalidInstanceId,
        "dynamic.storage_controllers[0].instance_id",
    );
    assert_eq!(e.object, Some(Object::Instance("not-a-guid".into())));
    one(
        &scsi_disk_doc(
            r#","physical_devices":{"type":"single","device":{"device_type":"vscsi","device_path":"zz"}}"#,
        ),
        ErrorCode::InvalidInstanceId,
        "dynamic.storage_controllers[0].luns[0].physical_devices.device.device_path",
    );
}

#[test]
fn rule_ntfs_guid() {
    one(
        &doc(&[controller(C0, "SCSI", &[lun(0, r#","ntfs_guid":"nope""#)])]),
        ErrorCode::StorageInvalidNtfsFormatGuid,
        "dynamic.storage_controllers[0].luns[0].ntfs_guid",
    );
    let s = ok(&doc(&[controller(
        C0,
        "SCSI",
        &[lun(0, &format!(r#","ntfs_guid":"{C5}""#))],
    )]));
    assert_eq!(s.controllers[0].children[0].ntfs_guid, Some(g(C5)));
}

#[test]
fn rule_duplicate_controller_guid() {
    let upper = C0.to_uppercase();
    let e = one(
        &doc(&[
            controller(C0, "SCSI", &[]),
            controller(C1, "NVME", &[]),
            controller(&upper, "IDE", &[]),
        ]),
        ErrorCode::StorageControllerGuidAlreadyExists,
        "dynamic.storage_controllers[2].instance_id",
    );
    assert_eq!(e.object, Some(Object::Instance(upper)));
}

#[test]
fn rule_max_scsi_controllers() {
    let four: Vec<_> = [C0, C1, C2, C3]
        .iter()
        .map(|c| controller(c, "SCSI", &[]))
        .collect();
    ok(&doc(&four));
    let mut five = four.clone();
    five.push(controller(C4, "SCSI", &[]));
    let e = one(
        &doc(&five),
        ErrorCode::StorageScsiControllerExceedsMaxLimits,
        "dynamic.storage_controllers[4]",
    );
    assert_eq!(
        e.to_string(),
        format!(
            "Configuration.StorageScsiControllerExceedsMaxLimits: dynamic.storage_controllers[4]: \
             exceeded 4 max SCSI controllers, instance ID: {C4}"
        )
    );
    // NVMe controllers do not count.
    let mut mixed = four;
    mixed.push(controller(C4, "NVME", &[]));
    ok(&doc(&mixed));
}

#[test]
fn rule_max_ide_controllers() {
    one(
        &doc(&[controller(C0, "IDE", &[]), controller(C1, "ide", &[])]),
        ErrorCode::StorageIdeChannelExceedsMaxLimits,
        "dynamic.storage_controllers[1]",
    );
}

#[test]
fn rule_unknown_protocol() {
    one(
        &doc(&[controller(C0, "UNKNOWN", &[lun(99, "")])]),
        ErrorCode::StorageInvalidControllerType,
        "dynamic.storage_controllers[0].protocol",
    );
    // Protocol absent is UNKNOWN too.
    one(
        &format!(
            r#"{{"version":"V1","dynamic":{{"storage_controllers":[{{"instance_id":"{C0}"}}]}}}}"#
        ),
        ErrorCode::StorageInvalidControllerType,
        "dynamic.storage_controllers[0].protocol",
    );
}

#[test]
fn rule_scsi_lun_range() {
    ok(&doc(&[controller(C0, "SCSI", &[lun(63, "")])]));
    let e = one(
        &doc(&[controller(C0, "SCSI", &[lun(64, "")])]),
        ErrorCode::StorageLunLocationExceedsMaxLimits,
        "dynamic.storage_controllers[0].luns[0].location",
    );
    assert_eq!(
        e.object,
        Some(Object::ScsiLun {
            instance_id: C0.into(),
            lun: 64
        })
    );
    assert!(
        e.to_string()
            .ends_with(&format!("instance ID: {C0}, scsi LUN 64"))
    );
    one(
        &doc(&[controller(C0, "SCSI", &[lun(4096, "")])]),
        ErrorCode::StorageLunLocationExceedsMaxLimits,
        "dynamic.storage_controllers[0].luns[0].location",
    );
}

#[test]
fn rule_nvme_nsid_range() {
    ok(&doc(&[controller(
        C0,
        "NVME",
        &[lun(1, ""), lun(0xFFFF_FFFE, "")],
    )]));
    for nsid in [0u32, 0xFFFF_FFFF] {
        let e = one(
            &doc(&[controller(C0, "NVME", &[lun(nsid, "")])]),
            ErrorCode::StorageLunLocationExceedsMaxLimits,
            "dynamic.storage_controllers[0].luns[0].location",
        );
        assert!(
            e.to_string()
                .ends_with(&format!("nvme namespace ID {nsid}"))
        );
    }
}

#[test]
fn rule_duplicate_locations() {
    one(
        &doc(&[controller(
            C0,
            "SCSI",
            &[lun(1, ""), lun(2, ""), lun(1, "")],
        )]),
        ErrorCode::StorageLunLocationDuplicated,
        "dynamic.storage_controllers[0].luns[2].location",
    );
    one(
        &doc(&[controller(C0, "NVME", &[lun(5, ""), lun(5, "")])]),
        ErrorCode::StorageLunLocationDuplicated,
        "dynamic.storage_controllers[0].luns[1].location",
    );
    // Same location on different controllers is fine.
    ok(&doc(&[
        controller(C0, "SCSI", &[lun(1, "")]),
        controller(C1, "SCSI", &[lun(1, "")]),
    ]));
}

#[test]
fn rule_nvme_dvd() {
    one(
        &doc(&[controller(C0, "NVME", &[bare_lun(1, r#","is_dvd":true"#)])]),
        ErrorCode::StorageUnsupportedDeviceType,
        "dynamic.storage_controllers[0].luns[0].is_dvd",
    );
}

#[test]
fn rule_unknown_backing_and_device_type() {
    one(
        &scsi_disk_doc(r#","physical_devices":{"type":"UNKNOWN"}"#),
        ErrorCode::StorageUnsupportedDeviceType,
        "dynamic.storage_controllers[0].luns[0].physical_devices.type",
    );
    one(
        &scsi_disk_doc(&format!(
            r#","physical_devices":{{"type":"single","device":{{"device_path":"{DEV}"}}}}"#
        )),
        ErrorCode::StorageUnsupportedDeviceType,
        "dynamic.storage_controllers[0].luns[0].physical_devices.device.device_type",
    );
}

#[test]
fn rule_ide_channel_required() {
    let e = one(
        &doc(&[controller(C0, "IDE", &[lun(0, "")])]),
        ErrorCode::StorageIdeChannelNotProvided,
        "dynamic.storage_controllers[0].luns[0].channel",
    );
    assert!(e.to_string().ends_with("ide device ?/0"));
    let s = ok(&doc(&[controller(C0, "IDE", &[lun(1, r#","channel":1"#)])]));
    assert_eq!(
        s.controllers[0].children[0].address,
        ChildAddress::Ide {
            channel: 1,
            drive: 1
        }
    );
}

#[test]
fn rule_ide_slot_range() {
    let e = one(
        &doc(&[controller(C0, "IDE", &[lun(0, r#","channel":2"#)])]),
        ErrorCode::StorageIdeChannelExceedsMaxLimits,
        "dynamic.storage_controllers[0].luns[0].channel",
    );
    assert!(e.to_string().ends_with("ide device 2/0"));
    one(
        &doc(&[controller(C0, "IDE", &[lun(2, r#","channel":0"#)])]),
        ErrorCode::StorageIdeChannelExceedsMaxLimits,
        "dynamic.storage_controllers[0].luns[0].location",
    );
    let e = err(&doc(&[controller(C0, "IDE", &[lun(5, r#","channel":7"#)])]));
    assert_eq!(
        e.codes(),
        [
            ErrorCode::StorageIdeChannelExceedsMaxLimits,
            ErrorCode::StorageIdeChannelExceedsMaxLimits
        ]
    );
}

#[test]
fn rule_ide_duplicate_slot() {
    ok(&doc(&[controller(
        C0,
        "IDE",
        &[
            lun(0, r#","channel":0"#),
            lun(1, r#","channel":0"#),
            lun(0, r#","channel":1"#),
            lun(1, r#","channel":1"#),
        ],
    )]));
    one(
        &doc(&[controller(
            C0,
            "IDE",
            &[lun(1, r#","channel":0"#), lun(1, r#","channel":0"#)],
        )]),
        ErrorCode::StorageIdeChannelInvalidConfiguration,
        "dynamic.storage_controllers[0].luns[1].location",
    );
}

#[test]
fn rule_legacy_mixed_with_new() {
    one(
        &doc(&[controller(
            C0,
            "SCSI",
            &[lun(0, r#","device_type":"nvme""#)],
        )]),
        ErrorCode::JsonFormatError,
        "dynamic.storage_controllers[0].luns[0]",
    );
    one(
        &doc(&[controller(
            C0,
            "SCSI",
            &[bare_lun(
                0,
                &format!(
                    r#","is_dvd":true,"device_path":"{DEV}","device_type":"vscsi","sub_device_path":1"#
                ),
            )],
        )]),
        ErrorCode::JsonFormatError,
        "dynamic.storage_controllers[0].luns[0]",
    );
    // The legacy form alone is a single device.
    let s = ok(&scsi_disk_doc(&format!(
        r#","device_type":"VScsi","device_path":"{DEV}","sub_device_path":"2""#
    )));
    assert_eq!(
        s.controllers[0].children[0].backing,
        Backing::Single(PhysicalDevice {
            kind: PhysicalDeviceKind::Vscsi,
            instance_id: g(DEV),
            sub_device: 2
        })
    );
}

#[test]
fn rule_no_backing() {
    one(
        &scsi_disk_doc(""),
        ErrorCode::JsonFormatError,
        "dynamic.storage_controllers[0].luns[0].physical_devices",
    );
    // A DVD without backing is an empty drive.
    let s = ok(&doc(&[controller(
        C0,
        "SCSI",
        &[bare_lun(0, r#","is_dvd":true"#)],
    )]));
    let d = &s.controllers[0].children[0];
    assert!(d.is_dvd);
    assert_eq!(d.backing, Backing::Empty);
    assert_eq!(d.identity.device_id, None);
}

#[test]
fn rule_physical_disk_count() {
    let dev = format!(r#"{{"device_type":"nvme","device_path":"{DEV}","sub_device_path":1}}"#);
    let pd = |body: &str| {
        scsi_disk_doc(&format!(
            r#","chunk_size_in_kb":128,"physical_devices":{{{body}}}"#
        ))
    };
    let path = "dynamic.storage_controllers[0].luns[0].physical_devices";
    for body in [
        r#""type":"single""#.to_string(),
        format!(r#""type":"single","device":{dev},"devices":[{dev}]"#),
        format!(r#""type":"striping","devices":[{dev}]"#),
        r#""type":"striping","devices":[]"#.to_string(),
        format!(r#""type":"STRIPED","device":{dev},"devices":[{dev},{dev}]"#),
    ] {
        one(&pd(&body), ErrorCode::StorageInvalidPhysicalDiskCount, path);
    }
    let s = ok(&pd(&format!(
        r#""type":"striping","devices":[{dev},{dev},{dev}]"#
    )));
    let Backing::Striped {
        devices,
        chunk_size_kb,
    } = &s.controllers[0].children[0].backing
    else {
        panic!()
    };
    assert_eq!(devices.len(), 3);
    assert_eq!(*chunk_size_kb, 128);
}

#[test]
fn rule_identity_strings() {
    for (field, max, code) in [
        ("vendor_id", 8, ErrorCode::StorageInvalidVendorId),
        ("product_id", 16, ErrorCode::StorageInvalidProductId),
        (
            "product_revision_level",
            4,
            ErrorCode::StorageInvalidProductRevisionLevel,
        ),
    ] {
        let path = format!("dynamic.storage_controllers[0].luns[0].{field}");
        let at_max = "A".repeat(max);
        ok(&doc(&[controller(
            C0,
            "SCSI",
            &[lun(0, &format!(r#","{field}":"{at_max}""#))],
        )]));
        let long = "A".repeat(max + 1);
        one(
            &doc(&[controller(
                C0,
                "SCSI",
                &[lun(0, &format!(r#","{field}":"{long}""#))],
            )]),
            code,
            &path,
        );
        one(
            &doc(&[controller(
                C0,
                "IDE",
                &[lun(0, &format!(r#","channel":0,"{field}":"a\u0007""#))],
            )]),
            code,
            &path,
        );
        one(
            &doc(&[controller(
                C0,
                "SCSI",
                &[lun(0, &format!(r#","{field}":"é""#))],
            )]),
            code,
            &path,
        );
        // Not checked on NVMe namespaces.
        ok(&doc(&[controller(
            C0,
            "NVME",
            &[lun(1, &format!(r#","{field}":"{long}""#))],
        )]));
    }
}

#[test]
fn rule_device_id() {
    let no_id = |id: &str| {
        format!(
            r#"{{"location":0,"device_id":"{id}","physical_devices":{{"type":"single","device":
            {{"device_type":"nvme","device_path":"{DEV}","sub_device_path":1}}}}}}"#
        )
    };
    let path = "dynamic.storage_controllers[0].luns[0].device_id";
    for id in ["", "xyz", "00000000-0000-0000-0000-000000000000"] {
        one(
            &doc(&[controller(C0, "SCSI", &[no_id(id)])]),
            ErrorCode::StorageInvalidDeviceId,
            path,
        );
    }
    // NVMe namespaces and DVDs do not need one.
    let s = ok(&doc(&[controller(
        C0,
        "NVME",
        &[no_id("").replace("\"location\":0", "\"location\":1")],
    )]));
    assert_eq!(s.controllers[0].children[0].identity.device_id, None);
    ok(&doc(&[controller(
        C0,
        "SCSI",
        &[bare_lun(0, r#","is_dvd":true,"device_id":"x""#)],
    )]));
}

#[test]
fn rule_nic_ids() {
    let s = ok(&format!(
        r#"{{"version":"V1","dynamic":{{"nic_devices":[{{"instance_id":"{C0}",
        "subordinate_instance_id":"{C1}","max_sub_channels":4}},{{"instance_id":"{C2}",
        "subordinate_instance_id":"00000000-0000-0000-0000-000000000000"}}]}}}}"#
    ));
    assert_eq!(s.nics.len(), 2);
    assert_eq!(s.nics[0].subordinate_instance_id, Some(g(C1)));
    assert_eq!(s.nics[0].max_sub_channels, Some(4));
    assert_eq!(s.nics[1].subordinate_instance_id, None);
    one(
        r#"{"version":"V1","dynamic":{"nic_devices":[{"instance_id":"x"}]}}"#,
        ErrorCode::InvalidInstanceId,
        "dynamic.nic_devices[0].instance_id",
    );
}

#[test]
fn all_errors_reported_in_one_pass() {
    let e = err(&format!(
        r#"{{"version":"UNKNOWN","dynamic":{{"storage_controllers":[{},{},{}]}}}}"#,
        controller(
            C0,
            "SCSI",
            &[lun(64, ""), lun(1, r#","vendor_id":"TOOLONGVENDOR""#)]
        ),
        controller(C0, "NVME", &[lun(0, "")]),
        controller(C1, "IDE", &[lun(0, "")]),
    ));
    assert_eq!(
        e.codes(),
        [
            ErrorCode::UnsupportedSchemaVersion,
            ErrorCode::StorageLunLocationExceedsMaxLimits,
            ErrorCode::StorageInvalidVendorId,
            ErrorCode::StorageControllerGuidAlreadyExists,
            ErrorCode::StorageLunLocationExceedsMaxLimits,
            ErrorCode::StorageIdeChannelNotProvided,
        ]
    );
}
