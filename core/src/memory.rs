//! Bounds-checked access to guest physical memory.
//!
//! Guest memory is reached only through [`GuestMemory`], keyed by guest
//! physical address (GPA). Every access is checked against the memory's
//! extent; a bad GPA from a hostile guest or host becomes a
//! [`MemoryError`], never a panic or a stray access.
//!
//! The interface is visitor-shaped: the implementation hands the caller the
//! backing bytes piece by piece (in place, no copy) under whatever locking it
//! needs. That lets a RAM disk copy straight between its store and the
//! guest's pages, and a file backend `pread` straight into them, while the
//! implementation keeps ownership of how memory is mapped.

use crate::error::{MemoryError, MemoryErrorKind};
use alloc::boxed::Box;
use alloc::vec::Vec;
use spin::RwLock;

/// Guest physical memory, as seen by the device side.
pub trait GuestMemory: Send + Sync {
    /// Calls `f` with consecutive pieces of `[gpa, gpa + len)`, in order,
    /// read-only. `f` must not access this memory itself (implementations
    /// may hold a lock while it runs). Fails without calling `f` if any part of the range is
    /// outside this memory.
    fn visit(&self, gpa: u64, len: usize, f: &mut dyn FnMut(&[u8])) -> Result<(), MemoryError>;

    /// Calls `f` with consecutive pieces of `[gpa, gpa + len)`, in order,
    /// for writing. Fails without calling `f` if any part of the range is
    /// outside this memory.
    fn visit_mut(
        &self,
        gpa: u64,
        len: usize,
        f: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), MemoryError>;

    /// Copies guest memory at `gpa` into `dst`.
    fn read(&self, gpa: u64, dst: &mut [u8]) -> Result<(), MemoryError> {
        let mut done = 0;
        self.visit(gpa, dst.len(), &mut |piece| {
            dst[done..done + piece.len()].copy_from_slice(piece);
            done += piece.len();
        })
    }

    /// Copies `src` into guest memory at `gpa`.
    fn write(&self, gpa: u64, src: &[u8]) -> Result<(), MemoryError> {
        let mut done = 0;
        self.visit_mut(gpa, src.len(), &mut |piece| {
            piece.copy_from_slice(&src[done..done + piece.len()]);
            done += piece.len();
        })
    }

    /// Sets `len` bytes of guest memory at `gpa` to `byte`.
    fn fill(&self, gpa: u64, len: usize, byte: u8) -> Result<(), MemoryError> {
        self.visit_mut(gpa, len, &mut |piece| piece.fill(byte))
    }
}

/// Checks that `[gpa, gpa + len)` lies inside `[0, size)`.
pub fn check_range(gpa: u64, len: usize, size: u64) -> Result<(), MemoryError> {
    match gpa.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(MemoryError {
            gpa,
            len: len as u64,
            kind: MemoryErrorKind::OutOfRange,
        }),
    }
}

/// Size of one independently locked, lazily allocated piece of
/// [`RamGuestMemory`].
const CHUNK_SHIFT: u32 = 16;
const CHUNK_SIZE: usize = 1 << CHUNK_SHIFT;

/// The bytes of one allocated chunk.
type ChunkData = Box<[u8]>;

/// Guest memory held in host RAM: the emulated host's and the tests' guest.
///
/// Memory is split into 64 KiB chunks, each allocated on first write (so a
/// large, mostly untouched guest is cheap) and each with its own lock (so
/// concurrent I/O to different buffers does not contend).
pub struct RamGuestMemory {
    size: u64,
    chunks: Box<[RwLock<Option<ChunkData>>]>,
}

impl RamGuestMemory {
    /// Guest memory of `size` bytes, initially zero.
    pub fn new(size: u64) -> Self {
        let n = size.div_ceil(CHUNK_SIZE as u64) as usize;
        let mut chunks = Vec::with_capacity(n);
        chunks.resize_with(n, || RwLock::new(None));
        Self {
            size,
            chunks: chunks.into_boxed_slice(),
        }
    }

    /// Size of this memory in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Splits `[gpa, gpa+len)` into per-chunk pieces: (chunk, offset, len).
    fn pieces(gpa: u64, len: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        let mut pos = gpa;
        let end = gpa + len as u64;
        core::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let chunk = (pos >> CHUNK_SHIFT) as usize;
            let off = (pos & (CHUNK_SIZE as u64 - 1)) as usize;
            let n = (CHUNK_SIZE - off).min((end - pos) as usize);
            pos += n as u64;
            Some((chunk, off, n))
        })
    }
}

impl GuestMemory for RamGuestMemory {
    fn visit(&self, gpa: u64, len: usize, f: &mut dyn FnMut(&[u8])) -> Result<(), MemoryError> {
        check_range(gpa, len, self.size)?;
        const ZEROS: [u8; 4096] = [0; 4096];
        for (chunk, off, n) in Self::pieces(gpa, len) {
            let guard = self.chunks[chunk].read();
            match guard.as_deref() {
                Some(data) => f(&data[off..off + n]),
                None => {
                    // Never-written memory reads as zero.
                    let mut left = n;
                    while left > 0 {
                        let k = left.min(ZEROS.len());
                        f(&ZEROS[..k]);
                        left -= k;
                    }
                }
            }
        }
        Ok(())
    }

    fn visit_mut(
        &self,
        gpa: u64,
        len: usize,
        f: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), MemoryError> {
        check_range(gpa, len, self.size)?;
        for (chunk, off, n) in Self::pieces(gpa, len) {
            let mut guard = self.chunks[chunk].write();
            let data = guard.get_or_insert_with(|| alloc::vec![0u8; CHUNK_SIZE].into_boxed_slice());
            f(&mut data[off..off + n]);
        }
        Ok(())
    }
}

/// Host memory presented as a tiny guest memory starting at GPA 0: a bounce
/// buffer or a staging area that a disk call can use like guest memory.
pub struct LocalMemory {
    data: RwLock<Vec<u8>>,
}

impl LocalMemory {
    /// `len` zeroed bytes.
    pub fn new(len: usize) -> Self {
        Self {
            data: RwLock::new(alloc::vec![0; len]),
        }
    }

    /// Wraps an existing buffer.
    pub fn from_vec(data: Vec<u8>) -> Self {
        Self {
            data: RwLock::new(data),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.data.read().len()
    }

    /// Whether the memory is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the buffer back out.
    pub fn into_vec(self) -> Vec<u8> {
        self.data.into_inner()
    }

    /// Runs `f` on the whole buffer.
    pub fn with<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.data.read())
    }

    /// Runs `f` on the whole buffer, mutably.
    pub fn with_mut<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        f(&mut self.data.write())
    }
}

impl GuestMemory for LocalMemory {
    fn visit(&self, gpa: u64, len: usize, f: &mut dyn FnMut(&[u8])) -> Result<(), MemoryError> {
        let data = self.data.read();
        check_range(gpa, len, data.len() as u64)?;
        f(&data[gpa as usize..gpa as usize + len]);
        Ok(())
    }

    fn visit_mut(
        &self,
        gpa: u64,
        len: usize,
        f: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), MemoryError> {
        let mut data = self.data.write();
        check_range(gpa, len, data.len() as u64)?;
        f(&mut data[gpa as usize..gpa as usize + len]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_memory_round_trip_across_chunks() {
        let mem = RamGuestMemory::new(4 * CHUNK_SIZE as u64);
        let data: Vec<u8> = (0..3 * CHUNK_SIZE).map(|i| (i % 251) as u8).collect();
        mem.write(100, &data).unwrap();
        let mut back = alloc::vec![0; data.len()];
        mem.read(100, &mut back).unwrap();
        assert_eq!(back, data);
        let mut head = [0xffu8; 100];
        mem.read(0, &mut head).unwrap();
        assert_eq!(head, [0; 100]);
    }

    #[test]
    fn out_of_range_is_an_error() {
        let mem = RamGuestMemory::new(8192);
        let mut b = [0u8; 16];
        assert_eq!(
            mem.read(8190, &mut b).unwrap_err().kind,
            MemoryErrorKind::OutOfRange
        );
        assert!(mem.write(u64::MAX - 4, &b).is_err());
        assert!(mem.fill(8192, 1, 0).is_err());
        assert!(mem.fill(8192, 0, 0).is_ok());
        let local = LocalMemory::new(10);
        assert!(local.read(5, &mut b).is_err());
    }
}
