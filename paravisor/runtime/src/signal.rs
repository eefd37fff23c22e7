//! VMBus channel signalling on an eventfd: the peer's notifications reach
//! a channel worker on a runtime thread with no thread hop of their own.

use crate::fd::EventFd;
use parastor_vmbus::signal::{Notify, Wait};
use std::io;
use std::task::{Context, Poll};

/// A VMBus signal carried by an [`EventFd`]: [`Notify::notify`] from any
/// thread writes it, [`Wait::poll_wait`] on the worker's runtime thread
/// consumes every notification since the last one (VMBus signals carry no
/// count: several coalesce into one wake).
#[derive(Debug)]
pub struct EventFdSignal {
    fd: EventFd,
}

impl EventFdSignal {
    /// A new, unsignalled signal.
    pub fn new() -> io::Result<EventFdSignal> {
        Ok(EventFdSignal {
            fd: EventFd::new()?,
        })
    }

    /// The eventfd underneath (to hand to whatever raises the signal).
    pub fn eventfd(&self) -> &EventFd {
        &self.fd
    }
}

impl Notify for EventFdSignal {
    fn notify(&self) {
        // Writing our own open eventfd fails only with a saturated counter,
        // which `signal` already treats as signalled.
        let _ = self.fd.signal();
    }
}

impl Wait for EventFdSignal {
    /// An error (polled outside a runtime thread, or away from the thread
    /// it first waited on) is answered `Ready`: a spurious wake, after
    /// which a ring consumer re-checks its ring, rather than a wait that
    /// never ends.
    fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.fd.poll_wait(cx).map(|_| ())
    }
}
