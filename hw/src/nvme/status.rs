//! Completion status: status code types and the generic, command-specific,
//! media and path status codes (NVMe Base 2.0 §4.6.1.2, NVM Command Set
//! 1.0 §4.1.1).

use bitfield_struct::bitfield;

use crate::open_enum::open_enum;

open_enum! {
    /// Status Code Type (SCT): how to read the status code.
    pub struct StatusCodeType(u8) {
        /// Generic command status ([`GenericStatus`]).
        GENERIC = 0x0,
        /// Command specific status ([`CommandSpecificStatus`]).
        COMMAND_SPECIFIC = 0x1,
        /// Media and data integrity errors ([`MediaStatus`]).
        MEDIA = 0x2,
        /// Path related status ([`PathStatus`]).
        PATH = 0x3,
        /// Vendor specific.
        VENDOR_SPECIFIC = 0x7,
    }
}

open_enum! {
    /// Generic command status codes (SCT 0). `0x80..=0xBF` are I/O
    /// command set specific (the NVM command set's are listed here).
    pub struct GenericStatus(u8) {
        /// Successful Completion.
        SUCCESS = 0x00,
        /// Invalid Command Opcode.
        INVALID_COMMAND_OPCODE = 0x01,
        /// Invalid Field in Command.
        INVALID_FIELD_IN_COMMAND = 0x02,
        /// Command ID Conflict.
        COMMAND_ID_CONFLICT = 0x03,
        /// Data Transfer Error.
        DATA_TRANSFER_ERROR = 0x04,
        /// Commands Aborted due to Power Loss Notification.
        ABORTED_POWER_LOSS = 0x05,
        /// Internal Error.
        INTERNAL_ERROR = 0x06,
        /// Command Abort Requested.
        ABORT_REQUESTED = 0x07,
        /// Command Aborted due to SQ Deletion.
        ABORTED_SQ_DELETION = 0x08,
        /// Command Aborted due to Failed Fused Command.
        ABORTED_FAILED_FUSED = 0x09,
        /// Command Aborted due to Missing Fused Command.
        ABORTED_MISSING_FUSED = 0x0A,
        /// Invalid Namespace or Format.
        INVALID_NAMESPACE_OR_FORMAT = 0x0B,
        /// Command Sequence Error.
        COMMAND_SEQUENCE_ERROR = 0x0C,
        /// Invalid SGL Segment Descriptor.
        INVALID_SGL_SEGMENT_DESCRIPTOR = 0x0D,
        /// Invalid Number of SGL Descriptors.
        INVALID_NUMBER_OF_SGL_DESCRIPTORS = 0x0E,
        /// Data SGL Length Invalid.
        DATA_SGL_LENGTH_INVALID = 0x0F,
        /// Metadata SGL Length Invalid.
        METADATA_SGL_LENGTH_INVALID = 0x10,
        /// SGL Descriptor Type Invalid.
        SGL_DESCRIPTOR_TYPE_INVALID = 0x11,
        /// Invalid Use of Controller Memory Buffer.
        INVALID_USE_OF_CMB = 0x12,
        /// PRP Offset Invalid.
        PRP_OFFSET_INVALID = 0x13,
        /// Atomic Write Unit Exceeded.
        ATOMIC_WRITE_UNIT_EXCEEDED = 0x14,
        /// Operation Denied.
        OPERATION_DENIED = 0x15,
        /// SGL Offset Invalid.
        SGL_OFFSET_INVALID = 0x16,
        /// Host Identifier Inconsistent Format.
        HOST_ID_INCONSISTENT_FORMAT = 0x18,
        /// Keep Alive Timer Expired.
        KEEP_ALIVE_TIMER_EXPIRED = 0x19,
        /// Keep Alive Timeout Invalid.
        KEEP_ALIVE_TIMEOUT_INVALID = 0x1A,
        /// Command Aborted due to Preempt and Abort.
        ABORTED_PREEMPT_AND_ABORT = 0x1B,
        /// Sanitize Failed.
        SANITIZE_FAILED = 0x1C,
        /// Sanitize In Progress.
        SANITIZE_IN_PROGRESS = 0x1D,
        /// SGL Data Block Granularity Invalid.
        SGL_DATA_BLOCK_GRANULARITY_INVALID = 0x1E,
        /// Command Not Supported for Queue in CMB.
        NOT_SUPPORTED_FOR_QUEUE_IN_CMB = 0x1F,
        /// Namespace is Write Protected.
        NAMESPACE_WRITE_PROTECTED = 0x20,
        /// Command Interrupted.
        COMMAND_INTERRUPTED = 0x21,
        /// Transient Transport Error.
        TRANSIENT_TRANSPORT_ERROR = 0x22,
        /// Command Prohibited by Command and Feature Lockdown.
        PROHIBITED_BY_LOCKDOWN = 0x23,
        /// Admin Command Media Not Ready.
        ADMIN_COMMAND_MEDIA_NOT_READY = 0x24,
        /// LBA Out of Range (NVM command set).
        LBA_OUT_OF_RANGE = 0x80,
        /// Capacity Exceeded.
        CAPACITY_EXCEEDED = 0x81,
        /// Namespace Not Ready.
        NAMESPACE_NOT_READY = 0x82,
        /// Reservation Conflict.
        RESERVATION_CONFLICT = 0x83,
        /// Format In Progress.
        FORMAT_IN_PROGRESS = 0x84,
    }
}

open_enum! {
    /// Command specific status codes (SCT 1). `0x80..=0xBF` are I/O
    /// command set specific (the NVM command set's are listed here).
    pub struct CommandSpecificStatus(u8) {
        /// Completion Queue Invalid (Create I/O SQ).
        COMPLETION_QUEUE_INVALID = 0x00,
        /// Invalid Queue Identifier.
        INVALID_QUEUE_IDENTIFIER = 0x01,
        /// Invalid Queue Size.
        INVALID_QUEUE_SIZE = 0x02,
        /// Abort Command Limit Exceeded.
        ABORT_COMMAND_LIMIT_EXCEEDED = 0x03,
        /// Asynchronous Event Request Limit Exceeded.
        ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED = 0x05,
        /// Invalid Firmware Slot.
        INVALID_FIRMWARE_SLOT = 0x06,
        /// Invalid Firmware Image.
        INVALID_FIRMWARE_IMAGE = 0x07,
        /// Invalid Interrupt Vector.
        INVALID_INTERRUPT_VECTOR = 0x08,
        /// Invalid Log Page.
        INVALID_LOG_PAGE = 0x09,
        /// Invalid Format.
        INVALID_FORMAT = 0x0A,
        /// Firmware Activation Requires Conventional Reset.
        FW_ACTIVATION_REQUIRES_CONVENTIONAL_RESET = 0x0B,
        /// Invalid Queue Deletion (e.g. a CQ that still has SQs).
        INVALID_QUEUE_DELETION = 0x0C,
        /// Feature Identifier Not Saveable.
        FEATURE_NOT_SAVEABLE = 0x0D,
        /// Feature Not Changeable.
        FEATURE_NOT_CHANGEABLE = 0x0E,
        /// Feature Not Namespace Specific.
        FEATURE_NOT_NAMESPACE_SPECIFIC = 0x0F,
        /// Firmware Activation Requires NVM Subsystem Reset.
        FW_ACTIVATION_REQUIRES_NSSR = 0x10,
        /// Firmware Activation Requires Controller Level Reset.
        FW_ACTIVATION_REQUIRES_RESET = 0x11,
        /// Firmware Activation Requires Maximum Time Violation.
        FW_ACTIVATION_REQUIRES_MAX_TIME_VIOLATION = 0x12,
        /// Firmware Activation Prohibited.
        FW_ACTIVATION_PROHIBITED = 0x13,
        /// Overlapping Range.
        OVERLAPPING_RANGE = 0x14,
        /// Namespace Insufficient Capacity.
        NAMESPACE_INSUFFICIENT_CAPACITY = 0x15,
        /// Namespace Identifier Unavailable.
        NAMESPACE_ID_UNAVAILABLE = 0x16,
        /// Namespace Already Attached.
        NAMESPACE_ALREADY_ATTACHED = 0x18,
        /// Namespace Is Private.
        NAMESPACE_IS_PRIVATE = 0x19,
        /// Namespace Not Attached.
        NAMESPACE_NOT_ATTACHED = 0x1A,
        /// Thin Provisioning Not Supported.
        THIN_PROVISIONING_NOT_SUPPORTED = 0x1B,
        /// Controller List Invalid.
        CONTROLLER_LIST_INVALID = 0x1C,
        /// Device Self-test In Progress.
        SELF_TEST_IN_PROGRESS = 0x1D,
        /// Boot Partition Write Prohibited.
        BOOT_PARTITION_WRITE_PROHIBITED = 0x1E,
        /// Invalid Controller Identifier.
        INVALID_CONTROLLER_IDENTIFIER = 0x1F,
        /// Invalid Secondary Controller State.
        INVALID_SECONDARY_CONTROLLER_STATE = 0x20,
        /// Invalid Number of Controller Resources.
        INVALID_NUMBER_OF_CONTROLLER_RESOURCES = 0x21,
        /// Invalid Resource Identifier.
        INVALID_RESOURCE_IDENTIFIER = 0x22,
        /// Sanitize Prohibited While Persistent Memory Region is Enabled.
        SANITIZE_PROHIBITED_PMR = 0x23,
        /// ANA Group Identifier Invalid.
        ANA_GROUP_IDENTIFIER_INVALID = 0x24,
        /// ANA Attach Failed.
        ANA_ATTACH_FAILED = 0x25,
        /// Conflicting Attributes (NVM: Dataset Management, Read, Write).
        CONFLICTING_ATTRIBUTES = 0x80,
        /// Invalid Protection Information.
        INVALID_PROTECTION_INFORMATION = 0x81,
        /// Attempted Write to Read Only Range.
        WRITE_TO_READ_ONLY_RANGE = 0x82,
        /// Command Size Limit Exceeded.
        COMMAND_SIZE_LIMIT_EXCEEDED = 0x83,
    }
}

open_enum! {
    /// Media and data integrity error codes (SCT 2).
    pub struct MediaStatus(u8) {
        /// Write Fault.
        WRITE_FAULT = 0x80,
        /// Unrecovered Read Error.
        UNRECOVERED_READ_ERROR = 0x81,
        /// End-to-end Guard Check Error.
        GUARD_CHECK_ERROR = 0x82,
        /// End-to-end Application Tag Check Error.
        APPLICATION_TAG_CHECK_ERROR = 0x83,
        /// End-to-end Reference Tag Check Error.
        REFERENCE_TAG_CHECK_ERROR = 0x84,
        /// Compare Failure.
        COMPARE_FAILURE = 0x85,
        /// Access Denied.
        ACCESS_DENIED = 0x86,
        /// Deallocated or Unwritten Logical Block.
        DEALLOCATED_OR_UNWRITTEN = 0x87,
        /// End-to-end Storage Tag Check Error.
        STORAGE_TAG_CHECK_ERROR = 0x88,
    }
}

open_enum! {
    /// Path related status codes (SCT 3).
    pub struct PathStatus(u8) {
        /// Internal Path Error.
        INTERNAL_PATH_ERROR = 0x00,
        /// Asymmetric Access Persistent Loss.
        ASYMMETRIC_ACCESS_PERSISTENT_LOSS = 0x01,
        /// Asymmetric Access Inaccessible.
        ASYMMETRIC_ACCESS_INACCESSIBLE = 0x02,
        /// Asymmetric Access Transition.
        ASYMMETRIC_ACCESS_TRANSITION = 0x03,
        /// Controller Pathing Error.
        CONTROLLER_PATHING_ERROR = 0x60,
        /// Host Pathing Error.
        HOST_PATHING_ERROR = 0x70,
        /// Command Aborted By Host.
        ABORTED_BY_HOST = 0x71,
    }
}

/// The 15-bit status field of a completion (the completion's last word
/// without the phase tag), also the format of the error log entry's
/// status field (bits 15:1 there).
#[bitfield(u16)]
#[derive(PartialEq, Eq, Hash)]
pub struct StatusWord {
    /// Status Code.
    pub sc: u8,
    /// Status Code Type.
    #[bits(3)]
    pub sct: StatusCodeType,
    /// Command Retry Delay.
    #[bits(2)]
    pub crd: u8,
    /// More.
    pub m: bool,
    /// Do Not Retry.
    pub dnr: bool,
    /// Not part of the field (the phase tag's place in a completion).
    #[bits(1)]
    pub unused: u8,
}

impl StatusWord {
    /// Successful completion.
    pub const SUCCESS: Self = Self::new();

    /// A generic status.
    pub const fn generic(sc: GenericStatus) -> Self {
        Self::new().with_sc(sc.get())
    }

    /// A command specific status.
    pub const fn command_specific(sc: CommandSpecificStatus) -> Self {
        Self::new()
            .with_sc(sc.get())
            .with_sct(StatusCodeType::COMMAND_SPECIFIC)
    }

    /// A media and data integrity status.
    pub const fn media(sc: MediaStatus) -> Self {
        Self::new()
            .with_sc(sc.get())
            .with_sct(StatusCodeType::MEDIA)
    }

    /// A path related status.
    pub const fn path(sc: PathStatus) -> Self {
        Self::new().with_sc(sc.get()).with_sct(StatusCodeType::PATH)
    }

    /// Whether this is successful completion (SCT and SC zero).
    pub const fn is_success(self) -> bool {
        self.sc() == 0 && self.sct().get() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_words_encode_sct_and_sc() {
        let s = StatusWord::media(MediaStatus::COMPARE_FAILURE);
        assert_eq!(s.into_bits(), 2 << 8 | 0x85);
        let s = StatusWord::command_specific(CommandSpecificStatus::INVALID_QUEUE_IDENTIFIER)
            .with_dnr(true);
        assert_eq!(s.into_bits(), 0x4000 | 1 << 8 | 0x01);
        assert!(StatusWord::SUCCESS.is_success());
        assert!(!StatusWord::generic(GenericStatus::LBA_OUT_OF_RANGE).is_success());
        assert_eq!(
            StatusWord::path(PathStatus::ABORTED_BY_HOST).into_bits(),
            3 << 8 | 0x71
        );
    }

    #[test]
    fn codes_match_the_spec_values() {
        assert_eq!(GenericStatus::INVALID_NAMESPACE_OR_FORMAT.get(), 0x0B);
        assert_eq!(GenericStatus::PRP_OFFSET_INVALID.get(), 0x13);
        assert_eq!(GenericStatus::RESERVATION_CONFLICT.get(), 0x83);
        assert_eq!(CommandSpecificStatus::INVALID_LOG_PAGE.get(), 0x09);
        assert_eq!(MediaStatus::UNRECOVERED_READ_ERROR.get(), 0x81);
        // Unknown values are values too, and print with the type name.
        let unknown = GenericStatus::new(0x7E);
        assert_eq!(unknown.name(), None);
        assert_eq!(StatusCodeType::new(5).name(), None);
    }
}
