//! The NVM command set over a [`Disk`]: what one I/O command does to its
//! namespace (NVM Command Set Specification 1.0 §3, NVMe Base 2.0 §7 for
//! reservations).
//!
//! [`execute`] runs one command and returns everything its completion, the
//! SMART counters and the error log need ([`IoOutcome`]); [`execute_now`]
//! runs Read, Write and Flush on a disk that completes inline without
//! building a future at all. The controller resolves the NSID to a disk
//! and answers an unknown one itself.
//!
//! - **Read / Write** map the data pointer ([`crate::data`]) straight onto
//!   an [`SgList`]: one disk call, no copy, no heap allocation. FUA is
//!   passed on to writes (a read has nothing cached to bypass).
//! - **Flush** flushes the disk (a read-only disk succeeds at once).
//! - **Dataset Management** reads its NR+1 ranges, checks every one
//!   against the namespace size before unmapping any, and with the
//!   Deallocate attribute unmaps each; the other attributes are hints. A
//!   backend that cannot unmap is not an error: deallocation is advisory.
//! - **Write Zeroes** unmaps when DEAC is set and the disk reads unmapped
//!   sectors as zeros; otherwise it writes zeros, a scratch chunk at a
//!   time.
//! - **Compare** reads the blocks into scratch and compares them with the
//!   host's data byte for byte: *Compare Failure* on the first difference.
//! - **Verify** reads the blocks into scratch and reports any read error.
//! - **Reservation Register / Report / Acquire / Release** go to the
//!   disk's [`PersistentReservations`] with the host identifier as the
//!   [`InitiatorId`]; Report builds the 64-bit or extended (EDS) data
//!   structure.
//!
//! Every command is range checked against the namespace's current size
//! (*LBA Out of Range*), and a command carrying data is held to the
//! controller's MDTS (*Invalid Field in Command*). Logical blocks are the
//! disk's sectors (one LBA format, LBADS = log2 of the sector size, no
//! metadata, no protection information).
//!
//! # Memory
//! Read, Write and Flush allocate nothing: the ranges go into the caller's
//! reused vector and the disk's future is stored inline. Commands whose
//! work is not the host's buffer (Compare, Verify, Write Zeroes, Dataset
//! Management ranges, bit-bucket reads) take private memory from the
//! controller's scratch [`BouncePool`] ([`SCRATCH_BUDGET`]), at most
//! [`SCRATCH_CHUNK`] per command at a time, never from the heap per command;
//! reservation commands use the reservation interface's boxed futures
//! (rare, and not on the data path).

use crate::data::{self, BucketMemory, DataLayout, Direction};
use crate::error::{disk_error_status, invalid, memory_error_status};
use alloc::vec::Vec;
use parastor_core::bounce::{BounceBuffer, BouncePool};
use parastor_core::memory::GuestMemory;
use parastor_core::pr::{PersistentReservations, ReservationReport, ReservationType};
use parastor_core::{
    Disk, DiskError, GpaRange, InitiatorId, IoErrorKind, IoOptions, SgList, UnmapBehavior,
};
use parastor_hw::nvme::command::{
    self as cmd, AcquireAction, ChangePtpl, DsmCdw10, DsmCdw11, DsmRange, NvmOpcode,
    RegisterAction, ReleaseAction, ReservationAcquireCdw10, ReservationRegisterCdw10,
    ReservationReleaseCdw10, ReservationReportCdw11, RwCdw12,
};
use parastor_hw::nvme::queue::Sqe;
use parastor_hw::nvme::status::{GenericStatus, MediaStatus, StatusWord};
use zerocopy::FromBytes;

/// The Maximum Data Transfer Size parastor advertises, in units of the
/// minimum memory page size (CAP.MPSMIN, 4 KiB): 2^8 pages, 1 MiB.
pub(crate) const MDTS: u8 = 8;

/// [`MDTS`] in bytes (with a 4 KiB CAP.MPSMIN).
pub(crate) const MAX_TRANSFER_BYTES: u64 = 4096 << MDTS;

/// Budget of the scratch pool a controller creates for its commands
/// (Compare, Verify, Write Zeroes, Dataset Management, bit-bucket reads).
pub(crate) const SCRATCH_BUDGET: usize = 4 << 20;

/// Largest scratch region one command works in at a time.
pub(crate) const SCRATCH_CHUNK: usize = 256 << 10;

/// "No parameter error location" in [`IoOutcome::param_error_location`].
pub(crate) const NO_PARAM_LOCATION: u16 = 0xFFFF;

/// The controller state an I/O command depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IoParams {
    /// The memory page size, CC.MPS, in bytes.
    pub page_size: u64,
    /// The largest data transfer of one command in bytes (MDTS); 0 means
    /// no limit beyond [`data::MAX_DATA_BYTES`].
    pub max_transfer: u64,
    /// The host identifier (Set Features 81h) as the reservation
    /// initiator; see [`initiator_from_host_id`].
    pub host_id: InitiatorId,
    /// Whether the host identifier is the extended 128-bit one (EXHID).
    pub host_id_extended: bool,
    /// The Volatile Write Cache feature's WCE: with the cache disabled
    /// every write (and Write Zeroes) is durable on completion, as if FUA
    /// were set.
    pub write_cache: bool,
}

/// What executing one command came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IoOutcome {
    /// The completion status (DNR set where retrying cannot help).
    pub status: StatusWord,
    /// Completion dword 0 (command specific; 0 for every NVM command here).
    pub dw0: u32,
    /// Bytes read from the namespace for the host (Read, Compare, Verify),
    /// for the SMART Data Units Read.
    pub bytes_read: u64,
    /// Bytes the host wrote (Write), for the SMART Data Units Written.
    pub bytes_written: u64,
    /// For an error log entry: the command's first LBA (0 without one).
    pub lba: u64,
    /// For an error log entry: the byte (bits 7:0) and bit (bits 10:8) in
    /// the command of the field in error, or [`NO_PARAM_LOCATION`].
    pub param_error_location: u16,
    /// A reservation Register, Acquire or Release succeeded: other hosts
    /// may have reservation notices to collect
    /// ([`PersistentReservations::take_notices`]).
    pub reservation_changed: bool,
}

impl IoOutcome {
    fn success() -> Self {
        Self {
            status: StatusWord::SUCCESS,
            dw0: 0,
            bytes_read: 0,
            bytes_written: 0,
            lba: 0,
            param_error_location: NO_PARAM_LOCATION,
            reservation_changed: false,
        }
    }
}

/// A failed command: its status and where in the command the fault is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fail {
    status: StatusWord,
    location: u16,
}

impl Fail {
    const fn at(status: StatusWord, byte: u8, bit: u8) -> Self {
        Self {
            status,
            location: byte as u16 | (bit as u16) << 8,
        }
    }

    const fn status(status: StatusWord) -> Self {
        Self {
            status,
            location: NO_PARAM_LOCATION,
        }
    }
}

impl From<DiskError> for Fail {
    fn from(e: DiskError) -> Self {
        Fail::status(disk_error_status(&e))
    }
}

type Res<T = ()> = Result<T, Fail>;

// Where fields sit in a submission queue entry, for error locations.
const LOC_PSDT: (u8, u8) = (1, 6);
const LOC_DPTR: (u8, u8) = (24, 0);
const LOC_CDW10: (u8, u8) = (40, 0);
const LOC_CDW11: (u8, u8) = (44, 0);
const LOC_CDW12: (u8, u8) = (48, 0);

/// The status of a data pointer failure, located at the data pointer (or
/// PSDT, for an unsupported one).
fn data_fail(sqe: &Sqe, status: StatusWord) -> Fail {
    let psdt =
        status == invalid(GenericStatus::INVALID_FIELD_IN_COMMAND) && sqe.cdw0.psdt().get() != 0;
    let (byte, bit) = if psdt { LOC_PSDT } else { LOC_DPTR };
    Fail::at(status, byte, bit)
}

/// The reservation initiator for a host identifier from Set Features
/// Host Identifier (81h): the 16 bytes as one big-endian number; an 8-byte
/// identifier (`extended` false) is its first 8 bytes, the rest ignored.
pub(crate) fn initiator_from_host_id(id: &[u8; 16], extended: bool) -> InitiatorId {
    let mut bytes = *id;
    if !extended {
        bytes[8..].fill(0);
    }
    InitiatorId::new(u128::from_be_bytes(bytes))
}

/// A Read, Write, Compare, Write Zeroes or Verify command's blocks.
#[derive(Clone, Copy, Debug)]
struct Blocks {
    slba: u64,
    count: u64,
    bytes: u64,
}

/// Decodes and range checks SLBA/NLB; `data` says the blocks move through
/// the data pointer (then MDTS applies).
fn blocks(disk: &Disk, sqe: &Sqe, params: &IoParams, data: bool) -> Res<Blocks> {
    let slba = sqe.cdw10_11();
    let count = u64::from(RwCdw12::from_bits(sqe.cdw12.get()).blocks());
    let bytes = count << disk.sector_shift();
    if data {
        let limit = match params.max_transfer {
            0 => data::MAX_DATA_BYTES,
            n => n.min(data::MAX_DATA_BYTES),
        };
        if bytes > limit {
            let (byte, bit) = LOC_CDW12;
            return Err(Fail::at(
                invalid(GenericStatus::INVALID_FIELD_IN_COMMAND),
                byte,
                bit,
            ));
        }
    }
    check_range(disk, slba, count)?;
    Ok(Blocks { slba, count, bytes })
}

/// *LBA Out of Range* unless `[slba, slba + count)` is inside the disk now.
fn check_range(disk: &Disk, slba: u64, count: u64) -> Res {
    match slba.checked_add(count) {
        Some(end) if end <= disk.sector_count() => Ok(()),
        _ => {
            let (byte, bit) = LOC_CDW10;
            Err(Fail::at(
                invalid(GenericStatus::LBA_OUT_OF_RANGE),
                byte,
                bit,
            ))
        }
    }
}

fn io_options(params: &IoParams, fua: bool) -> IoOptions {
    IoOptions {
        initiator: params.host_id,
        fua,
        ..IoOptions::default()
    }
}

/// Options of a write with FUA `fua`: durable on completion also when the
/// host disabled the volatile write cache.
fn write_options(params: &IoParams, fua: bool) -> IoOptions {
    io_options(params, fua || !params.write_cache)
}

/// The outcome of a command that ended with `r`, whose first LBA is `lba`.
fn outcome(r: Res<IoOutcome>, lba: u64) -> IoOutcome {
    match r {
        Ok(o) => o,
        Err(f) => IoOutcome {
            status: f.status,
            lba,
            param_error_location: f.location,
            ..IoOutcome::success()
        },
    }
}

/// Runs one NVM command on `disk`. `ranges` is the caller's reused vector
/// for the command's data ranges (its capacity is kept). Never panics on
/// anything the host controls.
pub(crate) async fn execute(
    mem: &dyn GuestMemory,
    disk: &Disk,
    sqe: &Sqe,
    params: &IoParams,
    scratch: &BouncePool,
    ranges: &mut Vec<GpaRange>,
) -> IoOutcome {
    let op = NvmOpcode::new(sqe.cdw0.opc());
    let lba = match op {
        NvmOpcode::READ
        | NvmOpcode::WRITE
        | NvmOpcode::COMPARE
        | NvmOpcode::WRITE_ZEROES
        | NvmOpcode::VERIFY => sqe.cdw10_11(),
        _ => 0,
    };
    let r = match op {
        NvmOpcode::READ => read(mem, disk, sqe, params, scratch, ranges).await,
        NvmOpcode::WRITE => write(mem, disk, sqe, params, ranges).await,
        NvmOpcode::FLUSH => disk
            .flush(io_options(params, false))
            .await
            .map(|()| IoOutcome::success())
            .map_err(Fail::from),
        NvmOpcode::COMPARE => compare(mem, disk, sqe, params, scratch, ranges).await,
        NvmOpcode::VERIFY => verify(disk, sqe, params, scratch).await,
        NvmOpcode::WRITE_ZEROES => write_zeroes(disk, sqe, params, scratch).await,
        NvmOpcode::DATASET_MANAGEMENT => {
            dataset_management(mem, disk, sqe, params, scratch, ranges).await
        }
        NvmOpcode::RESERVATION_REGISTER => {
            reservation_register(mem, disk, sqe, params, ranges).await
        }
        NvmOpcode::RESERVATION_REPORT => reservation_report(mem, disk, sqe, params, ranges).await,
        NvmOpcode::RESERVATION_ACQUIRE => reservation_acquire(mem, disk, sqe, params, ranges).await,
        NvmOpcode::RESERVATION_RELEASE => reservation_release(mem, disk, sqe, params, ranges).await,
        _ => Err(Fail::at(
            invalid(GenericStatus::INVALID_COMMAND_OPCODE),
            0,
            0,
        )),
    };
    outcome(r, lba)
}

/// Runs Read, Write or Flush on a disk that [completes inline] with no
/// future built; `None` (with nothing done) for any other command or disk,
/// and for a read whose SGL has bit buckets: await [`execute`] then.
///
/// [completes inline]: parastor_core::DiskIo::completes_inline
pub(crate) fn execute_now(
    mem: &dyn GuestMemory,
    disk: &Disk,
    sqe: &Sqe,
    params: &IoParams,
    ranges: &mut Vec<GpaRange>,
) -> Option<IoOutcome> {
    if !disk.completes_inline() {
        return None;
    }
    let op = NvmOpcode::new(sqe.cdw0.opc());
    let r = match op {
        NvmOpcode::READ | NvmOpcode::WRITE => {
            let write = op == NvmOpcode::WRITE;
            match prepare_rw(mem, disk, sqe, params, ranges, write) {
                Err(f) => Err(f),
                Ok((_, layout)) if layout.bucket_bytes != 0 => return None,
                Ok((b, _)) => rw_inline(mem, disk, sqe, params, ranges, b, write),
            }
        }
        NvmOpcode::FLUSH => disk
            .run_now(|d| parastor_core::run_inline(d.flush(io_options(params, false))))?
            .map(|()| IoOutcome::success())
            .map_err(Fail::from),
        _ => return None,
    };
    Some(outcome(
        r,
        if op == NvmOpcode::FLUSH {
            0
        } else {
            sqe.cdw10_11()
        },
    ))
}

/// Checks a Read or Write and maps its data pointer into `ranges`.
fn prepare_rw(
    mem: &dyn GuestMemory,
    disk: &Disk,
    sqe: &Sqe,
    params: &IoParams,
    ranges: &mut Vec<GpaRange>,
    write: bool,
) -> Res<(Blocks, DataLayout)> {
    let b = blocks(disk, sqe, params, true)?;
    let dir = if write {
        Direction::ToController
    } else {
        Direction::ToHost
    };
    let layout = data::command_ranges(mem, params.page_size, true, sqe, b.bytes, dir, ranges)
        .map_err(|s| data_fail(sqe, s))?;
    Ok((b, layout))
}

fn rw_outcome(b: Blocks, write: bool) -> IoOutcome {
    let mut o = IoOutcome::success();
    if write {
        o.bytes_written = b.bytes;
    } else {
        o.bytes_read = b.bytes;
    }
    o
}

/// A checked Read or Write on an inline disk.
fn rw_inline(
    mem: &dyn GuestMemory,
    disk: &Disk,
    sqe: &Sqe,
    params: &IoParams,
    ranges: &[GpaRange],
    b: Blocks,
    write: bool,
) -> Res<IoOutcome> {
    let sg = sg_list(mem, ranges, !write)?;
    if write {
        let fua = RwCdw12::from_bits(sqe.cdw12.get()).fua();
        disk.write_inline(sg, b.slba, write_options(params, fua))?;
    } else {
        disk.read_inline(sg, b.slba, io_options(params, false))?;
    }
    Ok(rw_outcome(b, write))
}

fn sg_list<'a>(
    mem: &'a dyn GuestMemory,
    ranges: &'a [GpaRange],
    writable: bool,
) -> Res<SgList<'a>> {
    // The walkers bound every range and the total (MAX_DATA_BYTES).
    SgList::new(mem, ranges, writable)
        .map_err(|_| Fail::status(invalid(GenericStatus::DATA_TRANSFER_ERROR)))
}

async fn read(
    mem: &dyn GuestMemory,
    disk: &Disk,
    sqe: &Sqe,
    params: &IoParams,
    scratch: &BouncePool,
    ranges: &mut Vec<GpaRange>,
) -> Res<IoOutcome> {
    let (b, layout) = prepare_rw(mem, disk, sqe, params, ranges, false)?;
    let opts = io_options(params, false);
    if layout.bucket_bytes == 0 {
        let sg = sg_list(mem, ranges, true)?;
        disk.read(sg, b.slba, opts).await?;
    } else {
        // Bit buckets: their bytes land in scratch (see crate::data).
        let buckets = acquire(scratch, layout.bucket_bytes as usize).await?;
        let both = BucketMemory::new(mem, buckets.memory());
        let sg = sg_list(&both, ranges, true)?;
        disk.read(sg, b.slba, opts).await?;
    }
    Ok(rw_outcome(b, false))
}

async fn write(
    mem: &dyn GuestMemory,
    disk: &Disk,
    sqe: &Sqe,
    params: &IoParams,
    ranges: &mut Vec<GpaRange>,
) -> Res<IoOutcome> {
    let (b, _) = prepare_rw(mem, disk, sqe, params, ranges, true)?;
    let fua = RwCdw12::from_bits(sqe.cdw12.get()).fua();
    let sg = sg_list(mem, ranges, false)?;
    disk.write(sg, b.slba, write_options(params, fua)).await?;
    Ok(rw_outcome(b, true))
}

/// Scratch memory of `len` bytes from the controller's pool, waiting for
/// room. A pool too small for it is an internal error (the controller
/// sizes its pool for [`SCRATCH_CHUNK`] and MDTS).
async fn acquire(pool: &BouncePool, len: usize) -> Res<BounceBuffer> {
    pool.acquire(len)
        .await
        .map_err(|_| Fail::status(StatusWord::generic(GenericStatus::INTERNAL_ERROR)))
}

/// Scratch for walking `bytes` bytes of blocks of `1 << shift` bytes a
/// chunk at a time: the buffer and the blocks per chunk.
async fn chunk_scratch(pool: &BouncePool, bytes: u64, shift: u32) -> Res<(BounceBuffer, u64)> {
    let chunk = (SCRATCH_CHUNK as u64).min(bytes).max(1 << shift);
    let buf = acquire(pool, chunk as usize).await?;
    Ok((buf, chunk >> shift))
}

/// `(first block, blocks)` of each chunk of `per` blocks in `b`.
fn chunks(b: Blocks, per: u64) -> impl Iterator<Item = (u64, u64)> {
    let per = per.max(1);
    (0..b.count.div_ceil(per)).map(move |i| {
        let done = i * per;
        (done, per.min(b.count - done))
    })
}

/// The first `len` bytes of a scratch buffer as a disk buffer.
fn scratch_sg(buf: &BounceBuffer, len: u64, writable: bool) -> Res<SgList<'_>> {
    buf.sg(writable)
        .subrange(0, len as usize)
        .map_err(|_| Fail::status(StatusWord::generic(GenericStatus::INTERNAL_ERROR)))
}

async fn compare(
    mem: &dyn GuestMemory,
    disk: &Disk,
    sqe: &Sqe,
    params: &IoParams,
    scratch: &BouncePool,
    ranges: &mut Vec<GpaRange>,
) -> Res<IoOutcome> {
    let b = blocks(disk, sqe, params, true)?;
    data::command_ranges(
        mem,
        params.page_size,
        true,
        sqe,
        b.bytes,
        Direction::ToController,
        ranges,
    )
    .map_err(|s| data_fail(sqe, s))?;
    let host = sg_list(mem, ranges, false)?;
    let shift = disk.sector_shift();
    let (buf, per) = chunk_scratch(scratch, b.bytes, shift).await?;
    let opts = io_options(params, false);
    for (done, n) in chunks(b, per) {
        let len = n << shift;
        disk.read(scratch_sg(&buf, len, true)?, b.slba + done, opts)
            .await?;
        let part = host
            .subrange((done << shift) as usize, len as usize)
            .map_err(|_| Fail::status(StatusWord::generic(GenericStatus::INTERNAL_ERROR)))?;
        let same = buf
            .with_private(|medium| same_bytes(&part, &medium[..len as usize]))
            .ok_or(Fail::status(StatusWord::generic(
                GenericStatus::INTERNAL_ERROR,
            )))?
            .map_err(|e| Fail::status(memory_error_status(&e)))?;
        if !same {
            return Err(Fail::status(
                StatusWord::media(MediaStatus::COMPARE_FAILURE).with_dnr(true),
            ));
        }
    }
    let mut o = IoOutcome::success();
    o.bytes_read = b.bytes;
    Ok(o)
}

/// Whether the host buffer `host` holds exactly `medium`.
fn same_bytes(host: &SgList<'_>, medium: &[u8]) -> Result<bool, parastor_core::MemoryError> {
    let mut at = 0usize;
    for seg in host.segments() {
        let n = seg.len as usize;
        let Some(want) = medium.get(at..at + n) else {
            return Ok(false);
        };
        if !host.memory().compare_at(seg.gpa, want)? {
            return Ok(false);
        }
        at += n;
    }
    Ok(at == medium.len())
}

async fn verify(disk: &Disk, sqe: &Sqe, params: &IoParams, scratch: &BouncePool) -> Res<IoOutcome> {
    let b = blocks(disk, sqe, params, false)?;
    let shift = disk.sector_shift();
    let (buf, per) = chunk_scratch(scratch, b.bytes, shift).await?;
    let opts = io_options(params, false);
    for (done, n) in chunks(b, per) {
        disk.read(scratch_sg(&buf, n << shift, true)?, b.slba + done, opts)
            .await?;
    }
    let mut o = IoOutcome::success();
    o.bytes_read = b.bytes;
    Ok(o)
}

async fn write_zeroes(
    disk: &Disk,
    sqe: &Sqe,
    params: &IoParams,
    scratch: &BouncePool,
) -> Res<IoOutcome> {
    let b = blocks(disk, sqe, params, false)?;
    let cdw12 = RwCdw12::from_bits(sqe.cdw12.get());
    let opts = write_options(params, cdw12.fua());
    if cdw12.deac() && disk.unmap_behavior() == UnmapBehavior::Zeroes {
        disk.unmap(b.slba, b.count, opts).await?;
        if cdw12.fua() {
            disk.flush(opts).await?;
        }
        return Ok(IoOutcome::success());
    }
    if disk.is_read_only() {
        return Err(DiskError::ReadOnly.into());
    }
    let shift = disk.sector_shift();
    let (buf, per) = chunk_scratch(scratch, b.bytes, shift).await?;
    scratch_sg(&buf, (per << shift).min(buf.len() as u64), true)?
        .zero()
        .map_err(|e| Fail::status(memory_error_status(&e)))?;
    for (done, n) in chunks(b, per) {
        disk.write(scratch_sg(&buf, n << shift, false)?, b.slba + done, opts)
            .await?;
    }
    Ok(IoOutcome::success())
}

async fn dataset_management(
    mem: &dyn GuestMemory,
    disk: &Disk,
    sqe: &Sqe,
    params: &IoParams,
    scratch: &BouncePool,
    ranges: &mut Vec<GpaRange>,
) -> Res<IoOutcome> {
    let count = usize::from(DsmCdw10::from_bits(sqe.cdw10.get()).nr()) + 1;
    let attributes = DsmCdw11::from_bits(sqe.cdw11.get());
    if !attributes.ad() {
        // Integral dataset hints only: nothing to do.
        return Ok(IoOutcome::success());
    }
    let len = count * size_of::<DsmRange>();
    data::command_ranges(
        mem,
        params.page_size,
        true,
        sqe,
        len as u64,
        Direction::ToController,
        ranges,
    )
    .map_err(|s| data_fail(sqe, s))?;
    // The ranges are read once into private memory, all checked, then used.
    let buf = acquire(scratch, len).await?;
    let host = sg_list(mem, ranges, false)?;
    let copied = buf
        .with_private_mut(|b| host.read_all(&mut b[..len]))
        .ok_or(Fail::status(StatusWord::generic(
            GenericStatus::INTERNAL_ERROR,
        )))?;
    copied.map_err(|e| Fail::status(memory_error_status(&e)))?;
    let nth = |i: usize| -> Res<(u64, u64)> {
        buf.with_private(|b| {
            DsmRange::read_from_bytes(&b[i * 16..(i + 1) * 16])
                .map(|r| (r.slba.get(), u64::from(r.nlb.get())))
                .ok()
        })
        .flatten()
        .ok_or(Fail::status(StatusWord::generic(
            GenericStatus::INTERNAL_ERROR,
        )))
    };
    for i in 0..count {
        let (slba, nlb) = nth(i)?;
        check_range(disk, slba, nlb).map_err(|f| Fail::status(f.status))?;
    }
    let opts = io_options(params, false);
    for i in 0..count {
        let (slba, nlb) = nth(i)?;
        if nlb == 0 {
            continue;
        }
        match disk.unmap(slba, nlb, opts).await {
            Ok(()) => {}
            // Deallocation is advisory: a backend that cannot is no error.
            Err(e)
                if matches!(
                    e.root(),
                    DiskError::Unsupported(_)
                        | DiskError::Io(parastor_core::IoError {
                            kind: IoErrorKind::Unsupported,
                            ..
                        })
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(IoOutcome::success())
}

// ---------------------------------------------------------------------------
// Reservations
// ---------------------------------------------------------------------------

/// The disk's reservation interface; a namespace without one does not
/// support the reservation commands.
fn reservations(disk: &Disk) -> Res<&dyn PersistentReservations> {
    disk.persistent_reservations().ok_or(Fail::at(
        invalid(GenericStatus::INVALID_COMMAND_OPCODE),
        0,
        0,
    ))
}

/// Reads the command's `N`-byte parameter data (reservation keys).
fn read_parameters<const N: usize>(
    mem: &dyn GuestMemory,
    sqe: &Sqe,
    params: &IoParams,
    ranges: &mut Vec<GpaRange>,
) -> Res<[u8; N]> {
    data::command_ranges(
        mem,
        params.page_size,
        true,
        sqe,
        N as u64,
        Direction::ToController,
        ranges,
    )
    .map_err(|s| data_fail(sqe, s))?;
    let mut out = [0u8; N];
    sg_list(mem, ranges, false)?
        .read_all(&mut out)
        .map_err(|e| Fail::status(memory_error_status(&e)))?;
    Ok(out)
}

fn key(bytes: &[u8], at: usize) -> u64 {
    let mut k = [0u8; 8];
    if let Some(src) = bytes.get(at..at + 8) {
        k.copy_from_slice(src);
    }
    u64::from_le_bytes(k)
}

/// The core reservation type of an NVMe RTYPE, if it is one of the six.
fn reservation_type(rtype: cmd::ReservationType) -> Option<ReservationType> {
    Some(match rtype {
        cmd::ReservationType::WRITE_EXCLUSIVE => ReservationType::WriteExclusive,
        cmd::ReservationType::EXCLUSIVE_ACCESS => ReservationType::ExclusiveAccess,
        cmd::ReservationType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY => {
            ReservationType::WriteExclusiveRegistrantsOnly
        }
        cmd::ReservationType::EXCLUSIVE_ACCESS_REGISTRANTS_ONLY => {
            ReservationType::ExclusiveAccessRegistrantsOnly
        }
        cmd::ReservationType::WRITE_EXCLUSIVE_ALL_REGISTRANTS => {
            ReservationType::WriteExclusiveAllRegistrants
        }
        cmd::ReservationType::EXCLUSIVE_ACCESS_ALL_REGISTRANTS => {
            ReservationType::ExclusiveAccessAllRegistrants
        }
        _ => return None,
    })
}

/// The NVMe RTYPE of a core reservation type.
fn nvme_reservation_type(kind: ReservationType) -> cmd::ReservationType {
    match kind {
        ReservationType::WriteExclusive => cmd::ReservationType::WRITE_EXCLUSIVE,
        ReservationType::ExclusiveAccess => cmd::ReservationType::EXCLUSIVE_ACCESS,
        ReservationType::WriteExclusiveRegistrantsOnly => {
            cmd::ReservationType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY
        }
        ReservationType::ExclusiveAccessRegistrantsOnly => {
            cmd::ReservationType::EXCLUSIVE_ACCESS_REGISTRANTS_ONLY
        }
        ReservationType::WriteExclusiveAllRegistrants => {
            cmd::ReservationType::WRITE_EXCLUSIVE_ALL_REGISTRANTS
        }
        ReservationType::ExclusiveAccessAllRegistrants => {
            cmd::ReservationType::EXCLUSIVE_ACCESS_ALL_REGISTRANTS
        }
    }
}

fn cdw10_invalid() -> Fail {
    let (byte, bit) = LOC_CDW10;
    Fail::at(invalid(GenericStatus::INVALID_FIELD_IN_COMMAND), byte, bit)
}

fn changed() -> IoOutcome {
    IoOutcome {
        reservation_changed: true,
        ..IoOutcome::success()
    }
}

async fn reservation_register(
    mem: &dyn GuestMemory,
    disk: &Disk,
    sqe: &Sqe,
    params: &IoParams,
    ranges: &mut Vec<GpaRange>,
) -> Res<IoOutcome> {
    let pr = reservations(disk)?;
    let c = ReservationRegisterCdw10::from_bits(sqe.cdw10.get());
    let aptpl = match c.cptpl() {
        ChangePtpl::NO_CHANGE => None,
        ChangePtpl::CLEAR => Some(false),
        ChangePtpl::SET => Some(true),
        _ => return Err(cdw10_invalid()),
    };
    let p = read_parameters::<16>(mem, sqe, params, ranges)?;
    let (crkey, nrkey) = (key(&p, 0), key(&p, 8));
    let host = params.host_id;
    match c.rrega() {
        RegisterAction::REGISTER => {
            // Key 0 means "not registered" to the reservation model.
            if nrkey == 0 {
                return Err(Fail::status(invalid(
                    GenericStatus::INVALID_FIELD_IN_COMMAND,
                )));
            }
            // Registering again with the key already held changes nothing;
            // with another key it conflicts.
            let report = pr.report().await?;
            match report.key_of(host) {
                Some(k) if k == nrkey => {
                    if aptpl.is_some() {
                        pr.register(host, Some(k), k, aptpl).await?;
                    }
                }
                Some(_) => return Err(DiskError::ReservationConflict.into()),
                None => pr.register(host, Some(0), nrkey, aptpl).await?,
            }
        }
        RegisterAction::UNREGISTER => {
            let report = pr.report().await?;
            let Some(k) = report.key_of(host) else {
                return Err(DiskError::ReservationConflict.into());
            };
            let current = if c.iekey() { k } else { crkey };
            pr.register(host, Some(current), 0, aptpl).await?;
        }
        RegisterAction::REPLACE => {
            if nrkey == 0 {
                return Err(Fail::status(invalid(
                    GenericStatus::INVALID_FIELD_IN_COMMAND,
                )));
            }
            // Without IEKEY only a registrant can replace its key.
            let current = if c.iekey() {
                None
            } else if pr.report().await?.key_of(host).is_none() {
                return Err(DiskError::ReservationConflict.into());
            } else {
                Some(crkey)
            };
            pr.register(host, current, nrkey, aptpl).await?;
        }
        _ => return Err(cdw10_invalid()),
    }
    Ok(changed())
}

async fn reservation_acquire(
    mem: &dyn GuestMemory,
    disk: &Disk,
    sqe: &Sqe,
    params: &IoParams,
    ranges: &mut Vec<GpaRange>,
) -> Res<IoOutcome> {
    let pr = reservations(disk)?;
    let c = ReservationAcquireCdw10::from_bits(sqe.cdw10.get());
    // IEKEY is not defined for Acquire (reserved since NVMe 1.3).
    if c.iekey() {
        return Err(cdw10_invalid());
    }
    let kind = reservation_type(c.rtype()).ok_or_else(cdw10_invalid)?;
    let p = read_parameters::<16>(mem, sqe, params, ranges)?;
    let (crkey, prkey) = (key(&p, 0), key(&p, 8));
    let host = params.host_id;
    match c.racqa() {
        AcquireAction::ACQUIRE => pr.reserve(host, crkey, kind).await?,
        AcquireAction::PREEMPT => pr.preempt(host, crkey, prkey, kind, false).await?,
        AcquireAction::PREEMPT_AND_ABORT => pr.preempt(host, crkey, prkey, kind, true).await?,
        _ => return Err(cdw10_invalid()),
    }
    Ok(changed())
}

async fn reservation_release(
    mem: &dyn GuestMemory,
    disk: &Disk,
    sqe: &Sqe,
    params: &IoParams,
    ranges: &mut Vec<GpaRange>,
) -> Res<IoOutcome> {
    let pr = reservations(disk)?;
    let c = ReservationReleaseCdw10::from_bits(sqe.cdw10.get());
    if c.iekey() {
        return Err(cdw10_invalid());
    }
    let p = read_parameters::<8>(mem, sqe, params, ranges)?;
    let crkey = key(&p, 0);
    let host = params.host_id;
    match c.rrela() {
        ReleaseAction::RELEASE => {
            let kind = reservation_type(c.rtype()).ok_or_else(cdw10_invalid)?;
            pr.release(host, crkey, kind).await?;
        }
        ReleaseAction::CLEAR => pr.clear(host, crkey).await?,
        _ => return Err(cdw10_invalid()),
    }
    Ok(changed())
}

/// Size of the Reservation Status header (EDS 0) and of one registered
/// controller entry.
const STATUS_LEN: usize = 24;
const ENTRY_LEN: usize = 24;
/// The same with EDS 1.
const STATUS_EXT_LEN: usize = cmd::RESERVATION_STATUS_EXTENDED_LEN;
const ENTRY_EXT_LEN: usize = 64;

async fn reservation_report(
    mem: &dyn GuestMemory,
    disk: &Disk,
    sqe: &Sqe,
    params: &IoParams,
    ranges: &mut Vec<GpaRange>,
) -> Res<IoOutcome> {
    let pr = reservations(disk)?;
    let extended = ReservationReportCdw11::from_bits(sqe.cdw11.get()).eds();
    if params.host_id_extended && !extended {
        let (byte, bit) = LOC_CDW11;
        return Err(Fail::at(
            invalid(GenericStatus::HOST_ID_INCONSISTENT_FORMAT),
            byte,
            bit,
        ));
    }
    // NUMD: 0's based number of dwords.
    let len = (u64::from(sqe.cdw10.get()) + 1) * 4;
    let limit = match params.max_transfer {
        0 => data::MAX_DATA_BYTES,
        n => n.min(data::MAX_DATA_BYTES),
    };
    if len > limit {
        let (byte, bit) = LOC_CDW10;
        return Err(Fail::at(
            invalid(GenericStatus::INVALID_FIELD_IN_COMMAND),
            byte,
            bit,
        ));
    }
    data::command_ranges(
        mem,
        params.page_size,
        true,
        sqe,
        len,
        Direction::ToHost,
        ranges,
    )
    .map_err(|s| data_fail(sqe, s))?;
    let report = pr.report().await?;
    let host = sg_list(mem, ranges, true)?;
    write_report(&host, &report, extended).map_err(|e| Fail::status(memory_error_status(&e)))?;
    Ok(IoOutcome::success())
}

/// Writes the Reservation Status data structure for `report` into `host`,
/// truncated to its length; bytes past the structure are left alone.
fn write_report(
    host: &SgList<'_>,
    report: &ReservationReport,
    extended: bool,
) -> Result<(), parastor_core::MemoryError> {
    let mut w = host.writer()?;
    // Writes what fits of `bytes`; false once the buffer is full.
    let mut put = |bytes: &[u8]| -> Result<bool, parastor_core::MemoryError> {
        let n = bytes.len().min(w.remaining());
        w.write(&bytes[..n])?;
        Ok(w.remaining() > 0)
    };
    let mut header = [0u8; STATUS_EXT_LEN];
    header[0..4].copy_from_slice(&report.generation.to_le_bytes());
    header[4] = report
        .reservation
        .map_or(0, |k| nvme_reservation_type(k).get());
    let regctl = u16::try_from(report.registrants.len()).unwrap_or(u16::MAX);
    header[5..7].copy_from_slice(&regctl.to_le_bytes());
    header[9] = u8::from(report.persist_through_power_loss);
    if !put(&header[..if extended { STATUS_EXT_LEN } else { STATUS_LEN }])? {
        return Ok(());
    }
    for r in report.registrants.iter().take(usize::from(regctl)) {
        let id = r.initiator.to_bytes();
        let mut e = [0u8; ENTRY_EXT_LEN];
        // Controller ID: dynamic controllers, not known per host.
        e[0..2].copy_from_slice(&0xFFFFu16.to_le_bytes());
        e[2] = u8::from(r.holds_reservation);
        if extended {
            e[8..16].copy_from_slice(&r.key.to_le_bytes());
            e[16..32].copy_from_slice(&id);
            if !put(&e[..ENTRY_EXT_LEN])? {
                break;
            }
        } else {
            e[8..16].copy_from_slice(&id[..8]);
            e[16..24].copy_from_slice(&r.key.to_le_bytes());
            if !put(&e[..ENTRY_LEN])? {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
