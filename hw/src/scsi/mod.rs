//! SCSI wire formats (SPC-5, SBC-4, MMC-6, SAM-5) and CDB parsers.
//!
//! By topic, each in its own file and all re-exported here:
//!
//! - codes: [`ScsiOp`] operation codes, service actions, [`ScsiStatus`],
//!   the [`Control`] byte;
//! - the CDB layouts of the disk commands ([`Cdb10`] and its siblings,
//!   with their flag bytes) and [`parse_cdb`] → [`Command`];
//!   [`ReportLuns::parse`] for the target's REPORT LUNS;
//! - sense: [`SenseKey`], [`AdditionalSense`], the fixed and descriptor
//!   formats and [`SenseData`];
//! - INQUIRY and the VPD pages ([`InquiryData`], [`VpdPage`], …);
//! - MODE SENSE / SELECT and the mode pages ([`ModePage`], …);
//! - READ CAPACITY, GET LBA STATUS and UNMAP parameter data;
//! - persistent reservations ([`PrInAction`], [`PrOutAction`], …);
//! - [`mmc`]: the CD/DVD commands, [`mmc::parse_mmc_cdb`] →
//!   [`mmc::MmcCommand`], and their responses.
//!
//! Parsers take any byte string (a CDB may be padded to 16 bytes by its
//! transport) and never panic; see the crate's parse contract.

mod block;
mod cdb;
mod codes;
mod command;
mod inquiry;
pub mod mmc;
mod mode;
mod pr;
mod sense;

pub use block::*;
pub use cdb::*;
pub use codes::*;
pub use command::*;
pub use inquiry::*;
pub use mode::*;
pub use pr::*;
pub use sense::*;
