//! Test doubles: a disk wrapper that can fail requests, record them, run a
//! hook in the middle of a read, and pretend to be asynchronous.

use crate::buf::{Layout, TestBuf};
use parastor_core::{
    Disk, DiskError, DiskIo, IoError, IoErrorKind, IoOptions, LayerIo, SectorMarker, SgList,
    UnmapBehavior,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// The error a [`TestDisk`] fails requests with.
pub const INJECTED: DiskError = DiskError::Io(IoError::new(IoErrorKind::DeviceFailed, 5));

/// One request a [`TestDisk`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// A read (plain or layer read) of `count` sectors at `sector`.
    Read {
        /// First sector.
        sector: u64,
        /// Sectors.
        count: u64,
    },
    /// A write of `count` sectors at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Sectors.
        count: u64,
        /// FUA.
        fua: bool,
    },
    /// A write-no-overwrite of `count` sectors at `sector`.
    WriteNoOverwrite {
        /// First sector.
        sector: u64,
        /// Sectors.
        count: u64,
    },
    /// An unmap.
    Unmap {
        /// First sector.
        sector: u64,
        /// Sectors.
        count: u64,
        /// The `next_is_zero` hint.
        next_is_zero: bool,
    },
    /// A flush.
    Flush,
}

/// A one-shot hook run at the start of the next read.
type Hook = Box<dyn FnOnce() + Send>;

/// Wraps a [`Disk`] and forwards everything to it, except that it can
/// - fail reads, writes, unmaps or flushes with [`INJECTED`];
/// - record every request ([`TestDisk::take_calls`]);
/// - run a one-shot hook at the start of the next read (to interleave
///   another request with this one deterministically);
/// - claim not to complete inline, and return `Pending` once from every
///   operation, so composites take their asynchronous paths.
///
/// Clones share the failure switches, the call log and the hook: keep a
/// clone to control the disk after wrapping another in a [`Disk`].
#[derive(Clone)]
pub struct TestDisk {
    inner: Disk,
    inline: bool,
    wno: bool,
    unmap_behavior: UnmapBehavior,
    fua: bool,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
    fail_unmaps: AtomicBool,
    fail_flushes: AtomicBool,
    calls: Mutex<Vec<Call>>,
    hook: Mutex<Option<Hook>>,
}

impl TestDisk {
    /// A transparent wrapper around `inner`, completing inline if `inner`
    /// does.
    pub fn new(inner: Disk) -> Self {
        Self {
            inline: inner.completes_inline(),
            wno: inner.supports_write_no_overwrite(),
            unmap_behavior: inner.unmap_behavior(),
            fua: inner.is_fua_respected(),
            inner,
            state: Arc::default(),
        }
    }

    /// Makes every operation return `Pending` once before completing, and
    /// reports that operations do not complete inline.
    pub fn asynchronous(mut self) -> Self {
        self.inline = false;
        self
    }

    /// Hides write-no-overwrite support (so the disk cannot be a read cache).
    pub fn without_write_no_overwrite(mut self) -> Self {
        self.wno = false;
        self
    }

    /// Reports `behavior` as the unmap behaviour (unmaps are still
    /// forwarded, so `Unspecified` over a zeroing disk is honest).
    pub fn with_unmap_behavior(mut self, behavior: UnmapBehavior) -> Self {
        self.unmap_behavior = behavior;
        self
    }

    /// Reports whether FUA is respected.
    pub fn with_fua(mut self, fua: bool) -> Self {
        self.fua = fua;
        self
    }

    /// Fails reads from now on (or stops failing them).
    pub fn fail_reads(&self, fail: bool) {
        self.state.fail_reads.store(fail, Ordering::SeqCst);
    }

    /// Fails writes (and write-no-overwrite) from now on (or stops).
    pub fn fail_writes(&self, fail: bool) {
        self.state.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Fails unmaps from now on (or stops).
    pub fn fail_unmaps(&self, fail: bool) {
        self.state.fail_unmaps.store(fail, Ordering::SeqCst);
    }

    /// Fails flushes from now on (or stops).
    pub fn fail_flushes(&self, fail: bool) {
        self.state.fail_flushes.store(fail, Ordering::SeqCst);
    }

    /// Runs `hook` at the start of the next read, before the data is read.
    pub fn on_next_read(&self, hook: impl FnOnce() + Send + 'static) {
        *self.state.hook.lock().unwrap() = Some(Box::new(hook));
    }

    /// The requests seen so far, and forgets them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.state.calls.lock().unwrap())
    }

    fn record(&self, call: Call) {
        self.state.calls.lock().unwrap().push(call);
    }

    fn count(&self, buf: &SgList<'_>) -> u64 {
        (buf.len() >> self.inner.sector_shift()) as u64
    }

    async fn maybe_yield(&self) {
        if !self.inline {
            YieldOnce(false).await;
        }
    }

    fn before_read(&self) {
        let hook = self.state.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
    }
}

/// Returns `Pending` once (waking itself), then `Ready`.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn fail_if(flag: &AtomicBool) -> Result<(), DiskError> {
    if flag.load(Ordering::SeqCst) {
        Err(INJECTED)
    } else {
        Ok(())
    }
}

impl DiskIo for TestDisk {
    fn kind(&self) -> &'static str {
        "test"
    }
    fn sector_count(&self) -> u64 {
        self.inner.sector_count()
    }
    fn sector_size(&self) -> u32 {
        self.inner.sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.inner.physical_sector_size()
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
    fn is_fua_respected(&self) -> bool {
        self.fua
    }
    fn unmap_behavior(&self) -> UnmapBehavior {
        self.unmap_behavior
    }
    fn optimal_unmap_sectors(&self) -> u32 {
        self.inner.optimal_unmap_sectors()
    }
    fn completes_inline(&self) -> bool {
        self.inline
    }
    fn children(&self) -> Vec<(String, Disk)> {
        vec![("inner".into(), self.inner.clone())]
    }

    async fn read(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.record(Call::Read {
            sector,
            count: self.count(&buf),
        });
        self.before_read();
        self.maybe_yield().await;
        fail_if(&self.state.fail_reads)?;
        self.inner.read(buf, sector, opts).await
    }

    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.record(Call::Write {
            sector,
            count: self.count(&buf),
            fua: opts.fua,
        });
        self.maybe_yield().await;
        fail_if(&self.state.fail_writes)?;
        self.inner.write(buf, sector, opts).await
    }

    async fn flush(&self, opts: IoOptions) -> Result<(), DiskError> {
        self.record(Call::Flush);
        self.maybe_yield().await;
        fail_if(&self.state.fail_flushes)?;
        self.inner.flush(opts).await
    }

    async fn unmap(&self, sector: u64, count: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.record(Call::Unmap {
            sector,
            count,
            next_is_zero: opts.next_is_zero,
        });
        self.maybe_yield().await;
        fail_if(&self.state.fail_unmaps)?;
        self.inner.unmap(sector, count, opts).await
    }

    fn wait_resize(&self, known: u64) -> impl Future<Output = u64> + Send {
        self.inner.wait_resize(known)
    }

    fn as_layer(&self) -> Option<&impl LayerIo> {
        Some(self)
    }
}

impl LayerIo for TestDisk {
    async fn read_present(
        &self,
        buf: SgList<'_>,
        sector: u64,
        marker: &mut SectorMarker<'_>,
        opts: IoOptions,
    ) -> Result<(), DiskError> {
        self.record(Call::Read {
            sector,
            count: self.count(&buf),
        });
        self.before_read();
        self.maybe_yield().await;
        fail_if(&self.state.fail_reads)?;
        self.inner.read_present(buf, sector, marker, opts).await
    }

    fn supports_write_no_overwrite(&self) -> bool {
        self.wno
    }

    async fn write_no_overwrite(&self, buf: SgList<'_>, sector: u64) -> Result<(), DiskError> {
        self.record(Call::WriteNoOverwrite {
            sector,
            count: self.count(&buf),
        });
        self.maybe_yield().await;
        fail_if(&self.state.fail_writes)?;
        if !self.wno {
            return Err(DiskError::Unsupported("write-no-overwrite"));
        }
        self.inner.write_no_overwrite(buf, sector).await
    }
}

/// A disk with a volatile write cache in front of its medium, to check
/// durability: a write without FUA lands in the cache (reads see it), a
/// write with FUA goes to the medium, a flush writes the cache back, and
/// [`VolatileCacheDisk::power_cut`] throws away whatever the cache holds —
/// the unflushed, non-FUA writes a real disk would lose when power fails.
///
/// The medium is any [`Disk`] (normally a RAM disk). Unmaps go straight to
/// the medium (dropping cached data for the range). Clones share the cache:
/// keep one to cut the power after wrapping another in a [`Disk`].
#[derive(Clone)]
pub struct VolatileCacheDisk {
    medium: Disk,
    /// Sector → its newest data not yet on the medium.
    cache: Arc<Mutex<std::collections::BTreeMap<u64, Vec<u8>>>>,
}

impl VolatileCacheDisk {
    /// An empty cache in front of `medium`.
    pub fn new(medium: Disk) -> Self {
        Self {
            medium,
            cache: Arc::default(),
        }
    }

    /// Simulates a power failure: every write still in the cache is lost.
    pub fn power_cut(&self) {
        self.cache.lock().unwrap().clear();
    }

    /// Sectors written but not yet durable.
    pub fn dirty_sectors(&self) -> usize {
        self.cache.lock().unwrap().len()
    }

    fn ss(&self) -> usize {
        self.medium.sector_size() as usize
    }

    fn check(&self, sector: u64, count: u64) -> Result<(), DiskError> {
        match sector.checked_add(count) {
            Some(end) if end <= self.medium.sector_count() => Ok(()),
            _ => Err(DiskError::IllegalBlock),
        }
    }

    /// Drops cached data for `[sector, sector + count)`.
    fn forget(&self, sector: u64, count: u64) {
        let mut cache = self.cache.lock().unwrap();
        let stale: Vec<u64> = cache
            .range(sector..sector + count)
            .map(|(&s, _)| s)
            .collect();
        for s in stale {
            cache.remove(&s);
        }
    }
}

impl DiskIo for VolatileCacheDisk {
    fn kind(&self) -> &'static str {
        "volatile-cache"
    }
    fn sector_count(&self) -> u64 {
        self.medium.sector_count()
    }
    fn sector_size(&self) -> u32 {
        self.medium.sector_size()
    }
    fn is_read_only(&self) -> bool {
        self.medium.is_read_only()
    }
    fn is_fua_respected(&self) -> bool {
        true
    }
    fn unmap_behavior(&self) -> UnmapBehavior {
        self.medium.unmap_behavior()
    }
    fn completes_inline(&self) -> bool {
        self.medium.completes_inline()
    }
    fn children(&self) -> Vec<(String, Disk)> {
        vec![("medium".into(), self.medium.clone())]
    }

    async fn read(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        let ss = self.ss();
        self.check(sector, (buf.len() / ss) as u64)?;
        self.medium.read(buf, sector, opts).await?;
        let cache = self.cache.lock().unwrap();
        for (&s, data) in cache.range(sector..sector + (buf.len() / ss) as u64) {
            let at = (s - sector) as usize * ss;
            let part = buf
                .subrange(at, ss)
                .map_err(|_| DiskError::InvalidInput("buffer"))?;
            part.write_all(data)?;
        }
        Ok(())
    }

    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        let ss = self.ss();
        let count = (buf.len() / ss) as u64;
        self.check(sector, count)?;
        if opts.fua {
            self.forget(sector, count);
            return self.medium.write(buf, sector, opts).await;
        }
        let mut data = vec![0u8; buf.len()];
        buf.read_all(&mut data)?;
        let mut cache = self.cache.lock().unwrap();
        for (i, chunk) in data.chunks(ss).enumerate() {
            cache.insert(sector + i as u64, chunk.to_vec());
        }
        Ok(())
    }

    async fn flush(&self, opts: IoOptions) -> Result<(), DiskError> {
        let dirty = std::mem::take(&mut *self.cache.lock().unwrap());
        for (s, data) in dirty {
            let buf = TestBuf::from_data(&data, &Layout::contiguous());
            self.medium.write(buf.sg(false), s, opts).await?;
        }
        self.medium.flush(opts).await
    }

    async fn unmap(&self, sector: u64, count: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.check(sector, count)?;
        self.forget(sector, count);
        self.medium.unmap(sector, count, opts).await
    }

    fn wait_resize(&self, known: u64) -> impl Future<Output = u64> + Send {
        self.medium.wait_resize(known)
    }
}
