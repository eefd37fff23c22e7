//! Wire formats shared by every layer of parastor.
//!
//! This crate holds the protocol and register definitions that parastor's
//! frontends and backends exchange with untrusted peers — SCSI CDBs and
//! sense data ([`scsi`]), StorVSP packets and SRBs ([`storvsp`]), VMBus ring
//! buffers and packet descriptors ([`vmbus`]), the TCMU command ring,
//! mailbox and entries ([`tcmu`]), NVMe registers, queue entries,
//! commands, data pointers, Identify data, log pages and status codes
//! ([`nvme`]), the PCI configuration header, BARs, MSI-X and the PCI
//! Express capability ([`pci`]), GUIDs ([`Guid`]) — as plain-old-data
//! types, together with pure parsing and validation of them, and the sector-geometry rules both
//! sides of the pipeline agree on. It allocates nothing and performs no
//! I/O, so that every other crate (including `no_std` ones) can share one
//! definition of each format.
//!
//! # One idiom
//!
//! Every format is declared the same way:
//!
//! - **Layouts** are `#[repr(C)]` zerocopy structs (`FromBytes`,
//!   `IntoBytes`, `Immutable`, `KnownLayout`, `Unaligned`) built from
//!   byte-order integer types (`zerocopy::big_endian` for SCSI,
//!   `zerocopy::little_endian` for StorVSP and VMBus), so they have
//!   alignment 1, no padding and one meaning on every host. They are
//!   declared with this crate's `wire_layout!`, which adds the derives and
//!   asserts each layout's size at compile time.
//! - **Registers, dwords and flag bytes** are `#[bitfield(uN)]` types
//!   (the `bitfield-struct` crate), with the byte-order type as their
//!   representation when they are wider than a byte, so they are layout
//!   fields themselves. Reserved bits are kept, so a value read and written
//!   back is unchanged.
//! - **Codes a peer sends** (operation codes, statuses, sense keys, page
//!   codes, versions, packet types, …) are *open enums*: an integer newtype
//!   with associated constants, declared with this crate's `open_enum!`.
//!   Every value of the integer is a value of the type; the known ones have
//!   names (and print them with `Debug`), the unknown ones print as
//!   `Type(0x..)`. An unknown value is never a parse failure by accident:
//!   where a parser does refuse one, it says so in its documentation and
//!   returns an error naming the value.
//!
//! # The parse contract
//!
//! Everything here that reads bytes from a peer follows one contract:
//!
//! 1. **Parsing never panics.** Every parser — [`scsi::parse_cdb`],
//!    [`scsi::mmc::parse_mmc_cdb`], [`scsi::ReportLuns::parse`],
//!    [`nvme::data::SglSegment::parse`],
//!    [`nvme::identify::ns_id_descriptors`],
//!    [`pci::config::memory_bar_size`],
//!    [`scsi::SenseData::parse`], [`storvsp::parse_packet`],
//!    [`vmbus::parse_gpa_direct`] and [`Guid::parse`] — accepts any byte
//!    string (or string) of any length and returns a typed value or an
//!    error that says what was wrong, never a panic. Layouts are read with
//!    zerocopy's checked `read_from_prefix` / `read_from_bytes`, so a short
//!    buffer is an error too.
//! 2. **A parsed value's accessors never panic.** Layout fields are plain
//!    data (any bit pattern is valid), bitfield getters mask their bits,
//!    open enums hold any value, and the borrowed views a parser returns
//!    (such as [`vmbus::GpaRangeRef`]) were bounds-checked when they were
//!    made. Bitfield *setters* are for values parastor builds: a narrow
//!    field debug-asserts that its value fits (use the `with_*_checked`
//!    forms for anything else).
//! 3. **Decoding is separate from judging.** A parser decodes what the
//!    bytes say; refusing a well-formed value is the protocol owner's
//!    decision, and a parser makes it only where its documentation says so
//!    (for example, [`scsi::parse_cdb`] refuses NACA and protection
//!    information for a disk that has neither, and [`storvsp::parse_packet`]
//!    refuses an operation whose payload it cannot size).
//!
//! The fuzz targets of `parastor-tests` and each module's "hostile input"
//! tests hold the crate to 1 and 2.
#![no_std]

mod open_enum;
#[macro_use]
mod wire_layout;

pub mod guid;
pub mod nvme;
pub mod pci;
pub mod scsi;
pub mod storvsp;
pub mod tcmu;
pub mod vmbus;

pub use guid::{Guid, ParseGuidError};

/// The smallest logical sector size parastor accepts, in bytes.
pub const MIN_SECTOR_SIZE: u32 = 512;

/// The largest logical sector size parastor accepts, in bytes.
///
/// SBC and NVMe allow larger blocks in principle; 64 KiB bounds the bounce
/// buffers a single sector can need while covering every real device.
pub const MAX_SECTOR_SIZE: u32 = 64 * 1024;

/// Whether `size` is a valid logical sector size: a power of two between
/// [`MIN_SECTOR_SIZE`] and [`MAX_SECTOR_SIZE`].
pub const fn is_valid_sector_size(size: u32) -> bool {
    size.is_power_of_two() && size >= MIN_SECTOR_SIZE && size <= MAX_SECTOR_SIZE
}

/// Whether `size` is a valid physical sector size for a disk whose logical
/// sector size is `logical`: a power of two, no smaller than the logical size.
pub const fn is_valid_physical_sector_size(size: u32, logical: u32) -> bool {
    size.is_power_of_two() && size >= logical
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sector_sizes() {
        assert!(is_valid_sector_size(512));
        assert!(is_valid_sector_size(4096));
        assert!(is_valid_sector_size(65536));
        assert!(!is_valid_sector_size(256));
        assert!(!is_valid_sector_size(520));
        assert!(!is_valid_sector_size(0));
        assert!(!is_valid_sector_size(128 * 1024));
        assert!(is_valid_physical_sector_size(4096, 512));
        assert!(!is_valid_physical_sector_size(512, 4096));
        assert!(!is_valid_physical_sector_size(3000, 512));
    }
}
