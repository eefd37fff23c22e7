//! [`ScsiDisk`] save and restore; the format is [`ScsiDiskV1`].

use super::ScsiDisk;
use crate::state::{ScsiDiskV1, restore_sense, save_sense};
use alloc::format;
use core::sync::atomic::Ordering;
use parastor_core::state::{InvalidState, SaveError, Versioned};

impl ScsiDisk {
    /// The disk's state, for servicing. Refused with [`SaveError::Busy`]
    /// while any command holds or waits for an LBA range: save after the
    /// transport has drained every command.
    pub fn save(&self) -> Result<ScsiDiskV1, SaveError> {
        let (held, waiting) = self.ranges.usage();
        if held != 0 || waiting != 0 {
            return Err(SaveError::Busy {
                component: ScsiDiskV1::COMPONENT,
                what: format!(
                    "{held} commands hold an LBA range and {waiting} wait for one; save after the transport's drain"
                ),
            });
        }
        Ok(ScsiDiskV1 {
            sense: save_sense(self.sense.snapshot()),
            known_sectors: self.last_sector_count.load(Ordering::Acquire),
        })
    }

    /// Restores `saved` into this disk, built from the current settings
    /// and not yet given a command: its pending sense and the capacity the
    /// initiators last heard of (if the disk's size differs now, the next
    /// command reports CAPACITY DATA HAS CHANGED, as it would have before
    /// the restart). Everything is checked before anything changes.
    pub fn restore(&self, saved: &ScsiDiskV1) -> Result<(), InvalidState> {
        let sense = restore_sense("sense", &saved.sense)?;
        self.sense.replace(&sense);
        self.last_sector_count
            .store(saved.known_sectors, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::disk::tests::{rw10, with_buffer};
    use crate::state::{ScsiDiskV1, SenseEntryV1, SenseV1};
    use crate::{DiskParams, SENSE_SLOTS, ScsiDisk, ScsiResult, SenseDelivery};
    use alloc::vec::Vec;
    use futures::executor::block_on;
    use parastor_core::ram::RamDisk;
    use parastor_core::{Disk, InitiatorId, RamGuestMemory};
    use parastor_hw::scsi::{ScsiOp, ScsiStatus};

    const A: InitiatorId = InitiatorId::new(0xA);
    const B: InitiatorId = InitiatorId::new(0xB);

    fn run(mem: &RamGuestMemory, d: &ScsiDisk, who: InitiatorId, cdb: &[u8]) -> ScsiResult {
        with_buffer(mem, &[], 4096, |sg| {
            block_on(d.execute(cdb, sg, who, SenseDelivery::RequestSense))
        })
        .0
    }

    /// (key, asc, ascq) REQUEST SENSE reports for `who`.
    fn request_sense(mem: &RamGuestMemory, d: &ScsiDisk, who: InitiatorId) -> (u8, u8, u8) {
        let cdb = [ScsiOp::REQUEST_SENSE.get(), 0, 0, 0, 18, 0];
        let (r, data) = with_buffer(mem, &[], 18, |sg| {
            block_on(d.execute(&cdb, sg, who, SenseDelivery::RequestSense))
        });
        assert_eq!(r.status, ScsiStatus::GOOD);
        (data[2] & 0xF, data[12], data[13])
    }

    /// Pending sense per initiator and a pending capacity unit attention
    /// survive save → blob → restore into a fresh adapter over the same
    /// disk; a fresh adapter without the restore would report neither.
    #[test]
    fn round_trip_keeps_sense_and_unit_attention() {
        let mem = RamGuestMemory::new(1 << 20);
        let ram = RamDisk::new(64 * 512, 512).unwrap();
        let disk = Disk::new(ram.clone()).unwrap();
        let old = ScsiDisk::new(disk.clone(), DiskParams::default());
        // A: LBA out of range; B: an unknown opcode.
        let r = run(&mem, &old, A, &rw10(ScsiOp::READ10.get(), 0, 1000, 1));
        assert_eq!(r.status, ScsiStatus::CHECK_CONDITION);
        let r = run(&mem, &old, B, &[0xFF, 0, 0, 0, 0, 0]);
        assert_eq!(r.status, ScsiStatus::CHECK_CONDITION);
        ram.resize(128);

        let saved = old.save().unwrap();
        assert_eq!(saved.known_sectors, 64);
        assert_eq!(saved.sense.len(), 2);
        assert_eq!(saved.sense[0].initiator, A.to_bytes(), "oldest first");
        let blob = parastor_core::state::encode(&saved).unwrap();

        let fresh = ScsiDisk::new(disk.clone(), DiskParams::default());
        parastor_core::state::restore::<ScsiDiskV1, _>(&blob, |s| fresh.restore(&s)).unwrap();
        assert_eq!(fresh.save().unwrap(), saved);
        // The unit attention first (to whoever comes first), then each
        // initiator's own sense.
        let tur = [0u8; 6];
        let c = InitiatorId::new(0xC);
        let r = run(&mem, &fresh, c, &tur);
        let s = r.sense.expect("unit attention");
        assert_eq!((s.key.get(), s.additional.asc()), (6, 0x2A));
        assert_eq!(request_sense(&mem, &fresh, A), (5, 0x21, 0));
        assert_eq!(request_sense(&mem, &fresh, B), (5, 0x20, 0));
        assert_eq!(request_sense(&mem, &fresh, A), (0, 0, 0));

        let unrestored = ScsiDisk::new(disk, DiskParams::default());
        assert_eq!(run(&mem, &unrestored, B, &tur).status, ScsiStatus::GOOD);
        assert_eq!(request_sense(&mem, &unrestored, A), (0, 0, 0));
    }

    /// A save while a command holds an LBA range is refused, saying so.
    #[test]
    fn save_refuses_held_ranges() {
        let ram = RamDisk::new(64 * 512, 512).unwrap();
        let d = ScsiDisk::new(Disk::new(ram).unwrap(), DiskParams::default());
        let guard = d.ranges.try_shared(0, 8).unwrap();
        let e = d.save().unwrap_err();
        let msg = alloc::string::ToString::to_string(&e);
        assert!(msg.contains("1 commands hold an LBA range"), "{msg}");
        assert!(msg.contains("scsi-disk"), "{msg}");
        drop(guard);
        assert!(d.save().is_ok());
    }

    /// Invalid sense tables are refused with the field named, and nothing
    /// is applied.
    #[test]
    fn restore_refuses_invalid_sense() {
        let entry = |who: u128, key| SenseEntryV1 {
            initiator: InitiatorId::new(who).to_bytes(),
            sense: SenseV1 {
                key,
                asc: 0x24,
                ascq: 0,
                information: None,
            },
        };
        let cases: [(&str, Vec<SenseEntryV1>); 3] = [
            (
                "sense",
                (0..=SENSE_SLOTS as u128).map(|i| entry(i, 5)).collect(),
            ),
            ("sense[1].initiator", alloc::vec![entry(1, 5), entry(1, 6)]),
            ("sense[0].sense.key", alloc::vec![entry(1, 0x10)]),
        ];
        let ram = RamDisk::new(64 * 512, 512).unwrap();
        let d = ScsiDisk::new(Disk::new(ram).unwrap(), DiskParams::default());
        for (field, sense) in cases {
            let bad = ScsiDiskV1 {
                sense,
                known_sectors: 7,
            };
            assert_eq!(d.restore(&bad).unwrap_err().field, field);
            assert_eq!(
                d.save().unwrap(),
                ScsiDiskV1 {
                    sense: Vec::new(),
                    known_sectors: 64
                }
            );
        }
    }
}
