//! In-memory SPC-4 persistent reservations for any disk, arbitrating
//! between several initiators and **enforced on every I/O**.
//!
//! [`ReservationsDisk`] wraps a [`Disk`] and implements
//! [`PersistentReservations`] for it: registrations are keyed by the
//! [`InitiatorId`] of the request, all six reservation types are supported,
//! and so is REGISTER AND MOVE (persist through power loss is not: the
//! state is in memory). OpenVMM's equivalent
//! (`disk_prwrap`) serves a single initiator, lacks the all-registrants
//! types and never enforces the reservation; this one does.
//!
//! # Enforcement
//! Every request carries its initiator in [`IoOptions::initiator`]. While a
//! reservation exists, each request is checked before it reaches the inner
//! disk with [`ReservationType::permits`] (the SPC-4 table) and fails with
//! [`DiskError::ReservationConflict`] if it is excluded:
//!
//! | type | holder | registered non-holder | unregistered |
//! |---|---|---|---|
//! | Write Exclusive | read, write | read | read |
//! | Exclusive Access | read, write | — | — |
//! | WE – Registrants Only | read, write | read, write | read |
//! | EA – Registrants Only | read, write | read, write | — |
//! | WE – All Registrants | read, write | (every registrant holds it) | read |
//! | EA – All Registrants | read, write | (every registrant holds it) | — |
//!
//! `read` and a layer's `read_present` are reads. `write`, `unmap` and
//! `flush` are writes: SBC lists UNMAP and SYNCHRONIZE CACHE with the
//! commands that conflict like WRITE (they modify, or commit modifications
//! to, the medium), and NVMe's write command group holds Dataset Management
//! and Flush. Without a reservation, every request passes, registered or
//! not. [`InitiatorId::LOCAL`] gets no exemption: a frontend that forgets
//! to name its initiator is fenced like any other.
//!
//! Metadata, `eject`, `wait_resize` and read-cache fills
//! (`write_no_overwrite`, which carry no initiator and no guest-chosen
//! data) pass through unchecked. Range checks are the inner disk's. Some
//! checks happen in the [`Disk`] handle before this disk sees a request, so
//! they win over a reservation conflict: malformed requests (partial
//! sectors, unrepresentable ranges) are refused there, writes and unmaps to
//! a read-only disk fail with [`DiskError::ReadOnly`], a flush of a
//! read-only disk succeeds there (it has nothing to make durable), and an
//! unmap on a disk whose unmap behaviour is `Ignored` is answered there
//! (range check only, no data changes).
//!
//! # PREEMPT AND ABORT
//! SPC-4 aborts the preempted initiators' outstanding commands. This disk
//! tracks every request it has admitted to the inner disk. PREEMPT AND
//! ABORT (1) changes the reservation state at once, so a preempted
//! initiator's *new* requests are judged as unregistered; (2) marks every
//! request the preempted initiators had in flight: when such a request
//! comes back from the inner disk it completes with
//! [`DiskError::AbortedByPreempt`] whatever the inner disk said (its data
//! may or may not have reached the medium, as for any aborted command);
//! and (3) completes only once every request admitted before it has left
//! the inner disk (a request whose future is dropped leaves at once). So
//! when PREEMPT AND ABORT returns, no write of a preempted initiator can
//! still land. The inner disk's own operations cannot be cancelled, so (3)
//! waits for them rather than cutting them short; it waits for requests of
//! other initiators admitted before it too (it does not know which inner
//! operation would finish first), which delays only the PREEMPT AND ABORT.
//! Plain PREEMPT leaves outstanding requests alone, as SPC-4 says.
//!
//! # SPC-4 choices
//! - PRgeneration is bumped by every successful REGISTER and REGISTER AND
//!   IGNORE EXISTING KEY (even one that changes nothing), CLEAR, PREEMPT,
//!   PREEMPT AND ABORT and REGISTER AND MOVE; never by RESERVE, RELEASE or
//!   a failed request; it restarts at 0 on [`ReservationsDisk::power_loss`].
//! - No persist through power loss: the state lives in memory only, so it
//!   survives exactly as long as this object (which outlives guest resets)
//!   and no power cycle. The capabilities say so (`PTPL_C` = 0), and a
//!   registration or REGISTER AND MOVE that asks to activate APTPL is
//!   refused with [`DiskError::InvalidInput`] before anything changes
//!   (SPC-4: ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST); asking for
//!   it to be off is accepted. [`ReservationsDisk::power_loss`] models a
//!   power cycle of the logical unit: every registration and the
//!   reservation are lost.
//!
//! # Servicing is not a power loss
//! A restart of the service for servicing keeps the VM running: the guest
//! sees no loss of power, so SPC-4 lets nothing change, with APTPL or
//! without (APTPL=0 only releases the state *on* a power loss). The state
//! is saved and restored whole ([`ReservationsDisk::save`],
//! [`ReservationsDisk::restore`], [`ReservationsV1`]) — registrations in
//! order, keys, the reservation and its holder, PRgeneration — and
//! servicing therefore needs no APTPL.
//!
//! `PTPL_C` stays 0 even so. APTPL=1 promises that registrations and the
//! reservation survive the logical unit losing power and getting it back
//! (SPC-4: "retain … even if power is lost and later returned"). For this
//! logical unit that is the VM powering off, resetting hard or its host
//! failing: all of them end the paravisor, and the saved state (handed
//! from one service process to the next, never written anywhere durable)
//! with it. Advertising `PTPL_C` would make a clustering initiator (Windows
//! failover clustering, Linux `sg_persist --param-aptpl`) rely on a
//! promise a VM restart breaks. (OpenVMM's in-memory `disk_prwrap`, a
//! test-only wrapper that OpenHCL does not register, claims PTPL and has
//! no saved state; OpenHCL's reservations pass through to NVMe
//! namespaces, whose `PTPL_C` is the device's own.) A backend that stores
//! reservations durably (the device's own PR, or a host-side store)
//! reports its own capability.
//! - PREEMPT: a key identifying the single holder preempts the reservation
//!   (the holder and every other registrant with that key lose their
//!   registration, the issuer keeps its own and gets a reservation of the
//!   requested type); under an all-registrants reservation key 0 preempts
//!   it, removing every registration but the issuer's; any other key only
//!   removes the registrations holding it (the issuer's included, as SPC-4
//!   5.12.11.4.4 says) and leaves the reservation alone (unless that leaves
//!   an all-registrants reservation without registrants). Key 0 otherwise
//!   is [`DiskError::InvalidInput`]; a key nobody holds conflicts.
//! - REGISTER AND MOVE requires the issuer to hold a single-holder
//!   reservation (no reservation, another holder or an all-registrants type
//!   conflict); a zero key or the issuer as target is invalid input. The
//!   target may already be registered; its key is replaced.
//! - At most [`MAX_REGISTRANTS`] initiators may be registered; one more is
//!   refused with [`DiskError::InvalidInput`] (SPC-4: INSUFFICIENT
//!   REGISTRATION RESOURCES).
//! - Unit attentions for the other I_T nexuses are recorded for the front
//!   end to deliver ([`PersistentReservations::take_notices`]): CLEAR
//!   raises RESERVATIONS PREEMPTED on every other registrant; PREEMPT and
//!   PREEMPT AND ABORT raise REGISTRATIONS PREEMPTED on each initiator
//!   whose registration they removed (not the issuer); releasing a
//!   Registrants Only or All Registrants reservation (RELEASE by a holder,
//!   or unregistering the holder of a Registrants Only one) raises
//!   RESERVATIONS RELEASED on the other registrants. REGISTER AND MOVE and
//!   RESERVE raise none. At most `2 * MAX_REGISTRANTS` wait untaken (the
//!   oldest are dropped); they are not saved for servicing.

use crate::disk::{BoxFuture, Disk, DiskIo, InitiatorId, IoOptions, LayerIo, SectorMarker};
use crate::drive;
use crate::error::DiskError;
use crate::pr::{
    AccessClass, PersistentReservations, Registrant, ReservationCapabilities, ReservationNotice,
    ReservationReport, ReservationType,
};
use crate::sg::SgList;
use crate::state::{InvalidState, SaveError, Versioned, check_count};
use crate::sync::Mutex;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use serde::{Deserialize, Serialize};

/// Most initiators that can be registered at once.
pub const MAX_REGISTRANTS: usize = 256;

/// What [`ReservationsDisk`] supports: every reservation type and REGISTER
/// AND MOVE, but no persist through power loss (its state is in memory).
pub const CAPABILITIES: ReservationCapabilities = ReservationCapabilities {
    persist_through_power_loss: false,
    ..ReservationCapabilities::ALL
};

/// Refuses a request to activate APTPL: the state cannot survive a power
/// loss, so promising it would be a lie.
fn refuse_aptpl(activate: bool) -> Result<(), DiskError> {
    if activate {
        return Err(DiskError::InvalidInput(
            "APTPL cannot be activated: reservations are kept in memory only and do not persist through power loss",
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
struct Registration {
    initiator: InitiatorId,
    /// Never 0.
    key: u64,
}

#[derive(Clone, Copy, Debug)]
struct Reservation {
    kind: ReservationType,
    /// The holder; ignored for the all-registrants types. Always
    /// registered: removing its registration releases the reservation.
    holder: InitiatorId,
}

impl Reservation {
    /// Whether `initiator` (`registered` or not) holds this reservation:
    /// the single holder, or under an all-registrants type any registrant.
    fn held_by(self, initiator: InitiatorId, registered: bool) -> bool {
        if self.kind.is_all_registrants() {
            registered
        } else {
            self.holder == initiator
        }
    }
}

/// Reservation state plus the in-flight bookkeeping PREEMPT AND ABORT
/// needs; one lock, so admitting a request and changing the reservation
/// are atomic with respect to each other.
#[derive(Default)]
struct State {
    generation: u32,
    /// In registration order.
    registrations: Vec<Registration>,
    reservation: Option<Reservation>,
    /// Admission epoch; bumped by each PREEMPT AND ABORT.
    epoch: u64,
    /// Requests in the inner disk per admission epoch, oldest first.
    in_flight: VecDeque<(u64, usize)>,
    /// `(initiator, epoch)`: that initiator's requests admitted before
    /// `epoch` were aborted. One entry per initiator (the latest abort
    /// covers every earlier one); pruned once no such request is in flight.
    aborted: Vec<(InitiatorId, u64)>,
    /// PREEMPT AND ABORT futures waiting for older requests to leave.
    drain_waiters: Vec<Waker>,
    /// Unit attentions raised on other initiators, oldest first, until the
    /// front end takes them; at most [`MAX_NOTICES`] (the oldest go).
    notices: Vec<(InitiatorId, ReservationNotice)>,
}

/// Most unit attentions kept for the front end to take: one operation
/// raises at most one per registrant.
const MAX_NOTICES: usize = 2 * MAX_REGISTRANTS;

const CONFLICT: DiskError = DiskError::ReservationConflict;

impl State {
    fn position(&self, initiator: InitiatorId) -> Option<usize> {
        self.registrations
            .iter()
            .position(|r| r.initiator == initiator)
    }

    fn key_of(&self, initiator: InitiatorId) -> Option<u64> {
        self.position(initiator).map(|i| self.registrations[i].key)
    }

    /// The registration of `initiator`, which must carry `key`.
    fn check_key(&self, initiator: InitiatorId, key: u64) -> Result<usize, DiskError> {
        match self.position(initiator) {
            Some(i) if self.registrations[i].key == key => Ok(i),
            _ => Err(CONFLICT),
        }
    }

    fn is_holder(&self, initiator: InitiatorId) -> bool {
        self.reservation
            .is_some_and(|r| r.held_by(initiator, self.position(initiator).is_some()))
    }

    fn permits(&self, initiator: InitiatorId, access: AccessClass) -> bool {
        let Some(r) = self.reservation else {
            return true;
        };
        let registered = self.position(initiator).is_some();
        r.kind
            .permits(access, r.held_by(initiator, registered), registered)
    }

    /// Raises `notice` on `initiator`.
    fn notify(&mut self, initiator: InitiatorId, notice: ReservationNotice) {
        if self.notices.len() >= MAX_NOTICES {
            self.notices.remove(0);
        }
        self.notices.push((initiator, notice));
    }

    /// Raises `notice` on every registrant but `except`.
    fn notify_registrants(&mut self, except: InitiatorId, notice: ReservationNotice) {
        for i in 0..self.registrations.len() {
            let who = self.registrations[i].initiator;
            if who != except {
                self.notify(who, notice);
            }
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    fn add(&mut self, initiator: InitiatorId, key: u64) -> Result<(), DiskError> {
        if self.registrations.len() >= MAX_REGISTRANTS {
            return Err(DiskError::InvalidInput(
                "insufficient registration resources: too many registered initiators",
            ));
        }
        self.registrations.push(Registration { initiator, key });
        Ok(())
    }

    /// Removes registration `i`, releasing the reservation if that leaves
    /// it without a holder. Releasing a Registrants Only reservation so
    /// raises RESERVATIONS RELEASED on the remaining registrants (an All
    /// Registrants one is released only when none remain).
    fn unregister(&mut self, i: usize) {
        let gone = self.registrations.remove(i);
        if let Some(r) = self.reservation {
            let orphaned = if r.kind.is_all_registrants() {
                self.registrations.is_empty()
            } else {
                r.holder == gone.initiator
            };
            if orphaned {
                self.reservation = None;
                if r.kind.admits_registrants() {
                    self.notify_registrants(
                        gone.initiator,
                        ReservationNotice::ReservationsReleased,
                    );
                }
            }
        }
    }

    /// Removes every registration with `key` except `keep`'s; returns the
    /// initiators removed.
    fn remove_key(&mut self, key: u64, keep: Option<InitiatorId>) -> Vec<InitiatorId> {
        let mut removed = Vec::new();
        let mut i = 0;
        while i < self.registrations.len() {
            let r = self.registrations[i];
            if r.key == key && Some(r.initiator) != keep {
                removed.push(r.initiator);
                self.unregister(i);
            } else {
                i += 1;
            }
        }
        removed
    }

    fn register(
        &mut self,
        initiator: InitiatorId,
        current_key: Option<u64>,
        new_key: u64,
        aptpl: Option<bool>,
    ) -> Result<(), DiskError> {
        refuse_aptpl(aptpl == Some(true))?;
        let pos = self.position(initiator);
        // REGISTER checks the current key; REGISTER AND IGNORE EXISTING KEY
        // (`None`) does not.
        if let Some(current) = current_key {
            let registered = pos.map_or(0, |i| self.registrations[i].key);
            if current != registered {
                return Err(CONFLICT);
            }
        }
        match (pos, new_key) {
            // Unregistered and registering nothing: nothing to do.
            (None, 0) => {}
            (None, key) => self.add(initiator, key)?,
            (Some(i), 0) => self.unregister(i),
            (Some(i), key) => self.registrations[i].key = key,
        }
        self.bump();
        Ok(())
    }

    fn reserve(
        &mut self,
        initiator: InitiatorId,
        key: u64,
        kind: ReservationType,
    ) -> Result<(), DiskError> {
        self.check_key(initiator, key)?;
        match self.reservation {
            None => {
                self.reservation = Some(Reservation {
                    kind,
                    holder: initiator,
                });
                Ok(())
            }
            Some(r) if r.kind == kind && self.is_holder(initiator) => Ok(()),
            Some(_) => Err(CONFLICT),
        }
    }

    fn release(
        &mut self,
        initiator: InitiatorId,
        key: u64,
        kind: ReservationType,
    ) -> Result<(), DiskError> {
        self.check_key(initiator, key)?;
        match self.reservation {
            Some(r) if self.is_holder(initiator) => {
                if r.kind != kind {
                    return Err(DiskError::InvalidInput(
                        "invalid release of persistent reservation: type differs from the reservation held",
                    ));
                }
                self.reservation = None;
                if r.kind.admits_registrants() {
                    self.notify_registrants(initiator, ReservationNotice::ReservationsReleased);
                }
                Ok(())
            }
            // No reservation, or held by someone else: nothing to release.
            _ => Ok(()),
        }
    }

    fn clear(&mut self, initiator: InitiatorId, key: u64) -> Result<(), DiskError> {
        self.check_key(initiator, key)?;
        self.notify_registrants(initiator, ReservationNotice::ReservationsPreempted);
        self.reservation = None;
        self.registrations.clear();
        self.bump();
        Ok(())
    }

    /// PREEMPT / PREEMPT AND ABORT. Returns the epoch to drain to when
    /// requests were aborted.
    fn preempt(
        &mut self,
        initiator: InitiatorId,
        key: u64,
        preempt_key: u64,
        kind: ReservationType,
        abort: bool,
    ) -> Result<Option<u64>, DiskError> {
        self.check_key(initiator, key)?;
        let take_over = Reservation {
            kind,
            holder: initiator,
        };
        let preempted = match self.reservation {
            Some(r) if r.kind.is_all_registrants() && preempt_key == 0 => {
                let others = self
                    .registrations
                    .iter()
                    .filter(|r| r.initiator != initiator)
                    .map(|r| r.initiator)
                    .collect();
                self.registrations.retain(|r| r.initiator == initiator);
                self.reservation = Some(take_over);
                others
            }
            Some(r)
                if !r.kind.is_all_registrants() && self.key_of(r.holder) == Some(preempt_key) =>
            {
                self.reservation = None;
                let removed = self.remove_key(preempt_key, Some(initiator));
                self.reservation = Some(take_over);
                removed
            }
            _ => {
                if preempt_key == 0 {
                    return Err(DiskError::InvalidInput(
                        "PREEMPT with reservation key 0 needs an all-registrants reservation",
                    ));
                }
                if !self.registrations.iter().any(|r| r.key == preempt_key) {
                    return Err(CONFLICT);
                }
                let mut removed = self.remove_key(preempt_key, None);
                removed.retain(|&i| i != initiator);
                removed
            }
        };
        for &who in &preempted {
            self.notify(who, ReservationNotice::RegistrationsPreempted);
        }
        self.bump();
        if !abort || preempted.is_empty() {
            return Ok(None);
        }
        self.epoch += 1;
        let epoch = self.epoch;
        if !self.in_flight.is_empty() {
            for initiator in preempted {
                match self.aborted.iter_mut().find(|(i, _)| *i == initiator) {
                    Some((_, e)) => *e = epoch,
                    None => self.aborted.push((initiator, epoch)),
                }
            }
        }
        Ok(Some(epoch))
    }

    fn register_and_move(
        &mut self,
        initiator: InitiatorId,
        key: u64,
        new_key: u64,
        target: InitiatorId,
        unregister: bool,
        aptpl: bool,
    ) -> Result<(), DiskError> {
        refuse_aptpl(aptpl)?;
        self.check_key(initiator, key)?;
        if new_key == 0 {
            return Err(DiskError::InvalidInput(
                "REGISTER AND MOVE needs a nonzero service action reservation key",
            ));
        }
        if target == initiator {
            return Err(DiskError::InvalidInput(
                "REGISTER AND MOVE names the issuing initiator as the target",
            ));
        }
        let Some(mut r) = self.reservation else {
            return Err(CONFLICT);
        };
        if r.kind.is_all_registrants() || r.holder != initiator {
            return Err(CONFLICT);
        }
        match self.position(target) {
            Some(i) => self.registrations[i].key = new_key,
            None => self.add(target, new_key)?,
        }
        r.holder = target;
        self.reservation = Some(r);
        if unregister && let Some(i) = self.position(initiator) {
            self.unregister(i);
        }
        self.bump();
        Ok(())
    }

    fn report(&self) -> ReservationReport {
        ReservationReport {
            generation: self.generation,
            reservation: self.reservation.map(|r| r.kind),
            holder: self
                .reservation
                .filter(|r| !r.kind.is_all_registrants())
                .map(|r| r.holder),
            persist_through_power_loss: false,
            registrants: self
                .registrations
                .iter()
                .map(|r| Registrant {
                    initiator: r.initiator,
                    key: r.key,
                    holds_reservation: self.is_holder(r.initiator),
                })
                .collect(),
        }
    }

    /// Records one request entering the inner disk; returns its epoch.
    fn enter(&mut self) -> u64 {
        let epoch = self.epoch;
        match self.in_flight.back_mut() {
            Some((e, n)) if *e == epoch => *n += 1,
            _ => self.in_flight.push_back((epoch, 1)),
        }
        epoch
    }

    /// Records one request leaving the inner disk; returns whether it was
    /// aborted, and the wakers to wake once the lock is dropped.
    fn leave(&mut self, initiator: InitiatorId, epoch: u64) -> (bool, Vec<Waker>) {
        let aborted = self
            .aborted
            .iter()
            .any(|&(i, e)| i == initiator && e > epoch);
        if let Some(slot) = self.in_flight.iter_mut().find(|(e, _)| *e == epoch) {
            slot.1 -= 1;
        }
        let mut drained = false;
        while self.in_flight.front().is_some_and(|&(_, n)| n == 0) {
            self.in_flight.pop_front();
            drained = true;
        }
        let mut wakers = Vec::new();
        if drained {
            match self.in_flight.front() {
                Some(&(oldest, _)) => self.aborted.retain(|&(_, e)| e > oldest),
                None => self.aborted.clear(),
            }
            wakers = core::mem::take(&mut self.drain_waiters);
        }
        (aborted, wakers)
    }
}

/// A disk with in-memory persistent reservations, enforced on I/O. See the
/// module docs.
pub struct ReservationsDisk {
    inner: Disk,
    inline: bool,
    state: Mutex<State>,
}

impl ReservationsDisk {
    /// Wraps `inner`, with no registrations, no reservation and generation
    /// 0.
    pub fn new(inner: Disk) -> ReservationsDisk {
        ReservationsDisk {
            inline: inner.completes_inline(),
            inner,
            state: Mutex::new(State::default()),
        }
    }

    /// The wrapped disk.
    pub fn inner(&self) -> &Disk {
        &self.inner
    }

    /// Models a power cycle of the logical unit: the generation restarts at
    /// 0 and every registration and the reservation are lost (there is no
    /// persist through power loss). Requests in flight are not affected.
    pub fn power_loss(&self) {
        let mut st = self.state.lock();
        st.generation = 0;
        st.registrations.clear();
        st.reservation = None;
    }

    /// The reservation state, for servicing. Refused with
    /// [`SaveError::Busy`] while a request is inside the inner disk: the
    /// bookkeeping PREEMPT AND ABORT keeps for it cannot be carried over,
    /// and a save follows the frontends' drain, after which none is.
    pub fn save(&self) -> Result<ReservationsV1, SaveError> {
        let st = self.state.lock();
        let in_flight: usize = st.in_flight.iter().map(|&(_, n)| n).sum();
        if in_flight != 0 || !st.drain_waiters.is_empty() {
            return Err(SaveError::Busy {
                component: ReservationsV1::COMPONENT,
                what: format!(
                    "{in_flight} requests are still in the inner disk and {} PREEMPT AND ABORT waits for them",
                    st.drain_waiters.len()
                ),
            });
        }
        Ok(ReservationsV1 {
            generation: st.generation,
            registrations: st
                .registrations
                .iter()
                .map(|r| RegistrationV1 {
                    initiator: r.initiator.to_bytes(),
                    key: r.key,
                })
                .collect(),
            reservation: st.reservation.map(|r| ReservationV1 {
                kind: r.kind.spc_code(),
                holder: (!r.kind.is_all_registrants()).then(|| r.holder.to_bytes()),
            }),
            aptpl: false,
        })
    }

    /// Replaces the reservation state with `saved`, after checking all of
    /// it: at most [`MAX_REGISTRANTS`] registrations, no key 0, no
    /// initiator twice, a reservation type of SPC-4, a single holder that
    /// is registered (and none for the all-registrants types, which need a
    /// registrant), APTPL off (this disk cannot persist through power
    /// loss). Nothing changes if any check fails. Requests in flight are
    /// not affected; restore into a disk that has none (a fresh one).
    pub fn restore(&self, saved: &ReservationsV1) -> Result<(), InvalidState> {
        let state = saved.validate()?;
        let mut st = self.state.lock();
        st.generation = state.generation;
        st.registrations = state.registrations;
        st.reservation = state.reservation;
        Ok(())
    }

    /// Admits a request of `access` from `initiator`, or refuses it.
    fn admit(
        &self,
        initiator: InitiatorId,
        access: AccessClass,
    ) -> Result<InFlight<'_>, DiskError> {
        let mut st = self.state.lock();
        if !st.permits(initiator, access) {
            return Err(CONFLICT);
        }
        let epoch = st.enter();
        Ok(InFlight {
            disk: self,
            initiator,
            epoch,
            open: true,
        })
    }

    /// Marks a request done; returns whether it was aborted.
    fn leave(&self, initiator: InitiatorId, epoch: u64) -> bool {
        let (aborted, wakers) = self.state.lock().leave(initiator, epoch);
        for w in wakers {
            w.wake();
        }
        aborted
    }

    fn op<'a>(
        &'a self,
        f: impl FnOnce(&mut State) -> Result<(), DiskError> + Send + 'a,
    ) -> BoxFuture<'a, Result<(), DiskError>> {
        Box::pin(async move { f(&mut self.state.lock()) })
    }
}

/// A request admitted to the inner disk. Leaving (or dropping) it updates
/// the in-flight bookkeeping.
struct InFlight<'a> {
    disk: &'a ReservationsDisk,
    initiator: InitiatorId,
    epoch: u64,
    open: bool,
}

impl InFlight<'_> {
    /// Completes the request with the inner disk's `result`, unless it was
    /// aborted by PREEMPT AND ABORT meanwhile.
    fn finish(mut self, result: Result<(), DiskError>) -> Result<(), DiskError> {
        self.open = false;
        if self.disk.leave(self.initiator, self.epoch) {
            Err(DiskError::AbortedByPreempt)
        } else {
            result
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.open {
            self.disk.leave(self.initiator, self.epoch);
        }
    }
}

/// Completes once every request admitted before `epoch` has left the
/// inner disk.
struct Drain<'a> {
    disk: &'a ReservationsDisk,
    epoch: u64,
}

impl Future for Drain<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.disk.state.lock();
        if st.in_flight.front().is_none_or(|&(e, _)| e >= self.epoch) {
            return Poll::Ready(());
        }
        if !st.drain_waiters.iter().any(|w| w.will_wake(cx.waker())) {
            st.drain_waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl PersistentReservations for ReservationsDisk {
    fn capabilities(&self) -> ReservationCapabilities {
        CAPABILITIES
    }

    fn save_state(&self) -> Option<Result<ReservationsV1, SaveError>> {
        Some(self.save())
    }

    fn restore_state(&self, saved: &ReservationsV1) -> Result<(), InvalidState> {
        self.restore(saved)
    }

    fn report(&self) -> BoxFuture<'_, Result<ReservationReport, DiskError>> {
        Box::pin(async move { Ok(self.state.lock().report()) })
    }

    fn take_notices(&self) -> Vec<(InitiatorId, ReservationNotice)> {
        core::mem::take(&mut self.state.lock().notices)
    }

    fn register(
        &self,
        initiator: InitiatorId,
        current_key: Option<u64>,
        new_key: u64,
        aptpl: Option<bool>,
    ) -> BoxFuture<'_, Result<(), DiskError>> {
        self.op(move |st| st.register(initiator, current_key, new_key, aptpl))
    }

    fn reserve(
        &self,
        initiator: InitiatorId,
        key: u64,
        kind: ReservationType,
    ) -> BoxFuture<'_, Result<(), DiskError>> {
        self.op(move |st| st.reserve(initiator, key, kind))
    }

    fn release(
        &self,
        initiator: InitiatorId,
        key: u64,
        kind: ReservationType,
    ) -> BoxFuture<'_, Result<(), DiskError>> {
        self.op(move |st| st.release(initiator, key, kind))
    }

    fn clear(&self, initiator: InitiatorId, key: u64) -> BoxFuture<'_, Result<(), DiskError>> {
        self.op(move |st| st.clear(initiator, key))
    }

    fn preempt(
        &self,
        initiator: InitiatorId,
        key: u64,
        preempt_key: u64,
        kind: ReservationType,
        abort: bool,
    ) -> BoxFuture<'_, Result<(), DiskError>> {
        Box::pin(async move {
            let drain = self
                .state
                .lock()
                .preempt(initiator, key, preempt_key, kind, abort)?;
            if let Some(epoch) = drain {
                Drain { disk: self, epoch }.await;
            }
            Ok(())
        })
    }

    fn register_and_move(
        &self,
        initiator: InitiatorId,
        key: u64,
        new_key: u64,
        target: InitiatorId,
        unregister: bool,
        aptpl: bool,
    ) -> BoxFuture<'_, Result<(), DiskError>> {
        self.op(move |st| st.register_and_move(initiator, key, new_key, target, unregister, aptpl))
    }
}

impl DiskIo for ReservationsDisk {
    fn kind(&self) -> &'static str {
        "prwrap"
    }
    crate::forward_geometry!(inner);
    crate::forward_ops!(inner, inline; unmap_behavior, eject, wait_resize, children);
    fn completes_inline(&self) -> bool {
        self.inline
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        let st = self.state.lock();
        let reservation = match st.reservation {
            None => String::from("none"),
            Some(r) if r.kind.is_all_registrants() => format!("{} (all registrants)", r.kind),
            Some(r) => format!("{} held by initiator {:#x}", r.kind, r.holder.get()),
        };
        alloc::vec![
            ("reservation", reservation),
            ("registrants", format!("{}", st.registrations.len())),
            ("generation", format!("{}", st.generation)),
        ]
    }
    fn persistent_reservations(&self) -> Option<&dyn PersistentReservations> {
        Some(self)
    }

    async fn read(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        let io = self.admit(opts.initiator, AccessClass::Read)?;
        let inner = &self.inner;
        io.finish(drive!(self.inline, inner.read(buf, sector, opts)))
    }

    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        let io = self.admit(opts.initiator, AccessClass::Write)?;
        let inner = &self.inner;
        io.finish(drive!(self.inline, inner.write(buf, sector, opts)))
    }

    async fn flush(&self, opts: IoOptions) -> Result<(), DiskError> {
        let io = self.admit(opts.initiator, AccessClass::Write)?;
        let inner = &self.inner;
        io.finish(drive!(self.inline, inner.flush(opts)))
    }

    async fn unmap(&self, sector: u64, count: u64, opts: IoOptions) -> Result<(), DiskError> {
        let io = self.admit(opts.initiator, AccessClass::Write)?;
        let inner = &self.inner;
        io.finish(drive!(self.inline, inner.unmap(sector, count, opts)))
    }

    fn as_layer(&self) -> Option<&impl LayerIo> {
        Some(self)
    }
}

impl LayerIo for ReservationsDisk {
    crate::forward_ops!(inner, inline; supports_write_no_overwrite, write_no_overwrite);
    async fn read_present(
        &self,
        buf: SgList<'_>,
        sector: u64,
        marker: &mut SectorMarker<'_>,
        opts: IoOptions,
    ) -> Result<(), DiskError> {
        let io = self.admit(opts.initiator, AccessClass::Read)?;
        let inner = &self.inner;
        io.finish(drive!(
            self.inline,
            inner.read_present(buf, sector, marker, opts)
        ))
    }
}

/// Saved persistent-reservation state, version 1 (component
/// `reservations`): plain, untrusted data; see [`crate::state`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationsV1 {
    /// PRgeneration.
    pub generation: u32,
    /// Every registration, in registration order (READ KEYS order).
    pub registrations: Vec<RegistrationV1>,
    /// The reservation, if any.
    pub reservation: Option<ReservationV1>,
    /// Whether APTPL is active. Always false from a [`ReservationsDisk`]
    /// (kept so a durable reservations store can share the format).
    pub aptpl: bool,
}

/// One saved registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationV1 {
    /// The initiator, as [`InitiatorId::to_bytes`].
    pub initiator: [u8; 16],
    /// Its reservation key (never 0).
    pub key: u64,
}

/// A saved reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationV1 {
    /// The type, as its SPC-4 code ([`ReservationType::spc_code`]).
    pub kind: u8,
    /// The single holder; `None` for the all-registrants types.
    pub holder: Option<[u8; 16]>,
}

impl Versioned for ReservationsV1 {
    const COMPONENT: &'static str = "reservations";
    const VERSION: u16 = 1;
}

impl ReservationsV1 {
    /// Checks every field without restoring anything: the same checks
    /// [`ReservationsDisk::restore`] makes.
    pub fn check(&self) -> Result<(), InvalidState> {
        self.validate().map(|_| ())
    }

    /// Checks every field (see [`ReservationsDisk::restore`]) and builds the
    /// state it describes.
    fn validate(&self) -> Result<State, InvalidState> {
        check_count("registrations", self.registrations.len(), MAX_REGISTRANTS)?;
        let mut registrations: Vec<Registration> = Vec::with_capacity(self.registrations.len());
        for (i, r) in self.registrations.iter().enumerate() {
            let field = || format!("registrations[{i}]");
            let initiator = InitiatorId::new(u128::from_be_bytes(r.initiator));
            if r.key == 0 {
                return Err(InvalidState::new(
                    format!("{}.key", field()),
                    "key 0 means not registered; a registration needs a nonzero key",
                ));
            }
            if let Some(j) = registrations.iter().position(|x| x.initiator == initiator) {
                return Err(InvalidState::new(
                    format!("{}.initiator", field()),
                    format_args!(
                        "initiator {:#x} is already registered at registrations[{j}]",
                        initiator.get()
                    ),
                ));
            }
            registrations.push(Registration {
                initiator,
                key: r.key,
            });
        }
        let reservation = match self.reservation {
            None => None,
            Some(r) => {
                let kind = ReservationType::from_spc_code(r.kind).ok_or_else(|| {
                    InvalidState::new(
                        "reservation.kind",
                        format_args!(
                            "{:#x} is not an SPC-4 reservation type (1, 3, 5, 6, 7 or 8)",
                            r.kind
                        ),
                    )
                })?;
                let holder = match (kind.is_all_registrants(), r.holder) {
                    (true, None) if registrations.is_empty() => {
                        return Err(InvalidState::new(
                            "reservation",
                            format_args!("a {kind} reservation without any registrant"),
                        ));
                    }
                    (true, None) => InitiatorId::LOCAL,
                    (true, Some(_)) => {
                        return Err(InvalidState::new(
                            "reservation.holder",
                            format_args!(
                                "a {kind} reservation has no single holder; expected none"
                            ),
                        ));
                    }
                    (false, None) => {
                        return Err(InvalidState::new(
                            "reservation.holder",
                            format_args!("a {kind} reservation needs its holder"),
                        ));
                    }
                    (false, Some(h)) => {
                        let holder = InitiatorId::new(u128::from_be_bytes(h));
                        if !registrations.iter().any(|x| x.initiator == holder) {
                            return Err(InvalidState::new(
                                "reservation.holder",
                                format_args!(
                                    "holder {:#x} is not registered; the holder must be",
                                    holder.get()
                                ),
                            ));
                        }
                        holder
                    }
                };
                Some(Reservation { kind, holder })
            }
        };
        if self.aptpl {
            return Err(InvalidState::new(
                "aptpl",
                "APTPL is active, but this disk cannot persist through power loss (PTPL_C = 0)",
            ));
        }
        Ok(State {
            generation: self.generation,
            registrations,
            reservation,
            ..State::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CLEAR, PREEMPT and the release of a shared reservation raise unit
    /// attentions on the other initiators only, and are taken once.
    #[test]
    fn notices_name_the_other_initiators() {
        use ReservationNotice::*;
        const A: InitiatorId = InitiatorId::new(0xA);
        const B: InitiatorId = InitiatorId::new(0xB);
        const C: InitiatorId = InitiatorId::new(0xC);
        let mut st = State::default();
        for (who, key) in [(A, 0xA), (B, 0xB), (C, 0xC)] {
            st.register(who, Some(0), key, None).unwrap();
        }
        let ro = ReservationType::WriteExclusiveRegistrantsOnly;
        st.reserve(A, 0xA, ro).unwrap();
        st.release(A, 0xA, ro).unwrap();
        assert_eq!(
            st.notices,
            [(B, ReservationsReleased), (C, ReservationsReleased)]
        );
        st.notices.clear();
        // A plain Write Exclusive release raises nothing.
        let we = ReservationType::WriteExclusive;
        st.reserve(A, 0xA, we).unwrap();
        st.release(A, 0xA, we).unwrap();
        assert!(st.notices.is_empty());
        // The holder of a Registrants Only reservation unregistering
        // releases it.
        st.reserve(A, 0xA, ro).unwrap();
        st.register(A, Some(0xA), 0, None).unwrap();
        assert_eq!(
            st.notices,
            [(B, ReservationsReleased), (C, ReservationsReleased)]
        );
        st.notices.clear();
        st.preempt(B, 0xB, 0xC, we, false).unwrap();
        assert_eq!(st.notices, [(C, RegistrationsPreempted)]);
        st.notices.clear();
        st.register(A, Some(0), 0xA, None).unwrap();
        st.clear(B, 0xB).unwrap();
        assert_eq!(st.notices, [(A, ReservationsPreempted)]);
    }

    /// A guest that re-registers and is fenced off again and again while
    /// one request hangs in the inner disk leaves one abort record, and
    /// every abort still reaches the request it fenced.
    #[test]
    fn repeated_aborts_keep_one_record_per_initiator() {
        const A: InitiatorId = InitiatorId::new(0xA);
        const B: InitiatorId = InitiatorId::new(0xB);
        let mut st = State::default();
        st.register(B, Some(0), 0xB, None).unwrap();
        let stuck = st.enter();
        for _ in 0..100 {
            st.register(A, None, 0xA, None).unwrap();
            let request = st.enter();
            let kind = ReservationType::WriteExclusive;
            assert!(st.preempt(B, 0xB, 0xA, kind, true).unwrap().is_some());
            assert!(st.leave(A, request).0, "the request was aborted");
        }
        assert_eq!(st.aborted.len(), 1);
        assert!(!st.leave(B, stuck).0);
        assert!(st.aborted.is_empty() && st.in_flight.is_empty());
    }

    fn disk() -> ReservationsDisk {
        let ram = crate::ram::RamDisk::new(64 * 512, 512).unwrap();
        ReservationsDisk::new(Disk::new(ram).unwrap())
    }

    fn report(d: &ReservationsDisk) -> ReservationReport {
        d.state.lock().report()
    }

    const A: InitiatorId = InitiatorId::new(0xA);
    const B: InitiatorId = InitiatorId::new(0xB);
    const C: InitiatorId = InitiatorId::new(0xC << 100);

    /// Every reservation type, held or not, survives save → encode →
    /// decode → restore into a fresh disk with the same report (order,
    /// keys, holder, generation) and the same enforcement.
    #[test]
    fn save_restore_round_trip() {
        for kind in ReservationType::ALL {
            let d = disk();
            {
                let mut st = d.state.lock();
                st.register(A, Some(0), 0xAA, None).unwrap();
                st.register(C, None, 0xCC, Some(false)).unwrap();
                st.register(B, Some(0), 0xBB, None).unwrap();
                st.reserve(C, 0xCC, kind).unwrap();
                st.register(A, Some(0xAA), 0xA2, None).unwrap();
            }
            let saved = d.save().unwrap();
            let blob = crate::state::encode(&saved).unwrap();
            let fresh = disk();
            crate::state::restore::<ReservationsV1, _>(&blob, |s| fresh.restore(&s)).unwrap();
            assert_eq!(report(&fresh), report(&d), "{kind}");
            assert_eq!(report(&fresh).generation, 4);
            for who in [A, B, C, InitiatorId::new(0xD)] {
                for access in [AccessClass::Read, AccessClass::Write] {
                    let st = fresh.state.lock();
                    assert_eq!(
                        st.permits(who, access),
                        d.state.lock().permits(who, access),
                        "{kind} {who:?} {access:?}"
                    );
                }
            }
        }
    }

    /// A save while a request is inside the inner disk is refused, naming
    /// what is in flight.
    #[test]
    fn save_refuses_requests_in_flight() {
        let d = disk();
        let io = d.admit(A, AccessClass::Write).unwrap();
        let e = d.save().unwrap_err();
        let msg = alloc::string::ToString::to_string(&e);
        assert!(
            msg.contains("1 requests are still in the inner disk"),
            "{msg}"
        );
        drop(io);
        assert!(d.save().is_ok());
    }

    /// Each invalid value is refused with its field named, and nothing is
    /// applied.
    #[test]
    fn restore_refuses_invalid_state() {
        let reg = |who: InitiatorId, key| RegistrationV1 {
            initiator: who.to_bytes(),
            key,
        };
        let good = ReservationsV1 {
            generation: 9,
            registrations: alloc::vec![reg(A, 1), reg(B, 2)],
            reservation: Some(ReservationV1 {
                kind: 1,
                holder: Some(A.to_bytes()),
            }),
            aptpl: false,
        };
        let cases: Vec<(&str, ReservationsV1)> = alloc::vec![
            (
                "registrations[1].key",
                ReservationsV1 {
                    registrations: alloc::vec![reg(A, 1), reg(B, 0)],
                    ..good.clone()
                }
            ),
            (
                "registrations[1].initiator",
                ReservationsV1 {
                    registrations: alloc::vec![reg(A, 1), reg(A, 2)],
                    ..good.clone()
                }
            ),
            (
                "registrations",
                ReservationsV1 {
                    registrations: (0..=MAX_REGISTRANTS as u128)
                        .map(|i| reg(InitiatorId::new(i), 1))
                        .collect(),
                    ..good.clone()
                }
            ),
            (
                "reservation.kind",
                ReservationsV1 {
                    reservation: Some(ReservationV1 {
                        kind: 2,
                        holder: Some(A.to_bytes()),
                    }),
                    ..good.clone()
                }
            ),
            (
                "reservation.holder",
                ReservationsV1 {
                    reservation: Some(ReservationV1 {
                        kind: 1,
                        holder: Some(C.to_bytes()),
                    }),
                    ..good.clone()
                }
            ),
            (
                "reservation.holder",
                ReservationsV1 {
                    reservation: Some(ReservationV1 {
                        kind: 3,
                        holder: None,
                    }),
                    ..good.clone()
                }
            ),
            (
                "reservation.holder",
                ReservationsV1 {
                    reservation: Some(ReservationV1 {
                        kind: 7,
                        holder: Some(A.to_bytes()),
                    }),
                    ..good.clone()
                }
            ),
            (
                "reservation",
                ReservationsV1 {
                    registrations: Vec::new(),
                    reservation: Some(ReservationV1 {
                        kind: 8,
                        holder: None,
                    }),
                    ..good.clone()
                }
            ),
            (
                "aptpl",
                ReservationsV1 {
                    aptpl: true,
                    ..good.clone()
                }
            ),
        ];
        let d = disk();
        d.restore(&good).unwrap();
        let before = report(&d);
        for (field, bad) in cases {
            let e = d.restore(&bad).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert_eq!(report(&d), before, "{field}: nothing applied");
        }
    }
}
