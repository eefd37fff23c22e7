//! A resize signal: the sector count of a resizable disk plus the wakers of
//! everyone waiting for it to change.

use crate::sync::Mutex;
use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::{Context, Poll, Waker};

/// The current sector count of a disk, observable with
/// [`ResizeSignal::wait`].
pub struct ResizeSignal {
    count: AtomicU64,
    /// Slots of waiting futures; a future clears its slot when dropped.
    waiters: Mutex<Vec<Option<Waker>>>,
}

impl ResizeSignal {
    /// A signal holding `count`.
    pub fn new(count: u64) -> Self {
        Self {
            count: AtomicU64::new(count),
            waiters: Mutex::new(Vec::new()),
        }
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Sets the count and wakes every waiter.
    pub fn set(&self, count: u64) {
        self.store(count);
        self.wake_all();
    }

    /// Sets the count without waking anyone: for callers that must update
    /// it under their own lock and wake after releasing it
    /// ([`ResizeSignal::wake_all`]).
    pub fn store(&self, count: u64) {
        self.count.store(count, Ordering::Release);
    }

    /// Wakes every waiter. Slots stay owned by their futures (a future frees
    /// its slot when dropped), so a slot is never handed to a new waiter
    /// while an old one may still clear it.
    pub fn wake_all(&self) {
        let wakers: Vec<Waker> = self.waiters.lock().iter().flatten().cloned().collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Completes with the count once it differs from `known`.
    pub fn wait(&self, known: u64) -> ResizeWait<'_> {
        ResizeWait {
            signal: self,
            known,
            slot: None,
        }
    }
}

/// Future returned by [`ResizeSignal::wait`].
pub struct ResizeWait<'a> {
    signal: &'a ResizeSignal,
    known: u64,
    slot: Option<usize>,
}

impl Future for ResizeWait<'_> {
    type Output = u64;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        let now = self.signal.get();
        if now != self.known {
            return Poll::Ready(now);
        }
        {
            let mut waiters = self.signal.waiters.lock();
            let slot = match self.slot {
                Some(i) => i,
                None => match waiters.iter().position(Option::is_none) {
                    Some(i) => i,
                    None => {
                        waiters.push(None);
                        waiters.len() - 1
                    }
                },
            };
            waiters[slot] = Some(cx.waker().clone());
            self.slot = Some(slot);
        }
        // A resize between the first check and registration would be missed
        // otherwise.
        let now = self.signal.get();
        if now != self.known {
            Poll::Ready(now)
        } else {
            Poll::Pending
        }
    }
}

impl Drop for ResizeWait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot
            && let Some(w) = self.signal.waiters.lock().get_mut(i)
        {
            *w = None;
        }
    }
}
