//! Saved state of an [`NvmeController`](crate::NvmeController), for
//! servicing: plain, versioned, untrusted data (see
//! [`parastor_core::state`]), component `nvme-controller`.
//!
//! [`ControllerV1`] holds everything the guest can observe: the PCI
//! configuration (command register, BARs, MSI-X table and pending bits),
//! the registers, the admin queue pair, every I/O queue (base, size,
//! head, tail doorbell, phase, vector, shadow doorbells), the features,
//! the asynchronous events pending and the outstanding Asynchronous Event
//! Requests, the error log, the SMART counters, the changed-namespace list
//! and the size last reported for each namespace.
//!
//! Commands in flight are saved too. Saving freezes the controller first:
//! from then on it neither polls a command nor touches guest memory, so
//! the state cannot move under the save. A command that had finished but
//! whose completion was not yet posted is saved with its completion and is
//! posted after the restore. A command still running is saved as its
//! submission queue entry and **runs again** after the restore, as QEMU
//! re-submits in-flight block requests after a migration: every NVM
//! command parastor runs gives the same result when repeated (a read, a
//! write of the same data, a flush, a deallocate, Write Zeroes, Compare,
//! Verify, reservation commands with the same keys), and the guest cannot
//! tell — it sees one completion per command.
//!
//! The namespaces' disks are not saved: the caller attaches the same
//! disks at [`NvmeController::restore`](crate::NvmeController::restore),
//! as at boot. A namespace whose disk now reports another size than the
//! one last reported to the guest raises a notice, as a resize would.
//!
//! Restore checks every value against the new controller (queue IDs,
//! sizes, indices, vectors, addresses in guest memory, command counts)
//! before it changes anything; a bad value is an [`InvalidState`] naming
//! the field.

use crate::queue::{Cq, Shadow, Sq, check_ring};
use crate::worker::{Completion, InFlight};
use crate::{Lifecycle, Shared};
use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use parastor_core::Disk;
use parastor_core::state::{StateError, Versioned, check_count};
use parastor_hw::nvme::log::ErrorLogEntry;
use parastor_hw::nvme::queue::{CQE_LEN, SQE_LEN, Sqe};
use parastor_hw::nvme::regs::Doorbell;
use parastor_hw::nvme::status::StatusWord;
use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, IntoBytes};

pub use parastor_core::state::{InvalidState, SaveError};

/// Why a restore was refused.
pub type RestoreError = InvalidState;

/// The saved controller (the newest version).
pub type SavedController = ControllerV1;

/// Saved state of an NVMe controller, version 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerV1 {
    /// PCI configuration and MSI-X.
    pub pci: PciV1,
    /// Controller registers.
    pub regs: RegistersV1,
    /// The lifecycle: 0 disabled, 1 ready, 2 resetting, 3 shutting down,
    /// 4 fatal.
    pub lifecycle: u8,
    /// INTMS mask bits.
    pub intms: u32,
    /// Vectors signalled while masked by INTMS.
    pub intm_pending: u32,
    /// The admin worker.
    pub admin: AdminV1,
    /// Each I/O completion queue worker that has a queue, by CQID.
    pub workers: Vec<WorkerV1>,
    /// The changed-namespace list and the sizes reported.
    pub namespaces: NamespacesV1,
    /// Error log and pending events.
    pub events: EventsV1,
}

impl Versioned for ControllerV1 {
    const COMPONENT: &'static str = "nvme-controller";
    const VERSION: u16 = 1;
}

impl ControllerV1 {
    /// Encodes the state in its envelope (postcard inside).
    pub fn encode(&self) -> Result<Vec<u8>, SaveError> {
        parastor_core::state::encode(self)
    }

    /// Decodes a blob made by [`ControllerV1::encode`].
    pub fn decode(blob: &[u8]) -> Result<Self, StateError> {
        parastor_core::state::decode(blob)
    }
}

/// PCI configuration space and MSI-X.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciV1 {
    /// The 256-byte configuration image (only its writable bits restore).
    pub config: Vec<u8>,
    /// BAR0/1 as latched.
    pub bar0: u64,
    /// BAR4/5 as latched.
    pub bar4: u64,
    /// MSI-X table: address low, address high, data, vector control.
    pub msix_table: Vec<[u32; 4]>,
    /// MSI-X pending bits.
    pub msix_pending: Vec<u64>,
}

/// Controller registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistersV1 {
    /// CC.
    pub cc: u32,
    /// CSTS.
    pub csts: u32,
    /// AQA.
    pub aqa: u32,
    /// ASQ.
    pub asq: u64,
    /// ACQ.
    pub acq: u64,
}

/// A submission queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqV1 {
    /// Queue ID.
    pub qid: u16,
    /// Base address.
    pub gpa: u64,
    /// Entries.
    pub size: u32,
    /// Next entry the controller reads.
    pub head: u32,
    /// Tail doorbell register value.
    pub tail: u32,
    /// Completion queue.
    pub cqid: u16,
    /// Deletion asked for.
    pub deleting: bool,
    /// Shadow doorbell and EventIdx addresses.
    pub shadow: Option<(u64, u64)>,
}

/// A completion queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CqV1 {
    /// Queue ID.
    pub qid: u16,
    /// Base address.
    pub gpa: u64,
    /// Entries.
    pub size: u32,
    /// Next entry the controller writes.
    pub tail: u32,
    /// Phase tag being written.
    pub phase: bool,
    /// Head doorbell register value.
    pub head: u32,
    /// Interrupts enabled.
    pub ien: bool,
    /// MSI-X vector.
    pub iv: u16,
    /// Shadow doorbell and EventIdx addresses.
    pub shadow: Option<(u64, u64)>,
}

/// A command in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandV1 {
    /// The submission queue it came from.
    pub sqid: u16,
    /// The submission queue entry (64 bytes).
    pub sqe: Vec<u8>,
    /// (status word, DW0) if it finished and waits to be posted.
    pub done: Option<(u16, u32)>,
}

/// An I/O completion queue worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerV1 {
    /// Its completion queue.
    pub cq: CqV1,
    /// The submission queues posting to it.
    pub sqs: Vec<SqV1>,
    /// Its commands in flight.
    pub commands: Vec<CommandV1>,
    /// Queued commands to abort when fetched, (SQID, CID).
    pub aborts: Vec<(u16, u16)>,
    /// SMART counters: bytes read, bytes written, read commands, write
    /// commands, media errors.
    pub stats: [u64; 5],
}

/// The admin worker and the features.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminV1 {
    /// Admin submission queue.
    pub sq: Option<SqV1>,
    /// Admin completion queue.
    pub cq: Option<CqV1>,
    /// CC.MPS page size in bytes.
    pub page_size: u64,
    /// Outstanding AER CIDs.
    pub aers: Vec<u16>,
    /// Delete I/O SQ commands waiting: (SQID, CID).
    pub pending_deletes: Vec<(u16, u16)>,
    /// Admin CIDs to abort when fetched.
    pub aborts: Vec<u16>,
    /// Completions not yet posted: (CID, status word, DW0).
    pub held: Vec<(u16, u16, u32)>,
    /// Doorbell Buffer Config addresses.
    pub dbbc: Option<(u64, u64)>,
    /// Features.
    pub features: FeaturesV1,
}

/// Stored feature values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeaturesV1 {
    /// Arbitration.
    pub arbitration: u32,
    /// Power management.
    pub power_management: u32,
    /// Temperature thresholds: over, under.
    pub temperature: (u16, u16),
    /// Error recovery.
    pub error_recovery: u32,
    /// Volatile write cache enable.
    pub volatile_write_cache: bool,
    /// Queues allocated: SQs, CQs (1's based).
    pub queues: (u16, u16),
    /// Interrupt coalescing.
    pub interrupt_coalescing: u32,
    /// Coalescing disable per vector.
    pub vector_cd: Vec<bool>,
    /// Write atomicity normal.
    pub write_atomicity: u32,
    /// Keep alive timer.
    pub keep_alive: u32,
    /// Host identifier.
    pub host_id: [u8; 16],
    /// Host identifier is 128-bit.
    pub host_id_extended: bool,
    /// Reservation notification mask.
    pub reservation_mask: u32,
    /// Software progress marker.
    pub software_progress: u32,
}

/// Namespaces' guest-visible change state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacesV1 {
    /// Changed NSIDs not yet read by the host, ascending.
    pub changed: Vec<u32>,
    /// More than the log can list changed.
    pub overflow: bool,
    /// (NSID, sector count last reported) of each namespace.
    pub known: Vec<(u32, u64)>,
}

/// Error log and events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsV1 {
    /// Error log entries (64 bytes each), newest first.
    pub errors: Vec<Vec<u8>>,
    /// Errors logged ever.
    pub error_count: u64,
    /// Events not yet delivered (AER DW0 values).
    pub pending: Vec<u32>,
    /// Error events masked until the error log is read.
    pub error_masked: bool,
    /// Notices masked until the changed-namespace list is read.
    pub notice_masked: bool,
    /// Asynchronous event configuration.
    pub config: u32,
}

fn sq_v1(sq: &Sq, s: &Shared) -> SqV1 {
    SqV1 {
        qid: sq.qid,
        gpa: sq.gpa,
        size: sq.size,
        head: sq.head,
        tail: s.doorbells.value(Doorbell::SqTail(sq.qid)),
        cqid: sq.cqid,
        deleting: sq.deleting,
        shadow: sq.shadow.map(|sh| (sh.db, sh.event_idx)),
    }
}

fn cq_v1(cq: &Cq, s: &Shared) -> CqV1 {
    CqV1 {
        qid: cq.qid,
        gpa: cq.gpa,
        size: cq.size,
        tail: cq.tail,
        phase: cq.phase,
        head: s.doorbells.value(Doorbell::CqHead(cq.qid)),
        ien: cq.ien,
        iv: cq.iv,
        shadow: cq.shadow.map(|sh| (sh.db, sh.event_idx)),
    }
}

/// Freezes the controller and saves it.
pub(crate) fn save(s: &Shared) -> Result<ControllerV1, SaveError> {
    s.frozen.store(true, Ordering::Release);
    let regs = s.regs.lock();
    let admin = s.admin.lock();
    let f = &admin.features;
    let admin_v1 = AdminV1 {
        sq: admin.sq.as_ref().map(|q| sq_v1(q, s)),
        cq: admin.cq.as_ref().map(|q| cq_v1(q, s)),
        page_size: admin.page_size,
        aers: admin.aers.clone(),
        pending_deletes: admin.pending_deletes.clone(),
        aborts: admin.aborts.clone(),
        held: admin
            .held
            .iter()
            .map(|(cid, c)| (*cid, c.status.into_bits(), c.dw0))
            .collect(),
        dbbc: admin.dbbc,
        features: FeaturesV1 {
            arbitration: f.arbitration,
            power_management: f.power_management,
            temperature: (f.temperature_over, f.temperature_under),
            error_recovery: f.error_recovery,
            volatile_write_cache: f.volatile_write_cache,
            queues: (f.queues_sq, f.queues_cq),
            interrupt_coalescing: f.interrupt_coalescing,
            vector_cd: f.vector_cd.clone(),
            write_atomicity: f.write_atomicity,
            keep_alive: f.keep_alive,
            host_id: f.host_id,
            host_id_extended: f.host_id_extended,
            reservation_mask: f.reservation_mask,
            software_progress: f.software_progress,
        },
    };
    let mut workers = Vec::new();
    for w in s.workers.iter() {
        let w = w.lock();
        let Some(cq) = w.cq.as_ref() else { continue };
        let st = w.stats;
        workers.push(WorkerV1 {
            cq: cq_v1(cq, s),
            sqs: w.sqs.iter().map(|q| sq_v1(q, s)).collect(),
            commands: w
                .in_flight()
                .into_iter()
                .map(|c| CommandV1 {
                    sqid: c.sqid,
                    sqe: c.sqe.as_bytes().to_vec(),
                    done: c.done.map(|d| (d.status.into_bits(), d.dw0)),
                })
                .collect(),
            aborts: w.aborts.clone(),
            stats: [
                st.bytes_read,
                st.bytes_written,
                st.read_commands,
                st.write_commands,
                st.media_errors,
            ],
        });
    }
    let namespaces = {
        let ns = s.namespaces.lock();
        let (changed, overflow) = ns.changed();
        NamespacesV1 {
            changed: changed.to_vec(),
            overflow,
            known: ns.known().collect(),
        }
    };
    let events = {
        let ev = s.events.lock();
        EventsV1 {
            errors: ev.errors.iter().map(|e| e.as_bytes().to_vec()).collect(),
            error_count: ev.error_count,
            pending: ev.pending.iter().copied().collect(),
            error_masked: ev.error_masked,
            notice_masked: ev.notice_masked,
            config: ev.config,
        }
    };
    Ok(ControllerV1 {
        pci: s.pci.save(),
        regs: crate::regs::save(&regs),
        lifecycle: s.lifecycle() as u8,
        intms: s.intms.load(Ordering::Acquire),
        intm_pending: s.intm_pending.load(Ordering::Acquire),
        admin: admin_v1,
        workers,
        namespaces,
        events,
    })
}

/// The most entries an admin queue can have (AQA's 12-bit sizes).
const ADMIN_QUEUE_MAX_ENTRIES: u32 = 4096;

fn bad(field: impl Into<alloc::string::String>, problem: impl core::fmt::Display) -> InvalidState {
    InvalidState::new(field, problem)
}

/// A saved queue's ring, for checking.
struct Ring {
    qid: u16,
    gpa: u64,
    size: u32,
    indices: [u32; 2],
    shadow: Option<(u64, u64)>,
}

impl From<&SqV1> for Ring {
    fn from(q: &SqV1) -> Self {
        Self {
            qid: q.qid,
            gpa: q.gpa,
            size: q.size,
            indices: [q.head, q.tail],
            shadow: q.shadow,
        }
    }
}

impl From<&CqV1> for Ring {
    fn from(q: &CqV1) -> Self {
        Self {
            qid: q.qid,
            gpa: q.gpa,
            size: q.size,
            indices: [q.tail, q.head],
            shadow: q.shadow,
        }
    }
}

/// Checks a saved queue against the controller.
fn check_queue(s: &Shared, field: &str, ring: Ring, entry_len: usize) -> Result<(), InvalidState> {
    let Ring {
        qid,
        gpa,
        size,
        indices,
        shadow,
    } = ring;
    if usize::from(qid) > s.workers.len() {
        return Err(bad(
            format!("{field}.qid"),
            format_args!("queue {qid} is beyond the {} offered", s.workers.len()),
        ));
    }
    // Admin queues (ID 0) have up to 4096 entries whatever CAP.MQES says.
    let max = if qid == 0 {
        ADMIN_QUEUE_MAX_ENTRIES
    } else {
        s.config.max_queue_entries
    };
    if size < 2 || size > max {
        return Err(bad(
            format!("{field}.size"),
            format_args!("{size} entries, expected 2..={max}"),
        ));
    }
    for i in indices {
        if i >= size {
            return Err(bad(
                field,
                format_args!("index {i} is outside a queue of {size} entries"),
            ));
        }
    }
    if check_ring(&*s.mem, gpa, size, entry_len).is_err() {
        return Err(bad(
            format!("{field}.gpa"),
            format_args!("queue at {gpa:#x} is outside guest memory"),
        ));
    }
    if let Some((db, ei)) = shadow
        && (db.checked_add(4096).is_none() || ei.checked_add(4096).is_none())
    {
        return Err(bad(format!("{field}.shadow"), "address overflows"));
    }
    Ok(())
}

fn sq_from(v: &SqV1) -> Sq {
    Sq {
        qid: v.qid,
        gpa: v.gpa,
        size: v.size,
        head: v.head,
        cqid: v.cqid,
        shadow: v.shadow.map(|(db, event_idx)| Shadow { db, event_idx }),
        deleting: v.deleting,
        outstanding: 0,
    }
}

fn cq_from(v: &CqV1) -> Cq {
    Cq {
        qid: v.qid,
        gpa: v.gpa,
        size: v.size,
        tail: v.tail,
        phase: v.phase,
        head: v.head,
        ien: v.ien,
        iv: v.iv,
        shadow: v.shadow.map(|(db, event_idx)| Shadow { db, event_idx }),
    }
}

fn validate(s: &Shared, saved: &ControllerV1) -> Result<(), InvalidState> {
    let (entries, pending) = s.pci.saved_lengths();
    if saved.pci.config.len() != parastor_hw::pci::config::CONFIG_SPACE_LEN {
        return Err(bad("pci.config", "expected 256 bytes"));
    }
    if saved.pci.msix_table.len() != entries || saved.pci.msix_pending.len() != pending {
        return Err(bad(
            "pci.msix_table",
            format_args!("expected {entries} vectors as configured"),
        ));
    }
    if saved.lifecycle > Lifecycle::Fatal as u8 {
        return Err(bad("lifecycle", "expected 0..=4"));
    }
    let a = &saved.admin;
    if !a.page_size.is_power_of_two() || !(4096..=65536).contains(&a.page_size) {
        return Err(bad(
            "admin.page_size",
            "expected a power of two in 4096..=65536",
        ));
    }
    if let Some((db, ei)) = a.dbbc {
        for (name, base) in [("admin.dbbc.doorbells", db), ("admin.dbbc.event_idx", ei)] {
            let in_memory = s
                .mem
                .check(
                    parastor_core::GpaRange::new(parastor_core::Gpa::new(base), a.page_size),
                    parastor_core::Access::ReadWrite,
                )
                .is_ok();
            if base == 0 || !base.is_multiple_of(a.page_size) || !in_memory {
                return Err(bad(
                    name,
                    "expected a non-zero, page-aligned page inside guest memory",
                ));
            }
        }
    }
    check_count("admin.aers", a.aers.len(), crate::admin::MAX_AERS)?;
    check_count("admin.aborts", a.aborts.len(), crate::admin::MAX_ABORTS)?;
    check_count("admin.held", a.held.len(), 65536)?;
    check_count(
        "admin.pending_deletes",
        a.pending_deletes.len(),
        s.workers.len(),
    )?;
    if let Some(q) = &a.sq {
        if q.qid != 0 || q.cqid != 0 {
            return Err(bad("admin.sq.qid", "the admin queue is queue 0"));
        }
        check_queue(s, "admin.sq", q.into(), SQE_LEN)?;
    }
    if let Some(q) = &a.cq {
        if q.qid != 0 {
            return Err(bad("admin.cq.qid", "the admin queue is queue 0"));
        }
        check_queue(s, "admin.cq", q.into(), CQE_LEN)?;
    }
    let f = &a.features;
    let max = s.config.max_io_queue_pairs;
    if f.queues.0 == 0 || f.queues.0 > max || f.queues.1 == 0 || f.queues.1 > max {
        return Err(bad(
            "admin.features.queues",
            format_args!("expected 1..={max}"),
        ));
    }
    if f.vector_cd.len() != usize::from(s.config.msix_vectors) {
        return Err(bad(
            "admin.features.vector_cd",
            "expected one entry per vector",
        ));
    }
    check_count("workers", saved.workers.len(), s.workers.len())?;
    let mut cqs = Vec::new();
    let mut sqs = Vec::new();
    for (i, w) in saved.workers.iter().enumerate() {
        let field = format!("workers[{i}]");
        let cq = &w.cq;
        if cq.qid == 0 || cqs.contains(&cq.qid) {
            return Err(bad(format!("{field}.cq.qid"), "zero or used twice"));
        }
        check_queue(s, &format!("{field}.cq"), cq.into(), CQE_LEN)?;
        if cq.ien && cq.iv >= s.config.msix_vectors {
            return Err(bad(format!("{field}.cq.iv"), "beyond the MSI-X vectors"));
        }
        cqs.push(cq.qid);
        for (j, q) in w.sqs.iter().enumerate() {
            let sf = format!("{field}.sqs[{j}]");
            if q.qid == 0 || sqs.contains(&q.qid) || q.cqid != cq.qid {
                return Err(bad(
                    format!("{sf}.qid"),
                    "zero, used twice, or not of this CQ",
                ));
            }
            check_queue(s, &sf, q.into(), SQE_LEN)?;
            sqs.push(q.qid);
        }
        check_count(
            &format!("{field}.commands"),
            w.commands.len(),
            usize::from(s.config.commands_per_queue),
        )?;
        check_count(
            &format!("{field}.aborts"),
            w.aborts.len(),
            crate::admin::MAX_ABORTS,
        )?;
        for (j, c) in w.commands.iter().enumerate() {
            if c.sqe.len() != SQE_LEN {
                return Err(bad(
                    format!("{field}.commands[{j}].sqe"),
                    "expected 64 bytes",
                ));
            }
            if !w.sqs.iter().any(|q| q.qid == c.sqid) {
                return Err(bad(
                    format!("{field}.commands[{j}].sqid"),
                    "not a submission queue of this completion queue",
                ));
            }
        }
    }
    for (i, e) in saved.events.errors.iter().enumerate() {
        if e.len() != 64 {
            return Err(bad(format!("events.errors[{i}]"), "expected 64 bytes"));
        }
    }
    check_count(
        "events.errors",
        saved.events.errors.len(),
        crate::admin::ERROR_LOG_ENTRIES,
    )?;
    check_count("events.pending", saved.events.pending.len(), 64)?;
    check_count(
        "namespaces.changed",
        saved.namespaces.changed.len(),
        parastor_hw::nvme::log::CHANGED_NAMESPACE_LIST_ENTRIES,
    )?;
    if !saved.namespaces.changed.windows(2).all(|w| w[0] < w[1]) {
        return Err(bad("namespaces.changed", "expected ascending NSIDs"));
    }
    Ok(())
}

/// Restores `saved` into a fresh controller `s` with `namespaces`.
pub(crate) fn restore(
    s: &Shared,
    saved: &ControllerV1,
    namespaces: Vec<(u32, Disk)>,
) -> Result<(), InvalidState> {
    validate(s, saved)?;
    {
        let mut ns = s.namespaces.lock();
        for (i, (nsid, disk)) in namespaces.into_iter().enumerate() {
            ns.insert_quiet(nsid, disk)
                .map_err(|e| bad(format!("namespaces[{i}]"), e))?;
        }
        ns.restore_changed(saved.namespaces.changed.clone(), saved.namespaces.overflow);
        let mut resized = false;
        for &(nsid, known) in &saved.namespaces.known {
            let now = ns.get(nsid).map(|n| n.disk.sector_count());
            if now.is_some() {
                ns.set_known(nsid, known);
                resized |= now != Some(known);
            }
        }
        drop(ns);
        if resized {
            // The watchers notice the difference on their first pass.
            s.wakeups.wake(s.watcher_index());
        }
    }
    s.pci.restore(&saved.pci);
    {
        let mut regs = s.regs.lock();
        crate::regs::restore(&mut regs, &saved.regs);
    }
    s.intms.store(saved.intms, Ordering::Release);
    s.intm_pending.store(saved.intm_pending, Ordering::Release);
    {
        let mut ev = s.events.lock();
        let e = &saved.events;
        ev.errors = e
            .errors
            .iter()
            .filter_map(|b| ErrorLogEntry::read_from_bytes(b).ok())
            .collect();
        ev.error_count = e.error_count;
        ev.pending = e.pending.iter().copied().collect();
        ev.error_masked = e.error_masked;
        ev.notice_masked = e.notice_masked;
        ev.config = e.config;
    }
    let mut admin = s.admin.lock();
    {
        let a = &saved.admin;
        let f = &a.features;
        let feat = &mut admin.features;
        feat.arbitration = f.arbitration;
        feat.power_management = f.power_management;
        (feat.temperature_over, feat.temperature_under) = f.temperature;
        feat.error_recovery = f.error_recovery;
        feat.volatile_write_cache = f.volatile_write_cache;
        (feat.queues_sq, feat.queues_cq) = f.queues;
        feat.interrupt_coalescing = f.interrupt_coalescing;
        feat.vector_cd = f.vector_cd.clone();
        feat.write_atomicity = f.write_atomicity;
        feat.keep_alive = f.keep_alive;
        feat.host_id = f.host_id;
        feat.host_id_extended = f.host_id_extended;
        feat.reservation_mask = f.reservation_mask;
        feat.software_progress = f.software_progress;
        admin.page_size = a.page_size;
        admin.aers = a.aers.clone();
        admin.pending_deletes = a.pending_deletes.clone();
        admin.aborts = a.aborts.clone();
        admin.held = a
            .held
            .iter()
            .map(|&(cid, st, dw0)| {
                (
                    cid,
                    Completion {
                        status: StatusWord::from_bits(st),
                        dw0,
                    },
                )
            })
            .collect();
        admin.dbbc = a.dbbc;
        if let Some(q) = &a.sq {
            admin.sq = Some(sq_from(q));
            s.doorbells
                .open(Doorbell::SqTail(0), q.size, Shared::ADMIN, q.tail);
        }
        if let Some(q) = &a.cq {
            admin.cq = Some(cq_from(q));
            s.doorbells
                .open(Doorbell::CqHead(0), q.size, Shared::ADMIN, q.head);
        }
    }
    let initiator = admin.features.initiator(&s.config);
    let max_transfer = s.config.max_transfer_bytes;
    for w in &saved.workers {
        let Some(worker) = s.workers.get(usize::from(w.cq.qid) - 1) else {
            continue;
        };
        let mut worker = worker.lock();
        worker.clear();
        worker.open(cq_from(&w.cq));
        s.doorbells.open(
            Doorbell::CqHead(w.cq.qid),
            w.cq.size,
            usize::from(w.cq.qid),
            w.cq.head,
        );
        for q in &w.sqs {
            worker.attach(sq_from(q));
            if let Some(o) = admin.sq_owner.get_mut(usize::from(q.qid)) {
                *o = q.cqid;
            }
            s.doorbells
                .open(Doorbell::SqTail(q.qid), q.size, usize::from(q.cqid), q.tail);
        }
        worker.params.page_size = saved.admin.page_size;
        worker.params.host_id = initiator;
        worker.params.host_id_extended = saved.admin.features.host_id_extended;
        worker.params.write_cache = saved.admin.features.volatile_write_cache;
        worker.params.max_transfer = max_transfer;
        worker.aborts = w.aborts.clone();
        let [br, bw, rc, wc, me] = w.stats;
        worker.stats = crate::worker::IoStats {
            bytes_read: br,
            bytes_written: bw,
            read_commands: rc,
            write_commands: wc,
            media_errors: me,
        };
        let commands: Vec<InFlight> = w
            .commands
            .iter()
            .filter_map(|c| {
                Some(InFlight {
                    sqid: c.sqid,
                    sqe: Sqe::read_from_bytes(&c.sqe).ok()?,
                    done: c.done.map(|(st, dw0)| Completion {
                        status: StatusWord::from_bits(st),
                        dw0,
                    }),
                })
            })
            .collect();
        worker.resume(s, &commands);
    }
    drop(admin);
    s.set_lifecycle(Lifecycle::from_u8(saved.lifecycle));
    // A reset or shutdown saved mid-way finishes once nothing runs.
    crate::regs::drain_progress(s);
    Ok(())
}
