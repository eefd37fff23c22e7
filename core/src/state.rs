//! Saved state for servicing: the envelope every component's state travels
//! in, and the errors of saving and restoring it.
//!
//! Servicing replaces the running service with a new build while the VM
//! keeps running: the old process saves each component's state, the new
//! one restores it into fresh objects. The saved state crosses from one
//! build to another and through the host, so on restore it is **untrusted
//! input**, exactly like a guest request.
//!
//! # Format
//! Each component's state is one blob:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `PSTS` |
//! | 1 | length *n* of the component name (1..=[`MAX_COMPONENT_LEN`]) |
//! | *n* | component name, ASCII (for example `scsi-disk`) |
//! | 2 | version, little endian (1 and up) |
//! | 4 | payload length, little endian (at most [`MAX_STATE_BYTES`]) |
//! | payload | the state, [postcard]-encoded |
//! | 4 | CRC-32 (IEEE) of every byte before it, little endian |
//!
//! The payload is one plain struct per version (`…V1`, `…V2`): only
//! integers, booleans, byte arrays, `Vec`s and `Option`s, every field
//! public, no invariants of its own. Postcard is not self-describing: a
//! field cannot be added, removed, reordered or retyped compatibly. So
//! **any change to a saved struct is a new version** (a new `…V2` struct
//! beside the old one); a build restores every version it knows, upgrading
//! older ones in code, and refuses a version newer than it knows. Golden
//! blobs of every version are checked in under `tests/state/` and decoded
//! by a test, so an accidental change to a `…V1` struct fails the build
//! instead of servicing.
//!
//! # Decoding
//! [`open`] checks, in this order, each failure its own [`StateError`]:
//! the size cap, the magic, the component name, the version (not 0, not
//! newer than this build's), the exact length (a short blob is
//! [`StateError::Truncated`], extra bytes [`StateError::TrailingBytes`]),
//! the CRC (accidental corruption). Then the payload is decoded
//! ([`StateError::Malformed`] if postcard refuses it or leaves bytes over),
//! and the component validates every value against what the new service
//! has (its settings, its guest memory, its limits) before it builds
//! anything: a value out of range is [`StateError::Invalid`], naming the
//! field and what was expected. A restore is all or nothing; nothing is
//! partially applied. The CRC is no defence against a hostile host (who
//! can compute one); validation is.
//!
//! The model is rust-vmm's `virtio-queue` `state.rs`: saved state is
//! plain, untrusted data, and restoring it is a validating conversion
//! into fresh objects.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first four bytes of every saved-state blob.
pub const MAGIC: [u8; 4] = *b"PSTS";
/// Largest payload a blob may carry, in bytes. Far above any real state
/// (a StorVSP controller with every request slot full is a few hundred
/// KiB); it bounds what a hostile blob can make the restore allocate.
pub const MAX_STATE_BYTES: usize = 16 << 20;
/// Longest component name, in bytes.
pub const MAX_COMPONENT_LEN: usize = 64;

/// Bytes of the envelope around the payload for a component name of
/// `name_len` bytes.
pub const fn envelope_len(name_len: usize) -> usize {
    4 + 1 + name_len + 2 + 4 + 4
}

/// One version of one component's saved state.
///
/// Implemented by the plain `…V1` structs. `COMPONENT` names the
/// component in the envelope (and in every error); `VERSION` is the
/// version this struct encodes.
pub trait Versioned: Serialize + DeserializeOwned {
    /// The component's name, ASCII, at most [`MAX_COMPONENT_LEN`] bytes.
    const COMPONENT: &'static str;
    /// The version this struct is.
    const VERSION: u16;
}

/// Why a saved state was refused on restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateError {
    /// The blob ends before the envelope says it should.
    Truncated {
        /// Bytes the blob needs (so far as can be told).
        needed: usize,
        /// Bytes it has.
        got: usize,
    },
    /// The blob goes on after its checksum.
    TrailingBytes {
        /// Bytes the envelope accounts for.
        expected: usize,
        /// Bytes the blob has.
        got: usize,
    },
    /// The payload length is over [`MAX_STATE_BYTES`].
    TooLarge {
        /// The payload length the envelope claims.
        len: u64,
        /// The cap.
        max: usize,
    },
    /// The blob does not start with [`MAGIC`]: it is not a saved state.
    BadMagic {
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// The component name is empty, too long or not ASCII.
    BadComponentName {
        /// Its length in bytes.
        len: usize,
    },
    /// The blob is another component's state.
    WrongComponent {
        /// The component being restored.
        expected: &'static str,
        /// The component the blob names.
        found: String,
    },
    /// Version 0, or a version newer than this build knows.
    UnknownVersion {
        /// The component.
        component: &'static str,
        /// The blob's version.
        version: u16,
        /// The newest version this build restores.
        newest: u16,
    },
    /// The checksum does not match: the blob was damaged.
    Checksum {
        /// The component.
        component: &'static str,
        /// The checksum in the blob.
        stored: u32,
        /// The checksum of the bytes before it.
        computed: u32,
    },
    /// The payload is not an encoding of the version's struct.
    Malformed {
        /// The component.
        component: &'static str,
        /// The version.
        version: u16,
        /// What the decoder said.
        detail: String,
    },
    /// The payload decoded but a value in it is not acceptable.
    Invalid {
        /// The component.
        component: &'static str,
        /// The field and the problem.
        error: InvalidState,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed, got } => write!(
                f,
                "saved state truncated: {got} bytes, the envelope needs at least {needed}"
            ),
            Self::TrailingBytes { expected, got } => write!(
                f,
                "saved state has {got} bytes, the envelope accounts for {expected}"
            ),
            Self::TooLarge { len, max } => write!(
                f,
                "saved state payload of {len} bytes is over the {max}-byte limit"
            ),
            Self::BadMagic { found } => write!(
                f,
                "not a saved state: starts with {found:02x?}, expected {MAGIC:02x?} (\"PSTS\")"
            ),
            Self::BadComponentName { len } => write!(
                f,
                "saved state component name of {len} bytes: expected 1..={MAX_COMPONENT_LEN} ASCII bytes"
            ),
            Self::WrongComponent { expected, found } => write!(
                f,
                "saved state is for component {found:?}, expected {expected:?}"
            ),
            Self::UnknownVersion {
                component,
                version,
                newest,
            } => write!(
                f,
                "{component} saved state version {version} is unknown: this build restores versions 1..={newest}"
            ),
            Self::Checksum {
                component,
                stored,
                computed,
            } => write!(
                f,
                "{component} saved state is damaged: checksum {stored:#010x}, computed {computed:#010x}"
            ),
            Self::Malformed {
                component,
                version,
                detail,
            } => write!(
                f,
                "{component} saved state version {version} does not decode: {detail}"
            ),
            Self::Invalid { component, error } => {
                write!(f, "{component} saved state refused: {error}")
            }
        }
    }
}

impl core::error::Error for StateError {}

/// A value in a decoded state that restore refuses: which field (a path
/// such as `registrations[3].key`) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidState {
    /// The field, as a path from the component's struct.
    pub field: String,
    /// What is wrong and what was expected.
    pub problem: String,
}

impl InvalidState {
    /// `field` is wrong: `problem`.
    pub fn new(field: impl Into<String>, problem: impl fmt::Display) -> Self {
        InvalidState {
            field: field.into(),
            problem: problem.to_string(),
        }
    }

    /// The same error for a field inside `parent` (`parent.field`).
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.into()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }

    /// The error as a [`StateError`] of `component`.
    pub fn of(self, component: &'static str) -> StateError {
        StateError::Invalid {
            component,
            error: self,
        }
    }
}

impl fmt::Display for InvalidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl core::error::Error for InvalidState {}

/// Refuses `len` items in `field` when over `max`.
pub fn check_count(field: &str, len: usize, max: usize) -> Result<(), InvalidState> {
    if len > max {
        return Err(InvalidState::new(
            field,
            format_args!("{len} entries, at most {max} allowed"),
        ));
    }
    Ok(())
}

/// Why a component's state could not be saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaveError {
    /// The component is not quiescent: something that cannot be saved is
    /// still in progress (a save follows a drain; this is a bug in the
    /// caller's order, or the drain did not finish).
    Busy {
        /// The component.
        component: &'static str,
        /// What is still in progress.
        what: String,
    },
    /// A disk whose contents live in this process (a RAM disk or RAM
    /// layer) would not survive the restart.
    VolatileDisk {
        /// Where the disk is attached (for example a LUN's SCSI path).
        location: String,
        /// The disk's kind ([`crate::DiskIo::kind`]) that cannot survive.
        kind: &'static str,
    },
    /// The state could not be encoded.
    Encode {
        /// The component.
        component: &'static str,
        /// What the encoder said.
        detail: String,
    },
}

impl fmt::Display for SaveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Busy { component, what } => {
                write!(f, "cannot save {component} state: {what}")
            }
            Self::VolatileDisk { location, kind } => write!(
                f,
                "cannot save {location}: its {kind} disk keeps its contents in this process and would not survive the restart"
            ),
            Self::Encode { component, detail } => {
                write!(f, "cannot encode {component} state: {detail}")
            }
        }
    }
}

impl core::error::Error for SaveError {}

/// Encodes `state` in its envelope.
pub fn encode<T: Versioned>(state: &T) -> Result<Vec<u8>, SaveError> {
    let encode_error = |detail: String| SaveError::Encode {
        component: T::COMPONENT,
        detail,
    };
    let name = T::COMPONENT.as_bytes();
    if name.is_empty() || name.len() > MAX_COMPONENT_LEN || !name.is_ascii() {
        return Err(encode_error(format!(
            "component name {:?} is not 1..={MAX_COMPONENT_LEN} ASCII bytes",
            T::COMPONENT
        )));
    }
    let payload = postcard::to_allocvec(state).map_err(|e| encode_error(e.to_string()))?;
    if payload.len() > MAX_STATE_BYTES {
        return Err(encode_error(format!(
            "{} bytes is over the {MAX_STATE_BYTES}-byte limit",
            payload.len()
        )));
    }
    let mut out = Vec::with_capacity(envelope_len(name.len()) + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&T::VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// A blob whose envelope checked out: its version and payload.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    /// The component.
    pub component: &'static str,
    /// The version, 1..=the newest this build knows.
    pub version: u16,
    /// The postcard payload.
    pub payload: &'a [u8],
}

impl Envelope<'_> {
    /// Decodes the payload as `T`, which must be the struct of this
    /// envelope's version; every byte must be used.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, StateError> {
        let malformed = |detail: String| StateError::Malformed {
            component: self.component,
            version: self.version,
            detail,
        };
        let (value, rest) =
            postcard::take_from_bytes::<T>(self.payload).map_err(|e| malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed(format!(
                "{} bytes left over after the state",
                rest.len()
            )));
        }
        Ok(value)
    }
}

/// Reads `blob` in order, failing with `Truncated` at the first field that
/// runs past its end.
struct Cursor<'a> {
    blob: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        let end = self.at + n;
        let bytes = self.blob.get(self.at..end).ok_or(StateError::Truncated {
            needed: end,
            got: self.blob.len(),
        })?;
        self.at = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}

/// Checks `blob`'s envelope for `component`, whose newest version this
/// build knows is `newest`; see the module docs for the order of checks.
pub fn open<'a>(
    blob: &'a [u8],
    component: &'static str,
    newest: u16,
) -> Result<Envelope<'a>, StateError> {
    // A bound first, so nothing below is sized by an absurd blob.
    let cap = envelope_len(MAX_COMPONENT_LEN) + MAX_STATE_BYTES;
    if blob.len() > cap {
        return Err(StateError::TooLarge {
            len: blob.len() as u64,
            max: MAX_STATE_BYTES,
        });
    }
    let mut c = Cursor { blob, at: 0 };
    let magic = c.array::<4>()?;
    if magic != MAGIC {
        return Err(StateError::BadMagic { found: magic });
    }
    let [name_len] = c.array::<1>()?;
    let name_len = usize::from(name_len);
    if name_len == 0 || name_len > MAX_COMPONENT_LEN {
        return Err(StateError::BadComponentName { len: name_len });
    }
    let name = c.take(name_len)?;
    if name != component.as_bytes() {
        return Err(StateError::WrongComponent {
            expected: component,
            found: String::from_utf8_lossy(name).into_owned(),
        });
    }
    let version = u16::from_le_bytes(c.array()?);
    if version == 0 || version > newest {
        return Err(StateError::UnknownVersion {
            component,
            version,
            newest,
        });
    }
    let payload_len = u32::from_le_bytes(c.array()?);
    if payload_len as usize > MAX_STATE_BYTES {
        return Err(StateError::TooLarge {
            len: payload_len.into(),
            max: MAX_STATE_BYTES,
        });
    }
    let total = envelope_len(name_len) + payload_len as usize;
    if blob.len() < total {
        return Err(StateError::Truncated {
            needed: total,
            got: blob.len(),
        });
    }
    if blob.len() > total {
        return Err(StateError::TrailingBytes {
            expected: total,
            got: blob.len(),
        });
    }
    let payload = c.take(payload_len as usize)?;
    let covered = c.at;
    let stored = u32::from_le_bytes(c.array()?);
    let computed = crc32fast::hash(&blob[..covered]);
    if stored != computed {
        return Err(StateError::Checksum {
            component,
            stored,
            computed,
        });
    }
    Ok(Envelope {
        component,
        version,
        payload,
    })
}

/// Opens and decodes a blob of a component whose only (and newest)
/// version is `T`.
pub fn decode<T: Versioned>(blob: &[u8]) -> Result<T, StateError> {
    open(blob, T::COMPONENT, T::VERSION)?.decode()
}

/// Decodes a blob of `T` and validates it with `restore` (which builds
/// the restored object, or says which field is wrong).
pub fn restore<T: Versioned, R>(
    blob: &[u8],
    restore: impl FnOnce(T) -> Result<R, InvalidState>,
) -> Result<R, StateError> {
    restore(decode(blob)?).map_err(|e| e.of(T::COMPONENT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct DemoV1 {
        count: u32,
        names: Vec<u8>,
        flag: Option<u64>,
    }

    impl Versioned for DemoV1 {
        const COMPONENT: &'static str = "demo";
        const VERSION: u16 = 1;
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct OtherV1 {
        count: u32,
    }

    impl Versioned for OtherV1 {
        const COMPONENT: &'static str = "other";
        const VERSION: u16 = 1;
    }

    fn demo() -> DemoV1 {
        DemoV1 {
            count: 7,
            names: vec![1, 2, 3],
            flag: Some(0x1234_5678_9abc),
        }
    }

    fn blob() -> Vec<u8> {
        encode(&demo()).unwrap()
    }

    /// Recomputes the CRC after a deliberate change.
    fn reseal(b: &mut [u8]) {
        let n = b.len() - 4;
        let crc = crc32fast::hash(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn round_trip() {
        let b = blob();
        assert_eq!(&b[..4], b"PSTS");
        assert_eq!(decode::<DemoV1>(&b).unwrap(), demo());
        let env = open(&b, "demo", 1).unwrap();
        assert_eq!(env.version, 1);
        assert_eq!(b.len(), envelope_len(4) + env.payload.len());
    }

    #[test]
    fn every_prefix_is_truncated() {
        let b = blob();
        for n in 0..b.len() {
            match decode::<DemoV1>(&b[..n]) {
                Err(StateError::Truncated { got, needed }) => {
                    assert_eq!(got, n);
                    assert!(needed > n, "prefix {n}: needed {needed}");
                }
                other => panic!("prefix of {n} bytes: {other:?}"),
            }
        }
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let b = blob();
        let payload_at = 4 + 1 + 4 + 2 + 4;
        for byte in 0..b.len() {
            for bit in 0..8 {
                let mut m = b.clone();
                m[byte] ^= 1 << bit;
                let e = decode::<DemoV1>(&m).unwrap_err();
                // Header fields are judged before the checksum; payload and
                // checksum bits are caught by it.
                if byte >= payload_at {
                    assert!(
                        matches!(e, StateError::Checksum { .. }),
                        "byte {byte} bit {bit}: {e:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn header_errors_name_what_and_where() {
        let b = blob();
        let mut m = b.clone();
        m[0] = b'X';
        assert_eq!(
            decode::<DemoV1>(&m),
            Err(StateError::BadMagic { found: *b"XSTS" })
        );

        let other = encode(&OtherV1 { count: 1 }).unwrap();
        let e = decode::<DemoV1>(&other).unwrap_err();
        assert_eq!(
            e,
            StateError::WrongComponent {
                expected: "demo",
                found: "other".into()
            }
        );
        assert!(e.to_string().contains("\"other\""), "{e}");

        // A newer version than this build knows.
        let mut m = b.clone();
        m[9] = 2;
        reseal(&mut m);
        let e = decode::<DemoV1>(&m).unwrap_err();
        assert_eq!(
            e,
            StateError::UnknownVersion {
                component: "demo",
                version: 2,
                newest: 1
            }
        );
        assert!(e.to_string().contains("version 2"), "{e}");
        m[9] = 0;
        reseal(&mut m);
        assert!(matches!(
            decode::<DemoV1>(&m),
            Err(StateError::UnknownVersion { version: 0, .. })
        ));

        // Over-long: bytes after the checksum.
        let mut m = b.clone();
        m.push(0);
        assert_eq!(
            decode::<DemoV1>(&m),
            Err(StateError::TrailingBytes {
                expected: b.len(),
                got: b.len() + 1
            })
        );

        // A payload length over the cap.
        let mut m = b.clone();
        m[11..15].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode::<DemoV1>(&m),
            Err(StateError::TooLarge { len, .. }) if len == u64::from(u32::MAX)
        ));

        // An empty component name.
        let mut m = b.clone();
        m[4] = 0;
        assert_eq!(
            decode::<DemoV1>(&m),
            Err(StateError::BadComponentName { len: 0 })
        );
    }

    #[test]
    fn payload_that_does_not_decode_is_malformed() {
        // A valid envelope around a payload one byte short, and one with a
        // byte left over.
        let good = postcard::to_allocvec(&demo()).unwrap();
        for payload in [
            &good[..good.len() - 1],
            &[good.as_slice(), &[0]].concat()[..],
        ] {
            let mut m = Vec::new();
            m.extend_from_slice(b"PSTS");
            m.push(4);
            m.extend_from_slice(b"demo");
            m.extend_from_slice(&1u16.to_le_bytes());
            m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            m.extend_from_slice(payload);
            m.extend_from_slice(&[0; 4]);
            reseal(&mut m);
            assert!(
                matches!(
                    decode::<DemoV1>(&m),
                    Err(StateError::Malformed {
                        component: "demo",
                        version: 1,
                        ..
                    })
                ),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn restore_errors_carry_the_component_and_field() {
        let e = restore::<DemoV1, ()>(&blob(), |s| {
            Err(InvalidState::new("count", format_args!("{} is odd", s.count)).within("outer"))
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "demo saved state refused: outer.count: 7 is odd"
        );
        let e = InvalidState::new("[3].key", "zero").within("registrations");
        assert_eq!(e.field, "registrations[3].key");
        assert!(check_count("x", 3, 2).is_err());
        assert!(check_count("x", 2, 2).is_ok());
    }
}
