//! Why an access to a [`MappedRegion`](crate::MappedRegion) was refused.

use core::fmt;

/// An access to a mapping that was refused before any byte was touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessError {
    /// Offset of the refused access from the start of the mapping.
    pub offset: usize,
    /// Length of the refused access in bytes.
    pub len: usize,
    /// What was wrong with it.
    pub kind: AccessErrorKind,
}

/// What was wrong with a refused access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessErrorKind {
    /// The range does not lie inside the mapping (or its end overflows).
    OutOfBounds {
        /// Length of the mapping in bytes.
        region_len: usize,
    },
    /// An atomic access whose offset is not a multiple of its width.
    Misaligned {
        /// The alignment the access needs (its width in bytes).
        align: usize,
    },
    /// A write to a mapping that was mapped read-only.
    ReadOnly,
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (offset, len) = (self.offset, self.len);
        match self.kind {
            AccessErrorKind::OutOfBounds { region_len } => write!(
                f,
                "access of {len} bytes at offset {offset:#x} does not fit in the \
                 {region_len}-byte mapping"
            ),
            AccessErrorKind::Misaligned { align } => write!(
                f,
                "atomic access of {len} bytes at offset {offset:#x} is not \
                 {align}-byte aligned"
            ),
            AccessErrorKind::ReadOnly => write!(
                f,
                "write of {len} bytes at offset {offset:#x} to a read-only mapping"
            ),
        }
    }
}

impl std::error::Error for AccessError {}
