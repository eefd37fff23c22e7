//! Runs disk operations against a disk and a [`Model`] side by side and
//! checks each outcome: the exact error a request must get, or success and
//! data that agree with the model.
//!
//! Shared by the conformance suite's property tests and the fuzz harness.

use crate::buf::{self, Layout, TestBuf, block_on, pattern};
use crate::model::{Model, SectorState};
use parastor_core::{Disk, DiskError, IoOptions};
use std::fmt;

/// The outcome a request must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Success.
    Ok,
    /// Exactly [`DiskError::IllegalBlock`] (not wrapped in a member error:
    /// a composite range-checks a request before it reaches a member).
    IllegalBlock,
    /// [`DiskError::InvalidInput`].
    InvalidInput,
    /// [`DiskError::ReadOnly`].
    ReadOnly,
    /// [`DiskError::MemoryAccess`], possibly inside a member error.
    MemoryAccess,
    /// Either an out-of-range or a memory error (a request that is both).
    IllegalBlockOrMemoryAccess,
}

impl Want {
    /// Whether `r` is this outcome.
    pub fn matches(self, r: &Result<(), DiskError>) -> bool {
        match (self, r) {
            (Want::Ok, Ok(())) => true,
            (Want::IllegalBlock, Err(DiskError::IllegalBlock)) => true,
            (Want::InvalidInput, Err(DiskError::InvalidInput(_))) => true,
            (Want::ReadOnly, Err(DiskError::ReadOnly)) => true,
            (Want::MemoryAccess, Err(e)) => matches!(e.root(), DiskError::MemoryAccess(_)),
            (Want::IllegalBlockOrMemoryAccess, Err(e)) => {
                matches!(e, DiskError::IllegalBlock)
                    || matches!(e.root(), DiskError::MemoryAccess(_))
            }
            _ => false,
        }
    }

    /// Panics with `what` unless `r` is this outcome.
    #[track_caller]
    pub fn check(self, r: Result<(), DiskError>, what: impl fmt::Display) {
        assert!(self.matches(&r), "{what}: expected {self:?}, got {r:?}");
    }
}

/// One operation, with absolute sectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `bytes` at `sector` into a buffer laid out as `layout`.
    Read {
        /// First sector.
        sector: u64,
        /// Buffer length (need not be whole sectors).
        bytes: usize,
        /// Buffer layout in guest memory.
        layout: Layout,
        /// Whether the device may write the buffer (false must fail).
        writable: bool,
    },
    /// Write `bytes` of [`pattern`]`(seed, ..)` at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Buffer length (need not be whole sectors).
        bytes: usize,
        /// Buffer layout in guest memory.
        layout: Layout,
        /// Data seed.
        seed: u64,
        /// Force unit access.
        fua: bool,
    },
    /// Unmap `[sector, sector + count)`.
    Unmap {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        count: u64,
    },
    /// Flush.
    Flush,
    /// Resize the disk to `sectors` (only if the checker has a resize hook;
    /// ignored otherwise).
    Resize {
        /// New sector count.
        sectors: u64,
    },
}

/// A failed check, with the operation that failed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Index of the operation in the sequence.
    pub index: usize,
    /// The operation.
    pub op: Op,
    /// What was wrong.
    pub what: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op #{} {:?}: {}", self.index, self.op, self.what)
    }
}

impl std::error::Error for Failure {}

/// Byte that fills guest memory around a request's ranges.
const CANARY: u8 = 0xa5;

/// A disk, its model and an optional resize hook.
pub struct Checker<'a> {
    disk: Disk,
    model: Model,
    resize: Option<&'a dyn Fn(u64)>,
    /// What sectors regained by growing the disk read as.
    regrown: SectorState,
    ops: usize,
}

impl<'a> Checker<'a> {
    /// A checker for `disk` whose current contents are `initial` everywhere.
    pub fn new(disk: Disk, initial: SectorState) -> Self {
        let model = Model::new(disk.sector_count(), disk.sector_size(), initial);
        Self {
            disk,
            model,
            resize: None,
            regrown: SectorState::Zero,
            ops: 0,
        }
    }

    /// Sets what sectors regained by growing the disk read as (zero by
    /// default; unknown under a crypt decorator, where the zeros the RAM
    /// disk returns decrypt to noise).
    pub fn with_regrown(mut self, state: SectorState) -> Self {
        self.regrown = state;
        self
    }

    /// Lets [`Op::Resize`] resize the disk through `resize`.
    pub fn with_resize(mut self, resize: &'a dyn Fn(u64)) -> Self {
        self.resize = Some(resize);
        self
    }

    /// The disk.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Whether `count` sectors at `sector` form a representable request
    /// (what [`Disk`] guarantees to implementations).
    pub fn representable(&self, sector: u64, count: u64) -> bool {
        sector
            .checked_add(count)
            .and_then(|end| end.checked_mul(u64::from(self.disk.sector_size())))
            .is_some_and(|bytes| bytes <= i64::MAX as u64)
    }

    /// Runs every operation in order; stops at the first failed check.
    pub fn run(&mut self, ops: &[Op]) -> Result<(), Failure> {
        for op in ops {
            self.apply(op)?;
        }
        Ok(())
    }

    /// Runs one operation and checks its outcome.
    pub fn apply(&mut self, op: &Op) -> Result<(), Failure> {
        let index = self.ops;
        self.ops += 1;
        self.apply_inner(op).map_err(|what| Failure {
            index,
            op: op.clone(),
            what,
        })
    }

    /// What a data request must get, given whether its buffer is readable
    /// and writable by the device as the request needs.
    fn want_data(&self, sector: u64, bytes: usize, write: bool, mem_ok: bool) -> Want {
        let ss = self.disk.sector_size() as usize;
        if !bytes.is_multiple_of(ss) {
            return Want::InvalidInput;
        }
        let count = (bytes / ss) as u64;
        if !self.representable(sector, count) {
            return Want::IllegalBlock;
        }
        if write && self.disk.is_read_only() {
            return Want::ReadOnly;
        }
        match (self.model.in_range(sector, count), mem_ok) {
            (true, true) => Want::Ok,
            (true, false) => Want::MemoryAccess,
            (false, true) => Want::IllegalBlock,
            (false, false) => Want::IllegalBlockOrMemoryAccess,
        }
    }

    fn apply_inner(&mut self, op: &Op) -> Result<(), String> {
        let ss = self.disk.sector_size();
        match op {
            Op::Read {
                sector,
                bytes,
                layout,
                writable,
            } => {
                let buf = TestBuf::new(*bytes, layout);
                buf.fill_memory(CANARY);
                // A buffer the device may not write is as bad as one outside
                // guest memory.
                let mem_ok = buf.in_memory() && *writable;
                let want = self.want_data(*sector, *bytes, false, mem_ok);
                let r = block_on(
                    self.disk
                        .read(buf.sg(*writable), *sector, IoOptions::default()),
                );
                if !want.matches(&r) {
                    return Err(format!("expected {want:?}, got {r:?}"));
                }
                if !buf.outside_ranges_is(CANARY) {
                    return Err("the read wrote guest memory outside its buffer".into());
                }
                if r.is_ok() {
                    self.model
                        .check_read(*sector, &buf.contents())
                        .map_err(|m| m.to_string())?;
                }
            }
            Op::Write {
                sector,
                bytes,
                layout,
                seed,
                fua,
            } => {
                let buf = TestBuf::new(*bytes, layout);
                buf.fill_memory(CANARY);
                let count = (*bytes / ss as usize) as u64;
                let whole = pattern(*seed, *sector, count + 1, ss);
                buf.set(&whole[..*bytes]);
                let before = buf.whole_memory();
                let want = self.want_data(*sector, *bytes, true, buf.in_memory());
                let opts = IoOptions {
                    fua: *fua,
                    ..IoOptions::default()
                };
                let r = block_on(self.disk.write(buf.sg(false), *sector, opts));
                if !want.matches(&r) {
                    return Err(format!("expected {want:?}, got {r:?}"));
                }
                if buf.whole_memory() != before {
                    return Err("the write modified guest memory".into());
                }
                match r {
                    Ok(()) => self.model.write(*sector, &whole[..*bytes]),
                    // A write that failed on guest memory may have written
                    // part of the range.
                    Err(e) if matches!(e.root(), DiskError::MemoryAccess(_)) => {
                        self.model.forget(*sector, count)
                    }
                    Err(_) => {}
                }
            }
            Op::Unmap { sector, count } => {
                let want = if !self.representable(*sector, *count) {
                    Want::IllegalBlock
                } else if self.disk.is_read_only() {
                    Want::ReadOnly
                } else if !self.model.in_range(*sector, *count) {
                    Want::IllegalBlock
                } else {
                    Want::Ok
                };
                let r = buf::unmap(&self.disk, *sector, *count);
                if !want.matches(&r) {
                    return Err(format!("expected {want:?}, got {r:?}"));
                }
                if r.is_ok() {
                    self.model
                        .unmap(*sector, *count, self.disk.unmap_behavior());
                }
            }
            Op::Flush => {
                let r = buf::flush(&self.disk);
                if r.is_err() {
                    return Err(format!("flush failed: {r:?}"));
                }
            }
            Op::Resize { sectors } => {
                let Some(resize) = self.resize else {
                    return Ok(());
                };
                resize(*sectors);
                self.model.resize(*sectors, self.regrown.clone());
                let now = self.disk.sector_count();
                if now != *sectors {
                    return Err(format!("sector count is {now} after a resize to {sectors}"));
                }
            }
        }
        Ok(())
    }
}
