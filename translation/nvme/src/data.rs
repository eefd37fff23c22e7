//! A command's data pointer turned into guest ranges: PRPs and SGLs
//! (NVMe Base 2.0 §4.1.1, §4.1.2), walked without copying data and without
//! allocating per command.
//!
//! The walkers fill a caller-owned `Vec<GpaRange>` (cleared first, its
//! capacity kept, so a queue's vector stops allocating after its first
//! largest command) with the command's data as guest ranges, adjacent ones
//! merged. Those ranges become the [`SgList`](parastor_core::SgList) a disk
//! reads into or writes from: the data moves once, between the disk and
//! guest memory.
//!
//! # Hostile pointers
//! Everything in a data pointer, a PRP list or an SGL segment is the
//! guest's and is read once. Every failure ends the walk with the status
//! the specification names, DNR set, and nothing else happens:
//! - a PRP entry whose bits 1:0 are set, a PRP list pointer whose bits
//!   2:0 are set, a PRP2 data pointer, PRP list entry or PRP list chain
//!   pointer with a nonzero page offset: *PRP Offset Invalid*;
//! - a PRP list page or SGL segment that cannot be read, or a data range
//!   that is not inside guest memory: *Data Transfer Error*;
//! - an SGL descriptor of a type or sub type a PCIe controller does not
//!   take (keyed, transport, vendor, reserved, offset addressing), or a
//!   bit bucket in data the host sends (a bit bucket discards data the
//!   controller returns; in a write it would leave holes in the written
//!   blocks): *SGL Descriptor Type Invalid*;
//! - a Segment or Last Segment descriptor whose length is zero or not a
//!   multiple of 16 or whose segment is not qword aligned, or a segment
//!   descriptor inside a last segment: *Invalid SGL Segment Descriptor*;
//! - a segment descriptor that is not the last of its segment, or an SGL
//!   with more than [`MAX_SGL_DESCRIPTORS`] descriptors in all: *Invalid
//!   Number of SGL Descriptors*;
//! - an SGL describing fewer or more bytes than the command transfers
//!   (parastor does not set SGLS bit 18, "SGL length larger than the data
//!   transferred"): *Data SGL Length Invalid*;
//! - a transfer longer than [`MAX_DATA_BYTES`]: *Invalid Field in Command*
//!   (the I/O path checks MDTS before this).
//!
//! The work is bounded: a PRP walk reads at most one entry per data page
//! (each chained list page holds at least one data entry after the first),
//! an SGL walk at most [`MAX_SGL_DESCRIPTORS`] descriptors, so a list that
//! loops back on itself ends in a status, never a hang.
//!
//! # Bit buckets
//! An SGL Bit Bucket descriptor on a read says "discard these bytes". Disks
//! and decorators may read back what they wrote into a read buffer (a
//! crypt layer decrypts sectors in place), so the discarded bytes must
//! behave like memory for the command's lifetime. Each bit bucket becomes a
//! range in a separate address window at [`BIT_BUCKET_BASE`], and
//! [`BucketMemory`] routes that window to a scratch buffer of
//! [`DataLayout::bucket_bytes`] bytes that the I/O path takes from its
//! bounce pool — a bounce for the rare bucket bytes only; the rest of the
//! transfer still goes straight to guest memory. Such a buffer cannot be
//! pinned for device DMA (the bucket window answers `pin` with
//! `Unsupported`), so a backend that DMAs bounces that one command.

use crate::error::{invalid, memory_error_status};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use parastor_core::memory::{Access, AtomicOp, GuestMemory, Width};
use parastor_core::pin::{PinError, PinSet};
use parastor_core::{DmaDomainId, Gpa, GpaRange, MemoryError, MemoryErrorKind};
use parastor_hw::nvme::data::{
    PRP_ENTRY_LEN, Prp2Use, SGL_DESCRIPTOR_LEN, SglDescriptor, SglError, prp_is_dword_aligned,
    prp_list_data_entries, prp_list_entries_in_page, prp_offset, prp1_len, prp2_use,
};
use parastor_hw::nvme::queue::{DataTransferKind, Sqe};
use parastor_hw::nvme::status::{GenericStatus, StatusWord};

/// The largest transfer any command may describe: a backstop for the
/// walkers (the I/O path enforces the smaller MDTS first, and admin
/// commands are bounded by their data structures).
pub(crate) const MAX_DATA_BYTES: u64 = 16 << 20;

/// Most SGL descriptors one command's SGL may hold, segment descriptors
/// included: bounds the walk of a hostile (for example looping) SGL.
/// Linux builds at most 128 data descriptors per command.
pub(crate) const MAX_SGL_DESCRIPTORS: u32 = 1024;

/// Where bit bucket ranges live in the [`BucketMemory`] address space: far
/// above any guest physical address (physical addresses have at most 52
/// bits).
pub(crate) const BIT_BUCKET_BASE: u64 = 1 << 63;

/// The Identify Controller SGLS value matching these walkers: SGLs
/// supported with no alignment or granularity requirement (bits 1:0 =
/// 01b) and the SGL Bit Bucket descriptor (bit 16). Not set: keyed SGLs,
/// metadata SGLs (bit 19), "SGL longer than the data" (bit 18), offset
/// addressing (bit 20).
pub(crate) const SGL_SUPPORT: u32 = 0b01 | 1 << 16;

/// Which way a command's data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Host to controller (Write, Compare, Dataset Management ranges,
    /// reservation data): the controller reads guest memory.
    ToController,
    /// Controller to host (Read, Identify, log pages, reports): the
    /// controller writes guest memory.
    ToHost,
}

impl Direction {
    fn access(self) -> Access {
        match self {
            Direction::ToController => Access::Read,
            Direction::ToHost => Access::Write,
        }
    }
}

/// What a walk found besides the ranges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DataLayout {
    /// Bytes of the transfer that go to SGL bit buckets (0 for PRPs): the
    /// ranges then need [`BucketMemory`] over a scratch buffer this long.
    pub bucket_bytes: u64,
}

/// The ranges of a command's data of `len` bytes, as CDW0.PSDT selects:
/// PRPs, or (if `sgl_supported`) an SGL in SGL1. A metadata pointer is
/// not used (namespaces have no metadata), so PSDT 01b and 10b both mean
/// "SGL for the data"; PSDT 11b is reserved.
pub(crate) fn command_ranges(
    mem: &dyn GuestMemory,
    page_size: u64,
    sgl_supported: bool,
    sqe: &Sqe,
    len: u64,
    dir: Direction,
    out: &mut Vec<GpaRange>,
) -> Result<DataLayout, StatusWord> {
    match sqe.cdw0.psdt() {
        DataTransferKind::PRP => {
            prp_ranges(mem, page_size, sqe.prp1(), sqe.prp2(), len, dir, out)?;
            Ok(DataLayout::default())
        }
        DataTransferKind::SGL_METADATA_BUFFER | DataTransferKind::SGL_METADATA_SEGMENT
            if sgl_supported =>
        {
            sgl_ranges(mem, &sqe.sgl1(), len, dir, out)
        }
        _ => {
            out.clear();
            Err(invalid(GenericStatus::INVALID_FIELD_IN_COMMAND))
        }
    }
}

/// The ranges of an admin command's data of `len` bytes: over PCIe, admin
/// commands use PRPs only, so PSDT must be 00b (else *Invalid Field in
/// Command*).
pub(crate) fn admin_ranges(
    mem: &dyn GuestMemory,
    page_size: u64,
    sqe: &Sqe,
    len: u64,
    dir: Direction,
    out: &mut Vec<GpaRange>,
) -> Result<(), StatusWord> {
    if sqe.cdw0.psdt() != DataTransferKind::PRP {
        out.clear();
        return Err(invalid(GenericStatus::INVALID_FIELD_IN_COMMAND));
    }
    prp_ranges(mem, page_size, sqe.prp1(), sqe.prp2(), len, dir, out)
}

/// Collects ranges, merging adjacent ones, and checks each against guest
/// memory once it is complete.
struct Ranges<'a> {
    mem: &'a dyn GuestMemory,
    access: Access,
    out: &'a mut Vec<GpaRange>,
    /// Whether the last range is a bit bucket (which is scratch, not the
    /// guest's: never checked against guest memory nor merged with it).
    last_is_bucket: bool,
}

impl<'a> Ranges<'a> {
    fn new(mem: &'a dyn GuestMemory, dir: Direction, out: &'a mut Vec<GpaRange>) -> Self {
        out.clear();
        Self {
            mem,
            access: dir.access(),
            out,
            last_is_bucket: false,
        }
    }

    /// Adds `len` bytes of guest memory at `gpa`. A range is checked
    /// against guest memory once it is complete (when the next one starts,
    /// and by [`Ranges::finish`]), so a contiguous buffer described page by
    /// page costs one check, not one per page.
    fn push(&mut self, gpa: u64, len: u64) -> Result<(), StatusWord> {
        if len == 0 {
            return Ok(());
        }
        // An address range that wraps is outside guest memory.
        if gpa.checked_add(len).is_none() {
            let e = MemoryError::new(Gpa::new(gpa), len, MemoryErrorKind::OutOfRange);
            return Err(memory_error_status(&e));
        }
        if let Some(last) = self.out.last_mut()
            && !self.last_is_bucket
            && last.gpa.get().checked_add(last.len) == Some(gpa)
        {
            // Bounded by the transfer length (at most MAX_DATA_BYTES).
            last.len += len;
            return Ok(());
        }
        self.check_last()?;
        self.out.push(GpaRange::new(Gpa::new(gpa), len));
        self.last_is_bucket = false;
        Ok(())
    }

    /// Adds `len` discarded bytes at `offset` of the bit bucket window.
    fn push_bucket(&mut self, offset: u64, len: u64) -> Result<(), StatusWord> {
        if len == 0 {
            return Ok(());
        }
        let gpa = BIT_BUCKET_BASE + offset;
        if let Some(last) = self.out.last_mut()
            && self.last_is_bucket
            && last.gpa.get() + last.len == gpa
        {
            last.len += len;
            return Ok(());
        }
        self.check_last()?;
        self.out.push(GpaRange::new(Gpa::new(gpa), len));
        self.last_is_bucket = true;
        Ok(())
    }

    /// Checks the last range; call when the walk is complete.
    fn finish(&self) -> Result<(), StatusWord> {
        self.check_last()
    }

    /// Checks the last range against guest memory (bit bucket ranges are
    /// scratch, sized by the walk, and need none).
    fn check_last(&self) -> Result<(), StatusWord> {
        let Some(&last) = self.out.last() else {
            return Ok(());
        };
        if self.last_is_bucket {
            return Ok(());
        }
        let in_window = last.gpa.get() < BIT_BUCKET_BASE
            && last.gpa.get().saturating_add(last.len) <= BIT_BUCKET_BASE;
        let checked = if in_window {
            self.mem.check(last, self.access)
        } else {
            Err(MemoryError::new(
                last.gpa,
                last.len,
                MemoryErrorKind::OutOfRange,
            ))
        };
        checked.map_err(|e| memory_error_status(&e))
    }

    fn fail(self, status: StatusWord) -> StatusWord {
        self.out.clear();
        status
    }
}

/// Walks PRP1/PRP2 (and the PRP lists PRP2 points at) for a transfer of
/// `len` bytes with memory pages of `page_size` bytes (CC.MPS; a power of
/// two of at least 4 KiB). `out` is cleared, then holds the data's ranges;
/// on failure it is left empty.
pub(crate) fn prp_ranges(
    mem: &dyn GuestMemory,
    page_size: u64,
    prp1: u64,
    prp2: u64,
    len: u64,
    dir: Direction,
    out: &mut Vec<GpaRange>,
) -> Result<(), StatusWord> {
    let mut r = Ranges::new(mem, dir, out);
    match walk_prps(&mut r, page_size, prp1, prp2, len).and_then(|()| r.finish()) {
        Ok(()) => Ok(()),
        Err(s) => Err(r.fail(s)),
    }
}

fn walk_prps(
    r: &mut Ranges<'_>,
    page_size: u64,
    prp1: u64,
    prp2: u64,
    len: u64,
) -> Result<(), StatusWord> {
    let offset_invalid = invalid(GenericStatus::PRP_OFFSET_INVALID);
    if len == 0 {
        return Ok(());
    }
    if len > MAX_DATA_BYTES || !page_size.is_power_of_two() || page_size < 4096 {
        return Err(invalid(GenericStatus::INVALID_FIELD_IN_COMMAND));
    }
    if !prp_is_dword_aligned(prp1) {
        return Err(offset_invalid);
    }
    let first = prp1_len(prp1, len, page_size);
    r.push(prp1, first)?;
    match prp2_use(prp1, len, page_size) {
        Prp2Use::Unused => Ok(()),
        Prp2Use::Data => {
            if prp_offset(prp2, page_size) != 0 {
                return Err(offset_invalid);
            }
            r.push(prp2, len - first)
        }
        Prp2Use::List => {
            // A list pointer may carry an offset, but one that starts an
            // 8-byte entry (chained list pages start at offset 0): a
            // dword-aligned one at the page's last 4 bytes would hold no
            // entry at all.
            if prp2 & (PRP_ENTRY_LEN - 1) != 0 {
                return Err(offset_invalid);
            }
            walk_prp_list(r, page_size, prp2, len - first, prp1, len)
        }
    }
}

/// Walks the PRP list at `list` for the `rest` bytes after PRP1's.
fn walk_prp_list(
    r: &mut Ranges<'_>,
    page_size: u64,
    mut list: u64,
    mut rest: u64,
    prp1: u64,
    len: u64,
) -> Result<(), StatusWord> {
    let offset_invalid = invalid(GenericStatus::PRP_OFFSET_INVALID);
    let mut need = prp_list_data_entries(prp1, len, page_size);
    // Entries are read a batch at a time into the stack, each exactly once.
    const BATCH: usize = 32;
    let mut batch = [0u8; BATCH * PRP_ENTRY_LEN as usize];
    while need > 0 {
        let in_page = prp_list_entries_in_page(list, page_size);
        if in_page == 0 {
            // Unreachable with a qword-aligned list pointer; never loop.
            return Err(offset_invalid);
        }
        // More entries than fit: the page's last entry chains to the next
        // list page.
        let chains = need > in_page;
        let data_here = if chains { in_page - 1 } else { need };
        let to_read = if chains { in_page } else { need };
        let mut done = 0u64;
        let mut next_list = None;
        while done < to_read {
            let n = (to_read - done).min(BATCH as u64) as usize;
            let bytes = &mut batch[..n * PRP_ENTRY_LEN as usize];
            let at = list
                .checked_add(done * PRP_ENTRY_LEN)
                .ok_or(invalid(GenericStatus::DATA_TRANSFER_ERROR))?;
            r.mem
                .read_at(Gpa::new(at), bytes)
                .map_err(|e| memory_error_status(&e))?;
            for (i, entry) in bytes.chunks_exact(PRP_ENTRY_LEN as usize).enumerate() {
                let mut e = [0u8; 8];
                e.copy_from_slice(entry);
                let entry = u64::from_le_bytes(e);
                if prp_offset(entry, page_size) != 0 {
                    return Err(offset_invalid);
                }
                if done + (i as u64) < data_here {
                    let take = rest.min(page_size);
                    r.push(entry, take)?;
                    rest -= take;
                } else {
                    next_list = Some(entry);
                }
            }
            done += n as u64;
        }
        need -= data_here;
        if let Some(next) = next_list {
            list = next;
        }
    }
    Ok(())
}

/// Walks the SGL whose first descriptor is `sgl1` for a transfer of `len`
/// bytes. `out` is cleared, then holds the data's ranges (bit buckets in
/// the [`BIT_BUCKET_BASE`] window); on failure it is left empty.
pub(crate) fn sgl_ranges(
    mem: &dyn GuestMemory,
    sgl1: &[u8; SGL_DESCRIPTOR_LEN],
    len: u64,
    dir: Direction,
    out: &mut Vec<GpaRange>,
) -> Result<DataLayout, StatusWord> {
    let mut r = Ranges::new(mem, dir, out);
    let mut walk = SglWalk {
        dir,
        len,
        total: 0,
        buckets: 0,
        descriptors: 1,
    };
    match walk.run(&mut r, sgl1).and_then(|()| r.finish()) {
        Ok(()) => Ok(DataLayout {
            bucket_bytes: walk.buckets,
        }),
        Err(s) => Err(r.fail(s)),
    }
}

struct SglWalk {
    dir: Direction,
    /// Bytes the command transfers.
    len: u64,
    /// Bytes described so far (data blocks and bit buckets).
    total: u64,
    /// Bytes of those in bit buckets.
    buckets: u64,
    /// Descriptors seen so far, SGL1 included.
    descriptors: u32,
}

/// The status for a descriptor the hw parser refused.
fn sgl_error_status(e: SglError) -> StatusWord {
    invalid(e.status())
}

impl SglWalk {
    fn run(
        &mut self,
        r: &mut Ranges<'_>,
        sgl1: &[u8; SGL_DESCRIPTOR_LEN],
    ) -> Result<(), StatusWord> {
        if self.len > MAX_DATA_BYTES {
            return Err(invalid(GenericStatus::INVALID_FIELD_IN_COMMAND));
        }
        let mut next = match SglDescriptor::parse(sgl1).map_err(sgl_error_status)? {
            SglDescriptor::Segment { address, length } => Some((address, length, false)),
            SglDescriptor::LastSegment { address, length } => Some((address, length, true)),
            data => {
                self.data(r, data)?;
                None
            }
        };
        while let Some((address, length, last)) = next.take() {
            next = self.segment(r, address, length, last)?;
        }
        if self.total != self.len {
            return Err(invalid(GenericStatus::DATA_SGL_LENGTH_INVALID));
        }
        Ok(())
    }

    /// Walks one segment of `length` bytes at `address`; returns the next
    /// segment, if it chains to one.
    fn segment(
        &mut self,
        r: &mut Ranges<'_>,
        address: u64,
        length: u32,
        last: bool,
    ) -> Result<Option<(u64, u32, bool)>, StatusWord> {
        // An SGL segment is qword aligned; the parser checked the length
        // (a nonzero multiple of 16).
        if address & 7 != 0 {
            return Err(invalid(GenericStatus::INVALID_SGL_SEGMENT_DESCRIPTOR));
        }
        let count = length / SGL_DESCRIPTOR_LEN as u32;
        self.descriptors = self
            .descriptors
            .checked_add(count)
            .filter(|&n| n <= MAX_SGL_DESCRIPTORS)
            .ok_or(invalid(GenericStatus::INVALID_NUMBER_OF_SGL_DESCRIPTORS))?;
        const BATCH: usize = 16;
        let mut batch = [0u8; BATCH * SGL_DESCRIPTOR_LEN];
        let mut next = None;
        let mut i = 0u32;
        while i < count {
            let n = (count - i).min(BATCH as u32) as usize;
            let bytes = &mut batch[..n * SGL_DESCRIPTOR_LEN];
            let at = address
                .checked_add(u64::from(i) * SGL_DESCRIPTOR_LEN as u64)
                .ok_or(invalid(GenericStatus::DATA_TRANSFER_ERROR))?;
            r.mem
                .read_at(Gpa::new(at), bytes)
                .map_err(|e| memory_error_status(&e))?;
            for (k, raw) in bytes.chunks_exact(SGL_DESCRIPTOR_LEN).enumerate() {
                let mut d = [0u8; SGL_DESCRIPTOR_LEN];
                d.copy_from_slice(raw);
                let is_last = i + k as u32 + 1 == count;
                match SglDescriptor::parse(&d).map_err(sgl_error_status)? {
                    SglDescriptor::Segment { .. } | SglDescriptor::LastSegment { .. } if last => {
                        // A last segment may not chain.
                        return Err(invalid(GenericStatus::INVALID_SGL_SEGMENT_DESCRIPTOR));
                    }
                    SglDescriptor::Segment { .. } | SglDescriptor::LastSegment { .. }
                        if !is_last =>
                    {
                        // A segment descriptor is only allowed last.
                        return Err(invalid(GenericStatus::INVALID_NUMBER_OF_SGL_DESCRIPTORS));
                    }
                    SglDescriptor::Segment { address, length } => {
                        next = Some((address, length, false))
                    }
                    SglDescriptor::LastSegment { address, length } => {
                        next = Some((address, length, true))
                    }
                    data => self.data(r, data)?,
                }
            }
            i += n as u32;
        }
        Ok(next)
    }

    /// Adds a data block or bit bucket.
    fn data(&mut self, r: &mut Ranges<'_>, d: SglDescriptor) -> Result<(), StatusWord> {
        let too_long = invalid(GenericStatus::DATA_SGL_LENGTH_INVALID);
        match d {
            SglDescriptor::DataBlock { address, length } => {
                let length = u64::from(length);
                let total = self.total + length;
                if total > self.len {
                    return Err(too_long);
                }
                r.push(address, length)?;
                self.total = total;
            }
            SglDescriptor::BitBucket { length } => {
                // Discarding only makes sense for data the host receives.
                if self.dir == Direction::ToController {
                    return Err(invalid(GenericStatus::SGL_DESCRIPTOR_TYPE_INVALID));
                }
                let length = u64::from(length);
                let total = self.total + length;
                if total > self.len {
                    return Err(too_long);
                }
                r.push_bucket(self.buckets, length)?;
                self.buckets += length;
                self.total = total;
            }
            SglDescriptor::Segment { .. } | SglDescriptor::LastSegment { .. } => {
                return Err(invalid(GenericStatus::INVALID_SGL_SEGMENT_DESCRIPTOR));
            }
        }
        Ok(())
    }
}

/// Guest memory plus a bit bucket window: addresses below
/// [`BIT_BUCKET_BASE`] are the guest's, addresses at and above it are
/// `scratch` (at offset `address - BIT_BUCKET_BASE`). A read whose SGL has
/// bit buckets runs over this memory; see the [module docs](self).
pub(crate) struct BucketMemory<'a> {
    guest: &'a dyn GuestMemory,
    scratch: &'a dyn GuestMemory,
}

impl<'a> BucketMemory<'a> {
    /// `guest` with its bit bucket window backed by `scratch`.
    pub(crate) fn new(guest: &'a dyn GuestMemory, scratch: &'a dyn GuestMemory) -> Self {
        Self { guest, scratch }
    }

    /// Where an access of `len` bytes at `gpa` goes: the guest, or the
    /// scratch buffer at the returned address.
    fn route(&self, gpa: Gpa, len: u64) -> Result<Option<Gpa>, MemoryError> {
        let a = gpa.get();
        if a < BIT_BUCKET_BASE {
            // Guest memory ends below the window (checked by the walkers).
            return Ok(None);
        }
        let off = a - BIT_BUCKET_BASE;
        match off.checked_add(len) {
            Some(_) => Ok(Some(Gpa::new(off))),
            None => Err(MemoryError::new(gpa, len, MemoryErrorKind::OutOfRange)),
        }
    }
}

impl GuestMemory for BucketMemory<'_> {
    fn extent(&self) -> Gpa {
        Gpa::new(u64::MAX)
    }

    fn read_at(&self, gpa: Gpa, dst: &mut [u8]) -> Result<(), MemoryError> {
        match self.route(gpa, dst.len() as u64)? {
            None => self.guest.read_at(gpa, dst),
            Some(at) => self.scratch.read_at(at, dst),
        }
    }

    fn write_at(&self, gpa: Gpa, src: &[u8]) -> Result<(), MemoryError> {
        match self.route(gpa, src.len() as u64)? {
            None => self.guest.write_at(gpa, src),
            Some(at) => self.scratch.write_at(at, src),
        }
    }

    fn fill_at(&self, gpa: Gpa, len: usize, byte: u8) -> Result<(), MemoryError> {
        match self.route(gpa, len as u64)? {
            None => self.guest.fill_at(gpa, len, byte),
            Some(at) => self.scratch.fill_at(at, len, byte),
        }
    }

    fn atomic(
        &self,
        gpa: Gpa,
        width: Width,
        op: AtomicOp,
        order: Ordering,
    ) -> Result<u64, MemoryError> {
        match self.route(gpa, width.bytes() as u64)? {
            None => self.guest.atomic(gpa, width, op, order),
            Some(at) => self.scratch.atomic(at, width, op, order),
        }
    }

    fn check(&self, range: GpaRange, access: Access) -> Result<(), MemoryError> {
        match self.route(range.gpa, range.len)? {
            None => self.guest.check(range, access),
            Some(at) => self.scratch.check(GpaRange::new(at, range.len), access),
        }
    }

    fn pin(
        &self,
        ranges: &[GpaRange],
        access: Access,
        domain: DmaDomainId,
        out: &mut PinSet,
    ) -> Result<(), PinError> {
        if ranges.iter().all(|r| r.gpa.get() < BIT_BUCKET_BASE) {
            self.guest.pin(ranges, access, domain, out)
        } else {
            // The scratch buffer is no guest memory a device can reach
            // through this mapping: the backend bounces.
            Err(PinError::Unsupported)
        }
    }
}

#[cfg(test)]
mod tests;
