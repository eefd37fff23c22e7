//! `parastor nvme-diff`: one NVMe command script, run against a real
//! controller (bound to vfio-pci) and against parastor's own controller
//! emulator in process, and the completions compared.
//!
//! The script ([`SCRIPT`]) holds valid and invalid admin and I/O commands
//! (bad NSIDs, out-of-range LBAs, oversize transfers, reserved opcodes,
//! Dataset Management, Write Zeroes, Compare). Each is sent as raw
//! submission queue entries by a minimal polled host (`RawHost`: admin
//! queue plus one I/O queue pair, PRPs, no interrupts) over the
//! [`DeviceAccess`] trait, so both controllers see byte-identical commands
//! and nothing in a driver interprets the answers. Each command gives one
//! transcript line: status code type and code, DNR, CDW0, and the data
//! fields the script asks for. Lines must match field by field, except for
//! the differences listed in [`ALLOWED`], each with the specification
//! clause that allows it.

use super::CliError;
use clap::Args;
use parastor_core::Disk;
use parastor_core::ram::RamDisk;
use parastor_emulated::nvme::{ControllerThread, NvmeRig, RigConfig};
use parastor_hw::nvme::queue::{Cdw0, Cqe, Sqe};
use parastor_hw::nvme::regs::offset;
use parastor_nvme::ControllerConfig;
use parastor_nvme_driver::{DeviceAccess, DmaBuffer};
use parastor_vfio::{VfioDevice, VfioOptions};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, IntoBytes};

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
/// Entries of each queue.
const QUEUE_ENTRIES: u16 = 32;
const PAGE: usize = 4096;

/// A submission/completion queue pair in DMA memory.
struct RawQueue {
    qid: u16,
    sq: DmaBuffer,
    cq: DmaBuffer,
    tail: u16,
    head: u16,
    phase: bool,
}

/// A minimal polled NVMe host over [`DeviceAccess`].
struct RawHost {
    device: Arc<dyn DeviceAccess>,
    stride: u64,
    timeout: Duration,
    admin: RawQueue,
    io: Option<RawQueue>,
    data: DmaBuffer,
    prp_list: DmaBuffer,
    cid: u16,
}

fn device_error(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::new(format!("{what}: {e}"))
}

impl RawQueue {
    fn new(device: &dyn DeviceAccess, qid: u16) -> Result<Self, CliError> {
        let n = usize::from(QUEUE_ENTRIES);
        Ok(Self {
            qid,
            sq: device
                .alloc_dma(n * 64)
                .map_err(|e| device_error("submission queue", e))?,
            cq: device
                .alloc_dma(n * 16)
                .map_err(|e| device_error("completion queue", e))?,
            tail: 0,
            head: 0,
            phase: true,
        })
    }
}

/// A completion, as the transcript shows it.
struct Done {
    sct: u8,
    sc: u8,
    dnr: bool,
    dw0: u32,
}

impl RawHost {
    /// Disables the controller, sets up the admin queue, enables it and
    /// creates I/O queue pair 1 (polled, no interrupts).
    fn bring_up(device: Arc<dyn DeviceAccess>) -> Result<Self, CliError> {
        let cap = device.read_u64(0, offset::CAP);
        if cap == u64::MAX {
            return Err(CliError::new("CAP reads all ones: the device is gone"));
        }
        let stride = 4u64 << ((cap >> 32) & 0xF);
        let timeout = Duration::from_millis(500 * ((cap >> 24) & 0xFF).max(1));
        let cmd = device.config_read_u32(0x04);
        device.config_write_u32(0x04, cmd | 0x6);
        let admin = RawQueue::new(&*device, 0)?;
        let data = device
            .alloc_dma(MAX_DATA)
            .map_err(|e| device_error("data buffer", e))?;
        let prp_list = device
            .alloc_dma(PAGE)
            .map_err(|e| device_error("PRP list", e))?;
        let mut host = Self {
            device,
            stride,
            timeout,
            admin,
            io: None,
            data,
            prp_list,
            cid: 0,
        };
        host.device.write_u32(0, offset::CC, 0);
        host.wait_ready(false)?;
        let entries = u32::from(QUEUE_ENTRIES - 1);
        host.device
            .write_u32(0, offset::AQA, (entries << 16) | entries);
        host.device
            .write_u64(0, offset::ASQ, host.admin.sq.device_address(0));
        host.device
            .write_u64(0, offset::ACQ, host.admin.cq.device_address(0));
        // EN, 4 KiB pages, NVM command set, 64-byte SQ and 16-byte CQ entries.
        host.device
            .write_u32(0, offset::CC, 1 | (6 << 16) | (4 << 20));
        host.wait_ready(true)?;
        let io = RawQueue::new(&*host.device, 1)?;
        let size = u32::from(QUEUE_ENTRIES - 1) << 16;
        let (cq_addr, sq_addr) = (io.cq.device_address(0), io.sq.device_address(0));
        // Create I/O Completion Queue 1 (physically contiguous, no
        // interrupts), then I/O Submission Queue 1 on it.
        let created = [
            host.admin_raw(0x05, cq_addr, size | 1, 1)?,
            host.admin_raw(0x01, sq_addr, size | 1, (1 << 16) | 1)?,
        ];
        for (what, done) in ["Create I/O CQ", "Create I/O SQ"].iter().zip(created) {
            if done.sct != 0 || done.sc != 0 {
                return Err(CliError::new(format!(
                    "{what} failed: status {}/{:#04x}",
                    done.sct, done.sc
                )));
            }
        }
        host.io = Some(io);
        Ok(host)
    }

    fn wait_ready(&self, ready: bool) -> Result<(), CliError> {
        let start = Instant::now();
        loop {
            let csts = self.device.read_u32(0, offset::CSTS);
            if csts == u32::MAX {
                return Err(CliError::new("CSTS reads all ones: the device is gone"));
            }
            if csts & 2 != 0 {
                return Err(CliError::new("CSTS.CFS: controller fatal status"));
            }
            if (csts & 1 != 0) == ready {
                return Ok(());
            }
            if start.elapsed() > self.timeout {
                return Err(CliError::new(format!(
                    "CSTS.RDY did not become {} within CAP.TO",
                    u8::from(ready)
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// An admin command with PRP1 = `prp1` and the given CDW10/11.
    fn admin_raw(&mut self, opc: u8, prp1: u64, cdw10: u32, cdw11: u32) -> Result<Done, CliError> {
        let mut sqe = Sqe {
            cdw0: Cdw0::new().with_opc(opc),
            cdw10: U32::new(cdw10),
            cdw11: U32::new(cdw11),
            ..Sqe::default()
        };
        sqe.set_prps(prp1, 0);
        self.submit(Queue::Admin, sqe)
    }

    /// Runs `step`: fills the data buffer, builds the PRPs, submits and
    /// waits; returns the transcript line.
    fn run(&mut self, step: &Step) -> Result<String, CliError> {
        let len = match step.data {
            Data::None => 0,
            Data::Read(n) => n,
            Data::Write(n, seed) => {
                let bytes: Vec<u8> = (0..n)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
                    .collect();
                self.data
                    .write_at(0, &bytes)
                    .map_err(|e| device_error("data buffer", e))?;
                n
            }
            Data::Dsm { slba, nlb } => {
                let mut range = [0u8; 16];
                range[4..8].copy_from_slice(&nlb.to_le_bytes());
                range[8..16].copy_from_slice(&slba.to_le_bytes());
                self.data
                    .write_at(0, &range)
                    .map_err(|e| device_error("data buffer", e))?;
                16
            }
        };
        if let Data::Read(n) = step.data {
            // Stale bytes must not pass for data the device returned.
            self.data
                .fill_at(0, n, 0xA5)
                .map_err(|e| device_error("data buffer", e))?;
        }
        let [c10, c11, c12, c13, c14, c15] = step.cdw.map(U32::new);
        let mut sqe = Sqe {
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
        if len > 0 {
            let (prp1, prp2) = self.prps(len)?;
            sqe.set_prps(prp1, prp2);
        }
        let done = self.submit(step.queue, sqe)?;
        let mut line = format!(
            "{} sct={} sc={:#04x} dnr={} cdw0={:#010x}",
            step.name,
            done.sct,
            done.sc,
            u8::from(done.dnr),
            done.dw0
        );
        if !step.show.is_empty() {
            let mut buf = vec![0u8; len];
            self.data
                .read_at(0, &mut buf)
                .map_err(|e| device_error("data buffer", e))?;
            for show in &step.show {
                match *show {
                    Show::Bytes(at, n) => {
                        let bytes = buf.get(at..at + n).unwrap_or(&[]);
                        let _ = write!(line, " bytes{at}+{n}=");
                        for b in bytes {
                            let _ = write!(line, "{b:02x}");
                        }
                    }
                    Show::LbaSize => {
                        // FLBAS bits 3:0 (and 6:5 above 16 formats) pick
                        // the LBA format; LBADS is byte 2 of its entry.
                        let flbas = buf.get(26).copied().unwrap_or(0);
                        let index = usize::from(flbas & 0xF) | (usize::from(flbas >> 5 & 3) << 4);
                        let lbads = buf.get(128 + index * 4 + 2).copied().unwrap_or(0);
                        let size = if (9..=16).contains(&lbads) {
                            1u32 << lbads
                        } else {
                            0
                        };
                        let _ = write!(line, " lbasize={size}");
                    }
                    Show::Hash => {
                        let _ = write!(line, " crc32={:08x}", crc32fast::hash(&buf));
                    }
                }
            }
        }
        Ok(line)
    }

    /// PRP1/PRP2 for `len` bytes of the data buffer.
    fn prps(&self, len: usize) -> Result<(u64, u64), CliError> {
        let pages = len.div_ceil(PAGE);
        let prp1 = self.data.device_address(0);
        let prp2 = match pages {
            0 | 1 => 0,
            2 => self.data.device_address(PAGE),
            _ => {
                for i in 1..pages {
                    let entry = self.data.device_address(i * PAGE).to_le_bytes();
                    self.prp_list
                        .write_at((i - 1) * 8, &entry)
                        .map_err(|e| device_error("PRP list", e))?;
                }
                self.prp_list.device_address(0)
            }
        };
        Ok((prp1, prp2))
    }

    fn doorbell(&self, qid: u16, completion: bool) -> u64 {
        offset::DOORBELLS + (2 * u64::from(qid) + u64::from(completion)) * self.stride
    }

    /// Submits `sqe` to `queue` and polls for its completion.
    fn submit(&mut self, queue: Queue, mut sqe: Sqe) -> Result<Done, CliError> {
        self.cid = self.cid.wrapping_add(1);
        let cid = self.cid;
        sqe.cdw0 = sqe.cdw0.with_cid(cid);
        let q = match queue {
            Queue::Admin => &mut self.admin,
            Queue::Io => self
                .io
                .as_mut()
                .ok_or_else(|| CliError::new("no I/O queue"))?,
        };
        q.sq.write_at(usize::from(q.tail) * 64, sqe.as_bytes())
            .map_err(|e| device_error("submission queue", e))?;
        q.tail = (q.tail + 1) % QUEUE_ENTRIES;
        let (qid, tail) = (q.qid, q.tail);
        self.device
            .write_u32(0, self.doorbell(qid, false), u32::from(tail));
        let start = Instant::now();
        loop {
            let q = match queue {
                Queue::Admin => &mut self.admin,
                Queue::Io => self
                    .io
                    .as_mut()
                    .ok_or_else(|| CliError::new("no I/O queue"))?,
            };
            let at = usize::from(q.head) * 16;
            let status =
                q.cq.load_u16(at + 14, Ordering::Acquire)
                    .map_err(|e| device_error("completion queue", e))?;
            if (status & 1 != 0) == q.phase {
                let mut raw = [0u8; 16];
                q.cq.read_at(at, &mut raw)
                    .map_err(|e| device_error("completion queue", e))?;
                let cqe = Cqe::read_from_bytes(&raw)
                    .map_err(|_| CliError::new("completion entry of the wrong size"))?;
                q.head = (q.head + 1) % QUEUE_ENTRIES;
                if q.head == 0 {
                    q.phase = !q.phase;
                }
                let head = q.head;
                let doorbell = self.doorbell(qid, true);
                self.device.write_u32(0, doorbell, u32::from(head));
                if cqe.cid.get() != cid || cqe.sqid.get() != qid {
                    return Err(CliError::new(format!(
                        "completion for command {} on SQ {} while waiting for {cid} on SQ {qid}",
                        cqe.cid.get(),
                        cqe.sqid.get()
                    )));
                }
                let word = cqe.status.status();
                return Ok(Done {
                    sct: word.sct().get(),
                    sc: word.sc(),
                    dnr: word.dnr(),
                    dw0: cqe.dw0.get(),
                });
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(CliError::new(format!(
                    "no completion for command {cid} (opcode {:#04x}) on queue {qid} within 10 s",
                    sqe.cdw0.opc()
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Disables the controller (normal shutdown is not needed: nothing is
    /// cached by this host).
    fn finish(self) -> Result<(), CliError> {
        self.device.write_u32(0, offset::CC, 0);
        self.wait_ready(false)
    }
}

/// Runs the script against `device`; the transcript, one line a step.
pub fn transcript(device: Arc<dyn DeviceAccess>) -> Result<String, CliError> {
    let steps = parse_script(SCRIPT)?;
    let mut host = RawHost::bring_up(device)?;
    let mut out = String::new();
    for step in &steps {
        out.push_str(&host.run(step)?);
        out.push('\n');
    }
    host.finish()?;
    Ok(out)
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
