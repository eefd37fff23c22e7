//! The emulated StorVSC: a guest's SCSI driver over a StorVSP channel, as
//! Linux and Windows drive it, over real VMBus rings ([`Channel::guest`]).
//!
//! A [`Storvsc`] owns the guest's channel endpoints (the primary and, once
//! granted, the sub-channels) and a [`Host`]: whatever serves the other
//! end. The in-process host ([`InlineHost`]) runs the StorVSP workers in
//! the guest's thread whenever the guest waits, so tests are deterministic
//! and need no executor; a host on another thread is reached through
//! [`Host::run`] returning [`Progress::Elsewhere`].
//!
//! What the driver sends and accepts is its [`Profile`]'s: the versions
//! it offers and their order, the size of every packet, how strictly
//! completions are checked (a packet the guest would drop or refuse is
//! reported as [`StorvscError::Rejected`]) and when it asks for
//! sub-channels. Transaction ids are Linux's: [`CONTROL_TRANSACTION_ID`]
//! for negotiation packets, tag + 1 for SCSI requests (0 is the host's
//! unsolicited packets).
//!
//! Two ways to issue SCSI requests:
//!
//! - the lean, batched API — [`Storvsc::submit`] (queued, not yet
//!   visible), [`Storvsc::flush`] (one publish, at most one signal per
//!   channel), [`Storvsc::run_host`], [`Storvsc::reap`] — which allocates
//!   nothing per request: packets are built on the stack, tags index a
//!   table allocated up front, completions are read into a reused buffer;
//! - the test API — [`Storvsc::srb`] and friends (in `scsi`), which places
//!   data buffers in guest memory, copies data in and out, retries a
//!   UNIT ATTENTION once and rescans the bus after `ENUMERATE_BUS`, as the
//!   Linux SCSI midlayer does.
//!
//! Raw access for protocol tests: [`Storvsc::send_control`],
//! [`Storvsc::recv`], [`Storvsc::channel_mut`], and the negotiation steps
//! one by one ([`Storvsc::begin_initialization`] …).
//!
//! [`InlineHost`]: crate::vm::InlineHost

mod profile;
mod scsi;

pub use profile::{CONTROL_TRANSACTION_ID, Profile, Rejection};
pub use scsi::{Data, Srb, SrbReply, Tag};

use core::fmt;
use parastor_core::{GpaRange, MemoryError};
use parastor_hw::scsi::ScsiStatus;
use parastor_hw::storvsp::{
    CDB_MAX_LEN, ChannelProperties, CompletionPayload, DataDirection, MAX_PACKET_LEN, NtStatus,
    Operation, PACKET_HEADER_LEN, PACKET_PAYLOAD_LEN, PacketFlags, PacketHeader, ProtocolVersion,
    QUEUE_TAG_UNTAGGED, QueueAction, ScsiRequest, SrbFlags, SrbStatusAndFlags, Version,
};
use parastor_storvsp::StorvspError;
use parastor_vmbus::{
    Channel, ChannelError, ChannelMemory, OutgoingKind, PacketHead, PacketKind, RingError,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// Bytes of each packet from the host the driver reads: the VMBus
/// descriptor and more than a whole `vstor_packet` (what Linux copies).
const HEAD_LEN: usize = 128;

/// Packet flags of a request that wants its completion.
const REQUEST_COMPLETION: PacketFlags = PacketFlags::new().with_request_completion(true);

/// How long a wait on a host running elsewhere may take.
const REMOTE_WAIT: Duration = Duration::from_secs(10);

/// What a [`Host::run`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The host took packets or sent some: look again.
    Worked,
    /// The host had nothing to do: nothing more will arrive until the
    /// guest sends something.
    Idle,
    /// The host runs elsewhere (another thread): its progress is unknown,
    /// so the guest keeps looking, for a bounded time.
    Elsewhere,
}

/// The host end of a guest's channels, as the guest sees it.
pub trait Host<'a> {
    /// Lets the host serve what the guest sent. An in-process host runs
    /// its channel workers until they have nothing left to do now; a host
    /// on another thread yields briefly. Fails if the host ended a
    /// channel.
    fn run(&mut self) -> Result<Progress, StorvscError>;

    /// Opens sub-channel `index` (1 for the first) after the host granted
    /// `CREATE_SUB_CHANNELS`, returning the guest's endpoint.
    fn open_sub_channel(&mut self, index: u16) -> Result<Channel<'a>, StorvscError>;
}

/// How the emulated driver behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    /// The guest driver it models.
    pub profile: Profile,
    /// The versions offered, in order (default: the profile's).
    pub versions: &'static [Version],
    /// The guest's CPUs: sub-channels wanted = `cpus - 1` (capped by the
    /// host), as Linux asks.
    pub cpus: u16,
    /// SCSI request tags (requests outstanding at once): `0..queue_depth`.
    pub queue_depth: u16,
}

impl GuestConfig {
    /// A one-CPU guest (no sub-channels) of `profile`, with 256 tags.
    pub const fn new(profile: Profile) -> Self {
        Self {
            profile,
            versions: profile.versions(),
            cpus: 1,
            queue_depth: 256,
        }
    }

    /// The same guest with `cpus` CPUs.
    pub const fn cpus(mut self, cpus: u16) -> Self {
        self.cpus = cpus;
        self
    }

    /// The same guest offering exactly `versions`.
    pub const fn versions(mut self, versions: &'static [Version]) -> Self {
        self.versions = versions;
        self
    }

    /// The same guest with `queue_depth` tags.
    pub const fn queue_depth(mut self, queue_depth: u16) -> Self {
        self.queue_depth = queue_depth;
        self
    }
}

/// Why the emulated driver failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorvscError {
    /// The host ended a channel.
    Host(StorvspError),
    /// Writing a packet failed (ring full or broken).
    Ring(RingError),
    /// Reading a packet failed.
    Channel(ChannelError),
    /// The guest would not accept a packet from the host (its profile's
    /// checks): the request it completes stays outstanding.
    Rejected {
        /// The channel it arrived on.
        channel: usize,
        /// Its transaction id.
        transaction_id: u64,
        /// Why.
        rejection: Rejection,
    },
    /// A negotiation step completed with this status.
    Negotiation {
        /// The step.
        operation: Operation,
        /// The host's answer.
        status: NtStatus,
    },
    /// No offered version was accepted.
    NoVersion,
    /// The host went idle without completing the transaction (or, for a
    /// host running elsewhere, did not complete it in time).
    NoCompletion {
        /// The transaction waited for.
        transaction_id: u64,
    },
    /// The host cannot open this sub-channel.
    NoSubChannel {
        /// The sub-channel's index (1 for the first).
        index: u16,
    },
    /// The tag is not below the queue depth, or not free (submit) / not
    /// outstanding (wait).
    BadTag {
        /// The tag.
        tag: u16,
    },
    /// No such channel is open.
    BadChannel {
        /// The channel index.
        channel: usize,
    },
    /// Guest memory access failed (data buffers of the test API).
    Memory(MemoryError),
    /// A SCSI-level step of the test API failed.
    Scsi(String),
}

impl fmt::Display for StorvscError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host(e) => write!(f, "the host ended the channel: {e}"),
            Self::Ring(e) => write!(f, "writing a request: {e}"),
            Self::Channel(e) => write!(f, "reading from the host: {e}"),
            Self::Rejected {
                channel,
                transaction_id,
                rejection,
            } => write!(
                f,
                "the guest rejects packet {transaction_id:#x} on channel {channel}: {rejection}"
            ),
            Self::Negotiation { operation, status } => {
                write!(f, "negotiation step {operation:?} answered {status:?}")
            }
            Self::NoVersion => write!(f, "the host accepted none of the versions offered"),
            Self::NoCompletion { transaction_id } => {
                write!(f, "no completion for transaction {transaction_id:#x}")
            }
            Self::NoSubChannel { index } => write!(f, "sub-channel {index} cannot be opened"),
            Self::BadTag { tag } => write!(f, "tag {tag} is out of range or in the wrong state"),
            Self::BadChannel { channel } => write!(f, "channel {channel} is not open"),
            Self::Memory(e) => write!(f, "guest memory: {e}"),
            Self::Scsi(what) => write!(f, "SCSI: {what}"),
        }
    }
}

impl std::error::Error for StorvscError {}

impl From<StorvspError> for StorvscError {
    fn from(e: StorvspError) -> Self {
        Self::Host(e)
    }
}

impl From<RingError> for StorvscError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

impl From<ChannelError> for StorvscError {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}

impl From<MemoryError> for StorvscError {
    fn from(e: MemoryError) -> Self {
        Self::Memory(e)
    }
}

/// The data direction of a SCSI request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// No data.
    None,
    /// Device to guest (a read).
    In,
    /// Guest to device (a write).
    Out,
}

/// A packet from the host, as the guest received (and accepted) it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The channel it arrived on.
    pub channel: usize,
    /// The VMBus packet kind.
    pub kind: PacketKind,
    /// The transaction id.
    pub transaction_id: u64,
    /// The StorVSP header (zero where the packet was shorter).
    pub header: PacketHeader,
    /// StorVSP bytes received (header and payload, with the VMBus padding
    /// to 8 bytes), the size the guest checks.
    pub len: usize,
    /// The payload after the header, zero padded.
    pub payload: CompletionPayload,
}

impl Reply {
    /// The NT status.
    pub fn status(&self) -> NtStatus {
        self.header.status
    }

    /// The StorVSP operation.
    pub fn operation(&self) -> Operation {
        self.header.operation
    }

    /// Payload bytes after the header.
    pub fn payload_len(&self) -> usize {
        self.len.saturating_sub(PACKET_HEADER_LEN)
    }

    /// The payload as an `EXECUTE_SRB` completion.
    pub fn srb(&self) -> ScsiRequest {
        self.payload.scsi_request()
    }

    /// The payload as a `QUERY_PROPERTIES` completion.
    pub fn properties(&self) -> ChannelProperties {
        self.payload.channel_properties()
    }
}

/// A packet from the host as [`Storvsc::reap`] hands it over: a view of
/// the driver's read buffer, decoded on demand (the lean path copies
/// nothing it does not look at). [`ReplyRef::to_reply`] makes a [`Reply`].
#[derive(Clone, Copy, Debug)]
pub struct ReplyRef<'r> {
    channel: usize,
    head: PacketHead,
    /// The StorVSP bytes read (the head of the packet).
    bytes: &'r [u8],
}

impl ReplyRef<'_> {
    /// The channel it arrived on.
    #[inline]
    pub fn channel(&self) -> usize {
        self.channel
    }

    /// The transaction id.
    #[inline]
    pub fn transaction_id(&self) -> u64 {
        self.head.transaction_id
    }

    /// StorVSP bytes received (header and payload, with the VMBus padding
    /// to 8 bytes).
    #[inline]
    pub fn len(&self) -> usize {
        self.head.payload_len
    }

    /// Whether no StorVSP bytes were received.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.payload_len == 0
    }

    /// The StorVSP operation (0 if absent).
    #[inline]
    fn operation(&self) -> Operation {
        Operation::new(
            self.bytes
                .get(..4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        )
    }

    /// The NT status.
    #[inline]
    pub fn status(&self) -> NtStatus {
        NtStatus::new(
            self.bytes
                .get(8..12)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        )
    }

    /// Byte `at` of the payload (0 if absent).
    #[inline]
    fn byte(&self, at: usize) -> u8 {
        self.bytes.get(PACKET_HEADER_LEN + at).copied().unwrap_or(0)
    }

    /// An `EXECUTE_SRB` completion's SRB status (flags included), read
    /// without decoding the rest.
    #[inline]
    pub fn srb_status(&self) -> SrbStatusAndFlags {
        SrbStatusAndFlags::from_bits(self.byte(2))
    }

    /// An `EXECUTE_SRB` completion's SCSI status.
    #[inline]
    pub fn scsi_status(&self) -> ScsiStatus {
        ScsiStatus::new(self.byte(3))
    }

    /// An `EXECUTE_SRB` completion's data transfer length.
    #[inline]
    pub fn data_transfer_length(&self) -> u32 {
        u32::from_le_bytes([self.byte(12), self.byte(13), self.byte(14), self.byte(15)])
    }

    /// The payload as an `EXECUTE_SRB` completion (zero padded).
    #[inline]
    pub fn srb(&self) -> ScsiRequest {
        let rest = self.bytes.get(PACKET_HEADER_LEN..).unwrap_or(&[]);
        rest.get(..PACKET_PAYLOAD_LEN)
            .and_then(|p| ScsiRequest::read_from_bytes(p).ok())
            .unwrap_or_else(|| padded(rest))
    }

    /// The packet as an owned [`Reply`].
    #[inline]
    pub fn to_reply(&self) -> Reply {
        let header = self
            .bytes
            .get(..PACKET_HEADER_LEN)
            .and_then(|h| PacketHeader::read_from_bytes(h).ok())
            .unwrap_or_else(|| padded(self.bytes));
        let rest = self.bytes.get(PACKET_HEADER_LEN..).unwrap_or(&[]);
        let payload = rest
            .get(..PACKET_PAYLOAD_LEN)
            .and_then(|p| CompletionPayload::read_from_bytes(p).ok())
            .unwrap_or_else(|| padded(rest));
        Reply {
            channel: self.channel,
            kind: self.head.kind,
            transaction_id: self.head.transaction_id,
            header,
            len: self.head.payload_len,
            payload,
        }
    }
}

/// State of one tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Free,
    InFlight { channel: usize },
}

/// Where an accepted packet goes.
enum Route {
    Control,
    Srb(u16),
    Notification,
}

/// The emulated guest driver. See the [module documentation](self).
pub struct Storvsc<'a, H> {
    config: GuestConfig,
    mem: ChannelMemory<'a>,
    channels: Vec<Channel<'a>>,
    host: H,
    version: Option<Version>,
    properties: Option<ChannelProperties>,
    ready: bool,
    sub_channel_status: Option<NtStatus>,
    slots: Vec<Slot>,
    outstanding: usize,
    /// Where each packet's head is read (reused, never cleared).
    head: [u8; HEAD_LEN],
    /// Control completions read while looking for something else
    /// (capacity reserved up front).
    control: VecDeque<Reply>,
    /// SCSI completions read while looking for something else (capacity
    /// reserved up front: one per tag).
    done: VecDeque<(u16, Reply)>,
    enumerations: usize,
    rescan_pending: bool,
    test: scsi::TestState,
}

impl<H> fmt::Debug for Storvsc<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storvsc")
            .field("profile", &self.config.profile)
            .field("version", &self.version)
            .field("channels", &self.channels.len())
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

impl<'a, H: Host<'a>> Storvsc<'a, H> {
    /// A driver on the primary channel `primary` (not yet negotiated),
    /// served by `host`. `data` is guest memory the test API may place
    /// data buffers in.
    pub fn new(config: GuestConfig, primary: Channel<'a>, host: H, data: GpaRange) -> Self {
        let depth = usize::from(config.queue_depth);
        Self {
            config,
            mem: primary.memory().clone(),
            channels: vec![primary],
            host,
            version: None,
            properties: None,
            ready: false,
            sub_channel_status: None,
            slots: vec![Slot::Free; depth],
            outstanding: 0,
            head: [0; HEAD_LEN],
            control: VecDeque::with_capacity(8),
            done: VecDeque::with_capacity(depth),
            enumerations: 0,
            rescan_pending: false,
            test: scsi::TestState::new(data),
        }
    }

    // ---- accessors -------------------------------------------------------

    /// The configuration.
    pub fn config(&self) -> &GuestConfig {
        &self.config
    }

    /// The profile.
    pub fn profile(&self) -> Profile {
        self.config.profile
    }

    /// The negotiated version, once accepted.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// The `QUERY_PROPERTIES` answer, once received.
    pub fn properties(&self) -> Option<ChannelProperties> {
        self.properties
    }

    /// Whether `END_INITIALIZATION` completed.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The status of a failed `CREATE_SUB_CHANNELS` that the driver went
    /// on without (Linux does), if any.
    pub fn sub_channel_status(&self) -> Option<NtStatus> {
        self.sub_channel_status
    }

    /// Channels open: the primary plus the sub-channels.
    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    /// Channel `i`'s endpoint.
    pub fn channel(&self, i: usize) -> Option<&Channel<'a>> {
        self.channels.get(i)
    }

    /// Channel `i`'s endpoint, for raw packets.
    pub fn channel_mut(&mut self, i: usize) -> Option<&mut Channel<'a>> {
        self.channels.get_mut(i)
    }

    /// The host.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The host, to step it by hand.
    pub fn host_mut(&mut self) -> &mut H {
        &mut self.host
    }

    /// Puts `host` in place of the current host and returns the old one:
    /// a host serviced under a running guest (saved, dropped, restored
    /// over the same rings), which the driver does not notice.
    pub fn replace_host(&mut self, host: H) -> H {
        core::mem::replace(&mut self.host, host)
    }

    /// The guest memory the rings live in.
    pub fn memory(&self) -> &ChannelMemory<'a> {
        &self.mem
    }

    /// SCSI requests outstanding.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// `ENUMERATE_BUS` / `REMOVE_DEVICE` notifications received.
    pub fn enumerations(&self) -> usize {
        self.enumerations
    }

    /// The request size this driver sends now (payload after the header).
    #[inline]
    pub fn request_len(&self) -> usize {
        self.config.profile.request_len(self.version)
    }

    // ---- raw packets and negotiation ---------------------------------------

    /// The StorVSP packet the driver sends for `op` with `payload`: the
    /// header (completion requested) and the payload zero padded or cut
    /// to the profile's size. Returns the buffer and its length.
    fn control_packet(&self, op: Operation, payload: &[u8]) -> ([u8; MAX_PACKET_LEN], usize) {
        let mut buf = [0u8; MAX_PACKET_LEN];
        buf[..PACKET_HEADER_LEN].copy_from_slice(
            PacketHeader::new(op, REQUEST_COMPLETION, NtStatus::SUCCESS).as_bytes(),
        );
        let len = self.request_len();
        let n = payload.len().min(len);
        buf[PACKET_HEADER_LEN..PACKET_HEADER_LEN + n].copy_from_slice(&payload[..n]);
        (buf, PACKET_HEADER_LEN + len)
    }

    /// Sends a control packet (`op` with `payload`, at the profile's
    /// size) on `channel` and publishes it; returns its transaction id.
    pub fn send_control(
        &mut self,
        channel: usize,
        op: Operation,
        payload: &[u8],
    ) -> Result<u64, StorvscError> {
        let (buf, len) = self.control_packet(op, payload);
        let ch = self
            .channels
            .get_mut(channel)
            .ok_or(StorvscError::BadChannel { channel })?;
        ch.write_packet(
            OutgoingKind::InBand {
                completion_requested: true,
            },
            CONTROL_TRANSACTION_ID,
            &buf[..len],
        )?;
        Ok(CONTROL_TRANSACTION_ID)
    }

    /// Sends a control packet on the primary channel and waits for its
    /// completion.
    pub fn control(&mut self, op: Operation, payload: &[u8]) -> Result<Reply, StorvscError> {
        self.send_control(0, op, payload)?;
        self.wait_control()
    }

    /// Waits for the next control completion.
    pub fn wait_control(&mut self) -> Result<Reply, StorvscError> {
        let mut deadline = None;
        loop {
            if let Some(r) = self.control.pop_front() {
                return Ok(r);
            }
            if self.stash()? > 0 || !self.control.is_empty() {
                continue;
            }
            self.wait_host(&mut deadline, CONTROL_TRANSACTION_ID)?;
        }
    }

    /// Lets the host run once while waiting for `transaction_id`.
    fn wait_host(
        &mut self,
        deadline: &mut Option<Instant>,
        transaction_id: u64,
    ) -> Result<(), StorvscError> {
        match self.host.run()? {
            Progress::Worked => Ok(()),
            Progress::Idle => {
                // Nothing happened, so nothing more can arrive — unless
                // it arrived during the last run.
                if self.stash()? > 0 || !self.control.is_empty() {
                    Ok(())
                } else {
                    Err(StorvscError::NoCompletion { transaction_id })
                }
            }
            Progress::Elsewhere => {
                let d = *deadline.get_or_insert_with(|| Instant::now() + REMOTE_WAIT);
                if Instant::now() > d {
                    Err(StorvscError::NoCompletion { transaction_id })
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Reads one packet from `channel`, if there is one, checks it as the
    /// profile's driver would, and returns it (a control or SCSI
    /// completion is also taken off the driver's books).
    pub fn recv(&mut self, channel: usize) -> Result<Option<Reply>, StorvscError> {
        if channel >= self.channels.len() {
            return Err(StorvscError::BadChannel { channel });
        }
        let taken = self.take(channel, true);
        self.channels[channel].publish_reads()?;
        Ok(taken?.map(|(_, head)| self.view(channel, head).to_reply()))
    }

    /// `BEGIN_INITIALIZATION`.
    pub fn begin_initialization(&mut self) -> Result<Reply, StorvscError> {
        self.control(Operation::BEGIN_INITIALIZATION, &[])
    }

    /// `QUERY_PROTOCOL_VERSION` with `version`; on `SUCCESS` the driver
    /// uses it from now on.
    pub fn query_protocol_version(&mut self, version: Version) -> Result<Reply, StorvscError> {
        let r = self.control(
            Operation::QUERY_PROTOCOL_VERSION,
            ProtocolVersion::new(version).as_bytes(),
        )?;
        if r.status() == NtStatus::SUCCESS {
            self.version = Some(version);
        }
        Ok(r)
    }

    /// `QUERY_PROPERTIES`; on `SUCCESS` the properties are kept.
    pub fn query_properties(&mut self) -> Result<Reply, StorvscError> {
        let r = self.control(Operation::QUERY_PROPERTIES, &[])?;
        if r.status() == NtStatus::SUCCESS {
            self.properties = Some(r.properties());
        }
        Ok(r)
    }

    /// `END_INITIALIZATION`; on `SUCCESS` the driver is ready.
    pub fn end_initialization(&mut self) -> Result<Reply, StorvscError> {
        let r = self.control(Operation::END_INITIALIZATION, &[])?;
        if r.status() == NtStatus::SUCCESS {
            self.ready = true;
        }
        Ok(r)
    }

    /// `CREATE_SUB_CHANNELS` for `count`; on `SUCCESS` the sub-channels
    /// are opened through the host.
    pub fn create_sub_channels(&mut self, count: u16) -> Result<Reply, StorvscError> {
        let r = self.control(Operation::CREATE_SUB_CHANNELS, &count.to_le_bytes())?;
        if r.status() == NtStatus::SUCCESS {
            for index in 1..=count {
                let ch = self.host.open_sub_channel(index)?;
                self.channels.push(ch);
            }
        }
        Ok(r)
    }

    /// Negotiates as the profile's driver does: `BEGIN_INITIALIZATION`;
    /// `QUERY_PROTOCOL_VERSION` with each offered version until one
    /// succeeds; `QUERY_PROPERTIES`; `CREATE_SUB_CHANNELS` before
    /// `END_INITIALIZATION` (Windows) or after it (Linux, which goes on
    /// without sub-channels if they are refused) when the host supports
    /// them and the guest has CPUs to spare.
    pub fn negotiate(&mut self) -> Result<(), StorvscError> {
        let must = |r: Reply, operation| {
            if r.status() == NtStatus::SUCCESS {
                Ok(r)
            } else {
                Err(StorvscError::Negotiation {
                    operation,
                    status: r.status(),
                })
            }
        };
        must(
            self.begin_initialization()?,
            Operation::BEGIN_INITIALIZATION,
        )?;
        for &v in self.config.versions {
            self.query_protocol_version(v)?;
            if self.version.is_some() {
                break;
            }
        }
        let version = self.version.ok_or(StorvscError::NoVersion)?;
        let props = must(self.query_properties()?, Operation::QUERY_PROPERTIES)?.properties();
        let profile = self.config.profile;
        let multi = props.flags.multi_channel();
        let want = if profile.uses_sub_channels(version, multi) {
            profile.sub_channel_count(self.config.cpus, props.maximum_sub_channel_count.get())
        } else {
            0
        };
        if want > 0 && profile.sub_channels_before_end() {
            must(
                self.create_sub_channels(want)?,
                Operation::CREATE_SUB_CHANNELS,
            )?;
        }
        must(self.end_initialization()?, Operation::END_INITIALIZATION)?;
        if want > 0 && !profile.sub_channels_before_end() {
            let r = self.create_sub_channels(want)?;
            if r.status() != NtStatus::SUCCESS {
                self.sub_channel_status = Some(r.status());
            }
        }
        Ok(())
    }

    // ---- the lean SCSI path ----------------------------------------------

    /// An SRB as the profile's driver fills it: `length` and the sense
    /// buffer of the current size, the CDB (at most 16 bytes are copied;
    /// `cdb_length` says how many were given), path 0, target 0, and the
    /// Windows 8 fields Linux sets (tagged simple queueing, 60 s timeout,
    /// the direction's SRB flag).
    pub fn scsi_request(&self, lun: u8, cdb: &[u8], direction: Direction, len: u32) -> ScsiRequest {
        let profile = self.config.profile;
        let mut r = ScsiRequest::new_zeroed();
        r.length = (self.request_len() as u16).into();
        r.lun = lun;
        r.cdb_length = cdb.len().min(usize::from(u8::MAX)) as u8;
        let n = cdb.len().min(CDB_MAX_LEN);
        r.payload[..n].copy_from_slice(&cdb[..n]);
        r.sense_info_ex_length = profile.sense_buffer_len(self.version) as u8;
        r.data_transfer_length = len.into();
        r.data_in = match direction {
            Direction::None => DataDirection::UNKNOWN,
            Direction::In => DataDirection::READ,
            Direction::Out => DataDirection::WRITE,
        };
        r.time_out_value = 60.into();
        r.srb_flags = SrbFlags::new()
            .with_disable_synch_transfer(true)
            .with_queue_action_enable(true)
            .with_no_queue_freeze(true)
            .with_data_in(direction == Direction::In)
            .with_data_out(direction == Direction::Out);
        r.queue_tag = QUEUE_TAG_UNTAGGED;
        r.queue_action = QueueAction::SIMPLE_TAG;
        r
    }

    /// Queues `request` as tag `tag` on `channel` with the data buffer
    /// `buffer` (guest byte ranges; none: an in-band packet), at the
    /// profile's request size. The host sees it at the next
    /// [`Storvsc::flush`]. Allocates nothing.
    pub fn submit(
        &mut self,
        tag: u16,
        channel: usize,
        request: &ScsiRequest,
        buffer: &[GpaRange],
    ) -> Result<(), StorvscError> {
        let slot = self.slots.get(usize::from(tag)).copied();
        if slot != Some(Slot::Free) {
            return Err(StorvscError::BadTag { tag });
        }
        let mut buf = [0u8; MAX_PACKET_LEN];
        buf[..PACKET_HEADER_LEN].copy_from_slice(
            PacketHeader::new(
                Operation::EXECUTE_SRB,
                REQUEST_COMPLETION,
                NtStatus::SUCCESS,
            )
            .as_bytes(),
        );
        buf[PACKET_HEADER_LEN..].copy_from_slice(request.as_bytes());
        let packet = &buf[..PACKET_HEADER_LEN + self.request_len()];
        let tid = u64::from(tag) + 1;
        let ch = self
            .channels
            .get_mut(channel)
            .ok_or(StorvscError::BadChannel { channel })?;
        if buffer.is_empty() {
            ch.write_packet_deferred(
                OutgoingKind::InBand {
                    completion_requested: true,
                },
                tid,
                packet,
            )?;
        } else {
            ch.write_gpa_direct_deferred(tid, true, buffer, packet)?;
        }
        self.slots[usize::from(tag)] = Slot::InFlight { channel };
        self.outstanding += 1;
        Ok(())
    }

    /// Publishes the requests queued on every channel (at most one signal
    /// per channel).
    pub fn flush(&mut self) -> Result<(), StorvscError> {
        for ch in &mut self.channels {
            ch.publish_writes()?;
        }
        Ok(())
    }

    /// Lets the host serve what was sent.
    pub fn run_host(&mut self) -> Result<Progress, StorvscError> {
        self.host.run()
    }

    /// Reads every SCSI completion waiting and calls `f(tag, reply)` for
    /// each (control completions are kept for [`Storvsc::wait_control`],
    /// notifications counted). Returns how many. Allocates nothing. Stops
    /// at the first packet the profile rejects, with its error.
    pub fn reap(&mut self, mut f: impl FnMut(u16, ReplyRef<'_>)) -> Result<usize, StorvscError> {
        let mut n = 0;
        while let Some((tag, r)) = self.done.pop_front() {
            // The reply's bytes again, for the view.
            let mut raw = [0u8; MAX_PACKET_LEN];
            raw[..PACKET_HEADER_LEN].copy_from_slice(r.header.as_bytes());
            raw[PACKET_HEADER_LEN..].copy_from_slice(r.payload.as_bytes());
            let head = PacketHead {
                kind: r.kind,
                transaction_id: r.transaction_id,
                completion_requested: false,
                payload_len: r.len,
                payload_at: 0,
                held: r.len.min(MAX_PACKET_LEN),
            };
            f(
                tag,
                ReplyRef {
                    channel: r.channel,
                    head,
                    bytes: &raw[..head.held],
                },
            );
            n += 1;
        }
        Ok(n + self.reap_channels(&mut f)?)
    }

    /// Reads what every channel holds; SCSI completions go to `f`.
    fn reap_channels<F: FnMut(u16, ReplyRef<'_>)>(
        &mut self,
        f: &mut F,
    ) -> Result<usize, StorvscError> {
        let mut n = 0;
        for ch in 0..self.channels.len() {
            let mut first = true;
            let result = loop {
                match self.take(ch, first) {
                    Ok(Some((Route::Srb(tag), head))) => {
                        f(tag, self.view(ch, head));
                        n += 1;
                    }
                    Ok(Some((Route::Control, head))) => {
                        let r = self.view(ch, head).to_reply();
                        self.control.push_back(r);
                    }
                    Ok(Some((Route::Notification, _))) => {}
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
                first = false;
            };
            // Hand the space back even when a packet was rejected.
            self.channels[ch].publish_reads()?;
            result?;
        }
        Ok(n)
    }

    /// Reads what every channel holds into the driver's stashes; returns
    /// how many SCSI completions.
    fn stash(&mut self) -> Result<usize, StorvscError> {
        let mut done = core::mem::take(&mut self.done);
        let r = self
            .reap_channels(&mut |tag, reply: ReplyRef<'_>| done.push_back((tag, reply.to_reply())));
        self.done = done;
        r
    }

    /// Waits for tag `tag`'s completion (reading and stashing others).
    pub fn wait_tag(&mut self, tag: u16) -> Result<Reply, StorvscError> {
        let mut deadline = None;
        loop {
            if let Some(i) = self.done.iter().position(|(t, _)| *t == tag)
                && let Some((_, r)) = self.done.remove(i)
            {
                return Ok(r);
            }
            if !matches!(
                self.slots.get(usize::from(tag)),
                Some(Slot::InFlight { .. })
            ) {
                return Err(StorvscError::BadTag { tag });
            }
            if self.stash()? > 0 {
                continue;
            }
            self.wait_host(&mut deadline, u64::from(tag) + 1)?;
        }
    }

    /// Takes one packet from `channel` (`first`: load the host's write
    /// index; else only among packets already seen), without publishing
    /// the read; checks and routes it.
    #[inline]
    fn take(
        &mut self,
        channel: usize,
        first: bool,
    ) -> Result<Option<(Route, PacketHead)>, StorvscError> {
        let ch = &mut self.channels[channel];
        let Some(head) = ch.take_head_into(&mut self.head, !first)? else {
            return Ok(None);
        };
        let route = self.accept(channel, head)?;
        Ok(Some((route, head)))
    }

    /// The packet `head` (just taken on `channel`) in the read buffer.
    fn view(&self, channel: usize, head: PacketHead) -> ReplyRef<'_> {
        ReplyRef {
            channel,
            head,
            bytes: head.payload(&self.head),
        }
    }

    /// The profile's checks on a packet from the host, and the driver's
    /// bookkeeping for it.
    #[inline]
    fn accept(&mut self, channel: usize, head: PacketHead) -> Result<Route, StorvscError> {
        let (kind, tid) = (head.kind, head.transaction_id);
        let reject = |rejection| StorvscError::Rejected {
            channel,
            transaction_id: tid,
            rejection,
        };
        let profile = self.config.profile;
        profile
            .check_len(self.version, tid, head.payload_len)
            .map_err(reject)?;
        let op = self.view(channel, head).operation();
        let notification = op == Operation::ENUMERATE_BUS || op == Operation::REMOVE_DEVICE;
        match kind {
            PacketKind::GpaDirect => Err(reject(Rejection::UnexpectedPacketType)),
            // Transaction id 0, in band or as a completion (Linux looks only
            // at the id): a completion or FC data without a request is
            // dropped as invalid; otherwise a bus change makes the driver
            // rescan and anything else is ignored.
            _ if tid == 0 && (op == Operation::COMPLETE_IO || op == Operation::FC_HBA_DATA) => {
                Err(reject(Rejection::ZeroTransactionId))
            }
            PacketKind::Completion if tid != 0 => {
                if op != Operation::COMPLETE_IO {
                    return Err(reject(Rejection::NotCompleteIo { operation: op }));
                }
                if tid == CONTROL_TRANSACTION_ID {
                    return Ok(Route::Control);
                }
                let tag = tid
                    .checked_sub(1)
                    .and_then(|t| u16::try_from(t).ok())
                    .filter(|&t| {
                        matches!(
                            self.slots.get(usize::from(t)),
                            Some(Slot::InFlight { channel: c }) if *c == channel
                        )
                    })
                    .ok_or_else(|| reject(Rejection::UnknownTransaction))?;
                self.slots[usize::from(tag)] = Slot::Free;
                self.outstanding -= 1;
                Ok(Route::Srb(tag))
            }
            // Unsolicited (in band, or a completion with id 0).
            PacketKind::InBand | PacketKind::Completion => {
                if notification {
                    self.enumerations += 1;
                    self.rescan_pending = true;
                }
                Ok(Route::Notification)
            }
        }
    }
}

/// A `T` from the start of `bytes`, zero padded.
fn padded<T: FromBytes + IntoBytes>(bytes: &[u8]) -> T {
    let mut out = T::new_zeroed();
    let dst = out.as_mut_bytes();
    let n = dst.len().min(bytes.len());
    dst[..n].copy_from_slice(&bytes[..n]);
    out
}

impl StorvscError {
    /// The rejection, if the guest rejected a packet.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Self::Rejected { rejection, .. } => Some(*rejection),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
