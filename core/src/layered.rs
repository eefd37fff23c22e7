//! Layered disks: a stack of layers read top-down with per-sector
//! presence.
//!
//! Reads ask each layer, top (index 0) first, for the sectors no layer
//! above supplied; sectors no layer has read as zero. Writes go to the top
//! layer and on down the contiguous write-through chain. A *read-cache*
//! layer below the top is filled with the data read from below it, through
//! write-no-overwrite so a racing write is never clobbered. Any [`Disk`] can
//! be a layer; a [`RamDisk`] layer can also size itself from the layer
//! below.
//!
//! Construction enforces every rule of the model (OpenVMM's
//! `disk_layered`), each with its own error.

use crate::addr::{Gpa, GpaRange};
use crate::disk::{Disk, DiskIo, IoOptions, SectorMarker, UnmapBehavior};
use crate::drive;
use crate::error::DiskError;
use crate::memory::LocalMemory;
use crate::ram::{RamDisk, RamDiskError};
use crate::sg::{self, SgList};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::future::Future;

/// Sectors handled per pass of the read algorithm; bounds the presence
/// bitmaps kept in the read future.
const WINDOW: u64 = 256;
const WINDOW_WORDS: usize = (WINDOW / 64) as usize;

/// Where a layer comes from.
pub enum LayerSource {
    /// An existing disk.
    Disk(Disk),
    /// A new RAM layer. Its size defaults to the size of the layer below,
    /// and its sector size to the lower layer's (or 512 at the bottom).
    Ram {
        /// Size in bytes, or `None` to match the layer below.
        len_bytes: Option<u64>,
        /// Sector size, or `None` to match the layer below.
        sector_size: Option<u32>,
    },
}

/// One layer of a [`LayeredDisk`] and its role.
pub struct LayerConfig {
    /// The layer.
    pub layer: LayerSource,
    /// Writes to this layer continue to the next layer down.
    pub write_through: bool,
    /// Fill this layer with data read from the layers below it.
    pub read_cache: bool,
}

impl LayerConfig {
    /// A plain layer: no write-through, no read cache.
    pub fn new(layer: LayerSource) -> Self {
        Self {
            layer,
            write_through: false,
            read_cache: false,
        }
    }
}

/// Why a layered disk could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayeredDiskError {
    /// The layer list is empty.
    NoLayers,
    /// Layer `index` (0 = top) is invalid.
    Layer {
        /// Index of the layer, 0 = top.
        index: usize,
        /// What is wrong with it.
        error: InvalidLayer,
    },
}

/// What is wrong with one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidLayer {
    /// A RAM layer could not be created (size or sector size).
    Ram(RamDiskError),
    /// A RAM layer at the bottom has no size and nothing to inherit it from.
    NoSize,
    /// Its sector size is not a valid power of two.
    InvalidSectorSize(u32),
    /// Its sector size differs from the bottom layer's.
    MismatchedSectorSize {
        /// The bottom layer's sector size.
        expected: u32,
        /// This layer's sector size.
        found: u32,
    },
    /// It is write-through but is the last layer, or is not reached by the
    /// write-through chain from the top.
    UselessWriteThrough,
    /// It is in the write path of a writable disk but is read-only.
    ReadOnly,
    /// It is a read cache but does not support write-no-overwrite.
    ReadCacheNotSupported,
}

impl fmt::Display for LayeredDiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayeredDiskError::NoLayers => {
                f.write_str("layered disk has no layers: expected at least one")
            }
            LayeredDiskError::Layer { index, error } => write!(f, "layer {index}: {error}"),
        }
    }
}

impl fmt::Display for InvalidLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidLayer::Ram(e) => write!(f, "{e}"),
            InvalidLayer::NoSize => f.write_str(
                "RAM layer has no size and no layer below to take it from: give its size",
            ),
            InvalidLayer::InvalidSectorSize(s) => {
                write!(f, "sector size {s} is invalid: expected a power of two from 512 to 65536")
            }
            InvalidLayer::MismatchedSectorSize { expected, found } => write!(
                f,
                "sector size {found} differs from the bottom layer's {expected}: all layers must match"
            ),
            InvalidLayer::UselessWriteThrough => f.write_str(
                "write-through has no effect here: it must be on a layer reached by the write-through chain from the top, and not on the last layer",
            ),
            InvalidLayer::ReadOnly => f.write_str(
                "layer is read-only but is in the write path of a writable layered disk",
            ),
            InvalidLayer::ReadCacheNotSupported => {
                f.write_str("layer cannot be a read cache: it does not support write-no-overwrite")
            }
        }
    }
}

impl core::error::Error for LayeredDiskError {}

struct Layer {
    disk: Disk,
    write_through: bool,
    read_cache: bool,
    /// Sectors of this layer visible through the layers above it (the
    /// minimum sector count of it and every layer above, at construction).
    visible: u64,
    inline: bool,
}

/// A disk made of layers. See the module docs.
pub struct LayeredDisk {
    layers: Vec<Layer>,
    /// Number of layers a write reaches (1 + the write-through chain).
    write_path: usize,
    read_only: bool,
    unmap_behavior: UnmapBehavior,
    shift: u32,
    inline: bool,
}

impl LayeredDisk {
    /// Builds a layered disk from `layers`, top (index 0) first.
    pub fn new(
        read_only: bool,
        configs: Vec<LayerConfig>,
    ) -> Result<LayeredDisk, LayeredDiskError> {
        if configs.is_empty() {
            return Err(LayeredDiskError::NoLayers);
        }
        let n = configs.len();
        let err = |index, error| LayeredDiskError::Layer { index, error };

        // Attach bottom-up so RAM layers can size themselves from below.
        let mut attached: Vec<(Disk, bool, bool)> = Vec::with_capacity(n);
        let mut lower: Option<Disk> = None;
        for (index, cfg) in configs.into_iter().enumerate().rev() {
            let disk = match cfg.layer {
                LayerSource::Disk(d) => d,
                LayerSource::Ram {
                    len_bytes,
                    sector_size,
                } => {
                    let ss = sector_size
                        .or(lower.as_ref().map(Disk::sector_size))
                        .unwrap_or(512);
                    if !parastor_hw::is_valid_sector_size(ss) {
                        return Err(err(index, InvalidLayer::InvalidSectorSize(ss)));
                    }
                    let len = match (len_bytes, &lower) {
                        (Some(len), _) => len,
                        (None, Some(l)) => {
                            l.sector_count().saturating_mul(u64::from(l.sector_size()))
                        }
                        (None, None) => return Err(err(index, InvalidLayer::NoSize)),
                    };
                    let ram =
                        RamDisk::new(len, ss).map_err(|e| err(index, InvalidLayer::Ram(e)))?;
                    // RAM disks always have valid metadata.
                    Disk::new(ram).map_err(|_| err(index, InvalidLayer::InvalidSectorSize(ss)))?
                }
            };
            lower = Some(disk.clone());
            attached.push((disk, cfg.write_through, cfg.read_cache));
        }
        attached.reverse();

        let bottom_ss = attached[n - 1].0.sector_size();
        let mut layers = Vec::with_capacity(n);
        let mut visible = u64::MAX;
        for (index, (disk, write_through, read_cache)) in attached.into_iter().enumerate() {
            if disk.sector_size() != bottom_ss {
                let found = disk.sector_size();
                return Err(err(
                    index,
                    InvalidLayer::MismatchedSectorSize {
                        expected: bottom_ss,
                        found,
                    },
                ));
            }
            if read_cache && !disk.supports_write_no_overwrite() {
                return Err(err(index, InvalidLayer::ReadCacheNotSupported));
            }
            visible = visible.min(disk.sector_count());
            let inline = disk.completes_inline();
            layers.push(Layer {
                disk,
                write_through,
                read_cache,
                visible,
                inline,
            });
        }

        // The write path: the top layer and the contiguous write-through
        // chain below it.
        let mut write_path = 1;
        while write_path <= n && layers[write_path - 1].write_through {
            if write_path == n {
                return Err(err(n - 1, InvalidLayer::UselessWriteThrough));
            }
            write_path += 1;
        }
        if let Some(index) = (write_path..n).find(|&i| layers[i].write_through) {
            return Err(err(index, InvalidLayer::UselessWriteThrough));
        }
        let path = &layers[..write_path];
        if !read_only && let Some(index) = path.iter().position(|l| l.disk.is_read_only()) {
            return Err(err(index, InvalidLayer::ReadOnly));
        }

        let all_zeroes = path
            .iter()
            .all(|l| l.disk.unmap_behavior() == UnmapBehavior::Zeroes);
        let any_ignored = path
            .iter()
            .any(|l| l.disk.unmap_behavior() == UnmapBehavior::Ignored);
        let unmap_behavior = if all_zeroes {
            UnmapBehavior::Zeroes
        } else if any_ignored || write_path > 1 {
            // Unmapping only some copies of a write-through chain would make
            // them disagree.
            UnmapBehavior::Ignored
        } else {
            UnmapBehavior::Unspecified
        };
        Ok(LayeredDisk {
            write_path,
            read_only,
            unmap_behavior,
            shift: bottom_ss.trailing_zeros(),
            inline: layers.iter().all(|l| l.inline),
            layers,
        })
    }

    /// How many of the `count` sectors at `sector` layer `index` holds: all
    /// of them for the top layer (the disk's size is the top's), at most its
    /// current size for a layer below.
    fn lower_extent(&self, index: usize, sector: u64, count: u64) -> u64 {
        if index == 0 {
            count
        } else {
            count.min(
                self.layers[index]
                    .disk
                    .sector_count()
                    .saturating_sub(sector),
            )
        }
    }

    /// The layers a write reaches: the top and its write-through chain.
    fn write_layers(&self) -> &[Layer] {
        &self.layers[..self.write_path]
    }

    /// The layers' disks, top first.
    pub fn layers(&self) -> impl Iterator<Item = &Disk> {
        self.layers.iter().map(|l| &l.disk)
    }

    /// Reads `buf` (at `sector`) from layers `from..`, filling every
    /// sector: what no layer has reads as zero. Works in windows of
    /// [`WINDOW`] sectors to bound the presence bitmap.
    async fn read_from(
        &self,
        from: usize,
        buf: SgList<'_>,
        sector: u64,
        opts: IoOptions,
    ) -> Result<(), DiskError> {
        let total = (buf.len() >> self.shift) as u64;
        if from == 0 {
            match sector.checked_add(total) {
                Some(end) if end <= self.sector_count() => {}
                _ => return Err(DiskError::IllegalBlock),
            }
        }
        let mut bits = [0u64; WINDOW_WORDS];
        let mut offset = 0;
        // One pass per window of sectors; each pass walks the layers.
        'windows: while offset < total {
            let window = sector + offset;
            let count = (total - offset).min(WINDOW);
            let mut have = SectorMarker::new(window, count, &mut bits);
            for (index, layer) in self.layers.iter().enumerate().skip(from) {
                let mut at = window;
                while let Some((s, n)) = have.next_unset(at) {
                    at = s + n;
                    // Sectors of a lower layer past its visible count (or
                    // its current size, if it shrank) are zero.
                    let end = if index == 0 {
                        s + n
                    } else {
                        (s + n).min(layer.visible).min(layer.disk.sector_count())
                    };
                    if end <= s {
                        continue;
                    }
                    let rbuf = buf.sectors(self.shift, s - sector, end - s)?;
                    let disk = &layer.disk;
                    let marker = &mut have;
                    drive!(layer.inline, disk.read_present(rbuf, s, marker, opts))
                        .map_err(|e| e.in_member(index as u32))?;
                    if layer.read_cache && index + 1 < self.layers.len() {
                        // Fill the cache with what the layers below hold for
                        // the sectors it lacks.
                        let mut m = s;
                        while let Some((ms, mn)) = have.next_unset(m).filter(|&(ms, _)| ms < end) {
                            let mn = mn.min(end - ms);
                            m = ms + mn;
                            let gbuf = buf.sectors(self.shift, ms - sector, mn)?;
                            Box::pin(self.fill_cache(index, gbuf, ms, opts)).await?;
                            have.set_range(ms, mn);
                        }
                    }
                }
                if have.all_set() {
                    offset += count;
                    continue 'windows;
                }
            }
            // Whatever no layer has reads as zero.
            let mut at = window;
            while let Some((s, n)) = have.next_unset(at) {
                at = s + n;
                buf.sectors(self.shift, s - sector, n)?.zero()?;
            }
            offset += count;
        }
        Ok(())
    }

    /// Reads `[sector, …)` from the layers below read-cache layer `index`
    /// into a private buffer, fills the cache from it, and copies it to the
    /// guest. The private buffer keeps the guest (who can change its buffer
    /// at any time) from planting data in the cache.
    async fn fill_cache(
        &self,
        index: usize,
        guest: SgList<'_>,
        sector: u64,
        opts: IoOptions,
    ) -> Result<(), DiskError> {
        let bounce = LocalMemory::new(guest.len());
        let range = [GpaRange::new(Gpa::new(0), guest.len() as u64)];
        let private = SgList::new(&bounce, &range, true)
            .map_err(|_| DiskError::InvalidInput("read too large"))?;
        self.read_from(index + 1, private, sector, opts).await?;
        let cache = &self.layers[index];
        let disk = &cache.disk;
        // A failed fill only costs a future cache miss.
        if let Err(e) = drive!(cache.inline, disk.write_no_overwrite(private, sector)) {
            log::warn!("read cache layer {index}: fill at sector {sector} failed: {e}");
        }
        sg::copy(&private, &guest)?;
        Ok(())
    }
}

impl DiskIo for LayeredDisk {
    fn kind(&self) -> &'static str {
        "layered"
    }
    fn sector_count(&self) -> u64 {
        self.layers[0].disk.sector_count()
    }
    fn sector_size(&self) -> u32 {
        self.layers[0].disk.sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.layers[0].disk.physical_sector_size()
    }
    fn disk_id(&self) -> Option<[u8; 16]> {
        self.layers.iter().find_map(|l| l.disk.disk_id())
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn is_fua_respected(&self) -> bool {
        self.write_layers()
            .iter()
            .all(|l| l.disk.is_fua_respected())
    }
    fn unmap_behavior(&self) -> UnmapBehavior {
        self.unmap_behavior
    }
    fn optimal_unmap_sectors(&self) -> u32 {
        let path = self.write_layers().iter();
        path.map(|l| l.disk.optimal_unmap_sectors())
            .max()
            .unwrap_or(1)
    }
    fn completes_inline(&self) -> bool {
        self.inline
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        alloc::vec![
            ("layers", format!("{}", self.layers.len())),
            ("write path", format!("{} layer(s)", self.write_path))
        ]
    }
    fn children(&self) -> Vec<(String, Disk)> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut label = format!("layer {i}");
                if l.write_through {
                    label.push_str(" write-through");
                }
                if l.read_cache {
                    label.push_str(" read-cache");
                }
                if i > 0 && l.visible < l.disk.sector_count() {
                    label.push_str(&format!(" (visible {} sectors)", l.visible));
                }
                (label, l.disk.clone())
            })
            .collect()
    }

    fn read(
        &self,
        buf: SgList<'_>,
        sector: u64,
        opts: IoOptions,
    ) -> impl Future<Output = Result<(), DiskError>> + Send {
        self.read_from(0, buf, sector, opts)
    }

    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        let count = (buf.len() >> self.shift) as u64;
        match sector.checked_add(count) {
            Some(end) if end <= self.sector_count() => {}
            _ => return Err(DiskError::IllegalBlock),
        }
        for (index, layer) in self.write_layers().iter().enumerate() {
            // A write-through layer smaller than the top (built so, or the
            // top grew) takes the part of the write that fits.
            let n = self.lower_extent(index, sector, count);
            if n == 0 {
                continue;
            }
            let part = buf.sectors(self.shift, 0, n)?;
            let disk = &layer.disk;
            drive!(layer.inline, disk.write(part, sector, opts))
                .map_err(|e| e.in_member(index as u32))?;
        }
        Ok(())
    }

    async fn flush(&self, opts: IoOptions) -> Result<(), DiskError> {
        for (index, layer) in self.write_layers().iter().enumerate() {
            let disk = &layer.disk;
            drive!(layer.inline, disk.flush(opts)).map_err(|e| e.in_member(index as u32))?;
        }
        Ok(())
    }

    async fn unmap(&self, sector: u64, count: u64, opts: IoOptions) -> Result<(), DiskError> {
        match sector.checked_add(count) {
            Some(end) if end <= self.sector_count() => {}
            _ => return Err(DiskError::IllegalBlock),
        }
        if self.unmap_behavior == UnmapBehavior::Ignored {
            return Ok(());
        }
        for (index, layer) in self.write_layers().iter().enumerate() {
            let n = self.lower_extent(index, sector, count);
            if n == 0 {
                continue;
            }
            let next_is_zero = self
                .layers
                .get(index + 1)
                .is_none_or(|next| sector >= next.visible.min(next.disk.sector_count()));
            let opts = IoOptions {
                next_is_zero,
                ..opts
            };
            let disk = &layer.disk;
            drive!(layer.inline, disk.unmap(sector, n, opts))
                .map_err(|e| e.in_member(index as u32))?;
        }
        Ok(())
    }

    async fn wait_resize(&self, known: u64) -> u64 {
        self.layers[0].disk.wait_resize(known).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{GuestMemory, RamGuestMemory};
    use futures::executor::block_on;

    fn ram(len: u64) -> Disk {
        Disk::new(RamDisk::new(len, 512).unwrap()).unwrap()
    }

    #[test]
    fn fall_through_read_cache_and_write_through() {
        let bottom = ram(1 << 20);
        let cache = ram(1 << 20);
        let mem = RamGuestMemory::new(1 << 20);
        let r = [GpaRange::new(Gpa::new(0), 4096)];
        let sg = SgList::new(&mem, &r, true).unwrap();
        mem.fill_at(Gpa::new(0), 4096, 0x42).unwrap();
        block_on(bottom.write(sg, 8, IoOptions::default())).unwrap();

        let layered = LayeredDisk::new(
            false,
            alloc::vec![
                LayerConfig {
                    layer: LayerSource::Ram {
                        len_bytes: None,
                        sector_size: None
                    },
                    write_through: true,
                    read_cache: false
                },
                LayerConfig {
                    layer: LayerSource::Disk(cache.clone()),
                    write_through: false,
                    read_cache: true
                },
                LayerConfig::new(LayerSource::Disk(bottom.clone())),
            ],
        )
        .unwrap();
        let disk = Disk::new(layered).unwrap();
        assert_eq!(disk.sector_count(), 2048);
        // Sectors 4..16: 4..8 absent everywhere (zero), 8..16 from the bottom.
        let r12 = [GpaRange::new(Gpa::new(0), 12 * 512)];
        let sg12 = SgList::new(&mem, &r12, true).unwrap();
        mem.fill_at(Gpa::new(0), 12 * 512, 0xff).unwrap();
        block_on(disk.read(sg12, 4, IoOptions::default())).unwrap();
        let mut back = alloc::vec![0u8; 12 * 512];
        mem.read_at(Gpa::new(0), &mut back).unwrap();
        assert!(back[..2048].iter().all(|&b| b == 0));
        assert!(back[2048..].iter().all(|&b| b == 0x42));
        // The read filled the cache layer.
        mem.fill_at(Gpa::new(0), 4096, 0).unwrap();
        block_on(cache.read(sg, 8, IoOptions::default())).unwrap();
        mem.read_at(Gpa::new(0), &mut back[..4096]).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0x42));
        // A write goes to the top and, write-through, to the cache layer —
        // not to the bottom.
        mem.fill_at(Gpa::new(0), 4096, 0x17).unwrap();
        block_on(disk.write(sg, 100, IoOptions::default())).unwrap();
        block_on(cache.read(sg, 100, IoOptions::default())).unwrap();
        mem.read_at(Gpa::new(0), &mut back[..4096]).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0x17));
        block_on(bottom.read(sg, 100, IoOptions::default())).unwrap();
        mem.read_at(Gpa::new(0), &mut back[..4096]).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0));
    }

    /// The zero-allocation design depends on composite futures fitting the
    /// inline budget of [`crate::IoFuture`].
    #[test]
    fn futures_fit_the_inline_budget() {
        use crate::disk::IO_FUTURE_BYTES;
        use crate::striped::StripedDisk;
        let mem = RamGuestMemory::new(1 << 16);
        let r = [GpaRange::new(Gpa::new(0), 4096)];
        let sg = SgList::new(&mem, &r, true).unwrap();
        let top = LayerConfig::new(LayerSource::Ram {
            len_bytes: None,
            sector_size: None,
        });
        let l = LayeredDisk::new(
            false,
            alloc::vec![top, LayerConfig::new(LayerSource::Disk(ram(1 << 20)))],
        )
        .unwrap();
        let s = StripedDisk::new(alloc::vec![ram(1 << 20), ram(1 << 20)], None, None).unwrap();
        let o = IoOptions::default();
        let sizes = [
            core::mem::size_of_val(&DiskIo::read(&l, sg, 0, o)),
            core::mem::size_of_val(&DiskIo::write(&l, sg, 0, o)),
            core::mem::size_of_val(&DiskIo::unmap(&l, 0, 8, o)),
            core::mem::size_of_val(&DiskIo::read(&s, sg, 0, o)),
            core::mem::size_of_val(&DiskIo::write(&s, sg, 0, o)),
        ];
        for size in sizes {
            assert!(
                size <= IO_FUTURE_BYTES,
                "future of {size} bytes exceeds {IO_FUTURE_BYTES}: {sizes:?}"
            );
        }
    }

    #[test]
    fn construction_rules() {
        let e = |r: Result<LayeredDisk, LayeredDiskError>| r.err().unwrap();
        assert_eq!(
            e(LayeredDisk::new(false, alloc::vec![])),
            LayeredDiskError::NoLayers
        );
        let wt = |d| LayerConfig {
            layer: LayerSource::Disk(d),
            write_through: true,
            read_cache: false,
        };
        assert_eq!(
            e(LayeredDisk::new(false, alloc::vec![wt(ram(4096))])),
            LayeredDiskError::Layer {
                index: 0,
                error: InvalidLayer::UselessWriteThrough
            }
        );
        let four_k = Disk::new(RamDisk::new(8192, 4096).unwrap()).unwrap();
        assert_eq!(
            e(LayeredDisk::new(
                false,
                alloc::vec![
                    LayerConfig::new(LayerSource::Disk(ram(8192))),
                    LayerConfig::new(LayerSource::Disk(four_k))
                ]
            )),
            LayeredDiskError::Layer {
                index: 0,
                error: InvalidLayer::MismatchedSectorSize {
                    expected: 4096,
                    found: 512
                }
            }
        );
        assert_eq!(
            e(LayeredDisk::new(
                false,
                alloc::vec![LayerConfig::new(LayerSource::Ram {
                    len_bytes: None,
                    sector_size: None
                })]
            )),
            LayeredDiskError::Layer {
                index: 0,
                error: InvalidLayer::NoSize
            }
        );
    }
}
