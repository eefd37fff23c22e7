//! `DelayDisk`: reads and writes wait for the configured delay on a manual
//! test clock; everything else passes straight through.

use core::pin::{Pin, pin};
use core::task::{Context, Poll, Waker};
use futures::executor::block_on;
use futures::task::ArcWake;
use parastor_core::Gpa;
use parastor_core::disk::{BoxFuture, IO_FUTURE_BYTES};
use parastor_core::layered::{LayerConfig, LayerSource, LayeredDisk};
use parastor_core::ram::RamDisk;
use parastor_core::{
    DelayDisk, DelayHandle, Disk, DiskError, DiskIo, GpaRange, GuestMemory, IoOptions,
    RamGuestMemory, SgList, Timer,
};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);

/// A clock that moves only when the test says so. Records every requested
/// sleep; a sleep completes once the clock has advanced past its deadline.
#[derive(Default)]
struct ManualTimer {
    state: Mutex<ClockState>,
}

#[derive(Default)]
struct ClockState {
    now: Duration,
    requested: Vec<Duration>,
    sleepers: Vec<(Duration, Arc<Sleep>)>,
}

#[derive(Default)]
struct Sleep {
    done: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

struct SleepFuture(Arc<Sleep>);

impl Future for SleepFuture {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.0.done.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Timer for ManualTimer {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let mut st = self.state.lock().unwrap();
        st.requested.push(duration);
        let sleep = Arc::new(Sleep::default());
        let deadline = st.now + duration;
        st.sleepers.push((deadline, sleep.clone()));
        Box::pin(SleepFuture(sleep))
    }
}

impl ManualTimer {
    fn advance(&self, by: Duration) {
        let mut st = self.state.lock().unwrap();
        st.now += by;
        let now = st.now;
        st.sleepers.retain(|(deadline, sleep)| {
            if *deadline > now {
                return true;
            }
            sleep.done.store(true, Ordering::SeqCst);
            if let Some(w) = sleep.waker.lock().unwrap().take() {
                w.wake();
            }
            false
        });
    }

    fn requested(&self) -> Vec<Duration> {
        self.state.lock().unwrap().requested.clone()
    }
}

/// A waker that counts its wakes.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl ArcWake for CountingWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Rig {
    disk: Disk,
    ram: Disk,
    handle: DelayHandle,
    timer: Arc<ManualTimer>,
    mem: RamGuestMemory,
    wakes: Arc<CountingWaker>,
    waker: Waker,
    /// One-sector buffers: slot `i` is guest bytes `[i * 512, i * 512 + 512)`.
    slots: [GpaRange; 8],
}

impl Rig {
    fn new(delay: Duration) -> Rig {
        let ram = Disk::new(RamDisk::new(1 << 20, 512).unwrap()).unwrap();
        let timer = Arc::new(ManualTimer::default());
        let handle = DelayHandle::new(delay);
        let disk = Disk::new(DelayDisk::new(ram.clone(), handle.clone(), timer.clone())).unwrap();
        let wakes = Arc::new(CountingWaker::default());
        let waker = futures::task::waker(wakes.clone());
        Rig {
            disk,
            ram,
            handle,
            timer,
            mem: RamGuestMemory::new(1 << 16),
            wakes,
            waker,
            slots: core::array::from_fn(|i| GpaRange::new(Gpa::new(i as u64 * 512), 512)),
        }
    }

    fn poll<F: Future + ?Sized>(&self, f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(&self.waker))
    }

    /// The one-sector buffer in slot `slot`.
    fn sg(&self, slot: usize, writable: bool) -> SgList<'_> {
        SgList::new(&self.mem, &self.slots[slot..=slot], writable).unwrap()
    }

    /// First byte of sector `sector` on the RAM disk below (read via slot 7).
    fn stored(&self, sector: u64) -> u8 {
        block_on(
            self.ram
                .read(self.sg(7, true), sector, IoOptions::default()),
        )
        .unwrap();
        let mut b = [0u8; 1];
        self.mem.read_at(Gpa::new(7 * 512), &mut b).unwrap();
        b[0]
    }
}

#[test]
fn reads_and_writes_wait_for_the_delay() {
    let rig = Rig::new(10 * MS);
    assert!(!rig.disk.completes_inline());

    // A write is held back and does not reach the medium until the clock
    // has advanced by the full delay.
    rig.mem.fill_at(Gpa::new(0), 512, 0x5a).unwrap();
    let mut write = pin!(rig.disk.write(rig.sg(0, false), 3, IoOptions::default()));
    assert!(rig.poll(write.as_mut()).is_pending());
    assert_eq!(rig.timer.requested(), [10 * MS]);
    assert_eq!(rig.stored(3), 0);
    rig.timer.advance(9 * MS);
    assert_eq!(rig.wakes.0.load(Ordering::SeqCst), 0);
    assert!(rig.poll(write.as_mut()).is_pending());
    rig.timer.advance(MS);
    assert_eq!(
        rig.wakes.0.load(Ordering::SeqCst),
        1,
        "the timer woke the request"
    );
    assert_eq!(rig.poll(write.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(rig.stored(3), 0x5a);

    // A read is held back too, then returns the data.
    rig.mem.fill_at(Gpa::new(512), 512, 0).unwrap();
    let mut read = pin!(rig.disk.read(rig.sg(1, true), 3, IoOptions::default()));
    assert!(rig.poll(read.as_mut()).is_pending());
    assert_eq!(rig.timer.requested(), [10 * MS, 10 * MS]);
    rig.timer.advance(10 * MS);
    assert_eq!(rig.poll(read.as_mut()), Poll::Ready(Ok(())));
    let mut b = [0u8; 1];
    rig.mem.read_at(Gpa::new(512), &mut b).unwrap();
    assert_eq!(b[0], 0x5a);
}

#[test]
fn flush_unmap_and_metadata_do_not_wait() {
    let rig = Rig::new(10 * MS);
    let mut flush = pin!(rig.disk.flush(IoOptions::default()));
    assert_eq!(rig.poll(flush.as_mut()), Poll::Ready(Ok(())));
    let mut unmap = pin!(rig.disk.unmap(0, 8, IoOptions::default()));
    assert_eq!(rig.poll(unmap.as_mut()), Poll::Ready(Ok(())));
    assert!(
        rig.timer.requested().is_empty(),
        "no timer for flush or unmap"
    );
    assert_eq!(rig.disk.kind(), "delay");
    assert_eq!(rig.disk.sector_count(), rig.ram.sector_count());
    assert_eq!(rig.disk.unmap_behavior(), rig.ram.unmap_behavior());
    assert!(rig.disk.persistent_reservations().is_none());
    let d = rig.disk.describe();
    assert_eq!(d.children[0].1.kind, "ram");
    assert!(d.details.iter().any(|(k, v)| *k == "delay" && v == "10ms"));
    // Errors are the inner disk's, after the delay.
    let mut bad = pin!(
        rig.disk
            .read(rig.sg(0, true), 1 << 11, IoOptions::default())
    );
    assert!(rig.poll(bad.as_mut()).is_pending());
    rig.timer.advance(10 * MS);
    assert_eq!(
        rig.poll(bad.as_mut()),
        Poll::Ready(Err(DiskError::IllegalBlock))
    );
}

#[test]
fn set_changes_later_requests() {
    let rig = Rig::new(10 * MS);
    let mut first = pin!(rig.disk.read(rig.sg(0, true), 0, IoOptions::default()));
    assert!(rig.poll(first.as_mut()).is_pending());

    // Zero: no timer at all, done on the first poll.
    rig.handle.set(Duration::ZERO);
    assert_eq!(rig.handle.get(), Duration::ZERO);
    let mut fast = pin!(rig.disk.write(rig.sg(0, false), 0, IoOptions::default()));
    assert_eq!(rig.poll(fast.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(rig.timer.requested(), [10 * MS]);

    // A longer delay applies to the next request; the one already waiting
    // keeps its own.
    rig.handle.set(30 * MS);
    let mut slow = pin!(rig.disk.read(rig.sg(1, true), 0, IoOptions::default()));
    assert!(rig.poll(slow.as_mut()).is_pending());
    assert_eq!(rig.timer.requested(), [10 * MS, 30 * MS]);
    rig.timer.advance(10 * MS);
    assert_eq!(rig.poll(first.as_mut()), Poll::Ready(Ok(())));
    assert!(rig.poll(slow.as_mut()).is_pending());
    rig.timer.advance(20 * MS);
    assert_eq!(rig.poll(slow.as_mut()), Poll::Ready(Ok(())));

    // Clones of the handle share the delay; huge delays saturate.
    let clone = rig.handle.clone();
    clone.set(Duration::MAX);
    assert_eq!(rig.handle.get(), Duration::from_nanos(u64::MAX));
}

#[test]
fn delayed_layer_under_a_layered_disk() {
    let rig = Rig::new(5 * MS);
    // A RAM layer over the delayed disk: writes land in the RAM layer at
    // once; reads of sectors the RAM layer lacks wait for the delayed layer.
    let layered = LayeredDisk::new(
        false,
        vec![
            LayerConfig::new(LayerSource::Ram {
                len_bytes: None,
                sector_size: None,
            }),
            LayerConfig::new(LayerSource::Disk(rig.disk.clone())),
        ],
    )
    .unwrap();
    let top = Disk::new(layered).unwrap();
    assert!(!top.completes_inline());

    let mut write = pin!(top.write(rig.sg(0, false), 0, IoOptions::default()));
    assert_eq!(rig.poll(write.as_mut()), Poll::Ready(Ok(())));
    let mut cached = pin!(top.read(rig.sg(1, true), 0, IoOptions::default()));
    assert_eq!(rig.poll(cached.as_mut()), Poll::Ready(Ok(())));
    assert!(rig.timer.requested().is_empty());

    let mut below = pin!(top.read(rig.sg(2, true), 1, IoOptions::default()));
    assert!(rig.poll(below.as_mut()).is_pending());
    assert_eq!(rig.timer.requested(), [5 * MS]);
    rig.timer.advance(5 * MS);
    assert_eq!(rig.poll(below.as_mut()), Poll::Ready(Ok(())));
}

#[test]
fn futures_fit_the_inline_budget() {
    let ram = Disk::new(RamDisk::new(1 << 20, 512).unwrap()).unwrap();
    let timer: Arc<dyn Timer> = Arc::new(ManualTimer::default());
    let disk = DelayDisk::new(ram, DelayHandle::default(), timer);
    let mem = RamGuestMemory::new(4096);
    let r = [GpaRange::new(Gpa::new(0), 4096)];
    let sg = SgList::new(&mem, &r, true).unwrap();
    let o = IoOptions::default();
    let sizes = [
        size_of_val(&DiskIo::read(&disk, sg, 0, o)),
        size_of_val(&DiskIo::write(&disk, sg, 0, o)),
    ];
    assert!(sizes.iter().all(|&s| s <= IO_FUTURE_BYTES), "{sizes:?}");
    // With a zero delay the disk still answers on the first poll.
    block_on(DiskIo::read(&disk, sg, 0, o)).unwrap();
}
