//! Memory a device reaches by DMA: a [`MappedRegion`] locked into RAM
//! ([`lock`]) and, for a device with no IOMMU in front of it, the physical
//! address of each of its pages ([`physical_addresses`], from
//! `/proc/self/pagemap`).
//!
//! This module allows `unsafe` for `mlock` only, which takes the raw
//! address range of the mapping. Reading the page map is plain file I/O.
//!
//! Without an IOMMU the device is given physical addresses, so the pages
//! must stay where they are: locked pages are never swapped out, but the
//! kernel may still migrate them to compact memory unless the sysctl
//! `vm.compact_unevictable_allowed` is 0 ([`locked_pages_may_move`] tells;
//! setting it is the host's configuration, not this crate's).
#![allow(unsafe_code)]

use crate::mmap::{MappedRegion, page_size};
use std::io;

/// Locks every page of `region` into RAM (`mlock`), faulting them in: no
/// page is swapped out or left unbacked while a device may reach it.
///
/// # Errors
/// If the kernel refuses (over `RLIMIT_MEMLOCK` for an unprivileged
/// process).
pub fn lock(region: &MappedRegion) -> io::Result<()> {
    let start = region
        .span(0, region.len())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    // SAFETY: `[start, start + len)` is this region's own live mapping;
    // locking pages changes no byte and invalidates no pointer.
    unsafe { rustix::mm::mlock(start.cast(), region.len()) }?;
    Ok(())
}

/// Whether the kernel may migrate locked pages (the sysctl
/// `vm.compact_unevictable_allowed` is not 0, or cannot be read): then a
/// physical address from [`physical_addresses`] can go stale.
pub fn locked_pages_may_move() -> bool {
    std::fs::read_to_string("/proc/sys/vm/compact_unevictable_allowed")
        .map_or(true, |v| v.trim() != "0")
}

/// One entry of `/proc/PID/pagemap`: bit 63 says the page is present,
/// bits 0–54 hold its page frame number (0 when the reader lacks
/// `CAP_SYS_ADMIN`). The frame, if the page is present and the frame is
/// shown.
pub fn pagemap_frame(entry: u64) -> Option<u64> {
    const PRESENT: u64 = 1 << 63;
    const PFN_MASK: u64 = (1 << 55) - 1;
    let pfn = entry & PFN_MASK;
    (entry & PRESENT != 0 && pfn != 0).then_some(pfn)
}

/// The physical address of each page of `region` (lock it first, so
/// every page is present and stays so).
///
/// # Errors
/// If `/proc/self/pagemap` cannot be read, or a page is not present or
/// its frame is hidden (the process lacks `CAP_SYS_ADMIN`): the error
/// names the page.
pub fn physical_addresses(region: &MappedRegion) -> io::Result<Vec<u64>> {
    let page = page_size();
    let pages = region.len().div_ceil(page);
    let first = region.base_addr() / page;
    let map = std::fs::File::open("/proc/self/pagemap")?;
    let mut raw = vec![0u8; pages * 8];
    std::os::unix::fs::FileExt::read_exact_at(&map, &mut raw, (first * 8) as u64)?;
    raw.chunks_exact(8)
        .enumerate()
        .map(|(i, entry)| {
            let mut b = [0u8; 8];
            b.copy_from_slice(entry);
            let entry = u64::from_ne_bytes(b);
            pagemap_frame(entry)
                .map(|pfn| pfn * page as u64)
                .ok_or_else(|| {
                    io::Error::other(format!(
                        "page {i} of the DMA region has no physical address in \
                         /proc/self/pagemap (entry {entry:#x}: not present, or the \
                         frame is hidden without CAP_SYS_ADMIN)"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_entries_give_present_frames_only() {
        assert_eq!(pagemap_frame(1 << 63 | 0x1234), Some(0x1234));
        // Soft-dirty and exclusive bits (55, 56) are not part of the frame.
        assert_eq!(pagemap_frame(1 << 63 | 1 << 56 | 1 << 55 | 7), Some(7));
        assert_eq!(pagemap_frame(0x1234), None, "not present");
        assert_eq!(pagemap_frame(1 << 63), None, "frame hidden");
        assert_eq!(pagemap_frame(1 << 62 | 1 << 63 | 5), Some(5));
    }

    #[test]
    fn a_locked_page_has_a_physical_address_when_root() {
        let region = MappedRegion::memfd("dma-test", 3 * page_size()).unwrap();
        lock(&region).expect("mlock of a few pages (root, or within RLIMIT_MEMLOCK)");
        let root = rustix::process::geteuid().is_root();
        match physical_addresses(&region) {
            Ok(addresses) => {
                assert!(root, "frames are hidden from non-root");
                assert_eq!(addresses.len(), 3);
                for a in &addresses {
                    assert_ne!(*a, 0);
                    assert_eq!(a % page_size() as u64, 0);
                }
                let mut unique = addresses.clone();
                unique.sort_unstable();
                unique.dedup();
                assert_eq!(unique.len(), 3, "three pages, three frames");
            }
            Err(e) => {
                assert!(!root, "root sees frames: {e}");
                assert!(e.to_string().contains("page 0"), "{e}");
            }
        }
    }
}
