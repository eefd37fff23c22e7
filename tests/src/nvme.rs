//! The NVMe end-to-end testbed: parastor's NVMe controller over RAM
//! disks, driven by parastor's NVMe driver through the in-process backing
//! (`parastor_emulated::nvme`).
//!
//! [`Testbed`] runs everything on the test's thread ([`Testbed::run`]);
//! [`threaded_disk`] runs the controller on a thread of its own so a
//! namespace's `Disk` works under any executor (the conformance suite's
//! `block_on`).

use parastor_core::ram::RamDisk;
use parastor_core::{Disk, Gpa, GpaRange, GuestMemory, SgList};
use parastor_emulated::nvme::{ControllerThread, NvmeRig, RigConfig, YieldTimer};
use parastor_hw::Guid;
use parastor_nvme::ControllerConfig;
use parastor_nvme_driver::{DriverConfig, NvmeDisk, NvmeDriver};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// The controller instance GUID the testbed uses.
pub const INSTANCE: Guid = Guid::new(
    0x5041_5241,
    0x5354,
    0x4f52,
    [0x4e, 0x56, 0x4d, 0x65, 0x00, 0x00, 0x00, 0x01],
);

/// A controller configuration for tests: `io_queues` queue pairs, one
/// vector each plus the admin vector.
pub fn controller_config(io_queues: u16) -> ControllerConfig {
    let mut c = ControllerConfig::new(INSTANCE);
    c.serial = String::from("PARASTOR-E2E-0001");
    c.model = String::from("parastor e2e controller");
    c.max_io_queue_pairs = io_queues;
    c.msix_vectors = io_queues + 1;
    c
}

/// A RAM disk of `sectors` sectors of `sector_size` bytes, and its handle.
pub fn ram(sectors: u64, sector_size: u32) -> (RamDisk, Disk) {
    crate::stacks::ram(sectors, sector_size)
}

/// A controller with RAM-disk namespaces behind the in-process backing.
pub struct Testbed {
    /// The rig: controller, backing, shared RAM.
    pub rig: NvmeRig,
    /// Each namespace's RAM disk (for resizing) and the `Disk` given to
    /// the controller.
    pub disks: BTreeMap<u32, (RamDisk, Disk)>,
}

impl Testbed {
    /// A testbed whose controller has `namespaces` as (NSID, sectors,
    /// sector size), with `io_queues` I/O queue pairs.
    pub fn new(namespaces: &[(u32, u64, u32)], io_queues: u16) -> Self {
        let rig =
            NvmeRig::new(RigConfig::new(controller_config(io_queues))).expect("map the rig's RAM");
        let mut disks = BTreeMap::new();
        for &(nsid, sectors, ss) in namespaces {
            let (r, d) = ram(sectors, ss);
            rig.controller()
                .add_namespace(nsid, d.clone())
                .expect("add namespace");
            disks.insert(nsid, (r, d));
        }
        Self { rig, disks }
    }

    /// A testbed whose controller has the given disks as namespaces.
    pub fn with_disks(namespaces: &[(u32, Disk)], io_queues: u16) -> Self {
        let rig =
            NvmeRig::new(RigConfig::new(controller_config(io_queues))).expect("map the rig's RAM");
        for (nsid, d) in namespaces {
            rig.controller()
                .add_namespace(*nsid, d.clone())
                .expect("add namespace");
        }
        Self {
            rig,
            disks: BTreeMap::new(),
        }
    }

    /// Runs `fut` (with the controller's work) to completion.
    #[track_caller]
    pub fn run<F: Future>(&self, fut: F) -> F::Output {
        self.rig.run(fut).expect("the NVMe rig stalled")
    }

    /// Brings a driver up over the controller.
    #[track_caller]
    pub fn start(&self, config: DriverConfig) -> NvmeDriver {
        self.run(NvmeDriver::new(
            self.rig.device(),
            config,
            Arc::new(YieldTimer),
        ))
        .expect("driver bring-up")
    }

    /// Namespace `nsid` of `driver` as a `Disk`.
    #[track_caller]
    pub fn disk(driver: &NvmeDriver, nsid: u32) -> (NvmeDisk, Disk) {
        let ns = driver.namespace(nsid).expect("namespace is active");
        let disk = Disk::new(ns.clone()).expect("valid disk");
        (ns, disk)
    }

    /// The shared RAM as guest memory (buffers here go by direct DMA).
    pub fn memory(&self) -> &dyn GuestMemory {
        &**self.rig.memory()
    }

    /// Writes `data` into the shared RAM at `gpa`.
    #[track_caller]
    pub fn put(&self, gpa: u64, data: &[u8]) {
        self.rig
            .memory()
            .write_at(Gpa::new(gpa), data)
            .expect("inside the data area");
    }

    /// Reads `len` bytes of the shared RAM at `gpa`.
    #[track_caller]
    pub fn get(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.rig
            .memory()
            .read_at(Gpa::new(gpa), &mut v)
            .expect("inside the data area");
        v
    }

    /// A view of `ranges` of the shared RAM.
    pub fn sg<'a>(&'a self, ranges: &'a [GpaRange], writable: bool) -> SgList<'a> {
        SgList::new(self.memory(), ranges, writable).expect("representable ranges")
    }
}

/// Like [`threaded_disk`], with the driver's asynchronous-event loop on
/// the controller's thread too (stopped when the returned thread handle
/// is dropped), and the namespace's RAM disk, to resize it.
pub fn threaded_resizable_disk(
    sectors: u64,
    sector_size: u32,
) -> (Disk, RamDisk, ControllerThread) {
    let mut c = RigConfig::new(controller_config(2));
    c.data_bytes = 1 << 20;
    c.dma_bytes = 16 << 20;
    let rig = NvmeRig::new(c).expect("map the rig's RAM");
    let (r, d) = ram(sectors, sector_size);
    rig.controller().add_namespace(1, d).expect("add namespace");
    // Bring the driver up with the controller on a first thread, then
    // run the controller and the event loop on the one kept.
    let driver = {
        let _bring_up =
            ControllerThread::spawn(rig.backing(), None).expect("start the controller thread");
        crate::buf::block_on(NvmeDriver::new(
            rig.device(),
            DriverConfig::default(),
            Arc::new(YieldTimer),
        ))
        .expect("driver bring-up")
    };
    let events = driver.clone();
    let thread = ControllerThread::spawn(
        rig.backing(),
        Some(Box::pin(async move { events.run_async_events().await })),
    )
    .expect("start the controller thread");
    let disk = Disk::new(driver.namespace(1).expect("namespace 1")).expect("valid disk");
    (disk, r, thread)
}

/// A driver over a fresh controller with one namespace of `sectors`
/// sectors of `sector_size` bytes (NSID 1), the controller's work on a
/// thread of its own (which ends when the disk is dropped), and that
/// namespace as a `Disk`.
pub fn threaded_disk(sectors: u64, sector_size: u32, config: DriverConfig) -> Disk {
    let mut c = RigConfig::new(controller_config(2));
    c.data_bytes = 1 << 20;
    c.dma_bytes = 16 << 20;
    let rig = NvmeRig::new(c).expect("map the rig's RAM");
    let (_, d) = ram(sectors, sector_size);
    rig.controller().add_namespace(1, d).expect("add namespace");
    ControllerThread::spawn(rig.backing(), None)
        .expect("start the controller thread")
        .detach();
    let driver = crate::buf::block_on(NvmeDriver::new(rig.device(), config, Arc::new(YieldTimer)))
        .expect("driver bring-up");
    Disk::new(driver.namespace(1).expect("namespace 1")).expect("valid disk")
}
