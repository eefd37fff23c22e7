//! INQUIRY: the CDB, standard INQUIRY data, and the vital product data
//! (VPD) pages parastor reports (SPC-5, SBC-4, and two Windows pages).

use bitfield_struct::bitfield;
use zerocopy::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::codes::{Control, ScsiOp};
use super::pr::ProtocolId;
use crate::guid::Guid;
use crate::open_enum::open_enum;

/// INQUIRY byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct InquiryCdbFlags {
    /// EVPD: return the VPD page named in the CDB.
    pub evpd: bool,
    /// CMDDT (obsolete; refused).
    pub cmddt: bool,
    /// Reserved.
    #[bits(6)]
    pub reserved: u8,
}

wire_layout! {
    /// INQUIRY.
    pub struct InquiryCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// EVPD, CMDDT.
        pub flags: InquiryCdbFlags,
        /// VPD page code.
        pub page: VpdPage,
        /// Allocation length.
        pub alloc_len: U16,
        /// Control.
        pub control: Control,
    }
    size 6
}

open_enum! {
    /// Peripheral device types (SPC-5 table 141), a 5-bit field.
    pub struct PeripheralDeviceType(u8) {
        /// Direct-access block device (a disk).
        DIRECT_ACCESS = 0x00,
        /// CD/DVD device (MMC).
        CDROM = 0x05,
        /// Unknown or no device type.
        UNKNOWN = 0x1F,
    }
}

open_enum! {
    /// Peripheral qualifiers (SPC-5 6.7.2), a 3-bit field.
    pub struct PeripheralQualifier(u8) {
        /// A device of the type is connected to this logical unit.
        CONNECTED = 0,
        /// The logical unit supports the type but no device is connected.
        NOT_CONNECTED = 1,
        /// No logical unit here.
        NOT_SUPPORTED = 3,
    }
}

/// Byte 0 of INQUIRY data and of every VPD page.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Peripheral {
    /// Peripheral device type.
    #[bits(5)]
    pub device_type: PeripheralDeviceType,
    /// Peripheral qualifier.
    #[bits(3)]
    pub qualifier: PeripheralQualifier,
}

/// Standard INQUIRY data byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct InquiryFlags1 {
    /// Reserved.
    #[bits(6)]
    pub reserved: u8,
    /// LU_CONG: logical unit conglomerate.
    pub lu_cong: bool,
    /// RMB: removable medium.
    pub rmb: bool,
}

/// Standard INQUIRY data byte 3.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct InquiryFlags3 {
    /// Response data format (2).
    #[bits(4)]
    pub response_data_format: u8,
    /// HISUP: hierarchical LUN addressing supported.
    pub hisup: bool,
    /// NORMACA: NACA supported.
    pub normaca: bool,
    /// Obsolete.
    #[bits(2)]
    pub obsolete: u8,
}

/// Standard INQUIRY data byte 5.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct InquiryFlags5 {
    /// PROTECT: protection information supported.
    pub protect: bool,
    /// Reserved.
    #[bits(2)]
    pub reserved: u8,
    /// 3PC: third-party copy supported.
    pub third_party_copy: bool,
    /// TPGS: target port group support.
    #[bits(2)]
    pub tpgs: u8,
    /// ACC: access controls coordinator.
    pub acc: bool,
    /// SCCS: embedded storage array controller.
    pub sccs: bool,
}

/// Standard INQUIRY data byte 6.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct InquiryFlags6 {
    /// Obsolete.
    #[bits(4)]
    pub obsolete: u8,
    /// MULTIP: multiple target ports.
    pub multip: bool,
    /// Vendor specific.
    pub vs: bool,
    /// ENCSERV: embedded enclosure services.
    pub encserv: bool,
    /// Obsolete.
    pub obsolete2: bool,
}

/// Standard INQUIRY data byte 7.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct InquiryFlags7 {
    /// Vendor specific.
    pub vs: bool,
    /// CMDQUE: command queuing supported.
    pub cmdque: bool,
    /// Obsolete.
    #[bits(6)]
    pub obsolete: u8,
}

wire_layout! {
    /// Standard INQUIRY data (the first 36 bytes).
    pub struct InquiryData {
        /// Peripheral qualifier and device type.
        pub peripheral: Peripheral,
        /// RMB.
        pub flags1: InquiryFlags1,
        /// Version (5 = SPC-3, 6 = SPC-4, 7 = SPC-5).
        pub version: u8,
        /// NORMACA, HISUP, response data format.
        pub flags3: InquiryFlags3,
        /// Additional length (n - 4).
        pub additional_len: u8,
        /// SCCS, ACC, TPGS, 3PC, PROTECT.
        pub flags5: InquiryFlags5,
        /// ENCSERV, MULTIP.
        pub flags6: InquiryFlags6,
        /// CMDQUE.
        pub flags7: InquiryFlags7,
        /// T10 vendor identification.
        pub vendor: [u8; 8],
        /// Product identification.
        pub product: [u8; 16],
        /// Product revision level.
        pub revision: [u8; 4],
    }
    size 36
}

open_enum! {
    /// Version descriptors (SPC-5 table 149): the standards a device
    /// claims conformance to, in standard INQUIRY data bytes 58..74.
    pub struct VersionDescriptor(be u16) {
        /// SAM-5 (no version claimed).
        SAM_5 = 0x00A0,
        /// SPC-4 (no version claimed).
        SPC_4 = 0x0460,
        /// SBC-3 (no version claimed): the descriptor initiators look for
        /// before relying on SBC-3 features (libiscsi checks for it before
        /// it accepts a 60-byte block limits page).
        SBC_3 = 0x04C0,
        /// MMC-6 (no version claimed).
        MMC_6 = 0x04E0,
    }
}

wire_layout! {
    /// Standard INQUIRY data bytes 36..74 (SPC-5 6.7.2): what follows the
    /// first 36 bytes ([`InquiryData`]) when a device reports version
    /// descriptors; the additional length then covers them.
    pub struct InquiryVersionData {
        /// Vendor specific (bytes 36..56).
        pub vendor_specific: [u8; 20],
        /// CLOCKING, QAS, IUS (parallel SCSI only): zero.
        pub parallel: u8,
        /// Reserved.
        pub reserved: u8,
        /// Version descriptors, unused entries zero.
        pub version_descriptors: [VersionDescriptor; 8],
    }
    size 38
}

open_enum! {
    /// VPD page codes.
    pub struct VpdPage(u8) {
        /// Supported VPD pages.
        SUPPORTED_PAGES = 0x00,
        /// Unit serial number.
        UNIT_SERIAL_NUMBER = 0x80,
        /// Device identification.
        DEVICE_IDENTIFICATION = 0x83,
        /// Block limits.
        BLOCK_LIMITS = 0xB0,
        /// Block device characteristics.
        BLOCK_DEVICE_CHARACTERISTICS = 0xB1,
        /// Logical block provisioning.
        LOGICAL_BLOCK_PROVISIONING = 0xB2,
        /// Microsoft paging extent properties.
        MSFT_PAGING_EXTENT_PROPERTIES = 0xCE,
        /// Microsoft virtual device properties.
        MSFT_VIRTUAL_DEVICE_PROPERTIES = 0xCF,
    }
}

wire_layout! {
    /// VPD page header.
    pub struct VpdHeader {
        /// Peripheral qualifier and device type.
        pub peripheral: Peripheral,
        /// Page code.
        pub page: VpdPage,
        /// Page length (bytes after this header).
        pub len: U16,
    }
    size 4
}

open_enum! {
    /// Designator code sets (SPC-5 table 491), a 4-bit field.
    pub struct CodeSet(u8) {
        /// Binary.
        BINARY = 1,
        /// ASCII printable characters.
        ASCII = 2,
        /// UTF-8.
        UTF8 = 3,
    }
}

open_enum! {
    /// Designator types (SPC-5 table 493), a 4-bit field.
    pub struct DesignatorType(u8) {
        /// Vendor specific.
        VENDOR_SPECIFIC = 0x0,
        /// T10 vendor ID based.
        T10_VENDOR_ID = 0x1,
        /// EUI-64 based.
        EUI64 = 0x2,
        /// NAA.
        NAA = 0x3,
        /// Relative target port identifier.
        RELATIVE_TARGET_PORT = 0x4,
        /// Target port group.
        TARGET_PORT_GROUP = 0x5,
        /// Logical unit group.
        LOGICAL_UNIT_GROUP = 0x6,
        /// MD5 logical unit identifier.
        MD5 = 0x7,
        /// SCSI name string.
        SCSI_NAME = 0x8,
        /// Protocol specific port identifier.
        PROTOCOL_SPECIFIC = 0x9,
        /// UUID.
        UUID = 0xA,
    }
}

open_enum! {
    /// Designator associations (SPC-5 table 492), a 2-bit field.
    pub struct Association(u8) {
        /// The addressed logical unit.
        LOGICAL_UNIT = 0,
        /// The target port.
        TARGET_PORT = 1,
        /// The SCSI target device.
        TARGET_DEVICE = 2,
    }
}

/// Designation descriptor byte 0.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DesignatorCodeSet {
    /// Code set of the designator.
    #[bits(4)]
    pub code_set: CodeSet,
    /// Protocol identifier (meaningful with PIV).
    #[bits(4)]
    pub protocol: ProtocolId,
}

/// Designation descriptor byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DesignatorKind {
    /// Designator type.
    #[bits(4)]
    pub designator_type: DesignatorType,
    /// Association.
    #[bits(2)]
    pub association: Association,
    /// Reserved.
    pub reserved: bool,
    /// PIV: the protocol identifier is valid.
    pub piv: bool,
}

wire_layout! {
    /// Designation descriptor header (VPD 0x83).
    pub struct DesignatorHeader {
        /// Protocol identifier and code set.
        pub code_set: DesignatorCodeSet,
        /// PIV, association, designator type.
        pub kind: DesignatorKind,
        /// Reserved.
        pub reserved: u8,
        /// Designator length.
        pub len: u8,
    }
    size 4
}

/// Block limits byte 4.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct BlockLimitsFlags {
    /// WSNZ: a WRITE SAME of zero blocks is refused.
    pub wsnz: bool,
    /// Reserved.
    #[bits(7)]
    pub reserved: u8,
}

/// Block limits bytes 32-35: unmap granularity alignment.
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct UnmapAlignment {
    /// Unmap granularity alignment.
    #[bits(31)]
    pub alignment: u32,
    /// UGAVALID: the alignment is valid.
    pub ugavalid: bool,
}

wire_layout! {
    /// Block limits VPD page (0xB0), including its header.
    pub struct BlockLimitsPage {
        /// Page header.
        pub header: VpdHeader,
        /// WSNZ.
        pub flags: BlockLimitsFlags,
        /// Maximum COMPARE AND WRITE length (blocks).
        pub max_compare_write: u8,
        /// Optimal transfer length granularity.
        pub opt_granularity: U16,
        /// Maximum transfer length (blocks).
        pub max_transfer: U32,
        /// Optimal transfer length (blocks).
        pub opt_transfer: U32,
        /// Maximum prefetch length.
        pub max_prefetch: U32,
        /// Maximum unmap LBA count.
        pub max_unmap_lba_count: U32,
        /// Maximum unmap block descriptor count.
        pub max_unmap_descriptors: U32,
        /// Optimal unmap granularity.
        pub opt_unmap_granularity: U32,
        /// UGAVALID, unmap granularity alignment.
        pub unmap_alignment: UnmapAlignment,
        /// Maximum WRITE SAME length (blocks).
        pub max_write_same: U64,
        /// Maximum atomic transfer length.
        pub max_atomic: U32,
        /// Atomic alignment.
        pub atomic_alignment: U32,
        /// Atomic transfer length granularity.
        pub atomic_granularity: U32,
        /// Maximum atomic transfer length with atomic boundary.
        pub max_atomic_boundary: U32,
        /// Maximum atomic boundary size.
        pub max_boundary: U32,
    }
    size 64
}

/// Block device characteristics byte 7.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct FormFactor {
    /// Nominal form factor.
    #[bits(4)]
    pub nominal: u8,
    /// WACEREQ.
    #[bits(2)]
    pub wacereq: u8,
    /// WABEREQ.
    #[bits(2)]
    pub wabereq: u8,
}

/// Block device characteristics byte 8.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct BlockCharacteristicsFlags {
    /// VBULS: verify byte check unmapped LBA supported.
    pub vbuls: bool,
    /// FUAB: FUA behaviour.
    pub fuab: bool,
    /// Reserved.
    #[bits(6)]
    pub reserved: u8,
}

/// Block device characteristics VPD page (0xB1), including its header.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct BlockCharacteristicsPage {
    /// Page header.
    pub header: VpdHeader,
    /// Medium rotation rate (1 = non-rotating).
    pub rotation_rate: U16,
    /// Product type.
    pub product_type: u8,
    /// WABEREQ, WACEREQ, nominal form factor.
    pub form_factor: FormFactor,
    /// FUAB, VBULS.
    pub flags: BlockCharacteristicsFlags,
    /// Reserved.
    pub reserved: [u8; 55],
}

const _: () = assert!(size_of::<BlockCharacteristicsPage>() == 64);

impl Default for BlockCharacteristicsPage {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
    }
}

open_enum! {
    /// Provisioning types (VPD 0xB2 byte 6, bits 2:0).
    pub struct ProvisioningType(u8) {
        /// Fully provisioned.
        FULL = 0,
        /// Resource provisioned.
        RESOURCE = 1,
        /// Thin provisioned.
        THIN = 2,
    }
}

/// Logical block provisioning byte 5.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ProvisioningFlags {
    /// DP: a provisioning group descriptor follows.
    pub dp: bool,
    /// ANC_SUP: anchored LBAs supported.
    pub anc_sup: bool,
    /// LBPRZ: what an unmapped block reads as (0: unspecified, 1: zeros).
    #[bits(3)]
    pub lbprz: u8,
    /// LBPWS10: WRITE SAME(10) with UNMAP supported.
    pub lbpws10: bool,
    /// LBPWS: WRITE SAME(16) with UNMAP supported.
    pub lbpws: bool,
    /// LBPU: UNMAP supported.
    pub lbpu: bool,
}

/// Logical block provisioning byte 6.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ProvisioningTypeByte {
    /// Provisioning type.
    #[bits(3)]
    pub provisioning_type: ProvisioningType,
    /// Minimum percentage.
    #[bits(5)]
    pub minimum_percentage: u8,
}

wire_layout! {
    /// Logical block provisioning VPD page (0xB2), including its header.
    pub struct ProvisioningPage {
        /// Page header.
        pub header: VpdHeader,
        /// Threshold exponent.
        pub threshold_exponent: u8,
        /// LBPU, LBPWS, LBPWS10, LBPRZ, ANC_SUP, DP.
        pub flags: ProvisioningFlags,
        /// Minimum percentage, provisioning type.
        pub provisioning_type: ProvisioningTypeByte,
        /// Threshold percentage.
        pub threshold_percentage: u8,
    }
    size 8
}

/// Version of the Microsoft VPD pages 0xCE and 0xCF that parastor reports:
/// 1, the version Hyper-V keeps so that older Windows guests accept them.
pub const MSFT_PAGE_VERSION: u8 = 1;

/// Microsoft paging extent properties byte 5.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct MsftPagingExtentFlags {
    /// MODE SELECT extension supported.
    pub mode_select_extension: bool,
    /// Reserved.
    #[bits(7)]
    pub reserved: u8,
}

wire_layout! {
    /// Microsoft paging extent properties VPD page (0xCE), including its
    /// header. A Windows-defined page (Hyper-V virtual disks report it); the
    /// layout is Windows' `VPD_MSFT_PAGING_EXTENT_PROPERTIES`.
    pub struct MsftPagingExtentPage {
        /// Page header (page length 4).
        pub header: VpdHeader,
        /// Page version ([`MSFT_PAGE_VERSION`]).
        pub version: u8,
        /// MODE SELECT extension.
        pub flags: MsftPagingExtentFlags,
        /// Reserved.
        pub reserved: [u8; 2],
    }
    size 8
}

/// Microsoft virtual device properties byte 5.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct MsftVirtualDeviceFlags {
    /// LBPRZ.
    pub lbprz: bool,
    /// DisableIoRetries (version 2).
    pub disable_io_retries: bool,
    /// Spaces (version 2).
    pub spaces: bool,
    /// Reserved.
    #[bits(5)]
    pub reserved: u8,
}

wire_layout! {
    /// Microsoft virtual device properties VPD page (0xCF), including its
    /// header: tells a Windows guest the disk is virtual (the signature
    /// identifies the page's format).
    pub struct MsftVirtualDevicePage {
        /// Page header (page length 20).
        pub header: VpdHeader,
        /// Page version ([`MSFT_PAGE_VERSION`]).
        pub version: u8,
        /// LBPRZ, DisableIoRetries, Spaces.
        pub flags: MsftVirtualDeviceFlags,
        /// Reserved.
        pub reserved: [u8; 2],
        /// [`MSFT_VIRTUAL_DEVICE_SIGNATURE`].
        pub signature: Guid,
    }
    size 24
}

/// The signature of [`MsftVirtualDevicePage`],
/// 89a98f15-c928-4d8b-94cd-ef51faa99d33 (in the page in Windows `GUID`
/// byte order, as [`Guid`] lays it out).
pub const MSFT_VIRTUAL_DEVICE_SIGNATURE: Guid = Guid::new(
    0x89a9_8f15,
    0xc928,
    0x4d8b,
    [0x94, 0xcd, 0xef, 0x51, 0xfa, 0xa9, 0x9d, 0x33],
);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn msft_signature_is_the_guid_in_windows_order() {
        // data1, data2, data3 stored little-endian, data4 as written.
        let want = [
            0x15, 0x8f, 0xa9, 0x89, 0x28, 0xc9, 0x8b, 0x4d, 0x94, 0xcd, 0xef, 0x51, 0xfa, 0xa9,
            0x9d, 0x33,
        ];
        assert_eq!(MSFT_VIRTUAL_DEVICE_SIGNATURE.as_bytes(), &want);
        assert_eq!(
            MSFT_VIRTUAL_DEVICE_SIGNATURE.to_string(),
            "89a98f15-c928-4d8b-94cd-ef51faa99d33"
        );
        let page = MsftVirtualDevicePage {
            signature: MSFT_VIRTUAL_DEVICE_SIGNATURE,
            ..Default::default()
        };
        assert_eq!(&page.as_bytes()[8..], &want);
    }

    #[test]
    fn inquiry_flag_bytes() {
        let d = InquiryData {
            peripheral: Peripheral::new()
                .with_device_type(PeripheralDeviceType::UNKNOWN)
                .with_qualifier(PeripheralQualifier::NOT_SUPPORTED),
            flags1: InquiryFlags1::new().with_rmb(true),
            flags3: InquiryFlags3::new()
                .with_hisup(true)
                .with_response_data_format(2),
            flags7: InquiryFlags7::new().with_cmdque(true),
            ..Default::default()
        };
        let b = d.as_bytes();
        assert_eq!((b[0], b[1], b[3], b[7]), (0x7F, 0x80, 0x12, 0x02));
    }

    #[test]
    fn designator_header_bits() {
        let h = DesignatorHeader {
            code_set: DesignatorCodeSet::new().with_code_set(CodeSet::ASCII),
            kind: DesignatorKind::new()
                .with_designator_type(DesignatorType::T10_VENDOR_ID)
                .with_association(Association::TARGET_DEVICE)
                .with_piv(true),
            reserved: 0,
            len: 24,
        };
        assert_eq!(h.as_bytes(), &[0x02, 0xA1, 0, 24]);
        let back = DesignatorHeader::read_from_bytes(&[0x61, 0x93, 0, 8]).unwrap();
        assert_eq!(back.code_set.code_set(), CodeSet::BINARY);
        assert_eq!(back.code_set.protocol(), ProtocolId::new(6));
        assert_eq!(back.kind.designator_type(), DesignatorType::NAA);
        assert_eq!(back.kind.association(), Association::TARGET_PORT);
        assert!(back.kind.piv());
    }

    #[test]
    fn provisioning_and_alignment_bits() {
        let p = ProvisioningPage {
            flags: ProvisioningFlags::new()
                .with_lbpu(true)
                .with_lbpws(true)
                .with_lbpws10(true)
                .with_lbprz(1),
            provisioning_type: ProvisioningTypeByte::new()
                .with_provisioning_type(ProvisioningType::THIN),
            ..Default::default()
        };
        assert_eq!(p.as_bytes()[5..7], [0xE4, 0x02]);
        let l = BlockLimitsPage {
            unmap_alignment: UnmapAlignment::new().with_ugavalid(true),
            ..Default::default()
        };
        assert_eq!(l.as_bytes()[32..36], [0x80, 0, 0, 0]);
    }
}
