//! The `scsi_cdb` fuzz harness: arbitrary bytes → a small [`ScsiDisk`] and
//! a sequence of hostile commands (arbitrary CDBs, data buffers and
//! initiators), with occasional resizes of the RAM disk underneath.
//!
//! The disk is a RAM disk of 512- or 4096-byte sectors (small), optionally
//! behind a read-only layered disk and optionally wrapped in a
//! [`ReservationsDisk`] (so PERSISTENT RESERVE IN / OUT do something); the
//! adapter's [`DiskParams`] (write cache, UNMAP, FUA, capacity cap,
//! transfer limits, serial number) are fuzzed too.
//!
//! Properties:
//! - nothing panics;
//! - `tx` never exceeds the data buffer's length, and only GOOD transfers;
//! - the status is GOOD, CHECK CONDITION, RESERVATION CONFLICT or TASK
//!   ABORTED; CHECK CONDITION and TASK ABORTED carry sense data with a valid
//!   sense key (1–0xE), GOOD and RESERVATION CONFLICT carry none (REQUEST
//!   SENSE returns its sense data in the buffer, with GOOD);
//! - after a GOOD WRITE(6/10/12/16) of N blocks at LBA, READ(16) of that
//!   range by the same initiator is GOOD and returns the bytes written;
//! - a GOOD REQUEST SENSE returns the sense of the initiator's last CHECK
//!   CONDITION (or NO SENSE if it was already reported, by REQUEST SENSE
//!   or by autosense), unless it reports a pending unit attention instead
//!   (the capacity change, or a reservation change by another initiator).
//!
//! Reuse between inputs: each command's buffer takes its guest memory from
//! the thread's [`scratch`](crate::scratch) pool (zeroed, as good as new);
//! the disk and adapter are built anew for every input, so an input
//! behaves the same alone as after others.
//!
//! # Input format
//!
//! The input is read front to back (no length prefixes at the end), so
//! seeds can be written by hand: a `Header` (7 bytes when its options are
//! `None`), then steps until the input runs out. A step starts with a kind
//! byte: `kind % 16 == 15` is a resize (`u16` LE sector count, modulo twice
//! the initial size plus one); anything else is a command (bit 4: try
//! `execute_now` first; bit 5: its sense is delivered by autosense): a
//! `CmdHeader` (7 bytes), one `RangeSpec` (3 bytes) per range, the CDB
//! bytes, then the payload bytes. The buffer holds the payload, then
//! `fill` bytes.

use crate::buf::TestBuf;
use crate::stacks::{disk, layer, ram};
use arbitrary::{Arbitrary, Unstructured};
use futures::executor::block_on;
use parastor_core::Gpa;
use parastor_core::layered::LayeredDisk;
use parastor_core::memory::GuestMemory;
use parastor_core::{Disk, GpaRange, InitiatorId, ReservationsDisk};
use parastor_scsi::{DiskParams, ScsiDisk, ScsiResult, SenseDelivery};

/// Most steps one input runs.
const MAX_STEPS: usize = 48;
/// Longest CDB passed.
const MAX_CDB: usize = 32;

/// SCSI status codes (SAM-5).
const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;
const RESERVATION_CONFLICT: u8 = 0x18;
const TASK_ABORTED: u8 = 0x40;
/// UNIT ATTENTION / CAPACITY DATA HAS CHANGED.
const UA_CAPACITY: (u8, u8, u8) = (0x6, 0x2A, 0x09);

/// Disk and adapter configuration.
#[derive(Arbitrary, Debug)]
struct Header {
    /// Bit 0: 4096-byte sectors; bit 1: persistent reservations; bit 2:
    /// read-only layered disk; bit 3: no write cache; bit 4: a serial
    /// number.
    flags: u8,
    /// Sectors, relative to a small base size.
    sectors: u8,
    /// `% 3`: UNMAP as the disk says, off, on.
    unmap: u8,
    /// `% 3`: FUA as the disk says, off, on.
    fua: u8,
    /// Capacity cap, in 512-byte units.
    cap: Option<u16>,
    /// Largest transfer, in 512-byte units.
    max_transfer: Option<u16>,
    /// Largest WRITE SAME, in 512-byte units.
    max_write_same: Option<u16>,
}

/// One command's framing.
#[derive(Arbitrary, Debug)]
struct CmdHeader {
    /// Initiator, `% 4`.
    initiator: u8,
    /// CDB length, `% 33`.
    cdb_len: u8,
    /// Ranges, `1 + % 4`.
    ranges: u8,
    /// Bit 0: buffer not writable; bit 1: guest memory ends short of the
    /// last range (by `1 + flags >> 2` bytes).
    flags: u8,
    /// Byte after the payload.
    fill: u8,
    /// Payload length.
    payload_len: u16,
}

/// One range of the data buffer.
#[derive(Arbitrary, Debug)]
struct RangeSpec {
    len: u16,
    /// Gap before the range, `% 64`.
    gap: u8,
}

/// The last sense data the adapter holds for an initiator's REQUEST
/// SENSE: `None` when the harness cannot tell.
type Stored = Option<Option<(u8, u8, u8)>>;

/// Initiators the commands come from.
const INITIATORS: usize = 4;

/// Builds the data buffer of one command: its memory, ranges and contents.
struct Buffer {
    buf: TestBuf,
    contents: Vec<u8>,
}

impl Buffer {
    fn new(specs: &[RangeSpec], short: Option<u64>, payload: &[u8], fill: u8) -> Self {
        let mut ranges = Vec::with_capacity(specs.len());
        let mut cursor = 0u64;
        for r in specs {
            cursor += u64::from(r.gap % 64);
            ranges.push(GpaRange::new(Gpa::new(cursor), u64::from(r.len)));
            cursor += u64::from(r.len);
        }
        let mem_size = match short {
            Some(by) => cursor.saturating_sub(by),
            None => cursor + 64,
        };
        let buf = TestBuf::with_ranges(ranges, mem_size);
        let len = buf.len();
        let mut contents = vec![fill; len];
        let n = payload.len().min(len);
        contents[..n].copy_from_slice(&payload[..n]);
        let b = Buffer { buf, contents };
        b.store();
        b
    }

    /// The part of each range that lies in guest memory, with its offset in
    /// the buffer.
    fn pieces(&self) -> Vec<(u64, usize, usize)> {
        let size = self.buf.memory().size();
        let mut out = Vec::new();
        let mut off = 0;
        for r in self.buf.ranges() {
            let n = r.len.min(size.saturating_sub(r.gpa.get())) as usize;
            if n > 0 {
                out.push((r.gpa.get(), off, n));
            }
            off += r.len as usize;
        }
        out
    }

    /// Writes the contents into guest memory (where it exists).
    fn store(&self) {
        let mem = self.buf.memory();
        for (gpa, off, n) in self.pieces() {
            mem.write_at(Gpa::new(gpa), &self.contents[off..off + n])
                .expect("clamped to memory");
        }
    }

    /// The buffer's current bytes (those outside guest memory as stored).
    fn load(&self) -> Vec<u8> {
        let mut out = self.contents.clone();
        let mem = self.buf.memory();
        for (gpa, off, n) in self.pieces() {
            mem.read_at(Gpa::new(gpa), &mut out[off..off + n])
                .expect("clamped to memory");
        }
        out
    }
}

fn params(h: &Header) -> DiskParams {
    let tri = |v: u8| match v % 3 {
        0 => None,
        1 => Some(false),
        _ => Some(true),
    };
    let mut p = DiskParams {
        write_cache: h.flags & 8 == 0,
        unmap: tri(h.unmap),
        fua: tri(h.fua),
        size_cap_bytes: h.cap.map(|c| u64::from(c) << 9),
        ..DiskParams::default()
    };
    if h.flags & 16 != 0 {
        p.serial = b"PARASTOR-FUZZ-0001".to_vec();
    }
    if let Some(m) = h.max_transfer {
        p.max_transfer_bytes = u32::from(m) << 9;
    }
    if let Some(m) = h.max_write_same {
        p.max_write_same_bytes = u64::from(m) << 9;
    }
    p
}

/// The (LBA, blocks) of a WRITE(6/10/12/16) CDB, as SBC-4 defines them.
fn write_range(cdb: &[u8]) -> Option<(u64, u64)> {
    let be = |r: core::ops::Range<usize>| {
        cdb.get(r)
            .map(|b| b.iter().fold(0u64, |a, &x| a << 8 | u64::from(x)))
    };
    match *cdb.first()? {
        0x0A => {
            let lba = be(1..4)? & 0x1F_FFFF;
            let n = be(4..5)?;
            Some((lba, if n == 0 { 256 } else { n }))
        }
        0x2A => Some((be(2..6)?, be(7..9)?)),
        0xAA => Some((be(2..6)?, be(6..10)?)),
        0x8A => Some((be(2..10)?, be(10..14)?)),
        _ => None,
    }
}

/// (key, ASC, ASCQ) of the sense data REQUEST SENSE returned in `data`.
fn reported_sense(desc: bool, data: &[u8]) -> Option<(u8, u8, u8)> {
    if desc {
        (data.len() >= 4).then(|| (data[1] & 0xF, data[2], data[3]))
    } else {
        (data.len() >= 14).then(|| (data[2] & 0xF, data[12], data[13]))
    }
}

/// Checks the properties every result must have.
fn check_result(r: &ScsiResult, len: usize, what: &dyn Fn() -> String) {
    assert!(r.tx <= len, "tx {} > buffer {len}: {r:?}\n{}", r.tx, what());
    match r.status.get() {
        GOOD => assert!(r.sense.is_none(), "GOOD with sense: {r:?}\n{}", what()),
        CHECK_CONDITION | TASK_ABORTED => {
            let s = r.sense.unwrap_or_else(|| {
                panic!("status {:#x} without sense: {r:?}\n{}", r.status, what())
            });
            assert!(
                (1..=0xE).contains(&s.key.get()),
                "invalid sense key {:#x}: {r:?}\n{}",
                s.key,
                what()
            );
        }
        RESERVATION_CONFLICT => {
            assert!(r.sense.is_none(), "conflict with sense: {r:?}\n{}", what())
        }
        other => panic!("unexpected status {other:#x}: {r:?}\n{}", what()),
    }
    if r.status.get() != GOOD {
        assert_eq!(r.tx, 0, "failed command transferred: {r:?}\n{}", what());
    }
}

/// Follows REQUEST SENSE: what it must report, and what the adapter holds
/// afterwards.
/// Whether `sense` is a unit attention REQUEST SENSE may report before the
/// initiator's own sense: the capacity change, or one a persistent
/// reservation change by another initiator raised (2A/03, 2A/04, 2A/05).
fn is_unit_attention(sense: (u8, u8, u8)) -> bool {
    sense == UA_CAPACITY || matches!(sense, (6, 0x2A, 3..=5))
}

fn request_sense(
    stored: Stored,
    reported: Option<(u8, u8, u8)>,
    what: &dyn Fn() -> String,
) -> Stored {
    let Some(got) = reported else {
        // Too little was returned to tell what was reported.
        return None;
    };
    match stored {
        Some(s) => {
            let want = s.unwrap_or((0, 0, 0));
            if got == want {
                // Reporting the held unit attention may have been either.
                if is_unit_attention(got) {
                    None
                } else {
                    Some(None)
                }
            } else if is_unit_attention(got) {
                stored
            } else {
                panic!(
                    "REQUEST SENSE reported {got:x?}, expected {want:x?} (or a pending unit attention)\n{}",
                    what()
                )
            }
        }
        None if is_unit_attention(got) => None,
        None => Some(None),
    }
}

/// Runs one fuzz input. Panics on any violated property.
pub fn scsi_cdb(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(h) = Header::arbitrary(&mut u) else {
        return;
    };
    let ss: u32 = if h.flags & 1 != 0 { 4096 } else { 512 };
    let base = if ss == 512 { 64 } else { 16 };
    let initial = 8 + u64::from(h.sectors) % (4 * base);
    let (ram_disk, mut d): (_, Disk) = ram(initial, ss);
    if h.flags & 4 != 0 {
        let l = LayeredDisk::new(true, vec![layer(d, false, false)]).expect("a valid layer");
        d = disk(l);
    }
    if h.flags & 2 != 0 {
        d = disk(ReservationsDisk::new(d));
    }
    let scsi = ScsiDisk::new(d, params(&h));
    // Sense is kept per initiator.
    let mut stored: [Stored; INITIATORS] = [Some(None); INITIATORS];
    for step in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(kind) = u8::arbitrary(&mut u) else {
            break;
        };
        if kind % 16 == 15 {
            let Ok(n) = u16::arbitrary(&mut u) else {
                break;
            };
            ram_disk.resize(u64::from(n) % (2 * initial + 1));
            continue;
        }
        let Ok(c) = CmdHeader::arbitrary(&mut u) else {
            break;
        };
        let mut specs = Vec::new();
        for _ in 0..1 + c.ranges % 4 {
            let Ok(r) = RangeSpec::arbitrary(&mut u) else {
                return;
            };
            specs.push(r);
        }
        let cdb_len = (usize::from(c.cdb_len) % (MAX_CDB + 1)).min(u.len());
        let cdb = u.bytes(cdb_len).expect("length clamped").to_vec();
        let payload_len = usize::from(c.payload_len).min(u.len());
        let payload = u.bytes(payload_len).expect("length clamped");
        let writable = c.flags & 1 == 0;
        let short = (c.flags & 2 != 0).then(|| 1 + u64::from(c.flags >> 2));
        let buffer = Buffer::new(&specs, short, payload, c.fill);
        let who = usize::from(c.initiator) % INITIATORS;
        let initiator = InitiatorId::new(who as u128);
        let len = buffer.buf.len();
        let sg = buffer.buf.sg(writable);
        let delivery = if kind & 0x20 != 0 {
            SenseDelivery::Autosense
        } else {
            SenseDelivery::RequestSense
        };
        // Half the commands try the future-less path first; it must keep
        // every property `execute` does.
        let now = (kind & 0x10 != 0)
            .then(|| scsi.execute_now(&cdb, &sg, initiator, delivery))
            .flatten();
        let r = now.unwrap_or_else(|| block_on(scsi.execute(&cdb, sg, initiator, delivery)));
        let what = || {
            format!(
                "step {step}: cdb {cdb:02x?}, buffer {len} bytes in {:?} (memory {} bytes, writable {writable}), initiator {}, capacity {} x {ss}\nheader {h:?}",
                buffer.buf.ranges(),
                buffer.buf.memory().size(),
                who,
                scsi.capacity(),
            )
        };
        check_result(&r, len, &what);
        match r.status.get() {
            // Sense delivered by autosense is not kept: NO SENSE is.
            CHECK_CONDITION => {
                stored[who] = Some(match delivery {
                    SenseDelivery::Autosense => None,
                    SenseDelivery::RequestSense => r
                        .sense
                        .map(|s| (s.key.get(), s.additional.asc(), s.additional.ascq())),
                })
            }
            GOOD if cdb.first() == Some(&0x03) => {
                let desc = cdb[1] & 1 != 0;
                let got = buffer.load();
                stored[who] = request_sense(stored[who], reported_sense(desc, &got[..r.tx]), &what);
            }
            GOOD => {
                if let Some((lba, blocks)) = write_range(&cdb) {
                    let bytes = blocks as usize * ss as usize;
                    assert_eq!(r.tx, bytes, "WRITE transferred {} bytes\n{}", r.tx, what());
                    if bytes > 0 {
                        check_readback(
                            &scsi,
                            initiator,
                            lba,
                            blocks,
                            &buffer.contents[..bytes],
                            &what,
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

/// READ(16) of `[lba, lba + blocks)` must be GOOD and return `want`.
fn check_readback(
    scsi: &ScsiDisk,
    initiator: InitiatorId,
    lba: u64,
    blocks: u64,
    want: &[u8],
    what: &dyn Fn() -> String,
) {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&(blocks as u32).to_be_bytes());
    let buf = TestBuf::contiguous(want.len());
    buf.fill(0xA5);
    let r = block_on(scsi.execute(&cdb, buf.sg(true), initiator, SenseDelivery::RequestSense));
    assert!(
        r.status.get() == GOOD && r.tx == want.len(),
        "READ(16) after a GOOD WRITE of {blocks} blocks at {lba}: {r:?}\n{}",
        what()
    );
    if let Some(i) = buf.contents().iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "READ(16) after a GOOD WRITE of {blocks} blocks at {lba} differs at byte {i}\n{}",
            what()
        );
    }
}
