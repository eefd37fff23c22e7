//! The guest-facing NVMe controller: one PCI Express function whose BAR0
//! holds the NVMe registers and doorbells, whose queues live in guest
//! memory, and whose namespaces are parastor [`Disk`]s.
//!
//! [`Disk`]: parastor_core::Disk
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod data;
mod error;
mod io;
