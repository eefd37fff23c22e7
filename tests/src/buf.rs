//! Guest buffers for tests: a request's data as one or several guest
//! physical ranges in guest memory of its own (a [`ScratchMemory`], so
//! building one costs no allocation once the thread has made a few), plus
//! blocking helpers that run one disk operation on such a buffer.

use crate::scratch::ScratchMemory;
use parastor_core::Gpa;
use parastor_core::memory::GuestMemory;
use parastor_core::{Disk, DiskError, GpaRange, IoOptions, SgList};

/// Slack after the last range so that guest memory is not exactly as large
/// as the request (an access past a range would then still be in memory and
/// be caught by comparing contents, not by luck).
const SLACK: u64 = 4096;

/// How a request's bytes are scattered over guest memory.
///
/// `cuts` split the buffer into up to `cuts.len() + 1` pieces at arbitrary
/// byte offsets (so pieces need not be whole sectors, and may be empty);
/// `gaps` put unaligned holes between pieces; with `reverse` the pieces sit
/// in guest memory in the opposite order of the data they carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Cut points, each taken modulo `len + 1`.
    pub cuts: Vec<u32>,
    /// Gap before each piece, in bytes (taken modulo 8192).
    pub gaps: Vec<u16>,
    /// Place the pieces in guest memory in reverse order.
    pub reverse: bool,
    /// Make guest memory end this many bytes before the end of the last
    /// piece placed (`Some(0)`: memory ends exactly at the buffer's end), so
    /// the request touches memory that does not exist.
    pub short_memory: Option<u16>,
}

impl Layout {
    /// One contiguous range at GPA 0.
    pub fn contiguous() -> Self {
        Self::default()
    }

    /// The guest ranges for a buffer of `len` bytes, and the guest memory
    /// size needed to hold them.
    pub fn ranges(&self, len: usize) -> (Vec<GpaRange>, u64) {
        let mut cuts: Vec<usize> = self.cuts.iter().map(|&c| c as usize % (len + 1)).collect();
        cuts.sort_unstable();
        let mut lens = Vec::with_capacity(cuts.len() + 1);
        let mut prev = 0;
        for c in cuts {
            lens.push(c - prev);
            prev = c;
        }
        lens.push(len - prev);
        // Place the pieces (possibly in reverse memory order).
        let mut order: Vec<usize> = (0..lens.len()).collect();
        if self.reverse {
            order.reverse();
        }
        let mut gpas = vec![0u64; lens.len()];
        let mut cursor = 0u64;
        for (slot, &piece) in order.iter().enumerate() {
            let gap = self.gaps.get(slot).map_or(0, |&g| u64::from(g) % 8192);
            cursor += gap;
            gpas[piece] = cursor;
            cursor += lens[piece] as u64;
        }
        let ranges = lens
            .iter()
            .zip(&gpas)
            .map(|(&l, &g)| GpaRange::new(Gpa::new(g), l as u64))
            .collect();
        let size = match self.short_memory {
            None => cursor + SLACK,
            Some(short) => cursor.saturating_sub(u64::from(short)),
        };
        (ranges, size)
    }
}

/// One request's buffer: guest memory and the ranges that hold the data.
pub struct TestBuf {
    mem: ScratchMemory,
    ranges: Vec<GpaRange>,
    len: usize,
}

impl TestBuf {
    /// A zeroed buffer of `len` bytes laid out as `layout` says.
    pub fn new(len: usize, layout: &Layout) -> Self {
        let (ranges, size) = layout.ranges(len);
        Self {
            mem: ScratchMemory::take(size),
            ranges,
            len,
        }
    }

    /// A zeroed, contiguous buffer of `len` bytes.
    pub fn contiguous(len: usize) -> Self {
        Self::new(len, &Layout::contiguous())
    }

    /// A buffer whose ranges are given explicitly, in guest memory of
    /// `mem_size` bytes (ranges may lie outside it, to provoke errors).
    pub fn with_ranges(ranges: Vec<GpaRange>, mem_size: u64) -> Self {
        let len = ranges.iter().map(|r| r.len as usize).sum();
        Self {
            mem: ScratchMemory::take(mem_size),
            ranges,
            len,
        }
    }

    /// A buffer holding `data`, laid out as `layout` says.
    pub fn from_data(data: &[u8], layout: &Layout) -> Self {
        let buf = Self::new(data.len(), layout);
        buf.set(data);
        buf
    }

    /// Length of the request in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the request is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The guest ranges.
    pub fn ranges(&self) -> &[GpaRange] {
        &self.ranges
    }

    /// The guest memory.
    pub fn memory(&self) -> &ScratchMemory {
        &self.mem
    }

    /// Whether every non-empty range lies inside guest memory.
    pub fn in_memory(&self) -> bool {
        let size = self.mem.size();
        self.ranges.iter().all(|r| {
            r.len == 0
                || r.gpa
                    .checked_add(r.len)
                    .is_some_and(|e| e <= Gpa::new(size))
        })
    }

    /// A view for a disk call; `writable` for reads (the device writes
    /// into the buffer).
    pub fn sg(&self, writable: bool) -> SgList<'_> {
        SgList::new(&self.mem, &self.ranges, writable).expect("test ranges fit the address space")
    }

    /// Copies `data` (exactly [`TestBuf::len`] bytes) into the ranges that
    /// lie in guest memory.
    pub fn set(&self, data: &[u8]) {
        assert_eq!(
            data.len(),
            self.len,
            "data does not match the buffer length"
        );
        let mut done = 0;
        for r in &self.ranges {
            let n = r.len as usize;
            // Ranges outside memory (see `Layout::short_memory`) are skipped.
            let _ = self.mem.write_at(r.gpa, &data[done..done + n]);
            done += n;
        }
    }

    /// Fills every byte of the ranges with `byte`.
    pub fn fill(&self, byte: u8) {
        for r in &self.ranges {
            let _ = self.mem.fill_at(r.gpa, r.len as usize, byte);
        }
    }

    /// The bytes the ranges hold, concatenated (zero for ranges outside
    /// guest memory).
    pub fn contents(&self) -> Vec<u8> {
        let mut out = vec![0; self.len];
        let mut done = 0;
        for r in &self.ranges {
            let n = r.len as usize;
            let _ = self.mem.read_at(r.gpa, &mut out[done..done + n]);
            done += n;
        }
        out
    }

    /// Every byte of guest memory, to check that nothing outside the ranges
    /// was touched.
    pub fn whole_memory(&self) -> Vec<u8> {
        let mut out = vec![0; self.mem.size() as usize];
        self.mem
            .read_at(Gpa::new(0), &mut out)
            .expect("whole memory is in range");
        out
    }

    /// Fills all of guest memory (ranges, gaps and slack) with `byte`.
    pub fn fill_memory(&self, byte: u8) {
        self.mem
            .fill_at(Gpa::new(0), self.mem.size() as usize, byte)
            .expect("whole memory is in range");
    }

    /// Whether every byte of guest memory outside the ranges is `byte`.
    pub fn outside_ranges_is(&self, byte: u8) -> bool {
        let mut mem = self.whole_memory();
        for r in &self.ranges {
            let start = (r.gpa.get().min(mem.len() as u64)) as usize;
            let end = (r.gpa.get().saturating_add(r.len).min(mem.len() as u64)) as usize;
            mem[start..end].fill(byte);
        }
        mem.iter().all(|&b| b == byte)
    }
}

/// Runs `fut` to completion on the current thread.
pub fn block_on<F: core::future::Future>(fut: F) -> F::Output {
    futures::executor::block_on(fut)
}

/// Reads into `buf` at `sector`.
pub fn read(disk: &Disk, sector: u64, buf: &TestBuf) -> Result<(), DiskError> {
    block_on(disk.read(buf.sg(true), sector, IoOptions::default()))
}

/// Writes `buf` at `sector` with `opts`.
pub fn write(disk: &Disk, sector: u64, buf: &TestBuf, opts: IoOptions) -> Result<(), DiskError> {
    block_on(disk.write(buf.sg(false), sector, opts))
}

/// Reads `count` sectors at `sector` into a fresh contiguous buffer.
pub fn read_vec(disk: &Disk, sector: u64, count: u64) -> Result<Vec<u8>, DiskError> {
    let buf = TestBuf::contiguous(count as usize * disk.sector_size() as usize);
    buf.fill(0xa5);
    read(disk, sector, &buf)?;
    Ok(buf.contents())
}

/// Writes `data` (whole sectors) at `sector` from a contiguous buffer.
pub fn write_vec(disk: &Disk, sector: u64, data: &[u8]) -> Result<(), DiskError> {
    write(
        disk,
        sector,
        &TestBuf::from_data(data, &Layout::contiguous()),
        IoOptions::default(),
    )
}

/// Unmaps `[sector, sector + count)`.
pub fn unmap(disk: &Disk, sector: u64, count: u64) -> Result<(), DiskError> {
    block_on(disk.unmap(sector, count, IoOptions::default()))
}

/// Flushes the disk.
pub fn flush(disk: &Disk) -> Result<(), DiskError> {
    block_on(disk.flush(IoOptions::default()))
}

/// Deterministic test data for `count` sectors starting at `sector`.
///
/// Each sector starts with its own sector number and the seed, so a sector
/// that lands in the wrong place is recognisable in a failure message, and
/// the rest of the sector is a seed- and sector-dependent byte stream.
pub fn pattern(seed: u64, sector: u64, count: u64, sector_size: u32) -> Vec<u8> {
    let ss = sector_size as usize;
    let mut out = vec![0u8; count as usize * ss];
    for (i, chunk) in out.chunks_exact_mut(ss).enumerate() {
        let s = sector.wrapping_add(i as u64);
        chunk[..8].copy_from_slice(&s.to_le_bytes());
        chunk[8..16].copy_from_slice(&seed.to_le_bytes());
        fastrand::Rng::with_seed(seed ^ s.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .fill(&mut chunk[16..]);
    }
    out
}
