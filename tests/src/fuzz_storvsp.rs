//! The `storvsp` fuzz harness: arbitrary bytes → a StorVSP controller with a
//! few RAM-backed LUNs, driven by a hostile guest over real VMBus rings.
//!
//! Controller A (the one under attack) has 0–3 [`ScsiDisk`] LUNs over small
//! RAM disks and maybe a [`ScsiDvd`], at arbitrary SCSI paths, a primary
//! channel and maybe a sub-channel, each over a ring pair in one guest
//! memory. The input then runs a sequence of actions on it: a well-formed
//! negotiation (so deep states are reachable), raw in-band and completion
//! packets with arbitrary payloads, packets of any VMBus type, GPA-direct
//! packets with arbitrary ranges (at most 8 pages, some outside guest
//! memory or over the rings themselves), `EXECUTE_SRB`s with arbitrary
//! CDBs, lengths, directions and flags, raw writes of arbitrary bytes into
//! the rings' control pages and data areas, reads of the completions on the
//! guest side, hot add / remove of LUNs, and reopening the primary channel.
//! After each action every live channel is stepped with
//! [`StorvspChannel::poll_work`] until it reports no progress.
//!
//! Packets are built from the wire types of [`parastor_hw::storvsp`]
//! ([`PacketHeader`], [`ScsiRequest`], [`ProtocolVersion`]), not from
//! hand-placed bytes.
//!
//! Properties:
//! - nothing panics;
//! - every step that asks for another takes a guest packet, writes a
//!   packet to the guest or changes the requests in flight;
//! - nothing hangs: a channel that keeps reporting progress for
//!   `MAX_POLLS` consecutive steps with no new guest input fails the run;
//! - a channel that returned a [`StorvspError`] is ended: it is dropped
//!   and never stepped again (only a reopen, after [`Controller::reset`],
//!   serves the rings again, with a new worker);
//! - controller B, on its own guest memory, is unaffected: whenever a
//!   channel of A died, B (driven by the emulated [`Storvsc`], as current
//!   Linux) must still negotiate and serve a WRITE and a READ of the same
//!   block, returning the bytes written.
//!
//! # Reuse between inputs
//!
//! The expensive part of a fresh run is guest memory (A's 512 KiB and B's),
//! whose 64 KiB chunks are allocated and zeroed on first write. Both come
//! from [`ScratchMemory::take`], which reuses memory earlier inputs on the
//! same thread dropped, zeroing the pages they wrote. Everything else —
//! controllers (their configuration is part of the input), disks, workers,
//! signals — is new for each input and costs a few small allocations. So an
//! input sees exactly what it would see in a fresh process, and a crash
//! found mid-campaign reproduces when the input is run alone (see
//! [`crate::scratch`] for the memory's contract).
//!
//! # Input format
//!
//! The input is read front to back, so seeds can be written by hand: a
//! `Header` (8 bytes), then 3 bytes of SCSI address per LUN (see
//! `lun_path`), then actions until the input runs out. An action starts
//! with a kind byte: `kind % 10` selects it and `kind / 10` holds its
//! flags (bit 0: the sub-channel, when there is one):
//!
//! - 0: a well-formed negotiation (version and sub-channel choice byte);
//! - 1: an in-band or completion packet: StorVSP header with an arbitrary
//!   operation and status, or raw bytes;
//! - 2: a packet of any VMBus type, flags and header area;
//! - 3: a GPA-direct packet with arbitrary ranges and payload;
//! - 4: an `EXECUTE_SRB` (`SrbSpec`, CDB bytes, then its ranges);
//! - 5: raw bytes into a ring's control page or data area;
//! - 6: read completions on the guest side;
//! - 7 / 8: hot add / remove of a LUN;
//! - 9: close and reopen a channel (the primary after a controller reset).
//!
//! [`ScsiDisk`]: parastor_scsi::ScsiDisk
//! [`ScsiDvd`]: parastor_scsi::ScsiDvd
//! [`StorvspChannel::poll_work`]: parastor_storvsp::StorvspChannel::poll_work
//! [`StorvspChannel`]: parastor_storvsp::StorvspChannel
//! [`StorvspError`]: parastor_storvsp::StorvspError
//! [`Controller::reset`]: parastor_storvsp::Controller::reset
//! [`Storvsc`]: parastor_emulated::Storvsc

use crate::scratch::ScratchMemory;
use crate::stacks::ram_disk;
use arbitrary::{Arbitrary, Unstructured};
use core::task::{Context, Waker};
use parastor_core::Gpa;
use parastor_core::{GpaRange, GuestMemory, InitiatorId};
use parastor_emulated::storvsc::{Data, Srb};
use parastor_emulated::{GuestConfig, Profile, Storvsc};
use parastor_hw::storvsp::{
    DataDirection, NtStatus, Operation, PACKET_HEADER_LEN, PacketFlags, PacketHeader,
    ProtocolVersion, RequestSize, SCSI_REQUEST_LEN_PRE_WIN8, SCSI_REQUEST_LEN_WIN8, ScsiRequest,
    SrbFlags, Version,
};
use parastor_hw::vmbus::{DescriptorFlags, PacketType, RingFeatures};
use parastor_scsi::{DiskParams, ScsiDisk, ScsiDvd};
use parastor_storvsp::{Controller, ControllerConfig, ScsiPath, StorvspChannel};
use parastor_vmbus::{
    Channel, GpaDirectRange, OutgoingKind, OutgoingPacket, PacketRef, RingRegion, RingWriter,
    Signal, init_ring,
};
use std::sync::Arc;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromZeros, IntoBytes};

/// Most actions one input runs.
const MAX_STEPS: usize = 64;
/// Consecutive `poll_work` steps reporting progress, with no new guest
/// input, before the channel is deemed to hang.
const MAX_POLLS: usize = 1000;
/// Guest memory of controller A and of controller B (128 pages).
const MEM_SIZE: u64 = 0x80000;
/// The guest's page size.
const PAGE: u64 = 4096;
/// Where ring pair `i` starts.
const RINGS: [u64; 2] = [0x10000, 0x20000];
/// Most ring size, in pages (per ring; a pair takes twice that).
const MAX_RING_PAGES: u64 = 4;
/// First page of the data area the well-behaved buffers use.
const DATA_PFN: u64 = 0x40;
/// Most pages one GPA-direct packet describes.
const MAX_PAGES: usize = 8;
/// Most ranges one GPA-direct packet describes.
const MAX_RANGES: usize = 3;
/// Longest raw payload.
const MAX_PAYLOAD: usize = 0x80;

/// Controller and ring configuration.
#[derive(Arbitrary, Debug)]
struct Header {
    /// Bits 0–1: disks (`% 4`); bit 2: a DVD drive; bit 3: disks of
    /// 4096-byte sectors; bit 4: a sub-channel; bit 5: negotiate first.
    flags: u8,
    /// Sectors of each disk, relative to a small base.
    sectors: u8,
    /// Incoming (guest → host) ring size: `2 + % 3` pages.
    in_pages: u8,
    /// Outgoing (host → guest) ring size: `2 + % 3` pages.
    out_pages: u8,
    /// `ControllerConfig::io_queue_depth`, `% 5` (0 means 1).
    depth: u8,
    /// `ControllerConfig::max_sub_channels`, `% 4`.
    max_sub: u8,
    /// The negotiation prefix's version and sub-channel choice.
    negotiation: u8,
    /// `ControllerConfig::max_transfer_bytes`, in 512-byte units, plus 1.
    max_transfer: u8,
}

/// The versions a negotiation offers.
const VERSIONS: [Version; 6] = [
    Version::WIN6,
    Version::WIN7,
    Version::WIN8,
    Version::BLUE,
    Version::WIN10,
    Version::new(0x0101),
];

/// The SCSI address of a LUN: a small one (so requests hit it) unless the
/// top bits of the first byte say to take the next bytes as they are.
fn lun_path(b: [u8; 3]) -> ScsiPath {
    if b[0] >> 6 == 3 {
        ScsiPath::new(b[1], b[2], b[0] & 0x3F)
    } else {
        ScsiPath::new((b[0] >> 5) & 1, (b[0] >> 3) & 3, b[0] & 7)
    }
}

/// One controller's side of a VM: memory, rings, signals, controller.
struct Rig {
    mem: ScratchMemory,
    controller: Arc<Controller>,
    /// (incoming, outgoing) per channel: primary, then the sub-channel.
    rings: Vec<(RingRegion, RingRegion)>,
    host_sig: Signal,
    guest_sig: Signal,
    disk_sectors: u64,
    sector_size: u32,
}

impl Rig {
    /// `controller` with `channels` ring pairs (incoming `in_size`,
    /// outgoing `out_size` bytes) in zeroed memory.
    fn new(controller: Controller, channels: usize, in_size: u64, out_size: u64) -> Self {
        let mem = ScratchMemory::take(MEM_SIZE);
        let rings = RINGS[..channels]
            .iter()
            .map(|&gpa| {
                let incoming = RingRegion::new(Gpa::new(gpa), in_size);
                let outgoing = RingRegion::new(Gpa::new(gpa + in_size), out_size);
                init_ring(&mem, incoming, RingFeatures::new()).expect("ring layout");
                init_ring(&mem, outgoing, RingFeatures::new()).expect("ring layout");
                (incoming, outgoing)
            })
            .collect();
        Self {
            mem,
            controller: Arc::new(controller),
            rings,
            host_sig: Signal::new(),
            guest_sig: Signal::new(),
            disk_sectors: 0,
            sector_size: 512,
        }
    }

    /// The guest's endpoint of channel `i`, reopened from the indices in
    /// the control pages (so raw ring writes and packets written outside
    /// the `Channel` are picked up). `None` if the rings are broken.
    fn guest(&self, i: usize) -> Option<Channel<'_>> {
        let (incoming, outgoing) = self.rings[i];
        Channel::guest(&self.mem, incoming, outgoing, &self.host_sig).ok()
    }

    /// A new worker for channel `i`; `None` if the rings are broken.
    fn host(&self, i: usize) -> Option<StorvspChannel<'_>> {
        let (incoming, outgoing) = self.rings[i];
        let ch = Channel::host(&self.mem, incoming, outgoing, &self.guest_sig).ok()?;
        Some(if i == 0 {
            StorvspChannel::primary(self.controller.clone(), ch)
        } else {
            StorvspChannel::sub_channel(self.controller.clone(), ch)
        })
    }

    /// A new RAM-backed disk LUN.
    fn new_disk(&self) -> Arc<ScsiDisk> {
        Arc::new(ScsiDisk::new(
            ram_disk(self.disk_sectors, self.sector_size),
            DiskParams::default(),
        ))
    }
}

/// Where a worker stands: its read index in the incoming ring, its write
/// index in the outgoing ring and its requests in flight. A step that
/// asks for another must change it.
fn position(ch: &StorvspChannel<'_>) -> (u32, u32, usize) {
    let c = ch.channel();
    (
        c.reader().read_index(),
        c.writer().write_index(),
        ch.in_flight(),
    )
}

/// The workers of a controller's channels: `None` once ended.
struct Workers<'a> {
    channels: Vec<Option<StorvspChannel<'a>>>,
    /// Whether any channel ever returned an error.
    died: bool,
}

impl Workers<'_> {
    /// Steps every live channel until it makes no more progress; a channel
    /// that fails is ended.
    fn pump(&mut self, what: &dyn Fn() -> String) {
        let mut cx = Context::from_waker(Waker::noop());
        for (i, slot) in self.channels.iter_mut().enumerate() {
            let Some(ch) = slot else { continue };
            let mut polls = 0;
            loop {
                let before = position(ch);
                match ch.poll_work(&mut cx) {
                    Ok(true) => {
                        assert_ne!(
                            position(ch),
                            before,
                            "channel {i} asked for another step after one that took no packet, \
                             wrote none and finished no request: {ch:?}\n{}",
                            what()
                        );
                        polls += 1;
                        assert!(
                            polls < MAX_POLLS,
                            "channel {i} still reports progress after {polls} steps: {ch:?}\n{}",
                            what()
                        );
                    }
                    Ok(false) => break,
                    Err(_) => {
                        // Ended: never stepped again.
                        *slot = None;
                        self.died = true;
                        break;
                    }
                }
            }
        }
    }
}

/// One StorVSP packet as the guest sends it: a [`PacketHeader`] and up to
/// [`MAX_PAYLOAD`] bytes of payload, on the stack.
struct StorvspPacket {
    bytes: [u8; PACKET_HEADER_LEN + MAX_PAYLOAD],
    len: usize,
}

impl StorvspPacket {
    /// `header`, then `payload` (cut to [`MAX_PAYLOAD`] bytes).
    fn new(header: PacketHeader, payload: &[u8]) -> Self {
        let mut bytes = [0; PACKET_HEADER_LEN + MAX_PAYLOAD];
        bytes[..PACKET_HEADER_LEN].copy_from_slice(header.as_bytes());
        let n = payload.len().min(MAX_PAYLOAD);
        bytes[PACKET_HEADER_LEN..PACKET_HEADER_LEN + n].copy_from_slice(&payload[..n]);
        Self {
            bytes,
            len: PACKET_HEADER_LEN + n,
        }
    }

    /// A request for `op` asking for a completion, with `payload`.
    fn request(op: Operation, payload: &[u8]) -> Self {
        Self::raw(op, NtStatus::SUCCESS, payload)
    }

    /// A packet with operation `op` and status `status` (known values or
    /// not), asking for a completion.
    fn raw(op: Operation, status: NtStatus, payload: &[u8]) -> Self {
        let flags = PacketFlags::new().with_request_completion(true);
        Self::new(PacketHeader::new(op, flags, status), payload)
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Sends one in-band request with a completion requested (ignoring a full
/// or broken ring).
fn send(g: &mut Channel<'_>, tid: u64, packet: &StorvspPacket) {
    let _ = g.write_packet(
        OutgoingKind::InBand {
            completion_requested: true,
        },
        tid,
        packet.as_bytes(),
    );
}

/// Drains completions on the guest side `g` (at most `max`), handing each
/// one's ring space back at once, as a driver reading packet by packet
/// does.
fn drain(g: &mut Channel<'_>, max: usize) {
    let mut packet = PacketRef::empty();
    for _ in 0..max {
        let taken = g.take_packet_into(&mut packet);
        if g.publish_reads().is_err() {
            break;
        }
        match taken {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) if e.is_fatal() => break,
            Err(_) => {}
        }
    }
}

/// A well-formed negotiation on the primary channel: `choice` picks the
/// version (bits 0–2), whether to ask for sub-channels and when (bits
/// 3–5), as Linux or Windows drivers do: one request at a time, each with
/// a payload of the request size (zero padded), its completion drained
/// before the next.
fn negotiate(rig: &Rig, w: &mut Workers<'_>, choice: u8, what: &dyn Fn() -> String) {
    let Some(mut g) = rig.guest(0) else {
        // Nothing can be sent; the workers still get their step.
        w.pump(what);
        return;
    };
    let version = VERSIONS[usize::from(choice & 7) % VERSIONS.len()];
    let size = RequestSize::for_version(version);
    let sub = (choice >> 3) & 3;
    let sub_before_end = choice & 0x20 != 0;
    let mut step = |tid: u64, op: Operation, payload: &[u8]| {
        send(&mut g, tid, &StorvspPacket::request(op, payload));
        w.pump(what);
        drain(&mut g, 4);
    };
    let mut payload = [0u8; SCSI_REQUEST_LEN_WIN8];
    // Until the version is settled, the pre-Windows 8 size.
    let early = &mut payload[..SCSI_REQUEST_LEN_PRE_WIN8];
    step(1, Operation::BEGIN_INITIALIZATION, early);
    let v = ProtocolVersion::new(version);
    early[..size_of::<ProtocolVersion>()].copy_from_slice(v.as_bytes());
    step(2, Operation::QUERY_PROTOCOL_VERSION, early);
    early.fill(0);
    let request = &mut payload[..size.request_len()];
    step(3, Operation::QUERY_PROPERTIES, request);
    let create = |request: &mut [u8]| {
        request[..2].copy_from_slice(U16::new(u16::from(sub)).as_bytes());
    };
    if sub > 0 && sub_before_end {
        create(request);
        step(4, Operation::CREATE_SUB_CHANNELS, request);
        request.fill(0);
    }
    step(5, Operation::END_INITIALIZATION, request);
    if sub > 0 && !sub_before_end {
        create(request);
        step(6, Operation::CREATE_SUB_CHANNELS, request);
    }
}

/// The ranges of one GPA-direct packet: at most [`MAX_RANGES`] ranges
/// over at most [`MAX_PAGES`] pages in all.
#[derive(Default)]
struct Ranges {
    pfns: [u64; MAX_PAGES],
    /// Byte offset, byte count, first page in `pfns`, page count.
    ranges: [(u32, u32, usize, usize); MAX_RANGES],
    count: usize,
}

impl Ranges {
    /// Reads the ranges: `1 + % 3` of them, each a byte offset, byte count
    /// and `1 + % 4` page numbers. Page numbers are in the data area
    /// unless `hostile`, when they are raw (the rings, beyond guest
    /// memory) or, with bit 7 of the count byte, any 64-bit value.
    fn read(u: &mut Unstructured<'_>, hostile: bool) -> arbitrary::Result<Self> {
        let n = 1 + u8::arbitrary(u)? % 3;
        let mut out = Ranges::default();
        let mut pages = 0;
        for _ in 0..n {
            let offset = u16::arbitrary(u)?;
            let count = u16::arbitrary(u)?;
            let npfn = u8::arbitrary(u)?;
            let first = pages;
            for _ in 0..1 + npfn % 4 {
                if pages == MAX_PAGES {
                    break;
                }
                out.pfns[pages] = if hostile && npfn & 0x80 != 0 {
                    u64::arbitrary(u)?
                } else if hostile {
                    u64::from(u8::arbitrary(u)?)
                } else {
                    DATA_PFN + u64::from(u8::arbitrary(u)? % 0x40)
                };
                pages += 1;
            }
            let npages = pages - first;
            let (offset, count) = if hostile {
                (u32::from(offset), u32::from(count))
            } else {
                let offset = u32::from(offset) % PAGE as u32;
                let room = npages as u32 * PAGE as u32 - offset;
                (offset, 1 + u32::from(count) % room)
            };
            out.ranges[out.count] = (offset, count, first, npages);
            out.count += 1;
            if pages == MAX_PAGES {
                break;
            }
        }
        Ok(out)
    }
}

/// Writes a GPA-direct packet with `ranges` and `payload` on `channel`.
fn send_gpa_direct(
    rig: &Rig,
    channel: usize,
    tid: u64,
    completion_requested: bool,
    ranges: &Ranges,
    payload: &[u8],
) {
    let described = ranges
        .ranges
        .map(|(offset, count, first, n)| GpaDirectRange {
            byte_offset: offset,
            byte_count: count,
            pfns: &ranges.pfns[first..first + n],
        });
    if let Some(mut g) = rig.guest(channel) {
        let _ = g.write_gpa_direct(
            tid,
            completion_requested,
            &described[..ranges.count],
            payload,
        );
    }
}

/// One `EXECUTE_SRB`'s fields.
#[derive(Arbitrary, Debug)]
struct SrbSpec {
    /// Bit 0: sub-channel; bit 1: pre-Win8 size; bit 2: in-band (no
    /// ranges); bit 3: hostile ranges; bit 4: raw path and target; bit 5:
    /// fill the data area with `fill` first; bit 6: no completion
    /// requested.
    flags: u8,
    tid: u8,
    lun: u8,
    path_target: u8,
    /// `% 17`, unless above 0xF0 (then as is: longer than a CDB).
    cdb_len: u8,
    /// `% 3`, unless above 0xF0.
    data_in: u8,
    data_transfer_length: u16,
    /// High bits multiply `data_transfer_length` by 256.
    length_shift: u8,
    sense_len: u8,
    srb_flags: u32,
    fill: u8,
}

/// Runs one fuzz input. Panics on any violated property.
pub fn storvsp(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(h) = Header::arbitrary(&mut u) else {
        return;
    };
    let config = ControllerConfig {
        initiator: InitiatorId::new(7),
        max_sub_channels: u16::from(h.max_sub % 4),
        io_queue_depth: usize::from(h.depth % 5),
        max_transfer_bytes: (u32::from(h.max_transfer) + 1) << 9,
        ..ControllerConfig::default()
    };
    let sector_size: u32 = if h.flags & 8 != 0 { 4096 } else { 512 };
    let base = if sector_size == 512 { 32 } else { 4 };
    let in_size = (2 + u64::from(h.in_pages) % (MAX_RING_PAGES - 1)) * PAGE;
    let out_size = (2 + u64::from(h.out_pages) % (MAX_RING_PAGES - 1)) * PAGE;
    let channels = if h.flags & 0x10 != 0 { 2 } else { 1 };
    let mut rig = Rig::new(Controller::new(config), channels, in_size, out_size);
    rig.disk_sectors = base + u64::from(h.sectors) % (4 * base);
    rig.sector_size = sector_size;
    let rig = rig;
    for _ in 0..h.flags % 4 {
        let Ok(b) = <[u8; 3]>::arbitrary(&mut u) else {
            return;
        };
        let _ = rig.controller.attach(lun_path(b), rig.new_disk());
    }
    if h.flags & 4 != 0 {
        let Ok(b) = <[u8; 3]>::arbitrary(&mut u) else {
            return;
        };
        let dvd = ScsiDvd::new(Some(ram_disk(64, 2048)))
            .or_else(|_| ScsiDvd::new(None))
            .expect("an empty DVD drive");
        let _ = rig.controller.attach(lun_path(b), Arc::new(dvd));
    }
    let mut w = Workers {
        channels: (0..channels).map(|i| rig.host(i)).collect(),
        died: false,
    };
    let step = core::cell::Cell::new(0usize);
    let what = || {
        format!(
            "step {}, header {h:?}, controller {:?}",
            step.get(),
            rig.controller
        )
    };
    if h.flags & 0x20 != 0 {
        negotiate(&rig, &mut w, h.negotiation, &what);
    }
    for i in 0..MAX_STEPS {
        step.set(i);
        if u.is_empty() || run_action(&rig, &mut w, &mut u, &what).is_err() {
            break;
        }
        w.pump(&what);
    }
    let died = w.died;
    drop(w);
    if died {
        // The other controller is unaffected by this one's death.
        check_other_controller(&what);
    }
}

/// Reads and runs one action.
fn run_action<'a>(
    rig: &'a Rig,
    w: &mut Workers<'a>,
    u: &mut Unstructured<'_>,
    what: &dyn Fn() -> String,
) -> arbitrary::Result<()> {
    let kind = u8::arbitrary(u)?;
    let flags = kind / 10;
    let channel = usize::from(flags & 1) % rig.rings.len();
    match kind % 10 {
        // A well-formed negotiation.
        0 => negotiate(rig, w, u8::arbitrary(u)?, what),
        // A raw in-band or completion packet: StorVSP header with an
        // arbitrary operation and payload, or raw bytes.
        1 => {
            let tid = u64::from(u8::arbitrary(u)?);
            let op = u8::arbitrary(u)?;
            let len = usize::from(u8::arbitrary(u)?) % MAX_PAYLOAD;
            let body = u.bytes(len.min(u.len()))?;
            let packet;
            let bytes = if flags & 8 != 0 {
                body
            } else {
                packet = StorvspPacket::raw(
                    Operation::new(u32::from(op % 16)),
                    NtStatus::new(u32::from(op >> 4)),
                    body,
                );
                packet.as_bytes()
            };
            let kind = match (flags >> 1) % 3 {
                0 => OutgoingKind::InBand {
                    completion_requested: true,
                },
                1 => OutgoingKind::InBand {
                    completion_requested: false,
                },
                _ => OutgoingKind::Completion,
            };
            if let Some(mut g) = rig.guest(channel) {
                let _ = g.write_packet(kind, tid, bytes);
            }
        }
        // A packet of any VMBus type, flags and header area.
        2 => {
            let packet_type = u16::arbitrary(u)?;
            let packet_type = if flags & 2 != 0 {
                packet_type
            } else {
                packet_type % 16
            };
            let pflags = u16::arbitrary(u)?;
            let tid = u64::arbitrary(u)?;
            let hlen = usize::from(u8::arbitrary(u)?) % 48;
            let header = u.bytes(hlen.min(u.len()))?;
            let plen = usize::from(u8::arbitrary(u)?) % MAX_PAYLOAD;
            let payload = u.bytes(plen.min(u.len()))?;
            let (incoming, _) = rig.rings[channel];
            if let Ok(mut writer) = RingWriter::new(&rig.mem, incoming) {
                let _ = writer.write(&OutgoingPacket {
                    packet_type: PacketType::new(packet_type),
                    flags: DescriptorFlags::from_bits(pflags.into()),
                    transaction_id: tid,
                    header: &[header],
                    payload,
                });
            }
        }
        // A GPA-direct packet with arbitrary ranges and payload.
        3 => {
            let tid = u64::from(u8::arbitrary(u)?);
            let r = Ranges::read(u, flags & 2 != 0)?;
            let len = usize::from(u8::arbitrary(u)?) % MAX_PAYLOAD;
            let body = u.bytes(len.min(u.len()))?;
            let packet;
            let bytes = if flags & 4 != 0 {
                body
            } else {
                packet = StorvspPacket::request(Operation::EXECUTE_SRB, body);
                packet.as_bytes()
            };
            send_gpa_direct(rig, channel, tid, flags & 8 == 0, &r, bytes);
        }
        // An EXECUTE_SRB.
        4 => srb(rig, u)?,
        // Raw bytes into a ring: control page or data area.
        5 => {
            let (incoming, outgoing) = rig.rings[channel];
            let ring = if flags & 2 != 0 { outgoing } else { incoming };
            let off = u16::arbitrary(u)?;
            let off = match (flags >> 2) % 3 {
                // The indices, mask, pending send size and feature bits.
                0 => u64::from(off) % 72,
                1 => PAGE + u64::from(off) % (ring.size - PAGE),
                _ => u64::from(off) % ring.size,
            };
            let len = 1 + usize::from(u8::arbitrary(u)?) % 16;
            let bytes = u.bytes(len.min(u.len()))?;
            let n = bytes.len().min((ring.size - off) as usize);
            let _ = rig.mem.write_at(ring.gpa + off, &bytes[..n]);
        }
        // Read completions on the guest side.
        6 => {
            let max = 1 + usize::from(u8::arbitrary(u)?) % 64;
            if let Some(mut g) = rig.guest(channel) {
                drain(&mut g, max);
            }
        }
        // Hot add.
        7 => {
            let b = <[u8; 3]>::arbitrary(u)?;
            let _ = rig.controller.attach(lun_path(b), rig.new_disk());
        }
        // Hot remove.
        8 => {
            let b = <[u8; 3]>::arbitrary(u)?;
            let paths = rig.controller.paths();
            let path = if flags & 2 != 0 && !paths.is_empty() {
                paths[usize::from(b[0]) % paths.len()]
            } else {
                lun_path(b)
            };
            rig.controller.remove(path);
        }
        // Reopen a channel: the guest closes it, re-initialises the rings
        // and opens it again (the primary after a controller reset).
        _ => {
            w.channels[channel] = None;
            if channel == 0 {
                rig.controller.reset();
            }
            let (inc, out) = rig.rings[channel];
            init_ring(&rig.mem, inc, RingFeatures::new()).expect("ring layout");
            init_ring(&rig.mem, out, RingFeatures::new()).expect("ring layout");
            w.channels[channel] = rig.host(channel);
        }
    }
    Ok(())
}

/// Reads and sends one `EXECUTE_SRB`.
fn srb(rig: &Rig, u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let s = SrbSpec::arbitrary(u)?;
    let channel = usize::from(s.flags & 1) % rig.rings.len();
    let cdb_len = if s.cdb_len > 0xF0 {
        s.cdb_len
    } else {
        s.cdb_len % 17
    };
    let n = usize::from(cdb_len).min(16).min(u.len());
    let cdb = u.bytes(n)?;
    // As Linux fills `struct vmscsi_request` (the Windows 8 size, cut to
    // the pre-Windows 8 one below when asked).
    let (path, target, lun) = if s.flags & 0x10 != 0 {
        (s.path_target, s.lun, s.path_target.rotate_left(3))
    } else {
        ((s.path_target >> 4) & 1, s.path_target & 3, s.lun % 8)
    };
    let mut r = ScsiRequest::new_zeroed();
    r.length = U16::new(SCSI_REQUEST_LEN_WIN8 as u16);
    r.path_id = path;
    r.target_id = target;
    r.lun = lun;
    r.cdb_length = cdb_len;
    r.sense_info_ex_length = s.sense_len;
    r.data_in = DataDirection::new(if s.data_in > 0xF0 {
        s.data_in
    } else {
        s.data_in % 3
    });
    r.data_transfer_length =
        U32::new(u32::from(s.data_transfer_length) << (8 * u32::from(s.length_shift >> 6 == 3)));
    r.payload[..cdb.len()].copy_from_slice(cdb);
    r.srb_flags = SrbFlags::from_bits(s.srb_flags.into());
    let size = if s.flags & 2 != 0 {
        RequestSize::PreWin8
    } else {
        RequestSize::Win8
    };
    let packet = StorvspPacket::request(Operation::EXECUTE_SRB, r.wire_bytes(size));
    let tid = u64::from(s.tid);
    let completion_requested = s.flags & 0x40 == 0;
    if s.flags & 0x20 != 0 {
        let start = DATA_PFN * PAGE;
        rig.mem
            .fill_at(Gpa::new(start), (MEM_SIZE - start) as usize, s.fill)
            .expect("the data area is in memory");
    }
    if s.flags & 4 != 0 {
        if let Some(mut g) = rig.guest(channel) {
            let _ = g.write_packet(
                OutgoingKind::InBand {
                    completion_requested,
                },
                tid,
                packet.as_bytes(),
            );
        }
    } else {
        let r = Ranges::read(u, s.flags & 8 != 0)?;
        send_gpa_direct(
            rig,
            channel,
            tid,
            completion_requested,
            &r,
            packet.as_bytes(),
        );
    }
    Ok(())
}

/// Controller B, on its own guest memory, is connected to by the emulated
/// [`Storvsc`] (as current Linux: negotiation and a bus scan, each reply
/// checked as that driver checks it) and serves a WRITE and a READ of the
/// same block, which returns the bytes written.
fn check_other_controller(what: &dyn Fn() -> String) {
    let rig = Rig::new(
        Controller::new(ControllerConfig::default()),
        1,
        2 * PAGE,
        2 * PAGE,
    );
    let disk = Arc::new(ScsiDisk::new(ram_disk(16, 512), DiskParams::default()));
    rig.controller
        .attach(ScsiPath::new(0, 0, 0), disk)
        .expect("an empty controller");
    let (Some(channel), Some(host)) = (rig.guest(0), rig.host(0)) else {
        panic!("controller B's new rings are broken\n{}", what());
    };
    let data = GpaRange::new(Gpa::new(DATA_PFN * PAGE), MEM_SIZE - DATA_PFN * PAGE);
    let mut guest = Storvsc::new(GuestConfig::new(Profile::LinuxCurrent), channel, host, data);
    guest
        .connect()
        .unwrap_or_else(|e| panic!("controller B did not negotiate: {e}\n{}", what()));
    let block: [u8; 512] = core::array::from_fn(|i| (i * 7 + 3) as u8);
    let write10 = [0x2A, 0, 0, 0, 0, 3, 0, 0, 1, 0];
    let r = guest
        .srb(&Srb::new(0, &write10, Data::Out(&block)))
        .unwrap_or_else(|e| panic!("controller B WRITE failed: {e}\n{}", what()));
    assert!(r.is_good(), "controller B WRITE: {r:?}\n{}", what());
    let read10 = [0x28, 0, 0, 0, 0, 3, 0, 0, 1, 0];
    let r = guest
        .srb(&Srb::new(0, &read10, Data::In(512)))
        .unwrap_or_else(|e| panic!("controller B READ failed: {e}\n{}", what()));
    assert!(
        r.is_good() && r.transferred() == block,
        "controller B READ: {r:?}\n{}",
        what()
    );
}
