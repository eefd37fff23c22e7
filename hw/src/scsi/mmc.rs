//! MMC-6 (multimedia commands: CD/DVD drives): the CDBs a read-only DVD
//! drive runs besides the SPC / SBC ones, decoded into an [`MmcCommand`]
//! by [`parse_mmc_cdb`]; event, feature and profile codes; and the
//! response layouts.
//!
//! The MMC operation codes are [`ScsiOp`] constants; the MMC additional
//! sense codes are [`AdditionalSense`](super::AdditionalSense) constants;
//! the MMC mode pages are [`ModePage`](super::ModePage) constants.

use bitfield_struct::bitfield;
use zerocopy::big_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::codes::{Control, ScsiOp};
use super::command::CdbError;
use crate::open_enum::open_enum;

/// The logical block size of CD/DVD data (MMC-6 4.1.3): 2048 bytes.
pub const BLOCK_SIZE: u32 = 2048;

// ---------------------------------------------------------------------------
// Codes
// ---------------------------------------------------------------------------

open_enum! {
    /// READ TOC/PMA/ATIP response formats, a 4-bit field.
    pub struct TocFormat(u8) {
        /// Formatted TOC.
        TOC = 0,
        /// Multi-session information.
        SESSION_INFO = 1,
        /// Raw TOC.
        FULL_TOC = 2,
        /// PMA.
        PMA = 3,
        /// ATIP.
        ATIP = 4,
        /// CD-TEXT.
        CD_TEXT = 5,
    }
}

open_enum! {
    /// GET CONFIGURATION request types (RT), a 2-bit field.
    pub struct ConfigurationRt(u8) {
        /// Every feature from the starting one on.
        ALL = 0,
        /// Every current feature from the starting one on.
        CURRENT = 1,
        /// The starting feature only.
        ONE = 2,
    }
}

open_enum! {
    /// GET EVENT STATUS NOTIFICATION notification classes, a 3-bit field.
    pub struct NotificationClass(u8) {
        /// No requested event class is supported.
        NONE = 0,
        /// Operational change.
        OPERATIONAL_CHANGE = 1,
        /// Power management.
        POWER_MANAGEMENT = 2,
        /// External request.
        EXTERNAL_REQUEST = 3,
        /// Media.
        MEDIA = 4,
        /// Multiple hosts.
        MULTI_HOST = 5,
        /// Device busy.
        DEVICE_BUSY = 6,
    }
}

open_enum! {
    /// Media class event codes, a 4-bit field.
    pub struct MediaEventCode(u8) {
        /// No change.
        NO_CHANGE = 0,
        /// Eject request (the user pressed the button).
        EJECT_REQUEST = 1,
        /// New media.
        NEW_MEDIA = 2,
        /// Media removal.
        MEDIA_REMOVAL = 3,
        /// Media changed.
        MEDIA_CHANGED = 4,
        /// Background format completed.
        BG_FORMAT_COMPLETED = 5,
        /// Background format restarted.
        BG_FORMAT_RESTARTED = 6,
    }
}

open_enum! {
    /// READ DISC INFORMATION data types, a 3-bit field.
    pub struct DiscInformationType(u8) {
        /// Standard disc information.
        STANDARD = 0,
        /// Track resources.
        TRACK_RESOURCES = 1,
        /// POW resources.
        POW_RESOURCES = 2,
    }
}

open_enum! {
    /// READ TRACK INFORMATION address / number types, a 2-bit field.
    pub struct TrackAddressType(u8) {
        /// The number is an LBA; the track that contains it.
        LBA = 0,
        /// The number is a track number.
        TRACK = 1,
        /// The number is a session number.
        SESSION = 2,
    }
}

open_enum! {
    /// GET PERFORMANCE types (byte 10).
    pub struct PerformanceType(u8) {
        /// Performance data.
        PERFORMANCE = 0x00,
        /// Unusable area data.
        UNUSABLE_AREA = 0x01,
        /// Defect status data.
        DEFECT_STATUS = 0x02,
        /// Write speed descriptors.
        WRITE_SPEED = 0x03,
        /// Defective block information.
        DBI = 0x04,
        /// DBI cache zone.
        DBI_CACHE_ZONE = 0x05,
    }
}

open_enum! {
    /// READ DISC STRUCTURE media types, a 4-bit field.
    pub struct DiscMediaType(u8) {
        /// DVD and HD DVD.
        DVD = 0,
        /// BD.
        BD = 1,
    }
}

open_enum! {
    /// READ DISC STRUCTURE formats for DVD media (byte 7).
    pub struct DiscStructureFormat(u8) {
        /// Physical format information.
        PHYSICAL = 0x00,
        /// Copyright information.
        COPYRIGHT = 0x01,
        /// Disc key.
        DISC_KEY = 0x02,
        /// Burst cutting area.
        BCA = 0x03,
        /// Disc manufacturing information.
        MANUFACTURER = 0x04,
        /// The list of structures the drive can return.
        LIST = 0xFF,
    }
}

open_enum! {
    /// SET STREAMING types (byte 8).
    pub struct StreamingType(u8) {
        /// A performance descriptor follows.
        PERFORMANCE = 0x00,
        /// A DBI cache zone descriptor follows.
        DBI_CACHE_ZONE = 0x05,
    }
}

open_enum! {
    /// GET CONFIGURATION feature numbers.
    pub struct FeatureCode(be u16) {
        /// Profile List.
        PROFILE_LIST = 0x0000,
        /// Core.
        CORE = 0x0001,
        /// Morphing.
        MORPHING = 0x0002,
        /// Removable Medium.
        REMOVABLE_MEDIUM = 0x0003,
        /// Random Readable.
        RANDOM_READABLE = 0x0010,
        /// DVD Read.
        DVD_READ = 0x001F,
    }
}

open_enum! {
    /// GET CONFIGURATION profile numbers.
    pub struct Profile(be u16) {
        /// No current profile (no medium).
        NONE = 0x0000,
        /// CD-ROM.
        CD_ROM = 0x0008,
        /// DVD-ROM.
        DVD_ROM = 0x0010,
    }
}

// ---------------------------------------------------------------------------
// CDBs
// ---------------------------------------------------------------------------

/// PREVENT ALLOW MEDIUM REMOVAL byte 4.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct PreventFlags {
    /// Prevent removal.
    pub prevent: bool,
    /// Persistent prevent.
    pub persistent: bool,
    /// Reserved.
    #[bits(6)]
    pub reserved: u8,
}

wire_layout! {
    /// PREVENT ALLOW MEDIUM REMOVAL.
    pub struct PreventAllowCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// Reserved.
        pub reserved: [u8; 3],
        /// Prevent, persistent.
        pub flags: PreventFlags,
        /// Control.
        pub control: Control,
    }
    size 6
}

/// READ TOC/PMA/ATIP byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct TocFlags {
    /// Reserved.
    pub reserved: bool,
    /// MSF: addresses as minute/second/frame.
    pub msf: bool,
    /// Reserved.
    #[bits(6)]
    pub reserved2: u8,
}

/// READ TOC/PMA/ATIP byte 2.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct TocFormatByte {
    /// Response format.
    #[bits(4)]
    pub format: TocFormat,
    /// Reserved.
    #[bits(4)]
    pub reserved: u8,
}

wire_layout! {
    /// READ TOC/PMA/ATIP.
    pub struct ReadTocCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// MSF.
        pub flags: TocFlags,
        /// Format.
        pub format: TocFormatByte,
        /// Reserved.
        pub reserved: [u8; 3],
        /// Track / session number.
        pub track: u8,
        /// Allocation length.
        pub alloc_len: U16,
        /// Control.
        pub control: Control,
    }
    size 10
}

/// GET CONFIGURATION byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ConfigurationFlags {
    /// Request type.
    #[bits(2)]
    pub rt: ConfigurationRt,
    /// Reserved.
    #[bits(6)]
    pub reserved: u8,
}

wire_layout! {
    /// GET CONFIGURATION.
    pub struct GetConfigurationCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// RT.
        pub flags: ConfigurationFlags,
        /// Starting feature number.
        pub start: FeatureCode,
        /// Reserved.
        pub reserved: [u8; 3],
        /// Allocation length.
        pub alloc_len: U16,
        /// Control.
        pub control: Control,
    }
    size 10
}

/// GET EVENT STATUS NOTIFICATION byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct GesnFlags {
    /// POLLED: polled (not asynchronous) operation.
    pub polled: bool,
    /// Reserved.
    #[bits(7)]
    pub reserved: u8,
}

/// A set of notification classes: the request in a GET EVENT STATUS
/// NOTIFICATION CDB and the supported classes in its response.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct EventClasses {
    /// Reserved.
    pub reserved: bool,
    /// Operational change.
    pub operational_change: bool,
    /// Power management.
    pub power_management: bool,
    /// External request.
    pub external_request: bool,
    /// Media.
    pub media: bool,
    /// Multiple hosts.
    pub multi_host: bool,
    /// Device busy.
    pub device_busy: bool,
    /// Reserved.
    pub reserved2: bool,
}

wire_layout! {
    /// GET EVENT STATUS NOTIFICATION.
    pub struct GesnCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// POLLED.
        pub flags: GesnFlags,
        /// Reserved.
        pub reserved: [u8; 2],
        /// Notification class request.
        pub classes: EventClasses,
        /// Reserved.
        pub reserved2: [u8; 2],
        /// Allocation length.
        pub alloc_len: U16,
        /// Control.
        pub control: Control,
    }
    size 10
}

/// READ DISC INFORMATION byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DiscInformationFlags {
    /// Data type.
    #[bits(3)]
    pub data_type: DiscInformationType,
    /// Reserved.
    #[bits(5)]
    pub reserved: u8,
}

wire_layout! {
    /// READ DISC INFORMATION.
    pub struct ReadDiscInformationCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// Data type.
        pub flags: DiscInformationFlags,
        /// Reserved.
        pub reserved: [u8; 5],
        /// Allocation length.
        pub alloc_len: U16,
        /// Control.
        pub control: Control,
    }
    size 10
}

/// READ TRACK INFORMATION byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct TrackInformationFlags {
    /// Address / number type.
    #[bits(2)]
    pub address_type: TrackAddressType,
    /// OPEN: the next open session or track.
    pub open: bool,
    /// Reserved.
    #[bits(5)]
    pub reserved: u8,
}

wire_layout! {
    /// READ TRACK INFORMATION.
    pub struct ReadTrackInformationCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// Address / number type.
        pub flags: TrackInformationFlags,
        /// Logical block address, track or session number.
        pub number: U32,
        /// Reserved.
        pub reserved: u8,
        /// Allocation length.
        pub alloc_len: U16,
        /// Control.
        pub control: Control,
    }
    size 10
}

/// READ BUFFER CAPACITY byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct BufferCapacityFlags {
    /// BLOCK: report in blocks rather than bytes.
    pub block: bool,
    /// Reserved.
    #[bits(7)]
    pub reserved: u8,
}

wire_layout! {
    /// READ BUFFER CAPACITY.
    pub struct ReadBufferCapacityCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// BLOCK.
        pub flags: BufferCapacityFlags,
        /// Reserved.
        pub reserved: [u8; 5],
        /// Allocation length.
        pub alloc_len: U16,
        /// Control.
        pub control: Control,
    }
    size 10
}

/// GET PERFORMANCE byte 1: the data type, with its meaning for type
/// [`PerformanceType::PERFORMANCE`].
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct PerformanceDataType {
    /// Except: 0 nominal performance, 1 entire list of exceptions,
    /// 2 exceptions that may cause performance changes.
    #[bits(2)]
    pub except: u8,
    /// Write (rather than read) performance.
    pub write: bool,
    /// Tolerance.
    #[bits(2)]
    pub tolerance: u8,
    /// Reserved.
    #[bits(3)]
    pub reserved: u8,
}

wire_layout! {
    /// GET PERFORMANCE.
    pub struct GetPerformanceCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// Data type.
        pub data_type: PerformanceDataType,
        /// Starting LBA.
        pub start_lba: U32,
        /// Reserved.
        pub reserved: [u8; 2],
        /// Maximum number of descriptors.
        pub max_descriptors: U16,
        /// Type.
        pub kind: PerformanceType,
        /// Control.
        pub control: Control,
    }
    size 12
}

/// READ DISC STRUCTURE byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DiscStructureMedia {
    /// Media type.
    #[bits(4)]
    pub media_type: DiscMediaType,
    /// Reserved.
    #[bits(4)]
    pub reserved: u8,
}

/// READ DISC STRUCTURE byte 10.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DiscStructureAgid {
    /// Reserved.
    #[bits(6)]
    pub reserved: u8,
    /// Authentication grant id.
    #[bits(2)]
    pub agid: u8,
}

wire_layout! {
    /// READ DISC STRUCTURE (READ DVD STRUCTURE).
    pub struct ReadDiscStructureCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// Media type.
        pub media: DiscStructureMedia,
        /// Address.
        pub address: U32,
        /// Layer number.
        pub layer: u8,
        /// Format code.
        pub format: DiscStructureFormat,
        /// Allocation length.
        pub alloc_len: U16,
        /// AGID.
        pub agid: DiscStructureAgid,
        /// Control.
        pub control: Control,
    }
    size 12
}

wire_layout! {
    /// SET STREAMING.
    pub struct SetStreamingCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// Reserved.
        pub reserved: [u8; 7],
        /// Type of the descriptor that follows.
        pub kind: StreamingType,
        /// Parameter list length.
        pub param_len: U16,
        /// Control.
        pub control: Control,
    }
    size 12
}

wire_layout! {
    /// MECHANISM STATUS.
    pub struct MechanismStatusCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// Reserved.
        pub reserved: [u8; 7],
        /// Allocation length.
        pub alloc_len: U16,
        /// Reserved.
        pub reserved2: u8,
        /// Control.
        pub control: Control,
    }
    size 12
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// A parsed MMC CDB: one of the commands a CD/DVD drive runs besides the
/// SPC / SBC commands [`parse_cdb`](super::parse_cdb) handles.
///
/// Fields are decoded, not judged: MMC orders a drive's checks (a unit
/// attention, then the medium, then the fields), so whether a format, type
/// or number is acceptable is the drive's decision, made when it has
/// checked its state. Codes are open enums, so every value is represented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmcCommand {
    /// PREVENT ALLOW MEDIUM REMOVAL (MMC reads the prevent field, where a
    /// disk takes the command as a no-op).
    PreventAllowMediumRemoval {
        /// Prevent removal.
        prevent: bool,
        /// Persistent prevent.
        persistent: bool,
    },
    /// READ TOC/PMA/ATIP.
    ReadToc {
        /// Addresses as MSF rather than LBA.
        msf: bool,
        /// Response format.
        format: TocFormat,
        /// Track (format 0) or session number.
        track: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// GET CONFIGURATION.
    GetConfiguration {
        /// Request type.
        rt: ConfigurationRt,
        /// Starting feature number.
        start: FeatureCode,
        /// Allocation length.
        alloc_len: u16,
    },
    /// GET EVENT STATUS NOTIFICATION.
    GetEventStatusNotification {
        /// Polled (not asynchronous) operation.
        polled: bool,
        /// Notification classes requested.
        classes: EventClasses,
        /// Allocation length.
        alloc_len: u16,
    },
    /// READ DISC INFORMATION.
    ReadDiscInformation {
        /// Data type.
        data_type: DiscInformationType,
        /// Allocation length.
        alloc_len: u16,
    },
    /// READ TRACK INFORMATION.
    ReadTrackInformation {
        /// What `number` is.
        address_type: TrackAddressType,
        /// LBA, track or session number.
        number: u32,
        /// Allocation length.
        alloc_len: u16,
    },
    /// READ BUFFER CAPACITY.
    ReadBufferCapacity {
        /// Report in blocks.
        block: bool,
        /// Allocation length.
        alloc_len: u16,
    },
    /// GET PERFORMANCE.
    GetPerformance {
        /// Data type.
        data_type: PerformanceDataType,
        /// Starting LBA.
        start_lba: u32,
        /// Maximum number of descriptors.
        max_descriptors: u16,
        /// Type.
        kind: PerformanceType,
    },
    /// READ DISC STRUCTURE.
    ReadDiscStructure {
        /// Media type.
        media_type: DiscMediaType,
        /// Address.
        address: u32,
        /// Layer number.
        layer: u8,
        /// Format code.
        format: DiscStructureFormat,
        /// Allocation length.
        alloc_len: u16,
    },
    /// SET STREAMING.
    SetStreaming {
        /// Descriptor type.
        kind: StreamingType,
        /// Parameter list length.
        param_len: u16,
    },
    /// MECHANISM STATUS.
    MechanismStatus {
        /// Allocation length.
        alloc_len: u16,
    },
}

fn read<T: FromBytes>(cdb: &[u8]) -> Result<T, CdbError> {
    T::read_from_prefix(cdb)
        .map(|(t, _)| t)
        .map_err(|_| CdbError::TooShort)
}

/// Parses an MMC CDB. `cdb` may be longer than the command (transports pad
/// to 16 bytes); never panics.
///
/// An empty or short CDB is [`CdbError::TooShort`]; an operation code
/// that is not one of [`MmcCommand`]'s (an SPC / SBC command, say) is
/// [`CdbError::InvalidOpcode`]. Field values are never refused (see
/// [`MmcCommand`]).
pub fn parse_mmc_cdb(cdb: &[u8]) -> Result<MmcCommand, CdbError> {
    let op = ScsiOp::new(*cdb.first().ok_or(CdbError::TooShort)?);
    Ok(match op {
        ScsiOp::PREVENT_ALLOW_MEDIUM_REMOVAL => {
            let c: PreventAllowCdb = read(cdb)?;
            MmcCommand::PreventAllowMediumRemoval {
                prevent: c.flags.prevent(),
                persistent: c.flags.persistent(),
            }
        }
        ScsiOp::READ_TOC => {
            let c: ReadTocCdb = read(cdb)?;
            MmcCommand::ReadToc {
                msf: c.flags.msf(),
                format: c.format.format(),
                track: c.track,
                alloc_len: c.alloc_len.get(),
            }
        }
        ScsiOp::GET_CONFIGURATION => {
            let c: GetConfigurationCdb = read(cdb)?;
            MmcCommand::GetConfiguration {
                rt: c.flags.rt(),
                start: c.start,
                alloc_len: c.alloc_len.get(),
            }
        }
        ScsiOp::GET_EVENT_STATUS_NOTIFICATION => {
            let c: GesnCdb = read(cdb)?;
            MmcCommand::GetEventStatusNotification {
                polled: c.flags.polled(),
                classes: c.classes,
                alloc_len: c.alloc_len.get(),
            }
        }
        ScsiOp::READ_DISC_INFORMATION => {
            let c: ReadDiscInformationCdb = read(cdb)?;
            MmcCommand::ReadDiscInformation {
                data_type: c.flags.data_type(),
                alloc_len: c.alloc_len.get(),
            }
        }
        ScsiOp::READ_TRACK_INFORMATION => {
            let c: ReadTrackInformationCdb = read(cdb)?;
            MmcCommand::ReadTrackInformation {
                address_type: c.flags.address_type(),
                number: c.number.get(),
                alloc_len: c.alloc_len.get(),
            }
        }
        ScsiOp::READ_BUFFER_CAPACITY => {
            let c: ReadBufferCapacityCdb = read(cdb)?;
            MmcCommand::ReadBufferCapacity {
                block: c.flags.block(),
                alloc_len: c.alloc_len.get(),
            }
        }
        ScsiOp::GET_PERFORMANCE => {
            let c: GetPerformanceCdb = read(cdb)?;
            MmcCommand::GetPerformance {
                data_type: c.data_type,
                start_lba: c.start_lba.get(),
                max_descriptors: c.max_descriptors.get(),
                kind: c.kind,
            }
        }
        ScsiOp::READ_DISC_STRUCTURE => {
            let c: ReadDiscStructureCdb = read(cdb)?;
            MmcCommand::ReadDiscStructure {
                media_type: c.media.media_type(),
                address: c.address.get(),
                layer: c.layer,
                format: c.format,
                alloc_len: c.alloc_len.get(),
            }
        }
        ScsiOp::SET_STREAMING => {
            let c: SetStreamingCdb = read(cdb)?;
            MmcCommand::SetStreaming {
                kind: c.kind,
                param_len: c.param_len.get(),
            }
        }
        ScsiOp::MECHANISM_STATUS => {
            let c: MechanismStatusCdb = read(cdb)?;
            MmcCommand::MechanismStatus {
                alloc_len: c.alloc_len.get(),
            }
        }
        _ => return Err(CdbError::InvalidOpcode),
    })
}

// ---------------------------------------------------------------------------
// Response layouts
// ---------------------------------------------------------------------------

/// GET EVENT STATUS NOTIFICATION response byte 2.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct GesnClass {
    /// The class of the event reported.
    #[bits(3)]
    pub class: NotificationClass,
    /// Reserved.
    #[bits(4)]
    pub reserved: u8,
    /// NEA: no event available (in the requested classes).
    pub nea: bool,
}

wire_layout! {
    /// GET EVENT STATUS NOTIFICATION response header.
    pub struct GesnHeader {
        /// Bytes that follow this field.
        pub event_data_len: U16,
        /// NEA, notification class.
        pub class: GesnClass,
        /// Supported event classes.
        pub supported: EventClasses,
    }
    size 4
}

/// Media event descriptor byte 0.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct MediaEventByte {
    /// Media event code.
    #[bits(4)]
    pub code: MediaEventCode,
    /// Reserved.
    #[bits(4)]
    pub reserved: u8,
}

/// Media event descriptor byte 1: media status.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct MediaStatus {
    /// Door or tray open.
    pub tray_open: bool,
    /// Media present.
    pub media_present: bool,
    /// Reserved.
    #[bits(6)]
    pub reserved: u8,
}

wire_layout! {
    /// Media class event descriptor.
    pub struct MediaEvent {
        /// Media event code.
        pub code: MediaEventByte,
        /// Media present, door/tray open.
        pub status: MediaStatus,
        /// Start slot.
        pub start_slot: u8,
        /// End slot.
        pub end_slot: u8,
    }
    size 4
}

wire_layout! {
    /// GET CONFIGURATION response header.
    pub struct FeatureHeader {
        /// Bytes that follow this field.
        pub data_len: U32,
        /// Reserved.
        pub reserved: U16,
        /// Current profile.
        pub current_profile: Profile,
    }
    size 8
}

/// Feature descriptor byte 2.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct FeatureFlags {
    /// Current: the feature is active.
    pub current: bool,
    /// Persistent: the feature is always current.
    pub persistent: bool,
    /// Version.
    #[bits(4)]
    pub version: u8,
    /// Reserved.
    #[bits(2)]
    pub reserved: u8,
}

wire_layout! {
    /// Feature descriptor header.
    pub struct FeatureDescriptor {
        /// Feature code.
        pub code: FeatureCode,
        /// Version, persistent, current.
        pub flags: FeatureFlags,
        /// Bytes that follow this header.
        pub additional_len: u8,
    }
    size 4
}

wire_layout! {
    /// READ TOC response header.
    pub struct TocHeader {
        /// Bytes that follow this field.
        pub data_len: U16,
        /// First track (format 0) or session (format 1).
        pub first: u8,
        /// Last track (format 0) or session (format 1).
        pub last: u8,
    }
    size 4
}

/// TOC track descriptor byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct AdrControl {
    /// CONTROL: track attributes (4: data track, recorded uninterrupted).
    #[bits(4)]
    pub control: u8,
    /// ADR: the kind of Q sub-channel information (1: current position).
    #[bits(4)]
    pub adr: u8,
}

wire_layout! {
    /// READ TOC track descriptor.
    pub struct TocDescriptor {
        /// Reserved.
        pub reserved: u8,
        /// ADR, CONTROL.
        pub adr_control: AdrControl,
        /// Track number (0xAA: lead-out).
        pub track: u8,
        /// Reserved.
        pub reserved2: u8,
        /// Start address, LBA or MSF (0, M, S, F).
        pub address: [u8; 4],
    }
    size 8
}

/// Disc information byte 2.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DiscStatus {
    /// Disc status (2: finalized).
    #[bits(2)]
    pub disc_status: u8,
    /// State of the last session (3: complete).
    #[bits(2)]
    pub last_session: u8,
    /// Erasable.
    pub erasable: bool,
    /// Disc information data type.
    #[bits(3)]
    pub data_type: DiscInformationType,
}

/// Disc information byte 7.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DiscInformationValid {
    /// Background format status.
    #[bits(2)]
    pub bg_format_status: u8,
    /// Legacy.
    pub legacy: bool,
    /// Reserved.
    pub reserved: bool,
    /// DAC_V: the disc application code is valid.
    pub dac_v: bool,
    /// URU: unrestricted use.
    pub uru: bool,
    /// DBC_V: the disc bar code is valid.
    pub dbc_v: bool,
    /// DID_V: the disc identification is valid.
    pub did_v: bool,
}

wire_layout! {
    /// Standard disc information (READ DISC INFORMATION, type 0).
    pub struct DiscInformation {
        /// Bytes that follow this field.
        pub data_len: U16,
        /// Data type, erasable, last session state, disc status.
        pub status: DiscStatus,
        /// First track on disc.
        pub first_track: u8,
        /// Number of sessions, LSB.
        pub sessions_lsb: u8,
        /// First track in last session, LSB.
        pub first_track_last_session_lsb: u8,
        /// Last track in last session, LSB.
        pub last_track_last_session_lsb: u8,
        /// DID_V, DBC_V, URU, DAC_V, legacy, BG format status.
        pub flags: DiscInformationValid,
        /// Disc type.
        pub disc_type: u8,
        /// Number of sessions, MSB.
        pub sessions_msb: u8,
        /// First track in last session, MSB.
        pub first_track_last_session_msb: u8,
        /// Last track in last session, MSB.
        pub last_track_last_session_msb: u8,
        /// Disc identification.
        pub disc_id: U32,
        /// Last session lead-in start address.
        pub last_lead_in: U32,
        /// Last possible lead-out start address.
        pub last_lead_out: U32,
        /// Disc bar code.
        pub bar_code: [u8; 8],
        /// Disc application code.
        pub application_code: u8,
        /// Number of OPC tables.
        pub opc_tables: u8,
    }
    size 34
}

/// Track information byte 5.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct TrackMode {
    /// Track mode (4: data, recorded uninterrupted).
    #[bits(4)]
    pub mode: u8,
    /// Copy.
    pub copy: bool,
    /// Damage.
    pub damage: bool,
    /// LJRS: layer jump recording status.
    #[bits(2)]
    pub ljrs: u8,
}

/// Track information byte 6.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DataMode {
    /// Data mode (1: mode 1).
    #[bits(4)]
    pub mode: u8,
    /// FP: fixed packet.
    pub fp: bool,
    /// Packet / incremental.
    pub packet: bool,
    /// Blank.
    pub blank: bool,
    /// RT: reserved track.
    pub rt: bool,
}

/// Track information byte 7.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct TrackValid {
    /// NWA_V: the next writable address is valid.
    pub nwa_v: bool,
    /// LRA_V: the last recorded address is valid.
    pub lra_v: bool,
    /// Reserved.
    #[bits(6)]
    pub reserved: u8,
}

wire_layout! {
    /// Track information (READ TRACK INFORMATION).
    pub struct TrackInformation {
        /// Bytes that follow this field.
        pub data_len: U16,
        /// Track number, LSB.
        pub track_lsb: u8,
        /// Session number, LSB.
        pub session_lsb: u8,
        /// Reserved.
        pub reserved: u8,
        /// LJRS, damage, copy, track mode.
        pub track_mode: TrackMode,
        /// RT, blank, packet, FP, data mode.
        pub data_mode: DataMode,
        /// LRA_V, NWA_V.
        pub valid: TrackValid,
        /// Track start address.
        pub start: U32,
        /// Next writable address.
        pub next_writable: U32,
        /// Free blocks.
        pub free_blocks: U32,
        /// Fixed packet size / blocking factor.
        pub packet_size: U32,
        /// Track size.
        pub size: U32,
        /// Last recorded address.
        pub last_recorded: U32,
        /// Track number, MSB.
        pub track_msb: u8,
        /// Session number, MSB.
        pub session_msb: u8,
        /// Reserved.
        pub reserved2: U16,
        /// Read compatibility LBA.
        pub read_compat_lba: U32,
        /// Next layer jump address.
        pub next_layer_jump: U32,
        /// Last layer jump address.
        pub last_layer_jump: U32,
    }
    size 48
}

/// MECHANISM STATUS header byte 0.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ChangerStatus {
    /// Current slot.
    #[bits(5)]
    pub current_slot: u8,
    /// Changer state.
    #[bits(2)]
    pub changer_state: u8,
    /// Fault.
    pub fault: bool,
}

/// MECHANISM STATUS header byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct MechanismState {
    /// Reserved.
    #[bits(4)]
    pub reserved: u8,
    /// Door open.
    pub door_open: bool,
    /// Mechanism state (0: idle).
    #[bits(3)]
    pub state: u8,
}

wire_layout! {
    /// MECHANISM STATUS header.
    pub struct MechanismStatusHeader {
        /// Fault, changer state, current slot.
        pub changer: ChangerStatus,
        /// Mechanism state, door open.
        pub mechanism: MechanismState,
        /// Current LBA (obsolete).
        pub current_lba: [u8; 3],
        /// Number of slots available.
        pub slots: u8,
        /// Length of slot tables.
        pub slot_table_len: U16,
    }
    size 8
}

/// GET PERFORMANCE response header byte 4.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct PerformanceFlags {
    /// Except: the descriptors are exceptions.
    pub except: bool,
    /// Write: the descriptors are write performance.
    pub write: bool,
    /// Reserved.
    #[bits(6)]
    pub reserved: u8,
}

wire_layout! {
    /// GET PERFORMANCE header.
    pub struct PerformanceHeader {
        /// Bytes that follow this field.
        pub data_len: U32,
        /// Write, Except.
        pub flags: PerformanceFlags,
        /// Reserved.
        pub reserved: [u8; 3],
    }
    size 8
}

wire_layout! {
    /// GET PERFORMANCE nominal performance descriptor.
    pub struct PerformanceDescriptor {
        /// Start LBA.
        pub start_lba: U32,
        /// Start performance, kB/s.
        pub start_performance: U32,
        /// End LBA.
        pub end_lba: U32,
        /// End performance, kB/s.
        pub end_performance: U32,
    }
    size 16
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// A CDB of `len` bytes with opcode `op` and `bytes` at their offsets.
    fn cdb(op: ScsiOp, len: usize, bytes: &[(usize, u8)]) -> Vec<u8> {
        let mut c = std::vec![0u8; len];
        c[0] = op.get();
        for &(i, b) in bytes {
            c[i] = b;
        }
        c
    }

    #[test]
    fn prevent_allow_medium_removal() {
        for (byte4, prevent, persistent) in [
            (0, false, false),
            (1, true, false),
            (2, false, true),
            (3, true, true),
            (0xFC, false, false),
        ] {
            let c = cdb(ScsiOp::PREVENT_ALLOW_MEDIUM_REMOVAL, 6, &[(4, byte4)]);
            assert_eq!(
                parse_mmc_cdb(&c),
                Ok(MmcCommand::PreventAllowMediumRemoval {
                    prevent,
                    persistent
                }),
                "{byte4:#x}"
            );
        }
    }

    #[test]
    fn read_toc() {
        let c = cdb(
            ScsiOp::READ_TOC,
            10,
            &[(1, 0x02), (2, 0xF1), (6, 0xAA), (7, 0x01), (8, 0x02)],
        );
        assert_eq!(
            parse_mmc_cdb(&c),
            Ok(MmcCommand::ReadToc {
                msf: true,
                format: TocFormat::SESSION_INFO,
                track: 0xAA,
                alloc_len: 0x102
            })
        );
        // An undefined format is decoded, not refused.
        let c = cdb(ScsiOp::READ_TOC, 10, &[(1, 0xFD), (2, 0x0E)]);
        assert!(matches!(
            parse_mmc_cdb(&c),
            Ok(MmcCommand::ReadToc { msf: false, format, .. }) if format == TocFormat::new(0xE)
        ));
    }

    #[test]
    fn get_configuration() {
        let c = cdb(
            ScsiOp::GET_CONFIGURATION,
            10,
            &[(1, 0x02), (2, 0x00), (3, 0x1F), (7, 0x04), (8, 0x00)],
        );
        assert_eq!(
            parse_mmc_cdb(&c),
            Ok(MmcCommand::GetConfiguration {
                rt: ConfigurationRt::ONE,
                start: FeatureCode::DVD_READ,
                alloc_len: 0x400
            })
        );
        let c = cdb(
            ScsiOp::GET_CONFIGURATION,
            10,
            &[(1, 0xFF), (2, 0x12), (3, 0x34)],
        );
        assert!(matches!(
            parse_mmc_cdb(&c),
            Ok(MmcCommand::GetConfiguration { rt, start, .. })
                if rt == ConfigurationRt::new(3) && start == FeatureCode::new(0x1234)
        ));
    }

    #[test]
    fn get_event_status_notification() {
        let c = cdb(
            ScsiOp::GET_EVENT_STATUS_NOTIFICATION,
            10,
            &[(1, 0x01), (4, 0x10), (8, 8)],
        );
        let Ok(MmcCommand::GetEventStatusNotification {
            polled,
            classes,
            alloc_len,
        }) = parse_mmc_cdb(&c)
        else {
            panic!()
        };
        assert!(polled && classes.media() && !classes.power_management());
        assert_eq!(alloc_len, 8);
        let c = cdb(
            ScsiOp::GET_EVENT_STATUS_NOTIFICATION,
            10,
            &[(1, 0xFE), (4, 0xEF)],
        );
        assert!(matches!(
            parse_mmc_cdb(&c),
            Ok(MmcCommand::GetEventStatusNotification { polled: false, classes, .. })
                if !classes.media() && classes.into_bits() == 0xEF
        ));
    }

    #[test]
    fn disc_and_track_information() {
        let c = cdb(
            ScsiOp::READ_DISC_INFORMATION,
            10,
            &[(1, 0x05), (7, 0), (8, 34)],
        );
        assert_eq!(
            parse_mmc_cdb(&c),
            Ok(MmcCommand::ReadDiscInformation {
                data_type: DiscInformationType::new(5),
                alloc_len: 34
            })
        );
        let c = cdb(
            ScsiOp::READ_TRACK_INFORMATION,
            10,
            &[
                (1, 0x01),
                (2, 0x12),
                (3, 0x34),
                (4, 0x56),
                (5, 0x78),
                (8, 48),
            ],
        );
        assert_eq!(
            parse_mmc_cdb(&c),
            Ok(MmcCommand::ReadTrackInformation {
                address_type: TrackAddressType::TRACK,
                number: 0x1234_5678,
                alloc_len: 48
            })
        );
        let c = cdb(ScsiOp::READ_TRACK_INFORMATION, 10, &[(1, 0xFB)]);
        assert!(matches!(
            parse_mmc_cdb(&c),
            Ok(MmcCommand::ReadTrackInformation { address_type, .. })
                if address_type == TrackAddressType::new(3)
        ));
    }

    #[test]
    fn buffer_capacity_and_mechanism_status() {
        let c = cdb(
            ScsiOp::READ_BUFFER_CAPACITY,
            10,
            &[(1, 0x01), (7, 0), (8, 12)],
        );
        assert_eq!(
            parse_mmc_cdb(&c),
            Ok(MmcCommand::ReadBufferCapacity {
                block: true,
                alloc_len: 12
            })
        );
        let c = cdb(ScsiOp::MECHANISM_STATUS, 12, &[(8, 0x01), (9, 0x00)]);
        assert_eq!(
            parse_mmc_cdb(&c),
            Ok(MmcCommand::MechanismStatus { alloc_len: 0x100 })
        );
    }

    #[test]
    fn get_performance() {
        let c = cdb(
            ScsiOp::GET_PERFORMANCE,
            12,
            &[(1, 0x17), (5, 9), (8, 0), (9, 1), (10, 0x03)],
        );
        let Ok(MmcCommand::GetPerformance {
            data_type,
            start_lba,
            max_descriptors,
            kind,
        }) = parse_mmc_cdb(&c)
        else {
            panic!()
        };
        assert_eq!(
            (data_type.except(), data_type.write(), data_type.tolerance()),
            (3, true, 2)
        );
        assert_eq!((start_lba, max_descriptors), (9, 1));
        assert_eq!(kind, PerformanceType::WRITE_SPEED);
    }

    #[test]
    fn read_disc_structure() {
        let c = cdb(
            ScsiOp::READ_DISC_STRUCTURE,
            12,
            &[
                (1, 0x01),
                (5, 0x10),
                (6, 1),
                (7, 0xFF),
                (8, 0x08),
                (9, 0x04),
                (10, 0xC0),
            ],
        );
        assert_eq!(
            parse_mmc_cdb(&c),
            Ok(MmcCommand::ReadDiscStructure {
                media_type: DiscMediaType::BD,
                address: 0x10,
                layer: 1,
                format: DiscStructureFormat::LIST,
                alloc_len: 0x804
            })
        );
    }

    #[test]
    fn set_streaming() {
        let c = cdb(ScsiOp::SET_STREAMING, 12, &[(8, 5), (9, 0), (10, 28)]);
        assert_eq!(
            parse_mmc_cdb(&c),
            Ok(MmcCommand::SetStreaming {
                kind: StreamingType::DBI_CACHE_ZONE,
                param_len: 28
            })
        );
    }

    #[test]
    fn short_unknown_and_padded() {
        assert_eq!(parse_mmc_cdb(&[]), Err(CdbError::TooShort));
        // Each command needs its whole CDB; transport padding is ignored.
        for (op, len) in [
            (ScsiOp::PREVENT_ALLOW_MEDIUM_REMOVAL, 6),
            (ScsiOp::READ_TOC, 10),
            (ScsiOp::GET_CONFIGURATION, 10),
            (ScsiOp::GET_EVENT_STATUS_NOTIFICATION, 10),
            (ScsiOp::READ_DISC_INFORMATION, 10),
            (ScsiOp::READ_TRACK_INFORMATION, 10),
            (ScsiOp::READ_BUFFER_CAPACITY, 10),
            (ScsiOp::GET_PERFORMANCE, 12),
            (ScsiOp::READ_DISC_STRUCTURE, 12),
            (ScsiOp::SET_STREAMING, 12),
            (ScsiOp::MECHANISM_STATUS, 12),
        ] {
            assert_eq!(op.cdb_len(), Some(len), "{op:?}");
            let c = cdb(op, 16, &[]);
            assert!(parse_mmc_cdb(&c[..len]).is_ok(), "{op:?}");
            assert_eq!(parse_mmc_cdb(&c), parse_mmc_cdb(&c[..len]), "{op:?}");
            assert_eq!(
                parse_mmc_cdb(&c[..len - 1]),
                Err(CdbError::TooShort),
                "{op:?}"
            );
        }
        // SPC / SBC commands are not MMC's.
        for op in [ScsiOp::READ10, ScsiOp::INQUIRY, ScsiOp::TEST_UNIT_READY] {
            assert_eq!(
                parse_mmc_cdb(&cdb(op, 16, &[])),
                Err(CdbError::InvalidOpcode)
            );
        }
    }

    #[test]
    fn response_bits() {
        let h = GesnHeader {
            event_data_len: 6.into(),
            class: GesnClass::new().with_class(NotificationClass::MEDIA),
            supported: EventClasses::new().with_media(true),
        };
        assert_eq!(h.as_bytes(), &[0, 6, 0x04, 0x10]);
        let nea = GesnClass::new().with_nea(true);
        assert_eq!(nea.into_bits(), 0x80);
        let e = MediaEvent {
            code: MediaEventByte::new().with_code(MediaEventCode::NEW_MEDIA),
            status: MediaStatus::new().with_media_present(true),
            ..Default::default()
        };
        assert_eq!(e.as_bytes(), &[2, 2, 0, 0]);
        let f = FeatureDescriptor {
            code: FeatureCode::CORE,
            flags: FeatureFlags::new()
                .with_version(2)
                .with_persistent(true)
                .with_current(true),
            additional_len: 8,
        };
        assert_eq!(f.as_bytes(), &[0, 1, 0x0B, 8]);
        let d = DiscInformation {
            status: DiscStatus::new().with_last_session(3).with_disc_status(2),
            ..Default::default()
        };
        assert_eq!(d.as_bytes()[2], 0x0E);
        let t = TocDescriptor {
            adr_control: AdrControl::new().with_adr(1).with_control(4),
            ..Default::default()
        };
        assert_eq!(t.as_bytes()[1], 0x14);
        let m = MechanismStatusHeader {
            mechanism: MechanismState::new().with_door_open(true),
            ..Default::default()
        };
        assert_eq!(m.as_bytes()[1], 0x10);
        let h = FeatureHeader {
            current_profile: Profile::DVD_ROM,
            ..Default::default()
        };
        assert_eq!(h.as_bytes()[6..], [0, 0x10]);
    }
}
