//! `parastor nvme-bench`: 4 KiB random reads through parastor's NVMe
//! driver over a controller bound to vfio-pci, at queue depth 1 and 32 —
//! the `nvme-perf` guest scenario's counterpart to fio on the kernel's
//! nvme driver over the same device. Informative figures.
//!
//! Buffers are guest memory attached to the device (IOVA = GPA), so every
//! read goes to the device by direct DMA, as a guest's buffer would; all
//! commands run on one runtime thread (one I/O queue).

use super::CliError;
use clap::Args;
use futures::future::join_all;
use parastor_core::{DiskIo, Gpa, GpaRange, GuestMem, IoOptions, SgList};
use parastor_nvme_driver::{DeviceAccess, DriverConfig, NvmeDisk, NvmeDriver};
use parastor_runtime::RuntimeTimer;
use parastor_sys::{GuestRam, MappedRegion};
use parastor_vfio::{VfioDevice, VfioOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `parastor nvme-bench`.
#[derive(Args, Debug)]
pub struct NvmeBenchArgs {
    /// The PCI function, bound to vfio-pci (`0000:00:04.0`).
    #[arg(long)]
    pub pci: String,
    /// The namespace to read.
    #[arg(long, default_value_t = 1)]
    pub nsid: u32,
    /// Seconds per queue depth.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Queue depths to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 32])]
    pub depth: Vec<u32>,
}

/// Bytes per read.
const BLOCK: u64 = 4096;
/// Where the buffers sit in guest physical address space.
const BUFFER_GPA: u64 = 1 << 20;

/// Reads `BLOCK` bytes at random block-aligned offsets of `disk` into the
/// buffer at `gpa` until `deadline`; the number of reads.
async fn reader(
    disk: &NvmeDisk,
    mem: &GuestMem,
    gpa: u64,
    deadline: Instant,
    seed: u64,
) -> Result<u64, CliError> {
    let per_block = BLOCK / u64::from(disk.sector_size());
    let blocks = disk.sector_count() / per_block;
    if blocks == 0 {
        return Err(CliError::new(
            "the namespace is smaller than one 4 KiB block",
        ));
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let range = [GpaRange::new(Gpa::new(gpa), BLOCK)];
    let mut done = 0;
    while Instant::now() < deadline {
        let sg =
            SgList::new(&**mem, &range, true).map_err(|e| CliError::new(format!("buffer: {e}")))?;
        let lba = rng.u64(0..blocks) * per_block;
        disk.read(sg, lba, IoOptions::default())
            .await
            .map_err(|e| CliError::new(format!("read at LBA {lba}: {e}")))?;
        done += 1;
    }
    Ok(done)
}

/// Runs `parastor nvme-bench`; prints one `nvme-bench: qdN iops=…` line
/// per depth.
pub fn run(args: NvmeBenchArgs) -> Result<(), CliError> {
    let depth_max = args.depth.iter().copied().max().unwrap_or(1).clamp(1, 256);
    let device = Arc::new(
        VfioDevice::open(&args.pci, &VfioOptions::default())
            .map_err(|e| CliError::new(format!("opening {}: {e}", args.pci)))?,
    );
    let len = depth_max as usize * BLOCK as usize;
    let region = MappedRegion::memfd("nvme-bench", len)
        .map_err(|e| CliError::new(format!("mapping {len} bytes of buffers: {e}")))?;
    let ram = GuestRam::new(vec![(Gpa::new(BUFFER_GPA), Arc::new(region))])
        .map_err(|e| CliError::new(format!("buffer layout: {e}")))?;
    let mem = device
        .attach_guest_ram(ram)
        .map_err(|e| CliError::new(format!("attaching the buffers: {e}")))?;
    let dyn_device: Arc<dyn DeviceAccess> = device.clone();
    let seconds = Duration::from_secs_f64(args.seconds.clamp(0.1, 600.0));
    parastor_runtime::block_on(async {
        let config = DriverConfig {
            io_queues: 1,
            ..DriverConfig::default()
        };
        let driver = NvmeDriver::new(dyn_device, config, Arc::new(RuntimeTimer))
            .await
            .map_err(|e| CliError::new(format!("bring-up: {e}")))?;
        let disk = driver
            .namespace(args.nsid)
            .map_err(|e| CliError::new(format!("namespace {}: {e}", args.nsid)))?;
        for &depth in &args.depth {
            let depth = depth.clamp(1, depth_max);
            let start = Instant::now();
            let deadline = start + seconds;
            let readers = (0..depth).map(|i| {
                let gpa = BUFFER_GPA + u64::from(i) * BLOCK;
                reader(&disk, &mem, gpa, deadline, u64::from(i) + 1)
            });
            let mut total = 0;
            for r in join_all(readers).await {
                total += r?;
            }
            let iops = total as f64 / start.elapsed().as_secs_f64();
            println!("nvme-bench: qd{depth} iops={iops:.0} reads={total}");
        }
        driver
            .shutdown()
            .await
            .map_err(|e| CliError::new(format!("shutdown: {e}")))?;
        Ok::<(), CliError>(())
    })?;
    println!("nvme-bench: {} buffers sent directly", device.direct_pins());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_function_fails_with_its_path() {
        let args = NvmeBenchArgs {
            pci: "0000:7f:1f.6".into(),
            nsid: 1,
            seconds: 0.1,
            depth: vec![1],
        };
        let err = run(args).unwrap_err().to_string();
        assert!(err.contains("/sys/bus/pci/devices/0000:7f:1f.6"), "{err}");
    }
}
