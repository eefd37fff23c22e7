//! Locks for state more than one thread may contend for.
//!
//! In a user-mode process a thread holding a lock can be preempted; a spin
//! lock then makes every waiter burn its time slice against a holder that
//! is not running (lock-holder preemption). With the `std` feature these
//! locks are `std::sync`'s (futex based: a waiter sleeps, the holder runs);
//! without it — in a `no_std` build with no scheduler to sleep on — they
//! are `spin`'s. The API is the same either way (`lock()` returns the
//! guard; a poisoned std lock is used as is, since every structure guarded
//! here is consistent between statements), so callers do not change with
//! the feature.

#[cfg(feature = "std")]
mod imp {
    pub(super) type Mutex<T> = std::sync::Mutex<T>;
    pub(super) type RwLock<T> = std::sync::RwLock<T>;
    /// The guard of a locked [`super::Mutex`].
    pub type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;
    /// The guard of a [`super::RwLock`] locked for reading.
    pub type RwLockReadGuard<'a, T> = std::sync::RwLockReadGuard<'a, T>;
    /// The guard of a [`super::RwLock`] locked for writing.
    pub type RwLockWriteGuard<'a, T> = std::sync::RwLockWriteGuard<'a, T>;

    /// The guard, whether or not a panicking holder poisoned the lock.
    pub(super) fn unpoison<G>(r: std::sync::LockResult<G>) -> G {
        r.unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The guard if the lock was free (poisoned or not).
    pub(super) fn try_unpoison<G>(r: std::sync::TryLockResult<G>) -> Option<G> {
        match r {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

#[cfg(not(feature = "std"))]
mod imp {
    pub(super) type Mutex<T> = spin::Mutex<T>;
    pub(super) type RwLock<T> = spin::RwLock<T>;
    /// The guard of a locked [`super::Mutex`].
    pub type MutexGuard<'a, T> = spin::MutexGuard<'a, T>;
    /// The guard of a [`super::RwLock`] locked for reading.
    pub type RwLockReadGuard<'a, T> = spin::RwLockReadGuard<'a, T>;
    /// The guard of a [`super::RwLock`] locked for writing.
    pub type RwLockWriteGuard<'a, T> = spin::RwLockWriteGuard<'a, T>;

    pub(super) fn unpoison<G>(g: G) -> G {
        g
    }

    pub(super) fn try_unpoison<G>(g: Option<G>) -> Option<G> {
        g
    }
}

pub use imp::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

/// A mutual-exclusion lock: `std::sync::Mutex` with the `std` feature,
/// `spin::Mutex` without.
#[derive(Default)]
pub struct Mutex<T>(imp::Mutex<T>);

impl<T> Mutex<T> {
    /// An unlocked mutex holding `value`.
    pub const fn new(value: T) -> Self {
        Self(imp::Mutex::new(value))
    }

    /// Locks, waiting (sleeping with `std`, spinning without) while another
    /// thread holds it.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        imp::unpoison(self.0.lock())
    }

    /// Locks if free.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        imp::try_unpoison(self.0.try_lock())
    }

    /// The value, through exclusive access (no locking).
    pub fn get_mut(&mut self) -> &mut T {
        imp::unpoison(self.0.get_mut())
    }

    /// The value, consuming the lock.
    pub fn into_inner(self) -> T {
        imp::unpoison(self.0.into_inner())
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.try_lock() {
            Some(g) => f.debug_tuple("Mutex").field(&&*g).finish(),
            None => f.write_str("Mutex(<locked>)"),
        }
    }
}

/// A reader-writer lock: `std::sync::RwLock` with the `std` feature,
/// `spin::RwLock` without.
#[derive(Default)]
pub struct RwLock<T>(imp::RwLock<T>);

impl<T> RwLock<T> {
    /// An unlocked lock holding `value`.
    pub const fn new(value: T) -> Self {
        Self(imp::RwLock::new(value))
    }

    /// Locks for shared reading.
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        imp::unpoison(self.0.read())
    }

    /// Locks for exclusive writing.
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        imp::unpoison(self.0.write())
    }

    /// Locks for reading if no writer holds it.
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
        imp::try_unpoison(self.0.try_read())
    }

    /// Locks for writing if free.
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        imp::try_unpoison(self.0.try_write())
    }

    /// The value, through exclusive access (no locking).
    pub fn get_mut(&mut self) -> &mut T {
        imp::unpoison(self.0.get_mut())
    }

    /// The value, consuming the lock.
    pub fn into_inner(self) -> T {
        imp::unpoison(self.0.into_inner())
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.try_read() {
            Some(g) => f.debug_tuple("RwLock").field(&&*g).finish(),
            None => f.write_str("RwLock(<locked>)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::sync::Arc;
    use alloc::vec::Vec;

    #[test]
    fn mutex_excludes_and_try_lock_sees_the_holder() {
        let m = Mutex::new(1);
        {
            let mut g = m.lock();
            *g += 1;
            assert!(m.try_lock().is_none(), "held");
        }
        assert_eq!(*m.try_lock().expect("free"), 2);
        assert_eq!(m.into_inner(), 2);
    }

    #[test]
    fn rwlock_shares_reads_and_excludes_writes() {
        let l = RwLock::new(5);
        let r1 = l.read();
        let r2 = l.try_read().expect("readers share");
        assert!(l.try_write().is_none(), "readers exclude a writer");
        assert_eq!(*r1 + *r2, 10);
        drop((r1, r2));
        *l.write() = 6;
        assert_eq!(*l.read(), 6);
    }

    /// Many threads incrementing under the lock lose no update.
    #[test]
    fn contended_increments_are_all_kept() {
        let m = Arc::new(Mutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        *m.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*m.lock(), 40_000);
    }

    /// With `std`, a holder that panicked leaves the lock usable.
    #[test]
    fn a_panicking_holder_does_not_break_the_lock() {
        let m = Arc::new(Mutex::new(3));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            panic!("holder dies");
        })
        .join();
        assert_eq!(*m.lock(), 3);
    }

    #[test]
    fn the_build_uses_the_lock_its_feature_says() {
        let name = core::any::type_name::<imp::Mutex<u8>>();
        if cfg!(feature = "std") {
            assert!(name.starts_with("std::sync"), "{name}");
        } else {
            assert!(name.starts_with("spin::"), "{name}");
        }
    }
}
