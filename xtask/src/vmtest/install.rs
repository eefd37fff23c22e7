//! What the guest tests need from Debian's registry, installed or fetched
//! idempotently and without questions (`cargo xtask vmtest` runs as root).
//!
//! - QEMU 10 (`qemu-system-x86` from bookworm-backports, with
//!   `--no-install-recommends`) is *installed* on the host: bookworm's own
//!   7.2 would remove the machine's preinstalled `qemu-utils` 10. The
//!   backports suite is added as its own sources entry, signed by the Debian
//!   archive keyring.
//! - The guest's packages are *downloaded and unpacked*, never installed:
//!   the 6.1 kernel (the package `linux-image-amd64` depends on, so the ABI
//!   number is never written down here), busybox-static and the guest tools.
//!   Their library packages are what `apt-get install --simulate` would add
//!   to this host; libraries the host already has are copied from the host
//!   when the initramfs is built.
//!
//! Everything lands under `target/vmtest/`, each stage behind a stamp file
//! that names what it holds, so a second run reuses it without touching the
//! network. `rm -rf target/vmtest` starts over (for a newer kernel, say).

use super::Timings;
use crate::util::{self, Error, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The sources entry that makes bookworm-backports' QEMU visible to apt.
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/parastor-vmtest-backports.sources";

/// Its text (deb822 format).
const BACKPORTS_ENTRY: &str = "\
# Added by `cargo xtask vmtest` (parastor): QEMU 10 for the guest tests.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// The lowest QEMU major version the harness accepts.
const QEMU_MAJOR: u32 = 10;

/// The packages whose programs go into the guest. Their binaries come from
/// these debs even when the host has the package installed, so the guest
/// always runs the same tools.
pub(crate) const GUEST_PACKAGES: &[&str] = &[
    "busybox-static",
    "sg3-utils",
    "libiscsi-bin",
    "cryptsetup-bin",
    "fio",
    "nvme-cli",
    // For `scsi_id`: what udev would name /dev/disk/by-id/* (no udev runs
    // in the guest).
    "udev",
    // mkfs.ext4 (busybox's mke2fs makes ext2 only).
    "e2fsprogs",
];

/// The unpacked guest packages.
#[derive(Debug, Clone)]
pub(crate) struct GuestPackages {
    /// Root of the unpacked tool packages (busybox at `bin/busybox`).
    pub(crate) tools: PathBuf,
    /// Root of the unpacked kernel package.
    pub(crate) kernel_root: PathBuf,
    /// The kernel release, e.g. `6.1.0-57-amd64`.
    pub(crate) kernel_release: String,
}

impl GuestPackages {
    /// The kernel image to boot.
    pub(crate) fn vmlinuz(&self) -> PathBuf {
        self.kernel_root
            .join("boot")
            .join(format!("vmlinuz-{}", self.kernel_release))
    }

    /// The kernel's module directory (`lib/modules/RELEASE`).
    pub(crate) fn modules_dir(&self) -> PathBuf {
        self.kernel_root
            .join("lib/modules")
            .join(&self.kernel_release)
    }

    /// The static busybox that builds the guest (and runs `depmod`).
    pub(crate) fn busybox(&self) -> PathBuf {
        self.tools.join("bin/busybox")
    }
}

/// Installs QEMU if needed and fetches + unpacks the guest packages into
/// `dir` if they are not there yet. Returns the QEMU binary and the
/// packages.
pub(crate) fn install(dir: &Path, timings: &mut Timings) -> Result<(PathBuf, GuestPackages)> {
    let start = Instant::now();
    let mut apt = Apt::default();
    let qemu = ensure_qemu(&mut apt)?;
    timings.record("QEMU (check or install)", start.elapsed());
    let packages = ensure_guest_packages(dir, &mut apt, timings)?;
    Ok((qemu, packages))
}

/// apt, with `apt-get update` run at most once per harness run and only
/// when something has to be fetched (the machine's lists may be months old:
/// the kernel ABI moves with every security update).
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    /// `apt-get ARGS`, non-interactive.
    fn get(&mut self, args: &[&str], cwd: Option<&Path>) -> Result<()> {
        self.update()?;
        let mut cmd = apt_get();
        cmd.args(args);
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        util::run(&mut cmd)
    }

    /// `apt-get update`, once.
    fn update(&mut self) -> Result<()> {
        if !self.updated {
            ensure_root("refresh apt's package lists")?;
            println!("vmtest: apt-get update");
            util::run(apt_get().args(["-q", "update"]))?;
            self.updated = true;
        }
        Ok(())
    }

    /// The stdout of `args` (an apt query), after the lists are fresh.
    fn query(&mut self, program: &str, args: &[&str]) -> Result<String> {
        self.update()?;
        output(Command::new(program).args(args))
    }
}

/// `apt-get` without prompts, waiting a while for another apt or dpkg
/// (an unattended upgrade) to finish rather than failing at once.
fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-o", "DPkg::Lock::Timeout=300"]);
    cmd
}

/// Fails unless this process runs as root (installing needs it).
fn ensure_root(what: &str) -> Result<()> {
    let uid = output(Command::new("id").arg("-u"))?;
    if uid.trim() == "0" {
        Ok(())
    } else {
        Err(Error::new(format!(
            "vmtest must run as root to {what} (uid is {})",
            uid.trim()
        )))
    }
}

/// Runs `cmd` and returns its stdout; fails on a non-zero exit, showing
/// its stderr.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| util::spawn_error(cmd, &e))?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "`{}` failed ({}): {}",
            util::display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| Error::new(format!("`{}` printed non-UTF-8 text", util::display(cmd))))
}

/// The major version in `qemu-system-x86_64 --version`'s first line
/// (`QEMU emulator version 10.0.2 (Debian ...)`).
fn qemu_major(version_text: &str) -> Option<u32> {
    let line = version_text.lines().next()?;
    let version = line.split("version ").nth(1)?;
    version.split('.').next()?.trim().parse().ok()
}

/// The QEMU binary, installed from bookworm-backports when missing or older
/// than [`QEMU_MAJOR`].
fn ensure_qemu(apt: &mut Apt) -> Result<PathBuf> {
    let qemu = PathBuf::from("qemu-system-x86_64");
    let installed = Command::new(&qemu)
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| qemu_major(&String::from_utf8_lossy(&out.stdout)));
    if installed.is_some_and(|major| major >= QEMU_MAJOR) {
        return Ok(qemu);
    }
    ensure_root("install QEMU")?;
    println!("vmtest: installing qemu-system-x86 from bookworm-backports");
    if fs::read_to_string(BACKPORTS_SOURCES).ok().as_deref() != Some(BACKPORTS_ENTRY) {
        fs::write(BACKPORTS_SOURCES, BACKPORTS_ENTRY)
            .map_err(|e| Error::new(format!("writing {BACKPORTS_SOURCES}: {e}")))?;
        // The new suite's list must be fetched even if lists were fresh.
        apt.updated = false;
    }
    apt.get(
        &[
            "-q",
            "-y",
            "--no-install-recommends",
            "-t",
            "bookworm-backports",
            "install",
            "qemu-system-x86",
        ],
        None,
    )?;
    let text = output(Command::new(&qemu).arg("--version"))?;
    match qemu_major(&text) {
        Some(major) if major >= QEMU_MAJOR => Ok(qemu),
        _ => Err(Error::new(format!(
            "QEMU {QEMU_MAJOR} or newer is needed, installed is: {}",
            text.lines().next().unwrap_or("?")
        ))),
    }
}

/// The kernel package `linux-image-amd64` points at, from
/// `apt-cache depends linux-image-amd64` (`  Depends: linux-image-6.1.0-57-amd64`).
fn kernel_package(depends: &str) -> Option<&str> {
    depends.lines().find_map(|line| {
        let name = line.trim().strip_prefix("Depends:")?.trim();
        name.strip_prefix("linux-image-")
            .filter(|release| release.starts_with(|c: char| c.is_ascii_digit()))
            .map(|_| name)
    })
}

/// The packages `apt-get --simulate install` would newly install (`Inst
/// NAME (VERSION ...)`; upgrades, `Inst NAME [OLD] (NEW ...)`, are left out:
/// the host's version serves).
fn new_packages(simulation: &str) -> Vec<&str> {
    simulation
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("Inst ")?;
            let (name, after) = rest.split_once(' ')?;
            after.starts_with('(').then_some(name)
        })
        .collect()
}

/// The contents of stamp file `path`, if any.
fn stamp(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// `fs::write` with the path in the error.
pub(crate) fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    fs::write(path, data).map_err(|e| Error::new(format!("writing {}: {e}", path.display())))
}

/// Removes `dir` (if present) and creates it empty.
pub(crate) fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)
            .map_err(|e| Error::new(format!("removing {}: {e}", dir.display())))?;
    }
    fs::create_dir_all(dir).map_err(|e| Error::new(format!("creating {}: {e}", dir.display())))
}

/// Downloads and unpacks the guest packages under `dir` unless the stamps
/// say they are there.
///
/// Layout: `debs/` (the .deb files; stamp `debs/.complete` lists them),
/// `tools/` (the tool packages unpacked together; stamp `tools/.unpacked`),
/// `kernel/` (the kernel package, with busybox depmod's `modules.dep`;
/// stamp `kernel/.release` holds the release).
fn ensure_guest_packages(
    dir: &Path,
    apt: &mut Apt,
    timings: &mut Timings,
) -> Result<GuestPackages> {
    let debs = dir.join("debs");
    let tools = dir.join("tools");
    let kernel_root = dir.join("kernel");
    let debs_stamp = debs.join(".complete");
    let tools_stamp = tools.join(".unpacked");
    let kernel_stamp = kernel_root.join(".release");

    let start = Instant::now();
    let deb_list = match stamp(&debs_stamp) {
        Some(list) => list,
        None => download(&debs, apt)?,
    };
    timings.record("guest debs (apt update, download)", start.elapsed());
    let start = Instant::now();
    if stamp(&tools_stamp).as_deref() != Some(deb_list.as_str()) {
        println!("vmtest: unpacking the guest packages");
        fresh_dir(&tools)?;
        for deb in deb_list.lines().filter(|d| !d.starts_with("linux-image-")) {
            dpkg_x(&debs.join(deb), &tools)?;
        }
        write(&tools_stamp, &deb_list)?;
    }
    let kernel_deb = deb_list
        .lines()
        .find(|d| d.starts_with("linux-image-"))
        .ok_or_else(|| Error::new(format!("{} names no kernel", debs_stamp.display())))?;
    let release = match stamp(&kernel_stamp) {
        Some(release) if kernel_root.join("lib/modules").join(&release).is_dir() => release,
        _ => {
            println!("vmtest: unpacking {kernel_deb}");
            fresh_dir(&kernel_root)?;
            dpkg_x(&debs.join(kernel_deb), &kernel_root)?;
            let release = only_module_dir(&kernel_root.join("lib/modules"))?;
            // Debian's package ships no modules.dep; busybox writes it.
            util::run(
                Command::new(tools.join("bin/busybox"))
                    .args(["depmod", "-b"])
                    .arg(&kernel_root)
                    .arg(&release),
            )?;
            write(&kernel_stamp, &release)?;
            release
        }
    };
    timings.record("unpack debs, depmod", start.elapsed());
    let packages = GuestPackages {
        tools,
        kernel_root,
        kernel_release: release,
    };
    for needed in [
        packages.vmlinuz(),
        packages.modules_dir().join("modules.dep"),
    ] {
        if !needed.is_file() {
            return Err(Error::new(format!(
                "{} is missing (remove {} to fetch again)",
                needed.display(),
                dir.display()
            )));
        }
    }
    Ok(packages)
}

/// Fetches the kernel, the guest packages and the libraries they add into
/// a fresh `debs`; returns the stamp text (one .deb file name a line).
fn download(debs: &Path, apt: &mut Apt) -> Result<String> {
    ensure_root("download the guest packages")?;
    let depends = apt.query("apt-cache", &["depends", "linux-image-amd64"])?;
    let kernel = kernel_package(&depends).ok_or_else(|| {
        Error::new(format!(
            "`apt-cache depends linux-image-amd64` names no linux-image-<release> package:\n{depends}"
        ))
    })?;
    let mut simulate = vec!["-s", "-q", "install", "--no-install-recommends"];
    simulate.extend(GUEST_PACKAGES);
    let simulation = apt.query("apt-get", &simulate)?;
    let mut wanted: Vec<&str> = vec![kernel];
    wanted.extend(GUEST_PACKAGES);
    for name in new_packages(&simulation) {
        if !wanted.contains(&name) {
            wanted.push(name);
        }
    }
    println!(
        "vmtest: downloading {} packages: {}",
        wanted.len(),
        wanted.join(" ")
    );
    fresh_dir(debs)?;
    // As root in a directory `_apt` cannot enter, apt would warn that it
    // downloads unsandboxed; say so up front instead.
    let mut args = vec!["-q", "-o", "APT::Sandbox::User=root", "download"];
    args.extend(&wanted);
    apt.get(&args, Some(debs))?;
    let mut files: Vec<String> = fs::read_dir(debs)
        .map_err(|e| Error::new(format!("listing {}: {e}", debs.display())))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".deb"))
        .collect();
    files.sort();
    for name in &wanted {
        if !files.iter().any(|f| f.starts_with(&format!("{name}_"))) {
            return Err(Error::new(format!(
                "`apt-get download` left no .deb for {name} in {}",
                debs.display()
            )));
        }
    }
    // The kernel first, so the stamp names it in a fixed place.
    files.sort_by_key(|f| !f.starts_with("linux-image-"));
    let list = files.join("\n") + "\n";
    write(&debs.join(".complete"), &list)?;
    Ok(list)
}

/// `dpkg -x DEB DIR`.
fn dpkg_x(deb: &Path, dir: &Path) -> Result<()> {
    util::run(Command::new("dpkg").arg("-x").arg(deb).arg(dir))
}

/// The one release directory under `lib/modules` of an unpacked kernel.
fn only_module_dir(modules: &Path) -> Result<String> {
    let mut names: Vec<String> = fs::read_dir(modules)
        .map_err(|e| Error::new(format!("listing {}: {e}", modules.display())))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    match names.len() {
        1 => Ok(names.remove(0)),
        n => Err(Error::new(format!(
            "expected one kernel release under {}, found {n}: {names:?}",
            modules.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_versions() {
        let text = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n\
                    Copyright (c) 2003-2025 Fabrice Bellard";
        assert_eq!(qemu_major(text), Some(10));
        assert_eq!(
            qemu_major("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u18)"),
            Some(7)
        );
        assert_eq!(qemu_major("something else"), None);
        assert_eq!(qemu_major(""), None);
    }

    #[test]
    fn kernel_package_from_apt_cache() {
        let depends = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n";
        assert_eq!(kernel_package(depends), Some("linux-image-6.1.0-57-amd64"));
        // A meta package that depends on something else first.
        let depends =
            "linux-image-amd64\n  Depends: linux-base\n  Depends: linux-image-6.1.0-9-amd64\n";
        assert_eq!(kernel_package(depends), Some("linux-image-6.1.0-9-amd64"));
        assert_eq!(kernel_package("linux-image-amd64\n"), None);
        assert_eq!(
            kernel_package("x\n  Depends: linux-image-amd64-signed\n"),
            None
        );
    }

    #[test]
    fn simulation_lists_new_packages_only() {
        let sim = "\
NOTE: This is only a simulation!
Inst libext2fs2 [1.47.0-2] (1.47.0-2+b2 Debian:12.15/oldstable [amd64]) []
Inst uuid-runtime (2.38.1-5+deb12u3 Debian:12.15/oldstable [amd64])
Inst udev (252.39-1~deb12u2 Debian:12.15/oldstable [amd64])
Conf udev (252.39-1~deb12u2 Debian:12.15/oldstable [amd64])
Remv something [1.0]
";
        assert_eq!(new_packages(sim), ["uuid-runtime", "udev"]);
        assert!(new_packages("").is_empty());
    }
}
