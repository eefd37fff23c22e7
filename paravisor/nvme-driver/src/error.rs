//! Driver errors, and the one table from an NVMe completion status to a
//! [`DiskError`].

use crate::device::DeviceError;
use core::fmt;
use parastor_core::error::{DiskError, IoError, IoErrorKind, MediumError, MemoryError};
use parastor_hw::nvme::status::{GenericStatus, MediaStatus, StatusCodeType, StatusWord};

/// `IoError::code` of an I/O that failed because its namespace is gone.
pub const CODE_NAMESPACE_REMOVED: i32 = -2;
/// `IoError::code` of an I/O that failed because the device misbehaved
/// (a completion the driver could not accept, a register reading as all
/// ones) or is gone.
pub const CODE_DEVICE_FAILED: i32 = -3;
/// `IoError::code` of an I/O cut short by a controller reset more often
/// than the driver retries.
pub const CODE_RESET: i32 = -4;
/// `IoError::code` of an I/O that did not complete within the driver's
/// command timeout (it was aborted, or the controller was reset).
pub const CODE_TIMEOUT: i32 = -5;

/// Why a command did not complete with a status from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The controller was reset while the command was outstanding.
    Reset,
    /// The command did not complete within the command timeout (it was
    /// aborted, or the controller was reset).
    TimedOut,
    /// The device is gone or failed for good.
    Gone(&'static str),
    /// The device refused a request of the driver's.
    Device(DeviceError),
    /// The caller's buffer is not valid memory.
    Memory(MemoryError),
    /// A completion the driver could not accept.
    BadCompletion(&'static str),
    /// The buffer cannot be given to the device.
    BadBuffer(&'static str),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Reset => f.write_str("the controller was reset"),
            Failure::TimedOut => f.write_str("the command timed out"),
            Failure::Gone(why) => write!(f, "controller failed: {why}"),
            Failure::Device(e) => e.fmt(f),
            Failure::Memory(e) => write!(f, "buffer: {e}"),
            Failure::BadCompletion(why) => write!(f, "bad completion from the device: {why}"),
            Failure::BadBuffer(why) => write!(f, "buffer: {why}"),
        }
    }
}

impl From<Failure> for DiskError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Reset => DiskError::Io(IoError::new(IoErrorKind::Cancelled, CODE_RESET)),
            Failure::TimedOut => DiskError::Io(IoError::new(IoErrorKind::TimedOut, CODE_TIMEOUT)),
            Failure::Memory(e) => DiskError::MemoryAccess(e),
            Failure::Device(DeviceError::OutOfDmaMemory { .. }) => {
                DiskError::Busy("NVMe driver: out of DMA memory")
            }
            Failure::BadBuffer(what) => DiskError::InvalidInput(what),
            Failure::Gone(_) | Failure::Device(_) | Failure::BadCompletion(_) => {
                DiskError::Io(IoError::new(IoErrorKind::DeviceFailed, CODE_DEVICE_FAILED))
            }
        }
    }
}

/// Errors of the driver's own operations (bring-up, admin commands,
/// namespace lookup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverError {
    /// The function is not an NVMe controller (class code).
    NotNvme {
        /// The class code read (base, sub, programming interface).
        class: [u8; 3],
    },
    /// A register value the driver cannot work with.
    Unsupported(&'static str),
    /// CSTS.RDY did not reach `ready` within CAP.TO.
    Timeout {
        /// The RDY value waited for.
        ready: bool,
        /// CAP.TO in milliseconds.
        timeout_ms: u64,
    },
    /// CSTS.CFS was set (controller fatal status).
    Fatal,
    /// An admin command failed with a status.
    Command {
        /// Which command.
        what: &'static str,
        /// The completion's status word.
        status: u16,
    },
    /// A command did not complete.
    Failed {
        /// Which command.
        what: &'static str,
        /// Why.
        why: Failure,
    },
    /// The device refused a request of the driver's.
    Device(DeviceError),
    /// Data the controller returned is unusable.
    BadData(&'static str),
    /// No active namespace has that NSID.
    NoNamespace(u32),
    /// A saved state that cannot be written or restored: which field and
    /// what is wrong.
    State(alloc::string::String),
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::NotNvme { class } => write!(
                f,
                "not an NVMe controller: class code {:02x}-{:02x}-{:02x}, expected 01-08-02",
                class[0], class[1], class[2]
            ),
            DriverError::Unsupported(what) => write!(f, "unsupported controller: {what}"),
            DriverError::Timeout { ready, timeout_ms } => write!(
                f,
                "CSTS.RDY did not become {} within CAP.TO ({timeout_ms} ms)",
                u8::from(*ready)
            ),
            DriverError::Fatal => f.write_str("controller fatal status (CSTS.CFS) set"),
            DriverError::Command { what, status } => write!(
                f,
                "{what} failed with status {}",
                describe_status(StatusWord::from_bits(*status))
            ),
            DriverError::Failed { what, why } => write!(f, "{what} did not complete: {why}"),
            DriverError::Device(e) => e.fmt(f),
            DriverError::BadData(what) => write!(f, "controller returned bad data: {what}"),
            DriverError::NoNamespace(nsid) => write!(f, "no active namespace {nsid}"),
            DriverError::State(what) => write!(f, "driver saved state: {what}"),
        }
    }
}

impl core::error::Error for DriverError {}

/// `status` as "SCT x SC y" with the code's name where it has one.
pub(crate) fn describe_status(status: StatusWord) -> impl fmt::Display {
    struct D(StatusWord);
    impl fmt::Display for D {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let (sct, sc) = (self.0.sct(), self.0.sc());
            let name = match sct {
                StatusCodeType::GENERIC => GenericStatus::new(sc).name(),
                StatusCodeType::MEDIA => MediaStatus::new(sc).name(),
                _ => None,
            };
            write!(f, "SCT {:#x} SC {sc:#04x}", sct.get())?;
            if let Some(name) = name {
                write!(f, " ({name})")?;
            }
            Ok(())
        }
    }
    D(status)
}

/// The one NVMe status → [`DiskError`] table of the driver (for I/O
/// commands; success is not an error).
///
/// Invalid Namespace or Format (0Bh) means the controller holds the NSID
/// not valid (0, above its Number of Namespaces, or a broadcast it does
/// not take): the driver sends only NSIDs it found active, so the
/// namespace is gone for good — [`CODE_NAMESPACE_REMOVED`]. A namespace
/// that was detached or deleted answers Invalid Field in Command (02h)
/// instead (an *inactive* NSID, NVMe Base 2.0 3.2.1.5), which this table
/// cannot tell from a bad field; [`status_to_namespace_error`] can, given
/// what the driver knows about the namespace.
pub fn status_to_disk_error(status: StatusWord) -> DiskError {
    let code = i32::from(status.into_bits() & 0x7FF);
    match (status.sct(), status.sc()) {
        (StatusCodeType::GENERIC, sc) => match GenericStatus::new(sc) {
            GenericStatus::LBA_OUT_OF_RANGE => DiskError::IllegalBlock,
            GenericStatus::RESERVATION_CONFLICT => DiskError::ReservationConflict,
            GenericStatus::ABORTED_PREEMPT_AND_ABORT => DiskError::AbortedByPreempt,
            GenericStatus::INVALID_FIELD_IN_COMMAND => {
                DiskError::InvalidInput("the controller found an invalid field in the command")
            }
            GenericStatus::INVALID_COMMAND_OPCODE => {
                DiskError::Unsupported("the controller does not support the command")
            }
            GenericStatus::NAMESPACE_WRITE_PROTECTED => DiskError::ReadOnly,
            GenericStatus::INVALID_NAMESPACE_OR_FORMAT => {
                DiskError::Io(IoError::new(IoErrorKind::NotReady, CODE_NAMESPACE_REMOVED))
            }
            GenericStatus::NAMESPACE_NOT_READY | GenericStatus::FORMAT_IN_PROGRESS => {
                DiskError::Io(IoError::new(IoErrorKind::NotReady, code))
            }
            GenericStatus::CAPACITY_EXCEEDED => {
                DiskError::Io(IoError::new(IoErrorKind::NoSpace, code))
            }
            GenericStatus::ABORT_REQUESTED | GenericStatus::ABORTED_SQ_DELETION => {
                DiskError::Io(IoError::new(IoErrorKind::Cancelled, code))
            }
            _ => DiskError::Io(IoError::new(IoErrorKind::DeviceFailed, code)),
        },
        (StatusCodeType::MEDIA, sc) => match MediaStatus::new(sc) {
            MediaStatus::WRITE_FAULT => DiskError::Medium(MediumError::WriteFault),
            MediaStatus::UNRECOVERED_READ_ERROR => DiskError::Medium(MediumError::UnrecoveredRead),
            MediaStatus::GUARD_CHECK_ERROR => DiskError::Medium(MediumError::GuardCheck),
            MediaStatus::APPLICATION_TAG_CHECK_ERROR => {
                DiskError::Medium(MediumError::ApplicationTagCheck)
            }
            MediaStatus::REFERENCE_TAG_CHECK_ERROR => {
                DiskError::Medium(MediumError::ReferenceTagCheck)
            }
            _ => DiskError::Io(IoError::new(IoErrorKind::DeviceFailed, code)),
        },
        (StatusCodeType::COMMAND_SPECIFIC, 0x82) => DiskError::ReadOnly,
        _ => DiskError::Io(IoError::new(IoErrorKind::DeviceFailed, code)),
    }
}

/// [`status_to_disk_error`] for an I/O command to a namespace, where
/// `removed` says whether the driver has learnt (from a namespace change)
/// that the namespace is gone: then any failure is
/// [`CODE_NAMESPACE_REMOVED`] — a detached namespace answers Invalid
/// Field in Command (02h, NVMe Base 2.0 3.2.1.5), not a distinct status.
pub fn status_to_namespace_error(status: StatusWord, removed: bool) -> DiskError {
    if removed {
        DiskError::Io(IoError::new(IoErrorKind::NotReady, CODE_NAMESPACE_REMOVED))
    } else {
        status_to_disk_error(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_disk_errors() {
        let g = |s| status_to_disk_error(StatusWord::generic(s));
        assert_eq!(g(GenericStatus::LBA_OUT_OF_RANGE), DiskError::IllegalBlock);
        assert_eq!(
            g(GenericStatus::RESERVATION_CONFLICT),
            DiskError::ReservationConflict
        );
        assert!(matches!(
            g(GenericStatus::DATA_TRANSFER_ERROR),
            DiskError::Io(IoError {
                kind: IoErrorKind::DeviceFailed,
                code: 4
            })
        ));
        assert_eq!(
            status_to_disk_error(StatusWord::media(MediaStatus::UNRECOVERED_READ_ERROR)),
            DiskError::Medium(MediumError::UnrecoveredRead)
        );
        // Not a valid NSID: the namespace cannot be there.
        assert_eq!(
            g(GenericStatus::INVALID_NAMESPACE_OR_FORMAT),
            DiskError::Io(IoError::new(IoErrorKind::NotReady, CODE_NAMESPACE_REMOVED))
        );
        // An inactive NSID answers Invalid Field: an invalid-input error,
        // unless the driver knows the namespace went away.
        let inactive = StatusWord::generic(GenericStatus::INVALID_FIELD_IN_COMMAND).with_dnr(true);
        assert!(matches!(
            status_to_namespace_error(inactive, false),
            DiskError::InvalidInput(_)
        ));
        assert_eq!(
            status_to_namespace_error(inactive, true),
            DiskError::Io(IoError::new(IoErrorKind::NotReady, CODE_NAMESPACE_REMOVED))
        );
        assert_eq!(
            status_to_namespace_error(StatusWord::generic(GenericStatus::LBA_OUT_OF_RANGE), false),
            DiskError::IllegalBlock
        );
        let text = alloc::format!(
            "{}",
            describe_status(StatusWord::generic(GenericStatus::LBA_OUT_OF_RANGE))
        );
        assert!(text.contains("LBA_OUT_OF_RANGE"), "{text}");
    }
}
