//! An emulated StorVSC: the guest side of a StorVSP controller, driving it
//! over real VMBus rings in a [`RamGuestMemory`], as Linux's and Windows'
//! storage drivers do.
//!
//! [`StorvscHost`] owns the guest memory, the ring pairs (the primary
//! channel's and every sub-channel's, laid out up front) and the
//! [`Controller`]. [`Storvsc::connect`] opens the primary channel on it,
//! negotiates with a [`Profile`] and opens the sub-channels the guest asked
//! for. The service side ([`StorvspChannel`]s) runs in the caller's thread:
//! after every guest write the driver calls [`StorvspChannel::process`] on
//! the channels until the completion it waits for arrives, so a test is
//! deterministic and needs no executor.
//!
//! # Negotiation
//!
//! Every packet is the StorVSP header plus a full request-sized payload
//! (zero padded), as Linux sends it: `0x24` bytes until a version is
//! settled, then the negotiated size. Each step must complete with
//! `SUCCESS` except `QUERY_PROTOCOL_VERSION`, which is retried with the
//! profile's next version while the host answers `REVISION_MISMATCH`.
//!
//! - [`Profile::linux`] (Linux `storvsc_drv.c`): `BEGIN_INITIALIZATION`;
//!   `QUERY_PROTOCOL_VERSION` with Win10 (6.2), Blue (6.0), Win8 (5.1),
//!   Win7 (4.2), Win6 (2.0) until one succeeds; `QUERY_PROPERTIES`;
//!   `END_INITIALIZATION`; then, on Win8 and later when the host reports
//!   multi-channel support, `CREATE_SUB_CHANNELS` (so it arrives while the
//!   controller is already ready).
//! - [`Profile::windows`] (assumed, as Windows' driver is not public): the
//!   same newest-first version order, but `CREATE_SUB_CHANNELS` is sent
//!   before `END_INITIALIZATION` — the order the protocol's
//!   `EndInitialization` state exists for.
//!
//! # Requests
//!
//! [`Storvsc::srb`] sends one `EXECUTE_SRB` whose data buffer is one or more
//! GPA-direct ranges ([`Srb::segments`]; each segment starts at a fresh page
//! plus a small offset, so segments are not contiguous in guest memory),
//! and returns a [`SrbReply`]: SRB status, SCSI status, sense bytes, data
//! transfer length and the data-in bytes. A CHECK CONDITION with UNIT
//! ATTENTION is retried once, as the Linux SCSI midlayer does. An
//! `ENUMERATE_BUS` notification makes the driver rescan the bus with REPORT
//! LUNS (on path 0, target 0) before it returns; [`Storvsc::luns`] is the
//! result of the last scan.
#![allow(clippy::missing_panics_doc)]

use parastor_core::{GuestMemory, RamGuestMemory};
use parastor_hw::scsi::{ScsiOp, ScsiStatus, SenseData, SenseKey};
use parastor_hw::storvsp::{
    ChannelFlags, DataDirection, NtStatus, Operation, PACKET_HEADER_LEN, RequestSize, SrbStatus,
    SrbStatusAndFlags, Version,
};
use parastor_storvsp::{Controller, StorvspChannel, StorvspError};
use parastor_vmbus::{
    Channel, GpaDirectRange, OutgoingKind, PacketKind, RingRegion, Signal, init_ring_pair,
};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Bytes of each ring (incoming and outgoing alike).
pub const RING_SIZE: u64 = 0x8000;
/// Where the first ring pair starts.
const RINGS_BASE: u64 = 0x10000;
/// Most channels (primary plus sub-channels) a [`StorvscHost`] lays out.
pub const MAX_CHANNELS: usize = 8;
/// Where data buffers start (after the rings).
const DATA_BASE: u64 = RINGS_BASE + 2 * RING_SIZE * MAX_CHANNELS as u64;
const PAGE: u64 = 4096;
/// Polls of the service side before a missing completion is a failure.
const MAX_POLLS: usize = 100_000;

/// The VM around an emulated StorVSC: guest memory, the channels' rings
/// and signals, and the controller serving them.
pub struct StorvscHost {
    mem: RamGuestMemory,
    controller: Arc<Controller>,
    rings: Vec<(RingRegion, RingRegion)>,
    host_signals: Vec<Signal>,
    guest_signals: Vec<Signal>,
}

impl fmt::Debug for StorvscHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorvscHost")
            .field("controller", &self.controller)
            .finish_non_exhaustive()
    }
}

impl StorvscHost {
    /// A VM with `mem_bytes` of guest memory (at least 4 MiB is used) and
    /// [`MAX_CHANNELS`] ring pairs, serving `controller`.
    pub fn new(controller: Arc<Controller>, mem_bytes: u64) -> Self {
        let mem = RamGuestMemory::new(mem_bytes.max(4 << 20));
        let rings = (0..MAX_CHANNELS)
            .map(|i| {
                init_ring_pair(&mem, RINGS_BASE + 2 * RING_SIZE * i as u64, RING_SIZE)
                    .expect("ring layout")
            })
            .collect();
        Self {
            mem,
            controller,
            rings,
            host_signals: (0..MAX_CHANNELS).map(|_| Signal::new()).collect(),
            guest_signals: (0..MAX_CHANNELS).map(|_| Signal::new()).collect(),
        }
    }

    /// The controller.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// The guest memory.
    pub fn memory(&self) -> &RamGuestMemory {
        &self.mem
    }

    fn guest_channel(&self, i: usize) -> Channel<'_> {
        let (incoming, outgoing) = self.rings[i];
        Channel::guest(&self.mem, incoming, outgoing, &self.host_signals[i]).expect("guest ring")
    }

    fn host_channel(&self, i: usize) -> StorvspChannel<'_> {
        let (incoming, outgoing) = self.rings[i];
        let ch = Channel::host(&self.mem, incoming, outgoing, &self.guest_signals[i])
            .expect("host ring");
        if i == 0 {
            StorvspChannel::primary(self.controller.clone(), ch)
        } else {
            StorvspChannel::sub_channel(self.controller.clone(), ch)
        }
    }
}

/// How a guest driver negotiates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Versions offered in `QUERY_PROTOCOL_VERSION`, in order, until one is
    /// accepted.
    pub versions: Vec<Version>,
    /// Sub-channels wanted (capped by the host's maximum and by
    /// [`MAX_CHANNELS`]); 0: none.
    pub sub_channels: u16,
    /// Send `CREATE_SUB_CHANNELS` before `END_INITIALIZATION` (Windows)
    /// rather than after it (Linux).
    pub sub_channels_before_end: bool,
}

impl Profile {
    /// Linux `storvsc_drv.c`: Win10, Blue, Win8, Win7, Win6; sub-channels
    /// after `END_INITIALIZATION`.
    pub fn linux(sub_channels: u16) -> Self {
        Self {
            versions: vec![
                Version::WIN10,
                Version::BLUE,
                Version::WIN8,
                Version::WIN7,
                Version::WIN6,
            ],
            sub_channels,
            sub_channels_before_end: false,
        }
    }

    /// Windows (assumed): the same version order; sub-channels before
    /// `END_INITIALIZATION`.
    pub fn windows(sub_channels: u16) -> Self {
        Self {
            sub_channels_before_end: true,
            ..Self::linux(sub_channels)
        }
    }

    /// A guest that offers exactly `versions` and wants no sub-channels.
    pub fn versions(versions: &[Version]) -> Self {
        Self {
            versions: versions.to_vec(),
            sub_channels: 0,
            sub_channels_before_end: false,
        }
    }
}

/// Why the emulated driver gave up.
#[derive(Debug)]
pub enum StorvscError {
    /// A negotiation step completed with this status.
    Negotiation {
        /// The step.
        operation: Operation,
        /// The host's answer.
        status: NtStatus,
    },
    /// No offered version was accepted.
    NoVersion,
    /// The service side ended a channel.
    Service(StorvspError),
    /// The host sent something the driver cannot understand.
    Protocol(String),
}

impl fmt::Display for StorvscError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for StorvscError {}

impl From<StorvspError> for StorvscError {
    fn from(e: StorvspError) -> Self {
        Self::Service(e)
    }
}

/// The data phase of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data<'d> {
    /// No data.
    None,
    /// Data-in of this many bytes (the buffer starts filled with `0xCC`).
    In(usize),
    /// Data-out of these bytes.
    Out(&'d [u8]),
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Data::None => 0,
            Data::In(n) => *n,
            Data::Out(d) => d.len(),
        }
    }
}

/// One SCSI request.
#[derive(Clone, Debug)]
pub struct Srb<'d> {
    /// The LUN (path 0, target 0).
    pub lun: u8,
    /// The CDB (at most 16 bytes).
    pub cdb: Vec<u8>,
    /// The data phase.
    pub data: Data<'d>,
    /// How the buffer is cut into GPA ranges: lengths of the leading
    /// segments (the rest of the buffer is one last segment). Empty: one
    /// range.
    pub segments: Vec<usize>,
    /// The channel to send it on (0: primary).
    pub channel: usize,
}

impl<'d> Srb<'d> {
    /// A request for `lun` with `cdb` and `data` on the primary channel, in
    /// one range.
    pub fn new(lun: u8, cdb: &[u8], data: Data<'d>) -> Self {
        Self {
            lun,
            cdb: cdb.to_vec(),
            data,
            segments: Vec::new(),
            channel: 0,
        }
    }

    /// The same request with its buffer cut at these segment lengths.
    pub fn segments(mut self, segments: &[usize]) -> Self {
        self.segments = segments.to_vec();
        self
    }

    /// The same request on channel `channel`.
    pub fn on(mut self, channel: usize) -> Self {
        self.channel = channel;
        self
    }
}

/// A completed request as the guest sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrbReply {
    /// The completion packet's NT status.
    pub nt_status: NtStatus,
    /// SRB status, flags included.
    pub srb_status: SrbStatusAndFlags,
    /// SCSI status.
    pub scsi_status: ScsiStatus,
    /// The sense bytes, when the host flagged them valid.
    pub sense: Vec<u8>,
    /// Bytes transferred, as the host reports them.
    pub data_transfer_length: u32,
    /// The data-in buffer after completion (empty for other requests).
    pub data: Vec<u8>,
    /// Whether the driver retried the request after a UNIT ATTENTION.
    pub retried: bool,
}

impl SrbReply {
    /// SRB status without flags.
    pub fn srb_code(&self) -> SrbStatus {
        self.srb_status.status()
    }

    /// Whether the request succeeded (SRB SUCCESS, SCSI GOOD).
    pub fn is_good(&self) -> bool {
        self.srb_code() == SrbStatus::SUCCESS && self.scsi_status == ScsiStatus::GOOD
    }

    /// The parsed sense data, if any.
    pub fn sense_data(&self) -> Option<SenseData> {
        SenseData::parse(&self.sense)
    }

    /// The data-in bytes actually transferred.
    pub fn transferred(&self) -> &[u8] {
        let n = (self.data_transfer_length as usize).min(self.data.len());
        &self.data[..n]
    }
}

/// A request sent and not yet completed.
#[derive(Debug)]
struct Pending {
    channel: usize,
    srb: Vec<u8>,
    /// (gpa, len) of each segment.
    segments: Vec<(u64, usize)>,
    data_in: bool,
}

/// Ticket for a request submitted with [`Storvsc::submit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tag(u64);

/// The emulated guest driver, connected and negotiated.
pub struct Storvsc<'a> {
    host: &'a StorvscHost,
    guests: Vec<Channel<'a>>,
    services: Vec<StorvspChannel<'a>>,
    version: Version,
    size: RequestSize,
    max_sub_channels: u16,
    next_tid: u64,
    /// Next free guest address for data buffers.
    next_data: u64,
    pending: BTreeMap<u64, Pending>,
    /// Completions read but not yet claimed, by transaction id.
    done: BTreeMap<u64, Vec<u8>>,
    rescan_pending: bool,
    enumerations: usize,
    unit_attentions: usize,
    luns: Vec<u8>,
}

impl fmt::Debug for Storvsc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storvsc")
            .field("version", &self.version)
            .field("channels", &self.guests.len())
            .field("luns", &self.luns)
            .finish_non_exhaustive()
    }
}

fn header(op: Operation) -> Vec<u8> {
    let mut b = Vec::with_capacity(PACKET_HEADER_LEN + 0x34);
    b.extend_from_slice(&op.get().to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // REQUEST_COMPLETION
    b.extend_from_slice(&0u32.to_le_bytes());
    b
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

impl<'a> Storvsc<'a> {
    /// Opens the primary channel of `host`, negotiates as `profile` says
    /// and opens the sub-channels the controller granted. Then scans the
    /// bus once.
    pub fn connect(host: &'a StorvscHost, profile: &Profile) -> Result<Self, StorvscError> {
        let mut vsc = Storvsc {
            host,
            guests: vec![host.guest_channel(0)],
            services: vec![host.host_channel(0)],
            version: Version::new(0),
            size: RequestSize::PreWin8,
            max_sub_channels: 0,
            next_tid: 1,
            next_data: DATA_BASE,
            pending: BTreeMap::new(),
            done: BTreeMap::new(),
            rescan_pending: false,
            enumerations: 0,
            unit_attentions: 0,
            luns: Vec::new(),
        };
        vsc.negotiate(profile)?;
        vsc.rescan()?;
        Ok(vsc)
    }

    fn negotiate(&mut self, profile: &Profile) -> Result<(), StorvscError> {
        self.control(Operation::BEGIN_INITIALIZATION, &[])?;
        let mut settled = None;
        for &v in &profile.versions {
            let mut p = v.get().to_le_bytes().to_vec();
            p.extend_from_slice(&0u16.to_le_bytes());
            let (status, _) = self.control_raw(Operation::QUERY_PROTOCOL_VERSION, &p)?;
            if status == NtStatus::SUCCESS {
                settled = Some(v);
                break;
            }
            if status != NtStatus::REVISION_MISMATCH {
                return Err(StorvscError::Negotiation {
                    operation: Operation::QUERY_PROTOCOL_VERSION,
                    status,
                });
            }
        }
        self.version = settled.ok_or(StorvscError::NoVersion)?;
        self.size = RequestSize::for_version(self.version);
        let props = self.control(Operation::QUERY_PROPERTIES, &[])?;
        // ChannelProperties: max sub-channels at 4 (u16), flags at 8.
        let max = u16::from_le_bytes([props[4], props[5]]);
        let flags = ChannelFlags::from_bits(le32(&props, 8).into());
        self.max_sub_channels = if self.version >= Version::WIN8 && flags.multi_channel() {
            max
        } else {
            0
        };
        let want = profile
            .sub_channels
            .min(self.max_sub_channels)
            .min(MAX_CHANNELS as u16 - 1);
        if want > 0 && profile.sub_channels_before_end {
            self.create_sub_channels(want)?;
        }
        self.control(Operation::END_INITIALIZATION, &[])?;
        if want > 0 && !profile.sub_channels_before_end {
            self.create_sub_channels(want)?;
        }
        Ok(())
    }

    fn create_sub_channels(&mut self, n: u16) -> Result<(), StorvscError> {
        self.control(Operation::CREATE_SUB_CHANNELS, &n.to_le_bytes())?;
        // The host would now offer the sub-channels; the guest opens them.
        for i in 1..=usize::from(n) {
            self.guests.push(self.host.guest_channel(i));
            self.services.push(self.host.host_channel(i));
        }
        Ok(())
    }

    /// Sends a control packet on the primary channel; its reply must be
    /// `SUCCESS`. Returns the reply's payload after the header.
    fn control(&mut self, op: Operation, payload: &[u8]) -> Result<Vec<u8>, StorvscError> {
        let (status, body) = self.control_raw(op, payload)?;
        if status != NtStatus::SUCCESS {
            return Err(StorvscError::Negotiation {
                operation: op,
                status,
            });
        }
        Ok(body)
    }

    fn control_raw(
        &mut self,
        op: Operation,
        payload: &[u8],
    ) -> Result<(NtStatus, Vec<u8>), StorvscError> {
        let mut bytes = header(op);
        let mut body = payload.to_vec();
        body.resize(body.len().max(self.size.request_len()), 0);
        bytes.extend_from_slice(&body);
        let tid = self.tid();
        self.guests[0]
            .write_packet(
                OutgoingKind::InBand {
                    completion_requested: true,
                },
                tid,
                &bytes,
            )
            .map_err(|e| StorvscError::Protocol(format!("write: {e}")))?;
        let reply = self.wait_tid(0, tid)?;
        let status = NtStatus::new(le32(&reply, 8));
        Ok((status, reply[PACKET_HEADER_LEN..].to_vec()))
    }

    fn tid(&mut self) -> u64 {
        self.next_tid += 1;
        self.next_tid
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The request size in use.
    pub fn request_size(&self) -> RequestSize {
        self.size
    }

    /// Channels open: the primary plus the sub-channels.
    pub fn channels(&self) -> usize {
        self.guests.len()
    }

    /// The sub-channel maximum the host reported (0 before Win8 or without
    /// multi-channel support).
    pub fn max_sub_channels(&self) -> u16 {
        self.max_sub_channels
    }

    /// LUNs on path 0, target 0, from the last REPORT LUNS scan.
    pub fn luns(&self) -> &[u8] {
        &self.luns
    }

    /// `ENUMERATE_BUS` notifications received so far.
    pub fn enumerations(&self) -> usize {
        self.enumerations
    }

    /// UNIT ATTENTION conditions met (and retried) so far.
    pub fn unit_attentions(&self) -> usize {
        self.unit_attentions
    }

    /// Runs the service side and reads notifications; rescans if the host
    /// asked for it. Returns whether a rescan happened.
    pub fn poll(&mut self) -> Result<bool, StorvscError> {
        for ch in 0..self.guests.len() {
            self.pump(ch)?;
        }
        if self.rescan_pending {
            self.rescan()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Scans path 0 / target 0 with REPORT LUNS and records the LUNs.
    pub fn rescan(&mut self) -> Result<(), StorvscError> {
        loop {
            self.rescan_pending = false;
            let mut cdb = [0u8; 12];
            cdb[0] = ScsiOp::REPORT_LUNS.get();
            cdb[6..10].copy_from_slice(&4096u32.to_be_bytes());
            let r = self.srb_once(&Srb::new(0, &cdb, Data::In(4096)))?;
            if !r.is_good() {
                return Err(StorvscError::Protocol(format!("REPORT LUNS failed: {r:?}")));
            }
            let d = r.transferred();
            let list_len = d
                .get(..4)
                .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()) as usize);
            let entries = d.get(8..8 + list_len).unwrap_or(&d[d.len().min(8)..]);
            // Single-level peripheral addressing: LUN in byte 1.
            self.luns = entries.chunks_exact(8).map(|e| e[1]).collect();
            if !self.rescan_pending {
                return Ok(());
            }
        }
    }

    /// Sends `srb` and waits for its completion, retrying once after a
    /// UNIT ATTENTION; rescans first if an `ENUMERATE_BUS` arrived
    /// meanwhile.
    pub fn srb(&mut self, srb: &Srb<'_>) -> Result<SrbReply, StorvscError> {
        let mut r = self.srb_once(srb)?;
        if r.scsi_status == ScsiStatus::CHECK_CONDITION
            && r.sense_data()
                .is_some_and(|s| s.key == SenseKey::UNIT_ATTENTION)
        {
            self.unit_attentions += 1;
            r = self.srb_once(srb)?;
            r.retried = true;
        }
        if self.rescan_pending {
            self.rescan()?;
        }
        Ok(r)
    }

    fn srb_once(&mut self, srb: &Srb<'_>) -> Result<SrbReply, StorvscError> {
        let tag = self.submit(srb)?;
        self.wait(tag)
    }

    /// Sends `srb` without waiting; [`Storvsc::wait`] collects it (no
    /// UNIT ATTENTION retry on this path).
    pub fn submit(&mut self, srb: &Srb<'_>) -> Result<Tag, StorvscError> {
        let len = srb.data.len();
        if self.pending.is_empty() {
            self.next_data = DATA_BASE;
        }
        // Place the segments: each at a fresh page plus a small offset.
        let mut segments = Vec::new();
        let mut left = len;
        let mut cuts = srb.segments.iter().copied().filter(|&n| n > 0);
        let mut k = 0u64;
        while left > 0 {
            let n = cuts.next().unwrap_or(left).min(left);
            let gpa = self.next_data.next_multiple_of(PAGE) + (k * 8) % 64;
            self.next_data = gpa + n as u64;
            assert!(
                self.next_data <= self.host.mem.size(),
                "guest memory too small for the request"
            );
            segments.push((gpa, n));
            left -= n;
            k += 1;
        }
        let mem = &self.host.mem;
        let mut at = 0;
        for &(gpa, n) in &segments {
            match srb.data {
                Data::Out(d) => mem.write(gpa, &d[at..at + n]).unwrap(),
                _ => mem.fill(gpa, n, 0xCC).unwrap(),
            }
            at += n;
        }
        let data_in = match srb.data {
            Data::None => DataDirection::UNKNOWN,
            Data::In(_) => DataDirection::READ,
            Data::Out(_) => DataDirection::WRITE,
        };
        // The SRB, as Linux's `struct vmscsi_request` lays it out.
        let req_len = self.size.request_len();
        let sense_len = self.size.sense_buffer_len();
        let mut req = vec![0u8; req_len];
        req[0..2].copy_from_slice(&(req_len as u16).to_le_bytes());
        req[7] = srb.lun;
        req[8] = srb.cdb.len() as u8;
        req[9] = sense_len as u8;
        req[10] = data_in.get();
        req[12..16].copy_from_slice(&(len as u32).to_le_bytes());
        req[16..16 + srb.cdb.len()].copy_from_slice(&srb.cdb);
        if req_len >= 0x34 {
            let flags: u32 = match srb.data {
                Data::None => 0,
                Data::In(_) => 0x40,
                Data::Out(_) => 0x80,
            };
            req[0x28..0x2C].copy_from_slice(&flags.to_le_bytes());
            req[0x26] = 0xFF; // untagged
        }
        let mut bytes = header(Operation::EXECUTE_SRB);
        bytes.extend_from_slice(&req);
        let tid = self.tid();
        let ch = srb.channel;
        let pfns: Vec<Vec<u64>> = segments
            .iter()
            .map(|&(gpa, n)| ((gpa / PAGE)..=((gpa + n as u64 - 1) / PAGE)).collect())
            .collect();
        let ranges: Vec<GpaDirectRange<'_>> = segments
            .iter()
            .zip(&pfns)
            .map(|(&(gpa, n), pfns)| GpaDirectRange {
                byte_offset: (gpa % PAGE) as u32,
                byte_count: n as u32,
                pfns,
            })
            .collect();
        let w = if ranges.is_empty() {
            self.guests[ch].write_packet(
                OutgoingKind::InBand {
                    completion_requested: true,
                },
                tid,
                &bytes,
            )
        } else {
            self.guests[ch].write_gpa_direct(tid, true, &ranges, &bytes)
        };
        w.map_err(|e| StorvscError::Protocol(format!("write: {e}")))?;
        self.pending.insert(
            tid,
            Pending {
                channel: ch,
                srb: req,
                segments,
                data_in: matches!(srb.data, Data::In(_)),
            },
        );
        Ok(Tag(tid))
    }

    /// Waits for the request `tag` to complete.
    pub fn wait(&mut self, tag: Tag) -> Result<SrbReply, StorvscError> {
        let Some(ch) = self.pending.get(&tag.0).map(|p| p.channel) else {
            return Err(StorvscError::Protocol(format!("unknown tag {tag:?}")));
        };
        let reply = self.wait_tid(ch, tag.0)?;
        let p = self.pending.remove(&tag.0).unwrap();
        let body = &reply[PACKET_HEADER_LEN..];
        if body.len() < 0x24 {
            return Err(StorvscError::Protocol("short completion".into()));
        }
        let srb_status = SrbStatusAndFlags::from_bits(body[2]);
        let sense = if srb_status.autosense_valid() {
            let n = usize::from(p.srb[9]).min(0x14);
            body[16..16 + n].to_vec()
        } else {
            Vec::new()
        };
        let mut data = Vec::new();
        if p.data_in {
            for &(gpa, n) in &p.segments {
                let mut b = vec![0u8; n];
                self.host.mem.read(gpa, &mut b).unwrap();
                data.extend_from_slice(&b);
            }
        }
        Ok(SrbReply {
            nt_status: NtStatus::new(le32(&reply, 8)),
            srb_status,
            scsi_status: ScsiStatus::new(body[3]),
            sense,
            data_transfer_length: le32(body, 12),
            data,
            retried: false,
        })
    }

    /// Runs channel `ch`'s service side once and reads everything the host
    /// sent on it: completions are kept by transaction id, `ENUMERATE_BUS`
    /// marks a rescan as due.
    fn pump(&mut self, ch: usize) -> Result<(), StorvscError> {
        self.services[ch].process()?;
        if ch != 0 {
            // Bus notifications come on the primary.
            self.services[0].process()?;
        }
        for c in [0, ch] {
            while let Some(p) = self.guests[c]
                .read_packet()
                .map_err(|e| StorvscError::Protocol(format!("read: {e}")))?
            {
                if p.payload.len() < PACKET_HEADER_LEN {
                    return Err(StorvscError::Protocol("short packet".into()));
                }
                let op = Operation::new(le32(&p.payload, 0));
                match p.kind {
                    PacketKind::Completion if op == Operation::COMPLETE_IO => {
                        self.done.insert(p.transaction_id, p.payload);
                    }
                    PacketKind::InBand if op == Operation::ENUMERATE_BUS => {
                        self.enumerations += 1;
                        self.rescan_pending = true;
                    }
                    kind => {
                        return Err(StorvscError::Protocol(format!(
                            "unexpected {kind:?} packet, operation {}",
                            op.get()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn wait_tid(&mut self, ch: usize, tid: u64) -> Result<Vec<u8>, StorvscError> {
        for i in 0..MAX_POLLS {
            if let Some(r) = self.done.remove(&tid) {
                return Ok(r);
            }
            self.pump(ch)?;
            if i > 16 {
                std::thread::yield_now();
            }
        }
        Err(StorvscError::Protocol(format!(
            "no completion for transaction {tid:#x}"
        )))
    }
}
