//! Unit tests of the SCSI disk adapter over RAM disks.

use super::*;
use crate::{SENSE_SLOTS, disk_error_result};
use alloc::vec;
use futures::executor::block_on;
use parastor_core::GpaRange;
use parastor_core::ram::RamDisk;
use parastor_core::{
    Denied, Gpa, GuestMemory, IoError, IoErrorKind, MediumError, MemoryError, MemoryErrorKind,
    RamGuestMemory, ReservationsDisk,
};
use parastor_hw::scsi::{
    FieldPointer, MaintenanceIn, PrInAction, PrOutAction, ProtocolId, ScsiOp, ScsiStatus,
    ServiceActionIn,
};

const SS: u32 = 512;
const SECTORS: u64 = 2048;
const GPA: u64 = 0x1000;

struct Env {
    mem: RamGuestMemory,
    ram: RamDisk,
    scsi: ScsiDisk,
    /// How the commands [`Env::run_as`] issues deliver their sense.
    delivery: SenseDelivery,
}

fn env_with(params: DiskParams, pr: bool) -> Env {
    let ram = RamDisk::new(SECTORS * u64::from(SS), SS).unwrap();
    let mut disk = Disk::new(ram.clone()).unwrap();
    if pr {
        disk = Disk::new(ReservationsDisk::new(disk)).unwrap();
    }
    Env {
        mem: RamGuestMemory::new(64 << 20),
        ram,
        scsi: ScsiDisk::new(disk, params),
        delivery: SenseDelivery::RequestSense,
    }
}

fn env() -> Env {
    env_with(DiskParams::default(), false)
}

const A: InitiatorId = InitiatorId::new(0xA);
const B: InitiatorId = InitiatorId::new(0xB);

/// Runs `exec` on a data buffer of `len` bytes at [`GPA`] in `mem`,
/// preloaded with `out` (the rest 0xEE); returns its result and the
/// buffer's bytes afterwards. Shared with the DVD tests.
pub(crate) fn with_buffer(
    mem: &RamGuestMemory,
    out: &[u8],
    len: usize,
    exec: impl FnOnce(SgList<'_>) -> ScsiResult,
) -> (ScsiResult, Vec<u8>) {
    let mut buf = vec![0xEEu8; len];
    let n = out.len().min(len);
    buf[..n].copy_from_slice(&out[..n]);
    mem.write_at(Gpa::new(GPA), &buf).unwrap();
    let ranges = [GpaRange::new(Gpa::new(GPA), len as u64)];
    let r = exec(SgList::new(mem, &ranges, true).unwrap());
    mem.read_at(Gpa::new(GPA), &mut buf).unwrap();
    (r, buf)
}

impl Env {
    /// Runs `cdb` with a data buffer of `len` bytes preloaded with `out`.
    fn run_as(
        &self,
        who: InitiatorId,
        cdb: &[u8],
        out: &[u8],
        len: usize,
    ) -> (ScsiResult, Vec<u8>) {
        with_buffer(&self.mem, out, len, |sg| {
            block_on(self.scsi.execute(cdb, sg, who, self.delivery))
        })
    }

    fn run(&self, cdb: &[u8], out: &[u8], len: usize) -> (ScsiResult, Vec<u8>) {
        self.run_as(A, cdb, out, len)
    }

    fn ok(&self, cdb: &[u8], out: &[u8], len: usize) -> Vec<u8> {
        let (r, data) = self.run(cdb, out, len);
        assert_eq!(r.status, ScsiStatus::GOOD, "{cdb:02x?}: {r:?}");
        data[..r.tx.min(len)].to_vec()
    }

    fn write(&self, lba: u64, data: &[u8]) {
        self.ok(
            &rw16(
                ScsiOp::WRITE16.get(),
                0,
                lba,
                (data.len() / SS as usize) as u32,
            ),
            data,
            data.len(),
        );
    }

    fn read(&self, lba: u64, blocks: u32) -> Vec<u8> {
        self.ok(
            &rw16(ScsiOp::READ16.get(), 0, lba, blocks),
            &[],
            blocks as usize * SS as usize,
        )
    }
}

/// An `N`-byte (10, 12 or 16) CDB laid out as READ / WRITE(`N`):
/// operation code, byte 1, then the LBA and the transfer length (as wide
/// as that form has them; the callers' types make them fit).
fn rw<const N: usize>(op: u8, flags: u8, lba: u64, len: u32) -> [u8; N] {
    let (lba_at, len_at) = match N {
        10 => (2..6, 7..9),
        12 => (2..6, 6..10),
        _ => (2..10, 10..14),
    };
    let mut c = [0u8; N];
    c[0] = op;
    c[1] = flags;
    c[lba_at.clone()].copy_from_slice(&lba.to_be_bytes()[8 - lba_at.len()..]);
    c[len_at.clone()].copy_from_slice(&len.to_be_bytes()[4 - len_at.len()..]);
    c
}

/// READ / WRITE(10)-shaped CDB. Shared with the DVD tests.
pub(crate) fn rw10(op: u8, flags: u8, lba: u32, len: u16) -> [u8; 10] {
    rw(op, flags, lba.into(), len.into())
}

fn rw12(op: u8, flags: u8, lba: u32, len: u32) -> [u8; 12] {
    rw(op, flags, lba.into(), len)
}

fn rw16(op: u8, flags: u8, lba: u64, len: u32) -> [u8; 16] {
    rw(op, flags, lba, len)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn sense_of(r: &ScsiResult) -> (u8, u8, u8) {
    assert_eq!(r.status, ScsiStatus::CHECK_CONDITION, "{r:?}");
    let s = r.sense.unwrap();
    (s.key.get(), s.additional.asc(), s.additional.ascq())
}

fn expect_sense(e: &Env, cdb: &[u8], out: &[u8], len: usize, want: (u8, u8, u8)) -> ScsiResult {
    let (r, _) = e.run(cdb, out, len);
    assert_eq!(sense_of(&r), want, "{cdb:02x?}");
    r
}

const INVALID_CDB: (u8, u8, u8) = (5, 0x24, 0);
const LBA_RANGE: (u8, u8, u8) = (5, 0x21, 0);
const INVALID_OPCODE: (u8, u8, u8) = (5, 0x20, 0);
const INVALID_PARAM: (u8, u8, u8) = (5, 0x26, 0);
const PARAM_LEN: (u8, u8, u8) = (5, 0x1A, 0);

#[test]
fn test_unit_ready_and_no_ops() {
    let e = env();
    e.ok(&[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0], &[], 0);
    for op in [
        ScsiOp::FORMAT_UNIT.get(),
        ScsiOp::RESERVE6.get(),
        ScsiOp::RELEASE6.get(),
        ScsiOp::PREVENT_ALLOW_MEDIUM_REMOVAL.get(),
    ] {
        e.ok(&[op, 0, 0, 0, 0, 0], &[], 0);
    }
    e.ok(&[ScsiOp::SEND_DIAGNOSTIC.get(), 0x04, 0, 0, 0, 0], &[], 0);
    expect_sense(
        &e,
        &[ScsiOp::SEND_DIAGNOSTIC.get(), 0x10, 0, 0, 0, 0],
        &[],
        0,
        INVALID_CDB,
    );
}

#[test]
fn unknown_and_short_cdbs() {
    let e = env();
    expect_sense(&e, &[0x02, 0, 0, 0, 0, 0], &[], 0, INVALID_OPCODE);
    expect_sense(&e, &[ScsiOp::READ10.get(), 0, 0], &[], 0, INVALID_CDB);
    expect_sense(&e, &[], &[], 0, INVALID_CDB);
}

#[test]
fn inquiry_standard() {
    let params = DiskParams {
        vendor: *b"Vendor  ",
        product: *b"Product 16 bytes",
        revision: *b"0.42",
        ..Default::default()
    };
    let e = env_with(params, false);
    let d = e.ok(&[ScsiOp::INQUIRY.get(), 0, 0, 0, 96, 0], &[], 96);
    assert_eq!(d.len(), 74);
    assert_eq!(d[0], 0);
    assert_eq!(d[2], 6);
    // The additional length covers exactly the bytes returned.
    assert_eq!(usize::from(d[4]), d.len() - 5);
    assert_eq!(&d[8..16], b"Vendor  ");
    assert_eq!(&d[16..32], b"Product 16 bytes");
    assert_eq!(&d[32..36], b"0.42");
    assert!(d[36..58].iter().all(|&b| b == 0));
    // Version descriptors: SAM-5, SPC-4 and SBC-3 (which initiators look
    // for before they trust SBC-3 fields such as the 60-byte block
    // limits page), then unused slots.
    let versions: Vec<u16> = d[58..74]
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(versions, [0x00A0, 0x0460, 0x04C0, 0, 0, 0, 0, 0]);
    // SPC-3 and later: a 16-bit allocation length (511 and 512 give the
    // same data).
    let mut c = [ScsiOp::INQUIRY.get(), 0, 0, 0x01, 0xFF, 0];
    assert_eq!(e.ok(&c, &[], 511), d);
    c[3..5].copy_from_slice(&512u16.to_be_bytes());
    assert_eq!(e.ok(&c, &[], 512), d);
    // Truncated to the allocation length.
    assert_eq!(
        e.ok(&[ScsiOp::INQUIRY.get(), 0, 0, 0, 5, 0], &[], 96).len(),
        5
    );
    // Page code without EVPD, CMDDT, unknown page.
    expect_sense(
        &e,
        &[ScsiOp::INQUIRY.get(), 0, 0x80, 0, 96, 0],
        &[],
        96,
        INVALID_CDB,
    );
    expect_sense(
        &e,
        &[ScsiOp::INQUIRY.get(), 2, 0, 0, 96, 0],
        &[],
        96,
        INVALID_CDB,
    );
    expect_sense(
        &e,
        &[ScsiOp::INQUIRY.get(), 1, 0x99, 0, 96, 0],
        &[],
        96,
        INVALID_CDB,
    );
}

#[test]
fn inquiry_vpd_pages() {
    let id: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
    let params = DiskParams {
        serial: b"SER123".to_vec(),
        device_id: Some(id),
        rotation_rate: 7200,
        ..Default::default()
    };
    let e = env_with(params, false);
    let vpd = |page: u8| e.ok(&[ScsiOp::INQUIRY.get(), 1, page, 1, 0, 0], &[], 256);
    let p0 = vpd(0);
    assert_eq!(&p0[..4], &[0, 0, 0, 8]);
    assert_eq!(&p0[4..], &[0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2, 0xCE, 0xCF]);
    let p80 = vpd(0x80);
    assert_eq!(&p80[4..], b"SER123");
    // Device identification: a T10 vendor ID designator, then an NAA IEEE
    // Registered Extended one; both binary (code set 1), both of the LU.
    let mut want = vec![0, 0x83, 0, 48];
    want.extend_from_slice(&[1, 1, 0, 24]);
    want.extend_from_slice(b"Msft    ");
    want.extend_from_slice(&id);
    want.extend_from_slice(&[1, 3, 0, 16, 0x60, 0x02, 0x24, 0x80]);
    want.extend_from_slice(&id[0..6]);
    want.extend_from_slice(&id[10..16]);
    assert_eq!(vpd(0x83), want);
    // Block limits, every byte.
    let mut want = vec![0u8; 64];
    want[..4].copy_from_slice(&[0, 0xB0, 0, 60]);
    want[4] = 1; // WSNZ
    want[5] = MAX_COMPARE_AND_WRITE_BLOCKS;
    want[6..8].copy_from_slice(&1u16.to_be_bytes()); // optimal granularity
    want[8..12].copy_from_slice(&((8u32 << 20) / SS).to_be_bytes()); // max transfer
    // 12..16: optimal transfer length, not reported; 16..20: prefetch.
    want[20..24].copy_from_slice(&((MAX_UNMAP_BYTES / u64::from(SS)) as u32).to_be_bytes());
    want[24..28].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
    want[28..32].copy_from_slice(&1u32.to_be_bytes()); // optimal unmap granularity
    want[32] = 0x80; // UGAVALID, alignment 0
    // MAXIMUM WRITE SAME LENGTH: the 64 MiB default capped at 65535
    // blocks.
    want[36..44].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    assert_eq!(vpd(0xB0), want);
    // 1 Mi blocks of 512 bytes: a finite MAXIMUM UNMAP LBA COUNT no
    // larger than 2^20 (libiscsi's Inquiry.BlockLimits takes a larger
    // finite count for a bogus one).
    assert_eq!(&want[20..24], &[0, 0x10, 0, 0], "1 Mi blocks of 512 bytes");
    let b1 = vpd(0xB1);
    assert_eq!(u16::from_be_bytes([b1[4], b1[5]]), 7200);
    let b2 = vpd(0xB2);
    assert_eq!(
        b2[5],
        0x80 | 0x40 | 0x20 | 0x04,
        "LBPU, LBPWS, LBPWS10, LBPRZ"
    );
    assert_eq!(b2[6] & 7, 2);
}

#[test]
fn inquiry_microsoft_vpd_pages() {
    let e = env();
    let vpd = |page: u8, alloc: u16| {
        let [hi, lo] = alloc.to_be_bytes();
        e.ok(&[ScsiOp::INQUIRY.get(), 1, page, hi, lo, 0], &[], 256)
    };
    // Paging extent properties: version 1, MODE SELECT extension.
    assert_eq!(vpd(0xCE, 255), [0, 0xCE, 0, 4, 1, 1, 0, 0]);
    // Virtual device properties: version 1, no flags, the signature GUID
    // 89a98f15-c928-4d8b-94cd-ef51faa99d33 in Windows byte order.
    let cf = vpd(0xCF, 255);
    assert_eq!(
        cf,
        [
            0, 0xCF, 0, 20, 1, 0, 0, 0, 0x15, 0x8f, 0xa9, 0x89, 0x28, 0xc9, 0x8b, 0x4d, 0x94, 0xcd,
            0xef, 0x51, 0xfa, 0xa9, 0x9d, 0x33
        ]
    );
    // Truncated to the allocation length.
    assert_eq!(vpd(0xCF, 10), cf[..10]);
    assert_eq!(vpd(0xCE, 3), [0, 0xCE, 0]);
    assert_eq!(vpd(0xCF, 0), []);
    // Offered, in order, by every disk: also without unmap or serial.
    let plain = env_with(
        DiskParams {
            unmap: Some(false),
            ..Default::default()
        },
        false,
    );
    let p0 = plain.ok(&[ScsiOp::INQUIRY.get(), 1, 0, 1, 0, 0], &[], 256);
    assert_eq!(&p0[..4], &[0, 0, 0, 6]);
    assert_eq!(&p0[4..], &[0x00, 0x83, 0xB0, 0xB1, 0xCE, 0xCF]);
    assert!(p0[4..].is_sorted());
    assert_eq!(
        plain
            .ok(&[ScsiOp::INQUIRY.get(), 1, 0xCE, 0, 8, 0], &[], 256)
            .len(),
        8
    );
    assert_eq!(
        plain
            .ok(&[ScsiOp::INQUIRY.get(), 1, 0xCF, 0, 24, 0], &[], 256)
            .len(),
        24
    );
}

#[test]
fn read_capacity() {
    let e = env();
    let d = e.ok(
        &[ScsiOp::READ_CAPACITY10.get(), 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
        8,
    );
    assert_eq!(d, [0, 0, 0x07, 0xFF, 0, 0, 2, 0]);
    let mut c = [0u8; 16];
    c[0] = ScsiOp::SERVICE_ACTION_IN16.get();
    c[1] = ServiceActionIn::READ_CAPACITY16.get();
    c[13] = 32;
    let d = e.ok(&c, &[], 64);
    assert_eq!(d.len(), 32);
    assert_eq!(u64::from_be_bytes(d[0..8].try_into().unwrap()), SECTORS - 1);
    assert_eq!(u32::from_be_bytes(d[8..12].try_into().unwrap()), SS);
    assert_eq!(d[14] & 0xC0, 0xC0, "LBPME and LBPRZ");
    c[1] = 0x1F;
    expect_sense(&e, &c, &[], 64, INVALID_CDB);
}

#[test]
fn size_cap_limits_capacity() {
    let e = env_with(
        DiskParams {
            size_cap_bytes: Some(100 * u64::from(SS)),
            ..Default::default()
        },
        false,
    );
    let d = e.ok(
        &[ScsiOp::READ_CAPACITY10.get(), 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
        8,
    );
    assert_eq!(&d[..4], &[0, 0, 0, 99]);
    expect_sense(
        &e,
        &rw10(ScsiOp::READ10.get(), 0, 100, 1),
        &[],
        512,
        LBA_RANGE,
    );
}

#[test]
fn read_write_every_size() {
    let e = env();
    let data = pattern(4 * SS as usize, 1);
    e.ok(&rw10(ScsiOp::WRITE10.get(), 0, 10, 4), &data, data.len());
    assert_eq!(e.read(10, 4), data);
    let data = pattern(2 * SS as usize, 2);
    e.ok(&rw12(ScsiOp::WRITE12.get(), 0x08, 20, 2), &data, data.len());
    assert_eq!(
        e.ok(&rw12(ScsiOp::READ12.get(), 0, 20, 2), &[], data.len()),
        data
    );
    let data = pattern(SS as usize, 3);
    e.ok(&[ScsiOp::WRITE6.get(), 0, 0, 30, 1, 0], &data, data.len());
    assert_eq!(
        e.ok(&[ScsiOp::READ6.get(), 0, 0, 30, 1, 0], &[], data.len()),
        data
    );
    let data = pattern(3 * SS as usize, 4);
    e.ok(&rw16(ScsiOp::WRITE16.get(), 0x08, 40, 3), &data, data.len());
    assert_eq!(
        e.ok(&rw10(ScsiOp::READ10.get(), 0x08, 40, 3), &[], data.len()),
        data
    );
    // Zero-length transfers are no-ops.
    e.ok(&rw10(ScsiOp::READ10.get(), 0, 0, 0), &[], 0);
}

#[test]
fn read6_length_zero_is_256_blocks() {
    let e = env();
    let data = pattern(256 * SS as usize, 5);
    let (r, _) = e.run(&[ScsiOp::WRITE6.get(), 0, 0, 0, 0, 0], &data, data.len());
    assert_eq!(r, ScsiResult::good(256 * SS as usize));
    let (r, got) = e.run(&[ScsiOp::READ6.get(), 0, 0, 0, 0, 0], &[], data.len());
    assert_eq!(r.tx, 256 * SS as usize);
    assert_eq!(got, data);
}

#[test]
fn read_write_errors() {
    let e = env();
    expect_sense(
        &e,
        &rw10(ScsiOp::READ10.get(), 0, SECTORS as u32, 1),
        &[],
        512,
        LBA_RANGE,
    );
    expect_sense(
        &e,
        &rw16(ScsiOp::WRITE16.get(), 0, u64::MAX, 2),
        &[],
        1024,
        LBA_RANGE,
    );
    // Buffer smaller than the transfer.
    expect_sense(
        &e,
        &rw10(ScsiOp::READ10.get(), 0, 0, 4),
        &[],
        512,
        INVALID_CDB,
    );
    // RelAdr.
    expect_sense(
        &e,
        &rw10(ScsiOp::READ10.get(), 1, 0, 1),
        &[],
        512,
        INVALID_CDB,
    );
    // Larger than the maximum transfer length.
    let small = env_with(
        DiskParams {
            max_transfer_bytes: 4096,
            ..Default::default()
        },
        false,
    );
    expect_sense(
        &small,
        &rw10(ScsiOp::READ10.get(), 0, 0, 9),
        &[],
        9 * 512,
        INVALID_CDB,
    );
}

#[test]
fn synchronize_cache() {
    let e = env();
    e.ok(&rw10(ScsiOp::SYNCHRONIZE_CACHE10.get(), 0, 0, 0), &[], 0);
    e.ok(&rw16(ScsiOp::SYNCHRONIZE_CACHE16.get(), 2, 5, 10), &[], 0);
    expect_sense(
        &e,
        &rw16(ScsiOp::SYNCHRONIZE_CACHE16.get(), 0, SECTORS, 1),
        &[],
        0,
        LBA_RANGE,
    );
}

fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
    v.extend_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    for &(lba, n) in descs {
        v.extend_from_slice(&lba.to_be_bytes());
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(&[0; 4]);
    }
    v
}

fn unmap_cdb(len: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = ScsiOp::UNMAP.get();
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

#[test]
fn unmap() {
    let e = env();
    e.write(0, &pattern(8 * 512, 9));
    let list = unmap_list(&[(1, 2), (5, 0), (6, 1)]);
    e.ok(&unmap_cdb(list.len() as u16), &list, list.len());
    let got = e.read(0, 8);
    let want = pattern(8 * 512, 9);
    assert_eq!(&got[..512], &want[..512]);
    assert!(got[512..1536].iter().all(|&b| b == 0));
    assert_eq!(&got[1536..3072], &want[1536..3072]);
    assert!(got[3072..3584].iter().all(|&b| b == 0));
    // Out of range descriptor: nothing is unmapped.
    let list = unmap_list(&[(0, 1), (SECTORS, 1)]);
    expect_sense(
        &e,
        &unmap_cdb(list.len() as u16),
        &list,
        list.len(),
        LBA_RANGE,
    );
    assert_eq!(&e.read(0, 1)[..], &want[..512]);
    // Parameter list length errors.
    expect_sense(&e, &unmap_cdb(4), &list, list.len(), PARAM_LEN);
    expect_sense(&e, &unmap_cdb(200), &list, list.len(), PARAM_LEN);
    e.ok(&unmap_cdb(0), &[], 0);
    // Disabled.
    let off = env_with(
        DiskParams {
            unmap: Some(false),
            ..Default::default()
        },
        false,
    );
    let list = unmap_list(&[(0, 1)]);
    expect_sense(
        &off,
        &unmap_cdb(list.len() as u16),
        &list,
        list.len(),
        INVALID_OPCODE,
    );
}

/// UNMAP refuses a parameter list whose descriptors name more blocks in
/// all than the MAXIMUM UNMAP LBA COUNT (05/26/00, SBC-4), unmapping
/// nothing; exactly the limit is served.
#[test]
fn unmap_total_is_bounded_by_the_maximum_unmap_lba_count() {
    let limit = (MAX_UNMAP_BYTES / u64::from(SS)) as u32;
    // Overlapping descriptors over the whole (small) disk add up.
    let per = SECTORS as u32;
    let n = (limit / per) as usize;
    assert!(n < MAX_UNMAP_DESCRIPTORS as usize);
    let e = env();
    let data = pattern(512, 3);
    e.write(0, &data);
    let over = unmap_list(&vec![(0, per); n + 1]);
    expect_sense(
        &e,
        &unmap_cdb(over.len() as u16),
        &over,
        over.len(),
        INVALID_PARAM,
    );
    assert_eq!(e.read(0, 1), data, "a refused UNMAP unmaps nothing");
    // One block over, in the last descriptor.
    let mut descs = vec![(0, per); n];
    descs.push((0, 1));
    let over = unmap_list(&descs);
    expect_sense(
        &e,
        &unmap_cdb(over.len() as u16),
        &over,
        over.len(),
        INVALID_PARAM,
    );
    assert_eq!(e.read(0, 1), data);
    // Exactly the limit (zero-length descriptors add nothing).
    let mut descs = vec![(0, per); n];
    descs.push((5, 0));
    let exact = unmap_list(&descs);
    e.ok(&unmap_cdb(exact.len() as u16), &exact, exact.len());
    assert_eq!(e.read(0, 1), vec![0; 512]);

    // One descriptor over the limit on its own, on a disk large enough to
    // hold it (sparse: nothing is allocated).
    let big = ScsiDisk::new(
        Disk::new(RamDisk::new((u64::from(limit) + 8) * u64::from(SS), SS).unwrap()).unwrap(),
        DiskParams::default(),
    );
    let e = Env { scsi: big, ..env() };
    e.write(u64::from(limit), &data);
    let over = unmap_list(&[(1, limit + 1)]);
    expect_sense(
        &e,
        &unmap_cdb(over.len() as u16),
        &over,
        over.len(),
        INVALID_PARAM,
    );
    assert_eq!(e.read(u64::from(limit), 1), data);
    let exact = unmap_list(&[(1, limit)]);
    e.ok(&unmap_cdb(exact.len() as u16), &exact, exact.len());
    assert_eq!(e.read(u64::from(limit), 1), vec![0; 512]);
    // A 4 KiB-sector disk advertises the same bytes as fewer blocks.
    let e4k = ScsiDisk::new(
        Disk::new(RamDisk::new(64 * 4096, 4096).unwrap()).unwrap(),
        DiskParams::default(),
    );
    let e4k = Env { scsi: e4k, ..env() };
    let b0 = e4k.ok(&[ScsiOp::INQUIRY.get(), 1, 0xB0, 0, 64, 0], &[], 64);
    assert_eq!(
        u32::from_be_bytes(b0[20..24].try_into().unwrap()),
        (MAX_UNMAP_BYTES / 4096) as u32
    );
}

/// The MAXIMUM TRANSFER LENGTH is the smaller of the disk's own limit and
/// what its transport can carry; it is advertised in VPD 0xB0 and a READ
/// or WRITE above it is INVALID FIELD IN CDB, by `execute` and
/// `execute_now` alike.
#[test]
fn transfer_limit_is_the_smaller_of_disk_and_transport() {
    let max_transfer = |e: &Env| {
        let b0 = e.ok(&[ScsiOp::INQUIRY.get(), 1, 0xB0, 0, 64, 0], &[], 64);
        assert_eq!(&b0[12..16], &[0; 4], "OPTIMAL TRANSFER LENGTH not reported");
        u32::from_be_bytes(b0[8..12].try_into().unwrap())
    };
    let e = env();
    assert_eq!(max_transfer(&e), (8 << 20) / SS);
    assert_eq!(e.scsi.max_transfer_bytes(), 8 << 20);
    // The transport carries 64 KiB: 128 blocks.
    e.scsi.limit_transfer(64 << 10);
    assert_eq!(max_transfer(&e), 128);
    assert_eq!(e.scsi.max_transfer_bytes(), 64 << 10);
    // A higher limit does not raise it again.
    e.scsi.limit_transfer(1 << 20);
    assert_eq!(max_transfer(&e), 128);
    // Enforced, with a buffer large enough for the whole request.
    let len = 129 * SS as usize;
    for cdb in [
        rw16(ScsiOp::READ16.get(), 0, 0, 129).to_vec(),
        rw10(ScsiOp::WRITE10.get(), 0, 0, 129).to_vec(),
        rw16(ScsiOp::VERIFY16.get(), 0x02, 0, 129).to_vec(),
    ] {
        expect_sense(&e, &cdb, &pattern(len, 1), len, INVALID_CDB);
        let ranges = [GpaRange::new(Gpa::new(GPA), len as u64)];
        let sg = SgList::new(&e.mem, &ranges, true).unwrap();
        if let Some(r) = e.scsi.execute_now(&cdb, &sg, A, e.delivery) {
            assert_eq!(sense_of(&r), INVALID_CDB, "{cdb:02x?}");
        }
    }
    assert_eq!(e.read(0, 128).len(), 128 * SS as usize);
    // Whole blocks, at least one.
    e.scsi.limit_transfer(1000);
    assert_eq!(max_transfer(&e), 1);
    e.scsi.limit_transfer(0);
    assert_eq!(max_transfer(&e), 1);
    assert_eq!(e.scsi.max_transfer_bytes(), SS);
    e.read(7, 1);
    expect_sense(
        &e,
        &rw10(ScsiOp::READ10.get(), 0, 7, 2),
        &[],
        1024,
        INVALID_CDB,
    );
    // A disk whose own limit is the smaller keeps it.
    let own = env_with(
        DiskParams {
            max_transfer_bytes: 16 << 10,
            ..Default::default()
        },
        false,
    );
    own.scsi.limit_transfer(64 << 10);
    assert_eq!(max_transfer(&own), 32);
}

#[test]
fn write_same() {
    let e = env();
    let block = pattern(512, 7);
    e.ok(&rw10(ScsiOp::WRITE_SAME10.get(), 0, 100, 300), &block, 512);
    let got = e.read(100, 300);
    for c in got.chunks(512) {
        assert_eq!(c, &block[..]);
    }
    // UNMAP bit with a zero block deallocates (reads as zero).
    e.ok(
        &rw16(ScsiOp::WRITE_SAME16.get(), 0x08, 100, 10),
        &[0; 512],
        512,
    );
    assert!(e.read(100, 10).iter().all(|&b| b == 0));
    assert_eq!(&e.read(110, 1)[..], &block[..]);
    // NDOB: no data-out buffer, zeros.
    let (r, _) = e.run(&rw16(ScsiOp::WRITE_SAME16.get(), 0x01, 110, 5), &[], 0);
    assert_eq!(r, ScsiResult::good(0));
    assert!(e.read(110, 5).iter().all(|&b| b == 0));
    // Errors.
    expect_sense(
        &e,
        &rw10(ScsiOp::WRITE_SAME10.get(), 0, 0, 0),
        &block,
        512,
        INVALID_CDB,
    );
    expect_sense(
        &e,
        &rw10(ScsiOp::WRITE_SAME10.get(), 0, 2040, 9),
        &block,
        512,
        LBA_RANGE,
    );
    expect_sense(
        &e,
        &rw10(ScsiOp::WRITE_SAME10.get(), 0, 0, 1),
        &block,
        100,
        INVALID_CDB,
    );
    expect_sense(
        &e,
        &rw10(ScsiOp::WRITE_SAME10.get(), 0x02, 0, 1),
        &block,
        512,
        INVALID_CDB,
    );
}

#[test]
fn verify_compares() {
    let e = env();
    let data = pattern(4 * 512, 11);
    e.write(50, &data);
    // BYTCHK 0: medium check only.
    e.ok(&rw10(ScsiOp::VERIFY10.get(), 0, 50, 4), &[], 0);
    expect_sense(
        &e,
        &rw10(ScsiOp::VERIFY10.get(), 0, SECTORS as u32, 1),
        &[],
        0,
        LBA_RANGE,
    );
    // BYTCHK 1: match and mismatch.
    e.ok(
        &rw16(ScsiOp::VERIFY16.get(), 0x02, 50, 4),
        &data,
        data.len(),
    );
    e.ok(
        &rw12(ScsiOp::VERIFY12.get(), 0x02, 50, 4),
        &data,
        data.len(),
    );
    let mut bad = data.clone();
    bad[1000] ^= 1;
    let r = expect_sense(
        &e,
        &rw10(ScsiOp::VERIFY10.get(), 0x02, 50, 4),
        &bad,
        bad.len(),
        (0xE, 0x1D, 0),
    );
    assert_eq!(r.sense.unwrap().information, Some(1000));
    // BYTCHK 3: one block compared with each.
    let block = pattern(512, 12);
    e.ok(&rw10(ScsiOp::WRITE_SAME10.get(), 0, 60, 3), &block, 512);
    e.ok(&rw10(ScsiOp::VERIFY10.get(), 0x06, 60, 3), &block, 512);
    let r = expect_sense(
        &e,
        &rw10(ScsiOp::VERIFY10.get(), 0x06, 59, 3),
        &block,
        512,
        (0xE, 0x1D, 0),
    );
    assert_eq!(r.sense.unwrap().information, Some(0));
    // BYTCHK 2 is reserved.
    expect_sense(
        &e,
        &rw10(ScsiOp::VERIFY10.get(), 0x04, 60, 1),
        &block,
        512,
        INVALID_CDB,
    );
}

#[test]
fn write_and_verify() {
    let e = env();
    let data = pattern(3 * 512, 13);
    e.ok(
        &rw10(ScsiOp::WRITE_VERIFY10.get(), 0x02, 70, 3),
        &data,
        data.len(),
    );
    assert_eq!(e.read(70, 3), data);
    let data = pattern(2 * 512, 14);
    e.ok(
        &rw16(ScsiOp::WRITE_VERIFY16.get(), 0, 80, 2),
        &data,
        data.len(),
    );
    e.ok(
        &rw12(ScsiOp::WRITE_VERIFY12.get(), 0, 82, 2),
        &data,
        data.len(),
    );
    assert_eq!(e.read(82, 2), data);
    expect_sense(
        &e,
        &rw10(ScsiOp::WRITE_VERIFY10.get(), 0x06, 70, 1),
        &data,
        512,
        INVALID_CDB,
    );
}

fn caw(lba: u64, blocks: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = ScsiOp::COMPARE_AND_WRITE.get();
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

#[test]
fn compare_and_write() {
    let e = env();
    let old = pattern(2 * 512, 20);
    let new = pattern(2 * 512, 21);
    e.write(90, &old);
    let mut buf = old.clone();
    buf.extend_from_slice(&new);
    let (r, _) = e.run(&caw(90, 2), &buf, buf.len());
    assert_eq!(r, ScsiResult::good(buf.len()));
    assert_eq!(e.read(90, 2), new);
    // Miscompare: nothing written, offset reported.
    let mut buf = new.clone();
    buf[700] ^= 0xFF;
    buf.extend_from_slice(&old);
    let r = expect_sense(&e, &caw(90, 2), &buf, buf.len(), (0xE, 0x1D, 0));
    assert_eq!(r.sense.unwrap().information, Some(700));
    assert_eq!(e.read(90, 2), new);
    // Errors.
    expect_sense(&e, &caw(SECTORS - 1, 2), &buf, buf.len(), LBA_RANGE);
    expect_sense(
        &e,
        &caw(0, MAX_COMPARE_AND_WRITE_BLOCKS + 1),
        &buf,
        buf.len(),
        INVALID_CDB,
    );
    expect_sense(&e, &caw(0, 2), &buf, 1024, INVALID_CDB);
}

#[test]
fn mode_sense_pages() {
    let e = env();
    let d = e.ok(&[ScsiOp::MODE_SENSE6.get(), 0, 0x08, 0, 255, 0], &[], 255);
    assert_eq!(d.len(), 4 + 20);
    assert_eq!(d[0] as usize, d.len() - 1);
    assert_eq!(d[2], 0x10, "DPOFUA, not WP");
    assert_eq!(&d[4..6], &[0x08, 0x12]);
    assert_eq!(d[6] & 0x04, 0x04, "WCE");
    let d = e.ok(
        &[ScsiOp::MODE_SENSE10.get(), 0, 0x0A, 0, 0, 0, 0, 0, 255, 0],
        &[],
        255,
    );
    assert_eq!(d.len(), 8 + 12);
    assert_eq!(u16::from_be_bytes([d[0], d[1]]) as usize, d.len() - 2);
    assert_eq!(&d[8..10], &[0x0A, 0x0A]);
    let d = e.ok(&[ScsiOp::MODE_SENSE6.get(), 0, 0x3F, 0, 255, 0], &[], 255);
    assert_eq!(d.len(), 4 + 20 + 12);
    // Changeable values: nothing changes.
    let d = e.ok(&[ScsiOp::MODE_SENSE6.get(), 0, 0x48, 0, 255, 0], &[], 255);
    assert_eq!(d[6], 0);
    // Saved values, unknown page, subpage.
    expect_sense(
        &e,
        &[ScsiOp::MODE_SENSE6.get(), 0, 0xC8, 0, 255, 0],
        &[],
        255,
        (5, 0x39, 0),
    );
    expect_sense(
        &e,
        &[ScsiOp::MODE_SENSE6.get(), 0, 0x01, 0, 255, 0],
        &[],
        255,
        INVALID_CDB,
    );
    expect_sense(
        &e,
        &[ScsiOp::MODE_SENSE6.get(), 0, 0x08, 1, 255, 0],
        &[],
        255,
        INVALID_CDB,
    );
}

#[test]
fn mode_select_caching() {
    let e = env();
    let current = e.ok(&[ScsiOp::MODE_SENSE6.get(), 0, 0x08, 0, 255, 0], &[], 255);
    let mut list = current.clone();
    list[0] = 0;
    e.ok(
        &[ScsiOp::MODE_SELECT6.get(), 0x10, 0, 0, list.len() as u8, 0],
        &list,
        list.len(),
    );
    let mut list10 = vec![0u8; 8];
    list10.extend_from_slice(&current[4..]);
    let mut c = [0u8; 10];
    c[0] = ScsiOp::MODE_SELECT10.get();
    c[1] = 0x10;
    c[8] = list10.len() as u8;
    e.ok(&c, &list10, list10.len());
    // Turning the write cache off is refused.
    list[6] &= !0x04;
    let cdb = [ScsiOp::MODE_SELECT6.get(), 0x10, 0, 0, list.len() as u8, 0];
    expect_sense(&e, &cdb, &list, list.len(), INVALID_PARAM);
    // SP, other pages, short lists.
    expect_sense(
        &e,
        &[ScsiOp::MODE_SELECT6.get(), 0x11, 0, 0, 24, 0],
        &list,
        24,
        INVALID_CDB,
    );
    let mut ctl = vec![0u8; 4];
    ctl.extend_from_slice(&[0x0A, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect_sense(
        &e,
        &[ScsiOp::MODE_SELECT6.get(), 0x10, 0, 0, 16, 0],
        &ctl,
        16,
        INVALID_PARAM,
    );
    expect_sense(
        &e,
        &[ScsiOp::MODE_SELECT6.get(), 0x10, 0, 0, 10, 0],
        &list,
        10,
        PARAM_LEN,
    );
    expect_sense(
        &e,
        &[ScsiOp::MODE_SELECT6.get(), 0x10, 0, 0, 24, 0],
        &list,
        12,
        PARAM_LEN,
    );
}

#[test]
fn request_sense_reports_and_clears() {
    let e = env();
    expect_sense(
        &e,
        &rw10(ScsiOp::READ10.get(), 0, SECTORS as u32, 1),
        &[],
        512,
        LBA_RANGE,
    );
    let (r, d) = e.run(&[ScsiOp::REQUEST_SENSE.get(), 0, 0, 0, 18, 0], &[], 252);
    assert_eq!(r, ScsiResult::good(18));
    assert_eq!(
        SenseData::parse(&d),
        Some(SenseData::illegal(AdditionalSense::LBA_OUT_OF_RANGE))
    );
    let (r, d) = e.run(&[ScsiOp::REQUEST_SENSE.get(), 1, 0, 0, 252, 0], &[], 252);
    assert_eq!(r, ScsiResult::good(8));
    assert_eq!(&d[..4], &[0x72, 0, 0, 0]);
}

#[test]
fn request_sense_is_per_initiator() {
    const C: InitiatorId = InitiatorId::new(0xC);
    let e = env();
    let rs = [ScsiOp::REQUEST_SENSE.get(), 0, 0, 0, 18, 0];
    let sense_as = |who| {
        let (r, d) = e.run_as(who, &rs, &[], 18);
        assert_eq!(r, ScsiResult::good(18));
        let s = SenseData::parse(&d).unwrap();
        (s.key.get(), s.additional.asc(), s.additional.ascq())
    };
    let (r, _) = e.run_as(
        A,
        &rw10(ScsiOp::READ10.get(), 0, SECTORS as u32, 1),
        &[],
        512,
    );
    assert_eq!(sense_of(&r), LBA_RANGE);
    let (r, _) = e.run_as(B, &[0x02, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(sense_of(&r), INVALID_OPCODE);
    // A third initiator has nothing pending; B's and A's are their own.
    assert_eq!(sense_as(C), (0, 0, 0));
    assert_eq!(sense_as(B), INVALID_OPCODE);
    assert_eq!(sense_as(B), (0, 0, 0));
    // A later failure of A replaces its earlier one.
    let (r, _) = e.run_as(A, &[0x02, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(sense_of(&r), INVALID_OPCODE);
    assert_eq!(sense_as(A), INVALID_OPCODE);
    assert_eq!(sense_as(A), (0, 0, 0));

    // The capacity change is still reported once, to whoever asks first,
    // and does not consume another initiator's pending sense.
    let (r, _) = e.run_as(
        A,
        &rw10(ScsiOp::READ10.get(), 0, SECTORS as u32, 1),
        &[],
        512,
    );
    assert_eq!(sense_of(&r), LBA_RANGE);
    e.ram.resize(SECTORS * 2);
    assert_eq!(sense_as(B), (6, 0x2A, 9));
    assert_eq!(sense_as(A), LBA_RANGE);
    e.ok(&[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0], &[], 0);

    // Bounded: a flood of initiators keeps only the latest SENSE_SLOTS.
    let who = |i: usize| InitiatorId::new(0x1000 + i as u128);
    for i in 0..=SENSE_SLOTS {
        let (r, _) = e.run_as(who(i), &[0x02, 0, 0, 0, 0, 0], &[], 0);
        assert_eq!(sense_of(&r), INVALID_OPCODE);
    }
    assert_eq!(sense_as(who(0)), (0, 0, 0));
    assert_eq!(sense_as(who(1)), INVALID_OPCODE);
    assert_eq!(sense_as(who(SENSE_SLOTS)), INVALID_OPCODE);
}

/// With autosense the sense comes back with the CHECK CONDITION only: it
/// is not kept, and it clears what the initiator had pending, so REQUEST
/// SENSE after it reports NO SENSE. Other initiators' sense and the
/// capacity-change UNIT ATTENTION keep their rules.
#[test]
fn autosense_is_not_reported_again() {
    let rs = [ScsiOp::REQUEST_SENSE.get(), 0, 0, 0, 18, 0];
    let mut e = env();
    let sense_as = |e: &Env, who| {
        let (r, d) = e.run_as(who, &rs, &[], 18);
        assert_eq!(r, ScsiResult::good(18));
        let s = SenseData::parse(&d).unwrap();
        (s.key.get(), s.additional.asc(), s.additional.ascq())
    };
    e.delivery = SenseDelivery::Autosense;
    expect_sense(
        &e,
        &rw10(ScsiOp::READ10.get(), 0, SECTORS as u32, 1),
        &[],
        512,
        LBA_RANGE,
    );
    assert_eq!(sense_as(&e, A), (0, 0, 0));
    // The same through the in-place path.
    let ranges = [GpaRange::new(Gpa::new(GPA), 512)];
    let sg = SgList::new(&e.mem, &ranges, true).unwrap();
    let r = e
        .scsi
        .execute_now(
            &rw10(ScsiOp::READ10.get(), 0, SECTORS as u32, 1),
            &sg,
            A,
            e.delivery,
        )
        .unwrap();
    assert_eq!(sense_of(&r), LBA_RANGE);
    assert_eq!(sense_as(&e, A), (0, 0, 0));

    // Pending sense kept for REQUEST SENSE (A and B) ...
    e.delivery = SenseDelivery::RequestSense;
    let (r, _) = e.run_as(A, &[0x02, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(sense_of(&r), INVALID_OPCODE);
    let (r, _) = e.run_as(B, &[0x02, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(sense_of(&r), INVALID_OPCODE);
    // ... is replaced, and so cleared, by A's next failure delivered by
    // autosense; B's stays.
    e.delivery = SenseDelivery::Autosense;
    let (r, _) = e.run_as(
        A,
        &rw10(ScsiOp::READ10.get(), 0, SECTORS as u32, 1),
        &[],
        512,
    );
    assert_eq!(sense_of(&r), LBA_RANGE);
    assert_eq!(sense_as(&e, A), (0, 0, 0));
    assert_eq!(sense_as(&e, B), INVALID_OPCODE);
    assert_eq!(sense_as(&e, B), (0, 0, 0));

    // The capacity change: delivered once with the first command ...
    e.ram.resize(SECTORS * 2);
    expect_sense(
        &e,
        &[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0],
        &[],
        0,
        (6, 0x2A, 9),
    );
    assert_eq!(sense_as(&e, A), (0, 0, 0));
    assert_eq!(sense_as(&e, B), (0, 0, 0));
    e.ok(&[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0], &[], 0);
    // ... or reported with GOOD by a REQUEST SENSE that comes first.
    e.ram.resize(SECTORS);
    assert_eq!(sense_as(&e, B), (6, 0x2A, 9));
    assert_eq!(sense_as(&e, A), (0, 0, 0));
    e.ok(&[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0], &[], 0);
}

#[test]
fn start_stop_unit() {
    let e = env();
    e.ok(&[ScsiOp::START_STOP_UNIT.get(), 0, 0, 0, 1, 0], &[], 0);
    e.ok(&[ScsiOp::START_STOP_UNIT.get(), 1, 0, 0, 0, 0], &[], 0);
    expect_sense(
        &e,
        &[ScsiOp::START_STOP_UNIT.get(), 0, 0, 0, 0x10, 0],
        &[],
        0,
        INVALID_CDB,
    );
    // A fixed disk cannot eject.
    expect_sense(
        &e,
        &[ScsiOp::START_STOP_UNIT.get(), 0, 0, 0, 0x02, 0],
        &[],
        0,
        INVALID_OPCODE,
    );
}

#[test]
fn report_supported_opcodes() {
    let e = env();
    let mut c = [0u8; 12];
    c[0] = ScsiOp::MAINTENANCE_IN.get();
    c[1] = MaintenanceIn::REPORT_SUPPORTED_OPCODES.get();
    c[9] = 0xFF;
    c[8] = 0xFF;
    let d = e.ok(&c, &[], 0xFFFF);
    let len = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
    assert_eq!(len, d.len() - 4);
    assert_eq!(len % 8, 0);
    let descs: Vec<&[u8]> = d[4..].chunks(8).collect();
    assert!(
        descs
            .iter()
            .any(|x| x[0] == ScsiOp::COMPARE_AND_WRITE.get() && x[7] == 16)
    );
    assert!(
        descs
            .iter()
            .any(|x| x[0] == ScsiOp::SERVICE_ACTION_IN16.get() && x[3] == 0x10 && x[5] == 1)
    );
    // One command.
    c[2] = 1;
    c[3] = ScsiOp::READ10.get();
    let d = e.ok(&c, &[], 0xFFFF);
    assert_eq!(&d[..4], &[0, 3, 0, 10]);
    assert_eq!(d[4], ScsiOp::READ10.get());
    c[3] = 0xC0;
    let d = e.ok(&c, &[], 0xFFFF);
    assert_eq!(d[1] & 7, 1);
    c[3] = ScsiOp::SERVICE_ACTION_IN16.get();
    expect_sense(&e, &c, &[], 0xFFFF, INVALID_CDB);
    c[2] = 2;
    c[5] = ServiceActionIn::GET_LBA_STATUS.get();
    let d = e.ok(&c, &[], 0xFFFF);
    assert_eq!(&d[..4], &[0, 3, 0, 16]);
    // With timeouts descriptors.
    c[2] = 0x80;
    let d = e.ok(&c, &[], 0xFFFF);
    assert_eq!((d.len() - 4) % 20, 0);
}

fn rsoc(options: u8, opcode: u8, sa: u16, alloc: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = ScsiOp::MAINTENANCE_IN.get();
    c[1] = MaintenanceIn::REPORT_SUPPORTED_OPCODES.get();
    c[2] = options;
    c[3] = opcode;
    c[4..6].copy_from_slice(&sa.to_be_bytes());
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// With DPOFUA set in the mode parameter header, every command that has
/// DPO and FUA bits claims them in its usage data and accepts them set
/// (SPC-5 6.35.3; libiscsi's `Verify*.Dpo` / `WriteVerify*.Dpo` check DPO
/// alone, its `*.DpoFua` tests DPO or FUA).
#[test]
fn dpo_and_fua_are_claimed_and_accepted_with_dpofua() {
    let e = env();
    let ms = e.ok(&[ScsiOp::MODE_SENSE6.get(), 0, 0x3F, 0, 255, 0], &[], 255);
    assert_eq!(ms[2] & 0x10, 0x10, "DPOFUA");
    for (op, fua) in [
        (ScsiOp::READ10, true),
        (ScsiOp::WRITE10, true),
        (ScsiOp::READ12, true),
        (ScsiOp::WRITE16, true),
        (ScsiOp::VERIFY10, false),
        (ScsiOp::VERIFY12, false),
        (ScsiOp::VERIFY16, false),
        (ScsiOp::WRITE_VERIFY10, false),
        (ScsiOp::WRITE_VERIFY12, false),
        (ScsiOp::WRITE_VERIFY16, false),
        (ScsiOp::COMPARE_AND_WRITE, true),
    ] {
        let one = e.ok(&rsoc(1, op.get(), 0, 512), &[], 512);
        assert_eq!(one[4], op.get());
        assert_eq!(one[5] & 0x10, 0x10, "{op:?}: DPO claimed");
        assert_eq!(one[5] & 0x08 != 0, fua, "{op:?}: FUA claimed");
    }
    let block = [0u8; 512];
    e.ok(&rw10(ScsiOp::WRITE10.get(), 0x18, 0, 1), &block, 512);
    e.ok(&rw10(ScsiOp::READ10.get(), 0x18, 0, 1), &[], 512);
    // VERIFY with DPO, no byte check; WRITE AND VERIFY with DPO and BYTCHK.
    e.ok(&rw10(ScsiOp::VERIFY10.get(), 0x10, 0, 1), &[], 0);
    e.ok(&rw10(ScsiOp::WRITE_VERIFY10.get(), 0x12, 0, 1), &block, 512);
}

/// A refused REPORTING OPTIONS value is INVALID FIELD IN CDB with a
/// field pointer to CDB byte 2, bit 2, so an initiator can tell it from a
/// service action the device lacks (libiscsi takes 24/00 on MAINTENANCE
/// IN without a field pointer, or pointing at byte 1, for "command not
/// implemented" and skips the rest of ReportSupportedOpcodes.OneCommand).
/// Every command of the all-commands list is checked the way that test
/// checks it.
#[test]
fn refused_reporting_options_point_at_the_field() {
    let e = env_with(DiskParams::default(), true);
    let all = e.ok(&rsoc(0, 0, 0, 8192), &[], 8192);
    let pointer = |r: &ScsiResult| r.sense.and_then(|s| s.field);
    let mut checked = 0;
    for d in all[4..].chunks(8) {
        let (op, sa, servactv) = (d[0], u16::from_be_bytes([d[2], d[3]]), d[5] & 1 != 0);
        let (good, bad) = if servactv { (2, 1) } else { (1, 2) };
        let one = e.ok(&rsoc(good, op, sa, 512), &[], 512);
        assert_eq!((one[1] & 7, one[4]), (3, op), "{op:#04x}/{sa:#x}");
        let r = expect_sense(&e, &rsoc(bad, op, sa, 512), &[], 512, INVALID_CDB);
        assert_eq!(
            pointer(&r),
            Some(FieldPointer::cdb(2, 2)),
            "{op:#04x}/{sa:#x}"
        );
        checked += 1;
    }
    assert!(checked > 40);
    for options in 4..8 {
        let r = expect_sense(&e, &rsoc(options, 0x28, 0, 512), &[], 512, INVALID_CDB);
        assert_eq!(pointer(&r), Some(FieldPointer::cdb(2, 2)), "{options}");
    }
    // The fixed-format sense a transport returns carries it (SKSV, C/D,
    // BPV, bit 2; byte 2).
    let r = expect_sense(&e, &rsoc(2, 0x28, 0, 512), &[], 512, INVALID_CDB);
    assert_eq!(r.sense.unwrap().to_fixed().as_bytes()[15..18], [0xCA, 0, 2]);
}

#[test]
fn report_opcodes_one_command_usage_data() {
    let e = env();
    const F: u8 = 0xFF;
    let read10 = [0, 3, 0, 10, 0x28, 0xF9, F, F, F, F, 0, F, F, 0x04];
    // 001b: operation code only; 011b ignores the service action of an
    // operation code without service actions.
    assert_eq!(
        e.ok(&rsoc(1, ScsiOp::READ10.get(), 0, 512), &[], 512),
        read10
    );
    assert_eq!(
        e.ok(&rsoc(3, ScsiOp::READ10.get(), 7, 512), &[], 512),
        read10
    );
    // 010b / 011b: the service action sits in its field of the usage data.
    let rc16 = [
        0, 3, 0, 16, 0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, 0x04,
    ];
    assert_eq!(e.ok(&rsoc(2, 0x9E, 0x10, 512), &[], 512), rc16);
    assert_eq!(e.ok(&rsoc(3, 0x9E, 0x10, 512), &[], 512), rc16);
    let caw = e.ok(&rsoc(1, ScsiOp::COMPARE_AND_WRITE.get(), 0, 512), &[], 512);
    assert_eq!(
        caw,
        [
            0, 3, 0, 16, 0x89, 0xF8, F, F, F, F, F, F, F, F, 0, 0, 0, F, 0, 0x04
        ]
    );
    let rsoc_self = e.ok(&rsoc(2, 0xA3, 0x0C, 512), &[], 512);
    assert_eq!(
        rsoc_self,
        [0, 3, 0, 12, 0xA3, 0x0C, 0x87, F, F, F, F, F, F, F, 0, 0x04]
    );
    // Not supported: SUPPORT 001b, no usage data.
    for options in 1..=3 {
        assert_eq!(e.ok(&rsoc(options, 0xC0, 0, 512), &[], 512), [0, 1, 0, 0]);
        assert_eq!(e.ok(&rsoc(options, 0x02, 0, 512), &[], 512), [0, 1, 0, 0]);
    }
    assert_eq!(e.ok(&rsoc(2, 0x9E, 0x11, 512), &[], 512), [0, 1, 0, 0]);
    assert_eq!(e.ok(&rsoc(3, 0x9E, 0x0110, 512), &[], 512), [0, 1, 0, 0]);
    // The disk has no reservations: PR IN is not supported.
    assert_eq!(e.ok(&rsoc(2, 0x5E, 0, 512), &[], 512), [0, 1, 0, 0]);
    // 001b with service actions, 010b without, reserved options.
    expect_sense(&e, &rsoc(1, 0x9E, 0x10, 512), &[], 512, INVALID_CDB);
    expect_sense(
        &e,
        &rsoc(2, ScsiOp::READ10.get(), 0, 512),
        &[],
        512,
        INVALID_CDB,
    );
    for options in 4..=7 {
        expect_sense(
            &e,
            &rsoc(options, ScsiOp::READ10.get(), 0, 512),
            &[],
            512,
            INVALID_CDB,
        );
    }
    // RCTD: CTDP and a command timeouts descriptor after the usage data.
    let d = e.ok(&rsoc(0x81, ScsiOp::READ10.get(), 0, 512), &[], 512);
    assert_eq!(d.len(), read10.len() + 12);
    assert_eq!(d[1], 0x80 | 3);
    assert_eq!(&d[2..read10.len()], &read10[2..]);
    assert_eq!(&d[read10.len()..], &[0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    // Allocation length truncates.
    assert_eq!(
        e.ok(&rsoc(1, ScsiOp::READ10.get(), 0, 6), &[], 512),
        read10[..6]
    );
    assert_eq!(e.ok(&rsoc(1, ScsiOp::READ10.get(), 0, 0), &[], 512), []);
}

#[test]
fn report_opcodes_all_commands() {
    let list = |e: &Env, rctd: bool| {
        let options = if rctd { 0x80 } else { 0 };
        let d = e.ok(&rsoc(options, 0, 0, 0x1_0000), &[], 0x1_0000);
        let len = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
        assert_eq!(len, d.len() - 4);
        let size = if rctd { 20 } else { 8 };
        assert_eq!(len % size, 0);
        d[4..].chunks(size).map(<[u8]>::to_vec).collect::<Vec<_>>()
    };
    let pr = env_with(DiskParams::default(), true);
    let no_unmap = env_with(
        DiskParams {
            unmap: Some(false),
            ..Default::default()
        },
        false,
    );
    for (e, has_pr, has_unmap) in [
        (&env(), false, true),
        (&pr, true, true),
        (&no_unmap, false, false),
    ] {
        let want: Vec<_> = e.scsi.offered().collect();
        for rctd in [false, true] {
            let descs = list(e, rctd);
            assert_eq!(descs.len(), want.len());
            for (d, w) in descs.iter().zip(&want) {
                assert_eq!(ScsiOp::new(d[0]), w.op);
                assert_eq!(
                    u16::from_be_bytes([d[2], d[3]]),
                    u16::from(w.sa.unwrap_or(0))
                );
                assert_eq!(
                    d[5],
                    u8::from(rctd) << 1 | u8::from(w.sa.is_some()),
                    "{d:02x?}"
                );
                assert_eq!(usize::from(u16::from_be_bytes([d[6], d[7]])), w.usage.len());
                if rctd {
                    assert_eq!(&d[8..], &[0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
                }
            }
            assert_eq!(
                descs
                    .iter()
                    .any(|d| d[0] == ScsiOp::PERSISTENT_RESERVE_IN.get()),
                has_pr
            );
            assert_eq!(descs.iter().any(|d| d[0] == ScsiOp::UNMAP.get()), has_unmap);
            assert!(
                descs
                    .iter()
                    .any(|d| d[0] == ScsiOp::COMPARE_AND_WRITE.get() && d[7] == 16)
            );
        }
    }
    // Allocation length truncates; the length field stays whole.
    let e = env();
    let d = e.ok(&rsoc(0, 0, 0, 10), &[], 512);
    assert_eq!(d.len(), 10);
    assert_eq!(
        u32::from_be_bytes(d[..4].try_into().unwrap()) as usize,
        8 * e.scsi.offered().count()
    );
}

/// Every command in the table is run (never INVALID COMMAND OPERATION
/// CODE), every other operation code is refused with it, and an
/// unsupported service action of a listed operation code is INVALID FIELD
/// IN CDB.
#[test]
fn opcode_table_matches_the_adapter() {
    let pr = env_with(DiskParams::default(), true);
    let no_unmap = env_with(
        DiskParams {
            unmap: Some(false),
            ..Default::default()
        },
        false,
    );
    for e in [&env(), &pr, &no_unmap] {
        let offered: Vec<_> = e.scsi.offered().collect();
        for opcode in 0..=255u8 {
            let entries: Vec<_> = offered
                .iter()
                .filter(|x| x.op == ScsiOp::new(opcode))
                .collect();
            let has_sa = entries.iter().any(|x| x.sa.is_some());
            let sas: &[u8] = if has_sa { &[0; 0] } else { &[0] };
            let all_sas: Vec<u8> = (0..32).collect();
            for &sa in if has_sa { &all_sas[..] } else { sas } {
                let mut cdb = [0u8; 16];
                cdb[0] = opcode;
                cdb[1] = sa;
                let (r, _) = e.run(&cdb, &[], 4096);
                let sense = r
                    .sense
                    .map(|s| (s.key.get(), s.additional.asc(), s.additional.ascq()));
                let listed = entries.iter().any(|x| x.sa.is_none_or(|s| s == sa));
                if listed {
                    assert_ne!(sense, Some(INVALID_OPCODE), "{opcode:#04x}/{sa:#04x}");
                } else if has_sa {
                    assert_eq!(sense, Some(INVALID_CDB), "{opcode:#04x}/{sa:#04x}");
                } else {
                    assert_eq!(sense, Some(INVALID_OPCODE), "{opcode:#04x}");
                }
            }
        }
    }
}

/// The usage data claims exactly the bits the parser decodes: flipping a
/// claimed bit of an all-zero CDB changes the decoded command (or makes it
/// invalid), flipping any other bit changes nothing.
#[test]
fn usage_data_matches_parse_cdb() {
    use super::opcodes::SUPPORTED;
    use parastor_hw::scsi::cdb_len;
    for e in SUPPORTED {
        let u = e.usage;
        assert_eq!(ScsiOp::new(u[0]), e.op);
        assert_eq!(Some(u.len()), cdb_len(e.op), "{:#04x}", e.op);
        let mut base = vec![0u8; u.len()];
        base[0] = e.op.get();
        if let Some(sa) = e.sa {
            assert_eq!(u[1] & 0x1F, sa);
            base[1] = sa;
        }
        let parsed = parse_cdb(&base);
        assert!(parsed.is_ok(), "{:#04x}: {parsed:?}", e.op);
        for byte in 1..u.len() {
            for bit in 0..8 {
                let mask = 1u8 << bit;
                if byte == 1 && e.sa.is_some() && mask & 0x1F != 0 {
                    continue; // the service action itself
                }
                let mut cdb = base.clone();
                cdb[byte] ^= mask;
                let flipped = parse_cdb(&cdb);
                // PERSISTENT RESERVE OUT decodes SCOPE and TYPE for every
                // service action; REGISTER, CLEAR and REGISTER AND IGNORE
                // EXISTING KEY do not look at them.
                let ignored_by_adapter = e.op == ScsiOp::PERSISTENT_RESERVE_OUT
                    && byte == 2
                    && e.sa.map(PrOutAction::new).is_some_and(|sa| {
                        matches!(
                            sa,
                            PrOutAction::REGISTER
                                | PrOutAction::CLEAR
                                | PrOutAction::REGISTER_AND_IGNORE
                        )
                    });
                if u[byte] & mask != 0 {
                    assert_ne!(flipped, parsed, "{:#04x} byte {byte} bit {bit}", e.op);
                } else if !ignored_by_adapter {
                    assert_eq!(flipped, parsed, "{:#04x} byte {byte} bit {bit}", e.op);
                }
            }
        }
    }
}

#[test]
fn naca_protect_and_anchor_are_refused() {
    let e = env();
    let block = [0u8; 512];
    // NACA in the control byte.
    expect_sense(
        &e,
        &[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0x04],
        &[],
        0,
        INVALID_CDB,
    );
    let mut r = rw10(ScsiOp::READ10.get(), 0, 0, 1);
    r[9] = 0x04;
    expect_sense(&e, &r, &[], 512, INVALID_CDB);
    // No protection information.
    expect_sense(
        &e,
        &rw10(ScsiOp::READ10.get(), 0x20, 0, 1),
        &[],
        512,
        INVALID_CDB,
    );
    expect_sense(
        &e,
        &rw16(ScsiOp::WRITE16.get(), 0x60, 0, 1),
        &block,
        512,
        INVALID_CDB,
    );
    expect_sense(
        &e,
        &rw10(ScsiOp::VERIFY10.get(), 0x80, 0, 1),
        &[],
        0,
        INVALID_CDB,
    );
    expect_sense(
        &e,
        &rw12(ScsiOp::WRITE_VERIFY12.get(), 0x20, 0, 1),
        &block,
        512,
        INVALID_CDB,
    );
    expect_sense(
        &e,
        &rw10(ScsiOp::WRITE_SAME10.get(), 0x20, 0, 1),
        &block,
        512,
        INVALID_CDB,
    );
    let mut c = caw(0, 1);
    c[1] = 0x20;
    expect_sense(&e, &c, &[0; 1024], 1024, INVALID_CDB);
    // READ(6) has no protect field: bits 7:5 of byte 1 are ignored.
    e.ok(&[ScsiOp::READ6.get(), 0xE0, 0, 0, 1, 0], &[], 512);
    // ANCHOR without ANC_SUP.
    expect_sense(
        &e,
        &rw10(ScsiOp::WRITE_SAME10.get(), 0x18, 0, 1),
        &block,
        512,
        INVALID_CDB,
    );
    let mut u = unmap_cdb(24);
    u[1] = 1;
    expect_sense(&e, &u, &unmap_list(&[(0, 1)]), 24, INVALID_CDB);
    e.ok(&rw10(ScsiOp::WRITE_SAME10.get(), 0x08, 0, 1), &block, 512);
}

#[test]
fn get_lba_status() {
    let e = env();
    let mut c = [0u8; 16];
    c[0] = ScsiOp::SERVICE_ACTION_IN16.get();
    c[1] = ServiceActionIn::GET_LBA_STATUS.get();
    c[2..10].copy_from_slice(&100u64.to_be_bytes());
    c[13] = 64;
    let d = e.ok(&c, &[], 64);
    assert_eq!(d.len(), 24);
    assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 20);
    assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), 100);
    assert_eq!(
        u32::from_be_bytes(d[16..20].try_into().unwrap()) as u64,
        SECTORS - 100
    );
    c[2..10].copy_from_slice(&SECTORS.to_be_bytes());
    expect_sense(&e, &c, &[], 64, LBA_RANGE);
}

fn pr_out(sa: u8, kind: u8, key: u64, sa_key: u64) -> ([u8; 10], Vec<u8>) {
    let mut c = [0u8; 10];
    c[0] = ScsiOp::PERSISTENT_RESERVE_OUT.get();
    c[1] = sa;
    c[2] = kind;
    c[8] = 24;
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    (c, p)
}

fn pr_in(sa: u8) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = ScsiOp::PERSISTENT_RESERVE_IN.get();
    c[1] = sa;
    c[7] = 1;
    c
}

#[test]
fn persistent_reservations_two_initiators() {
    let e = env_with(DiskParams::default(), true);
    let out = |who, sa, kind, key, sa_key| {
        let (c, p) = pr_out(sa, kind, key, sa_key);
        e.run_as(who, &c, &p, 24).0
    };
    assert_eq!(out(A, 0, 0, 0, 0x1111).status, ScsiStatus::GOOD);
    assert_eq!(out(B, 0, 0, 0, 0x2222).status, ScsiStatus::GOOD);
    assert_eq!(out(A, 1, 1, 0x1111, 0).status, ScsiStatus::GOOD);
    // B may read but not write under Write Exclusive.
    let w = rw10(ScsiOp::WRITE10.get(), 0, 0, 1);
    assert_eq!(
        e.run_as(B, &w, &[1; 512], 512).0.status,
        ScsiStatus::RESERVATION_CONFLICT
    );
    assert_eq!(e.run_as(A, &w, &[1; 512], 512).0.status, ScsiStatus::GOOD);
    assert_eq!(
        e.run_as(B, &rw10(ScsiOp::READ10.get(), 0, 0, 1), &[], 512)
            .0
            .status,
        ScsiStatus::GOOD
    );
    // READ KEYS, READ RESERVATION, READ FULL STATUS, REPORT CAPABILITIES.
    let d = e.ok(&pr_in(0), &[], 256);
    assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 16);
    assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), 0x1111);
    assert_eq!(u64::from_be_bytes(d[16..24].try_into().unwrap()), 0x2222);
    let d = e.ok(&pr_in(1), &[], 256);
    assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 16);
    assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), 0x1111);
    assert_eq!(d[21], 1);
    let d = e.ok(&pr_in(3), &[], 256);
    assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 2 * 48);
    assert_eq!(d[8 + 12], 1, "A holds the reservation");
    assert_eq!(&d[8 + 24 + 8..8 + 48], &A.to_bytes());
    let d = e.ok(&pr_in(2), &[], 256);
    assert_eq!(&d[..2], &[0, 8]);
    assert_eq!(d[3] & 0x80, 0x80);
    assert_eq!(&d[4..6], &[0xEA, 0x01]);
    // Releasing with the wrong type; then B preempts A.
    assert_eq!(sense_of(&out(A, 2, 3, 0x1111, 0)), (5, 0x26, 4));
    assert_eq!(
        out(B, 1, 1, 0x2222, 0).status,
        ScsiStatus::RESERVATION_CONFLICT
    );
    assert_eq!(out(B, 4, 3, 0x2222, 0x1111).status, ScsiStatus::GOOD);
    // A's next command learns it was preempted (REGISTRATIONS PREEMPTED).
    assert_eq!(
        sense_of(
            &e.run_as(A, &rw10(ScsiOp::READ10.get(), 0, 0, 1), &[], 512)
                .0
        ),
        (6, 0x2A, 0x05)
    );
    assert_eq!(
        e.run_as(A, &rw10(ScsiOp::READ10.get(), 0, 0, 1), &[], 512)
            .0
            .status,
        ScsiStatus::RESERVATION_CONFLICT
    );
    // Malformed requests.
    assert_eq!(sense_of(&out(B, 1, 2, 0x2222, 0)), INVALID_CDB);
    let (mut c, p) = pr_out(0, 0, 0, 1);
    c[8] = 20;
    assert_eq!(sense_of(&e.run_as(B, &c, &p, 24).0), PARAM_LEN);
    let (c, mut p) = pr_out(0, 0, 0, 1);
    p[20] = 0x08;
    assert_eq!(sense_of(&e.run_as(B, &c, &p, 24).0), INVALID_PARAM);
    assert_eq!(sense_of(&e.run_as(B, &pr_in(9), &[], 24).0), INVALID_CDB);
    // A disk without reservations.
    let plain = env();
    expect_sense(&plain, &pr_in(0), &[], 256, INVALID_OPCODE);
}

#[test]
fn unit_attention_once_after_resize() {
    let e = env();
    e.ok(&[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0], &[], 0);
    e.ram.resize(SECTORS * 2);
    // INQUIRY is served and does not consume the unit attention.
    e.ok(&[ScsiOp::INQUIRY.get(), 0, 0, 0, 36, 0], &[], 36);
    expect_sense(
        &e,
        &[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0],
        &[],
        0,
        (6, 0x2A, 9),
    );
    e.ok(&[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0], &[], 0);
    let d = e.ok(
        &[ScsiOp::READ_CAPACITY10.get(), 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[],
        8,
    );
    assert_eq!(
        u32::from_be_bytes(d[..4].try_into().unwrap()) as u64,
        2 * SECTORS - 1
    );
    // REQUEST SENSE reports it with GOOD, once.
    e.ram.resize(SECTORS);
    let (r, d) = e.run(&[ScsiOp::REQUEST_SENSE.get(), 0, 0, 0, 18, 0], &[], 18);
    assert_eq!(r, ScsiResult::good(18));
    let s = SenseData::parse(&d).unwrap();
    assert_eq!(
        (s.key.get(), s.additional.asc(), s.additional.ascq()),
        (6, 0x2A, 9)
    );
    e.ok(&[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0], &[], 0);
}

#[test]
fn error_table() {
    let io = |kind| DiskError::Io(IoError::new(kind, 5));
    let mem = |kind| DiskError::MemoryAccess(MemoryError::new(Gpa::new(0x1000), 1, kind));
    type Case = (DiskError, u8, Option<(u8, u8, u8)>);
    let cases: Vec<Case> = vec![
        (DiskError::IllegalBlock, 2, Some(LBA_RANGE)),
        (DiskError::InvalidInput("x"), 2, Some(INVALID_CDB)),
        (mem(MemoryErrorKind::OutOfRange), 2, Some(INVALID_CDB)),
        (mem(MemoryErrorKind::Misaligned), 2, Some(INVALID_CDB)),
        (mem(MemoryErrorKind::WriteProtected), 2, Some(INVALID_CDB)),
        (mem(MemoryErrorKind::BeyondBuffer), 2, Some(INVALID_CDB)),
        (
            mem(MemoryErrorKind::Inaccessible(Denied::Unmapped)),
            2,
            Some(INVALID_CDB),
        ),
        (
            mem(MemoryErrorKind::Inaccessible(Denied::Private)),
            2,
            Some(INVALID_CDB),
        ),
        (
            mem(MemoryErrorKind::Inaccessible(Denied::Shared)),
            2,
            Some(INVALID_CDB),
        ),
        (
            mem(MemoryErrorKind::Inaccessible(Denied::VtlProtected)),
            2,
            Some(INVALID_CDB),
        ),
        (
            mem(MemoryErrorKind::Inaccessible(Denied::Fault)),
            2,
            Some((4, 0x44, 0)),
        ),
        (io(IoErrorKind::DeviceFailed), 2, Some((4, 0x44, 0))),
        (io(IoErrorKind::TimedOut), 2, Some((0xB, 0x3E, 2))),
        (io(IoErrorKind::NotReady), 2, Some((2, 0x04, 0))),
        (io(IoErrorKind::NoSpace), 2, Some((7, 0x27, 7))),
        (io(IoErrorKind::Cancelled), 2, Some((0xB, 0, 0))),
        (io(IoErrorKind::Unsupported), 2, Some(INVALID_OPCODE)),
        (io(IoErrorKind::Other), 2, Some((3, 0, 0))),
        (
            DiskError::Medium(MediumError::UnrecoveredRead),
            2,
            Some((3, 0x11, 0)),
        ),
        (
            DiskError::Medium(MediumError::WriteFault),
            2,
            Some((3, 0x03, 0)),
        ),
        (
            DiskError::Medium(MediumError::GuardCheck),
            2,
            Some((3, 0x10, 1)),
        ),
        (
            DiskError::Medium(MediumError::ApplicationTagCheck),
            2,
            Some((3, 0x10, 2)),
        ),
        (
            DiskError::Medium(MediumError::ReferenceTagCheck),
            2,
            Some((3, 0x10, 3)),
        ),
        (DiskError::ReadOnly, 2, Some((7, 0x27, 0))),
        (DiskError::ReservationConflict, 0x18, None),
        (DiskError::AbortedByPreempt, 0x40, Some((0xB, 0, 0))),
        (DiskError::UnsupportedEject, 2, Some(INVALID_OPCODE)),
        (DiskError::Unsupported("x"), 2, Some(INVALID_OPCODE)),
        // TASK SET FULL, no sense.
        (DiskError::Busy("x"), 0x28, None),
    ];
    for (err, st, sense) in cases {
        for e in [err.clone(), err.clone().in_member(3).in_member(1)] {
            let r = disk_error_result(&e);
            assert_eq!(r.status.get(), st, "{e}");
            assert_eq!(
                r.sense
                    .map(|s| (s.key.get(), s.additional.asc(), s.additional.ascq())),
                sense,
                "{e}"
            );
            assert_eq!(r.tx, 0);
        }
    }
}

#[test]
fn execute_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let e = env();
    let ranges = [GpaRange::new(Gpa::new(GPA), 512)];
    let sg = SgList::new(&e.mem, &ranges, true).unwrap();
    let fut = e.scsi.execute(&[0; 6], sg, A, SenseDelivery::Autosense);
    assert_send(&fut);
    drop(fut);
}

#[test]
fn hostile_cdbs_never_panic() {
    let e = env_with(DiskParams::default(), true);
    let mut rng = fastrand::Rng::with_seed(0x2545_F491_4F6C_DD1D);
    let mut next = || rng.u64(..);
    let ops = [
        ScsiOp::READ6.get(),
        ScsiOp::WRITE6.get(),
        ScsiOp::READ10.get(),
        ScsiOp::WRITE10.get(),
        ScsiOp::READ16.get(),
        ScsiOp::WRITE16.get(),
        ScsiOp::VERIFY10.get(),
        ScsiOp::VERIFY16.get(),
        ScsiOp::WRITE_VERIFY10.get(),
        ScsiOp::WRITE_SAME10.get(),
        ScsiOp::WRITE_SAME16.get(),
        ScsiOp::UNMAP.get(),
        ScsiOp::COMPARE_AND_WRITE.get(),
        ScsiOp::MODE_SENSE6.get(),
        ScsiOp::MODE_SELECT6.get(),
        ScsiOp::MODE_SELECT10.get(),
        ScsiOp::INQUIRY.get(),
        ScsiOp::PERSISTENT_RESERVE_IN.get(),
        ScsiOp::PERSISTENT_RESERVE_OUT.get(),
        ScsiOp::SERVICE_ACTION_IN16.get(),
        ScsiOp::MAINTENANCE_IN.get(),
        ScsiOp::START_STOP_UNIT.get(),
        ScsiOp::REQUEST_SENSE.get(),
    ];
    for i in 0..20_000 {
        let len = (next() % 18) as usize;
        let mut cdb = [0u8; 18];
        for b in cdb.iter_mut() {
            *b = next() as u8;
        }
        if i % 2 == 0 {
            cdb[0] = ops[(next() % ops.len() as u64) as usize];
            // Keep LBAs mostly in range so data paths run.
            if next() % 2 == 0 {
                for b in &mut cdb[2..6] {
                    *b = 0;
                }
                cdb[7] = 0;
            }
        }
        let data_len = match next() % 4 {
            0 => 0,
            1 => (next() % 64) as usize,
            2 => 512,
            _ => (next() % 8192) as usize,
        };
        let out: Vec<u8> = (0..data_len).map(|_| next() as u8).collect();
        let (r, _) = e.run(&cdb[..len], &out, data_len);
        assert!(r.tx <= data_len, "{r:?}");
    }
}

#[test]
fn read_only_disk_is_write_protected() {
    use parastor_core::layered::{LayerConfig, LayerSource, LayeredDisk};
    let ram = RamDisk::new(SECTORS * u64::from(SS), SS).unwrap();
    let layer = LayerConfig::new(LayerSource::Disk(Disk::new(ram.clone()).unwrap()));
    let disk = Disk::new(LayeredDisk::new(true, vec![layer]).unwrap()).unwrap();
    let e = Env {
        mem: RamGuestMemory::new(1 << 20),
        ram,
        scsi: ScsiDisk::new(disk, DiskParams::default()),
        delivery: SenseDelivery::RequestSense,
    };
    const WP: (u8, u8, u8) = (7, 0x27, 0);
    let block = [0u8; 1024];
    expect_sense(&e, &rw10(ScsiOp::WRITE10.get(), 0, 0, 1), &block, 512, WP);
    expect_sense(
        &e,
        &rw10(ScsiOp::WRITE_SAME10.get(), 0, 0, 4),
        &block,
        512,
        WP,
    );
    expect_sense(&e, &caw(0, 1), &block, 1024, WP);
    expect_sense(&e, &rw16(ScsiOp::ORWRITE16.get(), 0, 0, 1), &block, 512, WP);
    expect_sense(
        &e,
        &rw10(ScsiOp::WRITE_VERIFY10.get(), 0, 0, 1),
        &block,
        512,
        WP,
    );
    e.ok(&rw10(ScsiOp::READ10.get(), 0, 0, 1), &[], 512);
    let d = e.ok(&[ScsiOp::MODE_SENSE6.get(), 0, 0x08, 0, 255, 0], &[], 255);
    assert_eq!(d[2] & 0x80, 0x80, "WP");
}

/// PRE-FETCH(10/16): nothing is cached, so an in-range request is GOOD
/// (SBC-4: GOOD, not CONDITION MET, when the blocks do not fit in the
/// cache), whatever IMMED and the group number say; 0 blocks reach to
/// the last block; a range past the end is LBA OUT OF RANGE. (libiscsi
/// Prefetch10/16.)
#[test]
fn pre_fetch_checks_the_range_and_fetches_nothing() {
    let e = env();
    let last = SECTORS - 1;
    for op in [ScsiOp::PRE_FETCH10, ScsiOp::PRE_FETCH16] {
        let cdb = |flags: u8, lba: u64, blocks: u32| -> Vec<u8> {
            if op == ScsiOp::PRE_FETCH10 {
                rw10(op.get(), flags, lba as u32, blocks as u16).to_vec()
            } else {
                rw16(op.get(), flags, lba, blocks).to_vec()
            }
        };
        for (lba, blocks) in [
            (0, 1),
            (0, 256),
            (last, 1),
            (0, 0),
            (last, 0),
            (SECTORS - 256, 256),
        ] {
            let (r, _) = e.run(&cdb(0, lba, blocks), &[], 0);
            assert_eq!(r, ScsiResult::good(0), "{op:?} {lba} {blocks}");
        }
        // IMMED, and a group number (ignored).
        let mut c = cdb(0x02, 0, 1);
        let group_at = c.len() - 2;
        c[group_at] = 3;
        assert_eq!(e.run(&c, &[], 0).0, ScsiResult::good(0));
        for (lba, blocks) in [(SECTORS + 1, 0), (SECTORS, 1), (last, 2), (0xFFFF_FFFF, 1)] {
            expect_sense(&e, &cdb(0, lba, blocks), &[], 0, LBA_RANGE);
        }
    }
    expect_sense(
        &e,
        &rw16(ScsiOp::PRE_FETCH16.get(), 0, u64::MAX, 1),
        &[],
        0,
        LBA_RANGE,
    );
}

/// READ DEFECT DATA(10/12): a virtual disk has no defects; the lists asked
/// for come back valid and empty in the format asked for, the 12-byte
/// form with its wider header; the reserved format 111b is refused.
/// (libiscsi ReadDefectData10/12.)
#[test]
fn read_defect_data_reports_empty_lists() {
    let e = env();
    let rdd10 = |flags: u8, alloc: u16| {
        let mut c = [0u8; 10];
        c[0] = ScsiOp::READ_DEFECT_DATA10.get();
        c[2] = flags;
        c[7..9].copy_from_slice(&alloc.to_be_bytes());
        c
    };
    let rdd12 = |flags: u8, index: u32, alloc: u32| {
        let mut c = [0u8; 12];
        c[0] = ScsiOp::READ_DEFECT_DATA12.get();
        c[1] = flags;
        c[2..6].copy_from_slice(&index.to_be_bytes());
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    };
    assert_eq!(e.ok(&rdd10(0, 32), &[], 32), [0, 0, 0, 0]);
    // PLIST and GLIST in the physical sector format (101b).
    assert_eq!(e.ok(&rdd10(0x1D, 32), &[], 32), [0, 0x1D, 0, 0]);
    assert_eq!(e.ok(&rdd10(0x1D, 2), &[], 32), [0, 0x1D]);
    assert_eq!(e.ok(&rdd12(0, 0, 32), &[], 32), [0; 8]);
    assert_eq!(
        e.ok(&rdd12(0x0B, 7, 32), &[], 32),
        [0, 0x0B, 0, 0, 0, 0, 0, 0]
    );
    expect_sense(&e, &rdd10(0x07, 32), &[], 32, INVALID_CDB);
    expect_sense(&e, &rdd12(0x1F, 0, 32), &[], 32, INVALID_CDB);
}

/// ORWRITE(16) ORs the data-out buffer into the blocks (SBC-3): zeros |
/// A5 = A5, A5 | 5A = FF, at the start and at the end of the disk; 0
/// blocks do nothing; the range, ORPROTECT and the transfer limit are
/// checked before anything is read. (libiscsi OrWrite.)
#[test]
fn orwrite_ors_the_data_into_the_blocks() {
    let e = env();
    let or = |lba: u64, blocks: u32, byte: u8| {
        let data = vec![byte; blocks as usize * SS as usize];
        e.ok(
            &rw16(ScsiOp::ORWRITE16.get(), 0, lba, blocks),
            &data,
            data.len(),
        );
    };
    for (lba, blocks) in [(0u64, 1u32), (0, 256), (SECTORS - 7, 7)] {
        let len = blocks as usize * SS as usize;
        e.write(lba, &vec![0; len]);
        or(lba, blocks, 0xA5);
        assert_eq!(e.read(lba, blocks), vec![0xA5; len]);
        or(lba, blocks, 0x5A);
        assert_eq!(e.read(lba, blocks), vec![0xFF; len]);
    }
    // A pattern ORed into another: bit by bit, nothing else touched.
    let a = pattern(1024, 1);
    let b = pattern(1024, 0x80);
    e.write(10, &a);
    e.write(12, &pattern(512, 9));
    e.ok(&rw16(ScsiOp::ORWRITE16.get(), 0x08, 10, 2), &b, 1024);
    let want: Vec<u8> = a.iter().zip(&b).map(|(x, y)| x | y).collect();
    assert_eq!(e.read(10, 2), want);
    assert_eq!(e.read(12, 1), pattern(512, 9));
    // 0 blocks: GOOD, nothing transferred.
    assert_eq!(
        e.run(&rw16(ScsiOp::ORWRITE16.get(), 0, 0, 0), &[], 0).0,
        ScsiResult::good(0)
    );
    let block = [0xFFu8; 512];
    expect_sense(
        &e,
        &rw16(ScsiOp::ORWRITE16.get(), 0, SECTORS, 1),
        &block,
        512,
        LBA_RANGE,
    );
    expect_sense(
        &e,
        &rw16(ScsiOp::ORWRITE16.get(), 0, SECTORS + 1, 0),
        &[],
        0,
        LBA_RANGE,
    );
    for protect in 1..8u8 {
        expect_sense(
            &e,
            &rw16(ScsiOp::ORWRITE16.get(), protect << 5, 0, 1),
            &block,
            512,
            INVALID_CDB,
        );
    }
    assert_eq!(e.read(0, 1), vec![0xFF; 512]);
    // Over the MAXIMUM TRANSFER LENGTH (lowered to 8 blocks by the
    // transport).
    e.scsi.limit_transfer(8 * SS);
    let nine = [0xFFu8; 9 * 512];
    expect_sense(
        &e,
        &rw16(ScsiOp::ORWRITE16.get(), 0, 0, 9),
        &nine,
        nine.len(),
        INVALID_CDB,
    );
}

#[test]
fn compare_and_write_excludes_overlapping_writes_only() {
    use core::pin::pin;
    use core::task::{Context, Poll};
    let e = env();
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let data = pattern(512, 30);
    // Buffers of the commands kept pending sit away from the one `e.ok`
    // reuses.
    const PENDING: u64 = GPA + (1 << 20);
    e.mem.write_at(Gpa::new(PENDING), &data).unwrap();
    let ranges = [GpaRange::new(Gpa::new(PENDING), 512)];
    let sg = || SgList::new(&e.mem, &ranges, true).unwrap();
    // While a COMPARE AND WRITE holds LBA 0, a write there waits...
    let guard = block_on(e.scsi.ranges.exclusive(0, 1));
    let w0 = rw10(ScsiOp::WRITE10.get(), 0, 0, 1);
    let mut write = pin!(e.scsi.execute(&w0, sg(), B, e.delivery));
    assert!(write.as_mut().poll(&mut cx).is_pending());
    assert!(write.as_mut().poll(&mut cx).is_pending());
    // ...while writes elsewhere, UNMAP and WRITE SAME included, do not.
    e.ok(&rw10(ScsiOp::WRITE10.get(), 0, 1, 1), &data, 512);
    e.ok(&rw10(ScsiOp::WRITE_SAME10.get(), 0, 1, 8), &data, 512);
    e.ok(&unmap_cdb(24), &unmap_list(&[(4, 2)]), 24);
    drop(guard);
    assert_eq!(
        write.as_mut().poll(&mut cx),
        Poll::Ready(ScsiResult::good(512))
    );
    assert_eq!(e.read(0, 1), data);
    // A COMPARE AND WRITE waits for an overlapping write in flight, then
    // compares against what that write left.
    let held = block_on(e.scsi.ranges.shared(0, 4));
    let mut cw = data.clone();
    cw.extend_from_slice(&pattern(512, 31));
    e.mem.write_at(Gpa::new(PENDING), &cw).unwrap();
    let caw_ranges = [GpaRange::new(Gpa::new(PENDING), 1024)];
    let caw_sg = SgList::new(&e.mem, &caw_ranges, true).unwrap();
    let cdb = caw(0, 1);
    let mut c = pin!(e.scsi.execute(&cdb, caw_sg, A, e.delivery));
    assert!(c.as_mut().poll(&mut cx).is_pending());
    assert_eq!(e.scsi.ranges.waiting(), 1);
    drop(held);
    assert_eq!(
        c.as_mut().poll(&mut cx),
        Poll::Ready(ScsiResult::good(1024))
    );
    assert_eq!(e.read(0, 1), pattern(512, 31));
}

#[test]
fn cancelled_compare_and_write_releases_nothing_it_did_not_hold() {
    use core::task::Context;
    let e = env();
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let held = block_on(e.scsi.ranges.shared(0, 1));
    e.mem.write_at(Gpa::new(GPA), &[0; 1024]).unwrap();
    let ranges = [GpaRange::new(Gpa::new(GPA), 1024)];
    let sg = SgList::new(&e.mem, &ranges, true).unwrap();
    let cdb = caw(0, 1);
    let mut c = alloc::boxed::Box::pin(e.scsi.execute(&cdb, sg, A, e.delivery));
    assert!(c.as_mut().poll(&mut cx).is_pending());
    assert_eq!(e.scsi.ranges.waiting(), 1);
    drop(c);
    assert_eq!(e.scsi.ranges.waiting(), 0);
    drop(held);
    // The range is free again.
    let _g = block_on(e.scsi.ranges.exclusive(0, 1));
}

#[test]
fn multi_chunk_verify_write_same_and_write_and_verify() {
    let ram = RamDisk::new(8 << 20, SS).unwrap();
    let e = Env {
        mem: RamGuestMemory::new(64 << 20),
        scsi: ScsiDisk::new(Disk::new(ram.clone()).unwrap(), DiskParams::default()),
        ram,
        delivery: SenseDelivery::RequestSense,
    };
    let blocks = 6144u32; // 3 MiB: three staging chunks
    let len = blocks as usize * 512;
    let data = pattern(len, 40);
    e.ok(
        &rw16(ScsiOp::WRITE_VERIFY16.get(), 0x02, 100, blocks),
        &data,
        len,
    );
    e.ok(&rw16(ScsiOp::VERIFY16.get(), 0x02, 100, blocks), &data, len);
    let mut bad = data.clone();
    let at = (5 << 19) + 77;
    bad[at] ^= 0x40;
    let r = expect_sense(
        &e,
        &rw16(ScsiOp::VERIFY16.get(), 0x02, 100, blocks),
        &bad,
        len,
        (0xE, 0x1D, 0),
    );
    assert_eq!(r.sense.unwrap().information, Some(at as u64));
    let block = pattern(512, 41);
    e.ok(
        &rw16(ScsiOp::WRITE_SAME16.get(), 0, 10, blocks),
        &block,
        512,
    );
    e.ok(&rw16(ScsiOp::VERIFY16.get(), 0x06, 10, blocks), &block, 512);
    e.ok(&rw16(ScsiOp::WRITE16.get(), 0, 5000, 1), &[0; 512], 512);
    let r = expect_sense(
        &e,
        &rw16(ScsiOp::VERIFY16.get(), 0x06, 10, blocks),
        &block,
        512,
        (0xE, 0x1D, 0),
    );
    assert_eq!(r.sense.unwrap().information, Some((5000 - 10) * 512));
}

/// `execute_now` gives exactly what `execute` gives for every READ and
/// WRITE form and outcome (data, status, sense, REQUEST SENSE afterwards,
/// UNIT ATTENTION), declines everything else and a WRITE that would wait
/// (leaving the UNIT ATTENTION unclaimed), and does the I/O.
#[test]
fn execute_now_matches_execute() {
    for delivery in [SenseDelivery::RequestSense, SenseDelivery::Autosense] {
        execute_now_matches_execute_with(delivery);
    }
}

fn execute_now_matches_execute_with(delivery: SenseDelivery) {
    let now = Env { delivery, ..env() };
    let later = Env { delivery, ..env() };
    let data = pattern(8 * 512, 40);
    let run_now = |e: &Env, cdb: &[u8], len: usize| {
        e.mem
            .write_at(Gpa::new(GPA), &data[..len.min(data.len())])
            .unwrap();
        let ranges = [GpaRange::new(Gpa::new(GPA), len as u64)];
        let sg = SgList::new(&e.mem, &ranges, true).unwrap();
        let r = e
            .scsi
            .execute_now(cdb, &sg, A, e.delivery)
            .expect("a READ or WRITE runs now");
        let mut buf = vec![0u8; len];
        e.mem.read_at(Gpa::new(GPA), &mut buf).unwrap();
        (r, buf)
    };
    let cases: Vec<(Vec<u8>, usize)> = vec![
        (rw10(ScsiOp::WRITE10.get(), 0, 3, 8).to_vec(), 4096),
        (rw10(ScsiOp::READ10.get(), 0, 3, 8).to_vec(), 4096),
        (rw16(ScsiOp::WRITE16.get(), 0x08, 100, 2).to_vec(), 1024), // FUA
        (rw12(ScsiOp::READ12.get(), 0, 100, 2).to_vec(), 1024),
        (vec![ScsiOp::READ6.get(), 0, 0, 3, 1, 0], 512),
        (rw10(ScsiOp::READ10.get(), 0, 3, 0).to_vec(), 0), // zero length
        (
            rw10(ScsiOp::READ10.get(), 0, SECTORS as u32 - 1, 2).to_vec(),
            1024,
        ), // past the end
        (rw10(ScsiOp::WRITE10.get(), 0, 3, 8).to_vec(), 512), // buffer too short
        (rw16(ScsiOp::READ16.get(), 0, u64::MAX, 1).to_vec(), 512), // LBA overflow
    ];
    for (cdb, len) in &cases {
        later
            .mem
            .write_at(Gpa::new(GPA), &data[..(*len).min(data.len())])
            .unwrap();
        let want = later.run_as(A, cdb, &data[..(*len).min(data.len())], *len);
        let got = run_now(&now, cdb, *len);
        assert_eq!(got, want, "{cdb:02x?}");
        // The sense REQUEST SENSE reports afterwards is the same too.
        let rs = [ScsiOp::REQUEST_SENSE.get(), 0, 0, 0, 252, 0];
        assert_eq!(
            now.run(&rs, &[], 252),
            later.run(&rs, &[], 252),
            "{cdb:02x?}"
        );
    }
    assert_eq!(now.read(3, 8), data);
    // Other commands are declined, and nothing happens.
    let ranges = [GpaRange::new(Gpa::new(GPA), 512)];
    let sg = SgList::new(&now.mem, &ranges, true).unwrap();
    for cdb in [
        vec![ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0],
        vec![ScsiOp::INQUIRY.get(), 0, 0, 0, 36, 0],
        caw(0, 1).to_vec(),
        vec![0xFF; 10],
    ] {
        assert_eq!(
            now.scsi.execute_now(&cdb, &sg, A, delivery),
            None,
            "{cdb:02x?}"
        );
    }
    // A capacity change: the READ run now reports the UNIT ATTENTION once.
    now.ram.resize(SECTORS * 2);
    let (r, _) = run_now(&now, &rw10(ScsiOp::READ10.get(), 0, 3, 1), 512);
    assert_eq!(sense_of(&r), (SenseKey::UNIT_ATTENTION.get(), 0x2A, 0x09));
    assert_eq!(
        run_now(&now, &rw10(ScsiOp::READ10.get(), 0, 3, 1), 512).0,
        ScsiResult::good(512)
    );
    // A WRITE overlapping a held COMPARE AND WRITE range is declined
    // without claiming a pending UNIT ATTENTION; execute then reports it.
    now.ram.resize(SECTORS);
    let guard = block_on(now.scsi.ranges.exclusive(0, 1));
    let w = rw10(ScsiOp::WRITE10.get(), 0, 0, 1);
    assert_eq!(now.scsi.execute_now(&w, &sg, A, delivery), None);
    let r = now
        .scsi
        .execute_now(&rw10(ScsiOp::WRITE10.get(), 0, 1, 1), &sg, A, delivery)
        .unwrap();
    assert_eq!(sense_of(&r), (SenseKey::UNIT_ATTENTION.get(), 0x2A, 0x09));
    drop(guard);
    let (r, _) = now.run(&w, &data, 512);
    assert_eq!(
        r,
        ScsiResult::good(512),
        "the UNIT ATTENTION went to the WRITE at LBA 1"
    );
}

/// A data buffer of `len` bytes at [`GPA`], most of it past the end of
/// guest memory: only a command that reads no more than it needs (the
/// part inside memory) can succeed, and one that stages all of it would
/// allocate `len` bytes.
fn mostly_outside_memory(
    e: &Env,
    len: u64,
    exec: impl FnOnce(SgList<'_>) -> ScsiResult,
) -> ScsiResult {
    assert!(len > e.mem.size());
    let ranges = [GpaRange::new(Gpa::new(GPA), len)];
    exec(SgList::new(&e.mem, &ranges, true).unwrap())
}

/// REGISTER AND MOVE reads its header and the one TransportID it uses,
/// whatever parameter list length the CDB claims.
#[test]
fn register_and_move_reads_only_what_it_uses() {
    let e = env_with(DiskParams::default(), true);
    let (c, p) = pr_out(PrOutAction::REGISTER.get(), 0, 0, 0x1111);
    e.ok(&c, &p, 24);
    let (c, p) = pr_out(PrOutAction::RESERVE.get(), 1, 0x1111, 0);
    e.ok(&c, &p, 24);
    let mv = |param_len: u32, tid_len: u32| {
        let (mut c, mut p) = pr_out(PrOutAction::REGISTER_AND_MOVE.get(), 1, 0x1111, 0x2222);
        c[5..9].copy_from_slice(&param_len.to_be_bytes());
        p[20..24].copy_from_slice(&tid_len.to_be_bytes());
        p.extend_from_slice(&[0; 24]);
        p[24] = ProtocolId::NONE.get();
        p[32..48].copy_from_slice(&B.to_bytes());
        (c, p)
    };
    // A TransportID longer than the list, or shorter than the form.
    let (c, p) = mv(48, 25);
    expect_sense(&e, &c, &p, 48, PARAM_LEN);
    let (c, p) = mv(48, 23);
    expect_sense(&e, &c, &p, 48, INVALID_PARAM);
    // A 4 GiB list, nearly all of it outside guest memory.
    let (c, p) = mv(u32::MAX, 24);
    e.mem.write_at(Gpa::new(GPA), &p).unwrap();
    let r = mostly_outside_memory(&e, u32::MAX.into(), |sg| {
        block_on(e.scsi.execute(&c, sg, A, e.delivery))
    });
    assert_eq!(r, ScsiResult::good(u32::MAX as usize));
    let d = e.ok(&pr_in(PrInAction::READ_FULL_STATUS.get()), &[], 256);
    assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 2 * 48);
    // B holds the reservation now, with its new key.
    let b = &d[8 + 48..];
    assert_eq!((&b[..8], b[12]), (&0x2222u64.to_be_bytes()[..], 1));
    assert_eq!(&b[32..48], &B.to_bytes());
}

/// VERIFY with BYTCHK 1 stages the data-out buffer a chunk at a time, not
/// the whole transfer: a mismatch in the first chunk of a 4 GiB VERIFY
/// whose buffer lies mostly outside guest memory is a MISCOMPARE.
#[test]
fn verify_stages_its_buffer_by_chunk() {
    let ram = RamDisk::new(4 << 30, SS).unwrap();
    let e = Env {
        mem: RamGuestMemory::new(4 << 20),
        scsi: ScsiDisk::new(
            Disk::new(ram.clone()).unwrap(),
            DiskParams {
                max_transfer_bytes: u32::MAX,
                ..Default::default()
            },
        ),
        ram,
        delivery: SenseDelivery::RequestSense,
    };
    let blocks = u32::MAX / SS;
    e.mem.write_at(Gpa::new(GPA + 100), &[1]).unwrap();
    let r = mostly_outside_memory(&e, u64::from(blocks) * u64::from(SS), |sg| {
        block_on(e.scsi.execute(
            &rw16(ScsiOp::VERIFY16.get(), 0x02, 0, blocks),
            sg,
            A,
            e.delivery,
        ))
    });
    assert_eq!(sense_of(&r), (0xE, 0x1D, 0));
    assert_eq!(r.sense.unwrap().information, Some(100));
}

/// On a disk that completes inline, a command that must wait for another
/// command's overlapping range (another channel's COMPARE AND WRITE, or a
/// WRITE in progress under a COMPARE AND WRITE) is not run in place:
/// [`Lun::run_now`] declines it (the transport keeps its future, which
/// the range's release wakes) rather than failing it as a broken inline
/// promise; once the range is free a WRITE runs in place.
#[test]
fn run_now_declines_a_command_waiting_for_a_range() {
    let ram = RamDisk::new(SECTORS * u64::from(SS), SS).unwrap();
    let scsi = alloc::sync::Arc::new(ScsiDisk::new(
        Disk::new(ram).unwrap(),
        DiskParams::default(),
    ));
    let lun = crate::Lun::Disk(scsi.clone());
    let mem = RamGuestMemory::new(64 << 10);
    let ranges = [GpaRange::new(Gpa::new(GPA), 1024)];
    let sg = SgList::new(&mem, &ranges, true).unwrap();
    let d = SenseDelivery::Autosense;
    let write = rw10(ScsiOp::WRITE10.get(), 0, 0, 1);
    let cmp = caw(0, 1);
    {
        // A COMPARE AND WRITE of LBA 0 in progress elsewhere.
        let _held = block_on(scsi.ranges.exclusive(0, 1));
        assert_eq!(lun.run_now(&write, &sg, A, d), None, "WRITE under a CAW");
    }
    {
        // A WRITE of LBA 0 in progress elsewhere.
        let _held = block_on(scsi.ranges.shared(0, 1));
        assert_eq!(lun.run_now(&cmp, &sg, A, d), None, "CAW over a WRITE");
    }
    assert_eq!(lun.run_now(&write, &sg, A, d), Some(ScsiResult::good(512)));
    // Commands that hold a range always run as their future, which the
    // transport keeps while it waits.
    assert_eq!(lun.run_now(&cmp, &sg, A, d), None);
    // The buffer holds the block just written twice: the compare matches.
    let mut block = vec![0u8; 512];
    mem.read_at(Gpa::new(GPA), &mut block).unwrap();
    mem.write_at(Gpa::new(GPA + 512), &block).unwrap();
    assert_eq!(
        block_on(lun.execute(&cmp, sg, A, d)),
        ScsiResult::good(1024)
    );
}

/// A timer whose sleeps end at the next poll: a disk behind it does not
/// complete inline, so commands stay in flight together.
struct YieldTimer;

impl parastor_core::Timer for YieldTimer {
    fn sleep(&self, _: core::time::Duration) -> parastor_core::BoxFuture<'static, ()> {
        let mut yielded = false;
        alloc::boxed::Box::pin(core::future::poll_fn(move |cx| {
            if yielded {
                core::task::Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                core::task::Poll::Pending
            }
        }))
    }
}

/// A disk of `bytes` that answers every request one poll late.
fn slow_disk(bytes: u64) -> (RamDisk, Disk) {
    let ram = RamDisk::new(bytes, SS).unwrap();
    let slow = parastor_core::DelayDisk::new(
        Disk::new(ram.clone()).unwrap(),
        parastor_core::DelayHandle::new(core::time::Duration::from_nanos(1)),
        alloc::sync::Arc::new(YieldTimer),
    );
    (ram, Disk::new(slow).unwrap())
}

/// A burst of large scratch-using commands on two LUNs sharing one pool
/// (as a controller's LUNs do) never holds more than the pool's budget:
/// commands wait for room (the pool's waiter count shows it), and every
/// one completes with the right result.
#[test]
fn burst_of_big_commands_stays_within_the_scratch_budget() {
    use core::task::{Context, Poll};
    const BUDGET: usize = 1 << 20;
    let pool = BouncePool::new(BUDGET);
    let mem = RamGuestMemory::new(64 << 20);
    let luns: Vec<_> = (0..2)
        .map(|_| {
            let (ram, disk) = slow_disk(32 << 20);
            let scsi = ScsiDisk::new(disk, DiskParams::default());
            scsi.use_scratch(&pool);
            (ram, scsi)
        })
        .collect();
    let mib = (1 << 20) / SS;
    let block = pattern(512, 3);
    let data = pattern(1 << 20, 4);
    // Each LUN: WRITE SAME 8 MiB (one region), WRITE AND VERIFY 1 MiB (two
    // regions), VERIFY BYTCHK 0 of 8 MiB (one region).
    let mut cmds: Vec<(usize, Vec<u8>, Vec<u8>)> = Vec::new();
    for lun in 0..2 {
        cmds.push((
            lun,
            rw16(ScsiOp::WRITE_SAME16.get(), 0, 0, 8 * mib).to_vec(),
            block.clone(),
        ));
        cmds.push((
            lun,
            rw16(ScsiOp::WRITE_VERIFY16.get(), 0x02, 20 * mib as u64, mib).to_vec(),
            data.clone(),
        ));
        cmds.push((
            lun,
            rw16(ScsiOp::VERIFY16.get(), 0, 0, 8 * mib).to_vec(),
            Vec::new(),
        ));
    }
    // Each command's buffer in its own guest range.
    let slots: Vec<_> = cmds
        .iter()
        .enumerate()
        .map(|(i, (_, _, out))| {
            let gpa = Gpa::new(GPA + (i as u64) * (2 << 20));
            mem.write_at(gpa, out).unwrap();
            [GpaRange::new(gpa, out.len().max(512) as u64)]
        })
        .collect();
    let mut futs: Vec<_> = cmds
        .iter()
        .zip(&slots)
        .map(|((lun, cdb, _), ranges)| {
            let sg = SgList::new(&mem, ranges, true).unwrap();
            Some(alloc::boxed::Box::pin(luns[*lun].1.execute(
                cdb,
                sg,
                A,
                SenseDelivery::Autosense,
            )))
        })
        .collect();
    let mut cx = Context::from_waker(core::task::Waker::noop());
    let mut results = vec![None; futs.len()];
    let (mut most_waiting, mut most_held) = (0, 0);
    while results.iter().any(Option::is_none) {
        for (f, r) in futs.iter_mut().zip(&mut results) {
            if let Some(fut) = f
                && let Poll::Ready(done) = fut.as_mut().poll(&mut cx)
            {
                *r = Some(done);
                *f = None;
            }
            most_waiting = most_waiting.max(pool.waiting());
            most_held = most_held.max(pool.held());
        }
    }
    for (r, (_, cdb, _)) in results.iter().zip(&cmds) {
        assert_eq!(r.as_ref().unwrap().status, ScsiStatus::GOOD, "{cdb:02x?}");
    }
    assert!(most_waiting > 0, "the burst had to wait for scratch");
    assert!(most_held <= BUDGET);
    assert!(pool.high_water() <= BUDGET);
    assert!(pool.high_water() >= BUDGET / 2);
    assert_eq!(pool.in_use(), 0);
    for (ram, _) in &luns {
        let disk = Disk::new(ram.clone()).unwrap();
        let got = read_disk(&disk, &mem, 8 * mib as u64 - 1, 1);
        assert_eq!(got, block);
        assert_eq!(read_disk(&disk, &mem, 20 * mib as u64, mib), data);
    }
}

/// Reads `blocks` at `lba` straight from `disk` through guest memory.
fn read_disk(disk: &Disk, mem: &RamGuestMemory, lba: u64, blocks: u32) -> Vec<u8> {
    let len = blocks as usize * SS as usize;
    let gpa = Gpa::new(60 << 20);
    let ranges = [GpaRange::new(gpa, len as u64)];
    block_on(disk.read(
        SgList::new(mem, &ranges, true).unwrap(),
        lba,
        IoOptions::default(),
    ))
    .unwrap();
    let mut out = vec![0; len];
    mem.read_at(gpa, &mut out).unwrap();
    out
}

/// One command's amplification is capped by what VPD 0xB0 advertises
/// (SBC-4 transfer limits): VERIFY and WRITE AND VERIFY by the MAXIMUM
/// TRANSFER LENGTH, WRITE SAME by the MAXIMUM WRITE SAME LENGTH, COMPARE
/// AND WRITE by the MAXIMUM COMPARE AND WRITE LENGTH; one block over is
/// ILLEGAL REQUEST / INVALID FIELD IN CDB, the limit itself succeeds.
#[test]
fn amplification_is_capped_by_the_block_limits() {
    let (_, disk) = slow_disk(128 << 20);
    let e = Env {
        scsi: ScsiDisk::new(
            disk,
            DiskParams {
                max_transfer_bytes: 1 << 20,
                max_write_same_bytes: 4 << 20,
                ..Default::default()
            },
        ),
        ..env()
    };
    let b0 = e.ok(&[ScsiOp::INQUIRY.get(), 1, 0xB0, 0, 64, 0], &[], 64);
    let max_transfer = u32::from_be_bytes(b0[8..12].try_into().unwrap());
    let max_write_same = u64::from_be_bytes(b0[36..44].try_into().unwrap());
    let max_caw = u32::from(b0[5]);
    assert_eq!(max_transfer, (1 << 20) / SS);
    assert_eq!(max_write_same, (4 << 20) / u64::from(SS));
    assert_eq!(max_caw, u32::from(MAX_COMPARE_AND_WRITE_BLOCKS));
    let block = pattern(512, 9);
    let over_len = (max_transfer as usize + 1) * SS as usize;
    for cdb in [
        rw16(ScsiOp::VERIFY16.get(), 0, 0, max_transfer + 1),
        rw16(ScsiOp::VERIFY16.get(), 0x02, 0, max_transfer + 1),
        rw16(ScsiOp::WRITE_VERIFY16.get(), 0, 0, max_transfer + 1),
        rw16(ScsiOp::WRITE_SAME16.get(), 0, 0, max_write_same as u32 + 1),
    ] {
        expect_sense(&e, &cdb, &block, over_len, INVALID_CDB);
    }
    expect_sense(
        &e,
        &caw(0, MAX_COMPARE_AND_WRITE_BLOCKS + 1),
        &[],
        2 * 65 * SS as usize,
        INVALID_CDB,
    );
    // At the limits: accepted.
    e.ok(
        &rw16(ScsiOp::WRITE_SAME16.get(), 0, 0, max_write_same as u32),
        &block,
        512,
    );
    e.ok(&rw16(ScsiOp::VERIFY16.get(), 0, 0, max_transfer), &[], 0);
    // The whole WRITE SAME went through scratch regions, never more than
    // one at a time.
    assert!(e.scsi.scratch_pool().high_water() <= SCRATCH_CHUNK);
}

/// The MAXIMUM WRITE SAME LENGTH never exceeds 65535 blocks, whatever
/// the byte limit allows (64 MiB is 131072 blocks of 512 bytes): libiscsi's
/// `WriteSame16.Unmap` follows a limit of 65536 or more with a
/// 65536-block WRITE(16), more than a transport carries. The limit is
/// enforced: one block over is INVALID FIELD IN CDB, the limit works.
#[test]
fn write_same_length_is_at_most_65535_blocks() {
    let blocks = MAX_WRITE_SAME_BLOCKS + 1;
    let big = ScsiDisk::new(
        Disk::new(RamDisk::new(blocks * u64::from(SS), SS).unwrap()).unwrap(),
        DiskParams::default(),
    );
    let e = Env { scsi: big, ..env() };
    let b0 = e.ok(&[ScsiOp::INQUIRY.get(), 1, 0xB0, 0, 64, 0], &[], 64);
    assert_eq!(u64::from_be_bytes(b0[36..44].try_into().unwrap()), 0xFFFF);
    let zero = [0u8; 512];
    expect_sense(
        &e,
        &rw16(ScsiOp::WRITE_SAME16.get(), 0x08, 0, 0x1_0000),
        &zero,
        512,
        INVALID_CDB,
    );
    e.ok(
        &rw16(ScsiOp::WRITE_SAME16.get(), 0x08, 1, 0xFFFF),
        &zero,
        512,
    );
    // 4 KiB blocks reach the 64 MiB default first.
    let e4k = ScsiDisk::new(
        Disk::new(RamDisk::new(64 * 4096, 4096).unwrap()).unwrap(),
        DiskParams::default(),
    );
    let e4k = Env { scsi: e4k, ..env() };
    let b0 = e4k.ok(&[ScsiOp::INQUIRY.get(), 1, 0xB0, 0, 64, 0], &[], 64);
    assert_eq!(
        u64::from_be_bytes(b0[36..44].try_into().unwrap()),
        (64 << 20) / 4096
    );
}

/// Staged on the pool, not the heap: the same commands again allocate no
/// new scratch blocks.
#[test]
fn scratch_blocks_are_reused() {
    let e = env();
    let block = pattern(512, 5);
    let data = pattern(64 << 10, 6);
    let run = || {
        e.ok(&rw16(ScsiOp::WRITE_SAME16.get(), 0, 0, 1024), &block, 512);
        e.ok(
            &rw16(ScsiOp::WRITE_VERIFY16.get(), 0x02, 0, 128),
            &data,
            data.len(),
        );
        e.ok(
            &rw16(ScsiOp::VERIFY16.get(), 0x02, 0, 128),
            &data,
            data.len(),
        );
        e.ok(
            &caw(0, 1),
            &[data[..512].to_vec(), block.clone()].concat(),
            1024,
        );
    };
    run();
    let pool = e.scsi.scratch_pool();
    let first = pool.allocations();
    assert!(first > 0);
    for _ in 0..5 {
        run();
    }
    assert_eq!(pool.allocations(), first);
    assert_eq!(pool.in_use(), 0);
}

/// Persistent reservation changes raise UNIT ATTENTION on the other
/// initiators (SPC-4 5.12.11): CLEAR → 2A/03, PREEMPT → 2A/05 on the
/// preempted, RELEASE of a Registrants Only reservation → 2A/04. Each is
/// reported once, to the initiator's next command other than INQUIRY;
/// REQUEST SENSE returns it with GOOD.
#[test]
fn reservation_changes_raise_unit_attentions_on_other_initiators() {
    let e = env_with(DiskParams::default(), true);
    let out = |who, sa, kind, key, sa_key| {
        let (c, p) = pr_out(sa, kind, key, sa_key);
        let r = e.run_as(who, &c, &p, 24).0;
        assert_eq!(r.status, ScsiStatus::GOOD, "PR OUT {sa}: {r:?}");
    };
    let tur = [0u8; 6];
    let status = |who| e.run_as(who, &tur, &[], 0).0;
    let register_both = || {
        out(A, 0, 0, 0, 0x1111);
        out(B, 0, 0, 0, 0x2222);
    };
    // CLEAR from A: B gets RESERVATIONS PREEMPTED once, A nothing.
    register_both();
    out(A, 3, 0, 0x1111, 0);
    assert_eq!(status(A).status, ScsiStatus::GOOD);
    assert_eq!(sense_of(&status(B)), (6, 0x2A, 0x03));
    assert_eq!(status(B).status, ScsiStatus::GOOD);
    // PREEMPT: the preempted B gets REGISTRATIONS PREEMPTED. INQUIRY does
    // not consume it; REQUEST SENSE returns it with GOOD and clears it.
    register_both();
    out(A, 1, 1, 0x1111, 0);
    out(A, 4, 1, 0x1111, 0x2222);
    let inquiry = [0x12, 0, 0, 0, 96, 0];
    assert_eq!(e.run_as(B, &inquiry, &[], 96).0.status, ScsiStatus::GOOD);
    let request_sense = [0x03, 0, 0, 0, 18, 0];
    let (r, d) = e.run_as(B, &request_sense, &[], 18);
    assert_eq!(r.status, ScsiStatus::GOOD);
    assert_eq!((d[2] & 0xF, d[12], d[13]), (6, 0x2A, 0x05));
    assert_eq!(status(B).status, ScsiStatus::GOOD);
    assert_eq!(status(A).status, ScsiStatus::GOOD);
    out(A, 2, 1, 0x1111, 0);
    // RELEASE of a Write Exclusive – Registrants Only reservation: B gets
    // RESERVATIONS RELEASED, also on a READ (the inline path).
    out(B, 0, 0, 0, 0x2222);
    out(A, 1, 5, 0x1111, 0);
    out(A, 2, 5, 0x1111, 0);
    let read = rw10(ScsiOp::READ10.get(), 0, 0, 1);
    let (r, _) = e.run_as(B, &read, &[], 512);
    assert_eq!(sense_of(&r), (6, 0x2A, 0x04));
    assert_eq!(e.run_as(B, &read, &[], 512).0.status, ScsiStatus::GOOD);
    // Two pending ones are reported one at a time, oldest first.
    out(A, 1, 5, 0x1111, 0);
    out(A, 2, 5, 0x1111, 0);
    out(A, 3, 0, 0x1111, 0);
    assert_eq!(sense_of(&status(B)), (6, 0x2A, 0x04));
    assert_eq!(sense_of(&status(B)), (6, 0x2A, 0x03));
    assert_eq!(status(B).status, ScsiStatus::GOOD);
}
