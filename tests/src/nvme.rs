//! The NVMe end-to-end testbed: parastor's NVMe controller over RAM
//! disks, driven by parastor's NVMe driver through the in-process backing
//! (`parastor_emulated::nvme`).
//!
//! [`Testbed`] runs everything on the test's thread ([`Testbed::run`]);
//! [`threaded_disk`] runs the controller on a thread of its own so a
//! namespace's `Disk` works under any executor (the conformance suite's
//! `block_on`).

use parastor_core::delay::Timer;
use parastor_core::disk::{BoxFuture, DiskIo, IoOptions, UnmapBehavior};
use parastor_core::ram::RamDisk;
use parastor_core::{Disk, DiskError, Gpa, GpaRange, GuestMemory, SgList};
use parastor_emulated::nvme::{ControllerThread, NvmeRig, RigConfig, YieldTimer};
use parastor_hw::Guid;
use parastor_nvme::ControllerConfig;
use parastor_nvme_driver::{
    Clock, DeviceAccess, DeviceError, DeviceInterrupt, DmaBuffer, DriverConfig, NvmeDisk,
    NvmeDriver,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

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

    /// Brings a driver up over `device` (the controller's, or a wrapper
    /// of it) on virtual time: `clock` is the driver's clock and timer.
    #[track_caller]
    pub fn start_virtual(
        &self,
        device: Arc<dyn DeviceAccess>,
        config: DriverConfig,
        clock: &Arc<VirtualClock>,
    ) -> NvmeDriver {
        let config = DriverConfig {
            clock: clock.clone(),
            ..config
        };
        self.run(NvmeDriver::new(device, config, clock.clone()))
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

/// A driver over a fresh controller with namespace 1 (`sectors` sectors of
/// 512 bytes), `queues` I/O queue pairs and `vectors` MSI-X vectors, the
/// controller's work on a thread of its own (kept while the returned
/// handle lives), for I/O from any thread or runtime.
pub fn threaded_driver(
    sectors: u64,
    queues: u16,
    vectors: u16,
    config: DriverConfig,
) -> (NvmeDriver, NvmeRig, ControllerThread) {
    let mut c = controller_config(queues);
    c.msix_vectors = vectors;
    let mut c = RigConfig::new(c);
    c.data_bytes = 1 << 20;
    c.dma_bytes = 16 << 20;
    let rig = NvmeRig::new(c).expect("map the rig's RAM");
    let (_, d) = ram(sectors, 512);
    rig.controller().add_namespace(1, d).expect("add namespace");
    let thread = ControllerThread::spawn(rig.backing(), None).expect("start the controller thread");
    let driver = crate::buf::block_on(NvmeDriver::new(rig.device(), config, Arc::new(YieldTimer)))
        .expect("driver bring-up");
    (driver, rig, thread)
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

/// How many 4 KiB pages of DMA memory `device` can hand out now (takes
/// them all, then gives them back).
pub fn free_dma_pages(device: &dyn DeviceAccess) -> usize {
    let mut taken = Vec::new();
    while let Ok(b) = device.alloc_dma(4096) {
        taken.push(b);
    }
    taken.len()
}

/// Virtual time for the driver: a [`Clock`] that only moves when the
/// driver sleeps through the same value as its [`Timer`] — each sleep
/// moves the clock by its duration and ends at the next poll. Timeouts of
/// seconds then pass in a few polls, deterministically.
#[derive(Debug, Default)]
pub struct VirtualClock {
    nanos: AtomicU64,
}

impl VirtualClock {
    /// A clock at 0.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

impl Timer for VirtualClock {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::AcqRel);
        Box::pin(YieldOnce(false))
    }
}

/// Pending once (waking itself), then ready.
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

#[derive(Default)]
struct HangState {
    armed: AtomicBool,
    hung: AtomicUsize,
    wakers: Mutex<Vec<Waker>>,
}

/// A disk whose reads and writes hang while it is armed: a request that
/// starts while [`HangDisk::arm`] is in force waits until
/// [`HangDisk::release`], then goes to the inner disk. As a namespace's
/// disk it is a device that stops answering. Clones share the state.
#[derive(Clone)]
pub struct HangDisk {
    inner: Disk,
    state: Arc<HangState>,
}

impl HangDisk {
    /// Hangs in front of `inner` (not armed yet).
    pub fn new(inner: Disk) -> Self {
        Self {
            inner,
            state: Arc::default(),
        }
    }

    /// Requests from now on hang.
    pub fn arm(&self) {
        self.state.armed.store(true, Ordering::Release);
    }

    /// Hanging requests go on; new ones no longer hang.
    pub fn release(&self) {
        self.state.armed.store(false, Ordering::Release);
        for w in self.state.wakers.lock().expect("hang wakers").drain(..) {
            w.wake();
        }
    }

    /// Requests that hung so far.
    pub fn hung(&self) -> usize {
        self.state.hung.load(Ordering::Acquire)
    }

    /// Completes once the disk is released (at once if not armed).
    fn gate(&self) -> impl Future<Output = ()> + Send + '_ {
        let mut counted = false;
        std::future::poll_fn(move |cx| {
            if !self.state.armed.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            if !std::mem::replace(&mut counted, true) {
                self.state.hung.fetch_add(1, Ordering::AcqRel);
            }
            self.state
                .wakers
                .lock()
                .expect("hang wakers")
                .push(cx.waker().clone());
            // Released between the test and the registration.
            if self.state.armed.load(Ordering::Acquire) {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
    }
}

impl DiskIo for HangDisk {
    fn kind(&self) -> &'static str {
        "hang"
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
        UnmapBehavior::Ignored
    }

    async fn read(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.gate().await;
        self.inner.read(buf, sector, opts).await
    }

    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.gate().await;
        self.inner.write(buf, sector, opts).await
    }

    async fn flush(&self, opts: IoOptions) -> Result<(), DiskError> {
        self.inner.flush(opts).await
    }

    async fn unmap(&self, _sector: u64, _count: u64, _opts: IoOptions) -> Result<(), DiskError> {
        Ok(())
    }
}

/// What an [`Unpluggable`] device does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PlugState {
    /// Passes everything through.
    Present = 0,
    /// Surprise-removed: registers and config space read as all ones,
    /// writes go nowhere.
    Removed = 1,
    /// CSTS reads with CFS (controller fatal status) set.
    Fatal = 2,
    /// CSTS reads with RDY clear: the controller never becomes ready.
    NeverReady = 3,
}

/// A device wrapper that can be surprise-removed or report a fatal
/// status, for the driver's failure paths.
pub struct Unpluggable {
    inner: Arc<dyn DeviceAccess>,
    state: AtomicU8,
}

impl Unpluggable {
    /// `inner`, present.
    pub fn new(inner: Arc<dyn DeviceAccess>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            state: AtomicU8::new(PlugState::Present as u8),
        })
    }

    /// Changes what the device does from now on.
    pub fn set(&self, state: PlugState) {
        self.state.store(state as u8, Ordering::Release);
    }

    fn state(&self) -> PlugState {
        match self.state.load(Ordering::Acquire) {
            1 => PlugState::Removed,
            2 => PlugState::Fatal,
            3 => PlugState::NeverReady,
            _ => PlugState::Present,
        }
    }
}

impl DeviceAccess for Unpluggable {
    fn id(&self) -> &str {
        "unpluggable"
    }
    fn config_read_u32(&self, offset: u16) -> u32 {
        match self.state() {
            PlugState::Removed => u32::MAX,
            _ => self.inner.config_read_u32(offset),
        }
    }
    fn config_write_u32(&self, offset: u16, value: u32) {
        if self.state() != PlugState::Removed {
            self.inner.config_write_u32(offset, value);
        }
    }
    fn read_u32(&self, bar: u8, offset: u64) -> u32 {
        match self.state() {
            PlugState::Removed => u32::MAX,
            PlugState::Fatal if bar == 0 && offset == parastor_hw::nvme::regs::offset::CSTS => {
                self.inner.read_u32(bar, offset) | 0b10
            }
            PlugState::NeverReady
                if bar == 0 && offset == parastor_hw::nvme::regs::offset::CSTS =>
            {
                self.inner.read_u32(bar, offset) & !1
            }
            _ => self.inner.read_u32(bar, offset),
        }
    }
    fn read_u64(&self, bar: u8, offset: u64) -> u64 {
        match self.state() {
            PlugState::Removed => u64::MAX,
            _ => self.inner.read_u64(bar, offset),
        }
    }
    fn write_u32(&self, bar: u8, offset: u64, value: u32) {
        if self.state() != PlugState::Removed {
            self.inner.write_u32(bar, offset, value);
        }
    }
    fn write_u64(&self, bar: u8, offset: u64, value: u64) {
        if self.state() != PlugState::Removed {
            self.inner.write_u64(bar, offset, value);
        }
    }
    fn dma_domain(&self) -> parastor_core::DmaDomainId {
        self.inner.dma_domain()
    }
    fn alloc_dma(&self, len: usize) -> Result<DmaBuffer, DeviceError> {
        self.inner.alloc_dma(len)
    }
    fn max_interrupts(&self) -> u16 {
        self.inner.max_interrupts()
    }
    fn map_interrupt(&self, vector: u16) -> Result<Arc<dyn DeviceInterrupt>, DeviceError> {
        self.inner.map_interrupt(vector)
    }
}
