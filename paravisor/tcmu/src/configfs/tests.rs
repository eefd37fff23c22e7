//! The configfs steps against a model of the rules LIO's configfs
//! enforces, so a wrong order fails here as it would in the kernel.

use super::*;
use std::collections::BTreeMap;
use std::sync::Mutex;

const ROOT: &str = "/cfg/target";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    /// A directory; `default` ones come and go with their parent.
    Dir { default: bool },
    /// An attribute file (always made by the kernel).
    Attr(String),
    /// A symbolic link to a directory.
    Link(PathBuf),
}

/// A model of LIO's configfs tree: `mkdir` makes the kernel's default
/// attributes and groups; `rmdir` refuses a directory with anything made
/// under it (`ENOTEMPTY`) or one a link points into (`EBUSY`); attributes
/// cannot be created; a LUN can only link to an enabled backstore
/// (`ENODEV`). Every change is logged; one step can be made to fail.
#[derive(Default)]
struct Model {
    nodes: Mutex<BTreeMap<PathBuf, Node>>,
    log: Mutex<Vec<String>>,
    /// (operation, path relative to the root, errno) to fail once.
    fail: Mutex<Option<(&'static str, String, rustix::io::Errno)>>,
    hosts: Mutex<u32>,
}

fn err(errno: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(errno.raw_os_error())
}

fn rel(path: &Path) -> String {
    path.strip_prefix(ROOT)
        .unwrap_or(path)
        .display()
        .to_string()
}

impl Model {
    fn new() -> Arc<Model> {
        let m = Model::default();
        {
            let mut n = m.nodes.lock().unwrap();
            n.insert(PathBuf::from(ROOT), Node::Dir { default: true });
            n.insert(Path::new(ROOT).join("core"), Node::Dir { default: true });
        }
        Arc::new(m)
    }

    fn fs(self: &Arc<Self>) -> ConfigFs {
        ConfigFs::new(ROOT, self.clone())
    }

    fn fail_once(&self, op: &'static str, path: &str, errno: rustix::io::Errno) {
        *self.fail.lock().unwrap() = Some((op, path.to_owned(), errno));
    }

    fn check_fail(&self, op: &'static str, path: &Path) -> io::Result<()> {
        let mut fail = self.fail.lock().unwrap();
        if let Some((o, p, errno)) = &*fail
            && *o == op
            && *p == rel(path)
        {
            let e = err(*errno);
            *fail = None;
            return Err(e);
        }
        Ok(())
    }

    fn log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// The user-made entries (relative paths), as a listing of the tree.
    fn made(&self) -> Vec<String> {
        self.nodes
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| matches!(n, Node::Dir { default: false } | Node::Link(_)))
            .map(|(p, _)| rel(p))
            .collect()
    }

    fn value(&self, path: &str) -> Option<String> {
        match self.nodes.lock().unwrap().get(&Path::new(ROOT).join(path)) {
            Some(Node::Attr(v)) => Some(v.clone()),
            _ => None,
        }
    }

    /// The default attributes and groups the kernel makes with `path`.
    fn defaults(&self, path: &Path) -> Vec<(PathBuf, Node)> {
        let r = rel(path);
        let parts: Vec<&str> = r.split('/').collect();
        let attr = |name: &str, v: &str| (path.join(name), Node::Attr(v.to_owned()));
        let group = |name: &str| (path.join(name), Node::Dir { default: true });
        match parts.as_slice() {
            ["core", hba] if hba.starts_with("user_") => vec![attr("hba_info", "")],
            ["core", hba, _] if hba.starts_with("user_") => vec![
                attr("control", ""),
                attr("enable", "0"),
                group("attrib"),
                attr("attrib/pgr_support", "1"),
                attr("attrib/emulate_pr", "1"),
                group("action"),
                attr("action/block_dev", ""),
                attr("action/reset_ring", ""),
                group("pr"),
                group("wwn"),
            ],
            ["loopback", _, tpg] if tpg.starts_with("tpgt_") => {
                let mut hosts = self.hosts.lock().unwrap();
                let host = *hosts;
                *hosts += 1;
                let tag = tpg.trim_start_matches("tpgt_");
                vec![
                    attr("nexus", ""),
                    attr("transport_status", "online"),
                    attr("address", &format!("{host}:0:{tag}\n")),
                    group("lun"),
                    group("acls"),
                ]
            }
            ["loopback", _] => vec![group("fabric_statistics")],
            _ => vec![],
        }
    }
}

impl ConfigFsOps for Model {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        self.check_fail("mkdir", path)?;
        let defaults = self.defaults(path);
        let mut nodes = self.nodes.lock().unwrap();
        if nodes.contains_key(path) {
            return Err(err(rustix::io::Errno::EXIST));
        }
        match path.parent().and_then(|p| nodes.get(p)) {
            Some(Node::Dir { .. }) => {}
            _ => return Err(err(rustix::io::Errno::NOENT)),
        }
        nodes.insert(path.to_path_buf(), Node::Dir { default: false });
        nodes.extend(defaults);
        self.log
            .lock()
            .unwrap()
            .push(format!("mkdir {}", rel(path)));
        Ok(())
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        self.check_fail("rmdir", path)?;
        let mut nodes = self.nodes.lock().unwrap();
        match nodes.get(path) {
            Some(Node::Dir { default: false }) => {}
            Some(Node::Dir { default: true }) => return Err(err(rustix::io::Errno::PERM)),
            Some(_) => return Err(err(rustix::io::Errno::NOTDIR)),
            None => return Err(err(rustix::io::Errno::NOENT)),
        }
        let below = |p: &Path| p != path && p.starts_with(path);
        if nodes
            .iter()
            .any(|(p, n)| below(p) && matches!(n, Node::Dir { default: false } | Node::Link(_)))
        {
            return Err(err(rustix::io::Errno::NOTEMPTY));
        }
        if nodes
            .values()
            .any(|n| matches!(n, Node::Link(t) if t.starts_with(path)))
        {
            return Err(err(rustix::io::Errno::BUSY));
        }
        nodes.retain(|p, _| !p.starts_with(path));
        self.log
            .lock()
            .unwrap()
            .push(format!("rmdir {}", rel(path)));
        Ok(())
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        self.check_fail("write", path)?;
        let mut nodes = self.nodes.lock().unwrap();
        match nodes.get_mut(path) {
            Some(Node::Attr(v)) => *v = value.to_owned(),
            Some(_) => return Err(err(rustix::io::Errno::ISDIR)),
            None => return Err(err(rustix::io::Errno::NOENT)),
        }
        self.log
            .lock()
            .unwrap()
            .push(format!("write {} {value}", rel(path)));
        Ok(())
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        match self.nodes.lock().unwrap().get(path) {
            Some(Node::Attr(v)) => Ok(v.clone()),
            Some(_) => Err(err(rustix::io::Errno::ISDIR)),
            None => Err(err(rustix::io::Errno::NOENT)),
        }
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.check_fail("symlink", link)?;
        let mut nodes = self.nodes.lock().unwrap();
        if nodes.contains_key(link) {
            return Err(err(rustix::io::Errno::EXIST));
        }
        if !matches!(
            link.parent().and_then(|p| nodes.get(p)),
            Some(Node::Dir { .. })
        ) {
            return Err(err(rustix::io::Errno::NOENT));
        }
        if !matches!(nodes.get(target), Some(Node::Dir { .. })) {
            return Err(err(rustix::io::Errno::NOENT));
        }
        // LIO links only a configured (enabled) device into a LUN.
        if !matches!(nodes.get(&target.join("enable")), Some(Node::Attr(v)) if v == "1") {
            return Err(err(rustix::io::Errno::NODEV));
        }
        nodes.insert(link.to_path_buf(), Node::Link(target.to_path_buf()));
        self.log
            .lock()
            .unwrap()
            .push(format!("link {} -> {}", rel(link), rel(target)));
        Ok(())
    }

    fn unlink(&self, link: &Path) -> io::Result<()> {
        self.check_fail("unlink", link)?;
        let mut nodes = self.nodes.lock().unwrap();
        match nodes.get(link) {
            Some(Node::Link(_)) => {}
            Some(_) => return Err(err(rustix::io::Errno::PERM)),
            None => return Err(err(rustix::io::Errno::NOENT)),
        }
        nodes.remove(link);
        self.log
            .lock()
            .unwrap()
            .push(format!("unlink {}", rel(link)));
        Ok(())
    }

    fn read_link(&self, link: &Path) -> io::Result<PathBuf> {
        match self.nodes.lock().unwrap().get(link) {
            // configfs shows link targets as relative paths.
            Some(Node::Link(t)) => Ok(Path::new("../../../../../..").join(rel(t))),
            _ => Err(err(rustix::io::Errno::INVAL)),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(String, EntryKind)>> {
        let nodes = self.nodes.lock().unwrap();
        if !matches!(nodes.get(dir), Some(Node::Dir { .. })) {
            return Err(err(rustix::io::Errno::NOENT));
        }
        let mut out: Vec<(String, EntryKind)> = nodes
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .filter_map(|(p, n)| {
                let kind = match n {
                    Node::Dir { .. } => EntryKind::Dir,
                    Node::Link(_) => EntryKind::Link,
                    Node::Attr(_) => return None,
                };
                Some((p.file_name()?.to_str()?.to_owned(), kind))
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

fn config(name: &str) -> BackstoreConfig {
    BackstoreConfig::new(0, name, 64 << 20, 512, MAX_TRANSFER_BYTES)
}

#[test]
fn creates_and_removes_in_the_kernels_order() {
    let model = Model::new();
    let fs = model.fs();
    let backstore = Backstore::create(&fs, &config("parastor")).unwrap();
    assert_eq!(
        model.log(),
        [
            "mkdir core/user_0",
            "mkdir core/user_0/parastor",
            "write core/user_0/parastor/control dev_config=parastor",
            "write core/user_0/parastor/control dev_size=67108864",
            "write core/user_0/parastor/control hw_block_size=512",
            "write core/user_0/parastor/control hw_max_sectors=2048",
            "write core/user_0/parastor/attrib/pgr_support 0",
            "write core/user_0/parastor/enable 1",
        ]
    );
    assert_eq!(
        backstore.dir(),
        Path::new(ROOT).join("core/user_0/parastor")
    );
    let wwn = target_wwn("parastor");
    let target = LoopTarget::create(&fs, &backstore).unwrap();
    assert_eq!(target.wwn(), wwn);
    let tpg = format!("loopback/{wwn}/tpgt_1");
    assert_eq!(
        model.log(),
        [
            "mkdir loopback".to_owned(),
            format!("mkdir loopback/{wwn}"),
            format!("mkdir {tpg}"),
            format!("write {tpg}/nexus {}", initiator_wwn("parastor")),
            format!("mkdir {tpg}/lun/lun_0"),
            format!("link {tpg}/lun/lun_0/parastor -> core/user_0/parastor"),
        ]
    );
    assert_eq!(target.scsi_address().unwrap(), [0, 0, 1, 0]);

    // The backstore cannot go while the LUN links to it.
    let e = Backstore::create(&fs, &config("parastor")).unwrap_err();
    assert_eq!(e.io_error().kind(), io::ErrorKind::AlreadyExists);
    assert!(
        e.to_string()
            .starts_with("cannot create /cfg/target/core/user_0/parastor: "),
        "{e}"
    );
    assert_eq!(model.log(), Vec::<String>::new());

    target.remove().unwrap();
    assert_eq!(
        model.log(),
        [
            format!("unlink {tpg}/lun/lun_0/parastor"),
            format!("rmdir {tpg}/lun/lun_0"),
            format!("rmdir {tpg}"),
            format!("rmdir loopback/{wwn}"),
        ]
    );
    backstore.remove().unwrap();
    assert_eq!(
        model.log(),
        ["rmdir core/user_0/parastor", "rmdir core/user_0"]
    );
    assert_eq!(model.made(), ["loopback"]);
}

#[test]
fn a_backstore_in_use_is_refused_and_an_hba_in_use_stays() {
    let model = Model::new();
    let fs = model.fs();
    let a = Backstore::create(&fs, &config("a")).unwrap();
    let b = Backstore::create(&fs, &config("b")).unwrap();
    let target = LoopTarget::create(&fs, &a).unwrap();
    model.log();
    // Removing the backstore first is refused by the kernel (EBUSY); the
    // error names the path.
    let dir = a.dir();
    let e = a.remove().unwrap_err();
    assert_eq!(e.path(), dir);
    assert_eq!(
        e.io_error().raw_os_error(),
        Some(rustix::io::Errno::BUSY.raw_os_error())
    );
    target.remove().unwrap();
    // `a` was consumed by the failed remove; the directory is still there
    // and removable by hand, as a later cleanup would.
    fs.rmdir(&dir).unwrap();
    model.log();
    b.remove().unwrap();
    assert_eq!(model.log(), ["rmdir core/user_0/b", "rmdir core/user_0"]);
    // `user_0` stays while another backstore is in it.
    let c = Backstore::create(&fs, &config("c")).unwrap();
    let d = Backstore::create(
        &fs,
        &BackstoreConfig {
            hba: 0,
            ..config("d")
        },
    )
    .unwrap();
    model.log();
    c.remove().unwrap();
    assert_eq!(model.log(), ["rmdir core/user_0/c"]);
    drop(d);
    assert_eq!(model.made(), ["loopback"]);
}

#[test]
fn failed_steps_name_the_path_value_and_errno_and_leave_nothing() {
    let model = Model::new();
    let fs = model.fs();
    model.fail_once("write", "core/user_0/x/control", rustix::io::Errno::INVAL);
    let e = Backstore::create(&fs, &config("x")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot write \"dev_config=parastor\" to /cfg/target/core/user_0/x/control: Invalid \
         argument (os error 22) (the kernel log says why)"
    );
    assert_eq!(model.made(), Vec::<String>::new());

    // The link to a backstore that is not enabled is refused (ENODEV)
    // and the half-made target goes away.
    let backstore = Backstore::create(&fs, &config("x")).unwrap();
    fs.ops.write(&backstore.dir().join("enable"), "0").unwrap();
    model.log();
    let e = LoopTarget::create(&fs, &backstore).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "cannot link /cfg/target/core/user_0/x as /cfg/target/loopback/{}/tpgt_1/lun/lun_0/x: ",
            target_wwn("x")
        )),
        "{e}"
    );
    assert_eq!(
        e.io_error().raw_os_error(),
        Some(rustix::io::Errno::NODEV.raw_os_error())
    );
    assert_eq!(model.made(), ["core/user_0", "core/user_0/x", "loopback"]);
    model.log();

    // A nexus the kernel refuses: the TPG and target are removed again.
    fs.ops.write(&backstore.dir().join("enable"), "1").unwrap();
    let tpg = format!("loopback/{}/tpgt_1", target_wwn("x"));
    model.fail_once("write", &format!("{tpg}/nexus"), rustix::io::Errno::INVAL);
    model.log();
    let e = LoopTarget::create(&fs, &backstore).unwrap_err();
    assert!(e.to_string().contains("/nexus"), "{e}");
    let log = model.log();
    assert_eq!(
        log[log.len() - 2..],
        [
            format!("rmdir {tpg}"),
            format!("rmdir loopback/{}", target_wwn("x"))
        ]
    );
    drop(backstore);
    assert_eq!(model.made(), ["loopback"]);
    model.log();

    let e = Backstore::create(&fs, &config("../x")).unwrap_err();
    assert_eq!(e.io_error().kind(), io::ErrorKind::InvalidInput);
    assert!(model.log().is_empty());
}

#[test]
fn drop_tears_down_in_order() {
    let model = Model::new();
    let fs = model.fs();
    let backstore = Backstore::create(&fs, &config("p")).unwrap();
    let target = LoopTarget::create(&fs, &backstore).unwrap();
    model.log();
    drop(target);
    drop(backstore);
    let log = model.log();
    assert_eq!(log.len(), 6, "{log:?}");
    assert!(log[0].starts_with("unlink "), "{log:?}");
    assert_eq!(log[4..], ["rmdir core/user_0/p", "rmdir core/user_0"]);
    assert_eq!(model.made(), ["loopback"]);
}

#[test]
fn cleanup_removes_only_dead_leftovers_of_ours() {
    let model = Model::new();
    let fs = model.fs();
    // A crashed run's backstores and targets: linked, never linked
    // (only the WWN tells), and never enabled.
    let (mut targets, mut backstores) = (Vec::new(), Vec::new());
    for name in ["parastor", "parastor-0", "foreign", "parastor-live"] {
        let b = Backstore::create(&fs, &config(name)).unwrap();
        targets.push(LoopTarget::create(&fs, &b).unwrap());
        backstores.push(b);
    }
    let half = Backstore::create(&fs, &config("parastor-1")).unwrap();
    let tpg = fs.loop_dir(&target_wwn("parastor-1")).join("tpgt_1");
    fs.mkdir(&fs.loop_dir(&target_wwn("parastor-1"))).unwrap();
    fs.mkdir(&tpg).unwrap();
    fs.mkdir(&fs.backstore_dir(0, "parastor-2")).unwrap();
    // A foreign target that links to our dead backstore (it must go, or
    // the backstore cannot) and an empty foreign target (it stays).
    fs.mkdir(&fs.loop_dir("naa.5001405000000001")).unwrap();
    fs.mkdir(&fs.loop_dir("naa.5001405000000001").join("tpgt_2"))
        .unwrap();
    let lun = fs.loop_dir("naa.5001405000000001").join("tpgt_2/lun/lun_3");
    fs.mkdir(&lun).unwrap();
    fs.ops
        .symlink(&fs.backstore_dir(0, "parastor-0"), &lun.join("any"))
        .unwrap();
    fs.mkdir(&fs.loop_dir("naa.5001405000000002")).unwrap();
    // The crashed process never tore them down.
    std::mem::forget(targets);
    std::mem::forget(backstores);
    std::mem::forget(half);
    model.log();

    let ours = |name: &str| {
        name == "parastor"
            || name
                .strip_prefix("parastor-")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let served = |hba: u32, name: &str| hba == 0 && name == "parastor-live";
    let removed = fs.cleanup_leftovers(&ours, &served).unwrap();
    let removed: Vec<String> = removed.iter().map(|p| rel(p)).collect();
    let w = |n: &str| format!("loopback/{}", target_wwn(n));
    let mut expected = vec![
        "loopback/naa.5001405000000001".to_owned(),
        w("parastor"),
        w("parastor-0"),
        w("parastor-1"),
    ];
    expected.sort();
    expected.extend(
        ["parastor", "parastor-0", "parastor-1", "parastor-2"].map(|n| format!("core/user_0/{n}")),
    );
    let mut got_targets = removed[..4].to_vec();
    got_targets.sort();
    assert_eq!([got_targets, removed[4..].to_vec()].concat(), expected);

    // The doomed targets' transports went offline, then the rings were
    // blocked and reset, all before any LUN was unlinked.
    let log = model.log();
    let first_unlink = log.iter().position(|l| l.starts_with("unlink")).unwrap();
    let writes: Vec<&String> = log[..first_unlink]
        .iter()
        .filter(|l| l.starts_with("write"))
        .collect();
    let offline = |n: &str| format!("write {}/tpgt_1/transport_status offline", w(n));
    let mut offlines = vec![offline("parastor"), offline("parastor-0")];
    offlines.push("write loopback/naa.5001405000000001/tpgt_2/transport_status offline".into());
    offlines.push(offline("parastor-1"));
    let mut got_offlines: Vec<String> = writes[..4].iter().map(|s| s.to_string()).collect();
    got_offlines.sort();
    offlines.sort();
    assert_eq!(got_offlines, offlines);
    assert_eq!(
        writes[4..],
        [
            "write core/user_0/parastor/action/block_dev 1",
            "write core/user_0/parastor/action/reset_ring 2",
            "write core/user_0/parastor-0/action/block_dev 1",
            "write core/user_0/parastor-0/action/reset_ring 2",
            "write core/user_0/parastor-1/action/block_dev 1",
            "write core/user_0/parastor-1/action/reset_ring 2",
            "write core/user_0/parastor-2/action/block_dev 1",
            "write core/user_0/parastor-2/action/reset_ring 2",
        ]
    );
    // What was foreign or alive is untouched.
    let wl = w("parastor-live");
    let wf = w("foreign");
    assert_eq!(
        model.made(),
        [
            "core/user_0".to_owned(),
            "core/user_0/foreign".to_owned(),
            "core/user_0/parastor-live".to_owned(),
            "loopback".to_owned(),
            "loopback/naa.5001405000000002".to_owned(),
            wf.clone(),
            format!("{wf}/tpgt_1/lun/lun_0"),
            format!("{wf}/tpgt_1/lun/lun_0/foreign"),
            format!("{wf}/tpgt_1"),
            wl.clone(),
            format!("{wl}/tpgt_1/lun/lun_0"),
            format!("{wl}/tpgt_1/lun/lun_0/parastor-live"),
            format!("{wl}/tpgt_1"),
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    assert_eq!(
        model.value(&format!("{wl}/tpgt_1/nexus")),
        Some(initiator_wwn("parastor-live"))
    );

    // A second cleanup finds nothing; so does one on an empty tree.
    assert!(fs.cleanup_leftovers(&ours, &served).unwrap().is_empty());
    let empty = Model::new();
    assert!(
        empty
            .fs()
            .cleanup_leftovers(&ours, &served)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn names_and_wwns() {
    let w = target_wwn("parastor");
    assert_eq!(w.len(), 4 + 16);
    assert!(w.starts_with("naa.5001405"), "{w}");
    assert!(w[4..].bytes().all(|b| b.is_ascii_hexdigit()), "{w}");
    assert_eq!(w, target_wwn("parastor"), "stable");
    assert_ne!(w, target_wwn("parastor-0"));
    assert_ne!(w, initiator_wwn("parastor"));
    assert_eq!(initiator_wwn("parastor").len(), 20);
    for ok in ["parastor", "p-0", "a.b_c", "X9"] {
        assert!(is_valid_name(ok), "{ok}");
    }
    let long = "x".repeat(65);
    for bad in ["", ".x", "-x", "a/b", "a b", "ä", long.as_str()] {
        assert!(!is_valid_name(bad), "{bad}");
    }
    assert_eq!(parse_address("3:0:1\n"), Some([3, 0, 1, 0]));
    for bad in ["", "3:0", "3:0:1:2", "a:0:1", "3::1"] {
        assert_eq!(parse_address(bad), None, "{bad}");
    }
    assert_eq!(
        backstore_of_link(Path::new("../../../../core/user_2/disk")),
        Some((2, "disk".to_owned()))
    );
    assert_eq!(
        backstore_of_link(Path::new("../../core/fileio_0/disk")),
        None
    );
    assert_eq!(
        BackstoreConfig::new(0, "d", 2048, 2048, 1 << 20).max_sectors,
        512
    );
    assert_eq!(BackstoreConfig::new(0, "d", 2048, 4096, 100).max_sectors, 1);
}

#[test]
fn finds_the_luns_devices_in_sysfs() {
    let sysfs = tempfile::tempdir().unwrap();
    let dev = tempfile::tempdir().unwrap();
    let model = Model::new();
    let fs = model.fs();
    let backstore = Backstore::create(&fs, &config("p")).unwrap();
    let target = LoopTarget::create(&fs, &backstore).unwrap();
    let device = sysfs.path().join("class/scsi_device/0:0:1:0/device");
    // Nothing yet: gives up when told, or at the timeout.
    let e = target
        .wait_for_devices(sysfs.path(), dev.path(), Duration::from_secs(60), &|| true)
        .unwrap_err();
    assert_eq!(e.io_error().kind(), io::ErrorKind::Interrupted);
    std::fs::create_dir_all(device.join("block/sdb")).unwrap();
    std::fs::write(dev.path().join("sdb"), "").unwrap();
    let e = target
        .wait_for_devices(sysfs.path(), dev.path(), Duration::from_millis(30), &|| {
            false
        })
        .unwrap_err();
    assert_eq!(e.io_error().kind(), io::ErrorKind::TimedOut);
    assert!(e.to_string().contains("class/scsi_device/0:0:1:0"), "{e}");
    // The sg device shows up a little later, its node later still; until
    // both nodes are there, the wait goes on.
    std::fs::create_dir_all(device.join("scsi_generic/sg2")).unwrap();
    let e = target
        .wait_for_devices(sysfs.path(), dev.path(), Duration::from_millis(30), &|| {
            false
        })
        .unwrap_err();
    assert_eq!(e.io_error().kind(), io::ErrorKind::TimedOut);
    let node = dev.path().join("sg2");
    let maker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::write(node, "").unwrap();
    });
    let names = target
        .wait_for_devices(sysfs.path(), dev.path(), Duration::from_secs(10), &|| false)
        .unwrap();
    maker.join().unwrap();
    assert_eq!(names.to_string(), "sdb sg2");
    assert_eq!(
        scsi_names(sysfs.path(), [0, 0, 1, 0]),
        Some(ScsiNames {
            block: "sdb".into(),
            generic: "sg2".into()
        })
    );
    assert_eq!(scsi_names(sysfs.path(), [0, 0, 2, 0]), None);
}

#[test]
fn std_fs_does_what_the_trait_says() {
    let dir = tempfile::tempdir().unwrap();
    let fs = StdFs;
    let a = dir.path().join("a");
    fs.mkdir(&a).unwrap();
    assert_eq!(
        fs.mkdir(&a).unwrap_err().kind(),
        io::ErrorKind::AlreadyExists
    );
    std::fs::write(a.join("attr"), "").unwrap();
    fs.write(&a.join("attr"), "v=1").unwrap();
    assert_eq!(fs.read(&a.join("attr")).unwrap(), "v=1");
    assert_eq!(
        fs.write(&a.join("missing"), "x").unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    let b = dir.path().join("b");
    fs.mkdir(&b).unwrap();
    fs.symlink(&a, &b.join("l")).unwrap();
    assert_eq!(fs.read_link(&b.join("l")).unwrap(), a);
    assert_eq!(fs.list(&b).unwrap(), [("l".to_owned(), EntryKind::Link)]);
    assert_eq!(
        fs.list(dir.path()).unwrap(),
        [
            ("a".to_owned(), EntryKind::Dir),
            ("b".to_owned(), EntryKind::Dir)
        ]
    );
    fs.unlink(&b.join("l")).unwrap();
    fs.rmdir(&b).unwrap();
    assert!(!b.exists());
    ensure_pr_dir(&dir.path().join("etc/target/pr")).unwrap();
    ensure_pr_dir(&dir.path().join("etc/target/pr")).unwrap();
    assert!(dir.path().join("etc/target/pr").is_dir());
}
