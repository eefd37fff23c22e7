//! The host's VTL2 settings blob, decoded into a validated settings model.
//!
//! The host tells the paravisor which storage controllers the VTL0 guest
//! sees (SCSI, NVMe, IDE), the LUNs or namespaces on each, their identity
//! strings, and the backing devices behind each. The blob arrives from an
//! untrusted host, so this crate decodes it (JSON, protobuf, postcard),
//! validates every rule, and reports every error with the path of the field
//! at fault — it never panics on any input.
//!
//! The model and decoders arrive with the settings issue; this crate exists
//! now so the workspace layout, the `no_std` gate and the dependency graph
//! are fixed from the start.
#![no_std]

extern crate alloc;

/// Version of the settings model this crate produces.
pub const MODEL_VERSION: u32 = 0;
