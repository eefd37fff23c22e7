//! The persistent-reservation interface (SPC-3/4 PERSISTENT RESERVE, NVMe
//! reservations), shared by every frontend.
//!
//! Registrants are keyed by the [`InitiatorId`] the frontend passes in, so
//! one disk can arbitrate between several initiators. A disk that offers
//! reservations returns this interface from
//! [`crate::DiskIo::persistent_reservations`] and enforces the current
//! reservation on every I/O it is given (failing excluded requests with
//! [`DiskError::ReservationConflict`]).

use crate::disk::{BoxFuture, InitiatorId};
use crate::error::DiskError;
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
    /// Persist Through Power Loss (APTPL) can be set.
    pub persist_through_power_loss: bool,
    /// REGISTER AND MOVE is supported.
    pub register_and_move: bool,
}

/// One registered initiator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registrant {
    /// Who registered.
    pub initiator: InitiatorId,
    /// Its reservation key.
    pub key: u64,
    /// Whether it holds the reservation.
    pub holds_reservation: bool,
}

/// The reservation state of a disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReservationReport {
    /// Generation counter: bumped by every registration change.
    pub generation: u32,
    /// The current reservation type, if any.
    pub reservation: Option<ReservationType>,
    /// Whether APTPL is in effect.
    pub persist_through_power_loss: bool,
    /// Every registrant.
    pub registrants: Vec<Registrant>,
}

/// Persistent-reservation operations. Each names the initiator issuing it.
pub trait PersistentReservations: Send + Sync {
    /// Supported features.
    fn capabilities(&self) -> ReservationCapabilities;
    /// The full reservation state.
    fn report(&self) -> BoxFuture<'_, Result<ReservationReport, DiskError>>;
    /// REGISTER (`current_key` given) or REGISTER AND IGNORE EXISTING KEY
    /// (`None`); `new_key == 0` unregisters. `aptpl` sets APTPL if given.
    fn register(
        &self,
        initiator: InitiatorId,
        current_key: Option<u64>,
        new_key: u64,
        aptpl: Option<bool>,
    ) -> BoxFuture<'_, Result<(), DiskError>>;
    /// RESERVE with `key` and `kind`.
    fn reserve(
        &self,
        initiator: InitiatorId,
        key: u64,
        kind: ReservationType,
    ) -> BoxFuture<'_, Result<(), DiskError>>;
    /// RELEASE the reservation of `kind` held with `key`.
    fn release(
        &self,
        initiator: InitiatorId,
        key: u64,
        kind: ReservationType,
    ) -> BoxFuture<'_, Result<(), DiskError>>;
    /// CLEAR every registration and the reservation.
    fn clear(&self, initiator: InitiatorId, key: u64) -> BoxFuture<'_, Result<(), DiskError>>;
    /// PREEMPT (or PREEMPT AND ABORT if `abort`) the registrants holding
    /// `preempt_key`, taking a reservation of `kind`.
    fn preempt(
        &self,
        initiator: InitiatorId,
        key: u64,
        preempt_key: u64,
        kind: ReservationType,
        abort: bool,
    ) -> BoxFuture<'_, Result<(), DiskError>>;
    /// REGISTER AND MOVE: register `target` with `new_key` and move the
    /// reservation held with `key` to it.
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
