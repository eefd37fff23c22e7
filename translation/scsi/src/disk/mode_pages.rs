//! MODE SENSE and MODE SELECT of a disk: the caching (0x08) and control
//! (0x0A) pages.

use super::ScsiDisk;
use crate::mode_pages::{check_mode_sense, mode_select_pages, mode_sense_data};
use crate::result::{Res, invalid_cdb, invalid_param};
use alloc::vec::Vec;
use parastor_core::SgList;
use parastor_hw::scsi::{CACHING_WCE, CachingPage, ControlPage, mode};
use zerocopy::IntoBytes;

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
