//! The capability list, MSI-X (capability, table entry, pending bit
//! array) and the PCI Express capability fields an endpoint needs.

use bitfield_struct::bitfield;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::open_enum::open_enum;

open_enum! {
    /// Capability ID of a conventional capability.
    pub struct CapabilityId(u8) {
        /// Power Management.
        POWER_MANAGEMENT = 0x01,
        /// MSI.
        MSI = 0x05,
        /// Vendor Specific.
        VENDOR_SPECIFIC = 0x09,
        /// PCI Express.
        PCI_EXPRESS = 0x10,
        /// MSI-X.
        MSIX = 0x11,
    }
}

wire_layout! {
    /// The header every capability starts with.
    pub struct CapabilityHeader {
        /// Capability ID.
        pub id: CapabilityId,
        /// Offset of the next capability (0: end of list; bits 1:0
        /// reserved).
        pub next: u8,
    }
    size 2
}

/// The lowest offset a capability may sit at (just past the header).
pub const FIRST_CAPABILITY_OFFSET: u8 = 0x40;

/// Where the next capability of a list is, from a `next` pointer: `None`
/// at the end of the list or for a pointer into the standard header. The
/// low two bits are masked as the spec requires. A caller walking a list
/// must also bound the number of steps (at most 48 capabilities fit).
pub const fn next_capability(next: u8) -> Option<u8> {
    let next = next & !0b11;
    if next < FIRST_CAPABILITY_OFFSET {
        None
    } else {
        Some(next)
    }
}

/// MSI-X Message Control.
#[bitfield(u16, repr = U16, from = U16::new, into = U16::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct MsixMessageControl {
    /// Table Size, 0's based (read-only).
    #[bits(11)]
    pub table_size: u16,
    /// Reserved.
    #[bits(3)]
    pub reserved: u8,
    /// Function Mask: every vector masked.
    pub function_mask: bool,
    /// MSI-X Enable.
    pub enable: bool,
}

/// An MSI-X table or PBA location: BAR indicator and offset.
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct MsixLocation {
    /// BAR Indicator Register (0–5).
    #[bits(3)]
    pub bir: u8,
    /// Offset within the BAR, in 8-byte units (bits 31:3).
    #[bits(29)]
    pub offset_qwords: u32,
}

impl MsixLocation {
    /// The byte offset within the BAR.
    pub const fn offset(self) -> u32 {
        self.into_bits().get() & !0b111
    }
}

wire_layout! {
    /// The MSI-X capability structure (12 bytes).
    pub struct MsixCapability {
        /// Capability header (ID 11h).
        pub header: CapabilityHeader,
        /// Message Control.
        pub message_control: MsixMessageControl,
        /// Table Offset and BIR.
        pub table: MsixLocation,
        /// PBA Offset and BIR.
        pub pba: MsixLocation,
    }
    size 12
}

/// Vector Control of an MSI-X table entry.
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct MsixVectorControl {
    /// Mask Bit (set at reset).
    pub masked: bool,
    /// Reserved.
    #[bits(31)]
    pub reserved: u32,
}

wire_layout! {
    /// One MSI-X table entry (16 bytes).
    pub struct MsixTableEntry {
        /// Message Address, low dword (bits 1:0 zero).
        pub address_low: U32,
        /// Message Upper Address.
        pub address_high: U32,
        /// Message Data.
        pub data: U32,
        /// Vector Control.
        pub vector_control: MsixVectorControl,
    }
    size 16
}

impl MsixTableEntry {
    /// The 64-bit message address.
    pub fn address(&self) -> u64 {
        u64::from(self.address_high.get()) << 32 | u64::from(self.address_low.get())
    }
}

/// The size of an MSI-X table entry, in bytes.
pub const MSIX_TABLE_ENTRY_LEN: u32 = 16;

/// The largest MSI-X table (Table Size is 11 bits, 0's based).
pub const MSIX_MAX_VECTORS: u32 = 2048;

/// Where vector `vector`'s pending bit lives in the PBA: byte offset of
/// its qword and bit within the qword.
pub const fn pba_position(vector: u16) -> (u32, u32) {
    ((vector as u32 / 64) * 8, vector as u32 % 64)
}

/// The size of the PBA for `vectors` vectors, in bytes (whole qwords).
pub const fn pba_len(vectors: u32) -> u32 {
    vectors.div_ceil(64) * 8
}

open_enum! {
    /// Device/Port Type of the PCI Express Capabilities register.
    pub struct DevicePortType(u8) {
        /// PCI Express Endpoint.
        ENDPOINT = 0x0,
        /// Legacy PCI Express Endpoint.
        LEGACY_ENDPOINT = 0x1,
        /// Root Port of a Root Complex.
        ROOT_PORT = 0x4,
        /// Upstream Port of a Switch.
        UPSTREAM_SWITCH_PORT = 0x5,
        /// Downstream Port of a Switch.
        DOWNSTREAM_SWITCH_PORT = 0x6,
        /// PCI Express to PCI/PCI-X Bridge.
        PCIE_TO_PCI_BRIDGE = 0x7,
        /// PCI/PCI-X to PCI Express Bridge.
        PCI_TO_PCIE_BRIDGE = 0x8,
        /// Root Complex Integrated Endpoint.
        RC_INTEGRATED_ENDPOINT = 0x9,
        /// Root Complex Event Collector.
        RC_EVENT_COLLECTOR = 0xA,
    }
}

/// PCI Express Capabilities register.
#[bitfield(u16, repr = U16, from = U16::new, into = U16::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct PcieCapabilities {
    /// Capability Version (2).
    #[bits(4)]
    pub version: u8,
    /// Device/Port Type.
    #[bits(4)]
    pub device_port_type: DevicePortType,
    /// Slot Implemented.
    pub slot_implemented: bool,
    /// Interrupt Message Number.
    #[bits(5)]
    pub interrupt_message_number: u8,
    /// Reserved.
    #[bits(2)]
    pub reserved: u8,
}

/// Device Capabilities register.
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DeviceCapabilities {
    /// Max_Payload_Size Supported: `128 << n` bytes.
    #[bits(3)]
    pub max_payload_size_supported: u8,
    /// Phantom Functions Supported.
    #[bits(2)]
    pub phantom_functions: u8,
    /// Extended Tag Field Supported.
    pub extended_tag: bool,
    /// Endpoint L0s Acceptable Latency.
    #[bits(3)]
    pub l0s_latency: u8,
    /// Endpoint L1 Acceptable Latency.
    #[bits(3)]
    pub l1_latency: u8,
    /// Reserved.
    #[bits(3)]
    pub reserved0: u8,
    /// Role-Based Error Reporting.
    pub role_based_error: bool,
    /// Reserved.
    #[bits(2)]
    pub reserved1: u8,
    /// Captured Slot Power Limit Value.
    pub slot_power_limit_value: u8,
    /// Captured Slot Power Limit Scale.
    #[bits(2)]
    pub slot_power_limit_scale: u8,
    /// Function Level Reset Capability.
    pub flr: bool,
    /// Reserved.
    #[bits(3)]
    pub reserved2: u8,
}

/// Device Control register.
#[bitfield(u16, repr = U16, from = U16::new, into = U16::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DeviceControl {
    /// Correctable Error Reporting Enable.
    pub correctable_error_reporting: bool,
    /// Non-Fatal Error Reporting Enable.
    pub non_fatal_error_reporting: bool,
    /// Fatal Error Reporting Enable.
    pub fatal_error_reporting: bool,
    /// Unsupported Request Reporting Enable.
    pub unsupported_request_reporting: bool,
    /// Enable Relaxed Ordering.
    pub relaxed_ordering: bool,
    /// Max_Payload_Size: `128 << n` bytes.
    #[bits(3)]
    pub max_payload_size: u8,
    /// Extended Tag Field Enable.
    pub extended_tag: bool,
    /// Phantom Functions Enable.
    pub phantom_functions: bool,
    /// Aux Power PM Enable.
    pub aux_power: bool,
    /// Enable No Snoop.
    pub no_snoop: bool,
    /// Max_Read_Request_Size: `128 << n` bytes.
    #[bits(3)]
    pub max_read_request_size: u8,
    /// Initiate Function Level Reset (reads as 0).
    pub initiate_flr: bool,
}

wire_layout! {
    /// The PCI Express capability structure, version 2 (60 bytes). An
    /// endpoint without a slot or root port leaves the slot and root
    /// registers zero.
    pub struct PcieCapability {
        /// Capability header (ID 10h).
        pub header: CapabilityHeader,
        /// PCI Express Capabilities.
        pub capabilities: PcieCapabilities,
        /// Device Capabilities.
        pub device_capabilities: DeviceCapabilities,
        /// Device Control.
        pub device_control: DeviceControl,
        /// Device Status.
        pub device_status: U16,
        /// Link Capabilities.
        pub link_capabilities: U32,
        /// Link Control.
        pub link_control: U16,
        /// Link Status.
        pub link_status: U16,
        /// Slot Capabilities.
        pub slot_capabilities: U32,
        /// Slot Control.
        pub slot_control: U16,
        /// Slot Status.
        pub slot_status: U16,
        /// Root Control.
        pub root_control: U16,
        /// Root Capabilities.
        pub root_capabilities: U16,
        /// Root Status.
        pub root_status: U32,
        /// Device Capabilities 2.
        pub device_capabilities_2: U32,
        /// Device Control 2.
        pub device_control_2: U16,
        /// Device Status 2.
        pub device_status_2: U16,
        /// Link Capabilities 2.
        pub link_capabilities_2: U32,
        /// Link Control 2.
        pub link_control_2: U16,
        /// Link Status 2.
        pub link_status_2: U16,
        /// Slot Capabilities 2.
        pub slot_capabilities_2: U32,
        /// Slot Control 2.
        pub slot_control_2: U16,
        /// Slot Status 2.
        pub slot_status_2: U16,
    }
    size 60
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn capability_list_pointers() {
        assert_eq!(next_capability(0), None);
        assert_eq!(next_capability(0x3C), None);
        assert_eq!(next_capability(0x43), Some(0x40));
        assert_eq!(next_capability(0xFF), Some(0xFC));
    }

    #[test]
    fn msix_layout_and_fields() {
        assert_eq!(offset_of!(MsixCapability, message_control), 2);
        assert_eq!(offset_of!(MsixCapability, table), 4);
        assert_eq!(offset_of!(MsixCapability, pba), 8);
        let mc = MsixMessageControl::from_bits(U16::new(0xC03F));
        assert_eq!(mc.table_size(), 63);
        assert!(mc.enable() && mc.function_mask());
        let loc = MsixLocation::from_bits(U32::new(0x2000 | 4));
        assert_eq!((loc.bir(), loc.offset()), (4, 0x2000));
        assert_eq!(offset_of!(MsixTableEntry, data), 8);
        assert_eq!(offset_of!(MsixTableEntry, vector_control), 12);
        let e = MsixTableEntry {
            address_low: U32::new(0xFEE0_0000),
            address_high: U32::new(1),
            data: U32::new(0x41),
            vector_control: MsixVectorControl::new().with_masked(true),
        };
        assert_eq!(e.address(), 0x1_FEE0_0000);
        assert_eq!(pba_position(0), (0, 0));
        assert_eq!(pba_position(70), (8, 6));
        assert_eq!(pba_len(1), 8);
        assert_eq!(pba_len(65), 16);
        assert_eq!(pba_len(MSIX_MAX_VECTORS), 256);
    }

    #[test]
    fn pcie_capability_offsets_and_bits() {
        assert_eq!(offset_of!(PcieCapability, capabilities), 0x02);
        assert_eq!(offset_of!(PcieCapability, device_capabilities), 0x04);
        assert_eq!(offset_of!(PcieCapability, device_control), 0x08);
        assert_eq!(offset_of!(PcieCapability, link_capabilities), 0x0C);
        assert_eq!(offset_of!(PcieCapability, slot_capabilities), 0x14);
        assert_eq!(offset_of!(PcieCapability, root_status), 0x20);
        assert_eq!(offset_of!(PcieCapability, device_capabilities_2), 0x24);
        assert_eq!(offset_of!(PcieCapability, link_capabilities_2), 0x2C);
        assert_eq!(offset_of!(PcieCapability, slot_status_2), 0x3A);
        let caps = PcieCapabilities::from_bits(U16::new(0x0092));
        assert_eq!(caps.version(), 2);
        assert_eq!(
            caps.device_port_type(),
            DevicePortType::RC_INTEGRATED_ENDPOINT
        );
        let dc = DeviceCapabilities::from_bits(U32::new(1 << 28 | 1 << 5 | 1));
        assert!(dc.flr() && dc.extended_tag());
        assert_eq!(dc.max_payload_size_supported(), 1);
        let ctl = DeviceControl::from_bits(U16::new(0x8000 | 2 << 12 | 1 << 5));
        assert!(ctl.initiate_flr());
        assert_eq!(ctl.max_read_request_size(), 2);
        assert_eq!(ctl.max_payload_size(), 1);
    }
}
