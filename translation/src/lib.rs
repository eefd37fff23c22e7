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
//! The frontends arrive with their issues; this crate exists now so the
//! workspace layout and the `no_std` gate are fixed from the start.
#![no_std]

extern crate alloc;

pub mod vmbus;

pub use parastor_core;
