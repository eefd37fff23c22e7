//! Host ↔ guest notifications.
//!
//! On real VMBus a signal is a hypercall (guest → host) or a synthetic
//! interrupt (host → guest). Here a [`Notify`] is whatever delivers it; the
//! in-process [`Signal`] counts notifications and wakes one waiting task, so
//! an emulated guest and a device can run against each other in one process
//! and tests can check exactly when a side signalled.

use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::task::{Context, Poll, Waker};

/// Delivers a channel's notification to its peer.
pub trait Notify: Send + Sync {
    /// Signals the peer.
    fn notify(&self);
}

/// An in-process notification: a counter, a pending flag and one waker.
#[derive(Debug, Default)]
pub struct Signal {
    count: AtomicU64,
    pending: AtomicBool,
    waker: spin::Mutex<Option<Waker>>,
}

impl Signal {
    /// A signal that has never fired.
    pub const fn new() -> Self {
        Self {
            count: AtomicU64::new(0),
            pending: AtomicBool::new(false),
            waker: spin::Mutex::new(None),
        }
    }

    /// How many times the signal has fired.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Whether the signal fired since the last `take` (and clears that).
    pub fn take(&self) -> bool {
        self.pending.swap(false, Ordering::AcqRel)
    }

    /// Completes once the signal has fired since the last `take` / wait
    /// (and clears it).
    pub fn wait(&self) -> SignalWait<'_> {
        SignalWait { signal: self }
    }
}

impl Notify for Signal {
    fn notify(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.pending.store(true, Ordering::Release);
        // Taken out before waking: a waker that notifies this signal again
        // must not find the lock held.
        let waker = self.waker.lock().take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The future returned by [`Signal::wait`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct SignalWait<'a> {
    signal: &'a Signal,
}

impl Future for SignalWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.take() {
            return Poll::Ready(());
        }
        *self.signal.waker.lock() = Some(cx.waker().clone());
        // Re-check: the signal may have fired before the waker was stored.
        if self.signal.take() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}
