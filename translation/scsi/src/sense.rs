//! The sense data REQUEST SENSE returns, kept per initiator.
//!
//! SPC-5 keeps sense data per I_T nexus: REQUEST SENSE returns the sense
//! of the last command *that initiator* saw fail, not another initiator's.
//! The table is bounded so initiators cannot make it grow without limit:
//! it keeps [`SENSE_SLOTS`] initiators and, when full, forgets the one
//! whose sense was stored longest ago.
//!
//! Sense data the transport already delivered with the CHECK CONDITION
//! (autosense, [`SenseDelivery::Autosense`]) is not kept: SPC clears sense
//! data once it is delivered, so a REQUEST SENSE after it reports NO SENSE
//! instead of the same error a second time.

use crate::data::data_in;
use crate::result::{Res, ScsiResult};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};
use parastor_core::sync::Mutex;
use parastor_core::{InitiatorId, SgList};
use parastor_hw::scsi::{AdditionalSense, DESCRIPTOR_SENSE_MAX, ScsiStatus, SenseData, SenseKey};
use zerocopy::IntoBytes;

/// Most initiators whose sense is kept at once.
pub const SENSE_SLOTS: usize = 32;

/// How a transport hands the initiator the sense data of a command that
/// ends in CHECK CONDITION; the transport says so with each command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenseDelivery {
    /// The transport returns the sense data with the status (autosense:
    /// StorVSP when the request has room for it and does not disable it).
    /// Delivered sense is cleared, and it replaces whatever that initiator
    /// had pending: a later REQUEST SENSE reports NO SENSE.
    Autosense,
    /// The transport returns only the status: the sense data is kept for
    /// the initiator's REQUEST SENSE.
    RequestSense,
}

struct Entry {
    initiator: InitiatorId,
    sense: SenseData,
    /// When the sense was stored (a counter).
    stamp: u64,
}

#[derive(Default)]
struct Table {
    entries: Vec<Entry>,
    clock: u64,
}

/// Pending sense data per initiator, at most [`SENSE_SLOTS`] of them.
#[derive(Default)]
pub(crate) struct SenseTable {
    inner: Mutex<Table>,
}

impl SenseTable {
    /// Stores `sense` as `initiator`'s latest, replacing what it had; when
    /// the table is full, the initiator stored longest ago is forgotten.
    pub(crate) fn store(&self, initiator: InitiatorId, sense: SenseData) {
        let mut t = self.inner.lock();
        t.clock += 1;
        let stamp = t.clock;
        let entry = Entry {
            initiator,
            sense,
            stamp,
        };
        if let Some(e) = t.entries.iter_mut().find(|e| e.initiator == initiator) {
            *e = entry;
        } else if t.entries.len() < SENSE_SLOTS {
            t.entries.push(entry);
        } else if let Some(oldest) = t.entries.iter_mut().min_by_key(|e| e.stamp) {
            *oldest = entry;
        }
    }

    /// Takes `initiator`'s pending sense, if any.
    pub(crate) fn take(&self, initiator: InitiatorId) -> Option<SenseData> {
        let mut t = self.inner.lock();
        let i = t.entries.iter().position(|e| e.initiator == initiator)?;
        Some(t.entries.swap_remove(i).sense)
    }

    /// Every initiator's pending sense, the one stored longest ago first
    /// (the order eviction follows), for saved state.
    pub(crate) fn snapshot(&self) -> Vec<(InitiatorId, SenseData)> {
        let t = self.inner.lock();
        let mut entries: Vec<_> = t
            .entries
            .iter()
            .map(|e| (e.stamp, e.initiator, e.sense))
            .collect();
        entries.sort_unstable_by_key(|&(stamp, _, _)| stamp);
        entries.into_iter().map(|(_, i, s)| (i, s)).collect()
    }

    /// Replaces the whole table with `entries` (oldest first, at most
    /// [`SENSE_SLOTS`], no initiator twice: the caller checked).
    pub(crate) fn replace(&self, entries: &[(InitiatorId, SenseData)]) {
        let mut t = self.inner.lock();
        t.entries.clear();
        for (stamp, &(initiator, sense)) in (1..).zip(entries) {
            t.entries.push(Entry {
                initiator,
                sense,
                stamp,
            });
        }
        t.clock = entries.len() as u64;
    }

    /// A command's result. If it is a CHECK CONDITION, its sense is kept
    /// for `initiator`'s REQUEST SENSE, unless `delivery` says the
    /// transport delivers it with the status: then it is not kept, and
    /// clears what the initiator had pending.
    pub(crate) fn finish(
        &self,
        result: Res,
        initiator: InitiatorId,
        delivery: SenseDelivery,
    ) -> ScsiResult {
        let result = match result {
            Ok(tx) => ScsiResult::good(tx),
            Err(r) => r,
        };
        if result.status == ScsiStatus::CHECK_CONDITION {
            match (delivery, result.sense) {
                (SenseDelivery::RequestSense, Some(sense)) => self.store(initiator, sense),
                (SenseDelivery::RequestSense, None) => {}
                (SenseDelivery::Autosense, _) => {
                    self.take(initiator);
                }
            }
        }
        result
    }
}

/// Most unit attentions pending for one initiator; a further one makes the
/// oldest go.
pub(crate) const UA_DEPTH: usize = 4;

/// Most initiators with unit attentions pending at once; a further one
/// makes the initiator that got its first pending one longest ago lose
/// them.
pub(crate) const UA_SLOTS: usize = SENSE_SLOTS;

/// One initiator's pending unit attentions, oldest first.
struct Pending {
    initiator: InitiatorId,
    queue: [AdditionalSense; UA_DEPTH],
    len: usize,
}

/// Unit attentions raised on particular initiators (persistent
/// reservation changes another initiator made), each reported once, to
/// that initiator's next command. The I/O path pays one atomic load while
/// none is pending anywhere.
#[derive(Default)]
pub(crate) struct UnitAttentions {
    /// How many initiators have some pending: 0 lets commands skip the lock.
    pending: AtomicUsize,
    inner: Mutex<Vec<Pending>>,
}

impl UnitAttentions {
    /// Queues UNIT ATTENTION with `code` for `initiator`, unless it already
    /// has that one pending.
    pub(crate) fn raise(&self, initiator: InitiatorId, code: AdditionalSense) {
        let mut t = self.inner.lock();
        let i = match t.iter().position(|p| p.initiator == initiator) {
            Some(i) => i,
            None => {
                if t.len() >= UA_SLOTS {
                    t.remove(0);
                }
                t.push(Pending {
                    initiator,
                    queue: [AdditionalSense::NO_ADDITIONAL_SENSE; UA_DEPTH],
                    len: 0,
                });
                t.len() - 1
            }
        };
        if let Some(p) = t.get_mut(i) {
            let len = p.len.min(UA_DEPTH);
            if !p.queue[..len].contains(&code) {
                if len == UA_DEPTH {
                    p.queue.rotate_left(1);
                    p.queue[UA_DEPTH - 1] = code;
                } else {
                    p.queue[len] = code;
                    p.len = len + 1;
                }
            }
        }
        self.pending.store(t.len(), Ordering::Release);
    }

    /// Takes `initiator`'s oldest pending unit attention as sense data.
    pub(crate) fn take(&self, initiator: InitiatorId) -> Option<SenseData> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut t = self.inner.lock();
        let i = t.iter().position(|p| p.initiator == initiator)?;
        let p = t.get_mut(i)?;
        let code = p.queue[0];
        p.queue.rotate_left(1);
        p.len = p.len.saturating_sub(1);
        if p.len == 0 {
            t.remove(i);
        }
        self.pending.store(t.len(), Ordering::Release);
        Some(SenseData::new(SenseKey::UNIT_ATTENTION, code))
    }
}

/// REQUEST SENSE's parameter data: `sense` (NO SENSE if `None`) in
/// descriptor (`desc`) or fixed format, truncated to `alloc_len`.
pub(crate) fn request_sense(
    data: &SgList<'_>,
    sense: Option<SenseData>,
    desc: bool,
    alloc_len: usize,
) -> Res {
    let sense = sense.unwrap_or_default();
    if desc {
        let mut buf = [0u8; DESCRIPTOR_SENSE_MAX];
        let n = sense.write_descriptor(&mut buf);
        data_in(data, &buf[..n], alloc_len)
    } else {
        data_in(data, sense.to_fixed().as_bytes(), alloc_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parastor_hw::scsi::AdditionalSense;

    fn sense(n: u8) -> SenseData {
        SenseData::illegal(AdditionalSense::from_parts(n, 0))
    }

    fn id(n: usize) -> InitiatorId {
        InitiatorId::new(n as u128 + 1)
    }

    #[test]
    fn unit_attentions_queue_per_initiator() {
        let u = UnitAttentions::default();
        assert_eq!(u.take(id(0)), None);
        let code = |n: u8| AdditionalSense::from_parts(0x2A, n);
        let ua = |n: u8| Some(SenseData::new(SenseKey::UNIT_ATTENTION, code(n)));
        u.raise(id(0), code(3));
        u.raise(id(0), code(3));
        u.raise(id(1), code(5));
        u.raise(id(0), code(4));
        assert_eq!(u.take(id(0)), ua(3));
        assert_eq!(u.take(id(0)), ua(4));
        assert_eq!(u.take(id(0)), None);
        // A full queue drops its oldest.
        for n in 10..10 + UA_DEPTH as u8 + 1 {
            u.raise(id(1), code(n));
        }
        for n in 10..10 + UA_DEPTH as u8 {
            assert_eq!(u.take(id(1)), ua(n + 1));
        }
        assert_eq!(u.take(id(1)), None);
        assert_eq!(u.pending.load(Ordering::Relaxed), 0);
        // Bounded in initiators too.
        for i in 0..UA_SLOTS * 3 {
            u.raise(id(i), code(1));
            assert!(u.inner.lock().len() <= UA_SLOTS);
        }
        assert_eq!(u.take(id(UA_SLOTS * 3 - 1)), ua(1));
        assert_eq!(u.take(id(0)), None);
    }

    #[test]
    fn per_initiator_take_clears() {
        let t = SenseTable::default();
        t.store(id(0), sense(1));
        t.store(id(1), sense(2));
        t.store(id(0), sense(3));
        assert_eq!(t.take(id(1)), Some(sense(2)));
        assert_eq!(t.take(id(1)), None);
        assert_eq!(t.take(id(0)), Some(sense(3)));
        assert_eq!(t.take(id(0)), None);
        assert_eq!(t.take(id(7)), None);
    }

    #[test]
    fn bounded_forgets_the_oldest() {
        let t = SenseTable::default();
        for i in 0..SENSE_SLOTS {
            t.store(id(i), sense(i as u8));
        }
        // Refreshing initiator 0 makes initiator 1 the oldest.
        t.store(id(0), sense(100));
        for i in SENSE_SLOTS..SENSE_SLOTS * 10 {
            t.store(id(i), sense(i as u8));
            assert!(t.inner.lock().entries.len() <= SENSE_SLOTS);
        }
        // Only the last SENSE_SLOTS initiators are still there.
        assert_eq!(t.take(id(0)), None);
        assert_eq!(t.take(id(1)), None);
        let last = SENSE_SLOTS * 10 - 1;
        assert_eq!(t.take(id(last)), Some(sense(last as u8)));
        assert_eq!(
            t.take(id(last + 1 - SENSE_SLOTS)),
            Some(sense((last + 1 - SENSE_SLOTS) as u8))
        );
        assert_eq!(t.take(id(last - SENSE_SLOTS)), None);
    }

    #[test]
    fn eviction_follows_store_order() {
        let t = SenseTable::default();
        for i in 0..SENSE_SLOTS {
            t.store(id(i), sense(i as u8));
        }
        t.store(id(0), sense(100));
        t.store(id(SENSE_SLOTS), sense(0xAA));
        // Initiator 1 was the least recently stored; 0 survived.
        assert_eq!(t.take(id(1)), None);
        assert_eq!(t.take(id(0)), Some(sense(100)));
        assert_eq!(t.take(id(SENSE_SLOTS)), Some(sense(0xAA)));
    }
}
