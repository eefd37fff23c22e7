//! One VMBus ring in guest memory, seen from its reader or its writer.
//!
//! The ring's control page and data area are shared with an untrusted peer,
//! so each side keeps its *own* index privately and only publishes it: the
//! reader's `read_index` and the writer's `write_index` are never read back
//! from guest memory after the ring is opened. The peer's index is loaded
//! only when needed — the reader reads the packets up to the write index it
//! last saw, the writer trusts the free space behind the read index it last
//! saw (the reader only frees space) — and validated every time it is
//! loaded (inside the data area, 8-byte aligned): a bad one is a
//! [`RingError`] at its next load, never an out-of-bounds access.
//!
//! # Memory ordering
//!
//! The control fields (indices, `interrupt_mask`, `pending_send_sz`, feature
//! bits) are accessed only with atomic loads (`Acquire`) and stores
//! (`Release`), so packet bytes written before an index is published are
//! visible to whoever loads it. Signalling needs one more edge: each side
//! *stores* its own field and then *loads* the peer's, and the peer does
//! the mirror image (writer: write index, then mask; reader: mask, then
//! write index — and read index, then `pending_send_sz`, against
//! `pending_send_sz`, then read index). A store followed by a load of a
//! different location may be reordered by the CPU (store buffering), and
//! then both sides can miss each other and go to sleep: a lost signal. A
//! `fence(SeqCst)` between the store and the load on each side forbids it.
//!
//! A packet is copied out of the ring once, into private memory, and
//! validated there; it is never read again from guest memory.

use crate::channel::ChannelMemory;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{Ordering, fence};
use parastor_core::{Access, Gpa, GpaRange, GuestMemory, GuestMemoryExt, MemoryError};
use parastor_hw::vmbus::{
    self as hw, DescriptorError, DescriptorFlags, PacketDescriptor, PacketTrailer, PacketType,
    RING_FEATURE_BITS_OFFSET, RING_HEADER_SIZE, RING_INTERRUPT_MASK_OFFSET,
    RING_PENDING_SEND_SIZE_OFFSET, RING_READ_INDEX_OFFSET, RING_WRITE_INDEX_OFFSET, RingFeatures,
    RingLayoutError,
};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, IntoBytes};

/// Where a ring lives: a contiguous region of guest memory, control page
/// first, then the data area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingRegion {
    /// GPA of the control page.
    pub gpa: Gpa,
    /// Size of the whole ring (control page included) in bytes.
    pub size: u64,
}

impl RingRegion {
    /// The ring of `size` bytes at `gpa`.
    pub const fn new(gpa: Gpa, size: u64) -> Self {
        Self { gpa, size }
    }

    /// Checks the geometry and returns the data area's size.
    pub fn data_size(&self) -> Result<u32, RingError> {
        self.gpa
            .checked_add(self.size)
            .ok_or(RingError::Layout(RingLayoutError::BadSize {
                size: self.size,
            }))?;
        Ok(hw::ring_data_size(self.size)?)
    }
}

/// Why a ring operation failed. All of these except [`RingError::Full`]
/// mean the peer broke the ring protocol (or the ring's memory is gone):
/// the channel should be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The ring's geometry or an index from the control page is invalid.
    Layout(RingLayoutError),
    /// The peer's index disagrees with ours in a way no valid ring can: it
    /// claims more data than the ring holds, or a packet ends past it.
    Truncated {
        /// Bytes the packet (or its descriptor) needs.
        needed: u32,
        /// Bytes the ring holds.
        available: u32,
    },
    /// A packet descriptor is malformed.
    Descriptor(DescriptorError),
    /// The ring's guest memory could not be accessed.
    Memory(MemoryError),
    /// Not enough free space for the packet (writer side; not a protocol
    /// error). `needed` is the packet's size with its trailer, which is what
    /// the writer publishes as `pending_send_sz`.
    Full {
        /// Bytes the packet needs, trailer included.
        needed: u32,
        /// Bytes free for this write (after reservations).
        free: u32,
    },
    /// The packet can never fit, even in an empty ring.
    TooLarge {
        /// Bytes the packet needs, trailer included.
        needed: u64,
    },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Layout(e) => write!(f, "bad ring: {e}"),
            Self::Truncated { needed, available } => write!(
                f,
                "ring holds {available} bytes but the packet needs {needed}"
            ),
            Self::Descriptor(e) => write!(f, "bad packet descriptor: {e}"),
            Self::Memory(e) => write!(f, "ring memory: {e}"),
            Self::Full { needed, free } => {
                write!(f, "ring full: {needed} bytes needed, {free} free")
            }
            Self::TooLarge { needed } => {
                write!(f, "a {needed}-byte packet can never fit in the ring")
            }
        }
    }
}

impl core::error::Error for RingError {}

impl From<RingLayoutError> for RingError {
    fn from(e: RingLayoutError) -> Self {
        Self::Layout(e)
    }
}

impl From<MemoryError> for RingError {
    fn from(e: MemoryError) -> Self {
        Self::Memory(e)
    }
}

impl From<DescriptorError> for RingError {
    fn from(e: DescriptorError) -> Self {
        Self::Descriptor(e)
    }
}

/// Raw access to one ring: control fields and wrap-around copies.
#[derive(Clone)]
struct RingMem<'a> {
    mem: ChannelMemory<'a>,
    gpa: Gpa,
    data_size: u32,
}

impl fmt::Debug for RingMem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingMem")
            .field("gpa", &self.gpa)
            .field("data_size", &self.data_size)
            .finish()
    }
}

impl<'a> RingMem<'a> {
    fn new(mem: ChannelMemory<'a>, region: RingRegion) -> Result<Self, RingError> {
        let data_size = region.data_size()?;
        // A ring outside (or partly inaccessible in) guest memory fails
        // here; so does a control page the atomics cannot use (misaligned).
        mem.check(GpaRange::new(region.gpa, region.size), Access::ReadWrite)?;
        let ring = Self {
            mem,
            gpa: region.gpa,
            data_size,
        };
        ring.load(0)?;
        Ok(ring)
    }

    fn region(&self) -> RingRegion {
        RingRegion::new(
            self.gpa,
            u64::from(self.data_size) + u64::from(RING_HEADER_SIZE),
        )
    }

    /// Loads a control field (`Acquire`: what the peer wrote before
    /// storing it is visible).
    fn load(&self, offset: u32) -> Result<u32, RingError> {
        Ok(self
            .mem
            .load_u32(self.gpa + u64::from(offset), Ordering::Acquire)?)
    }

    /// Stores a control field (`Release`: what we wrote before is visible
    /// to a peer that loads it).
    fn store(&self, offset: u32, value: u32) -> Result<(), RingError> {
        self.mem
            .store_u32(self.gpa + u64::from(offset), value, Ordering::Release)?;
        Ok(())
    }

    fn load_index(&self, offset: u32) -> Result<u32, RingError> {
        let index = self.load(offset)?;
        hw::validate_ring_index(index, self.data_size)?;
        Ok(index)
    }

    /// `pos + n` modulo the data size (`pos < data_size`, `n <= data_size`).
    fn advance(&self, pos: u32, n: u32) -> u32 {
        let to_end = self.data_size - pos;
        if n >= to_end { n - to_end } else { pos + n }
    }

    fn data_gpa(&self, pos: u32) -> Gpa {
        self.gpa + u64::from(RING_HEADER_SIZE) + u64::from(pos)
    }

    /// Copies `dst.len()` (at most `data_size`) bytes starting at `pos`.
    fn read_at(&self, pos: u32, dst: &mut [u8]) -> Result<(), RingError> {
        let first = dst.len().min((self.data_size - pos) as usize);
        let (a, b) = dst.split_at_mut(first);
        self.mem.read_at(self.data_gpa(pos), a)?;
        if !b.is_empty() {
            self.mem.read_at(self.data_gpa(0), b)?;
        }
        Ok(())
    }

    /// Copies the concatenation of `srcs` (`len` bytes in all, at most
    /// `data_size`) into the data area starting at `pos`: one vectored
    /// guest-memory write, or one write per piece at the wrap.
    fn write_gather(&self, pos: u32, len: usize, srcs: &[&[u8]]) -> Result<(), RingError> {
        let first = (self.data_size - pos) as usize;
        if len <= first {
            self.mem.write_vectored_at(self.data_gpa(pos), srcs)?;
            return Ok(());
        }
        // The packet wraps: each piece goes before the end, after the
        // start, or is split between them.
        // `at`: offset of `src` in the packet.
        let mut at = 0usize;
        for src in srcs {
            let (head, tail) = if at < first {
                src.split_at(src.len().min(first - at))
            } else {
                (&[][..], *src)
            };
            if !head.is_empty() {
                self.mem.write_at(self.data_gpa(pos) + at as u64, head)?;
            }
            if !tail.is_empty() {
                let wrapped = at + head.len() - first;
                self.mem.write_at(self.data_gpa(0) + wrapped as u64, tail)?;
            }
            at += src.len();
        }
        Ok(())
    }
}

/// Resets a ring's control page: both indices 0, no interrupt mask, no
/// pending send size, and the given feature bits. This is what the side
/// that allocates the rings (the guest) does before offering them.
pub fn init_ring(
    mem: &dyn GuestMemory,
    region: RingRegion,
    feature_bits: RingFeatures,
) -> Result<(), RingError> {
    region.data_size()?;
    let control = hw::RingControl {
        feature_bits,
        ..Default::default()
    };
    mem.write_at(region.gpa, control.as_bytes())?;
    Ok(())
}

/// A packet's framing, read from the ring but not yet consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketHeader {
    /// The packet's descriptor (already validated).
    pub descriptor: PacketDescriptor,
    /// Where the packet starts in the data area.
    pub start: u32,
}

/// The reading side of a ring.
#[derive(Debug)]
pub struct RingReader<'a> {
    ring: RingMem<'a>,
    /// Our read index; published to the control page, never read back.
    read_index: u32,
    /// The read index last published (behind `read_index` while packets
    /// consumed with [`RingReader::consume_deferred`] are unpublished).
    published: u32,
    /// The writer's index as last loaded (validated): the packets up to it
    /// are read without loading it again.
    write_seen: u32,
}

impl<'a> RingReader<'a> {
    /// Opens the ring at `region` for reading, starting at the read index
    /// currently in its control page (validated).
    pub fn new(mem: &'a dyn GuestMemory, region: RingRegion) -> Result<Self, RingError> {
        Self::with_memory(ChannelMemory::Borrowed(mem), region)
    }

    /// [`RingReader::new`] over memory borrowed or owned.
    pub fn with_memory(mem: ChannelMemory<'a>, region: RingRegion) -> Result<Self, RingError> {
        let ring = RingMem::new(mem, region)?;
        let read_index = ring.load_index(RING_READ_INDEX_OFFSET)?;
        Ok(Self {
            ring,
            read_index,
            published: read_index,
            write_seen: read_index,
        })
    }

    /// Reopens the ring at `region` for reading at `read_index`, our index
    /// from saved state (validated here), and publishes it again; the
    /// control page's copy is not trusted (saved state, `state.rs`).
    pub(crate) fn reopen(
        mem: &'a dyn GuestMemory,
        region: RingRegion,
        read_index: u32,
    ) -> Result<Self, RingError> {
        let ring = RingMem::new(ChannelMemory::Borrowed(mem), region)?;
        hw::validate_ring_index(read_index, ring.data_size)?;
        ring.store(RING_READ_INDEX_OFFSET, read_index)?;
        Ok(Self {
            ring,
            read_index,
            published: read_index,
            write_seen: read_index,
        })
    }

    /// Where the ring is.
    pub fn region(&self) -> RingRegion {
        self.ring.region()
    }

    /// Size of the data area in bytes.
    pub fn data_size(&self) -> u32 {
        self.ring.data_size
    }

    /// Our read index.
    pub fn read_index(&self) -> u32 {
        self.read_index
    }

    /// Bytes waiting to be read, per the writer's (validated) index.
    pub fn bytes_available(&self) -> Result<u32, RingError> {
        let write = self.ring.load_index(RING_WRITE_INDEX_OFFSET)?;
        Ok(hw::ring_bytes_used(
            self.read_index,
            write,
            self.ring.data_size,
        ))
    }

    /// Whether packets are known to be waiting without loading the
    /// writer's index: its index as last seen (by a peek or
    /// [`Self::publish`]) is ahead of ours.
    pub fn has_seen_unread(&self) -> bool {
        self.write_seen != self.read_index
    }

    /// Bytes waiting to be read: those up to the writer's index as last
    /// seen, or, when those are all read and `load` is set, per its index
    /// loaded now.
    fn available(&mut self, load: bool) -> Result<u32, RingError> {
        let seen = hw::ring_bytes_used(self.read_index, self.write_seen, self.ring.data_size);
        if seen != 0 || !load {
            return Ok(seen);
        }
        self.write_seen = self.ring.load_index(RING_WRITE_INDEX_OFFSET)?;
        Ok(hw::ring_bytes_used(
            self.read_index,
            self.write_seen,
            self.ring.data_size,
        ))
    }

    /// Sets or clears `interrupt_mask`: set while actively draining the ring
    /// (the writer then does not signal), cleared before going idle.
    pub fn set_interrupt_mask(&self, masked: bool) -> Result<(), RingError> {
        self.ring
            .store(RING_INTERRUPT_MASK_OFFSET, u32::from(masked))
    }

    /// Clears `interrupt_mask` and re-checks for data that arrived while it
    /// was set (the writer did not signal for it). Returns whether the ring
    /// is non-empty; if so the caller must keep reading rather than sleep.
    pub fn unmask_and_check(&self) -> Result<bool, RingError> {
        self.set_interrupt_mask(false)?;
        // Store (mask) → load (write index): see the module docs.
        fence(Ordering::SeqCst);
        Ok(self.bytes_available()? != 0)
    }

    /// Reads and validates the next packet's descriptor without consuming
    /// anything, copying the start of the packet (descriptor first) into
    /// `buf` with the same guest-memory access: returns the header and how
    /// many of the packet's bytes `buf` holds (all of them when the packet
    /// fits; [`Self::read_packet_bytes`] reads the rest). `Ok(None)` when
    /// the ring is empty. `buf` must hold at least a descriptor.
    pub fn peek_into(
        &mut self,
        buf: &mut [u8],
    ) -> Result<Option<(PacketHeader, usize)>, RingError> {
        self.peek_impl(buf, true)
    }

    /// Like [`Self::peek_into`], but only among the packets already seen
    /// ([`Self::has_seen_unread`]): the writer's index is not loaded, so
    /// `Ok(None)` means "none known", not "ring empty". For the packets
    /// after the first of a batch, when the batch ends with
    /// [`Self::publish`] (which loads the index anyway).
    pub fn peek_seen_into(
        &mut self,
        buf: &mut [u8],
    ) -> Result<Option<(PacketHeader, usize)>, RingError> {
        self.peek_impl(buf, false)
    }

    fn peek_impl(
        &mut self,
        buf: &mut [u8],
        load: bool,
    ) -> Result<Option<(PacketHeader, usize)>, RingError> {
        let available = self.available(load)?;
        if available == 0 {
            return Ok(None);
        }
        let needed = hw::PACKET_DESCRIPTOR_SIZE + hw::PACKET_TRAILER_SIZE;
        if available < needed || buf.len() < hw::PACKET_DESCRIPTOR_SIZE as usize {
            return Err(RingError::Truncated { needed, available });
        }
        // Everything the writer published may be read; the trailer is not
        // part of the packet.
        let copied = buf
            .len()
            .min((available - hw::PACKET_TRAILER_SIZE) as usize);
        let bytes = &mut buf[..copied];
        self.ring.read_at(self.read_index, bytes)?;
        let descriptor = PacketDescriptor::read_from_prefix(bytes)
            .map_err(|_| RingError::Truncated { needed, available })?
            .0;
        descriptor.validate(available)?;
        let held = copied.min(descriptor.len() as usize);
        Ok(Some((
            PacketHeader {
                descriptor,
                start: self.read_index,
            },
            held,
        )))
    }

    /// Copies `dst.len()` bytes of the packet `header`, from byte `offset`
    /// of the packet. The range must lie inside the packet.
    pub fn read_packet_bytes(
        &self,
        header: &PacketHeader,
        offset: u32,
        dst: &mut [u8],
    ) -> Result<(), RingError> {
        let len = header.descriptor.len();
        let end = u64::from(offset) + dst.len() as u64;
        if end > u64::from(len) {
            return Err(RingError::Truncated {
                needed: end.min(u64::from(u32::MAX)) as u32,
                available: len,
            });
        }
        let pos = self.ring.advance(header.start, offset);
        self.ring.read_at(pos, dst)
    }

    /// Consumes the packet `header` (which must be the one
    /// [`Self::peek_into`] returned last) without publishing the read
    /// index: the space is handed back to the writer by the next
    /// [`Self::publish`], which the caller must call before going idle.
    pub fn consume_deferred(&mut self, header: &PacketHeader) {
        let total = header.descriptor.len() + hw::PACKET_TRAILER_SIZE;
        self.read_index = self.ring.advance(header.start, total);
    }

    /// Whether packets were consumed with [`Self::consume_deferred`] and
    /// not yet published.
    pub fn has_unpublished(&self) -> bool {
        self.read_index != self.published
    }

    /// Publishes the read index after [`Self::consume_deferred`]. Returns
    /// whether the writer must be signalled because the free space crossed
    /// its `pending_send_sz`. Does nothing when nothing is unpublished.
    pub fn publish(&mut self) -> Result<bool, RingError> {
        if !self.has_unpublished() {
            return Ok(false);
        }
        let (data_size, published, read_index) =
            (self.ring.data_size, self.published, self.read_index);
        // Ours published, then (after it) whether the writer waits for
        // space and where its index is. The write index must be loaded after
        // the fence too: a writer that wrote more and then asked for space
        // between an earlier load and our store would be judged against a
        // stale index (too much free space), get no signal, and sleep.
        let ring = &self.ring;
        ring.store(RING_READ_INDEX_OFFSET, read_index)?;
        // Store (read index) → load (pending size): see the module docs.
        fence(Ordering::SeqCst);
        let pending = ring.load(RING_PENDING_SEND_SIZE_OFFSET)?;
        let write = ring.load_index(RING_WRITE_INDEX_OFFSET)?;
        // Free space as the writer sees it, before and after.
        let free_before = hw::ring_bytes_free(published, write, data_size);
        let free_after = hw::ring_bytes_free(read_index, write, data_size);
        // The feature bits matter only when the writer waits (the common
        // case has it not waiting: one load fewer per publish).
        let signal = pending != 0 && {
            let features = RingFeatures::from_bits(U32::new(ring.load(RING_FEATURE_BITS_OFFSET)?));
            hw::should_signal_after_read(features, pending, free_before, free_after)
        };
        self.published = read_index;
        self.write_seen = write;
        Ok(signal)
    }
}

/// A packet to write: type, flags, transaction id, type-specific header
/// bytes (after the descriptor) and payload.
#[derive(Clone, Copy, Debug)]
pub struct OutgoingPacket<'p> {
    /// The packet type.
    pub packet_type: PacketType,
    /// The descriptor flags.
    pub flags: DescriptorFlags,
    /// The transaction id.
    pub transaction_id: u64,
    /// Bytes between the descriptor and the payload, as pieces.
    pub header: &'p [&'p [u8]],
    /// The payload.
    pub payload: &'p [u8],
}

impl OutgoingPacket<'_> {
    fn header_len(&self) -> usize {
        self.header.iter().fold(0, |n, h| n.saturating_add(h.len()))
    }

    /// The packet's descriptor, or [`RingError::TooLarge`] if none can
    /// describe it.
    fn descriptor(&self) -> Result<PacketDescriptor, RingError> {
        let (header_len, payload_len) = (self.header_len(), self.payload.len());
        PacketDescriptor::for_packet(
            self.packet_type,
            self.flags,
            self.transaction_id,
            header_len,
            payload_len,
        )
        .map_err(|_| too_large(header_len, payload_len))
    }

    /// Bytes the packet occupies in the ring, trailer included.
    pub fn ring_size(&self) -> Result<u32, RingError> {
        Ok(self.descriptor()?.len() + hw::PACKET_TRAILER_SIZE)
    }
}

/// Bytes a packet with `header_len` header bytes and `payload_len` payload
/// bytes occupies in a ring, trailer included; `None` if no descriptor can
/// describe it.
pub fn packet_ring_size(header_len: usize, payload_len: usize) -> Option<u32> {
    PacketDescriptor::for_packet(
        PacketType::INVALID,
        DescriptorFlags::new(),
        0,
        header_len,
        payload_len,
    )
    .ok()
    .map(|d| d.len() + hw::PACKET_TRAILER_SIZE)
}

/// The error for a packet no descriptor can describe.
fn too_large(header_len: usize, payload_len: usize) -> RingError {
    RingError::TooLarge {
        needed: (header_len as u64).saturating_add(payload_len as u64),
    }
}

/// Space set aside in a ring for one future packet (typically the
/// completion of a request taken now). Spend it with
/// [`RingWriter::write_reserved_deferred`] or give it back with
/// [`RingWriter::release`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a reservation holds ring space until written or released"]
pub struct Reservation {
    bytes: u32,
}

impl Reservation {
    /// Bytes reserved, trailer included.
    pub fn bytes(&self) -> u32 {
        self.bytes
    }
}

/// What a successful write asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The reader must be signalled (the ring went from empty to non-empty
    /// and the reader has not masked interrupts).
    pub signal: bool,
}

/// The writing side of a ring.
#[derive(Debug)]
pub struct RingWriter<'a> {
    ring: RingMem<'a>,
    /// Our write index; published to the control page, never read back.
    write_index: u32,
    /// Bytes promised to outstanding reservations.
    reserved: u32,
    /// Whether we published a non-zero `pending_send_sz`.
    pending: bool,
    /// The reader's index as last loaded (validated): the space behind it
    /// is known free without loading it again.
    read_seen: u32,
    /// The write index last published (behind `write_index` while packets
    /// written with the `_deferred` methods are unpublished).
    published: u32,
}

impl<'a> RingWriter<'a> {
    /// Opens the ring at `region` for writing, starting at the write index
    /// currently in its control page (validated) with the free space behind
    /// the reader's index (validated: packets not yet read are kept), and
    /// advertises [`RingFeatures::pending_send_size`]: this writer
    /// publishes `pending_send_sz` when blocked.
    pub fn new(mem: &'a dyn GuestMemory, region: RingRegion) -> Result<Self, RingError> {
        Self::with_memory(ChannelMemory::Borrowed(mem), region)
    }

    /// [`RingWriter::new`] over memory borrowed or owned.
    pub fn with_memory(mem: ChannelMemory<'a>, region: RingRegion) -> Result<Self, RingError> {
        let ring = RingMem::new(mem, region)?;
        let write_index = ring.load_index(RING_WRITE_INDEX_OFFSET)?;
        let read_seen = ring.load_index(RING_READ_INDEX_OFFSET)?;
        let features = RingFeatures::from_bits(U32::new(ring.load(RING_FEATURE_BITS_OFFSET)?));
        ring.store(
            RING_FEATURE_BITS_OFFSET,
            features.with_pending_send_size(true).into_bits().get(),
        )?;
        Ok(Self {
            ring,
            write_index,
            reserved: 0,
            pending: false,
            read_seen,
            published: write_index,
        })
    }

    /// Reopens the ring at `region` for writing at `write_index`, our
    /// index from saved state (validated here), and publishes it again;
    /// like [`Self::new`] otherwise, with no `pending_send_sz` published
    /// (the next write that finds the ring full publishes it again). The
    /// control page's copy of our index is not trusted (saved state,
    /// `state.rs`).
    pub(crate) fn reopen(
        mem: &'a dyn GuestMemory,
        region: RingRegion,
        write_index: u32,
    ) -> Result<Self, RingError> {
        let ring = RingMem::new(ChannelMemory::Borrowed(mem), region)?;
        hw::validate_ring_index(write_index, ring.data_size)?;
        let read_seen = ring.load_index(RING_READ_INDEX_OFFSET)?;
        let features = RingFeatures::from_bits(U32::new(ring.load(RING_FEATURE_BITS_OFFSET)?));
        ring.store(
            RING_FEATURE_BITS_OFFSET,
            features.with_pending_send_size(true).into_bits().get(),
        )?;
        ring.store(RING_PENDING_SEND_SIZE_OFFSET, 0)?;
        ring.store(RING_WRITE_INDEX_OFFSET, write_index)?;
        Ok(Self {
            ring,
            write_index,
            reserved: 0,
            pending: false,
            read_seen,
            published: write_index,
        })
    }

    /// Where the ring is.
    pub fn region(&self) -> RingRegion {
        self.ring.region()
    }

    /// Size of the data area in bytes.
    pub fn data_size(&self) -> u32 {
        self.ring.data_size
    }

    /// Our write index.
    pub fn write_index(&self) -> u32 {
        self.write_index
    }

    /// Bytes currently reserved.
    pub fn reserved(&self) -> u32 {
        self.reserved
    }

    /// Checks that `needed` more bytes fit beyond the reservations; on
    /// failure publishes `pending_send_sz` so the reader signals when they do.
    fn check_space(&mut self, needed: u32, reserved: u32) -> Result<(), RingError> {
        if needed >= self.ring.data_size {
            // Even an empty ring could not take it.
            return Err(RingError::TooLarge {
                needed: u64::from(needed),
            });
        }
        // The reader only frees space: what was free at its index as last
        // seen still is. Load the index again only when that is not enough.
        let seen = hw::ring_bytes_free(self.read_seen, self.write_index, self.ring.data_size);
        if seen.saturating_sub(reserved) > needed {
            return Ok(());
        }
        self.read_seen = self.ring.load_index(RING_READ_INDEX_OFFSET)?;
        let free = hw::ring_bytes_free(self.read_seen, self.write_index, self.ring.data_size);
        let usable = free.saturating_sub(reserved);
        if usable > needed {
            return Ok(());
        }
        // The reader signals once free > pending_send_sz.
        self.ring.store(
            RING_PENDING_SEND_SIZE_OFFSET,
            needed.saturating_add(reserved),
        )?;
        self.pending = true;
        // Store (pending size) → load (read index): see the module docs. A
        // reader that freed space before seeing our pending size will not
        // signal, so look once more.
        fence(Ordering::SeqCst);
        self.read_seen = self.ring.load_index(RING_READ_INDEX_OFFSET)?;
        let free = hw::ring_bytes_free(self.read_seen, self.write_index, self.ring.data_size);
        let usable = free.saturating_sub(reserved);
        if usable > needed {
            return Ok(());
        }
        Err(RingError::Full {
            needed,
            free: usable,
        })
    }

    /// Sets aside room for a future packet of `header_len` + `payload_len`
    /// bytes, so that writing it later cannot fail for lack of space. Fails
    /// with [`RingError::Full`] (publishing `pending_send_sz`) if the ring
    /// cannot promise it now.
    pub fn reserve(
        &mut self,
        header_len: usize,
        payload_len: usize,
    ) -> Result<Reservation, RingError> {
        let bytes = packet_ring_size(header_len, payload_len)
            .ok_or_else(|| too_large(header_len, payload_len))?;
        self.check_space(bytes, self.reserved)?;
        self.clear_pending()?;
        self.reserved += bytes;
        Ok(Reservation { bytes })
    }

    /// Gives back an unused reservation.
    pub fn release(&mut self, reservation: Reservation) {
        self.reserved = self.reserved.saturating_sub(reservation.bytes);
    }

    /// Writes a packet into space reserved earlier, without publishing it:
    /// the reader sees it at the next [`Self::publish`] (which the caller
    /// must call before waiting for the reader). The reservation is spent
    /// whatever the outcome; a packet larger than the reservation is
    /// refused with [`RingError::TooLarge`].
    pub fn write_reserved_deferred(
        &mut self,
        reservation: Reservation,
        packet: &OutgoingPacket<'_>,
    ) -> Result<(), RingError> {
        let promised = reservation.bytes;
        self.release(reservation);
        let bytes = packet.ring_size()?;
        if bytes > promised {
            return Err(RingError::TooLarge {
                needed: u64::from(bytes),
            });
        }
        // Our share is back in the pool; the other reservations stay
        // protected.
        self.put(packet, self.reserved)
    }

    /// Writes a packet, leaving reserved space untouched. Fails with
    /// [`RingError::Full`] instead of overwriting unread data; the reader
    /// is then asked (through `pending_send_sz`) to signal once it fits.
    pub fn write(&mut self, packet: &OutgoingPacket<'_>) -> Result<WriteOutcome, RingError> {
        self.write_deferred(packet)?;
        self.publish()
    }

    /// Like [`Self::write`], but the packet is not published: the reader
    /// sees it at the next [`Self::publish`] (which the caller must call
    /// before waiting for the reader).
    pub fn write_deferred(&mut self, packet: &OutgoingPacket<'_>) -> Result<(), RingError> {
        self.put(packet, self.reserved)
    }

    /// Whether packets were written with the `_deferred` methods and not
    /// yet published.
    pub fn has_unpublished(&self) -> bool {
        self.write_index != self.published
    }

    /// Publishes the write index after `_deferred` writes, and says
    /// whether to signal the reader: the ring was empty before them, as the
    /// reader's index loaded *after* publishing shows (a reader that caught
    /// up meanwhile may be going idle), and the reader has not masked
    /// interrupts. Does nothing when nothing is unpublished.
    pub fn publish(&mut self) -> Result<WriteOutcome, RingError> {
        if !self.has_unpublished() {
            return Ok(WriteOutcome { signal: false });
        }
        let (old, pos) = (self.published, self.write_index);
        // The write index, then the read index and mask.
        self.ring.store(RING_WRITE_INDEX_OFFSET, pos)?;
        // Store (write index) → load (mask): see the module docs.
        fence(Ordering::SeqCst);
        let read_now = self.ring.load(RING_READ_INDEX_OFFSET)?;
        let mask = self.ring.load(RING_INTERRUPT_MASK_OFFSET)?;
        self.published = pos;
        if hw::validate_ring_index(read_now, self.ring.data_size).is_ok() {
            self.read_seen = read_now;
        }
        Ok(WriteOutcome {
            signal: hw::should_signal_after_write(mask, old, read_now),
        })
    }

    fn clear_pending(&mut self) -> Result<(), RingError> {
        if self.pending {
            self.ring.store(RING_PENDING_SEND_SIZE_OFFSET, 0)?;
            self.pending = false;
        }
        Ok(())
    }

    /// Copies a packet into the ring after the unpublished ones, leaving
    /// `reserved` bytes free.
    fn put(&mut self, packet: &OutgoingPacket<'_>, reserved: u32) -> Result<(), RingError> {
        let descriptor = packet.descriptor()?;
        let total = descriptor.len() + hw::PACKET_TRAILER_SIZE;
        self.check_space(total, reserved)?;
        self.clear_pending()?;

        let old = self.write_index;
        let trailer = PacketTrailer {
            reserved: 0.into(),
            previous_write_index: old.into(),
        };
        let header_pad =
            descriptor.data_offset() - hw::PACKET_DESCRIPTOR_SIZE - packet.header_len() as u32;
        let payload_pad = descriptor.len() - descriptor.data_offset() - packet.payload.len() as u32;
        // The packet goes into the ring straight from its pieces, in one
        // vectored guest-memory write (one write per piece at the wrap).
        const ZEROS: [u8; 8] = [0; 8];
        let header_pad = ZEROS.get(..header_pad as usize).unwrap_or(&[]);
        let payload_pad = ZEROS.get(..payload_pad as usize).unwrap_or(&[]);
        match *packet.header {
            // Packets with at most one header piece (all of them, in
            // practice): the pieces in a small array.
            [] | [_] => {
                let header = packet.header.first().copied().unwrap_or(&[]);
                let pieces = [
                    descriptor.as_bytes(),
                    header,
                    header_pad,
                    packet.payload,
                    payload_pad,
                    trailer.as_bytes(),
                ];
                self.ring.write_gather(old, total as usize, &pieces)?;
            }
            _ => {
                let mut pieces = Vec::with_capacity(packet.header.len() + 5);
                pieces.push(descriptor.as_bytes());
                pieces.extend_from_slice(packet.header);
                pieces.extend_from_slice(&[
                    header_pad,
                    packet.payload,
                    payload_pad,
                    trailer.as_bytes(),
                ]);
                self.ring.write_gather(old, total as usize, &pieces)?;
            }
        }
        self.write_index = self.ring.advance(old, total);
        Ok(())
    }
}
