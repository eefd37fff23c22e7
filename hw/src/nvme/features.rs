//! Feature identifiers and their CDW11 / completion DW0 values, and the
//! asynchronous event information codes (NVMe Base 2.0 §5.27.1, §5.2).

use bitfield_struct::bitfield;

use crate::open_enum::open_enum;

open_enum! {
    /// Feature Identifier (FID) of Set / Get Features.
    pub struct FeatureId(u8) {
        /// Arbitration.
        ARBITRATION = 0x01,
        /// Power Management.
        POWER_MANAGEMENT = 0x02,
        /// LBA Range Type.
        LBA_RANGE_TYPE = 0x03,
        /// Temperature Threshold.
        TEMPERATURE_THRESHOLD = 0x04,
        /// Error Recovery.
        ERROR_RECOVERY = 0x05,
        /// Volatile Write Cache.
        VOLATILE_WRITE_CACHE = 0x06,
        /// Number of Queues.
        NUMBER_OF_QUEUES = 0x07,
        /// Interrupt Coalescing.
        INTERRUPT_COALESCING = 0x08,
        /// Interrupt Vector Configuration.
        INTERRUPT_VECTOR_CONFIG = 0x09,
        /// Write Atomicity Normal.
        WRITE_ATOMICITY = 0x0A,
        /// Asynchronous Event Configuration.
        ASYNC_EVENT_CONFIG = 0x0B,
        /// Autonomous Power State Transition.
        AUTONOMOUS_POWER_STATE = 0x0C,
        /// Host Memory Buffer.
        HOST_MEMORY_BUFFER = 0x0D,
        /// Timestamp.
        TIMESTAMP = 0x0E,
        /// Keep Alive Timer.
        KEEP_ALIVE_TIMER = 0x0F,
        /// Host Controlled Thermal Management.
        HOST_THERMAL_MANAGEMENT = 0x10,
        /// Non-Operational Power State Config.
        NON_OPERATIONAL_POWER_STATE = 0x11,
        /// Read Recovery Level Config.
        READ_RECOVERY_LEVEL = 0x12,
        /// Predictable Latency Mode Config.
        PREDICTABLE_LATENCY_MODE = 0x13,
        /// Predictable Latency Mode Window.
        PREDICTABLE_LATENCY_WINDOW = 0x14,
        /// Host Behavior Support.
        HOST_BEHAVIOR_SUPPORT = 0x16,
        /// Sanitize Config.
        SANITIZE_CONFIG = 0x17,
        /// Endurance Group Event Configuration.
        ENDURANCE_GROUP_EVENT_CONFIG = 0x18,
        /// I/O Command Set Profile.
        IO_COMMAND_SET_PROFILE = 0x19,
        /// Software Progress Marker.
        SOFTWARE_PROGRESS_MARKER = 0x80,
        /// Host Identifier.
        HOST_IDENTIFIER = 0x81,
        /// Reservation Notification Mask.
        RESERVATION_NOTIFICATION_MASK = 0x82,
        /// Reservation Persistence.
        RESERVATION_PERSISTENCE = 0x83,
        /// Namespace Write Protection Config.
        NAMESPACE_WRITE_PROTECTION = 0x84,
    }
}

/// Number of Queues: CDW11 of Set Features (requested) and DW0 of its
/// completion (allocated). Both counts are 0's based and exclude the
/// admin queues; 65535 is invalid in a request.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct NumberOfQueues {
    /// Number of I/O Submission Queues, 0's based.
    pub nsq: u16,
    /// Number of I/O Completion Queues, 0's based.
    pub ncq: u16,
}

/// Interrupt Coalescing (CDW11).
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct InterruptCoalescing {
    /// Aggregation Threshold: completions per interrupt, 0's based.
    pub thr: u8,
    /// Aggregation Time, in 100 µs units.
    pub time: u8,
    /// Reserved.
    pub reserved: u16,
}

/// Interrupt Vector Configuration (CDW11).
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct InterruptVectorConfig {
    /// Interrupt Vector.
    pub iv: u16,
    /// Coalescing Disable for this vector.
    pub cd: bool,
    /// Reserved.
    #[bits(15)]
    pub reserved: u16,
}

/// Volatile Write Cache (CDW11).
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct VolatileWriteCache {
    /// Volatile Write Cache Enable.
    pub wce: bool,
    /// Reserved.
    #[bits(31)]
    pub reserved: u32,
}

/// Asynchronous Event Configuration (CDW11): which events the host wants.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct AsyncEventConfig {
    /// SMART / Health Critical Warnings to report (one bit per warning).
    pub smart_critical_warnings: u8,
    /// Namespace Attribute Notices.
    pub nan: bool,
    /// Firmware Activation Notices.
    pub fan: bool,
    /// Telemetry Log Notices.
    pub tln: bool,
    /// Asymmetric Namespace Access Change Notices.
    pub anacn: bool,
    /// Predictable Latency Event Aggregate Log Change Notices.
    pub plealcn: bool,
    /// LBA Status Information Notices.
    pub lsin: bool,
    /// Endurance Group Event Aggregate Log Change Notices.
    pub egealcn: bool,
    /// Normal NVM Subsystem Shutdown Notices.
    pub nnsshdn: bool,
    /// Reserved.
    pub reserved: u16,
}

/// Host Identifier (CDW11).
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct HostIdentifierCdw11 {
    /// Enable Extended Host Identifier: 128-bit rather than 64-bit.
    pub exhid: bool,
    /// Reserved.
    #[bits(31)]
    pub reserved: u32,
}

/// Reservation Notification Mask (CDW11): a set bit suppresses that
/// notification.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct ReservationNotificationMask {
    /// Reserved.
    pub reserved0: bool,
    /// Mask Registration Preempted Notification.
    pub regpre: bool,
    /// Mask Reservation Released Notification.
    pub resrel: bool,
    /// Mask Reservation Preempted Notification.
    pub respre: bool,
    /// Reserved.
    #[bits(28)]
    pub reserved1: u32,
}

/// Reservation Persistence (CDW11).
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct ReservationPersistence {
    /// Persist Through Power Loss.
    pub ptpl: bool,
    /// Reserved.
    #[bits(31)]
    pub reserved: u32,
}

open_enum! {
    /// Asynchronous event information for [`AsyncEventType::ERROR`](super::command::AsyncEventType::ERROR).
    pub struct ErrorEventInfo(u8) {
        /// Write to Invalid Doorbell Register.
        INVALID_DOORBELL_REGISTER = 0x00,
        /// Invalid Doorbell Write Value.
        INVALID_DOORBELL_VALUE = 0x01,
        /// Diagnostic Failure.
        DIAGNOSTIC_FAILURE = 0x02,
        /// Persistent Internal Error.
        PERSISTENT_INTERNAL_ERROR = 0x03,
        /// Transient Internal Error.
        TRANSIENT_INTERNAL_ERROR = 0x04,
        /// Firmware Image Load Error.
        FIRMWARE_IMAGE_LOAD_ERROR = 0x05,
    }
}

open_enum! {
    /// Asynchronous event information for
    /// [`AsyncEventType::SMART_HEALTH`](super::command::AsyncEventType::SMART_HEALTH).
    pub struct SmartEventInfo(u8) {
        /// NVM Subsystem Reliability.
        RELIABILITY = 0x00,
        /// Temperature Threshold.
        TEMPERATURE_THRESHOLD = 0x01,
        /// Spare Below Threshold.
        SPARE_BELOW_THRESHOLD = 0x02,
    }
}

open_enum! {
    /// Asynchronous event information for
    /// [`AsyncEventType::NOTICE`](super::command::AsyncEventType::NOTICE).
    pub struct NoticeEventInfo(u8) {
        /// Namespace Attribute Changed (read the changed namespace list).
        NAMESPACE_ATTRIBUTE_CHANGED = 0x00,
        /// Firmware Activation Starting.
        FIRMWARE_ACTIVATION_STARTING = 0x01,
        /// Telemetry Log Changed.
        TELEMETRY_LOG_CHANGED = 0x02,
        /// Asymmetric Namespace Access Change.
        ANA_CHANGE = 0x03,
        /// Predictable Latency Event Aggregate Log Change.
        PREDICTABLE_LATENCY_CHANGE = 0x04,
        /// LBA Status Information Alert.
        LBA_STATUS_ALERT = 0x05,
        /// Endurance Group Event Aggregate Log Page Change.
        ENDURANCE_GROUP_CHANGE = 0x06,
        /// Normal NVM Subsystem Shutdown.
        NORMAL_SUBSYSTEM_SHUTDOWN = 0x07,
    }
}

open_enum! {
    /// Asynchronous event information for
    /// [`AsyncEventType::IO_COMMAND_SET`](super::command::AsyncEventType::IO_COMMAND_SET).
    pub struct IoCommandSetEventInfo(u8) {
        /// Reservation Log Page Available.
        RESERVATION_LOG_AVAILABLE = 0x00,
        /// Sanitize Operation Completed.
        SANITIZE_COMPLETED = 0x01,
        /// Sanitize Operation Completed With Unexpected Deallocation.
        SANITIZE_COMPLETED_UNEXPECTED_DEALLOCATION = 0x02,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_values_at_spec_bits() {
        assert_eq!(FeatureId::NUMBER_OF_QUEUES.get(), 0x07);
        assert_eq!(FeatureId::HOST_IDENTIFIER.get(), 0x81);
        let q = NumberOfQueues::from_bits(0x000F_001F);
        assert_eq!((q.nsq(), q.ncq()), (31, 15));
        let c = InterruptCoalescing::from_bits(0x0A05);
        assert_eq!((c.thr(), c.time()), (5, 10));
        assert!(InterruptVectorConfig::from_bits(1 << 16).cd());
        let a = AsyncEventConfig::from_bits(0x0000_0100);
        assert!(a.nan());
        assert!(!a.fan());
        assert!(HostIdentifierCdw11::from_bits(1).exhid());
        let m = ReservationNotificationMask::from_bits(0b1010);
        assert!(m.regpre() && m.respre() && !m.resrel());
        assert_eq!(NoticeEventInfo::NAMESPACE_ATTRIBUTE_CHANGED.get(), 0);
        assert_eq!(ErrorEventInfo::INVALID_DOORBELL_VALUE.get(), 1);
    }
}
