//! [`GuestRam`]: guest physical memory made of [`MappedRegion`]s placed at
//! guest physical addresses — the memory the emulated VM, the bench and the
//! service run on.
//!
//! No `unsafe` here: every byte is reached through the regions' copies and
//! atomics. Accesses take no lock: the layout is fixed at construction, and
//! the optional access map is one atomic byte per page.

use crate::error::AccessError;
use crate::mmap::MappedRegion;
use parastor_core::{
    Access, AtomicOp, Denied, DeviceAddress, DeviceRange, DmaDomainId, Gpa, GpaRange, GuestMemory,
    LocalMemory, MemoryError, MemoryErrorKind, PinError, PinOwner, PinSet, Width,
};
use std::any::Any;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// The granule of [`GuestRam`]'s access map: a guest page.
pub const GUEST_PAGE_SIZE: u64 = 4096;

/// Guest physical memory over one or more [`MappedRegion`]s, each placed at
/// a GPA; lock-free.
///
/// GPAs below [`extent`](GuestMemory::extent) that no region covers are
/// holes: accesses to them fail with
/// [`MemoryErrorKind::Inaccessible`]`(`[`Denied::Unmapped`]`)` without
/// touching anything. So do pages switched off in the optional access map
/// ([`with_access_map`](Self::with_access_map),
/// [`set_accessible`](Self::set_accessible)), which is how a page can be
/// taken away from the device side (in tests: a page that is also
/// `PROT_NONE` proves it is never touched).
///
/// Atomics are the mappings' own atomic instructions. [`AtomicOp::Store`]
/// is a plain atomic store (no exchange), so its returned value is 0, not
/// the previous one; use [`AtomicOp::Swap`] to learn that.
///
/// `GuestRam` can [`pin`](GuestMemory::pin) for [`DmaDomainId::KERNEL`]:
/// the device addresses are host virtual addresses of the mappings, which
/// the kernel reads and writes directly in
/// [`io::preadv_exact`](crate::io::preadv_exact) and
/// [`io::pwritev_all`](crate::io::pwritev_all).
#[derive(Clone)]
pub struct GuestRam {
    /// The layout; also the owner of every pin (see [`Layout`]).
    layout: Arc<Layout>,
    /// `layout` as a pin owner (the same allocation), so a pin costs one
    /// reference count increment.
    owner: Arc<dyn PinOwner>,
}

/// What a [`GuestRam`] is made of. It is the [`PinOwner`] of the ranges
/// `GuestRam` pins, which is what makes [`KernelPins`](crate::KernelPins)
/// trustworthy: only this crate can create one, and a pin set whose owner
/// is one holds (an `Arc` of) the mappings its addresses point into.
pub(crate) struct Layout {
    /// The regions, sorted by GPA, not overlapping.
    regions: Box<[Placed]>,
    /// The first GPA past the memory.
    extent: u64,
    /// One byte per guest page of `[0, extent)`: nonzero while accessible.
    access: Option<Box<[AtomicU8]>>,
}

/// One region and where it sits.
#[derive(Clone)]
pub(crate) struct Placed {
    /// The GPA of the region's first byte.
    start: u64,
    /// The first GPA past the region.
    end: u64,
    /// The mapping.
    pub(crate) region: Arc<MappedRegion>,
}

/// Why a [`GuestRam`] layout was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutError(String);

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LayoutError {}

impl GuestRam {
    /// Guest RAM of `len` bytes at GPA 0, in one new memory file.
    pub fn memfd(name: &str, len: usize) -> io::Result<Self> {
        let region = Arc::new(MappedRegion::memfd(name, len)?);
        Self::new(vec![(Gpa::new(0), region)])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
    }

    /// Guest RAM made of `regions`, each placed at its GPA. The regions
    /// must be writable, start at multiples of [`GUEST_PAGE_SIZE`] and not
    /// overlap; the memory's extent is the end of the highest one, and the
    /// gaps between them are holes.
    pub fn new(regions: Vec<(Gpa, Arc<MappedRegion>)>) -> Result<Self, LayoutError> {
        let mut placed = Vec::with_capacity(regions.len());
        for (gpa, region) in regions {
            let end = gpa.get().checked_add(region.len() as u64).ok_or_else(|| {
                LayoutError(format!(
                    "a {}-byte region at GPA {:#x} ends past the 64-bit GPA space",
                    region.len(),
                    gpa.get()
                ))
            })?;
            if !gpa.is_aligned(GUEST_PAGE_SIZE) {
                return Err(LayoutError(format!(
                    "the region at GPA {:#x} does not start at a {GUEST_PAGE_SIZE}-byte page",
                    gpa.get()
                )));
            }
            if !region.is_writable() {
                return Err(LayoutError(format!(
                    "the region at GPA {:#x} is mapped read-only; guest RAM must be writable",
                    gpa.get()
                )));
            }
            placed.push(Placed {
                start: gpa.get(),
                end,
                region,
            });
        }
        placed.sort_by_key(|p| p.start);
        for pair in placed.windows(2) {
            if let [a, b] = pair
                && b.start < a.end
            {
                return Err(LayoutError(format!(
                    "regions [{:#x}, {:#x}) and [{:#x}, {:#x}) overlap",
                    a.start, a.end, b.start, b.end
                )));
            }
        }
        let Some(extent) = placed.last().map(|p| p.end) else {
            return Err(LayoutError("guest RAM needs at least one region".into()));
        };
        let layout: Arc<Layout> = Arc::new(Layout {
            regions: placed.into_boxed_slice(),
            extent,
            access: None,
        });
        Ok(Self::from_layout(layout))
    }

    /// This memory with an access map: every page starts accessible, and
    /// [`set_accessible`](Self::set_accessible) can take pages away. Costs
    /// one atomic load per guest page an access touches.
    pub fn with_access_map(self) -> Self {
        let pages = self.layout.extent.div_ceil(GUEST_PAGE_SIZE);
        let access = (0..pages).map(|_| AtomicU8::new(1)).collect();
        let layout = Arc::new(Layout {
            regions: self.layout.regions.clone(),
            extent: self.layout.extent,
            access: Some(access),
        });
        Self::from_layout(layout)
    }

    /// Makes the guest pages that `range` touches accessible or not. Fails
    /// if this memory has no access map or the range is outside it.
    ///
    /// Taking a page away does not wait for accesses already under way, nor
    /// revoke pins already handed out (the mapping stays, so they remain
    /// memory-safe); callers that need that order drain first.
    pub fn set_accessible(&self, range: GpaRange, accessible: bool) -> Result<(), MemoryError> {
        let out_of_range = MemoryError::new(range.gpa, range.len, MemoryErrorKind::OutOfRange);
        let end = range
            .gpa
            .get()
            .checked_add(range.len)
            .filter(|&end| end <= self.layout.extent)
            .ok_or(out_of_range)?;
        let map = self.layout.access.as_deref().ok_or(out_of_range)?;
        let first = range.gpa.get() / GUEST_PAGE_SIZE;
        let last = end.div_ceil(GUEST_PAGE_SIZE);
        for page in map.iter().take(last as usize).skip(first as usize) {
            page.store(u8::from(accessible), Ordering::Release);
        }
        Ok(())
    }

    /// The regions and their GPAs, in GPA order.
    pub fn regions(&self) -> impl Iterator<Item = (Gpa, &Arc<MappedRegion>)> {
        self.layout
            .regions
            .iter()
            .map(|p| (Gpa::new(p.start), &p.region))
    }

    fn from_layout(layout: Arc<Layout>) -> Self {
        let owner: Arc<dyn PinOwner> = layout.clone();
        Self { layout, owner }
    }
}

/// `[gpa, gpa + len)` of a [`LocalMemory`] as indices, if they fit in
/// `usize` (the buffer's own bounds are checked by `get`; anything that
/// does not fit goes the staged way, which reports the error).
fn local_range(gpa: Gpa, len: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(gpa.get()).ok()?;
    Some(start..start.checked_add(len)?)
}

impl GuestRam {
    /// [`GuestMemory::copy_from`] from another `GuestRam`.
    fn copy_from_ram(
        &self,
        gpa: Gpa,
        src: &GuestRam,
        src_gpa: Gpa,
        len: usize,
    ) -> Result<(), MemoryError> {
        let mut from = src.layout.check(src_gpa, len as u64)?;
        let mut to = self.layout.check(gpa, len as u64)?;
        let fault = MemoryError::new(
            gpa,
            len as u64,
            MemoryErrorKind::Inaccessible(Denied::Fault),
        );
        let (mut at, mut src_at) = (gpa.get(), src_gpa.get());
        let mut left = len;
        while left > 0 {
            // `check` proved both ranges lie in runs of adjacent regions
            // starting at `to` and `from`; a region passed moves to the next.
            let (d, s) = (
                self.layout.regions.get(to).ok_or(fault)?,
                src.layout.regions.get(from).ok_or(fault)?,
            );
            if at >= d.end {
                to += 1;
                continue;
            }
            if src_at >= s.end {
                from += 1;
                continue;
            }
            let n = usize::try_from((d.end - at).min(s.end - src_at))
                .unwrap_or(usize::MAX)
                .min(left);
            let (offset, src_offset) = (
                usize::try_from(at - d.start).map_err(|_| fault)?,
                usize::try_from(src_at - s.start).map_err(|_| fault)?,
            );
            d.region
                .copy_from_region(offset, &s.region, src_offset, n)
                .map_err(|_| fault)?;
            at += n as u64;
            src_at += n as u64;
            left -= n;
        }
        Ok(())
    }
}

impl fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let regions: Vec<_> = self
            .layout
            .regions
            .iter()
            .map(|p| format_args!("[{:#x}, {:#x})", p.start, p.end).to_string())
            .collect();
        f.debug_struct("GuestRam")
            .field("regions", &regions)
            .field("access_map", &self.layout.access.is_some())
            .finish()
    }
}

impl Layout {
    /// Checks that `[gpa, gpa + len)` lies in the memory, on mapped and
    /// accessible pages, without touching it; returns the index of the
    /// region holding `gpa`. Every access, atomic and copy starts here, so
    /// the usual layout (one region) is decided without a search.
    #[inline]
    fn check(&self, gpa: Gpa, len: u64) -> Result<usize, MemoryError> {
        let start = gpa.get();
        let Some(end) = start.checked_add(len).filter(|&end| end <= self.extent) else {
            return Err(MemoryError::new(gpa, len, MemoryErrorKind::OutOfRange));
        };
        let index = match &*self.regions {
            // One region: it ends at the extent, so the range is mapped
            // if it starts inside it.
            [only] if start >= only.start => 0,
            _ => self
                .mapped(start, end)
                .ok_or_else(|| Self::unmapped(gpa, len))?,
        };
        if let Some(map) = &self.access
            && len > 0
        {
            let first = start / GUEST_PAGE_SIZE;
            let last = end.div_ceil(GUEST_PAGE_SIZE);
            let pages = usize::try_from(first)
                .ok()
                .zip(usize::try_from(last).ok())
                .and_then(|(first, last)| map.get(first..last))
                .ok_or_else(|| Self::unmapped(gpa, len))?;
            if pages.iter().any(|p| p.load(Ordering::Acquire) == 0) {
                return Err(Self::unmapped(gpa, len));
            }
        }
        Ok(index)
    }

    /// The error for a range that touches a hole or an inaccessible page.
    fn unmapped(gpa: Gpa, len: u64) -> MemoryError {
        MemoryError::new(gpa, len, MemoryErrorKind::Inaccessible(Denied::Unmapped))
    }

    /// The index of the region holding `start`, if `[start, end)` lies in
    /// it and the regions adjacent to it (no hole); `end` is at most the
    /// extent.
    fn mapped(&self, start: u64, end: u64) -> Option<usize> {
        // The last region starting at or before `start`.
        let index = self
            .regions
            .partition_point(|p| p.start <= start)
            .checked_sub(1)?;
        // Walk on while the range continues into adjacent regions.
        let mut covered = self.regions.get(index)?.end;
        if covered <= start && end > start {
            return None;
        }
        for next in self.regions.iter().skip(index + 1) {
            if covered >= end {
                break;
            }
            if next.start != covered {
                return None;
            }
            covered = next.end;
        }
        (covered >= end).then_some(index)
    }

    /// Calls `f(region, offset in region, offset in the access, length)`
    /// for each piece of the checked range `[gpa, gpa + len)` starting in
    /// region `index`.
    fn pieces(
        &self,
        index: usize,
        gpa: Gpa,
        len: usize,
        mut f: impl FnMut(&MappedRegion, usize, usize, usize) -> Result<(), AccessError>,
    ) -> Result<(), MemoryError> {
        let fault = MemoryError::new(
            gpa,
            len as u64,
            MemoryErrorKind::Inaccessible(Denied::Fault),
        );
        let mut at = gpa.get();
        let mut done = 0;
        for placed in self.regions.iter().skip(index) {
            if done == len {
                break;
            }
            // `check` proved the pieces lie in these regions, so the
            // offsets fit in `usize` (each region's length is one).
            let offset = usize::try_from(at - placed.start).unwrap_or(usize::MAX);
            let avail = usize::try_from(placed.end - at).unwrap_or(usize::MAX);
            let n = avail.min(len - done);
            f(&placed.region, offset, done, n).map_err(|_| fault)?;
            done += n;
            at += n as u64;
        }
        if done == len { Ok(()) } else { Err(fault) }
    }

    /// The region holding the device range `range` (host virtual
    /// addresses) and its offset there, if one holds all of it.
    pub(crate) fn region_for(&self, range: &DeviceRange) -> Option<(&MappedRegion, usize, usize)> {
        let len = usize::try_from(range.len).ok()?;
        let addr = usize::try_from(range.addr.get()).ok()?;
        self.regions.iter().find_map(|p| {
            let offset = addr.checked_sub(p.region.base_addr())?;
            let end = offset.checked_add(len)?;
            (end <= p.region.len()).then_some((&*p.region, offset, len))
        })
    }
}

impl PinOwner for Layout {
    /// The mappings never move or go away while a pin holds the layout, so
    /// there is nothing to release.
    fn unpin(&self, _ranges: &[DeviceRange]) {}
}

/// `v`'s low `width` bytes, as `T`, from the little-endian value the trait
/// speaks to the native value the mapping holds.
macro_rules! le {
    ($t:ty, $v:expr) => {
        <$t>::from_le($v as $t)
    };
}

/// Performs `op` as an atomic of type `$t` on `region` at `offset`,
/// returning the previous value as little-endian `u64`.
macro_rules! atomic_op {
    ($t:ty, $region:expr, $offset:expr, $op:expr, $order:expr) => {{
        let (region, offset, order) = ($region, $offset, $order);
        let old: Result<$t, AccessError> = match $op {
            AtomicOp::Load => region.atomic_load::<$t>(offset, order),
            AtomicOp::Store(v) => region
                .atomic_store::<$t>(offset, le!($t, v), order)
                .map(|()| 0),
            AtomicOp::Swap(v) => region.atomic_swap::<$t>(offset, le!($t, v), order),
            AtomicOp::CompareExchange { current, new } => region
                .atomic_compare_exchange::<$t>(offset, le!($t, current), le!($t, new), order)
                .map(|r| r.unwrap_or_else(|actual| actual)),
            AtomicOp::FetchOr(v) => region.atomic_fetch_or::<$t>(offset, le!($t, v), order),
            AtomicOp::FetchAnd(v) => region.atomic_fetch_and::<$t>(offset, le!($t, v), order),
        };
        old.map(|old| u64::from(<$t>::to_le(old)))
    }};
}

impl GuestMemory for GuestRam {
    fn extent(&self) -> Gpa {
        Gpa::new(self.layout.extent)
    }

    fn read_at(&self, gpa: Gpa, dst: &mut [u8]) -> Result<(), MemoryError> {
        let index = self.layout.check(gpa, dst.len() as u64)?;
        self.layout
            .pieces(index, gpa, dst.len(), |region, offset, at, n| {
                region.read_at(offset, &mut dst[at..at + n])
            })
    }

    fn write_at(&self, gpa: Gpa, src: &[u8]) -> Result<(), MemoryError> {
        let index = self.layout.check(gpa, src.len() as u64)?;
        self.layout
            .pieces(index, gpa, src.len(), |region, offset, at, n| {
                region.write_at(offset, &src[at..at + n])
            })
    }

    fn fill_at(&self, gpa: Gpa, len: usize, byte: u8) -> Result<(), MemoryError> {
        let index = self.layout.check(gpa, len as u64)?;
        self.layout.pieces(index, gpa, len, |region, offset, _, n| {
            region.fill_at(offset, n, byte)
        })
    }

    fn atomic(
        &self,
        gpa: Gpa,
        width: Width,
        op: AtomicOp,
        order: Ordering,
    ) -> Result<u64, MemoryError> {
        let n = width.bytes() as u64;
        let index = self.layout.check(gpa, n)?;
        if !gpa.is_aligned(n) {
            return Err(MemoryError::new(gpa, n, MemoryErrorKind::Misaligned));
        }
        let fault = MemoryError::new(gpa, n, MemoryErrorKind::Inaccessible(Denied::Fault));
        // Regions start at page-aligned GPAs and their mappings at
        // page-aligned addresses, so an aligned GPA is an aligned address,
        // and an aligned word never straddles two regions (adjacent regions
        // meet at a page boundary).
        let placed = self.layout.regions.get(index).ok_or(fault)?;
        let offset = usize::try_from(gpa.get() - placed.start).map_err(|_| fault)?;
        let region = &*placed.region;
        let result: Result<u64, AccessError> = match width {
            Width::U8 => atomic_op!(u8, region, offset, op, order),
            Width::U16 => atomic_op!(u16, region, offset, op, order),
            Width::U32 => atomic_op!(u32, region, offset, op, order),
            Width::U64 => atomic_op!(u64, region, offset, op, order),
        };
        result.map_err(|_| fault)
    }

    fn write_vectored_at(&self, gpa: Gpa, srcs: &[&[u8]]) -> Result<(), MemoryError> {
        let total = srcs
            .iter()
            .fold(0u64, |n, s| n.saturating_add(s.len() as u64));
        let index = self.layout.check(gpa, total)?;
        if let Some(placed) = self.layout.regions.get(index)
            && gpa.get() + total <= placed.end
        {
            // One region holds it all (the usual case): one bounds check,
            // one copy per piece.
            let offset = usize::try_from(gpa.get() - placed.start).unwrap_or(usize::MAX);
            return placed.region.write_vectored_at(offset, srcs).map_err(|_| {
                MemoryError::new(gpa, total, MemoryErrorKind::Inaccessible(Denied::Fault))
            });
        }
        let mut at = gpa;
        for src in srcs {
            self.write_at(at, src)?;
            at = Gpa::new(at.get() + src.len() as u64);
        }
        Ok(())
    }

    fn check(&self, range: GpaRange, access: Access) -> Result<(), MemoryError> {
        let _ = access;
        self.layout.check(range.gpa, range.len).map(|_| ())
    }

    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }

    /// Straight from mapping to mapping when `src` is a `GuestRam` too
    /// (recognised by its type, never by anything `src` says about
    /// itself): both ranges are checked in their own layouts (holes,
    /// access maps), then copied region piece by region piece.
    fn copy_from(
        &self,
        gpa: Gpa,
        src: &dyn GuestMemory,
        src_gpa: Gpa,
        len: usize,
    ) -> Option<Result<(), MemoryError>> {
        let src = src.as_any()?;
        if let Some(ram) = src.downcast_ref::<GuestRam>() {
            return Some(self.copy_from_ram(gpa, ram, src_gpa, len));
        }
        // Private staging memory: written from its own bytes, under its
        // lock, which is held over this memory's `write_at` only.
        let local = src.downcast_ref::<LocalMemory>()?;
        let range = local_range(src_gpa, len)?;
        local.with(|bytes| Some(self.write_at(gpa, bytes.get(range)?)))
    }

    /// Straight into private staging memory ([`LocalMemory`]), under its
    /// lock, which is held over this memory's `read_at` only.
    fn copy_to(
        &self,
        gpa: Gpa,
        dst: &dyn GuestMemory,
        dst_gpa: Gpa,
        len: usize,
    ) -> Option<Result<(), MemoryError>> {
        let local = dst.as_any()?.downcast_ref::<LocalMemory>()?;
        let range = local_range(dst_gpa, len)?;
        local.with_mut(|bytes| Some(self.read_at(gpa, bytes.get_mut(range)?)))
    }

    fn pin(
        &self,
        ranges: &[GpaRange],
        access: Access,
        domain: DmaDomainId,
        out: &mut PinSet,
    ) -> Result<(), PinError> {
        let _ = access;
        if domain != DmaDomainId::KERNEL {
            return Err(PinError::Unsupported);
        }
        for range in ranges {
            let index = self
                .layout
                .check(range.gpa, range.len)
                .map_err(|e| match e.kind {
                    MemoryErrorKind::Inaccessible(_) => PinError::NotDeviceVisible(e),
                    _ => PinError::Memory(e),
                })?;
            let mut at = range.gpa.get();
            let end = at + range.len;
            for placed in self.layout.regions.iter().skip(index) {
                if at >= end {
                    break;
                }
                let piece_end = end.min(placed.end);
                let va = placed.region.base_addr() as u64 + (at - placed.start);
                let device = DeviceRange {
                    addr: DeviceAddress::new(va),
                    len: piece_end - at,
                };
                out.push(&self.owner, domain, &[device])?;
                at = piece_end;
            }
        }
        Ok(())
    }
}
