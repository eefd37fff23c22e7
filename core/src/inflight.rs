//! The in-flight table: what a backend keeps for each operation a device
//! or the kernel has not completed yet.
//!
//! A backend that hands a buffer's addresses to someone else (NVMe DMA,
//! io_uring, a test double that answers later) reserves a slot for the
//! operation with its *record* — the pins or bounce buffer, a handle on
//! the guest memory, whatever must live until the device is done — and
//! sends the slot's [`Tag`] along (io_uring `user_data`, an NVMe command
//! identifier). The reaper hands the completion back with
//! [`InFlight::complete`], which validates the tag: completions come from
//! a device and are hostile, so an unknown, stale or repeated tag is a
//! [`BadTag`] error, never a panic or a wrong slot.
//!
//! The submitter awaits the slot's [`Completion`]. Dropping it *detaches*
//! the operation (the [`DiskIo`](crate::DiskIo) drop contract): the slot
//! and its record stay until the completion arrives, and only then is the
//! record dropped and the slot reused.
//!
//! Slots and the free list are allocated once, with the table; reserving
//! and completing allocate nothing. A full table is back-pressure:
//! [`InFlight::reserve`] waits for a slot.

use crate::sync::{Mutex, MutexGuard};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use futures_util::task::AtomicWaker;

/// Names one operation in an [`InFlight`] table: a slot index and the
/// slot's generation when the operation was reserved. It travels through
/// the device and comes back with the completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tag {
    index: u16,
    generation: u16,
}

impl Tag {
    /// The slot index.
    pub const fn index(self) -> u16 {
        self.index
    }

    /// The slot's generation: it changes each time the slot is reused, so
    /// a tag from an earlier use of the slot no longer matches.
    pub const fn generation(self) -> u16 {
        self.generation
    }

    /// The tag as 32 bits (generation high, index low), to send to a
    /// device.
    pub const fn to_bits(self) -> u32 {
        ((self.generation as u32) << 16) | self.index as u32
    }

    /// The tag a device sent back. Any value is accepted here;
    /// [`InFlight::complete`] decides whether it names an operation.
    pub const fn from_bits(bits: u32) -> Self {
        Self {
            index: bits as u16,
            generation: (bits >> 16) as u16,
        }
    }
}

/// Why a completion's tag was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadTagKind {
    /// The index is past the end of the table.
    UnknownIndex,
    /// The slot is in use by a later operation (the tag's generation is
    /// not the slot's).
    Stale,
    /// The slot holds no operation waiting for a completion (it is free,
    /// or this operation already completed).
    NotInFlight,
}

/// A completion named a tag that is not an operation in flight — a device
/// failure, answered by the backend (typically by resetting the device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadTag {
    /// The tag as received.
    pub tag: Tag,
    /// What was wrong with it.
    pub kind: BadTagKind,
}

impl fmt::Display for BadTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            BadTagKind::UnknownIndex => "its slot index is past the end of the in-flight table",
            BadTagKind::Stale => "its generation is not the slot's current one (a stale tag)",
            BadTagKind::NotInFlight => "its slot has no operation waiting for a completion",
        };
        write!(
            f,
            "completion for tag {:#010x} (slot {}, generation {}) refused: {what}",
            self.tag.to_bits(),
            self.tag.index,
            self.tag.generation
        )
    }
}

impl core::error::Error for BadTag {}

/// Where a slot's operation is.
enum Phase<R, T> {
    /// No operation.
    Free,
    /// At the device; the submitter's [`Completion`] waits for it.
    Submitted(R),
    /// At the device; the submitter dropped its [`Completion`].
    Detached(R),
    /// Completed; the result waits for the submitter.
    Done(R, T),
}

struct SlotState<R, T> {
    generation: u16,
    phase: Phase<R, T>,
    /// The submitter's task, while it waits.
    waker: Option<Waker>,
}

/// A fixed-size table of operations in flight, each with a record `R`
/// (kept until the operation completes) and a result `T` (the
/// completion's).
///
/// Share it between the submitter and the reaper (`&InFlight` or an
/// `Arc`). One task reserves at a time (a queue's submitting worker): the
/// wait for a free slot remembers one waker.
pub struct InFlight<R, T> {
    /// The submitter and the reaper (often other threads) lock these:
    /// [`crate::sync`] locks, so neither spins on a preempted holder.
    slots: Box<[Mutex<SlotState<R, T>>]>,
    /// Free slot indices; capacity for all of them is allocated up front.
    free: Mutex<Vec<u16>>,
    /// The task waiting for a free slot.
    space: AtomicWaker,
}

impl<R, T> fmt::Debug for InFlight<R, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("capacity", &self.capacity())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl<R, T> InFlight<R, T> {
    /// A table of `capacity` slots (at least one), all free.
    pub fn new(capacity: u16) -> Self {
        let capacity = capacity.max(1);
        let slots = (0..capacity)
            .map(|_| {
                Mutex::new(SlotState {
                    generation: 0,
                    phase: Phase::Free,
                    waker: None,
                })
            })
            .collect();
        // Popped from the end: slot 0 is handed out first.
        let free = (0..capacity).rev().collect();
        Self {
            slots,
            free: Mutex::new(free),
            space: AtomicWaker::new(),
        }
    }

    /// How many slots the table has.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// How many slots are in use (operations at the device, detached ones
    /// included, and results not yet collected).
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.lock().len()
    }

    /// Reserves a slot for an operation with `record`, if one is free;
    /// else gives `record` back. The operation is then in flight: send
    /// [`Completion::tag`] to the device and await the [`Completion`].
    pub fn try_reserve(&self, record: R) -> Result<Completion<'_, R, T>, R> {
        let Some(index) = self.free.lock().pop() else {
            return Err(record);
        };
        let mut slot = self.slots[usize::from(index)].lock();
        slot.phase = Phase::Submitted(record);
        slot.waker = None;
        let tag = Tag {
            index,
            generation: slot.generation,
        };
        Ok(Completion {
            table: self,
            tag,
            finished: false,
        })
    }

    /// Reserves a slot for an operation with `record`, waiting while the
    /// table is full.
    pub fn reserve(&self, record: R) -> Reserve<'_, R, T> {
        Reserve {
            table: self,
            record: Some(record),
        }
    }

    /// Runs `f` on the record of the operation `tag` names while it is at
    /// the device (also when detached): the reaper's access to pins,
    /// bounce buffers and memory before it completes the operation.
    pub fn with_record<U>(&self, tag: Tag, f: impl FnOnce(&mut R) -> U) -> Result<U, BadTag> {
        let mut slot = self.slot(tag)?;
        match &mut slot.phase {
            Phase::Submitted(record) | Phase::Detached(record) => Ok(f(record)),
            Phase::Free | Phase::Done(..) => Err(BadTag {
                tag,
                kind: BadTagKind::NotInFlight,
            }),
        }
    }

    /// Completes the operation `tag` names with `result`. The submitter's
    /// [`Completion`] then returns the record and the result; if it was
    /// dropped (detached), the record is dropped now and the slot freed.
    ///
    /// `tag` comes from a device: an index past the table, a stale
    /// generation or an operation not in flight (a second completion) is
    /// refused with [`BadTag`] and changes nothing.
    pub fn complete(&self, tag: Tag, result: T) -> Result<(), BadTag> {
        let mut slot = self.slot(tag)?;
        match core::mem::replace(&mut slot.phase, Phase::Free) {
            Phase::Submitted(record) => {
                slot.phase = Phase::Done(record, result);
                let waker = slot.waker.take();
                drop(slot);
                if let Some(w) = waker {
                    w.wake();
                }
                Ok(())
            }
            Phase::Detached(record) => {
                self.release(tag.index, slot);
                // Pins, bounce buffers and memory handles go now, outside
                // the slot's lock.
                drop(record);
                drop(result);
                Ok(())
            }
            phase => {
                slot.phase = phase;
                Err(BadTag {
                    tag,
                    kind: BadTagKind::NotInFlight,
                })
            }
        }
    }

    /// The slot `tag` names, locked, if its generation matches.
    fn slot(&self, tag: Tag) -> Result<MutexGuard<'_, SlotState<R, T>>, BadTag> {
        let slot = self
            .slots
            .get(usize::from(tag.index))
            .ok_or(BadTag {
                tag,
                kind: BadTagKind::UnknownIndex,
            })?
            .lock();
        if slot.generation != tag.generation {
            return Err(BadTag {
                tag,
                kind: BadTagKind::Stale,
            });
        }
        Ok(slot)
    }

    /// Frees the slot at `index` (its phase already `Free`): a new
    /// generation, back on the free list, and the waiting reserver woken.
    fn release(&self, index: u16, mut slot: MutexGuard<'_, SlotState<R, T>>) {
        slot.generation = slot.generation.wrapping_add(1);
        slot.waker = None;
        drop(slot);
        // Never grows: an index is on the list at most once.
        self.free.lock().push(index);
        self.space.wake();
    }
}

/// The future returned by [`InFlight::reserve`].
#[must_use = "futures do nothing unless polled"]
pub struct Reserve<'t, R, T> {
    table: &'t InFlight<R, T>,
    record: Option<R>,
}

impl<R, T> fmt::Debug for Reserve<'_, R, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reserve").finish_non_exhaustive()
    }
}

impl<R, T> Unpin for Reserve<'_, R, T> {}

impl<'t, R, T> Future for Reserve<'t, R, T> {
    type Output = Completion<'t, R, T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let table = self.table;
        let Some(record) = self.record.take() else {
            // Polled after it returned its slot: stays pending for good.
            return Poll::Pending;
        };
        let record = match table.try_reserve(record) {
            Ok(c) => return Poll::Ready(c),
            Err(record) => record,
        };
        table.space.register(cx.waker());
        // A slot freed before the registration woke nobody: look again.
        match table.try_reserve(record) {
            Ok(c) => Poll::Ready(c),
            Err(record) => {
                self.record = Some(record);
                Poll::Pending
            }
        }
    }
}

/// An operation in flight in an [`InFlight`] table: resolves to its record
/// and result once [`InFlight::complete`] is called with its tag.
///
/// Dropping it before then detaches the operation: the slot and the
/// record stay until the completion arrives (the device may still use
/// what the record holds).
#[must_use = "dropping a Completion detaches its operation"]
pub struct Completion<'t, R, T> {
    table: &'t InFlight<R, T>,
    tag: Tag,
    /// The result was returned and the slot freed.
    finished: bool,
}

impl<R, T> fmt::Debug for Completion<'_, R, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("tag", &self.tag)
            .field("finished", &self.finished)
            .finish()
    }
}

impl<R, T> Completion<'_, R, T> {
    /// The tag to send with the operation.
    pub fn tag(&self) -> Tag {
        self.tag
    }
}

impl<R, T> Unpin for Completion<'_, R, T> {}

impl<R, T> Future for Completion<'_, R, T> {
    type Output = (R, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(R, T)> {
        if self.finished {
            return Poll::Pending;
        }
        let table = self.table;
        let tag = self.tag;
        let Ok(mut slot) = table.slot(tag) else {
            // The slot moved on without us: cannot happen while this
            // future is alive (only it frees a submitted slot).
            return Poll::Pending;
        };
        match core::mem::replace(&mut slot.phase, Phase::Free) {
            Phase::Done(record, result) => {
                table.release(tag.index, slot);
                self.finished = true;
                Poll::Ready((record, result))
            }
            phase => {
                slot.phase = phase;
                if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    slot.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl<R, T> Drop for Completion<'_, R, T> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Ok(mut slot) = self.table.slot(self.tag) else {
            return;
        };
        match core::mem::replace(&mut slot.phase, Phase::Free) {
            Phase::Submitted(record) => slot.phase = Phase::Detached(record),
            Phase::Done(record, result) => {
                // Completed but never collected: nothing at the device any
                // more, so the slot goes now.
                self.table.release(self.tag.index, slot);
                drop(record);
                drop(result);
            }
            phase => slot.phase = phase,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::sync::Arc;
    use core::sync::atomic::{AtomicUsize, Ordering};
    use futures::task::noop_waker_ref;

    /// A record that counts its drops (standing for pins / memory held).
    struct Held(Arc<AtomicUsize>);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(noop_waker_ref()))
    }

    #[test]
    fn completes_with_record_and_result() {
        let table = InFlight::<u32, i64>::new(4);
        let mut c = table.try_reserve(7).ok().unwrap();
        assert!(poll(&mut c).is_pending());
        assert_eq!(table.with_record(c.tag(), |r| *r), Ok(7));
        table.complete(c.tag(), -5).unwrap();
        assert_eq!(poll(&mut c), Poll::Ready((7, -5)));
        drop(c);
        assert_eq!(table.in_flight(), 0);
    }

    #[test]
    fn hostile_tags_are_refused() {
        let table = InFlight::<u32, u32>::new(2);
        let mut c = table.try_reserve(1).ok().unwrap();
        let tag = c.tag();
        // Past the table.
        let far = Tag::from_bits(u32::from(u16::MAX));
        assert_eq!(
            table.complete(far, 0).unwrap_err().kind,
            BadTagKind::UnknownIndex
        );
        // Right slot, wrong generation.
        let stale = Tag::from_bits(tag.to_bits() ^ (1 << 16));
        assert_eq!(
            table.complete(stale, 0).unwrap_err().kind,
            BadTagKind::Stale
        );
        // A free slot.
        let other = Tag::from_bits(u32::from(1 - tag.index()));
        assert_eq!(
            table.complete(other, 0).unwrap_err().kind,
            BadTagKind::NotInFlight
        );
        // The real completion, then a duplicate.
        table.complete(tag, 3).unwrap();
        let dup = table.complete(tag, 4).unwrap_err();
        assert_eq!(dup.kind, BadTagKind::NotInFlight);
        assert!(dup.to_string().contains("no operation waiting"));
        // The first result stands.
        assert_eq!(poll(&mut c), Poll::Ready((1, 3)));
        // After the slot is reused, the old tag is stale.
        drop(c);
        let mut next = table.try_reserve(2).ok().unwrap();
        assert_eq!(next.tag().index(), tag.index());
        assert_ne!(next.tag(), tag);
        assert_eq!(table.complete(tag, 5).unwrap_err().kind, BadTagKind::Stale);
        assert!(poll(&mut next).is_pending());
    }

    #[test]
    fn detached_record_lives_until_late_completion() {
        let drops = Arc::new(AtomicUsize::new(0));
        let table = InFlight::<Held, ()>::new(1);
        let c = table.try_reserve(Held(drops.clone())).ok().unwrap();
        let tag = c.tag();
        drop(c);
        // Detached: the record (the device's buffer) is still held and the
        // slot still taken.
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        assert_eq!(table.in_flight(), 1);
        assert!(table.try_reserve(Held(drops.clone())).is_err());
        assert_eq!(drops.load(Ordering::SeqCst), 1); // the refused record
        // The device still reaches the record.
        assert_eq!(table.with_record(tag, |_| 1), Ok(1));
        // The late completion frees both.
        table.complete(tag, ()).unwrap();
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        assert_eq!(table.in_flight(), 0);
        assert_eq!(table.complete(tag, ()).unwrap_err().kind, BadTagKind::Stale);
        assert!(table.try_reserve(Held(drops.clone())).is_ok());
    }

    #[test]
    fn done_but_uncollected_is_freed_on_drop() {
        let drops = Arc::new(AtomicUsize::new(0));
        let table = InFlight::<Held, ()>::new(1);
        let c = table.try_reserve(Held(drops.clone())).ok().unwrap();
        table.complete(c.tag(), ()).unwrap();
        drop(c);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(table.in_flight(), 0);
    }

    #[test]
    fn full_table_is_back_pressure() {
        struct Count(AtomicUsize);
        impl alloc::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);

        let table = InFlight::<u8, ()>::new(2);
        let a = table.try_reserve(0).ok().unwrap();
        let b = table.try_reserve(1).ok().unwrap();
        let mut r = table.reserve(2);
        assert!(Pin::new(&mut r).poll(&mut cx).is_pending());
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);
        // A detached operation keeps its slot: still no space.
        let a_tag = a.tag();
        drop(a);
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);
        assert!(Pin::new(&mut r).poll(&mut cx).is_pending());
        // Its completion frees the slot and wakes the reserver.
        table.complete(a_tag, ()).unwrap();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        let Poll::Ready(mut c) = Pin::new(&mut r).poll(&mut cx) else {
            panic!("a slot was free");
        };
        assert_eq!(c.tag().index(), a_tag.index());
        assert_ne!(c.tag(), a_tag);
        table.complete(c.tag(), ()).unwrap();
        assert_eq!(Pin::new(&mut c).poll(&mut cx), Poll::Ready((2, ())));
        drop(b);
    }

    #[test]
    fn tag_bits_round_trip() {
        let t = Tag {
            index: 0x1234,
            generation: 0xabcd,
        };
        assert_eq!(t.to_bits(), 0xabcd_1234);
        assert_eq!(Tag::from_bits(t.to_bits()), t);
    }

    /// CPU time this thread has used, in clock ticks (USER_HZ, 10 ms at
    /// the usual 100): user plus system, from `/proc/thread-self/stat`.
    #[cfg(all(feature = "std", target_os = "linux"))]
    fn thread_cpu_ticks() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("thread stat");
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("stat format") + 1..];
        let fields: alloc::vec::Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> u64 { fields[n - 3].parse().expect("tick count") };
        field(14) + field(15)
    }

    /// Lock-holder preemption: a thread that stops running while it holds
    /// the free list's lock (here: it sleeps) must not make a waiter burn
    /// its CPU time. With `std` the waiter sleeps until the lock is free;
    /// a spin lock would spend the whole hold on the CPU.
    #[cfg(all(feature = "std", target_os = "linux"))]
    #[test]
    fn a_waiter_sleeps_while_a_preempted_holder_keeps_the_lock() {
        use core::sync::atomic::AtomicBool;
        use std::time::Duration;
        let table = Arc::new(InFlight::<(), ()>::new(4));
        let started = Arc::new(AtomicBool::new(false));
        let held = table.free.lock();
        let waiter = {
            let (table, started) = (table.clone(), started.clone());
            std::thread::spawn(move || {
                let before = thread_cpu_ticks();
                started.store(true, Ordering::SeqCst);
                let in_flight = table.in_flight();
                (in_flight, thread_cpu_ticks() - before)
            })
        };
        while !started.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(500));
        drop(held);
        let (in_flight, ticks) = waiter.join().expect("waiter");
        assert_eq!(in_flight, 0, "the waiter got the lock once it was free");
        assert!(
            ticks < 10,
            "the waiter used {ticks} ticks of CPU while the holder kept the lock for 500 ms: it spun instead of sleeping"
        );
    }
}
