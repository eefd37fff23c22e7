//! StorVSP wire formats: SCSI over VMBus, as spoken between a guest's
//! StorVSC and the StorVSP that parastor implements.
//!
//! Every VMBus in-band packet on a StorVSP channel carries one
//! [`PacketHeader`] (operation, flags, NT status) followed by a payload whose
//! meaning depends on the operation: a SCSI request block
//! ([`ScsiRequest`]), a protocol version ([`ProtocolVersion`]), the channel
//! properties ([`ChannelProperties`]), a sub-channel count, or Fibre Channel
//! port names ([`FcWwnPacket`]). The SCSI request ([`ScsiRequest`]) exists in
//! two sizes: the pre-Windows 8 form is its first `0x24` bytes, the Windows 8
//! and later form all `0x34`, with queueing fields appended. Which one a
//! channel uses follows from the protocol version negotiated with
//! `QUERY_PROTOCOL_VERSION` ([`RequestSize`]).
//!
//! All integers on the wire are little-endian; every type here is built from
//! zerocopy's little-endian integer types, so it has alignment 1, no padding,
//! and the same meaning on any host. The codes a guest sends (operations,
//! versions, SRB status, data direction, queue actions) are open enums, flag
//! words are `#[bitfield]`s. Parsing ([`parse_packet`]) is pure,
//! allocation-free and total: any byte string yields either a packet or a
//! [`ParseError`], never a panic.
//!
//! Sources of the facts used here (layouts, values — not code): the OpenVMM
//! storage catalog (`reference/openvmm-storage.md` §5, `storvsp_protocol`),
//! and the Linux guest driver `drivers/scsi/storvsc_drv.c` (`struct
//! vstor_packet`, `struct vmscsi_request`, `struct
//! vmstorage_channel_properties`, `struct vmstorage_protocol_version`,
//! `struct hv_fc_wwn_packet`, `VSTOR_OPERATION_*`, `SRB_STATUS_*`,
//! `SRB_FLAGS_*`, `VMSTOR_PROTO_VERSION_*`). NT status values are the
//! public Windows `ntstatus.h` values.

use core::fmt;

use bitfield_struct::bitfield;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::guid::Guid;
use crate::open_enum::open_enum;
use crate::scsi::ScsiStatus;

// ---------------------------------------------------------------------------
// Interface GUIDs and offer flags
// ---------------------------------------------------------------------------

/// VMBus interface type of a synthetic SCSI controller,
/// `ba6163d9-04a1-4d29-b605-72e2ffb1dc7f` (OpenVMM catalog §5.1).
pub const SCSI_INTERFACE_ID: Guid = Guid::new(
    0xba61_63d9,
    0x04a1,
    0x4d29,
    [0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1, 0xdc, 0x7f],
);

/// VMBus interface type of the IDE accelerator (a StorVSP channel that
/// fronts an emulated IDE drive), `32412632-86cb-44a2-9b5c-50d1417354f5`
/// (OpenVMM catalog §5.1).
pub const IDE_ACCELERATOR_INTERFACE_ID: Guid = Guid::new(
    0x3241_2632,
    0x86cb,
    0x44a2,
    [0x9b, 0x5c, 0x50, 0xd1, 0x41, 0x73, 0x54, 0xf5],
);

/// Flags in a StorVSP channel offer's user-defined data (Linux: "Channel
/// Property Flags").
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct OfferFlags {
    /// The device is removable (`STORAGE_CHANNEL_REMOVABLE_FLAG`).
    pub removable: bool,
    /// The channel accelerates an emulated IDE device
    /// (`STORAGE_CHANNEL_EMULATED_IDE_FLAG`; OpenVMM's `IDE_DEVICE`).
    pub emulated_ide: bool,
    /// Reserved.
    #[bits(30)]
    pub reserved: u32,
}

// ---------------------------------------------------------------------------
// Protocol versions
// ---------------------------------------------------------------------------

open_enum! {
    /// A StorVSP protocol version word: major in the high byte, minor in
    /// the low byte (Linux `VMSTOR_PROTO_VERSION`). Ordered by value, so
    /// "this version or later" is a comparison.
    pub struct Version(le u16) {
        /// Windows Server 2008 (protocol 2.0).
        WIN6 = 0x0200,
        /// Windows 7 (protocol 4.2).
        WIN7 = 0x0402,
        /// Windows 8 (protocol 5.1): first version with the `0x34`-byte
        /// request.
        WIN8 = 0x0501,
        /// Windows 8.1, "Blue" (protocol 6.0).
        BLUE = 0x0600,
        /// Windows 10, "Threshold" (protocol 6.2). Known, but not accepted
        /// by StorVSP (see [`Version::is_supported`]).
        WIN10 = 0x0602,
    }
}

/// The versions StorVSP accepts in `QUERY_PROTOCOL_VERSION`, newest first.
pub const SUPPORTED_VERSIONS: [Version; 4] =
    [Version::BLUE, Version::WIN8, Version::WIN7, Version::WIN6];

impl Version {
    /// The version `major.minor`.
    pub const fn from_parts(major: u8, minor: u8) -> Self {
        Self::new(u16::from_be_bytes([major, minor]))
    }

    /// The major version.
    pub const fn major(self) -> u8 {
        self.get().to_be_bytes()[0]
    }

    /// The minor version.
    pub const fn minor(self) -> u8 {
        self.get().to_be_bytes()[1]
    }

    /// Whether StorVSP accepts this version in `QUERY_PROTOCOL_VERSION`.
    ///
    /// Only the exact versions Win6, Win7, Win8 and Blue are accepted; any
    /// other word — including Win10 / Threshold and minor variants — is
    /// answered with [`NtStatus::REVISION_MISMATCH`] (OpenVMM catalog
    /// §5.1).
    pub const fn is_supported(self) -> bool {
        matches!(self, Self::WIN6 | Self::WIN7 | Self::WIN8 | Self::BLUE)
    }
}

/// The SCSI request size a channel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestSize {
    /// Protocols before Windows 8 (Win6, Win7): `0x24` bytes, no queueing
    /// extension, `0x12`-byte sense buffer.
    PreWin8,
    /// Windows 8 and later: `0x34` bytes, with the queueing extension and a
    /// `0x14`-byte sense buffer.
    Win8,
}

impl RequestSize {
    /// The request size for a negotiated protocol `version`: [`Self::Win8`]
    /// from [`Version::WIN8`] on, [`Self::PreWin8`] below it.
    pub const fn for_version(version: Version) -> Self {
        if version.get() >= Version::WIN8.get() {
            Self::Win8
        } else {
            Self::PreWin8
        }
    }

    /// The request size in bytes (`0x24` or `0x34`).
    pub const fn request_len(self) -> usize {
        match self {
            Self::PreWin8 => SCSI_REQUEST_LEN_PRE_WIN8,
            Self::Win8 => SCSI_REQUEST_LEN_WIN8,
        }
    }

    /// The sense buffer size the guest expects (`0x12` or `0x14`).
    pub const fn sense_buffer_len(self) -> usize {
        match self {
            Self::PreWin8 => SENSE_BUFFER_SIZE_PRE_WIN8,
            Self::Win8 => SENSE_BUFFER_SIZE,
        }
    }

    /// The size of a whole packet (header and request) of this size.
    pub const fn packet_len(self) -> usize {
        PACKET_HEADER_LEN + self.request_len()
    }
}

// ---------------------------------------------------------------------------
// NT status
// ---------------------------------------------------------------------------

open_enum! {
    /// An NT status code as carried in [`PacketHeader::status`] (the
    /// `STATUS_*` names of Windows `ntstatus.h`, without the prefix).
    pub struct NtStatus(le u32) {
        /// `STATUS_SUCCESS`.
        SUCCESS = 0x0000_0000,
        /// `STATUS_BUFFER_OVERFLOW` (a warning): SRB data overrun.
        BUFFER_OVERFLOW = 0x8000_0005,
        /// `STATUS_DEVICE_BUSY` (a warning): SRB busy.
        DEVICE_BUSY = 0x8000_0011,
        /// `STATUS_UNSUCCESSFUL`.
        UNSUCCESSFUL = 0xC000_0001,
        /// `STATUS_INVALID_PARAMETER`: e.g. too many sub-channels requested.
        INVALID_PARAMETER = 0xC000_000D,
        /// `STATUS_INVALID_DEVICE_REQUEST`.
        INVALID_DEVICE_REQUEST = 0xC000_0010,
        /// `STATUS_REVISION_MISMATCH`: unsupported protocol version.
        REVISION_MISMATCH = 0xC000_0059,
        /// `STATUS_DEVICE_NOT_CONNECTED`.
        DEVICE_NOT_CONNECTED = 0xC000_009D,
        /// `STATUS_IO_TIMEOUT`.
        IO_TIMEOUT = 0xC000_00B5,
        /// `STATUS_DEVICE_DOES_NOT_EXIST`.
        DEVICE_DOES_NOT_EXIST = 0xC000_00C0,
        /// `STATUS_CANCELLED`.
        CANCELLED = 0xC000_0120,
        /// `STATUS_INVALID_DEVICE_STATE`: a packet out of negotiation order.
        INVALID_DEVICE_STATE = 0xC000_0184,
        /// `STATUS_IO_DEVICE_ERROR`.
        IO_DEVICE_ERROR = 0xC000_0185,
    }
}

impl NtStatus {
    /// `NT_SUCCESS`: success or informational severity (high bit clear).
    pub const fn is_success(self) -> bool {
        self.get() & 0x8000_0000 == 0
    }
}

// ---------------------------------------------------------------------------
// SRB status and flags
// ---------------------------------------------------------------------------

open_enum! {
    /// SRB status codes (Windows `srb.h`; the subset Linux tests for is in
    /// `storvsc_drv.c`): the low six bits of [`ScsiRequest::srb_status`].
    pub struct SrbStatus(u8) {
        /// Request in progress.
        PENDING = 0x00,
        /// Completed successfully.
        SUCCESS = 0x01,
        /// Aborted.
        ABORTED = 0x02,
        /// Abort failed.
        ABORT_FAILED = 0x03,
        /// Completed with an error (see SCSI status / sense).
        ERROR = 0x04,
        /// Device busy.
        BUSY = 0x05,
        /// Invalid request.
        INVALID_REQUEST = 0x06,
        /// Invalid path id.
        INVALID_PATH_ID = 0x07,
        /// No device.
        NO_DEVICE = 0x08,
        /// Timed out.
        TIMEOUT = 0x09,
        /// Selection timed out.
        SELECTION_TIMEOUT = 0x0A,
        /// Command timed out.
        COMMAND_TIMEOUT = 0x0B,
        /// Message rejected.
        MESSAGE_REJECTED = 0x0D,
        /// Bus reset.
        BUS_RESET = 0x0E,
        /// Parity error.
        PARITY_ERROR = 0x0F,
        /// REQUEST SENSE failed.
        REQUEST_SENSE_FAILED = 0x10,
        /// No host bus adapter.
        NO_HBA = 0x11,
        /// Data overrun or underrun.
        DATA_OVERRUN = 0x12,
        /// Unexpected bus free.
        UNEXPECTED_BUS_FREE = 0x13,
        /// Phase sequence failure.
        PHASE_SEQUENCE_FAILURE = 0x14,
        /// Bad SRB block length.
        BAD_SRB_BLOCK_LENGTH = 0x15,
        /// Request flushed.
        REQUEST_FLUSHED = 0x16,
        /// Invalid LUN.
        INVALID_LUN = 0x20,
        /// Invalid target id.
        INVALID_TARGET_ID = 0x21,
        /// Bad function.
        BAD_FUNCTION = 0x22,
        /// Error recovery.
        ERROR_RECOVERY = 0x23,
        /// Not powered.
        NOT_POWERED = 0x24,
        /// Link down.
        LINK_DOWN = 0x25,
        /// Internal error.
        INTERNAL_ERROR = 0x30,
    }
}

impl SrbStatus {
    /// The NT status StorVSP puts in a `COMPLETE_IO` header for this SRB
    /// status, per OpenVMM catalog §5.3. Bits above the six-bit code are
    /// ignored.
    pub const fn nt_status(self) -> NtStatus {
        match Self::new(self.get() & 0x3F) {
            Self::SUCCESS => NtStatus::SUCCESS,
            Self::BUSY => NtStatus::DEVICE_BUSY,
            Self::INVALID_LUN | Self::INVALID_TARGET_ID | Self::NO_DEVICE | Self::NO_HBA => {
                NtStatus::DEVICE_DOES_NOT_EXIST
            }
            Self::TIMEOUT | Self::COMMAND_TIMEOUT => NtStatus::IO_TIMEOUT,
            Self::SELECTION_TIMEOUT => NtStatus::DEVICE_NOT_CONNECTED,
            Self::BAD_FUNCTION | Self::BAD_SRB_BLOCK_LENGTH => NtStatus::INVALID_DEVICE_REQUEST,
            Self::DATA_OVERRUN => NtStatus::BUFFER_OVERFLOW,
            Self::REQUEST_FLUSHED => NtStatus::UNSUCCESSFUL,
            Self::ABORTED => NtStatus::CANCELLED,
            _ => NtStatus::IO_DEVICE_ERROR,
        }
    }
}

/// The SRB status byte ([`ScsiRequest::srb_status`]): a six-bit
/// [`SrbStatus`] and two flags.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct SrbStatusAndFlags {
    /// The status code.
    #[bits(6)]
    pub status: SrbStatus,
    /// The LUN's queue is frozen.
    pub queue_frozen: bool,
    /// Sense data in the payload is valid.
    pub autosense_valid: bool,
}

/// SRB flags ([`ScsiRequest::srb_flags`], Windows 8 and later), Linux
/// `SRB_FLAGS_*`. Neither data bit: no transfer; both: direction
/// unspecified.
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct SrbFlags {
    /// Reserved.
    pub reserved: bool,
    /// Queue action field is valid.
    pub queue_action_enable: bool,
    /// Disable disconnect.
    pub disable_disconnect: bool,
    /// Disable synchronous transfer.
    pub disable_synch_transfer: bool,
    /// Bypass a frozen queue.
    pub bypass_frozen_queue: bool,
    /// Do not return sense data.
    pub disable_autosense: bool,
    /// Data moves from the device to the guest.
    pub data_in: bool,
    /// Data moves from the guest to the device.
    pub data_out: bool,
    /// Do not freeze the queue on error.
    pub no_queue_freeze: bool,
    /// Adapter cache enabled.
    pub adapter_cache_enable: bool,
    /// Free the sense buffer.
    pub free_sense_buffer: bool,
    /// Part of D3 processing.
    pub d3_processing: bool,
    /// Reserved.
    #[bits(4)]
    pub reserved2: u8,
    /// Request is active.
    pub is_active: bool,
    /// Allocated from zone.
    pub allocated_from_zone: bool,
    /// SG list from pool.
    pub sglist_from_pool: bool,
    /// Bypass a locked queue.
    pub bypass_locked_queue: bool,
    /// Do not keep the device awake.
    pub no_keep_awake: bool,
    /// Port driver allocated the sense buffer.
    pub port_driver_allocsense: bool,
    /// Sense buffer holds a port number.
    pub port_driver_sensehasport: bool,
    /// Do not start the next packet.
    pub dont_start_next_packet: bool,
    /// Reserved for the port driver.
    #[bits(4)]
    pub port_driver_reserved: u8,
    /// Reserved for the class driver.
    #[bits(4)]
    pub class_driver_reserved: u8,
}

/// [`ScsiRequest::queue_tag`] value meaning "untagged" (`SP_UNTAGGED`).
pub const QUEUE_TAG_UNTAGGED: u8 = 0xFF;

open_enum! {
    /// [`ScsiRequest::queue_action`] values (`SRB_*_TAG_REQUEST`).
    pub struct QueueAction(u8) {
        /// Simple tagged request.
        SIMPLE_TAG = 0x20,
        /// Head of queue tagged request.
        HEAD_OF_QUEUE_TAG = 0x21,
        /// Ordered tagged request.
        ORDERED_TAG = 0x22,
    }
}

open_enum! {
    /// [`ScsiRequest::data_in`] values (Linux `enum storvsc_request_type`).
    pub struct DataDirection(u8) {
        /// Guest to device (a write).
        WRITE = 0,
        /// Device to guest (a read).
        READ = 1,
        /// No or unknown data direction.
        UNKNOWN = 2,
    }
}

// ---------------------------------------------------------------------------
// Packet header and operations
// ---------------------------------------------------------------------------

/// Size of [`PacketHeader`].
pub const PACKET_HEADER_LEN: usize = 12;
/// Size of the payload union of a `vstor_packet` (the largest member, the
/// Windows 8 SCSI request).
pub const PACKET_PAYLOAD_LEN: usize = 0x34;
/// Size of the largest StorVSP packet: header and full payload (`0x40`).
pub const MAX_PACKET_LEN: usize = PACKET_HEADER_LEN + PACKET_PAYLOAD_LEN;

/// [`PacketHeader::flags`].
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct PacketFlags {
    /// Asks the other side for a completion (`REQUEST_COMPLETION_FLAG`).
    pub request_completion: bool,
    /// Reserved.
    #[bits(31)]
    pub reserved: u32,
}

/// The header of every StorVSP packet (12 bytes): Linux `struct
/// vstor_packet` up to its payload union; OpenVMM `Packet { operation,
/// flags, status }`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct PacketHeader {
    /// Offset 0: the operation.
    pub operation: Operation,
    /// Offset 4: flags.
    pub flags: PacketFlags,
    /// Offset 8: status, meaningful in completions.
    pub status: NtStatus,
}

const _: () = assert!(size_of::<PacketHeader>() == PACKET_HEADER_LEN);

impl PacketHeader {
    /// A header for `operation` with `flags` and `status`.
    pub const fn new(operation: Operation, flags: PacketFlags, status: NtStatus) -> Self {
        Self {
            operation,
            flags,
            status,
        }
    }
}

open_enum! {
    /// StorVSP operation codes (`VSTOR_OPERATION_*`; OpenVMM catalog §5.1).
    pub struct Operation(le u32) {
        /// Completion of a request; payload as the completed request's.
        COMPLETE_IO = 1,
        /// Device removal notification.
        REMOVE_DEVICE = 2,
        /// Execute a SCSI request block; payload [`ScsiRequest`].
        EXECUTE_SRB = 3,
        /// Reset a LUN.
        RESET_LUN = 4,
        /// Reset the adapter.
        RESET_ADAPTER = 5,
        /// Reset the bus.
        RESET_BUS = 6,
        /// Start of the negotiation.
        BEGIN_INITIALIZATION = 7,
        /// End of the negotiation.
        END_INITIALIZATION = 8,
        /// Protocol version negotiation; payload [`ProtocolVersion`].
        QUERY_PROTOCOL_VERSION = 9,
        /// Channel properties query; payload [`ChannelProperties`].
        QUERY_PROPERTIES = 10,
        /// Host to guest: rescan the bus (LUNs added or removed).
        ENUMERATE_BUS = 11,
        /// Fibre Channel HBA data; payload [`FcWwnPacket`].
        FC_HBA_DATA = 12,
        /// Create sub-channels (Windows 8 and later); payload a `u16` count.
        CREATE_SUB_CHANNELS = 13,
        /// Event notification (OpenVMM; not used by Linux).
        EVENT_NOTIFICATION = 14,
    }
}

impl Operation {
    /// The minimum payload length (after the header) that [`parse_packet`]
    /// requires for this operation on a channel using `size`; `None` for
    /// an operation StorVSP does not know.
    ///
    /// `EXECUTE_SRB` and `COMPLETE_IO` carry a request of the negotiated
    /// size. The negotiation-phase operations need only their own payload:
    /// they are exchanged before (or while) the request size is settled,
    /// and guests differ in how much padding they send with them.
    pub const fn min_payload_len(self, size: RequestSize) -> Option<usize> {
        Some(match self {
            Self::EXECUTE_SRB | Self::COMPLETE_IO => size.request_len(),
            Self::QUERY_PROTOCOL_VERSION => size_of::<ProtocolVersion>(),
            Self::QUERY_PROPERTIES => size_of::<ChannelProperties>(),
            Self::CREATE_SUB_CHANNELS => size_of::<U16>(),
            Self::FC_HBA_DATA => size_of::<FcWwnPacket>(),
            Self::REMOVE_DEVICE
            | Self::RESET_LUN
            | Self::RESET_ADAPTER
            | Self::RESET_BUS
            | Self::BEGIN_INITIALIZATION
            | Self::END_INITIALIZATION
            | Self::ENUMERATE_BUS
            | Self::EVENT_NOTIFICATION => 0,
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------------------
// SCSI request block
// ---------------------------------------------------------------------------

/// Size of the pre-Windows 8 SCSI request (Win6, Win7).
pub const SCSI_REQUEST_LEN_PRE_WIN8: usize = 0x24;
/// Size of the Windows 8 and later SCSI request.
pub const SCSI_REQUEST_LEN_WIN8: usize = 0x34;
/// Maximum CDB length (`STORVSC_MAX_CMD_LEN`).
pub const CDB_MAX_LEN: usize = 0x10;
/// Sense buffer size from Windows 8 on (`STORVSC_SENSE_BUFFER_SIZE`).
pub const SENSE_BUFFER_SIZE: usize = 0x14;
/// Sense buffer size before Windows 8 (`PRE_WIN8_STORVSC_SENSE_BUFFER_SIZE`).
pub const SENSE_BUFFER_SIZE_PRE_WIN8: usize = 0x12;
/// Size of the CDB / sense union in a request
/// (`STORVSC_MAX_BUF_LEN_WITH_PADDING`).
pub const SCSI_REQUEST_PAYLOAD_LEN: usize = 0x14;

/// The SCSI request block (`0x34` bytes), Linux `struct vmscsi_request`
/// including the fields "added in win8"; OpenVMM `ScsiRequest`.
///
/// On a pre-Windows 8 channel only the first `0x24` bytes
/// ([`SCSI_REQUEST_LEN_PRE_WIN8`]) travel: [`ScsiRequest::wire_bytes`]
/// cuts a request to that size, and [`parse_packet`] leaves the Windows 8
/// fields zero when they are absent.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ScsiRequest {
    /// Offset 0x00: request length.
    pub length: U16,
    /// Offset 0x02: SRB status and flags.
    pub srb_status: SrbStatusAndFlags,
    /// Offset 0x03: SCSI status byte.
    pub scsi_status: ScsiStatus,
    /// Offset 0x04: port number.
    pub port_number: u8,
    /// Offset 0x05: path (bus) id.
    pub path_id: u8,
    /// Offset 0x06: target id.
    pub target_id: u8,
    /// Offset 0x07: LUN.
    pub lun: u8,
    /// Offset 0x08: CDB length.
    pub cdb_length: u8,
    /// Offset 0x09: sense buffer length (`sense_info_ex_length`).
    pub sense_info_ex_length: u8,
    /// Offset 0x0A: data direction.
    pub data_in: DataDirection,
    /// Offset 0x0B: reserved (OpenVMM: `properties`).
    pub reserved: u8,
    /// Offset 0x0C: data transfer length in bytes.
    pub data_transfer_length: U32,
    /// Offset 0x10: CDB (requests, up to [`CDB_MAX_LEN`]) or sense data
    /// (completions, up to [`SENSE_BUFFER_SIZE`]).
    pub payload: [u8; SCSI_REQUEST_PAYLOAD_LEN],
    /// Offset 0x24 (Windows 8+): reserved.
    pub reserve: U16,
    /// Offset 0x26 (Windows 8+): queue tag ([`QUEUE_TAG_UNTAGGED`]).
    pub queue_tag: u8,
    /// Offset 0x27 (Windows 8+): queue action.
    pub queue_action: QueueAction,
    /// Offset 0x28 (Windows 8+): SRB flags.
    pub srb_flags: SrbFlags,
    /// Offset 0x2C (Windows 8+): time-out value in seconds.
    pub time_out_value: U32,
    /// Offset 0x30 (Windows 8+): queue sort key.
    pub queue_sort_key: U32,
}

const _: () = assert!(size_of::<ScsiRequest>() == SCSI_REQUEST_LEN_WIN8);
const _: () = assert!(core::mem::offset_of!(ScsiRequest, reserve) == SCSI_REQUEST_LEN_PRE_WIN8);

impl ScsiRequest {
    /// The CDB: the first `cdb_length` bytes of the payload, or `None` if
    /// `cdb_length` exceeds [`CDB_MAX_LEN`].
    pub fn cdb(&self) -> Option<&[u8]> {
        self.payload[..CDB_MAX_LEN].get(..usize::from(self.cdb_length))
    }

    /// The bytes of this request as sent on a channel using `size`: the
    /// first `size.request_len()` bytes.
    pub fn wire_bytes(&self, size: RequestSize) -> &[u8] {
        &self.as_bytes()[..size.request_len()]
    }
}

// ---------------------------------------------------------------------------
// Negotiation payloads
// ---------------------------------------------------------------------------

/// [`ChannelProperties::flags`].
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ChannelFlags {
    /// The channel supports sub-channels
    /// (`STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL`).
    pub multi_channel: bool,
    /// Reserved.
    #[bits(31)]
    pub reserved: u32,
}

/// The `QUERY_PROPERTIES` payload (24 bytes): Linux `struct
/// vmstorage_channel_properties`; OpenVMM `ChannelProperties`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ChannelProperties {
    /// Offset 0: reserved.
    pub reserved: U32,
    /// Offset 4: the most sub-channels the guest may create.
    pub maximum_sub_channel_count: U16,
    /// Offset 6: reserved.
    pub reserved1: U16,
    /// Offset 8: flags.
    pub flags: ChannelFlags,
    /// Offset 12: the largest transfer per request, in bytes.
    pub max_transfer_bytes: U32,
    /// Offset 16: reserved.
    pub reserved2: U64,
}

const _: () = assert!(size_of::<ChannelProperties>() == 24);

/// The `QUERY_PROTOCOL_VERSION` payload (4 bytes): Linux `struct
/// vmstorage_protocol_version`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ProtocolVersion {
    /// Offset 0: the version.
    pub major_minor: Version,
    /// Offset 2: build revision; informational, guests send 0.
    pub revision: U16,
}

const _: () = assert!(size_of::<ProtocolVersion>() == 4);

impl ProtocolVersion {
    /// A version message for `version` with revision 0.
    pub const fn new(version: Version) -> Self {
        Self {
            major_minor: version,
            revision: U16::new(0),
        }
    }
}

/// The `FC_HBA_DATA` payload (36 bytes): Linux `struct hv_fc_wwn_packet`,
/// the Fibre Channel port and node world-wide names.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct FcWwnPacket {
    /// Offset 0: whether the primary port is active.
    pub primary_active: u8,
    /// Offset 1: reserved.
    pub reserved1: [u8; 3],
    /// Offset 4: primary port WWN.
    pub primary_port_wwn: [u8; 8],
    /// Offset 12: primary node WWN.
    pub primary_node_wwn: [u8; 8],
    /// Offset 20: secondary port WWN.
    pub secondary_port_wwn: [u8; 8],
    /// Offset 28: secondary node WWN.
    pub secondary_node_wwn: [u8; 8],
}

const _: () = assert!(size_of::<FcWwnPacket>() == 36);
const _: () = assert!(size_of::<FcWwnPacket>() <= PACKET_PAYLOAD_LEN);

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// The raw payload union of a `COMPLETE_IO` packet, whose meaning depends on
/// the request it completes. Bytes beyond what the packet carried are zero.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct CompletionPayload(pub [u8; PACKET_PAYLOAD_LEN]);

const _: () = assert!(size_of::<CompletionPayload>() == PACKET_PAYLOAD_LEN);

impl CompletionPayload {
    /// The payload read as the completion of an `EXECUTE_SRB`.
    pub fn scsi_request(&self) -> ScsiRequest {
        ScsiRequest::read_from_bytes(&self.0[..]).unwrap_or_else(|_| ScsiRequest::new_zeroed())
    }

    /// The payload read as the completion of `QUERY_PROTOCOL_VERSION`.
    pub fn protocol_version(&self) -> ProtocolVersion {
        ProtocolVersion::read_from_prefix(&self.0[..])
            .map(|(v, _)| v)
            .unwrap_or_else(|_| ProtocolVersion::new_zeroed())
    }

    /// The payload read as the completion of `QUERY_PROPERTIES`.
    pub fn channel_properties(&self) -> ChannelProperties {
        ChannelProperties::read_from_prefix(&self.0[..])
            .map(|(v, _)| v)
            .unwrap_or_else(|_| ChannelProperties::new_zeroed())
    }
}

/// The payload of a parsed packet, by operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// Operations without a payload: `REMOVE_DEVICE`, `RESET_LUN`,
    /// `RESET_ADAPTER`, `RESET_BUS`, `BEGIN_INITIALIZATION`,
    /// `END_INITIALIZATION`, `ENUMERATE_BUS`, `EVENT_NOTIFICATION`.
    None,
    /// `EXECUTE_SRB`: the request, widened to the Windows 8 form (the
    /// Windows 8 fields are zero if the packet did not carry them).
    ExecuteSrb(ScsiRequest),
    /// `COMPLETE_IO`: the raw payload union.
    Completion(CompletionPayload),
    /// `QUERY_PROTOCOL_VERSION`.
    ProtocolVersion(ProtocolVersion),
    /// `QUERY_PROPERTIES`.
    ChannelProperties(ChannelProperties),
    /// `CREATE_SUB_CHANNELS`: the number of sub-channels requested.
    CreateSubChannels(u16),
    /// `FC_HBA_DATA`.
    FcHbaData(FcWwnPacket),
}

/// Why a byte string is not a StorVSP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than the 12-byte [`PacketHeader`].
    TruncatedHeader {
        /// Bytes available.
        len: usize,
    },
    /// The operation is none of the named [`Operation`]s, so its payload
    /// cannot be checked.
    UnknownOperation(Operation),
    /// The payload is shorter than the operation requires
    /// ([`Operation::min_payload_len`]).
    TruncatedBody {
        /// The packet's operation.
        operation: Operation,
        /// Payload bytes required.
        needed: usize,
        /// Payload bytes available.
        actual: usize,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TruncatedHeader { len } => {
                write!(
                    f,
                    "storvsp packet of {len} bytes is shorter than its header"
                )
            }
            Self::UnknownOperation(op) => {
                write!(f, "unknown storvsp operation {:#x}", op.get())
            }
            Self::TruncatedBody {
                operation,
                needed,
                actual,
            } => write!(
                f,
                "storvsp {operation:?} payload of {actual} bytes, {needed} required"
            ),
        }
    }
}

impl core::error::Error for ParseError {}

/// Reads a `T` from the start of `bytes`, zero-filling whatever `bytes`
/// lacks. Callers check lengths first; this never fails.
fn read_padded<T: FromBytes + IntoBytes>(bytes: &[u8]) -> T {
    let mut out = T::new_zeroed();
    let dst = out.as_mut_bytes();
    let n = dst.len().min(bytes.len());
    dst[..n].copy_from_slice(&bytes[..n]);
    out
}

/// Parses one StorVSP packet (the in-band payload of a VMBus packet) on a
/// channel using request size `size`.
///
/// Checks, in order: the header is present ([`ParseError::TruncatedHeader`]),
/// the operation is a named one ([`ParseError::UnknownOperation`]: without
/// knowing the operation there is no payload to check), and the payload is
/// at least [`Operation::min_payload_len`] ([`ParseError::TruncatedBody`]) —
/// for `EXECUTE_SRB` and `COMPLETE_IO`, the negotiated request size. Longer
/// packets are accepted and the excess ignored beyond the full payload
/// union (`0x34` bytes): a pre-Windows 8 channel still reads the Windows 8
/// fields if the guest sent them, as some Linux versions send full-size
/// requests regardless of the version (OpenVMM catalog §5.2).
///
/// Flags and status are returned as sent; validating them against the
/// protocol state is the frontend's job.
pub fn parse_packet(bytes: &[u8], size: RequestSize) -> Result<(PacketHeader, Body), ParseError> {
    let (header, payload) = PacketHeader::read_from_prefix(bytes)
        .map_err(|_| ParseError::TruncatedHeader { len: bytes.len() })?;
    let operation = header.operation;
    let needed = operation
        .min_payload_len(size)
        .ok_or(ParseError::UnknownOperation(operation))?;
    if payload.len() < needed {
        return Err(ParseError::TruncatedBody {
            operation,
            needed,
            actual: payload.len(),
        });
    }
    let body = match operation {
        Operation::EXECUTE_SRB => Body::ExecuteSrb(read_padded(payload)),
        Operation::COMPLETE_IO => Body::Completion(read_padded(payload)),
        Operation::QUERY_PROTOCOL_VERSION => Body::ProtocolVersion(read_padded(payload)),
        Operation::QUERY_PROPERTIES => Body::ChannelProperties(read_padded(payload)),
        Operation::CREATE_SUB_CHANNELS => {
            Body::CreateSubChannels(read_padded::<U16>(payload).get())
        }
        Operation::FC_HBA_DATA => Body::FcHbaData(read_padded(payload)),
        _ => Body::None,
    };
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::string::ToString;
    use std::vec::Vec;

    fn packet(op: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&op.to_le_bytes());
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn sample_request() -> ScsiRequest {
        let mut r = ScsiRequest::new_zeroed();
        r.length = U16::new(SCSI_REQUEST_LEN_WIN8 as u16);
        r.path_id = 1;
        r.target_id = 2;
        r.lun = 3;
        r.cdb_length = 10;
        r.sense_info_ex_length = SENSE_BUFFER_SIZE as u8;
        r.data_in = DataDirection::READ;
        r.data_transfer_length = U32::new(4096);
        r.payload[..10].copy_from_slice(&[0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0]);
        r.queue_tag = QUEUE_TAG_UNTAGGED;
        r.queue_action = QueueAction::SIMPLE_TAG;
        r.srb_flags = SrbFlags::new()
            .with_data_in(true)
            .with_disable_synch_transfer(true);
        r.time_out_value = U32::new(60);
        r.queue_sort_key = U32::new(0x1234_5678);
        r
    }

    #[test]
    fn sizes_and_offsets() {
        assert_eq!(size_of::<PacketHeader>(), 12);
        assert_eq!(size_of::<ScsiRequest>(), 0x34);
        assert_eq!(size_of::<ChannelProperties>(), 24);
        assert_eq!(size_of::<ProtocolVersion>(), 4);
        assert_eq!(size_of::<FcWwnPacket>(), 36);
        assert_eq!(size_of::<Guid>(), 16);
        assert_eq!(MAX_PACKET_LEN, 0x40);
        assert_eq!(
            core::mem::offset_of!(ScsiRequest, data_transfer_length),
            0x0C
        );
        assert_eq!(core::mem::offset_of!(ScsiRequest, payload), 0x10);
        assert_eq!(core::mem::offset_of!(ScsiRequest, srb_flags), 0x28);
        assert_eq!(core::mem::offset_of!(ScsiRequest, time_out_value), 0x2C);
        assert_eq!(core::mem::offset_of!(ScsiRequest, queue_sort_key), 0x30);
        assert_eq!(
            core::mem::offset_of!(ChannelProperties, max_transfer_bytes),
            12
        );
    }

    #[test]
    fn pre_win8_is_prefix_of_win8() {
        let r = sample_request();
        assert_eq!(SCSI_REQUEST_LEN_PRE_WIN8, 0x24);
        // The Windows 8 fields start exactly where the short form ends.
        let reserve = core::mem::offset_of!(ScsiRequest, reserve);
        assert_eq!(reserve, SCSI_REQUEST_LEN_PRE_WIN8);
        assert_eq!(r.wire_bytes(RequestSize::PreWin8).len(), 0x24);
        assert_eq!(r.wire_bytes(RequestSize::Win8).len(), 0x34);
    }

    #[test]
    fn versions() {
        assert_eq!(Version::WIN6.get(), 0x0200);
        assert_eq!(Version::WIN7.get(), 0x0402);
        assert_eq!(Version::WIN8.get(), 0x0501);
        assert_eq!(Version::BLUE.get(), 0x0600);
        assert_eq!(Version::WIN10.get(), 0x0602);
        assert_eq!(Version::from_parts(5, 1), Version::WIN8);
        for v in SUPPORTED_VERSIONS {
            assert!(v.is_supported());
        }
        assert!(!Version::WIN10.is_supported());
        assert!(!Version::new(0).is_supported());
        assert!(!Version::new(0x0401).is_supported());
        assert!(Version::WIN7 < Version::WIN8 && Version::BLUE < Version::WIN10);
        assert_eq!(RequestSize::for_version(Version::WIN6).request_len(), 0x24);
        assert_eq!(RequestSize::for_version(Version::WIN7).request_len(), 0x24);
        assert_eq!(RequestSize::for_version(Version::WIN8).request_len(), 0x34);
        assert_eq!(RequestSize::for_version(Version::BLUE).request_len(), 0x34);
        assert_eq!(RequestSize::for_version(Version::WIN10).request_len(), 0x34);
        assert_eq!(RequestSize::PreWin8.sense_buffer_len(), 0x12);
        assert_eq!(RequestSize::Win8.sense_buffer_len(), 0x14);
        assert_eq!(RequestSize::Win8.packet_len(), 0x40);
        let pv = ProtocolVersion::new(Version::WIN7);
        assert_eq!((pv.major_minor.major(), pv.major_minor.minor()), (4, 2));
        assert_eq!(pv.as_bytes(), &[0x02, 0x04, 0, 0]);
        // A version nobody named is a version: representable, unsupported.
        let odd = ProtocolVersion::read_from_bytes(&[0x07, 0x09, 0, 0]).unwrap();
        assert_eq!(odd.major_minor, Version::from_parts(9, 7));
        assert!(!odd.major_minor.is_supported());
        assert_eq!(std::format!("{:?}", odd.major_minor), "Version(0x907)");
    }

    #[test]
    fn guids() {
        assert_eq!(
            SCSI_INTERFACE_ID.to_string(),
            "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"
        );
        assert_eq!(
            IDE_ACCELERATOR_INTERFACE_ID.to_string(),
            "32412632-86cb-44a2-9b5c-50d1417354f5"
        );
        assert_eq!(
            &SCSI_INTERFACE_ID.as_bytes()[..8],
            &[0xd9, 0x63, 0x61, 0xba, 0xa1, 0x04, 0x29, 0x4d]
        );
    }

    #[test]
    fn nt_status_values() {
        assert_eq!(NtStatus::SUCCESS.get(), 0);
        assert_eq!(NtStatus::INVALID_PARAMETER.get(), 0xC000_000D);
        assert_eq!(NtStatus::DEVICE_BUSY.get(), 0x8000_0011);
        assert_eq!(NtStatus::REVISION_MISMATCH.get(), 0xC000_0059);
        assert_eq!(NtStatus::INVALID_DEVICE_STATE.get(), 0xC000_0184);
        assert_eq!(NtStatus::UNSUCCESSFUL.get(), 0xC000_0001);
        assert_eq!(NtStatus::IO_DEVICE_ERROR.get(), 0xC000_0185);
        assert_eq!(
            NtStatus::IO_DEVICE_ERROR.as_bytes(),
            &[0x85, 0x01, 0x00, 0xC0]
        );
        assert!(NtStatus::SUCCESS.is_success());
        assert!(!NtStatus::DEVICE_BUSY.is_success());
        assert!(!NtStatus::IO_DEVICE_ERROR.is_success());
        assert!(NtStatus::new(0x4000_0000).is_success());
        assert_eq!(
            std::format!("{:?}", NtStatus::REVISION_MISMATCH),
            "REVISION_MISMATCH"
        );
        assert_eq!(
            std::format!("{:?}", NtStatus::new(0xC000_0022)),
            "NtStatus(0xc0000022)"
        );
    }

    #[test]
    fn srb_status_to_nt_status() {
        let s = |status: SrbStatus| status.nt_status();
        assert_eq!(s(SrbStatus::SUCCESS), NtStatus::SUCCESS);
        assert_eq!(s(SrbStatus::BUSY), NtStatus::DEVICE_BUSY);
        assert_eq!(s(SrbStatus::INVALID_LUN), NtStatus::DEVICE_DOES_NOT_EXIST);
        assert_eq!(s(SrbStatus::NO_HBA), NtStatus::DEVICE_DOES_NOT_EXIST);
        assert_eq!(s(SrbStatus::COMMAND_TIMEOUT), NtStatus::IO_TIMEOUT);
        assert_eq!(
            s(SrbStatus::SELECTION_TIMEOUT),
            NtStatus::DEVICE_NOT_CONNECTED
        );
        assert_eq!(
            s(SrbStatus::BAD_SRB_BLOCK_LENGTH),
            NtStatus::INVALID_DEVICE_REQUEST
        );
        assert_eq!(s(SrbStatus::DATA_OVERRUN), NtStatus::BUFFER_OVERFLOW);
        assert_eq!(s(SrbStatus::REQUEST_FLUSHED), NtStatus::UNSUCCESSFUL);
        assert_eq!(s(SrbStatus::ABORTED), NtStatus::CANCELLED);
        assert_eq!(s(SrbStatus::ERROR), NtStatus::IO_DEVICE_ERROR);
        // Unnamed codes, and flag bits in a hand-built value, do not panic.
        assert_eq!(s(SrbStatus::new(0x3F)), NtStatus::IO_DEVICE_ERROR);
        assert_eq!(s(SrbStatus::new(0xC1)), NtStatus::SUCCESS);
        // The status byte keeps the code and the flags apart.
        let b = SrbStatusAndFlags::from_bits(0xC4);
        assert_eq!(b.status(), SrbStatus::ERROR);
        assert!(b.autosense_valid() && b.queue_frozen());
        let b = SrbStatusAndFlags::new()
            .with_status(SrbStatus::ERROR)
            .with_autosense_valid(true);
        assert_eq!(b.into_bits(), 0x84);
    }

    #[test]
    fn flag_words() {
        let f = SrbFlags::new().with_data_in(true).with_data_out(true);
        assert_eq!(f.into_bits().get(), 0xC0);
        assert_eq!(
            SrbFlags::new()
                .with_disable_autosense(true)
                .into_bits()
                .get(),
            0x20
        );
        assert_eq!(
            SrbFlags::new()
                .with_class_driver_reserved(0xF)
                .into_bits()
                .get(),
            0xF000_0000
        );
        assert_eq!(
            SrbFlags::new()
                .with_dont_start_next_packet(true)
                .into_bits()
                .get(),
            0x0080_0000
        );
        assert_eq!(
            OfferFlags::new().with_emulated_ide(true).into_bits().get(),
            2
        );
        assert_eq!(
            ChannelFlags::new().with_multi_channel(true).as_bytes(),
            &[1, 0, 0, 0]
        );
        assert_eq!(
            PacketFlags::new().with_request_completion(true).as_bytes(),
            &[1, 0, 0, 0]
        );
    }

    #[test]
    fn operation_codes_round_trip() {
        for (i, op) in Operation::KNOWN.iter().enumerate() {
            assert_eq!(op.get(), i as u32 + 1);
            assert!(op.min_payload_len(RequestSize::Win8).is_some());
        }
        assert_eq!(Operation::KNOWN.len(), 14);
        for raw in [0, 15, 0x100, u32::MAX] {
            let op = Operation::new(raw);
            assert_eq!(op.get(), raw);
            assert_eq!(op.name(), None);
            assert_eq!(op.min_payload_len(RequestSize::Win8), None);
        }
        let h = PacketHeader::new(
            Operation::EXECUTE_SRB,
            PacketFlags::new().with_request_completion(true),
            NtStatus::SUCCESS,
        );
        assert_eq!(h.operation, Operation::EXECUTE_SRB);
        assert_eq!(h.as_bytes(), &[3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn parse_execute_srb_win8() {
        let r = sample_request();
        let bytes = packet(3, r.as_bytes());
        let (h, body) = parse_packet(&bytes, RequestSize::Win8).unwrap();
        assert_eq!(h.operation, Operation::EXECUTE_SRB);
        assert!(h.flags.request_completion());
        let Body::ExecuteSrb(got) = body else {
            panic!("{body:?}")
        };
        assert_eq!(got, r);
        assert_eq!(got.cdb(), Some(&[0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0][..]));
        assert_eq!(got.time_out_value.get(), 60);
    }

    #[test]
    fn parse_execute_srb_pre_win8() {
        let r = sample_request();
        let bytes = packet(3, r.wire_bytes(RequestSize::PreWin8));
        let (_, body) = parse_packet(&bytes, RequestSize::PreWin8).unwrap();
        // The short form keeps the first 0x24 bytes and zeroes the rest.
        let mut short = ScsiRequest::new_zeroed();
        short.as_mut_bytes()[..SCSI_REQUEST_LEN_PRE_WIN8]
            .copy_from_slice(&r.as_bytes()[..SCSI_REQUEST_LEN_PRE_WIN8]);
        assert_eq!(body, Body::ExecuteSrb(short));
        // A full-size request on a pre-Win8 channel keeps its Win8 fields.
        let bytes = packet(3, r.as_bytes());
        let (_, body) = parse_packet(&bytes, RequestSize::PreWin8).unwrap();
        assert_eq!(body, Body::ExecuteSrb(r));
        // Trailing bytes past the payload union are ignored.
        let mut long = bytes.clone();
        long.extend_from_slice(&[0xEE; 16]);
        assert_eq!(
            parse_packet(&long, RequestSize::Win8).unwrap().1,
            Body::ExecuteSrb(r)
        );
    }

    #[test]
    fn parse_cdb_length_too_large() {
        let mut r = sample_request();
        r.cdb_length = 17;
        let bytes = packet(3, r.as_bytes());
        let Body::ExecuteSrb(got) = parse_packet(&bytes, RequestSize::Win8).unwrap().1 else {
            unreachable!()
        };
        assert_eq!(got.cdb(), None);
        r.cdb_length = 16;
        assert_eq!(r.cdb().map(<[u8]>::len), Some(16));
    }

    #[test]
    fn parse_complete_io() {
        let mut r = sample_request();
        r.srb_status = SrbStatusAndFlags::new()
            .with_status(SrbStatus::ERROR)
            .with_autosense_valid(true);
        r.scsi_status = ScsiStatus::CHECK_CONDITION;
        let mut bytes = packet(1, r.wire_bytes(RequestSize::Win8));
        bytes[8..12].copy_from_slice(&NtStatus::IO_DEVICE_ERROR.get().to_le_bytes());
        let (h, body) = parse_packet(&bytes, RequestSize::Win8).unwrap();
        assert_eq!(h.status, NtStatus::IO_DEVICE_ERROR);
        let Body::Completion(c) = body else {
            panic!("{body:?}")
        };
        assert_eq!(c.scsi_request(), r);

        let props = ChannelProperties {
            max_transfer_bytes: U32::new(0x40000),
            ..ChannelProperties::new_zeroed()
        };
        let mut payload = [0u8; SCSI_REQUEST_LEN_PRE_WIN8];
        payload[..24].copy_from_slice(props.as_bytes());
        let bytes = packet(1, &payload);
        let Body::Completion(c) = parse_packet(&bytes, RequestSize::PreWin8).unwrap().1 else {
            unreachable!()
        };
        assert_eq!(c.channel_properties(), props);
        assert_eq!(c.protocol_version().major_minor, Version::new(0));
    }

    #[test]
    fn parse_negotiation_packets() {
        for size in [RequestSize::PreWin8, RequestSize::Win8] {
            let pv = ProtocolVersion::new(Version::BLUE);
            let (h, body) = parse_packet(&packet(9, pv.as_bytes()), size).unwrap();
            assert_eq!(h.operation, Operation::QUERY_PROTOCOL_VERSION);
            assert_eq!(body, Body::ProtocolVersion(pv));

            let props = ChannelProperties {
                maximum_sub_channel_count: U16::new(7),
                flags: ChannelFlags::new().with_multi_channel(true),
                max_transfer_bytes: U32::new(0x40000),
                ..ChannelProperties::new_zeroed()
            };
            let (_, body) = parse_packet(&packet(10, props.as_bytes()), size).unwrap();
            assert_eq!(body, Body::ChannelProperties(props));

            let (_, body) = parse_packet(&packet(13, &5u16.to_le_bytes()), size).unwrap();
            assert_eq!(body, Body::CreateSubChannels(5));

            let wwn = FcWwnPacket {
                primary_active: 1,
                primary_port_wwn: [1; 8],
                secondary_node_wwn: [4; 8],
                ..FcWwnPacket::new_zeroed()
            };
            let (_, body) = parse_packet(&packet(12, wwn.as_bytes()), size).unwrap();
            assert_eq!(body, Body::FcHbaData(wwn));

            for op in [2, 4, 5, 6, 7, 8, 11, 14] {
                let (h, body) = parse_packet(&packet(op, &[]), size).unwrap();
                assert_eq!(h.operation, Operation::new(op));
                assert_eq!(body, Body::None);
                // Padded to a full packet, as Linux sends them.
                let padded = packet(op, &[0; PACKET_PAYLOAD_LEN]);
                assert_eq!(parse_packet(&padded, size).unwrap().1, Body::None);
            }
        }
    }

    #[test]
    fn parse_short_header() {
        for len in 0..PACKET_HEADER_LEN {
            let bytes = [3u8; PACKET_HEADER_LEN];
            assert_eq!(
                parse_packet(&bytes[..len], RequestSize::Win8),
                Err(ParseError::TruncatedHeader { len })
            );
        }
    }

    #[test]
    fn parse_unknown_operation() {
        for op in [0u32, 15, 0x100, u32::MAX] {
            assert_eq!(
                parse_packet(&packet(op, &[0; 64]), RequestSize::Win8),
                Err(ParseError::UnknownOperation(Operation::new(op)))
            );
        }
    }

    #[test]
    fn parse_short_bodies() {
        let full = [0u8; PACKET_PAYLOAD_LEN];
        for size in [RequestSize::PreWin8, RequestSize::Win8] {
            for &op in Operation::KNOWN {
                let needed = op.min_payload_len(size).unwrap();
                for actual in 0..needed {
                    assert_eq!(
                        parse_packet(&packet(op.get(), &full[..actual]), size),
                        Err(ParseError::TruncatedBody {
                            operation: op,
                            needed,
                            actual
                        }),
                        "{op:?} {size:?}"
                    );
                }
                assert!(parse_packet(&packet(op.get(), &full[..needed]), size).is_ok());
            }
        }
        // A pre-Win8-sized SRB on a Win8 channel is too short.
        let r = sample_request();
        assert_eq!(
            parse_packet(
                &packet(3, r.wire_bytes(RequestSize::PreWin8)),
                RequestSize::Win8
            ),
            Err(ParseError::TruncatedBody {
                operation: Operation::EXECUTE_SRB,
                needed: 0x34,
                actual: 0x24
            })
        );
    }

    #[test]
    fn parse_errors_display() {
        let e = ParseError::TruncatedBody {
            operation: Operation::EXECUTE_SRB,
            needed: 0x34,
            actual: 3,
        };
        assert!(e.to_string().contains("EXECUTE_SRB"));
        assert!(
            ParseError::UnknownOperation(Operation::new(99))
                .to_string()
                .contains("0x63")
        );
        assert!(
            ParseError::TruncatedHeader { len: 2 }
                .to_string()
                .contains('2')
        );
    }

    #[test]
    fn parse_random_bytes_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
        let mut next = || rng.u64(..);
        let mut buf = [0u8; 96];
        let mut ok = 0usize;
        for i in 0..20_000 {
            let len = (next() % buf.len() as u64) as usize;
            for b in &mut buf[..len] {
                *b = next() as u8;
            }
            // Half the time, force a known operation so bodies get parsed.
            if i % 2 == 0 && len >= 4 {
                let op = (next() % 16) as u32;
                buf[..4].copy_from_slice(&op.to_le_bytes());
            }
            let size = if i % 3 == 0 {
                RequestSize::PreWin8
            } else {
                RequestSize::Win8
            };
            match parse_packet(&buf[..len], size) {
                Ok((h, body)) => {
                    ok += 1;
                    assert!(h.operation.name().is_some());
                    if let Body::ExecuteSrb(r) = body {
                        let _ = r.cdb();
                    }
                }
                Err(ParseError::TruncatedHeader { len: l }) => assert!(l < PACKET_HEADER_LEN),
                Err(ParseError::UnknownOperation(op)) => assert!(op.name().is_none()),
                Err(ParseError::TruncatedBody { needed, actual, .. }) => assert!(actual < needed),
            }
        }
        assert!(ok > 0);
    }
}
