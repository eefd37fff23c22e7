//! The `nvme_wire` fuzz harness: arbitrary bytes through the NVMe and PCI
//! wire parsers in `hw` that read what a peer wrote — SGL descriptors and
//! segments (from a guest), the namespace identification descriptor list,
//! LBA formats, BAR read-backs and doorbell offsets (from a device or a
//! guest).
//!
//! Input layout (every byte optional; missing bytes are zero):
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | flags: bit 0 = the SGL segment was reached through a Last Segment descriptor |
//! | 1 | CAP.DSTRD for the doorbell offsets (low 4 bits) |
//! | 2 | memory page size `4 KiB << (b % 5)` for the PRP rules |
//! | 3 .. | the payload, read by every parser in turn |
//!
//! Checked on every input: nothing panics, and each parser keeps its
//! promises — an accepted segment descriptor has a non-zero length that is
//! a multiple of 16, a segment yields exactly one result per 16 bytes and a
//! segment descriptor only in its last place of a non-last segment, every
//! identification descriptor lies inside the list with the length its type
//! fixes and at most one error ends the list, a decoded BAR size is a power
//! of two of at least 16 bytes, a doorbell decoded from an offset encodes
//! back to it, and PRP1 never covers more than the transfer or its page.

use parastor_hw::nvme::data::{
    Prp2Use, SGL_DESCRIPTOR_LEN, SglDescriptor, SglSegment, prp_list_data_entries,
    prp_list_entries_in_page, prp1_len, prp2_use,
};
use parastor_hw::nvme::identify::{IdentifyNamespace, ns_id_descriptors};
use parastor_hw::nvme::regs::Doorbell;
use parastor_hw::pci::config::memory_bar_size;
use zerocopy::FromBytes;

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    for (i, b) in word.iter_mut().enumerate() {
        *b = bytes.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from(u32_at(bytes, at)) | u64::from(u32_at(bytes, at + 4)) << 32
}

/// Runs one input; panics if a parser breaks a promise.
pub fn nvme_wire(data: &[u8]) {
    let flags = data.first().copied().unwrap_or(0);
    let dstrd = data.get(1).copied().unwrap_or(0) & 0xF;
    let page_size = 4096u64 << (data.get(2).copied().unwrap_or(0) % 5);
    let payload = data.get(3..).unwrap_or(&[]);

    sgl(payload, flags & 1 != 0);
    ns_id_list(payload);
    identify_namespace(payload);

    for at in (0..payload.len().max(8)).step_by(8).take(64) {
        let low = u32_at(payload, at);
        let high = u32_at(payload, at + 4);
        for high in [None, Some(high)] {
            if let Some(size) = memory_bar_size(low, high) {
                assert!(size.is_power_of_two() && size >= 16, "BAR size {size:#x}");
            }
        }
        let offset = u64_at(payload, at);
        for offset in [offset, offset & 0xFFFF, 0x1000 + (offset & 0xFFFF)] {
            if let Some(db) = Doorbell::from_offset(offset, dstrd) {
                assert_eq!(db.offset(dstrd), offset, "{db:?} stride {dstrd}");
            }
        }
        prp(u64_at(payload, at), u64::from(high), page_size);
    }
}

fn sgl(payload: &[u8], last: bool) {
    for chunk in payload.chunks_exact(SGL_DESCRIPTOR_LEN).take(256) {
        let bytes: &[u8; SGL_DESCRIPTOR_LEN] = chunk.try_into().unwrap();
        if let Ok(
            SglDescriptor::Segment { length, .. } | SglDescriptor::LastSegment { length, .. },
        ) = SglDescriptor::parse(bytes)
        {
            assert!(
                length != 0 && length.is_multiple_of(16),
                "segment length {length}"
            );
        }
    }
    let len = payload.len().min(4096);
    let bytes = &payload[..len];
    let Ok(segment) = SglSegment::parse(bytes, last) else {
        assert!(
            len == 0 || !len.is_multiple_of(SGL_DESCRIPTOR_LEN),
            "a {len}-byte segment was refused"
        );
        return;
    };
    let count = segment.len();
    assert_eq!(count, len / SGL_DESCRIPTOR_LEN);
    let mut seen = 0;
    for (i, desc) in segment.descriptors().enumerate() {
        seen += 1;
        if let Ok(desc) = desc {
            assert!(
                !desc.is_segment() || (!last && i + 1 == count),
                "segment descriptor at {i} of {count} (last segment: {last})"
            );
        }
    }
    assert_eq!(seen, count);
}

fn ns_id_list(payload: &[u8]) {
    let mut consumed = 0usize;
    let mut errors = 0;
    for item in ns_id_descriptors(payload) {
        assert_eq!(errors, 0, "a descriptor followed an error");
        match item {
            Ok(desc) => {
                if let Some(expected) = desc.nidt.expected_len() {
                    assert_eq!(desc.nid.len(), usize::from(expected));
                }
                assert!(!desc.nid.is_empty());
                consumed += 4 + desc.nid.len();
                assert!(consumed <= payload.len(), "descriptor past the list's end");
            }
            Err(_) => errors += 1,
        }
    }
}

fn identify_namespace(payload: &[u8]) {
    let mut page = [0u8; 4096];
    let n = payload.len().min(page.len());
    page[..n].copy_from_slice(&payload[..n]);
    let ns = IdentifyNamespace::read_from_bytes(&page).unwrap();
    if let Some(format) = ns.current_format()
        && let Some(size) = format.block_size()
    {
        assert!(size.is_power_of_two() && size >= 512, "block size {size}");
    }
}

fn prp(prp1: u64, len: u64, page_size: u64) {
    let first = prp1_len(prp1, len, page_size);
    assert!(
        first <= len && first <= page_size,
        "PRP1 covers {first} of {len}"
    );
    let entries = prp_list_data_entries(prp1, len, page_size);
    match prp2_use(prp1, len, page_size) {
        Prp2Use::Unused => assert_eq!(entries, 0),
        Prp2Use::Data => assert_eq!(entries, 1),
        Prp2Use::List => assert!(entries >= 2),
    }
    // A list pointer that is only dword aligned can leave no whole entry
    // in its page (the controller refuses it); a qword-aligned one always
    // leaves at least one.
    let in_page = prp_list_entries_in_page(prp1 & !3, page_size);
    assert!(in_page <= page_size / 8, "{in_page} entries in a list page");
    let in_page = prp_list_entries_in_page(prp1 & !7, page_size);
    assert!(
        (1..=page_size / 8).contains(&in_page),
        "{in_page} entries in a list page"
    );
}

#[cfg(test)]
mod tests {
    use super::nvme_wire;
    use parastor_hw::nvme::data::{SglError, SglSegment};

    #[test]
    fn segment_descriptor_in_the_middle_is_refused() {
        // Two descriptors: a segment descriptor first (type 2), then a data block.
        let mut seg = [0u8; 16];
        seg[8..12].copy_from_slice(&16u32.to_le_bytes());
        seg[15] = 0x20;
        let mut bytes = seg.to_vec();
        bytes.extend_from_slice(&[0u8; 16]);
        let results: Vec<_> = SglSegment::parse(&bytes, false)
            .unwrap()
            .descriptors()
            .collect();
        assert_eq!(results[0], Err(SglError::MisplacedSegmentDescriptor));
        assert!(results[1].is_ok());

        let mut input = vec![0u8, 0, 0];
        input.extend_from_slice(&bytes);
        nvme_wire(&input);
        nvme_wire(&[1, 3, 4]);
        nvme_wire(&[]);
    }
}
