//! Fault-injecting guest memory, for tests of code that reads guest memory.
//!
//! [`FaultyMemory`] wraps any [`GuestMemory`] and makes it misbehave the
//! ways real guest memory can:
//! - **inaccessible ranges** ([`FaultyMemory::deny`]): valid addresses that
//!   fail every access with [`MemoryErrorKind::Inaccessible`], as an
//!   unmapped hole or a private page of a confidential VM does;
//! - **flip ranges** ([`FaultyMemory::flip`]): bytes whose content
//!   alternates between two values on every read, as if the guest changed
//!   them between two fetches — code that reads a value twice (validates
//!   one copy, uses another) sees two different values, so a test can prove
//!   a value is fetched once;
//! - **torn copies** ([`FaultyMemory::set_max_piece`]): every copy is done
//!   in pieces of a few bytes, as a byte-wise copy racing a writer may
//!   observe it.
//!
//! It is plain `no_std` code, usable from unit tests, integration tests and
//! fuzz harnesses alike.

use crate::addr::{Gpa, GpaRange};
use crate::error::{Denied, MemoryError, MemoryErrorKind};
use crate::memory::{Access, AtomicOp, GuestMemory, Width, check_range};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::RwLock;

/// A range whose content alternates between reads.
struct Flip {
    range: GpaRange,
    /// What odd-numbered reads see instead of the memory's content.
    other: Vec<u8>,
    reads: AtomicU64,
}

#[derive(Default)]
struct Faults {
    denied: Vec<(GpaRange, Denied)>,
    flips: Vec<Flip>,
    max_piece: Option<usize>,
}

/// Guest memory with injected faults; see the [module docs](self).
pub struct FaultyMemory<M> {
    inner: M,
    /// `spin`, not [`crate::sync`]: test memory, written only while a test
    /// sets faults up; accesses only share it for reading.
    faults: RwLock<Faults>,
}

/// The overlap of `[a, a + alen)` with `r`, as (start, len).
fn overlap(a: Gpa, alen: u64, r: GpaRange) -> Option<(u64, u64)> {
    let start = a.get().max(r.gpa.get());
    let end = a
        .get()
        .saturating_add(alen)
        .min(r.gpa.get().saturating_add(r.len));
    (start < end).then(|| (start, end - start))
}

impl<M: GuestMemory> FaultyMemory<M> {
    /// `inner`, with no faults yet.
    pub fn new(inner: M) -> Self {
        Self {
            inner,
            faults: RwLock::new(Faults::default()),
        }
    }

    /// The wrapped memory (reached directly, without faults).
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// Makes every access touching `range` fail with
    /// [`MemoryErrorKind::Inaccessible`]`(why)`.
    pub fn deny(&self, range: GpaRange, why: Denied) {
        self.faults.write().denied.push((range, why));
    }

    /// Makes `range` read as its real content and as `other` (as long as
    /// the range) on alternate reads, starting with the real content.
    /// Writes go to the real content.
    pub fn flip(&self, range: GpaRange, other: Vec<u8>) {
        self.faults.write().flips.push(Flip {
            range,
            other,
            reads: AtomicU64::new(0),
        });
    }

    /// How many reads touched the flip range starting at `gpa` (0 if there
    /// is none).
    pub fn flip_reads(&self, gpa: Gpa) -> u64 {
        let faults = self.faults.read();
        faults
            .flips
            .iter()
            .find(|f| f.range.gpa == gpa)
            .map_or(0, |f| f.reads.load(Ordering::Relaxed))
    }

    /// Copies in pieces of at most `max` bytes (`None`: in one piece).
    pub fn set_max_piece(&self, max: Option<usize>) {
        self.faults.write().max_piece = max.map(|m| m.max(1));
    }

    /// Removes every fault.
    pub fn clear(&self) {
        *self.faults.write() = Faults::default();
    }

    /// Checks `[gpa, gpa + len)` against the extent and the denied ranges.
    fn allowed(&self, faults: &Faults, gpa: Gpa, len: u64) -> Result<(), MemoryError> {
        check_range(gpa, len, self.inner.extent())?;
        for &(range, why) in &faults.denied {
            if let Some((start, n)) = overlap(gpa, len, range) {
                let kind = MemoryErrorKind::Inaccessible(why);
                return Err(MemoryError::new(Gpa::new(start), n, kind));
            }
        }
        Ok(())
    }

    fn piece(faults: &Faults, len: usize) -> usize {
        faults.max_piece.unwrap_or(len).max(1)
    }
}

impl<M: GuestMemory> GuestMemory for FaultyMemory<M> {
    fn extent(&self) -> Gpa {
        self.inner.extent()
    }

    fn read_at(&self, gpa: Gpa, dst: &mut [u8]) -> Result<(), MemoryError> {
        let faults = self.faults.read();
        self.allowed(&faults, gpa, dst.len() as u64)?;
        let step = Self::piece(&faults, dst.len());
        let mut at = gpa;
        for chunk in dst.chunks_mut(step) {
            self.inner.read_at(at, chunk)?;
            at += chunk.len() as u64;
        }
        for flip in &faults.flips {
            let Some((start, n)) = overlap(gpa, dst.len() as u64, flip.range) else {
                continue;
            };
            if flip.reads.fetch_add(1, Ordering::Relaxed) % 2 == 1 {
                let from = (start - flip.range.gpa.get()) as usize;
                let to = (start - gpa.get()) as usize;
                let n = n as usize;
                if let (Some(src), Some(out)) =
                    (flip.other.get(from..from + n), dst.get_mut(to..to + n))
                {
                    out.copy_from_slice(src);
                }
            }
        }
        Ok(())
    }

    fn write_at(&self, gpa: Gpa, src: &[u8]) -> Result<(), MemoryError> {
        let faults = self.faults.read();
        self.allowed(&faults, gpa, src.len() as u64)?;
        let step = Self::piece(&faults, src.len());
        let mut at = gpa;
        for chunk in src.chunks(step) {
            self.inner.write_at(at, chunk)?;
            at += chunk.len() as u64;
        }
        Ok(())
    }

    fn fill_at(&self, gpa: Gpa, len: usize, byte: u8) -> Result<(), MemoryError> {
        let faults = self.faults.read();
        self.allowed(&faults, gpa, len as u64)?;
        let step = Self::piece(&faults, len);
        let mut at = gpa;
        let mut left = len;
        while left > 0 {
            let n = left.min(step);
            self.inner.fill_at(at, n, byte)?;
            at += n as u64;
            left -= n;
        }
        Ok(())
    }

    fn atomic(
        &self,
        gpa: Gpa,
        width: Width,
        op: AtomicOp,
        order: Ordering,
    ) -> Result<u64, MemoryError> {
        self.allowed(&self.faults.read(), gpa, width.bytes() as u64)?;
        self.inner.atomic(gpa, width, op, order)
    }

    fn write_vectored_at(&self, gpa: Gpa, srcs: &[&[u8]]) -> Result<(), MemoryError> {
        let total = srcs
            .iter()
            .fold(0u64, |n, s| n.saturating_add(s.len() as u64));
        self.allowed(&self.faults.read(), gpa, total)?;
        let mut at = gpa;
        for src in srcs {
            self.write_at(at, src)?;
            at += src.len() as u64;
        }
        Ok(())
    }

    fn check(&self, range: GpaRange, access: Access) -> Result<(), MemoryError> {
        self.allowed(&self.faults.read(), range.gpa, range.len)?;
        self.inner.check(range, access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{GuestMemoryExt, RamGuestMemory};

    #[test]
    fn denied_ranges_are_inaccessible_not_out_of_range() {
        let mem = FaultyMemory::new(RamGuestMemory::new(3 * 4096));
        mem.deny(GpaRange::new(Gpa::new(4096), 4096), Denied::Unmapped);
        let mut b = [0u8; 16];
        mem.read_at(Gpa::new(0), &mut b).unwrap();
        let e = mem.read_at(Gpa::new(4090), &mut b).unwrap_err();
        assert_eq!(e.kind, MemoryErrorKind::Inaccessible(Denied::Unmapped));
        assert_eq!((e.gpa, e.len), (Gpa::new(4096), 10), "the denied part");
        let e = mem.read_at(Gpa::new(3 * 4096 - 8), &mut b).unwrap_err();
        assert_eq!(e.kind, MemoryErrorKind::OutOfRange);
        assert!(mem.write_at(Gpa::new(5000), &b).is_err());
        assert!(mem.fill_at(Gpa::new(8191), 2, 0).is_err());
        assert!(mem.load_u32(Gpa::new(8188), Ordering::SeqCst).is_err());
        assert!(
            mem.write_vectored_at(Gpa::new(4000), &[&[1; 90], &[2; 10]])
                .is_err()
        );
        // Nothing was written by the refused vectored write.
        assert!(mem.compare_at(Gpa::new(4000), &[0; 90]).unwrap());
        let e = mem
            .check(GpaRange::new(Gpa::new(0), 3 * 4096), Access::Read)
            .unwrap_err();
        assert_eq!(e.kind, MemoryErrorKind::Inaccessible(Denied::Unmapped));
        mem.clear();
        mem.read_at(Gpa::new(4090), &mut b).unwrap();
    }

    #[test]
    fn flip_ranges_alternate_and_pieces_still_copy_everything() {
        let mem = FaultyMemory::new(RamGuestMemory::new(4096));
        mem.write_at(Gpa::new(100), &[1; 8]).unwrap();
        mem.flip(GpaRange::new(Gpa::new(104), 4), alloc::vec![9; 4]);
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        mem.read_at(Gpa::new(100), &mut a).unwrap();
        mem.read_at(Gpa::new(100), &mut b).unwrap();
        assert_eq!(a, [1; 8]);
        assert_eq!(b, [1, 1, 1, 1, 9, 9, 9, 9]);
        assert_eq!(mem.flip_reads(Gpa::new(104)), 2);
        // A read not touching the range does not count.
        mem.read_at(Gpa::new(100), &mut a[..4]).unwrap();
        assert_eq!(mem.flip_reads(Gpa::new(104)), 2);

        mem.set_max_piece(Some(3));
        let data: Vec<u8> = (0..50).collect();
        mem.write_at(Gpa::new(1000), &data).unwrap();
        let mut back = [0u8; 50];
        mem.read_at(Gpa::new(1000), &mut back).unwrap();
        assert_eq!(&back[..], &data[..]);
        mem.fill_at(Gpa::new(1000), 10, 0xaa).unwrap();
        assert!(mem.compare_at(Gpa::new(1000), &[0xaa; 10]).unwrap());
    }
}
