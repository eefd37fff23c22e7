//! INQUIRY: standard data and the vital product data (VPD) pages.
//!
//! Pages offered, as OpenHCL's `scsidisk` offers them except where noted:
//! 0x00 supported pages, 0x80 unit serial number (only with a serial),
//! 0x83 device identification, 0xB0 block limits, 0xB1 block device
//! characteristics (both always: OpenHCL only with unmap), 0xB2 logical
//! block provisioning (only with unmap), and the two Microsoft pages 0xCE
//! paging extent properties and 0xCF virtual device properties, which
//! OpenHCL reports for every disk whatever its configuration, and so does
//! parastor.

use super::{MAX_COMPARE_AND_WRITE_BLOCKS, MAX_UNMAP_DESCRIPTORS, ScsiDisk};
use crate::data::data_in;
use crate::inquiry::{push_t10_designator, standard_inquiry, vpd_page};
use crate::result::{Res, invalid_cdb};
use alloc::vec;
use alloc::vec::Vec;
use parastor_core::{SgList, UnmapBehavior};
use parastor_hw::scsi::{
    BlockCharacteristicsPage, BlockLimitsPage, DesignatorHeader, InquiryData,
    MSFT_MODE_SELECT_EXTENSION, MSFT_PAGE_VERSION, MSFT_VIRTUAL_DEVICE_SIGNATURE,
    MsftPagingExtentPage, MsftVirtualDevicePage, ProvisioningPage, VpdHeader, vpd,
};
use zerocopy::IntoBytes;

/// A direct-access device's VPD page header for a page of `size` bytes
/// in all.
fn header(page: u8, size: usize) -> VpdHeader {
    VpdHeader {
        device_type: 0,
        page,
        len: ((size - size_of::<VpdHeader>()) as u16).into(),
    }
}

impl ScsiDisk {
    pub(super) fn inquiry(&self, data: &SgList<'_>, evpd: bool, page: u8, alloc_len: usize) -> Res {
        if !evpd {
            let d = InquiryData {
                // HISUP, response data format 2.
                flags3: 0x12,
                // CMDQUE.
                flags7: 0x02,
                ..standard_inquiry(
                    self.params.vendor,
                    self.params.product,
                    self.params.revision,
                )
            };
            return data_in(data, d.as_bytes(), alloc_len);
        }
        let page = self.vpd_page(page).ok_or_else(invalid_cdb)?;
        data_in(data, &page, alloc_len)
    }

    /// The VPD pages offered, in ascending order.
    pub(super) fn vpd_pages(&self) -> Vec<u8> {
        let mut pages = vec![vpd::SUPPORTED_PAGES];
        if !self.params.serial.is_empty() {
            pages.push(vpd::UNIT_SERIAL_NUMBER);
        }
        pages.extend_from_slice(&[
            vpd::DEVICE_IDENTIFICATION,
            vpd::BLOCK_LIMITS,
            vpd::BLOCK_DEVICE_CHARACTERISTICS,
        ]);
        if self.unmap {
            pages.push(vpd::LOGICAL_BLOCK_PROVISIONING);
        }
        pages.extend_from_slice(&[
            vpd::MSFT_PAGING_EXTENT_PROPERTIES,
            vpd::MSFT_VIRTUAL_DEVICE_PROPERTIES,
        ]);
        pages
    }

    fn vpd_page(&self, page: u8) -> Option<Vec<u8>> {
        let with_header = |page: u8, body: &[u8]| vpd_page(0, page, body);
        let ss = self.disk.sector_size();
        Some(match page {
            vpd::SUPPORTED_PAGES => with_header(page, &self.vpd_pages()),
            vpd::UNIT_SERIAL_NUMBER if !self.params.serial.is_empty() => {
                let serial = &self.params.serial[..self.params.serial.len().min(252)];
                with_header(page, serial)
            }
            vpd::DEVICE_IDENTIFICATION => {
                let id = self.device_id;
                let mut body = Vec::new();
                push_t10_designator(&mut body, &self.params.vendor, &id);
                // NAA IEEE Registered Extended designator.
                body.extend_from_slice(
                    DesignatorHeader {
                        code_set: 1,
                        kind: 3,
                        reserved: 0,
                        len: 16,
                    }
                    .as_bytes(),
                );
                body.extend_from_slice(&[0x60, 0x02, 0x24, 0x80]);
                body.extend_from_slice(&id[0..6]);
                body.extend_from_slice(&id[10..16]);
                with_header(page, &body)
            }
            vpd::BLOCK_LIMITS => {
                let (lba_count, descs, gran) = if self.unmap {
                    (
                        u32::MAX,
                        MAX_UNMAP_DESCRIPTORS,
                        self.disk.optimal_unmap_sectors().max(1),
                    )
                } else {
                    (0, 0, 0)
                };
                let phys = self.disk.physical_sector_size().max(ss);
                let p = BlockLimitsPage {
                    header: header(page, size_of::<BlockLimitsPage>()),
                    wsnz: 1,
                    max_compare_write: MAX_COMPARE_AND_WRITE_BLOCKS,
                    opt_granularity: u16::try_from(phys / ss).unwrap_or(1).into(),
                    max_transfer: (self.params.max_transfer_bytes / ss).into(),
                    max_unmap_lba_count: lba_count.into(),
                    max_unmap_descriptors: descs.into(),
                    opt_unmap_granularity: gran.into(),
                    unmap_alignment: (if self.unmap { 0x8000_0000u32 } else { 0 }).into(),
                    max_write_same: (self.params.max_write_same_bytes / u64::from(ss)).into(),
                    ..Default::default()
                };
                p.as_bytes().to_vec()
            }
            vpd::BLOCK_DEVICE_CHARACTERISTICS => {
                let p = BlockCharacteristicsPage {
                    header: header(page, size_of::<BlockCharacteristicsPage>()),
                    rotation_rate: self.params.rotation_rate.into(),
                    ..Default::default()
                };
                p.as_bytes().to_vec()
            }
            vpd::LOGICAL_BLOCK_PROVISIONING if self.unmap => {
                let lbprz = if self.disk.unmap_behavior() == UnmapBehavior::Zeroes {
                    1 << 2
                } else {
                    0
                };
                let p = ProvisioningPage {
                    header: header(page, size_of::<ProvisioningPage>()),
                    flags: 0x80 | 0x40 | 0x20 | lbprz,
                    provisioning_type: 2,
                    ..Default::default()
                };
                p.as_bytes().to_vec()
            }
            vpd::MSFT_PAGING_EXTENT_PROPERTIES => MsftPagingExtentPage {
                header: header(page, size_of::<MsftPagingExtentPage>()),
                version: MSFT_PAGE_VERSION,
                flags: MSFT_MODE_SELECT_EXTENSION,
                reserved: [0; 2],
            }
            .as_bytes()
            .to_vec(),
            // Version 1 with no flags, as OpenHCL reports it: the
            // DisableIoRetries and Spaces bits exist only from version 2,
            // and LBPRZ is reported in VPD 0xB2 and READ CAPACITY(16).
            vpd::MSFT_VIRTUAL_DEVICE_PROPERTIES => MsftVirtualDevicePage {
                header: header(page, size_of::<MsftVirtualDevicePage>()),
                version: MSFT_PAGE_VERSION,
                flags: 0,
                reserved: [0; 2],
                signature: MSFT_VIRTUAL_DEVICE_SIGNATURE,
            }
            .as_bytes()
            .to_vec(),
            _ => return None,
        })
    }
}
