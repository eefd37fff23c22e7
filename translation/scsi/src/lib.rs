//! parastor's SCSI target: CDBs in, [`Disk`](parastor_core::Disk) calls
//! out, transport independent.
//!
//! A transport (StorVSP over VMBus, TCMU, …) hands a logical unit a CDB,
//! the request's data buffer as an [`SgList`](parastor_core::SgList), the
//! initiator's identity and how it delivers sense data
//! ([`SenseDelivery`]), and gets back a [`ScsiResult`] (status, sense
//! data, bytes transferred). A transport with its own limit on one
//! command's data tells the LUN when it attaches it
//! ([`Lun::limit_transfer`]), so the limit the LUN advertises is one the
//! transport can carry.
//!
//! The crate is layered:
//!
//! - the **common layer** every device type uses: [`Lun`] (what a
//!   transport addresses), [`ScsiResult`] and the one
//!   [`DiskError`](parastor_core::DiskError) → sense table
//!   ([`disk_error_result`]), moving data in and out of the request's
//!   buffer, sense data kept per initiator (unless the transport delivers
//!   it with the status, [`SenseDelivery`]), INQUIRY and MODE SENSE/SELECT
//!   framing, and the LBA range lock;
//! - the devices: [`disk`] (SBC direct-access block device, [`ScsiDisk`])
//!   and [`dvd`] (MMC CD/DVD-ROM drive, [`ScsiDvd`]), each parsing a CDB
//!   once with [`parastor_hw::scsi`] and calling the common layer — never
//!   each other.
#![no_std]

extern crate alloc;

pub mod disk;
pub mod dvd;

mod data;
mod error;
mod inquiry;
mod lock;
mod lun;
mod mode_pages;
mod result;
mod sense;
pub mod state;

pub use disk::{DEFAULT_SCRATCH_BUDGET, DiskParams, SCRATCH_CHUNK, ScsiDisk};
pub use dvd::ScsiDvd;
pub use error::disk_error_result;
pub use lun::Lun;
pub use result::ScsiResult;
pub use sense::{SENSE_SLOTS, SenseDelivery};
