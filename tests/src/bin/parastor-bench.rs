//! parastor's benchmarks.
//!
//! `parastor-bench NAME...` runs the named benchmarks (`all` = every one;
//! no argument or `--list` lists them). Each prints one line per
//! measurement, ending in `ratio=R` against a reference measured in the
//! same run, so results compare across machines; nothing here asserts on
//! time. Heap allocations are counted with `stats_alloc` as the global
//! allocator and reported per I/O.
//!
//! Timing: each measurement is warmed up, then timed as several batches
//! sized to a few milliseconds each; the median batch's ns/io is reported.

use parastor_core::Gpa;
use parastor_core::{Disk, GpaRange, GuestMemory, IoOptions, RamGuestMemory, SgList};
use parastor_sys::GuestRam;
use parastor_tests::buf::{block_on, pattern, write_vec};
use parastor_tests::stacks::{layer, layered, ram_disk, ram_layer, striped};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// One benchmark: a subcommand.
struct Bench {
    name: &'static str,
    about: &'static str,
    run: fn(),
}

/// Every benchmark, in `all` order. New ones (crypt, storvsp, ...) are
/// added here.
const BENCHES: &[Bench] = &[
    Bench {
        name: "pipeline",
        about: "QD1 per-I/O cost of RAM, layered and striped stacks, vs the raw RAM disk and memcpy",
        run: pipeline::run,
    },
    Bench {
        name: "crypt",
        about: "XTS-AES-256 GB/s: raw cipher loop and the crypt decorator, vs `openssl speed` and memcpy",
        run: crypt::run,
    },
    Bench {
        name: "storvsp",
        about: "4 KiB random QD1/QD32 and 128 KiB sequential I/O from an emulated StorVSC through StorVSP to a RAM disk, vs the RAM disk alone",
        run: storvsp::run,
    },
    Bench {
        name: "nvme",
        about: "4 KiB random QD1/QD32 and 128 KiB sequential I/O from parastor's NVMe driver through the in-process backing and NVMe controller to a RAM disk, PRP and SGL, vs the RAM disk alone",
        run: nvme::run,
    },
    Bench {
        name: "nvme-driver",
        about: "NvmeDisk -> driver -> emulated device -> NVMe controller -> RAM disk: 4 KiB random QD1/QD32 and 128 KiB sequential, direct and bounced, and crypt+striped over two namespaces, vs the RAM disk alone and OpenVMM",
        run: nvme::run_driver,
    },
    Bench {
        name: "settings",
        about: "decode + validate a maximal VTL2 settings blob: JSON and protobuf vs postcard",
        run: settings::run,
    },
    Bench {
        name: "tcmu",
        about: "4 KiB reads through the TCMU handler and the model of the kernel's ring: ring alone, handler part, serve at QD1/QD32, vs memcpy",
        run: tcmu::run,
    },
];

fn usage() {
    eprintln!("usage: parastor-bench NAME... | all | --list\n\nbenchmarks:");
    for b in BENCHES {
        eprintln!("  {:<10} {}", b.name, b.about);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty()
        || args
            .iter()
            .any(|a| a == "--list" || a == "-h" || a == "--help")
    {
        usage();
        return if args.is_empty() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let mut selected = Vec::new();
    for arg in &args {
        if arg == "all" {
            selected.extend(BENCHES.iter());
        } else if let Some(b) = BENCHES.iter().find(|b| b.name == arg) {
            selected.push(b);
        } else {
            eprintln!("parastor-bench: unknown benchmark `{arg}`");
            usage();
            return ExitCode::FAILURE;
        }
    }
    for b in selected {
        (b.run)();
    }
    ExitCode::SUCCESS
}

/// Measurement machinery shared by every benchmark.
mod harness {
    use super::*;

    /// One `Disk::write` (if `write`) or `Disk::read` of `sg` at `sector`,
    /// run to completion.
    pub(crate) fn disk_io(
        disk: &Disk,
        sg: SgList<'_>,
        sector: u64,
        write: bool,
    ) -> Result<(), parastor_core::DiskError> {
        if write {
            block_on(disk.write(sg, sector, IoOptions::default()))
        } else {
            block_on(disk.read(sg, sector, IoOptions::default()))
        }
    }

    /// What one measurement found.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Measurement {
        /// Median nanoseconds per operation.
        pub(crate) ns_per_op: f64,
        /// Heap allocations per operation over all timed batches.
        pub(crate) allocs_per_op: f64,
    }

    /// One thing to measure: `op(i)` runs operation number `i`.
    pub(crate) struct Case<'a> {
        /// Name for the report.
        pub(crate) name: &'static str,
        /// The operation; panics if it fails.
        pub(crate) op: Box<dyn FnMut(u64) + 'a>,
    }

    /// Rounds; each round times every case once, so load that comes and
    /// goes during a run affects all cases (and their reference) alike.
    /// `PARASTOR_BENCH_ROUNDS` sets more, for profiling.
    fn rounds() -> usize {
        std::env::var("PARASTOR_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5)
    }
    /// Timed batches per case per round.
    const BATCHES: usize = 5;
    /// Target duration of one batch.
    const BATCH_NS: f64 = 3e6;

    /// Runs `op` until a batch takes a quarter of `BATCH_NS`; returns the
    /// batch size for `BATCH_NS` and the next operation index.
    fn calibrate(op: &mut dyn FnMut(u64)) -> (u64, u64) {
        let mut i = 0u64;
        let mut batch = 16u64;
        loop {
            let t = Instant::now();
            for _ in 0..batch {
                op(i);
                i += 1;
            }
            let ns = t.elapsed().as_nanos() as f64;
            if ns > BATCH_NS / 4.0 {
                return (((batch as f64) * BATCH_NS / ns).ceil().max(1.0) as u64, i);
            }
            batch *= 4;
        }
    }

    /// Measures every case: warm-up and calibration, then interleaved
    /// rounds of timed batches; reports the median batch of each case.
    pub(crate) fn measure(cases: &mut [Case<'_>]) -> Vec<Measurement> {
        let mut state: Vec<(u64, u64, Vec<f64>, u64)> = cases
            .iter_mut()
            .map(|c| {
                let (batch, next) = calibrate(&mut *c.op);
                (batch, next, Vec::new(), 0)
            })
            .collect();
        for _ in 0..rounds() {
            for (case, (batch, next, samples, allocs)) in cases.iter_mut().zip(&mut state) {
                let region = Region::new(GLOBAL);
                for _ in 0..BATCHES {
                    let t = Instant::now();
                    for _ in 0..*batch {
                        (case.op)(*next);
                        *next += 1;
                    }
                    samples.push(t.elapsed().as_nanos() as f64 / *batch as f64);
                }
                *allocs += region.change().allocations as u64;
            }
        }
        state
            .into_iter()
            .map(|(batch, _, mut samples, allocs)| {
                samples.sort_by(f64::total_cmp);
                Measurement {
                    ns_per_op: samples[samples.len() / 2],
                    allocs_per_op: allocs as f64 / (samples.len() as u64 * batch) as f64,
                }
            })
            .collect()
    }

    /// `4KiB`, `128KiB`, ...
    pub(crate) fn size_name(bytes: usize) -> String {
        if bytes.is_multiple_of(1 << 20) {
            format!("{}MiB", bytes >> 20)
        } else if bytes.is_multiple_of(1024) {
            format!("{}KiB", bytes >> 10)
        } else {
            format!("{bytes}B")
        }
    }

    /// Prints one result line.
    pub(crate) fn report(
        bench: &str,
        op: &str,
        bytes: usize,
        path: &str,
        m: Measurement,
        reference: f64,
    ) {
        let gbps = bytes as f64 / m.ns_per_op;
        println!(
            "{bench} {op} {} {path:<30} {:>9.0} ns/io {:>7.2} GB/s  allocs/io={:.2}  ratio={:.2}",
            size_name(bytes),
            m.ns_per_op,
            gbps,
            m.allocs_per_op,
            m.ns_per_op / reference,
        );
    }
    /// Writes the test pattern over the first `bytes` of `d` (whole MiBs),
    /// so reads copy real data.
    pub(crate) fn prefill_bytes(d: &Disk, bytes: u64, sector_size: u32) {
        let chunk = 1u64 << 20;
        let ss = u64::from(sector_size);
        for off in (0..bytes).step_by(chunk as usize) {
            write_vec(d, off / ss, &pattern(1, off / ss, chunk / ss, sector_size))
                .expect("prefill");
        }
    }

    /// The address pattern of one measurement.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Pattern {
        /// Uniformly random I/O-aligned offsets over the working set.
        Random,
        /// Consecutive I/Os, wrapping at the end of the working set.
        Sequential,
    }

    impl Pattern {
        /// The pattern's name in a report line.
        pub(crate) fn name(self) -> &'static str {
            match self {
                Self::Random => "rand",
                Self::Sequential => "seq",
            }
        }
    }

    /// What the disk holds.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Fill {
        /// Every sector written before the run: reads copy real data.
        Prefilled,
        /// Never written: reads are zero fills, as in OpenVMM's
        /// measurements (the rows compared with it).
        Unwritten,
    }

    impl Fill {
        /// What a report line appends for this fill.
        pub(crate) fn suffix(self) -> &'static str {
            match self {
                Self::Prefilled => "",
                Self::Unwritten => " unwritten",
            }
        }
    }

    /// One row of a transport benchmark (StorVSP, NVMe).
    pub(crate) struct Row {
        pub(crate) op: &'static str,
        pub(crate) bytes: usize,
        pub(crate) pattern: Pattern,
        pub(crate) qd: usize,
        pub(crate) fill: Fill,
    }

    /// A [`Row`].
    pub(crate) const fn row(
        op: &'static str,
        bytes: usize,
        pattern: Pattern,
        qd: usize,
        fill: Fill,
    ) -> Row {
        Row {
            op,
            bytes,
            pattern,
            qd,
            fill,
        }
    }

    /// The sectors the I/Os of one measurement go to: the same sequence
    /// for every path measured.
    pub(crate) struct Addresses {
        pattern: Pattern,
        io_sectors: u64,
        slots: u64,
        rng: fastrand::Rng,
        next: u64,
    }

    impl Addresses {
        /// I/Os of `bytes` on `sector_size`-byte sectors over the first
        /// `working_set` bytes.
        pub(crate) fn new(
            pattern: Pattern,
            bytes: usize,
            sector_size: u32,
            working_set: u64,
        ) -> Self {
            Self {
                pattern,
                io_sectors: bytes as u64 / u64::from(sector_size),
                slots: working_set / bytes as u64,
                rng: fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15),
                next: 0,
            }
        }

        /// The first sector of the next I/O.
        pub(crate) fn next(&mut self) -> u64 {
            let slot = match self.pattern {
                Pattern::Random => self.rng.u64(..self.slots),
                Pattern::Sequential => {
                    self.next = self.next.wrapping_add(1);
                    self.next % self.slots
                }
            };
            slot * self.io_sectors
        }
    }
}

/// `pipeline`: the cost the disk pipeline adds to an I/O.
mod pipeline {
    use super::harness::{Case, disk_io, measure, report};
    use super::*;

    const SS: u32 = 512;
    /// Bytes the I/Os cycle over (each path is prefilled over it).
    const WORKING_SET: u64 = 8 << 20;
    /// Disk size.
    const DISK_BYTES: u64 = 16 << 20;
    const SIZES: [usize; 2] = [4096, 128 * 1024];

    fn sectors(bytes: u64) -> u64 {
        bytes / u64::from(SS)
    }

    fn prefill(d: &Disk) {
        let chunk = 1 << 20;
        for off in (0..WORKING_SET).step_by(chunk) {
            let s = sectors(off);
            write_vec(d, s, &pattern(1, s, sectors(chunk as u64), SS)).expect("prefill");
        }
    }

    /// The stacks under test, each prefilled over the working set:
    /// (name, disk, whether writes make sense on it).
    fn paths() -> Vec<(&'static str, Disk, bool)> {
        let raw = ram_disk(sectors(DISK_BYTES), SS);
        prefill(&raw);
        let present = layered(
            false,
            vec![
                ram_layer(false, false),
                layer(ram_disk(sectors(DISK_BYTES), SS), false, false),
            ],
        );
        prefill(&present);
        let bottom = ram_disk(sectors(DISK_BYTES), SS);
        prefill(&bottom);
        let fall_through = layered(
            false,
            vec![ram_layer(false, false), layer(bottom, false, false)],
        );
        let members = (0..4)
            .map(|_| ram_disk(sectors(DISK_BYTES / 4), SS))
            .collect();
        let striped = striped(members, Some(128 * 1024), None);
        prefill(&striped);
        vec![
            ("raw-ram", raw, true),
            ("layered-present", present, true),
            // A write would land in the top layer and end the fall-through.
            ("layered-fallthrough", fall_through, false),
            ("striped-4x128K", striped, true),
        ]
    }

    pub(crate) fn run() {
        let paths = paths();
        // Guest memory as the service has it (a mapped memory file), and
        // the locked heap memory of the unit tests for one comparison row.
        let mem = GuestRam::memfd("parastor-bench-pipeline", 256 * 1024).expect("guest memory");
        let locked = RamGuestMemory::new(256 * 1024);
        for m in [&mem as &dyn GuestMemory, &locked] {
            m.fill_at(Gpa::new(0), 256 * 1024, 0x5a)
                .expect("guest memory");
        }
        for write in [false, true] {
            let op = if write { "write" } else { "read" };
            for &bytes in &SIZES {
                let ranges = [GpaRange::new(Gpa::new(0), bytes as u64)];
                let io_sectors = sectors(bytes as u64);
                let slots = sectors(WORKING_SET) / io_sectors;
                let mut cases = Vec::new();
                for (name, disk, writable) in &paths {
                    if write && !*writable {
                        continue;
                    }
                    let (mem, ranges) = (&mem, &ranges);
                    cases.push(Case {
                        name,
                        op: Box::new(move |i| {
                            let sector = (i % slots) * io_sectors;
                            let sg = SgList::new(mem, ranges, !write).expect("ranges");
                            disk_io(disk, sg, sector, write).expect("benchmark I/O failed");
                        }),
                    });
                }
                // The first path again with the locked test memory as guest
                // memory: what the mapped memory saves.
                if let Some((_, disk, _)) = paths.first() {
                    let (locked, ranges) = (&locked, &ranges);
                    cases.push(Case {
                        name: "raw-ram(locked-guest-mem)",
                        op: Box::new(move |i| {
                            let sector = (i % slots) * io_sectors;
                            let sg = SgList::new(locked, ranges, !write).expect("ranges");
                            disk_io(disk, sg, sector, write).expect("benchmark I/O failed");
                        }),
                    });
                }
                // The floor: the same copy with memcpy over the same working
                // set, between plain host buffers.
                let mut store = vec![0x33u8; WORKING_SET as usize];
                let mut buf = vec![0x5au8; bytes];
                cases.push(Case {
                    name: "memcpy(ratio-vs-raw-ram)",
                    op: Box::new(move |i| {
                        let off = ((i % slots) * io_sectors * u64::from(SS)) as usize;
                        if write {
                            store[off..off + bytes].copy_from_slice(black_box(&buf));
                        } else {
                            buf.copy_from_slice(black_box(&store[off..off + bytes]));
                        }
                        black_box((&store, &buf));
                    }),
                });
                let results = measure(&mut cases);
                // `paths()` puts the raw RAM disk first.
                let reference = results[0].ns_per_op;
                for (case, m) in cases.iter().zip(results) {
                    report("pipeline", op, bytes, case.name, m, reference);
                }
            }
        }
    }
}

/// `crypt`: XTS-AES-256 throughput against OpenSSL's, measured in the same
/// run.
mod crypt {
    use super::harness::{Case, Measurement, measure, size_name};
    use super::*;
    use parastor_core::crypt::{CryptDisk, Xts256};
    use std::process::Command;

    /// Bytes per timed operation of the raw loop and the decorator (a 64 KiB
    /// request: many sectors per cipher call, as the decorator does it).
    const IO_BYTES: usize = 64 * 1024;
    /// Bytes the operations cycle over.
    const WORKING_SET: usize = 8 << 20;

    fn key() -> Vec<u8> {
        (0..64u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect()
    }

    /// `openssl speed -evp aes-256-xts` bytes/s for `bytes`-byte calls, or
    /// why it could not be measured.
    fn openssl(bytes: usize, decrypt: bool) -> Result<f64, String> {
        let mut cmd = Command::new("openssl");
        cmd.args([
            "speed",
            "-mr",
            "-seconds",
            "2",
            "-bytes",
            &bytes.to_string(),
        ]);
        if decrypt {
            cmd.arg("-decrypt");
        }
        cmd.args(["-evp", "aes-256-xts"]);
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run openssl: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // Machine-readable result: `+F:<n>:AES-256-XTS:<bytes per second>`.
        text.lines()
            .filter_map(|l| l.strip_prefix("+F:"))
            .filter_map(|l| l.rsplit(':').next()?.parse::<f64>().ok())
            .next()
            .ok_or_else(|| format!("no +F line in openssl speed output: {text}"))
    }

    fn line(op: &str, ss: usize, path: &str, gbps: f64, allocs: Option<f64>, reference: f64) {
        let allocs = allocs.map_or(String::new(), |a| format!("  allocs/io={a:.2}"));
        println!(
            "crypt {op} {}-sectors {path:<28} {gbps:>7.2} GB/s{allocs}  ratio={:.2}",
            size_name(ss),
            gbps / reference
        );
    }

    fn gbps(bytes: usize, m: Measurement) -> f64 {
        bytes as f64 / m.ns_per_op
    }

    pub(crate) fn run() {
        println!(
            "crypt: ratio = GB/s of the path / GB/s of `openssl speed -evp aes-256-xts` (higher is better)"
        );
        let key = key();
        let xts = Xts256::new(&key).expect("valid key");
        let slots = (WORKING_SET / IO_BYTES) as u64;
        for ss in [512usize, 4096] {
            let sectors_per_io = (IO_BYTES / ss) as u64;
            for decrypt in [false, true] {
                let op = if decrypt { "decrypt" } else { "encrypt" };
                let reference = match openssl(ss, decrypt) {
                    Ok(bps) => bps / 1e9,
                    Err(e) => {
                        eprintln!("crypt: skipping {op} at {ss}-byte sectors: {e}");
                        continue;
                    }
                };
                line(op, ss, "openssl-speed", reference, None, reference);

                // The decorator over a RAM disk: a write encrypts, a read
                // decrypts; both include the RAM disk's copy.
                let ram = parastor_tests::stacks::ram_disk((WORKING_SET / ss) as u64, ss as u32);
                let disk = Disk::new(CryptDisk::new(&key, ram).expect("key")).expect("disk");
                let fill = vec![0x11u8; WORKING_SET];
                write_vec(&disk, 0, &fill).expect("prefill");
                let mem = RamGuestMemory::new(IO_BYTES as u64);
                mem.fill_at(Gpa::new(0), IO_BYTES, 0x77)
                    .expect("guest memory");
                let ranges = [GpaRange::new(Gpa::new(0), IO_BYTES as u64)];
                let (disk_ref, mem_ref, ranges_ref) = (&disk, &mem, &ranges);
                // The raw cipher loop, one sector per call: what `openssl
                // speed` times (one data unit per EVP call).
                let mut one = vec![0x5au8; WORKING_SET];
                let one_slots = (WORKING_SET / ss) as u64;
                let xts_one = &xts;
                let one_sector = Case {
                    name: "raw-xts-1-sector-per-call",
                    op: Box::new(move |i| {
                        let slot = (i % one_slots) as usize;
                        let buf = &mut one[slot * ss..(slot + 1) * ss];
                        let r = if decrypt {
                            xts_one.decrypt_sectors(buf, i, ss)
                        } else {
                            xts_one.encrypt_sectors(buf, i, ss)
                        };
                        r.expect("cipher");
                        black_box(&buf);
                    }),
                };
                // The raw cipher loop over host memory, in place.
                let mut data = vec![0x5au8; WORKING_SET];
                let xts = &xts;
                let mut raw_case = vec![Case {
                    name: "raw-xts-loop",
                    op: Box::new(move |i| {
                        let slot = (i % slots) as usize;
                        let buf = &mut data[slot * IO_BYTES..(slot + 1) * IO_BYTES];
                        let lba = i * sectors_per_io;
                        let r = if decrypt {
                            xts.decrypt_sectors(buf, lba, ss)
                        } else {
                            xts.encrypt_sectors(buf, lba, ss)
                        };
                        r.expect("cipher");
                        black_box(&buf);
                    }),
                }];
                raw_case.push(Case {
                    name: "crypt-over-ram",
                    op: Box::new(move |i| {
                        let sector = (i % slots) * sectors_per_io;
                        let sg = SgList::new(mem_ref, ranges_ref, decrypt).expect("ranges");
                        let r = if decrypt {
                            block_on(disk_ref.read(sg, sector, IoOptions::default()))
                        } else {
                            block_on(disk_ref.write(sg, sector, IoOptions::default()))
                        };
                        r.expect("crypt I/O");
                    }),
                });
                // The floor: memcpy of the same sizes.
                let src = vec![0x22u8; WORKING_SET];
                let mut dst = vec![0u8; IO_BYTES];
                raw_case.push(Case {
                    name: "memcpy",
                    op: Box::new(move |i| {
                        let slot = (i % slots) as usize;
                        dst.copy_from_slice(black_box(
                            &src[slot * IO_BYTES..(slot + 1) * IO_BYTES],
                        ));
                        black_box(&dst);
                    }),
                });
                raw_case.push(one_sector);
                let results = measure(&mut raw_case);
                for (case, m) in raw_case.iter().zip(results) {
                    let allocs = (case.name == "crypt-over-ram").then_some(m.allocs_per_op);
                    let bytes = if case.name == "raw-xts-1-sector-per-call" {
                        ss
                    } else {
                        IO_BYTES
                    };
                    line(op, ss, case.name, gbps(bytes, m), allocs, reference);
                }
            }
        }
    }
}

/// `settings`: decoding and validating the largest settings document the
/// rules allow, in each encoding the host or parastor may use.
mod settings {
    use super::harness::{Case, measure};
    use super::*;
    use parastor_vtl2_settings::model::{
        Backing, Child, ChildAddress, Controller, DiskParams, FixedSettings, Identity, Nic,
        PhysicalDevice, PhysicalDeviceKind, Protocol, Settings, defaults,
    };
    use parastor_vtl2_settings::{Guid, json_out, postcard, protobuf_out, wire};

    /// Stripe members per striped backing.
    const STRIPE_MEMBERS: u32 = 4;
    /// NVMe controllers; the rules set no limit on them or on namespaces,
    /// so the document carries 4 × 64 = 256 namespaces.
    const NVME_CONTROLLERS: u32 = 4;
    /// Namespaces per NVMe controller.
    const NVME_NAMESPACES: u32 = 64;

    /// A distinct GUID per `(kind, a, b)`.
    fn guid(kind: u16, a: u32, b: u32) -> Guid {
        Guid::new(
            0x5053_0000 | a,
            kind,
            b as u16,
            [0x80, kind as u8, a as u8, b as u8, 0x12, 0x34, 0x56, 0x78],
        )
    }

    /// Every identity string at its longest allowed length.
    fn identity(c: u32, n: u32) -> Identity {
        Identity {
            device_id: Some(guid(2, c, n)),
            vendor_id: "V".repeat(defaults::VENDOR_ID_MAX_LEN),
            product_id: "P".repeat(defaults::PRODUCT_ID_MAX_LEN),
            product_revision_level: "R".repeat(defaults::PRODUCT_REVISION_MAX_LEN),
            serial_number: format!("SERIAL-{c:04}-{n:04}-0123456789"),
            model_number: format!("MODEL-{c:04}-{n:04}-parastor-bench"),
        }
    }

    /// Every disk parameter set.
    fn params() -> DiskParams {
        DiskParams {
            fua: Some(true),
            write_cache: Some(false),
            odx: Some(true),
            unmap: false,
            medium_rotation_rate: 7200,
            physical_sector_size: Some(4096),
            max_transfer_length: Some(1 << 20),
            size_override: Some(1 << 40),
        }
    }

    /// A striped backing of `STRIPE_MEMBERS` devices, distinct per child.
    fn striped(c: u32, n: u32) -> Backing {
        Backing::Striped {
            devices: (0..STRIPE_MEMBERS)
                .map(|m| PhysicalDevice {
                    kind: if m % 2 == 0 {
                        PhysicalDeviceKind::Nvme
                    } else {
                        PhysicalDeviceKind::Vscsi
                    },
                    instance_id: guid(3, c, m),
                    sub_device: n + 1,
                })
                .collect(),
            chunk_size_kb: 128,
        }
    }

    fn child(c: u32, n: u32, address: ChildAddress) -> Child {
        Child {
            address,
            identity: identity(c, n),
            params: params(),
            is_dvd: false,
            backing: striped(c, n),
            ntfs_guid: Some(guid(4, c, n)),
        }
    }

    /// 4 SCSI controllers × 64 LUNs, one IDE controller with all 4 slots,
    /// NVMe controllers with 256 namespaces; every child striped over
    /// `STRIPE_MEMBERS` devices with every optional field set.
    fn maximal() -> Settings {
        let mut controllers = Vec::new();
        let mut next = 0u32;
        for _ in 0..defaults::MAX_SCSI_CONTROLLERS {
            let c = next;
            next += 1;
            controllers.push(Controller {
                instance_id: guid(1, c, 0),
                protocol: Protocol::Scsi,
                io_queue_depth: Some(256),
                children: (0..defaults::SCSI_LUN_COUNT)
                    .map(|lun| child(c, lun, ChildAddress::ScsiLun(lun as u8)))
                    .collect(),
            });
        }
        for _ in 0..defaults::MAX_IDE_CONTROLLERS {
            let c = next;
            next += 1;
            let mut children = Vec::new();
            for channel in 0..defaults::IDE_CHANNELS {
                for drive in 0..defaults::IDE_DRIVES_PER_CHANNEL {
                    let n = channel * defaults::IDE_DRIVES_PER_CHANNEL + drive;
                    let address = ChildAddress::Ide {
                        channel: channel as u8,
                        drive: drive as u8,
                    };
                    children.push(child(c, n, address));
                }
            }
            controllers.push(Controller {
                instance_id: guid(1, c, 0),
                protocol: Protocol::Ide,
                io_queue_depth: Some(64),
                children,
            });
        }
        for _ in 0..NVME_CONTROLLERS {
            let c = next;
            next += 1;
            controllers.push(Controller {
                instance_id: guid(1, c, 0),
                protocol: Protocol::Nvme,
                io_queue_depth: Some(1024),
                children: (1..=NVME_NAMESPACES)
                    .map(|nsid| child(c, nsid, ChildAddress::NvmeNsid(nsid)))
                    .collect(),
            });
        }
        Settings {
            fixed: FixedSettings {
                scsi_sub_channels: 16,
                io_ring_size: 1024,
                max_bounce_buffer_pages: 4096,
            },
            controllers,
            nics: (0..4)
                .map(|i| Nic {
                    instance_id: guid(5, i, 0),
                    subordinate_instance_id: Some(guid(6, i, 0)),
                    max_sub_channels: Some(8),
                })
                .collect(),
        }
    }

    pub(crate) fn run() {
        let settings = maximal();
        let base = wire::base_from_model(&settings);
        let blobs: Vec<(&'static str, Vec<u8>)> = vec![
            ("postcard", postcard::encode(&settings)),
            ("json", json_out::to_json(&base).into_bytes()),
            ("protobuf", protobuf_out::to_protobuf(&base)),
        ];
        let children: usize = settings.controllers.iter().map(|c| c.children.len()).sum();
        println!(
            "settings: maximal document, {} controllers, {children} children striped over {STRIPE_MEMBERS} devices each; \
             ratio = decode+validate time / postcard's (lower is better); \
             stats_alloc has no peak: alloc'd = total bytes allocated per decode (≥ peak), \
             kept = bytes still held by the result (≤ peak)",
            settings.controllers.len()
        );
        // Each blob must read back to the document it was written from.
        let mut memory = Vec::new();
        for (name, blob) in &blobs {
            let region = Region::new(GLOBAL);
            let read = parastor_vtl2_settings::read(blob);
            let stats = region.change();
            match &read {
                Ok(s) => assert!(*s == settings, "{name}: blob reads back differently"),
                Err(e) => panic!("{name}: the maximal blob is rejected: {e}"),
            }
            drop(read);
            let kept = stats
                .bytes_allocated
                .saturating_sub(stats.bytes_deallocated);
            memory.push((stats.allocations, stats.bytes_allocated, kept));
        }
        let mut cases: Vec<Case<'_>> = blobs
            .iter()
            .map(|(name, blob)| Case {
                name,
                op: Box::new(move |_| {
                    let s = parastor_vtl2_settings::read(black_box(blob)).expect("valid blob");
                    black_box(s);
                }),
            })
            .collect();
        let results = measure(&mut cases);
        // `blobs` puts postcard first.
        let reference = results[0].ns_per_op;
        for (((name, blob), m), (allocs, total, kept)) in blobs.iter().zip(&results).zip(memory) {
            println!(
                "settings read {name:<9} {:>8} B {:>10.1} us/decode  allocs={allocs:<6} alloc'd={:.1}KiB kept={:.1}KiB  ratio={:.2}",
                blob.len(),
                m.ns_per_op / 1e3,
                total as f64 / 1024.0,
                kept as f64 / 1024.0,
                m.ns_per_op / reference,
            );
        }
    }
}

/// `storvsp`: the whole StorVSP path — the emulated StorVSC of
/// `parastor-emulated` (as current Linux drives it) writing `EXECUTE_SRB`
/// packets into a real VMBus ring, the StorVSP channel worker, the SCSI
/// disk adapter and a RAM disk (prefilled, or never written for the rows
/// set up as OpenVMM measured) — against the RAM disk alone doing the same
/// I/O through `Disk::read` / `Disk::write`.
///
/// The timed rows use the guest's lean path ([`Storvsc::submit`](parastor_emulated::Storvsc::submit) /
/// [`flush`](parastor_emulated::Storvsc::flush) / [`reap`](parastor_emulated::Storvsc::reap)): packets built on the stack,
/// one publish per batch, no allocation, data buffers not touched (as a
/// real driver would not). The driver's test API ([`Storvsc::srb`](parastor_emulated::Storvsc::srb): data
/// copied in and out, per-request bookkeeping) is timed too (QD1 4 KiB),
/// for comparison.
mod storvsp {
    use super::harness::{
        Addresses, Case, Fill, Measurement, Pattern, Row, disk_io, measure, prefill_bytes, row,
        size_name,
    };
    use super::*;
    use parastor_emulated::storvsc::{Data, Direction, Host, Progress, ReplyRef, Srb, Storvsc};
    use parastor_emulated::{
        GuestConfig, InlineHost, Profile, RuntimeHost, StorvspVm, VmConfig, VmMemory,
    };
    use parastor_hw::scsi::{ScsiOp, ScsiStatus};
    use parastor_hw::storvsp::{NtStatus, ScsiRequest, SrbStatus, Version};
    use parastor_scsi::{DiskParams, ScsiDisk};
    use parastor_storvsp::{Controller, ControllerConfig, ScsiPath};
    use std::sync::Arc;

    const SS: u32 = 512;
    /// Bytes the I/Os cycle over (prefilled).
    const WORKING_SET: u64 = 8 << 20;
    /// Disk size.
    const DISK_BYTES: u64 = 16 << 20;
    /// The VM: one channel of 64 KiB rings, then data buffers.
    const VM: VmConfig = VmConfig {
        memory_bytes: 8 << 20,
        request_ring: 0x10000,
        completion_ring: 0x10000,
        channels: 1,
        memory: VmMemory::Mapped,
    };
    /// Deepest queue measured.
    const MAX_QD: usize = 32;
    /// The guest: current Linux, which settles on Blue with StorVSP.
    const GUEST: GuestConfig = GuestConfig::new(Profile::LinuxCurrent).queue_depth(MAX_QD as u16);
    /// OpenVMM's StorVSC → StorVSP → SCSI disk → never-written RAM disk,
    /// 4 KiB reads at batch 1, 16 and 32 (reference/openvmm-perf.md).
    const OPENVMM_NS: [(usize, f64); 3] = [(1, 897.0), (16, 479.0), (32, 426.0)];

    type Guest<'a> = Storvsc<'a, InlineHost<'a>>;

    /// A VM with one SCSI controller and `disk` at LUN 0, its guest memory
    /// made of `memory`.
    fn vm(disk: &Disk, memory: VmMemory) -> StorvspVm {
        let controller = Arc::new(Controller::new(ControllerConfig::default()));
        controller
            .attach(
                ScsiPath::new(0, 0, 0),
                Arc::new(ScsiDisk::new(disk.clone(), DiskParams::default())),
            )
            .expect("attach");
        let vm = StorvspVm::new(controller, VmConfig { memory, ..VM });
        let data = vm.data_area();
        vm.memory()
            .fill_at(data.gpa, data.len as usize, 0x5a)
            .expect("guest memory");
        vm
    }

    /// For the lean-path rows only (`qd` > 0): the VM again over the
    /// locked test memory ([`VmMemory::Locked`]).
    fn vm_locked(disk: &Disk, qd: usize) -> Option<StorvspVm> {
        (qd > 0).then(|| vm(disk, VmMemory::Locked))
    }

    /// For the cross-thread rows only (4 KiB random, QD1 and QD32 over
    /// the prefilled disk): a VM of its own whose StorVSP worker runs on
    /// a `parastor-runtime` thread ([`RuntimeHost`], one thread pinned to
    /// one CPU), the guest staying on the bench thread.
    fn vm_cross_thread(disk: &Disk, row: &Row) -> Option<(StorvspVm, RuntimeHost)> {
        let wanted = row.bytes == 4096
            && matches!(row.pattern, Pattern::Random)
            && row.fill == Fill::Prefilled
            && (row.qd == 1 || row.qd == MAX_QD);
        wanted.then(|| {
            let vm = vm(disk, VmMemory::Mapped);
            let host = RuntimeHost::start(&vm).expect("runtime thread for the StorVSP worker");
            (vm, host)
        })
    }

    /// The timed lean path on `vm`, its workers in this thread: `qd`
    /// requests kept outstanding, each op reaps them all and resubmits.
    fn lean<'a>(name: &'static str, vm: &'a StorvspVm, row: &Row, qd: usize) -> Case<'a> {
        lean_on(
            name,
            vm,
            negotiated(vm.guest(GUEST).expect("guest")),
            row,
            qd,
        )
    }

    /// The timed lean path of guest `g` on `vm`, whatever its host.
    fn lean_on<'a, H: Host<'a> + 'a>(
        name: &'static str,
        vm: &'a StorvspVm,
        mut g: Storvsc<'a, H>,
        row: &Row,
        qd: usize,
    ) -> Case<'a> {
        let (write, bytes) = (row.op == "write", row.bytes);
        let request = template(&g, write, bytes);
        let mut addr = Addresses::new(row.pattern, bytes, SS, WORKING_SET);
        // Prime the queue: `qd` requests outstanding between ops.
        for slot in 0..qd {
            submit(&mut g, &request, slot, addr.next(), buffer(vm, slot, bytes));
        }
        g.flush().expect("flush");
        Case {
            name,
            op: Box::new(move |_| {
                let mut progress = g.run_host().expect("service");
                let mut done = [0u16; MAX_QD];
                let mut n = 0;
                let mut waits = 0u32;
                loop {
                    let got = g
                        .reap(|tag, r| {
                            check(r, bytes);
                            if let Some(d) = done.get_mut(n) {
                                *d = tag;
                            }
                            n += 1;
                        })
                        .expect("completions");
                    if n >= qd {
                        break;
                    }
                    // An in-thread host has run every request already; a
                    // host on another thread may still be completing them.
                    // Wait only after a reap found nothing (its publish
                    // lets the host's next completion signal us).
                    assert!(
                        progress == Progress::Elsewhere && waits < 1000,
                        "every outstanding request completes ({n} of {qd})"
                    );
                    if got == 0 {
                        progress = g.run_host().expect("service");
                        waits += 1;
                    }
                }
                assert_eq!(n, qd, "every outstanding request completes once");
                for &slot in &done[..n] {
                    let slot = usize::from(slot);
                    submit(&mut g, &request, slot, addr.next(), buffer(vm, slot, bytes));
                }
                // One publish (and at most one signal) per batch.
                g.flush().expect("flush");
            }),
        }
    }

    /// The negotiated guest, served in this thread.
    fn connect(vm: &StorvspVm) -> Guest<'_> {
        negotiated(vm.guest(GUEST).expect("guest"))
    }

    /// `g`, negotiated.
    fn negotiated<'a, H: Host<'a>>(mut g: Storvsc<'a, H>) -> Storvsc<'a, H> {
        g.negotiate().expect("negotiation");
        assert_eq!(g.version(), Some(Version::BLUE));
        g
    }

    /// Slot `slot`'s data buffer: page aligned, one per queue slot.
    fn buffer(vm: &StorvspVm, slot: usize, bytes: usize) -> GpaRange {
        GpaRange::new(vm.data_area().gpa + (slot * bytes) as u64, bytes as u64)
    }

    /// A READ(10) / WRITE(10) of `bytes`, LBA to be set per request.
    fn template<'a, H: Host<'a>>(g: &Storvsc<'a, H>, write: bool, bytes: usize) -> ScsiRequest {
        let mut cdb = [0u8; 10];
        cdb[0] = if write {
            ScsiOp::WRITE10.get()
        } else {
            ScsiOp::READ10.get()
        };
        cdb[7..9].copy_from_slice(&((bytes as u32 / SS) as u16).to_be_bytes());
        let dir = if write { Direction::Out } else { Direction::In };
        g.scsi_request(0, &cdb, dir, bytes as u32)
    }

    /// Queues `request` at `lba` as tag `slot`.
    fn submit<'a, H: Host<'a>>(
        g: &mut Storvsc<'a, H>,
        request: &ScsiRequest,
        slot: usize,
        lba: u64,
        buf: GpaRange,
    ) {
        let mut r = *request;
        r.payload[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
        g.submit(slot as u16, 0, &r, &[buf]).expect("submit");
    }

    /// Panics unless `r` is a successful completion of `bytes`.
    fn check(r: ReplyRef<'_>, bytes: usize) {
        let ok = r.status() == NtStatus::SUCCESS
            && r.srb_status().status() == SrbStatus::SUCCESS
            && r.scsi_status() == ScsiStatus::GOOD
            && r.data_transfer_length() as usize == bytes;
        assert!(ok, "I/O failed: completion {:?}", r.to_reply());
    }

    fn prefill(d: &Disk) {
        prefill_bytes(d, WORKING_SET, SS);
    }

    /// Reads the prefilled pattern back through the path once, so the
    /// timed loops are known to move the right bytes.
    fn verify(disk: &Disk) {
        let vm = vm(disk, VmMemory::Mapped);
        let mut g = connect(&vm);
        let (bytes, lba) = (128 * 1024, 3 * 256);
        let buf = buffer(&vm, 0, bytes);
        let request = template(&g, false, bytes);
        submit(&mut g, &request, 0, lba, buf);
        g.flush().expect("flush");
        g.run_host().expect("service");
        let n = g
            .reap(|tag, r| {
                assert_eq!(tag, 0);
                check(r, bytes);
            })
            .expect("completion");
        assert_eq!(n, 1);
        let mut got = vec![0u8; bytes];
        vm.memory()
            .read_at(buf.gpa, &mut got)
            .expect("guest memory");
        let want = pattern(1, lba, bytes as u64 / u64::from(SS), SS);
        assert!(got == want, "the read through StorVSP returned other data");
    }

    const ROWS: [Row; 11] = [
        row("read", 4096, Pattern::Random, 1, Fill::Prefilled),
        row("read", 4096, Pattern::Random, MAX_QD, Fill::Prefilled),
        row("write", 4096, Pattern::Random, 1, Fill::Prefilled),
        row("write", 4096, Pattern::Random, MAX_QD, Fill::Prefilled),
        row("read", 128 * 1024, Pattern::Sequential, 1, Fill::Prefilled),
        row("write", 128 * 1024, Pattern::Sequential, 1, Fill::Prefilled),
        // OpenVMM's setup: reads of a never-written disk.
        row("read", 4096, Pattern::Random, 1, Fill::Unwritten),
        row("read", 4096, Pattern::Random, 16, Fill::Unwritten),
        row("read", 4096, Pattern::Random, MAX_QD, Fill::Unwritten),
        // The driver's test API (`Storvsc::srb`), for comparison.
        row("read", 4096, Pattern::Random, 0, Fill::Prefilled),
        row("write", 4096, Pattern::Random, 0, Fill::Prefilled),
    ];

    fn line(row: &Row, path: &str, m: Measurement, per_op: usize, reference: f64) {
        let ns = m.ns_per_op / per_op as f64;
        let allocs = m.allocs_per_op / per_op as f64;
        let pattern = row.pattern.name();
        let openvmm = OPENVMM_NS
            .iter()
            .find(|&&(qd, _)| {
                row.fill == Fill::Unwritten && row.op == "read" && row.bytes == 4096 && row.qd == qd
            })
            .filter(|_| path == "storvsp")
            .map_or(String::new(), |&(_, base)| {
                format!("  vs-openvmm={:.2}", ns / base)
            });
        let fill = row.fill.suffix();
        println!(
            "storvsp {:<5} {:<6} {pattern:<4} QD{:<2} {:<32} {ns:>8.0} ns/io {:>6.2} MIOPS/core {:>6.2} GB/s  allocs/io={allocs:.2}{openvmm}  ratio={:.2}",
            row.op,
            size_name(row.bytes),
            row.qd.max(1),
            format!("{path}{fill}"),
            1e3 / ns,
            row.bytes as f64 / ns,
            ns / reference,
        );
    }

    pub(crate) fn run() {
        println!(
            "storvsp: emulated StorVSC (parastor-emulated, current Linux profile, lean path) -> VMBus ring -> StorVSP -> SCSI disk -> RAM disk \
             ({SS}-byte sectors, {} working set, one thread, service polled inline); \
             ratio = ns/io of the line / ns/io of the RAM disk alone (Disk::read/write, same buffers and \
             offsets, measured in the same run; lower is better); QD32 = 32 requests kept outstanding \
             (reap all completions, resubmit); `unwritten` = reads of a never-written disk (zero fills), \
             OpenVMM's setup; vs-openvmm = ns/io / OpenVMM's 897 / 479 / 426 ns (batch 1 / 16 / 32) on those rows; \
             storvsp(worker-on-runtime-thread) = the StorVSP worker on a parastor-runtime thread pinned to one CPU, \
             the guest on the bench thread, eventfd signals both ways (each side sleeps in epoll_wait until signalled)",
            size_name(WORKING_SET as usize)
        );
        let prefilled = parastor_tests::stacks::ram_disk(DISK_BYTES / u64::from(SS), SS);
        prefill(&prefilled);
        verify(&prefilled);
        let unwritten = parastor_tests::stacks::ram_disk(DISK_BYTES / u64::from(SS), SS);
        // Profiling aid: `PARASTOR_BENCH_ROW=N` times row N's StorVSP path
        // alone.
        let only: Option<usize> = std::env::var("PARASTOR_BENCH_ROW")
            .ok()
            .and_then(|v| v.parse().ok());
        for (i, row) in ROWS.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let disk = match row.fill {
                Fill::Prefilled => &prefilled,
                Fill::Unwritten => &unwritten,
            };
            let write = row.op == "write";
            let bytes = row.bytes;
            let qd = row.qd.max(1);
            let vm = vm(disk, VmMemory::Mapped);
            // The same path over the locked test memory, for comparison.
            let locked_vm = vm_locked(disk, row.qd);
            // The worker on a runtime thread, the guest on this one.
            let cross = vm_cross_thread(disk, row);
            let mut cases = Vec::new();
            let per_op;
            if row.qd == 0 {
                // The driver's test API; one I/O per op.
                per_op = 1;
                let mut g = connect(&vm);
                let mut addr = Addresses::new(row.pattern, bytes, SS, WORKING_SET);
                let data = vec![0x5au8; bytes];
                cases.push(Case {
                    name: "emulated-test-api",
                    op: Box::new(move |_| {
                        let lba = addr.next() as u32;
                        let mut cdb = [0u8; 10];
                        cdb[0] = if write {
                            ScsiOp::WRITE10.get()
                        } else {
                            ScsiOp::READ10.get()
                        };
                        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
                        cdb[7..9].copy_from_slice(&((bytes as u32 / SS) as u16).to_be_bytes());
                        let d = if write {
                            Data::Out(&data)
                        } else {
                            Data::In(bytes)
                        };
                        let r = g.srb(&Srb::new(0, &cdb, d)).expect("srb");
                        assert!(r.is_good(), "I/O failed: {r:?}");
                    }),
                });
            } else {
                per_op = qd;
                cases.push(lean("storvsp", &vm, row, qd));
            }
            // The reference: the RAM disk alone, the same buffers (in the
            // same guest memory) and offsets, `per_op` I/Os per op.
            let ranges: Vec<[GpaRange; 1]> =
                (0..per_op).map(|slot| [buffer(&vm, slot, bytes)]).collect();
            let mut addr = Addresses::new(row.pattern, bytes, SS, WORKING_SET);
            let (mem, disk) = (&**vm.memory(), disk);
            cases.push(Case {
                name: "ram-disk-alone",
                op: Box::new(move |_| {
                    for r in &ranges {
                        let sector = addr.next();
                        let sg = SgList::new(mem, r, !write).expect("ranges");
                        disk_io(disk, sg, sector, write).expect("RAM disk I/O");
                    }
                }),
            });
            if let Some(locked_vm) = &locked_vm {
                cases.push(lean("storvsp(locked-guest-mem)", locked_vm, row, qd));
            }
            if let Some((vm, host)) = &cross {
                let g = negotiated(host.guest(GUEST).expect("guest"));
                cases.push(lean_on("storvsp(worker-on-runtime-thread)", vm, g, row, qd));
            }
            if only.is_some() {
                cases.truncate(1);
                let m = measure(&mut cases)[0];
                println!("{:.0} ns/io", m.ns_per_op / per_op as f64);
                continue;
            }
            let results = measure(&mut cases);
            let reference = results[1].ns_per_op / per_op as f64;
            for (case, m) in cases.iter().zip(results) {
                line(row, case.name, m, per_op, reference);
            }
        }
    }
}

/// `nvme`: parastor's NVMe driver (`parastor-nvme-driver`) → the
/// in-process backing (`parastor_emulated::nvme`: direct DMA, MSI-X
/// events) → parastor's NVMe controller (`parastor-nvme`) → a RAM disk,
/// everything on this thread: each op submits its commands (SQE and
/// doorbell per command), polls the controller's work (which runs the
/// commands and posts completions and the interrupt) and polls the
/// commands' futures (the first drains the completion queue). The
/// reference is the RAM disk alone doing the same I/O with the same
/// buffers (`Disk::read` / `Disk::write`).
mod nvme {
    use super::harness::{
        Addresses, Case, Fill, Measurement, Pattern, Row, disk_io, measure, prefill_bytes, row,
        size_name,
    };
    use super::*;
    use parastor_core::DiskError;
    use parastor_core::disk::IoFuture;
    use parastor_emulated::nvme::{NvmeRig, RigConfig, YieldTimer};
    use parastor_nvme_driver::{DataPointer, DriverConfig, NvmeDriver};
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    const SS: u32 = 512;
    /// Bytes the I/Os cycle over (prefilled).
    const WORKING_SET: u64 = 8 << 20;
    /// Disk size.
    const DISK_BYTES: u64 = 16 << 20;
    /// Deepest queue measured.
    const MAX_QD: usize = 32;
    /// OpenVMM's NVMe driver → emulator → RAM disk, 4 KiB reads, direct
    /// DMA, QD1 and QD32 (reference/openvmm-perf.md).
    /// (op, QD, ns/io): 4 KiB reads at QD1 and QD32, writes at QD1.
    const OPENVMM_NS: [(&str, usize, f64); 3] = [
        ("read", 1, 1695.0),
        ("read", MAX_QD, 989.0),
        ("write", 1, 1966.0),
    ];
    /// The same with bounce buffering (reference/openvmm-perf.md).
    const OPENVMM_BOUNCE_NS: [(&str, usize, f64); 3] = [
        ("read", 1, 1753.0),
        ("read", MAX_QD, 1107.0),
        ("write", 1, 2014.0),
    ];

    const ROWS: [Row; 8] = [
        row("read", 4096, Pattern::Random, 1, Fill::Prefilled),
        row("read", 4096, Pattern::Random, MAX_QD, Fill::Prefilled),
        row("write", 4096, Pattern::Random, 1, Fill::Prefilled),
        row("write", 4096, Pattern::Random, MAX_QD, Fill::Prefilled),
        row("read", 128 * 1024, Pattern::Sequential, 1, Fill::Prefilled),
        row("write", 128 * 1024, Pattern::Sequential, 1, Fill::Prefilled),
        // Reads of a never-written disk (zero fills).
        row("read", 4096, Pattern::Random, 1, Fill::Unwritten),
        row("read", 4096, Pattern::Random, MAX_QD, Fill::Unwritten),
    ];

    /// A controller with `disk` as namespace 1, a driver over it with
    /// `data_pointer`, and namespace 1's `Disk` — leaked: the bench's
    /// futures borrow them for the rest of the process.
    fn setup(
        disk: &Disk,
        data_pointer: DataPointer,
        shadow_doorbells: bool,
    ) -> (&'static NvmeRig, &'static Disk) {
        let config = DriverConfig {
            io_queues: 1,
            data_pointer,
            shadow_doorbells,
            ..DriverConfig::default()
        };
        let (rig, namespaces) = setup_namespaces(&[disk], config);
        (rig, namespaces[0])
    }

    /// A controller with `disks` as namespaces 1, 2, ..., a driver over it
    /// with `config`, and the namespaces' `Disk`s, all leaked (see
    /// [`setup`]).
    fn setup_namespaces(
        disks: &[&Disk],
        config: DriverConfig,
    ) -> (&'static NvmeRig, Vec<&'static Disk>) {
        let mut controller = parastor_nvme::ControllerConfig::new(parastor_tests::nvme::INSTANCE);
        controller.max_io_queue_pairs = 1;
        controller.msix_vectors = 2;
        let mut rig_config = RigConfig::new(controller);
        rig_config.data_bytes = 8 << 20;
        rig_config.dma_bytes = 16 << 20;
        let rig: &'static NvmeRig = Box::leak(Box::new(NvmeRig::new(rig_config).expect("rig RAM")));
        for (nsid, disk) in (1..).zip(disks) {
            rig.controller()
                .add_namespace(nsid, (*disk).clone())
                .expect("namespace");
        }
        let driver = rig
            .run(NvmeDriver::new(rig.device(), config, Arc::new(YieldTimer)))
            .expect("rig")
            .expect("driver bring-up");
        let namespaces = (1..=disks.len() as u32)
            .map(|nsid| {
                let ns = Disk::new(driver.namespace(nsid).expect("namespace")).expect("disk");
                &*Box::leak(Box::new(ns))
            })
            .collect();
        Box::leak(Box::new(driver));
        (rig, namespaces)
    }

    /// Slot `slot`'s data buffer in the rig's data area.
    fn buffer(slot: usize, bytes: usize) -> [GpaRange; 1] {
        [GpaRange::new(Gpa::new((slot * bytes) as u64), bytes as u64)]
    }

    type Slot = Pin<Box<Option<IoFuture<'static, Result<(), DiskError>>>>>;

    /// The timed NVMe path: each op starts `qd` commands, runs the
    /// controller and completes them all.
    fn nvme_case(
        name: &'static str,
        rig: &'static NvmeRig,
        disk: &'static Disk,
        ranges: &'static [[GpaRange; 1]],
        row: &Row,
    ) -> Case<'static> {
        nvme_case_in(name, rig, disk, &**rig.memory(), ranges, row)
    }

    /// [`nvme_case`] with the callers' buffers in `mem` (the rig's RAM:
    /// direct DMA; any other memory: the driver bounces).
    fn nvme_case_in(
        name: &'static str,
        rig: &'static NvmeRig,
        disk: &'static Disk,
        mem: &'static dyn GuestMemory,
        ranges: &'static [[GpaRange; 1]],
        row: &Row,
    ) -> Case<'static> {
        let (write, qd) = (row.op == "write", row.qd);
        let mut addr = Addresses::new(row.pattern, row.bytes, SS, WORKING_SET);
        let mut slots: Vec<Slot> = (0..qd).map(|_| Box::pin(None)).collect();
        let mut cx = Context::from_waker(Waker::noop());
        Case {
            name,
            op: Box::new(move |_| {
                for (slot, r) in slots.iter_mut().zip(ranges) {
                    let sg = SgList::new(mem, r, !write).expect("ranges");
                    let sector = addr.next();
                    let fut = if write {
                        disk.write(sg, sector, IoOptions::default())
                    } else {
                        disk.read(sg, sector, IoOptions::default())
                    };
                    slot.as_mut().set(Some(fut));
                    // The first poll submits the command.
                    if let Some(f) = slot.as_mut().as_pin_mut() {
                        assert!(
                            f.poll(&mut cx).is_pending(),
                            "a command completes only after the controller runs"
                        );
                    }
                }
                let mut rounds = 0;
                loop {
                    while rig.poll_controller(&mut cx).is_ready() {}
                    let mut all = true;
                    for slot in slots.iter_mut() {
                        let done = match slot.as_mut().as_pin_mut() {
                            Some(f) => match f.poll(&mut cx) {
                                Poll::Ready(r) => {
                                    r.expect("NVMe I/O");
                                    true
                                }
                                Poll::Pending => {
                                    all = false;
                                    false
                                }
                            },
                            None => false,
                        };
                        if done {
                            slot.as_mut().set(None);
                        }
                    }
                    if all {
                        break;
                    }
                    rounds += 1;
                    assert!(rounds < 1000, "every command completes");
                }
            }),
        }
    }

    fn prefill(d: &Disk) {
        prefill_bytes(d, WORKING_SET, SS);
    }

    /// Reads the prefilled pattern back through the NVMe path once.
    fn verify(rig: &'static NvmeRig, disk: &'static Disk) {
        let (bytes, sector) = (128 * 1024, 3 * 256);
        let r = buffer(0, bytes);
        let mem: &dyn GuestMemory = &**rig.memory();
        rig.run(disk.read(
            SgList::new(mem, &r, true).expect("ranges"),
            sector,
            IoOptions::default(),
        ))
        .expect("rig")
        .expect("read");
        let mut got = vec![0u8; bytes];
        mem.read_at(r[0].gpa, &mut got).expect("rig memory");
        let want = pattern(1, sector, bytes as u64 / u64::from(SS), SS);
        assert!(got == want, "the read through NVMe returned other data");
    }

    /// Prints one result line; `openvmm` = OpenVMM's 4 KiB figures
    /// (op, QD, ns/io) for this path, if it has a counterpart there.
    fn line(
        group: &str,
        row: &Row,
        path: &str,
        m: Measurement,
        reference: f64,
        openvmm: &[(&str, usize, f64)],
    ) {
        let ns = m.ns_per_op / row.qd as f64;
        let allocs = m.allocs_per_op / row.qd as f64;
        let pattern = row.pattern.name();
        let fill = row.fill.suffix();
        let openvmm = openvmm
            .iter()
            .find(|&&(op, qd, _)| row.op == op && row.bytes == 4096 && row.qd == qd)
            .map_or(String::new(), |&(_, _, base)| {
                format!("  vs-openvmm={:.2}", ns / base)
            });
        println!(
            "{group} {:<5} {:<6} {pattern:<4} QD{:<2} {:<34} {ns:>8.0} ns/io {:>6.2} MIOPS/core {:>6.2} GB/s  allocs/io={allocs:.2}{openvmm}  ratio={:.2}",
            row.op,
            size_name(row.bytes),
            row.qd,
            format!("{path}{fill}"),
            1e3 / ns,
            row.bytes as f64 / ns,
            ns / reference,
        );
    }

    pub(crate) fn run() {
        println!(
            "nvme: parastor's NVMe driver -> in-process backing (direct DMA: buffers pin to device addresses) -> \
             parastor's NVMe controller -> RAM disk ({SS}-byte sectors, {} working set, one thread: \
             submit, run the controller's work, complete); nvme(prp) / nvme(sgl) = the driver's data pointers, shadow doorbells (Doorbell Buffer Config) on; \
             nvme(prp,mmio-doorbells) = PRPs, every doorbell an MMIO write; \
             QD32 = 32 commands started per op, all completed before the next; \
             ratio = ns/io of the line / ns/io of the RAM disk alone (Disk::read/write, same buffers and offsets, \
             measured in the same run; lower is better); `unwritten` = reads of a never-written disk; \
             vs-openvmm = ns/io / OpenVMM's direct-DMA NVMe 4 KiB read, 1695 ns (QD1) / 989 ns (QD32), and write, 1966 ns (QD1)",
            size_name(WORKING_SET as usize)
        );
        let prefilled = parastor_tests::stacks::ram_disk(DISK_BYTES / u64::from(SS), SS);
        prefill(&prefilled);
        let unwritten = parastor_tests::stacks::ram_disk(DISK_BYTES / u64::from(SS), SS);
        let paths = [
            ("nvme(prp)", DataPointer::Prp, true),
            ("nvme(sgl)", DataPointer::Sgl, true),
            ("nvme(prp,mmio-doorbells)", DataPointer::Prp, false),
        ];
        let prefilled_paths: Vec<_> = paths
            .iter()
            .map(|&(n, dp, sh)| (n, setup(&prefilled, dp, sh)))
            .collect();
        let unwritten_paths: Vec<_> = paths
            .iter()
            .map(|&(n, dp, sh)| (n, setup(&unwritten, dp, sh)))
            .collect();
        for (_, (rig, disk)) in &prefilled_paths {
            verify(rig, disk);
        }
        // Profiling aid: `PARASTOR_BENCH_ROW=N` times row N's nvme(prp)
        // path alone.
        let only: Option<usize> = std::env::var("PARASTOR_BENCH_ROW")
            .ok()
            .and_then(|v| v.parse().ok());
        for (i, row) in ROWS.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let (disk, paths) = match row.fill {
                Fill::Prefilled => (&prefilled, &prefilled_paths),
                Fill::Unwritten => (&unwritten, &unwritten_paths),
            };
            let ranges: &'static [[GpaRange; 1]] = Box::leak(
                (0..row.qd)
                    .map(|slot| buffer(slot, row.bytes))
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            );
            let mut cases: Vec<Case<'_>> = paths
                .iter()
                .map(|(name, (rig, ns))| nvme_case(name, rig, ns, ranges, row))
                .collect();
            // The reference: the RAM disk alone, the same buffers (in the
            // first rig's memory) and offsets, `qd` I/Os per op.
            let mem: &dyn GuestMemory = &**paths[0].1.0.memory();
            let write = row.op == "write";
            let mut addr = Addresses::new(row.pattern, row.bytes, SS, WORKING_SET);
            cases.push(Case {
                name: "ram-disk-alone",
                op: Box::new(move |_| {
                    for r in ranges {
                        let sg = SgList::new(mem, r, !write).expect("ranges");
                        disk_io(disk, sg, addr.next(), write).expect("RAM disk I/O");
                    }
                }),
            });
            if only.is_some() {
                cases.truncate(1);
                // `PARASTOR_BENCH_OPS=N`: exactly N ops, untimed (for
                // `perf stat`).
                if let Some(n) = std::env::var("PARASTOR_BENCH_OPS")
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    for i in 0..n {
                        (cases[0].op)(i);
                    }
                    continue;
                }
                let m = measure(&mut cases)[0];
                println!("{:.0} ns/io", m.ns_per_op / row.qd as f64);
                continue;
            }
            let results = measure(&mut cases);
            let reference = results[cases.len() - 1].ns_per_op / row.qd as f64;
            for (case, m) in cases.iter().zip(results) {
                let openvmm: &[_] = if case.name.starts_with("nvme") {
                    &OPENVMM_NS
                } else {
                    &[]
                };
                line("nvme", row, case.name, m, reference, openvmm);
            }
        }
    }

    /// The rows of `nvme-driver`: 4 KiB random QD1/QD32, 128 KiB
    /// sequential QD1, prefilled.
    const DRIVER_ROWS: [Row; 6] = [
        row("read", 4096, Pattern::Random, 1, Fill::Prefilled),
        row("read", 4096, Pattern::Random, MAX_QD, Fill::Prefilled),
        row("write", 4096, Pattern::Random, 1, Fill::Prefilled),
        row("write", 4096, Pattern::Random, MAX_QD, Fill::Prefilled),
        row("read", 128 * 1024, Pattern::Sequential, 1, Fill::Prefilled),
        row("write", 128 * 1024, Pattern::Sequential, 1, Fill::Prefilled),
    ];

    /// `nvme-driver`: `NvmeDisk` (the driver's default configuration: one
    /// I/O queue, data pointer chosen by the driver, shadow doorbells)
    /// with the callers' buffers where the device can reach them (direct)
    /// and where it cannot (bounced), and crypt over striped over two
    /// namespaces of the same controller; each against the RAM disk alone.
    pub(crate) fn run_driver() {
        println!(
            "nvme-driver: NvmeDisk -> parastor's NVMe driver (default configuration, one I/O queue) -> in-process backing \
             -> parastor's NVMe controller -> RAM disk ({SS}-byte sectors, {} working set, one thread: submit, run the \
             controller's work, complete); direct = callers' buffers in the device's DMA domain (DeviceRam: they pin to \
             device addresses); bounced = callers' buffers in mapped guest RAM the device cannot reach (it pins only for the \
             kernel's domain; the driver copies through its bounce pool); crypt+striped = XTS crypt over a 2-way stripe (64 KiB chunks) of two namespaces of the same \
             controller, callers' buffers direct (crypt's staging memory is private, so the driver bounces below it); \
             QD32 = 32 commands started per op, all completed before the next; allocs/io = heap allocations per I/O \
             (goal 0); ratio = ns/io / ns/io of the RAM disk alone (Disk::read/write, same buffers and offsets, same \
             run); vs-openvmm = ns/io / OpenVMM's same path (reference/openvmm-perf.md): direct 1695 / 989 ns (4 KiB \
             read QD1 / QD32), 1966 ns (write QD1); bounced 1753 / 1107 ns, 2014 ns; goal <= 0.5",
            size_name(WORKING_SET as usize)
        );
        let namespace = parastor_tests::stacks::ram_disk(DISK_BYTES / u64::from(SS), SS);
        prefill(&namespace);
        let halves: Vec<Disk> = (0..2)
            .map(|_| parastor_tests::stacks::ram_disk(DISK_BYTES / 2 / u64::from(SS), SS))
            .collect();
        for half in &halves {
            prefill_bytes(half, DISK_BYTES / 2, SS);
        }
        let config = DriverConfig {
            io_queues: 1,
            ..DriverConfig::default()
        };
        let (rig, ns) = setup_namespaces(&[&namespace], config.clone());
        verify(rig, ns[0]);
        let (pair_rig, pair) = setup_namespaces(&[&halves[0], &halves[1]], config);
        let key: Vec<u8> = (0..64).collect();
        let stack = parastor_tests::stacks::striped(
            vec![pair[0].clone(), pair[1].clone()],
            Some(64 * 1024),
            None,
        );
        let stack: &'static Disk = Box::leak(Box::new(
            Disk::new(parastor_core::CryptDisk::new(&key, stack).expect("crypt")).expect("disk"),
        ));
        // Buffers the device cannot reach: mapped guest RAM that pins only
        // for the kernel's domain, as a confidential VM's private memory.
        let private: &'static dyn GuestMemory = Box::leak(Box::new(
            GuestRam::memfd("parastor-bench-private", MAX_QD * 128 * 1024).expect("guest memory"),
        ));
        // Profiling aids: `PARASTOR_BENCH_ROW=N` runs row N only,
        // `PARASTOR_BENCH_CASE=NAME` times that path alone.
        let only_row: Option<usize> = std::env::var("PARASTOR_BENCH_ROW")
            .ok()
            .and_then(|v| v.parse().ok());
        let only_case = std::env::var("PARASTOR_BENCH_CASE").ok();
        for (i, row) in DRIVER_ROWS.iter().enumerate() {
            if only_row.is_some_and(|o| o != i) {
                continue;
            }
            let ranges: &'static [[GpaRange; 1]] = Box::leak(
                (0..row.qd)
                    .map(|slot| buffer(slot, row.bytes))
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            );
            let mut cases = vec![
                nvme_case_in(
                    "nvme-driver(direct)",
                    rig,
                    ns[0],
                    &**rig.memory(),
                    ranges,
                    row,
                ),
                nvme_case_in("nvme-driver(bounced)", rig, ns[0], private, ranges, row),
                nvme_case_in(
                    "crypt+striped/nvme-driver",
                    pair_rig,
                    stack,
                    &**pair_rig.memory(),
                    ranges,
                    row,
                ),
            ];
            let mem: &dyn GuestMemory = &**rig.memory();
            let write = row.op == "write";
            let mut addr = Addresses::new(row.pattern, row.bytes, SS, WORKING_SET);
            let reference_disk = &namespace;
            cases.push(Case {
                name: "ram-disk-alone",
                op: Box::new(move |_| {
                    for r in ranges {
                        let sg = SgList::new(mem, r, !write).expect("ranges");
                        disk_io(reference_disk, sg, addr.next(), write).expect("RAM disk I/O");
                    }
                }),
            });
            if let Some(only) = &only_case {
                // Profiling aid: one case alone, no reference;
                // `PARASTOR_BENCH_OPS=N`: exactly N ops, untimed (for
                // `perf stat`).
                cases.retain(|c| c.name == only);
                if let (Some(case), Some(n)) = (
                    cases.first_mut(),
                    std::env::var("PARASTOR_BENCH_OPS")
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok()),
                ) {
                    (0..n).for_each(&mut case.op);
                    continue;
                }
                let results = measure(&mut cases);
                for (case, m) in cases.iter().zip(results) {
                    let (ns, allocs) =
                        (m.ns_per_op / row.qd as f64, m.allocs_per_op / row.qd as f64);
                    println!("{} {ns:.0} ns/io allocs/io={allocs:.2}", case.name);
                }
                continue;
            }
            let results = measure(&mut cases);
            let reference = results[cases.len() - 1].ns_per_op / row.qd as f64;
            for (case, m) in cases.iter().zip(results) {
                let openvmm: &[_] = match case.name {
                    "nvme-driver(direct)" => &OPENVMM_NS,
                    "nvme-driver(bounced)" => &OPENVMM_BOUNCE_NS,
                    _ => &[],
                };
                line("nvme-driver", row, case.name, m, reference, openvmm);
            }
        }
    }
}

mod tcmu {
    //! The TCMU handler's turnaround for 4 KiB reads, through the
    //! in-process model of the kernel's side, on an inline RAM disk:
    //!
    //! - `ring`: one thread plays both sides with no doorbells (the model
    //!   posts a batch, the handler fetches, runs each read through
    //!   `Lun::run_now`, completes; the model collects); `ring handler` is
    //!   the handler's part alone (fetch, run, complete);
    //! - `serve QD n`: `parastor_tcmu::serve` on a runtime thread, the model
    //!   on this one keeping `n` reads in flight, eventfd doorbells both
    //!   ways (the cross-thread wake-ups a uio device also costs).
    //!
    //! Reference, same run: a 4 KiB `memcpy`, the copy each read needs at
    //! the least; ratio = ns per read / ns per memcpy (lower is better).

    use std::hint::black_box;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use parastor_core::Disk;
    use parastor_core::ram::RamDisk;
    use parastor_emulated::tcmu::{Completion, DataDir, PostError, TcmuConfig, TcmuKernel};
    use parastor_scsi::{DiskParams, Lun, ScsiDisk};
    use parastor_tcmu::ring::CommandRing;
    use parastor_tests::tcmu::{TcmuRig, run_fetched_inline};

    /// Seconds each measurement runs.
    const SECONDS: f64 = 2.0;

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
            run_fetched_inline(&mut ring, &lun, &mut cmds, |_| {});
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
        let mut rig = TcmuRig::one(lun(), config());
        let k = rig.k();
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
        rig.finish().unwrap();
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

    pub(super) fn run() {
        let reference = memcpy_4k(SECONDS / 4.0);
        let line = |what: &str, ns: f64| {
            println!(
                "tcmu read 4K {what:<14} {ns:>9.0} ns/io {:>10.0} IOPS  ratio={:.2}",
                1e9 / ns,
                ns / reference
            );
        };
        println!(
            "tcmu: ratio = ns per 4 KiB read / ns per 4 KiB memcpy ({reference:.0} ns) (lower is better)"
        );
        let (all, handler) = ring_only(SECONDS);
        line("ring (all)", all);
        line("ring handler", handler);
        line("serve QD1", served(SECONDS, 1));
        line("serve QD32", served(SECONDS, 32));
    }
}
