//! The `tcmu_ring` fuzz harness: arbitrary bytes as a TCMU map written by a
//! hostile kernel, through [`CommandRing`] fetch and complete.
//!
//! Input layout (every byte optional; missing bytes are zero):
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | ring size: `512 + 64 × (b % 8)` bytes |
//! | 1 | mailbox mode: 1 = version from byte 2, 2 = no out-of-order completion, 3 = no `READ_LEN`, else a good mailbox |
//! | 2 | the version, in mode 1 |
//! | 3 | initial `cmd_tail`: `8 × b` modulo the ring size |
//! | 4 .. 4 + ring size | the ring's bytes (the map has 4 KiB of data area after it) |
//! | then, 4 bytes each | steps: `op, a, b, c` |
//!
//! Steps (`op % 4`): 0 publishes `cmd_head = a + 256 × b` (any value,
//! aligned or not) and fetches; 1 completes fetched command `a` (modulo the
//! held ones) with status `b` and `c × 16` bytes transferred; 2 writes `b`
//! at ring offset `a × 8 + c % 8` (the kernel changing bytes under the
//! handler); 3 completes every held command, last first.
//!
//! Checked on every input: nothing panics; a ring that opened keeps its
//! promises — every fetched command's data lies inside the data area, its
//! CDB fits the longest TCMU CDB, `cmd_tail` is an aligned offset in the
//! ring after every completion, `complete` moves the tail exactly while a
//! fetched command is waiting, and after the last completion no command is
//! pending.

use std::sync::atomic::Ordering;

use parastor_core::memory::LocalMemory;
use parastor_core::{Gpa, GuestMem, GuestMemoryExt};
use parastor_hw::scsi::{ScsiStatus, SenseData};
use parastor_hw::tcmu::{CMD_HEAD_OFFSET, CMD_TAIL_OFFSET, MAILBOX_LEN, MAX_CDB_LEN};
use parastor_scsi::ScsiResult;
use parastor_tcmu::ring::{CommandRing, RingCommand};

/// Bytes of data area after the ring.
pub const DATA_AREA: u64 = 4096;

/// The ring size byte 0 of an input selects.
pub fn ring_size(selector: u8) -> u32 {
    512 + 64 * u32::from(selector % 8)
}

fn byte(data: &[u8], i: usize) -> u8 {
    data.get(i).copied().unwrap_or(0)
}

/// Runs one input; see the [module docs](self).
pub fn tcmu_ring(data: &[u8]) {
    let ring_size = ring_size(byte(data, 0));
    let ring_off = MAILBOX_LEN as u64;
    let len = ring_off + u64::from(ring_size) + DATA_AREA;
    let mem = GuestMem::new(LocalMemory::new(len as usize));

    // The mailbox.
    let mut mb = [0u8; MAILBOX_LEN];
    let (version, flags) = match byte(data, 1) {
        1 => (u16::from(byte(data, 2)), 0b1111u16),
        2 => (2, 0b1110),
        3 => (2, 0b1101),
        _ => (2, 0b1111),
    };
    mb[0..2].copy_from_slice(&version.to_le_bytes());
    mb[2..4].copy_from_slice(&flags.to_le_bytes());
    mb[4..8].copy_from_slice(&(ring_off as u32).to_le_bytes());
    mb[8..12].copy_from_slice(&ring_size.to_le_bytes());
    let tail = (8 * u32::from(byte(data, 3))) % ring_size;
    mb[12..16].copy_from_slice(&tail.to_le_bytes());
    mb[64..68].copy_from_slice(&tail.to_le_bytes());
    mem.write_at(Gpa::ZERO, &mb).expect("mailbox fits");
    let ring_bytes = data.get(4..).unwrap_or(&[]);
    let ring_bytes = &ring_bytes[..ring_bytes.len().min(ring_size as usize)];
    mem.write_at(Gpa::new(ring_off), ring_bytes)
        .expect("ring fits");
    let steps = data.get(4 + ring_size as usize..).unwrap_or(&[]);

    let Ok(mut ring) = CommandRing::open(mem.clone(), len) else {
        return;
    };
    let (data_start, data_end) = ring.data_area();
    assert_eq!(
        (data_start, data_end),
        (ring_off + u64::from(ring_size), len)
    );
    let mut held: Vec<RingCommand> = Vec::new();
    let mut fetched = Vec::new();

    let check_tail = || {
        let t = mem
            .load_u32(Gpa::new(CMD_TAIL_OFFSET), Ordering::Acquire)
            .expect("tail readable");
        assert!(
            t < ring_size && t.is_multiple_of(8),
            "tail {t:#x} not an aligned ring offset"
        );
    };
    let complete = |ring: &mut CommandRing, cmd: RingCommand, status: u8, tx: usize| {
        let waiting = ring.pending();
        assert!(waiting > 0, "a fetched command is not pending");
        let result = ScsiResult {
            status: ScsiStatus::new(status),
            sense: (status == ScsiStatus::CHECK_CONDITION.get())
                .then(|| SenseData::parse(&[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24]))
                .flatten(),
            tx,
        };
        assert!(
            ring.complete(cmd.id, &result),
            "completion did not move the tail"
        );
        assert_eq!(ring.pending(), waiting - 1);
        ring.recycle(cmd);
        check_tail();
    };

    for step in steps.chunks(4) {
        let (op, a, b, c) = (byte(step, 0), byte(step, 1), byte(step, 2), byte(step, 3));
        match op % 4 {
            0 => {
                let head = u32::from(a) + 256 * u32::from(b);
                mem.store_u32(Gpa::new(CMD_HEAD_OFFSET), head, Ordering::Release)
                    .expect("head writable");
                let before = ring.pending();
                // A head outside the ring fetches nothing more.
                if let Ok(f) = ring.fetch(&mut fetched) {
                    assert_eq!(f.commands, fetched.len());
                    assert_eq!(ring.pending(), before + f.commands);
                    if f.refused > 0 {
                        assert!(f.notify, "refusals must be told to the kernel");
                        check_tail();
                    }
                }
                for cmd in fetched.drain(..) {
                    assert!(cmd.cdb.as_bytes().len() <= MAX_CDB_LEN);
                    assert!(!cmd.cdb.as_bytes().is_empty());
                    for r in &cmd.data {
                        let end = r.gpa.get().checked_add(r.len).expect("range wraps");
                        assert!(
                            r.gpa.get() >= data_start && end <= data_end,
                            "{r:?} outside data"
                        );
                    }
                    held.push(cmd);
                }
            }
            1 if !held.is_empty() => {
                let i = usize::from(a) % held.len();
                let cmd = held.swap_remove(i);
                complete(&mut ring, cmd, b, usize::from(c) * 16);
            }
            2 => {
                let at = (u64::from(a) * 8 + u64::from(c % 8)) % u64::from(ring_size);
                mem.write_at(Gpa::new(ring_off + at), &[b])
                    .expect("ring byte writable");
            }
            3 => {
                while let Some(cmd) = held.pop() {
                    complete(&mut ring, cmd, 0, 0);
                }
            }
            _ => {}
        }
    }
    while let Some(cmd) = held.pop() {
        complete(&mut ring, cmd, 0, 0);
    }
    assert_eq!(ring.pending(), 0);
    assert!(
        !ring.complete(1, &ScsiResult::good(0)),
        "nothing pending: nothing to complete"
    );
}
