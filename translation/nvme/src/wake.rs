//! Who runs next: one woken bit per worker (the admin queue, each I/O
//! completion queue, the namespace watchers), one task waker for
//! [`NvmeController::poll_work`] and one per worker for a host that runs
//! each completion queue on its own task ([`NvmeController::poll_queue`]).
//!
//! A doorbell write costs one atomic OR and the wakes; nothing here
//! allocates after construction.
//!
//! [`NvmeController::poll_work`]: crate::NvmeController::poll_work
//! [`NvmeController::poll_queue`]: crate::NvmeController::poll_queue

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::task::Wake;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::Waker;
use futures_util::task::AtomicWaker;

/// The woken bits and the wakers to call when one is set.
pub(crate) struct Wakeups {
    bits: Box<[AtomicU64]>,
    all: AtomicWaker,
    each: Box<[AtomicWaker]>,
    /// Which of `all` / `each` a host has registered with: a wake skips
    /// the kind nobody waits on (bit 0: all, bit 1: each).
    used: core::sync::atomic::AtomicU8,
}

impl Wakeups {
    /// Wakeups for `workers` workers, none woken.
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            bits: (0..workers.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            all: AtomicWaker::new(),
            each: (0..workers).map(|_| AtomicWaker::new()).collect(),
            used: core::sync::atomic::AtomicU8::new(0),
        }
    }

    /// Marks worker `index` woken and wakes whoever runs it. An index out
    /// of range is ignored.
    pub(crate) fn wake(&self, index: usize) {
        let Some(word) = self.bits.get(index / 64) else {
            return;
        };
        let bit = 1 << (index % 64);
        if word.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            // Already woken and not yet run: whoever runs it was woken.
            return;
        }
        let used = self.used.load(Ordering::Acquire);
        if used & 1 != 0 {
            self.all.wake();
        }
        if used & 2 != 0
            && let Some(w) = self.each.get(index)
        {
            w.wake();
        }
    }

    /// Registers the task that runs every worker.
    pub(crate) fn register_all(&self, waker: &Waker) {
        self.all.register(waker);
        if self.used.load(Ordering::Relaxed) & 1 == 0 {
            self.used.fetch_or(1, Ordering::AcqRel);
        }
    }

    /// Registers the task that runs worker `index`.
    pub(crate) fn register(&self, index: usize, waker: &Waker) {
        if let Some(w) = self.each.get(index) {
            w.register(waker);
        }
        if self.used.load(Ordering::Relaxed) & 2 == 0 {
            self.used.fetch_or(2, Ordering::AcqRel);
        }
    }

    /// Takes and clears worker `index`'s woken bit: whether it was set.
    pub(crate) fn take(&self, index: usize) -> bool {
        let Some(word) = self.bits.get(index / 64) else {
            return false;
        };
        let bit = 1u64 << (index % 64);
        word.load(Ordering::Relaxed) & bit != 0 && word.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    /// Takes (clears) the woken bits of word `word`.
    pub(crate) fn take_word(&self, word: usize) -> u64 {
        match self.bits.get(word) {
            Some(w) if w.load(Ordering::Relaxed) != 0 => w.swap(0, Ordering::AcqRel),
            _ => 0,
        }
    }

    /// How many 64-worker words there are.
    pub(crate) fn words(&self) -> usize {
        self.bits.len()
    }
}

/// A waker that marks one worker woken (given to the futures a worker
/// polls, through its slots' [`ReadySet`](parastor_core::ready::ReadySet)).
pub(crate) struct WorkerWake {
    pub(crate) wakeups: Arc<Wakeups>,
    pub(crate) index: usize,
}

impl Wake for WorkerWake {
    fn wake(self: Arc<Self>) {
        self.wakeups.wake(self.index);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakeups.wake(self.index);
    }
}

/// Worker `index`'s waker.
pub(crate) fn worker_waker(wakeups: &Arc<Wakeups>, index: usize) -> Waker {
    Waker::from(Arc::new(WorkerWake {
        wakeups: wakeups.clone(),
        index,
    }))
}
