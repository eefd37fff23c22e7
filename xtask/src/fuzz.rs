//! `cargo xtask fuzz [TARGET] [--seconds N] [-- LIBFUZZER_ARGS...]`: the
//! cargo-fuzz targets of `tests/fuzz`.
//!
//! Installs cargo-fuzz if it is missing, then runs `TARGET` (or, with none,
//! every target `cargo fuzz list` names, one after another) for `N` seconds
//! each (default 60). cargo-fuzz needs a nightly compiler: `cargo +nightly`
//! when a nightly toolchain is installed, else the installed toolchain with
//! `RUSTC_BOOTSTRAP=1` (the sanitizer runtimes ship with stable too). Crash
//! artifacts land where cargo-fuzz puts them, `tests/fuzz/artifacts/TARGET/`;
//! the command prints that place and, after a crash, how to replay it.

use crate::util::{self, Error, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The cargo-fuzz project, relative to the workspace root.
const FUZZ_DIR: &str = "tests/fuzz";

/// Seconds per target when `--seconds` is not given.
const DEFAULT_SECONDS: u64 = 60;

/// What `cargo xtask fuzz` was asked to do.
#[derive(Debug, PartialEq)]
struct Options {
    /// The one target to run; `None` runs every target.
    target: Option<String>,
    /// Fuzzing time per target, in seconds.
    seconds: u64,
    /// Arguments after `--`, passed on to libFuzzer.
    libfuzzer_args: Vec<String>,
}

/// Parses the arguments after `fuzz`.
fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        target: None,
        seconds: DEFAULT_SECONDS,
        libfuzzer_args: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let seconds = if arg == "--seconds" {
            Some(
                args.next()
                    .ok_or_else(|| Error::new("`--seconds` needs a value"))?
                    .as_str(),
            )
        } else {
            arg.strip_prefix("--seconds=")
        };
        if let Some(seconds) = seconds {
            options.seconds = match seconds.parse() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(Error::new(format!(
                        "`--seconds` takes a whole number of seconds above 0, got `{seconds}`"
                    )));
                }
            };
        } else if arg == "--" {
            options.libfuzzer_args = args.by_ref().cloned().collect();
        } else if arg.starts_with('-') {
            return Err(Error::new(format!(
                "unknown option `{arg}` to `fuzz` (expected `--seconds N` or `-- LIBFUZZER_ARGS`)"
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
    for target in &targets {
        println!("==> xtask fuzz: {target} for {}s", options.seconds);
        let mut cmd = toolchain.fuzz("run");
        cmd.arg(target)
            .arg("--")
            .arg(format!("-max_total_time={}", options.seconds))
            .args(&options.libfuzzer_args);
        let result = util::run(&mut cmd);
        let artifacts = fuzz_dir.join("artifacts").join(target);
        match result {
            Ok(()) => println!(
                "<== xtask fuzz: {target}: no crash; artifacts (if any) go to {}",
                artifacts.display()
            ),
            Err(err) => {
                eprintln!("<== xtask fuzz: {target} FAILED: {err}");
                report_artifacts(&toolchain, target, &artifacts);
                crashed.push(target.as_str());
            }
        }
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
    println!("xtask fuzz: cargo-fuzz is not installed; installing it");
    util::run(Command::new(util::cargo()).args(["install", "cargo-fuzz", "--locked"]))
        .map_err(|err| err.context("could not install cargo-fuzz"))
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

/// Prints where `target`'s crash artifacts are and how to replay each.
fn report_artifacts(toolchain: &Toolchain, target: &str, dir: &Path) {
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
        replay.arg(target).arg(file);
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
                libfuzzer_args: vec![]
            }
        );
    }

    #[test]
    fn target_seconds_and_passthrough() {
        let options = parse(&args(&["settings", "--seconds", "5", "--", "-jobs=2"])).unwrap();
        assert_eq!(
            options,
            Options {
                target: Some("settings".into()),
                seconds: 5,
                libfuzzer_args: args(&["-jobs=2"]),
            }
        );
        assert_eq!(parse(&args(&["--seconds=7"])).unwrap().seconds, 7);
    }

    #[test]
    fn bad_arguments() {
        assert!(parse(&args(&["--seconds"])).is_err());
        assert!(parse(&args(&["--seconds", "0"])).is_err());
        assert!(parse(&args(&["--seconds", "soon"])).is_err());
        assert!(parse(&args(&["a", "b"])).is_err());
        assert!(parse(&args(&["--verbose"])).is_err());
    }
}
