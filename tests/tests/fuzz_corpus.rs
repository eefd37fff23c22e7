//! Replays every fuzz corpus and regression input through its harness on
//! stable, so CI checks them without a fuzzer.
//!
//! Layout: `fuzz/corpus/TARGET/*` (the kept corpus) and
//! `fuzz/regressions/TARGET/*` (inputs that once crashed). A directory for a
//! target this file does not know fails the test, so a new fuzz target
//! cannot be added without its replay.
//!
//! Each input runs alone, on fresh state: the harnesses reuse guest memory
//! from input to input (see `parastor_tests::scratch`) and promise that an
//! input behaves the same on reused memory as on new; the replay drops the
//! reused memory before every input anyway, so a failure here is the
//! input's own, exactly as a first run in a new process would see it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// The harness for a fuzz target.
fn harness(target: &str) -> Option<fn(&[u8])> {
    match target {
        "disk_ops" => Some(parastor_tests::fuzz_disk::disk_ops),
        "settings" => Some(parastor_vtl2_settings::fuzz::check_blob),
        "nvme_wire" => Some(parastor_tests::fuzz_nvme_wire::nvme_wire),
        "nvme_controller" => Some(parastor_tests::fuzz_nvme::nvme_controller),
        "nvme_driver" => Some(parastor_tests::fuzz_nvme_driver::nvme_driver),
        "scsi_cdb" => Some(parastor_tests::fuzz_scsi::scsi_cdb),
        "storvsp" => Some(parastor_tests::fuzz_storvsp::storvsp),
        "state_restore" => Some(parastor_tests::fuzz_state::state_restore),
        "tcmu_ring" => Some(parastor_tests::fuzz_tcmu::tcmu_ring),
        _ => None,
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every `(target, file)` under `fuzz/<kind>/`.
fn inputs(kind: &str) -> Vec<(String, PathBuf)> {
    let dir = fuzz_dir().join(kind);
    let Ok(targets) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for target in targets {
        let target = target.unwrap();
        if !target.file_type().unwrap().is_dir() {
            continue;
        }
        let name = target.file_name().into_string().unwrap();
        for file in std::fs::read_dir(target.path()).unwrap() {
            let file = file.unwrap();
            if file.file_type().unwrap().is_file() {
                out.push((name.clone(), file.path()));
            }
        }
    }
    out.sort();
    out
}

fn replay(kind: &str) -> usize {
    let all = inputs(kind);
    let mut failures = Vec::new();
    for (target, path) in &all {
        let Some(run) = harness(target) else {
            failures.push(format!(
                "{}: no harness for target `{target}`",
                path.display()
            ));
            continue;
        };
        let data = std::fs::read(path).unwrap();
        parastor_tests::scratch::clear_pool();
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {msg}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} inputs failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    all.len()
}

#[test]
fn corpus_replays() {
    replay("corpus");
    let corpus = inputs("corpus");
    for target in [
        "disk_ops",
        "settings",
        "scsi_cdb",
        "storvsp",
        "state_restore",
        "tcmu_ring",
        "nvme_controller",
        "nvme_driver",
    ] {
        assert!(
            corpus.iter().any(|(t, _)| t == target),
            "the {target} corpus is empty"
        );
    }
}

#[test]
fn regressions_replay() {
    replay("regressions");
}
