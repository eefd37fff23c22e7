//! Steady-state StorVSP I/O to a disk that waits (its requests run in the
//! channel's request slots, not in place) makes no heap allocation: a
//! request reuses its slot's record and future storage, and the packet
//! buffer is reused from pass to pass. Counted with `stats_alloc`; this
//! binary holds a single test so no other thread allocates while it counts.

use parastor_core::ram::RamDisk;
use parastor_core::{Disk, DiskError, DiskIo, IoOptions, SgList, UnmapBehavior};
use parastor_emulated::storvsc::Direction;
use parastor_emulated::{GuestConfig, Profile, Storvsc, StorvspVm, VmConfig};
use parastor_hw::scsi::ScsiOp;
use parastor_hw::storvsp::{NtStatus, SrbStatus};
use parastor_scsi::{DiskParams, ScsiDisk};
use parastor_storvsp::{Controller, ControllerConfig, ScsiPath, StorvspChannel};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Requests kept in flight.
const QD: usize = 8;
const SS: u32 = 512;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// A RAM disk that returns `Pending` once (waking its task) from every
/// operation, allocating nothing: a disk that waits, minus the device. (It
/// calls the RAM disk itself, not a `Disk` handle, so its futures stay
/// small enough not to be boxed.)
struct PendOnce(RamDisk);

/// `Pending` once, then `Ready`.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl DiskIo for PendOnce {
    fn kind(&self) -> &'static str {
        "pend-once"
    }
    fn sector_count(&self) -> u64 {
        self.0.sector_count()
    }
    fn sector_size(&self) -> u32 {
        self.0.sector_size()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn is_fua_respected(&self) -> bool {
        true
    }
    fn unmap_behavior(&self) -> UnmapBehavior {
        self.0.unmap_behavior()
    }
    async fn read(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        YieldOnce(false).await;
        self.0.read(buf, sector, opts).await
    }
    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        YieldOnce(false).await;
        self.0.write(buf, sector, opts).await
    }
    async fn flush(&self, opts: IoOptions) -> Result<(), DiskError> {
        YieldOnce(false).await;
        self.0.flush(opts).await
    }
    async fn unmap(&self, sector: u64, count: u64, opts: IoOptions) -> Result<(), DiskError> {
        YieldOnce(false).await;
        self.0.unmap(sector, count, opts).await
    }
}

/// Submits `QD` 4 KiB requests and serves them until all completed.
fn round<'a>(g: &mut Storvsc<'a, StorvspChannel<'a>>, data: parastor_core::Gpa, write: bool) {
    let op = if write {
        ScsiOp::WRITE10
    } else {
        ScsiOp::READ10
    };
    let dir = if write { Direction::Out } else { Direction::In };
    let mut cdb = [0u8; 10];
    cdb[0] = op.get();
    cdb[7..9].copy_from_slice(&8u16.to_be_bytes());
    for slot in 0..QD {
        cdb[2..6].copy_from_slice(&(slot as u32 * 8).to_be_bytes());
        let request = g.scsi_request(0, &cdb, dir, 4096);
        let buf = parastor_core::GpaRange::new(data + slot as u64 * 4096, 4096);
        g.submit(slot as u16, 0, &request, &[buf]).unwrap();
    }
    g.flush().unwrap();
    let mut done = 0;
    while done < QD {
        g.host_mut().process().unwrap();
        done += g
            .reap(|_, r| {
                assert_eq!(r.status(), NtStatus::SUCCESS);
                assert_eq!(r.srb_status().status(), SrbStatus::SUCCESS);
            })
            .unwrap();
    }
    assert_eq!(g.host().in_flight(), 0);
}

#[test]
fn steady_state_requests_in_slots_do_not_allocate() {
    let vm = StorvspVm::new(
        Arc::new(Controller::new(ControllerConfig::default())),
        VmConfig {
            memory_bytes: 4 << 20,
            request_ring: 0x10000,
            completion_ring: 0x10000,
            channels: 1,
            ..VmConfig::default()
        },
    );
    let ram = RamDisk::new(1 << 20, SS).unwrap();
    let disk = Disk::new(PendOnce(ram)).unwrap();
    assert!(!disk.completes_inline());
    vm.controller()
        .attach(
            ScsiPath::new(0, 0, 0),
            Arc::new(ScsiDisk::new(disk, DiskParams::default())),
        )
        .unwrap();
    let config = GuestConfig::new(Profile::LinuxCurrent).queue_depth(QD as u16);
    let mut g = Storvsc::new(
        config,
        vm.guest_channel(0).unwrap(),
        vm.primary_worker(0).unwrap(),
        vm.data_area(),
    );
    g.negotiate().unwrap();

    // Warm up: RAM chunks, slot future storage, range vectors.
    for i in 0..4 {
        round(&mut g, vm.data_area().gpa, i % 2 == 0);
    }
    let polls = g.host().request_polls();
    let region = Region::new(GLOBAL);
    for i in 0..8 {
        round(&mut g, vm.data_area().gpa, i % 2 == 0);
    }
    let allocations = region.change().allocations;
    // The requests did run in slots (first poll, and one after the wake).
    assert_eq!(g.host().request_polls() - polls, 2 * 8 * QD as u64);
    assert_eq!(allocations, 0, "allocations in {} requests", 8 * QD);
}
