//! Test doubles: a disk wrapper that can fail requests, record them, run a
//! hook in the middle of a read, and pretend to be asynchronous; a disk
//! with a volatile cache; and a disk that completes requests only on a
//! manual trigger, long after they were submitted.

use crate::buf::{Layout, TestBuf};
use parastor_core::inflight::{InFlight, Tag};
use parastor_core::{
    Disk, DiskError, DiskIo, GpaRange, GuestMem, GuestMemory, IoError, IoErrorKind, IoOptions,
    LayerIo, SectorMarker, SgList, UnmapBehavior,
};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// What a [`LateDisk`] request does when its trigger comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LateOp {
    /// Copy `len` bytes from the disk at `offset` into the guest buffer.
    Read { offset: usize, len: usize },
    /// Copy `len` bytes from the guest buffer into the disk at `offset`.
    Write { offset: usize, len: usize },
    /// Nothing to move (flush, unmap).
    None,
}

/// What a [`LateDisk`] keeps for a request until it completes: what a
/// device-backed disk keeps for its DMA — the guest memory and the ranges.
struct LateRecord {
    memory: GuestMem,
    ranges: Vec<GpaRange>,
    op: LateOp,
}

struct LateState {
    sector_size: u32,
    data: Mutex<Vec<u8>>,
    /// The guest memory requests must address (the "device's" view of it).
    memory: GuestMem,
    table: InFlight<LateRecord, Result<(), DiskError>>,
    /// Tags of requests not yet triggered, oldest first.
    queued: Mutex<VecDeque<Tag>>,
    polls: AtomicUsize,
    completed: AtomicUsize,
}

/// A disk whose requests complete only when the test says so, as a device
/// does long after it was handed a buffer: each request is accepted into
/// an [`InFlight`] table (at most `depth` at once: more wait for a slot)
/// with its guest memory handle and ranges, and nothing moves until
/// [`LateDisk::complete_next`] / [`LateDisk::complete_all`]. Then a read's
/// data is written into the guest buffer — at completion time, whether or
/// not the request's future is still awaited (a dropped future only
/// detaches) — and a write's data is taken from it.
///
/// Requests must address the memory the disk was made with (the double
/// checks it, failing the request otherwise). Clones share everything.
#[derive(Clone)]
pub struct LateDisk {
    state: Arc<LateState>,
}

impl LateDisk {
    /// A disk of `sectors` sectors of `sector_size` bytes, all zero, over
    /// guest memory `memory`, with room for `depth` requests at once.
    pub fn new(memory: GuestMem, sector_size: u32, sectors: u64, depth: u16) -> Self {
        let bytes = usize::try_from(sectors * u64::from(sector_size)).expect("disk fits in memory");
        Self {
            state: Arc::new(LateState {
                sector_size,
                data: Mutex::new(vec![0; bytes]),
                memory,
                table: InFlight::new(depth),
                queued: Mutex::new(VecDeque::new()),
                polls: AtomicUsize::new(0),
                completed: AtomicUsize::new(0),
            }),
        }
    }

    /// Fills the disk's bytes from `offset` with `bytes`.
    pub fn fill(&self, offset: usize, bytes: &[u8]) {
        self.state.data.lock().unwrap()[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// A copy of the disk's bytes.
    pub fn contents(&self) -> Vec<u8> {
        self.state.data.lock().unwrap().clone()
    }

    /// Requests accepted and not yet triggered.
    pub fn queued(&self) -> usize {
        self.state.queued.lock().unwrap().len()
    }

    /// Requests in the in-flight table: not yet completed, or completed and
    /// not yet collected by their (still alive) future.
    pub fn in_flight(&self) -> usize {
        self.state.table.in_flight()
    }

    /// How many times the disk's request futures have been polled.
    pub fn polls(&self) -> usize {
        self.state.polls.load(Ordering::SeqCst)
    }

    /// Requests completed so far.
    pub fn completed(&self) -> usize {
        self.state.completed.load(Ordering::SeqCst)
    }

    /// Completes the oldest queued request: moves its data between the disk
    /// and the guest buffer now, then hands the result to the table.
    /// Returns whether there was one.
    pub fn complete_next(&self) -> bool {
        let Some(tag) = self.state.queued.lock().unwrap().pop_front() else {
            return false;
        };
        let s = &self.state;
        let result = s
            .table
            .with_record(tag, |r| {
                let mut data = s.data.lock().unwrap();
                match r.op {
                    LateOp::Read { offset, len } => {
                        let src = data
                            .get(offset..offset + len)
                            .ok_or(DiskError::IllegalBlock)?;
                        write_ranges(&*r.memory, &r.ranges, src)
                    }
                    LateOp::Write { offset, len } => {
                        let dst = data
                            .get_mut(offset..offset + len)
                            .ok_or(DiskError::IllegalBlock)?;
                        read_ranges(&*r.memory, &r.ranges, dst)
                    }
                    LateOp::None => Ok(()),
                }
            })
            .expect("a queued tag is in flight");
        s.table
            .complete(tag, result)
            .expect("a queued tag completes once");
        s.completed.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Completes every queued request, oldest first. Returns how many.
    pub fn complete_all(&self) -> usize {
        let mut n = 0;
        while self.complete_next() {
            n += 1;
        }
        n
    }

    /// Accepts a request and waits for its trigger.
    async fn submit(&self, buf: Option<&SgList<'_>>, op: LateOp) -> Result<(), DiskError> {
        let s = &self.state;
        let mut ranges = Vec::new();
        if let Some(buf) = buf {
            // The double keeps its own handle on the memory: the request's
            // must be the same memory.
            if !std::ptr::addr_eq(buf.memory(), &*s.memory) {
                return Err(INJECTED);
            }
            ranges.extend(buf.segments());
        }
        let record = LateRecord {
            memory: s.memory.clone(),
            ranges,
            op,
        };
        let completion = Counted {
            polls: &s.polls,
            inner: s.table.reserve(record).await,
        };
        s.queued.lock().unwrap().push_back(completion.inner.tag());
        let (_record, result) = completion.await;
        result
    }

    fn span(&self, sector: u64, len: usize) -> Result<usize, DiskError> {
        let offset = usize::try_from(sector * u64::from(self.state.sector_size))
            .map_err(|_| DiskError::IllegalBlock)?;
        if offset + len > self.state.data.lock().unwrap().len() {
            return Err(DiskError::IllegalBlock);
        }
        Ok(offset)
    }
}

/// A future that counts its polls.
struct Counted<'c, F> {
    polls: &'c AtomicUsize,
    inner: F,
}

impl<F: Future + Unpin> Future for Counted<'_, F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// Writes `src` across `ranges` of `mem`, in order.
fn write_ranges(
    mem: &dyn GuestMemory,
    ranges: &[GpaRange],
    mut src: &[u8],
) -> Result<(), DiskError> {
    for r in ranges {
        let (head, rest) = src.split_at(usize::try_from(r.len).unwrap().min(src.len()));
        mem.write_at(r.gpa, head).map_err(DiskError::MemoryAccess)?;
        src = rest;
    }
    Ok(())
}

/// Fills `dst` from `ranges` of `mem`, in order.
fn read_ranges(
    mem: &dyn GuestMemory,
    ranges: &[GpaRange],
    mut dst: &mut [u8],
) -> Result<(), DiskError> {
    for r in ranges {
        let n = usize::try_from(r.len).unwrap().min(dst.len());
        let (head, rest) = dst.split_at_mut(n);
        mem.read_at(r.gpa, head).map_err(DiskError::MemoryAccess)?;
        dst = rest;
    }
    Ok(())
}

impl DiskIo for LateDisk {
    fn kind(&self) -> &'static str {
        "late"
    }
    fn sector_count(&self) -> u64 {
        (self.state.data.lock().unwrap().len() / self.state.sector_size as usize) as u64
    }
    fn sector_size(&self) -> u32 {
        self.state.sector_size
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn is_fua_respected(&self) -> bool {
        true
    }
    fn unmap_behavior(&self) -> UnmapBehavior {
        UnmapBehavior::Unspecified
    }

    async fn read(&self, buf: SgList<'_>, sector: u64, _opts: IoOptions) -> Result<(), DiskError> {
        let len = buf.len();
        let offset = self.span(sector, len)?;
        self.submit(Some(&buf), LateOp::Read { offset, len }).await
    }

    async fn write(&self, buf: SgList<'_>, sector: u64, _opts: IoOptions) -> Result<(), DiskError> {
        let len = buf.len();
        let offset = self.span(sector, len)?;
        self.submit(Some(&buf), LateOp::Write { offset, len }).await
    }

    async fn flush(&self, _opts: IoOptions) -> Result<(), DiskError> {
        self.submit(None, LateOp::None).await
    }

    async fn unmap(&self, sector: u64, count: u64, _opts: IoOptions) -> Result<(), DiskError> {
        let len = usize::try_from(count * u64::from(self.state.sector_size))
            .map_err(|_| DiskError::IllegalBlock)?;
        self.span(sector, len)?;
        self.submit(None, LateOp::None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parastor_core::{Gpa, RamGuestMemory};
    use std::task::Waker;

    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn late_disk_writes_the_buffer_at_the_trigger_even_when_detached() {
        let mem = GuestMem::new(RamGuestMemory::new(0x4000));
        let late = LateDisk::new(mem.clone(), 512, 8, 2);
        late.fill(512, &[0xAB; 512]);
        let disk = Disk::new(late.clone()).unwrap();
        let range = [GpaRange::new(Gpa::new(0x1000), 512)];
        let sg = SgList::new(&*mem, &range, true).unwrap();
        let mut read = Box::pin(disk.read(sg, 1, IoOptions::default()));
        assert!(poll_once(read.as_mut()).is_pending());
        assert_eq!((late.queued(), late.in_flight()), (1, 1));
        // The frontend gives up: the request is detached, not gone.
        drop(read);
        assert_eq!(late.in_flight(), 1);
        let mut buf = [0u8; 512];
        mem.read_at(Gpa::new(0x1000), &mut buf).unwrap();
        assert_eq!(buf, [0; 512]);
        // Long after, the device completes and writes the guest buffer.
        assert!(late.complete_next());
        mem.read_at(Gpa::new(0x1000), &mut buf).unwrap();
        assert_eq!(buf, [0xAB; 512]);
        assert_eq!(
            (late.queued(), late.in_flight(), late.completed()),
            (0, 0, 1)
        );
        assert!(!late.complete_next());
    }

    #[test]
    fn late_disk_write_takes_data_at_the_trigger() {
        let mem = GuestMem::new(RamGuestMemory::new(0x4000));
        let late = LateDisk::new(mem.clone(), 512, 8, 1);
        let disk = Disk::new(late.clone()).unwrap();
        let range = [GpaRange::new(Gpa::new(0x2000), 512)];
        let mut write = Box::pin(disk.write(
            SgList::new(&*mem, &range, false).unwrap(),
            0,
            IoOptions::default(),
        ));
        assert!(poll_once(write.as_mut()).is_pending());
        // A second request waits for the only slot.
        let mut flush = Box::pin(disk.flush(IoOptions::default()));
        assert!(poll_once(flush.as_mut()).is_pending());
        assert_eq!(late.queued(), 1);
        mem.write_at(Gpa::new(0x2000), &[7; 512]).unwrap();
        assert!(late.complete_next());
        assert_eq!(&late.contents()[..512], &[7; 512]);
        assert_eq!(poll_once(write.as_mut()), Poll::Ready(Ok(())));
        let polls = late.polls();
        assert!(poll_once(flush.as_mut()).is_pending());
        assert_eq!(late.queued(), 1);
        assert!(late.polls() > polls);
        late.complete_all();
        assert_eq!(poll_once(flush.as_mut()), Poll::Ready(Ok(())));
    }
}
