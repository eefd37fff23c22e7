//! The persistent-reservation interface (SPC-3/4 PERSISTENT RESERVE, NVMe
//! reservations), shared by every frontend.
//!
//! Registrants are keyed by the [`InitiatorId`] the frontend passes in, so
//! one disk can arbitrate between several initiators. A disk that offers
//! reservations returns this interface from
//! [`crate::DiskIo::persistent_reservations`] and enforces the current
//! reservation on every I/O it is given (failing excluded requests with
//! [`DiskError::ReservationConflict`]); [`ReservationType::permits`] is the
//! SPC-4 table that decides which requests are excluded.
//!
//! Errors follow SPC-4: a request the reservation state forbids (wrong key,
//! unregistered initiator, another holder) fails with
//! [`DiskError::ReservationConflict`]; a malformed request (RELEASE of the
//! wrong type, PREEMPT with a zero key where that is not allowed) fails
//! with [`DiskError::InvalidInput`] (SCSI: ILLEGAL REQUEST).

use crate::disk::{BoxFuture, InitiatorId};
use crate::error::DiskError;
use crate::prwrap::ReservationsV1;
use crate::state::{InvalidState, SaveError};
use alloc::vec::Vec;

/// The six reservation types of SPC-4 / NVMe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReservationType {
    /// Only the holder may write; anyone may read.
    WriteExclusive,
    /// Only the holder may read or write.
    ExclusiveAccess,
    /// Only registrants may write; the holder is one registrant.
    WriteExclusiveRegistrantsOnly,
    /// Only registrants may read or write.
    ExclusiveAccessRegistrantsOnly,
    /// Only registrants may write; every registrant holds the reservation.
    WriteExclusiveAllRegistrants,
    /// Only registrants may read or write; every registrant holds it.
    ExclusiveAccessAllRegistrants,
}

/// Which class of the SPC-4 / SBC conflict tables a request belongs to.
///
/// Disk operations map onto it as follows: `read` (and a layer's
/// `read_present`) is [`AccessClass::Read`]; `write`, `unmap` and `flush`
/// are [`AccessClass::Write`] — SBC lists UNMAP and SYNCHRONIZE CACHE with
/// the commands that conflict exactly like WRITE, and NVMe puts Dataset
/// Management and Flush in its write command group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessClass {
    /// Transfers data from the medium (READ).
    Read,
    /// Modifies, or commits modifications to, the medium (WRITE, UNMAP,
    /// SYNCHRONIZE CACHE).
    Write,
}

impl ReservationType {
    /// All six types, in SPC-4 type-code order.
    pub const ALL: [ReservationType; 6] = [
        ReservationType::WriteExclusive,
        ReservationType::ExclusiveAccess,
        ReservationType::WriteExclusiveRegistrantsOnly,
        ReservationType::ExclusiveAccessRegistrantsOnly,
        ReservationType::WriteExclusiveAllRegistrants,
        ReservationType::ExclusiveAccessAllRegistrants,
    ];

    /// Whether every registrant holds the reservation (the two
    /// "All Registrants" types). Such a reservation has no single holder.
    pub const fn is_all_registrants(self) -> bool {
        matches!(
            self,
            ReservationType::WriteExclusiveAllRegistrants
                | ReservationType::ExclusiveAccessAllRegistrants
        )
    }

    /// Whether registrants that do not hold the reservation get the
    /// holder's access ("Registrants Only" and "All Registrants").
    pub const fn admits_registrants(self) -> bool {
        !matches!(
            self,
            ReservationType::WriteExclusive | ReservationType::ExclusiveAccess
        )
    }

    /// Whether initiators without access may still read (the three
    /// "Write Exclusive" types).
    pub const fn shares_reads(self) -> bool {
        matches!(
            self,
            ReservationType::WriteExclusive
                | ReservationType::WriteExclusiveRegistrantsOnly
                | ReservationType::WriteExclusiveAllRegistrants
        )
    }

    /// The SPC-4 rule: whether a request of class `access` from an
    /// initiator is allowed while this reservation is in effect.
    ///
    /// `holder` says whether the initiator holds the reservation (for the
    /// all-registrants types, every registrant does); `registered` whether
    /// it has a registered key. The holder may do anything; under the
    /// registrants-only and all-registrants types so may every registrant;
    /// everyone else may only read, and only under a write-exclusive type.
    pub const fn permits(self, access: AccessClass, holder: bool, registered: bool) -> bool {
        if holder || (registered && self.admits_registrants()) {
            return true;
        }
        matches!(access, AccessClass::Read) && self.shares_reads()
    }

    /// The SPC-4 PERSISTENT RESERVATION TYPE code (1, 3, 5, 6, 7, 8); the
    /// code saved state uses.
    pub const fn spc_code(self) -> u8 {
        match self {
            ReservationType::WriteExclusive => 1,
            ReservationType::ExclusiveAccess => 3,
            ReservationType::WriteExclusiveRegistrantsOnly => 5,
            ReservationType::ExclusiveAccessRegistrantsOnly => 6,
            ReservationType::WriteExclusiveAllRegistrants => 7,
            ReservationType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    /// The type with SPC-4 code `code`, if it is one of the six.
    pub const fn from_spc_code(code: u8) -> Option<ReservationType> {
        Some(match code {
            1 => ReservationType::WriteExclusive,
            3 => ReservationType::ExclusiveAccess,
            5 => ReservationType::WriteExclusiveRegistrantsOnly,
            6 => ReservationType::ExclusiveAccessRegistrantsOnly,
            7 => ReservationType::WriteExclusiveAllRegistrants,
            8 => ReservationType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// A lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReservationType::WriteExclusive => "write-exclusive",
            ReservationType::ExclusiveAccess => "exclusive-access",
            ReservationType::WriteExclusiveRegistrantsOnly => "write-exclusive-registrants-only",
            ReservationType::ExclusiveAccessRegistrantsOnly => "exclusive-access-registrants-only",
            ReservationType::WriteExclusiveAllRegistrants => "write-exclusive-all-registrants",
            ReservationType::ExclusiveAccessAllRegistrants => "exclusive-access-all-registrants",
        }
    }
}

impl core::fmt::Display for ReservationType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which reservation features a disk supports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReservationCapabilities {
    /// Write Exclusive.
    pub write_exclusive: bool,
    /// Exclusive Access.
    pub exclusive_access: bool,
    /// Write Exclusive – Registrants Only.
    pub write_exclusive_registrants_only: bool,
    /// Exclusive Access – Registrants Only.
    pub exclusive_access_registrants_only: bool,
    /// Write Exclusive – All Registrants.
    pub write_exclusive_all_registrants: bool,
    /// Exclusive Access – All Registrants.
    pub exclusive_access_all_registrants: bool,
    /// Persist Through Power Loss (APTPL) can be activated: the state
    /// survives a power cycle (SCSI `PTPL_C`). Only a disk that stores its
    /// reservation state durably may claim it.
    pub persist_through_power_loss: bool,
    /// REGISTER AND MOVE is supported.
    pub register_and_move: bool,
}

impl ReservationCapabilities {
    /// Every feature.
    pub const ALL: ReservationCapabilities = ReservationCapabilities {
        write_exclusive: true,
        exclusive_access: true,
        write_exclusive_registrants_only: true,
        exclusive_access_registrants_only: true,
        write_exclusive_all_registrants: true,
        exclusive_access_all_registrants: true,
        persist_through_power_loss: true,
        register_and_move: true,
    };

    /// Whether reservations of `kind` are supported.
    pub const fn supports(&self, kind: ReservationType) -> bool {
        match kind {
            ReservationType::WriteExclusive => self.write_exclusive,
            ReservationType::ExclusiveAccess => self.exclusive_access,
            ReservationType::WriteExclusiveRegistrantsOnly => self.write_exclusive_registrants_only,
            ReservationType::ExclusiveAccessRegistrantsOnly => {
                self.exclusive_access_registrants_only
            }
            ReservationType::WriteExclusiveAllRegistrants => self.write_exclusive_all_registrants,
            ReservationType::ExclusiveAccessAllRegistrants => self.exclusive_access_all_registrants,
        }
    }
}

/// One registered initiator (a READ FULL STATUS descriptor / an NVMe
/// registered-controller entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registrant {
    /// Who registered.
    pub initiator: InitiatorId,
    /// Its reservation key (never 0: key 0 means "not registered").
    pub key: u64,
    /// Whether it holds the reservation (every registrant does under an
    /// all-registrants type).
    pub holds_reservation: bool,
}

/// The reservation state of a disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReservationReport {
    /// PRgeneration: a wrapping counter bumped by every successful
    /// REGISTER, REGISTER AND IGNORE EXISTING KEY, CLEAR, PREEMPT, PREEMPT
    /// AND ABORT and REGISTER AND MOVE (not by RESERVE or RELEASE).
    pub generation: u32,
    /// The current reservation type, if any.
    pub reservation: Option<ReservationType>,
    /// The single holder of the reservation: `None` when there is no
    /// reservation and for the all-registrants types, whose holders are
    /// all registrants.
    pub holder: Option<InitiatorId>,
    /// Whether APTPL is in effect (SCSI `PTPL_A`).
    pub persist_through_power_loss: bool,
    /// Every registrant, in registration order.
    pub registrants: Vec<Registrant>,
}

impl ReservationReport {
    /// The reservation key READ RESERVATION reports: the holder's key, or 0
    /// for an all-registrants reservation (SPC-4); `None` without a
    /// reservation.
    pub fn reservation_key(&self) -> Option<u64> {
        let kind = self.reservation?;
        if kind.is_all_registrants() {
            return Some(0);
        }
        let holder = self.holder?;
        self.registrants
            .iter()
            .find(|r| r.initiator == holder)
            .map(|r| r.key)
    }

    /// The key `initiator` is registered with, if it is registered.
    pub fn key_of(&self, initiator: InitiatorId) -> Option<u64> {
        self.registrants
            .iter()
            .find(|r| r.initiator == initiator)
            .map(|r| r.key)
    }
}

/// A unit attention condition a PERSISTENT RESERVE OUT raises on an I_T
/// nexus other than the one that issued it (SPC-4 5.12.11 and the PREEMPT,
/// CLEAR and RELEASE service actions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationNotice {
    /// 2A/03 RESERVATIONS PREEMPTED: CLEAR removed this registration.
    ReservationsPreempted,
    /// 2A/04 RESERVATIONS RELEASED: a Registrants Only or All Registrants
    /// reservation this registrant shared was released (RELEASE by its
    /// holder, or the holder of a Registrants Only one unregistered).
    ReservationsReleased,
    /// 2A/05 REGISTRATIONS PREEMPTED: PREEMPT or PREEMPT AND ABORT removed
    /// this registration.
    RegistrationsPreempted,
}

/// Persistent-reservation operations. Each names the initiator issuing it.
///
/// Every PERSISTENT RESERVE OUT service action except REGISTER and REGISTER
/// AND IGNORE EXISTING KEY requires `initiator` to be registered with
/// `key`; otherwise it fails with [`DiskError::ReservationConflict`].
pub trait PersistentReservations: Send + Sync {
    /// Supported features.
    fn capabilities(&self) -> ReservationCapabilities;
    /// The reservation state this process keeps for the disk, for
    /// servicing. `None` (the default) when there is none to save: the
    /// state lives outside the process (a device's own reservations), and
    /// the restarted service finds it there.
    fn save_state(&self) -> Option<Result<ReservationsV1, SaveError>> {
        None
    }
    /// Restores state [`PersistentReservations::save_state`] saved. The
    /// default refuses: such a disk keeps no reservation state of its own.
    fn restore_state(&self, saved: &ReservationsV1) -> Result<(), InvalidState> {
        let _ = saved;
        Err(InvalidState::new(
            "",
            "the disk keeps no reservation state in this process to restore into",
        ))
    }
    /// Takes the unit attentions the operations so far raised on other
    /// initiators ([`ReservationNotice`]), oldest first, so the front end
    /// can report each to its initiator's next command. A front end calls
    /// it after each PERSISTENT RESERVE OUT. The default has none: a
    /// device keeping its own reservations raises its own unit attentions.
    fn take_notices(&self) -> Vec<(InitiatorId, ReservationNotice)> {
        Vec::new()
    }
    /// The full reservation state (READ KEYS, READ RESERVATION and READ
    /// FULL STATUS are all views of it).
    fn report(&self) -> BoxFuture<'_, Result<ReservationReport, DiskError>>;
    /// REGISTER (`current_key` given) or REGISTER AND IGNORE EXISTING KEY
    /// (`None`); `new_key == 0` unregisters. `aptpl` sets APTPL if given;
    /// a disk without [`ReservationCapabilities::persist_through_power_loss`]
    /// refuses `Some(true)` with [`DiskError::InvalidInput`] and changes
    /// nothing.
    ///
    /// With REGISTER, `current_key` must equal the initiator's registered
    /// key, or be 0 if it is not registered; otherwise the request
    /// conflicts. Unregistering the holder of a single-holder reservation
    /// releases it; an all-registrants reservation is released when its
    /// last registrant goes.
    fn register(
        &self,
        initiator: InitiatorId,
        current_key: Option<u64>,
        new_key: u64,
        aptpl: Option<bool>,
    ) -> BoxFuture<'_, Result<(), DiskError>>;
    /// RESERVE with `key` and `kind`. Succeeds without change if the
    /// initiator already holds a reservation of `kind`; conflicts if any
    /// other reservation exists.
    fn reserve(
        &self,
        initiator: InitiatorId,
        key: u64,
        kind: ReservationType,
    ) -> BoxFuture<'_, Result<(), DiskError>>;
    /// RELEASE the reservation of `kind` held with `key`. Succeeds without
    /// change if there is no reservation or the initiator does not hold it;
    /// a holder naming the wrong type gets [`DiskError::InvalidInput`]
    /// (INVALID RELEASE OF PERSISTENT RESERVATION).
    fn release(
        &self,
        initiator: InitiatorId,
        key: u64,
        kind: ReservationType,
    ) -> BoxFuture<'_, Result<(), DiskError>>;
    /// CLEAR every registration and the reservation.
    fn clear(&self, initiator: InitiatorId, key: u64) -> BoxFuture<'_, Result<(), DiskError>>;
    /// PREEMPT (or PREEMPT AND ABORT if `abort`) the registrants holding
    /// `preempt_key`, taking a reservation of `kind` if `preempt_key`
    /// identifies the reservation holder (or is 0 under an
    /// all-registrants reservation).
    fn preempt(
        &self,
        initiator: InitiatorId,
        key: u64,
        preempt_key: u64,
        kind: ReservationType,
        abort: bool,
    ) -> BoxFuture<'_, Result<(), DiskError>>;
    /// REGISTER AND MOVE: register `target` with `new_key` and move the
    /// reservation held with `key` to it; `unregister` then unregisters
    /// `initiator`; `aptpl` sets APTPL (refused like [`register`]'s where
    /// persist through power loss is not supported).
    ///
    /// [`register`]: PersistentReservations::register
    fn register_and_move(
        &self,
        initiator: InitiatorId,
        key: u64,
        new_key: u64,
        target: InitiatorId,
        unregister: bool,
        aptpl: bool,
    ) -> BoxFuture<'_, Result<(), DiskError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_cover_every_type() {
        for kind in ReservationType::ALL {
            assert!(ReservationCapabilities::ALL.supports(kind));
            assert!(!ReservationCapabilities::default().supports(kind));
            assert_eq!(ReservationType::from_spc_code(kind.spc_code()), Some(kind));
        }
        for code in [0, 2, 4, 9, 0xF, 0xFF] {
            assert_eq!(ReservationType::from_spc_code(code), None, "{code}");
        }
    }
}
