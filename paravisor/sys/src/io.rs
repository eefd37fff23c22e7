//! File I/O straight into and out of mapped memory: `preadv`/`pwritev2`
//! whose buffers are runs of a [`MappedRegion`], so the kernel copies
//! between the file and guest memory with no bounce in between.
//!
//! This module allows `unsafe` for the two system calls: their buffers are
//! raw addresses inside mappings, which only this crate can vouch for. Std's
//! and rustix's safe vectored calls take `IoSliceMut`/`IoSlice`, that is
//! Rust references into the buffers, which memory another party writes
//! concurrently must never have.
#![allow(unsafe_code)]

use crate::error::AccessError;
use crate::mmap::MappedRegion;
use crate::pins::KernelPins;
use core::ffi::c_void;
use core::marker::PhantomData;
use rustix::fd::{AsRawFd, BorrowedFd};
use std::io;

/// How many buffers one system call takes at most (far below the kernel's
/// `UIO_MAXIOV` of 1024, and small enough for the stack).
const BATCH: usize = 32;

/// A run of bytes inside a live mapping, which a system call may read (or,
/// for a writable span, write). Made only from a bounds-checked range of a
/// [`MappedRegion`] borrowed for `'a`, so the mapping outlives every use.
#[derive(Clone, Copy, Debug)]
pub struct Span<'a> {
    /// First byte, derived from the mapping's own base pointer.
    ptr: *mut u8,
    /// Length in bytes.
    len: usize,
    /// The mapping this lies in stays mapped while the span exists.
    _region: PhantomData<&'a MappedRegion>,
}

impl<'a> Span<'a> {
    /// The bytes `[offset, offset + len)` of `region`, to be read by the
    /// kernel (written to a file).
    pub fn source(
        region: &'a MappedRegion,
        offset: usize,
        len: usize,
    ) -> Result<Self, AccessError> {
        Ok(Self {
            ptr: region.span(offset, len)?,
            len,
            _region: PhantomData,
        })
    }

    /// The bytes `[offset, offset + len)` of `region`, to be written by the
    /// kernel (read from a file); the region must be writable.
    pub fn destination(
        region: &'a MappedRegion,
        offset: usize,
        len: usize,
    ) -> Result<Self, AccessError> {
        Ok(Self {
            ptr: region.span_mut(offset, len)?,
            len,
            _region: PhantomData,
        })
    }
}

/// Which way the bytes move.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// File to memory (`preadv`).
    Read,
    /// Memory to file (`pwritev2`), with `RWF_DSYNC` if `dsync`.
    Write {
        /// Each call is durable before it returns (`RWF_DSYNC`).
        dsync: bool,
    },
}

/// Reads the file `fd` from `offset` into the pinned guest memory `pins`,
/// in order, until every range is full: one `preadv` per 32 ranges, the
/// kernel writing guest memory directly. Fails with `UnexpectedEof` if the
/// file ends first.
///
/// This is a safe function because [`KernelPins`] can only be made from a
/// pin set whose owner is a [`GuestRam`](crate::GuestRam) of this crate and
/// whose every range was checked to lie inside that memory's mappings; the
/// set keeps the memory (and so the mappings) alive while `pins` borrows
/// it. The pointers handed to the kernel are derived from the mappings' own
/// base pointers, not from the numbers in the set.
pub fn preadv_exact(fd: BorrowedFd<'_>, pins: &KernelPins<'_>, offset: u64) -> io::Result<()> {
    transfer(fd, pins.spans(true), offset, Direction::Read)
}

/// Writes the pinned guest memory `pins`, in order, to the file `fd` from
/// `offset`, all of it, the kernel reading guest memory directly; `dsync`
/// as for [`write_all_from`]. Safe for the reasons given at
/// [`preadv_exact`].
pub fn pwritev_all(
    fd: BorrowedFd<'_>,
    pins: &KernelPins<'_>,
    offset: u64,
    dsync: bool,
) -> io::Result<()> {
    transfer(fd, pins.spans(false), offset, Direction::Write { dsync })
}

/// Reads the file `fd` from `offset` into `spans`, in order, until every
/// span is full. Fails with `UnexpectedEof` if the file ends first.
/// `spans` must be [`Span::destination`]s.
pub fn read_exact_into<'a>(
    fd: BorrowedFd<'_>,
    spans: impl IntoIterator<Item = Span<'a>>,
    offset: u64,
) -> io::Result<()> {
    transfer(fd, spans.into_iter().map(Ok), offset, Direction::Read)
}

/// Writes `spans`, in order, to the file `fd` from `offset`, all of them;
/// with `dsync`, each system call is `pwritev2(RWF_DSYNC)`, durable when it
/// returns.
///
/// If the kernel or file system refuses `RWF_DSYNC` (which only the first
/// call can reveal), nothing has been written and the error's kind is
/// [`io::ErrorKind::Unsupported`]: write without `dsync` and sync the data
/// afterwards instead.
pub fn write_all_from<'a>(
    fd: BorrowedFd<'_>,
    spans: impl IntoIterator<Item = Span<'a>>,
    offset: u64,
    dsync: bool,
) -> io::Result<()> {
    transfer(
        fd,
        spans.into_iter().map(Ok),
        offset,
        Direction::Write { dsync },
    )
}

/// Moves every byte of `spans` in `direction`, [`BATCH`] spans per system
/// call, continuing after short transfers and interruptions.
fn transfer<'a>(
    fd: BorrowedFd<'_>,
    spans: impl IntoIterator<Item = Result<Span<'a>, AccessError>>,
    mut offset: u64,
    direction: Direction,
) -> io::Result<()> {
    const EMPTY: libc::iovec = libc::iovec {
        iov_base: core::ptr::null_mut(),
        iov_len: 0,
    };
    let mut spans = spans
        .into_iter()
        .filter(|span| span.as_ref().map_or(true, |s| s.len != 0));
    let mut first_call = true;
    loop {
        let mut iov = [EMPTY; BATCH];
        let mut count = 0;
        for (slot, span) in iov.iter_mut().zip(spans.by_ref()) {
            let span = span.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            *slot = libc::iovec {
                iov_base: span.ptr.cast::<c_void>(),
                iov_len: span.len,
            };
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        let mut first = 0;
        while first < count {
            let pending = iov.get(first..count).unwrap_or_default();
            // Every entry of `pending` was made from a `Span` and is only
            // ever shortened from its front (below).
            // SAFETY: each entry lies inside a mapping the span's borrow
            // keeps alive for this call; destination spans were checked writable.
            let result = unsafe { vectored(fd, pending, offset, direction) };
            let done = match result {
                Ok(done) => done,
                // pwritev2 predates no supported kernel, but RWF_DSYNC may
                // be refused (EOPNOTSUPP) or, on old kernels, the flag
                // rejected (EINVAL) or the call missing (ENOSYS).
                Err(err)
                    if first_call
                        && direction == (Direction::Write { dsync: true })
                        && matches!(
                            err.raw_os_error(),
                            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS)
                        ) =>
                {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("the file refuses RWF_DSYNC writes: {err}"),
                    ));
                }
                Err(err) => return Err(err),
            };
            first_call = false;
            if done == 0 {
                return Err(match direction {
                    Direction::Read => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the file ends at offset {offset} before the read is complete"),
                    ),
                    Direction::Write { .. } => io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("the file took no bytes at offset {offset}"),
                    ),
                });
            }
            offset = offset
                .checked_add(done as u64)
                .ok_or_else(|| io::Error::other("file offset overflow"))?;
            // Skip the buffers the call completed and shorten a partly
            // completed one from its front.
            let mut left = done;
            while left > 0 && first < count {
                let entry = &mut iov[first];
                if left >= entry.iov_len {
                    left -= entry.iov_len;
                    first += 1;
                } else {
                    entry.iov_base = entry
                        .iov_base
                        .cast::<u8>()
                        .wrapping_add(left)
                        .cast::<c_void>();
                    entry.iov_len -= left;
                    left = 0;
                }
            }
        }
    }
}

/// One `preadv` or `pwritev2` of `iov` at `offset`, retried on `EINTR`;
/// returns the bytes moved.
///
/// # Safety
///
/// Every entry of `iov` describes bytes inside a mapping that stays mapped
/// for the call, readable (for [`Direction::Write`]) or writable (for
/// [`Direction::Read`]).
unsafe fn vectored(
    fd: BorrowedFd<'_>,
    iov: &[libc::iovec],
    offset: u64,
    direction: Direction,
) -> io::Result<usize> {
    let at = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset too large"))?;
    // `iov` holds at most `BATCH` entries.
    let count = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
    loop {
        let moved = match direction {
            // SAFETY: the caller promises every buffer is writable mapped
            // memory for the call; the kernel writes it like any other
            // party sharing it, and no Rust reference points into it.
            Direction::Read => unsafe { libc::preadv(fd.as_raw_fd(), iov.as_ptr(), count, at) },
            Direction::Write { dsync } => {
                let flags = if dsync { libc::RWF_DSYNC } else { 0 };
                // SAFETY: the caller promises every buffer is readable
                // mapped memory for the call.
                unsafe { libc::pwritev2(fd.as_raw_fd(), iov.as_ptr(), count, at, flags) }
            }
        };
        match usize::try_from(moved) {
            Ok(moved) => return Ok(moved),
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmap::Protection;
    use std::io::Write as _;
    use std::os::fd::AsFd;

    /// A temporary file holding `content`.
    fn file_with(content: &[u8]) -> std::fs::File {
        let fd = rustix::fs::memfd_create("io-test-file", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut file = std::fs::File::from(fd);
        file.write_all(content).unwrap();
        file
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn reads_scatter_into_many_spans_across_batches() {
        let region = MappedRegion::memfd("io-read", 64 * 1024).unwrap();
        let content = pattern(48 * 1024);
        let file = file_with(&content);
        // 80 spans of 500 bytes at every other 512-byte slot (more than one
        // batch), plus empty spans, which are skipped.
        let spans: Vec<_> = (0..80)
            .flat_map(|i| {
                [
                    Span::destination(&region, i * 512, 500).unwrap(),
                    Span::destination(&region, 0, 0).unwrap(),
                ]
            })
            .collect();
        read_exact_into(file.as_fd(), spans, 1000).unwrap();
        for i in 0..80 {
            let mut got = vec![0; 512];
            region.read_at(i * 512, &mut got).unwrap();
            let want = &content[1000 + i * 500..1000 + (i + 1) * 500];
            assert_eq!(&got[..500], want, "span {i}");
            assert!(got[500..].iter().all(|&b| b == 0), "bytes after span {i}");
        }
    }

    #[test]
    fn writes_gather_from_spans_and_a_short_file_is_an_error() {
        let region = MappedRegion::memfd("io-write", 16 * 1024).unwrap();
        let content = pattern(16 * 1024);
        region.write_at(0, &content).unwrap();
        let file = file_with(&[]);
        let spans = (0..40).map(|i| Span::source(&region, (39 - i) * 400, 400).unwrap());
        write_all_from(file.as_fd(), spans, 4096, true).unwrap();
        let mut written = vec![0; 4096 + 16_000];
        let n = rustix::io::pread(&file, &mut written, 0).unwrap();
        assert_eq!(n, written.len());
        assert!(written[..4096].iter().all(|&b| b == 0));
        for i in 0..40 {
            let at = 4096 + i * 400;
            assert_eq!(
                &written[at..at + 400],
                &content[(39 - i) * 400..(40 - i) * 400]
            );
        }

        // Reading past the end of the file fails, naming the offset.
        let spans = [Span::destination(&region, 0, 8192).unwrap()];
        let err = read_exact_into(file.as_fd(), spans, 16_000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("offset 20096"), "{err}");
    }

    #[test]
    fn spans_are_checked_against_the_region() {
        let region = MappedRegion::memfd("io-spans", 4096).unwrap();
        assert!(Span::source(&region, 4000, 97).is_err());
        assert!(Span::destination(&region, usize::MAX, 2).is_err());
        let view = MappedRegion::map(region.fd().unwrap(), 0, 4096, Protection::Read).unwrap();
        assert!(Span::source(&view, 0, 4096).is_ok());
        assert!(
            Span::destination(&view, 0, 1).is_err(),
            "the kernel must not write a read-only view"
        );
    }

    #[test]
    fn an_inaccessible_page_is_an_error_from_the_kernel_not_a_fault() {
        let region = MappedRegion::memfd("io-efault", 8192).unwrap();
        let file = file_with(&pattern(8192));
        // SAFETY: only the kernel touches page 1 while it is inaccessible,
        // and it reports EFAULT instead of faulting.
        unsafe { region.protect(4096, 4096, Protection::None) }.unwrap();
        let spans = [Span::destination(&region, 0, 8192).unwrap()];
        let err = read_exact_into(file.as_fd(), spans, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT), "{err}");
        // SAFETY: restores access.
        unsafe { region.protect(4096, 4096, Protection::ReadWrite) }.unwrap();
    }
}
