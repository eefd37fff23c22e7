//! [`StdHost`]: the builder's [`Host`] on a std host — real files, key files
//! read with a bound, and the runtime's timer.

use super::build::Host;
use crate::file::FileDisk;
use parastor_core::{Disk, Timer};
use parastor_runtime::RuntimeTimer;
use std::io::{self, Read as _};
use std::sync::Arc;

/// The host the process runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdHost;

impl StdHost {
    /// Opens `path` as a file disk read-write, or read-only if writing is
    /// not permitted: what [`Host::open_file`] wraps into a [`Disk`].
    pub fn open_file_disk(path: &str, sector_size: u32) -> io::Result<FileDisk> {
        match FileDisk::open(path, sector_size, false) {
            Err(e) if write_not_permitted(&e) => FileDisk::open(path, sector_size, true),
            r => r,
        }
    }

    /// [`FileDisk`] as a [`Disk`]; the error names the path.
    pub fn file_disk(path: &str, file: FileDisk) -> io::Result<Disk> {
        Disk::new(file).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cannot use {path} as a disk: {e}"),
            )
        })
    }
}

impl Host for StdHost {
    /// Opens the file read-write, or read-only if writing is not permitted.
    fn open_file(&self, path: &str, sector_size: u32) -> io::Result<Disk> {
        let file = Self::open_file_disk(path, sector_size)?;
        Self::file_disk(path, file)
    }

    fn read_key(&self, path: &str, limit: usize) -> io::Result<Vec<u8>> {
        let mut key = Vec::new();
        std::fs::File::open(path)?
            .take(u64::try_from(limit).unwrap_or(u64::MAX))
            .read_to_end(&mut key)?;
        Ok(key)
    }

    /// The runtime's timer: a `delay` disk sleeps in the timer heap of the
    /// runtime thread (or [`parastor_runtime::block_on`] loop) running its
    /// I/O; no thread of its own.
    fn timer(&self) -> io::Result<Arc<dyn Timer>> {
        Ok(Arc::new(RuntimeTimer))
    }
}

/// Whether opening read-write failed only because writing is not allowed,
/// so a read-only open may succeed.
fn write_not_permitted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
        || e.kind() == io::ErrorKind::ReadOnlyFilesystem
        || e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error())
}
