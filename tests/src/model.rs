//! A reference model of a disk's contents, to check reads against.
//!
//! Each sector is [`SectorState::Known`] (its bytes), [`SectorState::Zero`]
//! or [`SectorState::Unknown`] (anything may be read — after an unmap with
//! [`UnmapBehavior::Unspecified`], or before the first read of a disk whose
//! initial contents are not known). The first read of an unknown sector
//! pins it: an unknown sector may read as anything, but the same thing every
//! time until it is written.

use parastor_core::UnmapBehavior;
use std::collections::BTreeMap;
use std::fmt;

/// What the model knows about one sector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SectorState {
    /// The sector holds exactly these bytes.
    Known(Box<[u8]>),
    /// The sector reads as zero.
    Zero,
    /// The sector may read as anything (pinned by the next read).
    Unknown,
}

/// A read that disagreed with the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The sector that read wrong.
    pub sector: u64,
    /// Byte offset of the first differing byte within the sector.
    pub offset: usize,
    /// The byte the model expected there.
    pub expected: u8,
    /// The byte that was read.
    pub found: u8,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sector {} byte {}: expected {:#04x}, read {:#04x}",
            self.sector, self.offset, self.expected, self.found
        )
    }
}

impl std::error::Error for Mismatch {}

/// The model of one disk.
#[derive(Clone, Debug)]
pub struct Model {
    sector_size: usize,
    sector_count: u64,
    /// Sectors whose state differs from `initial`.
    sectors: BTreeMap<u64, SectorState>,
    /// State of every sector not in `sectors`.
    initial: SectorState,
}

impl Model {
    /// A disk of `sector_count` sectors whose every sector is `initial`.
    pub fn new(sector_count: u64, sector_size: u32, initial: SectorState) -> Self {
        Self {
            sector_size: sector_size as usize,
            sector_count,
            sectors: BTreeMap::new(),
            initial,
        }
    }

    /// A disk that starts out zeroed.
    pub fn zeroed(sector_count: u64, sector_size: u32) -> Self {
        Self::new(sector_count, sector_size, SectorState::Zero)
    }

    /// Current sector count.
    pub fn sector_count(&self) -> u64 {
        self.sector_count
    }

    /// Sector size in bytes.
    pub fn sector_size(&self) -> u32 {
        self.sector_size as u32
    }

    /// Whether `[sector, sector + count)` is inside the disk (and the end is
    /// representable).
    pub fn in_range(&self, sector: u64, count: u64) -> bool {
        sector
            .checked_add(count)
            .is_some_and(|end| end <= self.sector_count)
    }

    /// The state of `sector`.
    pub fn state(&self, sector: u64) -> &SectorState {
        self.sectors.get(&sector).unwrap_or(&self.initial)
    }

    /// Sets the state of `sector`.
    pub fn set(&mut self, sector: u64, state: SectorState) {
        if state == self.initial {
            self.sectors.remove(&sector);
        } else {
            self.sectors.insert(sector, state);
        }
    }

    /// Records a successful write of `data` (whole sectors) at `sector`.
    pub fn write(&mut self, sector: u64, data: &[u8]) {
        for (i, chunk) in data.chunks_exact(self.sector_size).enumerate() {
            let state = if chunk.iter().all(|&b| b == 0) {
                SectorState::Zero
            } else {
                SectorState::Known(chunk.into())
            };
            self.set(sector + i as u64, state);
        }
    }

    /// Marks `[sector, sector + count)` as unknown (for example after a
    /// write that failed part-way).
    pub fn forget(&mut self, sector: u64, count: u64) {
        for s in sector..sector.saturating_add(count).min(self.sector_count) {
            self.set(s, SectorState::Unknown);
        }
    }

    /// Records a successful unmap on a disk that behaves as `behavior`.
    pub fn unmap(&mut self, sector: u64, count: u64, behavior: UnmapBehavior) {
        let state = match behavior {
            UnmapBehavior::Ignored => return,
            UnmapBehavior::Zeroes => SectorState::Zero,
            UnmapBehavior::Unspecified => SectorState::Unknown,
        };
        for s in sector..sector.saturating_add(count).min(self.sector_count) {
            self.set(s, state.clone());
        }
    }

    /// Records a resize: shrinking drops the tail, growing adds sectors in
    /// state `grown` (zero for every disk parastor has: data past a shrink
    /// must never reappear).
    pub fn resize(&mut self, new_count: u64, grown: SectorState) {
        let old = self.sector_count;
        self.sectors.retain(|&s, _| s < new_count);
        self.sector_count = new_count;
        for s in old..new_count {
            self.set(s, grown.clone());
        }
    }

    /// Checks `data` (whole sectors), read at `sector`, against the model;
    /// pins unknown sectors to what was read.
    pub fn check_read(&mut self, sector: u64, data: &[u8]) -> Result<(), Mismatch> {
        for (i, chunk) in data.chunks_exact(self.sector_size).enumerate() {
            let s = sector + i as u64;
            let diff = |expected: &mut dyn Iterator<Item = u8>| {
                chunk
                    .iter()
                    .zip(expected)
                    .enumerate()
                    .find(|(_, (a, b))| a != &b)
                    .map(|(offset, (&found, expected))| Mismatch {
                        sector: s,
                        offset,
                        expected,
                        found,
                    })
            };
            match self.state(s) {
                SectorState::Known(bytes) => {
                    if let Some(m) = diff(&mut bytes.iter().copied()) {
                        return Err(m);
                    }
                }
                SectorState::Zero => {
                    if let Some(m) = diff(&mut core::iter::repeat(0)) {
                        return Err(m);
                    }
                }
                SectorState::Unknown => self.write(s, chunk),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_zero_unknown() {
        let mut m = Model::zeroed(8, 512);
        assert!(m.check_read(0, &[0; 1024]).is_ok());
        let mut data = vec![7u8; 1024];
        m.write(2, &data);
        assert!(m.check_read(2, &data).is_ok());
        data[600] = 8;
        let e = m.check_read(2, &data).unwrap_err();
        assert_eq!((e.sector, e.offset, e.expected, e.found), (3, 88, 7, 8));
        m.unmap(2, 1, UnmapBehavior::Unspecified);
        assert!(m.check_read(2, &[9; 512]).is_ok());
        assert!(
            m.check_read(2, &[1; 512]).is_err(),
            "an unknown sector is pinned by a read"
        );
        m.unmap(2, 2, UnmapBehavior::Ignored);
        assert!(m.check_read(2, &[9; 512]).is_ok());
        m.unmap(2, 2, UnmapBehavior::Zeroes);
        assert!(m.check_read(2, &[0; 1024]).is_ok());
    }

    #[test]
    fn resize_drops_the_tail() {
        let mut m = Model::zeroed(4, 512);
        m.write(3, &[5; 512]);
        assert!(m.in_range(3, 1) && !m.in_range(3, 2) && !m.in_range(u64::MAX, 2));
        m.resize(3, SectorState::Zero);
        assert!(!m.in_range(3, 1));
        m.resize(4, SectorState::Zero);
        assert!(m.check_read(3, &[5; 512]).is_err());
        assert!(m.check_read(3, &[0; 512]).is_ok());
    }
}
