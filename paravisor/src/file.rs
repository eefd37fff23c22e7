//! A host file as a disk: the development backend, and the emulated host's.
//!
//! [`FileDisk`] moves data with positional I/O between the file and the
//! request's guest memory. When the memory can pin the request's ranges for
//! the kernel ([`SgList::pin`] for [`DmaDomainId::KERNEL`], proven by
//! [`KernelPins::from_pins`] — guest memory that is a
//! [`parastor_sys::GuestRam`]), one `preadv`/`pwritev2` per 32 ranges moves
//! the data straight between the file and guest memory (zero-copy).
//! Otherwise it goes through a private bounce buffer (one per thread,
//! reused, at most [`BOUNCE_MAX`] bytes), and the kernel never sees guest
//! memory. I/O is synchronous, so every operation completes on its first
//! poll ([`DiskIo::completes_inline`]).
//!
//! - FUA writes use `pwritev2(RWF_DSYNC)`; where the kernel or file system
//!   refuses the flag, the write is followed by `fdatasync`.
//! - Flush is `fdatasync`.
//! - Unmap punches a hole (`fallocate(PUNCH_HOLE | KEEP_SIZE)`), so unmapped
//!   sectors read back as zeros. A file system that cannot punch holes fails
//!   the unmap with [`DiskError::Io`] carrying `EOPNOTSUPP`.
//! - Resize ([`FileDisk::resize`], or a [`FileResizer`] kept after the disk
//!   is wrapped) changes the file's length and the sector count and wakes
//!   [`DiskIo::wait_resize`] waiters; sectors gained read as zeros.

use parastor_core::resize::ResizeSignal;
use parastor_core::{
    Access, DiskError, DiskIo, DmaDomainId, IoError, IoErrorKind, IoOptions, PinSet, SgList,
    UnmapBehavior,
};
use parastor_sys::KernelPins;
use rustix::fs::FallocateFlags;
use rustix::io::{Errno, ReadWriteFlags};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Largest piece a request is moved in through the bounce buffer; larger
/// requests take one `pread`/`pwrite` per piece.
pub const BOUNCE_MAX: usize = 1 << 20;

thread_local! {
    /// The calling thread's bounce buffer: grown to the largest piece seen
    /// (at most [`BOUNCE_MAX`]) and kept, so steady I/O allocates nothing.
    static BOUNCE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Most host ranges one request may pin for the zero-copy path; a request
/// with more bounces.
pub const MAX_PINNED_RANGES: usize = 256;

thread_local! {
    /// The calling thread's pin set, allocated once (with room for
    /// [`MAX_PINNED_RANGES`]) and reused, so pinning allocates nothing.
    static PINS: RefCell<PinSet> = RefCell::new(PinSet::with_capacity(MAX_PINNED_RANGES));
}

/// Runs `f` on `buf`'s ranges pinned for the kernel, if its memory can pin
/// them (`None` otherwise: bounce). The pins are released before return.
fn with_kernel_pins<R>(
    buf: &SgList<'_>,
    access: Access,
    f: impl FnOnce(&KernelPins<'_>) -> R,
) -> Option<R> {
    PINS.with(|cell| {
        // Re-entered on this thread: bounce rather than allocate.
        let mut pins = cell.try_borrow_mut().ok()?;
        // Any pin error bounces: the bounce path reports a bad range as
        // the memory error it is.
        let result = buf
            .pin(access, DmaDomainId::KERNEL, &mut pins)
            .ok()
            .and_then(|()| KernelPins::from_pins(&pins).map(|kernel| f(&kernel)));
        pins.clear();
        result
    })
}

/// Runs `f` on a private buffer of `len` bytes (at most [`BOUNCE_MAX`]).
fn with_bounce<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    BOUNCE.with(|b| match b.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (a disk inside a callback of another):
        // use a buffer of its own.
        Err(_) => f(&mut vec![0; len]),
    })
}

/// A disk backed by a host file (or anything `open(2)` can open and
/// `pread(2)`/`pwrite(2)` can address, such as a block device node).
///
/// The sector count is the file's length divided by the sector size when
/// the file is opened, and changes only through [`FileDisk::resize`] (the
/// file is not watched for other processes changing its length).
pub struct FileDisk {
    file: Arc<File>,
    path: PathBuf,
    sector_size: u32,
    /// The sector count and its waiters, shared with every [`FileResizer`].
    size: Arc<ResizeSignal>,
    /// Held by a resize, so two resizes never interleave.
    resizing: Arc<Mutex<()>>,
    read_only: bool,
    /// Cleared the first time the kernel refuses `RWF_DSYNC`; FUA writes then
    /// fall back to `pwrite` + `fdatasync`.
    dsync_supported: AtomicBool,
    /// Reads and writes that moved data straight between the file and
    /// guest memory.
    zero_copy_ios: AtomicU64,
    /// Reads and writes that went through the bounce buffer.
    bounced_ios: AtomicU64,
}

impl std::fmt::Debug for FileDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDisk")
            .field("path", &self.path)
            .field("sector_size", &self.sector_size)
            .field("sector_count", &self.size.get())
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl FileDisk {
    /// Opens `path` as a disk of `sector_size`-byte sectors.
    ///
    /// The file is opened `O_RDONLY` when `read_only` is set (and the disk
    /// then reports [`DiskIo::is_read_only`]), `O_RDWR` otherwise. Fails if
    /// `sector_size` is not a power of two from 512 to 65536, or if the
    /// file's length is not a whole number of sectors; the error names the
    /// path and the sizes.
    pub fn open(path: impl AsRef<Path>, sector_size: u32, read_only: bool) -> io::Result<FileDisk> {
        let path = path.as_ref();
        if !parastor_hw::is_valid_sector_size(sector_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot use {} as a disk: sector size {sector_size} is invalid, expected a \
                     power of two from 512 to 65536",
                    path.display()
                ),
            ));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| {
                let mode = if read_only { "read-only" } else { "read-write" };
                io::Error::new(
                    e.kind(),
                    format!("cannot open {} {mode}: {e}", path.display()),
                )
            })?;
        // Seeking to the end (rather than reading the metadata) also sizes
        // block device nodes, whose metadata length is 0.
        let len = file.seek(SeekFrom::End(0)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot find the length of {}: {e}", path.display()),
            )
        })?;
        if !len.is_multiple_of(u64::from(sector_size)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot use {} as a disk: its length {len} bytes is not a whole number of \
                     {sector_size}-byte sectors ({} sectors and {} bytes)",
                    path.display(),
                    len / u64::from(sector_size),
                    len % u64::from(sector_size),
                ),
            ));
        }
        Ok(FileDisk {
            file: Arc::new(file),
            path: path.to_path_buf(),
            sector_size,
            size: Arc::new(ResizeSignal::new(len / u64::from(sector_size))),
            resizing: Arc::new(Mutex::new(())),
            read_only,
            dsync_supported: AtomicBool::new(true),
            zero_copy_ios: AtomicU64::new(0),
            bounced_ios: AtomicU64::new(0),
        })
    }

    /// The path the disk was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle that resizes this disk, kept when the disk itself is
    /// moved into a [`Disk`](parastor_core::Disk) stack.
    pub fn resizer(&self) -> FileResizer {
        FileResizer {
            file: self.file.clone(),
            path: self.path.clone(),
            sector_size: self.sector_size,
            size: self.size.clone(),
            resizing: self.resizing.clone(),
            read_only: self.read_only,
        }
    }

    /// Changes the disk to `new_sector_count` sectors: see
    /// [`FileResizer::resize`].
    pub fn resize(&self, new_sector_count: u64) -> io::Result<()> {
        self.resizer().resize(new_sector_count)
    }

    /// Checks `[sector, sector + count)` against the disk and returns its
    /// byte offset and length in the file.
    fn byte_range(&self, sector: u64, count: u64) -> Result<(u64, u64), DiskError> {
        let end = sector.checked_add(count).ok_or(DiskError::IllegalBlock)?;
        if end > self.size.get() {
            return Err(DiskError::IllegalBlock);
        }
        // Cannot overflow: `end * sector_size` is at most the file length.
        let size = u64::from(self.sector_size);
        Ok((sector * size, count * size))
    }

    /// The request's sector count, if its buffer holds whole sectors.
    fn buffer_sectors(&self, buf: &SgList<'_>) -> Result<u64, DiskError> {
        let len = buf.len() as u64;
        if !len.is_multiple_of(u64::from(self.sector_size)) {
            return Err(DiskError::InvalidInput(
                "buffer length is not a whole number of sectors",
            ));
        }
        Ok(len / u64::from(self.sector_size))
    }

    /// Reads and writes so far that moved data straight between the file
    /// and guest memory, and that went through the bounce buffer.
    pub fn io_paths(&self) -> (u64, u64) {
        (
            self.zero_copy_ios.load(Ordering::Relaxed),
            self.bounced_ios.load(Ordering::Relaxed),
        )
    }

    fn read_sync(&self, buf: SgList<'_>, sector: u64) -> Result<(), DiskError> {
        let (offset, _) = self.byte_range(sector, self.buffer_sectors(&buf)?)?;
        let direct = with_kernel_pins(&buf, Access::Write, |pins| {
            parastor_sys::io::preadv_exact(self.file.as_fd(), pins, offset)
        });
        if let Some(result) = direct {
            self.zero_copy_ios.fetch_add(1, Ordering::Relaxed);
            return result.map_err(|e| io_error_to_disk(&e));
        }
        self.bounced_ios.fetch_add(1, Ordering::Relaxed);
        let mut writer = buf.writer()?;
        let mut pos = offset;
        with_bounce(buf.len().min(BOUNCE_MAX), |bounce| {
            while writer.remaining() > 0 {
                let piece = &mut bounce[..writer.remaining().min(BOUNCE_MAX)];
                // `read_exact_at` loops on short reads and EINTR; a file that
                // shrank under us ends early and fails with UnexpectedEof.
                self.file
                    .read_exact_at(piece, pos)
                    .map_err(|e| io_error_to_disk(&e))?;
                writer.write(piece)?;
                pos += piece.len() as u64;
            }
            Ok(())
        })
    }

    fn write_sync(&self, buf: SgList<'_>, sector: u64, fua: bool) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let (offset, _) = self.byte_range(sector, self.buffer_sectors(&buf)?)?;
        if let Some(result) = with_kernel_pins(&buf, Access::Read, |pins| {
            self.write_pinned(pins, offset, fua)
        }) {
            self.zero_copy_ios.fetch_add(1, Ordering::Relaxed);
            return result;
        }
        self.bounced_ios.fetch_add(1, Ordering::Relaxed);
        let mut reader = buf.reader();
        let mut pos = offset;
        // Set when a FUA write had to fall back to plain writes.
        let mut needs_sync = false;
        with_bounce(buf.len().min(BOUNCE_MAX), |bounce| {
            while reader.remaining() > 0 {
                let piece = &mut bounce[..reader.remaining().min(BOUNCE_MAX)];
                reader.read(piece)?;
                let piece = &*piece;
                let result = if fua && self.dsync_supported.load(Ordering::Relaxed) {
                    match write_all_dsync(&self.file, piece, pos) {
                        Err(DsyncError::Unsupported) => {
                            self.dsync_supported.store(false, Ordering::Relaxed);
                            needs_sync = true;
                            self.file.write_all_at(piece, pos)
                        }
                        Err(DsyncError::Io(e)) => Err(e),
                        Ok(()) => Ok(()),
                    }
                } else {
                    needs_sync |= fua;
                    // `write_all_at` loops on short writes and EINTR.
                    self.file.write_all_at(piece, pos)
                };
                result.map_err(|e| io_error_to_disk(&e))?;
                pos += piece.len() as u64;
            }
            Ok::<(), DiskError>(())
        })?;
        if needs_sync {
            self.file.sync_data().map_err(|e| io_error_to_disk(&e))?;
        }
        Ok(())
    }

    /// Writes pinned guest memory to the file at `offset`, the kernel
    /// reading it directly; FUA as in [`write_sync`](Self::write_sync).
    fn write_pinned(&self, pins: &KernelPins<'_>, offset: u64, fua: bool) -> Result<(), DiskError> {
        let fd = self.file.as_fd();
        let mut needs_sync = fua;
        if fua && self.dsync_supported.load(Ordering::Relaxed) {
            match parastor_sys::io::pwritev_all(fd, pins, offset, true) {
                Ok(()) => needs_sync = false,
                // Refused before anything was written: write plainly, then
                // sync.
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    self.dsync_supported.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(io_error_to_disk(&e)),
            }
        }
        if needs_sync || !fua {
            parastor_sys::io::pwritev_all(fd, pins, offset, false)
                .map_err(|e| io_error_to_disk(&e))?;
        }
        if needs_sync {
            self.file.sync_data().map_err(|e| io_error_to_disk(&e))?;
        }
        Ok(())
    }

    fn unmap_sync(&self, sector: u64, count: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let (offset, len) = self.byte_range(sector, count)?;
        if len == 0 {
            return Ok(());
        }
        let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        loop {
            match rustix::fs::fallocate(&self.file, mode, offset, len) {
                Ok(()) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(io_error_to_disk(&e.into())),
            }
        }
    }
}

/// Resizes a [`FileDisk`]: from [`FileDisk::resizer`], usable after the
/// disk is wrapped into a stack.
#[derive(Clone)]
pub struct FileResizer {
    file: Arc<File>,
    path: PathBuf,
    sector_size: u32,
    size: Arc<ResizeSignal>,
    resizing: Arc<Mutex<()>>,
    read_only: bool,
}

impl std::fmt::Debug for FileResizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileResizer")
            .field("path", &self.path)
            .field("sector_size", &self.sector_size)
            .field("sector_count", &self.size.get())
            .finish_non_exhaustive()
    }
}

impl FileResizer {
    /// The disk's sector size: a resize is in whole sectors.
    pub fn sector_size(&self) -> u32 {
        self.sector_size
    }

    /// The disk's current sector count.
    pub fn sector_count(&self) -> u64 {
        self.size.get()
    }

    /// Changes the disk to `new_sector_count` sectors: sets the file's
    /// length, publishes the new count and wakes
    /// [`DiskIo::wait_resize`] waiters. Sectors gained read as zeros;
    /// data past a smaller end is dropped.
    ///
    /// Requests already under way are not waited for: one that checked
    /// the old size may still complete (a read past a smaller end fails
    /// as a device error; a write there lengthens the file again, which
    /// a later growth cuts first, so regained sectors still read as
    /// zeros). Fails, changing nothing, on a read-only disk or a size
    /// that does not fit a file length; the error names the file.
    pub fn resize(&self, new_sector_count: u64) -> io::Result<()> {
        let fail = |kind, msg: String| {
            io::Error::new(
                kind,
                format!("cannot resize {}: {msg}", self.path.display()),
            )
        };
        if self.read_only {
            return Err(fail(
                io::ErrorKind::PermissionDenied,
                "the disk is read-only".into(),
            ));
        }
        let bytes = |count: u64| {
            count
                .checked_mul(u64::from(self.sector_size))
                .filter(|&b| i64::try_from(b).is_ok())
        };
        let Some(new_len) = bytes(new_sector_count) else {
            return Err(fail(
                io::ErrorKind::InvalidInput,
                format!(
                    "{new_sector_count} sectors of {} bytes do not fit a file length",
                    self.sector_size
                ),
            ));
        };
        let _one_at_a_time = self.resizing.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.size.get();
        let set_len = |len: u64| {
            self.file
                .set_len(len)
                .map_err(|e| fail(e.kind(), format!("setting the length to {len} bytes: {e}")))
        };
        if new_sector_count < old {
            // New requests see the smaller disk before its tail goes.
            self.size.store(new_sector_count);
            if let Err(e) = set_len(new_len) {
                self.size.store(old);
                return Err(e);
            }
        } else {
            // Cut anything a racing write left past the current end, so
            // the regained sectors read as zeros; then grow.
            let old_len = bytes(old).unwrap_or(new_len);
            set_len(old_len)?;
            set_len(new_len)?;
            self.size.store(new_sector_count);
        }
        self.size.wake_all();
        Ok(())
    }
}

/// Why a `pwritev2(RWF_DSYNC)` write failed.
enum DsyncError {
    /// The kernel or file system does not support `RWF_DSYNC`; nothing was
    /// written.
    Unsupported,
    /// The write failed.
    Io(io::Error),
}

/// Writes all of `data` at `pos` with `RWF_DSYNC`, looping on short writes.
fn write_all_dsync(file: &File, mut data: &[u8], mut pos: u64) -> Result<(), DsyncError> {
    let mut first = true;
    while !data.is_empty() {
        match rustix::io::pwritev2(file, &[IoSlice::new(data)], pos, ReadWriteFlags::DSYNC) {
            Ok(0) => return Err(DsyncError::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                data = &data[n..];
                pos += n as u64;
                first = false;
            }
            Err(Errno::INTR) => {}
            // pwritev2 predates no supported kernel, but RWF_DSYNC may be
            // refused (EOPNOTSUPP) or, on old kernels, the flag rejected
            // (EINVAL) or the call missing (ENOSYS). Only the first call of
            // a piece can tell; later failures are real.
            Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) if first => {
                return Err(DsyncError::Unsupported);
            }
            Err(e) => return Err(DsyncError::Io(e.into())),
        }
    }
    Ok(())
}

/// Maps a host I/O error to the pipeline's error: the class from the errno
/// (or the error kind when there is none) and the errno as the code.
pub fn io_error_to_disk(e: &io::Error) -> DiskError {
    let code = e.raw_os_error().unwrap_or(0);
    let kind = match e.raw_os_error().map(Errno::from_raw_os_error) {
        Some(Errno::NOSPC | Errno::DQUOT) => IoErrorKind::NoSpace,
        Some(Errno::TIMEDOUT) => IoErrorKind::TimedOut,
        Some(Errno::IO | Errno::NXIO | Errno::NODEV) => IoErrorKind::DeviceFailed,
        Some(Errno::NOMEDIUM | Errno::BUSY | Errno::AGAIN) => IoErrorKind::NotReady,
        Some(Errno::CANCELED) => IoErrorKind::Cancelled,
        Some(Errno::OPNOTSUPP | Errno::NOSYS) => IoErrorKind::Unsupported,
        Some(_) => IoErrorKind::Other,
        None => match e.kind() {
            // The file ended before the range it had when opened: it was
            // truncated underneath the disk.
            io::ErrorKind::UnexpectedEof | io::ErrorKind::WriteZero => IoErrorKind::DeviceFailed,
            io::ErrorKind::StorageFull => IoErrorKind::NoSpace,
            io::ErrorKind::TimedOut => IoErrorKind::TimedOut,
            _ => IoErrorKind::Other,
        },
    };
    DiskError::Io(IoError::new(kind, code))
}

impl DiskIo for FileDisk {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn sector_count(&self) -> u64 {
        self.size.get()
    }

    fn sector_size(&self) -> u32 {
        self.sector_size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn is_fua_respected(&self) -> bool {
        true
    }

    fn unmap_behavior(&self) -> UnmapBehavior {
        UnmapBehavior::Zeroes
    }

    fn completes_inline(&self) -> bool {
        true
    }

    fn wait_resize(&self, known: u64) -> impl Future<Output = u64> + Send {
        self.size.wait(known)
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        vec![("path", self.path.display().to_string())]
    }

    async fn read(&self, buf: SgList<'_>, sector: u64, _opts: IoOptions) -> Result<(), DiskError> {
        self.read_sync(buf, sector)
    }

    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.write_sync(buf, sector, opts.fua)
    }

    async fn flush(&self, _opts: IoOptions) -> Result<(), DiskError> {
        self.file.sync_data().map_err(|e| io_error_to_disk(&e))
    }

    async fn unmap(&self, sector: u64, count: u64, _opts: IoOptions) -> Result<(), DiskError> {
        self.unmap_sync(sector, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use parastor_core::{Disk, Gpa, GpaRange, LocalMemory};
    use std::io::Write;

    fn temp_file(len: usize, fill: impl Fn(usize) -> u8) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..len).map(fill).collect();
        f.write_all(&data).unwrap();
        f.flush().unwrap();
        f
    }

    fn read(disk: &Disk, sector: u64, bytes: usize) -> Result<Vec<u8>, DiskError> {
        let mem = LocalMemory::new(bytes);
        let ranges = [GpaRange::new(Gpa::new(0), bytes as u64)];
        let sg = SgList::new(&mem, &ranges, true).unwrap();
        block_on(disk.read(sg, sector, IoOptions::default()))?;
        Ok(mem.into_vec())
    }

    fn write(disk: &Disk, sector: u64, data: &[u8], fua: bool) -> Result<(), DiskError> {
        let mem = LocalMemory::from_vec(data.to_vec());
        let ranges = [GpaRange::new(Gpa::new(0), data.len() as u64)];
        let sg = SgList::new(&mem, &ranges, false).unwrap();
        let opts = if fua {
            IoOptions::fua()
        } else {
            IoOptions::default()
        };
        block_on(disk.write(sg, sector, opts))
    }

    /// The same scattered request through the zero-copy path (guest
    /// memory that pins for the kernel) and the bounce path (guest memory
    /// that cannot): equal bytes in guest memory after reads, in the file
    /// after writes, with and without FUA.
    #[test]
    fn zero_copy_and_bounce_paths_move_the_same_bytes() {
        use parastor_core::{GuestMemory, RamGuestMemory};
        let f = temp_file(64 * 1024, |i| (i * 31 % 251) as u8);
        let disk = FileDisk::open(f.path(), 512, false).unwrap();
        let mapped = parastor_sys::GuestRam::memfd("file-zero-copy", 64 * 1024).unwrap();
        let locked = RamGuestMemory::new(64 * 1024);
        let mems: [&dyn GuestMemory; 2] = [&mapped, &locked];
        // Out of order in guest memory, split mid-sector: 16 sectors.
        let ranges = [
            GpaRange::new(Gpa::new(9000), 700),
            GpaRange::new(Gpa::new(100), 3000),
            GpaRange::new(Gpa::new(5000), 396),
            GpaRange::new(Gpa::new(20000), 4096),
        ];
        let gather = |mem: &dyn GuestMemory| {
            let mut out = Vec::new();
            for r in &ranges {
                let mut piece = vec![0; r.len as usize];
                mem.read_at(r.gpa, &mut piece).unwrap();
                out.extend(piece);
            }
            out
        };
        let file = std::fs::read(f.path()).unwrap();
        for mem in mems {
            let sg = SgList::new(mem, &ranges, true).unwrap();
            disk.read_sync(sg, 3).unwrap();
            assert_eq!(gather(mem), file[3 * 512..19 * 512]);
        }
        assert_eq!(disk.io_paths(), (1, 1), "one read each way");

        // Writes: each memory's ranges get the same new bytes; each writes
        // them to its own place in the file, with and without FUA.
        let new: Vec<u8> = (0..8192).map(|i| (i * 7 + 3) as u8).collect();
        for mem in mems {
            let mut at = 0;
            for r in &ranges {
                mem.write_at(r.gpa, &new[at..at + r.len as usize]).unwrap();
                at += r.len as usize;
            }
        }
        for (i, mem) in mems.into_iter().enumerate() {
            for (j, fua) in [false, true].into_iter().enumerate() {
                let sg = SgList::new(mem, &ranges, false).unwrap();
                disk.write_sync(sg, 40 + 16 * (2 * i + j) as u64, fua)
                    .unwrap();
            }
        }
        assert_eq!(disk.io_paths(), (3, 3), "two writes each way");
        let file = std::fs::read(f.path()).unwrap();
        for k in 0..4 {
            let at = (40 + 16 * k) * 512;
            assert_eq!(file[at..at + 8192], new[..], "write {k}");
        }
    }

    #[test]
    fn round_trip_through_scattered_buffers() {
        let f = temp_file(64 * 512, |_| 0);
        let disk = Disk::new(FileDisk::open(f.path(), 512, false).unwrap()).unwrap();
        assert_eq!(disk.sector_count(), 64);
        assert!(disk.completes_inline());
        let data: Vec<u8> = (0..8 * 512).map(|i| (i * 7 % 251) as u8).collect();
        // Three ranges, out of order in guest memory, split mid-sector.
        let mem = LocalMemory::new(16384);
        let ranges = [
            GpaRange::new(Gpa::new(9000), 700),
            GpaRange::new(Gpa::new(100), 3000),
            GpaRange::new(Gpa::new(5000), 396),
        ];
        mem.with_mut(|m| {
            m[9000..9700].copy_from_slice(&data[..700]);
            m[100..3100].copy_from_slice(&data[700..3700]);
            m[5000..5396].copy_from_slice(&data[3700..]);
        });
        let sg = SgList::new(&mem, &ranges, false).unwrap();
        block_on(disk.write(sg, 10, IoOptions::default())).unwrap();
        assert_eq!(read(&disk, 10, data.len()).unwrap(), data);
        // The bytes really are in the file, at the right place.
        let on_disk = std::fs::read(f.path()).unwrap();
        assert_eq!(&on_disk[10 * 512..18 * 512], &data[..]);
        assert!(on_disk[..10 * 512].iter().all(|&b| b == 0));

        // Scattered read back.
        let out = LocalMemory::new(16384);
        let sg = SgList::new(&out, &ranges, true).unwrap();
        block_on(disk.read(sg, 10, IoOptions::default())).unwrap();
        out.with(|m| {
            assert_eq!(&m[9000..9700], &data[..700]);
            assert_eq!(&m[100..3100], &data[700..3700]);
            assert_eq!(&m[5000..5396], &data[3700..]);
        });
    }

    #[test]
    fn fua_write_and_flush() {
        let f = temp_file(16 * 4096, |_| 0);
        let disk = Disk::new(FileDisk::open(f.path(), 4096, false).unwrap()).unwrap();
        assert!(disk.is_fua_respected());
        let data = vec![0x5a; 2 * 4096];
        write(&disk, 14, &data, true).unwrap();
        block_on(disk.flush(IoOptions::default())).unwrap();
        assert_eq!(read(&disk, 14, data.len()).unwrap(), data);
        assert_eq!(&std::fs::read(f.path()).unwrap()[14 * 4096..], &data[..]);
    }

    #[test]
    fn unmap_reads_zero() {
        let f = temp_file(32 * 512, |i| (i % 255) as u8 + 1);
        let disk = Disk::new(FileDisk::open(f.path(), 512, false).unwrap()).unwrap();
        assert_eq!(disk.unmap_behavior(), UnmapBehavior::Zeroes);
        match block_on(disk.unmap(4, 12, IoOptions::default())) {
            Ok(()) => {}
            // tmpfs and most local file systems punch holes; one that cannot
            // must say so with an errno, not pretend.
            Err(DiskError::Io(e)) if e.code == Errno::OPNOTSUPP.raw_os_error() => return,
            Err(e) => panic!("unmap failed: {e}"),
        }
        let back = read(&disk, 0, 32 * 512).unwrap();
        assert!(back[..4 * 512].iter().all(|&b| b != 0));
        assert!(back[4 * 512..16 * 512].iter().all(|&b| b == 0));
        assert!(back[16 * 512..].iter().all(|&b| b != 0));
        // The file keeps its size.
        assert_eq!(std::fs::metadata(f.path()).unwrap().len(), 32 * 512);
        // Zero-length unmap is a no-op.
        block_on(disk.unmap(32, 0, IoOptions::default())).unwrap();
    }

    #[test]
    fn read_only_rejects_modification() {
        let f = temp_file(8 * 512, |_| 3);
        let disk = Disk::new(FileDisk::open(f.path(), 512, true).unwrap()).unwrap();
        assert!(disk.is_read_only());
        assert_eq!(write(&disk, 0, &[1; 512], false), Err(DiskError::ReadOnly));
        assert_eq!(
            block_on(disk.unmap(0, 1, IoOptions::default())),
            Err(DiskError::ReadOnly)
        );
        assert_eq!(read(&disk, 7, 512).unwrap(), vec![3; 512]);
        // The implementation refuses too, not only the Disk handle.
        let raw = FileDisk::open(f.path(), 512, true).unwrap();
        assert_eq!(
            raw.write_sync(
                SgList::new(&LocalMemory::new(0), &[], false).unwrap(),
                0,
                false
            ),
            Err(DiskError::ReadOnly)
        );
        assert_eq!(raw.unmap_sync(0, 1), Err(DiskError::ReadOnly));
    }

    #[test]
    fn out_of_range_is_illegal_block() {
        let f = temp_file(8 * 512, |_| 0);
        let raw = FileDisk::open(f.path(), 512, false).unwrap();
        let disk = Disk::new(FileDisk::open(f.path(), 512, false).unwrap()).unwrap();
        assert_eq!(read(&disk, 8, 512), Err(DiskError::IllegalBlock));
        assert_eq!(read(&disk, 7, 1024), Err(DiskError::IllegalBlock));
        assert_eq!(read(&disk, u64::MAX, 512), Err(DiskError::IllegalBlock));
        assert_eq!(
            write(&disk, 7, &[0; 1024], false),
            Err(DiskError::IllegalBlock)
        );
        let opts = IoOptions::default();
        assert_eq!(
            block_on(disk.unmap(0, 9, opts)),
            Err(DiskError::IllegalBlock)
        );
        assert_eq!(
            block_on(disk.unmap(u64::MAX, u64::MAX, opts)),
            Err(DiskError::IllegalBlock)
        );
        // Straight at the implementation, with values the handle would
        // reject for being unrepresentable.
        assert_eq!(raw.unmap_sync(u64::MAX, 2), Err(DiskError::IllegalBlock));
        assert_eq!(
            raw.unmap_sync(u64::MAX / 512, 1),
            Err(DiskError::IllegalBlock)
        );
        let mem = LocalMemory::new(512);
        let ranges = [GpaRange::new(Gpa::new(0), 512)];
        let sg = SgList::new(&mem, &ranges, true).unwrap();
        assert_eq!(raw.read_sync(sg, u64::MAX), Err(DiskError::IllegalBlock));
        assert_eq!(
            raw.write_sync(sg, 1 << 60, false),
            Err(DiskError::IllegalBlock)
        );
        let odd = [GpaRange::new(Gpa::new(0), 100)];
        let sg = SgList::new(&mem, &odd, true).unwrap();
        assert!(matches!(
            raw.read_sync(sg, 0),
            Err(DiskError::InvalidInput(_))
        ));
        // Nothing was written by the failed requests.
        assert!(std::fs::read(f.path()).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn length_must_be_whole_sectors() {
        let f = temp_file(4096 + 100, |_| 0);
        let err = FileDisk::open(f.path(), 512, false).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains("4196") && msg.contains("512"), "{msg}");
        let f = temp_file(8192, |_| 0);
        assert_eq!(FileDisk::open(f.path(), 4096, false).unwrap().size.get(), 2);
        let err = FileDisk::open(f.path(), 1000, false).unwrap_err();
        assert!(err.to_string().contains("sector size 1000"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.img");
        let err = FileDisk::open(&path, 512, true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("absent.img"), "{err}");
    }

    #[test]
    fn truncated_file_is_an_io_error_not_a_panic() {
        let f = temp_file(8 * 512, |_| 1);
        let disk = Disk::new(FileDisk::open(f.path(), 512, false).unwrap()).unwrap();
        f.as_file().set_len(512).unwrap();
        match read(&disk, 4, 512) {
            Err(DiskError::Io(e)) => assert_eq!(e.kind, IoErrorKind::DeviceFailed),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn resize_grows_with_zeros_shrinks_and_wakes_waiters() {
        let f = temp_file(8 * 512, |_| 7);
        let file = FileDisk::open(f.path(), 512, false).unwrap();
        let resizer = file.resizer();
        let disk = Disk::new(file).unwrap();
        assert_eq!((resizer.sector_count(), resizer.sector_size()), (8, 512));

        let mut wait = std::pin::pin!(disk.wait_resize(8));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        resizer.resize(12).unwrap();
        assert_eq!(wait.as_mut().poll(&mut cx), std::task::Poll::Ready(12));
        assert_eq!(disk.sector_count(), 12);
        assert_eq!(f.as_file().metadata().unwrap().len(), 12 * 512);
        // Old data kept; gained sectors read as zero and are writable.
        assert_eq!(read(&disk, 0, 8 * 512).unwrap(), vec![7; 8 * 512]);
        assert_eq!(read(&disk, 8, 4 * 512).unwrap(), vec![0; 4 * 512]);
        write(&disk, 11, &[9; 512], false).unwrap();
        assert!(read(&disk, 12, 512).is_err());

        resizer.resize(4).unwrap();
        assert_eq!(disk.sector_count(), 4);
        assert_eq!(f.as_file().metadata().unwrap().len(), 4 * 512);
        assert_eq!(read(&disk, 4, 512).unwrap_err(), DiskError::IllegalBlock);
        // A write past the new end that raced the shrink (here: written
        // straight into the file) does not come back when the disk grows.
        f.as_file().write_all_at(&[5; 512], 6 * 512).unwrap();
        resizer.resize(8).unwrap();
        assert_eq!(read(&disk, 4, 4 * 512).unwrap(), vec![0; 4 * 512]);
        assert_eq!(read(&disk, 0, 4 * 512).unwrap(), vec![7; 4 * 512]);
        // The disk's own method is the same resize.
        let direct = FileDisk::open(f.path(), 512, false).unwrap();
        direct.resize(2).unwrap();
        assert_eq!(direct.sector_count(), 2);
    }

    #[test]
    fn resize_refuses_read_only_and_impossible_sizes() {
        let f = temp_file(4 * 4096, |_| 1);
        let ro = FileDisk::open(f.path(), 4096, true).unwrap();
        let e = ro.resize(8).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            e.to_string().contains(&f.path().display().to_string()),
            "{e}"
        );
        let rw = FileDisk::open(f.path(), 4096, false).unwrap();
        for count in [u64::MAX, u64::MAX / 4096, (i64::MAX as u64) / 4096 + 1] {
            let e = rw.resize(count).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{count}: {e}");
        }
        assert_eq!(rw.sector_count(), 4);
        assert_eq!(f.as_file().metadata().unwrap().len(), 4 * 4096);
    }

    #[test]
    fn errno_mapping() {
        let e =
            |errno: Errno| io_error_to_disk(&io::Error::from_raw_os_error(errno.raw_os_error()));
        let nospc = Errno::NOSPC.raw_os_error();
        assert_eq!(
            e(Errno::NOSPC),
            DiskError::Io(IoError::new(IoErrorKind::NoSpace, nospc))
        );
        assert!(matches!(
            e(Errno::IO),
            DiskError::Io(IoError {
                kind: IoErrorKind::DeviceFailed,
                ..
            })
        ));
        assert!(
            matches!(e(Errno::OPNOTSUPP), DiskError::Io(IoError { kind: IoErrorKind::Unsupported, code }) if code == Errno::OPNOTSUPP.raw_os_error())
        );
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(
            io_error_to_disk(&eof),
            DiskError::Io(IoError::new(IoErrorKind::DeviceFailed, 0))
        );
    }
}
