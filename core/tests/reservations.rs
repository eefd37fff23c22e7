//! Persistent reservations (`ReservationsDisk`): the SPC-4 I/O conflict
//! table, cell by cell, and the PERSISTENT RESERVE OUT service actions.

use core::future::Future;
use core::pin::{Pin, pin};
use core::task::{Context, Poll, Waker};
use futures::executor::block_on;
use parastor_core::Gpa;
use parastor_core::disk::IO_FUTURE_BYTES;
use parastor_core::ram::RamDisk;
use parastor_core::{
    Disk, DiskError, DiskIo, GpaRange, GuestMemory, InitiatorId, IoOptions, PersistentReservations,
    RamGuestMemory, ReservationCapabilities, ReservationType, ReservationsDisk, SgList,
};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

const WE: ReservationType = ReservationType::WriteExclusive;
const EA: ReservationType = ReservationType::ExclusiveAccess;
const WE_RO: ReservationType = ReservationType::WriteExclusiveRegistrantsOnly;
const EA_RO: ReservationType = ReservationType::ExclusiveAccessRegistrantsOnly;
const WE_AR: ReservationType = ReservationType::WriteExclusiveAllRegistrants;
const EA_AR: ReservationType = ReservationType::ExclusiveAccessAllRegistrants;

/// Registers and (in the table) takes the reservation.
const A: InitiatorId = InitiatorId::new(0xA);
/// Registers, does not reserve.
const B: InitiatorId = InitiatorId::new(0xB);
/// Never registers.
const C: InitiatorId = InitiatorId::new(0xC);
const KA: u64 = 0xAAAA;
const KB: u64 = 0xBBBB;
const KC: u64 = 0xCCCC;

const SECTORS: u64 = 64;

/// What a request the reservation state forbids returns.
const CONFLICT: Result<(), DiskError> = Err(DiskError::ReservationConflict);

struct Rig {
    disk: Disk,
    /// The disk below the reservations, to observe the medium directly.
    inner: Disk,
    mem: RamGuestMemory,
}

impl Rig {
    fn new() -> Rig {
        let inner = Disk::new(RamDisk::new(SECTORS * 512, 512).unwrap()).unwrap();
        Rig::over(inner)
    }

    fn over(inner: Disk) -> Rig {
        let disk = Disk::new(ReservationsDisk::new(inner.clone())).unwrap();
        Rig {
            disk,
            inner,
            mem: RamGuestMemory::new(1 << 16),
        }
    }

    fn pr(&self) -> &dyn PersistentReservations {
        self.disk.persistent_reservations().unwrap()
    }

    fn opts(who: InitiatorId) -> IoOptions {
        IoOptions {
            initiator: who,
            ..IoOptions::default()
        }
    }

    fn read(&self, who: InitiatorId) -> Result<(), DiskError> {
        let r = [GpaRange::new(Gpa::new(0), 512)];
        let sg = SgList::new(&self.mem, &r, true).unwrap();
        block_on(self.disk.read(sg, 0, Rig::opts(who)))
    }

    /// Writes one sector of `byte` at sector 1.
    fn write(&self, who: InitiatorId, byte: u8) -> Result<(), DiskError> {
        self.mem.fill_at(Gpa::new(4096), 512, byte).unwrap();
        let r = [GpaRange::new(Gpa::new(4096), 512)];
        let sg = SgList::new(&self.mem, &r, false).unwrap();
        block_on(self.disk.write(sg, 1, Rig::opts(who)))
    }

    fn flush(&self, who: InitiatorId) -> Result<(), DiskError> {
        block_on(self.disk.flush(Rig::opts(who)))
    }

    fn unmap(&self, who: InitiatorId) -> Result<(), DiskError> {
        block_on(self.disk.unmap(8, 8, Rig::opts(who)))
    }

    /// Sector 1 as stored in the inner disk (first byte).
    fn medium(&self) -> u8 {
        let r = [GpaRange::new(Gpa::new(8192), 512)];
        let sg = SgList::new(&self.mem, &r, true).unwrap();
        block_on(self.inner.read(sg, 1, IoOptions::default())).unwrap();
        let mut b = [0u8; 1];
        self.mem.read_at(Gpa::new(8192), &mut b).unwrap();
        b[0]
    }

    fn register(&self, who: InitiatorId, key: u64) {
        block_on(self.pr().register(who, Some(0), key, None)).unwrap();
    }

    fn generation(&self) -> u32 {
        block_on(self.pr().report()).unwrap().generation
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `A`: registered, took the reservation.
    Holder,
    /// `B`: registered, did not reserve (a holder too under the
    /// all-registrants types).
    Registered,
    /// `C`: not registered.
    Unregistered,
}

/// Allowed.
const OK: bool = true;
/// Reservation conflict.
const RC: bool = false;

/// The SPC-4 table (SPC-4 "commands allowed in the presence of various
/// reservations" with SBC's rows for READ, WRITE, UNMAP and SYNCHRONIZE
/// CACHE), written out cell by cell:
/// `(reservation, role, holds it per report, [read, write, flush, unmap])`.
#[rustfmt::skip]
const TABLE: &[(Option<ReservationType>, Role, bool, [bool; 4])] = &[
    //                                      read write flush unmap
    (None,        Role::Holder,       false, [OK, OK, OK, OK]),
    (None,        Role::Registered,   false, [OK, OK, OK, OK]),
    (None,        Role::Unregistered, false, [OK, OK, OK, OK]),
    (Some(WE),    Role::Holder,       true,  [OK, OK, OK, OK]),
    (Some(WE),    Role::Registered,   false, [OK, RC, RC, RC]),
    (Some(WE),    Role::Unregistered, false, [OK, RC, RC, RC]),
    (Some(EA),    Role::Holder,       true,  [OK, OK, OK, OK]),
    (Some(EA),    Role::Registered,   false, [RC, RC, RC, RC]),
    (Some(EA),    Role::Unregistered, false, [RC, RC, RC, RC]),
    (Some(WE_RO), Role::Holder,       true,  [OK, OK, OK, OK]),
    (Some(WE_RO), Role::Registered,   false, [OK, OK, OK, OK]),
    (Some(WE_RO), Role::Unregistered, false, [OK, RC, RC, RC]),
    (Some(EA_RO), Role::Holder,       true,  [OK, OK, OK, OK]),
    (Some(EA_RO), Role::Registered,   false, [OK, OK, OK, OK]),
    (Some(EA_RO), Role::Unregistered, false, [RC, RC, RC, RC]),
    (Some(WE_AR), Role::Holder,       true,  [OK, OK, OK, OK]),
    (Some(WE_AR), Role::Registered,   true,  [OK, OK, OK, OK]),
    (Some(WE_AR), Role::Unregistered, false, [OK, RC, RC, RC]),
    (Some(EA_AR), Role::Holder,       true,  [OK, OK, OK, OK]),
    (Some(EA_AR), Role::Registered,   true,  [OK, OK, OK, OK]),
    (Some(EA_AR), Role::Unregistered, false, [RC, RC, RC, RC]),
];

#[test]
fn conflict_table_every_cell() {
    // Every type appears with every role.
    for kind in ReservationType::ALL {
        for role in [Role::Holder, Role::Registered, Role::Unregistered] {
            assert!(
                TABLE.iter().any(|&(k, r, ..)| k == Some(kind) && r == role),
                "{kind} {role:?} missing"
            );
        }
    }
    for (row, &(kind, role, holds, expect)) in TABLE.iter().enumerate() {
        let rig = Rig::new();
        rig.register(A, KA);
        rig.register(B, KB);
        if let Some(kind) = kind {
            block_on(rig.pr().reserve(A, KA, kind)).unwrap();
        }
        let who = match role {
            Role::Holder => A,
            Role::Registered => B,
            Role::Unregistered => C,
        };
        let report = block_on(rig.pr().report()).unwrap();
        let reported = report
            .registrants
            .iter()
            .find(|r| r.initiator == who)
            .is_some_and(|r| r.holds_reservation);
        assert_eq!(reported, holds, "row {row}: {kind:?} {role:?} holds");

        let byte = row as u8 + 1;
        let got = [
            rig.read(who),
            rig.write(who, byte),
            rig.flush(who),
            rig.unmap(who),
        ];
        for (op, (got, ok)) in ["read", "write", "flush", "unmap"]
            .iter()
            .zip(got.iter().zip(expect))
        {
            let want = if ok { Ok(()) } else { CONFLICT };
            assert_eq!(got, &want, "row {row}: {kind:?} {role:?} {op}");
        }
        // A refused write never reaches the medium.
        let stored = rig.medium();
        assert_eq!(stored == byte, expect[1], "row {row}: medium after write");
    }
}

#[test]
fn two_initiator_fencing() {
    let rig = Rig::new();
    rig.register(A, KA);
    rig.register(B, KB);
    block_on(rig.pr().reserve(A, KA, WE)).unwrap();
    assert_eq!(rig.write(A, 1), Ok(()));
    assert_eq!(rig.write(B, 2), CONFLICT);
    assert_eq!(rig.medium(), 1);
    assert_eq!(rig.read(B), Ok(()));
    // The LOCAL initiator is not exempt.
    assert_eq!(rig.write(InitiatorId::LOCAL, 3), CONFLICT);

    // B fences A off.
    block_on(rig.pr().preempt(B, KB, KA, WE, false)).unwrap();
    assert_eq!(rig.write(A, 4), CONFLICT);
    assert_eq!(rig.read(A), Ok(()), "WE: anyone may still read");
    assert_eq!(rig.write(B, 5), Ok(()));
    assert_eq!(rig.medium(), 5);
    let report = block_on(rig.pr().report()).unwrap();
    assert_eq!(report.holder, Some(B));
    assert_eq!(report.key_of(A), None, "A's registration is gone");
    // A's old key no longer works.
    assert_eq!(block_on(rig.pr().register(A, Some(KA), KA, None)), CONFLICT);
    assert_eq!(block_on(rig.pr().reserve(A, KA, WE)), CONFLICT);
}

#[test]
fn generation_counter() {
    let rig = Rig::new();
    let pr = rig.pr();
    let mut g = 0;
    let mut step = |expect_bump: bool, what: &str| {
        if expect_bump {
            g += 1;
        }
        assert_eq!(rig.generation(), g, "after {what}");
    };
    step(false, "nothing");
    block_on(pr.register(A, Some(0), KA, None)).unwrap();
    step(true, "REGISTER");
    block_on(pr.register(B, None, KB, None)).unwrap();
    step(true, "REGISTER AND IGNORE EXISTING KEY");
    block_on(pr.reserve(A, KA, WE)).unwrap();
    step(false, "RESERVE");
    block_on(pr.release(A, KA, WE)).unwrap();
    step(false, "RELEASE");
    assert!(block_on(pr.register(A, Some(KB), 7, None)).is_err());
    step(false, "failed REGISTER");
    assert!(block_on(pr.reserve(C, KC, WE)).is_err());
    step(false, "failed RESERVE");
    block_on(pr.register(A, Some(KA), KA + 1, None)).unwrap();
    step(true, "REGISTER (replace key)");
    block_on(pr.register(C, Some(0), 0, None)).unwrap();
    step(true, "REGISTER of nothing by an unregistered initiator");
    block_on(pr.reserve(A, KA + 1, WE)).unwrap();
    step(false, "RESERVE");
    block_on(pr.register_and_move(A, KA + 1, KC, C, false, false)).unwrap();
    step(true, "REGISTER AND MOVE");
    block_on(pr.preempt(B, KB, KC, EA, false)).unwrap();
    step(true, "PREEMPT");
    block_on(pr.preempt(B, KB, KA + 1, EA, true)).unwrap();
    step(true, "PREEMPT AND ABORT");
    block_on(pr.clear(B, KB)).unwrap();
    step(true, "CLEAR");
    let details = rig.disk.describe().details;
    let shown = &details.iter().find(|(k, _)| *k == "generation").unwrap().1;
    assert_eq!(*shown, g.to_string());
}

#[test]
fn register_rules() {
    let rig = Rig::new();
    let pr = rig.pr();
    rig.register(A, KA);
    // Wrong current key.
    assert_eq!(block_on(pr.register(A, Some(KB), KC, None)), CONFLICT);
    // Registered, but claims to be unregistered.
    assert_eq!(block_on(pr.register(A, Some(0), KC, None)), CONFLICT);
    // Unregistered initiator naming a nonzero current key.
    assert_eq!(block_on(pr.register(C, Some(KC), KC, None)), CONFLICT);
    assert_eq!(block_on(pr.report()).unwrap().key_of(C), None);
    // REGISTER AND IGNORE EXISTING KEY ignores the key.
    block_on(pr.register(A, None, KC, None)).unwrap();
    assert_eq!(block_on(pr.report()).unwrap().key_of(A), Some(KC));
    block_on(pr.register(A, Some(KC), KA, None)).unwrap();

    // Unregistering the holder releases a single-holder reservation.
    block_on(pr.reserve(A, KA, EA)).unwrap();
    assert_eq!(rig.read(B), CONFLICT);
    block_on(pr.register(A, Some(KA), 0, None)).unwrap();
    let report = block_on(pr.report()).unwrap();
    assert_eq!(report.reservation, None);
    assert!(report.registrants.is_empty());
    assert_eq!(rig.read(B), Ok(()));

    // Unregistering a non-holder leaves the reservation alone.
    rig.register(A, KA);
    rig.register(B, KB);
    block_on(pr.reserve(A, KA, EA_RO)).unwrap();
    block_on(pr.register(B, None, 0, None)).unwrap();
    let report = block_on(pr.report()).unwrap();
    assert_eq!(report.reservation, Some(EA_RO));
    assert_eq!(report.holder, Some(A));
    assert_eq!(rig.read(B), CONFLICT);
}

#[test]
fn reserve_rules() {
    let rig = Rig::new();
    let pr = rig.pr();
    rig.register(A, KA);
    rig.register(B, KB);
    assert_eq!(block_on(pr.reserve(C, KC, WE)), CONFLICT, "unregistered");
    assert_eq!(block_on(pr.reserve(A, KB, WE)), CONFLICT, "wrong key");
    block_on(pr.reserve(A, KA, WE)).unwrap();
    block_on(pr.reserve(A, KA, WE)).unwrap();
    assert_eq!(
        block_on(pr.reserve(A, KA, EA)),
        CONFLICT,
        "holder asking for another type"
    );
    assert_eq!(
        block_on(pr.reserve(B, KB, WE)),
        CONFLICT,
        "another initiator"
    );
    let report = block_on(pr.report()).unwrap();
    assert_eq!((report.reservation, report.holder), (Some(WE), Some(A)));
}

#[test]
fn release_rules() {
    let rig = Rig::new();
    let pr = rig.pr();
    rig.register(A, KA);
    rig.register(B, KB);
    // No reservation: success, nothing happens.
    block_on(pr.release(A, KA, WE)).unwrap();
    block_on(pr.reserve(A, KA, WE)).unwrap();
    let g = rig.generation();
    assert_eq!(block_on(pr.release(C, KC, WE)), CONFLICT, "unregistered");
    assert_eq!(block_on(pr.release(A, KB, WE)), CONFLICT, "wrong key");
    // A registered non-holder: success, reservation unchanged.
    block_on(pr.release(B, KB, WE)).unwrap();
    assert_eq!(block_on(pr.report()).unwrap().holder, Some(A));
    // The holder naming the wrong type: ILLEGAL REQUEST.
    assert!(matches!(
        block_on(pr.release(A, KA, EA)),
        Err(DiskError::InvalidInput(_))
    ));
    assert_eq!(block_on(pr.report()).unwrap().reservation, Some(WE));
    block_on(pr.release(A, KA, WE)).unwrap();
    let report = block_on(pr.report()).unwrap();
    assert_eq!(report.reservation, None);
    assert_eq!(report.registrants.len(), 2, "registrations stay");
    assert_eq!(report.generation, g, "RELEASE does not bump the generation");
    assert_eq!(rig.write(C, 9), Ok(()));
}

#[test]
fn clear_removes_everything() {
    let rig = Rig::new();
    let pr = rig.pr();
    rig.register(A, KA);
    rig.register(B, KB);
    block_on(pr.reserve(A, KA, EA)).unwrap();
    assert_eq!(block_on(pr.clear(C, KC)), CONFLICT);
    assert_eq!(block_on(pr.clear(B, KA)), CONFLICT);
    let g = rig.generation();
    // Any registrant may clear, holder or not.
    block_on(pr.clear(B, KB)).unwrap();
    let report = block_on(pr.report()).unwrap();
    assert_eq!(report.reservation, None);
    assert!(report.registrants.is_empty());
    assert_eq!(report.generation, g + 1);
    for who in [A, B, C] {
        assert_eq!(rig.write(who, 1), Ok(()));
        assert_eq!(rig.read(who), Ok(()));
    }
}

#[test]
fn all_registrants_semantics() {
    let rig = Rig::new();
    let pr = rig.pr();
    rig.register(A, KA);
    rig.register(B, KB);
    block_on(pr.reserve(A, KA, WE_AR)).unwrap();
    let report = block_on(pr.report()).unwrap();
    assert_eq!(report.holder, None, "no single holder");
    assert_eq!(report.reservation_key(), Some(0));
    assert!(report.registrants.iter().all(|r| r.holds_reservation));
    // Every registrant is a holder: B's RESERVE of the same type is a no-op
    // success, another type conflicts.
    block_on(pr.reserve(B, KB, WE_AR)).unwrap();
    assert_eq!(block_on(pr.reserve(B, KB, EA_AR)), CONFLICT);
    // A new registrant joins the holders.
    rig.register(C, KC);
    assert_eq!(rig.write(C, 1), Ok(()));
    block_on(pr.register(C, Some(KC), 0, None)).unwrap();
    assert_eq!(rig.write(C, 1), CONFLICT);
    assert_eq!(rig.read(C), Ok(()));
    // Any holder releases it for all.
    block_on(pr.release(B, KB, WE_AR)).unwrap();
    assert_eq!(block_on(pr.report()).unwrap().reservation, None);

    // The reservation lasts while any registrant remains.
    block_on(pr.reserve(A, KA, EA_AR)).unwrap();
    block_on(pr.register(A, Some(KA), 0, None)).unwrap();
    assert_eq!(block_on(pr.report()).unwrap().reservation, Some(EA_AR));
    assert_eq!(rig.read(A), CONFLICT);
    block_on(pr.register(B, Some(KB), 0, None)).unwrap();
    assert_eq!(block_on(pr.report()).unwrap().reservation, None);
    assert_eq!(rig.read(A), Ok(()));

    // REGISTER AND MOVE cannot move an all-registrants reservation.
    rig.register(A, KA);
    rig.register(B, KB);
    block_on(pr.reserve(A, KA, EA_AR)).unwrap();
    assert_eq!(
        block_on(pr.register_and_move(A, KA, KC, C, false, false)),
        CONFLICT
    );
}

#[test]
fn preempt_rules() {
    let rig = Rig::new();
    let pr = rig.pr();
    rig.register(A, KA);
    rig.register(B, KB);
    // Key 0 needs an all-registrants reservation.
    assert!(matches!(
        block_on(pr.preempt(B, KB, 0, WE, false)),
        Err(DiskError::InvalidInput(_))
    ));
    block_on(pr.reserve(A, KA, WE)).unwrap();
    assert!(matches!(
        block_on(pr.preempt(B, KB, 0, WE, false)),
        Err(DiskError::InvalidInput(_))
    ));
    // The issuer must be registered with its key.
    assert_eq!(block_on(pr.preempt(C, KC, KA, WE, false)), CONFLICT);
    assert_eq!(block_on(pr.preempt(B, KA, KA, WE, false)), CONFLICT);
    // A key nobody holds conflicts.
    assert_eq!(block_on(pr.preempt(B, KB, 0x1234, WE, false)), CONFLICT);

    // Preempting a non-holder's key only removes its registrations; the
    // type is ignored and the reservation stays.
    rig.register(C, KC);
    let d = InitiatorId::new(0xD);
    rig.register(d, KC);
    block_on(pr.preempt(A, KA, KC, EA, false)).unwrap();
    let report = block_on(pr.report()).unwrap();
    assert_eq!((report.reservation, report.holder), (Some(WE), Some(A)));
    assert_eq!(report.key_of(C), None);
    assert_eq!(report.key_of(d), None);

    // Self-preempt changes the type and keeps the issuer registered; other
    // registrants sharing the holder's key lose their registration.
    rig.register(C, KA);
    block_on(pr.preempt(A, KA, KA, EA, false)).unwrap();
    let report = block_on(pr.report()).unwrap();
    assert_eq!((report.reservation, report.holder), (Some(EA), Some(A)));
    assert_eq!(report.key_of(A), Some(KA));
    assert_eq!(report.key_of(C), None);
    assert_eq!(report.key_of(B), Some(KB));

    // Preempting the holder moves the reservation to the issuer with the
    // requested type.
    block_on(pr.preempt(B, KB, KA, WE_RO, false)).unwrap();
    let report = block_on(pr.report()).unwrap();
    assert_eq!((report.reservation, report.holder), (Some(WE_RO), Some(B)));
    assert_eq!(report.registrants.len(), 1);

    // Without a reservation, PREEMPT removes registrations.
    block_on(pr.release(B, KB, WE_RO)).unwrap();
    rig.register(A, KA);
    block_on(pr.preempt(B, KB, KA, WE, false)).unwrap();
    let report = block_on(pr.report()).unwrap();
    assert_eq!(report.reservation, None, "no reservation is created");
    assert_eq!(report.key_of(A), None);
}

#[test]
fn preempt_under_all_registrants() {
    let rig = Rig::new();
    let pr = rig.pr();
    rig.register(A, KA);
    rig.register(B, KB);
    rig.register(C, KC);
    block_on(pr.reserve(A, KA, EA_AR)).unwrap();
    // A nonzero key removes just those registrations; the reservation stays.
    block_on(pr.preempt(A, KA, KC, WE, false)).unwrap();
    let report = block_on(pr.report()).unwrap();
    assert_eq!(report.reservation, Some(EA_AR));
    assert_eq!(report.key_of(C), None);
    assert_eq!(rig.read(C), CONFLICT);
    // Key 0 preempts the reservation: everyone else is unregistered and the
    // issuer holds a new reservation of the requested type.
    rig.register(C, KC);
    block_on(pr.preempt(B, KB, 0, WE, false)).unwrap();
    let report = block_on(pr.report()).unwrap();
    assert_eq!((report.reservation, report.holder), (Some(WE), Some(B)));
    assert_eq!(report.registrants.len(), 1);
    assert_eq!(rig.write(A, 1), CONFLICT);
    assert_eq!(rig.write(B, 2), Ok(()));
}

/// A RAM disk whose writes wait until the test opens the gate: requests
/// that stay inside the disk for a while.
struct GateDisk {
    ram: Disk,
    open: Arc<AtomicBool>,
    waiters: Arc<Mutex<Vec<Waker>>>,
}

struct Gate {
    open: Arc<AtomicBool>,
    waiters: Arc<Mutex<Vec<Waker>>>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        for w in self.waiters.lock().unwrap().drain(..) {
            w.wake();
        }
    }
}

struct GateWait<'a>(&'a GateDisk);

impl Future for GateWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.open.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        self.0.waiters.lock().unwrap().push(cx.waker().clone());
        if self.0.open.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl GateDisk {
    fn new() -> (GateDisk, Gate) {
        let open = Arc::new(AtomicBool::new(false));
        let waiters = Arc::new(Mutex::new(Vec::new()));
        let gate = Gate {
            open: open.clone(),
            waiters: waiters.clone(),
        };
        let ram = Disk::new(RamDisk::new(SECTORS * 512, 512).unwrap()).unwrap();
        (GateDisk { ram, open, waiters }, gate)
    }
}

impl DiskIo for GateDisk {
    fn kind(&self) -> &'static str {
        "gate"
    }
    fn sector_count(&self) -> u64 {
        self.ram.sector_count()
    }
    fn sector_size(&self) -> u32 {
        512
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn is_fua_respected(&self) -> bool {
        true
    }
    fn unmap_behavior(&self) -> parastor_core::UnmapBehavior {
        parastor_core::UnmapBehavior::Zeroes
    }
    async fn read(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.ram.read(buf, sector, opts).await
    }
    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        GateWait(self).await;
        self.ram.write(buf, sector, opts).await
    }
    async fn flush(&self, _opts: IoOptions) -> Result<(), DiskError> {
        Ok(())
    }
    async fn unmap(&self, sector: u64, count: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.ram.unmap(sector, count, opts).await
    }
}

fn poll<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn preempt_and_abort_fails_requests_in_flight() {
    let (gate_disk, gate) = GateDisk::new();
    let rig = Rig::over(Disk::new(gate_disk).unwrap());
    assert!(!rig.disk.completes_inline());
    let pr = rig.pr();
    rig.register(A, KA);
    rig.register(B, KB);
    block_on(pr.reserve(A, KA, WE)).unwrap();

    let r = [GpaRange::new(Gpa::new(0), 512)];
    let sg = SgList::new(&rig.mem, &r, false).unwrap();
    let mut a_write = pin!(rig.disk.write(sg, 2, Rig::opts(A)));
    assert!(
        poll(a_write.as_mut()).is_pending(),
        "A's write is in the disk"
    );
    // A dropped request does not hold up the abort.
    {
        let mut cancelled = pin!(rig.disk.write(sg, 3, Rig::opts(A)));
        assert!(poll(cancelled.as_mut()).is_pending());
    }

    // B preempts A and aborts its commands: the reservation moves at once,
    // but PREEMPT AND ABORT completes only after A's write has left.
    let mut preempt = pin!(pr.preempt(B, KB, KA, WE, true));
    assert!(poll(preempt.as_mut()).is_pending());
    let report = block_on(pr.report()).unwrap();
    assert_eq!(report.holder, Some(B));
    assert_eq!(rig.write(A, 1), CONFLICT);
    // A request A starts after the abort is judged normally.
    assert_eq!(rig.read(A), Ok(()));
    assert!(poll(preempt.as_mut()).is_pending());

    gate.open();
    assert_eq!(
        poll(a_write.as_mut()),
        Poll::Ready(Err(DiskError::AbortedByPreempt))
    );
    assert_eq!(poll(preempt.as_mut()), Poll::Ready(Ok(())));
    // B's requests are unaffected.
    assert_eq!(rig.write(B, 7), Ok(()));
    assert_eq!(rig.medium(), 7);
}

#[test]
fn plain_preempt_leaves_requests_in_flight_alone() {
    let (gate_disk, gate) = GateDisk::new();
    let rig = Rig::over(Disk::new(gate_disk).unwrap());
    let pr = rig.pr();
    rig.register(A, KA);
    rig.register(B, KB);
    block_on(pr.reserve(A, KA, WE)).unwrap();
    let r = [GpaRange::new(Gpa::new(0), 512)];
    let sg = SgList::new(&rig.mem, &r, false).unwrap();
    let mut a_write = pin!(rig.disk.write(sg, 2, Rig::opts(A)));
    assert!(poll(a_write.as_mut()).is_pending());
    let mut preempt = pin!(pr.preempt(B, KB, KA, WE, false));
    assert_eq!(poll(preempt.as_mut()), Poll::Ready(Ok(())));
    gate.open();
    assert_eq!(poll(a_write.as_mut()), Poll::Ready(Ok(())));
}

#[test]
fn preempt_and_abort_with_nothing_in_flight_completes_at_once() {
    let rig = Rig::new();
    let pr = rig.pr();
    rig.register(A, KA);
    rig.register(B, KB);
    block_on(pr.reserve(A, KA, EA)).unwrap();
    let mut preempt = pin!(pr.preempt(B, KB, KA, EA, true));
    assert_eq!(poll(preempt.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(rig.read(A), CONFLICT);
}

/// State in memory cannot persist through power loss, so it is not
/// advertised (`PTPL_C` = 0), a request to activate APTPL is refused without
/// changing anything, asking for it off is accepted, and a power loss
/// drops every registration and the reservation.
#[test]
fn no_persist_through_power_loss() {
    let rig = Rig::new();
    let pr = rig.pr();
    let caps = pr.capabilities();
    assert!(!caps.persist_through_power_loss);
    assert_eq!(
        caps,
        ReservationCapabilities {
            persist_through_power_loss: false,
            ..ReservationCapabilities::ALL
        }
    );
    assert!(caps.register_and_move);
    for kind in ReservationType::ALL {
        assert!(caps.supports(kind));
    }

    let refused = |r: Result<(), DiskError>| matches!(r, Err(DiskError::InvalidInput(_)));
    assert!(refused(block_on(pr.register(A, Some(0), KA, Some(true)))));
    assert!(refused(block_on(pr.register(A, None, KA, Some(true)))));
    let report = block_on(pr.report()).unwrap();
    assert_eq!(
        report.generation, 0,
        "a refused registration changes nothing"
    );
    assert!(report.registrants.is_empty());
    assert!(!report.persist_through_power_loss);

    block_on(pr.register(A, Some(0), KA, Some(false))).unwrap();
    block_on(pr.register(B, Some(0), KB, None)).unwrap();
    block_on(pr.reserve(A, KA, WE)).unwrap();
    // Refused for a registered initiator too, keeping its key.
    assert!(refused(block_on(pr.register(A, Some(KA), KC, Some(true)))));
    assert!(refused(block_on(
        pr.register_and_move(A, KA, KC, C, false, true)
    )));
    let report = block_on(pr.report()).unwrap();
    assert_eq!(report.generation, 2);
    assert_eq!((report.reservation, report.holder), (Some(WE), Some(A)));
    assert_eq!(report.key_of(A), Some(KA));
    assert_eq!(report.key_of(C), None);
    assert!(!report.persist_through_power_loss);

    // Power loss is modelled on the concrete type (it is not part of the
    // trait): everything is lost.
    let disk = ReservationsDisk::new(rig.inner.clone());
    block_on(disk.register(A, Some(0), KA, Some(false))).unwrap();
    block_on(disk.reserve(A, KA, EA)).unwrap();
    disk.power_loss();
    let report = block_on(disk.report()).unwrap();
    assert_eq!(report.generation, 0);
    assert_eq!(report.reservation, None);
    assert!(report.registrants.is_empty());
    assert!(!report.persist_through_power_loss);
}

#[test]
fn register_and_move() {
    let rig = Rig::new();
    let pr = rig.pr();
    rig.register(A, KA);
    rig.register(B, KB);
    // No reservation to move.
    assert_eq!(
        block_on(pr.register_and_move(A, KA, KC, C, false, false)),
        CONFLICT
    );
    block_on(pr.reserve(A, KA, WE)).unwrap();
    assert_eq!(
        block_on(pr.register_and_move(B, KB, KC, C, false, false)),
        CONFLICT,
        "not the holder"
    );
    assert_eq!(
        block_on(pr.register_and_move(C, KC, KC, B, false, false)),
        CONFLICT,
        "unregistered"
    );
    assert_eq!(
        block_on(pr.register_and_move(A, KB, KC, C, false, false)),
        CONFLICT,
        "wrong key"
    );
    assert!(matches!(
        block_on(pr.register_and_move(A, KA, 0, C, false, false)),
        Err(DiskError::InvalidInput(_))
    ));
    assert!(matches!(
        block_on(pr.register_and_move(A, KA, KC, A, false, false)),
        Err(DiskError::InvalidInput(_))
    ));

    // Move to the unregistered C, keeping A registered.
    let g = rig.generation();
    block_on(pr.register_and_move(A, KA, KC, C, false, false)).unwrap();
    let report = block_on(pr.report()).unwrap();
    assert_eq!(report.generation, g + 1);
    assert_eq!((report.reservation, report.holder), (Some(WE), Some(C)));
    assert_eq!(report.key_of(C), Some(KC));
    assert_eq!(report.key_of(A), Some(KA));
    assert_eq!(report.reservation_key(), Some(KC));
    assert_eq!(rig.write(A, 1), CONFLICT);
    assert_eq!(rig.write(C, 2), Ok(()));

    // Move on to the registered B (its key is replaced), unregistering C.
    block_on(pr.register_and_move(C, KC, 0xB2, B, true, false)).unwrap();
    let report = block_on(pr.report()).unwrap();
    assert_eq!((report.reservation, report.holder), (Some(WE), Some(B)));
    assert_eq!(report.key_of(B), Some(0xB2));
    assert_eq!(report.key_of(C), None);
    assert_eq!(rig.write(C, 3), CONFLICT);
    assert_eq!(rig.write(B, 4), Ok(()));
}

#[test]
fn report_contents() {
    let rig = Rig::new();
    let pr = rig.pr();
    let empty = block_on(pr.report()).unwrap();
    assert_eq!(empty.reservation, None);
    assert_eq!(empty.holder, None);
    assert_eq!(empty.reservation_key(), None);
    assert!(empty.registrants.is_empty());

    rig.register(B, KB);
    rig.register(A, KA);
    block_on(pr.reserve(A, KA, EA_RO)).unwrap();
    let report = block_on(pr.report()).unwrap();
    assert_eq!(report.generation, 2);
    assert_eq!(report.reservation, Some(EA_RO));
    assert_eq!(report.holder, Some(A));
    assert_eq!(report.reservation_key(), Some(KA));
    assert!(!report.persist_through_power_loss);
    let regs: Vec<_> = report
        .registrants
        .iter()
        .map(|r| (r.initiator, r.key, r.holds_reservation))
        .collect();
    assert_eq!(regs, [(B, KB, false), (A, KA, true)], "registration order");

    let details = rig.disk.describe().details;
    let reservation = &details.iter().find(|(k, _)| *k == "reservation").unwrap().1;
    assert!(reservation.contains("exclusive-access-registrants-only"));
    assert!(reservation.contains("0xa"));
}

#[test]
fn passthrough_and_range_checks() {
    let rig = Rig::new();
    assert_eq!(rig.disk.kind(), "prwrap");
    assert_eq!(rig.disk.sector_count(), rig.inner.sector_count());
    assert_eq!(rig.disk.sector_size(), 512);
    assert_eq!(rig.disk.unmap_behavior(), rig.inner.unmap_behavior());
    assert!(rig.disk.completes_inline(), "inline over an inline disk");
    let d = rig.disk.describe();
    assert_eq!(d.children.len(), 1);
    assert_eq!(d.children[0].1.kind, "ram");
    // Out of range: the inner disk's error, no panic.
    let r = [GpaRange::new(Gpa::new(0), 1024)];
    let sg = SgList::new(&rig.mem, &r, true).unwrap();
    assert_eq!(
        block_on(rig.disk.read(sg, SECTORS - 1, IoOptions::default())),
        Err(DiskError::IllegalBlock)
    );
    assert_eq!(
        block_on(rig.disk.unmap(SECTORS, 1, IoOptions::default())),
        Err(DiskError::IllegalBlock)
    );
    // Requests are admitted and leave: a PREEMPT AND ABORT afterwards does
    // not wait.
    rig.register(A, KA);
    rig.register(B, KB);
    block_on(rig.pr().reserve(A, KA, WE)).unwrap();
    let mut p = pin!(rig.pr().preempt(B, KB, KA, WE, true));
    assert_eq!(poll(p.as_mut()), Poll::Ready(Ok(())));
}

#[test]
fn futures_fit_the_inline_budget() {
    let inner = Disk::new(RamDisk::new(SECTORS * 512, 512).unwrap()).unwrap();
    let disk = ReservationsDisk::new(inner);
    let mem = RamGuestMemory::new(4096);
    let r = [GpaRange::new(Gpa::new(0), 4096)];
    let sg = SgList::new(&mem, &r, true).unwrap();
    let o = IoOptions::default();
    let sizes = [
        size_of_val(&DiskIo::read(&disk, sg, 0, o)),
        size_of_val(&DiskIo::write(&disk, sg, 0, o)),
        size_of_val(&DiskIo::flush(&disk, o)),
        size_of_val(&DiskIo::unmap(&disk, 0, 8, o)),
    ];
    assert!(sizes.iter().all(|&s| s <= IO_FUTURE_BYTES), "{sizes:?}");
}
