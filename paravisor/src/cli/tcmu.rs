//! `parastor tcmu`: a disk stack served to the Linux SCSI stack as a TCMU
//! backstore behind tcm_loop, until SIGINT or SIGTERM.
//!
//! This module holds the command's parts that need no kernel: the
//! arguments and their checks ([`TcmuArgs::check`]), the identity the LUN
//! shows ([`Identity`]), the disk stack with handles to what can change
//! while it is served ([`build_target`]), and the control commands
//! ([`ControlCommand`], [`Target::control`]). [`run`] puts them together
//! with configfs, the `uio` devices and the ring.

use super::CliError;
use crate::file::FileResizer;
use crate::spec::{self, Host, Recipe, StdHost};
use clap::Args;
use parastor_core::ram::RamDisk;
use parastor_core::{Disk, ReservationsDisk, Timer};
use parastor_scsi::dvd::DvdParams;
use parastor_scsi::{DiskParams, Lun, ScsiDisk, ScsiDvd};
use parastor_tcmu::configfs;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The most TCMU paths (backstores, each its own I_T nexus) one LUN gets.
pub const MAX_PATHS: u32 = 16;

/// `parastor tcmu`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
#[command(after_help = spec::GRAMMAR)]
pub struct TcmuArgs {
    /// The disk spec (see `parastor disk --help`); with `--dvd`, the
    /// medium in the drive (none: an empty drive).
    pub spec: Option<String>,
    /// Serve a CD/DVD-ROM drive instead of a disk.
    #[arg(long)]
    pub dvd: bool,
    /// The backstore name (`core/user_0/NAME`); with `--paths N`, the
    /// backstores are NAME-0 … NAME-(N-1).
    #[arg(long, default_value = "parastor")]
    pub name: String,
    /// T10 vendor identification in INQUIRY (at most 8 characters).
    #[arg(long)]
    pub vendor: Option<String>,
    /// Product identification in INQUIRY (at most 16 characters).
    #[arg(long)]
    pub product: Option<String>,
    /// Product revision level in INQUIRY (at most 4 characters).
    #[arg(long)]
    pub revision: Option<String>,
    /// Unit serial number (VPD page 0x80, at most 252 characters; disks
    /// only).
    #[arg(long)]
    pub serial: Option<String>,
    /// Paths to the LUN: one backstore and tcm_loop target each, each its
    /// own initiator (for reservations between two registrants).
    #[arg(long, default_value_t = 1)]
    pub paths: u32,
    /// Make this FIFO and take commands from it, one per line: `resize
    /// BYTES`, `eject`, `insert SPEC` (DVD). Each result is one line on
    /// standard error.
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// When serving, write one line per path (`sdX sgN`, or `srX sgN` for
    /// a DVD drive) to this file (atomically), as on standard output.
    #[arg(long)]
    pub ready: Option<PathBuf>,
}

/// The identity strings a LUN shows, checked and padded as INQUIRY
/// carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Vendor, space padded.
    pub vendor: Option<[u8; 8]>,
    /// Product, space padded.
    pub product: Option<[u8; 16]>,
    /// Revision, space padded.
    pub revision: Option<[u8; 4]>,
    /// Unit serial number, as given.
    pub serial: Option<Vec<u8>>,
    /// The VPD 0x83 device identifier: from the backstore name, so every
    /// path of one LUN, and every run with the same name, shows the same
    /// device.
    pub device_id: [u8; 16],
}

/// An INQUIRY field: printable ASCII of at most `N` characters, space
/// padded.
fn field<const N: usize>(option: &str, value: &str) -> Result<[u8; N], CliError> {
    check_ascii(option, value, N)?;
    let mut out = [b' '; N];
    out[..value.len()].copy_from_slice(value.as_bytes());
    Ok(out)
}

/// Checks that `value` is 1 to `max` printable ASCII characters.
fn check_ascii(option: &str, value: &str, max: usize) -> Result<(), CliError> {
    if value.is_empty() || value.len() > max || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(CliError::new(format!(
            "{option} {value:?} is invalid: expected 1 to {max} printable ASCII characters"
        )));
    }
    Ok(())
}

/// A 16-byte device identifier derived from `name` (two FNV-1a hashes).
fn device_id_of(name: &str) -> [u8; 16] {
    let fnv = |bytes: &[u8]| {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let mut id = [0; 16];
    id[..8].copy_from_slice(&fnv(name.as_bytes()).to_be_bytes());
    let mut seed = name.as_bytes().to_vec();
    seed.extend_from_slice(b"\0parastor device");
    id[8..].copy_from_slice(&fnv(&seed).to_be_bytes());
    id
}

impl TcmuArgs {
    /// The backstore names, one per path.
    pub fn backstore_names(&self) -> Vec<String> {
        if self.paths == 1 {
            vec![self.name.clone()]
        } else {
            (0..self.paths)
                .map(|i| format!("{}-{i}", self.name))
                .collect()
        }
    }

    /// Whether `name` is a backstore name a run with this `--name` makes
    /// (`NAME`, or `NAME-<digits>` for any number of paths): what a start
    /// cleans up after a crashed run.
    pub fn is_ours(&self, name: &str) -> bool {
        name == self.name
            || name.strip_prefix(&self.name).is_some_and(|rest| {
                rest.strip_prefix('-')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
    }

    /// Checks the arguments that need no I/O and returns the identity the
    /// LUN shows.
    pub fn check(&self) -> Result<Identity, CliError> {
        if self.spec.is_none() && !self.dvd {
            return Err(CliError::new(
                "a disk SPEC is required (or --dvd for an empty DVD drive)",
            ));
        }
        if !(1..=MAX_PATHS).contains(&self.paths) {
            return Err(CliError::new(format!(
                "--paths {} is invalid: expected 1 to {MAX_PATHS}",
                self.paths
            )));
        }
        for name in self.backstore_names() {
            if !configfs::is_valid_name(&name) {
                return Err(CliError::new(format!(
                    "--name {:?} is invalid: a backstore name{} is 1 to 64 letters, digits, \
                     '_', '-' or '.', not starting with '.' or '-'",
                    self.name,
                    if self.paths > 1 {
                        format!(" (here {name:?})")
                    } else {
                        String::new()
                    }
                )));
            }
        }
        if self.dvd && self.serial.is_some() {
            return Err(CliError::new(
                "--serial is for disks: a DVD drive has no unit serial number page",
            ));
        }
        let serial = match &self.serial {
            Some(s) => {
                check_ascii("--serial", s, 252)?;
                Some(s.as_bytes().to_vec())
            }
            None => None,
        };
        Ok(Identity {
            vendor: self
                .vendor
                .as_deref()
                .map(|v| field("--vendor", v))
                .transpose()?,
            product: self
                .product
                .as_deref()
                .map(|v| field("--product", v))
                .transpose()?,
            revision: self
                .revision
                .as_deref()
                .map(|v| field("--revision", v))
                .transpose()?,
            serial,
            device_id: device_id_of(&self.name),
        })
    }
}

/// One line of the control FIFO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlCommand {
    /// `resize BYTES`: the disk's new size.
    Resize(u64),
    /// `eject`: take the medium out of the DVD drive.
    Eject,
    /// `insert SPEC`: put the disk SPEC names into the DVD drive.
    Insert(String),
}

impl ControlCommand {
    /// Parses one line (surrounding white space ignored).
    pub fn parse(line: &str) -> Result<ControlCommand, String> {
        let line = line.trim();
        let (word, rest) = line
            .split_once(char::is_whitespace)
            .map_or((line, ""), |(w, r)| (w, r.trim()));
        match word {
            "resize" => rest.parse().map(ControlCommand::Resize).map_err(|_| {
                format!("'resize {rest}': expected 'resize BYTES' with a whole number of bytes")
            }),
            "eject" if rest.is_empty() => Ok(ControlCommand::Eject),
            "insert" if !rest.is_empty() => Ok(ControlCommand::Insert(rest.to_owned())),
            "eject" => Err(format!("'{line}': eject takes no argument")),
            "insert" => Err("'insert': expected 'insert SPEC'".to_owned()),
            _ => Err(format!(
                "unknown command '{line}': expected 'resize BYTES', 'eject' or 'insert SPEC'"
            )),
        }
    }
}

/// What a disk stack can be resized through: its one leaf, when the
/// stack's size follows it (decorators over a `mem:` or `file:` disk).
#[derive(Clone)]
enum Resizable {
    /// A RAM disk.
    Ram(RamDisk),
    /// A file disk.
    File(FileResizer),
}

/// The builder's host for `parastor tcmu`: the real host, keeping handles
/// to the RAM and file disks it builds.
#[derive(Default)]
struct KeepingHost {
    rams: Mutex<Vec<RamDisk>>,
    files: Mutex<Vec<FileResizer>>,
}

impl Host for KeepingHost {
    fn open_file(&self, path: &str, sector_size: u32) -> io::Result<Disk> {
        let file = StdHost::open_file_disk(path, sector_size)?;
        lock(&self.files).push(file.resizer());
        StdHost::file_disk(path, file)
    }

    fn read_key(&self, path: &str, limit: usize) -> io::Result<Vec<u8>> {
        StdHost.read_key(path, limit)
    }

    fn timer(&self) -> io::Result<Arc<dyn Timer>> {
        StdHost.timer()
    }

    fn made_ram_disk(&self, ram: &RamDisk) {
        lock(&self.rams).push(ram.clone());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a stack built from `recipe` has a size that follows one leaf:
/// a `mem:` or `file:` disk under decorators that pass the size through.
fn follows_one_leaf(recipe: &Recipe) -> bool {
    match recipe {
        Recipe::Mem { .. } | Recipe::File { .. } => true,
        Recipe::Crypt { inner, .. } | Recipe::Delay { inner, .. } | Recipe::PrWrap { inner } => {
            follows_one_leaf(inner)
        }
        Recipe::MemDiff { .. } | Recipe::Striped { .. } => false,
    }
}

/// Builds the disk stack `text` names, with the handle to resize it when
/// its size follows one leaf.
fn build_disk(text: &str) -> Result<(Disk, Option<Resizable>), CliError> {
    let host = KeepingHost::default();
    let disk = spec::build_spec_with(text, &host)?;
    let recipe = spec::parse(text)?;
    let resizable = if follows_one_leaf(&recipe) {
        let rams = std::mem::take(&mut *lock(&host.rams));
        let files = std::mem::take(&mut *lock(&host.files));
        match (rams.as_slice(), files.as_slice()) {
            ([ram], []) => Some(Resizable::Ram(ram.clone())),
            ([], [file]) => Some(Resizable::File(file.clone())),
            _ => None,
        }
    } else {
        None
    };
    Ok((disk, resizable))
}

/// The LUN being served and what can change while it is.
pub struct Target {
    lun: Lun,
    resizable: Option<Resizable>,
    identity: Identity,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("lun", &self.lun)
            .field("resizable", &self.resizable.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds the LUN `args` describe (checked by [`TcmuArgs::check`] into
/// `identity`): a disk over the spec, or a DVD drive with the spec as its
/// medium. A disk whose stack keeps no persistent reservations gets them
/// (`prwrap:`): the kernel passes PERSISTENT RESERVE and RESERVE/RELEASE
/// through to the LUN instead of answering them itself.
pub fn build_target(args: &TcmuArgs, identity: Identity) -> Result<Target, CliError> {
    let (disk, resizable) = match &args.spec {
        Some(text) => {
            let (disk, resizable) = build_disk(text)?;
            (Some(disk), resizable)
        }
        None => (None, None),
    };
    let lun = if args.dvd {
        let defaults = DvdParams::default();
        let params = DvdParams {
            vendor: identity.vendor.unwrap_or(defaults.vendor),
            product: identity.product.unwrap_or(defaults.product),
            revision: identity.revision.unwrap_or(defaults.revision),
            device_id: identity.device_id,
        };
        let dvd = ScsiDvd::with_params(disk, params)
            .map_err(|e| CliError::new(format!("cannot use the medium as a DVD: {e}")))?;
        Lun::Dvd(Arc::new(dvd))
    } else {
        let Some(disk) = disk else {
            return Err(CliError::new("a disk SPEC is required without --dvd"));
        };
        // The kernel's own reservations are off (PR passes through to the
        // LUN), so a stack without reservations of its own gets them.
        let disk = if disk.persistent_reservations().is_some() {
            disk
        } else {
            Disk::new(ReservationsDisk::new(disk))
                .map_err(|e| CliError::new(format!("cannot add reservations to the disk: {e}")))?
        };
        let defaults = DiskParams::default();
        let params = DiskParams {
            vendor: identity.vendor.unwrap_or(defaults.vendor),
            product: identity.product.unwrap_or(defaults.product),
            revision: identity.revision.unwrap_or(defaults.revision),
            serial: identity.serial.clone().unwrap_or_default(),
            device_id: Some(disk.disk_id().unwrap_or(identity.device_id)),
            ..defaults
        };
        Lun::Disk(Arc::new(ScsiDisk::new(disk, params)))
    };
    // The DVD's resizes are media changes, not resizes.
    let resizable = if args.dvd { None } else { resizable };
    Ok(Target {
        lun,
        resizable,
        identity,
    })
}

impl Target {
    /// The LUN.
    pub fn lun(&self) -> &Lun {
        &self.lun
    }

    /// The identity it shows.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The LUN's size in bytes as the kernel's backstore is told it (an
    /// empty DVD drive: one block, since the kernel wants some size).
    pub fn size_bytes(&self) -> u64 {
        match &self.lun {
            Lun::Disk(d) => d
                .capacity()
                .saturating_mul(u64::from(d.disk().sector_size())),
            Lun::Dvd(d) => d
                .media()
                .map(|m| m.sector_count().saturating_mul(u64::from(m.sector_size())))
                .filter(|&b| b > 0)
                .unwrap_or(u64::from(self.lun.block_size())),
        }
    }

    /// Carries out one control command; the line to report.
    pub fn control(&self, command: &ControlCommand) -> Result<String, String> {
        match command {
            ControlCommand::Resize(bytes) => self.resize(*bytes),
            ControlCommand::Eject => {
                let dvd = self.lun.as_dvd().ok_or("eject needs a DVD drive (--dvd)")?;
                dvd.change_media(None).map_err(|e| format!("eject: {e}"))?;
                Ok("eject: ok".to_owned())
            }
            ControlCommand::Insert(text) => {
                let dvd = self
                    .lun
                    .as_dvd()
                    .ok_or("insert needs a DVD drive (--dvd)")?;
                let (disk, _) = build_disk(text).map_err(|e| format!("insert: {e}"))?;
                dvd.change_media(Some(disk))
                    .map_err(|e| format!("insert: {e}"))?;
                Ok(format!("insert {text}: ok"))
            }
        }
    }

    fn resize(&self, bytes: u64) -> Result<String, String> {
        let disk = self
            .lun
            .as_disk()
            .ok_or("resize needs a disk (a DVD drive changes media with eject and insert)")?;
        let resizable = self.resizable.as_ref().ok_or(
            "this disk cannot be resized: only a mem: or file: disk, alone or under crypt, delay \
             and prwrap, can",
        )?;
        let sector = u64::from(disk.disk().sector_size());
        if bytes == 0 || !bytes.is_multiple_of(sector) {
            return Err(format!(
                "resize {bytes}: expected a non-zero whole number of {sector}-byte sectors"
            ));
        }
        let count = bytes / sector;
        match resizable {
            Resizable::Ram(ram) => ram.resize(count),
            Resizable::File(file) => file.resize(count).map_err(|e| format!("resize: {e}"))?,
        }
        Ok(format!(
            "resize {bytes}: ok ({count} sectors of {sector} bytes)"
        ))
    }
}

mod run;
pub use run::run;

#[cfg(test)]
mod tests;
