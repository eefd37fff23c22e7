use super::*;
use clap::Parser;
use futures::executor::block_on;
use parastor_core::{Gpa, GpaRange, GuestMemory, InitiatorId, RamGuestMemory, SgList};
use parastor_hw::scsi::ScsiStatus;
use parastor_scsi::{ScsiResult, SenseDelivery};

#[derive(Parser, Debug)]
struct Wrap {
    #[command(flatten)]
    args: TcmuArgs,
}

fn parse(argv: &[&str]) -> Result<TcmuArgs, clap::Error> {
    Wrap::try_parse_from(std::iter::once("tcmu").chain(argv.iter().copied())).map(|w| w.args)
}

fn checked(argv: &[&str]) -> Result<Identity, String> {
    parse(argv).unwrap().check().map_err(|e| e.to_string())
}

#[test]
fn parses_the_contracts_options() {
    let a = parse(&[
        "mem:64M",
        "--name",
        "disk",
        "--vendor",
        "ACME",
        "--product",
        "Frobnicator",
        "--revision",
        "7.1",
        "--serial",
        "SN-0001",
        "--paths",
        "2",
        "--control",
        "/run/ctl",
        "--ready",
        "/run/ready",
    ])
    .unwrap();
    assert_eq!(a.spec.as_deref(), Some("mem:64M"));
    assert_eq!((a.name.as_str(), a.paths, a.dvd), ("disk", 2, false));
    assert_eq!(a.control, Some(PathBuf::from("/run/ctl")));
    assert_eq!(a.ready, Some(PathBuf::from("/run/ready")));
    assert_eq!(a.backstore_names(), ["disk-0", "disk-1"]);
    let id = a.check().unwrap();
    assert_eq!(id.vendor, Some(*b"ACME    "));
    assert_eq!(id.product, Some(*b"Frobnicator     "));
    assert_eq!(id.revision, Some(*b"7.1 "));
    assert_eq!(id.serial.as_deref(), Some(&b"SN-0001"[..]));

    let d = parse(&["--dvd"]).unwrap();
    assert_eq!(
        (d.spec.as_deref(), d.dvd, d.name.as_str(), d.paths),
        (None, true, "parastor", 1)
    );
    assert_eq!(d.backstore_names(), ["parastor"]);
    assert!(parse(&["mem:1M", "--paths", "x"]).is_err());
    assert!(parse(&["mem:1M", "--bogus"]).is_err());
    assert!(parse(&["mem:1M", "mem:2M"]).is_err());
}

#[test]
fn argument_errors_say_what_was_expected() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[],
            "a disk SPEC is required (or --dvd for an empty DVD drive)",
        ),
        (
            &["mem:1M", "--paths", "0"],
            "--paths 0 is invalid: expected 1 to 16",
        ),
        (
            &["mem:1M", "--paths", "17"],
            "--paths 17 is invalid: expected 1 to 16",
        ),
        (&["mem:1M", "--name", "a/b"], "--name \"a/b\" is invalid"),
        (&["mem:1M", "--name", ".x"], "--name \".x\" is invalid"),
        (
            &["mem:1M", "--vendor", "TOOLONGVENDOR"],
            "--vendor \"TOOLONGVENDOR\" is invalid: expected 1 to 8 printable ASCII characters",
        ),
        (&["mem:1M", "--product", ""], "--product \"\" is invalid"),
        (
            &["mem:1M", "--revision", "r\u{e9}v"],
            "--revision \"r\u{e9}v\" is invalid",
        ),
        (
            &["mem:1M", "--serial", "a\tb"],
            "--serial \"a\\tb\" is invalid",
        ),
        (
            &["--dvd", "--serial", "x"],
            "--serial is for disks: a DVD drive has no unit serial number page",
        ),
    ];
    for (argv, want) in cases {
        let got = checked(argv).unwrap_err();
        assert!(got.starts_with(want), "{argv:?}: {got}");
        assert!(!got.contains('\n'));
    }
    // A name that fits alone but not with the path suffix.
    let name = "n".repeat(63);
    let got = checked(&["mem:1M", "--name", &name, "--paths", "10"]).unwrap_err();
    assert!(got.contains(&format!("(here \"{name}-0\")")), "{got}");
    assert!(checked(&["mem:1M", "--name", &name]).is_ok());
    let serial = "s".repeat(252);
    assert!(checked(&["mem:1M", "--serial", &serial]).is_ok());
    let serial = "s".repeat(253);
    assert!(checked(&["mem:1M", "--serial", &serial]).is_err());
}

#[test]
fn leftovers_of_a_name_are_recognised() {
    let a = parse(&["mem:1M", "--name", "disk"]).unwrap();
    for ours in ["disk", "disk-0", "disk-15", "disk-123"] {
        assert!(a.is_ours(ours), "{ours}");
    }
    for not in [
        "disk-", "disk-a", "disk0", "disk-0-1", "diskette", "other", "dis",
    ] {
        assert!(!a.is_ours(not), "{not}");
    }
}

#[test]
fn device_ids_follow_the_name() {
    let id = |n: &str| checked(&["mem:1M", "--name", n]).unwrap().device_id;
    assert_eq!(id("a"), id("a"));
    assert_ne!(id("a"), id("b"));
    assert_ne!(id("a"), [0; 16]);
}

#[test]
fn control_commands_parse() {
    assert_eq!(
        ControlCommand::parse("resize 1048576\n"),
        Ok(ControlCommand::Resize(1 << 20))
    );
    assert_eq!(
        ControlCommand::parse("  resize   4096 "),
        Ok(ControlCommand::Resize(4096))
    );
    assert_eq!(ControlCommand::parse("eject"), Ok(ControlCommand::Eject));
    assert_eq!(
        ControlCommand::parse("insert file@2048:/tmp/a b.iso"),
        Ok(ControlCommand::Insert("file@2048:/tmp/a b.iso".into()))
    );
    for (bad, want) in [
        ("resize", "expected 'resize BYTES'"),
        ("resize 1M", "expected 'resize BYTES'"),
        ("resize -1", "expected 'resize BYTES'"),
        ("eject now", "eject takes no argument"),
        ("insert", "expected 'insert SPEC'"),
        ("", "unknown command ''"),
        ("grow 5", "unknown command 'grow 5'"),
    ] {
        let e = ControlCommand::parse(bad).unwrap_err();
        assert!(e.contains(want), "{bad:?}: {e}");
    }
}

const GPA: u64 = 0x1000;

/// Runs `cdb` on the LUN with a `len`-byte data-in buffer; the result and
/// the bytes.
fn run(lun: &Lun, cdb: &[u8], len: usize) -> (ScsiResult, Vec<u8>) {
    let mem = RamGuestMemory::new(1 << 20);
    let ranges = [GpaRange::new(Gpa::new(GPA), len as u64)];
    let sg = SgList::new(&mem, &ranges, true).unwrap();
    let who = InitiatorId::new(1);
    let r = block_on(lun.execute(cdb, sg, who, SenseDelivery::Autosense));
    let mut buf = vec![0; len];
    mem.read_at(Gpa::new(GPA), &mut buf).unwrap();
    (r, buf)
}

fn target(argv: &[&str]) -> Result<Target, String> {
    let args = parse(argv).unwrap();
    let identity = args.check().map_err(|e| e.to_string())?;
    build_target(&args, identity).map_err(|e| e.to_string())
}

/// READ CAPACITY (16): the last LBA + 1 and the block size.
fn capacity(lun: &Lun) -> (u64, u32) {
    let (r, buf) = run(
        lun,
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        32,
    );
    assert_eq!(r.status, ScsiStatus::GOOD);
    let last = u64::from_be_bytes(buf[..8].try_into().unwrap());
    (last + 1, u32::from_be_bytes(buf[8..12].try_into().unwrap()))
}

#[test]
fn identity_strings_reach_inquiry_unchanged() {
    let t = target(&[
        "mem:1M",
        "--vendor",
        "ACME",
        "--product",
        "Frob Disk",
        "--revision",
        "0.9a",
        "--serial",
        "SER 42",
    ])
    .unwrap();
    let (r, inq) = run(t.lun(), &[0x12, 0, 0, 0, 96, 0], 96);
    assert_eq!(r.status, ScsiStatus::GOOD);
    assert_eq!(inq[0] & 0x1f, 0, "direct-access device");
    assert_eq!(&inq[8..16], b"ACME    ");
    assert_eq!(&inq[16..32], b"Frob Disk       ");
    assert_eq!(&inq[32..36], b"0.9a");
    let (r, vpd) = run(t.lun(), &[0x12, 1, 0x80, 0, 64, 0], 64);
    assert_eq!(r.status, ScsiStatus::GOOD);
    assert_eq!(usize::from(vpd[3]), 6);
    assert_eq!(&vpd[4..10], b"SER 42");
    assert_eq!(t.size_bytes(), 1 << 20);
    assert_eq!(t.identity().serial.as_deref(), Some(&b"SER 42"[..]));
    // Reservations are the LUN's: a stack without them gets them.
    let disk = t.lun().as_disk().unwrap().disk();
    assert!(disk.persistent_reservations().is_some());
    assert_eq!(disk.kind(), "prwrap");
    let (r, _) = run(t.lun(), &[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0], 8);
    assert_eq!(
        r.status,
        ScsiStatus::GOOD,
        "PERSISTENT RESERVE IN, READ KEYS"
    );
    // One already there is not wrapped again.
    let t = target(&["prwrap:mem:1M"]).unwrap();
    let desc = t.lun().as_disk().unwrap().disk().describe();
    assert_eq!((desc.kind, desc.children[0].1.kind), ("prwrap", "ram"));

    let dvd = target(&["--dvd", "--vendor", "DVDCO", "--product", "Spinner"]).unwrap();
    let (r, inq) = run(dvd.lun(), &[0x12, 0, 0, 0, 36, 0], 36);
    assert_eq!(r.status, ScsiStatus::GOOD);
    assert_eq!(inq[0] & 0x1f, 5, "CD/DVD device");
    assert_eq!(&inq[8..16], b"DVDCO   ");
    assert_eq!(&inq[16..32], b"Spinner         ");
    assert_eq!(
        dvd.size_bytes(),
        2048,
        "an empty drive is one block to the kernel"
    );
}

#[test]
fn resize_reaches_the_leaf_under_decorators() {
    let t = target(&["mem:1M"]).unwrap();
    assert_eq!(capacity(t.lun()), (2048, 512));
    assert_eq!(
        t.control(&ControlCommand::Resize(2 << 20)).unwrap(),
        "resize 2097152: ok (4096 sectors of 512 bytes)"
    );
    assert_eq!(t.size_bytes(), 2 << 20);
    // The next command reports the change (UNIT ATTENTION), then the new
    // capacity shows.
    let (r, _) = run(t.lun(), &[0, 0, 0, 0, 0, 0], 0);
    assert_eq!(r.status, ScsiStatus::CHECK_CONDITION);
    assert_eq!(capacity(t.lun()), (4096, 512));

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, (0..64u8).collect::<Vec<_>>()).unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 64 << 10]).unwrap();
    let spec = format!("prwrap:crypt:{}:file@4096:{}", key.display(), img.display());
    let t = target(&[&spec]).unwrap();
    t.control(&ControlCommand::Resize(128 << 10)).unwrap();
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 128 << 10);
    assert_eq!(t.lun().as_disk().unwrap().capacity(), 32);

    let e = t.control(&ControlCommand::Resize(1000)).unwrap_err();
    assert!(e.contains("whole number of 4096-byte sectors"), "{e}");
    let e = t.control(&ControlCommand::Resize(0)).unwrap_err();
    assert!(e.contains("non-zero"), "{e}");
    let e = t.control(&ControlCommand::Eject).unwrap_err();
    assert!(e.contains("--dvd"), "{e}");

    for spec in ["memdiff:mem:1M", "striped:{mem:1M|mem:1M}"] {
        let t = target(&[spec]).unwrap();
        let e = t.control(&ControlCommand::Resize(4 << 20)).unwrap_err();
        assert!(e.contains("cannot be resized"), "{spec}: {e}");
    }
}

#[test]
fn dvd_media_change_through_control() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("a.iso");
    std::fs::write(&iso, vec![0u8; 8 * 2048]).unwrap();
    let t = target(&["--dvd"]).unwrap();
    assert!(t.lun().as_dvd().unwrap().media().is_none());
    let spec = format!("file@2048:{}", iso.display());
    assert_eq!(
        t.control(&ControlCommand::Insert(spec.clone())).unwrap(),
        format!("insert {spec}: ok")
    );
    assert_eq!(t.lun().as_dvd().unwrap().media().unwrap().sector_count(), 8);
    assert_eq!(t.size_bytes(), 8 * 2048);
    assert_eq!(t.control(&ControlCommand::Eject).unwrap(), "eject: ok");
    assert!(t.lun().as_dvd().unwrap().media().is_none());
    let e = t
        .control(&ControlCommand::Insert("file:/nonexistent.iso".into()))
        .unwrap_err();
    assert!(
        e.starts_with("insert: ") && e.contains("/nonexistent.iso"),
        "{e}"
    );
    let e = t.control(&ControlCommand::Resize(4096)).unwrap_err();
    assert!(e.contains("resize needs a disk"), "{e}");
    let e = target(&["mem:1M@4096", "--dvd"]).unwrap_err();
    assert!(e.starts_with("cannot use the medium as a DVD"), "{e}");
}

#[test]
fn the_ready_file_appears_whole() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("parastor.ready");
    run::announce("sda sg0\nsdb sg1\n", Some(&file)).unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "sda sg0\nsdb sg1\n"
    );
    // Only the file itself: the temporary one was renamed into place.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let e = run::announce("x\n", Some(&dir.path().join("missing/ready"))).unwrap_err();
    assert!(
        e.to_string().starts_with("cannot write the ready file "),
        "{e}"
    );
}

#[test]
fn the_control_fifo_carries_out_commands() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("ctl");
    let t = Arc::new(target(&["mem:1M"]).unwrap());
    run::start_control(&fifo, t.clone()).unwrap();
    let meta = std::fs::metadata(&fifo).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
    // Two writers one after the other; bad lines do not stop the loop.
    std::fs::write(&fifo, "bogus\n\nresize 1000\n").unwrap();
    std::fs::write(&fifo, "resize 2097152\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while t.size_bytes() != 2 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "resize not carried out"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // A FIFO already there is used; anything else is refused.
    run::start_control(&fifo, t.clone()).unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "").unwrap();
    let e = run::start_control(&plain, t).unwrap_err();
    assert!(
        e.to_string().starts_with("cannot make the control FIFO "),
        "{e}"
    );
}
