//! The JSON form of the host's settings (proto3 canonical JSON, as pbjson
//! reads it) decoded into the schema types of [`crate::wire`].
//!
//! # Why a hand-written parser, not serde
//!
//! serde's derive could express the dual names (`alias`) and
//! `deny_unknown_fields`, but not the rest of what this input needs:
//! serde_json reports a line and column, never the field path
//! (`dynamic.storage_controllers[1].luns[0].location`) the host needs to
//! find its mistake, and it stops at the first error where this crate
//! reports all of them. Each integer field also needs "number or decimal
//! string", each enum "name, alias or number", each `bytes` field base64:
//! custom deserializers on every field, at which point derive saves little.
//! The two-stage design here is small and has no dependency: a strict
//! RFC 8259 parser builds a bounded [`Value`] tree, then a typed walk over
//! it decodes each message, knowing the path of every value and collecting
//! every error.
//!
//! # Rules (proto3 JSON mapping)
//!
//! - Field names: the schema's snake_case name or its lowerCamelCase form.
//!   Giving one field twice (under either spelling) is an error.
//! - Unknown fields are errors naming the field and its path.
//! - `null` for any field means "absent".
//! - Integers: a JSON number without fraction or exponent, or a string of
//!   ASCII decimal digits (`"1"`); out-of-range values are errors.
//! - Enums: a name from the schema (with every alias) or a known number.
//! - `bytes`: base64, standard or URL-safe alphabet, padded or not.
//! - Booleans: `true` / `false` only.
//!
//! # Limits (hostile input)
//!
//! - [`MAX_INPUT_LEN`]: 1 MiB per document. A full document (4 SCSI
//!   controllers × 64 LUNs, an IDE controller, NVMe controllers with
//!   hundreds of namespaces) is well under 200 KiB.
//! - [`MAX_DEPTH`]: 32 nested arrays/objects. The schema's deepest path
//!   (`dynamic.storage_controllers[].luns[].physical_devices.devices[]`)
//!   nests 7 levels. The parser recurses at most this deep, so deep input
//!   cannot overflow the stack.
//! - [`MAX_VALUES`]: 65 536 JSON values per document, bounding the tree's
//!   and the decoded messages' memory (a few MiB at most). A full document
//!   needs well under 20 000.
//!
//! The tree keeps numbers as their text so integers up to `u64::MAX` decode
//! exactly.

use crate::error::{Collector, Error, ErrorCode, Errors};
use crate::wire;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Largest accepted JSON document, in bytes.
pub const MAX_INPUT_LEN: usize = 1 << 20;
/// Deepest accepted nesting of arrays and objects.
pub const MAX_DEPTH: usize = 32;
/// Most JSON values (of any kind) in one document.
pub const MAX_VALUES: usize = 1 << 16;

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, kept as its (grammar-checked) text.
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object's members in document order (duplicates kept; the typed
    /// decoder rejects them).
    Object(Vec<(String, Value)>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// Parses a JSON text into a [`Value`] under the limits of this module.
/// Errors are `JsonFormatError` with the line and column.
pub fn parse(data: &[u8]) -> Result<Value, Error> {
    if data.len() > MAX_INPUT_LEN {
        return Err(Error::new(
            ErrorCode::JsonFormatError,
            "",
            format!(
                "document is {} bytes, larger than the {MAX_INPUT_LEN}-byte limit",
                data.len()
            ),
        ));
    }
    let text = core::str::from_utf8(data).map_err(|e| {
        Error::new(
            ErrorCode::JsonFormatError,
            "",
            format!("document is not UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
        values: 0,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.pos != p.s.len() {
        return Err(p.err("expected the end of the document"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    values: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> Error {
        let upto = self.s.get(..self.pos).unwrap_or(self.s);
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = self.pos - upto.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
        let found = match self.peek() {
            None => String::from("the end of the document"),
            Some(b) if b.is_ascii_graphic() => format!("'{}'", b as char),
            Some(b) => format!("byte 0x{b:02x}"),
        };
        Error::new(
            ErrorCode::JsonFormatError,
            "",
            format!("syntax error at line {line} column {col}: {what}, found {found}"),
        )
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, word: &[u8], v: Value) -> Result<Value, Error> {
        if self.s.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(v)
        } else {
            Err(self.err("expected a JSON value"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(self.err(&format!("more than {MAX_VALUES} values")));
        }
        match self.peek() {
            Some(b'{') => {
                if depth >= MAX_DEPTH {
                    return Err(self.err(&format!("nesting deeper than {MAX_DEPTH}")));
                }
                self.pos += 1;
                let mut members = Vec::new();
                self.ws();
                if self.eat(b'}') {
                    return Ok(Value::Object(members));
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(self.err("expected a member name"));
                    }
                    let k = self.string()?;
                    self.ws();
                    if !self.eat(b':') {
                        return Err(self.err("expected ':'"));
                    }
                    self.ws();
                    let v = self.value(depth + 1)?;
                    members.push((k, v));
                    self.ws();
                    if self.eat(b',') {
                        continue;
                    }
                    if self.eat(b'}') {
                        return Ok(Value::Object(members));
                    }
                    return Err(self.err("expected ',' or '}'"));
                }
            }
            Some(b'[') => {
                if depth >= MAX_DEPTH {
                    return Err(self.err(&format!("nesting deeper than {MAX_DEPTH}")));
                }
                self.pos += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat(b']') {
                    return Ok(Value::Array(items));
                }
                loop {
                    self.ws();
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    if self.eat(b',') {
                        continue;
                    }
                    if self.eat(b']') {
                        return Ok(Value::Array(items));
                    }
                    return Err(self.err("expected ',' or ']'"));
                }
            }
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err("expected a JSON value")),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Value, Error> {
        let start = self.pos;
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("expected a digit")),
        }
        if self.eat(b'.') && self.digits() == 0 {
            return Err(self.err("expected a digit after '.'"));
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return Err(self.err("expected a digit in the exponent"));
            }
        }
        let text = self.s.get(start..self.pos).unwrap_or_default();
        // The grammar above admits only ASCII.
        Ok(Value::Number(String::from_utf8_lossy(text).into_owned()))
    }

    fn hex4(&mut self) -> Result<u16, Error> {
        let mut v: u16 = 0;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.err("expected 4 hex digits after \\u")),
            };
            v = (v << 4) | u16::from(d);
            self.pos += 1;
        }
        Ok(v)
    }

    /// Parses a string; `pos` is at the opening quote.
    fn string(&mut self) -> Result<String, Error> {
        self.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    // Input was UTF-8 and escapes push whole characters.
                    return String::from_utf8(out)
                        .map_err(|_| self.err("string is not valid UTF-8"));
                }
                b'\\' => {
                    self.pos += 1;
                    let Some(e) = self.peek() else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.pos += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if !(self.eat(b'\\') && self.eat(b'u')) {
                                    return Err(self.err("expected a low surrogate escape"));
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("expected a low surrogate"));
                                }
                                0x10000
                                    + ((u32::from(hi) - 0xD800) << 10)
                                    + (u32::from(lo) - 0xDC00)
                            } else {
                                u32::from(hi)
                            };
                            char::from_u32(cp).ok_or_else(|| self.err("unpaired surrogate"))?
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.err("invalid escape"));
                        }
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..0x20 => return Err(self.err("control character in string")),
                _ => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }
}

/// Decodes base64 (standard or URL-safe alphabet, padding optional).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let body = b
        .strip_suffix(b"==")
        .or_else(|| b.strip_suffix(b"="))
        .unwrap_or(b);
    if b.len() != body.len() && !b.len().is_multiple_of(4) {
        return None;
    }
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in body {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero (canonical encoding).
    if acc != 0 {
        return None;
    }
    Some(out)
}

/// Joins a path and a field name.
fn field_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        String::from(name)
    } else {
        format!("{parent}.{name}")
    }
}

/// Whether `key` is `snake` or its lowerCamelCase form.
fn name_matches(key: &str, snake: &str) -> bool {
    if key == snake {
        return true;
    }
    let mut k = key.bytes();
    let mut upper = false;
    for c in snake.bytes() {
        if c == b'_' {
            upper = true;
            continue;
        }
        let want = if upper { c.to_ascii_uppercase() } else { c };
        upper = false;
        if k.next() != Some(want) {
            return false;
        }
    }
    k.next().is_none()
}

/// Walks a [`Value`] tree, decoding messages and collecting every error.
struct Decoder {
    errors: Collector,
}

type Fields<'v, const N: usize> = [Option<(&'v Value, String)>; N];

impl Decoder {
    fn fail(&mut self, path: &str, message: String) {
        self.errors
            .push(Error::new(ErrorCode::JsonFormatError, path, message));
    }

    fn expected(&mut self, path: &str, what: &str, v: &Value) {
        self.fail(path, format!("expected {what}, found {}", v.kind()));
    }

    /// Splits an object into the message's fields (by snake_case name),
    /// reporting unknown and repeated fields. `null` members are absent.
    fn fields<'v, const N: usize>(
        &mut self,
        v: &'v Value,
        path: &str,
        message: &str,
        names: [&str; N],
    ) -> Option<Fields<'v, N>> {
        let Value::Object(members) = v else {
            if !matches!(v, Value::Null) {
                self.expected(path, &format!("a {message} object"), v);
            }
            return None;
        };
        let mut out: Fields<'v, N> = [const { None }; N];
        for (key, value) in members {
            let Some(i) = names.iter().position(|n| name_matches(key, n)) else {
                let mut expected = String::new();
                for (i, n) in names.iter().enumerate() {
                    expected.push_str(if i == 0 { "`" } else { ", `" });
                    expected.push_str(n);
                    expected.push('`');
                }
                self.fail(
                    &field_path(path, key),
                    format!("unknown field `{key}` in {message}, expected one of {expected}"),
                );
                continue;
            };
            let Some(slot) = out.get_mut(i) else { continue };
            let fp = field_path(path, names.get(i).copied().unwrap_or(key));
            if slot.is_some() {
                self.fail(&fp, format!("field `{key}` given more than once"));
                continue;
            }
            if !matches!(value, Value::Null) {
                *slot = Some((value, fp));
            }
        }
        Some(out)
    }

    fn integer(&mut self, v: &Value, path: &str, max: u64, what: &str) -> Option<u64> {
        let text = match v {
            Value::Number(t) | Value::String(t) => t,
            _ => {
                self.expected(path, what, v);
                return None;
            }
        };
        let parsed = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse::<u64>().ok().filter(|&n| n <= max)
        } else {
            None
        };
        if parsed.is_none() {
            self.fail(path, format!("expected {what}, found `{text}`"));
        }
        parsed
    }

    fn u32(&mut self, f: Option<(&Value, String)>) -> Option<u32> {
        let (v, p) = f?;
        self.integer(
            v,
            &p,
            u32::MAX.into(),
            "an unsigned 32-bit integer (number or decimal string)",
        )
        .and_then(|n| u32::try_from(n).ok())
    }

    fn u64(&mut self, f: Option<(&Value, String)>) -> Option<u64> {
        let (v, p) = f?;
        self.integer(
            v,
            &p,
            u64::MAX,
            "an unsigned 64-bit integer (number or decimal string)",
        )
    }

    fn bool(&mut self, f: Option<(&Value, String)>) -> Option<bool> {
        let (v, p) = f?;
        match v {
            Value::Bool(b) => Some(*b),
            _ => {
                self.expected(&p, "true or false", v);
                None
            }
        }
    }

    fn string(&mut self, f: Option<(&Value, String)>) -> Option<String> {
        let (v, p) = f?;
        match v {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.expected(&p, "a string", v);
                None
            }
        }
    }

    fn bytes(&mut self, f: Option<(&Value, String)>) -> Option<Vec<u8>> {
        let (v, p) = f?;
        match v {
            Value::String(s) => {
                let out = base64_decode(s);
                if out.is_none() {
                    self.fail(&p, String::from("expected base64 data"));
                }
                out
            }
            _ => {
                self.expected(&p, "a base64 string", v);
                None
            }
        }
    }

    fn enumeration(
        &mut self,
        f: Option<(&Value, String)>,
        name: &str,
        table: &[(&str, i32)],
    ) -> Option<i32> {
        let (v, p) = f?;
        let found = match v {
            Value::String(s) => table.iter().find(|(n, _)| n == s).map(|&(_, x)| x),
            Value::Number(t) => t
                .parse::<i32>()
                .ok()
                .filter(|x| table.iter().any(|&(_, y)| y == *x)),
            _ => None,
        };
        if found.is_none() {
            let mut names = String::new();
            for (i, (n, x)) in table.iter().enumerate() {
                if i > 0 {
                    names.push_str(", ");
                }
                names.push_str(&format!("{n} ({x})"));
            }
            let shown = match v {
                Value::String(s) | Value::Number(s) => format!("`{s}`"),
                other => String::from(other.kind()),
            };
            self.fail(
                &p,
                format!("expected a {name} name or number, one of {names}; found {shown}"),
            );
        }
        found
    }

    fn array<T>(
        &mut self,
        f: Option<(&Value, String)>,
        mut item: impl FnMut(&mut Self, &Value, &str) -> Option<T>,
    ) -> Vec<T> {
        let Some((v, p)) = f else {
            return Vec::new();
        };
        let Value::Array(items) = v else {
            self.expected(&p, "an array", v);
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, x) in items.iter().enumerate() {
            if let Some(t) = item(self, x, &format!("{p}[{i}]")) {
                out.push(t);
            }
        }
        out
    }

    fn message<T>(
        &mut self,
        f: Option<(&Value, String)>,
        decode: impl FnOnce(&mut Self, &Value, &str) -> Option<T>,
    ) -> Option<T> {
        let (v, p) = f?;
        decode(self, v, &p)
    }

    // ---- messages ----

    fn top(&mut self, v: &Value, path: &str) -> Option<wire::Vtl2Settings> {
        let [chunks, version, fixed, dynamic] = self.fields(
            v,
            path,
            "Vtl2Settings",
            ["namespace_settings", "version", "fixed", "dynamic"],
        )?;
        Some(wire::Vtl2Settings {
            namespace_settings: self.array(chunks, Self::chunk),
            version: self.version(version),
            fixed: self.message(fixed, Self::fixed),
            dynamic: self.message(dynamic, Self::dynamic),
        })
    }

    fn version(&mut self, f: Option<(&Value, String)>) -> i32 {
        self.enumeration(
            f,
            "Version",
            &[("UNKNOWN", wire::VERSION_UNKNOWN), ("V1", wire::VERSION_V1)],
        )
        .unwrap_or(wire::VERSION_UNKNOWN)
    }

    fn chunk(&mut self, v: &Value, path: &str) -> Option<wire::Chunk> {
        let [namespace, settings] =
            self.fields(v, path, "Vtl2SettingsChunk", ["namespace", "settings"])?;
        Some(wire::Chunk {
            namespace: self.string(namespace).unwrap_or_default(),
            settings: self.bytes(settings).unwrap_or_default(),
        })
    }

    fn base(&mut self, v: &Value, path: &str) -> Option<wire::Base> {
        let [version, fixed, dynamic] =
            self.fields(v, path, "Vtl2SettingsBase", ["version", "fixed", "dynamic"])?;
        Some(wire::Base {
            version: self.version(version),
            fixed: self.message(fixed, Self::fixed),
            dynamic: self.message(dynamic, Self::dynamic),
        })
    }

    fn fixed(&mut self, v: &Value, path: &str) -> Option<wire::Fixed> {
        let [sub, ring, bounce] = self.fields(
            v,
            path,
            "Vtl2SettingsFixed",
            [
                "scsi_sub_channels",
                "io_ring_size",
                "max_bounce_buffer_pages",
            ],
        )?;
        Some(wire::Fixed {
            scsi_sub_channels: self.u32(sub),
            io_ring_size: self.u32(ring),
            max_bounce_buffer_pages: self.u32(bounce),
        })
    }

    fn dynamic(&mut self, v: &Value, path: &str) -> Option<wire::Dynamic> {
        let [controllers, nics] = self.fields(
            v,
            path,
            "Vtl2SettingsDynamic",
            ["storage_controllers", "nic_devices"],
        )?;
        Some(wire::Dynamic {
            storage_controllers: self.array(controllers, Self::controller),
            nic_devices: self.array(nics, Self::nic_legacy),
        })
    }

    fn nic_legacy(&mut self, v: &Value, path: &str) -> Option<wire::NicDeviceLegacy> {
        let [id, sub, max] = self.fields(
            v,
            path,
            "NicDeviceLegacy",
            ["instance_id", "subordinate_instance_id", "max_sub_channels"],
        )?;
        Some(wire::NicDeviceLegacy {
            instance_id: self.string(id).unwrap_or_default(),
            subordinate_instance_id: self.string(sub),
            max_sub_channels: self.u32(max),
        })
    }

    fn network_device(&mut self, v: &Value, path: &str) -> Option<wire::NetworkDevice> {
        let [nics] = self.fields(v, path, "Vtl2SettingsNetworkDevice", ["nic_devices"])?;
        Some(wire::NetworkDevice {
            nic_devices: self.array(nics, |d, v, path| {
                let [id, max] =
                    d.fields(v, path, "NicDevice", ["instance_id", "max_sub_channels"])?;
                Some(wire::NicDevice {
                    instance_id: d.string(id).unwrap_or_default(),
                    max_sub_channels: d.u32(max),
                })
            }),
        })
    }

    fn network_acceleration(&mut self, v: &Value, path: &str) -> Option<wire::NetworkAcceleration> {
        let [accel] = self.fields(
            v,
            path,
            "Vtl2SettingsNetworkAcceleration",
            ["nic_acceleration"],
        )?;
        Some(wire::NetworkAcceleration {
            nic_acceleration: self.array(accel, |d, v, path| {
                let [id, sub] = d.fields(
                    v,
                    path,
                    "NicAcceleration",
                    ["instance_id", "subordinate_instance_id"],
                )?;
                Some(wire::NicAcceleration {
                    instance_id: d.string(id).unwrap_or_default(),
                    subordinate_instance_id: d.string(sub).unwrap_or_default(),
                })
            }),
        })
    }

    fn controller(&mut self, v: &Value, path: &str) -> Option<wire::StorageController> {
        let [id, protocol, luns, depth] = self.fields(
            v,
            path,
            "StorageController",
            ["instance_id", "protocol", "luns", "io_queue_depth"],
        )?;
        Some(wire::StorageController {
            instance_id: self.string(id).unwrap_or_default(),
            protocol: self
                .enumeration(
                    protocol,
                    "StorageProtocol",
                    &[
                        ("UNKNOWN", wire::PROTOCOL_UNKNOWN),
                        ("SCSI", wire::PROTOCOL_SCSI),
                        ("IDE", wire::PROTOCOL_IDE),
                        ("NVME", wire::PROTOCOL_NVME),
                        ("scsi", wire::PROTOCOL_SCSI),
                        ("ide", wire::PROTOCOL_IDE),
                    ],
                )
                .unwrap_or(wire::PROTOCOL_UNKNOWN),
            luns: self.array(luns, Self::lun),
            io_queue_depth: self.u32(depth),
        })
    }

    fn device_type(&mut self, f: Option<(&Value, String)>) -> Option<i32> {
        self.enumeration(
            f,
            "DeviceType",
            &[
                ("UNKNOWN", wire::DEVICE_UNKNOWN),
                ("NVME", wire::DEVICE_NVME),
                ("VSCSI", wire::DEVICE_VSCSI),
                ("NVMe", wire::DEVICE_NVME),
                ("nvme", wire::DEVICE_NVME),
                ("VScsi", wire::DEVICE_VSCSI),
                ("vscsi", wire::DEVICE_VSCSI),
            ],
        )
    }

    fn lun(&mut self, v: &Value, path: &str) -> Option<wire::Lun> {
        let [
            channel,
            location,
            device_id,
            vendor_id,
            product_id,
            revision,
            serial,
            model,
            rotation,
            sector,
            fua,
            write_cache,
            odx,
            thin,
            max_transfer,
            physical_devices,
            is_dvd,
            chunk,
            size,
            ntfs,
            total,
            device_type,
            device_path,
            sub_device_path,
        ] = self.fields(
            v,
            path,
            "Lun",
            [
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
                "total_logic_size_in_kb",
                "device_type",
                "device_path",
                "sub_device_path",
            ],
        )?;
        Some(wire::Lun {
            channel: self.u32(channel),
            location: self.u32(location).unwrap_or_default(),
            device_id: self.string(device_id).unwrap_or_default(),
            vendor_id: self.string(vendor_id).unwrap_or_default(),
            product_id: self.string(product_id).unwrap_or_default(),
            product_revision_level: self.string(revision).unwrap_or_default(),
            serial_number: self.string(serial).unwrap_or_default(),
            model_number: self.string(model).unwrap_or_default(),
            medium_rotation_rate: self.u32(rotation),
            physical_sector_size: self.u32(sector),
            fua: self.bool(fua),
            write_cache: self.bool(write_cache),
            odx: self.bool(odx),
            disable_thin_provisioning: self.bool(thin),
            max_transfer_length: self.u64(max_transfer),
            physical_devices: self.message(physical_devices, Self::physical_devices),
            is_dvd: self.bool(is_dvd).unwrap_or_default(),
            chunk_size_in_kb: self.u32(chunk).unwrap_or_default(),
            scsi_disk_size_in_bytes: self.u64(size),
            ntfs_guid: self.string(ntfs),
            total_logic_size_in_kb: self.u32(total).unwrap_or_default(),
            device_type: self.device_type(device_type),
            device_path: self.string(device_path),
            sub_device_path: self.u32(sub_device_path),
        })
    }

    fn physical_devices(&mut self, v: &Value, path: &str) -> Option<wire::PhysicalDevices> {
        let [ty, device, devices] =
            self.fields(v, path, "PhysicalDevices", ["type", "device", "devices"])?;
        Some(wire::PhysicalDevices {
            r#type: self
                .enumeration(
                    ty,
                    "BackingType",
                    &[
                        ("UNKNOWN", wire::BACKING_UNKNOWN),
                        ("SINGLE", wire::BACKING_SINGLE),
                        ("STRIPED", wire::BACKING_STRIPED),
                        ("single", wire::BACKING_SINGLE),
                        ("striping", wire::BACKING_STRIPED),
                    ],
                )
                .unwrap_or(wire::BACKING_UNKNOWN),
            device: self.message(device, Self::physical_device),
            devices: self.array(devices, Self::physical_device),
        })
    }

    fn physical_device(&mut self, v: &Value, path: &str) -> Option<wire::PhysicalDevice> {
        let [ty, dev_path, sub] = self.fields(
            v,
            path,
            "PhysicalDevice",
            ["device_type", "device_path", "sub_device_path"],
        )?;
        Some(wire::PhysicalDevice {
            device_type: self.device_type(ty).unwrap_or(wire::DEVICE_UNKNOWN),
            device_path: self.string(dev_path).unwrap_or_default(),
            sub_device_path: self.u32(sub).unwrap_or_default(),
        })
    }
}

fn run<T>(
    data: &[u8],
    path: &str,
    decode: impl FnOnce(&mut Decoder, &Value, &str) -> Option<T>,
) -> Result<T, Errors> {
    let with_prefix = |mut e: Error| {
        e.path = match (path.is_empty(), e.path.is_empty()) {
            (true, _) => e.path,
            (false, true) => String::from(path),
            (false, false) => format!("{path}.{}", e.path),
        };
        e
    };
    let value = parse(data).map_err(|e| Errors(alloc::vec![with_prefix(e)]))?;
    let mut d = Decoder {
        errors: Collector::default(),
    };
    let out = decode(&mut d, &value, path);
    match out {
        Some(t) => d.errors.result(t),
        None => {
            if d.errors.is_empty() {
                d.fail(path, String::from("expected an object"));
            }
            Err(d.errors.into_errors())
        }
    }
}

/// Decodes a top-level `Vtl2Settings` JSON document. Chunk settings stay
/// raw bytes (see [`mod@crate::read`] for chunk handling).
pub fn decode_settings(data: &[u8]) -> Result<wire::Vtl2Settings, Errors> {
    run(data, "", Decoder::top)
}

/// Decodes a `Base` chunk's JSON message; errors' paths start with `path`.
pub fn decode_base(data: &[u8], path: &str) -> Result<wire::Base, Errors> {
    run(data, path, Decoder::base)
}

/// Decodes a `NetworkDevice` chunk's JSON message; errors' paths start with `path`.
pub fn decode_network_device(data: &[u8], path: &str) -> Result<wire::NetworkDevice, Errors> {
    run(data, path, Decoder::network_device)
}

/// Decodes a `NetworkAcceleration` chunk's JSON message; errors' paths
/// start with `path`.
pub fn decode_network_acceleration(
    data: &[u8],
    path: &str,
) -> Result<wire::NetworkAcceleration, Errors> {
    run(data, path, Decoder::network_acceleration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn top(s: &str) -> wire::Vtl2Settings {
        decode_settings(s.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn top_err(s: &str) -> Errors {
        decode_settings(s.as_bytes()).unwrap_err()
    }

    fn first_lun(s: &wire::Vtl2Settings) -> &wire::Lun {
        &s.dynamic.as_ref().unwrap().storage_controllers[0].luns[0]
    }

    #[test]
    fn json_snake_and_camel_names() {
        let a = top(
            r#"{"version":"V1","dynamic":{"storage_controllers":[{"instance_id":"x",
            "protocol":"SCSI","io_queue_depth":7,"luns":[{"location":1,"vendor_id":"V",
            "product_revision_level":"1.0","is_dvd":true,"chunk_size_in_kb":4}]}]}}"#,
        );
        let b = top(
            r#"{"version":"V1","dynamic":{"storageControllers":[{"instanceId":"x",
            "protocol":"SCSI","ioQueueDepth":7,"luns":[{"location":1,"vendorId":"V",
            "productRevisionLevel":"1.0","isDvd":true,"chunkSizeInKb":4}]}]}}"#,
        );
        assert_eq!(a, b);
        assert_eq!(first_lun(&a).product_revision_level, "1.0");
        assert_eq!(
            a.dynamic.unwrap().storage_controllers[0].io_queue_depth,
            Some(7)
        );
    }

    #[test]
    fn json_enum_names_aliases_and_numbers() {
        for (text, want) in [
            ("\"SCSI\"", wire::PROTOCOL_SCSI),
            ("\"scsi\"", wire::PROTOCOL_SCSI),
            ("1", wire::PROTOCOL_SCSI),
            ("\"IDE\"", wire::PROTOCOL_IDE),
            ("\"ide\"", wire::PROTOCOL_IDE),
            ("\"NVME\"", wire::PROTOCOL_NVME),
            ("3", wire::PROTOCOL_NVME),
            ("\"UNKNOWN\"", wire::PROTOCOL_UNKNOWN),
            ("0", wire::PROTOCOL_UNKNOWN),
        ] {
            let s = top(&alloc::format!(
                r#"{{"dynamic":{{"storage_controllers":[{{"protocol":{text}}}]}}}}"#
            ));
            assert_eq!(
                s.dynamic.unwrap().storage_controllers[0].protocol,
                want,
                "{text}"
            );
        }
        for (text, want) in [
            ("\"NVME\"", wire::DEVICE_NVME),
            ("\"NVMe\"", wire::DEVICE_NVME),
            ("\"nvme\"", wire::DEVICE_NVME),
            ("1", wire::DEVICE_NVME),
            ("\"VSCSI\"", wire::DEVICE_VSCSI),
            ("\"VScsi\"", wire::DEVICE_VSCSI),
            ("\"vscsi\"", wire::DEVICE_VSCSI),
            ("2", wire::DEVICE_VSCSI),
        ] {
            let s = top(&alloc::format!(
                r#"{{"dynamic":{{"storage_controllers":[{{"luns":[{{"device_type":{text},
                "physical_devices":{{"type":"single","device":{{"device_type":{text}}}}}}}]}}]}}}}"#
            ));
            let lun = first_lun(&s);
            assert_eq!(lun.device_type, Some(want), "{text}");
            let pd = lun.physical_devices.as_ref().unwrap();
            assert_eq!(pd.device.as_ref().unwrap().device_type, want);
            assert_eq!(pd.r#type, wire::BACKING_SINGLE);
        }
        for (text, want) in [
            ("\"SINGLE\"", wire::BACKING_SINGLE),
            ("\"single\"", wire::BACKING_SINGLE),
            ("\"STRIPED\"", wire::BACKING_STRIPED),
            ("\"striping\"", wire::BACKING_STRIPED),
            ("2", wire::BACKING_STRIPED),
        ] {
            let s = top(&alloc::format!(
                r#"{{"dynamic":{{"storage_controllers":[{{"luns":[{{"physical_devices":{{"type":{text}}}}}]}}]}}}}"#
            ));
            assert_eq!(
                first_lun(&s).physical_devices.as_ref().unwrap().r#type,
                want
            );
        }
        assert_eq!(top(r#"{"version":"V1"}"#).version, wire::VERSION_V1);
        assert_eq!(top(r#"{"version":1}"#).version, wire::VERSION_V1);
        assert_eq!(top(r#"{}"#).version, wire::VERSION_UNKNOWN);
    }

    #[test]
    fn json_enum_rejects_unknown_name_number_and_case() {
        for text in ["\"Scsi\"", "4", "-1", "\"1\"", "true", "1.0"] {
            let e = top_err(&alloc::format!(
                r#"{{"dynamic":{{"storage_controllers":[{{"protocol":{text}}}]}}}}"#
            ));
            assert_eq!(e.0.len(), 1, "{text}");
            assert_eq!(e.0[0].path, "dynamic.storage_controllers[0].protocol");
            assert!(
                e.0[0].message.contains("StorageProtocol"),
                "{}",
                e.0[0].message
            );
        }
    }

    #[test]
    fn json_integers_as_numbers_or_decimal_strings() {
        let s = top(r#"{"fixed":{"scsi_sub_channels":"31","io_ring_size":128,
            "max_bounce_buffer_pages":"4294967295"},
            "dynamic":{"storage_controllers":[{"luns":[{"sub_device_path":"1",
            "max_transfer_length":"18446744073709551615","scsi_disk_size_in_bytes":1024}]}]}}"#);
        let f = s.fixed.as_ref().unwrap();
        assert_eq!(f.scsi_sub_channels, Some(31));
        assert_eq!(f.io_ring_size, Some(128));
        assert_eq!(f.max_bounce_buffer_pages, Some(u32::MAX));
        let lun = first_lun(&s);
        assert_eq!(lun.sub_device_path, Some(1));
        assert_eq!(lun.max_transfer_length, Some(u64::MAX));
        assert_eq!(lun.scsi_disk_size_in_bytes, Some(1024));
    }

    #[test]
    fn json_integers_rejected_when_not_integral_or_out_of_range() {
        for text in [
            "4294967296",
            "-1",
            "1.5",
            "1e3",
            "\"\"",
            "\" 1\"",
            "\"+1\"",
            "\"0x10\"",
            "true",
            "[]",
        ] {
            let e = top_err(&alloc::format!(r#"{{"fixed":{{"io_ring_size":{text}}}}}"#));
            assert_eq!(e.0.len(), 1, "{text}");
            assert_eq!(e.0[0].code, ErrorCode::JsonFormatError);
            assert_eq!(e.0[0].path, "fixed.io_ring_size");
            assert!(
                e.0[0].message.contains("unsigned 32-bit"),
                "{}",
                e.0[0].message
            );
        }
    }

    #[test]
    fn json_unknown_field_named_with_path() {
        let e = top_err(
            r#"{"dynamic":{"storage_controllers":[{},{"luns":[{"locaton":1}]}]},"bogus":1}"#,
        );
        let paths: Vec<_> = e.0.iter().map(|e| e.path.as_str()).collect();
        // A message's own unknown fields come before its children's errors.
        assert_eq!(
            paths,
            ["bogus", "dynamic.storage_controllers[1].luns[0].locaton"]
        );
        assert!(
            e.0[1]
                .message
                .contains("unknown field `locaton` in Lun, expected one of `channel`, `location`,")
        );
        assert!(
            e.0[0]
                .message
                .contains("unknown field `bogus` in Vtl2Settings")
        );
    }

    #[test]
    fn json_duplicate_field_rejected_across_spellings() {
        let e = top_err(r#"{"fixed":{"io_ring_size":1,"ioRingSize":2}}"#);
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].path, "fixed.io_ring_size");
        assert!(e.0[0].message.contains("more than once"));
    }

    #[test]
    fn json_reports_all_errors_with_paths() {
        let e = top_err(
            r#"{"dynamic":{"storage_controllers":[{"instance_id":5,"luns":[
            {"location":"x","fua":1},{"physical_devices":{"devices":[{"sub_device_path":-2}]}}]}]}}"#,
        );
        let paths: Vec<_> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "dynamic.storage_controllers[0].instance_id",
                "dynamic.storage_controllers[0].luns[0].location",
                "dynamic.storage_controllers[0].luns[0].fua",
                "dynamic.storage_controllers[0].luns[1].physical_devices.devices[0].sub_device_path",
            ]
        );
        assert!(e.0[0].message.contains("expected a string, found a number"));
        assert!(e.0[2].message.contains("expected true or false"));
    }

    #[test]
    fn json_null_means_absent() {
        let s = top(r#"{"version":null,"fixed":null,"dynamic":{"storage_controllers":null}}"#);
        assert_eq!(s.version, wire::VERSION_UNKNOWN);
        assert!(s.fixed.is_none());
        assert!(s.dynamic.unwrap().storage_controllers.is_empty());
    }

    #[test]
    fn json_wrong_shapes() {
        for (doc, path) in [
            ("[]", ""),
            ("null", ""),
            ("1", ""),
            (r#"{"fixed":[]}"#, "fixed"),
            (
                r#"{"dynamic":{"storage_controllers":{}}}"#,
                "dynamic.storage_controllers",
            ),
            (
                r#"{"dynamic":{"storage_controllers":[1]}}"#,
                "dynamic.storage_controllers[0]",
            ),
        ] {
            let e = top_err(doc);
            assert_eq!(e.0.len(), 1, "{doc}");
            assert_eq!(e.0[0].path, path, "{doc}");
        }
    }

    #[test]
    fn json_base64_bytes() {
        let s = top(
            r#"{"namespace_settings":[{"namespace":"Base","settings":"eyJ2ZXJzaW9uIjoiVjEifQ=="}]}"#,
        );
        assert_eq!(s.namespace_settings[0].namespace, "Base");
        assert_eq!(s.namespace_settings[0].settings, b"{\"version\":\"V1\"}");
        let e = top_err(r#"{"namespaceSettings":[{"settings":"a*=="}]}"#);
        assert_eq!(e.0[0].path, "namespace_settings[0].settings");
    }

    #[test]
    fn base64_variants() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zg").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("-_8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(base64_decode("+/8").unwrap(), [0xfb, 0xff]);
        for bad in [
            "Z", "Zg=", "Zh==", "Zm9v=", "Z===", "Zg==Zg==", "Zm 9v", "Zm9v\n",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn json_strings_and_escapes() {
        let s = top(
            r#"{"dynamic":{"storage_controllers":[{"instance_id":"a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"}]}}"#,
        );
        assert_eq!(
            s.dynamic.unwrap().storage_controllers[0].instance_id,
            "a\"\\/\u{8}\u{c}\n\r\t\u{e9}\u{1f600}"
        );
        for bad in [
            r#"{"a":"\x"}"#,
            r#"{"a":"\ud83d"}"#,
            r#"{"a":"\ude00"}"#,
            r#"{"a":"\u12"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":"abc"#,
        ] {
            let e = top_err(bad);
            assert_eq!(e.0.len(), 1);
            assert!(
                e.0[0].message.starts_with("syntax error"),
                "{bad}: {}",
                e.0[0]
            );
        }
    }

    #[test]
    fn json_syntax_errors_give_line_and_column() {
        let e = top_err("{\n  \"version\": \"V1\",\n}");
        assert_eq!(
            e.0[0].to_string(),
            "Configuration.JsonFormatError: syntax error at line 3 column 1: \
             expected a member name, found '}'"
        );
        for bad in [
            "",
            "{",
            "{}}",
            "{\"a\" 1}",
            "[1,]",
            "01",
            "-",
            "1.",
            "1e",
            "tru",
            "{} x",
            "\u{feff}{}",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(parse(&[b'"', 0xff, b'"']).is_err());
    }

    #[test]
    fn json_parser_accepts_rfc8259() {
        let v = parse(br#" [0, -0, 1.5e-3, 2E+10, true, false, null, "", {}, [], {"a":[{}]}] "#)
            .unwrap();
        let Value::Array(items) = v else { panic!() };
        assert_eq!(items.len(), 11);
        assert_eq!(items[2], Value::Number("1.5e-3".into()));
    }

    #[test]
    fn json_depth_limit_no_stack_overflow() {
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(
            parse(deep.as_bytes())
                .unwrap_err()
                .message
                .contains("nesting deeper")
        );
        let huge = "{\"a\":".repeat(100_000);
        assert!(parse(huge.as_bytes()).is_err());
    }

    #[test]
    fn json_size_and_value_limits() {
        let big = vec![b' '; MAX_INPUT_LEN + 1];
        assert!(parse(&big).unwrap_err().message.contains("limit"));
        let many = String::from("[") + &"0,".repeat(MAX_VALUES) + "0]";
        assert!(many.len() <= MAX_INPUT_LEN);
        assert!(
            parse(many.as_bytes())
                .unwrap_err()
                .message
                .contains("values")
        );
    }

    #[test]
    fn json_legacy_lun_fields() {
        let s = top(
            r#"{"dynamic":{"storage_controllers":[{"luns":[{"device_type":"nvme",
            "device_path":"p","sub_device_path":"3","total_logic_size_in_kb":9}]}]}}"#,
        );
        let lun = first_lun(&s);
        assert_eq!(lun.device_type, Some(wire::DEVICE_NVME));
        assert_eq!(lun.device_path.as_deref(), Some("p"));
        assert_eq!(lun.sub_device_path, Some(3));
        assert_eq!(lun.total_logic_size_in_kb, 9);
    }

    #[test]
    fn json_chunk_messages() {
        let nd = decode_network_device(
            br#"{"nicDevices":[{"instanceId":"a","maxSubChannels":"4"}]}"#,
            "namespace_settings[0].settings",
        )
        .unwrap();
        assert_eq!(nd.nic_devices[0].max_sub_channels, Some(4));
        let e = decode_network_acceleration(br#"{"nic_acceleration":[{"x":1}]}"#, "p").unwrap_err();
        assert_eq!(e.0[0].path, "p.nic_acceleration[0].x");
        let e = decode_base(b"{", "namespace_settings[2].settings").unwrap_err();
        assert_eq!(e.0[0].path, "namespace_settings[2].settings");
        let b = decode_base(br#"{"version":"V1","fixed":{}}"#, "p").unwrap();
        assert_eq!(b.version, wire::VERSION_V1);
        assert!(b.fixed.is_some());
    }

    #[test]
    fn name_matching() {
        assert!(name_matches("storage_controllers", "storage_controllers"));
        assert!(name_matches("storageControllers", "storage_controllers"));
        assert!(!name_matches("StorageControllers", "storage_controllers"));
        assert!(!name_matches("storagecontrollers", "storage_controllers"));
        assert!(!name_matches("storageControllersX", "storage_controllers"));
        assert!(!name_matches("storageController", "storage_controllers"));
        assert!(name_matches("type", "type"));
    }
}
