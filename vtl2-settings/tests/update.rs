//! Runtime updates: merging, change sets and the runtime rules.

mod common;

use parastor_vtl2_settings::model::{Backing, ChildAddress};
use parastor_vtl2_settings::update::{Change, diff, read_update};
use parastor_vtl2_settings::{ErrorCode, Errors, Guid, Settings, read};

const SCSI: &str = "0bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4";
const SCSI2: &str = "1bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4";
const IDE: &str = "2bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4";
const NVME: &str = "3bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4";
const DEV: &str = "f8b3781a-1e82-4818-a1c3-63d806ec15bb";
const DISK_ID: &str = "a0e4b1c2-0000-4000-8000-0000000000aa";

fn disk(loc: u32, sub: u32, extra: &str) -> String {
    format!(
        r#"{{"location":{loc},"device_id":"{DISK_ID}"{extra},"physical_devices":{{"type":"single",
        "device":{{"device_type":"nvme","device_path":"{DEV}","sub_device_path":{sub}}}}}}}"#
    )
}

fn striped(loc: u32) -> String {
    let d = format!(r#"{{"device_type":"nvme","device_path":"{DEV}","sub_device_path":9}}"#);
    format!(
        r#"{{"location":{loc},"device_id":"{DISK_ID}","chunk_size_in_kb":64,
        "physical_devices":{{"type":"striping","devices":[{d},{d}]}}}}"#
    )
}

fn dvd(loc: u32, extra: &str, loaded: bool) -> String {
    let backing = if loaded {
        format!(
            r#","physical_devices":{{"type":"single","device":{{"device_type":"vscsi",
            "device_path":"{DEV}","sub_device_path":4}}}}"#
        )
    } else {
        String::new()
    };
    format!(r#"{{"location":{loc},"is_dvd":true{extra}{backing}}}"#)
}

/// A document with a SCSI controller, an IDE controller and an NVMe one.
fn doc(scsi: &[String], ide: &[String], nvme: &[String]) -> String {
    format!(
        r#"{{"version":"V1","dynamic":{{"storage_controllers":[
        {{"instance_id":"{SCSI}","protocol":"SCSI","luns":[{}]}},
        {{"instance_id":"{IDE}","protocol":"IDE","luns":[{}]}},
        {{"instance_id":"{NVME}","protocol":"NVME","luns":[{}]}}]}}}}"#,
        scsi.join(","),
        ide.join(","),
        nvme.join(",")
    )
}

fn settings(s: &str) -> Settings {
    read(s.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn update_ok(old: &str, new: &str) -> Vec<Change> {
    read_update(new.as_bytes(), &settings(old))
        .unwrap_or_else(|e| panic!("{e}"))
        .1
        .changes
}

fn update_err(old: &str, new: &str) -> Errors {
    read_update(new.as_bytes(), &settings(old)).unwrap_err()
}

fn g(s: &str) -> Guid {
    s.parse().unwrap()
}

#[test]
fn update_identical_is_empty() {
    let d = doc(
        &[disk(0, 1, "")],
        &[dvd(0, r#","channel":0"#, false)],
        &[disk(1, 1, "")],
    );
    assert!(update_ok(&d, &d).is_empty());
}

#[test]
fn update_scsi_add_remove_change() {
    let old = doc(&[disk(0, 1, ""), disk(1, 2, "")], &[], &[]);
    let new = doc(&[disk(1, 3, ""), disk(2, 4, "")], &[], &[]);
    let changes = update_ok(&old, &new);
    let kinds: Vec<_> = changes
        .iter()
        .map(|c| match c {
            Change::AddDisk { child, .. } => ("add", child.address),
            Change::RemoveDisk { lun, .. } => ("rm", ChildAddress::ScsiLun(*lun)),
            Change::ChangeMedia { address, .. } => ("media", *address),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("rm", ChildAddress::ScsiLun(0)),
            ("rm", ChildAddress::ScsiLun(1)),
            ("add", ChildAddress::ScsiLun(1)),
            ("add", ChildAddress::ScsiLun(2)),
        ]
    );
}

#[test]
fn update_scsi_dvd_media_change() {
    let old = doc(&[dvd(5, "", false)], &[], &[]);
    let new = doc(&[dvd(5, "", true)], &[], &[]);
    let changes = update_ok(&old, &new);
    assert!(matches!(
        &changes[..],
        [Change::ChangeMedia { controller, address: ChildAddress::ScsiLun(5), backing: Backing::Single(_) }]
            if *controller == g(SCSI)
    ));
    let changes = update_ok(&new, &old);
    assert!(matches!(
        &changes[..],
        [Change::ChangeMedia {
            backing: Backing::Empty,
            ..
        }]
    ));
}

#[test]
fn update_striped_cannot_change() {
    let old = doc(&[striped(0)], &[], &[]);
    let e = update_err(&old, &doc(&[], &[], &[]));
    assert_eq!(
        e.codes(),
        [ErrorCode::StripedStorageCannotChangeControllerAtRuntime]
    );
    let e = update_err(&doc(&[], &[], &[]), &old);
    assert_eq!(
        e.codes(),
        [ErrorCode::StripedStorageCannotChangeControllerAtRuntime]
    );
    assert_eq!(e.0[0].path, "dynamic.storage_controllers[0].luns[0]");
    let e = update_err(&old, &doc(&[disk(0, 1, "")], &[], &[]));
    assert_eq!(
        e.codes(),
        [ErrorCode::StripedStorageCannotChangeControllerAtRuntime]
    );
}

#[test]
fn update_cannot_add_or_remove_controllers() {
    let old = doc(&[], &[], &[]);
    let added = format!(
        r#"{{"version":"V1","dynamic":{{"storage_controllers":[
        {{"instance_id":"{SCSI}","protocol":"SCSI"}},{{"instance_id":"{SCSI2}","protocol":"SCSI"}},
        {{"instance_id":"{IDE}","protocol":"IDE"}},{{"instance_id":"{NVME}","protocol":"NVME"}}]}}}}"#
    );
    let e = update_err(&old, &added);
    assert_eq!(
        e.codes(),
        [ErrorCode::StorageCannotAddRemoveControllerAtRuntime]
    );
    assert_eq!(e.0[0].path, "dynamic.storage_controllers[1]");
    let e = update_err(&added, &old);
    assert_eq!(
        e.codes(),
        [ErrorCode::StorageCannotAddRemoveControllerAtRuntime]
    );
    assert!(e.0[0].to_string().ends_with(SCSI2));
    // Removing the IDE controller is an IDE change.
    let no_ide = format!(
        r#"{{"version":"V1","dynamic":{{"storage_controllers":[
        {{"instance_id":"{SCSI}","protocol":"SCSI"}},{{"instance_id":"{NVME}","protocol":"NVME"}}]}}}}"#
    );
    assert_eq!(
        update_err(&old, &no_ide).codes(),
        [ErrorCode::StorageCannotModifyIdeAtRuntime]
    );
}

#[test]
fn update_ide_rules() {
    let ch = r#","channel":1"#;
    // Media insert/eject is allowed.
    let old = doc(&[], &[dvd(1, ch, false)], &[]);
    let new = doc(&[], &[dvd(1, ch, true)], &[]);
    assert!(matches!(
        &update_ok(&old, &new)[..],
        [Change::ChangeMedia {
            address: ChildAddress::Ide {
                channel: 1,
                drive: 1
            },
            ..
        }]
    ));
    // Anything else is not.
    let with_vendor = doc(&[], &[dvd(1, r#","channel":1,"vendor_id":"X""#, true)], &[]);
    let e = update_err(&old, &with_vendor);
    assert_eq!(e.codes(), [ErrorCode::StorageCannotModifyIdeAtRuntime]);
    assert!(e.0[0].to_string().ends_with("ide device 1/1"));
    let disk_added = doc(&[], &[dvd(1, ch, false), disk(0, 1, ch)], &[]);
    assert_eq!(
        update_err(&old, &disk_added).codes(),
        [ErrorCode::StorageCannotModifyIdeAtRuntime]
    );
}

#[test]
fn update_nvme_not_diffed() {
    let old = doc(&[], &[], &[disk(1, 1, "")]);
    let new = doc(&[], &[], &[disk(2, 1, ""), disk(3, 1, "")]);
    assert!(update_ok(&old, &new).is_empty());
}

#[test]
fn update_merge_keeps_storage_without_base() {
    let old = doc(&[disk(0, 1, "")], &[], &[]);
    let nd = "eyJuaWNfZGV2aWNlcyI6W119"; // {"nic_devices":[]}
    let (new, changes) = read_update(
        format!(r#"{{"namespace_settings":[{{"namespace":"NetworkDevice","settings":"{nd}"}}]}}"#)
            .as_bytes(),
        &settings(&old),
    )
    .unwrap();
    assert!(changes.changes.is_empty());
    assert_eq!(new.controllers, settings(&old).controllers);
}

#[test]
fn update_merge_nics_kept_when_base_has_none() {
    let nic = "44444444-4444-4444-4444-444444444444";
    let old = settings(&format!(
        r#"{{"version":"V1","dynamic":{{"nic_devices":[{{"instance_id":"{nic}"}}]}}}}"#
    ));
    let (new, _) = read_update(br#"{"version":"V1","fixed":{"io_ring_size":32}}"#, &old).unwrap();
    assert_eq!(new.nics, old.nics);
    assert_eq!(new.fixed.io_ring_size, 32);
    // And NetworkAcceleration updates them.
    let accel = r#"{"nic_acceleration":[{"instance_id":"44444444-4444-4444-4444-444444444444","subordinate_instance_id":"55555555-5555-5555-5555-555555555555"}]}"#;
    let b64 = common::base64(accel.as_bytes());
    let (new, _) = read_update(
        format!(
            r#"{{"namespace_settings":[{{"namespace":"NetworkAcceleration","settings":"{b64}"}}]}}"#
        )
        .as_bytes(),
        &old,
    )
    .unwrap();
    assert_eq!(
        new.nics[0].subordinate_instance_id,
        Some(g("55555555-5555-5555-5555-555555555555"))
    );
}

#[test]
fn diff_direct() {
    let a = settings(&doc(&[disk(0, 1, "")], &[], &[]));
    assert!(diff(&a, &a).unwrap().changes.is_empty());
}
