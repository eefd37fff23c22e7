//! [`PageAllocator`]: runs of pages from a fixed pool, first fit, for the
//! DMA memory the driver asks for (queues, PRP list pages, bounce
//! buffers — set up once, not per I/O).
//!
//! A run never crosses a *break*: with an IOMMU the pool is one contiguous
//! range of I/O virtual addresses and has none; without one the device
//! sees physical addresses, and a break sits wherever two neighbouring
//! pages are not physically adjacent, so every run is contiguous for the
//! device.

/// Where a page is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Page {
    /// Not handed out.
    Free,
    /// Handed out by [`PageAllocator::alloc`], or left to the device by a
    /// driver that saved its state ([`PageAllocator::leave`]): a restore
    /// may claim it.
    Allocated,
    /// Claimed by a restore and not given back or left since: claiming it
    /// again would put two buffers over the same memory.
    Claimed,
}

/// First-fit allocator of page runs over a pool of `len` pages.
#[derive(Debug)]
pub(crate) struct PageAllocator {
    /// Where each page is.
    used: Vec<Page>,
    /// `breaks[i]`: page `i` does not continue page `i - 1` for the device.
    breaks: Vec<bool>,
}

impl PageAllocator {
    /// A pool of `len` pages with no breaks (IOVA space).
    pub(crate) fn contiguous(len: usize) -> Self {
        Self {
            used: vec![Page::Free; len],
            breaks: vec![false; len],
        }
    }

    /// A pool whose page `i` the device sees at `addresses[i]`: a run may
    /// only hold pages each `page` bytes after the previous one.
    pub(crate) fn physical(addresses: &[u64], page: u64) -> Self {
        let breaks = addresses
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                i == 0 || addresses.get(i - 1).and_then(|prev| prev.checked_add(page)) != Some(a)
            })
            .collect();
        Self {
            used: vec![Page::Free; addresses.len()],
            breaks,
        }
    }

    /// Pages not handed out.
    pub(crate) fn free_pages(&self) -> usize {
        self.used.iter().filter(|u| **u == Page::Free).count()
    }

    /// The first page of a free run of `pages` pages (none: 0 pages, or no
    /// such run), marked used.
    pub(crate) fn alloc(&mut self, pages: usize) -> Option<usize> {
        if pages == 0 {
            return None;
        }
        let mut run = 0;
        let mut found = None;
        for (i, (used, brk)) in self.used.iter().zip(&self.breaks).enumerate() {
            if *brk {
                run = 0;
            }
            if *used != Page::Free {
                run = 0;
                continue;
            }
            run += 1;
            if run == pages {
                found = Some(i + 1 - pages);
                break;
            }
        }
        let first = found?;
        for u in self.used.iter_mut().skip(first).take(pages) {
            *u = Page::Allocated;
        }
        Some(first)
    }

    /// Marks `pages` pages from `first` claimed: memory a previous driver
    /// left to the device, free or allocated (the allocator cannot tell a
    /// buffer dropped with `mem::forget` from a live one). `false`
    /// (nothing marked) if the run leaves the pool, crosses a break, or
    /// holds a page claimed already and not given back or left since —
    /// a saved state whose ranges overlap (rings over rings, a command's
    /// memory over a queue) would otherwise get two buffers over the same
    /// pages.
    pub(crate) fn claim(&mut self, first: usize, pages: usize) -> bool {
        let Some(end) = first.checked_add(pages).filter(|&e| e <= self.used.len()) else {
            return false;
        };
        if pages == 0
            || self.breaks[first + 1..end].iter().any(|b| *b)
            || self.used[first..end].contains(&Page::Claimed)
        {
            return false;
        }
        for u in &mut self.used[first..end] {
            *u = Page::Claimed;
        }
        true
    }

    /// `pages` pages from `first` stay with the device for the next
    /// driver instance to claim (a keepalive save): claimed pages become
    /// claimable again; free pages stay free.
    pub(crate) fn leave(&mut self, first: usize, pages: usize) {
        for u in self.used.iter_mut().skip(first).take(pages) {
            if *u == Page::Claimed {
                *u = Page::Allocated;
            }
        }
    }

    /// Gives back `pages` pages from `first` (pages outside the pool are
    /// ignored).
    pub(crate) fn free(&mut self, first: usize, pages: usize) {
        for u in self.used.iter_mut().skip(first).take(pages) {
            *u = Page::Free;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_reuses_freed_runs() {
        let mut a = PageAllocator::contiguous(8);
        assert_eq!(a.alloc(3), Some(0));
        assert_eq!(a.alloc(2), Some(3));
        assert_eq!(a.alloc(4), None, "only 3 left");
        assert_eq!(a.free_pages(), 3);
        a.free(0, 3);
        assert_eq!(a.alloc(4), None, "3 + 3 free but not adjacent");
        assert_eq!(a.alloc(1), Some(0));
        assert_eq!(a.alloc(3), Some(5));
        assert_eq!(a.alloc(2), Some(1));
        assert_eq!(a.free_pages(), 0);
        assert_eq!(a.alloc(1), None);
        assert_eq!(a.alloc(0), None);
    }

    #[test]
    fn runs_never_cross_a_physical_break() {
        // Pages 0-1 adjacent, 2 elsewhere, 3-5 adjacent.
        let addrs = [
            0x10_0000, 0x10_1000, 0x50_0000, 0x20_0000, 0x20_1000, 0x20_2000,
        ];
        let mut a = PageAllocator::physical(&addrs, 0x1000);
        assert_eq!(a.used.len(), 6);
        assert_eq!(a.alloc(3), Some(3));
        assert_eq!(a.alloc(3), None, "0-2 are not contiguous");
        assert_eq!(a.alloc(2), Some(0));
        assert_eq!(a.alloc(2), None);
        assert_eq!(a.alloc(1), Some(2));
    }

    #[test]
    fn a_wrapping_neighbour_is_a_break() {
        let a = PageAllocator::physical(&[!0xFFF, 0], 0x1000);
        assert_eq!(a.breaks, [true, true]);
    }

    #[test]
    fn claims_stay_inside_the_pool_and_a_contiguous_run() {
        let addrs = [0x10_0000, 0x10_1000, 0x50_0000, 0x50_1000];
        let mut a = PageAllocator::physical(&addrs, 0x1000);
        assert!(a.claim(0, 2));
        assert!(!a.claim(1, 2), "crosses the break before page 2");
        assert!(!a.claim(3, 2), "leaves the pool");
        assert!(!a.claim(usize::MAX, 2));
        assert!(!a.claim(2, 0));
        assert_eq!(a.free_pages(), 2);
        assert_eq!(a.alloc(2), Some(2));
    }

    #[test]
    fn a_claimed_page_is_not_claimed_twice() {
        let mut a = PageAllocator::contiguous(4);
        assert!(a.claim(0, 2));
        assert!(!a.claim(1, 2), "page 1 is claimed already");
        assert!(!a.claim(0, 2), "the same run twice");
        assert!(a.claim(2, 2), "the neighbouring run is free");
        assert_eq!(a.alloc(1), None);
        // Pages handed out by alloc (maybe left to the device by a driver
        // that forgot its buffers) can be claimed, once.
        let mut b = PageAllocator::contiguous(4);
        assert_eq!(b.alloc(3), Some(0));
        assert!(b.claim(1, 2));
        assert!(!b.claim(0, 2));
        // Left to the device again by a second save: claimable again.
        b.leave(1, 2);
        assert!(b.claim(0, 3));
        // Given back: free for alloc.
        b.free(0, 3);
        assert_eq!(b.alloc(4), Some(0));
    }

    #[test]
    fn leaving_free_pages_keeps_them_free() {
        let mut a = PageAllocator::contiguous(2);
        a.leave(0, 2);
        a.leave(5, 1);
        assert_eq!(a.free_pages(), 2);
        assert_eq!(a.alloc(2), Some(0));
    }

    #[test]
    fn freeing_outside_the_pool_is_harmless() {
        let mut a = PageAllocator::contiguous(2);
        a.free(1, 10);
        a.free(100, 1);
        assert_eq!(a.alloc(2), Some(0));
    }
}
