//! The outcome of a command and the errors every SCSI device reports the
//! same way.

use crate::error::disk_error_result;
use parastor_core::DiskError;
use parastor_hw::scsi::{SenseData, asc, status};

/// The outcome of one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiResult {
    /// SCSI status ([`parastor_hw::scsi::status`]).
    pub status: u8,
    /// Sense data, with CHECK CONDITION (and TASK ABORTED).
    pub sense: Option<SenseData>,
    /// Bytes transferred to or from the data buffer.
    pub tx: usize,
}

impl ScsiResult {
    /// GOOD with `tx` bytes transferred.
    pub const fn good(tx: usize) -> Self {
        ScsiResult {
            status: status::GOOD,
            sense: None,
            tx,
        }
    }

    /// CHECK CONDITION with `sense`.
    pub const fn check(sense: SenseData) -> Self {
        ScsiResult {
            status: status::CHECK_CONDITION,
            sense: Some(sense),
            tx: 0,
        }
    }
}

impl From<DiskError> for ScsiResult {
    fn from(e: DiskError) -> Self {
        disk_error_result(&e)
    }
}

pub(crate) type Res<T = usize> = Result<T, ScsiResult>;

pub(crate) fn illegal(asc: u8, ascq: u8) -> ScsiResult {
    ScsiResult::check(SenseData::illegal(asc, ascq))
}

pub(crate) fn invalid_cdb() -> ScsiResult {
    illegal(asc::INVALID_FIELD_IN_CDB, 0)
}

pub(crate) fn invalid_param() -> ScsiResult {
    illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST, 0)
}

pub(crate) fn param_len_error() -> ScsiResult {
    illegal(asc::PARAMETER_LIST_LENGTH, 0)
}

pub(crate) fn mem_err(e: parastor_core::MemoryError) -> ScsiResult {
    DiskError::MemoryAccess(e).into()
}
