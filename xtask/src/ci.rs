//! `cargo xtask ci`: every check CI makes, in order, stopping at the first
//! failure.

use crate::util::{self, Error, Result, format_duration};
use crate::{fence, nostd, vmtest};
use std::time::Instant;

/// One CI step: a short name for the headers and the work itself.
struct Step {
    /// Name shown in `==> xtask ci: NAME` and in a failure.
    name: &'static str,
    /// Runs the step.
    run: fn() -> Result<()>,
}

/// The steps, cheapest and most likely to fail first.
const STEPS: &[Step] = &[
    Step {
        name: "fence",
        run: fence::check,
    },
    Step {
        name: "fmt",
        run: fmt,
    },
    Step {
        name: "clippy",
        run: || {
            util::run(&mut util::cargo_cmd(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        },
    },
    // Plain `cargo test` (not nextest): its closing `test result:` lines are
    // what CI's log reader counts, and it needs nothing installed.
    Step {
        name: "test",
        run: || util::run(&mut util::cargo_cmd(&["test", "--workspace"])),
    },
    // The workspace run above unifies parastor-core's `std` feature on (the
    // paravisor enables it), so core's tests also run alone, on its `spin`
    // locks, the build `no_std` users get.
    Step {
        name: "test core without std",
        run: || util::run(&mut util::cargo_cmd(&["test", "-p", "parastor-core"])),
    },
    Step {
        name: "nostd",
        run: nostd::gate,
    },
    Step {
        name: "nostd --prove-gate",
        run: nostd::prove_gate,
    },
    Step {
        name: "doc",
        run: || {
            let mut cmd = util::cargo_cmd(&["doc", "--workspace", "--no-deps"]);
            cmd.env("RUSTDOCFLAGS", "-D warnings");
            util::run(&mut cmd)
        },
    },
    // Last: QEMU under TCG keeps both cores busy, so the guest runs after
    // everything else rather than beside it. It installs what it needs.
    Step {
        name: "vmtest",
        run: || vmtest::run(&[]),
    },
];

/// Projects with a workspace of their own, which `cargo fmt --all` in the
/// main workspace does not reach.
const SEPARATE_PROJECTS: &[&str] = &["xtask/nostd-gate", "tests/fuzz"];

/// `cargo fmt --all --check`, then the same for each of
/// [`SEPARATE_PROJECTS`] that exists.
fn fmt() -> Result<()> {
    util::run(&mut util::cargo_cmd(&["fmt", "--all", "--check"]))?;
    for project in SEPARATE_PROJECTS {
        let manifest = util::workspace_root().join(project).join("Cargo.toml");
        if manifest.is_file() {
            let mut cmd = util::cargo_cmd(&["fmt", "--all", "--check", "--manifest-path"]);
            cmd.arg(manifest);
            util::run(&mut cmd)?;
        }
    }
    Ok(())
}

/// Runs `cargo xtask ci`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        return Err(Error::new(format!("`ci` takes no arguments, got `{arg}`")));
    }
    let start = Instant::now();
    let mut times = Vec::with_capacity(STEPS.len());
    for step in STEPS {
        println!("==> xtask ci: {}", step.name);
        let step_start = Instant::now();
        let result = (step.run)();
        let elapsed = format_duration(step_start.elapsed());
        if let Err(err) = result {
            println!("<== xtask ci: {} FAILED after {elapsed}", step.name);
            return Err(err.context(format!("ci step `{}` failed after {elapsed}", step.name)));
        }
        println!("<== xtask ci: {} passed in {elapsed}", step.name);
        times.push((step.name, elapsed));
    }
    println!(
        "==> xtask ci: all {} steps passed in {}",
        STEPS.len(),
        format_duration(start.elapsed())
    );
    for (name, elapsed) in times {
        println!("    {name:<20} {elapsed:>10}");
    }
    Ok(())
}
