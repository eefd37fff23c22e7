use super::*;
use parastor_core::RamGuestMemory;
use parastor_core::memory::GuestMemoryExt;
use parastor_hw::nvme::data::{RawSglDescriptor, SglDescriptorType};
use parastor_hw::nvme::queue::Cdw0;
use std::vec;
use std::vec::Vec;
use zerocopy::{FromZeros, IntoBytes};

const PAGE: u64 = 4096;
const MEM: u64 = 4 << 20;

fn mem() -> RamGuestMemory {
    RamGuestMemory::new(MEM)
}

fn r(gpa: u64, len: u64) -> GpaRange {
    GpaRange::new(Gpa::new(gpa), len)
}

fn put_entries(mem: &RamGuestMemory, at: u64, entries: &[u64]) {
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_at(Gpa::new(at), &bytes).unwrap();
}

fn prp(mem: &RamGuestMemory, prp1: u64, prp2: u64, len: u64) -> Result<Vec<GpaRange>, StatusWord> {
    let mut out = Vec::new();
    prp_ranges(mem, PAGE, prp1, prp2, len, Direction::ToHost, &mut out).map(|()| out)
}

fn dnr(sc: GenericStatus) -> StatusWord {
    StatusWord::generic(sc).with_dnr(true)
}

fn total(ranges: &[GpaRange]) -> u64 {
    ranges.iter().map(|r| r.len).sum()
}

#[test]
fn prp1_alone_may_carry_an_offset() {
    let m = mem();
    // PRP2 is reserved when PRP1 covers the transfer: garbage is ignored.
    assert_eq!(prp(&m, 0x1200, 0xDEAD_BEEF, 512), Ok(vec![r(0x1200, 512)]));
    assert_eq!(prp(&m, 0x1000, 3, PAGE), Ok(vec![r(0x1000, PAGE)]));
    // No data: nothing is checked, nothing is returned.
    assert_eq!(prp(&m, 0x1001, 0x7, 0), Ok(vec![]));
}

#[test]
fn prp2_as_second_page() {
    let m = mem();
    assert_eq!(
        prp(&m, 0x1E00, 0x5000, PAGE),
        Ok(vec![r(0x1E00, 512), r(0x5000, PAGE - 512)])
    );
    // Adjacent pages merge into one range.
    assert_eq!(
        prp(&m, 0x1000, 0x2000, 2 * PAGE),
        Ok(vec![r(0x1000, 2 * PAGE)])
    );
}

#[test]
fn prp_list_and_merging() {
    let m = mem();
    put_entries(&m, 0x10000, &[0x3000, 0x4000, 0x8000, 0x9000]);
    let got = prp(&m, 0x1000, 0x10000, 5 * PAGE - 100).unwrap();
    assert_eq!(
        got,
        vec![
            r(0x1000, PAGE),
            r(0x3000, 2 * PAGE),
            r(0x8000, 2 * PAGE - 100)
        ]
    );
}

#[test]
fn prp_list_pointer_with_offset_and_chaining() {
    let m = mem();
    // The list starts 16 bytes before its page ends: one data entry, then
    // a pointer to the next list page.
    put_entries(&m, 0x10FF0, &[0x3000, 0x20000]);
    put_entries(&m, 0x20000, &[0x5000, 0x7000, 0x9000]);
    let got = prp(&m, 0x1800, 0x10FF0, 2048 + 4 * PAGE).unwrap();
    assert_eq!(
        got,
        vec![
            r(0x1800, 2048),
            r(0x3000, PAGE),
            r(0x5000, PAGE),
            r(0x7000, PAGE),
            r(0x9000, PAGE)
        ]
    );
    // A list pointer 8 bytes before the page end holds only the chain.
    put_entries(&m, 0x30FF8, &[0x20000]);
    let got = prp(&m, 0x1000, 0x30FF8, 4 * PAGE).unwrap();
    assert_eq!(
        got,
        vec![
            r(0x1000, PAGE),
            r(0x5000, PAGE),
            r(0x7000, PAGE),
            r(0x9000, PAGE)
        ]
    );
}

#[test]
fn prp_list_in_list_across_full_pages() {
    let m = mem();
    // 1200 data pages after PRP1: 511 in the first list page, 511 in the
    // second, 178 in the third; every data entry is the same page.
    let n = 1200u64;
    let mut page1 = vec![0x3000u64; 511];
    page1.push(0x11000);
    let mut page2 = vec![0x3000u64; 511];
    page2.push(0x12000);
    put_entries(&m, 0x10000, &page1);
    put_entries(&m, 0x11000, &page2);
    put_entries(&m, 0x12000, &vec![0x3000u64; 178]);
    let len = PAGE + n * PAGE;
    let got = prp(&m, 0x1000, 0x10000, len).unwrap();
    assert_eq!(got.len() as u64, 1 + n);
    assert_eq!(total(&got), len);
    assert!(got[1..].iter().all(|x| *x == r(0x3000, PAGE)));
}

#[test]
fn prp_list_that_loops_back_is_bounded() {
    let m = mem();
    // A list page whose chain pointer is itself: a finite transfer still
    // ends, each pass consuming 511 data entries.
    let mut page = vec![0x3000u64; 511];
    page.push(0x10000);
    put_entries(&m, 0x10000, &page);
    let len = MAX_DATA_BYTES;
    let got = prp(&m, 0x1000, 0x10000, len).unwrap();
    assert_eq!(total(&got), len);
    assert_eq!(got.len() as u64, len / PAGE);
}

#[test]
fn prp_offsets_are_refused() {
    let m = mem();
    let poi = dnr(GenericStatus::PRP_OFFSET_INVALID);
    // PRP1 not dword aligned.
    assert_eq!(prp(&m, 0x1002, 0, 512), Err(poi));
    // PRP2 as a data page with an offset.
    assert_eq!(prp(&m, 0x1000, 0x5008, 2 * PAGE), Err(poi));
    // A list pointer that is not dword aligned.
    assert_eq!(prp(&m, 0x1000, 0x10002, 3 * PAGE), Err(poi));
    // A list pointer that is dword but not qword aligned, anywhere (at
    // the page's last 4 bytes no entry would fit).
    assert_eq!(prp(&m, 0x1000, 0x10FFC, 3 * PAGE), Err(poi));
    assert_eq!(prp(&m, 0x1000, 0x10004, 3 * PAGE), Err(poi));
    // A list data entry with an offset.
    put_entries(&m, 0x10000, &[0x3000, 0x4200]);
    assert_eq!(prp(&m, 0x1000, 0x10000, 3 * PAGE), Err(poi));
    // A chain pointer with an offset.
    put_entries(&m, 0x20FF0, &[0x3000, 0x30010]);
    assert_eq!(prp(&m, 0x1000, 0x20FF0, 4 * PAGE), Err(poi));
}

#[test]
fn prp_outside_guest_memory_is_a_data_transfer_error() {
    let m = mem();
    let dte = dnr(GenericStatus::DATA_TRANSFER_ERROR);
    // PRP1 beyond memory.
    assert_eq!(prp(&m, MEM, 0, 512), Err(dte));
    assert_eq!(prp(&m, MEM + 0x200, 0, 512), Err(dte));
    // PRP2 data page beyond memory, also when it continues PRP1's page
    // (the merged range is checked as a whole).
    assert_eq!(prp(&m, 0x1000, MEM, 2 * PAGE), Err(dte));
    assert_eq!(prp(&m, MEM - PAGE, MEM, 2 * PAGE), Err(dte));
    put_entries(&m, 0x10000, &[MEM - PAGE, MEM]);
    assert_eq!(prp(&m, MEM - 2 * PAGE, 0x10000, 3 * PAGE), Err(dte));
    // The list page itself beyond memory.
    assert_eq!(prp(&m, 0x1000, MEM + PAGE, 3 * PAGE), Err(dte));
    // A list entry beyond memory, and one whose range wraps.
    put_entries(&m, 0x10000, &[0x3000, 1 << 40]);
    assert_eq!(prp(&m, 0x1000, 0x10000, 3 * PAGE), Err(dte));
    put_entries(&m, 0x10000, &[0x3000, !(PAGE - 1)]);
    assert_eq!(prp(&m, 0x1000, 0x10000, 3 * PAGE), Err(dte));
    // An entry in the bit bucket window is not guest memory either.
    assert_eq!(prp(&m, BIT_BUCKET_BASE, 0, 512), Err(dte));
}

#[test]
fn failures_leave_the_vector_empty_and_keep_its_capacity() {
    let m = mem();
    let mut out = Vec::with_capacity(64);
    out.push(r(0, 1));
    let cap = out.capacity();
    let e = prp_ranges(&m, PAGE, 0x1002, 0, 512, Direction::ToHost, &mut out);
    assert!(e.is_err());
    assert!(out.is_empty());
    assert_eq!(out.capacity(), cap);
    prp_ranges(&m, PAGE, 0x1000, 0, 512, Direction::ToHost, &mut out).unwrap();
    assert_eq!(out, vec![r(0x1000, 512)]);
    assert_eq!(out.capacity(), cap);
}

#[test]
fn transfers_past_the_backstop_are_invalid() {
    let m = mem();
    assert_eq!(
        prp(&m, 0x1000, 0x2000, MAX_DATA_BYTES + 1),
        Err(dnr(GenericStatus::INVALID_FIELD_IN_COMMAND))
    );
    let mut out = Vec::new();
    let sgl = desc(SglDescriptorType::DATA_BLOCK, 0x1000, 512);
    assert_eq!(
        sgl_ranges(&m, &sgl, MAX_DATA_BYTES + 1, Direction::ToHost, &mut out),
        Err(dnr(GenericStatus::INVALID_FIELD_IN_COMMAND))
    );
}

fn sqe(psdt: u8, dptr: [u8; 16]) -> Sqe {
    let mut s = Sqe::new_zeroed();
    s.cdw0 = Cdw0::new().with_psdt(DataTransferKind::new(psdt));
    s.dptr = dptr;
    s
}

fn prp_dptr(prp1: u64, prp2: u64) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&prp1.to_le_bytes());
    d[8..].copy_from_slice(&prp2.to_le_bytes());
    d
}

#[test]
fn psdt_selects_the_walker() {
    let m = mem();
    let mut out = Vec::new();
    let invalid_field = dnr(GenericStatus::INVALID_FIELD_IN_COMMAND);
    let prp = sqe(0, prp_dptr(0x1000, 0));
    let got = command_ranges(&m, PAGE, true, &prp, 512, Direction::ToHost, &mut out);
    assert_eq!(
        (got, out.clone()),
        (Ok(DataLayout::default()), vec![r(0x1000, 512)])
    );
    let sgl = desc(SglDescriptorType::DATA_BLOCK, 0x2000, 512);
    for psdt in [1, 2] {
        let s = sqe(psdt, sgl);
        let got = command_ranges(&m, PAGE, true, &s, 512, Direction::ToHost, &mut out);
        assert_eq!(
            (got, out.clone()),
            (Ok(DataLayout::default()), vec![r(0x2000, 512)])
        );
        // Without SGL support an SGL command is an invalid field.
        let got = command_ranges(&m, PAGE, false, &s, 512, Direction::ToHost, &mut out);
        assert_eq!(got, Err(invalid_field));
        // Admin commands take PRPs only.
        assert_eq!(
            admin_ranges(&m, PAGE, &s, 512, Direction::ToHost, &mut out),
            Err(invalid_field)
        );
    }
    let reserved = sqe(3, sgl);
    let got = command_ranges(&m, PAGE, true, &reserved, 512, Direction::ToHost, &mut out);
    assert_eq!(got, Err(invalid_field));
    assert_eq!(
        admin_ranges(&m, PAGE, &prp, 512, Direction::ToController, &mut out),
        Ok(())
    );
    assert_eq!(out, vec![r(0x1000, 512)]);
}

fn desc(ty: SglDescriptorType, address: u64, length: u32) -> [u8; 16] {
    RawSglDescriptor::new(ty, address, length)
        .as_bytes()
        .try_into()
        .unwrap()
}

fn put_descs(mem: &RamGuestMemory, at: u64, descs: &[[u8; 16]]) {
    let bytes: Vec<u8> = descs.iter().flatten().copied().collect();
    mem.write_at(Gpa::new(at), &bytes).unwrap();
}

fn sgl(
    mem: &RamGuestMemory,
    sgl1: [u8; 16],
    len: u64,
    dir: Direction,
) -> Result<(Vec<GpaRange>, DataLayout), StatusWord> {
    let mut out = Vec::new();
    sgl_ranges(mem, &sgl1, len, dir, &mut out).map(|l| (out, l))
}

use SglDescriptorType as T;

#[test]
fn sgl_single_data_block() {
    let m = mem();
    let d = desc(T::DATA_BLOCK, 0x1003, 1000);
    for dir in [Direction::ToHost, Direction::ToController] {
        assert_eq!(
            sgl(&m, d, 1000, dir),
            Ok((vec![r(0x1003, 1000)], DataLayout::default()))
        );
    }
    let len_invalid = dnr(GenericStatus::DATA_SGL_LENGTH_INVALID);
    // Shorter or longer than the transfer.
    assert_eq!(sgl(&m, d, 1024, Direction::ToHost), Err(len_invalid));
    assert_eq!(sgl(&m, d, 512, Direction::ToHost), Err(len_invalid));
}

#[test]
fn sgl_segments_chain_to_a_last_segment() {
    let m = mem();
    put_descs(
        &m,
        0x20000,
        &[
            desc(T::DATA_BLOCK, 0x1000, 512),
            desc(T::DATA_BLOCK, 0x0, 0), // zero length: no data
            desc(T::DATA_BLOCK, 0x1200, 512),
            desc(T::LAST_SEGMENT, 0x30000, 32),
        ],
    );
    put_descs(
        &m,
        0x30000,
        &[
            desc(T::DATA_BLOCK, 0x8000, 1024),
            desc(T::DATA_BLOCK, 0x9000, 2048),
        ],
    );
    let seg = desc(T::SEGMENT, 0x20000, 64);
    let (got, layout) = sgl(&m, seg, 4096, Direction::ToController).unwrap();
    assert_eq!(got, vec![r(0x1000, 1024), r(0x8000, 1024), r(0x9000, 2048)]);
    assert_eq!(layout.bucket_bytes, 0);
    // SGL1 may itself be a last segment.
    let last = desc(T::LAST_SEGMENT, 0x30000, 32);
    let (got, _) = sgl(&m, last, 3072, Direction::ToHost).unwrap();
    assert_eq!(got, vec![r(0x8000, 1024), r(0x9000, 2048)]);
    // Longer or shorter than the transfer.
    let len_invalid = dnr(GenericStatus::DATA_SGL_LENGTH_INVALID);
    assert_eq!(sgl(&m, seg, 4095, Direction::ToHost), Err(len_invalid));
    assert_eq!(sgl(&m, seg, 4097, Direction::ToHost), Err(len_invalid));
}

#[test]
fn sgl_bit_buckets_on_reads_only() {
    let m = mem();
    put_descs(
        &m,
        0x20000,
        &[
            desc(T::DATA_BLOCK, 0x1000, 100),
            desc(T::BIT_BUCKET, 0x5555, 300),
            desc(T::BIT_BUCKET, 0, 100),
            desc(T::DATA_BLOCK, 0x1064, 524),
        ],
    );
    let seg = desc(T::LAST_SEGMENT, 0x20000, 64);
    let (got, layout) = sgl(&m, seg, 1024, Direction::ToHost).unwrap();
    assert_eq!(
        got,
        vec![r(0x1000, 100), r(BIT_BUCKET_BASE, 400), r(0x1064, 524)]
    );
    assert_eq!(layout.bucket_bytes, 400);
    assert_eq!(
        sgl(&m, seg, 1024, Direction::ToController),
        Err(dnr(GenericStatus::SGL_DESCRIPTOR_TYPE_INVALID))
    );
    // A whole transfer to the bit bucket, straight from SGL1.
    let bucket = desc(T::BIT_BUCKET, 0, 512);
    assert_eq!(
        sgl(&m, bucket, 512, Direction::ToHost),
        Ok((
            vec![r(BIT_BUCKET_BASE, 512)],
            DataLayout { bucket_bytes: 512 }
        ))
    );
}

#[test]
fn sgl_descriptor_types_and_segments_are_checked() {
    let m = mem();
    let type_invalid = dnr(GenericStatus::SGL_DESCRIPTOR_TYPE_INVALID);
    let seg_invalid = dnr(GenericStatus::INVALID_SGL_SEGMENT_DESCRIPTOR);
    let number_invalid = dnr(GenericStatus::INVALID_NUMBER_OF_SGL_DESCRIPTORS);
    // Keyed, transport and vendor types; an offset sub type.
    for ty in [
        T::KEYED_DATA_BLOCK,
        T::TRANSPORT_DATA_BLOCK,
        T::VENDOR_SPECIFIC,
        T::new(7),
    ] {
        assert_eq!(
            sgl(&m, desc(ty, 0x1000, 512), 512, Direction::ToHost),
            Err(type_invalid)
        );
    }
    let mut offset = desc(T::DATA_BLOCK, 0x1000, 512);
    offset[15] |= 1;
    assert_eq!(sgl(&m, offset, 512, Direction::ToHost), Err(type_invalid));
    // Segment lengths: zero or not a multiple of 16.
    assert_eq!(
        sgl(&m, desc(T::SEGMENT, 0x20000, 0), 512, Direction::ToHost),
        Err(seg_invalid)
    );
    assert_eq!(
        sgl(
            &m,
            desc(T::LAST_SEGMENT, 0x20000, 24),
            512,
            Direction::ToHost
        ),
        Err(seg_invalid)
    );
    // A segment that is not qword aligned.
    put_descs(&m, 0x20004, &[desc(T::DATA_BLOCK, 0x1000, 512)]);
    assert_eq!(
        sgl(
            &m,
            desc(T::LAST_SEGMENT, 0x20004, 16),
            512,
            Direction::ToHost
        ),
        Err(seg_invalid)
    );
    // A segment descriptor that is not the last of its segment.
    put_descs(
        &m,
        0x20000,
        &[
            desc(T::SEGMENT, 0x30000, 16),
            desc(T::DATA_BLOCK, 0x1000, 512),
        ],
    );
    assert_eq!(
        sgl(&m, desc(T::SEGMENT, 0x20000, 32), 512, Direction::ToHost),
        Err(number_invalid)
    );
    // A segment descriptor inside a last segment.
    put_descs(
        &m,
        0x20000,
        &[
            desc(T::DATA_BLOCK, 0x1000, 512),
            desc(T::SEGMENT, 0x30000, 16),
        ],
    );
    assert_eq!(
        sgl(
            &m,
            desc(T::LAST_SEGMENT, 0x20000, 32),
            1024,
            Direction::ToHost
        ),
        Err(seg_invalid)
    );
    // A bad descriptor type inside a segment.
    put_descs(&m, 0x20000, &[desc(T::KEYED_DATA_BLOCK, 0x1000, 512)]);
    assert_eq!(
        sgl(
            &m,
            desc(T::LAST_SEGMENT, 0x20000, 16),
            512,
            Direction::ToHost
        ),
        Err(type_invalid)
    );
}

#[test]
fn sgl_loops_and_huge_segments_are_bounded() {
    let m = mem();
    let number_invalid = dnr(GenericStatus::INVALID_NUMBER_OF_SGL_DESCRIPTORS);
    // A segment whose only descriptor points back at itself.
    put_descs(&m, 0x20000, &[desc(T::SEGMENT, 0x20000, 16)]);
    assert_eq!(
        sgl(&m, desc(T::SEGMENT, 0x20000, 16), 512, Direction::ToHost),
        Err(number_invalid)
    );
    // A two-segment cycle that also carries data each time round.
    put_descs(
        &m,
        0x20000,
        &[
            desc(T::DATA_BLOCK, 0x1000, 0),
            desc(T::SEGMENT, 0x30000, 32),
        ],
    );
    put_descs(
        &m,
        0x30000,
        &[desc(T::BIT_BUCKET, 0, 0), desc(T::SEGMENT, 0x20000, 32)],
    );
    assert_eq!(
        sgl(&m, desc(T::SEGMENT, 0x20000, 32), 512, Direction::ToHost),
        Err(number_invalid)
    );
    // A segment claiming 2^28 descriptors is refused before it is read.
    assert_eq!(
        sgl(
            &m,
            desc(T::SEGMENT, 0x20000, 0xFFFF_FFF0),
            512,
            Direction::ToHost
        ),
        Err(number_invalid)
    );
    // Exactly the bound is fine: 1023 zero-length blocks then one real.
    let mut descs = vec![desc(T::DATA_BLOCK, 0x1000, 0); (MAX_SGL_DESCRIPTORS - 2) as usize];
    descs.push(desc(T::DATA_BLOCK, 0x1000, 512));
    put_descs(&m, 0x40000, &descs);
    let len = descs.len() as u32 * 16;
    let (got, _) = sgl(
        &m,
        desc(T::LAST_SEGMENT, 0x40000, len),
        512,
        Direction::ToHost,
    )
    .unwrap();
    assert_eq!(got, vec![r(0x1000, 512)]);
    descs.push(desc(T::DATA_BLOCK, 0x1000, 0));
    put_descs(&m, 0x40000, &descs);
    assert_eq!(
        sgl(
            &m,
            desc(T::LAST_SEGMENT, 0x40000, len + 16),
            512,
            Direction::ToHost
        ),
        Err(number_invalid)
    );
}

#[test]
fn sgl_outside_guest_memory_is_a_data_transfer_error() {
    let m = mem();
    let dte = dnr(GenericStatus::DATA_TRANSFER_ERROR);
    assert_eq!(
        sgl(
            &m,
            desc(T::DATA_BLOCK, MEM - 100, 512),
            512,
            Direction::ToHost
        ),
        Err(dte)
    );
    assert_eq!(
        sgl(
            &m,
            desc(T::DATA_BLOCK, u64::MAX - 100, 512),
            512,
            Direction::ToHost
        ),
        Err(dte)
    );
    assert_eq!(
        sgl(
            &m,
            desc(T::DATA_BLOCK, BIT_BUCKET_BASE, 512),
            512,
            Direction::ToHost
        ),
        Err(dte)
    );
    // The segment itself cannot be read.
    assert_eq!(
        sgl(&m, desc(T::SEGMENT, MEM - 16, 32), 512, Direction::ToHost),
        Err(dte)
    );
    assert_eq!(
        sgl(
            &m,
            desc(T::SEGMENT, u64::MAX - 15, 32),
            512,
            Direction::ToHost
        ),
        Err(dte)
    );
}

#[test]
fn bucket_memory_routes_the_window_to_scratch() {
    let guest = mem();
    let scratch = RamGuestMemory::new(1024);
    let both = BucketMemory::new(&guest, &scratch);
    both.write_at(Gpa::new(0x1000), &[1, 2, 3]).unwrap();
    both.write_at(Gpa::new(BIT_BUCKET_BASE + 10), &[7, 8])
        .unwrap();
    let mut b = [0u8; 3];
    guest.read_at(Gpa::new(0x1000), &mut b).unwrap();
    assert_eq!(b, [1, 2, 3]);
    let mut b = [0u8; 2];
    scratch.read_at(Gpa::new(10), &mut b).unwrap();
    assert_eq!(b, [7, 8]);
    both.read_at(Gpa::new(BIT_BUCKET_BASE + 10), &mut b)
        .unwrap();
    assert_eq!(b, [7, 8]);
    both.fill_at(Gpa::new(BIT_BUCKET_BASE), 4, 9).unwrap();
    assert_eq!(scratch.read_obj::<u32>(Gpa::new(0)).unwrap(), 0x0909_0909);
    // Past the scratch buffer, or past the guest: errors, not panics.
    assert!(
        both.write_at(Gpa::new(BIT_BUCKET_BASE + 1020), &[0; 8])
            .is_err()
    );
    assert!(both.read_at(Gpa::new(u64::MAX - 2), &mut [0; 8]).is_err());
    assert!(both.write_at(Gpa::new(MEM - 1), &[0; 2]).is_err());
    assert!(both.check(r(BIT_BUCKET_BASE, 1024), Access::Write).is_ok());
    assert!(both.check(r(BIT_BUCKET_BASE, 1025), Access::Write).is_err());
    let mut pins = PinSet::with_capacity(1);
    assert_eq!(
        both.pin(
            &[r(BIT_BUCKET_BASE, 16)],
            Access::Write,
            DmaDomainId::KERNEL,
            &mut pins
        ),
        Err(PinError::Unsupported)
    );
}

#[test]
fn walkers_are_total_over_random_input() {
    let m = mem();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut out = Vec::new();
    let mut noise = vec![0u8; 64 << 10];
    for round in 0..3000 {
        // Random PRP lists and SGL segments in the first 64 KiB, pointing
        // mostly at low memory so walks go deep.
        if round % 50 == 0 {
            rng.fill(&mut noise);
            for chunk in noise.chunks_exact_mut(8) {
                if rng.u8(..) < 200 {
                    let v = rng.u64(..0x20000) & !0x3;
                    chunk.copy_from_slice(&v.to_le_bytes());
                }
            }
            m.write_at(Gpa::new(0), &noise).unwrap();
        }
        let mut dptr = [0u8; 16];
        rng.fill(&mut dptr);
        if rng.bool() {
            dptr[..8].copy_from_slice(&(rng.u64(..0x20000) & !0x3).to_le_bytes());
            dptr[8..].copy_from_slice(&(rng.u64(..0x20000) & !0x3).to_le_bytes());
        }
        let len = match rng.u8(..4) {
            0 => rng.u64(..=MAX_DATA_BYTES),
            1 => rng.u64(..=(1 << 20)),
            _ => rng.u64(..=(64 << 10)),
        };
        let dir = if rng.bool() {
            Direction::ToHost
        } else {
            Direction::ToController
        };
        let s = sqe(rng.u8(..4), dptr);
        match command_ranges(&m, PAGE, rng.bool(), &s, len, dir, &mut out) {
            Ok(layout) => {
                assert_eq!(total(&out), len, "ranges cover the transfer exactly");
                let buckets: u64 = out
                    .iter()
                    .filter(|r| r.gpa.get() >= BIT_BUCKET_BASE)
                    .map(|r| r.len)
                    .sum();
                assert_eq!(buckets, layout.bucket_bytes);
                for x in out.iter().filter(|r| r.gpa.get() < BIT_BUCKET_BASE) {
                    assert!(x.gpa.get() + x.len <= MEM);
                }
            }
            Err(status) => {
                assert!(out.is_empty());
                assert!(status.dnr() && !status.is_success());
            }
        }
        assert!(out.len() <= (MAX_DATA_BYTES / PAGE + 1).max(MAX_SGL_DESCRIPTORS as u64) as usize);
    }
}
