//! INQUIRY: standard data and the vital product data (VPD) pages.
//!
//! Pages offered, as OpenHCL's `scsidisk` offers them except where noted:
//! 0x00 supported pages, 0x80 unit serial number (only with a serial),
//! 0x83 device identification, 0xB0 block limits and 0xB1 block device
//! characteristics (both always: OpenHCL only with unmap), 0xB2 logical
//! block provisioning (only with unmap), and the two Microsoft pages 0xCE
//! paging extent properties and 0xCF virtual device properties, which
//! OpenHCL reports for every disk whatever its configuration, and so does
//! parastor. Block limits report a maximum transfer length and a finite
//! maximum unmap LBA count, both enforced (OpenHCL reports neither).

use super::{MAX_COMPARE_AND_WRITE_BLOCKS, MAX_UNMAP_DESCRIPTORS, ScsiDisk};
use crate::data::data_in;
use crate::inquiry::{push_t10_designator, standard_inquiry, vpd_page, with_versions};
use crate::result::{Res, invalid_cdb};
use alloc::vec;
use alloc::vec::Vec;
use parastor_core::{SgList, UnmapBehavior};
use parastor_hw::scsi::{
    BlockCharacteristicsPage, BlockLimitsFlags, BlockLimitsPage, CodeSet, DesignatorCodeSet,
    DesignatorHeader, DesignatorKind, DesignatorType, InquiryData, InquiryFlags3, InquiryFlags7,
    MSFT_PAGE_VERSION, MSFT_VIRTUAL_DEVICE_SIGNATURE, MsftPagingExtentFlags, MsftPagingExtentPage,
    MsftVirtualDevicePage, PeripheralDeviceType, ProvisioningFlags, ProvisioningPage,
    ProvisioningType, ProvisioningTypeByte, UnmapAlignment, VersionDescriptor, VpdHeader, VpdPage,
};
use zerocopy::IntoBytes;

/// A direct-access device's VPD page header for a page of `size` bytes
/// in all.
fn header(page: VpdPage, size: usize) -> VpdHeader {
    VpdHeader {
        peripheral: Default::default(),
        page,
        len: ((size - size_of::<VpdHeader>()) as u16).into(),
    }
}

impl ScsiDisk {
    pub(super) fn inquiry(
        &self,
        data: &SgList<'_>,
        evpd: bool,
        page: VpdPage,
        alloc_len: usize,
    ) -> Res {
        if !evpd {
            // SAM-5, SPC-4 (version 6) and SBC-3 claimed: initiators gate
            // SBC-3 features on the SBC-3 descriptor (libiscsi rejects a
            // 60-byte block limits page without it).
            let d = InquiryData {
                flags3: InquiryFlags3::new()
                    .with_hisup(true)
                    .with_response_data_format(2),
                flags7: InquiryFlags7::new().with_cmdque(true),
                ..standard_inquiry(
                    self.params.vendor,
                    self.params.product,
                    self.params.revision,
                )
            };
            let d = with_versions(
                d,
                &[
                    VersionDescriptor::SAM_5,
                    VersionDescriptor::SPC_4,
                    VersionDescriptor::SBC_3,
                ],
            );
            return data_in(data, &d, alloc_len);
        }
        let page = self.vpd_page(page).ok_or_else(invalid_cdb)?;
        data_in(data, &page, alloc_len)
    }

    /// The VPD pages offered, in ascending order.
    pub(super) fn vpd_pages(&self) -> Vec<VpdPage> {
        let mut pages = vec![VpdPage::SUPPORTED_PAGES];
        if !self.params.serial.is_empty() {
            pages.push(VpdPage::UNIT_SERIAL_NUMBER);
        }
        pages.extend_from_slice(&[
            VpdPage::DEVICE_IDENTIFICATION,
            VpdPage::BLOCK_LIMITS,
            VpdPage::BLOCK_DEVICE_CHARACTERISTICS,
        ]);
        if self.unmap {
            pages.push(VpdPage::LOGICAL_BLOCK_PROVISIONING);
        }
        pages.extend_from_slice(&[
            VpdPage::MSFT_PAGING_EXTENT_PROPERTIES,
            VpdPage::MSFT_VIRTUAL_DEVICE_PROPERTIES,
        ]);
        pages
    }

    fn vpd_page(&self, page: VpdPage) -> Option<Vec<u8>> {
        let with_header =
            |page: VpdPage, body: &[u8]| vpd_page(PeripheralDeviceType::DIRECT_ACCESS, page, body);
        let ss = self.disk.sector_size();
        Some(match page {
            VpdPage::SUPPORTED_PAGES => with_header(page, self.vpd_pages().as_bytes()),
            VpdPage::UNIT_SERIAL_NUMBER if !self.params.serial.is_empty() => {
                let serial = &self.params.serial[..self.params.serial.len().min(252)];
                with_header(page, serial)
            }
            VpdPage::DEVICE_IDENTIFICATION => {
                let id = self.device_id;
                let mut body = Vec::new();
                push_t10_designator(&mut body, &self.params.vendor, &id);
                // NAA IEEE Registered Extended designator.
                body.extend_from_slice(
                    DesignatorHeader {
                        code_set: DesignatorCodeSet::new().with_code_set(CodeSet::BINARY),
                        kind: DesignatorKind::new().with_designator_type(DesignatorType::NAA),
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
            VpdPage::BLOCK_LIMITS => {
                let (lba_count, descs, gran) = if self.unmap {
                    (
                        self.max_unmap_blocks(),
                        MAX_UNMAP_DESCRIPTORS,
                        self.disk.optimal_unmap_sectors().max(1),
                    )
                } else {
                    (0, 0, 0)
                };
                let phys = self.disk.physical_sector_size().max(ss);
                // OPTIMAL TRANSFER LENGTH stays 0 (not reported): a value
                // would have to stay within the maximum, which a transport
                // may lower after the disk is built.
                let p = BlockLimitsPage {
                    header: header(page, size_of::<BlockLimitsPage>()),
                    flags: BlockLimitsFlags::new().with_wsnz(true),
                    max_compare_write: MAX_COMPARE_AND_WRITE_BLOCKS,
                    opt_granularity: u16::try_from(phys / ss).unwrap_or(1).into(),
                    max_transfer: self.max_transfer_blocks().into(),
                    max_unmap_lba_count: lba_count.into(),
                    max_unmap_descriptors: descs.into(),
                    opt_unmap_granularity: gran.into(),
                    unmap_alignment: UnmapAlignment::new().with_ugavalid(self.unmap),
                    max_write_same: self.max_write_same_blocks().into(),
                    ..Default::default()
                };
                p.as_bytes().to_vec()
            }
            VpdPage::BLOCK_DEVICE_CHARACTERISTICS => {
                let p = BlockCharacteristicsPage {
                    header: header(page, size_of::<BlockCharacteristicsPage>()),
                    rotation_rate: self.params.rotation_rate.into(),
                    ..Default::default()
                };
                p.as_bytes().to_vec()
            }
            VpdPage::LOGICAL_BLOCK_PROVISIONING if self.unmap => {
                let zeroes = self.disk.unmap_behavior() == UnmapBehavior::Zeroes;
                let p = ProvisioningPage {
                    header: header(page, size_of::<ProvisioningPage>()),
                    flags: ProvisioningFlags::new()
                        .with_lbpu(true)
                        .with_lbpws(true)
                        .with_lbpws10(true)
                        .with_lbprz(zeroes.into()),
                    provisioning_type: ProvisioningTypeByte::new()
                        .with_provisioning_type(ProvisioningType::THIN),
                    ..Default::default()
                };
                p.as_bytes().to_vec()
            }
            VpdPage::MSFT_PAGING_EXTENT_PROPERTIES => MsftPagingExtentPage {
                header: header(page, size_of::<MsftPagingExtentPage>()),
                version: MSFT_PAGE_VERSION,
                flags: MsftPagingExtentFlags::new().with_mode_select_extension(true),
                reserved: [0; 2],
            }
            .as_bytes()
            .to_vec(),
            // Version 1 with no flags, as OpenHCL reports it: the
            // DisableIoRetries and Spaces bits exist only from version 2,
            // and LBPRZ is reported in VPD 0xB2 and READ CAPACITY(16).
            VpdPage::MSFT_VIRTUAL_DEVICE_PROPERTIES => MsftVirtualDevicePage {
                header: header(page, size_of::<MsftVirtualDevicePage>()),
                version: MSFT_PAGE_VERSION,
                flags: Default::default(),
                reserved: [0; 2],
                signature: MSFT_VIRTUAL_DEVICE_SIGNATURE,
            }
            .as_bytes()
            .to_vec(),
            _ => return None,
        })
    }
}
