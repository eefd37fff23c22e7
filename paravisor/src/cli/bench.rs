//! `parastor disk bench`: IOPS and throughput at queue depth 1.

use super::CliError;
use super::rng::{Rng, RngExt, seeded};
use parastor_core::Gpa;
use parastor_core::{Disk, GpaRange, IoOptions, LocalMemory, SgList};
use parastor_runtime::block_on;
use std::fmt;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// How long to run each test.
    pub duration: Duration,
    /// Run the write tests (they overwrite the disk's data).
    pub writes: bool,
    /// Seed for the random offsets.
    pub seed: u64,
}

/// One test of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Test {
    /// Name, as printed.
    pub name: &'static str,
    /// Bytes per request (rounded up to whole sectors when run).
    pub bytes: u64,
    /// Random (else sequential) offsets.
    pub random: bool,
    /// Writes (else reads).
    pub write: bool,
}

/// The tests, in the order they run.
pub const TESTS: [Test; 4] = [
    Test {
        name: "4 KiB random read",
        bytes: 4096,
        random: true,
        write: false,
    },
    Test {
        name: "4 KiB random write",
        bytes: 4096,
        random: true,
        write: true,
    },
    Test {
        name: "128 KiB sequential read",
        bytes: 128 << 10,
        random: false,
        write: false,
    },
    Test {
        name: "128 KiB sequential write",
        bytes: 128 << 10,
        random: false,
        write: true,
    },
];

/// The outcome of one test.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// The test.
    pub test: Test,
    /// Why it did not run, if it did not.
    pub skipped: Option<String>,
    /// Requests completed.
    pub ops: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Time taken.
    pub elapsed: Duration,
}

impl BenchResult {
    /// Requests per second.
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Throughput in MB/s (10^6 bytes per second).
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

impl fmt::Display for BenchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.skipped {
            Some(why) => write!(f, "{:<26}skipped: {why}", self.test.name),
            None => write!(
                f,
                "{:<26}{:>12.0} IOPS {:>10.1} MB/s",
                self.test.name,
                self.iops(),
                self.mb_per_sec()
            ),
        }
    }
}

/// Runs every test of [`TESTS`] on `disk`.
pub fn run(disk: &Disk, options: &BenchOptions) -> Result<Vec<BenchResult>, CliError> {
    let mut rng = seeded(options.seed);
    TESTS
        .iter()
        .map(|test| run_test(disk, test, options, &mut rng))
        .collect()
}

fn run_test(
    disk: &Disk,
    test: &Test,
    options: &BenchOptions,
    rng: &mut Rng,
) -> Result<BenchResult, CliError> {
    let ss = u64::from(disk.sector_size());
    let sectors = test.bytes.div_ceil(ss);
    let bytes = sectors * ss;
    let blocks = disk.sector_count() / sectors;
    let mut result = BenchResult {
        test: *test,
        skipped: None,
        ops: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
    };
    if test.write && disk.is_read_only() {
        result.skipped = Some("the disk is read-only".to_owned());
        return Ok(result);
    }
    if test.write && !options.writes {
        result.skipped = Some("writes are disabled".to_owned());
        return Ok(result);
    }
    if blocks == 0 {
        result.skipped = Some(format!("the disk is smaller than {bytes} bytes"));
        return Ok(result);
    }
    let mut data = vec![0; bytes as usize];
    rng.fill(&mut data);
    let mem = LocalMemory::from_vec(data);
    let ranges = [GpaRange::new(Gpa::new(0), bytes)];
    let sg = SgList::new(&mem, &ranges, !test.write).map_err(|e| CliError::new(e.to_string()))?;
    let opts = IoOptions::default();
    let mut next = 0;
    let start = Instant::now();
    while start.elapsed() < options.duration {
        let block = if test.random { rng.below(blocks) } else { next };
        next = (block + 1) % blocks;
        let lba = block * sectors;
        let done = if test.write {
            block_on(disk.write(sg, lba, opts))
        } else {
            block_on(disk.read(sg, lba, opts))
        };
        done.map_err(|e| CliError::new(format!("{} at LBA {lba} failed: {e}", test.name)))?;
        result.ops += 1;
    }
    result.elapsed = start.elapsed();
    result.bytes = result.ops * bytes;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;

    #[test]
    fn runs_every_test() {
        let disk = spec::build_spec("mem:1M").unwrap();
        let options = BenchOptions {
            duration: Duration::from_millis(20),
            writes: true,
            seed: 1,
        };
        let results = run(&disk, &options).unwrap();
        assert_eq!(results.len(), 4);
        for r in &results {
            assert!(r.skipped.is_none(), "{r}");
            assert!(r.ops > 0 && r.bytes == r.ops * r.test.bytes, "{r}");
            assert!(r.iops() > 0.0 && r.mb_per_sec() > 0.0);
            assert!(r.to_string().contains("IOPS"));
        }
    }

    #[test]
    fn skips_what_cannot_run() {
        let disk = spec::build_spec("mem:64K").unwrap();
        let options = BenchOptions {
            duration: Duration::from_millis(5),
            writes: false,
            seed: 1,
        };
        let results = run(&disk, &options).unwrap();
        assert!(results[0].skipped.is_none());
        assert_eq!(results[1].skipped.as_deref(), Some("writes are disabled"));
        assert_eq!(
            results[2].skipped.as_deref(),
            Some("the disk is smaller than 131072 bytes")
        );
        assert!(
            results[3]
                .to_string()
                .contains("skipped: writes are disabled")
        );
    }
}
