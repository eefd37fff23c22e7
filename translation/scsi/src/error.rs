//! The one table from [`DiskError`] to SCSI status and sense data.

use crate::ScsiResult;
use parastor_core::{DiskError, IoErrorKind, MediumError};
use parastor_hw::scsi::{SenseData, asc, sense_key, status};

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
pub fn disk_error_result(error: &DiskError) -> ScsiResult {
    let check = |key, asc, ascq| ScsiResult::check(SenseData::new(key, asc, ascq));
    match error.root() {
        DiskError::IllegalBlock => check(sense_key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE, 0),
        DiskError::InvalidInput(_) | DiskError::MemoryAccess(_) => {
            check(sense_key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB, 0)
        }
        DiskError::Io(io) => match io.kind {
            IoErrorKind::NotReady => check(sense_key::NOT_READY, asc::LUN_NOT_READY, 0),
            IoErrorKind::TimedOut => check(
                sense_key::ABORTED_COMMAND,
                asc::LOGICAL_UNIT_FAILURE,
                asc::ASCQ_TIMEOUT_ON_LOGICAL_UNIT,
            ),
            IoErrorKind::Cancelled => check(sense_key::ABORTED_COMMAND, 0, 0),
            IoErrorKind::NoSpace => check(
                sense_key::DATA_PROTECT,
                asc::WRITE_PROTECTED,
                asc::ASCQ_SPACE_ALLOCATION_FAILED,
            ),
            IoErrorKind::Unsupported => check(sense_key::ILLEGAL_REQUEST, asc::INVALID_COMMAND, 0),
            IoErrorKind::DeviceFailed => {
                check(sense_key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE, 0)
            }
            _ => check(sense_key::MEDIUM_ERROR, 0, 0),
        },
        DiskError::Medium(m) => {
            let (asc, ascq) = match m {
                MediumError::UnrecoveredRead => (asc::UNRECOVERED_READ, 0),
                MediumError::WriteFault => (asc::WRITE_FAULT, 0),
                MediumError::GuardCheck => (asc::PROTECTION_CHECK, 1),
                MediumError::ApplicationTagCheck => (asc::PROTECTION_CHECK, 2),
                MediumError::ReferenceTagCheck => (asc::PROTECTION_CHECK, 3),
            };
            check(sense_key::MEDIUM_ERROR, asc, ascq)
        }
        DiskError::ReadOnly => check(sense_key::DATA_PROTECT, asc::WRITE_PROTECTED, 0),
        DiskError::ReservationConflict => ScsiResult {
            status: status::RESERVATION_CONFLICT,
            sense: None,
            tx: 0,
        },
        DiskError::AbortedByPreempt => ScsiResult {
            status: status::TASK_ABORTED,
            sense: Some(SenseData::new(sense_key::ABORTED_COMMAND, 0, 0)),
            tx: 0,
        },
        DiskError::UnsupportedEject | DiskError::Unsupported(_) => {
            check(sense_key::ILLEGAL_REQUEST, asc::INVALID_COMMAND, 0)
        }
        // `root()` never returns `Member`; anything newer is a device failure.
        _ => check(sense_key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE, 0),
    }
}
