//! The device-access trait: everything the driver needs from one PCI
//! function, and nothing about how it is reached.
//!
//! [`DeviceAccess`] is implemented in-process over parastor's own NVMe
//! controller (`parastor_emulated::nvme`) and, later, over VFIO. Its
//! shape follows what a user-mode driver really gets from VFIO: config
//! space and BAR registers by offset, DMA memory that has a device
//! address (an IOVA) and is reached from the CPU only by copies and
//! atomics, and MSI-X vectors delivered as events (eventfds there). The
//! backing sets up MSI-X itself (VFIO does it through `VFIO_DEVICE_SET_IRQS`,
//! not through the table), so the driver only asks for a vector's event.
//!
//! # Register ordering
//!
//! Every register call is exactly one access of its width to the device,
//! made in program order: a call is not merged with, split from, or
//! reordered around other register calls of the same thread, and it is
//! ordered after every DMA-memory store ([`DmaBuffer`]'s copies and
//! atomics) the thread made before it — so a submission-queue entry is
//! visible to the device before the doorbell write that announces it.
//! Writes are posted (they may reach the device after the call returns);
//! a read of the same function flushes them, as on PCIe. A 64-bit call is
//! one 64-bit access where the platform has one (NVMe allows a host to
//! split its 64-bit registers into two 32-bit accesses, low dword first;
//! backings that must split do so).

use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::Ordering;
use core::task::{Context, Poll};
use parastor_core::addr::{DeviceAddress, DeviceRange, DmaDomainId, Gpa, GpaRange};
use parastor_core::error::MemoryError;
use parastor_core::memory::{GuestMem, GuestMemory, GuestMemoryExt};

/// Why the device refused a request of the driver's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// No DMA memory of that size is available.
    OutOfDmaMemory {
        /// The bytes asked for.
        len: usize,
    },
    /// The MSI-X vector does not exist or cannot be mapped.
    NoSuchInterrupt {
        /// The vector asked for.
        vector: u16,
        /// How many vectors the device has.
        available: u16,
    },
    /// The device is gone (surprise removal, or a backing failure).
    Gone(&'static str),
    /// A system call of the backing failed.
    Io {
        /// What the backing was doing (e.g. `"VFIO_DEVICE_RESET"`).
        op: &'static str,
        /// The `errno` the kernel returned.
        errno: i32,
    },
    /// The backing cannot do this (e.g. a function without reset, or
    /// caller memory the platform cannot map for DMA).
    Unsupported(&'static str),
    /// Caller memory given to [`DeviceAccess::map_dma`] is not memory the
    /// backing can map (outside it, or not page aligned).
    BadRange {
        /// The first guest physical address of the range.
        gpa: u64,
        /// Its length in bytes.
        len: u64,
    },
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::OutOfDmaMemory { len } => {
                write!(f, "no DMA memory for a buffer of {len} bytes")
            }
            DeviceError::NoSuchInterrupt { vector, available } => write!(
                f,
                "MSI-X vector {vector} cannot be mapped (the device has {available})"
            ),
            DeviceError::Gone(why) => write!(f, "device gone: {why}"),
            DeviceError::Io { op, errno } => {
                write!(f, "{op} failed with errno {errno}")
            }
            DeviceError::Unsupported(what) => write!(f, "not supported by the device: {what}"),
            DeviceError::BadRange { gpa, len } => write!(
                f,
                "memory at {gpa:#x}+{len:#x} cannot be mapped for the device's DMA"
            ),
        }
    }
}

impl core::error::Error for DeviceError {}

/// One PCI function, as a user-mode driver reaches it.
///
/// Register accesses never fail: a device that is gone reads as all ones
/// (as a surprise-removed PCIe function does) and the driver treats an
/// all-ones status register as "device gone"; writes to a gone device are
/// dropped. They are ordered as the [module docs](self#register-ordering)
/// say.
pub trait DeviceAccess: Send + Sync + 'static {
    /// A name for messages (the PCI address for VFIO).
    fn id(&self) -> &str;

    /// Reads the naturally aligned dword at `offset` of config space.
    fn config_read_u32(&self, offset: u16) -> u32;

    /// Writes the naturally aligned dword at `offset` of config space.
    fn config_write_u32(&self, offset: u16, value: u32);

    /// Reads the 32-bit register at `offset` of BAR `bar`.
    fn read_u32(&self, bar: u8, offset: u64) -> u32;

    /// Reads the 64-bit register at `offset` of BAR `bar`.
    fn read_u64(&self, bar: u8, offset: u64) -> u64;

    /// Writes the 32-bit register at `offset` of BAR `bar`.
    fn write_u32(&self, bar: u8, offset: u64, value: u32);

    /// Writes the 64-bit register at `offset` of BAR `bar`.
    fn write_u64(&self, bar: u8, offset: u64, value: u64);

    /// The DMA domain the device's addresses belong to: guest memory that
    /// pins for this domain is handed to the device directly.
    fn dma_domain(&self) -> DmaDomainId;

    /// `len` bytes (rounded up to whole 4 KiB pages) of zeroed memory the
    /// device can reach, contiguous and page aligned in device address
    /// space.
    ///
    /// # Errors
    /// [`DeviceError::OutOfDmaMemory`] when none is left.
    fn alloc_dma(&self, len: usize) -> Result<DmaBuffer, DeviceError>;

    /// How many MSI-X vectors the device offers.
    fn max_interrupts(&self) -> u16;

    /// The event MSI-X vector `vector` signals (enabling the vector).
    ///
    /// # Errors
    /// [`DeviceError::NoSuchInterrupt`] for a vector the device lacks.
    fn map_interrupt(&self, vector: u16) -> Result<Arc<dyn DeviceInterrupt>, DeviceError>;

    /// Resets the PCI function (a function-level reset, or the platform's
    /// equivalent): every register, queue and interrupt of the device is
    /// back at its reset value, and DMA memory and mappings stay. The
    /// driver then re-enables the controller from scratch; MSI-X vectors
    /// mapped before stay mapped (the backing re-arms them).
    ///
    /// # Errors
    /// [`DeviceError::Unsupported`] when the function cannot be reset
    /// (the default); [`DeviceError::Io`] when the reset failed.
    fn reset_function(&self) -> Result<(), DeviceError> {
        Err(DeviceError::Unsupported("function-level reset"))
    }

    /// Makes `range` of the caller's memory `mem` reachable by the device
    /// and returns where the device sees it. Where the platform allows it
    /// the mapping is the identity (device address = guest physical
    /// address, VFIO's `iova = gpa`), so that `mem`'s pins for
    /// [`dma_domain`](Self::dma_domain) give the device those addresses.
    /// Mapping a range twice is allowed; mappings last as long as the
    /// backing or until [`unmap_dma`](Self::unmap_dma).
    ///
    /// # Errors
    /// [`DeviceError::Unsupported`] when the platform cannot map caller
    /// memory (the default; no IOMMU, or memory the backing cannot reach):
    /// the driver then bounces through [`alloc_dma`](Self::alloc_dma)
    /// memory. [`DeviceError::BadRange`] for a range outside `mem` or not
    /// 4 KiB aligned; [`DeviceError::Io`] when the mapping call failed.
    fn map_dma(&self, mem: &GuestMem, range: GpaRange) -> Result<DeviceRange, DeviceError> {
        let _ = (mem, range);
        Err(DeviceError::Unsupported("mapping caller memory for DMA"))
    }

    /// Removes a mapping [`map_dma`](Self::map_dma) made (exactly the
    /// device range it returned). The caller guarantees no command that
    /// uses it is outstanding.
    ///
    /// # Errors
    /// [`DeviceError::Unsupported`] (the default) where nothing can be
    /// mapped; [`DeviceError::BadRange`] for a range that is not mapped;
    /// [`DeviceError::Io`] when the unmapping call failed.
    fn unmap_dma(&self, range: DeviceRange) -> Result<(), DeviceError> {
        let _ = range;
        Err(DeviceError::Unsupported("mapping caller memory for DMA"))
    }

    /// DMA memory a previous driver instance allocated with
    /// [`alloc_dma`](Self::alloc_dma) and left to the device across a
    /// keepalive save (the queues, list pages and buffers of commands the
    /// device still runs), handed back as a [`DmaBuffer`] over exactly
    /// `range` (4 KiB aligned) — not zeroed: the restored driver reads
    /// what the device wrote.
    ///
    /// # Errors
    /// [`DeviceError::Unsupported`] where DMA memory does not outlive its
    /// driver (the default); [`DeviceError::BadRange`] for a range that is
    /// not 4 KiB aligned or not DMA memory of this device.
    fn attach_dma(&self, range: DeviceRange) -> Result<DmaBuffer, DeviceError> {
        let _ = range;
        Err(DeviceError::Unsupported("re-attaching DMA memory"))
    }
}

/// An MSI-X vector as a waitable event.
pub trait DeviceInterrupt: Send + Sync {
    /// `Ready` if the vector fired since the last `Ready` (consuming the
    /// signal); otherwise registers `cx`'s waker — replacing the previous
    /// one — to be woken when it fires, and returns `Pending`.
    fn poll_signal(&self, cx: &mut Context<'_>) -> Poll<()>;
}

/// Gives DMA memory back to its device.
pub trait DmaRelease: Send + Sync {
    /// `range` is no longer used by the driver or the device.
    fn release(&self, range: DeviceRange);

    /// `range` stays with the device for the next driver instance to take
    /// back with [`DeviceAccess::attach_dma`] (a keepalive save). The
    /// default does nothing (backings without `attach_dma`).
    fn leave(&self, range: DeviceRange) {
        let _ = range;
    }
}

/// A block of DMA memory: reached by the CPU through `mem` at
/// `[base, base + len)` and by the device at `[addr, addr + len)`.
///
/// Only copies and atomics reach it (the device writes it concurrently);
/// every access is bounds checked against the block.
pub struct DmaBuffer {
    mem: GuestMem,
    base: Gpa,
    len: usize,
    addr: DeviceAddress,
    release: Option<Arc<dyn DmaRelease>>,
}

impl fmt::Debug for DmaBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaBuffer")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("addr", &self.addr)
            .finish()
    }
}

impl DmaBuffer {
    /// A block the CPU reaches in `mem` at `base` and the device at `addr`,
    /// `len` bytes long; `release` (if any) is told when it is dropped.
    pub fn new(
        mem: GuestMem,
        base: Gpa,
        len: usize,
        addr: DeviceAddress,
        release: Option<Arc<dyn DmaRelease>>,
    ) -> Self {
        Self {
            mem,
            base,
            len,
            addr,
            release,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of byte `offset` (not checked against the
    /// length: callers compute offsets inside the block).
    pub fn device_address(&self, offset: usize) -> u64 {
        self.addr.get().wrapping_add(offset as u64)
    }

    /// The whole block in device address space.
    pub fn device_range(&self) -> DeviceRange {
        DeviceRange::new(self.addr, self.len as u64)
    }

    /// The memory the CPU reaches the block through, and where in it the
    /// block starts.
    pub fn memory(&self) -> (&GuestMem, Gpa) {
        (&self.mem, self.base)
    }

    fn at(&self, offset: usize, len: usize) -> Result<Gpa, MemoryError> {
        let end = offset.checked_add(len);
        match end {
            Some(end) if end <= self.len => Ok(self.base + offset as u64),
            _ => Err(MemoryError::new(
                self.base,
                len as u64,
                parastor_core::error::MemoryErrorKind::BeyondBuffer,
            )),
        }
    }

    /// Copies `dst.len()` bytes at `offset` into `dst`.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), MemoryError> {
        self.mem.read_at(self.at(offset, dst.len())?, dst)
    }

    /// Copies `src` to `offset`.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<(), MemoryError> {
        self.mem.write_at(self.at(offset, src.len())?, src)
    }

    /// Sets `len` bytes at `offset` to `byte`.
    pub fn fill_at(&self, offset: usize, len: usize, byte: u8) -> Result<(), MemoryError> {
        self.mem.fill_at(self.at(offset, len)?, len, byte)
    }

    /// Atomically loads the naturally aligned `u16` at `offset`.
    pub fn load_u16(&self, offset: usize, order: Ordering) -> Result<u16, MemoryError> {
        self.mem.load_u16(self.at(offset, 2)?, order)
    }

    /// Atomically stores the naturally aligned `u32` at `offset`.
    pub fn store_u32(&self, offset: usize, v: u32, order: Ordering) -> Result<(), MemoryError> {
        self.mem.store_u32(self.at(offset, 4)?, v, order)
    }

    /// Atomically loads the naturally aligned `u32` at `offset`.
    pub fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, MemoryError> {
        self.mem.load_u32(self.at(offset, 4)?, order)
    }
}

impl DmaBuffer {
    /// Gives up the block without handing it back: it stays the device's
    /// (a keepalive save) and a later [`DeviceAccess::attach_dma`] of the
    /// same range may take it again. Unlike `mem::forget`, the backing
    /// learns that the block is no longer attached, so a block attached
    /// by one restore and left by the next save can be attached again
    /// while two attaches over the same pages are refused.
    pub fn leave_to_device(mut self) {
        if let Some(release) = self.release.take() {
            release.leave(DeviceRange::new(self.addr, self.len as u64));
        }
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release.release(DeviceRange::new(self.addr, self.len as u64));
        }
    }
}

/// A [`DmaBuffer`]'s bytes as guest memory addressed from 0: how a bounce
/// buffer block is handed to core's `BouncePool`.
pub(crate) struct DmaWindow(pub(crate) DmaBuffer);

impl GuestMemory for DmaWindow {
    fn extent(&self) -> Gpa {
        Gpa::new(self.0.len as u64)
    }

    fn read_at(&self, gpa: Gpa, dst: &mut [u8]) -> Result<(), MemoryError> {
        let offset = usize::try_from(gpa.get()).unwrap_or(usize::MAX);
        self.0.read_at(offset, dst)
    }

    fn write_at(&self, gpa: Gpa, src: &[u8]) -> Result<(), MemoryError> {
        let offset = usize::try_from(gpa.get()).unwrap_or(usize::MAX);
        self.0.write_at(offset, src)
    }

    fn fill_at(&self, gpa: Gpa, len: usize, byte: u8) -> Result<(), MemoryError> {
        let offset = usize::try_from(gpa.get()).unwrap_or(usize::MAX);
        self.0.fill_at(offset, len, byte)
    }

    fn atomic(
        &self,
        gpa: Gpa,
        width: parastor_core::memory::Width,
        op: parastor_core::memory::AtomicOp,
        order: Ordering,
    ) -> Result<u64, MemoryError> {
        let offset = usize::try_from(gpa.get()).unwrap_or(usize::MAX);
        let at = self.0.at(offset, width.bytes())?;
        self.0.mem.atomic(at, width, op, order)
    }

    /// The block's memory, where the range lies inside the block: copies
    /// between a bounce buffer and the caller's memory then go straight
    /// from memory to memory when both are mapped RAM.
    fn window(&self, gpa: Gpa, len: u64) -> Option<(&dyn GuestMemory, Gpa)> {
        let offset = usize::try_from(gpa.get()).ok()?;
        let at = self.0.at(offset, usize::try_from(len).ok()?).ok()?;
        Some((&*self.0.mem, at))
    }
}
