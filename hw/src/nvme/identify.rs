//! Identify data structures: Identify Controller (CNS 01h), Identify
//! Namespace for the NVM command set (CNS 00h) with its LBA formats, and
//! the Namespace Identification Descriptor list (CNS 03h) with a total
//! parser (NVMe Base 2.0 §5.17.2, NVM Command Set 1.0 §4.1.5).
//!
//! The two 4096-byte structures have no `Default` (arrays that long have
//! none); build them with zerocopy's `FromZeros::new_zeroed`.

use bitfield_struct::bitfield;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::open_enum::open_enum;

/// The size of every Identify data structure, in bytes.
pub const IDENTIFY_DATA_LEN: usize = 4096;

wire_layout! {
    /// A power state descriptor (32 bytes) of Identify Controller.
    pub struct PowerStateDescriptor {
        /// Maximum Power, in 0.01 W (or 0.0001 W with MXPS).
        pub mp: U16,
        /// Reserved.
        pub reserved0: u8,
        /// Bit 0 MXPS (max power scale), bit 1 NOPS (non-operational).
        pub flags: u8,
        /// Entry Latency, µs.
        pub enlat: U32,
        /// Exit Latency, µs.
        pub exlat: U32,
        /// Relative Read Throughput.
        pub rrt: u8,
        /// Relative Read Latency.
        pub rrl: u8,
        /// Relative Write Throughput.
        pub rwt: u8,
        /// Relative Write Latency.
        pub rwl: u8,
        /// Idle Power.
        pub idlp: U16,
        /// Idle Power Scale (bits 7:6).
        pub ips: u8,
        /// Reserved.
        pub reserved1: u8,
        /// Active Power.
        pub actp: U16,
        /// Active Power Workload (bits 2:0) and Scale (bits 7:6).
        pub apw_aps: u8,
        /// Reserved.
        pub reserved2: [u8; 9],
    }
    size 32
}

/// Optional Admin Command Support (OACS).
#[bitfield(u16, repr = U16, from = U16::new, into = U16::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Oacs {
    /// Security Send / Receive.
    pub security: bool,
    /// Format NVM.
    pub format: bool,
    /// Firmware Commit / Image Download.
    pub firmware: bool,
    /// Namespace Management.
    pub ns_management: bool,
    /// Device Self-test.
    pub self_test: bool,
    /// Directives.
    pub directives: bool,
    /// NVMe-MI Send / Receive.
    pub nvme_mi: bool,
    /// Virtualization Management.
    pub virtualization: bool,
    /// Doorbell Buffer Config.
    pub doorbell_buffer_config: bool,
    /// Get LBA Status.
    pub get_lba_status: bool,
    /// Command and Feature Lockdown.
    pub lockdown: bool,
    /// Reserved.
    #[bits(5)]
    pub reserved: u8,
}

/// Optional NVM Command Support (ONCS).
#[bitfield(u16, repr = U16, from = U16::new, into = U16::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Oncs {
    /// Compare.
    pub compare: bool,
    /// Write Uncorrectable.
    pub write_uncorrectable: bool,
    /// Dataset Management.
    pub dataset_management: bool,
    /// Write Zeroes.
    pub write_zeroes: bool,
    /// Save field in Set Features and Select field in Get Features.
    pub save_select: bool,
    /// Reservations.
    pub reservations: bool,
    /// Timestamp feature.
    pub timestamp: bool,
    /// Verify.
    pub verify: bool,
    /// Copy.
    pub copy: bool,
    /// Reserved.
    #[bits(7)]
    pub reserved: u8,
}

/// SGL Support (SGLS).
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Sgls {
    /// SGL support: 00b none, 01b without alignment requirement, 10b
    /// with dword alignment and granularity.
    #[bits(2)]
    pub support: u8,
    /// Keyed SGL Data Block descriptor.
    pub keyed: bool,
    /// Reserved.
    #[bits(13)]
    pub reserved0: u16,
    /// SGL Bit Bucket descriptor.
    pub bit_bucket: bool,
    /// Byte aligned contiguous physical buffer of metadata.
    pub byte_aligned_metadata: bool,
    /// An SGL longer than the data transfer is allowed.
    pub longer_than_data: bool,
    /// MPTR may hold an SGL descriptor.
    pub mptr_sgl: bool,
    /// Address field as offset.
    pub address_as_offset: bool,
    /// Transport SGL Data Block descriptor.
    pub transport_data_block: bool,
    /// Reserved.
    #[bits(10)]
    pub reserved1: u16,
}

/// Identify Controller (CNS 01h, 4096 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct IdentifyController {
    /// PCI Vendor ID.
    pub vid: U16,
    /// PCI Subsystem Vendor ID.
    pub ssvid: U16,
    /// Serial Number (ASCII, space padded).
    pub sn: [u8; 20],
    /// Model Number (ASCII, space padded).
    pub mn: [u8; 40],
    /// Firmware Revision (ASCII, space padded).
    pub fr: [u8; 8],
    /// Recommended Arbitration Burst.
    pub rab: u8,
    /// IEEE OUI Identifier (least significant byte first).
    pub ieee: [u8; 3],
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities.
    pub cmic: u8,
    /// Maximum Data Transfer Size: `2 ^ MDTS` units of CAP.MPSMIN (0: no
    /// limit).
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: U16,
    /// Version (VS register format).
    pub ver: U32,
    /// RTD3 Resume Latency, µs.
    pub rtd3r: U32,
    /// RTD3 Entry Latency, µs.
    pub rtd3e: U32,
    /// Optional Asynchronous Events Supported (AEN configuration bits).
    pub oaes: U32,
    /// Controller Attributes.
    pub ctratt: U32,
    /// Read Recovery Levels Supported.
    pub rrls: U16,
    /// Reserved.
    pub reserved0: [u8; 9],
    /// Controller Type: 1 I/O, 2 discovery, 3 administrative.
    pub cntrltype: u8,
    /// FRU Globally Unique Identifier.
    pub fguid: [u8; 16],
    /// Command Retry Delay Times 1–3, in 100 ms units.
    pub crdt: [U16; 3],
    /// Reserved.
    pub reserved1: [u8; 119],
    /// NVM Subsystem Report.
    pub nvmsr: u8,
    /// VPD Write Cycle Information.
    pub vwci: u8,
    /// Management Endpoint Capabilities.
    pub mec: u8,
    /// Optional Admin Command Support.
    pub oacs: Oacs,
    /// Abort Command Limit, 0's based.
    pub acl: u8,
    /// Asynchronous Event Request Limit, 0's based.
    pub aerl: u8,
    /// Firmware Updates.
    pub frmw: u8,
    /// Log Page Attributes.
    pub lpa: u8,
    /// Error Log Page Entries, 0's based.
    pub elpe: u8,
    /// Number of Power States Support, 0's based.
    pub npss: u8,
    /// Admin Vendor Specific Command Configuration.
    pub avscc: u8,
    /// Autonomous Power State Transition Attributes.
    pub apsta: u8,
    /// Warning Composite Temperature Threshold, kelvin.
    pub wctemp: U16,
    /// Critical Composite Temperature Threshold, kelvin.
    pub cctemp: U16,
    /// Maximum Time for Firmware Activation, 100 ms units.
    pub mtfa: U16,
    /// Host Memory Buffer Preferred Size, 4 KiB units.
    pub hmpre: U32,
    /// Host Memory Buffer Minimum Size, 4 KiB units.
    pub hmmin: U32,
    /// Total NVM Capacity, bytes (128-bit).
    pub tnvmcap: [u8; 16],
    /// Unallocated NVM Capacity, bytes (128-bit).
    pub unvmcap: [u8; 16],
    /// Replay Protected Memory Block Support.
    pub rpmbs: U32,
    /// Extended Device Self-test Time, minutes.
    pub edstt: U16,
    /// Device Self-test Options.
    pub dsto: u8,
    /// Firmware Update Granularity, 4 KiB units.
    pub fwug: u8,
    /// Keep Alive Support: granularity in 100 ms units (0: unsupported).
    pub kas: U16,
    /// Host Controlled Thermal Management Attributes.
    pub hctma: U16,
    /// Minimum Thermal Management Temperature.
    pub mntmt: U16,
    /// Maximum Thermal Management Temperature.
    pub mxtmt: U16,
    /// Sanitize Capabilities.
    pub sanicap: U32,
    /// Host Memory Buffer Minimum Descriptor Entry Size.
    pub hmminds: U32,
    /// Host Memory Maximum Descriptors Entries.
    pub hmmaxd: U16,
    /// NVM Set Identifier Maximum.
    pub nsetidmax: U16,
    /// Endurance Group Identifier Maximum.
    pub endgidmax: U16,
    /// ANA Transition Time.
    pub anatt: u8,
    /// Asymmetric Namespace Access Capabilities.
    pub anacap: u8,
    /// ANA Group Identifier Maximum.
    pub anagrpmax: U32,
    /// Number of ANA Group Identifiers.
    pub nanagrpid: U32,
    /// Persistent Event Log Size, 64 KiB units.
    pub pels: U32,
    /// Domain Identifier.
    pub domainid: U16,
    /// Reserved.
    pub reserved2: [u8; 10],
    /// Max Endurance Group Capacity (128-bit).
    pub megcap: [u8; 16],
    /// Reserved.
    pub reserved3: [u8; 128],
    /// Submission Queue Entry Size: bits 3:0 required, 7:4 maximum
    /// (log2 bytes).
    pub sqes: u8,
    /// Completion Queue Entry Size: bits 3:0 required, 7:4 maximum.
    pub cqes: u8,
    /// Maximum Outstanding Commands (fabrics).
    pub maxcmd: U16,
    /// Number of Namespaces: the largest valid NSID.
    pub nn: U32,
    /// Optional NVM Command Support.
    pub oncs: Oncs,
    /// Fused Operation Support (bit 0: compare and write).
    pub fuses: U16,
    /// Format NVM Attributes.
    pub fna: u8,
    /// Volatile Write Cache: bit 0 present, bits 2:1 flush with NSID
    /// FFFFFFFFh behaviour.
    pub vwc: u8,
    /// Atomic Write Unit Normal, blocks 0's based.
    pub awun: U16,
    /// Atomic Write Unit Power Fail, blocks 0's based.
    pub awupf: U16,
    /// I/O Command Set Vendor Specific Command Configuration.
    pub icsvscc: u8,
    /// Namespace Write Protection Capabilities.
    pub nwpc: u8,
    /// Atomic Compare & Write Unit.
    pub acwu: U16,
    /// Copy Descriptor Formats Supported.
    pub cdfs: U16,
    /// SGL Support.
    pub sgls: Sgls,
    /// Maximum Number of Allowed Namespaces.
    pub mnan: U32,
    /// Maximum Domain Namespace Attachments (128-bit).
    pub maxdna: [u8; 16],
    /// Maximum I/O Controller Namespace Attachments.
    pub maxcna: U32,
    /// Reserved.
    pub reserved4: [u8; 204],
    /// NVM Subsystem NVMe Qualified Name (UTF-8, NUL padded).
    pub subnqn: [u8; 256],
    /// Reserved.
    pub reserved5: [u8; 768],
    /// NVMe over Fabrics attributes.
    pub fabrics: [u8; 256],
    /// Power State Descriptors 0–31.
    pub psd: [PowerStateDescriptor; 32],
    /// Vendor Specific.
    pub vendor_specific: [u8; 1024],
}

const _: () = assert!(core::mem::size_of::<IdentifyController>() == IDENTIFY_DATA_LEN);

/// An LBA Format (Identify Namespace LBAF0–LBAF63).
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct LbaFormat {
    /// Metadata Size per LBA, bytes.
    pub ms: u16,
    /// LBA Data Size: `2 ^ LBADS` bytes (0: format not available).
    pub lbads: u8,
    /// Relative Performance (0 best, 3 degraded).
    #[bits(2)]
    pub rp: u8,
    /// Reserved.
    #[bits(6)]
    pub reserved: u8,
}

impl LbaFormat {
    /// The LBA data size in bytes, or `None` if LBADS is below 9 (not
    /// available or invalid) or too large to express.
    pub const fn block_size(self) -> Option<u32> {
        let lbads = self.lbads();
        if lbads < 9 || lbads > 31 {
            None
        } else {
            Some(1 << lbads)
        }
    }
}

/// Formatted LBA Size (FLBAS).
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Flbas {
    /// Format index, bits 3:0.
    #[bits(4)]
    pub index_low: u8,
    /// Metadata transferred at the end of the data LBA (extended LBA).
    pub extended: bool,
    /// Format index, bits 5:4 (when more than 16 formats).
    #[bits(2)]
    pub index_high: u8,
    /// Reserved.
    pub reserved: bool,
}

impl Flbas {
    /// The LBA format index in use (0..=63).
    pub const fn index(self) -> u8 {
        self.index_high() << 4 | self.index_low()
    }
}

/// Reservation Capabilities (RESCAP).
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Rescap {
    /// Persist Through Power Loss.
    pub ptpl: bool,
    /// Write Exclusive.
    pub write_exclusive: bool,
    /// Exclusive Access.
    pub exclusive_access: bool,
    /// Write Exclusive - Registrants Only.
    pub write_exclusive_registrants_only: bool,
    /// Exclusive Access - Registrants Only.
    pub exclusive_access_registrants_only: bool,
    /// Write Exclusive - All Registrants.
    pub write_exclusive_all_registrants: bool,
    /// Exclusive Access - All Registrants.
    pub exclusive_access_all_registrants: bool,
    /// Ignore Existing Key behaviour per NVMe 1.3 and later.
    pub iekey: bool,
}

/// Identify Namespace for the NVM command set (CNS 00h, 4096 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct IdentifyNamespace {
    /// Namespace Size, logical blocks.
    pub nsze: U64,
    /// Namespace Capacity, logical blocks.
    pub ncap: U64,
    /// Namespace Utilization, logical blocks.
    pub nuse: U64,
    /// Namespace Features: bit 0 thin provisioning, bit 1 NAWUN etc.
    /// valid, bit 2 deallocated error, bit 3 UID reuse, bit 4 NPWG etc.
    /// valid.
    pub nsfeat: u8,
    /// Number of LBA Formats, 0's based.
    pub nlbaf: u8,
    /// Formatted LBA Size.
    pub flbas: Flbas,
    /// Metadata Capabilities.
    pub mc: u8,
    /// End-to-end Data Protection Capabilities.
    pub dpc: u8,
    /// End-to-end Data Protection Type Settings.
    pub dps: u8,
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities.
    pub nmic: u8,
    /// Reservation Capabilities.
    pub rescap: Rescap,
    /// Format Progress Indicator.
    pub fpi: u8,
    /// Deallocate Logical Block Features: bits 2:0 what a deallocated
    /// block reads as (001b zeroes), bit 3 Write Zeroes may deallocate.
    pub dlfeat: u8,
    /// Namespace Atomic Write Unit Normal.
    pub nawun: U16,
    /// Namespace Atomic Write Unit Power Fail.
    pub nawupf: U16,
    /// Namespace Atomic Compare & Write Unit.
    pub nacwu: U16,
    /// Namespace Atomic Boundary Size Normal.
    pub nabsn: U16,
    /// Namespace Atomic Boundary Offset.
    pub nabo: U16,
    /// Namespace Atomic Boundary Size Power Fail.
    pub nabspf: U16,
    /// Namespace Optimal I/O Boundary, blocks.
    pub noiob: U16,
    /// NVM Capacity, bytes (128-bit).
    pub nvmcap: [u8; 16],
    /// Namespace Preferred Write Granularity, 0's based.
    pub npwg: U16,
    /// Namespace Preferred Write Alignment, 0's based.
    pub npwa: U16,
    /// Namespace Preferred Deallocate Granularity, 0's based.
    pub npdg: U16,
    /// Namespace Preferred Deallocate Alignment, 0's based.
    pub npda: U16,
    /// Namespace Optimal Write Size, 0's based.
    pub nows: U16,
    /// Maximum Single Source Range Length (Copy).
    pub mssrl: U16,
    /// Maximum Copy Length.
    pub mcl: U32,
    /// Maximum Source Range Count, 0's based.
    pub msrc: u8,
    /// Reserved.
    pub reserved0: u8,
    /// Number of Unique Capability LBA Formats.
    pub nulbaf: u8,
    /// Reserved.
    pub reserved1: [u8; 9],
    /// ANA Group Identifier.
    pub anagrpid: U32,
    /// Reserved.
    pub reserved2: [u8; 3],
    /// Namespace Attributes (bit 0: write protected).
    pub nsattr: u8,
    /// NVM Set Identifier.
    pub nvmsetid: U16,
    /// Endurance Group Identifier.
    pub endgid: U16,
    /// Namespace Globally Unique Identifier.
    pub nguid: [u8; 16],
    /// IEEE Extended Unique Identifier.
    pub eui64: [u8; 8],
    /// LBA Formats 0–63.
    pub lbaf: [LbaFormat; 64],
    /// Reserved.
    pub reserved3: [u8; 3328],
    /// Vendor Specific.
    pub vendor_specific: [u8; 384],
}

const _: () = assert!(core::mem::size_of::<IdentifyNamespace>() == IDENTIFY_DATA_LEN);

impl IdentifyNamespace {
    /// The LBA format in use (FLBAS index), or `None` if the index is
    /// beyond the 64 entries.
    pub fn current_format(&self) -> Option<LbaFormat> {
        self.lbaf.get(usize::from(self.flbas.index())).copied()
    }
}

/// I/O Command Set Independent Identify Namespace (CNS 08h, 4096 bytes):
/// the fields of a namespace that do not depend on its command set.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct IdentifyNamespaceIndependent {
    /// Namespace Features (as in Identify Namespace).
    pub nsfeat: u8,
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities.
    pub nmic: u8,
    /// Reservation Capabilities.
    pub rescap: Rescap,
    /// Format Progress Indicator.
    pub fpi: u8,
    /// ANA Group Identifier.
    pub anagrpid: U32,
    /// Namespace Attributes: bit 0 write protected.
    pub nsattr: u8,
    /// Reserved.
    pub reserved0: u8,
    /// NVM Set Identifier.
    pub nvmsetid: U16,
    /// Endurance Group Identifier.
    pub endgid: U16,
    /// Namespace Status: bit 0 ready.
    pub nstat: u8,
    /// Reserved.
    pub reserved1: [u8; 4081],
}

const _: () = assert!(core::mem::size_of::<IdentifyNamespaceIndependent>() == IDENTIFY_DATA_LEN);

open_enum! {
    /// Namespace Identifier Type (NIDT).
    pub struct NsIdType(u8) {
        /// IEEE Extended Unique Identifier (8 bytes).
        EUI64 = 0x1,
        /// Namespace Globally Unique Identifier (16 bytes).
        NGUID = 0x2,
        /// Namespace UUID (16 bytes).
        UUID = 0x3,
        /// Command Set Identifier (1 byte).
        CSI = 0x4,
    }
}

impl NsIdType {
    /// The length (NIDL) the spec fixes for this type, if known.
    pub const fn expected_len(self) -> Option<u8> {
        match self {
            Self::EUI64 => Some(8),
            Self::NGUID | Self::UUID => Some(16),
            Self::CSI => Some(1),
            _ => None,
        }
    }
}

wire_layout! {
    /// The 4-byte header of a Namespace Identification Descriptor; NIDL
    /// bytes of identifier follow.
    pub struct NsIdDescriptorHeader {
        /// Namespace Identifier Type.
        pub nidt: NsIdType,
        /// Namespace Identifier Length.
        pub nidl: u8,
        /// Reserved.
        pub reserved: [u8; 2],
    }
    size 4
}

/// One Namespace Identification Descriptor from a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsIdDescriptor<'a> {
    /// The identifier type.
    pub nidt: NsIdType,
    /// The identifier bytes (NIDL of them).
    pub nid: &'a [u8],
}

/// Why a Namespace Identification Descriptor list did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsIdListError {
    /// The descriptor at `offset` runs past the end of the list.
    Truncated {
        /// Byte offset of the descriptor in the list.
        offset: usize,
    },
    /// The descriptor at `offset` has a known type with the wrong length.
    BadLength {
        /// Byte offset of the descriptor in the list.
        offset: usize,
        /// Its type.
        nidt: NsIdType,
        /// Its length.
        nidl: u8,
    },
}

impl core::fmt::Display for NsIdListError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated { offset } => write!(
                f,
                "namespace identification descriptor at byte {offset} runs past the end of the list"
            ),
            Self::BadLength { offset, nidt, nidl } => write!(
                f,
                "namespace identification descriptor at byte {offset}: type {nidt:?} has length \
                 {nidl}, expected {:?}",
                nidt.expected_len()
            ),
        }
    }
}

/// Iterates the descriptors of a Namespace Identification Descriptor
/// list. The list ends at a descriptor with NIDT or NIDL zero, or at the
/// end of `bytes`. Total: any bytes yield descriptors and at most one
/// error, after which iteration stops.
pub fn ns_id_descriptors(
    bytes: &[u8],
) -> impl Iterator<Item = Result<NsIdDescriptor<'_>, NsIdListError>> + '_ {
    let mut offset = 0usize;
    let mut done = false;
    core::iter::from_fn(move || {
        if done {
            return None;
        }
        let rest = bytes.get(offset..)?;
        let Ok((header, tail)) = NsIdDescriptorHeader::read_from_prefix(rest) else {
            done = true;
            // Fewer than 4 bytes left: a list ends there only if they are zero.
            return if rest.iter().all(|&b| b == 0) {
                None
            } else {
                Some(Err(NsIdListError::Truncated { offset }))
            };
        };
        if header.nidt.get() == 0 || header.nidl == 0 {
            done = true;
            return None;
        }
        let here = offset;
        if header
            .nidt
            .expected_len()
            .is_some_and(|expected| expected != header.nidl)
        {
            done = true;
            return Some(Err(NsIdListError::BadLength {
                offset: here,
                nidt: header.nidt,
                nidl: header.nidl,
            }));
        }
        let Some(nid) = tail.get(..usize::from(header.nidl)) else {
            done = true;
            return Some(Err(NsIdListError::Truncated { offset: here }));
        };
        offset = here + 4 + nid.len();
        Some(Ok(NsIdDescriptor {
            nidt: header.nidt,
            nid,
        }))
    })
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use zerocopy::FromZeros;

    use super::*;

    #[test]
    fn identify_controller_offsets() {
        assert_eq!(offset_of!(IdentifyController, sn), 4);
        assert_eq!(offset_of!(IdentifyController, mn), 24);
        assert_eq!(offset_of!(IdentifyController, fr), 64);
        assert_eq!(offset_of!(IdentifyController, ieee), 73);
        assert_eq!(offset_of!(IdentifyController, mdts), 77);
        assert_eq!(offset_of!(IdentifyController, cntlid), 78);
        assert_eq!(offset_of!(IdentifyController, ver), 80);
        assert_eq!(offset_of!(IdentifyController, oaes), 92);
        assert_eq!(offset_of!(IdentifyController, cntrltype), 111);
        assert_eq!(offset_of!(IdentifyController, crdt), 128);
        assert_eq!(offset_of!(IdentifyController, oacs), 256);
        assert_eq!(offset_of!(IdentifyController, tnvmcap), 280);
        assert_eq!(offset_of!(IdentifyController, kas), 320);
        assert_eq!(offset_of!(IdentifyController, megcap), 368);
        assert_eq!(offset_of!(IdentifyController, sqes), 512);
        assert_eq!(offset_of!(IdentifyController, nn), 516);
        assert_eq!(offset_of!(IdentifyController, oncs), 520);
        assert_eq!(offset_of!(IdentifyController, vwc), 525);
        assert_eq!(offset_of!(IdentifyController, sgls), 536);
        assert_eq!(offset_of!(IdentifyController, subnqn), 768);
        assert_eq!(offset_of!(IdentifyController, psd), 2048);
        assert_eq!(offset_of!(IdentifyController, vendor_specific), 3072);
    }

    #[test]
    fn identify_namespace_offsets_and_format() {
        assert_eq!(offset_of!(IdentifyNamespace, nsfeat), 24);
        assert_eq!(offset_of!(IdentifyNamespace, flbas), 26);
        assert_eq!(offset_of!(IdentifyNamespace, rescap), 31);
        assert_eq!(offset_of!(IdentifyNamespace, dlfeat), 33);
        assert_eq!(offset_of!(IdentifyNamespace, noiob), 46);
        assert_eq!(offset_of!(IdentifyNamespace, npwg), 64);
        assert_eq!(offset_of!(IdentifyNamespace, anagrpid), 92);
        assert_eq!(offset_of!(IdentifyNamespace, nguid), 104);
        assert_eq!(offset_of!(IdentifyNamespace, eui64), 120);
        assert_eq!(offset_of!(IdentifyNamespace, lbaf), 128);
        assert_eq!(offset_of!(IdentifyNamespace, vendor_specific), 3712);
        assert_eq!(offset_of!(IdentifyNamespaceIndependent, rescap), 2);
        assert_eq!(offset_of!(IdentifyNamespaceIndependent, anagrpid), 4);
        assert_eq!(offset_of!(IdentifyNamespaceIndependent, nsattr), 8);
        assert_eq!(offset_of!(IdentifyNamespaceIndependent, nvmsetid), 10);
        assert_eq!(offset_of!(IdentifyNamespaceIndependent, endgid), 12);
        assert_eq!(offset_of!(IdentifyNamespaceIndependent, nstat), 14);
        let mut ns = IdentifyNamespace::new_zeroed();
        ns.lbaf[0] = LbaFormat::new().with_lbads(9);
        ns.lbaf[17] = LbaFormat::new().with_lbads(12).with_ms(8);
        ns.flbas = Flbas::new().with_index_low(1).with_index_high(1);
        assert_eq!(ns.flbas.index(), 17);
        assert_eq!(
            ns.current_format().and_then(LbaFormat::block_size),
            Some(4096)
        );
        assert_eq!(
            LbaFormat::from_bits(U32::new(0x0009_0000)).block_size(),
            Some(512)
        );
        assert_eq!(LbaFormat::new().block_size(), None);
        assert_eq!(LbaFormat::new().with_lbads(200).block_size(), None);
        assert!(Rescap::from_bits(0x80).iekey());
    }

    #[test]
    fn capability_bits() {
        assert!(Oacs::from_bits(U16::new(1 << 8)).doorbell_buffer_config());
        let oncs = Oncs::from_bits(U16::new(0b1010_1101));
        assert!(oncs.compare());
        assert!(oncs.dataset_management() && oncs.write_zeroes() && oncs.reservations());
        assert!(oncs.verify());
        let sgls = Sgls::from_bits(U32::new(1 | 1 << 16));
        assert_eq!(sgls.support(), 1);
        assert!(sgls.bit_bucket());
    }

    #[test]
    fn ns_descriptor_list() {
        let mut list = [0u8; 64];
        list[0] = 3; // UUID
        list[1] = 16;
        list[4..20].fill(0xAB);
        list[20] = 4; // CSI
        list[21] = 1;
        list[24] = 0;
        let mut it = ns_id_descriptors(&list);
        let uuid = it.next().unwrap().unwrap();
        assert_eq!(uuid.nidt, NsIdType::UUID);
        assert_eq!(uuid.nid, &[0xAB; 16]);
        let csi = it.next().unwrap().unwrap();
        assert_eq!((csi.nidt, csi.nid), (NsIdType::CSI, &[0u8][..]));
        assert_eq!(it.next(), None);

        drop(it);
        // A known type with the wrong length, and a truncated descriptor.
        list[21] = 2;
        assert_eq!(
            ns_id_descriptors(&list).nth(1),
            Some(Err(NsIdListError::BadLength {
                offset: 20,
                nidt: NsIdType::CSI,
                nidl: 2
            }))
        );
        assert_eq!(
            ns_id_descriptors(&list[..10]).next(),
            Some(Err(NsIdListError::Truncated { offset: 0 }))
        );
        assert_eq!(ns_id_descriptors(&[]).next(), None);
    }

    #[test]
    fn ns_descriptor_parsing_is_total() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..5_000 {
            let mut bytes = [0u8; 96];
            for b in bytes.iter_mut() {
                *b = if rng.bool() { rng.u8(..5) } else { rng.u8(..) };
            }
            let len = rng.usize(..=96);
            let mut errors = 0;
            for item in ns_id_descriptors(&bytes[..len]) {
                errors += usize::from(item.is_err());
            }
            assert!(errors <= 1);
        }
    }
}
