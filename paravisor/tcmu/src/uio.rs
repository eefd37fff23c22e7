//! The `/dev/uioN` device of a TCMU backstore: finding it, mapping the
//! memory it shares with the kernel, and the doorbell both ways.
//!
//! Enabling a TCMU backstore registers a `uio` device whose sysfs `name` is
//! `tcm-user/<hba>/<device>` or, when the backstore has a `dev_config`,
//! `tcm-user/<hba>/<device>/<dev_config>` ([`TcmuUioName`]); its `version`
//! is the mailbox version. Map 0 is the mailbox, the command ring and the
//! data area, one mapping of `maps/map0/size` bytes at mmap offset 0 (map N
//! sits at N × page size). The kernel lets only one process open the
//! device at a time.
//!
//! The device file is the doorbell ([`UioDevice::ack`],
//! [`UioDevice::ring`]): it becomes readable when the kernel has posted
//! commands (reading 4 bytes takes the interrupt count), and writing a
//! 4-byte 1 makes the kernel look at the completions.

use crate::serve::Doorbell;
use parastor_core::{Gpa, GuestMem};
use parastor_sys::{GuestRam, MappedRegion, Protection};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the kernel shows `uio` devices: the sysfs class directory and the
/// directory of device nodes. A parameter so tests can stand in a tree of
/// their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UioPaths {
    /// `/sys/class/uio`: one `uioN` directory per device.
    pub class: PathBuf,
    /// `/dev`: the `uioN` device nodes.
    pub dev: PathBuf,
}

impl Default for UioPaths {
    fn default() -> Self {
        UioPaths {
            class: PathBuf::from("/sys/class/uio"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// The sysfs `name` of a TCMU backstore's `uio` device, taken apart:
/// `tcm-user/<hba>/<device>[/<config>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcmuUioName {
    /// The number N of the backstore's HBA directory `core/user_N`.
    pub hba: u32,
    /// The backstore's directory name under `core/user_N`.
    pub device: String,
    /// The backstore's `dev_config` string, if it has one (it may hold
    /// slashes).
    pub config: Option<String>,
}

/// The prefix of every TCMU `uio` device name.
const TCMU_PREFIX: &str = "tcm-user/";

impl TcmuUioName {
    /// Parses a `uio` device name (a trailing newline, as sysfs shows it,
    /// is ignored). `None` for a name that is not a TCMU backstore's.
    pub fn parse(name: &str) -> Option<TcmuUioName> {
        let rest = name.strip_suffix('\n').unwrap_or(name);
        let rest = rest.strip_prefix(TCMU_PREFIX)?;
        let (hba, rest) = rest.split_once('/')?;
        // `%u` in the kernel's format: decimal digits only.
        if hba.is_empty() || !hba.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let hba = hba.parse().ok()?;
        let (device, config) = match rest.split_once('/') {
            Some((device, config)) => (device, Some(config.to_owned())),
            None => (rest, None),
        };
        if device.is_empty() {
            return None;
        }
        Some(TcmuUioName {
            hba,
            device: device.to_owned(),
            config,
        })
    }
}

impl fmt::Display for TcmuUioName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TCMU_PREFIX}{}/{}", self.hba, self.device)?;
        if let Some(config) = &self.config {
            write!(f, "/{config}")?;
        }
        Ok(())
    }
}

/// Finds the `uio` device of the TCMU backstore `core/user_<hba>/<device>`:
/// its number N (`/dev/uioN`). The error lists the TCMU devices that are
/// there.
pub fn find_backstore(paths: &UioPaths, hba: u32, device: &str) -> io::Result<u32> {
    let entries = std::fs::read_dir(&paths.class).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot list {} (is the uio module loaded?): {e}",
                paths.class.display()
            ),
        )
    })?;
    let mut seen = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(index) = file_name.to_str().and_then(uio_index) else {
            continue;
        };
        // A device that goes away while we look is simply not ours.
        let Ok(name) = std::fs::read_to_string(entry.path().join("name")) else {
            continue;
        };
        if let Some(parsed) = TcmuUioName::parse(&name) {
            if parsed.hba == hba && parsed.device == device {
                return Ok(index);
            }
            seen.push(format!("uio{index} = {parsed}"));
        }
    }
    seen.sort();
    let seen = if seen.is_empty() {
        "none".to_owned()
    } else {
        seen.join(", ")
    };
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no uio device in {} belongs to the TCMU backstore user_{hba}/{device} (is it \
             enabled?); TCMU devices there: {seen}",
            paths.class.display()
        ),
    ))
}

/// The N of a `uioN` file name.
fn uio_index(file_name: &str) -> Option<u32> {
    let digits = file_name.strip_prefix("uio")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Parses a sysfs number: hexadecimal with `0x` (as `maps/mapN/size`
/// shows it) or decimal.
fn parse_sysfs_number(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// An open TCMU `uio` device with its map 0 mapped: the memory the command
/// ring lives in, and the doorbell.
pub struct UioDevice {
    file: File,
    index: u32,
    name: String,
    version: String,
    region: Arc<MappedRegion>,
    memory: GuestMem,
}

impl fmt::Debug for UioDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UioDevice")
            .field("index", &self.index)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("map_len", &self.region.len())
            .finish()
    }
}

impl UioDevice {
    /// Opens the `uio` device of the TCMU backstore
    /// `core/user_<hba>/<device>` and maps its memory.
    pub fn open_backstore(paths: &UioPaths, hba: u32, device: &str) -> io::Result<UioDevice> {
        let index = find_backstore(paths, hba, device)?;
        Self::open_index(paths, index)
    }

    /// Opens `/dev/uio<index>` (under `paths.dev`) and maps its map 0, of
    /// the size its sysfs directory gives.
    pub fn open_index(paths: &UioPaths, index: u32) -> io::Result<UioDevice> {
        let sys = paths.class.join(format!("uio{index}"));
        let read = |file: &str| {
            let path = sys.join(file);
            std::fs::read_to_string(&path).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
            })
        };
        let name = read("name")?.trim_end().to_owned();
        let version = read("version")?.trim_end().to_owned();
        let size_text = read("maps/map0/size")?;
        let size = parse_sysfs_number(&size_text)
            .and_then(|s| usize::try_from(s).ok())
            .filter(|&s| s > 0)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}/maps/map0/size holds {:?}: expected a non-zero size",
                        sys.display(),
                        size_text.trim()
                    ),
                )
            })?;
        let dev = paths.dev.join(format!("uio{index}"));
        // Non-blocking, so an `ack` with nothing to take returns at once.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&dev)
            .map_err(|e| {
                let why = if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                    " (another process serves this backstore: TCMU allows one)"
                } else {
                    ""
                };
                io::Error::new(e.kind(), format!("cannot open {}{why}: {e}", dev.display()))
            })?;
        // Map 0 is at offset 0 (map N at N pages); the kernel's TCMU mmap
        // handler insists on a view of exactly the whole map.
        let region = MappedRegion::map_device(file.as_fd(), 0, size, Protection::ReadWrite)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot map the {size} bytes of {} map 0: {e}",
                        dev.display()
                    ),
                )
            })?;
        let region = Arc::new(region);
        let ram = GuestRam::new(vec![(Gpa::new(0), region.clone())])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(UioDevice {
            file,
            index,
            name,
            version,
            region,
            memory: GuestMem::new(ram),
        })
    }

    /// Whether the `uio` device of backstore `core/user_<hba>/<device>`
    /// is held open by a process right now (TCMU allows one opener, so an
    /// open that fails with `EBUSY` means a live handler). `false` when the
    /// device does not exist.
    pub fn is_served(paths: &UioPaths, hba: u32, device: &str) -> bool {
        let Ok(index) = find_backstore(paths, hba, device) else {
            return false;
        };
        let dev = paths.dev.join(format!("uio{index}"));
        match OpenOptions::new().read(true).write(true).open(&dev) {
            Ok(_) => false,
            Err(e) => e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()),
        }
    }

    /// The device's number N (`/dev/uioN`).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The device's name as sysfs shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's version string (TCMU: the mailbox version).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Bytes of map 0: the mailbox, command ring and data area.
    pub fn map_len(&self) -> usize {
        self.region.len()
    }

    /// The mapping as guest memory at address 0: an address is a byte
    /// offset in map 0, which is what the ring's offsets and the data
    /// iovecs' bases are. Reached only through copies and atomics.
    pub fn memory(&self) -> GuestMem {
        self.memory.clone()
    }

    /// The device file: readable when the kernel has posted commands.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Takes the interrupt count, so the file is readable again only when
    /// the kernel posts more. Nothing to take is not an error.
    pub fn ack(&self) -> io::Result<()> {
        let mut count = [0u8; 4];
        loop {
            return match (&self.file).read(&mut count) {
                Ok(4) => Ok(()),
                Ok(n) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "uio{} read {n} bytes of the 4-byte interrupt count",
                        self.index
                    ),
                )),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Tells the kernel completions are on the ring (writes a 4-byte 1).
    pub fn ring(&self) -> io::Result<()> {
        let one = 1i32.to_ne_bytes();
        loop {
            return match (&self.file).write(&one) {
                Ok(4) => Ok(()),
                Ok(n) => Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("uio{} took {n} bytes of the 4-byte doorbell", self.index),
                )),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }
}

impl Doorbell for UioDevice {
    fn fd(&self) -> BorrowedFd<'_> {
        UioDevice::fd(self)
    }

    fn ack(&self) -> io::Result<()> {
        UioDevice::ack(self)
    }

    fn ring(&self) -> io::Result<()> {
        UioDevice::ring(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_tcmu_uio_names() {
        let n = TcmuUioName::parse("tcm-user/0/parastor/parastor\n").unwrap();
        assert_eq!(
            n,
            TcmuUioName {
                hba: 0,
                device: "parastor".into(),
                config: Some("parastor".into())
            }
        );
        assert_eq!(n.to_string(), "tcm-user/0/parastor/parastor");
        // No dev_config: no third part; a config may hold slashes.
        let n = TcmuUioName::parse("tcm-user/12/disk-1").unwrap();
        assert_eq!((n.hba, n.device.as_str(), n.config), (12, "disk-1", None));
        let n = TcmuUioName::parse("tcm-user/3/d/file//tmp/x.img").unwrap();
        assert_eq!(n.config.as_deref(), Some("file//tmp/x.img"));
        assert_eq!(n.to_string(), "tcm-user/3/d/file//tmp/x.img");
        for bad in [
            "",
            "uio_pci_generic",
            "tcm-user/",
            "tcm-user/0",
            "tcm-user/0/",
            "tcm-user/x/d",
            "tcm-user/-1/d",
            "tcm-user/+1/d",
            "tcm-user/99999999999/d",
            "tcm-user//d",
            "tcm-usr/0/d",
        ] {
            assert_eq!(TcmuUioName::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sysfs_numbers_and_uio_indices() {
        assert_eq!(parse_sysfs_number("0x40800000\n"), Some(0x4080_0000));
        assert_eq!(parse_sysfs_number("4096"), Some(4096));
        assert_eq!(parse_sysfs_number("0x"), None);
        assert_eq!(parse_sysfs_number("big"), None);
        assert_eq!(uio_index("uio7"), Some(7));
        for bad in ["uio", "uio-1", "uiox", "vfio0"] {
            assert_eq!(uio_index(bad), None, "{bad}");
        }
    }

    /// A stand-in sysfs class directory and `/dev` in a temporary
    /// directory; the device nodes are `/dev/zero`, whose shared mapping is
    /// memory and whose reads and writes always succeed.
    struct FakeUio {
        _dir: tempfile::TempDir,
        paths: UioPaths,
    }

    impl FakeUio {
        fn new(devices: &[(u32, &str, u64)]) -> FakeUio {
            let dir = tempfile::tempdir().unwrap();
            let paths = UioPaths {
                class: dir.path().join("class"),
                dev: dir.path().join("dev"),
            };
            std::fs::create_dir_all(&paths.dev).unwrap();
            std::fs::create_dir_all(&paths.class).unwrap();
            for &(index, name, size) in devices {
                let sys = paths.class.join(format!("uio{index}"));
                std::fs::create_dir_all(sys.join("maps/map0")).unwrap();
                std::fs::write(sys.join("name"), format!("{name}\n")).unwrap();
                std::fs::write(sys.join("version"), "2\n").unwrap();
                std::fs::write(sys.join("maps/map0/size"), format!("{size:#x}\n")).unwrap();
                std::os::unix::fs::symlink("/dev/zero", paths.dev.join(format!("uio{index}")))
                    .unwrap();
            }
            FakeUio { _dir: dir, paths }
        }
    }

    #[test]
    fn finds_the_backstores_device_among_others() {
        let fake = FakeUio::new(&[
            (0, "uio_pci_generic", 4096),
            (1, "tcm-user/0/other/parastor", 8192),
            (4, "tcm-user/1/parastor/parastor", 8192),
            (5, "tcm-user/0/parastor/parastor", 3 * 4096),
        ]);
        assert_eq!(find_backstore(&fake.paths, 0, "parastor").unwrap(), 5);
        assert_eq!(find_backstore(&fake.paths, 1, "parastor").unwrap(), 4);
        let e = find_backstore(&fake.paths, 0, "missing").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let msg = e.to_string();
        assert!(msg.contains("user_0/missing"), "{msg}");
        assert!(
            msg.contains("uio1 = tcm-user/0/other/parastor, uio4 = tcm-user/1/parastor/parastor"),
            "{msg}"
        );
        assert!(!msg.contains("uio_pci_generic"), "{msg}");
        let none = FakeUio::new(&[]);
        let e = find_backstore(&none.paths, 0, "x").unwrap_err();
        assert!(e.to_string().ends_with("TCMU devices there: none"), "{e}");
    }

    #[test]
    fn opens_maps_and_rings_the_device() {
        let page = parastor_sys::mmap::page_size() as u64;
        let fake = FakeUio::new(&[(2, "tcm-user/0/parastor/parastor", 4 * page)]);
        let uio = UioDevice::open_backstore(&fake.paths, 0, "parastor").unwrap();
        assert_eq!(uio.index(), 2);
        assert_eq!(uio.name(), "tcm-user/0/parastor/parastor");
        assert_eq!(uio.version(), "2");
        assert_eq!(uio.map_len() as u64, 4 * page);
        let mem = uio.memory();
        assert_eq!(mem.extent().get(), 4 * page);
        mem.write_at(Gpa::new(page + 3), b"ring").unwrap();
        let mut back = [0; 4];
        mem.read_at(Gpa::new(page + 3), &mut back).unwrap();
        assert_eq!(&back, b"ring");
        assert!(mem.read_at(Gpa::new(4 * page - 2), &mut back).is_err());
        uio.ack().unwrap();
        uio.ring().unwrap();
        // The doorbell is the device file itself.
        let fd_target = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&uio.fd())
        ))
        .unwrap();
        assert_eq!(fd_target, Path::new("/dev/zero"));
    }

    #[test]
    fn open_errors_name_the_file_and_the_problem() {
        let fake = FakeUio::new(&[(3, "tcm-user/0/d", 0)]);
        let e = UioDevice::open_index(&fake.paths, 3).unwrap_err();
        assert!(
            e.to_string().contains("uio3/maps/map0/size holds \"0x0\""),
            "{e}"
        );
        let e = UioDevice::open_index(&fake.paths, 9).unwrap_err();
        assert!(e.to_string().contains("uio9/name"), "{e}");
        let e = UioDevice::open_backstore(&fake.paths, 0, "x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        std::fs::write(fake.paths.class.join("uio3/maps/map0/size"), "0x1000").unwrap();
        std::fs::remove_file(fake.paths.dev.join("uio3")).unwrap();
        let e = UioDevice::open_index(&fake.paths, 3).unwrap_err();
        assert!(e.to_string().starts_with("cannot open "), "{e}");
        assert!(!UioDevice::is_served(&fake.paths, 0, "d"));
    }
}
