//! `cargo xtask bench [NAME...]`: the benchmarks.
//!
//! The benchmarks live in the `parastor-bench` binary of `parastor-tests`,
//! which chooses what to run from its arguments and reports each result as a
//! ratio against a reference measured in the same run. This command builds it
//! in release mode and passes the names through; no name means `all`.

use crate::util::{self, Result};

/// Runs `cargo xtask bench`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut cmd = util::cargo_cmd(&[
        "run",
        "--release",
        "-p",
        "parastor-tests",
        "--bin",
        "parastor-bench",
        "--",
    ]);
    if args.is_empty() {
        cmd.arg("all");
    } else {
        cmd.args(args);
    }
    util::run(&mut cmd)
}
