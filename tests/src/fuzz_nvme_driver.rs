//! The `nvme_driver` fuzz harness: arbitrary bytes → a hostile device
//! against parastor's NVMe driver.
//!
//! The device is parastor's emulated NVMe controller (one namespace over
//! a small RAM disk) seen through the fault-injection middleware
//! ([`FaultInjector`]) with a [`FaultPlan`] decoded from the input: which
//! completions to drop, delay, duplicate, reorder or corrupt (command
//! identifier, SQ identifier, SQ head, status, phase — with values from
//! the input), which Identify bytes to overwrite (MDTS, NN, LBADS, NSZE, or
//! any bytes of any CNS), which register reads to falsify (CAP, CSTS, VS…,
//! with masks from the input), which interrupts to swallow, and when
//! CSTS.CFS or a surprise removal strikes. The driver brings the controller
//! up and runs the input's I/O (reads, writes, flushes at any sector and
//! length), controller resets and a shutdown.
//!
//! The driver runs on virtual time ([`VirtualClock`]: a sleep moves the
//! clock and ends at the next poll) with short timeouts, and its watchdog
//! ([`NvmeDriver::run_watchdog`]) runs beside every operation, so lost
//! completions and interrupts end in Abort, reset or failure within a few
//! hundred polls.
//!
//! Properties:
//! - nothing panics;
//! - nothing hangs: bring-up and every operation end within
//!   [`MAX_STEPS`] steps of a single-threaded executor that never sleeps
//!   (a device that never answers is timed out by the driver, not by the
//!   harness);
//! - nothing allocates without bound (libFuzzer's limits check it while
//!   fuzzing; the wrapper and the driver keep their own memory bounded);
//! - a read that succeeds under a plan that leaves completions and
//!   Identify data alone returns what was written;
//! - buffers the driver holds for a device that misbehaved (commands it
//!   may still run) are let go once the device behaves again
//!   ([`FaultInjector::heal`]) and a shutdown proves it stopped — the
//!   driver leaks nothing for good while the device can be stopped.
//!
//! # Input format
//!
//! A header (flags: sector size, queues, data pointers, bouncing, host identifier; queue sizes; MDTS), a plan (see [`plan`]), then operations until the input
//! runs out (at most [`MAX_OPS`]).

use crate::nvme::VirtualClock;
use crate::scratch::ScratchMemory;
use arbitrary::{Arbitrary, Unstructured};
use futures::FutureExt;
use futures::future::FusedFuture;
use parastor_core::memory::GuestMemory;
use parastor_core::ram::RamDisk;
use parastor_core::{Disk, Gpa, GpaRange, GuestMem, IoOptions, SgList};
use parastor_emulated::nvme::{NvmeRig, RigConfig};
use parastor_hw::nvme::regs::offset;
use parastor_nvme_driver::fault::{
    CompletionFault, CqeField, FaultInjector, FaultPlan, IdentifyFault, QueueSelect, Select,
};
use parastor_nvme_driver::{DataPointer, DeviceAccess, DriverConfig, NvmeDriver};
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

/// Steps one operation (or the bring-up) runs at most.
pub const MAX_STEPS: u32 = 50_000;
/// Consecutive steps in which nothing moved before an operation is
/// deemed stuck (nothing left that could wake it).
const IDLE_STEPS: u32 = 16;
/// Operations one input runs at most.
pub const MAX_OPS: usize = 12;
/// Caller data area (where I/O buffers go).
const DATA_BYTES: u64 = 256 << 10;
/// DMA memory for the driver (queues, PRP lists, bounce buffers).
const DMA_BYTES: u64 = 4 << 20;
/// Sectors of the namespace.
const SECTORS: u64 = 256;

/// Controller and driver configuration.
#[derive(Arbitrary, Debug)]
struct Header {
    /// Bit 0: 4096-byte sectors; bit 1: two I/O queue pairs; bits 2–3:
    /// data pointers (PRP, SGL, auto); bit 4: bounce everything (buffers
    /// the device cannot pin); bit 5: a host identifier.
    flags: u8,
    /// I/O queue entries, `2 + % 31`.
    io_entries: u8,
    /// Admin queue entries, `2 + % 15`.
    admin_entries: u8,
    /// The controller's MDTS, `4 KiB << (% 6)`.
    mdts: u8,
}

/// One operation.
#[derive(Arbitrary, Debug)]
enum Op {
    Write { sector: u8, count: u8, seed: u8 },
    Read { sector: u8, count: u8 },
    Flush,
    Reset,
    Shutdown,
}

/// A waker that records that it was woken.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `op` beside the watchdog `wd` (until the watchdog ends).
fn beside<T>(
    rig: &NvmeRig,
    op: impl Future<Output = T>,
    wd: &mut Pin<&mut (impl FusedFuture<Output = ()> + ?Sized)>,
) -> Option<T> {
    let mut op = pin!(op);
    drive(
        rig,
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = op.as_mut().poll(cx) {
                return Poll::Ready(v);
            }
            if !wd.is_terminated() {
                let _ = wd.as_mut().poll(cx);
            }
            Poll::Pending
        }),
    )
}

/// Polls `fut` (when woken) and the controller, for at most
/// [`MAX_STEPS`] steps; `None` if it did not finish.
fn drive<F: Future>(rig: &NvmeRig, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let flag = Arc::new(Flag(AtomicBool::new(true)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut idle = 0;
    for _ in 0..MAX_STEPS {
        let woken = flag.0.swap(false, Ordering::AcqRel);
        if woken && let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let mut worked = false;
        for _ in 0..256 {
            if rig.poll_controller(&mut cx).is_pending() {
                break;
            }
            worked = true;
        }
        if woken || worked || flag.0.load(Ordering::Acquire) {
            idle = 0;
        } else {
            idle += 1;
            if idle > IDLE_STEPS {
                return None;
            }
        }
    }
    None
}

/// `r`, which must be there: an operation that did not end within
/// [`MAX_STEPS`] steps, with the watchdog running, hangs.
#[track_caller]
fn ended<T>(r: Option<T>, what: &str) -> Option<T> {
    assert!(r.is_some(), "{what} did not end within {MAX_STEPS} steps");
    r
}

/// A queue selection from one byte.
fn queue(b: u8) -> QueueSelect {
    match b % 4 {
        0 => QueueSelect::Any,
        1 => QueueSelect::Admin,
        2 => QueueSelect::Io,
        _ => QueueSelect::Id(u16::from(b >> 2) % 4),
    }
}

/// A completion fault from the input.
fn completion_fault(u: &mut Unstructured<'_>) -> arbitrary::Result<CompletionFault> {
    Ok(match u8::arbitrary(u)? % 12 {
        0 => CompletionFault::Drop,
        1 => CompletionFault::Delay(u32::from(u8::arbitrary(u)? % 32)),
        2 => CompletionFault::Duplicate,
        3 => CompletionFault::Reorder,
        4 => CompletionFault::Corrupt(CqeField::Cid(u16::arbitrary(u)?)),
        5 => CompletionFault::Corrupt(CqeField::SqId(u16::arbitrary(u)?)),
        6 => CompletionFault::Corrupt(CqeField::SqHead(u16::arbitrary(u)?)),
        7 => CompletionFault::Corrupt(CqeField::Status(u16::arbitrary(u)? & 0x7FFF)),
        8 => CompletionFault::Corrupt(CqeField::Phase),
        9 => CompletionFault::Identify(match u8::arbitrary(u)? % 4 {
            0 => IdentifyFault::Mdts(u8::arbitrary(u)?),
            1 => IdentifyFault::Nn(u32::arbitrary(u)?),
            2 => IdentifyFault::Lbads(u8::arbitrary(u)?),
            _ => IdentifyFault::Nsze(u64::arbitrary(u)?),
        }),
        _ => CompletionFault::Identify(IdentifyFault::Patch {
            cns: u8::arbitrary(u)? % 4,
            offset: u16::arbitrary(u)? % 4096,
            bytes: <[u8; 8]>::arbitrary(u)?,
            len: u8::arbitrary(u)? % 9,
        }),
    })
}

/// Registers a plan may falsify (by index).
const REGISTERS: [u64; 8] = [
    offset::CAP,
    offset::VS,
    offset::CC,
    offset::CSTS,
    offset::AQA,
    offset::ASQ,
    offset::INTMS,
    offset::CAP + 4,
];

/// The plan: a seed, up to 6 completion rules, up to 2 register faults,
/// up to 2 interrupt faults, and the CFS and removal triggers.
pub fn plan(u: &mut Unstructured<'_>) -> arbitrary::Result<FaultPlan> {
    let mut p = FaultPlan::new().seed(u64::from(u8::arbitrary(u)?));
    for _ in 0..u8::arbitrary(u)? % 7 {
        let b = u8::arbitrary(u)?;
        let mut when = Select::any().queue(queue(b));
        if b & 0x80 != 0 {
            when = when.opcode(u8::arbitrary(u)? % 0x1A);
        }
        when = when.skip(u64::from(u8::arbitrary(u)? % 32));
        let count = u8::arbitrary(u)?;
        when = when.count(if count == 0xFF {
            u64::MAX
        } else {
            u64::from(count % 8)
        });
        when = when.one_in(u32::from(u8::arbitrary(u)? % 5));
        let fault = completion_fault(u)?;
        p = p.on(when, fault);
    }
    for _ in 0..u8::arbitrary(u)? % 3 {
        let at = REGISTERS[usize::from(u8::arbitrary(u)?) % REGISTERS.len()];
        p = p.register(
            at,
            u64::arbitrary(u)?,
            u64::arbitrary(u)? & u64::from(u16::MAX),
        );
    }
    for _ in 0..u8::arbitrary(u)? % 3 {
        let v = u8::arbitrary(u)?;
        let vector = (v & 0x80 == 0).then_some(u16::from(v % 3));
        p = p.swallow_interrupts(
            vector,
            u64::from(u8::arbitrary(u)? % 16),
            u64::from(u8::arbitrary(u)?),
        );
    }
    let t = u8::arbitrary(u)?;
    if t & 1 != 0 {
        p = p.cfs_after(u64::from(u8::arbitrary(u)? % 64));
    }
    if t & 2 != 0 {
        p = p.removal_after(u64::from(u8::arbitrary(u)? % 64));
    }
    Ok(p)
}

/// Whether `plan` leaves completion contents and Identify data alone (so
/// a successful read must return what was written).
fn faithful(plan: &FaultPlan) -> bool {
    plan.registers.is_empty()
        && plan.rules.iter().all(|r| {
            matches!(
                r.fault,
                CompletionFault::Delay(_) | CompletionFault::Reorder | CompletionFault::Drop
            )
        })
}

/// How far an input got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The driver came up.
    pub up: bool,
    /// Operations run.
    pub ops: usize,
    /// Operations that succeeded.
    pub succeeded: usize,
    /// Reads whose data was checked against what was written.
    pub checked_reads: usize,
}

/// Runs one input; panics if a property is broken.
pub fn nvme_driver(data: &[u8]) {
    run(data);
}

/// Runs one input and says how far it got; panics if a property is
/// broken.
pub fn run(data: &[u8]) -> Summary {
    let mut summary = Summary::default();
    let mut u = Unstructured::new(data);
    let Ok(header) = Header::arbitrary(&mut u) else {
        return summary;
    };
    let Ok(plan) = plan(&mut u) else {
        return summary;
    };
    let sector_size: u32 = if header.flags & 1 != 0 { 4096 } else { 512 };
    let mut controller = crate::nvme::controller_config(2);
    controller.max_transfer_bytes = 4096 << (header.mdts % 6);
    let rig_config = RigConfig {
        data_bytes: DATA_BYTES,
        dma_bytes: DMA_BYTES,
        controller,
    };
    let rig = NvmeRig::with_memory(
        rig_config,
        GuestMem::new(ScratchMemory::take(DATA_BYTES + DMA_BYTES)),
    );
    let Ok(ram) = RamDisk::new(SECTORS * u64::from(sector_size), sector_size) else {
        return summary;
    };
    let Ok(backing) = Disk::new(ram) else {
        return summary;
    };
    if rig.controller().add_namespace(1, backing).is_err() {
        return summary;
    }
    let check_data = faithful(&plan);
    let fi = FaultInjector::new(rig.device(), plan);
    let device: Arc<dyn DeviceAccess> = fi.clone();
    let clock = VirtualClock::new();
    let config = DriverConfig {
        io_queues: if header.flags & 2 != 0 { 2 } else { 1 },
        io_queue_size: 2 + u16::from(header.io_entries % 31),
        admin_queue_size: 2 + u16::from(header.admin_entries % 15),
        data_pointer: match (header.flags >> 2) % 3 {
            0 => DataPointer::Prp,
            1 => DataPointer::Sgl,
            _ => DataPointer::Auto,
        },
        bounce_budget: 64 << 10,
        host_id: (header.flags & 0x20 != 0).then_some([0x5A; 16]),
        command_timeout: Duration::from_secs(1),
        admin_timeout: Duration::from_secs(1),
        watchdog_period: Duration::from_millis(100),
        ready_timeout_cap: Duration::from_secs(1),
        clock: clock.clone(),
        ..DriverConfig::default()
    };
    let up = drive(&rig, NvmeDriver::new(device, config, clock.clone()));
    let Some(up) = up else {
        panic!("bring-up did not end within {MAX_STEPS} steps");
    };
    let Ok(driver) = up else {
        return summary;
    };
    summary.up = true;
    let mut wd = pin!(driver.run_watchdog().fuse());
    let disk = driver.namespace(1).ok().and_then(|ns| Disk::new(ns).ok());
    let memory: &dyn GuestMemory = &**rig.memory();
    // Bounced buffers: memory the device's domain cannot pin.
    let bounce_mem;
    let io_memory: &dyn GuestMemory = if header.flags & 0x10 != 0 {
        bounce_mem = parastor_core::RamGuestMemory::new(DATA_BYTES);
        &bounce_mem
    } else {
        memory
    };
    let mut written: Vec<Option<Vec<u8>>> = vec![None; SECTORS as usize];
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        summary.ops += 1;
        match op {
            Op::Write {
                sector,
                count,
                seed,
            } => {
                let Some(disk) = &disk else { continue };
                let ss = u64::from(disk.sector_size());
                let sector = u64::from(sector) % (SECTORS + 2);
                let count = 1 + u64::from(count % 16);
                let len = count * ss;
                if len > DATA_BYTES / 2 {
                    continue;
                }
                let bytes: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed).collect();
                if io_memory.write_at(Gpa::new(0), &bytes).is_err() {
                    continue;
                }
                let ranges = [GpaRange::new(Gpa::new(0), len)];
                let Ok(sg) = SgList::new(io_memory, &ranges, false) else {
                    continue;
                };
                let r = ended(
                    beside(&rig, disk.write(sg, sector, IoOptions::default()), &mut wd),
                    "write",
                );
                if let Some(Ok(())) = r {
                    summary.succeeded += 1;
                    for (i, chunk) in bytes.chunks(ss as usize).enumerate() {
                        if let Some(slot) = written.get_mut(sector as usize + i) {
                            *slot = Some(chunk.to_vec());
                        }
                    }
                } else {
                    // Unknown content now.
                    for i in 0..count {
                        if let Some(slot) = written.get_mut((sector + i) as usize) {
                            *slot = None;
                        }
                    }
                }
            }
            Op::Read { sector, count } => {
                let Some(disk) = &disk else { continue };
                let ss = u64::from(disk.sector_size());
                let sector = u64::from(sector) % (SECTORS + 2);
                let count = 1 + u64::from(count % 16);
                let len = count * ss;
                if len > DATA_BYTES / 2 {
                    continue;
                }
                let at = DATA_BYTES / 2;
                let ranges = [GpaRange::new(Gpa::new(at), len)];
                let Ok(sg) = SgList::new(io_memory, &ranges, true) else {
                    continue;
                };
                let r = ended(
                    beside(&rig, disk.read(sg, sector, IoOptions::default()), &mut wd),
                    "read",
                );
                if let Some(Ok(())) = r {
                    summary.succeeded += 1;
                }
                if check_data && let Some(Ok(())) = r {
                    summary.checked_reads += 1;
                    let mut back = vec![0u8; len as usize];
                    if io_memory.read_at(Gpa::new(at), &mut back).is_ok() {
                        for (i, chunk) in back.chunks(ss as usize).enumerate() {
                            if let Some(Some(want)) = written.get(sector as usize + i) {
                                assert!(
                                    chunk == &want[..],
                                    "sector {} read back differs from what was written",
                                    sector as usize + i
                                );
                            }
                        }
                    }
                }
            }
            Op::Flush => {
                if let Some(disk) = &disk
                    && let Some(Ok(())) = ended(
                        beside(&rig, disk.flush(IoOptions::default()), &mut wd),
                        "flush",
                    )
                {
                    summary.succeeded += 1;
                }
            }
            Op::Reset => {
                if let Some(Ok(())) = ended(beside(&rig, driver.reset(), &mut wd), "reset") {
                    summary.succeeded += 1;
                }
                // Outstanding writes may or may not have landed.
                written.iter_mut().for_each(|w| *w = None);
            }
            Op::Shutdown => {
                let _ = ended(beside(&rig, driver.shutdown(), &mut wd), "shutdown");
                break;
            }
        }
    }
    // Once the device behaves again, a shutdown proves it stopped and the
    // driver lets go of every buffer it held for the device.
    fi.heal();
    if driver.held_commands() > 0 {
        let _ = ended(beside(&rig, driver.shutdown(), &mut wd), "shutdown");
        assert_eq!(
            driver.held_commands(),
            0,
            "buffers still held after a shutdown of a healthy device"
        );
    }
    // The wrapper's own bookkeeping stays bounded.
    assert!(
        fi.held() <= 4 * 2 * 4096,
        "the fault injector holds {} completions",
        fi.held()
    );
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The discriminant bytes `arbitrary` reads for variant `i` of 5.
    fn variant(i: u32) -> [u8; 4] {
        (((u64::from(i) << 32) / 5 + 1) as u32).to_le_bytes()
    }

    #[test]
    fn a_plain_input_brings_the_driver_up_and_checks_what_it_reads() {
        // Header: 512-byte sectors, one queue pair, PRPs; then an empty
        // plan; then write 3 sectors at 1, read them back, flush, reset,
        // read again.
        let mut input = vec![0u8, 10, 10, 3];
        input.extend([0, 0, 0, 0, 0]);
        input.extend(variant(0));
        input.extend([1, 2, 7]);
        input.extend(variant(1));
        input.extend([1, 2]);
        input.extend(variant(2));
        input.extend(variant(3));
        input.extend(variant(1));
        input.extend([1, 2]);
        let s = run(&input);
        assert_eq!(
            s,
            Summary {
                up: true,
                ops: 5,
                succeeded: 5,
                checked_reads: 2,
            }
        );
    }

    #[test]
    fn a_plan_decodes_from_bytes() {
        // One rule: I/O queue, opcode 2 (Read), skip 1, once, always:
        // drop. CFS after 5.
        let bytes = [9, 1, 0x82, 2, 1, 1, 0, 0, 0, 0, 1, 5];
        let p = plan(&mut Unstructured::new(&bytes)).unwrap();
        assert_eq!(p.seed, 9);
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.rules[0].when, Select::io().opcode(2).skip(1).once());
        assert_eq!(p.rules[0].fault, CompletionFault::Drop);
        assert_eq!(p.cfs_after, Some(5));
        assert_eq!(p.removal_after, None);
    }
}
