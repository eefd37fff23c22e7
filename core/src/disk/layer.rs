//! The layer side of a disk: what a [`LayeredDisk`](crate::layered::LayeredDisk)
//! needs from its layers beyond plain reads and writes.
//!
//! A disk that holds only *some* sectors (a RAM layer over a base image) can
//! say which ones it has, so a layered read takes each sector from the
//! highest layer that has it; and a read-cache layer accepts writes that
//! never overwrite what it already holds. These operations belong to
//! [`LayerIo`], apart from [`DiskIo`], which stays "a disk": sectors in,
//! sectors out.
//!
//! Every disk can be a layer. A disk reaches its layer side through
//! [`DiskIo::as_layer`]; one without its own ([`None`], the default) is a
//! *plain* layer: it has every sector (a read marks them all) and cannot be
//! a read cache. The [`Disk`] handle offers the layer operations for any
//! disk — [`Disk::read_present`], [`Disk::read_present_inline`],
//! [`Disk::write_no_overwrite`], [`Disk::supports_write_no_overwrite`] —
//! checked like every other request.
//!
//! The hook is a method rather than `LayerIo: DiskIo` alone because
//! [`Disk::new`] takes any [`DiskIo`] and must still find a RAM disk's
//! presence bitmap behind it; Rust cannot ask "does this type also
//! implement `LayerIo`?" of a generic type, so the type answers itself.

use super::{Disk, DiskIo, IoFuture, IoOptions, ready, run_inline};
use crate::error::DiskError;
use crate::sg::SgList;
use core::future::Future;

/// The layer operations of a disk (see the [module docs](self)).
///
/// Implemented by disks that hold only some sectors (the RAM disk) and by
/// decorators that pass a layer's presence through (delay, reservations);
/// such a disk returns itself from [`DiskIo::as_layer`].
pub trait LayerIo: Send + Sync {
    /// Reads the sectors this layer *has* from `[sector, …)` into `buf` and
    /// marks them in `marker` (which covers at least this request; only the
    /// request's sectors may be marked). Sectors left unmarked fall through
    /// to the next layer, and their part of `buf` is left alone.
    fn read_present(
        &self,
        buf: SgList<'_>,
        sector: u64,
        marker: &mut SectorMarker<'_>,
        opts: IoOptions,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// [`LayerIo::read_present`], run to completion at once, for a disk
    /// that [completes inline](DiskIo::completes_inline) (see
    /// [`DiskIo::read_inline`]). The default polls the future once; a disk
    /// whose work is synchronous anyway overrides it to skip the future.
    fn read_present_inline(
        &self,
        buf: SgList<'_>,
        sector: u64,
        marker: &mut SectorMarker<'_>,
        opts: IoOptions,
    ) -> Result<(), DiskError> {
        run_inline(self.read_present(buf, sector, marker, opts))
    }

    /// Whether [`LayerIo::write_no_overwrite`] is supported, so the layer
    /// can serve as a read cache. Fixed.
    fn supports_write_no_overwrite(&self) -> bool {
        false
    }

    /// Writes only the sectors of `[sector, …)` that the layer does not have
    /// yet (read-cache population, which must not clobber newer data).
    fn write_no_overwrite(
        &self,
        buf: SgList<'_>,
        sector: u64,
    ) -> impl Future<Output = Result<(), DiskError>> + Send {
        let _ = (buf, sector);
        core::future::ready(Err(DiskError::Unsupported("write-no-overwrite")))
    }
}

/// The layer side of a disk that has none of its own: it is never
/// constructed, it only gives [`DiskIo::as_layer`]'s default `None` a type.
pub(super) enum PlainLayer {}

impl LayerIo for PlainLayer {
    async fn read_present(
        &self,
        _: SgList<'_>,
        _: u64,
        _: &mut SectorMarker<'_>,
        _: IoOptions,
    ) -> Result<(), DiskError> {
        match *self {}
    }
}

/// A plain layer's read: the whole request, every sector marked.
pub(super) async fn read_all_present<T: DiskIo>(
    io: &T,
    buf: SgList<'_>,
    sector: u64,
    marker: &mut SectorMarker<'_>,
    opts: IoOptions,
) -> Result<(), DiskError> {
    io.read(buf, sector, opts).await?;
    marker.set_range(sector, (buf.len() / io.sector_size() as usize) as u64);
    Ok(())
}

/// [`read_all_present`] through the disk's synchronous read twin.
pub(super) fn read_all_present_inline<T: DiskIo>(
    io: &T,
    buf: SgList<'_>,
    sector: u64,
    marker: &mut SectorMarker<'_>,
    opts: IoOptions,
) -> Result<(), DiskError> {
    io.read_inline(buf, sector, opts)?;
    marker.set_range(sector, (buf.len() / io.sector_size() as usize) as u64);
    Ok(())
}

/// The layer operations of the handle. They work on every disk: a disk
/// without its own layer side is a plain layer (see the module docs).
impl Disk {
    /// What a layer read must satisfy before the disk sees it.
    fn check_read_present(
        &self,
        buf: &SgList<'_>,
        sector: u64,
        marker: &SectorMarker<'_>,
    ) -> Result<(), DiskError> {
        self.check_read(buf, sector)?;
        let count = (buf.len() >> self.sector_shift()) as u64;
        if sector < marker.start() || sector + count > marker.start() + marker.count() {
            return Err(DiskError::InvalidInput(
                "sector marker does not cover the request",
            ));
        }
        Ok(())
    }

    /// Layer read (see [`LayerIo::read_present`]). `marker` must cover the
    /// request.
    pub fn read_present<'a, 'm: 'a>(
        &'a self,
        buf: SgList<'a>,
        sector: u64,
        marker: &'a mut SectorMarker<'m>,
        opts: IoOptions,
    ) -> IoFuture<'a, Result<(), DiskError>> {
        if let Err(e) = self.check_read_present(&buf, sector, marker) {
            return ready(Err(e));
        }
        self.inner.io.read_present(buf, sector, marker, opts)
    }

    /// [`Disk::read_present`] run to completion without building a future
    /// (see [`Disk::read_inline`]).
    pub fn read_present_inline(
        &self,
        buf: SgList<'_>,
        sector: u64,
        marker: &mut SectorMarker<'_>,
        opts: IoOptions,
    ) -> Result<(), DiskError> {
        self.check_read_present(&buf, sector, marker)?;
        self.inner.io.read_present_inline(buf, sector, marker, opts)
    }

    /// Whether the disk can be a read-cache layer.
    pub fn supports_write_no_overwrite(&self) -> bool {
        self.inner.fixed.write_no_overwrite
    }

    /// Writes the sectors the disk does not have yet (read-cache fill). The
    /// buffer is only read. Checked like a write: a read-only disk refuses.
    pub fn write_no_overwrite<'a>(
        &'a self,
        buf: SgList<'a>,
        sector: u64,
    ) -> IoFuture<'a, Result<(), DiskError>> {
        if let Err(e) = self.check_write(&buf, sector) {
            return ready(Err(e));
        }
        self.inner.io.write_no_overwrite(buf.read_only(), sector)
    }
}

/// Which sectors of a read a layer supplied.
///
/// A layered disk asks each layer in turn for the sectors that no layer
/// above supplied; a layer marks the ones it has, and the rest fall through.
pub struct SectorMarker<'a> {
    start: u64,
    count: u64,
    bits: &'a mut [u64],
}

impl<'a> SectorMarker<'a> {
    /// A marker for sectors `[start, start + count)` with no sector marked,
    /// using `bits` (at least `count` bits) as storage.
    pub fn new(start: u64, count: u64, bits: &'a mut [u64]) -> Self {
        let words = count.div_ceil(64) as usize;
        let bits = &mut bits[..words];
        bits.fill(0);
        Self { start, count, bits }
    }

    /// First sector covered.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Number of sectors covered.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Marks `sector` present (sectors outside the marker are ignored).
    pub fn set(&mut self, sector: u64) {
        self.set_range(sector, 1);
    }

    /// Marks `[sector, sector + count)` present, clipped to the marker.
    pub fn set_range(&mut self, sector: u64, count: u64) {
        let lo = sector.max(self.start);
        let hi = sector.saturating_add(count).min(self.start + self.count);
        let (mut i, end) = (lo - self.start.min(lo), hi.saturating_sub(self.start));
        while i < end {
            let (w, b) = ((i / 64) as usize, i % 64);
            let n = (64 - b).min(end - i);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << b
            };
            self.bits[w] |= mask;
            i += n;
        }
    }

    /// Marks every sector present.
    pub fn set_all(&mut self) {
        self.set_range(self.start, self.count);
    }

    /// Whether `sector` is marked.
    pub fn is_set(&self, sector: u64) -> bool {
        if sector < self.start || sector - self.start >= self.count {
            return false;
        }
        let i = sector - self.start;
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Whether every sector is marked.
    pub fn all_set(&self) -> bool {
        let full = (self.count / 64) as usize;
        let rest = self.count % 64;
        self.bits[..full].iter().all(|&w| w == u64::MAX)
            && (rest == 0 || self.bits[full] & ((1 << rest) - 1) == (1 << rest) - 1)
    }

    /// The first run of unmarked sectors at or after `from`, as
    /// `(sector, count)`.
    pub fn next_unset(&self, from: u64) -> Option<(u64, u64)> {
        let first = self.scan(from.max(self.start), false)?;
        let end = self.scan(first, true).unwrap_or(self.start + self.count);
        Some((first, end - first))
    }

    /// The first run of marked sectors at or after `from`, as
    /// `(sector, count)`.
    pub fn next_set(&self, from: u64) -> Option<(u64, u64)> {
        let first = self.scan(from.max(self.start), true)?;
        let end = self.scan(first, false).unwrap_or(self.start + self.count);
        Some((first, end - first))
    }

    /// First sector at or after `from` whose bit equals `set`.
    fn scan(&self, from: u64, set: bool) -> Option<u64> {
        let mut i = from.checked_sub(self.start)?;
        while i < self.count {
            let (w, b) = ((i / 64) as usize, i % 64);
            let word = if set { self.bits[w] } else { !self.bits[w] } >> b;
            if word != 0 {
                let found = i + u64::from(word.trailing_zeros());
                return (found < self.count).then_some(self.start + found);
            }
            i += 64 - b;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Gpa, GpaRange};
    use crate::delay::{DelayDisk, DelayHandle, Timer};
    use crate::disk::BoxFuture;
    use crate::memory::{GuestMemory, RamGuestMemory};
    use crate::prwrap::ReservationsDisk;
    use crate::ram::RamDisk;
    use crate::striped::StripedDisk;
    use alloc::boxed::Box;
    use alloc::sync::Arc;
    use core::time::Duration;
    use futures::executor::block_on;

    struct NoTimer;
    impl Timer for NoTimer {
        fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
            Box::pin(core::future::ready(()))
        }
    }

    fn ram(sectors: u64) -> Disk {
        Disk::new(RamDisk::new(sectors * 512, 512).unwrap()).unwrap()
    }

    /// Layer-reads sectors 0..8 of `disk` and returns which were marked.
    fn present(disk: &Disk, mem: &RamGuestMemory, inline: bool) -> [bool; 8] {
        let r = [GpaRange::new(Gpa::new(0), 4096)];
        let sg = SgList::new(mem, &r, true).unwrap();
        let mut bits = [0u64; 1];
        let mut m = SectorMarker::new(0, 8, &mut bits);
        let o = IoOptions::default();
        if inline {
            disk.read_present_inline(sg, 0, &mut m, o).unwrap();
        } else {
            block_on(disk.read_present(sg, 0, &mut m, o)).unwrap();
        }
        core::array::from_fn(|i| m.is_set(i as u64))
    }

    /// Every disk is a layer: one with its own layer side (RAM) marks what
    /// it holds; a plain disk (striped) marks everything and is no read
    /// cache; a decorator (delay, reservations) passes its inner disk's
    /// layer side on.
    #[test]
    fn every_disk_is_a_layer() {
        let mem = RamGuestMemory::new(1 << 16);
        let one = [GpaRange::new(Gpa::new(0), 512)];
        let sg = SgList::new(&mem, &one, true).unwrap();
        let o = IoOptions::default();

        let sparse = ram(64);
        block_on(sparse.write(sg, 3, o)).unwrap();
        let mut want = [false; 8];
        want[3] = true;
        assert_eq!(present(&sparse, &mem, true), want);
        assert_eq!(present(&sparse, &mem, false), want);
        assert!(sparse.supports_write_no_overwrite());

        let plain =
            Disk::new(StripedDisk::new(alloc::vec![ram(256), ram(256)], None, None).unwrap())
                .unwrap();
        assert_eq!(present(&plain, &mem, true), [true; 8]);
        assert_eq!(present(&plain, &mem, false), [true; 8]);
        assert!(!plain.supports_write_no_overwrite());
        assert_eq!(
            block_on(plain.write_no_overwrite(sg, 0)),
            Err(DiskError::Unsupported("write-no-overwrite"))
        );

        let delayed = DelayDisk::new(sparse.clone(), DelayHandle::default(), Arc::new(NoTimer));
        let delayed = Disk::new(delayed).unwrap();
        assert_eq!(present(&delayed, &mem, false), want);
        assert!(delayed.supports_write_no_overwrite());
        mem.fill_at(Gpa::new(0), 512, 0x5a).unwrap();
        block_on(delayed.write_no_overwrite(sg, 4)).unwrap();
        want[4] = true;
        assert_eq!(present(&sparse, &mem, true), want);

        // Reservations pass presence through too, inline and not.
        let reserved = Disk::new(ReservationsDisk::new(sparse.clone())).unwrap();
        assert_eq!(present(&reserved, &mem, true), want);
        assert_eq!(present(&reserved, &mem, false), want);
        assert!(reserved.supports_write_no_overwrite());
        block_on(reserved.write_no_overwrite(sg, 5)).unwrap();
        want[5] = true;
        assert_eq!(present(&sparse, &mem, true), want);
    }

    /// The handle checks layer reads like reads: the marker must cover the
    /// request and the buffer must be writable.
    #[test]
    fn layer_reads_are_checked() {
        let mem = RamGuestMemory::new(1 << 16);
        let r = [GpaRange::new(Gpa::new(0), 1024)];
        let o = IoOptions::default();
        let disk = ram(16);
        let mut bits = [0u64; 1];
        let read_only = SgList::new(&mem, &r, false).unwrap();
        let mut m = SectorMarker::new(0, 16, &mut bits);
        assert!(matches!(
            disk.read_present_inline(read_only, 0, &mut m, o),
            Err(DiskError::MemoryAccess(_))
        ));
        let sg = SgList::new(&mem, &r, true).unwrap();
        let mut m = SectorMarker::new(1, 2, &mut bits);
        assert!(matches!(
            block_on(disk.read_present(sg, 0, &mut m, o)),
            Err(DiskError::InvalidInput(_))
        ));
        let mut m = SectorMarker::new(15, 2, &mut bits);
        assert_eq!(
            block_on(disk.read_present(sg, 15, &mut m, o)),
            Err(DiskError::IllegalBlock)
        );
    }

    /// A RAM disk that says it is read-only.
    struct ReadOnlyRam(RamDisk);

    impl DiskIo for ReadOnlyRam {
        fn kind(&self) -> &'static str {
            "read-only ram"
        }
        fn sector_count(&self) -> u64 {
            self.0.sector_count()
        }
        fn sector_size(&self) -> u32 {
            self.0.sector_size()
        }
        fn is_read_only(&self) -> bool {
            true
        }
        fn is_fua_respected(&self) -> bool {
            true
        }
        fn unmap_behavior(&self) -> crate::disk::UnmapBehavior {
            self.0.unmap_behavior()
        }
        async fn read(&self, buf: SgList<'_>, sector: u64, o: IoOptions) -> Result<(), DiskError> {
            self.0.read(buf, sector, o).await
        }
        async fn write(&self, buf: SgList<'_>, sector: u64, o: IoOptions) -> Result<(), DiskError> {
            self.0.write(buf, sector, o).await
        }
        async fn flush(&self, o: IoOptions) -> Result<(), DiskError> {
            self.0.flush(o).await
        }
        async fn unmap(&self, sector: u64, count: u64, o: IoOptions) -> Result<(), DiskError> {
            self.0.unmap(sector, count, o).await
        }
        fn as_layer(&self) -> Option<&impl LayerIo> {
            Some(&self.0)
        }
    }

    /// A read-cache fill modifies the disk: the handle refuses it on a
    /// read-only disk, as it refuses writes, and the disk is untouched.
    #[test]
    fn read_only_disks_refuse_cache_fills() {
        let mem = RamGuestMemory::new(1 << 16);
        let one = [GpaRange::new(Gpa::new(0), 512)];
        let sg = SgList::new(&mem, &one, true).unwrap();
        let disk = Disk::new(ReadOnlyRam(RamDisk::new(64 * 512, 512).unwrap())).unwrap();
        assert!(disk.is_read_only() && disk.supports_write_no_overwrite());
        assert_eq!(
            block_on(disk.write_no_overwrite(sg, 2)),
            Err(DiskError::ReadOnly)
        );
        assert_eq!(present(&disk, &mem, true), [false; 8]);
    }

    #[test]
    fn marker_runs() {
        let mut bits = [0u64; 4];
        let mut m = SectorMarker::new(100, 200, &mut bits);
        assert_eq!(m.next_unset(0), Some((100, 200)));
        m.set_range(110, 10);
        m.set(150);
        m.set_range(250, 1000);
        m.set_range(0, 5); // outside: ignored
        assert_eq!(m.next_unset(100), Some((100, 10)));
        assert_eq!(m.next_unset(110), Some((120, 30)));
        assert_eq!(m.next_unset(151), Some((151, 99)));
        assert_eq!(m.next_unset(250), None);
        assert!(m.is_set(299) && !m.is_set(300) && !m.is_set(99));
        assert!(!m.all_set());
        m.set_all();
        assert!(m.all_set());
        let mut bits = [0u64; 2];
        let mut m = SectorMarker::new(0, 128, &mut bits);
        m.set_range(0, 64);
        assert_eq!(m.next_unset(0), Some((64, 64)));
        m.set_range(64, 64);
        assert!(m.all_set());
    }
}
