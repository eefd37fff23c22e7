//! VFIO (Linux's user-mode device access): a container with its IOMMU, the
//! IOMMU groups attached to it, and the devices of a group — the `ioctl`s
//! of `linux/vfio.h`, with the ABI's structures from rust-vmm's
//! `vfio-bindings` (generated from the kernel header, not copied by hand).
//!
//! This module allows `unsafe` for the `ioctl` calls only: each passes a
//! pointer to a structure the kernel reads or fills, which no safe wrapper
//! can check. Everything else (opening the files, reading and writing a
//! device region with `pread`/`pwrite` into private buffers) is safe
//! rustix. The kernel validates every argument; a refused call comes back
//! as a [`VfioError`] naming the call and the file.
//!
//! Mapping memory for the device ([`VfioContainer::map_dma`]) takes a
//! [`MappedRegion`]: the type-1 IOMMU pins the pages it maps, so the
//! device can never reach memory this process has given back, and the
//! region's own accessors (copies and atomics) are how the CPU side
//! reaches them. BARs are mapped as [`MmioRegion`]s.
#![allow(unsafe_code)]

use crate::mmap::MappedRegion;
use crate::mmio::MmioRegion;
use core::ffi::c_void;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use std::ffi::CString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use vfio_bindings::bindings::vfio as abi;

/// The container device every VFIO user opens first.
pub const CONTAINER_PATH: &str = "/dev/vfio/vfio";

/// A refused VFIO call: which call, on which file, and the kernel's error.
#[derive(Debug)]
pub struct VfioError {
    /// The call (`"VFIO_SET_IOMMU"`, `"open"`, …).
    pub op: &'static str,
    /// The file or device it was made on.
    pub target: String,
    /// The kernel's error (or, for a check of the answer, what was wrong).
    pub source: io::Error,
}

impl VfioError {
    fn new(op: &'static str, target: impl Into<String>, source: io::Error) -> Self {
        Self {
            op,
            target: target.into(),
            source,
        }
    }

    fn errno(op: &'static str, target: impl Into<String>, errno: rustix::io::Errno) -> Self {
        Self::new(op, target, errno.into())
    }

    /// The `errno` of a failed system call, if the error was one (0 for a
    /// check of the kernel's answer).
    pub fn raw_errno(&self) -> i32 {
        self.source.raw_os_error().unwrap_or(0)
    }
}

impl fmt::Display for VfioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}: {}", self.op, self.target, self.source)
    }
}

impl std::error::Error for VfioError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The request number of VFIO ioctl `VFIO_BASE + n`: `_IO(';', 100 + n)`
/// (VFIO encodes no size or direction in its requests; `argsz` in each
/// structure carries the size).
const fn request(n: u32) -> libc::c_ulong {
    ((abi::VFIO_TYPE as libc::c_ulong) << 8) | (abi::VFIO_BASE + n) as libc::c_ulong
}

const GET_API_VERSION: libc::c_ulong = request(0);
const CHECK_EXTENSION: libc::c_ulong = request(1);
const SET_IOMMU: libc::c_ulong = request(2);
const GROUP_GET_STATUS: libc::c_ulong = request(3);
const GROUP_SET_CONTAINER: libc::c_ulong = request(4);
const GROUP_GET_DEVICE_FD: libc::c_ulong = request(6);
const DEVICE_GET_INFO: libc::c_ulong = request(7);
const DEVICE_GET_REGION_INFO: libc::c_ulong = request(8);
const DEVICE_GET_IRQ_INFO: libc::c_ulong = request(9);
const DEVICE_SET_IRQS: libc::c_ulong = request(10);
const DEVICE_RESET: libc::c_ulong = request(11);
const IOMMU_MAP_DMA: libc::c_ulong = request(13);
const IOMMU_UNMAP_DMA: libc::c_ulong = request(14);

/// `ioctl(fd, request, arg)` with an integer argument (or none); the
/// result or the errno.
fn ioctl_value(fd: BorrowedFd<'_>, request: libc::c_ulong, arg: libc::c_ulong) -> io::Result<i32> {
    // The requests passed here: GET_API_VERSION, CHECK_EXTENSION,
    // SET_IOMMU, DEVICE_RESET.
    // SAFETY: each takes an integer or nothing, never a pointer, so no
    // memory of this process is read or written.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `ioctl(fd, request, arg)` where `arg` is a VFIO structure whose
/// leading `argsz` is its size: the kernel reads (and, for `GET`
/// requests, writes) at most `argsz` bytes of it.
///
/// # Safety
///
/// `request` must be a VFIO request whose argument is a pointer to a `T`:
/// a VFIO structure with `argsz` (its first field) set to at most
/// `size_of::<T>()`, or, for a request that takes a pointer to a plain
/// integer (`GROUP_SET_CONTAINER`), that integer.
unsafe fn ioctl_struct<T>(
    fd: BorrowedFd<'_>,
    request: libc::c_ulong,
    arg: &mut T,
) -> io::Result<i32> {
    let ptr: *mut T = arg;
    // SAFETY: `ptr` is a valid, exclusive pointer to a `T` for the call;
    // the caller promises `T` is what `request` reads or fills and that
    // `argsz` does not exceed its size, so the kernel stays inside it.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, ptr.cast::<c_void>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `size_of::<T>()` as a VFIO `argsz`.
fn argsz<T>() -> u32 {
    // Every VFIO structure is a few dozen bytes.
    u32::try_from(size_of::<T>()).unwrap_or(u32::MAX)
}

/// Opens `path` read-write, close-on-exec.
fn open_rw(path: &Path) -> Result<OwnedFd, VfioError> {
    rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| VfioError::errno("open", path.display().to_string(), e))
}

/// Which IOMMU a container uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuType {
    /// The type-1 IOMMU (version 2 semantics when the kernel has them):
    /// the device reaches only what [`VfioContainer::map_dma`] maps, at
    /// the I/O virtual addresses chosen there.
    Type1,
    /// No IOMMU (`VFIO_NOIOMMU_IOMMU`, the kernel's
    /// `enable_unsafe_noiommu_mode`): the device reaches all of memory by
    /// physical address, nothing is mapped, and the driver hands it the
    /// physical addresses of locked memory
    /// ([`dma::physical_addresses`](crate::dma::physical_addresses)).
    NoIommu,
}

/// `/dev/vfio/vfio`: the container groups join and DMA mappings live in.
#[derive(Debug)]
pub struct VfioContainer {
    fd: OwnedFd,
    iommu: Option<IommuType>,
}

impl VfioContainer {
    /// Opens the container and checks the API version (0).
    ///
    /// # Errors
    /// If `/dev/vfio/vfio` cannot be opened (no `vfio` module, not root)
    /// or speaks another API version.
    pub fn open() -> Result<Self, VfioError> {
        let fd = open_rw(Path::new(CONTAINER_PATH))?;
        let version = ioctl_value(fd.as_fd(), GET_API_VERSION, 0)
            .map_err(|e| VfioError::new("VFIO_GET_API_VERSION", CONTAINER_PATH, e))?;
        if version != abi::VFIO_API_VERSION as i32 {
            return Err(VfioError::new(
                "VFIO_GET_API_VERSION",
                CONTAINER_PATH,
                io::Error::other(format!(
                    "API version {version}, expected {}",
                    abi::VFIO_API_VERSION
                )),
            ));
        }
        Ok(Self { fd, iommu: None })
    }

    /// Whether the container supports extension `extension` (an IOMMU
    /// type such as `VFIO_TYPE1v2_IOMMU`, or a feature).
    ///
    /// # Errors
    /// If the kernel refuses the question.
    pub fn check_extension(&self, extension: u32) -> Result<bool, VfioError> {
        ioctl_value(
            self.fd.as_fd(),
            CHECK_EXTENSION,
            libc::c_ulong::from(extension),
        )
        .map(|r| r > 0)
        .map_err(|e| VfioError::new("VFIO_CHECK_EXTENSION", CONTAINER_PATH, e))
    }

    /// Chooses the IOMMU (after the first group joined): type 1 (v2 when
    /// offered) or, when `no_iommu` is set and the kernel offers it, the
    /// no-IOMMU mode.
    ///
    /// # Errors
    /// If the wanted IOMMU is not offered or the kernel refuses it.
    pub fn set_iommu(&mut self, no_iommu: bool) -> Result<IommuType, VfioError> {
        let (kind, ty) = if no_iommu {
            (IommuType::NoIommu, abi::VFIO_NOIOMMU_IOMMU)
        } else if self.check_extension(abi::VFIO_TYPE1v2_IOMMU)? {
            (IommuType::Type1, abi::VFIO_TYPE1v2_IOMMU)
        } else {
            (IommuType::Type1, abi::VFIO_TYPE1_IOMMU)
        };
        if !self.check_extension(ty)? {
            return Err(VfioError::new(
                "VFIO_CHECK_EXTENSION",
                CONTAINER_PATH,
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("the kernel does not offer IOMMU type {ty}"),
                ),
            ));
        }
        ioctl_value(self.fd.as_fd(), SET_IOMMU, libc::c_ulong::from(ty))
            .map_err(|e| VfioError::new("VFIO_SET_IOMMU", CONTAINER_PATH, e))?;
        self.iommu = Some(kind);
        Ok(kind)
    }

    /// The IOMMU chosen by [`set_iommu`](Self::set_iommu), if any yet.
    pub fn iommu(&self) -> Option<IommuType> {
        self.iommu
    }

    /// Maps `[offset, offset + len)` of `region` for the devices of this
    /// container at I/O virtual address `iova` (all page aligned), readable
    /// and writable by them. The kernel pins the pages until
    /// [`unmap_dma`](Self::unmap_dma) (or the container closes), so the
    /// mapping never lets a device reach memory this process gave back.
    ///
    /// # Errors
    /// If the range is outside `region` or read-only, or the kernel
    /// refuses (not page aligned, IOVA in use, over the locked-memory
    /// limit, no type-1 IOMMU).
    pub fn map_dma(
        &self,
        region: &MappedRegion,
        offset: usize,
        len: usize,
        iova: u64,
    ) -> Result<(), VfioError> {
        let start = region.span_mut(offset, len).map_err(|e| {
            VfioError::new(
                "VFIO_IOMMU_MAP_DMA",
                CONTAINER_PATH,
                io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
            )
        })?;
        let mut map = abi::vfio_iommu_type1_dma_map {
            argsz: argsz::<abi::vfio_iommu_type1_dma_map>(),
            flags: abi::VFIO_DMA_MAP_FLAG_READ | abi::VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: start.addr() as u64,
            iova,
            size: len as u64,
        };
        // The kernel pins the pages it maps itself, rather than trusting
        // this process to keep them.
        // SAFETY: `map` is a `vfio_iommu_type1_dma_map` with `argsz` its
        // size, naming `region`'s live mapping (checked by `span_mut`).
        unsafe { ioctl_struct(self.fd.as_fd(), IOMMU_MAP_DMA, &mut map) }.map_err(|e| {
            VfioError::new(
                "VFIO_IOMMU_MAP_DMA",
                format!("{CONTAINER_PATH} (iova {iova:#x}, {len:#x} bytes)"),
                e,
            )
        })?;
        Ok(())
    }

    /// Removes the mapping of `[iova, iova + len)` (exactly what one or
    /// more [`map_dma`](Self::map_dma) calls mapped).
    ///
    /// # Errors
    /// If the kernel refuses (a range that splits a mapping); the kernel
    /// says how much it unmapped otherwise, and less than `len` is an
    /// error too.
    pub fn unmap_dma(&self, iova: u64, len: u64) -> Result<(), VfioError> {
        let mut unmap = abi::vfio_iommu_type1_dma_unmap {
            argsz: argsz::<abi::vfio_iommu_type1_dma_unmap>(),
            flags: 0,
            iova,
            size: len,
            data: Default::default(),
        };
        let target = || format!("{CONTAINER_PATH} (iova {iova:#x}, {len:#x} bytes)");
        // SAFETY: UNMAP_DMA takes a `vfio_iommu_type1_dma_unmap` with
        // `argsz` set to its size (no dirty bitmap follows, flags are 0);
        // the kernel reads it and writes back the unmapped size.
        unsafe { ioctl_struct(self.fd.as_fd(), IOMMU_UNMAP_DMA, &mut unmap) }
            .map_err(|e| VfioError::new("VFIO_IOMMU_UNMAP_DMA", target(), e))?;
        if unmap.size != len {
            return Err(VfioError::new(
                "VFIO_IOMMU_UNMAP_DMA",
                target(),
                io::Error::other(format!("only {:#x} bytes were mapped", unmap.size)),
            ));
        }
        Ok(())
    }
}

/// An IOMMU group: `/dev/vfio/N` (or `/dev/vfio/noiommu-N`).
#[derive(Debug)]
pub struct VfioGroup {
    fd: OwnedFd,
    path: PathBuf,
}

impl VfioGroup {
    /// Opens the group file `path` and checks that the group is viable
    /// (every device in it is bound to VFIO or to no driver).
    ///
    /// # Errors
    /// If the file cannot be opened or the group is not viable.
    pub fn open(path: &Path) -> Result<Self, VfioError> {
        let fd = open_rw(path)?;
        let group = Self {
            fd,
            path: path.to_path_buf(),
        };
        let flags = group.status()?;
        if flags & abi::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::new(
                "VFIO_GROUP_GET_STATUS",
                group.target(),
                io::Error::other(
                    "the group is not viable: a device in it is bound to a driver other than vfio-pci",
                ),
            ));
        }
        Ok(group)
    }

    fn target(&self) -> String {
        self.path.display().to_string()
    }

    /// The group's status flags (`VFIO_GROUP_FLAGS_*`).
    ///
    /// # Errors
    /// If the kernel refuses.
    pub fn status(&self) -> Result<u32, VfioError> {
        let mut status = abi::vfio_group_status {
            argsz: argsz::<abi::vfio_group_status>(),
            flags: 0,
        };
        // SAFETY: GROUP_GET_STATUS fills a `vfio_group_status` whose
        // `argsz` is its size.
        unsafe { ioctl_struct(self.fd.as_fd(), GROUP_GET_STATUS, &mut status) }
            .map_err(|e| VfioError::new("VFIO_GROUP_GET_STATUS", self.target(), e))?;
        Ok(status.flags)
    }

    /// Attaches the group to `container` (before the container's IOMMU is
    /// set, for the first group).
    ///
    /// # Errors
    /// If the kernel refuses (the group is in another container).
    pub fn set_container(&self, container: &VfioContainer) -> Result<(), VfioError> {
        let mut fd: libc::c_int = container.fd.as_raw_fd();
        // SAFETY: GROUP_SET_CONTAINER reads one `int` (the container's
        // descriptor) through the pointer; `fd` is one and lives for the
        // call.
        unsafe { ioctl_struct(self.fd.as_fd(), GROUP_SET_CONTAINER, &mut fd) }
            .map_err(|e| VfioError::new("VFIO_GROUP_SET_CONTAINER", self.target(), e))?;
        Ok(())
    }

    /// Opens the device `name` (its PCI address, `0000:00:04.0`) of this
    /// group; the group must be in a container whose IOMMU is set.
    ///
    /// # Errors
    /// If the device is not in the group, or the kernel refuses.
    pub fn device(&self, name: &str) -> Result<VfioDeviceFd, VfioError> {
        let target = || format!("{} device {name}", self.target());
        let cname = CString::new(name).map_err(|_| {
            VfioError::new(
                "VFIO_GROUP_GET_DEVICE_FD",
                target(),
                io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the device name"),
            )
        })?;
        let arg = cname.as_ptr();
        // SAFETY: GROUP_GET_DEVICE_FD reads a NUL-terminated string through
        // the pointer; `cname` is one and outlives the call.
        let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), GROUP_GET_DEVICE_FD, arg) };
        if ret < 0 {
            return Err(VfioError::new(
                "VFIO_GROUP_GET_DEVICE_FD",
                target(),
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: a non-negative result of GROUP_GET_DEVICE_FD is a new
        // descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(ret) };
        VfioDeviceFd::new(fd, name.to_string())
    }
}

/// One region of a device (a BAR, config space, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// The region's index (`VFIO_PCI_*_REGION_INDEX`).
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Size in bytes (0: the region does not exist, e.g. an unused BAR).
    pub size: u64,
    /// Where the region starts in the device file (for `pread`, `pwrite`
    /// and `mmap`).
    pub offset: u64,
}

impl RegionInfo {
    /// Whether the region can be mapped.
    pub fn mappable(&self) -> bool {
        self.flags & abi::VFIO_REGION_INFO_FLAG_MMAP != 0
    }
}

/// A device of a group: its file and the basic facts about it.
#[derive(Debug)]
pub struct VfioDeviceFd {
    fd: OwnedFd,
    name: String,
    /// `VFIO_DEVICE_FLAGS_*`.
    flags: u32,
    num_regions: u32,
    num_irqs: u32,
}

/// The PCI config-space region's index.
pub const CONFIG_REGION_INDEX: u32 = abi::VFIO_PCI_CONFIG_REGION_INDEX;
/// The MSI-X interrupt index of `VFIO_DEVICE_SET_IRQS`.
pub const MSIX_IRQ_INDEX: u32 = abi::VFIO_PCI_MSIX_IRQ_INDEX;

impl VfioDeviceFd {
    fn new(fd: OwnedFd, name: String) -> Result<Self, VfioError> {
        let mut info = abi::vfio_device_info {
            argsz: argsz::<abi::vfio_device_info>(),
            ..Default::default()
        };
        // SAFETY: DEVICE_GET_INFO fills a `vfio_device_info` whose `argsz`
        // is its size.
        unsafe { ioctl_struct(fd.as_fd(), DEVICE_GET_INFO, &mut info) }
            .map_err(|e| VfioError::new("VFIO_DEVICE_GET_INFO", name.clone(), e))?;
        if info.flags & abi::VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(VfioError::new(
                "VFIO_DEVICE_GET_INFO",
                name,
                io::Error::new(io::ErrorKind::Unsupported, "not a PCI device"),
            ));
        }
        Ok(Self {
            fd,
            name,
            flags: info.flags,
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
        })
    }

    /// The device's name (its PCI address).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the kernel can reset the function (`VFIO_DEVICE_FLAGS_RESET`).
    pub fn can_reset(&self) -> bool {
        self.flags & abi::VFIO_DEVICE_FLAGS_RESET != 0
    }

    /// Region `index`'s size, place and flags.
    ///
    /// # Errors
    /// If the index is beyond the device's regions or the kernel refuses.
    pub fn region_info(&self, index: u32) -> Result<RegionInfo, VfioError> {
        if index >= self.num_regions {
            return Err(VfioError::new(
                "VFIO_DEVICE_GET_REGION_INFO",
                self.name.clone(),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("region {index} (the device has {})", self.num_regions),
                ),
            ));
        }
        let mut info = abi::vfio_region_info {
            argsz: argsz::<abi::vfio_region_info>(),
            index,
            ..Default::default()
        };
        // SAFETY: DEVICE_GET_REGION_INFO fills a `vfio_region_info` whose
        // `argsz` is its size (capabilities that do not fit are not
        // written; the kernel only raises `argsz` to say they exist).
        unsafe { ioctl_struct(self.fd.as_fd(), DEVICE_GET_REGION_INFO, &mut info) }
            .map_err(|e| VfioError::new("VFIO_DEVICE_GET_REGION_INFO", self.name.clone(), e))?;
        Ok(RegionInfo {
            index,
            flags: info.flags,
            size: info.size,
            offset: info.offset,
        })
    }

    /// Reads `buf.len()` bytes at `offset` of `region` (one `pread`; VFIO
    /// turns a naturally aligned 1, 2 or 4-byte read of config space into
    /// one config access).
    ///
    /// # Errors
    /// If the range is outside the region or the read fails or is short.
    pub fn read_region(
        &self,
        region: &RegionInfo,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), VfioError> {
        let want = buf.len();
        let at = self.region_offset(region, offset, want, "pread")?;
        match rustix::io::pread(&self.fd, buf, at) {
            Ok(n) if n == want => Ok(()),
            Ok(n) => Err(self.short("pread", region, offset, n, want)),
            Err(e) => Err(VfioError::errno(
                "pread",
                self.region_name(region, offset),
                e,
            )),
        }
    }

    /// Writes `buf` at `offset` of `region` (one `pwrite`).
    ///
    /// # Errors
    /// If the range is outside the region or the write fails or is short.
    pub fn write_region(
        &self,
        region: &RegionInfo,
        offset: u64,
        buf: &[u8],
    ) -> Result<(), VfioError> {
        let at = self.region_offset(region, offset, buf.len(), "pwrite")?;
        match rustix::io::pwrite(&self.fd, buf, at) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(n) => Err(self.short("pwrite", region, offset, n, buf.len())),
            Err(e) => Err(VfioError::errno(
                "pwrite",
                self.region_name(region, offset),
                e,
            )),
        }
    }

    fn region_name(&self, region: &RegionInfo, offset: u64) -> String {
        format!("{} region {} offset {offset:#x}", self.name, region.index)
    }

    fn short(
        &self,
        op: &'static str,
        region: &RegionInfo,
        offset: u64,
        n: usize,
        want: usize,
    ) -> VfioError {
        VfioError::new(
            op,
            self.region_name(region, offset),
            io::Error::other(format!("{n} of {want} bytes")),
        )
    }

    /// The file offset of `[offset, offset + len)` of `region`, checked.
    fn region_offset(
        &self,
        region: &RegionInfo,
        offset: u64,
        len: usize,
        op: &'static str,
    ) -> Result<u64, VfioError> {
        let end = offset.checked_add(len as u64);
        match end {
            Some(end) if end <= region.size => Ok(region.offset + offset),
            _ => Err(VfioError::new(
                op,
                self.region_name(region, offset),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{len} bytes do not fit the {}-byte region", region.size),
                ),
            )),
        }
    }

    /// Maps the whole of `region` (which must be mappable) for register
    /// accesses.
    ///
    /// # Errors
    /// If the region cannot be mapped.
    pub fn map_region(&self, region: &RegionInfo) -> Result<MmioRegion, VfioError> {
        if !region.mappable() || region.size == 0 {
            return Err(VfioError::new(
                "mmap",
                self.region_name(region, 0),
                io::Error::new(io::ErrorKind::Unsupported, "the region is not mappable"),
            ));
        }
        let len = usize::try_from(region.size).map_err(|_| {
            VfioError::new(
                "mmap",
                self.region_name(region, 0),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "region larger than the address space",
                ),
            )
        })?;
        MmioRegion::map(self.fd.as_fd(), region.offset, len)
            .map_err(|e| VfioError::new("mmap", self.region_name(region, 0), e))
    }

    /// How many vectors interrupt index `index` (e.g. [`MSIX_IRQ_INDEX`])
    /// has.
    ///
    /// # Errors
    /// If the index is beyond the device's interrupts or the kernel
    /// refuses.
    pub fn irq_count(&self, index: u32) -> Result<u32, VfioError> {
        if index >= self.num_irqs {
            return Ok(0);
        }
        let mut info = abi::vfio_irq_info {
            argsz: argsz::<abi::vfio_irq_info>(),
            index,
            ..Default::default()
        };
        // SAFETY: DEVICE_GET_IRQ_INFO fills a `vfio_irq_info` whose `argsz`
        // is its size.
        unsafe { ioctl_struct(self.fd.as_fd(), DEVICE_GET_IRQ_INFO, &mut info) }
            .map_err(|e| VfioError::new("VFIO_DEVICE_GET_IRQ_INFO", self.name.clone(), e))?;
        Ok(info.count)
    }

    /// Has vectors `start..start + fds.len()` of interrupt index `index`
    /// signal the eventfds `fds` (`VFIO_DEVICE_SET_IRQS`, trigger action,
    /// eventfd data). For MSI-X the kernel enables MSI-X on the function
    /// and programs its table on the first call.
    ///
    /// # Errors
    /// If the kernel refuses (more vectors than the device has).
    pub fn set_irq_eventfds(
        &self,
        index: u32,
        start: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), VfioError> {
        /// The header and room for the eventfds: MSI-X has at most 2048
        /// vectors; a call sets at most 64 here.
        #[repr(C)]
        struct SetIrqs {
            header: abi::vfio_irq_set,
            fds: [i32; 64],
        }
        if fds.len() > 64 {
            return Err(VfioError::new(
                "VFIO_DEVICE_SET_IRQS",
                self.name.clone(),
                io::Error::new(io::ErrorKind::InvalidInput, "at most 64 vectors per call"),
            ));
        }
        let mut arg = SetIrqs {
            header: abi::vfio_irq_set {
                argsz: argsz::<abi::vfio_irq_set>() + 4 * fds.len() as u32,
                flags: abi::VFIO_IRQ_SET_DATA_EVENTFD | abi::VFIO_IRQ_SET_ACTION_TRIGGER,
                index,
                start,
                count: fds.len() as u32,
                data: Default::default(),
            },
            fds: [-1; 64],
        };
        for (slot, fd) in arg.fds.iter_mut().zip(fds) {
            *slot = fd.as_raw_fd();
        }
        // `SetIrqs` is `repr(C)`: the 20-byte, 4-aligned `vfio_irq_set`
        // header, then the `int` array directly after it.
        // SAFETY: `argsz` covers the header and `count` fds, all live
        // eventfds borrowed for the call; the kernel only reads them.
        unsafe { ioctl_struct(self.fd.as_fd(), DEVICE_SET_IRQS, &mut arg) }
            .map_err(|e| VfioError::new("VFIO_DEVICE_SET_IRQS", self.name.clone(), e))?;
        Ok(())
    }

    /// Turns every vector of interrupt index `index` off (for MSI-X,
    /// disables MSI-X on the function).
    ///
    /// # Errors
    /// If the kernel refuses.
    pub fn disable_irqs(&self, index: u32) -> Result<(), VfioError> {
        let mut arg = abi::vfio_irq_set {
            argsz: argsz::<abi::vfio_irq_set>(),
            flags: abi::VFIO_IRQ_SET_DATA_NONE | abi::VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: 0,
            data: Default::default(),
        };
        // SAFETY: DEVICE_SET_IRQS with DATA_NONE and count 0 reads only the
        // `vfio_irq_set` header, whose `argsz` is its size.
        unsafe { ioctl_struct(self.fd.as_fd(), DEVICE_SET_IRQS, &mut arg) }
            .map_err(|e| VfioError::new("VFIO_DEVICE_SET_IRQS", self.name.clone(), e))?;
        Ok(())
    }

    /// Resets the function (`VFIO_DEVICE_RESET`: a function-level reset or
    /// whatever reset the kernel has for it). The kernel saves and
    /// restores the config space around it; mappings of the BARs stay.
    ///
    /// # Errors
    /// If the function cannot be reset.
    pub fn reset(&self) -> Result<(), VfioError> {
        ioctl_value(self.fd.as_fd(), DEVICE_RESET, 0)
            .map_err(|e| VfioError::new("VFIO_DEVICE_RESET", self.name.clone(), e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_are_the_headers() {
        // _IO(';', 100 + n) from linux/vfio.h.
        assert_eq!(GET_API_VERSION, 0x3B64);
        assert_eq!(SET_IOMMU, 0x3B66);
        assert_eq!(GROUP_GET_DEVICE_FD, 0x3B6A);
        assert_eq!(DEVICE_SET_IRQS, 0x3B6E);
        assert_eq!(DEVICE_RESET, 0x3B6F);
        assert_eq!(IOMMU_MAP_DMA, 0x3B71);
        assert_eq!(IOMMU_UNMAP_DMA, 0x3B72);
    }

    #[test]
    fn a_missing_group_names_its_path() {
        let err = VfioGroup::open(Path::new("/dev/vfio/does-not-exist-4711")).unwrap_err();
        assert_eq!(err.op, "open");
        assert_eq!(err.raw_errno(), libc::ENOENT);
        let text = err.to_string();
        assert!(text.contains("/dev/vfio/does-not-exist-4711"), "{text}");
    }

    #[test]
    fn a_file_that_is_not_vfio_is_refused_by_the_kernel() {
        // Any file answers a VFIO ioctl with ENOTTY: the error says which.
        let group = VfioGroup::open(Path::new("/dev/null")).unwrap_err();
        assert_eq!(group.op, "VFIO_GROUP_GET_STATUS");
        assert_eq!(group.raw_errno(), libc::ENOTTY);
        assert!(group.to_string().contains("/dev/null"), "{group}");
    }
}
