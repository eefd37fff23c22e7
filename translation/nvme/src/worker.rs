//! One worker per I/O completion queue: it reads the entries of every
//! submission queue that posts to its CQ (round robin), runs each command
//! in a fixed slot, and writes completions as the disks finish them, in
//! any order, signalling the CQ's vector once per pass.
//!
//! A slot keeps its future's storage (a [`StackFuture`] in a box made on
//! the slot's first use) and a ranges vector between commands, so the
//! steady state allocates nothing. Each slot has its own waker
//! ([`ReadySet`]): a pass polls only the commands that can go on.

use crate::io::{self, IoOutcome, IoParams};
use crate::queue::{Cq, Sq};
use crate::{ControllerConfig, Lifecycle, Shared};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::pin::Pin;
use core::sync::atomic::Ordering;
use core::task::{Context, Poll, Waker};
use parastor_core::ready::ReadySet;
use parastor_core::{Disk, GpaRange, GuestMemory};
use parastor_hw::nvme::command::NvmOpcode;
use parastor_hw::nvme::log::ErrorLogEntry;
use parastor_hw::nvme::queue::{Cqe, CqeStatus, Sqe};
use parastor_hw::nvme::regs::Doorbell;
use parastor_hw::nvme::status::{GenericStatus, StatusCodeType, StatusWord};
use stackfuture::StackFuture;
use zerocopy::FromZeros;
use zerocopy::little_endian::{U16, U32, U64};

/// Bytes an I/O command's future may take in its slot before it is boxed
/// instead (a test keeps the NVM command set's futures within it).
pub(crate) const SLOT_FUTURE_BYTES: usize = 2048;

/// What a slot's future returns: the outcome, and the ranges vector it
/// borrowed, handed back for the next command.
type SlotOutput = (IoOutcome, Vec<GpaRange>);

/// An I/O command running on its namespace.
type SlotFuture = StackFuture<'static, SlotOutput, SLOT_FUTURE_BYTES>;

/// A command's completion: status and Dword 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Completion {
    pub(crate) status: StatusWord,
    pub(crate) dw0: u32,
}

impl Completion {
    pub(crate) fn status(status: StatusWord) -> Self {
        Self { status, dw0: 0 }
    }
}

/// One command slot.
struct Slot {
    busy: bool,
    sqid: u16,
    sqe: Sqe,
    /// Finished, waiting for room in the completion queue.
    done: Option<Completion>,
    future: Option<Pin<Box<Option<SlotFuture>>>>,
    spare: Vec<GpaRange>,
}

/// SMART counters of the commands this worker completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IoStats {
    pub(crate) bytes_read: u64,
    pub(crate) bytes_written: u64,
    pub(crate) read_commands: u64,
    pub(crate) write_commands: u64,
    pub(crate) media_errors: u64,
}

impl IoStats {
    /// Adds `other`'s counters, saturating.
    pub(crate) fn add(&mut self, other: &IoStats) {
        self.bytes_read = self.bytes_read.saturating_add(other.bytes_read);
        self.bytes_written = self.bytes_written.saturating_add(other.bytes_written);
        self.read_commands = self.read_commands.saturating_add(other.read_commands);
        self.write_commands = self.write_commands.saturating_add(other.write_commands);
        self.media_errors = self.media_errors.saturating_add(other.media_errors);
    }
}

/// The worker's view of the namespaces: refreshed when the controller's
/// namespace generation moves, so resolving an NSID takes no lock.
#[derive(Default)]
struct NsCache {
    /// The generation the cache holds (`None`: never filled).
    generation: Option<u64>,
    disks: Vec<Option<Disk>>,
    /// The Number of Namespaces reported (NN): NSIDs 1..=NN are valid.
    max: u32,
}

/// A command saved in flight (see [`crate::state`]).
#[derive(Clone, Debug)]
pub(crate) struct InFlight {
    pub(crate) sqid: u16,
    pub(crate) sqe: Sqe,
    pub(crate) done: Option<Completion>,
}

/// The worker of one I/O completion queue.
pub(crate) struct IoWorker {
    pub(crate) cq: Option<Cq>,
    pub(crate) sqs: Vec<Sq>,
    next_sq: usize,
    /// Commands run at once, at most.
    capacity: usize,
    /// Built when the worker's first CQ is created (most workers of a
    /// controller never get one) and kept from then on.
    slots: Box<[Slot]>,
    free: Vec<usize>,
    ready: ReadySet,
    /// Slots finished and waiting for room in the CQ, oldest first.
    done: VecDeque<usize>,
    ns: NsCache,
    pub(crate) params: IoParams,
    pub(crate) stats: IoStats,
    /// (SQID, CID) of queued commands to complete as aborted when fetched.
    pub(crate) aborts: Vec<(u16, u16)>,
    /// Completions posted since the vector was last signalled.
    interrupt: bool,
    waker: Waker,
}

impl IoWorker {
    pub(crate) fn new(config: &ControllerConfig, waker: Waker) -> Self {
        Self {
            cq: None,
            sqs: Vec::new(),
            next_sq: 0,
            capacity: usize::from(config.commands_per_queue),
            slots: Box::new([]),
            free: Vec::new(),
            ready: ReadySet::new(0),
            done: VecDeque::new(),
            ns: NsCache::default(),
            params: IoParams {
                page_size: 4096,
                max_transfer: config.max_transfer_bytes,
                host_id: crate::admin::default_host_id(config),
                host_id_extended: false,
                write_cache: true,
            },
            stats: IoStats::default(),
            aborts: Vec::new(),
            interrupt: false,
            waker,
        }
    }

    /// Gives the worker its completion queue (building its command slots
    /// the first time).
    pub(crate) fn open(&mut self, cq: Cq) {
        self.cq = Some(cq);
        if self.slots.is_empty() {
            let n = self.capacity;
            self.ready = ReadySet::new(n);
            self.slots = (0..n)
                .map(|_| Slot {
                    busy: false,
                    sqid: 0,
                    sqe: Sqe::new_zeroed(),
                    done: None,
                    future: None,
                    spare: Vec::new(),
                })
                .collect();
            self.free = (0..n).rev().collect();
            self.done = VecDeque::with_capacity(n);
        }
    }

    /// Commands fetched and not yet completed (running or waiting for CQ
    /// room).
    pub(crate) fn busy(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Commands whose futures still run on a disk.
    pub(crate) fn running(&self) -> usize {
        self.busy() - self.done.len()
    }

    /// The commands in flight, for the saved state.
    pub(crate) fn in_flight(&self) -> Vec<InFlight> {
        self.slots
            .iter()
            .filter(|s| s.busy)
            .map(|s| InFlight {
                sqid: s.sqid,
                sqe: s.sqe,
                done: s.done,
            })
            .collect()
    }

    /// Drops every queue and command (controller reset, after the drain;
    /// or a restore building the worker afresh). Futures still running are
    /// dropped too: only ever called when none runs or nothing was started.
    pub(crate) fn clear(&mut self) {
        self.cq = None;
        self.sqs.clear();
        self.next_sq = 0;
        self.done.clear();
        self.free.clear();
        for (i, slot) in self.slots.iter_mut().enumerate().rev() {
            slot.busy = false;
            slot.done = None;
            if let Some(f) = slot.future.as_mut() {
                f.as_mut().set(None);
            }
            self.free.push(i);
        }
        self.aborts.clear();
        self.interrupt = false;
    }

    /// Re-queues saved commands after a restore: finished ones wait for CQ
    /// room, the others start again (see [`crate::state`]).
    pub(crate) fn resume(&mut self, s: &Shared, saved: &[InFlight]) {
        let generation = s.ns_generation.load(Ordering::Acquire);
        self.refresh_namespaces(s, generation);
        for c in saved {
            let Some(index) = self.free.pop() else {
                return;
            };
            if let Some(sq) = self.sqs.iter_mut().find(|q| q.qid == c.sqid) {
                sq.outstanding += 1;
            }
            let slot = &mut self.slots[index];
            slot.busy = true;
            slot.sqid = c.sqid;
            slot.sqe = c.sqe;
            slot.done = None;
            match c.done {
                Some(done) => {
                    slot.done = Some(done);
                    self.done.push_back(index);
                }
                None => self.start(s, index),
            }
        }
    }

    /// One pass: poll the woken commands, post what finished, fetch new
    /// commands, signal the vector. Returns whether the worker is drained
    /// (nothing running) while the controller waits for that.
    pub(crate) fn run(&mut self, s: &Shared) -> bool {
        let life = s.lifecycle();
        if !s.dma_allowed() {
            return false;
        }
        let generation = s.ns_generation.load(Ordering::Acquire);
        if self.ns.generation != Some(generation) {
            self.refresh_namespaces(s, generation);
        }
        for _ in 0..8 {
            let mut progress = false;
            for w in 0..self.ready.words() {
                for index in self.ready.take_word(w) {
                    progress |= self.poll_slot(s, index);
                }
            }
            progress |= self.post_done(s, life);
            if life == Lifecycle::Ready {
                progress |= self.fetch(s);
            }
            if !progress {
                break;
            }
        }
        self.signal(s);
        if self.running() != 0 {
            // A slot's wake consumes the registration: renew it, then look
            // again for wakes that came before it.
            self.ready.register(&self.waker);
            if self.ready.any() {
                self.waker.wake_by_ref();
            }
        }
        if life == Lifecycle::Ready && !self.free.is_empty() && self.has_queued(s) {
            // Budget spent with work left: run again on the next pass.
            self.waker.wake_by_ref();
        }
        self.finish_deletes(s);
        matches!(life, Lifecycle::Resetting | Lifecycle::ShuttingDown) && self.running() == 0
    }

    fn refresh_namespaces(&mut self, s: &Shared, generation: u64) {
        let ns = s.namespaces.lock();
        self.ns.disks.clear();
        self.ns.disks.extend(ns.disks());
        self.ns.max = ns.max();
        self.ns.generation = Some(generation);
    }

    fn has_queued(&self, s: &Shared) -> bool {
        let mem: &dyn GuestMemory = &*s.mem;
        if self.sqs.iter().any(|q| q.shadow.is_some()) {
            // The EventIdx stores of this pass before the shadow tail
            // loads below: a host that queued an entry without ringing
            // (it saw an old EventIdx) is seen here.
            core::sync::atomic::fence(Ordering::SeqCst);
        }
        self.sqs
            .iter()
            .any(|sq| !sq.deleting && sq.has_entries(sq.tail(mem, &s.doorbells)))
    }

    /// Fetches commands round robin over the SQs while slots are free.
    fn fetch(&mut self, s: &Shared) -> bool {
        let mem: &dyn GuestMemory = &*s.mem;
        let mut progress = false;
        let n = self.sqs.len();
        let mut idle = 0;
        while !self.free.is_empty() && n > 0 && idle < n {
            let i = if self.next_sq < n { self.next_sq } else { 0 };
            self.next_sq = i + 1;
            let sq = &mut self.sqs[i];
            let tail = sq.tail(mem, &s.doorbells);
            if sq.deleting || !sq.has_entries(tail) {
                sq.publish_event_idx(mem, tail);
                idle += 1;
                continue;
            }
            idle = 0;
            // The loop runs only with a free slot: take it before the
            // entry, so a fetched command always has one.
            let Some(index) = self.free.pop() else {
                break;
            };
            let sqe = match sq.fetch(mem) {
                Ok(sqe) => sqe,
                Err(_) => {
                    self.free.push(index);
                    // The ring was checked at creation; memory that went
                    // away under it is a fatal controller error.
                    crate::regs::fatal(s);
                    return progress;
                }
            };
            sq.outstanding += 1;
            let sqid = sq.qid;
            if !sq.has_entries(tail) {
                sq.publish_event_idx(mem, tail);
            }
            let slot = &mut self.slots[index];
            slot.busy = true;
            slot.sqid = sqid;
            slot.sqe = sqe;
            slot.done = None;
            self.start(s, index);
            progress = true;
        }
        progress
    }

    /// Starts the command in slot `index`: answered at once (aborted,
    /// no such namespace) or its future started and polled once.
    fn start(&mut self, s: &Shared, index: usize) {
        let slot = &mut self.slots[index];
        let sqe = slot.sqe;
        let cid = sqe.cdw0.cid();
        if let Some(pos) = self
            .aborts
            .iter()
            .position(|&(q, c)| q == slot.sqid && c == cid)
        {
            self.aborts.swap_remove(pos);
            self.finish(
                index,
                Completion::status(StatusWord::generic(GenericStatus::ABORT_REQUESTED)),
            );
            return;
        }
        let nsid = sqe.nsid.get();
        let Some(disk) = self.ns.disks.get(nsid as usize).and_then(|d| d.as_ref()) else {
            // Base 2.0 3.2.1.5: an inactive NSID (valid, 1..=NN, nothing
            // attached) is an invalid field; Invalid Namespace or Format
            // is for NSIDs that are not valid (0, above NN, and the
            // broadcast value, which no I/O command here accepts).
            let code = if nsid == 0 || nsid > self.ns.max {
                GenericStatus::INVALID_NAMESPACE_OR_FORMAT
            } else {
                GenericStatus::INVALID_FIELD_IN_COMMAND
            };
            let status = StatusWord::generic(code).with_dnr(true);
            // Logged like any failed command; the field in error is the
            // NSID (byte 4 of the entry).
            let outcome = IoOutcome {
                status,
                dw0: 0,
                bytes_read: 0,
                bytes_written: 0,
                lba: 0,
                param_error_location: 4,
                reservation_changed: false,
            };
            self.account(s, index, &outcome);
            self.finish(index, Completion::status(status));
            return;
        };
        // A disk that completes inline (RAM) runs Read/Write/Flush here,
        // with no future and no handle cloned.
        if let Some(outcome) = io::execute_now(&*s.mem, disk, &sqe, &self.params, &mut slot.spare) {
            self.account(s, index, &outcome);
            self.finish(
                index,
                Completion {
                    status: outcome.status,
                    dw0: outcome.dw0,
                },
            );
            return;
        }
        let disk = disk.clone();
        let mem = s.mem.clone();
        let scratch = s.scratch.clone();
        let params = self.params;
        let mut ranges = core::mem::take(&mut slot.spare);
        ranges.clear();
        let future = SlotFuture::from_or_box(async move {
            let outcome = io::execute(&*mem, &disk, &sqe, &params, &scratch, &mut ranges).await;
            (outcome, ranges)
        });
        let storage = slot.future.get_or_insert_with(|| Box::pin(None));
        storage.as_mut().set(Some(future));
        self.poll_slot(s, index);
    }

    /// Polls slot `index`'s future; whether it finished.
    fn poll_slot(&mut self, s: &Shared, index: usize) -> bool {
        let Self { slots, ready, .. } = self;
        let Some(slot) = slots.get_mut(index) else {
            return false;
        };
        let Some(storage) = slot.future.as_mut() else {
            return false;
        };
        let Some(future) = storage.as_mut().as_pin_mut() else {
            return false;
        };
        let Some(waker) = ready.waker(index) else {
            return false;
        };
        let mut cx = Context::from_waker(waker);
        let (outcome, ranges) = match future.poll(&mut cx) {
            Poll::Ready(out) => out,
            Poll::Pending => return false,
        };
        storage.as_mut().set(None);
        slot.spare = ranges;
        self.account(s, index, &outcome);
        self.finish(
            index,
            Completion {
                status: outcome.status,
                dw0: outcome.dw0,
            },
        );
        true
    }

    /// Counts a finished command for SMART and logs a failure.
    fn account(&mut self, s: &Shared, index: usize, outcome: &IoOutcome) {
        let slot = &self.slots[index];
        let op = NvmOpcode::new(slot.sqe.cdw0.opc());
        let st = &mut self.stats;
        // Counters saturate: restored state is untrusted and a counter
        // must never overflow.
        st.bytes_read = st.bytes_read.saturating_add(outcome.bytes_read);
        st.bytes_written = st.bytes_written.saturating_add(outcome.bytes_written);
        if outcome.status.is_success() {
            match op {
                NvmOpcode::READ | NvmOpcode::COMPARE | NvmOpcode::VERIFY => {
                    st.read_commands = st.read_commands.saturating_add(1)
                }
                NvmOpcode::WRITE | NvmOpcode::WRITE_ZEROES | NvmOpcode::WRITE_UNCORRECTABLE => {
                    st.write_commands = st.write_commands.saturating_add(1)
                }
                _ => {}
            }
            return;
        }
        if outcome.status.sct() == StatusCodeType::MEDIA {
            st.media_errors = st.media_errors.saturating_add(1);
        }
        let mut entry = ErrorLogEntry::new_zeroed();
        entry.sqid = U16::new(slot.sqid);
        entry.cid = U16::new(slot.sqe.cdw0.cid());
        entry.status = U16::new(outcome.status.into_bits());
        entry.parameter_error_location = U16::new(outcome.param_error_location);
        entry.lba = U64::new(outcome.lba);
        entry.nsid = U32::new(slot.sqe.nsid.get());
        s.events.lock().log_error(entry);
    }

    /// Marks slot `index` finished with `completion`, to be posted.
    fn finish(&mut self, index: usize, completion: Completion) {
        if let Some(slot) = self.slots.get_mut(index) {
            slot.done = Some(completion);
            self.done.push_back(index);
        }
    }

    /// Posts finished commands while the CQ has room (or discards them
    /// during a reset); whether any was posted or discarded.
    fn post_done(&mut self, s: &Shared, life: Lifecycle) -> bool {
        if self.done.is_empty() {
            return false;
        }
        let mem: &dyn GuestMemory = &*s.mem;
        let discard = matches!(life, Lifecycle::Resetting | Lifecycle::Fatal);
        if let Some(cq) = self.cq.as_mut() {
            cq.refresh_head(mem, &s.doorbells);
        }
        let mut progress = false;
        while let Some(&index) = self.done.front() {
            let slot = &self.slots[index];
            let Some(done) = slot.done else {
                self.done.pop_front();
                continue;
            };
            let sqid = slot.sqid;
            let cid = slot.sqe.cdw0.cid();
            let sq_pos = self.sqs.iter().position(|q| q.qid == sqid);
            if !discard {
                let Some(cq) = self.cq.as_mut() else {
                    break;
                };
                if cq.is_full() {
                    // Wake on the host's next head update, then look
                    // again in case it came before the arming.
                    s.doorbells.arm(Doorbell::CqHead(cq.qid));
                    cq.refresh_head(mem, &s.doorbells);
                    if cq.is_full() {
                        break;
                    }
                }
                let sqhd = sq_pos.map_or(0, |p| self.sqs[p].head);
                let cqe = Cqe {
                    dw0: U32::new(done.dw0),
                    dw1: U32::new(0),
                    sqhd: U16::new(sqhd as u16),
                    sqid: U16::new(sqid),
                    cid: U16::new(cid),
                    status: CqeStatus::new().with_status(done.status),
                };
                if cq.post(mem, cqe).is_err() {
                    crate::regs::fatal(s);
                    return progress;
                }
                self.interrupt = true;
            }
            self.done.pop_front();
            if let Some(p) = sq_pos {
                let sq = &mut self.sqs[p];
                sq.outstanding = sq.outstanding.saturating_sub(1);
            }
            let slot = &mut self.slots[index];
            slot.busy = false;
            slot.done = None;
            self.free.push(index);
            progress = true;
        }
        progress
    }

    /// Signals the CQ's vector if entries were posted since the last time.
    fn signal(&mut self, s: &Shared) {
        if !self.interrupt {
            return;
        }
        self.interrupt = false;
        if let Some(cq) = &self.cq
            && cq.ien
        {
            crate::regs::interrupt(s, cq.iv);
        }
    }

    /// Removes SQs being deleted whose commands have all completed, and
    /// tells the admin worker (which completes the Delete command).
    fn finish_deletes(&mut self, s: &Shared) {
        if !self.sqs.iter().any(|q| q.deleting) {
            return;
        }
        let before = self.sqs.len();
        self.sqs.retain(|sq| {
            let gone = sq.deleting && sq.outstanding == 0;
            if gone {
                s.doorbells.close(Doorbell::SqTail(sq.qid));
            }
            !gone
        });
        if self.sqs.len() != before {
            s.admin_deleted_sq();
        }
    }

    /// Attaches SQ `sq` to this worker.
    pub(crate) fn attach(&mut self, sq: Sq) {
        self.sqs.push(sq);
    }
}

impl Shared {
    /// An SQ finished deleting: the admin worker completes its command.
    pub(crate) fn admin_deleted_sq(&self) {
        self.wakeups.wake(Shared::ADMIN);
    }
}
