//! Steady-state I/O through RAM, layered and striped stacks makes no heap
//! allocation (the architecture's rule: a per-I/O allocation is a cost to
//! remove). Counted with `stats_alloc`; this binary holds a single test so
//! no other thread allocates while it counts.

use parastor_core::Gpa;
use parastor_core::{Disk, GpaRange, GuestMemory, IoOptions, RamGuestMemory, SgList};
use parastor_tests::buf::{block_on, pattern, write_vec};
use parastor_tests::stacks::{layer, layered, ram_disk, ram_layer, striped, striped_ram};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap allocations made by 16 reads and 16 writes of `bytes` each.
fn allocations(disk: &Disk, bytes: usize, write: bool) -> usize {
    let mem = RamGuestMemory::new(256 * 1024);
    mem.fill_at(Gpa::new(0), 256 * 1024, 7).unwrap();
    let ranges = [
        GpaRange::new(Gpa::new(0), bytes as u64 / 2),
        GpaRange::new(Gpa::new(100_000), bytes as u64 / 2),
    ];
    let count = bytes as u64 / u64::from(disk.sector_size());
    let io = |i: u64| {
        let sg = SgList::new(&mem, &ranges, !write).unwrap();
        let sector = i * count;
        let r = if write {
            block_on(disk.write(sg, sector, IoOptions::default()))
        } else {
            block_on(disk.read(sg, sector, IoOptions::default()))
        };
        r.unwrap();
    };
    // Warm up: RAM chunks are allocated on first write.
    (0..16).for_each(io);
    let region = Region::new(GLOBAL);
    (0..16).for_each(io);
    region.change().allocations
}

#[test]
fn steady_state_io_does_not_allocate() {
    let ss = 512;
    let n = 4096;
    let prefilled = |d: Disk| {
        write_vec(&d, 0, &pattern(1, 0, n, ss)).unwrap();
        d
    };
    let stacks: Vec<(&str, Disk)> = vec![
        ("ram", prefilled(ram_disk(n, ss))),
        (
            "layered-present",
            prefilled(layered(
                false,
                vec![
                    ram_layer(false, false),
                    layer(ram_disk(n, ss), false, false),
                ],
            )),
        ),
        (
            "layered-fallthrough",
            layered(
                false,
                vec![
                    ram_layer(false, false),
                    layer(prefilled(ram_disk(n, ss)), false, false),
                ],
            ),
        ),
        (
            "layered-write-through",
            prefilled(layered(
                false,
                vec![
                    ram_layer(true, false),
                    ram_layer(false, false),
                    layer(ram_disk(n, ss), false, false),
                ],
            )),
        ),
        ("striped", prefilled(striped_ram(4, n / 4, ss, 4096))),
        (
            "layered-over-striped",
            prefilled(layered(
                false,
                vec![
                    ram_layer(false, false),
                    layer(
                        striped(
                            vec![ram_disk(n / 2, ss), ram_disk(n / 2, ss)],
                            Some(8192),
                            None,
                        ),
                        false,
                        false,
                    ),
                ],
            )),
        ),
    ];
    let mut found = Vec::new();
    for (name, disk) in &stacks {
        for bytes in [4096, 64 * 1024] {
            // Fall-through reads must stay fall-through: no writes there.
            let ops: &[bool] = if *name == "layered-fallthrough" {
                &[false]
            } else {
                &[false, true]
            };
            for &write in ops {
                let a = allocations(disk, bytes, write);
                if a != 0 {
                    found.push(format!(
                        "{name} {} of {bytes}: {a} allocations in 16 I/Os",
                        if write { "write" } else { "read" }
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "steady-state I/O allocated:\n{}",
        found.join("\n")
    );
}
