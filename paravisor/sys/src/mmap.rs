//! [`MappedRegion`]: a shared mapping of a memory file or of a device's
//! memory, standing for guest RAM (or any memory another party shares with
//! this process).
//!
//! This module allows `unsafe` for the three calls that create, re-protect
//! and remove a mapping, and for the `Send`/`Sync` promise of the type that
//! owns one. The bytes themselves are reached only through
//! [`access`](crate::access).
#![allow(unsafe_code)]

use crate::error::{AccessError, AccessErrorKind};
use core::ffi::c_void;
use core::ptr::{self, NonNull};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use std::io;

/// What a mapping's pages allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Nothing: any access faults (`PROT_NONE`).
    None,
    /// Reads only.
    Read,
    /// Reads and writes.
    ReadWrite,
}

/// A `MAP_SHARED` mapping of a memory file.
///
/// [`memfd`](Self::memfd) creates the file and a read-write mapping of it;
/// [`map`](Self::map) maps (part of) an existing file again, so two views of
/// the same bytes can exist — in tests, one plays the guest while the other
/// is the device side; [`map_device`](Self::map_device) maps the memory a
/// character device shares with this process (a `uio` device's map). Bytes are reached only by copies and atomics
/// (`read_at`, `write_at`, `atomic_load`, … in [`access`](crate::access)),
/// each bounds-checked against [`len`](Self::len); no Rust reference into
/// the mapping is ever handed out. The mapping is removed on drop.
#[derive(Debug)]
pub struct MappedRegion {
    /// First byte of the mapping (page-aligned).
    base: NonNull<u8>,
    /// Bytes the accessors may reach, as asked at creation. The kernel maps
    /// whole pages; the rest of the last page is not reachable.
    len: usize,
    /// Whether the mapping was created writable; writes to a read-only
    /// mapping are refused instead of faulting.
    writable: bool,
    /// The memory file, when this region created it.
    fd: Option<OwnedFd>,
}

// SAFETY: `MappedRegion` owns its mapping (nothing else unmaps it), and its
// only non-`Send` field is the base pointer. Every access through it is a
// raw-pointer copy or an atomic instruction, both of which may run on any
// thread; the mapping itself is process-wide, so moving the owner to
// another thread changes nothing about it.
unsafe impl Send for MappedRegion {}

// SAFETY: all methods take `&self` and reach the bytes only through raw
// pointers (copies and atomics), never through references, so concurrent
// calls from several threads are the same as concurrent accesses by the
// other parties sharing the memory — the case the access model is written
// for (see the crate docs). No method mutates the struct's own fields.
unsafe impl Sync for MappedRegion {}

impl MappedRegion {
    /// Creates an anonymous memory file (`memfd_create`) of `len` bytes,
    /// all zero, and maps it read-write.
    ///
    /// The file is sealed against shrinking and growing, so no holder of
    /// its descriptor can cut pages out from under a mapping (which would
    /// turn an access into `SIGBUS`). `name` only shows in `/proc`.
    pub fn memfd(name: &str, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(invalid("a memory file of 0 bytes cannot be mapped"));
        }
        let file_len = u64::try_from(len)
            .map_err(|_| invalid(format!("{len} bytes do not fit a file length")))?;
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, file_len)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW)?;
        let mut region = Self::map(fd.as_fd(), 0, len, Protection::ReadWrite)?;
        region.fd = Some(fd);
        Ok(region)
    }

    /// Maps `len` bytes of the file `fd` from `offset` (a multiple of the
    /// page size), shared, with `protection` ([`Protection::Read`] or
    /// [`Protection::ReadWrite`]).
    ///
    /// The file must already be at least `offset + len` bytes long. The
    /// mapping stays valid after `fd` is closed. If the file is not sealed
    /// against shrinking (files from [`memfd`](Self::memfd) are), whoever
    /// truncates it makes later accesses to the cut pages end the process
    /// with `SIGBUS`.
    pub fn map(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        protection: Protection,
    ) -> io::Result<Self> {
        let file_len = rustix::fs::fstat(fd)?.st_size;
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| i64::try_from(end).map_or(true, |end| end > file_len)) {
            return Err(invalid(format!(
                "a view of {len} bytes at offset {offset:#x} does not fit in the \
                 {file_len}-byte file"
            )));
        }
        Self::map_shared(fd, offset, len, protection)
    }

    /// Maps `len` bytes of the memory of the character device `fd` from
    /// `offset` (a multiple of the page size), shared, with `protection`
    /// ([`Protection::Read`] or [`Protection::ReadWrite`]).
    ///
    /// A device's memory has no file length to check against (`fstat`
    /// reports 0 bytes): the device's driver says what may be mapped, and
    /// its `mmap` handler refuses any other range (a `uio` device, for
    /// example, exposes map N at offset N × page size with the size in
    /// `/sys/class/uio/uioN/maps/mapN/size`, and refuses a longer view).
    /// So the caller takes the offset and length from the driver's own
    /// description; a wrong one fails here with the kernel's error.
    ///
    /// What the driver does at fault time is its own: it may refuse to
    /// back a page the protocol says is not in use (TCMU does for data
    /// pages no command holds), and an access to such a page ends the
    /// process with `SIGBUS`. That ends the process rather than breaking
    /// memory safety, like the truncated file of [`map`](Self::map); the
    /// caller touches only what the device protocol says is backed. Once
    /// mapped, the pages stay valid memory until this region is dropped,
    /// even if the device is closed or removed (the mapping keeps the
    /// driver's memory referenced).
    pub fn map_device(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        protection: Protection,
    ) -> io::Result<Self> {
        let stat = rustix::fs::fstat(fd)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode)
            != rustix::fs::FileType::CharacterDevice
        {
            return Err(invalid(
                "map_device maps the memory of a character device; map a file with `map`",
            ));
        }
        Self::map_shared(fd, offset, len, protection)
    }

    /// The `MAP_SHARED` mapping for [`map`](Self::map) and
    /// [`map_device`](Self::map_device), after each checked that the range
    /// is backed (by the file's length, or by the device driver's own
    /// check in its `mmap` handler).
    fn map_shared(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        protection: Protection,
    ) -> io::Result<Self> {
        if len == 0 {
            return Err(invalid("a view of 0 bytes cannot be mapped"));
        }
        let page = page_size();
        if !offset.is_multiple_of(page as u64) {
            return Err(invalid(format!(
                "view offset {offset:#x} is not a multiple of the {page}-byte page size"
            )));
        }
        let (prot, writable) = match protection {
            Protection::None => {
                return Err(invalid("a view must be readable (Read or ReadWrite)"));
            }
            Protection::Read => (ProtFlags::READ, false),
            Protection::ReadWrite => (ProtFlags::READ | ProtFlags::WRITE, true),
        };
        let (any, shared) = (ptr::null_mut(), MapFlags::SHARED);
        // A null address lets the kernel choose; it never picks memory that
        // is already mapped. The callers checked that the range is backed:
        // inside the file, or accepted by the device driver's mmap handler.
        // SAFETY: the new mapping overlaps no Rust allocation or reference,
        // and every page of it is backed by the file or the device.
        let mapped = unsafe { rustix::mm::mmap(any, len, prot, shared, fd, offset) };
        let addr = mapped?;
        let base = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null address"))?;
        Ok(Self {
            base,
            len,
            writable,
            fd: None,
        })
    }

    /// Length of the mapping in bytes: accesses must lie in `[0, len)`.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a mapping has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether writes are allowed ([`Protection::ReadWrite`] at creation).
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The memory file, if this region created it with
    /// [`memfd`](Self::memfd): pass it to [`map`](Self::map) for a second
    /// view of the same bytes.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    /// Changes the protection of the pages `[offset, offset + len)`; both
    /// must be multiples of the page size (`len` may instead end the
    /// mapping). Only this view is affected: another mapping of the same
    /// file keeps its own protection.
    ///
    /// This exists so tests can prove that code never touches a page it was
    /// told is inaccessible: with the page at [`Protection::None`], a touch
    /// ends the process instead of passing silently.
    ///
    /// # Safety
    ///
    /// While any page of the range is not readable, nothing may read it
    /// through this region (and while it is not writable, nothing may write
    /// it): the copies and atomics of [`access`](crate::access) require
    /// their bytes to be accessible. Making the range readable (and, for a
    /// writable region, writable) again ends that duty.
    pub unsafe fn protect(
        &self,
        offset: usize,
        len: usize,
        protection: Protection,
    ) -> io::Result<()> {
        let page = page_size();
        let end = offset.checked_add(len).filter(|&end| end <= self.len);
        let Some(end) = end else {
            return Err(invalid(format!(
                "protect of {len} bytes at offset {offset:#x} does not fit in the \
                 {}-byte mapping",
                self.len
            )));
        };
        if len == 0
            || !offset.is_multiple_of(page)
            || (!len.is_multiple_of(page) && end != self.len)
        {
            return Err(invalid(format!(
                "protect of {len} bytes at offset {offset:#x} is not a non-empty run of \
                 whole {page}-byte pages"
            )));
        }
        if protection == Protection::ReadWrite && !self.writable {
            return Err(invalid("a read-only view cannot be made writable"));
        }
        let flags = match protection {
            Protection::None => MprotectFlags::empty(),
            Protection::Read => MprotectFlags::READ,
            Protection::ReadWrite => MprotectFlags::READ | MprotectFlags::WRITE,
        };
        let start = self.base.as_ptr().wrapping_add(offset).cast::<c_void>();
        // `[start, start + len)` lies inside this region's own mapping and
        // `start` is page-aligned (both checked above).
        // SAFETY: no Rust reference points into the mapping, so changing its
        // protection invalidates none; the caller promises not to touch pages
        // while they are inaccessible.
        unsafe { rustix::mm::mprotect(start, len, flags) }?;
        Ok(())
    }

    /// The address of the first byte, as a number: what the kernel calls
    /// this mapping (the device address of a kernel pin).
    pub(crate) fn base_addr(&self) -> usize {
        self.base.as_ptr().addr()
    }

    /// The address of the byte at `offset`, for the copies and atomics,
    /// after checking that `[offset, offset + len)` lies in the mapping.
    /// The pointer carries the mapping's provenance and is valid (while
    /// `self` lives) for `len` bytes.
    pub(crate) fn span(&self, offset: usize, len: usize) -> Result<*mut u8, AccessError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.base.as_ptr().wrapping_add(offset)),
            _ => Err(AccessError {
                offset,
                len,
                kind: AccessErrorKind::OutOfBounds {
                    region_len: self.len,
                },
            }),
        }
    }

    /// [`span`](Self::span) for a write: also refuses a read-only mapping.
    pub(crate) fn span_mut(&self, offset: usize, len: usize) -> Result<*mut u8, AccessError> {
        let start = self.span(offset, len)?;
        if !self.writable {
            return Err(AccessError {
                offset,
                len,
                kind: AccessErrorKind::ReadOnly,
            });
        }
        Ok(start)
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` describe exactly the mapping this region
        // created and owns, nothing else unmaps it, and no pointer into it
        // outlives `self` (the accessors borrow `self`).
        let result = unsafe { rustix::mm::munmap(self.base.as_ptr().cast::<c_void>(), self.len) };
        // munmap fails only for an address range that is not page-aligned
        // or is empty, which the constructors rule out; there is nothing a
        // destructor could do about it anyway.
        debug_assert!(
            result.is_ok(),
            "munmap of an owned mapping failed: {result:?}"
        );
    }
}

/// The system's page size: the granule of mapping offsets and protection.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// An `InvalidInput` error with `msg`.
fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Permissions of the mapping that contains `addr`, as `/proc/self/maps`
    /// shows them (for example `rw-s` or `---s`).
    fn permissions_at(addr: usize) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let start = usize::from_str_radix(start, 16).expect("hex start");
            let end = usize::from_str_radix(end, 16).expect("hex end");
            if (start..end).contains(&addr) {
                return perms.to_owned();
            }
        }
        panic!("no mapping contains {addr:#x}");
    }

    #[test]
    fn protect_changes_only_the_named_pages_of_this_view() {
        let page = page_size();
        let region = MappedRegion::memfd("protect", 4 * page).unwrap();
        let guest =
            MappedRegion::map(region.fd().unwrap(), 0, 4 * page, Protection::ReadWrite).unwrap();
        region.write_at(page, b"kept").unwrap();
        let base = region.base.as_ptr().addr();
        // SAFETY: nothing touches page 1 of `region` until it is made
        // read-write again below.
        unsafe { region.protect(page, page, Protection::None) }.unwrap();
        assert_eq!(permissions_at(base + page), "---s");
        assert_eq!(permissions_at(base), "rw-s");
        assert_eq!(permissions_at(base + 2 * page), "rw-s");
        // The other view of the same page is unaffected.
        let mut seen = [0; 4];
        guest.read_at(page, &mut seen).unwrap();
        assert_eq!(&seen, b"kept");
        guest.write_at(page, b"new!").unwrap();
        // SAFETY: makes the page accessible again; nothing touched it.
        unsafe { region.protect(page, page, Protection::ReadWrite) }.unwrap();
        assert_eq!(permissions_at(base + page), "rw-s");
        region.read_at(page, &mut seen).unwrap();
        assert_eq!(&seen, b"new!");
    }

    #[test]
    fn protect_refuses_partial_pages_and_ranges_outside_the_mapping() {
        let page = page_size();
        let region = MappedRegion::memfd("protect-bad", 2 * page).unwrap();
        let cases = [
            (1, page),          // offset not page-aligned
            (0, page / 2),      // length not whole pages, not the end
            (0, 0),             // empty
            (page, 2 * page),   // past the end
            (usize::MAX, page), // overflowing end
            (2 * page, page),   // starts at the end
        ];
        for (offset, len) in cases {
            // SAFETY: every call is refused before touching the mapping.
            let err = unsafe { region.protect(offset, len, Protection::None) }.unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidInput,
                "{offset:#x}+{len:#x}: {err}"
            );
        }
        let view = MappedRegion::map(region.fd().unwrap(), 0, page, Protection::Read).unwrap();
        // SAFETY: refused before touching the mapping.
        let err = unsafe { view.protect(0, page, Protection::ReadWrite) }.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(permissions_at(view.base.as_ptr().addr()), "r--s");
    }

    #[test]
    fn an_unaligned_region_length_protects_its_last_partial_page() {
        let page = page_size();
        let region = MappedRegion::memfd("protect-tail", page + 100).unwrap();
        let base = region.base.as_ptr().addr();
        // SAFETY: nothing touches the last page until it is restored.
        unsafe { region.protect(page, 100, Protection::Read) }.unwrap();
        assert_eq!(permissions_at(base + page), "r--s");
        // SAFETY: restores access.
        unsafe { region.protect(page, 100, Protection::ReadWrite) }.unwrap();
        region.write_at(page + 99, &[7]).unwrap();
    }

    #[test]
    fn map_device_maps_a_character_device_without_a_file_length() {
        let page = page_size();
        let zero = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .unwrap();
        // fstat says 0 bytes: the file-length check of `map` refuses it.
        let err = MappedRegion::map(zero.as_fd(), 0, 2 * page, Protection::ReadWrite).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        // The device path maps it (shared /dev/zero is shared memory).
        let region =
            MappedRegion::map_device(zero.as_fd(), 0, 2 * page, Protection::ReadWrite).unwrap();
        assert_eq!((region.len(), region.is_writable()), (2 * page, true));
        let mut seen = [0xff; 8];
        region.read_at(page - 4, &mut seen).unwrap();
        assert_eq!(seen, [0; 8]);
        region.write_at(page - 4, b"uio map0").unwrap();
        region.read_at(page - 4, &mut seen).unwrap();
        assert_eq!(&seen, b"uio map0");
        assert_eq!(permissions_at(region.base.as_ptr().addr()), "rw-s");
        // Accesses stay bounded by the length asked for.
        assert!(region.read_at(2 * page - 4, &mut seen).is_err());
        let view = MappedRegion::map_device(zero.as_fd(), 0, page, Protection::Read).unwrap();
        assert!(!view.is_writable());
        assert!(view.write_at(0, b"x").is_err());
    }

    #[test]
    fn map_device_refuses_files_bad_offsets_and_empty_views() {
        let page = page_size();
        let region = MappedRegion::memfd("not-a-device", page).unwrap();
        let err =
            MappedRegion::map_device(region.fd().unwrap(), 0, page, Protection::Read).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let zero = std::fs::File::open("/dev/zero").unwrap();
        for (offset, len, protection) in [
            (1, page, Protection::Read),
            (0, 0, Protection::Read),
            (0, page, Protection::None),
        ] {
            let err = MappedRegion::map_device(zero.as_fd(), offset, len, protection).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        }
        // What the driver refuses comes back as the kernel's error: a
        // writable shared view of a device opened read-only.
        let err =
            MappedRegion::map_device(zero.as_fd(), 0, page, Protection::ReadWrite).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::ACCESS.raw_os_error())
        );
    }

    #[test]
    fn drop_removes_the_mapping() {
        let name = "drop-removes-the-mapping";
        let mapped = || {
            let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
            maps.lines().filter(|line| line.contains(name)).count()
        };
        let region = MappedRegion::memfd(name, 3 * page_size()).unwrap();
        let view =
            MappedRegion::map(region.fd().unwrap(), 0, page_size(), Protection::Read).unwrap();
        assert_eq!(mapped(), 2);
        drop(region);
        assert_eq!(mapped(), 1);
        drop(view);
        assert_eq!(mapped(), 0);
    }
}
