//! The in-process NVMe backing: parastor's NVMe driver
//! (`parastor-nvme-driver`) over parastor's guest-facing NVMe controller
//! (`parastor-nvme`), in one process — the way OpenVMM tests its driver
//! against its own emulator.
//!
//! - [`DeviceRam`]: shared RAM (any [`GuestMemory`], normally a mapped
//!   [`GuestRam`]) whose `pin` hands out device addresses equal to the
//!   guest physical addresses, as a device behind an identity-mapped IOMMU
//!   sees them: a buffer in it goes to the controller by direct DMA.
//! - [`NvmeBacking`]: [`DeviceAccess`] over an [`NvmeController`]: config
//!   space and BARs are method calls, DMA memory is carved (page-granular)
//!   from a region of the shared RAM, and MSI-X vectors are programmed in
//!   the controller's table and delivered, through its [`MsiSink`], to one
//!   event per vector that wakes the driver.
//! - [`NvmeRig`]: a controller, its namespaces' disks and the backing, plus
//!   [`NvmeRig::run`], which polls a driver future and the controller's
//!   work on the calling thread, deterministically (tests, the benchmark).

use futures_util::task::AtomicWaker;
use parastor_core::addr::{DeviceAddress, DeviceRange, DmaDomainId, Gpa, GpaRange};
use parastor_core::delay::Timer;
use parastor_core::disk::BoxFuture;
use parastor_core::error::{MemoryError, MemoryErrorKind};
use parastor_core::memory::{Access, AtomicOp, GuestMem, GuestMemory, Width};
use parastor_core::pin::{PinError, PinOwner, PinSet};
use parastor_core::sync::{Mutex, RwLock};
use parastor_hw::pci::capability::{CapabilityId, FIRST_CAPABILITY_OFFSET};
use parastor_nvme::{ControllerConfig, MsiMessage, MsiSink, NvmeController};
use parastor_nvme_driver::{DeviceAccess, DeviceError, DeviceInterrupt, DmaBuffer, DmaRelease};
use parastor_sys::GuestRam;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

const PAGE: u64 = 4096;
/// The DMA domain of the in-process controller.
pub const EMULATED_DOMAIN: DmaDomainId = DmaDomainId::new(0x4E56);
/// The MSI-X message address the backing programs (the x86 interrupt
/// range; the in-process sink looks only at the vector).
const MSI_ADDRESS: u64 = 0xFEE0_0000;

/// Unpins nothing: the RAM stays mapped as long as any handle on it lives,
/// and this owner keeps one.
struct RamPins {
    _mem: GuestMem,
    pinned: AtomicU64,
}

impl PinOwner for RamPins {
    fn unpin(&self, ranges: &[DeviceRange]) {
        self.pinned
            .fetch_sub(ranges.len() as u64, Ordering::Relaxed);
    }
}

/// Shared RAM whose pins, for [`EMULATED_DOMAIN`], are device addresses
/// equal to guest physical addresses (direct DMA). Every other access is
/// the inner memory's.
pub struct DeviceRam {
    mem: GuestMem,
    owner: Arc<dyn PinOwner>,
    pins: Arc<RamPins>,
}

impl DeviceRam {
    /// Device-visible RAM over `mem`.
    pub fn new(mem: GuestMem) -> Self {
        let pins = Arc::new(RamPins {
            _mem: mem.clone(),
            pinned: AtomicU64::new(0),
        });
        let owner: Arc<dyn PinOwner> = pins.clone();
        Self { mem, owner, pins }
    }

    /// The memory the controller reaches (the same bytes).
    pub fn inner(&self) -> &GuestMem {
        &self.mem
    }

    /// Ranges pinned right now (for tests: a command's pins go when it
    /// completes).
    pub fn pinned_ranges(&self) -> u64 {
        self.pins.pinned.load(Ordering::Relaxed)
    }
}

impl GuestMemory for DeviceRam {
    fn extent(&self) -> Gpa {
        self.mem.extent()
    }

    fn read_at(&self, gpa: Gpa, dst: &mut [u8]) -> Result<(), MemoryError> {
        self.mem.read_at(gpa, dst)
    }

    fn write_at(&self, gpa: Gpa, src: &[u8]) -> Result<(), MemoryError> {
        self.mem.write_at(gpa, src)
    }

    fn fill_at(&self, gpa: Gpa, len: usize, byte: u8) -> Result<(), MemoryError> {
        self.mem.fill_at(gpa, len, byte)
    }

    fn atomic(
        &self,
        gpa: Gpa,
        width: Width,
        op: AtomicOp,
        order: Ordering,
    ) -> Result<u64, MemoryError> {
        self.mem.atomic(gpa, width, op, order)
    }

    fn write_vectored_at(&self, gpa: Gpa, srcs: &[&[u8]]) -> Result<(), MemoryError> {
        self.mem.write_vectored_at(gpa, srcs)
    }

    fn check(&self, range: GpaRange, access: Access) -> Result<(), MemoryError> {
        self.mem.check(range, access)
    }

    /// Every byte is the inner memory's, at the same address.
    fn window(&self, gpa: Gpa, len: u64) -> Option<(&dyn GuestMemory, Gpa)> {
        let _ = len;
        Some((&*self.mem, gpa))
    }

    fn pin(
        &self,
        ranges: &[GpaRange],
        access: Access,
        domain: DmaDomainId,
        out: &mut PinSet,
    ) -> Result<(), PinError> {
        if domain != EMULATED_DOMAIN {
            return Err(PinError::Unsupported);
        }
        // At most a few ranges per call (SgList::pin passes one): a stack
        // buffer keeps pinning allocation-free.
        let mut buf = [DeviceRange::new(DeviceAddress::new(0), 0); 8];
        for chunk in ranges.chunks(buf.len()) {
            for (d, r) in buf.iter_mut().zip(chunk) {
                match self.mem.check(*r, access) {
                    Ok(()) => {}
                    Err(e) if matches!(e.kind, MemoryErrorKind::Inaccessible(_)) => {
                        return Err(PinError::NotDeviceVisible(e));
                    }
                    Err(e) => return Err(PinError::Memory(e)),
                }
                *d = DeviceRange::new(DeviceAddress::new(r.gpa.get()), r.len);
            }
            out.push(&self.owner, domain, &buf[..chunk.len()])?;
            self.pins
                .pinned
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Where a DMA page is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Page {
    /// Not handed out.
    Free,
    /// Handed out by `alloc_dma`, or left to the device by a driver's
    /// keepalive save: `attach_dma` may claim it.
    Allocated,
    /// Attached by `attach_dma` and not released or left since.
    Attached,
}

/// Page-granular allocator over the DMA region.
struct DmaPages {
    base: Gpa,
    used: Mutex<Vec<Page>>,
}

impl DmaPages {
    /// The pages of `range` (which this region handed out).
    fn pages(&self, range: DeviceRange) -> (usize, usize) {
        let first = (range.addr.get().saturating_sub(self.base.get()) / PAGE) as usize;
        (first, range.len.div_ceil(PAGE) as usize)
    }
}

impl DmaRelease for DmaPages {
    fn release(&self, range: DeviceRange) {
        let (first, count) = self.pages(range);
        let mut used = self.used.lock();
        for page in used.iter_mut().skip(first).take(count) {
            *page = Page::Free;
        }
    }

    fn leave(&self, range: DeviceRange) {
        let (first, count) = self.pages(range);
        let mut used = self.used.lock();
        for page in used.iter_mut().skip(first).take(count) {
            if *page == Page::Attached {
                *page = Page::Allocated;
            }
        }
    }
}

/// One MSI-X vector's event.
#[derive(Default)]
struct VectorEvent {
    signaled: AtomicBool,
    waker: AtomicWaker,
    count: AtomicU64,
}

impl DeviceInterrupt for VectorEvent {
    fn poll_signal(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.signaled.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.signaled.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The controller's interrupts, one event per vector.
struct Vectors(Box<[Arc<VectorEvent>]>);

impl MsiSink for Vectors {
    fn signal(&self, vector: u16, _message: MsiMessage) {
        if let Some(v) = self.0.get(usize::from(vector)) {
            v.count.fetch_add(1, Ordering::Relaxed);
            v.signaled.store(true, Ordering::Release);
            v.waker.wake();
        }
    }
}

/// [`DeviceAccess`] over an in-process [`NvmeController`].
pub struct NvmeBacking {
    /// Swapped by [`NvmeRig::save_and_restore`]: the driver keeps its
    /// device while the controller behind it is replaced.
    controller: RwLock<Arc<NvmeController>>,
    ram: GuestMem,
    dma: Arc<DmaPages>,
    vectors: Arc<Vectors>,
    msix_cap: Option<u16>,
    doorbell_writes: AtomicU64,
}

impl NvmeBacking {
    /// MMIO writes to doorbell registers so far (shadow doorbells make
    /// most of them unnecessary).
    pub fn doorbell_writes(&self) -> u64 {
        self.doorbell_writes.load(Ordering::Relaxed)
    }

    /// The controller behind the device now.
    pub fn controller(&self) -> Arc<NvmeController> {
        self.controller.read().clone()
    }

    fn config16(&self, offset: u16) -> u16 {
        let mut b = [0u8; 2];
        self.controller.read().config_read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// The MSI-X capability's offset in config space, if the function has
    /// one (walking the capability list, at most 48 entries).
    fn find_msix(controller: &NvmeController) -> Option<u16> {
        let mut b = [0u8; 1];
        controller.config_read(0x34, &mut b);
        let mut at = b[0] & !3;
        for _ in 0..48 {
            if at < FIRST_CAPABILITY_OFFSET {
                return None;
            }
            let mut hdr = [0u8; 2];
            controller.config_read(u16::from(at), &mut hdr);
            if hdr[0] == CapabilityId::MSIX.get() {
                return Some(u16::from(at));
            }
            at = hdr[1] & !3;
        }
        None
    }

    /// MSI-X interrupts delivered so far on `vector`.
    pub fn interrupts(&self, vector: u16) -> u64 {
        self.vectors
            .0
            .get(usize::from(vector))
            .map_or(0, |v| v.count.load(Ordering::Relaxed))
    }
}

impl DeviceAccess for NvmeBacking {
    fn id(&self) -> &str {
        "emulated-nvme"
    }

    fn config_read_u32(&self, offset: u16) -> u32 {
        let mut b = [0u8; 4];
        self.controller.read().config_read(offset & !3, &mut b);
        u32::from_le_bytes(b)
    }

    fn config_write_u32(&self, offset: u16, value: u32) {
        self.controller
            .read()
            .config_write(offset & !3, &value.to_le_bytes());
    }

    fn read_u32(&self, bar: u8, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.controller.read().bar_read(bar, offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn read_u64(&self, bar: u8, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        self.controller.read().bar_read(bar, offset, &mut b);
        u64::from_le_bytes(b)
    }

    fn write_u32(&self, bar: u8, offset: u64, value: u32) {
        if bar == 0 && offset >= parastor_hw::nvme::regs::offset::DOORBELLS {
            self.doorbell_writes.fetch_add(1, Ordering::Relaxed);
        }
        self.controller
            .read()
            .bar_write(bar, offset, &value.to_le_bytes());
    }

    fn write_u64(&self, bar: u8, offset: u64, value: u64) {
        self.controller
            .read()
            .bar_write(bar, offset, &value.to_le_bytes());
    }

    fn dma_domain(&self) -> DmaDomainId {
        EMULATED_DOMAIN
    }

    fn alloc_dma(&self, len: usize) -> Result<DmaBuffer, DeviceError> {
        let pages = (len as u64).div_ceil(PAGE).max(1) as usize;
        let first = {
            let mut used = self.dma.used.lock();
            let mut run = 0;
            let mut found = None;
            for (i, u) in used.iter().enumerate() {
                if *u != Page::Free {
                    run = 0;
                } else {
                    run += 1;
                    if run == pages {
                        found = Some(i + 1 - pages);
                        break;
                    }
                }
            }
            let first = found.ok_or(DeviceError::OutOfDmaMemory { len })?;
            for u in used.iter_mut().skip(first).take(pages) {
                *u = Page::Allocated;
            }
            first
        };
        let gpa = self.dma.base + first as u64 * PAGE;
        let bytes = pages * PAGE as usize;
        if self.ram.fill_at(gpa, bytes, 0).is_err() {
            self.dma.release(DeviceRange::new(
                DeviceAddress::new(gpa.get()),
                bytes as u64,
            ));
            return Err(DeviceError::Gone("DMA region outside guest memory"));
        }
        let release: Arc<dyn DmaRelease> = self.dma.clone();
        Ok(DmaBuffer::new(
            self.ram.clone(),
            gpa,
            bytes,
            DeviceAddress::new(gpa.get()),
            Some(release),
        ))
    }

    fn max_interrupts(&self) -> u16 {
        if self.msix_cap.is_none() {
            return 0;
        }
        (self.vectors.0.len() as u16).min(self.controller.read().config().msix_vectors)
    }

    fn map_interrupt(&self, vector: u16) -> Result<Arc<dyn DeviceInterrupt>, DeviceError> {
        let available = self.max_interrupts();
        let (Some(cap), true) = (self.msix_cap, vector < available) else {
            return Err(DeviceError::NoSuchInterrupt { vector, available });
        };
        // The table location (BIR and offset) from the capability.
        let table = self.config_read_u32(cap + 4);
        let bir = (table & 7) as u8;
        let base = u64::from(table & !7) + u64::from(vector) * 16;
        self.write_u32(bir, base, MSI_ADDRESS as u32);
        self.write_u32(bir, base + 4, (MSI_ADDRESS >> 32) as u32);
        self.write_u32(bir, base + 8, u32::from(vector));
        self.write_u32(bir, base + 12, 0); // unmasked
        // MSI-X enable, function mask off.
        let control = self.config16(cap + 2);
        let control = (control | 0x8000) & !0x4000;
        let mut b = [0u8; 2];
        b.copy_from_slice(&control.to_le_bytes());
        self.controller.read().config_write(cap + 2, &b);
        Ok(self.vectors.0[usize::from(vector)].clone())
    }

    /// A controller reset of the function: CC.EN = 0 and the admin queue
    /// registers back at their reset value (0). The controller finishes
    /// the reset once its running commands drain; the driver waits for
    /// CSTS.RDY = 0 before enabling again, as after any reset. MSI-X
    /// vectors stay programmed.
    fn reset_function(&self) -> Result<(), DeviceError> {
        use parastor_hw::nvme::regs::offset;
        let controller = self.controller.read();
        controller.bar_write(0, offset::CC, &0u32.to_le_bytes());
        for reg in [offset::AQA, offset::ASQ, offset::ACQ] {
            let width = if reg == offset::AQA { 4 } else { 8 };
            controller.bar_write(0, reg, &[0u8; 8][..width]);
        }
        Ok(())
    }

    /// The controller reaches the rig's RAM at device address = GPA, so a
    /// caller range inside the data area (below the DMA region) maps to
    /// itself.
    fn map_dma(&self, mem: &GuestMem, range: GpaRange) -> Result<DeviceRange, DeviceError> {
        let bad = DeviceError::BadRange {
            gpa: range.gpa.get(),
            len: range.len,
        };
        let end = range.gpa.get().checked_add(range.len).ok_or(bad)?;
        if range.len == 0
            || !range.gpa.get().is_multiple_of(PAGE)
            || !range.len.is_multiple_of(PAGE)
            || end > self.dma.base.get()
            || mem.check(range, Access::ReadWrite).is_err()
        {
            return Err(bad);
        }
        Ok(DeviceRange::new(
            DeviceAddress::new(range.gpa.get()),
            range.len,
        ))
    }

    /// Identity mappings need no undoing; the range must be one
    /// [`map_dma`](DeviceAccess::map_dma) can return.
    fn unmap_dma(&self, range: DeviceRange) -> Result<(), DeviceError> {
        let end = range.addr.get().checked_add(range.len);
        match end {
            Some(end) if range.len != 0 && end <= self.dma.base.get() => Ok(()),
            _ => Err(DeviceError::BadRange {
                gpa: range.addr.get(),
                len: range.len,
            }),
        }
    }
    /// The pages stay in the shared RAM whatever happened to the driver
    /// that allocated them: they are marked attached and handed back. A
    /// range with a page attached already (and not released or
    /// [left](DmaBuffer::leave_to_device) since) is refused: two buffers
    /// would alias.
    fn attach_dma(&self, range: DeviceRange) -> Result<DmaBuffer, DeviceError> {
        let bad = DeviceError::BadRange {
            gpa: range.addr.get(),
            len: range.len,
        };
        let base = self.dma.base.get();
        let start = range.addr.get();
        let end = start.checked_add(range.len).ok_or(bad)?;
        let pages = self.dma.used.lock().len() as u64;
        if range.len == 0
            || !start.is_multiple_of(PAGE)
            || !range.len.is_multiple_of(PAGE)
            || start < base
            || end > base + pages * PAGE
        {
            return Err(bad);
        }
        let first = ((start - base) / PAGE) as usize;
        let count = (range.len / PAGE) as usize;
        {
            let mut used = self.dma.used.lock();
            let run = used
                .get_mut(first..first.saturating_add(count))
                .ok_or(bad)?;
            if run.contains(&Page::Attached) {
                return Err(bad);
            }
            run.fill(Page::Attached);
        }
        let release: Arc<dyn DmaRelease> = self.dma.clone();
        Ok(DmaBuffer::new(
            self.ram.clone(),
            Gpa::new(start),
            range.len as usize,
            range.addr,
            Some(release),
        ))
    }
}

/// Sizes of an [`NvmeRig`].
#[derive(Clone, Debug)]
pub struct RigConfig {
    /// Bytes of shared RAM for the driver's callers' buffers (from GPA 0).
    pub data_bytes: u64,
    /// Bytes of shared RAM for the driver's DMA memory (queues, PRP list
    /// pages, bounce buffers), placed after the data.
    pub dma_bytes: u64,
    /// The controller's configuration.
    pub controller: ControllerConfig,
}

impl RigConfig {
    /// 16 MiB of data, 32 MiB of DMA memory, the controller's defaults.
    pub fn new(controller: ControllerConfig) -> Self {
        Self {
            data_bytes: 16 << 20,
            dma_bytes: 32 << 20,
            controller,
        }
    }
}

/// A timer whose sleeps end at the next poll: register polling in the
/// deterministic rig never waits for wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct YieldTimer;

struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl Timer for YieldTimer {
    fn sleep(&self, _duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(YieldOnce(false))
    }
}

/// A waker that records that it was woken.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Why [`NvmeRig::run`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled;

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("neither the driver future nor the controller can make progress")
    }
}

impl std::error::Error for Stalled {}

/// The driver's device, the controller behind it, and the shared RAM.
pub struct NvmeRig {
    backing: Arc<NvmeBacking>,
    memory: Arc<DeviceRam>,
    data_bytes: u64,
}

impl NvmeRig {
    /// A rig over fresh mapped RAM ([`GuestRam`]).
    ///
    /// # Errors
    /// If the RAM cannot be mapped.
    pub fn new(config: RigConfig) -> std::io::Result<Self> {
        let total =
            config.data_bytes.div_ceil(PAGE) * PAGE + config.dma_bytes.div_ceil(PAGE) * PAGE;
        let ram = GuestRam::memfd("parastor-nvme-rig", total as usize)?;
        Ok(Self::with_memory(config, GuestMem::new(ram)))
    }

    /// A rig over `mem` (at least `data_bytes + dma_bytes` long).
    pub fn with_memory(config: RigConfig, mem: GuestMem) -> Self {
        let data_bytes = config.data_bytes.div_ceil(PAGE) * PAGE;
        let dma_pages = (config.dma_bytes / PAGE) as usize;
        let vectors = Arc::new(Vectors(
            (0..config.controller.msix_vectors.max(1))
                .map(|_| Arc::new(VectorEvent::default()))
                .collect(),
        ));
        let sink: Arc<dyn MsiSink> = vectors.clone();
        let controller = Arc::new(NvmeController::new(config.controller, mem.clone(), sink));
        let msix_cap = NvmeBacking::find_msix(&controller);
        let backing = Arc::new(NvmeBacking {
            controller: RwLock::new(controller),
            ram: mem.clone(),
            dma: Arc::new(DmaPages {
                base: Gpa::new(data_bytes),
                used: Mutex::new(vec![Page::Free; dma_pages]),
            }),
            vectors,
            msix_cap,
            doorbell_writes: AtomicU64::new(0),
        });
        Self {
            backing,
            memory: Arc::new(DeviceRam::new(mem)),
            data_bytes,
        }
    }

    /// The controller behind the device now.
    pub fn controller(&self) -> Arc<NvmeController> {
        self.backing.controller()
    }

    /// The device the driver opens.
    pub fn device(&self) -> Arc<dyn DeviceAccess> {
        self.backing.clone()
    }

    /// The backing itself (interrupt counters).
    pub fn backing(&self) -> &Arc<NvmeBacking> {
        &self.backing
    }

    /// The shared RAM the driver's callers put their buffers in: GPAs
    /// `[0, data_bytes)` are theirs.
    pub fn memory(&self) -> &Arc<DeviceRam> {
        &self.memory
    }

    /// Bytes of caller data area.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Saves the controller (which freezes it, commands in flight kept)
    /// and replaces it by one restored from that state over the same RAM
    /// and interrupt events, with `namespaces` attached; the driver keeps
    /// running against the restored one without noticing.
    ///
    /// # Errors
    /// The controller's save or restore error, as text.
    pub fn save_and_restore(
        &self,
        namespaces: Vec<(u32, parastor_core::Disk)>,
    ) -> Result<(), String> {
        let mut slot = self.backing.controller.write();
        let saved = slot.save().map_err(|e| format!("save: {e}"))?;
        let config = slot.config().clone();
        let sink: Arc<dyn MsiSink> = self.backing.vectors.clone();
        let restored =
            NvmeController::restore(config, self.backing.ram.clone(), sink, &saved, namespaces)
                .map_err(|e| format!("restore: {e}"))?;
        *slot = Arc::new(restored);
        Ok(())
    }

    /// Polls the controller's woken work once (for hand-written loops such
    /// as the benchmark's).
    pub fn poll_controller(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.backing.controller.read().poll_work(cx)
    }

    /// Runs `fut` to completion on this thread, polling the controller's
    /// work between polls of `fut`, deterministically.
    ///
    /// # Errors
    /// [`Stalled`] when neither can make progress any more (a lost wakeup
    /// or a command the controller never completes), instead of hanging.
    pub fn run<F: Future>(&self, fut: F) -> Result<F::Output, Stalled> {
        let mut fut = pin!(fut);
        let flag = Arc::new(Flag(AtomicBool::new(true)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut idle = 0u32;
        loop {
            let woken = flag.0.swap(false, Ordering::AcqRel);
            if woken && let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return Ok(v);
            }
            let mut worked = false;
            while self.poll_controller(&mut cx).is_ready() {
                worked = true;
            }
            if woken || worked || flag.0.load(Ordering::Acquire) {
                idle = 0;
            } else {
                idle += 1;
                // A disk that completes on another thread may need a
                // moment; give up only after a long quiet spell.
                if idle > 2000 {
                    return Err(Stalled);
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
}

impl std::fmt::Debug for NvmeRig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeRig")
            .field("data_bytes", &self.data_bytes)
            .finish_non_exhaustive()
    }
}

/// Wakes a parked thread.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// A future run next to the controller's work on its thread (the driver's
/// asynchronous-event loop, say).
pub type Background = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The controller's work running on a thread of its own, so the driver's
/// disks can be used from any executor (`block_on`, a runtime). Stops
/// and joins when dropped; it also stops by itself once the device is
/// dropped (when it runs no background future, which would keep the
/// driver, and so the device, alive).
pub struct ControllerThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControllerThread {
    /// Starts the thread for `backing`'s controller, also polling
    /// `background` until it completes.
    ///
    /// # Errors
    /// If the thread cannot be started.
    pub fn spawn(
        backing: &Arc<NvmeBacking>,
        background: Option<Background>,
    ) -> std::io::Result<Self> {
        let weak = Arc::downgrade(backing);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("parastor-nvme-ctrl".into())
            .spawn(move || controller_loop(&weak, &stop2, background))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Lets the thread run on its own (it ends when the device is
    /// dropped, see the type docs).
    pub fn detach(mut self) {
        self.thread = None;
    }
}

impl Drop for ControllerThread {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::Release);
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn controller_loop(
    backing: &std::sync::Weak<NvmeBacking>,
    stop: &AtomicBool,
    mut background: Option<Background>,
) {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    while !stop.load(Ordering::Acquire) {
        let Some(controller) = backing.upgrade().map(|b| b.controller()) else {
            return;
        };
        let mut worked = false;
        while controller.poll_work(&mut cx).is_ready() {
            worked = true;
        }
        drop(controller);
        if let Some(fut) = background.as_mut()
            && fut.as_mut().poll(&mut cx).is_ready()
        {
            background = None;
        }
        if !worked {
            std::thread::park_timeout(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parastor_hw::guid::Guid;
    use parastor_hw::nvme::regs::offset;

    fn rig() -> NvmeRig {
        let mut config = RigConfig::new(ControllerConfig::new(Guid::new(0x13, 0, 0, [0; 8])));
        config.data_bytes = 1 << 20;
        config.dma_bytes = 1 << 20;
        NvmeRig::new(config).expect("map the rig's RAM")
    }

    #[test]
    fn map_dma_is_the_identity_inside_the_data_area_only() {
        let rig = rig();
        let device = rig.device();
        let mem = GuestMem::from_arc(rig.memory().clone());
        let range = GpaRange::new(Gpa::new(PAGE), 2 * PAGE);
        assert_eq!(
            device.map_dma(&mem, range),
            Ok(DeviceRange::new(DeviceAddress::new(PAGE), 2 * PAGE))
        );
        device
            .unmap_dma(DeviceRange::new(DeviceAddress::new(PAGE), 2 * PAGE))
            .expect("unmap what was mapped");
        // Misaligned, empty, and inside the driver's own DMA region.
        for (gpa, len) in [(1, PAGE), (0, 0), (rig.data_bytes(), PAGE)] {
            assert_eq!(
                device.map_dma(&mem, GpaRange::new(Gpa::new(gpa), len)),
                Err(DeviceError::BadRange { gpa, len })
            );
        }
    }

    #[test]
    fn attached_dma_pages_are_never_attached_twice() {
        let rig = rig();
        let device = rig.device();
        let base = rig.data_bytes();
        let range = |page: u64, pages: u64| {
            DeviceRange::new(DeviceAddress::new(base + page * PAGE), pages * PAGE)
        };
        let a = device.attach_dma(range(0, 2)).expect("free pages attach");
        for (page, pages) in [(1, 2), (0, 2), (1, 1)] {
            assert_eq!(
                device.attach_dma(range(page, pages)).map(|_| ()),
                Err(DeviceError::BadRange {
                    gpa: base + page * PAGE,
                    len: pages * PAGE
                }),
                "pages {page}+{pages} overlap an attached buffer"
            );
        }
        // Left to the device by a keepalive save: attachable again, once.
        a.leave_to_device();
        let again = device.attach_dma(range(0, 2)).expect("left pages attach");
        assert!(device.attach_dma(range(1, 1)).is_err());
        // Allocated pages (a previous driver may have forgotten them) can
        // be attached, once; released pages are free again.
        let b = device.alloc_dma(4096).expect("a free page");
        let page = (b.device_address(0) - base) / PAGE;
        core::mem::forget(b);
        let c = device.attach_dma(range(page, 1)).expect("allocated page");
        assert!(device.attach_dma(range(page, 1)).is_err());
        drop((again, c));
        assert!(device.attach_dma(range(0, 1)).is_ok());
    }

    #[test]
    fn reset_function_clears_the_controller_registers() {
        let rig = rig();
        let device = rig.device();
        device.write_u32(0, offset::AQA, 0x001F_001F);
        device.write_u64(0, offset::ASQ, 0x1000);
        assert_eq!(device.read_u32(0, offset::AQA), 0x001F_001F);
        device
            .reset_function()
            .expect("the emulated function resets");
        assert_eq!(device.read_u32(0, offset::AQA), 0);
        assert_eq!(device.read_u64(0, offset::ASQ), 0);
        assert_eq!(device.read_u32(0, offset::CC), 0);
        assert_eq!(device.read_u32(0, offset::CSTS) & 1, 0, "CSTS.RDY");
    }
}
