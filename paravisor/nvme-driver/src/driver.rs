//! The controller: bring-up, admin commands, I/O queues, asynchronous
//! events, reset and shutdown.

use crate::clock::{Clock, MonotonicClock};
use crate::device::{DeviceAccess, DmaBuffer, DmaWindow};
use crate::error::{DriverError, Failure};
use crate::namespace::{NamespaceState, NvmeDisk};
use crate::queue::{
    Completed, DataPointer, Health, PAGE_SIZE, QueuePair, QueueShape, SglSupport, ShadowPages,
};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;
use parastor_core::addr::{DeviceAddress, DeviceRange};
use parastor_core::bounce::{AllocError, BouncePool, DmaAllocator, DmaBlock};
use parastor_core::delay::Timer;
use parastor_core::resize::ResizeSignal;
use parastor_core::sync::Mutex;
use parastor_hw::nvme::command::{
    AbortCdw10, AdminOpcode, AsyncEventDw0, AsyncEventType, Cns, CreateCqCdw11, CreateQueueCdw10,
    CreateSqCdw11, GetLogPageCdw10, IdentifyCdw10, SetFeaturesCdw10,
};
use parastor_hw::nvme::features::{
    AsyncEventConfig, FeatureId, HostIdentifierCdw11, NoticeEventInfo, NumberOfQueues,
};
use parastor_hw::nvme::identify::{IDENTIFY_DATA_LEN, IdentifyController, IdentifyNamespace};
use parastor_hw::nvme::log::{CHANGED_NAMESPACE_LIST_OVERFLOW, LogPageId};
use parastor_hw::nvme::queue::Sqe;
use parastor_hw::nvme::regs::{
    Aqa, CAP_CSS_IO_SETS, CAP_CSS_NVM, Cap, Cc, CommandSetSelected, Csts, ShutdownNotification,
    ShutdownStatus, offset,
};
use parastor_hw::nvme::status::StatusWord;
use parastor_hw::pci::config::Command as PciCommand;
use std::sync::OnceLock;
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, FromZeros};

/// How often CSTS is polled while waiting for the controller.
const READY_POLL: Duration = Duration::from_millis(1);
/// The largest transfer of one command the driver builds (also bounded
/// by the controller's MDTS).
pub const DEFAULT_MAX_TRANSFER: usize = 512 * 1024;

/// How the driver sets a controller up.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The most I/O queue pairs: one per CPU, created on the first I/O
    /// from that CPU (CPU `c` uses queue `c % n`). The controller (Set
    /// Features Number of Queues) and the MSI-X vectors (one per queue
    /// plus the admin one) may allow fewer; a CPU whose queue cannot be
    /// created shares the nearest lower one.
    pub io_queues: u16,
    /// Entries per I/O queue (clamped to CAP.MQES + 1).
    pub io_queue_size: u16,
    /// Entries in the admin queues.
    pub admin_queue_size: u16,
    /// PRPs or SGLs.
    pub data_pointer: DataPointer,
    /// Bytes of bounce buffers (for buffers the device cannot reach, and
    /// for small command payloads).
    pub bounce_budget: usize,
    /// The 128-bit host identifier to set (Set Features Host Identifier),
    /// which the controller uses as the reservation holder's identity.
    pub host_id: Option<[u8; 16]>,
    /// The largest transfer per command, in bytes (bounded by MDTS).
    pub max_transfer: usize,
    /// Use shadow doorbells (Doorbell Buffer Config) when the controller
    /// offers them.
    pub shadow_doorbells: bool,
    /// How long an I/O command may stay with the device before the
    /// watchdog ([`NvmeDriver::run_watchdog`]) aborts it; a command still
    /// outstanding this long after its Abort gets the controller reset.
    pub command_timeout: Duration,
    /// How long an admin command may take (the Asynchronous Event Request
    /// excepted); a late one fails, and the controller is reset.
    pub admin_timeout: Duration,
    /// How often the watchdog looks at the controller and the commands.
    pub watchdog_period: Duration,
    /// The longest the driver waits for CSTS.RDY or CSTS.SHST, whatever
    /// CAP.TO says (a hostile CAP.TO says up to 127.5 s).
    pub ready_timeout_cap: Duration,
    /// The monotonic clock for timeouts.
    pub clock: Arc<dyn Clock>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            io_queues: std::thread::available_parallelism()
                .map_or(1, |n| u16::try_from(n.get()).unwrap_or(u16::MAX)),
            io_queue_size: 256,
            admin_queue_size: 32,
            data_pointer: DataPointer::Auto,
            bounce_budget: 4 << 20,
            host_id: None,
            max_transfer: DEFAULT_MAX_TRANSFER,
            shadow_doorbells: true,
            command_timeout: Duration::from_secs(30),
            admin_timeout: Duration::from_secs(60),
            watchdog_period: Duration::from_millis(500),
            ready_timeout_cap: Duration::from_secs(60),
            clock: Arc::new(MonotonicClock::new()),
        }
    }
}

/// The queue a [`NvmeDriver::passthrough`] command goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassthroughQueue {
    /// The admin queue.
    Admin,
    /// The calling thread's I/O queue.
    Io,
}

/// The data of a [`NvmeDriver::passthrough`] command.
#[derive(Debug)]
pub enum PassthroughData<'a> {
    /// No data (the data pointer is zeroed).
    None,
    /// Data the device reads (a write-like command).
    ToDevice(&'a [u8]),
    /// Data the device writes (a read-like command), filled on completion.
    FromDevice(&'a mut [u8]),
}

/// The completion of a [`NvmeDriver::passthrough`] command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawCompletion {
    /// The status field: CQE Dword 3 bits 31:17 (SC, SCT, CRD, M, DNR),
    /// without the phase tag; 0 is success.
    pub status: u16,
    /// Dword 0 (command specific).
    pub dw0: u32,
    /// Dword 1 (command specific).
    pub dw1: u32,
}

/// Admin opcodes a passthrough command may not use: the driver owns the
/// queues, the doorbell buffer and the event request.
const PASSTHROUGH_REFUSED: [u8; 6] = [
    0x00, // Delete I/O Submission Queue
    0x01, // Create I/O Submission Queue
    0x04, // Delete I/O Completion Queue
    0x05, // Create I/O Completion Queue
    0x0C, // Asynchronous Event Request
    0x7C, // Doorbell Buffer Config
];

/// NVM I/O opcodes whose transfer is (NLB + 1) blocks: Write, Read,
/// Compare.
const BLOCK_TRANSFERS: [u8; 3] = [0x01, 0x02, 0x05];

/// What Identify Controller said that the driver uses.
#[derive(Clone, Debug)]
pub struct ControllerFacts {
    /// Controller ID.
    pub cntlid: u16,
    /// PCI vendor ID (Identify Controller VID).
    pub vid: u16,
    /// Serial number (SN), trailing spaces and NULs trimmed, bytes outside
    /// printable ASCII shown as `?`.
    pub serial: String,
    /// Model number (MN), trimmed the same way.
    pub model: String,
    /// Firmware revision (FR), trimmed the same way.
    pub firmware: String,
    /// Number of namespaces (NN).
    pub nn: u32,
    /// Optional NVM command support (ONCS bits).
    pub oncs: u16,
    /// SGL support (Identify Controller SGLS).
    pub sgls: u32,
    /// The largest transfer per command, in bytes.
    pub max_transfer: usize,
    /// Whether the controller has a volatile write cache.
    pub volatile_write_cache: bool,
    /// I/O queue pairs in use.
    pub io_queues: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Running,
    Resetting,
    /// Shut down by the host.
    Stopped,
    /// Failed for good (a hostile or broken device, a failed reset).
    Failed(&'static str),
    /// Saved for servicing with the controller kept running: this
    /// instance no longer touches the device.
    Saved,
}

pub(crate) struct Inner {
    pub(crate) device: Arc<dyn DeviceAccess>,
    config: DriverConfig,
    timer: Arc<dyn Timer>,
    cap: Cap,
    admin: QueuePair,
    /// One position per I/O queue the driver may create (index = QID - 1).
    io: Box<[IoSlot]>,
    /// The shape of a new I/O queue (its QID set at creation).
    io_shape: QueueShape,
    /// The shadow doorbell pages in effect, for queues created later.
    shadow: Mutex<Option<Arc<ShadowPages>>>,
    pub(crate) facts: Mutex<ControllerFacts>,
    /// The SGL support in effect (`SglSupport` as a number), read per I/O.
    sgl: AtomicU8,
    /// I/O queue positions the controller granted, read per I/O.
    io_count: AtomicUsize,
    pub(crate) bounce: BouncePool,
    namespaces: Mutex<BTreeMap<u32, Arc<NamespaceState>>>,
    life: Mutex<Life>,
    resetting: AtomicBool,
    health: Arc<Health>,
    /// The controller was last seen disabled (CC.EN = 0 and CSTS.RDY = 0):
    /// it reaches no memory of the driver's.
    stopped: AtomicBool,
    /// An admin command timed out: the watchdog resets the controller.
    reset_requested: AtomicBool,
    aborts_sent: AtomicU64,
    resets: AtomicU64,

    /// Bumped whenever the namespace set or a namespace's size changes.
    ns_generation: ResizeSignal,
    events_seen: AtomicU64,
}

/// parastor's NVMe driver for one controller. Cheap to clone.
#[derive(Clone)]
pub struct NvmeDriver {
    inner: Arc<Inner>,
}

impl core::fmt::Debug for NvmeDriver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NvmeDriver")
            .field("device", &self.inner.device.id())
            .finish_non_exhaustive()
    }
}

/// Bounce blocks from the device's DMA memory.
struct DeviceDma(Arc<dyn DeviceAccess>);

impl DmaAllocator for DeviceDma {
    fn allocate(&self, len: usize) -> Result<DmaBlock, AllocError> {
        let buf = self.0.alloc_dma(len).map_err(|_| AllocError { len })?;
        let addr = parastor_core::addr::DeviceAddress::new(buf.device_address(0));
        let domain = self.0.dma_domain();
        Ok(DmaBlock::device(
            Box::new(DmaWindow(buf)),
            len,
            domain,
            addr,
        ))
    }
}

/// One I/O queue position: the queue once created, and whether a
/// creation is running or failed.
struct IoSlot {
    queue: OnceLock<QueuePair>,
    /// [`IDLE`], [`CREATING`] or [`UNUSABLE`].
    creating: AtomicU8,
}

/// No creation running; the queue is created on the next use.
const IDLE: u8 = 0;
/// A creation is running: meanwhile I/O uses a fallback queue.
const CREATING: u8 = 1;
/// The queue could not be created (no vector, no DMA memory, the
/// controller refused it): its CPUs share a fallback queue for good.
const UNUSABLE: u8 = 2;

std::thread_local! {
    /// The calling thread's CPU, as far as queue choice goes: the runtime
    /// thread's CPU (runtime threads are pinned), else a per-thread hint
    /// handed out round robin. Assigned on first use.
    static THREAD_CPU: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_HINT: AtomicUsize = AtomicUsize::new(0);

/// A queue pair's memory and slots for `shape`, on the MSI-X vector
/// numbered like the queue (`what` names the step in an error).
fn allocate_queue(
    device: &Arc<dyn DeviceAccess>,
    shape: QueueShape,
    health: &Arc<Health>,
    what: &'static str,
) -> Result<QueuePair, DriverError> {
    let interrupt = device
        .map_interrupt(shape.qid)
        .map_err(DriverError::Device)?;
    QueuePair::new(device.clone(), shape, interrupt, health.clone())
        .map_err(|why| DriverError::Failed { what, why })
}

/// A Create I/O Completion/Submission Queue command for `q`'s ring at
/// `ring` (physically contiguous), with the command's own CDW11.
fn create_queue_sqe(opcode: AdminOpcode, ring: u64, q: &QueuePair, cdw11: u32) -> Sqe {
    let mut sqe = Sqe::new_zeroed();
    sqe.cdw0.set_opc(opcode.get());
    sqe.set_prps(ring, 0);
    sqe.cdw10 = U32::new(
        CreateQueueCdw10::new()
            .with_qid(q.qid())
            .with_qsize(q.size() - 1)
            .into_bits(),
    );
    sqe.cdw11 = U32::new(cdw11);
    sqe
}

/// The calling thread's CPU (see [`THREAD_CPU`]).
fn thread_cpu() -> usize {
    THREAD_CPU.with(|h| {
        let mut v = h.get();
        if v == usize::MAX {
            v = parastor_runtime::current()
                .and_then(|t| t.cpu())
                .unwrap_or_else(|| NEXT_HINT.fetch_add(1, Ordering::Relaxed));
            h.set(v);
        }
        v
    })
}

/// What bring-up and restore share: the PCI function checked and set
/// up, CAP checked, and the sizes the driver uses.
struct Prepared {
    cap: Cap,
    interrupts: u16,
    admin_shape: QueueShape,
    io_shape: QueueShape,
    positions: u16,
    max_transfer: usize,
    bounce: BouncePool,
    health: Arc<Health>,
}

/// Checks the function (an NVMe controller, memory decoding and bus
/// mastering on) and CAP, and works out the queue shapes.
fn prepare(device: &Arc<dyn DeviceAccess>, config: &DriverConfig) -> Result<Prepared, DriverError> {
    // PCI: an NVMe function, memory decoding and bus mastering on.
    let class_dword = device.config_read_u32(0x08);
    let class = [
        (class_dword >> 24) as u8,
        (class_dword >> 16) as u8,
        (class_dword >> 8) as u8,
    ];
    if class != parastor_hw::pci::config::CLASS_CODE_NVME {
        return Err(DriverError::NotNvme { class });
    }
    let cmd_dword = device.config_read_u32(0x04);
    let cmd = PciCommand::from_bits(zerocopy::little_endian::U16::new(cmd_dword as u16))
        .with_memory_space(true)
        .with_bus_master(true);
    device.config_write_u32(
        0x04,
        (cmd_dword & 0xFFFF_0000) | u32::from(cmd.into_bits().get()),
    );

    let cap = Cap::from_bits(zerocopy::little_endian::U64::new(
        device.read_u64(0, offset::CAP),
    ));
    if cap.into_bits().get() == u64::MAX {
        return Err(DriverError::Unsupported(
            "CAP reads as all ones (device gone)",
        ));
    }
    if cap.min_page_size() > PAGE_SIZE as u64 || cap.max_page_size() < PAGE_SIZE as u64 {
        return Err(DriverError::Unsupported(
            "the controller does not support 4 KiB memory pages",
        ));
    }
    if cap.css() & (CAP_CSS_NVM | CAP_CSS_IO_SETS) == 0 {
        return Err(DriverError::Unsupported(
            "the controller supports no I/O command set",
        ));
    }
    let interrupts = device.max_interrupts();
    if interrupts < 2 {
        return Err(DriverError::Unsupported(
            "fewer than two MSI-X vectors (one for admin, one for I/O)",
        ));
    }
    if cap.mqes() == 0 {
        return Err(DriverError::Unsupported(
            "CAP.MQES is 0 (a queue of one entry; the spec's minimum is two)",
        ));
    }
    let mqes = u32::from(cap.mqes()) + 1;
    let admin_size = u32::from(config.admin_queue_size).clamp(2, mqes.min(4096)) as u16;
    let io_size = u32::from(config.io_queue_size).clamp(2, mqes.min(4096)) as u16;
    let max_transfer = config.max_transfer.clamp(PAGE_SIZE, 2 << 20);
    let max_ranges = max_transfer / PAGE_SIZE + 1;
    let dstrd = cap.dstrd();
    let health = Arc::new(Health::new());
    health
        .now_ms
        .store(millis(config.clock.now()), Ordering::Relaxed);
    // One vector per I/O queue besides the admin one.
    let positions = config.io_queues.clamp(1, interrupts - 1);
    let bounce = BouncePool::with_allocator(
        config.bounce_budget.max(PAGE_SIZE),
        Arc::new(DeviceDma(device.clone())),
    );
    // Every command's data fits the bounce budget: a larger request
    // is split, never refused for want of bounce space.
    let max_transfer = max_transfer.min(bounce.max_len()).max(PAGE_SIZE);
    Ok(Prepared {
        cap,
        interrupts,
        admin_shape: QueueShape {
            qid: 0,
            size: admin_size,
            dstrd,
            max_ranges: 2,
            cq_batch: 1,
        },
        io_shape: QueueShape {
            qid: 1,
            size: io_size,
            dstrd,
            max_ranges,
            cq_batch: io_size / 4,
        },
        positions,
        max_transfer,
        bounce,
        health,
    })
}

/// `n` empty I/O queue positions.
fn io_slots(n: u16) -> Box<[IoSlot]> {
    (0..n)
        .map(|_| IoSlot {
            queue: OnceLock::new(),
            creating: AtomicU8::new(IDLE),
        })
        .collect()
}

impl NvmeDriver {
    /// Brings the controller up as Linux's nvme driver does: disable and
    /// wait for RDY=0, program the admin queue, enable with 4 KiB pages
    /// and 64/16-byte entries and wait for RDY=1 (within CAP.TO),
    /// Identify Controller, set the host identifier and the number of
    /// queues, enable namespace-attribute notices, create the I/O
    /// completion queues and then the submission queues, and identify the
    /// active namespaces. `timer` paces the register polling.
    ///
    /// # Errors
    /// A [`DriverError`] saying which step failed and why.
    pub async fn new(
        device: Arc<dyn DeviceAccess>,
        config: DriverConfig,
        timer: Arc<dyn Timer>,
    ) -> Result<Self, DriverError> {
        let p = prepare(&device, &config)?;
        let admin = allocate_queue(&device, p.admin_shape, &p.health, "admin queue allocation")?;
        // The first I/O queue exists from bring-up on (every CPU can fall
        // back to it); the others come on first use.
        let first = allocate_queue(&device, p.io_shape, &p.health, "I/O queue allocation")?;
        let io = io_slots(p.positions);
        if let Some(slot) = io.first() {
            let _ = slot.queue.set(first);
        }
        let facts = ControllerFacts {
            cntlid: 0,
            vid: 0,
            serial: String::new(),
            model: String::new(),
            firmware: String::new(),
            nn: 0,
            oncs: 0,
            sgls: 0,
            max_transfer: p.max_transfer,
            volatile_write_cache: false,
            io_queues: 0,
        };
        let inner = Inner::assemble(device, config, timer, p, admin, io, facts);
        let driver = NvmeDriver { inner };
        let up = async {
            driver.inner.bring_up().await?;
            driver.inner.scan_namespaces().await
        };
        if let Err(e) = up.await {
            driver.inner.fail("bring-up failed");
            return Err(e);
        }
        Ok(driver)
    }

    /// What the controller said about itself.
    pub fn facts(&self) -> ControllerFacts {
        self.inner.facts.lock().clone()
    }

    /// The active namespaces' NSIDs, ascending.
    pub fn namespaces(&self) -> Vec<u32> {
        self.inner
            .namespaces
            .lock()
            .iter()
            .filter(|(_, ns)| !ns.is_removed())
            .map(|(nsid, _)| *nsid)
            .collect()
    }

    /// A disk for active namespace `nsid`.
    ///
    /// # Errors
    /// [`DriverError::NoNamespace`] if it is not active.
    pub fn namespace(&self, nsid: u32) -> Result<NvmeDisk, DriverError> {
        let ns = self
            .inner
            .namespaces
            .lock()
            .get(&nsid)
            .filter(|ns| !ns.is_removed())
            .cloned()
            .ok_or(DriverError::NoNamespace(nsid))?;
        Ok(NvmeDisk::new(self.inner.clone(), ns))
    }

    /// A counter bumped whenever the driver learns that namespaces
    /// changed (added, removed, resized); see
    /// [`NvmeDriver::wait_namespace_change`].
    pub fn namespace_generation(&self) -> u64 {
        self.inner.ns_generation.get()
    }

    /// Completes once the namespace generation differs from `known`.
    pub async fn wait_namespace_change(&self, known: u64) -> u64 {
        self.inner.ns_generation.wait(known).await
    }

    /// Asynchronous events completed by the controller so far.
    pub fn events_seen(&self) -> u64 {
        self.inner.events_seen.load(Ordering::Relaxed)
    }

    /// I/O commands given to the device and not yet completed, over all
    /// I/O queues.
    pub fn outstanding(&self) -> usize {
        self.inner.io_queues().map(QueuePair::outstanding).sum()
    }

    /// Completions the driver refused (unknown or stale command ids),
    /// over all queues.
    pub fn refused_completions(&self) -> u64 {
        self.inner.admin.refused_completions()
            + self
                .inner
                .io_queues()
                .map(QueuePair::refused_completions)
                .sum::<u64>()
    }

    /// Keeps one Asynchronous Event Request outstanding and handles what
    /// it reports: on a namespace-attribute notice, reads the Changed
    /// Namespace List and rescans those namespaces (new ones appear,
    /// resized ones wake their disks' `wait_resize`, removed ones fail
    /// their I/O). The driver has no task of its own: the host runs this
    /// future for as long as the driver lives. It ends when the driver is
    /// shut down or the controller refuses the request.
    pub async fn run_async_events(&self) {
        let inner = &self.inner;
        loop {
            if matches!(
                *inner.life.lock(),
                Life::Stopped | Life::Saved | Life::Failed(_)
            ) {
                return;
            }
            match inner.async_event().await {
                Ok(done) => {
                    inner.events_seen.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = inner.handle_event(done.dw0).await {
                        log::warn!("{}: asynchronous event: {e}", inner.device.id());
                    }
                }
                Err(DriverError::Failed {
                    why: Failure::Reset,
                    ..
                }) => {}
                Err(e) => {
                    log::warn!("{}: asynchronous events stop: {e}", inner.device.id());
                    return;
                }
            }
        }
    }

    /// Resets the controller (CC.EN 1 → 0) and brings it up again.
    /// Commands outstanding at the reset are failed once the controller
    /// is disabled (so their buffers are free of the device) and retried
    /// by the disks (up to a bound); new commands wait until the queues
    /// exist again.
    ///
    /// # Errors
    /// The step that failed; the controller is then failed for good.
    pub async fn reset(&self) -> Result<(), DriverError> {
        self.inner.reset().await
    }

    /// Shuts the controller down: new commands fail, a normal shutdown
    /// notification is sent and awaited (within CAP.TO, capped by
    /// [`DriverConfig::ready_timeout_cap`]), and the controller is
    /// disabled; commands still outstanding then fail.
    ///
    /// # Errors
    /// If the controller did not report shutdown complete in time (it is
    /// disabled anyway).
    pub async fn shutdown(&self) -> Result<(), DriverError> {
        let inner = &self.inner;
        {
            let mut life = inner.life.lock();
            if !matches!(*life, Life::Failed(_)) {
                *life = Life::Stopped;
            }
        }
        // Nothing new; what the device has may still complete during the
        // shutdown.
        inner.admin.close();
        for q in inner.io_queues() {
            q.close();
        }
        let cc = inner.cc();
        inner.write_cc(cc.with_shn(ShutdownNotification::NORMAL));
        let deadline = inner.deadline();
        let limit = inner.poll_limit();
        let mut polls = 0;
        let result = loop {
            let csts = inner.csts();
            if csts.into_bits().get() == u32::MAX {
                break Err(DriverError::Unsupported(
                    "CSTS reads as all ones (device gone)",
                ));
            }
            if csts.shst() == ShutdownStatus::COMPLETE {
                break Ok(());
            }
            if polls >= limit || inner.clock_now() >= deadline {
                break Err(DriverError::Timeout {
                    ready: false,
                    timeout_ms: inner.timeout_ms(),
                });
            }
            polls += 1;
            inner.timer.sleep(READY_POLL).await;
        };
        let cc = inner.cc();
        inner.write_cc(cc.with_en(false).with_shn(ShutdownNotification::NONE));
        let stopped = inner.wait_ready(false).await.is_ok();
        let why = Failure::Gone("driver shut down");
        inner.admin.kill(why);
        for q in inner.io_queues() {
            q.kill(why);
        }
        if stopped {
            inner.release_held();
        } else {
            inner.give_up_held();
        }
        result
    }

    /// Watches the controller and its commands, every
    /// [`DriverConfig::watchdog_period`] (and at once when a queue refuses
    /// a completion): a command older than [`DriverConfig::command_timeout`]
    /// gets an Abort; one still outstanding a timeout after its Abort, or
    /// an admin command that timed out, gets the controller reset; a reset
    /// that fails, CSTS.CFS, registers reading all ones (surprise removal)
    /// or a refused completion fail the controller. After a failure it
    /// tries to prove the device stopped (CC.EN = 0 and RDY = 0, else a
    /// function reset) so that the buffers of the commands the device had
    /// can be released; if neither works they stay held
    /// ([`NvmeDriver::held_commands`]). Callers of direct commands the
    /// device had are answered with that proof, or when it gives up on it
    /// (then the device may still write their memory).
    ///
    /// The driver has no task of its own: the host runs this future for
    /// as long as the driver lives (without it commands have no timeout,
    /// a failure is noticed only by the commands that see it, and the
    /// callers of direct commands failed on a device that did not stop at
    /// once are not answered). It ends when the driver is shut down or
    /// failed.
    pub async fn run_watchdog(&self) {
        let inner = &self.inner;
        loop {
            WatchdogWait {
                sleep: inner.timer.sleep(inner.config.watchdog_period),
                health: &inner.health,
            }
            .await;
            match *inner.life.lock() {
                Life::Stopped | Life::Saved => return,
                Life::Failed(_) => break,
                Life::Running | Life::Resetting => {}
            }
            let now = inner.tick();
            if let Some(why) = inner.health.violation() {
                inner.fail(why);
                break;
            }
            let csts = inner.csts();
            if csts.into_bits().get() == u32::MAX {
                inner.fail("registers read as all ones (surprise removal)");
                break;
            }
            if csts.cfs() {
                inner.fail("controller fatal status (CSTS.CFS)");
                break;
            }
            if inner.resetting.load(Ordering::Acquire) {
                continue;
            }
            let timeout = millis(inner.config.command_timeout).max(1);
            let mut reset = inner.reset_requested.swap(false, Ordering::AcqRel);
            'scan: for q in inner.io_queues() {
                let expired = q.scan_expired(now, timeout);
                reset |= expired.reset;
                for &cid in expired.abort.as_slice() {
                    log::warn!(
                        "{}: command {cid:#x} on queue {} timed out; aborting it",
                        inner.device.id(),
                        q.qid()
                    );
                    inner.aborts_sent.fetch_add(1, Ordering::Relaxed);
                    match inner.abort(q.qid(), cid).await {
                        // Aborted or not, the command's own completion
                        // (or the next scan) tells; a reset that cut the
                        // Abort short ends the command anyway.
                        Ok(_)
                        | Err(DriverError::Command { .. })
                        | Err(DriverError::Failed {
                            why: Failure::Reset,
                            ..
                        }) => {}
                        // The Abort itself got no answer (or no admin
                        // slot): more Aborts would only wait as long
                        // again; the reset ends every command.
                        Err(_) => {
                            reset = true;
                            break 'scan;
                        }
                    }
                }
            }
            if reset {
                log::warn!(
                    "{}: commands outlived their Abort (or an admin command timed out); resetting the controller",
                    inner.device.id()
                );
                // A reset that fails fails the controller (seen at the
                // top of the loop); one refused because another reset
                // (the host's) is running leaves the outcome to that one.
                // Either way the watchdog keeps watching while the driver
                // runs.
                if let Err(e) = inner.reset().await {
                    log::debug!("{}: watchdog reset: {e}", inner.device.id());
                }
            }
        }
        inner.settle().await;
    }

    /// Runs one raw command (for differential tests and tools): the driver
    /// fills in the command identifier, the data pointer and the metadata
    /// pointer; every other field is sent as given. Whatever `data` is,
    /// the command gets a DMA buffer of the driver's own of
    /// [`ControllerFacts::max_transfer`] bytes (PRPs over all of it, the
    /// metadata pointer at its start), copied from or to `data`: the
    /// driver cannot know how much every opcode moves, and so a command
    /// that moves more than `data` (or moves data though `data` is
    /// [`PassthroughData::None`]) still only touches driver memory. Admin
    /// commands that manage queues, the doorbell buffer or asynchronous
    /// events are refused (the driver owns those).
    ///
    /// Any completion, whatever its status, is `Ok`.
    ///
    /// # Errors
    /// [`DriverError::Unsupported`] for a refused opcode, data larger
    /// than [`ControllerFacts::max_transfer`], or a Read, Write or Compare
    /// whose block count moves more than that (at the namespace's block
    /// size, 512 bytes for an NSID the driver does not know);
    /// [`DriverError::Failed`]
    /// when no completion comes: not within [`DriverConfig::admin_timeout`]
    /// (admin) or [`DriverConfig::command_timeout`] (I/O) — the
    /// controller is then reset — or the controller failed.
    pub async fn passthrough(
        &self,
        queue: PassthroughQueue,
        mut sqe: Sqe,
        data: PassthroughData<'_>,
    ) -> Result<RawCompletion, DriverError> {
        let inner = &*self.inner;
        let what = "passthrough command";
        let failed = |why| DriverError::Failed { what, why };
        if queue == PassthroughQueue::Admin && PASSTHROUGH_REFUSED.contains(&sqe.cdw0.opc()) {
            return Err(DriverError::Unsupported(
                "passthrough of a queue, doorbell buffer or event request command",
            ));
        }
        let len = match &data {
            PassthroughData::None => 0,
            PassthroughData::ToDevice(b) => b.len(),
            PassthroughData::FromDevice(b) => b.len(),
        };
        let max_transfer = inner.facts.lock().max_transfer;
        if len > max_transfer {
            return Err(DriverError::Unsupported(
                "passthrough data larger than the maximum transfer",
            ));
        }
        // What the command moves, as far as the driver knows: the data
        // given, or what a Read, Write or Compare's block count says.
        let mut moves = len;
        if queue == PassthroughQueue::Io && BLOCK_TRANSFERS.contains(&sqe.cdw0.opc()) {
            let shift = inner
                .namespaces
                .lock()
                .get(&sqe.nsid.get())
                .map_or(9, |ns| ns.sector_shift());
            let blocks = u64::from(sqe.cdw12.get() & 0xFFFF) + 1;
            let bytes = blocks << shift;
            if bytes > max_transfer as u64 {
                return Err(DriverError::Unsupported(
                    "passthrough Read, Write or Compare moving more than the maximum transfer",
                ));
            }
            moves = moves.max(bytes as usize);
        }
        // The PRPs describe what the command moves (PRP2 means a data
        // page or a list by that length); the rest of the buffer is
        // filled with the address of its last page, so a device that
        // moves more than it should — follows PRP2 as a list, a list
        // entry, the metadata pointer — still only reaches this buffer.
        let total = max_transfer.next_multiple_of(PAGE_SIZE);
        let described = moves.next_multiple_of(PAGE_SIZE).clamp(PAGE_SIZE, total);
        let buf = inner.dma(total)?;
        let spare = buf.device_address(total - PAGE_SIZE);
        if described < total {
            let fill: Vec<u8> = core::iter::repeat_n(spare.to_le_bytes(), (total - described) / 8)
                .flatten()
                .collect();
            buf.write_at(described, &fill)
                .map_err(|e| failed(Failure::Memory(e)))?;
        }
        sqe.dptr = [0; 16];
        sqe.mptr = zerocopy::little_endian::U64::new(spare);
        sqe.cdw0
            .set_psdt(parastor_hw::nvme::queue::DataTransferKind::PRP);
        if let PassthroughData::ToDevice(src) = &data {
            buf.write_at(0, src)
                .map_err(|e| failed(Failure::Memory(e)))?;
        }
        let q = match queue {
            PassthroughQueue::Admin => &inner.admin,
            PassthroughQueue::Io => match inner.io_queue() {
                Ok(q) => q,
                Err(index) => inner.io_queue_slow(index).await.map_err(failed)?,
            },
        };
        let timeout = match queue {
            PassthroughQueue::Admin => inner.config.admin_timeout,
            PassthroughQueue::Io => inner.config.command_timeout,
        };
        let Some(slot) = inner.bounded(q.reserve(), timeout).await else {
            log::warn!("{}: {what} found no free slot in time", inner.device.id());
            inner.reset_requested.store(true, Ordering::Release);
            return Err(failed(Failure::TimedOut));
        };
        let mut slot = slot.map_err(failed)?;
        slot.prepare_contiguous(
            &mut sqe,
            DeviceRange::new(buf.device_range().addr, described as u64),
            None,
            DataPointer::Prp,
            SglSupport::None,
        )
        .map_err(failed)?;
        if described == PAGE_SIZE {
            // One page described: PRP2 is unused by a command that moves
            // no more, and must not be 0 for one that does.
            sqe.set_prps(buf.device_address(0), spare);
        }
        slot.keep(buf.clone());
        slot.submit(sqe).map_err(failed)?;
        let Some(finished) = inner.bounded(slot, timeout).await else {
            log::warn!("{}: {what} timed out", inner.device.id());
            inner.reset_requested.store(true, Ordering::Release);
            return Err(failed(Failure::TimedOut));
        };
        let done = finished.result.map_err(|f| failed(inner.note(f)))?;
        if let PassthroughData::FromDevice(dst) = data {
            buf.read_at(0, dst)
                .map_err(|e| failed(Failure::Memory(e)))?;
        }
        Ok(RawCompletion {
            status: done.status,
            dw0: done.dw0,
            dw1: done.dw1,
        })
    }

    /// Saves like [`NvmeDriver::save`], after letting the I/O in flight
    /// finish: every I/O queue's gate closes (new commands wait; after the
    /// save they fail like any command on a saved driver), and once no I/O
    /// command is outstanding — within [`DriverConfig::command_timeout`]
    /// — the driver is saved. No command's owner is then failed while the
    /// device still has its command, so no guest memory is touched after
    /// its owner got an answer.
    ///
    /// # Errors
    /// As [`NvmeDriver::save`]; [`DriverError::Failed`] with
    /// [`Failure::TimedOut`] if I/O is still outstanding at the timeout
    /// (the gates open again and nothing is saved).
    pub async fn quiesce_and_save(&self) -> Result<Vec<u8>, DriverError> {
        let inner = &*self.inner;
        let what = "quiesce for save";
        {
            let life = inner.life.lock();
            if *life != Life::Running || inner.resetting.load(Ordering::Acquire) {
                return Err(DriverError::Unsupported(
                    "only a running controller can be saved",
                ));
            }
            for q in inner.io_queues() {
                q.close();
            }
        }
        let drained = inner
            .bounded(
                core::pin::pin!(async {
                    while self.outstanding() > 0 {
                        inner.timer.sleep(READY_POLL).await;
                    }
                }),
                inner.config.command_timeout,
            )
            .await
            .is_some();
        // A reset meanwhile opened (or is about to open) the gates: the
        // save below refuses.
        if drained && self.outstanding() == 0 {
            match self.save() {
                Ok(blob) => return Ok(blob),
                Err(e) => {
                    self.reopen_after_quiesce();
                    return Err(e);
                }
            }
        }
        self.reopen_after_quiesce();
        Err(DriverError::Failed {
            what,
            why: Failure::TimedOut,
        })
    }

    /// Opens the I/O gates [`NvmeDriver::quiesce_and_save`] closed, if the
    /// controller still runs and no reset owns them.
    fn reopen_after_quiesce(&self) {
        let inner = &*self.inner;
        let life = inner.life.lock();
        if *life == Life::Running && !inner.resetting.load(Ordering::Acquire) {
            let count = inner.io_count.load(Ordering::Acquire);
            for q in inner.io_queues().take(count) {
                q.open();
            }
        }
    }

    /// Saves the driver for servicing with the controller kept running
    /// (see [`crate::state`]): freezes every queue (commands the device
    /// has fail for their owners here, and are taken over by the
    /// restored instance), and describes queues, commands and what the
    /// controller said. From then on this instance touches neither the
    /// device nor its DMA memory, also when dropped.
    ///
    /// A command in flight here fails to its owner while the device still
    /// runs it: with a bounce buffer that is safe (the buffer is the
    /// restored instance's), but a direct command's data may still be
    /// read from or written to the owner's memory after the owner got the
    /// error. Use [`NvmeDriver::quiesce_and_save`] unless no I/O can be in
    /// flight (or every owner keeps its buffers until the device is
    /// proven stopped).
    ///
    /// # Errors
    /// [`DriverError::Unsupported`] if the controller is not running (a
    /// reset in progress, shut down or failed); [`DriverError::State`] if
    /// the state cannot be encoded.
    pub fn save(&self) -> Result<Vec<u8>, DriverError> {
        let inner = &*self.inner;
        {
            let mut life = inner.life.lock();
            if *life != Life::Running || inner.resetting.load(Ordering::Acquire) {
                return Err(DriverError::Unsupported(
                    "only a running controller can be saved",
                ));
            }
            *life = Life::Saved;
        }
        let admin = inner.admin.freeze();
        let io = inner.io_queues().map(QueuePair::freeze).collect();
        let shadow = inner
            .shadow
            .lock()
            .as_ref()
            .map(|p| (p.doorbells.device_address(0), p.event_idx.device_address(0)));
        let f = inner.facts.lock().clone();
        let saved = crate::state::DriverV1 {
            cap: inner.cap.into_bits().get(),
            facts: crate::state::FactsV1 {
                cntlid: f.cntlid,
                vid: f.vid,
                serial: f.serial,
                model: f.model,
                firmware: f.firmware,
                nn: f.nn,
                oncs: f.oncs,
                sgls: f.sgls,
                max_transfer: f.max_transfer as u64,
                volatile_write_cache: f.volatile_write_cache,
                io_queues: f.io_queues,
            },
            admin,
            io,
            io_count: inner.io_count.load(Ordering::Acquire) as u16,
            shadow,
        };
        saved
            .encode()
            .map_err(|e| DriverError::State(alloc::format!("{e:?}")))
    }

    /// Takes over a controller that kept running across servicing, from
    /// what [`NvmeDriver::save`] wrote: re-attaches the queues and the
    /// memory of the commands saved in flight, waits for those commands
    /// to complete (within [`DriverConfig::command_timeout`]; else the
    /// controller is reset) before any new I/O starts, and identifies the
    /// namespaces again. The saved Asynchronous Event Request is adopted
    /// by the next [`NvmeDriver::run_async_events`].
    ///
    /// # Errors
    /// [`DriverError::State`] for a damaged or foreign blob or a value
    /// that does not fit the device (CAP changed, a queue or address the
    /// device does not have); [`DriverError::Unsupported`] when the
    /// controller is not running or DMA memory cannot be re-attached.
    pub async fn restore(
        device: Arc<dyn DeviceAccess>,
        config: DriverConfig,
        timer: Arc<dyn Timer>,
        blob: &[u8],
    ) -> Result<Self, DriverError> {
        let state_err = |e: &dyn core::fmt::Display| DriverError::State(alloc::format!("{e}"));
        let saved = crate::state::DriverV1::decode(blob).map_err(|e| state_err(&e))?;
        let p = prepare(&device, &config)?;
        if p.cap.into_bits().get() != saved.cap {
            return Err(DriverError::State(String::from(
                "cap: the controller's CAP differs from the saved one",
            )));
        }
        let cc = Cc::from_bits(U32::new(device.read_u32(0, offset::CC)));
        let csts = Csts::from_bits(U32::new(device.read_u32(0, offset::CSTS)));
        if csts.into_bits().get() == u32::MAX || !cc.en() || !csts.rdy() || csts.cfs() {
            return Err(DriverError::Unsupported(
                "the controller is not running (CC.EN, CSTS.RDY, CSTS.CFS)",
            ));
        }
        parastor_core::state::check_count("io", saved.io.len(), crate::state::MAX_SAVED_QUEUES)
            .map_err(|e| state_err(&e))?;
        let attach = |addr: u64, len: u64| {
            device
                .attach_dma(DeviceRange::new(DeviceAddress::new(addr), len))
                .map_err(DriverError::Device)
        };
        // Memory attached so far is the running device's: if the restore
        // fails half-way it is leaked, never handed back for reuse.
        let leak = |bufs: Vec<DmaBuffer>| bufs.into_iter().for_each(DmaBuffer::leave_to_device);
        let rebuild = |q: &crate::state::QueueV1,
                       shape: QueueShape|
         -> Result<QueuePair, DriverError> {
            let cq_batch = shape.cq_batch.clamp(1, q.size.max(2) / 2);
            let slots_n = usize::from(q.size.saturating_sub(cq_batch)).min(crate::queue::MAX_SLOTS);
            q.check(slots_n)
                .map_err(|e| state_err(&e.within(&alloc::format!("queue {}", q.qid))))?;
            let interrupt = device.map_interrupt(q.qid).map_err(DriverError::Device)?;
            let size = u64::from(q.size);
            let mut attached = Vec::new();
            let ranges = [
                (q.sq, (size * 64).div_ceil(4096) * 4096),
                (q.cq, (size * 16).div_ceil(4096) * 4096),
                (q.lists, slots_n as u64 * 4096),
            ];
            let command_ranges = q.commands.iter().filter_map(|c| c.memory);
            for (addr, len) in ranges.into_iter().chain(command_ranges) {
                match attach(addr, len) {
                    Ok(b) => attached.push(b),
                    Err(e) => {
                        leak(attached);
                        return Err(e);
                    }
                }
            }
            let mut attached = attached.into_iter();
            let (Some(sq), Some(cq), Some(lists)) =
                (attached.next(), attached.next(), attached.next())
            else {
                return Err(DriverError::State(String::from("queue rings")));
            };
            let memory = q
                .commands
                .iter()
                .map(|c| c.memory.and_then(|_| attached.next()).map(Arc::new))
                .collect();
            QueuePair::restore(
                device.clone(),
                q,
                shape.dstrd,
                shape.max_ranges,
                shape.cq_batch,
                interrupt,
                p.health.clone(),
                [sq, cq, lists],
                memory,
            )
            .map_err(|e| state_err(&e.within(&alloc::format!("queue {}", q.qid))))
        };
        if saved.admin.qid != 0 {
            return Err(DriverError::State(String::from("admin.qid: not 0")));
        }
        let highest = saved.io.iter().map(|q| q.qid).max().unwrap_or(1);
        if saved.io.iter().any(|q| q.qid == 0) || highest >= p.interrupts {
            return Err(DriverError::State(String::from(
                "io.qid: a queue the device has no vector for",
            )));
        }
        let mut admin = rebuild(&saved.admin, p.admin_shape)?;
        let mut io = io_slots(p.positions.max(highest));
        let mut failure = None;
        for q in &saved.io {
            let placed = rebuild(
                q,
                QueueShape {
                    qid: q.qid,
                    ..p.io_shape
                },
            )
            .and_then(|mut queue| {
                let free = io
                    .get(usize::from(q.qid) - 1)
                    .filter(|slot| slot.queue.get().is_none());
                match free {
                    Some(slot) => {
                        // Empty (just checked): the set succeeds.
                        let _ = slot.queue.set(queue);
                        Ok(())
                    }
                    None => {
                        queue.leak_dma();
                        Err(DriverError::State(String::from(
                            "io.qid: named twice or out of range",
                        )))
                    }
                }
            });
            if let Err(e) = placed {
                failure = Some(e);
                break;
            }
        }
        if failure.is_none() && io.first().and_then(|s| s.queue.get()).is_none() {
            failure = Some(DriverError::State(String::from("io: no queue 1")));
        }
        if let Some(e) = failure {
            admin.leak_dma();
            for slot in io.iter_mut() {
                if let Some(q) = slot.queue.get_mut() {
                    q.leak_dma();
                }
            }
            return Err(e);
        }
        let f = &saved.facts;
        let facts = ControllerFacts {
            cntlid: f.cntlid,
            vid: f.vid,
            serial: f.serial.clone(),
            model: f.model.clone(),
            firmware: f.firmware.clone(),
            nn: f.nn,
            oncs: f.oncs,
            sgls: f.sgls,
            max_transfer: usize::try_from(f.max_transfer)
                .unwrap_or(usize::MAX)
                .clamp(PAGE_SIZE, p.max_transfer),
            volatile_write_cache: f.volatile_write_cache,
            io_queues: f.io_queues,
        };
        let sgl = (f.sgls & 3) as u8;
        let io_count = usize::from(saved.io_count).clamp(1, io.len());
        let inner = Inner::assemble(device.clone(), config, timer, p, admin, io, facts);
        inner.sgl.store(sgl, Ordering::Relaxed);
        inner.io_count.store(io_count, Ordering::Release);
        if let Some((doorbells, event_idx)) = saved.shadow {
            let pages = Arc::new(ShadowPages {
                doorbells: attach(doorbells, PAGE_SIZE as u64)?,
                event_idx: attach(event_idx, PAGE_SIZE as u64)?,
            });
            let stride = inner.cap.doorbell_stride() as usize;
            for q in inner.io_queues() {
                q.use_shadow(&pages, stride);
            }
            *inner.shadow.lock() = Some(pages);
        }
        let driver = NvmeDriver { inner };
        let inner = &*driver.inner;
        // Drain after restore: the commands saved in flight complete
        // before new I/O may overtake them.
        inner.admin.open();
        let drained = inner
            .bounded(RestoredDrain { inner }, inner.config.command_timeout)
            .await;
        if drained.is_none() {
            log::warn!(
                "{}: commands saved in flight did not complete; resetting the controller",
                inner.device.id()
            );
            inner.reset().await?;
        } else {
            for q in inner.io_queues() {
                q.open();
            }
        }
        inner.scan_namespaces().await?;
        Ok(driver)
    }

    /// Whether the controller failed for good (every I/O fails).
    pub fn is_failed(&self) -> bool {
        matches!(*self.inner.life.lock(), Life::Failed(_))
    }

    /// Why the controller failed, if it did.
    pub fn failure(&self) -> Option<&'static str> {
        match *self.inner.life.lock() {
            Life::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// Commands whose buffers the driver holds because they failed while
    /// the device had them and the device was not (yet) proven stopped:
    /// their memory is kept from reuse, deliberately leaked if the device
    /// never stops.
    pub fn held_commands(&self) -> usize {
        self.inner.admin.held() + self.inner.io_queues().map(QueuePair::held).sum::<usize>()
    }

    /// The most bytes the bounce pool has held at once. One-page bounces
    /// go through their command slot's own page and never reach the pool.
    pub fn bounce_pool_high_water(&self) -> usize {
        self.inner.bounce.high_water()
    }

    /// I/O queue pairs created so far (the first at bring-up, the others
    /// on the first I/O from their CPU).
    pub fn io_queues_created(&self) -> usize {
        self.inner.io_queues().count()
    }

    /// Abort commands the watchdog sent so far.
    pub fn aborts_sent(&self) -> u64 {
        self.inner.aborts_sent.load(Ordering::Relaxed)
    }

    /// Controller resets so far (by the host or the watchdog).
    pub fn resets(&self) -> u64 {
        self.inner.resets.load(Ordering::Relaxed)
    }
}

/// Dropped with `armed`: a reset's future was dropped half-way (the
/// queues are closed, the controller in an unknown state). The reset is
/// asked for again, for the next watchdog (or [`NvmeDriver::reset`]) to
/// start over.
struct ResetAbandoned<'a> {
    inner: &'a Inner,
    armed: bool,
}

impl Drop for ResetAbandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.resetting.store(false, Ordering::Release);
            self.inner.reset_requested.store(true, Ordering::Release);
        }
    }
}

/// Waits until every queue's commands saved in flight have completed.
struct RestoredDrain<'a> {
    inner: &'a Inner,
}

impl core::future::Future for RestoredDrain<'_> {
    type Output = ();

    fn poll(
        self: core::pin::Pin<&mut Self>,
        cx: &mut core::task::Context<'_>,
    ) -> core::task::Poll<()> {
        let mut done = self.inner.admin.poll_restored(cx).is_ready();
        for q in self.inner.io_queues() {
            done &= q.poll_restored(cx).is_ready();
        }
        if done {
            core::task::Poll::Ready(())
        } else {
            core::task::Poll::Pending
        }
    }
}

/// The watchdog's wait: its period, or a queue's violation report.
struct WatchdogWait<'a> {
    sleep: parastor_core::disk::BoxFuture<'static, ()>,
    health: &'a Health,
}

impl core::future::Future for WatchdogWait<'_> {
    type Output = ();

    fn poll(
        mut self: core::pin::Pin<&mut Self>,
        cx: &mut core::task::Context<'_>,
    ) -> core::task::Poll<()> {
        self.health.register_watchdog(cx.waker());
        if self.health.violation().is_some() {
            return core::task::Poll::Ready(());
        }
        self.sleep.as_mut().poll(cx)
    }
}

/// A future bounded by a deadline on the driver's clock: `None` if the
/// clock passes `deadline` first. Sleeps `step` at a time.
struct Bounded<'a, F> {
    fut: F,
    /// The current step's sleep, made when `fut` first waits (a future
    /// ready at once costs no timer).
    sleep: Option<parastor_core::disk::BoxFuture<'static, ()>>,
    timer: &'a dyn Timer,
    clock: &'a dyn Clock,
    deadline: Duration,
    step: Duration,
}

impl<F: core::future::Future + Unpin> core::future::Future for Bounded<'_, F> {
    type Output = Option<F::Output>;

    fn poll(
        mut self: core::pin::Pin<&mut Self>,
        cx: &mut core::task::Context<'_>,
    ) -> core::task::Poll<Self::Output> {
        use core::task::Poll;
        let this = &mut *self;
        if let Poll::Ready(v) = core::pin::Pin::new(&mut this.fut).poll(cx) {
            return Poll::Ready(Some(v));
        }
        let (timer, step) = (this.timer, this.step);
        let sleep = this.sleep.get_or_insert_with(|| timer.sleep(step));
        while sleep.as_mut().poll(cx).is_ready() {
            if this.clock.now() >= this.deadline {
                return Poll::Ready(None);
            }
            *sleep = timer.sleep(step);
        }
        Poll::Pending
    }
}

impl Inner {
    /// The driver's shared state over queues built by bring-up or restore.
    fn assemble(
        device: Arc<dyn DeviceAccess>,
        config: DriverConfig,
        timer: Arc<dyn Timer>,
        p: Prepared,
        admin: QueuePair,
        io: Box<[IoSlot]>,
        facts: ControllerFacts,
    ) -> Arc<Inner> {
        Arc::new(Inner {
            device,
            config,
            timer,
            cap: p.cap,
            admin,
            io,
            io_shape: p.io_shape,
            shadow: Mutex::new(None),
            facts: Mutex::new(facts),
            sgl: AtomicU8::new(0),
            io_count: AtomicUsize::new(1),
            bounce: p.bounce,
            namespaces: Mutex::new(BTreeMap::new()),
            life: Mutex::new(Life::Running),
            resetting: AtomicBool::new(false),
            health: p.health,
            stopped: AtomicBool::new(false),
            reset_requested: AtomicBool::new(false),
            aborts_sent: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            ns_generation: ResizeSignal::new(0),
            events_seen: AtomicU64::new(0),
        })
    }
}

impl Drop for Inner {
    /// The last handle is gone. A controller not known to be stopped is
    /// disabled; if it does not report RDY = 0 at once it may still write
    /// the driver's memory, so the rings, list pages and the buffers of
    /// commands it may hold are leaked on purpose rather than handed back
    /// for reuse. The pins of caller memory (direct I/O) are released;
    /// that protects nothing from such a device: under VFIO guest RAM
    /// stays mapped for the device's whole life (a pin there does
    /// nothing), so direct mode trusts the device with guest RAM.
    fn drop(&mut self) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        // Saved for servicing: the controller runs on for the next
        // instance, which takes this memory over.
        let saved = *self.life.get_mut() == Life::Saved;
        if saved {
            if let Some(pages) = self.shadow.get_mut().take() {
                crate::queue::leave_shadow(pages);
            }
            self.admin.leak_dma();
            for slot in self.io.iter_mut() {
                if let Some(q) = slot.queue.get_mut() {
                    q.leak_dma();
                }
            }
            return;
        }
        let cc = self.cc();
        if cc.into_bits().get() != u32::MAX && cc.en() {
            self.write_cc(cc.with_en(false));
        }
        let csts = self.csts();
        if csts.into_bits().get() != u32::MAX && !csts.rdy() {
            return;
        }
        log::error!(
            "{}: dropped while the device may still use its memory: its DMA memory is leaked",
            self.device.id()
        );
        if let Some(pages) = self.shadow.get_mut().take() {
            crate::queue::leave_shadow(pages);
        }
        self.admin.leak_dma();
        for slot in self.io.iter_mut() {
            if let Some(q) = slot.queue.get_mut() {
                q.leak_dma();
            }
        }
    }
}

/// An Identify Controller text field (ASCII, space padded) as text: the
/// padding (spaces, and NULs a careless device uses) trimmed, anything
/// outside printable ASCII shown as `?` (the device is untrusted).
fn identity_text(raw: &[u8]) -> String {
    let end = raw
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    raw.get(..end)
        .unwrap_or(&[])
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

/// `d` in whole milliseconds (saturating).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Inner {
    fn cc(&self) -> Cc {
        Cc::from_bits(U32::new(self.device.read_u32(0, offset::CC)))
    }

    fn write_cc(&self, cc: Cc) {
        self.device.write_u32(0, offset::CC, cc.into_bits().get());
    }

    fn csts(&self) -> Csts {
        Csts::from_bits(U32::new(self.device.read_u32(0, offset::CSTS)))
    }

    fn clock_now(&self) -> Duration {
        self.config.clock.now()
    }

    /// Copies the clock into the coarse counter commands are stamped
    /// with; returns it.
    fn tick(&self) -> u64 {
        let now = millis(self.clock_now());
        self.health.now_ms.fetch_max(now, Ordering::Relaxed);
        now
    }

    /// CAP.TO in milliseconds, capped by the configuration.
    fn timeout_ms(&self) -> u64 {
        (u64::from(self.cap.to().max(1)) * 500).min(millis(self.config.ready_timeout_cap).max(1))
    }

    /// When a wait for the controller that starts now must end.
    fn deadline(&self) -> Duration {
        self.clock_now()
            .saturating_add(Duration::from_millis(self.timeout_ms()))
    }

    /// How many [`READY_POLL`] sleeps a wait may take (a bound that holds
    /// even with a timer whose sleeps end at once).
    fn poll_limit(&self) -> u64 {
        self.timeout_ms() / READY_POLL.as_millis() as u64
    }

    /// Waits for CSTS.RDY to become `ready`, within CAP.TO.
    async fn wait_ready(&self, ready: bool) -> Result<(), DriverError> {
        let limit = self.poll_limit();
        let deadline = self.deadline();
        let mut polls = 0;
        loop {
            let csts = self.csts();
            if csts.into_bits().get() == u32::MAX {
                return Err(DriverError::Unsupported(
                    "CSTS reads as all ones (device gone)",
                ));
            }
            if ready && csts.cfs() {
                return Err(DriverError::Fatal);
            }
            if csts.rdy() == ready {
                self.stopped.store(!ready, Ordering::Release);
                return Ok(());
            }
            if polls >= limit || self.clock_now() >= deadline {
                return Err(DriverError::Timeout {
                    ready,
                    timeout_ms: self.timeout_ms(),
                });
            }
            polls += 1;
            self.timer.sleep(READY_POLL).await;
        }
    }

    /// Fails the controller for good: every queue refuses new commands
    /// and fails the ones the device has (holding their buffers), and the
    /// controller is disabled (CC.EN = 0). If it reports RDY = 0 at once,
    /// the held buffers are released; otherwise [`Inner::settle`] (the
    /// watchdog) keeps trying. Callers of direct commands (their own
    /// memory pinned, no bounce buffer) get their error only with that
    /// proof, or when the watchdog gives up on it.
    pub(crate) fn fail(&self, why: &'static str) {
        {
            let mut life = self.life.lock();
            if matches!(*life, Life::Failed(_)) {
                return;
            }
            *life = Life::Failed(why);
        }
        log::error!("{}: controller failed: {why}", self.device.id());
        let f = Failure::Gone("controller failed");
        self.admin.kill(f);
        for q in self.io_queues() {
            q.kill(f);
        }
        let cc = self.cc();
        if cc.into_bits().get() != u32::MAX && cc.en() {
            self.write_cc(cc.with_en(false));
        }
        let csts = self.csts();
        if csts.into_bits().get() != u32::MAX && !csts.rdy() {
            self.release_held();
        }
    }

    /// After a queue reported `f`: if it was a completion the queue could
    /// not accept, the whole controller fails.
    pub(crate) fn note(&self, f: Failure) -> Failure {
        if let Failure::BadCompletion(why) = f {
            self.fail(why);
        }
        f
    }

    /// Frees every held slot (the device was proven stopped).
    fn release_held(&self) {
        let n = self.admin.release_held()
            + self.io_queues().map(QueuePair::release_held).sum::<usize>();
        if n > 0 {
            log::info!(
                "{}: device stopped; released the buffers of {n} failed commands",
                self.device.id()
            );
        }
    }

    /// After a failure: proves the device stopped — CC.EN = 0 and RDY = 0
    /// within CAP.TO — so that held buffers can be released. A device
    /// that does not stop keeps them: leaked on purpose, and counted.
    async fn settle(&self) {
        if self.admin.held() + self.io_queues().map(QueuePair::held).sum::<usize>() == 0 {
            return;
        }
        let cc = self.cc();
        if cc.into_bits().get() != u32::MAX && cc.en() {
            self.write_cc(cc.with_en(false));
        }
        if self.wait_ready(false).await.is_ok() {
            self.release_held();
        } else if self.device.reset_function().is_ok() && self.wait_ready(false).await.is_ok() {
            log::warn!(
                "{}: the controller did not disable; a function reset stopped it",
                self.device.id()
            );
            self.release_held();
        } else {
            log::error!(
                "{}: the device did not stop; the buffers of its failed commands stay held",
                self.device.id()
            );
            self.give_up_held();
        }
    }

    /// The device was not proven stopped and nothing will try again:
    /// callers of failed direct commands, who waited for the proof, get
    /// their error now; the device may still reach their memory (direct
    /// mode trusts the device with it).
    fn give_up_held(&self) {
        let n = self.admin.give_up_held()
            + self.io_queues().map(QueuePair::give_up_held).sum::<usize>();
        if n > 0 {
            log::error!(
                "{}: {n} direct commands failed without proof that the device stopped; their memory may still be written",
                self.device.id()
            );
        }
    }

    /// See [`NvmeDriver::reset`].
    async fn reset(&self) -> Result<(), DriverError> {
        if self.resetting.swap(true, Ordering::AcqRel) {
            return Err(DriverError::Unsupported("a reset is already running"));
        }
        {
            let mut life = self.life.lock();
            // Resetting here: a reset whose future was dropped half-way;
            // this one starts it over.
            if !matches!(*life, Life::Running | Life::Resetting) {
                drop(life);
                self.resetting.store(false, Ordering::Release);
                return Err(DriverError::Unsupported(
                    "the controller is shut down or failed",
                ));
            }
            *life = Life::Resetting;
        }
        let mut abandoned = ResetAbandoned {
            inner: self,
            armed: true,
        };
        self.resets.fetch_add(1, Ordering::Relaxed);
        self.admin.close();
        for q in self.io_queues() {
            q.close();
        }
        let result = async {
            // Only a disabled controller has let go of the commands'
            // buffers: fail them (for the disks to retry) after that.
            self.disable().await?;
            self.admin.fail_outstanding(Failure::Reset, true);
            for q in self.io_queues() {
                q.fail_outstanding(Failure::Reset, true);
            }
            self.release_held();
            self.bring_up().await?;
            self.scan_namespaces().await
        }
        .await;
        abandoned.armed = false;
        self.resetting.store(false, Ordering::Release);
        match result {
            Ok(()) => {
                let mut life = self.life.lock();
                if *life == Life::Resetting {
                    *life = Life::Running;
                }
                Ok(())
            }
            Err(e) => {
                log::error!("{}: controller reset failed: {e}", self.device.id());
                self.fail("controller reset failed");
                Err(e)
            }
        }
    }

    /// CC.EN = 0 and wait for RDY = 0, unless the controller is already
    /// disabled.
    async fn disable(&self) -> Result<(), DriverError> {
        let cc = self.cc();
        if cc.en() || self.csts().rdy() {
            self.write_cc(cc.with_en(false));
        }
        self.wait_ready(false).await
    }

    /// Everything from a disabled (or unknown) controller to running I/O
    /// queues.
    async fn bring_up(&self) -> Result<(), DriverError> {
        self.disable().await?;
        self.admin.rewind();
        for q in self.io_queues() {
            q.rewind();
        }
        let asz = self.admin.size() - 1;
        let aqa = Aqa::new().with_asqs(asz).with_acqs(asz);
        self.device.write_u32(0, offset::AQA, aqa.into_bits().get());
        self.device
            .write_u64(0, offset::ASQ, self.admin.sq_address());
        self.device
            .write_u64(0, offset::ACQ, self.admin.cq_address());
        let css = if self.cap.css() & CAP_CSS_NVM != 0 {
            CommandSetSelected::NVM
        } else {
            CommandSetSelected::new(0b110)
        };
        let cc = Cc::new()
            .with_css(css)
            .with_mps(0)
            .with_iosqes(6)
            .with_iocqes(4);
        self.write_cc(cc);
        self.stopped.store(false, Ordering::Release);
        self.write_cc(cc.with_en(true));
        self.wait_ready(true).await?;
        self.admin.open();

        // Identify Controller.
        let buf = self.dma(IDENTIFY_DATA_LEN)?;
        self.identify(Cns::CONTROLLER, 0, &buf).await?;
        let mut raw = [0u8; IDENTIFY_DATA_LEN];
        buf.read_at(0, &mut raw)
            .map_err(|_| DriverError::BadData("Identify Controller unreadable"))?;
        let id = IdentifyController::read_from_bytes(&raw)
            .map_err(|_| DriverError::BadData("Identify Controller"))?;
        let mdts = match id.mdts {
            0 => usize::MAX,
            // checked_shl only refuses shifts of the type's width or more:
            // bits shifted out are lost, so a large MDTS would wrap to 0.
            m if u32::from(m) >= usize::BITS - PAGE_SIZE.trailing_zeros() => usize::MAX,
            m => PAGE_SIZE << m,
        };
        let sgls = id.sgls.into_bits().get();
        self.sgl.store((sgls & 3) as u8, Ordering::Relaxed);
        let oaes = id.oaes.get();
        let dbbc = id.oacs.doorbell_buffer_config();
        {
            let mut f = self.facts.lock();
            f.cntlid = id.cntlid.get();
            f.vid = id.vid.get();
            f.serial = identity_text(&id.sn);
            f.model = identity_text(&id.mn);
            f.firmware = identity_text(&id.fr);
            f.nn = id.nn.get();
            f.oncs = id.oncs.into_bits().get();
            f.sgls = sgls;
            f.max_transfer = f.max_transfer.min(mdts).max(PAGE_SIZE);
            f.volatile_write_cache = id.vwc & 1 != 0;
        }

        if let Some(host_id) = self.config.host_id {
            let buf = self.dma(PAGE_SIZE)?;
            buf.write_at(0, &host_id)
                .map_err(|_| DriverError::BadData("host identifier buffer"))?;
            self.set_feature(
                "Set Features (Host Identifier)",
                FeatureId::HOST_IDENTIFIER,
                HostIdentifierCdw11::new().with_exhid(true).into_bits(),
                Some(&buf),
            )
            .await?;
        }

        let want = u16::try_from(self.io.len() - 1).unwrap_or(u16::MAX - 1);
        let done = self
            .set_feature(
                "Set Features (Number of Queues)",
                FeatureId::NUMBER_OF_QUEUES,
                NumberOfQueues::new()
                    .with_nsq(want)
                    .with_ncq(want)
                    .into_bits(),
                None,
            )
            .await?;
        let granted = NumberOfQueues::from_bits(done.dw0);
        let count = usize::from(granted.nsq().min(granted.ncq()).min(want)) + 1;
        self.facts.lock().io_queues = count as u16;

        // Namespace attribute notices, if the controller sends them.
        if oaes & (1 << 8) != 0 {
            self.set_feature(
                "Set Features (Asynchronous Event Configuration)",
                FeatureId::ASYNC_EVENT_CONFIG,
                AsyncEventConfig::new().with_nan(true).into_bits(),
                None,
            )
            .await?;
        }

        // The queues created so far (all of them again after a reset)...
        for q in self.io.iter().take(count).filter_map(|s| s.queue.get()) {
            self.create_on_device(q).await?;
        }
        // ...and those a controller that grants fewer no longer has: their
        // commands fail for the disks to retry on the queues that remain
        // (until a later reset grants them again).
        for q in self.io.iter().skip(count).filter_map(|s| s.queue.get()) {
            q.retire();
        }
        // Shadow doorbells for the I/O queues, if the controller has
        // them: most submissions then need no MMIO write at all.
        *self.shadow.lock() = None;
        if dbbc && self.config.shadow_doorbells {
            let pages = Arc::new(ShadowPages {
                doorbells: self
                    .device
                    .alloc_dma(PAGE_SIZE)
                    .map_err(DriverError::Device)?,
                event_idx: self
                    .device
                    .alloc_dma(PAGE_SIZE)
                    .map_err(DriverError::Device)?,
            });
            let mut sqe = Sqe::new_zeroed();
            sqe.cdw0.set_opc(AdminOpcode::DOORBELL_BUFFER_CONFIG.get());
            sqe.set_prps(
                pages.doorbells.device_address(0),
                pages.event_idx.device_address(0),
            );
            match self
                .admin_command("Doorbell Buffer Config", sqe, None)
                .await
            {
                Ok(_) => {
                    let stride = self.cap.doorbell_stride() as usize;
                    for q in self.io.iter().take(count).filter_map(|s| s.queue.get()) {
                        q.use_shadow(&pages, stride);
                    }
                    *self.shadow.lock() = Some(pages);
                }
                // Optional: MMIO doorbells work without it.
                Err(DriverError::Command { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.io_count.store(count, Ordering::Release);
        for q in self.io.iter().take(count).filter_map(|s| s.queue.get()) {
            q.open();
        }
        Ok(())
    }

    /// Creates `q`'s completion queue (on its own vector) and then its
    /// submission queue on the controller.
    async fn create_on_device(&self, q: &QueuePair) -> Result<(), DriverError> {
        let cq = CreateCqCdw11::new()
            .with_pc(true)
            .with_ien(true)
            .with_iv(q.qid())
            .into_bits();
        self.admin_command(
            "Create I/O Completion Queue",
            create_queue_sqe(AdminOpcode::CREATE_IO_CQ, q.cq_address(), q, cq),
            None,
        )
        .await?;
        let sq = CreateSqCdw11::new()
            .with_pc(true)
            .with_cqid(q.qid())
            .into_bits();
        self.admin_command(
            "Create I/O Submission Queue",
            create_queue_sqe(AdminOpcode::CREATE_IO_SQ, q.sq_address(), q, sq),
            None,
        )
        .await?;
        Ok(())
    }

    /// The I/O queues created so far.
    pub(crate) fn io_queues(&self) -> impl Iterator<Item = &QueuePair> {
        self.io.iter().filter_map(|s| s.queue.get())
    }

    /// The I/O queue for the calling thread's CPU, if it exists; else the
    /// index of the position to create (see [`Inner::io_queue_slow`]).
    pub(crate) fn io_queue(&self) -> Result<&QueuePair, usize> {
        let count = self
            .io_count
            .load(Ordering::Acquire)
            .clamp(1, self.io.len());
        let index = thread_cpu() % count;
        match self.io.get(index).and_then(|s| s.queue.get()) {
            Some(q) => Ok(q),
            None => Err(index),
        }
    }

    /// The calling CPU's queue position `index` has no queue yet: create
    /// it (the first caller does, once), or use the nearest lower queue
    /// meanwhile or for good (no vector, no memory, refused).
    pub(crate) async fn io_queue_slow(&self, index: usize) -> Result<&QueuePair, Failure> {
        let slot = self.io.get(index).ok_or(Failure::Gone("no I/O queue"))?;
        if slot
            .creating
            .compare_exchange(IDLE, CREATING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // Boxed: the creation's future is large and runs once per CPU;
            // the I/O future stays small.
            let created = Box::pin(self.create_io_queue(index)).await;
            let next = match created {
                Ok(true) => IDLE,
                // A reset came in between: try again later.
                Ok(false) => IDLE,
                Err(e) => {
                    log::warn!(
                        "{}: I/O queue {} cannot be created ({e}); its CPUs share another",
                        self.device.id(),
                        index + 1
                    );
                    UNUSABLE
                }
            };
            slot.creating.store(next, Ordering::Release);
        }
        if let Some(q) = slot.queue.get() {
            return Ok(q);
        }
        self.io
            .get(..index)
            .into_iter()
            .flatten()
            .rev()
            .chain(self.io.iter())
            .find_map(|s| s.queue.get())
            .ok_or(Failure::Gone("no I/O queue"))
    }

    /// Creates I/O queue position `index` (QID `index + 1`, MSI-X vector
    /// the same): allocates it, creates it on the controller and
    /// publishes it. `Ok(false)`: a reset or failure came in between and
    /// the queue was not published.
    async fn create_io_queue(&self, index: usize) -> Result<bool, DriverError> {
        let qid = u16::try_from(index + 1).map_err(|_| DriverError::Unsupported("QID"))?;
        let resets = self.resets.load(Ordering::Acquire);
        let shape = QueueShape {
            qid,
            ..self.io_shape
        };
        let q = allocate_queue(&self.device, shape, &self.health, "I/O queue allocation")?;
        // From the first Create command on, the controller may have this
        // queue (a Create that timed out may still run): a queue that is
        // not published is leaked, not freed, unless the controller was
        // proven stopped.
        if let Err(e) = self.create_on_device(&q).await {
            self.give_up_queue(q);
            return Err(e);
        }
        if let Some(pages) = self.shadow.lock().clone() {
            q.use_shadow(&pages, self.cap.doorbell_stride() as usize);
        }
        // Published under the life lock, which a reset takes to start: a
        // reset either sees this queue (and creates it again) or this
        // sees the reset (and gives the queue up).
        let life = self.life.lock();
        if *life != Life::Running || self.resets.load(Ordering::Acquire) != resets {
            drop(life);
            self.give_up_queue(q);
            return Ok(false);
        }
        let Some(slot) = self.io.get(index) else {
            drop(life);
            self.give_up_queue(q);
            return Err(DriverError::Unsupported("queue index"));
        };
        match slot.queue.set(q) {
            Ok(()) => Ok(true),
            Err(q) => {
                drop(life);
                self.give_up_queue(q);
                Ok(false)
            }
        }
    }

    /// A queue built for the controller but not published: dropped if the
    /// controller is proven stopped, else leaked (the controller may still
    /// have it and write its completion queue).
    fn give_up_queue(&self, mut q: QueuePair) {
        if !self.stopped.load(Ordering::Acquire) {
            q.leak_dma();
        }
    }

    pub(crate) fn config_data_pointer(&self) -> DataPointer {
        self.config.data_pointer
    }

    /// A data buffer for an admin command (shared with the command's
    /// slot, which keeps it while the device may use it).
    fn dma(&self, len: usize) -> Result<Arc<DmaBuffer>, DriverError> {
        self.device
            .alloc_dma(len)
            .map(Arc::new)
            .map_err(DriverError::Device)
    }

    /// The SGL support the controller advertised.
    pub(crate) fn sgl(&self) -> SglSupport {
        match self.sgl.load(Ordering::Relaxed) {
            1 => SglSupport::Any,
            2 => SglSupport::DwordAligned,
            _ => SglSupport::None,
        }
    }

    /// Runs one admin command; `data` is its data buffer (PRPs), which
    /// the command keeps until the device is done with it. Bounded by
    /// [`DriverConfig::admin_timeout`]: a late command fails (its slot and
    /// buffer stay until the device completes it or a reset) and asks the
    /// watchdog for a controller reset.
    pub(crate) async fn admin_command(
        &self,
        what: &'static str,
        mut sqe: Sqe,
        data: Option<&Arc<DmaBuffer>>,
    ) -> Result<Completed, DriverError> {
        let failed = |why| DriverError::Failed { what, why };
        // Slots kept by late commands may never come back: waiting for
        // one is bounded like the command.
        let Some(slot) = self
            .bounded(self.admin.reserve(), self.config.admin_timeout)
            .await
        else {
            log::warn!(
                "{}: {what} found no free admin slot in time",
                self.device.id()
            );
            self.reset_requested.store(true, Ordering::Release);
            return Err(failed(Failure::TimedOut));
        };
        let mut slot = slot.map_err(failed)?;
        if let Some(buf) = data {
            slot.prepare_contiguous(
                &mut sqe,
                buf.device_range(),
                None,
                DataPointer::Prp,
                SglSupport::None,
            )
            .map_err(failed)?;
            slot.keep(buf.clone());
        }
        slot.submit(sqe).map_err(failed)?;
        let done = self.bounded(slot, self.config.admin_timeout).await;
        let Some(finished) = done else {
            log::warn!("{}: {what} timed out", self.device.id());
            self.reset_requested.store(true, Ordering::Release);
            return Err(failed(Failure::TimedOut));
        };
        let done = finished.result.map_err(|f| failed(self.note(f)))?;
        if StatusWord::from_bits(done.status & 0x7FFF).is_success() {
            Ok(done)
        } else {
            Err(DriverError::Command {
                what,
                status: done.status,
            })
        }
    }

    /// `fut` bounded by `timeout` on the driver's clock (`None`: it did
    /// not finish in time).
    fn bounded<F: core::future::Future + Unpin>(
        &self,
        fut: F,
        timeout: Duration,
    ) -> Bounded<'_, F> {
        let step = (timeout / 16).clamp(READY_POLL, Duration::from_millis(100));
        Bounded {
            fut,
            sleep: None,
            timer: &*self.timer,
            clock: &*self.config.clock,
            deadline: self.clock_now().saturating_add(timeout),
            step,
        }
    }

    /// Abort of command `cid` on submission queue `sqid`.
    async fn abort(&self, sqid: u16, cid: u16) -> Result<Completed, DriverError> {
        let mut sqe = Sqe::new_zeroed();
        sqe.cdw0.set_opc(AdminOpcode::ABORT.get());
        sqe.cdw10 = U32::new(AbortCdw10::new().with_sqid(sqid).with_cid(cid).into_bits());
        self.admin_command("Abort", sqe, None).await
    }

    /// Waits for the outstanding Asynchronous Event Request — the one a
    /// dropped event loop left parked, or a new one. Dropping this future
    /// parks the request again, so no event is lost between loops.
    async fn async_event(&self) -> Result<Completed, DriverError> {
        let what = "Asynchronous Event Request";
        let failed = |why| DriverError::Failed { what, why };
        let slot = match self.admin.adopt_parked() {
            Some(slot) => slot,
            None => {
                let mut sqe = Sqe::new_zeroed();
                sqe.cdw0.set_opc(AdminOpcode::ASYNC_EVENT_REQUEST.get());
                let mut slot = self.admin.reserve().await.map_err(failed)?;
                slot.untimed();
                slot.submit(sqe).map_err(failed)?;
                slot
            }
        };
        let mut slot = slot;
        slot.park_on_drop();
        let done = slot.await.result.map_err(|f| failed(self.note(f)))?;
        if StatusWord::from_bits(done.status & 0x7FFF).is_success() {
            Ok(done)
        } else {
            Err(DriverError::Command {
                what,
                status: done.status,
            })
        }
    }

    async fn identify(&self, cns: Cns, nsid: u32, buf: &Arc<DmaBuffer>) -> Result<(), DriverError> {
        let mut sqe = Sqe::new_zeroed();
        sqe.cdw0.set_opc(AdminOpcode::IDENTIFY.get());
        sqe.nsid = U32::new(nsid);
        sqe.cdw10 = U32::new(IdentifyCdw10::new().with_cns(cns).into_bits());
        self.admin_command("Identify", sqe, Some(buf)).await?;
        Ok(())
    }

    async fn set_feature(
        &self,
        what: &'static str,
        fid: FeatureId,
        cdw11: u32,
        data: Option<&Arc<DmaBuffer>>,
    ) -> Result<Completed, DriverError> {
        let mut sqe = Sqe::new_zeroed();
        sqe.cdw0.set_opc(AdminOpcode::SET_FEATURES.get());
        sqe.cdw10 = U32::new(SetFeaturesCdw10::new().with_fid(fid.get()).into_bits());
        sqe.cdw11 = U32::new(cdw11);
        self.admin_command(what, sqe, data).await
    }

    /// Identify Namespace `nsid`: `None` if it is not active (all zero).
    async fn identify_namespace(
        &self,
        nsid: u32,
    ) -> Result<Option<IdentifyNamespace>, DriverError> {
        let buf = self.dma(IDENTIFY_DATA_LEN)?;
        match self.identify(Cns::NAMESPACE, nsid, &buf).await {
            Ok(()) => {}
            // An NSID that is not (or no longer) valid.
            Err(DriverError::Command { status, .. })
                if StatusWord::from_bits(status & 0x7FFF).sc() == 0x0B =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let mut raw = [0u8; IDENTIFY_DATA_LEN];
        buf.read_at(0, &mut raw)
            .map_err(|_| DriverError::BadData("Identify Namespace unreadable"))?;
        let id = IdentifyNamespace::read_from_bytes(&raw)
            .map_err(|_| DriverError::BadData("Identify Namespace"))?;
        Ok((id.nsze.get() != 0).then_some(id))
    }

    /// Reads the active namespace list and (re)identifies every namespace
    /// on it; namespaces no longer on it are marked removed.
    async fn scan_namespaces(&self) -> Result<(), DriverError> {
        let buf = self.dma(IDENTIFY_DATA_LEN)?;
        let nn = self.facts.lock().nn;
        let mut active = Vec::new();
        let mut start = 0u32;
        loop {
            self.identify(Cns::ACTIVE_NAMESPACES, start, &buf).await?;
            let mut raw = [0u8; IDENTIFY_DATA_LEN];
            buf.read_at(0, &mut raw)
                .map_err(|_| DriverError::BadData("active namespace list unreadable"))?;
            let mut last = 0;
            let mut full = true;
            for chunk in raw.chunks_exact(4) {
                let nsid = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                if nsid == 0 {
                    full = false;
                    break;
                }
                // The list is increasing; anything else is bad data.
                if nsid <= last || nsid <= start {
                    return Err(DriverError::BadData(
                        "active namespace list is not increasing",
                    ));
                }
                if !valid_nsid(nsid, nn) {
                    return Err(DriverError::BadData(
                        "active namespace list names an NSID above Identify Controller's NN",
                    ));
                }
                if active.len() >= MAX_NAMESPACES {
                    return Err(DriverError::BadData(
                        "active namespace list is longer than the driver serves",
                    ));
                }
                last = nsid;
                active.push(nsid);
            }
            if !full || last >= nn {
                break;
            }
            start = last;
        }
        let known: Vec<u32> = self.namespaces.lock().keys().copied().collect();
        for nsid in known {
            if active.binary_search(&nsid).is_err() {
                self.namespace_gone(nsid);
            }
        }
        for nsid in active {
            self.rescan(nsid).await?;
        }
        Ok(())
    }

    fn namespace_gone(&self, nsid: u32) {
        let gone = self.namespaces.lock().remove(&nsid);
        if let Some(ns) = gone {
            ns.mark_removed();
            self.bump_generation();
        }
    }

    fn bump_generation(&self) {
        let g = self.ns_generation.get();
        self.ns_generation.set(g.wrapping_add(1));
    }

    /// Identifies `nsid` again: new → added, size changed → resized, gone
    /// → removed.
    async fn rescan(&self, nsid: u32) -> Result<(), DriverError> {
        match self.identify_namespace(nsid).await? {
            None => self.namespace_gone(nsid),
            Some(id) => {
                let existing = self.namespaces.lock().get(&nsid).cloned();
                match existing {
                    Some(ns) if ns.same_format(&id) => {
                        if ns.update_size(id.nsze.get()) {
                            self.bump_generation();
                        }
                    }
                    other => {
                        let full =
                            other.is_none() && self.namespaces.lock().len() >= MAX_NAMESPACES;
                        if let Some(old) = other {
                            // Reformatted: the old disk's geometry is stale.
                            old.mark_removed();
                        }
                        match NamespaceState::new(nsid, &id, &self.facts.lock()) {
                            Ok(_) if full => {
                                log::warn!(
                                    "{}: namespace {nsid} ignored: the driver serves at most {MAX_NAMESPACES}",
                                    self.device.id()
                                );
                            }
                            Ok(ns) => {
                                self.namespaces.lock().insert(nsid, Arc::new(ns));
                            }
                            Err(e) => {
                                self.namespaces.lock().remove(&nsid);
                                log::warn!("{}: namespace {nsid}: {e}", self.device.id());
                            }
                        }
                        self.bump_generation();
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_event(&self, dw0: u32) -> Result<(), DriverError> {
        let ev = AsyncEventDw0::from_bits(dw0);
        let buf = self.dma(PAGE_SIZE)?;
        let mut sqe = Sqe::new_zeroed();
        sqe.cdw0.set_opc(AdminOpcode::GET_LOG_PAGE.get());
        sqe.nsid = U32::new(0xFFFF_FFFF);
        let dwords = (PAGE_SIZE / 4 - 1) as u16;
        sqe.cdw10 = U32::new(
            GetLogPageCdw10::new()
                .with_lid(ev.lid())
                .with_numdl(dwords)
                .into_bits(),
        );
        let notice = ev.aet() == AsyncEventType::NOTICE
            && ev.aei() == NoticeEventInfo::NAMESPACE_ATTRIBUTE_CHANGED.get()
            && ev.lid() == LogPageId::CHANGED_NAMESPACES.get();
        // Reading the log page re-enables the event (RAE = 0).
        self.admin_command("Get Log Page", sqe, Some(&buf)).await?;
        if !notice {
            return Ok(());
        }
        let mut raw = [0u8; PAGE_SIZE];
        buf.read_at(0, &mut raw)
            .map_err(|_| DriverError::BadData("changed namespace list unreadable"))?;
        let mut changed = Vec::new();
        for chunk in raw.chunks_exact(4) {
            let nsid = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if nsid == 0 {
                break;
            }
            if nsid == CHANGED_NAMESPACE_LIST_OVERFLOW {
                return self.scan_namespaces().await;
            }
            if !valid_nsid(nsid, self.facts.lock().nn) {
                log::warn!(
                    "{}: changed namespace list names NSID {nsid}, above NN; ignored",
                    self.device.id()
                );
                continue;
            }
            changed.push(nsid);
        }
        for nsid in changed {
            self.rescan(nsid).await?;
        }
        Ok(())
    }
}

/// The most namespaces one controller's driver serves (a device's NN and
/// lists are untrusted: this bounds the Identify commands a scan sends and
/// the memory it holds).
pub(crate) const MAX_NAMESPACES: usize = 16 * 1024;

/// Whether `nsid` can name one namespace of a controller with `nn`
/// namespaces (0 and FFFFFFFFh, "every namespace", never do).
fn valid_nsid(nsid: u32, nn: u32) -> bool {
    nsid != 0 && nsid != u32::MAX && nsid <= nn
}

#[cfg(test)]
mod tests {
    use super::valid_nsid;

    #[test]
    fn an_nsid_names_one_namespace_up_to_nn() {
        assert!(valid_nsid(1, 1) && valid_nsid(1024, 1024));
        assert!(!valid_nsid(0, 1024), "0 is no namespace");
        assert!(!valid_nsid(1025, 1024), "above NN");
        assert!(
            !valid_nsid(u32::MAX, u32::MAX),
            "FFFFFFFFh is every namespace"
        );
    }
}
