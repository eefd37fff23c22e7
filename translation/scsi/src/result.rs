//! The outcome of a command and the errors every SCSI device reports the
//! same way.

use crate::error::disk_error_result;
use parastor_core::DiskError;
use parastor_hw::scsi::{AdditionalSense, FieldPointer, ScsiStatus, SenseData};

/// The outcome of one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiResult {
    /// SCSI status.
    pub status: ScsiStatus,
    /// Sense data, with CHECK CONDITION (and TASK ABORTED).
    pub sense: Option<SenseData>,
    /// Bytes transferred to or from the data buffer.
    pub tx: usize,
}

impl ScsiResult {
    /// GOOD with `tx` bytes transferred.
    pub const fn good(tx: usize) -> Self {
        ScsiResult {
            status: ScsiStatus::GOOD,
            sense: None,
            tx,
        }
    }

    /// CHECK CONDITION with `sense`.
    pub const fn check(sense: SenseData) -> Self {
        ScsiResult {
            status: ScsiStatus::CHECK_CONDITION,
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

pub(crate) fn illegal(additional: AdditionalSense) -> ScsiResult {
    ScsiResult::check(SenseData::illegal(additional))
}

pub(crate) fn invalid_cdb() -> ScsiResult {
    illegal(AdditionalSense::INVALID_FIELD_IN_CDB)
}

/// INVALID FIELD IN CDB naming the field: it starts at `bit` of CDB byte
/// `byte` (SPC-5 sense-key specific field pointer).
pub(crate) fn invalid_cdb_field(byte: u16, bit: u8) -> ScsiResult {
    ScsiResult::check(SenseData {
        field: Some(FieldPointer::cdb(byte, bit)),
        ..SenseData::illegal(AdditionalSense::INVALID_FIELD_IN_CDB)
    })
}

pub(crate) fn invalid_param() -> ScsiResult {
    illegal(AdditionalSense::INVALID_FIELD_IN_PARAMETER_LIST)
}

pub(crate) fn param_len_error() -> ScsiResult {
    illegal(AdditionalSense::PARAMETER_LIST_LENGTH)
}

pub(crate) fn mem_err(e: parastor_core::MemoryError) -> ScsiResult {
    DiskError::MemoryAccess(e).into()
}
