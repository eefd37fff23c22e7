//! [`AttachedRam`]: guest memory mapped for one device at I/O virtual
//! address = guest physical address, whose pins for that device's DMA
//! domain are the guest physical addresses themselves.

use parastor_core::addr::{DeviceAddress, DeviceRange, DmaDomainId, Gpa, GpaRange};
use parastor_core::error::{MemoryError, MemoryErrorKind};
use parastor_core::memory::{Access, AtomicOp, GuestMemory, Width};
use parastor_core::pin::{PinError, PinOwner, PinSet};
use parastor_sys::GuestRam;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Keeps the memory (and so its mappings) alive while pins exist; the
/// IOMMU mapping lasts as long as the device, so unpinning is a no-op.
struct Keep(GuestRam);

impl PinOwner for Keep {
    fn unpin(&self, _ranges: &[DeviceRange]) {
        // The mappings stay: holding the RAM is the whole job.
        let _ = &self.0;
    }
}

/// [`GuestRam`] mapped at IOVA = GPA for the devices of `domain`.
pub(crate) struct AttachedRam {
    ram: GuestRam,
    domain: DmaDomainId,
    owner: Arc<dyn PinOwner>,
    /// Ranges pinned for the device so far (shared with the device, which
    /// reports it): how often a buffer went to the device directly.
    pins: Arc<AtomicU64>,
}

impl AttachedRam {
    pub(crate) fn new(ram: GuestRam, domain: DmaDomainId, pins: Arc<AtomicU64>) -> Self {
        let owner: Arc<dyn PinOwner> = Arc::new(Keep(ram.clone()));
        Self {
            ram,
            domain,
            owner,
            pins,
        }
    }
}

impl GuestMemory for AttachedRam {
    fn extent(&self) -> Gpa {
        self.ram.extent()
    }

    fn read_at(&self, gpa: Gpa, dst: &mut [u8]) -> Result<(), MemoryError> {
        self.ram.read_at(gpa, dst)
    }

    fn write_at(&self, gpa: Gpa, src: &[u8]) -> Result<(), MemoryError> {
        self.ram.write_at(gpa, src)
    }

    fn fill_at(&self, gpa: Gpa, len: usize, byte: u8) -> Result<(), MemoryError> {
        self.ram.fill_at(gpa, len, byte)
    }

    fn atomic(
        &self,
        gpa: Gpa,
        width: Width,
        op: AtomicOp,
        order: Ordering,
    ) -> Result<u64, MemoryError> {
        self.ram.atomic(gpa, width, op, order)
    }

    fn write_vectored_at(&self, gpa: Gpa, srcs: &[&[u8]]) -> Result<(), MemoryError> {
        self.ram.write_vectored_at(gpa, srcs)
    }

    fn check(&self, range: GpaRange, access: Access) -> Result<(), MemoryError> {
        self.ram.check(range, access)
    }

    /// For the device's domain: the GPAs themselves (after checking the
    /// ranges are accessible); for the kernel's: the RAM's own pins.
    fn pin(
        &self,
        ranges: &[GpaRange],
        access: Access,
        domain: DmaDomainId,
        out: &mut PinSet,
    ) -> Result<(), PinError> {
        if domain != self.domain {
            return self.ram.pin(ranges, access, domain, out);
        }
        for r in ranges {
            match self.ram.check(*r, access) {
                Ok(()) => {}
                Err(e) if matches!(e.kind, MemoryErrorKind::Inaccessible(_)) => {
                    return Err(PinError::NotDeviceVisible(e));
                }
                Err(e) => return Err(PinError::Memory(e)),
            }
            let device = DeviceRange::new(DeviceAddress::new(r.gpa.get()), r.len);
            out.push(&self.owner, domain, &[device])?;
        }
        self.pins.fetch_add(ranges.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_for_the_device_domain_are_the_gpas() {
        let ram = GuestRam::memfd("attached-test", 64 << 10).unwrap();
        let domain = DmaDomainId::new(0x5646_FFFF);
        let count = Arc::new(AtomicU64::new(0));
        let mem = AttachedRam::new(ram, domain, count.clone());
        let mut pins = PinSet::with_capacity(4);
        let range = GpaRange::new(Gpa::new(0x3000), 0x2000);
        mem.pin(&[range], Access::Read, domain, &mut pins).unwrap();
        assert_eq!(
            pins.ranges(),
            [DeviceRange::new(DeviceAddress::new(0x3000), 0x2000)]
        );
        assert_eq!(count.load(Ordering::Relaxed), 1);
        // Outside the memory: refused, nothing pinned.
        let mut none = PinSet::with_capacity(4);
        let outside = GpaRange::new(Gpa::new(60 << 10), 8 << 10);
        assert!(matches!(
            mem.pin(&[outside], Access::Read, domain, &mut none),
            Err(PinError::Memory(_))
        ));
        // Another domain: not this device's mapping (GuestRam pins only
        // for the kernel).
        let mut other = PinSet::with_capacity(4);
        assert!(matches!(
            mem.pin(&[range], Access::Read, DmaDomainId::new(7), &mut other),
            Err(PinError::Unsupported)
        ));
        assert_eq!(
            count.load(Ordering::Relaxed),
            1,
            "only the device's pins count"
        );
    }
}
