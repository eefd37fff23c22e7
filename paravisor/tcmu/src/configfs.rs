//! Creating and removing a TCMU backstore and its tcm_loop target through
//! configfs (`/sys/kernel/config/target`), and finding the SCSI devices
//! the kernel makes of them.
//!
//! The kernel's LIO target is configured by making directories, writing
//! attribute files and making symbolic links in configfs; each step's
//! errno is all the kernel says (the reason goes to its log). So every
//! step here is one [`ConfigFsOps`] call, and a failed step is a
//! [`ConfigFsError`] naming the path, the value written and the errno.
//!
//! The order, as the kernel needs it:
//!
//! 1. [`Backstore::create`]: `core/user_N/NAME`, its `control` parameters
//!    (`dev_config`, `dev_size`, `hw_block_size`, `hw_max_sectors`),
//!    `attrib/pgr_support` = 0 (so PERSISTENT RESERVE IN/OUT and
//!    RESERVE/RELEASE reach the handler instead of the kernel's own
//!    reservations), then `enable` = 1, which registers the `uio` device.
//! 2. The handler opens the `uio` device and serves the ring: from the next
//!    step on, the kernel sends commands and waits for their answers.
//! 3. [`LoopTarget::create`]: `loopback/naa.<wwn>/tpgt_1`, its `nexus`,
//!    `lun/lun_0` and the link to the backstore; linking makes the kernel
//!    scan the LUN (INQUIRY, READ CAPACITY, … through the ring), and
//!    [`LoopTarget::wait_for_devices`] finds the `/dev/sdX` (`srX`) and
//!    `/dev/sgN` in sysfs.
//!
//! Teardown runs backwards: [`LoopTarget::remove`] while the handler still
//! serves (removing the SCSI device may send SYNCHRONIZE CACHE), then the
//! handler stops and closes the `uio` device, then [`Backstore::remove`].
//! A process that died without tearing down leaves these behind;
//! [`ConfigFs::cleanup_leftovers`] removes them (failing the commands a
//! dead handler will never answer first, so removing the SCSI device does
//! not wait for them).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where LIO's configfs tree is on a Linux host.
pub const CONFIGFS_TARGET: &str = "/sys/kernel/config/target";

/// Where LIO keeps persistent-reservation state; without the directory a
/// PERSISTENT RESERVE OUT that the kernel handles itself answers NOT READY.
pub const PR_STATE_DIR: &str = "/etc/target/pr";

/// The largest transfer of one command through TCMU that parastor offers:
/// each command's data sits in the ring's data area while it is in flight,
/// and 128 commands (the kernel's queue depth for a TCMU device) of 1 MiB
/// fit in its default 1 GiB data area many times over, so a full queue of
/// the largest commands never waits for data-area space.
pub const MAX_TRANSFER_BYTES: u32 = 1 << 20;

/// The configfs operations LIO's configuration needs: a trait so tests can
/// run the same code against a model of configfs's rules ([`StdFs`] is the
/// real thing).
pub trait ConfigFsOps: Send + Sync {
    /// Makes a directory (configfs makes the item and its default
    /// attributes and groups).
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory (configfs removes the item with its attributes
    /// and default groups; anything made under it must be gone first).
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    /// Writes `value` to an attribute file in one `write`.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Reads an attribute file.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Makes the symbolic link `link` pointing at `target`.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Removes the symbolic link `link`.
    fn unlink(&self, link: &Path) -> io::Result<()>;
    /// Where the symbolic link `link` points.
    fn read_link(&self, link: &Path) -> io::Result<PathBuf>;
    /// The entries of a directory: name and whether it is a symbolic link
    /// (or else a directory; attribute files are left out).
    fn list(&self, dir: &Path) -> io::Result<Vec<(String, EntryKind)>>;
}

/// What a directory entry is, as [`ConfigFsOps::list`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    /// A directory (a configfs item or group).
    Dir,
    /// A symbolic link.
    Link,
}

/// [`ConfigFsOps`] on the real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

impl ConfigFsOps for StdFs {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        use std::io::Write as _;
        // One write call: configfs attributes take the value of a write,
        // and a split value would be two (wrong) values.
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        let n = file.write(value.as_bytes())?;
        if n != value.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("took {n} of {} bytes", value.len()),
            ));
        }
        Ok(())
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn unlink(&self, link: &Path) -> io::Result<()> {
        std::fs::remove_file(link)
    }

    fn read_link(&self, link: &Path) -> io::Result<PathBuf> {
        std::fs::read_link(link)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(String, EntryKind)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let kind = if kind.is_symlink() {
                EntryKind::Link
            } else if kind.is_dir() {
                EntryKind::Dir
            } else {
                continue;
            };
            if let Some(name) = entry.file_name().to_str() {
                out.push((name.to_owned(), kind));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A configfs step that failed: what was done, where, and what the kernel
/// answered.
#[derive(Debug)]
pub struct ConfigFsError {
    action: String,
    path: PathBuf,
    source: io::Error,
}

impl ConfigFsError {
    fn new(action: impl Into<String>, path: &Path, source: io::Error) -> Self {
        ConfigFsError {
            action: action.into(),
            path: path.to_path_buf(),
            source,
        }
    }

    /// The path the step worked on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the kernel (or file system) answered.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }
}

impl fmt::Display for ConfigFsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.action,
            self.path.display(),
            self.source
        )?;
        // The kernel logs why it refused a configfs write.
        if self.source.kind() == io::ErrorKind::InvalidInput {
            f.write_str(" (the kernel log says why)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigFsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// LIO's configfs tree: its root (normally [`CONFIGFS_TARGET`]) and the
/// operations that change it.
#[derive(Clone)]
pub struct ConfigFs {
    root: PathBuf,
    ops: Arc<dyn ConfigFsOps>,
}

impl fmt::Debug for ConfigFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigFs")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl ConfigFs {
    /// The tree at `root`, changed through `ops`.
    pub fn new(root: impl Into<PathBuf>, ops: Arc<dyn ConfigFsOps>) -> ConfigFs {
        ConfigFs {
            root: root.into(),
            ops,
        }
    }

    /// The host's tree ([`CONFIGFS_TARGET`], [`StdFs`]).
    pub fn host() -> ConfigFs {
        ConfigFs::new(CONFIGFS_TARGET, Arc::new(StdFs))
    }

    /// The root of the tree.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `core/user_<hba>`: the TCMU HBA directory.
    pub fn hba_dir(&self, hba: u32) -> PathBuf {
        self.root.join("core").join(format!("user_{hba}"))
    }

    /// `core/user_<hba>/<name>`: a TCMU backstore's directory.
    pub fn backstore_dir(&self, hba: u32, name: &str) -> PathBuf {
        self.hba_dir(hba).join(name)
    }

    /// `loopback/<wwn>`: a tcm_loop target's directory.
    pub fn loop_dir(&self, wwn: &str) -> PathBuf {
        self.root.join("loopback").join(wwn)
    }

    fn mkdir(&self, path: &Path) -> Result<(), ConfigFsError> {
        self.ops
            .mkdir(path)
            .map_err(|e| ConfigFsError::new("create", path, e))
    }

    /// Makes `path` unless it is there already.
    fn mkdir_existing_ok(&self, path: &Path) -> Result<(), ConfigFsError> {
        match self.ops.mkdir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r.map_err(|e| ConfigFsError::new("create", path, e)),
        }
    }

    fn rmdir(&self, path: &Path) -> Result<(), ConfigFsError> {
        self.ops
            .rmdir(path)
            .map_err(|e| ConfigFsError::new("remove", path, e))
    }

    fn write(&self, path: &Path, value: &str) -> Result<(), ConfigFsError> {
        self.ops
            .write(path, value)
            .map_err(|e| ConfigFsError::new(format!("write {value:?} to"), path, e))
    }

    fn read(&self, path: &Path) -> Result<String, ConfigFsError> {
        self.ops
            .read(path)
            .map_err(|e| ConfigFsError::new("read", path, e))
    }

    fn list(&self, dir: &Path) -> Result<Vec<(String, EntryKind)>, ConfigFsError> {
        self.ops
            .list(dir)
            .map_err(|e| ConfigFsError::new("list", dir, e))
    }

    /// Removes what an earlier run left behind: every tcm_loop target
    /// whose LUN links to a TCMU backstore `ours` accepts, or whose WWN is
    /// [`target_wwn`] of such a name, then those backstores — except
    /// backstores `served(hba, name)` says a live process serves (and the
    /// targets linked to them). Before a dead backstore's LUN is unlinked,
    /// its tcm_loop transport is taken offline and its ring blocked and
    /// reset, so the commands nobody will answer fail instead of holding
    /// up the removal. Returns the directories removed.
    pub fn cleanup_leftovers(
        &self,
        ours: &dyn Fn(&str) -> bool,
        served: &dyn Fn(u32, &str) -> bool,
    ) -> Result<Vec<PathBuf>, ConfigFsError> {
        let mut removed = Vec::new();
        // The dead backstores of ours: (hba, name).
        let mut dead = Vec::new();
        let core = self.root.join("core");
        let hbas = match self.ops.list(&core) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ConfigFsError::new("list", &core, e)),
        };
        for (hba_name, kind) in hbas {
            let Some(hba) = hba_name
                .strip_prefix("user_")
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if kind != EntryKind::Dir {
                continue;
            }
            for (name, kind) in self.list(&self.hba_dir(hba))? {
                if kind == EntryKind::Dir && ours(&name) && !served(hba, &name) {
                    dead.push((hba, name));
                }
            }
        }
        let loopback = self.root.join("loopback");
        let targets = match self.ops.list(&loopback) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ConfigFsError::new("list", &loopback, e)),
        };
        let dead_wwns: Vec<String> = dead.iter().map(|(_, name)| target_wwn(name)).collect();
        let is_dead = |hba: &u32, name: &String| dead.iter().any(|(h, n)| h == hba && n == name);
        let mut doomed = Vec::new();
        for (wwn, kind) in targets {
            if kind != EntryKind::Dir {
                continue;
            }
            let dir = loopback.join(&wwn);
            let links = self.loop_links(&dir)?;
            let to_dead = links.iter().any(|(_, hba, name)| is_dead(hba, name));
            let to_live = links.iter().any(|(_, hba, name)| !is_dead(hba, name));
            // A target of ours that never got its LUN is found by its WWN;
            // one that links to anything still alive is not touched.
            if to_live || !(to_dead || dead_wwns.contains(&wwn)) {
                continue;
            }
            doomed.push(dir);
        }
        // Nobody answers these LUNs any more. Take their transport offline
        // first, so removing the SCSI device (which may send SYNCHRONIZE
        // CACHE) fails its commands at once instead of retrying them;
        // then block the dead rings and fail what is on them. Errors are
        // left alone: a backstore never enabled has no ring, a TPG may be
        // half made.
        for dir in &doomed {
            for (tpg, kind) in self.ops.list(dir).unwrap_or_default() {
                if kind == EntryKind::Dir && tpg.starts_with("tpgt_") {
                    let status = dir.join(tpg).join("transport_status");
                    let _ = self.ops.write(&status, "offline");
                }
            }
        }
        for (hba, name) in &dead {
            let action = self.backstore_dir(*hba, name).join("action");
            let _ = self.ops.write(&action.join("block_dev"), "1");
            let _ = self.ops.write(&action.join("reset_ring"), "2");
        }
        for dir in doomed {
            self.remove_loop_tree(&dir)?;
            removed.push(dir);
        }
        for (hba, name) in dead {
            let dir = self.backstore_dir(hba, &name);
            self.rmdir(&dir)?;
            removed.push(dir);
            // The HBA directory goes when it is empty; one still in use
            // stays.
            let _ = self.ops.rmdir(&self.hba_dir(hba));
        }
        Ok(removed)
    }

    /// The LUN links under a tcm_loop target directory: (link path, HBA,
    /// backstore name) of each that points at a `core/user_N/NAME`.
    fn loop_links(&self, dir: &Path) -> Result<Vec<(PathBuf, u32, String)>, ConfigFsError> {
        let mut out = Vec::new();
        for (tpg, kind) in self.list(dir)? {
            if kind != EntryKind::Dir || !tpg.starts_with("tpgt_") {
                continue;
            }
            let luns = dir.join(&tpg).join("lun");
            let Ok(lun_entries) = self.ops.list(&luns) else {
                continue;
            };
            for (lun, kind) in lun_entries {
                if kind != EntryKind::Dir {
                    continue;
                }
                for (link, kind) in self.list(&luns.join(&lun))? {
                    if kind != EntryKind::Link {
                        continue;
                    }
                    let path = luns.join(&lun).join(&link);
                    let Ok(target) = self.ops.read_link(&path) else {
                        continue;
                    };
                    if let Some((hba, name)) = backstore_of_link(&target) {
                        out.push((path, hba, name));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes a whole tcm_loop target: its LUN links, LUNs, TPGs and the
    /// target directory, in that order.
    fn remove_loop_tree(&self, dir: &Path) -> Result<(), ConfigFsError> {
        for (tpg, kind) in self.list(dir)? {
            if kind != EntryKind::Dir || !tpg.starts_with("tpgt_") {
                continue;
            }
            let tpg_dir = dir.join(&tpg);
            let luns = tpg_dir.join("lun");
            if let Ok(lun_entries) = self.ops.list(&luns) {
                for (lun, kind) in lun_entries {
                    if kind != EntryKind::Dir {
                        continue;
                    }
                    let lun_dir = luns.join(&lun);
                    for (link, kind) in self.list(&lun_dir)? {
                        if kind == EntryKind::Link {
                            let path = lun_dir.join(link);
                            self.ops
                                .unlink(&path)
                                .map_err(|e| ConfigFsError::new("unlink", &path, e))?;
                        }
                    }
                    self.rmdir(&lun_dir)?;
                }
            }
            self.rmdir(&tpg_dir)?;
        }
        self.rmdir(dir)
    }
}

/// The (HBA, name) of the backstore a LUN link points at: its last two
/// components are `user_N` and the name (configfs shows the target as a
/// relative path).
fn backstore_of_link(target: &Path) -> Option<(u32, String)> {
    let name = target.file_name()?.to_str()?;
    let hba = target.parent()?.file_name()?.to_str()?;
    let hba = hba.strip_prefix("user_")?.parse().ok()?;
    Some((hba, name.to_owned()))
}

/// FNV-1a over `bytes`: a stable hash for names derived from names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// An NAA type 5 name under the Linux-IO OUI (00-14-05), as LIO's tools
/// make them: 16 hex digits, the last 9 from `seed`.
fn naa_wwn(seed: &[u8]) -> String {
    format!("naa.5001405{:09x}", fnv1a(seed) & 0xf_ffff_ffff)
}

/// The WWN of the tcm_loop target for backstore `name`: derived from the
/// name, so a later run finds the target a crashed one left.
pub fn target_wwn(name: &str) -> String {
    naa_wwn(name.as_bytes())
}

/// The WWN of the initiator port of the tcm_loop nexus for backstore
/// `name`.
pub fn initiator_wwn(name: &str) -> String {
    let mut seed = name.as_bytes().to_vec();
    seed.extend_from_slice(b"\0initiator");
    naa_wwn(&seed)
}

/// Whether `name` can name a backstore: 1 to 64 ASCII letters, digits,
/// `_`, `-` and `.`, not starting with `.` or `-`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Makes the directory LIO keeps persistent-reservation state in (and its
/// parents) unless it is there.
pub fn ensure_pr_dir(path: &Path) -> Result<(), ConfigFsError> {
    std::fs::create_dir_all(path).map_err(|e| ConfigFsError::new("create", path, e))
}

/// What a TCMU backstore is made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackstoreConfig {
    /// The N of the HBA directory `core/user_N`.
    pub hba: u32,
    /// The backstore's directory name ([`is_valid_name`]).
    pub name: String,
    /// The `dev_config` string: shows in the `uio` device's name.
    pub dev_config: String,
    /// The device size in bytes the kernel is told (`dev_size`).
    pub dev_size: u64,
    /// The logical block size (`hw_block_size`).
    pub block_size: u32,
    /// The largest transfer of one command in blocks (`hw_max_sectors`).
    pub max_sectors: u32,
}

impl BackstoreConfig {
    /// A backstore `user_<hba>/<name>` of `dev_size` bytes in
    /// `block_size`-byte blocks, carrying at most `max_transfer` bytes per
    /// command; `dev_config` is `parastor`.
    pub fn new(hba: u32, name: &str, dev_size: u64, block_size: u32, max_transfer: u32) -> Self {
        BackstoreConfig {
            hba,
            name: name.to_owned(),
            dev_config: "parastor".to_owned(),
            dev_size,
            block_size,
            max_sectors: (max_transfer / block_size.max(1)).max(1),
        }
    }
}

/// A TCMU backstore made by [`Backstore::create`]; removed by
/// [`Backstore::remove`], or on drop (errors then ignored).
#[derive(Debug)]
pub struct Backstore {
    fs: ConfigFs,
    hba: u32,
    name: String,
    removed: bool,
}

impl Backstore {
    /// Makes and enables the backstore `config` describes, with PR
    /// passthrough. On failure nothing made is left behind.
    pub fn create(fs: &ConfigFs, config: &BackstoreConfig) -> Result<Backstore, ConfigFsError> {
        if !is_valid_name(&config.name) {
            return Err(ConfigFsError::new(
                "create",
                &fs.backstore_dir(config.hba, &config.name),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a backstore name is 1 to 64 letters, digits, '_', '-' or '.', not starting \
                     with '.' or '-'",
                ),
            ));
        }
        fs.mkdir_existing_ok(&fs.root.join("core"))?;
        fs.mkdir_existing_ok(&fs.hba_dir(config.hba))?;
        let dir = fs.backstore_dir(config.hba, &config.name);
        fs.mkdir(&dir)?;
        let backstore = Backstore {
            fs: fs.clone(),
            hba: config.hba,
            name: config.name.clone(),
            removed: false,
        };
        // From here on, dropping `backstore` removes the directory again.
        let control = dir.join("control");
        for param in [
            format!("dev_config={}", config.dev_config),
            format!("dev_size={}", config.dev_size),
            format!("hw_block_size={}", config.block_size),
            format!("hw_max_sectors={}", config.max_sectors),
        ] {
            fs.write(&control, &param)?;
        }
        // 0: no PGR support in the kernel, i.e. passed through to us.
        fs.write(&dir.join("attrib").join("pgr_support"), "0")?;
        fs.write(&dir.join("enable"), "1")?;
        Ok(backstore)
    }

    /// The N of its HBA directory `core/user_N`.
    pub fn hba(&self) -> u32 {
        self.hba
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its configfs directory.
    pub fn dir(&self) -> PathBuf {
        self.fs.backstore_dir(self.hba, &self.name)
    }

    /// Removes the backstore (and its HBA directory if nothing else is in
    /// it). Every LUN linked to it must be gone first.
    pub fn remove(mut self) -> Result<(), ConfigFsError> {
        self.removed = true;
        self.fs.rmdir(&self.dir())?;
        let _ = self.fs.ops.rmdir(&self.fs.hba_dir(self.hba));
        Ok(())
    }
}

impl Drop for Backstore {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.fs.ops.rmdir(&self.dir());
            let _ = self.fs.ops.rmdir(&self.fs.hba_dir(self.hba));
        }
    }
}

/// The names of the SCSI devices the kernel made for a LUN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiNames {
    /// The block device (`sdX`, or `srX` for a CD/DVD drive).
    pub block: String,
    /// The SCSI generic device (`sgN`).
    pub generic: String,
}

impl fmt::Display for ScsiNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.block, self.generic)
    }
}

/// The SCSI devices of `host:channel:target:lun`, when sysfs (at
/// `sysfs`) shows both the block and the generic device; `None` while
/// either is missing.
pub fn scsi_names(sysfs: &Path, address: [u32; 4]) -> Option<ScsiNames> {
    let [h, c, t, l] = address;
    let device = sysfs
        .join("class/scsi_device")
        .join(format!("{h}:{c}:{t}:{l}"))
        .join("device");
    let first = |sub: &str| -> Option<String> {
        let mut names: Vec<String> = std::fs::read_dir(device.join(sub))
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        names.into_iter().next()
    };
    Some(ScsiNames {
        block: first("block")?,
        generic: first("scsi_generic")?,
    })
}

/// A tcm_loop target with one LUN linked to a backstore, made by
/// [`LoopTarget::create`]; removed by [`LoopTarget::remove`], or on drop
/// (errors then ignored).
#[derive(Debug)]
pub struct LoopTarget {
    fs: ConfigFs,
    wwn: String,
    link: PathBuf,
    removed: bool,
}

impl LoopTarget {
    /// The TPG every target here uses.
    const TPG: &str = "tpgt_1";

    /// Makes the tcm_loop target [`target_wwn`]`(backstore name)` with a
    /// nexus from [`initiator_wwn`] and links LUN 0 to `backstore`. The
    /// link makes the kernel scan the LUN through the backstore, so its
    /// handler must already serve. On failure nothing made is left behind.
    pub fn create(fs: &ConfigFs, backstore: &Backstore) -> Result<LoopTarget, ConfigFsError> {
        let wwn = target_wwn(backstore.name());
        fs.mkdir_existing_ok(&fs.root.join("loopback"))?;
        let dir = fs.loop_dir(&wwn);
        fs.mkdir(&dir)?;
        let link = dir.join(Self::TPG).join("lun/lun_0").join(backstore.name());
        let target = LoopTarget {
            fs: fs.clone(),
            wwn,
            link,
            removed: false,
        };
        // From here on, dropping `target` removes what was made.
        let tpg = dir.join(Self::TPG);
        fs.mkdir(&tpg)?;
        fs.write(&tpg.join("nexus"), &initiator_wwn(backstore.name()))?;
        fs.mkdir(&tpg.join("lun/lun_0"))?;
        let backstore_dir = backstore.dir();
        fs.ops.symlink(&backstore_dir, &target.link).map_err(|e| {
            ConfigFsError::new(
                format!("link {} as", backstore_dir.display()),
                &target.link,
                e,
            )
        })?;
        Ok(target)
    }

    /// The target's WWN.
    pub fn wwn(&self) -> &str {
        &self.wwn
    }

    fn dir(&self) -> PathBuf {
        self.fs.loop_dir(&self.wwn)
    }

    /// The SCSI address of LUN 0: `host:channel:target:lun`, from the
    /// TPG's `address` attribute.
    pub fn scsi_address(&self) -> Result<[u32; 4], ConfigFsError> {
        let path = self.dir().join(Self::TPG).join("address");
        let text = self.fs.read(&path)?;
        parse_address(&text).ok_or_else(|| {
            ConfigFsError::new(
                "use",
                &path,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("it holds {:?}, expected HOST:CHANNEL:TARGET", text.trim()),
                ),
            )
        })
    }

    /// Waits until sysfs (at `sysfs`) shows the block and generic devices
    /// of LUN 0 and their nodes are in `dev`, polling every 20 ms for at
    /// most `timeout`, or until `give_up` says so.
    pub fn wait_for_devices(
        &self,
        sysfs: &Path,
        dev: &Path,
        timeout: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<ScsiNames, ConfigFsError> {
        let address = self.scsi_address()?;
        let deadline = Instant::now() + timeout;
        loop {
            // sysfs shows a device a moment before devtmpfs has its node.
            if let Some(names) = scsi_names(sysfs, address)
                && dev.join(&names.block).exists()
                && dev.join(&names.generic).exists()
            {
                return Ok(names);
            }
            let [h, c, t, l] = address;
            let device = sysfs.join(format!("class/scsi_device/{h}:{c}:{t}:{l}"));
            if give_up() {
                return Err(ConfigFsError::new(
                    "wait for",
                    &device,
                    io::Error::new(io::ErrorKind::Interrupted, "stopped"),
                ));
            }
            if Instant::now() >= deadline {
                return Err(ConfigFsError::new(
                    "find the block and sg devices of",
                    &device,
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("not there after {timeout:?} (sd/sr and sg drivers loaded?)"),
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Unlinks the LUN and removes the LUN, TPG (which drops the nexus)
    /// and target directories. The backstore's handler must still serve:
    /// removing the SCSI device may send it commands.
    pub fn remove(mut self) -> Result<(), ConfigFsError> {
        self.removed = true;
        self.teardown(false)
    }

    /// The removal steps in order; `best_effort` goes on past failures.
    fn teardown(&self, best_effort: bool) -> Result<(), ConfigFsError> {
        let dir = self.dir();
        let tpg = dir.join(Self::TPG);
        let steps: [(&str, PathBuf); 4] = [
            ("unlink", self.link.clone()),
            ("rmdir", tpg.join("lun/lun_0")),
            ("rmdir", tpg),
            ("rmdir", dir),
        ];
        for (op, path) in steps {
            let result = match op {
                "unlink" => self.fs.ops.unlink(&path),
                _ => self.fs.ops.rmdir(&path),
            };
            match result {
                // A step a failed creation never got to.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if !best_effort => {
                    let action = if op == "unlink" { "unlink" } else { "remove" };
                    return Err(ConfigFsError::new(action, &path, e));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Drop for LoopTarget {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.teardown(true);
        }
    }
}

/// Parses a tcm_loop TPG `address` (`H:C:T`) into the SCSI address of
/// LUN 0.
fn parse_address(text: &str) -> Option<[u32; 4]> {
    let mut parts = text.trim().split(':').map(|p| p.parse::<u32>().ok());
    let address = [parts.next()??, parts.next()??, parts.next()??, 0];
    parts.next().is_none().then_some(address)
}

#[cfg(test)]
mod tests;
