//! The one parastor crate with `unsafe`: it maps memory that other parties
//! (guest vCPUs, the host, devices, the kernel) change concurrently, and
//! Rust can reach such memory only through raw pointers.
//!
//! Every other crate in the workspace forbids `unsafe_code`. This one denies
//! it, and only the modules that need it allow it, each saying why:
//!
//! - [`mmap`]: creating and removing mappings (`mmap`, `mprotect`,
//!   `munmap`), and the `Send`/`Sync` promise of [`MappedRegion`];
//! - [`access`]: copies and atomic operations on a mapping's bytes;
//! - [`io`]: `preadv`/`pwritev2` between a file and runs of a mapping;
//! - [`mmio`]: mapping a device's registers and single volatile accesses
//!   to them;
//! - [`dma`]: `mlock` of memory a device reaches by DMA;
//! - [`vfio`]: the VFIO `ioctl`s (container, group, device, DMA mapping,
//!   interrupts, reset), whose arguments are pointers to the kernel ABI's
//!   structures (from rust-vmm's `vfio-bindings`).
//!
//! The rest is safe code on top: [`GuestRam`] (guest physical memory made
//! of mapped regions, implementing `parastor_core::GuestMemory` lock-free)
//! and [`KernelPins`] (the proof that pinned addresses lie in live
//! `GuestRam` mappings, which lets [`io::preadv_exact`] and
//! [`io::pwritev_all`] be safe functions).
//!
//! What it exports is small safe types without policy: what to map, where a
//! guest's memory lives and who may touch it is decided by the callers.
//!
//! # The memory model on a mapping
//!
//! No Rust reference ever points into a mapping: another party may write any
//! byte at any time, which a `&[u8]` or `&mut [u8]` would forbid. Bytes move
//! by raw-pointer copies between the mapping and private buffers, and
//! protocol fields that are polled or published use real atomic
//! instructions on the mapping. A copy that races with another party's
//! write may see that write's bytes torn at any byte boundary (the same
//! choice as rust-vmm's `vm-memory`), except that a naturally aligned copy
//! of 1, 2, 4 or 8 bytes is one access and never tears.
//!
//! The exception, stated plainly: a copy longer than one word is a plain
//! `ptr::copy_nonoverlapping` (or `write_bytes`), not a sequence of
//! atomics. If another party writes the same bytes at the same time, that
//! is a data race by Rust's memory model, which leaves its result
//! undefined. The crate accepts it, as `vm-memory` does, because the
//! other party is not Rust code the compiler can reason about (a guest, a
//! host process, a device), the copy's source or destination is only ever
//! reached through raw pointers, and the bytes copied are treated as
//! untrusted data that is validated after the copy, never as a value the
//! compiler may assume anything about.
//!
//! The same holds for DMA memory ([`dma`], and guest memory a device is
//! given): the device may write a queue, a bounce buffer or a guest page
//! while the CPU copies from it. What makes such a copy meaningful is the
//! protocol, not the copy: a reader first sees the device's publication
//! through an atomic load with `Acquire` ordering (a completion entry's
//! phase bit) or an MMIO read (ordered before later loads by [`mmio`]),
//! and only then copies the bytes the device published before it; a
//! writer copies first and publishes with an MMIO write (ordered after
//! earlier stores by [`mmio`]). A copy of bytes the device has not
//! published yet may see anything and is never trusted.

pub mod access;
pub mod dma;
mod error;
mod guest_ram;
pub mod io;
pub mod mmap;
pub mod mmio;
mod pins;
#[cfg(test)]
mod tests;
pub mod vfio;

pub use access::AtomicWord;
pub use error::{AccessError, AccessErrorKind};
pub use guest_ram::{GUEST_PAGE_SIZE, GuestRam, LayoutError};
pub use mmap::{MappedRegion, Protection};
pub use mmio::MmioRegion;
pub use pins::KernelPins;
