//! `parastor nvme-diff`: one NVMe command script, run against a real
//! controller (bound to vfio-pci) and against parastor's own controller
//! emulator in process, and the completions compared.
//!
//! The script ([`SCRIPT`]) holds valid and invalid admin and I/O commands
//! (bad NSIDs, out-of-range LBAs, oversize transfers, reserved opcodes,
//! Dataset Management, Write Zeroes, Compare). Each goes through parastor's
//! NVMe driver as a raw command (`NvmeDriver::passthrough`: the driver
//! fills in the command identifier and the data pointer, the script the
//! rest), so both controllers see the same commands and nothing in the
//! driver interprets the answers. Each command gives one transcript line:
//! status code type and code, DNR, CDW0 and CDW1, and the data fields the
//! script asks for. Lines must match field by field, except for
//! the differences listed in [`ALLOWED`], each with the specification
//! clause that allows it.

use super::CliError;
use clap::Args;
use parastor_core::Disk;
use parastor_core::ram::RamDisk;
use parastor_emulated::nvme::{ControllerThread, NvmeRig, RigConfig};
use parastor_hw::nvme::queue::{Cdw0, Sqe};
use parastor_hw::nvme::status::StatusWord;
use parastor_nvme::ControllerConfig;
use parastor_nvme_driver::{
    DeviceAccess, DriverConfig, DriverError, NvmeDriver, PassthroughData, PassthroughQueue,
    RawCompletion,
};
use parastor_runtime::RuntimeTimer;
use parastor_vfio::{VfioDevice, VfioOptions};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use zerocopy::little_endian::U32;

/// The command script (see the file for its syntax).
pub const SCRIPT: &str = include_str!("nvme-diff.script");

/// Differences the comparison accepts: `STEP FIELD reason` — those the
/// specification allows (with the clause), and known deviations of the
/// emulator (marked `DEVIATION`) kept visible until fixed.
pub const ALLOWED: &str = include_str!("nvme-diff.allowed");

/// QEMU's transcript of [`SCRIPT`] (QEMU 10.0, the `nvme-vfio` scenario's
/// controller), for comparing the emulator without a VM.
pub const QEMU_TRANSCRIPT: &str = include_str!("nvme-diff.qemu");

/// The namespaces both controllers have: (NSID, LBA size, LBAs).
pub const NAMESPACES: [(u32, u32, u64); 2] = [(1, 512, 131_072), (2, 4096, 16_384)];

/// `parastor nvme-diff`.
#[derive(Args, Debug)]
pub struct NvmeDiffArgs {
    /// The PCI function, bound to vfio-pci, whose controller has the
    /// namespaces of [`NAMESPACES`] (the `nvme-vfio` scenario's).
    #[arg(long)]
    pub pci: String,
}

/// Where a command goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    Admin,
    Io,
}

/// The data a command moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Data {
    None,
    /// From the device, this many bytes.
    Read(usize),
    /// To the device: this many bytes of pattern `seed`.
    Write(usize, u8),
    /// To the device: one Dataset Management range.
    Dsm {
        slba: u64,
        nlb: u32,
    },
}

/// What of the returned data goes into the transcript.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Show {
    /// Bytes `[offset, offset + len)`, as hex.
    Bytes(usize, usize),
    /// The formatted LBA size from Identify Namespace data.
    LbaSize,
    /// A CRC-32 of all of it.
    Hash,
}

/// One command of the script.
#[derive(Clone, Debug)]
struct Step {
    name: String,
    queue: Queue,
    opc: u8,
    nsid: u32,
    cdw: [u32; 6],
    data: Data,
    show: Vec<Show>,
}

fn number(text: &str, line: usize) -> Result<u64, CliError> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| CliError::new(format!("script line {line}: `{text}` is not a number")))
}

fn parse_script(text: &str) -> Result<Vec<Step>, CliError> {
    let mut steps = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let words = raw.split('#').next().unwrap_or("");
        let mut words = words.split_whitespace();
        let Some(name) = words.next() else { continue };
        let queue = match words.next() {
            Some("admin") => Queue::Admin,
            Some("io") => Queue::Io,
            other => {
                return Err(CliError::new(format!(
                    "script line {line}: expected `admin` or `io`, got {other:?}"
                )));
            }
        };
        let mut step = Step {
            name: name.to_string(),
            queue,
            opc: 0,
            nsid: 0,
            cdw: [0; 6],
            data: Data::None,
            show: Vec::new(),
        };
        let mut opc = None;
        for word in words {
            let (key, value) = word.split_once('=').ok_or_else(|| {
                CliError::new(format!("script line {line}: `{word}` is not KEY=VALUE"))
            })?;
            let dword = |v: &str| -> Result<u32, CliError> {
                u32::try_from(number(v, line)?).map_err(|_| {
                    CliError::new(format!("script line {line}: `{v}` does not fit 32 bits"))
                })
            };
            match key {
                "opc" => {
                    opc = Some(u8::try_from(number(value, line)?).map_err(|_| {
                        CliError::new(format!("script line {line}: opcode `{value}` > 0xFF"))
                    })?);
                }
                "nsid" => step.nsid = dword(value)?,
                "cdw10" | "cdw11" | "cdw12" | "cdw13" | "cdw14" | "cdw15" => {
                    let index = usize::from(key.as_bytes()[4] - b'0');
                    if let Some(slot) = step.cdw.get_mut(index) {
                        *slot = dword(value)?;
                    }
                }
                "read" => step.data = Data::Read(number(value, line)? as usize),
                "write" => {
                    let (len, seed) = value.split_once(':').ok_or_else(|| {
                        CliError::new(format!("script line {line}: write=BYTES:SEED"))
                    })?;
                    step.data = Data::Write(number(len, line)? as usize, number(seed, line)? as u8);
                }
                "dsm" => {
                    let (slba, nlb) = value.split_once(':').ok_or_else(|| {
                        CliError::new(format!("script line {line}: dsm=SLBA:NLB"))
                    })?;
                    step.data = Data::Dsm {
                        slba: number(slba, line)?,
                        nlb: dword(nlb)?,
                    };
                }
                "show" => step.show.push(match value {
                    "lbasize" => Show::LbaSize,
                    "hash" => Show::Hash,
                    _ => {
                        let (at, len) = value.split_once('+').ok_or_else(|| {
                            CliError::new(format!(
                                "script line {line}: show=OFFSET+LEN, lbasize or hash"
                            ))
                        })?;
                        Show::Bytes(number(at, line)? as usize, number(len, line)? as usize)
                    }
                }),
                _ => {
                    return Err(CliError::new(format!(
                        "script line {line}: unknown key `{key}`"
                    )));
                }
            }
        }
        step.opc = opc.ok_or_else(|| CliError::new(format!("script line {line}: no opc=")))?;
        let len = match step.data {
            Data::Read(n) | Data::Write(n, _) => n,
            _ => 0,
        };
        if len > MAX_DATA {
            return Err(CliError::new(format!(
                "script line {line}: {len} bytes of data (at most {MAX_DATA})"
            )));
        }
        steps.push(step);
    }
    Ok(steps)
}

/// The largest data buffer a step may use.
const MAX_DATA: usize = 1 << 20;
/// The line a step's completion gives: status code type and code, DNR,
/// both command-specific dwords, and what the step shows of the data.
fn line(step: &Step, done: &RawCompletion, data: &[u8]) -> String {
    let status = StatusWord::from_bits(done.status);
    let mut line = format!(
        "{} sct={} sc={:#04x} dnr={} cdw0={:#010x} cdw1={:#010x}",
        step.name,
        status.sct().get(),
        status.sc(),
        u8::from(status.dnr()),
        done.dw0,
        done.dw1
    );
    for show in &step.show {
        match *show {
            Show::Bytes(at, n) => {
                let bytes = data.get(at..at + n).unwrap_or(&[]);
                let _ = write!(line, " bytes{at}+{n}=");
                for b in bytes {
                    let _ = write!(line, "{b:02x}");
                }
            }
            Show::LbaSize => {
                // FLBAS bits 3:0 (and 6:5 above 16 formats) pick the LBA
                // format; LBADS is byte 2 of its entry.
                let flbas = data.get(26).copied().unwrap_or(0);
                let index = usize::from(flbas & 0xF) | (usize::from(flbas >> 5 & 3) << 4);
                let lbads = data.get(128 + index * 4 + 2).copied().unwrap_or(0);
                let size = if (9..=16).contains(&lbads) {
                    1u32 << lbads
                } else {
                    0
                };
                let _ = write!(line, " lbasize={size}");
            }
            Show::Hash => {
                let _ = write!(line, " crc32={:08x}", crc32fast::hash(data));
            }
        }
    }
    line
}

/// The bytes of pattern `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// Runs `step` through the driver's passthrough; its transcript line. A
/// command the driver itself refuses (queue management, more data than
/// the maximum transfer) gives `NAME refused-by-driver`.
async fn run_step(driver: &NvmeDriver, step: &Step) -> Result<String, CliError> {
    let [c10, c11, c12, c13, c14, c15] = step.cdw.map(U32::new);
    let sqe = Sqe {
        cdw0: Cdw0::new().with_opc(step.opc),
        nsid: U32::new(step.nsid),
        cdw10: c10,
        cdw11: c11,
        cdw12: c12,
        cdw13: c13,
        cdw14: c14,
        cdw15: c15,
        ..Sqe::default()
    };
    let queue = match step.queue {
        Queue::Admin => PassthroughQueue::Admin,
        Queue::Io => PassthroughQueue::Io,
    };
    let mut buf;
    let data = match step.data {
        Data::None => {
            buf = Vec::new();
            PassthroughData::None
        }
        Data::Read(n) => {
            // Stale bytes must not pass for data the device returned.
            buf = vec![0xA5; n];
            PassthroughData::FromDevice(&mut buf)
        }
        Data::Write(n, seed) => {
            buf = pattern(n, seed);
            PassthroughData::ToDevice(&buf)
        }
        Data::Dsm { slba, nlb } => {
            buf = vec![0; 16];
            buf[4..8].copy_from_slice(&nlb.to_le_bytes());
            buf[8..16].copy_from_slice(&slba.to_le_bytes());
            PassthroughData::ToDevice(&buf)
        }
    };
    match driver.passthrough(queue, sqe, data).await {
        Ok(done) => Ok(line(step, &done, &buf)),
        Err(DriverError::Unsupported(_)) => Ok(format!("{} refused-by-driver", step.name)),
        Err(e) => Err(CliError::new(format!("{}: {e}", step.name))),
    }
}

/// Runs the script through parastor's NVMe driver (brought up on
/// `device`, one I/O queue) with raw passthrough commands; the
/// transcript, one line a step.
pub fn transcript(device: Arc<dyn DeviceAccess>) -> Result<String, CliError> {
    let steps = parse_script(SCRIPT)?;
    parastor_runtime::block_on(async {
        let config = DriverConfig {
            io_queues: 1,
            ..DriverConfig::default()
        };
        let driver = NvmeDriver::new(device, config, Arc::new(RuntimeTimer))
            .await
            .map_err(|e| CliError::new(format!("bring-up: {e}")))?;
        let mut out = String::new();
        for step in &steps {
            out.push_str(&run_step(&driver, step).await?);
            out.push('\n');
        }
        driver
            .shutdown()
            .await
            .map_err(|e| CliError::new(format!("shutdown: {e}")))?;
        Ok(out)
    })
}

/// The emulator's transcript: parastor's controller with [`NAMESPACES`]
/// on RAM disks, QEMU's NN (256) and MDTS (512 KiB).
pub fn emulator_transcript() -> Result<String, CliError> {
    let mut controller = ControllerConfig::new(parastor_hw::Guid::new(
        0x7061_7261,
        0x6E76,
        0x6D65,
        *b"diff-emu",
    ));
    controller.max_namespaces = 256;
    controller.max_transfer_bytes = 512 << 10;
    let mut config = RigConfig::new(controller);
    config.data_bytes = 1 << 20;
    config.dma_bytes = 4 << 20;
    let rig = NvmeRig::new(config)
        .map_err(|e| CliError::new(format!("mapping the emulator's RAM: {e}")))?;
    for (nsid, size, lbas) in NAMESPACES {
        let ram = RamDisk::new(lbas * u64::from(size), size)
            .map_err(|e| CliError::new(format!("namespace {nsid}: {e}")))?;
        let disk = Disk::new(ram).map_err(|e| CliError::new(format!("namespace {nsid}: {e}")))?;
        rig.controller()
            .add_namespace(nsid, disk)
            .map_err(|e| CliError::new(format!("namespace {nsid}: {e}")))?;
    }
    let thread = ControllerThread::spawn(rig.backing(), None)
        .map_err(|e| CliError::new(format!("starting the emulator thread: {e}")))?;
    let out = transcript(rig.device());
    drop(thread);
    out
}

/// Field-by-field differences of two transcripts (`a` named `a_name`)
/// not in `allowed`; a step missing on either side is a difference.
pub fn compare(a_name: &str, a: &str, b_name: &str, b: &str, allowed: &str) -> Vec<String> {
    let fields = |text: &str| -> BTreeMap<String, BTreeMap<String, String>> {
        text.lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let name = words.next()?.to_string();
                let f = words
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                Some((name, f))
            })
            .collect()
    };
    let allow: Vec<(&str, &str)> = allowed
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?, w.next()?))
        })
        .collect();
    let (fa, fb) = (fields(a), fields(b));
    let mut out = Vec::new();
    for name in fa.keys().chain(fb.keys().filter(|k| !fa.contains_key(*k))) {
        match (fa.get(name), fb.get(name)) {
            (Some(x), Some(y)) => {
                for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                    let (vx, vy) = (x.get(key), y.get(key));
                    if vx != vy && !allow.contains(&(name.as_str(), key.as_str())) {
                        out.push(format!(
                            "{name} {key}: {a_name} {}, {b_name} {}",
                            vx.map_or("-", String::as_str),
                            vy.map_or("-", String::as_str)
                        ));
                    }
                }
            }
            (x, _) => out.push(format!(
                "{name}: only in {}",
                if x.is_some() { a_name } else { b_name }
            )),
        }
    }
    out
}

/// Runs `parastor nvme-diff`.
pub fn run(args: NvmeDiffArgs) -> Result<(), CliError> {
    let options = VfioOptions::default();
    let device: Arc<dyn DeviceAccess> = Arc::new(
        VfioDevice::open(&args.pci, &options)
            .map_err(|e| CliError::new(format!("opening {}: {e}", args.pci)))?,
    );
    let real = transcript(device)?;
    let emulated = emulator_transcript()?;
    println!("nvme-diff: device transcript:\n{real}");
    println!("nvme-diff: emulator transcript:\n{emulated}");
    let steps = real.lines().count();
    let differences = compare("device", &real, "emulator", &emulated, ALLOWED);
    let stored = compare(
        "device",
        &real,
        "stored QEMU transcript",
        QEMU_TRANSCRIPT,
        "",
    );
    for d in &stored {
        println!("nvme-diff: note: {d}");
    }
    if differences.is_empty() {
        let entries: Vec<&str> = ALLOWED
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        let deviations = entries.iter().filter(|l| l.contains("DEVIATION")).count();
        println!(
            "nvme-diff: ok: {steps} commands; the emulator matches the device except {} \
             accepted field differences the specification allows and {deviations} known \
             emulator deviations",
            entries.len() - deviations
        );
        Ok(())
    } else {
        Err(CliError::new(format!(
            "{} differences between the device and the emulator:\n  {}",
            differences.len(),
            differences.join("\n  ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_parses() {
        let steps = parse_script(SCRIPT).unwrap();
        assert!(steps.len() >= 20, "{} steps", steps.len());
        assert!(steps.iter().any(|s| s.queue == Queue::Admin));
        assert!(steps.iter().any(|s| matches!(s.data, Data::Dsm { .. })));
        let mut names: Vec<_> = steps.iter().map(|s| &s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), steps.len(), "step names are unique");
    }

    #[test]
    fn script_errors_name_the_line() {
        let err = parse_script("a admin opc=1\nb disk opc=2\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(parse_script("a io nsid=1").is_err(), "no opcode");
        assert!(parse_script("a io opc=0x100").is_err());
        assert!(parse_script("a io opc=2 read=2000000").is_err());
        assert!(parse_script("a io opc=2 bogus=1").is_err());
    }

    #[test]
    fn comparison_reports_unallowed_differences_only() {
        let a = "x sct=0 sc=0x00 cdw0=0x1\ny sct=0 sc=0x02\nz sct=0\n";
        let b = "x sct=0 sc=0x00 cdw0=0x2\ny sct=0 sc=0x0b\nw sct=0\n";
        let d = compare("qemu", a, "emu", b, "# comment\nx cdw0 device-specific\n");
        assert_eq!(
            d,
            [
                "y sc: qemu 0x02, emu 0x0b",
                "z: only in qemu",
                "w: only in emu",
            ]
        );
    }

    /// The differential in process: parastor's emulator against QEMU's
    /// stored transcript (the `nvme-vfio` vmtest runs it live against
    /// QEMU too).
    #[test]
    fn the_emulator_matches_qemu_except_the_allowed_differences() {
        let emulated = emulator_transcript().expect("the script runs on the emulator");
        assert_eq!(
            emulated.lines().count(),
            parse_script(SCRIPT).unwrap().len(),
            "{emulated}"
        );
        let d = compare("qemu", QEMU_TRANSCRIPT, "emulator", &emulated, ALLOWED);
        assert!(
            d.is_empty(),
            "differences:\n{}\nemulator:\n{emulated}",
            d.join("\n")
        );
        // Every accepted difference still exists: a fixed deviation must
        // leave the list.
        let all = compare("qemu", QEMU_TRANSCRIPT, "emulator", &emulated, "");
        for entry in ALLOWED
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let mut w = entry.split_whitespace();
            let (step, field) = (w.next().unwrap(), w.next().unwrap());
            assert!(
                all.iter()
                    .any(|d| d.starts_with(&format!("{step} {field}:"))),
                "`{step} {field}` is accepted but no longer differs: remove it from nvme-diff.allowed"
            );
        }
    }
}
