//! PCI wire formats an emulated PCI Express endpoint exposes: the type-0
//! configuration header and its BAR encoding and sizing rules
//! ([`config`]), and the capability list with MSI-X and the PCI Express
//! capability ([`capability`]).
//!
//! Sources of the facts used here (layouts, values — not code): the PCI
//! Local Bus Specification 3.0, the PCI Express Base Specification, and
//! Linux `include/uapi/linux/pci_regs.h`.

pub mod capability;
pub mod config;
