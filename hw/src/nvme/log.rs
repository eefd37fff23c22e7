//! Log pages returned by Get Log Page: error information, SMART / health,
//! firmware slot, changed namespace list, commands supported and effects,
//! reservation notification (NVMe Base 2.0 §5.16.1, NVM Command Set 1.0
//! §4.1.4).
//!
//! The page-sized logs have no `Default` (arrays that long have none);
//! build them with zerocopy's `FromZeros::new_zeroed`.

use bitfield_struct::bitfield;
use zerocopy::little_endian::{U16, U32, U64, U128};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::open_enum::open_enum;

open_enum! {
    /// Log Page Identifier (LID).
    pub struct LogPageId(u8) {
        /// Supported Log Pages.
        SUPPORTED_LOG_PAGES = 0x00,
        /// Error Information.
        ERROR_INFORMATION = 0x01,
        /// SMART / Health Information.
        SMART_HEALTH = 0x02,
        /// Firmware Slot Information.
        FIRMWARE_SLOT = 0x03,
        /// Changed Namespace List.
        CHANGED_NAMESPACES = 0x04,
        /// Commands Supported and Effects.
        COMMANDS_SUPPORTED_AND_EFFECTS = 0x05,
        /// Device Self-test.
        DEVICE_SELF_TEST = 0x06,
        /// Telemetry Host-Initiated.
        TELEMETRY_HOST = 0x07,
        /// Telemetry Controller-Initiated.
        TELEMETRY_CONTROLLER = 0x08,
        /// Endurance Group Information.
        ENDURANCE_GROUP = 0x09,
        /// Asymmetric Namespace Access.
        ANA = 0x0C,
        /// Persistent Event Log.
        PERSISTENT_EVENT = 0x0D,
        /// Feature Identifiers Supported and Effects.
        FEATURES_SUPPORTED_AND_EFFECTS = 0x12,
        /// Boot Partition.
        BOOT_PARTITION = 0x15,
        /// Discovery (fabrics).
        DISCOVERY = 0x70,
        /// Reservation Notification.
        RESERVATION_NOTIFICATION = 0x80,
        /// Sanitize Status.
        SANITIZE_STATUS = 0x81,
    }
}

wire_layout! {
    /// Error Information log entry (64 bytes; the log is an array of
    /// them, newest first).
    pub struct ErrorLogEntry {
        /// Error Count: unique, incrementing; 0 means an empty entry.
        pub error_count: U64,
        /// Submission Queue ID of the failed command.
        pub sqid: U16,
        /// Command ID of the failed command.
        pub cid: U16,
        /// Status Field: bit 0 phase tag, bits 15:1 the status field.
        pub status: U16,
        /// Parameter Error Location: byte in bits 7:0, bit in bits 10:8.
        pub parameter_error_location: U16,
        /// LBA of the first failing block.
        pub lba: U64,
        /// Namespace of the failure.
        pub nsid: U32,
        /// Vendor Specific Information Available (log page id or 0).
        pub vendor_specific: u8,
        /// Transport Type.
        pub trtype: u8,
        /// Reserved.
        pub reserved0: [u8; 2],
        /// Command Specific Information.
        pub command_specific: U64,
        /// Transport Type Specific Information.
        pub transport_specific: U16,
        /// Reserved.
        pub reserved1: [u8; 22],
    }
    size 64
}

/// SMART critical warning bits ([`SmartHealthLog::critical_warning`]).
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct CriticalWarning {
    /// Available spare below threshold.
    pub spare: bool,
    /// Temperature beyond a threshold.
    pub temperature: bool,
    /// Reliability degraded.
    pub reliability: bool,
    /// Media placed in read-only mode.
    pub read_only: bool,
    /// Volatile memory backup device failed.
    pub volatile_backup: bool,
    /// Persistent memory region read-only or unreliable.
    pub pmr_read_only: bool,
    /// Reserved.
    #[bits(2)]
    pub reserved: u8,
}

/// SMART / Health Information log (512 bytes). Data units are
/// thousands of 512-byte units, rounded up.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct SmartHealthLog {
    /// Critical Warning.
    pub critical_warning: CriticalWarning,
    /// Composite Temperature, kelvin.
    pub composite_temperature: U16,
    /// Available Spare, percent.
    pub available_spare: u8,
    /// Available Spare Threshold, percent.
    pub available_spare_threshold: u8,
    /// Percentage Used.
    pub percentage_used: u8,
    /// Endurance Group Critical Warning Summary.
    pub endurance_group_warning: u8,
    /// Reserved.
    pub reserved0: [u8; 25],
    /// Data Units Read.
    pub data_units_read: U128,
    /// Data Units Written.
    pub data_units_written: U128,
    /// Host Read Commands.
    pub host_read_commands: U128,
    /// Host Write Commands.
    pub host_write_commands: U128,
    /// Controller Busy Time, minutes.
    pub controller_busy_time: U128,
    /// Power Cycles.
    pub power_cycles: U128,
    /// Power On Hours.
    pub power_on_hours: U128,
    /// Unsafe Shutdowns.
    pub unsafe_shutdowns: U128,
    /// Media and Data Integrity Errors.
    pub media_errors: U128,
    /// Number of Error Information Log Entries over the life.
    pub error_log_entries: U128,
    /// Warning Composite Temperature Time, minutes.
    pub warning_temperature_time: U32,
    /// Critical Composite Temperature Time, minutes.
    pub critical_temperature_time: U32,
    /// Temperature Sensors 1–8, kelvin (0: not implemented).
    pub temperature_sensors: [U16; 8],
    /// Thermal Management Temperature 1 Transition Count.
    pub thermal_transition_count_1: U32,
    /// Thermal Management Temperature 2 Transition Count.
    pub thermal_transition_count_2: U32,
    /// Total Time For Thermal Management Temperature 1, seconds.
    pub thermal_time_1: U32,
    /// Total Time For Thermal Management Temperature 2, seconds.
    pub thermal_time_2: U32,
    /// Reserved.
    pub reserved1: [u8; 280],
}

const _: () = assert!(core::mem::size_of::<SmartHealthLog>() == 512);

/// The SMART data unit: 1000 units of 512 bytes.
pub const SMART_DATA_UNIT_BYTES: u64 = 512 * 1000;

/// SMART data units for `bytes` transferred: thousands of 512-byte
/// units, rounded up.
pub const fn smart_data_units(bytes: u64) -> u64 {
    bytes.div_ceil(SMART_DATA_UNIT_BYTES)
}

/// Firmware Slot Information log (512 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct FirmwareSlotLog {
    /// Active Firmware Info: bits 2:0 active slot, bits 6:4 slot
    /// activated at the next reset.
    pub afi: u8,
    /// Reserved.
    pub reserved0: [u8; 7],
    /// Firmware Revision for slots 1–7 (ASCII, space padded).
    pub frs: [[u8; 8]; 7],
    /// Reserved.
    pub reserved1: [u8; 448],
}

const _: () = assert!(core::mem::size_of::<FirmwareSlotLog>() == 512);

/// The number of entries in the Changed Namespace List log.
pub const CHANGED_NAMESPACE_LIST_ENTRIES: usize = 1024;

/// The first entry of the Changed Namespace List when more namespaces
/// changed than the list holds.
pub const CHANGED_NAMESPACE_LIST_OVERFLOW: u32 = 0xFFFF_FFFF;

/// Changed Namespace List log (4096 bytes): NSIDs in increasing order,
/// zero filled.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct ChangedNamespaceList {
    /// The changed NSIDs.
    pub nsids: [U32; CHANGED_NAMESPACE_LIST_ENTRIES],
}

const _: () = assert!(core::mem::size_of::<ChangedNamespaceList>() == 4096);

/// One Commands Supported and Effects entry.
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct CommandEffects {
    /// Command Supported.
    pub csupp: bool,
    /// Logical Block Content Change.
    pub lbcc: bool,
    /// Namespace Capability Change.
    pub ncc: bool,
    /// Namespace Inventory Change.
    pub nic: bool,
    /// Controller Capability Change.
    pub ccc: bool,
    /// Reserved.
    #[bits(11)]
    pub reserved0: u16,
    /// Command Submission and Execution restrictions.
    #[bits(3)]
    pub cse: u8,
    /// UUID Selection Supported.
    pub uss: bool,
    /// Command Scope.
    #[bits(12)]
    pub csp: u16,
}

/// Commands Supported and Effects log (4096 bytes), indexed by opcode.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct CommandsSupportedAndEffects {
    /// Admin Command Supported, by admin opcode.
    pub acs: [CommandEffects; 256],
    /// I/O Command Supported, by I/O opcode.
    pub iocs: [CommandEffects; 256],
    /// Reserved.
    pub reserved: [u8; 2048],
}

const _: () = assert!(core::mem::size_of::<CommandsSupportedAndEffects>() == 4096);

open_enum! {
    /// Reservation Notification log page type.
    pub struct ReservationNotificationType(u8) {
        /// Empty log page.
        EMPTY = 0x00,
        /// Registration Preempted.
        REGISTRATION_PREEMPTED = 0x01,
        /// Reservation Released.
        RESERVATION_RELEASED = 0x02,
        /// Reservation Preempted.
        RESERVATION_PREEMPTED = 0x03,
    }
}

wire_layout! {
    /// Reservation Notification log (64 bytes).
    pub struct ReservationNotificationLog {
        /// Log Page Count: increments per new notification, 0 never used
        /// after wrapping.
        pub log_page_count: U64,
        /// Reservation Notification Log Page Type.
        pub log_page_type: ReservationNotificationType,
        /// Number of Available Log Pages still queued.
        pub available_log_pages: u8,
        /// Reserved.
        pub reserved0: [u8; 2],
        /// Namespace ID.
        pub nsid: U32,
        /// Reserved.
        pub reserved1: [u8; 32],
        /// Reserved.
        pub reserved2: [u8; 16],
    }
    size 64
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn error_log_offsets() {
        assert_eq!(offset_of!(ErrorLogEntry, sqid), 8);
        assert_eq!(offset_of!(ErrorLogEntry, status), 12);
        assert_eq!(offset_of!(ErrorLogEntry, lba), 16);
        assert_eq!(offset_of!(ErrorLogEntry, nsid), 24);
        assert_eq!(offset_of!(ErrorLogEntry, trtype), 29);
        assert_eq!(offset_of!(ErrorLogEntry, command_specific), 32);
        assert_eq!(offset_of!(ErrorLogEntry, transport_specific), 40);
    }

    #[test]
    fn smart_log_offsets() {
        assert_eq!(offset_of!(SmartHealthLog, composite_temperature), 1);
        assert_eq!(offset_of!(SmartHealthLog, available_spare), 3);
        assert_eq!(offset_of!(SmartHealthLog, data_units_read), 32);
        assert_eq!(offset_of!(SmartHealthLog, data_units_written), 48);
        assert_eq!(offset_of!(SmartHealthLog, host_read_commands), 64);
        assert_eq!(offset_of!(SmartHealthLog, power_on_hours), 128);
        assert_eq!(offset_of!(SmartHealthLog, error_log_entries), 176);
        assert_eq!(offset_of!(SmartHealthLog, warning_temperature_time), 192);
        assert_eq!(offset_of!(SmartHealthLog, temperature_sensors), 200);
        assert_eq!(offset_of!(SmartHealthLog, thermal_time_2), 228);
        assert_eq!(smart_data_units(0), 0);
        assert_eq!(smart_data_units(1), 1);
        assert_eq!(smart_data_units(512_000), 1);
        assert_eq!(smart_data_units(512_001), 2);
        assert!(CriticalWarning::from_bits(0b1000).read_only());
    }

    #[test]
    fn other_log_offsets() {
        assert_eq!(offset_of!(FirmwareSlotLog, frs), 8);
        assert_eq!(offset_of!(CommandsSupportedAndEffects, iocs), 1024);
        let e = CommandEffects::new().with_csupp(true).with_lbcc(true);
        assert_eq!(e.into_bits().get(), 0b11);
        assert!(CommandEffects::from_bits(U32::new(1 << 19)).uss());
        assert_eq!(offset_of!(ReservationNotificationLog, log_page_type), 8);
        assert_eq!(
            offset_of!(ReservationNotificationLog, available_log_pages),
            9
        );
        assert_eq!(offset_of!(ReservationNotificationLog, nsid), 12);
        assert_eq!(LogPageId::CHANGED_NAMESPACES.get(), 4);
        assert_eq!(LogPageId::RESERVATION_NOTIFICATION.get(), 0x80);
    }
}
