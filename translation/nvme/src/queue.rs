//! Submission and completion queues in guest memory, the doorbell
//! registers, and shadow doorbells with EventIdx (Doorbell Buffer Config).
//!
//! A doorbell is an atomic value plus the size of its queue (0: no such
//! queue), so a write is validated and stored without a lock. A queue's
//! ring state (head, tail, phase) belongs to the one worker that runs it.
//!
//! A completion queue entry is written in two steps: the first 14 bytes,
//! then the status word with its phase tag as one release-ordered 16-bit
//! store, so a host that sees the new phase sees the whole entry.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU32, Ordering};
use parastor_core::{Access, Gpa, GpaRange, GuestMemory, GuestMemoryExt, MemoryError};
use parastor_hw::nvme::features::ErrorEventInfo;
use parastor_hw::nvme::queue::{CQE_LEN, Cqe, SQE_LEN, Sqe};
use parastor_hw::nvme::regs::{Doorbell, offset};
use zerocopy::IntoBytes;

/// CAP.DSTRD: doorbells are 4 bytes apart.
pub(crate) const DSTRD: u8 = 0;

/// The first BAR0 byte past the doorbells of `qids` queue IDs.
pub(crate) fn doorbell_end(qids: u64) -> u64 {
    offset::DOORBELLS + qids * 2 * (4 << DSTRD)
}

/// The index of a doorbell in the doorbell table (and in a shadow buffer).
pub(crate) fn doorbell_index(db: Doorbell) -> usize {
    match db {
        Doorbell::SqTail(q) => 2 * usize::from(q),
        Doorbell::CqHead(q) => 2 * usize::from(q) + 1,
    }
}

/// One doorbell register.
#[derive(Default)]
struct DoorbellSlot {
    value: AtomicU32,
    /// Entries in the queue; 0 when the queue does not exist.
    size: AtomicU32,
    /// The worker to wake on a write (an SQ's completion queue).
    target: AtomicU32,
    /// A CQ head doorbell wakes its worker only when the worker waits
    /// for room (it set this); other head updates are just stored.
    armed: core::sync::atomic::AtomicBool,
}

/// Every doorbell register of the controller.
pub(crate) struct Doorbells {
    slots: Box<[DoorbellSlot]>,
}

impl Doorbells {
    /// Doorbells for queue IDs `0..qids`, no queue open.
    pub(crate) fn new(qids: usize) -> Self {
        Self {
            slots: (0..qids * 2).map(|_| DoorbellSlot::default()).collect(),
        }
    }

    fn slot(&self, db: Doorbell) -> Option<&DoorbellSlot> {
        self.slots.get(doorbell_index(db))
    }

    /// Opens `db` for a queue of `size` entries whose writes wake worker
    /// `target`; its value starts at `value`.
    pub(crate) fn open(&self, db: Doorbell, size: u32, target: usize, value: u32) {
        if let Some(s) = self.slot(db) {
            s.value.store(value, Ordering::Release);
            s.target.store(target as u32, Ordering::Release);
            s.size.store(size, Ordering::Release);
        }
    }

    /// Closes `db`: its queue was deleted.
    pub(crate) fn close(&self, db: Doorbell) {
        if let Some(s) = self.slot(db) {
            s.size.store(0, Ordering::Release);
            s.value.store(0, Ordering::Release);
        }
    }

    /// Closes every doorbell (controller reset).
    pub(crate) fn close_all(&self) {
        for s in self.slots.iter() {
            s.size.store(0, Ordering::Release);
            s.value.store(0, Ordering::Release);
        }
    }

    /// The value last written to `db`.
    pub(crate) fn value(&self, db: Doorbell) -> u32 {
        self.slot(db).map_or(0, |s| s.value.load(Ordering::SeqCst))
    }

    /// Stores a guest write to `db`: the worker to wake (if any), or the
    /// asynchronous error the write raises (no such queue, or a value
    /// beyond the queue).
    pub(crate) fn write(&self, db: Doorbell, value: u32) -> Result<Option<usize>, ErrorEventInfo> {
        let slot = self
            .slot(db)
            .ok_or(ErrorEventInfo::INVALID_DOORBELL_REGISTER)?;
        let size = slot.size.load(Ordering::Acquire);
        if size == 0 {
            return Err(ErrorEventInfo::INVALID_DOORBELL_REGISTER);
        }
        if value >= size {
            return Err(ErrorEventInfo::INVALID_DOORBELL_VALUE);
        }
        slot.value.store(value, Ordering::SeqCst);
        if let Doorbell::CqHead(_) = db
            && !slot.armed.swap(false, Ordering::SeqCst)
        {
            return Ok(None);
        }
        Ok(Some(slot.target.load(Ordering::Acquire) as usize))
    }

    /// Asks for a wake on the next write to `db` (a CQ head the worker
    /// waits on). The caller re-reads the value afterwards, so a write
    /// racing with this is not lost.
    pub(crate) fn arm(&self, db: Doorbell) {
        if let Some(s) = self.slot(db) {
            s.armed.store(true, Ordering::SeqCst);
        }
    }
}

/// Where a queue's shadow doorbell and EventIdx live in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shadow {
    /// The shadow doorbell (the host writes its tail/head here).
    pub(crate) db: u64,
    /// The EventIdx (the controller writes what it has seen here).
    pub(crate) event_idx: u64,
}

impl Shadow {
    /// The shadow slots of `db` in buffers at `db_base` / `ei_base`.
    pub(crate) fn of(db: Doorbell, db_base: u64, ei_base: u64) -> Self {
        let at = doorbell_index(db) as u64 * (4 << DSTRD);
        Self {
            db: db_base + at,
            event_idx: ei_base + at,
        }
    }

    /// The host's value, if it is a valid index for a queue of `size`.
    fn read(&self, mem: &dyn GuestMemory, size: u32) -> Option<u32> {
        let v = mem.load_u32(Gpa::new(self.db), Ordering::Acquire).ok()?;
        (v < size).then_some(v)
    }

    /// Publishes the index the controller has seen.
    fn publish(&self, mem: &dyn GuestMemory, value: u32) {
        // A failure here only costs the host an MMIO write later.
        let _ = mem.store_u32(Gpa::new(self.event_idx), value, Ordering::Release);
    }
}

/// Checks that a queue of `entries` entries of `entry_len` bytes at `gpa`
/// lies in guest memory.
pub(crate) fn check_ring(
    mem: &dyn GuestMemory,
    gpa: u64,
    entries: u32,
    entry_len: usize,
) -> Result<(), MemoryError> {
    let len = u64::from(entries) * entry_len as u64;
    mem.check(GpaRange::new(Gpa::new(gpa), len), Access::ReadWrite)
}

/// A submission queue.
#[derive(Clone, Debug)]
pub(crate) struct Sq {
    pub(crate) qid: u16,
    pub(crate) gpa: u64,
    pub(crate) size: u32,
    /// The next entry the controller reads.
    pub(crate) head: u32,
    pub(crate) cqid: u16,
    pub(crate) shadow: Option<Shadow>,
    /// Deletion was asked: nothing more is fetched.
    pub(crate) deleting: bool,
    /// Commands fetched and not completed.
    pub(crate) outstanding: u32,
}

impl Sq {
    /// The host's tail: the shadow doorbell when there is one, else the
    /// register.
    pub(crate) fn tail(&self, mem: &dyn GuestMemory, doorbells: &Doorbells) -> u32 {
        let register = doorbells.value(Doorbell::SqTail(self.qid));
        match &self.shadow {
            Some(s) => s.read(mem, self.size).unwrap_or(register),
            None => register,
        }
    }

    /// Whether the host has queued entries past `head` (given its tail).
    pub(crate) fn has_entries(&self, tail: u32) -> bool {
        self.head != tail
    }

    /// Reads the entry at `head` and advances `head`.
    pub(crate) fn fetch(&mut self, mem: &dyn GuestMemory) -> Result<Sqe, MemoryError> {
        let gpa = Gpa::new(self.gpa + u64::from(self.head) * SQE_LEN as u64);
        let sqe = mem.read_obj::<Sqe>(gpa)?;
        self.head = (self.head + 1) % self.size;
        Ok(sqe)
    }

    /// Publishes the tail the controller has seen to the EventIdx.
    pub(crate) fn publish_event_idx(&self, mem: &dyn GuestMemory, tail: u32) {
        if let Some(s) = &self.shadow {
            s.publish(mem, tail);
        }
    }
}

/// A completion queue.
#[derive(Clone, Debug)]
pub(crate) struct Cq {
    pub(crate) qid: u16,
    pub(crate) gpa: u64,
    pub(crate) size: u32,
    /// The next entry the controller writes.
    pub(crate) tail: u32,
    /// The phase tag of the entries being written now.
    pub(crate) phase: bool,
    /// The host's head as last read.
    pub(crate) head: u32,
    /// Interrupts enabled.
    pub(crate) ien: bool,
    /// MSI-X vector.
    pub(crate) iv: u16,
    pub(crate) shadow: Option<Shadow>,
}

impl Cq {
    /// Reads the host's head (shadow doorbell or register).
    pub(crate) fn refresh_head(&mut self, mem: &dyn GuestMemory, doorbells: &Doorbells) {
        let register = doorbells.value(Doorbell::CqHead(self.qid));
        self.head = match &self.shadow {
            Some(s) => {
                let h = s.read(mem, self.size).unwrap_or(register);
                s.publish(mem, h);
                h
            }
            None => register,
        };
    }

    /// Whether no entry can be written before the host consumes some.
    pub(crate) fn is_full(&self) -> bool {
        (self.tail + 1) % self.size == self.head
    }

    /// Writes `cqe` (its phase tag set here) at the tail and advances it.
    pub(crate) fn post(&mut self, mem: &dyn GuestMemory, mut cqe: Cqe) -> Result<(), MemoryError> {
        cqe.status = cqe.status.with_p(self.phase);
        let gpa = Gpa::new(self.gpa + u64::from(self.tail) * CQE_LEN as u64);
        let bytes = cqe.as_bytes();
        mem.write_at(gpa, &bytes[..14])?;
        mem.store_u16(gpa + 14, cqe.status.into_bits().get(), Ordering::Release)?;
        self.tail += 1;
        if self.tail == self.size {
            self.tail = 0;
            self.phase = !self.phase;
        }
        Ok(())
    }
}
