//! Builders for the disk stacks the tests, the fuzz harness and the
//! benchmarks use. They panic on invalid arguments: they are for tests.

use parastor_core::layered::{LayerConfig, LayerSource, LayeredDisk};
use parastor_core::ram::RamDisk;
use parastor_core::striped::StripedDisk;
use parastor_core::{Disk, DiskIo};

/// Wraps `io` in a [`Disk`].
pub fn disk(io: impl DiskIo) -> Disk {
    Disk::new(io).expect("valid disk metadata")
}

/// A RAM disk of `sectors` sectors, and a handle to resize it.
pub fn ram(sectors: u64, sector_size: u32) -> (RamDisk, Disk) {
    let ram = RamDisk::new(sectors * u64::from(sector_size), sector_size).expect("valid RAM disk");
    let d = disk(ram.clone());
    (ram, d)
}

/// A RAM disk of `sectors` sectors.
pub fn ram_disk(sectors: u64, sector_size: u32) -> Disk {
    ram(sectors, sector_size).1
}

/// A layer: `disk` with the given roles.
pub fn layer(disk: Disk, write_through: bool, read_cache: bool) -> LayerConfig {
    LayerConfig {
        layer: LayerSource::Disk(disk),
        write_through,
        read_cache,
    }
}

/// A new RAM layer sized from the layer below.
pub fn ram_layer(write_through: bool, read_cache: bool) -> LayerConfig {
    LayerConfig {
        layer: LayerSource::Ram {
            len_bytes: None,
            sector_size: None,
        },
        write_through,
        read_cache,
    }
}

/// A layered disk.
pub fn layered(read_only: bool, layers: Vec<LayerConfig>) -> Disk {
    disk(LayeredDisk::new(read_only, layers).expect("valid layered disk"))
}

/// A striped disk over `members`.
pub fn striped(members: Vec<Disk>, chunk_bytes: Option<u32>, sectors: Option<u64>) -> Disk {
    disk(StripedDisk::new(members, chunk_bytes, sectors).expect("valid striped disk"))
}

/// A striped disk over `n` fresh RAM members of `member_sectors` sectors.
pub fn striped_ram(n: usize, member_sectors: u64, sector_size: u32, chunk_bytes: u32) -> Disk {
    let members = (0..n)
        .map(|_| ram_disk(member_sectors, sector_size))
        .collect();
    striped(members, Some(chunk_bytes), None)
}

/// A file-backed disk of `sectors` zeroed sectors in a fresh temporary file
/// (unlinked once open; it lives as long as the disk).
pub fn file_disk(sectors: u64, sector_size: u32, read_only: bool) -> Disk {
    let file = tempfile::NamedTempFile::new().expect("temporary file");
    file.as_file()
        .set_len(sectors * u64::from(sector_size))
        .expect("size the temporary file");
    disk(
        parastor::file::FileDisk::open(file.path(), sector_size, read_only)
            .expect("open file disk"),
    )
}
