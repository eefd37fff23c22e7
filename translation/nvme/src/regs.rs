//! The controller registers in BAR0 and the lifecycle they drive: CAP, VS,
//! INTMS/INTMC, CC, CSTS, NSSR, AQA, ASQ, ACQ, and the doorbells.
//!
//! - CC.EN 0 → 1 checks CC (command set, page size, arbitration, queue
//!   entry sizes) and the admin queue attributes; anything the controller
//!   does not support sets CSTS.CFS instead of CSTS.RDY.
//! - CC.EN 1 → 0 resets the controller: nothing new is fetched, commands
//!   already running on disks finish (their completions are discarded),
//!   then every queue is deleted and CSTS.RDY drops to 0. The host polls
//!   RDY, as it must (CAP.TO bounds the wait).
//! - CC.SHN: nothing new is fetched, running I/O finishes, then CSTS.SHST
//!   reads "complete".
//! - NSSR ("NVMe") resets like CC.EN 1 → 0 and sets CSTS.NSSRO.

use crate::pci::access_ok;
use crate::queue::{Cq, DSTRD, Sq};
use crate::{ControllerConfig, Lifecycle, Shared};
use core::sync::atomic::Ordering;
use parastor_hw::nvme::queue::{CQE_LEN, SQE_LEN};
use parastor_hw::nvme::regs::{
    Aqa, ArbitrationMechanism, CAP_CSS_NVM, Cap, Cc, CommandSetSelected, Csts, Doorbell,
    NSSR_RESET_VALUE, QUEUE_BASE_MASK, ShutdownNotification, ShutdownStatus, Version, offset,
};
use zerocopy::little_endian::U32;

/// Largest memory page size supported: `2 ^ (12 + MPSMAX)` (64 KiB).
const MPSMAX: u8 = 4;

/// The register file.
#[derive(Clone, Debug)]
pub(crate) struct Registers {
    pub(crate) cap: Cap,
    pub(crate) cc: Cc,
    pub(crate) csts: Csts,
    pub(crate) aqa: Aqa,
    pub(crate) asq: u64,
    pub(crate) acq: u64,
}

impl Registers {
    pub(crate) fn new(config: &ControllerConfig) -> Self {
        let mqes = (config.max_queue_entries - 1).min(0xFFFF) as u16;
        Self {
            cap: Cap::new()
                .with_mqes(mqes)
                .with_cqr(true)
                // 500 ms units: a drain of running commands may take a while.
                .with_to(60)
                .with_dstrd(DSTRD)
                .with_nssrs(true)
                .with_css(CAP_CSS_NVM)
                .with_mpsmin(0)
                .with_mpsmax(MPSMAX),
            cc: Cc::new(),
            csts: Csts::new(),
            aqa: Aqa::new(),
            asq: 0,
            acq: 0,
        }
    }

    /// The register bytes at `0x00..0x40`.
    fn image(&self, s: &Shared) -> [u8; 0x40] {
        let mut b = [0u8; 0x40];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        put(
            offset::CAP as usize,
            &self.cap.into_bits().get().to_le_bytes(),
        );
        put(
            offset::VS as usize,
            &Version::V2_0.into_bits().get().to_le_bytes(),
        );
        let intms = s.intms.load(Ordering::Acquire);
        put(offset::INTMS as usize, &intms.to_le_bytes());
        put(offset::INTMC as usize, &intms.to_le_bytes());
        put(
            offset::CC as usize,
            &self.cc.into_bits().get().to_le_bytes(),
        );
        let csts = self
            .csts
            .with_cfs(self.csts.cfs() || s.lifecycle() == Lifecycle::Fatal);
        put(offset::CSTS as usize, &csts.into_bits().get().to_le_bytes());
        put(
            offset::AQA as usize,
            &self.aqa.into_bits().get().to_le_bytes(),
        );
        put(offset::ASQ as usize, &self.asq.to_le_bytes());
        put(offset::ACQ as usize, &self.acq.to_le_bytes());
        b
    }
}

/// Reads BAR0: 4 or 8 bytes, naturally aligned; doorbells and anything
/// else read as zeros.
pub(crate) fn bar_read(s: &Shared, offset: u64, data: &mut [u8]) {
    data.fill(0);
    if !access_ok(offset, data.len(), &[4, 8]) || offset >= 0x40 {
        return;
    }
    let image = s.regs.lock().image(s);
    let at = offset as usize;
    if let Some(src) = image.get(at..at + data.len()) {
        data.copy_from_slice(src);
    }
}

/// Writes BAR0: registers (4 or 8 bytes, naturally aligned) and doorbells
/// (4 bytes). Anything else is ignored.
pub(crate) fn bar_write(s: &Shared, offset: u64, data: &[u8]) {
    if offset >= s.pci.bar0_size() {
        return; // Outside the BAR: not this function's.
    }
    if offset >= offset::DOORBELLS {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        let value = u32::from_le_bytes(bytes);
        if let Some(db) = Doorbell::from_offset(offset, DSTRD) {
            doorbell_write(s, db, value);
        }
        return;
    }
    if !access_ok(offset, data.len(), &[4, 8]) {
        return;
    }
    for (i, chunk) in data.chunks(4).enumerate() {
        let Ok(b) = <[u8; 4]>::try_from(chunk) else {
            return;
        };
        register_write(s, offset + 4 * i as u64, u32::from_le_bytes(b));
    }
}

/// A doorbell write: stored and the worker woken, or an asynchronous error
/// event for a write to a missing queue or beyond its size.
fn doorbell_write(s: &Shared, db: Doorbell, value: u32) {
    if s.lifecycle() != Lifecycle::Ready && s.lifecycle() != Lifecycle::ShuttingDown {
        return;
    }
    match s.doorbells.write(db, value) {
        Ok(Some(worker)) => s.wakeups.wake(worker),
        Ok(None) => {}
        Err(info) => {
            let qid = match db {
                Doorbell::SqTail(q) | Doorbell::CqHead(q) => q,
            };
            s.events.lock().error_event(info, qid);
            s.wakeups.wake(Shared::ADMIN);
        }
    }
}

fn register_write(s: &Shared, at: u64, value: u32) {
    match at {
        offset::INTMS => {
            s.intms.fetch_or(value, Ordering::AcqRel);
        }
        offset::INTMC => {
            let before = s.intms.fetch_and(!value, Ordering::AcqRel);
            let unmasked = before & value;
            let pending = s.intm_pending.fetch_and(!unmasked, Ordering::AcqRel) & unmasked;
            let mut bits = pending;
            while bits != 0 {
                let v = bits.trailing_zeros() as u16;
                bits &= bits - 1;
                s.pci.msix.signal(v);
            }
        }
        offset::CC => cc_write(s, value),
        offset::NSSR => {
            let mut regs = s.regs.lock();
            if value == NSSR_RESET_VALUE && regs.cap.nssrs() {
                regs.cc = Cc::new();
                regs.csts = regs.csts.with_nssro(true);
                start_reset(s, &mut regs);
            }
        }
        offset::AQA => {
            let mut regs = s.regs.lock();
            if !regs.cc.en() {
                regs.aqa = Aqa::from_bits(U32::new(value));
            }
        }
        a @ (offset::ASQ | 0x2C | offset::ACQ | 0x34) => {
            let mut regs = s.regs.lock();
            if regs.cc.en() {
                return;
            }
            let reg = if a < offset::ACQ {
                &mut regs.asq
            } else {
                &mut regs.acq
            };
            *reg = if a % 8 == 0 {
                (*reg & !0xFFFF_FFFF) | u64::from(value)
            } else {
                (*reg & 0xFFFF_FFFF) | u64::from(value) << 32
            } & QUEUE_BASE_MASK;
        }
        _ => {}
    }
}

fn cc_write(s: &Shared, value: u32) {
    let new = Cc::from_bits(U32::new(value));
    let mut regs = s.regs.lock();
    let old = regs.cc;
    match (old.en(), new.en()) {
        (true, false) => {
            regs.cc = new;
            start_reset(s, &mut regs);
        }
        (false, true) => {
            regs.cc = new;
            if s.lifecycle() == Lifecycle::Resetting {
                // The previous reset is still draining: the host did not wait
                // for RDY = 0. Enabling now is a host error.
                regs.csts = regs.csts.with_cfs(true);
                return;
            }
            enable(s, &mut regs);
        }
        (true, true) => {
            // Only SHN may change while enabled.
            regs.cc = old.with_shn(new.shn());
            if new.shn() != ShutdownNotification::NONE
                && old.shn() == ShutdownNotification::NONE
                && s.lifecycle() == Lifecycle::Ready
            {
                regs.csts = regs.csts.with_shst(ShutdownStatus::OCCURRING);
                s.set_lifecycle(Lifecycle::ShuttingDown);
                drain_locked(s, &mut regs);
            }
        }
        (false, false) => regs.cc = new,
    }
}

/// Why an enable is refused (CSTS.CFS).
fn enable_problem(s: &Shared, regs: &Registers) -> Option<&'static str> {
    let cc = regs.cc;
    if cc.css() != CommandSetSelected::NVM {
        return Some("CC.CSS selects a command set other than NVM");
    }
    if cc.mps() > MPSMAX {
        return Some("CC.MPS is beyond CAP.MPSMAX");
    }
    if cc.ams() != ArbitrationMechanism::ROUND_ROBIN {
        return Some("CC.AMS selects an arbitration mechanism not offered");
    }
    if cc.iosqes() != 0 && usize::from(cc.iosqes()) != SQE_LEN.trailing_zeros() as usize {
        return Some("CC.IOSQES is not 6 (64-byte entries)");
    }
    if cc.iocqes() != 0 && usize::from(cc.iocqes()) != CQE_LEN.trailing_zeros() as usize {
        return Some("CC.IOCQES is not 4 (16-byte entries)");
    }
    // Over PCIe, CAP.MQES bounds the I/O queues only; an admin queue has
    // 2..=4096 entries (AQA's 12-bit 0's based fields, 0 invalid).
    let (asqs, acqs) = (u32::from(regs.aqa.asqs()), u32::from(regs.aqa.acqs()));
    if asqs == 0 || acqs == 0 {
        return Some("AQA sizes an admin queue of 1 entry: at least 2 are needed");
    }
    let mem = &*s.mem;
    if crate::queue::check_ring(mem, regs.asq, asqs + 1, SQE_LEN).is_err()
        || crate::queue::check_ring(mem, regs.acq, acqs + 1, CQE_LEN).is_err()
    {
        return Some("ASQ or ACQ places an admin queue outside guest memory");
    }
    None
}

fn enable(s: &Shared, regs: &mut Registers) {
    if let Some(_why) = enable_problem(s, regs) {
        regs.csts = regs.csts.with_cfs(true);
        s.set_lifecycle(Lifecycle::Fatal);
        return;
    }
    let page_size = regs.cc.page_size();
    let asize = u32::from(regs.aqa.asqs()) + 1;
    let csize = u32::from(regs.aqa.acqs()) + 1;
    {
        let mut admin = s.admin.lock();
        admin.enable(
            Sq {
                qid: 0,
                gpa: regs.asq,
                size: asize,
                head: 0,
                cqid: 0,
                shadow: None,
                deleting: false,
                outstanding: 0,
            },
            Cq {
                qid: 0,
                gpa: regs.acq,
                size: csize,
                tail: 0,
                phase: true,
                head: 0,
                ien: true,
                iv: 0,
                shadow: None,
            },
            page_size,
        );
        for w in s.workers.iter() {
            w.lock().params.page_size = page_size;
        }
    }
    s.doorbells
        .open(Doorbell::SqTail(0), asize, Shared::ADMIN, 0);
    s.doorbells
        .open(Doorbell::CqHead(0), csize, Shared::ADMIN, 0);
    regs.csts = Csts::new().with_rdy(true).with_nssro(regs.csts.nssro());
    s.set_lifecycle(Lifecycle::Ready);
    s.wakeups.wake(Shared::ADMIN);
}

/// Starts a controller reset: nothing new runs; the reset finishes once
/// every running command has.
fn start_reset(s: &Shared, regs: &mut Registers) {
    match s.lifecycle() {
        Lifecycle::Disabled => {
            regs.csts = Csts::new().with_nssro(regs.csts.nssro());
            return;
        }
        Lifecycle::Resetting => return,
        _ => {}
    }
    s.set_lifecycle(Lifecycle::Resetting);
    drain_locked(s, regs);
    // Running commands may be waiting for their next poll.
    s.wake_all();
}

/// A worker reported it has nothing running: finish a reset or shutdown
/// if every worker is drained.
pub(crate) fn drain_progress(s: &Shared) {
    let mut regs = s.regs.lock();
    drain_locked(s, &mut regs);
}

fn drain_locked(s: &Shared, regs: &mut Registers) {
    let life = s.lifecycle();
    if !matches!(life, Lifecycle::Resetting | Lifecycle::ShuttingDown) {
        return;
    }
    if s.workers.iter().any(|w| w.lock().running() != 0) {
        return;
    }
    match life {
        Lifecycle::Resetting => {
            s.admin.lock().reset();
            s.namespaces.lock().reset_flush();
            for w in s.workers.iter() {
                w.lock().clear();
            }
            s.doorbells.close_all();
            s.events.lock().reset();
            s.intms.store(0, Ordering::Release);
            s.intm_pending.store(0, Ordering::Release);
            regs.csts = Csts::new().with_nssro(regs.csts.nssro());
            s.set_lifecycle(Lifecycle::Disabled);
        }
        _ => {
            // Running I/O is done: make every namespace durable, then
            // report the shutdown complete (see `shutdown_flushed`).
            if s.namespaces.lock().start_flush() {
                s.wakeups.wake(s.watcher_index());
            }
        }
    }
}

/// Every namespace flushed for a shutdown: CSTS.SHST reads complete.
pub(crate) fn shutdown_flushed(s: &Shared) {
    let mut regs = s.regs.lock();
    if s.lifecycle() == Lifecycle::ShuttingDown && regs.csts.shst() == ShutdownStatus::OCCURRING {
        regs.csts = regs.csts.with_shst(ShutdownStatus::COMPLETE);
    }
}

/// A fatal controller error (guest memory under a queue went away):
/// CSTS.CFS, and nothing runs until a reset.
pub(crate) fn fatal(s: &Shared) {
    s.set_lifecycle(Lifecycle::Fatal);
}

/// Signals vector `iv` unless INTMS masks it (then it is remembered and
/// signalled by the INTMC write that unmasks it).
pub(crate) fn interrupt(s: &Shared, iv: u16) {
    if iv < 32 {
        let bit = 1u32 << iv;
        if s.intms.load(Ordering::Acquire) & bit != 0 {
            s.intm_pending.fetch_or(bit, Ordering::AcqRel);
            return;
        }
    }
    s.pci.msix.signal(iv);
}

/// The saved registers.
pub(crate) fn save(regs: &Registers) -> crate::state::RegistersV1 {
    crate::state::RegistersV1 {
        cc: regs.cc.into_bits().get(),
        csts: regs.csts.into_bits().get(),
        aqa: regs.aqa.into_bits().get(),
        asq: regs.asq,
        acq: regs.acq,
    }
}

/// Restores saved registers.
pub(crate) fn restore(regs: &mut Registers, saved: &crate::state::RegistersV1) {
    regs.cc = Cc::from_bits(U32::new(saved.cc));
    regs.csts = Csts::from_bits(U32::new(saved.csts));
    regs.aqa = Aqa::from_bits(U32::new(saved.aqa));
    regs.asq = saved.asq & QUEUE_BASE_MASK;
    regs.acq = saved.acq & QUEUE_BASE_MASK;
}
