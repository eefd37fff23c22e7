//! Striped-disk behaviour beyond the shared conformance suite: every
//! construction rule, the chunk mapping checked against the members
//! directly, per-member unmap coalescing, flush fan-out, metadata merging,
//! and errors that name the failing member.

use parastor_core::Gpa;
use parastor_core::striped::{DEFAULT_CHUNK_BYTES, StripedDisk, StripedDiskError};
use parastor_core::{Disk, DiskError, UnmapBehavior};
use parastor_tests::buf::{Layout, TestBuf, flush, pattern, read, read_vec, unmap, write_vec};
use parastor_tests::doubles::{Call, INJECTED, TestDisk};
use parastor_tests::stacks::{disk, layer, layered, ram_disk, striped};

fn err(members: Vec<Disk>, chunk: Option<u32>, count: Option<u64>) -> StripedDiskError {
    match StripedDisk::new(members, chunk, count) {
        Ok(_) => panic!("construction succeeded"),
        Err(e) => e,
    }
}

fn rams(n: usize, sectors: u64, ss: u32) -> Vec<Disk> {
    (0..n).map(|_| ram_disk(sectors, ss)).collect()
}

/// `n` observed 64-sector RAM members (completing inline, or not), striped
/// in 8-sector chunks.
fn observed(n: usize, asynchronous: bool) -> (Vec<TestDisk>, Disk) {
    let t: Vec<TestDisk> = (0..n)
        .map(|_| {
            let x = TestDisk::new(ram_disk(64, 512));
            if asynchronous { x.asynchronous() } else { x }
        })
        .collect();
    let d = striped(
        t.iter().map(|x| disk(x.clone())).collect(),
        Some(8 * 512),
        None,
    );
    (t, d)
}

#[test]
fn error_empty_member_list() {
    assert_eq!(err(vec![], None, None), StripedDiskError::EmptyMemberList);
    assert_eq!(
        err(vec![], Some(4096), Some(8)),
        StripedDiskError::EmptyMemberList
    );
}

#[test]
fn error_mismatched_members() {
    let m = vec![ram_disk(64, 512), ram_disk(64, 512), ram_disk(8, 4096)];
    assert_eq!(
        err(m, Some(4096), None),
        StripedDiskError::MismatchedSectorSize {
            member: 2,
            expected: 512,
            found: 4096
        }
    );
    let m = vec![ram_disk(64, 512), ram_disk(72, 512)];
    assert_eq!(
        err(m, Some(4096), None),
        StripedDiskError::MismatchedSectorCount {
            member: 1,
            expected: 64,
            found: 72
        }
    );
    let ro = layered(true, vec![layer(ram_disk(64, 512), false, false)]);
    let m = vec![ram_disk(64, 512), ro.clone()];
    assert_eq!(
        err(m, Some(4096), None),
        StripedDiskError::MismatchedReadOnly { member: 1 }
    );
    let m = vec![ro.clone(), ram_disk(64, 512), ram_disk(64, 512)];
    assert_eq!(
        err(m, Some(4096), None),
        StripedDiskError::MismatchedReadOnly { member: 1 }
    );
    // All read-only is fine, and the disk is read-only.
    let d = striped(vec![ro.clone(), ro], Some(4096), None);
    assert!(d.is_read_only());
    assert_eq!(write_vec(&d, 0, &[0; 512]), Err(DiskError::ReadOnly));
    assert_eq!(unmap(&d, 0, 1), Err(DiskError::ReadOnly));
}

#[test]
fn error_invalid_chunk_size() {
    for (ss, chunk) in [
        (512, 0),
        (512, 4097),
        (512, 100),
        (4096, 512),
        (4096, 6144),
        (4096, 0),
    ] {
        assert_eq!(
            err(rams(2, 64, ss), Some(chunk), None),
            StripedDiskError::InvalidChunkSize {
                chunk_bytes: chunk,
                sector_size: ss
            },
            "chunk {chunk} on {ss}-byte sectors"
        );
    }
}

#[test]
fn error_members_smaller_than_a_chunk() {
    assert_eq!(
        err(rams(2, 7, 512), Some(4096), None),
        StripedDiskError::MemberTooSmall {
            member_sectors: 7,
            chunk_sectors: 8
        }
    );
    // The default chunk is 128 KiB.
    assert_eq!(
        err(rams(2, 255, 512), None, None),
        StripedDiskError::MemberTooSmall {
            member_sectors: 255,
            chunk_sectors: 256
        }
    );
}

#[test]
fn error_logical_count() {
    // 3 members of 64 sectors, 8-sector chunks: 192 sectors, stripes of 24.
    assert_eq!(
        err(rams(3, 64, 512), Some(4096), Some(193)),
        StripedDiskError::InvalidLogicalSectorCount {
            requested: 193,
            total: 192
        }
    );
    assert_eq!(
        err(rams(3, 64, 512), Some(4096), Some(216)),
        StripedDiskError::InvalidLogicalSectorCount {
            requested: 216,
            total: 192
        }
    );
    assert_eq!(
        err(rams(3, 64, 512), Some(4096), Some(u64::MAX)),
        StripedDiskError::InvalidLogicalSectorCount {
            requested: u64::MAX,
            total: 192
        }
    );
    for bad in [0, 1, 23, 25, 100] {
        assert_eq!(
            err(rams(3, 64, 512), Some(4096), Some(bad)),
            StripedDiskError::NotStripeMultiple {
                requested: bad,
                stripe_sectors: 24
            },
            "logical count {bad}"
        );
    }
    let d = striped(rams(3, 64, 512), Some(4096), Some(48));
    assert_eq!(d.sector_count(), 48);
}

#[test]
fn ragged_members_round_down() {
    // 100-sector members, 8-sector chunks: 96 usable each.
    let members = rams(2, 100, 512);
    let d = striped(members.clone(), Some(4096), None);
    assert_eq!(d.sector_count(), 192);
    write_vec(&d, 0, &pattern(1, 0, 192, 512)).unwrap();
    for m in &members {
        assert!(
            read_vec(m, 96, 4).unwrap().iter().all(|&b| b == 0),
            "member tail was written"
        );
    }
    assert_eq!(read_vec(&d, 192, 1), Err(DiskError::IllegalBlock));
}

/// Where striped sector `lba` lives: (member, member sector).
fn locate(lba: u64, n: u64, chunk_sectors: u64) -> (usize, u64) {
    let chunk = lba / chunk_sectors;
    (
        (chunk % n) as usize,
        chunk / n * chunk_sectors + lba % chunk_sectors,
    )
}

#[test]
fn mapping_matches_the_members() {
    for (n, member_sectors, ss, chunk) in [
        (2, 64, 512, 4096),
        (3, 64, 512, 512),
        (4, 512, 512, 128 * 1024),
        (4, 96, 4096, 4096),
        (3, 64, 4096, 32 * 1024),
    ] {
        let members = rams(n, member_sectors, ss);
        let d = striped(members.clone(), Some(chunk), None);
        let cs = u64::from(chunk / ss);
        let total = d.sector_count();
        assert_eq!(total, member_sectors / cs * cs * n as u64);
        // Write the whole disk through the stripe in odd-sized pieces that
        // cross chunk boundaries, from multi-range buffers.
        let data = pattern(2, 0, total, ss);
        let s = ss as usize;
        let mut at = 0;
        let mut step = 1;
        while at < total {
            let count = step.min(total - at);
            let layout = Layout {
                cuts: vec![300, 7000],
                gaps: vec![1, 333, 4095],
                reverse: step % 2 == 0,
                short_memory: None,
            };
            let buf =
                TestBuf::from_data(&data[at as usize * s..(at + count) as usize * s], &layout);
            parastor_tests::buf::write(&d, at, &buf, Default::default()).unwrap();
            at += count;
            step = step * 3 % 37 + 1;
        }
        // Every sector is where the mapping says.
        let images: Vec<Vec<u8>> = members
            .iter()
            .map(|m| read_vec(m, 0, member_sectors).unwrap())
            .collect();
        for lba in 0..total {
            let (m, ms) = locate(lba, n as u64, cs);
            assert_eq!(
                images[m][ms as usize * s..][..s],
                data[lba as usize * s..][..s],
                "sector {lba} of {n}x{chunk}: expected on member {m} at {ms}"
            );
        }
        // And reads through the stripe, crossing chunks, agree.
        assert_eq!(read_vec(&d, 0, total).unwrap(), data);
        let last = total - 1;
        assert_eq!(read_vec(&d, last, 1).unwrap(), data[last as usize * s..]);
        if cs > 1 {
            let from = cs - 1;
            assert_eq!(
                read_vec(&d, from, 2).unwrap(),
                data[from as usize * s..(from + 2) as usize * s]
            );
        }
    }
}

#[test]
fn requests_split_at_chunk_boundaries() {
    let ss = 512;
    let (t, d) = observed(3, false);
    // Sectors 6..26: member 0 @6 (2), member 1 @0 (8), member 2 @0 (8),
    // member 0 @8 (2).
    read_vec(&d, 6, 20).unwrap();
    assert_eq!(
        t[0].take_calls(),
        vec![
            Call::Read {
                sector: 6,
                count: 2
            },
            Call::Read {
                sector: 8,
                count: 2
            }
        ]
    );
    assert_eq!(
        t[1].take_calls(),
        vec![Call::Read {
            sector: 0,
            count: 8
        }]
    );
    assert_eq!(
        t[2].take_calls(),
        vec![Call::Read {
            sector: 0,
            count: 8
        }]
    );
    // The last chunk is on the last member's last chunk.
    write_vec(&d, 191, &pattern(3, 191, 1, ss)).unwrap();
    assert_eq!(
        t[2].take_calls(),
        vec![Call::Write {
            sector: 63,
            count: 1,
            fua: false
        }]
    );
    assert_eq!((t[0].take_calls(), t[1].take_calls()), (vec![], vec![]));
    // Out of range reaches nobody.
    assert_eq!(read_vec(&d, 190, 3), Err(DiskError::IllegalBlock));
    assert!(t.iter().all(|x| x.take_calls().is_empty()));
}

#[test]
fn unmap_is_one_range_per_member() {
    let ss = 512;
    let (t, d) = observed(4, false);
    assert_eq!(d.unmap_behavior(), UnmapBehavior::Zeroes);
    let data = pattern(4, 0, 256, ss);
    write_vec(&d, 0, &data).unwrap();
    t.iter().for_each(|x| drop(x.take_calls()));
    // Stripes are 32 sectors, so 5..75 covers, per member: member 0 has
    // 5..8, 32..40 and 64..72 (member sectors 5..24); member 1 has 8..16,
    // 40..48 and 72..75 (0..19); members 2 and 3 two whole chunks (0..16).
    unmap(&d, 5, 70).unwrap();
    let un = |sector, count| {
        vec![Call::Unmap {
            sector,
            count,
            next_is_zero: false,
        }]
    };
    assert_eq!(t[0].take_calls(), un(5, 19)); // member sectors 5..24
    assert_eq!(t[1].take_calls(), un(0, 19)); // 0..16 and 16..19
    assert_eq!(t[2].take_calls(), un(0, 16));
    assert_eq!(t[3].take_calls(), un(0, 16));
    let got = read_vec(&d, 0, 256).unwrap();
    let s = ss as usize;
    assert_eq!(got[..5 * s], data[..5 * s]);
    assert!(got[5 * s..75 * s].iter().all(|&b| b == 0));
    assert_eq!(got[75 * s..], data[75 * s..]);
    t.iter().for_each(|x| drop(x.take_calls()));
    // A short unmap touches only its member.
    unmap(&d, 9, 2).unwrap();
    assert_eq!(t[1].take_calls(), un(1, 2));
    assert!(t.iter().all(|x| x.take_calls().is_empty()));
    // Empty unmap: nobody.
    unmap(&d, 100, 0).unwrap();
    assert!(t.iter().all(|x| x.take_calls().is_empty()));
}

#[test]
fn flush_reaches_every_member() {
    for asynchronous in [false, true] {
        let (t, d) = observed(3, asynchronous);
        flush(&d).unwrap();
        assert!(t.iter().all(|x| x.take_calls() == vec![Call::Flush]));
    }
}

#[test]
fn metadata_merges_over_members() {
    let with = |b: UnmapBehavior| disk(TestDisk::new(ram_disk(64, 512)).with_unmap_behavior(b));
    let b = |m: Vec<Disk>| striped(m, Some(4096), None).unmap_behavior();
    use UnmapBehavior::*;
    assert_eq!(b(vec![with(Zeroes), with(Zeroes)]), Zeroes);
    assert_eq!(b(vec![with(Ignored), with(Ignored)]), Ignored);
    assert_eq!(b(vec![with(Zeroes), with(Ignored)]), Unspecified);
    assert_eq!(b(vec![with(Unspecified), with(Zeroes)]), Unspecified);
    let fua = |f: bool| disk(TestDisk::new(ram_disk(64, 512)).with_fua(f));
    assert!(striped(vec![fua(true), fua(true)], Some(4096), None).is_fua_respected());
    assert!(!striped(vec![fua(true), fua(false)], Some(4096), None).is_fua_respected());
    let d = striped(rams(3, 64, 512), Some(4096), None);
    assert_eq!(d.describe().children.len(), 3);
    assert_eq!(d.kind(), "striped");
}

#[test]
fn default_chunk_is_128k() {
    let members = rams(2, 1024, 512);
    let d = striped(members.clone(), None, None);
    assert_eq!(DEFAULT_CHUNK_BYTES, 128 * 1024);
    write_vec(&d, 256, &pattern(5, 256, 1, 512)).unwrap();
    assert_eq!(
        read_vec(&members[1], 0, 1).unwrap(),
        pattern(5, 256, 1, 512)
    );
}

#[test]
fn member_errors_name_the_member() {
    for asynchronous in [false, true] {
        let (t, d) = observed(4, asynchronous);
        let member = |index| DiskError::Member {
            index,
            error: Box::new(INJECTED),
        };
        t[2].fail_reads(true);
        assert_eq!(read_vec(&d, 16, 8), Err(member(2)));
        assert_eq!(
            read_vec(&d, 0, 32),
            Err(member(2)),
            "a request over every member"
        );
        assert!(read_vec(&d, 0, 16).is_ok(), "members 0 and 1 are fine");
        t[2].fail_reads(false);
        t[3].fail_writes(true);
        assert_eq!(write_vec(&d, 20, &pattern(6, 20, 8, 512)), Err(member(3)));
        t[3].fail_writes(false);
        t[1].fail_unmaps(true);
        assert_eq!(unmap(&d, 0, 64), Err(member(1)));
        t[1].fail_unmaps(false);
        t[0].fail_flushes(true);
        assert_eq!(flush(&d), Err(member(0)));
        t[0].fail_flushes(false);
        flush(&d).unwrap();
        // A guest memory error keeps its cause under the member context.
        let buf = TestBuf::with_ranges(
            vec![parastor_core::GpaRange::new(Gpa::new(1 << 30), 4096)],
            4096,
        );
        let e = read(&d, 0, &buf).unwrap_err();
        assert!(matches!(e.root(), DiskError::MemoryAccess(_)), "{e:?}");
    }
}
