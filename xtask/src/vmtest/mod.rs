//! `cargo xtask vmtest [NAME...] [--list] [--shell]`: parastor against real
//! peers (the Linux SCSI initiator through TCMU, sg3_utils, libiscsi's
//! conformance suite, dm-crypt, fio) in a QEMU guest.
//!
//! The steps, each reusing what an earlier run left under `target/vmtest/`:
//! 1. [`install`]: QEMU 10 on the host; the Debian 6.1 guest kernel,
//!    busybox-static and the guest tools downloaded and unpacked.
//! 2. The static `parastor` binary for the guest (glibc, `+crt-static`).
//! 3. [`initramfs`]: the guest's root (busybox, the tools and their
//!    libraries, the modules the scenarios need, `/init`, the scenario
//!    scripts) as one newc archive.
//! 4. [`qemu`]: boot under TCG with a deadline; the serial console goes to
//!    `target/vmtest/serial.log`.
//! 5. [`log`]: one `PARASTOR-RESULT` line per scenario; a panic, an oops, an
//!    IOMMU fault in the guest's kernel log, a missing line or the deadline
//!    fails the run. A summary table ends it.
//!
//! The scenarios are in [`scenarios`].

mod cpio;
#[cfg(test)]
mod guest;
mod initramfs;
mod install;
mod log;
mod modules;
mod qemu;
mod scenarios;

use crate::util::{self, Error, Result, format_duration};
use scenarios::{SCENARIOS, Scenario};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Wall time the guest gets to boot and power off, on top of the
/// scenarios' own timeouts (TCG boots take 6 to 13 s; the rest is margin
/// for a loaded machine).
const BOOT_BUDGET: Duration = Duration::from_secs(120);

/// What `cargo xtask vmtest` was asked to do.
#[derive(Debug, PartialEq)]
struct Options {
    /// The scenarios to run (empty: all).
    names: Vec<String>,
    /// `--list`: print the scenarios and stop.
    list: bool,
    /// `--shell`: boot to an interactive shell.
    shell: bool,
}

/// Parses the arguments after `vmtest`.
fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        names: Vec::new(),
        list: false,
        shell: false,
    };
    for arg in args {
        match arg.as_str() {
            "--list" => options.list = true,
            "--shell" => options.shell = true,
            flag if flag.starts_with('-') => {
                return Err(Error::new(format!(
                    "unknown option `{flag}` to `vmtest` (expected --list, --shell or scenario names)"
                )));
            }
            name => {
                if scenarios::find(name).is_none() {
                    let known: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                    return Err(Error::new(format!(
                        "no scenario `{name}` (scenarios: {})",
                        known.join(", ")
                    )));
                }
                if !options.names.iter().any(|n| n == name) {
                    options.names.push(name.to_string());
                }
            }
        }
    }
    Ok(options)
}

/// Wall times of the steps, for the closing summary.
#[derive(Debug, Default)]
pub(crate) struct Timings(Vec<(&'static str, Duration)>);

impl Timings {
    /// Notes that `step` took `took`.
    pub(crate) fn record(&mut self, step: &'static str, took: Duration) {
        self.0.push((step, took));
    }
}

/// `target/vmtest/`.
fn work_dir() -> PathBuf {
    util::workspace_root().join("target").join("vmtest")
}

/// Runs `cargo xtask vmtest`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    if options.list {
        for s in SCENARIOS {
            let only = if s.default_run {
                ""
            } else {
                " (run when named)"
            };
            println!("{:<18} {}{only}", s.name, s.about);
        }
        return Ok(());
    }
    // Registry order, whatever order the names came in.
    let selected: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| {
            if options.names.is_empty() {
                s.default_run
            } else {
                options.names.iter().any(|n| n == s.name)
            }
        })
        .collect();

    let start = Instant::now();
    let dir = work_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::new(format!("creating {}: {e}", dir.display())))?;
    let mut timings = Timings::default();
    let (qemu, packages) = install::install(&dir, &mut timings)?;

    let step = Instant::now();
    let parastor = build_parastor()?;
    timings.record("build static parastor", step.elapsed());

    let step = Instant::now();
    let initrd = dir.join("initramfs.cpio");
    let contents = initramfs::Contents {
        plan: plan(&selected, options.shell),
        scripts: selected.iter().map(|s| (s.name, s.script)).collect(),
        data: selected
            .iter()
            .flat_map(|s| s.data.iter().copied())
            .collect(),
        modules: selected
            .iter()
            .flat_map(|s| s.modules.iter().copied())
            .collect::<BTreeSet<_>>(),
        parastor: &parastor,
    };
    let size = initramfs::build(&packages, &contents, &initrd)?;
    timings.record("initramfs", step.elapsed());
    println!(
        "vmtest: initramfs {} ({:.1} MiB), kernel {}",
        initrd.display(),
        size as f64 / (1 << 20) as f64,
        packages.kernel_release
    );

    let vmlinuz = packages.vmlinuz();
    let disks = make_disks(&dir, &selected)?;
    let extra = qemu_args(&selected, &disks);
    let boot = qemu::Boot {
        qemu: &qemu,
        kernel: &vmlinuz,
        initrd: &initrd,
        extra: extra.iter().map(String::as_str).collect(),
    };
    if options.shell {
        return boot.interactive();
    }
    let deadline = BOOT_BUDGET + selected.iter().map(|s| s.timeout).sum::<Duration>();
    let log_path = dir.join("serial.log");
    let mut outcome = boot.run(&log_path, deadline)?;
    let mut summary = log::summarize(&outcome.serial_log);
    if summary.booted_at.is_none() && !summary.faults.is_empty() && !outcome.timed_out {
        // A panic before /init is the emulation's (TCG on a loaded host),
        // not a scenario's: boot once more, keeping the first log.
        let first = dir.join("serial-first-boot.log");
        std::fs::rename(&log_path, &first)
            .map_err(|e| Error::new(format!("keeping {}: {e}", log_path.display())))?;
        println!(
            "vmtest: the guest panicked before /init ({}); booting again (log kept in {})",
            summary.faults[0],
            first.display()
        );
        timings.record("failed boot", outcome.wall);
        outcome = boot.run(&log_path, deadline)?;
        summary = log::summarize(&outcome.serial_log);
    }
    if let Some(boot_wall) = outcome.boot_wall {
        timings.record("boot to /init", boot_wall);
    }
    timings.record("guest run (boot to power-off)", outcome.wall);
    let verdict = judge(&selected, &summary, &outcome, deadline);
    print_summary(&selected, &summary);
    timings.record("whole vmtest", start.elapsed());
    println!("vmtest timings:");
    for (step, took) in &timings.0 {
        println!("    {step:<32} {:>9}", format_duration(*took));
    }
    verdict.map_err(|problems| {
        Error::new(format!(
            "vmtest failed:\n  {}\nserial log: {}",
            problems.join("\n  "),
            outcome.log_path.display()
        ))
    })
}

/// Creates the selected scenarios' disk images, zero-filled (any old
/// contents dropped), in `DIR/disks`; returns that directory.
fn make_disks(dir: &std::path::Path, selected: &[&Scenario]) -> Result<PathBuf> {
    let disks = dir.join("disks");
    std::fs::create_dir_all(&disks)
        .map_err(|e| Error::new(format!("creating {}: {e}", disks.display())))?;
    // Scenarios that share a device declare the same disks: made once.
    let mut seen = BTreeSet::new();
    for (name, bytes) in selected.iter().flat_map(|s| s.disks.iter()) {
        if !seen.insert(*name) {
            continue;
        }
        let path = disks.join(name);
        let file = std::fs::File::create(&path)
            .and_then(|f| f.set_len(*bytes).map(|()| f))
            .map_err(|e| Error::new(format!("creating disk image {}: {e}", path.display())))?;
        drop(file);
    }
    Ok(disks)
}

/// The selected scenarios' QEMU arguments, `{disks}` replaced by `disks`;
/// scenarios that drive the same devices (identical argument lists) add
/// them once.
fn qemu_args(selected: &[&Scenario], disks: &std::path::Path) -> Vec<String> {
    let dir = disks.display().to_string();
    let mut lists: Vec<&[&str]> = Vec::new();
    for s in selected {
        if !lists.contains(&s.qemu_args) {
            lists.push(s.qemu_args);
        }
    }
    lists
        .into_iter()
        .flatten()
        .map(|a| a.replace("{disks}", &dir))
        .collect()
}

/// `/vmtest/plan`: a `scenario NAME TIMEOUT MODULES` line per scenario,
/// and `shell` first for `--shell`.
fn plan(selected: &[&Scenario], shell: bool) -> String {
    let mut plan = String::new();
    if shell {
        plan.push_str("shell\n");
    }
    for s in selected {
        let modules = if s.modules.is_empty() {
            "-".to_string()
        } else {
            s.modules.join(",")
        };
        plan.push_str(&format!(
            "scenario {} {} {modules}\n",
            s.name,
            s.timeout.as_secs()
        ));
    }
    plan
}

/// The run's verdict: every problem found, or none.
fn judge(
    selected: &[&Scenario],
    summary: &log::LogSummary,
    outcome: &qemu::Outcome,
    deadline: Duration,
) -> std::result::Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if outcome.timed_out {
        problems.push(format!(
            "the guest did not power off within {} (QEMU killed)",
            format_duration(deadline)
        ));
    }
    if summary.booted_at.is_none() {
        problems.push("the guest's /init never started".to_string());
    }
    for s in selected {
        match summary.results.iter().filter(|r| r.name == s.name).count() {
            0 => problems.push(format!("{}: no result line", s.name)),
            1 => {}
            n => problems.push(format!("{}: {n} result lines (expected one)", s.name)),
        }
    }
    for r in &summary.results {
        if !r.passed {
            let why: Vec<&str> = summary
                .failures
                .iter()
                .filter(|(name, _)| *name == r.name)
                .map(|(_, message)| message.as_str())
                .collect();
            problems.push(if why.is_empty() {
                format!("{}: failed", r.name)
            } else {
                format!("{}: failed: {}", r.name, why.join("; "))
            });
        }
        if !selected.iter().any(|s| s.name == r.name) {
            problems.push(format!("{}: a result for a scenario not run", r.name));
        }
    }
    for fault in &summary.faults {
        problems.push(format!("guest kernel: {fault}"));
    }
    if !outcome.timed_out && summary.done_at.is_none() && !selected.is_empty() {
        problems.push("the guest stopped before its closing marker (crash?)".to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The table: scenario, result, time, figures.
fn print_summary(selected: &[&Scenario], summary: &log::LogSummary) {
    println!("vmtest summary:");
    println!(
        "    {:<18} {:<7} {:>8}  figures",
        "scenario", "result", "time"
    );
    for s in selected {
        match summary.results.iter().find(|r| r.name == s.name) {
            Some(r) => {
                let figures: Vec<String> = r
                    .figures
                    .iter()
                    .map(|(k, v)| {
                        if v.is_empty() {
                            k.clone()
                        } else {
                            format!("{k}={v}")
                        }
                    })
                    .collect();
                println!(
                    "    {:<18} {:<7} {:>7.1}s  {}",
                    s.name,
                    if r.passed { "pass" } else { "FAIL" },
                    r.seconds,
                    figures.join(" ")
                );
            }
            None => println!("    {:<18} {:<7} {:>8}", s.name, "MISSING", "-"),
        }
    }
}

/// Builds the `parastor` binary for the guest, statically linked against
/// glibc (the guest has the tools' libraries but no Rust runtime concerns
/// should depend on them). The explicit `--target` keeps `+crt-static` off
/// build scripts and proc macros.
fn build_parastor() -> Result<PathBuf> {
    let target = "x86_64-unknown-linux-gnu";
    let mut cmd = util::cargo_cmd(&["build", "--release", "--target", target, "-p", "parastor"]);
    cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");
    util::run(&mut cmd)?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(
            || util::workspace_root().join("target"),
            |dir| util::workspace_root().join(dir),
        );
    let binary = target_dir.join(target).join("release").join("parastor");
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(Error::new(format!(
            "`{}` succeeded but left no {}",
            util::display(&cmd),
            binary.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse(&args(&["dm-crypt", "--shell", "dm-crypt"])).unwrap(),
            Options {
                names: vec!["dm-crypt".into()],
                list: false,
                shell: true
            }
        );
        assert!(parse(&args(&["--list"])).unwrap().list);
        assert!(parse(&args(&[])).unwrap().names.is_empty());
        let err = parse(&args(&["no-such"])).unwrap_err().to_string();
        assert!(err.contains("kernel-fileio"), "{err}");
        assert!(parse(&args(&["--fast"])).is_err());
    }

    #[test]
    fn disk_images_are_made_fresh_and_named_in_the_qemu_arguments() {
        let nvme = scenarios::find("nvme-vfio").expect("nvme-vfio is registered");
        let dir = std::env::temp_dir().join(format!("vmtest-disks-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("disks")).unwrap();
        // Old contents must go: each run starts from zeros.
        std::fs::write(dir.join("disks/nvme-vfio-ns1.img"), b"stale").unwrap();
        let disks = make_disks(&dir, &[nvme]).unwrap();
        for (name, bytes) in nvme.disks {
            let data = std::fs::read(disks.join(name)).unwrap();
            assert_eq!(data.len() as u64, *bytes, "{name}");
            assert!(data.iter().all(|b| *b == 0), "{name} is zero-filled");
        }
        let perf = scenarios::find("nvme-perf").expect("nvme-perf is registered");
        assert_eq!(
            qemu_args(&[nvme, perf], &disks),
            qemu_args(&[nvme], &disks),
            "one NVMe controller for both scenarios"
        );
        let args = qemu_args(&[nvme], &disks);
        let ns1 = format!("file={}/nvme-vfio-ns1.img,", disks.display());
        assert!(args.iter().any(|a| a.starts_with(&ns1)), "{args:?}");
        assert!(args.iter().all(|a| !a.contains("{disks}")), "{args:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn outcome(timed_out: bool) -> qemu::Outcome {
        qemu::Outcome {
            serial_log: String::new(),
            log_path: PathBuf::from("serial.log"),
            wall: Duration::from_secs(30),
            boot_wall: None,
            timed_out,
        }
    }

    #[test]
    fn verdicts() {
        let selected = [
            scenarios::find("kernel-fileio").unwrap(),
            scenarios::find("dm-crypt").unwrap(),
        ];
        let deadline = Duration::from_secs(60);
        let good = "PARASTOR-BOOTED 5.0\n\
                    PARASTOR-RESULT kernel-fileio pass 20.0 passed=93\n\
                    PARASTOR-RESULT dm-crypt pass 5.0\n\
                    PARASTOR-DONE 31.0\n";
        assert_eq!(
            judge(&selected, &log::summarize(good), &outcome(false), deadline),
            Ok(())
        );
        let problems = |text: &str, timed_out: bool| {
            judge(
                &selected,
                &log::summarize(text),
                &outcome(timed_out),
                deadline,
            )
            .unwrap_err()
        };
        // A missing result, and no closing marker.
        let p = problems(
            "PARASTOR-BOOTED 5.0\nPARASTOR-RESULT dm-crypt pass 5.0\n",
            false,
        );
        assert!(
            p.iter().any(|p| p == "kernel-fileio: no result line"),
            "{p:?}"
        );
        assert!(p.iter().any(|p| p.contains("closing marker")), "{p:?}");
        // A failure with its reason, a fault, the deadline.
        let text = format!(
            "{good}[dm-crypt] FAIL: mismatch\nPARASTOR-RESULT dm-crypt fail 1.0\n\
             PARASTOR-DMESG DMAR: [DMA Read NO_PASID] Request device [00:03.0] fault addr 0x0\n"
        );
        let p = problems(&text, true);
        assert!(p.iter().any(|p| p == "dm-crypt: failed: mismatch"), "{p:?}");
        assert!(
            p.iter()
                .any(|p| p == "dm-crypt: 2 result lines (expected one)"),
            "{p:?}"
        );
        assert!(p.iter().any(|p| p.starts_with("guest kernel: ")), "{p:?}");
        assert!(p.iter().any(|p| p.contains("did not power off")), "{p:?}");
        // No boot at all.
        let p = problems("", false);
        assert!(p.iter().any(|p| p.contains("never started")), "{p:?}");
    }

    #[test]
    fn plans() {
        let fileio = scenarios::find("kernel-fileio").unwrap();
        let text = plan(&[fileio], true);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("shell"));
        let line = lines.next().unwrap();
        assert!(
            line.starts_with("scenario kernel-fileio 120 configfs,"),
            "{line}"
        );
        assert_eq!(lines.next(), None);
    }
}
