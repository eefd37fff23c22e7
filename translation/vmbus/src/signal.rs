//! Host ↔ guest notifications, as traits.
//!
//! On real VMBus a signal is a hypercall (guest → host) or a synthetic
//! interrupt (host → guest). A channel worker sees both directions through
//! two traits, so what carries them is the caller's choice: [`Notify`]
//! delivers a notification to the peer, [`Wait`] waits for one from the
//! peer; [`ChannelSignals`] bundles one of each for a worker to own.
//!
//! The in-process [`Signal`] implements both — a counter, a pending flag and
//! one lock-free waker slot — so an emulated guest and a device can run
//! against each other in one process and tests can check exactly when a
//! side signalled. Other implementations (eventfds, the host's interrupt
//! file descriptors) live with the runtime that polls them.

use alloc::sync::Arc;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::task::{Context, Poll};
use futures_util::task::AtomicWaker;

/// Delivers a channel's notification to its peer.
pub trait Notify: Send + Sync {
    /// Signals the peer.
    fn notify(&self);
}

/// Waits for the peer's notification.
pub trait Wait: Send + Sync {
    /// `Ready` if the peer has signalled since the last `Ready` (and
    /// consumes that); else `Pending`, and `cx` is woken on the next
    /// signal. A signal is never lost between a `Pending` and the wake.
    fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()>;
}

/// The two directions of a channel's signalling, owned by its worker:
/// `to_peer` notifies the other side, `from_peer` is how the other side's
/// notifications arrive.
#[derive(Clone)]
pub struct ChannelSignals {
    /// Notifies the peer (host → guest interrupt, for the host's side).
    pub to_peer: Arc<dyn Notify>,
    /// The peer's notifications (guest → host, for the host's side).
    pub from_peer: Arc<dyn Wait>,
}

impl fmt::Debug for ChannelSignals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSignals").finish_non_exhaustive()
    }
}

impl ChannelSignals {
    /// Signals over two in-process [`Signal`]s.
    pub fn new(to_peer: Arc<Signal>, from_peer: Arc<Signal>) -> Self {
        Self { to_peer, from_peer }
    }
}

/// An in-process notification: a counter, a pending flag and one waker.
#[derive(Debug, Default)]
pub struct Signal {
    count: AtomicU64,
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// A signal that has never fired.
    pub const fn new() -> Self {
        Self {
            count: AtomicU64::new(0),
            pending: AtomicBool::new(false),
            waker: AtomicWaker::new(),
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
        self.waker.wake();
    }
}

impl Wait for Signal {
    fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.take() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Re-check: the signal may have fired before the waker was stored.
        if self.take() {
            return Poll::Ready(());
        }
        Poll::Pending
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
        self.signal.poll_wait(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::task::Wake;
    use core::task::Waker;

    struct Count(AtomicU64);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn signals_cross_through_the_traits() {
        let to_guest = Arc::new(Signal::new());
        let to_host = Arc::new(Signal::new());
        let host = ChannelSignals::new(to_guest.clone(), to_host.clone());
        let woken = Arc::new(Count(AtomicU64::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);

        // Nothing yet: pending, and the waker is armed.
        assert!(host.from_peer.poll_wait(&mut cx).is_pending());
        to_host.notify();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        // The signal is consumed by the wait that sees it.
        assert!(host.from_peer.poll_wait(&mut cx).is_ready());
        assert!(host.from_peer.poll_wait(&mut cx).is_pending());
        // A signal before the wait is not lost.
        to_host.notify();
        assert!(host.from_peer.poll_wait(&mut cx).is_ready());

        host.to_peer.notify();
        assert_eq!((to_guest.count(), to_host.count()), (1, 2));
        assert!(to_guest.take());
    }
}
