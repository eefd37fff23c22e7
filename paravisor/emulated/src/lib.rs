//! Both in-process ends of parastor's guest-facing devices, for tests,
//! fuzzing and benchmarks.
//!
//! - [`storvsc`]: the emulated StorVSC — a guest's SCSI driver over a
//!   StorVSP channel, with the wire behaviour of real guests
//!   ([`Profile`]: current Linux, Linux before 5.19, Windows), a lean
//!   batched path that allocates nothing per request, and a test API.
//! - [`vm`]: the emulated VM around it — guest memory, ring pairs,
//!   signals, the StorVSP controller — and [`InlineHost`], which runs the
//!   StorVSP workers in the guest's thread.
//! - [`runtime_host`]: [`RuntimeHost`], which runs them on a
//!   `parastor-runtime` thread, signalled through eventfds both ways.
//! - [`nvme`]: parastor's NVMe driver over parastor's NVMe controller in
//!   one process: shared RAM that pins for direct DMA, the device-access
//!   backing with per-vector MSI-X events, and a rig that runs driver and
//!   controller on one thread.
//! - [`tcmu`]: the kernel's side of TCMU (LIO's `target_core_user`) as a
//!   model — mailbox, command ring and data area laid out as the kernel
//!   does, commands posted with padding and flow control, completions
//!   collected by command id — for the TCMU handler's tests and fuzzing.
//!
//! One guest model per protocol lives here, so that every test and the
//! benchmark exercise the same, sourced, guest behaviour.
//!
//! [`Profile`]: storvsc::Profile
//! [`InlineHost`]: vm::InlineHost
//! [`RuntimeHost`]: runtime_host::RuntimeHost
#![forbid(unsafe_code)]

pub mod nvme;
pub mod runtime_host;
pub mod storvsc;
pub mod tcmu;
pub mod vm;

pub use runtime_host::{RuntimeGuest, RuntimeHost};
pub use storvsc::{GuestConfig, Profile, Storvsc, StorvscError};
pub use vm::{InlineHost, StorvspVm, VmConfig, VmMemory};
