//! The protobuf form of the host's settings (package `underhill.settings`)
//! decoded into the schema types of [`crate::wire`].
//!
//! Hand-written over the protobuf wire format rather than generated with
//! prost: the schema is small and fixed, the decoder has no dependency, and
//! every error names the path of the field at fault.
//!
//! Semantics follow prost, which OpenHCL uses:
//!
//! - unknown field numbers (including the reserved ones) are skipped,
//!   groups included;
//! - a scalar field given twice keeps the last value; a message field
//!   given twice is merged; repeated fields append;
//! - `uint32` / `int32` / enum values are varints truncated to 32 bits;
//!   `bool` is any non-zero varint; enum numbers are kept even when
//!   unknown (validation rejects them);
//! - strings must be UTF-8.
//!
//! Errors are `ProtobufFormatError`: a truncated varint or field, a varint
//! above `u64::MAX`, a wrong wire type for a known field, an unmatched
//! group, field number 0, or invalid UTF-8. Nesting is bounded by the
//! schema (messages are decoded by type, not recursively by tag), and
//! skipped groups nest at most [`MAX_GROUP_DEPTH`] deep. A document is at
//! most [`MAX_INPUT_LEN`] bytes and holds at most [`MAX_MESSAGES`]
//! messages, which bounds the decoded size (an empty `Lun` costs 2 bytes
//! on the wire but a few hundred in memory).

use crate::error::{Collector, Error, ErrorCode, Errors};
use crate::wire;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Largest accepted message, in bytes: the same limit as a JSON document
/// ([`crate::json::MAX_INPUT_LEN`]), whose content protobuf writes in about
/// a third of the bytes. Without it, namespace chunks (each decoded with its
/// own [`MAX_MESSAGES`]) would let decoded size grow with the blob.
pub const MAX_INPUT_LEN: usize = 1 << 20;
/// Deepest nesting of skipped (unknown) groups.
pub const MAX_GROUP_DEPTH: usize = 64;
/// Most messages (top level and nested) in one document.
pub const MAX_MESSAGES: usize = 1 << 16;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// A field's value as read off the wire.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, &'static str> {
        crate::varint::read(self.data, &mut self.pos, 10)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], &'static str> {
        let n = usize::try_from(n).map_err(|_| "length out of range")?;
        let end = self.pos.checked_add(n).ok_or("length out of range")?;
        let s = self.data.get(self.pos..end).ok_or("truncated field")?;
        self.pos = end;
        Ok(s)
    }

    /// Reads the next field: (number, wire type, value).
    fn field(&mut self) -> Result<(u64, u8, Raw<'a>), &'static str> {
        let key = self.varint()?;
        let number = key >> 3;
        let wt = (key & 7) as u8;
        if number == 0 {
            return Err("field number 0");
        }
        let raw = match wt {
            VARINT => Raw::Varint(self.varint()?),
            FIXED64 => {
                self.take(8)?;
                Raw::Other
            }
            LEN => {
                let n = self.varint()?;
                Raw::Bytes(self.take(n)?)
            }
            FIXED32 => {
                self.take(4)?;
                Raw::Other
            }
            START_GROUP => {
                self.skip_group(number)?;
                Raw::Other
            }
            END_GROUP => return Err("unmatched end of group"),
            _ => return Err("invalid wire type"),
        };
        Ok((number, wt, raw))
    }

    /// Skips a group's contents up to its matching end.
    fn skip_group(&mut self, number: u64) -> Result<(), &'static str> {
        let mut open: Vec<u64> = alloc::vec![number];
        while let Some(&top) = open.last() {
            let key = self.varint()?;
            let (n, wt) = (key >> 3, (key & 7) as u8);
            match wt {
                VARINT => {
                    self.varint()?;
                }
                FIXED64 => {
                    self.take(8)?;
                }
                LEN => {
                    let len = self.varint()?;
                    self.take(len)?;
                }
                FIXED32 => {
                    self.take(4)?;
                }
                START_GROUP => {
                    if open.len() >= MAX_GROUP_DEPTH {
                        return Err("groups nested too deep");
                    }
                    open.push(n);
                }
                END_GROUP if n == top => {
                    open.pop();
                }
                _ => return Err("malformed group"),
            }
        }
        Ok(())
    }
}

/// Walks messages, collecting every error.
struct Decoder {
    errors: Collector,
    messages: usize,
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        String::from(name)
    } else {
        format!("{parent}.{name}")
    }
}

impl Decoder {
    fn fail(&mut self, path: &str, message: &str) {
        self.errors
            .push(Error::new(ErrorCode::ProtobufFormatError, path, message));
    }

    /// Reads a message's fields, calling `f(number, value, path_of(name))`
    /// for each known field; `names[i]` is the name of field number `i + 1`
    /// (empty for a number the message does not use), and `len_fields`
    /// lists the numbers whose wire type is length-delimited.
    fn message(
        &mut self,
        data: &[u8],
        path: &str,
        names: &[&str],
        len_fields: &[u64],
        f: impl FnMut(&mut Self, u64, Raw<'_>, String),
    ) {
        self.message_ext(data, path, names, &[], len_fields, f);
    }

    /// [`Decoder::message`] with `extra` (number, name) pairs for field
    /// numbers past `names`.
    fn message_ext(
        &mut self,
        data: &[u8],
        path: &str,
        names: &[&str],
        extra: &[(u64, &str)],
        len_fields: &[u64],
        mut f: impl FnMut(&mut Self, u64, Raw<'_>, String),
    ) {
        self.messages += 1;
        if self.messages > MAX_MESSAGES {
            if self.messages == MAX_MESSAGES + 1 {
                self.fail(path, &format!("more than {MAX_MESSAGES} messages"));
            }
            return;
        }
        let mut r = Reader { data, pos: 0 };
        while r.pos < data.len() {
            let (number, wt, raw) = match r.field() {
                Ok(x) => x,
                Err(e) => {
                    self.fail(path, &format!("{e} at byte {}", r.pos));
                    return;
                }
            };
            let name = usize::try_from(number)
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(|i| names.get(i))
                .copied()
                .or_else(|| extra.iter().find(|(x, _)| *x == number).map(|(_, n)| *n))
                .unwrap_or_default();
            if name.is_empty() {
                continue;
            }
            let fp = join(path, name);
            let want = if len_fields.contains(&number) {
                LEN
            } else {
                VARINT
            };
            if wt != want {
                self.fail(
                    &fp,
                    &format!("expected wire type {want} for `{name}`, found {wt}"),
                );
                continue;
            }
            f(self, number, raw, fp);
        }
    }

    fn u32(raw: Raw<'_>) -> u32 {
        match raw {
            Raw::Varint(v) => v as u32,
            _ => 0,
        }
    }

    fn u64(raw: Raw<'_>) -> u64 {
        match raw {
            Raw::Varint(v) => v,
            _ => 0,
        }
    }

    fn i32(raw: Raw<'_>) -> i32 {
        Self::u32(raw) as i32
    }

    fn bool(raw: Raw<'_>) -> bool {
        matches!(raw, Raw::Varint(v) if v != 0)
    }

    fn bytes(raw: Raw<'_>) -> &[u8] {
        match raw {
            Raw::Bytes(b) => b,
            _ => &[],
        }
    }

    fn string(&mut self, raw: Raw<'_>, path: &str) -> String {
        match core::str::from_utf8(Self::bytes(raw)) {
            Ok(s) => String::from(s),
            Err(_) => {
                self.fail(path, "string is not UTF-8");
                String::new()
            }
        }
    }

    fn settings(&mut self, data: &[u8], path: &str, out: &mut wire::Vtl2Settings) {
        self.message(
            data,
            path,
            &["namespace_settings", "version", "fixed", "dynamic"],
            &[1, 3, 4],
            |d, n, raw, fp| match n {
                1 => {
                    let mut c = wire::Chunk::default();
                    d.chunk(
                        Self::bytes(raw),
                        &format!("{fp}[{}]", out.namespace_settings.len()),
                        &mut c,
                    );
                    out.namespace_settings.push(c);
                }
                2 => out.version = Self::i32(raw),
                3 => d.fixed(Self::bytes(raw), &fp, out.fixed.get_or_insert_default()),
                _ => d.dynamic(Self::bytes(raw), &fp, out.dynamic.get_or_insert_default()),
            },
        );
    }

    fn chunk(&mut self, data: &[u8], path: &str, out: &mut wire::Chunk) {
        self.message(
            data,
            path,
            &["namespace", "settings"],
            &[1, 2],
            |d, n, raw, fp| match n {
                1 => out.namespace = d.string(raw, &fp),
                _ => out.settings = Self::bytes(raw).to_vec(),
            },
        );
    }

    fn base(&mut self, data: &[u8], path: &str, out: &mut wire::Base) {
        self.message(
            data,
            path,
            &["version", "fixed", "dynamic"],
            &[2, 3],
            |d, n, raw, fp| match n {
                1 => out.version = Self::i32(raw),
                2 => d.fixed(Self::bytes(raw), &fp, out.fixed.get_or_insert_default()),
                _ => d.dynamic(Self::bytes(raw), &fp, out.dynamic.get_or_insert_default()),
            },
        );
    }

    fn fixed(&mut self, data: &[u8], path: &str, out: &mut wire::Fixed) {
        self.message(
            data,
            path,
            &[
                "scsi_sub_channels",
                "io_ring_size",
                "max_bounce_buffer_pages",
            ],
            &[],
            |_, n, raw, _| {
                let v = Some(Self::u32(raw));
                match n {
                    1 => out.scsi_sub_channels = v,
                    2 => out.io_ring_size = v,
                    _ => out.max_bounce_buffer_pages = v,
                }
            },
        );
    }

    fn dynamic(&mut self, data: &[u8], path: &str, out: &mut wire::Dynamic) {
        self.message(
            data,
            path,
            &["storage_controllers", "nic_devices"],
            &[1, 2],
            |d, n, raw, fp| {
                if n == 1 {
                    let mut c = wire::StorageController::default();
                    let p = format!("{fp}[{}]", out.storage_controllers.len());
                    d.controller(Self::bytes(raw), &p, &mut c);
                    out.storage_controllers.push(c);
                } else {
                    let mut nic = wire::NicDeviceLegacy::default();
                    let p = format!("{fp}[{}]", out.nic_devices.len());
                    d.message(
                        Self::bytes(raw),
                        &p,
                        &["instance_id", "subordinate_instance_id", "max_sub_channels"],
                        &[1, 2],
                        |d, n, raw, fp| match n {
                            1 => nic.instance_id = d.string(raw, &fp),
                            2 => nic.subordinate_instance_id = Some(d.string(raw, &fp)),
                            _ => nic.max_sub_channels = Some(Self::u32(raw)),
                        },
                    );
                    out.nic_devices.push(nic);
                }
            },
        );
    }

    fn network_device(&mut self, data: &[u8], path: &str, out: &mut wire::NetworkDevice) {
        self.message(data, path, &["nic_devices"], &[1], |d, _, raw, fp| {
            let mut nic = wire::NicDevice::default();
            let p = format!("{fp}[{}]", out.nic_devices.len());
            d.message(
                Self::bytes(raw),
                &p,
                &["instance_id", "max_sub_channels"],
                &[1],
                |d, n, raw, fp| match n {
                    1 => nic.instance_id = d.string(raw, &fp),
                    _ => nic.max_sub_channels = Some(Self::u32(raw)),
                },
            );
            out.nic_devices.push(nic);
        });
    }

    fn network_acceleration(
        &mut self,
        data: &[u8],
        path: &str,
        out: &mut wire::NetworkAcceleration,
    ) {
        self.message(data, path, &["nic_acceleration"], &[1], |d, _, raw, fp| {
            let mut a = wire::NicAcceleration::default();
            let p = format!("{fp}[{}]", out.nic_acceleration.len());
            d.message(
                Self::bytes(raw),
                &p,
                &["instance_id", "subordinate_instance_id"],
                &[1, 2],
                |d, n, raw, fp| match n {
                    1 => a.instance_id = d.string(raw, &fp),
                    _ => a.subordinate_instance_id = d.string(raw, &fp),
                },
            );
            out.nic_acceleration.push(a);
        });
    }

    fn controller(&mut self, data: &[u8], path: &str, out: &mut wire::StorageController) {
        self.message(
            data,
            path,
            &["instance_id", "protocol", "luns", "io_queue_depth"],
            &[1, 3],
            |d, n, raw, fp| match n {
                1 => out.instance_id = d.string(raw, &fp),
                2 => out.protocol = Self::i32(raw),
                3 => {
                    let mut lun = wire::Lun::default();
                    d.lun(
                        Self::bytes(raw),
                        &format!("{fp}[{}]", out.luns.len()),
                        &mut lun,
                    );
                    out.luns.push(lun);
                }
                _ => out.io_queue_depth = Some(Self::u32(raw)),
            },
        );
    }

    fn lun(&mut self, data: &[u8], path: &str, out: &mut wire::Lun) {
        // Field numbers 1..=20, then the deprecated 1001..=1004.
        const NAMES: [&str; 20] = [
            "channel",
            "location",
            "device_id",
            "vendor_id",
            "product_id",
            "product_revision_level",
            "serial_number",
            "model_number",
            "medium_rotation_rate",
            "physical_sector_size",
            "fua",
            "write_cache",
            "odx",
            "disable_thin_provisioning",
            "max_transfer_length",
            "physical_devices",
            "is_dvd",
            "chunk_size_in_kb",
            "scsi_disk_size_in_bytes",
            "ntfs_guid",
        ];
        const DEPRECATED: [(u64, &str); 4] = [
            (1001, "total_logic_size_in_kb"),
            (1002, "device_type"),
            (1003, "device_path"),
            (1004, "sub_device_path"),
        ];
        self.message_ext(
            data,
            path,
            &NAMES,
            &DEPRECATED,
            &[3, 4, 5, 6, 7, 8, 16, 20, 1003],
            |d, n, raw, fp| match n {
                1 => out.channel = Some(Self::u32(raw)),
                2 => out.location = Self::u32(raw),
                3 => out.device_id = d.string(raw, &fp),
                4 => out.vendor_id = d.string(raw, &fp),
                5 => out.product_id = d.string(raw, &fp),
                6 => out.product_revision_level = d.string(raw, &fp),
                7 => out.serial_number = d.string(raw, &fp),
                8 => out.model_number = d.string(raw, &fp),
                9 => out.medium_rotation_rate = Some(Self::u32(raw)),
                10 => out.physical_sector_size = Some(Self::u32(raw)),
                11 => out.fua = Some(Self::bool(raw)),
                12 => out.write_cache = Some(Self::bool(raw)),
                13 => out.odx = Some(Self::bool(raw)),
                14 => out.disable_thin_provisioning = Some(Self::bool(raw)),
                15 => out.max_transfer_length = Some(Self::u64(raw)),
                16 => d.physical_devices(
                    Self::bytes(raw),
                    &fp,
                    out.physical_devices.get_or_insert_default(),
                ),
                17 => out.is_dvd = Self::bool(raw),
                18 => out.chunk_size_in_kb = Self::u32(raw),
                19 => out.scsi_disk_size_in_bytes = Some(Self::u64(raw)),
                20 => out.ntfs_guid = Some(d.string(raw, &fp)),
                1001 => out.total_logic_size_in_kb = Self::u32(raw),
                1002 => out.device_type = Some(Self::i32(raw)),
                1003 => out.device_path = Some(d.string(raw, &fp)),
                _ => out.sub_device_path = Some(Self::u32(raw)),
            },
        );
    }

    fn physical_devices(&mut self, data: &[u8], path: &str, out: &mut wire::PhysicalDevices) {
        self.message(
            data,
            path,
            &["type", "device", "devices"],
            &[2, 3],
            |d, n, raw, fp| match n {
                1 => out.r#type = Self::i32(raw),
                2 => d.physical_device(Self::bytes(raw), &fp, out.device.get_or_insert_default()),
                _ => {
                    let mut dev = wire::PhysicalDevice::default();
                    d.physical_device(
                        Self::bytes(raw),
                        &format!("{fp}[{}]", out.devices.len()),
                        &mut dev,
                    );
                    out.devices.push(dev);
                }
            },
        );
    }

    fn physical_device(&mut self, data: &[u8], path: &str, out: &mut wire::PhysicalDevice) {
        self.message(
            data,
            path,
            &["device_type", "device_path", "sub_device_path"],
            &[2],
            |d, n, raw, fp| match n {
                1 => out.device_type = Self::i32(raw),
                2 => out.device_path = d.string(raw, &fp),
                _ => out.sub_device_path = Self::u32(raw),
            },
        );
    }
}

fn run<T: Default>(
    data: &[u8],
    path: &str,
    decode: impl FnOnce(&mut Decoder, &[u8], &str, &mut T),
) -> Result<T, Errors> {
    if data.len() > MAX_INPUT_LEN {
        return Err(Errors(alloc::vec![Error::new(
            ErrorCode::ProtobufFormatError,
            path,
            format!(
                "message is {} bytes, larger than the {MAX_INPUT_LEN}-byte limit",
                data.len()
            ),
        )]));
    }
    let mut d = Decoder {
        errors: Collector::default(),
        messages: 0,
    };
    let mut out = T::default();
    decode(&mut d, data, path, &mut out);
    d.errors.result(out)
}

/// Decodes a top-level `Vtl2Settings` protobuf message. Chunk settings stay
/// raw bytes.
pub fn decode_settings(data: &[u8]) -> Result<wire::Vtl2Settings, Errors> {
    run(data, "", Decoder::settings)
}

/// Decodes a `Base` chunk's protobuf message; errors' paths start with `path`.
pub fn decode_base(data: &[u8], path: &str) -> Result<wire::Base, Errors> {
    run(data, path, Decoder::base)
}

/// Decodes a `NetworkDevice` chunk's protobuf message.
pub fn decode_network_device(data: &[u8], path: &str) -> Result<wire::NetworkDevice, Errors> {
    run(data, path, Decoder::network_device)
}

/// Decodes a `NetworkAcceleration` chunk's protobuf message.
pub fn decode_network_acceleration(
    data: &[u8],
    path: &str,
) -> Result<wire::NetworkAcceleration, Errors> {
    run(data, path, Decoder::network_acceleration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;
    use alloc::vec;

    use crate::varint::write as varint;

    fn int(n: u64, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(&mut out, n << 3);
        varint(&mut out, v);
        out
    }

    fn len(n: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(&mut out, (n << 3) | 2);
        varint(&mut out, body.len() as u64);
        out.extend_from_slice(body);
        out
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    const C0: &str = "0bf355d5-9a55-4b8c-a5f2-7dd1a7c0e3f4";
    const DEV: &str = "f8b3781a-1e82-4818-a1c3-63d806ec15bb";

    fn device(ty: u64, sub: u64) -> Vec<u8> {
        cat(&[int(1, ty), len(2, DEV.as_bytes()), int(3, sub)])
    }

    #[test]
    fn protobuf_matches_json() {
        let lun0 = cat(&[
            int(2, 3),
            len(3, C0.as_bytes()),
            len(4, b"Msft"),
            int(9, 7200),
            int(11, 1),
            int(14, 0),
            int(15, u64::MAX),
            len(16, &cat(&[int(1, 1), len(2, &device(1, 5))])),
            int(18, 128),
            len(20, C0.as_bytes()),
        ]);
        let lun1 = cat(&[
            int(1, 0),
            int(2, 1),
            int(1002, 2),
            len(1003, DEV.as_bytes()),
            int(1004, 4),
        ]);
        let lun2 = cat(&[
            int(2, 2),
            len(
                16,
                &cat(&[int(1, 2), len(3, &device(1, 1)), len(3, &device(2, 2))]),
            ),
            int(17, 1),
        ]);
        let controller = cat(&[
            len(1, C0.as_bytes()),
            int(2, 1),
            len(3, &lun0),
            len(3, &lun1),
            len(3, &lun2),
            int(4, 64),
        ]);
        let doc = cat(&[
            int(2, 1),
            len(3, &cat(&[int(1, 31), int(2, 128), int(3, 4096)])),
            len(
                4,
                &cat(&[
                    len(1, &controller),
                    len(
                        2,
                        &cat(&[len(1, C0.as_bytes()), len(2, DEV.as_bytes()), int(3, 2)]),
                    ),
                ]),
            ),
        ]);
        let from_pb = decode_settings(&doc).unwrap();
        let json_doc = alloc::format!(
            r#"{{"version":"V1","fixed":{{"scsi_sub_channels":31,"io_ring_size":128,
            "max_bounce_buffer_pages":4096}},"dynamic":{{"storage_controllers":[{{
            "instance_id":"{C0}","protocol":"SCSI","io_queue_depth":64,"luns":[
            {{"location":3,"device_id":"{C0}","vendor_id":"Msft","medium_rotation_rate":7200,
              "fua":true,"disable_thin_provisioning":false,"max_transfer_length":"18446744073709551615",
              "physical_devices":{{"type":"SINGLE","device":{{"device_type":"NVME",
              "device_path":"{DEV}","sub_device_path":5}}}},"chunk_size_in_kb":128,"ntfs_guid":"{C0}"}},
            {{"channel":0,"location":1,"device_type":"VSCSI","device_path":"{DEV}","sub_device_path":4}},
            {{"location":2,"is_dvd":true,"physical_devices":{{"type":"STRIPED","devices":[
              {{"device_type":1,"device_path":"{DEV}","sub_device_path":1}},
              {{"device_type":2,"device_path":"{DEV}","sub_device_path":2}}]}}}}]}}],
            "nic_devices":[{{"instance_id":"{C0}","subordinate_instance_id":"{DEV}","max_sub_channels":2}}]}}}}"#
        );
        let from_json = json::decode_settings(json_doc.as_bytes()).unwrap();
        assert_eq!(from_pb, from_json);
    }

    #[test]
    fn protobuf_skips_unknown_and_reserved_fields() {
        let doc = cat(&[
            int(9, 1),
            len(10, b"xyz"),
            vec![(12 << 3) | 5, 1, 2, 3, 4],
            vec![(13 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8],
            // Group 32 holding a nested group 123 and a varint.
            vec![0x83, 0x02, 0xdb, 0x07, 0x08, 0x01, 0xdc, 0x07, 0x84, 0x02],
            int(2, 1),
        ]);
        let s = decode_settings(&doc).unwrap();
        assert_eq!(s.version, wire::VERSION_V1);
    }

    #[test]
    fn protobuf_merge_semantics() {
        let doc = cat(&[len(3, &int(1, 5)), len(3, &int(2, 6)), int(2, 0), int(2, 1)]);
        let s = decode_settings(&doc).unwrap();
        let f = s.fixed.unwrap();
        assert_eq!((f.scsi_sub_channels, f.io_ring_size), (Some(5), Some(6)));
        assert_eq!(s.version, 1);
        // uint32 varints truncate like prost.
        let s = decode_settings(&len(3, &int(2, (1 << 32) | 7))).unwrap();
        assert_eq!(s.fixed.unwrap().io_ring_size, Some(7));
    }

    #[test]
    fn protobuf_errors_carry_paths() {
        let cases: [(Vec<u8>, &str, &str); 8] = [
            (vec![0x10], "", "truncated varint"),
            (
                vec![
                    0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ],
                "",
                "overflows 64 bits",
            ),
            (vec![0x1a, 0x05, 0x08], "", "truncated field"),
            (vec![0x00, 0x01], "", "field number 0"),
            (vec![0x0c], "", "unmatched end"),
            (vec![0x0b, 0x08], "", "truncated varint"),
            (len(2, b"x"), "version", "expected wire type 0"),
            (
                len(4, &len(1, &len(1, &[0xff]))),
                "dynamic.storage_controllers[0].instance_id",
                "UTF-8",
            ),
        ];
        for (doc, path, msg) in cases {
            let e = decode_settings(&doc).unwrap_err();
            assert_eq!(e.0.len(), 1, "{doc:x?}: {e}");
            assert_eq!(e.0[0].code, ErrorCode::ProtobufFormatError);
            assert_eq!(e.0[0].path, path, "{doc:x?}");
            assert!(e.0[0].message.contains(msg), "{doc:x?}: {}", e.0[0].message);
        }
        let deep_lun = len(
            4,
            &len(1, &len(3, &len(16, &len(3, &int(2, 1) /* wrong type */)))),
        );
        let deep_lun = [deep_lun, vec![]].concat();
        let e = decode_settings(&deep_lun).unwrap_err();
        assert_eq!(
            e.0[0].path,
            "dynamic.storage_controllers[0].luns[0].physical_devices.devices[0].device_path"
        );
    }

    #[test]
    fn protobuf_group_depth_bounded() {
        let mut doc = Vec::new();
        for _ in 0..(MAX_GROUP_DEPTH + 1) {
            doc.push((15 << 3) | 3);
        }
        let e = decode_settings(&doc).unwrap_err();
        assert!(e.0[0].message.contains("too deep"));
    }

    #[test]
    fn protobuf_message_limit() {
        let controller = len(1, &[0x1a, 0x00].repeat(MAX_MESSAGES));
        let e = decode_settings(&len(4, &controller)).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(e.0[0].message.contains("messages"), "{}", e.0[0]);
        let ok = len(1, &[0x1a, 0x00].repeat(MAX_MESSAGES - 3));
        assert!(decode_settings(&len(4, &ok)).is_ok());
    }

    #[test]
    fn protobuf_chunks() {
        let doc = cat(&[len(
            1,
            &cat(&[len(1, b"Base"), len(2, b"{\"version\":\"V1\"}")]),
        )]);
        let s = decode_settings(&doc).unwrap();
        assert_eq!(s.namespace_settings[0].namespace, "Base");
        assert_eq!(s.namespace_settings[0].settings, b"{\"version\":\"V1\"}");
        let nd = decode_network_device(&len(1, &cat(&[len(1, b"id"), int(2, 3)])), "p").unwrap();
        assert_eq!(nd.nic_devices[0].max_sub_channels, Some(3));
        let na =
            decode_network_acceleration(&len(1, &cat(&[len(1, b"a"), len(2, b"b")])), "p").unwrap();
        assert_eq!(na.nic_acceleration[0].subordinate_instance_id, "b");
        let b = decode_base(&cat(&[int(1, 1), len(2, &int(1, 2))]), "p").unwrap();
        assert_eq!(b.fixed.unwrap().scsi_sub_channels, Some(2));
    }
}
