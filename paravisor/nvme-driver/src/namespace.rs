//! One namespace: its geometry as Identify Namespace reports it, and the
//! parastor disk that issues NVM commands to it.

use crate::driver::{ControllerFacts, Inner};
use crate::error::{CODE_NAMESPACE_REMOVED, Failure, status_to_namespace_error};
use crate::queue::{Completed, SlotGuard};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use parastor_core::disk::{DiskIo, IoOptions, UnmapBehavior};
use parastor_core::error::{DiskError, IoError, IoErrorKind};
use parastor_core::memory::GuestMemory;
use parastor_core::resize::ResizeSignal;
use parastor_core::sg::{self, SgList};
use parastor_hw::nvme::command::{
    AcquireAction, DsmCdw11, DsmRange, NvmOpcode, RegisterAction, ReleaseAction,
    ReservationAcquireCdw10, ReservationRegisterCdw10, ReservationReleaseCdw10,
    ReservationReportCdw11, ReservationType, RwCdw12,
};
use parastor_hw::nvme::identify::IdentifyNamespace;
use parastor_hw::nvme::queue::Sqe;
use parastor_hw::nvme::status::{MediaStatus, StatusCodeType, StatusWord};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromZeros, IntoBytes};

/// How many times an I/O cut short by a controller reset is reissued.
const RESET_RETRIES: u32 = 3;
/// The most blocks one Read/Write/Write Zeroes command carries (NLB is a
/// 16-bit, 0's based count).
const MAX_NLB: u64 = 1 << 16;

/// A namespace's fixed geometry and live state.
pub(crate) struct NamespaceState {
    nsid: u32,
    sector_shift: u32,
    sectors: ResizeSignal,
    removed: AtomicBool,
    /// The most blocks per Read/Write command.
    max_blocks: u64,
    unmap: UnmapBehavior,
    optimal_unmap: u32,
    oncs: u16,
    rescap: u8,
    lbaf: u32,
    nguid: [u8; 16],
}

impl NamespaceState {
    /// log2 of the block size.
    pub(crate) fn sector_shift(&self) -> u32 {
        self.sector_shift
    }

    pub(crate) fn new(
        nsid: u32,
        id: &IdentifyNamespace,
        facts: &ControllerFacts,
    ) -> Result<Self, &'static str> {
        let format = id
            .current_format()
            .ok_or("the formatted LBA size index names no LBA format")?;
        if format.ms() != 0 && id.flbas.extended() {
            return Err("extended-LBA metadata formats are not supported");
        }
        let shift = u32::from(format.lbads());
        if !(9..=16).contains(&shift) {
            return Err("the LBA data size is outside 512 B..=64 KiB");
        }
        let per_transfer = (facts.max_transfer as u64) >> shift;
        if per_transfer == 0 {
            return Err("the maximum transfer is smaller than one block");
        }
        let oncs = facts.oncs;
        let dsm = oncs & (1 << 2) != 0;
        let unmap = if !dsm {
            UnmapBehavior::Ignored
        } else if id.dlfeat & 0b111 == 0b001 {
            UnmapBehavior::Zeroes
        } else {
            UnmapBehavior::Unspecified
        };
        let optimal_unmap = if id.nsfeat & (1 << 4) != 0 {
            u32::from(id.npdg.get()) + 1
        } else {
            1
        };
        Ok(Self {
            nsid,
            sector_shift: shift,
            sectors: ResizeSignal::new(id.nsze.get()),
            removed: AtomicBool::new(false),
            max_blocks: per_transfer.min(MAX_NLB),
            unmap,
            optimal_unmap,
            oncs,
            rescap: id.rescap.into_bits(),
            lbaf: format.into_bits().get(),
            nguid: id.nguid,
        })
    }

    /// Whether `id` describes the same format (so the disk stays valid).
    pub(crate) fn same_format(&self, id: &IdentifyNamespace) -> bool {
        id.current_format().map(|f| f.into_bits().get()) == Some(self.lbaf)
    }

    /// Records the current size; whether it changed.
    pub(crate) fn update_size(&self, sectors: u64) -> bool {
        if self.sectors.get() == sectors {
            return false;
        }
        self.sectors.set(sectors);
        true
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
        // Wake resize waiters, so nobody waits on a disk that is gone.
        self.sectors.set(0);
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
}

/// One command's fields and data.
struct Io<'a> {
    opcode: NvmOpcode,
    slba: u64,
    cdw12: u32,
    cdw10: Option<u32>,
    cdw11: Option<u32>,
    cdw13: u32,
    /// The data and whether the device reads it (true) or writes it.
    data: Option<(SgList<'a>, bool)>,
}

impl<'a> Io<'a> {
    fn new(opcode: NvmOpcode) -> Self {
        Self {
            opcode,
            slba: 0,
            cdw12: 0,
            cdw10: None,
            cdw11: None,
            cdw13: 0,
            data: None,
        }
    }
}

/// A namespace as a parastor disk: every `DiskIo` operation becomes NVM
/// commands on the calling thread's I/O queue, plus the commands parastor's
/// `DiskIo` has no operation for (Write Zeroes, Compare, reservations).
#[derive(Clone)]
pub struct NvmeDisk {
    inner: Arc<Inner>,
    ns: Arc<NamespaceState>,
}

impl core::fmt::Debug for NvmeDisk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NvmeDisk")
            .field("nsid", &self.ns.nsid)
            .finish_non_exhaustive()
    }
}

/// The error of an I/O to a namespace that is gone.
fn removed() -> DiskError {
    DiskError::Io(IoError::new(IoErrorKind::NotReady, CODE_NAMESPACE_REMOVED))
}

impl NvmeDisk {
    pub(crate) fn new(inner: Arc<Inner>, ns: Arc<NamespaceState>) -> Self {
        Self { inner, ns }
    }

    /// The namespace identifier.
    pub fn nsid(&self) -> u32 {
        self.ns.nsid
    }

    /// Whether the namespace was removed (every I/O then fails).
    pub fn is_removed(&self) -> bool {
        self.ns.is_removed()
    }

    /// The namespace's NGUID (zero if the controller reports none).
    pub fn nguid(&self) -> [u8; 16] {
        self.ns.nguid
    }

    /// The reservation capabilities (Identify Namespace RESCAP).
    pub fn reservation_capabilities(&self) -> u8 {
        self.ns.rescap
    }

    fn check(&self, sector: u64, count: u64) -> Result<(), DiskError> {
        if self.ns.is_removed() {
            return Err(removed());
        }
        match sector.checked_add(count) {
            Some(end) if end <= self.ns.sectors.get() => Ok(()),
            _ => Err(DiskError::IllegalBlock),
        }
    }

    /// Runs one command to completion, reissuing it if a controller reset
    /// cut it short.
    async fn run(&self, io: &Io<'_>) -> Result<Completed, DiskError> {
        let mut tries = 0;
        loop {
            match self.run_once(io).await {
                Err(Failure::Reset) if tries < RESET_RETRIES => tries += 1,
                Err(f) => return Err(f.into()),
                Ok(done) => return Ok(done),
            }
        }
    }

    async fn run_once(&self, io: &Io<'_>) -> Result<Completed, Failure> {
        if self.ns.is_removed() {
            return Err(Failure::Gone("namespace removed"));
        }
        let inner = &*self.inner;
        let policy = inner.config_data_pointer();
        let sgl = inner.sgl();
        let queue = match inner.io_queue() {
            Ok(q) => q,
            Err(index) => inner.io_queue_slow(index).await?,
        };
        let mut sqe = Sqe::new_zeroed();
        sqe.cdw0.set_opc(io.opcode.get());
        sqe.nsid = U32::new(self.ns.nsid);
        sqe.cdw10 = U32::new(io.cdw10.unwrap_or(io.slba as u32));
        sqe.cdw11 = U32::new(io.cdw11.unwrap_or((io.slba >> 32) as u32));
        sqe.cdw12 = U32::new(io.cdw12);
        sqe.cdw13 = U32::new(io.cdw13);
        let mut slot = queue.start(&mut sqe, io.data, policy, sgl).await?;
        let mut bounced = false;
        let mut paged = false;
        if !slot.is_submitted()
            && let Some((buf, to_device)) = io.data
            && let Some((mem, range)) = slot.page(buf.len())
        {
            // Up to one page: through the slot's own bounce page, no pool.
            if to_device {
                let page = [range];
                sg::copy(&buf, &SgList::local(&**mem, &page, true)).map_err(Failure::Memory)?;
            }
            slot.submit_page(sqe, buf.len(), !to_device, policy, sgl)?;
            paged = true;
        } else if !slot.is_submitted()
            && let Some((buf, to_device)) = io.data
        {
            let bounce = match inner.bounce.try_acquire(buf.len()) {
                Ok(Some(b)) => b,
                // Back-pressure: wait for bounce space, unless the queue
                // fails meanwhile (a failed controller's held buffers may
                // never come back).
                Ok(None) => {
                    BounceWait {
                        acquire: inner.bounce.acquire(buf.len()),
                        slot: &slot,
                    }
                    .await?
                }
                Err(_) => return Err(Failure::BadBuffer("bounce buffer unavailable")),
            };
            if to_device {
                sg::copy(&buf, &bounce.sg(true)).map_err(Failure::Memory)?;
            }
            let Some((_, range)) = bounce.device_range() else {
                return Err(Failure::BadBuffer("bounce buffer is not device memory"));
            };
            slot.prepare_contiguous(&mut sqe, range, Some(bounce), policy, sgl)?;
            bounced = true;
            slot.submit(sqe)?;
        }
        let finished = (&mut slot).await;
        if paged
            && let Ok(done) = &finished.result
            && StatusWord::from_bits(done.status & 0x7FFF).is_success()
            && let Some((buf, false)) = io.data
            && let Some((mem, range)) = slot.page(buf.len())
        {
            // The slot (and so its page) is still this command's: copy
            // out before the guard goes.
            let page = [range];
            sg::copy(&SgList::local(&**mem, &page, false), &buf).map_err(Failure::Memory)?;
        }
        drop(slot);
        let done = finished.result.map_err(|f| inner.note(f))?;
        if bounced
            && StatusWord::from_bits(done.status & 0x7FFF).is_success()
            && let (Some((buf, false)), Some(bounce)) = (io.data, &finished.bounce)
        {
            sg::copy(&bounce.sg(false), &buf).map_err(Failure::Memory)?;
        }
        Ok(done)
    }

    /// Runs `io` and maps a failed status.
    async fn command(&self, io: &Io<'_>) -> Result<Completed, DiskError> {
        let done = self.run(io).await?;
        let status = StatusWord::from_bits(done.status & 0x7FFF);
        if status.is_success() {
            Ok(done)
        } else {
            Err(status_to_namespace_error(status, self.ns.is_removed()))
        }
    }

    /// Reads or writes `buf` at `sector`, split into commands the
    /// controller accepts.
    async fn read_write(
        &self,
        opcode: NvmOpcode,
        buf: SgList<'_>,
        sector: u64,
        fua: bool,
    ) -> Result<(), DiskError> {
        let shift = self.ns.sector_shift;
        let count = (buf.len() as u64) >> shift;
        self.check(sector, count)?;
        let to_device = opcode == NvmOpcode::WRITE;
        let mut done = 0u64;
        while done < count {
            let n = (count - done).min(self.ns.max_blocks);
            let piece = buf
                .subrange((done << shift) as usize, (n << shift) as usize)
                .map_err(|_| DiskError::InvalidInput("buffer shorter than the transfer"))?;
            let mut io = Io::new(opcode);
            io.slba = sector + done;
            io.cdw12 = RwCdw12::new()
                .with_nlb((n - 1) as u16)
                .with_fua(fua)
                .into_bits();
            io.data = Some((piece, to_device));
            self.command(&io).await?;
            done += n;
        }
        Ok(())
    }

    /// Write Zeroes over `[sector, sector + count)`; with `deallocate`,
    /// the controller may deallocate the blocks (DEAC).
    ///
    /// # Errors
    /// As for a write.
    pub async fn write_zeroes(
        &self,
        sector: u64,
        count: u64,
        deallocate: bool,
    ) -> Result<(), DiskError> {
        self.check(sector, count)?;
        if self.ns.oncs & (1 << 3) == 0 {
            return Err(DiskError::Unsupported("the controller has no Write Zeroes"));
        }
        let mut done = 0u64;
        while done < count {
            let n = (count - done).min(MAX_NLB);
            let mut io = Io::new(NvmOpcode::WRITE_ZEROES);
            io.slba = sector + done;
            io.cdw12 = RwCdw12::new()
                .with_nlb((n - 1) as u16)
                .with_deac(deallocate)
                .into_bits();
            self.command(&io).await?;
            done += n;
        }
        Ok(())
    }

    /// Compare: whether the blocks at `sector` equal `buf`.
    ///
    /// # Errors
    /// As for a read; a miscompare is `Ok(false)`, not an error.
    pub async fn compare(&self, buf: SgList<'_>, sector: u64) -> Result<bool, DiskError> {
        if self.ns.oncs & 1 == 0 {
            return Err(DiskError::Unsupported("the controller has no Compare"));
        }
        let shift = self.ns.sector_shift;
        let count = (buf.len() as u64) >> shift;
        self.check(sector, count)?;
        let mut done = 0u64;
        while done < count {
            let n = (count - done).min(self.ns.max_blocks);
            let piece = buf
                .subrange((done << shift) as usize, (n << shift) as usize)
                .map_err(|_| DiskError::InvalidInput("buffer shorter than the transfer"))?;
            let mut io = Io::new(NvmOpcode::COMPARE);
            io.slba = sector + done;
            io.cdw12 = RwCdw12::new().with_nlb((n - 1) as u16).into_bits();
            io.data = Some((piece.read_only(), true));
            let result = self.run(&io).await?;
            if is_miscompare(result.status) {
                return Ok(false);
            }
            let status = StatusWord::from_bits(result.status & 0x7FFF);
            if !status.is_success() {
                return Err(status_to_namespace_error(status, self.ns.is_removed()));
            }
            done += n;
        }
        Ok(true)
    }

    /// Dataset Management with the given ranges (deallocate when
    /// `deallocate`).
    ///
    /// # Errors
    /// As for a write; more than 256 ranges is invalid input.
    pub async fn dataset_management(
        &self,
        ranges: &[(u64, u32)],
        deallocate: bool,
    ) -> Result<(), DiskError> {
        if ranges.is_empty() || ranges.len() > 256 {
            return Err(DiskError::InvalidInput(
                "Dataset Management takes 1 to 256 ranges",
            ));
        }
        for &(slba, nlb) in ranges {
            self.check(slba, u64::from(nlb))?;
        }
        let mut payload = [0u8; 256 * 16];
        let used = ranges.len() * 16;
        for (i, &(slba, nlb)) in ranges.iter().enumerate() {
            let r = DsmRange {
                context_attributes: U32::new(0),
                nlb: U32::new(nlb),
                slba: U64::new(slba),
            };
            payload[i * 16..i * 16 + 16].copy_from_slice(r.as_bytes());
        }
        let mut io = Io::new(NvmOpcode::DATASET_MANAGEMENT);
        io.cdw10 = Some((ranges.len() - 1) as u32);
        io.cdw11 = Some(DsmCdw11::new().with_ad(deallocate).into_bits());
        self.with_payload(&io, &mut payload[..used], true).await?;
        Ok(())
    }

    /// Runs `io` with `payload` as its data (to the device if
    /// `to_device`, else filled from it), through local memory.
    async fn with_payload(
        &self,
        io: &Io<'_>,
        payload: &mut [u8],
        to_device: bool,
    ) -> Result<Completed, DiskError> {
        let mem = parastor_core::memory::LocalMemory::from_vec(payload.to_vec());
        let range = [parastor_core::addr::GpaRange::new(
            parastor_core::addr::Gpa::new(0),
            payload.len() as u64,
        )];
        let sgl = SgList::local(&mem, &range, !to_device);
        let io2 = Io {
            opcode: io.opcode,
            slba: io.slba,
            cdw12: io.cdw12,
            cdw10: io.cdw10,
            cdw11: io.cdw11,
            cdw13: io.cdw13,
            data: Some((sgl, to_device)),
        };
        let done = self.command(&io2).await?;
        if !to_device {
            mem.read_at(parastor_core::addr::Gpa::new(0), payload)?;
        }
        Ok(done)
    }

    /// Reservation Register (register, unregister or replace a key).
    ///
    /// # Errors
    /// `ReservationConflict` and the other mapped statuses.
    pub async fn reservation_register(
        &self,
        action: RegisterAction,
        current_key: u64,
        new_key: u64,
        ignore_existing_key: bool,
    ) -> Result<(), DiskError> {
        let mut payload = two_keys(current_key, new_key);
        let mut io = Io::new(NvmOpcode::RESERVATION_REGISTER);
        io.cdw10 = Some(
            ReservationRegisterCdw10::new()
                .with_rrega(action)
                .with_iekey(ignore_existing_key)
                .into_bits(),
        );
        io.cdw11 = Some(0);
        self.with_payload(&io, &mut payload, true).await?;
        Ok(())
    }

    /// Reservation Acquire (acquire, preempt, preempt and abort).
    ///
    /// # Errors
    /// `ReservationConflict` and the other mapped statuses.
    pub async fn reservation_acquire(
        &self,
        action: AcquireAction,
        rtype: ReservationType,
        current_key: u64,
        preempt_key: u64,
    ) -> Result<(), DiskError> {
        let mut payload = two_keys(current_key, preempt_key);
        let mut io = Io::new(NvmOpcode::RESERVATION_ACQUIRE);
        io.cdw10 = Some(
            ReservationAcquireCdw10::new()
                .with_racqa(action)
                .with_rtype(rtype)
                .into_bits(),
        );
        io.cdw11 = Some(0);
        self.with_payload(&io, &mut payload, true).await?;
        Ok(())
    }

    /// Reservation Release (release or clear).
    ///
    /// # Errors
    /// `ReservationConflict` and the other mapped statuses.
    pub async fn reservation_release(
        &self,
        action: ReleaseAction,
        rtype: ReservationType,
        current_key: u64,
    ) -> Result<(), DiskError> {
        let mut payload = current_key.to_le_bytes();
        let mut io = Io::new(NvmOpcode::RESERVATION_RELEASE);
        io.cdw10 = Some(
            ReservationReleaseCdw10::new()
                .with_rrela(action)
                .with_rtype(rtype)
                .into_bits(),
        );
        io.cdw11 = Some(0);
        self.with_payload(&io, &mut payload, true).await?;
        Ok(())
    }

    /// Reservation Report, extended data structure (64-byte header and
    /// 64-byte registrant entries): the raw bytes, `len` of them.
    ///
    /// # Errors
    /// The mapped status.
    pub async fn reservation_report(&self, len: usize) -> Result<Vec<u8>, DiskError> {
        let len = len.clamp(64, 4096) & !3;
        let mut payload = alloc::vec![0u8; len];
        let mut io = Io::new(NvmOpcode::RESERVATION_REPORT);
        io.cdw10 = Some((len / 4 - 1) as u32);
        io.cdw11 = Some(ReservationReportCdw11::new().with_eds(true).into_bits());
        self.with_payload(&io, &mut payload, false).await?;
        Ok(payload)
    }
}

impl DiskIo for NvmeDisk {
    fn kind(&self) -> &'static str {
        "nvme"
    }

    fn sector_count(&self) -> u64 {
        if self.ns.is_removed() {
            0
        } else {
            self.ns.sectors.get()
        }
    }

    fn sector_size(&self) -> u32 {
        1 << self.ns.sector_shift
    }

    fn disk_id(&self) -> Option<[u8; 16]> {
        (self.ns.nguid != [0; 16]).then_some(self.ns.nguid)
    }

    fn is_read_only(&self) -> bool {
        false
    }

    fn is_fua_respected(&self) -> bool {
        true
    }

    fn unmap_behavior(&self) -> UnmapBehavior {
        self.ns.unmap
    }

    fn optimal_unmap_sectors(&self) -> u32 {
        self.ns.optimal_unmap
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        alloc::vec![
            ("device", String::from(self.inner.device.id())),
            ("nsid", alloc::format!("{}", self.ns.nsid)),
        ]
    }

    async fn read(&self, buf: SgList<'_>, sector: u64, _opts: IoOptions) -> Result<(), DiskError> {
        self.read_write(NvmOpcode::READ, buf, sector, false).await
    }

    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.read_write(NvmOpcode::WRITE, buf, sector, opts.fua)
            .await
    }

    async fn flush(&self, _opts: IoOptions) -> Result<(), DiskError> {
        if self.ns.is_removed() {
            return Err(removed());
        }
        self.command(&Io::new(NvmOpcode::FLUSH)).await?;
        Ok(())
    }

    async fn unmap(&self, sector: u64, count: u64, _opts: IoOptions) -> Result<(), DiskError> {
        self.check(sector, count)?;
        if self.ns.unmap == UnmapBehavior::Ignored || count == 0 {
            return Ok(());
        }
        let mut ranges = [(0u64, 0u32); 256];
        let mut at = sector;
        let end = sector + count;
        while at < end {
            let mut n = 0;
            while n < ranges.len() && at < end {
                let len = (end - at).min(u64::from(u32::MAX));
                ranges[n] = (at, len as u32);
                at += len;
                n += 1;
            }
            self.dataset_management(&ranges[..n], true).await?;
        }
        Ok(())
    }

    fn wait_resize(&self, known: u64) -> impl core::future::Future<Output = u64> + Send {
        self.ns.sectors.wait(known)
    }
}

/// Waits for bounce space, or for the queue to fail.
struct BounceWait<'a> {
    acquire: parastor_core::bounce::Acquire<'a>,
    slot: &'a SlotGuard<'a>,
}

impl core::future::Future for BounceWait<'_> {
    type Output = Result<parastor_core::bounce::BounceBuffer, Failure>;

    fn poll(
        mut self: core::pin::Pin<&mut Self>,
        cx: &mut core::task::Context<'_>,
    ) -> core::task::Poll<Self::Output> {
        use core::task::Poll;
        match core::pin::Pin::new(&mut self.acquire).poll(cx) {
            Poll::Ready(r) => {
                Poll::Ready(r.map_err(|_| Failure::BadBuffer("bounce buffer unavailable")))
            }
            Poll::Pending => match self.slot.watch_gate(cx) {
                Err(why) => Poll::Ready(Err(why)),
                Ok(()) => Poll::Pending,
            },
        }
    }
}

/// Whether `status` is Compare Failure.
pub(crate) fn is_miscompare(status: u16) -> bool {
    let s = StatusWord::from_bits(status & 0x7FFF);
    s.sct() == StatusCodeType::MEDIA && s.sc() == MediaStatus::COMPARE_FAILURE.get()
}

/// The 16-byte data of Reservation Register and Acquire: the current key,
/// then the new (or preempt) key, little-endian.
fn two_keys(current: u64, other: u64) -> [u8; 16] {
    let mut payload = [0u8; 16];
    payload[..8].copy_from_slice(&current.to_le_bytes());
    payload[8..].copy_from_slice(&other.to_le_bytes());
    payload
}
