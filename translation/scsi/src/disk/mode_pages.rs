//! MODE SENSE and MODE SELECT of a disk: the caching (0x08) and control
//! (0x0A) pages.

use super::ScsiDisk;
use crate::mode_pages::{check_mode_sense, mode_select_pages, mode_sense_data};
use crate::result::{Res, invalid_cdb, invalid_param};
use alloc::vec::Vec;
use parastor_core::SgList;
use parastor_hw::scsi::{
    CachingFlags, CachingPage, ControlPage, ControlQueue, DeviceSpecific, ModePage, ModePageCode,
    PageControl,
};
use zerocopy::IntoBytes;

impl ScsiDisk {
    fn caching_page(&self, pc: PageControl) -> CachingPage {
        let wce = pc != PageControl::CHANGEABLE && self.params.write_cache;
        CachingPage {
            page: ModePageCode::new().with_page(ModePage::CACHING),
            len: (size_of::<CachingPage>() - 2) as u8,
            flags: CachingFlags::new().with_wce(wce),
            ..Default::default()
        }
    }

    fn control_page(&self, pc: PageControl) -> ControlPage {
        ControlPage {
            page: ModePageCode::new().with_page(ModePage::CONTROL),
            len: (size_of::<ControlPage>() - 2) as u8,
            // Queue algorithm modifier 1: unrestricted reordering of commands.
            queue: ControlQueue::new().with_algorithm(u8::from(pc != PageControl::CHANGEABLE)),
            ..Default::default()
        }
    }

    pub(super) fn mode_sense(
        &self,
        data: &SgList<'_>,
        pc: PageControl,
        page: ModePage,
        subpage: u8,
        alloc_len: usize,
        long: bool,
    ) -> Res {
        check_mode_sense(pc, page, subpage)?;
        let mut pages = Vec::new();
        match page {
            ModePage::CACHING => pages.extend_from_slice(self.caching_page(pc).as_bytes()),
            ModePage::CONTROL => pages.extend_from_slice(self.control_page(pc).as_bytes()),
            ModePage::ALL => {
                pages.extend_from_slice(self.caching_page(pc).as_bytes());
                pages.extend_from_slice(self.control_page(pc).as_bytes());
            }
            _ => return Err(invalid_cdb()),
        }
        let dsp = DeviceSpecific::new()
            .with_wp(self.disk.is_read_only())
            .with_dpofua(self.fua);
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
            let flags = match body {
                [flags, ..]
                    if code == ModePage::CACHING && body.len() == size_of::<CachingPage>() - 2 =>
                {
                    CachingFlags::from_bits(*flags)
                }
                _ => return Err(invalid_param()),
            };
            if flags.wce() != self.params.write_cache {
                return Err(invalid_param());
            }
            Ok(())
        })
    }
}
