//! MODE SENSE and MODE SELECT framing every device type shares: the
//! common CDB checks, the mode parameter headers, and walking a MODE SELECT
//! parameter list page by page.

use crate::data::data_in;
use crate::result::{Res, illegal, invalid_cdb, invalid_param, mem_err, param_len_error};
use alloc::vec::Vec;
use parastor_core::SgList;
use parastor_hw::scsi::{
    AdditionalSense, DeviceSpecific, ModeHeader6, ModeHeader10, ModePage, ModePageCode, PageControl,
};
use zerocopy::FromBytes;
use zerocopy::IntoBytes;

/// The MODE SENSE checks common to every device: saved values are not
/// supported, and subpages only as "all pages, all subpages".
pub(crate) fn check_mode_sense(pc: PageControl, page: ModePage, subpage: u8) -> Res<()> {
    if pc == PageControl::SAVED {
        return Err(illegal(AdditionalSense::SAVING_PARAMETERS_NOT_SUPPORTED));
    }
    if subpage != 0 && !(page == ModePage::ALL && subpage == 0xFF) {
        return Err(invalid_cdb());
    }
    Ok(())
}

/// MODE SENSE parameter data: the 6-byte or (`long`) 10-byte header with
/// device-specific parameter `dsp` and no block descriptors, then `pages`,
/// truncated to `alloc_len`.
pub(crate) fn mode_sense_data(
    data: &SgList<'_>,
    long: bool,
    dsp: DeviceSpecific,
    pages: &[u8],
    alloc_len: usize,
) -> Res {
    let mut out = Vec::with_capacity(size_of::<ModeHeader10>() + pages.len());
    if long {
        let h = ModeHeader10 {
            data_len: ((size_of::<ModeHeader10>() - 2 + pages.len()) as u16).into(),
            device_specific: dsp,
            ..Default::default()
        };
        out.extend_from_slice(h.as_bytes());
    } else {
        let h = ModeHeader6 {
            data_len: (size_of::<ModeHeader6>() - 1 + pages.len()) as u8,
            device_specific: dsp,
            ..Default::default()
        };
        out.extend_from_slice(h.as_bytes());
    }
    out.extend_from_slice(pages);
    data_in(data, &out, alloc_len)
}

/// MODE SELECT(6) or (`long`) (10): checks the CDB (SP not supported, a
/// list needs PF), reads the parameter list, skips its header and block
/// descriptors and calls `page(code, body)` for each mode page in it (a
/// subpage-format page is refused). `param_len` on success.
pub(crate) fn mode_select_pages(
    data: &SgList<'_>,
    pf: bool,
    sp: bool,
    param_len: usize,
    long: bool,
    mut page: impl FnMut(ModePage, &[u8]) -> Res<()>,
) -> Res {
    if sp || (!pf && param_len != 0) {
        return Err(invalid_cdb());
    }
    if param_len == 0 {
        return Ok(0);
    }
    // Read piece by piece into stack buffers (a header, then each page:
    // at most 2 + 255 bytes), every byte once.
    let list = data.subrange(0, param_len).map_err(|_| param_len_error())?;
    let read = |at: usize, dst: &mut [u8]| -> Res<()> {
        list.subrange(at, dst.len())
            .map_err(|_| param_len_error())?
            .read_all(dst)
            .map_err(mem_err)
    };
    let hdr_len = if long {
        size_of::<ModeHeader10>()
    } else {
        size_of::<ModeHeader6>()
    };
    let mut hdr = [0u8; size_of::<ModeHeader10>()];
    let hdr = hdr.get_mut(..hdr_len).filter(|_| param_len >= hdr_len);
    let hdr = hdr.ok_or_else(param_len_error)?;
    read(0, hdr)?;
    let bdl = if long {
        let (h, _) = ModeHeader10::read_from_prefix(hdr).map_err(|_| param_len_error())?;
        usize::from(h.block_desc_len.get())
    } else {
        let (h, _) = ModeHeader6::read_from_prefix(hdr).map_err(|_| param_len_error())?;
        usize::from(h.block_desc_len)
    };
    let mut at = hdr_len + bdl;
    if at > param_len {
        return Err(param_len_error());
    }
    let mut page_buf = [0u8; 2 + 255];
    while at < param_len {
        if param_len - at < 2 {
            return Err(param_len_error());
        }
        read(at, &mut page_buf[..2])?;
        let (code, len) = (
            ModePageCode::from_bits(page_buf[0]),
            usize::from(page_buf[1]),
        );
        if len > param_len - at - 2 {
            return Err(param_len_error());
        }
        let body = &mut page_buf[2..2 + len];
        read(at + 2, body)?;
        // SPF: the subpage format, for pages this adapter does not have.
        if code.spf() {
            return Err(invalid_param());
        }
        page(code.page(), body)?;
        at += 2 + len;
    }
    Ok(param_len)
}
