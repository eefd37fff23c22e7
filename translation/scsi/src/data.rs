//! Moving a command's data: data-in and data-out buffers, and private
//! staging memory the disk reads into or writes from.

use crate::result::{Res, invalid_cdb, mem_err, param_len_error};
use alloc::vec;
use alloc::vec::Vec;
use parastor_core::Gpa;
use parastor_core::{GpaRange, LocalMemory, SgList};
use parastor_hw::scsi::ReadCapacity10Data;
use zerocopy::IntoBytes;

/// Copies `bytes`, truncated to `alloc_len` and the buffer, into `data`;
/// returns the bytes transferred.
pub(crate) fn data_in(data: &SgList<'_>, bytes: &[u8], alloc_len: usize) -> Res {
    let n = bytes.len().min(alloc_len).min(data.len());
    if n == 0 {
        return Ok(0);
    }
    let view = data.subrange(0, n).map_err(|_| invalid_cdb())?;
    view.write_all(&bytes[..n]).map_err(mem_err)?;
    Ok(n)
}

/// READ CAPACITY(10) data for `blocks` blocks of `block_len` bytes (the
/// last LBA clamped to 32 bits, as SBC-4 asks).
pub(crate) fn read_capacity10(data: &SgList<'_>, blocks: u64, block_len: u32) -> Res {
    let d = ReadCapacity10Data {
        last_lba: u32::try_from(blocks.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .into(),
        block_len: block_len.into(),
    };
    data_in(data, d.as_bytes(), usize::MAX)
}

/// Reads the first `len` bytes of the data-out buffer (a parameter list).
pub(crate) fn data_out(data: &SgList<'_>, len: usize) -> Res<Vec<u8>> {
    let view = data.subrange(0, len).map_err(|_| param_len_error())?;
    let mut v = vec![0; len];
    view.read_all(&mut v).map_err(mem_err)?;
    Ok(v)
}

/// A private staging buffer the disk can read into or write from.
pub(crate) struct Scratch {
    pub(crate) mem: LocalMemory,
    range: [GpaRange; 1],
}

impl Scratch {
    pub(crate) fn new(len: usize) -> Self {
        Scratch {
            mem: LocalMemory::new(len),
            range: [GpaRange::new(Gpa::new(0), len as u64)],
        }
    }

    pub(crate) fn sg(&self, len: usize, writable: bool) -> SgList<'_> {
        SgList::local(&self.mem, &self.range, writable)
            .subrange(0, len)
            .unwrap_or_else(|_| SgList::local(&self.mem, &self.range, writable))
    }
}
