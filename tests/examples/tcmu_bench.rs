//! How fast the TCMU handler turns 4 KiB reads around, through the
//! in-process model of the kernel's side, on an inline RAM disk.
//!
//! `cargo run --release -p parastor-tests --example tcmu_bench [SECONDS]`
//!
//! - `ring`: one thread plays both sides with no doorbells: the model
//!   posts a batch of reads, the handler's `CommandRing` fetches them, runs
//!   each through `Lun::run_now` and completes it, the model collects.
//!   `ring handler` is the handler's part alone (fetch, run, complete):
//!   the cost of the ring, the SCSI adapter and the data copy.
//! - `serve QD n`: `parastor_tcmu::serve` on a runtime thread, the model
//!   on this one keeping `n` reads in flight, eventfd doorbells both ways:
//!   adds the cross-thread wake-ups a real uio device also costs.
//!
//! Reference, same run: a `memcpy` of 4 KiB (the copy each read needs at
//! the least).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parastor_core::ram::RamDisk;
use parastor_core::{Disk, InitiatorId, SgList};
use parastor_emulated::tcmu::{Completion, DataDir, PostError, TcmuConfig, TcmuKernel};
use parastor_runtime::{EventFd, Runtime, block_on};
use parastor_scsi::{DiskParams, Lun, ScsiDisk, SenseDelivery};
use parastor_tcmu::ring::CommandRing;
use parastor_tcmu::serve::{EventFdDoorbell, Path, serve};

const SECTORS: u64 = 64 * 1024; // 32 MiB of 512-byte sectors

fn lun() -> Lun {
    let disk = Disk::new(RamDisk::new(SECTORS * 512, 512).unwrap()).unwrap();
    Lun::Disk(Arc::new(ScsiDisk::new(disk, DiskParams::default())))
}

fn read10(i: u64) -> [u8; 10] {
    let lba = ((i * 8) % (SECTORS - 8)) as u32;
    let l = lba.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, 0, 8, 0]
}

fn config() -> TcmuConfig {
    // 1 MiB command area, 2 MiB of data blocks (the model looks for free
    // blocks by scanning, so a small data area keeps its cost down).
    TcmuConfig::small(1 << 20, 512)
}

/// Nanoseconds per read: all of it, and the handler's part alone.
fn ring_only(seconds: f64) -> (f64, f64) {
    let lun = lun();
    let mut k = TcmuKernel::new(config()).unwrap();
    let mut ring = CommandRing::open(k.memory().clone(), k.map_len()).unwrap();
    let mem = k.memory().clone();
    let mut cmds = Vec::new();
    let mut done: Vec<Completion> = Vec::new();
    let mut n = 0u64;
    let mut handler = Duration::ZERO;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..32 {
            k.post(&read10(n), DataDir::In(4096)).unwrap();
            n += 1;
        }
        let t = Instant::now();
        ring.fetch(&mut cmds).unwrap();
        for cmd in cmds.drain(..) {
            let sg = SgList::new(&*mem, &cmd.data, true).unwrap();
            let r = lun
                .run_now(
                    cmd.cdb.as_bytes(),
                    &sg,
                    InitiatorId::new(1),
                    SenseDelivery::Autosense,
                )
                .expect("a RAM disk completes inline");
            ring.complete(cmd.id, &r);
            ring.recycle(cmd);
        }
        handler += t.elapsed();
        k.collect(&mut done);
        assert_eq!(done.len(), 32);
        done.clear();
    }
    let n = n as f64;
    (
        start.elapsed().as_nanos() as f64 / n,
        handler.as_nanos() as f64 / n,
    )
}

fn served(seconds: f64, depth: usize) -> f64 {
    let mut k = TcmuKernel::new(config()).unwrap();
    let path = Path {
        ring: CommandRing::open(k.memory().clone(), k.map_len()).unwrap(),
        doorbell: Arc::new(EventFdDoorbell {
            posted: k.to_handler().clone(),
            completed: k.to_kernel().clone(),
        }),
        initiator: InitiatorId::new(1),
    };
    let cpus = parastor_runtime::allowed_cpus().unwrap();
    let runtime = Runtime::per_cpu(&cpus[cpus.len() - 1..]).unwrap();
    let stop = Arc::new(EventFd::new().unwrap());
    let signal = stop.clone();
    let task = runtime
        .thread(0)
        .unwrap()
        .spawn(serve(vec![path], lun(), async move {
            let _ = signal.wait().await;
        }));
    let mut done = Vec::new();
    let mut n = 0u64;
    let mut in_flight = 0usize;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        while in_flight < depth {
            match k.post(&read10(n), DataDir::In(4096)) {
                Ok(_) => {
                    n += 1;
                    in_flight += 1;
                }
                Err(PostError::RingFull | PostError::DataFull) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let got = k.collect_at_least(1, Duration::from_secs(5), &mut done);
        assert!(got > 0, "no completion in 5 s");
        in_flight -= got;
        done.clear();
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    stop.signal().unwrap();
    block_on(task).unwrap().unwrap();
    ns
}

fn memcpy_4k(seconds: f64) -> f64 {
    let src = vec![0x5Au8; 4096];
    let mut dst = vec![0u8; 4096];
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..1024 {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        }
        n += 1024;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let line = |what: &str, ns: f64| {
        println!(
            "{what:<14} {ns:>9.0} ns per 4 KiB read  {:>10.0} reads/s",
            1e9 / ns
        );
    };
    line("memcpy 4 KiB", memcpy_4k(seconds / 4.0));
    let (all, handler) = ring_only(seconds);
    line("ring (all)", all);
    line("ring handler", handler);
    line("serve QD1", served(seconds, 1));
    line("serve QD32", served(seconds, 32));
}
