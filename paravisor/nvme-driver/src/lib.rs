//! parastor's own NVMe driver: enables a controller the way Linux's nvme
//! driver does, identifies it, creates I/O queues and serves every
//! namespace as a parastor `Disk`, over a small device-access trait.
//!
//! - [`device`]: [`DeviceAccess`], what the driver needs from a PCI
//!   function (config space, BAR registers, DMA memory with device
//!   addresses, MSI-X vectors as events). Implemented in-process over
//!   parastor's NVMe controller (`parastor_emulated::nvme`); VFIO later.
//! - [`NvmeDriver`]: bring-up, admin commands, I/O queue pairs (one per
//!   thread group, each with its own MSI-X vector), asynchronous events
//!   ([`NvmeDriver::run_async_events`]), reset and shutdown.
//! - [`NvmeDisk`]: one namespace as a `DiskIo`: Read/Write (FUA), Flush,
//!   Dataset Management (unmap), plus Write Zeroes, Compare and the
//!   reservation commands as its own methods.
//!
//! Data: a caller's buffer that pins for the device's DMA domain
//! (`SgList::pin`) goes to the device directly, as PRPs or, when the
//! controller supports them, SGLs ([`DataPointer`]); anything else goes
//! through bounce buffers from the device's DMA memory. Reads and writes
//! allocate nothing per I/O: a command's slot (its identifier, pins, PRP
//! list / SGL segment page) is reserved from a fixed table.
//!
//! Completions: there is no driver task. The future that waits for a
//! command drains its queue's completion ring and wakes the owners of the
//! other commands it finds complete; the queue's MSI-X event wakes one
//! waiter. A completion the driver cannot accept (unknown or stale command
//! identifier, wrong submission queue) is refused and counted, never a
//! panic.
//!
//! This first cut trusts the device to stay within the rules the spec sets
//! for valid command identifiers and queue heads, and refuses what it can
//! see is wrong; hardening against a hostile device (timeouts, aborts,
//! bounded retries of admin commands) comes with VFIO.
#![forbid(unsafe_code)]

extern crate alloc;

pub mod device;
mod driver;
pub mod error;
pub mod fault;
mod namespace;
mod queue;

pub use device::{DeviceAccess, DeviceError, DeviceInterrupt, DmaBuffer, DmaRelease};
pub use driver::{ControllerFacts, DEFAULT_MAX_TRANSFER, DriverConfig, NvmeDriver};
pub use error::{DriverError, Failure};
pub use namespace::NvmeDisk;
pub use queue::DataPointer;
