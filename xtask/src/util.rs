//! What every command shares: the error type, the workspace's location, and
//! running a child process with a readable failure.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A task failure, carrying the whole message shown to the user.
#[derive(Debug)]
pub(crate) struct Error(String);

impl Error {
    /// An error with the message `msg`.
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }

    /// This error with `context` in front: `"{context}: {self}"`.
    pub(crate) fn context(self, context: impl fmt::Display) -> Self {
        Self(format!("{context}: {}", self.0))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The result of a task.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// The workspace root: the directory above this crate.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo that runs this xtask (`$CARGO`), so every step uses the same
/// toolchain; plain `cargo` from `PATH` when run some other way.
pub(crate) fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A `cargo` command (see [`cargo`]) with `args`, run in the workspace root.
pub(crate) fn cargo_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.args(args).current_dir(workspace_root());
    cmd
}

/// `cmd` as a shell-like line, for messages: `cargo clippy --workspace`,
/// with the environment variables it sets in front
/// (`RUSTDOCFLAGS='-D warnings' cargo doc`).
///
/// The program is shown by its file name (`cargo`, not the toolchain path).
pub(crate) fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            let value = quote(&value.to_string_lossy());
            words.push(format!("{}={value}", key.to_string_lossy()));
        }
    }
    let program = Path::new(cmd.get_program());
    words.push(
        program
            .file_name()
            .unwrap_or(program.as_os_str())
            .to_string_lossy()
            .into_owned(),
    );
    words.extend(cmd.get_args().map(|arg| quote(&arg.to_string_lossy())));
    words.join(" ")
}

/// `word`, in single quotes if a shell would otherwise split or expand it.
fn quote(word: &str) -> String {
    if word.is_empty() || word.contains([' ', '"', '\'', '$', '*', '?', '\\']) {
        format!("'{word}'")
    } else {
        word.to_string()
    }
}

/// Runs `cmd` with inherited stdio; fails unless it exits successfully.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().map_err(|err| spawn_error(cmd, &err))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::new(format!("`{}` failed ({status})", display(cmd))))
    }
}

/// The error for a `cmd` that could not be started at all.
pub(crate) fn spawn_error(cmd: &Command, err: &std::io::Error) -> Error {
    Error::new(format!(
        "could not start `{}`: {err} (is `{}` installed and on PATH?)",
        display(cmd),
        cmd.get_program().to_string_lossy()
    ))
}

/// `d` for humans: `4.2s`, `3m07.5s`.
pub(crate) fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let minutes = (secs / 60.0).floor();
        format!("{minutes:.0}m{:04.1}s", secs - minutes * 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(format_duration(Duration::from_millis(187_500)), "3m07.5s");
    }

    #[test]
    fn command_lines() {
        let mut cmd = Command::new("/some/toolchain/bin/cargo");
        cmd.args(["clippy", "--", "-D", "warnings", "a b"]);
        assert_eq!(display(&cmd), "cargo clippy -- -D warnings 'a b'");
        cmd.env("RUSTDOCFLAGS", "-D warnings").env_remove("CARGO");
        assert_eq!(
            display(&cmd),
            "RUSTDOCFLAGS='-D warnings' cargo clippy -- -D warnings 'a b'"
        );
    }

    #[test]
    fn root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("xtask").is_dir());
    }
}
