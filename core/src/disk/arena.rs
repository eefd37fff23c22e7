//! Reusable heap storage for the futures a composite disk awaits on a disk
//! that does not complete inline.
//!
//! A composite's own future lives inline in an [`IoFuture`]; the future of
//! the operation it starts on a member is an `IoFuture` too, so it cannot
//! live inside the composite's (the sizes recurse), and a member that
//! really waits (NVMe, io_uring) has to keep it somewhere while the I/O is
//! in flight. Boxing it costs one heap allocation per composite level per
//! I/O. Instead the member's future goes into a [`FutureArena`]: a bump
//! arena (`bumpalo`) taken from a [`FuturePool`] for the length of one
//! operation, reset and handed back when the operation ends — so in the
//! steady state, once a pool holds as many arenas as the queue is deep,
//! nothing is allocated.
//!
//! Every [`Disk`](super::Disk) handle owns a pool, which
//! [`drive!`](crate::drive) uses for operations on that disk; a composite
//! that runs several member operations at once (striped) owns one for its
//! requests and puts all of a request's futures in one arena.
//!
//! The pool never waits: it is behind a lock taken with `try_lock` only. A
//! contended or empty pool means a fresh arena (one allocation); a pool
//! that is full or contended when an arena comes back drops it.
//!
//! [`IoFuture`]: super::IoFuture

use super::IO_FUTURE_BYTES;
use crate::sync::Mutex;
use alloc::vec::Vec;
use bumpalo::Bump;
use core::future::Future;
use core::pin::Pin;

/// A future pinned in a [`FutureArena`].
pub type ArenaFuture<'a, F> = Pin<bumpalo::boxed::Box<'a, F>>;

/// Bytes a fresh arena holds at least: one [`IoFuture`](super::IoFuture)
/// (the inline storage plus its bookkeeping) with room to spare.
pub const ARENA_BYTES: usize = 2 * IO_FUTURE_BYTES;

/// Arenas one pool keeps for reuse: the deepest queue served without an
/// allocation per I/O. Arenas beyond it are dropped when they come back.
pub const POOL_ARENAS: usize = 256;

/// Recycled [`FutureArena`]s; see the [module docs](self).
#[derive(Default)]
pub struct FuturePool {
    free: Mutex<Vec<Bump>>,
}

impl FuturePool {
    /// An empty pool (allocates nothing until an arena comes back).
    pub const fn new() -> Self {
        FuturePool {
            free: Mutex::new(Vec::new()),
        }
    }

    /// An arena whose first chunk holds at least `bytes` (at least
    /// [`ARENA_BYTES`]): a recycled one if the pool has one that large,
    /// otherwise a new one.
    pub fn arena(&self, bytes: usize) -> FutureArena<'_> {
        let bytes = bytes.max(ARENA_BYTES);
        let recycled = self.free.try_lock().and_then(|mut free| free.pop());
        let bump = match recycled {
            Some(bump) if bump.chunk_capacity() >= bytes => bump,
            // Too small (a larger request than before): replace it.
            _ => Bump::with_capacity(bytes),
        };
        FutureArena { bump, pool: self }
    }

    /// Arenas waiting for reuse.
    pub fn idle(&self) -> usize {
        self.free.try_lock().map_or(0, |free| free.len())
    }

    fn put_back(&self, mut bump: Bump) {
        // Keeps the arena's newest (largest) chunk, frees any older ones.
        bump.reset();
        if let Some(mut free) = self.free.try_lock()
            && free.len() < POOL_ARENAS
        {
            if free.capacity() == 0 {
                // Once per pool: room for every arena it will keep.
                free.reserve_exact(POOL_ARENAS);
            }
            free.push(bump);
        }
    }
}

impl core::fmt::Debug for FuturePool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FuturePool")
            .field("idle", &self.idle())
            .finish()
    }
}

/// Heap storage for the futures of one operation, taken from a
/// [`FuturePool`] and given back (reset) when dropped. Futures placed in
/// it borrow it, so they are always dropped — and so detached, as the
/// [`DiskIo`](super::DiskIo) contract says — before it goes back.
pub struct FutureArena<'p> {
    bump: Bump,
    pool: &'p FuturePool,
}

impl FutureArena<'_> {
    /// Moves `future` into the arena and pins it there.
    pub fn pin<F: Future>(&self, future: F) -> ArenaFuture<'_, F> {
        bumpalo::boxed::Box::pin_in(future, &self.bump)
    }

    /// The arena itself, for other values an operation keeps in it (a
    /// striped request's table of pieces).
    pub fn bump(&self) -> &Bump {
        &self.bump
    }
}

impl Drop for FutureArena<'_> {
    fn drop(&mut self) {
        // `Bump::new` allocates nothing.
        self.pool.put_back(core::mem::take(&mut self.bump));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arenas_are_reused_and_bounded() {
        let pool = FuturePool::new();
        assert_eq!(pool.idle(), 0);
        let a = pool.arena(0);
        let b = pool.arena(100);
        assert!(a.bump().chunk_capacity() >= ARENA_BYTES);
        let fut = a.pin(async { 7u8 });
        assert_eq!(futures::executor::block_on(fut), 7);
        drop((a, b));
        assert_eq!(pool.idle(), 2);
        // A recycled arena is reset: its whole chunk is free again.
        let a = pool.arena(ARENA_BYTES);
        assert!(a.bump().chunk_capacity() >= ARENA_BYTES);
        assert_eq!(pool.idle(), 1);
        // A request larger than the recycled arena gets a larger one.
        let big = pool.arena(8 * ARENA_BYTES);
        assert!(big.bump().chunk_capacity() >= 8 * ARENA_BYTES);
        drop((a, big));
        // The pool keeps at most POOL_ARENAS.
        let many: Vec<_> = (0..POOL_ARENAS + 3).map(|_| pool.arena(0)).collect();
        drop(many);
        assert_eq!(pool.idle(), POOL_ARENAS);
    }

    /// A future dropped before it finished is dropped in place (its
    /// destructor runs) before the arena goes back.
    #[test]
    fn unfinished_futures_are_dropped() {
        use alloc::sync::Arc;
        use core::sync::atomic::{AtomicBool, Ordering};
        struct Guard(Arc<AtomicBool>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let pool = FuturePool::new();
        let dropped = Arc::new(AtomicBool::new(false));
        {
            let arena = pool.arena(0);
            let g = Guard(dropped.clone());
            let fut = arena.pin(async move {
                let _g = g;
                core::future::pending::<()>().await
            });
            let mut fut = fut;
            let waker = core::task::Waker::noop();
            let mut cx = core::task::Context::from_waker(waker);
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert!(dropped.load(Ordering::SeqCst));
        assert_eq!(pool.idle(), 1);
    }
}
