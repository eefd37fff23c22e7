//! Reading a whole settings blob: format detection, namespace chunks, then
//! validation.
//!
//! Detection follows OpenHCL: the first non-whitespace byte `{` means JSON,
//! anything else protobuf; JSON that fails to decode is retried as
//! protobuf, and the JSON errors are reported if both fail. Each chunk's
//! `settings` bytes are detected the same way, independently, so a
//! protobuf document may carry JSON chunks and the other way round.
//!
//! A postcard blob ([`crate::postcard`]) is a whole model; it is turned
//! into base content and validated like the others.
//!
//! Within one document: top-level `version`/`fixed`/`dynamic` form the base
//! content; each `Base` chunk replaces it (in document order); the last
//! `NetworkDevice` chunk replaces the NIC list; `NetworkAcceleration`
//! chunks update the subordinate ids of the NICs listed.

use crate::error::{Collector, Error, ErrorCode, Errors, shown};
use crate::json;
use crate::model::Settings;
use crate::postcard;
use crate::protobuf;
use crate::validate::{self, Input};
use crate::wire;
use alloc::format;
use alloc::string::String;

/// Largest blob any format accepts, in bytes ([`crate::json::MAX_INPUT_LEN`],
/// [`crate::protobuf::MAX_INPUT_LEN`] and [`crate::postcard::MAX_INPUT_LEN`]
/// are all this): a tool reading a blob from a file need not read more.
pub const MAX_BLOB_LEN: usize = 1 << 20;

const _: () = assert!(
    json::MAX_INPUT_LEN == MAX_BLOB_LEN
        && protobuf::MAX_INPUT_LEN == MAX_BLOB_LEN
        && postcard::MAX_INPUT_LEN == MAX_BLOB_LEN
);

/// The encoding of a blob or chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// proto3 canonical JSON.
    Json,
    /// protobuf binary.
    Protobuf,
    /// parastor's postcard form of the model ([`crate::postcard`]; whole
    /// blobs only, never a chunk).
    Postcard,
}

/// Detects the encoding: postcard when the blob starts with
/// [`crate::postcard::MAGIC`], JSON when the first non-whitespace byte is
/// `{`, protobuf otherwise.
pub fn detect(data: &[u8]) -> Format {
    if postcard::is_postcard(data) {
        return Format::Postcard;
    }
    match data.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Format::Json,
        _ => Format::Protobuf,
    }
}

/// Decodes `data` with the JSON or protobuf decoder, by detection, with
/// OpenHCL's fallback from JSON to protobuf.
fn detect_decode<T>(
    data: &[u8],
    path: &str,
    from_json: fn(&[u8], &str) -> Result<T, Errors>,
    from_protobuf: fn(&[u8], &str) -> Result<T, Errors>,
) -> Result<T, Errors> {
    match detect(data) {
        Format::Protobuf | Format::Postcard => from_protobuf(data, path),
        Format::Json => from_json(data, path).or_else(|e| from_protobuf(data, path).map_err(|_| e)),
    }
}

/// Decodes a blob and its chunks into the validator's [`Input`], without
/// validating. Returns every decode error of every part.
pub fn decode(data: &[u8]) -> Result<Input, Errors> {
    if detect(data) == Format::Postcard {
        let model = postcard::decode_unvalidated(data)?;
        return Ok(Input {
            base: Some((String::new(), wire::base_from_model(&model))),
            ..Input::default()
        });
    }
    let mut top = detect_decode(
        data,
        "",
        |d, _| json::decode_settings(d),
        |d, _| protobuf::decode_settings(d),
    )?;
    let mut input = Input::default();
    if top.fixed.is_some() || top.dynamic.is_some() {
        input.base = Some((String::new(), top.take_base()));
    }
    let mut errors = Collector::default();
    for (i, chunk) in top.namespace_settings.iter().enumerate() {
        let path = format!("namespace_settings[{i}].settings");
        let ns = chunk.namespace.as_str();
        if ![
            wire::NAMESPACE_BASE,
            wire::NAMESPACE_NETWORK_DEVICE,
            wire::NAMESPACE_NETWORK_ACCELERATION,
        ]
        .contains(&ns)
        {
            errors.push(Error::new(
                ErrorCode::UnsupportedSchemaNamespace,
                format!("namespace_settings[{i}].namespace"),
                format!(
                    "unknown namespace `{}`; expected Base, NetworkDevice or NetworkAcceleration",
                    shown(ns)
                ),
            ));
            continue;
        }
        if chunk.settings.is_empty() {
            errors.push(Error::new(
                ErrorCode::EmptyNamespaceChunk,
                path,
                format!("the `{ns}` chunk has no settings"),
            ));
            continue;
        }
        let data = chunk.settings.as_slice();
        let result = match ns {
            wire::NAMESPACE_BASE => {
                detect_decode(data, &path, json::decode_base, protobuf::decode_base)
                    .map(|b| input.base = Some((path, b)))
            }
            wire::NAMESPACE_NETWORK_DEVICE => detect_decode(
                data,
                &path,
                json::decode_network_device,
                protobuf::decode_network_device,
            )
            .map(|n| input.network_device = Some((path, n))),
            _ => detect_decode(
                data,
                &path,
                json::decode_network_acceleration,
                protobuf::decode_network_acceleration,
            )
            .map(|n| input.network_acceleration.push((path, n))),
        };
        if let Err(e) = result {
            errors.extend(e);
        }
    }
    errors.result(input)
}

/// Reads a settings blob: decodes it (any supported format), validates it,
/// and returns the settings model or every error found.
pub fn read(data: &[u8]) -> Result<Settings, Errors> {
    validate::validate(&decode(data)?, None)
}
