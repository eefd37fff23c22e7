//! VMBus ring buffers and packets.
//!
//! A VMBus channel is a pair of ring buffers in guest memory, one per
//! direction. Each ring is one 4 KiB control page ([`RingControl`]) followed
//! by the data area; `write_index` and `read_index` are byte offsets into the
//! data area, always multiples of 8. The writer owns `write_index`, the
//! reader owns `read_index`; the ring is empty when they are equal, and a
//! writer never fills it completely (it needs strictly more free bytes than it
//! writes), so "full" and "empty" stay distinguishable.
//!
//! Each packet is a [`PacketDescriptor`] (type, data offset and total length
//! in 8-byte units, flags, transaction id), type-specific header bytes up to
//! the data offset, the payload up to the total length (padded to 8 bytes),
//! and an 8-byte [`PacketTrailer`] that records the writer's index before the
//! packet. Packets wrap around the end of the data area.
//!
//! A GPA-direct packet ([`PacketType::DATA_USING_GPA_DIRECT`]) carries a
//! [`GpaDirectHeader`] (range count) and then that many ranges, each a
//! [`GpaRangeHeader`] (byte count, byte offset into the first page) followed
//! by its page frame numbers. [`parse_gpa_direct`] walks them with every
//! bound checked.
//!
//! All multi-byte fields are little-endian; the layouts are built from
//! zerocopy's little-endian integer types (alignment 1, the same meaning on
//! any host), packet types are an open enum and flag words `#[bitfield]`s.
//!
//! Everything here is pure: layouts, constants and validation. The ring
//! access itself (guest memory, wrap-around copies, signalling) lives in
//! `parastor-vmbus`.

use core::fmt;
use core::mem::offset_of;

use bitfield_struct::bitfield;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::open_enum::open_enum;

/// Size of a guest page as VMBus counts it (PFNs are in these units).
pub const PAGE_SIZE: u32 = 4096;

/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// The largest page frame number accepted in a GPA range: the last one
/// whose page *end* is still a 64-bit address, so `gpa + len` of any range
/// built from valid PFNs never overflows.
pub const MAX_PFN: u64 = (u64::MAX >> PAGE_SHIFT) - 1;

/// Size of a ring's control page; the data area starts right after it.
pub const RING_HEADER_SIZE: u32 = PAGE_SIZE;

/// The largest data area parastor accepts, in bytes. Keeping it below
/// 2 GiB means every index sum (`index + length`) fits in a `u32`.
pub const MAX_RING_DATA_SIZE: u32 = 1 << 30;

/// A ring's feature bits ([`RingControl::feature_bits`]).
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct RingFeatures {
    /// The ring's writer sets `pending_send_sz` when it is blocked on a
    /// full ring, and the reader signals it once enough space is free.
    pub pending_send_size: bool,
    /// Reserved.
    #[bits(31)]
    pub reserved: u32,
}

wire_layout! {
    /// The used part of a ring's control page (`struct hv_ring_buffer` up to the
    /// padding); the rest of the 4 KiB page is reserved.
    pub struct RingControl {
        /// Byte offset in the data area where the writer puts the next packet.
        pub write_index: U32,
        /// Byte offset in the data area of the next packet the reader consumes.
        pub read_index: U32,
        /// Non-zero while the reader does not want to be signalled for new data.
        pub interrupt_mask: U32,
        /// Bytes the writer is waiting for (0 = not waiting); see
        /// [`RingFeatures::pending_send_size`].
        pub pending_send_sz: U32,
        /// Reserved.
        pub reserved: [U32; 12],
        /// Feature bits.
        pub feature_bits: RingFeatures,
    }
    size 68
}

/// Byte offset of `write_index` in the control page.
pub const RING_WRITE_INDEX_OFFSET: u32 = offset_of!(RingControl, write_index) as u32;
/// Byte offset of `read_index` in the control page.
pub const RING_READ_INDEX_OFFSET: u32 = offset_of!(RingControl, read_index) as u32;
/// Byte offset of `interrupt_mask` in the control page.
pub const RING_INTERRUPT_MASK_OFFSET: u32 = offset_of!(RingControl, interrupt_mask) as u32;
/// Byte offset of `pending_send_sz` in the control page.
pub const RING_PENDING_SEND_SIZE_OFFSET: u32 = offset_of!(RingControl, pending_send_sz) as u32;
/// Byte offset of `feature_bits` in the control page.
pub const RING_FEATURE_BITS_OFFSET: u32 = offset_of!(RingControl, feature_bits) as u32;

const _: () = {
    assert!(RING_WRITE_INDEX_OFFSET == 0);
    assert!(RING_READ_INDEX_OFFSET == 4);
    assert!(RING_INTERRUPT_MASK_OFFSET == 8);
    assert!(RING_PENDING_SEND_SIZE_OFFSET == 12);
    assert!(RING_FEATURE_BITS_OFFSET == 64);
};

/// Why a ring's geometry or one of its indices is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingLayoutError {
    /// The ring (header page included) is not a whole number of pages.
    NotPageMultiple {
        /// The ring's size in bytes.
        size: u64,
    },
    /// The ring has no data area, or one larger than [`MAX_RING_DATA_SIZE`].
    BadSize {
        /// The ring's size in bytes.
        size: u64,
    },
    /// An index points outside the data area.
    IndexOutOfRange {
        /// The index.
        index: u32,
        /// Size of the data area.
        data_size: u32,
    },
    /// An index is not a multiple of 8.
    IndexMisaligned {
        /// The index.
        index: u32,
    },
}

impl fmt::Display for RingLayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPageMultiple { size } => {
                write!(f, "ring size {size:#x} is not a multiple of the page size")
            }
            Self::BadSize { size } => write!(f, "ring size {size:#x} is out of range"),
            Self::IndexOutOfRange { index, data_size } => write!(
                f,
                "ring index {index:#x} is outside the {data_size:#x}-byte data area"
            ),
            Self::IndexMisaligned { index } => {
                write!(f, "ring index {index:#x} is not a multiple of 8")
            }
        }
    }
}

impl core::error::Error for RingLayoutError {}

/// Checks a ring's total size (control page included) and returns the size
/// of its data area.
pub const fn ring_data_size(ring_size: u64) -> Result<u32, RingLayoutError> {
    if !ring_size.is_multiple_of(PAGE_SIZE as u64) {
        return Err(RingLayoutError::NotPageMultiple { size: ring_size });
    }
    if ring_size <= RING_HEADER_SIZE as u64
        || ring_size - (RING_HEADER_SIZE as u64) > MAX_RING_DATA_SIZE as u64
    {
        return Err(RingLayoutError::BadSize { size: ring_size });
    }
    Ok((ring_size - RING_HEADER_SIZE as u64) as u32)
}

/// Checks that `index` is a valid position in a data area of `data_size`
/// bytes: inside it and 8-byte aligned.
pub const fn validate_ring_index(index: u32, data_size: u32) -> Result<(), RingLayoutError> {
    if index >= data_size {
        return Err(RingLayoutError::IndexOutOfRange { index, data_size });
    }
    if !index.is_multiple_of(8) {
        return Err(RingLayoutError::IndexMisaligned { index });
    }
    Ok(())
}

/// Bytes the reader has yet to consume. Both indices must be valid.
pub const fn ring_bytes_used(read_index: u32, write_index: u32, data_size: u32) -> u32 {
    if write_index >= read_index {
        write_index - read_index
    } else {
        data_size - (read_index - write_index)
    }
}

/// Free bytes from the writer's point of view. A packet of `n` bytes
/// (trailer included) fits only if this is strictly greater than `n`.
pub const fn ring_bytes_free(read_index: u32, write_index: u32, data_size: u32) -> u32 {
    data_size - ring_bytes_used(read_index, write_index, data_size)
}

/// Whether the writer must signal the reader after writing a packet: only on
/// the empty → non-empty transition (the reader's `read_index` still equals
/// the writer's index before the write) and only if the reader has not set
/// `interrupt_mask`. Signalling more often is wasted work for the peer (and
/// Hyper-V treats unexpected interrupts as abuse).
pub const fn should_signal_after_write(
    interrupt_mask: u32,
    old_write_index: u32,
    read_index_now: u32,
) -> bool {
    interrupt_mask == 0 && old_write_index == read_index_now
}

/// Whether the reader must signal the writer after consuming packets: only
/// if the writer advertised [`RingFeatures::pending_send_size`], is waiting
/// (`pending_send_sz != 0`), and the free space crossed the threshold — it
/// was not enough before (`free_before <= pending_send_sz`) and is now
/// (`free_after > pending_send_sz`, the writer needs strictly more).
pub const fn should_signal_after_read(
    feature_bits: RingFeatures,
    pending_send_sz: u32,
    free_before: u32,
    free_after: u32,
) -> bool {
    feature_bits.pending_send_size()
        && pending_send_sz != 0
        && free_before <= pending_send_sz
        && free_after > pending_send_sz
}

open_enum! {
    /// VMBus packet types ([`PacketDescriptor::packet_type`]).
    pub struct PacketType(le u16) {
        /// Invalid.
        INVALID = 0,
        /// Synchronisation.
        SYNCH = 1,
        /// Add a transfer page set.
        ADD_TRANSFER_PAGE_SET = 2,
        /// Remove a transfer page set.
        REMOVE_TRANSFER_PAGE_SET = 3,
        /// Establish a GPADL.
        ESTABLISH_GPADL = 4,
        /// Tear down a GPADL.
        TEARDOWN_GPADL = 5,
        /// Data carried in the ring itself.
        DATA_INBAND = 6,
        /// Data in transfer pages.
        DATA_USING_TRANSFER_PAGES = 7,
        /// Data in a GPADL.
        DATA_USING_GPADL = 8,
        /// Data described by guest physical page ranges.
        DATA_USING_GPA_DIRECT = 9,
        /// Cancel a request.
        CANCEL_REQUEST = 10,
        /// Completion of an earlier packet (same transaction id).
        COMPLETION = 11,
        /// Data using an additional packet.
        DATA_USING_ADDITIONAL_PACKET = 12,
        /// Additional data.
        ADDITIONAL_DATA = 13,
    }
}

/// [`PacketDescriptor::flags`].
#[bitfield(u16, repr = U16, from = U16::new, into = U16::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DescriptorFlags {
    /// The sender wants a [`PacketType::COMPLETION`] packet back.
    pub completion_requested: bool,
    /// Reserved.
    #[bits(15)]
    pub reserved: u16,
}

/// Size of a [`PacketDescriptor`] in bytes.
pub const PACKET_DESCRIPTOR_SIZE: u32 = 16;

/// Size of a [`PacketTrailer`] in bytes.
pub const PACKET_TRAILER_SIZE: u32 = 8;

/// The largest packet a descriptor can describe (`len8` is 16 bits), in
/// bytes, trailer excluded.
pub const MAX_PACKET_SIZE: u32 = u16::MAX as u32 * 8;

wire_layout! {
    /// The descriptor at the start of every packet (`struct vmpacket_descriptor`).
    pub struct PacketDescriptor {
        /// Packet type.
        pub packet_type: PacketType,
        /// Offset of the payload from the start of the packet, in 8-byte units.
        pub data_offset8: U16,
        /// Total length of the packet (trailer excluded), in 8-byte units.
        pub length8: U16,
        /// Flags.
        pub flags: DescriptorFlags,
        /// The sender's id for the request; a completion echoes it.
        pub transaction_id: U64,
    }
    size PACKET_DESCRIPTOR_SIZE as usize
}

/// Why a packet descriptor is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescriptorError {
    /// The data offset points inside the descriptor itself.
    DataOffsetTooSmall {
        /// Data offset in bytes.
        offset: u32,
    },
    /// The data offset is past the end of the packet.
    DataOffsetPastLength {
        /// Data offset in bytes.
        offset: u32,
        /// Total length in bytes.
        len: u32,
    },
    /// The packet (with its trailer) is longer than the bytes available.
    TooLong {
        /// Total length in bytes, trailer included.
        len: u32,
        /// Bytes available in the ring.
        available: u32,
    },
    /// A packet to be built does not fit in a descriptor's 16-bit length.
    TooLarge {
        /// Requested length in bytes.
        len: u64,
    },
}

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DataOffsetTooSmall { offset } => {
                write!(f, "packet data offset {offset} is inside the descriptor")
            }
            Self::DataOffsetPastLength { offset, len } => {
                write!(f, "packet data offset {offset} is past its length {len}")
            }
            Self::TooLong { len, available } => write!(
                f,
                "packet of {len} bytes is longer than the {available} bytes in the ring"
            ),
            Self::TooLarge { len } => write!(f, "a {len}-byte packet cannot be described"),
        }
    }
}

impl core::error::Error for DescriptorError {}

impl PacketDescriptor {
    /// Total length of the packet in bytes, trailer excluded.
    pub const fn len(&self) -> u32 {
        self.length8.get() as u32 * 8
    }

    /// Whether the packet has no bytes at all (always malformed).
    pub const fn is_empty(&self) -> bool {
        self.length8.get() == 0
    }

    /// Offset of the payload from the start of the packet, in bytes.
    pub const fn data_offset(&self) -> u32 {
        self.data_offset8.get() as u32 * 8
    }

    /// Whether the sender asked for a completion packet.
    pub const fn completion_requested(&self) -> bool {
        self.flags.completion_requested()
    }

    /// Checks the descriptor's framing against `available` bytes in the ring
    /// (the packet, its trailer, and anything after them): the data offset
    /// covers at least the descriptor, lies within the packet, and the packet
    /// plus trailer fits. Lengths are in 8-byte units, so they are always
    /// 8-byte multiples.
    pub const fn validate(&self, available: u32) -> Result<(), DescriptorError> {
        let offset = self.data_offset();
        let len = self.len();
        if offset < PACKET_DESCRIPTOR_SIZE {
            return Err(DescriptorError::DataOffsetTooSmall { offset });
        }
        if offset > len {
            return Err(DescriptorError::DataOffsetPastLength { offset, len });
        }
        let total = len + PACKET_TRAILER_SIZE;
        if total > available {
            return Err(DescriptorError::TooLong {
                len: total,
                available,
            });
        }
        Ok(())
    }

    /// A descriptor for a packet whose type-specific header (after the
    /// descriptor) is `header_len` bytes and whose payload is `payload_len`
    /// bytes; both are padded to 8 bytes.
    pub const fn for_packet(
        packet_type: PacketType,
        flags: DescriptorFlags,
        transaction_id: u64,
        header_len: usize,
        payload_len: usize,
    ) -> Result<Self, DescriptorError> {
        // Saturating: lengths near the top of `u64` are refused, not wrapped.
        let offset = align8(header_len as u64).saturating_add(PACKET_DESCRIPTOR_SIZE as u64);
        let len = offset.saturating_add(align8(payload_len as u64));
        if len > MAX_PACKET_SIZE as u64 {
            return Err(DescriptorError::TooLarge { len });
        }
        Ok(Self {
            packet_type,
            data_offset8: U16::new((offset / 8) as u16),
            length8: U16::new((len / 8) as u16),
            flags,
            transaction_id: U64::new(transaction_id),
        })
    }
}

/// `n` rounded up to a multiple of 8 (saturating at the top of `u64`).
pub const fn align8(n: u64) -> u64 {
    match n.checked_add(7) {
        Some(v) => v & !7,
        None => !7,
    }
}

wire_layout! {
    /// The 8 bytes after every packet: the writer's index before the packet,
    /// in the upper half of a little-endian `u64`.
    pub struct PacketTrailer {
        /// Reserved (zero).
        pub reserved: U32,
        /// `write_index` before this packet was written.
        pub previous_write_index: U32,
    }
    size PACKET_TRAILER_SIZE as usize
}

wire_layout! {
    /// The header after the descriptor of a GPA-direct packet
    /// (`struct vmbus_channel_packet_multipage_buffer` minus the descriptor).
    pub struct GpaDirectHeader {
        /// Reserved (zero).
        pub reserved: U32,
        /// Number of [`GpaRangeHeader`]-led ranges that follow.
        pub range_count: U32,
    }
    size 8
}

wire_layout! {
    /// The start of one GPA range (`struct gpa_range`); `pfn_count` page frame
    /// numbers (`u64`) follow it, where `pfn_count` is
    /// [`GpaRangeHeader::pfn_count`].
    pub struct GpaRangeHeader {
        /// Length of the range in bytes.
        pub byte_count: U32,
        /// Offset of the range's first byte in its first page.
        pub byte_offset: U32,
    }
    size 8
}

impl GpaRangeHeader {
    /// Number of pages the range spans (and so of PFNs that follow it).
    pub const fn pfn_count(&self) -> u64 {
        (self.byte_offset.get() as u64 + self.byte_count.get() as u64).div_ceil(PAGE_SIZE as u64)
    }
}

/// Why the ranges of a GPA-direct packet are malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpaRangeError {
    /// The header area is too short for a [`GpaDirectHeader`].
    MissingHeader,
    /// The packet declares no ranges.
    NoRanges,
    /// The header area ends inside a range's [`GpaRangeHeader`].
    RangeHeaderTruncated {
        /// Index of the range.
        index: u32,
    },
    /// A range has zero bytes.
    EmptyRange {
        /// Index of the range.
        index: u32,
    },
    /// A range's byte offset is not inside its first page.
    ByteOffsetTooLarge {
        /// Index of the range.
        index: u32,
        /// The byte offset.
        byte_offset: u32,
    },
    /// A range needs more PFNs than the header area holds.
    PfnArrayTruncated {
        /// Index of the range.
        index: u32,
        /// PFNs the range needs.
        needed: u64,
        /// PFNs left in the header area.
        available: u64,
    },
    /// A PFN whose address does not fit in 64 bits.
    PfnTooLarge {
        /// Index of the range.
        index: u32,
        /// The PFN.
        pfn: u64,
    },
}

impl fmt::Display for GpaRangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingHeader => f.write_str("GPA-direct packet has no range header"),
            Self::NoRanges => f.write_str("GPA-direct packet has no ranges"),
            Self::RangeHeaderTruncated { index } => write!(f, "GPA range {index} is truncated"),
            Self::EmptyRange { index } => write!(f, "GPA range {index} is empty"),
            Self::ByteOffsetTooLarge { index, byte_offset } => write!(
                f,
                "GPA range {index} starts at offset {byte_offset}, past its first page"
            ),
            Self::PfnArrayTruncated {
                index,
                needed,
                available,
            } => write!(
                f,
                "GPA range {index} needs {needed} PFNs but only {available} are present"
            ),
            Self::PfnTooLarge { index, pfn } => {
                write!(
                    f,
                    "GPA range {index} has PFN {pfn:#x} beyond the address space"
                )
            }
        }
    }
}

impl core::error::Error for GpaRangeError {}

/// One validated range of a GPA-direct packet, borrowing its PFNs from the
/// packet bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpaRangeRef<'a> {
    /// Length of the range in bytes (non-zero).
    pub byte_count: u32,
    /// Offset of the first byte in the first page (below [`PAGE_SIZE`]).
    pub byte_offset: u32,
    pfns: &'a [u8],
}

impl<'a> GpaRangeRef<'a> {
    /// Number of pages (PFNs) in the range.
    pub fn pfn_count(&self) -> usize {
        self.pfns.len() / 8
    }

    /// The page frame numbers, each already checked against [`MAX_PFN`].
    pub fn pfns(&self) -> impl Iterator<Item = u64> + 'a {
        <[U64]>::ref_from_bytes(self.pfns)
            .unwrap_or(&[])
            .iter()
            .map(|p| p.get())
    }

    /// The range as contiguous guest-physical pieces `(gpa, len)`, in
    /// order, with physically adjacent pages merged.
    pub fn segments(&self) -> impl Iterator<Item = (u64, u64)> + 'a {
        let mut pfns = self.pfns();
        let mut offset = u64::from(self.byte_offset);
        let mut left = u64::from(self.byte_count);
        let mut next = pfns.next();
        core::iter::from_fn(move || {
            let first = next?;
            if left == 0 {
                return None;
            }
            let start = (first << PAGE_SHIFT) + offset;
            let mut len = (u64::from(PAGE_SIZE) - offset).min(left);
            left -= len;
            offset = 0;
            let mut prev = first;
            next = pfns.next();
            while let Some(p) = next {
                if left == 0 || prev.checked_add(1) != Some(p) {
                    break;
                }
                let n = u64::from(PAGE_SIZE).min(left);
                len += n;
                left -= n;
                prev = p;
                next = pfns.next();
            }
            Some((start, len))
        })
    }
}

/// The ranges of a GPA-direct packet; yields each range or the first error.
#[derive(Clone, Debug)]
pub struct GpaRanges<'a> {
    rest: &'a [u8],
    index: u32,
    count: u32,
    failed: bool,
}

impl GpaRanges<'_> {
    /// The number of ranges the packet declares.
    pub fn range_count(&self) -> u32 {
        self.count
    }
}

impl<'a> Iterator for GpaRanges<'a> {
    type Item = Result<GpaRangeRef<'a>, GpaRangeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.index >= self.count {
            return None;
        }
        let index = self.index;
        let result = self.parse_one(index);
        self.index += 1;
        self.failed = result.is_err();
        Some(result)
    }
}

impl<'a> GpaRanges<'a> {
    fn parse_one(&mut self, index: u32) -> Result<GpaRangeRef<'a>, GpaRangeError> {
        let (header, rest) = GpaRangeHeader::read_from_prefix(self.rest)
            .map_err(|_| GpaRangeError::RangeHeaderTruncated { index })?;
        let (byte_count, byte_offset) = (header.byte_count.get(), header.byte_offset.get());
        if byte_count == 0 {
            return Err(GpaRangeError::EmptyRange { index });
        }
        if byte_offset >= PAGE_SIZE {
            return Err(GpaRangeError::ByteOffsetTooLarge { index, byte_offset });
        }
        let needed = header.pfn_count();
        let available = (rest.len() / 8) as u64;
        if needed > available {
            return Err(GpaRangeError::PfnArrayTruncated {
                index,
                needed,
                available,
            });
        }
        let (pfns, rest) = rest.split_at(needed as usize * 8);
        let range = GpaRangeRef {
            byte_count,
            byte_offset,
            pfns,
        };
        if let Some(pfn) = range.pfns().find(|&p| p > MAX_PFN) {
            return Err(GpaRangeError::PfnTooLarge { index, pfn });
        }
        self.rest = rest;
        Ok(range)
    }
}

/// Parses the type-specific header of a GPA-direct packet: the bytes from
/// the end of the descriptor to the packet's data offset. Bytes after the
/// last range are ignored (padding). Each range is validated as the
/// iterator reaches it; iteration stops after the first error.
pub fn parse_gpa_direct(header_area: &[u8]) -> Result<GpaRanges<'_>, GpaRangeError> {
    let (header, rest) =
        GpaDirectHeader::read_from_prefix(header_area).map_err(|_| GpaRangeError::MissingHeader)?;
    if header.range_count.get() == 0 {
        return Err(GpaRangeError::NoRanges);
    }
    Ok(GpaRanges {
        rest,
        index: 0,
        count: header.range_count.get(),
        failed: false,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn range_bytes(buf: &mut [u8], at: usize, count: u32, offset: u32, pfns: &[u64]) -> usize {
        let h = GpaRangeHeader {
            byte_count: count.into(),
            byte_offset: offset.into(),
        };
        buf[at..at + 8].copy_from_slice(h.as_bytes());
        let mut p = at + 8;
        for pfn in pfns {
            buf[p..p + 8].copy_from_slice(&pfn.to_le_bytes());
            p += 8;
        }
        p
    }

    #[test]
    fn ring_geometry() {
        assert_eq!(ring_data_size(8192), Ok(4096));
        assert!(matches!(
            ring_data_size(4096),
            Err(RingLayoutError::BadSize { .. })
        ));
        assert!(matches!(
            ring_data_size(5000),
            Err(RingLayoutError::NotPageMultiple { .. })
        ));
        assert!(ring_data_size(!4095).is_err());
        assert!(validate_ring_index(0, 4096).is_ok());
        assert!(validate_ring_index(4096, 4096).is_err());
        assert_eq!(
            validate_ring_index(12, 4096),
            Err(RingLayoutError::IndexMisaligned { index: 12 })
        );
        assert_eq!(ring_bytes_used(8, 8, 64), 0);
        assert_eq!(ring_bytes_free(8, 8, 64), 64);
        assert_eq!(ring_bytes_used(56, 8, 64), 16);
        assert_eq!(ring_bytes_used(8, 56, 64), 48);
    }

    #[test]
    fn signalling_rules() {
        assert!(should_signal_after_write(0, 16, 16));
        assert!(!should_signal_after_write(1, 16, 16));
        assert!(!should_signal_after_write(0, 24, 16));
        let f = RingFeatures::new().with_pending_send_size(true);
        assert!(should_signal_after_read(f, 100, 50, 101));
        assert!(!should_signal_after_read(f, 100, 50, 100));
        assert!(!should_signal_after_read(f, 100, 101, 200));
        assert!(!should_signal_after_read(RingFeatures::new(), 100, 50, 200));
        assert!(!should_signal_after_read(f, 0, 50, 200));
    }

    #[test]
    fn descriptor_validation() {
        let requested = DescriptorFlags::new().with_completion_requested(true);
        let d = PacketDescriptor::for_packet(PacketType::DATA_INBAND, requested, 7, 0, 5).unwrap();
        assert_eq!((d.data_offset(), d.len()), (16, 24));
        assert!(d.completion_requested());
        assert!(d.validate(32).is_ok());
        assert!(matches!(
            d.validate(31),
            Err(DescriptorError::TooLong { .. })
        ));
        let mut bad = d;
        bad.data_offset8 = 1.into();
        assert_eq!(
            bad.validate(100),
            Err(DescriptorError::DataOffsetTooSmall { offset: 8 })
        );
        bad.data_offset8 = 4.into();
        assert_eq!(
            bad.validate(100),
            Err(DescriptorError::DataOffsetPastLength {
                offset: 32,
                len: 24
            })
        );
        assert!(matches!(
            PacketDescriptor::for_packet(
                PacketType::DATA_INBAND,
                DescriptorFlags::new(),
                0,
                0,
                MAX_PACKET_SIZE as usize
            ),
            Err(DescriptorError::TooLarge { .. })
        ));
        // Lengths whose sum overflows are refused, not wrapped (or a panic).
        for (header, payload) in [(usize::MAX, 0), (0, usize::MAX), (usize::MAX, usize::MAX)] {
            assert!(matches!(
                PacketDescriptor::for_packet(
                    PacketType::DATA_INBAND,
                    DescriptorFlags::new(),
                    0,
                    header,
                    payload
                ),
                Err(DescriptorError::TooLarge { .. })
            ));
        }
    }

    #[test]
    fn descriptor_wire_layout_and_unknown_types() {
        let d = PacketDescriptor::for_packet(
            PacketType::DATA_USING_GPA_DIRECT,
            DescriptorFlags::new().with_completion_requested(true),
            0x0102_0304_0506_0708,
            8,
            3,
        )
        .unwrap();
        assert_eq!(
            d.as_bytes(),
            &[9, 0, 3, 0, 4, 0, 1, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        // A type nobody named is read, kept and printed, not refused here.
        let raw = [0x34, 0x12, 2, 0, 2, 0, 0x03, 0x80, 0, 0, 0, 0, 0, 0, 0, 0];
        let (d, _) = PacketDescriptor::read_from_prefix(&raw[..]).unwrap();
        assert_eq!(d.packet_type, PacketType::new(0x1234));
        assert_eq!(d.packet_type.name(), None);
        assert_eq!(std::format!("{:?}", d.packet_type), "PacketType(0x1234)");
        assert!(d.completion_requested());
        assert_eq!(d.flags.reserved(), 0x4001);
        assert_eq!(d.as_bytes(), &raw, "reserved bits survive a round trip");
        assert_eq!(PacketType::COMPLETION.get(), 11);
    }

    #[test]
    fn ring_control_layout() {
        let c = RingControl {
            write_index: 0x10.into(),
            read_index: 0x20.into(),
            interrupt_mask: 1.into(),
            pending_send_sz: 0x30.into(),
            feature_bits: RingFeatures::new().with_pending_send_size(true),
            ..Default::default()
        };
        let b = c.as_bytes();
        assert_eq!(b[..4], [0x10, 0, 0, 0]);
        assert_eq!(b[4..8], [0x20, 0, 0, 0]);
        assert_eq!(b[8..12], [1, 0, 0, 0]);
        assert_eq!(b[12..16], [0x30, 0, 0, 0]);
        assert_eq!(b[64..68], [1, 0, 0, 0]);
        let t = PacketTrailer {
            reserved: 0.into(),
            previous_write_index: 0x40.into(),
        };
        assert_eq!(t.as_bytes(), &[0, 0, 0, 0, 0x40, 0, 0, 0]);
    }

    #[test]
    fn gpa_ranges_parse_and_merge() {
        let mut buf = [0u8; 128];
        buf[4..8].copy_from_slice(&2u32.to_le_bytes());
        let p = range_bytes(&mut buf, 8, 8192, 100, &[10, 11, 20]);
        let end = range_bytes(&mut buf, p, 1, 4095, &[30]);
        let mut ranges = parse_gpa_direct(&buf[..end]).unwrap();
        assert_eq!(ranges.range_count(), 2);
        let r0 = ranges.next().unwrap().unwrap();
        assert_eq!(r0.pfn_count(), 3);
        let segs: Vec<(u64, u64)> = r0.segments().collect();
        assert_eq!(
            segs.as_slice(),
            &[(10 * 4096 + 100, 8192 - 100), (20 * 4096, 100)]
        );
        let r1 = ranges.next().unwrap().unwrap();
        let segs: Vec<(u64, u64)> = r1.segments().collect();
        assert_eq!(segs.as_slice(), &[(30 * 4096 + 4095, 1)]);
        assert!(ranges.next().is_none());
    }

    #[test]
    fn gpa_range_errors() {
        let mut buf = [0u8; 64];
        assert_eq!(
            parse_gpa_direct(&buf[..4]).unwrap_err(),
            GpaRangeError::MissingHeader
        );
        assert_eq!(
            parse_gpa_direct(&buf[..8]).unwrap_err(),
            GpaRangeError::NoRanges
        );
        buf[4] = 1;
        fn first(b: &[u8]) -> Result<GpaRangeRef<'_>, GpaRangeError> {
            parse_gpa_direct(b).unwrap().next().unwrap()
        }
        assert_eq!(
            first(&buf[..12]),
            Err(GpaRangeError::RangeHeaderTruncated { index: 0 })
        );
        range_bytes(&mut buf, 8, 0, 0, &[]);
        assert_eq!(
            first(&buf[..16]),
            Err(GpaRangeError::EmptyRange { index: 0 })
        );
        range_bytes(&mut buf, 8, 1, 4096, &[]);
        assert_eq!(
            first(&buf[..16]),
            Err(GpaRangeError::ByteOffsetTooLarge {
                index: 0,
                byte_offset: 4096
            })
        );
        range_bytes(&mut buf, 8, u32::MAX, 4095, &[1]);
        assert!(matches!(
            first(&buf[..24]),
            Err(GpaRangeError::PfnArrayTruncated { index: 0, .. })
        ));
        range_bytes(&mut buf, 8, 1, 0, &[MAX_PFN + 1]);
        assert!(matches!(
            first(&buf[..24]),
            Err(GpaRangeError::PfnTooLarge { index: 0, .. })
        ));
        // A huge declared count stops at the end of the data.
        buf[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        range_bytes(&mut buf, 8, 1, 0, &[1]);
        let results: Vec<_> = parse_gpa_direct(&buf[..24]).unwrap().collect();
        assert_eq!(results.len(), 2);
        assert!(results[1].is_err());
    }
}
