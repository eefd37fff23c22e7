//! A GUID as the settings carry it: controller instance ids, VMBus instance
//! ids of backing controllers, device ids, NTFS format GUIDs, NIC ids.
//!
//! Accepted text form: the canonical `8-4-4-4-12` hexadecimal groups, any
//! case, optionally wrapped in one pair of braces (`{…}`, the form Windows
//! tools write). Nothing else: no surrounding whitespace, no missing
//! hyphens. Formatting always produces the lowercase canonical form without
//! braces.

use core::fmt;
use core::str::FromStr;

/// A 128-bit GUID in its mixed-endian field form (as Windows and VMBus
/// define it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Guid {
    /// First group: 8 hex digits.
    pub data1: u32,
    /// Second group: 4 hex digits.
    pub data2: u16,
    /// Third group: 4 hex digits.
    pub data3: u16,
    /// Fourth and fifth groups: 4 + 12 hex digits, in text order.
    pub data4: [u8; 8],
}

/// Why a string is not a GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseGuidError;

impl fmt::Display for ParseGuidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected a GUID of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
    }
}

impl Guid {
    /// The all-zero GUID.
    pub const ZERO: Guid = Guid {
        data1: 0,
        data2: 0,
        data3: 0,
        data4: [0; 8],
    };

    /// Whether this is the all-zero GUID.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// Parses the canonical form (see the module docs).
    pub fn parse(s: &str) -> Result<Guid, ParseGuidError> {
        let b = s.as_bytes();
        let b = match b {
            [b'{', inner @ .., b'}'] => inner,
            _ => b,
        };
        if b.len() != 36 {
            return Err(ParseGuidError);
        }
        let mut nibbles = [0u8; 32];
        let mut n = 0;
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
            *nibbles.get_mut(n).ok_or(ParseGuidError)? = v;
            n += 1;
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(nibbles.chunks_exact(2)) {
            *byte = (pair[0] << 4) | pair[1];
        }
        Ok(Guid::from_text_bytes(bytes))
    }

    /// Builds a GUID from its 16 bytes in text (big-endian per group) order.
    pub const fn from_text_bytes(b: [u8; 16]) -> Guid {
        Guid {
            data1: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            data2: u16::from_be_bytes([b[4], b[5]]),
            data3: u16::from_be_bytes([b[6], b[7]]),
            data4: [b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]],
        }
    }
}

impl FromStr for Guid {
    type Err = ParseGuidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Guid::parse(s)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.data4;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            self.data1, self.data2, self.data3, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    const TEXT: &str = "0bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4";

    #[test]
    fn guid_round_trip_lowercase() {
        let g = Guid::parse(TEXT).unwrap();
        assert_eq!(g.data1, 0x0bf3_55d5);
        assert_eq!(g.data2, 0x9a55);
        assert_eq!(g.data3, 0x4b8c);
        assert_eq!(g.data4, [0xa5, 0xf2, 0x7d, 0xd1, 0xa7, 0xc0, 0xe3, 0xf4]);
        assert_eq!(g.to_string(), TEXT);
    }

    #[test]
    fn guid_case_insensitive_and_braces() {
        let g = Guid::parse(TEXT).unwrap();
        assert_eq!(Guid::parse(&TEXT.to_uppercase()).unwrap(), g);
        assert_eq!(Guid::parse(&alloc::format!("{{{TEXT}}}")).unwrap(), g);
        assert_eq!(TEXT.parse::<Guid>().unwrap(), g);
    }

    #[test]
    fn guid_rejects_malformed() {
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
    fn guid_zero() {
        let z = Guid::parse("00000000-0000-0000-0000-000000000000").unwrap();
        assert!(z.is_zero());
        assert_eq!(z, Guid::ZERO);
        assert!(!Guid::parse(TEXT).unwrap().is_zero());
    }
}
