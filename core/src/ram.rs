//! A sparse RAM disk, usable as a whole disk and as a layer.
//!
//! Storage is a hash map of fixed-size chunks (32 KiB, or one sector if
//! sectors are larger) with two bitmaps per chunk: which sectors are
//! *present* and which of those are *zeroed* (present, reading as zero,
//! with no data kept). That lets the disk
//! - read and write whole runs of sectors with one copy each, with no
//!   allocation per I/O once a chunk exists (OpenVMM allocates per sector);
//! - represent an unmapped range inside a layer stack as "present and
//!   zero", so unmap hides the layers below instead of being ignored, and
//!   the disk honestly reports [`UnmapBehavior::Zeroes`];
//! - serve as a read-cache layer through write-no-overwrite.
//!
//! As a whole disk, absent sectors read as zero. As a layer
//! ([`LayerIo::read_present`]), absent sectors are left unmarked so the
//! layers below supply them. After a shrink, sectors past the new end are
//! dropped; if the disk grows again they read as zero (and hide lower
//! layers) rather than resurrecting stale data.

use crate::disk::{DiskIo, IoOptions, LayerIo, SectorMarker, UnmapBehavior};
use crate::error::DiskError;
use crate::resize::ResizeSignal;
use crate::sg::{SgList, SgReader};
use crate::sync::RwLock;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use hashbrown::HashMap;

/// Target bytes per chunk.
const CHUNK_BYTES: u64 = 32 * 1024;

/// Why a RAM disk could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamDiskError {
    /// The sector size is not a power of two in 512..=65536.
    InvalidSectorSize(u32),
    /// The disk would have no sectors.
    EmptyDisk,
    /// The size is not a whole number of sectors.
    NotSectorMultiple {
        /// Requested size in bytes.
        len_bytes: u64,
        /// Sector size in bytes.
        sector_size: u32,
    },
}

impl fmt::Display for RamDiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RamDiskError::InvalidSectorSize(s) => write!(
                f,
                "RAM disk sector size {s} is invalid: expected a power of two from 512 to 65536"
            ),
            RamDiskError::EmptyDisk => {
                f.write_str("RAM disk size is 0: expected at least one sector")
            }
            RamDiskError::NotSectorMultiple {
                len_bytes,
                sector_size,
            } => write!(
                f,
                "RAM disk size {len_bytes} is not a multiple of the sector size {sector_size}"
            ),
        }
    }
}

impl core::error::Error for RamDiskError {}

/// One chunk of the store.
struct Chunk {
    /// Sectors present in this disk (bit i = sector i of the chunk).
    present: u64,
    /// Present sectors that read as zero; their bytes in `data` are stale.
    zeroed: u64,
    /// Sector data; `None` while every present sector is zeroed.
    data: Option<Box<[u8]>>,
}

struct Store {
    chunks: HashMap<u64, Chunk>,
    /// Bytes held in chunk data.
    allocated: u64,
}

struct Inner {
    sector_size: u32,
    shift: u32,
    /// log2 of sectors per chunk.
    chunk_shift: u32,
    size: ResizeSignal,
    /// Sectors at or past this read as zero when absent (set by shrinking).
    zero_after: AtomicU64,
    store: RwLock<Store>,
}

/// A sparse RAM disk. Cloning yields another handle to the same disk.
#[derive(Clone)]
pub struct RamDisk {
    inner: Arc<Inner>,
}

/// What a run of sectors inside one chunk holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    Data,
    Zero,
    Absent,
}

impl RamDisk {
    /// A disk of `len_bytes` bytes with `sector_size`-byte sectors, all
    /// absent (reading as zero).
    pub fn new(len_bytes: u64, sector_size: u32) -> Result<RamDisk, RamDiskError> {
        if !parastor_hw::is_valid_sector_size(sector_size) {
            return Err(RamDiskError::InvalidSectorSize(sector_size));
        }
        if len_bytes == 0 {
            return Err(RamDiskError::EmptyDisk);
        }
        if !len_bytes.is_multiple_of(u64::from(sector_size)) {
            return Err(RamDiskError::NotSectorMultiple {
                len_bytes,
                sector_size,
            });
        }
        let shift = sector_size.trailing_zeros();
        let chunk_sectors = (CHUNK_BYTES >> shift).clamp(1, 64);
        Ok(RamDisk {
            inner: Arc::new(Inner {
                sector_size,
                shift,
                chunk_shift: chunk_sectors.trailing_zeros(),
                size: ResizeSignal::new(len_bytes >> shift),
                zero_after: AtomicU64::new(u64::MAX),
                store: RwLock::new(Store {
                    chunks: HashMap::new(),
                    allocated: 0,
                }),
            }),
        })
    }

    /// Changes the sector count. Data past a new, smaller end is dropped;
    /// sectors regained later read as zero. Wakes [`DiskIo::wait_resize`]
    /// waiters. A count of 0 is allowed (every request then fails with
    /// `IllegalBlock`).
    pub fn resize(&self, new_sector_count: u64) {
        let inner = &self.inner;
        let mut store = inner.store.write();
        let old = inner.size.get();
        if new_sector_count < old {
            let cs = inner.chunk_shift;
            let per = 1u64 << cs;
            let chunk_bytes = per << inner.shift;
            let first_dead = new_sector_count >> cs;
            let keep_bits = new_sector_count & (per - 1);
            let mut freed = 0;
            store.chunks.retain(|&index, chunk| {
                if index < first_dead {
                    return true;
                }
                if index == first_dead && keep_bits != 0 {
                    let mask = (1u64 << keep_bits) - 1;
                    chunk.present &= mask;
                    chunk.zeroed &= mask;
                    // Drop data no remaining sector needs.
                    if chunk.present & !chunk.zeroed == 0 && chunk.data.take().is_some() {
                        freed += chunk_bytes;
                    }
                    return chunk.present != 0;
                }
                if chunk.data.is_some() {
                    freed += chunk_bytes;
                }
                false
            });
            store.allocated -= freed;
            inner
                .zero_after
                .fetch_min(new_sector_count, Ordering::AcqRel);
        }
        // The new size is published under the lock, so no request that
        // checked the old size can still be touching the store.
        inner.size.store(new_sector_count);
        drop(store);
        inner.size.wake_all();
    }

    /// Bytes of sector data currently held.
    pub fn allocated_bytes(&self) -> u64 {
        self.inner.store.read().allocated
    }

    fn check_range(&self, sector: u64, count: u64) -> Result<(), DiskError> {
        match sector.checked_add(count) {
            Some(end) if end <= self.inner.size.get() => Ok(()),
            _ => Err(DiskError::IllegalBlock),
        }
    }

    /// Splits `[sector, sector + count)` into per-chunk pieces:
    /// (chunk index, first sector within chunk, sectors).
    fn pieces(&self, sector: u64, count: u64) -> impl Iterator<Item = (u64, u32, u32)> + use<> {
        let cs = self.inner.chunk_shift;
        let per = 1u64 << cs;
        let (mut s, end) = (sector, sector + count);
        core::iter::from_fn(move || {
            if s >= end {
                return None;
            }
            let off = s & (per - 1);
            let n = (per - off).min(end - s);
            let piece = (s >> cs, off as u32, n as u32);
            s += n;
            Some(piece)
        })
    }

    /// Copies sectors to the guest. `layer`: leave absent sectors untouched
    /// and unmarked (they belong to the layers below).
    fn read_impl(
        &self,
        buf: &SgList<'_>,
        sector: u64,
        mut marker: Option<&mut SectorMarker<'_>>,
    ) -> Result<(), DiskError> {
        let inner = &*self.inner;
        let count = (buf.len() >> inner.shift) as u64;
        let mut w = buf.writer()?;
        let store = inner.store.read();
        // Checked under the lock: a concurrent shrink cannot slip between.
        self.check_range(sector, count)?;
        let zero_after = inner.zero_after.load(Ordering::Acquire);
        for (index, first, n) in self.pieces(sector, count) {
            let chunk_start = index << inner.chunk_shift;
            let chunk = store.chunks.get(&index);
            let (present, zeroed) = chunk.map_or((0, 0), |c| (c.present, c.zeroed));
            let req = run_mask(first, n);
            // Absent sectors read as zero past `zero_after`, and always on a
            // whole-disk read (no marker).
            let absent_zero = if marker.is_none() || zero_after <= chunk_start {
                u64::MAX
            } else if zero_after - chunk_start >= 64 {
                0
            } else {
                !((1u64 << (zero_after - chunk_start)) - 1)
            };
            let data_mask = present & !zeroed & req;
            let zero_mask = ((present & zeroed) | (!present & absent_zero)) & req;
            let mut i = first;
            let end = first + n;
            while i < end {
                let bit = 1u64 << i;
                let (kind, mask) = if data_mask & bit != 0 {
                    (Run::Data, data_mask)
                } else if zero_mask & bit != 0 {
                    (Run::Zero, zero_mask)
                } else {
                    (Run::Absent, req & !data_mask & !zero_mask)
                };
                let j = (i + (mask >> i).trailing_ones()).min(end);
                let bytes = ((j - i) as usize) << inner.shift;
                match kind {
                    Run::Data => {
                        let off = (i as usize) << inner.shift;
                        let data = chunk
                            .and_then(|c| c.data.as_deref())
                            .and_then(|d| d.get(off..off + bytes))
                            .ok_or(DiskError::InvalidInput("RAM disk chunk lost its data"))?;
                        w.write(data)?;
                    }
                    Run::Zero => w.fill(0, bytes)?,
                    Run::Absent => w.skip(bytes)?,
                }
                if kind != Run::Absent
                    && let Some(m) = marker.as_deref_mut()
                {
                    m.set_range(chunk_start + u64::from(i), u64::from(j - i));
                }
                i = j;
            }
        }
        Ok(())
    }

    /// Copies sectors from the guest. `overwrite == false`: keep sectors
    /// that are already present.
    fn write_impl(&self, buf: &SgList<'_>, sector: u64, overwrite: bool) -> Result<(), DiskError> {
        let inner = &*self.inner;
        let count = (buf.len() >> inner.shift) as u64;
        let mut r: SgReader<'_> = buf.reader();
        let chunk_bytes = (1usize << inner.chunk_shift) << inner.shift;
        let mut store = inner.store.write();
        self.check_range(sector, count)?;
        let store = &mut *store;
        for (index, first, n) in self.pieces(sector, count) {
            let chunk = store.chunks.entry(index).or_insert(Chunk {
                present: 0,
                zeroed: 0,
                data: None,
            });
            let mask = run_mask(first, n);
            let skip = if overwrite { 0 } else { chunk.present & mask };
            if skip == mask {
                r.skip((n as usize) << inner.shift)?;
                continue;
            }
            if chunk.data.is_none() {
                chunk.data = Some(alloc::vec![0u8; chunk_bytes].into_boxed_slice());
                store.allocated += chunk_bytes as u64;
            }
            let data = chunk.data.as_deref_mut().unwrap_or(&mut []);
            // Copy runs of sectors to take (not in `skip`).
            let mut i = first;
            let end = first + n;
            while i < end {
                let taken = skip & (1 << i) == 0;
                let mut j = i + 1;
                while j < end && (skip & (1 << j) == 0) == taken {
                    j += 1;
                }
                let (off, bytes) = (
                    (i as usize) << inner.shift,
                    ((j - i) as usize) << inner.shift,
                );
                if taken {
                    r.read(&mut data[off..off + bytes])?;
                } else {
                    r.skip(bytes)?;
                }
                i = j;
            }
            let written = mask & !skip;
            chunk.present |= written;
            chunk.zeroed &= !written;
        }
        Ok(())
    }

    fn unmap_impl(&self, sector: u64, count: u64, next_is_zero: bool) -> Result<(), DiskError> {
        let inner = &*self.inner;
        let chunk_bytes = (1u64 << inner.chunk_shift) << inner.shift;
        let mut store = inner.store.write();
        self.check_range(sector, count)?;
        let store = &mut *store;
        for (index, first, n) in self.pieces(sector, count) {
            let mask = run_mask(first, n);
            let entry = store.chunks.get_mut(&index);
            let chunk = match entry {
                Some(c) => c,
                None if next_is_zero => continue,
                None => store.chunks.entry(index).or_insert(Chunk {
                    present: 0,
                    zeroed: 0,
                    data: None,
                }),
            };
            if next_is_zero {
                chunk.present &= !mask;
                chunk.zeroed &= !mask;
            } else {
                chunk.present |= mask;
                chunk.zeroed |= mask;
            }
            // Drop data no present sector needs any more.
            if chunk.present & !chunk.zeroed == 0 && chunk.data.take().is_some() {
                store.allocated -= chunk_bytes;
            }
            if chunk.present == 0 {
                store.chunks.remove(&index);
            }
        }
        Ok(())
    }
}

/// Bits `[first, first + n)` of a chunk bitmap.
fn run_mask(first: u32, n: u32) -> u64 {
    let ones = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
    ones << first
}

impl DiskIo for RamDisk {
    fn kind(&self) -> &'static str {
        "ram"
    }
    /// The data lives in this process: a restart loses it.
    fn survives_restart(&self) -> bool {
        false
    }
    fn sector_count(&self) -> u64 {
        self.inner.size.get()
    }
    fn sector_size(&self) -> u32 {
        self.inner.sector_size
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn is_fua_respected(&self) -> bool {
        true
    }
    fn unmap_behavior(&self) -> UnmapBehavior {
        UnmapBehavior::Zeroes
    }
    fn completes_inline(&self) -> bool {
        true
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        alloc::vec![("allocated", format!("{} bytes", self.allocated_bytes()))]
    }

    async fn read(&self, buf: SgList<'_>, sector: u64, _opts: IoOptions) -> Result<(), DiskError> {
        self.read_impl(&buf, sector, None)
    }

    async fn write(&self, buf: SgList<'_>, sector: u64, _opts: IoOptions) -> Result<(), DiskError> {
        self.write_impl(&buf, sector, true)
    }

    async fn flush(&self, _opts: IoOptions) -> Result<(), DiskError> {
        Ok(())
    }

    async fn unmap(&self, sector: u64, count: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.unmap_impl(sector, count, opts.next_is_zero)
    }

    fn wait_resize(&self, known: u64) -> impl Future<Output = u64> + Send {
        self.inner.size.wait(known)
    }

    fn read_inline(&self, buf: SgList<'_>, sector: u64, _opts: IoOptions) -> Result<(), DiskError> {
        self.read_impl(&buf, sector, None)
    }

    fn write_inline(
        &self,
        buf: SgList<'_>,
        sector: u64,
        _opts: IoOptions,
    ) -> Result<(), DiskError> {
        self.write_impl(&buf, sector, true)
    }

    fn as_layer(&self) -> Option<&impl LayerIo> {
        Some(self)
    }
}

impl LayerIo for RamDisk {
    async fn read_present(
        &self,
        buf: SgList<'_>,
        sector: u64,
        marker: &mut SectorMarker<'_>,
        _opts: IoOptions,
    ) -> Result<(), DiskError> {
        self.read_impl(&buf, sector, Some(marker))
    }

    fn read_present_inline(
        &self,
        buf: SgList<'_>,
        sector: u64,
        marker: &mut SectorMarker<'_>,
        _opts: IoOptions,
    ) -> Result<(), DiskError> {
        self.read_impl(&buf, sector, Some(marker))
    }

    fn supports_write_no_overwrite(&self) -> bool {
        true
    }

    async fn write_no_overwrite(&self, buf: SgList<'_>, sector: u64) -> Result<(), DiskError> {
        self.write_impl(&buf, sector, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Gpa, GpaRange};
    use crate::disk::Disk;
    use crate::memory::{GuestMemory, RamGuestMemory};
    use futures::executor::block_on;

    fn io(mem: &RamGuestMemory, len: usize, writable: bool) -> ([GpaRange; 1], &RamGuestMemory) {
        let _ = writable;
        ([GpaRange::new(Gpa::new(0), len as u64)], mem)
    }

    #[test]
    fn construction_errors() {
        assert_eq!(
            RamDisk::new(4096, 1000).err(),
            Some(RamDiskError::InvalidSectorSize(1000))
        );
        assert_eq!(RamDisk::new(0, 512).err(), Some(RamDiskError::EmptyDisk));
        assert_eq!(
            RamDisk::new(1000, 512).err(),
            Some(RamDiskError::NotSectorMultiple {
                len_bytes: 1000,
                sector_size: 512
            })
        );
    }

    #[test]
    fn write_read_unmap_layer_semantics() {
        let ram = RamDisk::new(1 << 20, 512).unwrap();
        let disk = Disk::new(ram.clone()).unwrap();
        let mem = RamGuestMemory::new(1 << 20);
        let (r, m) = io(&mem, 8192, true);
        let sg = SgList::new(m, &r, true).unwrap();
        let wide_r = [GpaRange::new(Gpa::new(0), 32 * 512)];
        let wide = SgList::new(&mem, &wide_r, true).unwrap();
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8 + 1).collect();
        mem.write_at(Gpa::new(0), &data).unwrap();
        block_on(disk.write(sg, 60, IoOptions::default())).unwrap();
        mem.fill_at(Gpa::new(0), 8192, 0).unwrap();
        block_on(disk.read(sg, 60, IoOptions::default())).unwrap();
        let mut back = alloc::vec![0u8; 8192];
        mem.read_at(Gpa::new(0), &mut back).unwrap();
        assert_eq!(back, data);

        // Layer read marks only present sectors.
        let mut bits = [0u64; 2];
        let mut marker = SectorMarker::new(50, 32, &mut bits);
        let sub = wide;
        block_on(disk.read_present(sub, 50, &mut marker, IoOptions::default())).unwrap();
        assert_eq!(marker.next_unset(50), Some((50, 10)));
        assert_eq!(marker.next_set(50), Some((60, 16)));
        assert_eq!(marker.next_unset(60), Some((76, 6)));

        // Unmap inside a stack: present and zero.
        block_on(disk.unmap(62, 2, IoOptions::default())).unwrap();
        let mut marker = SectorMarker::new(60, 4, &mut bits);
        let sub4 = sg.subrange(0, 4 * 512).unwrap();
        mem.fill_at(Gpa::new(0), 2048, 0xaa).unwrap();
        block_on(disk.read_present(sub4, 60, &mut marker, IoOptions::default())).unwrap();
        assert!(marker.all_set());
        let mut four = alloc::vec![0u8; 2048];
        mem.read_at(Gpa::new(0), &mut four).unwrap();
        assert_eq!(&four[..1024], &data[..1024]);
        assert!(four[1024..].iter().all(|&b| b == 0));
        // Unmap with the lower layers known to be zero: absent again.
        let opts = IoOptions {
            next_is_zero: true,
            ..IoOptions::default()
        };
        block_on(disk.unmap(60, 16, opts)).unwrap();
        assert_eq!(ram.allocated_bytes(), 0);
        let mut marker = SectorMarker::new(60, 4, &mut bits);
        block_on(disk.read_present(sub4, 60, &mut marker, IoOptions::default())).unwrap();
        assert_eq!(marker.next_set(60), None);

        // write-no-overwrite keeps present sectors.
        mem.write_at(Gpa::new(0), &data).unwrap();
        block_on(disk.write(sg.subrange(0, 512).unwrap(), 100, IoOptions::default())).unwrap();
        mem.fill_at(Gpa::new(0), 1024, 0x55).unwrap();
        block_on(disk.write_no_overwrite(sg.subrange(0, 1024).unwrap(), 100)).unwrap();
        block_on(disk.read(sg.subrange(0, 1024).unwrap(), 100, IoOptions::default())).unwrap();
        mem.read_at(Gpa::new(0), &mut back[..1024]).unwrap();
        assert_eq!(&back[..512], &data[..512]);
        assert!(back[512..1024].iter().all(|&b| b == 0x55));
    }

    #[test]
    fn resize_drops_tail_and_wakes_waiters() {
        use futures::FutureExt;
        let ram = RamDisk::new(64 * 4096, 4096).unwrap();
        let disk = Disk::new(ram.clone()).unwrap();
        let mem = RamGuestMemory::new(1 << 16);
        let r = [GpaRange::new(Gpa::new(0), 4096)];
        let sg = SgList::new(&mem, &r, true).unwrap();
        mem.fill_at(Gpa::new(0), 4096, 9).unwrap();
        block_on(disk.write(sg, 63, IoOptions::default())).unwrap();
        let mut wait = core::pin::pin!(disk.wait_resize(64));
        assert!(wait.as_mut().now_or_never().is_none());
        ram.resize(32);
        assert_eq!(wait.now_or_never(), Some(32));
        assert_eq!(
            block_on(disk.read(sg, 40, IoOptions::default())),
            Err(DiskError::IllegalBlock)
        );
        ram.resize(64);
        let mut bits = [0u64; 1];
        let mut marker = SectorMarker::new(63, 1, &mut bits);
        block_on(disk.read_present(sg, 63, &mut marker, IoOptions::default())).unwrap();
        assert!(marker.all_set(), "regrown sectors hide lower layers");
        let mut b = [1u8; 4096];
        mem.read_at(Gpa::new(0), &mut b).unwrap();
        assert_eq!(b, [0u8; 4096]);
    }
}
