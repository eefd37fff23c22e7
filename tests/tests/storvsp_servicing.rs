//! Servicing a StorVSP channel under a running guest: a model-checked
//! random read/write workload with requests outstanding — some at a disk
//! that waits, completions piling up unread, packets waiting in the
//! request ring — is saved mid-way (controller and channel), the old
//! worker and controller are dropped, fresh ones are restored over the
//! same guest memory, and the workload finishes. The guest driver refuses
//! a completion for a transaction it does not have in flight, so an
//! answer given twice fails the run; the test counts every submission
//! completed exactly once, and every read is checked against the model.

use parastor_core::ram::RamDisk;
use parastor_core::state::{self, StateError};
use parastor_core::{DelayDisk, DelayHandle, Disk, Gpa, GpaRange, Timer};
use parastor_emulated::storvsc::Direction;
use parastor_emulated::{GuestConfig, Profile, Storvsc, StorvspVm, VmConfig};
use parastor_hw::scsi::ScsiOp;
use parastor_hw::storvsp::{NtStatus, SrbStatus, Version};
use parastor_scsi::{DiskParams, ScsiDisk};
use parastor_storvsp::state::{ChannelV1, ControllerV1, Volatile};
use parastor_storvsp::{Controller, ControllerConfig, NegotiationState, ScsiPath, StorvspChannel};
use parastor_tests::buf::block_on;
use parastor_tests::model::Model;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

type Guest<'a> = Storvsc<'a, StorvspChannel<'a>>;

const SS: u32 = 512;
const SECTORS: u64 = 256;
/// Where the guest's data buffers start: one page per tag.
const DATA: u64 = 0x100000;
const TAGS: u16 = 64;
/// Completions left unread at the save: most of the completion ring.
const FILL: usize = 42;
const MAX_BLOCKS: u64 = 8;
const QUEUE_DEPTH: usize = 6;

/// A timer whose sleeps end only while it is open: the "slow" disk's
/// requests wait until the test opens it, and wait again once closed.
#[derive(Clone, Default)]
struct Gate(Arc<GateState>);

#[derive(Default)]
struct GateState {
    open: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Gate {
    fn open(&self) {
        self.0.open.store(true, Ordering::Release);
        for w in std::mem::take(&mut *self.0.wakers.lock().unwrap()) {
            w.wake();
        }
    }

    fn close(&self) {
        self.0.open.store(false, Ordering::Release);
    }
}

impl Timer for Gate {
    fn sleep(&self, _: Duration) -> parastor_core::disk::BoxFuture<'static, ()> {
        let state = self.0.clone();
        Box::pin(std::future::poll_fn(move |cx| {
            if state.open.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            state.wakers.lock().unwrap().push(cx.waker().clone());
            if state.open.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }))
    }
}

fn config() -> ControllerConfig {
    ControllerConfig {
        io_queue_depth: QUEUE_DEPTH,
        ..ControllerConfig::default()
    }
}

/// A controller with `disks` attached at LUNs 0, 1, … (each a fresh SCSI
/// adapter over the same backing disk, as the new service builds them
/// from its settings).
fn controller(disks: &[Disk]) -> Arc<Controller> {
    let c = Arc::new(Controller::new(config()));
    for (lun, d) in disks.iter().enumerate() {
        c.attach(
            ScsiPath::new(0, 0, lun as u8),
            Arc::new(ScsiDisk::new(d.clone(), DiskParams::default())),
        )
        .unwrap();
    }
    c
}

fn cdb(op: ScsiOp, lba: u64, blocks: u64) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op.get();
    c[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
    c[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
    c
}

/// One request the guest has sent.
struct Op {
    /// Which submission this is (each is completed exactly once).
    seq: u64,
    lun: u8,
    lba: u64,
    blocks: u64,
    /// The data written, for a write.
    write: Option<Vec<u8>>,
}

/// The workload: a random mix of reads and writes on both LUNs, checked
/// against a model of each disk.
struct Workload {
    rng: u64,
    models: Vec<Model>,
    in_flight: BTreeMap<u16, Op>,
    next_seq: u64,
    completed: HashSet<u64>,
    mismatches: Vec<String>,
}

impl Workload {
    fn new(luns: usize) -> Self {
        Self {
            rng: 0x9E37_79B9_7F4A_7C15,
            models: (0..luns).map(|_| Model::zeroed(SECTORS, SS)).collect(),
            in_flight: BTreeMap::new(),
            next_seq: 0,
            completed: HashSet::new(),
            mismatches: Vec::new(),
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Sends one random request on `lun` (any LUN if `None`) that overlaps
    /// no request in flight on its LUN (so the model's order is the
    /// disk's). Returns whether one was queued.
    fn submit(&mut self, g: &mut Guest<'_>, vm: &StorvspVm, lun: Option<u8>) -> bool {
        let Some(tag) = (0..TAGS).find(|t| !self.in_flight.contains_key(t)) else {
            return false;
        };
        let lun = lun.unwrap_or_else(|| self.below(self.models.len() as u64) as u8);
        let (lba, blocks) = loop {
            let blocks = 1 + self.below(MAX_BLOCKS);
            let lba = self.below(SECTORS - blocks + 1);
            let overlaps = self
                .in_flight
                .values()
                .any(|o| o.lun == lun && lba < o.lba + o.blocks && o.lba < lba + blocks);
            if !overlaps {
                break (lba, blocks);
            }
        };
        let len = (blocks * u64::from(SS)) as u32;
        let buf = DATA + u64::from(tag) * 4096;
        let write = self.below(2) == 0;
        let (op, direction, data) = if write {
            let data: Vec<u8> = (0..len).map(|_| self.next() as u8).collect();
            vm.memory().write_at(Gpa::new(buf), &data).unwrap();
            (ScsiOp::WRITE10, Direction::Out, Some(data))
        } else {
            (ScsiOp::READ10, Direction::In, None)
        };
        let req = g.scsi_request(lun, &cdb(op, lba, blocks), direction, len);
        if g.submit(tag, 0, &req, &[GpaRange::new(Gpa::new(buf), len.into())])
            .is_err()
        {
            // The request ring is full: try again later.
            return false;
        }
        self.in_flight.insert(
            tag,
            Op {
                seq: self.next_seq,
                lun,
                lba,
                blocks,
                write: data,
            },
        );
        self.next_seq += 1;
        true
    }

    /// Reads every completion waiting and checks it against the model.
    fn reap(&mut self, g: &mut Guest<'_>, vm: &StorvspVm) -> usize {
        let mut done = Vec::new();
        g.reap(|tag, reply| done.push((tag, reply.srb_status().status())))
            .unwrap();
        for &(tag, status) in &done {
            let op = self
                .in_flight
                .remove(&tag)
                .unwrap_or_else(|| panic!("tag {tag} completed but not in flight"));
            assert_eq!(status, SrbStatus::SUCCESS, "tag {tag}");
            assert!(
                self.completed.insert(op.seq),
                "submission {} completed twice",
                op.seq
            );
            let model = &mut self.models[usize::from(op.lun)];
            match op.write {
                Some(data) => model.write(op.lba, &data),
                None => {
                    let mut got = vec![0u8; (op.blocks * u64::from(SS)) as usize];
                    let buf = DATA + u64::from(tag) * 4096;
                    vm.memory().read_at(Gpa::new(buf), &mut got).unwrap();
                    if let Err(m) = model.check_read(op.lba, &got) {
                        self.mismatches
                            .push(format!("LUN {} submission {}: {m}", op.lun, op.seq));
                    }
                }
            }
        }
        done.len()
    }

    /// Random rounds: sends up to 8 requests, lets the host serve them,
    /// reads the completions every third round, lets the slow disk finish
    /// every fifth.
    fn rounds(&mut self, g: &mut Guest<'_>, vm: &StorvspVm, gate: &Gate, n: usize) {
        for round in 0..n {
            let k = 1 + self.below(8);
            for _ in 0..k {
                if !self.submit(g, vm, None) {
                    break;
                }
            }
            g.flush().unwrap();
            g.host_mut().process().unwrap();
            if round % 5 == 4 {
                gate.open();
                g.host_mut().process().unwrap();
                gate.close();
            }
            if round % 3 == 2 {
                self.reap(g, vm);
                g.host_mut().process().unwrap();
            }
        }
    }

    /// Opens the slow disk and serves until every request is answered.
    fn finish(&mut self, g: &mut Guest<'_>, vm: &StorvspVm, gate: &Gate) {
        gate.open();
        for _ in 0..10_000 {
            if self.in_flight.is_empty() {
                return;
            }
            g.flush().unwrap();
            g.host_mut().process().unwrap();
            self.reap(g, vm);
        }
        panic!("{} requests never completed", self.in_flight.len());
    }
}

fn negotiate(g: &mut Guest<'_>) {
    for step in 0..4 {
        let r = match step {
            0 => g.begin_initialization(),
            1 => g.query_protocol_version(Version::WIN8),
            2 => g.query_properties(),
            _ => g.end_initialization(),
        }
        .unwrap();
        assert_eq!(r.status(), NtStatus::SUCCESS, "negotiation step {step}");
    }
    assert_eq!(g.host().controller().state(), NegotiationState::Ready);
}

#[test]
fn channel_serviced_mid_workload_loses_and_repeats_nothing() {
    let gate = Gate::default();
    let fast = Disk::new(RamDisk::new(SECTORS * u64::from(SS), SS).unwrap()).unwrap();
    let slow = Disk::new(DelayDisk::new(
        Disk::new(RamDisk::new(SECTORS * u64::from(SS), SS).unwrap()).unwrap(),
        DelayHandle::new(Duration::from_millis(1)),
        Arc::new(gate.clone()),
    ))
    .unwrap();
    let disks = [fast, slow];
    let old = controller(&disks);
    // A small completion ring: unread completions fill it and stop intake.
    let vm = StorvspVm::new(
        old.clone(),
        VmConfig {
            memory_bytes: 4 << 20,
            request_ring: 64 << 10,
            completion_ring: 8192,
            channels: 1,
            ..VmConfig::default()
        },
    );
    let area = vm.data_area();
    assert!(
        area.gpa <= Gpa::new(DATA)
            && Gpa::new(DATA + 4096 * u64::from(TAGS)) <= area.gpa + area.len
    );
    let mut g = Storvsc::new(
        GuestConfig::new(Profile::LinuxCurrent),
        vm.guest_channel(0).unwrap(),
        vm.primary_worker(0).unwrap(),
        vm.data_area(),
    );
    negotiate(&mut g);
    let mut w = Workload::new(disks.len());
    w.rounds(&mut g, &vm, &gate, 60);

    // The moment of the save: the guest has not read the latest
    // completions (they fill the completion ring), the slow disk holds
    // requests, and more wait unread in the request ring: the host stopped
    // taking them for want of completion space (every request in flight
    // holds room for its answer), before the queue depth.
    w.finish(&mut g, &vm, &gate);
    gate.close();
    for _ in 0..FILL {
        assert!(w.submit(&mut g, &vm, Some(0)));
    }
    g.flush().unwrap();
    g.host_mut().process().unwrap();
    for _ in 0..QUEUE_DEPTH + 4 {
        assert!(w.submit(&mut g, &vm, Some(1)));
    }
    for _ in 0..4 {
        assert!(w.submit(&mut g, &vm, Some(0)));
    }
    g.flush().unwrap();
    g.host_mut().process().unwrap();
    assert!(
        (1..QUEUE_DEPTH).contains(&g.host().in_flight()),
        "the slow disk holds requests, fewer than the queue depth: the full completion ring stopped intake ({} in flight)",
        g.host().in_flight()
    );
    let unread = g.host().channel().reader().bytes_available().unwrap();
    assert!(unread > 0, "packets wait in the request ring");
    let answers = g.channel(0).unwrap().reader().bytes_available().unwrap();
    assert!(
        answers > 2048,
        "completions wait in the completion ring ({answers} bytes)"
    );
    let outstanding = g.outstanding();

    // Quiesce: no intake; what is at the disk finishes and is answered.
    g.host_mut().quiesce();
    g.host_mut().process().unwrap();
    assert!(!g.host().is_quiesced());
    let busy = g.host().save().unwrap_err();
    assert!(busy.to_string().contains("in flight"), "{busy}");
    // The disk finishes; the async quiesce drives the worker until every
    // request is answered (the disk's wakers wake it).
    gate.open();
    block_on(g.host_mut().quiesce_all()).unwrap();
    gate.close();
    assert!(g.host().is_quiesced());
    assert_eq!(
        g.host().channel().reader().bytes_available().unwrap(),
        unread,
        "a quiescing channel reads nothing new"
    );
    assert_eq!(
        g.outstanding(),
        outstanding,
        "the guest has read nothing yet"
    );

    let controller_blob = state::encode(&old.save(Volatile::Allow).unwrap()).unwrap();
    let channel_blob = state::encode(&g.host().save().unwrap()).unwrap();

    // The new service: a fresh controller with the same disks attached.
    let new = controller(&disks);
    state::restore::<ControllerV1, _>(&controller_blob, |s| new.restore(&s)).unwrap();
    let mem = &**vm.memory();
    let peer = vm.to_guest(0).unwrap();
    let restore = |blob: &[u8]| {
        state::restore::<ChannelV1, _>(blob, |s| {
            StorvspChannel::restore(new.clone(), mem, peer, &s)
        })
    };

    // A truncated and a damaged channel state are refused, saying so.
    let short = restore(&channel_blob[..channel_blob.len() - 3]).unwrap_err();
    assert!(matches!(short, StateError::Truncated { .. }), "{short:?}");
    assert!(short.to_string().contains("truncated"), "{short}");
    let mut damaged = channel_blob.clone();
    let at = damaged.len() - 6;
    damaged[at] ^= 0x40;
    let bad = restore(&damaged).unwrap_err();
    assert!(
        matches!(
            bad,
            StateError::Checksum {
                component: "storvsp-channel",
                ..
            }
        ),
        "{bad:?}"
    );
    assert!(bad.to_string().contains("storvsp-channel"), "{bad}");

    let worker = restore(&channel_blob).unwrap();
    drop(g.replace_host(worker));
    drop(old);

    // Finish the workload on the new service.
    w.rounds(&mut g, &vm, &gate, 60);
    w.finish(&mut g, &vm, &gate);

    // Read both disks whole: they hold what the model says.
    for lun in 0..disks.len() as u8 {
        for lba in (0..SECTORS).step_by(MAX_BLOCKS as usize) {
            let tag = 0;
            let len = (MAX_BLOCKS * u64::from(SS)) as u32;
            let req = g.scsi_request(
                lun,
                &cdb(ScsiOp::READ10, lba, MAX_BLOCKS),
                Direction::In,
                len,
            );
            w.in_flight.insert(
                tag,
                Op {
                    seq: w.next_seq,
                    lun,
                    lba,
                    blocks: MAX_BLOCKS,
                    write: None,
                },
            );
            w.next_seq += 1;
            g.submit(tag, 0, &req, &[GpaRange::new(Gpa::new(DATA), len.into())])
                .unwrap();
            w.finish(&mut g, &vm, &gate);
        }
    }

    assert!(
        w.mismatches.is_empty(),
        "model mismatches: {:#?}",
        w.mismatches
    );
    assert_eq!(g.outstanding(), 0, "the guest waits for nothing");
    assert_eq!(
        w.completed.len() as u64,
        w.next_seq,
        "every submission completed exactly once"
    );
    assert!(
        w.next_seq > 200,
        "a real workload ran ({} requests)",
        w.next_seq
    );
}
