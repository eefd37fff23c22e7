//! End to end through NVMe in one process: parastor's NVMe driver
//! (`parastor-nvme-driver`) → the in-process backing
//! (`parastor_emulated::nvme`) → parastor's NVMe controller
//! (`parastor-nvme`) → RAM disks.

use futures::FutureExt;
use futures::future::{Either, join_all, select};
use parastor_core::{Disk, DiskError, GpaRange, IoOptions, SgList, UnmapBehavior};
use parastor_core::{Gpa, GuestMemory, IoError, IoErrorKind};
use parastor_nvme_driver::error::{CODE_DEVICE_FAILED, CODE_NAMESPACE_REMOVED, CODE_TIMEOUT};
use parastor_nvme_driver::{
    Clock, DataPointer, DriverConfig, DriverError, NvmeDriver, PassthroughData, PassthroughQueue,
};
use parastor_tests::buf::{pattern, read_vec};
use parastor_tests::conformance;
use parastor_tests::nvme::{
    HangDisk, PlugState, Testbed, Unpluggable, VirtualClock, free_dma_pages, threaded_disk,
    threaded_driver,
};
use std::future::Future;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

const SS512: u32 = 512;
const SS4K: u32 = 4096;

/// Namespaces 1 (512 B sectors), 2 (4 KiB sectors) and 7 (512 B).
fn testbed() -> Testbed {
    Testbed::new(&[(1, 4096, SS512), (2, 1024, SS4K), (7, 2048, SS512)], 4)
}

fn range(gpa: u64, len: u64) -> GpaRange {
    GpaRange::new(Gpa::new(gpa), len)
}

fn config(data_pointer: DataPointer) -> DriverConfig {
    DriverConfig {
        io_queues: 2,
        data_pointer,
        ..DriverConfig::default()
    }
}

/// Writes `data` through `disk` from `ranges` (filled with `data` first)
/// and reads it back into `back` (one range), checking the bytes and what
/// the backing RAM disk holds.
#[track_caller]
fn round_trip(t: &Testbed, nsid: u32, disk: &Disk, sector: u64, ranges: &[GpaRange], seed: u64) {
    let ss = disk.sector_size();
    let len: u64 = ranges.iter().map(|r| r.len).sum();
    let data = pattern(seed, sector, len / u64::from(ss), ss);
    let mut at = 0usize;
    for r in ranges {
        t.put(r.gpa.get(), &data[at..at + r.len as usize]);
        at += r.len as usize;
    }
    t.run(disk.write(t.sg(ranges, false), sector, IoOptions::default()))
        .expect("write");
    let back = [range(0x80_0000, len)];
    t.put(0x80_0000, &vec![0xEE; len as usize]);
    t.run(disk.read(t.sg(&back, true), sector, IoOptions::default()))
        .expect("read");
    assert_eq!(
        t.get(0x80_0000, len as usize),
        data,
        "read back through the driver"
    );
    let backing = &t.disks[&nsid].1;
    let held = read_vec(backing, sector, len / u64::from(ss)).expect("read the RAM disk");
    assert_eq!(
        held, data,
        "the RAM disk behind the controller holds the data"
    );
}

#[test]
fn bring_up_finds_every_namespace_with_its_geometry() {
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    assert_eq!(driver.namespaces(), [1, 2, 7]);
    let facts = driver.facts();
    assert_eq!(
        facts.io_queues, 2,
        "two I/O queue pairs asked for and granted"
    );
    assert!(facts.max_transfer >= 4096);
    for (nsid, sectors, ss) in [(1, 4096, SS512), (2, 1024, SS4K), (7, 2048, SS512)] {
        let (_, disk) = Testbed::disk(&driver, nsid);
        assert_eq!(disk.sector_count(), sectors, "namespace {nsid}");
        assert_eq!(disk.sector_size(), ss, "namespace {nsid}");
        assert_eq!(disk.kind(), "nvme");
    }
    assert!(driver.namespace(3).is_err(), "no namespace 3");
    assert_eq!(driver.refused_completions(), 0);
}

#[test]
fn reads_and_writes_reach_the_disks_at_both_sector_sizes() {
    let t = testbed();
    for dp in [DataPointer::Prp, DataPointer::Sgl, DataPointer::Auto] {
        let driver = t.start(config(dp));
        for nsid in [1, 2, 7] {
            let (_, disk) = Testbed::disk(&driver, nsid);
            let ss = u64::from(disk.sector_size());
            // One sector, one page, and a 128 KiB multi-page transfer
            // (a PRP list, or one SGL data block).
            round_trip(&t, nsid, &disk, 3, &[range(0x1_0000, ss)], 1);
            round_trip(&t, nsid, &disk, 8, &[range(0x2_0000, 4096)], 2);
            round_trip(&t, nsid, &disk, 16, &[range(0x4_0000, 128 << 10)], 3);
        }
        assert_eq!(t.rig.memory().pinned_ranges(), 0, "every pin released");
    }
}

#[test]
fn multi_range_buffers_as_prp_lists_sgl_segments_and_bounces() {
    let t = testbed();
    // PRP-compatible: an unaligned first page, whole pages, a short tail.
    let prp_ok = [
        range(0x1_0200, 0xE00),
        range(0x3_0000, 0x2000),
        range(0x7_0000, 0x1000),
        range(0x9_0000, 0x200),
    ];
    // Not describable by PRPs: a range that starts mid-page after the
    // first. An SGL (segment of data blocks) or a bounce buffer.
    let prp_bad = [
        range(0x1_0000, 0x200),
        range(0x5_0600, 0x400),
        range(0x6_0000, 0xA00),
    ];
    for dp in [DataPointer::Prp, DataPointer::Sgl, DataPointer::Auto] {
        let driver = t.start(config(dp));
        let (_, disk) = Testbed::disk(&driver, 1);
        round_trip(&t, 1, &disk, 100, &prp_ok, 10);
        round_trip(&t, 1, &disk, 200, &prp_bad, 11);
        // 64 ranges of one sector each, scattered.
        let many: Vec<GpaRange> = (0..64)
            .map(|i| range(0x10_0000 + i * 0x1000 + 0x200, 512))
            .collect();
        round_trip(&t, 1, &disk, 300, &many, 12);
        assert_eq!(t.rig.memory().pinned_ranges(), 0);
    }
}

#[test]
fn transfers_larger_than_one_command_are_split() {
    let t = testbed();
    let driver = t.start(DriverConfig {
        max_transfer: 64 << 10,
        ..config(DataPointer::Auto)
    });
    let (_, disk) = Testbed::disk(&driver, 1);
    round_trip(&t, 1, &disk, 0, &[range(0x10_0000, 1 << 20)], 20);
}

#[test]
fn buffers_outside_device_memory_are_bounced() {
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    let (_, disk) = Testbed::disk(&driver, 2);
    // The conformance buffers live in private scratch memory, which
    // cannot be pinned for the device.
    let data = pattern(30, 5, 3, SS4K);
    let buf =
        parastor_tests::buf::TestBuf::from_data(&data, &parastor_tests::buf::Layout::contiguous());
    t.run(disk.write(buf.sg(false), 5, IoOptions::default()))
        .expect("bounced write");
    let back = parastor_tests::buf::TestBuf::contiguous(data.len());
    t.run(disk.read(back.sg(true), 5, IoOptions::default()))
        .expect("bounced read");
    assert_eq!(back.contents(), data);
}

#[test]
fn one_page_bounces_use_the_slots_own_page_not_the_bounce_pool() {
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    let (_, disk) = Testbed::disk(&driver, 2);
    let layout = parastor_tests::buf::Layout::contiguous();
    for i in 0..4u64 {
        let data = pattern(31, i, 1, SS4K);
        let buf = parastor_tests::buf::TestBuf::from_data(&data, &layout);
        t.run(disk.write(buf.sg(false), 10 + i, IoOptions::default()))
            .expect("bounced 4 KiB write");
        let back = parastor_tests::buf::TestBuf::contiguous(4096);
        t.run(disk.read(back.sg(true), 10 + i, IoOptions::default()))
            .expect("bounced 4 KiB read");
        assert_eq!(back.contents(), data, "4 KiB round trip {i}");
    }
    assert_eq!(
        read_vec(&t.disks[&2].1, 12, 1).unwrap(),
        pattern(31, 2, 1, SS4K),
        "the device got the written page"
    );
    assert_eq!(
        driver.bounce_pool_high_water(),
        0,
        "4 KiB bounces took nothing from the bounce pool"
    );
    // Two pages do not fit a slot's page: they go through the pool.
    let data = pattern(32, 0, 2, SS4K);
    let buf = parastor_tests::buf::TestBuf::from_data(&data, &layout);
    t.run(disk.write(buf.sg(false), 20, IoOptions::default()))
        .expect("bounced 8 KiB write");
    assert!(
        driver.bounce_pool_high_water() >= 8192,
        "8 KiB used the pool"
    );
    let back = parastor_tests::buf::TestBuf::contiguous(8192);
    t.run(disk.read(back.sg(true), 20, IoOptions::default()))
        .expect("bounced 8 KiB read");
    assert_eq!(back.contents(), data);
}

#[test]
fn flush_write_zeroes_deallocate_and_compare() {
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    let (ns, disk) = Testbed::disk(&driver, 1);
    let data = pattern(40, 0, 64, SS512);
    t.put(0x1_0000, &data);
    let r = [range(0x1_0000, data.len() as u64)];
    t.run(disk.write(t.sg(&r, false), 0, IoOptions::fua()))
        .expect("FUA write");
    t.run(disk.flush(IoOptions::default())).expect("flush");

    // Compare: equal, then one byte different.
    assert!(t.run(ns.compare(t.sg(&r, false), 0)).expect("compare"));
    let mut other = data.clone();
    other[700] ^= 1;
    t.put(0x1_0000, &other);
    assert!(
        !t.run(ns.compare(t.sg(&r, false), 0)).expect("compare"),
        "a miscompare is false"
    );

    // Write Zeroes over sectors 8..16.
    t.run(ns.write_zeroes(8, 8, false)).expect("write zeroes");
    let held = read_vec(&t.disks[&1].1, 0, 64).unwrap();
    assert!(held[8 * 512..16 * 512].iter().all(|&b| b == 0));
    assert_eq!(held[..8 * 512], data[..8 * 512], "sectors before untouched");
    assert_eq!(
        held[16 * 512..],
        data[16 * 512..],
        "sectors after untouched"
    );

    // Deallocate (unmap) 32..40: the RAM disk reads unmapped sectors as zero.
    if disk.unmap_behavior() != UnmapBehavior::Ignored {
        t.run(disk.unmap(32, 8, IoOptions::default()))
            .expect("unmap");
        let held = read_vec(&t.disks[&1].1, 32, 8).unwrap();
        assert!(
            held.iter().all(|&b| b == 0),
            "deallocated sectors read zero"
        );
        t.run(ns.dataset_management(&[(40, 2), (50, 3)], true))
            .expect("two DSM ranges");
        let held = read_vec(&t.disks[&1].1, 40, 13).unwrap();
        assert!(held[..1024].iter().all(|&b| b == 0));
        assert_eq!(held[1024..10 * 512], data[42 * 512..50 * 512]);
        assert!(held[10 * 512..].iter().all(|&b| b == 0));
    }
}

#[test]
fn out_of_range_requests_fail_cleanly() {
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    let (ns, disk) = Testbed::disk(&driver, 7);
    let r = [range(0x1_0000, 1024)];
    let err = t
        .run(disk.read(t.sg(&r, true), 2047, IoOptions::default()))
        .unwrap_err();
    assert_eq!(err, DiskError::IllegalBlock);
    assert_eq!(
        t.run(ns.write_zeroes(2040, 9, false)),
        Err(DiskError::IllegalBlock)
    );
    // A buffer outside guest memory is the caller's error, not the device's.
    let far = [range(u64::MAX - 0x1000, 512)];
    let sg = SgList::new(t.memory(), &far, true).unwrap();
    let err = t.run(disk.read(sg, 0, IoOptions::default())).unwrap_err();
    assert!(matches!(err, DiskError::MemoryAccess(_)), "{err:?}");
    assert_eq!(driver.refused_completions(), 0);
}

#[test]
fn bounced_io_waits_for_bounce_space_and_splits_beyond_the_budget() {
    let t = testbed();
    // 8 KiB of bounce space: one 8 KiB command at once (a 4 KiB one would
    // go through its slot's own bounce page, not the pool).
    let driver = t.start(DriverConfig {
        io_queues: 1,
        bounce_budget: 8192,
        ..DriverConfig::default()
    });
    assert_eq!(driver.facts().max_transfer, 8192, "commands fit the budget");
    let (_, disk) = Testbed::disk(&driver, 1);
    // Eight 8 KiB writes at once from private memory: they take turns
    // for the budget instead of failing.
    let bufs: Vec<_> = (0..8u64)
        .map(|i| {
            parastor_tests::buf::TestBuf::from_data(
                &pattern(40, i * 16, 16, SS512),
                &parastor_tests::buf::Layout::contiguous(),
            )
        })
        .collect();
    let writes = bufs
        .iter()
        .enumerate()
        .map(|(i, b)| disk.write(b.sg(false), i as u64 * 16, IoOptions::default()));
    for r in t.run(join_all(writes)) {
        r.expect("bounced write");
    }
    assert_eq!(driver.bounce_pool_high_water(), 8192, "the budget held");
    // One 128 KiB read, sixteen times the budget: split, not refused.
    let back = parastor_tests::buf::TestBuf::contiguous(128 * 1024);
    t.run(disk.read(back.sg(true), 0, IoOptions::default()))
        .expect("split bounced read");
    let expected: Vec<u8> = (0..8u64)
        .flat_map(|i| pattern(40, i * 16, 16, SS512))
        .collect();
    let got = back.contents();
    let first_bad = got.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "first differing byte (of {})", got.len());
}

#[test]
fn many_commands_in_flight_on_several_queues() {
    let t = testbed();
    let driver = t.start(DriverConfig {
        io_queues: 2,
        io_queue_size: 16,
        ..DriverConfig::default()
    });
    let (_, disk) = Testbed::disk(&driver, 1);
    // 64 writes of 8 sectors at once, more than one queue's 15 slots.
    for i in 0..64u64 {
        t.put(0x10_0000 + i * 4096, &pattern(50, i * 8, 8, SS512));
    }
    let ranges: Vec<[GpaRange; 1]> = (0..64u64)
        .map(|i| [range(0x10_0000 + i * 4096, 4096)])
        .collect();
    let writes = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| disk.write(t.sg(r, false), i as u64 * 8, IoOptions::default()));
    for r in t.run(join_all(writes)) {
        r.expect("write");
    }
    let held = read_vec(&t.disks[&1].1, 0, 512).unwrap();
    for i in 0..64u64 {
        assert_eq!(
            held[(i * 4096) as usize..((i + 1) * 4096) as usize],
            pattern(50, i * 8, 8, SS512)[..],
            "write {i}"
        );
    }
    assert_eq!(driver.outstanding(), 0);
}

/// With shadow doorbells (Doorbell Buffer Config), a burst of commands
/// costs far fewer MMIO doorbell writes than commands; without, one each.
#[test]
fn shadow_doorbells_save_mmio_writes() {
    for shadow in [true, false] {
        let t = testbed();
        let driver = t.start(DriverConfig {
            shadow_doorbells: shadow,
            ..config(DataPointer::Auto)
        });
        let (_, disk) = Testbed::disk(&driver, 1);
        let ranges: Vec<[GpaRange; 1]> = (0..32u64)
            .map(|i| [range(0x10_0000 + i * 4096, 4096)])
            .collect();
        let before = t.rig.backing().doorbell_writes();
        let reads = join_all(
            ranges
                .iter()
                .enumerate()
                .map(|(i, r)| disk.read(t.sg(r, true), i as u64 * 8, IoOptions::default())),
        );
        for r in t.run(reads) {
            r.expect("read");
        }
        let mmio = t.rig.backing().doorbell_writes() - before;
        if shadow {
            assert!(
                mmio < 8,
                "32 reads took {mmio} MMIO doorbell writes with shadow doorbells"
            );
        } else {
            assert!(
                mmio >= 32,
                "32 reads took only {mmio} MMIO doorbell writes without shadow doorbells"
            );
        }
    }
}

#[test]
fn dropped_commands_keep_their_slot_until_the_device_completes() {
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    let (_, disk) = Testbed::disk(&driver, 1);
    // This thread's queue comes with its first I/O.
    round_trip(&t, 1, &disk, 20, &[range(0x2_0000, 4096)], 61);
    let r = [range(0x1_0000, 4096)];
    {
        // Submit, then drop before completion: the slot stays with the
        // device's command, its pins held.
        let mut fut = pin!(disk.read(t.sg(&r, true), 0, IoOptions::default()));
        let waker = std::task::Waker::noop();
        assert!(
            fut.as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_pending()
        );
    }
    assert_eq!(
        driver.outstanding(),
        1,
        "the detached command is still the device's"
    );
    // The next command drains the detached one's completion.
    round_trip(&t, 1, &disk, 10, &[range(0x2_0000, 4096)], 60);
    assert_eq!(driver.outstanding(), 0);
    assert_eq!(
        t.rig.memory().pinned_ranges(),
        0,
        "the detached command's pins were released"
    );
}

#[test]
fn controller_reset_mid_workload_loses_no_write() {
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    let (_, disk) = Testbed::disk(&driver, 1);
    for i in 0..32u64 {
        t.put(0x10_0000 + i * 4096, &pattern(70, i * 8, 8, SS512));
    }
    let ranges: Vec<[GpaRange; 1]> = (0..32u64)
        .map(|i| [range(0x10_0000 + i * 4096, 4096)])
        .collect();
    let writes = join_all(
        ranges
            .iter()
            .enumerate()
            .map(|(i, r)| disk.write(t.sg(r, false), i as u64 * 8, IoOptions::default())),
    );
    let both = futures::future::join(writes, driver.reset());
    let (results, reset) = t.run(both);
    reset.expect("reset");
    for (i, r) in results.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("write {i} across the reset: {e}"));
    }
    let held = read_vec(&t.disks[&1].1, 0, 256).unwrap();
    for i in 0..32u64 {
        assert_eq!(
            held[(i * 4096) as usize..((i + 1) * 4096) as usize],
            pattern(70, i * 8, 8, SS512)[..],
            "write {i}"
        );
    }
    // And the driver keeps working after the reset.
    round_trip(
        &t,
        2,
        &Testbed::disk(&driver, 2).1,
        1,
        &[range(0x2_0000, 8192)],
        71,
    );
}

#[test]
fn shutdown_fails_later_io_cleanly() {
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    let (_, disk) = Testbed::disk(&driver, 1);
    t.run(driver.shutdown()).expect("shutdown");
    let r = [range(0x1_0000, 512)];
    let err = t
        .run(disk.read(t.sg(&r, true), 0, IoOptions::default()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DiskError::Io(IoError {
                kind: IoErrorKind::DeviceFailed,
                ..
            })
        ),
        "{err:?}"
    );
}

/// A random workload over two namespaces, direct and bounced buffers,
/// several commands in flight, checked against a byte model: 0 mismatches.
#[test]
fn random_workload_matches_the_model() {
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    let disks: Vec<(u32, Disk, u32, u64)> = [(1u32, SS512, 4096u64), (2, SS4K, 1024)]
        .into_iter()
        .map(|(nsid, ss, n)| (nsid, Testbed::disk(&driver, nsid).1, ss, n))
        .collect();
    let mut models: Vec<Vec<u8>> = disks
        .iter()
        .map(|(nsid, _, ss, n)| {
            read_vec(&t.disks[nsid].1, 0, *n)
                .unwrap_or_else(|_| vec![0; (*n * u64::from(*ss)) as usize])
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(0x6e766d65);
    let mut mismatches = 0usize;
    let mut ops = 0usize;
    for round in 0..300u64 {
        let d = rng.usize(..disks.len());
        let (nsid, disk, ss, n) = &disks[d];
        let ss64 = u64::from(*ss);
        // Up to 4 writes at disjoint places, in flight together.
        let k = rng.usize(1..=4);
        let mut places: Vec<(u64, u64)> = Vec::new();
        while places.len() < k {
            let count = rng.u64(1..=(64 * 1024 / ss64));
            let sector = rng.u64(..n - count);
            if places
                .iter()
                .all(|&(s, c)| sector + count <= s || s + c <= sector)
            {
                places.push((sector, count));
            }
        }
        let mut bufs = Vec::new();
        for (j, &(sector, count)) in places.iter().enumerate() {
            let data = pattern(round * 8 + j as u64, sector, count, *ss);
            let base = 0x10_0000 + j as u64 * 0x20_0000;
            // Split the buffer into up to three ranges, sector aligned.
            let len = data.len() as u64;
            let cut1 = ss64 * rng.u64(0..=count);
            let cut2 = cut1 + ss64 * rng.u64(0..=(count - cut1 / ss64));
            let mut ranges = Vec::new();
            for (a, b, gap) in [(0, cut1, 0u64), (cut1, cut2, 0x3000), (cut2, len, 0x6000)] {
                if b > a {
                    ranges.push(range(base + a + gap + 0x200 * (gap / 0x3000), b - a));
                }
            }
            let mut at = 0usize;
            for r in &ranges {
                t.put(r.gpa.get(), &data[at..at + r.len as usize]);
                at += r.len as usize;
            }
            let m = &mut models[d];
            m[(sector * ss64) as usize..((sector + count) * ss64) as usize].copy_from_slice(&data);
            bufs.push((sector, ranges));
        }
        let writes = join_all(bufs.iter().map(|(sector, ranges)| {
            disk.write(t.sg(ranges, false), *sector, IoOptions::default())
        }));
        for r in t.run(writes) {
            r.expect("write");
            ops += 1;
        }
        // Read a random span back and compare with the model.
        let count = rng.u64(1..=(128 * 1024 / ss64));
        let sector = rng.u64(..n - count);
        let len = (count * ss64) as usize;
        let r = [range(0xC0_0000, len as u64)];
        t.put(r[0].gpa.get(), &vec![0x5A; len]);
        t.run(disk.read(t.sg(&r, true), sector, IoOptions::default()))
            .expect("read");
        ops += 1;
        let got = t.get(r[0].gpa.get(), len);
        let want = &models[d][(sector * ss64) as usize..(sector * ss64) as usize + len];
        if got != want {
            mismatches += 1;
            eprintln!(
                "round {round}: namespace {nsid} sectors {sector}+{count} differ from the model"
            );
        }
        // Now and then: zeroes, a flush, a deallocate.
        match rng.u8(..10) {
            0 => {
                let (ns, _) = Testbed::disk(&driver, *nsid);
                let c = rng.u64(1..=64);
                let s = rng.u64(..n - c);
                t.run(ns.write_zeroes(s, c, false)).expect("write zeroes");
                models[d][(s * ss64) as usize..((s + c) * ss64) as usize].fill(0);
                ops += 1;
            }
            1 => {
                t.run(disk.flush(IoOptions::default())).expect("flush");
                ops += 1;
            }
            _ => {}
        }
    }
    // Finally the whole of both disks, through the driver.
    for (d, (nsid, disk, ss, n)) in disks.iter().enumerate() {
        let len = (*n * u64::from(*ss)) as usize;
        let r = [range(0x40_0000, len as u64)];
        t.run(disk.read(t.sg(&r, true), 0, IoOptions::default()))
            .expect("read all");
        if t.get(0x40_0000, len) != models[d] {
            mismatches += 1;
            eprintln!("namespace {nsid}: final contents differ from the model");
        }
    }
    assert!(ops > 600, "the workload ran ({ops} operations)");
    assert_eq!(mismatches, 0, "mismatches against the model");
    assert_eq!(driver.refused_completions(), 0);
}

/// The shared conformance suite over a namespace's `Disk`, with the
/// controller on its own thread (the suite blocks on each operation).
#[test]
fn conformance_512() {
    conformance::run_all(&|| threaded_disk(2048, SS512, DriverConfig::default()));
}

#[test]
fn conformance_4096() {
    conformance::run_all(&|| threaded_disk(256, SS4K, DriverConfig::default()));
}

/// Resize notification over NVMe: the RAM disk behind the controller
/// resizes, the controller sends a namespace-attribute notice, the driver
/// rereads the namespace and wakes the disk's waiters.
#[test]
fn conformance_resize_notification() {
    for ss in [SS512, SS4K] {
        let (disk, ram, _thread) = parastor_tests::nvme::threaded_resizable_disk(64, ss);
        let seen = disk.clone();
        conformance::resize_notification(&disk, &move |n| {
            ram.resize(n);
            // The notice travels asynchronously: wait until the driver's
            // disk has it (bounded).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while seen.sector_count() != n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "resize to {n} never reached the driver"
                );
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
    }
}

#[test]
fn conformance_with_sgls() {
    conformance::run_all(&|| {
        threaded_disk(
            2048,
            SS512,
            DriverConfig {
                data_pointer: DataPointer::Sgl,
                ..DriverConfig::default()
            },
        )
    });
}

/// Runs `body` with the driver's asynchronous-event loop `events` next
/// to it (the loop lives on between calls: dropping it would drop the
/// outstanding Asynchronous Event Request's completion).
fn with_events<F: Future, E: Future<Output = ()>>(
    t: &Testbed,
    events: &mut Pin<&mut E>,
    body: F,
) -> F::Output {
    let body = pin!(body);
    match t.run(select(body, events.as_mut())) {
        Either::Left((out, _)) => out,
        Either::Right(((), _)) => panic!("the event loop ended"),
    }
}

#[test]
fn hot_add_resize_and_remove_reach_the_driver_through_aen() {
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    let (_, disk1) = Testbed::disk(&driver, 1);
    let (ns7, disk7) = Testbed::disk(&driver, 7);
    let events = driver.run_async_events();
    let mut events = pin!(events);

    // Hot add namespace 3.
    let generation = driver.namespace_generation();
    let (_, d3) = parastor_tests::nvme::ram(512, SS4K);
    t.rig
        .controller()
        .add_namespace(3, d3.clone())
        .expect("add 3");
    with_events(&t, &mut events, driver.wait_namespace_change(generation));
    assert_eq!(driver.namespaces(), [1, 2, 3, 7]);
    let (_, disk3) = Testbed::disk(&driver, 3);
    assert_eq!((disk3.sector_count(), disk3.sector_size()), (512, SS4K));
    round_trip_on(&t, &d3, &disk3, 9, 80);

    // Resize namespace 1: its disk sees it through wait_resize.
    let old = disk1.sector_count();
    t.disks[&1].0.resize(old * 2);
    let new = with_events(&t, &mut events, disk1.wait_resize(old));
    assert_eq!(new, old * 2);
    assert_eq!(disk1.sector_count(), old * 2);
    round_trip(&t, 1, &disk1, old * 2 - 8, &[range(0x1_0000, 4096)], 81);

    // Remove namespace 7: its I/O fails cleanly from then on.
    let generation = driver.namespace_generation();
    assert!(t.rig.controller().remove_namespace(7).is_some());
    with_events(&t, &mut events, driver.wait_namespace_change(generation));
    assert_eq!(driver.namespaces(), [1, 2, 3]);
    assert!(ns7.is_removed());
    let r = [range(0x1_0000, 512)];
    let err = t
        .run(disk7.read(t.sg(&r, true), 0, IoOptions::default()))
        .unwrap_err();
    assert_eq!(
        err,
        DiskError::Io(IoError::new(IoErrorKind::NotReady, CODE_NAMESPACE_REMOVED))
    );
    assert!(driver.events_seen() >= 3);
}

/// Writes and reads back through `disk`, checking the RAM disk `backing`.
fn round_trip_on(t: &Testbed, backing: &Disk, disk: &Disk, sector: u64, seed: u64) {
    let ss = disk.sector_size();
    let data = pattern(seed, sector, 2, ss);
    t.put(0x1_0000, &data);
    let r = [range(0x1_0000, data.len() as u64)];
    t.run(disk.write(t.sg(&r, false), sector, IoOptions::default()))
        .expect("write");
    assert_eq!(read_vec(backing, sector, 2).unwrap(), data);
}

#[test]
fn save_and_restore_of_the_controller_mid_workload() {
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    let (_, disk) = Testbed::disk(&driver, 1);
    // This thread's queue comes with its first I/O.
    round_trip(&t, 1, &disk, 200, &[range(0x2_0000, 4096)], 91);
    for i in 0..16u64 {
        t.put(0x10_0000 + i * 4096, &pattern(90, i * 8, 8, SS512));
    }
    let ranges: Vec<[GpaRange; 1]> = (0..16u64)
        .map(|i| [range(0x10_0000 + i * 4096, 4096)])
        .collect();
    let mut writes: Vec<_> = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| Box::pin(disk.write(t.sg(r, false), i as u64 * 8, IoOptions::default())))
        .collect();
    // Submit every write (no controller work yet): all sit in the queues.
    let waker = std::task::Waker::noop();
    for w in &mut writes {
        assert!(
            w.as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_pending()
        );
    }
    assert_eq!(driver.outstanding(), 16);
    // Let the controller take some of them, then save and restore it.
    let mut cx = std::task::Context::from_waker(waker);
    let _ = t.rig.poll_controller(&mut cx);
    let namespaces = t.disks.iter().map(|(n, (_, d))| (*n, d.clone())).collect();
    t.rig
        .save_and_restore(namespaces)
        .expect("save and restore");
    for r in t.run(join_all(writes)) {
        r.expect("write across the save/restore");
    }
    let held = read_vec(&t.disks[&1].1, 0, 128).unwrap();
    for i in 0..16u64 {
        assert_eq!(
            held[(i * 4096) as usize..((i + 1) * 4096) as usize],
            pattern(90, i * 8, 8, SS512)[..],
            "write {i}"
        );
    }
    round_trip(
        &t,
        2,
        &Testbed::disk(&driver, 2).1,
        4,
        &[range(0x2_0000, 8192)],
        91,
    );
    assert_eq!(driver.refused_completions(), 0);
}

/// Two hosts (two controllers, each its own driver with its own host
/// identifier) share one namespace disk with persistent reservations.
#[test]
fn reservations_between_two_host_identifiers() {
    use parastor_core::prwrap::ReservationsDisk;
    use parastor_emulated::nvme::ControllerThread;
    use parastor_hw::nvme::command::{
        AcquireAction, RegisterAction, ReleaseAction, ReservationType,
    };
    use parastor_tests::buf::block_on;

    let (_, ram) = parastor_tests::nvme::ram(1024, SS512);
    let shared = Disk::new(ReservationsDisk::new(ram.clone())).expect("disk");
    let host_a = [0xA1; 16];
    let host_b = [0xB2; 16];
    let a = Testbed::with_disks(&[(1, shared.clone())], 1);
    let b = Testbed::with_disks(&[(1, shared.clone())], 1);
    let _ta = ControllerThread::spawn(a.rig.backing(), None).unwrap();
    let _tb = ControllerThread::spawn(b.rig.backing(), None).unwrap();
    let start = |t: &Testbed, host_id| {
        block_on(NvmeDriver::new(
            t.rig.device(),
            DriverConfig {
                host_id: Some(host_id),
                ..DriverConfig::default()
            },
            std::sync::Arc::new(parastor_emulated::nvme::YieldTimer),
        ))
        .expect("bring-up")
    };
    let (da, db) = (start(&a, host_a), start(&b, host_b));
    let (na, disk_a) = Testbed::disk(&da, 1);
    let (nb, disk_b) = Testbed::disk(&db, 1);
    assert_ne!(na.reservation_capabilities(), 0, "RESCAP advertised");
    let write = |t: &Testbed, disk: &Disk| {
        t.put(0x1_0000, &[0x42; 512]);
        let r = [range(0x1_0000, 512)];
        block_on(disk.write(t.sg(&r, false), 7, IoOptions::default()))
    };
    let read = |t: &Testbed, disk: &Disk| {
        let r = [range(0x2_0000, 512)];
        block_on(disk.read(t.sg(&r, true), 7, IoOptions::default()))
    };

    block_on(na.reservation_register(RegisterAction::REGISTER, 0, 0xA, false))
        .expect("A registers");
    block_on(nb.reservation_register(RegisterAction::REGISTER, 0, 0xB, false))
        .expect("B registers");
    block_on(na.reservation_acquire(
        AcquireAction::ACQUIRE,
        ReservationType::WRITE_EXCLUSIVE,
        0xA,
        0,
    ))
    .expect("A acquires write exclusive");
    assert_eq!(
        write(&b, &disk_b),
        Err(DiskError::ReservationConflict),
        "B may not write"
    );
    read(&b, &disk_b).expect("B may still read");
    write(&a, &disk_a).expect("the holder writes");
    // A wrong key is a conflict too.
    assert_eq!(
        block_on(nb.reservation_acquire(
            AcquireAction::ACQUIRE,
            ReservationType::WRITE_EXCLUSIVE,
            0xA,
            0
        )),
        Err(DiskError::ReservationConflict)
    );

    // The extended report: generation, type, both registrants by host id.
    let report = block_on(na.reservation_report(4096)).expect("report");
    assert_eq!(report[4], ReservationType::WRITE_EXCLUSIVE.get(), "RTYPE");
    assert_eq!(u16::from_le_bytes([report[5], report[6]]), 2, "REGCTL");
    let entries: Vec<&[u8]> = report[64..64 + 128].chunks(64).collect();
    let find = |host: [u8; 16]| {
        entries
            .iter()
            .find(|e| e[16..32] == host)
            .unwrap_or_else(|| panic!("host {host:x?} in the report"))
    };
    let (ea, eb) = (find(host_a), find(host_b));
    assert_eq!(u64::from_le_bytes(ea[8..16].try_into().unwrap()), 0xA);
    assert_eq!(ea[2] & 1, 1, "A holds the reservation");
    assert_eq!(u64::from_le_bytes(eb[8..16].try_into().unwrap()), 0xB);
    assert_eq!(eb[2] & 1, 0);

    // B preempts A: B holds it, A is no longer registered.
    block_on(nb.reservation_acquire(
        AcquireAction::PREEMPT,
        ReservationType::WRITE_EXCLUSIVE,
        0xB,
        0xA,
    ))
    .expect("B preempts A");
    write(&b, &disk_b).expect("the new holder writes");
    assert_eq!(write(&a, &disk_a), Err(DiskError::ReservationConflict));
    // B releases: anyone writes again.
    block_on(nb.reservation_release(
        ReleaseAction::RELEASE,
        ReservationType::WRITE_EXCLUSIVE,
        0xB,
    ))
    .expect("release");
    write(&a, &disk_a).expect("A writes after the release");
}

/// The event loop may be dropped and started again: the Asynchronous
/// Event Request it left outstanding is adopted by the next loop, so an
/// event that arrives in between is not lost.
#[test]
fn a_restarted_event_loop_loses_no_event() {
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    let (_, disk1) = Testbed::disk(&driver, 1);
    for round in 0..3u64 {
        let old = disk1.sector_count();
        // A fresh loop each round; the previous one was dropped with its
        // request outstanding.
        let events = driver.run_async_events();
        let mut events = pin!(events);
        // Let the loop arm (or adopt) its request before the event.
        let waker = std::task::Waker::noop();
        assert!(
            events
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
                .is_pending()
        );
        t.disks[&1].0.resize(old + 8);
        let new = with_events(&t, &mut events, disk1.wait_resize(old));
        assert_eq!(new, old + 8, "round {round}");
    }
    assert_eq!(driver.events_seen(), 3);
}

// ---- A hostile or broken device fails the device, not the process ----

/// The error every I/O of a failed controller answers.
const DEVICE_FAILED: DiskError =
    DiskError::Io(IoError::new(IoErrorKind::DeviceFailed, CODE_DEVICE_FAILED));

/// A controller whose namespace 1 (512 B sectors) is a [`HangDisk`] over
/// RAM and whose namespace 2 is plain RAM.
fn hang_testbed() -> (Testbed, HangDisk) {
    let (_, ram1) = parastor_tests::nvme::ram(1024, SS512);
    let (_, ram2) = parastor_tests::nvme::ram(1024, SS512);
    let hang = HangDisk::new(ram1);
    let t = Testbed::with_disks(&[(1, Disk::new(hang.clone()).unwrap()), (2, ram2)], 1);
    (t, hang)
}

/// Short timeouts (on virtual time they pass in a few polls anyway).
fn timeout_config() -> DriverConfig {
    DriverConfig {
        io_queues: 1,
        command_timeout: Duration::from_secs(2),
        admin_timeout: Duration::from_secs(5),
        watchdog_period: Duration::from_millis(100),
        ready_timeout_cap: Duration::from_secs(1),
        ..DriverConfig::default()
    }
}

/// Pending until `ready()` holds (polling it at every wake-up, waking
/// itself), then runs `then` and stays pending.
async fn when(ready: impl Fn() -> bool, then: impl FnOnce()) {
    std::future::poll_fn(|cx| {
        if ready() {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
    then();
    std::future::pending::<()>().await;
}

/// Runs `io` next to the watchdog `wd` (which lives on between calls)
/// and `side` until `io` completes — failing the test if that takes
/// more than ten minutes of the driver's virtual time or a minute of real
/// time (a watchdog keeps the rig busy, so a broken timeout would
/// otherwise spin for ever).
fn run_beside<T, W: Future<Output = ()>>(
    t: &Testbed,
    clock: &VirtualClock,
    io: impl Future<Output = T>,
    wd: &mut Pin<&mut W>,
    side: impl Future<Output = ()>,
) -> T {
    let limit = clock.now() + Duration::from_secs(600);
    let started = std::time::Instant::now();
    let io = pin!(io);
    let guard = when(
        || clock.now() > limit || started.elapsed() > Duration::from_secs(60),
        || {
            panic!(
                "the I/O did not end within ten minutes of virtual time (or a minute of real time)"
            )
        },
    );
    let rest = pin!(futures::future::join3(wd.as_mut(), side, guard));
    match t.run(select(io, rest)) {
        Either::Left((out, _)) => out,
        Either::Right(_) => panic!("the watchdog and the side future never end together"),
    }
}

/// Writes a pattern at `sector` through `disk` and reads it back, next
/// to the watchdog.
#[track_caller]
fn write_read<W: Future<Output = ()>>(
    t: &Testbed,
    clock: &VirtualClock,
    disk: &Disk,
    sector: u64,
    wd: &mut Pin<&mut W>,
) {
    let data = pattern(5, sector, 8, SS512);
    t.put(0x4000, &data);
    let w = [range(0x4000, 4096)];
    let r = [range(0x6000, 4096)];
    let opts = IoOptions::default();
    run_beside(
        t,
        clock,
        disk.write(t.sg(&w, false), sector, opts),
        wd,
        std::future::pending(),
    )
    .expect("write");
    run_beside(
        t,
        clock,
        disk.read(t.sg(&r, true), sector, opts),
        wd,
        std::future::pending(),
    )
    .expect("read");
    assert_eq!(t.get(0x6000, 4096), data);
}

/// Every kind of operation on `disk` fails at once with the failed
/// controller's error.
#[track_caller]
fn every_op_fails_cleanly(t: &Testbed, disk: &Disk) {
    let r = [range(0x1000, 512)];
    let opts = IoOptions::default();
    assert_eq!(
        t.run(disk.read(t.sg(&r, true), 0, opts)),
        Err(DEVICE_FAILED)
    );
    assert_eq!(
        t.run(disk.write(t.sg(&r, false), 0, opts)),
        Err(DEVICE_FAILED)
    );
    assert_eq!(t.run(disk.flush(opts)), Err(DEVICE_FAILED));
}

#[test]
fn a_hung_command_is_aborted_then_reset_and_the_controller_fails_when_the_reset_cannot_finish() {
    let (t, hang) = hang_testbed();
    let clock = VirtualClock::new();
    let driver = t.start_virtual(t.rig.device(), timeout_config(), &clock);
    let (_, disk) = Testbed::disk(&driver, 1);
    let (_, disk2) = Testbed::disk(&driver, 2);
    let wd = driver.run_watchdog();
    let mut wd = pin!(wd);
    write_read(&t, &clock, &disk2, 0, &mut wd);
    hang.arm();
    let r = [range(0x2000, 4096)];
    let read = disk.read(t.sg(&r, true), 8, IoOptions::default());
    // The controller's reset waits for the hung command (as a real one may
    // wait for its media): RDY never drops, the reset fails.
    let out = run_beside(&t, &clock, read, &mut wd, std::future::pending());
    assert_eq!(out, Err(DEVICE_FAILED));
    assert_eq!(driver.failure(), Some("controller reset failed"));
    assert_eq!((driver.aborts_sent(), driver.resets()), (1, 1));
    assert_eq!(hang.hung(), 1);
    assert_eq!(
        driver.held_commands(),
        1,
        "the device never stopped: the read's buffers stay held"
    );
    every_op_fails_cleanly(&t, &disk);
    every_op_fails_cleanly(&t, &disk2);
    // The device lets go at last: shutting down proves it stopped, and the
    // held buffers are released.
    hang.release();
    let _ = t.run(driver.shutdown());
    assert_eq!(driver.held_commands(), 0);
}

#[test]
fn a_hung_command_times_out_and_the_reset_brings_the_controller_back() {
    let (t, hang) = hang_testbed();
    let clock = VirtualClock::new();
    let driver = t.start_virtual(t.rig.device(), timeout_config(), &clock);
    let (_, disk) = Testbed::disk(&driver, 1);
    let wd = driver.run_watchdog();
    let mut wd = pin!(wd);
    hang.arm();
    let r = [range(0x2000, 4096)];
    let write = disk.write(t.sg(&r, false), 8, IoOptions::default());
    // The device finishes its work once the reset has begun.
    let release = when(|| driver.resets() > 0, || hang.release());
    let out = run_beside(&t, &clock, write, &mut wd, release);
    assert_eq!(
        out,
        Err(DiskError::Io(IoError::new(
            IoErrorKind::TimedOut,
            CODE_TIMEOUT
        ))),
        "the timed-out command is not retried"
    );
    assert_eq!(driver.failure(), None);
    assert_eq!((driver.aborts_sent(), driver.resets()), (1, 1));
    assert_eq!(driver.held_commands(), 0);
    // The controller serves again (the first I/O waits for the reset to
    // finish).
    write_read(&t, &clock, &disk, 16, &mut wd);
    assert_eq!(driver.resets(), 1);
}

#[test]
fn the_watchdog_keeps_watching_through_a_reset_the_host_runs() {
    let (t, hang) = hang_testbed();
    let clock = VirtualClock::new();
    // Room for a slow host reset (the device lets go late).
    let config = DriverConfig {
        ready_timeout_cap: Duration::from_secs(30),
        ..timeout_config()
    };
    let driver = t.start_virtual(t.rig.device(), config, &clock);
    let (_, disk) = Testbed::disk(&driver, 1);
    let wd = driver.run_watchdog();
    let mut wd = pin!(wd);
    hang.arm();
    let r = [range(0x2000, 4096)];
    let read = disk.read(t.sg(&r, true), 8, IoOptions::default());
    // In the very poll in which the watchdog sends its Abort, the host
    // resets the controller itself: the Abort is cut short (its
    // completion never comes), and the device lets go of the read only
    // ten (virtual) seconds later, so the watchdog's own reset is refused
    // meanwhile and the host's future is dropped half-way.
    let t0 = clock.now();
    let host_reset = async {
        std::future::poll_fn(|cx| {
            if driver.aborts_sent() > 0 {
                std::task::Poll::Ready(())
            } else {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        })
        .await;
        let _ = driver.reset().await;
    };
    let late_release = when(
        || clock.now() > t0 + Duration::from_secs(10),
        || hang.release(),
    );
    let out = run_beside(
        &t,
        &clock,
        read,
        &mut wd,
        futures::future::join(host_reset, late_release).map(|_| ()),
    );
    assert_eq!(
        out,
        Err(DiskError::Io(IoError::new(
            IoErrorKind::TimedOut,
            CODE_TIMEOUT
        )))
    );
    // The watchdog finishes the reset the host gave up on: the controller
    // serves again.
    let (_, disk2) = Testbed::disk(&driver, 2);
    write_read(&t, &clock, &disk2, 0, &mut wd);
    assert_eq!(driver.failure(), None);
    // The watchdog still runs: a second hung read is aborted and reset.
    hang.arm();
    let read = disk.read(t.sg(&r, true), 8, IoOptions::default());
    let resets = driver.resets();
    let release = when(|| driver.resets() > resets, || hang.release());
    let out = run_beside(&t, &clock, read, &mut wd, release);
    assert_eq!(
        out,
        Err(DiskError::Io(IoError::new(
            IoErrorKind::TimedOut,
            CODE_TIMEOUT
        )))
    );
    assert_eq!(driver.aborts_sent(), 2);
}

#[test]
fn surprise_removal_fails_the_controller_and_keeps_in_flight_buffers() {
    let (t, hang) = hang_testbed();
    let clock = VirtualClock::new();
    let device = Unpluggable::new(t.rig.device());
    let driver = t.start_virtual(device.clone(), timeout_config(), &clock);
    let (_, disk) = Testbed::disk(&driver, 1);
    hang.arm();
    let r = [range(0x2000, 4096)];
    let read = disk.read(t.sg(&r, true), 8, IoOptions::default());
    let unplug = when(|| hang.hung() > 0, || device.set(PlugState::Removed));
    let wd = driver.run_watchdog();
    let out = run_beside(&t, &clock, read, &mut pin!(wd), unplug);
    assert_eq!(out, Err(DEVICE_FAILED));
    assert_eq!(
        driver.failure(),
        Some("registers read as all ones (surprise removal)")
    );
    assert_eq!(driver.aborts_sent(), 0, "failed before the timeout");
    assert_eq!(
        driver.held_commands(),
        1,
        "a vanished device is not proven stopped"
    );
    every_op_fails_cleanly(&t, &disk);
    hang.release();
}

#[test]
fn a_failed_one_page_bounce_keeps_its_slot_page_until_the_device_stops() {
    let (t, hang) = hang_testbed();
    let clock = VirtualClock::new();
    let device = Unpluggable::new(t.rig.device());
    let driver = t.start_virtual(device.clone(), timeout_config(), &clock);
    let (_, disk) = Testbed::disk(&driver, 1);
    hang.arm();
    // Private memory: bounced, through the slot's own page.
    let back = parastor_tests::buf::TestBuf::contiguous(4096);
    let read = disk.read(back.sg(true), 8, IoOptions::default());
    let fatal = when(|| hang.hung() > 0, || device.set(PlugState::Fatal));
    let wd = driver.run_watchdog();
    let out = run_beside(&t, &clock, read, &mut pin!(wd), fatal);
    assert_eq!(out, Err(DEVICE_FAILED));
    // The slot, and so its page, is held: the device may still write it.
    assert_eq!(driver.held_commands(), 1);
    assert_eq!(driver.bounce_pool_high_water(), 0, "not the pool's");
    every_op_fails_cleanly(&t, &disk);
    hang.release();
    let _ = t.run(driver.shutdown());
    assert_eq!(driver.held_commands(), 0, "disabled: the page is free");
}

#[test]
fn a_fatal_status_fails_the_controller_and_a_stop_releases_the_buffers() {
    let (t, hang) = hang_testbed();
    let clock = VirtualClock::new();
    let device = Unpluggable::new(t.rig.device());
    let driver = t.start_virtual(device.clone(), timeout_config(), &clock);
    let (_, disk) = Testbed::disk(&driver, 1);
    hang.arm();
    let r = [range(0x2000, 4096)];
    let read = disk.read(t.sg(&r, true), 8, IoOptions::default());
    let fatal = when(|| hang.hung() > 0, || device.set(PlugState::Fatal));
    let wd = driver.run_watchdog();
    let out = run_beside(&t, &clock, read, &mut pin!(wd), fatal);
    assert_eq!(out, Err(DEVICE_FAILED));
    assert_eq!(driver.failure(), Some("controller fatal status (CSTS.CFS)"));
    assert_eq!(driver.held_commands(), 1);
    every_op_fails_cleanly(&t, &disk);
    hang.release();
    let _ = t.run(driver.shutdown());
    assert_eq!(driver.held_commands(), 0, "disabled: the buffers are free");
}

#[test]
fn dma_memory_the_device_may_still_write_is_never_handed_back() {
    let (t, hang) = hang_testbed();
    let free = free_dma_pages(&*t.rig.device());
    // A driver shut down cleanly gives every page back when dropped.
    {
        let clock = VirtualClock::new();
        let driver = t.start_virtual(t.rig.device(), timeout_config(), &clock);
        let (_, disk) = Testbed::disk(&driver, 2);
        let wd = driver.run_watchdog();
        let mut wd = pin!(wd);
        write_read(&t, &clock, &disk, 0, &mut wd);
        t.run(driver.shutdown()).expect("shutdown");
    }
    assert_eq!(free_dma_pages(&*t.rig.device()), free, "all back");
    // A driver whose device vanished with a command in flight keeps its
    // rings and that command's memory from reuse, even once dropped.
    {
        let clock = VirtualClock::new();
        let device = Unpluggable::new(t.rig.device());
        let driver = t.start_virtual(device.clone(), timeout_config(), &clock);
        let (_, disk) = Testbed::disk(&driver, 1);
        hang.arm();
        let r = [range(0x2000, 4096)];
        let read = disk.read(t.sg(&r, true), 8, IoOptions::default());
        let unplug = when(|| hang.hung() > 0, || device.set(PlugState::Removed));
        let wd = driver.run_watchdog();
        assert_eq!(
            run_beside(&t, &clock, read, &mut pin!(wd), unplug),
            Err(DEVICE_FAILED)
        );
    }
    let left = free_dma_pages(&*t.rig.device());
    assert!(
        left < free,
        "the vanished device's memory is leaked on purpose ({left} of {free} pages free)"
    );
    hang.release();
}

#[test]
fn a_controller_that_never_becomes_ready_fails_bring_up_within_the_cap() {
    let t = testbed();
    let clock = VirtualClock::new();
    let device = Unpluggable::new(t.rig.device());
    device.set(PlugState::NeverReady);
    let config = DriverConfig {
        clock: clock.clone(),
        ..timeout_config()
    };
    let err = t
        .run(NvmeDriver::new(device, config, clock.clone()))
        .expect_err("never ready");
    assert_eq!(
        err,
        DriverError::Timeout {
            ready: true,
            timeout_ms: 1000
        },
        "CAP.TO (30 s) capped at 1 s"
    );
    assert!(clock.now() < Duration::from_secs(3), "{:?}", clock.now());
}

// ---- One I/O queue pair per CPU ----

/// On a runtime thread per allowed CPU, writes a pattern through
/// namespace 1 of `driver` at a sector of that thread's own and reads it
/// back; returns the CPUs.
fn io_from_every_cpu(driver: &NvmeDriver, rig: &parastor_emulated::nvme::NvmeRig) -> Vec<usize> {
    let cpus = parastor_runtime::allowed_cpus().expect("affinity");
    let runtime = parastor_runtime::Runtime::per_cpu(&cpus).expect("runtime");
    let disk = Disk::new(driver.namespace(1).expect("namespace 1")).expect("disk");
    let tasks: Vec<_> = runtime
        .threads()
        .iter()
        .enumerate()
        .map(|(i, thread)| {
            let disk = disk.clone();
            let mem = rig.memory().clone();
            thread.spawn(async move {
                let base = (i as u64) * 0x2000;
                let w = [range(base, 4096)];
                let r = [range(base + 0x1000, 4096)];
                let sector = (i as u64) * 8;
                let data = pattern(77, sector, 8, SS512);
                mem.write_at(Gpa::new(base), &data).expect("buffer");
                let opts = IoOptions::default();
                disk.write(SgList::new(&*mem, &w, false).unwrap(), sector, opts)
                    .await
                    .expect("write");
                disk.read(SgList::new(&*mem, &r, true).unwrap(), sector, opts)
                    .await
                    .expect("read");
                let mut back = vec![0; 4096];
                mem.read_at(Gpa::new(base + 0x1000), &mut back)
                    .expect("buffer");
                assert_eq!(back, data, "read back on CPU task {i}");
            })
        })
        .collect();
    for task in tasks {
        parastor_runtime::block_on(task).expect("the I/O task finished");
    }
    runtime.shutdown();
    cpus
}

#[test]
fn each_cpu_gets_its_own_io_queue_on_first_use() {
    let config = DriverConfig {
        io_queues: 4,
        ..DriverConfig::default()
    };
    let (driver, rig, _thread) = threaded_driver(1024, 4, 5, config);
    assert_eq!(driver.io_queues_created(), 1, "only the first at bring-up");
    let cpus = io_from_every_cpu(&driver, &rig);
    // CPU c uses queue c % 4; queue 1 (index 0) exists anyway.
    let mut expected: Vec<usize> = cpus.iter().map(|c| c % 4).collect();
    expected.push(0);
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(driver.io_queues_created(), expected.len(), "CPUs {cpus:?}");
    assert_eq!(driver.facts().io_queues, 4);
    // A reset creates every one of them again, and they serve.
    parastor_tests::buf::block_on(driver.reset()).expect("reset");
    assert_eq!(driver.io_queues_created(), expected.len());
    io_from_every_cpu(&driver, &rig);
}

#[test]
fn cpus_share_queues_when_the_controller_grants_fewer() {
    let config = DriverConfig {
        io_queues: 4,
        ..DriverConfig::default()
    };
    // Vectors for four queues, but the controller grants one.
    let (driver, rig, _thread) = threaded_driver(1024, 1, 5, config);
    assert_eq!(driver.facts().io_queues, 1);
    io_from_every_cpu(&driver, &rig);
    assert_eq!(driver.io_queues_created(), 1, "every CPU shares queue 1");
}

#[test]
fn cpus_share_queues_when_msix_vectors_run_out() {
    let config = DriverConfig {
        io_queues: 4,
        ..DriverConfig::default()
    };
    // Four queues granted, but vectors for the admin queue and one more.
    let (driver, rig, _thread) = threaded_driver(1024, 4, 2, config);
    io_from_every_cpu(&driver, &rig);
    assert_eq!(driver.io_queues_created(), 1, "one vector, one I/O queue");
}

#[test]
fn a_queue_that_cannot_be_created_falls_back_to_a_lower_one() {
    let config = DriverConfig {
        io_queues: 4,
        ..DriverConfig::default()
    };
    let (driver, rig, _thread) = threaded_driver(1024, 4, 5, config);
    // Take every page of DMA memory left: no new queue can be allocated.
    let device = rig.device();
    let mut taken = Vec::new();
    while let Ok(b) = device.alloc_dma(4096) {
        taken.push(b);
    }
    assert!(!taken.is_empty());
    io_from_every_cpu(&driver, &rig);
    assert_eq!(
        driver.io_queues_created(),
        1,
        "the others could not be allocated; their CPUs share queue 1"
    );
}

// ---- Identity and raw commands ----

#[test]
fn controller_identity_and_passthrough_commands() {
    use parastor_hw::nvme::queue::Sqe;
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    let facts = driver.facts();
    assert_eq!(facts.serial, "PARASTOR-E2E-0001");
    assert_eq!(facts.model, "parastor e2e controller");
    assert!(!facts.firmware.is_empty() && !facts.firmware.ends_with(' '));

    // Identify Controller through the admin queue: the same serial.
    let mut sqe = Sqe::default();
    sqe.cdw0.set_opc(0x06);
    sqe.cdw10 = 1.into();
    let mut id = vec![0u8; 4096];
    let done = t
        .run(driver.passthrough(
            PassthroughQueue::Admin,
            sqe,
            PassthroughData::FromDevice(&mut id),
        ))
        .expect("identify");
    assert_eq!(done.status, 0);
    assert_eq!(&id[4..21], b"PARASTOR-E2E-0001");

    // Write then read namespace 2 (4 KiB sectors), LBA 3, one block.
    let data = pattern(70, 3, 1, SS4K);
    let rw = |opc: u8| {
        let mut sqe = Sqe::default();
        sqe.cdw0.set_opc(opc);
        sqe.nsid = 2.into();
        sqe.cdw10 = 3.into();
        sqe
    };
    let done = t
        .run(driver.passthrough(
            PassthroughQueue::Io,
            rw(0x01),
            PassthroughData::ToDevice(&data),
        ))
        .expect("write");
    assert_eq!(done.status, 0);
    assert_eq!(read_vec(&t.disks[&2].1, 3, 1).unwrap(), data);
    let mut back = vec![0u8; 4096];
    let done = t
        .run(driver.passthrough(
            PassthroughQueue::Io,
            rw(0x02),
            PassthroughData::FromDevice(&mut back),
        ))
        .expect("read");
    assert_eq!((done.status, back == data), (0, true));

    // An unknown opcode completes with Invalid Command Opcode (SCT 0,
    // SC 1): a status, not an error.
    let done = t
        .run(driver.passthrough(PassthroughQueue::Io, rw(0x7F), PassthroughData::None))
        .expect("a completion");
    assert_eq!(done.status & 0x7FF, 0x001);

    // The driver's own commands are refused, and so is oversized data.
    let mut create = Sqe::default();
    create.cdw0.set_opc(0x01);
    assert!(matches!(
        t.run(driver.passthrough(PassthroughQueue::Admin, create, PassthroughData::None)),
        Err(DriverError::Unsupported(_))
    ));
    let big = vec![0u8; facts.max_transfer + 1];
    assert!(matches!(
        t.run(driver.passthrough(
            PassthroughQueue::Io,
            rw(0x01),
            PassthroughData::ToDevice(&big)
        )),
        Err(DriverError::Unsupported(_))
    ));
}

// ---- Servicing with the controller kept running (keepalive) ----

/// Saving after a quiesce: the writes in flight finish for their
/// owners (none is failed while the device still has it), then the
/// driver is saved with nothing in flight and a new instance takes over.
#[test]
fn keepalive_quiesce_lets_io_in_flight_finish_before_the_save() {
    use parastor_emulated::nvme::YieldTimer;
    use std::sync::Arc;
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    let (_, disk) = Testbed::disk(&driver, 1);
    round_trip(&t, 1, &disk, 300, &[range(0x2_0000, 4096)], 92);
    for i in 0..16u64 {
        t.put(0x10_0000 + i * 4096, &pattern(94, i * 8, 8, SS512));
    }
    let ranges: Vec<[GpaRange; 1]> = (0..16u64)
        .map(|i| [range(0x10_0000 + i * 4096, 4096)])
        .collect();
    let mut writes: Vec<_> = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| Box::pin(disk.write(t.sg(r, false), i as u64 * 8, IoOptions::default())))
        .collect();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for w in &mut writes {
        assert!(w.as_mut().poll(&mut cx).is_pending());
    }
    assert_eq!(driver.outstanding(), 16);
    let (results, blob) = t.run(futures::future::join(
        futures::future::join_all(writes),
        driver.quiesce_and_save(),
    ));
    for (i, r) in results.iter().enumerate() {
        assert_eq!(*r, Ok(()), "write {i} finished for its owner");
    }
    let blob = blob.expect("saved once the writes finished");
    // After the save, new I/O fails at once (the driver is saved).
    assert_eq!(
        t.run(disk.write(t.sg(&ranges[0], false), 0, IoOptions::default())),
        Err(DEVICE_FAILED)
    );
    drop(disk);
    drop(driver);
    let driver = t
        .run(NvmeDriver::restore(
            t.rig.device(),
            config(DataPointer::Auto),
            Arc::new(YieldTimer),
            &blob,
        ))
        .expect("restore");
    assert_eq!(driver.outstanding(), 0);
    assert_eq!(driver.resets(), 0, "taken over, not reset");
    let held = read_vec(&t.disks[&1].1, 0, 128).unwrap();
    for i in 0..16u64 {
        assert_eq!(
            held[(i * 4096) as usize..((i + 1) * 4096) as usize],
            pattern(94, i * 8, 8, SS512)[..],
            "write {i}"
        );
    }
}

#[test]
fn keepalive_save_and_restore_with_io_in_flight() {
    use parastor_emulated::nvme::YieldTimer;
    use std::sync::Arc;
    let t = testbed();
    let driver = t.start(config(DataPointer::Auto));
    let (_, disk) = Testbed::disk(&driver, 1);
    // This thread's queue comes with its first I/O.
    round_trip(&t, 1, &disk, 300, &[range(0x2_0000, 4096)], 92);
    // The event loop puts its request out, then waits.
    let events = driver.run_async_events();
    let mut events = Box::pin(events);
    let noop = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(noop);
    assert!(events.as_mut().poll(&mut cx).is_pending());
    // Sixteen writes given to the device, none completed yet.
    for i in 0..16u64 {
        t.put(0x10_0000 + i * 4096, &pattern(93, i * 8, 8, SS512));
    }
    let ranges: Vec<[GpaRange; 1]> = (0..16u64)
        .map(|i| [range(0x10_0000 + i * 4096, 4096)])
        .collect();
    let mut writes: Vec<_> = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| Box::pin(disk.write(t.sg(r, false), i as u64 * 8, IoOptions::default())))
        .collect();
    for w in &mut writes {
        assert!(w.as_mut().poll(&mut cx).is_pending());
    }
    assert_eq!(driver.outstanding(), 16);
    // The controller takes some of them meanwhile.
    let _ = t.rig.poll_controller(&mut cx);

    let blob = driver.save().expect("save");
    // The old instance's callers get a clean error; the commands stay the
    // device's.
    for w in &mut writes {
        assert_eq!(
            w.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Err(DEVICE_FAILED))
        );
    }
    assert!(
        events.as_mut().poll(&mut cx).is_ready(),
        "the old loop ends"
    );
    drop(writes);
    drop(disk);
    drop(events);
    drop(driver);
    assert_eq!(
        t.rig
            .device()
            .read_u32(0, parastor_hw::nvme::regs::offset::CSTS)
            & 1,
        1,
        "the controller kept running"
    );

    // A damaged blob is refused, naming the problem.
    let mut bad = blob.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xFF;
    let err = t
        .run(NvmeDriver::restore(
            t.rig.device(),
            config(DataPointer::Auto),
            Arc::new(YieldTimer),
            &bad,
        ))
        .expect_err("damaged");
    assert!(matches!(err, DriverError::State(_)), "{err}");

    let driver = t
        .run(NvmeDriver::restore(
            t.rig.device(),
            config(DataPointer::Auto),
            Arc::new(YieldTimer),
            &blob,
        ))
        .expect("restore");
    assert_eq!(driver.outstanding(), 0, "the saved commands drained first");
    assert_eq!(driver.resets(), 0, "taken over, not reset");
    assert_eq!(driver.facts().serial, "PARASTOR-E2E-0001");
    assert_eq!(driver.namespaces(), [1, 2, 7]);
    // Every write given to the device before the save reached the disk.
    let held = read_vec(&t.disks[&1].1, 0, 128).unwrap();
    for i in 0..16u64 {
        assert_eq!(
            held[(i * 4096) as usize..((i + 1) * 4096) as usize],
            pattern(93, i * 8, 8, SS512)[..],
            "write {i}"
        );
    }
    // New I/O runs on the restored queues.
    let (_, disk) = Testbed::disk(&driver, 1);
    round_trip(&t, 1, &disk, 400, &[range(0x2_0000, 8192)], 94);
    // The saved event request is adopted: a hot-added namespace shows.
    let events = driver.run_async_events();
    let mut events = pin!(events);
    let generation = driver.namespace_generation();
    let (_, d3) = parastor_tests::nvme::ram(64, SS512);
    t.rig.controller().add_namespace(3, d3).expect("add 3");
    with_events(&t, &mut events, driver.wait_namespace_change(generation));
    assert_eq!(driver.namespaces(), [1, 2, 3, 7]);
    assert_eq!(driver.refused_completions(), 0);
}

#[test]
fn keepalive_takes_over_bounced_commands_and_their_memory() {
    use parastor_emulated::nvme::YieldTimer;
    use std::sync::Arc;
    let t = testbed();
    let free = free_dma_pages(&*t.rig.device());
    let noop = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(noop);
    let blob = {
        let driver = t.start(config(DataPointer::Auto));
        let (_, disk) = Testbed::disk(&driver, 2);
        round_trip(&t, 2, &disk, 100, &[range(0x2_0000, 4096)], 95);
        // Eight 4 KiB writes from private memory: through bounce buffers.
        let bufs: Vec<_> = (0..8u64)
            .map(|i| {
                parastor_tests::buf::TestBuf::from_data(
                    &pattern(96, i, 1, SS4K),
                    &parastor_tests::buf::Layout::contiguous(),
                )
            })
            .collect();
        let mut writes: Vec<_> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| Box::pin(disk.write(b.sg(false), i as u64, IoOptions::default())))
            .collect();
        for w in &mut writes {
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(driver.outstanding(), 8);
        driver.save().expect("save")
    };
    let driver = t
        .run(NvmeDriver::restore(
            t.rig.device(),
            config(DataPointer::Auto),
            Arc::new(YieldTimer),
            &blob,
        ))
        .expect("restore");
    assert_eq!((driver.outstanding(), driver.resets()), (0, 0));
    let held = read_vec(&t.disks[&2].1, 0, 8).unwrap();
    for i in 0..8u64 {
        assert_eq!(
            held[(i * 4096) as usize..((i + 1) * 4096) as usize],
            pattern(96, i, 1, SS4K)[..],
            "bounced write {i}"
        );
    }
    // Every page the first instance had is accounted for: the restored
    // instance freed the bounce buffers as their commands completed, and
    // hands the rest back when shut down.
    t.run(driver.shutdown()).expect("shutdown");
    drop(driver);
    assert_eq!(free_dma_pages(&*t.rig.device()), free);
}

/// Keepalive more than once in one process: each restore re-attaches the
/// memory the previous save left to the device (rings, list pages, shadow
/// doorbell pages). A save that forgot its buffers instead of leaving them
/// would keep them attached, and the second restore would be refused as a
/// double attach.
#[test]
fn keepalive_twice_in_one_process_reattaches_the_same_memory() {
    use parastor_emulated::nvme::YieldTimer;
    use std::sync::Arc;
    let t = testbed();
    let mut driver = t.start(config(DataPointer::Auto));
    let (_, disk) = Testbed::disk(&driver, 1);
    round_trip(&t, 1, &disk, 300, &[range(0x2_0000, 4096)], 92);
    drop(disk);
    for cycle in 0..3u8 {
        let blob = t
            .run(driver.quiesce_and_save())
            .unwrap_or_else(|e| panic!("save {cycle}: {e}"));
        drop(driver);
        driver = t
            .run(NvmeDriver::restore(
                t.rig.device(),
                config(DataPointer::Auto),
                Arc::new(YieldTimer),
                &blob,
            ))
            .unwrap_or_else(|e| panic!("restore {cycle}: {e}"));
        assert_eq!(driver.resets(), 0, "cycle {cycle}: taken over, not reset");
        let (_, disk) = Testbed::disk(&driver, 1);
        round_trip(
            &t,
            1,
            &disk,
            400 + u64::from(cycle) * 8,
            &[range(0x3_0000, 4096)],
            100 + u64::from(cycle),
        );
    }
}
