//! Fault injection around any [`DeviceAccess`]: a
//! middleware that makes a well-behaved device misbehave on purpose, so
//! the driver's answer to a hostile device can be tested.
//!
//! [`FaultInjector`] implements [`DeviceAccess`] over another one (the
//! in-process backing in tests, anything else just as well) and applies a
//! [`FaultPlan`]: what to do to which completion, which Identify data to
//! make hostile, which registers to falsify, which interrupts to swallow.
//! The device below never knows; the driver above sees a device that
//! misbehaves exactly as planned.
//!
//! # How it stands between driver and device
//!
//! The driver reads completions straight from DMA memory, so the wrapper
//! cannot simply filter calls; it interposes on the queues:
//!
//! - **Every DMA buffer** it hands out is the device's own buffer, reached
//!   through a memory wrapper, so it knows every buffer's device address
//!   and can read and write them (submission queues, completion queues,
//!   Identify data).
//! - **Submissions are snooped**: on each submission queue tail doorbell
//!   it reads the new entries from the driver's queue, remembering each
//!   command (opcode, queue creation parameters, data pointer) until its
//!   completion.
//! - **Completion queues are shadowed**: the device is given a completion
//!   queue of the wrapper's own (ACQ is rewritten when CC.EN goes to 1,
//!   the PRP1 of Create I/O Completion Queue is rewritten in the
//!   submission entry before the device sees it), and the wrapper
//!   *pumps* entries from the device's queue into the driver's, with the
//!   planned faults applied and the driver's phase tag. It pumps when the
//!   queue's MSI-X vector fires (the [`DeviceInterrupt`] is wrapped) and
//!   whenever the driver reads its completion queue (the memory wrapper
//!   sees the read). The driver's CQ head doorbell tells the wrapper how
//!   far the driver has read; the device's head doorbell is written by
//!   the wrapper as it takes entries from the shadow queue.
//! - **Shadow doorbells are hidden**: Identify Controller is delivered
//!   with OACS "Doorbell Buffer Config" cleared, because a driver that
//!   announced its queue tails through memory would bypass the snooping.
//!
//! # Faults
//!
//! Completions ([`CompletionFault`], chosen per queue, opcode, and
//! occurrence by a [`Select`]): drop, delay by some pumps, duplicate,
//! reorder (deliver after the next one), corrupt the command identifier,
//! submission queue identifier, submission queue head, status or phase
//! tag; hostile Identify data ([`IdentifyFault`]: MDTS, LBADS, NN, NSZE or
//! any bytes). Registers ([`RegisterFault`]): any read value falsified,
//! CSTS.CFS raised after some completions, every register reading all
//! ones (surprise removal). Interrupts: swallowed, so the driver waits for
//! a signal that never comes.
//!
//! Everything is deterministic: a plan with the same seed against the
//! same device and driver does the same thing every run. Memory is
//! bounded: held completions per queue are at most twice the queue size,
//! remembered commands at most [`MAX_COMMANDS`].

use crate::device::{DeviceAccess, DeviceError, DeviceInterrupt, DmaBuffer, DmaRelease};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::{Arc, Weak};
use alloc::task::Wake;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use core::task::{Context, Poll, Waker};
use parastor_core::addr::{DeviceAddress, DeviceRange, DmaDomainId, Gpa, GpaRange};
use parastor_core::error::MemoryError;
use parastor_core::memory::{Access, AtomicOp, GuestMem, GuestMemory, GuestMemoryExt, Width};
use parastor_core::pin::{PinError, PinSet};
use parastor_core::sync::Mutex;
use parastor_hw::nvme::command::{
    AdminOpcode, Cns, CreateCqCdw11, CreateQueueCdw10, CreateSqCdw11, IdentifyCdw10,
};
use parastor_hw::nvme::identify::{IDENTIFY_DATA_LEN, IdentifyController, IdentifyNamespace};
use parastor_hw::nvme::queue::{CQE_LEN, Cqe, SQE_LEN, Sqe};
use parastor_hw::nvme::regs::{Aqa, Cap, Doorbell, offset};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// The most commands the wrapper remembers between submission and
/// completion (beyond it, new commands are not remembered: their
/// completions still pass, matched by queue only).
pub const MAX_COMMANDS: usize = 64 * 1024;
/// Pumps after which a reordered completion is delivered even if no
/// other completion came to overtake it.
pub const REORDER_LIMIT: u32 = 64;
/// The largest queue the wrapper shadows (the spec's maximum).
const MAX_QUEUE_ENTRIES: u32 = 65536;

/// Which queue a [`Select`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueSelect {
    /// Every queue.
    Any,
    /// The admin queue (queue 0).
    Admin,
    /// Every I/O queue.
    Io,
    /// The queue with this identifier (the submission queue's, which for
    /// the driver is also its completion queue's).
    Id(u16),
}

/// Which completions a rule applies to: those on `queue`, of a command
/// with `opcode` (if set), after the first `skip` such, at most `count`
/// of them, and of those one in `one_in` (chosen by the plan's seeded
/// generator; 0 or 1: every one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Select {
    /// The queue.
    pub queue: QueueSelect,
    /// The command's opcode (admin opcodes on the admin queue, NVM opcodes
    /// on I/O queues); `None`: any command, including completions the
    /// wrapper cannot match to a submitted command.
    pub opcode: Option<u8>,
    /// Matching completions let through untouched first.
    pub skip: u64,
    /// Matching completions faulted at most (`u64::MAX`: no limit).
    pub count: u64,
    /// Fault one in this many matching completions (0, 1: all).
    pub one_in: u32,
}

impl Select {
    /// Every completion on any queue, forever.
    pub const fn any() -> Self {
        Self {
            queue: QueueSelect::Any,
            opcode: None,
            skip: 0,
            count: u64::MAX,
            one_in: 0,
        }
    }

    /// Every completion on the admin queue.
    pub const fn admin() -> Self {
        Self::any().queue(QueueSelect::Admin)
    }

    /// Every completion on an I/O queue.
    pub const fn io() -> Self {
        Self::any().queue(QueueSelect::Io)
    }

    /// Only on `queue`.
    pub const fn queue(mut self, queue: QueueSelect) -> Self {
        self.queue = queue;
        self
    }

    /// Only commands with `opcode`.
    pub const fn opcode(mut self, opcode: u8) -> Self {
        self.opcode = Some(opcode);
        self
    }

    /// After letting the first `n` matching completions through.
    pub const fn skip(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }

    /// At most `n` times.
    pub const fn count(mut self, n: u64) -> Self {
        self.count = n;
        self
    }

    /// Only once (`count(1)`).
    pub const fn once(self) -> Self {
        self.count(1)
    }

    /// One in `n` matching completions, chosen by the seeded generator.
    pub const fn one_in(mut self, n: u32) -> Self {
        self.one_in = n;
        self
    }
}

/// A field of a completion entry to overwrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CqeField {
    /// The command identifier.
    Cid(u16),
    /// The submission queue identifier.
    SqId(u16),
    /// The submission queue head pointer.
    SqHead(u16),
    /// The status field (without the phase tag).
    Status(u16),
    /// The phase tag, inverted: the driver sees an entry of the previous
    /// pass (a completion that is there but looks stale).
    Phase,
}

/// What to do with a selected completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionFault {
    /// Never deliver it.
    Drop,
    /// Deliver it this many pumps later.
    Delay(u32),
    /// Deliver it twice (the copy only where the driver's queue has room
    /// for it beyond every outstanding command's completion).
    Duplicate,
    /// Deliver it after the next completion of its queue (or after
    /// [`REORDER_LIMIT`] pumps if none comes).
    Reorder,
    /// Deliver it with a field overwritten.
    Corrupt(CqeField),
    /// Rewrite the Identify data first (only Identify commands of the
    /// matching CNS are selected).
    Identify(IdentifyFault),
}

/// Hostile Identify data, written into the driver's data buffer before
/// the Identify completion is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentifyFault {
    /// Identify Controller: MDTS (0 is "no limit").
    Mdts(u8),
    /// Identify Controller: NN, the number of namespaces.
    Nn(u32),
    /// Identify Namespace: LBADS of the formatted LBA format (valid:
    /// 9..=16 for parastor's driver).
    Lbads(u8),
    /// Identify Namespace: NSZE, NCAP and NUSE.
    Nsze(u64),
    /// Any Identify data of CNS `cns`: `len` (up to 8) bytes of `bytes`
    /// at `offset` (wrapped into the 4 KiB structure).
    Patch {
        /// The CNS value whose data is patched.
        cns: u8,
        /// Byte offset in the 4096-byte structure.
        offset: u16,
        /// The bytes.
        bytes: [u8; 8],
        /// How many of them (at most 8).
        len: u8,
    },
}

impl IdentifyFault {
    /// The CNS whose data this fault rewrites.
    fn cns(self) -> Cns {
        match self {
            IdentifyFault::Mdts(_) | IdentifyFault::Nn(_) => Cns::CONTROLLER,
            IdentifyFault::Lbads(_) | IdentifyFault::Nsze(_) => Cns::NAMESPACE,
            IdentifyFault::Patch { cns, .. } => Cns::new(cns),
        }
    }

    fn apply(self, data: &mut [u8; IDENTIFY_DATA_LEN]) {
        match self {
            IdentifyFault::Mdts(v) => {
                if let Ok(mut id) = IdentifyController::read_from_bytes(&data[..]) {
                    id.mdts = v;
                    data.copy_from_slice(id.as_bytes());
                }
            }
            IdentifyFault::Nn(v) => {
                if let Ok(mut id) = IdentifyController::read_from_bytes(&data[..]) {
                    id.nn = U32::new(v);
                    data.copy_from_slice(id.as_bytes());
                }
            }
            IdentifyFault::Lbads(v) => {
                if let Ok(mut id) = IdentifyNamespace::read_from_bytes(&data[..]) {
                    let index = usize::from(id.flbas.index());
                    if let Some(f) = id.lbaf.get_mut(index) {
                        f.set_lbads(v);
                    }
                    data.copy_from_slice(id.as_bytes());
                }
            }
            IdentifyFault::Nsze(v) => {
                if let Ok(mut id) = IdentifyNamespace::read_from_bytes(&data[..]) {
                    id.nsze = U64::new(v);
                    id.ncap = U64::new(v);
                    id.nuse = U64::new(v);
                    data.copy_from_slice(id.as_bytes());
                }
            }
            IdentifyFault::Patch {
                offset, bytes, len, ..
            } => {
                let len = usize::from(len.min(8));
                for (i, b) in bytes.iter().take(len).enumerate() {
                    let at = (usize::from(offset) + i) % IDENTIFY_DATA_LEN;
                    if let Some(d) = data.get_mut(at) {
                        *d = *b;
                    }
                }
            }
        }
    }
}

/// A register read falsified: reads of BAR 0 at `offset` (a 32-bit read
/// at it, or the 64-bit read that starts there) return
/// `(value & and) | or`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterFault {
    /// The register's offset in BAR 0.
    pub offset: u64,
    /// Bits kept.
    pub and: u64,
    /// Bits set.
    pub or: u64,
}

/// Interrupts of a vector to swallow: after the first `skip` signals the
/// driver would have seen, the next `count` never reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptFault {
    /// The MSI-X vector (`None`: every vector).
    pub vector: Option<u16>,
    /// Signals let through first.
    pub skip: u64,
    /// Signals swallowed at most (`u64::MAX`: every later one).
    pub count: u64,
}

/// One completion rule: a selection and what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Which completions.
    pub when: Select,
    /// What to do with them.
    pub fault: CompletionFault,
}

/// What a [`FaultInjector`] does: deterministic for a given seed.
///
/// Completion rules are tried in order; the first whose selection
/// matches (and whose counters allow) is applied, one fault per
/// completion.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Seeds the generator of [`Select::one_in`].
    pub seed: u64,
    /// Completion rules.
    pub rules: Vec<Rule>,
    /// Falsified register reads.
    pub registers: Vec<RegisterFault>,
    /// Swallowed interrupts.
    pub interrupts: Vec<InterruptFault>,
    /// CSTS.CFS reads as set once this many completions were delivered
    /// under this plan.
    pub cfs_after: Option<u64>,
    /// The device is surprise-removed once this many completions were
    /// delivered under this plan: every register and config read is all
    /// ones, writes are dropped, nothing more is completed or signalled.
    pub removal_after: Option<u64>,
}

impl FaultPlan {
    /// A plan that changes nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Seeds the generator.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Adds a completion rule.
    pub fn on(mut self, when: Select, fault: CompletionFault) -> Self {
        self.rules.push(Rule { when, fault });
        self
    }

    /// Adds hostile Identify data: every Identify of the fault's CNS is
    /// delivered with it.
    pub fn identify(self, fault: IdentifyFault) -> Self {
        self.on(
            Select::admin().opcode(AdminOpcode::IDENTIFY.get()),
            CompletionFault::Identify(fault),
        )
    }

    /// Falsifies reads of the BAR 0 register at `offset`.
    pub fn register(mut self, offset: u64, and: u64, or: u64) -> Self {
        self.registers.push(RegisterFault { offset, and, or });
        self
    }

    /// Swallows signals of `vector` (all vectors if `None`) after `skip`,
    /// `count` of them.
    pub fn swallow_interrupts(mut self, vector: Option<u16>, skip: u64, count: u64) -> Self {
        self.interrupts.push(InterruptFault {
            vector,
            skip,
            count,
        });
        self
    }

    /// CSTS.CFS after `n` delivered completions.
    pub fn cfs_after(mut self, n: u64) -> Self {
        self.cfs_after = Some(n);
        self
    }

    /// Surprise removal after `n` delivered completions.
    pub fn removal_after(mut self, n: u64) -> Self {
        self.removal_after = Some(n);
        self
    }
}

/// What the wrapper did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Completions taken from the device's queues.
    pub seen: u64,
    /// Entries written into the driver's queues (duplicates included).
    pub delivered: u64,
    /// Completions dropped.
    pub dropped: u64,
    /// Completions delayed.
    pub delayed: u64,
    /// Completions duplicated (copies delivered).
    pub duplicated: u64,
    /// Duplicates not delivered for lack of room in the driver's queue.
    pub duplicates_skipped: u64,
    /// Completions reordered.
    pub reordered: u64,
    /// Completions delivered with a field overwritten.
    pub corrupted: u64,
    /// Identify data rewritten.
    pub identify_rewritten: u64,
    /// Register reads falsified (CFS and removal included).
    pub registers_falsified: u64,
    /// Interrupts swallowed.
    pub interrupts_swallowed: u64,
    /// Submissions snooped.
    pub submissions: u64,
    /// Whether CSTS.CFS reads as set.
    pub cfs: bool,
    /// Whether the device reads as removed.
    pub removed: bool,
}

/// A tiny deterministic generator (SplitMix64) for [`Select::one_in`].
#[derive(Clone, Copy, Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A submitted command, remembered until its completion.
#[derive(Clone, Copy, Debug)]
struct Command {
    opcode: u8,
    cdw10: u32,
    prp1: u64,
}

/// When a held completion is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// After this many more pumps.
    Pumps(u32),
    /// Right after the queue's next delivered completion (or after this
    /// many pumps).
    AfterNext(u32),
}

/// A completion on its way to the driver.
#[derive(Clone, Copy, Debug)]
struct Entry {
    cqe: Cqe,
    flip_phase: bool,
    duplicate: bool,
    /// The SQ head was overwritten on purpose: delivered as it is.
    fixed_sqhd: bool,
}

/// A buffer handed to the driver: the device's own, kept here until the
/// driver releases it.
struct Handed {
    len: u64,
    mem: GuestMem,
    base: Gpa,
    tap: Arc<TapState>,
    _inner: DmaBuffer,
}

/// A submission queue of the driver's.
#[derive(Clone, Debug)]
struct Sq {
    addr: u64,
    /// Entries (2..=65536).
    size: u32,
    tail: u32,
    cqid: u16,
    /// The SQ head the device reported last (its completions come in
    /// device order, so this only moves forward).
    head: Option<u16>,
}

/// A completion queue: the device's shadow and the driver's real one.
struct Cq {
    /// Entries (2..=65536).
    size: u32,
    vector: Option<u16>,
    /// The device writes here (`None`: not shadowed, the device writes
    /// the driver's queue directly).
    shadow: Option<DmaBuffer>,
    shadow_head: u32,
    shadow_phase: bool,
    /// The driver's queue: its memory, and which handed buffer holds it.
    driver_mem: GuestMem,
    driver_base: Gpa,
    driver_key: u64,
    driver_tail: u32,
    driver_phase: bool,
    driver_head: u32,
    held: VecDeque<(Entry, Due)>,
    ready: VecDeque<Entry>,
}

impl Cq {
    fn pending(&self) -> usize {
        self.held.len() + self.ready.len()
    }

    /// Free entries in the driver's queue, as far as its head doorbell
    /// told.
    fn room(&self) -> u32 {
        let size = self.size.max(1);
        let used = (self.driver_tail + size - self.driver_head % size) % size;
        size.saturating_sub(1).saturating_sub(used)
    }
}

/// Per-rule counters.
#[derive(Clone, Copy, Debug, Default)]
struct Counter {
    matched: u64,
    applied: u64,
}

struct State {
    plan: FaultPlan,
    rng: SplitMix,
    rule_counts: Vec<Counter>,
    interrupt_counts: Vec<Counter>,
    /// Completions delivered under the current plan.
    delivered_under_plan: u64,
    dstrd: u8,
    cc_en: bool,
    aqa: u32,
    asq: u64,
    acq: u64,
    buffers: BTreeMap<u64, Handed>,
    sqs: BTreeMap<u16, Sq>,
    cqs: BTreeMap<u16, Cq>,
    commands: BTreeMap<(u16, u16), Command>,
    stats: FaultStats,
}

struct Shared {
    inner: Arc<dyn DeviceAccess>,
    state: Mutex<State>,
}

/// A [`DeviceAccess`] that applies a [`FaultPlan`] to the device it
/// wraps; see the [module docs](self).
pub struct FaultInjector {
    shared: Arc<Shared>,
}

impl core::fmt::Debug for FaultInjector {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FaultInjector")
            .field("device", &self.shared.inner.id())
            .finish_non_exhaustive()
    }
}

impl FaultInjector {
    /// Wraps `inner`, applying `plan`.
    pub fn new(inner: Arc<dyn DeviceAccess>, plan: FaultPlan) -> Arc<Self> {
        let cap = Cap::from_bits(U64::new(inner.read_u64(0, offset::CAP)));
        let dstrd = if cap.into_bits().get() == u64::MAX {
            0
        } else {
            cap.dstrd()
        };
        let state = State {
            rng: SplitMix(plan.seed),
            rule_counts: alloc::vec![Counter::default(); plan.rules.len()],
            interrupt_counts: alloc::vec![Counter::default(); plan.interrupts.len()],
            plan,
            delivered_under_plan: 0,
            dstrd,
            cc_en: false,
            aqa: 0,
            asq: 0,
            acq: 0,
            buffers: BTreeMap::new(),
            sqs: BTreeMap::new(),
            cqs: BTreeMap::new(),
            commands: BTreeMap::new(),
            stats: FaultStats::default(),
        };
        let mut st = state;
        st.check_triggers();
        Arc::new(Self {
            shared: Arc::new(Shared {
                inner,
                state: Mutex::new(st),
            }),
        })
    }

    /// Replaces the plan (its counters and the completion count of its
    /// triggers start from zero; held completions stay held). A removal
    /// or CFS already in effect stays.
    pub fn set_plan(&self, plan: FaultPlan) {
        let mut st = self.shared.state.lock();
        st.rng = SplitMix(plan.seed);
        st.rule_counts = alloc::vec![Counter::default(); plan.rules.len()];
        st.interrupt_counts = alloc::vec![Counter::default(); plan.interrupts.len()];
        st.plan = plan;
        st.delivered_under_plan = 0;
        st.check_triggers();
    }

    /// What the wrapper did so far.
    pub fn stats(&self) -> FaultStats {
        self.shared.state.lock().stats
    }

    /// Surprise removal, now.
    pub fn surprise_remove(&self) {
        self.shared.state.lock().stats.removed = true;
    }

    /// CSTS.CFS reads as set from now on.
    pub fn raise_cfs(&self) {
        self.shared.state.lock().stats.cfs = true;
    }

    /// The device behaves again: the plan is emptied, a removal or CFS
    /// is undone (as a device re-inserted or recovered would read), and
    /// completions still held are delivered as they come due. Lets a test
    /// prove a driver lets go of what it held for a misbehaving device.
    pub fn heal(&self) {
        self.set_plan(FaultPlan::new());
        let mut st = self.shared.state.lock();
        st.stats.removed = false;
        st.stats.cfs = false;
    }

    /// Completions held back (delayed, reordered, or waiting for room in
    /// the driver's queue) over all queues.
    pub fn held(&self) -> usize {
        self.shared.state.lock().cqs.values().map(Cq::pending).sum()
    }
}

impl State {
    fn check_triggers(&mut self) {
        let n = self.delivered_under_plan;
        if self.plan.cfs_after.is_some_and(|a| n >= a) {
            self.stats.cfs = true;
        }
        if self.plan.removal_after.is_some_and(|a| n >= a) {
            self.stats.removed = true;
        }
    }

    /// Forgets every queue and command (controller disabled or reset).
    fn forget_queues(&mut self) {
        self.sqs.clear();
        self.cqs.clear();
        self.commands.clear();
        for h in self.buffers.values() {
            h.tap.cq.store(0, Ordering::Relaxed);
        }
    }

    /// The handed buffer holding `[addr, addr + len)`: its key, memory
    /// and the GPA of `addr` in it.
    fn find(&self, addr: u64, len: u64) -> Option<(u64, GuestMem, Gpa)> {
        let (&key, h) = self.buffers.range(..=addr).next_back()?;
        let off = addr - key;
        let end = off.checked_add(len)?;
        (end <= h.len).then(|| (key, h.mem.clone(), h.base + off))
    }

    fn doorbell(&self, offset: u64) -> Option<Doorbell> {
        Doorbell::from_offset(offset, self.dstrd)
    }

    /// Registers the driver's completion queue `qid` at `addr` with `size`
    /// entries and gives the device a shadow instead; returns the address
    /// the device is to use.
    fn add_cq(
        &mut self,
        inner: &dyn DeviceAccess,
        qid: u16,
        addr: u64,
        size: u32,
        vector: Option<u16>,
    ) -> u64 {
        self.remove_cq(qid);
        if !(2..=MAX_QUEUE_ENTRIES).contains(&size) {
            return addr;
        }
        let bytes = u64::from(size) * CQE_LEN as u64;
        let Some((key, mem, base)) = self.find(addr, bytes) else {
            return addr;
        };
        let Ok(shadow) = inner.alloc_dma(bytes as usize) else {
            return addr;
        };
        if let Some(h) = self.buffers.get(&key) {
            h.tap.cq.store(u32::from(qid) + 1, Ordering::Relaxed);
        }
        let shadow_addr = shadow.device_address(0);
        self.cqs.insert(
            qid,
            Cq {
                size,
                vector,
                shadow: Some(shadow),
                shadow_head: 0,
                shadow_phase: true,
                driver_mem: mem,
                driver_base: base,
                driver_key: key,
                driver_tail: 0,
                driver_phase: true,
                driver_head: 0,
                held: VecDeque::new(),
                ready: VecDeque::new(),
            },
        );
        shadow_addr
    }

    fn remove_cq(&mut self, qid: u16) {
        if let Some(cq) = self.cqs.remove(&qid) {
            let still = self.cqs.values().any(|c| c.driver_key == cq.driver_key);
            if !still && let Some(h) = self.buffers.get(&cq.driver_key) {
                h.tap.cq.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Reads the entries the driver submitted on `qid` up to `tail`
    /// (the new value of its tail doorbell), before the device sees them:
    /// remembers each command, and on the admin queue acts on queue
    /// creation (a new completion queue gets its shadow, and the device
    /// is given the shadow's address in the entry itself).
    fn snoop(&mut self, inner: &dyn DeviceAccess, qid: u16, tail: u32) {
        let Some(sq) = self.sqs.get(&qid).cloned() else {
            return;
        };
        if tail >= sq.size {
            return;
        }
        let mut at = sq.tail;
        while at != tail {
            let addr = sq.addr.wrapping_add(u64::from(at) * SQE_LEN as u64);
            if let Some((_, mem, gpa)) = self.find(addr, SQE_LEN as u64)
                && let Ok(mut sqe) = mem.read_obj::<Sqe>(gpa)
            {
                self.stats.submissions += 1;
                if qid == 0 && self.created(inner, &mut sqe) {
                    let _ = mem.write_at(gpa + 24, &sqe.dptr);
                }
                self.submitted(qid, &sqe);
            }
            at = if at + 1 == sq.size { 0 } else { at + 1 };
        }
        if let Some(s) = self.sqs.get_mut(&qid) {
            s.tail = tail;
        }
    }

    /// Acts on an admin command that creates a queue; returns whether
    /// `sqe`'s data pointer was rewritten (to the shadow queue).
    fn created(&mut self, inner: &dyn DeviceAccess, sqe: &mut Sqe) -> bool {
        let op = AdminOpcode::new(sqe.cdw0.opc());
        let cdw10 = CreateQueueCdw10::from_bits(sqe.cdw10.get());
        let (q, size) = (cdw10.qid(), u32::from(cdw10.qsize()) + 1);
        if q == 0 {
            return false;
        }
        if op == AdminOpcode::CREATE_IO_CQ {
            let cdw11 = CreateCqCdw11::from_bits(sqe.cdw11.get());
            let vector = cdw11.ien().then_some(cdw11.iv());
            let driver = sqe.prp1();
            let shadow = self.add_cq(inner, q, driver, size, vector);
            if shadow != driver {
                let prp2 = sqe.prp2();
                sqe.set_prps(shadow, prp2);
                return true;
            }
        } else if op == AdminOpcode::CREATE_IO_SQ {
            let cqid = CreateSqCdw11::from_bits(sqe.cdw11.get()).cqid();
            self.sqs.insert(
                q,
                Sq {
                    addr: sqe.prp1(),
                    size,
                    tail: 0,
                    cqid,
                    head: None,
                },
            );
        }
        false
    }

    /// Remembers one submitted command until its completion.
    fn submitted(&mut self, qid: u16, sqe: &Sqe) {
        let cmd = Command {
            opcode: sqe.cdw0.opc(),
            cdw10: sqe.cdw10.get(),
            prp1: sqe.prp1(),
        };
        let key = (qid, sqe.cdw0.cid());
        if self.commands.len() < MAX_COMMANDS || self.commands.contains_key(&key) {
            self.commands.insert(key, cmd);
        }
    }

    /// The first rule that takes this completion, if any (counters
    /// advanced).
    fn choose(&mut self, qid: u16, cmd: Option<&Command>) -> Option<CompletionFault> {
        for (i, rule) in self.plan.rules.iter().enumerate() {
            let w = &rule.when;
            let queue_ok = match w.queue {
                QueueSelect::Any => true,
                QueueSelect::Admin => qid == 0,
                QueueSelect::Io => qid != 0,
                QueueSelect::Id(q) => qid == q,
            };
            if !queue_ok {
                continue;
            }
            if let Some(op) = w.opcode
                && cmd.is_none_or(|c| c.opcode != op)
            {
                continue;
            }
            if let CompletionFault::Identify(f) = rule.fault {
                let is_identify = qid == 0
                    && cmd.is_some_and(|c| {
                        AdminOpcode::new(c.opcode) == AdminOpcode::IDENTIFY
                            && IdentifyCdw10::from_bits(c.cdw10).cns() == f.cns()
                    });
                if !is_identify {
                    continue;
                }
            }
            let Some(counter) = self.rule_counts.get_mut(i) else {
                continue;
            };
            counter.matched += 1;
            if counter.matched <= w.skip || counter.applied >= w.count {
                continue;
            }
            if w.one_in > 1 && !self.rng.next().is_multiple_of(u64::from(w.one_in)) {
                continue;
            }
            counter.applied += 1;
            return Some(rule.fault);
        }
        None
    }

    /// Whether a signal of `vector` is swallowed (counters advanced).
    fn swallow(&mut self, vector: u16) -> bool {
        for (i, f) in self.plan.interrupts.iter().enumerate() {
            if f.vector.is_some_and(|v| v != vector) {
                continue;
            }
            let Some(c) = self.interrupt_counts.get_mut(i) else {
                continue;
            };
            c.matched += 1;
            if c.matched <= f.skip || c.applied >= f.count {
                continue;
            }
            c.applied += 1;
            self.stats.interrupts_swallowed += 1;
            return true;
        }
        false
    }

    /// Rewrites the Identify data of `cmd` as the plan (and the wrapper's
    /// own need to hide shadow doorbells) says.
    fn rewrite_identify(&mut self, cmd: &Command, fault: Option<IdentifyFault>) {
        let cns = IdentifyCdw10::from_bits(cmd.cdw10).cns();
        if cns != Cns::CONTROLLER && fault.is_none() {
            return;
        }
        let Some((_, mem, gpa)) = self.find(cmd.prp1, IDENTIFY_DATA_LEN as u64) else {
            return;
        };
        let mut data = [0u8; IDENTIFY_DATA_LEN];
        if mem.read_at(gpa, &mut data).is_err() {
            return;
        }
        if cns == Cns::CONTROLLER
            && let Ok(mut id) = IdentifyController::read_from_bytes(&data[..])
        {
            id.oacs = id.oacs.with_doorbell_buffer_config(false);
            data.copy_from_slice(id.as_bytes());
        }
        if let Some(f) = fault {
            f.apply(&mut data);
            self.stats.identify_rewritten += 1;
        }
        let _ = mem.write_at(gpa, &data);
    }

    /// A completion of the admin queue acts on the wrapper's queue
    /// bookkeeping: queue creation that failed, queue deletion.
    fn admin_done(&mut self, cmd: &Command, status: u16) {
        let ok = status >> 1 == 0;
        let qid = CreateQueueCdw10::from_bits(cmd.cdw10).qid();
        match AdminOpcode::new(cmd.opcode) {
            AdminOpcode::CREATE_IO_CQ if !ok => self.remove_cq(qid),
            AdminOpcode::DELETE_IO_CQ if ok => self.remove_cq(qid),
            AdminOpcode::CREATE_IO_SQ if !ok => {
                self.sqs.remove(&qid);
            }
            AdminOpcode::DELETE_IO_SQ if ok => {
                self.sqs.remove(&qid);
            }
            _ => {}
        }
    }

    /// Commands outstanding on submission queues that complete on `cqid`.
    fn outstanding_on(&self, cqid: u16) -> usize {
        self.commands
            .keys()
            .filter(|(sq, _)| self.sqs.get(sq).is_some_and(|s| s.cqid == cqid))
            .count()
    }

    /// Moves completions of `qid` along: holds tick, new ones are taken
    /// from the device's queue (faults decided), ready ones go to the
    /// driver's queue while it has room. Returns how many were written.
    fn pump(&mut self, inner: &dyn DeviceAccess, qid: u16) -> usize {
        if self.stats.removed {
            return 0;
        }
        // 1. Holds tick.
        let Some(cq) = self.cqs.get_mut(&qid) else {
            return 0;
        };
        let mut i = 0;
        while i < cq.held.len() {
            let due = match cq.held.get_mut(i) {
                Some((_, Due::Pumps(n) | Due::AfterNext(n))) => {
                    *n = n.saturating_sub(1);
                    *n == 0
                }
                None => false,
            };
            if due && let Some((e, _)) = cq.held.remove(i) {
                cq.ready.push_back(e);
            } else {
                i += 1;
            }
        }
        // 2. New completions from the device's queue.
        let mut taken = Vec::new();
        if let Some(shadow) = &cq.shadow {
            let limit = 2 * cq.size as usize;
            while cq.pending() + taken.len() < limit && taken.len() < cq.size as usize {
                let off = cq.shadow_head as usize * CQE_LEN;
                let Ok(status) = shadow.load_u16(off + 14, Ordering::Acquire) else {
                    break;
                };
                if (status & 1 == 1) != cq.shadow_phase {
                    break;
                }
                let mut raw = [0u8; CQE_LEN];
                if shadow.read_at(off, &mut raw).is_err() {
                    break;
                }
                let Ok(mut cqe) = Cqe::read_from_bytes(&raw) else {
                    break;
                };
                cqe.status = parastor_hw::nvme::queue::CqeStatus::from_bits(U16::new(status));
                taken.push(cqe);
                cq.shadow_head += 1;
                if cq.shadow_head == cq.size {
                    cq.shadow_head = 0;
                    cq.shadow_phase = !cq.shadow_phase;
                }
            }
            if !taken.is_empty() {
                let head = cq.shadow_head;
                inner.write_u32(0, Doorbell::CqHead(qid).offset(self.dstrd), head);
            }
        }
        for cqe in taken {
            self.stats.seen += 1;
            self.decide(qid, cqe);
        }
        // 3. Deliver.
        self.deliver(qid)
    }

    /// Decides what happens to one completion the device posted on `qid`.
    fn decide(&mut self, qid: u16, cqe: Cqe) {
        let key = (cqe.sqid.get(), cqe.cid.get());
        let cmd = self.commands.remove(&key);
        let status = cqe.status.into_bits().get();
        let fault = self.choose(qid, cmd.as_ref());
        if let Some(cmd) = &cmd
            && qid == 0
        {
            if AdminOpcode::new(cmd.opcode) == AdminOpcode::IDENTIFY {
                let f = match fault {
                    Some(CompletionFault::Identify(f)) => Some(f),
                    _ => None,
                };
                self.rewrite_identify(cmd, f);
            }
            self.admin_done(cmd, status);
        }
        // The device's completions come in its order, so their SQ heads
        // only move forward: remember the newest.
        if let Some(sq) = self.sqs.get_mut(&cqe.sqid.get()) {
            sq.head = Some(cqe.sqhd.get());
        }
        let mut entry = Entry {
            cqe,
            flip_phase: false,
            duplicate: false,
            fixed_sqhd: false,
        };
        let Some(cq) = self.cqs.get_mut(&qid) else {
            return;
        };
        match fault {
            None | Some(CompletionFault::Identify(_)) => cq.ready.push_back(entry),
            Some(CompletionFault::Drop) => self.stats.dropped += 1,
            Some(CompletionFault::Delay(0)) => cq.ready.push_back(entry),
            Some(CompletionFault::Delay(n)) => {
                self.stats.delayed += 1;
                cq.held.push_back((entry, Due::Pumps(n)));
            }
            Some(CompletionFault::Duplicate) => {
                cq.ready.push_back(entry);
                cq.ready.push_back(Entry {
                    duplicate: true,
                    ..entry
                });
            }
            Some(CompletionFault::Reorder) => {
                self.stats.reordered += 1;
                cq.held.push_back((entry, Due::AfterNext(REORDER_LIMIT)));
            }
            Some(CompletionFault::Corrupt(field)) => {
                self.stats.corrupted += 1;
                match field {
                    CqeField::Cid(v) => entry.cqe.cid = U16::new(v),
                    CqeField::SqId(v) => entry.cqe.sqid = U16::new(v),
                    CqeField::SqHead(v) => {
                        entry.cqe.sqhd = U16::new(v);
                        entry.fixed_sqhd = true;
                    }
                    CqeField::Status(v) => {
                        let p = status & 1;
                        entry.cqe.status =
                            parastor_hw::nvme::queue::CqeStatus::from_bits(U16::new((v << 1) | p));
                    }
                    CqeField::Phase => entry.flip_phase = true,
                }
                cq.ready.push_back(entry);
            }
        }
    }

    /// Writes ready completions of `qid` into the driver's queue while it
    /// has room.
    fn deliver(&mut self, qid: u16) -> usize {
        let outstanding = self.outstanding_on(qid);
        let mut written = 0;
        loop {
            if self.stats.removed {
                break;
            }
            let Some(cq) = self.cqs.get(&qid) else {
                break;
            };
            let Some(mut entry) = cq.ready.front().copied() else {
                break;
            };
            // A late completion (delayed, overtaken, or a copy) reports
            // the SQ head as of its delivery, as a device posting it then
            // would: SQ heads the driver sees never move backwards.
            if !entry.fixed_sqhd
                && let Some(head) = self.sqs.get(&entry.cqe.sqid.get()).and_then(|s| s.head)
            {
                entry.cqe.sqhd = U16::new(head);
            }
            let Some(cq) = self.cqs.get_mut(&qid) else {
                break;
            };
            let room = cq.room() as usize;
            if entry.duplicate && room < outstanding + 2 {
                cq.ready.pop_front();
                self.stats.duplicates_skipped += 1;
                continue;
            }
            if room == 0 {
                break;
            }
            cq.ready.pop_front();
            let phase = cq.driver_phase != entry.flip_phase;
            let mut cqe = entry.cqe;
            let status = (cqe.status.into_bits().get() & !1) | u16::from(phase);
            cqe.status = parastor_hw::nvme::queue::CqeStatus::from_bits(U16::new(status));
            let gpa = cq.driver_base + u64::from(cq.driver_tail) * CQE_LEN as u64;
            let bytes = cqe.as_bytes();
            // Everything but the status word first, then the status word
            // (with the phase tag) with release ordering: a reader that
            // sees the new phase sees the whole entry.
            let _ = cq.driver_mem.write_at(gpa, &bytes[..14]);
            let _ = cq.driver_mem.store_u16(gpa + 14, status, Ordering::Release);
            cq.driver_tail += 1;
            if cq.driver_tail == cq.size {
                cq.driver_tail = 0;
                cq.driver_phase = !cq.driver_phase;
            }
            // A reordered completion follows the one that overtook it.
            if !entry.duplicate
                && let Some(pos) = cq
                    .held
                    .iter()
                    .position(|(_, d)| matches!(d, Due::AfterNext(_)))
                && let Some((e, _)) = cq.held.remove(pos)
            {
                cq.ready.push_front(e);
            }
            written += 1;
            self.stats.delivered += 1;
            if entry.duplicate {
                self.stats.duplicated += 1;
            }
            self.delivered_under_plan += 1;
            self.check_triggers();
        }
        written
    }

    /// Whether any completion of a queue on `vector` waits for pumps to
    /// pass.
    fn ticking(&self, vector: u16) -> bool {
        self.cqs
            .values()
            .any(|cq| cq.vector == Some(vector) && !cq.held.is_empty())
    }

    fn falsify(&mut self, offset: u64, value: u64, width_mask: u64) -> u64 {
        let mut v = value;
        for f in &self.plan.registers {
            if f.offset == offset {
                v = (v & f.and) | f.or;
                self.stats.registers_falsified += 1;
            }
        }
        if offset == offset::CSTS && self.stats.cfs {
            v |= 2;
            self.stats.registers_falsified += 1;
        }
        v & width_mask
    }
}

impl Shared {
    /// Pumps the queues of `vector`; returns how many completions were
    /// written and whether completions wait for more pumps (`None`: the
    /// device is removed).
    fn pump_vector(&self, vector: u16) -> Option<(usize, bool)> {
        let mut st = self.state.lock();
        if st.stats.removed {
            return None;
        }
        let qids: Vec<u16> = st
            .cqs
            .iter()
            .filter(|(_, c)| c.vector == Some(vector))
            .map(|(q, _)| *q)
            .collect();
        let mut written = 0;
        for q in qids {
            written += st.pump(&*self.inner, q);
        }
        Some((written, st.ticking(vector)))
    }

    /// Whether a signal of `vector` reaches the driver (the swallow
    /// rules' counters advance).
    fn deliver_signal(&self, vector: u16) -> bool {
        let mut st = self.state.lock();
        !st.stats.removed && !st.swallow(vector)
    }

    fn pump_queue(&self, qid: u16) {
        let mut st = self.state.lock();
        st.pump(&*self.inner, qid);
    }

    fn sq_doorbell(&self, qid: u16, value: u32) {
        let mut st = self.state.lock();
        st.snoop(&*self.inner, qid, value);
    }

    fn cq_doorbell(&self, qid: u16, value: u32) -> bool {
        let mut st = self.state.lock();
        let Some(cq) = st.cqs.get_mut(&qid) else {
            return false;
        };
        if cq.shadow.is_none() {
            return false;
        }
        if value < cq.size {
            cq.driver_head = value;
        }
        st.pump(&*self.inner, qid);
        true
    }

    /// CC written: on EN 0 → 1 the admin queues are set up (the device
    /// gets the shadow ACQ), on EN 1 → 0 everything is forgotten.
    fn cc_write(&self, value: u32) {
        let mut st = self.state.lock();
        let en = value & 1 != 0;
        if en && !st.cc_en {
            st.forget_queues();
            let aqa = Aqa::from_bits(U32::new(st.aqa));
            let sq_size = u32::from(aqa.asqs()) + 1;
            let cq_size = u32::from(aqa.acqs()) + 1;
            let (asq, acq) = (st.asq, st.acq);
            if sq_size >= 2 {
                st.sqs.insert(
                    0,
                    Sq {
                        addr: asq,
                        size: sq_size,
                        tail: 0,
                        cqid: 0,
                        head: None,
                    },
                );
            }
            let shadow = st.add_cq(&*self.inner, 0, acq, cq_size, Some(0));
            self.inner.write_u64(0, offset::ACQ, shadow);
        } else if !en && st.cc_en {
            st.forget_queues();
        }
        st.cc_en = en;
    }
}

/// What a handed buffer's memory wrapper needs to know.
#[derive(Default)]
struct TapState {
    /// The completion queue (its identifier + 1) the driver keeps in this
    /// buffer; 0: none.
    cq: AtomicU32,
}

/// A handed buffer's memory: the device's, with reads of a completion
/// queue pumping it first.
struct TapMem {
    inner: GuestMem,
    tap: Arc<TapState>,
    shared: Weak<Shared>,
}

impl TapMem {
    fn before_read(&self) {
        let q = self.tap.cq.load(Ordering::Relaxed);
        if q != 0
            && let Some(shared) = self.shared.upgrade()
        {
            shared.pump_queue((q - 1) as u16);
        }
    }
}

impl GuestMemory for TapMem {
    fn extent(&self) -> Gpa {
        self.inner.extent()
    }

    fn read_at(&self, gpa: Gpa, dst: &mut [u8]) -> Result<(), MemoryError> {
        self.before_read();
        self.inner.read_at(gpa, dst)
    }

    fn write_at(&self, gpa: Gpa, src: &[u8]) -> Result<(), MemoryError> {
        self.inner.write_at(gpa, src)
    }

    fn fill_at(&self, gpa: Gpa, len: usize, byte: u8) -> Result<(), MemoryError> {
        self.inner.fill_at(gpa, len, byte)
    }

    fn atomic(
        &self,
        gpa: Gpa,
        width: Width,
        op: AtomicOp,
        order: Ordering,
    ) -> Result<u64, MemoryError> {
        if op == AtomicOp::Load {
            self.before_read();
        }
        self.inner.atomic(gpa, width, op, order)
    }

    fn write_vectored_at(&self, gpa: Gpa, srcs: &[&[u8]]) -> Result<(), MemoryError> {
        self.inner.write_vectored_at(gpa, srcs)
    }

    fn check(&self, range: GpaRange, access: Access) -> Result<(), MemoryError> {
        self.inner.check(range, access)
    }

    fn pin(
        &self,
        ranges: &[GpaRange],
        access: Access,
        domain: DmaDomainId,
        out: &mut PinSet,
    ) -> Result<(), PinError> {
        self.inner.pin(ranges, access, domain, out)
    }
}

/// Gives a handed buffer back: forgets it (and any queue in it), which
/// drops the device's buffer.
struct Releaser(Weak<Shared>);

impl DmaRelease for Releaser {
    fn release(&self, range: DeviceRange) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        let key = range.addr.get();
        let gone = {
            let mut st = shared.state.lock();
            let qids: Vec<u16> = st
                .cqs
                .iter()
                .filter(|(_, c)| c.driver_key == key)
                .map(|(q, _)| *q)
                .collect();
            for q in qids {
                st.remove_cq(q);
            }
            let len = range.len;
            st.sqs.retain(|_, s| !(s.addr >= key && s.addr - key < len));
            st.buffers.remove(&key)
        };
        drop(gone);
    }
}

/// Stands between a vector's event and the driver's waker: the device's
/// signal wakes this, and this wakes the driver unless the signal is
/// swallowed.
struct Relay {
    vector: u16,
    shared: Weak<Shared>,
    driver: Mutex<Option<Waker>>,
    /// Signals decided "deliver" since the driver last polled.
    granted: AtomicU32,
    /// Signals decided "swallow" since the driver last polled.
    swallowed: AtomicU32,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Decide now if the wrapper's state is free (a signal may come
        // from inside a device call the wrapper makes); otherwise the
        // driver's next poll decides.
        let decision = self.shared.upgrade().and_then(|shared| {
            let mut st = shared.state.try_lock()?;
            Some(!st.stats.removed && !st.swallow(self.vector))
        });
        match decision {
            Some(false) => {
                self.swallowed.fetch_add(1, Ordering::AcqRel);
                return;
            }
            Some(true) => {
                self.granted.fetch_add(1, Ordering::AcqRel);
            }
            None => {}
        }
        let waker = self.driver.lock().clone();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A vector's event as the driver sees it: pumps the vector's queues,
/// and signals only what the plan lets through.
struct FaultInterrupt {
    inner: Arc<dyn DeviceInterrupt>,
    relay: Arc<Relay>,
    waker: Waker,
    shared: Arc<Shared>,
}

impl DeviceInterrupt for FaultInterrupt {
    fn poll_signal(&self, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut w = self.relay.driver.lock();
            match &*w {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
        // Take every pending signal (a few at most), leaving the relay
        // registered below.
        let mut inner_cx = Context::from_waker(&self.waker);
        let mut fired = false;
        for _ in 0..4 {
            match self.inner.poll_signal(&mut inner_cx) {
                Poll::Ready(()) => fired = true,
                Poll::Pending => break,
            }
        }
        let granted = self.relay.granted.swap(0, Ordering::AcqRel);
        let swallowed = self.relay.swallowed.swap(0, Ordering::AcqRel);
        let vector = self.relay.vector;
        let Some((written, ticking)) = self.shared.pump_vector(vector) else {
            return Poll::Pending;
        };
        let signal = if granted > 0 {
            true
        } else if swallowed > 0 {
            false
        } else {
            (fired || written > 0) && self.shared.deliver_signal(vector)
        };
        if signal {
            return Poll::Ready(());
        }
        if ticking {
            // Held completions count pumps: come back for the next one.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl FaultInjector {
    /// Hands the device's buffer `buf` to the driver: kept here, reached by
    /// the driver through a memory wrapper that pumps a completion queue
    /// kept in it before every read.
    fn hand(&self, buf: DmaBuffer) -> DmaBuffer {
        let (mem, base) = buf.memory();
        let (mem, base) = (mem.clone(), base);
        let addr = buf.device_address(0);
        let len = buf.len();
        let tap = Arc::new(TapState::default());
        let wrapped = GuestMem::new(TapMem {
            inner: mem.clone(),
            tap: tap.clone(),
            shared: Arc::downgrade(&self.shared),
        });
        let release: Arc<dyn DmaRelease> = Arc::new(Releaser(Arc::downgrade(&self.shared)));
        let old = {
            let mut st = self.shared.state.lock();
            // A queue the wrapper already shadows in this memory (memory
            // re-attached after a keepalive save) is pumped on reads again.
            if let Some((q, _)) = st.cqs.iter().find(|(_, c)| c.driver_key == addr) {
                tap.cq.store(u32::from(*q) + 1, Ordering::Relaxed);
            }
            st.buffers.insert(
                addr,
                Handed {
                    len: len as u64,
                    mem,
                    base,
                    tap,
                    _inner: buf,
                },
            )
        };
        if let Some(old) = old {
            // The range was handed out before and never given back (a
            // keepalive save leaves memory with the device); it now
            // belongs to the re-attached buffer, so the old handle must
            // never release it.
            core::mem::forget(old);
        }
        DmaBuffer::new(wrapped, base, len, DeviceAddress::new(addr), Some(release))
    }
}

impl DeviceAccess for FaultInjector {
    fn id(&self) -> &str {
        self.shared.inner.id()
    }

    fn config_read_u32(&self, offset: u16) -> u32 {
        if self.shared.state.lock().stats.removed {
            return u32::MAX;
        }
        self.shared.inner.config_read_u32(offset)
    }

    fn config_write_u32(&self, offset: u16, value: u32) {
        if self.shared.state.lock().stats.removed {
            return;
        }
        self.shared.inner.config_write_u32(offset, value);
    }

    fn read_u32(&self, bar: u8, offset: u64) -> u32 {
        let mut st = self.shared.state.lock();
        if st.stats.removed {
            st.stats.registers_falsified += 1;
            return u32::MAX;
        }
        if bar == 0 && (offset == offset::ACQ || offset == offset::ACQ + 4) {
            let half = if offset == offset::ACQ {
                st.acq
            } else {
                st.acq >> 32
            };
            return half as u32;
        }
        drop(st);
        let v = self.shared.inner.read_u32(bar, offset);
        if bar != 0 {
            return v;
        }
        let mut st = self.shared.state.lock();
        st.falsify(offset, u64::from(v), u64::from(u32::MAX)) as u32
    }

    fn read_u64(&self, bar: u8, offset: u64) -> u64 {
        let mut st = self.shared.state.lock();
        if st.stats.removed {
            st.stats.registers_falsified += 1;
            return u64::MAX;
        }
        if bar == 0 && offset == offset::ACQ {
            return st.acq;
        }
        drop(st);
        let v = self.shared.inner.read_u64(bar, offset);
        if bar != 0 {
            return v;
        }
        let mut st = self.shared.state.lock();
        st.falsify(offset, v, u64::MAX)
    }

    fn write_u32(&self, bar: u8, offset: u64, value: u32) {
        let (removed, doorbell) = {
            let st = self.shared.state.lock();
            (
                st.stats.removed,
                if bar == 0 { st.doorbell(offset) } else { None },
            )
        };
        if removed {
            return;
        }
        if bar == 0 {
            match offset {
                offset::CC => self.shared.cc_write(value),
                offset::AQA => self.shared.state.lock().aqa = value,
                offset::ASQ => {
                    let mut st = self.shared.state.lock();
                    st.asq = (st.asq & !0xFFFF_FFFF) | u64::from(value);
                }
                o if o == offset::ASQ + 4 => {
                    let mut st = self.shared.state.lock();
                    st.asq = (st.asq & 0xFFFF_FFFF) | (u64::from(value) << 32);
                }
                offset::ACQ => {
                    let mut st = self.shared.state.lock();
                    st.acq = (st.acq & !0xFFFF_FFFF) | u64::from(value);
                    return;
                }
                o if o == offset::ACQ + 4 => {
                    let mut st = self.shared.state.lock();
                    st.acq = (st.acq & 0xFFFF_FFFF) | (u64::from(value) << 32);
                    return;
                }
                _ => match doorbell {
                    Some(Doorbell::SqTail(q)) => self.shared.sq_doorbell(q, value),
                    // A shadowed queue's head is the wrapper's to tell.
                    Some(Doorbell::CqHead(q)) if self.shared.cq_doorbell(q, value) => return,
                    _ => {}
                },
            }
        }
        self.shared.inner.write_u32(bar, offset, value);
    }

    fn write_u64(&self, bar: u8, offset: u64, value: u64) {
        {
            let mut st = self.shared.state.lock();
            if st.stats.removed {
                return;
            }
            if bar == 0 {
                match offset {
                    offset::ASQ => st.asq = value,
                    offset::ACQ => {
                        st.acq = value;
                        return;
                    }
                    _ => {}
                }
            }
        }
        if bar == 0 && offset == offset::CC {
            self.shared.cc_write(value as u32);
        }
        self.shared.inner.write_u64(bar, offset, value);
    }

    fn dma_domain(&self) -> DmaDomainId {
        self.shared.inner.dma_domain()
    }

    fn alloc_dma(&self, len: usize) -> Result<DmaBuffer, DeviceError> {
        let buf = self.shared.inner.alloc_dma(len)?;
        Ok(self.hand(buf))
    }

    fn attach_dma(&self, range: DeviceRange) -> Result<DmaBuffer, DeviceError> {
        let buf = self.shared.inner.attach_dma(range)?;
        Ok(self.hand(buf))
    }

    fn max_interrupts(&self) -> u16 {
        self.shared.inner.max_interrupts()
    }

    fn reset_function(&self) -> Result<(), DeviceError> {
        {
            let mut st = self.shared.state.lock();
            if st.stats.removed {
                return Err(DeviceError::Gone("surprise removal (fault injection)"));
            }
            // Every queue of the device is gone; CC is back at 0.
            st.forget_queues();
            st.cc_en = false;
        }
        self.shared.inner.reset_function()
    }

    fn map_dma(&self, mem: &GuestMem, range: GpaRange) -> Result<DeviceRange, DeviceError> {
        self.shared.inner.map_dma(mem, range)
    }

    fn unmap_dma(&self, range: DeviceRange) -> Result<(), DeviceError> {
        self.shared.inner.unmap_dma(range)
    }

    fn map_interrupt(&self, vector: u16) -> Result<Arc<dyn DeviceInterrupt>, DeviceError> {
        let inner = self.shared.inner.map_interrupt(vector)?;
        let relay = Arc::new(Relay {
            vector,
            shared: Arc::downgrade(&self.shared),
            driver: Mutex::new(None),
            granted: AtomicU32::new(0),
            swallowed: AtomicU32::new(0),
        });
        Ok(Arc::new(FaultInterrupt {
            inner,
            waker: Waker::from(relay.clone()),
            relay,
            shared: self.shared.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn identify_faults_rewrite_the_named_fields() {
        let mut data = [0u8; IDENTIFY_DATA_LEN];
        IdentifyFault::Mdts(7).apply(&mut data);
        IdentifyFault::Nn(u32::MAX).apply(&mut data);
        let id = IdentifyController::read_from_bytes(&data[..]).unwrap();
        assert_eq!((id.mdts, id.nn.get()), (7, u32::MAX));

        let mut ns = IdentifyNamespace::new_zeroed();
        ns.flbas = ns.flbas.with_index_low(2);
        let mut data = [0u8; IDENTIFY_DATA_LEN];
        data.copy_from_slice(ns.as_bytes());
        IdentifyFault::Lbads(17).apply(&mut data);
        IdentifyFault::Nsze(1 << 40).apply(&mut data);
        let ns = IdentifyNamespace::read_from_bytes(&data[..]).unwrap();
        assert_eq!(ns.lbaf[2].lbads(), 17, "the formatted LBA format");
        assert_eq!(ns.lbaf[0].lbads(), 0, "the others untouched");
        assert_eq!(
            (ns.nsze.get(), ns.ncap.get(), ns.nuse.get()),
            (1 << 40, 1 << 40, 1 << 40)
        );
    }

    #[test]
    fn a_patch_stays_inside_the_structure() {
        let mut data = [0u8; IDENTIFY_DATA_LEN];
        IdentifyFault::Patch {
            cns: 1,
            offset: 4094,
            bytes: [1, 2, 3, 4, 5, 6, 7, 8],
            len: 4,
        }
        .apply(&mut data);
        assert_eq!(&data[4094..], &[1, 2]);
        assert_eq!(&data[..2], &[3, 4], "wrapped to the start");
        assert!(data[2..4094].iter().all(|&b| b == 0));
        // `len` above 8 is 8.
        let mut data = [0u8; IDENTIFY_DATA_LEN];
        IdentifyFault::Patch {
            cns: 0,
            offset: 0,
            bytes: [9; 8],
            len: 200,
        }
        .apply(&mut data);
        assert_eq!(data.iter().filter(|&&b| b == 9).count(), 8);
    }

    #[test]
    fn the_generator_is_deterministic_and_spread() {
        let mut a = SplitMix(5);
        let mut b = SplitMix(5);
        let xs: Vec<u64> = (0..64).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..64).map(|_| b.next()).collect();
        assert_eq!(xs, ys);
        let thirds = xs.iter().filter(|x| x.is_multiple_of(3)).count();
        assert!((10..=35).contains(&thirds), "{thirds} of 64");
    }

    #[test]
    fn the_builders_say_what_they_select() {
        let s = Select::io().opcode(2).skip(3).once().one_in(4);
        assert_eq!(
            s,
            Select {
                queue: QueueSelect::Io,
                opcode: Some(2),
                skip: 3,
                count: 1,
                one_in: 4,
            }
        );
        let p = FaultPlan::new()
            .identify(IdentifyFault::Mdts(0))
            .cfs_after(4)
            .removal_after(9)
            .swallow_interrupts(Some(1), 2, 3)
            .register(offset::CAP, 0, 1);
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.rules[0].when.opcode, Some(AdminOpcode::IDENTIFY.get()));
        assert_eq!((p.cfs_after, p.removal_after), (Some(4), Some(9)));
        assert_eq!(p.interrupts[0].count, 3);
        assert_eq!(p.registers[0].or, 1);
    }
}
