//! Guest-facing storage frontends and the resolver.
//!
//! The VTL0 guest reaches parastor's disks through emulated controllers:
//! StorVSP (SCSI over VMBus ring buffers) feeding a SCSI disk/DVD adapter,
//! and an NVMe controller emulator. Each frontend owns its guest protocol —
//! packets, CDBs and sense data, registers and queues — parses each guest
//! request once into a [`parastor_core::Disk`] call, and maps
//! [`parastor_core::DiskError`] back to its protocol's status through one
//! table. The resolver turns a validated settings model into running
//! controllers, at boot and at every runtime change.
//!
//! Today: the transport-independent SCSI disk and DVD adapters ([`scsi`]),
//! VMBus channels over real ring-buffer layouts in guest memory ([`vmbus`]),
//! and the StorVSP controller that serves SCSI over those channels
//! ([`storvsp`]). The NVMe emulator and the resolver arrive with their
//! issues.
#![no_std]

extern crate alloc;

pub mod scsi;
pub mod storvsp;
pub mod vmbus;

pub use parastor_core;
pub use parastor_hw;
