//! Bounce buffers: host memory that stands in for guest memory the device
//! side cannot use in place (a confidential VM's private pages, misaligned
//! buffers, staging for encryption).
//!
//! A [`BouncePool`] hands out [`BounceBuffer`]s under a byte budget, so a
//! flood of large requests waits instead of exhausting memory. Released
//! buffers are kept for reuse, so a steady stream of requests allocates
//! nothing.

use crate::addr::{Gpa, GpaRange};
use crate::memory::LocalMemory;
use crate::sg::SgList;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use spin::Mutex;

/// A request for more bytes than the pool's whole budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// Bytes requested.
    pub len: usize,
    /// The pool's budget.
    pub budget: usize,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bounce buffer of {} bytes exceeds the pool budget of {} bytes",
            self.len, self.budget
        )
    }
}

impl core::error::Error for TooLarge {}

struct State {
    in_use: usize,
    /// Released buffers kept for reuse; their capacity counts against
    /// `budget` only while in use.
    free: Vec<Vec<u8>>,
    waiters: Vec<Option<Waker>>,
}

struct Pool {
    budget: usize,
    state: Mutex<State>,
}

/// A pool of bounce buffers with a byte budget. Cloning yields another
/// handle to the same pool.
#[derive(Clone)]
pub struct BouncePool {
    pool: Arc<Pool>,
}

impl BouncePool {
    /// A pool that has at most `budget` bytes out at once.
    pub fn new(budget: usize) -> Self {
        let state = State {
            in_use: 0,
            free: Vec::new(),
            waiters: Vec::new(),
        };
        Self {
            pool: Arc::new(Pool {
                budget,
                state: Mutex::new(state),
            }),
        }
    }

    /// The byte budget.
    pub fn budget(&self) -> usize {
        self.pool.budget
    }

    /// Bytes currently handed out.
    pub fn in_use(&self) -> usize {
        self.pool.state.lock().in_use
    }

    /// A buffer of `len` bytes if the budget allows it now. Its contents
    /// are unspecified: fill it before showing it to anyone.
    pub fn try_acquire(&self, len: usize) -> Result<Option<BounceBuffer>, TooLarge> {
        if len > self.pool.budget {
            return Err(TooLarge {
                len,
                budget: self.pool.budget,
            });
        }
        let mut st = self.pool.state.lock();
        if st.in_use + len > self.pool.budget {
            return Ok(None);
        }
        st.in_use += len;
        // Best fit among kept buffers, else a new one.
        let pick = st
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        let mut data = match pick {
            Some(i) => st.free.swap_remove(i),
            None => Vec::new(),
        };
        drop(st);
        data.resize(len, 0);
        Ok(Some(BounceBuffer {
            mem: LocalMemory::from_vec(data),
            range: [GpaRange::new(Gpa::new(0), len as u64)],
            pool: self.pool.clone(),
        }))
    }

    /// A buffer of `len` bytes, waiting until the budget allows it.
    pub fn acquire(&self, len: usize) -> Acquire<'_> {
        Acquire {
            pool: self,
            len,
            slot: None,
        }
    }
}

/// Future returned by [`BouncePool::acquire`].
pub struct Acquire<'a> {
    pool: &'a BouncePool,
    len: usize,
    slot: Option<usize>,
}

impl Future for Acquire<'_> {
    type Output = Result<BounceBuffer, TooLarge>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(buf) = self.pool.try_acquire(self.len)? {
            self.clear_slot();
            return Poll::Ready(Ok(buf));
        }
        {
            let mut st = self.pool.pool.state.lock();
            let slot = match self.slot {
                Some(i) => i,
                None => match st.waiters.iter().position(Option::is_none) {
                    Some(i) => i,
                    None => {
                        st.waiters.push(None);
                        st.waiters.len() - 1
                    }
                },
            };
            st.waiters[slot] = Some(cx.waker().clone());
            self.slot = Some(slot);
        }
        // A release between the attempt and registration would be missed.
        match self.pool.try_acquire(self.len)? {
            Some(buf) => {
                self.clear_slot();
                Poll::Ready(Ok(buf))
            }
            None => Poll::Pending,
        }
    }
}

impl Acquire<'_> {
    fn clear_slot(&mut self) {
        if let Some(i) = self.slot.take()
            && let Some(w) = self.pool.pool.state.lock().waiters.get_mut(i)
        {
            *w = None;
        }
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        self.clear_slot();
    }
}

impl fmt::Debug for BounceBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BounceBuffer")
            .field("len", &self.len())
            .finish()
    }
}

/// A buffer from a [`BouncePool`], usable as guest memory at GPA 0.
/// Returns its bytes to the pool when dropped.
pub struct BounceBuffer {
    mem: LocalMemory,
    range: [GpaRange; 1],
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

    /// The whole buffer as a scatter-gather view.
    pub fn sg(&self, writable: bool) -> SgList<'_> {
        SgList::local(&self.mem, &self.range, writable)
    }

    /// The buffer's memory.
    pub fn memory(&self) -> &LocalMemory {
        &self.mem
    }
}

impl Drop for BounceBuffer {
    fn drop(&mut self) {
        let data = self.mem.with_mut(core::mem::take);
        let len = self.len();
        let wakers: Vec<Waker> = {
            let mut st = self.pool.state.lock();
            st.in_use -= len;
            // Keep the buffer while kept capacity stays within the budget.
            let kept: usize = st.free.iter().map(Vec::capacity).sum();
            if kept + data.capacity() <= self.pool.budget {
                st.free.push(data);
            }
            st.waiters.iter().flatten().cloned().collect()
        };
        for w in wakers {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestMemory;
    use alloc::boxed::Box;
    use futures::FutureExt;

    #[test]
    fn budget_and_reuse() {
        let pool = BouncePool::new(8192);
        assert_eq!(
            pool.try_acquire(9000).unwrap_err(),
            TooLarge {
                len: 9000,
                budget: 8192
            }
        );
        let a = pool.try_acquire(4096).unwrap().unwrap();
        let b = pool.try_acquire(4096).unwrap().unwrap();
        assert!(pool.try_acquire(1).unwrap().is_none());
        a.sg(true).write_all(&[7u8; 4096]).unwrap();
        let mut back = [0u8; 4096];
        a.memory().read_at(Gpa::new(0), &mut back).unwrap();
        assert_eq!(back, [7u8; 4096]);
        let mut waiting = Box::pin(pool.acquire(2048));
        assert!(waiting.as_mut().now_or_never().is_none());
        drop(a);
        let c = waiting
            .now_or_never()
            .expect("released budget wakes the waiter")
            .unwrap();
        assert_eq!(c.len(), 2048);
        assert_eq!(pool.in_use(), 4096 + 2048);
        drop((b, c));
        assert_eq!(pool.in_use(), 0);
    }
}
