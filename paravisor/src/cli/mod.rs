//! The `parastor` command line.
//!
//! [`Cli`] is the clap definition; [`run`] carries out a parsed command.
//! Each command's work is a library function ([`info::render`],
//! [`dd::read_sectors`], [`dd::write_sectors`], [`verify::run`],
//! [`bench::run`], [`settings::check`]) so tests can call it without
//! spawning the binary.

pub mod bench;
pub mod dd;
pub mod format;
pub mod info;
pub mod nvme;
pub mod nvme_bench;
pub mod nvme_diff;
pub mod rng;
pub mod settings;
pub mod tcmu;
pub mod verify;

use crate::spec::{self, SpecError};
use clap::{Args, Parser, Subcommand};
use parastor_core::Disk;
use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

/// `parastor`: a paravisor storage translation service.
#[derive(Parser, Debug)]
#[command(name = "parastor", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build a disk stack from a spec and inspect, read, write, verify or
    /// benchmark it.
    Disk(DiskArgs),
    /// Check, convert or diff the host's VTL2 settings blobs.
    Settings(settings::SettingsArgs),
    /// Serve a disk stack (or a DVD drive) to this machine's Linux SCSI
    /// stack as a TCMU backstore behind tcm_loop, until SIGINT or SIGTERM
    /// (needs root, configfs and the target_core_user and tcm_loop
    /// modules).
    Tcmu(tcmu::TcmuArgs),
    /// Drive an NVMe controller bound to vfio-pci with parastor's NVMe
    /// driver and check it step by step: identify, read the data given,
    /// write, deallocate, flush, controller and function-level reset
    /// (needs root and the function bound to vfio-pci).
    NvmeCheck(nvme::NvmeCheckArgs),
    /// Run one NVMe command script against a controller bound to vfio-pci
    /// and against parastor's controller emulator in process, and compare
    /// the completions (needs root and the function bound to vfio-pci).
    NvmeDiff(nvme_diff::NvmeDiffArgs),
    /// Measure 4 KiB random reads at queue depth 1 and 32 through
    /// parastor's NVMe driver over a controller bound to vfio-pci (needs
    /// root and the function bound to vfio-pci).
    NvmeBench(nvme_bench::NvmeBenchArgs),
}

/// `parastor disk`.
#[derive(Args, Debug)]
#[command(after_help = spec::GRAMMAR)]
pub struct DiskArgs {
    /// What to do with the disk.
    #[command(subcommand)]
    pub command: DiskCommand,
}

/// The `parastor disk` commands. Each takes a disk SPEC (see `parastor disk
/// --help`).
#[derive(Subcommand, Debug)]
pub enum DiskCommand {
    /// Print the disk stack as a tree: each disk's size, sector sizes,
    /// read-only, FUA and unmap behaviour, details and children.
    Info {
        /// The disk spec.
        spec: String,
    },
    /// Write COUNT raw sectors starting at LBA to standard output.
    Read {
        /// The disk spec.
        spec: String,
        /// First sector.
        lba: u64,
        /// Number of sectors.
        count: u64,
    },
    /// Write the raw sectors on standard input (whole sectors only) to the
    /// disk starting at LBA, then flush.
    Write {
        /// The disk spec.
        spec: String,
        /// First sector.
        lba: u64,
    },
    /// Run a random read/write/unmap/flush workload against a reference
    /// model; exit with status 1 on any mismatch. Modifies the disk.
    Verify {
        /// The disk spec.
        spec: String,
        /// Number of operations.
        #[arg(long, default_value_t = 20_000)]
        ops: u64,
        /// Seed of the workload (default: from the clock; always printed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Measure 4 KiB random and 128 KiB sequential reads and writes at queue
    /// depth 1. The write tests overwrite the disk's data.
    Bench {
        /// The disk spec.
        spec: String,
        /// Seconds to run each test.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Skip the write tests.
        #[arg(long)]
        no_write: bool,
    },
}

/// A command that failed: one line of message, plus an optional picture
/// (a spec with a caret under the problem) for terminals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    message: String,
    detail: Option<String>,
}

impl CliError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            detail: None,
        }
    }

    /// Extra lines that explain the error on a terminal.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<SpecError> for CliError {
    fn from(e: SpecError) -> Self {
        Self {
            message: e.to_string(),
            detail: Some(e.caret_diagram()),
        }
    }
}

fn stdout_failed(e: io::Error) -> CliError {
    CliError::new(format!("writing to standard output failed: {e}"))
}

/// One line describing a disk's geometry.
fn geometry(disk: &Disk) -> String {
    let bytes = u128::from(disk.sector_count()) * u128::from(disk.sector_size());
    let bytes = u64::try_from(bytes).map_or_else(|_| format!("{bytes} bytes"), format::bytes);
    format!(
        "{} sectors of {} bytes ({bytes}), unmap {}{}",
        format::count(disk.sector_count()),
        disk.sector_size(),
        disk.unmap_behavior().as_str(),
        if disk.is_read_only() {
            ", read-only"
        } else {
            ""
        }
    )
}

/// Carries out `cli`; the exit code is 1 when `verify` finds a problem or
/// `settings` finds invalid settings.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let args = match cli.command {
        Command::Disk(args) => args,
        Command::Settings(args) => return settings::run(args),
        Command::Tcmu(args) => return tcmu::run(args),
        Command::NvmeCheck(args) => return nvme::run(args).map(|()| ExitCode::SUCCESS),
        Command::NvmeDiff(args) => return nvme_diff::run(args).map(|()| ExitCode::SUCCESS),
        Command::NvmeBench(args) => return nvme_bench::run(args).map(|()| ExitCode::SUCCESS),
    };
    match args.command {
        DiskCommand::Info { spec } => {
            let disk = spec::build_spec(&spec)?;
            let mut out = io::stdout().lock();
            out.write_all(info::render(&disk.describe()).as_bytes())
                .map_err(stdout_failed)?;
        }
        DiskCommand::Read { spec, lba, count } => {
            let disk = spec::build_spec(&spec)?;
            dd::read_sectors(&disk, lba, count, &mut io::stdout().lock())?;
        }
        DiskCommand::Write { spec, lba } => {
            let disk = spec::build_spec(&spec)?;
            dd::write_sectors(&disk, lba, &mut io::stdin().lock())?;
        }
        DiskCommand::Verify { spec, ops, seed } => {
            let disk = spec::build_spec(&spec)?;
            let seed = seed.unwrap_or_else(rng::seed_from_time);
            let mut out = io::stdout().lock();
            writeln!(out, "verify '{spec}': {}", geometry(&disk)).map_err(stdout_failed)?;
            writeln!(out, "{} ops, seed {seed}", format::count(ops)).map_err(stdout_failed)?;
            out.flush().map_err(stdout_failed)?;
            let progress = io::stderr().is_terminal();
            let summary = verify::run(
                &disk,
                &verify::VerifyOptions {
                    ops,
                    seed,
                    progress,
                },
            );
            writeln!(out, "{summary}").map_err(stdout_failed)?;
            if !summary.passed() {
                return Ok(ExitCode::from(1));
            }
        }
        DiskCommand::Bench {
            spec,
            seconds,
            no_write,
        } => {
            let duration = Duration::try_from_secs_f64(seconds)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    CliError::new(format!(
                        "--seconds {seconds} is invalid: expected a positive number of seconds"
                    ))
                })?;
            let disk = spec::build_spec(&spec)?;
            let mut out = io::stdout().lock();
            writeln!(out, "bench '{spec}': {}", geometry(&disk)).map_err(stdout_failed)?;
            writeln!(out, "queue depth 1, {seconds} s per test").map_err(stdout_failed)?;
            out.flush().map_err(stdout_failed)?;
            let options = bench::BenchOptions {
                duration,
                writes: !no_write,
                seed: rng::seed_from_time(),
            };
            for result in bench::run(&disk, &options)? {
                writeln!(out, "  {result}").map_err(stdout_failed)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn disk_help_documents_the_grammar() {
        let mut cmd = Cli::command();
        let disk = cmd.find_subcommand_mut("disk").unwrap();
        let help = disk.render_long_help().to_string();
        for name in spec::kind_names() {
            assert!(
                help.contains(&format!("{name}:")) || help.contains(&format!("{name}[")),
                "{name}"
            );
        }
        assert!(help.contains("striped:[CHUNK:]{SPEC|SPEC|...}"));
    }

    #[test]
    fn parses_commands() {
        let cli = Cli::try_parse_from([
            "parastor", "disk", "verify", "mem:1M", "--ops", "5", "--seed", "9",
        ])
        .unwrap();
        let Command::Disk(DiskArgs {
            command: DiskCommand::Verify { spec, ops, seed },
        }) = cli.command
        else {
            panic!("parsed as the wrong command");
        };
        assert_eq!((spec.as_str(), ops, seed), ("mem:1M", 5, Some(9)));
        assert!(Cli::try_parse_from(["parastor", "disk", "read", "mem:1M", "x", "1"]).is_err());
    }

    #[test]
    fn spec_errors_carry_a_caret() {
        let cli = Cli::try_parse_from(["parastor", "disk", "info", "mem:1000"]).unwrap();
        let e = run(cli).unwrap_err();
        assert!(e.to_string().starts_with("spec error at column 5"), "{e}");
        assert_eq!(e.detail(), Some("  mem:1000\n      ^^^^"));
    }

    #[test]
    fn bad_bench_duration() {
        for s in ["0", "-1", "NaN", "inf"] {
            let arg = format!("--seconds={s}");
            let cli = Cli::try_parse_from(["parastor", "disk", "bench", "mem:1M", &arg]).unwrap();
            let e = run(cli).unwrap_err();
            assert!(
                e.to_string()
                    .contains("expected a positive number of seconds"),
                "{e}"
            );
        }
    }
}
