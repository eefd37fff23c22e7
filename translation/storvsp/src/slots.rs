//! A channel's requests in flight: explicit records in fixed slots, each
//! with its own waker, so a pass polls only the requests that were woken.

use super::ScsiPath;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::pin::Pin;
use core::task::Waker;
use parastor_core::GpaRange;
use parastor_core::ready::ReadySet;
use parastor_hw::storvsp::{ScsiRequest, SrbStatus};
use parastor_scsi::ScsiResult;
use parastor_vmbus::Reservation;
use stackfuture::StackFuture;

/// Bytes a request's future may take in its slot before it is boxed
/// instead (a size test keeps the SCSI disk's futures within it).
pub(crate) const SLOT_FUTURE_BYTES: usize = 2048;

/// What a slot's future returns: the command's outcome (`None`: the data
/// buffer could not be built), and the ranges vector it borrowed, handed
/// back for the next request.
pub(crate) type SlotOutput = (Option<ScsiResult>, Vec<GpaRange>);

/// A request's command, running on its LUN.
pub(crate) type SlotFuture<'a> = StackFuture<'a, SlotOutput, SLOT_FUTURE_BYTES>;

/// What an `EXECUTE_SRB` resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrbAnswer {
    /// An SRB status with no SCSI status, sense or data.
    Srb(SrbStatus),
    /// A SCSI outcome.
    Scsi(ScsiResult),
}

impl SrbAnswer {
    /// The answer for a command future's output (`None`: the data buffer
    /// could not be built).
    pub(crate) fn of(result: Option<ScsiResult>) -> Self {
        result.map_or(Self::Srb(SrbStatus::INVALID_REQUEST), Self::Scsi)
    }
}

/// Where a request in flight stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Taken from the ring; its command has not started, so nothing of it
    /// has reached a disk.
    Queued,
    /// Its command is running: a disk may hold its buffers. It is awaited
    /// to the end, also when the channel fails.
    Submitted,
    /// Its command finished with this answer; the completion is not
    /// written yet.
    Done(SrbAnswer),
}

/// One `EXECUTE_SRB` in flight, as the guest sent it: enough to answer it,
/// to run it again, or to save it.
#[derive(Debug)]
pub struct RequestRecord {
    transaction_id: u64,
    reply_len: usize,
    srb: ScsiRequest,
    ranges: Vec<GpaRange>,
    lun: ScsiPath,
    /// Ring space for the completion, taken before the packet was read.
    reservation: Option<Reservation>,
    phase: Phase,
}

impl RequestRecord {
    fn empty() -> Self {
        Self {
            transaction_id: 0,
            reply_len: 0,
            srb: zerocopy::FromZeros::new_zeroed(),
            ranges: Vec::new(),
            lun: ScsiPath::new(0, 0, 0),
            reservation: None,
            phase: Phase::Queued,
        }
    }

    /// The guest's transaction id, echoed in the completion.
    pub fn transaction_id(&self) -> u64 {
        self.transaction_id
    }

    /// Payload bytes of the completion (the request's own size).
    pub fn reply_len(&self) -> usize {
        self.reply_len
    }

    /// The SRB as received.
    pub fn srb(&self) -> &ScsiRequest {
        &self.srb
    }

    /// The request's data buffer: GPA ranges as received.
    pub fn ranges(&self) -> &[GpaRange] {
        &self.ranges
    }

    /// The LUN addressed.
    pub fn lun(&self) -> ScsiPath {
        self.lun
    }

    /// Bytes of outgoing ring space held for the completion.
    pub fn reserved_bytes(&self) -> u32 {
        self.reservation.as_ref().map_or(0, Reservation::bytes)
    }

    /// Where the request stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }
}

/// One request slot: its record, its future's storage (allocated on first
/// use and reused by every later request in the slot).
pub(crate) struct Slot<'a> {
    busy: bool,
    pub(crate) record: RequestRecord,
    future: Option<Pin<Box<Option<SlotFuture<'a>>>>>,
    /// The ranges vector lent to the command future (kept, with its
    /// capacity, between requests).
    spare: Vec<GpaRange>,
}

/// The fields of a request taken from the ring.
pub(crate) struct NewRequest<'p> {
    pub(crate) transaction_id: u64,
    pub(crate) reply_len: usize,
    pub(crate) srb: ScsiRequest,
    pub(crate) ranges: &'p [GpaRange],
    pub(crate) lun: ScsiPath,
    pub(crate) reservation: Reservation,
}

/// A channel's request slots, sized to its queue depth.
pub(crate) struct Slots<'a> {
    slots: Box<[Slot<'a>]>,
    /// Free slot indices (a stack: the slot freed last, whose future box is
    /// warm, is used next).
    free: Vec<usize>,
    ready: ReadySet,
    /// Slot futures polled, ever (for tests of the per-completion cost).
    polls: u64,
}

impl<'a> Slots<'a> {
    /// `depth` free slots (at least one).
    pub(crate) fn new(depth: usize) -> Self {
        let depth = depth.max(1);
        let ready = ReadySet::new(depth);
        let slots = (0..depth)
            .map(|_| Slot {
                busy: false,
                record: RequestRecord::empty(),
                future: None,
                spare: Vec::new(),
            })
            .collect();
        Self {
            slots,
            free: (0..depth).rev().collect(),
            ready,
            polls: 0,
        }
    }

    /// Slots in use.
    pub(crate) fn busy(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether every slot is in use.
    pub(crate) fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Slot futures polled so far.
    pub(crate) fn polls(&self) -> u64 {
        self.polls
    }

    /// The records of the requests in flight, in slot order.
    pub(crate) fn records(&self) -> impl Iterator<Item = &RequestRecord> {
        self.slots.iter().filter(|s| s.busy).map(|s| &s.record)
    }

    /// Wakes the worker's task (`waker`) when any slot is woken.
    pub(crate) fn register(&self, waker: &Waker) {
        self.ready.register(waker);
    }

    /// Whether a slot was woken since the last [`Slots::poll_ready`].
    pub(crate) fn any_ready(&self) -> bool {
        self.ready.any()
    }

    /// Takes a free slot for `req`, `Queued`; gives `req` back if all are
    /// busy.
    pub(crate) fn take<'p>(&mut self, req: NewRequest<'p>) -> Result<usize, NewRequest<'p>> {
        let Some(index) = self.free.pop() else {
            return Err(req);
        };
        let slot = &mut self.slots[index];
        slot.busy = true;
        let r = &mut slot.record;
        r.transaction_id = req.transaction_id;
        r.reply_len = req.reply_len;
        r.srb = req.srb;
        r.ranges.clear();
        r.ranges.extend_from_slice(req.ranges);
        r.lun = req.lun;
        r.reservation = Some(req.reservation);
        r.phase = Phase::Queued;
        Ok(index)
    }

    /// Lends slot `index`'s ranges vector, filled with its request's
    /// ranges, to a command future (which hands it back in its output).
    pub(crate) fn lend_ranges(&mut self, index: usize) -> Vec<GpaRange> {
        let slot = &mut self.slots[index];
        let mut v = core::mem::take(&mut slot.spare);
        v.clear();
        v.extend_from_slice(&slot.record.ranges);
        v
    }

    /// Starts `future` in slot `index` (its storage reused) and polls it
    /// once: `Some` if it finished at once. Otherwise the request is
    /// `Submitted` and its waker set the slot's ready bit when it can go on.
    pub(crate) fn start(&mut self, index: usize, future: SlotFuture<'a>) -> Option<SrbAnswer> {
        let slot = &mut self.slots[index];
        let storage = slot.future.get_or_insert_with(|| Box::pin(None));
        storage.as_mut().set(Some(future));
        slot.record.phase = Phase::Submitted;
        self.poll(index)
    }

    /// Polls slot `index`'s future if it has one; its answer when it is
    /// done (the record is then `Done`, the future gone).
    fn poll(&mut self, index: usize) -> Option<SrbAnswer> {
        let Self {
            slots,
            polls,
            ready,
            ..
        } = self;
        let slot = slots.get_mut(index)?;
        if !slot.busy {
            return None;
        }
        let storage = slot.future.as_mut()?;
        let future = storage.as_mut().as_pin_mut()?;
        *polls += 1;
        let mut cx = core::task::Context::from_waker(ready.waker(index)?);
        let (result, ranges) = match future.poll(&mut cx) {
            core::task::Poll::Ready(out) => out,
            core::task::Poll::Pending => return None,
        };
        storage.as_mut().set(None);
        slot.spare = ranges;
        let answer = SrbAnswer::of(result);
        slot.record.phase = Phase::Done(answer);
        Some(answer)
    }

    /// Polls every slot woken since the last call, and calls `done` with
    /// each that finished (its record `Done`).
    pub(crate) fn poll_ready<E>(
        &mut self,
        mut done: impl FnMut(&mut Self, usize, SrbAnswer) -> Result<(), E>,
    ) -> Result<bool, E> {
        let mut any = false;
        for w in 0..self.ready.words() {
            for index in self.ready.take_word(w) {
                if let Some(answer) = self.poll(index) {
                    any = true;
                    done(self, index, answer)?;
                }
            }
        }
        Ok(any)
    }

    /// Frees slot `index`: its reservation back to the caller, its future
    /// dropped (only ever one that finished, or one never started).
    pub(crate) fn release(&mut self, index: usize) -> Option<Reservation> {
        let slot = self.slots.get_mut(index)?;
        if !slot.busy {
            return None;
        }
        slot.busy = false;
        if let Some(storage) = slot.future.as_mut() {
            storage.as_mut().set(None);
        }
        self.free.push(index);
        slot.record.reservation.take()
    }

    /// The record in slot `index`.
    pub(crate) fn record(&self, index: usize) -> &RequestRecord {
        &self.slots[index].record
    }

    /// Frees every `Queued` slot (nothing of it reached a disk) and
    /// returns their reservations through `release`.
    pub(crate) fn release_queued(&mut self, mut release: impl FnMut(Reservation)) {
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.busy
                && slot.record.phase == Phase::Queued
                && let Some(r) = self.release(index)
            {
                release(r);
            }
        }
    }
}
