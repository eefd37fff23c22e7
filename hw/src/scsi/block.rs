//! SBC-4 parameter data: READ CAPACITY, GET LBA STATUS and the UNMAP
//! parameter list.

use bitfield_struct::bitfield;
use zerocopy::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::open_enum::open_enum;

wire_layout! {
    /// READ CAPACITY(10) parameter data.
    pub struct ReadCapacity10Data {
        /// Last LBA (0xFFFFFFFF if it does not fit).
        pub last_lba: U32,
        /// Logical block length in bytes.
        pub block_len: U32,
    }
    size 8
}

/// READ CAPACITY(16) byte 12: protection.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct CapacityProtection {
    /// PROT_EN: protection information enabled.
    pub prot_en: bool,
    /// P_TYPE: protection type.
    #[bits(3)]
    pub p_type: u8,
    /// RC BASIS.
    #[bits(2)]
    pub rc_basis: u8,
    /// Reserved.
    #[bits(2)]
    pub reserved: u8,
}

/// READ CAPACITY(16) byte 13: exponents.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct CapacityExponents {
    /// Logical blocks per physical block exponent.
    #[bits(4)]
    pub lb_per_pb: u8,
    /// P_I_EXPONENT.
    #[bits(4)]
    pub p_i: u8,
}

/// READ CAPACITY(16) bytes 14-15: provisioning flags and the lowest
/// aligned LBA.
#[bitfield(u16, repr = U16, from = U16::new, into = U16::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct CapacityProvisioning {
    /// Lowest aligned LBA.
    #[bits(14)]
    pub lowest_aligned_lba: u16,
    /// LBPRZ: unmapped blocks read as zero.
    pub lbprz: bool,
    /// LBPME: logical block provisioning management enabled.
    pub lbpme: bool,
}

wire_layout! {
    /// READ CAPACITY(16) parameter data.
    pub struct ReadCapacity16Data {
        /// Last LBA.
        pub last_lba: U64,
        /// Logical block length in bytes.
        pub block_len: U32,
        /// P_TYPE, PROT_EN.
        pub protection: CapacityProtection,
        /// Exponents.
        pub exponents: CapacityExponents,
        /// LBPME, LBPRZ, lowest aligned LBA.
        pub provisioning: CapacityProvisioning,
        /// Reserved.
        pub reserved: [u8; 16],
    }
    size 32
}

wire_layout! {
    /// GET LBA STATUS parameter data header.
    pub struct LbaStatusHeader {
        /// Bytes that follow this field.
        pub data_len: U32,
        /// Reserved.
        pub reserved: [u8; 4],
    }
    size 8
}

open_enum! {
    /// GET LBA STATUS provisioning status (descriptor byte 12, bits 3:0).
    pub struct ProvisioningStatus(u8) {
        /// Mapped (or unknown).
        MAPPED = 0,
        /// Deallocated.
        DEALLOCATED = 1,
        /// Anchored.
        ANCHORED = 2,
    }
}

wire_layout! {
    /// GET LBA STATUS descriptor.
    pub struct LbaStatusDescriptor {
        /// First LBA.
        pub lba: U64,
        /// Number of blocks.
        pub blocks: U32,
        /// Provisioning status.
        pub status: ProvisioningStatus,
        /// Reserved.
        pub reserved: [u8; 3],
    }
    size 16
}

wire_layout! {
    /// UNMAP parameter list header.
    pub struct UnmapHeader {
        /// Bytes that follow this field.
        pub data_len: U16,
        /// Bytes of block descriptors.
        pub desc_len: U16,
        /// Reserved.
        pub reserved: [u8; 4],
    }
    size 8
}

wire_layout! {
    /// UNMAP block descriptor.
    pub struct UnmapDescriptor {
        /// First LBA.
        pub lba: U64,
        /// Number of blocks.
        pub blocks: U32,
        /// Reserved.
        pub reserved: [u8; 4],
    }
    size 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_capacity16_provisioning_bits() {
        let d = ReadCapacity16Data {
            exponents: CapacityExponents::new().with_lb_per_pb(3),
            provisioning: CapacityProvisioning::new()
                .with_lbpme(true)
                .with_lbprz(true)
                .with_lowest_aligned_lba(0x1234),
            ..Default::default()
        };
        let b = d.as_bytes();
        assert_eq!(b[13], 3);
        assert_eq!(b[14..16], [0xC0 | 0x12, 0x34]);
        let back = ReadCapacity16Data::read_from_bytes(b).unwrap();
        assert!(back.provisioning.lbpme() && back.provisioning.lbprz());
        assert_eq!(back.provisioning.lowest_aligned_lba(), 0x1234);
    }
}
