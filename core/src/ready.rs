//! [`ReadySet`]: which of a table's futures were woken since the last pass.
//!
//! A frontend that keeps many requests in flight (StorVSP's request slots,
//! the TCMU serve loop's command slots) gives each slot its own waker. The
//! waker sets the slot's bit in a shared bitmap and wakes the one task that
//! drives the table, so a pass polls only the slots that can make progress,
//! in any order, with no allocation once the set is built.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::task::Wake;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::Waker;
use futures_util::task::AtomicWaker;

/// The woken bits, one per slot, and the driving task's waker.
#[derive(Debug)]
struct Bits {
    words: Box<[AtomicU64]>,
    task: AtomicWaker,
}

/// A slot's waker: sets its bit, wakes the driving task.
struct SlotWake {
    index: usize,
    bits: Arc<Bits>,
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(word) = self.bits.words.get(self.index / 64) {
            word.fetch_or(1 << (self.index % 64), Ordering::AcqRel);
        }
        self.bits.task.wake();
    }
}

/// Per-slot wakers over one ready bitmap; see the module docs.
pub struct ReadySet {
    bits: Arc<Bits>,
    wakers: Box<[Waker]>,
}

impl core::fmt::Debug for ReadySet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReadySet")
            .field("slots", &self.wakers.len())
            .finish_non_exhaustive()
    }
}

impl ReadySet {
    /// A set for `slots` slots, none woken.
    pub fn new(slots: usize) -> Self {
        let bits = Arc::new(Bits {
            words: (0..slots.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            task: AtomicWaker::new(),
        });
        let wakers = (0..slots)
            .map(|index| {
                Waker::from(Arc::new(SlotWake {
                    index,
                    bits: bits.clone(),
                }))
            })
            .collect();
        Self { bits, wakers }
    }

    /// Slot `index`'s waker (to poll its future with), if the slot exists.
    pub fn waker(&self, index: usize) -> Option<&Waker> {
        self.wakers.get(index)
    }

    /// Marks slot `index` woken, as its waker would.
    pub fn wake(&self, index: usize) {
        if let Some(waker) = self.wakers.get(index) {
            waker.wake_by_ref();
        }
    }

    /// Wakes `waker` (the driving task) whenever a slot is woken.
    pub fn register(&self, waker: &Waker) {
        self.bits.task.register(waker);
    }

    /// Whether any slot was woken since its word was last taken.
    pub fn any(&self) -> bool {
        self.bits
            .words
            .iter()
            .any(|w| w.load(Ordering::Acquire) != 0)
    }

    /// How many 64-slot words [`take_word`](Self::take_word) accepts.
    pub fn words(&self) -> usize {
        self.bits.words.len()
    }

    /// Takes (and clears) the woken slots of word `word`: their indices,
    /// lowest first. The result borrows nothing, so the caller can poll
    /// its slots mutably while iterating.
    pub fn take_word(&self, word: usize) -> Woken {
        let bits = match self.bits.words.get(word) {
            // A plain load first: most words are clear, and a swap is a
            // locked instruction.
            Some(w) if w.load(Ordering::Relaxed) != 0 => w.swap(0, Ordering::AcqRel),
            _ => 0,
        };
        Woken {
            base: word * 64,
            bits,
        }
    }
}

/// The slots of one word that were woken, lowest index first.
#[derive(Debug)]
pub struct Woken {
    base: usize,
    bits: u64,
}

impl Iterator for Woken {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.bits == 0 {
            return None;
        }
        let index = self.base + self.bits.trailing_zeros() as usize;
        self.bits &= self.bits - 1;
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn wakers_mark_their_slots_and_a_take_clears_them() {
        let set = ReadySet::new(130);
        assert_eq!(set.words(), 3);
        assert!(!set.any());
        set.waker(3).unwrap().wake_by_ref();
        let owned = set.waker(64).unwrap().clone();
        owned.wake(); // an owned waker, woken by value
        set.wake(129);
        set.wake(200); // no such slot: ignored
        assert!(set.waker(130).is_none());
        assert!(set.any());
        let woken: Vec<usize> = (0..set.words()).flat_map(|w| set.take_word(w)).collect();
        assert_eq!(woken, [3, 64, 129]);
        assert!(!set.any());
        assert_eq!(set.take_word(0).count(), 0);
        assert_eq!(set.take_word(99).count(), 0);
    }
}
