//! [`Lun`]: what a SCSI transport addresses.

use crate::disk::ScsiDisk;
use crate::dvd::ScsiDvd;
use crate::{ScsiResult, SenseDelivery};
use alloc::sync::Arc;
use core::fmt;
use parastor_core::{InitiatorId, SgList};
use parastor_hw::scsi::mmc;

/// One logical unit a SCSI transport can address: a disk or a DVD drive.
///
/// An enum rather than a trait object so a transport can run a command
/// in place with no boxing; [`Lun::execute`] forwards to the device.
#[derive(Clone)]
pub enum Lun {
    /// A direct-access block device.
    Disk(Arc<ScsiDisk>),
    /// A CD/DVD-ROM drive.
    Dvd(Arc<ScsiDvd>),
}

impl Lun {
    /// Executes one command on the device; the contract of
    /// [`ScsiDisk::execute`].
    pub async fn execute(
        &self,
        cdb: &[u8],
        data: SgList<'_>,
        initiator: InitiatorId,
        delivery: SenseDelivery,
    ) -> ScsiResult {
        match self {
            Lun::Disk(d) => d.execute(cdb, data, initiator, delivery).await,
            Lun::Dvd(d) => d.execute(cdb, data, initiator, delivery).await,
        }
    }

    /// Whether a command finishes on its first poll (the backing disk, or
    /// the DVD's current medium, [completes inline]; an empty DVD drive
    /// always does).
    ///
    /// [completes inline]: parastor_core::DiskIo::completes_inline
    pub fn completes_inline(&self) -> bool {
        match self {
            Lun::Disk(d) => d.disk().completes_inline(),
            Lun::Dvd(d) => d.media().is_none_or(|m| m.completes_inline()),
        }
    }

    /// Runs the command to completion without a future when it can (see
    /// [`ScsiDisk::execute_now`]); `None`: run [`Lun::execute`] instead.
    pub fn execute_now(
        &self,
        cdb: &[u8],
        data: &SgList<'_>,
        initiator: InitiatorId,
        delivery: SenseDelivery,
    ) -> Option<ScsiResult> {
        match self {
            Lun::Disk(d) => d.execute_now(cdb, data, initiator, delivery),
            Lun::Dvd(_) => None,
        }
    }

    /// The size of the logical blocks commands address, in bytes: the
    /// disk's sector size, or the DVD's 2048-byte block.
    pub fn block_size(&self) -> u32 {
        match self {
            Lun::Disk(d) => d.disk().sector_size(),
            Lun::Dvd(_) => mmc::BLOCK_SIZE,
        }
    }

    /// Tells the device its transport's limit on one command's data, in
    /// bytes; see [`ScsiDisk::limit_transfer`]. A DVD drive reports no
    /// transfer limit (it has no block limits page) and reads what the
    /// request's buffer holds, so it has nothing to lower.
    pub fn limit_transfer(&self, bytes: u32) {
        match self {
            Lun::Disk(d) => d.limit_transfer(bytes),
            Lun::Dvd(_) => {}
        }
    }

    /// The disk, if this LUN is one.
    pub fn as_disk(&self) -> Option<&Arc<ScsiDisk>> {
        match self {
            Lun::Disk(d) => Some(d),
            Lun::Dvd(_) => None,
        }
    }

    /// The DVD drive, if this LUN is one.
    pub fn as_dvd(&self) -> Option<&Arc<ScsiDvd>> {
        match self {
            Lun::Disk(_) => None,
            Lun::Dvd(d) => Some(d),
        }
    }
}

impl fmt::Debug for Lun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lun::Disk(_) => f.write_str("Lun::Disk"),
            Lun::Dvd(_) => f.write_str("Lun::Dvd"),
        }
    }
}

impl From<Arc<ScsiDisk>> for Lun {
    fn from(d: Arc<ScsiDisk>) -> Self {
        Lun::Disk(d)
    }
}

impl From<Arc<ScsiDvd>> for Lun {
    fn from(d: Arc<ScsiDvd>) -> Self {
        Lun::Dvd(d)
    }
}
