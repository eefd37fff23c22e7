//! Tests that drive the controller as a guest would: PCI configuration,
//! register and doorbell writes, raw SQEs in guest memory, CQEs and MSI-X
//! messages read back.

use crate::*;
use alloc::vec;
use alloc::vec::Vec;
use parastor_core::ram::RamDisk;
use parastor_core::{Gpa, GuestMemoryExt, RamGuestMemory};
use parastor_hw::nvme::command::{AdminOpcode, Cns, NvmOpcode};
use parastor_hw::nvme::identify::{IdentifyController, IdentifyNamespace};
use parastor_hw::nvme::queue::{Cdw0, Cqe, Sqe};
use parastor_hw::nvme::regs::{Csts, offset};
use parastor_hw::nvme::status::{CommandSpecificStatus, GenericStatus, StatusWord};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros};

pub(crate) const MEM_SIZE: u64 = 16 << 20;
pub(crate) const ASQ: u64 = 0x10000;
pub(crate) const ACQ: u64 = 0x20000;
/// Per I/O queue pair `q`: SQ at IO_SQ + q * 0x10000, CQ at IO_CQ + ...
pub(crate) const IO_SQ: u64 = 0x100000;
pub(crate) const IO_CQ: u64 = 0x200000;
/// Data buffers.
pub(crate) const DATA: u64 = 0x400000;
pub(crate) const ADMIN_ENTRIES: u32 = 16;

/// Records every MSI-X message.
#[derive(Default)]
pub(crate) struct Msi(pub(crate) spin::Mutex<Vec<(u16, MsiMessage)>>);

impl MsiSink for Msi {
    fn signal(&self, vector: u16, message: MsiMessage) {
        self.0.lock().push((vector, message));
    }
}

impl Msi {
    pub(crate) fn take(&self) -> Vec<(u16, MsiMessage)> {
        core::mem::take(&mut *self.0.lock())
    }
}

/// A queue as the guest driver sees it.
#[derive(Clone, Copy)]
pub(crate) struct GuestQueue {
    pub(crate) sq: u64,
    pub(crate) cq: u64,
    pub(crate) size: u32,
    pub(crate) sq_tail: u32,
    pub(crate) cq_head: u32,
    pub(crate) phase: bool,
    pub(crate) qid: u16,
}

impl GuestQueue {
    fn new(qid: u16, sq: u64, cq: u64, size: u32) -> Self {
        Self {
            sq,
            cq,
            size,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            qid,
        }
    }
}

pub(crate) struct Rig {
    pub(crate) ctrl: NvmeController,
    pub(crate) mem: GuestMem,
    pub(crate) msi: Arc<Msi>,
    pub(crate) admin: GuestQueue,
    pub(crate) io: Vec<GuestQueue>,
    pub(crate) cid: u16,
}

pub(crate) fn config() -> ControllerConfig {
    let mut c = ControllerConfig::new(Guid::parse("12345678-9abc-def0-1234-56789abcdef0").unwrap());
    c.serial = "SN-0042".into();
    c.model = "parastor test".into();
    c.firmware = "fw1.2".into();
    c.ieee_oui = [0x12, 0x34, 0x56];
    c.max_io_queue_pairs = 4;
    c.msix_vectors = 5;
    c.max_namespaces = 16;
    c.commands_per_queue = 8;
    c
}

pub(crate) fn ram_disk(bytes: u64, sector: u32) -> Disk {
    Disk::new(RamDisk::new(bytes, sector).unwrap()).unwrap()
}

impl Rig {
    pub(crate) fn new() -> Self {
        Self::with_config(config())
    }

    pub(crate) fn with_config(config: ControllerConfig) -> Self {
        let mem = GuestMem::new(RamGuestMemory::new(MEM_SIZE));
        let msi = Arc::new(Msi::default());
        let ctrl = NvmeController::new(config, mem.clone(), msi.clone());
        Self::around(ctrl, mem, msi)
    }

    pub(crate) fn around(ctrl: NvmeController, mem: GuestMem, msi: Arc<Msi>) -> Self {
        Self {
            ctrl,
            mem,
            msi,
            admin: GuestQueue::new(0, ASQ, ACQ, ADMIN_ENTRIES),
            io: Vec::new(),
            cid: 0,
        }
    }

    pub(crate) fn read32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.ctrl.bar_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    pub(crate) fn write32(&self, off: u64, v: u32) {
        self.ctrl.bar_write(0, off, &v.to_le_bytes());
    }

    pub(crate) fn write64(&self, off: u64, v: u64) {
        self.ctrl.bar_write(0, off, &v.to_le_bytes());
    }

    pub(crate) fn csts(&self) -> Csts {
        Csts::from_bits(U32::new(self.read32(offset::CSTS)))
    }

    /// Memory space + bus master, MSI-X on with vector v → address
    /// 0xFEE0_0000 + v * 0x10, data 0x40 + v, unmasked.
    pub(crate) fn pci_on(&self) {
        self.ctrl.config_write(4, &[0x06, 0x00]);
        for v in 0..u64::from(self.ctrl.config().msix_vectors) {
            let base = v * 16;
            self.ctrl
                .bar_write(4, base, &(0xFEE0_0000u32 + v as u32 * 0x10).to_le_bytes());
            self.ctrl.bar_write(4, base + 4, &0u32.to_le_bytes());
            self.ctrl
                .bar_write(4, base + 8, &(0x40u32 + v as u32).to_le_bytes());
            self.ctrl.bar_write(4, base + 12, &0u32.to_le_bytes());
        }
        self.ctrl.config_write(0x82, &0x8000u16.to_le_bytes());
    }

    /// Enables with CC = `cc` after programming the admin queue.
    pub(crate) fn try_enable(&mut self, cc: u32) {
        self.write32(offset::AQA, (ADMIN_ENTRIES - 1) << 16 | (ADMIN_ENTRIES - 1));
        self.write64(offset::ASQ, ASQ);
        self.write64(offset::ACQ, ACQ);
        self.write32(offset::CC, cc);
        self.ctrl.run_until_idle();
        self.admin = GuestQueue::new(0, ASQ, ACQ, ADMIN_ENTRIES);
    }

    /// PCI on and CC.EN = 1 the way Linux does it.
    pub(crate) fn enable(&mut self) {
        self.pci_on();
        self.try_enable(0x0046_0001);
        assert!(self.csts().rdy(), "CSTS.RDY after a valid enable");
        assert!(!self.csts().cfs());
    }

    pub(crate) fn next_cid(&mut self) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        self.cid
    }

    /// Writes `sqe` at the queue's tail (without ringing).
    pub(crate) fn put(&self, q: &mut GuestQueue, sqe: &Sqe) {
        let gpa = Gpa::new(q.sq + u64::from(q.sq_tail) * 64);
        self.mem.write_obj(gpa, sqe).unwrap();
        q.sq_tail = (q.sq_tail + 1) % q.size;
    }

    pub(crate) fn ring_sq(&self, q: &GuestQueue) {
        self.write32(0x1000 + u64::from(q.qid) * 8, q.sq_tail);
    }

    /// The next completion if the controller posted one.
    pub(crate) fn poll_cqe(&self, q: &mut GuestQueue) -> Option<Cqe> {
        let gpa = Gpa::new(q.cq + u64::from(q.cq_head) * 16);
        let cqe: Cqe = self.mem.read_obj(gpa).unwrap();
        if cqe.status.p() != q.phase {
            return None;
        }
        q.cq_head += 1;
        if q.cq_head == q.size {
            q.cq_head = 0;
            q.phase = !q.phase;
        }
        self.write32(0x1000 + u64::from(q.qid) * 8 + 4, q.cq_head);
        Some(cqe)
    }

    pub(crate) fn admin_cmd(&mut self, mut sqe: Sqe) -> Cqe {
        let cid = self.next_cid();
        sqe.cdw0 = sqe.cdw0.with_cid(cid);
        let mut q = self.admin;
        self.put(&mut q, &sqe);
        self.ring_sq(&q);
        self.ctrl.run_until_idle();
        let cqe = self.poll_cqe(&mut q).expect("admin completion");
        self.admin = q;
        assert_eq!(cqe.cid.get(), cid);
        assert_eq!(cqe.sqid.get(), 0);
        cqe
    }

    pub(crate) fn create_cq(&mut self, qid: u16, size: u32, iv: u16) -> StatusWord {
        let mut sqe = sqe(AdminOpcode::CREATE_IO_CQ.get());
        sqe.set_prps(IO_CQ + u64::from(qid) * 0x10000, 0);
        sqe.cdw10 = U32::new((size - 1) << 16 | u32::from(qid));
        sqe.cdw11 = U32::new(u32::from(iv) << 16 | 0b11);
        self.admin_cmd(sqe).status.status()
    }

    pub(crate) fn create_sq(&mut self, qid: u16, cqid: u16, size: u32) -> StatusWord {
        let mut sqe = sqe(AdminOpcode::CREATE_IO_SQ.get());
        sqe.set_prps(IO_SQ + u64::from(qid) * 0x10000, 0);
        sqe.cdw10 = U32::new((size - 1) << 16 | u32::from(qid));
        sqe.cdw11 = U32::new(u32::from(cqid) << 16 | 1);
        self.admin_cmd(sqe).status.status()
    }

    /// I/O queue pair `qid` (SQ `qid` on CQ `qid`, vector `qid`).
    pub(crate) fn io_pair(&mut self, qid: u16, size: u32) -> usize {
        assert_eq!(self.create_cq(qid, size, qid), StatusWord::SUCCESS);
        assert_eq!(self.create_sq(qid, qid, size), StatusWord::SUCCESS);
        self.io.push(GuestQueue::new(
            qid,
            IO_SQ + u64::from(qid) * 0x10000,
            IO_CQ + u64::from(qid) * 0x10000,
            size,
        ));
        self.io.len() - 1
    }

    /// Submits `sqe` on I/O queue index `i` and waits for its completion.
    pub(crate) fn io_cmd(&mut self, i: usize, mut sqe: Sqe) -> Cqe {
        let cid = self.next_cid();
        sqe.cdw0 = sqe.cdw0.with_cid(cid);
        let mut q = self.io[i];
        self.put(&mut q, &sqe);
        self.ring_sq(&q);
        self.ctrl.run_until_idle();
        let cqe = self.poll_cqe(&mut q).expect("I/O completion");
        self.io[i] = q;
        assert_eq!(cqe.cid.get(), cid);
        cqe
    }

    pub(crate) fn identify(&mut self, cns: Cns, nsid: u32) -> (StatusWord, Vec<u8>) {
        let mut s = sqe(AdminOpcode::IDENTIFY.get());
        s.nsid = U32::new(nsid);
        s.set_prps(DATA, 0);
        s.cdw10 = U32::new(u32::from(cns.get()));
        self.mem.fill_at(Gpa::new(DATA), 4096, 0xEE).unwrap();
        let cqe = self.admin_cmd(s);
        let mut page = vec![0u8; 4096];
        self.mem.read_at(Gpa::new(DATA), &mut page).unwrap();
        (cqe.status.status(), page)
    }
}

pub(crate) fn sqe(opc: u8) -> Sqe {
    let mut s = Sqe::new_zeroed();
    s.cdw0 = Cdw0::new().with_opc(opc);
    s
}

/// A Read or Write of `blocks` at `lba` of namespace `nsid` to/from `gpa`
/// (PRPs for up to two 4 KiB pages).
pub(crate) fn rw(op: NvmOpcode, nsid: u32, lba: u64, blocks: u32, gpa: u64) -> Sqe {
    let mut s = sqe(op.get());
    s.nsid = U32::new(nsid);
    s.set_prps(gpa, gpa + 4096);
    s.cdw10 = U32::new(lba as u32);
    s.cdw11 = U32::new((lba >> 32) as u32);
    s.cdw12 = U32::new(blocks - 1);
    s
}

fn generic(sc: GenericStatus) -> StatusWord {
    StatusWord::generic(sc)
}

// ---------------------------------------------------------------------------
// PCI
// ---------------------------------------------------------------------------

#[test]
fn pci_identity_class_and_capabilities() {
    let rig = Rig::new();
    let c = &rig.ctrl;
    let mut b = [0u8; 4];
    c.config_read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0xB111_1414);
    c.config_read(8, &mut b);
    assert_eq!(&b[1..], &[0x02, 0x08, 0x01], "prog-if, subclass, class");
    // Status: capability list.
    let mut w = [0u8; 2];
    c.config_read(6, &mut w);
    assert_ne!(u16::from_le_bytes(w) & 0x10, 0);
    // Walk the capability list.
    let mut p = [0u8; 1];
    c.config_read(0x34, &mut p);
    let mut found = Vec::new();
    let mut at = p[0];
    while at != 0 {
        let mut h = [0u8; 2];
        c.config_read(u16::from(at), &mut h);
        found.push((h[0], at));
        at = h[1];
    }
    assert_eq!(found.iter().map(|f| f.0).collect::<Vec<_>>(), [0x10, 0x11]);
    let msix = found[1].1 as u16;
    c.config_read(msix + 2, &mut w);
    assert_eq!(u16::from_le_bytes(w) & 0x7FF, 4, "table size 0's based");
    c.config_read(msix + 4, &mut b);
    assert_eq!(u32::from_le_bytes(b), 4, "table in BAR4 at offset 0");
    c.config_read(msix + 8, &mut b);
    assert_eq!(u32::from_le_bytes(b) & 7, 4, "PBA in BAR4");
    // A misaligned or odd-width access reads zeros, never panics.
    let mut three = [0xFFu8; 3];
    c.config_read(1, &mut three);
    assert_eq!(three, [0; 3]);
    c.config_read(0xFFFF, &mut p);
    c.config_write(0xFFFF, &[1]);
}

#[test]
fn bar_sizing_and_readonly_header() {
    let rig = Rig::new();
    let c = &rig.ctrl;
    c.config_write(0x10, &u32::MAX.to_le_bytes());
    c.config_write(0x14, &u32::MAX.to_le_bytes());
    let (mut lo, mut hi) = ([0u8; 4], [0u8; 4]);
    c.config_read(0x10, &mut lo);
    c.config_read(0x14, &mut hi);
    let size = parastor_hw::pci::config::memory_bar_size(
        u32::from_le_bytes(lo),
        Some(u32::from_le_bytes(hi)),
    );
    assert_eq!(size, c.bar_size(0));
    assert!(size.unwrap() >= 0x1000 + 5 * 8);
    // Place BAR0, read the address back.
    c.config_write(0x10, &0xFE00_0000u32.to_le_bytes());
    c.config_write(0x14, &0u32.to_le_bytes());
    c.config_read(0x10, &mut lo);
    assert_eq!(u32::from_le_bytes(lo), 0xFE00_0004, "64-bit memory BAR");
    // The vendor ID does not change.
    c.config_write(0, &[0, 0, 0, 0]);
    c.config_read(0, &mut lo);
    assert_eq!(u32::from_le_bytes(lo), 0xB111_1414);
}

#[test]
fn no_dma_while_bus_master_is_off() {
    let mut rig = Rig::new();
    rig.ctrl.config_write(4, &[0x02, 0x00]); // memory space only
    rig.try_enable(0x0046_0001);
    assert!(rig.csts().rdy());
    let mut s = sqe(AdminOpcode::IDENTIFY.get());
    s.set_prps(DATA, 0);
    s.cdw10 = U32::new(1);
    s.cdw0 = s.cdw0.with_cid(77);
    let mut q = rig.admin;
    rig.put(&mut q, &s);
    rig.ring_sq(&q);
    rig.ctrl.run_until_idle();
    assert!(
        rig.poll_cqe(&mut q).is_none(),
        "nothing runs without bus master"
    );
    rig.ctrl.config_write(4, &[0x06, 0x00]);
    rig.ctrl.run_until_idle();
    let cqe = rig.poll_cqe(&mut q).expect("runs once bus master is on");
    assert_eq!(cqe.cid.get(), 77);
    assert!(cqe.status.is_success());
}

// ---------------------------------------------------------------------------
// Registers and lifecycle
// ---------------------------------------------------------------------------

#[test]
fn cap_and_version() {
    let rig = Rig::new();
    let mut b = [0u8; 8];
    rig.ctrl.bar_read(0, 0, &mut b);
    let cap = parastor_hw::nvme::regs::Cap::from_bits(U64::new(u64::from_le_bytes(b)));
    assert_eq!(cap.mqes(), 1023);
    assert!(cap.cqr());
    assert!(cap.nssrs());
    assert_eq!(cap.css(), 1);
    assert_eq!(cap.dstrd(), 0);
    assert_eq!(rig.read32(offset::VS), 0x0002_0000);
    // Two dword reads give the same CAP.
    let lo = rig.read32(0);
    let hi = rig.read32(4);
    assert_eq!(u64::from(hi) << 32 | u64::from(lo), u64::from_le_bytes(b));
}

#[test]
fn enable_validates_cc() {
    for (cc, why) in [
        (0x0046_0001 | 1 << 4, "CSS = 1"),
        (0x0046_0001 | 5 << 7, "MPS = 5 (128 KiB) beyond MPSMAX"),
        (0x0046_0001 | 1 << 11, "AMS = weighted round robin"),
        (0x0045_0001, "IOSQES = 5"),
        (0x0056_0001, "IOCQES = 5"),
    ] {
        let mut rig = Rig::new();
        rig.pci_on();
        rig.try_enable(cc);
        let csts = rig.csts();
        assert!(csts.cfs(), "{why}: CSTS.CFS");
        assert!(!csts.rdy(), "{why}: not ready");
        // A reset clears CFS.
        rig.write32(offset::CC, 0);
        rig.ctrl.run_until_idle();
        assert!(!rig.csts().cfs(), "{why}: reset clears CFS");
        rig.try_enable(0x0046_0001);
        assert!(rig.csts().rdy(), "{why}: a good enable then works");
    }
    // Admin queue outside guest memory.
    let rig = Rig::new();
    rig.pci_on();
    rig.write32(offset::AQA, 0x000F_000F);
    rig.write64(offset::ASQ, MEM_SIZE);
    rig.write64(offset::ACQ, ACQ);
    rig.write32(offset::CC, 0x0046_0001);
    assert!(rig.csts().cfs());
}

#[test]
fn reset_discards_queues_and_reenable_works() {
    let mut rig = Rig::new();
    rig.enable();
    rig.io_pair(1, 16);
    rig.write32(offset::CC, 0x0046_0000);
    rig.ctrl.run_until_idle();
    assert!(!rig.csts().rdy());
    // The I/O queue is gone: its doorbell is a missing queue now, and
    // admin registers are writable again.
    rig.try_enable(0x0046_0001);
    assert!(rig.csts().rdy());
    // Creating the same queue IDs again works: nothing survived the reset.
    rig.io.clear();
    rig.io_pair(1, 16);
}

#[test]
fn identify_controller_carries_the_callers_identity() {
    let mut rig = Rig::new();
    rig.enable();
    let (st, page) = rig.identify(Cns::CONTROLLER, 0);
    assert_eq!(st, StatusWord::SUCCESS);
    let id = IdentifyController::read_from_bytes(&page).unwrap();
    assert_eq!(id.vid.get(), 0x1414);
    assert_eq!(&id.sn[..8], b"SN-0042 ");
    assert_eq!(&id.mn[..14], b"parastor test ");
    assert_eq!(&id.fr, b"fw1.2   ");
    assert_eq!(id.ieee, [0x12, 0x34, 0x56]);
    assert_eq!(id.nn.get(), 16);
    assert_eq!(id.mdts, 8, "1 MiB in 4 KiB pages");
    assert_eq!(id.sqes, 0x66);
    assert_eq!(id.cqes, 0x44);
    assert!(id.oacs.doorbell_buffer_config());
    assert_eq!(id.ctratt.get() & 1, 1, "128-bit host identifiers");
    assert_eq!(id.oaes.get(), 1 << 8, "namespace attribute notices");
    assert_eq!(id.aerl, 3);
    assert_eq!(id.elpe, 63);
    assert_eq!(id.vwc, 0b101);
    assert_eq!(id.sgls.support(), 1);
    let nqn = b"nqn.2014-08.org.nvmexpress:uuid:12345678-9abc-def0-1234-56789abcdef0";
    assert_eq!(&id.subnqn[..nqn.len()], nqn);
    assert_eq!(id.subnqn[nqn.len()], 0);
}

#[test]
fn identify_namespaces_and_descriptors() {
    let mut rig = Rig::new();
    rig.enable();
    rig.ctrl.add_namespace(3, ram_disk(1 << 20, 512)).unwrap();
    rig.ctrl.add_namespace(7, ram_disk(8 << 20, 4096)).unwrap();
    let (st, page) = rig.identify(Cns::NAMESPACE, 7);
    assert_eq!(st, StatusWord::SUCCESS);
    let id = IdentifyNamespace::read_from_bytes(&page).unwrap();
    assert_eq!(id.nsze.get(), 2048);
    assert_eq!(id.lbaf[0].lbads(), 12);
    assert_ne!(id.nguid, [0; 16]);
    // Inactive but valid NSID: zeros. Out of range: Invalid Namespace.
    let (st, page) = rig.identify(Cns::NAMESPACE, 5);
    assert_eq!(st, StatusWord::SUCCESS);
    assert!(page.iter().all(|&b| b == 0));
    let (st, _) = rig.identify(Cns::NAMESPACE, 17);
    assert_eq!(
        st,
        generic(GenericStatus::INVALID_NAMESPACE_OR_FORMAT).with_dnr(true)
    );
    // Active list after NSID 3: just 7.
    let (_, page) = rig.identify(Cns::ACTIVE_NAMESPACES, 0);
    assert_eq!(&page[..12], &[3, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
    let (_, page) = rig.identify(Cns::ACTIVE_NAMESPACES, 3);
    assert_eq!(&page[..8], &[7, 0, 0, 0, 0, 0, 0, 0]);
    // Descriptors: NGUID, UUID, CSI; the NGUID matches Identify Namespace.
    let (st, page) = rig.identify(Cns::NS_DESCRIPTORS, 7);
    assert_eq!(st, StatusWord::SUCCESS);
    let descs: Vec<_> = parastor_hw::nvme::identify::ns_id_descriptors(&page)
        .map(|d| d.unwrap())
        .collect();
    assert_eq!(descs.len(), 3);
    assert_eq!(descs[0].nid, &id.nguid);
    assert_eq!(descs[1].nid.len(), 16);
    assert_eq!(descs[2].nid, &[0]);
    // Another namespace has another NGUID.
    let (_, page3) = rig.identify(Cns::NS_DESCRIPTORS, 3);
    assert_ne!(&page3[4..20], &page[4..20]);
    // Inactive: an invalid field; not a valid NSID: Invalid Namespace.
    let (st, _) = rig.identify(Cns::NS_DESCRIPTORS, 5);
    assert_eq!(
        st,
        generic(GenericStatus::INVALID_FIELD_IN_COMMAND).with_dnr(true)
    );
    let (st, _) = rig.identify(Cns::NS_DESCRIPTORS, 17);
    assert_eq!(
        st,
        generic(GenericStatus::INVALID_NAMESPACE_OR_FORMAT).with_dnr(true)
    );
    // CNS 08h: command set independent, the namespace ready.
    let (st, page) = rig.identify(Cns::INDEPENDENT_NAMESPACE, 7);
    assert_eq!(st, StatusWord::SUCCESS);
    let ind =
        parastor_hw::nvme::identify::IdentifyNamespaceIndependent::read_from_bytes(&page).unwrap();
    assert_eq!(ind.nstat, 1);
    assert_eq!(ind.nsfeat, id.nsfeat);
    let (_, page) = rig.identify(Cns::INDEPENDENT_NAMESPACE, 5);
    assert!(page.iter().all(|&b| b == 0), "inactive: zeros");
    // Unknown CNS.
    let (st, _) = rig.identify(Cns::new(0x1F), 0);
    assert_eq!(
        st,
        generic(GenericStatus::INVALID_FIELD_IN_COMMAND).with_dnr(true)
    );
}

// ---------------------------------------------------------------------------
// Queues and I/O
// ---------------------------------------------------------------------------

#[test]
fn create_queue_validation() {
    let mut rig = Rig::new();
    rig.enable();
    let cs = |sc| StatusWord::command_specific(sc).with_dnr(true);
    assert_eq!(
        rig.create_cq(0, 16, 0),
        cs(CommandSpecificStatus::INVALID_QUEUE_IDENTIFIER)
    );
    assert_eq!(
        rig.create_cq(5, 16, 0),
        cs(CommandSpecificStatus::INVALID_QUEUE_IDENTIFIER)
    );
    assert_eq!(
        rig.create_cq(1, 1, 0),
        cs(CommandSpecificStatus::INVALID_QUEUE_SIZE)
    );
    assert_eq!(
        rig.create_cq(1, 1025, 0),
        cs(CommandSpecificStatus::INVALID_QUEUE_SIZE)
    );
    assert_eq!(
        rig.create_cq(1, 16, 5),
        cs(CommandSpecificStatus::INVALID_INTERRUPT_VECTOR)
    );
    assert_eq!(
        rig.create_sq(1, 1, 16),
        cs(CommandSpecificStatus::COMPLETION_QUEUE_INVALID)
    );
    assert_eq!(rig.create_cq(1, 16, 1), StatusWord::SUCCESS);
    assert_eq!(
        rig.create_cq(1, 16, 1),
        cs(CommandSpecificStatus::INVALID_QUEUE_IDENTIFIER)
    );
    assert_eq!(
        rig.create_sq(1, 0, 16),
        cs(CommandSpecificStatus::COMPLETION_QUEUE_INVALID)
    );
    assert_eq!(rig.create_sq(1, 1, 16), StatusWord::SUCCESS);
    assert_eq!(
        rig.create_sq(1, 1, 16),
        cs(CommandSpecificStatus::INVALID_QUEUE_IDENTIFIER)
    );
    // Deleting a CQ with an SQ on it is refused; SQ first works.
    let mut d = sqe(AdminOpcode::DELETE_IO_CQ.get());
    d.cdw10 = U32::new(1);
    assert_eq!(
        rig.admin_cmd(d).status.status(),
        cs(CommandSpecificStatus::INVALID_QUEUE_DELETION)
    );
    let mut d = sqe(AdminOpcode::DELETE_IO_SQ.get());
    d.cdw10 = U32::new(1);
    assert!(rig.admin_cmd(d).status.is_success());
    assert_eq!(
        rig.admin_cmd(d).status.status(),
        cs(CommandSpecificStatus::INVALID_QUEUE_IDENTIFIER)
    );
    let mut d = sqe(AdminOpcode::DELETE_IO_CQ.get());
    d.cdw10 = U32::new(1);
    assert!(rig.admin_cmd(d).status.is_success());
    // An unknown admin opcode.
    assert_eq!(
        rig.admin_cmd(sqe(0x7E)).status.status(),
        generic(GenericStatus::INVALID_COMMAND_OPCODE).with_dnr(true)
    );
}

#[test]
fn write_then_read_through_the_queues() {
    let mut rig = Rig::new();
    rig.enable();
    rig.ctrl.add_namespace(1, ram_disk(1 << 20, 512)).unwrap();
    let q = rig.io_pair(1, 8);
    rig.msi.take();
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    rig.mem.write_at(Gpa::new(DATA), &pattern).unwrap();
    let cqe = rig.io_cmd(q, rw(NvmOpcode::WRITE, 1, 10, 16, DATA));
    assert!(cqe.status.is_success(), "{:?}", cqe.status.status());
    assert_eq!(cqe.sqid.get(), 1);
    assert_eq!(cqe.sqhd.get(), 1);
    // One interrupt on the CQ's vector with the programmed message.
    let msgs = rig.msi.take();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0, 1);
    assert_eq!(
        msgs[0].1,
        MsiMessage {
            address: 0xFEE0_0010,
            data: 0x41
        }
    );
    let cqe = rig.io_cmd(q, rw(NvmOpcode::READ, 1, 10, 16, DATA + 0x10000));
    assert!(cqe.status.is_success());
    let mut back = vec![0u8; 8192];
    rig.mem
        .read_at(Gpa::new(DATA + 0x10000), &mut back)
        .unwrap();
    assert_eq!(back, pattern);
    // An inactive NSID (valid: 1..=NN, nothing attached) is an invalid
    // field (Base 2.0 3.2.1.5); an NSID that is not valid (0, above NN,
    // the broadcast value) is Invalid Namespace or Format.
    for op in [NvmOpcode::READ, NvmOpcode::WRITE, NvmOpcode::FLUSH] {
        for nsid in [2, 16] {
            let cqe = rig.io_cmd(q, rw(op, nsid, 0, 1, DATA));
            assert_eq!(
                cqe.status.status(),
                generic(GenericStatus::INVALID_FIELD_IN_COMMAND).with_dnr(true),
                "{op:?} to inactive NSID {nsid}"
            );
        }
        for nsid in [0, 17, 0xFFFF_FFFE, 0xFFFF_FFFF] {
            let cqe = rig.io_cmd(q, rw(op, nsid, 0, 1, DATA));
            assert_eq!(
                cqe.status.status(),
                generic(GenericStatus::INVALID_NAMESPACE_OR_FORMAT).with_dnr(true),
                "{op:?} to invalid NSID {nsid:#x}"
            );
        }
    }
    // Out-of-range LBA.
    let cqe = rig.io_cmd(q, rw(NvmOpcode::READ, 1, 2048, 1, DATA));
    assert!(!cqe.status.is_success());
    // The queue wraps (size 8): many more commands, phases flip.
    for i in 0..20 {
        let cqe = rig.io_cmd(q, rw(NvmOpcode::READ, 1, i, 1, DATA));
        assert!(cqe.status.is_success());
    }
}

#[test]
fn several_sqs_share_one_cq() {
    let mut rig = Rig::new();
    rig.enable();
    rig.ctrl.add_namespace(1, ram_disk(1 << 20, 512)).unwrap();
    assert_eq!(rig.create_cq(1, 32, 1), StatusWord::SUCCESS);
    assert_eq!(rig.create_sq(1, 1, 8), StatusWord::SUCCESS);
    assert_eq!(rig.create_sq(2, 1, 8), StatusWord::SUCCESS);
    let mut sq1 = GuestQueue::new(1, IO_SQ + 0x10000, IO_CQ + 0x10000, 8);
    let mut sq2 = GuestQueue::new(2, IO_SQ + 0x20000, IO_CQ + 0x10000, 8);
    rig.msi.take();
    for (n, q) in [(3, &mut sq1), (4, &mut sq2)] {
        for i in 0..n {
            let mut s = rw(NvmOpcode::WRITE, 1, i, 1, DATA);
            s.cdw0 = s.cdw0.with_cid(100 * q.qid + i as u16);
            rig.put(q, &s);
        }
    }
    rig.ring_sq(&sq1);
    rig.ring_sq(&sq2);
    rig.ctrl.run_until_idle();
    // All seven complete on CQ 1 (size 32), each naming its SQ.
    let mut cq = GuestQueue::new(1, 0, IO_CQ + 0x10000, 32);
    let mut seen = Vec::new();
    while let Some(c) = rig.poll_cqe(&mut cq) {
        assert!(c.status.is_success());
        assert_eq!(c.cid.get() / 100, c.sqid.get());
        seen.push(c.cid.get());
    }
    seen.sort();
    assert_eq!(seen, [100, 101, 102, 200, 201, 202, 203]);
    assert!(!rig.msi.take().is_empty());
}

#[test]
fn cq_full_holds_completions_until_the_host_frees_room() {
    let mut rig = Rig::new();
    rig.enable();
    rig.ctrl.add_namespace(1, ram_disk(1 << 20, 512)).unwrap();
    // CQ of 4 entries holds 3 completions; SQ of 8.
    assert_eq!(rig.create_cq(1, 4, 1), StatusWord::SUCCESS);
    assert_eq!(rig.create_sq(1, 1, 8), StatusWord::SUCCESS);
    let mut sq = GuestQueue::new(1, IO_SQ + 0x10000, IO_CQ + 0x10000, 8);
    for i in 0..6 {
        let mut s = rw(NvmOpcode::READ, 1, i, 1, DATA);
        s.cdw0 = s.cdw0.with_cid(i as u16);
        rig.put(&mut sq, &s);
    }
    rig.ring_sq(&sq);
    rig.ctrl.run_until_idle();
    let mut cq = GuestQueue::new(1, 0, IO_CQ + 0x10000, 4);
    let mut got = Vec::new();
    // Read three without ringing the head doorbell yet.
    for _ in 0..3 {
        let gpa = Gpa::new(cq.cq + u64::from(cq.cq_head) * 16);
        let c: Cqe = rig.mem.read_obj(gpa).unwrap();
        assert_eq!(c.status.p(), cq.phase);
        got.push(c.cid.get());
        cq.cq_head += 1;
    }
    let gpa = Gpa::new(cq.cq + 3 * 16);
    let c: Cqe = rig.mem.read_obj(gpa).unwrap();
    assert!(!c.status.p(), "the fourth slot stays empty: the CQ is full");
    // Free the room: the rest come.
    rig.write32(0x1000 + 8 + 4, cq.cq_head);
    rig.ctrl.run_until_idle();
    while let Some(c) = rig.poll_cqe(&mut cq) {
        got.push(c.cid.get());
        rig.ctrl.run_until_idle();
    }
    got.sort();
    assert_eq!(got, [0, 1, 2, 3, 4, 5]);
}

#[test]
fn msix_masked_vector_is_pending_then_delivered() {
    let mut rig = Rig::new();
    rig.enable();
    rig.ctrl.add_namespace(1, ram_disk(1 << 20, 512)).unwrap();
    let q = rig.io_pair(1, 8);
    rig.ctrl.bar_write(4, 16 + 12, &1u32.to_le_bytes()); // mask vector 1
    rig.msi.take();
    rig.io_cmd(q, rw(NvmOpcode::READ, 1, 0, 1, DATA));
    assert!(rig.msi.take().is_empty(), "masked: nothing delivered");
    let mut pba = [0u8; 8];
    let pba_off = {
        let mut b = [0u8; 4];
        rig.ctrl.config_read(0x88, &mut b);
        u64::from(u32::from_le_bytes(b) & !7)
    };
    rig.ctrl.bar_read(4, pba_off, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0b10, "pending bit for vector 1");
    rig.ctrl.bar_write(4, 16 + 12, &0u32.to_le_bytes()); // unmask
    let msgs = rig.msi.take();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0, 1);
    rig.ctrl.bar_read(4, pba_off, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0);
}

#[test]
fn invalid_doorbells_raise_an_error_event_and_never_panic() {
    let mut rig = Rig::new();
    rig.enable();
    // Arm an AER.
    let mut a = sqe(AdminOpcode::ASYNC_EVENT_REQUEST.get());
    a.cdw0 = a.cdw0.with_cid(500);
    let mut q = rig.admin;
    rig.put(&mut q, &a);
    rig.ring_sq(&q);
    rig.ctrl.run_until_idle();
    assert!(rig.poll_cqe(&mut q).is_none(), "the AER waits");
    rig.admin = q;
    // SQ 3 does not exist.
    rig.write32(0x1000 + 3 * 8, 1);
    rig.ctrl.run_until_idle();
    let mut q = rig.admin;
    let cqe = rig.poll_cqe(&mut q).expect("the AER completes");
    rig.admin = q;
    assert_eq!(cqe.cid.get(), 500);
    // Error (0), invalid doorbell register (0), log page 1.
    assert_eq!(cqe.dw0.get(), 0x0001_0000);
    // Hostile register traffic: odd widths, offsets, huge queue IDs.
    for off in [0u64, 1, 3, 0x14, 0x1002, 0x1000 + 8 * 65535, u64::MAX - 3] {
        for len in [1usize, 2, 3, 4, 8, 16] {
            let data = vec![0xA5u8; len];
            rig.ctrl.bar_write(0, off, &data);
            let mut out = vec![0u8; len];
            rig.ctrl.bar_read(0, off, &mut out);
            rig.ctrl.bar_write(4, off, &data);
            rig.ctrl.bar_read(4, off, &mut out);
            rig.ctrl.bar_write(2, off, &data);
        }
    }
    rig.ctrl.run_until_idle();
}

#[test]
fn doorbell_beyond_the_queue_size_is_an_invalid_value_event() {
    let mut rig = Rig::new();
    rig.enable();
    let q = rig.io_pair(1, 8);
    let _ = q;
    let mut a = sqe(AdminOpcode::ASYNC_EVENT_REQUEST.get());
    a.cdw0 = a.cdw0.with_cid(9);
    let mut aq = rig.admin;
    rig.put(&mut aq, &a);
    rig.ring_sq(&aq);
    rig.ctrl.run_until_idle();
    rig.write32(0x1000 + 8, 8); // tail 8 in a queue of 8
    rig.ctrl.run_until_idle();
    let cqe = rig.poll_cqe(&mut aq).expect("AER completes");
    rig.admin = aq;
    assert_eq!(cqe.cid.get(), 9);
    assert_eq!(cqe.dw0.get(), 0x0001_0100, "error, invalid doorbell value");
}

// ---------------------------------------------------------------------------
// A disk whose reads and writes wait for a gate: commands that stay
// running until the test opens it.
// ---------------------------------------------------------------------------

/// Sleeps that end only when [`Gate::open`] is called.
#[derive(Default)]
pub(crate) struct Gate {
    generation: core::sync::atomic::AtomicU64,
    wakers: spin::Mutex<Vec<core::task::Waker>>,
}

impl Gate {
    /// Ends every sleep started so far.
    pub(crate) fn open(&self) {
        let wakers = {
            let mut w = self.wakers.lock();
            self.generation
                .fetch_add(1, core::sync::atomic::Ordering::AcqRel);
            core::mem::take(&mut *w)
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// A sleep on `g` that ends at its next [`Gate::open`].
fn sleep_on(g: &'static Gate) -> parastor_core::BoxFuture<'static, ()> {
    let ticket = g.generation.load(core::sync::atomic::Ordering::Acquire);
    Box::pin(core::future::poll_fn(move |cx| {
        let mut wakers = g.wakers.lock();
        if g.generation.load(core::sync::atomic::Ordering::Acquire) > ticket {
            core::task::Poll::Ready(())
        } else {
            wakers.push(cx.waker().clone());
            core::task::Poll::Pending
        }
    }))
}

/// A gate that lives for the rest of the test process.
pub(crate) fn gate() -> &'static Gate {
    Box::leak(Box::default())
}

/// A disk over `inner` whose reads and writes wait for `g`.
pub(crate) fn gated(inner: Disk, g: &'static Gate) -> Disk {
    struct Shim(&'static Gate);
    impl parastor_core::Timer for Shim {
        fn sleep(&self, _: core::time::Duration) -> parastor_core::BoxFuture<'static, ()> {
            sleep_on(self.0)
        }
    }
    Disk::new(parastor_core::DelayDisk::new(
        inner,
        parastor_core::DelayHandle::new(core::time::Duration::from_millis(1)),
        Arc::new(Shim(g)),
    ))
    .unwrap()
}

fn feature(rig: &mut Rig, set: bool, fid: u8, cdw11: u32) -> Cqe {
    let op = if set {
        AdminOpcode::SET_FEATURES
    } else {
        AdminOpcode::GET_FEATURES
    };
    let mut s = sqe(op.get());
    s.cdw10 = U32::new(u32::from(fid));
    s.cdw11 = U32::new(cdw11);
    s.set_prps(DATA, 0);
    rig.admin_cmd(s)
}

fn get_log(
    rig: &mut Rig,
    lid: u8,
    nsid: u32,
    len: u32,
    offset: u64,
    rae: bool,
) -> (StatusWord, Vec<u8>) {
    let mut s = sqe(AdminOpcode::GET_LOG_PAGE.get());
    s.nsid = U32::new(nsid);
    s.set_prps(DATA, DATA + 4096);
    let numd = len / 4 - 1;
    s.cdw10 = U32::new(u32::from(lid) | u32::from(rae) << 15 | (numd & 0xFFFF) << 16);
    s.cdw11 = U32::new(numd >> 16);
    s.cdw12 = U32::new(offset as u32);
    s.cdw13 = U32::new((offset >> 32) as u32);
    rig.mem.fill_at(Gpa::new(DATA), len as usize, 0xEE).unwrap();
    let st = rig.admin_cmd(s).status.status();
    let mut page = vec![0u8; len as usize];
    rig.mem.read_at(Gpa::new(DATA), &mut page).unwrap();
    (st, page)
}

/// Queues an AER with `cid` without waiting for it.
fn arm_aer(rig: &mut Rig, cid: u16) {
    let mut a = sqe(AdminOpcode::ASYNC_EVENT_REQUEST.get());
    a.cdw0 = a.cdw0.with_cid(cid);
    let mut q = rig.admin;
    rig.put(&mut q, &a);
    rig.ring_sq(&q);
    rig.ctrl.run_until_idle();
    rig.admin = q;
}

fn poll_admin(rig: &mut Rig) -> Option<Cqe> {
    let mut q = rig.admin;
    let c = rig.poll_cqe(&mut q);
    rig.admin = q;
    c
}

#[test]
fn features_are_stored_checked_and_reported() {
    let mut rig = Rig::new();
    rig.enable();
    // Number of Queues: ask for 16/16, get 4/4 (0's based 3).
    let c = feature(&mut rig, true, 0x07, 0x000F_000F);
    assert!(c.status.is_success());
    assert_eq!(c.dw0.get(), 0x0003_0003);
    let c = feature(&mut rig, true, 0x07, 0x0001_0000);
    assert_eq!(c.dw0.get(), 0x0001_0000, "1 SQ, 2 CQs");
    assert_eq!(feature(&mut rig, false, 0x07, 0).dw0.get(), 0x0001_0000);
    // Only 1 SQ allocated now: SQ 2 is refused.
    assert_eq!(rig.create_cq(1, 8, 1), StatusWord::SUCCESS);
    assert_eq!(
        rig.create_sq(2, 1, 8),
        StatusWord::command_specific(CommandSpecificStatus::INVALID_QUEUE_IDENTIFIER)
            .with_dnr(true)
    );
    // After a queue exists, Number of Queues is a sequence error.
    assert_eq!(
        feature(&mut rig, true, 0x07, 0).status.status(),
        generic(GenericStatus::COMMAND_SEQUENCE_ERROR).with_dnr(true)
    );
    // Stored values come back.
    assert!(feature(&mut rig, true, 0x08, 0x0A05).status.is_success());
    assert_eq!(feature(&mut rig, false, 0x08, 0).dw0.get(), 0x0A05);
    assert!(
        feature(&mut rig, true, 0x09, 1 << 16 | 2)
            .status
            .is_success()
    );
    assert_eq!(feature(&mut rig, false, 0x09, 2).dw0.get(), 1 << 16 | 2);
    assert_eq!(feature(&mut rig, false, 0x09, 3).dw0.get(), 3);
    assert!(
        !feature(&mut rig, true, 0x09, 9).status.is_success(),
        "vector 9 of 5"
    );
    assert!(feature(&mut rig, true, 0x0F, 5000).status.is_success());
    assert_eq!(feature(&mut rig, false, 0x0F, 0).dw0.get(), 5000);
    // Save is refused; unknown FIDs and a second power state too.
    assert_eq!(
        feature(&mut rig, true, 0x80 | 0x08, 1 << 31)
            .status
            .status(),
        generic(GenericStatus::INVALID_FIELD_IN_COMMAND).with_dnr(true)
    );
    let mut s = sqe(AdminOpcode::SET_FEATURES.get());
    s.cdw10 = U32::new(1 << 31 | 0x08);
    assert_eq!(
        rig.admin_cmd(s).status.status(),
        StatusWord::command_specific(CommandSpecificStatus::FEATURE_NOT_SAVEABLE).with_dnr(true)
    );
    assert!(!feature(&mut rig, true, 0x02, 1).status.is_success());
    assert!(!feature(&mut rig, false, 0x7E, 0).status.is_success());
    // SEL = supported capabilities: changeable.
    let mut s = sqe(AdminOpcode::GET_FEATURES.get());
    s.cdw10 = U32::new(3 << 8 | 0x08);
    assert_eq!(rig.admin_cmd(s).dw0.get(), 0b100);
    // SEL = default: the default, not the current value.
    let mut s = sqe(AdminOpcode::GET_FEATURES.get());
    s.cdw10 = U32::new(1 << 8 | 0x08);
    assert_eq!(rig.admin_cmd(s).dw0.get(), 0);
    // Keep Alive is accepted.
    assert!(
        rig.admin_cmd(sqe(AdminOpcode::KEEP_ALIVE.get()))
            .status
            .is_success()
    );
}

#[test]
fn host_identifier_round_trips_and_becomes_the_initiator() {
    let mut rig = Rig::new();
    rig.enable();
    rig.mem
        .write_at(Gpa::new(DATA), &[1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    assert!(feature(&mut rig, true, 0x81, 0).status.is_success());
    rig.mem.fill_at(Gpa::new(DATA), 16, 0).unwrap();
    assert!(feature(&mut rig, false, 0x81, 0).status.is_success());
    let mut back = [0u8; 8];
    rig.mem.read_at(Gpa::new(DATA), &mut back).unwrap();
    assert_eq!(back, [1, 2, 3, 4, 5, 6, 7, 8]);
    let expected =
        io::initiator_from_host_id(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0], false);
    assert!(
        rig.ctrl
            .shared
            .workers
            .iter()
            .all(|w| w.lock().params.host_id == expected)
    );
}

#[test]
fn smart_and_error_logs_have_real_content() {
    let mut rig = Rig::new();
    rig.enable();
    rig.ctrl.add_namespace(1, ram_disk(1 << 20, 512)).unwrap();
    let q = rig.io_pair(1, 16);
    for i in 0..3 {
        assert!(
            rig.io_cmd(q, rw(NvmOpcode::WRITE, 1, i * 8, 8, DATA))
                .status
                .is_success()
        );
    }
    assert!(
        rig.io_cmd(q, rw(NvmOpcode::READ, 1, 0, 8, DATA))
            .status
            .is_success()
    );
    // A failing command: LBA out of range.
    let bad = rig.io_cmd(q, rw(NvmOpcode::READ, 1, 5000, 1, DATA));
    assert!(!bad.status.is_success());
    let (st, page) = get_log(&mut rig, 0x02, 0xFFFF_FFFF, 512, 0, false);
    assert_eq!(st, StatusWord::SUCCESS);
    let smart = parastor_hw::nvme::log::SmartHealthLog::read_from_bytes(&page).unwrap();
    assert_eq!(smart.host_write_commands.get(), 3);
    assert_eq!(smart.host_read_commands.get(), 1);
    assert_eq!(
        smart.data_units_written.get(),
        1,
        "12 KiB rounds up to one unit"
    );
    assert_eq!(smart.data_units_read.get(), 1);
    assert_eq!(smart.error_log_entries.get(), 1);
    assert_eq!(smart.available_spare, 100);
    // The error log's newest entry is that command.
    let (st, page) = get_log(&mut rig, 0x01, 0, 128, 0, false);
    assert_eq!(st, StatusWord::SUCCESS);
    let e = parastor_hw::nvme::log::ErrorLogEntry::read_from_bytes(&page[..64]).unwrap();
    assert_eq!(e.error_count.get(), 1);
    assert_eq!(e.sqid.get(), 1);
    assert_eq!(e.cid.get(), bad.cid.get());
    assert_eq!(e.status.get(), bad.status.status().into_bits());
    assert_eq!(e.lba.get(), 5000);
    assert_eq!(e.nsid.get(), 1);
    assert!(page[64..].iter().all(|&b| b == 0), "one entry only");
    // A command for a namespace that does not exist is logged too, with
    // the NSID as the field in error.
    let c = rig.io_cmd(q, rw(NvmOpcode::READ, 9, 0, 1, DATA));
    assert!(!c.status.is_success());
    let (_, page) = get_log(&mut rig, 0x01, 0, 128, 0, false);
    let e2 = parastor_hw::nvme::log::ErrorLogEntry::read_from_bytes(&page[..64]).unwrap();
    assert_eq!(e2.error_count.get(), 2);
    assert_eq!(e2.nsid.get(), 9);
    assert_eq!(e2.parameter_error_location.get(), 4);
    assert_eq!(e2.cid.get(), c.cid.get());
    // An offset into the SMART log; a misaligned one is refused.
    let (_, tail) = get_log(&mut rig, 0x02, 0xFFFF_FFFF, 32, 64, false);
    assert_eq!(
        &tail[..8],
        &1u64.to_le_bytes(),
        "host read commands at byte 64"
    );
    assert_eq!(
        &tail[16..24],
        &3u64.to_le_bytes(),
        "host write commands at byte 80"
    );
    let (st, _) = get_log(&mut rig, 0x02, 0xFFFF_FFFF, 32, 2, false);
    assert!(!st.is_success());
    // Unknown log page; commands supported lists Read and Write.
    let (st, _) = get_log(&mut rig, 0x42, 0, 64, 0, false);
    assert_eq!(
        st,
        StatusWord::command_specific(CommandSpecificStatus::INVALID_LOG_PAGE).with_dnr(true)
    );
    let (st, page) = get_log(&mut rig, 0x05, 0, 4096, 0, false);
    assert_eq!(st, StatusWord::SUCCESS);
    assert_eq!(page[1024 + 2 * 4] & 1, 1, "Read supported");
    assert_eq!(
        page[1024 + 4] & 0b11,
        0b11,
        "Write supported, changes LBA content"
    );
    assert_eq!(page[6 * 4] & 1, 1, "Identify supported");
    assert_eq!(page[0x10 * 4] & 1, 0, "Firmware Commit not supported");
    // Supported log pages: LSUPP for what is offered, not for others.
    let (st, page) = get_log(&mut rig, 0x00, 0, 1024, 0, false);
    assert_eq!(st, StatusWord::SUCCESS);
    for lid in [0usize, 1, 2, 3, 4, 5, 0x80] {
        assert_eq!(page[lid * 4] & 1, 1, "log {lid:#x} supported");
    }
    assert_eq!(page[6 * 4], 0, "self-test log not offered");
    let (st, page) = get_log(&mut rig, 0x03, 0, 512, 0, false);
    assert_eq!(st, StatusWord::SUCCESS);
    assert_eq!(page[0], 1);
    assert_eq!(&page[8..16], b"fw1.2   ");
}

#[test]
fn namespace_changes_raise_notices_and_fill_the_changed_list() {
    let mut rig = Rig::new();
    rig.enable();
    let q = rig.io_pair(1, 8);
    // Notices are off until the host enables them.
    rig.ctrl.add_namespace(1, ram_disk(1 << 20, 512)).unwrap();
    arm_aer(&mut rig, 600);
    assert!(
        poll_admin(&mut rig).is_none(),
        "no notice while AEC bit 8 is clear"
    );
    let _ = get_log(&mut rig, 0x04, 0, 4096, 0, false);
    assert!(feature(&mut rig, true, 0x0B, 1 << 8).status.is_success());
    rig.ctrl.add_namespace(4, ram_disk(1 << 20, 4096)).unwrap();
    rig.ctrl.run_until_idle();
    let c = poll_admin(&mut rig).expect("namespace notice");
    assert_eq!(c.cid.get(), 600);
    assert_eq!(c.dw0.get(), 0x0004_0002, "notice, attribute changed, log 4");
    // Masked until the list is read: a removal now gives no event yet.
    arm_aer(&mut rig, 601);
    let disk = rig.ctrl.remove_namespace(1).unwrap();
    assert_eq!(disk.sector_count(), 2048);
    rig.ctrl.run_until_idle();
    assert!(poll_admin(&mut rig).is_none());
    let (_, page) = get_log(&mut rig, 0x04, 0, 4096, 0, false);
    assert_eq!(&page[..12], &[1, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
    let (_, page) = get_log(&mut rig, 0x04, 0, 4096, 0, false);
    assert!(page.iter().all(|&b| b == 0), "read clears the list");
    // Removed namespace: its NSID is inactive, an invalid field.
    let c = rig.io_cmd(q, rw(NvmOpcode::READ, 1, 0, 1, DATA));
    assert_eq!(
        c.status.status(),
        generic(GenericStatus::INVALID_FIELD_IN_COMMAND).with_dnr(true)
    );
    // Unmasked: the next change notifies AER 601.
    rig.ctrl.add_namespace(1, ram_disk(1 << 20, 512)).unwrap();
    rig.ctrl.run_until_idle();
    assert_eq!(poll_admin(&mut rig).expect("notice").cid.get(), 601);
    // Errors adding.
    assert_eq!(
        rig.ctrl.add_namespace(1, ram_disk(4096, 512)),
        Err(NamespaceError::Exists { nsid: 1 })
    );
    assert_eq!(
        rig.ctrl.add_namespace(17, ram_disk(4096, 512)),
        Err(NamespaceError::OutOfRange { nsid: 17, max: 16 })
    );
    assert!(rig.ctrl.remove_namespace(9).is_none());
}

#[test]
fn resize_is_picked_up_without_polling() {
    let mut rig = Rig::new();
    rig.enable();
    let ram = RamDisk::new(1 << 20, 512).unwrap();
    rig.ctrl
        .add_namespace(2, Disk::new(ram.clone()).unwrap())
        .unwrap();
    assert!(feature(&mut rig, true, 0x0B, 1 << 8).status.is_success());
    rig.ctrl.run_until_idle();
    let _ = get_log(&mut rig, 0x04, 0, 4096, 0, false);
    arm_aer(&mut rig, 700);
    assert!(poll_admin(&mut rig).is_none());
    ram.resize(4096);
    // The resize wakes the watcher through its waker: one pass suffices.
    rig.ctrl.run_until_idle();
    let c = poll_admin(&mut rig).expect("notice after resize");
    assert_eq!(c.cid.get(), 700);
    let (_, page) = get_log(&mut rig, 0x04, 0, 4096, 0, false);
    assert_eq!(&page[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
    let (_, page) = rig.identify(Cns::NAMESPACE, 2);
    assert_eq!(
        IdentifyNamespace::read_from_bytes(&page)
            .unwrap()
            .nsze
            .get(),
        4096
    );
}

#[test]
fn aer_limit_and_abort_of_an_aer() {
    let mut rig = Rig::new();
    rig.enable();
    for cid in 800..804 {
        arm_aer(&mut rig, cid);
    }
    assert!(poll_admin(&mut rig).is_none());
    let mut a = sqe(AdminOpcode::ASYNC_EVENT_REQUEST.get());
    a.cdw0 = a.cdw0.with_cid(804);
    let mut q = rig.admin;
    rig.put(&mut q, &a);
    rig.ring_sq(&q);
    rig.ctrl.run_until_idle();
    rig.admin = q;
    let c = poll_admin(&mut rig).expect("fifth AER refused");
    assert_eq!(c.cid.get(), 804);
    assert_eq!(
        c.status.status(),
        StatusWord::command_specific(CommandSpecificStatus::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED)
            .with_dnr(true)
    );
    // Abort AER 801: it completes aborted, the Abort says "aborted".
    let mut ab = sqe(AdminOpcode::ABORT.get());
    ab.cdw10 = U32::new(801 << 16);
    ab.cdw0 = ab.cdw0.with_cid(900);
    let mut q = rig.admin;
    rig.put(&mut q, &ab);
    rig.ring_sq(&q);
    rig.ctrl.run_until_idle();
    rig.admin = q;
    let mut got = Vec::new();
    while let Some(c) = poll_admin(&mut rig) {
        got.push((c.cid.get(), c.status.status(), c.dw0.get()));
    }
    assert!(got.contains(&(801, generic(GenericStatus::ABORT_REQUESTED), 0)));
    assert!(got.contains(&(900, StatusWord::SUCCESS, 0)));
}

#[test]
fn abort_really_aborts_a_queued_command() {
    let mut c = config();
    c.commands_per_queue = 1;
    let mut rig = Rig::with_config(c);
    rig.enable();
    let g = gate();
    rig.ctrl
        .add_namespace(1, gated(ram_disk(1 << 20, 512), g))
        .unwrap();
    rig.io_pair(1, 8);
    let mut q = rig.io[0];
    for cid in 1..=3u16 {
        let mut s = rw(NvmOpcode::WRITE, 1, u64::from(cid), 1, DATA);
        s.cdw0 = s.cdw0.with_cid(cid);
        rig.put(&mut q, &s);
    }
    rig.ring_sq(&q);
    rig.ctrl.run_until_idle();
    assert!(
        rig.poll_cqe(&mut q).is_none(),
        "command 1 waits on the gate"
    );
    // Abort 3 (queued): aborted. Abort 1 (running): not aborted.
    let mut ab = sqe(AdminOpcode::ABORT.get());
    ab.cdw10 = U32::new(3 << 16 | 1);
    assert_eq!(rig.admin_cmd(ab).dw0.get(), 0);
    ab.cdw10 = U32::new(1 << 16 | 1);
    assert_eq!(rig.admin_cmd(ab).dw0.get(), 1);
    ab.cdw10 = U32::new(77 << 16 | 1);
    assert_eq!(rig.admin_cmd(ab).dw0.get(), 1, "no such command");
    let mut done = Vec::new();
    for _ in 0..3 {
        g.open();
        rig.ctrl.run_until_idle();
        while let Some(c) = rig.poll_cqe(&mut q) {
            done.push((c.cid.get(), c.status.status()));
        }
    }
    done.sort_by_key(|d| d.0);
    assert_eq!(
        done,
        [
            (1, StatusWord::SUCCESS),
            (2, StatusWord::SUCCESS),
            (3, generic(GenericStatus::ABORT_REQUESTED)),
        ]
    );
}

#[test]
fn commands_complete_out_of_order() {
    let mut rig = Rig::new();
    rig.enable();
    let g = gate();
    rig.ctrl
        .add_namespace(1, gated(ram_disk(1 << 20, 512), g))
        .unwrap();
    rig.ctrl.add_namespace(2, ram_disk(1 << 20, 512)).unwrap();
    rig.io_pair(1, 8);
    let mut q = rig.io[0];
    let mut slow = rw(NvmOpcode::READ, 1, 0, 1, DATA);
    slow.cdw0 = slow.cdw0.with_cid(1);
    let mut fast = rw(NvmOpcode::READ, 2, 0, 1, DATA + 0x2000);
    fast.cdw0 = fast.cdw0.with_cid(2);
    rig.put(&mut q, &slow);
    rig.put(&mut q, &fast);
    rig.ring_sq(&q);
    rig.ctrl.run_until_idle();
    assert_eq!(
        rig.poll_cqe(&mut q).unwrap().cid.get(),
        2,
        "the fast one first"
    );
    assert!(rig.poll_cqe(&mut q).is_none());
    g.open();
    rig.ctrl.run_until_idle();
    let c = rig.poll_cqe(&mut q).unwrap();
    assert_eq!(c.cid.get(), 1);
    assert_eq!(c.sqhd.get(), 2);
}

#[test]
fn reset_waits_for_running_commands_and_discards_their_completions() {
    let mut rig = Rig::new();
    rig.enable();
    let g = gate();
    rig.ctrl
        .add_namespace(1, gated(ram_disk(1 << 20, 512), g))
        .unwrap();
    rig.io_pair(1, 8);
    let mut q = rig.io[0];
    rig.put(&mut q, &rw(NvmOpcode::WRITE, 1, 0, 1, DATA));
    rig.ring_sq(&q);
    rig.ctrl.run_until_idle();
    rig.write32(offset::CC, 0x0046_0000);
    rig.ctrl.run_until_idle();
    assert!(rig.csts().rdy(), "RDY stays 1 while a command runs");
    g.open();
    rig.ctrl.run_until_idle();
    assert!(!rig.csts().rdy(), "drained: reset complete");
    assert!(
        rig.poll_cqe(&mut q).is_none(),
        "the completion was discarded"
    );
}

/// A small disk whose flushes wait for a gate and are counted.
struct FlushGated {
    gate: &'static Gate,
    flushes: Arc<core::sync::atomic::AtomicU64>,
}

impl parastor_core::DiskIo for FlushGated {
    fn kind(&self) -> &'static str {
        "flush-gated"
    }
    fn sector_count(&self) -> u64 {
        8
    }
    fn sector_size(&self) -> u32 {
        512
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn is_fua_respected(&self) -> bool {
        true
    }
    fn unmap_behavior(&self) -> parastor_core::UnmapBehavior {
        parastor_core::UnmapBehavior::Ignored
    }
    async fn read(
        &self,
        buf: parastor_core::SgList<'_>,
        _: u64,
        _: parastor_core::IoOptions,
    ) -> Result<(), parastor_core::DiskError> {
        buf.zero().map_err(Into::into)
    }
    async fn write(
        &self,
        _: parastor_core::SgList<'_>,
        _: u64,
        _: parastor_core::IoOptions,
    ) -> Result<(), parastor_core::DiskError> {
        Ok(())
    }
    async fn flush(&self, _: parastor_core::IoOptions) -> Result<(), parastor_core::DiskError> {
        sleep_on(self.gate).await;
        self.flushes
            .fetch_add(1, core::sync::atomic::Ordering::AcqRel);
        Ok(())
    }
    async fn unmap(
        &self,
        _: u64,
        _: u64,
        _: parastor_core::IoOptions,
    ) -> Result<(), parastor_core::DiskError> {
        Ok(())
    }
}

#[test]
fn shutdown_completes_after_outstanding_io_and_a_flush() {
    use parastor_hw::nvme::regs::ShutdownStatus;
    let mut rig = Rig::new();
    rig.enable();
    let g = gate();
    rig.ctrl
        .add_namespace(1, gated(ram_disk(1 << 20, 512), g))
        .unwrap();
    let fg = gate();
    let flushes = Arc::new(core::sync::atomic::AtomicU64::new(0));
    let fdisk = Disk::new(FlushGated {
        gate: fg,
        flushes: flushes.clone(),
    })
    .unwrap();
    rig.ctrl.add_namespace(2, fdisk).unwrap();
    rig.io_pair(1, 8);
    let mut q = rig.io[0];
    rig.put(&mut q, &rw(NvmOpcode::WRITE, 1, 0, 1, DATA));
    rig.ring_sq(&q);
    rig.ctrl.run_until_idle();
    rig.write32(offset::CC, 0x0046_4001); // SHN = normal
    rig.ctrl.run_until_idle();
    assert_eq!(rig.csts().shst(), ShutdownStatus::OCCURRING);
    g.open();
    rig.ctrl.run_until_idle();
    assert!(
        rig.poll_cqe(&mut q)
            .expect("completed before shutdown")
            .status
            .is_success()
    );
    assert_eq!(
        rig.csts().shst(),
        ShutdownStatus::OCCURRING,
        "I/O done, the namespace flush still runs"
    );
    assert_eq!(flushes.load(core::sync::atomic::Ordering::Acquire), 0);
    fg.open();
    rig.ctrl.run_until_idle();
    assert_eq!(flushes.load(core::sync::atomic::Ordering::Acquire), 1);
    assert_eq!(rig.csts().shst(), ShutdownStatus::COMPLETE);
    // A reset after the shutdown brings the controller back to normal.
    rig.write32(offset::CC, 0);
    rig.ctrl.run_until_idle();
    assert_eq!(rig.csts().shst(), ShutdownStatus::NORMAL);
    rig.try_enable(0x0046_0001);
    assert!(rig.csts().rdy());
}

#[test]
fn nssr_resets_and_reports_nssro() {
    let mut rig = Rig::new();
    rig.enable();
    rig.write32(offset::NSSR, 0x1234);
    assert!(rig.csts().rdy(), "a wrong value does nothing");
    rig.write32(offset::NSSR, 0x4E56_4D65);
    rig.ctrl.run_until_idle();
    let csts = rig.csts();
    assert!(csts.nssro());
    assert!(!csts.rdy());
    assert_eq!(rig.read32(offset::CC) & 1, 0);
}

#[test]
fn intms_masks_and_intmc_delivers() {
    let mut rig = Rig::new();
    rig.enable();
    rig.ctrl.add_namespace(1, ram_disk(1 << 20, 512)).unwrap();
    let q = rig.io_pair(1, 8);
    rig.write32(offset::INTMS, 0b10);
    assert_eq!(rig.read32(offset::INTMS), 0b10);
    rig.msi.take();
    rig.io_cmd(q, rw(NvmOpcode::READ, 1, 0, 1, DATA));
    assert!(rig.msi.take().is_empty());
    rig.write32(offset::INTMC, 0b10);
    assert_eq!(rig.read32(offset::INTMC), 0);
    assert_eq!(rig.msi.take().iter().map(|m| m.0).collect::<Vec<_>>(), [1]);
}

#[test]
fn delete_sq_waits_for_its_commands() {
    let mut rig = Rig::new();
    rig.enable();
    let g = gate();
    rig.ctrl
        .add_namespace(1, gated(ram_disk(1 << 20, 512), g))
        .unwrap();
    rig.io_pair(1, 8);
    let mut q = rig.io[0];
    rig.put(&mut q, &rw(NvmOpcode::WRITE, 1, 0, 1, DATA));
    rig.ring_sq(&q);
    rig.ctrl.run_until_idle();
    let mut d = sqe(AdminOpcode::DELETE_IO_SQ.get());
    d.cdw10 = U32::new(1);
    d.cdw0 = d.cdw0.with_cid(321);
    let mut aq = rig.admin;
    rig.put(&mut aq, &d);
    rig.ring_sq(&aq);
    rig.ctrl.run_until_idle();
    rig.admin = aq;
    assert!(
        poll_admin(&mut rig).is_none(),
        "waits for the running write"
    );
    g.open();
    rig.ctrl.run_until_idle();
    assert!(
        rig.poll_cqe(&mut q)
            .expect("write completes first")
            .status
            .is_success()
    );
    let c = poll_admin(&mut rig).expect("then the delete");
    assert_eq!(c.cid.get(), 321);
    assert!(c.status.is_success());
}

#[test]
fn shadow_doorbells_with_event_index() {
    let mut rig = Rig::new();
    rig.enable();
    rig.ctrl.add_namespace(1, ram_disk(1 << 20, 512)).unwrap();
    const DB: u64 = 0x30000;
    const EI: u64 = 0x31000;
    let mut s = sqe(AdminOpcode::DOORBELL_BUFFER_CONFIG.get());
    s.set_prps(DB + 8, EI);
    assert!(
        !rig.admin_cmd(s).status.is_success(),
        "unaligned buffer refused"
    );
    s.set_prps(DB, EI);
    assert!(rig.admin_cmd(s).status.is_success());
    rig.io_pair(1, 8);
    let mut q = rig.io[0];
    for i in 0..3 {
        let mut c = rw(NvmOpcode::READ, 1, i, 1, DATA);
        c.cdw0 = c.cdw0.with_cid(i as u16 + 1);
        rig.put(&mut q, &c);
    }
    // The host publishes tail 3 in the shadow and rings the register with
    // a stale 1: the shadow value counts.
    rig.mem
        .store_u32(Gpa::new(DB + 8), 3, core::sync::atomic::Ordering::Release)
        .unwrap();
    rig.write32(0x1008, 1);
    rig.ctrl.run_until_idle();
    let mut n = 0;
    let mut cq = q;
    while let Some(c) = rig.poll_cqe(&mut cq) {
        assert!(c.status.is_success());
        n += 1;
    }
    assert_eq!(n, 3);
    let ei = rig
        .mem
        .load_u32(Gpa::new(EI + 8), core::sync::atomic::Ordering::Acquire)
        .unwrap();
    assert_eq!(ei, 3, "EventIdx tells the host what was seen");
}

// ---------------------------------------------------------------------------
// Save and restore
// ---------------------------------------------------------------------------

#[test]
fn save_mid_workload_and_restore_into_a_fresh_controller() {
    let cfg = config();
    let mut rig = Rig::new();
    rig.enable();
    let ram = RamDisk::new(1 << 20, 512).unwrap();
    let g = gate();
    rig.ctrl
        .add_namespace(1, gated(Disk::new(ram.clone()).unwrap(), g))
        .unwrap();
    assert!(feature(&mut rig, true, 0x0B, 1 << 8).status.is_success());
    let _ = get_log(&mut rig, 0x04, 0, 4096, 0, false);
    arm_aer(&mut rig, 990);
    rig.io_pair(1, 16);
    let mut q = rig.io[0];
    // Twelve writes of distinct data: eight run (and wait on the gate),
    // four stay in the submission queue.
    for i in 0..12u64 {
        let data: Vec<u8> = (0..4096u32)
            .map(|b| (b as u8) ^ (i as u8 * 17 + 1))
            .collect();
        rig.mem.write_at(Gpa::new(DATA + i * 4096), &data).unwrap();
        let mut s = rw(NvmOpcode::WRITE, 1, i * 8, 8, DATA + i * 4096);
        s.cdw0 = s.cdw0.with_cid(100 + i as u16);
        rig.put(&mut q, &s);
    }
    rig.ring_sq(&q);
    rig.ctrl.run_until_idle();
    assert!(rig.poll_cqe(&mut q.clone()).is_none());
    let blob = rig.ctrl.save().unwrap().encode().unwrap();
    // The saved controller is frozen: its commands finishing changes
    // nothing the guest sees.
    g.open();
    rig.ctrl.run_until_idle();
    assert!(
        rig.poll_cqe(&mut q.clone()).is_none(),
        "frozen: nothing posted"
    );
    // Restore into a fresh controller over the same memory and disk.
    let saved = SavedController::decode(&blob).unwrap();
    let msi = Arc::new(Msi::default());
    let restored = NvmeController::restore(
        cfg,
        rig.mem.clone(),
        msi.clone(),
        &saved,
        vec![(1, Disk::new(ram.clone()).unwrap())],
    )
    .unwrap();
    let mut rig2 = Rig::around(restored, rig.mem.clone(), msi);
    rig2.admin = rig.admin;
    rig2.io = rig.io.clone();
    rig2.cid = rig.cid;
    drop(rig);
    assert!(rig2.csts().rdy());
    rig2.ctrl.run_until_idle();
    let mut done = Vec::new();
    while let Some(c) = rig2.poll_cqe(&mut q) {
        assert!(c.status.is_success());
        done.push(c.cid.get());
        rig2.ctrl.run_until_idle();
    }
    done.sort();
    assert_eq!(
        done,
        (100..112).collect::<Vec<_>>(),
        "each command completes once"
    );
    rig2.io[0] = q;
    // Every write reached the disk.
    for i in 0..12u64 {
        let c = rig2.io_cmd(0, rw(NvmOpcode::READ, 1, i * 8, 8, DATA + 0x100000));
        assert!(c.status.is_success());
        let mut back = vec![0u8; 4096];
        rig2.mem
            .read_at(Gpa::new(DATA + 0x100000), &mut back)
            .unwrap();
        let want: Vec<u8> = (0..4096u32)
            .map(|b| (b as u8) ^ (i as u8 * 17 + 1))
            .collect();
        assert_eq!(back, want, "write {i}");
    }
    // MSI-X programming survived: completions signal vector 1's message.
    assert!(rig2.msi.take().iter().any(|m| m.1
        == MsiMessage {
            address: 0xFEE0_0010,
            data: 0x41
        }));
    // The outstanding AER survived too.
    rig2.ctrl.add_namespace(2, ram_disk(1 << 20, 512)).unwrap();
    rig2.ctrl.run_until_idle();
    assert_eq!(poll_admin(&mut rig2).expect("AER").cid.get(), 990);
}

#[test]
fn restore_refuses_bad_state_naming_the_field() {
    let mut rig = Rig::new();
    rig.enable();
    rig.io_pair(1, 16);
    let saved = rig.ctrl.save().unwrap();
    let restore = |s: &SavedController| {
        NvmeController::restore(
            config(),
            GuestMem::new(RamGuestMemory::new(MEM_SIZE)),
            Arc::new(Msi::default()),
            s,
            Vec::new(),
        )
        .map(|_| ())
    };
    assert!(restore(&saved).is_ok());
    let mut bad = saved.clone();
    bad.workers[0].sqs[0].head = 16;
    assert_eq!(restore(&bad).unwrap_err().field, "workers[0].sqs[0]");
    let mut bad = saved.clone();
    bad.workers[0].cq.gpa = MEM_SIZE;
    assert_eq!(restore(&bad).unwrap_err().field, "workers[0].cq.gpa");
    let mut bad = saved.clone();
    bad.workers[0].cq.iv = 99;
    assert_eq!(restore(&bad).unwrap_err().field, "workers[0].cq.iv");
    let mut bad = saved.clone();
    bad.pci.msix_table.pop();
    assert_eq!(restore(&bad).unwrap_err().field, "pci.msix_table");
    let mut bad = saved.clone();
    bad.workers[0].commands.push(state::CommandV1 {
        sqid: 9,
        sqe: vec![0; 64],
        done: None,
    });
    assert_eq!(
        restore(&bad).unwrap_err().field,
        "workers[0].commands[0].sqid"
    );
    // A doorbell buffer at the end of the address space (creating a queue
    // would overflow its shadow address).
    let mut bad = saved.clone();
    bad.admin.dbbc = Some((u64::MAX - 3, 0x1000));
    assert_eq!(restore(&bad).unwrap_err().field, "admin.dbbc.doorbells");
    // Counters at their limit restore, and add without overflow.
    let mut full = saved.clone();
    full.workers[0].stats = [u64::MAX; 5];
    full.events.error_count = u64::MAX;
    assert!(restore(&full).is_ok());
    let mut total = crate::worker::IoStats {
        bytes_read: u64::MAX,
        ..Default::default()
    };
    total.add(&crate::worker::IoStats {
        bytes_read: 1 << 63,
        read_commands: 1,
        ..Default::default()
    });
    assert_eq!((total.bytes_read, total.read_commands), (u64::MAX, 1));
    // A blob that is not a saved controller.
    assert!(SavedController::decode(b"not a state").is_err());
    let mut blob = saved.encode().unwrap();
    let n = blob.len();
    blob[n / 2] ^= 0xFF;
    assert!(SavedController::decode(&blob).is_err());
}

// ---------------------------------------------------------------------------
// The I/O path allocates nothing
// ---------------------------------------------------------------------------

/// Counts interrupts without allocating.
#[derive(Default)]
struct CountingSink(core::sync::atomic::AtomicU64);

impl MsiSink for CountingSink {
    fn signal(&self, _: u16, _: MsiMessage) {
        self.0.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
}

/// The fewest allocations any of up to 300 runs of `f` made (other tests
/// of this binary may allocate concurrently, which only adds).
fn fewest_allocations(mut f: impl FnMut()) -> usize {
    let mut fewest = usize::MAX;
    for _ in 0..300 {
        let region = stats_alloc::Region::new(&stats_alloc::INSTRUMENTED_SYSTEM);
        f();
        fewest = fewest.min(region.change().allocations);
        if fewest == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    fewest
}

#[test]
fn doorbell_to_completion_allocates_nothing() {
    let mem = GuestMem::new(RamGuestMemory::new(MEM_SIZE));
    let sink = Arc::new(CountingSink::default());
    let ctrl = NvmeController::new(config(), mem.clone(), sink.clone());
    let mut rig = Rig::around(ctrl, mem, Arc::new(Msi::default()));
    rig.enable();
    rig.ctrl.add_namespace(1, ram_disk(4 << 20, 512)).unwrap();
    let q = rig.io_pair(1, 64);
    // Warm up: the first commands build the slot's buffers.
    for i in 0..4 {
        rig.io_cmd(q, rw(NvmOpcode::WRITE, 1, i * 8, 8, DATA));
    }
    let before = sink.0.load(core::sync::atomic::Ordering::Relaxed);
    // QD1: one command per doorbell.
    let qd1 = fewest_allocations(|| {
        for i in 0..16u64 {
            let op = if i % 2 == 0 {
                NvmOpcode::READ
            } else {
                NvmOpcode::WRITE
            };
            let mut s = rw(op, 1, i * 8, 8, DATA);
            rig.cid = rig.cid.wrapping_add(1);
            s.cdw0 = s.cdw0.with_cid(rig.cid);
            let mut g = rig.io[q];
            rig.put(&mut g, &s);
            rig.ring_sq(&g);
            rig.ctrl.run_until_idle();
            let c = rig.poll_cqe(&mut g).unwrap();
            assert!(c.status.is_success());
            rig.io[q] = g;
        }
    });
    assert_eq!(qd1, 0, "QD1 read/write through the controller allocates");
    // QD32: one doorbell, 32 commands, one interrupt.
    let mut irqs = 0;
    let qd32 = fewest_allocations(|| {
        let mut g = rig.io[q];
        for i in 0..32u64 {
            let mut s = rw(NvmOpcode::READ, 1, i * 8, 8, DATA + (i % 8) * 0x2000);
            s.cdw0 = s.cdw0.with_cid(i as u16);
            rig.put(&mut g, &s);
        }
        let n0 = sink.0.load(core::sync::atomic::Ordering::Relaxed);
        rig.ring_sq(&g);
        rig.ctrl.run_until_idle();
        irqs = sink.0.load(core::sync::atomic::Ordering::Relaxed) - n0;
        for _ in 0..32 {
            assert!(rig.poll_cqe(&mut g).unwrap().status.is_success());
        }
        rig.io[q] = g;
    });
    assert_eq!(qd32, 0, "QD32 batch allocates");
    assert!(
        (1..=4).contains(&irqs),
        "one interrupt per pass, not per command ({irqs})"
    );
    assert!(sink.0.load(core::sync::atomic::Ordering::Relaxed) > before);
}

/// A waker that counts its wakes.
struct CountWake(core::sync::atomic::AtomicU64);

impl alloc::task::Wake for CountWake {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, core::sync::atomic::Ordering::AcqRel);
    }
}

#[test]
fn one_task_per_completion_queue() {
    let mut rig = Rig::new();
    rig.enable();
    rig.ctrl.add_namespace(1, ram_disk(1 << 20, 512)).unwrap();
    rig.io_pair(1, 8);
    rig.io_pair(2, 8);
    let counts: Vec<Arc<CountWake>> = (0..3)
        .map(|_| Arc::new(CountWake(core::sync::atomic::AtomicU64::new(0))))
        .collect();
    let wakers: Vec<core::task::Waker> = counts.iter().map(|c| c.clone().into()).collect();
    let poll = |rig: &Rig, q: u16| {
        let mut cx = core::task::Context::from_waker(&wakers[usize::from(q)]);
        rig.ctrl.poll_queue(q, &mut cx)
    };
    for q in 0..3 {
        while poll(&rig, q).is_ready() {}
    }
    let wakes = |i: usize| counts[i].0.load(core::sync::atomic::Ordering::Acquire);
    let before = [wakes(0), wakes(1), wakes(2)];
    // A doorbell of queue 2 wakes only queue 2's task.
    let mut q2 = rig.io[1];
    rig.put(&mut q2, &rw(NvmOpcode::READ, 1, 0, 1, DATA));
    rig.ring_sq(&q2);
    assert_eq!([wakes(0), wakes(1)], [before[0], before[1]]);
    assert_eq!(wakes(2), before[2] + 1);
    assert!(poll(&rig, 1).is_pending(), "queue 1 has nothing to do");
    assert!(rig.poll_cqe(&mut q2).is_none(), "nothing ran yet");
    assert!(poll(&rig, 2).is_ready());
    assert!(
        rig.poll_cqe(&mut q2)
            .expect("queue 2's task ran it")
            .status
            .is_success()
    );
    assert!(
        rig.ctrl
            .poll_queue(
                9,
                &mut core::task::Context::from_waker(core::task::Waker::noop())
            )
            .is_pending(),
        "no such queue: never runs"
    );
}

#[test]
fn admin_queue_size_is_not_bounded_by_mqes() {
    // CAP.MQES (here 3: 4 entries) bounds I/O queues only; the admin
    // queue takes AQA's 2..=4096 entries.
    let mut c = config();
    c.max_queue_entries = 4;
    let mut rig = Rig::with_config(c.clone());
    rig.pci_on();
    rig.write32(offset::AQA, 63 << 16 | 63);
    rig.write64(offset::ASQ, ASQ);
    rig.write64(offset::ACQ, ACQ);
    rig.write32(offset::CC, 0x0046_0001);
    rig.ctrl.run_until_idle();
    assert!(rig.csts().rdy(), "a 64-entry admin queue enables");
    assert!(!rig.csts().cfs());
    rig.admin = GuestQueue::new(0, ASQ, ACQ, 64);
    // More commands than entries: the 64-entry queues wrap.
    for _ in 0..100 {
        assert!(
            rig.admin_cmd(sqe(AdminOpcode::KEEP_ALIVE.get()))
                .status
                .is_success()
        );
    }
    // I/O queues are bounded by MQES.
    assert_eq!(
        rig.create_cq(1, 5, 1),
        StatusWord::command_specific(CommandSpecificStatus::INVALID_QUEUE_SIZE).with_dnr(true)
    );
    assert_eq!(rig.create_cq(1, 4, 1), StatusWord::SUCCESS);
    // A 1-entry admin queue is refused.
    let bad = Rig::with_config(c.clone());
    bad.pci_on();
    bad.write32(offset::AQA, 0);
    bad.write64(offset::ASQ, ASQ);
    bad.write64(offset::ACQ, ACQ);
    bad.write32(offset::CC, 0x0046_0001);
    assert!(bad.csts().cfs());
    // Saved, such a controller restores, and its admin queue goes on.
    let saved = rig.ctrl.save().unwrap();
    assert_eq!(saved.admin.sq.unwrap().size, 64);
    let restored = NvmeController::restore(
        c,
        rig.mem.clone(),
        rig.msi.clone(),
        &SavedController::decode(&saved.encode().unwrap()).unwrap(),
        Vec::new(),
    )
    .unwrap();
    let mut rig2 = Rig::around(restored, rig.mem.clone(), rig.msi.clone());
    rig2.admin = rig.admin;
    rig2.cid = rig.cid;
    for _ in 0..40 {
        assert!(
            rig2.admin_cmd(sqe(AdminOpcode::KEEP_ALIVE.get()))
                .status
                .is_success()
        );
    }
    // A saved admin queue beyond 4096 entries, or not queue 0, is refused.
    let mut s = saved.clone();
    s.admin.sq.as_mut().unwrap().size = 4097;
    let err = NvmeController::restore(
        config(),
        GuestMem::new(RamGuestMemory::new(MEM_SIZE)),
        Arc::new(Msi::default()),
        &s,
        Vec::new(),
    )
    .unwrap_err();
    assert_eq!(err.field, "admin.sq.size");
    let mut s = saved;
    s.admin.cq.as_mut().unwrap().qid = 1;
    let err = NvmeController::restore(
        config(),
        GuestMem::new(RamGuestMemory::new(MEM_SIZE)),
        Arc::new(Msi::default()),
        &s,
        Vec::new(),
    )
    .unwrap_err();
    assert_eq!(err.field, "admin.cq.qid");
}

/// A saved controller with every part filled in, built by hand so a
/// change of behaviour cannot hide a change of format.
fn golden_state() -> SavedController {
    use state::*;
    let mut config = vec![0u8; 256];
    config[..4].copy_from_slice(&0xB111_1414u32.to_le_bytes());
    config[4] = 0x06;
    config[0x82..0x84].copy_from_slice(&0x8004u16.to_le_bytes());
    let mut sqe = vec![0u8; 64];
    sqe[0] = 0x01;
    sqe[2..4].copy_from_slice(&7u16.to_le_bytes());
    sqe[4] = 1;
    ControllerV1 {
        pci: PciV1 {
            config,
            bar0: 0xFE00_0004,
            bar4: 0xFE10_0004,
            msix_table: (0..5u32)
                .map(|v| [0xFEE0_0000 + v * 16, 0, 0x40 + v, u32::from(v == 4)])
                .collect(),
            msix_pending: vec![0b1_0000],
        },
        regs: RegistersV1 {
            cc: 0x0046_0001,
            csts: 1,
            aqa: 0x000F_000F,
            asq: ASQ,
            acq: ACQ,
        },
        lifecycle: 1,
        intms: 0,
        intm_pending: 0,
        admin: AdminV1 {
            sq: Some(SqV1 {
                qid: 0,
                gpa: ASQ,
                size: 16,
                head: 5,
                tail: 5,
                cqid: 0,
                deleting: false,
                shadow: None,
            }),
            cq: Some(CqV1 {
                qid: 0,
                gpa: ACQ,
                size: 16,
                tail: 4,
                phase: true,
                head: 4,
                ien: true,
                iv: 0,
                shadow: None,
            }),
            page_size: 4096,
            aers: vec![12],
            pending_deletes: Vec::new(),
            aborts: Vec::new(),
            held: vec![(13, 0, 0x0001_0000)],
            dbbc: Some((0x30000, 0x31000)),
            features: FeaturesV1 {
                arbitration: 3,
                power_management: 0,
                temperature: (0xFFFF, 0),
                error_recovery: 0,
                volatile_write_cache: true,
                queues: (2, 2),
                interrupt_coalescing: 0x0A05,
                vector_cd: vec![false, true, false, false, false],
                write_atomicity: 0,
                keep_alive: 0,
                host_id: [7; 16],
                host_id_extended: true,
                reservation_mask: 0,
                software_progress: 0,
            },
        },
        workers: vec![WorkerV1 {
            cq: CqV1 {
                qid: 1,
                gpa: IO_CQ + 0x10000,
                size: 16,
                tail: 3,
                phase: false,
                head: 2,
                ien: true,
                iv: 1,
                shadow: Some((0x30000 + 12, 0x31000 + 12)),
            },
            sqs: vec![SqV1 {
                qid: 1,
                gpa: IO_SQ + 0x10000,
                size: 16,
                head: 9,
                tail: 10,
                cqid: 1,
                deleting: false,
                shadow: Some((0x30000 + 8, 0x31000 + 8)),
            }],
            commands: vec![
                CommandV1 {
                    sqid: 1,
                    sqe: sqe.clone(),
                    done: None,
                },
                CommandV1 {
                    sqid: 1,
                    sqe,
                    done: Some((0x0280, 0)),
                },
            ],
            aborts: vec![(1, 44)],
            stats: [8192, 4096, 2, 1, 0],
        }],
        namespaces: NamespacesV1 {
            changed: vec![1, 3],
            overflow: false,
            known: vec![(1, 2048)],
        },
        events: EventsV1 {
            errors: vec![vec![1; 64]],
            error_count: 1,
            pending: vec![0x0004_0002],
            error_masked: true,
            notice_masked: false,
            config: 0x100,
        },
    }
}

#[test]
fn golden_saved_state_blob() {
    // tests/state/<component>-v<version>.bin, like every component's.
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/state/nvme-controller-v1.bin");
    let value = golden_state();
    let encoded = value.encode().unwrap();
    if !path.exists() && std::env::var_os("PARASTOR_BLESS_STATE").is_some() {
        std::fs::write(&path, &encoded).unwrap();
    }
    let blob = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; a new version needs its golden blob (PARASTOR_BLESS_STATE=1)",
            path.display()
        )
    });
    assert_eq!(
        SavedController::decode(&blob).as_ref(),
        Ok(&value),
        "the golden blob no longer decodes to the same value: a saved struct changed without a new version"
    );
    assert_eq!(encoded, blob, "the encoding of the same value changed");
    // And it restores: queues, commands and all.
    let ctrl = NvmeController::restore(
        config(),
        GuestMem::new(RamGuestMemory::new(MEM_SIZE)),
        Arc::new(Msi::default()),
        &value,
        vec![(1, ram_disk(1 << 20, 512))],
    )
    .unwrap();
    let saved = ctrl.save().unwrap();
    assert_eq!(saved.workers[0].commands.len(), 2);
    assert_eq!(saved.admin.aers, [12]);
    assert_eq!(saved.namespaces.changed, [1, 3]);
}

/// Random register, configuration and queue traffic from a hostile guest:
/// nothing panics, and a reset brings the controller back.
#[test]
fn hostile_traffic_never_panics() {
    let mut rng = fastrand::Rng::with_seed(0x4E56_4D65);
    let (mut completed, mut failed) = (0usize, 0usize);
    for round in 0..200 {
        let mut c = config();
        c.max_queue_entries = 64;
        let mut rig = Rig::with_config(c);
        rig.enable();
        rig.ctrl.add_namespace(1, ram_disk(1 << 20, 512)).unwrap();
        rig.ctrl.add_namespace(2, ram_disk(1 << 20, 4096)).unwrap();
        rig.io_pair(1, 16);
        for _ in 0..300 {
            match rng.u8(..10) {
                0 => {
                    // A register or doorbell write of any width.
                    let off = if rng.bool() {
                        rng.u64(..0x60)
                    } else {
                        0x1000 + rng.u64(..0x40)
                    };
                    let len = [1usize, 2, 4, 8][rng.usize(..4)];
                    let data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                    // Keep the controller mostly enabled: CC writes are rarer.
                    if off != 0x14 || rng.u8(..8) == 0 {
                        rig.ctrl.bar_write(0, off, &data);
                    }
                }
                1 => {
                    let off = rng.u16(..0x100);
                    let len = [1usize, 2, 4][rng.usize(..3)];
                    let data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                    if !(4..6).contains(&off) {
                        rig.ctrl.config_write(off, &data);
                    }
                    let mut out = vec![0u8; len];
                    rig.ctrl.config_read(rng.u16(..), &mut out);
                }
                2 => {
                    let off = rng.u64(..0x2000);
                    let data = rng.u32(..).to_le_bytes();
                    rig.ctrl.bar_write(4, off & !3, &data);
                }
                3..=5 => {
                    // A random admin command (random dwords and pointers).
                    let mut s = sqe(rng.u8(..));
                    s.cdw0 = s.cdw0.with_opc(
                        [
                            0x00,
                            0x01,
                            0x02,
                            0x04,
                            0x05,
                            0x06,
                            0x08,
                            0x09,
                            0x0A,
                            0x0C,
                            0x18,
                            0x7C,
                            rng.u8(..),
                        ][rng.usize(..13)],
                    );
                    s.nsid = U32::new([0, 1, 2, 9, 0xFFFF_FFFF, rng.u32(..)][rng.usize(..6)]);
                    let mut ptr = || {
                        [DATA, DATA + 4095, MEM_SIZE - 8, u64::MAX - 4095, 0x30000][rng.usize(..5)]
                    };
                    let (p1, p2) = (ptr(), ptr());
                    s.set_prps(p1, p2);
                    s.cdw10 = U32::new(rng.u32(..) & [0xFF, 0xFFFF, u32::MAX][rng.usize(..3)]);
                    s.cdw11 = U32::new(rng.u32(..));
                    s.cdw12 = U32::new(rng.u32(..) & 0xFFF);
                    let mut q = rig.admin;
                    rig.put(&mut q, &s);
                    rig.ring_sq(&q);
                    rig.admin = q;
                }
                _ => {
                    // A random I/O command on SQ 1.
                    let op = [
                        0x00,
                        0x01,
                        0x02,
                        0x05,
                        0x08,
                        0x09,
                        0x0C,
                        0x0D,
                        0x0E,
                        0x11,
                        0x15,
                        rng.u8(..),
                    ][rng.usize(..12)];
                    let mut s = rw(
                        NvmOpcode::new(op),
                        rng.u32(..3),
                        rng.u64(..3000),
                        rng.u32(1..300),
                        DATA,
                    );
                    s.cdw0 = s
                        .cdw0
                        .with_psdt(parastor_hw::nvme::queue::DataTransferKind::new(rng.u8(..4)));
                    if rng.bool() {
                        let mut d = [0u8; 16];
                        rng.fill(&mut d);
                        s.dptr = d;
                    }
                    if let Some(mut q) = rig.io.first().copied() {
                        rig.put(&mut q, &s);
                        rig.ring_sq(&q);
                        rig.io[0] = q;
                    }
                }
            }
            rig.ctrl.run_until_idle();
            // Consume whatever completed so the queues keep moving.
            let mut q = rig.admin;
            while rig.poll_cqe(&mut q).is_some() {
                completed += 1;
            }
            rig.admin = q;
            if let Some(mut q) = rig.io.first().copied() {
                while let Some(c) = rig.poll_cqe(&mut q) {
                    completed += 1;
                    failed += usize::from(!c.status.is_success());
                }
                rig.io[0] = q;
            }
        }
        // Whatever happened, a reset and a fresh enable work.
        rig.ctrl.config_write(4, &[0x06, 0x00]);
        rig.write32(offset::CC, 0);
        rig.ctrl.run_until_idle();
        assert!(!rig.csts().rdy(), "round {round}: reset completes");
        rig.io.clear();
        rig.enable();
        let (st, _) = rig.identify(Cns::CONTROLLER, 0);
        assert_eq!(st, StatusWord::SUCCESS, "round {round}");
    }
    // The traffic reached the command handlers, and most of it was refused.
    assert!(completed > 2000, "{completed} completions");
    assert!(failed > 500, "{failed} I/O failures");
}

#[test]
fn reservation_persistence_and_rescap_come_from_the_disk() {
    let mut rig = Rig::new();
    rig.enable();
    rig.ctrl.add_namespace(1, ram_disk(1 << 20, 512)).unwrap();
    let pr = Disk::new(parastor_core::ReservationsDisk::new(ram_disk(1 << 20, 512))).unwrap();
    rig.ctrl.add_namespace(2, pr).unwrap();
    let get = |rig: &mut Rig, nsid: u32| {
        let mut s = sqe(AdminOpcode::GET_FEATURES.get());
        s.nsid = U32::new(nsid);
        s.cdw10 = U32::new(0x83);
        rig.admin_cmd(s)
    };
    let set = |rig: &mut Rig, nsid: u32, ptpl: u32| {
        let mut s = sqe(AdminOpcode::SET_FEATURES.get());
        s.nsid = U32::new(nsid);
        s.cdw10 = U32::new(0x83);
        s.cdw11 = U32::new(ptpl);
        rig.admin_cmd(s).status.status()
    };
    assert_eq!(
        get(&mut rig, 1).status.status(),
        generic(GenericStatus::INVALID_FIELD_IN_COMMAND).with_dnr(true),
        "no reservations on namespace 1"
    );
    assert_eq!(
        get(&mut rig, 3).status.status(),
        generic(GenericStatus::INVALID_FIELD_IN_COMMAND).with_dnr(true),
        "NSID 3 is inactive"
    );
    for nsid in [0, 17, 0xFFFF_FFFF] {
        assert_eq!(
            get(&mut rig, nsid).status.status(),
            generic(GenericStatus::INVALID_NAMESPACE_OR_FORMAT).with_dnr(true),
            "NSID {nsid:#x} is not valid"
        );
    }
    let c = get(&mut rig, 2);
    assert!(c.status.is_success());
    assert_eq!(c.dw0.get(), 0, "PTPL off");
    assert_eq!(set(&mut rig, 2, 0), StatusWord::SUCCESS);
    assert_eq!(
        set(&mut rig, 2, 1),
        StatusWord::command_specific(CommandSpecificStatus::FEATURE_NOT_CHANGEABLE).with_dnr(true)
    );
    let (_, page) = rig.identify(Cns::NAMESPACE, 2);
    let id = IdentifyNamespace::read_from_bytes(&page).unwrap();
    assert!(id.rescap.write_exclusive() && id.rescap.exclusive_access());
    let (_, page) = rig.identify(Cns::NAMESPACE, 1);
    assert_eq!(
        IdentifyNamespace::read_from_bytes(&page)
            .unwrap()
            .rescap
            .into_bits(),
        0
    );
}

/// A timer whose sleeps end on another thread shortly after they start:
/// disk completions arrive from outside the polling thread.
struct ThreadTimer(
    std::sync::Mutex<std::sync::mpsc::Sender<core::task::Waker>>,
    Arc<core::sync::atomic::AtomicU64>,
);

impl parastor_core::Timer for ThreadTimer {
    fn sleep(&self, _: core::time::Duration) -> parastor_core::BoxFuture<'static, ()> {
        let tx = self.0.lock().unwrap().clone();
        let done = Arc::new(core::sync::atomic::AtomicBool::new(false));
        let fired = self.1.clone();
        let mut sent = false;
        Box::pin(core::future::poll_fn(move |cx| {
            if done.load(core::sync::atomic::Ordering::Acquire) {
                return core::task::Poll::Ready(());
            }
            if !sent {
                sent = true;
                let done = done.clone();
                let fired = fired.clone();
                let waker = cx.waker().clone();
                // The timer thread runs this waker after setting `done`.
                let w = core::task::Waker::from(Arc::new(SetThenWake(done, waker, fired)));
                let _ = tx.send(w);
            }
            core::task::Poll::Pending
        }))
    }
}

struct SetThenWake(
    Arc<core::sync::atomic::AtomicBool>,
    core::task::Waker,
    Arc<core::sync::atomic::AtomicU64>,
);

impl alloc::task::Wake for SetThenWake {
    fn wake(self: Arc<Self>) {
        self.0.store(true, core::sync::atomic::Ordering::Release);
        self.2.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        self.1.wake_by_ref();
    }
}

/// Unparks a thread.
struct Unpark(std::thread::Thread);

impl alloc::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Two submitting threads, a timer thread completing the disk's I/O and a
/// polling thread that sleeps whenever `poll_work` is `Pending`: every
/// command completes, and no wake is ever lost (the poller never needs its
/// timeout to find work).
#[test]
fn no_lost_wakeups_across_threads() {
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut rig = Rig::new();
    rig.enable();
    let (tx, rx) = std::sync::mpsc::channel::<core::task::Waker>();
    let fired = Arc::new(AtomicU64::new(0));
    let timer_thread = std::thread::spawn(move || {
        while let Ok(w) = rx.recv() {
            std::thread::yield_now();
            w.wake();
        }
    });
    let slow = Disk::new(parastor_core::DelayDisk::new(
        ram_disk(1 << 20, 512),
        parastor_core::DelayHandle::new(core::time::Duration::from_micros(1)),
        Arc::new(ThreadTimer(std::sync::Mutex::new(tx), fired.clone())),
    ))
    .unwrap();
    rig.ctrl.add_namespace(1, slow).unwrap();
    rig.ctrl.add_namespace(2, ram_disk(1 << 20, 512)).unwrap();
    rig.io_pair(1, 32);
    rig.io_pair(2, 32);
    let ctrl = Arc::new(rig.ctrl);
    let mem = rig.mem.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let rescued = Arc::new(AtomicU64::new(0));
    let poller = {
        let (ctrl, stop, rescued) = (ctrl.clone(), stop.clone(), rescued.clone());
        std::thread::spawn(move || {
            let waker = core::task::Waker::from(Arc::new(Unpark(std::thread::current())));
            let mut cx = core::task::Context::from_waker(&waker);
            while !stop.load(Ordering::Acquire) {
                if ctrl.poll_work(&mut cx).is_ready() {
                    continue;
                }
                let t = std::time::Instant::now();
                std::thread::park_timeout(std::time::Duration::from_millis(200));
                // Woken by the timeout, not a wake, and there was work:
                // a lost wakeup.
                if t.elapsed() >= std::time::Duration::from_millis(200)
                    && ctrl.poll_work(&mut cx).is_ready()
                {
                    rescued.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let submitters: Vec<_> = rig
        .io
        .iter()
        .copied()
        .map(|mut q| {
            let (ctrl, mem) = (ctrl.clone(), mem.clone());
            std::thread::spawn(move || {
                let nsid = u32::from(q.qid);
                let data = DATA + u64::from(q.qid) * 0x10000;
                let mut done = 0u32;
                let mut sent = 0u32;
                let total = 2000u32;
                let depth = 8;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while done < total {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "queue {} stalled at {done}",
                        q.qid
                    );
                    while sent < total && sent - done < depth {
                        let op = if sent.is_multiple_of(2) {
                            NvmOpcode::WRITE
                        } else {
                            NvmOpcode::READ
                        };
                        let mut s = rw(op, nsid, u64::from(sent % 256), 1, data);
                        s.cdw0 = s.cdw0.with_cid(sent as u16);
                        mem.write_obj(Gpa::new(q.sq + u64::from(q.sq_tail) * 64), &s)
                            .unwrap();
                        q.sq_tail = (q.sq_tail + 1) % q.size;
                        ctrl.bar_write(0, 0x1000 + u64::from(q.qid) * 8, &q.sq_tail.to_le_bytes());
                        sent += 1;
                    }
                    let gpa = Gpa::new(q.cq + u64::from(q.cq_head) * 16);
                    let c: Cqe = mem.read_obj(gpa).unwrap();
                    if c.status.p() != q.phase {
                        std::thread::yield_now();
                        continue;
                    }
                    assert!(c.status.is_success(), "{:?}", c.status.status());
                    q.cq_head += 1;
                    if q.cq_head == q.size {
                        q.cq_head = 0;
                        q.phase = !q.phase;
                    }
                    ctrl.bar_write(
                        0,
                        0x1000 + u64::from(q.qid) * 8 + 4,
                        &q.cq_head.to_le_bytes(),
                    );
                    done += 1;
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    stop.store(true, Ordering::Release);
    poller.thread().unpark();
    poller.join().unwrap();
    assert_eq!(rescued.load(Ordering::Relaxed), 0, "lost wakeups");
    assert!(
        fired.load(Ordering::Relaxed) >= 2000,
        "the slow disk's I/O completed off-thread"
    );
    drop(ctrl);
    timer_thread.join().unwrap();
}
