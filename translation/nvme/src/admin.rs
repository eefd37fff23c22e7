//! The admin queue and the admin command set: Identify, queue creation
//! and deletion, features, log pages, asynchronous events, Abort, Keep
//! Alive and Doorbell Buffer Config.
//!
//! Admin commands run in submission order on the admin worker. Most
//! complete at once; an Asynchronous Event Request waits for an event, and
//! a Delete I/O Submission Queue waits until the queue's commands have
//! completed. Their completions are posted when ready, ahead of newer
//! commands.

use crate::data::{self, Direction};
use crate::error::{invalid, invalid_specific};
use crate::queue::{Cq, Shadow, Sq, check_ring};
use crate::worker::Completion;
use crate::{Lifecycle, Shared};
use alloc::collections::VecDeque;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use parastor_core::{Gpa, GpaRange, GuestMemory, GuestMemoryExt, InitiatorId, UnmapBehavior};
use parastor_hw::nvme::command::{
    ABORT_DW0_NOT_ABORTED, AbortCdw10, AdminOpcode, AsyncEventDw0, AsyncEventType, Cns,
    CommandSetId, CreateCqCdw11, CreateQueueCdw10, CreateSqCdw11, DeleteQueueCdw10, FeatureSelect,
    GetFeaturesCdw10, GetLogPageCdw10, GetLogPageCdw11, IdentifyCdw10, IdentifyCdw11, NvmOpcode,
    SetFeaturesCdw10, log_page_len,
};
use parastor_hw::nvme::features::{
    AsyncEventConfig, ErrorEventInfo, FeatureId, HostIdentifierCdw11, InterruptVectorConfig,
    NoticeEventInfo, NumberOfQueues,
};
use parastor_hw::nvme::identify::{
    IDENTIFY_DATA_LEN, IdentifyController, IdentifyNamespace, IdentifyNamespaceIndependent,
    LbaFormat, NsIdDescriptorHeader, NsIdType, Oacs, Oncs, Rescap, Sgls,
};
use parastor_hw::nvme::log::{
    CHANGED_NAMESPACE_LIST_OVERFLOW, CommandEffects, CommandsSupportedAndEffects, ErrorLogEntry,
    FirmwareSlotLog, LogPageId, SmartHealthLog, smart_data_units,
};
use parastor_hw::nvme::queue::{CQE_LEN, Cqe, CqeStatus, SQE_LEN, Sqe};
use parastor_hw::nvme::regs::Doorbell;
use parastor_hw::nvme::status::{CommandSpecificStatus, GenericStatus, StatusWord};
use zerocopy::little_endian::{U16, U32, U64, U128};
use zerocopy::{FromZeros, IntoBytes};

/// Error log entries kept (Identify Controller ELPE + 1).
pub(crate) const ERROR_LOG_ENTRIES: usize = 64;
/// Asynchronous Event Requests outstanding at most (AERL + 1).
pub(crate) const MAX_AERS: usize = 4;
/// Aborts outstanding at most (ACL + 1).
pub(crate) const MAX_ABORTS: usize = 4;
/// Events queued for the host at most; later ones of a kind coalesce.
const MAX_PENDING_EVENTS: usize = 16;

/// Errors logged, asynchronous events waiting for an AER, and which event
/// kinds wait for the host to read their log page.
#[derive(Default)]
pub(crate) struct Events {
    /// Newest first.
    pub(crate) errors: VecDeque<ErrorLogEntry>,
    pub(crate) error_count: u64,
    /// Events not yet delivered, oldest first.
    pub(crate) pending: VecDeque<u32>,
    /// An error event was delivered; the error log was not read since.
    pub(crate) error_masked: bool,
    /// A namespace notice was delivered; the changed list was not read since.
    pub(crate) notice_masked: bool,
    /// Asynchronous Event Configuration (Set Features 0Bh).
    pub(crate) config: u32,
}

impl Events {
    /// Logs a failed command (the entry's error count is set here).
    pub(crate) fn log_error(&mut self, mut entry: ErrorLogEntry) {
        // Restored state is untrusted: wrap, never overflow.
        self.error_count = self.error_count.wrapping_add(1);
        entry.error_count = U64::new(self.error_count);
        self.errors.push_front(entry);
        self.errors.truncate(ERROR_LOG_ENTRIES);
    }

    fn queue(&mut self, event: AsyncEventDw0) {
        let bits = event.into_bits();
        if !self.pending.contains(&bits) && self.pending.len() < MAX_PENDING_EVENTS {
            self.pending.push_back(bits);
        }
    }

    /// An invalid doorbell write on queue `qid`: logged, and an error
    /// event unless one waits for the host to read the error log.
    pub(crate) fn error_event(&mut self, info: ErrorEventInfo, qid: u16) {
        let mut entry = ErrorLogEntry::new_zeroed();
        entry.sqid = U16::new(qid);
        entry.cid = U16::new(0xFFFF);
        entry.parameter_error_location = U16::new(0xFFFF);
        self.log_error(entry);
        if !self.error_masked {
            self.queue(
                AsyncEventDw0::new()
                    .with_aet(AsyncEventType::ERROR)
                    .with_aei(info.get())
                    .with_lid(LogPageId::ERROR_INFORMATION.get()),
            );
        }
    }

    /// A namespace was added, removed or resized.
    pub(crate) fn namespace_changed(&mut self) {
        if AsyncEventConfig::from_bits(self.config).nan() && !self.notice_masked {
            self.queue(
                AsyncEventDw0::new()
                    .with_aet(AsyncEventType::NOTICE)
                    .with_aei(NoticeEventInfo::NAMESPACE_ATTRIBUTE_CHANGED.get())
                    .with_lid(LogPageId::CHANGED_NAMESPACES.get()),
            );
        }
    }

    /// Controller reset: events and masks go, the error log stays.
    pub(crate) fn reset(&mut self) {
        self.pending.clear();
        self.error_masked = false;
        self.notice_masked = false;
        self.config = 0;
    }
}

/// Current feature values (the ones that are stored, not computed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Features {
    pub(crate) arbitration: u32,
    pub(crate) power_management: u32,
    pub(crate) temperature_over: u16,
    pub(crate) temperature_under: u16,
    pub(crate) error_recovery: u32,
    pub(crate) volatile_write_cache: bool,
    /// Queues allocated (Number of Queues), 1's based.
    pub(crate) queues_sq: u16,
    pub(crate) queues_cq: u16,
    pub(crate) interrupt_coalescing: u32,
    /// Coalescing disable per vector (Interrupt Vector Configuration).
    pub(crate) vector_cd: Vec<bool>,
    pub(crate) write_atomicity: u32,
    pub(crate) keep_alive: u32,
    pub(crate) host_id: [u8; 16],
    pub(crate) host_id_extended: bool,
    pub(crate) reservation_mask: u32,
    pub(crate) software_progress: u32,
}

impl Features {
    fn defaults(config: &crate::ControllerConfig) -> Self {
        Self {
            arbitration: 0,
            power_management: 0,
            temperature_over: 0xFFFF,
            temperature_under: 0,
            error_recovery: 0,
            volatile_write_cache: true,
            queues_sq: config.max_io_queue_pairs,
            queues_cq: config.max_io_queue_pairs,
            interrupt_coalescing: 0,
            vector_cd: vec![false; usize::from(config.msix_vectors)],
            write_atomicity: 0,
            keep_alive: 0,
            host_id: [0; 16],
            host_id_extended: false,
            reservation_mask: 0,
            software_progress: 0,
        }
    }

    /// The host identifier as a reservation initiator; until the host
    /// sets one, an identifier of this controller (never parastor's own
    /// [`InitiatorId::LOCAL`]).
    pub(crate) fn initiator(&self, config: &crate::ControllerConfig) -> InitiatorId {
        if self.host_id == [0; 16] {
            return default_host_id(config);
        }
        crate::io::initiator_from_host_id(&self.host_id, self.host_id_extended)
    }
}

/// The reservation initiator of a host that set no Host Identifier: the
/// controller instance GUID.
pub(crate) fn default_host_id(config: &crate::ControllerConfig) -> InitiatorId {
    let mut id = [0u8; 16];
    id.copy_from_slice(config.instance_id.as_bytes());
    InitiatorId::new(u128::from_be_bytes(id))
}

/// The admin worker's state.
pub(crate) struct AdminState {
    pub(crate) sq: Option<Sq>,
    pub(crate) cq: Option<Cq>,
    pub(crate) page_size: u64,
    max_transfer: u64,
    pub(crate) features: Features,
    defaults: Features,
    /// CIDs of outstanding Asynchronous Event Requests.
    pub(crate) aers: Vec<u16>,
    /// (SQID, CID) of Delete I/O SQ commands waiting for their queue.
    pub(crate) pending_deletes: Vec<(u16, u16)>,
    /// Admin CIDs to complete as aborted when fetched.
    pub(crate) aborts: Vec<u16>,
    /// Completions ready but not posted (the admin CQ was full).
    pub(crate) held: VecDeque<(u16, Completion)>,
    /// Doorbell Buffer Config: (shadow doorbells, EventIdx) base addresses.
    pub(crate) dbbc: Option<(u64, u64)>,
    /// The CQ each SQ posts to, by SQID (0: no such SQ).
    pub(crate) sq_owner: Vec<u16>,
    interrupt: bool,
    ranges: Vec<GpaRange>,
    buf: Vec<u8>,
}

impl AdminState {
    pub(crate) fn new(config: &crate::ControllerConfig) -> Self {
        let defaults = Features::defaults(config);
        Self {
            sq: None,
            cq: None,
            page_size: 4096,
            max_transfer: config.max_transfer_bytes,
            features: defaults.clone(),
            defaults,
            aers: Vec::new(),
            pending_deletes: Vec::new(),
            aborts: Vec::new(),
            held: VecDeque::new(),
            dbbc: None,
            sq_owner: vec![0; usize::from(config.max_io_queue_pairs) + 1],
            interrupt: false,
            ranges: Vec::new(),
            buf: Vec::new(),
        }
    }

    pub(crate) fn enable(&mut self, sq: Sq, cq: Cq, page_size: u64) {
        self.sq = Some(sq);
        self.cq = Some(cq);
        self.page_size = page_size;
    }

    /// Controller reset: queues, features and pending commands go.
    pub(crate) fn reset(&mut self) {
        self.sq = None;
        self.cq = None;
        self.features = self.defaults.clone();
        self.aers.clear();
        self.pending_deletes.clear();
        self.aborts.clear();
        self.held.clear();
        self.dbbc = None;
        self.sq_owner.iter_mut().for_each(|o| *o = 0);
        self.interrupt = false;
    }
}

/// Runs the admin worker: completes what became ready, then runs the
/// commands the host queued, then signals vector 0.
pub(crate) fn run(s: &Shared) {
    if !s.dma_allowed() {
        return;
    }
    if !matches!(s.lifecycle(), Lifecycle::Ready | Lifecycle::ShuttingDown) {
        return;
    }
    let mut guard = s.admin.lock();
    let a = &mut *guard;
    if a.sq.is_none() {
        return;
    }
    finish_deletes(s, a);
    deliver_events(s, a);
    let mut passes = 0;
    while passes < ADMIN_BUDGET {
        passes += 1;
        if !post_held(s, a) {
            break;
        }
        let mem: &dyn GuestMemory = &*s.mem;
        let Some(sq) = a.sq.as_mut() else { break };
        let tail = sq.tail(mem, &s.doorbells);
        if !sq.has_entries(tail) {
            break;
        }
        let sqe = match sq.fetch(mem) {
            Ok(sqe) => sqe,
            Err(_) => {
                crate::regs::fatal(s);
                return;
            }
        };
        let cid = sqe.cdw0.cid();
        let done = if let Some(p) = a.aborts.iter().position(|&c| c == cid) {
            a.aborts.swap_remove(p);
            Some(Completion::status(StatusWord::generic(
                GenericStatus::ABORT_REQUESTED,
            )))
        } else {
            execute(s, a, &sqe)
        };
        if let Some(done) = done {
            if !done.status.is_success() {
                log_admin_error(s, &sqe, done.status);
            }
            a.held.push_back((cid, done));
        }
        deliver_events(s, a);
    }
    if passes == ADMIN_BUDGET {
        // Out of budget with commands maybe left: run again, after others.
        s.wakeups.wake(Shared::ADMIN);
    }
    post_held(s, a);
    if core::mem::take(&mut a.interrupt) {
        crate::regs::interrupt(s, 0);
    }
}

fn log_admin_error(s: &Shared, sqe: &Sqe, status: StatusWord) {
    let mut entry = ErrorLogEntry::new_zeroed();
    entry.sqid = U16::new(0);
    entry.cid = U16::new(sqe.cdw0.cid());
    entry.status = U16::new(status.into_bits());
    entry.parameter_error_location = U16::new(0xFFFF);
    entry.nsid = U32::new(sqe.nsid.get());
    s.events.lock().log_error(entry);
}

/// Posts held completions while the admin CQ has room; whether it has
/// room left for one more.
fn post_held(s: &Shared, a: &mut AdminState) -> bool {
    let mem: &dyn GuestMemory = &*s.mem;
    let Some(cq) = a.cq.as_mut() else {
        return false;
    };
    cq.refresh_head(mem, &s.doorbells);
    let sqhd = a.sq.as_ref().map_or(0, |q| q.head);
    while let Some(&(cid, done)) = a.held.front() {
        if cq.is_full() {
            s.doorbells.arm(Doorbell::CqHead(0));
            cq.refresh_head(mem, &s.doorbells);
            if cq.is_full() {
                return false;
            }
        }
        let cqe = Cqe {
            dw0: U32::new(done.dw0),
            dw1: U32::new(0),
            sqhd: U16::new(sqhd as u16),
            sqid: U16::new(0),
            cid: U16::new(cid),
            status: CqeStatus::new().with_status(done.status),
        };
        if cq.post(mem, cqe).is_err() {
            crate::regs::fatal(s);
            return false;
        }
        a.held.pop_front();
        a.interrupt = true;
    }
    !cq.is_full()
}

/// Completes outstanding AERs with pending events.
fn deliver_events(s: &Shared, a: &mut AdminState) {
    if a.aers.is_empty() {
        return;
    }
    let mut ev = s.events.lock();
    while !a.aers.is_empty() {
        let Some(bits) = ev.pending.pop_front() else {
            break;
        };
        let event = AsyncEventDw0::from_bits(bits);
        match event.aet() {
            AsyncEventType::ERROR => ev.error_masked = true,
            AsyncEventType::NOTICE => ev.notice_masked = true,
            _ => {}
        }
        let cid = a.aers.remove(0);
        a.held.push_back((
            cid,
            Completion {
                status: StatusWord::SUCCESS,
                dw0: bits,
            },
        ));
    }
}

/// Completes Delete I/O SQ commands whose queue has drained.
fn finish_deletes(s: &Shared, a: &mut AdminState) {
    let mut i = 0;
    while i < a.pending_deletes.len() {
        let (qid, cid) = a.pending_deletes[i];
        let owner = a.sq_owner.get(usize::from(qid)).copied().unwrap_or(0);
        let gone = owner == 0
            || s.workers
                .get(usize::from(owner) - 1)
                .is_none_or(|w| !w.lock().sqs.iter().any(|q| q.qid == qid));
        if gone {
            if let Some(o) = a.sq_owner.get_mut(usize::from(qid)) {
                *o = 0;
            }
            a.pending_deletes.swap_remove(i);
            a.held
                .push_back((cid, Completion::status(StatusWord::SUCCESS)));
        } else {
            i += 1;
        }
    }
}

fn invalid_field() -> StatusWord {
    invalid(GenericStatus::INVALID_FIELD_IN_COMMAND)
}

fn invalid_namespace() -> StatusWord {
    invalid(GenericStatus::INVALID_NAMESPACE_OR_FORMAT)
}

type Answer = Result<u32, StatusWord>;

/// Runs one admin command: its completion, or `None` if it completes
/// later (AER, Delete I/O SQ with commands outstanding).
fn execute(s: &Shared, a: &mut AdminState, sqe: &Sqe) -> Option<Completion> {
    let op = AdminOpcode::new(sqe.cdw0.opc());
    let answer: Answer = match op {
        AdminOpcode::IDENTIFY => identify(s, a, sqe),
        AdminOpcode::CREATE_IO_CQ => create_cq(s, a, sqe),
        AdminOpcode::CREATE_IO_SQ => create_sq(s, a, sqe),
        AdminOpcode::DELETE_IO_SQ => return delete_sq(s, a, sqe),
        AdminOpcode::DELETE_IO_CQ => delete_cq(s, a, sqe),
        AdminOpcode::GET_LOG_PAGE => get_log_page(s, a, sqe),
        AdminOpcode::SET_FEATURES => set_features(s, a, sqe),
        AdminOpcode::GET_FEATURES => get_features(s, a, sqe),
        AdminOpcode::ASYNC_EVENT_REQUEST => {
            if a.aers.len() >= MAX_AERS {
                Err(invalid_specific(
                    CommandSpecificStatus::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED,
                ))
            } else {
                a.aers.push(sqe.cdw0.cid());
                return None;
            }
        }
        AdminOpcode::ABORT => abort(s, a, sqe),
        AdminOpcode::KEEP_ALIVE => Ok(0),
        AdminOpcode::DOORBELL_BUFFER_CONFIG => doorbell_buffer_config(s, a, sqe),
        _ => Err(StatusWord::generic(GenericStatus::INVALID_COMMAND_OPCODE).with_dnr(true)),
    };
    Some(match answer {
        Ok(dw0) => Completion {
            status: StatusWord::SUCCESS,
            dw0,
        },
        Err(status) => Completion::status(status),
    })
}

/// Writes `data` (zero-padded to `len`) to the command's PRPs.
fn write_data(s: &Shared, a: &mut AdminState, sqe: &Sqe, data: &[u8], len: u64) -> Answer {
    if len > a.max_transfer {
        return Err(invalid_field());
    }
    let mem: &dyn GuestMemory = &*s.mem;
    data::admin_ranges(mem, a.page_size, sqe, len, Direction::ToHost, &mut a.ranges)?;
    let mut src = data;
    let transfer = || StatusWord::generic(GenericStatus::DATA_TRANSFER_ERROR);
    for r in a.ranges.iter() {
        let n = (r.len as usize).min(src.len());
        let (now, rest) = src.split_at(n);
        mem.write_at(r.gpa, now).map_err(|_| transfer())?;
        if (n as u64) < r.len {
            mem.fill_at(r.gpa + n as u64, (r.len - n as u64) as usize, 0)
                .map_err(|_| transfer())?;
        }
        src = rest;
    }
    Ok(0)
}

/// Reads `out.len()` bytes from the command's PRPs.
fn read_data(s: &Shared, a: &mut AdminState, sqe: &Sqe, out: &mut [u8]) -> Result<(), StatusWord> {
    let mem: &dyn GuestMemory = &*s.mem;
    data::admin_ranges(
        mem,
        a.page_size,
        sqe,
        out.len() as u64,
        Direction::ToController,
        &mut a.ranges,
    )?;
    let mut at = 0usize;
    for r in a.ranges.iter() {
        let n = r.len as usize;
        let Some(dst) = out.get_mut(at..at + n) else {
            return Err(StatusWord::generic(GenericStatus::DATA_TRANSFER_ERROR));
        };
        mem.read_at(r.gpa, dst)
            .map_err(|_| StatusWord::generic(GenericStatus::DATA_TRANSFER_ERROR))?;
        at += n;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Identify
// ---------------------------------------------------------------------------

/// Copies `s` into a space-padded ASCII field (non-ASCII bytes become `?`).
fn ascii_field(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    for (d, c) in dst.iter_mut().zip(s.bytes()) {
        *d = if c.is_ascii_graphic() || c == b' ' {
            c
        } else {
            b'?'
        };
    }
}

/// The namespace's globally unique ID: the disk's id, or one derived from
/// the controller instance and the NSID for a disk without one.
fn namespace_guid(s: &Shared, nsid: u32, disk: &parastor_core::Disk) -> [u8; 16] {
    if let Some(id) = disk.disk_id().filter(|id| id.iter().any(|&b| b != 0)) {
        return id;
    }
    let mut id = zerocopy::IntoBytes::as_bytes(&s.config.instance_id)
        .try_into()
        .unwrap_or([0u8; 16]);
    for (b, n) in id.iter_mut().skip(12).zip(nsid.to_be_bytes()) {
        *b ^= n;
    }
    id
}

/// A UUID (RFC 9562 version 8, custom) carrying the namespace GUID.
fn namespace_uuid(guid: [u8; 16]) -> [u8; 16] {
    let mut u = guid;
    u[6] = (u[6] & 0x0F) | 0x80;
    u[8] = (u[8] & 0x3F) | 0x80;
    u
}

fn identify(s: &Shared, a: &mut AdminState, sqe: &Sqe) -> Answer {
    let c10 = IdentifyCdw10::from_bits(sqe.cdw10.get());
    let c11 = IdentifyCdw11::from_bits(sqe.cdw11.get());
    let nsid = sqe.nsid.get();
    let mut page = vec![0u8; IDENTIFY_DATA_LEN];
    let ns = s.namespaces.lock();
    let nn = ns.max();
    // An NSID that may name a namespace: 1..=NN.
    let valid_nsid = |n: u32| n != 0 && n <= nn;
    match c10.cns() {
        Cns::NAMESPACE => {
            if !valid_nsid(nsid) {
                return Err(invalid_namespace());
            }
            if let Some(n) = ns.get(nsid) {
                page.copy_from_slice(identify_namespace(&n.disk, s, nsid).as_bytes());
            }
        }
        Cns::CONTROLLER => {
            page.copy_from_slice(identify_controller(s, nn).as_bytes());
        }
        Cns::ACTIVE_NAMESPACES | Cns::CSI_ACTIVE_NAMESPACES => {
            if nsid >= 0xFFFF_FFFE {
                return Err(invalid_namespace());
            }
            if c10.cns() == Cns::CSI_ACTIVE_NAMESPACES && c11.csi() != CommandSetId::NVM {
                // No namespace uses another command set.
            } else {
                for (chunk, id) in page.chunks_exact_mut(4).zip(ns.active_after(nsid)) {
                    chunk.copy_from_slice(&id.to_le_bytes());
                }
            }
        }
        Cns::NS_DESCRIPTORS => {
            if !valid_nsid(nsid) {
                return Err(invalid_namespace());
            }
            let Some(n) = ns.get(nsid) else {
                // Valid but inactive (Base 2.0 3.2.1.5).
                return Err(invalid_field());
            };
            let guid = namespace_guid(s, nsid, &n.disk);
            let mut at = 0;
            let mut put = |t: NsIdType, id: &[u8]| {
                let h = NsIdDescriptorHeader {
                    nidt: t,
                    nidl: id.len() as u8,
                    reserved: [0; 2],
                };
                page[at..at + 4].copy_from_slice(h.as_bytes());
                page[at + 4..at + 4 + id.len()].copy_from_slice(id);
                at += 4 + id.len();
            };
            put(NsIdType::NGUID, &guid);
            put(NsIdType::UUID, &namespace_uuid(guid));
            put(NsIdType::CSI, &[CommandSetId::NVM.get()]);
        }
        Cns::CSI_NAMESPACE => {
            if !valid_nsid(nsid) {
                return Err(invalid_namespace());
            }
            if c11.csi() != CommandSetId::NVM {
                return Err(invalid_field());
            }
            // The NVM command set's namespace structure: nothing beyond
            // Identify Namespace (no protection information, no extended
            // LBA formats, no storage tags), all zeros.
        }
        Cns::CSI_CONTROLLER => {
            if c11.csi() != CommandSetId::NVM {
                return Err(invalid_field());
            }
            // NVM command set controller limits (VSL, WZSL, WUSL, DMRL,
            // DMRSL, DMSL): 0 = no limit beyond MDTS, all zeros.
        }
        Cns::INDEPENDENT_NAMESPACE => {
            if !valid_nsid(nsid) {
                return Err(invalid_namespace());
            }
            if let Some(n) = ns.get(nsid) {
                page.copy_from_slice(independent_namespace(&n.disk).as_bytes());
            }
        }
        _ => return Err(invalid_field()),
    }
    drop(ns);
    write_data(s, a, sqe, &page, IDENTIFY_DATA_LEN as u64)
}

/// The I/O command set independent Identify Namespace (CNS 08h).
fn independent_namespace(disk: &parastor_core::Disk) -> IdentifyNamespaceIndependent {
    let full = identify_namespace_fields(disk);
    let mut id = IdentifyNamespaceIndependent::new_zeroed();
    id.nsfeat = full.nsfeat;
    id.nmic = full.nmic;
    id.rescap = full.rescap;
    id.fpi = full.fpi;
    id.nsattr = full.nsattr;
    // NSTAT bit 0: the namespace is ready.
    id.nstat = 1;
    id
}

fn identify_namespace_fields(disk: &parastor_core::Disk) -> IdentifyNamespace {
    let mut id = IdentifyNamespace::new_zeroed();
    let count = disk.sector_count();
    id.nsze = U64::new(count);
    id.ncap = U64::new(count);
    id.nuse = U64::new(count);
    let unmap = disk.unmap_behavior();
    // NSFEAT bit 0: thin provisioning (deallocate frees blocks); bit 4:
    // the NPWG/NPWA/NPDG/NPDA/NOWS fields are valid.
    let phys_blocks = (disk.physical_sector_size() / disk.sector_size()).max(1);
    id.nsfeat = u8::from(unmap != UnmapBehavior::Ignored) | 1 << 4;
    id.nlbaf = 0;
    id.lbaf[0] = LbaFormat::new().with_lbads(disk.sector_shift() as u8);
    // DLFEAT: bits 2:0 = 001b deallocated blocks read as zeros; bit 3:
    // Write Zeroes may deallocate.
    if unmap == UnmapBehavior::Zeroes {
        id.dlfeat = 0b1001;
    }
    let pg = (phys_blocks - 1).min(0xFFFF) as u16;
    id.npwg = U16::new(pg);
    id.npwa = U16::new(pg);
    id.npdg = U16::new(pg);
    id.npda = U16::new(pg);
    id.nows = U16::new(pg);
    if let Some(pr) = disk.persistent_reservations() {
        let c = pr.capabilities();
        id.rescap = Rescap::new()
            .with_ptpl(c.persist_through_power_loss)
            .with_write_exclusive(c.write_exclusive)
            .with_exclusive_access(c.exclusive_access)
            .with_write_exclusive_registrants_only(c.write_exclusive_registrants_only)
            .with_exclusive_access_registrants_only(c.exclusive_access_registrants_only)
            .with_write_exclusive_all_registrants(c.write_exclusive_all_registrants)
            .with_exclusive_access_all_registrants(c.exclusive_access_all_registrants)
            .with_iekey(true);
    }
    if disk.is_read_only() {
        // NSATTR bit 0: write protected.
        id.nsattr = 1;
    }
    id
}

fn identify_namespace(disk: &parastor_core::Disk, s: &Shared, nsid: u32) -> IdentifyNamespace {
    let mut id = identify_namespace_fields(disk);
    id.nguid = namespace_guid(s, nsid, disk);
    id
}

fn identify_controller(s: &Shared, nn: u32) -> IdentifyController {
    let c = &s.config;
    let mut id = IdentifyController::new_zeroed();
    id.vid = U16::new(c.pci.vendor_id);
    id.ssvid = U16::new(c.pci.subsystem_vendor_id);
    ascii_field(&mut id.sn, &c.serial);
    ascii_field(&mut id.mn, &c.model);
    ascii_field(&mut id.fr, &c.firmware);
    id.ieee = c.ieee_oui;
    // MDTS in units of the minimum page size (4 KiB), a power of two.
    id.mdts = (c.max_transfer_bytes / 4096).trailing_zeros() as u8;
    id.cntlid = U16::new(c.controller_id);
    id.ver = U32::new(parastor_hw::nvme::regs::Version::V2_0.into_bits().get());
    // OAES bit 8: namespace attribute notices.
    id.oaes = U32::new(1 << 8);
    // CTRATT bit 0: 128-bit host identifiers (Set Features 81h, EXHID).
    id.ctratt = U32::new(1);
    // CNTRLTYPE 1: I/O controller.
    id.cntrltype = 1;
    id.oacs = Oacs::new().with_doorbell_buffer_config(true);
    id.acl = (MAX_ABORTS - 1) as u8;
    id.aerl = (MAX_AERS - 1) as u8;
    // FRMW: slot 1 read-only, one slot.
    id.frmw = 0b011;
    // LPA: commands supported and effects (bit 1), extended Get Log Page
    // (NUMDU, offsets; bit 2).
    id.lpa = 0b110;
    id.elpe = (ERROR_LOG_ENTRIES - 1) as u8;
    id.npss = 0;
    id.sqes = 0x66;
    id.cqes = 0x44;
    id.nn = U32::new(nn);
    id.oncs = Oncs::new()
        .with_compare(true)
        .with_dataset_management(true)
        .with_write_zeroes(true)
        .with_reservations(true)
        .with_verify(true);
    // VWC: present (bit 0); Flush with NSID FFFFFFFFh not supported (10b).
    id.vwc = 0b101;
    id.sgls = Sgls::from_bits(U32::new(data::SGL_SUPPORT));
    let nqn = format!("nqn.2014-08.org.nvmexpress:uuid:{}", c.instance_id);
    let n = nqn.len().min(id.subnqn.len());
    id.subnqn[..n].copy_from_slice(&nqn.as_bytes()[..n]);
    id
}

// ---------------------------------------------------------------------------
// Queues
// ---------------------------------------------------------------------------

fn create_cq(s: &Shared, a: &mut AdminState, sqe: &Sqe) -> Answer {
    let c10 = CreateQueueCdw10::from_bits(sqe.cdw10.get());
    let c11 = CreateCqCdw11::from_bits(sqe.cdw11.get());
    let qid = c10.qid();
    if qid == 0 || qid > a.features.queues_cq {
        return Err(invalid_specific(
            CommandSpecificStatus::INVALID_QUEUE_IDENTIFIER,
        ));
    }
    let size = u32::from(c10.qsize()) + 1;
    if size < 2 || size > s.config.max_queue_entries {
        return Err(invalid_specific(CommandSpecificStatus::INVALID_QUEUE_SIZE));
    }
    if !c11.pc() {
        return Err(invalid_field());
    }
    if c11.ien() && c11.iv() >= s.pci.msix.vectors() {
        return Err(invalid_specific(
            CommandSpecificStatus::INVALID_INTERRUPT_VECTOR,
        ));
    }
    let gpa = sqe.prp1();
    if !gpa.is_multiple_of(a.page_size) {
        return Err(StatusWord::generic(GenericStatus::PRP_OFFSET_INVALID).with_dnr(true));
    }
    if check_ring(&*s.mem, gpa, size, CQE_LEN).is_err() {
        return Err(invalid_field());
    }
    let Some(worker) = s.workers.get(usize::from(qid) - 1) else {
        return Err(invalid_specific(
            CommandSpecificStatus::INVALID_QUEUE_IDENTIFIER,
        ));
    };
    let mut w = worker.lock();
    if w.cq.is_some() {
        return Err(invalid_specific(
            CommandSpecificStatus::INVALID_QUEUE_IDENTIFIER,
        ));
    }
    let shadow = a
        .dbbc
        .map(|(db, ei)| Shadow::of(Doorbell::CqHead(qid), db, ei));
    w.open(Cq {
        qid,
        gpa,
        size,
        tail: 0,
        phase: true,
        head: 0,
        ien: c11.ien(),
        iv: c11.iv(),
        shadow,
    });
    w.params.host_id = a.features.initiator(&s.config);
    w.params.host_id_extended = a.features.host_id_extended;
    w.params.write_cache = a.features.volatile_write_cache;
    w.params.max_transfer = a.max_transfer;
    s.doorbells
        .open(Doorbell::CqHead(qid), size, usize::from(qid), 0);
    Ok(0)
}

fn create_sq(s: &Shared, a: &mut AdminState, sqe: &Sqe) -> Answer {
    let c10 = CreateQueueCdw10::from_bits(sqe.cdw10.get());
    let c11 = CreateSqCdw11::from_bits(sqe.cdw11.get());
    let qid = c10.qid();
    if qid == 0
        || qid > a.features.queues_sq
        || a.sq_owner.get(usize::from(qid)).is_none_or(|&o| o != 0)
    {
        return Err(invalid_specific(
            CommandSpecificStatus::INVALID_QUEUE_IDENTIFIER,
        ));
    }
    let cqid = c11.cqid();
    let Some(worker) = (cqid != 0)
        .then(|| s.workers.get(usize::from(cqid) - 1))
        .flatten()
    else {
        return Err(invalid_specific(
            CommandSpecificStatus::COMPLETION_QUEUE_INVALID,
        ));
    };
    let size = u32::from(c10.qsize()) + 1;
    if size < 2 || size > s.config.max_queue_entries {
        return Err(invalid_specific(CommandSpecificStatus::INVALID_QUEUE_SIZE));
    }
    if !c11.pc() {
        return Err(invalid_field());
    }
    let gpa = sqe.prp1();
    if !gpa.is_multiple_of(a.page_size) {
        return Err(StatusWord::generic(GenericStatus::PRP_OFFSET_INVALID).with_dnr(true));
    }
    if check_ring(&*s.mem, gpa, size, SQE_LEN).is_err() {
        return Err(invalid_field());
    }
    let mut w = worker.lock();
    if w.cq.is_none() {
        return Err(invalid_specific(
            CommandSpecificStatus::COMPLETION_QUEUE_INVALID,
        ));
    }
    let shadow = a
        .dbbc
        .map(|(db, ei)| Shadow::of(Doorbell::SqTail(qid), db, ei));
    w.attach(Sq {
        qid,
        gpa,
        size,
        head: 0,
        cqid,
        shadow,
        deleting: false,
        outstanding: 0,
    });
    if let Some(o) = a.sq_owner.get_mut(usize::from(qid)) {
        *o = cqid;
    }
    s.doorbells
        .open(Doorbell::SqTail(qid), size, usize::from(cqid), 0);
    Ok(0)
}

fn delete_sq(s: &Shared, a: &mut AdminState, sqe: &Sqe) -> Option<Completion> {
    let qid = DeleteQueueCdw10::from_bits(sqe.cdw10.get()).qid();
    let owner = a.sq_owner.get(usize::from(qid)).copied().unwrap_or(0);
    let bad = Completion::status(invalid_specific(
        CommandSpecificStatus::INVALID_QUEUE_IDENTIFIER,
    ));
    if qid == 0 || owner == 0 || a.pending_deletes.iter().any(|&(q, _)| q == qid) {
        return Some(bad);
    }
    let worker = s.workers.get(usize::from(owner) - 1)?;
    let mut w = worker.lock();
    let Some(pos) = w.sqs.iter().position(|q| q.qid == qid) else {
        return Some(bad);
    };
    // Aborts waiting for this queue's commands go with it (a queue created
    // again with this ID must not lose a command to them).
    w.aborts.retain(|&(q, _)| q != qid);
    let sq = &mut w.sqs[pos];
    sq.deleting = true;
    if sq.outstanding == 0 {
        w.sqs.remove(pos);
        s.doorbells.close(Doorbell::SqTail(qid));
        if let Some(o) = a.sq_owner.get_mut(usize::from(qid)) {
            *o = 0;
        }
        return Some(Completion::status(StatusWord::SUCCESS));
    }
    // Completes once the queue's commands have (the worker wakes us).
    a.pending_deletes.push((qid, sqe.cdw0.cid()));
    None
}

fn delete_cq(s: &Shared, a: &mut AdminState, sqe: &Sqe) -> Answer {
    let qid = DeleteQueueCdw10::from_bits(sqe.cdw10.get()).qid();
    let bad = invalid_specific(CommandSpecificStatus::INVALID_QUEUE_IDENTIFIER);
    if qid == 0 {
        return Err(bad);
    }
    let Some(worker) = s.workers.get(usize::from(qid) - 1) else {
        return Err(bad);
    };
    let mut w = worker.lock();
    if w.cq.is_none() {
        return Err(bad);
    }
    if !w.sqs.is_empty() || a.sq_owner.contains(&qid) {
        return Err(invalid_specific(
            CommandSpecificStatus::INVALID_QUEUE_DELETION,
        ));
    }
    w.cq = None;
    s.doorbells.close(Doorbell::CqHead(qid));
    Ok(0)
}

fn doorbell_buffer_config(s: &Shared, a: &mut AdminState, sqe: &Sqe) -> Answer {
    let (db, ei) = (sqe.prp1(), sqe.prp2());
    let page = a.page_size;
    let need = (s.doorbells_len() as u64) * 4;
    if db == 0 || ei == 0 || db % page != 0 || ei % page != 0 || need > page {
        return Err(invalid_field());
    }
    let mem: &dyn GuestMemory = &*s.mem;
    for base in [db, ei] {
        if mem
            .check(
                GpaRange::new(Gpa::new(base), page),
                parastor_core::Access::ReadWrite,
            )
            .is_err()
        {
            return Err(invalid_field());
        }
    }
    a.dbbc = Some((db, ei));
    // Existing I/O queues switch over; their shadow slots start at the
    // values the registers hold now (a failed store only costs the host
    // an MMIO write later).
    let shadow_of = |d: Doorbell| {
        let sh = Shadow::of(d, db, ei);
        let v = s.doorbells.value(d);
        for at in [sh.db, sh.event_idx] {
            let _ = mem.store_u32(Gpa::new(at), v, core::sync::atomic::Ordering::Release);
        }
        sh
    };
    for w in s.workers.iter() {
        let mut w = w.lock();
        if let Some(cq) = w.cq.as_mut() {
            cq.shadow = Some(shadow_of(Doorbell::CqHead(cq.qid)));
        }
        for sq in w.sqs.iter_mut() {
            sq.shadow = Some(shadow_of(Doorbell::SqTail(sq.qid)));
        }
    }
    Ok(0)
}

fn abort(s: &Shared, a: &mut AdminState, sqe: &Sqe) -> Answer {
    let c = AbortCdw10::from_bits(sqe.cdw10.get());
    let (sqid, cid) = (c.sqid(), c.cid());
    let mem: &dyn GuestMemory = &*s.mem;
    if sqid == 0 {
        if let Some(p) = a.aers.iter().position(|&x| x == cid) {
            a.aers.remove(p);
            a.held.push_back((
                cid,
                Completion::status(StatusWord::generic(GenericStatus::ABORT_REQUESTED)),
            ));
            return Ok(0);
        }
        let Some(sq) = a.sq.as_ref() else {
            return Ok(ABORT_DW0_NOT_ABORTED);
        };
        if queued_in(mem, sq, sq.tail(mem, &s.doorbells), cid) {
            if a.aborts.len() >= MAX_ABORTS {
                return Err(invalid_specific(
                    CommandSpecificStatus::ABORT_COMMAND_LIMIT_EXCEEDED,
                ));
            }
            a.aborts.push(cid);
            return Ok(0);
        }
        return Ok(ABORT_DW0_NOT_ABORTED);
    }
    let owner = a.sq_owner.get(usize::from(sqid)).copied().unwrap_or(0);
    let Some(worker) = (owner != 0)
        .then(|| s.workers.get(usize::from(owner) - 1))
        .flatten()
    else {
        return Ok(ABORT_DW0_NOT_ABORTED);
    };
    let mut w = worker.lock();
    let Some(sq) = w.sqs.iter().find(|q| q.qid == sqid) else {
        return Ok(ABORT_DW0_NOT_ABORTED);
    };
    if !queued_in(mem, sq, sq.tail(mem, &s.doorbells), cid) {
        // Already running (or never sent): it completes on its own.
        return Ok(ABORT_DW0_NOT_ABORTED);
    }
    if w.aborts.len() >= MAX_ABORTS {
        return Err(invalid_specific(
            CommandSpecificStatus::ABORT_COMMAND_LIMIT_EXCEEDED,
        ));
    }
    w.aborts.push((sqid, cid));
    Ok(0)
}

/// Whether a command with `cid` waits in `sq` between its head and `tail`.
/// Admin commands one admin pass runs before it yields.
const ADMIN_BUDGET: u32 = 1024;

/// Queued entries an Abort looks through for its command.
const ABORT_SCAN: u32 = 1024;

fn queued_in(mem: &dyn GuestMemory, sq: &Sq, tail: u32, cid: u16) -> bool {
    let mut at = sq.head;
    let mut n = 0;
    // A command deeper than this is answered "not aborted", as the spec
    // allows: an Abort costs at most this many guest reads.
    while at != tail && n < sq.size.min(ABORT_SCAN) {
        let gpa = Gpa::new(sq.gpa + u64::from(at) * SQE_LEN as u64 + 2);
        if mem.read_obj::<[u8; 2]>(gpa).ok() == Some(cid.to_le_bytes()) {
            return true;
        }
        at = (at + 1) % sq.size;
        n += 1;
    }
    false
}

// ---------------------------------------------------------------------------
// Features
// ---------------------------------------------------------------------------

fn set_features(s: &Shared, a: &mut AdminState, sqe: &Sqe) -> Answer {
    let c10 = SetFeaturesCdw10::from_bits(sqe.cdw10.get());
    if c10.sv() {
        return Err(invalid_specific(
            CommandSpecificStatus::FEATURE_NOT_SAVEABLE,
        ));
    }
    let v = sqe.cdw11.get();
    let f = &mut a.features;
    match FeatureId::new(c10.fid()) {
        FeatureId::ARBITRATION => f.arbitration = v & 0xFFFF_FF07,
        FeatureId::POWER_MANAGEMENT => {
            // One power state (NPSS = 0).
            if v & 0x1F != 0 {
                return Err(invalid_field());
            }
            f.power_management = v & 0xFF;
        }
        FeatureId::TEMPERATURE_THRESHOLD => {
            // TMPTH 15:0, TMPSEL 19:16 (0: composite), THSEL 21:20.
            let (tmpsel, thsel) = ((v >> 16) & 0xF, (v >> 20) & 0x3);
            if tmpsel != 0 {
                return Err(invalid_field());
            }
            match thsel {
                0 => f.temperature_over = v as u16,
                1 => f.temperature_under = v as u16,
                _ => return Err(invalid_field()),
            }
        }
        FeatureId::ERROR_RECOVERY => f.error_recovery = v & 0x1_FFFF,
        FeatureId::VOLATILE_WRITE_CACHE => {
            f.volatile_write_cache = v & 1 != 0;
            // With the cache off every write is durable at completion.
            let on = f.volatile_write_cache;
            for w in s.workers.iter() {
                w.lock().params.write_cache = on;
            }
        }
        FeatureId::NUMBER_OF_QUEUES => {
            let q = NumberOfQueues::from_bits(v);
            if q.nsq() == 0xFFFF || q.ncq() == 0xFFFF {
                return Err(invalid_field());
            }
            let any_io = a.sq_owner.iter().any(|&o| o != 0)
                || s.workers.iter().any(|w| w.lock().cq.is_some());
            if any_io {
                return Err(
                    StatusWord::generic(GenericStatus::COMMAND_SEQUENCE_ERROR).with_dnr(true)
                );
            }
            let max = s.config.max_io_queue_pairs;
            f.queues_sq = (q.nsq() + 1).min(max);
            f.queues_cq = (q.ncq() + 1).min(max);
            return Ok(queues_dw0(f));
        }
        FeatureId::INTERRUPT_COALESCING => f.interrupt_coalescing = v & 0xFFFF,
        FeatureId::INTERRUPT_VECTOR_CONFIG => {
            let c = InterruptVectorConfig::from_bits(v);
            let Some(cd) = f.vector_cd.get_mut(usize::from(c.iv())) else {
                return Err(invalid_field());
            };
            *cd = c.cd();
        }
        FeatureId::WRITE_ATOMICITY => f.write_atomicity = v & 1,
        FeatureId::ASYNC_EVENT_CONFIG => {
            let mut ev = s.events.lock();
            ev.config = v;
        }
        FeatureId::KEEP_ALIVE_TIMER => f.keep_alive = v,
        FeatureId::SOFTWARE_PROGRESS_MARKER => f.software_progress = v & 0xFF,
        FeatureId::HOST_IDENTIFIER => {
            let extended = HostIdentifierCdw11::from_bits(v).exhid();
            let mut id = [0u8; 16];
            let len = if extended { 16 } else { 8 };
            read_data(s, a, sqe, &mut id[..len])?;
            a.features.host_id = id;
            a.features.host_id_extended = extended;
            let initiator = a.features.initiator(&s.config);
            for w in s.workers.iter() {
                let mut w = w.lock();
                w.params.host_id = initiator;
                w.params.host_id_extended = extended;
            }
        }
        FeatureId::RESERVATION_NOTIFICATION_MASK => f.reservation_mask = v & 0b1110,
        FeatureId::RESERVATION_PERSISTENCE => {
            return reservation_persistence(s, sqe.nsid.get(), Some(v & 1 != 0)).map(|_| 0);
        }
        _ => return Err(invalid_field()),
    }
    Ok(0)
}

fn queues_dw0(f: &Features) -> u32 {
    NumberOfQueues::new()
        .with_nsq(f.queues_sq - 1)
        .with_ncq(f.queues_cq - 1)
        .into_bits()
}

/// Reservation Persistence: the namespace's PTPL state, read from its
/// reservations. The reservation interface changes PTPL only through a
/// Reservation Register (CPTPL), so Set Features succeeds only when it
/// asks for the state already in effect (else Feature Not Changeable).
fn reservation_persistence(s: &Shared, nsid: u32, set: Option<bool>) -> Answer {
    let ns = s.namespaces.lock();
    let Some(n) = ns.get(nsid) else {
        // Inactive (1..=NN): an invalid field (Base 2.0 3.2.1.5); not a
        // valid NSID (or the broadcast value, which names no single
        // namespace's reservations): Invalid Namespace or Format.
        return Err(if nsid != 0 && nsid <= ns.max() {
            invalid_field()
        } else {
            invalid_namespace()
        });
    };
    let Some(pr) = n.disk.persistent_reservations() else {
        return Err(invalid_field());
    };
    // In-process reservations answer at once; one that would wait asks
    // the host to retry rather than block the admin queue.
    let mut report = pr.report();
    let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
    let ptpl = match report.as_mut().poll(&mut cx) {
        core::task::Poll::Ready(Ok(r)) => r.persist_through_power_loss,
        core::task::Poll::Ready(Err(e)) => return Err(crate::error::disk_error_status(&e)),
        core::task::Poll::Pending => {
            return Err(StatusWord::generic(GenericStatus::COMMAND_INTERRUPTED));
        }
    };
    match set {
        Some(want) if want != ptpl => Err(invalid_specific(
            CommandSpecificStatus::FEATURE_NOT_CHANGEABLE,
        )),
        _ => Ok(u32::from(ptpl)),
    }
}

fn get_features(s: &Shared, a: &mut AdminState, sqe: &Sqe) -> Answer {
    let c10 = GetFeaturesCdw10::from_bits(sqe.cdw10.get());
    let fid = FeatureId::new(c10.fid());
    let known = matches!(
        fid,
        FeatureId::ARBITRATION
            | FeatureId::POWER_MANAGEMENT
            | FeatureId::TEMPERATURE_THRESHOLD
            | FeatureId::ERROR_RECOVERY
            | FeatureId::VOLATILE_WRITE_CACHE
            | FeatureId::NUMBER_OF_QUEUES
            | FeatureId::INTERRUPT_COALESCING
            | FeatureId::INTERRUPT_VECTOR_CONFIG
            | FeatureId::WRITE_ATOMICITY
            | FeatureId::ASYNC_EVENT_CONFIG
            | FeatureId::KEEP_ALIVE_TIMER
            | FeatureId::SOFTWARE_PROGRESS_MARKER
            | FeatureId::HOST_IDENTIFIER
            | FeatureId::RESERVATION_NOTIFICATION_MASK
            | FeatureId::RESERVATION_PERSISTENCE
    );
    if !known {
        return Err(invalid_field());
    }
    let f = match c10.sel() {
        FeatureSelect::CURRENT => a.features.clone(),
        // Nothing is saveable: saved values are the defaults.
        FeatureSelect::DEFAULT | FeatureSelect::SAVED => a.defaults.clone(),
        FeatureSelect::SUPPORTED_CAPABILITIES => {
            // Bit 2: changeable; bit 1: namespace specific.
            let ns_specific = matches!(
                fid,
                FeatureId::ERROR_RECOVERY
                    | FeatureId::RESERVATION_NOTIFICATION_MASK
                    | FeatureId::RESERVATION_PERSISTENCE
            );
            return Ok(0b100 | u32::from(ns_specific) << 1);
        }
        _ => return Err(invalid_field()),
    };
    let v = match fid {
        FeatureId::ARBITRATION => f.arbitration,
        FeatureId::POWER_MANAGEMENT => f.power_management,
        FeatureId::TEMPERATURE_THRESHOLD => {
            let v = sqe.cdw11.get();
            let (tmpsel, thsel) = ((v >> 16) & 0xF, (v >> 20) & 0x3);
            match (tmpsel, thsel) {
                (0, 0) => u32::from(f.temperature_over),
                (0, 1) => u32::from(f.temperature_under),
                _ => return Err(invalid_field()),
            }
        }
        FeatureId::ERROR_RECOVERY => f.error_recovery,
        FeatureId::VOLATILE_WRITE_CACHE => u32::from(f.volatile_write_cache),
        FeatureId::NUMBER_OF_QUEUES => queues_dw0(&f),
        FeatureId::INTERRUPT_COALESCING => f.interrupt_coalescing,
        FeatureId::INTERRUPT_VECTOR_CONFIG => {
            let iv = InterruptVectorConfig::from_bits(sqe.cdw11.get()).iv();
            let Some(&cd) = f.vector_cd.get(usize::from(iv)) else {
                return Err(invalid_field());
            };
            InterruptVectorConfig::new()
                .with_iv(iv)
                .with_cd(cd)
                .into_bits()
        }
        FeatureId::WRITE_ATOMICITY => f.write_atomicity,
        FeatureId::ASYNC_EVENT_CONFIG => {
            if c10.sel() == FeatureSelect::CURRENT {
                s.events.lock().config
            } else {
                0
            }
        }
        FeatureId::KEEP_ALIVE_TIMER => f.keep_alive,
        FeatureId::SOFTWARE_PROGRESS_MARKER => f.software_progress,
        FeatureId::HOST_IDENTIFIER => {
            let extended = HostIdentifierCdw11::from_bits(sqe.cdw11.get()).exhid();
            let len = if extended { 16 } else { 8 };
            let id = f.host_id;
            write_data(s, a, sqe, &id[..len], len as u64)?;
            0
        }
        FeatureId::RESERVATION_NOTIFICATION_MASK => f.reservation_mask,
        FeatureId::RESERVATION_PERSISTENCE => {
            return reservation_persistence(s, sqe.nsid.get(), None);
        }
        _ => return Err(invalid_field()),
    };
    Ok(v)
}

// ---------------------------------------------------------------------------
// Log pages
// ---------------------------------------------------------------------------

fn get_log_page(s: &Shared, a: &mut AdminState, sqe: &Sqe) -> Answer {
    let c10 = GetLogPageCdw10::from_bits(sqe.cdw10.get());
    let c11 = GetLogPageCdw11::from_bits(sqe.cdw11.get());
    let len = log_page_len(c10, c11);
    if len > a.max_transfer {
        return Err(invalid_field());
    }
    let offset = u64::from(sqe.cdw13.get()) << 32 | u64::from(sqe.cdw12.get());
    if offset % 4 != 0 {
        return Err(invalid_field());
    }
    let nsid = sqe.nsid.get();
    let mut page = core::mem::take(&mut a.buf);
    page.clear();
    let lid = LogPageId::new(c10.lid());
    let result = build_log(s, lid, nsid, &mut page);
    let result = result.and_then(|()| {
        let start = usize::try_from(offset).ok().filter(|&o| o <= page.len());
        let Some(start) = start else {
            return Err(invalid_field());
        };
        let data = &page[start..];
        write_data(s, a, sqe, data, len)
    });
    a.buf = page;
    result?;
    // Reading a log page clears what it reports, and (RAE = 0) lets the
    // events of its kind be reported again.
    let mut ev = s.events.lock();
    match lid {
        LogPageId::CHANGED_NAMESPACES => {
            drop(ev);
            s.namespaces.lock().take_changed();
            if !c10.rae() {
                s.events.lock().notice_masked = false;
            }
        }
        LogPageId::ERROR_INFORMATION if !c10.rae() => ev.error_masked = false,
        _ => {}
    }
    Ok(0)
}

fn build_log(s: &Shared, lid: LogPageId, nsid: u32, page: &mut Vec<u8>) -> Result<(), StatusWord> {
    match lid {
        LogPageId::ERROR_INFORMATION => {
            let ev = s.events.lock();
            page.resize(ERROR_LOG_ENTRIES * 64, 0);
            for (chunk, e) in page.chunks_exact_mut(64).zip(ev.errors.iter()) {
                chunk.copy_from_slice(e.as_bytes());
            }
        }
        LogPageId::SMART_HEALTH => {
            if nsid != 0 && nsid != 0xFFFF_FFFF {
                // SMART per namespace is not offered (LPA bit 0 clear).
                return Err(invalid_field());
            }
            page.extend_from_slice(smart(s).as_bytes());
        }
        LogPageId::FIRMWARE_SLOT => {
            let mut log = FirmwareSlotLog::new_zeroed();
            log.afi = 1;
            ascii_field(&mut log.frs[0], &s.config.firmware);
            page.extend_from_slice(log.as_bytes());
        }
        LogPageId::CHANGED_NAMESPACES => {
            page.resize(4096, 0);
            let ns = s.namespaces.lock();
            let (list, overflow) = ns.changed();
            if overflow {
                page[..4].copy_from_slice(&CHANGED_NAMESPACE_LIST_OVERFLOW.to_le_bytes());
            } else {
                for (chunk, id) in page.chunks_exact_mut(4).zip(list) {
                    chunk.copy_from_slice(&id.to_le_bytes());
                }
            }
        }
        LogPageId::COMMANDS_SUPPORTED_AND_EFFECTS => {
            page.extend_from_slice(command_effects().as_bytes());
        }
        LogPageId::RESERVATION_NOTIFICATION => {
            // No notices are kept: an empty log (count 0, type "empty").
            page.resize(64, 0);
        }
        LogPageId::SUPPORTED_LOG_PAGES => {
            // Supported Log Pages: LSUPP (bit 0) per log identifier.
            page.resize(1024, 0);
            for id in [0u8, 1, 2, 3, 4, 5, 0x80] {
                let at = usize::from(id) * 4;
                page[at] = 1;
            }
        }
        _ => return Err(invalid_specific(CommandSpecificStatus::INVALID_LOG_PAGE)),
    }
    Ok(())
}

fn smart(s: &Shared) -> SmartHealthLog {
    let mut total = crate::worker::IoStats::default();
    for w in s.workers.iter() {
        let st = w.lock().stats;
        total.add(&st);
    }
    let mut log = SmartHealthLog::new_zeroed();
    let all_read_only = {
        let ns = s.namespaces.lock();
        let mut any = false;
        let mut all = true;
        for (nsid, _) in ns.known() {
            any = true;
            all &= ns.get(nsid).is_some_and(|n| n.disk.is_read_only());
        }
        any && all
    };
    log.critical_warning = log.critical_warning.with_read_only(all_read_only);
    log.available_spare = 100;
    log.available_spare_threshold = 10;
    log.data_units_read = U128::new(u128::from(smart_data_units(total.bytes_read)));
    log.data_units_written = U128::new(u128::from(smart_data_units(total.bytes_written)));
    log.host_read_commands = U128::new(u128::from(total.read_commands));
    log.host_write_commands = U128::new(u128::from(total.write_commands));
    log.media_errors = U128::new(u128::from(total.media_errors));
    log.error_log_entries = U128::new(u128::from(s.events.lock().error_count));
    log
}

fn command_effects() -> CommandsSupportedAndEffects {
    let mut log = CommandsSupportedAndEffects::new_zeroed();
    let yes = CommandEffects::new().with_csupp(true);
    for op in [
        AdminOpcode::DELETE_IO_SQ,
        AdminOpcode::CREATE_IO_SQ,
        AdminOpcode::GET_LOG_PAGE,
        AdminOpcode::DELETE_IO_CQ,
        AdminOpcode::CREATE_IO_CQ,
        AdminOpcode::IDENTIFY,
        AdminOpcode::ABORT,
        AdminOpcode::GET_FEATURES,
        AdminOpcode::ASYNC_EVENT_REQUEST,
        AdminOpcode::KEEP_ALIVE,
        AdminOpcode::DOORBELL_BUFFER_CONFIG,
    ] {
        log.acs[usize::from(op.get())] = yes;
    }
    // Set Features may change the controller's capabilities (queues).
    log.acs[usize::from(AdminOpcode::SET_FEATURES.get())] = yes.with_ccc(true);
    for op in [
        NvmOpcode::FLUSH,
        NvmOpcode::READ,
        NvmOpcode::COMPARE,
        NvmOpcode::VERIFY,
    ] {
        log.iocs[usize::from(op.get())] = yes;
    }
    for op in [
        NvmOpcode::WRITE,
        NvmOpcode::WRITE_ZEROES,
        NvmOpcode::DATASET_MANAGEMENT,
    ] {
        log.iocs[usize::from(op.get())] = yes.with_lbcc(true);
    }
    for op in [
        NvmOpcode::RESERVATION_REGISTER,
        NvmOpcode::RESERVATION_REPORT,
        NvmOpcode::RESERVATION_ACQUIRE,
        NvmOpcode::RESERVATION_RELEASE,
    ] {
        log.iocs[usize::from(op.get())] = yes;
    }
    log
}
