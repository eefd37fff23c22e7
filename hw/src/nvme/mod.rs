//! NVMe wire formats: controller registers, queue entries, commands and
//! status codes, as exchanged between a host driver and an NVMe
//! controller over PCI Express.
//!
//! Split by topic: [`regs`] (the controller register map in BAR0 and the
//! doorbell stride), [`queue`] (submission and completion queue entries),
//! [`command`] (admin and NVM opcodes and each command's dwords),
//! [`data`] (PRP rules and SGL descriptors), [`features`] (feature
//! identifiers and values, asynchronous event information), [`identify`]
//! (Identify data structures), [`log`] (log pages) and
//! [`status`] (status code types and codes).
//!
//! Every integer on the wire is little-endian; layouts are zerocopy
//! structs built from zerocopy's little-endian types, dwords and registers
//! are `#[bitfield]`s, and every code a peer sends is an open enum (see the
//! crate docs). Nothing here knows about disks.
//!
//! Sources of the facts used here (layouts, values — not code): the NVM
//! Express Base Specification 2.0 and NVM Command Set Specification 1.0,
//! and Linux `include/linux/nvme.h`.

pub mod command;
pub mod data;
pub mod features;
pub mod identify;
pub mod log;
pub mod queue;
pub mod regs;
pub mod status;
