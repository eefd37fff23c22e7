//! A hostile device against parastor's NVMe driver: the fault-injection
//! middleware (`parastor_nvme_driver::fault`) between the driver and the
//! in-process emulated device, in one process.
//!
//! Two groups:
//! - `middleware`: each fault is applied as asked, seen at the driver
//!   (its refused-completion counter, its errors) and in the wrapper's
//!   statistics; a plan that asks for nothing changes nothing.
//! - `outcomes`: every fault of issue 13 with the outcome the driver owes
//!   a hostile device — I/O errors, a failed controller, never a panic,
//!   never a hang.
//!
//! Nothing here waits for wall-clock time: [`Bed::drive`] polls the
//! driver's future only when it was woken (so a swallowed interrupt is
//! really never seen) and the controller's work on the same thread, and
//! gives up after a bounded number of steps, or when nothing can make
//! progress any more.

use parastor_core::addr::{Gpa, GpaRange};
use parastor_core::memory::GuestMemory;
use parastor_core::ram::RamDisk;
use parastor_core::{Disk, DiskError, IoOptions, SgList};
use parastor_emulated::nvme::{NvmeRig, RigConfig, YieldTimer};
use parastor_hw::nvme::command::{AdminOpcode, NvmOpcode};
use parastor_hw::nvme::regs::offset;
use parastor_nvme_driver::fault::{
    CompletionFault, CqeField, FaultInjector, FaultPlan, IdentifyFault, QueueSelect, Select,
};
use parastor_nvme_driver::{DeviceAccess, DriverConfig, DriverError, NvmeDriver};
use parastor_tests::buf::{pattern, read_vec};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// Steps one [`Bed::drive`] takes at most (a step polls the controller
/// and, if woken, the future).
const MAX_STEPS: u32 = 200_000;
/// Consecutive steps in which nothing happened before giving up.
const IDLE_STEPS: u32 = 64;
/// Sectors of namespace 1 (512-byte sectors).
const SECTORS: u64 = 4096;
/// Where the tests' buffers start in the shared RAM.
const BUF: u64 = 0x10_0000;

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

/// The emulated controller with one RAM-disk namespace, and the fault
/// injector the driver reaches it through.
struct Bed {
    rig: NvmeRig,
    ram: RamDisk,
    fi: Arc<FaultInjector>,
}

impl Bed {
    fn new(plan: FaultPlan) -> Self {
        let mut config = parastor_tests::nvme::controller_config(2);
        config.max_transfer_bytes = 128 << 10;
        let mut c = RigConfig::new(config);
        c.data_bytes = 4 << 20;
        c.dma_bytes = 16 << 20;
        let rig = NvmeRig::new(c).expect("map the rig's RAM");
        let (ram, disk) = parastor_tests::nvme::ram(SECTORS, 512);
        rig.controller()
            .add_namespace(1, disk)
            .expect("add namespace 1");
        let fi = FaultInjector::new(rig.device(), plan);
        Self { rig, ram, fi }
    }

    /// Polls `fut` (when woken) and the controller's work, until `fut`
    /// completes (`Some`), nothing moves for [`IDLE_STEPS`] steps or
    /// [`MAX_STEPS`] pass (`None`).
    fn drive<F: Future>(&self, fut: F) -> Option<F::Output> {
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
            for _ in 0..1000 {
                if self.rig.poll_controller(&mut cx).is_pending() {
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

    fn start_with(&self, config: DriverConfig) -> Option<Result<NvmeDriver, DriverError>> {
        let device: Arc<dyn DeviceAccess> = self.fi.clone();
        self.drive(NvmeDriver::new(device, config, Arc::new(YieldTimer)))
    }

    #[track_caller]
    fn start(&self) -> NvmeDriver {
        self.start_with(DriverConfig {
            io_queues: 1,
            ..DriverConfig::default()
        })
        .expect("bring-up ends")
        .expect("bring-up succeeds")
    }

    fn memory(&self) -> &dyn GuestMemory {
        &**self.rig.memory()
    }

    fn put(&self, gpa: u64, data: &[u8]) {
        self.memory()
            .write_at(Gpa::new(gpa), data)
            .expect("inside the data area");
    }

    fn get(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.memory()
            .read_at(Gpa::new(gpa), &mut v)
            .expect("inside the data area");
        v
    }

    /// Writes `sectors` sectors of a pattern at `sector`.
    fn write(
        &self,
        disk: &Disk,
        sector: u64,
        sectors: u64,
        seed: u64,
    ) -> Option<Result<(), DiskError>> {
        let data = pattern(seed, sector, sectors, 512);
        self.put(BUF, &data);
        let ranges = [GpaRange::new(Gpa::new(BUF), data.len() as u64)];
        let sg = SgList::new(self.memory(), &ranges, false).expect("representable");
        self.drive(disk.write(sg, sector, IoOptions::default()))
    }

    /// Reads `sectors` sectors at `sector`.
    fn read(&self, disk: &Disk, sector: u64, sectors: u64) -> Option<Result<Vec<u8>, DiskError>> {
        let len = sectors * 512;
        let at = BUF + (2 << 20);
        self.put(at, &vec![0xEE; len as usize]);
        let ranges = [GpaRange::new(Gpa::new(at), len)];
        let sg = SgList::new(self.memory(), &ranges, true).expect("representable");
        self.drive(disk.read(sg, sector, IoOptions::default()))
            .map(|r| r.map(|()| self.get(at, len as usize)))
    }

    /// Writes and reads back, checking the bytes through the driver and
    /// in the RAM disk behind the controller.
    #[track_caller]
    fn round_trip(&self, disk: &Disk, sector: u64, sectors: u64, seed: u64) {
        self.write(disk, sector, sectors, seed)
            .expect("the write ends")
            .expect("the write succeeds");
        let back = self
            .read(disk, sector, sectors)
            .expect("the read ends")
            .expect("the read succeeds");
        let data = pattern(seed, sector, sectors, 512);
        assert!(back == data, "read back through the driver");
        let held = read_vec(&Disk::new(self.ram.clone()).expect("disk"), sector, sectors)
            .expect("read the RAM disk");
        assert!(held == data, "the RAM disk holds the data");
    }
}

fn disk(driver: &NvmeDriver) -> Disk {
    Disk::new(driver.namespace(1).expect("namespace 1")).expect("valid disk")
}

const READ: u8 = NvmOpcode::READ.get();
const WRITE: u8 = NvmOpcode::WRITE.get();

mod middleware {
    use super::*;

    #[test]
    fn a_plan_that_asks_for_nothing_changes_nothing() {
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        assert_eq!(d.sector_count(), SECTORS);
        bed.round_trip(&d, 0, 8, 1);
        bed.round_trip(&d, 100, 256, 2);
        let s = bed.fi.stats();
        assert!(s.submissions > 0 && s.seen > 0, "{s:?}");
        assert_eq!(s.seen, s.delivered, "every completion delivered once");
        assert_eq!(s.submissions, s.seen, "every submission completed");
        assert_eq!(
            (s.dropped, s.delayed, s.duplicated, s.corrupted),
            (0, 0, 0, 0)
        );
        assert_eq!(driver.refused_completions(), 0);
        assert_eq!(bed.fi.held(), 0);
    }

    #[test]
    fn shadow_doorbells_are_hidden_so_every_submission_is_seen() {
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        let before = bed.fi.stats().submissions;
        for i in 0..10 {
            bed.round_trip(&d, i * 8, 8, i);
        }
        // 10 writes and 10 reads, each one command, each snooped at its
        // doorbell (with shadow doorbells most would ring no register).
        assert_eq!(bed.fi.stats().submissions - before, 20);
    }

    #[test]
    fn a_dropped_completion_never_reaches_the_driver() {
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        bed.fi
            .set_plan(FaultPlan::new().on(Select::io().opcode(READ).once(), CompletionFault::Drop));
        bed.write(&d, 0, 8, 3).unwrap().unwrap();
        let read = bed.read(&d, 0, 8);
        assert!(read.is_none(), "the read cannot complete: {read:?}");
        assert_eq!(bed.fi.stats().dropped, 1);
        assert_eq!(driver.outstanding(), 1, "the command is still the device's");
    }

    #[test]
    fn a_delayed_completion_arrives_late_and_whole() {
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        bed.fi.set_plan(FaultPlan::new().on(
            Select::io().opcode(WRITE).count(3),
            CompletionFault::Delay(6),
        ));
        for i in 0..5 {
            bed.round_trip(&d, i * 16, 16, 10 + i);
        }
        let s = bed.fi.stats();
        assert_eq!(s.delayed, 3);
        assert_eq!(driver.refused_completions(), 0);
        assert_eq!(bed.fi.held(), 0, "nothing left behind");
    }

    #[test]
    fn a_duplicated_completion_is_refused_by_the_driver() {
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        bed.fi.set_plan(FaultPlan::new().on(
            Select::io().opcode(WRITE).once(),
            CompletionFault::Duplicate,
        ));
        // The original completes the write.
        assert_eq!(bed.write(&d, 8, 8, 4), Some(Ok(())));
        // The copy is found by the next drain (what the driver then does
        // about it is the `outcomes_with_watchdog` group's business).
        let _ = bed.read(&d, 8, 8);
        assert_eq!(bed.fi.stats().duplicated, 1);
        assert_eq!(driver.refused_completions(), 1, "the copy was refused");
    }

    #[test]
    fn reordered_completions_still_complete_their_own_commands() {
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        bed.fi
            .set_plan(FaultPlan::new().on(Select::io().count(4), CompletionFault::Reorder));
        // Several commands at once: a transfer larger than MDTS (128 KiB)
        // is split into commands that complete out of order.
        bed.round_trip(&d, 0, 1024, 6);
        let s = bed.fi.stats();
        assert_eq!(s.reordered, 4);
        assert_eq!(driver.refused_completions(), 0);
        assert_eq!(bed.fi.held(), 0);
    }

    #[test]
    fn a_completion_with_an_unknown_command_id_is_refused() {
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        bed.fi.set_plan(FaultPlan::new().on(
            Select::io().once(),
            CompletionFault::Corrupt(CqeField::Cid(0x3FF)),
        ));
        let w = bed.write(&d, 0, 8, 7);
        assert_eq!(bed.fi.stats().corrupted, 1);
        assert_eq!(driver.refused_completions(), 1, "refused, counted: {w:?}");
    }

    #[test]
    fn a_completion_naming_another_submission_queue_fails_its_command() {
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        bed.fi.set_plan(FaultPlan::new().on(
            Select::io().once(),
            CompletionFault::Corrupt(CqeField::SqId(9)),
        ));
        let w = bed.write(&d, 0, 8, 8).expect("the write ends");
        assert!(w.is_err(), "{w:?}");
        assert_eq!(bed.fi.stats().corrupted, 1);
    }

    #[test]
    fn a_corrupted_status_fails_the_command_with_that_status() {
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        // LBA Out of Range (generic, 80h) on a write well inside the disk.
        bed.fi.set_plan(FaultPlan::new().on(
            Select::io().once(),
            CompletionFault::Corrupt(CqeField::Status(0x80)),
        ));
        let w = bed.write(&d, 0, 8, 9).expect("the write ends");
        assert!(matches!(w, Err(DiskError::IllegalBlock)), "{w:?}");
        // The next command is untouched.
        bed.round_trip(&d, 0, 8, 9);
        assert_eq!(driver.refused_completions(), 0);
    }

    #[test]
    fn a_completion_with_the_wrong_phase_is_not_seen() {
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        bed.fi.set_plan(FaultPlan::new().on(
            Select::io().once(),
            CompletionFault::Corrupt(CqeField::Phase),
        ));
        let w = bed.write(&d, 0, 8, 10);
        assert!(
            w.is_none(),
            "an entry of the old phase is no completion: {w:?}"
        );
        assert_eq!(bed.fi.stats().corrupted, 1);
        assert_eq!(driver.outstanding(), 1);
    }

    #[test]
    fn hostile_identify_controller_data_reaches_the_driver() {
        // NN 2^32 - 1: the active namespace list still names only NSID 1.
        let bed = Bed::new(FaultPlan::new().identify(IdentifyFault::Nn(u32::MAX)));
        let driver = bed.start();
        assert_eq!(driver.facts().nn, u32::MAX);
        assert_eq!(driver.namespaces(), [1]);
        assert_eq!(bed.fi.stats().identify_rewritten, 1);
    }

    #[test]
    fn hostile_identify_namespace_data_reaches_the_driver() {
        // LBADS 8 (256-byte blocks): the driver refuses the namespace.
        let bed = Bed::new(FaultPlan::new().identify(IdentifyFault::Lbads(8)));
        let driver = bed.start();
        assert!(driver.namespace(1).is_err());
        assert!(bed.fi.stats().identify_rewritten >= 1);
    }

    #[test]
    fn falsified_registers_are_what_the_driver_reads() {
        // CAP.MQES 0: a queue of one entry, which bring-up refuses.
        let bed = Bed::new(FaultPlan::new().register(offset::CAP, !0xFFFF, 0));
        let r = bed
            .start_with(DriverConfig::default())
            .expect("bring-up ends");
        assert!(matches!(r, Err(DriverError::Unsupported(_))), "{r:?}");
        assert!(bed.fi.stats().registers_falsified >= 1);
    }

    #[test]
    fn cfs_and_removal_show_in_the_registers() {
        let bed = Bed::new(FaultPlan::new());
        let _driver = bed.start();
        let dev: Arc<dyn DeviceAccess> = bed.fi.clone();
        assert_eq!(dev.read_u32(0, offset::CSTS) & 3, 1, "ready, no CFS");
        bed.fi.set_plan(FaultPlan::new().cfs_after(0));
        assert_eq!(dev.read_u32(0, offset::CSTS) & 3, 3, "ready and CFS");
        bed.fi.set_plan(FaultPlan::new().removal_after(2));
        let d = disk(&_driver);
        bed.round_trip(&d, 0, 8, 11);
        assert_eq!(dev.read_u32(0, offset::CSTS), u32::MAX, "removed after 2");
        assert_eq!(dev.read_u64(0, offset::CAP), u64::MAX);
        assert_eq!(dev.config_read_u32(0), u32::MAX);
        assert!(bed.fi.stats().removed);
        // Healed: the registers read true again.
        bed.fi.heal();
        assert_eq!(dev.read_u32(0, offset::CSTS) & 3, 1, "ready, no CFS");
        assert_ne!(dev.config_read_u32(0), u32::MAX);
    }

    #[test]
    fn a_swallowed_interrupt_never_wakes_the_driver() {
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        bed.fi
            .set_plan(FaultPlan::new().swallow_interrupts(Some(1), 0, u64::MAX));
        let w = bed.write(&d, 0, 8, 12);
        assert!(w.is_none(), "nothing woke the driver: {w:?}");
        assert!(bed.fi.stats().interrupts_swallowed >= 1);
        // Interrupts back: the next signal (or poll) finds both.
        bed.fi.set_plan(FaultPlan::new());
        bed.round_trip(&d, 8, 8, 13);
    }

    #[test]
    fn admin_faults_select_by_opcode_and_occurrence() {
        // Delay the second Identify only.
        let bed = Bed::new(
            FaultPlan::new().on(
                Select::admin()
                    .opcode(AdminOpcode::IDENTIFY.get())
                    .skip(1)
                    .once(),
                CompletionFault::Delay(3),
            ),
        );
        let driver = bed.start();
        assert_eq!(bed.fi.stats().delayed, 1);
        assert_eq!(driver.namespaces(), [1]);
    }

    #[test]
    fn one_in_n_is_deterministic_for_a_seed() {
        let run = |seed| {
            let bed = Bed::new(FaultPlan::new());
            let driver = bed.start();
            let d = disk(&driver);
            bed.fi.set_plan(
                FaultPlan::new()
                    .seed(seed)
                    .on(Select::io().one_in(3), CompletionFault::Delay(2)),
            );
            for i in 0..12 {
                bed.round_trip(&d, i * 8, 8, i);
            }
            bed.fi.stats().delayed
        };
        let a = run(42);
        assert_eq!(a, run(42), "same seed, same faults");
        assert!(a > 0 && a < 24, "about one in three of 24: {a}");
    }

    #[test]
    fn faults_apply_with_the_controller_on_its_own_thread() {
        use parastor_emulated::nvme::ControllerThread;
        use parastor_tests::buf::{block_on, write_vec};
        // The device runs beside the driver (its signals arrive while the
        // wrapper may be busy), several threads do I/O at once (bounced:
        // their buffers are not device memory), and a third of the
        // completions are late or overtaken.
        let bed = Bed::new(FaultPlan::new());
        let _controller =
            ControllerThread::spawn(bed.rig.backing(), None).expect("start the controller thread");
        let device: Arc<dyn DeviceAccess> = bed.fi.clone();
        let driver = block_on(NvmeDriver::new(
            device,
            DriverConfig {
                io_queues: 2,
                ..DriverConfig::default()
            },
            Arc::new(YieldTimer),
        ))
        .expect("bring-up");
        bed.fi.set_plan(
            FaultPlan::new()
                .seed(3)
                .on(Select::io().one_in(3), CompletionFault::Delay(4))
                .on(Select::io().one_in(3), CompletionFault::Reorder),
        );
        let d = disk(&driver);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let d = d.clone();
                s.spawn(move || {
                    for i in 0..16u64 {
                        let sector = t * 512 + i * 8;
                        let data = pattern(t * 100 + i, sector, 8, 512);
                        write_vec(&d, sector, &data).expect("write");
                        assert!(read_vec(&d, sector, 8).expect("read") == data);
                    }
                });
            }
        });
        let st = bed.fi.stats();
        assert!(st.delayed > 0 && st.reordered > 0, "{st:?}");
        assert_eq!(driver.refused_completions(), 0);
        assert_eq!(bed.fi.held(), 0);
    }

    #[test]
    fn a_queue_selection_spares_the_other_queues() {
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        bed.fi.set_plan(FaultPlan::new().on(
            Select::any().queue(QueueSelect::Id(5)),
            CompletionFault::Drop,
        ));
        bed.round_trip(&d, 0, 8, 14);
        assert_eq!(bed.fi.stats().dropped, 0);
    }
}

/// Every fault with the outcome the driver owes a hostile device, where
/// the driver as it stands already has it.
mod outcomes {
    use super::*;
    use parastor_core::{IoError, IoErrorKind};
    use parastor_nvme_driver::error::CODE_DEVICE_FAILED;

    const DEVICE_FAILED: DiskError =
        DiskError::Io(IoError::new(IoErrorKind::DeviceFailed, CODE_DEVICE_FAILED));

    #[test]
    fn a_completion_naming_another_queue_is_a_device_failure_not_a_panic() {
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        for sqid in [0, 2, 9, u16::MAX] {
            bed.fi.set_plan(FaultPlan::new().on(
                Select::io().once(),
                CompletionFault::Corrupt(CqeField::SqId(sqid)),
            ));
            let w = bed.write(&d, 0, 8, 1).expect("the write ends");
            assert_eq!(w, Err(DEVICE_FAILED), "SQID {sqid}");
        }
    }

    #[test]
    fn an_error_status_from_the_device_is_the_disk_error_of_that_status() {
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        // Generic status: Data Transfer Error (04h) → an I/O error;
        // Media: Unrecovered Read Error (SCT 2, 81h) → a medium error.
        bed.fi.set_plan(FaultPlan::new().on(
            Select::io().once(),
            CompletionFault::Corrupt(CqeField::Status(0x04)),
        ));
        let w = bed.write(&d, 0, 8, 2).expect("the write ends");
        assert!(matches!(w, Err(DiskError::Io(_))), "{w:?}");
        bed.fi.set_plan(FaultPlan::new().on(
            Select::io().opcode(READ).once(),
            CompletionFault::Corrupt(CqeField::Status((2 << 8) | 0x81)),
        ));
        let r = bed.read(&d, 0, 8).expect("the read ends");
        assert!(matches!(r, Err(DiskError::Medium(_))), "{r:?}");
    }

    #[test]
    fn an_mdts_too_large_for_an_address_is_no_limit_not_one_page() {
        for m in [51u8, 52, 60, 63, 255] {
            let bed = Bed::new(FaultPlan::new().identify(IdentifyFault::Mdts(m)));
            let driver = bed.start();
            assert_eq!(
                driver.facts().max_transfer,
                parastor_nvme_driver::DEFAULT_MAX_TRANSFER,
                "MDTS {m}: 4 KiB << {m} does not fit a usize; the driver keeps its own limit"
            );
        }
    }

    #[test]
    fn mdts_zero_means_no_limit_and_the_driver_keeps_its_own() {
        let bed = Bed::new(FaultPlan::new().identify(IdentifyFault::Mdts(0)));
        let driver = bed.start();
        let max = driver.facts().max_transfer;
        assert!(
            max <= parastor_nvme_driver::DEFAULT_MAX_TRANSFER,
            "MDTS 0 is no limit, not an unbounded transfer: {max}"
        );
        let d = disk(&driver);
        // Within the device's real limit (128 KiB), I/O works.
        bed.round_trip(&d, 0, 256, 3);
        // Beyond it the device refuses the command: a clean error.
        let w = bed.write(&d, 0, 2048, 4).expect("the write ends");
        assert!(w.is_err(), "{w:?}");
    }

    #[test]
    fn an_lba_size_outside_512_bytes_to_64_kib_refuses_the_namespace() {
        for lbads in [0, 8, 17, 63, 255] {
            let bed = Bed::new(FaultPlan::new().identify(IdentifyFault::Lbads(lbads)));
            let driver = bed.start();
            assert!(driver.namespace(1).is_err(), "LBADS {lbads}");
            assert!(driver.namespaces().is_empty(), "LBADS {lbads}");
        }
    }

    #[test]
    fn nn_of_two_to_the_32_minus_one_scans_only_the_active_list() {
        let bed = Bed::new(FaultPlan::new().identify(IdentifyFault::Nn(u32::MAX)));
        let driver = bed.start();
        assert_eq!(driver.namespaces(), [1]);
        bed.round_trip(&disk(&driver), 0, 8, 5);
    }

    #[test]
    fn a_namespace_larger_than_the_device_fails_io_beyond_its_end_cleanly() {
        let bed = Bed::new(FaultPlan::new().identify(IdentifyFault::Nsze(SECTORS * 4)));
        let driver = bed.start();
        let d = disk(&driver);
        assert_eq!(d.sector_count(), SECTORS * 4, "the driver believes NSZE");
        bed.round_trip(&d, 0, 8, 6);
        let r = bed.read(&d, SECTORS + 8, 8).expect("the read ends");
        assert_eq!(r.err(), Some(DiskError::IllegalBlock));
    }

    #[test]
    fn a_namespace_size_no_byte_count_can_hold_is_refused_or_harmless() {
        for nsze in [u64::MAX, u64::MAX >> 9, 1 << 63] {
            let bed = Bed::new(FaultPlan::new().identify(IdentifyFault::Nsze(nsze)));
            let driver = bed.start();
            let Some(d) = driver.namespace(1).ok().and_then(|ns| Disk::new(ns).ok()) else {
                continue;
            };
            // If served, I/O at the top of the claimed range fails cleanly.
            let top = d.sector_count().saturating_sub(8);
            let r = bed.read(&d, top, 8).expect("the read ends");
            assert!(r.is_err(), "NSZE {nsze:#x}: {r:?}");
        }
    }
}

/// Every fault with the outcome the hardened driver owes a hostile
/// device, with its watchdog running on a virtual clock: a failed
/// controller and clean I/O errors for what cannot be trusted, a timeout
/// (Abort, reset) for what never comes, never a panic, never a hang.
mod outcomes_with_watchdog {
    use super::*;
    use futures::FutureExt;
    use futures::future::FusedFuture;
    use parastor_core::{IoError, IoErrorKind};
    use parastor_nvme_driver::error::{CODE_DEVICE_FAILED, CODE_TIMEOUT};
    use parastor_tests::nvme::VirtualClock;
    use std::pin::Pin;
    use std::time::Duration;

    const DEVICE_FAILED: DiskError =
        DiskError::Io(IoError::new(IoErrorKind::DeviceFailed, CODE_DEVICE_FAILED));
    const TIMED_OUT: DiskError = DiskError::Io(IoError::new(IoErrorKind::TimedOut, CODE_TIMEOUT));

    /// Short timeouts on a virtual clock that moves only when the driver
    /// sleeps (the watchdog's period, register polling).
    fn config(clock: &Arc<VirtualClock>) -> DriverConfig {
        DriverConfig {
            command_timeout: Duration::from_secs(2),
            admin_timeout: Duration::from_secs(2),
            watchdog_period: Duration::from_millis(100),
            ready_timeout_cap: Duration::from_secs(2),
            clock: clock.clone(),
            io_queues: 1,
            ..DriverConfig::default()
        }
    }

    pub(super) struct Watched {
        pub(super) bed: Bed,
        pub(super) driver: NvmeDriver,
        pub(super) disk: Disk,
    }

    pub(super) fn watched(plan: FaultPlan) -> Watched {
        let bed = Bed::new(plan);
        let clock = VirtualClock::new();
        let device: Arc<dyn DeviceAccess> = bed.fi.clone();
        let driver = bed
            .drive(NvmeDriver::new(device, config(&clock), clock.clone()))
            .expect("bring-up ends")
            .expect("bring-up succeeds");
        let disk = disk(&driver);
        Watched { bed, driver, disk }
    }

    impl Watched {
        /// Runs `op` beside the watchdog (which ends when the controller
        /// fails); `None` only if the bounded run ran out.
        pub(super) fn run<T>(
            &self,
            op: impl Future<Output = T>,
            wd: &mut Pin<&mut (impl FusedFuture<Output = ()> + ?Sized)>,
        ) -> Option<T> {
            let mut op = pin!(op);
            self.bed.drive(std::future::poll_fn(|cx| {
                if let Poll::Ready(v) = op.as_mut().poll(cx) {
                    return Poll::Ready(v);
                }
                if !wd.is_terminated() {
                    let _ = wd.as_mut().poll(cx);
                }
                Poll::Pending
            }))
        }

        pub(super) fn write(
            &self,
            sector: u64,
            seed: u64,
            wd: &mut Pin<&mut (impl FusedFuture<Output = ()> + ?Sized)>,
        ) -> Option<Result<(), DiskError>> {
            let data = pattern(seed, sector, 8, 512);
            self.bed.put(BUF, &data);
            let ranges = [GpaRange::new(Gpa::new(BUF), data.len() as u64)];
            let sg = SgList::new(self.bed.memory(), &ranges, false).expect("representable");
            self.run(self.disk.write(sg, sector, IoOptions::default()), wd)
        }

        fn read(
            &self,
            sector: u64,
            wd: &mut Pin<&mut (impl FusedFuture<Output = ()> + ?Sized)>,
        ) -> Option<Result<Vec<u8>, DiskError>> {
            let at = BUF + (2 << 20);
            let ranges = [GpaRange::new(Gpa::new(at), 8 * 512)];
            let sg = SgList::new(self.bed.memory(), &ranges, true).expect("representable");
            self.run(self.disk.read(sg, sector, IoOptions::default()), wd)
                .map(|r| r.map(|()| self.bed.get(at, 8 * 512)))
        }

        /// The controller failed: every operation answers the failed
        /// controller's error at once.
        #[track_caller]
        fn failed_for_good(&self, wd: &mut Pin<&mut (impl FusedFuture<Output = ()> + ?Sized)>) {
            // The watchdog fails the controller and ends.
            if !wd.is_terminated() {
                assert_eq!(self.bed.drive(wd.as_mut()), Some(()), "the watchdog ends");
            }
            assert!(self.driver.is_failed(), "{:?}", self.driver.failure());
            assert_eq!(self.write(0, 1, wd), Some(Err(DEVICE_FAILED)));
            assert_eq!(self.read(0, wd).map(|r| r.err()), Some(Some(DEVICE_FAILED)));
            assert_eq!(
                self.run(self.disk.flush(IoOptions::default()), wd),
                Some(Err(DEVICE_FAILED))
            );
        }

        /// The controller serves: a write and a read back.
        #[track_caller]
        fn serves(
            &self,
            sector: u64,
            seed: u64,
            wd: &mut Pin<&mut (impl FusedFuture<Output = ()> + ?Sized)>,
        ) {
            assert!(!self.driver.is_failed(), "{:?}", self.driver.failure());
            assert_eq!(self.write(sector, seed, wd), Some(Ok(())));
            let back = self
                .read(sector, wd)
                .expect("the read ends")
                .expect("the read succeeds");
            assert!(back == pattern(seed, sector, 8, 512), "read back");
        }
    }

    /// A completion fault on the next I/O completion of `kind`.
    fn next_io(opcode: u8, fault: CompletionFault) -> FaultPlan {
        FaultPlan::new().on(Select::io().opcode(opcode).once(), fault)
    }

    /// A direct read the device still has when the controller fails
    /// (CSTS.CFS) on a device that never reports RDY = 0: its owner is not
    /// answered while the device may still write the owner's memory —
    /// only once the driver gives up proving the device stopped (the
    /// watchdog's last act), with the pins kept.
    #[test]
    fn a_failed_direct_command_is_answered_only_after_the_driver_gives_up_on_the_device() {
        use parastor_nvme_driver::clock::Clock;
        let bed = Bed::new(FaultPlan::new());
        let clock = VirtualClock::new();
        let device: Arc<dyn DeviceAccess> = bed.fi.clone();
        let driver = bed
            .drive(NvmeDriver::new(device, config(&clock), clock.clone()))
            .expect("bring-up ends")
            .expect("bring-up succeeds");
        let w = Watched {
            disk: disk(&driver),
            driver,
            bed,
        };
        let mut wd = pin!(w.driver.run_watchdog().fuse());
        w.serves(0, 1, &mut wd);
        w.bed.fi.set_plan(
            FaultPlan::new()
                .on(Select::io().opcode(READ).once(), CompletionFault::Drop)
                .register(offset::CSTS, u64::MAX, 1),
        );
        let at = BUF + (2 << 20);
        let ranges = [GpaRange::new(Gpa::new(at), 8 * 512)];
        let sg = SgList::new(w.bed.memory(), &ranges, true).expect("representable");
        let mut read = pin!(w.disk.read(sg, 0, IoOptions::default()));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(read.as_mut().poll(&mut cx).is_pending());
        assert!(w.bed.rig.memory().pinned_ranges() > 0, "the read is direct");
        let failed_at = clock.now();
        w.bed.fi.raise_cfs();
        let r = w.run(read.as_mut(), &mut wd);
        assert_eq!(r, Some(Err(DEVICE_FAILED)));
        // The driver waited the controller's ready timeout (capped at 2 s
        // here) for RDY = 0 before giving up; the old behaviour answered
        // within one watchdog period.
        let waited = clock.now() - failed_at;
        assert!(
            waited >= Duration::from_secs(2),
            "the read was answered {waited:?} after the failure, before the driver gave up proving the device stopped"
        );
        assert!(wd.is_terminated(), "the watchdog gave up and ended");
        assert!(
            w.bed.rig.memory().pinned_ranges() > 0,
            "the pins of a device that never stopped stay"
        );
    }

    /// The device drops every Abort while two writes time out: the
    /// watchdog must still reach a reset (no unbounded wait for an admin
    /// slot the lost Aborts keep).
    #[test]
    fn lost_aborts_do_not_wedge_the_watchdog() {
        let bed = Bed::new(FaultPlan::new());
        let clock = VirtualClock::new();
        let device: Arc<dyn DeviceAccess> = bed.fi.clone();
        let cfg = DriverConfig {
            admin_queue_size: 2,
            ..config(&clock)
        };
        let driver = bed
            .drive(NvmeDriver::new(device, cfg, clock.clone()))
            .expect("bring-up ends")
            .expect("bring-up succeeds");
        let w = Watched {
            disk: disk(&driver),
            driver,
            bed,
        };
        let mut wd = pin!(w.driver.run_watchdog().fuse());
        w.bed.fi.set_plan(
            FaultPlan::new()
                .on(Select::io().opcode(WRITE).count(2), CompletionFault::Drop)
                .on(
                    Select::admin().opcode(AdminOpcode::ABORT.get()),
                    CompletionFault::Drop,
                ),
        );
        let (a, b) = (BUF, BUF + 0x1000);
        w.bed.put(a, &pattern(1, 0, 8, 512));
        w.bed.put(b, &pattern(2, 8, 8, 512));
        let ra = [GpaRange::new(Gpa::new(a), 4096)];
        let rb = [GpaRange::new(Gpa::new(b), 4096)];
        let sa = SgList::new(w.bed.memory(), &ra, false).expect("representable");
        let sb = SgList::new(w.bed.memory(), &rb, false).expect("representable");
        let both = futures::future::join(
            w.disk.write(sa, 0, IoOptions::default()),
            w.disk.write(sb, 8, IoOptions::default()),
        );
        let r = w.run(both, &mut wd);
        assert!(
            r.is_some(),
            "the writes never end: aborts sent {}, resets {}",
            w.driver.aborts_sent(),
            w.driver.resets()
        );
        assert!(w.driver.resets() >= 1, "the watchdog reset the controller");
    }

    /// A passthrough Read of 16 blocks into a 512-byte buffer: the device
    /// must never be given a data pointer outside the driver's buffer
    /// (PRP2 = 0 would be guest memory at GPA 0 under VFIO).
    #[test]
    fn an_oversized_passthrough_transfer_stays_in_the_drivers_buffer() {
        use parastor_hw::nvme::queue::Sqe;
        use parastor_nvme_driver::{PassthroughData, PassthroughQueue};
        let bed = Bed::new(FaultPlan::new());
        let driver = bed.start();
        let d = disk(&driver);
        bed.round_trip(&d, 0, 16, 9);
        bed.put(0, &[0x5A; 4096]);
        let mut sqe = Sqe::default();
        sqe.cdw0.set_opc(READ);
        sqe.nsid = 1.into();
        sqe.cdw12 = 15.into(); // 16 blocks
        let mut small = vec![0u8; 512];
        let r = bed
            .drive(driver.passthrough(
                PassthroughQueue::Io,
                sqe,
                PassthroughData::FromDevice(&mut small),
            ))
            .expect("the passthrough ends");
        assert!(
            bed.get(0, 4096) == vec![0x5A; 4096],
            "the device wrote the caller's memory at GPA 0 through PRP2 = 0"
        );
        let done = r.expect("the device answers");
        assert_eq!(done.status, 0, "the Read succeeds: {done:?}");
        assert!(
            small == pattern(9, 0, 1, 512),
            "the caller gets the first 512 bytes the device read"
        );
        // A Read the driver knows moves more than the maximum transfer is
        // refused before it reaches the device.
        sqe.cdw12 = 0xFFFF.into();
        let r = bed
            .drive(driver.passthrough(
                PassthroughQueue::Io,
                sqe,
                PassthroughData::FromDevice(&mut small),
            ))
            .expect("the passthrough ends");
        assert!(
            matches!(r, Err(DriverError::Unsupported(_))),
            "a 65536-block Read is refused: {r:?}"
        );
        assert!(bed.get(0, 4096) == vec![0x5A; 4096], "GPA 0 is untouched");
    }

    #[test]
    fn a_dropped_completion_times_out_and_the_controller_comes_back() {
        let w = watched(FaultPlan::new());
        let mut wd = pin!(w.driver.run_watchdog().fuse());
        w.bed.fi.set_plan(next_io(WRITE, CompletionFault::Drop));
        assert_eq!(w.write(0, 1, &mut wd), Some(Err(TIMED_OUT)));
        assert_eq!(w.bed.fi.stats().dropped, 1);
        assert!(w.driver.aborts_sent() >= 1 && w.driver.resets() >= 1);
        w.serves(0, 2, &mut wd);
    }

    #[test]
    fn a_completion_with_the_wrong_phase_times_out_like_a_lost_one() {
        let w = watched(FaultPlan::new());
        let mut wd = pin!(w.driver.run_watchdog().fuse());
        w.bed
            .fi
            .set_plan(next_io(WRITE, CompletionFault::Corrupt(CqeField::Phase)));
        assert_eq!(w.write(0, 1, &mut wd), Some(Err(TIMED_OUT)));
        w.serves(0, 2, &mut wd);
    }

    #[test]
    fn an_interrupt_that_never_comes_does_not_hang_the_command() {
        let w = watched(FaultPlan::new());
        let mut wd = pin!(w.driver.run_watchdog().fuse());
        w.bed
            .fi
            .set_plan(FaultPlan::new().swallow_interrupts(Some(1), 0, u64::MAX));
        let r = w.write(0, 1, &mut wd).expect("the write ends");
        assert!(r == Ok(()) || r == Err(TIMED_OUT), "{r:?}");
        assert!(w.bed.fi.stats().interrupts_swallowed >= 1);
        assert!(!w.driver.is_failed());
    }

    #[test]
    fn delayed_and_reordered_completions_are_only_late() {
        let w = watched(FaultPlan::new());
        let mut wd = pin!(w.driver.run_watchdog().fuse());
        w.bed.fi.set_plan(
            FaultPlan::new()
                .on(Select::io().one_in(2), CompletionFault::Delay(5))
                .on(Select::io(), CompletionFault::Reorder),
        );
        for i in 0..8 {
            w.serves(i * 8, i, &mut wd);
        }
        assert_eq!(w.driver.refused_completions(), 0);
    }

    #[test]
    fn a_duplicated_completion_fails_the_controller() {
        let w = watched(FaultPlan::new());
        let mut wd = pin!(w.driver.run_watchdog().fuse());
        w.bed
            .fi
            .set_plan(next_io(WRITE, CompletionFault::Duplicate));
        let _ = w.write(0, 1, &mut wd).expect("the write ends");
        // The copy is seen by the next look at the queue.
        let _ = w.read(0, &mut wd).expect("the read ends");
        assert_eq!(w.bed.fi.stats().duplicated, 1);
        w.failed_for_good(&mut wd);
    }

    #[test]
    fn a_completion_with_an_unknown_command_id_fails_the_controller() {
        for cid in [0x3FF, 0xFFFF, 0x0400] {
            let w = watched(FaultPlan::new());
            let mut wd = pin!(w.driver.run_watchdog().fuse());
            w.bed
                .fi
                .set_plan(next_io(WRITE, CompletionFault::Corrupt(CqeField::Cid(cid))));
            let r = w.write(0, 1, &mut wd).expect("the write ends");
            assert_eq!(r, Err(DEVICE_FAILED), "CID {cid:#x}");
            w.failed_for_good(&mut wd);
        }
    }

    #[test]
    fn a_completion_naming_another_queue_fails_the_controller() {
        let w = watched(FaultPlan::new());
        let mut wd = pin!(w.driver.run_watchdog().fuse());
        w.bed
            .fi
            .set_plan(next_io(WRITE, CompletionFault::Corrupt(CqeField::SqId(0))));
        assert_eq!(w.write(0, 1, &mut wd), Some(Err(DEVICE_FAILED)));
        w.failed_for_good(&mut wd);
    }

    #[test]
    fn an_sq_head_outside_the_queue_fails_the_controller() {
        for head in [0xFFFF, 256, 4096] {
            let w = watched(FaultPlan::new());
            let mut wd = pin!(w.driver.run_watchdog().fuse());
            w.bed.fi.set_plan(next_io(
                WRITE,
                CompletionFault::Corrupt(CqeField::SqHead(head)),
            ));
            assert_eq!(
                w.write(0, 1, &mut wd),
                Some(Err(DEVICE_FAILED)),
                "SQHD {head}"
            );
            w.failed_for_good(&mut wd);
        }
    }

    #[test]
    fn an_error_status_fails_the_command_not_the_controller() {
        let w = watched(FaultPlan::new());
        let mut wd = pin!(w.driver.run_watchdog().fuse());
        w.bed.fi.set_plan(next_io(
            WRITE,
            CompletionFault::Corrupt(CqeField::Status(0x80)),
        ));
        assert_eq!(w.write(0, 1, &mut wd), Some(Err(DiskError::IllegalBlock)));
        w.serves(0, 2, &mut wd);
    }

    #[test]
    fn cfs_mid_workload_fails_the_controller() {
        let w = watched(FaultPlan::new());
        let mut wd = pin!(w.driver.run_watchdog().fuse());
        w.serves(0, 1, &mut wd);
        w.bed.fi.set_plan(FaultPlan::new().cfs_after(1));
        let _ = w.write(8, 2, &mut wd).expect("the write ends");
        let r = w.read(8, &mut wd).expect("the read ends");
        assert_eq!(r.err(), Some(DEVICE_FAILED));
        assert_eq!(
            w.driver.failure(),
            Some("controller fatal status (CSTS.CFS)")
        );
        w.failed_for_good(&mut wd);
    }

    #[test]
    fn surprise_removal_mid_workload_fails_the_controller() {
        let w = watched(FaultPlan::new());
        let mut wd = pin!(w.driver.run_watchdog().fuse());
        w.serves(0, 1, &mut wd);
        // Removed after the write's completion: the read never completes.
        w.bed.fi.set_plan(FaultPlan::new().removal_after(1));
        assert_eq!(w.write(8, 2, &mut wd), Some(Ok(())));
        let r = w.read(8, &mut wd).expect("the read ends");
        assert_eq!(r.err(), Some(DEVICE_FAILED));
        assert_eq!(
            w.driver.failure(),
            Some("registers read as all ones (surprise removal)")
        );
        w.failed_for_good(&mut wd);
    }

    #[test]
    fn a_lost_admin_completion_at_bring_up_fails_bring_up_cleanly() {
        let bed = Bed::new(FaultPlan::new().on(
            Select::admin().opcode(AdminOpcode::IDENTIFY.get()).once(),
            CompletionFault::Drop,
        ));
        let clock = VirtualClock::new();
        let device: Arc<dyn DeviceAccess> = bed.fi.clone();
        let r = bed
            .drive(NvmeDriver::new(device, config(&clock), clock.clone()))
            .expect("bring-up ends");
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn a_removed_or_failed_device_fails_bring_up_or_the_controller() {
        for plan in [
            FaultPlan::new().removal_after(0),
            FaultPlan::new().cfs_after(0),
            FaultPlan::new().removal_after(3),
            FaultPlan::new().cfs_after(3),
        ] {
            let bed = Bed::new(plan.clone());
            let clock = VirtualClock::new();
            let device: Arc<dyn DeviceAccess> = bed.fi.clone();
            let r = bed
                .drive(NvmeDriver::new(device, config(&clock), clock.clone()))
                .expect("bring-up ends");
            // Before RDY: bring-up fails. Later (CFS is only looked at
            // while waiting for RDY and by the watchdog): the watchdog's
            // first look fails the controller.
            let Ok(driver) = r else { continue };
            let w = Watched {
                disk: disk(&driver),
                driver,
                bed,
            };
            let mut wd = pin!(w.driver.run_watchdog().fuse());
            w.failed_for_good(&mut wd);
            assert!(
                plan.cfs_after.is_some(),
                "a removal during bring-up leaves it hanging: {plan:?}"
            );
        }
    }

    #[test]
    fn the_watchdog_outlives_a_reset_the_host_runs_beside_it() {
        let w: Watched = watched(FaultPlan::new());
        let mut wd = pin!(w.driver.run_watchdog().fuse());
        // The write's completion and the Abort's are lost: the watchdog
        // waits for its Abort when the host resets the controller.
        w.bed.fi.set_plan(
            FaultPlan::new()
                .on(Select::io().opcode(WRITE).once(), CompletionFault::Drop)
                .on(
                    Select::admin().opcode(AdminOpcode::ABORT.get()).once(),
                    CompletionFault::Drop,
                ),
        );
        let driver = &w.driver;
        let host_reset = async {
            while driver.aborts_sent() == 0 {
                futures::pending!();
                std::future::ready(()).await;
            }
            driver.reset().await
        };
        let write = async {
            let data = pattern(1, 0, 8, 512);
            w.bed.put(BUF, &data);
            let ranges = [GpaRange::new(Gpa::new(BUF), data.len() as u64)];
            let sg = SgList::new(w.bed.memory(), &ranges, false).expect("representable");
            w.disk.write(sg, 0, IoOptions::default()).await
        };
        let (written, reset) = w
            .run(futures::future::join(write, host_reset), &mut wd)
            .expect("both end");
        assert!(reset.is_ok(), "{reset:?}");
        assert!(written.is_err(), "{written:?}");
        assert!(!w.driver.is_failed());
        assert!(
            !wd.is_terminated(),
            "the watchdog still watches a running controller"
        );
        // It still times out what the device loses.
        w.bed
            .fi
            .set_plan(FaultPlan::new().on(Select::io().once(), CompletionFault::Drop));
        assert_eq!(
            w.write(8, 2, &mut wd),
            Some(Err(DiskError::Io(IoError::new(
                IoErrorKind::TimedOut,
                CODE_TIMEOUT
            ))))
        );
    }
}
