//! The conformance suite can fail: each deliberately broken disk here must
//! be caught by the check aimed at its bug (and a correct twin must pass).

use parastor_core::ram::RamDisk;
use parastor_core::{Disk, DiskError, DiskIo, IoOptions, SgList, UnmapBehavior};
use parastor_tests::conformance;
use parastor_tests::doubles::VolatileCacheDisk;
use parastor_tests::stacks::{disk, ram_disk};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// A size with wake-ups (independent of core's, so the correct twin does
/// not inherit core's bugs): every pending poll registers its waker, and a
/// change wakes them all.
#[derive(Default)]
struct Size {
    state: Mutex<(u64, Vec<Waker>)>,
}

impl Size {
    fn new(n: u64) -> Self {
        Self {
            state: Mutex::new((n, Vec::new())),
        }
    }
    fn get(&self) -> u64 {
        self.state.lock().unwrap().0
    }
    fn set(&self, n: u64) {
        let wakers = {
            let mut s = self.state.lock().unwrap();
            s.0 = n;
            std::mem::take(&mut s.1)
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// Waits for `size` to differ from `known`.
struct SizeWait {
    size: Arc<Size>,
    known: u64,
}

impl Future for SizeWait {
    type Output = u64;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        let mut s = self.size.state.lock().unwrap();
        if s.0 != self.known {
            return Poll::Ready(s.0);
        }
        s.1.push(cx.waker().clone());
        Poll::Pending
    }
}

/// One deliberate bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    None,
    /// Accepts requests that end one sector past the end (as no-ops).
    OffByOneRange,
    /// Answers out-of-range requests with `InvalidInput`.
    WrongRangeError,
    /// Silently drops writes to the last sector.
    DropsLastSector,
    /// Reports `Zeroes` but ignores unmap.
    FakeZeroes,
    /// Reads multi-range buffers from one sector too far.
    MultiRangeOffset,
    /// `wait_resize` never completes.
    NoResizeWake,
    /// A shrink only changes the reported size; regrowing resurrects data.
    ResurrectsData,
    /// Unmap does not range-check.
    UnmapUnchecked,
}

/// A RAM disk with a bug, sized by its own count.
#[derive(Clone)]
struct Mutant {
    ram: Disk,
    size: Arc<Size>,
    bug: Bug,
}

impl Mutant {
    fn new(sectors: u64, ss: u32, bug: Bug) -> Self {
        let ram = disk(RamDisk::new(4 * sectors * u64::from(ss), ss).unwrap());
        Self {
            ram,
            size: Arc::new(Size::new(sectors)),
            bug,
        }
    }

    fn resize(&self, n: u64) {
        let old = self.size.get();
        if n < old && self.bug != Bug::ResurrectsData {
            let zeros = vec![0u8; (old - n) as usize * self.ram.sector_size() as usize];
            parastor_tests::buf::write_vec(&self.ram, n, &zeros).unwrap();
        }
        self.size.set(n);
    }

    fn check(&self, sector: u64, count: u64) -> Result<(), DiskError> {
        let n = self.size.get() + u64::from(self.bug == Bug::OffByOneRange);
        match sector.checked_add(count) {
            Some(end) if end <= n => Ok(()),
            _ if self.bug == Bug::WrongRangeError => Err(DiskError::InvalidInput("range")),
            _ => Err(DiskError::IllegalBlock),
        }
    }

    fn past_end(&self, sector: u64, count: u64) -> bool {
        sector + count > self.size.get()
    }
}

impl DiskIo for Mutant {
    fn kind(&self) -> &'static str {
        "mutant"
    }
    fn sector_count(&self) -> u64 {
        self.size.get()
    }
    fn sector_size(&self) -> u32 {
        self.ram.sector_size()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn is_fua_respected(&self) -> bool {
        true
    }
    fn unmap_behavior(&self) -> UnmapBehavior {
        UnmapBehavior::Zeroes
    }

    async fn read(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        let count = (buf.len() >> self.ram.sector_shift()) as u64;
        self.check(sector, count)?;
        if self.past_end(sector, count) {
            return Ok(());
        }
        let multi = buf.segments().filter(|r| r.len > 0).count() > 1;
        let sector = if self.bug == Bug::MultiRangeOffset && multi {
            sector + 1
        } else {
            sector
        };
        self.ram.read(buf, sector, opts).await
    }

    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        let count = (buf.len() >> self.ram.sector_shift()) as u64;
        self.check(sector, count)?;
        if self.past_end(sector, count) {
            return Ok(());
        }
        let last = self.size.get() - 1;
        if self.bug == Bug::DropsLastSector && sector + count > last {
            let keep = last - sector.min(last);
            let ss = self.ram.sector_size() as usize;
            return self
                .ram
                .write(buf.subrange(0, keep as usize * ss).unwrap(), sector, opts)
                .await;
        }
        self.ram.write(buf, sector, opts).await
    }

    async fn flush(&self, _opts: IoOptions) -> Result<(), DiskError> {
        Ok(())
    }

    async fn unmap(&self, sector: u64, count: u64, opts: IoOptions) -> Result<(), DiskError> {
        if self.bug == Bug::UnmapUnchecked {
            return Ok(());
        }
        self.check(sector, count)?;
        if self.bug == Bug::FakeZeroes || self.past_end(sector, count) {
            return Ok(());
        }
        self.ram.unmap(sector, count, opts).await
    }

    fn wait_resize(&self, known: u64) -> impl Future<Output = u64> + Send {
        let size = self.size.clone();
        let bug = self.bug;
        async move {
            if bug == Bug::NoResizeWake {
                std::future::pending::<()>().await;
            }
            SizeWait { size, known }.await
        }
    }
}

/// What a decorator does wrong with durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DurabilityBug {
    None,
    /// Passes writes on without their FUA flag.
    DropsFua,
    /// Answers flushes without passing them on.
    IgnoresFlush,
}

/// A pass-through decorator with a durability bug, over a disk with a
/// volatile write cache.
struct Careless {
    inner: Disk,
    bug: DurabilityBug,
}

impl DiskIo for Careless {
    fn kind(&self) -> &'static str {
        "careless"
    }
    parastor_core::forward_geometry!(inner);
    fn unmap_behavior(&self) -> UnmapBehavior {
        self.inner.unmap_behavior()
    }
    async fn read(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.inner.read(buf, sector, opts).await
    }
    async fn write(
        &self,
        buf: SgList<'_>,
        sector: u64,
        mut opts: IoOptions,
    ) -> Result<(), DiskError> {
        if self.bug == DurabilityBug::DropsFua {
            opts.fua = false;
        }
        self.inner.write(buf, sector, opts).await
    }
    async fn flush(&self, opts: IoOptions) -> Result<(), DiskError> {
        if self.bug == DurabilityBug::IgnoresFlush {
            return Ok(());
        }
        self.inner.flush(opts).await
    }
    async fn unmap(&self, sector: u64, count: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.inner.unmap(sector, count, opts).await
    }
}

/// Whether `fua_and_flush`, with a power cut, fails on a disk with `bug`.
fn durability_fails(bug: DurabilityBug) -> bool {
    let cache = VolatileCacheDisk::new(ram_disk(64, 512));
    let d = disk(Careless {
        inner: disk(cache.clone()),
        bug,
    });
    fails(|| conformance::fua_and_flush(&d, Some(&|| cache.power_cut())))
}

/// Whether `f` panics (a check failed).
fn fails(f: impl FnOnce()) -> bool {
    catch_unwind(AssertUnwindSafe(f)).is_err()
}

#[test]
fn each_bug_is_caught_by_its_check() {
    let make = |bug| move || disk(Mutant::new(64, 512, bug));
    let resize = |bug| {
        let m = Mutant::new(64, 512, bug);
        let d = disk(m.clone());
        move || conformance::resize_notification(&d, &|n| m.resize(n))
    };
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let results = [
        (
            "correct twin, whole suite",
            fails(|| conformance::run_all(&make(Bug::None))),
            false,
        ),
        ("correct twin, resize", fails(resize(Bug::None)), false),
        (
            "off-by-one range",
            fails(|| conformance::range_checks(&make(Bug::OffByOneRange)())),
            true,
        ),
        (
            "wrong range error",
            fails(|| conformance::range_checks(&make(Bug::WrongRangeError)())),
            true,
        ),
        (
            "wrong range error (representability)",
            fails(|| conformance::representability(&make(Bug::WrongRangeError)())),
            true,
        ),
        (
            "unchecked unmap",
            fails(|| conformance::range_checks(&make(Bug::UnmapUnchecked)())),
            true,
        ),
        (
            "dropped last sector",
            fails(|| conformance::fua_and_flush(&make(Bug::DropsLastSector)(), None)),
            true,
        ),
        (
            "dropped last sector (model)",
            fails(|| conformance::read_after_write(&make(Bug::DropsLastSector), 64)),
            true,
        ),
        (
            "fake zeroes",
            fails(|| conformance::unmap_semantics(&make(Bug::FakeZeroes)())),
            true,
        ),
        (
            "fake zeroes (model)",
            fails(|| conformance::read_after_write(&make(Bug::FakeZeroes), 64)),
            true,
        ),
        (
            "multi-range offset",
            fails(|| conformance::read_after_write(&make(Bug::MultiRangeOffset), 64)),
            true,
        ),
        ("no resize wake", fails(resize(Bug::NoResizeWake)), true),
        (
            "correct twin, durability",
            durability_fails(DurabilityBug::None),
            false,
        ),
        (
            "FUA dropped",
            durability_fails(DurabilityBug::DropsFua),
            true,
        ),
        (
            "flush ignored",
            durability_fails(DurabilityBug::IgnoresFlush),
            true,
        ),
        ("resurrected data", fails(resize(Bug::ResurrectsData)), true),
    ];
    std::panic::set_hook(quiet);
    let wrong: Vec<_> = results
        .iter()
        .filter(|(_, got, want)| got != want)
        .collect();
    assert!(
        wrong.is_empty(),
        "suite verdicts differ from expectations: {wrong:?}"
    );
}
