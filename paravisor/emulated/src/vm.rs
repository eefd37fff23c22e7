//! The emulated VM around a StorVSC guest: guest memory, the channels'
//! ring pairs and signals, and the StorVSP controller serving them.
//!
//! [`StorvspVm`] lays out a number of ring pairs up front (the primary
//! channel's first, then one per possible sub-channel), then a data area
//! for the guest's buffers. [`InlineHost`] runs the StorVSP workers in the
//! guest's thread: [`StorvspVm::guest`] returns a driver wired to one,
//! [`StorvspVm::connect`] a negotiated one.

use crate::storvsc::{GuestConfig, Host, Progress, Storvsc, StorvscError};
use parastor_core::Gpa;
use parastor_core::{GpaRange, GuestMem, RamGuestMemory};
use parastor_hw::vmbus::RingFeatures;
use parastor_storvsp::{Controller, StorvspChannel};
use parastor_sys::GuestRam;
use parastor_vmbus::{Channel, ChannelSignals, RingRegion, Signal};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Where the first ring pair starts.
const RINGS_BASE: u64 = 0x10000;
const PAGE: u64 = 4096;

/// The layout of a [`StorvspVm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest memory bytes.
    pub memory_bytes: u64,
    /// Bytes of each guest → host (request) ring, control page included.
    pub request_ring: u64,
    /// Bytes of each host → guest (completion) ring.
    pub completion_ring: u64,
    /// Ring pairs laid out: the primary channel plus sub-channels.
    pub channels: usize,
    /// What guest memory is made of.
    pub memory: VmMemory,
}

/// What a [`StorvspVm`]'s guest memory is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VmMemory {
    /// A shared memory file mapped into the process
    /// ([`parastor_sys::GuestRam`]): lock-free copies and real atomics, as
    /// guest RAM is reached in the service. The default.
    #[default]
    Mapped,
    /// [`RamGuestMemory`]: heap chunks behind locks, the `no_std` test
    /// memory (kept to compare against).
    Locked,
}

impl Default for VmConfig {
    /// 16 MiB of memory, 32 KiB rings, 8 channels.
    fn default() -> Self {
        Self {
            memory_bytes: 16 << 20,
            request_ring: 0x8000,
            completion_ring: 0x8000,
            channels: 8,
            memory: VmMemory::Mapped,
        }
    }
}

/// Guest memory, ring pairs, signals and the controller of one emulated
/// StorVSP SCSI adapter.
pub struct StorvspVm {
    /// Shared: a device double may keep a handle on it (as a device
    /// backend keeps one until its DMA completes).
    mem: GuestMem,
    controller: Arc<Controller>,
    rings: Vec<(RingRegion, RingRegion)>,
    to_host: Vec<Arc<Signal>>,
    to_guest: Vec<Arc<Signal>>,
    data: GpaRange,
}

impl fmt::Debug for StorvspVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorvspVm")
            .field("controller", &self.controller)
            .field("rings", &self.rings)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

impl StorvspVm {
    /// A VM laid out as `config` says (memory grows to fit the rings and
    /// at least 1 MiB of data area), serving `controller`. Panics only if
    /// the layout itself is invalid (a ring size that is not a whole
    /// number of pages above one) or the host cannot create the guest
    /// memory file ([`VmMemory::Mapped`]).
    pub fn new(controller: Arc<Controller>, config: VmConfig) -> Self {
        let pair = config.request_ring + config.completion_ring;
        let rings_end = RINGS_BASE + pair * config.channels.max(1) as u64;
        let data_start = rings_end.next_multiple_of(PAGE);
        let size = config.memory_bytes.max(data_start + (1 << 20));
        let mem = match config.memory {
            VmMemory::Mapped => {
                let len = usize::try_from(size).expect("guest memory size fits the address space");
                GuestMem::new(
                    GuestRam::memfd("parastor-emulated-vm", len).expect("guest memory file"),
                )
            }
            VmMemory::Locked => GuestMem::new(RamGuestMemory::new(size)),
        };
        let rings = (0..config.channels.max(1))
            .map(|i| {
                let at = RINGS_BASE + pair * i as u64;
                let incoming = RingRegion::new(Gpa::new(at), config.request_ring);
                let outgoing =
                    RingRegion::new(Gpa::new(at + config.request_ring), config.completion_ring);
                parastor_vmbus::init_ring(&*mem, incoming, RingFeatures::new())
                    .expect("request ring layout");
                parastor_vmbus::init_ring(&*mem, outgoing, RingFeatures::new())
                    .expect("completion ring layout");
                (incoming, outgoing)
            })
            .collect::<Vec<_>>();
        let n = rings.len();
        Self {
            mem,
            controller,
            rings,
            to_host: (0..n).map(|_| Arc::new(Signal::new())).collect(),
            to_guest: (0..n).map(|_| Arc::new(Signal::new())).collect(),
            data: GpaRange::new(Gpa::new(data_start), size - data_start),
        }
    }

    /// A VM with the default layout ([`VmConfig::default`]).
    pub fn with_defaults(controller: Arc<Controller>) -> Self {
        Self::new(controller, VmConfig::default())
    }

    /// The controller.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    /// A handle on the guest memory, for a backend that keeps it until
    /// its requests complete.
    pub fn shared_memory(&self) -> GuestMem {
        self.mem.clone()
    }

    /// Channel `i`'s rings: (request ring, completion ring).
    pub fn rings(&self, i: usize) -> Option<(RingRegion, RingRegion)> {
        self.rings.get(i).copied()
    }

    /// Ring pairs laid out.
    pub fn channel_count(&self) -> usize {
        self.rings.len()
    }

    /// The signal channel `i`'s guest raises for the host.
    pub fn to_host(&self, i: usize) -> Option<&Signal> {
        self.to_host.get(i).map(|s| &**s)
    }

    /// The signal channel `i`'s host raises for the guest.
    pub fn to_guest(&self, i: usize) -> Option<&Signal> {
        self.to_guest.get(i).map(|s| &**s)
    }

    /// Channel `i`'s signals as its host-side worker owns them: to the
    /// guest, and from it.
    pub fn host_signals(&self, i: usize) -> Option<ChannelSignals> {
        Some(ChannelSignals::new(
            self.to_guest.get(i)?.clone(),
            self.to_host.get(i)?.clone(),
        ))
    }

    /// Guest memory free for data buffers (after the rings).
    pub fn data_area(&self) -> GpaRange {
        self.data
    }

    /// Lays channel `i`'s rings out afresh (empty), as a guest does
    /// before reopening a channel.
    pub fn reset_rings(&self, i: usize) -> Result<(), StorvscError> {
        let (incoming, outgoing) = self
            .rings(i)
            .ok_or(StorvscError::BadChannel { channel: i })?;
        parastor_vmbus::init_ring(&*self.mem, incoming, RingFeatures::new())?;
        parastor_vmbus::init_ring(&*self.mem, outgoing, RingFeatures::new())?;
        Ok(())
    }

    /// The guest's endpoint of channel `i`.
    pub fn guest_channel(&self, i: usize) -> Result<Channel<'_>, StorvscError> {
        let (incoming, outgoing) = self
            .rings(i)
            .ok_or(StorvscError::BadChannel { channel: i })?;
        Ok(Channel::guest(
            &*self.mem,
            incoming,
            outgoing,
            &*self.to_host[i],
        )?)
    }

    /// The host's endpoint of channel `i`.
    pub fn host_channel(&self, i: usize) -> Result<Channel<'_>, StorvscError> {
        let (incoming, outgoing) = self
            .rings(i)
            .ok_or(StorvscError::BadChannel { channel: i })?;
        Ok(Channel::host(
            &*self.mem,
            incoming,
            outgoing,
            &*self.to_guest[i],
        )?)
    }

    /// The host's endpoint of channel `i`, owning a share of the guest
    /// memory and its signal to the guest: it borrows nothing from the VM.
    pub fn owned_host_channel(&self, i: usize) -> Result<Channel<'static>, StorvscError> {
        let (incoming, outgoing) = self
            .rings(i)
            .ok_or(StorvscError::BadChannel { channel: i })?;
        Ok(Channel::host_owned(
            self.shared_memory(),
            incoming,
            outgoing,
            self.to_guest[i].clone(),
        )?)
    }

    /// A StorVSP worker serving channel `i` as the controller's primary
    /// channel, owning what it uses (`'static + Send`): it can be built
    /// here and moved to another thread. Drive it with
    /// [`StorvspChannel::run`] on [`StorvspVm::host_signals`]'s
    /// `from_peer`.
    pub fn owned_primary_worker(&self, i: usize) -> Result<StorvspChannel<'static>, StorvscError> {
        Ok(StorvspChannel::primary(
            self.controller.clone(),
            self.owned_host_channel(i)?,
        ))
    }

    /// A StorVSP worker serving channel `i` as the controller's primary
    /// channel.
    pub fn primary_worker(&self, i: usize) -> Result<StorvspChannel<'_>, StorvscError> {
        Ok(StorvspChannel::primary(
            self.controller.clone(),
            self.host_channel(i)?,
        ))
    }

    /// A StorVSP worker serving channel `i` as a sub-channel.
    pub fn sub_worker(&self, i: usize) -> Result<StorvspChannel<'_>, StorvscError> {
        Ok(StorvspChannel::sub_channel(
            self.controller.clone(),
            self.host_channel(i)?,
        ))
    }

    /// The in-process host: the primary channel's worker (sub-channel
    /// workers join as the guest opens them).
    pub fn inline_host(&self) -> Result<InlineHost<'_>, StorvscError> {
        Ok(InlineHost {
            vm: self,
            workers: vec![self.primary_worker(0)?],
        })
    }

    /// A driver on channel 0 served by an [`InlineHost`], not yet
    /// negotiated.
    pub fn guest(&self, config: GuestConfig) -> Result<Storvsc<'_, InlineHost<'_>>, StorvscError> {
        Ok(Storvsc::new(
            config,
            self.guest_channel(0)?,
            self.inline_host()?,
            self.data,
        ))
    }

    /// A driver as [`StorvspVm::guest`], negotiated and with the bus
    /// scanned once ([`Storvsc::connect`]).
    pub fn connect(
        &self,
        config: GuestConfig,
    ) -> Result<Storvsc<'_, InlineHost<'_>>, StorvscError> {
        let mut g = self.guest(config)?;
        g.connect()?;
        Ok(g)
    }
}

/// The StorVSP workers of a [`StorvspVm`], run in the guest's thread.
pub struct InlineHost<'a> {
    vm: &'a StorvspVm,
    workers: Vec<StorvspChannel<'a>>,
}

impl fmt::Debug for InlineHost<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InlineHost")
            .field("workers", &self.workers)
            .finish()
    }
}

impl<'a> InlineHost<'a> {
    /// Worker `i` (0: the primary channel's).
    pub fn worker(&self, i: usize) -> Option<&StorvspChannel<'a>> {
        self.workers.get(i)
    }

    /// Worker `i`, to step it by hand.
    pub fn worker_mut(&mut self, i: usize) -> Option<&mut StorvspChannel<'a>> {
        self.workers.get_mut(i)
    }
}

impl<'a> Host<'a> for InlineHost<'a> {
    /// Runs every worker's [`StorvspChannel::process`].
    fn run(&mut self) -> Result<Progress, StorvscError> {
        let mut worked = false;
        for w in &mut self.workers {
            worked |= w.process()?;
        }
        Ok(if worked {
            Progress::Worked
        } else {
            Progress::Idle
        })
    }

    fn open_sub_channel(&mut self, index: u16) -> Result<Channel<'a>, StorvscError> {
        let i = usize::from(index);
        if i == 0 || i >= self.vm.channel_count() || i != self.workers.len() {
            return Err(StorvscError::NoSubChannel { index });
        }
        self.workers.push(self.vm.sub_worker(i)?);
        self.vm.guest_channel(i)
    }
}

/// A single StorVSP worker as the whole host (a driver on one channel,
/// whose worker a test steps by hand between the driver's calls): no
/// sub-channels.
impl<'a> Host<'a> for StorvspChannel<'a> {
    fn run(&mut self) -> Result<Progress, StorvscError> {
        Ok(if self.process()? {
            Progress::Worked
        } else {
            Progress::Idle
        })
    }

    fn open_sub_channel(&mut self, index: u16) -> Result<Channel<'a>, StorvscError> {
        Err(StorvscError::NoSubChannel { index })
    }
}

/// A host served on another thread: the guest waits (bounded) for it.
/// Sub-channels are opened on the VM's rings; serving them is the other
/// thread's job.
#[derive(Debug, Clone, Copy)]
pub struct RemoteHost<'a> {
    vm: &'a StorvspVm,
}

impl<'a> RemoteHost<'a> {
    /// The host of `vm`, served elsewhere.
    pub fn new(vm: &'a StorvspVm) -> Self {
        Self { vm }
    }
}

impl<'a> Host<'a> for RemoteHost<'a> {
    /// Sleeps a millisecond: the host runs on its own.
    fn run(&mut self) -> Result<Progress, StorvscError> {
        std::thread::sleep(Duration::from_millis(1));
        Ok(Progress::Elsewhere)
    }

    fn open_sub_channel(&mut self, index: u16) -> Result<Channel<'a>, StorvscError> {
        let i = usize::from(index);
        if i == 0 || i >= self.vm.channel_count() {
            return Err(StorvscError::NoSubChannel { index });
        }
        self.vm.guest_channel(i)
    }
}

impl StorvspVm {
    /// A driver on channel 0 whose host runs elsewhere ([`RemoteHost`]).
    pub fn remote_guest(
        &self,
        config: GuestConfig,
    ) -> Result<Storvsc<'_, RemoteHost<'_>>, StorvscError> {
        Ok(Storvsc::new(
            config,
            self.guest_channel(0)?,
            RemoteHost::new(self),
            self.data,
        ))
    }
}
