//! The TCMU handler end to end: `parastor_tcmu::serve` on a runtime
//! thread, fed by the in-process model of the kernel's side
//! (`parastor_emulated::tcmu::TcmuKernel`): data both ways against a
//! reference, many commands in flight through the ring's wrap and padding
//! and the kernel's flow control, out-of-order completion, residuals via
//! `READ_LEN`, unknown and malformed entries, two paths as two initiators,
//! and a stop that drains.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parastor_core::ram::RamDisk;
use parastor_core::{BoxFuture, DelayDisk, DelayHandle, Disk, Timer};
use parastor_emulated::tcmu::{Completion, DataDir, EntryBytes, PostError, TcmuConfig, TcmuKernel};
use parastor_hw::scsi::ScsiStatus;
use parastor_runtime::RuntimeTimer;
use parastor_scsi::{DiskParams, Lun, ScsiDisk};
use parastor_tests::tcmu::TcmuRig;

const SECTOR: usize = 512;
const WAIT: Duration = Duration::from_secs(10);

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2A;
    c
}

fn ram(sectors: u64) -> Disk {
    Disk::new(RamDisk::new(sectors * SECTOR as u64, SECTOR as u32).unwrap()).unwrap()
}

fn lun_over(disk: Disk) -> Lun {
    Lun::Disk(Arc::new(ScsiDisk::new(disk, DiskParams::default())))
}

/// Posts on `k`, collecting completions into `done` while the ring or the
/// data area is full (the kernel's flow control).
fn post(k: &mut TcmuKernel, cdb: &[u8], dir: DataDir, done: &mut Vec<Completion>) -> u16 {
    loop {
        match k.post(cdb, dir.clone()) {
            Ok(id) => return id,
            Err(PostError::RingFull | PostError::DataFull) => {
                let got = k.collect_at_least(1, WAIT, done);
                assert!(got > 0, "no completion freed space in {WAIT:?}");
            }
            Err(e) => panic!("post failed: {e}"),
        }
    }
}

/// Waits until the command `id` has completed; returns its completion.
fn wait_for(k: &mut TcmuKernel, id: u16, done: &mut Vec<Completion>) -> Completion {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(i) = done.iter().position(|c| c.id == id) {
            return done.remove(i);
        }
        assert!(!k.is_broken(), "the handler broke the ring");
        assert!(
            std::time::Instant::now() < deadline,
            "command {id} never completed"
        );
        k.collect_at_least(1, Duration::from_millis(50), done);
    }
}

fn run(k: &mut TcmuKernel, cdb: &[u8], dir: DataDir) -> Completion {
    let mut done = Vec::new();
    let id = post(k, cdb, dir, &mut done);
    wait_for(k, id, &mut done)
}

fn sense_key_asc(c: &Completion) -> (u8, u8) {
    let s = c.sense.expect("sense with CHECK CONDITION");
    (s[2] & 0xF, s[12])
}

#[test]
fn data_out_then_in_round_trips_through_a_ram_disk() {
    let mut rig = TcmuRig::one(lun_over(ram(2048)), TcmuConfig::small(64 << 10, 64));
    let k = rig.k();
    let pattern: Vec<u8> = (0..8 * SECTOR).map(|i| (i * 31 + 7) as u8).collect();
    let w = run(k, &write10(100, 8), DataDir::Out(pattern.clone()));
    assert_eq!(w.status, ScsiStatus::GOOD);
    let r = run(k, &read10(100, 8), DataDir::In(8 * SECTOR as u32));
    assert_eq!(r.status, ScsiStatus::GOOD);
    assert_eq!(r.data_in, pattern);
    // A read that straddles the written range sees zeros around it.
    let r = run(k, &read10(99, 10), DataDir::In(10 * SECTOR as u32));
    assert_eq!(r.data_in[..SECTOR], [0u8; SECTOR]);
    assert_eq!(r.data_in[SECTOR..9 * SECTOR], pattern[..]);
    assert_eq!(r.data_in[9 * SECTOR..], [0u8; SECTOR]);
    let stats = rig.finish().unwrap();
    assert_eq!(stats.commands, 3);
    assert_eq!(stats.inline, 3, "a RAM disk completes inline");
}

#[test]
fn many_commands_in_flight_through_wrap_padding_and_flow_control() {
    // A 2000-byte ring (not a multiple of the 128-byte entries, so the
    // kernel pads at the end) and 16 data blocks: the kernel runs out of
    // both constantly, the ring wraps every 15 commands.
    let sectors = 256u32;
    let mut rig = TcmuRig::one(
        lun_over(ram(u64::from(sectors))),
        TcmuConfig::small(2128, 16),
    );
    let k = rig.k();
    let mut reference = vec![0u8; sectors as usize * SECTOR];
    let mut rng = fastrand::Rng::with_seed(11);
    let mut done = Vec::new();
    let mut reads: HashMap<u16, Vec<u8>> = HashMap::new();
    let mut checked = 0;
    let check = |done: &mut Vec<Completion>, reads: &mut HashMap<u16, Vec<u8>>, n: &mut usize| {
        done.retain(|c| match reads.remove(&c.id) {
            Some(want) => {
                assert_eq!(c.status, ScsiStatus::GOOD);
                assert!(c.data_in == want, "read {} returned other data", c.id);
                *n += 1;
                false
            }
            None => true,
        });
    };
    for _ in 0..3000 {
        let blocks = rng.u16(1..=16);
        let lba = rng.u32(0..=sectors - u32::from(blocks));
        let range = lba as usize * SECTOR..(lba as usize + blocks as usize) * SECTOR;
        if rng.bool() {
            let data: Vec<u8> = (0..range.len()).map(|_| rng.u8(..)).collect();
            // Writes are ordered against reads by waiting for them: the
            // reference must be what the disk holds when a read runs.
            let id = post(
                k,
                &write10(lba, blocks),
                DataDir::Out(data.clone()),
                &mut done,
            );
            // Completions collected while posting are older than this
            // command, whose id may be one of theirs reused: check them
            // before waiting for it by id.
            check(&mut done, &mut reads, &mut checked);
            reference[range].copy_from_slice(&data);
            let c = wait_for(k, id, &mut done);
            assert_eq!(c.status, ScsiStatus::GOOD);
        } else {
            let id = post(
                k,
                &read10(lba, blocks),
                DataDir::In(range.len() as u32),
                &mut done,
            );
            check(&mut done, &mut reads, &mut checked);
            reads.insert(id, reference[range].to_vec());
        }
        check(&mut done, &mut reads, &mut checked);
    }
    while !reads.is_empty() {
        let id = *reads.keys().next().unwrap();
        let c = wait_for(k, id, &mut done);
        assert!(c.data_in == reads.remove(&id).unwrap());
        checked += 1;
    }
    assert!(checked > 1000, "{checked}");
    assert!(k.in_flight().is_empty());
    let stats = rig.finish().unwrap();
    assert!(stats.ring.pads > 100, "{stats:?}");
    assert_eq!(stats.ring.commands, 3000);
    assert_eq!(stats.ring.completions, 3000);
}

/// A timer that counts the sleeps started (so a test knows when a delayed
/// command has reached the disk) and sleeps on the runtime.
#[derive(Default)]
struct CountingTimer(AtomicUsize);

impl Timer for CountingTimer {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        RuntimeTimer.sleep(duration)
    }
}

fn delayed(sectors: u64, delay: Duration) -> (Lun, DelayHandle, Arc<CountingTimer>) {
    let timer = Arc::new(CountingTimer::default());
    let handle = DelayHandle::new(delay);
    let disk = Disk::new(DelayDisk::new(ram(sectors), handle.clone(), timer.clone())).unwrap();
    (lun_over(disk), handle, timer)
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_slow_command_completes_after_a_fast_one_posted_later() {
    let (lun, handle, timer) = delayed(64, Duration::from_secs(30));
    let mut rig = TcmuRig::one(lun, TcmuConfig::small(64 << 10, 16));
    let k = rig.k();
    let mut done = Vec::new();
    let slow = post(k, &read10(0, 1), DataDir::In(512), &mut done);
    wait_until("the slow read to start", || {
        timer.0.load(Ordering::SeqCst) == 1
    });
    handle.set(Duration::ZERO);
    let fast: Vec<u16> = (0..4)
        .map(|i| post(k, &read10(i, 1), DataDir::In(512), &mut done))
        .collect();
    let tur = post(k, &[0; 6], DataDir::None, &mut done);
    for id in fast.iter().chain([&tur]) {
        assert_eq!(wait_for(k, *id, &mut done).status, ScsiStatus::GOOD);
    }
    assert_eq!(k.in_flight(), [slow], "only the slow one is left");
    // Its entry was reused for one of the completions: the tail is past
    // it, and the kernel still waits for it by id, with nothing broken.
    assert!(!k.is_broken());
    assert_eq!(
        k.collect_at_least(1, Duration::from_millis(100), &mut done),
        0
    );
    assert!(!rig.is_finished());
    // Dropping the rig cancels the slow read with the runtime.
}

#[test]
fn out_of_order_completions_each_reach_their_command() {
    // Four reads with falling delays: they finish in the reverse order of
    // posting, and each gets its own data.
    let (lun, handle, timer) = delayed(64, Duration::ZERO);
    let mut rig = TcmuRig::one(lun, TcmuConfig::small(64 << 10, 16));
    let k = rig.k();
    let mut done = Vec::new();
    for lba in 0..4u32 {
        let data = vec![lba as u8 + 1; SECTOR];
        let id = post(k, &write10(lba, 1), DataDir::Out(data), &mut done);
        wait_for(k, id, &mut done);
    }
    let mut ids = Vec::new();
    for lba in 0..4u32 {
        handle.set(Duration::from_millis(400 - 100 * u64::from(lba)));
        ids.push(post(k, &read10(lba, 1), DataDir::In(512), &mut done));
        // Writes ran with no delay, so no timer: only reads count.
        let started = lba as usize + 1;
        wait_until("the read to start", || {
            timer.0.load(Ordering::SeqCst) >= started
        });
    }
    let mut order = Vec::new();
    while order.len() < 4 {
        k.collect_at_least(1, WAIT, &mut done);
        assert!(!k.is_broken());
        for c in done.drain(..) {
            let lba = ids.iter().position(|id| *id == c.id).unwrap();
            assert_eq!(c.data_in, vec![lba as u8 + 1; SECTOR], "read of LBA {lba}");
            order.push(lba);
        }
    }
    assert_eq!(order, [3, 2, 1, 0]);
    let stats = rig.finish().unwrap();
    assert_eq!(stats.deferred, 8);
    assert_eq!(stats.max_in_flight, 4);
}

#[test]
fn a_short_data_in_is_a_residual_through_read_len() {
    let mut rig = TcmuRig::one(lun_over(ram(64)), TcmuConfig::small(64 << 10, 4));
    let k = rig.k();
    // Standard INQUIRY with a 255-byte allocation length: 36 bytes come back.
    let c = run(k, &[0x12, 0, 0, 0, 255, 0], DataDir::In(255));
    assert_eq!(c.status, ScsiStatus::GOOD);
    let n = c.read_len.expect("read_len") as usize;
    assert!(n < 255, "{n}");
    assert_eq!(c.data_in.len(), n);
    assert_eq!(c.data_in[0], 0x00, "direct-access device");
    assert_eq!(
        usize::from(c.data_in[4]) + 5,
        n,
        "additional length matches"
    );
    // A full-length read reports its whole length.
    let c = run(k, &read10(0, 2), DataDir::In(1024));
    assert_eq!(c.read_len, Some(1024));
    rig.finish().unwrap();
}

#[test]
fn unknown_opcodes_and_entry_kinds_are_refused_and_the_ring_goes_on() {
    let mut rig = TcmuRig::one(lun_over(ram(64)), TcmuConfig::small(64 << 10, 4));
    let k = rig.k();
    // A SCSI operation code the disk does not know: ILLEGAL REQUEST,
    // INVALID COMMAND OPERATION CODE, from the SCSI adapter.
    let c = run(k, &[0xC7, 0, 0, 0, 0, 0, 0, 0, 0, 0], DataDir::None);
    assert_eq!(c.status, ScsiStatus::CHECK_CONDITION);
    assert_eq!(sense_key_asc(&c), (0x5, 0x20));
    // An entry kind TCMU does not define: UNKNOWN_OP.
    let mut done = Vec::new();
    let id = k
        .post_with(&[0; 6], DataDir::None, |e| e.bytes[0] |= 0x7)
        .unwrap();
    let c = wait_for(k, id, &mut done);
    assert!(c.unknown_op);
    assert_eq!(run(k, &[0; 6], DataDir::None).status, ScsiStatus::GOOD);
    let stats = rig.finish().unwrap();
    assert_eq!(stats.ring.unknown, 1);
}

fn set_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn set_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A corruption of a command's entry.
type Edit = Box<dyn Fn(EntryBytes<'_>)>;

#[test]
fn malformed_commands_are_refused_without_a_crash() {
    let mut rig = TcmuRig::one(lun_over(ram(64)), TcmuConfig::small(64 << 10, 8));
    let k = rig.k();
    let edits: [(&str, Edit); 6] = [
        (
            "cdb_off in the mailbox",
            Box::new(|e| set_u64(e.bytes, 24, 0)),
        ),
        (
            "cdb_off past the entry",
            Box::new(|e| set_u64(e.bytes, 24, e.map_offset + (1 << 20))),
        ),
        ("iovec in the ring", Box::new(|e| set_u64(e.bytes, 48, 256))),
        (
            "iovec past the map",
            Box::new(|e| set_u64(e.bytes, 48, e.data_area.1 - 8)),
        ),
        (
            "iov_cnt too big",
            Box::new(|e| set_u32(e.bytes, 8, 1 << 20)),
        ),
        (
            "a bidirectional iovec",
            Box::new(|e| set_u32(e.bytes, 12, 1)),
        ),
    ];
    let mut done = Vec::new();
    for (what, edit) in edits {
        let id = k.post_with(&read10(0, 2), DataDir::In(1024), edit).unwrap();
        let c = wait_for(k, id, &mut done);
        assert_eq!(c.status, ScsiStatus::CHECK_CONDITION, "{what}");
        assert_eq!(sense_key_asc(&c), (0x4, 0x44), "{what}");
        assert_eq!(
            run(k, &read10(0, 2), DataDir::In(1024)).status,
            ScsiStatus::GOOD
        );
    }
    let stats = rig.finish().unwrap();
    assert_eq!(stats.ring.malformed, 6);
}

/// Waits until the entry at map offset `at` has been rewritten as padding.
fn wait_for_pad(k: &TcmuKernel, at: u64) {
    let mem = k.memory();
    wait_until("the handler to skip the entry", || {
        let mut h = [0u8; 4];
        mem.read_at(parastor_core::Gpa::new(at), &mut h).unwrap();
        let len_op = u32::from_le_bytes(h);
        len_op & 7 == 0 && len_op >= 8
    });
}

#[test]
fn unwalkable_entries_are_skipped_to_the_head_and_the_ring_goes_on() {
    let mut rig = TcmuRig::one(lun_over(ram(64)), TcmuConfig::small(4096, 8));
    let k = rig.k();
    let mut done = Vec::new();
    let mut lost = Vec::new();
    // A zero length, then a length past the ring's end; each followed by
    // good commands, enough of them to wrap the small ring several times.
    // Whatever was published with the bad entry is skipped with it, so
    // the test waits for the handler to have skipped it (the entry's
    // header becomes a padding entry) before posting more.
    for len_op in [0x1u32, 0x10_0001] {
        let at = std::cell::Cell::new(0);
        lost.push(
            k.post_with(&[0; 6], DataDir::None, |e| {
                at.set(e.map_offset);
                set_u32(e.bytes, 0, len_op);
            })
            .unwrap(),
        );
        wait_for_pad(k, at.get());
        for _ in 0..100 {
            let id = post(k, &[0; 6], DataDir::None, &mut done);
            assert_eq!(wait_for(k, id, &mut done).status, ScsiStatus::GOOD);
        }
    }
    // The broken entries' commands are the kernel's to time out.
    assert_eq!(k.in_flight(), lost);
    assert!(!k.is_broken());
    // A raw zero-length header with no command behind it.
    let at = k.post_raw(&[0u8; 8], 8).unwrap();
    wait_for_pad(k, 128 + u64::from(at));
    let id = post(k, &[0; 6], DataDir::None, &mut done);
    assert_eq!(wait_for(k, id, &mut done).status, ScsiStatus::GOOD);
    let stats = rig.finish().unwrap();
    assert_eq!(stats.ring.resyncs, 3);
}

#[test]
fn two_paths_are_two_initiators_of_one_lun() {
    let disk = Disk::new(parastor_core::ReservationsDisk::new(ram(64))).unwrap();
    let config = TcmuConfig::small(64 << 10, 8);
    let mut rig = TcmuRig::start(lun_over(disk), &[config, config]);
    // Path 0 writes, path 1 reads the same block.
    let data = vec![0x5A; SECTOR];
    let c = run(
        &mut rig.kernels[0],
        &write10(5, 1),
        DataDir::Out(data.clone()),
    );
    assert_eq!(c.status, ScsiStatus::GOOD);
    let c = run(&mut rig.kernels[1], &read10(5, 1), DataDir::In(512));
    assert_eq!(c.data_in, data);
    // Path 0 registers a key and reserves WRITE EXCLUSIVE: path 1's write
    // is a reservation conflict, path 0's is not.
    let pr_out = |action: u8, kind: u8, key: u64, sa_key: u64| {
        let cdb = [0x5F, action, kind, 0, 0, 0, 0, 0, 24, 0];
        let mut p = vec![0u8; 24];
        p[..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        (cdb, p)
    };
    let (cdb, p) = pr_out(0x00, 0, 0, 0xAB);
    assert_eq!(
        run(&mut rig.kernels[0], &cdb, DataDir::Out(p)).status,
        ScsiStatus::GOOD
    );
    let (cdb, p) = pr_out(0x01, 0x01, 0xAB, 0);
    assert_eq!(
        run(&mut rig.kernels[0], &cdb, DataDir::Out(p)).status,
        ScsiStatus::GOOD
    );
    let c = run(
        &mut rig.kernels[1],
        &write10(5, 1),
        DataDir::Out(vec![1; SECTOR]),
    );
    assert_eq!(c.status, ScsiStatus::RESERVATION_CONFLICT);
    let c = run(
        &mut rig.kernels[0],
        &write10(5, 1),
        DataDir::Out(vec![2; SECTOR]),
    );
    assert_eq!(c.status, ScsiStatus::GOOD);
    rig.finish().unwrap();
}

/// A reservation change on one path raises UNIT ATTENTION on the other
/// path's next command, once: CLEAR → RESERVATIONS PREEMPTED (2A/03),
/// PREEMPT → REGISTRATIONS PREEMPTED (2A/05) on the preempted path,
/// RELEASE of a Registrants Only reservation → RESERVATIONS RELEASED
/// (2A/04). The issuing path sees none.
#[test]
fn reservation_changes_raise_unit_attentions_on_the_other_path() {
    let disk = Disk::new(parastor_core::ReservationsDisk::new(ram(64))).unwrap();
    let config = TcmuConfig::small(64 << 10, 8);
    let mut rig = TcmuRig::start(lun_over(disk), &[config, config]);
    let pr_out = |k: &mut TcmuKernel, action: u8, kind: u8, key: u64, sa_key: u64| {
        let cdb = [0x5F, action, kind, 0, 0, 0, 0, 0, 24, 0];
        let mut p = vec![0u8; 24];
        p[..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        let c = run(k, &cdb, DataDir::Out(p));
        assert_eq!(c.status, ScsiStatus::GOOD, "PR OUT {action:#x}");
    };
    // The unit attention TEST UNIT READY reports, if any.
    let ua_of = |k: &mut TcmuKernel| {
        let c = run(k, &[0u8; 6], DataDir::None);
        if c.status == ScsiStatus::GOOD {
            return None;
        }
        assert_eq!(c.status, ScsiStatus::CHECK_CONDITION);
        let s = c.sense.expect("sense with CHECK CONDITION");
        assert_eq!(s[2] & 0xF, 6, "UNIT ATTENTION");
        Some((s[12], s[13]))
    };
    let [k0, k1] = &mut rig.kernels[..] else {
        panic!("two paths")
    };
    pr_out(k0, 0x00, 0, 0, 0xA);
    pr_out(k1, 0x00, 0, 0, 0xB);
    pr_out(k0, 0x03, 0, 0xA, 0); // CLEAR
    assert_eq!(ua_of(k0), None);
    assert_eq!(ua_of(k1), Some((0x2A, 0x03)));
    assert_eq!(ua_of(k1), None);
    pr_out(k0, 0x00, 0, 0, 0xA);
    pr_out(k1, 0x00, 0, 0, 0xB);
    pr_out(k0, 0x01, 0x05, 0xA, 0); // RESERVE, Write Exclusive - Registrants Only
    pr_out(k0, 0x02, 0x05, 0xA, 0); // RELEASE
    pr_out(k0, 0x04, 0x01, 0xA, 0xB); // PREEMPT path 1's registration
    // Two pending: one at a time, oldest first.
    assert_eq!(ua_of(k1), Some((0x2A, 0x04)));
    assert_eq!(ua_of(k1), Some((0x2A, 0x05)));
    assert_eq!(ua_of(k1), None);
    assert_eq!(ua_of(k0), None);
    rig.finish().unwrap();
}

#[test]
fn stop_drains_the_commands_in_flight() {
    let (lun, _handle, timer) = delayed(64, Duration::from_millis(200));
    let mut rig = TcmuRig::one(lun, TcmuConfig::small(64 << 10, 16));
    let k = rig.k();
    let mut done = Vec::new();
    let ids: Vec<u16> = (0..8)
        .map(|i| post(k, &read10(i, 1), DataDir::In(512), &mut done))
        .collect();
    wait_until("all reads to start", || timer.0.load(Ordering::SeqCst) == 8);
    let stats = rig.finish().unwrap();
    assert_eq!(
        (stats.commands, stats.deferred, stats.max_in_flight),
        (8, 8, 8)
    );
    let k = rig.k();
    // Everything was completed before serve returned.
    k.collect(&mut done);
    let mut got: Vec<u16> = done.iter().map(|c| c.id).collect();
    got.sort_unstable();
    assert_eq!(got, ids);
    assert!(done.iter().all(|c| c.status == ScsiStatus::GOOD));
    // Nothing is fetched after the stop.
    let late = k.post(&[0; 6], DataDir::None).unwrap();
    assert_eq!(
        k.collect_at_least(1, Duration::from_millis(100), &mut done),
        0
    );
    assert_eq!(k.in_flight(), [late]);
}

#[test]
fn the_transfer_limit_is_the_smallest_data_area() {
    // 16 KiB and 32 KiB data areas: MAXIMUM TRANSFER LENGTH (VPD 0xB0,
    // bytes 8..12) is 16 KiB of 512-byte blocks.
    let mut rig = TcmuRig::start(
        lun_over(ram(1024)),
        &[
            TcmuConfig::small(64 << 10, 8),
            TcmuConfig::small(64 << 10, 4),
        ],
    );
    let c = run(
        &mut rig.kernels[0],
        &[0x12, 1, 0xB0, 0, 64, 0],
        DataDir::In(64),
    );
    assert_eq!(c.status, ScsiStatus::GOOD);
    assert_eq!(c.data_in[1], 0xB0);
    let max = u32::from_be_bytes(c.data_in[8..12].try_into().unwrap());
    assert_eq!(max, 32);
    rig.finish().unwrap();
}
