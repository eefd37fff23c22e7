//! Sense data (SPC-5 4.4): sense keys, additional sense codes, the fixed
//! and descriptor formats, and [`SenseData`], their protocol-neutral form.

use bitfield_struct::bitfield;
use zerocopy::big_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::open_enum::open_enum;

open_enum! {
    /// Sense keys (SPC-5 table 52), a 4-bit field.
    pub struct SenseKey(u8) {
        /// NO SENSE.
        NO_SENSE = 0x0,
        /// RECOVERED ERROR.
        RECOVERED_ERROR = 0x1,
        /// NOT READY.
        NOT_READY = 0x2,
        /// MEDIUM ERROR.
        MEDIUM_ERROR = 0x3,
        /// HARDWARE ERROR.
        HARDWARE_ERROR = 0x4,
        /// ILLEGAL REQUEST.
        ILLEGAL_REQUEST = 0x5,
        /// UNIT ATTENTION.
        UNIT_ATTENTION = 0x6,
        /// DATA PROTECT.
        DATA_PROTECT = 0x7,
        /// BLANK CHECK.
        BLANK_CHECK = 0x8,
        /// VENDOR SPECIFIC.
        VENDOR_SPECIFIC = 0x9,
        /// COPY ABORTED.
        COPY_ABORTED = 0xA,
        /// ABORTED COMMAND.
        ABORTED_COMMAND = 0xB,
        /// VOLUME OVERFLOW.
        VOLUME_OVERFLOW = 0xD,
        /// MISCOMPARE.
        MISCOMPARE = 0xE,
        /// COMPLETED.
        COMPLETED = 0xF,
    }
}

open_enum! {
    /// An additional sense code and its qualifier (SPC-5 table 53, SBC-4,
    /// MMC-6) as one big-endian value: ASC in the high byte, ASCQ in the
    /// low byte — the order they have in sense data. The names are the
    /// pairs parastor reports.
    pub struct AdditionalSense(be u16) {
        /// 00/00 NO ADDITIONAL SENSE INFORMATION.
        NO_ADDITIONAL_SENSE = 0x0000,
        /// 03/00 PERIPHERAL DEVICE WRITE FAULT.
        WRITE_FAULT = 0x0300,
        /// 04/00 LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE.
        LUN_NOT_READY = 0x0400,
        /// 10/01 LOGICAL BLOCK GUARD CHECK FAILED.
        GUARD_CHECK_FAILED = 0x1001,
        /// 10/02 LOGICAL BLOCK APPLICATION TAG CHECK FAILED.
        APPLICATION_TAG_CHECK_FAILED = 0x1002,
        /// 10/03 LOGICAL BLOCK REFERENCE TAG CHECK FAILED.
        REFERENCE_TAG_CHECK_FAILED = 0x1003,
        /// 11/00 UNRECOVERED READ ERROR.
        UNRECOVERED_READ = 0x1100,
        /// 1A/00 PARAMETER LIST LENGTH ERROR.
        PARAMETER_LIST_LENGTH = 0x1A00,
        /// 1D/00 MISCOMPARE DURING VERIFY OPERATION.
        MISCOMPARE_DURING_VERIFY = 0x1D00,
        /// 20/00 INVALID COMMAND OPERATION CODE.
        INVALID_COMMAND = 0x2000,
        /// 21/00 LOGICAL BLOCK ADDRESS OUT OF RANGE.
        LBA_OUT_OF_RANGE = 0x2100,
        /// 24/00 INVALID FIELD IN CDB.
        INVALID_FIELD_IN_CDB = 0x2400,
        /// 26/00 INVALID FIELD IN PARAMETER LIST.
        INVALID_FIELD_IN_PARAMETER_LIST = 0x2600,
        /// 26/04 INVALID RELEASE OF PERSISTENT RESERVATION.
        INVALID_RELEASE = 0x2604,
        /// 27/00 WRITE PROTECTED.
        WRITE_PROTECTED = 0x2700,
        /// 27/07 SPACE ALLOCATION FAILED WRITE PROTECT.
        SPACE_ALLOCATION_FAILED = 0x2707,
        /// 28/00 NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED.
        NOT_READY_TO_READY_CHANGE = 0x2800,
        /// 29/00 POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
        POWER_ON_RESET = 0x2900,
        /// 2A/03 RESERVATIONS PREEMPTED.
        RESERVATIONS_PREEMPTED = 0x2A03,
        /// 2A/04 RESERVATIONS RELEASED.
        RESERVATIONS_RELEASED = 0x2A04,
        /// 2A/05 REGISTRATIONS PREEMPTED.
        REGISTRATIONS_PREEMPTED = 0x2A05,
        /// 2A/09 CAPACITY DATA HAS CHANGED.
        CAPACITY_DATA_CHANGED = 0x2A09,
        /// 39/00 SAVING PARAMETERS NOT SUPPORTED.
        SAVING_PARAMETERS_NOT_SUPPORTED = 0x3900,
        /// 3A/00 MEDIUM NOT PRESENT.
        MEDIUM_NOT_PRESENT = 0x3A00,
        /// 3A/01 MEDIUM NOT PRESENT - TRAY CLOSED.
        MEDIUM_NOT_PRESENT_TRAY_CLOSED = 0x3A01,
        /// 3A/02 MEDIUM NOT PRESENT - TRAY OPEN.
        MEDIUM_NOT_PRESENT_TRAY_OPEN = 0x3A02,
        /// 3E/01 LOGICAL UNIT FAILURE.
        LOGICAL_UNIT_FAILURE = 0x3E01,
        /// 3E/02 TIMEOUT ON LOGICAL UNIT.
        TIMEOUT_ON_LOGICAL_UNIT = 0x3E02,
        /// 44/00 INTERNAL TARGET FAILURE.
        INTERNAL_TARGET_FAILURE = 0x4400,
        /// 53/02 MEDIUM REMOVAL PREVENTED.
        MEDIUM_REMOVAL_PREVENTED = 0x5302,
    }
}

impl AdditionalSense {
    /// The pair `asc`/`ascq`.
    pub const fn from_parts(asc: u8, ascq: u8) -> Self {
        Self::new(u16::from_be_bytes([asc, ascq]))
    }

    /// The additional sense code (ASC).
    pub const fn asc(self) -> u8 {
        self.get().to_be_bytes()[0]
    }

    /// The additional sense code qualifier (ASCQ).
    pub const fn ascq(self) -> u8 {
        self.get().to_be_bytes()[1]
    }
}

open_enum! {
    /// Sense data response codes (byte 0, bits 6:0).
    pub struct SenseFormat(u8) {
        /// Fixed format, current error.
        FIXED_CURRENT = 0x70,
        /// Fixed format, deferred error.
        FIXED_DEFERRED = 0x71,
        /// Descriptor format, current error.
        DESCRIPTOR_CURRENT = 0x72,
        /// Descriptor format, deferred error.
        DESCRIPTOR_DEFERRED = 0x73,
    }
}

/// Sense data byte 0: the response code, and (fixed format) VALID.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct SenseResponse {
    /// Response code: the format.
    #[bits(7)]
    pub format: SenseFormat,
    /// Fixed format: the INFORMATION field is valid. Descriptor format:
    /// reserved.
    pub valid: bool,
}

/// The sense key byte (fixed format byte 2, descriptor format byte 1).
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct SenseKeyByte {
    /// Sense key.
    #[bits(4)]
    pub key: SenseKey,
    /// Fixed format: SDAT_OVFL. Descriptor format: reserved.
    pub sdat_ovfl: bool,
    /// Fixed format: ILI (incorrect length). Descriptor format: reserved.
    pub ili: bool,
    /// Fixed format: EOM (end of medium). Descriptor format: reserved.
    pub eom: bool,
    /// Fixed format: FILEMARK. Descriptor format: reserved.
    pub filemark: bool,
}

wire_layout! {
    /// Fixed-format sense data (18 bytes).
    pub struct FixedSense {
        /// Response code 0x70 / 0x71, VALID.
        pub response: SenseResponse,
        /// Obsolete.
        pub obsolete: u8,
        /// Sense key and flags.
        pub key: SenseKeyByte,
        /// Information.
        pub information: U32,
        /// Additional sense length (10).
        pub additional_len: u8,
        /// Command-specific information.
        pub command_specific: U32,
        /// Additional sense code and qualifier.
        pub additional: AdditionalSense,
        /// Field replaceable unit code.
        pub fru: u8,
        /// Sense-key specific (SKSV in bit 7 of the first byte).
        pub key_specific: [u8; 3],
    }
    size 18
}

wire_layout! {
    /// Descriptor-format sense data header (8 bytes).
    pub struct DescriptorSenseHeader {
        /// Response code 0x72 / 0x73.
        pub response: SenseResponse,
        /// Sense key.
        pub key: SenseKeyByte,
        /// Additional sense code and qualifier.
        pub additional: AdditionalSense,
        /// SDAT_OVFL (bit 7).
        pub flags: u8,
        /// Reserved.
        pub reserved: [u8; 2],
        /// Bytes of descriptors that follow.
        pub additional_len: u8,
    }
    size 8
}

open_enum! {
    /// Sense data descriptor types (SPC-5 table 29).
    pub struct SenseDescriptorType(u8) {
        /// Information.
        INFORMATION = 0x00,
        /// Command-specific information.
        COMMAND_SPECIFIC = 0x01,
        /// Sense key specific.
        SENSE_KEY_SPECIFIC = 0x02,
    }
}

/// Byte 2 of an information descriptor.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct InformationValid {
    /// Reserved.
    #[bits(7)]
    pub reserved: u8,
    /// The INFORMATION field is valid.
    pub valid: bool,
}

wire_layout! {
    /// Information sense-data descriptor (type 0, 12 bytes).
    pub struct InformationDescriptor {
        /// Descriptor type ([`SenseDescriptorType::INFORMATION`]).
        pub kind: SenseDescriptorType,
        /// Additional length (0x0A).
        pub len: u8,
        /// VALID.
        pub valid: InformationValid,
        /// Reserved.
        pub reserved: u8,
        /// Information.
        pub information: U64,
    }
    size 12
}

/// A sense-key specific FIELD POINTER (SPC-5 4.4.2.2) of ILLEGAL REQUEST
/// sense: the byte (and bit) of the CDB or parameter list that holds the
/// field in error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// C/D: the field is in the CDB (else in the parameter list).
    pub in_cdb: bool,
    /// The byte the field starts in (its most significant byte).
    pub byte: u16,
    /// The bit the field starts at (its most significant bit), if named.
    pub bit: Option<u8>,
}

impl FieldPointer {
    /// The field starting at `bit` of CDB byte `byte`.
    pub const fn cdb(byte: u16, bit: u8) -> Self {
        FieldPointer {
            in_cdb: true,
            byte,
            bit: Some(bit),
        }
    }

    /// The three sense-key specific bytes: SKSV, C/D, BPV, BIT POINTER,
    /// FIELD POINTER.
    pub const fn to_bytes(self) -> [u8; 3] {
        let mut b0 = 0x80;
        if self.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = self.bit {
            b0 |= 0x08 | (bit & 7);
        }
        let [hi, lo] = self.byte.to_be_bytes();
        [b0, hi, lo]
    }

    /// Decodes the three sense-key specific bytes of ILLEGAL REQUEST sense;
    /// `None` without SKSV.
    pub const fn from_bytes(b: [u8; 3]) -> Option<Self> {
        if b[0] & 0x80 == 0 {
            return None;
        }
        Some(FieldPointer {
            in_cdb: b[0] & 0x40 != 0,
            byte: u16::from_be_bytes([b[1], b[2]]),
            bit: if b[0] & 0x08 != 0 {
                Some(b[0] & 7)
            } else {
                None
            },
        })
    }
}

wire_layout! {
    /// Sense-key specific sense-data descriptor (type 2, 8 bytes).
    pub struct SenseKeySpecificDescriptor {
        /// Descriptor type ([`SenseDescriptorType::SENSE_KEY_SPECIFIC`]).
        pub kind: SenseDescriptorType,
        /// Additional length (0x06).
        pub len: u8,
        /// Reserved.
        pub reserved: [u8; 2],
        /// Sense-key specific bytes (SKSV in bit 7 of the first).
        pub key_specific: [u8; 3],
        /// Reserved.
        pub reserved2: u8,
    }
    size 8
}

/// Sense data in protocol-neutral form: key, additional sense code, an
/// optional INFORMATION field and, for ILLEGAL REQUEST, an optional field
/// pointer. Encode with [`SenseData::to_fixed`] or
/// [`SenseData::write_descriptor`], decode with [`SenseData::parse`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenseData {
    /// Sense key (four bits on the wire; higher bits are dropped when
    /// encoding).
    pub key: SenseKey,
    /// Additional sense code and qualifier.
    pub additional: AdditionalSense,
    /// INFORMATION field (for MISCOMPARE: offset of the first differing
    /// byte), if valid.
    pub information: Option<u64>,
    /// The field in error (ILLEGAL REQUEST only; encoded as the
    /// sense-key specific bytes with SKSV), if named.
    pub field: Option<FieldPointer>,
}

/// Bytes of descriptor-format sense data that [`SenseData::write_descriptor`]
/// produces at most: the header, an information descriptor and a
/// sense-key specific descriptor.
pub const DESCRIPTOR_SENSE_MAX: usize = 28;

impl SenseData {
    /// Sense with `key` and `additional` and no information.
    pub const fn new(key: SenseKey, additional: AdditionalSense) -> Self {
        SenseData {
            key,
            additional,
            information: None,
            field: None,
        }
    }

    /// ILLEGAL REQUEST with `additional`.
    pub const fn illegal(additional: AdditionalSense) -> Self {
        Self::new(SenseKey::ILLEGAL_REQUEST, additional)
    }

    /// The field pointer in sense-key specific bytes `b`: only ILLEGAL
    /// REQUEST's sense-key specific bytes are a field pointer.
    fn field_of(key: SenseKey, b: [u8; 3]) -> Option<FieldPointer> {
        if key.get() & 0xF == SenseKey::ILLEGAL_REQUEST.get() {
            FieldPointer::from_bytes(b)
        } else {
            None
        }
    }

    /// The sense key byte for this key (four bits).
    fn key_byte(&self) -> SenseKeyByte {
        SenseKeyByte::new().with_key(SenseKey::new(self.key.get() & 0xF))
    }

    /// Fixed-format (0x70) encoding; the INFORMATION field is set (VALID)
    /// only if it fits in 32 bits.
    pub fn to_fixed(&self) -> FixedSense {
        let mut s = FixedSense {
            response: SenseResponse::new().with_format(SenseFormat::FIXED_CURRENT),
            key: self.key_byte(),
            additional_len: 10,
            additional: self.additional,
            ..Default::default()
        };
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            s.response.set_valid(true);
            s.information = info.into();
        }
        if let Some(f) = self.field {
            s.key_specific = f.to_bytes();
        }
        s
    }

    /// Writes descriptor-format (0x72) sense into `buf` (with an
    /// information descriptor if there is information) and returns the
    /// bytes written, truncated to `buf`.
    pub fn write_descriptor(&self, buf: &mut [u8]) -> usize {
        let mut out = [0u8; DESCRIPTOR_SENSE_MAX];
        let mut hdr = DescriptorSenseHeader {
            response: SenseResponse::new().with_format(SenseFormat::DESCRIPTOR_CURRENT),
            key: self.key_byte(),
            additional: self.additional,
            ..Default::default()
        };
        let header_len = size_of::<DescriptorSenseHeader>();
        let mut len = header_len;
        if let Some(info) = self.information {
            let d = InformationDescriptor {
                kind: SenseDescriptorType::INFORMATION,
                len: 0x0A,
                valid: InformationValid::new().with_valid(true),
                reserved: 0,
                information: info.into(),
            };
            let end = len + size_of::<InformationDescriptor>();
            out[len..end].copy_from_slice(d.as_bytes());
            len = end;
        }
        if let Some(f) = self.field {
            let d = SenseKeySpecificDescriptor {
                kind: SenseDescriptorType::SENSE_KEY_SPECIFIC,
                len: 0x06,
                key_specific: f.to_bytes(),
                ..Default::default()
            };
            let end = len + size_of::<SenseKeySpecificDescriptor>();
            out[len..end].copy_from_slice(d.as_bytes());
            len = end;
        }
        hdr.additional_len = (len - header_len) as u8;
        out[..header_len].copy_from_slice(hdr.as_bytes());
        let n = len.min(buf.len());
        buf[..n].copy_from_slice(&out[..n]);
        n
    }

    /// Decodes fixed (0x70/0x71) or descriptor (0x72/0x73) sense; `None`
    /// if `buf` is too short or has another response code.
    pub fn parse(buf: &[u8]) -> Option<SenseData> {
        let response = SenseResponse::from_bits(*buf.first()?);
        match response.format() {
            SenseFormat::FIXED_CURRENT | SenseFormat::FIXED_DEFERRED => {
                let (s, _) = FixedSense::read_from_prefix(buf).ok()?;
                let key = s.key.key();
                Some(SenseData {
                    key,
                    additional: s.additional,
                    information: s.response.valid().then(|| u64::from(s.information.get())),
                    field: Self::field_of(key, s.key_specific),
                })
            }
            SenseFormat::DESCRIPTOR_CURRENT | SenseFormat::DESCRIPTOR_DEFERRED => {
                let (h, rest) = DescriptorSenseHeader::read_from_prefix(buf).ok()?;
                let key = h.key.key();
                let mut sense = SenseData::new(key, h.additional);
                // Walk the descriptors the header counts (and the buffer
                // holds), each [type, additional length, ...].
                let mut rest = rest.get(..usize::from(h.additional_len)).unwrap_or(rest);
                while let [kind, len, ..] = *rest {
                    let end = 2 + usize::from(len);
                    let Some(d) = rest.get(..end) else { break };
                    match SenseDescriptorType::new(kind) {
                        SenseDescriptorType::INFORMATION => {
                            if let Ok((i, _)) = InformationDescriptor::read_from_prefix(d)
                                && i.valid.valid()
                            {
                                sense.information = Some(i.information.get());
                            }
                        }
                        SenseDescriptorType::SENSE_KEY_SPECIFIC => {
                            if let Ok((k, _)) = SenseKeySpecificDescriptor::read_from_prefix(d) {
                                sense.field = Self::field_of(key, k.key_specific);
                            }
                        }
                        _ => {}
                    }
                    rest = &rest[end..];
                }
                Some(sense)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_fixed_and_descriptor() {
        let s = SenseData {
            information: Some(513),
            ..SenseData::new(
                SenseKey::MISCOMPARE,
                AdditionalSense::MISCOMPARE_DURING_VERIFY,
            )
        };
        let f = s.to_fixed();
        assert_eq!(f.as_bytes()[0], 0xF0);
        assert_eq!(f.as_bytes()[2], 0x0E);
        assert_eq!(f.as_bytes()[12..14], [0x1D, 0x00]);
        assert_eq!(SenseData::parse(f.as_bytes()), Some(s));
        let mut buf = [0u8; 32];
        let n = s.write_descriptor(&mut buf);
        assert_eq!(n, 20);
        assert_eq!(buf[..4], [0x72, 0x0E, 0x1D, 0x00]);
        assert_eq!(buf[7], 12);
        assert_eq!(SenseData::parse(&buf[..n]), Some(s));
    }

    /// A field pointer travels as SKSV sense-key specific bytes in both
    /// formats (with the information descriptor before it when there is
    /// one) and decodes back; other keys' sense-key specific bytes are not
    /// a field pointer.
    #[test]
    fn field_pointer_round_trips() {
        let s = SenseData {
            field: Some(FieldPointer::cdb(2, 2)),
            ..SenseData::illegal(AdditionalSense::INVALID_FIELD_IN_CDB)
        };
        let f = s.to_fixed();
        assert_eq!(f.as_bytes()[15..18], [0xCA, 0, 2]);
        assert_eq!(SenseData::parse(f.as_bytes()), Some(s));
        let mut buf = [0u8; DESCRIPTOR_SENSE_MAX];
        let n = s.write_descriptor(&mut buf);
        assert_eq!(n, 16);
        assert_eq!(buf[7], 8);
        assert_eq!(buf[8..16], [2, 6, 0, 0, 0xCA, 0, 2, 0]);
        assert_eq!(SenseData::parse(&buf[..n]), Some(s));
        // With information too: both descriptors.
        let both = SenseData {
            information: Some(7),
            field: Some(FieldPointer {
                in_cdb: false,
                byte: 300,
                bit: None,
            }),
            ..s
        };
        let n = both.write_descriptor(&mut buf);
        assert_eq!(n, DESCRIPTOR_SENSE_MAX);
        assert_eq!(buf[7], 20);
        assert_eq!(SenseData::parse(&buf[..n]), Some(both));
        assert_eq!(both.to_fixed().as_bytes()[15..18], [0x80, 0x01, 0x2C]);
        // NOT READY's sense-key specific bytes are progress, not a field.
        let mut nr = SenseData::new(SenseKey::NOT_READY, AdditionalSense::LUN_NOT_READY).to_fixed();
        nr.key_specific = [0x80, 0x12, 0x34];
        assert_eq!(SenseData::parse(nr.as_bytes()).unwrap().field, None);
        // A descriptor claiming more than the buffer holds stops the walk.
        let mut bad = [0u8; 12];
        bad[..8].copy_from_slice(&[0x72, 0x05, 0x24, 0, 0, 0, 0, 4]);
        bad[8..12].copy_from_slice(&[2, 6, 0, 0]);
        assert_eq!(
            SenseData::parse(&bad),
            Some(SenseData::illegal(AdditionalSense::INVALID_FIELD_IN_CDB))
        );
    }

    #[test]
    fn information_that_does_not_fit_fixed_format() {
        let s = SenseData {
            information: Some(1 << 40),
            ..SenseData::illegal(AdditionalSense::LBA_OUT_OF_RANGE)
        };
        let f = s.to_fixed();
        assert!(!f.response.valid());
        assert_eq!(
            SenseData::parse(f.as_bytes()),
            Some(SenseData::illegal(AdditionalSense::LBA_OUT_OF_RANGE))
        );
        // Descriptor format carries all 64 bits; a short buffer truncates.
        let mut buf = [0u8; 10];
        assert_eq!(s.write_descriptor(&mut buf), 10);
        let mut buf = [0u8; 20];
        s.write_descriptor(&mut buf);
        assert_eq!(SenseData::parse(&buf), Some(s));
    }

    #[test]
    fn unknown_codes_round_trip() {
        // A key and an ASC/ASCQ pair that parastor never names survive
        // encoding and decoding unchanged.
        let s = SenseData::new(SenseKey::new(0xC), AdditionalSense::from_parts(0x80, 0x42));
        assert_eq!(s.additional.asc(), 0x80);
        assert_eq!(s.additional.ascq(), 0x42);
        assert_eq!(s.additional.name(), None);
        assert_eq!(SenseData::parse(s.to_fixed().as_bytes()), Some(s));
        let mut buf = [0u8; 20];
        let n = s.write_descriptor(&mut buf);
        assert_eq!(SenseData::parse(&buf[..n]), Some(s));
        // A key wider than four bits is cut to its field.
        let wide = SenseData::new(SenseKey::new(0x15), AdditionalSense::NO_ADDITIONAL_SENSE);
        assert_eq!(
            SenseData::parse(wide.to_fixed().as_bytes()).unwrap().key,
            SenseKey::ILLEGAL_REQUEST
        );
    }

    #[test]
    fn pairs_split_into_asc_and_ascq() {
        let c = AdditionalSense::CAPACITY_DATA_CHANGED;
        assert_eq!((c.asc(), c.ascq()), (0x2A, 0x09));
        assert_eq!(
            AdditionalSense::from_parts(0x3A, 0x02),
            AdditionalSense::MEDIUM_NOT_PRESENT_TRAY_OPEN
        );
    }

    #[test]
    fn parse_rejects_other_formats_and_short_buffers() {
        assert_eq!(SenseData::parse(&[]), None);
        assert_eq!(SenseData::parse(&[0x70; 17]), None);
        assert_eq!(SenseData::parse(&[0x72; 7]), None);
        assert_eq!(SenseData::parse(&[0x74; 32]), None);
        assert_eq!(SenseData::parse(&[0x00; 32]), None);
        // Descriptor sense without a valid information descriptor.
        let mut d = [0u8; 20];
        d[..4].copy_from_slice(&[0x72, 0x05, 0x24, 0x00]);
        d[8] = 0x00;
        d[10] = 0x00;
        assert_eq!(
            SenseData::parse(&d),
            Some(SenseData::illegal(AdditionalSense::INVALID_FIELD_IN_CDB))
        );
    }
}
