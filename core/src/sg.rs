//! Scatter-gather lists: a request's data as several guest memory ranges.
//!
//! A guest request describes its data as a list of guest physical ranges
//! (StorVSP multi-range packets, NVMe PRP lists and SGLs). [`SgList`] is a
//! cheap, copyable *view* of such a list — a window `[offset, offset + len)`
//! over the concatenation of its ranges — so composite disks can hand each
//! member its part of a request with [`SgList::subrange`] without copying
//! or allocating. [`SgReader`] and [`SgWriter`] are cursors that move bytes
//! between the view and host buffers.

use crate::addr::{DmaDomainId, Gpa, GpaRange};
use crate::error::{DiskError, MemoryError, MemoryErrorKind};
use crate::memory::{Access, GuestMemory};
use crate::pin::{PinError, PinSet};
use alloc::vec::Vec;
use core::fmt;

/// Why a scatter-gather list could not be built or cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SgError {
    /// The ranges' total length does not fit in the address space, or a
    /// range wraps past the end of the GPA space.
    TooLong,
    /// A sub-range reaches past the end of the view.
    OutOfBounds {
        /// Requested offset.
        offset: usize,
        /// Requested length.
        len: usize,
        /// Length of the view it was cut from.
        available: usize,
    },
}

impl fmt::Display for SgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SgError::TooLong => f.write_str("scatter-gather list is longer than the address space"),
            SgError::OutOfBounds {
                offset,
                len,
                available,
            } => write!(
                f,
                "sub-range {offset}+{len} reaches past the end of a {available}-byte buffer"
            ),
        }
    }
}

impl core::error::Error for SgError {}

/// A view of a request's data buffer in guest memory.
///
/// `writable` says whether the device may write into the buffer: true for
/// buffers that receive data (reads), false for buffers that carry data to
/// the disk (writes) — so a decorator can never scribble on the data a
/// guest asked it to write.
#[derive(Clone, Copy)]
pub struct SgList<'a> {
    mem: &'a dyn GuestMemory,
    /// Ranges starting with the one that holds the first byte of the view.
    ranges: &'a [GpaRange],
    /// Bytes of `ranges[0]` before the view starts.
    skip: u64,
    len: usize,
    writable: bool,
}

impl fmt::Debug for SgList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SgList")
            .field("len", &self.len)
            .field("writable", &self.writable)
            .field("segments", &self.segments().collect::<Vec<_>>())
            .finish()
    }
}

impl<'a> SgList<'a> {
    /// A view of all of `ranges` in `mem`. Ranges are not checked against
    /// `mem` here; every access is.
    pub fn new(
        mem: &'a dyn GuestMemory,
        ranges: &'a [GpaRange],
        writable: bool,
    ) -> Result<Self, SgError> {
        let mut total: u64 = 0;
        for r in ranges {
            r.gpa.checked_add(r.len).ok_or(SgError::TooLong)?;
            total = total.checked_add(r.len).ok_or(SgError::TooLong)?;
        }
        let len = usize::try_from(total).map_err(|_| SgError::TooLong)?;
        Ok(Self {
            mem,
            ranges,
            skip: 0,
            len,
            writable,
        })
    }

    /// A view of one range `[0, len)` of host-local memory, whose length
    /// is already known to fit.
    pub fn local(mem: &'a dyn GuestMemory, range: &'a [GpaRange; 1], writable: bool) -> Self {
        let len = usize::try_from(range[0].len).unwrap_or(0);
        Self {
            mem,
            ranges: range,
            skip: 0,
            len,
            writable,
        }
    }

    /// Length of the view in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the device may write into this buffer.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The guest memory the view refers to.
    pub fn memory(&self) -> &'a dyn GuestMemory {
        self.mem
    }

    /// The same view, marked read-only for the device.
    pub fn read_only(self) -> Self {
        Self {
            writable: false,
            ..self
        }
    }

    /// The bytes `[offset, offset + len)` of this view.
    pub fn subrange(&self, offset: usize, len: usize) -> Result<Self, SgError> {
        let oob = SgError::OutOfBounds {
            offset,
            len,
            available: self.len,
        };
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => return Err(oob),
        }
        // Find the range holding byte `offset` of the view.
        let mut skip = self.skip + offset as u64;
        let mut first = 0;
        while first < self.ranges.len() && skip >= self.ranges[first].len && len > 0 {
            skip -= self.ranges[first].len;
            first += 1;
        }
        if len == 0 {
            return Ok(Self {
                ranges: &[],
                skip: 0,
                len: 0,
                ..*self
            });
        }
        Ok(Self {
            ranges: &self.ranges[first..],
            skip,
            len,
            ..*self
        })
    }

    /// The sub-view holding sectors `[first, first + count)` of this view,
    /// for sectors of `1 << shift` bytes: how composite disks hand a member
    /// its part of a request.
    pub(crate) fn sectors(&self, shift: u32, first: u64, count: u64) -> Result<Self, DiskError> {
        let bytes = |sectors: u64| {
            usize::try_from(sectors)
                .ok()
                .and_then(|s| s.checked_mul(1 << shift))
        };
        bytes(first)
            .zip(bytes(count))
            .and_then(|(offset, len)| self.subrange(offset, len).ok())
            .ok_or(DiskError::InvalidInput(
                "sub-request outside the request buffer",
            ))
    }

    /// The guest ranges this view covers, trimmed to the view.
    pub fn segments(&self) -> Segments<'a> {
        Segments {
            ranges: self.ranges,
            skip: self.skip,
            left: self.len as u64,
        }
    }

    /// Whether every segment's address and length are multiples of
    /// `alignment` (a power of two), so the buffer can be handed to hardware
    /// that needs aligned DMA.
    pub fn is_aligned(&self, alignment: u64) -> bool {
        let mask = alignment.wrapping_sub(1);
        self.segments().all(|r| (r.gpa.get() | r.len) & mask == 0)
    }

    /// A cursor reading the view from its start.
    pub fn reader(&self) -> SgReader<'a> {
        SgReader {
            segs: self.segments(),
            mem: self.mem,
            pos: 0,
            len: self.len,
        }
    }

    /// A cursor writing the view from its start; fails if the buffer is not
    /// writable by the device.
    pub fn writer(&self) -> Result<SgWriter<'a>, MemoryError> {
        if !self.writable {
            let gpa = self.segments().next().map_or(Gpa::ZERO, |r| r.gpa);
            return Err(MemoryError::new(
                gpa,
                self.len as u64,
                MemoryErrorKind::WriteProtected,
            ));
        }
        Ok(SgWriter {
            segs: self.segments(),
            mem: self.mem,
            pos: 0,
            len: self.len,
        })
    }

    /// Copies the whole view into `dst` (which must be exactly as long).
    pub fn read_all(&self, dst: &mut [u8]) -> Result<(), MemoryError> {
        self.reader().read(dst)
    }

    /// Copies `src` (exactly as long as the view) into the view.
    pub fn write_all(&self, src: &[u8]) -> Result<(), MemoryError> {
        self.writer()?.write(src)
    }

    /// Fills the whole view with zeros.
    pub fn zero(&self) -> Result<(), MemoryError> {
        self.writer()?.fill(0, self.len)
    }

    /// Pins every segment of the view for `access` by a device in
    /// `domain`, replacing what `out` held: on success `out` holds one
    /// device range per guest range of the memory's choosing, in order. On
    /// failure `out` is left empty; see [`PinError`] for which errors mean
    /// "bounce" and which "fail the request". A view that asks for device
    /// writes must be writable.
    pub fn pin(
        &self,
        access: Access,
        domain: DmaDomainId,
        out: &mut PinSet,
    ) -> Result<(), PinError> {
        out.clear();
        if access != Access::Read && !self.writable {
            let gpa = self.segments().next().map_or(Gpa::ZERO, |r| r.gpa);
            let e = MemoryError::new(gpa, self.len as u64, MemoryErrorKind::WriteProtected);
            return Err(PinError::Memory(e));
        }
        for seg in self.segments() {
            if let Err(e) = self.mem.pin(&[seg], access, domain, out) {
                out.clear();
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Iterator over the trimmed guest ranges of an [`SgList`].
#[derive(Clone)]
pub struct Segments<'a> {
    ranges: &'a [GpaRange],
    skip: u64,
    left: u64,
}

impl Iterator for Segments<'_> {
    type Item = GpaRange;

    fn next(&mut self) -> Option<GpaRange> {
        while self.left > 0 {
            let (r, rest) = self.ranges.split_first()?;
            self.ranges = rest;
            let skip = core::mem::take(&mut self.skip);
            let avail = r.len - skip.min(r.len);
            if avail == 0 {
                continue;
            }
            let n = avail.min(self.left);
            self.left -= n;
            return Some(GpaRange {
                gpa: r.gpa + skip,
                len: n,
            });
        }
        None
    }
}

/// An access past the end of the view: `gpa` carries the offset into the
/// view.
fn beyond(pos: usize, want: usize) -> MemoryError {
    MemoryError::new(
        Gpa::new(pos as u64),
        want as u64,
        MemoryErrorKind::BeyondBuffer,
    )
}

impl Segments<'_> {
    /// Advances `n` bytes (at most what is left), calling `f(gpa, len)` for
    /// each contiguous piece passed over.
    fn advance(
        &mut self,
        mut n: u64,
        mut f: impl FnMut(Gpa, usize) -> Result<(), MemoryError>,
    ) -> Result<(), MemoryError> {
        n = n.min(self.left);
        while n > 0 {
            let Some(r) = self.ranges.first() else { break };
            let avail = r.len.saturating_sub(self.skip);
            if avail == 0 {
                self.ranges = &self.ranges[1..];
                self.skip = 0;
                continue;
            }
            let k = avail.min(n);
            f(r.gpa + self.skip, k as usize)?;
            self.skip += k;
            self.left -= k;
            n -= k;
        }
        Ok(())
    }
}

/// A read cursor over an [`SgList`].
pub struct SgReader<'a> {
    segs: Segments<'a>,
    mem: &'a dyn GuestMemory,
    pos: usize,
    len: usize,
}

impl SgReader<'_> {
    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.len - self.pos
    }

    /// Copies the next `dst.len()` bytes into `dst`.
    pub fn read(&mut self, dst: &mut [u8]) -> Result<(), MemoryError> {
        let n = dst.len();
        if n > self.remaining() {
            return Err(beyond(self.pos, n));
        }
        let mem = self.mem;
        let mut done = 0;
        self.segs.advance(n as u64, |gpa, k| {
            let piece = &mut dst[done..done + k];
            done += k;
            mem.read_at(gpa, piece)
        })?;
        self.pos += n;
        Ok(())
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Result<(), MemoryError> {
        if n > self.remaining() {
            return Err(beyond(self.pos, n));
        }
        self.segs.advance(n as u64, |_, _| Ok(()))?;
        self.pos += n;
        Ok(())
    }
}

/// A write cursor over an [`SgList`].
pub struct SgWriter<'a> {
    segs: Segments<'a>,
    mem: &'a dyn GuestMemory,
    pos: usize,
    len: usize,
}

impl SgWriter<'_> {
    /// Bytes not yet written.
    pub fn remaining(&self) -> usize {
        self.len - self.pos
    }

    /// Copies `src` into the next `src.len()` bytes.
    pub fn write(&mut self, src: &[u8]) -> Result<(), MemoryError> {
        let n = src.len();
        if n > self.remaining() {
            return Err(beyond(self.pos, n));
        }
        let mem = self.mem;
        let mut done = 0;
        self.segs.advance(n as u64, |gpa, k| {
            let piece = &src[done..done + k];
            done += k;
            mem.write_at(gpa, piece)
        })?;
        self.pos += n;
        Ok(())
    }

    /// Sets the next `n` bytes to `byte`.
    pub fn fill(&mut self, byte: u8, n: usize) -> Result<(), MemoryError> {
        if n > self.remaining() {
            return Err(beyond(self.pos, n));
        }
        let mem = self.mem;
        self.segs
            .advance(n as u64, |gpa, k| mem.fill_at(gpa, k, byte))?;
        self.pos += n;
        Ok(())
    }

    /// Skips `n` bytes, leaving them unchanged.
    pub fn skip(&mut self, n: usize) -> Result<(), MemoryError> {
        if n > self.remaining() {
            return Err(beyond(self.pos, n));
        }
        self.segs.advance(n as u64, |_, _| Ok(()))?;
        self.pos += n;
        Ok(())
    }
}

/// Copies `src` into `dst` (views of equal length; `dst` must be
/// writable).
///
/// Segment by segment with [`memory::copy`](crate::memory::copy): straight
/// from memory to memory where the memories under both views can do that
/// (mapped guest RAM on both sides), else through a stack buffer. `src`
/// and `dst` may overlap in the same guest memory (the result is then as
/// if each segment pair were read before it is written).
pub fn copy(src: &SgList<'_>, dst: &SgList<'_>) -> Result<(), MemoryError> {
    if src.len() != dst.len() {
        return Err(beyond(src.len().min(dst.len()), src.len().max(dst.len())));
    }
    // The same refusal a writer gives a read-only view.
    dst.writer()?;
    let (mut from, mut to) = (src.segments(), dst.segments());
    let (mut a, mut b) = (from.next(), to.next());
    while let (Some(sa), Some(sb)) = (a.as_mut(), b.as_mut()) {
        let n = sa.len.min(sb.len);
        // `n` is at most the views' length, a `usize`.
        crate::memory::copy(src.mem, sa.gpa, dst.mem, sb.gpa, n as usize)?;
        (sa.gpa, sa.len) = (sa.gpa + n, sa.len - n);
        (sb.gpa, sb.len) = (sb.gpa + n, sb.len - n);
        if sa.len == 0 {
            a = from.next();
        }
        if sb.len == 0 {
            b = to.next();
        }
    }
    Ok(())
}

/// An owned scatter-gather list, for building requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedSgList {
    ranges: Vec<GpaRange>,
}

impl OwnedSgList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// A list holding `ranges`.
    pub fn from_ranges(ranges: Vec<GpaRange>) -> Self {
        Self { ranges }
    }

    /// Appends a range.
    pub fn push(&mut self, range: GpaRange) {
        self.ranges.push(range);
    }

    /// The ranges.
    pub fn ranges(&self) -> &[GpaRange] {
        &self.ranges
    }

    /// A view of the list in `mem`.
    pub fn view<'a>(
        &'a self,
        mem: &'a dyn GuestMemory,
        writable: bool,
    ) -> Result<SgList<'a>, SgError> {
        SgList::new(mem, &self.ranges, writable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::RamGuestMemory;
    use alloc::vec;

    #[test]
    fn multi_range_views_and_cursors() {
        let mem = RamGuestMemory::new(1 << 20);
        let ranges = [
            GpaRange::new(Gpa::new(100), 10),
            GpaRange::new(Gpa::new(5000), 0),
            GpaRange::new(Gpa::new(9000), 30),
            GpaRange::new(Gpa::new(70000), 24),
        ];
        let sg = SgList::new(&mem, &ranges, true).unwrap();
        assert_eq!(sg.len(), 64);
        let data: Vec<u8> = (0..64).collect();
        sg.write_all(&data).unwrap();
        let mut back = [0u8; 64];
        sg.read_all(&mut back).unwrap();
        assert_eq!(&back[..], &data[..]);
        let mut raw = [0u8; 4];
        mem.read_at(Gpa::new(9000), &mut raw).unwrap();
        assert_eq!(raw, [10, 11, 12, 13]);

        let mid = sg.subrange(8, 40).unwrap();
        assert_eq!(
            mid.segments().collect::<Vec<_>>(),
            [
                GpaRange::new(Gpa::new(108), 2),
                GpaRange::new(Gpa::new(9000), 30),
                GpaRange::new(Gpa::new(70000), 8)
            ]
        );
        let mut m = vec![0u8; 40];
        mid.read_all(&mut m).unwrap();
        assert_eq!(m, data[8..48]);
        let inner = mid.subrange(2, 30).unwrap();
        assert_eq!(
            inner.segments().collect::<Vec<_>>(),
            [GpaRange::new(Gpa::new(9000), 30)]
        );
        assert!(sg.subrange(60, 5).is_err());
        assert!(sg.subrange(usize::MAX, 2).is_err());
        assert_eq!(sg.subrange(64, 0).unwrap().len(), 0);
        // Sector views (16-byte "sectors" here): in range, past the end,
        // and sector numbers whose byte offset overflows.
        let s = sg.sectors(4, 1, 2).unwrap();
        assert_eq!(
            s.segments().collect::<Vec<_>>(),
            mid.subrange(8, 32).unwrap().segments().collect::<Vec<_>>()
        );
        assert!(sg.sectors(4, 3, 2).is_err());
        assert!(sg.sectors(4, u64::MAX >> 2, 1).is_err());
        assert!(sg.sectors(4, 0, u64::MAX).is_err());

        let mut r = sg.reader();
        r.skip(9).unwrap();
        let mut two = [0u8; 2];
        r.read(&mut two).unwrap();
        assert_eq!(two, [9, 10]);
        assert_eq!(r.remaining(), 53);
        assert!(r.skip(54).is_err());

        let mut w = sg.writer().unwrap();
        w.skip(10).unwrap();
        w.fill(0xee, 30).unwrap();
        mem.read_at(Gpa::new(9000), &mut raw).unwrap();
        assert_eq!(raw, [0xee; 4]);
        assert!(w.fill(0, 25).is_err());

        assert!(sg.read_only().writer().is_err());
        assert!(!sg.is_aligned(4));
        let aligned = [
            GpaRange::new(Gpa::new(4096), 4096),
            GpaRange::new(Gpa::new(16384), 512),
        ];
        assert!(SgList::new(&mem, &aligned, false).unwrap().is_aligned(512));
        assert!(!SgList::new(&mem, &aligned, false).unwrap().is_aligned(4096));
    }

    #[test]
    fn hostile_ranges_are_rejected() {
        let mem = RamGuestMemory::new(4096);
        let wrap = [GpaRange::new(Gpa::new(u64::MAX - 1), 4)];
        assert_eq!(
            SgList::new(&mem, &wrap, true).unwrap_err(),
            SgError::TooLong
        );
        let huge = [
            GpaRange::new(Gpa::new(0), u64::MAX / 2),
            GpaRange::new(Gpa::new(0), u64::MAX / 2 + 2),
        ];
        assert_eq!(
            SgList::new(&mem, &huge, true).unwrap_err(),
            SgError::TooLong
        );
        let outside = [GpaRange::new(Gpa::new(4000), 200)];
        let sg = SgList::new(&mem, &outside, true).unwrap();
        assert_eq!(sg.zero().unwrap_err().kind, MemoryErrorKind::OutOfRange);
    }

    #[test]
    fn copy_within_one_memory() {
        let mem = RamGuestMemory::new(1 << 17);
        let a = [GpaRange::new(Gpa::new(0), 3000)];
        let b = [
            GpaRange::new(Gpa::new(65530), 1000),
            GpaRange::new(Gpa::new(10), 2000),
        ];
        let src = SgList::new(&mem, &a, false).unwrap();
        let dst = SgList::new(&mem, &b, true).unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        mem.write_at(Gpa::new(0), &data).unwrap();
        copy(&src, &dst).unwrap();
        let mut back = vec![0u8; 3000];
        dst.read_all(&mut back).unwrap();
        assert_eq!(back, data);
    }

    /// Copies larger than one piece of the staging buffer, small and
    /// large, scattered on both sides, land whole and in order.
    #[test]
    fn copy_in_many_pieces() {
        let mem = RamGuestMemory::new(1 << 20);
        for len in [4096u64, 4097, 40_000] {
            let a = [
                GpaRange::new(Gpa::new(3), len / 3),
                GpaRange::new(Gpa::new(200_001), len - len / 3),
            ];
            let b = [
                GpaRange::new(Gpa::new(500_000), len / 2 + 5),
                GpaRange::new(Gpa::new(700_123), len - len / 2 - 5),
            ];
            let src = SgList::new(&mem, &a, false).unwrap();
            let dst = SgList::new(&mem, &b, true).unwrap();
            let data: Vec<u8> = (0..len).map(|i| (i * 13 + i / 256) as u8).collect();
            let mut at = 0usize;
            for r in &a {
                mem.write_at(r.gpa, &data[at..at + r.len as usize]).unwrap();
                at += r.len as usize;
            }
            copy(&src, &dst).unwrap();
            let mut back = vec![0u8; len as usize];
            dst.read_all(&mut back).unwrap();
            assert!(back == data, "copy of {len} bytes");
        }
    }

    #[test]
    fn inaccessible_is_not_out_of_range() {
        use crate::error::Denied;
        use crate::faulty::FaultyMemory;
        let mem = FaultyMemory::new(RamGuestMemory::new(4 * 4096));
        mem.deny(GpaRange::new(Gpa::new(2 * 4096), 4096), Denied::Private);
        let ranges = [
            GpaRange::new(Gpa::new(100), 200),
            GpaRange::new(Gpa::new(2 * 4096 - 8), 16),
        ];
        let sg = SgList::new(&mem, &ranges, true).unwrap();
        let mut b = [0u8; 216];
        let e = sg.read_all(&mut b).unwrap_err();
        assert_eq!(e.kind, MemoryErrorKind::Inaccessible(Denied::Private));
        assert_eq!(e.gpa, Gpa::new(2 * 4096));
        let e = sg.zero().unwrap_err();
        assert_eq!(e.kind, MemoryErrorKind::Inaccessible(Denied::Private));
        // The first range alone is fine; past the end is out of range.
        sg.subrange(0, 200).unwrap().zero().unwrap();
        let far = [GpaRange::new(Gpa::new(4 * 4096 - 8), 16)];
        let e = SgList::new(&mem, &far, true).unwrap().zero().unwrap_err();
        assert_eq!(e.kind, MemoryErrorKind::OutOfRange);
    }

    /// Memory that pins by identity (device address = GPA) in one domain
    /// and counts what is pinned.
    struct PinnableMemory {
        ram: RamGuestMemory,
        owner: alloc::sync::Arc<dyn crate::pin::PinOwner>,
    }

    #[derive(Default)]
    struct Counter(core::sync::atomic::AtomicU64);

    impl crate::pin::PinOwner for Counter {
        fn unpin(&self, ranges: &[crate::addr::DeviceRange]) {
            let n = ranges.len() as u64;
            self.0.fetch_sub(n, core::sync::atomic::Ordering::SeqCst);
        }
    }

    impl GuestMemory for PinnableMemory {
        fn extent(&self) -> Gpa {
            self.ram.extent()
        }
        fn read_at(&self, gpa: Gpa, dst: &mut [u8]) -> Result<(), MemoryError> {
            self.ram.read_at(gpa, dst)
        }
        fn write_at(&self, gpa: Gpa, src: &[u8]) -> Result<(), MemoryError> {
            self.ram.write_at(gpa, src)
        }
        fn fill_at(&self, gpa: Gpa, len: usize, byte: u8) -> Result<(), MemoryError> {
            self.ram.fill_at(gpa, len, byte)
        }
        fn atomic(
            &self,
            gpa: Gpa,
            width: crate::memory::Width,
            op: crate::memory::AtomicOp,
            order: core::sync::atomic::Ordering,
        ) -> Result<u64, MemoryError> {
            self.ram.atomic(gpa, width, op, order)
        }
        fn pin(
            &self,
            ranges: &[GpaRange],
            access: Access,
            domain: DmaDomainId,
            out: &mut PinSet,
        ) -> Result<(), PinError> {
            if domain != DmaDomainId::new(7) {
                return Err(PinError::Unsupported);
            }
            let mut dev = [crate::addr::DeviceRange::new(crate::addr::DeviceAddress::new(0), 0); 1];
            for r in ranges {
                self.check(*r, access)?;
                dev[0] = crate::addr::DeviceRange::new(
                    crate::addr::DeviceAddress::new(r.gpa.get()),
                    r.len,
                );
                out.push(&self.owner, domain, &dev)?;
                let counter: &dyn core::any::Any = &*self.owner;
                if let Some(c) = counter.downcast_ref::<Counter>() {
                    c.0.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
                }
            }
            Ok(())
        }
    }

    #[test]
    fn pinning_gives_device_ranges_or_says_bounce() {
        use crate::addr::{DeviceAddress, DeviceRange};
        use core::sync::atomic::Ordering;
        // Memory that cannot pin: bounce.
        let ram = RamGuestMemory::new(1 << 20);
        let ranges = [
            GpaRange::new(Gpa::new(4096), 512),
            GpaRange::new(Gpa::new(9000), 100),
        ];
        let mut pins = PinSet::with_capacity(2);
        let sg = SgList::new(&ram, &ranges, true).unwrap();
        assert_eq!(
            sg.pin(Access::Write, DmaDomainId::KERNEL, &mut pins),
            Err(PinError::Unsupported)
        );
        assert!(pins.is_empty());

        let mem = PinnableMemory {
            ram,
            owner: alloc::sync::Arc::new(Counter::default()),
        };
        let count = || {
            let any: &dyn core::any::Any = &*mem.owner;
            any.downcast_ref::<Counter>()
                .unwrap()
                .0
                .load(Ordering::SeqCst)
        };
        let sg = SgList::new(&mem, &ranges, true).unwrap();
        // The trimmed view's segments, in order, in the memory's domain.
        sg.subrange(10, 600)
            .unwrap()
            .pin(Access::Write, DmaDomainId::new(7), &mut pins)
            .unwrap();
        assert_eq!(
            pins.ranges(),
            [
                DeviceRange::new(DeviceAddress::new(4106), 502),
                DeviceRange::new(DeviceAddress::new(9000), 98)
            ]
        );
        assert_eq!(pins.domain(), Some(DmaDomainId::new(7)));
        assert!(pins.owner_as::<Counter>().is_some(), "provenance by type");
        assert_eq!(count(), 2);
        // Re-pinning replaces (unpins) what the set held.
        sg.subrange(0, 100)
            .unwrap()
            .pin(Access::Read, DmaDomainId::new(7), &mut pins)
            .unwrap();
        assert_eq!(count(), 1);
        // Another domain: bounce, and nothing stays pinned.
        assert_eq!(
            sg.pin(Access::Read, DmaDomainId::KERNEL, &mut pins),
            Err(PinError::Unsupported)
        );
        assert_eq!(count(), 0);
        // More ranges than the set holds: bounce, nothing pinned.
        let mut small = PinSet::with_capacity(1);
        assert_eq!(
            sg.pin(Access::Read, DmaDomainId::new(7), &mut small),
            Err(PinError::TooManyRanges)
        );
        assert_eq!(count(), 0);
        // A device write into a buffer that carries data to the disk.
        let e = sg
            .read_only()
            .pin(Access::Write, DmaDomainId::new(7), &mut pins)
            .unwrap_err();
        assert!(matches!(e, PinError::Memory(m) if m.kind == MemoryErrorKind::WriteProtected));
        // Outside guest memory: a failed request, not a bounce.
        let outside = [GpaRange::new(Gpa::new(1 << 20), 16)];
        let e = SgList::new(&mem, &outside, true)
            .unwrap()
            .pin(Access::Read, DmaDomainId::new(7), &mut pins)
            .unwrap_err();
        assert!(matches!(e, PinError::Memory(m) if m.kind == MemoryErrorKind::OutOfRange));
        // Dropping the set unpins.
        sg.pin(Access::Read, DmaDomainId::new(7), &mut pins)
            .unwrap();
        assert_eq!(count(), 2);
        drop(pins);
        assert_eq!(count(), 0);
    }
}
