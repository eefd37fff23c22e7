//! The one GUID type: its wire layout and its text form.
//!
//! VMBus (interface and instance ids), StorVSP, the Microsoft VPD pages
//! and the host's settings all carry GUIDs; they share this type.
//!
//! Wire layout (Windows `GUID`, 16 bytes): the first three groups
//! little-endian, the last eight bytes in text order.
//!
//! Text form accepted by [`Guid::parse`]: the canonical `8-4-4-4-12`
//! hexadecimal groups, any case, optionally wrapped in one pair of braces
//! (`{…}`, the form Windows tools write). Nothing else: no surrounding
//! whitespace, no missing hyphens. [`Display`](fmt::Display) always writes
//! the lowercase canonical form without braces.

use core::fmt;
use core::str::FromStr;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A 128-bit GUID in its Windows/VMBus wire layout.
///
/// Ordering compares the groups as numbers, in text order.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct Guid {
    /// First group (8 hex digits), little-endian on the wire.
    pub data1: U32,
    /// Second group (4 hex digits), little-endian on the wire.
    pub data2: U16,
    /// Third group (4 hex digits), little-endian on the wire.
    pub data3: U16,
    /// Fourth and fifth groups (4 + 12 hex digits), in text order.
    pub data4: [u8; 8],
}

const _: () = assert!(size_of::<Guid>() == 16);

/// Why a string is not a GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseGuidError;

impl fmt::Display for ParseGuidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected a GUID of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
    }
}

impl core::error::Error for ParseGuidError {}

impl Guid {
    /// The all-zero GUID.
    pub const ZERO: Guid = Guid::new(0, 0, 0, [0; 8]);

    /// The GUID written `data1-data2-data3-data4[0..2]-data4[2..8]`.
    pub const fn new(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> Self {
        Self {
            data1: U32::new(data1),
            data2: U16::new(data2),
            data3: U16::new(data3),
            data4,
        }
    }

    /// Whether this is the all-zero GUID.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// Parses the text form (see the module documentation).
    pub fn parse(s: &str) -> Result<Guid, ParseGuidError> {
        let b = match s.as_bytes() {
            [b'{', inner @ .., b'}'] => inner,
            b => b,
        };
        if b.len() != 36 {
            return Err(ParseGuidError);
        }
        let mut bytes = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(ParseGuidError);
                }
                continue;
            }
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(ParseGuidError),
            };
            // 32 hex positions exactly: 36 minus 4 hyphens.
            let byte = bytes.get_mut(nibbles / 2).ok_or(ParseGuidError)?;
            *byte = (*byte << 4) | v;
            nibbles += 1;
        }
        Ok(Guid::from_text_bytes(bytes))
    }

    /// The GUID whose 16 bytes, in text order (each group big-endian), are
    /// `b`.
    pub const fn from_text_bytes(b: [u8; 16]) -> Guid {
        Guid::new(
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_be_bytes([b[4], b[5]]),
            u16::from_be_bytes([b[6], b[7]]),
            [b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]],
        )
    }

    /// The 16 bytes in text order (each group big-endian): the inverse of
    /// [`Guid::from_text_bytes`].
    pub const fn to_text_bytes(&self) -> [u8; 16] {
        let a = self.data1.get().to_be_bytes();
        let b = self.data2.get().to_be_bytes();
        let c = self.data3.get().to_be_bytes();
        let d = self.data4;
        [
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ]
    }
}

impl FromStr for Guid {
    type Err = ParseGuidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Guid::parse(s)
    }
}

impl fmt::Display for Guid {
    /// The canonical lowercase form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.data4;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            self.data1.get(),
            self.data2.get(),
            self.data3.get(),
            d[0],
            d[1],
            d[2],
            d[3],
            d[4],
            d[5],
            d[6],
            d[7]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::format;
    use std::string::ToString;

    const TEXT: &str = "0bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4";

    #[test]
    fn text_round_trip_lowercase() {
        let g = Guid::parse(TEXT).unwrap();
        assert_eq!(g.data1.get(), 0x0bf3_55d5);
        assert_eq!(g.data2.get(), 0x9a55);
        assert_eq!(g.data3.get(), 0x4b8c);
        assert_eq!(g.data4, [0xa5, 0xf2, 0x7d, 0xd1, 0xa7, 0xc0, 0xe3, 0xf4]);
        assert_eq!(g.to_string(), TEXT);
        assert_eq!(format!("{g:?}"), TEXT);
    }

    #[test]
    fn case_insensitive_and_braces() {
        let g = Guid::parse(TEXT).unwrap();
        assert_eq!(Guid::parse(&TEXT.to_uppercase()).unwrap(), g);
        assert_eq!(Guid::parse(&format!("{{{TEXT}}}")).unwrap(), g);
        assert_eq!(TEXT.parse::<Guid>().unwrap(), g);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "{}",
            "0bf355d59a554b8ca5f27dd1a7c0e3f4",
            "0bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f",
            "0bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f44",
            "0bf355d5-9a55-4b8c-a5f27dd1a7c0e3f4-",
            "0bf355d5_9a55-4b8c-a5f2-7dd1a7c0e3f4",
            "0bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3fg",
            " 0bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4",
            "{0bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4",
            "{{0bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4}}",
            "0bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3é",
        ] {
            assert_eq!(Guid::parse(bad), Err(ParseGuidError), "{bad:?}");
        }
    }

    #[test]
    fn zero() {
        let z = Guid::parse("00000000-0000-0000-0000-000000000000").unwrap();
        assert!(z.is_zero());
        assert_eq!(z, Guid::ZERO);
        assert_eq!(Guid::default(), Guid::ZERO);
        assert!(!Guid::parse(TEXT).unwrap().is_zero());
    }

    #[test]
    fn wire_layout_is_mixed_endian() {
        let g = Guid::parse(TEXT).unwrap();
        assert_eq!(
            g.as_bytes(),
            &[
                0xd5, 0x55, 0xf3, 0x0b, 0x55, 0x9a, 0x8c, 0x4b, 0xa5, 0xf2, 0x7d, 0xd1, 0xa7, 0xc0,
                0xe3, 0xf4
            ]
        );
        assert_eq!(Guid::read_from_bytes(g.as_bytes()).unwrap(), g);
    }

    #[test]
    fn text_bytes_round_trip() {
        let g = Guid::parse(TEXT).unwrap();
        let t = g.to_text_bytes();
        assert_eq!(t[..4], [0x0b, 0xf3, 0x55, 0xd5]);
        assert_eq!(Guid::from_text_bytes(t), g);
    }

    #[test]
    fn ordering_is_by_group_value() {
        // data1 decides before data2, by numeric value (not wire bytes).
        let a = Guid::new(0x0000_0100, 0xFFFF, 0, [0; 8]);
        let b = Guid::new(0x0000_0200, 0, 0, [0; 8]);
        assert!(a < b);
        let c = Guid::new(1, 0x00FF, 0, [0; 8]);
        let d = Guid::new(1, 0x0100, 0, [0; 8]);
        assert!(c < d);
    }
}
