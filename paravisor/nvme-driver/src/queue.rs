//! One submission/completion queue pair in DMA memory, with its command
//! slots.
//!
//! A command occupies a slot from reservation until its completion is
//! taken (or, for a detached command, until the device completes it). The
//! slot holds everything the device may still use: the pins of the
//! caller's buffer or a bounce buffer, and its own PRP list / SGL segment
//! page. The command identifier is the slot index plus a sequence number
//! (bumped on every reuse), so a late, repeated or invented completion is
//! recognised and refused instead of completing the wrong request.
//!
//! There is no completion task: whichever waiter polls drains the
//! completion queue and wakes the owners of the commands it found done.
//! One waiter at a time (the queue's *interrupt owner*) is registered with
//! the queue's MSI-X event; the others sleep on their slot's waker. An
//! owner that finishes or is dropped while others still wait hands the
//! registration on (see [`QueuePair::arm`]), so a completion always has a
//! waiter to wake and a burst of completions costs one registration.
//!
//! The completion queue head doorbell is written once `cq_batch`
//! completions have been consumed since the last write, not after every
//! drain (every doorbell write costs the controller a look at the queue).
//! The slots are sized so that the controller can never find the
//! completion queue full: at most `cq_batch - 1` consumed entries go
//! unannounced and at most `size - cq_batch` commands are outstanding.

use crate::device::{DeviceAccess, DeviceInterrupt, DmaBuffer};
use crate::error::Failure;
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use core::task::{Context, Poll, Waker};
use parastor_core::addr::DeviceRange;
use parastor_core::bounce::BounceBuffer;
use parastor_core::pin::{PinError, PinSet};
use parastor_core::sg::SgList;
use parastor_core::sync::Mutex;
use parastor_hw::nvme::data::RawSglDescriptor;
use parastor_hw::nvme::data::SglDescriptorType;
use parastor_hw::nvme::queue::{CQE_LEN, Cqe, DataTransferKind, SQE_LEN, Sqe};
use parastor_hw::nvme::regs::Doorbell;
use parastor_hw::nvme::status::{GenericStatus, StatusWord};
use zerocopy::{FromBytes, IntoBytes};

/// The memory page size the driver configures (CC.MPS = 0).
pub(crate) const PAGE_SIZE: usize = 4096;
/// Bits of a command identifier that name the slot.
const SLOT_BITS: u32 = 10;
/// The most slots a queue has (the slot index must fit [`SLOT_BITS`]).
pub(crate) const MAX_SLOTS: usize = 1 << SLOT_BITS;
/// Slots with their own bounce page: bounds the DMA memory a queue takes
/// (256 KiB). The free list hands out the lowest slots first, so up to
/// this many commands in flight only ever use paged slots.
const PAGED_SLOTS: usize = 64;
/// Completion-queue drain passes one poll makes before it yields.
const POLL_BUDGET: u32 = 8;
/// The most PRP entries in a slot's list page.
const PRP_LIST_ENTRIES: usize = PAGE_SIZE / 8;
/// The most SGL descriptors in a slot's segment page.
const SGL_SEGMENT_DESCRIPTORS: usize = PAGE_SIZE / 16;

/// How data pointers are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPointer {
    /// PRPs whenever the buffer can be described by them; an SGL (if the
    /// controller supports SGLs) otherwise; a bounce buffer as the last
    /// resort.
    Auto,
    /// PRPs only: buffers PRPs cannot describe are bounced.
    Prp,
    /// SGLs whenever the controller supports them (PRPs if not).
    Sgl,
}

/// What the controller accepts for SGLs (from Identify Controller SGLS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SglSupport {
    /// No SGLs.
    None,
    /// SGLs, any byte alignment.
    Any,
    /// SGLs whose data blocks are dword aligned in address and length.
    DwordAligned,
}

/// A completed command: its status word (without the phase tag) and DW0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Completed {
    pub(crate) status: u16,
    pub(crate) dw0: u32,
    pub(crate) dw1: u32,
}

enum SlotState {
    Free,
    /// Held by a caller that is preparing the command.
    Reserved,
    /// Given to the device. `detached`: its caller dropped the future.
    Submitted {
        detached: bool,
    },
    /// The device completed it (or the queue failed it); not yet taken.
    Done(Result<Completed, Failure>),
    /// Failed while the device still had it, and the device was not
    /// proven stopped: the slot keeps the command's pins, bounce buffer
    /// and list page (the device may still reach them) until
    /// [`QueuePair::release_held`].
    Held,
    /// Failed with this while the device still had it and was not proven
    /// stopped, and the command reaches the caller's own memory (direct
    /// pins, no bounce buffer): the caller is not answered until the
    /// device is proven stopped ([`QueuePair::release_held`]) or the
    /// driver gives up proving it ([`QueuePair::give_up_held`]), so it
    /// cannot reuse memory the device may still write. Counted as held.
    Failing(Failure),
}

/// Where a command stands with the watchdog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    /// Not expired (or never timed: the Asynchronous Event Request).
    Quiet,
    /// Expired; an Abort was sent at this coarse instant (ms).
    Aborted(u64),
}

struct Slot {
    seq: u16,
    state: SlotState,
    waker: Option<Waker>,
    pins: PinSet,
    bounce: Option<BounceBuffer>,
    /// The command's data is in this slot's own bounce page
    /// ([`QueuePair::pages`]): the page is the slot's, so it is held (and
    /// never reused) exactly as long as the slot is.
    paged: bool,
    /// The caller copies the paged data out after completion: the
    /// completed slot stays its guard's until dropped.
    page_out: bool,
    /// DMA memory of the driver's own that the command's data pointer
    /// names (an admin command's data buffer): kept until the slot frees.
    keep: Option<Arc<DmaBuffer>>,
    /// The coarse instant (ms, [`Health::now_ms`]) the command was given
    /// to the device.
    submitted_at: u64,
    /// Whether the watchdog times this command (not the AER).
    timed: bool,
    watch: Watch,
    /// When the command fails while the device may still hold it: keep
    /// the slot's buffers ([`SlotState::Held`]) instead of freeing them.
    hold: bool,
}

/// Whether new commands may be submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Running.
    Open,
    /// Being reset: submissions wait.
    Closed,
    /// Failed for good: submissions fail.
    Dead(Failure),
}

struct State {
    sq_tail: u16,
    /// The SQ head the controller last reported (CQE SQHD).
    sq_head: u16,
    cq_head: u16,
    phase: bool,
    epoch: u32,
    gate: Gate,
    slots: Box<[Slot]>,
    free: Vec<u16>,
    outstanding: usize,
    /// Futures waiting for a slot or an open gate, each under its own
    /// registration number (removed when the future ends or is dropped,
    /// so a cancelled waiter neither stays nor swallows a wakeup).
    waiters: Vec<(u64, Waker)>,
    /// The last waiter registration number given.
    next_waiter: u64,
    /// Completions refused (unknown or stale command id, wrong SQ, bad
    /// SQ head): each one failed the queue.
    refused: u64,
    /// Slots in [`SlotState::Held`].
    held: usize,
    /// Saved for a keepalive: the completion queue belongs to the next
    /// driver instance and is no longer read.
    frozen: bool,
    /// The gate is [`Gate::Dead`] only because the controller granted
    /// fewer queues than this one's QID ([`QueuePair::retire`]): a later
    /// grant that includes it opens it again.
    retired: bool,
    /// The slot whose waiter is registered with the interrupt.
    irq_owner: Option<usize>,
    /// One bit per slot whose command is the device's and whose caller
    /// has not dropped it (`Submitted { detached: false }`): where the
    /// next interrupt owner is found without scanning every slot.
    awaited: Box<[u64]>,
    /// Completion entries consumed since the head doorbell was written.
    cq_unannounced: u16,
    /// The head last announced.
    cq_announced: u16,
    /// Shadow doorbells, once Doorbell Buffer Config set them up.
    shadow: Option<Shadow>,
    /// A command whose waiter was dropped but whose completion is kept
    /// for the next waiter to adopt (the Asynchronous Event Request).
    parked: Option<usize>,
}

/// The shadow doorbell buffer and the EventIdx buffer (one page each,
/// shared by every I/O queue), as Doorbell Buffer Config set them up.
#[derive(Debug)]
pub(crate) struct ShadowPages {
    pub(crate) doorbells: DmaBuffer,
    pub(crate) event_idx: DmaBuffer,
}

/// Leaves shared shadow pages to the device ([`DmaBuffer::leave_to_device`])
/// once the last holder lets go; an earlier holder only drops its share.
pub(crate) fn leave_shadow(pages: Arc<ShadowPages>) {
    if let Ok(pages) = Arc::try_unwrap(pages) {
        pages.doorbells.leave_to_device();
        pages.event_idx.leave_to_device();
    }
}

/// [`leave_shadow`] for one shared buffer.
fn leave_shared(buf: Arc<DmaBuffer>) {
    if let Ok(buf) = Arc::try_unwrap(buf) {
        buf.leave_to_device();
    }
}

/// A queue's slots in the shadow pages.
struct Shadow {
    pages: Arc<ShadowPages>,
    sq: usize,
    cq: usize,
}

/// Whether moving a doorbell from `old` to `new` passes `event_idx`, the
/// index the controller asked to be told about (the virtio-style test
/// Linux uses for NVMe shadow doorbells).
fn need_event(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}

/// What every queue of one controller shares with the driver: the coarse
/// clock commands are stamped with, and the first completion a queue
/// could not accept (which fails the controller).
pub(crate) struct Health {
    /// Coarse monotonic milliseconds: set by the driver from its clock
    /// (at bring-up and every watchdog period), read by each submission —
    /// a command's timestamp costs one relaxed load, not a clock read.
    pub(crate) now_ms: AtomicU64,
    /// The first violation a queue saw, if any.
    violation: Mutex<Option<&'static str>>,
    /// Set with `violation` (a lock-free test for the I/O path).
    violated: AtomicBool,
    /// The watchdog, to be woken on a violation.
    watchdog: Mutex<Option<Waker>>,
}

impl Health {
    pub(crate) fn new() -> Self {
        Self {
            now_ms: AtomicU64::new(0),
            violation: Mutex::new(None),
            violated: AtomicBool::new(false),
            watchdog: Mutex::new(None),
        }
    }

    /// Records a violation (the first one is kept) and wakes the watchdog.
    pub(crate) fn violate(&self, why: &'static str) {
        self.violation.lock().get_or_insert(why);
        self.violated.store(true, Ordering::Release);
        if let Some(w) = self.watchdog.lock().take() {
            w.wake();
        }
    }

    /// The first violation seen, if any.
    pub(crate) fn violation(&self) -> Option<&'static str> {
        if !self.violated.load(Ordering::Acquire) {
            return None;
        }
        *self.violation.lock()
    }

    /// Registers the watchdog's waker.
    pub(crate) fn register_watchdog(&self, waker: &Waker) {
        *self.watchdog.lock() = Some(waker.clone());
    }
}

/// What the watchdog found on one queue.
#[derive(Debug, Default)]
pub(crate) struct Expired {
    /// Command identifiers that expired now: send each an Abort.
    pub(crate) abort: Cids,
    /// A command outlived its Abort: the controller needs a reset.
    pub(crate) reset: bool,
}

/// Up to [`Cids::CAP`] command identifiers (no allocation per scan).
#[derive(Debug, Default)]
pub(crate) struct Cids {
    ids: [u16; Cids::CAP],
    len: usize,
}

impl Cids {
    /// The most Aborts one scan of a queue sends (a controller's Abort
    /// Command Limit is at least 1; more wait for the next scan).
    pub(crate) const CAP: usize = 4;

    /// Adds `cid`; false when full.
    fn push(&mut self, cid: u16) -> bool {
        match self.ids.get_mut(self.len) {
            Some(slot) => {
                *slot = cid;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The identifiers.
    pub(crate) fn as_slice(&self) -> &[u16] {
        self.ids.get(..self.len).unwrap_or(&[])
    }
}

/// One queue pair.
pub(crate) struct QueuePair {
    qid: u16,
    size: u16,
    sq: DmaBuffer,
    cq: DmaBuffer,
    lists: DmaBuffer,
    /// The 4 KiB bounce pages of the first [`PAGED_SLOTS`] slots (`pages[i]`
    /// is slot `i`'s): a bounced transfer of one page goes through its
    /// slot's page, not the driver's bounce pool. Each is taken from the
    /// device's DMA memory at the slot's first such transfer (so a queue
    /// holds only as many as it ever has such commands in flight); `None`
    /// if there was no room: that slot's bounces use the pool.
    pages: Box<[std::sync::OnceLock<Option<DmaBuffer>>]>,
    sq_doorbell: u64,
    cq_doorbell: u64,
    cq_batch: u16,
    device: Arc<dyn DeviceAccess>,
    interrupt: Arc<dyn DeviceInterrupt>,
    health: Arc<Health>,
    state: Mutex<State>,
}

/// The shape of a queue pair.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueShape {
    /// The queue identifier.
    pub(crate) qid: u16,
    /// Entries per ring (2..=4096).
    pub(crate) size: u16,
    /// CAP.DSTRD.
    pub(crate) dstrd: u8,
    /// Pinned ranges per command.
    pub(crate) max_ranges: usize,
    /// The completion head doorbell is written every `cq_batch`
    /// completions (1: after every drain).
    pub(crate) cq_batch: u16,
}

impl QueuePair {
    /// A queue pair of `shape`, interrupts on `interrupt`.
    pub(crate) fn new(
        device: Arc<dyn DeviceAccess>,
        shape: QueueShape,
        interrupt: Arc<dyn DeviceInterrupt>,
        health: Arc<Health>,
    ) -> Result<Self, Failure> {
        let QueueShape {
            qid,
            size,
            dstrd,
            max_ranges,
            cq_batch,
        } = shape;
        let size = size.clamp(2, 4096);
        let cq_batch = cq_batch.clamp(1, size / 2);
        let slots_n = usize::from(size - cq_batch).min(MAX_SLOTS);
        let sq = device
            .alloc_dma(usize::from(size) * SQE_LEN)
            .map_err(Failure::Device)?;
        let cq = device
            .alloc_dma(usize::from(size) * CQE_LEN)
            .map_err(Failure::Device)?;
        let lists = device
            .alloc_dma(slots_n * PAGE_SIZE)
            .map_err(Failure::Device)?;
        let pages = (0..slots_n.min(PAGED_SLOTS))
            .map(|_| std::sync::OnceLock::new())
            .collect();
        let slots = (0..slots_n)
            .map(|_| Slot {
                seq: 0,
                state: SlotState::Free,
                waker: None,
                pins: PinSet::with_capacity(max_ranges),
                bounce: None,
                paged: false,
                page_out: false,
                keep: None,
                submitted_at: 0,
                timed: true,
                watch: Watch::Quiet,
                hold: false,
            })
            .collect();
        let free = (0..slots_n as u16).rev().collect();
        Ok(Self {
            qid,
            size,
            sq,
            cq,
            lists,
            pages,
            sq_doorbell: Doorbell::SqTail(qid).offset(dstrd),
            cq_doorbell: Doorbell::CqHead(qid).offset(dstrd),
            cq_batch,
            device,
            interrupt,
            health,
            state: Mutex::new(State {
                sq_tail: 0,
                sq_head: 0,
                cq_head: 0,
                phase: true,
                epoch: 0,
                gate: Gate::Open,
                slots,
                free,
                outstanding: 0,
                waiters: Vec::with_capacity(slots_n),
                next_waiter: 0,
                refused: 0,
                held: 0,
                frozen: false,
                retired: false,
                irq_owner: None,
                awaited: vec![0; slots_n.div_ceil(64)].into_boxed_slice(),
                cq_unannounced: 0,
                cq_announced: 0,
                shadow: None,
                parked: None,
            }),
        })
    }

    /// The queue identifier.
    pub(crate) fn qid(&self) -> u16 {
        self.qid
    }

    /// Entries in each ring.
    pub(crate) fn size(&self) -> u16 {
        self.size
    }

    /// The submission queue's device address.
    pub(crate) fn sq_address(&self) -> u64 {
        self.sq.device_address(0)
    }

    /// The completion queue's device address.
    pub(crate) fn cq_address(&self) -> u64 {
        self.cq.device_address(0)
    }

    /// Completions refused so far (unknown or stale command identifiers).
    pub(crate) fn refused_completions(&self) -> u64 {
        self.state.lock().refused
    }

    /// Commands given to the device and not yet completed.
    pub(crate) fn outstanding(&self) -> usize {
        self.state.lock().outstanding
    }

    /// Closes the gate for a reset: new submissions wait (and a slot
    /// reserved before now cannot submit); commands the device has stay
    /// outstanding until [`QueuePair::fail_outstanding`].
    pub(crate) fn close(&self) {
        let mut st = self.state.lock();
        if matches!(st.gate, Gate::Dead(_)) {
            return;
        }
        st.gate = Gate::Closed;
        st.epoch = st.epoch.wrapping_add(1);
    }

    /// Opens the gate (after the queue exists on the device again).
    pub(crate) fn open(&self) {
        let mut st = self.state.lock();
        if matches!(st.gate, Gate::Dead(_)) && !st.retired {
            return;
        }
        st.retired = false;
        st.gate = Gate::Open;
        for (_, w) in st.waiters.drain(..) {
            w.wake();
        }
    }

    /// Fails the queue for good with `why`: submissions fail, and every
    /// command the device has fails too, its buffers held (the device was
    /// not proven stopped; see [`QueuePair::release_held`]).
    pub(crate) fn kill(&self, why: Failure) {
        kill_locked(&mut self.state.lock(), why, true);
    }

    /// Takes the queue out of use because the controller (after a reset)
    /// granted fewer queues: like [`QueuePair::kill`] with
    /// [`Failure::Reset`] (submissions fail, for the disks to retry on a
    /// queue that remains; commands the device has fail, buffers held),
    /// except that [`QueuePair::open`] brings it back when a later reset
    /// grants it again.
    pub(crate) fn retire(&self) {
        let mut st = self.state.lock();
        kill_locked(&mut st, Failure::Reset, true);
        st.retired = true;
    }

    /// Fails every command the device has with `why` (a command the
    /// watchdog already timed out with [`Failure::TimedOut`]). `stopped`:
    /// the device was proven stopped (disabled or reset), so the commands'
    /// buffers are released; otherwise they are held.
    pub(crate) fn fail_outstanding(&self, why: Failure, stopped: bool) {
        let mut st = self.state.lock();
        fail_outstanding_locked(&mut st, why, stopped);
    }

    /// Frees every held slot (the device was proven stopped); returns how
    /// many there were.
    pub(crate) fn release_held(&self) -> usize {
        let mut st = self.state.lock();
        let mut n = 0;
        for index in 0..st.slots.len() {
            match st.slots[index].state {
                SlotState::Held => {
                    free_slot(&mut st, index);
                    n += 1;
                }
                // Failed, not yet taken: nothing to hold any more.
                SlotState::Done(_) => st.slots[index].hold = false,
                SlotState::Failing(why) => {
                    answer_failing(&mut st, index, why, false);
                    n += 1;
                }
                _ => {}
            }
        }
        st.held -= n;
        n
    }

    /// The device was not proven stopped and the driver stops trying:
    /// callers waiting on a failed direct command ([`SlotState::Failing`])
    /// get their error now, the slot (pins and all) held for good. Their
    /// memory may still be written by the device: direct mode trusts the
    /// device with the caller's memory.
    pub(crate) fn give_up_held(&self) -> usize {
        let mut st = self.state.lock();
        let mut n = 0;
        for index in 0..st.slots.len() {
            if let SlotState::Failing(why) = st.slots[index].state {
                answer_failing(&mut st, index, why, true);
                n += 1;
            }
        }
        // Counted again as held when the caller takes its answer.
        st.held -= n;
        n
    }

    /// The device may still use this queue's memory and the driver is
    /// going away: the rings, the list pages, the shadow doorbell pages
    /// and the buffers of the commands the device may hold are leaked —
    /// never handed back to the device's allocator for reuse.
    pub(crate) fn leak_dma(&mut self) {
        for buf in [&mut self.sq, &mut self.cq, &mut self.lists] {
            let (mem, _) = buf.memory();
            let empty = DmaBuffer::new(
                mem.clone(),
                parastor_core::addr::Gpa::new(0),
                0,
                parastor_core::addr::DeviceAddress::new(0),
                None,
            );
            core::mem::replace(buf, empty).leave_to_device();
        }
        let st = self.state.get_mut();
        if let Some(shadow) = st.shadow.take() {
            leave_shadow(shadow.pages);
        }
        for (index, slot) in st.slots.iter_mut().enumerate() {
            let device_may_hold = match slot.state {
                SlotState::Submitted { .. } | SlotState::Held | SlotState::Failing(_) => true,
                SlotState::Done(_) => slot.hold,
                SlotState::Free | SlotState::Reserved => false,
            };
            if device_may_hold {
                if let Some(b) = slot.bounce.take() {
                    core::mem::forget(b);
                }
                if slot.paged
                    && let Some(page) = self.pages.get_mut(index).and_then(|p| p.take()).flatten()
                {
                    page.leave_to_device();
                }
                if let Some(k) = slot.keep.take() {
                    leave_shared(k);
                }
            }
        }
    }

    /// Freezes the queue for a keepalive save and describes it: from now
    /// on it reads no completion and takes no command, and every command
    /// the device has fails for its owner, its memory held (the device
    /// still uses it; the next driver instance takes it over).
    pub(crate) fn freeze(&self) -> crate::state::QueueV1 {
        let mut st = self.state.lock();
        let st = &mut *st;
        let commands = st
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| matches!(slot.state, SlotState::Submitted { .. }))
            .map(|(index, slot)| {
                let bounce = slot
                    .bounce
                    .as_ref()
                    .and_then(|b| b.device_range())
                    .map(|(_, r)| r)
                    .or_else(|| slot.paged.then(|| self.page_range(index)).flatten());
                let memory = bounce
                    .or_else(|| slot.keep.as_ref().map(|k| k.device_range()))
                    .map(|r| {
                        (
                            r.addr.get(),
                            r.len.div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64,
                        )
                    });
                crate::state::CommandV1 {
                    slot: index as u16,
                    memory,
                    // The only command the watchdog does not time.
                    event_request: !slot.timed,
                }
            })
            .collect();
        let saved = crate::state::QueueV1 {
            qid: self.qid,
            size: self.size,
            sq: self.sq.device_address(0),
            cq: self.cq.device_address(0),
            lists: self.lists.device_address(0),
            sq_tail: st.sq_tail,
            sq_head: st.sq_head,
            cq_head: st.cq_head,
            phase: st.phase,
            cq_unannounced: st.cq_unannounced,
            cq_announced: st.cq_announced,
            seqs: st.slots.iter().map(|s| s.seq).collect(),
            commands,
        };
        st.frozen = true;
        let why = Failure::Gone("driver saved for servicing");
        if !matches!(st.gate, Gate::Dead(_)) {
            st.gate = Gate::Dead(why);
            st.epoch = st.epoch.wrapping_add(1);
        }
        fail_outstanding_locked(st, why, false);
        wake_reserved(st);
        saved
    }

    /// A queue pair rebuilt from `saved` over memory a previous driver
    /// left to the device: `rings` are its SQ, CQ and list pages (as
    /// saved), `memory[i]` the memory of `saved.commands[i]`. The commands
    /// saved in flight are the device's, with no owner: their completions
    /// are consumed (see [`QueuePair::poll_restored`]); the Asynchronous
    /// Event Request is parked for the next event loop. The gate starts
    /// closed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn restore(
        device: Arc<dyn DeviceAccess>,
        saved: &crate::state::QueueV1,
        dstrd: u8,
        max_ranges: usize,
        cq_batch: u16,
        interrupt: Arc<dyn DeviceInterrupt>,
        health: Arc<Health>,
        rings: [DmaBuffer; 3],
        memory: Vec<Option<Arc<DmaBuffer>>>,
    ) -> Result<Self, parastor_core::state::InvalidState> {
        use parastor_core::state::InvalidState;
        let size = saved.size;
        let cq_batch = cq_batch.clamp(1, size / 2);
        let slots_n = usize::from(size - cq_batch).min(MAX_SLOTS);
        saved.check(slots_n)?;
        let [sq, cq, lists] = rings;
        let pages = (0..slots_n.min(PAGED_SLOTS))
            .map(|_| std::sync::OnceLock::new())
            .collect();
        let now = health.now_ms.load(Ordering::Relaxed);
        let mut slots: Box<[Slot]> = saved
            .seqs
            .iter()
            .map(|&seq| Slot {
                seq: seq & ((1 << (16 - SLOT_BITS)) - 1),
                state: SlotState::Free,
                waker: None,
                pins: PinSet::with_capacity(max_ranges),
                bounce: None,
                paged: false,
                page_out: false,
                keep: None,
                submitted_at: now,
                timed: true,
                watch: Watch::Quiet,
                hold: false,
            })
            .collect();
        let mut parked = None;
        let mut outstanding = 0;
        let mut memory = memory.into_iter();
        for c in &saved.commands {
            let index = usize::from(c.slot);
            let slot = slots
                .get_mut(index)
                .ok_or_else(|| InvalidState::new("commands.slot", "no such slot"))?;
            slot.keep = memory.next().flatten();
            if c.event_request && parked.is_none() {
                slot.state = SlotState::Submitted { detached: false };
                slot.timed = false;
                parked = Some(index);
            } else {
                slot.state = SlotState::Submitted { detached: true };
            }
            outstanding += 1;
        }
        let free = (0..slots_n as u16)
            .rev()
            .filter(|&i| matches!(slots[usize::from(i)].state, SlotState::Free))
            .collect();
        let mut awaited = alloc::vec![0u64; slots_n.div_ceil(64)].into_boxed_slice();
        if let Some(index) = parked
            && let Some(word) = awaited.get_mut(index / 64)
        {
            *word |= 1 << (index % 64);
        }
        Ok(Self {
            qid: saved.qid,
            size,
            sq,
            cq,
            lists,
            pages,
            sq_doorbell: Doorbell::SqTail(saved.qid).offset(dstrd),
            cq_doorbell: Doorbell::CqHead(saved.qid).offset(dstrd),
            cq_batch,
            device,
            interrupt,
            health,
            state: Mutex::new(State {
                sq_tail: saved.sq_tail,
                sq_head: saved.sq_head,
                cq_head: saved.cq_head,
                phase: saved.phase,
                epoch: 0,
                gate: Gate::Closed,
                slots,
                free,
                outstanding,
                waiters: Vec::with_capacity(slots_n),
                next_waiter: 0,
                refused: 0,
                held: 0,
                frozen: false,
                retired: false,
                irq_owner: None,
                awaited,
                cq_unannounced: saved.cq_unannounced,
                cq_announced: saved.cq_announced,
                shadow: None,
                parked,
            }),
        })
    }

    /// After a restore: drains the completions of the commands saved in
    /// flight; `Ready` once none is left but the parked event request.
    pub(crate) fn poll_restored(&self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..POLL_BUDGET {
            {
                let mut st = self.state.lock();
                self.drain(&mut st);
                let waiting =
                    st.outstanding
                        - usize::from(st.parked.is_some_and(|p| {
                            matches!(st.slots[p].state, SlotState::Submitted { .. })
                        }));
                if waiting == 0 {
                    return Poll::Ready(());
                }
            }
            if self.interrupt.poll_signal(cx).is_pending() {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Slot `index`'s own bounce page in device address space, if it has
    /// one.
    fn page_range(&self, index: usize) -> Option<DeviceRange> {
        let page = self.pages.get(index)?.get()?.as_ref()?;
        Some(page.device_range())
    }

    /// Slot `index`'s own bounce page, taken from the device's DMA memory
    /// the first time it is asked for; `None` for a slot without one.
    fn slot_page(&self, index: usize) -> Option<&DmaBuffer> {
        self.pages
            .get(index)?
            .get_or_init(|| self.device.alloc_dma(PAGE_SIZE).ok())
            .as_ref()
    }

    /// Slots held because the device may still use their buffers.
    pub(crate) fn held(&self) -> usize {
        self.state.lock().held
    }

    /// The watchdog's look at this queue at coarse instant `now` (ms):
    /// commands older than `timeout_ms` get an Abort (at most
    /// [`Cids::CAP`] per scan), and one still outstanding `timeout_ms`
    /// after its Abort asks for a controller reset.
    pub(crate) fn scan_expired(&self, now: u64, timeout_ms: u64) -> Expired {
        let mut out = Expired::default();
        let mut st = self.state.lock();
        let st = &mut *st;
        for (index, slot) in st.slots.iter_mut().enumerate() {
            if !matches!(slot.state, SlotState::Submitted { .. }) || !slot.timed {
                continue;
            }
            match slot.watch {
                Watch::Quiet if now.saturating_sub(slot.submitted_at) >= timeout_ms => {
                    let cid = (slot.seq << SLOT_BITS) | index as u16;
                    if out.abort.push(cid) {
                        slot.watch = Watch::Aborted(now);
                    }
                }
                Watch::Aborted(at) if now.saturating_sub(at) >= timeout_ms => out.reset = true,
                _ => {}
            }
        }
        out
    }

    /// Rewinds both rings to empty (after a controller reset, before the
    /// queue is created again on the device).
    pub(crate) fn rewind(&self) {
        let mut st = self.state.lock();
        st.sq_tail = 0;
        st.sq_head = 0;
        st.cq_head = 0;
        st.phase = true;
        st.cq_unannounced = 0;
        st.cq_announced = 0;
        // A reset forgets Doorbell Buffer Config.
        st.shadow = None;
        let _ = self.cq.fill_at(0, self.cq.len(), 0);
    }

    /// Uses shadow doorbells in `pages` from now on (after Doorbell Buffer
    /// Config succeeded; the controller copied the register values into
    /// the shadow slots). `stride` is the doorbell stride in bytes.
    pub(crate) fn use_shadow(&self, pages: &Arc<ShadowPages>, stride: usize) {
        let mut st = self.state.lock();
        let q = usize::from(self.qid);
        st.shadow = Some(Shadow {
            pages: pages.clone(),
            sq: 2 * q * stride,
            cq: (2 * q + 1) * stride,
        });
    }

    /// Announces a new SQ tail (`sq`) or CQ head: through the shadow
    /// doorbell, with an MMIO write only when the controller's EventIdx
    /// asks for one; else (or if the shadow pages fail) by MMIO.
    fn ring(&self, st: &State, sq: bool, old: u16, value: u16) {
        let mmio = if sq {
            self.sq_doorbell
        } else {
            self.cq_doorbell
        };
        if let Some(sh) = &st.shadow {
            let at = if sq { sh.sq } else { sh.cq };
            let p = &sh.pages;
            let shadowed = p
                .doorbells
                .store_u32(at, u32::from(value), Ordering::Release)
                .and_then(|()| {
                    // The shadow store before the EventIdx load.
                    fence(Ordering::SeqCst);
                    let ei = p.event_idx.load_u32(at, Ordering::Acquire)?;
                    Ok(need_event(ei as u16, value, old))
                });
            // Told already (or the shadow pages failed: fall back to MMIO).
            if let Ok(false) = shadowed {
                return;
            }
        }
        self.device.write_u32(0, mmio, u32::from(value));
    }

    /// The parked command (see [`SlotGuard::park_on_drop`]), to wait for
    /// again; `None` if there is none.
    pub(crate) fn adopt_parked(&self) -> Option<SlotGuard<'_>> {
        let mut st = self.state.lock();
        let index = st.parked.take()?;
        let epoch = st.epoch;
        match st.slots[index].state {
            SlotState::Submitted { .. } | SlotState::Done(_) => Some(SlotGuard {
                queue: self,
                index,
                epoch,
                submitted: true,
                held: true,
                park: false,
                fresh: false,
            }),
            _ => None,
        }
    }

    /// Reserves a slot, waiting while none is free or the queue is being
    /// reset.
    pub(crate) fn reserve(&self) -> Reserve<'_> {
        Reserve {
            queue: self,
            waiting: None,
        }
    }

    /// Drains the completion queue; returns whether anything completed.
    fn drain(&self, st: &mut State) -> bool {
        if st.frozen {
            return false;
        }
        let mut taken = 0u32;
        loop {
            let off = usize::from(st.cq_head) * CQE_LEN;
            let status = match self.cq.load_u16(off + 14, Ordering::Acquire) {
                Ok(s) => s,
                Err(_) => break,
            };
            if (status & 1 == 1) != st.phase {
                break;
            }
            let mut raw = [0u8; CQE_LEN];
            if self.cq.read_at(off, &mut raw).is_err() {
                break;
            }
            let Ok(cqe) = Cqe::read_from_bytes(&raw) else {
                break;
            };
            st.cq_head += 1;
            if st.cq_head == self.size {
                st.cq_head = 0;
                st.phase = !st.phase;
            }
            taken += 1;
            // The status word from the load that saw the phase, not from
            // the second copy.
            if !self.complete(st, &cqe, status >> 1) {
                break;
            }
            if taken >= u32::from(self.size) {
                break;
            }
        }
        if taken > 0 {
            st.cq_unannounced = st.cq_unannounced.saturating_add(taken as u16);
            if st.cq_unannounced >= self.cq_batch {
                st.cq_unannounced = 0;
                self.ring(st, false, st.cq_announced, st.cq_head);
                st.cq_announced = st.cq_head;
            }
        }
        taken > 0
    }

    /// Applies one completion entry; `false` if the entry violates the
    /// rules (the queue is failed then).
    fn complete(&self, st: &mut State, cqe: &Cqe, status: u16) -> bool {
        let cid = cqe.cid.get();
        let index = usize::from(cid) & (MAX_SLOTS - 1);
        let seq = cid >> SLOT_BITS;
        let violation = match st.slots.get(index) {
            None => Some("completion names no command slot"),
            Some(slot) if slot.seq != seq || !matches!(slot.state, SlotState::Submitted { .. }) => {
                Some(
                    "completion for a command that is not outstanding (stale, repeated or invented identifier)",
                )
            }
            Some(_) if cqe.sqid.get() != self.qid => {
                Some("completion names another submission queue")
            }
            Some(_) => self.check_sq_head(st, cqe.sqhd.get()),
        };
        if let Some(why) = violation {
            st.refused += 1;
            log::warn!(
                "{}: nvme queue {}: {why} (command id {cid:#x}, SQ id {}, SQ head {}); the controller is failed",
                self.device.id(),
                self.qid,
                cqe.sqid.get(),
                cqe.sqhd.get()
            );
            self.fail_locked(st, why);
            return false;
        }
        st.outstanding -= 1;
        st.set_awaited(index, false);
        let slot = &mut st.slots[index];
        // A command the watchdog aborted, and the device did abort: it
        // timed out.
        let result = if matches!(slot.watch, Watch::Aborted(_))
            && StatusWord::from_bits(status & 0x7FFF)
                == StatusWord::generic(GenericStatus::ABORT_REQUESTED)
        {
            Err(Failure::TimedOut)
        } else {
            Ok(Completed {
                status,
                dw0: cqe.dw0.get(),
                dw1: cqe.dw1.get(),
            })
        };
        let detached = matches!(slot.state, SlotState::Submitted { detached: true });
        slot.state = SlotState::Done(result);
        if detached {
            free_slot(st, index);
        } else if let Some(w) = slot.waker.take() {
            w.wake();
        }
        true
    }

    /// Checks a completion's SQ head: inside the queue, and moved forward
    /// by no more than the entries submitted since the last one (a
    /// controller only ever consumes what was submitted, in order).
    fn check_sq_head(&self, st: &mut State, head: u16) -> Option<&'static str> {
        let size = u32::from(self.size);
        if u32::from(head) >= size {
            return Some("SQ head outside the submission queue");
        }
        let ahead = |to: u16| (u32::from(to) + size - u32::from(st.sq_head)) % size;
        if ahead(head) > ahead(st.sq_tail) {
            return Some("SQ head moved backwards or past the tail");
        }
        st.sq_head = head;
        None
    }

    /// Fails this queue for a completion it cannot accept, and tells the
    /// driver (which fails the controller).
    fn fail_locked(&self, st: &mut State, why: &'static str) {
        if !matches!(st.gate, Gate::Dead(_)) {
            st.gate = Gate::Dead(Failure::BadCompletion(why));
            st.epoch = st.epoch.wrapping_add(1);
        }
        fail_outstanding_locked(st, Failure::BadCompletion(why), false);
        wake_reserved(st);
        self.health.violate(why);
    }

    /// Registers `waker` (the new interrupt owner's) with the interrupt;
    /// if the interrupt fired meanwhile, drains and tries again, so that
    /// it ends registered.
    /// A device that keeps signalling gets [`POLL_BUDGET`] passes; then
    /// the owner is woken to go on from its own poll.
    fn arm(&self, waker: &Waker) {
        let mut cx = Context::from_waker(waker);
        let mut budget = POLL_BUDGET;
        while self.interrupt.poll_signal(&mut cx).is_ready() {
            if budget == 0 {
                waker.wake_by_ref();
                return;
            }
            budget -= 1;
            let mut st = self.state.lock();
            self.drain(&mut st);
            if st.irq_owner.is_none() {
                return;
            }
        }
    }

    /// Writes `sqe` (with slot `index`'s command identifier) at the
    /// submission queue tail and rings the doorbell.
    fn submit_locked(&self, st: &mut State, index: usize, mut sqe: Sqe) -> Result<(), Failure> {
        let cid = (st.slots[index].seq << SLOT_BITS) | index as u16;
        sqe.cdw0.set_cid(cid);
        let tail = st.sq_tail;
        let off = usize::from(tail) * SQE_LEN;
        self.sq
            .write_at(off, sqe.as_bytes())
            .map_err(Failure::Memory)?;
        st.sq_tail = if tail + 1 == self.size { 0 } else { tail + 1 };
        let slot = &mut st.slots[index];
        slot.state = SlotState::Submitted { detached: false };
        slot.submitted_at = self.health.now_ms.load(Ordering::Relaxed);
        st.set_awaited(index, true);
        st.outstanding += 1;
        // The entry must be visible before the doorbell that announces it.
        fence(Ordering::Release);
        self.ring(st, true, tail, st.sq_tail);
        Ok(())
    }

    /// Reserves a slot and, when `data` can go to the device directly,
    /// builds the data pointer and submits `sqe` — all under one lock.
    /// The guard says whether it was submitted; if not, the caller
    /// bounces the data and submits.
    pub(crate) fn start<'a, 'b>(
        &'a self,
        sqe: &'b mut Sqe,
        data: Option<(SgList<'b>, bool)>,
        policy: DataPointer,
        sgl: SglSupport,
    ) -> Start<'a, 'b> {
        Start {
            queue: self,
            sqe,
            data,
            policy,
            sgl,
            waiting: None,
        }
    }
}

/// The slot a new interrupt owner comes from: one whose command is the
/// device's and whose caller waits. Sets it as the owner.
fn next_owner(st: &mut State) -> Option<Waker> {
    let (index, waker) = st
        .awaited
        .iter()
        .enumerate()
        .flat_map(|(w, &bits)| BitIndices(bits).map(move |b| w * 64 + b))
        .find_map(|i| {
            let s = st.slots.get(i)?;
            // A parked command, or one not polled since submission, has no
            // waker yet: it registers itself when polled.
            s.waker.clone().map(|w| (i, w))
        })?;
    st.irq_owner = Some(index);
    Some(waker)
}

/// The indices of the set bits of a word, lowest first.
struct BitIndices(u64);

impl Iterator for BitIndices {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let b = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(b)
    }
}

impl State {
    /// Registers (or refreshes) a slot waiter's waker under `id`.
    fn wait(&mut self, id: &mut Option<u64>, waker: &Waker) {
        if let Some(n) = *id
            && let Some((_, w)) = self.waiters.iter_mut().find(|(m, _)| *m == n)
        {
            if !w.will_wake(waker) {
                *w = waker.clone();
            }
            return;
        }
        let n = *id.get_or_insert_with(|| {
            self.next_waiter = self.next_waiter.wrapping_add(1);
            self.next_waiter
        });
        self.waiters.push((n, waker.clone()));
    }

    /// Ends slot waiter `id`'s registration. `gave_up`: the waiter was
    /// dropped without a slot, so a wakeup it may have taken (a freed
    /// slot's) is passed on to the next waiter.
    fn unwait(&mut self, id: &mut Option<u64>, gave_up: bool) {
        let Some(n) = id.take() else {
            return;
        };
        self.waiters.retain(|(m, _)| *m != n);
        if gave_up
            && self.gate == Gate::Open
            && !self.free.is_empty()
            && let Some((_, w)) = self.waiters.pop()
        {
            w.wake();
        }
    }

    /// Marks slot `index` as awaited (submitted, its caller waiting) or not.
    fn set_awaited(&mut self, index: usize, on: bool) {
        if let Some(word) = self.awaited.get_mut(index / 64) {
            let bit = 1u64 << (index % 64);
            if on {
                *word |= bit;
            } else {
                *word &= !bit;
            }
        }
    }
}

/// Frees slot `index` (its pins and bounce buffer go) and lets one waiter
/// for a slot try again.
fn free_slot(st: &mut State, index: usize) {
    st.set_awaited(index, false);
    let slot = &mut st.slots[index];
    slot.state = SlotState::Free;
    slot.pins.clear();
    slot.bounce = None;
    slot.paged = false;
    slot.page_out = false;
    slot.keep = None;
    slot.waker = None;
    slot.timed = true;
    slot.watch = Watch::Quiet;
    slot.hold = false;
    slot.seq = (slot.seq + 1) & ((1 << (16 - SLOT_BITS)) - 1);
    st.free.push(index as u16);
    if let Some((_, w)) = st.waiters.pop() {
        w.wake();
    }
}

/// Ends a taken command's slot: frees it and hands back its bounce
/// buffer, or, if the command failed while the device may still use its
/// buffers, holds the slot (buffers and all) and hands back nothing.
fn take_or_hold(st: &mut State, index: usize) -> Option<BounceBuffer> {
    let slot = &mut st.slots[index];
    if slot.hold {
        slot.state = SlotState::Held;
        slot.waker = None;
        st.held += 1;
        st.set_awaited(index, false);
        return None;
    }
    let bounce = slot.bounce.take();
    free_slot(st, index);
    bounce
}

/// Wakes the callers of reserved slots that wait on something else (see
/// [`SlotGuard::watch_gate`]): the queue failed.
fn wake_reserved(st: &mut State) {
    for slot in st.slots.iter_mut() {
        if matches!(slot.state, SlotState::Reserved)
            && let Some(w) = slot.waker.take()
        {
            w.wake();
        }
    }
}

/// See [`QueuePair::kill`].
fn kill_locked(st: &mut State, why: Failure, direct_waits: bool) {
    if !matches!(st.gate, Gate::Dead(_)) || st.retired {
        st.gate = Gate::Dead(why);
        st.epoch = st.epoch.wrapping_add(1);
    }
    st.retired = false;
    if direct_waits {
        fail_outstanding_waiting(st, why);
    } else {
        fail_outstanding_locked(st, why, false);
    }
    wake_reserved(st);
}

/// Answers the caller of failed direct command `index` (see
/// [`SlotState::Failing`]) with `why`; `hold`: keep the slot's pins when
/// it takes the answer (the device was not proven stopped).
fn answer_failing(st: &mut State, index: usize, why: Failure, hold: bool) {
    let slot = &mut st.slots[index];
    slot.state = SlotState::Done(Err(why));
    slot.hold = hold;
    if let Some(w) = slot.waker.take() {
        w.wake();
    }
}

/// Like [`fail_outstanding_locked`] for a device not proven stopped,
/// except that callers of direct commands (pins of their own memory, no
/// bounce buffer) are not answered yet: [`SlotState::Failing`].
fn fail_outstanding_waiting(st: &mut State, why: Failure) {
    for index in 0..st.slots.len() {
        let slot = &st.slots[index];
        let direct = matches!(slot.state, SlotState::Submitted { detached: false })
            && slot.bounce.is_none()
            && !slot.pins.is_empty();
        if !direct {
            continue;
        }
        st.outstanding -= 1;
        st.set_awaited(index, false);
        let slot = &mut st.slots[index];
        slot.hold = true;
        slot.state = SlotState::Failing(why);
        st.held += 1;
    }
    fail_outstanding_locked(st, why, false);
}

/// Fails every command the device has (see [`QueuePair::fail_outstanding`]).
fn fail_outstanding_locked(st: &mut State, why: Failure, stopped: bool) {
    st.irq_owner = None;
    for index in 0..st.slots.len() {
        let SlotState::Submitted { detached } = st.slots[index].state else {
            continue;
        };
        st.outstanding -= 1;
        st.set_awaited(index, false);
        let slot = &mut st.slots[index];
        let result = if matches!(slot.watch, Watch::Aborted(_)) && why == Failure::Reset {
            Failure::TimedOut
        } else {
            why
        };
        slot.hold = !stopped;
        if !detached {
            slot.state = SlotState::Done(Err(result));
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        } else if stopped {
            free_slot(st, index);
        } else {
            slot.state = SlotState::Held;
            st.held += 1;
        }
    }
    for (_, w) in st.waiters.drain(..) {
        w.wake();
    }
}

/// Future of [`QueuePair::start`].
pub(crate) struct Start<'a, 'b> {
    queue: &'a QueuePair,
    sqe: &'b mut Sqe,
    data: Option<(SgList<'b>, bool)>,
    policy: DataPointer,
    sgl: SglSupport,
    /// Registration among the slot waiters, while waiting.
    waiting: Option<u64>,
}

impl Drop for Start<'_, '_> {
    fn drop(&mut self) {
        if self.waiting.is_some() {
            self.queue.state.lock().unwait(&mut self.waiting, true);
        }
    }
}

impl<'a> Future for Start<'a, '_> {
    type Output = Result<SlotGuard<'a>, Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let queue = this.queue;
        let mut st = queue.state.lock();
        let index = match st.gate {
            Gate::Dead(why) => {
                st.unwait(&mut this.waiting, false);
                return Poll::Ready(Err(why));
            }
            Gate::Open => st.free.pop(),
            Gate::Closed => None,
        };
        let Some(index) = index.map(usize::from) else {
            st.wait(&mut this.waiting, cx.waker());
            return Poll::Pending;
        };
        st.unwait(&mut this.waiting, false);
        st.slots[index].state = SlotState::Reserved;
        let mut guard = SlotGuard {
            queue,
            index,
            epoch: st.epoch,
            submitted: false,
            held: true,
            park: false,
            fresh: false,
        };
        let direct = match this.data {
            None => Ok(true),
            Some((buf, to_device)) => {
                let access = if to_device {
                    parastor_core::memory::Access::Read
                } else {
                    parastor_core::memory::Access::Write
                };
                let slot = &mut st.slots[index];
                let built = match buf.pin(access, queue.device.dma_domain(), &mut slot.pins) {
                    Ok(()) => build_dptr(
                        this.sqe,
                        slot.pins.ranges(),
                        &queue.lists,
                        index,
                        this.policy,
                        this.sgl,
                    ),
                    Err(PinError::Memory(e)) => Err(Failure::Memory(e)),
                    Err(_) => Ok(false),
                };
                if !matches!(built, Ok(true)) {
                    slot.pins.clear();
                }
                built
            }
        };
        let result = match direct {
            // The caller bounces, then submits.
            Ok(false) => Ok(()),
            Ok(true) => queue.submit_locked(&mut st, index, *this.sqe).map(|()| {
                guard.submitted = true;
                guard.fresh = true;
            }),
            Err(e) => Err(e),
        };
        // The guard's drop takes the lock: release it first.
        drop(st);
        Poll::Ready(result.map(|()| guard))
    }
}

/// Future of [`QueuePair::reserve`].
pub(crate) struct Reserve<'a> {
    queue: &'a QueuePair,
    /// Registration among the slot waiters, while waiting.
    waiting: Option<u64>,
}

impl Drop for Reserve<'_> {
    fn drop(&mut self) {
        if self.waiting.is_some() {
            self.queue.state.lock().unwait(&mut self.waiting, true);
        }
    }
}

impl<'a> Future for Reserve<'a> {
    type Output = Result<SlotGuard<'a>, Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let queue = this.queue;
        let mut st = queue.state.lock();
        match st.gate {
            Gate::Dead(why) => {
                st.unwait(&mut this.waiting, false);
                return Poll::Ready(Err(why));
            }
            Gate::Closed => {}
            Gate::Open => {
                if let Some(index) = st.free.pop() {
                    st.unwait(&mut this.waiting, false);
                    let slot = &mut st.slots[usize::from(index)];
                    slot.state = SlotState::Reserved;
                    return Poll::Ready(Ok(SlotGuard {
                        queue,
                        index: usize::from(index),
                        epoch: st.epoch,
                        submitted: false,
                        held: true,
                        park: false,
                        fresh: false,
                    }));
                }
            }
        }
        st.wait(&mut this.waiting, cx.waker());
        Poll::Pending
    }
}

/// A reserved slot: prepare the data pointer, submit, then await the
/// completion. Dropping it frees a slot not yet submitted and detaches a
/// submitted command (the slot, with its pins and bounce buffer, stays
/// until the device completes it).
pub(crate) struct SlotGuard<'a> {
    queue: &'a QueuePair,
    index: usize,
    epoch: u32,
    submitted: bool,
    /// Whether the slot is still this guard's (false once the completion
    /// was taken: the slot may belong to someone else then).
    held: bool,
    /// Dropping a submitted command parks it instead of detaching it.
    park: bool,
    /// Submitted and not polled since.
    fresh: bool,
}

impl SlotGuard<'_> {
    /// If this guard is dropped while the device has the command, keep
    /// the completion for [`QueuePair::adopt_parked`] (one parked command
    /// per queue) instead of discarding it.
    pub(crate) fn park_on_drop(&mut self) {
        self.park = true;
    }

    /// Keeps `buf` (driver DMA memory the command's data pointer names)
    /// with the slot until the slot frees: a command detached by a
    /// timeout cannot have its buffer freed under the device.
    pub(crate) fn keep(&mut self, buf: Arc<DmaBuffer>) {
        self.queue.state.lock().slots[self.index].keep = Some(buf);
    }

    /// For a caller that holds this reserved slot while it waits for
    /// something else (bounce space): `Err` if the queue failed, else
    /// `cx` is woken if it fails later.
    pub(crate) fn watch_gate(&self, cx: &Context<'_>) -> Result<(), Failure> {
        let mut st = self.queue.state.lock();
        if let Gate::Dead(why) = st.gate {
            return Err(why);
        }
        let slot = &mut st.slots[self.index];
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Ok(())
    }

    /// The watchdog does not time this command (an Asynchronous Event
    /// Request waits for an event, however long).
    pub(crate) fn untimed(&mut self) {
        self.queue.state.lock().slots[self.index].timed = false;
    }

    /// Whether the command is the device's (submitted).
    pub(crate) fn is_submitted(&self) -> bool {
        self.submitted
    }

    /// Builds the data pointer of `sqe` for one device-contiguous range
    /// (a bounce buffer, which the slot then keeps, or driver DMA memory).
    pub(crate) fn prepare_contiguous(
        &mut self,
        sqe: &mut Sqe,
        range: DeviceRange,
        bounce: Option<BounceBuffer>,
        policy: DataPointer,
        sgl: SglSupport,
    ) -> Result<(), Failure> {
        let queue = self.queue;
        let mut st = queue.state.lock();
        let slot = &mut st.slots[self.index];
        slot.bounce = bounce;
        if build_dptr(sqe, &[range], &queue.lists, self.index, policy, sgl)? {
            Ok(())
        } else {
            Err(Failure::BadBuffer(
                "a device-contiguous buffer cannot be described by PRPs",
            ))
        }
    }

    /// This slot's own bounce page, as the CPU reaches it (memory and
    /// range), when the slot has one and `len` bytes fit it. The page is
    /// this guard's while the slot is reserved and, after
    /// [`submit_page`](Self::submit_page) with `copy_out`, until the guard
    /// is dropped.
    pub(crate) fn page(
        &self,
        len: usize,
    ) -> Option<(
        &parastor_core::memory::GuestMem,
        parastor_core::addr::GpaRange,
    )> {
        if len > PAGE_SIZE {
            return None;
        }
        let (mem, base) = self.queue.slot_page(self.index)?.memory();
        Some((mem, parastor_core::addr::GpaRange::new(base, len as u64)))
    }

    /// Submits `sqe` with its data pointer set to the first `len` bytes
    /// of this slot's bounce page (see [`page`](Self::page)), under one
    /// lock. `copy_out`: the caller reads the page after completion, so
    /// the completed slot stays this guard's until it is dropped.
    pub(crate) fn submit_page(
        &mut self,
        mut sqe: Sqe,
        len: usize,
        copy_out: bool,
        policy: DataPointer,
        sgl: SglSupport,
    ) -> Result<(), Failure> {
        let queue = self.queue;
        let Some(page) = queue.page_range(self.index) else {
            return Err(Failure::BadBuffer("this slot has no bounce page"));
        };
        let range = DeviceRange::new(page.addr, (len as u64).min(page.len));
        let mut st = queue.state.lock();
        gate_open(&st, self.epoch)?;
        let slot = &mut st.slots[self.index];
        slot.paged = true;
        slot.page_out = copy_out;
        if !build_dptr(&mut sqe, &[range], &queue.lists, self.index, policy, sgl)? {
            return Err(Failure::BadBuffer(
                "a device-contiguous buffer cannot be described by PRPs",
            ));
        }
        queue.submit_locked(&mut st, self.index, sqe)?;
        self.submitted = true;
        self.fresh = true;
        Ok(())
    }

    /// Writes `sqe` (with this slot's command identifier) to the
    /// submission queue and rings the doorbell.
    pub(crate) fn submit(&mut self, sqe: Sqe) -> Result<(), Failure> {
        let queue = self.queue;
        let mut st = queue.state.lock();
        gate_open(&st, self.epoch)?;
        queue.submit_locked(&mut st, self.index, sqe)?;
        self.submitted = true;
        self.fresh = true;
        Ok(())
    }
}

/// `Ok` if a command reserved in `epoch` may be submitted now.
fn gate_open(st: &State, epoch: u32) -> Result<(), Failure> {
    match st.gate {
        Gate::Dead(why) => Err(why),
        _ if st.epoch != epoch => Err(Failure::Reset),
        Gate::Closed => Err(Failure::Reset),
        Gate::Open => Ok(()),
    }
}

/// The result of a command: its completion, and the bounce buffer the
/// data went through (for reads, copy it out).
pub(crate) struct Finished {
    pub(crate) result: Result<Completed, Failure>,
    pub(crate) bounce: Option<BounceBuffer>,
}

impl Future for SlotGuard<'_> {
    type Output = Finished;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Finished> {
        let queue = self.queue;
        let index = self.index;
        if !self.submitted || !self.held {
            return Poll::Ready(Finished {
                result: Err(Failure::BadBuffer("command polled before submission")),
                bounce: None,
            });
        }
        let mut st = queue.state.lock();
        // Drain passes this poll may make: a device that keeps posting
        // completions (or signalling) cannot keep the task here.
        let mut budget = POLL_BUDGET;
        loop {
            if let SlotState::Failing(_) = st.slots[index].state {
                // Answered once the device is proven stopped (or the
                // driver gives up): the interrupt has nothing for it.
                let slot = &mut st.slots[index];
                match &slot.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => slot.waker = Some(cx.waker().clone()),
                }
                if st.irq_owner == Some(index) {
                    st.irq_owner = None;
                }
                return Poll::Pending;
            }
            if let SlotState::Done(result) = st.slots[index].state {
                let next = if st.irq_owner == Some(index) {
                    st.irq_owner = None;
                    next_owner(&mut st)
                } else {
                    None
                };
                let slot = &mut st.slots[index];
                // A paged command's data is in the slot's page: the slot
                // stays this guard's (reserved) until the caller has
                // copied it out and drops the guard.
                let keep_page = slot.page_out && !slot.hold;
                let bounce = if keep_page {
                    slot.state = SlotState::Reserved;
                    slot.waker = None;
                    st.set_awaited(index, false);
                    None
                } else {
                    take_or_hold(&mut st, index)
                };
                drop(st);
                self.submitted = false;
                self.held = keep_page;
                if let Some(w) = next {
                    queue.arm(&w);
                }
                return Poll::Ready(Finished { result, bounce });
            }
            // Right after submission nothing of this command can be in the
            // completion queue yet (and others' completions are the
            // interrupt owner's to drain): skip the look.
            if !core::mem::take(&mut self.fresh) {
                if budget == 0 {
                    drop(st);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                budget -= 1;
                if queue.drain(&mut st) {
                    continue;
                }
            }
            let slot = &mut st.slots[index];
            match &slot.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => slot.waker = Some(cx.waker().clone()),
            }
            // Only the interrupt owner registers with the interrupt; the
            // others are woken through their slot by whoever drains.
            let arm = match st.irq_owner {
                None => {
                    st.irq_owner = Some(index);
                    true
                }
                Some(owner) => owner == index,
            };
            drop(st);
            if !arm {
                return Poll::Pending;
            }
            match queue.interrupt.poll_signal(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => st = queue.state.lock(),
            }
        }
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let mut st = self.queue.state.lock();
        match st.slots[self.index].state {
            SlotState::Reserved => free_slot(&mut st, self.index),
            SlotState::Done(_) => drop(take_or_hold(&mut st, self.index)),
            SlotState::Submitted { .. } if self.park && st.parked.is_none() => {
                // Still waited for, by whoever adopts it.
                st.parked = Some(self.index);
                st.slots[self.index].waker = None;
            }
            SlotState::Submitted { .. } => {
                st.slots[self.index].state = SlotState::Submitted { detached: true };
                st.set_awaited(self.index, false);
                st.slots[self.index].waker = None;
            }
            // Still held for the device; nobody to answer any more.
            SlotState::Failing(_) => {
                st.slots[self.index].state = SlotState::Held;
                st.slots[self.index].waker = None;
            }
            SlotState::Free | SlotState::Held => {}
        }
        if st.irq_owner == Some(self.index) {
            st.irq_owner = None;
            let next = next_owner(&mut st);
            drop(st);
            if let Some(w) = next {
                self.queue.arm(&w);
            }
        }
    }
}

/// Builds `sqe`'s data pointer for `ranges` (in order). PRPs when the
/// policy allows and the ranges fit PRP rules, else an SGL when the
/// controller takes one; `Ok(false)` when neither can describe them.
fn build_dptr(
    sqe: &mut Sqe,
    ranges: &[DeviceRange],
    lists: &DmaBuffer,
    slot: usize,
    policy: DataPointer,
    sgl: SglSupport,
) -> Result<bool, Failure> {
    let list_off = slot * PAGE_SIZE;
    let use_sgl = match (policy, sgl) {
        (_, SglSupport::None) => false,
        (DataPointer::Sgl, _) => true,
        (DataPointer::Prp, _) => false,
        (DataPointer::Auto, _) => !prp_compatible(ranges),
    };
    if use_sgl {
        if sgl == SglSupport::DwordAligned
            && ranges
                .iter()
                .any(|r| r.addr.get() % 4 != 0 || r.len % 4 != 0)
        {
            return Ok(false);
        }
        return build_sgl(sqe, ranges, lists, list_off);
    }
    if !prp_compatible(ranges) {
        return Ok(false);
    }
    build_prps(sqe, ranges, lists, list_off)
}

/// Whether PRPs can describe `ranges`: the first starts dword aligned,
/// every later one starts on a page, every one but the last ends on one.
fn prp_compatible(ranges: &[DeviceRange]) -> bool {
    let page = PAGE_SIZE as u64;
    let last = ranges.len().saturating_sub(1);
    ranges.iter().enumerate().all(|(i, r)| {
        let start_ok = if i == 0 {
            r.addr.get() % 4 == 0
        } else {
            r.addr.get() % page == 0
        };
        let end_ok = i == last || r.addr.get().wrapping_add(r.len) % page == 0;
        start_ok && end_ok && r.len > 0
    })
}

fn build_prps(
    sqe: &mut Sqe,
    ranges: &[DeviceRange],
    lists: &DmaBuffer,
    list_off: usize,
) -> Result<bool, Failure> {
    let page = PAGE_SIZE as u64;
    // Every page start after the first entry, in order.
    let mut pages = ranges.iter().flat_map(|r| {
        let start = r.addr.get();
        let end = start.wrapping_add(r.len);
        let first_page = start & !(page - 1);
        (0..)
            .map(move |i| first_page + i * page)
            .take_while(move |p| *p < end)
            .map(move |p| p.max(start))
    });
    let Some(prp1) = pages.next() else {
        sqe.set_prps(0, 0);
        return Ok(true);
    };
    let Some(second) = pages.next() else {
        sqe.set_prps(prp1, 0);
        sqe.cdw0.set_psdt(DataTransferKind::PRP);
        return Ok(true);
    };
    let Some(third) = pages.next() else {
        sqe.set_prps(prp1, second);
        sqe.cdw0.set_psdt(DataTransferKind::PRP);
        return Ok(true);
    };
    // A list: written in chunks from a stack buffer.
    let mut chunk = [0u64; 64];
    let mut n = 0;
    let mut written = 0usize;
    for entry in [second, third].into_iter().chain(pages) {
        if written + n == PRP_LIST_ENTRIES {
            return Ok(false);
        }
        chunk[n] = entry;
        n += 1;
        if n == chunk.len() {
            lists
                .write_at(list_off + written * 8, chunk[..n].as_bytes())
                .map_err(Failure::Memory)?;
            written += n;
            n = 0;
        }
    }
    if n > 0 {
        lists
            .write_at(list_off + written * 8, chunk[..n].as_bytes())
            .map_err(Failure::Memory)?;
    }
    sqe.set_prps(prp1, lists.device_address(list_off));
    sqe.cdw0.set_psdt(DataTransferKind::PRP);
    Ok(true)
}

fn build_sgl(
    sqe: &mut Sqe,
    ranges: &[DeviceRange],
    lists: &DmaBuffer,
    list_off: usize,
) -> Result<bool, Failure> {
    if ranges.iter().any(|r| u32::try_from(r.len).is_err()) {
        return Ok(false);
    }
    sqe.cdw0.set_psdt(DataTransferKind::SGL_METADATA_BUFFER);
    if let [one] = ranges {
        let d = RawSglDescriptor::new(
            SglDescriptorType::DATA_BLOCK,
            one.addr.get(),
            one.len as u32,
        );
        sqe.dptr = d.as_bytes().try_into().unwrap_or([0; 16]);
        return Ok(true);
    }
    if ranges.len() > SGL_SEGMENT_DESCRIPTORS {
        return Ok(false);
    }
    let mut chunk = [RawSglDescriptor::new(SglDescriptorType::DATA_BLOCK, 0, 0); 32];
    let mut written = 0usize;
    for group in ranges.chunks(chunk.len()) {
        for (d, r) in chunk.iter_mut().zip(group) {
            *d = RawSglDescriptor::new(SglDescriptorType::DATA_BLOCK, r.addr.get(), r.len as u32);
        }
        lists
            .write_at(list_off + written * 16, chunk[..group.len()].as_bytes())
            .map_err(Failure::Memory)?;
        written += group.len();
    }
    let seg = RawSglDescriptor::new(
        SglDescriptorType::LAST_SEGMENT,
        lists.device_address(list_off),
        (ranges.len() * 16) as u32,
    );
    sqe.dptr = seg.as_bytes().try_into().unwrap_or([0; 16]);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parastor_core::addr::DeviceAddress;

    fn r(addr: u64, len: u64) -> DeviceRange {
        DeviceRange::new(DeviceAddress::new(addr), len)
    }

    /// A device whose DMA memory is a RAM block and whose registers only
    /// record writes: the test plays the controller by hand.
    struct HandDevice {
        mem: parastor_core::memory::GuestMem,
        next: core::sync::atomic::AtomicU64,
        writes: parastor_core::sync::Mutex<alloc::vec::Vec<(u64, u32)>>,
    }

    impl DeviceAccess for HandDevice {
        fn id(&self) -> &str {
            "hand"
        }
        fn config_read_u32(&self, _: u16) -> u32 {
            0
        }
        fn config_write_u32(&self, _: u16, _: u32) {}
        fn read_u32(&self, _: u8, _: u64) -> u32 {
            0
        }
        fn read_u64(&self, _: u8, _: u64) -> u64 {
            0
        }
        fn write_u32(&self, _: u8, offset: u64, value: u32) {
            self.writes.lock().push((offset, value));
        }
        fn write_u64(&self, _: u8, _: u64, _: u64) {}
        fn dma_domain(&self) -> parastor_core::addr::DmaDomainId {
            parastor_core::addr::DmaDomainId::new(7)
        }
        fn alloc_dma(&self, len: usize) -> Result<DmaBuffer, crate::DeviceError> {
            let len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            let at = self.next.fetch_add(len as u64, Ordering::Relaxed);
            Ok(DmaBuffer::new(
                self.mem.clone(),
                parastor_core::addr::Gpa::new(at),
                len,
                DeviceAddress::new(at),
                None,
            ))
        }
        fn max_interrupts(&self) -> u16 {
            2
        }
        fn map_interrupt(&self, _: u16) -> Result<Arc<dyn DeviceInterrupt>, crate::DeviceError> {
            Ok(Arc::new(Never))
        }
    }

    struct Never;

    /// Queue 1, 8 entries, 4 ranges per command, head doorbell after
    /// every drain.
    fn shape() -> QueueShape {
        QueueShape {
            qid: 1,
            size: 8,
            dstrd: 0,
            max_ranges: 4,
            cq_batch: 1,
        }
    }

    impl DeviceInterrupt for Never {
        fn poll_signal(&self, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    /// Writes a completion entry at `index` of the CQ at `cq`.
    fn post(
        mem: &parastor_core::memory::GuestMem,
        cq: u64,
        index: u64,
        sqid: u16,
        cid: u16,
        status: u16,
    ) {
        let e = Cqe {
            sqid: zerocopy::little_endian::U16::new(sqid),
            cid: zerocopy::little_endian::U16::new(cid),
            status: parastor_hw::nvme::queue::CqeStatus::from_bits(
                zerocopy::little_endian::U16::new(status),
            ),
            ..Cqe::default()
        };
        mem.write_at(parastor_core::addr::Gpa::new(cq + index * 16), e.as_bytes())
            .unwrap();
    }

    /// An interrupt that is always signalled (a storming device).
    struct Storm;

    impl DeviceInterrupt for Storm {
        fn poll_signal(&self, _: &mut Context<'_>) -> Poll<()> {
            Poll::Ready(())
        }
    }

    #[test]
    fn an_interrupt_storm_does_not_keep_a_poll_running() {
        // Run on another thread so that a regression fails the test
        // instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mem = parastor_core::memory::GuestMem::new(
                parastor_core::memory::RamGuestMemory::new(1 << 20),
            );
            let device = Arc::new(HandDevice {
                mem,
                next: core::sync::atomic::AtomicU64::new(0),
                writes: parastor_core::sync::Mutex::new(alloc::vec::Vec::new()),
            });
            let q =
                QueuePair::new(device, shape(), Arc::new(Storm), Arc::new(Health::new())).unwrap();
            let mut cx = Context::from_waker(Waker::noop());
            let mut sqe = Sqe::default();
            let mut start =
                core::pin::pin!(q.start(&mut sqe, None, DataPointer::Auto, SglSupport::None));
            let Poll::Ready(Ok(mut guard)) = start.as_mut().poll(&mut cx) else {
                panic!("a free slot");
            };
            // Nothing is ever completed, the interrupt never stops: every
            // poll must still return.
            let polls: alloc::vec::Vec<bool> = (0..4)
                .map(|_| Pin::new(&mut guard).poll(&mut cx).is_pending())
                .collect();
            tx.send(polls).unwrap();
        });
        let polls = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a poll kept running under an interrupt storm");
        assert_eq!(polls, [true; 4]);
    }

    /// A queue of 8 entries (slots 0..6) over a hand-played device, and
    /// its memory.
    fn hand_queue() -> (QueuePair, parastor_core::memory::GuestMem, Arc<HandDevice>) {
        let mem = parastor_core::memory::GuestMem::new(parastor_core::memory::RamGuestMemory::new(
            1 << 20,
        ));
        let device = Arc::new(HandDevice {
            mem: mem.clone(),
            next: core::sync::atomic::AtomicU64::new(0),
            writes: parastor_core::sync::Mutex::new(alloc::vec::Vec::new()),
        });
        let q = QueuePair::new(
            device.clone(),
            shape(),
            Arc::new(Never),
            Arc::new(Health::new()),
        )
        .unwrap();
        (q, mem, device)
    }

    /// Submits a command with no data and returns its guard.
    fn submit(q: &QueuePair) -> SlotGuard<'_> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut sqe = Sqe::default();
        let mut fut = core::pin::pin!(q.start(&mut sqe, None, DataPointer::Auto, SglSupport::None));
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(g)) => g,
            _ => panic!("a free slot"),
        }
    }

    fn cid_of(g: &SlotGuard<'_>) -> u16 {
        let st = g.queue.state.lock();
        (st.slots[g.index].seq << SLOT_BITS) | g.index as u16
    }

    fn poll_guard(g: &mut SlotGuard<'_>) -> Poll<Finished> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(g).poll(&mut cx)
    }

    /// Posts a completion with SQ head `sqhd` at CQ entry `index`.
    fn post_at(
        mem: &parastor_core::memory::GuestMem,
        q: &QueuePair,
        index: u64,
        sqid: u16,
        cid: u16,
        sqhd: u16,
        status: u16,
    ) {
        post(mem, q.cq_address(), index, sqid, cid, status);
        let at = q.cq_address() + index * 16 + 8;
        mem.write_at(parastor_core::addr::Gpa::new(at), &sqhd.to_le_bytes())
            .unwrap();
    }

    struct Count(core::sync::atomic::AtomicUsize);

    impl alloc::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_cancelled_slot_waiter_does_not_swallow_the_wakeup() {
        use core::sync::atomic::{AtomicUsize, Ordering};
        let (q, mem, _device) = hand_queue();
        let mut guards: alloc::vec::Vec<_> = (0..7).map(|_| submit(&q)).collect();
        let cid = cid_of(&guards[0]);
        for g in guards.iter_mut() {
            assert!(poll_guard(g).is_pending());
        }
        let b_count = Arc::new(Count(AtomicUsize::new(0)));
        let b_waker = Waker::from(b_count.clone());
        let a_waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let (mut sqe_a, mut sqe_b) = (Sqe::default(), Sqe::default());
        let mut b = Box::pin(q.start(&mut sqe_b, None, DataPointer::Auto, SglSupport::None));
        assert!(
            b.as_mut()
                .poll(&mut Context::from_waker(&b_waker))
                .is_pending()
        );
        {
            let mut a = Box::pin(q.start(&mut sqe_a, None, DataPointer::Auto, SglSupport::None));
            assert!(
                a.as_mut()
                    .poll(&mut Context::from_waker(&a_waker))
                    .is_pending()
            );
        } // A cancelled
        post_at(&mem, &q, 0, 1, cid, 1, 1);
        assert!(poll_guard(&mut guards[0]).is_ready());
        assert_eq!(q.state.lock().free.len(), 1);
        assert!(
            b_count.0.load(Ordering::SeqCst) > 0,
            "B still waits for a slot that is free: the one wakeup went to the cancelled A"
        );
    }

    #[test]
    fn dropped_slot_waiters_leave_no_wakers_behind() {
        let (q, _mem, _device) = hand_queue();
        let _guards: alloc::vec::Vec<_> = (0..7).map(|_| submit(&q)).collect();
        for _ in 0..100 {
            let waker = Waker::from(Arc::new(Count(core::sync::atomic::AtomicUsize::new(0))));
            let mut r = Box::pin(q.reserve());
            assert!(
                r.as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
            );
        }
        assert_eq!(
            q.state.lock().waiters.len(),
            0,
            "a dropped waiter's waker stays"
        );
    }

    /// Tries to start a command with no data; `Ok(true)` if it got a slot.
    fn try_start(q: &QueuePair) -> Result<bool, Failure> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut sqe = Sqe::default();
        let mut fut = core::pin::pin!(q.start(&mut sqe, None, DataPointer::Auto, SglSupport::None));
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(_)) => Ok(true),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(false),
        }
    }

    #[test]
    fn a_queue_retired_for_a_smaller_grant_comes_back_with_a_larger_one() {
        let (q, _mem, _device) = hand_queue();
        // A reset whose controller grants fewer queues than this QID.
        q.close();
        q.retire();
        assert_eq!(try_start(&q), Err(Failure::Reset), "retry elsewhere");
        // The next reset grants it again.
        q.close();
        q.open();
        assert_eq!(try_start(&q), Ok(true), "the queue serves again");
    }

    #[test]
    fn a_killed_queue_stays_dead() {
        let (q, _mem, _device) = hand_queue();
        q.retire();
        q.kill(Failure::Gone("removed"));
        q.open();
        assert_eq!(try_start(&q), Err(Failure::Gone("removed")));
    }

    #[test]
    fn good_completions_complete_with_their_status_in_any_order() {
        let (q, mem, device) = hand_queue();
        let mut a = submit(&q);
        let mut b = submit(&q);
        let (ca, cb) = (cid_of(&a), cid_of(&b));
        // The first poll after submission does not look.
        assert!(poll_guard(&mut a).is_pending());
        assert!(poll_guard(&mut b).is_pending());
        // b first (SQ head 1), then a with LBA out of range (head 2).
        post_at(&mem, &q, 0, 1, cb, 1, 1);
        post_at(&mem, &q, 1, 1, ca, 2, 1 | (0x80 << 1));
        let Poll::Ready(fa) = poll_guard(&mut a) else {
            panic!("a completed");
        };
        assert_eq!(fa.result.map(|c| c.status), Ok(0x80));
        let Poll::Ready(fb) = poll_guard(&mut b) else {
            panic!("b completed");
        };
        assert_eq!(fb.result.map(|c| c.status), Ok(0));
        assert_eq!(
            (q.refused_completions(), q.outstanding(), q.held()),
            (0, 0, 0)
        );
        // The head doorbell was written as entries were consumed.
        assert!(
            device
                .writes
                .lock()
                .iter()
                .any(|&(off, v)| off == Doorbell::CqHead(1).offset(0) && v == 2)
        );
    }

    /// Submits two commands, posts the entries `bad` makes (from the two
    /// identifiers; `b_ok`: a good one for b comes first), and checks that
    /// the queue failed: the commands not completed before fail cleanly
    /// with their buffers held, new submissions fail, the health records
    /// the violation, and releasing frees the slots.
    fn bad_completion_fails_the_queue(
        what: &str,
        b_ok: bool,
        bad: impl Fn(&parastor_core::memory::GuestMem, &QueuePair, u16, u16),
    ) {
        let (q, mem, _device) = hand_queue();
        let mut a = submit(&q);
        let mut b = submit(&q);
        let (ca, cb) = (cid_of(&a), cid_of(&b));
        assert!(poll_guard(&mut a).is_pending());
        bad(&mem, &q, ca, cb);
        let Poll::Ready(fa) = poll_guard(&mut a) else {
            panic!("{what}: a failed at once");
        };
        assert!(
            matches!(fa.result, Err(Failure::BadCompletion(_))),
            "{what}: {:?}",
            fa.result
        );
        let Poll::Ready(fb) = poll_guard(&mut b) else {
            panic!("{what}: b finished too");
        };
        let held = if b_ok {
            assert_eq!(fb.result.map(|c| c.status), Ok(0), "{what}");
            1
        } else {
            assert!(
                matches!(fb.result, Err(Failure::BadCompletion(_))),
                "{what}"
            );
            2
        };
        assert_eq!(q.refused_completions(), 1, "{what}");
        assert!(q.health.violation().is_some(), "{what}");
        assert_eq!(q.held(), held, "{what}: the device may still use them");
        let mut cx = Context::from_waker(Waker::noop());
        let mut sqe = Sqe::default();
        let mut fut = core::pin::pin!(q.start(&mut sqe, None, DataPointer::Auto, SglSupport::None));
        assert!(
            matches!(
                fut.as_mut().poll(&mut cx),
                Poll::Ready(Err(Failure::BadCompletion(_)))
            ),
            "{what}: a failed queue takes nothing new"
        );
        assert_eq!(q.release_held(), held, "{what}");
        assert_eq!(q.held(), 0, "{what}");
    }

    #[test]
    fn a_completion_the_driver_cannot_accept_fails_the_queue_not_the_process() {
        bad_completion_fails_the_queue("unknown slot", false, |m, q, _, _| {
            post_at(m, q, 0, 1, 0x3FF, 1, 1)
        });
        bad_completion_fails_the_queue("stale sequence", false, |m, q, ca, _| {
            post_at(m, q, 0, 1, ca.wrapping_add(1 << SLOT_BITS), 1, 1)
        });
        bad_completion_fails_the_queue("repeated", true, |m, q, _, cb| {
            post_at(m, q, 0, 1, cb, 1, 1);
            post_at(m, q, 1, 1, cb, 1, 1);
        });
        bad_completion_fails_the_queue("another SQ", false, |m, q, ca, _| {
            post_at(m, q, 0, 9, ca, 1, 1)
        });
        bad_completion_fails_the_queue("SQ head outside the queue", false, |m, q, ca, _| {
            post_at(m, q, 0, 1, ca, 8, 1)
        });
        bad_completion_fails_the_queue("SQ head past the tail", false, |m, q, ca, _| {
            post_at(m, q, 0, 1, ca, 3, 1)
        });
        bad_completion_fails_the_queue("SQ head backwards", true, |m, q, ca, cb| {
            post_at(m, q, 0, 1, cb, 2, 1);
            post_at(m, q, 1, 1, ca, 1, 1);
        });
    }

    #[test]
    fn expired_commands_get_one_abort_then_ask_for_a_reset() {
        let (q, mem, _device) = hand_queue();
        q.health.now_ms.store(1000, Ordering::Relaxed);
        let mut a = submit(&q);
        let ca = cid_of(&a);
        assert!(poll_guard(&mut a).is_pending());
        q.health.now_ms.store(5000, Ordering::Relaxed);
        let mut b = submit(&q);
        let e = q.scan_expired(3000, 2000);
        assert_eq!((e.abort.as_slice(), e.reset), (&[ca][..], false));
        // Not twice; b is young.
        let e = q.scan_expired(4000, 2000);
        assert_eq!((e.abort.as_slice(), e.reset), (&[][..], false));
        // A timeout after the Abort: reset.
        let e = q.scan_expired(5000, 2000);
        assert!(e.reset);
        // The device aborts a: it timed out. b completes normally.
        post_at(&mem, &q, 0, 1, ca, 1, 1 | (0x07 << 1));
        let Poll::Ready(fa) = poll_guard(&mut a) else {
            panic!("a completed");
        };
        assert_eq!(fa.result, Err(Failure::TimedOut));
        // A reset that proved the device stopped: b fails for a retry,
        // its buffers released at once.
        q.close();
        q.fail_outstanding(Failure::Reset, true);
        let Poll::Ready(fb) = poll_guard(&mut b) else {
            panic!("b failed");
        };
        assert_eq!(fb.result, Err(Failure::Reset));
        assert_eq!((q.held(), q.outstanding()), (0, 0));
    }

    #[test]
    fn event_index_rule() {
        // The controller saw tail 10: moving 10 -> 11 passes it, 11 -> 12
        // does not (it was told already), and a wrap is handled.
        assert!(need_event(10, 11, 10));
        assert!(!need_event(10, 12, 11));
        assert!(need_event(255, 0, 255));
        assert!(!need_event(250, 0, 255));
        assert!(need_event(10, 20, 5), "a jump over the index");
    }

    fn lists() -> DmaBuffer {
        let mem = parastor_core::memory::GuestMem::new(parastor_core::memory::RamGuestMemory::new(
            1 << 16,
        ));
        DmaBuffer::new(
            mem,
            parastor_core::addr::Gpa::new(0x4000),
            2 * PAGE_SIZE,
            DeviceAddress::new(0x9_0000),
            None,
        )
    }

    fn list_entries(lists: &DmaBuffer, offset: usize, n: usize) -> alloc::vec::Vec<u64> {
        let mut raw = alloc::vec![0u8; n * 8];
        lists.read_at(offset, &mut raw).unwrap();
        raw.chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn prps_inline_and_as_a_list() {
        let lists = lists();
        let mut sqe = Sqe::default();
        // One page: PRP1 only.
        assert!(
            build_dptr(
                &mut sqe,
                &[r(0x1_0200, 0x800)],
                &lists,
                1,
                DataPointer::Prp,
                SglSupport::None
            )
            .unwrap()
        );
        assert_eq!((sqe.prp1(), sqe.prp2()), (0x1_0200, 0));
        // Two pages: PRP2 is the second page.
        assert!(
            build_dptr(
                &mut sqe,
                &[r(0x1_0200, 0x1000)],
                &lists,
                1,
                DataPointer::Prp,
                SglSupport::None
            )
            .unwrap()
        );
        assert_eq!((sqe.prp1(), sqe.prp2()), (0x1_0200, 0x1_1000));
        // Three ranges, five pages: a list in slot 1's page.
        let ranges = [r(0x1_0E00, 0x200), r(0x5_0000, 0x3000), r(0x9_0000, 0x10)];
        assert!(
            build_dptr(
                &mut sqe,
                &ranges,
                &lists,
                1,
                DataPointer::Auto,
                SglSupport::Any
            )
            .unwrap()
        );
        assert_eq!(sqe.cdw0.psdt(), DataTransferKind::PRP);
        assert_eq!(sqe.prp1(), 0x1_0E00);
        assert_eq!(
            sqe.prp2(),
            0x9_0000 + PAGE_SIZE as u64,
            "slot 1's list page"
        );
        assert_eq!(
            list_entries(&lists, PAGE_SIZE, 4),
            [0x5_0000, 0x5_1000, 0x5_2000, 0x9_0000]
        );
        // Not PRP-compatible and no SGLs: bounce.
        let bad = [r(0x1_0000, 0x200), r(0x5_0200, 0x200)];
        assert!(
            !build_dptr(
                &mut sqe,
                &bad,
                &lists,
                0,
                DataPointer::Auto,
                SglSupport::None
            )
            .unwrap()
        );
    }

    #[test]
    fn sgls_one_block_or_a_last_segment() {
        let lists = lists();
        let mut sqe = Sqe::default();
        assert!(
            build_dptr(
                &mut sqe,
                &[r(0x1_0201, 0x333)],
                &lists,
                0,
                DataPointer::Sgl,
                SglSupport::Any
            )
            .unwrap()
        );
        assert_eq!(sqe.cdw0.psdt(), DataTransferKind::SGL_METADATA_BUFFER);
        let d = RawSglDescriptor::read_from_bytes(&sqe.dptr).unwrap();
        assert_eq!(d.descriptor_type(), SglDescriptorType::DATA_BLOCK);
        assert_eq!((d.address.get(), d.length.get()), (0x1_0201, 0x333));
        // Byte-aligned ranges are refused where the controller wants dwords.
        assert!(
            !build_dptr(
                &mut sqe,
                &[r(0x1_0201, 0x333)],
                &lists,
                0,
                DataPointer::Sgl,
                SglSupport::DwordAligned
            )
            .unwrap()
        );
        // Several ranges: a Last Segment in slot 0's page.
        let ranges = [r(0x1_0000, 0x200), r(0x5_0200, 0x400), r(0x7_0000, 0x1000)];
        assert!(
            build_dptr(
                &mut sqe,
                &ranges,
                &lists,
                0,
                DataPointer::Auto,
                SglSupport::Any
            )
            .unwrap()
        );
        let seg = RawSglDescriptor::read_from_bytes(&sqe.dptr).unwrap();
        assert_eq!(seg.descriptor_type(), SglDescriptorType::LAST_SEGMENT);
        assert_eq!((seg.address.get(), seg.length.get()), (0x9_0000, 48));
        let mut raw = [0u8; 48];
        lists.read_at(0, &mut raw).unwrap();
        for (i, chunk) in raw.chunks(16).enumerate() {
            let d = RawSglDescriptor::read_from_bytes(chunk).unwrap();
            assert_eq!(d.descriptor_type(), SglDescriptorType::DATA_BLOCK);
            assert_eq!(
                (d.address.get(), u64::from(d.length.get())),
                (ranges[i].addr.get(), ranges[i].len)
            );
        }
    }

    #[test]
    fn prp_rules() {
        assert!(prp_compatible(&[r(0x1000, 0x3000)]));
        assert!(prp_compatible(&[r(0x1200, 0xE00), r(0x5000, 0x200)]));
        assert!(!prp_compatible(&[r(0x1000, 0x800), r(0x5000, 0x200)]));
        assert!(!prp_compatible(&[r(0x1000, 0x1000), r(0x5200, 0x200)]));
        assert!(!prp_compatible(&[r(0x1001, 0x200)]));
    }
}
