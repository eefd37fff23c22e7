//! `parastor settings`: check, convert and diff the host's VTL2 settings
//! blobs (JSON, protobuf or parastor's postcard form, detected from the
//! bytes) with [`parastor_vtl2_settings`].
//!
//! The work is done by library functions ([`check`], [`convert`],
//! [`diff`]) that return the text or bytes to print, so tests can call them
//! without spawning the binary; [`run`] does the I/O and picks the exit
//! status (0 valid, 1 invalid).

use super::{CliError, stdout_failed};
use clap::{Args, Subcommand, ValueEnum};
use parastor_vtl2_settings::model::{
    Backing, Child, ChildAddress, Controller, DiskParams, PhysicalDevice, PhysicalDeviceKind,
    Protocol, Settings,
};
use parastor_vtl2_settings::read::{self, Format};
use parastor_vtl2_settings::update::{self, Change, ChangeSet};
use parastor_vtl2_settings::{Errors, json_out, postcard, protobuf_out, wire};
use std::fmt::Write as _;
use std::io::{self, Read as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `parastor settings`.
#[derive(Args, Debug)]
#[command(after_help = FORMATS)]
pub struct SettingsArgs {
    /// What to do with the settings.
    #[command(subcommand)]
    pub command: SettingsCommand,
}

/// Shown after `parastor settings --help`.
const FORMATS: &str = "\
Input formats are detected from the bytes: parastor's postcard form (magic \
\\0PSTSET), JSON (first non-blank byte `{`, proto3 JSON as OpenHCL hosts send \
it), otherwise protobuf (package underhill.settings). Errors are printed one \
per line as `Configuration.<Code>: <path>: <message>, <object>`; the exit \
status is 0 when the settings are valid and 1 when they are not.";

/// The `parastor settings` commands.
#[derive(Subcommand, Debug)]
pub enum SettingsCommand {
    /// Validate a settings blob and print the guest-visible topology
    /// (controllers, their LUNs / namespaces / IDE drives, and what backs
    /// each) and the fixed settings, or every error.
    Check {
        /// The settings blob.
        file: PathBuf,
        /// Print one JSON object instead: `{"valid":true,...}` with the
        /// topology, or `{"valid":false,"errors":[...]}`.
        #[arg(long)]
        json: bool,
    },
    /// Write a valid settings blob in another encoding (to standard output
    /// unless `-o` is given). Invalid input is refused with its errors.
    Convert {
        /// The settings blob.
        file: PathBuf,
        /// The encoding to write.
        #[arg(long, value_enum)]
        to: OutputFormat,
        /// Write to this file instead of standard output.
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
    },
    /// Read NEW as a runtime update of OLD and print the change set (LUNs
    /// added or removed, DVD media inserted or ejected), or the runtime
    /// rules it breaks.
    Diff {
        /// The current settings.
        old: PathBuf,
        /// The updated settings.
        new: PathBuf,
    },
}

/// An encoding `parastor settings convert` writes.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// proto3 JSON, as OpenHCL's settings files (one line).
    Json,
    /// protobuf binary (`underhill.settings.Vtl2Settings`).
    Protobuf,
    /// parastor's postcard form of the settings model.
    Postcard,
}

/// What a command found: the text (or bytes) for standard output, and
/// whether the input was valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// `None` when valid; else the one-line summary for standard error.
    pub failure: Option<String>,
}

/// Carries out a `parastor settings` command.
pub fn run(args: SettingsArgs) -> Result<ExitCode, CliError> {
    let outcome = match args.command {
        SettingsCommand::Check { file, json } => check(&file, &load(&file)?, json),
        SettingsCommand::Convert { file, to, output } => {
            let outcome = convert(&file, &load(&file)?, to);
            if let Some(summary) = outcome.failure {
                // The errors go to standard error: standard output may be
                // where the converted blob was expected.
                io::stderr().lock().write_all(&outcome.stdout).ok();
                return Err(CliError::new(summary));
            }
            if let Some(out) = output {
                std::fs::write(&out, &outcome.stdout)
                    .map_err(|e| CliError::new(format!("cannot write {}: {e}", out.display())))?;
                return Ok(ExitCode::SUCCESS);
            }
            outcome
        }
        SettingsCommand::Diff { old, new } => diff(&old, &load(&old)?, &new, &load(&new)?),
    };
    let mut out = io::stdout().lock();
    out.write_all(&outcome.stdout).map_err(stdout_failed)?;
    out.flush().map_err(stdout_failed)?;
    match outcome.failure {
        None => Ok(ExitCode::SUCCESS),
        Some(summary) => Err(CliError::new(summary)),
    }
}

/// Reads a settings blob, at most [`read::MAX_BLOB_LEN`] bytes: a larger
/// file (or a device such as `/dev/zero`) is refused without reading it all.
fn load(path: &Path) -> Result<Vec<u8>, CliError> {
    let cannot = |e: io::Error| CliError::new(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let limit = read::MAX_BLOB_LEN as u64;
    let mut data = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(cannot)?;
    if data.len() as u64 > limit {
        return Err(CliError::new(format!(
            "cannot read {}: larger than the {limit}-byte limit of a settings blob",
            path.display()
        )));
    }
    Ok(data)
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Json => "json",
        Format::Protobuf => "protobuf",
        Format::Postcard => "postcard",
    }
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

fn invalid(path: &Path, errors: &Errors) -> String {
    format!(
        "{}: invalid settings ({})",
        path.display(),
        plural(errors.0.len(), "error")
    )
}

/// The errors, one per line, indented under a summary line.
fn error_lines(summary: &str, errors: &Errors) -> String {
    let mut out = format!("{summary}\n");
    for e in &errors.0 {
        let _ = writeln!(out, "    {e}");
    }
    out
}

/// `parastor settings check`: the topology or the errors of `data` (read
/// from `path`), as text or (`json`) one JSON object.
pub fn check(path: &Path, data: &[u8], json: bool) -> Outcome {
    let format = format_name(read::detect(data));
    match read::read(data) {
        Ok(s) => {
            let stdout = if json {
                let mut v = settings_json(&s);
                if let Json::Obj(fields) = &mut v {
                    fields.insert(0, ("valid", Json::Bool(true)));
                    fields.insert(1, ("format", Json::str(format)));
                }
                v.line()
            } else {
                format!(
                    "{}: valid settings ({format})\n{}",
                    path.display(),
                    topology(&s)
                )
            };
            Outcome {
                stdout: stdout.into_bytes(),
                failure: None,
            }
        }
        Err(errors) => {
            let summary = invalid(path, &errors);
            let stdout = if json {
                Json::Obj(vec![
                    ("valid", Json::Bool(false)),
                    ("format", Json::str(format)),
                    ("errors", errors_json(&errors)),
                ])
                .line()
            } else {
                error_lines(&summary, &errors)
            };
            Outcome {
                stdout: stdout.into_bytes(),
                failure: Some(summary),
            }
        }
    }
}

/// `parastor settings convert`: `data` (read from `path`) in the encoding
/// `to`, or (as text) its errors.
pub fn convert(path: &Path, data: &[u8], to: OutputFormat) -> Outcome {
    match read::read(data) {
        Ok(s) => {
            let stdout = match to {
                OutputFormat::Json => {
                    let mut text = json_out::to_json(&wire::base_from_model(&s));
                    text.push('\n');
                    text.into_bytes()
                }
                OutputFormat::Protobuf => protobuf_out::to_protobuf(&wire::base_from_model(&s)),
                OutputFormat::Postcard => postcard::encode(&s),
            };
            Outcome {
                stdout,
                failure: None,
            }
        }
        Err(errors) => {
            let summary = invalid(path, &errors);
            Outcome {
                stdout: error_lines(&summary, &errors).into_bytes(),
                failure: Some(summary),
            }
        }
    }
}

/// `parastor settings diff`: reads `new` as a runtime update of `old` and
/// describes the change set, or the errors.
pub fn diff(old_path: &Path, old: &[u8], new_path: &Path, new: &[u8]) -> Outcome {
    let current = match read::read(old) {
        Ok(s) => s,
        Err(errors) => {
            let summary = invalid(old_path, &errors);
            return Outcome {
                stdout: error_lines(&summary, &errors).into_bytes(),
                failure: Some(summary),
            };
        }
    };
    match update::read_update(new, &current) {
        Ok((_, changes)) => Outcome {
            stdout: change_lines(&changes).into_bytes(),
            failure: None,
        },
        Err(errors) => {
            let summary = format!(
                "{}: invalid update of {} ({})",
                new_path.display(),
                old_path.display(),
                plural(errors.0.len(), "error")
            );
            Outcome {
                stdout: error_lines(&summary, &errors).into_bytes(),
                failure: Some(summary),
            }
        }
    }
}

// ---- text ----

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Scsi => "SCSI",
        Protocol::Ide => "IDE",
        Protocol::Nvme => "NVMe",
    }
}

fn address_text(a: ChildAddress) -> String {
    match a {
        ChildAddress::ScsiLun(lun) => format!("LUN {lun}"),
        ChildAddress::Ide { channel, drive } => format!("IDE {channel}:{drive}"),
        ChildAddress::NvmeNsid(nsid) => format!("NSID {nsid}"),
    }
}

fn device_text(d: &PhysicalDevice) -> String {
    match d.kind {
        PhysicalDeviceKind::Nvme => format!("NVMe device {} NSID {}", d.instance_id, d.sub_device),
        PhysicalDeviceKind::Vscsi => format!("vSCSI device {} LUN {}", d.instance_id, d.sub_device),
    }
}

fn backing_text(b: &Backing) -> String {
    match b {
        Backing::Empty => "empty".to_owned(),
        Backing::Single(d) => device_text(d),
        Backing::Striped {
            devices,
            chunk_size_kb,
        } => format!(
            "striped over {} devices, chunk {chunk_size_kb} KiB",
            devices.len()
        ),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The parameters of `p` that differ from [`DiskParams::default`], as
/// (name, value) pairs.
fn changed_params(p: &DiskParams) -> Vec<(&'static str, String)> {
    let d = DiskParams::default();
    let mut out = Vec::new();
    let mut flag = |name, v: Option<bool>, default: Option<bool>| {
        if v != default
            && let Some(v) = v
        {
            out.push((name, yes_no(v).to_owned()));
        }
    };
    flag("fua", p.fua, d.fua);
    flag("write cache", p.write_cache, d.write_cache);
    flag("odx", p.odx, d.odx);
    if p.unmap != d.unmap {
        out.push(("unmap", yes_no(p.unmap).to_owned()));
    }
    if p.medium_rotation_rate != d.medium_rotation_rate {
        out.push(("medium rotation rate", p.medium_rotation_rate.to_string()));
    }
    let mut num = |name, v: Option<u64>, default: Option<u64>| {
        if v != default
            && let Some(v) = v
        {
            out.push((name, format!("{v} bytes")));
        }
    };
    num(
        "physical sector size",
        p.physical_sector_size.map(u64::from),
        d.physical_sector_size.map(u64::from),
    );
    num(
        "max transfer length",
        p.max_transfer_length,
        d.max_transfer_length,
    );
    num("disk size", p.size_override, d.size_override);
    out
}

fn child_text(out: &mut String, ch: &Child, depth: usize) {
    let pad = "    ".repeat(depth);
    let kind = if ch.is_dvd { "DVD" } else { "disk" };
    let _ = writeln!(out, "{pad}{}: {kind}", address_text(ch.address));
    let pad = "    ".repeat(depth + 1);
    let id = &ch.identity;
    if let Some(g) = id.device_id {
        let _ = writeln!(out, "{pad}device id: {g}");
    }
    for (name, v) in [
        ("vendor id", &id.vendor_id),
        ("product id", &id.product_id),
        ("product revision", &id.product_revision_level),
        ("serial number", &id.serial_number),
        ("model number", &id.model_number),
    ] {
        if !v.is_empty() {
            let _ = writeln!(out, "{pad}{name}: {v:?}");
        }
    }
    for (name, v) in changed_params(&ch.params) {
        let _ = writeln!(out, "{pad}{name}: {v}");
    }
    if let Some(g) = ch.ntfs_guid {
        let _ = writeln!(out, "{pad}format as NTFS: {g}");
    }
    let _ = writeln!(out, "{pad}backing: {}", backing_text(&ch.backing));
    if let Backing::Striped { devices, .. } = &ch.backing {
        let pad = "    ".repeat(depth + 2);
        for (i, d) in devices.iter().enumerate() {
            let _ = writeln!(out, "{pad}member {i}: {}", device_text(d));
        }
    }
}

fn controller_text(out: &mut String, c: &Controller) {
    let depth = c
        .io_queue_depth
        .map_or(String::new(), |d| format!(", I/O queue depth {d}"));
    let _ = writeln!(
        out,
        "{} controller {}{depth}",
        protocol_name(c.protocol),
        c.instance_id
    );
    if c.children.is_empty() {
        let _ = writeln!(out, "    (no devices)");
    }
    for ch in &c.children {
        child_text(out, ch, 1);
    }
}

/// The guest-visible topology of `s` as an indented tree: the fixed
/// settings, each controller with its children and their backing, then
/// the NICs.
pub fn topology(s: &Settings) -> String {
    let f = &s.fixed;
    let mut out = format!(
        "fixed: scsi_sub_channels {} (effective {}), io_ring_size {}, max_bounce_buffer_pages {}\n",
        f.scsi_sub_channels,
        f.effective_scsi_sub_channels(),
        f.io_ring_size,
        f.max_bounce_buffer_pages
    );
    if s.controllers.is_empty() {
        out.push_str("no storage controllers\n");
    }
    for c in &s.controllers {
        controller_text(&mut out, c);
    }
    for n in &s.nics {
        let sub = n
            .subordinate_instance_id
            .map_or(String::new(), |g| format!(", accelerated by {g}"));
        let _ = writeln!(out, "NIC {}{sub}", n.instance_id);
    }
    out
}

/// The change set, one change per line.
pub fn change_lines(changes: &ChangeSet) -> String {
    if changes.changes.is_empty() {
        return "no changes\n".to_owned();
    }
    let mut out = format!("{}:\n", plural(changes.changes.len(), "change"));
    for c in &changes.changes {
        let _ = match c {
            Change::AddDisk { controller, child } => writeln!(
                out,
                "    add {} on controller {}: {}, backing {}",
                address_text(child.address),
                controller,
                if child.is_dvd { "DVD" } else { "disk" },
                backing_text(&child.backing)
            ),
            Change::RemoveDisk { controller, lun } => {
                writeln!(out, "    remove LUN {lun} on controller {controller}")
            }
            Change::ChangeMedia {
                controller,
                address,
                backing: Backing::Empty,
            } => writeln!(
                out,
                "    eject DVD media at {} on controller {controller}",
                address_text(*address)
            ),
            Change::ChangeMedia {
                controller,
                address,
                backing,
            } => writeln!(
                out,
                "    insert DVD media at {} on controller {controller}: {}",
                address_text(*address),
                backing_text(backing)
            ),
        };
    }
    out
}

// ---- JSON ----

/// A JSON value, just enough to print the report.
enum Json {
    Null,
    Bool(bool),
    Num(u64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(&'static str, Json)>),
}

impl Json {
    fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Json) -> Json {
        v.map_or(Json::Null, f)
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Str(s) => json_out::push_string(out, s),
            Json::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    json_out::push_string(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    /// The value on one line, newline-terminated.
    fn line(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out.push('\n');
        out
    }
}

fn errors_json(errors: &Errors) -> Json {
    Json::Arr(
        errors
            .0
            .iter()
            .map(|e| {
                Json::Obj(vec![
                    ("code", Json::str(e.code.to_string())),
                    (
                        "object",
                        Json::opt(e.object.as_ref(), |o| Json::str(o.to_string())),
                    ),
                    ("path", Json::str(e.path.clone())),
                    ("message", Json::str(e.message.clone())),
                ])
            })
            .collect(),
    )
}

fn device_json(d: &PhysicalDevice) -> Json {
    Json::Obj(vec![
        (
            "kind",
            Json::str(match d.kind {
                PhysicalDeviceKind::Nvme => "nvme",
                PhysicalDeviceKind::Vscsi => "vscsi",
            }),
        ),
        ("instance_id", Json::str(d.instance_id.to_string())),
        ("sub_device", Json::Num(d.sub_device.into())),
    ])
}

fn child_json(ch: &Child) -> Json {
    let address = match ch.address {
        ChildAddress::ScsiLun(lun) => Json::Obj(vec![("lun", Json::Num(lun.into()))]),
        ChildAddress::Ide { channel, drive } => Json::Obj(vec![
            ("channel", Json::Num(channel.into())),
            ("drive", Json::Num(drive.into())),
        ]),
        ChildAddress::NvmeNsid(nsid) => Json::Obj(vec![("nsid", Json::Num(nsid.into()))]),
    };
    let id = &ch.identity;
    let p = &ch.params;
    let backing = match &ch.backing {
        Backing::Empty => Json::Obj(vec![("type", Json::str("empty"))]),
        Backing::Single(d) => Json::Obj(vec![
            ("type", Json::str("single")),
            ("device", device_json(d)),
        ]),
        Backing::Striped {
            devices,
            chunk_size_kb,
        } => Json::Obj(vec![
            ("type", Json::str("striped")),
            ("chunk_size_kb", Json::Num((*chunk_size_kb).into())),
            (
                "devices",
                Json::Arr(devices.iter().map(device_json).collect()),
            ),
        ]),
    };
    Json::Obj(vec![
        ("address", address),
        ("dvd", Json::Bool(ch.is_dvd)),
        (
            "device_id",
            Json::opt(id.device_id, |g| Json::str(g.to_string())),
        ),
        ("vendor_id", Json::str(id.vendor_id.clone())),
        ("product_id", Json::str(id.product_id.clone())),
        (
            "product_revision_level",
            Json::str(id.product_revision_level.clone()),
        ),
        ("serial_number", Json::str(id.serial_number.clone())),
        ("model_number", Json::str(id.model_number.clone())),
        ("fua", Json::opt(p.fua, Json::Bool)),
        ("write_cache", Json::opt(p.write_cache, Json::Bool)),
        ("odx", Json::opt(p.odx, Json::Bool)),
        ("unmap", Json::Bool(p.unmap)),
        (
            "medium_rotation_rate",
            Json::Num(p.medium_rotation_rate.into()),
        ),
        (
            "physical_sector_size",
            Json::opt(p.physical_sector_size, |v| Json::Num(v.into())),
        ),
        (
            "max_transfer_length",
            Json::opt(p.max_transfer_length, Json::Num),
        ),
        ("disk_size", Json::opt(p.size_override, Json::Num)),
        (
            "ntfs_guid",
            Json::opt(ch.ntfs_guid, |g| Json::str(g.to_string())),
        ),
        ("backing", backing),
    ])
}

fn settings_json(s: &Settings) -> Json {
    let f = &s.fixed;
    let controllers = s
        .controllers
        .iter()
        .map(|c| {
            Json::Obj(vec![
                ("instance_id", Json::str(c.instance_id.to_string())),
                (
                    "protocol",
                    Json::str(match c.protocol {
                        Protocol::Scsi => "scsi",
                        Protocol::Ide => "ide",
                        Protocol::Nvme => "nvme",
                    }),
                ),
                (
                    "io_queue_depth",
                    Json::opt(c.io_queue_depth, |v| Json::Num(v.into())),
                ),
                (
                    "children",
                    Json::Arr(c.children.iter().map(child_json).collect()),
                ),
            ])
        })
        .collect();
    let nics = s
        .nics
        .iter()
        .map(|n| {
            Json::Obj(vec![
                ("instance_id", Json::str(n.instance_id.to_string())),
                (
                    "subordinate_instance_id",
                    Json::opt(n.subordinate_instance_id, |g| Json::str(g.to_string())),
                ),
                (
                    "max_sub_channels",
                    Json::opt(n.max_sub_channels, |v| Json::Num(v.into())),
                ),
            ])
        })
        .collect();
    Json::Obj(vec![
        (
            "fixed",
            Json::Obj(vec![
                ("scsi_sub_channels", Json::Num(f.scsi_sub_channels.into())),
                (
                    "effective_scsi_sub_channels",
                    Json::Num(f.effective_scsi_sub_channels().into()),
                ),
                ("io_ring_size", Json::Num(f.io_ring_size.into())),
                (
                    "max_bounce_buffer_pages",
                    Json::Num(f.max_bounce_buffer_pages.into()),
                ),
            ]),
        ),
        ("controllers", Json::Arr(controllers)),
        ("nics", Json::Arr(nics)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"version":"V1","dynamic":{"storage_controllers":[
        {"instance_id":"5a6b7c02-1000-4002-8000-001234567892","protocol":"SCSI","luns":[
          {"location":3,"device_id":"5a6b7c66-1000-4066-8000-0012345678f6","vendor_id":"Ms\"ft",
           "fua":true,"physical_devices":{"type":"SINGLE","device":{"device_type":"VSCSI",
           "device_path":"5a6b7cc8-1000-40c8-8000-001234567958","sub_device_path":2}}}]}]}}"#;

    #[test]
    fn check_prints_the_tree() {
        let o = check(Path::new("d.json"), DOC.as_bytes(), false);
        assert_eq!(o.failure, None);
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(
            text.starts_with("d.json: valid settings (json)\n"),
            "{text}"
        );
        assert!(
            text.contains("\n    LUN 3: disk\n        device id: 5a6b7c66"),
            "{text}"
        );
        assert!(text.contains("        vendor id: \"Ms\\\"ft\"\n"), "{text}");
        assert!(text.contains("        fua: yes\n"), "{text}");
        assert!(!text.contains("unmap"), "{text}");
        assert!(
            text.contains(
                "        backing: vSCSI device 5a6b7cc8-1000-40c8-8000-001234567958 LUN 2\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn check_json_escapes_strings() {
        let o = check(Path::new("d.json"), DOC.as_bytes(), true);
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.starts_with(r#"{"valid":true,"format":"json","fixed":{"#));
        assert!(text.contains(r#""vendor_id":"Ms\"ft""#), "{text}");
        assert!(text.contains(r#""address":{"lun":3}"#), "{text}");
    }

    #[test]
    fn check_reports_every_error() {
        let doc = DOC.replace("\"location\":3", "\"location\":64");
        let doc = doc.replace("5a6b7c02-1000", "not-a-guid");
        let o = check(Path::new("d.json"), doc.as_bytes(), true);
        assert_eq!(
            o.failure.as_deref(),
            Some("d.json: invalid settings (2 errors)")
        );
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.starts_with(r#"{"valid":false,"format":"json","errors":[{"code":"#));
        assert!(text.contains("Configuration.InvalidInstanceId"), "{text}");
        assert!(
            text.contains("Configuration.StorageLunLocationExceedsMaxLimits"),
            "{text}"
        );
    }

    #[test]
    fn oversized_or_endless_input_is_one_clean_error() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), vec![b' '; read::MAX_BLOB_LEN + 1]).unwrap();
        for path in [f.path(), Path::new("/dev/zero")] {
            let e = load(path).unwrap_err();
            assert!(
                e.to_string().contains("byte limit of a settings blob"),
                "{e}"
            );
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        std::fs::write(f.path(), vec![b' '; read::MAX_BLOB_LEN]).unwrap();
        assert_eq!(load(f.path()).unwrap().len(), read::MAX_BLOB_LEN);
        let e = load(Path::new("/nonexistent/settings.json")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read /nonexistent"), "{e}");
    }

    #[test]
    fn unchanged_update_has_no_changes() {
        let p = Path::new("d.json");
        let o = diff(p, DOC.as_bytes(), p, DOC.as_bytes());
        assert_eq!(o.failure, None);
        assert_eq!(o.stdout, b"no changes\n");
    }
}
