//! `parastor disk verify`: a random workload checked against a reference
//! model.
//!
//! Reads, writes, unmaps and flushes of random sizes (1 to 256 sectors but
//! at most 1 MiB, mostly small) at random places (uniform, clustered around a few hot
//! spots so operations overlap, and at both ends of the disk) go to the
//! disk through scatter-gather lists of 1 to 4 ranges cut at random byte
//! offsets and scattered through guest memory. The model tracks only the
//! sectors the workload touched:
//!
//! - a sector starts *unknown*: the first read accepts what it finds and
//!   remembers it;
//! - a write sets the sector to data derived from the seed, the writing
//!   operation and the LBA (stamped with both, so misplaced data can be
//!   traced to where it was meant to go);
//! - an unmap follows [`Disk::unmap_behavior`]: zeros, unknown again, or
//!   unchanged.
//!
//! Some requests reach past the end of the disk (or past any representable
//! byte offset) and must fail with [`DiskError::IllegalBlock`] without
//! changing anything. Read buffers are filled with a random poison byte
//! first, so a disk that leaves part of a buffer untouched is caught.

use super::format;
use super::rng::{Rng, RngExt, seeded};
use indicatif::{ProgressBar, ProgressStyle};
use parastor_core::Gpa;
use parastor_core::{Disk, DiskError, GpaRange, IoOptions, RamGuestMemory, SgList, UnmapBehavior};
use parastor_runtime::block_on;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// How many failures a summary keeps in detail.
pub const MAX_REPORTED: usize = 10;

/// Largest request, in sectors...
const MAX_SECTORS: u64 = 256;
/// ...and in bytes, so disks with large sectors move a sane amount of data
/// (64 KiB sectors: at most 16 per request).
const MAX_REQUEST_BYTES: u64 = 1 << 20;
/// Half-width of the hot spots, in sectors.
const HOT_WINDOW: u64 = 2048;
/// Largest gap between scattered ranges in guest memory, in bytes.
const MAX_GAP: u64 = 4096;
/// Most ranges per scatter-gather list.
const MAX_RANGES: u64 = 4;

/// What to run.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Number of operations.
    pub ops: u64,
    /// Seed of the workload; the same seed on the same disk replays it.
    pub seed: u64,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// The operations issued, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// In-range reads.
    pub reads: u64,
    /// In-range writes.
    pub writes: u64,
    /// In-range unmaps.
    pub unmaps: u64,
    /// Flushes.
    pub flushes: u64,
    /// Requests outside the disk, which must fail.
    pub out_of_range: u64,
}

/// One request of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// What it does.
    pub kind: OpKind,
    /// First sector.
    pub lba: u64,
    /// Number of sectors.
    pub count: u64,
}

/// The kind of a [`Request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Read.
    Read,
    /// Write, with or without FUA.
    Write {
        /// Force unit access.
        fua: bool,
    },
    /// Unmap.
    Unmap,
    /// Flush.
    Flush,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            OpKind::Flush => return f.write_str("flush"),
            OpKind::Read => "read",
            OpKind::Write { fua: false } => "write",
            OpKind::Write { fua: true } => "FUA write",
            OpKind::Unmap => "unmap",
        };
        let s = if self.count == 1 { "" } else { "s" };
        write!(f, "{what} of {} sector{s} at LBA {}", self.count, self.lba)
    }
}

/// What the model expected a sector to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Zeros, since operation `since` (an unmap, or the first read).
    Zeroes {
        /// The operation that established it.
        since: u64,
    },
    /// The data operation `op` wrote.
    Written {
        /// The writing operation.
        op: u64,
    },
    /// The data operation `op` read first.
    FirstRead {
        /// The operation that read it.
        op: u64,
    },
}

/// What went wrong with one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A sector read back differently from the model.
    Mismatch {
        /// The sector.
        lba: u64,
        /// What the model expected.
        expected: Expected,
        /// First differing byte within the sector.
        offset: usize,
        /// The byte expected there.
        expected_byte: u8,
        /// The byte found there.
        found_byte: u8,
        /// If the sector holds data this run wrote elsewhere or earlier: the
        /// LBA it was written to and the operation that wrote it.
        found_origin: Option<(u64, u64)>,
    },
    /// An in-range operation failed.
    Error(DiskError),
    /// An out-of-range operation did not fail with
    /// [`DiskError::IllegalBlock`].
    NotRejected(Result<(), DiskError>),
}

/// One failed check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Index of the operation, from 0.
    pub op: u64,
    /// The request.
    pub request: Request,
    /// What went wrong.
    pub problem: Problem,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (op, req) = (self.op, self.request);
        match &self.problem {
            Problem::Mismatch {
                lba,
                expected,
                offset,
                expected_byte,
                found_byte,
                found_origin,
            } => {
                let want = match expected {
                    Expected::Zeroes { since } => format!("zeros since op {since}"),
                    Expected::Written { op } => format!("data written by op {op}"),
                    Expected::FirstRead { op } => format!("data first read by op {op}"),
                };
                write!(
                    f,
                    "op {op} ({req}): LBA {lba} differs at byte {offset}: found {found_byte:#04x}, \
                     expected {expected_byte:#04x} ({want})"
                )?;
                if let Some((at, by)) = found_origin {
                    write!(f, "; the sector holds the data op {by} wrote to LBA {at}")?;
                }
                Ok(())
            }
            Problem::Error(e) => write!(f, "op {op} ({req}) failed: {e}"),
            Problem::NotRejected(got) => {
                let got = match got {
                    Ok(()) => "success".to_owned(),
                    Err(e) => format!("'{e}'"),
                };
                write!(
                    f,
                    "op {op} ({req}) is out of range: expected '{}', got {got}",
                    DiskError::IllegalBlock
                )
            }
        }
    }
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct VerifySummary {
    /// The seed the workload was generated from.
    pub seed: u64,
    /// Operations issued.
    pub ops: u64,
    /// Operations by kind.
    pub counts: OpCounts,
    /// Bytes read by in-range reads.
    pub bytes_read: u64,
    /// Bytes written by in-range writes.
    pub bytes_written: u64,
    /// Bytes unmapped by in-range unmaps.
    pub bytes_unmapped: u64,
    /// Sectors read whose content the model knew (and so checked).
    pub sectors_checked: u64,
    /// Sectors read while unknown to the model (accepted and remembered).
    pub sectors_first_read: u64,
    /// Sectors that read back differently from the model.
    pub mismatched_sectors: u64,
    /// Operations that failed or were wrongly accepted.
    pub failed_ops: u64,
    /// The first [`MAX_REPORTED`] failures, in order.
    pub failures: Vec<Failure>,
    /// Sectors the model tracked at the end.
    pub sectors_tracked: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

impl VerifySummary {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.mismatched_sectors == 0 && self.failed_ops == 0
    }
}

impl fmt::Display for VerifySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let n = format::count;
        writeln!(f, "seed: {}", self.seed)?;
        writeln!(
            f,
            "ops: {} ({} reads, {} writes, {} unmaps, {} flushes, {} out-of-range)",
            n(self.ops),
            n(c.reads),
            n(c.writes),
            n(c.unmaps),
            n(c.flushes),
            n(c.out_of_range)
        )?;
        writeln!(
            f,
            "bytes: {} read, {} written, {} unmapped",
            format::bytes(self.bytes_read),
            format::bytes(self.bytes_written),
            format::bytes(self.bytes_unmapped)
        )?;
        writeln!(
            f,
            "sectors: {} checked against the model, {} first reads, {} tracked at the end",
            n(self.sectors_checked),
            n(self.sectors_first_read),
            n(self.sectors_tracked)
        )?;
        writeln!(f, "mismatched sectors: {}", n(self.mismatched_sectors))?;
        writeln!(f, "failed operations: {}", n(self.failed_ops))?;
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        };
        writeln!(f, "elapsed: {secs:.2} s ({} ops/s)", n(rate as u64))?;
        if !self.failures.is_empty() {
            let total = self.mismatched_sectors + self.failed_ops;
            writeln!(f, "first {} of {} problems:", self.failures.len(), n(total))?;
            for failure in &self.failures {
                writeln!(f, "  {failure}")?;
            }
        }
        write!(f, "result: {}", if self.passed() { "PASS" } else { "FAIL" })
    }
}

/// What the model knows about one sector.
enum Sector {
    /// Zeros, since operation `since`.
    Zero { since: u64 },
    /// The pattern of the writing operation `op`.
    Written { op: u64 },
    /// Whatever operation `op` read first.
    Seen { op: u64, data: Box<[u8]> },
}

/// Fills `out` (one sector) with the data operation `op` writes to `lba`:
/// the LBA and the op stamped at the start, seeded noise after.
fn pattern(seed: u64, op: u64, lba: u64, out: &mut [u8]) {
    let mut rng = seeded(seed ^ op.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ lba.rotate_left(29));
    rng.fill(&mut out[16..]);
    out[..8].copy_from_slice(&lba.to_le_bytes());
    out[8..16].copy_from_slice(&op.to_le_bytes());
}

/// Runs the workload on `disk` and checks it against the model.
pub fn run(disk: &Disk, options: &VerifyOptions) -> VerifySummary {
    let progress = if options.progress {
        let bar = ProgressBar::new(options.ops);
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} ops ({per_sec}, {eta} left)",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut v = Verifier::new(disk, options.seed);
    let start = Instant::now();
    for op in 0..options.ops {
        v.step(op);
        if op % 256 == 255 {
            progress.set_position(op + 1);
        }
    }
    progress.finish_and_clear();
    v.summary.ops = options.ops;
    v.summary.sectors_tracked = v.model.len() as u64;
    v.summary.elapsed = start.elapsed();
    v.summary
}

struct Verifier<'a> {
    disk: &'a Disk,
    rng: Rng,
    seed: u64,
    sector_size: usize,
    sectors: u64,
    /// Largest request in sectors.
    max_sectors: u64,
    read_only: bool,
    unmap: UnmapBehavior,
    hot: [u64; 4],
    model: HashMap<u64, Sector>,
    mem: RamGuestMemory,
    ranges: Vec<GpaRange>,
    /// The request's data on the host side.
    host: Vec<u8>,
    /// One expected sector.
    expect: Vec<u8>,
    summary: VerifySummary,
}

impl<'a> Verifier<'a> {
    fn new(disk: &'a Disk, seed: u64) -> Self {
        let mut rng = seeded(seed);
        let sectors = disk.sector_count();
        let sector_size = disk.sector_size() as usize;
        let hot = [(); 4].map(|()| rng.below(sectors));
        let max_sectors = (MAX_REQUEST_BYTES / sector_size as u64).clamp(1, MAX_SECTORS);
        let max_bytes = max_sectors * sector_size as u64;
        Verifier {
            disk,
            rng,
            seed,
            sector_size,
            sectors,
            max_sectors,
            read_only: disk.is_read_only(),
            unmap: disk.unmap_behavior(),
            hot,
            model: HashMap::new(),
            // Guest memory is allocated as it is touched.
            mem: RamGuestMemory::new(max_bytes + (MAX_RANGES + 1) * MAX_GAP),
            ranges: Vec::with_capacity(MAX_RANGES as usize),
            host: vec![0; max_bytes as usize],
            expect: vec![0; sector_size],
            summary: VerifySummary {
                seed,
                ops: 0,
                counts: OpCounts::default(),
                bytes_read: 0,
                bytes_written: 0,
                bytes_unmapped: 0,
                sectors_checked: 0,
                sectors_first_read: 0,
                mismatched_sectors: 0,
                failed_ops: 0,
                failures: Vec::new(),
                sectors_tracked: 0,
                elapsed: Duration::ZERO,
            },
        }
    }

    fn report(&mut self, op: u64, request: Request, problem: Problem) {
        if matches!(problem, Problem::Mismatch { .. }) {
            self.summary.mismatched_sectors += 1;
        } else {
            self.summary.failed_ops += 1;
        }
        if self.summary.failures.len() < MAX_REPORTED {
            self.summary.failures.push(Failure {
                op,
                request,
                problem,
            });
        }
    }

    /// A request length: mostly small, sometimes as large as allowed, and
    /// never more than `limit` sectors.
    fn pick_len(&mut self, limit: u64) -> u64 {
        let cap = match self.rng.below(10) {
            0..=4 => 8,
            5..=7 => 64,
            _ => MAX_SECTORS,
        };
        1 + self.rng.below(cap.min(self.max_sectors).min(limit))
    }

    /// A start for `len` in-range sectors.
    fn pick_lba(&mut self, len: u64) -> u64 {
        let last = self.sectors - len;
        match self.rng.below(10) {
            0..=3 => self.rng.range(0, last),
            4..=7 => {
                let center = self.hot[self.rng.below(4) as usize];
                let lo = center.saturating_sub(HOT_WINDOW);
                self.rng
                    .range(lo, center.saturating_add(HOT_WINDOW))
                    .min(last)
            }
            8 => last - self.rng.below(last.min(16) + 1),
            _ => self.rng.below(last.min(16) + 1),
        }
    }

    /// Cuts a `bytes`-long buffer into 1 to 4 ranges at random offsets and
    /// scatters them through guest memory in random order.
    fn layout(&mut self, bytes: u64) {
        let pieces = (1 + self.rng.below(MAX_RANGES)).min(bytes);
        let mut cuts = [bytes; MAX_RANGES as usize + 1];
        cuts[0] = 0;
        let aligned = self.rng.chance(50);
        for cut in cuts.iter_mut().take(pieces as usize).skip(1) {
            *cut = if aligned && bytes >= self.sector_size as u64 * 2 {
                self.rng.range(1, bytes / self.sector_size as u64 - 1) * self.sector_size as u64
            } else {
                self.rng.range(1, bytes - 1)
            };
        }
        let cuts = &mut cuts[..pieces as usize + 1];
        cuts.sort_unstable();
        self.ranges.clear();
        for w in cuts.windows(2) {
            if w[1] > w[0] {
                self.ranges.push(GpaRange::new(Gpa::new(0), w[1] - w[0]));
            }
        }
        // Place the pieces in a random order with random gaps between them.
        let n = self.ranges.len();
        let mut order = [0, 1, 2, 3];
        for i in (1..n).rev() {
            order.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
        let mut gpa = self.rng.below(MAX_GAP);
        for &i in order.iter().filter(|&&i| i < n) {
            self.ranges[i].gpa = Gpa::new(gpa);
            gpa += self.ranges[i].len + self.rng.below(MAX_GAP);
        }
    }

    fn step(&mut self, op: u64) {
        if self.sectors == 0 {
            return self.out_of_range(op);
        }
        match self.rng.below(100) {
            0..=44 => self.read(op),
            45..=84 => self.write(op),
            85..=92 => self.unmap(op),
            93..=94 => self.flush(op),
            _ => self.out_of_range(op),
        }
    }

    /// Puts the pattern `op` writes to `[lba, lba + count)` into guest
    /// memory, scattered by a new layout; returns the request's length.
    fn stage_write(&mut self, op: u64, lba: u64, count: u64) -> Result<u64, DiskError> {
        let ss = self.sector_size;
        let bytes = count * ss as u64;
        for (i, sector) in self.host[..bytes as usize].chunks_exact_mut(ss).enumerate() {
            pattern(self.seed, op, lba.wrapping_add(i as u64), sector);
        }
        self.layout(bytes);
        view(&self.mem, &self.ranges, true)?.write_all(&self.host[..bytes as usize])?;
        Ok(bytes)
    }

    fn read(&mut self, op: u64) {
        let count = self.pick_len(self.sectors);
        let lba = self.pick_lba(count);
        let request = Request {
            kind: OpKind::Read,
            lba,
            count,
        };
        self.summary.counts.reads += 1;
        let bytes = count * self.sector_size as u64;
        self.layout(bytes);
        let poison = 1 + self.rng.below(255) as u8;
        let result = view(&self.mem, &self.ranges, true).and_then(|sg| {
            sg.writer()?.fill(poison, bytes as usize)?;
            block_on(self.disk.read(sg, lba, IoOptions::default()))?;
            Ok(sg.read_all(&mut self.host[..bytes as usize])?)
        });
        if let Err(e) = result {
            return self.report(op, request, Problem::Error(e));
        }
        self.summary.bytes_read += bytes;
        let ss = self.sector_size;
        for i in 0..count as usize {
            let sector_lba = lba + i as u64;
            let found = &self.host[i * ss..(i + 1) * ss];
            let (expected, diff) = match self.model.get(&sector_lba) {
                None => {
                    let state = if found.iter().all(|&b| b == 0) {
                        Sector::Zero { since: op }
                    } else {
                        Sector::Seen {
                            op,
                            data: found.into(),
                        }
                    };
                    self.model.insert(sector_lba, state);
                    self.summary.sectors_first_read += 1;
                    continue;
                }
                Some(Sector::Zero { since }) => {
                    let diff = found.iter().position(|&b| b != 0).map(|at| (at, 0));
                    (Expected::Zeroes { since: *since }, diff)
                }
                Some(Sector::Written { op: by }) => {
                    pattern(self.seed, *by, sector_lba, &mut self.expect);
                    (
                        Expected::Written { op: *by },
                        first_diff(&self.expect, found),
                    )
                }
                Some(Sector::Seen { op: by, data }) => {
                    (Expected::FirstRead { op: *by }, first_diff(data, found))
                }
            };
            self.summary.sectors_checked += 1;
            if let Some((offset, expected_byte)) = diff {
                let found_origin = self.origin(found, op);
                let problem = Problem::Mismatch {
                    lba: sector_lba,
                    expected,
                    offset,
                    expected_byte,
                    found_byte: found[offset],
                    found_origin,
                };
                self.report(op, request, problem);
            }
        }
    }

    /// If `found` is a sector this run wrote (before `now`), where and by
    /// which operation.
    fn origin(&self, found: &[u8], now: u64) -> Option<(u64, u64)> {
        if self.summary.failures.len() >= MAX_REPORTED {
            return None;
        }
        let lba = u64::from_le_bytes(found[..8].try_into().ok()?);
        let by = u64::from_le_bytes(found[8..16].try_into().ok()?);
        if by >= now {
            return None;
        }
        let mut want = vec![0; found.len()];
        pattern(self.seed, by, lba, &mut want);
        (want == found).then_some((lba, by))
    }

    fn write(&mut self, op: u64) {
        let count = self.pick_len(self.sectors);
        let lba = self.pick_lba(count);
        let fua = self.rng.chance(10);
        let request = Request {
            kind: OpKind::Write { fua },
            lba,
            count,
        };
        self.summary.counts.writes += 1;
        let opts = if fua {
            IoOptions::fua()
        } else {
            IoOptions::default()
        };
        let bytes = count * self.sector_size as u64;
        let result = self.stage_write(op, lba, count).and_then(|_| {
            block_on(
                self.disk
                    .write(view(&self.mem, &self.ranges, false)?, lba, opts),
            )
        });
        match result {
            Ok(()) if self.read_only => self.report(op, request, Problem::NotRejected(Ok(()))),
            Ok(()) => {
                self.summary.bytes_written += bytes;
                for sector in lba..lba + count {
                    self.model.insert(sector, Sector::Written { op });
                }
            }
            Err(DiskError::ReadOnly) if self.read_only => {}
            Err(e) => {
                // What the disk holds there is now anyone's guess.
                for sector in lba..lba + count {
                    self.model.remove(&sector);
                }
                self.report(op, request, Problem::Error(e));
            }
        }
    }

    fn unmap(&mut self, op: u64) {
        let count = self.pick_len(self.sectors);
        let lba = self.pick_lba(count);
        let request = Request {
            kind: OpKind::Unmap,
            lba,
            count,
        };
        self.summary.counts.unmaps += 1;
        match block_on(self.disk.unmap(lba, count, IoOptions::default())) {
            Ok(()) if self.read_only => self.report(op, request, Problem::NotRejected(Ok(()))),
            Ok(()) => {
                self.summary.bytes_unmapped += count * self.sector_size as u64;
                for sector in lba..lba + count {
                    match self.unmap {
                        UnmapBehavior::Zeroes => {
                            self.model.insert(sector, Sector::Zero { since: op });
                        }
                        UnmapBehavior::Unspecified => {
                            self.model.remove(&sector);
                        }
                        UnmapBehavior::Ignored => {}
                    }
                }
            }
            Err(DiskError::ReadOnly) if self.read_only => {}
            Err(e) => {
                for sector in lba..lba + count {
                    self.model.remove(&sector);
                }
                self.report(op, request, Problem::Error(e));
            }
        }
    }

    fn flush(&mut self, op: u64) {
        self.summary.counts.flushes += 1;
        if let Err(e) = block_on(self.disk.flush(IoOptions::default())) {
            let request = Request {
                kind: OpKind::Flush,
                lba: 0,
                count: 0,
            };
            self.report(op, request, Problem::Error(e));
        }
    }

    /// A read, write or unmap that reaches past the end of the disk, or past
    /// any representable byte offset. It must fail with IllegalBlock (or
    /// ReadOnly for a modification of a read-only disk) and change nothing.
    fn out_of_range(&mut self, op: u64) {
        self.summary.counts.out_of_range += 1;
        let n = self.sectors;
        let len = self.pick_len(MAX_SECTORS);
        let lba = match self.rng.below(4) {
            // Straddling the end.
            0 if len <= n => n - len + 1 + self.rng.below(len),
            0 => self.rng.below(n + 1),
            // Wholly past the end.
            1 => n + self.rng.below(1 << 20),
            // `lba + len` overflows.
            2 => u64::MAX - self.rng.below(len),
            // The byte offset is not representable.
            _ => (i64::MAX as u64 / self.sector_size as u64).saturating_sub(self.rng.below(len)),
        };
        let kind = match self.rng.below(3) {
            0 => OpKind::Read,
            1 => OpKind::Write {
                fua: self.rng.chance(10),
            },
            _ => OpKind::Unmap,
        };
        let request = Request {
            kind,
            lba,
            count: len,
        };
        let result = match kind {
            OpKind::Read => {
                self.layout(len * self.sector_size as u64);
                view(&self.mem, &self.ranges, true)
                    .and_then(|sg| block_on(self.disk.read(sg, lba, IoOptions::default())))
            }
            OpKind::Write { fua } => {
                let opts = if fua {
                    IoOptions::fua()
                } else {
                    IoOptions::default()
                };
                self.stage_write(op, lba, len).and_then(|_| {
                    block_on(
                        self.disk
                            .write(view(&self.mem, &self.ranges, false)?, lba, opts),
                    )
                })
            }
            OpKind::Unmap | OpKind::Flush => {
                // Sometimes a count that reaches past the end from LBA 0.
                let (lba, count) = if self.rng.chance(20) {
                    (0, n + 1 + self.rng.below(1000))
                } else {
                    (lba, len)
                };
                let request = Request { kind, lba, count };
                let result = block_on(self.disk.unmap(lba, count, IoOptions::default()));
                return self.check_rejected(op, request, result);
            }
        };
        self.check_rejected(op, request, result);
    }

    fn check_rejected(&mut self, op: u64, request: Request, result: Result<(), DiskError>) {
        let modifies = !matches!(request.kind, OpKind::Read);
        match result {
            Err(DiskError::IllegalBlock) => {}
            Err(DiskError::ReadOnly) if modifies && self.read_only => {}
            other => self.report(op, request, Problem::NotRejected(other)),
        }
    }
}

/// A layout as a request buffer.
fn view<'m>(
    mem: &'m RamGuestMemory,
    ranges: &'m [GpaRange],
    writable: bool,
) -> Result<SgList<'m>, DiskError> {
    // A layout always fits the verifier's guest memory, so this only fails
    // if the verifier itself is broken.
    SgList::new(mem, ranges, writable)
        .map_err(|_| DiskError::InvalidInput("verifier built an invalid scatter-gather list"))
}

/// The first byte where `found` differs from `want`: its offset and the
/// expected byte.
fn first_diff(want: &[u8], found: &[u8]) -> Option<(usize, u8)> {
    if want == found {
        return None;
    }
    want.iter()
        .zip(found)
        .position(|(a, b)| a != b)
        .map(|at| (at, want[at]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;
    use parastor_core::{DiskIo, IoFuture};

    fn opts(ops: u64, seed: u64) -> VerifyOptions {
        VerifyOptions {
            ops,
            seed,
            progress: false,
        }
    }

    #[test]
    fn ram_disk_passes() {
        let disk = spec::build_spec("mem:8M").unwrap();
        let s = run(&disk, &opts(3000, 42));
        assert!(s.passed(), "{s}");
        let c = &s.counts;
        assert_eq!(
            c.reads + c.writes + c.unmaps + c.flushes + c.out_of_range,
            3000
        );
        assert!(
            c.reads > 1000 && c.writes > 1000 && c.unmaps > 100 && c.out_of_range > 50,
            "{c:?}"
        );
        assert!(s.bytes_read > 0 && s.bytes_written > 0);
        assert!(s.sectors_tracked > 0 && s.sectors_tracked <= 16384);
        // The workload overlaps itself enough to check most of what it reads.
        assert!(s.sectors_checked > s.sectors_first_read, "{s}");
    }

    #[test]
    fn same_seed_same_workload() {
        let a = run(&spec::build_spec("mem:4M@4096").unwrap(), &opts(500, 9));
        let b = run(&spec::build_spec("mem:4M@4096").unwrap(), &opts(500, 9));
        assert!(a.passed() && b.passed());
        assert_eq!(
            (a.counts, a.bytes_written, a.sectors_tracked),
            (b.counts, b.bytes_written, b.sectors_tracked)
        );
    }

    #[test]
    fn composite_stack_passes() {
        let disk = spec::build_spec("memdiff:striped:16K:{mem:2M|mem:2M|mem:2M}").unwrap();
        let s = run(&disk, &opts(2000, 7));
        assert!(s.passed(), "{s}");
    }

    #[test]
    fn tiny_disk_passes() {
        // Fewer sectors than the largest request, and a single sector.
        for spec in ["mem:8K", "mem:512"] {
            let s = run(&spec::build_spec(spec).unwrap(), &opts(500, 3));
            assert!(s.passed(), "{spec}: {s}");
        }
    }

    #[test]
    fn file_disk_passes() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(4 << 20).unwrap();
        let disk = spec::build_spec(&format!("file:{}", f.path().display())).unwrap();
        let s = run(&disk, &opts(1000, 5));
        assert!(s.passed(), "{s}");
    }

    #[test]
    fn read_only_disk_rejects_writes() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let file = crate::file::FileDisk::open(f.path(), 512, true).unwrap();
        let s = run(&Disk::new(file).unwrap(), &opts(500, 11));
        assert!(s.passed(), "{s}");
        assert_eq!(s.bytes_written, 0);
    }

    /// A RAM disk that accepts reads one sector past its end and, if
    /// `corrupt`, flips a bit of byte 100 of sector 5 on every read.
    struct Faulty {
        inner: Disk,
        corrupt: bool,
    }

    fn faulty(corrupt: bool) -> Disk {
        Disk::new(Faulty {
            inner: spec::build_spec("mem:64K").unwrap(),
            corrupt,
        })
        .unwrap()
    }

    impl DiskIo for Faulty {
        fn kind(&self) -> &'static str {
            "faulty"
        }
        parastor_core::forward_geometry!(inner);
        fn unmap_behavior(&self) -> UnmapBehavior {
            self.inner.unmap_behavior()
        }
        async fn read(
            &self,
            buf: SgList<'_>,
            sector: u64,
            opts: IoOptions,
        ) -> Result<(), DiskError> {
            let count = (buf.len() / 512) as u64;
            if sector + count == self.sector_count() + 1 {
                return Ok(());
            }
            let inner: IoFuture<'_, _> = self.inner.read(buf, sector, opts);
            inner.await?;
            if self.corrupt && (sector..sector + count).contains(&5) {
                let at = ((5 - sector) * 512 + 100) as usize;
                let sub = buf.subrange(at, 1).unwrap();
                let mut b = [0u8];
                sub.read_all(&mut b).unwrap();
                sub.write_all(&[b[0] ^ 0x40]).unwrap();
            }
            Ok(())
        }
        async fn write(
            &self,
            buf: SgList<'_>,
            sector: u64,
            opts: IoOptions,
        ) -> Result<(), DiskError> {
            self.inner.write(buf, sector, opts).await
        }
        async fn flush(&self, opts: IoOptions) -> Result<(), DiskError> {
            self.inner.flush(opts).await
        }
        async fn unmap(&self, sector: u64, count: u64, opts: IoOptions) -> Result<(), DiskError> {
            self.inner.unmap(sector, count, opts).await
        }
    }

    #[test]
    fn corruption_is_caught() {
        let disk = faulty(true);
        let s = run(&disk, &opts(3000, 1));
        assert!(!s.passed());
        assert!(s.mismatched_sectors > 0, "{s}");
        assert!(s.failures.len() <= MAX_REPORTED);
        let mismatch = s.failures.iter().find_map(|f| match &f.problem {
            Problem::Mismatch { lba, offset, .. } => Some((*lba, *offset)),
            _ => None,
        });
        assert_eq!(mismatch, Some((5, 100)), "{s}");
        assert!(s.to_string().contains("LBA 5 differs at byte 100"), "{s}");
        assert!(s.to_string().ends_with("result: FAIL"));
    }

    #[test]
    fn accepted_out_of_range_is_caught() {
        let disk = faulty(false);
        let s = run(&disk, &opts(20_000, 2));
        assert!(s.failed_ops > 0, "{s}");
        let text = s.to_string();
        assert!(
            text.contains(
                "is out of range: expected 'logical block address out of range', got success"
            ),
            "{text}"
        );
    }

    #[test]
    fn origin_of_misplaced_data() {
        let disk = spec::build_spec("mem:64K").unwrap();
        let mut v = Verifier::new(&disk, 77);
        let mut sector = vec![0; 512];
        pattern(77, 12, 40, &mut sector);
        assert_eq!(v.origin(&sector, 13), Some((40, 12)));
        assert_eq!(v.origin(&sector, 12), None);
        sector[300] ^= 1;
        assert_eq!(v.origin(&sector, 13), None);
        v.summary.failures = vec![
            Failure {
                op: 0,
                request: Request {
                    kind: OpKind::Flush,
                    lba: 0,
                    count: 0
                },
                problem: Problem::Error(DiskError::ReadOnly)
            };
            MAX_REPORTED
        ];
        pattern(77, 12, 40, &mut sector);
        assert_eq!(v.origin(&sector, 13), None);
    }
}
