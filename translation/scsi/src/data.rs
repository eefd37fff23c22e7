//! Moving a command's data: data-in and data-out buffers.

use crate::result::{Res, invalid_cdb, mem_err, param_len_error};
use parastor_core::SgList;
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

/// Reads the first `dst.len()` bytes of the data-out buffer (a parameter
/// list, or one block) into `dst`, a buffer of the caller's (on its stack
/// or from the scratch pool: never a heap allocation per command).
pub(crate) fn data_out(data: &SgList<'_>, dst: &mut [u8]) -> Res<()> {
    let view = data.subrange(0, dst.len()).map_err(|_| param_len_error())?;
    view.read_all(dst).map_err(mem_err)
}

/// Checks that the first `len` bytes of the data-out buffer can be read,
/// reading them through a small stack buffer (for parameter lists that
/// are accepted and ignored).
pub(crate) fn check_data_out(data: &SgList<'_>, len: usize) -> Res<()> {
    let view = data.subrange(0, len).map_err(|_| param_len_error())?;
    let mut buf = [0u8; 512];
    let mut at = 0;
    while at < len {
        let n = buf.len().min(len - at);
        view.subrange(at, n)
            .map_err(|_| param_len_error())?
            .read_all(&mut buf[..n])
            .map_err(mem_err)?;
        at += n;
    }
    Ok(())
}
