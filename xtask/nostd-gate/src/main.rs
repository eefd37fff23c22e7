//! The `no_std` gate: a `#![no_std]` binary that links every `no_std` crate
//! of parastor.
//!
//! `hw`, `core`, `vtl2-settings` and the `translation` crates (`scsi`,
//! `vmbus`, `storvsp`, `nvme`) promise to build without
//! the standard library. A library crate's `#![no_std]` alone does not keep
//! that promise: any of its dependencies (or a feature of one) can still pull
//! `std` into the graph. This binary supplies what `std` would otherwise
//! supply — a `#[panic_handler]`, a `#[global_allocator]` and an entry point —
//! so the moment `std` sneaks into the dependency graph the build fails,
//! typically with `error[E0152]: found duplicate lang item `panic_impl``.
//!
//! `cargo xtask nostd` builds it (in its own workspace, so no feature the std
//! crates of the main workspace enable can hide a problem) and then runs it:
//! `main` exercises each crate a little and returns 0 only if every check
//! passes. A failing check returns its own non-zero code, listed at
//! [`Failure`].
//!
//! # Why this crate allows `unsafe_code`
//!
//! The entry point must be the C symbol `main` so the C runtime's start files
//! call it on `x86_64-unknown-linux-gnu`; exporting an unmangled symbol needs
//! `#[unsafe(no_mangle)]`, which the `unsafe_code` lint counts as unsafe.
//! That one attribute is the only exception: the crate denies `unsafe_code`
//! everywhere else, and it is a build check that is never shipped.
//!
//! A panic cannot print or abort without `unsafe` (there is no libc binding
//! here), so the panic handler spins; `cargo xtask nostd` runs the binary
//! under a timeout and reports a hang as a panic.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::future::Future;
use core::pin::pin;
use core::task::{Context, Poll, Waker};
use parastor_core::ram::RamDisk;
use parastor_core::{Disk, Gpa, GuestMem, GuestMemory, InitiatorId, RamGuestMemory, SgList};
use parastor_hw::scsi::{Command, ScsiStatus, parse_cdb};
use parastor_hw::storvsp::SCSI_INTERFACE_ID;
use parastor_nvme::{ControllerConfig as NvmeConfig, MsiMessage, MsiSink, NvmeController};
use parastor_scsi::{DiskParams, ScsiDisk, SenseDelivery};
use parastor_storvsp::{Controller, ControllerConfig, ScsiPath};

/// The heap: a fixed arena, enough for the two 64 KiB chunks of guest memory
/// the checks touch plus their bookkeeping.
#[global_allocator]
static ALLOCATOR: emballoc::Allocator<{ 512 * 1024 }> = emballoc::Allocator::new();

/// Spins forever: without `std` or `unsafe` there is no way to abort. The
/// runner's timeout turns the hang into a reported failure.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// A failed check; its discriminant is the process exit code.
#[derive(Clone, Copy)]
#[repr(i32)]
enum Failure {
    /// `parastor_hw`'s sector-size rules gave a wrong answer.
    SectorSize = 1,
    /// Bytes written to guest memory (across a chunk boundary) did not read
    /// back unchanged.
    RoundTrip = 2,
    /// An access past the end of guest memory did not fail.
    OutOfRange = 3,
    /// Never-written guest memory did not read as zero.
    NotZero = 4,
    /// `GuestMemory::fill_at` did not fill.
    Fill = 5,
    /// A VMBus ring pair could not be laid out in guest memory.
    Rings = 6,
    /// A SCSI disk over a RAM disk did not answer TEST UNIT READY with GOOD.
    Scsi = 7,
    /// A StorVSP controller did not take a LUN.
    Storvsp = 8,
    /// `parastor_hw` misparsed a CDB or a GUID.
    Formats = 9,
    /// An NVMe controller did not show its identity or become ready.
    Nvme = 10,
}

/// Size of the guest memory the checks use: two 64 KiB chunks.
const GUEST_SIZE: u64 = 128 * 1024;

/// Runs every check, stopping at the first failure.
fn check() -> Result<(), Failure> {
    if !parastor_hw::is_valid_sector_size(512)
        || !parastor_hw::is_valid_sector_size(4096)
        || parastor_hw::is_valid_sector_size(520)
    {
        return Err(Failure::SectorSize);
    }

    if parse_cdb(&[0; 6]) != Ok(Command::TestUnitReady)
        || parastor_hw::Guid::parse("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f") != Ok(SCSI_INTERFACE_ID)
    {
        return Err(Failure::Formats);
    }

    let memory = RamGuestMemory::new(GUEST_SIZE);

    // A pattern seeded by the settings model version, written across the
    // boundary between the two chunks.
    let seed = parastor_vtl2_settings::MODEL_VERSION as u8;
    let pattern: Vec<u8> = (0..2000u32)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    let gpa = Gpa::new(64 * 1024 - 1000);
    let mut back = vec![0u8; pattern.len()];
    if memory.write_at(gpa, &pattern).is_err()
        || memory.read_at(gpa, &mut back).is_err()
        || back != pattern
    {
        return Err(Failure::RoundTrip);
    }

    let mut one = [0u8; 1];
    if memory.read_at(Gpa::new(GUEST_SIZE), &mut one).is_ok()
        || memory.write_at(Gpa::new(GUEST_SIZE - 1), &[0, 0]).is_ok()
    {
        return Err(Failure::OutOfRange);
    }

    let mut head = [0xffu8; 64];
    if memory.read_at(Gpa::ZERO, &mut head).is_err() || head.iter().any(|&b| b != 0) {
        return Err(Failure::NotZero);
    }

    if memory.fill_at(Gpa::new(100), 64, 0xa5).is_err()
        || memory.read_at(Gpa::new(100), &mut head).is_err()
        || head.iter().any(|&b| b != 0xa5)
    {
        return Err(Failure::Fill);
    }

    if parastor_vmbus::init_ring_pair(&memory, Gpa::ZERO, 8192).is_err() {
        return Err(Failure::Rings);
    }

    let ram = RamDisk::new(64 * 1024, 512).map_err(|_| Failure::Scsi)?;
    let disk = Disk::new(ram).map_err(|_| Failure::Scsi)?;
    let scsi = Arc::new(ScsiDisk::new(disk, DiskParams::default()));
    // TEST UNIT READY on an inline RAM disk finishes on its first poll.
    let tur = [0u8; 6];
    let no_data = SgList::new(&memory, &[], false).map_err(|_| Failure::Scsi)?;
    let good = {
        let run = pin!(scsi.execute(&tur, no_data, InitiatorId::new(1), SenseDelivery::Autosense));
        matches!(
            run.poll(&mut Context::from_waker(Waker::noop())),
            Poll::Ready(r) if r.status == ScsiStatus::GOOD
        )
    };
    if !good {
        return Err(Failure::Scsi);
    }

    let controller = Controller::new(ControllerConfig::default());
    if controller.attach(ScsiPath::new(0, 0, 0), scsi).is_err()
        || controller.lun(ScsiPath::new(0, 0, 0)).is_none()
    {
        return Err(Failure::Storvsp);
    }

    nvme(memory)
}

/// Does not signal anything: the check reads registers only.
struct NoInterrupts;

impl MsiSink for NoInterrupts {
    fn signal(&self, _: u16, _: MsiMessage) {}
}

/// An NVMe controller over the same guest memory: its PCI identity, and
/// CC.EN = 1 with an admin queue in guest memory makes it ready.
fn nvme(memory: RamGuestMemory) -> Result<(), Failure> {
    let mut config = NvmeConfig::new(SCSI_INTERFACE_ID);
    config.max_io_queue_pairs = 1;
    config.msix_vectors = 2;
    config.commands_per_queue = 4;
    let controller = NvmeController::new(config, GuestMem::new(memory), Arc::new(NoInterrupts));
    let ram = RamDisk::new(64 * 1024, 512).map_err(|_| Failure::Nvme)?;
    let disk = Disk::new(ram).map_err(|_| Failure::Nvme)?;
    controller
        .add_namespace(1, disk)
        .map_err(|_| Failure::Nvme)?;
    let mut id = [0u8; 2];
    controller.config_read(0, &mut id);
    if u16::from_le_bytes(id) != controller.config().pci.vendor_id {
        return Err(Failure::Nvme);
    }
    // Bus master + memory space; admin queues of 2 entries at 0x8000/0x9000.
    controller.config_write(4, &[0x06, 0x00]);
    controller.bar_write(0, 0x24, &0x0001_0001u32.to_le_bytes());
    controller.bar_write(0, 0x28, &0x8000u64.to_le_bytes());
    controller.bar_write(0, 0x30, &0x9000u64.to_le_bytes());
    controller.bar_write(0, 0x14, &0x0046_0001u32.to_le_bytes());
    controller.run_until_idle();
    let mut csts = [0u8; 4];
    controller.bar_read(0, 0x1C, &mut csts);
    if u32::from_le_bytes(csts) & 0b11 != 1 {
        return Err(Failure::Nvme);
    }
    Ok(())
}

/// The C entry point: 0 if every check passed, else the [`Failure`] code.
#[allow(unsafe_code)] // `no_mangle` only; see the crate docs.
#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    match check() {
        Ok(()) => 0,
        Err(failure) => failure as i32,
    }
}
