//! [`Lun`]: what a SCSI transport addresses.

use crate::ScsiResult;
use crate::disk::ScsiDisk;
use crate::dvd::ScsiDvd;
use alloc::sync::Arc;
use core::fmt;
use parastor_core::{InitiatorId, SgList};

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
    ) -> ScsiResult {
        match self {
            Lun::Disk(d) => d.execute(cdb, data, initiator).await,
            Lun::Dvd(d) => d.execute(cdb, data, initiator).await,
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
    ) -> Option<ScsiResult> {
        match self {
            Lun::Disk(d) => d.execute_now(cdb, data, initiator),
            Lun::Dvd(_) => None,
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
