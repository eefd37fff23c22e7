//! [`VfioDevice`]: one PCI function bound to `vfio-pci`, as the NVMe
//! driver's [`DeviceAccess`].

use crate::address::PciAddress;
use crate::pages::PageAllocator;
use parastor_core::addr::{DeviceAddress, DeviceRange, DmaDomainId, Gpa, GpaRange};
use parastor_core::memory::{Access, GuestMem, GuestMemory};
use parastor_nvme_driver::{DeviceAccess, DeviceError, DeviceInterrupt, DmaBuffer, DmaRelease};
use parastor_runtime::EventFd;
use parastor_sys::vfio::{
    CONFIG_REGION_INDEX, IommuType, MSIX_IRQ_INDEX, RegionInfo, VfioContainer, VfioDeviceFd,
    VfioError, VfioGroup,
};
use parastor_sys::{GuestRam, MappedRegion, MmioRegion, dma};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// The page granule of DMA memory (NVMe's CC.MPS = 0; the host page).
const PAGE: u64 = 4096;

/// How many MSI-X vectors are wired to eventfds at most (an admin queue
/// and an I/O queue per CPU fit with room to spare).
pub const MAX_VECTORS: u16 = 64;

/// Where [`VfioDevice`] looks for PCI functions and VFIO groups; tests
/// point it elsewhere.
#[derive(Clone, Debug)]
pub struct SystemPaths {
    /// `/sys/bus/pci/devices`.
    pub pci_devices: PathBuf,
    /// `/dev/vfio`.
    pub vfio_dev: PathBuf,
}

impl Default for SystemPaths {
    fn default() -> Self {
        Self {
            pci_devices: PathBuf::from("/sys/bus/pci/devices"),
            vfio_dev: PathBuf::from("/dev/vfio"),
        }
    }
}

/// How to open a device.
#[derive(Clone, Debug)]
pub struct VfioOptions {
    /// Bytes of DMA memory for the driver (queues, PRP lists, bounce
    /// buffers), locked and mapped for the device at open.
    pub dma_bytes: usize,
    /// Where that memory starts in the device's I/O virtual address space
    /// (type-1 IOMMU only): above any guest physical address mapped with
    /// [`DeviceAccess::map_dma`] (which maps at IOVA = GPA), below the
    /// IOMMU's address width (39 bits for a 3-level VT-d), and clear of
    /// the x86 MSI window at `0xFEE0_0000`.
    pub dma_iova: u64,
    /// Where the function and the VFIO groups are found.
    pub paths: SystemPaths,
}

impl Default for VfioOptions {
    fn default() -> Self {
        Self {
            dma_bytes: 8 << 20,
            dma_iova: 1 << 38,
            paths: SystemPaths::default(),
        }
    }
}

/// Why a device could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The PCI address is malformed.
    BadAddress(String),
    /// Something in sysfs is missing or unexpected (the message names the
    /// path).
    Sysfs(String),
    /// A VFIO call failed.
    Vfio(VfioError),
    /// The DMA memory could not be set up.
    Dma(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::BadAddress(why) | OpenError::Sysfs(why) | OpenError::Dma(why) => {
                f.write_str(why)
            }
            OpenError::Vfio(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<VfioError> for OpenError {
    fn from(e: VfioError) -> Self {
        OpenError::Vfio(e)
    }
}

/// A register window: mapped, or (a BAR VFIO will not map) reached with
/// `pread`/`pwrite` on the device file.
enum Bar {
    Mapped(MmioRegion),
    File(RegionInfo),
    Absent,
}

/// The driver's DMA memory: a locked memory file, reached by the CPU
/// through `mem` and by the device at `addresses`.
struct DmaPool {
    mem: GuestMem,
    pages: Mutex<PageAllocator>,
    /// Where the device sees the pool.
    place: DmaPlace,
}

enum DmaPlace {
    /// One IOVA range from `base` (type-1 IOMMU).
    Iova { base: u64 },
    /// Each page's physical address (no IOMMU), and the reverse map.
    Physical {
        addresses: Vec<u64>,
        index: HashMap<u64, usize>,
    },
}

impl DmaPool {
    fn device_address(&self, page: usize) -> Option<u64> {
        match &self.place {
            DmaPlace::Iova { base } => Some(base + page as u64 * PAGE),
            DmaPlace::Physical { addresses, .. } => addresses.get(page).copied(),
        }
    }

    fn page_of(&self, addr: u64) -> Option<usize> {
        match &self.place {
            DmaPlace::Iova { base } => usize::try_from(addr.checked_sub(*base)? / PAGE).ok(),
            DmaPlace::Physical { index, .. } => index.get(&addr).copied(),
        }
    }
}

impl DmaRelease for DmaPool {
    fn release(&self, range: DeviceRange) {
        if let Some(first) = self.page_of(range.addr.get()) {
            let pages = range.len.div_ceil(PAGE) as usize;
            if let Ok(mut p) = self.pages.lock() {
                p.free(first, pages);
            }
        }
    }

    fn leave(&self, range: DeviceRange) {
        if let Some(first) = self.page_of(range.addr.get()) {
            let pages = range.len.div_ceil(PAGE) as usize;
            if let Ok(mut p) = self.pages.lock() {
                p.leave(first, pages);
            }
        }
    }
}

/// An MSI-X vector's eventfd, waited for on the runtime thread that first
/// polls it.
struct VfioInterrupt {
    event: EventFd,
}

impl DeviceInterrupt for VfioInterrupt {
    fn poll_signal(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self.event.poll_wait(cx) {
            Poll::Ready(Ok(_)) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                // Polled off the runtime thread the eventfd registered on:
                // fall back to polling (wake at once), which only costs
                // time — the driver checks its completion queue anyway.
                log::debug!("MSI-X eventfd wait failed ({e}); polling instead");
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

/// A PCI function bound to `vfio-pci`, opened through its IOMMU group:
/// config space and registers, locked DMA memory mapped for the device,
/// MSI-X vectors as eventfds, function reset.
pub struct VfioDevice {
    name: String,
    /// Kept open: the group and container hold the IOMMU context.
    _group: VfioGroup,
    container: VfioContainer,
    device: VfioDeviceFd,
    config: RegionInfo,
    bars: [Bar; 6],
    dma: Arc<DmaPool>,
    domain: DmaDomainId,
    vectors: Vec<Arc<VfioInterrupt>>,
    /// Guest memory attached with [`attach_guest_ram`](Self::attach_guest_ram)
    /// (type-1 only), mapped at IOVA = GPA.
    attached: Mutex<Vec<GuestMem>>,
    /// Ranges of attached memory pinned for the device so far.
    direct_pins: Arc<AtomicU64>,
}

impl fmt::Debug for VfioDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioDevice")
            .field("name", &self.name)
            .field("iommu", &self.container.iommu())
            .field("vectors", &self.vectors.len())
            .finish()
    }
}

/// Hands out a distinct DMA domain per opened device.
static NEXT_DOMAIN: AtomicU32 = AtomicU32::new(0x5646_0000);

fn sysfs_error(what: String) -> OpenError {
    OpenError::Sysfs(what)
}

/// The last component of the symlink `path` points to.
fn link_name(path: &Path) -> Result<String, OpenError> {
    let target = std::fs::read_link(path)
        .map_err(|e| sysfs_error(format!("reading the link {}: {e}", path.display())))?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            sysfs_error(format!(
                "{} points to {}, which has no name",
                path.display(),
                target.display()
            ))
        })
}

impl VfioDevice {
    /// Opens the PCI function `address` (`0000:00:04.0`), which must be
    /// bound to `vfio-pci`: finds its IOMMU group in sysfs, opens the
    /// container and the group (`/dev/vfio/N`, or `/dev/vfio/noiommu-N`
    /// in the kernel's no-IOMMU mode, which is then used), maps its
    /// registers, allocates and maps `options.dma_bytes` of locked DMA
    /// memory, and wires up to [`MAX_VECTORS`] MSI-X vectors to eventfds.
    ///
    /// # Errors
    /// An [`OpenError`] naming the path or call that failed.
    pub fn open(address: &str, options: &VfioOptions) -> Result<Self, OpenError> {
        let address = PciAddress::parse(address).map_err(OpenError::BadAddress)?;
        let name = address.to_string();
        let function = options.paths.pci_devices.join(&name);
        if !function.exists() {
            return Err(sysfs_error(format!(
                "no PCI function {name}: {} does not exist",
                function.display()
            )));
        }
        let driver = link_name(&function.join("driver")).map_err(|_| {
            sysfs_error(format!(
                "PCI function {name} is bound to no driver ({} is missing); bind it to vfio-pci",
                function.join("driver").display()
            ))
        })?;
        if driver != "vfio-pci" {
            return Err(sysfs_error(format!(
                "PCI function {name} is bound to {driver}, not vfio-pci"
            )));
        }
        let group_number = link_name(&function.join("iommu_group")).map_err(|e| {
            sysfs_error(format!(
                "PCI function {name} has no IOMMU group (no IOMMU, and no-IOMMU mode off): {e}"
            ))
        })?;
        let plain = options.paths.vfio_dev.join(&group_number);
        let noiommu = options
            .paths
            .vfio_dev
            .join(format!("noiommu-{group_number}"));
        let (group_path, no_iommu) = if plain.exists() {
            (plain, false)
        } else if noiommu.exists() {
            (noiommu, true)
        } else {
            return Err(sysfs_error(format!(
                "PCI function {name} is in IOMMU group {group_number}, but neither {} nor {} \
                 exists (is vfio-pci loaded?)",
                plain.display(),
                noiommu.display()
            )));
        };

        let mut container = VfioContainer::open()?;
        let group = VfioGroup::open(&group_path)?;
        group.set_container(&container)?;
        container.set_iommu(no_iommu)?;
        let device = group.device(&name)?;

        let config = device.region_info(CONFIG_REGION_INDEX)?;
        let bars = [0u32, 1, 2, 3, 4, 5].map(|i| match device.region_info(i) {
            Ok(r) if r.size == 0 => Bar::Absent,
            Ok(r) => match device.map_region(&r) {
                Ok(m) => Bar::Mapped(m),
                Err(e) => {
                    log::debug!("{name}: BAR {i} not mapped ({e}); using pread/pwrite");
                    Bar::File(r)
                }
            },
            Err(_) => Bar::Absent,
        });

        let dma = Arc::new(Self::dma_pool(&container, options)?);

        let count = device
            .irq_count(MSIX_IRQ_INDEX)?
            .min(u32::from(MAX_VECTORS));
        let mut vectors = Vec::new();
        for _ in 0..count {
            let event = EventFd::new()
                .map_err(|e| OpenError::Dma(format!("creating an MSI-X eventfd: {e}")))?;
            vectors.push(Arc::new(VfioInterrupt { event }));
        }
        let this = Self {
            name,
            _group: group,
            container,
            device,
            config,
            bars,
            dma,
            domain: DmaDomainId::new(NEXT_DOMAIN.fetch_add(1, Ordering::Relaxed)),
            vectors,
            attached: Mutex::new(Vec::new()),
            direct_pins: Arc::new(AtomicU64::new(0)),
        };
        this.arm_vectors()?;
        Ok(this)
    }

    /// Wires every vector to its eventfd (VFIO enables MSI-X on the
    /// function and programs the table).
    fn arm_vectors(&self) -> Result<(), VfioError> {
        if self.vectors.is_empty() {
            return Ok(());
        }
        let fds: Vec<_> = self.vectors.iter().map(|v| v.event.fd()).collect();
        self.device.set_irq_eventfds(MSIX_IRQ_INDEX, 0, &fds)
    }

    /// The locked DMA pool, mapped for the device.
    fn dma_pool(container: &VfioContainer, options: &VfioOptions) -> Result<DmaPool, OpenError> {
        if parastor_sys::mmap::page_size() as u64 != PAGE {
            return Err(OpenError::Dma(format!(
                "the host page size is {} bytes; DMA memory is handed out in 4 KiB pages",
                parastor_sys::mmap::page_size()
            )));
        }
        let len = (options.dma_bytes as u64).div_ceil(PAGE).max(1) * PAGE;
        let len = usize::try_from(len).map_err(|_| OpenError::Dma("DMA pool too large".into()))?;
        let region = MappedRegion::memfd("parastor-vfio-dma", len)
            .map_err(|e| OpenError::Dma(format!("mapping {len} bytes of DMA memory: {e}")))?;
        dma::lock(&region).map_err(|e| {
            OpenError::Dma(format!(
                "locking {len} bytes of DMA memory (RLIMIT_MEMLOCK?): {e}"
            ))
        })?;
        let pages = len / PAGE as usize;
        let (allocator, place) = match container.iommu() {
            Some(IommuType::NoIommu) => {
                let addresses = dma::physical_addresses(&region)
                    .map_err(|e| OpenError::Dma(format!("no-IOMMU DMA memory: {e}")))?;
                if dma::locked_pages_may_move() {
                    log::warn!(
                        "no-IOMMU DMA: vm.compact_unevictable_allowed is not 0, so the kernel \
                         may migrate the locked DMA pages under the device; set it to 0"
                    );
                }
                let allocator = PageAllocator::physical(&addresses, PAGE);
                let index = addresses.iter().enumerate().map(|(i, a)| (*a, i)).collect();
                (allocator, DmaPlace::Physical { addresses, index })
            }
            _ => {
                if !options.dma_iova.is_multiple_of(PAGE) {
                    return Err(OpenError::Dma(format!(
                        "the DMA IOVA {:#x} is not page aligned",
                        options.dma_iova
                    )));
                }
                container.map_dma(&region, 0, len, options.dma_iova)?;
                (
                    PageAllocator::contiguous(pages),
                    DmaPlace::Iova {
                        base: options.dma_iova,
                    },
                )
            }
        };
        let ram = GuestRam::new(vec![(Gpa::new(0), Arc::new(region))])
            .map_err(|e| OpenError::Dma(format!("DMA memory layout: {e}")))?;
        Ok(DmaPool {
            mem: GuestMem::new(ram),
            pages: Mutex::new(allocator),
            place,
        })
    }

    /// The function's address (`0000:00:04.0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The IOMMU in use.
    pub fn iommu(&self) -> IommuType {
        self.container.iommu().unwrap_or(IommuType::Type1)
    }

    /// How many ranges of attached guest memory were pinned for the device
    /// (each a buffer the device reached directly, without a bounce).
    pub fn direct_pins(&self) -> u64 {
        self.direct_pins.load(Ordering::Relaxed)
    }

    /// Free pages of DMA memory (4 KiB each).
    pub fn free_dma_pages(&self) -> usize {
        self.dma.pages.lock().map_or(0, |p| p.free_pages())
    }

    /// Maps all of `ram` for the device at I/O virtual address = guest
    /// physical address (type-1 IOMMU only) and returns the memory handle
    /// to use for it: its pins for this device's
    /// [`dma_domain`](DeviceAccess::dma_domain) are those addresses, so the
    /// driver hands buffers in it to the device directly (no bounce), and
    /// [`DeviceAccess::map_dma`] accepts ranges of it.
    ///
    /// # Errors
    /// [`DeviceError::Unsupported`] without an IOMMU;
    /// [`DeviceError::BadRange`] if `ram` reaches into the DMA pool's
    /// IOVAs; [`DeviceError::Io`] if the kernel refuses the mapping.
    pub fn attach_guest_ram(&self, ram: GuestRam) -> Result<GuestMem, DeviceError> {
        let DmaPlace::Iova { base: dma_iova } = self.dma.place else {
            return Err(DeviceError::Unsupported(
                "mapping guest memory needs an IOMMU (no-IOMMU mode)",
            ));
        };
        let extent = ram.extent().get();
        if extent > dma_iova {
            return Err(DeviceError::BadRange {
                gpa: 0,
                len: extent,
            });
        }
        for (gpa, region) in ram.regions() {
            self.container
                .map_dma(region, 0, region.len(), gpa.get())
                .map_err(|e| DeviceError::Io {
                    op: "VFIO_IOMMU_MAP_DMA",
                    errno: e.raw_errno(),
                })?;
        }
        let mem = GuestMem::new(crate::attached::AttachedRam::new(
            ram,
            self.domain,
            self.direct_pins.clone(),
        ));
        if let Ok(mut a) = self.attached.lock() {
            a.push(mem.clone());
        }
        Ok(mem)
    }

    fn bar(&self, bar: u8) -> Option<&Bar> {
        self.bars.get(usize::from(bar))
    }

    fn file_read<const N: usize>(&self, region: &RegionInfo, offset: u64) -> Option<[u8; N]> {
        let mut b = [0u8; N];
        self.device.read_region(region, offset, &mut b).ok()?;
        Some(b)
    }
}

impl DeviceAccess for VfioDevice {
    fn id(&self) -> &str {
        &self.name
    }

    fn config_read_u32(&self, offset: u16) -> u32 {
        self.file_read::<4>(&self.config, u64::from(offset & !3))
            .map_or(u32::MAX, u32::from_le_bytes)
    }

    fn config_write_u32(&self, offset: u16, value: u32) {
        let _ =
            self.device
                .write_region(&self.config, u64::from(offset & !3), &value.to_le_bytes());
    }

    fn read_u32(&self, bar: u8, offset: u64) -> u32 {
        match self.bar(bar) {
            Some(Bar::Mapped(m)) => m.read_u32(offset),
            Some(Bar::File(r)) => self.file_read::<4>(r, offset).map(u32::from_le_bytes),
            _ => None,
        }
        .unwrap_or(u32::MAX)
    }

    fn read_u64(&self, bar: u8, offset: u64) -> u64 {
        match self.bar(bar) {
            Some(Bar::Mapped(m)) => m.read_u64(offset),
            Some(Bar::File(r)) => self.file_read::<8>(r, offset).map(u64::from_le_bytes),
            _ => None,
        }
        .unwrap_or(u64::MAX)
    }

    fn write_u32(&self, bar: u8, offset: u64, value: u32) {
        match self.bar(bar) {
            Some(Bar::Mapped(m)) => {
                m.write_u32(offset, value);
            }
            Some(Bar::File(r)) => {
                let _ = self.device.write_region(r, offset, &value.to_le_bytes());
            }
            _ => {}
        }
    }

    fn write_u64(&self, bar: u8, offset: u64, value: u64) {
        match self.bar(bar) {
            Some(Bar::Mapped(m)) => {
                m.write_u64(offset, value);
            }
            Some(Bar::File(r)) => {
                let _ = self.device.write_region(r, offset, &value.to_le_bytes());
            }
            _ => {}
        }
    }

    fn dma_domain(&self) -> DmaDomainId {
        self.domain
    }

    fn alloc_dma(&self, len: usize) -> Result<DmaBuffer, DeviceError> {
        let pages = (len as u64).div_ceil(PAGE).max(1) as usize;
        let first = self
            .dma
            .pages
            .lock()
            .map_err(|_| DeviceError::Gone("DMA allocator poisoned"))?
            .alloc(pages)
            .ok_or(DeviceError::OutOfDmaMemory { len })?;
        let bytes = pages * PAGE as usize;
        let base = Gpa::new(first as u64 * PAGE);
        let addr = self.dma.device_address(first);
        let Some(addr) = addr else {
            if let Ok(mut p) = self.dma.pages.lock() {
                p.free(first, pages);
            }
            return Err(DeviceError::OutOfDmaMemory { len });
        };
        let release: Arc<dyn DmaRelease> = self.dma.clone();
        let buffer = DmaBuffer::new(
            self.dma.mem.clone(),
            base,
            bytes,
            DeviceAddress::new(addr),
            Some(release),
        );
        buffer
            .fill_at(0, bytes, 0)
            .map_err(|_| DeviceError::Gone("DMA memory outside its pool"))?;
        Ok(buffer)
    }

    fn max_interrupts(&self) -> u16 {
        self.vectors.len() as u16
    }

    fn map_interrupt(&self, vector: u16) -> Result<Arc<dyn DeviceInterrupt>, DeviceError> {
        match self.vectors.get(usize::from(vector)) {
            Some(v) => Ok(v.clone()),
            None => Err(DeviceError::NoSuchInterrupt {
                vector,
                available: self.max_interrupts(),
            }),
        }
    }

    /// `VFIO_DEVICE_RESET`, then the MSI-X eventfds wired again.
    fn reset_function(&self) -> Result<(), DeviceError> {
        if !self.device.can_reset() {
            return Err(DeviceError::Unsupported("the function has no reset"));
        }
        self.device.reset().map_err(|e| DeviceError::Io {
            op: "VFIO_DEVICE_RESET",
            errno: e.raw_errno(),
        })?;
        self.arm_vectors().map_err(|e| DeviceError::Io {
            op: "VFIO_DEVICE_SET_IRQS",
            errno: e.raw_errno(),
        })
    }

    /// DMA memory of this device that a driver instance saved for
    /// keepalive left to the device: the pages are claimed again (not
    /// zeroed) and handed back. Within this process only: the memory and
    /// its IOMMU mapping live as long as this `VfioDevice`. A range with a
    /// page attached already (and not released or
    /// [left](DmaBuffer::leave_to_device) since) is refused: two buffers
    /// would alias.
    fn attach_dma(&self, range: DeviceRange) -> Result<DmaBuffer, DeviceError> {
        let bad = DeviceError::BadRange {
            gpa: range.addr.get(),
            len: range.len,
        };
        let start = range.addr.get();
        if range.len == 0 || !start.is_multiple_of(PAGE) || !range.len.is_multiple_of(PAGE) {
            return Err(bad);
        }
        let first = self.dma.page_of(start).ok_or(bad)?;
        let pages = usize::try_from(range.len / PAGE).map_err(|_| bad)?;
        let len = usize::try_from(range.len).map_err(|_| bad)?;
        let claimed = self
            .dma
            .pages
            .lock()
            .map_err(|_| DeviceError::Gone("DMA allocator poisoned"))?
            .claim(first, pages);
        if !claimed {
            return Err(bad);
        }
        let release: Arc<dyn DmaRelease> = self.dma.clone();
        Ok(DmaBuffer::new(
            self.dma.mem.clone(),
            Gpa::new(first as u64 * PAGE),
            len,
            range.addr,
            Some(release),
        ))
    }

    /// Ranges of memory attached with
    /// [`attach_guest_ram`](VfioDevice::attach_guest_ram) are mapped at
    /// IOVA = GPA already.
    fn map_dma(&self, mem: &GuestMem, range: GpaRange) -> Result<DeviceRange, DeviceError> {
        let attached = self
            .attached
            .lock()
            .map_err(|_| DeviceError::Gone("attached memory list poisoned"))?
            .iter()
            .any(|m| Arc::ptr_eq(m.as_arc(), mem.as_arc()));
        if !attached {
            return Err(DeviceError::Unsupported(
                "memory not attached with VfioDevice::attach_guest_ram",
            ));
        }
        let bad = DeviceError::BadRange {
            gpa: range.gpa.get(),
            len: range.len,
        };
        if range.len == 0
            || !range.gpa.get().is_multiple_of(PAGE)
            || !range.len.is_multiple_of(PAGE)
            || mem.check(range, Access::ReadWrite).is_err()
        {
            return Err(bad);
        }
        Ok(DeviceRange::new(
            DeviceAddress::new(range.gpa.get()),
            range.len,
        ))
    }

    /// Attached memory stays mapped as a whole while the device is open:
    /// a range [`map_dma`](DeviceAccess::map_dma) returned is accepted and
    /// nothing is unmapped.
    fn unmap_dma(&self, range: DeviceRange) -> Result<(), DeviceError> {
        let attached = self
            .attached
            .lock()
            .map_err(|_| DeviceError::Gone("attached memory list poisoned"))?
            .iter()
            .any(|m| {
                range
                    .addr
                    .get()
                    .checked_add(range.len)
                    .is_some_and(|end| end <= m.extent().get())
            });
        if attached && range.len != 0 {
            Ok(())
        } else {
            Err(DeviceError::BadRange {
                gpa: range.addr.get(),
                len: range.len,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs and /dev/vfio under a fresh temporary directory.
    struct Fake {
        root: PathBuf,
        options: VfioOptions,
    }

    impl Fake {
        fn new(tag: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("parastor-vfio-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let options = VfioOptions {
                paths: SystemPaths {
                    pci_devices: root.join("sys/bus/pci/devices"),
                    vfio_dev: root.join("dev/vfio"),
                },
                ..VfioOptions::default()
            };
            std::fs::create_dir_all(&options.paths.pci_devices).unwrap();
            std::fs::create_dir_all(&options.paths.vfio_dev).unwrap();
            Self { root, options }
        }

        /// A function `name` bound to `driver` in IOMMU group `group`.
        fn function(&self, name: &str, driver: Option<&str>, group: Option<&str>) {
            let dir = self.options.paths.pci_devices.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(d) = driver {
                symlink(format!("../../../bus/pci/drivers/{d}"), dir.join("driver")).unwrap();
            }
            if let Some(g) = group {
                symlink(
                    format!("../../../kernel/iommu_groups/{g}"),
                    dir.join("iommu_group"),
                )
                .unwrap();
            }
        }

        fn open(&self, name: &str) -> String {
            VfioDevice::open(name, &self.options)
                .unwrap_err()
                .to_string()
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    /// A pool over a small memory file, placed as `place` says.
    fn pool(pages: usize, place: DmaPlace, allocator: PageAllocator) -> DmaPool {
        let region = MappedRegion::memfd("pool-test", pages * PAGE as usize).unwrap();
        let ram = GuestRam::new(vec![(Gpa::new(0), Arc::new(region))]).unwrap();
        DmaPool {
            mem: GuestMem::new(ram),
            pages: Mutex::new(allocator),
            place,
        }
    }

    #[test]
    fn iova_pool_addresses_and_release_round_trip() {
        let p = pool(
            4,
            DmaPlace::Iova { base: 1 << 38 },
            PageAllocator::contiguous(4),
        );
        assert_eq!(p.device_address(2), Some((1 << 38) + 2 * PAGE));
        assert_eq!(p.page_of((1 << 38) + 2 * PAGE), Some(2));
        assert_eq!(p.page_of(0x1000), None, "below the pool");
        let first = p.pages.lock().unwrap().alloc(4).unwrap();
        assert_eq!(first, 0);
        p.release(DeviceRange::new(
            DeviceAddress::new((1 << 38) + PAGE),
            2 * PAGE,
        ));
        assert_eq!(
            p.pages.lock().unwrap().alloc(2),
            Some(1),
            "pages 1-2 came back"
        );
    }

    #[test]
    fn physical_pool_maps_back_through_its_index() {
        let addresses = vec![0x9000, 0x3000, 0x4000];
        let index = addresses.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        let allocator = PageAllocator::physical(&addresses, PAGE);
        let p = pool(3, DmaPlace::Physical { addresses, index }, allocator);
        assert_eq!(p.device_address(1), Some(0x3000));
        assert_eq!(p.device_address(3), None);
        let first = p.pages.lock().unwrap().alloc(2).unwrap();
        assert_eq!(first, 1, "pages 1-2 are the contiguous run");
        p.release(DeviceRange::new(DeviceAddress::new(0x3000), 2 * PAGE));
        assert_eq!(p.pages.lock().unwrap().alloc(2), Some(1));
        // An address the pool never handed out frees nothing.
        p.release(DeviceRange::new(DeviceAddress::new(0x7000), PAGE));
        assert_eq!(p.pages.lock().unwrap().free_pages(), 1);
    }

    #[test]
    fn a_missing_function_names_its_sysfs_path() {
        let fake = Fake::new("missing");
        let err = fake.open("0000:00:04.0");
        assert!(err.contains("no PCI function 0000:00:04.0"), "{err}");
        assert!(
            err.contains(
                &fake
                    .options
                    .paths
                    .pci_devices
                    .join("0000:00:04.0")
                    .display()
                    .to_string()
            ),
            "{err}"
        );
    }

    #[test]
    fn a_malformed_address_is_refused_before_any_path_is_built() {
        let fake = Fake::new("malformed");
        let err = fake.open("../../etc");
        assert!(err.contains("not a PCI address"), "{err}");
    }

    #[test]
    fn the_driver_binding_is_checked() {
        let fake = Fake::new("driver");
        fake.function("0000:00:04.0", Some("nvme"), Some("3"));
        let err = fake.open("0000:00:04.0");
        assert!(err.contains("bound to nvme, not vfio-pci"), "{err}");
        fake.function("0000:00:05.0", None, Some("4"));
        let err = fake.open("0000:00:05.0");
        assert!(err.contains("bound to no driver"), "{err}");
    }

    #[test]
    fn a_missing_group_or_group_file_is_named() {
        let fake = Fake::new("group");
        fake.function("0000:00:04.0", Some("vfio-pci"), None);
        let err = fake.open("0000:00:04.0");
        assert!(err.contains("has no IOMMU group"), "{err}");
        fake.function("0000:00:05.0", Some("vfio-pci"), Some("7"));
        let err = fake.open("0000:00:05.0");
        assert!(err.contains("IOMMU group 7"), "{err}");
        assert!(
            err.contains(&fake.options.paths.vfio_dev.join("7").display().to_string())
                && err.contains("noiommu-7"),
            "{err}"
        );
    }

    #[test]
    fn a_group_that_is_not_a_vfio_group_fails_with_the_call_and_path() {
        // The group file exists (here: a regular file) but the container
        // or the group's ioctl refuses; either way the error names it.
        let fake = Fake::new("notvfio");
        fake.function("0000:00:04.0", Some("vfio-pci"), Some("9"));
        std::fs::write(fake.options.paths.vfio_dev.join("9"), b"").unwrap();
        let err = fake.open("0000:00:04.0");
        assert!(
            err.contains("/dev/vfio/vfio") || err.contains("VFIO_GROUP_GET_STATUS"),
            "{err}"
        );
    }
}
