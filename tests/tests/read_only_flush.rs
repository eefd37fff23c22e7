//! A flush of a read-only disk succeeds without reaching the disk, through
//! the `Disk` handle and through SCSI SYNCHRONIZE CACHE on a
//! write-protected logical unit (which still refuses writes).

use parastor_core::layered::LayeredDisk;
use parastor_core::{InitiatorId, IoOptions};
use parastor_scsi::{DiskParams, ScsiDisk, SenseDelivery};
use parastor_tests::buf::{TestBuf, block_on};
use parastor_tests::doubles::{Call, TestDisk};
use parastor_tests::stacks::{disk, layer, ram_disk};

/// SCSI status GOOD.
const GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION.
const CHECK_CONDITION: u8 = 0x02;

#[test]
fn synchronize_cache_on_a_write_protected_lun_is_good() {
    // A layer whose flushes would fail, under a read-only layered disk.
    let base = TestDisk::new(ram_disk(64, 512));
    base.fail_flushes(true);
    let read_only = LayeredDisk::new(true, vec![layer(disk(base.clone()), false, false)]).unwrap();
    let read_only = disk(read_only);
    assert!(read_only.is_read_only());
    assert_eq!(block_on(read_only.flush(IoOptions::default())), Ok(()));

    let scsi = ScsiDisk::new(read_only, DiskParams::default());
    let buf = TestBuf::contiguous(512);
    let who = InitiatorId::new(1);
    let sync10 = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let sync16 = [0x91, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for cdb in [&sync10[..], &sync16[..]] {
        let r = block_on(scsi.execute(cdb, buf.sg(true), who, SenseDelivery::RequestSense));
        assert_eq!(
            r.status.get(),
            GOOD,
            "SYNCHRONIZE CACHE {cdb:02x?}: {:?}",
            r.sense
        );
    }
    // Writes are still refused: DATA PROTECT / WRITE PROTECTED.
    let write10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let r = block_on(scsi.execute(&write10, buf.sg(false), who, SenseDelivery::RequestSense));
    assert_eq!(r.status.get(), CHECK_CONDITION);
    let sense = r.sense.expect("sense with CHECK CONDITION");
    assert_eq!(
        (
            sense.key.get(),
            sense.additional.asc(),
            sense.additional.ascq()
        ),
        (0x07, 0x27, 0x00)
    );
    // No flush reached the layer (it would have failed).
    assert!(!base.take_calls().contains(&Call::Flush));
}
