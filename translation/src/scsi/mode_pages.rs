//! MODE SENSE and MODE SELECT: the caching (0x08) and control (0x0A)
//! pages.

use super::{
    Res, ScsiDisk, data_in, data_out, illegal, invalid_cdb, invalid_param, param_len_error,
};
use alloc::vec::Vec;
use parastor_core::SgList;
use parastor_hw::scsi::{
    CACHING_WCE, CachingPage, ControlPage, ModeHeader6, ModeHeader10, asc, mode,
};
use zerocopy::{FromBytes, IntoBytes};

impl ScsiDisk {
    fn caching_page(&self, pc: u8) -> CachingPage {
        let wce = pc != mode::PC_CHANGEABLE && self.params.write_cache;
        CachingPage {
            page: mode::CACHING_PAGE,
            len: (size_of::<CachingPage>() - 2) as u8,
            flags: if wce { CACHING_WCE } else { 0 },
            ..Default::default()
        }
    }

    fn control_page(&self, pc: u8) -> ControlPage {
        ControlPage {
            page: mode::CONTROL_PAGE,
            len: (size_of::<ControlPage>() - 2) as u8,
            // Unrestricted reordering of commands.
            queue: if pc == mode::PC_CHANGEABLE { 0 } else { 0x10 },
            ..Default::default()
        }
    }

    pub(super) fn mode_sense(
        &self,
        data: &SgList<'_>,
        pc: u8,
        page: u8,
        subpage: u8,
        alloc_len: usize,
        long: bool,
    ) -> Res {
        check_mode_sense(pc, page, subpage)?;
        let mut pages = Vec::new();
        match page {
            mode::CACHING_PAGE => pages.extend_from_slice(self.caching_page(pc).as_bytes()),
            mode::CONTROL_PAGE => pages.extend_from_slice(self.control_page(pc).as_bytes()),
            mode::ALL_PAGES => {
                pages.extend_from_slice(self.caching_page(pc).as_bytes());
                pages.extend_from_slice(self.control_page(pc).as_bytes());
            }
            _ => return Err(invalid_cdb()),
        }
        let mut dsp = 0;
        if self.disk.is_read_only() {
            dsp |= mode::DSP_WP;
        }
        if self.fua {
            dsp |= mode::DSP_DPOFUA;
        }
        mode_sense_data(data, long, dsp, &pages, alloc_len)
    }

    pub(super) fn mode_select(
        &self,
        data: &SgList<'_>,
        pf: bool,
        sp: bool,
        param_len: usize,
        long: bool,
    ) -> Res {
        mode_select_pages(data, pf, sp, param_len, long, |code, body| {
            // Only the caching page, unchanged WCE (OpenHCL's rule: the
            // write cache setting belongs to the host).
            if code != mode::CACHING_PAGE || body.len() != size_of::<CachingPage>() - 2 {
                return Err(invalid_param());
            }
            if (body[0] & CACHING_WCE != 0) != self.params.write_cache {
                return Err(invalid_param());
            }
            Ok(())
        })
    }
}

/// The MODE SENSE checks common to every device: saved values are not
/// supported, and subpages only as "all pages, all subpages".
pub(super) fn check_mode_sense(pc: u8, page: u8, subpage: u8) -> Res<()> {
    if pc == mode::PC_SAVED {
        return Err(illegal(asc::SAVING_PARAMETERS_NOT_SUPPORTED, 0));
    }
    if subpage != 0 && !(page == mode::ALL_PAGES && subpage == 0xFF) {
        return Err(invalid_cdb());
    }
    Ok(())
}

/// MODE SENSE parameter data: the 6-byte or (`long`) 10-byte header with
/// device-specific parameter `dsp` and no block descriptors, then `pages`,
/// truncated to `alloc_len`.
pub(super) fn mode_sense_data(
    data: &SgList<'_>,
    long: bool,
    dsp: u8,
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
pub(super) fn mode_select_pages(
    data: &SgList<'_>,
    pf: bool,
    sp: bool,
    param_len: usize,
    long: bool,
    mut page: impl FnMut(u8, &[u8]) -> Res<()>,
) -> Res {
    if sp || (!pf && param_len != 0) {
        return Err(invalid_cdb());
    }
    if param_len == 0 {
        return Ok(0);
    }
    let list = data_out(data, param_len)?;
    let (bdl, hdr_len) = if long {
        let (h, _) = ModeHeader10::read_from_prefix(&list).map_err(|_| param_len_error())?;
        (
            usize::from(h.block_desc_len.get()),
            size_of::<ModeHeader10>(),
        )
    } else {
        let (h, _) = ModeHeader6::read_from_prefix(&list).map_err(|_| param_len_error())?;
        (usize::from(h.block_desc_len), size_of::<ModeHeader6>())
    };
    let mut pages = list.get(hdr_len + bdl..).ok_or_else(param_len_error)?;
    while !pages.is_empty() {
        let (code, len) = match pages {
            [code, len, ..] => (*code, usize::from(*len)),
            _ => return Err(param_len_error()),
        };
        let body = pages.get(2..2 + len).ok_or_else(param_len_error)?;
        // SPF: the subpage format, for pages this adapter does not have.
        if code & 0x40 != 0 {
            return Err(invalid_param());
        }
        page(code & 0x3F, body)?;
        pages = &pages[2 + len..];
    }
    Ok(param_len)
}
