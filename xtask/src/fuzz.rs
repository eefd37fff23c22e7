//! `cargo xtask fuzz [TARGET] [--seconds N] [--sanitizer S] [-- LIBFUZZER_ARGS...]`:
//! the cargo-fuzz targets of `tests/fuzz`.
//!
//! Installs cargo-fuzz if it is missing, then runs `TARGET` (or, with none,
//! every target `cargo fuzz list` names, one after another) for `N` seconds
//! each (default 60), and ends with each target's throughput (inputs run,
//! inputs per second, and the machine's load average before and after, as
//! other work on the machine slows the fuzzer down). cargo-fuzz needs a
//! nightly compiler: `cargo +nightly` when a nightly toolchain is installed,
//! else the installed toolchain with `RUSTC_BOOTSTRAP=1` (the sanitizer
//! runtimes ship with stable too). Crash artifacts land where cargo-fuzz
//! puts them, `tests/fuzz/artifacts/TARGET/`; the command prints that place
//! and, after a crash, how to replay it.
//!
//! # Sanitizer
//!
//! The targets build without a sanitizer by default (`--sanitizer none`),
//! still with debug assertions and overflow checks. Every parastor crate
//! forbids `unsafe`, so a memory error can only come from a dependency's
//! unsafe code, while AddressSanitizer costs the `storvsp` target five times
//! its throughput (measured: ~1,400 against ~7,000 inputs per second). A
//! run with `--sanitizer address` (any `cargo fuzz -s` value is passed on)
//! is still worth doing now and then, for the dependencies.

use crate::util::{self, Error, Result};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The cargo-fuzz project, relative to the workspace root.
const FUZZ_DIR: &str = "tests/fuzz";

/// Seconds per target when `--seconds` is not given.
const DEFAULT_SECONDS: u64 = 60;

/// The sanitizer when `--sanitizer` is not given (see the module docs).
const DEFAULT_SANITIZER: &str = "none";

/// What `cargo fuzz -s` accepts.
const SANITIZERS: &[&str] = &["none", "address", "leak", "memory", "thread"];

/// What `cargo xtask fuzz` was asked to do.
#[derive(Debug, PartialEq)]
struct Options {
    /// The one target to run; `None` runs every target.
    target: Option<String>,
    /// Fuzzing time per target, in seconds.
    seconds: u64,
    /// The `cargo fuzz -s` sanitizer.
    sanitizer: String,
    /// Arguments after `--`, passed on to libFuzzer.
    libfuzzer_args: Vec<String>,
}

/// The value of option `name` if `arg` is it: `--name VALUE` (taking the
/// next argument) or `--name=VALUE`.
fn option_value<'a>(
    name: &str,
    arg: &'a str,
    rest: &mut impl Iterator<Item = &'a String>,
) -> Result<Option<&'a str>> {
    if arg == name {
        rest.next()
            .map(|v| Some(v.as_str()))
            .ok_or_else(|| Error::new(format!("`{name}` needs a value")))
    } else {
        Ok(arg
            .strip_prefix(name)
            .and_then(|tail| tail.strip_prefix('=')))
    }
}

/// Parses the arguments after `fuzz`.
fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        target: None,
        seconds: DEFAULT_SECONDS,
        sanitizer: DEFAULT_SANITIZER.to_string(),
        libfuzzer_args: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if let Some(seconds) = option_value("--seconds", arg, &mut args)? {
            options.seconds = match seconds.parse() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(Error::new(format!(
                        "`--seconds` takes a whole number of seconds above 0, got `{seconds}`"
                    )));
                }
            };
        } else if let Some(sanitizer) = option_value("--sanitizer", arg, &mut args)? {
            if !SANITIZERS.contains(&sanitizer) {
                return Err(Error::new(format!(
                    "`--sanitizer` takes one of {}, got `{sanitizer}`",
                    SANITIZERS.join(", ")
                )));
            }
            options.sanitizer = sanitizer.to_string();
        } else if arg == "--" {
            options.libfuzzer_args = args.by_ref().cloned().collect();
        } else if arg.starts_with('-') {
            return Err(Error::new(format!(
                "unknown option `{arg}` to `fuzz` (expected `--seconds N`, `--sanitizer S` \
                 or `-- LIBFUZZER_ARGS`)"
            )));
        } else if let Some(first) = &options.target {
            return Err(Error::new(format!(
                "`fuzz` takes one target at most, got `{first}` and `{arg}`"
            )));
        } else {
            options.target = Some(arg.clone());
        }
    }
    Ok(options)
}

/// How to invoke cargo-fuzz with a nightly compiler.
enum Toolchain {
    /// `cargo +nightly` from PATH (the rustup proxy).
    Nightly,
    /// The current cargo with `RUSTC_BOOTSTRAP=1`.
    Bootstrap,
}

impl Toolchain {
    /// `Nightly` if `cargo +nightly` works here, else `Bootstrap`.
    fn detect() -> Self {
        let nightly = clean(Command::new("cargo"))
            .args(["+nightly", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if nightly {
            Toolchain::Nightly
        } else {
            println!(
                "xtask fuzz: no nightly toolchain (`cargo +nightly` failed); using the \
                 installed toolchain with RUSTC_BOOTSTRAP=1"
            );
            Toolchain::Bootstrap
        }
    }

    /// `cargo [+nightly] fuzz SUBCOMMAND --fuzz-dir tests/fuzz`, run in the
    /// workspace root.
    fn fuzz(&self, subcommand: &str) -> Command {
        let mut cmd = match self {
            Toolchain::Nightly => {
                let mut cmd = clean(Command::new("cargo"));
                cmd.arg("+nightly");
                cmd
            }
            Toolchain::Bootstrap => {
                let mut cmd = Command::new(util::cargo());
                cmd.env("RUSTC_BOOTSTRAP", "1");
                cmd
            }
        };
        cmd.args(["fuzz", subcommand, "--fuzz-dir", FUZZ_DIR])
            .current_dir(util::workspace_root());
        cmd
    }
}

/// `cmd` without the toolchain choice `cargo xtask` itself was run with, so
/// that `+nightly` governs cargo-fuzz and every cargo it starts.
fn clean(mut cmd: Command) -> Command {
    cmd.env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC");
    cmd
}

/// Runs `cargo xtask fuzz`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    let root = util::workspace_root();
    let fuzz_dir = root.join(FUZZ_DIR);
    if !fuzz_dir.join("Cargo.toml").is_file() {
        return Err(Error::new(format!(
            "no cargo-fuzz project at {} (expected a Cargo.toml with the fuzz targets there)",
            fuzz_dir.display()
        )));
    }
    check_own_workspace(&fuzz_dir.join("Cargo.toml"))?;
    ensure_cargo_fuzz()?;
    let toolchain = Toolchain::detect();
    let targets = match options.target {
        Some(target) => vec![target],
        None => list_targets(&toolchain)?,
    };

    let mut crashed = Vec::new();
    let mut rates = Vec::new();
    for target in &targets {
        println!(
            "==> xtask fuzz: {target} for {}s (sanitizer: {})",
            options.seconds, options.sanitizer
        );
        let load_before = load_average();
        let mut cmd = toolchain.fuzz("run");
        cmd.args(["-s", &options.sanitizer])
            .arg(target)
            .arg("--")
            .arg(format!("-max_total_time={}", options.seconds))
            .arg("-print_final_stats=1")
            .args(&options.libfuzzer_args);
        let (result, stats) = run_libfuzzer(&mut cmd);
        rates.push(Throughput {
            target,
            stats,
            load_before,
            load_after: load_average(),
        });
        let artifacts = fuzz_dir.join("artifacts").join(target);
        match result {
            Ok(()) => println!(
                "<== xtask fuzz: {target}: no crash; artifacts (if any) go to {}",
                artifacts.display()
            ),
            Err(err) => {
                eprintln!("<== xtask fuzz: {target} FAILED: {err}");
                report_artifacts(&toolchain, &options.sanitizer, target, &artifacts);
                crashed.push(target.as_str());
            }
        }
    }
    println!(
        "xtask fuzz: throughput (wall clock, sanitizer {}; other load on the machine \
         slows it down):",
        options.sanitizer
    );
    for rate in &rates {
        println!("    {rate}");
    }
    if crashed.is_empty() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "fuzz target(s) failed: {}; crash artifacts are under {}",
            crashed.join(", "),
            fuzz_dir.join("artifacts").display()
        )))
    }
}

/// What libFuzzer's final statistics (`-print_final_stats=1`) say.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct FinalStats {
    /// `stat::number_of_executed_units`: inputs run.
    inputs: Option<u64>,
    /// `stat::average_exec_per_sec`: inputs per second over the run.
    per_second: Option<u64>,
}

impl FinalStats {
    /// Takes in one line of libFuzzer's output.
    fn read_line(&mut self, line: &str) {
        let value = |key: &str| {
            line.strip_prefix(key)?
                .trim_start_matches(':')
                .trim()
                .parse()
                .ok()
        };
        if let Some(n) = value("stat::number_of_executed_units") {
            self.inputs = Some(n);
        } else if let Some(n) = value("stat::average_exec_per_sec") {
            self.per_second = Some(n);
        }
    }
}

/// One target's line in the closing throughput report.
struct Throughput<'a> {
    target: &'a str,
    stats: FinalStats,
    load_before: Option<String>,
    load_after: Option<String>,
}

impl std::fmt::Display for Throughput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:<10}", self.target)?;
        match (self.stats.inputs, self.stats.per_second) {
            (Some(inputs), Some(rate)) => write!(f, " {inputs:>10} inputs, {rate:>6} inputs/s")?,
            _ => write!(f, " (libFuzzer printed no final statistics)")?,
        }
        if let (Some(before), Some(after)) = (&self.load_before, &self.load_after) {
            write!(f, "; load average {before} before, {after} after")?;
        }
        Ok(())
    }
}

/// The one-minute load average, from `/proc/loadavg` (`None` where there
/// is none).
fn load_average() -> Option<String> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next().map(String::from)
}

/// Runs libFuzzer through `cmd`, passing its output through as it comes
/// (libFuzzer writes to stderr) while reading its final statistics.
fn run_libfuzzer(cmd: &mut Command) -> (Result<()>, FinalStats) {
    let mut stats = FinalStats::default();
    let mut child = match cmd.stderr(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(err) => return (Err(util::spawn_error(cmd, &err)), stats),
    };
    if let Some(stderr) = child.stderr.take() {
        let mut reader = BufReader::new(stderr);
        let mut line = Vec::new();
        let mut out = std::io::stderr().lock();
        // Until the pipe closes; bytes are passed on as they are.
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let _ = out.write_all(&line);
            stats.read_line(String::from_utf8_lossy(&line).trim_end());
            line.clear();
        }
    }
    let result = match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(Error::new(format!(
            "`{}` failed ({status})",
            util::display(cmd)
        ))),
        Err(err) => Err(util::spawn_error(cmd, &err)),
    };
    (result, stats)
}

/// Fails early, with the fix, if the fuzz project has no `[workspace]` table.
///
/// The root manifest lists `tests/fuzz` in `exclude`, but `tests` is a
/// member and cargo lets a member's path win over an exclusion, so without
/// its own `[workspace]` every cargo-fuzz build stops with "current package
/// believes it's in a workspace when it's not".
fn check_own_workspace(manifest: &Path) -> Result<()> {
    let text = fs::read_to_string(manifest)
        .map_err(|err| Error::new(format!("could not read {}: {err}", manifest.display())))?;
    if text
        .lines()
        .any(|line| line.trim_start().starts_with("[workspace]"))
    {
        Ok(())
    } else {
        Err(Error::new(format!(
            "{} has no `[workspace]` table; add an empty one so the fuzz project is a \
             workspace of its own (the root's `exclude` does not apply under the `tests` member)",
            manifest.display()
        )))
    }
}

/// Installs cargo-fuzz unless `cargo fuzz` already works.
fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new(util::cargo())
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if installed {
        return Ok(());
    }
    println!("xtask fuzz: cargo-fuzz is not installed; installing it (cargo install cargo-fuzz)");
    util::run(Command::new(util::cargo()).args(["install", "cargo-fuzz", "--locked"])).map_err(
        |err| {
            err.context(
                "could not install cargo-fuzz (it needs crates.io; install it by hand with \
                 `cargo install cargo-fuzz --locked`, and a nightly toolchain with \
                 `rustup toolchain install nightly` for the best results)",
            )
        },
    )
}

/// The targets `cargo fuzz list` names.
fn list_targets(toolchain: &Toolchain) -> Result<Vec<String>> {
    let mut cmd = toolchain.fuzz("list");
    cmd.stderr(Stdio::inherit());
    let output = cmd.output().map_err(|err| util::spawn_error(&cmd, &err))?;
    if !output.status.success() {
        return Err(Error::new(format!(
            "`{}` failed ({})",
            util::display(&cmd),
            output.status
        )));
    }
    let targets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(String::from)
        .collect();
    if targets.is_empty() {
        return Err(Error::new(format!(
            "`{}` listed no fuzz targets",
            util::display(&cmd)
        )));
    }
    println!("xtask fuzz: targets: {}", targets.join(", "));
    Ok(targets)
}

/// Prints where `target`'s crash artifacts are and how to replay each
/// (with the sanitizer the run used).
fn report_artifacts(toolchain: &Toolchain, sanitizer: &str, target: &str, dir: &Path) {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    if files.is_empty() {
        eprintln!(
            "    no crash artifact in {} (the run failed some other way)",
            dir.display()
        );
        return;
    }
    eprintln!("    crash artifacts in {}:", dir.display());
    for file in &files {
        let mut replay = toolchain.fuzz("run");
        replay.args(["-s", sanitizer]).arg(target).arg(file);
        eprintln!(
            "      {}\n        replay: {}",
            file.display(),
            util::display(&replay)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults() {
        assert_eq!(
            parse(&[]).unwrap(),
            Options {
                target: None,
                seconds: DEFAULT_SECONDS,
                sanitizer: DEFAULT_SANITIZER.into(),
                libfuzzer_args: vec![]
            }
        );
    }

    #[test]
    fn target_seconds_and_passthrough() {
        let options = parse(&args(&[
            "settings",
            "--seconds",
            "5",
            "--sanitizer",
            "address",
            "--",
            "-jobs=2",
        ]))
        .unwrap();
        assert_eq!(
            options,
            Options {
                target: Some("settings".into()),
                seconds: 5,
                sanitizer: "address".into(),
                libfuzzer_args: args(&["-jobs=2"]),
            }
        );
        assert_eq!(parse(&args(&["--seconds=7"])).unwrap().seconds, 7);
        assert_eq!(
            parse(&args(&["--sanitizer=none"])).unwrap().sanitizer,
            "none"
        );
    }

    #[test]
    fn bad_arguments() {
        assert!(parse(&args(&["--seconds"])).is_err());
        assert!(parse(&args(&["--seconds", "0"])).is_err());
        assert!(parse(&args(&["--seconds", "soon"])).is_err());
        assert!(parse(&args(&["a", "b"])).is_err());
        assert!(parse(&args(&["--verbose"])).is_err());
        assert!(parse(&args(&["--sanitizer"])).is_err());
        assert!(parse(&args(&["--sanitizer", "valgrind"])).is_err());
        assert!(parse(&args(&["--seconds5"])).is_err());
    }

    #[test]
    fn final_stats_are_read_from_libfuzzer_output() {
        let mut stats = FinalStats::default();
        for line in [
            "#431883\tDONE   cov: 1614 ft: 7302 corp: 990/267Kb exec/s: 7080 rss: 49Mb",
            "stat::number_of_executed_units: 431883",
            "stat::average_exec_per_sec:     7080",
            "stat::new_units_added:          271",
        ] {
            stats.read_line(line);
        }
        assert_eq!(
            stats,
            FinalStats {
                inputs: Some(431883),
                per_second: Some(7080),
            }
        );
        let line = Throughput {
            target: "storvsp",
            stats,
            load_before: Some("2.10".into()),
            load_after: Some("3.50".into()),
        }
        .to_string();
        assert_eq!(
            line,
            "storvsp        431883 inputs,   7080 inputs/s; load average 2.10 before, 3.50 after"
        );
    }
}
