//! parastor's own binary form of the settings model, in the postcard wire
//! format, behind a magic prefix.
//!
//! A blob is [`MAGIC`], one format-version byte ([`FORMAT_VERSION`]), then
//! the [`Settings`] encoded as postcard encodes serde's data model: structs
//! as their fields in declaration order, enums as a varint variant index
//! followed by the variant's fields, `Option` as a `0`/`1` byte then the
//! value, `bool` as one `0`/`1` byte, `u8` as itself, wider integers as
//! LEB128 varints, strings and sequences as a varint length then the items.
//! A [`Guid`] is its 16 bytes in text order (a `[u8; 16]` tuple). The
//! variant indices are the declaration order of the model's enums.
//!
//! The codec is hand-written (no serde, no postcard crate) so the crate
//! keeps no dependency; the format is postcard's, so a serde-based reader
//! with the same shapes would read it.
//!
//! The magic starts with a zero byte — field number 0, never valid
//! protobuf — and is not JSON, so detection is unambiguous. A decoded model
//! is never trusted: it is turned back into the host's schema
//! ([`crate::wire::base_from_model`]) and validated like any other
//! document, so a hostile blob gets the same rules and error codes.
//! Malformed bytes are reported as `JsonFormatError` (OpenHCL's code for a
//! document that does not fit the schema; it has none for postcard).

use crate::error::{Error, ErrorCode, Errors};
use crate::model::{
    Backing, Child, ChildAddress, Controller, DiskParams, FixedSettings, Identity, Nic,
    PhysicalDevice, PhysicalDeviceKind, Protocol, Settings,
};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use parastor_hw::Guid;

/// The prefix of every postcard settings blob.
pub const MAGIC: [u8; 7] = *b"\0PSTSET";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Largest accepted blob, in bytes.
pub const MAX_INPUT_LEN: usize = 1 << 20;

/// Whether `data` starts with the postcard magic.
pub fn is_postcard(data: &[u8]) -> bool {
    data.starts_with(&MAGIC)
}

// ---- encoding ----

struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, v: u64) {
        crate::varint::write(&mut self.0, v);
    }

    fn u32(&mut self, v: u32) {
        self.varint(v.into());
    }

    fn bool(&mut self, v: bool) {
        self.0.push(v.into());
    }

    fn len(&mut self, n: usize) {
        self.varint(n as u64);
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn guid(&mut self, g: &Guid) {
        self.0.extend_from_slice(&g.to_text_bytes());
    }

    fn option<T>(&mut self, v: &Option<T>, f: impl FnOnce(&mut Self, &T)) {
        match v {
            None => self.0.push(0),
            Some(x) => {
                self.0.push(1);
                f(self, x);
            }
        }
    }

    fn device(&mut self, d: &PhysicalDevice) {
        self.u32(match d.kind {
            PhysicalDeviceKind::Nvme => 0,
            PhysicalDeviceKind::Vscsi => 1,
        });
        self.guid(&d.instance_id);
        self.u32(d.sub_device);
    }

    fn child(&mut self, c: &Child) {
        match c.address {
            ChildAddress::ScsiLun(l) => {
                self.u32(0);
                self.0.push(l);
            }
            ChildAddress::Ide { channel, drive } => {
                self.u32(1);
                self.0.push(channel);
                self.0.push(drive);
            }
            ChildAddress::NvmeNsid(n) => {
                self.u32(2);
                self.u32(n);
            }
        }
        let id = &c.identity;
        self.option(&id.device_id, |w, g| w.guid(g));
        for s in [
            &id.vendor_id,
            &id.product_id,
            &id.product_revision_level,
            &id.serial_number,
            &id.model_number,
        ] {
            self.str(s);
        }
        let p = &c.params;
        self.option(&p.fua, |w, b| w.bool(*b));
        self.option(&p.write_cache, |w, b| w.bool(*b));
        self.option(&p.odx, |w, b| w.bool(*b));
        self.bool(p.unmap);
        self.u32(p.medium_rotation_rate);
        self.option(&p.physical_sector_size, |w, v| w.u32(*v));
        self.option(&p.max_transfer_length, |w, v| w.varint(*v));
        self.option(&p.size_override, |w, v| w.varint(*v));
        self.bool(c.is_dvd);
        match &c.backing {
            Backing::Empty => self.u32(0),
            Backing::Single(d) => {
                self.u32(1);
                self.device(d);
            }
            Backing::Striped {
                devices,
                chunk_size_kb,
            } => {
                self.u32(2);
                self.len(devices.len());
                for d in devices {
                    self.device(d);
                }
                self.u32(*chunk_size_kb);
            }
        }
        self.option(&c.ntfs_guid, |w, g| w.guid(g));
    }
}

/// Encodes settings as a postcard blob (magic, version, model).
pub fn encode(s: &Settings) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.0.extend_from_slice(&MAGIC);
    w.0.push(FORMAT_VERSION);
    w.u32(s.fixed.scsi_sub_channels);
    w.u32(s.fixed.io_ring_size);
    w.u32(s.fixed.max_bounce_buffer_pages);
    w.len(s.controllers.len());
    for c in &s.controllers {
        w.guid(&c.instance_id);
        w.u32(match c.protocol {
            Protocol::Scsi => 0,
            Protocol::Ide => 1,
            Protocol::Nvme => 2,
        });
        w.option(&c.io_queue_depth, |w, v| w.u32(*v));
        w.len(c.children.len());
        for ch in &c.children {
            w.child(ch);
        }
    }
    w.len(s.nics.len());
    for n in &s.nics {
        w.guid(&n.instance_id);
        w.option(&n.subordinate_instance_id, |w, g| w.guid(g));
        w.option(&n.max_sub_channels, |w, v| w.u32(*v));
    }
    w.0
}

// ---- decoding ----

type R<T> = Result<T, &'static str>;

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> R<u8> {
        let b = *self.data.get(self.pos).ok_or("unexpected end of data")?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self, max_bytes: u32) -> R<u64> {
        crate::varint::read(self.data, &mut self.pos, max_bytes)
    }

    fn u32(&mut self) -> R<u32> {
        u32::try_from(self.varint(5)?).map_err(|_| "u32 out of range")
    }

    fn u64(&mut self) -> R<u64> {
        self.varint(10)
    }

    fn bool(&mut self) -> R<bool> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("invalid bool"),
        }
    }

    /// A sequence or string length, bounded by the bytes left (every item
    /// takes at least one byte), so a hostile length fails at once.
    fn len(&mut self) -> R<usize> {
        let n = usize::try_from(self.varint(10)?).map_err(|_| "length out of range")?;
        if n > self.data.len().saturating_sub(self.pos) {
            return Err("length longer than the data");
        }
        Ok(n)
    }

    fn str(&mut self) -> R<String> {
        let n = self.len()?;
        let bytes = self
            .data
            .get(self.pos..self.pos + n)
            .ok_or("unexpected end of data")?;
        self.pos += n;
        core::str::from_utf8(bytes)
            .map(String::from)
            .map_err(|_| "string is not UTF-8")
    }

    fn guid(&mut self) -> R<Guid> {
        let mut b = [0u8; 16];
        for x in &mut b {
            *x = self.byte()?;
        }
        Ok(Guid::from_text_bytes(b))
    }

    fn option<T>(&mut self, f: impl FnOnce(&mut Self) -> R<T>) -> R<Option<T>> {
        match self.byte()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            _ => Err("invalid option tag"),
        }
    }

    /// A sequence. Its length is bounded by the bytes left, but an item
    /// takes tens to hundreds of times more memory than the byte it needs
    /// at least on the wire, so the vector grows as items decode instead of
    /// being sized up front from a hostile length.
    fn seq<T>(&mut self, mut f: impl FnMut(&mut Self) -> R<T>) -> R<Vec<T>> {
        let n = self.len()?;
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(f(self)?);
        }
        Ok(out)
    }

    fn device(&mut self) -> R<PhysicalDevice> {
        let kind = match self.u32()? {
            0 => PhysicalDeviceKind::Nvme,
            1 => PhysicalDeviceKind::Vscsi,
            _ => return Err("invalid device kind"),
        };
        Ok(PhysicalDevice {
            kind,
            instance_id: self.guid()?,
            sub_device: self.u32()?,
        })
    }

    fn child(&mut self) -> R<Child> {
        let address = match self.u32()? {
            0 => ChildAddress::ScsiLun(self.byte()?),
            1 => ChildAddress::Ide {
                channel: self.byte()?,
                drive: self.byte()?,
            },
            2 => ChildAddress::NvmeNsid(self.u32()?),
            _ => return Err("invalid child address"),
        };
        let identity = Identity {
            device_id: self.option(Self::guid)?,
            vendor_id: self.str()?,
            product_id: self.str()?,
            product_revision_level: self.str()?,
            serial_number: self.str()?,
            model_number: self.str()?,
        };
        let params = DiskParams {
            fua: self.option(Self::bool)?,
            write_cache: self.option(Self::bool)?,
            odx: self.option(Self::bool)?,
            unmap: self.bool()?,
            medium_rotation_rate: self.u32()?,
            physical_sector_size: self.option(Self::u32)?,
            max_transfer_length: self.option(Self::u64)?,
            size_override: self.option(Self::u64)?,
        };
        let is_dvd = self.bool()?;
        let backing = match self.u32()? {
            0 => Backing::Empty,
            1 => Backing::Single(self.device()?),
            2 => Backing::Striped {
                devices: self.seq(Self::device)?,
                chunk_size_kb: self.u32()?,
            },
            _ => return Err("invalid backing"),
        };
        Ok(Child {
            address,
            identity,
            params,
            is_dvd,
            backing,
            ntfs_guid: self.option(Self::guid)?,
        })
    }

    fn settings(&mut self) -> R<Settings> {
        let fixed = FixedSettings {
            scsi_sub_channels: self.u32()?,
            io_ring_size: self.u32()?,
            max_bounce_buffer_pages: self.u32()?,
        };
        let controllers = self.seq(|r| {
            let instance_id = r.guid()?;
            let protocol = match r.u32()? {
                0 => Protocol::Scsi,
                1 => Protocol::Ide,
                2 => Protocol::Nvme,
                _ => return Err("invalid protocol"),
            };
            Ok(Controller {
                instance_id,
                protocol,
                io_queue_depth: r.option(Self::u32)?,
                children: r.seq(Self::child)?,
            })
        })?;
        let nics = r_nics(self)?;
        Ok(Settings {
            fixed,
            controllers,
            nics,
        })
    }
}

fn r_nics(r: &mut Reader<'_>) -> R<Vec<Nic>> {
    r.seq(|r| {
        Ok(Nic {
            instance_id: r.guid()?,
            subordinate_instance_id: r.option(Reader::guid)?,
            max_sub_channels: r.option(Reader::u32)?,
        })
    })
}

/// Decodes a postcard blob into a model, without validating it (see
/// [`mod@crate::read`], which validates). Errors are `JsonFormatError` with the
/// byte offset.
pub fn decode_unvalidated(data: &[u8]) -> Result<Settings, Errors> {
    let fail = |m: String| Errors(alloc::vec![Error::new(ErrorCode::JsonFormatError, "", m)]);
    if data.len() > MAX_INPUT_LEN {
        return Err(fail(format!(
            "postcard blob is {} bytes, larger than the {MAX_INPUT_LEN}-byte limit",
            data.len()
        )));
    }
    let Some(rest) = data.strip_prefix(&MAGIC) else {
        return Err(fail(String::from("missing the postcard settings magic")));
    };
    let Some((&version, body)) = rest.split_first() else {
        return Err(fail(String::from("missing the postcard format version")));
    };
    if version != FORMAT_VERSION {
        return Err(fail(format!(
            "postcard format version {version} is not supported (expected {FORMAT_VERSION})"
        )));
    }
    let mut r = Reader { data: body, pos: 0 };
    let offset = MAGIC.len() + 1;
    match r.settings() {
        Ok(s) if r.pos == body.len() => Ok(s),
        Ok(_) => Err(fail(format!("trailing bytes at byte {}", offset + r.pos))),
        Err(e) => Err(fail(format!("postcard: {e} at byte {}", offset + r.pos))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Settings {
        crate::read::read(crate::TEST_SAMPLES[0]).unwrap()
    }

    #[test]
    fn postcard_round_trip() {
        let s = sample();
        let blob = encode(&s);
        assert!(is_postcard(&blob));
        assert_eq!(decode_unvalidated(&blob).unwrap(), s);
        assert_eq!(crate::read::read(&blob).unwrap(), s);
        let empty = Settings::default();
        assert_eq!(crate::read::read(&encode(&empty)).unwrap(), empty);
    }

    #[test]
    fn postcard_shapes() {
        let blob = encode(&Settings::default());
        // Magic, version, 0 sub-channels, 256 (varint 0x80 0x02), 2048
        // (0x80 0x10), no controllers, no NICs.
        assert_eq!(
            blob,
            [
                0, b'P', b'S', b'T', b'S', b'E', b'T', 1, 0, 0x80, 0x02, 0x80, 0x10, 0, 0
            ]
        );
    }

    #[test]
    fn postcard_rejects_malformed() {
        let blob = encode(&sample());
        for cut in 0..blob.len() {
            assert!(decode_unvalidated(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = blob.clone();
        extra.push(0);
        assert!(
            decode_unvalidated(&extra).unwrap_err().0[0]
                .message
                .contains("trailing")
        );
        let mut bad_version = blob.clone();
        bad_version[MAGIC.len()] = 2;
        assert!(decode_unvalidated(&bad_version).is_err());
        // A huge sequence length is refused before allocating.
        let mut huge = encode(&Settings::default());
        huge.truncate(huge.len() - 2);
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(decode_unvalidated(&huge).is_err());
    }

    #[test]
    fn postcard_model_is_validated() {
        let mut s = sample();
        s.controllers[1].children[0].address = ChildAddress::ScsiLun(200);
        s.controllers[0].children[0].address = ChildAddress::Ide {
            channel: 3,
            drive: 0,
        };
        let e = crate::read::read(&encode(&s)).unwrap_err();
        assert_eq!(
            e.codes(),
            [
                ErrorCode::StorageIdeChannelExceedsMaxLimits,
                ErrorCode::StorageLunLocationExceedsMaxLimits
            ]
        );
        assert_eq!(
            e.0[1].path,
            "dynamic.storage_controllers[1].luns[0].location"
        );
    }
}
