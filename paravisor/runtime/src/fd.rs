//! File descriptor readiness: [`FdReady`] (an edge-triggered epoll
//! registration on one runtime thread) and [`EventFd`] on top of it.

use crate::thread::{FD_TOKEN_BASE, Local, Orphan, ThreadShared, with_local, with_running};
use rustix::event::{EventfdFlags, epoll, eventfd};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::io::Errno;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

/// Which readiness a wait is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest {
    read: bool,
    write: bool,
}

impl Interest {
    /// Readable (or hung up, or in error).
    pub const READABLE: Interest = Interest {
        read: true,
        write: false,
    };
    /// Writable (or in error).
    pub const WRITABLE: Interest = Interest {
        read: false,
        write: true,
    };
    /// Either.
    pub const BOTH: Interest = Interest {
        read: true,
        write: true,
    };

    fn flags(self) -> epoll::EventFlags {
        let mut flags = epoll::EventFlags::ET;
        if self.read {
            flags |= epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
        }
        if self.write {
            flags |= epoll::EventFlags::OUT;
        }
        flags
    }
}

/// A registration's state on its thread.
pub(crate) struct FdSlot {
    generation: u32,
    readable: bool,
    writable: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

/// Where an [`FdReady`] is registered.
struct Registration {
    thread: Arc<ThreadShared>,
    key: usize,
    generation: u32,
}

fn token(key: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | (FD_TOKEN_BASE + key as u64)
}

/// Wakes the waiters of the registration an epoll event names (on the
/// registration's thread, from its loop).
pub(crate) fn dispatch(local: &Local, token: u64, flags: epoll::EventFlags) {
    let generation = (token >> 32) as u32;
    let Some(key) = (token & u64::from(u32::MAX))
        .checked_sub(FD_TOKEN_BASE)
        .and_then(|k| usize::try_from(k).ok())
    else {
        return;
    };
    let error = epoll::EventFlags::ERR | epoll::EventFlags::HUP;
    let (read, write) = {
        let mut fds = local.fds.borrow_mut();
        let Some(slot) = fds.get_mut(key).filter(|s| s.generation == generation) else {
            return;
        };
        let mut read = None;
        let mut write = None;
        if flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::RDHUP | error) {
            slot.readable = true;
            read = slot.read_waker.take();
        }
        if flags.intersects(epoll::EventFlags::OUT | error) {
            slot.writable = true;
            write = slot.write_waker.take();
        }
        (read, write)
    };
    // Woken after the borrow ends: a waker may reach the slab.
    if let Some(w) = read {
        w.wake();
    }
    if let Some(w) = write {
        w.wake();
    }
}

/// Removes a registration (on its thread).
pub(crate) fn deregister(local: &Local, fd: &OwnedFd, key: usize, generation: u32) {
    let mut fds = local.fds.borrow_mut();
    if fds.get(key).is_some_and(|s| s.generation == generation) {
        fds.remove(key);
        // Fails only if the descriptor is already gone from the set.
        let _ = epoll::delete(&local.epoll, fd);
    }
}

/// Readiness of a file descriptor, from an edge-triggered epoll
/// registration on the runtime thread that first polls it.
///
/// Created anywhere; it registers on its first [`poll_ready`](Self::poll_ready)
/// and must be polled on that thread from then on (a task never changes
/// threads, so one owned by a task is). The usual pattern: try the
/// non-blocking operation; on `EAGAIN` call [`clear`](Self::clear) and wait
/// with `poll_ready`.
pub struct FdReady {
    fd: Arc<OwnedFd>,
    interest: Interest,
    registration: OnceLock<Registration>,
}

impl fmt::Debug for FdReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FdReady")
            .field("fd", &self.fd)
            .field("interest", &self.interest)
            .field("registered", &self.registration.get().is_some())
            .finish()
    }
}

impl FdReady {
    /// Readiness of `fd` for `interest` (registered at the first poll).
    pub fn new(fd: Arc<OwnedFd>, interest: Interest) -> FdReady {
        FdReady {
            fd,
            interest,
            registration: OnceLock::new(),
        }
    }

    /// The descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Registers on the current runtime thread, starting out ready (so the
    /// first operation is tried rather than waited for).
    fn register(&self) -> io::Result<&Registration> {
        if let Some(r) = self.registration.get() {
            return Ok(r);
        }
        let registration = with_running(|l| -> io::Result<Registration> {
            let generation = l.fd_generation.get().wrapping_add(1);
            l.fd_generation.set(generation);
            let mut fds = l.fds.borrow_mut();
            let entry = fds.vacant_entry();
            let key = entry.key();
            epoll::add(
                &l.epoll,
                &*self.fd,
                epoll::EventData::new_u64(token(key, generation)),
                self.interest.flags(),
            )?;
            entry.insert(FdSlot {
                generation,
                readable: true,
                writable: true,
                read_waker: None,
                write_waker: None,
            });
            Ok(Registration {
                thread: l.shared.clone(),
                key,
                generation,
            })
        })
        .ok_or_else(|| io::Error::other("FdReady polled outside a runtime thread"))??;
        if let Err(lost) = self.registration.set(registration) {
            // Another thread registered first: undo ours.
            with_local(|l| deregister(l, &self.fd, lost.key, lost.generation));
        }
        self.registration
            .get()
            .ok_or_else(|| io::Error::other("FdReady registration vanished"))
    }

    /// Ready if the descriptor has been ready for `interest` since the last
    /// [`clear`](Self::clear); otherwise stores the waker. Fails when
    /// polled off a runtime thread or away from its thread.
    pub fn poll_ready(&self, cx: &mut Context<'_>, interest: Interest) -> Poll<io::Result<()>> {
        let registration = match self.register() {
            Ok(r) => r,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let state = with_running(|l| {
            if !Arc::ptr_eq(&l.shared, &registration.thread) {
                return None;
            }
            let mut fds = l.fds.borrow_mut();
            let slot = fds
                .get_mut(registration.key)
                .filter(|s| s.generation == registration.generation)?;
            if (interest.read && slot.readable) || (interest.write && slot.writable) {
                return Some(Poll::Ready(()));
            }
            if interest.read {
                store(&mut slot.read_waker, cx.waker());
            }
            if interest.write {
                store(&mut slot.write_waker, cx.waker());
            }
            Some(Poll::Pending)
        })
        .flatten();
        match state {
            Some(Poll::Ready(())) => Poll::Ready(Ok(())),
            Some(Poll::Pending) => Poll::Pending,
            None => Poll::Ready(Err(io::Error::other(
                "FdReady polled away from the runtime thread it registered on",
            ))),
        }
    }

    /// Forgets readiness for `interest` (the operation returned `EAGAIN`);
    /// the next edge sets it again.
    pub fn clear(&self, interest: Interest) {
        let Some(registration) = self.registration.get() else {
            return;
        };
        with_local(|l| {
            if let Some(slot) = l
                .fds
                .borrow_mut()
                .get_mut(registration.key)
                .filter(|s| s.generation == registration.generation)
            {
                if interest.read {
                    slot.readable = false;
                }
                if interest.write {
                    slot.writable = false;
                }
            }
        });
    }
}

fn store(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

impl Drop for FdReady {
    fn drop(&mut self) {
        let Some(registration) = self.registration.take() else {
            return;
        };
        if registration.thread.is_current() {
            with_local(|l| {
                deregister(l, &self.fd, registration.key, registration.generation);
            });
        } else {
            registration.thread.orphan(Orphan {
                fd: self.fd.clone(),
                key: registration.key,
                generation: registration.generation,
            });
        }
    }
}

/// An eventfd: a counter any thread can [`signal`](Self::signal), waited
/// for on a runtime thread with [`poll_wait`](Self::poll_wait).
///
/// This is how events from outside enter a runtime thread: a peer's
/// notification, and later MSI-X interrupt and io_uring completion
/// eventfds. Shared as `Arc<EventFd>` between the signalling side and the
/// waiting task.
#[derive(Debug)]
pub struct EventFd {
    ready: FdReady,
}

impl EventFd {
    /// A new, unsignalled eventfd.
    pub fn new() -> io::Result<EventFd> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(EventFd {
            ready: FdReady::new(Arc::new(fd), Interest::READABLE),
        })
    }

    /// The descriptor (to hand to whatever signals it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ready.fd()
    }

    /// Adds one to the counter, waking the waiter. From any thread.
    pub fn signal(&self) -> io::Result<()> {
        match rustix::io::write(self.ready.fd(), &1u64.to_ne_bytes()) {
            // The counter is saturated: it is signalled already.
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads and resets the counter if it is non-zero (the number of
    /// signals since the last read), without waiting.
    pub fn try_take(&self) -> io::Result<Option<u64>> {
        let mut buf = [0u8; 8];
        match rustix::io::read(self.ready.fd(), &mut buf) {
            Ok(8) => Ok(Some(u64::from_ne_bytes(buf))),
            Ok(n) => Err(io::Error::other(format!(
                "eventfd read returned {n} bytes, expected 8"
            ))),
            Err(Errno::AGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Ready with the number of signals since the last read (resetting the
    /// counter) once it is non-zero; registers on the current runtime
    /// thread on first use.
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        loop {
            match self.ready.poll_ready(cx, Interest::READABLE) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            match self.try_take() {
                Ok(Some(n)) => return Poll::Ready(Ok(n)),
                // Nothing since the last read: wait for the next edge.
                Ok(None) => self.ready.clear(Interest::READABLE),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Waits until signalled; the number of signals since the last read.
    pub async fn wait(&self) -> io::Result<u64> {
        poll_fn(|cx| self.poll_wait(cx)).await
    }
}
