//! Guest memory reused from one test buffer or fuzz input to the next.
//!
//! A fresh [`RamGuestMemory`] allocates and zeroes a 64 KiB chunk the first
//! time each chunk is written; under a fuzzer's sanitizer that allocation
//! (and the page faults behind it) cost more than the work an input does.
//! [`ScratchMemory::take`] hands out memory from a per-thread pool instead:
//! memory a previous user dropped, with every page it wrote zeroed again
//! and its size set to the one asked for. Only written pages are zeroed —
//! each memory records the pages written through it — so handing memory
//! out costs a few page clears, not an allocation.
//!
//! # Contract
//!
//! Memory from [`ScratchMemory::take`] is indistinguishable from
//! `RamGuestMemory::new(size)`: every byte in `[0, size)` reads as zero and
//! any access reaching past `size` fails with the same error. So a test or
//! fuzz input behaves the same whether its memory is new or reused, and an
//! input that fails after others still fails when run alone. The
//! `scratch_memory_is_as_good_as_new` test pins this; [`clear_pool`] drops
//! the pool, for callers that want brand-new memory anyway (the corpus
//! replay does, so it checks each input exactly as a first run would).

use parastor_core::memory::{AtomicOp, GuestMemory, Width, check_range};
use parastor_core::{Gpa, MemoryError, RamGuestMemory};
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Granularity of the written-page record.
const PAGE_SHIFT: u32 = 12;
/// Memories a thread keeps for reuse; more are freed when dropped.
const POOL_LEN: usize = 8;
/// Largest memory kept for reuse: bigger ones (a few conformance tests
/// use them) are freed when dropped rather than held by the thread.
const MAX_POOLED: u64 = 16 << 20;

thread_local! {
    /// Memories dropped on this thread, waiting to be taken again.
    static POOL: RefCell<Vec<Pooled>> = const { RefCell::new(Vec::new()) };
}

/// The reusable part of a [`ScratchMemory`].
struct Pooled {
    ram: RamGuestMemory,
    /// One bit per page of `ram` written since the last reset.
    written: Box<[AtomicU64]>,
}

impl Pooled {
    /// Unwritten memory of `capacity` bytes.
    fn new(capacity: u64) -> Self {
        let pages = capacity.div_ceil(1 << PAGE_SHIFT);
        Self {
            ram: RamGuestMemory::new(capacity),
            written: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Zeroes every page written since the last reset, runs of pages at a
    /// time.
    fn reset(&self) {
        let capacity = self.ram.size();
        let mut run: Option<u64> = None;
        let mut page = 0u64;
        let clear = |from: u64, to: u64| {
            let start = from << PAGE_SHIFT;
            let end = (to << PAGE_SHIFT).min(capacity);
            self.ram
                .fill_at(Gpa::new(start), (end - start) as usize, 0)
                .expect("written pages lie in the memory");
        };
        for word in self.written.iter() {
            let bits = word.swap(0, Ordering::Relaxed);
            for bit in 0..64 {
                let dirty = bits & (1 << bit) != 0;
                match (dirty, run) {
                    (true, None) => run = Some(page),
                    (false, Some(from)) => {
                        clear(from, page);
                        run = None;
                    }
                    _ => {}
                }
                page += 1;
            }
        }
        if let Some(from) = run {
            clear(from, page);
        }
    }

    /// Records that `[gpa, gpa + len)` (inside the memory) is written.
    fn mark(&self, gpa: Gpa, len: usize) {
        if len == 0 {
            return;
        }
        let gpa = gpa.get();
        let first = gpa >> PAGE_SHIFT;
        let last = (gpa + len as u64 - 1) >> PAGE_SHIFT;
        for page in first..=last {
            self.written[(page / 64) as usize].fetch_or(1 << (page % 64), Ordering::Relaxed);
        }
    }
}

/// Zeroed guest memory from this thread's pool (see the [module
/// docs](self)): a [`GuestMemory`] of a given size that goes back to the
/// pool when dropped.
pub struct ScratchMemory {
    /// `None` only while being dropped.
    inner: Option<Pooled>,
    size: u64,
}

impl ScratchMemory {
    /// Zeroed memory of `size` bytes: reused from this thread's pool when
    /// it holds one large enough, else new.
    pub fn take(size: u64) -> Self {
        let reused = POOL.with_borrow_mut(|pool| {
            // The smallest that fits, so large memories stay for large users.
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, p)| p.ram.size() >= size)
                .min_by_key(|(_, p)| p.ram.size())
                .map(|(i, _)| i)?;
            Some(pool.swap_remove(best))
        });
        let inner = match reused {
            Some(p) => {
                p.reset();
                p
            }
            None => Pooled::new(size),
        };
        Self {
            inner: Some(inner),
            size,
        }
    }

    /// Size of this memory in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn pooled(&self) -> &Pooled {
        self.inner.as_ref().expect("present until dropped")
    }
}

impl Drop for ScratchMemory {
    fn drop(&mut self) {
        let Some(p) = self.inner.take() else { return };
        // At thread exit the pool may already be gone: then the memory is
        // simply freed.
        let _ = POOL.try_with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut()
                && pool.len() < POOL_LEN
                && p.ram.size() <= MAX_POOLED
            {
                pool.push(p);
            }
        });
    }
}

impl fmt::Debug for ScratchMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScratchMemory")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl GuestMemory for ScratchMemory {
    fn extent(&self) -> Gpa {
        Gpa::new(self.size)
    }

    fn read_at(&self, gpa: Gpa, dst: &mut [u8]) -> Result<(), MemoryError> {
        check_range(gpa, dst.len() as u64, self.extent())?;
        self.pooled().ram.read_at(gpa, dst)
    }

    fn write_at(&self, gpa: Gpa, src: &[u8]) -> Result<(), MemoryError> {
        check_range(gpa, src.len() as u64, self.extent())?;
        let p = self.pooled();
        // Recorded before writing, so a write cut short is still cleared
        // before the memory is handed out again.
        p.mark(gpa, src.len());
        p.ram.write_at(gpa, src)
    }

    fn fill_at(&self, gpa: Gpa, len: usize, byte: u8) -> Result<(), MemoryError> {
        check_range(gpa, len as u64, self.extent())?;
        let p = self.pooled();
        p.mark(gpa, len);
        p.ram.fill_at(gpa, len, byte)
    }

    fn atomic(
        &self,
        gpa: Gpa,
        width: Width,
        op: AtomicOp,
        order: core::sync::atomic::Ordering,
    ) -> Result<u64, MemoryError> {
        check_range(gpa, width.bytes() as u64, self.extent())?;
        let p = self.pooled();
        if op != AtomicOp::Load {
            p.mark(gpa, width.bytes());
        }
        p.ram.atomic(gpa, width, op, order)
    }
}

/// Frees this thread's pool: the next [`ScratchMemory::take`] allocates
/// brand-new memory.
pub fn clear_pool() {
    POOL.with_borrow_mut(Vec::clear);
}

#[cfg(test)]
mod tests {
    use super::*;
    use parastor_core::MemoryErrorKind;

    /// A small deterministic generator.
    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn scratch_memory_is_as_good_as_new() {
        clear_pool();
        let mut seed = 0x2545_F491_4F6C_DD1D;
        for round in 0..200 {
            let size = 1 + xorshift(&mut seed) % (300 << 10);
            let mem = ScratchMemory::take(size);
            let new = RamGuestMemory::new(size);
            // Reads as zero everywhere, like new memory.
            let mut all = vec![0xA5; size as usize];
            mem.read_at(Gpa::new(0), &mut all).unwrap();
            assert!(
                all.iter().all(|&b| b == 0),
                "round {round}: reused memory of {size} bytes is not zero"
            );
            // The same bounds: right at the end, and past it.
            for (gpa, len) in [(size - 1, 1), (size, 1), (size - 1, 2), (u64::MAX, 1)] {
                let mut b = vec![0; len];
                assert_eq!(
                    mem.read_at(Gpa::new(gpa), &mut b).map_err(|e| e.kind),
                    new.read_at(Gpa::new(gpa), &mut b).map_err(|e| e.kind),
                    "round {round}: read of {len} at {gpa:#x} in {size} bytes"
                );
                assert_eq!(
                    mem.write_at(Gpa::new(gpa), &b).is_ok(),
                    new.write_at(Gpa::new(gpa), &b).is_ok(),
                    "round {round}: write of {len} at {gpa:#x} in {size} bytes"
                );
            }
            // Scribble for the next round: a few ranges, some unaligned.
            for _ in 0..1 + xorshift(&mut seed) % 4 {
                let gpa = xorshift(&mut seed) % size;
                let len = (xorshift(&mut seed) % 20_000).min(size - gpa) as usize;
                mem.fill_at(Gpa::new(gpa), len, 0xEE).unwrap();
            }
        }
    }

    #[test]
    fn atomic_stores_are_cleared_too() {
        use parastor_core::GuestMemoryExt;
        clear_pool();
        let mem = ScratchMemory::take(3 << 16);
        mem.store_u32(Gpa::new(0x1_0000), 7, Ordering::Release)
            .unwrap();
        mem.write_vectored_at(Gpa::new(0xFFF0), &[&[0x77; 0x20], &[0x66; 0x20]])
            .unwrap();
        // A load records nothing.
        assert_eq!(
            mem.load_u32(Gpa::new(0x2_0000), Ordering::Acquire).unwrap(),
            0
        );
        assert_eq!(
            mem.pooled().written[0].load(Ordering::Relaxed),
            1 << 15 | 1 << 16
        );
        drop(mem);
        let again = ScratchMemory::take(3 << 16);
        let mut b = [0xA5; 0x40];
        again.read_at(Gpa::new(0xFFF0), &mut b).unwrap();
        assert_eq!(b, [0; 0x40]);
        assert_eq!(
            again
                .load_u32(Gpa::new(0x1_0000), Ordering::Acquire)
                .unwrap(),
            0
        );
    }

    #[test]
    fn out_of_range_writes_record_nothing_and_fail() {
        clear_pool();
        let mem = ScratchMemory::take(8192);
        let e = mem.write_at(Gpa::new(8190), &[1, 2, 3]).unwrap_err();
        assert_eq!(e.kind, MemoryErrorKind::OutOfRange);
        assert!(
            mem.pooled()
                .written
                .iter()
                .all(|w| w.load(Ordering::Relaxed) == 0)
        );
    }
}
