//! [`MmioRegion`]: a device's registers (a PCI BAR) mapped into this
//! process, reached only by single volatile accesses of 32 or 64 bits.
//!
//! This module allows `unsafe` for mapping and unmapping the BAR and for
//! the volatile loads and stores: device registers are not memory (a read
//! can have side effects, a write is a command), so they are reached
//! through raw pointers with `read_volatile`/`write_volatile` — never a
//! Rust reference, and never a copy the compiler could split, merge or
//! elide.
//!
//! # Ordering
//!
//! Each call is exactly one access of its width, naturally aligned, in
//! program order. A write is ordered after every earlier store of this
//! thread to ordinary memory (a queue entry written with the
//! [`access`](crate::access) copies is visible to the device before the
//! doorbell write that announces it), and a read is ordered before every
//! later load. The device is another observer of memory, outside the
//! CPUs' coherence domain as Rust's atomics see it, so the barriers are
//! the architecture's I/O ones:
//!
//! - x86-64: the BAR is mapped uncached by the kernel, and uncached
//!   accesses are not reordered with earlier stores or later loads, so a
//!   compiler fence is all that is needed.
//! - aarch64: `dmb oshst` before each write and `dmb oshld` after each
//!   read (inline assembly), ordering the access against memory accesses
//!   in the *outer-shareable* domain, which holds the device. A Rust
//!   `fence(SeqCst)` is `dmb ish` (inner shareable: the CPUs only) and
//!   would not order queue entries before their doorbell for a device.
//! - other architectures: a full `fence(SeqCst)` (not checked against a
//!   device; a port must choose its I/O barriers).
#![allow(unsafe_code)]

use core::ffi::c_void;
use core::ptr::{self, NonNull};
use rustix::fd::BorrowedFd;
use rustix::mm::{MapFlags, ProtFlags};
use std::io;

/// A mapping of device registers (one BAR), unmapped on drop.
#[derive(Debug)]
pub struct MmioRegion {
    /// First byte of the mapping (page aligned).
    base: NonNull<u8>,
    /// Its length in bytes.
    len: usize,
}

// SAFETY: the region owns its mapping, and every access through it is a
// single volatile access through a raw pointer, which any thread may make;
// the device serialises concurrent register accesses itself.
unsafe impl Send for MmioRegion {}

// SAFETY: all methods take `&self` and reach the registers only through
// volatile raw-pointer accesses, never references, so concurrent calls are
// concurrent register accesses, which the device handles.
unsafe impl Sync for MmioRegion {}

/// Orders an MMIO write after the thread's earlier memory stores.
fn before_write() {
    #[cfg(target_arch = "x86_64")]
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    // `dmb oshst`: earlier stores (queue entries in DMA memory) are
    // observed by every agent in the outer-shareable domain — the device
    // included — before later stores (the doorbell). `fence(SeqCst)` is a
    // `dmb ish`, which covers only the inner-shareable domain (the CPUs).
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier instruction: it touches no register, memory or
    // stack and cannot fault. Without `nomem` the compiler treats it as
    // reading and writing memory, so it is also a compiler barrier.
    unsafe {
        core::arch::asm!("dmb oshst", options(nostack, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// Orders an MMIO read before the thread's later memory loads.
fn after_read() {
    #[cfg(target_arch = "x86_64")]
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    // `dmb oshld`: the register load completes before later loads — of
    // DMA memory the device wrote before the register said so (a
    // completion entry) — in the outer-shareable domain the device is in.
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier instruction: it touches no register, memory or
    // stack and cannot fault. Without `nomem` the compiler treats it as
    // reading and writing memory, so it is also a compiler barrier.
    unsafe {
        core::arch::asm!("dmb oshld", options(nostack, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

impl MmioRegion {
    /// Maps `len` bytes of device file `fd` at `offset` (page aligned)
    /// shared and read-write: the range a VFIO region describes. The
    /// device's driver checks the range in its `mmap` handler.
    ///
    /// # Errors
    /// If `len` is 0, `offset` is not page aligned, or the kernel refuses.
    pub fn map(fd: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<Self> {
        let page = crate::mmap::page_size();
        if len == 0 || !offset.is_multiple_of(page as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a register mapping of {len} bytes at {offset:#x} (must be non-empty and page aligned)"
                ),
            ));
        }
        let prot = ProtFlags::READ | ProtFlags::WRITE;
        // The device driver's mmap handler refuses a range the device does
        // not back.
        // SAFETY: a null hint maps fresh address space: no Rust allocation.
        let addr =
            unsafe { rustix::mm::mmap(ptr::null_mut(), len, prot, MapFlags::SHARED, fd, offset) }?;
        let base = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null address"))?;
        Ok(Self { base, len })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a mapping has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The register at `offset` of width `W`, if it lies in the mapping
    /// and is naturally aligned.
    fn at<W>(&self, offset: u64) -> Option<*mut W> {
        let offset = usize::try_from(offset).ok()?;
        let end = offset.checked_add(size_of::<W>())?;
        if end > self.len || !offset.is_multiple_of(size_of::<W>()) {
            return None;
        }
        Some(self.base.as_ptr().wrapping_add(offset).cast::<W>())
    }

    /// Reads the 32-bit register at `offset`; `None` if it is outside the
    /// mapping or not 4-byte aligned.
    pub fn read_u32(&self, offset: u64) -> Option<u32> {
        let p = self.at::<u32>(offset)?;
        // SAFETY: `p` is 4-aligned and inside this live mapping (checked by
        // `at`), derived from its base pointer; a volatile read is one
        // access to the device.
        let v = unsafe { p.read_volatile() };
        after_read();
        Some(u32::from_le(v))
    }

    /// Reads the 64-bit register at `offset` in one access; `None` if it
    /// is outside the mapping or not 8-byte aligned.
    pub fn read_u64(&self, offset: u64) -> Option<u64> {
        let p = self.at::<u64>(offset)?;
        // SAFETY: as in `read_u32`, for an 8-aligned 8-byte register.
        let v = unsafe { p.read_volatile() };
        after_read();
        Some(u64::from_le(v))
    }

    /// Writes the 32-bit register at `offset`; `false` (nothing written)
    /// if it is outside the mapping or not 4-byte aligned.
    pub fn write_u32(&self, offset: u64, value: u32) -> bool {
        let Some(p) = self.at::<u32>(offset) else {
            return false;
        };
        before_write();
        // SAFETY: `p` is 4-aligned and inside this live mapping (checked by
        // `at`); a volatile write is one access to the device.
        unsafe { p.write_volatile(value.to_le()) };
        true
    }

    /// Writes the 64-bit register at `offset` in one access; `false`
    /// (nothing written) if it is outside the mapping or not 8-byte
    /// aligned.
    pub fn write_u64(&self, offset: u64, value: u64) -> bool {
        let Some(p) = self.at::<u64>(offset) else {
            return false;
        };
        before_write();
        // SAFETY: as in `write_u32`, for an 8-aligned 8-byte register.
        unsafe { p.write_volatile(value.to_le()) };
        true
    }
}

impl Drop for MmioRegion {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are exactly the mapping this region made
        // and owns; no pointer into it outlives `self`.
        let result = unsafe { rustix::mm::munmap(self.base.as_ptr().cast::<c_void>(), self.len) };
        debug_assert!(
            result.is_ok(),
            "munmap of a register mapping failed: {result:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fd::AsFd;

    /// A memory file stands in for a BAR: same mapping, same accesses.
    fn region() -> MmioRegion {
        let fd = rustix::fs::memfd_create("mmio-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        MmioRegion::map(fd.as_fd(), 0, 4096).unwrap()
    }

    #[test]
    fn registers_round_trip_little_endian() {
        let r = region();
        assert!(r.write_u32(0x14, 0x0046_0001));
        assert_eq!(r.read_u32(0x14), Some(0x0046_0001));
        assert!(r.write_u64(0x28, 0x1234_5678_9ABC_D000));
        assert_eq!(r.read_u64(0x28), Some(0x1234_5678_9ABC_D000));
        assert_eq!(
            r.read_u32(0x28),
            Some(0x9ABC_D000),
            "low dword first in memory"
        );
        assert_eq!(r.read_u32(0x2C), Some(0x1234_5678));
    }

    #[test]
    fn misaligned_or_outside_accesses_are_refused() {
        let r = region();
        assert_eq!(r.read_u32(2), None);
        assert_eq!(r.read_u64(4), None);
        assert_eq!(r.read_u32(4096), None);
        assert_eq!(r.read_u64(4092), None);
        assert_eq!(r.read_u32(u64::MAX - 1), None);
        assert!(!r.write_u32(4094, 1));
        assert!(!r.write_u64(4096, 1));
    }

    #[test]
    fn empty_or_misaligned_mappings_are_refused() {
        let fd = rustix::fs::memfd_create("mmio-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert!(MmioRegion::map(fd.as_fd(), 0, 0).is_err());
        assert!(MmioRegion::map(fd.as_fd(), 12, 4096).is_err());
    }
}
