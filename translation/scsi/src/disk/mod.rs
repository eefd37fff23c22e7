//! The SCSI disk: an SBC direct-access block device over a [`Disk`].
//!
//! [`ScsiDisk`] is transport independent: StorVSP (or any other SCSI
//! transport) hands it a CDB, the request's data buffer as an [`SgList`]
//! and the initiator's identity, and gets back a [`ScsiResult`] (status,
//! sense data, bytes transferred). Each CDB is parsed once by
//! [`parastor_hw::scsi::parse_cdb`]; disk errors become sense data through
//! the one table in [`disk_error_result`](crate::disk_error_result).
//!
//! Where this differs from OpenHCL's `scsidisk` on purpose: READ(6) and
//! WRITE(6) length 0 means 256 blocks (SBC-4); VERIFY and WRITE AND VERIFY
//! really read and compare (MISCOMPARE on mismatch); WRITE SAME honours
//! UNMAP and NDOB and writes in chunks instead of one sector per call;
//! COMPARE AND WRITE is implemented; UNMAP errors are reported; LBPRZ is
//! reported when unmapped blocks read as zero; persistent reservations
//! carry the initiator through to the disk; REQUEST SENSE returns the
//! calling initiator's own sense (SPC keeps sense per I_T nexus), and not
//! sense the transport already delivered by autosense; UNMAP has a finite
//! MAXIMUM UNMAP LBA COUNT ([`MAX_UNMAP_BYTES`]) and enforces it; the
//! MAXIMUM TRANSFER LENGTH is the smaller of the disk's own and its
//! transport's ([`ScsiDisk::limit_transfer`]).
//! COMPARE AND WRITE excludes overlapping writes through an async LBA range
//! lock, and REPORT SUPPORTED OPERATION CODES comes from the one command
//! table the tests check against the parser. ORWRITE(16) (the data ORed
//! into the blocks under the same exclusive range lock), PRE-FETCH(10/16)
//! (range checked; nothing is cached, so GOOD) and READ DEFECT DATA(10/12)
//! (empty lists) are offered, which OpenHCL does not.
//!
//! # Memory per command
//! Commands whose work is larger than their data-out buffer (VERIFY,
//! WRITE AND VERIFY, WRITE SAME, COMPARE AND WRITE, ORWRITE) and UNMAP parameter
//! lists take their private memory from a scratch [`BouncePool`] the LUNs
//! of one controller share ([`ScsiDisk::use_scratch`]; StorVSP's
//! controller creates one of [`DEFAULT_SCRATCH_BUDGET`]), never from the
//! heap per command: one acquisition of at most two [`SCRATCH_CHUNK`]
//! regions, taken before the command's LBA range lock and held to its end,
//! through which the command walks its blocks. A burst waits for room in
//! the pool (first come, first served) instead of growing memory. Other
//! parameter lists (MODE SELECT, PERSISTENT RESERVE OUT) are read into
//! stack buffers. How much one command may make the disk do is bounded by
//! the limits VPD 0xB0 advertises and enforces: MAXIMUM TRANSFER LENGTH for
//! READ, WRITE, VERIFY and WRITE AND VERIFY (8 MiB by default, lowered to
//! the transport's limit), MAXIMUM WRITE SAME LENGTH (64 MiB) and MAXIMUM
//! COMPARE AND WRITE LENGTH (64 blocks); a command over one is ILLEGAL
//! REQUEST / INVALID FIELD IN CDB, as SBC-4's transfer-limits table asks.

mod inquiry;
mod mode_pages;
mod opcodes;
mod pr;
pub(crate) mod state;
#[cfg(test)]
pub(crate) mod tests;

use crate::data::{data_in, data_out, read_capacity10};
use crate::lock::RangeLock;
use crate::result::{
    Res, ScsiResult, illegal, invalid_cdb, invalid_param, mem_err, param_len_error,
};
use crate::sense::{self, SenseDelivery, SenseTable, UnitAttentions};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use parastor_core::bounce::{AcquireError, BounceBuffer, BouncePool};
use parastor_core::{Disk, DiskError, InitiatorId, IoOptions, SgList, UnmapBehavior};
use parastor_hw::scsi::{
    AdditionalSense, CapacityExponents, CapacityProvisioning, Command, DefectData10Header,
    DefectData12Header, DefectListFlags, LbaStatusDescriptor, LbaStatusHeader, ReadCapacity16Data,
    SenseData, SenseKey, Transfer, UnmapDescriptor, UnmapHeader, parse_cdb,
};
use zerocopy::FromBytes;
use zerocopy::IntoBytes;

/// Most block descriptors one UNMAP may carry (VPD 0xB0).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 4096;
/// Most bytes one UNMAP may unmap, all its descriptors together: the
/// MAXIMUM UNMAP LBA COUNT of VPD 0xB0 is this many logical blocks
/// (1 Mi blocks of 512 bytes, 128 Ki of 4 KiB).
///
/// OpenHCL reports no limit (FFFF_FFFFh), so one UNMAP of 4096
/// descriptors may name the whole disk many times over. The work an unmap
/// costs grows with the bytes it covers (a RAM layer touches a chunk
/// entry per 32 KiB, under the lock every other request on the disk
/// needs), so the limit bounds one command's work to a few milliseconds;
/// initiators split larger discards (Linux sizes its discard requests by
/// this field). 512 MiB keeps the count at or below 2^20 blocks for every
/// block size: initiators that sanity-check a finite limit (libiscsi's
/// conformance suite) take a larger one for a bogus value.
pub const MAX_UNMAP_BYTES: u64 = 512 << 20;
/// Most blocks one WRITE SAME may name, whatever
/// [`DiskParams::max_write_same_bytes`] allows: 65535, the largest count
/// WRITE SAME(10) can carry (32 MiB of 512-byte blocks; a 4 KiB-block disk
/// reaches the 64 MiB default first).
///
/// SBC-4 leaves the value to the device. This one keeps initiators that
/// size a plain WRITE by the MAXIMUM WRITE SAME LENGTH within what a SCSI
/// transport carries: libiscsi's `WriteSame16.Unmap` writes 65536 blocks
/// in one WRITE(16) before unmapping them whenever the limit allows a
/// 65536-block WRITE SAME, and Linux's tcm_loop carries at most 65535
/// sectors per command.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 0xFFFF;
/// Most blocks one COMPARE AND WRITE may name (VPD 0xB0).
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 64;
/// Largest region of scratch memory a command works in at a time: a
/// VERIFY, WRITE AND VERIFY, WRITE SAME or COMPARE AND WRITE goes through
/// its blocks this many bytes at a time (at most two regions at once, from
/// one acquisition of the scratch pool).
pub const SCRATCH_CHUNK: usize = 256 << 10;
/// Default budget of a scratch pool: of a controller's (StorVSP creates
/// one per controller and gives it to every LUN it attaches), and of a
/// disk used on its own. Sixteen 256 KiB regions: eight commands working
/// on two regions each at once; more wait their turn.
pub const DEFAULT_SCRATCH_BUDGET: usize = 4 << 20;

/// Configuration of a [`ScsiDisk`]: the identity the guest sees and the
/// behaviours it may rely on.
#[derive(Clone, Debug)]
pub struct DiskParams {
    /// T10 vendor identification (INQUIRY bytes 8..16), space padded.
    pub vendor: [u8; 8],
    /// Product identification (INQUIRY bytes 16..32), space padded.
    pub product: [u8; 16],
    /// Product revision level (INQUIRY bytes 32..36).
    pub revision: [u8; 4],
    /// Unit serial number (VPD 0x80); empty: the page is not offered.
    pub serial: Vec<u8>,
    /// Device identifier for VPD 0x83; `None`: the disk's id, else zeros.
    pub device_id: Option<[u8; 16]>,
    /// Whether the device reports a volatile write cache (WCE). When
    /// false, every write is issued with FUA.
    pub write_cache: bool,
    /// Medium rotation rate (VPD 0xB1): 1 = non-rotating.
    pub rotation_rate: u16,
    /// Caps the capacity the guest sees, in bytes.
    pub size_cap_bytes: Option<u64>,
    /// Largest transfer of one command, in bytes: the MAXIMUM TRANSFER
    /// LENGTH of VPD 0xB0, in whole logical blocks (at least one). A
    /// transport with a lower limit lowers it when it attaches the disk
    /// ([`ScsiDisk::limit_transfer`]).
    pub max_transfer_bytes: u32,
    /// Largest WRITE SAME, in bytes: the MAXIMUM WRITE SAME LENGTH of VPD
    /// 0xB0 in whole logical blocks (at least one, at most
    /// [`MAX_WRITE_SAME_BLOCKS`]).
    pub max_write_same_bytes: u64,
    /// Whether UNMAP / WRITE SAME with UNMAP are offered; `None`: when the
    /// disk does not ignore unmaps.
    pub unmap: Option<bool>,
    /// Whether FUA is advertised (DPOFUA); `None`: as the disk honours it.
    pub fua: Option<bool>,
}

impl Default for DiskParams {
    fn default() -> Self {
        DiskParams {
            vendor: *b"Msft    ",
            product: *b"Virtual Disk    ",
            revision: *b"1.0 ",
            serial: Vec::new(),
            device_id: None,
            write_cache: true,
            rotation_rate: 1,
            size_cap_bytes: None,
            max_transfer_bytes: 8 << 20,
            max_write_same_bytes: 64 << 20,
            unmap: None,
            fua: None,
        }
    }
}
fn unit_attention() -> SenseData {
    SenseData::new(
        SenseKey::UNIT_ATTENTION,
        AdditionalSense::CAPACITY_DATA_CHANGED,
    )
}

/// What [`ScsiDisk::read_write_now`] did with a command on a disk that
/// completes inline.
pub(crate) enum Now {
    /// A READ or WRITE ran in place: its result.
    Done(ScsiResult),
    /// Not run: the command holds a range of blocks and may wait for
    /// another command's (only its future can wait; polled in place it
    /// would look like a disk breaking its inline promise).
    Waits,
    /// Not run: any other command, which never waits but on the disk.
    Other,
}

/// A SCSI direct-access block device over a [`Disk`].
pub struct ScsiDisk {
    disk: Disk,
    params: DiskParams,
    device_id: [u8; 16],
    unmap: bool,
    fua: bool,
    /// The sector count the initiators were last told about.
    last_sector_count: AtomicU64,
    /// Sense of each initiator's last failed command, for REQUEST SENSE.
    sense: SenseTable,
    /// Unit attentions persistent reservation changes raised on particular
    /// initiators, for their next commands.
    attentions: UnitAttentions,
    /// Writes hold their LBA range shared, COMPARE AND WRITE exclusively.
    ranges: RangeLock,
    /// The MAXIMUM TRANSFER LENGTH advertised and enforced, in blocks: the
    /// smaller of [`DiskParams::max_transfer_bytes`] and every limit given
    /// to [`ScsiDisk::limit_transfer`]; never below one block.
    max_transfer_blocks: AtomicU32,
    /// Where commands take scratch memory from ([`ScsiDisk::use_scratch`]).
    scratch: parastor_core::sync::RwLock<BouncePool>,
}

/// A command's scratch memory: one buffer from the pool, cut into regions
/// of `per` blocks (`region` bytes) each.
struct Scratch {
    buf: BounceBuffer,
    region: usize,
    per: u64,
}

impl Scratch {
    /// `len` bytes of region `i` as a buffer for a disk call.
    fn sg(&self, i: usize, len: usize, writable: bool) -> Res<SgList<'_>> {
        self.buf
            .sg(writable)
            .subrange(i * self.region, len)
            .map_err(|_| DiskError::InvalidInput("scratch region out of bounds").into())
    }

    /// Runs `f` on the buffer's bytes.
    fn with<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> Res<R> {
        self.buf
            .with_private_mut(f)
            .ok_or_else(|| DiskError::Unsupported("scratch pool of non-private memory").into())
    }
}

impl ScsiDisk {
    /// An adapter exposing `disk` with `params`.
    pub fn new(disk: Disk, params: DiskParams) -> ScsiDisk {
        let device_id = params
            .device_id
            .or_else(|| disk.disk_id())
            .unwrap_or_default();
        let unmap = params
            .unmap
            .unwrap_or(disk.unmap_behavior() != UnmapBehavior::Ignored);
        let fua = params.fua.unwrap_or(disk.is_fua_respected());
        let max_transfer_blocks =
            AtomicU32::new((params.max_transfer_bytes >> disk.sector_shift()).max(1));
        ScsiDisk {
            max_transfer_blocks,
            last_sector_count: AtomicU64::new(disk.sector_count()),
            disk,
            params,
            device_id,
            unmap,
            fua,
            sense: SenseTable::default(),
            attentions: UnitAttentions::default(),
            ranges: RangeLock::default(),
            scratch: parastor_core::sync::RwLock::new(BouncePool::new(DEFAULT_SCRATCH_BUDGET)),
        }
    }

    /// Takes the scratch memory of VERIFY, WRITE AND VERIFY, WRITE SAME,
    /// COMPARE AND WRITE and UNMAP parameter lists from `pool` from now
    /// on. A transport calls it when it attaches the disk, so all the LUNs
    /// of one controller share one budget (a disk on its own has a pool of
    /// [`DEFAULT_SCRATCH_BUDGET`]). Commands wait for room in the pool, so
    /// a burst of them never holds more than its budget.
    pub fn use_scratch(&self, pool: &BouncePool) {
        *self.scratch.write() = pool.clone();
    }

    /// The pool commands take scratch memory from.
    pub fn scratch_pool(&self) -> BouncePool {
        self.scratch.read().clone()
    }

    /// The disk behind the adapter.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// The capacity the guest sees, in logical blocks.
    pub fn capacity(&self) -> u64 {
        let count = self.disk.sector_count();
        match self.params.size_cap_bytes {
            Some(cap) => count.min(cap >> self.disk.sector_shift()),
            None => count,
        }
    }

    /// Lowers the largest transfer of one command to `bytes` (whole
    /// blocks, at least one) if that is below the current limit; never
    /// raises it. A transport calls it with its own limit before the
    /// initiator can see the disk, so the MAXIMUM TRANSFER LENGTH the disk
    /// advertises (VPD 0xB0) and enforces is one the transport carries; a
    /// disk reachable through several transports gets the smallest limit.
    pub fn limit_transfer(&self, bytes: u32) {
        let blocks = (bytes >> self.disk.sector_shift()).max(1);
        self.max_transfer_blocks
            .fetch_min(blocks, Ordering::Relaxed);
    }

    /// The largest transfer of one command, in bytes (a whole number of
    /// blocks): the MAXIMUM TRANSFER LENGTH of VPD 0xB0.
    pub fn max_transfer_bytes(&self) -> u32 {
        self.max_transfer_blocks() << self.disk.sector_shift()
    }

    fn max_transfer_blocks(&self) -> u32 {
        self.max_transfer_blocks.load(Ordering::Relaxed)
    }

    /// Executes one command. `data` is the request's whole data buffer
    /// (data-in or data-out); `initiator` identifies the I_T nexus (for
    /// persistent reservations and sense data); `delivery` says whether
    /// the transport returns a CHECK CONDITION's sense with it (then it is
    /// not kept for REQUEST SENSE).
    pub async fn execute(
        &self,
        cdb: &[u8],
        data: SgList<'_>,
        initiator: InitiatorId,
        delivery: SenseDelivery,
    ) -> ScsiResult {
        let result = self.run(cdb, &data, initiator).await;
        self.sense.finish(result, initiator, delivery)
    }

    /// Runs a READ or WRITE to completion without building a future, when
    /// the disk [completes inline] and nothing makes the command wait (a
    /// WRITE overlapping a COMPARE AND WRITE does): the I/O path's common
    /// case, with the same outcome as [`ScsiDisk::execute`]. `None` for
    /// anything else, with nothing done: run [`ScsiDisk::execute`].
    ///
    /// [completes inline]: parastor_core::DiskIo::completes_inline
    pub fn execute_now(
        &self,
        cdb: &[u8],
        data: &SgList<'_>,
        initiator: InitiatorId,
        delivery: SenseDelivery,
    ) -> Option<ScsiResult> {
        match self
            .disk
            .run_now(|_| self.read_write_now(cdb, data, initiator, delivery))?
        {
            Now::Done(r) => Some(r),
            Now::Waits | Now::Other => None,
        }
    }

    /// [`ScsiDisk::execute_now`] on a disk known to complete inline, with
    /// why a command was not run.
    pub(crate) fn read_write_now(
        &self,
        cdb: &[u8],
        data: &SgList<'_>,
        initiator: InitiatorId,
        delivery: SenseDelivery,
    ) -> Now {
        let (t, write) = match parse_cdb(cdb) {
            Ok(Command::Read(t)) => (t, false),
            Ok(Command::Write(t)) => (t, true),
            // These hold a range and may wait for another command's.
            Ok(
                Command::WriteAndVerify { .. }
                | Command::WriteSame { .. }
                | Command::Unmap { .. }
                | Command::CompareAndWrite(_)
                | Command::OrWrite(_),
            ) => return Now::Waits,
            _ => return Now::Other,
        };
        // Taken before anything is reported, so a fallback to `execute`
        // has not claimed the UNIT ATTENTION.
        let guard = if write {
            match self.ranges.try_shared(t.lba, t.blocks.into()) {
                Some(g) => Some(g),
                None => return Now::Waits,
            }
        } else {
            None
        };
        let opts = IoOptions {
            initiator,
            ..IoOptions::default()
        };
        let result = if self.claim_unit_attention() {
            Err(ScsiResult::check(unit_attention()))
        } else if let Some(ua) = self.attentions.take(initiator) {
            Err(ScsiResult::check(ua))
        } else {
            self.transfer_buffer(data, t).and_then(|buf| match buf {
                Some(buf) => self.transfer_inline(buf, t, write, opts),
                None => Ok(0),
            })
        };
        drop(guard);
        Now::Done(self.sense.finish(result, initiator, delivery))
    }

    /// Reports a capacity change once: true if this caller claimed it.
    fn claim_unit_attention(&self) -> bool {
        let now = self.disk.sector_count();
        let last = self.last_sector_count.load(Ordering::Acquire);
        now != last
            && self
                .last_sector_count
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    async fn run(&self, cdb: &[u8], data: &SgList<'_>, initiator: InitiatorId) -> Res {
        let cmd = parse_cdb(cdb).map_err(|e| ScsiResult::check(e.sense()))?;
        let opts = IoOptions {
            initiator,
            ..IoOptions::default()
        };
        match cmd {
            Command::Inquiry { .. } => {}
            Command::RequestSense { desc, alloc_len } => {
                let sense = if self.claim_unit_attention() {
                    Some(unit_attention())
                } else {
                    self.attentions
                        .take(initiator)
                        .or_else(|| self.sense.take(initiator))
                };
                return sense::request_sense(data, sense, desc, alloc_len.into());
            }
            _ => {
                if self.claim_unit_attention() {
                    return Err(ScsiResult::check(unit_attention()));
                }
                if let Some(ua) = self.attentions.take(initiator) {
                    return Err(ScsiResult::check(ua));
                }
            }
        }
        match cmd {
            Command::TestUnitReady | Command::NoOp(_) => Ok(0),
            Command::RequestSense { .. } => Ok(0),
            Command::Inquiry {
                evpd,
                page,
                alloc_len,
            } => self.inquiry(data, evpd, page, alloc_len.into()),
            Command::ReadCapacity10 => {
                read_capacity10(data, self.capacity(), self.disk.sector_size())
            }
            Command::ReadCapacity16 { alloc_len } => self.read_capacity16(data, alloc_len as usize),
            Command::GetLbaStatus { lba, alloc_len } => {
                self.get_lba_status(data, lba, alloc_len as usize)
            }
            Command::Read(t) => self.read_write(data, t, false, opts).await,
            Command::Write(t) => self.read_write(data, t, true, opts).await,
            Command::Verify { range, bytchk } => self.verify(data, range, bytchk, opts).await,
            Command::WriteAndVerify { range, bytchk } => {
                self.write_and_verify(data, range, bytchk, opts).await
            }
            Command::WriteSame {
                range,
                unmap,
                ndob,
                anchor,
            } => {
                // ANCHOR needs ANC_SUP, which VPD 0xB2 does not report.
                if anchor {
                    return Err(invalid_cdb());
                }
                self.write_same(data, range, unmap, ndob, opts).await
            }
            Command::Unmap { param_len, anchor } => {
                self.unmap(data, param_len.into(), anchor, opts).await
            }
            Command::SynchronizeCache { range, .. } => {
                self.check_cache_range(range)?;
                self.disk.flush(opts).await?;
                Ok(0)
            }
            Command::CompareAndWrite(t) => self.compare_and_write(data, t, opts).await,
            Command::OrWrite(t) => self.or_write(data, t, opts).await,
            Command::PreFetch { range, .. } => {
                // Nothing is cached, so nothing is fetched: SBC-4 answers
                // GOOD (not CONDITION MET) when the blocks do not fit in
                // the cache, and IMMED changes nothing.
                self.check_cache_range(range)?;
                Ok(0)
            }
            Command::ReadDefectData {
                plist,
                glist,
                format,
                alloc_len,
                long,
                ..
            } => read_defect_data(data, plist, glist, format, alloc_len as usize, long),
            Command::ModeSense {
                pc,
                page,
                subpage,
                alloc_len,
                long,
            } => self.mode_sense(data, pc, page, subpage, alloc_len.into(), long),
            Command::ModeSelect {
                pf,
                sp,
                param_len,
                long,
            } => self.mode_select(data, pf, sp, param_len.into(), long),
            Command::StartStopUnit {
                power_condition,
                loej,
                start,
                ..
            } => {
                if power_condition != 0 {
                    return Err(invalid_cdb());
                }
                if !start {
                    self.disk.flush(opts).await?;
                    if loej {
                        self.disk.eject().await?;
                    }
                }
                Ok(0)
            }
            Command::PersistentReserveIn {
                service_action,
                alloc_len,
            } => {
                self.pr_in(data, service_action, alloc_len.into(), initiator)
                    .await
            }
            Command::PersistentReserveOut {
                service_action,
                scope,
                kind,
                param_len,
            } => {
                self.pr_out(data, service_action, scope, kind, param_len, initiator)
                    .await
            }
            Command::ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                service_action,
                alloc_len,
            } => self.report_opcodes(
                data,
                rctd,
                options,
                opcode,
                service_action,
                alloc_len as usize,
            ),
            Command::SendDiagnostic {
                code,
                pf,
                selftest,
                param_len,
            } => {
                if code != 0 || pf || param_len != 0 {
                    return Err(invalid_cdb());
                }
                let _ = selftest;
                Ok(0)
            }
        }
    }

    /// Checks the range of SYNCHRONIZE CACHE or PRE-FETCH, where 0 blocks
    /// means "to the last block".
    fn check_cache_range(&self, range: Transfer) -> Res<()> {
        let cap = self.capacity();
        let end = range.lba.checked_add(range.blocks.into());
        if range.lba > cap || end.is_none_or(|e| e > cap) {
            return Err(DiskError::IllegalBlock.into());
        }
        Ok(())
    }

    /// Checks `[lba, lba + blocks)` against the capacity.
    fn check_range(&self, lba: u64, blocks: u64) -> Res<()> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.capacity() => Ok(()),
            _ => Err(DiskError::IllegalBlock.into()),
        }
    }

    /// Range, transfer-limit and buffer checks of a data transfer; the
    /// byte count on success.
    fn transfer_bytes(&self, data: &SgList<'_>, t: Transfer, buffer_blocks: u64) -> Res<usize> {
        self.check_range(t.lba, t.blocks.into())?;
        // SBC-4: over the MAXIMUM TRANSFER LENGTH is INVALID FIELD IN CDB.
        if t.blocks > self.max_transfer_blocks() {
            return Err(invalid_cdb());
        }
        let ss = u64::from(self.disk.sector_size());
        let bytes = u64::from(t.blocks) * ss;
        if buffer_blocks * ss > data.len() as u64 {
            return Err(invalid_cdb());
        }
        Ok(bytes as usize)
    }

    fn write_opts(&self, fua: bool, opts: IoOptions) -> IoOptions {
        IoOptions {
            fua: fua || !self.params.write_cache,
            ..opts
        }
    }

    /// The part of `data` a READ or WRITE `t` transfers, after the range,
    /// transfer-limit and buffer checks; `None` for a zero-length one.
    fn transfer_buffer<'d>(&self, data: &SgList<'d>, t: Transfer) -> Res<Option<SgList<'d>>> {
        let bytes = self.transfer_bytes(data, t, t.blocks.into())?;
        if bytes == 0 {
            return Ok(None);
        }
        data.subrange(0, bytes).map(Some).map_err(|_| invalid_cdb())
    }

    /// READ (`write` false) or WRITE `t`; a WRITE holds its range shared.
    async fn read_write(
        &self,
        data: &SgList<'_>,
        t: Transfer,
        write: bool,
        opts: IoOptions,
    ) -> Res {
        let Some(buf) = self.transfer_buffer(data, t)? else {
            return Ok(0);
        };
        let _g = if write {
            Some(self.ranges.shared(t.lba, t.blocks.into()).await)
        } else {
            None
        };
        // On a disk that completes inline: no future to build and move.
        if let Some(done) = self
            .disk
            .run_now(|_| self.transfer_inline(buf, t, write, opts))
        {
            return done;
        }
        let bytes = buf.len();
        if write {
            let opts = self.write_opts(t.fua, opts);
            self.disk.write(buf, t.lba, opts).await?;
        } else {
            self.disk.read(buf, t.lba, opts).await?;
        }
        Ok(bytes)
    }

    /// The disk I/O of READ or WRITE `t` on `buf` (its checked buffer), on
    /// a disk that [completes inline].
    ///
    /// [completes inline]: parastor_core::DiskIo::completes_inline
    fn transfer_inline(&self, buf: SgList<'_>, t: Transfer, write: bool, opts: IoOptions) -> Res {
        let bytes = buf.len();
        if write {
            self.disk
                .write_inline(buf, t.lba, self.write_opts(t.fua, opts))?;
        } else {
            self.disk.read_inline(buf, t.lba, opts)?;
        }
        Ok(bytes)
    }

    /// Scratch memory for a command over `blocks` blocks working on
    /// `regions` regions at once: one acquisition from the pool (waiting
    /// for room), regions of at most [`SCRATCH_CHUNK`] and at least one
    /// block. Taken before any range lock, so a command never waits for
    /// the pool while holding blocks another command waits for.
    async fn scratch(&self, blocks: u64, regions: usize) -> Res<Scratch> {
        let pool = self.scratch_pool();
        let shift = self.disk.sector_shift();
        let region_max = SCRATCH_CHUNK.min(pool.max_len() / regions);
        let per = ((region_max >> shift) as u64).min(blocks.max(1));
        if per == 0 {
            return Err(
                DiskError::Unsupported("scratch pool smaller than two logical blocks").into(),
            );
        }
        let region = (per << shift) as usize;
        let buf = pool
            .acquire(region * regions)
            .await
            .map_err(scratch_error)?;
        Ok(Scratch { buf, region, per })
    }

    async fn verify(&self, data: &SgList<'_>, t: Transfer, bytchk: u8, opts: IoOptions) -> Res {
        let buffer_blocks = match bytchk {
            0 => 0,
            1 => t.blocks.into(),
            _ => 1,
        };
        let bytes = self.transfer_bytes(data, t, buffer_blocks)?;
        if bytes == 0 {
            return Ok(0);
        }
        let ss = self.disk.sector_size() as usize;
        let shift = self.disk.sector_shift();
        let blocks = u64::from(t.blocks);
        // Region 0 receives the medium's blocks a chunk at a time; region
        // 1 holds what they are compared with: the data-out buffer's
        // matching chunk (BYTCHK 1) or its one block (BYTCHK 3).
        let s = self
            .scratch(blocks, if bytchk == 0 { 1 } else { 2 })
            .await?;
        if bytchk > 1 {
            s.with(|b| data_out(data, &mut b[s.region..s.region + ss]))??;
        }
        for (done, n) in chunks(blocks, s.per) {
            let (off, len) = ((done << shift) as usize, (n << shift) as usize);
            self.disk
                .read(s.sg(0, len, true)?, t.lba + done, opts)
                .await?;
            let mismatch = s.with(|b| -> Res<Option<usize>> {
                let (got, want) = b.split_at_mut(s.region);
                let got = &got[..len];
                Ok(match bytchk {
                    0 => None,
                    1 => {
                        let want = &mut want[..len];
                        data.subrange(off, len)
                            .map_err(|_| invalid_cdb())?
                            .read_all(want)
                            .map_err(mem_err)?;
                        first_mismatch(want, got).map(|i| off + i)
                    }
                    _ => got.chunks(ss).enumerate().find_map(|(k, blk)| {
                        first_mismatch(&want[..ss], blk).map(|i| off + k * ss + i)
                    }),
                })
            })??;
            if let Some(at) = mismatch {
                return Err(miscompare(at));
            }
        }
        Ok(match bytchk {
            0 => 0,
            1 => bytes,
            _ => ss,
        })
    }

    async fn write_and_verify(
        &self,
        data: &SgList<'_>,
        t: Transfer,
        bytchk: u8,
        opts: IoOptions,
    ) -> Res {
        let bytes = self.transfer_bytes(data, t, t.blocks.into())?;
        if bytes == 0 {
            return Ok(0);
        }
        // Stage a private copy (region 0): the guest may change its buffer
        // meanwhile, and the comparison must be against what was written.
        // Region 1 receives what the medium then holds.
        let shift = self.disk.sector_shift();
        let s = self.scratch(t.blocks.into(), 2).await?;
        let wopts = IoOptions { fua: true, ..opts };
        let _g = self.ranges.shared(t.lba, t.blocks.into()).await;
        for (done, n) in chunks(t.blocks.into(), s.per) {
            let (off, len) = ((done << shift) as usize, (n << shift) as usize);
            let src = data.subrange(off, len).map_err(|_| invalid_cdb())?;
            s.with(|b| src.read_all(&mut b[..len]))?.map_err(mem_err)?;
            self.disk
                .write(s.sg(0, len, false)?, t.lba + done, wopts)
                .await?;
            self.disk
                .read(s.sg(1, len, true)?, t.lba + done, opts)
                .await?;
            if bytchk == 1 {
                let m = s.with(|b| first_mismatch(&b[..len], &b[s.region..s.region + len]))?;
                if let Some(i) = m {
                    return Err(miscompare(off + i));
                }
            }
        }
        Ok(bytes)
    }

    async fn write_same(
        &self,
        data: &SgList<'_>,
        t: Transfer,
        unmap: bool,
        ndob: bool,
        opts: IoOptions,
    ) -> Res {
        if t.blocks == 0 || (unmap && !self.unmap) {
            // WSNZ is set: 0 blocks is not "to the end of the medium".
            return Err(invalid_cdb());
        }
        self.check_range(t.lba, t.blocks.into())?;
        let shift = self.disk.sector_shift();
        let ss = self.disk.sector_size() as usize;
        if u64::from(t.blocks) > self.max_write_same_blocks() {
            return Err(invalid_cdb());
        }
        if !ndob && data.len() < ss {
            return Err(invalid_cdb());
        }
        let blocks = u64::from(t.blocks);
        let s = self.scratch(blocks, 1).await?;
        // The block to write, read once into the scratch, then repeated
        // through the region.
        let zero = s.with(|b| -> Res<bool> {
            let (first, rest) = b[..s.region].split_at_mut(ss);
            if ndob {
                first.fill(0);
            } else {
                data_out(data, first)?;
            }
            for c in rest.chunks_mut(ss) {
                c.copy_from_slice(first);
            }
            Ok(first.iter().all(|&b| b == 0))
        })??;
        let tx = if ndob { 0 } else { ss };
        let _g = self.ranges.shared(t.lba, blocks).await;
        if unmap && zero && self.disk.unmap_behavior() == UnmapBehavior::Zeroes {
            self.disk.unmap(t.lba, blocks, opts).await?;
            return Ok(tx);
        }
        let wopts = self.write_opts(false, opts);
        for (done, n) in chunks(blocks, s.per) {
            self.disk
                .write(s.sg(0, (n << shift) as usize, false)?, t.lba + done, wopts)
                .await?;
        }
        Ok(tx)
    }

    async fn unmap(
        &self,
        data: &SgList<'_>,
        param_len: usize,
        anchor: bool,
        opts: IoOptions,
    ) -> Res {
        if !self.unmap {
            return Err(illegal(AdditionalSense::INVALID_COMMAND));
        }
        if anchor {
            // ANC_SUP is not reported.
            return Err(invalid_cdb());
        }
        if param_len == 0 {
            return Ok(0);
        }
        if param_len < size_of::<UnmapHeader>() {
            return Err(param_len_error());
        }
        // The list (up to 64 KiB: too large for a stack buffer in a
        // command's future) is read once into scratch memory, validated
        // whole, then carried out from that private copy.
        if data.len() < param_len {
            return Err(param_len_error());
        }
        let list = self
            .scratch_pool()
            .acquire(param_len)
            .await
            .map_err(scratch_error)?;
        let with_list = |f: &mut dyn FnMut(&mut [u8]) -> Res<usize>| -> Res<usize> {
            list.with_private_mut(|l| f(l)).ok_or_else(|| {
                ScsiResult::from(DiskError::Unsupported("scratch pool of non-private memory"))
            })?
        };
        // The descriptors' count, after the checks.
        let count = with_list(&mut |l| {
            data_out(data, l)?;
            let (hdr, rest) = UnmapHeader::read_from_prefix(&*l).map_err(|_| param_len_error())?;
            let desc_len = usize::from(hdr.desc_len.get()).min(rest.len());
            let count = desc_len / size_of::<UnmapDescriptor>();
            if count > MAX_UNMAP_DESCRIPTORS as usize {
                return Err(invalid_param());
            }
            let descs = <[UnmapDescriptor]>::ref_from_prefix_with_elems(rest, count)
                .map_err(|_| param_len_error())?
                .0;
            // SBC-4: descriptors naming more blocks in all than the MAXIMUM
            // UNMAP LBA COUNT are INVALID FIELD IN PARAMETER LIST (checked
            // as the sum grows, so one descriptor over the limit is caught
            // alone).
            let max_blocks = self.max_unmap_blocks();
            let mut total = 0u64;
            for d in descs {
                self.check_range(d.lba.get(), d.blocks.get().into())?;
                total += u64::from(d.blocks.get());
                if total > u64::from(max_blocks) {
                    return Err(invalid_param());
                }
            }
            Ok(count)
        })?;
        for i in 0..count {
            let at = size_of::<UnmapHeader>() + i * size_of::<UnmapDescriptor>();
            let mut d = (0u64, 0u64);
            with_list(&mut |l| {
                let (desc, _) =
                    UnmapDescriptor::read_from_prefix(&l[at..]).map_err(|_| param_len_error())?;
                d = (desc.lba.get(), desc.blocks.get().into());
                Ok(0)
            })?;
            let (lba, blocks) = d;
            if blocks == 0 {
                continue;
            }
            // One range at a time, never holding one while waiting for
            // the next.
            let _g = self.ranges.shared(lba, blocks).await;
            self.disk.unmap(lba, blocks, opts).await?;
        }
        Ok(param_len)
    }

    /// The MAXIMUM WRITE SAME LENGTH, in blocks:
    /// [`DiskParams::max_write_same_bytes`], at least one block and at most
    /// [`MAX_WRITE_SAME_BLOCKS`].
    fn max_write_same_blocks(&self) -> u64 {
        (self.params.max_write_same_bytes >> self.disk.sector_shift())
            .clamp(1, MAX_WRITE_SAME_BLOCKS)
    }

    /// The MAXIMUM UNMAP LBA COUNT: [`MAX_UNMAP_BYTES`] in blocks.
    fn max_unmap_blocks(&self) -> u32 {
        u32::try_from(MAX_UNMAP_BYTES >> self.disk.sector_shift()).unwrap_or(u32::MAX)
    }

    async fn compare_and_write(&self, data: &SgList<'_>, t: Transfer, opts: IoOptions) -> Res {
        if t.blocks > u32::from(MAX_COMPARE_AND_WRITE_BLOCKS) {
            return Err(invalid_cdb());
        }
        self.check_range(t.lba, t.blocks.into())?;
        if t.blocks == 0 {
            return Ok(0);
        }
        let shift = self.disk.sector_shift();
        let blocks = u64::from(t.blocks);
        let bytes = (t.blocks as usize) << shift;
        if data.len() < 2 * bytes {
            return Err(invalid_cdb());
        }
        // Region 0 receives the medium's blocks, region 1 the data-out
        // buffer's verify data; then region 0 stages the new data.
        let s = self.scratch(blocks, 2).await?;
        let _g = self.ranges.exclusive(t.lba, blocks).await;
        for (done, n) in chunks(blocks, s.per) {
            let (off, len) = ((done << shift) as usize, (n << shift) as usize);
            self.disk
                .read(s.sg(0, len, true)?, t.lba + done, opts)
                .await?;
            let mismatch = s.with(|b| -> Res<Option<usize>> {
                let (got, want) = b.split_at_mut(s.region);
                let want = &mut want[..len];
                data.subrange(off, len)
                    .map_err(|_| invalid_cdb())?
                    .read_all(want)
                    .map_err(|_| invalid_cdb())?;
                Ok(first_mismatch(want, &got[..len]).map(|i| off + i))
            })??;
            if let Some(i) = mismatch {
                return Err(miscompare(i));
            }
        }
        let wopts = self.write_opts(t.fua, opts);
        for (done, n) in chunks(blocks, s.per) {
            let (off, len) = ((done << shift) as usize, (n << shift) as usize);
            s.with(|b| {
                data.subrange(bytes + off, len)
                    .map_err(|_| invalid_cdb())?
                    .read_all(&mut b[..len])
                    .map_err(|_| invalid_cdb())
            })??;
            self.disk
                .write(s.sg(0, len, false)?, t.lba + done, wopts)
                .await?;
        }
        Ok(2 * bytes)
    }

    /// ORWRITE(16): each block becomes its old contents ORed with the
    /// data-out buffer's, with no other command's write in between (the
    /// range is held exclusively, as COMPARE AND WRITE holds it).
    async fn or_write(&self, data: &SgList<'_>, t: Transfer, opts: IoOptions) -> Res {
        let bytes = self.transfer_bytes(data, t, t.blocks.into())?;
        if bytes == 0 {
            return Ok(0);
        }
        if self.disk.is_read_only() {
            return Err(DiskError::ReadOnly.into());
        }
        // Region 0 receives the medium's blocks and becomes the result,
        // region 1 the data-out buffer's matching chunk.
        let shift = self.disk.sector_shift();
        let blocks = u64::from(t.blocks);
        let s = self.scratch(blocks, 2).await?;
        let _g = self.ranges.exclusive(t.lba, blocks).await;
        let wopts = self.write_opts(t.fua, opts);
        for (done, n) in chunks(blocks, s.per) {
            let (off, len) = ((done << shift) as usize, (n << shift) as usize);
            self.disk
                .read(s.sg(0, len, true)?, t.lba + done, opts)
                .await?;
            s.with(|b| -> Res<()> {
                let (old, new) = b.split_at_mut(s.region);
                let new = &mut new[..len];
                data.subrange(off, len)
                    .map_err(|_| invalid_cdb())?
                    .read_all(new)
                    .map_err(mem_err)?;
                for (o, n) in old[..len].iter_mut().zip(new.iter()) {
                    *o |= *n;
                }
                Ok(())
            })??;
            self.disk
                .write(s.sg(0, len, false)?, t.lba + done, wopts)
                .await?;
        }
        Ok(bytes)
    }

    fn read_capacity16(&self, data: &SgList<'_>, alloc_len: usize) -> Res {
        let ss = self.disk.sector_size();
        let phys = self.disk.physical_sector_size().max(ss);
        let exp = (phys / ss).trailing_zeros().min(15) as u8;
        let d = ReadCapacity16Data {
            last_lba: self.capacity().saturating_sub(1).into(),
            block_len: ss.into(),
            exponents: CapacityExponents::new().with_lb_per_pb(exp),
            provisioning: CapacityProvisioning::new()
                .with_lbpme(self.unmap)
                .with_lbprz(self.unmap && self.disk.unmap_behavior() == UnmapBehavior::Zeroes),
            ..Default::default()
        };
        data_in(data, d.as_bytes(), alloc_len)
    }

    fn get_lba_status(&self, data: &SgList<'_>, lba: u64, alloc_len: usize) -> Res {
        let cap = self.capacity();
        if lba >= cap {
            return Err(DiskError::IllegalBlock.into());
        }
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(
            LbaStatusHeader {
                data_len: 20.into(),
                ..Default::default()
            }
            .as_bytes(),
        );
        // The backend cannot be asked which blocks are mapped: report the
        // rest of the disk (up to one descriptor's reach) as mapped.
        let blocks = u32::try_from(cap - lba).unwrap_or(u32::MAX);
        out.extend_from_slice(
            LbaStatusDescriptor {
                lba: lba.into(),
                blocks: blocks.into(),
                ..Default::default()
            }
            .as_bytes(),
        );
        data_in(data, &out, alloc_len)
    }
}

/// READ DEFECT DATA(10) or (`long`) (12): a virtual disk has no defects,
/// so each list asked for (PLIST, GLIST) is returned, empty, in the format
/// asked for (an empty list fits every format); format 111b is reserved.
fn read_defect_data(
    data: &SgList<'_>,
    plist: bool,
    glist: bool,
    format: u8,
    alloc_len: usize,
    long: bool,
) -> Res {
    if format == 0b111 {
        return Err(invalid_cdb());
    }
    let flags = DefectListFlags::new()
        .with_req_plist(plist)
        .with_req_glist(glist)
        .with_format(format);
    if long {
        let h = DefectData12Header {
            flags,
            ..Default::default()
        };
        data_in(data, h.as_bytes(), alloc_len)
    } else {
        let h = DefectData10Header {
            flags,
            ..Default::default()
        };
        data_in(data, h.as_bytes(), alloc_len)
    }
}

/// `blocks` split into chunks of `per` (nonzero) blocks: `(first, count)`
/// of each, `first` counted from the start.
fn chunks(blocks: u64, per: u64) -> impl Iterator<Item = (u64, u64)> {
    let mut done = 0;
    core::iter::from_fn(move || {
        let n = per.min(blocks - done);
        (n > 0).then(|| {
            done += n;
            (done - n, n)
        })
    })
}

/// Offset of the first byte where `a` and `b` differ.
fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// MISCOMPARE sense with the offset of the first differing byte.
fn miscompare(offset: usize) -> ScsiResult {
    ScsiResult::check(SenseData {
        information: Some(offset as u64),
        ..SenseData::new(
            SenseKey::MISCOMPARE,
            AdditionalSense::MISCOMPARE_DURING_VERIFY,
        )
    })
}

/// The answer for a scratch pool that could not lend memory: out of
/// memory now is BUSY (retried); a request over the whole budget cannot
/// happen ([`ScsiDisk::scratch`] sizes requests to the pool).
fn scratch_error(e: AcquireError) -> ScsiResult {
    match e {
        AcquireError::Alloc(_) => DiskError::Busy("SCSI scratch memory").into(),
        AcquireError::TooLarge { .. } => {
            DiskError::Unsupported("command needs more scratch memory than the pool holds").into()
        }
    }
}
