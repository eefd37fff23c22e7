//! [`Lun`]: what a SCSI transport addresses.

use crate::disk::{Now, ScsiDisk};
use crate::dvd::ScsiDvd;
use crate::{ScsiResult, SenseDelivery, disk_error_result};
use alloc::sync::Arc;
use core::fmt;
use parastor_core::bounce::BouncePool;
use parastor_core::{InitiatorId, SgList, if_inline, poll_inline};
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

    /// Runs the command to completion in place, with no future kept, when
    /// the device [completes inline] (the backing disk, or the DVD's
    /// current medium; an empty DVD drive always does): READ and WRITE on a
    /// disk through [`ScsiDisk::execute_now`], anything else by polling
    /// [`Lun::execute`] once. A device that breaks its promise fails the
    /// command as a device error instead of hanging the transport. `None`,
    /// with nothing done, when the device may wait, or the command may
    /// wait for another command's overlapping range of blocks (a WRITE
    /// under a COMPARE AND WRITE on another channel): run [`Lun::execute`].
    ///
    /// The inline decision is core's one [`if_inline`]; transports call
    /// this rather than deciding themselves.
    ///
    /// [completes inline]: parastor_core::DiskIo::completes_inline
    pub fn run_now(
        &self,
        cdb: &[u8],
        data: &SgList<'_>,
        initiator: InitiatorId,
        delivery: SenseDelivery,
    ) -> Option<ScsiResult> {
        let whole = || {
            poll_inline(self.execute(cdb, *data, initiator, delivery))
                .unwrap_or_else(|e| disk_error_result(&e))
        };
        match self {
            Lun::Disk(d) => d
                .disk()
                .run_now(|_| match d.read_write_now(cdb, data, initiator, delivery) {
                    Now::Done(r) => Some(r),
                    Now::Waits => None,
                    Now::Other => Some(whole()),
                })
                .flatten(),
            Lun::Dvd(d) => if_inline(d.media().is_none_or(|m| m.completes_inline()), whole),
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

    /// Gives the device its transport's scratch pool; see
    /// [`ScsiDisk::use_scratch`]. A DVD drive needs no scratch memory.
    pub fn use_scratch(&self, pool: &BouncePool) {
        match self {
            Lun::Disk(d) => d.use_scratch(pool),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskParams;
    use parastor_core::Gpa;
    use parastor_core::{
        Disk, DiskError, DiskIo, GpaRange, IoOptions, RamGuestMemory, UnmapBehavior,
    };
    use parastor_hw::scsi::{AdditionalSense, ScsiStatus, SenseKey};

    /// A disk that promises to complete inline (or not) and never does.
    struct Liar {
        inline: bool,
    }

    impl DiskIo for Liar {
        fn kind(&self) -> &'static str {
            "liar"
        }
        fn sector_count(&self) -> u64 {
            64
        }
        fn sector_size(&self) -> u32 {
            512
        }
        fn is_read_only(&self) -> bool {
            false
        }
        fn is_fua_respected(&self) -> bool {
            false
        }
        fn unmap_behavior(&self) -> UnmapBehavior {
            UnmapBehavior::Ignored
        }
        fn completes_inline(&self) -> bool {
            self.inline
        }
        async fn read(&self, _: SgList<'_>, _: u64, _: IoOptions) -> Result<(), DiskError> {
            core::future::pending().await
        }
        async fn write(&self, _: SgList<'_>, _: u64, _: IoOptions) -> Result<(), DiskError> {
            core::future::pending().await
        }
        async fn flush(&self, _: IoOptions) -> Result<(), DiskError> {
            core::future::pending().await
        }
        async fn unmap(&self, _: u64, _: u64, _: IoOptions) -> Result<(), DiskError> {
            core::future::pending().await
        }
    }

    fn lun(inline: bool) -> Lun {
        let disk = Disk::new(Liar { inline }).unwrap();
        Lun::Disk(Arc::new(ScsiDisk::new(disk, DiskParams::default())))
    }

    /// `run_now` runs a command in place only on a device that completes
    /// inline, and a device that breaks that promise fails the command as
    /// a device error — for READ (the `execute_now` path) and for any other
    /// command (polled once) alike — instead of hanging the transport.
    #[test]
    fn run_now_keeps_the_inline_promise_or_fails_the_command() {
        let mem = RamGuestMemory::new(8192);
        let ranges = [GpaRange::new(Gpa::new(0), 512)];
        let sg = SgList::new(&mem, &ranges, true).unwrap();
        let read10 = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];
        let sync10 = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let who = InitiatorId::new(1);
        let d = SenseDelivery::Autosense;

        let waits = lun(false);
        assert_eq!(waits.run_now(&read10, &sg, who, d), None);
        assert_eq!(waits.run_now(&sync10, &sg, who, d), None);

        let liar = lun(true);
        for cdb in [&read10[..], &sync10[..]] {
            let r = liar.run_now(cdb, &sg, who, d).expect("run in place");
            assert_eq!(r.status, ScsiStatus::CHECK_CONDITION, "{cdb:02x?}");
            let sense = r.sense.expect("sense");
            assert_eq!(sense.key, SenseKey::HARDWARE_ERROR);
            assert_eq!(sense.additional, AdditionalSense::INTERNAL_TARGET_FAILURE);
        }
    }
}
