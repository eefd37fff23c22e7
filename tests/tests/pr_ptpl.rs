//! Persistent reservations kept in memory must not claim to persist
//! through power loss: PERSISTENT RESERVE IN REPORT CAPABILITIES reports
//! PTPL_C = 0 and PTPL_A = 0, and a registration that sets APTPL is refused
//! with ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST without changing
//! anything (SPC-4). Service actions that ignore APTPL still ignore it.

use parastor_core::{InitiatorId, ReservationsDisk};
use parastor_scsi::{DiskParams, ScsiDisk, ScsiResult, SenseDelivery};
use parastor_tests::buf::{Layout, TestBuf, block_on};
use parastor_tests::stacks::{disk, ram_disk};

const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;
/// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST.
const INVALID_PARAM: (u8, u8, u8) = (0x05, 0x26, 0x00);
const PR_IN: u8 = 0x5E;
const PR_OUT: u8 = 0x5F;
const A: InitiatorId = InitiatorId::new(0xA);
const B: InitiatorId = InitiatorId::new(0xB);
const KA: u64 = 0xAAAA;

fn scsi() -> ScsiDisk {
    let disk = disk(ReservationsDisk::new(ram_disk(64, 512)));
    ScsiDisk::new(disk, DiskParams::default())
}

/// PERSISTENT RESERVE OUT `service_action` (type Write Exclusive) with the
/// basic 24-byte parameter list.
fn pr_out(
    scsi: &ScsiDisk,
    who: InitiatorId,
    service_action: u8,
    key: u64,
    sa_key: u64,
    aptpl: bool,
) -> ScsiResult {
    let cdb = [PR_OUT, service_action, 0x01, 0, 0, 0, 0, 0, 24, 0];
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = u8::from(aptpl);
    let buf = TestBuf::from_data(&p, &Layout::contiguous());
    block_on(scsi.execute(&cdb, buf.sg(false), who, SenseDelivery::RequestSense))
}

/// PERSISTENT RESERVE IN `service_action`; the data returned.
fn pr_in(scsi: &ScsiDisk, service_action: u8) -> Vec<u8> {
    let cdb = [PR_IN, service_action, 0, 0, 0, 0, 0, 1, 0, 0];
    let buf = TestBuf::contiguous(256);
    let r = block_on(scsi.execute(&cdb, buf.sg(true), A, SenseDelivery::RequestSense));
    assert_eq!(
        r.status.get(),
        GOOD,
        "PR IN {service_action}: {:?}",
        r.sense
    );
    buf.contents()[..r.tx].to_vec()
}

fn sense(r: &ScsiResult) -> (u8, u8, u8) {
    assert_eq!(r.status.get(), CHECK_CONDITION);
    let s = r.sense.as_ref().expect("sense with CHECK CONDITION");
    (s.key.get(), s.additional.asc(), s.additional.ascq())
}

/// PRgeneration and the registered keys (READ KEYS).
fn keys(scsi: &ScsiDisk) -> (u32, Vec<u64>) {
    let d = pr_in(scsi, 0);
    let generation = u32::from_be_bytes(d[0..4].try_into().unwrap());
    let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
    let keys = d[8..8 + len]
        .chunks(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect();
    (generation, keys)
}

#[test]
fn report_capabilities_has_no_ptpl() {
    let scsi = scsi();
    let d = pr_in(&scsi, 2);
    assert_eq!(&d[..2], &[0, 8], "REPORT CAPABILITIES length");
    assert_eq!(d[2] & 0x01, 0, "PTPL_C must be 0: state is in memory only");
    assert_eq!(d[3] & 0x81, 0x80, "TMV set, PTPL_A clear");
}

#[test]
fn register_with_aptpl_is_refused_and_changes_nothing() {
    let scsi = scsi();
    // REGISTER and REGISTER AND IGNORE EXISTING KEY with APTPL = 1.
    for service_action in [0x00, 0x06] {
        let r = pr_out(&scsi, A, service_action, 0, KA, true);
        assert_eq!(sense(&r), INVALID_PARAM, "service action {service_action}");
    }
    assert_eq!(
        keys(&scsi),
        (0, vec![]),
        "nothing registered, no generation bump"
    );

    // With APTPL = 0 the same registration works, and PTPL_A stays 0.
    assert_eq!(pr_out(&scsi, A, 0x00, 0, KA, false).status.get(), GOOD);
    assert_eq!(keys(&scsi), (1, vec![KA]));
    assert_eq!(pr_in(&scsi, 2)[3] & 0x01, 0);

    // A registered initiator cannot turn APTPL on either.
    let r = pr_out(&scsi, A, 0x00, KA, KA + 1, true);
    assert_eq!(sense(&r), INVALID_PARAM);
    assert_eq!(keys(&scsi), (1, vec![KA]));

    // RESERVE ignores APTPL (SPC-4: valid only for the registrations).
    assert_eq!(pr_out(&scsi, A, 0x01, KA, 0, true).status.get(), GOOD);
    let d = pr_in(&scsi, 1);
    assert_eq!(
        u32::from_be_bytes(d[4..8].try_into().unwrap()),
        16,
        "A holds it"
    );
}

#[test]
fn register_and_move_with_aptpl_is_refused() {
    let scsi = scsi();
    assert_eq!(pr_out(&scsi, A, 0x00, 0, KA, false).status.get(), GOOD);
    assert_eq!(pr_out(&scsi, A, 0x01, KA, 0, false).status.get(), GOOD);
    let mut p = vec![0u8; 24 + 24];
    p[0..8].copy_from_slice(&KA.to_be_bytes());
    p[8..16].copy_from_slice(&0xBBBBu64.to_be_bytes());
    p[17] = 0x01; // APTPL
    p[20..24].copy_from_slice(&24u32.to_be_bytes());
    p[24] = 0x0F; // TransportID: no specific protocol
    p[32..48].copy_from_slice(&B.to_bytes());
    let len = p.len() as u8;
    let cdb = [PR_OUT, 0x07, 0x01, 0, 0, 0, 0, 0, len, 0];
    let buf = TestBuf::from_data(&p, &Layout::contiguous());
    let r = block_on(scsi.execute(&cdb, buf.sg(false), A, SenseDelivery::RequestSense));
    assert_eq!(sense(&r), INVALID_PARAM);
    assert_eq!(keys(&scsi), (1, vec![KA]), "B was not registered");
    // Without APTPL the move goes through.
    p[17] = 0;
    let buf = TestBuf::from_data(&p, &Layout::contiguous());
    let r = block_on(scsi.execute(&cdb, buf.sg(false), A, SenseDelivery::RequestSense));
    assert_eq!(r.status.get(), GOOD, "{:?}", r.sense);
    assert_eq!(keys(&scsi), (2, vec![KA, 0xBBBB]));
}
