//! The TCMU handler's steady-state path for a LUN that completes inline
//! makes no heap allocation: fetching a command (its data ranges come from
//! a recycled vector, its CDB is inline), running it in place through
//! `Lun::run_now` and writing its completion. Counted with `stats_alloc`
//! around the handler's part only (the kernel model allocates freely);
//! this binary holds a single test so no other thread allocates while it
//! counts.

use std::sync::Arc;

use parastor_core::ram::RamDisk;
use parastor_core::{Disk, InitiatorId, SgList};
use parastor_emulated::tcmu::{DataDir, TcmuConfig, TcmuKernel};
use parastor_hw::scsi::ScsiStatus;
use parastor_scsi::{DiskParams, Lun, ScsiDisk, SenseDelivery};
use parastor_tcmu::ring::CommandRing;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn inline_commands_allocate_nothing_in_the_handler() {
    let disk = Disk::new(RamDisk::new(1 << 20, 512).unwrap()).unwrap();
    let lun = Lun::Disk(Arc::new(ScsiDisk::new(disk, DiskParams::default())));
    let mut k = TcmuKernel::new(TcmuConfig::small(16 << 10, 64)).unwrap();
    let mut ring = CommandRing::open(k.memory().clone(), k.map_len()).unwrap();
    let mem = k.memory().clone();
    let mut cmds = Vec::with_capacity(64);
    let mut done = Vec::with_capacity(64);
    // The RAM disk allocates its memory at the first write to each chunk:
    // write it all first, so what is counted is the handler's.
    for chunk in 0..16u32 {
        let lba = (chunk * 128).to_be_bytes();
        let cdb = [0x2A, 0, lba[0], lba[1], lba[2], lba[3], 0, 0, 128, 0];
        k.post(&cdb, DataDir::Out(vec![0xEE; 64 << 10])).unwrap();
        ring.fetch(&mut cmds).unwrap();
        for cmd in cmds.drain(..) {
            let sg = SgList::new(&*mem, &cmd.data, true).unwrap();
            let r = lun
                .run_now(
                    cmd.cdb.as_bytes(),
                    &sg,
                    InitiatorId::new(1),
                    SenseDelivery::Autosense,
                )
                .unwrap();
            assert_eq!(r.status, ScsiStatus::GOOD);
            ring.complete(cmd.id, &r);
            ring.recycle(cmd);
        }
        assert_eq!(k.collect(&mut done), 1);
        done.clear();
    }
    let mut allocations = 0;
    let mut served = 0;
    for round in 0..200u32 {
        // Eight commands per round: reads and writes of 1..8 blocks, a
        // TEST UNIT READY, wrapping the small ring many times.
        for i in 0..8u32 {
            let lba = ((round * 8 + i) % 1000).to_be_bytes();
            let blocks = (i % 8 + 1) as u8;
            let len = u32::from(blocks) * 512;
            let (cdb, dir) = match i % 3 {
                0 => (
                    [0x28, 0, lba[0], lba[1], lba[2], lba[3], 0, 0, blocks, 0],
                    DataDir::In(len),
                ),
                1 => (
                    [0x2A, 0, lba[0], lba[1], lba[2], lba[3], 0, 0, blocks, 0],
                    DataDir::Out(vec![i as u8; len as usize]),
                ),
                _ => ([0; 10], DataDir::None),
            };
            let cdb = if i % 3 == 2 { &cdb[..6] } else { &cdb[..] };
            k.post(cdb, dir).unwrap();
        }
        let region = Region::new(GLOBAL);
        ring.fetch(&mut cmds).unwrap();
        for cmd in cmds.drain(..) {
            let sg = SgList::new(&*mem, &cmd.data, true).unwrap();
            let r = lun
                .run_now(
                    cmd.cdb.as_bytes(),
                    &sg,
                    InitiatorId::new(1),
                    SenseDelivery::Autosense,
                )
                .expect("a RAM disk completes inline");
            assert_eq!(r.status, ScsiStatus::GOOD);
            assert!(ring.complete(cmd.id, &r));
            ring.recycle(cmd);
            served += 1;
        }
        let stats = region.change();
        // The first rounds size the ring's slot queue and spare vectors.
        if round >= 10 {
            allocations += stats.allocations + stats.reallocations;
        }
        assert_eq!(k.collect(&mut done), 8);
        done.clear();
    }
    assert_eq!(served, 1600);
    assert_eq!(allocations, 0, "the handler allocated in steady state");
}
