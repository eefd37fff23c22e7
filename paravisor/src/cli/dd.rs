//! `parastor disk read` and `write`: raw sectors to stdout and from stdin.
//!
//! Transfers go through a 1 MiB staging buffer presented to the disk as
//! guest memory, one disk call per buffer-full.

use super::CliError;
use parastor_core::Gpa;
use parastor_core::{Disk, GpaRange, IoOptions, LocalMemory, SgList};
use parastor_runtime::block_on;
use std::io::{self, Read, Write};

/// Bytes moved per disk call.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The range check both commands do up front, so the message can say what
/// the disk holds.
fn check_range(disk: &Disk, lba: u64, count: u64) -> Result<(), CliError> {
    let sectors = disk.sector_count();
    match lba.checked_add(count) {
        Some(end) if end <= sectors => Ok(()),
        _ => Err(CliError::new(format!(
            "sectors {lba}..{} are outside the disk: it has {sectors} sectors (LBAs 0..{sectors})",
            u128::from(lba) + u128::from(count)
        ))),
    }
}

/// Sectors per disk call: as many whole sectors as fit in [`CHUNK_BYTES`].
fn chunk_sectors(disk: &Disk) -> u64 {
    (CHUNK_BYTES as u64 / u64::from(disk.sector_size())).max(1)
}

/// Reads `count` sectors at `lba` and writes their bytes to `out`.
pub fn read_sectors(
    disk: &Disk,
    lba: u64,
    count: u64,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    check_range(disk, lba, count)?;
    let ss = u64::from(disk.sector_size());
    let per_call = chunk_sectors(disk);
    let mem = LocalMemory::new((per_call * ss) as usize);
    let (mut sector, end) = (lba, lba + count);
    while sector < end {
        let n = per_call.min(end - sector);
        let bytes = n * ss;
        let ranges = [GpaRange::new(Gpa::new(0), bytes)];
        let sg = SgList::new(&mem, &ranges, true).map_err(|e| CliError::new(e.to_string()))?;
        block_on(disk.read(sg, sector, IoOptions::default())).map_err(|e| {
            CliError::new(format!("reading {n} sectors at LBA {sector} failed: {e}"))
        })?;
        mem.with(|data| out.write_all(&data[..bytes as usize]))
            .map_err(|e| CliError::new(format!("writing to standard output failed: {e}")))?;
        sector += n;
    }
    out.flush()
        .map_err(|e| CliError::new(format!("writing to standard output failed: {e}")))
}

/// Reads whole sectors from `input` until it ends, writes them at `lba`,
/// and flushes the disk. Returns the number of sectors written.
///
/// Input that does not end on a sector boundary, or that would run past the
/// end of the disk, is an error; the whole buffers before the one where that
/// was found have been written by then (as with `dd`).
pub fn write_sectors(disk: &Disk, lba: u64, input: &mut dyn Read) -> Result<u64, CliError> {
    check_range(disk, lba, 0)?;
    let ss = u64::from(disk.sector_size());
    let per_call = chunk_sectors(disk);
    let mem = LocalMemory::new((per_call * ss) as usize);
    let mut sector = lba;
    loop {
        let filled = mem
            .with_mut(|buf| fill(input, buf))
            .map_err(|e| CliError::new(format!("reading standard input failed: {e}")))?;
        if filled == 0 {
            break;
        }
        let written = sector - lba;
        if !(filled as u64).is_multiple_of(ss) {
            return Err(CliError::new(format!(
                "standard input ended after {} bytes: expected a whole number of {ss}-byte \
                 sectors ({written} sectors were written)",
                written * ss + filled as u64
            )));
        }
        let n = filled as u64 / ss;
        if sector
            .checked_add(n)
            .is_none_or(|end| end > disk.sector_count())
        {
            return Err(CliError::new(format!(
                "standard input holds more than fits: the disk has {} sectors, and {n} more \
                 sectors at LBA {sector} would pass its end ({written} sectors were written)",
                disk.sector_count()
            )));
        }
        let ranges = [GpaRange::new(Gpa::new(0), filled as u64)];
        let sg = SgList::new(&mem, &ranges, false).map_err(|e| CliError::new(e.to_string()))?;
        block_on(disk.write(sg, sector, IoOptions::default())).map_err(|e| {
            CliError::new(format!("writing {n} sectors at LBA {sector} failed: {e}"))
        })?;
        sector += n;
        if filled < CHUNK_BYTES.min((per_call * ss) as usize) {
            break;
        }
    }
    block_on(disk.flush(IoOptions::default()))
        .map_err(|e| CliError::new(format!("flushing the disk failed: {e}")))?;
    Ok(sector - lba)
}

/// Reads from `input` until `buf` is full or the input ends.
fn fill(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;

    /// A reader that hands out at most `step` bytes per call.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn round_trip_across_chunks() {
        let disk = spec::build_spec("mem:4M").unwrap();
        let data: Vec<u8> = (0..CHUNK_BYTES * 2 + 512 * 3)
            .map(|i| (i % 253) as u8)
            .collect();
        let mut input = Trickle {
            data: &data,
            step: 100_000,
        };
        assert_eq!(
            write_sectors(&disk, 17, &mut input).unwrap(),
            data.len() as u64 / 512
        );
        let mut out = Vec::new();
        read_sectors(&disk, 17, data.len() as u64 / 512, &mut out).unwrap();
        assert_eq!(out, data);
        let mut out = Vec::new();
        read_sectors(&disk, 0, 1, &mut out).unwrap();
        assert_eq!(out, vec![0; 512]);
    }

    #[test]
    fn partial_sector_is_rejected() {
        let disk = spec::build_spec("mem:1M").unwrap();
        let err = write_sectors(&disk, 0, &mut &[1u8; 700][..]).unwrap_err();
        assert!(err.to_string().contains("ended after 700 bytes"), "{err}");
        assert!(err.to_string().contains("512-byte sectors"), "{err}");
        // Nothing was written.
        let mut out = Vec::new();
        read_sectors(&disk, 0, 2, &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn out_of_range_is_rejected() {
        let disk = spec::build_spec("mem:1M").unwrap();
        let mut out = Vec::new();
        let err = read_sectors(&disk, 2040, 9, &mut out).unwrap_err();
        assert!(err.to_string().contains("it has 2048 sectors"), "{err}");
        assert!(read_sectors(&disk, u64::MAX, 2, &mut out).is_err());
        assert!(out.is_empty());
        let err = write_sectors(&disk, 2047, &mut &[0u8; 1024][..]).unwrap_err();
        assert!(err.to_string().contains("would pass its end"), "{err}");
        assert!(write_sectors(&disk, 2049, &mut &[0u8; 0][..]).is_err());
        assert_eq!(write_sectors(&disk, 2048, &mut &[0u8; 0][..]).unwrap(), 0);
    }
}
