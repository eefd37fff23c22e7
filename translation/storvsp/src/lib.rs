//! StorVSP: the SCSI controller a guest's StorVSC reaches over VMBus.
//!
//! A [`Controller`] is one guest-visible SCSI adapter: its LUN map
//! ([`ScsiPath`] → [`Lun`]: a [`ScsiDisk`] or a [`ScsiDvd`]), the protocol
//! state negotiated on the primary channel, and the sub-channel count the
//! guest asked for. Each
//! VMBus channel of the controller (the primary and every sub-channel) is
//! served by its own [`StorvspChannel`], which reads packets from the
//! channel's incoming ring, answers negotiation packets, runs SCSI requests
//! on the LUNs and writes completions to the outgoing ring.
//!
//! Protocol (OpenVMM catalog §5):
//!
//! - Negotiation on the primary channel: `BEGIN_INITIALIZATION` →
//!   `QUERY_PROTOCOL_VERSION` (exactly Win6, Win7, Win8 and Blue are
//!   accepted; anything else is answered `REVISION_MISMATCH` and the guest
//!   may try another) → `QUERY_PROPERTIES` → [`CREATE_SUB_CHANNELS`] →
//!   `END_INITIALIZATION` → ready. A packet out of order is answered
//!   `INVALID_DEVICE_STATE`. Sub-channels take no packets until the
//!   controller is ready.
//! - A completion is the header plus the request's own size: the payload
//!   the guest sent after the header, at most the whole payload union
//!   (`0x34` bytes), zero padded or truncated — whatever the negotiated
//!   version, as Hyper-V does. Guests check it: Linux 5.19 and later send
//!   every packet at the full `0x40` bytes and drop a completion shorter
//!   than that (`storvsc_drv.c`, `storvsc_on_channel_callback`'s
//!   `minlen`); Windows sends and expects exactly the negotiated size
//!   (OpenVMM catalog §5.2). Only packets the host starts itself
//!   (`ENUMERATE_BUS`) use the negotiated size (pre-Windows 8 before a
//!   version is settled).
//! - `EXECUTE_SRB`: the request's data buffer is the packet's GPA-direct
//!   ranges — any number of them (OpenVMM accepts only one) — cut to the
//!   request's `data_transfer_length`. `REPORT LUNS` is answered from the
//!   LUN map; a request for a missing LUN gets "LU not present" INQUIRY
//!   data or `SRB_STATUS_INVALID_LUN`.
//! - Hot add / remove ([`Controller::attach`], [`Controller::remove`]) send
//!   `ENUMERATE_BUS` to the guest on the primary channel (Win7 and later).
//!
//! [`ScsiDisk`]: parastor_scsi::ScsiDisk
//! [`ScsiDvd`]: parastor_scsi::ScsiDvd
//! [`SenseDelivery::Autosense`]: parastor_scsi::SenseDelivery::Autosense
//! [`CREATE_SUB_CHANNELS`]: parastor_hw::storvsp::Operation::CREATE_SUB_CHANNELS
//!
//! Queue depth: a channel takes a packet only after reserving ring space for
//! its completion, and holds at most [`ControllerConfig::io_queue_depth`]
//! requests in flight. When either runs out it stops reading the incoming
//! ring until completions (or the guest draining the outgoing ring) free
//! room, so no completion is ever lost and a guest that stops reading
//! completions cannot make the service buffer without bound.
//!
//! Poll mode (catalog §5.4): while a channel has at least
//! [`ControllerConfig::poll_mode_queue_depth`] requests in flight it sets
//! the incoming ring's interrupt mask, so the guest stops signalling for
//! each packet it adds, and instead reads the ring whenever it runs anyway
//! — on every completion and every [`StorvspChannel::poll_work`] pass.
//! When the count drops below the threshold it clears the mask with
//! `unmask_and_check` and keeps reading if packets arrived while the mask
//! was set (the guest did not signal for them), so none is missed.
//!
//! Transfer size: `QUERY_PROPERTIES` reports
//! [`ControllerConfig::max_transfer_bytes`], and an `EXECUTE_SRB` asking
//! for more is answered `SRB_STATUS_INVALID_REQUEST`. [`Controller::attach`]
//! gives the LUN the same limit ([`Lun::limit_transfer`]), so the MAXIMUM
//! TRANSFER LENGTH a disk advertises in its block limits page is never
//! more than the controller carries, and a LUN whose logical block is
//! larger than the limit is refused.
//!
//! Sense data: a CHECK CONDITION's sense goes back in the completion
//! (autosense) whenever the request has a sense buffer and does not set
//! `SRB_FLAGS_DISABLE_AUTOSENSE` (which counts from Windows 8 on). Such a
//! request runs with [`SenseDelivery::Autosense`], so the LUN does not
//! keep that sense and a later REQUEST SENSE reports NO SENSE (SPC clears
//! sense data once it is delivered); a request without autosense leaves
//! its sense for REQUEST SENSE.
//!
//! `FC_HBA_DATA`: this is not a Fibre Channel adapter, so the request is
//! answered `INVALID_DEVICE_STATE` (the status OpenVMM gives every
//! operation it does not serve, catalog §5.2) in any state and on any
//! channel, whatever its payload length; it never ends the channel.
//!
//! Hostile input: a malformed packet is answered with the protocol's error
//! status where the protocol has one, and otherwise ends that channel with a
//! [`StorvspError`] (as OpenVMM does): never a panic, never a hang.
//!
//! Initiator identity: every channel of a controller is the same I_T nexus
//! (the guest's one SCSI host adapter; sub-channels are only extra queues),
//! so all of them issue requests as [`ControllerConfig::initiator`].
//! Per-channel identities would make a persistent reservation taken through
//! one queue conflict with the same guest's I/O on another.

#![no_std]

extern crate alloc;

mod channel;
mod slots;
pub mod state;
#[cfg(test)]
mod tests;

pub use channel::{RUN_BUDGET, StorvspChannel};
pub use slots::{Phase, RequestRecord, SrbAnswer};

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::Waker;
use parastor_core::InitiatorId;
use parastor_core::bounce::BouncePool;
use parastor_core::sync::{Mutex, RwLock};
use parastor_hw::storvsp::{self as hw, ParseError, RequestSize};
use parastor_scsi::Lun;
use parastor_vmbus::{ChannelError, RingError};

/// Largest transfer a guest may ask for in one request, reported in
/// `QUERY_PROPERTIES` (OpenVMM: 256 KiB).
pub const DEFAULT_MAX_TRANSFER_BYTES: u32 = 0x40000;

/// Default per-channel limit of requests in flight (OpenHCL's resolver
/// default).
pub const DEFAULT_IO_QUEUE_DEPTH: usize = 256;

/// Default number of requests in flight at which a channel enters poll
/// mode (OpenVMM's `poll_mode_queue_depth` default: 1, so any outstanding
/// I/O puts the channel in poll mode; OpenHCL uses 4 for Azure remote data
/// disks).
pub const DEFAULT_POLL_MODE_QUEUE_DEPTH: usize = 1;

/// The address of a LUN on the controller: SCSI path (bus), target and LUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScsiPath {
    /// Path (bus) id.
    pub path: u8,
    /// Target id.
    pub target: u8,
    /// Logical unit number.
    pub lun: u8,
}

impl ScsiPath {
    /// The address `path`/`target`/`lun`.
    pub const fn new(path: u8, target: u8, lun: u8) -> Self {
        Self { path, target, lun }
    }
}

/// Static configuration of a [`Controller`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// The initiator identity all of this controller's requests carry
    /// (typically derived from the controller's instance GUID).
    pub initiator: InitiatorId,
    /// Most sub-channels the guest may create (reported to Win8+ guests in
    /// `QUERY_PROPERTIES`; 0: no multi-channel support).
    pub max_sub_channels: u16,
    /// Most requests in flight per channel (at least 1 is used).
    pub io_queue_depth: usize,
    /// Largest transfer per request, reported in `QUERY_PROPERTIES`. An
    /// `EXECUTE_SRB` whose `data_transfer_length` exceeds it is refused
    /// with `SRB_STATUS_INVALID_REQUEST` without touching the LUN; every
    /// LUN attached is told the limit ([`Controller::attach`]).
    pub max_transfer_bytes: u32,
    /// Requests in flight on a channel at which it enters poll mode
    /// (default [`DEFAULT_POLL_MODE_QUEUE_DEPTH`]; values below 1 are
    /// treated as 1; `usize::MAX` disables poll mode). See "Poll mode" in
    /// the [module documentation](self).
    pub poll_mode_queue_depth: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            initiator: InitiatorId::new(1),
            max_sub_channels: 0,
            io_queue_depth: DEFAULT_IO_QUEUE_DEPTH,
            max_transfer_bytes: DEFAULT_MAX_TRANSFER_BYTES,
            poll_mode_queue_depth: DEFAULT_POLL_MODE_QUEUE_DEPTH,
        }
    }
}

/// Where the primary channel's negotiation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegotiationState {
    /// Waiting for `BEGIN_INITIALIZATION`.
    Begin,
    /// Waiting for an acceptable `QUERY_PROTOCOL_VERSION`.
    QueryVersion,
    /// Version settled; waiting for `QUERY_PROPERTIES`.
    QueryProperties,
    /// Waiting for `END_INITIALIZATION` (or `CREATE_SUB_CHANNELS`).
    EndInitialization,
    /// Negotiated: SCSI requests are served.
    Ready,
}

/// Why [`Controller::attach`] refused a LUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachError {
    /// A LUN is already attached at this address.
    Occupied(ScsiPath),
    /// One logical block of the LUN is larger than the controller's
    /// [`ControllerConfig::max_transfer_bytes`]: no READ or WRITE could
    /// reach it.
    TransferLimit {
        /// Where the LUN was to be attached.
        path: ScsiPath,
        /// The LUN's logical block size, in bytes.
        block_size: u32,
        /// The controller's transfer limit, in bytes.
        max_transfer_bytes: u32,
    },
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Occupied(p) => write!(
                f,
                "a LUN is already attached at {}:{}:{}",
                p.path, p.target, p.lun
            ),
            Self::TransferLimit {
                path: p,
                block_size,
                max_transfer_bytes,
            } => write!(
                f,
                "cannot attach a LUN at {}:{}:{}: one of its {block_size}-byte \
                 blocks is more than the controller's max_transfer_bytes \
                 ({max_transfer_bytes}) carries in a request",
                p.path, p.target, p.lun
            ),
        }
    }
}

impl core::error::Error for AttachError {}

/// Why a channel stopped: the guest broke the protocol (or the ring), and
/// the channel cannot continue. Requests in flight at that point are
/// dropped without completions; the channel should be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorvspError {
    /// The ring or a packet's VMBus framing is malformed.
    Channel(ChannelError),
    /// Writing a completion failed for a reason other than lack of space
    /// (which never happens: space is reserved first).
    Ring(RingError),
    /// A packet is not a StorVSP packet (too short, unknown operation).
    Packet {
        /// The packet's transaction id.
        transaction_id: u64,
        /// What is wrong with it.
        error: ParseError,
    },
    /// A request packet did not ask for a completion.
    NotTransactional {
        /// The packet's transaction id.
        transaction_id: u64,
    },
    /// The guest sent a completion packet (requests of an operation only
    /// the host sends, such as `ENUMERATE_BUS`, are answered
    /// `INVALID_DEVICE_STATE` instead).
    UnexpectedPacket {
        /// The packet's transaction id.
        transaction_id: u64,
    },
    /// The channel was closed by its owner ([`StorvspChannel::close`]):
    /// the guest closed it, or the controller stopped or was reset.
    Closed,
}

impl fmt::Display for StorvspError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Channel(e) => write!(f, "storvsp channel: {e}"),
            Self::Ring(e) => write!(f, "storvsp completion: {e}"),
            Self::Packet {
                transaction_id,
                error,
            } => write!(f, "storvsp packet {transaction_id:#x}: {error}"),
            Self::NotTransactional { transaction_id } => write!(
                f,
                "storvsp packet {transaction_id:#x} does not request a completion"
            ),
            Self::UnexpectedPacket { transaction_id } => write!(
                f,
                "storvsp packet {transaction_id:#x} is not a guest request"
            ),
            Self::Closed => f.write_str("storvsp channel closed"),
        }
    }
}

impl core::error::Error for StorvspError {}

impl From<ChannelError> for StorvspError {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}

impl From<RingError> for StorvspError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

/// Negotiated protocol state, shared by all channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Protocol {
    state: NegotiationState,
    version: Option<hw::Version>,
    /// Sub-channels the guest asked for (`None`: not asked yet).
    sub_channels: Option<u16>,
}

impl Protocol {
    const INITIAL: Self = Self {
        state: NegotiationState::Begin,
        version: None,
        sub_channels: None,
    };
    const VERSION_SET: u64 = 1 << 8;
    const SUB_CHANNELS_SET: u64 = 1 << 9;

    /// The state packed into one word (state in bits 0-7, the presence
    /// flags in bits 8 and 9, the version in bits 16-31, the sub-channel
    /// count in bits 32-47), so the I/O path reads it without a lock.
    fn pack(self) -> u64 {
        let mut w = self.state as u64;
        if let Some(v) = self.version {
            w |= Self::VERSION_SET | u64::from(v.get()) << 16;
        }
        if let Some(n) = self.sub_channels {
            w |= Self::SUB_CHANNELS_SET | u64::from(n) << 32;
        }
        w
    }

    fn unpack(w: u64) -> Self {
        use NegotiationState as S;
        let state = match w & 0xFF {
            0 => S::Begin,
            1 => S::QueryVersion,
            2 => S::QueryProperties,
            3 => S::EndInitialization,
            _ => S::Ready,
        };
        Self {
            state,
            version: (w & Self::VERSION_SET != 0).then_some(hw::Version::new((w >> 16) as u16)),
            sub_channels: (w & Self::SUB_CHANNELS_SET != 0).then_some((w >> 32) as u16),
        }
    }
}

/// One StorVSP SCSI controller: LUNs, negotiated protocol state and
/// sub-channel bookkeeping, shared by the [`StorvspChannel`]s serving its
/// primary channel and sub-channels.
pub struct Controller {
    config: ControllerConfig,
    luns: RwLock<BTreeMap<ScsiPath, Lun>>,
    /// The negotiation ([`Protocol::pack`]ed): read without a lock, written
    /// only under `negotiation`.
    protocol: AtomicU64,
    /// Serializes changes to `protocol`.
    negotiation: Mutex<()>,
    /// Bumped at every LUN change; the primary channel compares it with
    /// the value it last announced.
    generation: AtomicU64,
    /// Channel workers to wake on a state or LUN change.
    waiters: Mutex<Vec<Waker>>,
    /// Bumped (under the `waiters` lock) each time the waiters are woken
    /// and forgotten: a worker registered since the last bump need not
    /// register again.
    wake_epoch: AtomicU64,
    /// Scratch memory the LUNs' commands share
    /// ([`parastor_scsi::DEFAULT_SCRATCH_BUDGET`]).
    scratch: BouncePool,
}

impl fmt::Debug for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("config", &self.config)
            .field("luns", &self.luns.read().keys().collect::<Vec<_>>())
            .field("protocol", &self.protocol())
            .finish()
    }
}

impl Controller {
    /// A controller with no LUNs, not yet negotiated.
    pub fn new(config: ControllerConfig) -> Self {
        Self {
            config,
            luns: RwLock::new(BTreeMap::new()),
            protocol: AtomicU64::new(Protocol::INITIAL.pack()),
            negotiation: Mutex::new(()),
            generation: AtomicU64::new(0),
            waiters: Mutex::new(Vec::new()),
            wake_epoch: AtomicU64::new(0),
            scratch: BouncePool::new(parastor_scsi::DEFAULT_SCRATCH_BUDGET),
        }
    }

    /// The scratch pool every attached LUN takes its commands' scratch
    /// memory from (VERIFY, WRITE SAME, …), so the LUNs of one controller
    /// share one budget and wait for room in it.
    pub fn scratch(&self) -> &BouncePool {
        &self.scratch
    }

    /// The configuration.
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// Attaches `lun` (a disk or a DVD drive: anything `Into<Lun>`, such as
    /// an `Arc<ScsiDisk>`) at `path` and, once the guest is ready, tells it
    /// to rescan (`ENUMERATE_BUS`, Win7 and later).
    ///
    /// The LUN's transfer limit is lowered to the controller's
    /// [`ControllerConfig::max_transfer_bytes`] before the guest can see
    /// it ([`Lun::limit_transfer`]), so the limit a disk advertises is one
    /// this controller carries; the LUN takes its commands' scratch memory
    /// from the controller's pool ([`Controller::scratch`]).
    pub fn attach(&self, path: ScsiPath, lun: impl Into<Lun>) -> Result<(), AttachError> {
        let lun = lun.into();
        let max_transfer_bytes = self.config.max_transfer_bytes;
        let block_size = lun.block_size();
        if block_size > max_transfer_bytes {
            return Err(AttachError::TransferLimit {
                path,
                block_size,
                max_transfer_bytes,
            });
        }
        {
            let mut luns = self.luns.write();
            if luns.contains_key(&path) {
                return Err(AttachError::Occupied(path));
            }
            lun.limit_transfer(max_transfer_bytes);
            lun.use_scratch(&self.scratch);
            luns.insert(path, lun);
        }
        self.changed();
        Ok(())
    }

    /// Detaches the LUN at `path`, if any, and tells the guest to rescan.
    /// Requests already running on it finish normally.
    pub fn remove(&self, path: ScsiPath) -> Option<Lun> {
        let old = self.luns.write().remove(&path);
        if old.is_some() {
            self.changed();
        }
        old
    }

    /// Forgets the negotiation (state back to `Begin`, no version, no
    /// sub-channels): call it when the guest closes the primary channel,
    /// before serving a reopened one, so a rebooted or reloaded guest
    /// driver can negotiate again. LUNs stay attached.
    pub fn reset(&self) {
        self.update_protocol(|p| *p = Protocol::INITIAL);
    }

    /// The negotiation as it stands, without a lock.
    fn protocol(&self) -> Protocol {
        Protocol::unpack(self.protocol.load(Ordering::Acquire))
    }

    /// Changes the negotiation with `f` (serialized with other changes)
    /// and, if it changed, wakes the channel workers (sub-channels waiting
    /// for `Ready`) and the callers waiting for `CREATE_SUB_CHANNELS`.
    fn update_protocol<R>(&self, f: impl FnOnce(&mut Protocol) -> R) -> R {
        let guard = self.negotiation.lock();
        let before = self.protocol();
        let mut p = before;
        let r = f(&mut p);
        self.protocol.store(p.pack(), Ordering::Release);
        drop(guard);
        if p != before {
            self.wake_all();
        }
        r
    }

    /// Whether the negotiation is complete (`Ready`).
    fn is_ready(&self) -> bool {
        self.state() == NegotiationState::Ready
    }

    /// The LUN at `path`, if one is attached.
    pub fn lun(&self, path: ScsiPath) -> Option<Lun> {
        self.luns.read().get(&path).cloned()
    }

    /// The attached LUN addresses, sorted.
    pub fn paths(&self) -> Vec<ScsiPath> {
        self.luns.read().keys().copied().collect()
    }

    /// Where the negotiation stands.
    pub fn state(&self) -> NegotiationState {
        self.protocol().state
    }

    /// The negotiated protocol version, once settled.
    pub fn version(&self) -> Option<hw::Version> {
        self.protocol().version
    }

    /// The number of sub-channels the guest asked for with
    /// `CREATE_SUB_CHANNELS` (`None`: it has not asked). Offering them —
    /// and serving each with its own [`StorvspChannel::sub_channel`] — is
    /// the caller's job.
    pub fn sub_channels_requested(&self) -> Option<u16> {
        self.protocol().sub_channels
    }

    /// Completes (`Ready`) with the number of sub-channels once the guest
    /// has asked for them with `CREATE_SUB_CHANNELS`; until then registers
    /// `cx` to be woken when it does.
    pub fn poll_sub_channels(&self, cx: &mut core::task::Context<'_>) -> core::task::Poll<u16> {
        let _ = self.register(cx.waker());
        match self.sub_channels_requested() {
            Some(n) => core::task::Poll::Ready(n),
            None => core::task::Poll::Pending,
        }
    }

    /// The negotiated request size (the pre-Windows 8 size before a
    /// version is settled): the size of packets the host starts, the
    /// shortest `EXECUTE_SRB` accepted, and the sense buffer's size.
    fn request_size(&self) -> RequestSize {
        self.version()
            .map_or(RequestSize::PreWin8, RequestSize::for_version)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Records a LUN change and wakes the channel workers.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.wake_all();
    }

    fn wake_all(&self) {
        let waiters = {
            let mut waiters = self.waiters.lock();
            self.wake_epoch.fetch_add(1, Ordering::AcqRel);
            core::mem::take(&mut *waiters)
        };
        for w in waiters {
            w.wake();
        }
    }

    /// Registers `waker` to be woken at the next state or LUN change.
    /// Returns the wake epoch it was registered in.
    fn register(&self, waker: &Waker) -> u64 {
        let mut waiters = self.waiters.lock();
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
        self.wake_epoch.load(Ordering::Acquire)
    }

    /// Like [`Controller::register`], but skips the lock when `last` (the
    /// caller's previous registration) shows `waker` is still registered.
    fn register_again(&self, waker: &Waker, last: &mut Option<(u64, Waker)>) {
        if let Some((epoch, registered)) = last
            && *epoch == self.wake_epoch.load(Ordering::Acquire)
            && registered.will_wake(waker)
        {
            return;
        }
        let epoch = self.register(waker);
        *last = Some((epoch, waker.clone()));
    }

    /// The `QUERY_PROPERTIES` answer for a channel negotiated at `version`.
    fn properties(&self, version: hw::Version) -> hw::ChannelProperties {
        let mut p = <hw::ChannelProperties as zerocopy::FromZeros>::new_zeroed();
        p.max_transfer_bytes = self.config.max_transfer_bytes.into();
        if version >= hw::Version::WIN8 && self.config.max_sub_channels > 0 {
            p.flags = hw::ChannelFlags::new().with_multi_channel(true);
            p.maximum_sub_channel_count = self.config.max_sub_channels.into();
        }
        p
    }
}
