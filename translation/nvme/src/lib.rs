//! The guest-facing NVMe controller: one PCI Express function whose BAR0
//! holds the NVMe registers and doorbells, whose queues live in guest
//! memory, and whose namespaces are parastor [`Disk`]s.
//!
//! # Shape
//! - [`pci`]: configuration space (class 01-08-02), BAR0 (registers and
//!   doorbells), BAR4 (MSI-X table and pending bits), delivery through an
//!   [`MsiSink`]; bus mastering off means no guest-memory access at all.
//! - `regs`: CAP/VS/CC/CSTS/AQA/ASQ/ACQ/INTMS/INTMC/NSSR, enable with
//!   validation (CSTS.CFS on a bad CC), reset that drains every queue,
//!   shutdown notification, NVM subsystem reset.
//! - `queue`: submission/completion rings in guest memory, the doorbell
//!   registers and shadow doorbells (Doorbell Buffer Config with EventIdx).
//! - `worker`: one worker per completion queue: reads SQEs of the SQs that
//!   share the CQ, runs each I/O command in a fixed slot (no allocation per
//!   I/O), writes CQEs (out of order as the disks finish) and signals the
//!   CQ's MSI-X vector once per batch.
//! - `admin`: the admin command set, Identify, features, log pages,
//!   asynchronous events, Abort.
//! - `namespace`: NSIDs given by the caller, hot add/remove, resize picked
//!   up from [`Disk::wait_resize`], the changed-namespace list.
//! - [`state`]: save and restore of the whole controller.
//!
//! The I/O command set itself (`io`), PRP/SGL walking (`data`) and the one
//! [`DiskError`](parastor_core::DiskError) → status table (`error`) are
//! their own modules.
//!
//! # Running it
//! MMIO and configuration accesses are plain method calls
//! ([`NvmeController::bar_write`], [`NvmeController::config_write`]); a
//! doorbell write only stores the value and wakes the queue's worker. The
//! work runs when the host polls: [`NvmeController::poll_work`] runs every
//! woken worker from one task, or [`NvmeController::poll_queue`] runs one
//! worker per task (one task per completion queue).
//!
//! [`Disk`]: parastor_core::Disk
//! [`Disk::wait_resize`]: parastor_core::Disk::wait_resize
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod admin;
mod data;
mod error;
mod io;
mod namespace;
pub mod pci;
mod queue;
mod regs;
pub mod state;
#[cfg(test)]
mod tests;
mod wake;
mod worker;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use core::task::{Context, Poll, Waker};
use parastor_core::{Disk, GuestMem};
use parastor_hw::Guid;

pub use namespace::NamespaceError;
pub use pci::{MSIX_BAR, MsiMessage, MsiSink, PciIdentity, REGISTER_BAR};
pub use state::{RestoreError, SaveError, SavedController};

/// What the caller (the settings) decides about a controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// The controller instance GUID from the settings: the subsystem NQN
    /// is `nqn.2014-08.org.nvmexpress:uuid:<instance_id>`.
    pub instance_id: Guid,
    /// Serial number (Identify Controller SN, at most 20 ASCII bytes).
    pub serial: String,
    /// Model number (Identify Controller MN, at most 40 ASCII bytes).
    pub model: String,
    /// Firmware revision (Identify Controller FR, at most 8 ASCII bytes).
    pub firmware: String,
    /// IEEE OUI (Identify Controller IEEE), in the byte order of that field.
    pub ieee_oui: [u8; 3],
    /// PCI vendor/device/subsystem identity.
    pub pci: PciIdentity,
    /// I/O submission/completion queue pairs offered (1..=65535).
    pub max_io_queue_pairs: u16,
    /// Entries per queue at most (CAP.MQES + 1, 2..=65536 stored as u32).
    pub max_queue_entries: u32,
    /// MSI-X vectors (1..=2048).
    pub msix_vectors: u16,
    /// Highest NSID the controller offers (Identify Controller NN).
    pub max_namespaces: u32,
    /// Largest data transfer of one command in bytes (a power of two of
    /// 4 KiB..=16 MiB; Identify Controller MDTS).
    pub max_transfer_bytes: u64,
    /// I/O commands one completion queue's worker runs at once (the rest
    /// wait in their submission queues).
    pub commands_per_queue: u16,
    /// Controller ID (Identify Controller CNTLID).
    pub controller_id: u16,
}

impl ControllerConfig {
    /// A configuration with parastor's defaults for `instance_id`: 64 I/O
    /// queue pairs of up to 1024 entries, 65 vectors (admin + one per
    /// pair), NSIDs up to 1024, 1 MiB transfers, 256 commands in flight per
    /// completion queue.
    pub fn new(instance_id: Guid) -> Self {
        Self {
            instance_id,
            serial: String::new(),
            model: String::from("parastor NVMe"),
            firmware: String::from("1.0"),
            ieee_oui: [0; 3],
            pci: PciIdentity {
                vendor_id: 0x1414,
                device_id: 0xB111,
                subsystem_vendor_id: 0x1414,
                subsystem_id: 0xB111,
                revision_id: 0,
            },
            max_io_queue_pairs: 64,
            max_queue_entries: 1024,
            msix_vectors: 65,
            max_namespaces: 1024,
            max_transfer_bytes: io::MAX_TRANSFER_BYTES,
            commands_per_queue: 256,
            controller_id: 0,
        }
    }

    /// The configuration with every value clamped into its valid range.
    fn sanitized(mut self) -> Self {
        self.max_io_queue_pairs = self.max_io_queue_pairs.clamp(1, 65534);
        self.max_queue_entries = self.max_queue_entries.clamp(2, 65536);
        self.msix_vectors = self.msix_vectors.clamp(1, 2048);
        self.max_namespaces = self.max_namespaces.clamp(1, 0xFFFF_FFFE);
        self.max_transfer_bytes = self
            .max_transfer_bytes
            .clamp(4096, data::MAX_DATA_BYTES)
            .next_power_of_two();
        self.commands_per_queue = self.commands_per_queue.max(1);
        self
    }
}

/// Where the controller stands (CC.EN, a reset or shutdown in progress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Lifecycle {
    /// CC.EN = 0, CSTS.RDY = 0.
    Disabled = 0,
    /// Enabled and ready: commands are fetched.
    Ready = 1,
    /// CC.EN went 1 → 0 (or NSSR): commands in flight finish, nothing new
    /// is fetched, nothing is completed; then every queue is discarded.
    Resetting = 2,
    /// Shutdown notified: I/O in flight finishes, nothing new is fetched.
    ShuttingDown = 3,
    /// CSTS.CFS: a fatal error; nothing runs until a reset.
    Fatal = 4,
}

impl Lifecycle {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Ready,
            2 => Self::Resetting,
            3 => Self::ShuttingDown,
            4 => Self::Fatal,
            _ => Self::Disabled,
        }
    }
}

/// Everything the controller's parts share.
pub(crate) struct Shared {
    pub(crate) config: ControllerConfig,
    pub(crate) mem: GuestMem,
    pub(crate) pci: pci::PciFunction,
    pub(crate) regs: spin::Mutex<regs::Registers>,
    pub(crate) lifecycle: AtomicU8,
    /// Set while a saved controller is frozen: nothing touches guest memory.
    pub(crate) frozen: core::sync::atomic::AtomicBool,
    pub(crate) doorbells: queue::Doorbells,
    pub(crate) wakeups: Arc<wake::Wakeups>,
    pub(crate) admin: spin::Mutex<admin::AdminState>,
    /// I/O completion queue workers, index `cqid - 1`.
    pub(crate) workers: Box<[spin::Mutex<worker::IoWorker>]>,
    pub(crate) namespaces: spin::Mutex<namespace::Namespaces>,
    /// Bumped on every namespace change; workers refresh their cache.
    pub(crate) ns_generation: AtomicU64,
    pub(crate) events: spin::Mutex<admin::Events>,
    /// INTMS: vectors 0..32 masked by the host.
    pub(crate) intms: AtomicU32,
    /// Vectors signalled while INTMS masked them.
    pub(crate) intm_pending: AtomicU32,
    /// Scratch memory for the commands that need it (Compare, Verify,
    /// Write Zeroes, Dataset Management, bit-bucket reads).
    pub(crate) scratch: parastor_core::bounce::BouncePool,
}

impl Shared {
    pub(crate) fn lifecycle(&self) -> Lifecycle {
        Lifecycle::from_u8(self.lifecycle.load(Ordering::Acquire))
    }

    pub(crate) fn set_lifecycle(&self, l: Lifecycle) {
        self.lifecycle.store(l as u8, Ordering::Release);
    }

    /// Whether workers may touch guest memory now.
    pub(crate) fn dma_allowed(&self) -> bool {
        self.pci.bus_master() && !self.frozen.load(Ordering::Acquire)
    }

    /// The wake index of the admin worker.
    pub(crate) const ADMIN: usize = 0;

    /// The wake index of the namespace watchers.
    pub(crate) fn watcher_index(&self) -> usize {
        self.workers.len() + 1
    }

    /// Doorbell registers (two per queue ID, the admin queue's included).
    pub(crate) fn doorbells_len(&self) -> usize {
        (self.workers.len() + 1) * 2
    }

    /// Wakes every worker (bus mastering enabled, thaw, restore).
    pub(crate) fn wake_all(&self) {
        for i in 0..=self.watcher_index() {
            self.wakeups.wake(i);
        }
    }

    /// Runs worker `index` once.
    fn run(&self, index: usize) {
        if index == Self::ADMIN {
            admin::run(self);
        } else if index == self.watcher_index() {
            namespace::run_watchers(self);
        } else if let Some(w) = self.workers.get(index - 1) {
            let drained = w.lock().run(self);
            if drained {
                regs::drain_progress(self);
            }
        }
    }
}

/// The NVMe controller: a PCI function over guest memory and disks.
pub struct NvmeController {
    shared: Arc<Shared>,
}

impl fmt::Debug for NvmeController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NvmeController")
            .field("instance_id", &self.shared.config.instance_id)
            .field("lifecycle", &self.shared.lifecycle())
            .finish_non_exhaustive()
    }
}

impl NvmeController {
    /// A controller for `config` over guest memory `mem`, delivering its
    /// interrupts to `msi`. It starts disabled (CC.EN = 0), with bus
    /// mastering off and no namespaces.
    pub fn new(config: ControllerConfig, mem: GuestMem, msi: Arc<dyn MsiSink>) -> Self {
        let config = config.sanitized();
        let pairs = usize::from(config.max_io_queue_pairs);
        let wakeups = Arc::new(wake::Wakeups::new(pairs + 2));
        let doorbells = queue::Doorbells::new(pairs + 1);
        let bar0 = queue::doorbell_end(pairs as u64 + 1);
        let pci = pci::PciFunction::new(config.pci, bar0, config.msix_vectors, msi);
        let workers = (1..=pairs)
            .map(|cqid| {
                spin::Mutex::new(worker::IoWorker::new(
                    &config,
                    wake::worker_waker(&wakeups, cqid),
                ))
            })
            .collect();
        let regs = regs::Registers::new(&config);
        let admin = admin::AdminState::new(&config);
        let namespaces = namespace::Namespaces::new(&config);
        Self {
            shared: Arc::new(Shared {
                config,
                mem,
                pci,
                regs: spin::Mutex::new(regs),
                lifecycle: AtomicU8::new(Lifecycle::Disabled as u8),
                frozen: core::sync::atomic::AtomicBool::new(false),
                doorbells,
                wakeups,
                admin: spin::Mutex::new(admin),
                workers,
                namespaces: spin::Mutex::new(namespaces),
                ns_generation: AtomicU64::new(0),
                events: spin::Mutex::new(admin::Events::default()),
                intms: AtomicU32::new(0),
                intm_pending: AtomicU32::new(0),
                scratch: parastor_core::bounce::BouncePool::new(io::SCRATCH_BUDGET),
            }),
        }
    }

    /// The configuration in effect (clamped into valid ranges).
    pub fn config(&self) -> &ControllerConfig {
        &self.shared.config
    }

    /// Reads PCI configuration space: 1, 2 or 4 bytes, naturally aligned
    /// (anything else reads as zeros).
    pub fn config_read(&self, offset: u16, data: &mut [u8]) {
        self.shared.pci.config_read(offset, data);
    }

    /// Writes PCI configuration space: 1, 2 or 4 bytes, naturally aligned
    /// (anything else is ignored).
    pub fn config_write(&self, offset: u16, data: &[u8]) {
        if self.shared.pci.config_write(offset, data) == pci::ConfigChange::BusMasterEnabled {
            self.shared.wake_all();
        }
    }

    /// The size in bytes of BAR `bar` (0: registers, 4: MSI-X), or `None`
    /// for a BAR the function does not implement.
    pub fn bar_size(&self, bar: u8) -> Option<u64> {
        match bar {
            REGISTER_BAR => Some(self.shared.pci.bar0_size()),
            MSIX_BAR => Some(self.shared.pci.msix_bar_size()),
            _ => None,
        }
    }

    /// Reads a BAR: registers (4 or 8 bytes, naturally aligned) in BAR0,
    /// the MSI-X table and pending bits in BAR4. Anything else reads as
    /// zeros.
    pub fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) {
        match bar {
            REGISTER_BAR => regs::bar_read(&self.shared, offset, data),
            MSIX_BAR => self.shared.pci.msix_read(offset, data),
            _ => data.fill(0),
        }
    }

    /// Writes a BAR (see [`NvmeController::bar_read`]); a doorbell write
    /// stores the value and wakes the queue's worker. Anything else is
    /// ignored; nothing panics.
    pub fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) {
        match bar {
            REGISTER_BAR => regs::bar_write(&self.shared, offset, data),
            MSIX_BAR => self.shared.pci.msix_write(offset, data),
            _ => {}
        }
    }

    /// Adds namespace `nsid` (1..=NN) backed by `disk`: the guest sees a
    /// namespace-attribute notice and the NSID in the changed-namespace
    /// list.
    pub fn add_namespace(&self, nsid: u32, disk: Disk) -> Result<(), NamespaceError> {
        namespace::add(&self.shared, nsid, disk)
    }

    /// Removes namespace `nsid`; its disk back, or `None` if it had none.
    /// Commands already running on it finish; later ones answer Invalid
    /// Namespace.
    pub fn remove_namespace(&self, nsid: u32) -> Option<Disk> {
        namespace::remove(&self.shared, nsid)
    }

    /// Runs every worker woken since the last call (the admin queue, each
    /// completion queue with doorbell writes or finished commands, the
    /// namespace watchers). `Ready` when it ran something (call again),
    /// `Pending` when nothing was woken: `cx`'s waker is then woken by the
    /// next doorbell write or disk completion. Never blocks.
    pub fn poll_work(&self, cx: &mut Context<'_>) -> Poll<()> {
        let s = &self.shared;
        if self.run_woken() {
            // The caller polls again: no need to register yet.
            return Poll::Ready(());
        }
        // Register, then look once more: a wake between the first look and
        // the registration is not lost.
        s.wakeups.register_all(cx.waker());
        if self.run_woken() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Runs every woken worker once; whether any was.
    fn run_woken(&self) -> bool {
        let s = &self.shared;
        let mut ran = false;
        for word in 0..s.wakeups.words() {
            let mut bits = s.wakeups.take_word(word);
            while bits != 0 {
                let index = word * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                s.run(index);
                ran = true;
            }
        }
        ran
    }

    /// Runs one worker if it was woken: `queue` 0 is the admin queue
    /// (which also runs the namespace watchers), `1..` the I/O completion
    /// queue with that ID. `Ready` when it ran, `Pending` otherwise (the
    /// waker is woken when that worker has work). For a host that runs one
    /// task per completion queue; do not mix with
    /// [`NvmeController::poll_work`] for the same controller. A queue ID
    /// beyond the controller's stays `Pending`.
    pub fn poll_queue(&self, queue: u16, cx: &mut Context<'_>) -> Poll<()> {
        let s = &self.shared;
        let index = usize::from(queue);
        if index > s.workers.len() {
            // No such queue: nothing will ever run there.
            return Poll::Pending;
        }
        s.wakeups.register(index, cx.waker());
        let mut ran = false;
        if index == Shared::ADMIN {
            let w = s.watcher_index();
            s.wakeups.register(w, cx.waker());
            if s.wakeups.take(w) {
                s.run(w);
                ran = true;
            }
        }
        if s.wakeups.take(index) {
            s.run(index);
            ran = true;
        }
        if ran { Poll::Ready(()) } else { Poll::Pending }
    }

    /// Runs everything woken until nothing is (for tests and simple hosts
    /// whose disks complete inline).
    pub fn run_until_idle(&self) {
        let mut cx = Context::from_waker(Waker::noop());
        while self.poll_work(&mut cx).is_ready() {}
    }

    /// Saves the whole controller. The controller is frozen first (it
    /// stops touching guest memory, keeping its commands in flight); see
    /// [`state`] for what is saved and how commands in flight resume.
    pub fn save(&self) -> Result<SavedController, SaveError> {
        state::save(&self.shared)
    }

    /// Lets a controller frozen by [`NvmeController::save`] run again (the
    /// servicing was abandoned).
    pub fn thaw(&self) {
        self.shared.frozen.store(false, Ordering::Release);
        self.shared.wake_all();
    }

    /// A controller restored from `saved` over `mem`, with `namespaces`
    /// (NSID, disk) attached as before the save. It resumes the guest's
    /// queues where the saved controller stopped.
    pub fn restore(
        config: ControllerConfig,
        mem: GuestMem,
        msi: Arc<dyn MsiSink>,
        saved: &SavedController,
        namespaces: Vec<(u32, Disk)>,
    ) -> Result<Self, RestoreError> {
        let controller = Self::new(config, mem, msi);
        state::restore(&controller.shared, saved, namespaces)?;
        controller.shared.wake_all();
        Ok(controller)
    }
}
