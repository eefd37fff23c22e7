//! Bounce and staging buffers under a byte budget.
//!
//! A [`BouncePool`] lends [`BounceBuffer`]s carved from blocks a
//! [`DmaAllocator`] provides: [`HeapAllocator`] for *private staging*
//! (ciphertext for the crypt decorator, a SCSI command's scratch), which may
//! be borrowed as `&mut [u8]`; and, in the host crate, allocators of memory
//! a device can reach ([`DmaBlock::device`]: bounce buffers for backends
//! that cannot use guest memory in place), which carry their device
//! addresses ([`BounceBuffer::device_range`]) and are reached by copies
//! only.
//!
//! # Budget
//! Every byte the pool holds counts against its budget: blocks lent out,
//! blocks kept for reuse and blocks being allocated. The budget is never
//! exceeded; a request that does not fit now waits ([`BouncePool::acquire`])
//! or is refused ([`BouncePool::try_acquire`]), and one larger than the
//! whole budget is an error ([`AcquireError::TooLarge`]).
//!
//! # Size classes
//! Blocks come in power-of-two sizes from [`MIN_BLOCK`] up; a request takes
//! a block of the smallest class that holds it, and the budget counts the
//! class size. Released blocks are kept per class, so a steady stream of
//! requests reuses them and allocates nothing. When a class has no kept
//! block and the budget is taken up by blocks kept in *other* classes,
//! those are freed to make room (only blocks nobody holds).
//!
//! # Waiters
//! Waiting requests are served first come, first served: a release hands
//! blocks (or room for one) to the waiters at the head of the queue while
//! their size fits, wakes exactly those, and stops at the first one that
//! does not fit — a large request is not starved by small ones behind it,
//! and no waiter is woken to find nothing. [`BouncePool::try_acquire`] does
//! not overtake queued waiters.

use crate::addr::{DeviceAddress, DeviceRange, DmaDomainId, Gpa, GpaRange};
use crate::memory::{GuestMemory, LocalMemory};
use crate::sg::SgList;
use crate::sync::Mutex;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::{Context, Poll, Waker};

/// Size of the smallest block class (the smallest logical sector).
pub const MIN_BLOCK: usize = 1 << MIN_SHIFT;
const MIN_SHIFT: u32 = 9;
/// Classes `MIN_BLOCK << 0` .. `MIN_BLOCK << (CLASSES - 1)`.
const CLASSES: usize = (usize::BITS - MIN_SHIFT) as usize;

/// The class holding `len` bytes, if there is one.
fn class_of(len: usize) -> Option<usize> {
    let size = len.max(MIN_BLOCK).checked_next_power_of_two()?;
    Some((size.trailing_zeros() - MIN_SHIFT) as usize)
}

/// Bytes of a block of `class`.
const fn class_size(class: usize) -> usize {
    MIN_BLOCK << class
}

/// An allocator could not provide a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocError {
    /// Bytes asked for.
    pub len: usize,
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not allocate a {}-byte buffer block", self.len)
    }
}

impl core::error::Error for AllocError {}

/// Why a [`BouncePool`] could not lend a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireError {
    /// The request (rounded up to its size class) is larger than the
    /// pool's whole budget: it can never be served.
    TooLarge {
        /// Bytes requested.
        len: usize,
        /// The pool's budget.
        budget: usize,
    },
    /// The allocator failed (or returned a block shorter than asked).
    Alloc(AllocError),
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::TooLarge { len, budget } => write!(
                f,
                "buffer of {len} bytes (rounded up to a power of two) exceeds the pool budget of {budget} bytes"
            ),
            AcquireError::Alloc(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for AcquireError {}

/// The memory of one block.
enum BlockMemory {
    /// Private host memory: only this process touches it.
    Private(LocalMemory),
    /// Memory a device also reaches, at `addr` in `domain`: copies only.
    Device {
        mem: Box<dyn GuestMemory>,
        domain: DmaDomainId,
        addr: DeviceAddress,
    },
}

/// A block of memory from a [`DmaAllocator`], addressed from 0.
pub struct DmaBlock {
    mem: BlockMemory,
    len: usize,
}

impl DmaBlock {
    /// A block of private host memory, which the pool may lend as
    /// `&mut [u8]` ([`BounceBuffer::with_private_mut`]).
    pub fn private(mem: LocalMemory) -> Self {
        let len = mem.len();
        DmaBlock {
            mem: BlockMemory::Private(mem),
            len,
        }
    }

    /// A block of `len` bytes that a device reaches at `[addr, addr +
    /// len)` in DMA domain `domain` (contiguous there), so the CPU side
    /// only ever reads and writes it by copies. `mem` answers accesses to
    /// `[0, len)`.
    pub fn device(
        mem: Box<dyn GuestMemory>,
        len: usize,
        domain: DmaDomainId,
        addr: DeviceAddress,
    ) -> Self {
        DmaBlock {
            mem: BlockMemory::Device { mem, domain, addr },
            len,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the block is private host memory.
    pub fn is_private(&self) -> bool {
        matches!(self.mem, BlockMemory::Private(_))
    }

    fn memory(&self) -> &dyn GuestMemory {
        match &self.mem {
            BlockMemory::Private(m) => m,
            BlockMemory::Device { mem, .. } => &**mem,
        }
    }
}

/// Where a [`BouncePool`] gets its blocks. Called only when no kept block
/// of the right class is free, so its cost is off the steady-state path.
pub trait DmaAllocator: Send + Sync + 'static {
    /// A block of at least `len` bytes.
    ///
    /// # Errors
    /// [`AllocError`] when the memory is not available.
    fn allocate(&self, len: usize) -> Result<DmaBlock, AllocError>;
}

/// Private staging memory from the heap (zeroed [`LocalMemory`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct HeapAllocator;

impl DmaAllocator for HeapAllocator {
    fn allocate(&self, len: usize) -> Result<DmaBlock, AllocError> {
        Ok(DmaBlock::private(LocalMemory::new(len)))
    }
}

/// A queued request's state.
enum Slot {
    Vacant,
    Waiting {
        class: usize,
        waker: Waker,
    },
    /// Served: a kept block, or (None) room reserved for a new one.
    Granted {
        block: Option<DmaBlock>,
    },
}

struct State {
    /// Bytes lent out or reserved for an allocation in progress.
    lent: usize,
    /// Bytes of blocks kept for reuse.
    kept: usize,
    /// Highest `lent + kept` seen.
    high_water: usize,
    free: [Vec<DmaBlock>; CLASSES],
    /// Waiting slots, first come first.
    queue: VecDeque<usize>,
    slots: Vec<Slot>,
    vacant: Vec<usize>,
}

impl State {
    /// Takes a kept block of `class`, or reserves room for a new one
    /// (freeing kept blocks of other classes if needed); `None` if the
    /// budget does not allow it now.
    fn take(&mut self, class: usize, budget: usize) -> Option<Option<DmaBlock>> {
        let size = class_size(class);
        if let Some(b) = self.free[class].pop() {
            self.kept -= size;
            self.lent += size;
            return Some(Some(b));
        }
        if self.lent + size > budget {
            return None;
        }
        // Make room by freeing kept blocks; free[class] is empty, so they
        // are of other classes, and `lent + size <= budget` ends the loop.
        while self.lent + self.kept + size > budget {
            let c = self.free.iter().rposition(|v| !v.is_empty())?;
            drop(self.free[c].pop());
            self.kept -= class_size(c);
        }
        self.lent += size;
        self.high_water = self.high_water.max(self.lent + self.kept);
        Some(None)
    }

    /// Returns a block (or, `None`, the room reserved for one) of `class`.
    fn give_back(&mut self, class: usize, block: Option<DmaBlock>) {
        let size = class_size(class);
        self.lent -= size;
        if let Some(b) = block {
            self.free[class].push(b);
            self.kept += size;
        }
    }

    /// Serves the head of the queue if its size fits now; its waker.
    fn serve_head(&mut self, budget: usize) -> Option<Waker> {
        while let Some(&i) = self.queue.front() {
            let Some(&Slot::Waiting { class, .. }) = self.slots.get(i) else {
                // Not waiting (cannot happen): drop it from the queue.
                self.queue.pop_front();
                continue;
            };
            let block = self.take(class, budget)?;
            self.queue.pop_front();
            let Slot::Waiting { waker, .. } =
                core::mem::replace(&mut self.slots[i], Slot::Granted { block })
            else {
                unreachable!("checked above")
            };
            return Some(waker);
        }
        None
    }
}

struct Pool {
    budget: usize,
    allocator: Arc<dyn DmaAllocator>,
    allocations: AtomicU64,
    state: Mutex<State>,
}

impl Pool {
    /// Wakes waiters at the head of the queue while their size fits.
    fn serve(&self) {
        loop {
            let woken = self.state.lock().serve_head(self.budget);
            match woken {
                Some(w) => w.wake(),
                None => return,
            }
        }
    }

    /// Returns a block, and serves waiters only if there are any (one
    /// critical section when nobody waits, the steady state).
    fn give_back(&self, class: usize, block: Option<DmaBlock>) {
        let woken = {
            let mut st = self.state.lock();
            st.give_back(class, block);
            if st.queue.is_empty() {
                return;
            }
            st.serve_head(self.budget)
        };
        if let Some(w) = woken {
            w.wake();
            self.serve();
        }
    }
}

/// A pool of buffers with a byte budget. Cloning yields another handle to
/// the same pool.
#[derive(Clone)]
pub struct BouncePool {
    pool: Arc<Pool>,
}

impl fmt::Debug for BouncePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BouncePool")
            .field("budget", &self.pool.budget)
            .field("in_use", &self.in_use())
            .finish_non_exhaustive()
    }
}

impl BouncePool {
    /// A pool of private heap memory ([`HeapAllocator`]) holding at most
    /// `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Self::with_allocator(budget, Arc::new(HeapAllocator))
    }

    /// A pool of blocks from `allocator`, holding at most `budget` bytes.
    pub fn with_allocator(budget: usize, allocator: Arc<dyn DmaAllocator>) -> Self {
        let state = State {
            lent: 0,
            kept: 0,
            high_water: 0,
            free: [const { Vec::new() }; CLASSES],
            queue: VecDeque::new(),
            slots: Vec::new(),
            vacant: Vec::new(),
        };
        Self {
            pool: Arc::new(Pool {
                budget,
                allocator,
                allocations: AtomicU64::new(0),
                state: Mutex::new(state),
            }),
        }
    }

    /// The byte budget.
    pub fn budget(&self) -> usize {
        self.pool.budget
    }

    /// The largest buffer the pool can ever lend: the largest size class
    /// within the budget (0 if the budget is below [`MIN_BLOCK`]).
    pub fn max_len(&self) -> usize {
        if self.pool.budget < MIN_BLOCK {
            0
        } else {
            1 << self.pool.budget.ilog2()
        }
    }

    /// Bytes lent out now (whole size classes).
    pub fn in_use(&self) -> usize {
        self.pool.state.lock().lent
    }

    /// Bytes the pool holds now: lent out and kept for reuse.
    pub fn held(&self) -> usize {
        let st = self.pool.state.lock();
        st.lent + st.kept
    }

    /// The most bytes the pool has held at once.
    pub fn high_water(&self) -> usize {
        self.pool.state.lock().high_water
    }

    /// How many blocks the pool has asked its allocator for.
    pub fn allocations(&self) -> u64 {
        self.pool.allocations.load(Ordering::Relaxed)
    }

    /// Requests waiting for room.
    pub fn waiting(&self) -> usize {
        self.pool.state.lock().queue.len()
    }

    fn class(&self, len: usize) -> Result<usize, AcquireError> {
        let too_large = AcquireError::TooLarge {
            len,
            budget: self.pool.budget,
        };
        let class = class_of(len).ok_or(too_large)?;
        if class_size(class) > self.pool.budget {
            return Err(too_large);
        }
        Ok(class)
    }

    /// A buffer of `len` bytes if the budget allows it now and nobody is
    /// waiting. Its contents are unspecified: fill it before showing it to
    /// anyone.
    ///
    /// # Errors
    /// [`AcquireError::TooLarge`] if it never can; [`AcquireError::Alloc`]
    /// if the allocator failed.
    pub fn try_acquire(&self, len: usize) -> Result<Option<BounceBuffer>, AcquireError> {
        let class = self.class(len)?;
        let taken = {
            let mut st = self.pool.state.lock();
            if !st.queue.is_empty() {
                return Ok(None);
            }
            st.take(class, self.pool.budget)
        };
        match taken {
            Some(block) => self.finish(class, block, len).map(Some),
            None => Ok(None),
        }
    }

    /// A buffer of `len` bytes, waiting (first come, first served) until
    /// the budget allows it.
    pub fn acquire(&self, len: usize) -> Acquire<'_> {
        Acquire {
            pool: self,
            len,
            slot: None,
        }
    }

    /// Turns a taken block (or reserved room) of `class` into a buffer.
    fn finish(
        &self,
        class: usize,
        block: Option<DmaBlock>,
        len: usize,
    ) -> Result<BounceBuffer, AcquireError> {
        let block = match block {
            Some(b) => b,
            None => {
                self.pool.allocations.fetch_add(1, Ordering::Relaxed);
                let size = class_size(class);
                match self.pool.allocator.allocate(size) {
                    Ok(b) if b.len() >= size => b,
                    Ok(_) | Err(_) => {
                        self.pool.give_back(class, None);
                        return Err(AcquireError::Alloc(AllocError { len: size }));
                    }
                }
            }
        };
        Ok(BounceBuffer {
            block: Some(block),
            range: [GpaRange::new(Gpa::new(0), len as u64)],
            class,
            pool: self.pool.clone(),
        })
    }
}

/// Future returned by [`BouncePool::acquire`]. Dropping it gives up its
/// place in the queue (and anything already handed to it).
pub struct Acquire<'a> {
    pool: &'a BouncePool,
    len: usize,
    slot: Option<(usize, usize)>,
}

impl Future for Acquire<'_> {
    type Output = Result<BounceBuffer, AcquireError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let pool = self.pool;
        let budget = pool.pool.budget;
        let (class, taken) = match self.slot {
            None => {
                let class = pool.class(self.len)?;
                let mut st = pool.pool.state.lock();
                let taken = if st.queue.is_empty() {
                    st.take(class, budget)
                } else {
                    None
                };
                match taken {
                    Some(b) => (class, b),
                    None => {
                        let waiting = Slot::Waiting {
                            class,
                            waker: cx.waker().clone(),
                        };
                        let i = match st.vacant.pop() {
                            Some(i) => {
                                st.slots[i] = waiting;
                                i
                            }
                            None => {
                                st.slots.push(waiting);
                                st.slots.len() - 1
                            }
                        };
                        st.queue.push_back(i);
                        drop(st);
                        self.slot = Some((i, class));
                        return Poll::Pending;
                    }
                }
            }
            Some((i, class)) => {
                let mut st = pool.pool.state.lock();
                match st.slots.get_mut(i) {
                    Some(Slot::Waiting { waker, .. }) => {
                        if !waker.will_wake(cx.waker()) {
                            *waker = cx.waker().clone();
                        }
                        return Poll::Pending;
                    }
                    Some(slot @ Slot::Granted { .. }) => {
                        let Slot::Granted { block } = core::mem::replace(slot, Slot::Vacant) else {
                            unreachable!("matched above")
                        };
                        st.vacant.push(i);
                        drop(st);
                        self.slot = None;
                        (class, block)
                    }
                    // Vacant or missing: our slot was never taken from us.
                    _ => unreachable!("an Acquire's slot is only freed by the Acquire"),
                }
            }
        };
        Poll::Ready(pool.finish(class, taken, self.len))
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        let Some((i, class)) = self.slot.take() else {
            return;
        };
        let pool = &self.pool.pool;
        {
            let mut st = pool.state.lock();
            match core::mem::replace(&mut st.slots[i], Slot::Vacant) {
                Slot::Waiting { .. } => {
                    if let Some(at) = st.queue.iter().position(|&q| q == i) {
                        st.queue.remove(at);
                    }
                }
                Slot::Granted { block } => st.give_back(class, block),
                Slot::Vacant => {}
            }
            st.vacant.push(i);
        }
        // Whoever was behind us (or what we were given) may fit now.
        pool.serve();
    }
}

impl fmt::Debug for BounceBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BounceBuffer")
            .field("len", &self.len())
            .finish()
    }
}

/// A buffer from a [`BouncePool`], usable as guest memory at address 0.
/// Returns its block to the pool when dropped.
pub struct BounceBuffer {
    /// Always `Some` until dropped.
    block: Option<DmaBlock>,
    range: [GpaRange; 1],
    class: usize,
    pool: Arc<Pool>,
}

impl BounceBuffer {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.range[0].len as usize
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn block(&self) -> &DmaBlock {
        self.block
            .as_ref()
            .expect("a buffer holds its block until dropped")
    }

    /// The buffer's memory (its first [`BounceBuffer::len`] bytes are the
    /// buffer).
    pub fn memory(&self) -> &dyn GuestMemory {
        self.block().memory()
    }

    /// The whole buffer as a scatter-gather view.
    pub fn sg(&self, writable: bool) -> SgList<'_> {
        SgList::local(self.memory(), &self.range, writable)
    }

    /// Runs `f` on the buffer's bytes if it is private memory; `None` for
    /// memory a device may reach (use copies).
    pub fn with_private<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let len = self.len();
        match &self.block().mem {
            BlockMemory::Private(m) => Some(m.with(|v| f(&v[..len]))),
            BlockMemory::Device { .. } => None,
        }
    }

    /// Runs `f` on the buffer's bytes, mutably, if it is private memory;
    /// `None` for memory a device may reach (use copies).
    pub fn with_private_mut<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        let len = self.len();
        match &self.block().mem {
            BlockMemory::Private(m) => Some(m.with_mut(|v| f(&mut v[..len]))),
            BlockMemory::Device { .. } => None,
        }
    }

    /// Where a device reaches the buffer: its DMA domain and the device
    /// addresses of its [`BounceBuffer::len`] bytes; `None` for private
    /// memory.
    pub fn device_range(&self) -> Option<(DmaDomainId, DeviceRange)> {
        match &self.block().mem {
            BlockMemory::Private(_) => None,
            BlockMemory::Device { domain, addr, .. } => {
                Some((*domain, DeviceRange::new(*addr, self.len() as u64)))
            }
        }
    }
}

impl Drop for BounceBuffer {
    fn drop(&mut self) {
        self.pool.give_back(self.class, self.block.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::MemoryError;
    use alloc::boxed::Box;
    use alloc::task::Wake;
    use alloc::vec;
    use core::sync::atomic::AtomicUsize;
    use futures::FutureExt;
    use std::sync::Barrier;
    use std::thread;

    #[test]
    fn budget_and_reuse() {
        let pool = BouncePool::new(8192);
        assert_eq!(
            pool.try_acquire(9000).unwrap_err(),
            AcquireError::TooLarge {
                len: 9000,
                budget: 8192
            }
        );
        // 4000 bytes take a whole 4 KiB class.
        let a = pool.try_acquire(4096).unwrap().unwrap();
        let b = pool.try_acquire(4000).unwrap().unwrap();
        assert!(pool.try_acquire(1).unwrap().is_none());
        a.sg(true).write_all(&[7u8; 4096]).unwrap();
        let mut back = [0u8; 4096];
        a.memory().read_at(Gpa::new(0), &mut back).unwrap();
        assert_eq!(back, [7u8; 4096]);
        assert_eq!(b.with_private(|s| s.len()), Some(4000));
        let mut waiting = Box::pin(pool.acquire(2048));
        assert!(waiting.as_mut().now_or_never().is_none());
        drop(a);
        let c = waiting
            .now_or_never()
            .expect("released budget wakes the waiter")
            .unwrap();
        assert_eq!(c.len(), 2048);
        // Whole classes count: 4 KiB + 2 KiB; the 4 KiB block a released
        // was freed to make room for the 2 KiB class.
        assert_eq!(pool.in_use(), 4096 + 2048);
        assert!(pool.held() <= 8192);
        drop((b, c));
        assert_eq!(pool.in_use(), 0);
    }

    /// Counts allocations, and can be told to fail.
    struct Counting {
        calls: AtomicUsize,
        fail: bool,
    }

    impl DmaAllocator for Counting {
        fn allocate(&self, len: usize) -> Result<DmaBlock, AllocError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.fail {
                Err(AllocError { len })
            } else {
                HeapAllocator.allocate(len)
            }
        }
    }

    #[test]
    fn steady_reuse_allocates_nothing() {
        let alloc = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            fail: false,
        });
        let pool = BouncePool::with_allocator(1 << 20, alloc.clone());
        for round in 0..100 {
            let a = pool.try_acquire(64 << 10).unwrap().unwrap();
            let b = pool.try_acquire(3000).unwrap().unwrap();
            let c = block_on_ready(pool.acquire(60 << 10));
            drop((a, b, c));
            if round == 0 {
                assert_eq!(alloc.calls.load(Ordering::Relaxed), 3);
            }
        }
        // 64 KiB twice (two at once) and 4 KiB once, in the first round.
        assert_eq!(alloc.calls.load(Ordering::Relaxed), 3);
        assert_eq!(pool.allocations(), 3);
        assert_eq!(pool.high_water(), (64 << 10) * 2 + 4096);
    }

    fn block_on_ready<F: Future>(f: F) -> F::Output {
        f.now_or_never().expect("ready at once")
    }

    #[test]
    fn allocator_failure_returns_the_room() {
        let pool = BouncePool::with_allocator(
            8192,
            Arc::new(Counting {
                calls: AtomicUsize::new(0),
                fail: true,
            }),
        );
        assert_eq!(
            pool.try_acquire(4096).unwrap_err(),
            AcquireError::Alloc(AllocError { len: 4096 })
        );
        assert_eq!(pool.in_use(), 0);
        assert_eq!(pool.held(), 0);
    }

    /// Kept blocks of another class are freed to make room, never
    /// exceeding the budget.
    #[test]
    fn kept_blocks_make_room_for_other_classes() {
        let pool = BouncePool::new(16 << 10);
        let small: Vec<_> = (0..4)
            .map(|_| pool.try_acquire(4096).unwrap().unwrap())
            .collect();
        drop(small);
        assert_eq!(pool.held(), 16 << 10);
        let big = pool.try_acquire(16 << 10).unwrap().unwrap();
        assert_eq!(pool.held(), 16 << 10);
        assert_eq!(big.len(), 16 << 10);
        assert_eq!(pool.max_len(), 16 << 10);
    }

    /// Records the order in which wakers fire.
    struct Tag(usize, Arc<std::sync::Mutex<Vec<usize>>>);
    impl Wake for Tag {
        fn wake(self: Arc<Self>) {
            self.1.lock().unwrap().push(self.0);
        }
    }

    /// Waiters are served in arrival order, each woken only when its size
    /// fits: a small request behind a large one does not overtake it.
    #[test]
    fn waiters_are_served_fifo_and_woken_only_when_they_fit() {
        let pool = BouncePool::new(16 << 10);
        let hold: Vec<_> = (0..4)
            .map(|_| pool.try_acquire(4096).unwrap().unwrap())
            .collect();
        let woke = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters: Vec<_> = [8192usize, 4096, 4096]
            .into_iter()
            .map(|len| Box::pin(pool.acquire(len)))
            .collect();
        for (i, w) in waiters.iter_mut().enumerate() {
            let waker = Waker::from(Arc::new(Tag(i, woke.clone())));
            assert!(
                w.as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
            );
        }
        assert_eq!(pool.waiting(), 3);
        // A newcomer does not overtake the queue.
        assert!(pool.try_acquire(512).unwrap().is_none());
        let mut hold = hold.into_iter();
        drop(hold.next());
        // 4 KiB free: the 8 KiB head does not fit; nobody is woken.
        assert!(woke.lock().unwrap().is_empty());
        drop(hold.next());
        // 8 KiB free: the head is served; the next does not fit yet.
        assert_eq!(*woke.lock().unwrap(), [0]);
        drop(hold.next());
        assert_eq!(*woke.lock().unwrap(), [0, 1]);
        drop(hold.next());
        assert_eq!(*woke.lock().unwrap(), [0, 1, 2]);
        let noop = Waker::noop();
        let mut cx = Context::from_waker(noop);
        let got: Vec<_> = waiters
            .iter_mut()
            .map(|w| match w.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(b)) => b.len(),
                other => panic!("not served: {other:?}"),
            })
            .collect();
        assert_eq!(got, [8192, 4096, 4096]);
        assert!(pool.held() <= 16 << 10);
    }

    /// A waiter dropped while queued (or after being served) passes its
    /// turn on: the next one is woken, nothing is lost.
    #[test]
    fn dropped_waiters_pass_their_turn_on() {
        let pool = BouncePool::new(8192);
        let a = pool.try_acquire(8192).unwrap().unwrap();
        let woke = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut first = Box::pin(pool.acquire(8192));
        let mut second = Box::pin(pool.acquire(4096));
        for (i, w) in [&mut first, &mut second].into_iter().enumerate() {
            let waker = Waker::from(Arc::new(Tag(i, woke.clone())));
            assert!(
                w.as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
            );
        }
        drop(a);
        assert_eq!(*woke.lock().unwrap(), [0]);
        // Served but never polled again: dropping returns the block and
        // serves the next waiter.
        drop(first);
        assert_eq!(*woke.lock().unwrap(), [0, 1]);
        let b = second.now_or_never().unwrap().unwrap();
        assert_eq!(b.len(), 4096);
        drop(b);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(pool.waiting(), 0);
    }

    /// Threads acquiring and releasing random sizes, waiting when needed:
    /// the pool never holds more than its budget and every waiter gets its
    /// buffer (a lost wake-up would hang the test).
    #[test]
    fn concurrent_stress_never_exceeds_the_budget() {
        const BUDGET: usize = 256 << 10;
        let pool = BouncePool::new(BUDGET);
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let pool = pool.clone();
                let barrier = barrier.clone();
                thread::spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(t as u64);
                    barrier.wait();
                    for _ in 0..2000 {
                        let len = rng.usize(1..=64 << 10);
                        let buf = if rng.bool() {
                            futures::executor::block_on(pool.acquire(len)).unwrap()
                        } else {
                            match pool.try_acquire(len).unwrap() {
                                Some(b) => b,
                                None => continue,
                            }
                        };
                        assert!(pool.held() <= BUDGET);
                        buf.with_private_mut(|b| b.fill(t as u8)).unwrap();
                        assert!(
                            buf.with_private(|b| b.iter().all(|&x| x == t as u8))
                                .unwrap()
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(pool.high_water() <= BUDGET);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(pool.waiting(), 0);
    }

    /// Device-reachable blocks carry their device addresses and are
    /// reached by copies only; private ones have no device address.
    #[test]
    fn device_blocks_are_not_lent_as_slices() {
        struct Device;
        impl DmaAllocator for Device {
            fn allocate(&self, len: usize) -> Result<DmaBlock, AllocError> {
                Ok(DmaBlock::device(
                    Box::new(LocalMemory::new(len)),
                    len,
                    DmaDomainId::new(7),
                    DeviceAddress::new(0x10_0000),
                ))
            }
        }
        let pool = BouncePool::with_allocator(4096, Arc::new(Device));
        let b = pool.try_acquire(100).unwrap().unwrap();
        assert!(b.with_private_mut(|_| ()).is_none());
        assert_eq!(
            b.device_range(),
            Some((
                DmaDomainId::new(7),
                DeviceRange::new(DeviceAddress::new(0x10_0000), 100)
            ))
        );
        assert_eq!(
            BouncePool::new(4096)
                .try_acquire(1)
                .unwrap()
                .unwrap()
                .device_range(),
            None
        );
        b.sg(true).write_all(&[5; 100]).unwrap();
        let mut back = vec![0; 100];
        b.sg(false).read_all(&mut back).unwrap();
        assert_eq!(back, [5; 100]);
        let e: Result<(), MemoryError> = b.sg(false).write_all(&[1]);
        assert!(e.is_err());
    }
}
