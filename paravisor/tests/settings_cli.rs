//! `parastor settings` on the example documents in
//! `vtl2-settings/examples/settings/`, through the real binary.

mod common;

use common::text;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EXAMPLES: &[&str] = &[
    "nvme-to-scsi.json",
    "vscsi-to-scsi.json",
    "nvme-to-nvme.json",
    "striped.json",
    "ide-dvd.json",
    "namespace-chunk.json",
    "legacy-lun.json",
];

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vtl2-settings/examples/settings")
        .join(name)
}

fn parastor(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parastor"))
        .arg("settings")
        .args(args)
        .output()
        .expect("run parastor")
}

/// Runs `parastor settings check FILE`, asserts success, and returns the
/// topology (the output without its first line, which names the file and
/// format).
fn topology(file: &Path) -> String {
    let out = parastor(&[Path::new("check"), file]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {stdout}{}",
        file.display(),
        text(&out.stderr)
    );
    let (first, rest) = stdout.split_once('\n').unwrap();
    assert!(first.contains(": valid settings ("), "{first}");
    rest.to_owned()
}

fn convert(file: &Path, to: &str, out: &Path) {
    let o = parastor(&[
        Path::new("convert"),
        file,
        Path::new("--to"),
        Path::new(to),
        Path::new("-o"),
        out,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(o.stdout.is_empty());
}

#[test]
fn every_example_checks_valid() {
    let readme = std::fs::read_to_string(example("README.md")).unwrap();
    for name in EXAMPLES {
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} not in README"
        );
        let topo = topology(&example(name));
        assert!(topo.contains(" controller "), "{name}: {topo}");
        let out = parastor(&[Path::new("check"), &example(name), Path::new("--json")]);
        assert!(out.status.success(), "{name}");
        let json = text(&out.stdout);
        assert!(
            json.starts_with(r#"{"valid":true,"format":"json","fixed":{"#),
            "{name}: {json}"
        );
        assert_eq!(json.lines().count(), 1, "{name}");
        assert!(out.stderr.is_empty(), "{name}");
    }
}

#[test]
fn chunk_form_reads_like_its_base_document() {
    assert_eq!(
        topology(&example("namespace-chunk.json")),
        topology(&example("namespace-chunk.base.json"))
    );
}

#[test]
fn convert_round_trips_every_example() {
    let dir = tempfile::tempdir().unwrap();
    for name in EXAMPLES {
        let src = example(name);
        let expected = topology(&src);
        let pb = dir.path().join("a.pb");
        let json = dir.path().join("b.json");
        let pc = dir.path().join("c.postcard");
        let json2 = dir.path().join("d.json");
        convert(&src, "protobuf", &pb);
        convert(&pb, "json", &json);
        convert(&json, "postcard", &pc);
        convert(&pc, "json", &json2);
        for (file, format) in [
            (&pb, "protobuf"),
            (&json, "json"),
            (&pc, "postcard"),
            (&json2, "json"),
        ] {
            let out = parastor(&[Path::new("check"), file]);
            let stdout = text(&out.stdout);
            let (first, rest) = stdout.split_once('\n').unwrap();
            assert!(
                first.ends_with(&format!("valid settings ({format})")),
                "{name}: {first}"
            );
            assert_eq!(rest, expected, "{name} via {format}");
        }
        // The JSON written is a fixed point.
        assert_eq!(
            std::fs::read(&json).unwrap(),
            std::fs::read(&json2).unwrap()
        );
    }
}

#[test]
fn convert_writes_to_stdout_by_default() {
    let out = parastor(&[
        Path::new("convert"),
        &example("striped.json"),
        Path::new("--to"),
        Path::new("postcard"),
    ]);
    assert!(out.status.success());
    assert!(out.stdout.starts_with(b"\0PSTSET\x01"));
}

const INVALID: &str = r#"{"version":"V1","dynamic":{"storage_controllers":[
  {"instance_id":"ba6163d9-04a1-4d29-b605-72e2ffb1dc7f","protocol":"SCSI","luns":[
    {"location":64,"device_id":"e5b1a0c1-3f1d-4c5e-9a2b-000000000001",
     "physical_devices":{"type":"SINGLE","device":{"device_type":"NVME",
       "device_path":"f3e2d1c0-1000-4000-8000-0000000000a1","sub_device_path":1}}}]}]}}"#;

#[test]
fn invalid_document_exits_1_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, INVALID).unwrap();

    let out = parastor(&[Path::new("check"), &bad]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "Configuration.StorageLunLocationExceedsMaxLimits: \
             dynamic.storage_controllers[0].luns[0].location"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("scsi LUN 64"), "{stdout}");
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("invalid settings (1 error)"), "{stderr}");

    let out = parastor(&[Path::new("check"), &bad, Path::new("--json")]);
    assert_eq!(out.status.code(), Some(1));
    let json = text(&out.stdout);
    assert!(json.starts_with(r#"{"valid":false,"format":"json","errors":[{"code":"Configuration.StorageLunLocationExceedsMaxLimits","object":"instance ID: ba6163d9-04a1-4d29-b605-72e2ffb1dc7f, scsi LUN 64","path":"dynamic.storage_controllers[0].luns[0].location","message":"#), "{json}");

    // convert refuses it, with the errors on stderr and nothing on stdout.
    let out = parastor(&[
        Path::new("convert"),
        &bad,
        Path::new("--to"),
        Path::new("protobuf"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("StorageLunLocationExceedsMaxLimits"),
        "{}",
        text(&out.stderr)
    );

    // A missing file is one line on stderr.
    let out = parastor(&[Path::new("check"), &dir.path().join("missing.json")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).starts_with("parastor: error: cannot read "));
}

#[test]
fn diff_of_examples() {
    // Same controller; LUN 0 moves to another backing, LUN 1 goes away.
    let out = parastor(&[
        Path::new("diff"),
        &example("nvme-to-scsi.json"),
        &example("namespace-chunk.json"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let c = "controller ba6163d9-04a1-4d29-b605-72e2ffb1dc7f";
    assert_eq!(
        text(&out.stdout),
        format!(
            "3 changes:\n    remove LUN 0 on {c}\n    add LUN 0 on {c}: disk, backing NVMe \
             device f3e2d1c0-1000-4000-8000-0000000000a1 NSID 1\n    remove LUN 1 on {c}\n"
        )
    );

    // A striped disk cannot change at runtime.
    let out = parastor(&[
        Path::new("diff"),
        &example("nvme-to-scsi.json"),
        &example("striped.json"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("Configuration.StripedStorageCannotChangeControllerAtRuntime"),
        "{stdout}"
    );

    // Different SCSI controllers: one added, one removed.
    let out = parastor(&[
        Path::new("diff"),
        &example("nvme-to-scsi.json"),
        &example("vscsi-to-scsi.json"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout
            .matches("Configuration.StorageCannotAddRemoveControllerAtRuntime")
            .count(),
        2,
        "{stdout}"
    );

    // Unchanged: no changes.
    let out = parastor(&[
        Path::new("diff"),
        &example("ide-dvd.json"),
        &example("ide-dvd.json"),
    ]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "no changes\n");
}

/// `ide-dvd.json` with the media swapped: the IDE DVD loaded, the SCSI DVD
/// empty.
const IDE_DVD_SWAPPED: &str = r#"{"version":"V1","dynamic":{"storage_controllers":[
  {"instance_id":"8a2b4f10-5c3e-4d71-9a06-1e0f2c3b4a50","protocol":"IDE","luns":[
    {"channel":0,"location":0,"device_id":"e5b1a0c1-3f1d-4c5e-9a2b-000000000006",
     "vendor_id":"Msft","product_id":"Virtual Disk","product_revision_level":"1.0",
     "physical_devices":{"type":"SINGLE","device":{"device_type":"NVME",
       "device_path":"f3e2d1c0-1000-4000-8000-0000000000a1","sub_device_path":1}}},
    {"channel":1,"location":0,"is_dvd":true,"vendor_id":"Msft",
     "product_id":"Virtual DVD-ROM","product_revision_level":"1.0",
     "physical_devices":{"type":"SINGLE","device":{"device_type":"VSCSI",
       "device_path":"f3e2d1c0-2000-4000-8000-0000000000b1","sub_device_path":5}}}]},
  {"instance_id":"ba6163d9-04a1-4d29-b605-72e2ffb1dc7f","protocol":"SCSI","luns":[
    {"location":0,"is_dvd":true,"vendor_id":"Msft","product_id":"Virtual DVD-ROM"}]}]}}"#;

#[test]
fn diff_dvd_media_insert_and_eject() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("swapped.json");
    std::fs::write(&new, IDE_DVD_SWAPPED).unwrap();
    let out = parastor(&[Path::new("diff"), &example("ide-dvd.json"), &new]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout),
        "2 changes:\n    \
         insert DVD media at IDE 1:0 on controller 8a2b4f10-5c3e-4d71-9a06-1e0f2c3b4a50: \
         vSCSI device f3e2d1c0-2000-4000-8000-0000000000b1 LUN 5\n    \
         eject DVD media at LUN 0 on controller ba6163d9-04a1-4d29-b605-72e2ffb1dc7f\n"
    );

    // Changing the IDE disk as well is refused.
    let changed = IDE_DVD_SWAPPED.replace("\"sub_device_path\":1", "\"sub_device_path\":9");
    std::fs::write(&new, changed).unwrap();
    let out = parastor(&[Path::new("diff"), &example("ide-dvd.json"), &new]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "Configuration.StorageCannotModifyIdeAtRuntime: \
             dynamic.storage_controllers[0].luns[0]"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("ide device 0/0"), "{stdout}");
}
