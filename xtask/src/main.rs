//! parastor's developer and CI tasks, run as `cargo xtask <command>`.
//!
//! The commands are plain Rust over `std::process::Command`, so every task a
//! developer runs by hand is exactly the one CI runs. `cargo xtask help`
//! lists them; [`USAGE`] is the same text.

mod bench;
mod ci;
mod fence;
mod fuzz;
mod nostd;
mod util;
mod vmtest;

use std::process::ExitCode;
use util::Error;

/// What `cargo xtask help` prints.
const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  ci                        everything CI checks, in order, stopping at the first failure:
                            the unsafe fence (only paravisor/sys has unsafe, every
                            other crate inherits the workspace lints), fmt, clippy,
                            test, the no_std gate (and its proof), doc, vmtest
  nostd                     build the no_std gate binary (xtask/nostd-gate), which links
                            every no_std crate, and run it
  nostd --prove-gate        show that the gate catches std: build a copy of it that
                            depends on a std crate and succeed only if that build fails
  bench [NAME...]           run the benchmarks (parastor-bench, release build);
                            no NAME runs `all`
  fuzz [TARGET] [--seconds N] [--sanitizer S] [-- LIBFUZZER_ARGS...]
                            run cargo-fuzz targets of tests/fuzz for N seconds each
                            (default 60); no TARGET runs every target in turn; S is the
                            cargo-fuzz sanitizer (default none; `address` for ASan);
                            ends with each target's inputs per second
  vmtest [NAME...]          run scenarios in a QEMU guest (TCG): parastor against the
                            Linux SCSI initiator (TCMU + tcm_loop), sg3_utils, libiscsi's
                            conformance suite, dm-crypt, fio; no NAME runs them all.
                            Installs QEMU 10 (bookworm-backports) and fetches the guest
                            kernel and tools into target/vmtest/ on first use (root)
  vmtest --list             name the scenarios
  vmtest --shell [NAME...]  boot the guest to a shell on this terminal (Ctrl-A X quits),
                            with the scenarios' modules loaded and scripts in /vmtest
  help                      print this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "ci" => ci::run(rest),
        "nostd" => nostd::run(rest),
        "bench" => bench::run(rest),
        "fuzz" => fuzz::run(rest),
        "vmtest" => vmtest::run(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprintln!("xtask: unknown command `{other}`\n");
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    report(result)
}

/// Prints `result`'s error, if any, and turns it into the process's exit code.
fn report(result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err}");
            ExitCode::FAILURE
        }
    }
}
