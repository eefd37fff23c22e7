//! The serve loop: commands from TCMU rings, run on one [`Lun`],
//! completed back.
//!
//! [`serve`] runs on a `parastor-runtime` thread and serves every [`Path`]
//! (one TCMU backstore each) of one LUN from a single task:
//!
//! - each path's [`Doorbell`] is waited for through an edge-triggered
//!   [`FdReady`]; when it fires, the readiness is consumed
//!   ([`Doorbell::ack`]) *before* the ring is fetched, so a post that
//!   lands after the fetch raises a new edge and is never missed;
//! - a fetched command runs in place when the LUN completes it inline
//!   ([`Lun::run_now`]: RAM disks and compositions of them) and is
//!   completed at once, with no allocation; otherwise its
//!   [`Lun::execute`] future goes into a slot of a fixed table (up to
//!   [`MAX_IN_FLIGHT`]; more wait, fetched, in a backlog), each slot with
//!   its own waker, so a pass polls only the commands that were woken and
//!   they complete in whatever order the disk finishes them. A slot's
//!   future storage is allocated once and reused;
//! - the data buffer is an [`SgList`] over the ring's own memory (the
//!   iovecs are offsets in the map), writable whatever the command (TCMU
//!   does not say the direction; the data area is the handler's to
//!   write); sense is returned with the status ([`SenseDelivery::Autosense`]);
//! - the LUN's transfer limit is lowered to the smallest data area of the
//!   paths (the kernel refuses a command whose data does not fit there),
//!   so the MAXIMUM TRANSFER LENGTH the disk advertises is one TCMU
//!   carries;
//! - after a pass, every path whose ring tail moved rings its doorbell,
//!   once: that is also the kernel's flow control (it queues commands
//!   while the ring or the data area is full, and retries when told that
//!   completions freed space).
//!
//! Each path is its own initiator: TCMU carries no initiator identity, so
//! two backstores of one LUN are two I_T nexuses (reservations between two
//! registrants need that).
//!
//! When `stop` resolves the loop stops fetching, finishes every command
//! already fetched (backlog included), completes them, rings the
//! doorbells and returns the counters. A ring or doorbell error does the
//! same and returns the error: commands already running are never
//! abandoned mid-flight.

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::BorrowedFd;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parastor_core::ready::ReadySet;
use parastor_core::{GuestMem, InitiatorId, SgList};
use parastor_hw::scsi::{AdditionalSense, SenseData, SenseKey};
use parastor_runtime::{EventFd, FdReady, Interest};
use parastor_scsi::{Lun, ScsiResult, SenseDelivery};

use crate::ring::{CommandRing, RingCommand, RingError, RingStats};

/// The kernel's doorbell of one TCMU backstore, both ways.
pub trait Doorbell: Send + Sync {
    /// Becomes readable when the kernel has posted commands.
    fn fd(&self) -> BorrowedFd<'_>;

    /// Consumes that readiness (uio: reads the 4-byte event count; an
    /// eventfd: reads 8 bytes). Nothing pending is not an error.
    fn ack(&self) -> io::Result<()>;

    /// Tells the kernel completions are waiting (uio: writes a 4-byte 1,
    /// which makes the kernel walk the completions).
    fn ring(&self) -> io::Result<()>;
}

/// A [`Doorbell`] made of two eventfds, as the in-process model of the
/// kernel's side (`parastor_emulated::tcmu::TcmuKernel`) offers.
#[derive(Debug, Clone)]
pub struct EventFdDoorbell {
    /// Signalled by the kernel side when it posts.
    pub posted: Arc<EventFd>,
    /// Signalled by the handler when it completes.
    pub completed: Arc<EventFd>,
}

impl Doorbell for EventFdDoorbell {
    fn fd(&self) -> BorrowedFd<'_> {
        self.posted.fd()
    }

    fn ack(&self) -> io::Result<()> {
        self.posted.try_take().map(|_| ())
    }

    fn ring(&self) -> io::Result<()> {
        self.completed.signal()
    }
}

/// One TCMU backstore of the served LUN.
pub struct Path {
    /// Its command ring.
    pub ring: CommandRing,
    /// Its doorbell.
    pub doorbell: Arc<dyn Doorbell>,
    /// The initiator its commands come from.
    pub initiator: InitiatorId,
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Path")
            .field("ring", &self.ring)
            .field("initiator", &self.initiator)
            .finish_non_exhaustive()
    }
}

/// Commands running at once, at most; more wait in a backlog.
pub const MAX_IN_FLIGHT: usize = 1024;

/// What [`serve`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Commands run (inline and deferred).
    pub commands: u64,
    /// Of them, completed in place.
    pub inline: u64,
    /// Of them, run as futures and completed when they finished.
    pub deferred: u64,
    /// The most deferred commands running at once.
    pub max_in_flight: usize,
    /// Times a doorbell was rung towards the kernel.
    pub notifications: u64,
    /// The rings' own counters, summed over the paths.
    pub ring: RingStats,
}

/// Why [`serve`] ended early.
#[derive(Debug)]
pub enum ServeError {
    /// Path `path`'s ring could not be read or written.
    Ring {
        /// Which path.
        path: usize,
        /// What went wrong.
        error: RingError,
    },
    /// Path `path`'s doorbell failed.
    Doorbell {
        /// Which path.
        path: usize,
        /// What went wrong.
        error: io::Error,
    },
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Ring { path, error } => write!(f, "TCMU path {path}: {error}"),
            ServeError::Doorbell { path, error } => {
                write!(f, "TCMU path {path}: doorbell failed: {error}")
            }
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Ring { error, .. } => Some(error),
            ServeError::Doorbell { error, .. } => Some(error),
        }
    }
}

/// Sense when a command's data buffer cannot be described (its iovecs
/// add up past the address space): the kernel's fault, not the
/// initiator's.
const BAD_BUFFER: SenseData = SenseData::new(
    SenseKey::HARDWARE_ERROR,
    AdditionalSense::INTERNAL_TARGET_FAILURE,
);

/// Runs `cmd` on `lun` to completion; hands the command back (its buffers
/// are recycled) with the result.
async fn run_command(
    lun: Lun,
    mem: GuestMem,
    cmd: RingCommand,
    initiator: InitiatorId,
) -> (RingCommand, ScsiResult) {
    let result = match SgList::new(&*mem, &cmd.data, true) {
        Ok(sg) => {
            lun.execute(cmd.cdb.as_bytes(), sg, initiator, SenseDelivery::Autosense)
                .await
        }
        Err(_) => ScsiResult::check(BAD_BUFFER),
    };
    (cmd, result)
}

struct Slot<F> {
    path: usize,
    /// Allocated at the slot's first use, reused by `Pin::set` after.
    future: Option<Pin<Box<Option<F>>>>,
}

/// The table of deferred commands.
struct Slots<F> {
    slots: Vec<Slot<F>>,
    free: Vec<usize>,
    ready: ReadySet,
    busy: usize,
}

impl<F: Future<Output = (RingCommand, ScsiResult)>> Slots<F> {
    fn new() -> Self {
        let ready = ReadySet::new(MAX_IN_FLIGHT);
        let slots = (0..MAX_IN_FLIGHT)
            .map(|_| Slot {
                path: 0,
                future: None,
            })
            .collect();
        Slots {
            slots,
            free: (0..MAX_IN_FLIGHT).rev().collect(),
            ready,
            busy: 0,
        }
    }

    fn register(&self, waker: &Waker) {
        self.ready.register(waker);
    }

    fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Starts `future` for `path` in a free slot and polls it once (marked
    /// woken, so the next pass does). Needs [`Self::has_free`].
    fn start(&mut self, path: usize, future: F) {
        let Some(index) = self.free.pop() else {
            return;
        };
        let slot = &mut self.slots[index];
        slot.path = path;
        match slot.future.as_mut() {
            Some(storage) => storage.as_mut().set(Some(future)),
            None => slot.future = Some(Box::pin(Some(future))),
        }
        self.busy += 1;
        self.ready.wake(index);
    }

    /// Polls every woken slot; `done(path, command, result)` for each that
    /// finished.
    fn poll_ready(&mut self, mut done: impl FnMut(usize, RingCommand, ScsiResult)) -> bool {
        let mut any = false;
        for w in 0..self.ready.words() {
            for index in self.ready.take_word(w) {
                let Some(slot) = self.slots.get_mut(index) else {
                    continue;
                };
                let Some(storage) = slot.future.as_mut() else {
                    continue;
                };
                let Some(future) = storage.as_mut().as_pin_mut() else {
                    continue;
                };
                let Some(waker) = self.ready.waker(index) else {
                    continue;
                };
                let mut cx = Context::from_waker(waker);
                if let Poll::Ready((cmd, result)) = future.poll(&mut cx) {
                    storage.as_mut().set(None);
                    self.free.push(index);
                    self.busy -= 1;
                    any = true;
                    done(slot.path, cmd, result);
                }
            }
        }
        any
    }
}

/// Serves `paths` (one TCMU backstore each) with `lun` until `stop`
/// resolves, then drains; see the [module docs](self). Must run on a
/// `parastor-runtime` thread (the doorbells are epoll registrations).
pub async fn serve<S: Future<Output = ()>>(
    mut paths: Vec<Path>,
    lun: Lun,
    stop: S,
) -> Result<ServeStats, ServeError> {
    // A command's data must fit in its backstore's data area (the kernel
    // refuses a larger one): that is the transport's transfer limit.
    for p in &paths {
        let (start, end) = p.ring.data_area();
        lun.limit_transfer(u32::try_from(end - start).unwrap_or(u32::MAX));
    }
    let mut bells = Vec::with_capacity(paths.len());
    for (i, p) in paths.iter().enumerate() {
        let fd = p
            .doorbell
            .fd()
            .try_clone_to_owned()
            .map_err(|error| ServeError::Doorbell { path: i, error })?;
        bells.push(FdReady::new(Arc::new(fd), Interest::READABLE));
    }
    let mut stop = pin!(stop);
    let mut stopping = false;
    let mut error: Option<ServeError> = None;
    let mut slots = Slots::new();
    let mut stats = ServeStats::default();
    let mut fetched: Vec<RingCommand> = Vec::new();
    let mut backlog: VecDeque<(usize, RingCommand)> = VecDeque::new();
    let mut notify = vec![false; paths.len()];

    poll_fn(|cx| {
        slots.register(cx.waker());
        if !stopping && stop.as_mut().poll(cx).is_ready() {
            stopping = true;
        }
        loop {
            let mut progress = slots.poll_ready(|p, cmd, result| {
                if let Some(path) = paths.get_mut(p) {
                    notify[p] |= path.ring.complete(cmd.id, &result);
                    path.ring.recycle(cmd);
                }
            });
            while slots.has_free()
                && let Some((p, cmd)) = backlog.pop_front()
            {
                let path = &paths[p];
                let mem = path.ring.memory().clone();
                slots.start(p, run_command(lun.clone(), mem, cmd, path.initiator));
                stats.deferred += 1;
                progress = true;
            }
            if !stopping && error.is_none() {
                for (p, path) in paths.iter_mut().enumerate() {
                    match bells[p].poll_ready(cx, Interest::READABLE) {
                        Poll::Pending => continue,
                        Poll::Ready(Err(e)) => {
                            error = Some(ServeError::Doorbell { path: p, error: e });
                            break;
                        }
                        Poll::Ready(Ok(())) => {}
                    }
                    // Consume the edge before fetching: a later post raises
                    // a new one.
                    if let Err(e) = path.doorbell.ack() {
                        error = Some(ServeError::Doorbell { path: p, error: e });
                        break;
                    }
                    bells[p].clear(Interest::READABLE);
                    progress = true;
                    match path.ring.fetch(&mut fetched) {
                        Ok(f) => notify[p] |= f.notify,
                        Err(e) => error = Some(ServeError::Ring { path: p, error: e }),
                    }
                    let mem = path.ring.memory().clone();
                    for cmd in fetched.drain(..) {
                        stats.commands += 1;
                        let inline = match SgList::new(&*mem, &cmd.data, true) {
                            Ok(sg) => lun.run_now(
                                cmd.cdb.as_bytes(),
                                &sg,
                                path.initiator,
                                SenseDelivery::Autosense,
                            ),
                            Err(_) => Some(ScsiResult::check(BAD_BUFFER)),
                        };
                        match inline {
                            Some(result) => {
                                stats.inline += 1;
                                notify[p] |= path.ring.complete(cmd.id, &result);
                                path.ring.recycle(cmd);
                            }
                            None if slots.has_free() && backlog.is_empty() => {
                                let future =
                                    run_command(lun.clone(), mem.clone(), cmd, path.initiator);
                                slots.start(p, future);
                                stats.deferred += 1;
                            }
                            None => backlog.push_back((p, cmd)),
                        }
                    }
                    if error.is_some() {
                        break;
                    }
                }
            }
            stats.max_in_flight = stats.max_in_flight.max(slots.busy);
            for (p, path) in paths.iter().enumerate() {
                if std::mem::take(&mut notify[p]) {
                    stats.notifications += 1;
                    if let Err(e) = path.doorbell.ring() {
                        log::error!("TCMU path {p}: ringing the kernel failed: {e}");
                        if error.is_none() {
                            error = Some(ServeError::Doorbell { path: p, error: e });
                        }
                    }
                }
            }
            if !progress {
                break;
            }
        }
        if (stopping || error.is_some()) && slots.busy == 0 && backlog.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;

    for path in &paths {
        let r = path.ring.stats();
        let s = &mut stats.ring;
        s.commands += r.commands;
        s.completions += r.completions;
        s.pads += r.pads;
        s.tmrs += r.tmrs;
        s.malformed += r.malformed;
        s.unknown += r.unknown;
        s.resyncs += r.resyncs;
    }
    match error {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}
