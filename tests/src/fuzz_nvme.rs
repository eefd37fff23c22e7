//! The `nvme_controller` fuzz harness: arbitrary bytes → a hostile guest
//! driving parastor's NVMe controller ([`NvmeController`]) over RAM-backed
//! namespaces.
//!
//! The controller (its configuration is part of the input: queue pairs,
//! queue sizes, MSI-X vectors, NN, MDTS, commands in flight per queue) has
//! 0–3 namespaces over small RAM disks of 512- or 4096-byte sectors, some
//! behind the in-memory reservation layer. The input may first bring it up
//! the way a driver does (bus mastering, admin queue, CC.EN, one I/O queue
//! pair per CQ), so deep states are reachable, then runs actions:
//!
//! - PCI configuration writes and reads of any offset and width;
//! - BAR0 (registers and doorbells) and BAR4 (MSI-X) writes and reads of
//!   any offset and width, including CC, AQA/ASQ/ACQ, INTMS/INTMC, NSSR;
//! - NVM commands on an I/O queue and admin commands on the admin queue,
//!   built from the wire types with biased fields (small LBAs and lengths,
//!   data pointers into the data area, PRP lists and SGL segments in the
//!   list area, or raw 16 bytes), then the SQ doorbell;
//! - PRP lists and SGL segments written into the list area (structured:
//!   page-aligned entries, chain pointers, segment descriptors of every
//!   type), and raw bytes anywhere in guest memory (queues included);
//! - doorbell writes of any value to any queue, completions consumed the
//!   way a driver consumes them (phase tag, CQ head doorbell);
//! - namespace hot add / remove, controller reset (CC.EN 1→0→1),
//!   shutdown notification, and save → restore into a fresh controller
//!   over the same guest memory.
//!
//! After each action the controller is stepped with
//! [`NvmeController::poll_work`] until it reports nothing to do.
//!
//! Properties:
//! - nothing panics;
//! - nothing hangs: a controller that keeps reporting work for
//!   `MAX_POLLS` consecutive steps with no new guest input fails the run;
//! - nothing allocates without bound (libFuzzer's `-rss_limit_mb` and
//!   `-malloc_limit_mb` check it while fuzzing; the input's own sizes —
//!   queues, NN, MDTS — are kept small here);
//! - a command that completes carries a status, and its CQE names the SQ
//!   it came from.
//!
//! # Input format
//!
//! A `Header` (12 bytes), then actions until the input runs out; each
//! action starts with a kind byte (`kind % 16` selects it).

use crate::scratch::ScratchMemory;
use arbitrary::{Arbitrary, Unstructured};
use core::task::{Context, Waker};
use parastor_core::memory::GuestMemoryExt;
use parastor_core::ram::RamDisk;
use parastor_core::{Disk, Gpa, GuestMem, ReservationsDisk};
use parastor_hw::Guid;
use parastor_hw::nvme::command::{AdminOpcode, NvmOpcode};
use parastor_hw::nvme::data::{RawSglDescriptor, SglDescriptorType};
use parastor_hw::nvme::queue::{Cdw0, Cqe, DataTransferKind, Sqe};
use parastor_hw::nvme::regs::{Cap, Cc, Csts, offset as offsets};
use parastor_nvme::{
    ControllerConfig, MSIX_BAR, MsiMessage, MsiSink, NvmeController, REGISTER_BAR,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromZeros, IntoBytes};

/// Most actions one input runs.
const MAX_STEPS: usize = 96;
/// Consecutive `poll_work` steps reporting work, with no new guest input,
/// before the controller is deemed to hang.
const MAX_POLLS: usize = 10_000;
/// Guest memory.
const MEM_SIZE: u64 = 0x10_0000;
/// The guest's page size (CC.MPS = 0).
const PAGE: u64 = 4096;
/// Admin submission and completion queues.
const ASQ: u64 = 0x1000;
const ACQ: u64 = 0x3000;
/// I/O queue pair `q` (1-based): SQ at `IOQ + (q-1) * 0x4000`, CQ one
/// page-pair later.
const IOQ: u64 = 0x1_0000;
/// Where PRP lists and SGL segments go.
const LISTS: u64 = 0x3_0000;
const LISTS_LEN: u64 = 0x1_0000;
/// Where data buffers go.
const DATA: u64 = 0x4_0000;
const DATA_LEN: u64 = MEM_SIZE - DATA;
/// Most entries of a queue the harness creates (it fits two pages).
const MAX_ENTRIES: u32 = 64;
/// Most I/O queue pairs.
const MAX_PAIRS: u16 = 4;

/// Controller configuration and bring-up.
#[derive(Arbitrary, Debug)]
struct Header {
    /// Bits 0–1: namespaces (`% 4`); bit 2: 4096-byte sectors; bit 3:
    /// reservations on the first namespace; bit 4: bring the controller
    /// up first; bit 5: create the I/O queues too.
    flags: u8,
    /// I/O queue pairs, `1 + % MAX_PAIRS`.
    pairs: u8,
    /// Entries per queue at most, `2 + % (MAX_ENTRIES - 1)`.
    entries: u8,
    /// MSI-X vectors, `1 + % 8`.
    vectors: u8,
    /// NN, `1 + % 8`.
    max_namespaces: u8,
    /// MDTS: `4 KiB << (% 7)`.
    mdts: u8,
    /// Commands in flight per CQ, `1 + % 8`.
    per_queue: u8,
    /// Sectors per namespace, relative to a small base.
    sectors: u8,
    /// Admin queue entries at bring-up, `2 + % (MAX_ENTRIES - 1)`.
    admin_entries: u8,
    /// I/O queue entries at bring-up, `2 + % (MAX_ENTRIES - 1)`.
    io_entries: u8,
    /// The host identifier's low byte (Set Features at bring-up), 0: none;
    /// bit 7: the extended (128-bit) form.
    host_id: u8,
}

/// Counts the interrupts the controller signals.
#[derive(Default)]
struct Interrupts(AtomicU64);

impl MsiSink for Interrupts {
    fn signal(&self, _vector: u16, _message: MsiMessage) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The guest's view of one queue pair.
#[derive(Clone, Copy, Debug, Default)]
struct Queue {
    /// Whether the guest set it up (admin: CC.EN with AQA; I/O: created).
    live: bool,
    sq: u64,
    cq: u64,
    entries: u32,
    sq_tail: u32,
    cq_head: u32,
    phase: bool,
}

struct Rig {
    mem: GuestMem,
    controller: NvmeController,
    config: ControllerConfig,
    irqs: Arc<Interrupts>,
    /// Namespaces attached: (NSID, disk), for restore.
    namespaces: Vec<(u32, Disk)>,
    sector_size: u32,
    sectors: u64,
    reservations: bool,
    /// Queue 0 is the admin queue.
    queues: Vec<Queue>,
    dstrd: u8,
    cid: u16,
}

impl Rig {
    fn new_disk(&self, pr: bool) -> Disk {
        let ram = Disk::new(
            RamDisk::new(self.sectors * u64::from(self.sector_size), self.sector_size).unwrap(),
        )
        .unwrap();
        if pr {
            Disk::new(ReservationsDisk::new(ram)).unwrap()
        } else {
            ram
        }
    }

    fn write32(&self, offset: u64, v: u32) {
        self.controller
            .bar_write(REGISTER_BAR, offset, &v.to_le_bytes());
    }

    fn write64(&self, offset: u64, v: u64) {
        self.controller
            .bar_write(REGISTER_BAR, offset, &v.to_le_bytes());
    }

    fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.controller.bar_read(REGISTER_BAR, offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn doorbell(&self, index: u64) -> u64 {
        offsets::DOORBELLS + index * (4 << self.dstrd)
    }

    /// Steps the controller until it has nothing to do.
    fn pump(&self, what: &dyn Fn() -> String) {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..MAX_POLLS {
            if self.controller.poll_work(&mut cx).is_pending() {
                return;
            }
        }
        panic!("controller still busy after {MAX_POLLS} polls: {}", what());
    }

    /// Bus mastering on, controller reset, admin queue, CC.EN = 1, as a
    /// driver does.
    fn bring_up(&mut self, admin_entries: u32, what: &dyn Fn() -> String) {
        // Command: memory space + bus master.
        self.controller.config_write(0x04, &0x0006u16.to_le_bytes());
        self.write32(offsets::CC, 0);
        self.pump(what);
        let n = admin_entries.clamp(2, MAX_ENTRIES);
        self.write32(offsets::AQA, (n - 1) | (n - 1) << 16);
        self.write64(offsets::ASQ, ASQ);
        self.write64(offsets::ACQ, ACQ);
        let cc = Cc::new().with_en(true).with_iosqes(6).with_iocqes(4);
        self.write32(offsets::CC, cc.into_bits().get());
        self.queues[0] = Queue {
            live: true,
            sq: ASQ,
            cq: ACQ,
            entries: n,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
        };
        for q in &mut self.queues[1..] {
            q.live = false;
        }
        self.pump(what);
    }

    /// Set Features Host Identifier: `id` in the low byte, 8 or 16 bytes.
    fn set_host_id(&mut self, id: u8, what: &dyn Fn() -> String) {
        let mut bytes = [0u8; 16];
        bytes[0] = id & 0x7F;
        let _ = self.mem.write_at(Gpa::new(DATA), &bytes);
        let mut s = self.sqe(AdminOpcode::SET_FEATURES.get(), 0);
        s.set_prps(DATA, 0);
        s.cdw10.set(0x81);
        s.cdw11.set(u32::from(id >> 7));
        self.submit(0, &s);
        self.pump(what);
        self.consume(0, what);
    }

    /// Creates I/O queue pair `qid` with `entries` entries (CQ then SQ).
    fn create_io_queues(&mut self, qid: u16, entries: u32, what: &dyn Fn() -> String) {
        let entries = entries.clamp(2, MAX_ENTRIES);
        let sq = IOQ + u64::from(qid - 1) * 0x4000;
        let cq = sq + 0x2000;
        let size = (entries - 1) << 16 | u32::from(qid);
        let mut s = self.sqe(AdminOpcode::CREATE_IO_CQ.get(), 0);
        s.set_prps(cq, 0);
        s.cdw10.set(size);
        s.cdw11.set(0b11 | u32::from(qid % 2) << 16); // PC, IEN, vector
        self.submit(0, &s);
        self.pump(what);
        let mut s = self.sqe(AdminOpcode::CREATE_IO_SQ.get(), 0);
        s.set_prps(sq, 0);
        s.cdw10.set(size);
        s.cdw11.set(1 | u32::from(qid) << 16); // PC, CQ
        self.submit(0, &s);
        self.pump(what);
        self.consume(0, what);
        if let Some(q) = self.queues.get_mut(usize::from(qid)) {
            *q = Queue {
                live: true,
                sq,
                cq,
                entries,
                sq_tail: 0,
                cq_head: 0,
                phase: true,
            };
        }
    }

    fn sqe(&mut self, opcode: u8, nsid: u32) -> Sqe {
        self.cid = self.cid.wrapping_add(1);
        let mut s = Sqe::new_zeroed();
        s.cdw0 = Cdw0::new().with_opc(opcode).with_cid(self.cid);
        s.nsid.set(nsid);
        s
    }

    /// Writes `sqe` at queue `q`'s tail and rings its doorbell.
    fn submit(&mut self, q: usize, sqe: &Sqe) {
        let Some(queue) = self.queues.get_mut(q) else {
            return;
        };
        if queue.entries == 0 {
            return;
        }
        let at = queue.sq + u64::from(queue.sq_tail) * 64;
        let _ = self.mem.write_at(Gpa::new(at), sqe.as_bytes());
        queue.sq_tail = (queue.sq_tail + 1) % queue.entries;
        let tail = queue.sq_tail;
        self.write32(self.doorbell(2 * q as u64), tail);
    }

    /// Takes every new completion of queue `q` and rings the CQ head
    /// doorbell, as a driver's interrupt handler does.
    fn consume(&mut self, q: usize, what: &dyn Fn() -> String) {
        let Some(mut queue) = self.queues.get(q).copied() else {
            return;
        };
        if !queue.live || queue.entries == 0 {
            return;
        }
        let mut taken = 0;
        while taken < queue.entries {
            let at = queue.cq + u64::from(queue.cq_head) * 16;
            let Ok(cqe) = self.mem.read_obj::<Cqe>(Gpa::new(at)) else {
                break;
            };
            let phase = cqe.status.p();
            if phase != queue.phase {
                break;
            }
            // A completion names the queue it completes a command of.
            assert!(
                usize::from(cqe.sqid.get()) < self.queues.len(),
                "completion for SQ {} out of range: {}",
                cqe.sqid.get(),
                what()
            );
            queue.cq_head += 1;
            if queue.cq_head == queue.entries {
                queue.cq_head = 0;
                queue.phase = !queue.phase;
            }
            taken += 1;
        }
        if taken > 0 {
            self.write32(self.doorbell(2 * q as u64 + 1), queue.cq_head);
        }
        self.queues[q] = queue;
    }
}

/// A guest address biased towards the interesting areas.
fn address(u: &mut Unstructured<'_>, align: u64) -> arbitrary::Result<u64> {
    let sel = u8::arbitrary(u)?;
    let raw = u64::arbitrary(u)?;
    let a = match sel % 8 {
        0..=3 => DATA + raw % DATA_LEN,
        4 | 5 => LISTS + raw % LISTS_LEN,
        6 => raw % MEM_SIZE,
        _ => raw,
    };
    Ok(if sel & 0x80 == 0 { a & !(align - 1) } else { a })
}

/// A data pointer: PRPs into the data area (PRP2 maybe a list), an SGL
/// descriptor, or raw bytes. Sets PSDT.
fn data_pointer(u: &mut Unstructured<'_>, s: &mut Sqe) -> arbitrary::Result<()> {
    match u8::arbitrary(u)? % 5 {
        0 | 1 => {
            let prp1 = address(u, 4)?;
            let prp2 = if bool::arbitrary(u)? {
                address(u, PAGE)?
            } else {
                (LISTS + (u64::arbitrary(u)? % LISTS_LEN)) & !7
            };
            s.set_prps(prp1, prp2);
        }
        2 | 3 => {
            let ty = match u8::arbitrary(u)? % 6 {
                0 | 1 => SglDescriptorType::DATA_BLOCK,
                2 => SglDescriptorType::SEGMENT,
                3 => SglDescriptorType::LAST_SEGMENT,
                4 => SglDescriptorType::BIT_BUCKET,
                _ => SglDescriptorType::new(u8::arbitrary(u)? >> 4),
            };
            let at = if matches!(ty, SglDescriptorType::DATA_BLOCK) {
                address(u, 1)?
            } else {
                LISTS + u64::arbitrary(u)? % LISTS_LEN
            };
            let len = match u8::arbitrary(u)? % 3 {
                0 => u32::arbitrary(u)?,
                _ => u32::from(u16::arbitrary(u)?) & !0xF,
            };
            let d = RawSglDescriptor::new(ty, at, len);
            s.dptr.copy_from_slice(d.as_bytes());
            s.cdw0 = s.cdw0.with_psdt(DataTransferKind::SGL_METADATA_BUFFER);
        }
        _ => {
            s.dptr = <[u8; 16]>::arbitrary(u)?;
        }
    }
    if u8::arbitrary(u)? < 16 {
        s.cdw0 = s
            .cdw0
            .with_psdt(DataTransferKind::new(u8::arbitrary(u)? % 4));
    }
    Ok(())
}

/// An NVM command with biased fields.
fn io_command(rig: &mut Rig, u: &mut Unstructured<'_>) -> arbitrary::Result<Sqe> {
    const OPS: [NvmOpcode; 13] = [
        NvmOpcode::READ,
        NvmOpcode::WRITE,
        NvmOpcode::FLUSH,
        NvmOpcode::COMPARE,
        NvmOpcode::WRITE_ZEROES,
        NvmOpcode::DATASET_MANAGEMENT,
        NvmOpcode::VERIFY,
        NvmOpcode::RESERVATION_REGISTER,
        NvmOpcode::RESERVATION_REPORT,
        NvmOpcode::RESERVATION_ACQUIRE,
        NvmOpcode::RESERVATION_RELEASE,
        NvmOpcode::WRITE_UNCORRECTABLE,
        NvmOpcode::COPY,
    ];
    let sel = u8::arbitrary(u)?;
    let op = if sel < 240 {
        OPS[usize::from(sel) % OPS.len()].get()
    } else {
        u8::arbitrary(u)?
    };
    let nsid = match u8::arbitrary(u)? % 8 {
        0..=5 => 1 + u32::from(u8::arbitrary(u)? % 4),
        6 => u32::MAX,
        _ => u32::arbitrary(u)?,
    };
    let mut s = rig.sqe(op, nsid);
    data_pointer(u, &mut s)?;
    let slba = match u8::arbitrary(u)? % 4 {
        0..=2 => u64::from(u8::arbitrary(u)?),
        _ => u64::arbitrary(u)?,
    };
    s.cdw10.set(slba as u32);
    s.cdw11.set((slba >> 32) as u32);
    let cdw12 = match u8::arbitrary(u)? % 4 {
        // Small NLB, maybe FUA / DEAC.
        0..=2 => u32::from(u8::arbitrary(u)? % 16) | (u32::arbitrary(u)? & 0xC200_0000),
        _ => u32::arbitrary(u)?,
    };
    s.cdw12.set(cdw12);
    if op == NvmOpcode::DATASET_MANAGEMENT.get() || op == NvmOpcode::RESERVATION_REPORT.get() {
        s.cdw10.set(u32::from(u8::arbitrary(u)?));
        s.cdw11.set(u32::arbitrary(u)?);
    }
    if op >= NvmOpcode::RESERVATION_REGISTER.get() && op != NvmOpcode::COPY.get() {
        s.cdw10.set(u32::arbitrary(u)?);
    }
    if bool::arbitrary(u)? {
        s.cdw13.set(u32::arbitrary(u)?);
        s.cdw14.set(u32::arbitrary(u)?);
        s.cdw15.set(u32::arbitrary(u)?);
    }
    Ok(s)
}

/// An admin command with biased fields.
fn admin_command(rig: &mut Rig, u: &mut Unstructured<'_>) -> arbitrary::Result<Sqe> {
    const OPS: [AdminOpcode; 14] = [
        AdminOpcode::IDENTIFY,
        AdminOpcode::GET_LOG_PAGE,
        AdminOpcode::SET_FEATURES,
        AdminOpcode::GET_FEATURES,
        AdminOpcode::CREATE_IO_CQ,
        AdminOpcode::CREATE_IO_SQ,
        AdminOpcode::DELETE_IO_SQ,
        AdminOpcode::DELETE_IO_CQ,
        AdminOpcode::ABORT,
        AdminOpcode::ASYNC_EVENT_REQUEST,
        AdminOpcode::KEEP_ALIVE,
        AdminOpcode::DOORBELL_BUFFER_CONFIG,
        AdminOpcode::NAMESPACE_MANAGEMENT,
        AdminOpcode::FORMAT_NVM,
    ];
    let sel = u8::arbitrary(u)?;
    let op = if sel < 240 {
        OPS[usize::from(sel) % OPS.len()].get()
    } else {
        u8::arbitrary(u)?
    };
    let nsid = match u8::arbitrary(u)? % 6 {
        0..=2 => u32::from(u8::arbitrary(u)? % 4),
        3 => u32::MAX,
        4 => u32::MAX - 1,
        _ => u32::arbitrary(u)?,
    };
    let mut s = rig.sqe(op, nsid);
    data_pointer(u, &mut s)?;
    // Queue commands point at the queue area; qids and sizes stay small.
    if op == AdminOpcode::CREATE_IO_CQ.get() || op == AdminOpcode::CREATE_IO_SQ.get() {
        let qid = u32::from(u8::arbitrary(u)? % (MAX_PAIRS as u8 + 2));
        let size = u32::from(u8::arbitrary(u)?) % (2 * MAX_ENTRIES);
        s.cdw10.set(size << 16 | qid);
        s.cdw11.set(u32::arbitrary(u)? & 0x000F_0007 | 1);
        let base = IOQ + u64::from(qid.max(1) - 1) * 0x4000;
        s.set_prps(
            if bool::arbitrary(u)? {
                base
            } else {
                address(u, PAGE)?
            },
            0,
        );
    } else if op == AdminOpcode::DELETE_IO_SQ.get() || op == AdminOpcode::DELETE_IO_CQ.get() {
        s.cdw10
            .set(u32::from(u8::arbitrary(u)? % (MAX_PAIRS as u8 + 2)));
    } else {
        let small = u8::arbitrary(u)?;
        let cdw10 = match small % 3 {
            0 => u32::from(small >> 2) | u32::from(u8::arbitrary(u)?) << 16,
            1 => u32::from(u8::arbitrary(u)?) | u32::from(u8::arbitrary(u)? % 4) << 16,
            _ => u32::arbitrary(u)?,
        };
        s.cdw10.set(cdw10);
        s.cdw11.set(u32::arbitrary(u)?);
        s.cdw12.set(u32::from(u16::arbitrary(u)?));
        s.cdw13.set(u32::arbitrary(u)? % 4);
        s.cdw14.set(u32::arbitrary(u)?);
    }
    Ok(s)
}

/// Runs one action; `Err` when the input ran out.
fn run_action(
    rig: &mut Rig,
    u: &mut Unstructured<'_>,
    what: &dyn Fn() -> String,
) -> arbitrary::Result<()> {
    let kind = u8::arbitrary(u)?;
    match kind % 16 {
        0 => {
            let offset = u16::arbitrary(u)? % 0x1000;
            let width = [1usize, 2, 4, 3][usize::from(kind >> 4) % 4];
            let v = u32::arbitrary(u)?.to_le_bytes();
            rig.controller.config_write(offset, &v[..width]);
        }
        1 => {
            let bar = if kind & 0x10 != 0 {
                MSIX_BAR
            } else {
                REGISTER_BAR
            };
            let offset = match u8::arbitrary(u)? % 4 {
                0 | 1 => u64::from(u8::arbitrary(u)? & !3),
                2 => offsets::DOORBELLS + u64::from(u8::arbitrary(u)? & !3),
                _ => u64::arbitrary(u)? % 0x4000,
            };
            let width = [4usize, 8, 1, 2][usize::from(kind >> 5) % 4];
            let v = u64::arbitrary(u)?.to_le_bytes();
            rig.controller.bar_write(bar, offset, &v[..width]);
        }
        2..=4 => {
            let s = io_command(rig, u)?;
            let live: Vec<usize> = (1..rig.queues.len())
                .filter(|&q| rig.queues[q].live)
                .collect();
            let q = if live.is_empty() {
                1 + usize::from(kind >> 4) % (rig.queues.len() - 1).max(1)
            } else {
                live[usize::from(kind >> 4) % live.len()]
            };
            rig.submit(q, &s);
        }
        5 | 6 => {
            let s = admin_command(rig, u)?;
            rig.submit(0, &s);
        }
        7 => {
            // Raw bytes anywhere (queues, lists, data).
            let at = address(u, 1)?;
            let len = usize::from(u8::arbitrary(u)?);
            let bytes = u.bytes(len.min(u.len()))?;
            let _ = rig.mem.write_at(Gpa::new(at), bytes);
        }
        8 => {
            // A PRP list page: data pages, maybe a chain pointer.
            let at = (LISTS + (u64::arbitrary(u)? % LISTS_LEN)) & !7;
            let n = usize::from(u8::arbitrary(u)? % 64);
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(match u8::arbitrary(u)? % 8 {
                    0..=5 => (DATA + (u64::arbitrary(u)? % DATA_LEN)) & !(PAGE - 1),
                    6 => (LISTS + (u64::arbitrary(u)? % LISTS_LEN)) & !(PAGE - 1),
                    _ => u64::arbitrary(u)?,
                });
            }
            let _ = rig.mem.write_at(Gpa::new(at), entries.as_bytes());
        }
        9 => {
            // An SGL segment.
            let at = (LISTS + (u64::arbitrary(u)? % LISTS_LEN)) & !0xF;
            let n = usize::from(u8::arbitrary(u)? % 16);
            let mut bytes = Vec::with_capacity(n * 16);
            for _ in 0..n {
                let sel = u8::arbitrary(u)?;
                let ty = match sel % 8 {
                    0..=3 => SglDescriptorType::DATA_BLOCK,
                    4 => SglDescriptorType::BIT_BUCKET,
                    5 => SglDescriptorType::SEGMENT,
                    6 => SglDescriptorType::LAST_SEGMENT,
                    _ => SglDescriptorType::new(sel >> 4),
                };
                let addr = if matches!(
                    ty,
                    SglDescriptorType::SEGMENT | SglDescriptorType::LAST_SEGMENT
                ) {
                    (LISTS + (u64::arbitrary(u)? % LISTS_LEN)) & !0xF
                } else {
                    address(u, 1)?
                };
                let len = if sel & 0x80 != 0 {
                    u32::arbitrary(u)?
                } else {
                    u32::from(u16::arbitrary(u)? % 0x2000) & !0xF
                };
                bytes.extend_from_slice(RawSglDescriptor::new(ty, addr, len).as_bytes());
            }
            let _ = rig.mem.write_at(Gpa::new(at), &bytes);
        }
        10 => {
            // Any doorbell, any value.
            let index = u64::from(u8::arbitrary(u)? % 16);
            let v = if kind & 0x10 != 0 {
                u32::arbitrary(u)?
            } else {
                u32::from(u8::arbitrary(u)? % 80)
            };
            rig.write32(rig.doorbell(index), v);
        }
        11 => {
            let q = usize::from(kind >> 4) % rig.queues.len();
            rig.consume(q, what);
        }
        12 => {
            // Namespace hot add / remove.
            let nsid = 1 + u32::from(u8::arbitrary(u)? % 9);
            if kind & 0x10 != 0 {
                let disk = rig.new_disk(kind & 0x20 != 0);
                if rig.controller.add_namespace(nsid, disk.clone()).is_ok() {
                    rig.namespaces.push((nsid, disk));
                }
            } else {
                let _ = rig.controller.remove_namespace(nsid);
                rig.namespaces.retain(|(n, _)| *n != nsid);
            }
        }
        13 => {
            // Reads never change anything the harness depends on.
            let mut b = [0u8; 8];
            let width = [4usize, 8, 1, 2][usize::from(kind >> 4) % 4];
            let offset = u64::arbitrary(u)? % 0x4000;
            let bar = if kind & 0x40 != 0 {
                MSIX_BAR
            } else {
                REGISTER_BAR
            };
            rig.controller.bar_read(bar, offset, &mut b[..width]);
            rig.controller
                .config_read((offset % 0x1000) as u16, &mut b[..width.min(4)]);
        }
        14 => match (kind >> 4) % 4 {
            // Reset and bring up again (queues are gone).
            0 => {
                let n = u32::from(u8::arbitrary(u)?);
                rig.bring_up(n, what);
            }
            // Shutdown notification (normal or abrupt).
            1 => {
                let cc = rig.read32(offsets::CC);
                let shn = 1 + u32::from(kind >> 6 & 1);
                rig.write32(offsets::CC, cc & !(3 << 14) | shn << 14);
            }
            // NSSR.
            2 => rig.write32(offsets::NSSR, 0x4E56_4D65),
            // Create an I/O queue pair.
            _ => {
                let qid = 1 + u16::from(u8::arbitrary(u)?) % (rig.queues.len() as u16 - 1).max(1);
                let n = u32::from(u8::arbitrary(u)?);
                rig.create_io_queues(qid, n, what);
            }
        },
        _ => {
            // Save, then restore into a fresh controller over the same
            // memory (or, sometimes, thaw the saved one).
            rig.pump(what);
            if let Ok(saved) = rig.controller.save() {
                if kind & 0x10 != 0 {
                    rig.controller.thaw();
                } else {
                    let restored = NvmeController::restore(
                        rig.config.clone(),
                        rig.mem.clone(),
                        rig.irqs.clone(),
                        &saved,
                        rig.namespaces.clone(),
                    );
                    match restored {
                        Ok(c) => rig.controller = c,
                        Err(e) => panic!(
                            "restore of a just-saved controller failed: {e:?}: {}",
                            what()
                        ),
                    }
                }
            }
        }
    }
    Ok(())
}

/// The harness: see the [module docs](self).
pub fn nvme_controller(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(h) = Header::arbitrary(&mut u) else {
        return;
    };
    let mut config = ControllerConfig::new(Guid::new(0x5a5a_0001, 0x0002, 0x0003, [4; 8]));
    config.serial = String::from("FUZZ0001");
    config.max_io_queue_pairs = 1 + u16::from(h.pairs) % MAX_PAIRS;
    config.max_queue_entries = 2 + u32::from(h.entries) % (MAX_ENTRIES - 1);
    config.msix_vectors = 1 + u16::from(h.vectors % 8);
    config.max_namespaces = 1 + u32::from(h.max_namespaces % 8);
    config.max_transfer_bytes = PAGE << (h.mdts % 7);
    config.commands_per_queue = 1 + u16::from(h.per_queue % 8);
    let mem = GuestMem::new(ScratchMemory::take(MEM_SIZE));
    let irqs = Arc::new(Interrupts::default());
    let controller = NvmeController::new(config.clone(), mem.clone(), irqs.clone());
    let sector_size = if h.flags & 4 != 0 { 4096 } else { 512 };
    let base = if sector_size == 512 { 64 } else { 8 };
    let mut rig = Rig {
        mem,
        controller,
        config: config.clone(),
        irqs,
        namespaces: Vec::new(),
        sector_size,
        sectors: base + u64::from(h.sectors) % (4 * base),
        reservations: h.flags & 8 != 0,
        queues: vec![Queue::default(); usize::from(config.max_io_queue_pairs) + 1],
        dstrd: 0,
        cid: 0,
    };
    let mut cap = [0u8; 8];
    rig.controller
        .bar_read(REGISTER_BAR, offsets::CAP, &mut cap);
    rig.dstrd = Cap::from_bits(U64::new(u64::from_le_bytes(cap)))
        .dstrd()
        .min(4);
    for i in 0..u32::from(h.flags % 4) {
        let disk = rig.new_disk(rig.reservations && i == 0);
        if rig.controller.add_namespace(i + 1, disk.clone()).is_ok() {
            rig.namespaces.push((i + 1, disk));
        }
    }
    let step = core::cell::Cell::new(0usize);
    let header = format!("{h:?}");
    let what = || format!("step {}, header {header}", step.get());
    if h.flags & 0x10 != 0 {
        rig.bring_up(u32::from(h.admin_entries) + 2, &what);
        let ready = Csts::from_bits(U32::new(rig.read32(offsets::CSTS))).rdy();
        if ready && h.host_id != 0 {
            rig.set_host_id(h.host_id, &what);
        }
        if ready && h.flags & 0x20 != 0 {
            for qid in 1..rig.queues.len() as u16 {
                rig.create_io_queues(qid, u32::from(h.io_entries) + 2, &what);
            }
        }
    }
    for i in 0..MAX_STEPS {
        step.set(i);
        if u.is_empty() || run_action(&mut rig, &mut u, &what).is_err() {
            break;
        }
        rig.pump(&what);
    }
    // Whatever the guest did, the controller can be reset and brought up.
    rig.bring_up(8, &what);
    let csts = Csts::from_bits(U32::new(rig.read32(offsets::CSTS)));
    assert!(
        csts.rdy() && !csts.cfs(),
        "a reset and a valid enable leave the controller not ready ({csts:?}): {}",
        what()
    );
}
