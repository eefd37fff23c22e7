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
//! The pool never waits: its arenas sit in a few shards, each behind a
//! lock taken with `try_lock` only. Taking an arena starts at the shard an
//! arena last went back to (so one thread finds one at the first try) and
//! moves on past a busy or empty shard; an arena goes back to the shard it
//! came from if that one is free, so threads (CPUs) sharing a disk rarely
//! meet. Only when every shard is busy or empty is a fresh arena made
//! (one allocation); an arena that finds every shard busy or full when it
//! comes back is dropped.
//!
//! [`IoFuture`]: super::IoFuture

use super::IO_FUTURE_BYTES;
use crate::sync::Mutex;
use alloc::vec::Vec;
use bumpalo::Bump;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicUsize, Ordering};

/// A future pinned in a [`FutureArena`].
pub type ArenaFuture<'a, F> = Pin<bumpalo::boxed::Box<'a, F>>;

/// Bytes a fresh arena holds at least: one [`IoFuture`](super::IoFuture)
/// (the inline storage plus its bookkeeping) with room to spare.
pub const ARENA_BYTES: usize = 2 * IO_FUTURE_BYTES;

/// Arenas one pool keeps for reuse: the deepest queue served without an
/// allocation per I/O. Arenas beyond it are dropped when they come back.
pub const POOL_ARENAS: usize = 256;

/// Shards of a pool (see the [module docs](self)).
const SHARDS: usize = 4;

/// Arenas one shard keeps.
const SHARD_ARENAS: usize = POOL_ARENAS / SHARDS;

/// Recycled [`FutureArena`]s; see the [module docs](self).
#[derive(Default)]
pub struct FuturePool {
    shards: [Mutex<Vec<Bump>>; SHARDS],
    /// The shard an arena last went back to: where taking one starts.
    hint: AtomicUsize,
}

impl FuturePool {
    /// An empty pool (allocates nothing until an arena comes back).
    pub const fn new() -> Self {
        FuturePool {
            shards: [const { Mutex::new(Vec::new()) }; SHARDS],
            hint: AtomicUsize::new(0),
        }
    }

    /// The shards' indexes, starting at `start`.
    fn from(start: usize) -> impl Iterator<Item = usize> {
        (0..SHARDS).map(move |i| (start + i) % SHARDS)
    }

    /// An arena whose first chunk holds at least `bytes` (at least
    /// [`ARENA_BYTES`]): a recycled one if the pool has one that large,
    /// otherwise a new one.
    pub fn arena(&self, bytes: usize) -> FutureArena<'_> {
        let bytes = bytes.max(ARENA_BYTES);
        let start = self.hint.load(Ordering::Relaxed);
        let recycled = Self::from(start).find_map(|i| {
            let popped = self.shards[i].try_lock().and_then(|mut free| free.pop());
            popped.map(|bump| (i, bump))
        });
        let (shard, bump) = match recycled {
            Some((i, bump)) if bump.chunk_capacity() >= bytes => (i, bump),
            // Too small (a larger request than before): replace it.
            Some((i, _)) => (i, Bump::with_capacity(bytes)),
            None => (start, Bump::with_capacity(bytes)),
        };
        FutureArena {
            bump,
            pool: self,
            shard,
        }
    }

    /// Arenas waiting for reuse (those in shards locked right now are not
    /// counted).
    pub fn idle(&self) -> usize {
        let counts = self
            .shards
            .iter()
            .map(|s| s.try_lock().map_or(0, |f| f.len()));
        counts.sum()
    }

    fn put_back(&self, mut bump: Bump, shard: usize) {
        // Keeps the arena's newest (largest) chunk, frees any older ones.
        bump.reset();
        for i in Self::from(shard) {
            if let Some(mut free) = self.shards[i].try_lock()
                && free.len() < SHARD_ARENAS
            {
                self.hint.store(i, Ordering::Relaxed);
                if free.capacity() == 0 {
                    // Once per shard: room for every arena it will keep.
                    free.reserve_exact(SHARD_ARENAS);
                }
                free.push(bump);
                return;
            }
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
    /// The shard it goes back to first.
    shard: usize,
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
        self.pool
            .put_back(core::mem::take(&mut self.bump), self.shard);
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

    /// A shard held by another thread is skipped, not waited for: the
    /// arena still comes from (and goes back to) the other shards.
    #[test]
    fn busy_shards_are_skipped() {
        let pool = FuturePool::new();
        drop((0..SHARDS).map(|_| pool.arena(0)).collect::<Vec<_>>());
        let home = pool.hint.load(Ordering::Relaxed);
        let busy = pool.shards[home].lock();
        let held = busy.len();
        assert!(held > 0);
        for _ in 0..2 * SHARDS {
            drop(pool.arena(0));
        }
        assert_eq!(busy.len(), held, "the busy shard was not touched");
        drop(busy);
        // One arena was made while the arenas' shard was busy; it went to
        // another shard and was reused from there.
        assert_eq!(pool.idle(), held + 1);
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
