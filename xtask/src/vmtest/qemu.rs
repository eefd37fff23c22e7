//! Booting the guest: the boot line that works on this machine kind (TCG —
//! the machine's KVM is a PVM hypervisor a stock kernel hangs under —, q35
//! with the emulated VT-d for VFIO, serial console), under a deadline.

use super::log;
use crate::util::{self, Error, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

/// What to boot.
pub(crate) struct Boot<'a> {
    /// `qemu-system-x86_64`.
    pub(crate) qemu: &'a Path,
    /// The kernel image.
    pub(crate) kernel: &'a Path,
    /// The initramfs.
    pub(crate) initrd: &'a Path,
    /// Extra arguments (the scenarios' devices).
    pub(crate) extra: Vec<&'a str>,
}

impl Boot<'_> {
    /// The QEMU command; `serial` is `-serial`'s value.
    fn command(&self, serial: &str) -> Command {
        let mut cmd = Command::new(self.qemu);
        cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2G"])
            .args(["-nic", "none", "-display", "none", "-no-reboot"])
            .args(["-machine", "q35,kernel-irqchip=split"])
            .args(["-device", "intel-iommu,intremap=on,caching-mode=on"])
            .arg("-kernel")
            .arg(self.kernel)
            .arg("-initrd")
            .arg(self.initrd)
            // `no_timer_check`: on a loaded host TCG can be too slow for
            // the kernel's check that the timer interrupt arrives through
            // the remapped IO-APIC, which then panics ("timer doesn't
            // work through Interrupt-remapped IO-APIC"); seen here with a
            // parallel build running.
            .args([
                "-append",
                "console=ttyS0 intel_iommu=on quiet panic=-1 no_timer_check",
                "-serial",
                serial,
            ])
            .args(&self.extra);
        cmd
    }

    /// Boots to the interactive shell, the serial console on this
    /// terminal (`-serial mon:stdio`: Ctrl-A X quits, Ctrl-A C is QEMU's
    /// monitor). No deadline.
    pub(crate) fn interactive(&self) -> Result<()> {
        let mut cmd = self.command("mon:stdio");
        println!("vmtest: {}", util::display(&cmd));
        util::run(&mut cmd)
    }

    /// Boots with the serial console in `log_path` and waits at most
    /// `deadline` for QEMU to exit (it does when the guest powers off or
    /// panics), printing each result line as it appears. Returns the log's
    /// text; a missed deadline kills QEMU and says so in `timed_out`.
    pub(crate) fn run(&self, log_path: &Path, deadline: Duration) -> Result<Outcome> {
        // Create the log first: QEMU opens it for writing, and the poll
        // below reads it from the start.
        fs::write(log_path, b"")
            .map_err(|e| Error::new(format!("creating {}: {e}", log_path.display())))?;
        let serial = format!("file:{}", log_path.display());
        let mut cmd = self.command(&serial);
        println!("vmtest: {}", util::display(&cmd));
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|e| util::spawn_error(&cmd, &e))?;
        let mut seen = 0usize;
        let mut booted = None;
        let timed_out = loop {
            let exited = child
                .try_wait()
                .map_err(|e| Error::new(format!("waiting for QEMU: {e}")))?;
            let text = fs::read_to_string(log_path).unwrap_or_default();
            seen = report_progress(&text, seen, start, &mut booted);
            if let Some(status) = exited {
                if !status.success() {
                    println!("vmtest: QEMU exited with {status}");
                }
                break false;
            }
            if start.elapsed() > deadline {
                kill(&mut child);
                break true;
            }
            thread::sleep(Duration::from_millis(200));
        };
        let serial_log = fs::read_to_string(log_path)
            .map_err(|e| Error::new(format!("reading {}: {e}", log_path.display())))?;
        Ok(Outcome {
            serial_log,
            log_path: log_path.to_path_buf(),
            wall: start.elapsed(),
            boot_wall: booted,
            timed_out,
        })
    }
}

/// Prints the result lines in `text` past byte `seen` (whole lines only)
/// and notes when the guest's `/init` started; returns the new `seen`.
fn report_progress(
    text: &str,
    seen: usize,
    start: Instant,
    booted: &mut Option<Duration>,
) -> usize {
    let Some(new) = text.get(seen..) else {
        return seen;
    };
    let Some(end) = new.rfind('\n') else {
        return seen;
    };
    for line in new[..end].lines() {
        if line.contains("PARASTOR-BOOTED ") && booted.is_none() {
            *booted = Some(start.elapsed());
            println!(
                "vmtest: guest /init started after {}",
                util::format_duration(start.elapsed())
            );
        } else if line.contains("=== vmtest: scenario ") {
            println!("vmtest: {}", line.trim_start_matches("=== vmtest: ").trim());
        } else if let Some(result) = log::parse_result(line) {
            println!(
                "vmtest: {} {} in {:.1}s",
                result.name,
                if result.passed { "passed" } else { "FAILED" },
                result.seconds
            );
        }
    }
    seen + end + 1
}

/// Ends QEMU after a missed deadline.
fn kill(child: &mut Child) {
    // Already gone is fine: then it exited just now.
    let _ = child.kill();
    let _ = child.wait();
}

/// What a boot gave.
pub(crate) struct Outcome {
    /// The whole serial log.
    pub(crate) serial_log: String,
    /// Where it is kept.
    pub(crate) log_path: PathBuf,
    /// Wall time from QEMU's start to its exit.
    pub(crate) wall: Duration,
    /// Wall time until the guest's `/init` started.
    pub(crate) boot_wall: Option<Duration>,
    /// QEMU was killed at the deadline.
    pub(crate) timed_out: bool,
}
