//! An in-memory [`Host`] for tests: disks built from recipes without a
//! filesystem or threads.

use super::build::Host;
use parastor_core::disk::BoxFuture;
use parastor_core::ram::RamDisk;
use parastor_core::{Disk, Timer};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A host without a filesystem: its "files" are disks made in memory,
/// its key files byte strings; it logs every request.
#[derive(Default)]
pub(crate) struct MemHost {
    pub(crate) files: HashMap<String, Disk>,
    keys: HashMap<String, Vec<u8>>,
    pub(crate) timer: Option<Arc<CountingTimer>>,
    log: Mutex<Vec<String>>,
}

impl MemHost {
    /// Adds a zero-filled "file" of `len_bytes`.
    pub(crate) fn with_file(self, path: &str, len_bytes: u64, sector_size: u32) -> Self {
        let ram = RamDisk::new(len_bytes, sector_size).unwrap();
        self.with_disk(path, Disk::new(ram).unwrap())
    }

    /// Adds `disk` as a "file"; opening it hands out a clone of the handle.
    pub(crate) fn with_disk(mut self, path: &str, disk: Disk) -> Self {
        self.files.insert(path.into(), disk);
        self
    }

    /// Adds a key file holding `key`.
    pub(crate) fn with_key(mut self, path: &str, key: Vec<u8>) -> Self {
        self.keys.insert(path.into(), key);
        self
    }

    /// Gives the host a timer (without one, asking for it fails).
    pub(crate) fn with_timer(mut self) -> Self {
        self.timer = Some(Arc::default());
        self
    }

    /// Every request so far, in order.
    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn note(&self, what: String) {
        self.log.lock().unwrap().push(what);
    }
}

fn not_found(path: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {path} here"))
}

impl Host for MemHost {
    fn open_file(&self, path: &str, sector_size: u32) -> io::Result<Disk> {
        self.note(format!("open {path}@{sector_size}"));
        let disk = self.files.get(path).ok_or_else(|| not_found(path))?;
        if disk.sector_size() != sector_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path} has {}-byte sectors", disk.sector_size()),
            ));
        }
        Ok(disk.clone())
    }

    fn read_key(&self, path: &str, limit: usize) -> io::Result<Vec<u8>> {
        self.note(format!("key {path} (at most {limit} bytes)"));
        let key = self.keys.get(path).ok_or_else(|| not_found(path))?;
        Ok(key[..key.len().min(limit)].to_vec())
    }

    fn timer(&self) -> io::Result<Arc<dyn Timer>> {
        self.note("timer".into());
        match &self.timer {
            Some(t) => Ok(t.clone()),
            None => Err(io::Error::other("no threads here")),
        }
    }
}

/// A timer whose sleeps end at once; it records what was asked.
#[derive(Default)]
pub(crate) struct CountingTimer(pub(crate) Mutex<Vec<Duration>>);

impl Timer for CountingTimer {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.0.lock().unwrap().push(duration);
        Box::pin(std::future::ready(()))
    }
}
