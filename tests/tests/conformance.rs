//! The conformance suite over every disk and composition parastor has, at
//! 512- and 4096-byte sectors, plus resize notification where a disk can
//! change size.

use parastor_core::{Disk, UnmapBehavior};
use parastor_tests::buf::{flush, pattern, read_vec, write_vec};
use parastor_tests::conformance::{self, run_all};
use parastor_tests::doubles::{TestDisk, VolatileCacheDisk};
use parastor_tests::stacks::{
    disk, file_disk, layer, layered, ram, ram_disk, ram_layer, striped, striped_ram,
};

/// Sectors of a 1 MiB disk.
fn mib(ss: u32) -> u64 {
    (1 << 20) / u64::from(ss)
}

#[test]
fn ram_512() {
    run_all(&|| ram_disk(mib(512), 512));
}

#[test]
fn ram_4096() {
    run_all(&|| ram_disk(mib(4096), 4096));
}

#[test]
fn ram_reports_zeroes() {
    assert_eq!(ram_disk(16, 512).unmap_behavior(), UnmapBehavior::Zeroes);
}

#[test]
fn file_512() {
    run_all(&|| file_disk(mib(512), 512, false));
}

#[test]
fn file_4096() {
    run_all(&|| file_disk(mib(4096), 4096, false));
}

#[test]
fn file_read_only() {
    run_all(&|| file_disk(64, 512, true));
    run_all(&|| file_disk(64, 4096, true));
}

/// RAM over RAM.
fn two_layers(ss: u32) -> Disk {
    layered(
        false,
        vec![
            ram_layer(false, false),
            layer(ram_disk(mib(ss), ss), false, false),
        ],
    )
}

#[test]
fn layered_two_ram_layers() {
    run_all(&|| two_layers(512));
    run_all(&|| two_layers(4096));
}

/// Fall-through: a prefilled bottom under an empty top. The suite treats
/// initial contents as unknown, so the bottom's data must read consistently.
fn prefilled_bottom(ss: u32) -> Disk {
    let bottom = ram_disk(mib(ss), ss);
    write_vec(&bottom, 0, &pattern(99, 0, 64, ss)).unwrap();
    let n = bottom.sector_count();
    write_vec(&bottom, n - 64, &pattern(98, n - 64, 64, ss)).unwrap();
    layered(
        false,
        vec![ram_layer(false, false), layer(bottom, false, false)],
    )
}

#[test]
fn layered_over_prefilled_bottom() {
    run_all(&|| prefilled_bottom(512));
    run_all(&|| prefilled_bottom(4096));
}

/// Three layers: RAM over a read-cache RAM layer over a prefilled RAM.
fn three_layers_read_cache(ss: u32) -> Disk {
    let bottom = ram_disk(mib(ss), ss);
    write_vec(&bottom, 8, &pattern(97, 8, 32, ss)).unwrap();
    layered(
        false,
        vec![
            ram_layer(false, false),
            layer(ram_disk(mib(ss), ss), false, true),
            layer(bottom, false, false),
        ],
    )
}

#[test]
fn layered_three_layers_read_cache() {
    run_all(&|| three_layers_read_cache(512));
    run_all(&|| three_layers_read_cache(4096));
}

/// Read cache on the top layer itself.
fn read_cache_top(ss: u32) -> Disk {
    let bottom = ram_disk(mib(ss), ss);
    write_vec(&bottom, 0, &pattern(96, 0, 16, ss)).unwrap();
    layered(
        false,
        vec![ram_layer(false, true), layer(bottom, false, false)],
    )
}

#[test]
fn layered_read_cache_top() {
    run_all(&|| read_cache_top(512));
    run_all(&|| read_cache_top(4096));
}

/// Write-through: top RAM writes through to a RAM layer over a RAM bottom.
fn write_through(ss: u32) -> Disk {
    layered(
        false,
        vec![
            ram_layer(true, false),
            layer(ram_disk(mib(ss), ss), false, false),
            layer(ram_disk(mib(ss), ss), false, false),
        ],
    )
}

#[test]
fn layered_write_through() {
    run_all(&|| write_through(512));
    run_all(&|| write_through(4096));
}

#[test]
fn layered_read_only() {
    let make = |ss| {
        let bottom = ram_disk(64, ss);
        write_vec(&bottom, 0, &pattern(95, 0, 64, ss)).unwrap();
        layered(true, vec![layer(bottom, false, false)])
    };
    run_all(&|| make(512));
    run_all(&|| make(4096));
}

/// A top layer smaller than the bottom, and one larger: the disk is the
/// top's size, and lower data past a layer's visible size never shows.
#[test]
fn layered_mismatched_layer_sizes() {
    for ss in [512, 4096] {
        run_all(&|| {
            let bottom = ram_disk(256, ss);
            write_vec(&bottom, 0, &pattern(94, 0, 256, ss)).unwrap();
            layered(
                false,
                vec![
                    layer(ram_disk(200, ss), false, false),
                    layer(bottom, false, false),
                ],
            )
        });
        run_all(&|| {
            let bottom = ram_disk(100, ss);
            write_vec(&bottom, 0, &pattern(93, 0, 100, ss)).unwrap();
            layered(
                false,
                vec![
                    layer(ram_disk(300, ss), false, false),
                    layer(bottom, false, false),
                ],
            )
        });
    }
}

#[test]
fn striped_two_members_4k_chunk() {
    run_all(&|| striped_ram(2, mib(512) / 2, 512, 4096));
    run_all(&|| striped_ram(2, mib(4096) / 2, 4096, 4096));
}

#[test]
fn striped_four_members_128k_chunk() {
    run_all(&|| striped_ram(4, mib(512) / 4, 512, 128 * 1024));
    run_all(&|| striped_ram(4, mib(4096) / 4, 4096, 128 * 1024));
}

#[test]
fn striped_odd_chunks() {
    // One-sector chunks, and 3 members with 24 KiB chunks and a ragged tail
    // on each member, and a logical size smaller than the members hold.
    run_all(&|| striped_ram(4, 64, 512, 512));
    run_all(&|| striped_ram(3, 200, 512, 24 * 1024));
    run_all(&|| striped_ram(3, 40, 4096, 12 * 1024));
    run_all(&|| {
        striped(
            (0..2).map(|_| ram_disk(64, 512)).collect(),
            Some(4096),
            Some(64),
        )
    });
}

#[test]
fn striped_default_chunk() {
    run_all(&|| striped((0..2).map(|_| ram_disk(512, 512)).collect(), None, None));
}

/// A RAM diff layer ("memdiff") over a striped disk.
#[test]
fn memdiff_over_striped() {
    for ss in [512, 4096] {
        run_all(&|| {
            let s = striped_ram(4, mib(ss) / 4, ss, 64 * 1024);
            write_vec(&s, 0, &pattern(92, 0, 32, ss)).unwrap();
            layered(false, vec![ram_layer(false, false), layer(s, false, false)])
        });
    }
}

#[test]
fn read_cache_over_striped() {
    run_all(&|| {
        let s = striped_ram(2, mib(512) / 2, 512, 4096);
        write_vec(&s, 0, &pattern(91, 0, 32, 512)).unwrap();
        layered(false, vec![ram_layer(false, true), layer(s, false, false)])
    });
}

/// Members that do not complete inline: the composites' concurrent paths.
fn async_ram(sectors: u64, ss: u32) -> Disk {
    disk(TestDisk::new(ram_disk(sectors, ss)).asynchronous())
}

#[test]
fn striped_over_asynchronous_members() {
    for ss in [512, 4096] {
        run_all(&|| {
            let members = (0..3).map(|_| async_ram(mib(ss) / 4, ss)).collect();
            striped(members, Some(8192), None)
        });
    }
}

#[test]
fn layered_over_asynchronous_layers() {
    for ss in [512, 4096] {
        run_all(&|| {
            let bottom = async_ram(mib(ss), ss);
            write_vec(&bottom, 0, &pattern(90, 0, 16, ss)).unwrap();
            layered(
                false,
                vec![
                    layer(async_ram(mib(ss), ss), true, false),
                    layer(async_ram(mib(ss), ss), false, true),
                    layer(bottom, false, false),
                ],
            )
        });
    }
}

#[test]
fn file_under_layers() {
    run_all(&|| {
        layered(
            false,
            vec![
                ram_layer(false, true),
                layer(file_disk(256, 512, true), false, false),
            ],
        )
    });
    run_all(&|| {
        striped(
            (0..2).map(|_| file_disk(128, 4096, false)).collect(),
            Some(16384),
            None,
        )
    });
}

#[test]
fn resize_ram() {
    for ss in [512, 4096] {
        let (r, d) = ram(64, ss);
        conformance::resize_notification(&d, &|n| r.resize(n));
    }
}

/// Layered forwards `wait_resize` to layer 0; the lower layer's data past a
/// shrink of the top must not reappear when the top grows back.
#[test]
fn resize_layered_top() {
    for ss in [512, 4096] {
        let bottom = ram_disk(64, ss);
        write_vec(&bottom, 0, &pattern(89, 0, 64, ss)).unwrap();
        let (top, top_disk) = ram(64, ss);
        let d = layered(
            false,
            vec![layer(top_disk, false, false), layer(bottom, false, false)],
        );
        conformance::resize_notification(&d, &|n| top.resize(n));
    }
}

/// After resizes, the disk still passes the suite's checks at its new size.
#[test]
fn resized_ram_still_conforms() {
    run_all(&|| {
        let (r, d) = ram(64, 512);
        r.resize(40);
        r.resize(100);
        d
    });
}

/// Disks whose unmap is ignored or unspecified: the suite checks the
/// behaviour they report (and that an ignored unmap is still
/// range-checked).
#[test]
fn other_unmap_behaviors() {
    for behavior in [UnmapBehavior::Ignored, UnmapBehavior::Unspecified] {
        for ss in [512, 4096] {
            run_all(&|| {
                disk(TestDisk::new(ram_disk(mib(ss) / 4, ss)).with_unmap_behavior(behavior))
            });
        }
    }
    // Write-through over a layer that does not zero: the layered disk
    // ignores unmap.
    run_all(&|| {
        let lower =
            disk(TestDisk::new(ram_disk(256, 512)).with_unmap_behavior(UnmapBehavior::Unspecified));
        let d = layered(
            false,
            vec![ram_layer(true, false), layer(lower, false, false)],
        );
        assert_eq!(d.unmap_behavior(), UnmapBehavior::Ignored);
        d
    });
}

/// FUA-written data is in the file: it survives closing and reopening.
#[test]
fn file_data_persists_across_reopen() {
    for ss in [512, 4096] {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(64 * u64::from(ss)).unwrap();
        let data = pattern(88, 10, 4, ss);
        {
            let d = disk(parastor::file::FileDisk::open(file.path(), ss, false).unwrap());
            let buf = parastor_tests::buf::TestBuf::from_data(&data, &Default::default());
            parastor_tests::buf::write(&d, 10, &buf, parastor_core::IoOptions::fua()).unwrap();
            parastor_tests::buf::flush(&d).unwrap();
        }
        let d = disk(parastor::file::FileDisk::open(file.path(), ss, true).unwrap());
        assert_eq!(parastor_tests::buf::read_vec(&d, 10, 4).unwrap(), data);
        let raw = std::fs::read(file.path()).unwrap();
        assert_eq!(raw[10 * ss as usize..14 * ss as usize], data[..]);
    }
}

// --- Decorators -----------------------------------------------------------

/// A fixed XTS key with distinct halves.
fn xts_key() -> Vec<u8> {
    (0..64u8)
        .map(|i| i.wrapping_mul(29).wrapping_add(3))
        .collect()
}

fn crypt(inner: Disk) -> Disk {
    disk(parastor_core::CryptDisk::new(&xts_key(), inner).expect("valid key"))
}

fn prwrap(inner: Disk) -> Disk {
    disk(parastor_core::ReservationsDisk::new(inner))
}

/// A delay decorator with a real timer; `millis` 0 takes the no-sleep path.
/// The suite drives it with `futures`' executor, so its sleeps take the
/// runtime timer's fallback thread.
fn delay(inner: Disk, millis: u64) -> Disk {
    let timer: std::sync::Arc<dyn parastor_core::Timer> =
        std::sync::Arc::new(parastor_runtime::RuntimeTimer);
    let handle = parastor_core::DelayHandle::new(std::time::Duration::from_millis(millis));
    disk(parastor_core::DelayDisk::new(inner, handle, timer))
}

#[test]
fn crypt_over_ram() {
    for ss in [512, 4096] {
        run_all(&|| crypt(ram_disk(mib(ss), ss)));
    }
}

#[test]
fn crypt_reports_unspecified_unmap() {
    assert_eq!(
        crypt(ram_disk(16, 512)).unmap_behavior(),
        UnmapBehavior::Unspecified
    );
}

#[test]
fn crypt_over_memdiff_over_striped() {
    run_all(&|| {
        let s = striped_ram(2, mib(4096) / 2, 4096, 64 * 1024);
        crypt(layered(
            false,
            vec![ram_layer(false, false), layer(s, false, false)],
        ))
    });
}

#[test]
fn crypt_over_file() {
    for ss in [512, 4096] {
        run_all(&|| crypt(file_disk(mib(ss), ss, false)));
    }
}

#[test]
fn prwrap_over_ram_and_layered() {
    for ss in [512, 4096] {
        run_all(&|| prwrap(ram_disk(mib(ss), ss)));
        run_all(&|| {
            prwrap(layered(
                false,
                vec![
                    ram_layer(false, false),
                    layer(ram_disk(mib(ss), ss), false, false),
                ],
            ))
        });
    }
}

#[test]
fn delay_without_delay() {
    run_all(&|| delay(ram_disk(mib(512), 512), 0));
}

#[test]
fn delay_with_a_real_timer() {
    // A real 1 ms sleep per read and write: the range and model checks, not
    // the property test (which would take minutes).
    let d = delay(ram_disk(64, 512), 1);
    conformance::representability(&d);
    conformance::range_checks(&d);
    conformance::unmap_semantics(&d);
    conformance::fua_and_flush(&d, None);
}

#[test]
fn every_decorator_stacked() {
    run_all(&|| prwrap(crypt(delay(striped_ram(2, mib(512) / 2, 512, 4096), 0))));
}

/// Every stack passes FUA and flushes down to a disk with a volatile write
/// cache: what it wrote with FUA, and what it flushed, survives a power cut.
#[test]
fn fua_and_flush_survive_a_power_cut() {
    type Stack = fn(Vec<Disk>) -> Disk;
    let stacks: [(&str, usize, Stack); 7] = [
        ("plain", 1, |d| d[0].clone()),
        ("crypt", 1, |d| crypt(d[0].clone())),
        ("delay", 1, |d| delay(d[0].clone(), 0)),
        ("prwrap", 1, |d| prwrap(d[0].clone())),
        ("layered, one layer", 1, |d| {
            layered(false, vec![layer(d[0].clone(), false, false)])
        }),
        ("striped", 2, |d| striped(d, Some(4096), None)),
        ("everything", 2, |d| {
            prwrap(crypt(delay(
                layered(
                    false,
                    vec![layer(striped(d, Some(4096), None), false, false)],
                ),
                0,
            )))
        }),
    ];
    for ss in [512, 4096] {
        for (name, members, stack) in stacks {
            let caches: Vec<_> = (0..members)
                .map(|_| VolatileCacheDisk::new(ram_disk(64, ss)))
                .collect();
            let d = stack(caches.iter().map(|c| disk(c.clone())).collect());
            let cut = || caches.iter().for_each(VolatileCacheDisk::power_cut);
            eprintln!("{name}, {ss}-byte sectors");
            // Every member honours FUA, so the stack must say it does:
            // otherwise the suite would skip its FUA power-cut check.
            assert!(d.is_fua_respected(), "{name}: FUA claim lost");
            conformance::fua_and_flush(&d, Some(&cut));
        }
    }
}

/// The double really loses unflushed plain writes at a power cut (so the
/// check above means something), and keeps FUA and flushed ones.
#[test]
fn volatile_cache_loses_unflushed_writes() {
    let cache = VolatileCacheDisk::new(ram_disk(16, 512));
    let d = disk(cache.clone());
    write_vec(&d, 3, &pattern(1, 3, 2, 512)).unwrap();
    assert_eq!(cache.dirty_sectors(), 2);
    assert_eq!(read_vec(&d, 3, 2).unwrap(), pattern(1, 3, 2, 512));
    cache.power_cut();
    assert_eq!(read_vec(&d, 3, 2).unwrap(), vec![0; 1024], "lost");
    write_vec(&d, 3, &pattern(2, 3, 2, 512)).unwrap();
    flush(&d).unwrap();
    assert_eq!(cache.dirty_sectors(), 0);
    cache.power_cut();
    assert_eq!(
        read_vec(&d, 3, 2).unwrap(),
        pattern(2, 3, 2, 512),
        "flushed"
    );
}
