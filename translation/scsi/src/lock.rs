//! An async LBA range lock: COMPARE AND WRITE holds its range exclusively,
//! writes hold theirs shared.
//!
//! Requests whose ranges do not overlap never wait for each other, nor do
//! two shared requests. A request that must wait leaves its waker in a
//! queue and is woken when something that blocked it goes away (a holder
//! drops its guard, an earlier waiter gives up); it is not polled in a
//! loop. Waiting is first come, first served among conflicting requests:
//! a new shared request also waits behind an earlier exclusive waiter it
//! overlaps, so a stream of writes cannot starve a COMPARE AND WRITE.
//!
//! Holders live in a slab whose slots are reused, so once the slab has
//! grown to the highest number of concurrent holders the uncontended path
//! is one mutex lock and unlock each way, with no allocation. Dropping a
//! waiting [`Acquire`] future withdraws it from the queue.

use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use parastor_core::sync::Mutex;

/// Holder slots allocated up front.
const INITIAL_SLOTS: usize = 16;

/// A half-open LBA range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    start: u64,
    end: u64,
}

impl Range {
    /// Whether the ranges share a block (an empty range shares none).
    fn overlaps(self, other: Range) -> bool {
        self.start < self.end
            && other.start < other.end
            && self.start < other.end
            && other.start < self.end
    }
}

#[derive(Clone, Copy, Debug)]
struct Held {
    range: Range,
    exclusive: bool,
}

impl Held {
    /// Whether a request for `range` (`exclusive` or not) must wait for
    /// this one.
    fn blocks(&self, range: Range, exclusive: bool) -> bool {
        (exclusive || self.exclusive) && self.range.overlaps(range)
    }
}

struct Waiter {
    /// Arrival order: a request waits only for earlier waiters.
    ticket: u64,
    held: Held,
    /// Taken when the waiter is woken, so it is woken once per wait.
    waker: Option<Waker>,
}

#[derive(Default)]
struct Inner {
    slots: Vec<Option<Held>>,
    free: Vec<usize>,
    /// Holders with `exclusive` set.
    exclusive_holders: usize,
    waiters: Vec<Waiter>,
    next_ticket: u64,
}

impl Inner {
    /// Whether a request (with `ticket`, if it is already queued) for
    /// `range` can be granted now.
    fn can_grant(&self, range: Range, exclusive: bool, ticket: Option<u64>) -> bool {
        if (exclusive || self.exclusive_holders != 0)
            && self
                .slots
                .iter()
                .flatten()
                .any(|h| h.blocks(range, exclusive))
        {
            return false;
        }
        !self
            .waiters
            .iter()
            .take_while(|w| ticket.is_none_or(|t| w.ticket < t))
            .any(|w| w.held.blocks(range, exclusive))
    }

    fn insert(&mut self, held: Held) -> usize {
        if held.exclusive {
            self.exclusive_holders += 1;
        }
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(held);
                i
            }
            None => {
                self.slots.push(Some(held));
                self.slots.len() - 1
            }
        }
    }

    /// Takes the wakers of the waiters queued after `after` (all, if
    /// `None`) that `gone` — a released holder or a withdrawn waiter — may
    /// have been blocking. Allocates only if there is one.
    fn blocked_by(&mut self, gone: Held, after: Option<u64>) -> Vec<Waker> {
        self.waiters
            .iter_mut()
            .filter(|w| after.is_none_or(|t| w.ticket > t))
            .filter(|w| gone.blocks(w.held.range, w.held.exclusive))
            .filter_map(|w| w.waker.take())
            .collect()
    }
}

/// An async reader-writer lock over LBA ranges.
pub(crate) struct RangeLock {
    inner: Mutex<Inner>,
}

impl Default for RangeLock {
    fn default() -> Self {
        RangeLock {
            inner: Mutex::new(Inner {
                slots: Vec::with_capacity(INITIAL_SLOTS),
                free: Vec::with_capacity(INITIAL_SLOTS),
                ..Inner::default()
            }),
        }
    }
}

impl RangeLock {
    /// Locks `blocks` blocks from `lba` shared (writes).
    pub(crate) fn shared(&self, lba: u64, blocks: u64) -> Acquire<'_> {
        self.acquire(lba, blocks, false)
    }

    /// Locks `blocks` blocks from `lba` exclusively (COMPARE AND WRITE).
    pub(crate) fn exclusive(&self, lba: u64, blocks: u64) -> Acquire<'_> {
        self.acquire(lba, blocks, true)
    }

    /// Locks `blocks` blocks from `lba` shared if that needs no wait
    /// (nothing conflicting held or queued); `None` otherwise, with
    /// nothing queued.
    pub(crate) fn try_shared(&self, lba: u64, blocks: u64) -> Option<RangeGuard<'_>> {
        let held = Held {
            range: Range {
                start: lba,
                end: lba.saturating_add(blocks),
            },
            exclusive: false,
        };
        let mut inner = self.inner.lock();
        if !inner.can_grant(held.range, false, None) {
            return None;
        }
        let slot = inner.insert(held);
        Some(RangeGuard { lock: self, slot })
    }

    fn acquire(&self, lba: u64, blocks: u64, exclusive: bool) -> Acquire<'_> {
        Acquire {
            lock: self,
            held: Held {
                range: Range {
                    start: lba,
                    end: lba.saturating_add(blocks),
                },
                exclusive,
            },
            ticket: None,
        }
    }

    /// Ranges held and requests waiting, now: `(0, 0)` when no command
    /// holds or waits for a range (what a save after a drain requires).
    pub(crate) fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        let held = inner.slots.iter().filter(|s| s.is_some()).count();
        (held, inner.waiters.len())
    }

    /// Number of requests waiting (for tests).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.inner.lock().waiters.len()
    }
}

/// The future of [`RangeLock::shared`] / [`RangeLock::exclusive`]; yields
/// a [`RangeGuard`]. Dropping it while it waits withdraws the request.
#[must_use = "futures do nothing unless polled"]
pub(crate) struct Acquire<'a> {
    lock: &'a RangeLock,
    held: Held,
    /// Set while queued.
    ticket: Option<u64>,
}

impl<'a> Future for Acquire<'a> {
    type Output = RangeGuard<'a>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RangeGuard<'a>> {
        let this = &mut *self;
        let mut inner = this.lock.inner.lock();
        let (range, exclusive) = (this.held.range, this.held.exclusive);
        if inner.can_grant(range, exclusive, this.ticket) {
            if let Some(t) = this.ticket.take() {
                inner.waiters.retain(|w| w.ticket != t);
            }
            let slot = inner.insert(this.held);
            return Poll::Ready(RangeGuard {
                lock: this.lock,
                slot,
            });
        }
        match this.ticket {
            Some(t) => {
                if let Some(w) = inner.waiters.iter_mut().find(|w| w.ticket == t) {
                    match &mut w.waker {
                        Some(old) if old.will_wake(cx.waker()) => {}
                        slot => *slot = Some(cx.waker().clone()),
                    }
                }
            }
            None => {
                let ticket = inner.next_ticket;
                inner.next_ticket += 1;
                inner.waiters.push(Waiter {
                    ticket,
                    held: this.held,
                    waker: Some(cx.waker().clone()),
                });
                this.ticket = Some(ticket);
            }
        }
        Poll::Pending
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            let wakers = {
                let mut inner = self.lock.inner.lock();
                inner.waiters.retain(|w| w.ticket != t);
                // Later waiters may have queued behind this one.
                inner.blocked_by(self.held, Some(t))
            };
            // Woken outside the lock: a waker may poll in place.
            wakers.into_iter().for_each(Waker::wake);
        }
    }
}

/// A held range; released on drop.
pub(crate) struct RangeGuard<'a> {
    lock: &'a RangeLock,
    slot: usize,
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let wakers = {
            let mut inner = self.lock.inner.lock();
            let Some(held) = inner.slots.get_mut(self.slot).and_then(Option::take) else {
                return;
            };
            inner.free.push(self.slot);
            if held.exclusive {
                inner.exclusive_holders -= 1;
            }
            if inner.waiters.is_empty() {
                return;
            }
            inner.blocked_by(held, None)
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::sync::Arc;
    use alloc::task::Wake;
    use core::pin::pin;
    use core::sync::atomic::{AtomicUsize, Ordering};

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter::default());
        (c.clone(), Waker::from(c))
    }

    fn wakes(c: &Counter) -> usize {
        c.0.load(Ordering::SeqCst)
    }

    /// Polls once with `waker`.
    fn poll<'a>(f: Pin<&mut Acquire<'a>>, waker: &Waker) -> Poll<RangeGuard<'a>> {
        f.poll(&mut Context::from_waker(waker))
    }

    /// Acquires without waiting (panics if it would wait: tests only).
    fn now(f: Acquire<'_>) -> RangeGuard<'_> {
        let (_, w) = counter();
        match poll(pin!(f), &w) {
            Poll::Ready(g) => g,
            Poll::Pending => panic!("would wait"),
        }
    }

    #[test]
    fn non_overlapping_and_shared_never_wait() {
        let l = RangeLock::default();
        let _x = now(l.exclusive(0, 10));
        let _a = now(l.shared(10, 10));
        let _b = now(l.shared(10, 10));
        let _c = now(l.shared(15, 1));
        let _y = now(l.exclusive(20, 5));
        let _z = now(l.exclusive(u64::MAX - 1, 5));
        // Empty ranges overlap nothing.
        let _e = now(l.exclusive(5, 0));
        assert_eq!(l.waiting(), 0);
    }

    #[test]
    fn blocked_waiter_is_woken_once_on_release() {
        let l = RangeLock::default();
        let x = now(l.exclusive(0, 8));
        let (count, waker) = counter();
        let mut w = pin!(l.shared(7, 4));
        for _ in 0..5 {
            assert!(poll(w.as_mut(), &waker).is_pending());
        }
        // Pending polls do not wake it: no spinning.
        assert_eq!(wakes(&count), 0);
        // Unrelated traffic does not wake it either.
        drop(now(l.shared(100, 1)));
        drop(now(l.exclusive(50, 1)));
        assert_eq!(wakes(&count), 0);
        drop(x);
        assert_eq!(wakes(&count), 1);
        assert!(poll(w.as_mut(), &waker).is_ready());
        assert_eq!(wakes(&count), 1);
        assert_eq!(l.waiting(), 0);
    }

    #[test]
    fn exclusive_waits_for_every_overlapping_holder() {
        let l = RangeLock::default();
        let a = now(l.shared(0, 4));
        let b = now(l.shared(2, 4));
        let (count, waker) = counter();
        let mut caw = pin!(l.exclusive(3, 1));
        assert!(poll(caw.as_mut(), &waker).is_pending());
        drop(a);
        assert_eq!(wakes(&count), 1);
        assert!(poll(caw.as_mut(), &waker).is_pending());
        drop(b);
        assert_eq!(wakes(&count), 2);
        let g = match poll(caw.as_mut(), &waker) {
            Poll::Ready(g) => g,
            Poll::Pending => panic!("still blocked"),
        };
        // While it holds the range, an overlapping write waits.
        let (wc, ww) = counter();
        let mut write = pin!(l.shared(3, 1));
        assert!(poll(write.as_mut(), &ww).is_pending());
        drop(g);
        assert_eq!(wakes(&wc), 1);
        assert!(poll(write.as_mut(), &ww).is_ready());
    }

    #[test]
    fn writes_queue_behind_a_waiting_compare_and_write() {
        let l = RangeLock::default();
        let a = now(l.shared(0, 4));
        let (cc, cw) = counter();
        let mut caw = pin!(l.exclusive(0, 1));
        assert!(poll(caw.as_mut(), &cw).is_pending());
        // A later overlapping write waits for the queued COMPARE AND WRITE;
        // a later write elsewhere does not.
        let (sc, sw) = counter();
        let mut write = pin!(l.shared(0, 2));
        assert!(poll(write.as_mut(), &sw).is_pending());
        drop(now(l.shared(2, 2)));
        drop(a);
        assert_eq!((wakes(&cc), wakes(&sc)), (1, 0));
        let g = match poll(caw.as_mut(), &cw) {
            Poll::Ready(g) => g,
            Poll::Pending => panic!("still blocked"),
        };
        assert!(poll(write.as_mut(), &sw).is_pending());
        drop(g);
        assert_eq!(wakes(&sc), 1);
        assert!(poll(write.as_mut(), &sw).is_ready());
    }

    #[test]
    fn dropped_waiter_is_withdrawn_and_unblocks_those_behind_it() {
        let l = RangeLock::default();
        let a = now(l.shared(0, 4));
        let (_, cw) = counter();
        let mut caw = alloc::boxed::Box::pin(l.exclusive(1, 1));
        assert!(poll(caw.as_mut(), &cw).is_pending());
        let (sc, sw) = counter();
        let mut write = pin!(l.shared(1, 1));
        assert!(poll(write.as_mut(), &sw).is_pending());
        assert_eq!(l.waiting(), 2);
        // Cancelling the COMPARE AND WRITE wakes the write queued behind
        // it, which now only shares with the holder.
        drop(caw);
        assert_eq!(l.waiting(), 1);
        assert_eq!(wakes(&sc), 1);
        let g = match poll(write.as_mut(), &sw) {
            Poll::Ready(g) => g,
            Poll::Pending => panic!("still blocked"),
        };
        assert_eq!(l.waiting(), 0);
        drop((a, g));
        // Nothing leaked: the whole range can be taken exclusively.
        drop(now(l.exclusive(0, u64::MAX)));
    }

    #[test]
    fn holder_slots_are_reused() {
        let l = RangeLock::default();
        for i in 0..1000 {
            let a = now(l.shared(i, 1));
            let b = now(l.exclusive(i + 1, 1));
            drop((a, b));
        }
        let inner = l.inner.lock();
        assert_eq!(inner.slots.len(), 2);
        assert!(inner.slots.capacity() <= INITIAL_SLOTS);
        assert_eq!(inner.exclusive_holders, 0);
    }
}
