//! Steady-state I/O makes no heap allocation (the architecture's rule: a
//! per-I/O allocation is a cost to remove): through RAM, layered and
//! striped stacks, and through crypt, striped, layered and reservation
//! composites over disks that really wait — a test double that returns
//! `Pending` once per I/O, and parastor's NVMe driver over the emulated
//! controller, with buffers the device reaches directly and buffers it
//! bounces. Counted with `stats_alloc`; this binary holds a single test so
//! no other thread allocates while it counts.

use parastor_core::disk::IoFuture;
use parastor_core::prwrap::ReservationsDisk;
use parastor_core::{CryptDisk, DiskError, DiskIo, Gpa, UnmapBehavior};
use parastor_core::{Disk, GpaRange, GuestMemory, IoOptions, RamGuestMemory, SgList};
use parastor_nvme_driver::DriverConfig;
use parastor_tests::buf::{block_on, pattern, write_vec};
use parastor_tests::nvme::Testbed;
use parastor_tests::stacks::{disk, layer, layered, ram_disk, ram_layer, striped, striped_ram};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Runs a disk operation to completion.
type Runner<'r> = &'r dyn Fn(IoFuture<'_, Result<(), DiskError>>) -> Result<(), DiskError>;

/// Heap allocations made by 16 reads or writes of `bytes` each, from
/// buffers in `mem` (two ranges, so requests are scatter-gather), after 16
/// of the same to warm up.
fn allocations_in(
    disk: &Disk,
    mem: &dyn GuestMemory,
    bytes: usize,
    write: bool,
    run: Runner<'_>,
) -> usize {
    mem.fill_at(Gpa::new(0), 256 * 1024, 7).unwrap();
    let ranges = [
        GpaRange::new(Gpa::new(0), bytes as u64 / 2),
        GpaRange::new(Gpa::new(100_352), bytes as u64 / 2),
    ];
    let count = bytes as u64 / u64::from(disk.sector_size());
    let io = |i: u64| {
        let sg = SgList::new(mem, &ranges, !write).unwrap();
        let sector = i * count;
        let r = if write {
            run(disk.write(sg, sector, IoOptions::default()))
        } else {
            run(disk.read(sg, sector, IoOptions::default()))
        };
        r.unwrap();
    };
    // Warm up: RAM chunks are allocated on first write, arena pools fill.
    (0..16).for_each(io);
    let region = Region::new(GLOBAL);
    (0..16).for_each(io);
    region.change().allocations
}

/// Heap allocations made by 16 reads or writes of `bytes` each (see
/// [`allocations_in`]) from fresh RAM, run with `block_on`.
fn allocations(disk: &Disk, bytes: usize, write: bool) -> usize {
    let mem = RamGuestMemory::new(256 * 1024);
    allocations_in(disk, &mem, bytes, write, &|f| block_on(f))
}

/// A disk that really waits: it reports that it does not complete inline
/// and every operation returns `Pending` once (waking itself) before the
/// RAM disk below does the work — so composites over it take their
/// asynchronous paths and keep its futures while they wait. (Unlike
/// `doubles::TestDisk` it records nothing, so it allocates nothing
/// itself.)
struct Waits {
    inner: Disk,
}

/// `Pending` once (waking itself), then `Ready`.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl DiskIo for Waits {
    fn kind(&self) -> &'static str {
        "waits"
    }
    fn sector_count(&self) -> u64 {
        self.inner.sector_count()
    }
    fn sector_size(&self) -> u32 {
        self.inner.sector_size()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn is_fua_respected(&self) -> bool {
        true
    }
    fn unmap_behavior(&self) -> UnmapBehavior {
        self.inner.unmap_behavior()
    }
    async fn read(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        YieldOnce(false).await;
        self.inner.read_inline(buf, sector, opts)
    }
    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        YieldOnce(false).await;
        self.inner.write_inline(buf, sector, opts)
    }
    async fn flush(&self, opts: IoOptions) -> Result<(), DiskError> {
        YieldOnce(false).await;
        self.inner.flush(opts).await
    }
    async fn unmap(&self, sector: u64, count: u64, opts: IoOptions) -> Result<(), DiskError> {
        YieldOnce(false).await;
        self.inner.unmap(sector, count, opts).await
    }
}

/// A [`Waits`] over a fresh RAM disk.
fn waits(sectors: u64, ss: u32) -> Disk {
    disk(Waits {
        inner: ram_disk(sectors, ss),
    })
}

/// A crypt decorator over `inner`.
fn crypt(inner: Disk) -> Disk {
    let key: Vec<u8> = (0..64).collect();
    disk(CryptDisk::new(&key, inner).unwrap())
}

/// Steady-state I/O through composites over disks that wait: reports
/// each stack and operation that allocated.
fn waiting_stacks() -> Vec<String> {
    let (ss, n) = (512, 4096);
    let prefilled = |d: Disk| {
        write_vec(&d, 0, &pattern(1, 0, n, ss)).unwrap();
        d
    };
    let stacks: Vec<(&str, Disk)> = vec![
        ("waits", waits(n, ss)),
        ("crypt/waits", crypt(waits(n, ss))),
        (
            "striped/waits",
            striped(vec![waits(n / 2, ss), waits(n / 2, ss)], Some(8192), None),
        ),
        (
            "crypt/striped/waits",
            crypt(striped(
                vec![waits(n / 2, ss), waits(n / 2, ss)],
                Some(8192),
                None,
            )),
        ),
        (
            "layered/waits",
            prefilled(layered(
                false,
                vec![ram_layer(false, false), layer(waits(n, ss), false, false)],
            )),
        ),
        (
            "layered-fallthrough/crypt/waits",
            layered(
                false,
                vec![
                    ram_layer(false, false),
                    layer(prefilled(crypt(waits(n, ss))), false, false),
                ],
            ),
        ),
        (
            "reservations/crypt/waits",
            disk(ReservationsDisk::new(crypt(waits(n, ss)))),
        ),
    ];
    let mut found = Vec::new();
    for (name, disk) in &stacks {
        assert!(!disk.completes_inline(), "{name} must wait");
        // 4 KiB: one piece; 64 KiB over 8 KiB chunks: pieces on both
        // stripe members at once.
        for bytes in [4096, 64 * 1024] {
            let ops: &[bool] = if name.starts_with("layered-fallthrough") {
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
    found
}

/// Runs `fut` to completion on this thread, running the controller's work
/// between polls (no waker allocation, unlike `NvmeRig::run`).
fn run_nvme(tb: &Testbed, fut: IoFuture<'_, Result<(), DiskError>>) -> Result<(), DiskError> {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..10_000 {
        if let Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
            return r;
        }
        while tb.rig.poll_controller(&mut cx).is_ready() {}
    }
    panic!("an NVMe I/O did not complete");
}

/// Steady-state I/O through parastor's NVMe driver over the emulated
/// controller — a namespace alone and crypt over striped over two — from
/// buffers the device reaches (direct DMA) and from memory it cannot
/// reach (the driver bounces): reports each case that allocated.
fn nvme_stacks() -> Vec<String> {
    let (ss, n) = (512u32, 4096u64);
    let tb = Testbed::new(&[(1, n, ss), (2, n, ss)], 1);
    let driver = tb.start(DriverConfig::default());
    let (_, ns1) = Testbed::disk(&driver, 1);
    let (_, ns2) = Testbed::disk(&driver, 2);
    let stacks: Vec<(&str, Disk)> = vec![
        ("nvme", ns1.clone()),
        (
            "crypt/striped/nvme",
            crypt(striped(vec![ns1, ns2], Some(8192), None)),
        ),
    ];
    let private = RamGuestMemory::new(256 * 1024);
    let buffers: [(&str, &dyn GuestMemory); 2] = [("direct", tb.memory()), ("bounced", &private)];
    let mut found = Vec::new();
    for (name, disk) in &stacks {
        assert!(!disk.completes_inline(), "{name} must wait");
        for (kind, mem) in buffers {
            for bytes in [4096, 64 * 1024] {
                for write in [false, true] {
                    let a = allocations_in(disk, mem, bytes, write, &|f| run_nvme(&tb, f));
                    if a != 0 {
                        found.push(format!(
                            "{name} {kind} {} of {bytes}: {a} allocations in 16 I/Os",
                            if write { "write" } else { "read" }
                        ));
                    }
                }
            }
        }
    }
    found
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
        assert!(disk.completes_inline(), "{name} completes inline");
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
    found.extend(waiting_stacks());
    found.extend(nvme_stacks());
    assert!(
        found.is_empty(),
        "steady-state I/O allocated:\n{}",
        found.join("\n")
    );
}
