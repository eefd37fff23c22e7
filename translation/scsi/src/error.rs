//! The one table from [`DiskError`] to SCSI status and sense data.

use crate::ScsiResult;
use parastor_core::{Denied, DiskError, IoErrorKind, MediumError, MemoryErrorKind};
use parastor_hw::scsi::{AdditionalSense, ScsiStatus, SenseData, SenseKey};

/// The SCSI status and sense data that report `error` to the initiator.
///
/// This is the adapter's only mapping of disk errors; it looks through
/// composite context with [`DiskError::root`]. Compared with OpenHCL's
/// table (every I/O error became MEDIUM ERROR 03/00/00), backend failures
/// are classified so initiators retry what is retryable: a timeout or a
/// cancelled request is ABORTED COMMAND, a device that is not ready is NOT
/// READY, a thin pool out of space is DATA PROTECT / SPACE ALLOCATION
/// FAILED WRITE PROTECT, a failed device is HARDWARE ERROR / INTERNAL
/// TARGET FAILURE. The application-tag check is 10/02 as SBC-4 defines it.
/// A disk out of a shared resource right now ([`DiskError::Busy`]) is
/// TASK SET FULL, which initiators retry without counting it as an error.
///
/// A guest buffer that cannot be accessed is the initiator's error when the
/// initiator named it (outside guest memory, inaccessible to us — unmapped,
/// private or protected — misaligned, or past the buffer it described):
/// ILLEGAL REQUEST / INVALID FIELD IN CDB, as for any bad request. Backing
/// memory that faulted under us is not the initiator's doing: HARDWARE
/// ERROR / INTERNAL TARGET FAILURE.
pub fn disk_error_result(error: &DiskError) -> ScsiResult {
    use AdditionalSense as A;
    use SenseKey as K;
    let check = |key, additional| ScsiResult::check(SenseData::new(key, additional));
    match error.root() {
        DiskError::IllegalBlock => check(K::ILLEGAL_REQUEST, A::LBA_OUT_OF_RANGE),
        DiskError::InvalidInput(_) => check(K::ILLEGAL_REQUEST, A::INVALID_FIELD_IN_CDB),
        DiskError::MemoryAccess(m) => match m.kind {
            MemoryErrorKind::Inaccessible(Denied::Fault) => {
                check(K::HARDWARE_ERROR, A::INTERNAL_TARGET_FAILURE)
            }
            MemoryErrorKind::OutOfRange
            | MemoryErrorKind::Inaccessible(_)
            | MemoryErrorKind::Misaligned
            | MemoryErrorKind::WriteProtected
            | MemoryErrorKind::BeyondBuffer => check(K::ILLEGAL_REQUEST, A::INVALID_FIELD_IN_CDB),
            // Any kind added later is a buffer the initiator named.
            _ => check(K::ILLEGAL_REQUEST, A::INVALID_FIELD_IN_CDB),
        },
        DiskError::Io(io) => match io.kind {
            IoErrorKind::NotReady => check(K::NOT_READY, A::LUN_NOT_READY),
            IoErrorKind::TimedOut => check(K::ABORTED_COMMAND, A::TIMEOUT_ON_LOGICAL_UNIT),
            IoErrorKind::Cancelled => check(K::ABORTED_COMMAND, A::NO_ADDITIONAL_SENSE),
            IoErrorKind::NoSpace => check(K::DATA_PROTECT, A::SPACE_ALLOCATION_FAILED),
            IoErrorKind::Unsupported => check(K::ILLEGAL_REQUEST, A::INVALID_COMMAND),
            IoErrorKind::DeviceFailed => check(K::HARDWARE_ERROR, A::INTERNAL_TARGET_FAILURE),
            _ => check(K::MEDIUM_ERROR, A::NO_ADDITIONAL_SENSE),
        },
        DiskError::Medium(m) => check(
            K::MEDIUM_ERROR,
            match m {
                MediumError::UnrecoveredRead => A::UNRECOVERED_READ,
                MediumError::WriteFault => A::WRITE_FAULT,
                MediumError::GuardCheck => A::GUARD_CHECK_FAILED,
                MediumError::ApplicationTagCheck => A::APPLICATION_TAG_CHECK_FAILED,
                MediumError::ReferenceTagCheck => A::REFERENCE_TAG_CHECK_FAILED,
            },
        ),
        DiskError::ReadOnly => check(K::DATA_PROTECT, A::WRITE_PROTECTED),
        DiskError::ReservationConflict => ScsiResult {
            status: ScsiStatus::RESERVATION_CONFLICT,
            sense: None,
            tx: 0,
        },
        DiskError::AbortedByPreempt => ScsiResult {
            status: ScsiStatus::TASK_ABORTED,
            sense: Some(SenseData::new(K::ABORTED_COMMAND, A::NO_ADDITIONAL_SENSE)),
            tx: 0,
        },
        // SAM-5: TASK SET FULL (28h) — the command was not run for lack
        // of a resource and may be retried; no sense data.
        DiskError::Busy(_) => ScsiResult {
            status: ScsiStatus::TASK_SET_FULL,
            sense: None,
            tx: 0,
        },
        DiskError::UnsupportedEject | DiskError::Unsupported(_) => {
            check(K::ILLEGAL_REQUEST, A::INVALID_COMMAND)
        }
        // `root()` never returns `Member`; anything newer is a device failure.
        _ => check(K::HARDWARE_ERROR, A::INTERNAL_TARGET_FAILURE),
    }
}
