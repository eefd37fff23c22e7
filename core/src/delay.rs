//! A decorator that adds latency to reads and writes, adjustable at
//! runtime.
//!
//! [`DelayDisk`] waits for the current delay before passing each read or
//! write (and a layer's `read_present` / `write_no_overwrite`) to the inner
//! disk. Flush, unmap, eject, metadata, persistent reservations and
//! `wait_resize` pass straight through, as in OpenVMM's `disk_delay`.
//!
//! The delay lives in a [`DelayHandle`] (an atomic nanosecond count) that
//! can be cloned and changed while the disk runs; each request reads it
//! once when it starts, so [`DelayHandle::set`] affects later requests and
//! leaves requests already waiting alone. A zero delay skips the timer
//! entirely. Waiting is delegated to a [`Timer`] the host provides, which
//! keeps this crate free of any clock or executor.
//!
//! A delayed request allocates once (the timer's boxed future); the disk
//! always reports `completes_inline() == false`, since the delay may become
//! nonzero at any time.

use crate::disk::{BoxFuture, Disk, DiskIo, IoOptions, LayerIo, SectorMarker};
use crate::drive;
use crate::error::DiskError;
use crate::sg::SgList;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

/// Sleeping, as provided by the host environment.
///
/// `sleep(d)` returns a future that completes once at least `d` has passed
/// (a real timer, or a test clock). It must not block the calling thread;
/// it is only called with a nonzero duration.
pub trait Timer: Send + Sync {
    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// The delay of one or more [`DelayDisk`]s; clones share it.
#[derive(Clone, Debug, Default)]
pub struct DelayHandle(Arc<AtomicU64>);

impl DelayHandle {
    /// A handle holding `delay`.
    pub fn new(delay: Duration) -> DelayHandle {
        let handle = DelayHandle::default();
        handle.set(delay);
        handle
    }

    /// Sets the delay for requests that start from now on. Delays beyond
    /// `u64::MAX` nanoseconds (about 584 years) are clamped.
    pub fn set(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.0.store(nanos, Ordering::Relaxed);
    }

    /// The current delay.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// A disk whose reads and writes wait for a configurable delay first. See
/// the module docs.
pub struct DelayDisk {
    inner: Disk,
    inline: bool,
    delay: DelayHandle,
    timer: Arc<dyn Timer>,
}

impl DelayDisk {
    /// Wraps `inner`; reads and writes wait for `delay` (as it is when each
    /// request starts) using `timer`.
    pub fn new(inner: Disk, delay: DelayHandle, timer: Arc<dyn Timer>) -> DelayDisk {
        DelayDisk {
            inline: inner.completes_inline(),
            inner,
            delay,
            timer,
        }
    }

    /// The handle that controls the delay.
    pub fn handle(&self) -> &DelayHandle {
        &self.delay
    }

    /// The wrapped disk.
    pub fn inner(&self) -> &Disk {
        &self.inner
    }

    /// Waits for the current delay; returns at once when it is zero.
    async fn pause(&self) {
        let delay = self.delay.get();
        if !delay.is_zero() {
            self.timer.sleep(delay).await;
        }
    }
}

impl DiskIo for DelayDisk {
    fn kind(&self) -> &'static str {
        "delay"
    }
    crate::forward_geometry!(inner);
    crate::forward_ops!(inner, inline; unmap_behavior, flush, unmap, eject, wait_resize, persistent_reservations, children);
    fn completes_inline(&self) -> bool {
        false
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        alloc::vec![("delay", format!("{:?}", self.delay.get()))]
    }
    async fn read(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.pause().await;
        let inner = &self.inner;
        drive!(self.inline, inner.read(buf, sector, opts))
    }

    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.pause().await;
        let inner = &self.inner;
        drive!(self.inline, inner.write(buf, sector, opts))
    }

    fn as_layer(&self) -> Option<&impl LayerIo> {
        Some(self)
    }
}

impl LayerIo for DelayDisk {
    crate::forward_ops!(inner, inline; supports_write_no_overwrite);
    async fn read_present(
        &self,
        buf: SgList<'_>,
        sector: u64,
        marker: &mut SectorMarker<'_>,
        opts: IoOptions,
    ) -> Result<(), DiskError> {
        self.pause().await;
        let inner = &self.inner;
        drive!(self.inline, inner.read_present(buf, sector, marker, opts))
    }

    async fn write_no_overwrite(&self, buf: SgList<'_>, sector: u64) -> Result<(), DiskError> {
        self.pause().await;
        let inner = &self.inner;
        drive!(self.inline, inner.write_no_overwrite(buf, sector))
    }
}
