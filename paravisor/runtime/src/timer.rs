//! Timers: each runtime thread keeps a deadline heap over a slab of
//! wakers, and its loop arms one timerfd to the earliest deadline.
//!
//! A [`Sleep`] registers on the thread it is first polled on. Once the slab
//! and heap have grown to the number of concurrent sleeps, a sleep
//! allocates nothing. A sleep dropped before its deadline leaves its slot
//! at once (and its heap entry is skipped when reached, or swept when
//! stale entries outnumber live ones).

use crate::fallback;
use crate::thread::with_running;
use parastor_core::Timer;
use parastor_core::disk::BoxFuture;
use slab::Slab;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// One pending sleep.
struct Slot {
    generation: u64,
    waker: Option<Waker>,
}

/// A runtime thread's pending sleeps.
#[derive(Default)]
pub(crate) struct Timers {
    slots: Slab<Slot>,
    /// `(deadline, generation, key)`: equal deadlines fire in registration
    /// order.
    heap: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    next_generation: u64,
}

impl Timers {
    fn live(slots: &Slab<Slot>, generation: u64, key: usize) -> bool {
        slots.get(key).is_some_and(|s| s.generation == generation)
    }

    /// Registers a sleep until `deadline`.
    fn insert(&mut self, deadline: Instant, waker: &Waker) -> (usize, u64) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let key = self.slots.insert(Slot {
            generation,
            waker: Some(waker.clone()),
        });
        self.heap.push(Reverse((deadline, generation, key)));
        (key, generation)
    }

    /// Updates a pending sleep's waker; false if it has fired.
    fn poll(&mut self, key: usize, generation: u64, waker: &Waker) -> bool {
        match self.slots.get_mut(key) {
            Some(slot) if slot.generation == generation => {
                match &slot.waker {
                    Some(w) if w.will_wake(waker) => {}
                    _ => slot.waker = Some(waker.clone()),
                }
                true
            }
            _ => false,
        }
    }

    /// Forgets a pending sleep.
    fn cancel(&mut self, key: usize, generation: u64) {
        if Self::live(&self.slots, generation, key) {
            self.slots.remove(key);
        }
        // Sweep entries of dropped sleeps once they dominate the heap, so
        // sleeps dropped long before their deadline cannot grow it without
        // bound. `retain` keeps the heap's buffer.
        if self.heap.len() > 64 && self.heap.len() > 2 * self.slots.len() {
            let slots = &self.slots;
            self.heap
                .retain(|Reverse((_, g, k))| Self::live(slots, *g, *k));
        }
    }

    /// Fires the next sleep due by `now`: `Some(waker)` for one that was
    /// pending (its waker, if any), `None` when nothing more is due.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Option<Waker>> {
        while let Some(&Reverse((deadline, generation, key))) = self.heap.peek() {
            if deadline > now {
                return None;
            }
            self.heap.pop();
            if Self::live(&self.slots, generation, key) {
                return Some(self.slots.remove(key).waker);
            }
        }
        None
    }

    /// The earliest pending deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((deadline, generation, key))) = self.heap.peek() {
            if Self::live(&self.slots, generation, key) {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    /// Pending sleeps (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

/// Where a [`Sleep`] is registered.
#[derive(Debug)]
enum State {
    /// Not polled yet.
    Idle,
    /// In the heap of the runtime thread with this id.
    Runtime {
        thread: u64,
        key: usize,
        generation: u64,
    },
    /// Polled outside a runtime loop: on the process-wide timer thread.
    Fallback(fallback::Sleep),
    Done,
}

/// A future that completes at a deadline; see [`sleep`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Sleep {
    deadline: Instant,
    state: State,
}

/// A future that completes once `duration` has passed.
///
/// On a runtime thread (inside [`crate::block_on`] or a spawned task) it
/// waits in that thread's timer heap. Polled anywhere else (another
/// executor), it falls back to one process-wide timer thread, so it still
/// completes.
pub fn sleep(duration: Duration) -> Sleep {
    let now = Instant::now();
    // A duration too long to represent sleeps "forever" (~136 years).
    let deadline = now
        .checked_add(duration)
        .unwrap_or_else(|| now + Duration::from_secs(u32::MAX.into()));
    sleep_until(deadline)
}

/// A future that completes at `deadline` (at once if it has passed).
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        state: State::Idle,
    }
}

impl Sleep {
    /// When the sleep completes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Registers on the current thread, or on the fallback timer.
    fn register(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.state = State::Done;
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        self.state = match with_running(|l| {
            let (key, generation) = l.timers.borrow_mut().insert(deadline, cx.waker());
            (l.shared.id, key, generation)
        }) {
            Some((thread, key, generation)) => State::Runtime {
                thread,
                key,
                generation,
            },
            None => {
                let mut s = fallback::Sleep::new(deadline);
                if s.poll(cx).is_ready() {
                    self.state = State::Done;
                    return Poll::Ready(());
                }
                State::Fallback(s)
            }
        };
        Poll::Pending
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match &mut this.state {
            State::Done => Poll::Ready(()),
            State::Idle => this.register(cx),
            State::Fallback(s) => {
                let ready = s.poll(cx);
                if ready.is_ready() {
                    this.state = State::Done;
                }
                ready
            }
            &mut State::Runtime {
                thread,
                key,
                generation,
            } => {
                let pending = with_running(|l| {
                    (l.shared.id == thread)
                        .then(|| l.timers.borrow_mut().poll(key, generation, cx.waker()))
                })
                .flatten();
                match pending {
                    Some(true) => Poll::Pending,
                    Some(false) => {
                        this.state = State::Done;
                        Poll::Ready(())
                    }
                    // Polled away from the thread it registered on (only a
                    // future outside a task can move): register again here;
                    // the old entry fires harmlessly at the deadline.
                    None => this.register(cx),
                }
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let State::Runtime {
            thread,
            key,
            generation,
        } = self.state
        {
            with_running(|l| {
                if l.shared.id == thread {
                    l.timers.borrow_mut().cancel(key, generation);
                }
            });
        }
    }
}

/// parastor-core's [`Timer`] on the runtime's timers: a delay decorator's
/// sleeps wait in the heap of the thread that runs the I/O (or on the
/// fallback timer thread when polled outside a runtime). Stateless; the
/// only allocation per sleep is the box the `Timer` trait returns.
#[derive(Clone, Copy, Debug, Default)]
pub struct RuntimeTimer;

impl Timer for RuntimeTimer {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(sleep(duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waker() -> Waker {
        Waker::noop().clone()
    }

    #[test]
    fn equal_deadlines_fire_in_registration_order_and_cancelled_ones_never() {
        let mut t = Timers::default();
        let now = Instant::now();
        let at = now + Duration::from_millis(5);
        let a = t.insert(at, &waker());
        let b = t.insert(at, &waker());
        let c = t.insert(now + Duration::from_millis(1), &waker());
        t.cancel(b.0, b.1);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(1)));
        assert!(t.pop_due(now).is_none(), "nothing is due yet");
        assert!(t.pop_due(at).is_some());
        assert!(!t.poll(c.0, c.1, &waker()), "c fired first");
        assert!(t.poll(a.0, a.1, &waker()), "a still pending");
        assert!(t.pop_due(at).is_some());
        assert!(!t.poll(a.0, a.1, &waker()), "a fired");
        assert!(t.pop_due(at).is_none(), "b was cancelled");
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_reused_slot_does_not_answer_for_its_old_sleep() {
        let mut t = Timers::default();
        let now = Instant::now();
        let old = t.insert(now, &waker());
        assert!(t.pop_due(now).is_some());
        let new = t.insert(now + Duration::from_secs(9), &waker());
        assert_eq!(old.0, new.0, "the slab reuses the key");
        assert!(!t.poll(old.0, old.1, &waker()), "the old sleep has fired");
        t.cancel(old.0, old.1);
        assert!(
            t.poll(new.0, new.1, &waker()),
            "cancelling the old one left the new one"
        );
    }

    #[test]
    fn dropped_sleeps_do_not_grow_the_heap_without_bound() {
        let mut t = Timers::default();
        let far = Instant::now() + Duration::from_secs(3600);
        for _ in 0..10_000 {
            let (k, g) = t.insert(far, &waker());
            t.cancel(k, g);
        }
        assert!(
            t.heap.len() <= 130,
            "heap holds {} stale entries",
            t.heap.len()
        );
    }
}
