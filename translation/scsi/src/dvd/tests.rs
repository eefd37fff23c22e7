//! Tests of the DVD drive.

use super::*;
use crate::disk::tests::{rw10, with_buffer};
use alloc::vec;
use futures::executor::block_on;
use parastor_core::Gpa;
use parastor_core::ram::RamDisk;
use parastor_core::{GpaRange, GuestMemory, RamGuestMemory};
use parastor_hw::scsi::mmc::MediaEventCode;
use parastor_hw::scsi::{ScsiOp, ScsiStatus};
const A: InitiatorId = InitiatorId::new(0xA);

struct Env {
    mem: RamGuestMemory,
    dvd: ScsiDvd,
    /// How the commands [`Env::run_as`] issues deliver their sense.
    delivery: SenseDelivery,
}

/// A medium of `blocks` DVD blocks over `ss`-byte sectors, filled
/// with a pattern.
fn medium(ss: u32, blocks: u64) -> (RamDisk, Disk) {
    let ram = RamDisk::new(blocks * BLOCK, ss).unwrap();
    let disk = Disk::new(ram.clone()).unwrap();
    let ranges = [GpaRange::new(Gpa::new(0), blocks * BLOCK)];
    let mem = parastor_core::LocalMemory::new((blocks * BLOCK) as usize);
    let bytes = pattern((blocks * BLOCK) as usize, 7);
    mem.write_at(Gpa::new(0), &bytes).unwrap();
    let one = [ranges[0]];
    block_on(disk.write(SgList::local(&mem, &one, false), 0, IoOptions::default())).unwrap();
    (ram, disk)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 3) as u8).wrapping_mul(29) ^ seed ^ (i >> 11) as u8)
        .collect()
}

fn env(media: Option<Disk>) -> Env {
    Env {
        mem: RamGuestMemory::new(16 << 20),
        dvd: ScsiDvd::new(media).unwrap(),
        delivery: SenseDelivery::RequestSense,
    }
}

fn loaded() -> Env {
    env(Some(medium(2048, 64).1))
}

impl Env {
    fn run(&self, cdb: &[u8], out: &[u8], len: usize) -> (ScsiResult, Vec<u8>) {
        self.run_as(A, cdb, out, len)
    }

    fn run_as(
        &self,
        who: InitiatorId,
        cdb: &[u8],
        out: &[u8],
        len: usize,
    ) -> (ScsiResult, Vec<u8>) {
        with_buffer(&self.mem, out, len, |sg| {
            block_on(self.dvd.execute(cdb, sg, who, self.delivery))
        })
    }

    fn ok(&self, cdb: &[u8], len: usize) -> Vec<u8> {
        let (r, data) = self.run(cdb, &[], len);
        assert_eq!(r.status, ScsiStatus::GOOD, "{cdb:02x?}: {r:?}");
        data[..r.tx.min(len)].to_vec()
    }

    fn sense(&self, cdb: &[u8], len: usize) -> (u8, u8, u8) {
        let (r, _) = self.run(cdb, &[], len);
        assert_eq!(r.status, ScsiStatus::CHECK_CONDITION, "{cdb:02x?}: {r:?}");
        let s = r.sense.unwrap();
        (s.key.get(), s.additional.asc(), s.additional.ascq())
    }

    fn gesn(&self) -> (u8, u8) {
        let d = self.ok(&gesn_cdb(0x10, 8), 8);
        assert_eq!(d.len(), 8);
        assert_eq!(&d[..4], &[0, 6, 4, 0x10]);
        (d[4] & 0xF, d[5])
    }
}

fn cdb10(op: u8, b1: u8, alloc: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[1] = b1;
    c[7..9].copy_from_slice(&alloc.to_be_bytes());
    c
}

fn gesn_cdb(class: u8, alloc: u16) -> [u8; 10] {
    let mut c = cdb10(ScsiOp::GET_EVENT_STATUS_NOTIFICATION.get(), 1, alloc);
    c[4] = class;
    c
}

fn read10(lba: u32, len: u16) -> [u8; 10] {
    rw10(ScsiOp::READ10.get(), 0, lba, len)
}

const TUR: [u8; 6] = [0; 6];

#[test]
fn request_sense_is_per_initiator() {
    const B: InitiatorId = InitiatorId::new(0xB);
    let e = loaded();
    let rs = [ScsiOp::REQUEST_SENSE.get(), 0, 0, 0, 18, 0];
    let sense_as = |who| {
        let (r, d) = e.run_as(who, &rs, &[], 18);
        assert_eq!(r.status, ScsiStatus::GOOD);
        let s = SenseData::parse(&d).unwrap();
        (s.key.get(), s.additional.asc(), s.additional.ascq())
    };
    assert_eq!(
        e.run_as(A, &read10(63, 2), &[], 4096)
            .0
            .sense
            .unwrap()
            .additional
            .asc(),
        0x21
    );
    let (r, _) = e.run_as(B, &[0x02, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(r.sense.unwrap().additional.asc(), 0x20);
    assert_eq!(sense_as(InitiatorId::new(0xC)), (0, 0, 0));
    assert_eq!(sense_as(B), (5, 0x20, 0));
    assert_eq!(sense_as(A), (5, 0x21, 0));
    assert_eq!(sense_as(A), (0, 0, 0));
    assert_eq!(sense_as(B), (0, 0, 0));
}

const EJECT: [u8; 6] = [ScsiOp::START_STOP_UNIT.get(), 0, 0, 0, 0x02, 0];
const LOAD: [u8; 6] = [ScsiOp::START_STOP_UNIT.get(), 0, 0, 0, 0x03, 0];
const PREVENT: [u8; 6] = [ScsiOp::PREVENT_ALLOW_MEDIUM_REMOVAL.get(), 0, 0, 0, 1, 0];
const ALLOW: [u8; 6] = [ScsiOp::PREVENT_ALLOW_MEDIUM_REMOVAL.get(), 0, 0, 0, 0, 0];
const NO_MEDIUM_CLOSED: (u8, u8, u8) = (2, 0x3A, 1);
const NO_MEDIUM_OPEN: (u8, u8, u8) = (2, 0x3A, 2);

#[test]
fn inquiry_standard_and_vpd() {
    let e = env(None);
    let d = e.ok(&[ScsiOp::INQUIRY.get(), 0, 0, 0, 96, 0], 96);
    assert_eq!(d[0], 5);
    assert_eq!(d[1], 0x80);
    assert_eq!(&d[16..32], b"Virtual DVD-ROM ");
    let d = e.ok(&[ScsiOp::INQUIRY.get(), 1, 0, 0, 64, 0], 64);
    assert_eq!(d, [5, 0, 0, 2, 0x00, 0x83]);
    // Device identification: one T10 vendor ID designator, binary code
    // set (1; the device id is 16 raw bytes), associated with the LU.
    let d = e.ok(&[ScsiOp::INQUIRY.get(), 1, 0x83, 0, 64, 0], 64);
    let mut want = vec![5, 0x83, 0, 28, 1, 1, 0, 24];
    want.extend_from_slice(b"Msft    ");
    want.extend_from_slice(&[0; 16]);
    assert_eq!(d, want);
    let id: [u8; 16] = core::array::from_fn(|i| 0xF0 - i as u8);
    let custom = Env {
        dvd: ScsiDvd::with_params(
            None,
            DvdParams {
                vendor: *b"Vendor1 ",
                device_id: id,
                ..DvdParams::default()
            },
        )
        .unwrap(),
        ..env(None)
    };
    let d = custom.ok(&[ScsiOp::INQUIRY.get(), 1, 0x83, 0, 64, 0], 64);
    assert_eq!(&d[..8], &[5, 0x83, 0, 28, 1, 1, 0, 24]);
    assert_eq!(&d[8..16], b"Vendor1 ");
    assert_eq!(&d[16..], &id);
    assert_eq!(
        e.sense(&[ScsiOp::INQUIRY.get(), 1, 0xB0, 0, 64, 0], 64),
        (5, 0x24, 0)
    );
}

/// With autosense, a failure's sense comes back with the status only:
/// REQUEST SENSE after it reports the drive's state (NO SENSE with a
/// medium, NOT READY without), not the failure again.
#[test]
fn autosense_is_not_reported_again() {
    let rs = [ScsiOp::REQUEST_SENSE.get(), 0, 0, 0, 18, 0];
    let mut e = loaded();
    e.delivery = SenseDelivery::Autosense;
    // Past the end of the medium: the sense comes with the status...
    assert_eq!(e.sense(&read10(63, 2), 4096), (5, 0x21, 0));
    // ...and is not pending afterwards.
    let d = e.ok(&rs, 18);
    assert_eq!((d[2], d[12], d[13]), (0, 0, 0));
    // A failure kept for REQUEST SENSE is cleared by a later failure
    // delivered by autosense (the newest sense replaces it).
    e.delivery = SenseDelivery::RequestSense;
    assert_eq!(e.sense(&[0x02, 0, 0, 0, 0, 0], 0), (5, 0x20, 0));
    e.delivery = SenseDelivery::Autosense;
    assert_eq!(e.sense(&read10(63, 2), 4096), (5, 0x21, 0));
    let d = e.ok(&rs, 18);
    assert_eq!((d[2], d[12], d[13]), (0, 0, 0));
    // The medium's UNIT ATTENTION: delivered once with the first command,
    // then neither pending nor reported again.
    e.dvd.change_media(Some(medium(2048, 8).1)).unwrap();
    assert_eq!(e.sense(&TUR, 0), (6, 0x28, 0));
    let d = e.ok(&rs, 18);
    assert_eq!((d[2], d[12], d[13]), (0, 0, 0));
    e.ok(&TUR, 0);
    // REQUEST SENSE still reports a pending UNIT ATTENTION with GOOD.
    e.dvd.change_media(Some(medium(2048, 8).1)).unwrap();
    let d = e.ok(&rs, 18);
    assert_eq!((d[2], d[12], d[13]), (6, 0x28, 0));
    e.ok(&TUR, 0);
    // Without a medium REQUEST SENSE reports the drive's NOT READY state,
    // whatever was delivered before.
    let empty = Env {
        delivery: SenseDelivery::Autosense,
        ..env(None)
    };
    assert_eq!(empty.sense(&read10(0, 1), 2048), NO_MEDIUM_CLOSED);
    let d = empty.ok(&rs, 18);
    assert_eq!((d[2], d[12], d[13]), NO_MEDIUM_CLOSED);
}

#[test]
fn test_unit_ready_and_capacity() {
    let e = loaded();
    e.ok(&TUR, 0);
    let d = e.ok(&cdb10(ScsiOp::READ_CAPACITY10.get(), 0, 0), 8);
    assert_eq!(d, [0, 0, 0, 63, 0, 0, 8, 0]);
}

#[test]
fn no_medium_errors() {
    let e = env(None);
    assert_eq!(e.sense(&TUR, 0), NO_MEDIUM_CLOSED);
    assert_eq!(e.sense(&read10(0, 1), 2048), NO_MEDIUM_CLOSED);
    assert_eq!(
        e.sense(&cdb10(ScsiOp::READ_CAPACITY10.get(), 0, 0), 8),
        NO_MEDIUM_CLOSED
    );
    assert_eq!(
        e.sense(&cdb10(ScsiOp::READ_TOC.get(), 0, 12), 12),
        NO_MEDIUM_CLOSED
    );
    assert_eq!(
        e.sense(&cdb10(ScsiOp::READ_DISC_INFORMATION.get(), 0, 34), 34),
        NO_MEDIUM_CLOSED
    );
    // REQUEST SENSE reports the last failure, then the current state.
    let d = e.ok(&[ScsiOp::REQUEST_SENSE.get(), 0, 0, 0, 18, 0], 18);
    assert_eq!((d[2], d[12], d[13]), (2, 0x3A, 1));
    let d = e.ok(&[ScsiOp::REQUEST_SENSE.get(), 0, 0, 0, 18, 0], 18);
    assert_eq!((d[2], d[12], d[13]), (2, 0x3A, 1));
    // GET CONFIGURATION works without a medium: no current profile.
    let d = e.ok(&cdb10(ScsiOp::GET_CONFIGURATION.get(), 0, 512), 512);
    assert_eq!(&d[6..8], &[0, 0]);
    // GESN reports no event, no medium.
    assert_eq!(e.gesn(), (0, 0));
}

#[test]
fn reads_10_12_16() {
    let (_, disk) = medium(2048, 64);
    let want = pattern((64 * BLOCK) as usize, 7);
    let e = env(Some(disk));
    assert_eq!(e.ok(&read10(3, 2), 4096), &want[3 * 2048..5 * 2048]);
    let mut c12 = [0u8; 12];
    c12[0] = ScsiOp::READ12.get();
    c12[2..6].copy_from_slice(&5u32.to_be_bytes());
    c12[6..10].copy_from_slice(&1u32.to_be_bytes());
    assert_eq!(e.ok(&c12, 2048), &want[5 * 2048..6 * 2048]);
    let mut c16 = [0u8; 16];
    c16[0] = ScsiOp::READ16.get();
    c16[2..10].copy_from_slice(&63u64.to_be_bytes());
    c16[10..14].copy_from_slice(&1u32.to_be_bytes());
    assert_eq!(e.ok(&c16, 2048), &want[63 * 2048..]);
    assert_eq!(e.sense(&read10(63, 2), 4096), (5, 0x21, 0));
    assert_eq!(e.sense(&read10(0, 2), 2048), (5, 0x24, 0));
    assert_eq!(e.ok(&read10(0, 0), 0), Vec::<u8>::new());
}

#[test]
fn lba_scaling_over_512_and_1024_byte_backends() {
    for ss in [512, 1024] {
        let (ram, disk) = medium(ss, 16);
        let e = env(Some(disk));
        let d = e.ok(&cdb10(ScsiOp::READ_CAPACITY10.get(), 0, 0), 8);
        assert_eq!(d, [0, 0, 0, 15, 0, 0, 8, 0]);
        let got = e.ok(&read10(5, 3), 3 * 2048);
        // The backend's own bytes at sectors 5 * 2048 / ss ...
        let backend = Disk::new(ram).unwrap();
        let mem = parastor_core::LocalMemory::new(3 * 2048);
        let r = [GpaRange::new(Gpa::new(0), 3 * 2048)];
        block_on(backend.read(
            SgList::local(&mem, &r, true),
            5 * u64::from(2048 / ss),
            IoOptions::default(),
        ))
        .unwrap();
        let mut want = vec![0u8; 3 * 2048];
        mem.read_at(Gpa::new(0), &mut want).unwrap();
        assert_eq!(got, want, "ss {ss}");
        assert_eq!(got, pattern(16 * 2048, 7)[5 * 2048..8 * 2048]);
    }
}

#[test]
fn large_backend_sectors_are_refused() {
    let big = Disk::new(RamDisk::new(1 << 20, 4096).unwrap()).unwrap();
    assert_eq!(
        ScsiDvd::new(Some(big.clone())).err(),
        Some(DvdError::UnsupportedSectorSize(4096))
    );
    let e = loaded();
    assert_eq!(
        e.dvd.change_media(Some(big)),
        Err(DvdError::UnsupportedSectorSize(4096))
    );
    // Unchanged.
    e.ok(&TUR, 0);
    assert!(e.dvd.media().is_some());
}

#[test]
fn media_change_events_sequence() {
    let e = env(None);
    assert_eq!(e.gesn(), (0, 0));
    e.dvd.change_media(Some(medium(2048, 8).1)).unwrap();
    // New media, reported once.
    assert_eq!(e.gesn(), (MediaEventCode::NEW_MEDIA.get(), 2));
    assert_eq!(e.gesn(), (MediaEventCode::NO_CHANGE.get(), 2));
    // Unit attention once, then ready.
    assert_eq!(e.sense(&TUR, 0), (6, 0x28, 0));
    e.ok(&TUR, 0);
    e.ok(&read10(0, 1), 2048);
    // Host removal.
    e.dvd.change_media(None).unwrap();
    assert_eq!(e.gesn(), (MediaEventCode::MEDIA_REMOVAL.get(), 0));
    assert_eq!(e.gesn(), (MediaEventCode::NO_CHANGE.get(), 0));
    assert_eq!(e.sense(&TUR, 0), NO_MEDIUM_CLOSED);
    // Eject button.
    e.dvd.change_media(Some(medium(2048, 8).1)).unwrap();
    // REQUEST SENSE reports and clears the unit attention.
    let d = e.ok(&[ScsiOp::REQUEST_SENSE.get(), 0, 0, 0, 18, 0], 18);
    assert_eq!((d[2], d[12], d[13]), (6, 0x28, 0));
    e.ok(&TUR, 0);
    e.dvd.request_eject();
    assert_eq!(e.gesn(), (MediaEventCode::EJECT_REQUEST.get(), 2));
    // Without the media class requested: no event available.
    let d = e.ok(&gesn_cdb(0x02, 8), 8);
    assert_eq!(d, [0, 2, 0x80, 0x10]);
    // Asynchronous mode is not supported.
    let mut c = gesn_cdb(0x10, 8);
    c[1] = 0;
    assert_eq!(e.sense(&c, 8), (5, 0x24, 0));
}

#[test]
fn eject_without_prevent() {
    let e = loaded();
    e.ok(&EJECT, 0);
    assert!(e.dvd.media().is_none());
    assert_eq!(e.sense(&TUR, 0), NO_MEDIUM_OPEN);
    assert_eq!(e.gesn(), (MediaEventCode::MEDIA_REMOVAL.get(), 1));
    let mut ms = [0u8; 12];
    ms[0] = ScsiOp::MECHANISM_STATUS.get();
    ms[9] = 8;
    assert_eq!(e.ok(&ms, 8)[1], 0x10);
    // Closing the tray: still no medium, tray closed.
    e.ok(&LOAD, 0);
    assert_eq!(e.sense(&TUR, 0), NO_MEDIUM_CLOSED);
    assert_eq!(e.ok(&ms, 8)[1], 0);
}

#[test]
fn eject_with_prevent() {
    let e = loaded();
    e.ok(&PREVENT, 0);
    assert_eq!(e.sense(&EJECT, 0), (5, 0x53, 2));
    e.ok(&TUR, 0);
    assert!(e.dvd.media().is_some());
    e.ok(&ALLOW, 0);
    e.ok(&EJECT, 0);
    assert_eq!(e.sense(&TUR, 0), NO_MEDIUM_OPEN);
    // Stop without LoEj, and power conditions, do nothing.
    let e = loaded();
    e.ok(&[ScsiOp::START_STOP_UNIT.get(), 0, 0, 0, 0, 0], 0);
    e.ok(&[ScsiOp::START_STOP_UNIT.get(), 0, 0, 0, 0x32, 0], 0);
    e.ok(&TUR, 0);
}

#[test]
fn get_configuration_features() {
    let e = loaded();
    let d = e.ok(&cdb10(ScsiOp::GET_CONFIGURATION.get(), 0, 1024), 1024);
    let len = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
    assert_eq!(len + 4, d.len());
    assert_eq!(&d[6..8], &[0, 0x10]);
    // Walk the descriptors.
    let mut codes = Vec::new();
    let mut p = &d[8..];
    while !p.is_empty() {
        let code = u16::from_be_bytes([p[0], p[1]]);
        let n = usize::from(p[3]);
        assert_eq!(n % 4, 0);
        codes.push((code, p[2] & 1));
        p = &p[4 + n..];
    }
    assert_eq!(
        codes,
        [(0, 1), (1, 1), (2, 1), (3, 1), (0x10, 1), (0x1F, 1)]
    );
    // Profile list: DVD-ROM current, CD-ROM not.
    assert_eq!(&d[12..20], &[0, 0x10, 1, 0, 0, 0x08, 0, 0]);
    // RT = 2: only the requested feature.
    let mut c = cdb10(ScsiOp::GET_CONFIGURATION.get(), 2, 64);
    c[3] = 0x1F;
    let d = e.ok(&c, 64);
    assert_eq!(d.len(), 12);
    assert_eq!(&d[8..10], &[0, 0x1F]);
    assert_eq!(
        e.sense(&cdb10(ScsiOp::GET_CONFIGURATION.get(), 3, 64), 64),
        (5, 0x24, 0)
    );
    // RT = 1 without medium: no random-readable / DVD-read.
    let e = env(None);
    let d = e.ok(&cdb10(ScsiOp::GET_CONFIGURATION.get(), 1, 1024), 1024);
    assert_eq!(d.len(), 8 + 12 + 12 + 8 + 8);
}

#[test]
fn read_toc_lba_and_msf() {
    let e = loaded();
    let d = e.ok(&cdb10(ScsiOp::READ_TOC.get(), 0, 64), 64);
    assert_eq!(d.len(), 20);
    assert_eq!(&d[..4], &[0, 18, 1, 1]);
    assert_eq!(&d[4..12], &[0, 0x14, 1, 0, 0, 0, 0, 0]);
    assert_eq!(&d[12..20], &[0, 0x14, 0xAA, 0, 0, 0, 0, 64]);
    let d = e.ok(&cdb10(ScsiOp::READ_TOC.get(), 2, 64), 64);
    assert_eq!(&d[8..12], &[0, 0, 2, 0]);
    assert_eq!(&d[16..20], &[0, 0, 2, 64]);
    let mut c = cdb10(ScsiOp::READ_TOC.get(), 0, 64);
    c[6] = 0xAA;
    assert_eq!(e.ok(&c, 64).len(), 12);
    c[6] = 2;
    assert_eq!(e.sense(&c, 64), (5, 0x24, 0));
    let mut c = cdb10(ScsiOp::READ_TOC.get(), 0, 64);
    c[2] = 1;
    assert_eq!(e.ok(&c, 64).len(), 12);
    c[2] = 2;
    assert_eq!(e.sense(&c, 64), (5, 0x24, 0));
    assert_eq!(msf(75 * 60 * 2 + 75 * 3 + 4 - 150), [0, 2, 3, 4]);
}

#[test]
fn mode_sense_and_select() {
    let e = loaded();
    let ms = |pc_page: u8| {
        let mut c = cdb10(ScsiOp::MODE_SENSE10.get(), 0, 255);
        c[2] = pc_page;
        c
    };
    for page in [0x01, 0x1A, 0x1D] {
        let d = e.ok(&ms(page), 255);
        assert_eq!(d.len(), 20);
        assert_eq!(&d[..2], &[0, 18]);
        assert_eq!(&d[8..10], &[page, 0x0A]);
    }
    let all = e.ok(&ms(0x3F), 255);
    assert_eq!(all.len(), 8 + 36);
    assert_eq!(e.sense(&ms(0xC0 | 0x01), 255), (5, 0x39, 0));
    assert_eq!(e.sense(&ms(0x08), 255), (5, 0x24, 0));
    let changeable = e.ok(&ms(0x40 | 0x01), 255);
    assert!(changeable[10..].iter().all(|&b| b == 0));
    // MODE SELECT of what MODE SENSE returned (data length zeroed).
    let mut list = all.clone();
    list[0] = 0;
    list[1] = 0;
    let mut c = cdb10(ScsiOp::MODE_SELECT10.get(), 0x10, list.len() as u16);
    let (r, _) = e.run(&c, &list, list.len());
    assert_eq!(r.status, ScsiStatus::GOOD, "{r:?}");
    // Unknown page → invalid field in parameter list.
    list[8] = 0x08;
    let (r, _) = e.run(&c, &list, list.len());
    assert_eq!(
        r.sense.map(|s| (s.key.get(), s.additional.asc())),
        Some((5, 0x26))
    );
    // SP → invalid field in CDB.
    c[1] = 0x11;
    assert_eq!(e.sense(&c, list.len()), (5, 0x24, 0));
}

#[test]
fn disc_track_structure_and_misc() {
    let e = loaded();
    let d = e.ok(&cdb10(ScsiOp::READ_DISC_INFORMATION.get(), 0, 34), 34);
    assert_eq!(&d[..4], &[0, 32, 0x0E, 1]);
    let mut c = cdb10(ScsiOp::READ_TRACK_INFORMATION.get(), 1, 48);
    c[5] = 1;
    let d = e.ok(&c, 48);
    assert_eq!(&d[..4], &[0, 46, 1, 1]);
    assert_eq!(&d[24..28], &64u32.to_be_bytes());
    c[5] = 2;
    assert_eq!(e.sense(&c, 48), (5, 0x24, 0));
    // READ DVD STRUCTURE format 0.
    let mut c = [0u8; 12];
    c[0] = ScsiOp::READ_DISC_STRUCTURE.get();
    c[8..10].copy_from_slice(&2052u16.to_be_bytes());
    let d = e.ok(&c, 2052);
    assert_eq!(d.len(), 2052);
    assert_eq!(&d[..2], &2050u16.to_be_bytes());
    assert_eq!(&d[8..12], &0x30000u32.to_be_bytes());
    assert_eq!(&d[12..16], &(0x30000u32 + 63).to_be_bytes());
    c[7] = 0x30;
    assert_eq!(e.sense(&c, 2052), (5, 0x24, 0));
    c[7] = 0;
    c[6] = 1;
    assert_eq!(e.sense(&c, 2052), (5, 0x24, 0));
    // GET PERFORMANCE: one nominal read descriptor.
    let mut c = [0u8; 12];
    c[0] = ScsiOp::GET_PERFORMANCE.get();
    c[9] = 4;
    let d = e.ok(&c, 64);
    assert_eq!(d.len(), 24);
    assert_eq!(&d[16..20], &63u32.to_be_bytes());
    c[10] = 7;
    assert_eq!(e.sense(&c, 64), (5, 0x24, 0));
    // READ BUFFER CAPACITY.
    let d = e.ok(&cdb10(ScsiOp::READ_BUFFER_CAPACITY.get(), 0, 12), 12);
    assert_eq!(&d[..2], &[0, 10]);
    // SET STREAMING with a performance descriptor.
    let mut c = [0u8; 12];
    c[0] = ScsiOp::SET_STREAMING.get();
    c[10] = 28;
    let (r, _) = e.run(&c, &[0; 28], 28);
    assert_eq!(r.status, ScsiStatus::GOOD);
    c[8] = 1;
    assert_eq!(e.sense(&c, 28), (5, 0x24, 0));
}

#[test]
fn unsupported_and_write_commands() {
    let e = loaded();
    let mut w = read10(0, 1);
    w[0] = ScsiOp::WRITE10.get();
    assert_eq!(e.sense(&w, 2048), (5, 0x20, 0));
    for cdb in [
        [ScsiOp::READ6.get(), 0, 0, 0, 1, 0],
        [ScsiOp::MODE_SENSE6.get(), 0, 0x3F, 0, 255, 0],
        [ScsiOp::FORMAT_UNIT.get(), 0, 0, 0, 0, 0],
        [0xFF, 0, 0, 0, 0, 0],
    ] {
        assert_eq!(e.sense(&cdb, 512), (5, 0x20, 0));
    }
    assert_eq!(e.sense(&[], 0), (5, 0x24, 0));
    assert_eq!(e.sense(&[ScsiOp::READ10.get(), 0, 0], 0), (5, 0x24, 0));
}

#[test]
fn hostile_cdbs_never_panic() {
    let e = loaded();
    let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
    let mut next = || rng.u64(..);
    for i in 0..20_000 {
        let mut cdb = [0u8; 16];
        for b in cdb.iter_mut() {
            *b = next() as u8;
        }
        cdb[0] = MMC_OPCODES[(next() as usize) % MMC_OPCODES.len()].get();
        if i % 3 == 0 {
            cdb[0] = next() as u8;
        }
        let len = (next() % 17) as usize;
        let buf = (next() % 4096) as usize;
        let _ = e.run(&cdb[..len], &[0xA5; 64], buf);
        if i % 1000 == 0 {
            e.dvd.change_media(Some(medium(512, 4).1)).unwrap();
        }
        if i % 1500 == 0 {
            e.dvd.change_media(None).unwrap();
        }
    }
}
