//! The lean path of the emulated StorVSC — submit, flush, run the inline
//! host, reap — makes no heap allocation per request, under every
//! profile, so the StorVSP benchmark measures StorVSP and not its guest.
//! Counted with `stats_alloc`; this binary holds a single test so no
//! other thread allocates while it counts.

use parastor_core::ram::RamDisk;
use parastor_core::{Disk, GpaRange};
use parastor_emulated::storvsc::Direction;
use parastor_emulated::{GuestConfig, Profile, StorvspVm, VmConfig};
use parastor_hw::scsi::ScsiOp;
use parastor_hw::storvsp::{SrbStatus, SrbStatusAndFlags};
use parastor_scsi::{DiskParams, ScsiDisk};
use parastor_storvsp::{Controller, ControllerConfig, ScsiPath};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const QD: u16 = 8;
const BYTES: u64 = 4096;

fn rw10(opcode: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = opcode;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[test]
fn steady_state_requests_do_not_allocate() {
    let mut found = Vec::new();
    for profile in Profile::ALL {
        let controller = Arc::new(Controller::new(ControllerConfig::default()));
        let ram = RamDisk::new(16 << 20, 512).unwrap();
        let disk = Arc::new(ScsiDisk::new(
            Disk::new(ram).unwrap(),
            DiskParams::default(),
        ));
        controller.attach(ScsiPath::new(0, 0, 0), disk).unwrap();
        let vm = StorvspVm::new(controller, VmConfig::default());
        let mut g = vm.guest(GuestConfig::new(profile).queue_depth(QD)).unwrap();
        g.negotiate().unwrap();
        let base = vm.data_area().gpa;
        let mut round = |i: u32| {
            for tag in 0..QD {
                let write = (i + u32::from(tag)).is_multiple_of(2);
                let (opcode, dir) = if write {
                    (ScsiOp::WRITE10.get(), Direction::Out)
                } else {
                    (ScsiOp::READ10.get(), Direction::In)
                };
                let lba = (i * u32::from(QD) + u32::from(tag)) % 2000 * 8;
                let req = g.scsi_request(0, &rw10(opcode, lba, 8), dir, BYTES as u32);
                // Two ranges, the second crossing a page.
                let at = base + u64::from(tag) * 4 * BYTES;
                let buffer = [
                    GpaRange::new(at + 512, 1024),
                    GpaRange::new(at + (2 * BYTES - 512), BYTES - 1024),
                ];
                g.submit(tag, 0, &req, &buffer).unwrap();
            }
            g.flush().unwrap();
            g.run_host().unwrap();
            let mut n = 0;
            g.reap(|_, r| {
                assert_eq!(
                    r.srb().srb_status,
                    SrbStatusAndFlags::new().with_status(SrbStatus::SUCCESS)
                );
                n += 1;
            })
            .unwrap();
            assert_eq!(n, QD);
        };
        // Warm up: RAM disk chunks are allocated on first write.
        (0..300).for_each(&mut round);
        let region = Region::new(GLOBAL);
        (300..400).for_each(&mut round);
        let allocations = region.change().allocations;
        if allocations != 0 {
            found.push(format!(
                "{profile}: {allocations} allocations in 800 requests"
            ));
        }
    }
    assert!(
        found.is_empty(),
        "the lean path allocated:\n{}",
        found.join("\n")
    );
}
