//! Admin and NVM command opcodes and the command-specific dwords of each
//! command parastor's controller and driver exchange (NVMe Base 2.0 §5,
//! NVM Command Set 1.0 §3).
//!
//! Each `#[bitfield(u32)]` here is one command dword; read it from an
//! [`Sqe`](super::queue::Sqe) with `from_bits(sqe.cdw10.get())`.

use bitfield_struct::bitfield;
use zerocopy::little_endian::{U32, U64};

use crate::open_enum::open_enum;

open_enum! {
    /// Admin command opcodes.
    pub struct AdminOpcode(u8) {
        /// Delete I/O Submission Queue.
        DELETE_IO_SQ = 0x00,
        /// Create I/O Submission Queue.
        CREATE_IO_SQ = 0x01,
        /// Get Log Page.
        GET_LOG_PAGE = 0x02,
        /// Delete I/O Completion Queue.
        DELETE_IO_CQ = 0x04,
        /// Create I/O Completion Queue.
        CREATE_IO_CQ = 0x05,
        /// Identify.
        IDENTIFY = 0x06,
        /// Abort.
        ABORT = 0x08,
        /// Set Features.
        SET_FEATURES = 0x09,
        /// Get Features.
        GET_FEATURES = 0x0A,
        /// Asynchronous Event Request.
        ASYNC_EVENT_REQUEST = 0x0C,
        /// Namespace Management.
        NAMESPACE_MANAGEMENT = 0x0D,
        /// Firmware Commit.
        FIRMWARE_COMMIT = 0x10,
        /// Firmware Image Download.
        FIRMWARE_IMAGE_DOWNLOAD = 0x11,
        /// Device Self-test.
        DEVICE_SELF_TEST = 0x14,
        /// Namespace Attachment.
        NAMESPACE_ATTACHMENT = 0x15,
        /// Keep Alive.
        KEEP_ALIVE = 0x18,
        /// Directive Send.
        DIRECTIVE_SEND = 0x19,
        /// Directive Receive.
        DIRECTIVE_RECEIVE = 0x1A,
        /// Virtualization Management.
        VIRTUALIZATION_MANAGEMENT = 0x1C,
        /// NVMe-MI Send.
        NVME_MI_SEND = 0x1D,
        /// NVMe-MI Receive.
        NVME_MI_RECEIVE = 0x1E,
        /// Capacity Management.
        CAPACITY_MANAGEMENT = 0x20,
        /// Lockdown.
        LOCKDOWN = 0x24,
        /// Doorbell Buffer Config.
        DOORBELL_BUFFER_CONFIG = 0x7C,
        /// Fabrics commands.
        FABRICS = 0x7F,
        /// Format NVM.
        FORMAT_NVM = 0x80,
        /// Security Send.
        SECURITY_SEND = 0x81,
        /// Security Receive.
        SECURITY_RECEIVE = 0x82,
        /// Sanitize.
        SANITIZE = 0x84,
        /// Get LBA Status.
        GET_LBA_STATUS = 0x86,
    }
}

open_enum! {
    /// NVM command set I/O opcodes.
    pub struct NvmOpcode(u8) {
        /// Flush.
        FLUSH = 0x00,
        /// Write.
        WRITE = 0x01,
        /// Read.
        READ = 0x02,
        /// Write Uncorrectable.
        WRITE_UNCORRECTABLE = 0x04,
        /// Compare.
        COMPARE = 0x05,
        /// Write Zeroes.
        WRITE_ZEROES = 0x08,
        /// Dataset Management.
        DATASET_MANAGEMENT = 0x09,
        /// Verify.
        VERIFY = 0x0C,
        /// Reservation Register.
        RESERVATION_REGISTER = 0x0D,
        /// Reservation Report.
        RESERVATION_REPORT = 0x0E,
        /// Reservation Acquire.
        RESERVATION_ACQUIRE = 0x11,
        /// Reservation Release.
        RESERVATION_RELEASE = 0x15,
        /// Copy.
        COPY = 0x19,
    }
}

impl NvmOpcode {
    /// The data direction bits 1:0 of an opcode encode: 01b host to
    /// controller, 10b controller to host (11b bidirectional).
    pub const fn transfers_to_controller(self) -> bool {
        self.get() & 1 != 0
    }

    /// Whether the opcode moves data from the controller to the host.
    pub const fn transfers_to_host(self) -> bool {
        self.get() & 2 != 0
    }
}

// ---------------------------------------------------------------------------
// Identify
// ---------------------------------------------------------------------------

open_enum! {
    /// Identify CNS: which data structure to return.
    pub struct Cns(u8) {
        /// Identify Namespace (NVM command set) for NSID.
        NAMESPACE = 0x00,
        /// Identify Controller.
        CONTROLLER = 0x01,
        /// Active Namespace ID list (NSIDs greater than NSID).
        ACTIVE_NAMESPACES = 0x02,
        /// Namespace Identification Descriptor list for NSID.
        NS_DESCRIPTORS = 0x03,
        /// NVM Set List.
        NVM_SET_LIST = 0x04,
        /// I/O Command Set specific Identify Namespace (by CSI).
        CSI_NAMESPACE = 0x05,
        /// I/O Command Set specific Identify Controller (by CSI).
        CSI_CONTROLLER = 0x06,
        /// Active Namespace ID list for an I/O command set (by CSI).
        CSI_ACTIVE_NAMESPACES = 0x07,
        /// I/O Command Set Independent Identify Namespace.
        INDEPENDENT_NAMESPACE = 0x08,
        /// Allocated Namespace ID list.
        ALLOCATED_NAMESPACES = 0x10,
        /// Identify Namespace for an allocated NSID.
        ALLOCATED_NAMESPACE = 0x11,
        /// Controller list attached to NSID.
        NAMESPACE_CONTROLLERS = 0x12,
        /// Controller list in the subsystem.
        CONTROLLER_LIST = 0x13,
        /// Primary Controller Capabilities.
        PRIMARY_CONTROLLER_CAPS = 0x14,
        /// Secondary Controller list.
        SECONDARY_CONTROLLERS = 0x15,
        /// Namespace Granularity list.
        NAMESPACE_GRANULARITY = 0x16,
        /// UUID list.
        UUID_LIST = 0x17,
        /// I/O Command Set data structure.
        COMMAND_SET = 0x1C,
    }
}

open_enum! {
    /// Command Set Identifier (CSI).
    pub struct CommandSetId(u8) {
        /// NVM command set.
        NVM = 0x00,
        /// Key Value command set.
        KEY_VALUE = 0x01,
        /// Zoned Namespace command set.
        ZONED = 0x02,
    }
}

/// Identify CDW10.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct IdentifyCdw10 {
    /// Controller or Namespace Structure.
    #[bits(8)]
    pub cns: Cns,
    /// Reserved.
    pub reserved: u8,
    /// Controller Identifier (for controller-list CNS values).
    pub cntid: u16,
}

/// Identify CDW11.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct IdentifyCdw11 {
    /// CNS Specific Identifier (e.g. an NVM set or domain id).
    pub cns_specific_id: u16,
    /// Reserved.
    pub reserved: u8,
    /// Command Set Identifier.
    #[bits(8)]
    pub csi: CommandSetId,
}

// ---------------------------------------------------------------------------
// Queue management
// ---------------------------------------------------------------------------

/// CDW10 of Create I/O SQ / Create I/O CQ: queue id and 0's based size.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct CreateQueueCdw10 {
    /// Queue Identifier.
    pub qid: u16,
    /// Queue Size, 0's based.
    pub qsize: u16,
}

/// CDW11 of Create I/O Completion Queue.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct CreateCqCdw11 {
    /// Physically Contiguous.
    pub pc: bool,
    /// Interrupts Enabled.
    pub ien: bool,
    /// Reserved.
    #[bits(14)]
    pub reserved: u16,
    /// Interrupt Vector (MSI-X table entry).
    pub iv: u16,
}

open_enum! {
    /// Create I/O SQ QPRIO: the queue's priority class for weighted round
    /// robin.
    pub struct QueuePriority(u8) {
        /// Urgent.
        URGENT = 0b00,
        /// High.
        HIGH = 0b01,
        /// Medium.
        MEDIUM = 0b10,
        /// Low.
        LOW = 0b11,
    }
}

/// CDW11 of Create I/O Submission Queue.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct CreateSqCdw11 {
    /// Physically Contiguous.
    pub pc: bool,
    /// Queue Priority.
    #[bits(2)]
    pub qprio: QueuePriority,
    /// Reserved.
    #[bits(13)]
    pub reserved: u16,
    /// Completion Queue Identifier this SQ posts to.
    pub cqid: u16,
}

/// CDW10 of Delete I/O SQ / Delete I/O CQ.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct DeleteQueueCdw10 {
    /// Queue Identifier.
    pub qid: u16,
    /// Reserved.
    pub reserved: u16,
}

// ---------------------------------------------------------------------------
// Get Log Page
// ---------------------------------------------------------------------------

/// Get Log Page CDW10.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct GetLogPageCdw10 {
    /// Log Page Identifier (see [`super::log`] when present).
    pub lid: u8,
    /// Log Specific Field.
    #[bits(7)]
    pub lsp: u8,
    /// Retain Asynchronous Event.
    pub rae: bool,
    /// Number of Dwords Lower (0's based with NUMDU).
    pub numdl: u16,
}

/// Get Log Page CDW11.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct GetLogPageCdw11 {
    /// Number of Dwords Upper.
    pub numdu: u16,
    /// Log Specific Identifier.
    pub lsi: u16,
}

/// Get Log Page CDW14.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct GetLogPageCdw14 {
    /// UUID Index.
    #[bits(7)]
    pub uuid_index: u8,
    /// Reserved.
    #[bits(16)]
    pub reserved: u16,
    /// Offset Type: the offset (CDW12/13) is an index, not bytes.
    pub ot: bool,
    /// Command Set Identifier.
    #[bits(8)]
    pub csi: CommandSetId,
}

/// The transfer length of a Get Log Page in bytes: `(NUMDU:NUMDL + 1) * 4`.
pub const fn log_page_len(cdw10: GetLogPageCdw10, cdw11: GetLogPageCdw11) -> u64 {
    ((cdw11.numdu() as u64) << 16 | cdw10.numdl() as u64).wrapping_add(1) * 4
}

// ---------------------------------------------------------------------------
// Features
// ---------------------------------------------------------------------------

open_enum! {
    /// Get Features SEL: which value to return.
    pub struct FeatureSelect(u8) {
        /// Current.
        CURRENT = 0b000,
        /// Default.
        DEFAULT = 0b001,
        /// Saved.
        SAVED = 0b010,
        /// Supported capabilities.
        SUPPORTED_CAPABILITIES = 0b011,
    }
}

/// Set Features CDW10.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct SetFeaturesCdw10 {
    /// Feature Identifier.
    pub fid: u8,
    /// Reserved.
    #[bits(23)]
    pub reserved: u32,
    /// Save.
    pub sv: bool,
}

/// Get Features CDW10.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct GetFeaturesCdw10 {
    /// Feature Identifier.
    pub fid: u8,
    /// Select.
    #[bits(3)]
    pub sel: FeatureSelect,
    /// Reserved.
    #[bits(21)]
    pub reserved: u32,
}

// ---------------------------------------------------------------------------
// Abort, AER
// ---------------------------------------------------------------------------

/// Abort CDW10.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct AbortCdw10 {
    /// Submission Queue Identifier of the command to abort.
    pub sqid: u16,
    /// Command Identifier of the command to abort.
    pub cid: u16,
}

/// Abort completion Dword 0: bit 0 clear means the command was aborted.
pub const ABORT_DW0_NOT_ABORTED: u32 = 1;

open_enum! {
    /// Asynchronous event type (AER completion DW0 bits 2:0).
    pub struct AsyncEventType(u8) {
        /// Error status.
        ERROR = 0b000,
        /// SMART / health status.
        SMART_HEALTH = 0b001,
        /// Notice.
        NOTICE = 0b010,
        /// Immediate.
        IMMEDIATE = 0b011,
        /// One-shot.
        ONE_SHOT = 0b100,
        /// I/O command set specific status.
        IO_COMMAND_SET = 0b110,
        /// Vendor specific.
        VENDOR_SPECIFIC = 0b111,
    }
}

/// Asynchronous Event Request completion Dword 0.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct AsyncEventDw0 {
    /// Asynchronous Event Type.
    #[bits(3)]
    pub aet: AsyncEventType,
    /// Reserved.
    #[bits(5)]
    pub reserved0: u8,
    /// Asynchronous Event Information (meaning per type).
    pub aei: u8,
    /// Log Page Identifier to read to clear the event.
    pub lid: u8,
    /// Reserved.
    pub reserved1: u8,
}

// ---------------------------------------------------------------------------
// NVM I/O commands
// ---------------------------------------------------------------------------

/// CDW12 of Read, Write, Compare, Write Zeroes and Verify. Bits that
/// only some of those commands define are named for their meaning; a
/// command that leaves a bit reserved simply ignores it.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct RwCdw12 {
    /// Number of Logical Blocks, 0's based.
    pub nlb: u16,
    /// Reserved.
    #[bits(4)]
    pub reserved0: u8,
    /// Directive Type (Write).
    #[bits(4)]
    pub dtype: u8,
    /// Storage Tag Check.
    pub stc: bool,
    /// Deallocate (Write Zeroes only).
    pub deac: bool,
    /// Protection Information field.
    #[bits(4)]
    pub prinfo: u8,
    /// Force Unit Access (Read, Write, Compare, Write Zeroes).
    pub fua: bool,
    /// Limited Retry.
    pub lr: bool,
}

impl RwCdw12 {
    /// The number of logical blocks (1..=65536).
    pub const fn blocks(self) -> u32 {
        self.nlb() as u32 + 1
    }
}

/// CDW13 of Read and Write: dataset management hints.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct RwCdw13 {
    /// Dataset Management hints (access frequency, latency, sequential,
    /// incompressible).
    pub dsm: u8,
    /// Reserved.
    pub reserved: u8,
    /// Directive Specific (Write).
    pub dspec: u16,
}

/// Dataset Management CDW10.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct DsmCdw10 {
    /// Number of Ranges, 0's based.
    pub nr: u8,
    /// Reserved.
    #[bits(24)]
    pub reserved: u32,
}

/// Dataset Management CDW11: the attributes.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct DsmCdw11 {
    /// Integral Dataset for Read.
    pub idr: bool,
    /// Integral Dataset for Write.
    pub idw: bool,
    /// Deallocate.
    pub ad: bool,
    /// Reserved.
    #[bits(29)]
    pub reserved: u32,
}

/// The largest number of Dataset Management ranges (NR is 8 bits, 0's
/// based).
pub const DSM_MAX_RANGES: usize = 256;

wire_layout! {
    /// A Dataset Management range entry.
    pub struct DsmRange {
        /// Context Attributes.
        pub context_attributes: U32,
        /// Length in logical blocks.
        pub nlb: U32,
        /// Starting LBA.
        pub slba: U64,
    }
    size 16
}

// ---------------------------------------------------------------------------
// Reservations
// ---------------------------------------------------------------------------

open_enum! {
    /// Reservation type (RTYPE).
    pub struct ReservationType(u8) {
        /// No reservation held (Report only).
        NONE = 0,
        /// Write Exclusive.
        WRITE_EXCLUSIVE = 1,
        /// Exclusive Access.
        EXCLUSIVE_ACCESS = 2,
        /// Write Exclusive - Registrants Only.
        WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 3,
        /// Exclusive Access - Registrants Only.
        EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 4,
        /// Write Exclusive - All Registrants.
        WRITE_EXCLUSIVE_ALL_REGISTRANTS = 5,
        /// Exclusive Access - All Registrants.
        EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 6,
    }
}

open_enum! {
    /// Reservation Register action (RREGA).
    pub struct RegisterAction(u8) {
        /// Register a reservation key.
        REGISTER = 0b000,
        /// Unregister a reservation key.
        UNREGISTER = 0b001,
        /// Replace a reservation key.
        REPLACE = 0b010,
    }
}

open_enum! {
    /// Change Persist Through Power Loss state (CPTPL).
    pub struct ChangePtpl(u8) {
        /// No change.
        NO_CHANGE = 0b00,
        /// Set PTPL to 0: reservations are released on power loss.
        CLEAR = 0b10,
        /// Set PTPL to 1: reservations persist through power loss.
        SET = 0b11,
    }
}

/// Reservation Register CDW10.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct ReservationRegisterCdw10 {
    /// Reservation Register Action.
    #[bits(3)]
    pub rrega: RegisterAction,
    /// Ignore Existing Key.
    pub iekey: bool,
    /// Dispersed Namespace Reservation Support.
    pub disnsrs: bool,
    /// Reserved.
    #[bits(25)]
    pub reserved: u32,
    /// Change Persist Through Power Loss State.
    #[bits(2)]
    pub cptpl: ChangePtpl,
}

open_enum! {
    /// Reservation Acquire action (RACQA).
    pub struct AcquireAction(u8) {
        /// Acquire.
        ACQUIRE = 0b000,
        /// Preempt.
        PREEMPT = 0b001,
        /// Preempt and Abort.
        PREEMPT_AND_ABORT = 0b010,
    }
}

/// Reservation Acquire CDW10.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct ReservationAcquireCdw10 {
    /// Reservation Acquire Action.
    #[bits(3)]
    pub racqa: AcquireAction,
    /// Ignore Existing Key.
    pub iekey: bool,
    /// Dispersed Namespace Reservation Support.
    pub disnsrs: bool,
    /// Reserved.
    #[bits(3)]
    pub reserved0: u8,
    /// Reservation Type.
    #[bits(8)]
    pub rtype: ReservationType,
    /// Reserved.
    pub reserved1: u16,
}

open_enum! {
    /// Reservation Release action (RRELA).
    pub struct ReleaseAction(u8) {
        /// Release.
        RELEASE = 0b000,
        /// Clear.
        CLEAR = 0b001,
    }
}

/// Reservation Release CDW10.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct ReservationReleaseCdw10 {
    /// Reservation Release Action.
    #[bits(3)]
    pub rrela: ReleaseAction,
    /// Ignore Existing Key.
    pub iekey: bool,
    /// Dispersed Namespace Reservation Support.
    pub disnsrs: bool,
    /// Reserved.
    #[bits(3)]
    pub reserved0: u8,
    /// Reservation Type.
    #[bits(8)]
    pub rtype: ReservationType,
    /// Reserved.
    pub reserved1: u16,
}

/// Reservation Report CDW11.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct ReservationReportCdw11 {
    /// Extended Data Structure: 128-bit host identifiers.
    pub eds: bool,
    /// Reserved.
    #[bits(31)]
    pub reserved: u32,
}

wire_layout! {
    /// Reservation Register data: current and new reservation keys.
    pub struct ReservationRegisterData {
        /// Current Reservation Key.
        pub crkey: U64,
        /// New Reservation Key.
        pub nrkey: U64,
    }
    size 16
}

wire_layout! {
    /// Reservation Acquire data: current key and the key to preempt.
    pub struct ReservationAcquireData {
        /// Current Reservation Key.
        pub crkey: U64,
        /// Preempt Reservation Key.
        pub prkey: U64,
    }
    size 16
}

wire_layout! {
    /// Reservation Release data: the current key.
    pub struct ReservationReleaseData {
        /// Current Reservation Key.
        pub crkey: U64,
    }
    size 8
}

wire_layout! {
    /// Reservation Report: the reservation status header (24 bytes,
    /// followed by [`RegisteredController`] entries).
    pub struct ReservationStatus {
        /// Generation: counts Register/Preempt changes.
        pub generation: U32,
        /// Reservation Type held.
        pub rtype: ReservationType,
        /// Number of Registered Controllers.
        pub regctl: zerocopy::little_endian::U16,
        /// Reserved.
        pub reserved0: [u8; 2],
        /// Persist Through Power Loss State.
        pub ptpls: u8,
        /// Reserved.
        pub reserved1: [u8; 14],
    }
    size 24
}

wire_layout! {
    /// Reservation Report: a registered controller (8-byte host id).
    pub struct RegisteredController {
        /// Controller ID (0xFFFF if dynamic and not known).
        pub cntlid: zerocopy::little_endian::U16,
        /// Reservation Status: bit 0 holds the reservation.
        pub rcsts: u8,
        /// Reserved.
        pub reserved: [u8; 5],
        /// Host Identifier.
        pub hostid: U64,
        /// Reservation Key.
        pub rkey: U64,
    }
    size 24
}

wire_layout! {
    /// Reservation Report with EDS: a registered controller (128-bit
    /// host id). The extended status header is [`ReservationStatus`]
    /// followed by 40 reserved bytes.
    pub struct RegisteredControllerExtended {
        /// Controller ID.
        pub cntlid: zerocopy::little_endian::U16,
        /// Reservation Status: bit 0 holds the reservation.
        pub rcsts: u8,
        /// Reserved.
        pub reserved0: [u8; 5],
        /// Reservation Key.
        pub rkey: U64,
        /// Host Identifier (128 bits).
        pub hostid: [u8; 16],
        /// Reserved.
        pub reserved1: [u8; 32],
    }
    size 64
}

/// The size of the extended reservation status header (EDS = 1).
pub const RESERVATION_STATUS_EXTENDED_LEN: usize = 64;

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn opcodes_and_direction() {
        assert_eq!(AdminOpcode::IDENTIFY.get(), 0x06);
        assert_eq!(AdminOpcode::DOORBELL_BUFFER_CONFIG.get(), 0x7C);
        assert!(NvmOpcode::WRITE.transfers_to_controller());
        assert!(NvmOpcode::READ.transfers_to_host());
        assert!(!NvmOpcode::FLUSH.transfers_to_host());
        assert!(NvmOpcode::COMPARE.transfers_to_controller());
        assert_eq!(NvmOpcode::RESERVATION_RELEASE.get(), 0x15);
        assert_eq!(NvmOpcode::new(0x7E).name(), None);
    }

    #[test]
    fn queue_dwords() {
        // Create I/O CQ 1 of 1024 entries, contiguous, interrupts on, vector 3.
        let cdw10 = CreateQueueCdw10::from_bits(0x03FF_0001);
        assert_eq!(cdw10.qid(), 1);
        assert_eq!(cdw10.qsize(), 1023);
        let cq = CreateCqCdw11::from_bits(0x0003_0003);
        assert!(cq.pc() && cq.ien());
        assert_eq!(cq.iv(), 3);
        let sq = CreateSqCdw11::from_bits(0x0002_0005);
        assert!(sq.pc());
        assert_eq!(sq.qprio(), QueuePriority::MEDIUM);
        assert_eq!(sq.cqid(), 2);
    }

    #[test]
    fn identify_and_log_dwords() {
        let c = IdentifyCdw10::from_bits(0x0005_0003);
        assert_eq!(c.cns(), Cns::NS_DESCRIPTORS);
        assert_eq!(c.cntid(), 5);
        assert_eq!(
            IdentifyCdw11::from_bits(0x0200_0000).csi(),
            CommandSetId::ZONED
        );
        // LID 2 (SMART), RAE, NUMDL 127 → 512 bytes.
        let c10 = GetLogPageCdw10::from_bits(0x007F_8002);
        assert_eq!(c10.lid(), 2);
        assert!(c10.rae());
        assert_eq!(c10.lsp(), 0);
        assert_eq!(log_page_len(c10, GetLogPageCdw11::new()), 512);
        let huge = log_page_len(
            GetLogPageCdw10::new().with_numdl(0xFFFF),
            GetLogPageCdw11::new().with_numdu(0xFFFF),
        );
        assert_eq!(huge, (1u64 << 32) * 4);
        assert!(GetLogPageCdw14::from_bits(1 << 23).ot());
    }

    #[test]
    fn features_abort_aer_dwords() {
        let s = SetFeaturesCdw10::from_bits(0x8000_0007);
        assert_eq!(s.fid(), 7);
        assert!(s.sv());
        let g = GetFeaturesCdw10::from_bits(0x0000_0307);
        assert_eq!(g.sel(), FeatureSelect::SUPPORTED_CAPABILITIES);
        let a = AbortCdw10::from_bits(0x0010_0002);
        assert_eq!((a.sqid(), a.cid()), (2, 0x10));
        // Notice, namespace attribute changed (AEI 0), clear with log 4.
        let e = AsyncEventDw0::new()
            .with_aet(AsyncEventType::NOTICE)
            .with_lid(0x04);
        assert_eq!(e.into_bits(), 0x0004_0002);
    }

    #[test]
    fn io_dwords() {
        // NLB 7, FUA, LR.
        let c = RwCdw12::from_bits(0xC000_0007);
        assert_eq!(c.blocks(), 8);
        assert!(c.fua() && c.lr());
        assert!(RwCdw12::from_bits(1 << 25).deac());
        assert_eq!(RwCdw12::from_bits(0xFFFF).blocks(), 65536);
        assert!(DsmCdw11::from_bits(4).ad());
        assert_eq!(DsmCdw10::from_bits(0xFF).nr(), 255);
        assert_eq!(offset_of!(DsmRange, nlb), 4);
        assert_eq!(offset_of!(DsmRange, slba), 8);
    }

    #[test]
    fn reservation_dwords_and_data() {
        let r = ReservationRegisterCdw10::from_bits(0xC000_000A);
        assert_eq!(r.rrega(), RegisterAction::REPLACE);
        assert!(r.iekey());
        assert_eq!(r.cptpl(), ChangePtpl::SET);
        let a = ReservationAcquireCdw10::from_bits(0x0000_0302);
        assert_eq!(a.racqa(), AcquireAction::PREEMPT_AND_ABORT);
        assert_eq!(a.rtype(), ReservationType::WRITE_EXCLUSIVE_REGISTRANTS_ONLY);
        let l = ReservationReleaseCdw10::from_bits(0x0000_0101);
        assert_eq!(l.rrela(), ReleaseAction::CLEAR);
        assert_eq!(l.rtype(), ReservationType::WRITE_EXCLUSIVE);
        assert_eq!(offset_of!(ReservationStatus, rtype), 4);
        assert_eq!(offset_of!(ReservationStatus, regctl), 5);
        assert_eq!(offset_of!(ReservationStatus, ptpls), 9);
        assert_eq!(offset_of!(RegisteredController, hostid), 8);
        assert_eq!(offset_of!(RegisteredController, rkey), 16);
        assert_eq!(offset_of!(RegisteredControllerExtended, rkey), 8);
        assert_eq!(offset_of!(RegisteredControllerExtended, hostid), 16);
        assert_eq!(offset_of!(ReservationAcquireData, prkey), 8);
    }
}
