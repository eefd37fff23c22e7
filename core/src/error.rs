//! The one error type of the disk pipeline.
//!
//! Every disk operation fails with a [`DiskError`]. Frontends translate it
//! into their protocol's status (SCSI sense data, NVMe status codes) through
//! one table each, so the variants name *what went wrong* in protocol-neutral
//! terms and carry just enough detail for that table.

use crate::addr::Gpa;
use alloc::boxed::Box;
use core::fmt;

/// Why a disk operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiskError {
    /// The request addressed sectors outside the disk, or its byte range is
    /// not representable (`(sector + count) * sector_size` overflows or
    /// exceeds `i64::MAX`).
    IllegalBlock,
    /// The request is malformed for this disk (for example a buffer that is
    /// not a whole number of sectors); the text says what was expected.
    InvalidInput(&'static str),
    /// The backing device failed the operation.
    Io(IoError),
    /// The medium reported an unrecoverable error at a known place.
    Medium(MediumError),
    /// A guest buffer of the request could not be accessed.
    MemoryAccess(MemoryError),
    /// The disk is read-only and the request would modify it.
    ReadOnly,
    /// A persistent reservation held by another initiator excludes the
    /// request.
    ReservationConflict,
    /// The request was aborted because another initiator preempted this
    /// initiator's registration with PREEMPT AND ABORT.
    AbortedByPreempt,
    /// The disk has no removable medium to eject.
    UnsupportedEject,
    /// The operation is not supported by this disk (for example persistent
    /// reservations on a disk that has none).
    Unsupported(&'static str),
    /// The disk is out of a resource it shares between requests (staging
    /// memory under its budget, queue slots) right now; the same request
    /// may succeed later. Frontends answer it with their protocol's
    /// "busy, retry" status (SCSI TASK SET FULL, StorVSP
    /// `SRB_STATUS_BUSY`), never as a failure of the medium.
    Busy(&'static str),
    /// A member of a composite disk (a stripe member, a layer) failed; the
    /// error says which member and why.
    Member {
        /// Index of the failing member (stripe member or layer, top = 0).
        index: u32,
        /// What the member reported.
        error: Box<DiskError>,
    },
}

impl DiskError {
    /// The underlying error, with any [`DiskError::Member`] context removed.
    ///
    /// Frontends map this to their protocol status; the context is for logs.
    pub fn root(&self) -> &DiskError {
        let mut e = self;
        while let DiskError::Member { error, .. } = e {
            e = error;
        }
        e
    }

    /// Wraps `self` with the index of the composite member that produced it.
    pub fn in_member(self, index: u32) -> DiskError {
        DiskError::Member {
            index,
            error: Box::new(self),
        }
    }
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskError::IllegalBlock => f.write_str("logical block address out of range"),
            DiskError::InvalidInput(what) => write!(f, "invalid request: {what}"),
            DiskError::Io(e) => write!(f, "I/O error: {e}"),
            DiskError::Medium(e) => write!(f, "medium error: {e}"),
            DiskError::MemoryAccess(e) => write!(f, "guest memory access failed: {e}"),
            DiskError::ReadOnly => f.write_str("disk is read-only"),
            DiskError::ReservationConflict => f.write_str("reservation conflict"),
            DiskError::AbortedByPreempt => f.write_str("aborted by PREEMPT AND ABORT"),
            DiskError::UnsupportedEject => f.write_str("disk has no removable medium to eject"),
            DiskError::Unsupported(what) => write!(f, "unsupported operation: {what}"),
            DiskError::Busy(what) => write!(f, "busy, retry later: {what}"),
            DiskError::Member { index, error } => write!(f, "member {index}: {error}"),
        }
    }
}

impl core::error::Error for DiskError {}

impl From<MemoryError> for DiskError {
    fn from(e: MemoryError) -> Self {
        DiskError::MemoryAccess(e)
    }
}

impl From<IoError> for DiskError {
    fn from(e: IoError) -> Self {
        DiskError::Io(e)
    }
}

/// A failure of the backing device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoError {
    /// The class of failure.
    pub kind: IoErrorKind,
    /// The backend's own code for it: an errno for host files and block
    /// devices, an NVMe status for NVMe namespaces, 0 when there is none.
    pub code: i32,
}

impl IoError {
    /// An error of `kind` with backend code `code`.
    pub const fn new(kind: IoErrorKind, code: i32) -> Self {
        Self { kind, code }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind.as_str())?;
        if self.code != 0 {
            write!(f, " (code {})", self.code)?;
        }
        Ok(())
    }
}

/// The class of a backing-device failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoErrorKind {
    /// The device failed or returned something that cannot be trusted.
    DeviceFailed,
    /// The device did not answer in time.
    TimedOut,
    /// The device is not ready (being reset, medium absent).
    NotReady,
    /// The backing store has no space left.
    NoSpace,
    /// The request was cancelled before it completed.
    Cancelled,
    /// The backing store does not support the operation (for example
    /// punching holes on a file system without it).
    Unsupported,
    /// Anything else; `code` says what.
    Other,
}

impl IoErrorKind {
    /// A short lowercase description.
    pub const fn as_str(self) -> &'static str {
        match self {
            IoErrorKind::DeviceFailed => "device failed",
            IoErrorKind::TimedOut => "timed out",
            IoErrorKind::NotReady => "device not ready",
            IoErrorKind::NoSpace => "no space left on backing store",
            IoErrorKind::Cancelled => "cancelled",
            IoErrorKind::Unsupported => "operation not supported by the backing store",
            IoErrorKind::Other => "I/O failed",
        }
    }
}

/// An unrecoverable error reported by the medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediumError {
    /// Data could not be read back.
    UnrecoveredRead,
    /// Data could not be written.
    WriteFault,
    /// End-to-end protection: guard (CRC) check failed.
    GuardCheck,
    /// End-to-end protection: application tag check failed.
    ApplicationTagCheck,
    /// End-to-end protection: reference tag check failed.
    ReferenceTagCheck,
}

impl fmt::Display for MediumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MediumError::UnrecoveredRead => "unrecovered read error",
            MediumError::WriteFault => "write fault",
            MediumError::GuardCheck => "guard check failed",
            MediumError::ApplicationTagCheck => "application tag check failed",
            MediumError::ReferenceTagCheck => "reference tag check failed",
        })
    }
}

/// A guest memory access that could not be performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryError {
    /// First guest physical address of the failed access (for
    /// [`MemoryErrorKind::BeyondBuffer`], the byte offset into the request
    /// buffer instead).
    pub gpa: Gpa,
    /// Length of the failed access in bytes.
    pub len: u64,
    /// Why it failed.
    pub kind: MemoryErrorKind,
}

impl MemoryError {
    /// An error of `kind` for the `len` bytes at `gpa`.
    pub const fn new(gpa: Gpa, len: u64, kind: MemoryErrorKind) -> Self {
        Self { gpa, len, kind }
    }
}

/// Why a guest memory access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemoryErrorKind {
    /// The range lies (partly) outside guest memory, or wraps: an address
    /// no valid request can name.
    OutOfRange,
    /// The range is inside guest memory but may not be touched now; the
    /// reason says why.
    Inaccessible(Denied),
    /// An atomic access was not naturally aligned (or not 1, 2, 4 or 8
    /// bytes wide).
    Misaligned,
    /// The buffer may not be written by the device (it carries data *to*
    /// the disk).
    WriteProtected,
    /// The request's scatter-gather list is shorter than the access.
    BeyondBuffer,
}

/// Why an address inside guest memory cannot be accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No memory is mapped there (a hole, or memory taken away).
    Unmapped,
    /// The page is private to a confidential guest; host or device access
    /// was asked for.
    Private,
    /// The page is shared with the host; private access was asked for.
    Shared,
    /// A higher VTL has protected the page against this access.
    VtlProtected,
    /// The backing failed under the access (for example a mapping that
    /// faulted).
    Fault,
}

impl Denied {
    /// A short lowercase description.
    pub const fn as_str(self) -> &'static str {
        match self {
            Denied::Unmapped => "not mapped",
            Denied::Private => "private to the guest",
            Denied::Shared => "shared with the host",
            Denied::VtlProtected => "protected by a higher VTL",
            Denied::Fault => "backing memory faulted",
        }
    }
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.kind {
            MemoryErrorKind::OutOfRange => "outside guest memory",
            MemoryErrorKind::Inaccessible(d) => {
                return write!(
                    f,
                    "{} bytes at gpa {}: inaccessible ({})",
                    self.len,
                    self.gpa,
                    d.as_str()
                );
            }
            MemoryErrorKind::Misaligned => "atomic access is not naturally aligned",
            MemoryErrorKind::WriteProtected => "buffer is not writable by the device",
            MemoryErrorKind::BeyondBuffer => {
                return write!(
                    f,
                    "{} bytes at offset {} of the request buffer: access past its end",
                    self.len,
                    self.gpa.get()
                );
            }
        };
        write!(f, "{} bytes at gpa {}: {why}", self.len, self.gpa)
    }
}
