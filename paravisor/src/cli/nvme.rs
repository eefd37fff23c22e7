//! `parastor nvme-check`: parastor's NVMe driver over a real controller
//! through VFIO, checked step by step — the `nvme-vfio` guest scenario's
//! tool (QEMU's NVMe in the guest, rebound from the kernel's driver).
//!
//! Steps, each failing the command with a message saying what differed:
//! bring-up and identify (NN, each namespace's LBA size); read the data
//! the kernel wrote (`--expect`), through a bounce buffer; write new data
//! (`--write`) from guest memory attached to the device (direct DMA at
//! IOVA = GPA), read it back; deallocate (`--deallocate`, Dataset
//! Management) and, where the namespace says deallocated blocks read as
//! zeros, read zeros back; flush; a controller reset and I/O after it; a
//! function-level reset (`VFIO_DEVICE_RESET`), a fresh bring-up and the
//! written data read back once more; shutdown.

use super::CliError;
use clap::Args;
use parastor_core::{DiskIo, Gpa, GpaRange, GuestMem, IoOptions, SgList, UnmapBehavior};
use parastor_nvme_driver::{DeviceAccess, DriverConfig, NvmeDisk, NvmeDriver};
use parastor_runtime::RuntimeTimer;
use parastor_sys::{GuestRam, MappedRegion};
use parastor_vfio::{VfioDevice, VfioOptions};
use std::sync::Arc;
use std::time::Instant;

/// `parastor nvme-check`.
#[derive(Args, Debug)]
pub struct NvmeCheckArgs {
    /// The PCI function, bound to vfio-pci (`0000:00:04.0`).
    #[arg(long)]
    pub pci: String,
    /// The number of namespaces Identify Controller must report (NN).
    #[arg(long)]
    pub nn: Option<u32>,
    /// The serial number Identify Controller must report (trailing spaces
    /// trimmed).
    #[arg(long)]
    pub serial: Option<String>,
    /// The active namespaces, comma-separated (`1,2`): the list must be
    /// exactly this.
    #[arg(long, value_delimiter = ',')]
    pub namespaces: Vec<u32>,
    /// `NSID:BYTES`: namespace NSID must have BYTES-byte logical blocks
    /// (repeatable).
    #[arg(long = "lba-size")]
    pub lba_size: Vec<String>,
    /// `NSID:LBA:FILE`: the namespace must hold FILE's bytes at LBA
    /// (repeatable).
    #[arg(long)]
    pub expect: Vec<String>,
    /// `NSID:LBA:FILE`: write FILE's bytes at LBA (repeatable); read back
    /// after the writes and again after each reset.
    #[arg(long)]
    pub write: Vec<String>,
    /// `NSID:LBA:COUNT`: deallocate COUNT blocks at LBA after the writes
    /// (repeatable).
    #[arg(long)]
    pub deallocate: Vec<String>,
    /// Skip the controller reset and the function-level reset.
    #[arg(long)]
    pub no_reset: bool,
    /// MiB of DMA memory for the driver.
    #[arg(long, default_value_t = 8)]
    pub dma_mib: usize,
    /// I/O queue pairs at most (one per CPU); the written data is read
    /// back from a runtime thread on every CPU at once, so each CPU's
    /// queue and MSI-X vector carry I/O.
    #[arg(long, default_value_t = 2)]
    pub io_queues: u16,
}

/// One `NSID:LBA:FILE` argument, loaded.
#[derive(Debug)]
struct Data {
    nsid: u32,
    lba: u64,
    name: String,
    bytes: Vec<u8>,
}

/// Bytes of each guest memory buffer (one transfer's worth).
const CHUNK: usize = 128 << 10;

/// Where the buffers sit in guest physical address space: not at 0, so a
/// device address of 0 is never a valid buffer (with IOVA = GPA).
const BUFFER_GPA: Gpa = Gpa::new(1 << 20);

fn parse_u<T: std::str::FromStr>(field: &str, what: &str, arg: &str) -> Result<T, CliError> {
    field
        .parse()
        .map_err(|_| CliError::new(format!("`{arg}`: the {what} `{field}` is not a number")))
}

fn parse_data(arg: &str) -> Result<Data, CliError> {
    let mut parts = arg.splitn(3, ':');
    let (Some(nsid), Some(lba), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(CliError::new(format!("`{arg}`: expected NSID:LBA:FILE")));
    };
    let bytes =
        std::fs::read(file).map_err(|e| CliError::new(format!("`{arg}`: reading {file}: {e}")))?;
    Ok(Data {
        nsid: parse_u(nsid, "NSID", arg)?,
        lba: parse_u(lba, "LBA", arg)?,
        name: file.to_string(),
        bytes,
    })
}

fn parse_pair(arg: &str) -> Result<(u32, u64), CliError> {
    let (a, b) = arg
        .split_once(':')
        .ok_or_else(|| CliError::new(format!("`{arg}`: expected NSID:NUMBER")))?;
    Ok((parse_u(a, "NSID", arg)?, parse_u(b, "number", arg)?))
}

fn parse_triple(arg: &str) -> Result<(u32, u64, u64), CliError> {
    let mut parts = arg.split(':');
    let (Some(a), Some(b), Some(c), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CliError::new(format!("`{arg}`: expected NSID:LBA:COUNT")));
    };
    Ok((
        parse_u(a, "NSID", arg)?,
        parse_u(b, "LBA", arg)?,
        parse_u(c, "count", arg)?,
    ))
}

/// Guest memory for data buffers: `direct` is attached to the device
/// (buffers in it go to the device as they are), `bounce` is not (the
/// driver copies through its own DMA memory).
struct Buffers {
    direct: Option<GuestMem>,
    bounce: GuestMem,
}

impl Buffers {
    fn new(device: &VfioDevice) -> Result<Self, CliError> {
        let ram = |name| {
            let region = MappedRegion::memfd(name, CHUNK).map_err(|e| {
                CliError::new(format!("mapping {CHUNK} bytes of buffer memory: {e}"))
            })?;
            GuestRam::new(vec![(BUFFER_GPA, Arc::new(region))])
                .map_err(|e| CliError::new(format!("buffer memory layout: {e}")))
        };
        let direct = match device.attach_guest_ram(ram("nvme-check-direct")?) {
            Ok(mem) => Some(mem),
            Err(e) => {
                println!("nvme-check: guest memory not attached ({e}); every transfer bounces");
                None
            }
        };
        Ok(Self {
            direct,
            bounce: GuestMem::new(ram("nvme-check-bounce")?),
        })
    }

    fn pick(&self, direct: bool) -> &GuestMem {
        match (&self.direct, direct) {
            (Some(d), true) => d,
            _ => &self.bounce,
        }
    }
}

/// Counters for the summary line.
#[derive(Default)]
struct Tally {
    read: u64,
    written: u64,
}

fn disk_error(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::new(format!("{what}: {e}"))
}

/// Reads `len` bytes at `lba` of `disk` through `mem`, in chunks, and
/// compares them with `want` (`None`: all zeros); the first differing
/// byte is reported.
async fn read_compare(
    disk: &NvmeDisk,
    mem: &GuestMem,
    lba: u64,
    want: Option<&[u8]>,
    len: usize,
    what: &str,
) -> Result<u64, CliError> {
    let sector = disk.sector_size() as usize;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(CHUNK);
        let range = [GpaRange::new(BUFFER_GPA, n as u64)];
        let sg = SgList::new(&**mem, &range, true).map_err(|e| disk_error(what, e))?;
        disk.read(sg, lba + (done / sector) as u64, IoOptions::default())
            .await
            .map_err(|e| disk_error(&format!("{what}: read at byte {done}"), e))?;
        mem.read_at(BUFFER_GPA, &mut buf[..n])
            .map_err(|e| disk_error(what, e))?;
        let expected = want.map(|w| &w[done..done + n]);
        let differs = match expected {
            Some(w) => buf[..n].iter().zip(w).position(|(a, b)| a != b),
            None => buf[..n].iter().position(|b| *b != 0),
        };
        if let Some(at) = differs {
            let at = done + at;
            return Err(CliError::new(format!(
                "{what}: byte {at} (LBA {} + {}) is {:#04x}, expected {:#04x}",
                lba + (at / sector) as u64,
                at % sector,
                buf[at - done],
                expected.map_or(0, |w| w[at - done])
            )));
        }
        done += n;
    }
    Ok(len as u64)
}

/// Writes `data` at `lba` of `disk` through `mem`, in chunks.
async fn write_all(
    disk: &NvmeDisk,
    mem: &GuestMem,
    lba: u64,
    data: &[u8],
    what: &str,
) -> Result<u64, CliError> {
    let sector = disk.sector_size() as usize;
    for (i, piece) in data.chunks(CHUNK).enumerate() {
        mem.write_at(BUFFER_GPA, piece)
            .map_err(|e| disk_error(what, e))?;
        let range = [GpaRange::new(BUFFER_GPA, piece.len() as u64)];
        let sg = SgList::new(&**mem, &range, false).map_err(|e| disk_error(what, e))?;
        let at = i * CHUNK;
        disk.write(sg, lba + (at / sector) as u64, IoOptions::default())
            .await
            .map_err(|e| disk_error(&format!("{what}: write at byte {at}"), e))?;
    }
    Ok(data.len() as u64)
}

/// The namespace `nsid` of `driver`, or an error naming it.
fn namespace(driver: &NvmeDriver, nsid: u32) -> Result<NvmeDisk, CliError> {
    driver
        .namespace(nsid)
        .map_err(|e| disk_error(&format!("namespace {nsid}"), e))
}

fn check_whole_sectors(disk: &NvmeDisk, d: &Data, what: &str) -> Result<(), CliError> {
    if d.bytes.is_empty() || !d.bytes.len().is_multiple_of(disk.sector_size() as usize) {
        return Err(CliError::new(format!(
            "{what} {}: {} bytes are not whole {}-byte sectors",
            d.name,
            d.bytes.len(),
            disk.sector_size()
        )));
    }
    Ok(())
}

/// Reads every `--write` back (through the bounce memory).
async fn verify_writes(
    driver: &NvmeDriver,
    buffers: &Buffers,
    writes: &[Data],
    when: &str,
    tally: &mut Tally,
) -> Result<(), CliError> {
    for d in writes {
        let disk = namespace(driver, d.nsid)?;
        tally.read += read_compare(
            &disk,
            buffers.pick(false),
            d.lba,
            Some(&d.bytes),
            d.bytes.len(),
            &format!("{when}: namespace {} LBA {} ({})", d.nsid, d.lba, d.name),
        )
        .await?;
    }
    Ok(())
}

/// Reads every `--write` back on a runtime thread per allowed CPU, all
/// at once (each thread through its own bounce memory); the bytes read
/// and the number of CPUs.
async fn per_cpu_reads(driver: &NvmeDriver, writes: &[Data]) -> Result<(u64, usize), CliError> {
    if writes.is_empty() {
        return Ok((0, 0));
    }
    let cpus = parastor_runtime::allowed_cpus()
        .map_err(|e| CliError::new(format!("reading the CPU affinity: {e}")))?;
    let runtime = parastor_runtime::Runtime::per_cpu(&cpus)
        .map_err(|e| CliError::new(format!("starting a runtime thread per CPU: {e}")))?;
    let mut tasks = Vec::new();
    for (thread, cpu) in runtime.threads().iter().zip(&cpus) {
        let jobs: Vec<(NvmeDisk, u64, Vec<u8>, String)> = writes
            .iter()
            .map(|d| {
                namespace(driver, d.nsid).map(|disk| {
                    let what =
                        format!("CPU {cpu}: namespace {} LBA {} ({})", d.nsid, d.lba, d.name);
                    (disk, d.lba, d.bytes.clone(), what)
                })
            })
            .collect::<Result<_, _>>()?;
        let region = MappedRegion::memfd("nvme-check-cpu", CHUNK)
            .map_err(|e| CliError::new(format!("mapping buffer memory: {e}")))?;
        let mem = GuestMem::new(
            GuestRam::new(vec![(BUFFER_GPA, Arc::new(region))])
                .map_err(|e| CliError::new(format!("buffer memory layout: {e}")))?,
        );
        tasks.push(thread.spawn(async move {
            let mut read = 0;
            for (disk, lba, bytes, what) in &jobs {
                read += read_compare(disk, &mem, *lba, Some(bytes), bytes.len(), what).await?;
            }
            Ok::<u64, CliError>(read)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task
            .await
            .map_err(|e| CliError::new(format!("a per-CPU reader ended early: {e}")))??;
    }
    runtime.shutdown();
    Ok((total, cpus.len()))
}

/// Every repeated argument of one kind, parsed with `parse`.
fn parse_all<T>(
    args: &[String],
    parse: impl Fn(&str) -> Result<T, CliError>,
) -> Result<Vec<T>, CliError> {
    args.iter().map(|a| parse(a)).collect()
}

/// Runs `parastor nvme-check`.
pub fn run(args: NvmeCheckArgs) -> Result<(), CliError> {
    let expects = parse_all(&args.expect, parse_data)?;
    let writes = parse_all(&args.write, parse_data)?;
    let lba_sizes = parse_all(&args.lba_size, parse_pair)?;
    let deallocs = parse_all(&args.deallocate, parse_triple)?;
    let start = Instant::now();
    let options = VfioOptions {
        dma_bytes: args.dma_mib << 20,
        ..VfioOptions::default()
    };
    let device = Arc::new(
        VfioDevice::open(&args.pci, &options)
            .map_err(|e| CliError::new(format!("opening {}: {e}", args.pci)))?,
    );
    println!(
        "nvme-check: {} opened ({:?} IOMMU, {} MSI-X vectors)",
        device.name(),
        device.iommu(),
        device.max_interrupts()
    );
    let buffers = Buffers::new(&device)?;
    let dyn_device: Arc<dyn DeviceAccess> = device.clone();
    let mut tally = Tally::default();
    let io_queues = args.io_queues.max(1);

    parastor_runtime::block_on(async {
        let bring_up = |what: &'static str| {
            let device = dyn_device.clone();
            async move {
                let config = DriverConfig {
                    io_queues,
                    ..DriverConfig::default()
                };
                NvmeDriver::new(device, config, Arc::new(RuntimeTimer))
                    .await
                    .map_err(|e| disk_error(what, e))
            }
        };
        let driver = bring_up("bring-up").await?;
        let facts = driver.facts();
        println!(
            "nvme-check: serial `{}` model `{}`",
            facts.serial.trim_end(),
            facts.model.trim_end()
        );
        println!(
            "nvme-check: controller {} NN {} namespaces {:?} ONCS {:#x} max transfer {} bytes, {} I/O queue(s)",
            facts.cntlid,
            facts.nn,
            driver.namespaces(),
            facts.oncs,
            facts.max_transfer,
            facts.io_queues
        );
        if let Some(nn) = args.nn
            && facts.nn != nn
        {
            return Err(CliError::new(format!("NN is {}, expected {nn}", facts.nn)));
        }
        if let Some(serial) = &args.serial
            && facts.serial.trim_end() != serial
        {
            return Err(CliError::new(format!(
                "serial number `{}`, expected `{serial}`",
                facts.serial.trim_end()
            )));
        }
        if !args.namespaces.is_empty() && driver.namespaces() != args.namespaces {
            return Err(CliError::new(format!(
                "active namespaces {:?}, expected {:?}",
                driver.namespaces(),
                args.namespaces
            )));
        }
        for &(nsid, bytes) in &lba_sizes {
            let disk = namespace(&driver, nsid)?;
            if u64::from(disk.sector_size()) != bytes {
                return Err(CliError::new(format!(
                    "namespace {nsid}: {}-byte LBAs, expected {bytes}",
                    disk.sector_size()
                )));
            }
            println!(
                "nvme-check: namespace {nsid}: {} LBAs of {} bytes, unmap {}",
                disk.sector_count(),
                disk.sector_size(),
                disk.unmap_behavior().as_str()
            );
        }

        // The kernel's data, through bounce buffers.
        for d in &expects {
            let disk = namespace(&driver, d.nsid)?;
            check_whole_sectors(&disk, d, "--expect")?;
            tally.read += read_compare(
                &disk,
                buffers.pick(false),
                d.lba,
                Some(&d.bytes),
                d.bytes.len(),
                &format!("kernel's data: namespace {} LBA {} ({})", d.nsid, d.lba, d.name),
            )
            .await?;
        }
        // New data, from memory attached to the device (direct DMA).
        for d in &writes {
            let disk = namespace(&driver, d.nsid)?;
            check_whole_sectors(&disk, d, "--write")?;
            tally.written += write_all(
                &disk,
                buffers.pick(true),
                d.lba,
                &d.bytes,
                &format!("namespace {} LBA {} ({})", d.nsid, d.lba, d.name),
            )
            .await?;
        }
        if buffers.direct.is_some() && !writes.is_empty() && device.direct_pins() == 0 {
            return Err(CliError::new(
                "the writes from attached guest memory were bounced, not sent to the device directly",
            ));
        }
        verify_writes(&driver, &buffers, &writes, "after writing", &mut tally).await?;
        // Keepalive: save the driver with the controller running, restore
        // a new instance over the same queues and DMA memory, read again.
        let blob = driver.save().map_err(|e| disk_error("keepalive save", e))?;
        drop(driver);
        let driver = NvmeDriver::restore(
            dyn_device.clone(),
            DriverConfig {
                io_queues,
                ..DriverConfig::default()
            },
            Arc::new(RuntimeTimer),
            &blob,
        )
        .await
        .map_err(|e| disk_error("keepalive restore", e))?;
        verify_writes(&driver, &buffers, &writes, "after keepalive restore", &mut tally).await?;
        println!(
            "nvme-check: keepalive save ({} bytes) and restore over the running controller, I/O after it ok",
            blob.len()
        );
        let (read, cpus) = per_cpu_reads(&driver, &writes).await?;
        tally.read += read;
        let queues = driver.io_queues_created();
        println!("nvme-check: read back from {cpus} CPUs at once: {queues} I/O queue(s) created");
        let want = cpus.min(usize::from(io_queues));
        if queues < want {
            return Err(CliError::new(format!(
                "{queues} I/O queues after I/O from {cpus} CPUs, expected {want} (one per CPU)"
            )));
        }

        // Deallocate; zeros back where the namespace promises them.
        for &(nsid, lba, count) in &deallocs {
            let disk = namespace(&driver, nsid)?;
            let nlb = u32::try_from(count)
                .map_err(|_| CliError::new(format!("--deallocate {nsid}:{lba}:{count}: too many blocks")))?;
            disk.dataset_management(&[(lba, nlb)], true)
                .await
                .map_err(|e| disk_error(&format!("DSM deallocate namespace {nsid} LBA {lba}+{count}"), e))?;
            if disk.unmap_behavior() == UnmapBehavior::Zeroes {
                let len = usize::try_from(count * u64::from(disk.sector_size()))
                    .map_err(|_| CliError::new("deallocated range too large to read back"))?;
                tally.read += read_compare(
                    &disk,
                    buffers.pick(true),
                    lba,
                    None,
                    len,
                    &format!("deallocated namespace {nsid} LBA {lba}+{count}"),
                )
                .await?;
            }
            println!("nvme-check: namespace {nsid}: LBA {lba}+{count} deallocated");
        }
        for nsid in driver.namespaces() {
            namespace(&driver, nsid)?
                .flush(IoOptions::default())
                .await
                .map_err(|e| disk_error(&format!("flush namespace {nsid}"), e))?;
        }
        println!("nvme-check: flushed");

        let driver = if args.no_reset {
            driver
        } else {
            driver
                .reset()
                .await
                .map_err(|e| disk_error("controller reset", e))?;
            verify_writes(&driver, &buffers, &writes, "after the controller reset", &mut tally)
                .await?;
            println!("nvme-check: controller reset, I/O after it ok");
            drop(driver);
            dyn_device
                .reset_function()
                .map_err(|e| disk_error("function-level reset", e))?;
            let driver = bring_up("bring-up after the function-level reset").await?;
            verify_writes(&driver, &buffers, &writes, "after the function-level reset", &mut tally)
                .await?;
            println!("nvme-check: function-level reset, bring-up and I/O after it ok");
            driver
        };
        let refused = driver.refused_completions();
        driver
            .shutdown()
            .await
            .map_err(|e| disk_error("shutdown", e))?;
        Ok::<u64, CliError>(refused)
    })
    .and_then(|refused| {
        if refused == 0 {
            Ok(())
        } else {
            Err(CliError::new(format!(
                "the driver refused {refused} completions from the controller"
            )))
        }
    })?;
    println!(
        "nvme-check: ok: read and compared {} bytes, wrote {} bytes ({} buffers sent directly), in {:.2}s",
        tally.read,
        tally.written,
        device.direct_pins(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked_with_their_text() {
        assert_eq!(parse_pair("2:4096").unwrap(), (2, 4096));
        assert!(
            parse_pair("2")
                .unwrap_err()
                .to_string()
                .contains("NSID:NUMBER")
        );
        assert!(
            parse_pair("x:1")
                .unwrap_err()
                .to_string()
                .contains("the NSID `x`")
        );
        assert_eq!(parse_triple("1:8:16").unwrap(), (1, 8, 16));
        assert!(
            parse_triple("1:8")
                .unwrap_err()
                .to_string()
                .contains("NSID:LBA:COUNT")
        );
        assert!(parse_triple("1:8:16:3").is_err());
        let err = parse_data("1:0:/nonexistent/nvme-check")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/nvme-check"), "{err}");
        assert!(parse_data("1:0").is_err());
    }

    #[test]
    fn a_missing_function_fails_with_its_path() {
        let args = NvmeCheckArgs {
            pci: "0000:7f:1f.7".into(),
            nn: None,
            serial: None,
            namespaces: vec![],
            lba_size: vec![],
            expect: vec![],
            write: vec![],
            deallocate: vec![],
            no_reset: false,
            dma_mib: 1,
            io_queues: 2,
        };
        let err = run(args).unwrap_err().to_string();
        assert!(err.contains("/sys/bus/pci/devices/0000:7f:1f.7"), "{err}");
    }
}
