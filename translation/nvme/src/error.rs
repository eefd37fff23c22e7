//! The one table from [`DiskError`] to an NVMe completion status.
//!
//! Every disk failure the controller reports goes through
//! [`disk_error_status`]; nothing else in the crate invents a status for a
//! disk error. Statuses the controller raises itself (a bad data pointer, an
//! LBA range past the namespace, a compare mismatch) are chosen where they
//! are detected ([`crate::data`], [`crate::io`]).
//!
//! Facts are from the NVMe Base Specification 2.0 (§4.6.1.2 status codes)
//! and the NVM Command Set Specification 1.0 (§4.1.1), checked against how
//! Linux's host driver reads them (`nvme_error_status`, which honours DNR).
//!
//! Do Not Retry (DNR) is set where retrying the same command cannot
//! succeed: a malformed or out-of-range command, a write to a write-protected
//! namespace, a reservation conflict (it lasts until the host changes the
//! reservation), a medium error the backing device already failed to
//! recover, a guest buffer outside guest memory. It is clear where the same
//! command may succeed later: a backend that timed out, was reset, is not
//! ready or is out of a shared resource right now.
//!
//! Where parastor's table differs from OpenHCL's (reference §6.2):
//! - a read-only disk is *Namespace Is Write Protected* (generic 20h), the
//!   status for a namespace whose NSATTR write-protect bit is set, rather
//!   than *Attempted Write to Read Only Range* (command specific 82h), which
//!   belongs to read-only LBA ranges (the LBA Range Type feature);
//! - a backend failure is not a *Data Transfer Error* (that status means the
//!   transfer to or from host memory failed, and parastor reports exactly
//!   that for guest memory errors): a failed or untrustworthy backend is an
//!   *Internal Error*, one that timed out, was cancelled or is busy is
//!   *Command Interrupted* (the host should retry), one not ready is
//!   *Namespace Not Ready*, one out of space is *Capacity Exceeded*;
//! - every status carries a deliberate DNR bit.

use parastor_core::{DiskError, IoErrorKind, MediumError, MemoryError, MemoryErrorKind};
use parastor_hw::nvme::status::{CommandSpecificStatus, GenericStatus, MediaStatus, StatusWord};

/// The completion status for a failed disk operation.
pub(crate) fn disk_error_status(e: &DiskError) -> StatusWord {
    use GenericStatus as G;
    let (status, dnr) = match e.root() {
        DiskError::IllegalBlock => (StatusWord::generic(G::LBA_OUT_OF_RANGE), true),
        DiskError::InvalidInput(_) => (StatusWord::generic(G::INVALID_FIELD_IN_COMMAND), true),
        DiskError::Io(io) => match io.kind {
            IoErrorKind::NotReady => (StatusWord::generic(G::NAMESPACE_NOT_READY), false),
            IoErrorKind::TimedOut | IoErrorKind::Cancelled => {
                (StatusWord::generic(G::COMMAND_INTERRUPTED), false)
            }
            IoErrorKind::NoSpace => (StatusWord::generic(G::CAPACITY_EXCEEDED), true),
            IoErrorKind::Unsupported => (StatusWord::generic(G::INVALID_FIELD_IN_COMMAND), true),
            // DeviceFailed, Other and any kind added later.
            _ => (StatusWord::generic(G::INTERNAL_ERROR), false),
        },
        DiskError::Medium(m) => (StatusWord::media(medium_status(*m)), true),
        DiskError::MemoryAccess(m) => return memory_error_status(m),
        DiskError::ReadOnly => (StatusWord::generic(G::NAMESPACE_WRITE_PROTECTED), true),
        DiskError::ReservationConflict => (StatusWord::generic(G::RESERVATION_CONFLICT), true),
        DiskError::AbortedByPreempt => (StatusWord::generic(G::ABORTED_PREEMPT_AND_ABORT), false),
        DiskError::UnsupportedEject => (StatusWord::generic(G::INVALID_COMMAND_OPCODE), true),
        DiskError::Unsupported(_) => (StatusWord::generic(G::INVALID_FIELD_IN_COMMAND), true),
        DiskError::Busy(_) => (StatusWord::generic(G::COMMAND_INTERRUPTED), false),
        // `root()` never returns a member wrapper; any variant added to
        // DiskError later is a failure of the backend until it gets a row.
        _ => (StatusWord::generic(G::INTERNAL_ERROR), false),
    };
    status.with_dnr(dnr)
}

/// The media status for an unrecoverable medium error.
fn medium_status(m: MediumError) -> MediaStatus {
    match m {
        MediumError::UnrecoveredRead => MediaStatus::UNRECOVERED_READ_ERROR,
        MediumError::WriteFault => MediaStatus::WRITE_FAULT,
        MediumError::GuardCheck => MediaStatus::GUARD_CHECK_ERROR,
        MediumError::ApplicationTagCheck => MediaStatus::APPLICATION_TAG_CHECK_ERROR,
        MediumError::ReferenceTagCheck => MediaStatus::REFERENCE_TAG_CHECK_ERROR,
    }
}

/// The status for a guest memory access that failed while moving a
/// command's data (or reading its PRP list / SGL segments): *Data Transfer
/// Error*, with DNR unless the memory faulted underneath (a transient
/// failure of the backing, not of the guest's addresses).
pub(crate) fn memory_error_status(m: &MemoryError) -> StatusWord {
    use parastor_core::Denied;
    let transient = matches!(m.kind, MemoryErrorKind::Inaccessible(Denied::Fault));
    StatusWord::generic(GenericStatus::DATA_TRANSFER_ERROR).with_dnr(!transient)
}

/// A generic status with DNR set: the command is wrong and stays wrong.
pub(crate) const fn invalid(sc: GenericStatus) -> StatusWord {
    StatusWord::generic(sc).with_dnr(true)
}

/// A command-specific status with DNR set.
pub(crate) const fn invalid_specific(sc: CommandSpecificStatus) -> StatusWord {
    StatusWord::command_specific(sc).with_dnr(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parastor_core::{Denied, Gpa, IoError};
    use parastor_hw::nvme::status::StatusCodeType;

    /// One row per DiskError shape: (error, SCT, SC, DNR).
    fn table() -> std::vec::Vec<(DiskError, StatusCodeType, u8, bool)> {
        use StatusCodeType as T;
        let io = |k| DiskError::Io(IoError::new(k, 5));
        let mem = |k| DiskError::MemoryAccess(MemoryError::new(Gpa::new(0x1000), 512, k));
        std::vec![
            (DiskError::IllegalBlock, T::GENERIC, 0x80, true),
            (DiskError::InvalidInput("x"), T::GENERIC, 0x02, true),
            (io(IoErrorKind::DeviceFailed), T::GENERIC, 0x06, false),
            (io(IoErrorKind::Other), T::GENERIC, 0x06, false),
            (io(IoErrorKind::TimedOut), T::GENERIC, 0x21, false),
            (io(IoErrorKind::Cancelled), T::GENERIC, 0x21, false),
            (io(IoErrorKind::NotReady), T::GENERIC, 0x82, false),
            (io(IoErrorKind::NoSpace), T::GENERIC, 0x81, true),
            (io(IoErrorKind::Unsupported), T::GENERIC, 0x02, true),
            (
                DiskError::Medium(MediumError::UnrecoveredRead),
                T::MEDIA,
                0x81,
                true
            ),
            (
                DiskError::Medium(MediumError::WriteFault),
                T::MEDIA,
                0x80,
                true
            ),
            (
                DiskError::Medium(MediumError::GuardCheck),
                T::MEDIA,
                0x82,
                true
            ),
            (
                DiskError::Medium(MediumError::ApplicationTagCheck),
                T::MEDIA,
                0x83,
                true
            ),
            (
                DiskError::Medium(MediumError::ReferenceTagCheck),
                T::MEDIA,
                0x84,
                true
            ),
            (mem(MemoryErrorKind::OutOfRange), T::GENERIC, 0x04, true),
            (mem(MemoryErrorKind::Misaligned), T::GENERIC, 0x04, true),
            (mem(MemoryErrorKind::WriteProtected), T::GENERIC, 0x04, true),
            (mem(MemoryErrorKind::BeyondBuffer), T::GENERIC, 0x04, true),
            (
                mem(MemoryErrorKind::Inaccessible(Denied::Private)),
                T::GENERIC,
                0x04,
                true
            ),
            (
                mem(MemoryErrorKind::Inaccessible(Denied::Unmapped)),
                T::GENERIC,
                0x04,
                true
            ),
            (
                mem(MemoryErrorKind::Inaccessible(Denied::Fault)),
                T::GENERIC,
                0x04,
                false
            ),
            (DiskError::ReadOnly, T::GENERIC, 0x20, true),
            (DiskError::ReservationConflict, T::GENERIC, 0x83, true),
            (DiskError::AbortedByPreempt, T::GENERIC, 0x1B, false),
            (DiskError::UnsupportedEject, T::GENERIC, 0x01, true),
            (DiskError::Unsupported("pr"), T::GENERIC, 0x02, true),
            (DiskError::Busy("pool"), T::GENERIC, 0x21, false),
        ]
    }

    #[test]
    fn every_disk_error_has_its_row() {
        for (e, sct, sc, dnr) in table() {
            let s = disk_error_status(&e);
            assert_eq!(
                (s.sct(), s.sc(), s.dnr()),
                (sct, sc, dnr),
                "status for {e:?}"
            );
            assert!(!s.is_success(), "{e:?} must fail");
            assert!(!s.m() && s.crd() == 0, "{e:?}: no More/CRD");
        }
    }

    #[test]
    fn member_context_is_removed() {
        for (e, sct, sc, dnr) in table() {
            let wrapped = e.clone().in_member(2).in_member(0);
            let s = disk_error_status(&wrapped);
            assert_eq!((s.sct(), s.sc(), s.dnr()), (sct, sc, dnr), "{e:?}");
        }
    }

    #[test]
    fn memory_errors_are_data_transfer_errors() {
        let e = MemoryError::new(Gpa::new(u64::MAX - 4), 8, MemoryErrorKind::OutOfRange);
        let s = memory_error_status(&e);
        assert_eq!(
            s,
            StatusWord::generic(GenericStatus::DATA_TRANSFER_ERROR).with_dnr(true)
        );
        assert_eq!(s.into_bits(), 0x4004);
        assert_eq!(disk_error_status(&DiskError::MemoryAccess(e)), s);
    }

    #[test]
    fn helpers_set_dnr() {
        assert_eq!(
            invalid(GenericStatus::INVALID_FIELD_IN_COMMAND).into_bits(),
            0x4002
        );
    }
}
