//! A PCI function reached through Linux VFIO, as parastor's NVMe driver's
//! device ([`parastor_nvme_driver::DeviceAccess`]): [`VfioDevice`].
//!
//! - Opening: the function (`0000:00:04.0`) must be bound to `vfio-pci`;
//!   its IOMMU group is found through sysfs (`iommu_group`), the container
//!   (`/dev/vfio/vfio`) and the group (`/dev/vfio/N`) are opened, and the
//!   type-1 IOMMU is chosen — or, when only `/dev/vfio/noiommu-N` exists
//!   (the kernel's no-IOMMU mode), no IOMMU at all.
//! - Registers: config space through the config region (`pread`/`pwrite`),
//!   BARs mapped and reached by single volatile accesses (`parastor-sys`'s
//!   `MmioRegion`), or through the region file when VFIO will not map one.
//!   A failed access reads all ones, as a removed device does.
//! - DMA memory: one locked memory file mapped for the device at open —
//!   at a fixed IOVA range with the IOMMU, or, without one, at the
//!   physical addresses `/proc/self/pagemap` gives (runs handed out are
//!   physically contiguous). Guest memory can be attached
//!   ([`VfioDevice::attach_guest_ram`]): mapped at IOVA = GPA, so the
//!   driver sends buffers in it to the device directly.
//! - Interrupts: every MSI-X vector (up to [`MAX_VECTORS`]) signals its
//!   own eventfd (`VFIO_DEVICE_SET_IRQS`), waited for on the parastor
//!   runtime thread that polls it (an `EventFd` registered with that
//!   thread's epoll), so a completion wakes the queue's own thread.
//! - Reset: `VFIO_DEVICE_RESET` (function-level reset), then the eventfds
//!   wired again.
//!
//! All `unsafe` (the ioctls, the mappings, the volatile accesses, `mlock`)
//! is in `parastor-sys`; this crate forbids it.
#![forbid(unsafe_code)]

mod address;
mod attached;
mod device;
mod pages;

pub use address::PciAddress;
pub use device::{MAX_VECTORS, OpenError, SystemPaths, VfioDevice, VfioOptions};
pub use parastor_sys::vfio::IommuType;
