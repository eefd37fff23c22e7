//! INQUIRY building blocks every device type shares: standard INQUIRY
//! data, VPD page framing and the T10 vendor ID designator.

use alloc::vec::Vec;
use parastor_hw::scsi::{
    CodeSet, DesignatorCodeSet, DesignatorHeader, DesignatorKind, DesignatorType, InquiryData,
    InquiryVersionData, Peripheral, PeripheralDeviceType, VersionDescriptor, VpdHeader, VpdPage,
};
use zerocopy::IntoBytes;

/// VPD page `page` of a device of type `device_type`: its header, then
/// `body`.
pub(crate) fn vpd_page(device_type: PeripheralDeviceType, page: VpdPage, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(size_of::<VpdHeader>() + body.len());
    v.extend_from_slice(
        VpdHeader {
            peripheral: Peripheral::new().with_device_type(device_type),
            page,
            len: (body.len() as u16).into(),
        }
        .as_bytes(),
    );
    v.extend_from_slice(body);
    v
}

/// Standard INQUIRY data (SPC-4, 36 bytes) of a direct-access device with
/// this identity; other device types override the fields that differ.
pub(crate) fn standard_inquiry(
    vendor: [u8; 8],
    product: [u8; 16],
    revision: [u8; 4],
) -> InquiryData {
    InquiryData {
        version: 6,
        additional_len: (size_of::<InquiryData>() - 5) as u8,
        vendor,
        product,
        revision,
        ..Default::default()
    }
}

/// Length of standard INQUIRY data with version descriptors.
pub(crate) const INQUIRY_WITH_VERSIONS_LEN: usize =
    size_of::<InquiryData>() + size_of::<InquiryVersionData>();

/// Standard INQUIRY data claiming `versions` (at most eight; more are
/// dropped): `data`, its additional length set to cover bytes 36..74, then
/// the version descriptors.
pub(crate) fn with_versions(
    data: InquiryData,
    versions: &[VersionDescriptor],
) -> [u8; INQUIRY_WITH_VERSIONS_LEN] {
    let data = InquiryData {
        additional_len: (INQUIRY_WITH_VERSIONS_LEN - 5) as u8,
        ..data
    };
    let mut tail = InquiryVersionData::default();
    for (slot, v) in tail.version_descriptors.iter_mut().zip(versions) {
        *slot = *v;
    }
    let mut out = [0u8; INQUIRY_WITH_VERSIONS_LEN];
    let (head, rest) = out.split_at_mut(size_of::<InquiryData>());
    head.copy_from_slice(data.as_bytes());
    rest.copy_from_slice(tail.as_bytes());
    out
}

/// Appends a VPD 0x83 T10 vendor ID designator: the 8-byte vendor
/// identification, then the 16-byte device id.
///
/// The code set is binary (1), as OpenHCL reports it: the vendor-specific
/// part is a GUID's raw bytes, not ASCII graphic characters (20h-7Eh), so
/// code set 2 (ASCII) would misdescribe it, and initiators that trust the
/// code set (udev's `scsi_id` copies an ASCII designator verbatim but
/// hex-encodes a binary one) would build identifiers from unprintable
/// bytes.
pub(crate) fn push_t10_designator(body: &mut Vec<u8>, vendor: &[u8; 8], id: &[u8; 16]) {
    body.extend_from_slice(
        DesignatorHeader {
            code_set: DesignatorCodeSet::new().with_code_set(CodeSet::BINARY),
            kind: DesignatorKind::new().with_designator_type(DesignatorType::T10_VENDOR_ID),
            reserved: 0,
            len: 24,
        }
        .as_bytes(),
    );
    body.extend_from_slice(vendor);
    body.extend_from_slice(id);
}
