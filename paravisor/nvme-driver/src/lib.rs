//! parastor's own NVMe driver: enables a controller the way Linux's nvme
//! driver does, identifies it, creates I/O queues and serves every
//! namespace as a parastor `Disk`, over a small device-access trait.
//!
//! - [`device`]: [`DeviceAccess`], what the driver needs from a PCI
//!   function (config space, BAR registers, DMA memory with device
//!   addresses, MSI-X vectors as events, function reset). Implemented
//!   over VFIO (`parastor_vfio::VfioDevice`) and in-process over
//!   parastor's NVMe controller (`parastor_emulated::nvme`).
//! - [`NvmeDriver`]: bring-up, admin commands, one I/O queue pair per CPU
//!   (created on the first I/O from that CPU, each with its own MSI-X
//!   vector; CPUs share when queues or vectors run out), asynchronous
//!   events ([`NvmeDriver::run_async_events`]), the watchdog
//!   ([`NvmeDriver::run_watchdog`]), reset, shutdown, raw commands
//!   ([`NvmeDriver::passthrough`]) and keepalive save/restore
//!   ([`NvmeDriver::save`], [`NvmeDriver::restore`], [`state`]).
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
//! Completions: there is no completion task. The future that waits for a
//! command drains its queue's completion ring and wakes the owners of the
//! other commands it finds complete; the queue's MSI-X event wakes one
//! waiter.
//!
//! A hostile device fails the device, not the process: every completion
//! field is checked (command identifier slot and sequence, SQ identifier,
//! SQ head inside the queue and moving forward by no more than what was
//! submitted); a violation, CSTS.CFS, registers reading all ones
//! (surprise removal) or a failed reset fail the controller, and its
//! disks then answer every request with
//! `Io(DeviceFailed, CODE_DEVICE_FAILED)`. Every wait is bounded: CSTS
//! polling by CAP.TO under a configured cap, admin commands by
//! [`DriverConfig::admin_timeout`], I/O commands by the watchdog
//! ([`NvmeDriver::run_watchdog`]: Abort, then a controller reset, then
//! failure). A command that fails while the device may still hold it
//! keeps its buffers (pins, bounce buffer, list page) until a disable or
//! reset proves the device stopped; a device that never stops keeps
//! them, counted ([`NvmeDriver::held_commands`]).
#![forbid(unsafe_code)]

extern crate alloc;

pub mod clock;
pub mod device;
mod driver;
pub mod error;
pub mod fault;
mod namespace;
mod queue;
pub mod state;

pub use clock::{Clock, MonotonicClock};
pub use device::{DeviceAccess, DeviceError, DeviceInterrupt, DmaBuffer, DmaRelease};
pub use driver::{
    ControllerFacts, DEFAULT_MAX_TRANSFER, DriverConfig, NvmeDriver, PassthroughData,
    PassthroughQueue, RawCompletion,
};
pub use error::{DriverError, Failure};
pub use namespace::NvmeDisk;
pub use queue::DataPointer;
