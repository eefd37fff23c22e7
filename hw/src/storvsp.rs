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
//! and the same meaning on any host. Parsing ([`parse_packet`]) is pure,
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

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

// ---------------------------------------------------------------------------
// Interface GUIDs
// ---------------------------------------------------------------------------

/// A GUID in its Windows/VMBus wire encoding: the first three groups
/// little-endian, the last eight bytes in order (16 bytes).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct Guid {
    /// First group (`xxxxxxxx-....`), little-endian.
    pub data1: U32,
    /// Second group, little-endian.
    pub data2: U16,
    /// Third group, little-endian.
    pub data3: U16,
    /// Last two groups, byte by byte.
    pub data4: [u8; 8],
}

const _: () = assert!(core::mem::size_of::<Guid>() == 16);

impl Guid {
    /// The GUID written `data1-data2-data3-data4[0..2]-data4[2..8]`.
    pub const fn new(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> Self {
        Self {
            data1: U32::new(data1),
            data2: U16::new(data2),
            data3: U16::new(data3),
            data4,
        }
    }
}

impl fmt::Display for Guid {
    /// The canonical lowercase form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.data4;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            self.data1.get(),
            self.data2.get(),
            self.data3.get(),
            d[0],
            d[1],
            d[2],
            d[3],
            d[4],
            d[5],
            d[6],
            d[7]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

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
pub mod offer_flags {
    /// The device is removable (`STORAGE_CHANNEL_REMOVABLE_FLAG`).
    pub const REMOVABLE: u32 = 0x1;
    /// The channel accelerates an emulated IDE device
    /// (`STORAGE_CHANNEL_EMULATED_IDE_FLAG`; OpenVMM's `IDE_DEVICE`).
    pub const EMULATED_IDE: u32 = 0x2;
}

// ---------------------------------------------------------------------------
// Protocol versions
// ---------------------------------------------------------------------------

/// Builds a protocol version word: `major` in the high byte, `minor` in the
/// low byte (Linux `VMSTOR_PROTO_VERSION`).
pub const fn version(major: u8, minor: u8) -> u16 {
    ((major as u16) << 8) | minor as u16
}

/// Windows Server 2008 (protocol 2.0).
pub const VERSION_WIN6: u16 = version(2, 0);
/// Windows 7 (protocol 4.2).
pub const VERSION_WIN7: u16 = version(4, 2);
/// Windows 8 (protocol 5.1): first version with the `0x34`-byte request.
pub const VERSION_WIN8: u16 = version(5, 1);
/// Windows 8.1, "Blue" (protocol 6.0).
pub const VERSION_BLUE: u16 = version(6, 0);
/// Windows 10, "Threshold" (protocol 6.2). Known, but not accepted by
/// StorVSP (see [`is_supported`]).
pub const VERSION_WIN10: u16 = version(6, 2);

/// The versions StorVSP accepts in `QUERY_PROTOCOL_VERSION`, newest first.
pub const SUPPORTED_VERSIONS: [u16; 4] = [VERSION_BLUE, VERSION_WIN8, VERSION_WIN7, VERSION_WIN6];

/// Whether StorVSP accepts `version` in `QUERY_PROTOCOL_VERSION`.
///
/// Only the exact versions Win6, Win7, Win8 and Blue are accepted; any
/// other word — including Win10 / Threshold and minor variants — is
/// answered with [`NtStatus::REVISION_MISMATCH`] (OpenVMM catalog §5.1).
pub const fn is_supported(version: u16) -> bool {
    matches!(
        version,
        VERSION_WIN6 | VERSION_WIN7 | VERSION_WIN8 | VERSION_BLUE
    )
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
    /// from [`VERSION_WIN8`] on, [`Self::PreWin8`] below it.
    pub const fn for_version(version: u16) -> Self {
        if version >= VERSION_WIN8 {
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

/// An NT status code as carried in [`PacketHeader::status`].
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(transparent)]
pub struct NtStatus(pub U32);

const _: () = assert!(core::mem::size_of::<NtStatus>() == 4);

impl NtStatus {
    /// `STATUS_SUCCESS`.
    pub const SUCCESS: Self = Self::new(0x0000_0000);
    /// `STATUS_BUFFER_OVERFLOW` (a warning): SRB data overrun.
    pub const BUFFER_OVERFLOW: Self = Self::new(0x8000_0005);
    /// `STATUS_DEVICE_BUSY` (a warning): SRB busy.
    pub const DEVICE_BUSY: Self = Self::new(0x8000_0011);
    /// `STATUS_UNSUCCESSFUL`.
    pub const UNSUCCESSFUL: Self = Self::new(0xC000_0001);
    /// `STATUS_INVALID_PARAMETER`: e.g. too many sub-channels requested.
    pub const INVALID_PARAMETER: Self = Self::new(0xC000_000D);
    /// `STATUS_INVALID_DEVICE_REQUEST`.
    pub const INVALID_DEVICE_REQUEST: Self = Self::new(0xC000_0010);
    /// `STATUS_REVISION_MISMATCH`: unsupported protocol version.
    pub const REVISION_MISMATCH: Self = Self::new(0xC000_0059);
    /// `STATUS_DEVICE_NOT_CONNECTED`.
    pub const DEVICE_NOT_CONNECTED: Self = Self::new(0xC000_009D);
    /// `STATUS_IO_TIMEOUT`.
    pub const IO_TIMEOUT: Self = Self::new(0xC000_00B5);
    /// `STATUS_DEVICE_DOES_NOT_EXIST`.
    pub const DEVICE_DOES_NOT_EXIST: Self = Self::new(0xC000_00C0);
    /// `STATUS_CANCELLED`.
    pub const CANCELLED: Self = Self::new(0xC000_0120);
    /// `STATUS_INVALID_DEVICE_STATE`: a packet out of negotiation order.
    pub const INVALID_DEVICE_STATE: Self = Self::new(0xC000_0184);
    /// `STATUS_IO_DEVICE_ERROR`.
    pub const IO_DEVICE_ERROR: Self = Self::new(0xC000_0185);

    /// The status with raw value `value`.
    pub const fn new(value: u32) -> Self {
        Self(U32::new(value))
    }

    /// The raw value.
    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// `NT_SUCCESS`: success or informational severity (high bit clear).
    pub fn is_success(self) -> bool {
        self.get() & 0x8000_0000 == 0
    }

    /// The `STATUS_*` name of a status StorVSP uses, if it is one.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::SUCCESS => "STATUS_SUCCESS",
            Self::BUFFER_OVERFLOW => "STATUS_BUFFER_OVERFLOW",
            Self::DEVICE_BUSY => "STATUS_DEVICE_BUSY",
            Self::UNSUCCESSFUL => "STATUS_UNSUCCESSFUL",
            Self::INVALID_PARAMETER => "STATUS_INVALID_PARAMETER",
            Self::INVALID_DEVICE_REQUEST => "STATUS_INVALID_DEVICE_REQUEST",
            Self::REVISION_MISMATCH => "STATUS_REVISION_MISMATCH",
            Self::DEVICE_NOT_CONNECTED => "STATUS_DEVICE_NOT_CONNECTED",
            Self::IO_TIMEOUT => "STATUS_IO_TIMEOUT",
            Self::DEVICE_DOES_NOT_EXIST => "STATUS_DEVICE_DOES_NOT_EXIST",
            Self::CANCELLED => "STATUS_CANCELLED",
            Self::INVALID_DEVICE_STATE => "STATUS_INVALID_DEVICE_STATE",
            Self::IO_DEVICE_ERROR => "STATUS_IO_DEVICE_ERROR",
            _ => return None,
        })
    }
}

impl fmt::Debug for NtStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "NtStatus({:#010x})", self.get()),
        }
    }
}

// ---------------------------------------------------------------------------
// SRB status and flags
// ---------------------------------------------------------------------------

/// SRB status byte ([`ScsiRequest::srb_status`]): the two high bits are
/// flags, the low six bits a status code (Windows `srb.h`; the subset Linux
/// tests for is in `storvsc_drv.c`).
pub mod srb_status {
    /// Flag: sense data in the payload is valid.
    pub const AUTOSENSE_VALID: u8 = 0x80;
    /// Flag: the LUN's queue is frozen.
    pub const QUEUE_FROZEN: u8 = 0x40;
    /// Mask of the status code bits.
    pub const CODE_MASK: u8 = 0x3F;

    /// Request in progress.
    pub const PENDING: u8 = 0x00;
    /// Completed successfully.
    pub const SUCCESS: u8 = 0x01;
    /// Aborted.
    pub const ABORTED: u8 = 0x02;
    /// Abort failed.
    pub const ABORT_FAILED: u8 = 0x03;
    /// Completed with an error (see SCSI status / sense).
    pub const ERROR: u8 = 0x04;
    /// Device busy.
    pub const BUSY: u8 = 0x05;
    /// Invalid request.
    pub const INVALID_REQUEST: u8 = 0x06;
    /// Invalid path id.
    pub const INVALID_PATH_ID: u8 = 0x07;
    /// No device.
    pub const NO_DEVICE: u8 = 0x08;
    /// Timed out.
    pub const TIMEOUT: u8 = 0x09;
    /// Selection timed out.
    pub const SELECTION_TIMEOUT: u8 = 0x0A;
    /// Command timed out.
    pub const COMMAND_TIMEOUT: u8 = 0x0B;
    /// Message rejected.
    pub const MESSAGE_REJECTED: u8 = 0x0D;
    /// Bus reset.
    pub const BUS_RESET: u8 = 0x0E;
    /// Parity error.
    pub const PARITY_ERROR: u8 = 0x0F;
    /// REQUEST SENSE failed.
    pub const REQUEST_SENSE_FAILED: u8 = 0x10;
    /// No host bus adapter.
    pub const NO_HBA: u8 = 0x11;
    /// Data overrun or underrun.
    pub const DATA_OVERRUN: u8 = 0x12;
    /// Unexpected bus free.
    pub const UNEXPECTED_BUS_FREE: u8 = 0x13;
    /// Phase sequence failure.
    pub const PHASE_SEQUENCE_FAILURE: u8 = 0x14;
    /// Bad SRB block length.
    pub const BAD_SRB_BLOCK_LENGTH: u8 = 0x15;
    /// Request flushed.
    pub const REQUEST_FLUSHED: u8 = 0x16;
    /// Invalid LUN.
    pub const INVALID_LUN: u8 = 0x20;
    /// Invalid target id.
    pub const INVALID_TARGET_ID: u8 = 0x21;
    /// Bad function.
    pub const BAD_FUNCTION: u8 = 0x22;
    /// Error recovery.
    pub const ERROR_RECOVERY: u8 = 0x23;
    /// Not powered.
    pub const NOT_POWERED: u8 = 0x24;
    /// Link down.
    pub const LINK_DOWN: u8 = 0x25;
    /// Internal error.
    pub const INTERNAL_ERROR: u8 = 0x30;

    /// The status code of an SRB status byte, without the flag bits.
    pub const fn code(status: u8) -> u8 {
        status & CODE_MASK
    }
}

/// The NT status StorVSP puts in a `COMPLETE_IO` header for an SRB status
/// (flags ignored), per OpenVMM catalog §5.3.
pub const fn nt_status_for_srb_status(status: u8) -> NtStatus {
    use srb_status as s;
    match s::code(status) {
        s::SUCCESS => NtStatus::SUCCESS,
        s::BUSY => NtStatus::DEVICE_BUSY,
        s::INVALID_LUN | s::INVALID_TARGET_ID | s::NO_DEVICE | s::NO_HBA => {
            NtStatus::DEVICE_DOES_NOT_EXIST
        }
        s::TIMEOUT | s::COMMAND_TIMEOUT => NtStatus::IO_TIMEOUT,
        s::SELECTION_TIMEOUT => NtStatus::DEVICE_NOT_CONNECTED,
        s::BAD_FUNCTION | s::BAD_SRB_BLOCK_LENGTH => NtStatus::INVALID_DEVICE_REQUEST,
        s::DATA_OVERRUN => NtStatus::BUFFER_OVERFLOW,
        s::REQUEST_FLUSHED => NtStatus::UNSUCCESSFUL,
        s::ABORTED => NtStatus::CANCELLED,
        _ => NtStatus::IO_DEVICE_ERROR,
    }
}

/// SRB flags ([`ScsiRequest::srb_flags`], Windows 8 and later), Linux
/// `SRB_FLAGS_*`.
pub mod srb_flags {
    /// Queue action field is valid.
    pub const QUEUE_ACTION_ENABLE: u32 = 0x0000_0002;
    /// Disable disconnect.
    pub const DISABLE_DISCONNECT: u32 = 0x0000_0004;
    /// Disable synchronous transfer.
    pub const DISABLE_SYNCH_TRANSFER: u32 = 0x0000_0008;
    /// Bypass a frozen queue.
    pub const BYPASS_FROZEN_QUEUE: u32 = 0x0000_0010;
    /// Do not return sense data.
    pub const DISABLE_AUTOSENSE: u32 = 0x0000_0020;
    /// Data moves from the device to the guest.
    pub const DATA_IN: u32 = 0x0000_0040;
    /// Data moves from the guest to the device.
    pub const DATA_OUT: u32 = 0x0000_0080;
    /// No data transfer.
    pub const NO_DATA_TRANSFER: u32 = 0x0000_0000;
    /// Direction unspecified (both bits).
    pub const UNSPECIFIED_DIRECTION: u32 = DATA_IN | DATA_OUT;
    /// Do not freeze the queue on error.
    pub const NO_QUEUE_FREEZE: u32 = 0x0000_0100;
    /// Adapter cache enabled.
    pub const ADAPTER_CACHE_ENABLE: u32 = 0x0000_0200;
    /// Free the sense buffer.
    pub const FREE_SENSE_BUFFER: u32 = 0x0000_0400;
    /// Part of D3 processing.
    pub const D3_PROCESSING: u32 = 0x0000_0800;
    /// Request is active.
    pub const IS_ACTIVE: u32 = 0x0001_0000;
    /// Allocated from zone.
    pub const ALLOCATED_FROM_ZONE: u32 = 0x0002_0000;
    /// SG list from pool.
    pub const SGLIST_FROM_POOL: u32 = 0x0004_0000;
    /// Bypass a locked queue.
    pub const BYPASS_LOCKED_QUEUE: u32 = 0x0008_0000;
    /// Do not keep the device awake.
    pub const NO_KEEP_AWAKE: u32 = 0x0010_0000;
    /// Port driver allocated the sense buffer.
    pub const PORT_DRIVER_ALLOCSENSE: u32 = 0x0020_0000;
    /// Sense buffer holds a port number.
    pub const PORT_DRIVER_SENSEHASPORT: u32 = 0x0040_0000;
    /// Do not start the next packet.
    pub const DONT_START_NEXT_PACKET: u32 = 0x0080_0000;
    /// Reserved for the port driver.
    pub const PORT_DRIVER_RESERVED: u32 = 0x0F00_0000;
    /// Reserved for the class driver.
    pub const CLASS_DRIVER_RESERVED: u32 = 0xF000_0000;
}

/// [`ScsiRequest::queue_tag`] value meaning "untagged" (`SP_UNTAGGED`).
pub const QUEUE_TAG_UNTAGGED: u8 = 0xFF;
/// [`ScsiRequest::queue_action`] for a simple tagged request
/// (`SRB_SIMPLE_TAG_REQUEST`).
pub const QUEUE_ACTION_SIMPLE_TAG: u8 = 0x20;

/// [`ScsiRequest::data_in`] values (Linux `enum storvsc_request_type`).
pub mod data_direction {
    /// Guest to device (a write).
    pub const WRITE: u8 = 0;
    /// Device to guest (a read).
    pub const READ: u8 = 1;
    /// No or unknown data direction.
    pub const UNKNOWN: u8 = 2;
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

/// [`PacketHeader::flags`] bit asking the other side for a completion
/// (`REQUEST_COMPLETION_FLAG`).
pub const FLAG_REQUEST_COMPLETION: u32 = 0x1;

/// The header of every StorVSP packet (12 bytes): Linux `struct
/// vstor_packet` up to its payload union; OpenVMM `Packet { operation,
/// flags, status }`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct PacketHeader {
    /// Offset 0: the operation ([`Operation`] as a raw value).
    pub operation: U32,
    /// Offset 4: flags ([`FLAG_REQUEST_COMPLETION`]).
    pub flags: U32,
    /// Offset 8: status, meaningful in completions.
    pub status: NtStatus,
}

const _: () = assert!(core::mem::size_of::<PacketHeader>() == PACKET_HEADER_LEN);

impl PacketHeader {
    /// A header for `operation` with `flags` and `status`.
    pub const fn new(operation: Operation, flags: u32, status: NtStatus) -> Self {
        Self {
            operation: U32::new(operation as u32),
            flags: U32::new(flags),
            status,
        }
    }

    /// The operation, if it is a known one.
    pub fn operation(&self) -> Option<Operation> {
        Operation::from_raw(self.operation.get())
    }
}

/// StorVSP operation codes (`VSTOR_OPERATION_*`; OpenVMM catalog §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Operation {
    /// Completion of a request; payload as the completed request's.
    CompleteIo = 1,
    /// Device removal notification.
    RemoveDevice = 2,
    /// Execute a SCSI request block; payload [`ScsiRequest`].
    ExecuteSrb = 3,
    /// Reset a LUN.
    ResetLun = 4,
    /// Reset the adapter.
    ResetAdapter = 5,
    /// Reset the bus.
    ResetBus = 6,
    /// Start of the negotiation.
    BeginInitialization = 7,
    /// End of the negotiation.
    EndInitialization = 8,
    /// Protocol version negotiation; payload [`ProtocolVersion`].
    QueryProtocolVersion = 9,
    /// Channel properties query; payload [`ChannelProperties`].
    QueryProperties = 10,
    /// Host to guest: rescan the bus (LUNs added or removed).
    EnumerateBus = 11,
    /// Fibre Channel HBA data; payload [`FcWwnPacket`].
    FcHbaData = 12,
    /// Create sub-channels (Windows 8 and later); payload a `u16` count.
    CreateSubChannels = 13,
    /// Event notification (OpenVMM; not used by Linux).
    EventNotification = 14,
}

impl Operation {
    /// Every operation, in code order.
    pub const ALL: [Self; 14] = [
        Self::CompleteIo,
        Self::RemoveDevice,
        Self::ExecuteSrb,
        Self::ResetLun,
        Self::ResetAdapter,
        Self::ResetBus,
        Self::BeginInitialization,
        Self::EndInitialization,
        Self::QueryProtocolVersion,
        Self::QueryProperties,
        Self::EnumerateBus,
        Self::FcHbaData,
        Self::CreateSubChannels,
        Self::EventNotification,
    ];

    /// The operation with code `raw`, if there is one.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::CompleteIo,
            2 => Self::RemoveDevice,
            3 => Self::ExecuteSrb,
            4 => Self::ResetLun,
            5 => Self::ResetAdapter,
            6 => Self::ResetBus,
            7 => Self::BeginInitialization,
            8 => Self::EndInitialization,
            9 => Self::QueryProtocolVersion,
            10 => Self::QueryProperties,
            11 => Self::EnumerateBus,
            12 => Self::FcHbaData,
            13 => Self::CreateSubChannels,
            14 => Self::EventNotification,
            _ => return None,
        })
    }

    /// The minimum payload length (after the header) that [`parse_packet`]
    /// requires for this operation on a channel using `size`.
    ///
    /// `EXECUTE_SRB` and `COMPLETE_IO` carry a request of the negotiated
    /// size. The negotiation-phase operations need only their own payload:
    /// they are exchanged before (or while) the request size is settled,
    /// and guests differ in how much padding they send with them.
    pub const fn min_payload_len(self, size: RequestSize) -> usize {
        match self {
            Self::ExecuteSrb | Self::CompleteIo => size.request_len(),
            Self::QueryProtocolVersion => core::mem::size_of::<ProtocolVersion>(),
            Self::QueryProperties => core::mem::size_of::<ChannelProperties>(),
            Self::CreateSubChannels => core::mem::size_of::<U16>(),
            Self::FcHbaData => core::mem::size_of::<FcWwnPacket>(),
            Self::RemoveDevice
            | Self::ResetLun
            | Self::ResetAdapter
            | Self::ResetBus
            | Self::BeginInitialization
            | Self::EndInitialization
            | Self::EnumerateBus
            | Self::EventNotification => 0,
        }
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
    /// Offset 0x02: SRB status ([`srb_status`]).
    pub srb_status: u8,
    /// Offset 0x03: SCSI status byte.
    pub scsi_status: u8,
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
    /// Offset 0x0A: data direction ([`data_direction`]).
    pub data_in: u8,
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
    /// Offset 0x27 (Windows 8+): queue action ([`QUEUE_ACTION_SIMPLE_TAG`]).
    pub queue_action: u8,
    /// Offset 0x28 (Windows 8+): SRB flags ([`srb_flags`]).
    pub srb_flags: U32,
    /// Offset 0x2C (Windows 8+): time-out value in seconds.
    pub time_out_value: U32,
    /// Offset 0x30 (Windows 8+): queue sort key.
    pub queue_sort_key: U32,
}

const _: () = assert!(core::mem::size_of::<ScsiRequest>() == SCSI_REQUEST_LEN_WIN8);
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

/// [`ChannelProperties::flags`] bit: the channel supports sub-channels
/// (`STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL`).
pub const CHANNEL_PROPERTY_MULTI_CHANNEL: u32 = 0x1;

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
    /// Offset 8: flags ([`CHANNEL_PROPERTY_MULTI_CHANNEL`]).
    pub flags: U32,
    /// Offset 12: the largest transfer per request, in bytes.
    pub max_transfer_bytes: U32,
    /// Offset 16: reserved.
    pub reserved2: U64,
}

const _: () = assert!(core::mem::size_of::<ChannelProperties>() == 24);

/// The `QUERY_PROTOCOL_VERSION` payload (4 bytes): Linux `struct
/// vmstorage_protocol_version`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ProtocolVersion {
    /// Offset 0: major (high byte) and minor (low byte) version.
    pub major_minor: U16,
    /// Offset 2: build revision; informational, guests send 0.
    pub revision: U16,
}

const _: () = assert!(core::mem::size_of::<ProtocolVersion>() == 4);

impl ProtocolVersion {
    /// A version message for `major_minor` with revision 0.
    pub const fn new(major_minor: u16) -> Self {
        Self {
            major_minor: U16::new(major_minor),
            revision: U16::new(0),
        }
    }

    /// The major version.
    pub fn major(&self) -> u8 {
        self.major_minor.get().to_be_bytes()[0]
    }

    /// The minor version.
    pub fn minor(&self) -> u8 {
        self.major_minor.get().to_be_bytes()[1]
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

const _: () = assert!(core::mem::size_of::<FcWwnPacket>() == 36);
const _: () = assert!(core::mem::size_of::<FcWwnPacket>() <= PACKET_PAYLOAD_LEN);

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

const _: () = assert!(core::mem::size_of::<CompletionPayload>() == PACKET_PAYLOAD_LEN);

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
    /// The operation code is not one of [`Operation`].
    UnknownOperation(u32),
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
            Self::UnknownOperation(op) => write!(f, "unknown storvsp operation {op:#x}"),
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
/// the operation is known ([`ParseError::UnknownOperation`]), and the
/// payload is at least [`Operation::min_payload_len`]
/// ([`ParseError::TruncatedBody`]) — for `EXECUTE_SRB` and `COMPLETE_IO`,
/// the negotiated request size. Longer packets are accepted and the excess
/// ignored beyond the full payload union (`0x34` bytes): a pre-Windows 8
/// channel still reads the Windows 8 fields if the guest sent them, as some
/// Linux versions send full-size requests regardless of the version
/// (OpenVMM catalog §5.2).
///
/// Flags and status are returned as sent; validating them against the
/// protocol state is the frontend's job.
pub fn parse_packet(bytes: &[u8], size: RequestSize) -> Result<(PacketHeader, Body), ParseError> {
    let (header, payload) = PacketHeader::read_from_prefix(bytes)
        .map_err(|_| ParseError::TruncatedHeader { len: bytes.len() })?;
    let raw_op = header.operation.get();
    let operation = Operation::from_raw(raw_op).ok_or(ParseError::UnknownOperation(raw_op))?;
    let needed = operation.min_payload_len(size);
    if payload.len() < needed {
        return Err(ParseError::TruncatedBody {
            operation,
            needed,
            actual: payload.len(),
        });
    }
    let body = match operation {
        Operation::ExecuteSrb => Body::ExecuteSrb(read_padded(payload)),
        Operation::CompleteIo => Body::Completion(read_padded(payload)),
        Operation::QueryProtocolVersion => Body::ProtocolVersion(read_padded(payload)),
        Operation::QueryProperties => Body::ChannelProperties(read_padded(payload)),
        Operation::CreateSubChannels => Body::CreateSubChannels(read_padded::<U16>(payload).get()),
        Operation::FcHbaData => Body::FcHbaData(read_padded(payload)),
        Operation::RemoveDevice
        | Operation::ResetLun
        | Operation::ResetAdapter
        | Operation::ResetBus
        | Operation::BeginInitialization
        | Operation::EndInitialization
        | Operation::EnumerateBus
        | Operation::EventNotification => Body::None,
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
        v.extend_from_slice(&FLAG_REQUEST_COMPLETION.to_le_bytes());
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
        r.data_in = data_direction::READ;
        r.data_transfer_length = U32::new(4096);
        r.payload[..10].copy_from_slice(&[0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0]);
        r.queue_tag = QUEUE_TAG_UNTAGGED;
        r.queue_action = QUEUE_ACTION_SIMPLE_TAG;
        r.srb_flags = U32::new(srb_flags::DATA_IN | srb_flags::DISABLE_SYNCH_TRANSFER);
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
        assert_eq!(VERSION_WIN6, 0x0200);
        assert_eq!(VERSION_WIN7, 0x0402);
        assert_eq!(VERSION_WIN8, 0x0501);
        assert_eq!(VERSION_BLUE, 0x0600);
        assert_eq!(VERSION_WIN10, 0x0602);
        for v in SUPPORTED_VERSIONS {
            assert!(is_supported(v));
        }
        assert!(!is_supported(VERSION_WIN10));
        assert!(!is_supported(0));
        assert!(!is_supported(0x0401));
        assert_eq!(RequestSize::for_version(VERSION_WIN6).request_len(), 0x24);
        assert_eq!(RequestSize::for_version(VERSION_WIN7).request_len(), 0x24);
        assert_eq!(RequestSize::for_version(VERSION_WIN8).request_len(), 0x34);
        assert_eq!(RequestSize::for_version(VERSION_BLUE).request_len(), 0x34);
        assert_eq!(RequestSize::for_version(VERSION_WIN10).request_len(), 0x34);
        assert_eq!(RequestSize::PreWin8.sense_buffer_len(), 0x12);
        assert_eq!(RequestSize::Win8.sense_buffer_len(), 0x14);
        assert_eq!(RequestSize::Win8.packet_len(), 0x40);
        let pv = ProtocolVersion::new(VERSION_WIN7);
        assert_eq!((pv.major(), pv.minor()), (4, 2));
        assert_eq!(pv.as_bytes(), &[0x02, 0x04, 0, 0]);
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
        assert!(NtStatus::SUCCESS.is_success());
        assert!(!NtStatus::DEVICE_BUSY.is_success());
        assert!(!NtStatus::IO_DEVICE_ERROR.is_success());
        assert_eq!(
            std::format!("{:?}", NtStatus::REVISION_MISMATCH),
            "STATUS_REVISION_MISMATCH"
        );
        assert_eq!(
            std::format!("{:?}", NtStatus::new(0xC000_0022)),
            "NtStatus(0xc0000022)"
        );
    }

    #[test]
    fn srb_status_to_nt_status() {
        use srb_status as s;
        assert_eq!(nt_status_for_srb_status(s::SUCCESS), NtStatus::SUCCESS);
        assert_eq!(
            nt_status_for_srb_status(s::SUCCESS | s::AUTOSENSE_VALID),
            NtStatus::SUCCESS
        );
        assert_eq!(nt_status_for_srb_status(s::BUSY), NtStatus::DEVICE_BUSY);
        assert_eq!(
            nt_status_for_srb_status(s::INVALID_LUN),
            NtStatus::DEVICE_DOES_NOT_EXIST
        );
        assert_eq!(
            nt_status_for_srb_status(s::SELECTION_TIMEOUT),
            NtStatus::DEVICE_NOT_CONNECTED
        );
        assert_eq!(
            nt_status_for_srb_status(s::DATA_OVERRUN),
            NtStatus::BUFFER_OVERFLOW
        );
        assert_eq!(nt_status_for_srb_status(s::ABORTED), NtStatus::CANCELLED);
        assert_eq!(
            nt_status_for_srb_status(s::ERROR | s::AUTOSENSE_VALID),
            NtStatus::IO_DEVICE_ERROR
        );
        assert_eq!(s::code(0xC4), s::ERROR);
    }

    #[test]
    fn operation_codes_round_trip() {
        for (i, op) in Operation::ALL.iter().enumerate() {
            assert_eq!(*op as u32, i as u32 + 1);
            assert_eq!(Operation::from_raw(*op as u32), Some(*op));
        }
        assert_eq!(Operation::from_raw(0), None);
        assert_eq!(Operation::from_raw(15), None);
        let h = PacketHeader::new(
            Operation::ExecuteSrb,
            FLAG_REQUEST_COMPLETION,
            NtStatus::SUCCESS,
        );
        assert_eq!(h.operation(), Some(Operation::ExecuteSrb));
        assert_eq!(h.as_bytes(), &[3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn parse_execute_srb_win8() {
        let r = sample_request();
        let bytes = packet(3, r.as_bytes());
        let (h, body) = parse_packet(&bytes, RequestSize::Win8).unwrap();
        assert_eq!(h.operation(), Some(Operation::ExecuteSrb));
        assert_eq!(h.flags.get(), FLAG_REQUEST_COMPLETION);
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
        r.srb_status = srb_status::ERROR | srb_status::AUTOSENSE_VALID;
        r.scsi_status = 0x02;
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
        assert_eq!(c.protocol_version().major_minor.get(), 0);
    }

    #[test]
    fn parse_negotiation_packets() {
        for size in [RequestSize::PreWin8, RequestSize::Win8] {
            let pv = ProtocolVersion::new(VERSION_BLUE);
            let (h, body) = parse_packet(&packet(9, pv.as_bytes()), size).unwrap();
            assert_eq!(h.operation(), Some(Operation::QueryProtocolVersion));
            assert_eq!(body, Body::ProtocolVersion(pv));

            let props = ChannelProperties {
                maximum_sub_channel_count: U16::new(7),
                flags: U32::new(CHANNEL_PROPERTY_MULTI_CHANNEL),
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
                assert_eq!(h.operation.get(), op);
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
                Err(ParseError::UnknownOperation(op))
            );
        }
    }

    #[test]
    fn parse_short_bodies() {
        let full = [0u8; PACKET_PAYLOAD_LEN];
        for size in [RequestSize::PreWin8, RequestSize::Win8] {
            for op in Operation::ALL {
                let needed = op.min_payload_len(size);
                for actual in 0..needed {
                    assert_eq!(
                        parse_packet(&packet(op as u32, &full[..actual]), size),
                        Err(ParseError::TruncatedBody {
                            operation: op,
                            needed,
                            actual
                        }),
                        "{op:?} {size:?}"
                    );
                }
                assert!(parse_packet(&packet(op as u32, &full[..needed]), size).is_ok());
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
                operation: Operation::ExecuteSrb,
                needed: 0x34,
                actual: 0x24
            })
        );
    }

    #[test]
    fn parse_errors_display() {
        let e = ParseError::TruncatedBody {
            operation: Operation::ExecuteSrb,
            needed: 0x34,
            actual: 3,
        };
        assert!(e.to_string().contains("ExecuteSrb"));
        assert!(
            ParseError::UnknownOperation(99)
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
                    assert!(h.operation().is_some());
                    if let Body::ExecuteSrb(r) = body {
                        let _ = r.cdb();
                    }
                }
                Err(ParseError::TruncatedHeader { len: l }) => assert!(l < PACKET_HEADER_LEN),
                Err(ParseError::UnknownOperation(op)) => assert!(Operation::from_raw(op).is_none()),
                Err(ParseError::TruncatedBody { needed, actual, .. }) => assert!(actual < needed),
            }
        }
        assert!(ok > 0);
    }
}
