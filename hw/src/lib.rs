//! Wire formats shared by every layer of parastor.
//!
//! This crate holds the protocol and register definitions that parastor's
//! frontends and backends exchange with untrusted peers — NVMe commands and
//! completions, SCSI CDBs and sense data, StorVSP and VMBus packets, PCI
//! configuration space — as plain-old-data types, together with pure
//! parsing and validation of them. It allocates nothing and performs no I/O,
//! so that every other crate (including `no_std` ones) can share one
//! definition of each format.
//!
//! Today: SCSI (CDBs, sense data, VPD and mode pages — [`scsi`]), StorVSP
//! packets and SRBs ([`storvsp`]), VMBus ring buffers and packet descriptors
//! ([`vmbus`]), and the sector-geometry rules both sides of the pipeline
//! agree on. NVMe and PCI arrive with the NVMe issues.
#![no_std]

pub mod scsi;
pub mod storvsp;
pub mod vmbus;

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
