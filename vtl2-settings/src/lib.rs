//! The host's VTL2 settings blob, decoded into a validated settings model.
//!
//! The host tells the paravisor which storage controllers the VTL0 guest
//! sees (SCSI, NVMe, IDE), the LUNs or namespaces on each, their identity
//! strings, and the backing devices behind each. The blob arrives from an
//! untrusted host, so this crate decodes it, validates every rule, and
//! reports every error with the path of the field at fault — it never
//! panics on any input.
//!
//! Layers, each its own module:
//!
//! - [`json`], [`protobuf`]: bytes → [`wire`], the host's
//!   schema message by message, with only format-level checks;
//! - [`json_out`], [`protobuf_out`]: the host's schema written back as
//!   JSON or protobuf (for tools and tests);
//! - [`postcard`]: parastor's own binary form of the [`model`], read back
//!   through [`wire`] so it is validated like the host's formats;
//! - [`validate`]: [`wire`] → [`model`], every rule of OpenHCL's schema
//!   with its host error code ([`error::ErrorCode`]), all errors at once;
//! - [`mod@read`]: format detection and namespace chunks, tying the two
//!   together;
//! - [`update`]: runtime updates — merge onto the current settings, the
//!   change set, and the rules on what may change at runtime;
//! - [`fuzz`]: the invariants a fuzz target checks on any blob.
//!
//! # Use
//!
//! - At boot: [`read()`]`(blob)` → [`Settings`] or [`Errors`] (every error,
//!   each printing as `Configuration.<Code>: <path>: <what>, <object>`).
//! - On a runtime update: [`update::read_update`]`(blob, &current)` → the
//!   merged settings and the [`update::ChangeSet`] to apply.
//! - To write settings out: [`postcard::encode`], or
//!   [`json_out::to_json`] / [`protobuf_out::to_protobuf`] of
//!   [`wire::base_from_model`]`(&settings)`.
//!
//! # Dependencies and limits
//!
//! One: `parastor-hw`, for the [`Guid`] type the frontends share (its wire
//! layout and text form). The JSON, protobuf and postcard codecs are
//! hand-written for exact field paths and error collection (each module
//! says why). Hostile-input limits are in
//! [`json`] (size, depth, value count), [`protobuf`] (size, message count,
//! group depth), [`postcard`] (size, sequence lengths bounded by the input)
//! and [`error`] (how many errors are kept, how much of a value they quote);
//! every format accepts at most [`read::MAX_BLOB_LEN`] bytes.
//!
//! Example: `examples/check_settings.rs` prints a blob's model or errors,
//! and the change set of an update.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod error;
pub mod fuzz;
pub mod json;
pub mod json_out;
pub mod model;
pub mod postcard;
pub mod protobuf;
pub mod protobuf_out;
pub mod read;
pub mod update;
pub mod validate;
mod varint;
pub mod wire;

pub use error::{Error, ErrorCode, Errors, Object};
pub use model::Settings;
pub use parastor_hw::{Guid, ParseGuidError};
pub use read::read;

/// Sample documents (OpenHCL's) the unit tests share.
#[cfg(test)]
const TEST_SAMPLES: [&[u8]; 2] = [
    include_bytes!("../tests/data/vtl2s_test_json.json"),
    include_bytes!("../tests/data/vtl2s_test_compat.json"),
];

/// Version of the settings model this crate produces (1: the first model,
/// with [`postcard::FORMAT_VERSION`] 1 as its binary form).
pub const MODEL_VERSION: u32 = 1;
