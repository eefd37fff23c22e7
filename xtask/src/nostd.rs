//! `cargo xtask nostd`: the `no_std` gate.
//!
//! `xtask/nostd-gate` is a `#![no_std]` binary with its own panic handler,
//! allocator and C `main` that links every `no_std` crate of the workspace.
//! If any of them pulls `std` into the graph, the gate stops building. The
//! gate is its own workspace (so features enabled by the std crates of the
//! main workspace cannot mask a problem), built into `target/nostd-gate` (so
//! it does not invalidate the main build), and then run: it exits 0 only if
//! its small checks of the crates pass.
//!
//! `--prove-gate` shows the gate has teeth: it builds a copy of the gate that
//! also references a crate using `std`, and succeeds only if that build fails
//! for the reason the gate exists.

use crate::util::{self, Error, Result};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The gate crate, relative to the workspace root.
const GATE_DIR: &str = "xtask/nostd-gate";

/// The gate's binary (and package) name.
const GATE_NAME: &str = "parastor-nostd-gate";

/// How long the gate binary may run. It does a few microseconds of work; a
/// panic makes it spin forever (see its crate docs), which this turns into
/// an error.
const RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a failed build says when the gate caught `std`: the gate's
/// `#[panic_handler]` and std's are both the `panic_impl` lang item
/// (`error[E0152]: found duplicate lang item `panic_impl``).
const STD_MARKER: &str = "duplicate lang item";

/// Runs `cargo xtask nostd [--prove-gate]`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    match args {
        [] => gate(),
        [flag] if flag == "--prove-gate" => prove_gate(),
        [other, ..] => Err(Error::new(format!(
            "unknown argument `{other}` to `nostd` (expected nothing or `--prove-gate`)"
        ))),
    }
}

/// The gate's own target directory.
fn target_dir() -> PathBuf {
    util::workspace_root().join("target").join("nostd-gate")
}

/// Builds the gate and runs it.
pub(crate) fn gate() -> Result<()> {
    let binary = build_gate()?;
    run_gate(&binary)
}

/// Builds the gate; returns the path of its binary.
fn build_gate() -> Result<PathBuf> {
    let root = util::workspace_root();
    let gate_dir = root.join(GATE_DIR);
    seed_lockfile(&root, &gate_dir)?;
    println!(
        "building the no_std gate ({GATE_DIR}) into {}",
        target_dir().display()
    );
    let manifest = gate_dir.join("Cargo.toml");
    let mut cmd = util::cargo_cmd(&["build", "--manifest-path"]);
    cmd.arg(&manifest).env("CARGO_TARGET_DIR", target_dir());
    util::run(&mut cmd).map_err(|err| {
        err.context(
            "the no_std gate did not build. If the compiler reports `duplicate lang item` \
             or a link error, a crate the gate links (hw, core, vtl2-settings, scsi, vmbus, storvsp) \
             or one of their dependencies pulls in std: make it `#![no_std]` or use the \
             dependency with `default-features = false`",
        )
    })?;
    Ok(target_dir().join("debug").join(GATE_NAME))
}

/// Makes the gate resolve dependencies to the versions in the workspace's
/// `Cargo.lock`, so it checks the very crates the workspace builds.
///
/// The gate's lock file is not tracked; it is replaced by a copy of the
/// workspace's whenever that changes (a copy of the last seed is kept in the
/// target directory to tell), and cargo then drops what the gate does not use
/// and adds what only the gate uses.
fn seed_lockfile(root: &Path, gate_dir: &Path) -> Result<()> {
    let workspace_lock = root.join("Cargo.lock");
    let wanted = match fs::read(&workspace_lock) {
        Ok(lock) => lock,
        // No workspace lock file: cargo resolves the gate on its own.
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(io_error("read", &workspace_lock, &err)),
    };
    let gate_lock = gate_dir.join("Cargo.lock");
    let stamp = target_dir().join("seeded-Cargo.lock");
    if gate_lock.is_file() && fs::read(&stamp).is_ok_and(|seeded| seeded == wanted) {
        return Ok(());
    }
    fs::create_dir_all(target_dir()).map_err(|err| io_error("create", &target_dir(), &err))?;
    fs::write(&gate_lock, &wanted).map_err(|err| io_error("write", &gate_lock, &err))?;
    fs::write(&stamp, &wanted).map_err(|err| io_error("write", &stamp, &err))
}

/// Runs the gate binary; fails unless it exits 0 within [`RUN_TIMEOUT`].
fn run_gate(binary: &Path) -> Result<()> {
    println!("running {}", binary.display());
    let mut cmd = Command::new(binary);
    cmd.stdin(Stdio::null());
    let mut child = cmd.spawn().map_err(|err| util::spawn_error(&cmd, &err))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < RUN_TIMEOUT => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                // Our own child, by handle; a failure to kill means it is gone.
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::new(format!(
                    "the no_std gate binary did not exit within {}s: it most likely panicked \
                     (its panic handler spins, having no way to abort without std or unsafe)",
                    RUN_TIMEOUT.as_secs()
                )));
            }
            Err(err) => {
                return Err(Error::new(format!(
                    "could not wait for the no_std gate binary: {err}"
                )));
            }
        }
    };
    match status.code() {
        Some(0) => {
            println!("the no_std gate built, linked and ran its checks: OK");
            Ok(())
        }
        Some(code) => Err(Error::new(format!(
            "the no_std gate binary exited with code {code}: the check with that code in \
             `enum Failure` of {GATE_DIR}/src/main.rs failed"
        ))),
        None => Err(Error::new(format!(
            "the no_std gate binary was killed ({status})"
        ))),
    }
}

/// Runs `cargo xtask nostd --prove-gate`.
///
/// First builds the real gate (a proof against a gate that does not build
/// proves nothing), then a copy of it in a temporary directory that also
/// links `std-sneak`, a crate without `#![no_std]`, and succeeds only if that
/// copy fails to build with an error that names the std conflict.
pub(crate) fn prove_gate() -> Result<()> {
    build_gate().map_err(|err| err.context("cannot prove the gate"))?;

    let root = util::workspace_root();
    let gate_dir = root.join(GATE_DIR);
    let temp = TempDir::new()?;
    let copy = temp.path.join("gate");
    println!(
        "proving the gate: building a copy that depends on a std crate, in {}",
        copy.display()
    );
    copy_tree(&gate_dir, &copy)?;
    make_std_sneak(&gate_dir, &copy)?;

    let mut cmd = util::cargo_cmd(&["build", "--manifest-path"]);
    // The same target directory: the linked crates are already built there.
    // The copy's package has another name, so its binary cannot overwrite
    // the real gate's.
    cmd.arg(copy.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir());
    let output = cmd.output().map_err(|err| util::spawn_error(&cmd, &err))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        return Err(Error::new(format!(
            "the no_std gate is broken: a copy of it that links a std crate built successfully \
             (`{}`)",
            util::display(&cmd)
        )));
    }
    let caught: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains(STD_MARKER))
        .collect();
    if caught.is_empty() {
        return Err(Error::new(format!(
            "the copy of the gate that links a std crate failed to build, but not with the \
             std conflict the gate exists to catch, so this proves nothing; its output:\n{stderr}"
        )));
    }
    println!("the gate caught std, as it should; the build of the copy failed with:");
    for line in caught {
        println!("    {}", line.trim());
    }
    Ok(())
}

/// Turns the copy of the gate at `copy` into one that links a std crate:
/// renames the package, makes its path dependencies absolute, adds the
/// `std-sneak` crate and a reference to it from the binary.
fn make_std_sneak(gate_dir: &Path, copy: &Path) -> Result<()> {
    let manifest_path = copy.join("Cargo.toml");
    let manifest = read(&manifest_path)?;
    let manifest = absolute_paths(&manifest, gate_dir)?;
    let name_line = format!("name = \"{GATE_NAME}\"");
    if !manifest.contains(&name_line) {
        return Err(Error::new(format!(
            "{GATE_DIR}/Cargo.toml has no `{name_line}` line"
        )));
    }
    let manifest = manifest.replacen(&name_line, &format!("name = \"{GATE_NAME}-prove\""), 1);
    let manifest = manifest.replacen(
        "[dependencies]\n",
        "[dependencies]\nstd-sneak = { path = \"std-sneak\" }\n",
        1,
    );
    if !manifest.contains("std-sneak") {
        return Err(Error::new(format!(
            "{GATE_DIR}/Cargo.toml has no `[dependencies]` table"
        )));
    }
    write(&manifest_path, &manifest)?;

    let main_path = copy.join("src").join("main.rs");
    let mut main = read(&main_path)?;
    main.push_str(
        "\n/// Added by `cargo xtask nostd --prove-gate`: links a crate that uses std.\n\
         #[used]\n\
         static STD_SNEAK: fn() -> usize = std_sneak::argument_count;\n",
    );
    write(&main_path, &main)?;

    let sneak = copy.join("std-sneak");
    fs::create_dir_all(sneak.join("src")).map_err(|err| io_error("create", &sneak, &err))?;
    write(
        &sneak.join("Cargo.toml"),
        "[package]\nname = \"std-sneak\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
         publish = false\n",
    )?;
    write(
        &sneak.join("src").join("lib.rs"),
        "//! A library without `#![no_std]`: what the gate must reject.\n\n\
         /// The number of command-line arguments, from `std::env`.\n\
         pub fn argument_count() -> usize {\n    std::env::args().count()\n}\n",
    )
}

/// `manifest` with every relative `path = "…"` made absolute against `base`.
fn absolute_paths(manifest: &str, base: &Path) -> Result<String> {
    const KEY: &str = "path = \"";
    let mut out = String::with_capacity(manifest.len());
    let mut rest = manifest;
    while let Some(at) = rest.find(KEY) {
        let (before, after) = rest.split_at(at + KEY.len());
        out.push_str(before);
        let end = after
            .find('"')
            .ok_or_else(|| Error::new("unterminated `path = \"` in the gate's Cargo.toml"))?;
        let path = Path::new(&after[..end]);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        };
        let path = path
            .canonicalize()
            .map_err(|err| io_error("find", &path, &err))?;
        let path = path
            .to_str()
            .ok_or_else(|| Error::new(format!("path {} is not valid UTF-8", path.display())))?;
        if path.contains(['"', '\\']) {
            return Err(Error::new(format!(
                "cannot write path {path} into a Cargo.toml"
            )));
        }
        out.push_str(path);
        rest = &after[end..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Copies the directory `from` to `to`, leaving out `target` directories.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).map_err(|err| io_error("create", to, &err))?;
    let entries = fs::read_dir(from).map_err(|err| io_error("read", from, &err))?;
    for entry in entries {
        let entry = entry.map_err(|err| io_error("read", from, &err))?;
        let source = entry.path();
        let dest = to.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(|err| io_error("inspect", &source, &err))?;
        if kind.is_dir() {
            if entry.file_name() != "target" {
                copy_tree(&source, &dest)?;
            }
        } else {
            fs::copy(&source, &dest).map_err(|err| io_error("copy", &source, &err))?;
        }
    }
    Ok(())
}

/// A directory under the system's temporary directory, removed on drop.
struct TempDir {
    /// The directory.
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, empty directory for this process.
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("parastor-prove-gate-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).map_err(|err| io_error("remove", &path, &err))?;
        }
        fs::create_dir_all(&path).map_err(|err| io_error("create", &path, &err))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.path) {
            eprintln!(
                "xtask: warning: could not remove {}: {err}",
                self.path.display()
            );
        }
    }
}

/// Reads the text file `path`.
fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|err| io_error("read", path, &err))
}

/// Writes `text` to `path`.
fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|err| io_error("write", path, &err))
}

/// The error for a failed file operation: "could not VERB PATH: ERR".
fn io_error(verb: &str, path: &Path, err: &io::Error) -> Error {
    Error::new(format!("could not {verb} {}: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_absolute() {
        let base = util::workspace_root().join(GATE_DIR);
        let manifest = "a = { path = \"../../hw\" }\nb = \"1\"\nc = { path = \"../../core\" }\n";
        let root = util::workspace_root().canonicalize().unwrap();
        let expected = format!(
            "a = {{ path = \"{}\" }}\nb = \"1\"\nc = {{ path = \"{}\" }}\n",
            root.join("hw").display(),
            root.join("core").display()
        );
        assert_eq!(absolute_paths(manifest, &base).unwrap(), expected);
    }

    #[test]
    fn missing_path_is_an_error() {
        let base = util::workspace_root().join(GATE_DIR);
        let err = absolute_paths("a = { path = \"no/such/dir\" }", &base).unwrap_err();
        assert!(err.to_string().contains("could not find"), "{err}");
    }
}
