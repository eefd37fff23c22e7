//! How a command points at its data: PRP entries and lists, and SGL
//! descriptors (NVMe Base 2.0 §4.1.1 "Physical Region Page Entry and
//! List", §4.1.2 "Scatter Gather List").
//!
//! The rules here are pure arithmetic and decoding; walking guest memory is
//! the controller's (or driver's) job. [`SglDescriptor::parse`] and
//! [`SglSegment::parse`] are total: any bytes yield a descriptor or an
//! [`SglError`] naming the status the spec gives for it.

use zerocopy::FromBytes;
use zerocopy::little_endian::{U32, U64};

use crate::open_enum::open_enum;

use super::status::GenericStatus;

// ---------------------------------------------------------------------------
// PRP
// ---------------------------------------------------------------------------

// Every PRP function takes `page_size`, the controller's memory page size
// (CC.MPS, so a power of two of at least 4 KiB, chosen by parastor, not by
// the peer); any PRP entry and length from the peer is then safe.

/// The size of a PRP entry, in bytes.
pub const PRP_ENTRY_LEN: u64 = 8;

/// Whether `entry` is a well-formed PRP entry: bits 1:0 are zero (dword
/// aligned), as every PRP entry must be.
pub const fn prp_is_dword_aligned(entry: u64) -> bool {
    entry & 0b11 == 0
}

/// The offset of `entry` within its memory page of `page_size` bytes (a
/// power of two). PRP1 may carry an offset; PRP list entries and a PRP2
/// that points at data must have offset 0 (else PRP Offset Invalid).
pub const fn prp_offset(entry: u64, page_size: u64) -> u64 {
    entry & page_size.wrapping_sub(1)
}

/// How many bytes PRP1 covers for a transfer of `len` bytes: up to the
/// end of its page.
pub const fn prp1_len(prp1: u64, len: u64, page_size: u64) -> u64 {
    let room = page_size - prp_offset(prp1, page_size);
    if len < room { len } else { room }
}

/// What PRP2 means for a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prp2Use {
    /// PRP1 covers the whole transfer; PRP2 is reserved.
    Unused,
    /// PRP2 is the second (and last) data page; its offset must be 0.
    Data,
    /// PRP2 points at a PRP list (it may have an offset, dword aligned).
    List,
}

/// What PRP2 means for a transfer of `len` bytes starting at `prp1`.
pub const fn prp2_use(prp1: u64, len: u64, page_size: u64) -> Prp2Use {
    let first = prp1_len(prp1, len, page_size);
    if len <= first {
        Prp2Use::Unused
    } else if len - first <= page_size {
        Prp2Use::Data
    } else {
        Prp2Use::List
    }
}

/// How many data pages a PRP list must describe for a transfer of `len`
/// bytes starting at `prp1` (the pages after PRP1's), rounded up.
pub const fn prp_list_data_entries(prp1: u64, len: u64, page_size: u64) -> u64 {
    let rest = len - prp1_len(prp1, len, page_size);
    rest.div_ceil(page_size)
}

/// How many entries a PRP list page starting at `list_addr` holds before
/// the page ends. When more entries remain than fit, the last of them is
/// a pointer to the next list page, not data.
pub const fn prp_list_entries_in_page(list_addr: u64, page_size: u64) -> u64 {
    (page_size - prp_offset(list_addr, page_size)) / PRP_ENTRY_LEN
}

// ---------------------------------------------------------------------------
// SGL
// ---------------------------------------------------------------------------

/// The size of an SGL descriptor, in bytes.
pub const SGL_DESCRIPTOR_LEN: usize = 16;

open_enum! {
    /// SGL descriptor type (byte 15 bits 7:4).
    pub struct SglDescriptorType(u8) {
        /// SGL Data Block.
        DATA_BLOCK = 0x0,
        /// SGL Bit Bucket.
        BIT_BUCKET = 0x1,
        /// SGL Segment.
        SEGMENT = 0x2,
        /// SGL Last Segment.
        LAST_SEGMENT = 0x3,
        /// Keyed SGL Data Block (fabrics).
        KEYED_DATA_BLOCK = 0x4,
        /// Transport SGL Data Block (fabrics).
        TRANSPORT_DATA_BLOCK = 0x5,
        /// Vendor specific.
        VENDOR_SPECIFIC = 0xF,
    }
}

open_enum! {
    /// SGL descriptor sub type (byte 15 bits 3:0).
    pub struct SglSubType(u8) {
        /// The address field is a memory address.
        ADDRESS = 0x0,
        /// The address field is an offset (fabrics, in-capsule data).
        OFFSET = 0x1,
        /// Transport specific.
        TRANSPORT_SPECIFIC = 0xA,
    }
}

wire_layout! {
    /// A raw 16-byte SGL descriptor, as found in SGL1 of a command or in
    /// an SGL segment.
    pub struct RawSglDescriptor {
        /// Address (data block, segment) or reserved (bit bucket).
        pub address: U64,
        /// Length in bytes.
        pub length: U32,
        /// Reserved (type specific for keyed descriptors).
        pub reserved: [u8; 3],
        /// SGL identifier: type in bits 7:4, sub type in bits 3:0.
        pub identifier: u8,
    }
    size 16
}

impl RawSglDescriptor {
    /// The descriptor type.
    pub const fn descriptor_type(&self) -> SglDescriptorType {
        SglDescriptorType::new(self.identifier >> 4)
    }

    /// The sub type.
    pub const fn sub_type(&self) -> SglSubType {
        SglSubType::new(self.identifier & 0xF)
    }

    /// A descriptor of type `ty` with sub type Address.
    pub fn new(ty: SglDescriptorType, address: u64, length: u32) -> Self {
        Self {
            address: U64::new(address),
            length: U32::new(length),
            reserved: [0; 3],
            identifier: ty.get() << 4,
        }
    }
}

/// A decoded SGL descriptor of the kinds a PCIe controller accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SglDescriptor {
    /// Data Block: `length` bytes of data at `address`.
    DataBlock {
        /// Memory address.
        address: u64,
        /// Length in bytes.
        length: u32,
    },
    /// Bit Bucket: on a read, discard `length` bytes of the data.
    BitBucket {
        /// Length in bytes.
        length: u32,
    },
    /// Segment: the next segment is `length` bytes at `address`; its last
    /// descriptor may chain further.
    Segment {
        /// Memory address of the next segment.
        address: u64,
        /// Length of the next segment in bytes.
        length: u32,
    },
    /// Last Segment: the next and final segment is `length` bytes at
    /// `address`; it holds no segment descriptors.
    LastSegment {
        /// Memory address of the last segment.
        address: u64,
        /// Length of the last segment in bytes.
        length: u32,
    },
}

/// Why an SGL descriptor or segment was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SglError {
    /// The descriptor's type or sub type is not one a PCIe controller
    /// accepts (keyed, transport, vendor, reserved, or a non-address sub
    /// type).
    UnsupportedType {
        /// The type found.
        ty: SglDescriptorType,
        /// The sub type found.
        sub_type: SglSubType,
    },
    /// A segment's length is zero or not a multiple of 16.
    BadSegmentLength(u32),
    /// A segment descriptor appears where the spec forbids one: not last
    /// in its segment, or inside a last segment.
    MisplacedSegmentDescriptor,
}

impl SglError {
    /// The generic status the spec gives for this error.
    pub const fn status(self) -> GenericStatus {
        match self {
            Self::UnsupportedType { .. } => GenericStatus::SGL_DESCRIPTOR_TYPE_INVALID,
            Self::BadSegmentLength(_) | Self::MisplacedSegmentDescriptor => {
                GenericStatus::INVALID_SGL_SEGMENT_DESCRIPTOR
            }
        }
    }
}

impl core::fmt::Display for SglError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnsupportedType { ty, sub_type } => write!(
                f,
                "SGL descriptor type {ty:?} sub type {sub_type:?} is not supported \
                 (expected data block, bit bucket, segment or last segment, sub type address)"
            ),
            Self::BadSegmentLength(len) => write!(
                f,
                "SGL segment length {len} is not a non-zero multiple of 16"
            ),
            Self::MisplacedSegmentDescriptor => f.write_str(
                "SGL segment descriptor is not the last in its segment, or is inside a last segment",
            ),
        }
    }
}

impl SglDescriptor {
    /// Decodes one 16-byte descriptor. Total: any bytes give a descriptor
    /// or an error. Segment and last segment lengths must be non-zero
    /// multiples of 16.
    pub fn parse(bytes: &[u8; SGL_DESCRIPTOR_LEN]) -> Result<Self, SglError> {
        let raw: RawSglDescriptor = zerocopy::transmute!(*bytes);
        Self::decode(&raw)
    }

    /// Decodes a raw descriptor; see [`Self::parse`].
    pub fn decode(raw: &RawSglDescriptor) -> Result<Self, SglError> {
        let ty = raw.descriptor_type();
        let sub_type = raw.sub_type();
        let address = raw.address.get();
        let length = raw.length.get();
        let unsupported = SglError::UnsupportedType { ty, sub_type };
        if sub_type != SglSubType::ADDRESS {
            return Err(unsupported);
        }
        let segment_len_ok = length != 0 && length.is_multiple_of(SGL_DESCRIPTOR_LEN as u32);
        match ty {
            SglDescriptorType::DATA_BLOCK => Ok(Self::DataBlock { address, length }),
            SglDescriptorType::BIT_BUCKET => Ok(Self::BitBucket { length }),
            SglDescriptorType::SEGMENT if segment_len_ok => Ok(Self::Segment { address, length }),
            SglDescriptorType::LAST_SEGMENT if segment_len_ok => {
                Ok(Self::LastSegment { address, length })
            }
            SglDescriptorType::SEGMENT | SglDescriptorType::LAST_SEGMENT => {
                Err(SglError::BadSegmentLength(length))
            }
            _ => Err(unsupported),
        }
    }

    /// Whether this descriptor chains to another segment.
    pub const fn is_segment(&self) -> bool {
        matches!(self, Self::Segment { .. } | Self::LastSegment { .. })
    }
}

/// One SGL segment read from memory: its descriptors, checked for
/// placement as it is iterated.
#[derive(Clone, Copy, Debug)]
pub struct SglSegment<'a> {
    bytes: &'a [u8],
    last: bool,
}

impl<'a> SglSegment<'a> {
    /// A segment from its bytes; `last` says whether it was reached
    /// through a Last Segment descriptor (then it may hold no segment
    /// descriptors). Total: the length must be a non-zero multiple of 16.
    pub fn parse(bytes: &'a [u8], last: bool) -> Result<Self, SglError> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(SGL_DESCRIPTOR_LEN) {
            return Err(SglError::BadSegmentLength(
                u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            ));
        }
        Ok(Self { bytes, last })
    }

    /// The number of descriptors in the segment.
    pub fn len(&self) -> usize {
        self.bytes.len() / SGL_DESCRIPTOR_LEN
    }

    /// Whether the segment is empty (never, for a parsed segment).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The segment's descriptors in order. A segment descriptor before the
    /// last position, or any segment descriptor in a last segment, yields
    /// [`SglError::MisplacedSegmentDescriptor`].
    pub fn descriptors(self) -> impl Iterator<Item = Result<SglDescriptor, SglError>> + 'a {
        let count = self.len();
        let last = self.last;
        self.bytes
            .chunks_exact(SGL_DESCRIPTOR_LEN)
            .enumerate()
            .map(move |(i, chunk)| {
                let raw = RawSglDescriptor::read_from_bytes(chunk)
                    .map_err(|_| SglError::BadSegmentLength(chunk.len() as u32))?;
                let desc = SglDescriptor::decode(&raw)?;
                if desc.is_segment() && (last || i + 1 != count) {
                    return Err(SglError::MisplacedSegmentDescriptor);
                }
                Ok(desc)
            })
    }
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use zerocopy::IntoBytes;

    use super::*;

    #[test]
    fn prp_rules() {
        let page = 4096;
        assert!(prp_is_dword_aligned(0x1004));
        assert!(!prp_is_dword_aligned(0x1002));
        assert_eq!(prp_offset(0x1234, page), 0x234);
        assert_eq!(prp1_len(0x1000, 512, page), 512);
        assert_eq!(prp1_len(0x1E00, 8192, page), 512);
        assert_eq!(prp2_use(0x1000, 4096, page), Prp2Use::Unused);
        assert_eq!(prp2_use(0x1000, 8192, page), Prp2Use::Data);
        assert_eq!(prp2_use(0x1E00, 4096, page), Prp2Use::Data);
        assert_eq!(prp2_use(0x1E00, 4096 + 512 + 1, page), Prp2Use::List);
        assert_eq!(prp2_use(0x1000, 3 * 4096, page), Prp2Use::List);
        assert_eq!(prp_list_data_entries(0x1000, 128 * 1024, page), 31);
        assert_eq!(prp_list_data_entries(0x1E00, 4096 + 512 + 1, page), 2);
        assert_eq!(prp_list_entries_in_page(0x5000, page), 512);
        assert_eq!(prp_list_entries_in_page(0x5FF8, page), 1);
    }

    #[test]
    fn sgl_descriptor_layout_and_decoding() {
        assert_eq!(offset_of!(RawSglDescriptor, length), 8);
        assert_eq!(offset_of!(RawSglDescriptor, identifier), 15);
        let data = RawSglDescriptor::new(SglDescriptorType::DATA_BLOCK, 0x1000, 512);
        let bytes: [u8; 16] = data.as_bytes().try_into().unwrap();
        assert_eq!(
            SglDescriptor::parse(&bytes),
            Ok(SglDescriptor::DataBlock {
                address: 0x1000,
                length: 512
            })
        );
        let mut seg = bytes;
        seg[15] = 0x30;
        seg[8..12].copy_from_slice(&32u32.to_le_bytes());
        assert_eq!(
            SglDescriptor::parse(&seg),
            Ok(SglDescriptor::LastSegment {
                address: 0x1000,
                length: 32
            })
        );
        seg[8..12].copy_from_slice(&20u32.to_le_bytes());
        assert_eq!(
            SglDescriptor::parse(&seg),
            Err(SglError::BadSegmentLength(20))
        );
        seg[15] = 0x11; // bit bucket, offset sub type
        let err = SglDescriptor::parse(&seg).unwrap_err();
        assert_eq!(err.status(), GenericStatus::SGL_DESCRIPTOR_TYPE_INVALID);
        seg[15] = 0x40; // keyed data block
        assert!(matches!(
            SglDescriptor::parse(&seg),
            Err(SglError::UnsupportedType {
                ty: SglDescriptorType::KEYED_DATA_BLOCK,
                ..
            })
        ));
    }

    #[test]
    fn sgl_segments_check_placement() {
        let d = RawSglDescriptor::new(SglDescriptorType::DATA_BLOCK, 0x1000, 512);
        let b = RawSglDescriptor::new(SglDescriptorType::BIT_BUCKET, 0, 512);
        let s = RawSglDescriptor::new(SglDescriptorType::SEGMENT, 0x9000, 16);
        let mut buf = [0u8; 48];
        buf[..16].copy_from_slice(d.as_bytes());
        buf[16..32].copy_from_slice(b.as_bytes());
        buf[32..].copy_from_slice(s.as_bytes());
        let seg = SglSegment::parse(&buf, false).unwrap();
        assert_eq!(seg.len(), 3);
        let mut it = seg.descriptors();
        assert_eq!(
            it.next(),
            Some(Ok(SglDescriptor::DataBlock {
                address: 0x1000,
                length: 512
            }))
        );
        assert_eq!(
            it.next(),
            Some(Ok(SglDescriptor::BitBucket { length: 512 }))
        );
        assert_eq!(
            it.next(),
            Some(Ok(SglDescriptor::Segment {
                address: 0x9000,
                length: 16
            }))
        );
        assert_eq!(it.next(), None);
        // The same segment reached as a last segment may not chain.
        let last = SglSegment::parse(&buf, true).unwrap();
        assert_eq!(
            last.descriptors().last(),
            Some(Err(SglError::MisplacedSegmentDescriptor))
        );
        // A segment descriptor that is not last.
        let mut buf2 = buf;
        buf2[16..32].copy_from_slice(s.as_bytes());
        let seg = SglSegment::parse(&buf2, false).unwrap();
        assert_eq!(
            seg.descriptors().nth(1),
            Some(Err(SglError::MisplacedSegmentDescriptor))
        );
        assert_eq!(
            SglSegment::parse(&buf[..17], false).unwrap_err(),
            SglError::BadSegmentLength(17)
        );
        assert!(SglSegment::parse(&[], false).is_err());
    }

    #[test]
    fn sgl_parsing_is_total() {
        let mut rng = fastrand::Rng::with_seed(12);
        for _ in 0..10_000 {
            let mut bytes = [0u8; 64];
            rng.fill(&mut bytes);
            let len = rng.usize(..=64);
            if let Ok(seg) = SglSegment::parse(&bytes[..len], rng.bool()) {
                for desc in seg.descriptors() {
                    let _ = desc.map_err(|e| e.status());
                }
            }
            let one: [u8; 16] = bytes[..16].try_into().unwrap();
            let _ = SglDescriptor::parse(&one);
        }
    }
}
