//! Layered-disk behaviour beyond the shared conformance suite: every
//! construction rule, fall-through, read-cache population, write-through,
//! unmap merging, visible sizes after resizes, and member errors.

use parastor_core::layered::{
    InvalidLayer, LayerConfig, LayerSource, LayeredDisk, LayeredDiskError,
};
use parastor_core::ram::RamDiskError;
use parastor_core::{Disk, DiskError, IoOptions, SectorMarker, UnmapBehavior, run_inline};
use parastor_tests::buf::{
    Layout, TestBuf, block_on, flush, pattern, read_vec, unmap, write, write_vec,
};
use parastor_tests::doubles::{Call, INJECTED, TestDisk};
use parastor_tests::stacks::{
    disk, file_disk, layer, layered, ram, ram_disk, ram_layer, striped_ram,
};

fn err(layers: Vec<LayerConfig>) -> LayeredDiskError {
    err_ro(false, layers)
}

fn err_ro(read_only: bool, layers: Vec<LayerConfig>) -> LayeredDiskError {
    match LayeredDisk::new(read_only, layers) {
        Ok(_) => panic!("construction succeeded"),
        Err(e) => e,
    }
}

fn at(index: usize, error: InvalidLayer) -> LayeredDiskError {
    LayeredDiskError::Layer { index, error }
}

fn plain(d: Disk) -> LayerConfig {
    layer(d, false, false)
}

fn wt(d: Disk) -> LayerConfig {
    layer(d, true, false)
}

fn ram_src(len: Option<u64>, ss: Option<u32>) -> LayerConfig {
    LayerConfig::new(LayerSource::Ram {
        len_bytes: len,
        sector_size: ss,
    })
}

/// A read-only disk.
fn ro_disk(sectors: u64, ss: u32) -> Disk {
    layered(true, vec![plain(ram_disk(sectors, ss))])
}

#[test]
fn error_no_layers() {
    assert_eq!(err(vec![]), LayeredDiskError::NoLayers);
    assert_eq!(err_ro(true, vec![]), LayeredDiskError::NoLayers);
}

#[test]
fn error_mismatched_sector_size() {
    let mismatch = |expected, found| InvalidLayer::MismatchedSectorSize { expected, found };
    assert_eq!(
        err(vec![plain(ram_disk(8, 512)), plain(ram_disk(8, 4096))]),
        at(0, mismatch(4096, 512))
    );
    assert_eq!(
        err(vec![
            plain(ram_disk(8, 4096)),
            plain(ram_disk(8, 512)),
            plain(ram_disk(8, 512))
        ]),
        at(0, mismatch(512, 4096))
    );
    assert_eq!(
        err(vec![
            plain(ram_disk(8, 512)),
            plain(ram_disk(8, 4096)),
            plain(ram_disk(8, 512))
        ]),
        at(1, mismatch(512, 4096))
    );
    // An explicit RAM layer sector size that differs from the bottom's.
    assert_eq!(
        err(vec![
            ram_src(Some(8192), Some(4096)),
            plain(ram_disk(16, 512))
        ]),
        at(0, mismatch(512, 4096))
    );
}

#[test]
fn error_invalid_sector_size() {
    for bad in [0, 256, 1000, 4097, 128 * 1024] {
        assert_eq!(
            err(vec![ram_src(Some(1 << 20), Some(bad))]),
            at(0, InvalidLayer::InvalidSectorSize(bad)),
            "sector size {bad}"
        );
        assert_eq!(
            err(vec![
                ram_src(Some(1 << 20), Some(bad)),
                plain(ram_disk(8, 512))
            ]),
            at(0, InvalidLayer::InvalidSectorSize(bad)),
            "sector size {bad} over a disk"
        );
    }
}

#[test]
fn error_ram_layer_size() {
    assert_eq!(
        err(vec![ram_src(Some(1000), Some(512))]),
        at(
            0,
            InvalidLayer::Ram(RamDiskError::NotSectorMultiple {
                len_bytes: 1000,
                sector_size: 512
            })
        )
    );
    assert_eq!(
        err(vec![ram_src(Some(0), None), plain(ram_disk(8, 512))]),
        at(0, InvalidLayer::Ram(RamDiskError::EmptyDisk))
    );
    assert_eq!(err(vec![ram_src(None, None)]), at(0, InvalidLayer::NoSize));
    assert_eq!(
        err(vec![plain(ram_disk(8, 512)), ram_src(None, Some(512))]),
        at(1, InvalidLayer::NoSize)
    );
}

#[test]
fn error_useless_write_through() {
    let r = || ram_disk(8, 512);
    // On the last layer (alone, or at the end of the chain).
    assert_eq!(err(vec![wt(r())]), at(0, InvalidLayer::UselessWriteThrough));
    assert_eq!(
        err(vec![plain(r()), wt(r())]),
        at(1, InvalidLayer::UselessWriteThrough)
    );
    assert_eq!(
        err(vec![wt(r()), wt(r())]),
        at(1, InvalidLayer::UselessWriteThrough)
    );
    // After a layer that is not write-through.
    assert_eq!(
        err(vec![plain(r()), wt(r()), plain(r())]),
        at(1, InvalidLayer::UselessWriteThrough)
    );
    assert_eq!(
        err(vec![wt(r()), plain(r()), wt(r()), plain(r())]),
        at(2, InvalidLayer::UselessWriteThrough)
    );
    // Read-only disks follow the same rule.
    assert_eq!(
        err_ro(true, vec![wt(r())]),
        at(0, InvalidLayer::UselessWriteThrough)
    );
    // A contiguous chain from the top is fine.
    assert!(LayeredDisk::new(false, vec![wt(r()), wt(r()), plain(r())]).is_ok());
}

#[test]
fn error_read_only_layer_in_write_path() {
    let r = || ram_disk(8, 512);
    let ro = || ro_disk(8, 512);
    assert_eq!(err(vec![plain(ro())]), at(0, InvalidLayer::ReadOnly));
    assert_eq!(
        err(vec![plain(ro()), plain(r())]),
        at(0, InvalidLayer::ReadOnly)
    );
    assert_eq!(
        err(vec![wt(r()), plain(ro())]),
        at(1, InvalidLayer::ReadOnly)
    );
    assert_eq!(
        err(vec![wt(r()), wt(r()), plain(ro())]),
        at(2, InvalidLayer::ReadOnly)
    );
    let ro_file = || file_disk(8, 512, true);
    assert_eq!(
        err(vec![wt(r()), plain(ro_file())]),
        at(1, InvalidLayer::ReadOnly)
    );
    // Outside the write path, or on a read-only layered disk: fine.
    assert!(LayeredDisk::new(false, vec![plain(r()), plain(ro())]).is_ok());
    assert!(LayeredDisk::new(false, vec![wt(r()), plain(r()), plain(ro())]).is_ok());
    assert!(LayeredDisk::new(true, vec![plain(ro())]).is_ok());
    assert!(LayeredDisk::new(true, vec![wt(ro()), plain(ro())]).is_ok());
}

#[test]
fn error_read_cache_not_supported() {
    let no_wno = || disk(TestDisk::new(ram_disk(8, 512)).without_write_no_overwrite());
    assert_eq!(
        err(vec![layer(no_wno(), false, true), plain(ram_disk(8, 512))]),
        at(0, InvalidLayer::ReadCacheNotSupported)
    );
    assert_eq!(
        err(vec![
            plain(ram_disk(8, 512)),
            layer(no_wno(), false, true),
            plain(ram_disk(8, 512))
        ]),
        at(1, InvalidLayer::ReadCacheNotSupported)
    );
    // A striped disk and a file cannot be read caches either.
    let s = striped_ram(2, 8, 512, 4096);
    assert_eq!(
        err(vec![layer(s, false, true), plain(ram_disk(16, 512))]),
        at(0, InvalidLayer::ReadCacheNotSupported)
    );
    assert_eq!(
        err(vec![
            layer(file_disk(8, 512, false), false, true),
            plain(ram_disk(8, 512))
        ]),
        at(0, InvalidLayer::ReadCacheNotSupported)
    );
}

#[test]
fn ram_layer_inherits_from_below() {
    let d = layered(
        false,
        vec![ram_layer(false, false), plain(ram_disk(40, 4096))],
    );
    assert_eq!((d.sector_count(), d.sector_size()), (40, 4096));
    let d = layered(
        false,
        vec![ram_src(Some(64 * 4096), None), plain(ram_disk(40, 4096))],
    );
    assert_eq!((d.sector_count(), d.sector_size()), (64, 4096));
    let d = layered(false, vec![ram_src(Some(8192), None)]);
    assert_eq!((d.sector_count(), d.sector_size()), (16, 512));
}

/// Which of `[sector, sector + count)` `layer` has, as a layer.
fn present(layer: &Disk, sector: u64, count: u64) -> Vec<bool> {
    let buf = TestBuf::contiguous(count as usize * layer.sector_size() as usize);
    let mut bits = vec![0u64; count.div_ceil(64) as usize];
    let mut marker = SectorMarker::new(sector, count, &mut bits);
    block_on(layer.read_present(buf.sg(true), sector, &mut marker, IoOptions::default())).unwrap();
    (sector..sector + count).map(|s| marker.is_set(s)).collect()
}

#[test]
fn fall_through_and_hiding() {
    for ss in [512, 4096] {
        let bottom = ram_disk(64, ss);
        let old = pattern(1, 0, 64, ss);
        write_vec(&bottom, 0, &old).unwrap();
        let top = ram_disk(64, ss);
        let d = layered(false, vec![plain(top.clone()), plain(bottom.clone())]);
        // Empty top: everything comes from below.
        assert_eq!(read_vec(&d, 0, 64).unwrap(), old);
        // Writes land in the top only and hide the bottom.
        let new = pattern(2, 10, 5, ss);
        write_vec(&d, 10, &new).unwrap();
        assert_eq!(
            read_vec(&bottom, 0, 64).unwrap(),
            old,
            "write reached the bottom"
        );
        let p = present(&top, 0, 64);
        assert!(
            p.iter()
                .enumerate()
                .all(|(s, &p)| p == (10..15).contains(&s)),
            "{p:?}"
        );
        // A read straddling both layers gets each sector from the right one.
        let mut want = old.clone();
        let s = ss as usize;
        want[10 * s..15 * s].copy_from_slice(&new);
        assert_eq!(read_vec(&d, 0, 64).unwrap(), want);
        // A multi-range read whose pieces split sectors.
        let layout = Layout {
            cuts: vec![700, 5000, 9000],
            gaps: vec![3, 1001, 17, 4095],
            reverse: true,
            short_memory: None,
        };
        let buf = TestBuf::new(12 * s, &layout);
        parastor_tests::buf::read(&d, 6, &buf).unwrap();
        assert_eq!(buf.contents(), want[6 * s..18 * s]);
        // Unmap in the top hides the bottom with zeros (the disk reports
        // Zeroes), without touching the bottom.
        assert_eq!(d.unmap_behavior(), UnmapBehavior::Zeroes);
        unmap(&d, 12, 10).unwrap();
        want[12 * s..22 * s].fill(0);
        assert_eq!(read_vec(&d, 0, 64).unwrap(), want);
        assert_eq!(
            read_vec(&bottom, 0, 64).unwrap(),
            old,
            "unmap reached the bottom"
        );
    }
}

#[test]
fn three_layers_each_supply_their_sectors() {
    let ss = 512;
    let (a, b, c) = (ram_disk(32, ss), ram_disk(32, ss), ram_disk(32, ss));
    write_vec(&c, 0, &pattern(3, 0, 32, ss)).unwrap();
    write_vec(&b, 8, &pattern(4, 8, 16, ss)).unwrap();
    write_vec(&a, 12, &pattern(5, 12, 4, ss)).unwrap();
    let d = layered(false, vec![plain(a), plain(b), plain(c)]);
    let got = read_vec(&d, 0, 32).unwrap();
    for s in 0..32u64 {
        let seed = match s {
            12..16 => 5,
            8..24 => 4,
            _ => 3,
        };
        let i = s as usize * ss as usize;
        assert_eq!(
            got[i..i + ss as usize],
            pattern(seed, s, 1, ss),
            "sector {s}"
        );
    }
}

/// Reads longer than the layered disk's internal window, over a top that
/// holds every third sector.
#[test]
fn long_reads_with_mixed_presence() {
    let ss = 512;
    let n = 5000;
    let bottom = ram_disk(n, ss);
    let old = pattern(6, 0, n, ss);
    write_vec(&bottom, 0, &old).unwrap();
    let d = layered(false, vec![ram_layer(false, false), plain(bottom)]);
    let mut want = old;
    for s in (0..n).step_by(3) {
        let p = pattern(7, s, 1, ss);
        write_vec(&d, s, &p).unwrap();
        want[s as usize * 512..][..512].copy_from_slice(&p);
    }
    assert_eq!(read_vec(&d, 0, n).unwrap(), want);
    assert_eq!(
        read_vec(&d, 1000, 2100).unwrap(),
        want[1000 * 512..3100 * 512]
    );
}

#[test]
fn read_cache_is_populated_by_reads() {
    for ss in [512, 4096] {
        let bottom_t = TestDisk::new(ram_disk(64, ss));
        let bottom = disk(bottom_t.clone());
        let data = pattern(8, 0, 64, ss);
        write_vec(&bottom, 0, &data).unwrap();
        let cache = ram_disk(64, ss);
        let d = layered(
            false,
            vec![
                ram_layer(false, false),
                layer(cache.clone(), false, true),
                plain(bottom),
            ],
        );
        bottom_t.take_calls();
        assert_eq!(
            read_vec(&d, 4, 8).unwrap(),
            data[4 * ss as usize..12 * ss as usize]
        );
        assert!(
            !bottom_t.take_calls().is_empty(),
            "first read did not reach the bottom"
        );
        // The cache layer now holds exactly what was read.
        let p = present(&cache, 0, 16);
        assert!(
            p.iter()
                .enumerate()
                .all(|(s, &p)| p == (4..12).contains(&s)),
            "{p:?}"
        );
        assert_eq!(
            read_vec(&cache, 4, 8).unwrap(),
            data[4 * ss as usize..12 * ss as usize]
        );
        // A second read is served by the cache.
        assert_eq!(
            read_vec(&d, 4, 8).unwrap(),
            data[4 * ss as usize..12 * ss as usize]
        );
        assert_eq!(
            bottom_t.take_calls(),
            vec![],
            "cached read reached the bottom"
        );
        // A read overlapping cached and uncached sectors fetches only the gap.
        assert_eq!(read_vec(&d, 0, 16).unwrap(), data[..16 * ss as usize]);
        let calls = bottom_t.take_calls();
        assert!(
            calls.iter().all(|c| matches!(c, Call::Read { sector, count } if *sector + *count <= 4 || *sector >= 12)),
            "bottom saw reads of cached sectors: {calls:?}"
        );
        // Sectors nobody has read as zero and are not cached as data
        // either way consistently.
        assert_eq!(read_vec(&d, 60, 4).unwrap(), data[60 * ss as usize..]);
    }
}

/// A write that lands while a read-cache fill is in flight must not be
/// overwritten by the fill (write-no-overwrite).
#[test]
fn read_cache_fill_does_not_clobber_a_racing_write() {
    for ss in [512, 4096] {
        // The cache is the top layer.
        let bottom_t = TestDisk::new(ram_disk(16, ss));
        let old = pattern(9, 0, 16, ss);
        write_vec(&disk(bottom_t.clone()), 0, &old).unwrap();
        let cache = ram_disk(16, ss);
        let d = layered(
            false,
            vec![
                layer(cache.clone(), false, true),
                plain(disk(bottom_t.clone())),
            ],
        );
        let new = pattern(10, 5, 1, ss);
        let (d2, new2) = (d.clone(), new.clone());
        bottom_t.on_next_read(move || {
            let buf = TestBuf::from_data(&new2, &Layout::contiguous());
            run_inline(d2.write(buf.sg(false), 5, IoOptions::default())).unwrap();
        });
        // The racing read may return either version of sector 5 ...
        let got = read_vec(&d, 0, 8).unwrap();
        let s = ss as usize;
        assert_eq!(got[..5 * s], old[..5 * s]);
        assert!(got[5 * s..6 * s] == old[5 * s..6 * s] || got[5 * s..6 * s] == new[..]);
        // ... but afterwards the write must stick, in the cache and through
        // the disk.
        assert_eq!(
            read_vec(&cache, 5, 1).unwrap(),
            new,
            "cache fill clobbered a newer write"
        );
        assert_eq!(read_vec(&d, 5, 1).unwrap(), new);
        assert_eq!(
            read_vec(&d, 0, 5).unwrap(),
            old[..5 * s],
            "cache filled wrongly"
        );

        // The cache is below a write-through top.
        let bottom_t = TestDisk::new(ram_disk(16, ss));
        write_vec(&disk(bottom_t.clone()), 0, &old).unwrap();
        let cache = ram_disk(16, ss);
        let d = layered(
            false,
            vec![
                ram_layer(true, false),
                layer(cache.clone(), false, true),
                plain(disk(bottom_t.clone())),
            ],
        );
        let (d2, new2) = (d.clone(), new.clone());
        bottom_t.on_next_read(move || {
            let buf = TestBuf::from_data(&new2, &Layout::contiguous());
            run_inline(d2.write(buf.sg(false), 5, IoOptions::default())).unwrap();
        });
        read_vec(&d, 0, 8).unwrap();
        assert_eq!(
            read_vec(&cache, 5, 1).unwrap(),
            new,
            "cache fill clobbered a write-through"
        );
        assert_eq!(read_vec(&d, 5, 1).unwrap(), new);
    }
}

#[test]
fn read_only_cache_layer_is_filled_on_a_read_only_disk() {
    let bottom = ram_disk(16, 512);
    let data = pattern(11, 0, 16, 512);
    write_vec(&bottom, 0, &data).unwrap();
    let cache = ram_disk(16, 512);
    let d = layered(true, vec![layer(cache.clone(), false, true), plain(bottom)]);
    assert_eq!(read_vec(&d, 0, 16).unwrap(), data);
    assert_eq!(read_vec(&cache, 0, 16).unwrap(), data);
    assert_eq!(write_vec(&d, 0, &data[..512]), Err(DiskError::ReadOnly));
}

#[test]
fn write_through_reaches_the_chain_only() {
    let ss = 512;
    let t = [0, 1, 2].map(|_| TestDisk::new(ram_disk(32, ss)));
    let d = layered(
        false,
        vec![
            wt(disk(t[0].clone())),
            plain(disk(t[1].clone())),
            plain(disk(t[2].clone())),
        ],
    );
    let data = pattern(12, 3, 4, ss);
    let buf = TestBuf::from_data(&data, &Layout::contiguous());
    write(&d, 3, &buf, IoOptions::fua()).unwrap();
    let want = Call::Write {
        sector: 3,
        count: 4,
        fua: true,
    };
    assert_eq!(t[0].take_calls(), vec![want]);
    assert_eq!(t[1].take_calls(), vec![want]);
    assert_eq!(t[2].take_calls(), vec![]);
    assert_eq!(
        read_vec(&disk(t[1].clone()), 3, 4).unwrap(),
        data,
        "write-through layer lacks the data"
    );
    t[1].take_calls();
    flush(&d).unwrap();
    assert_eq!(
        (t[0].take_calls(), t[1].take_calls(), t[2].take_calls()),
        (vec![Call::Flush], vec![Call::Flush], vec![])
    );
    // FUA is respected only if every layer of the write path respects it.
    let no_fua = disk(TestDisk::new(ram_disk(32, ss)).with_fua(false));
    assert!(!layered(false, vec![wt(ram_disk(32, ss)), plain(no_fua.clone())]).is_fua_respected());
    assert!(layered(false, vec![plain(ram_disk(32, ss)), plain(no_fua)]).is_fua_respected());
}

#[test]
fn unmap_behavior_merges_over_the_write_path() {
    let ss = 512;
    let r = || ram_disk(32, ss);
    let as_ = |b| disk(TestDisk::new(ram_disk(32, ss)).with_unmap_behavior(b));
    let b = |layers| layered(false, layers).unmap_behavior();
    assert_eq!(b(vec![plain(r()), plain(r())]), UnmapBehavior::Zeroes);
    assert_eq!(
        b(vec![wt(r()), plain(r()), plain(r())]),
        UnmapBehavior::Zeroes
    );
    assert_eq!(
        b(vec![plain(as_(UnmapBehavior::Unspecified)), plain(r())]),
        UnmapBehavior::Unspecified
    );
    assert_eq!(
        b(vec![plain(as_(UnmapBehavior::Ignored)), plain(r())]),
        UnmapBehavior::Ignored
    );
    // Below the write path, a layer's behaviour does not matter.
    assert_eq!(
        b(vec![plain(r()), plain(as_(UnmapBehavior::Ignored))]),
        UnmapBehavior::Zeroes
    );
    // Write-through over a layer that does not zero: copies would diverge.
    assert_eq!(
        b(vec![wt(r()), plain(as_(UnmapBehavior::Unspecified))]),
        UnmapBehavior::Ignored
    );
    assert_eq!(
        b(vec![wt(as_(UnmapBehavior::Unspecified)), plain(r())]),
        UnmapBehavior::Ignored
    );

    // An ignoring layered disk sends no unmap down, but still range-checks.
    let top = TestDisk::new(ram_disk(32, ss));
    let d = layered(
        false,
        vec![
            wt(disk(top.clone())),
            plain(as_(UnmapBehavior::Unspecified)),
        ],
    );
    let data = pattern(13, 0, 4, ss);
    write_vec(&d, 0, &data).unwrap();
    top.take_calls();
    unmap(&d, 0, 4).unwrap();
    assert_eq!(top.take_calls(), vec![]);
    assert_eq!(read_vec(&d, 0, 4).unwrap(), data);
    assert_eq!(unmap(&d, 30, 3), Err(DiskError::IllegalBlock));
}

#[test]
fn unmap_tells_the_top_when_below_is_zero() {
    let ss = 512;
    let top = TestDisk::new(ram_disk(64, ss));
    let d = layered(
        false,
        vec![plain(disk(top.clone())), plain(ram_disk(32, ss))],
    );
    unmap(&d, 0, 8).unwrap();
    unmap(&d, 40, 8).unwrap();
    assert_eq!(
        top.take_calls(),
        vec![
            Call::Unmap {
                sector: 0,
                count: 8,
                next_is_zero: false
            },
            Call::Unmap {
                sector: 40,
                count: 8,
                next_is_zero: true
            },
        ]
    );
    // Either way the sectors read zero.
    write_vec(&d, 40, &pattern(14, 40, 8, ss)).unwrap();
    unmap(&d, 40, 8).unwrap();
    assert!(read_vec(&d, 32, 32).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn visible_size_follows_the_top_layer() {
    for ss in [512, 4096] {
        let s = ss as usize;
        // Top smaller than the bottom: the bottom's tail is never visible,
        // even after the top grows.
        let bottom = ram_disk(64, ss);
        let old = pattern(15, 0, 64, ss);
        write_vec(&bottom, 0, &old).unwrap();
        let (top, top_disk) = ram(32, ss);
        let d = layered(false, vec![plain(top_disk), plain(bottom.clone())]);
        assert_eq!(d.sector_count(), 32);
        assert_eq!(read_vec(&d, 0, 32).unwrap(), old[..32 * s]);
        assert_eq!(read_vec(&d, 32, 1), Err(DiskError::IllegalBlock));
        top.resize(64);
        assert_eq!(d.sector_count(), 64);
        assert!(
            read_vec(&d, 32, 32).unwrap().iter().all(|&b| b == 0),
            "bottom tail became visible"
        );

        // Shrinking the top hides the bottom past the new end; growing back
        // does not bring it back.
        let (top, top_disk) = ram(64, ss);
        let d = layered(false, vec![plain(top_disk), plain(bottom.clone())]);
        write_vec(&d, 20, &pattern(16, 20, 4, ss)).unwrap();
        top.resize(16);
        assert_eq!(d.sector_count(), 16);
        assert_eq!(read_vec(&d, 15, 2), Err(DiskError::IllegalBlock));
        assert_eq!(write_vec(&d, 16, &old[..s]), Err(DiskError::IllegalBlock));
        assert_eq!(read_vec(&d, 0, 16).unwrap(), old[..16 * s]);
        top.resize(64);
        let back = read_vec(&d, 16, 48).unwrap();
        assert!(
            back.iter().all(|&b| b == 0),
            "data past a shrink reappeared after regrowing"
        );
        assert_eq!(read_vec(&d, 0, 16).unwrap(), old[..16 * s]);
        // And the bottom itself is untouched.
        assert_eq!(read_vec(&bottom, 0, 64).unwrap(), old);

        // A top bigger than the bottom: the sectors past the bottom read zero.
        let small = ram_disk(8, ss);
        write_vec(&small, 0, &pattern(17, 0, 8, ss)).unwrap();
        let d = layered(
            false,
            vec![ram_src(Some(16 * u64::from(ss)), None), plain(small)],
        );
        assert_eq!(d.sector_count(), 16);
        let got = read_vec(&d, 0, 16).unwrap();
        assert_eq!(got[..8 * s], pattern(17, 0, 8, ss));
        assert!(got[8 * s..].iter().all(|&b| b == 0));
    }
}

#[test]
fn wait_resize_follows_the_top_layer() {
    let (top, top_disk) = ram(32, 512);
    let d = layered(false, vec![plain(top_disk), plain(ram_disk(32, 512))]);
    let mut w = Box::pin(d.wait_resize(32));
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(w.as_mut().poll(&mut cx).is_pending());
    top.resize(20);
    assert_eq!(w.as_mut().poll(&mut cx), std::task::Poll::Ready(20));
}

#[test]
fn member_errors_name_the_layer() {
    let ss = 512;
    let mid = TestDisk::new(ram_disk(32, ss));
    let bottom = TestDisk::new(ram_disk(32, ss));
    let d = layered(
        false,
        vec![
            wt(ram_disk(32, ss)),
            plain(disk(mid.clone())),
            plain(disk(bottom.clone())),
        ],
    );
    let member = |index| DiskError::Member {
        index,
        error: Box::new(INJECTED),
    };
    bottom.fail_reads(true);
    assert_eq!(read_vec(&d, 0, 4), Err(member(2)));
    mid.fail_reads(true);
    assert_eq!(read_vec(&d, 0, 4), Err(member(1)));
    mid.fail_reads(false);
    bottom.fail_reads(false);
    mid.fail_writes(true);
    let data = pattern(18, 0, 4, ss);
    assert_eq!(write_vec(&d, 0, &data), Err(member(1)));
    mid.fail_writes(false);
    mid.fail_flushes(true);
    assert_eq!(flush(&d), Err(member(1)));
    mid.fail_flushes(false);
    mid.fail_unmaps(true);
    assert_eq!(unmap(&d, 0, 1), Err(member(1)));
    mid.fail_unmaps(false);
    // Sectors the top has never reach the failing layers.
    write_vec(&d, 0, &data).unwrap();
    bottom.fail_reads(true);
    mid.fail_reads(true);
    assert_eq!(read_vec(&d, 0, 4).unwrap(), data);
    assert_eq!(
        DiskError::Member {
            index: 2,
            error: Box::new(INJECTED)
        }
        .root(),
        &INJECTED
    );
}

#[test]
fn describes_its_layers() {
    let d = layered(
        false,
        vec![
            ram_layer(true, false),
            layer(ram_disk(32, 512), false, true),
            plain(ram_disk(32, 512)),
        ],
    );
    let desc = d.describe();
    assert_eq!(desc.kind, "layered");
    assert_eq!(desc.children.len(), 3);
    assert!(desc.children[0].0.contains("write-through"));
    assert!(desc.children[1].0.contains("read-cache"));
}

/// A write-through layer smaller than the top: either construction refuses
/// it, or every in-range write and unmap of the layered disk succeeds (the
/// copy below simply has no sectors past its end). Found by the `disk_ops`
/// fuzzer (`fuzz/regressions/disk_ops/layered-write-through-layer-smaller-than-top`).
#[test]
fn write_through_layer_smaller_than_the_top() {
    let ss = 512;
    let Ok(l) = LayeredDisk::new(
        false,
        vec![
            wt(ram_disk(91, ss)),
            plain(ram_disk(85, ss)),
            plain(ram_disk(85, ss)),
        ],
    ) else {
        return;
    };
    let d = disk(l);
    assert_eq!(d.sector_count(), 91);
    let data = pattern(19, 80, 11, ss);
    assert_eq!(
        write_vec(&d, 80, &data),
        Ok(()),
        "in-range write past the write-through layer's end"
    );
    assert_eq!(read_vec(&d, 80, 11).unwrap(), data);
    assert_eq!(unmap(&d, 88, 0), Ok(()), "empty unmap in range");
    assert_eq!(
        unmap(&d, 30, 61),
        Ok(()),
        "in-range unmap past the write-through layer's end"
    );
}

/// The same at run time: the top grows past its write-through layer.
#[test]
fn top_grows_past_its_write_through_layer() {
    let ss = 512;
    let (top, top_disk) = ram(32, ss);
    let d = layered(
        false,
        vec![
            wt(top_disk),
            plain(ram_disk(32, ss)),
            plain(ram_disk(32, ss)),
        ],
    );
    top.resize(40);
    let data = pattern(20, 30, 10, ss);
    assert_eq!(
        write_vec(&d, 30, &data),
        Ok(()),
        "in-range write after the top grew"
    );
    assert_eq!(read_vec(&d, 30, 10).unwrap(), data);
    assert_eq!(
        unmap(&d, 30, 10),
        Ok(()),
        "in-range unmap after the top grew"
    );
}
