//! Typed addresses: guest physical addresses and device addresses.
//!
//! A guest physical address ([`Gpa`]) names a byte of the guest's memory as
//! the guest sees it. A device address ([`DeviceAddress`]) names a byte as
//! one DMA domain ([`DmaDomainId`]) sees it: an IOVA behind an IOMMU, a bus
//! address, or a host virtual address for the kernel. The two are different
//! types with no conversion between them, so one can never be handed where
//! the other is meant; a device address is obtained only by pinning guest
//! memory ([`crate::memory::GuestMemory::pin`]).

use core::fmt;
use core::ops::{Add, AddAssign};

/// A guest physical address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Gpa(u64);

impl Gpa {
    /// Address 0.
    pub const ZERO: Gpa = Gpa(0);

    /// The address `v`.
    pub const fn new(v: u64) -> Self {
        Self(v)
    }

    /// The address as a number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// `self + n`, or `None` if that wraps past the end of the address space.
    pub const fn checked_add(self, n: u64) -> Option<Gpa> {
        match self.0.checked_add(n) {
            Some(v) => Some(Gpa(v)),
            None => None,
        }
    }

    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & align.wrapping_sub(1) == 0
    }
}

/// `gpa + n`, for offsets already known to stay inside a validated range
/// (overflow panics as for `u64`; use [`Gpa::checked_add`] on values from
/// a peer).
impl Add<u64> for Gpa {
    type Output = Gpa;

    fn add(self, n: u64) -> Gpa {
        Gpa(self.0 + n)
    }
}

impl AddAssign<u64> for Gpa {
    fn add_assign(&mut self, n: u64) {
        self.0 += n;
    }
}

impl fmt::LowerHex for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl fmt::Display for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// An address as a device (or the kernel) sees memory: meaningful only
/// inside the [`DmaDomainId`] it was obtained for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct DeviceAddress(u64);

impl DeviceAddress {
    /// The address `v`.
    pub const fn new(v: u64) -> Self {
        Self(v)
    }

    /// The address as a number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// `self + n`, or `None` if that wraps.
    pub const fn checked_add(self, n: u64) -> Option<DeviceAddress> {
        match self.0.checked_add(n) {
            Some(v) => Some(DeviceAddress(v)),
            None => None,
        }
    }

    /// Whether the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & align.wrapping_sub(1) == 0
    }
}

impl fmt::LowerHex for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl fmt::Display for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Which address space a [`DeviceAddress`] belongs to: one IOMMU domain,
/// one device's bus view, or [`DmaDomainId::KERNEL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaDomainId(u32);

impl DmaDomainId {
    /// The host kernel (io_uring, `preadv`): device addresses are host
    /// virtual addresses, usable only through the types that pinned them.
    pub const KERNEL: DmaDomainId = DmaDomainId(0);

    /// The domain numbered `id` (0 is [`Self::KERNEL`]).
    pub const fn new(id: u32) -> Self {
        Self(id)
    }

    /// The domain's number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

/// One contiguous range of guest physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GpaRange {
    /// First guest physical address.
    pub gpa: Gpa,
    /// Length in bytes.
    pub len: u64,
}

impl GpaRange {
    /// The range `[gpa, gpa + len)`.
    pub const fn new(gpa: Gpa, len: u64) -> Self {
        Self { gpa, len }
    }

    /// The first address past the range, or `None` if the range wraps.
    pub const fn end(&self) -> Option<Gpa> {
        self.gpa.checked_add(self.len)
    }
}

/// One contiguous range of device-visible memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceRange {
    /// First device address.
    pub addr: DeviceAddress,
    /// Length in bytes.
    pub len: u64,
}

impl DeviceRange {
    /// The range `[addr, addr + len)`.
    pub const fn new(addr: DeviceAddress, len: u64) -> Self {
        Self { addr, len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_arithmetic() {
        let g = Gpa::new(0x1000);
        assert_eq!(g + 0x10, Gpa::new(0x1010));
        assert_eq!(g.checked_add(u64::MAX), None);
        assert!(g.is_aligned(4096));
        assert!(!(g + 2).is_aligned(4));
        assert_eq!(std::format!("{g}"), "0x1000");
        assert_eq!(GpaRange::new(Gpa::new(u64::MAX), 2).end(), None);
        assert_eq!(
            GpaRange::new(g, 16).end(),
            Some(Gpa::new(0x1010)),
            "end is exclusive"
        );
        let d = DeviceAddress::new(0x2000);
        assert!(d.is_aligned(0x1000));
        assert_eq!(d.checked_add(1), Some(DeviceAddress::new(0x2001)));
        assert_eq!(DmaDomainId::KERNEL.get(), 0);
    }
}
