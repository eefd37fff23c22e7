//! A VMBus channel endpoint: one ring to read, one ring to write, and the
//! peer to signal.

use super::ring::{
    OutgoingPacket, PacketHeader, Reservation, RingError, RingReader, RingRegion, RingWriter,
    WriteOutcome,
};
use super::signal::Notify;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use parastor_core::Gpa;
use parastor_core::sg::SgError;
use parastor_core::{GpaRange, GuestMem, GuestMemory, SgList};
use parastor_hw::vmbus::{
    self as hw, DescriptorFlags, GpaDirectHeader, GpaRangeError, GpaRangeHeader,
    PACKET_DESCRIPTOR_SIZE, PacketType,
};
use zerocopy::IntoBytes;

/// The packet types a channel understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// Data carried in the ring ([`PacketType::DATA_INBAND`]).
    InBand,
    /// A request whose data lives in guest pages
    /// ([`PacketType::DATA_USING_GPA_DIRECT`]).
    GpaDirect,
    /// The completion of an earlier packet ([`PacketType::COMPLETION`]).
    Completion,
}

impl PacketKind {
    /// The wire packet type.
    pub const fn packet_type(self) -> PacketType {
        match self {
            Self::InBand => PacketType::DATA_INBAND,
            Self::GpaDirect => PacketType::DATA_USING_GPA_DIRECT,
            Self::Completion => PacketType::COMPLETION,
        }
    }

    /// The kind of a wire packet type, if a channel understands it.
    pub const fn from_packet_type(packet_type: PacketType) -> Option<Self> {
        match packet_type {
            PacketType::DATA_INBAND => Some(Self::InBand),
            PacketType::DATA_USING_GPA_DIRECT => Some(Self::GpaDirect),
            PacketType::COMPLETION => Some(Self::Completion),
            _ => None,
        }
    }
}

/// A packet read from a ring, copied out of guest memory (so the peer can
/// no longer change it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// What the packet is.
    pub kind: PacketKind,
    /// The sender's transaction id.
    pub transaction_id: u64,
    /// Whether the sender wants a completion packet.
    pub completion_requested: bool,
    /// The payload: from the data offset to the end of the packet (so it
    /// includes the sender's padding to 8 bytes).
    pub payload: Vec<u8>,
    /// For [`PacketKind::GpaDirect`], the data buffer as guest ranges in
    /// order (all of the packet's GPA ranges, one after another, with
    /// physically adjacent pages merged); empty otherwise.
    pub ranges: Vec<GpaRange>,
}

impl Packet {
    /// The data buffer of a GPA-direct packet as a scatter-gather list
    /// over `mem`. `writable` says whether the device may write it (a read
    /// request's buffer).
    pub fn sg_list<'a>(
        &'a self,
        mem: &'a dyn GuestMemory,
        writable: bool,
    ) -> Result<SgList<'a>, SgError> {
        SgList::new(mem, &self.ranges, writable)
    }
}

/// Payload bytes a [`PacketRef`] holds without allocating.
pub const INLINE_PAYLOAD_LEN: usize = 128;

/// Guest ranges a [`PacketRef`] holds without allocating.
pub const INLINE_RANGES: usize = 16;

/// GPA-direct header bytes parsed from a stack buffer (larger ones are
/// copied to the heap first).
const INLINE_GPA_AREA_LEN: usize = 512;

/// GPA-direct range-area bytes [`Channel::write_gpa_direct_deferred`]
/// builds on the stack (one range of up to 78 pages: a 256 KiB transfer at
/// any offset); larger areas are built on the heap.
pub const GPA_DIRECT_INLINE_LEN: usize = 640;

/// The pages `r` touches: `(first page number, count)`, or why `r`
/// cannot be a GPA range.
fn range_pages(r: &GpaRange) -> Result<(u64, u64), RingError> {
    let bad = RingError::TooLarge { needed: r.len };
    let end = r.end().filter(|_| r.len > 0).ok_or(bad)?.get();
    let first = r.gpa.get() >> hw::PAGE_SHIFT;
    Ok((first, ((end - 1) >> hw::PAGE_SHIFT) - first + 1))
}

/// Bytes of the GPA-direct range area describing `buffer`.
#[inline]
fn gpa_area_len(buffer: &[GpaRange]) -> Result<usize, RingError> {
    let word = 8u64;
    let mut words = 1u64;
    for r in buffer {
        let (_, pages) = range_pages(r)?;
        words = words.saturating_add(1).saturating_add(pages);
    }
    usize::try_from(words.saturating_mul(word))
        .ok()
        .filter(|&n| n <= hw::MAX_PACKET_SIZE as usize)
        .ok_or(RingError::TooLarge {
            needed: words.saturating_mul(word),
        })
}

/// Writes the range area describing `buffer` (`len` bytes, from
/// [`gpa_area_len`]) to the start of `area`; returns it.
#[inline]
fn fill_gpa_area<'b>(
    area: &'b mut [u8],
    buffer: &[GpaRange],
    len: usize,
) -> Result<&'b [u8], RingError> {
    let too_large = RingError::TooLarge { needed: len as u64 };
    let area = area.get_mut(..len).ok_or(too_large)?;
    let count = u32::try_from(buffer.len()).map_err(|_| too_large)?;
    let header = GpaDirectHeader {
        reserved: 0.into(),
        range_count: count.into(),
    };
    let mut words = area.chunks_exact_mut(8);
    let mut put = |bytes: &[u8]| match words.next() {
        Some(w) => {
            w.copy_from_slice(bytes);
            Ok(())
        }
        None => Err(too_large),
    };
    put(header.as_bytes())?;
    for r in buffer {
        let (first, pages) = range_pages(r)?;
        let range = GpaRangeHeader {
            byte_count: u32::try_from(r.len).map_err(|_| too_large)?.into(),
            byte_offset: ((r.gpa.get() % u64::from(hw::PAGE_SIZE)) as u32).into(),
        };
        put(range.as_bytes())?;
        for pfn in first..first + pages {
            put(&pfn.to_le_bytes())?;
        }
    }
    Ok(area)
}

/// A growable buffer of `Copy` items: inline up to `N`, on the heap beyond.
#[derive(Clone)]
enum SmallBuf<T: Copy, const N: usize> {
    Inline { items: [T; N], len: usize },
    Heap(Vec<T>),
}

impl<T: Copy, const N: usize> SmallBuf<T, N> {
    fn new(fill: T) -> Self {
        Self::Inline {
            items: [fill; N],
            len: 0,
        }
    }

    fn as_slice(&self) -> &[T] {
        match self {
            Self::Inline { items, len } => items.get(..*len).unwrap_or(&[]),
            Self::Heap(v) => v,
        }
    }

    fn last_mut(&mut self) -> Option<&mut T> {
        match self {
            Self::Inline { items, len } => len.checked_sub(1).and_then(|i| items.get_mut(i)),
            Self::Heap(v) => v.last_mut(),
        }
    }

    fn push(&mut self, item: T) {
        match self {
            Self::Inline { items, len } => {
                if let Some(slot) = items.get_mut(*len) {
                    *slot = item;
                    *len += 1;
                } else {
                    let mut v = Vec::with_capacity(N * 2);
                    v.extend_from_slice(items);
                    v.push(item);
                    *self = Self::Heap(v);
                }
            }
            Self::Heap(v) => v.push(item),
        }
    }

    /// Makes the buffer `len` items long, every one `fill`ed when it
    /// spills to the heap (inline items keep stale values: callers
    /// overwrite all of them). Keeps a heap buffer's allocation.
    fn set_len(&mut self, fill: T, len: usize) {
        match self {
            Self::Inline { len: l, .. } if len <= N => *l = len,
            Self::Heap(v) => {
                v.clear();
                v.resize(len, fill);
            }
            Self::Inline { .. } => *self = Self::Heap(vec![fill; len]),
        }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        match self {
            Self::Inline { items, len } => items.get_mut(..*len).unwrap_or(&mut []),
            Self::Heap(v) => v,
        }
    }
}

/// Packet bytes [`Channel::take_packet_into`] reads together with the
/// descriptor: a StorVSP request with a few pages fits.
const PEEK_LEN: usize = 256;

/// A packet read from a ring like [`Packet`], but held inline: payloads up
/// to [`INLINE_PAYLOAD_LEN`] bytes and up to [`INLINE_RANGES`] guest ranges
/// are read without any heap allocation (larger ones spill to the heap,
/// bounded by the packet's length, which the ring bounds). Read with
/// [`Channel::take_packet_into`].
#[derive(Clone)]
pub struct PacketRef {
    /// What the packet is.
    pub kind: PacketKind,
    /// The sender's transaction id.
    pub transaction_id: u64,
    /// Whether the sender wants a completion packet.
    pub completion_requested: bool,
    payload: SmallBuf<u8, INLINE_PAYLOAD_LEN>,
    ranges: SmallBuf<GpaRange, INLINE_RANGES>,
}

impl fmt::Debug for PacketRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketRef")
            .field("kind", &self.kind)
            .field("transaction_id", &self.transaction_id)
            .field("completion_requested", &self.completion_requested)
            .field("payload", &self.payload())
            .field("ranges", &self.ranges())
            .finish()
    }
}

impl PacketRef {
    /// A packet with nothing in it, to be filled by
    /// [`Channel::take_packet_into`].
    pub fn empty() -> Self {
        Self {
            kind: PacketKind::InBand,
            transaction_id: 0,
            completion_requested: false,
            payload: SmallBuf::new(0),
            ranges: SmallBuf::new(GpaRange::new(Gpa::new(0), 0)),
        }
    }

    /// The payload, as in [`Packet::payload`].
    pub fn payload(&self) -> &[u8] {
        self.payload.as_slice()
    }

    /// The data buffer's guest ranges, as in [`Packet::ranges`].
    pub fn ranges(&self) -> &[GpaRange] {
        self.ranges.as_slice()
    }

    /// The data buffer of a GPA-direct packet as a scatter-gather list
    /// over `mem` (see [`Packet::sg_list`]).
    pub fn sg_list<'a>(
        &'a self,
        mem: &'a dyn GuestMemory,
        writable: bool,
    ) -> Result<SgList<'a>, SgError> {
        SgList::new(mem, self.ranges(), writable)
    }

    /// The packet with its payload and ranges on the heap.
    pub fn to_packet(&self) -> Packet {
        Packet {
            kind: self.kind,
            transaction_id: self.transaction_id,
            completion_requested: self.completion_requested,
            payload: self.payload().to_vec(),
            ranges: self.ranges().to_vec(),
        }
    }
}

/// A packet taken with [`Channel::take_head_into`]: what it is, and where
/// its head lies in the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketHead {
    /// What the packet is.
    pub kind: PacketKind,
    /// The sender's transaction id.
    pub transaction_id: u64,
    /// Whether the sender wants a completion packet.
    pub completion_requested: bool,
    /// Payload bytes in the whole packet (as [`Packet::payload`]: with the
    /// sender's padding to 8 bytes).
    pub payload_len: usize,
    /// Where the payload starts in the buffer.
    pub payload_at: usize,
    /// Bytes of the packet the buffer holds (from its start).
    pub held: usize,
}

impl PacketHead {
    /// The part of the payload `buf` (the buffer the head was read into)
    /// holds.
    #[inline]
    pub fn payload<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        buf.get(self.payload_at..self.held).unwrap_or(&[])
    }
}

/// Why reading a packet failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// The ring is broken (bad index, malformed descriptor, memory gone):
    /// nothing was consumed, and every later read fails the same way. The
    /// channel should be closed.
    Ring(RingError),
    /// A GPA-direct packet's ranges are malformed. The packet was consumed;
    /// the caller may complete `transaction_id` with an error.
    GpaRanges {
        /// The packet's transaction id.
        transaction_id: u64,
        /// What is wrong with the ranges.
        error: GpaRangeError,
    },
    /// A packet of a type the channel does not handle. The packet was
    /// consumed.
    UnsupportedPacketType {
        /// The wire packet type.
        packet_type: PacketType,
        /// The packet's transaction id.
        transaction_id: u64,
    },
}

impl ChannelError {
    /// Whether the channel is unusable (versus one bad packet skipped).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Ring(_))
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ring(e) => write!(f, "{e}"),
            Self::GpaRanges {
                transaction_id,
                error,
            } => write!(f, "packet {transaction_id:#x}: {error}"),
            Self::UnsupportedPacketType {
                packet_type,
                transaction_id,
            } => write!(
                f,
                "packet {transaction_id:#x} has unsupported type {}",
                packet_type.get()
            ),
        }
    }
}

impl core::error::Error for ChannelError {}

impl From<RingError> for ChannelError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

/// The kind of packet [`Channel::write_packet`] sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutgoingKind {
    /// An in-band data packet.
    InBand {
        /// Ask the peer for a completion packet.
        completion_requested: bool,
    },
    /// A completion of the peer's packet with the same transaction id.
    Completion,
}

impl OutgoingKind {
    fn type_and_flags(self) -> (PacketType, DescriptorFlags) {
        match self {
            Self::InBand {
                completion_requested,
            } => (
                PacketType::DATA_INBAND,
                DescriptorFlags::new().with_completion_requested(completion_requested),
            ),
            Self::Completion => (PacketType::COMPLETION, DescriptorFlags::new()),
        }
    }
}

/// One range of a GPA-direct packet to write: `byte_count` bytes starting
/// `byte_offset` bytes into the first of `pfns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpaDirectRange<'p> {
    /// Offset into the first page.
    pub byte_offset: u32,
    /// Length in bytes.
    pub byte_count: u32,
    /// The pages, in order.
    pub pfns: &'p [u64],
}

/// A VMBus channel endpoint over a pair of rings in guest memory.
///
/// The host side ([`Channel::host`]) reads the incoming (guest → host) ring
/// and writes the outgoing (host → guest) ring; the guest side
/// ([`Channel::guest`]) is its mirror, so an emulated guest driver and a
/// device can talk over real ring layouts in one process. Whenever the
/// signalling rules call for it, the endpoint notifies its peer through the
/// [`Notify`] it was given.
pub struct Channel<'a> {
    mem: ChannelMemory<'a>,
    reader: RingReader<'a>,
    writer: RingWriter<'a>,
    peer: Peer<'a>,
    /// Where [`Channel::take_packet_into`] reads a packet's start.
    peek: [u8; PEEK_LEN],
}

impl fmt::Debug for Channel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("reader", &self.reader)
            .field("writer", &self.writer)
            .finish()
    }
}

impl<'a> Channel<'a> {
    /// The host's endpoint: reads `incoming` (guest → host), writes
    /// `outgoing` (host → guest), signals the guest through `peer`.
    pub fn host(
        mem: &'a dyn GuestMemory,
        incoming: RingRegion,
        outgoing: RingRegion,
        peer: &'a dyn Notify,
    ) -> Result<Self, RingError> {
        Self::new(
            ChannelMemory::Borrowed(mem),
            incoming,
            outgoing,
            Peer::Borrowed(peer),
        )
    }

    /// The host's endpoint like [`Channel::host`], owning (a share of) the
    /// guest memory and the notification to the guest: it borrows
    /// nothing, so it can be built on one thread and moved to another.
    pub fn host_owned(
        mem: GuestMem,
        incoming: RingRegion,
        outgoing: RingRegion,
        peer: Arc<dyn Notify>,
    ) -> Result<Channel<'static>, RingError> {
        Channel::new(
            ChannelMemory::Owned(mem),
            incoming,
            outgoing,
            Peer::Owned(peer),
        )
    }

    /// The guest's endpoint (the mirror of [`Channel::host`]): writes
    /// `incoming`, reads `outgoing`, signals the host through `peer`.
    pub fn guest(
        mem: &'a dyn GuestMemory,
        incoming: RingRegion,
        outgoing: RingRegion,
        peer: &'a dyn Notify,
    ) -> Result<Self, RingError> {
        Self::new(
            ChannelMemory::Borrowed(mem),
            outgoing,
            incoming,
            Peer::Borrowed(peer),
        )
    }

    fn new(
        mem: ChannelMemory<'a>,
        read: RingRegion,
        write: RingRegion,
        peer: Peer<'a>,
    ) -> Result<Self, RingError> {
        Ok(Self {
            reader: RingReader::with_memory(mem.clone(), read)?,
            writer: RingWriter::with_memory(mem.clone(), write)?,
            mem,
            peer,
            peek: [0; PEEK_LEN],
        })
    }

    /// An endpoint over rings already open (a restore).
    pub(crate) fn from_rings(
        mem: ChannelMemory<'a>,
        reader: RingReader<'a>,
        writer: RingWriter<'a>,
        peer: Peer<'a>,
    ) -> Self {
        Self {
            reader,
            writer,
            mem,
            peer,
            peek: [0; PEEK_LEN],
        }
    }

    /// The ring this endpoint reads.
    pub fn reader(&self) -> &RingReader<'a> {
        &self.reader
    }

    /// The ring this endpoint writes.
    pub fn writer(&self) -> &RingWriter<'a> {
        &self.writer
    }

    /// Sets or clears the interrupt mask of the ring this endpoint reads:
    /// set it while draining, so the peer does not signal for each packet.
    pub fn set_interrupt_mask(&self, masked: bool) -> Result<(), RingError> {
        self.reader.set_interrupt_mask(masked)
    }

    /// Clears the interrupt mask and reports whether packets arrived while
    /// it was set; if so, keep reading instead of waiting for a signal.
    pub fn unmask_and_check(&self) -> Result<bool, RingError> {
        self.reader.unmask_and_check()
    }

    /// Reads the next packet, if any, and consumes it. In-band and
    /// completion payloads are copied out; a GPA-direct packet's ranges are
    /// validated and converted to [`GpaRange`]s. The peer is signalled if
    /// the freed space crosses its `pending_send_sz`.
    ///
    /// Errors: [`ChannelError::Ring`] consumes nothing (the ring is broken);
    /// the other errors consume the bad packet.
    pub fn read_packet(&mut self) -> Result<Option<Packet>, ChannelError> {
        let mut packet = PacketRef::empty();
        let taken = self.take_packet_into(&mut packet);
        self.publish_reads()?;
        Ok(taken?.then(|| packet.to_packet()))
    }

    /// Like [`Channel::read_packet`], but without heap allocation for
    /// small packets, and without handing the packet's ring space back to
    /// the peer yet: fills `packet` in place (reusing its storage) and
    /// returns whether a packet was taken. Take several packets, then call
    /// [`Channel::publish_reads`] once (it must be called before waiting
    /// for the peer, or the peer may wait for space forever). On an error
    /// `packet` holds nothing meaningful.
    pub fn take_packet_into(&mut self, packet: &mut PacketRef) -> Result<bool, ChannelError> {
        self.take_into(packet, true)
    }

    /// Like [`Channel::take_packet_into`], but only among the packets
    /// already seen ([`Channel::has_seen_packets`]): the peer's write index
    /// is not loaded. For the packets after the first of a batch that ends
    /// with [`Channel::publish_reads`], which loads it.
    pub fn take_seen_packet_into(&mut self, packet: &mut PacketRef) -> Result<bool, ChannelError> {
        self.take_into(packet, false)
    }

    /// Takes the next packet like [`Channel::take_packet_into`], but copies
    /// only its head — descriptor, then payload — into `buf`, at most
    /// `buf.len()` bytes (the rest of a longer packet is skipped), and
    /// parses no GPA ranges. For a guest driver reading completions, which
    /// looks at a fixed-size head of each (as Linux's StorVSC copies
    /// `sizeof(struct vstor_packet)`): no intermediate buffer, nothing
    /// cleared per packet. `buf` must hold at least a descriptor
    /// (16 bytes). `seen_only`: among packets already seen (see
    /// [`Channel::take_seen_packet_into`]). Publish with
    /// [`Channel::publish_reads`].
    #[inline]
    pub fn take_head_into(
        &mut self,
        buf: &mut [u8],
        seen_only: bool,
    ) -> Result<Option<PacketHead>, ChannelError> {
        let peeked = if seen_only {
            self.reader.peek_seen_into(buf)?
        } else {
            self.reader.peek_into(buf)?
        };
        let Some((header, held)) = peeked else {
            return Ok(None);
        };
        self.reader.consume_deferred(&header);
        let d = header.descriptor;
        let kind = PacketKind::from_packet_type(d.packet_type).ok_or(
            ChannelError::UnsupportedPacketType {
                packet_type: d.packet_type,
                transaction_id: d.transaction_id.get(),
            },
        )?;
        let payload_at = d.data_offset() as usize;
        Ok(Some(PacketHead {
            kind,
            transaction_id: d.transaction_id.get(),
            completion_requested: d.completion_requested(),
            payload_len: d.len() as usize - payload_at,
            payload_at: payload_at.min(held),
            held,
        }))
    }

    /// Whether packets are known to be waiting without loading the peer's
    /// write index — after [`Channel::publish_reads`], whether the peer
    /// wrote more than was taken (else it signals for its next packet).
    pub fn has_seen_packets(&self) -> bool {
        self.reader.has_seen_unread()
    }

    fn take_into(&mut self, packet: &mut PacketRef, load: bool) -> Result<bool, ChannelError> {
        // Small packets (every StorVSP request) arrive whole with the
        // descriptor, in one access to the ring, into the endpoint's own
        // buffer (not cleared per packet: only the bytes read are used).
        let peeked = if load {
            self.reader.peek_into(&mut self.peek)?
        } else {
            self.reader.peek_seen_into(&mut self.peek)?
        };
        let Some((header, held)) = peeked else {
            return Ok(false);
        };
        let parsed = self.parse(&header, self.peek.get(..held).unwrap_or(&[]), packet);
        if let Err(ChannelError::Ring(e)) = parsed {
            return Err(e.into());
        }
        self.reader.consume_deferred(&header);
        parsed.map(|()| true)
    }

    /// Publishes the read index after [`Channel::take_packet_into`],
    /// signalling the peer if the freed space crosses its
    /// `pending_send_sz`. Does nothing if nothing was taken.
    pub fn publish_reads(&mut self) -> Result<(), RingError> {
        if self.reader.publish()? {
            self.peer.notify();
        }
        Ok(())
    }

    /// Parses the packet `header` into `out`. `held` is the start of the
    /// packet as already copied out of the ring (all of it, for small
    /// packets); the rest is read from the ring.
    fn parse(
        &self,
        header: &PacketHeader,
        held: &[u8],
        out: &mut PacketRef,
    ) -> Result<(), ChannelError> {
        let d = header.descriptor;
        let transaction_id = d.transaction_id.get();
        let kind = PacketKind::from_packet_type(d.packet_type).ok_or(
            ChannelError::UnsupportedPacketType {
                packet_type: d.packet_type,
                transaction_id,
            },
        )?;
        out.kind = kind;
        out.transaction_id = transaction_id;
        out.completion_requested = d.completion_requested();
        let whole = held.len() == d.len() as usize;
        let payload_at = d.data_offset() as usize;
        out.payload.set_len(0, d.len() as usize - payload_at);
        match held.get(payload_at..).filter(|_| whole) {
            Some(bytes) => out.payload.as_mut_slice().copy_from_slice(bytes),
            None => self.reader.read_packet_bytes(
                header,
                d.data_offset(),
                out.payload.as_mut_slice(),
            )?,
        }
        out.ranges.set_len(GpaRange::new(Gpa::new(0), 0), 0);
        if kind == PacketKind::GpaDirect {
            let area_at = PACKET_DESCRIPTOR_SIZE as usize;
            let mut copied = SmallBuf::<u8, INLINE_GPA_AREA_LEN>::new(0);
            let area = match held.get(area_at..payload_at).filter(|_| whole) {
                Some(bytes) => bytes,
                None => {
                    copied.set_len(0, payload_at - area_at);
                    self.reader.read_packet_bytes(
                        header,
                        PACKET_DESCRIPTOR_SIZE,
                        copied.as_mut_slice(),
                    )?;
                    copied.as_slice()
                }
            };
            let err = |error| ChannelError::GpaRanges {
                transaction_id,
                error,
            };
            for range in hw::parse_gpa_direct(area).map_err(err)? {
                for (gpa, len) in range.map_err(err)?.segments() {
                    // Merge with the previous range's tail if contiguous.
                    match out.ranges.last_mut() {
                        Some(GpaRange { gpa: g, len: l })
                            if g.checked_add(*l) == Some(Gpa::new(gpa)) =>
                        {
                            *l += len
                        }
                        _ => out.ranges.push(GpaRange::new(Gpa::new(gpa), len)),
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&self, outcome: WriteOutcome) {
        if outcome.signal {
            self.peer.notify();
        }
    }

    /// Writes an in-band or completion packet carrying `payload`. Fails
    /// with [`RingError::Full`] rather than overwrite unread data (the peer
    /// is then asked, through `pending_send_sz`, to signal when it fits);
    /// space held by reservations is never used.
    pub fn write_packet(
        &mut self,
        kind: OutgoingKind,
        transaction_id: u64,
        payload: &[u8],
    ) -> Result<(), RingError> {
        let (packet_type, flags) = kind.type_and_flags();
        let outcome = self.writer.write(&OutgoingPacket {
            packet_type,
            flags,
            transaction_id,
            header: &[],
            payload,
        })?;
        self.finish(outcome);
        Ok(())
    }

    /// Sets aside room for a later in-band or completion packet with a
    /// payload of up to `payload_len` bytes — typically a request's
    /// completion, reserved before the request is started so it can always
    /// be delivered.
    pub fn reserve(&mut self, payload_len: usize) -> Result<Reservation, RingError> {
        self.writer.reserve(0, payload_len)
    }

    /// Gives back an unused reservation.
    pub fn release(&mut self, reservation: Reservation) {
        self.writer.release(reservation)
    }

    /// Writes a packet into a reservation from [`Channel::reserve`], without
    /// publishing it: the peer sees it at the next
    /// [`Channel::publish_writes`], which must be called before waiting for
    /// the peer. For batches of completions: one index update and at most
    /// one signal for all. The reservation is spent whatever the outcome; a
    /// packet larger than it is refused with [`RingError::TooLarge`].
    pub fn write_reserved_deferred(
        &mut self,
        reservation: Reservation,
        kind: OutgoingKind,
        transaction_id: u64,
        payload: &[u8],
    ) -> Result<(), RingError> {
        let (packet_type, flags) = kind.type_and_flags();
        self.writer.write_reserved_deferred(
            reservation,
            &OutgoingPacket {
                packet_type,
                flags,
                transaction_id,
                header: &[],
                payload,
            },
        )
    }

    /// Publishes the packets written with
    /// [`Channel::write_reserved_deferred`], signalling the peer if the
    /// ring was empty before them. Does nothing if there are none.
    pub fn publish_writes(&mut self) -> Result<(), RingError> {
        let outcome = self.writer.publish()?;
        self.finish(outcome);
        Ok(())
    }

    /// Like [`Channel::write_packet`], but the packet is not published:
    /// the peer sees it at the next [`Channel::publish_writes`] (which
    /// must be called before waiting for the peer). For batches of
    /// requests: one index update and at most one signal for all.
    pub fn write_packet_deferred(
        &mut self,
        kind: OutgoingKind,
        transaction_id: u64,
        payload: &[u8],
    ) -> Result<(), RingError> {
        let (packet_type, flags) = kind.type_and_flags();
        self.writer.write_deferred(&OutgoingPacket {
            packet_type,
            flags,
            transaction_id,
            header: &[],
            payload,
        })
    }

    /// Writes a GPA-direct packet whose data buffer is `buffer` (byte
    /// ranges of guest memory, in order; each becomes one GPA range of the
    /// pages it touches), without publishing it (see
    /// [`Channel::write_packet_deferred`]). The range area is built on the
    /// stack while it fits [`GPA_DIRECT_INLINE_LEN`] bytes, so a guest
    /// driver's request of up to a few hundred KiB allocates nothing.
    /// Fails with [`RingError::TooLarge`] for an empty range, a range that
    /// wraps the address space, or more ranges or pages than a packet can
    /// describe. (A guest driver's operation; the host never sends these.)
    #[inline]
    pub fn write_gpa_direct_deferred(
        &mut self,
        transaction_id: u64,
        completion_requested: bool,
        buffer: &[GpaRange],
        payload: &[u8],
    ) -> Result<(), RingError> {
        // One range of a few pages (the common request): built directly.
        if let [r] = buffer {
            let (first, pages) = range_pages(r)?;
            if pages <= 6 {
                let mut area = [0u8; 64];
                let len = 16 + 8 * pages as usize;
                let count = GpaDirectHeader {
                    reserved: 0.into(),
                    range_count: 1.into(),
                };
                area[..8].copy_from_slice(count.as_bytes());
                let range = GpaRangeHeader {
                    byte_count: (r.len as u32).into(),
                    byte_offset: ((r.gpa.get() % u64::from(hw::PAGE_SIZE)) as u32).into(),
                };
                area[8..16].copy_from_slice(range.as_bytes());
                for (i, w) in area[16..len].chunks_exact_mut(8).enumerate() {
                    w.copy_from_slice(&(first + i as u64).to_le_bytes());
                }
                return self.write_gpa_area(
                    transaction_id,
                    completion_requested,
                    &area[..len],
                    payload,
                );
            }
        }
        let len = gpa_area_len(buffer)?;
        // Small areas (a request of a page or two) need only a small
        // buffer to clear.
        if len <= 64 {
            let mut area = [0u8; 64];
            let area = fill_gpa_area(&mut area, buffer, len)?;
            self.write_gpa_area(transaction_id, completion_requested, area, payload)
        } else if len <= GPA_DIRECT_INLINE_LEN {
            let mut area = [0u8; GPA_DIRECT_INLINE_LEN];
            let area = fill_gpa_area(&mut area, buffer, len)?;
            self.write_gpa_area(transaction_id, completion_requested, area, payload)
        } else {
            let mut area = vec![0u8; len];
            let area = fill_gpa_area(&mut area, buffer, len)?;
            self.write_gpa_area(transaction_id, completion_requested, area, payload)
        }
    }

    /// Writes a GPA-direct packet with the range area `area`, deferred.
    fn write_gpa_area(
        &mut self,
        transaction_id: u64,
        completion_requested: bool,
        area: &[u8],
        payload: &[u8],
    ) -> Result<(), RingError> {
        self.writer.write_deferred(&OutgoingPacket {
            packet_type: PacketType::DATA_USING_GPA_DIRECT,
            flags: DescriptorFlags::new().with_completion_requested(completion_requested),
            transaction_id,
            header: &[area],
            payload,
        })
    }

    /// Writes a GPA-direct packet: `ranges` describe the data buffer in
    /// guest pages, `payload` is the request. (A guest driver's operation;
    /// the host never sends these.)
    pub fn write_gpa_direct(
        &mut self,
        transaction_id: u64,
        completion_requested: bool,
        ranges: &[GpaDirectRange<'_>],
        payload: &[u8],
    ) -> Result<(), RingError> {
        let mut header = Vec::new();
        let count = u32::try_from(ranges.len()).map_err(|_| RingError::TooLarge {
            needed: ranges.len() as u64,
        })?;
        header.extend_from_slice(
            GpaDirectHeader {
                reserved: 0.into(),
                range_count: count.into(),
            }
            .as_bytes(),
        );
        for r in ranges {
            header.extend_from_slice(
                GpaRangeHeader {
                    byte_count: r.byte_count.into(),
                    byte_offset: r.byte_offset.into(),
                }
                .as_bytes(),
            );
            for pfn in r.pfns {
                header.extend_from_slice(&pfn.to_le_bytes());
            }
        }
        let outcome = self.writer.write(&OutgoingPacket {
            packet_type: PacketType::DATA_USING_GPA_DIRECT,
            flags: DescriptorFlags::new().with_completion_requested(completion_requested),
            transaction_id,
            header: &[&header],
            payload,
        })?;
        self.finish(outcome);
        Ok(())
    }

    /// The guest memory the rings live in.
    pub fn memory(&self) -> &ChannelMemory<'a> {
        &self.mem
    }
}

/// The guest memory a channel endpoint (and its rings) uses: borrowed for
/// the endpoint's lifetime, or owned — a share of it, so the endpoint
/// borrows nothing. Derefs to the memory; cloning copies the reference or
/// the share (no allocation).
#[derive(Clone)]
pub enum ChannelMemory<'a> {
    /// Borrowed from the caller.
    Borrowed(&'a dyn GuestMemory),
    /// A share of the memory, held by the endpoint.
    Owned(GuestMem),
}

impl<'a> core::ops::Deref for ChannelMemory<'a> {
    type Target = dyn GuestMemory + 'a;

    fn deref(&self) -> &Self::Target {
        match self {
            Self::Borrowed(mem) => *mem,
            Self::Owned(mem) => &**mem,
        }
    }
}

impl fmt::Debug for ChannelMemory<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Borrowed(_) => "ChannelMemory::Borrowed",
            Self::Owned(_) => "ChannelMemory::Owned",
        })
    }
}

/// Whom an endpoint notifies: borrowed or owned, like its memory.
pub(crate) enum Peer<'a> {
    Borrowed(&'a dyn Notify),
    Owned(Arc<dyn Notify>),
}

impl Peer<'_> {
    fn notify(&self) {
        match self {
            Self::Borrowed(peer) => peer.notify(),
            Self::Owned(peer) => peer.notify(),
        }
    }
}
