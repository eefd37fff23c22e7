//! StorVSP channel tests at packet level: the emulated StorVSC of
//! `parastor-emulated` drives one controller over real rings, step by
//! step, with the StorVSP worker run by hand (or on a thread) in between —
//! negotiation states, sizes, SRB answers, queue depth, ring-full flow
//! control, malformed packets, poll mode and the worker's `run` loop.
//!
//! The driver checks every packet as its profile's real driver would, so a
//! completion of the wrong size fails these tests too. Tests that look at
//! sizes run under every profile.

use parastor_core::Gpa;
use parastor_core::ram::RamDisk;
use parastor_core::{DelayDisk, DelayHandle, Disk, GpaRange, GuestMemory, Timer};
use parastor_emulated::storvsc::{CONTROL_TRANSACTION_ID, Direction, Host, Reply};
use parastor_emulated::vm::RemoteHost;
use parastor_emulated::{GuestConfig, Profile, Storvsc, StorvscError, StorvspVm, VmConfig};
use parastor_hw::scsi::{ScsiOp, ScsiStatus, SenseData, SenseKey};
use parastor_hw::storvsp::{
    DataDirection, FcWwnPacket, NtStatus, Operation, PacketFlags, PacketHeader, ProtocolVersion,
    ScsiRequest, SrbFlags, SrbStatus, SrbStatusAndFlags, Version,
};
use parastor_scsi::{DiskParams, ScsiDisk, ScsiDvd};
use parastor_storvsp::{
    AttachError, Controller, ControllerConfig, DEFAULT_MAX_TRANSFER_BYTES,
    DEFAULT_POLL_MODE_QUEUE_DEPTH, NegotiationState, Phase, RUN_BUDGET, ScsiPath, StorvspChannel,
    StorvspError,
};
use parastor_tests::doubles::{LateDisk, TestDisk};
use parastor_vmbus::{GpaDirectRange, Notify, OutgoingKind, PacketKind};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use zerocopy::{FromZeros, IntoBytes};

use NegotiationState as S;

const RING: u64 = 16384;
/// Where test data buffers live (page aligned, in the VM's data area).
const DATA: u64 = 0x100000;
const SS: u32 = 512;

/// The driver with one bare StorVSP worker as its host, stepped by hand.
type Guest<'a> = Storvsc<'a, StorvspChannel<'a>>;

/// The driver whose host runs on another thread (or is polled by hand).
type Remote<'a> = Storvsc<'a, RemoteHost<'a>>;

fn vm_with(config: ControllerConfig, request_ring: u64, completion_ring: u64) -> StorvspVm {
    let vm = StorvspVm::new(
        Arc::new(Controller::new(config)),
        VmConfig {
            memory_bytes: 4 << 20,
            request_ring,
            completion_ring,
            channels: 2,
            ..VmConfig::default()
        },
    );
    let area = vm.data_area();
    assert!(area.gpa <= Gpa::new(DATA) && Gpa::new(DATA + 0x40000) <= area.gpa + area.len);
    vm
}

fn vm(config: ControllerConfig) -> StorvspVm {
    vm_with(config, RING, RING)
}

/// A driver of `profile` on `vm`'s primary channel, its worker stepped by
/// hand.
fn guest(vm: &StorvspVm, profile: Profile) -> Guest<'_> {
    Storvsc::new(
        GuestConfig::new(profile),
        vm.guest_channel(0).unwrap(),
        vm.primary_worker(0).unwrap(),
        vm.data_area(),
    )
}

fn attach(vm: &StorvspVm, lun: u8, sectors: u64) -> Arc<ScsiDisk> {
    let ram = RamDisk::new(sectors * u64::from(SS), SS).unwrap();
    let disk = Arc::new(ScsiDisk::new(
        Disk::new(ram).unwrap(),
        DiskParams::default(),
    ));
    vm.controller()
        .attach(ScsiPath::new(0, 0, lun), disk.clone())
        .unwrap();
    disk
}

/// Sends a control packet, runs the worker, returns the one reply.
fn call(g: &mut Guest<'_>, op: Operation, payload: &[u8]) -> Reply {
    let r = g.control(op, payload).unwrap();
    assert_eq!(r.kind, PacketKind::Completion);
    assert_eq!(r.transaction_id, CONTROL_TRANSACTION_ID);
    assert_eq!(r.operation(), Operation::COMPLETE_IO);
    assert!(g.recv(0).unwrap().is_none(), "exactly one reply");
    r
}

/// Runs the negotiation steps, each answered `SUCCESS`, from where the
/// controller stands until it reaches `until`, settling on `version`.
/// Returns the last step's reply.
fn negotiate_to(g: &mut Guest<'_>, version: Version, until: NegotiationState) -> Option<Reply> {
    let mut last = None;
    loop {
        let r = match g.host().controller().state() {
            s if s == until => return last,
            S::Begin => g.begin_initialization(),
            S::QueryVersion => g.query_protocol_version(version),
            S::QueryProperties => g.query_properties(),
            S::EndInitialization => g.end_initialization(),
            S::Ready => panic!("negotiated past {until:?}"),
        }
        .unwrap();
        assert_eq!(
            r.status(),
            NtStatus::SUCCESS,
            "{:?}",
            g.host().controller().state()
        );
        last = Some(r);
    }
}

fn negotiate(g: &mut Guest<'_>, version: Version) {
    negotiate_to(g, version, S::Ready);
}

/// A raw SRB (full size; the driver cuts it to its profile's size).
fn request(lun: u8, cdb: &[u8], data_in: DataDirection, len: u32) -> ScsiRequest {
    let mut r = ScsiRequest::new_zeroed();
    r.length = (0x34u16).into();
    r.lun = lun;
    r.cdb_length = cdb.len() as u8;
    r.payload[..cdb.len()].copy_from_slice(cdb);
    r.data_in = data_in;
    r.data_transfer_length = len.into();
    r.sense_info_ex_length = 0x14;
    r
}

/// Byte ranges of guest memory.
fn ranges(r: &[(u64, u32)]) -> Vec<GpaRange> {
    r.iter()
        .map(|&(gpa, len)| GpaRange::new(Gpa::new(gpa), u64::from(len)))
        .collect()
}

/// Queues and publishes `req` as `tag` with the buffer `r`.
fn send_srb(g: &mut Guest<'_>, tag: u16, req: &ScsiRequest, r: &[(u64, u32)]) {
    g.submit(tag, 0, req, &ranges(r)).unwrap();
    g.flush().unwrap();
}

/// Sends an SRB, runs the worker, returns the completion.
fn srb(g: &mut Guest<'_>, tag: u16, req: &ScsiRequest, r: &[(u64, u32)]) -> Reply {
    send_srb(g, tag, req, r);
    g.host_mut().process().unwrap();
    let reply = g.recv(0).unwrap().expect("a completion");
    assert_eq!(reply.transaction_id, u64::from(tag) + 1);
    reply
}

/// The SRB status word with status `s` and no flags.
fn srb_status(s: SrbStatus) -> SrbStatusAndFlags {
    SrbStatusAndFlags::new().with_status(s)
}

/// READ(10) of LBA 0 (one 512-byte block) on LUN 0 into [`DATA`], as
/// request `tag`; its completion.
fn read_first_block(g: &mut Guest<'_>, tag: u16) -> Reply {
    let req = request(0, &read10(0, 1), DataDirection::READ, 512);
    srb(g, tag, &req, &[(DATA, 512)])
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = ScsiOp::READ10.get();
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = ScsiOp::WRITE10.get();
    c
}

fn read_mem(vm: &StorvspVm, gpa: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    vm.memory().read_at(Gpa::new(gpa), &mut b).unwrap();
    b
}

/// Writes `bytes` (a raw StorVSP packet) in band on channel 0, whichever
/// host serves the guest.
fn raw<'a, H: Host<'a>>(
    g: &mut Storvsc<'a, H>,
    tid: u64,
    completion_requested: bool,
    bytes: &[u8],
) {
    g.channel_mut(0)
        .unwrap()
        .write_packet(
            OutgoingKind::InBand {
                completion_requested,
            },
            tid,
            bytes,
        )
        .unwrap();
}

/// A StorVSP packet of `op` with `payload`.
fn packet(op: Operation, payload: &[u8]) -> Vec<u8> {
    let mut b = PacketHeader::new(
        op,
        PacketFlags::new().with_request_completion(true),
        NtStatus::SUCCESS,
    )
    .as_bytes()
    .to_vec();
    b.extend_from_slice(payload);
    b
}

#[test]
fn negotiation_reports_properties_and_sizes_completions_per_request() {
    for profile in Profile::ALL {
        let vm = vm(ControllerConfig {
            max_sub_channels: 7,
            ..ControllerConfig::default()
        });
        let mut g = guest(&vm, profile);
        let r = negotiate_to(&mut g, Version::WIN8, S::QueryProperties).unwrap();
        // Before the version settled: what the guest sent.
        assert_eq!(r.payload_len(), profile.request_len(None), "{profile}");
        let r = negotiate_to(&mut g, Version::WIN8, S::EndInitialization).unwrap();
        assert_eq!(r.payload_len(), 0x34);
        let p = r.properties();
        assert_eq!(p.maximum_sub_channel_count.get(), 7);
        assert!(p.flags.multi_channel());
        assert_eq!(p.flags.into_bits().get(), 1);
        assert_eq!(p.max_transfer_bytes.get(), DEFAULT_MAX_TRANSFER_BYTES);
        assert_eq!(vm.controller().state(), S::EndInitialization);
        negotiate(&mut g, Version::WIN8);
        assert_eq!(vm.controller().version(), Some(Version::WIN8));
    }
}

#[test]
fn version_sequences_settle_on_an_accepted_version() {
    // Only exact Win6/Win7/Win8/Blue are accepted.
    for profile in Profile::ALL {
        for (offers, settled) in [
            (&[Version::WIN10, Version::BLUE][..], Version::BLUE),
            (
                &[Version::WIN10, Version::new(0x0601), Version::WIN8][..],
                Version::WIN8,
            ),
            (&[Version::new(0x0403), Version::WIN7][..], Version::WIN7),
            (&[Version::new(0x0100), Version::WIN6][..], Version::WIN6),
        ] {
            let vm = vm(ControllerConfig::default());
            let mut g = guest(&vm, profile);
            negotiate_to(&mut g, settled, S::QueryVersion);
            for &v in offers {
                let r = g.query_protocol_version(v).unwrap();
                let want = if v == settled {
                    NtStatus::SUCCESS
                } else {
                    NtStatus::REVISION_MISMATCH
                };
                assert_eq!(r.status(), want, "{profile}: version {v:#x}");
                // The reply carries the version asked for.
                assert_eq!(r.payload.protocol_version().major_minor, v);
            }
            assert_eq!(vm.controller().version(), Some(settled));
            assert_eq!(vm.controller().state(), S::QueryProperties);
            let r = call(&mut g, Operation::QUERY_PROPERTIES, &[]);
            // Properties for a pre-Win8 version: no multi-channel.
            if settled < Version::WIN8 {
                assert_eq!(r.properties().flags.into_bits().get(), 0);
            }
            assert_eq!(r.payload_len(), profile.request_len(Some(settled)));
        }
    }
}

#[test]
fn out_of_order_packets_get_invalid_device_state() {
    for profile in Profile::ALL {
        let vm = vm(ControllerConfig::default());
        attach(&vm, 0, 64);
        let mut g = guest(&vm, profile);
        let bad = |g: &mut Guest<'_>, op, payload: &[u8]| {
            let r = call(g, op, payload);
            assert_eq!(r.status(), NtStatus::INVALID_DEVICE_STATE, "{op:?}");
            assert_eq!(r.payload_len(), g.request_len());
        };
        bad(&mut g, Operation::QUERY_PROPERTIES, &[]);
        bad(&mut g, Operation::END_INITIALIZATION, &[]);
        bad(&mut g, Operation::EXECUTE_SRB, &[]);
        negotiate_to(&mut g, Version::WIN8, S::QueryVersion);
        bad(&mut g, Operation::BEGIN_INITIALIZATION, &[]);
        bad(&mut g, Operation::QUERY_PROPERTIES, &[]);
        bad(&mut g, Operation::RESET_BUS, &[]);
        assert_eq!(vm.controller().state(), S::QueryVersion);
        negotiate_to(&mut g, Version::WIN8, S::QueryProperties);
        bad(
            &mut g,
            Operation::QUERY_PROTOCOL_VERSION,
            ProtocolVersion::new(Version::WIN8).as_bytes(),
        );
        negotiate(&mut g, Version::WIN8);
        bad(&mut g, Operation::BEGIN_INITIALIZATION, &[]);
        bad(&mut g, Operation::FC_HBA_DATA, &[]);
        bad(&mut g, Operation::ENUMERATE_BUS, &[]);
        // Resets are no-ops once ready.
        for op in [
            Operation::RESET_LUN,
            Operation::RESET_ADAPTER,
            Operation::RESET_BUS,
        ] {
            let r = call(&mut g, op, &[]);
            assert_eq!(r.status(), NtStatus::SUCCESS);
            assert_eq!(r.payload_len(), 0x34);
        }
    }
}

#[test]
fn srb_write_then_read_over_several_ranges() {
    let vm = vm(ControllerConfig::default());
    let lun = attach(&vm, 0, 64);
    let mut g = guest(&vm, Profile::LinuxCurrent);
    negotiate(&mut g, Version::WIN8);

    let data: Vec<u8> = (0..2048u32).map(|i| (i * 7 + 3) as u8).collect();
    // Write 4 sectors from two non-adjacent ranges (one spans a page).
    vm.memory()
        .write_at(Gpa::new(DATA + 0x800), &data[..1536])
        .unwrap();
    vm.memory()
        .write_at(Gpa::new(DATA + 0x5000), &data[1536..])
        .unwrap();
    let req = request(0, &write10(8, 4), DataDirection::WRITE, 2048);
    let r = srb(
        &mut g,
        10,
        &req,
        &[(DATA + 0x800, 1536), (DATA + 0x5000, 512)],
    );
    assert_eq!(r.status(), NtStatus::SUCCESS);
    let c = r.srb();
    assert_eq!(c.srb_status, srb_status(SrbStatus::SUCCESS));
    assert_eq!(c.scsi_status, ScsiStatus::GOOD);
    assert_eq!(c.data_transfer_length.get(), 2048);
    assert_eq!(r.payload_len(), 0x34);

    // The disk has it.
    let local = parastor_core::LocalMemory::new(2048);
    let range = [GpaRange::new(Gpa::new(0), 2048)];
    futures::executor::block_on(lun.disk().read(
        parastor_core::SgList::local(&local, &range, true),
        8,
        parastor_core::IoOptions::default(),
    ))
    .unwrap();
    let mut on_disk = vec![0u8; 2048];
    local.read_at(Gpa::new(0), &mut on_disk).unwrap();
    assert_eq!(on_disk, data);

    // Read back into three ranges.
    let req = request(0, &read10(8, 4), DataDirection::READ, 2048);
    let back_ranges = [
        (DATA + 0x10000, 512),
        (DATA + 0x20100, 1024),
        (DATA + 0x30000, 512),
    ];
    let r = srb(&mut g, 11, &req, &back_ranges);
    assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));
    assert_eq!(r.srb().data_transfer_length.get(), 2048);
    let back: Vec<u8> = back_ranges
        .iter()
        .flat_map(|&(gpa, len)| read_mem(&vm, gpa, len as usize))
        .collect();
    assert_eq!(back, data);
}

#[test]
fn check_condition_carries_capped_autosense() {
    for profile in Profile::ALL {
        for version in [Version::WIN8, Version::WIN7] {
            let vm = vm(ControllerConfig::default());
            attach(&vm, 0, 64);
            let mut g = guest(&vm, profile);
            negotiate(&mut g, version);
            let len = g.request_len();
            // Past the end of a 64-sector disk.
            let req = request(0, &read10(100, 1), DataDirection::READ, 512);
            let r = srb(&mut g, 7, &req, &[(DATA, 512)]);
            assert_eq!(r.payload_len(), len, "{profile} {version:#x}");
            let c = r.srb();
            assert_eq!(
                c.srb_status,
                SrbStatusAndFlags::new()
                    .with_status(SrbStatus::ERROR)
                    .with_autosense_valid(true)
            );
            assert_eq!(c.scsi_status, ScsiStatus::CHECK_CONDITION);
            assert_eq!(r.status(), NtStatus::IO_DEVICE_ERROR);
            let n = usize::from(c.sense_info_ex_length);
            assert!(n <= 0x14 && n <= len.saturating_sub(0x10));
            let sense = SenseData::parse(&c.payload[..n]).unwrap();
            assert_eq!(sense.key, SenseKey::ILLEGAL_REQUEST);

            // A guest sense buffer of 8 bytes gets 8 bytes.
            let mut req = request(0, &read10(100, 1), DataDirection::READ, 512);
            req.sense_info_ex_length = 8;
            let c = srb(&mut g, 8, &req, &[(DATA, 512)]).srb();
            assert_eq!(c.sense_info_ex_length, 8);
            assert_eq!(c.payload[8..], [0; 12]);

            // Autosense disabled (a Windows 8 field): no sense, where the
            // field travels and the version knows it.
            if version >= Version::WIN8 {
                req.sense_info_ex_length = 0x14;
                req.srb_flags = SrbFlags::new().with_disable_autosense(true);
                let c = srb(&mut g, 10, &req, &[(DATA, 512)]).srb();
                assert_eq!(c.srb_status, srb_status(SrbStatus::ERROR));
                assert_eq!(c.sense_info_ex_length, 0);
                req.srb_flags = SrbFlags::new();
            }

            // No sense buffer: no autosense.
            req.sense_info_ex_length = 0;
            let c = srb(&mut g, 9, &req, &[(DATA, 512)]).srb();
            assert_eq!(c.srb_status, srb_status(SrbStatus::ERROR));
        }
    }
}

#[test]
fn missing_lun_answers() {
    let vm = vm(ControllerConfig::default());
    attach(&vm, 0, 64);
    let mut g = guest(&vm, Profile::LinuxCurrent);
    negotiate(&mut g, Version::WIN8);

    // TEST UNIT READY to LUN 5: INVALID_LUN, no sense.
    let req = request(
        5,
        &[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0],
        DataDirection::UNKNOWN,
        0,
    );
    let r = srb(&mut g, 1, &req, &[]);
    assert_eq!(r.srb().srb_status, srb_status(SrbStatus::INVALID_LUN));
    assert_eq!(r.srb().sense_info_ex_length, 0);
    assert_eq!(r.status(), NtStatus::DEVICE_DOES_NOT_EXIST);

    // Standard INQUIRY: "no logical unit".
    vm.memory().write_at(Gpa::new(DATA), &[0xEE; 96]).unwrap();
    let req = request(
        5,
        &[ScsiOp::INQUIRY.get(), 0, 0, 0, 96, 0],
        DataDirection::READ,
        96,
    );
    let r = srb(&mut g, 2, &req, &[(DATA, 96)]);
    assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));
    assert_eq!(r.srb().data_transfer_length.get(), 36);
    assert_eq!(read_mem(&vm, DATA, 1)[0], 0x7F);

    // VPD page: invalid CDB.
    let req = request(
        5,
        &[ScsiOp::INQUIRY.get(), 1, 0x80, 0, 96, 0],
        DataDirection::READ,
        96,
    );
    let r = srb(&mut g, 3, &req, &[(DATA, 96)]);
    assert_eq!(r.srb().scsi_status, ScsiStatus::CHECK_CONDITION);

    // Another target: same.
    let mut req = request(
        0,
        &[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0],
        DataDirection::UNKNOWN,
        0,
    );
    req.target_id = 1;
    let r = srb(&mut g, 4, &req, &[]);
    assert_eq!(r.srb().srb_status, srb_status(SrbStatus::INVALID_LUN));
}

#[test]
fn dvd_and_disk_luns_share_a_controller() {
    let vm = vm(ControllerConfig::default());
    let disk = attach(&vm, 0, 64);
    let media = RamDisk::new(16 * 2048, 2048).unwrap();
    let dvd = Arc::new(ScsiDvd::new(Some(Disk::new(media).unwrap())).unwrap());
    vm.controller()
        .attach(ScsiPath::new(0, 0, 1), dvd.clone())
        .unwrap();
    let c = vm.controller();
    assert!(c.lun(ScsiPath::new(0, 0, 0)).unwrap().as_disk().is_some());
    assert!(c.lun(ScsiPath::new(0, 0, 1)).unwrap().as_dvd().is_some());
    let mut g = guest(&vm, Profile::Windows);
    negotiate(&mut g, Version::WIN8);
    // INQUIRY: peripheral device type 0 (disk) and 5 (CD/DVD).
    for (tag, lun, kind) in [(1, 0u8, 0u8), (2, 1, 5)] {
        let req = request(
            lun,
            &[ScsiOp::INQUIRY.get(), 0, 0, 0, 36, 0],
            DataDirection::READ,
            36,
        );
        let r = srb(&mut g, tag, &req, &[(DATA, 36)]);
        assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));
        assert_eq!(read_mem(&vm, DATA, 1)[0] & 0x1F, kind);
    }
    // A DVD read of one 2048-byte block runs on the drive.
    let req = request(1, &read10(0, 1), DataDirection::READ, 2048);
    let r = srb(&mut g, 3, &req, &[(DATA, 2048)]);
    assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));
    assert_eq!(r.srb().data_transfer_length.get(), 2048);
    // Writes go to the disk only; the DVD refuses them.
    let req = request(1, &write10(0, 1), DataDirection::WRITE, 2048);
    let r = srb(&mut g, 4, &req, &[(DATA, 2048)]);
    assert_eq!(r.srb().scsi_status, ScsiStatus::CHECK_CONDITION);
    // Removing the DVD hands it back.
    let old = vm.controller().remove(ScsiPath::new(0, 0, 1)).unwrap();
    assert!(Arc::ptr_eq(old.as_dvd().unwrap(), &dvd));
    assert_eq!(disk.capacity(), 64);
}

#[test]
fn report_luns_comes_from_the_lun_map() {
    let vm = vm(ControllerConfig::default());
    attach(&vm, 3, 8);
    attach(&vm, 0, 8);
    attach(&vm, 1, 8);
    // Another target: not listed.
    let other = Arc::new(ScsiDisk::new(
        Disk::new(RamDisk::new(4096, SS).unwrap()).unwrap(),
        DiskParams::default(),
    ));
    vm.controller()
        .attach(ScsiPath::new(0, 1, 9), other.clone())
        .unwrap();
    assert_eq!(
        vm.controller().attach(ScsiPath::new(0, 1, 9), other),
        Err(AttachError::Occupied(ScsiPath::new(0, 1, 9)))
    );
    let mut g = guest(&vm, Profile::LinuxPre519);
    negotiate(&mut g, Version::WIN8);
    // Through a LUN that does not exist, too.
    assert_eq!(g.report_luns(0).unwrap(), [0, 1, 3]);
    assert_eq!(g.report_luns(7).unwrap(), [0, 1, 3]);
}

/// REPORT LUNS is parsed as a CDB: a short one is INVALID FIELD IN CDB,
/// the allocation length caps the data, and every SELECT REPORT value
/// gets the same list.
#[test]
fn report_luns_cdb_fields() {
    let vm = vm(ControllerConfig::default());
    attach(&vm, 0, 8);
    attach(&vm, 2, 8);
    let mut g = guest(&vm, Profile::LinuxCurrent);
    negotiate(&mut g, Version::WIN8);
    let mut cdb = [0u8; 12];
    cdb[0] = ScsiOp::REPORT_LUNS.get();
    cdb[6..10].copy_from_slice(&256u32.to_be_bytes());
    // Ten bytes of a twelve-byte command.
    let req = request(0, &cdb[..10], DataDirection::READ, 256);
    let c = srb(&mut g, 1, &req, &[(DATA, 256)]).srb();
    assert_eq!(c.scsi_status, ScsiStatus::CHECK_CONDITION);
    let n = usize::from(c.sense_info_ex_length);
    let sense = SenseData::parse(&c.payload[..n]).unwrap();
    assert_eq!(
        (sense.key, sense.additional.asc(), sense.additional.ascq()),
        (SenseKey::ILLEGAL_REQUEST, 0x24, 0)
    );
    // An allocation length of 12: the list header and the first LUN.
    cdb[6..10].copy_from_slice(&12u32.to_be_bytes());
    for select in [0u8, 1, 2, 0x10, 0xFF] {
        cdb[2] = select;
        let req = request(0, &cdb, DataDirection::READ, 256);
        let c = srb(&mut g, 2, &req, &[(DATA, 256)]).srb();
        assert_eq!(c.srb_status, srb_status(SrbStatus::SUCCESS), "{select:#x}");
        assert_eq!(c.data_transfer_length.get(), 12, "{select:#x}");
        let b = read_mem(&vm, DATA, 12);
        assert_eq!(b[..4], 16u32.to_be_bytes(), "two LUNs");
        assert_eq!(b[8..], [0, 0, 0, 0]);
    }
}

#[test]
fn short_or_invalid_buffers_are_invalid_requests() {
    let vm = vm(ControllerConfig::default());
    attach(&vm, 0, 64);
    let mut g = guest(&vm, Profile::LinuxCurrent);
    negotiate(&mut g, Version::WIN8);
    // Ranges shorter than the transfer.
    let req = request(0, &read10(0, 2), DataDirection::READ, 1024);
    let r = srb(&mut g, 1, &req, &[(DATA, 512)]);
    assert_eq!(r.srb().srb_status, srb_status(SrbStatus::INVALID_REQUEST));
    assert_eq!(r.srb().data_transfer_length.get(), 0);
    // CDB length over 16 and zero.
    for len in [17u8, 0] {
        let mut req = request(0, &read10(0, 1), DataDirection::READ, 512);
        req.cdb_length = len;
        let r = srb(&mut g, 2, &req, &[(DATA, 512)]);
        assert_eq!(r.srb().srb_status, srb_status(SrbStatus::INVALID_REQUEST));
    }
    // Still serving.
    let r = read_first_block(&mut g, 3);
    assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));
}

#[test]
fn hot_add_and_remove_send_enumerate_bus() {
    for profile in Profile::ALL {
        let vm = vm(ControllerConfig::default());
        let mut g = guest(&vm, profile);
        // Before Ready: nothing is announced.
        attach(&vm, 0, 8);
        g.host_mut().process().unwrap();
        assert!(g.recv(0).unwrap().is_none());
        negotiate(&mut g, Version::WIN8);
        g.host_mut().process().unwrap();
        assert!(g.recv(0).unwrap().is_none());

        attach(&vm, 1, 8);
        assert!(g.host_mut().process().unwrap());
        let r = g.recv(0).unwrap().unwrap();
        assert_eq!(r.kind, PacketKind::InBand);
        assert_eq!(r.transaction_id, 0);
        assert_eq!(r.operation(), Operation::ENUMERATE_BUS);
        // At the negotiated size: the host started it.
        assert_eq!(r.payload_len(), 0x34);
        assert_eq!(g.enumerations(), 1);
        assert!(g.recv(0).unwrap().is_none());
        assert_eq!(g.report_luns(0).unwrap(), [0, 1]);

        assert!(vm.controller().remove(ScsiPath::new(0, 0, 0)).is_some());
        assert!(vm.controller().remove(ScsiPath::new(0, 0, 0)).is_none());
        g.host_mut().process().unwrap();
        let r = g.recv(0).unwrap().unwrap();
        assert_eq!(r.operation(), Operation::ENUMERATE_BUS);
        assert_eq!(g.report_luns(0).unwrap(), [1]);
        let r = read_first_block(&mut g, 3);
        assert_eq!(r.srb().srb_status, srb_status(SrbStatus::INVALID_LUN));
    }
}

#[test]
fn win7_enumerate_bus_is_pre_win8_size_and_win6_gets_none() {
    for profile in [Profile::LinuxPre519, Profile::Windows] {
        let vm = vm(ControllerConfig::default());
        let mut g = guest(&vm, profile);
        negotiate(&mut g, Version::WIN7);
        attach(&vm, 0, 8);
        g.host_mut().process().unwrap();
        let r = g.recv(0).unwrap().unwrap();
        assert_eq!(r.operation(), Operation::ENUMERATE_BUS);
        assert_eq!(r.payload_len(), 0x24);

        let vm = StorvspVm::new(
            Arc::new(Controller::new(ControllerConfig::default())),
            VmConfig::default(),
        );
        let mut g = guest(&vm, profile);
        negotiate(&mut g, Version::WIN6);
        attach(&vm, 0, 8);
        g.host_mut().process().unwrap();
        assert!(g.recv(0).unwrap().is_none());
    }
}

#[test]
fn create_sub_channels_once_on_win8() {
    let config = ControllerConfig {
        max_sub_channels: 4,
        ..ControllerConfig::default()
    };
    let vm = vm(config);
    let mut g = guest(&vm, Profile::LinuxCurrent);
    negotiate(&mut g, Version::WIN8);
    // The bare worker host cannot open sub-channels: count the
    // controller's record, through raw control packets.
    let r = call(&mut g, Operation::CREATE_SUB_CHANNELS, &5u16.to_le_bytes());
    assert_eq!(r.status(), NtStatus::INVALID_PARAMETER);
    assert_eq!(vm.controller().sub_channels_requested(), None);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(vm.controller().poll_sub_channels(&mut cx).is_pending());
    let r = call(&mut g, Operation::CREATE_SUB_CHANNELS, &3u16.to_le_bytes());
    assert_eq!(r.status(), NtStatus::SUCCESS);
    assert_eq!(vm.controller().poll_sub_channels(&mut cx), Poll::Ready(3));
    assert_eq!(vm.controller().sub_channels_requested(), Some(3));
    let r = call(&mut g, Operation::CREATE_SUB_CHANNELS, &1u16.to_le_bytes());
    assert_eq!(r.status(), NtStatus::INVALID_DEVICE_STATE);
    assert_eq!(vm.controller().sub_channels_requested(), Some(3));

    // Before END_INITIALIZATION works too; pre-Win8 refuses.
    for (version, want) in [
        (Version::BLUE, NtStatus::SUCCESS),
        (Version::WIN7, NtStatus::INVALID_DEVICE_STATE),
    ] {
        let vm = StorvspVm::new(Arc::new(Controller::new(config)), VmConfig::default());
        let mut g = guest(&vm, Profile::Windows);
        negotiate_to(&mut g, version, S::EndInitialization);
        let r = call(&mut g, Operation::CREATE_SUB_CHANNELS, &2u16.to_le_bytes());
        assert_eq!(r.status(), want);
    }
}

#[test]
fn sub_channel_waits_for_ready_then_serves_io() {
    let vm = vm(ControllerConfig {
        max_sub_channels: 1,
        ..ControllerConfig::default()
    });
    attach(&vm, 0, 64);
    // The sub-channel's driver end and worker, stepped by hand.
    let mut sub: Guest<'_> = Storvsc::new(
        GuestConfig::new(Profile::LinuxCurrent),
        vm.guest_channel(1).unwrap(),
        vm.sub_worker(1).unwrap(),
        vm.data_area(),
    );
    let mut g = guest(&vm, Profile::LinuxCurrent);

    let req = request(0, &read10(0, 1), DataDirection::READ, 512);
    send_srb(&mut sub, 1, &req, &[(DATA, 512)]);
    assert!(
        !sub.host_mut().process().unwrap(),
        "not ready: nothing taken"
    );
    assert!(sub.recv(0).unwrap().is_none());

    negotiate(&mut g, Version::WIN8);
    assert!(sub.host_mut().process().unwrap());
    let r = sub.recv(0).unwrap().unwrap();
    assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));

    // Negotiation packets on a sub-channel are out of state.
    sub.send_control(0, Operation::BEGIN_INITIALIZATION, &[])
        .unwrap();
    sub.host_mut().process().unwrap();
    let r = sub.recv(0).unwrap().unwrap();
    assert_eq!(r.status(), NtStatus::INVALID_DEVICE_STATE);
}

#[test]
fn sub_channels_open_through_the_inline_host() {
    for profile in Profile::ALL {
        let vm = StorvspVm::new(
            Arc::new(Controller::new(ControllerConfig {
                max_sub_channels: 2,
                ..ControllerConfig::default()
            })),
            VmConfig::default(),
        );
        attach(&vm, 0, 64);
        let mut g = vm.guest(GuestConfig::new(profile).cpus(8)).unwrap();
        g.negotiate().unwrap();
        // Capped by the host's maximum.
        assert_eq!(g.channels(), 3);
        assert_eq!(vm.controller().sub_channels_requested(), Some(2));
        let req = g.scsi_request(0, &read10(0, 1), Direction::In, 512);
        for ch in 0..3 {
            g.submit(ch as u16, ch, &req, &[GpaRange::new(Gpa::new(DATA), 512)])
                .unwrap();
        }
        g.flush().unwrap();
        g.run_host().unwrap();
        let mut n = 0;
        g.reap(|tag, r| {
            assert_eq!(r.channel(), usize::from(tag));
            assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));
            n += 1;
        })
        .unwrap();
        assert_eq!(n, 3);
    }
}

/// Attaches a 64-sector disk whose every request waits on `timer`.
fn attach_slow(vm: &StorvspVm, lun: u8, timer: Arc<dyn Timer>) {
    let ram = RamDisk::new(64 * u64::from(SS), SS).unwrap();
    let delayed = DelayDisk::new(
        Disk::new(ram).unwrap(),
        DelayHandle::new(Duration::from_millis(1)),
        timer,
    );
    vm.controller()
        .attach(
            ScsiPath::new(0, 0, lun),
            Arc::new(ScsiDisk::new(
                Disk::new(delayed).unwrap(),
                DiskParams::default(),
            )),
        )
        .unwrap();
}

/// Every packet waiting on channel 0, in order.
/// Receives every completion waiting on channel 0, checks that each
/// succeeded, and returns their transaction ids in order.
fn drain_successes(g: &mut Guest<'_>) -> Vec<u64> {
    let mut tids: Vec<u64> = std::iter::from_fn(|| g.recv(0).unwrap())
        .map(|r| {
            assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));
            r.transaction_id
        })
        .collect();
    tids.sort();
    tids
}

#[test]
fn queue_depth_limits_requests_in_flight() {
    let vm = vm(ControllerConfig {
        io_queue_depth: 3,
        ..ControllerConfig::default()
    });
    let latch = Latch::default();
    attach_slow(&vm, 0, Arc::new(latch.clone()));
    let mut g = guest(&vm, Profile::LinuxCurrent);
    negotiate(&mut g, Version::WIN8);
    for tag in 0..5u16 {
        let req = request(0, &read10(tag.into(), 1), DataDirection::READ, 512);
        send_srb(
            &mut g,
            100 + tag,
            &req,
            &[(DATA + u64::from(tag) * 512, 512)],
        );
    }
    g.host_mut().process().unwrap();
    assert_eq!(g.host().in_flight(), 3);
    assert!(g.recv(0).unwrap().is_none());
    latch.release();
    g.host_mut().process().unwrap();
    assert_eq!(g.host().in_flight(), 0);
    assert_eq!(drain_successes(&mut g), [101, 102, 103, 104, 105]);
    assert_eq!(g.outstanding(), 0);
}

#[test]
fn full_completion_ring_stops_intake_without_losing_completions() {
    // A small ring: the outgoing side holds only a few completions.
    let vm = vm_with(ControllerConfig::default(), 4 * RING, 8192);
    attach(&vm, 0, 64);
    let mut g = guest(&vm, Profile::LinuxCurrent);
    negotiate(&mut g, Version::WIN8);
    let req = g.scsi_request(0, &read10(0, 1), Direction::In, 512);
    let buffer = [GpaRange::new(Gpa::new(DATA), 512)];
    let mut sent = 0u16;
    let mut got = Vec::new();
    for round in 0..20 {
        // Fill the incoming ring as far as it goes.
        while g.submit(sent, 0, &req, &buffer).is_ok() {
            sent += 1;
        }
        g.flush().unwrap();
        g.host_mut().process().unwrap();
        // The host stopped with packets left: the completion ring is full.
        if round == 0 {
            assert!(g.host().channel().reader().bytes_available().unwrap() > 0);
            assert_eq!(g.host().in_flight(), 0);
        }
        // Drain some completions; the guest's reads signal the host.
        for _ in 0..2 {
            if let Some(r) = g.recv(0).unwrap() {
                got.push(r.transaction_id);
            }
        }
    }
    // Drain everything.
    loop {
        g.host_mut().process().unwrap();
        match g.recv(0).unwrap() {
            Some(r) => got.push(r.transaction_id),
            None => break,
        }
    }
    assert_eq!(got, (1..=u64::from(sent)).collect::<Vec<_>>());
    assert!(
        vm.to_host(0).unwrap().count() > 0,
        "the guest signalled freed space"
    );
}

#[test]
fn malformed_packets_end_the_channel_with_an_error() {
    type Case = fn(&mut Guest<'_>);
    type Check = fn(&StorvspError) -> bool;
    let cases: [(Case, Check); 5] = [
        (
            |g| raw(g, 1, true, &[0xFF; 16]),
            |e| matches!(e, StorvspError::Packet { .. }),
        ),
        (
            |g| raw(g, 1, true, &[0; 4]),
            |e| matches!(e, StorvspError::Packet { .. }),
        ),
        (
            |g| raw(g, 1, false, &packet(Operation::RESET_BUS, &[])),
            |e| matches!(e, StorvspError::NotTransactional { transaction_id: 1 }),
        ),
        (
            |g| {
                g.channel_mut(0)
                    .unwrap()
                    .write_packet(
                        OutgoingKind::Completion,
                        1,
                        PacketHeader::new(
                            Operation::COMPLETE_IO,
                            PacketFlags::new(),
                            NtStatus::SUCCESS,
                        )
                        .as_bytes(),
                    )
                    .unwrap()
            },
            |e| matches!(e, StorvspError::UnexpectedPacket { .. }),
        ),
        (
            // A truncated SRB.
            |g| raw(g, 1, true, &packet(Operation::EXECUTE_SRB, &[0; 8])),
            |e| matches!(e, StorvspError::Packet { .. }),
        ),
    ];
    for (i, (write, check)) in cases.into_iter().enumerate() {
        let vm = vm(ControllerConfig::default());
        let mut g = guest(&vm, Profile::LinuxCurrent);
        negotiate(&mut g, Version::WIN8);
        write(&mut g);
        let e = g.host_mut().process().unwrap_err();
        assert!(check(&e), "case {i}: {e}");
        // The reservation taken for the bad packet was given back.
        assert_eq!(g.host().channel().writer().reserved(), 0);
        // The driver sees the same error when it waits.
        assert_eq!(
            g.control(Operation::RESET_BUS, &[]),
            Err(StorvscError::Host(e))
        );
    }
}

/// The negotiation packets a guest sends (Win8), in order.
fn win8_steps() -> [(Operation, Vec<u8>); 4] {
    [
        (Operation::BEGIN_INITIALIZATION, vec![]),
        (
            Operation::QUERY_PROTOCOL_VERSION,
            ProtocolVersion::new(Version::WIN8).as_bytes().to_vec(),
        ),
        (Operation::QUERY_PROPERTIES, vec![]),
        (Operation::END_INITIALIZATION, vec![]),
    ]
}

#[test]
fn run_serves_until_the_guest_breaks_the_protocol() {
    let vm = vm(ControllerConfig::default());
    attach(&vm, 0, 64);
    let mut host = vm.primary_worker(0).unwrap();
    let mut g = vm
        .remote_guest(GuestConfig::new(Profile::LinuxCurrent))
        .unwrap();
    for (op, payload) in win8_steps() {
        g.send_control(0, op, &payload).unwrap();
    }
    let req = request(0, &read10(0, 1), DataDirection::READ, 512);
    g.submit(4, 0, &req, &[GpaRange::new(Gpa::new(DATA), 512)])
        .unwrap();
    g.flush().unwrap();
    g.channel_mut(0)
        .unwrap()
        .write_packet(
            OutgoingKind::InBand {
                completion_requested: true,
            },
            6,
            &[0xAB; 12],
        )
        .unwrap();
    let e = futures::executor::block_on(host.run(vm.to_host(0).unwrap()));
    assert!(
        matches!(
            e,
            StorvspError::Packet {
                transaction_id: 6,
                ..
            }
        ),
        "{e:?}"
    );
    let tids: Vec<u64> = std::iter::from_fn(|| g.recv(0).unwrap())
        .map(|r| r.transaction_id)
        .collect();
    let c = CONTROL_TRANSACTION_ID;
    assert_eq!(tids, [c, c, c, c, 5]);
}

/// Most `poll_work` passes a worker may take to go idle after a round of
/// packets (every pass that asks for another must take a packet, write
/// one or finish a request, so a working worker needs at most about two
/// per packet).
const MAX_PASSES: usize = 256;

/// Where a worker stands: its read index in the incoming ring, its write
/// index in the outgoing ring and its requests in flight.
fn position(host: &StorvspChannel<'_>) -> (u32, u32, usize) {
    let c = host.channel();
    (
        c.reader().read_index(),
        c.writer().write_index(),
        host.in_flight(),
    )
}

/// Steps `host` with `poll_work` until it is idle or ended, and returns
/// whether it is still serving. Fails if a pass asks for another without
/// having taken a packet, written one or finished a request, or if the
/// worker is not idle after [`MAX_PASSES`] passes.
fn step_to_idle(host: &mut StorvspChannel<'_>, round: usize) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    for pass in 0..MAX_PASSES {
        let before = position(host);
        match host.poll_work(&mut cx) {
            Ok(true) => assert_ne!(
                position(host),
                before,
                "round {round}, pass {pass}: the worker asked for another pass after one \
                 that took no packet, wrote none and finished no request"
            ),
            Ok(false) => return true,
            Err(_) => return false,
        }
    }
    panic!("round {round}: the worker is not idle after {MAX_PASSES} passes");
}

/// Writes one well-formed request with random contents on `ch`: a known
/// operation (half of them `EXECUTE_SRB`) with a full Windows 8 payload.
/// SRBs get a common or random CDB, any direction and up to 8 KiB of data
/// in one GPA-direct range; the other operations a random payload (so a
/// version query may ask for any version). Every request asks for a
/// completion (one that does not ends the channel). Returns whether the
/// ring took it.
fn send_random_request(ch: &mut parastor_vmbus::Channel<'_>, rng: &mut fastrand::Rng) -> bool {
    let tid = rng.u64(..);
    if rng.bool() {
        let ops = [
            ScsiOp::READ10,
            ScsiOp::WRITE10,
            ScsiOp::TEST_UNIT_READY,
            ScsiOp::INQUIRY,
        ]
        .map(ScsiOp::get);
        let mut cdb = [0u8; 10];
        rng.fill(&mut cdb);
        cdb[0] = ops.get(rng.usize(..5)).copied().unwrap_or(cdb[0]);
        // Mostly in the 16-sector disk.
        cdb[2..6].copy_from_slice(&rng.u32(..20).to_be_bytes());
        let len = rng.u32(..8192);
        let mut req = request(rng.u8(..2), &cdb, DataDirection::new(rng.u8(..3)), len);
        req.srb_flags = SrbFlags::from_bits(rng.u32(..).into());
        let bytes = packet(Operation::EXECUTE_SRB, req.as_bytes());
        let pfns = [DATA >> 12, (DATA >> 12) + 1, (DATA >> 12) + 2];
        let range = [GpaDirectRange {
            byte_offset: rng.u32(..4096),
            byte_count: len.max(1),
            pfns: &pfns,
        }];
        ch.write_gpa_direct(tid, true, &range, &bytes).is_ok()
    } else {
        let op = Operation::KNOWN[rng.usize(..Operation::KNOWN.len())];
        let mut payload = [0u8; 0x34];
        rng.fill(&mut payload);
        let bytes = packet(op, &payload);
        ch.write_packet(
            OutgoingKind::InBand {
                completion_requested: true,
            },
            tid,
            &bytes,
        )
        .is_ok()
    }
}

/// Writes eight packets of random bytes (mostly with a valid operation
/// code, some GPA-direct) on `ch`, as far as the ring takes them; returns
/// how many it took.
fn send_random_bytes(ch: &mut parastor_vmbus::Channel<'_>, rng: &mut fastrand::Rng) -> usize {
    for sent in 0..8 {
        let len = rng.usize(..80);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if len >= 4 {
            // Mostly valid operations.
            bytes[..4].copy_from_slice(&rng.u32(..15).to_le_bytes());
        }
        let r = if rng.u8(..3) == 0 {
            let pfn = [(DATA >> 12) + rng.u64(..4)];
            let range = [GpaDirectRange {
                byte_offset: rng.u32(..4096),
                byte_count: rng.u32(..8192),
                pfns: &pfn,
            }];
            ch.write_gpa_direct(rng.u64(..), rng.u8(..8) != 0, &range, &bytes)
        } else {
            ch.write_packet(
                OutgoingKind::InBand {
                    completion_requested: rng.u8(..8) != 0,
                },
                rng.u64(..),
                &bytes,
            )
        };
        if r.is_err() {
            return sent;
        }
    }
    8
}

/// 300 rounds of packets on a fresh controller, three quarters of them
/// negotiated first, each ending with the worker stepped to idle. Replies
/// are then read and the worker stepped again whenever the guest's reads
/// signal it (they free the ring space it stopped for); a worker still
/// serving must then have read every packet and finished every request.
/// A third of the rounds send eight packets of random bytes (they usually
/// end the channel); a third sixteen well-formed requests with random
/// contents; a third 64 of them into a completion ring too small for their
/// completions, so the worker must stop for ring space and resume once the
/// guest reads.
fn random_packet_rounds() {
    let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
    let (mut ended, mut idle) = (0, 0);
    for round in 0..300 {
        let kind = round % 3;
        let vm = if kind == 2 {
            vm_with(ControllerConfig::default(), RING, 2 * 4096)
        } else {
            vm(ControllerConfig::default())
        };
        attach(&vm, 0, 16);
        let mut g = guest(&vm, Profile::LinuxCurrent);
        if rng.u8(..4) != 0 {
            negotiate(&mut g, Version::WIN8);
        }
        let ch = g.channel_mut(0).unwrap();
        let sent = match kind {
            0 => send_random_bytes(ch, &mut rng),
            _ => {
                let count = if kind == 1 { 16 } else { 64 };
                (0..count)
                    .take_while(|_| send_random_request(ch, &mut rng))
                    .count()
            }
        };
        // The worker runs now (as on the guest's signal for its first
        // packet), then again only when the guest signals it: a worker
        // that goes idle with packets unread gets no second chance.
        let to_host = vm.to_host(0).unwrap();
        to_host.take();
        let mut serving = step_to_idle(g.host_mut(), round);
        let mut drains = 0;
        loop {
            // Read as they come (the driver's own checks are not the
            // point here: the packets it would expect were not its own).
            let ch = g.channel_mut(0).unwrap();
            while let Ok(Some(_)) = ch.read_packet() {}
            // Reading replies signals the worker if it stopped for ring
            // space (and said how much it needs).
            if !serving || !to_host.take() {
                break;
            }
            drains += 1;
            assert!(
                drains <= sent,
                "round {round}: the worker still stops for ring space after {drains} \
                 drains of a round of {sent} packets"
            );
            serving = step_to_idle(g.host_mut(), round);
        }
        if serving {
            let host = g.host();
            let unread = host.channel().reader().bytes_available().unwrap();
            assert_eq!(
                (unread, host.in_flight()),
                (0, 0),
                "round {round}: the worker went idle with bytes of packets unread and \
                 requests in flight"
            );
            idle += 1;
        } else {
            ended += 1;
        }
    }
    // Both endings must have been seen, or the rounds test less than
    // they claim.
    assert!(
        ended >= 50 && idle >= 150,
        "{ended} rounds ended the channel and {idle} left it idle"
    );
}

#[test]
fn random_packets_never_panic_or_hang() {
    // On a thread of its own, so that a worker stuck inside a step (or a
    // negotiation that never finishes) fails the test by the time bound
    // instead of hanging it.
    let rounds = std::thread::spawn(random_packet_rounds);
    let start = std::time::Instant::now();
    while !rounds.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the random packet rounds did not finish within 60 s: a worker hangs"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    if let Err(panic) = rounds.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Serves `vm`'s primary channel with [`StorvspChannel::run`] on a thread
/// of its own. A test that panics does not join it (as a scoped thread
/// would, waiting forever on a worker whose guest is gone): it fails
/// instead of hanging, and the worker thread ends with the test process.
fn spawn_run(vm: &Arc<StorvspVm>) -> std::thread::JoinHandle<StorvspError> {
    let vm = vm.clone();
    std::thread::spawn(move || {
        let mut host = vm.primary_worker(0).unwrap();
        futures::executor::block_on(host.run(vm.to_host(0).unwrap()))
    })
}

/// The worker thread's result, if it ends within `limit` (else a panic,
/// not a hang).
fn join_within<T>(worker: std::thread::JoinHandle<T>, limit: Duration) -> T {
    let start = std::time::Instant::now();
    while !worker.is_finished() {
        assert!(start.elapsed() < limit, "the worker did not end");
        std::thread::sleep(Duration::from_millis(1));
    }
    worker.join().unwrap()
}

#[test]
fn run_on_a_thread_wakes_for_packets_and_hot_adds() {
    for profile in Profile::ALL {
        let vm = Arc::new(vm(ControllerConfig::default()));
        attach(&vm, 0, 64);
        let host = spawn_run(&vm);
        let mut g = vm.remote_guest(GuestConfig::new(profile)).unwrap();
        g.negotiate().unwrap();
        assert_eq!(g.version(), Some(Version::BLUE));
        for tag in 10..40u16 {
            let req = g.scsi_request(0, &read10(tag.into(), 1), Direction::In, 512);
            g.submit(tag, 0, &req, &[GpaRange::new(Gpa::new(DATA), 512)])
                .unwrap();
            g.flush().unwrap();
            let r = g.wait_tag(tag).unwrap();
            assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));
        }
        // A hot add wakes the idle worker, which tells the guest.
        attach(&vm, 1, 8);
        let r = wait_packet(&mut g);
        assert_eq!(r.operation(), Operation::ENUMERATE_BUS);
        // A broken packet ends the worker.
        raw(&mut g, 99, true, &[0xEE; 16]);
        let e = join_within(host, Duration::from_secs(5));
        assert!(
            matches!(
                e,
                StorvspError::Packet {
                    transaction_id: 99,
                    ..
                }
            ),
            "{e:?}"
        );
    }
}

/// Waits (bounded) for the next packet from a host on another thread.
fn wait_packet(g: &mut Remote<'_>) -> Reply {
    for _ in 0..5000 {
        if let Some(r) = g.recv(0).unwrap() {
            return r;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("no packet from the host within 5 s");
}

/// A timer whose sleeps all end, waking their tasks, once released: a
/// slow disk the test finishes by hand, even under [`StorvspChannel::run`].
#[derive(Clone, Default)]
struct Latch(Arc<LatchState>);

#[derive(Default)]
struct LatchState {
    open: AtomicBool,
    wakers: std::sync::Mutex<Vec<Waker>>,
}

impl Latch {
    fn release(&self) {
        self.0.open.store(true, Ordering::Release);
        for w in std::mem::take(&mut *self.0.wakers.lock().unwrap()) {
            w.wake();
        }
    }
}

impl Timer for Latch {
    fn sleep(&self, _: Duration) -> parastor_core::disk::BoxFuture<'static, ()> {
        let state = self.0.clone();
        Box::pin(std::future::poll_fn(move |cx| {
            if state.open.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            state.wakers.lock().unwrap().push(cx.waker().clone());
            // Re-check: the latch may have opened before the waker was
            // stored.
            if state.open.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }))
    }
}

#[test]
fn a_failed_channel_drains_its_requests_and_stays_ended() {
    let vm = vm(ControllerConfig::default());
    let latch = Latch::default();
    attach_slow(&vm, 0, Arc::new(latch.clone()));
    let mut g = guest(&vm, Profile::LinuxCurrent);
    negotiate(&mut g, Version::WIN8);
    let held = Arc::strong_count(&latch.0);
    let req = request(0, &read10(0, 1), DataDirection::READ, 512);
    send_srb(&mut g, 10, &req, &[(DATA, 512)]);
    g.host_mut().process().unwrap();
    assert_eq!(g.host().in_flight(), 1);
    let record = g.host().requests().next().unwrap();
    assert_eq!(record.transaction_id(), 11);
    assert_eq!(record.phase(), Phase::Submitted);
    assert_eq!(record.ranges(), [GpaRange::new(Gpa::new(DATA), 512)]);
    // The request's sleep holds the timer.
    assert_eq!(Arc::strong_count(&latch.0), held + 1);
    let reserved = g.host().channel().writer().reserved();
    assert!(reserved > 0);

    raw(&mut g, 12, true, &packet(Operation::EXECUTE_SRB, &[0; 8]));
    let e = g.host_mut().process().unwrap_err();
    assert!(
        matches!(
            e,
            StorvspError::Packet {
                transaction_id: 12,
                ..
            }
        ),
        "{e:?}"
    );
    // The request at the disk is drained, not dropped: its future (the
    // disk's hold on its buffer) and its ring space stay.
    assert_eq!(g.host().in_flight(), 1);
    assert!(!g.host().is_drained());
    assert_eq!(Arc::strong_count(&latch.0), held + 1);
    assert_eq!(g.host().channel().writer().reserved(), reserved);
    assert_eq!(g.host_mut().process(), Err(e));
    assert_eq!(g.host().in_flight(), 1);

    // It finishes: freed with its ring space, and no completion written.
    latch.release();
    assert_eq!(g.host_mut().process(), Err(e));
    assert_eq!(g.host().in_flight(), 0);
    assert!(g.host().is_drained());
    assert_eq!(Arc::strong_count(&latch.0), held);
    assert_eq!(g.host().channel().writer().reserved(), 0);
    assert!(g.recv(0).unwrap().is_none(), "no completion for it");

    // Ended: the same error, and the ring is not read any more.
    send_srb(&mut g, 13, &req, &[(DATA, 512)]);
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(g.host_mut().poll_work(&mut cx), Err(e));
    assert_eq!(g.host_mut().process(), Err(e));
    assert!(g.host().channel().reader().bytes_available().unwrap() > 0);
    assert!(g.recv(0).unwrap().is_none());
}

/// A timer that never fires and wakes its task every time it is polled: a
/// disk whose requests keep asking to be polled again.
struct Restless;

impl Timer for Restless {
    fn sleep(&self, _: Duration) -> parastor_core::disk::BoxFuture<'static, ()> {
        Box::pin(std::future::poll_fn(|cx| {
            cx.waker().wake_by_ref();
            Poll::Pending
        }))
    }
}

/// A waker that, when woken, signals `signal` (at most `limit` times):
/// with a [`Restless`] request in flight, every pass of a worker whose
/// incoming signal this is finds itself signalled.
struct Relay {
    signal: Arc<parastor_vmbus::Signal>,
    wakes: AtomicUsize,
    limit: usize,
    /// Set while signalling: the signal wakes the task (this waker)
    /// from inside `notify`, which must not notify again.
    relaying: AtomicBool,
}

impl std::task::Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let n = self.wakes.fetch_add(1, Ordering::AcqRel);
        if n < self.limit && !self.relaying.swap(true, Ordering::AcqRel) {
            self.signal.notify();
            self.relaying.store(false, Ordering::Release);
        }
    }
}

#[test]
fn run_yields_to_the_executor_when_it_never_runs_out_of_work() {
    let vm = vm(ControllerConfig::default());
    attach_slow(&vm, 0, Arc::new(Restless));
    let mut host = vm.primary_worker(0).unwrap();
    let incoming = Arc::new(parastor_vmbus::Signal::new());
    let limit = 100 * RUN_BUDGET;
    let relay = Arc::new(Relay {
        signal: incoming.clone(),
        wakes: Default::default(),
        limit,
        relaying: AtomicBool::new(false),
    });
    let waker = Waker::from(relay.clone());
    let mut cx = Context::from_waker(&waker);
    let mut run = Box::pin(host.run(&*incoming));
    let mut g = vm
        .remote_guest(GuestConfig::new(Profile::LinuxCurrent))
        .unwrap();
    for (op, payload) in win8_steps() {
        g.send_control(0, op, &payload).unwrap();
        assert!(run.as_mut().poll(&mut cx).is_pending());
        let r = g.recv(0).unwrap().unwrap();
        assert_eq!(r.status(), NtStatus::SUCCESS, "{op:?}");
    }
    // A request that never finishes and wakes the worker at every poll,
    // which (through the relay) signals it: a worker that is never out of
    // work, as under a guest flooding it with packets or signals.
    let req = request(0, &read10(0, 1), DataDirection::READ, 512);
    g.submit(10, 0, &req, &[GpaRange::new(Gpa::new(DATA), 512)])
        .unwrap();
    g.flush().unwrap();
    for _ in 0..3 {
        relay.wakes.store(0, Ordering::Release);
        assert!(run.as_mut().poll(&mut cx).is_pending());
        // The poll gave up after its budget (and woke itself to go on),
        // rather than running until the relay's limit.
        let wakes = relay.wakes.load(Ordering::Acquire);
        assert!(
            (1..=2 * RUN_BUDGET).contains(&wakes),
            "{wakes} wakes in one poll"
        );
    }
}

#[test]
fn reset_allows_a_new_negotiation() {
    let vm = vm(ControllerConfig {
        max_sub_channels: 2,
        ..ControllerConfig::default()
    });
    {
        let mut g = guest(&vm, Profile::LinuxCurrent);
        negotiate(&mut g, Version::WIN8);
        call(&mut g, Operation::CREATE_SUB_CHANNELS, &2u16.to_le_bytes());
    }
    vm.controller().reset();
    assert_eq!(vm.controller().state(), S::Begin);
    assert_eq!(vm.controller().version(), None);
    assert_eq!(vm.controller().sub_channels_requested(), None);
    // Fresh rings for the reopened channel.
    vm.reset_rings(1).unwrap();
    let mut g: Guest<'_> = Storvsc::new(
        GuestConfig::new(Profile::Windows),
        vm.guest_channel(1).unwrap(),
        vm.primary_worker(1).unwrap(),
        vm.data_area(),
    );
    negotiate(&mut g, Version::WIN7);
    assert_eq!(vm.controller().version(), Some(Version::WIN7));
}

/// The request (guest → host) ring's `interrupt_mask`, as the guest sees
/// it.
fn interrupt_mask(vm: &StorvspVm) -> u32 {
    let (incoming, _) = vm.rings(0).unwrap();
    let at = incoming.gpa + u64::from(parastor_hw::vmbus::RING_INTERRUPT_MASK_OFFSET);
    u32::from_le_bytes(read_mem(vm, at.get(), 4).try_into().unwrap())
}

#[test]
fn poll_mode_masks_guest_signals_while_io_is_outstanding() {
    let vm = vm(ControllerConfig {
        poll_mode_queue_depth: 2,
        ..ControllerConfig::default()
    });
    let latch = Latch::default();
    attach_slow(&vm, 0, Arc::new(latch.clone()));
    let mut g = guest(&vm, Profile::LinuxCurrent);
    negotiate(&mut g, Version::WIN8);
    assert!(!g.host().poll_mode());
    assert_eq!(interrupt_mask(&vm), 0);
    let signals = || vm.to_host(0).unwrap().count();
    let send_read = |g: &mut Guest<'_>, tag: u16| {
        let req = request(0, &read10(tag.into(), 1), DataDirection::READ, 512);
        send_srb(g, tag, &req, &[(DATA + u64::from(tag) * 512, 512)]);
    };

    // Below the threshold: the guest still signals each packet.
    let before = signals();
    send_read(&mut g, 1);
    assert_eq!(signals(), before + 1);
    g.host_mut().process().unwrap();
    assert_eq!(g.host().in_flight(), 1);
    assert!(!g.host().poll_mode());
    assert_eq!(interrupt_mask(&vm), 0);

    // At the threshold: masked.
    send_read(&mut g, 2);
    g.host_mut().process().unwrap();
    assert_eq!(g.host().in_flight(), 2);
    assert!(g.host().poll_mode());
    assert_eq!(interrupt_mask(&vm), 1);

    // A packet written while masked: no signal, yet the next pass reads it.
    let before = signals();
    send_read(&mut g, 3);
    assert_eq!(signals(), before, "masked: the guest did not signal");
    g.host_mut().process().unwrap();
    assert_eq!(g.host().in_flight(), 3);
    assert_eq!(interrupt_mask(&vm), 1);
    assert!(g.recv(0).unwrap().is_none());

    // The disk finishes: below the threshold again, unmasked.
    latch.release();
    g.host_mut().process().unwrap();
    assert_eq!(g.host().in_flight(), 0);
    assert!(!g.host().poll_mode());
    assert_eq!(interrupt_mask(&vm), 0);
    assert_eq!(drain_successes(&mut g), [2, 3, 4]);
    // Unmasked: the guest signals again.
    let before = signals();
    send_read(&mut g, 4);
    assert_eq!(signals(), before + 1);
}

#[test]
fn poll_mode_threshold_defaults_to_one_and_can_be_disabled() {
    assert_eq!(
        ControllerConfig::default().poll_mode_queue_depth,
        DEFAULT_POLL_MODE_QUEUE_DEPTH
    );
    for (depth, expect_masked) in [
        (DEFAULT_POLL_MODE_QUEUE_DEPTH, true),
        (0, true),
        (usize::MAX, false),
    ] {
        let vm = vm(ControllerConfig {
            poll_mode_queue_depth: depth,
            ..ControllerConfig::default()
        });
        let latch = Latch::default();
        attach_slow(&vm, 0, Arc::new(latch.clone()));
        let mut g = guest(&vm, Profile::LinuxCurrent);
        negotiate(&mut g, Version::WIN8);
        // Idle: never masked, whatever the threshold (0 counts as 1).
        assert_eq!(interrupt_mask(&vm), 0, "depth {depth}");
        let req = request(0, &read10(0, 1), DataDirection::READ, 512);
        send_srb(&mut g, 9, &req, &[(DATA, 512)]);
        g.host_mut().process().unwrap();
        assert_eq!(g.host().in_flight(), 1);
        assert_eq!(g.host().poll_mode(), expect_masked, "depth {depth}");
        assert_eq!(interrupt_mask(&vm), u32::from(expect_masked));
        latch.release();
        g.host_mut().process().unwrap();
        assert_eq!(interrupt_mask(&vm), 0);
        assert_eq!(g.recv(0).unwrap().unwrap().transaction_id, 10);
    }
}

/// A waker that counts its wakes.
#[derive(Default)]
struct WakeCount(AtomicUsize);

impl std::task::Wake for WakeCount {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

impl WakeCount {
    fn take(&self) -> usize {
        self.0.swap(0, Ordering::AcqRel)
    }
}

#[test]
fn run_in_poll_mode_reads_packets_the_guest_did_not_signal() {
    // The worker's `run` future is polled here, by hand, so "asleep" is
    // exact: `Pending` returned and no wake since.
    let vm = vm(ControllerConfig::default());
    let latch = Latch::default();
    attach_slow(&vm, 0, Arc::new(latch.clone()));
    attach(&vm, 1, 64);
    let mut host = vm.primary_worker(0).unwrap();
    let wakes = Arc::new(WakeCount::default());
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let to_host = vm.to_host(0).unwrap();
    let mut run = Box::pin(host.run(to_host));
    let mut g = vm
        .remote_guest(GuestConfig::new(Profile::LinuxCurrent))
        .unwrap();
    for (op, payload) in win8_steps() {
        g.send_control(0, op, &payload).unwrap();
        assert!(run.as_mut().poll(&mut cx).is_pending());
        assert_eq!(g.recv(0).unwrap().unwrap().status(), NtStatus::SUCCESS);
    }
    assert_eq!(interrupt_mask(&vm), 0);
    let submit = |g: &mut Remote<'_>, tag: u16, lun: u8, gpa: u64| {
        let req = request(lun, &read10(0, 1), DataDirection::READ, 512);
        g.submit(tag, 0, &req, &[GpaRange::new(Gpa::new(gpa), 512)])
            .unwrap();
        g.flush().unwrap();
    };

    // A request to the slow disk: outstanding, so the worker masks and
    // goes to sleep.
    submit(&mut g, 10, 0, DATA);
    assert!(run.as_mut().poll(&mut cx).is_pending());
    assert_eq!(interrupt_mask(&vm), 1);
    wakes.take();

    // A request to the fast disk while masked: the guest does not signal
    // it, and nothing wakes the sleeping worker.
    let signals = to_host.count();
    submit(&mut g, 11, 1, DATA + 4096);
    assert_eq!(to_host.count(), signals);
    assert_eq!(wakes.take(), 0);
    assert!(g.recv(0).unwrap().is_none());

    // The completion wakes the worker, which polls the ring and finds the
    // unsignalled packet; then in-flight drops to 0 and it unmasks.
    latch.release();
    assert!(wakes.take() > 0);
    assert!(run.as_mut().poll(&mut cx).is_pending());
    let mut tids = [g.recv(0).unwrap().unwrap(), g.recv(0).unwrap().unwrap()].map(|r| {
        assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));
        r.transaction_id
    });
    tids.sort();
    assert_eq!(tids, [11, 12]);
    assert_eq!(interrupt_mask(&vm), 0);

    // Unmasked: signalled packets are served as before.
    wakes.take();
    let signals = to_host.count();
    submit(&mut g, 12, 1, DATA + 4096);
    assert_eq!(to_host.count(), signals + 1);
    assert!(wakes.take() > 0);
    assert!(run.as_mut().poll(&mut cx).is_pending());
    assert_eq!(g.recv(0).unwrap().unwrap().transaction_id, 13);

    raw(&mut g, 99, true, &[0xEE; 16]);
    match run.as_mut().poll(&mut cx) {
        Poll::Ready(StorvspError::Packet {
            transaction_id: 99, ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn transfers_over_max_transfer_bytes_are_invalid_requests() {
    let vm = vm(ControllerConfig {
        max_transfer_bytes: 4096,
        ..ControllerConfig::default()
    });
    attach(&vm, 0, 64);
    let mut g = guest(&vm, Profile::LinuxCurrent);
    let r = negotiate_to(&mut g, Version::WIN8, S::EndInitialization).unwrap();
    assert_eq!(r.properties().max_transfer_bytes.get(), 4096);
    negotiate(&mut g, Version::WIN8);

    // Over the limit: refused without touching the disk.
    vm.memory().write_at(Gpa::new(DATA), &[0xAA; 8192]).unwrap();
    let req = request(0, &write10(0, 16), DataDirection::WRITE, 8192);
    let r = srb(&mut g, 10, &req, &[(DATA, 8192)]);
    assert_eq!(r.srb().srb_status, srb_status(SrbStatus::INVALID_REQUEST));
    assert_eq!(r.srb().data_transfer_length.get(), 0);
    assert_ne!(r.status(), NtStatus::SUCCESS);
    // One byte over, with no buffer checks reached.
    let req = request(0, &read10(0, 9), DataDirection::READ, 4097);
    let r = srb(&mut g, 11, &req, &[(DATA, 8192)]);
    assert_eq!(r.srb().srb_status, srb_status(SrbStatus::INVALID_REQUEST));

    // Exactly the limit is served; the refused write left no trace.
    vm.memory().write_at(Gpa::new(DATA), &[0x55; 4096]).unwrap();
    let req = request(0, &read10(0, 8), DataDirection::READ, 4096);
    let r = srb(&mut g, 12, &req, &[(DATA, 4096)]);
    assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));
    assert_eq!(r.srb().data_transfer_length.get(), 4096);
    assert!(read_mem(&vm, DATA, 4096).iter().all(|&b| b == 0));
}

#[test]
fn fc_hba_data_is_refused_without_ending_the_channel() {
    let full = [0u8; std::mem::size_of::<FcWwnPacket>()];
    for profile in Profile::ALL {
        let vm = vm(ControllerConfig {
            max_sub_channels: 1,
            ..ControllerConfig::default()
        });
        attach(&vm, 0, 64);
        let mut g = guest(&vm, profile);
        // Before negotiation, with a full or a short (even empty) payload:
        // the state does not move.
        for payload in [&full[..], &full[..4], &[]] {
            let r = call(&mut g, Operation::FC_HBA_DATA, payload);
            assert_eq!(r.status(), NtStatus::INVALID_DEVICE_STATE);
            assert_eq!(r.payload_len(), profile.request_len(None));
            assert_eq!(vm.controller().state(), S::Begin);
        }
        // A bare header (Linux sends none such, but a guest may).
        raw(&mut g, 3, true, &packet(Operation::FC_HBA_DATA, &[]));
        g.host_mut().process().unwrap();
        let p = g.channel_mut(0).unwrap().read_packet().unwrap().unwrap();
        assert_eq!(p.transaction_id, 3);
        negotiate_to(&mut g, Version::WIN8, S::QueryVersion);
        let r = call(&mut g, Operation::FC_HBA_DATA, &full);
        assert_eq!(r.status(), NtStatus::INVALID_DEVICE_STATE);
        assert_eq!(vm.controller().state(), S::QueryVersion);
        // Negotiate from QueryVersion on.
        negotiate(&mut g, Version::WIN8);
        // Ready: still refused, answered at the request's size.
        for payload in [&full[..], &[]] {
            let r = call(&mut g, Operation::FC_HBA_DATA, payload);
            assert_eq!(r.status(), NtStatus::INVALID_DEVICE_STATE);
            assert_eq!(r.payload_len(), 0x34);
        }
        assert_eq!(vm.controller().state(), S::Ready);
        // The channel goes on serving I/O.
        let r = read_first_block(&mut g, 10);
        assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));
    }
    // A sub-channel answers the same.
    let vm = vm(ControllerConfig {
        max_sub_channels: 1,
        ..ControllerConfig::default()
    });
    attach(&vm, 0, 64);
    let mut g = guest(&vm, Profile::LinuxCurrent);
    negotiate(&mut g, Version::WIN8);
    let mut sub: Guest<'_> = Storvsc::new(
        GuestConfig::new(Profile::LinuxCurrent),
        vm.guest_channel(1).unwrap(),
        vm.sub_worker(1).unwrap(),
        vm.data_area(),
    );
    let r = call(&mut sub, Operation::FC_HBA_DATA, &[]);
    assert_eq!(r.status(), NtStatus::INVALID_DEVICE_STATE);
    let r = read_first_block(&mut sub, 12);
    assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));
}

/// A detached LUN is not kept open by a channel that addressed it last:
/// the LUN change drops the channel's cached reference even when the guest
/// sends nothing more.
#[test]
fn detached_lun_is_released_by_idle_channels() {
    let vm = vm(ControllerConfig::default());
    let disk = attach(&vm, 0, 64);
    let mut g = guest(&vm, Profile::LinuxCurrent);
    negotiate(&mut g, Version::WIN8);
    let r = read_first_block(&mut g, 1);
    assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));
    let held = Arc::strong_count(&disk);
    assert!(vm.controller().remove(ScsiPath::new(0, 0, 0)).is_some());
    g.host_mut().process().unwrap();
    // Only the test's handle is left.
    assert!(held > 1);
    assert_eq!(Arc::strong_count(&disk), 1);
}

/// The sense a completion carries (autosense) is not reported again by
/// REQUEST SENSE, on every path a command takes (a disk run in place, the
/// DVD drive, a disk that waits); sense a completion cannot carry
/// (autosense disabled on Windows 8 and later, no sense buffer) is left
/// for REQUEST SENSE, once.
#[test]
fn autosense_is_not_returned_again_by_request_sense() {
    const LBA_RANGE: (u8, u8, u8) = (SenseKey::ILLEGAL_REQUEST.get(), 0x21, 0);
    const NO_SENSE: (u8, u8, u8) = (0, 0, 0);
    let error = srb_status(SrbStatus::ERROR);
    for profile in Profile::ALL {
        for version in [Version::WIN8, Version::WIN7] {
            let vm = vm(ControllerConfig::default());
            attach(&vm, 0, 64);
            let media = RamDisk::new(16 * 2048, 2048).unwrap();
            let dvd = ScsiDvd::new(Some(Disk::new(media).unwrap())).unwrap();
            vm.controller()
                .attach(ScsiPath::new(0, 0, 1), Arc::new(dvd))
                .unwrap();
            // Its commands run as futures: it does not complete inline.
            let open = Latch::default();
            open.release();
            attach_slow(&vm, 2, Arc::new(open));
            let mut g = guest(&vm, profile);
            negotiate(&mut g, version);
            for (lun, block) in [(0u8, 512u32), (1, 2048), (2, 512)] {
                let what = format!("{profile} {version:#x}, LUN {lun}");
                let request_sense = |g: &mut Guest<'_>| {
                    let rs = request(
                        lun,
                        &[ScsiOp::REQUEST_SENSE.get(), 0, 0, 0, 18, 0],
                        DataDirection::READ,
                        18,
                    );
                    vm.memory().write_at(Gpa::new(DATA), &[0xEE; 18]).unwrap();
                    let c = srb(g, 1, &rs, &[(DATA, 18)]).srb();
                    assert_eq!(c.srb_status.status(), SrbStatus::SUCCESS, "{what}");
                    assert_eq!(c.data_transfer_length.get(), 18, "{what}");
                    let s = SenseData::parse(&read_mem(&vm, DATA, 18)).unwrap();
                    (s.key.get(), s.additional.asc(), s.additional.ascq())
                };
                let fail = request(lun, &read10(100, 1), DataDirection::READ, block);

                // Autosense: the completion carries the sense, REQUEST
                // SENSE then has nothing.
                let c = srb(&mut g, 1, &fail, &[(DATA, block)]).srb();
                assert_eq!(c.scsi_status, ScsiStatus::CHECK_CONDITION, "{what}");
                assert_eq!(c.srb_status, error.with_autosense_valid(true), "{what}");
                let n = usize::from(c.sense_info_ex_length);
                let s = SenseData::parse(&c.payload[..n]).unwrap();
                let got = (s.key.get(), s.additional.asc(), s.additional.ascq());
                assert_eq!(got, LBA_RANGE, "{what}");
                assert_eq!(request_sense(&mut g), NO_SENSE, "{what}");

                // Autosense disabled: honoured from Windows 8 on (the
                // sense waits for REQUEST SENSE), ignored before.
                let mut disabled = fail;
                disabled.srb_flags = SrbFlags::new().with_disable_autosense(true);
                let c = srb(&mut g, 1, &disabled, &[(DATA, block)]).srb();
                let delivered = c.srb_status.autosense_valid();
                assert_eq!(delivered, version < Version::WIN8, "{what}");
                let pending = if delivered { NO_SENSE } else { LBA_RANGE };
                assert_eq!(request_sense(&mut g), pending, "{what}");
                assert_eq!(request_sense(&mut g), NO_SENSE, "{what}");

                // No sense buffer: nothing delivered, REQUEST SENSE
                // reports it once.
                let mut no_buffer = fail;
                no_buffer.sense_info_ex_length = 0;
                let c = srb(&mut g, 1, &no_buffer, &[(DATA, block)]).srb();
                assert_eq!(c.srb_status, error, "{what}");
                assert_eq!(request_sense(&mut g), LBA_RANGE, "{what}");
                assert_eq!(request_sense(&mut g), NO_SENSE, "{what}");

                // A delivered failure replaces, and so clears, a pending
                // one.
                srb(&mut g, 1, &no_buffer, &[(DATA, block)]);
                let c = srb(&mut g, 1, &fail, &[(DATA, block)]).srb();
                assert!(c.srb_status.autosense_valid(), "{what}");
                assert_eq!(request_sense(&mut g), NO_SENSE, "{what}");
            }
        }
    }
}

/// A disk attached to a controller that carries at most 64 KiB per
/// request advertises 64 KiB (in its own blocks) as its MAXIMUM TRANSFER
/// LENGTH, and refuses a READ above it that the controller let through
/// (its data buffer within the limit) with INVALID FIELD IN CDB. A LUN
/// whose block is larger than the limit is not attached.
#[test]
fn disks_advertise_the_controller_transfer_limit() {
    const LIMIT: u32 = 64 << 10;
    let vm = vm(ControllerConfig {
        max_transfer_bytes: LIMIT,
        ..ControllerConfig::default()
    });
    attach(&vm, 0, 1024);
    let disk4k = Arc::new(ScsiDisk::new(
        Disk::new(RamDisk::new(64 * 4096, 4096).unwrap()).unwrap(),
        DiskParams::default(),
    ));
    vm.controller()
        .attach(ScsiPath::new(0, 0, 1), disk4k.clone())
        .unwrap();
    assert_eq!(disk4k.max_transfer_bytes(), LIMIT);
    let mut g = guest(&vm, Profile::LinuxCurrent);
    let r = negotiate_to(&mut g, Version::WIN8, S::EndInitialization).unwrap();
    assert_eq!(r.properties().max_transfer_bytes.get(), LIMIT);
    negotiate(&mut g, Version::WIN8);
    for (lun, ss) in [(0u8, SS), (1, 4096)] {
        let inquiry = request(
            lun,
            &[ScsiOp::INQUIRY.get(), 1, 0xB0, 0, 64, 0],
            DataDirection::READ,
            64,
        );
        let r = srb(&mut g, 1, &inquiry, &[(DATA, 64)]);
        assert_eq!(r.srb().srb_status.status(), SrbStatus::SUCCESS);
        let b0 = read_mem(&vm, DATA, 64);
        assert_eq!(b0[1], 0xB0);
        let max = u32::from_be_bytes(b0[8..12].try_into().unwrap());
        assert_eq!(max, LIMIT / ss, "LUN {lun}");
        assert_eq!(&b0[12..16], &[0; 4], "no OPTIMAL TRANSFER LENGTH");
        // The largest READ is served.
        let blocks = (LIMIT / ss) as u16;
        let req = request(lun, &read10(0, blocks), DataDirection::READ, LIMIT);
        let r = srb(&mut g, 1, &req, &[(DATA, LIMIT)]);
        assert_eq!(r.srb().srb_status.status(), SrbStatus::SUCCESS, "LUN {lun}");
        assert_eq!(r.srb().data_transfer_length.get(), LIMIT);
        // One block more, with a buffer the controller accepts: the disk
        // refuses it.
        let req = request(lun, &read10(0, blocks + 1), DataDirection::READ, LIMIT);
        let c = srb(&mut g, 1, &req, &[(DATA, LIMIT)]).srb();
        assert_eq!(c.scsi_status, ScsiStatus::CHECK_CONDITION, "LUN {lun}");
        let s = SenseData::parse(&c.payload[..usize::from(c.sense_info_ex_length)]).unwrap();
        assert_eq!(
            (s.key, s.additional.asc(), s.additional.ascq()),
            (SenseKey::ILLEGAL_REQUEST, 0x24, 0)
        );
    }

    // A LUN whose block does not fit in one request is refused, and a
    // refused attach leaves the LUN's own limit alone.
    let small = Controller::new(ControllerConfig {
        max_transfer_bytes: 2048,
        ..ControllerConfig::default()
    });
    let big_blocks = Arc::new(ScsiDisk::new(
        Disk::new(RamDisk::new(64 * 4096, 4096).unwrap()).unwrap(),
        DiskParams::default(),
    ));
    let e = small
        .attach(ScsiPath::new(0, 0, 3), big_blocks.clone())
        .unwrap_err();
    assert_eq!(
        e,
        AttachError::TransferLimit {
            path: ScsiPath::new(0, 0, 3),
            block_size: 4096,
            max_transfer_bytes: 2048,
        }
    );
    assert!(
        e.to_string().contains("4096-byte blocks is more than"),
        "{e}"
    );
    assert!(small.lun(ScsiPath::new(0, 0, 3)).is_none());
    assert_eq!(big_blocks.max_transfer_bytes(), 8 << 20);
    // The DVD's 2048-byte blocks just fit.
    let dvd = ScsiDvd::new(None).unwrap();
    small.attach(ScsiPath::new(0, 0, 4), Arc::new(dvd)).unwrap();
    // An occupied address refuses the LUN before limiting it.
    let other = Arc::new(ScsiDisk::new(
        Disk::new(RamDisk::new(64 * 512, 512).unwrap()).unwrap(),
        DiskParams::default(),
    ));
    assert_eq!(
        small.attach(ScsiPath::new(0, 0, 4), other.clone()),
        Err(AttachError::Occupied(ScsiPath::new(0, 0, 4)))
    );
    assert_eq!(other.max_transfer_bytes(), 8 << 20);
    small.attach(ScsiPath::new(0, 0, 5), other.clone()).unwrap();
    assert_eq!(other.max_transfer_bytes(), 2048);
}

/// Attaches `disk` as a SCSI disk at `lun`.
fn attach_disk(vm: &StorvspVm, lun: u8, disk: Disk) {
    vm.controller()
        .attach(
            ScsiPath::new(0, 0, lun),
            Arc::new(ScsiDisk::new(disk, DiskParams::default())),
        )
        .unwrap();
}

/// `len` bytes of guest memory at `gpa`.
fn guest_bytes(vm: &StorvspVm, gpa: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    vm.memory().read_at(Gpa::new(gpa), &mut buf).unwrap();
    buf
}

#[test]
fn a_completion_polls_only_its_own_request() {
    const DEPTH: usize = 8;
    let vm = vm(ControllerConfig {
        io_queue_depth: DEPTH,
        ..ControllerConfig::default()
    });
    let late = LateDisk::new(vm.shared_memory(), SS, 64, DEPTH as u16);
    let data: Vec<u8> = (0..64 * SS as usize)
        .map(|i| (i / 512) as u8 ^ 0xA0)
        .collect();
    late.fill(0, &data);
    attach_disk(&vm, 0, Disk::new(late.clone()).unwrap());
    // A disk that is quick but not inline: its request takes a slot and
    // wakes it once.
    let ram = RamDisk::new(64 * u64::from(SS), SS).unwrap();
    let fast = TestDisk::new(Disk::new(ram).unwrap()).asynchronous();
    attach_disk(&vm, 1, Disk::new(fast).unwrap());
    let mut g = guest(&vm, Profile::LinuxCurrent);
    negotiate(&mut g, Version::WIN8);

    // Every slot but one busy on the late disk.
    for tag in 0..DEPTH as u16 - 1 {
        let req = request(0, &read10(tag.into(), 1), DataDirection::READ, 512);
        send_srb(&mut g, tag, &req, &[(DATA + u64::from(tag) * 512, 512)]);
    }
    g.host_mut().process().unwrap();
    assert_eq!(g.host().in_flight(), DEPTH - 1);
    assert_eq!(late.queued(), DEPTH - 1);
    let late_polls = late.polls();
    let polls = g.host().request_polls();

    // The fast request, in the last slot: it finishes after two polls of
    // its own future (the first, and the one its wake asked for), and no
    // busy request is polled meanwhile.
    let req = request(1, &read10(0, 1), DataDirection::READ, 512);
    send_srb(&mut g, 100, &req, &[(DATA + 0x10000, 512)]);
    g.host_mut().process().unwrap();
    g.host_mut().process().unwrap();
    let reply = g.recv(0).unwrap().expect("the fast request's completion");
    assert_eq!(reply.transaction_id, 101);
    assert_eq!(reply.srb().srb_status, srb_status(SrbStatus::SUCCESS));
    assert_eq!(g.host().request_polls() - polls, 2);
    assert_eq!(late.polls(), late_polls, "a busy request was polled");
    assert_eq!(g.host().in_flight(), DEPTH - 1);

    // The late disk completes: each of its requests is polled once more,
    // and its data is in the guest's buffer.
    assert_eq!(late.complete_all(), DEPTH - 1);
    g.host_mut().process().unwrap();
    assert_eq!(g.host().request_polls() - polls, 2 + (DEPTH as u64 - 1));
    assert_eq!(
        drain_successes(&mut g),
        (1..DEPTH as u64).collect::<Vec<_>>()
    );
    for tag in 0..DEPTH - 1 {
        let got = guest_bytes(&vm, DATA + tag as u64 * 512, 512);
        assert_eq!(got, data[tag * 512..][..512], "request {tag}");
    }
    assert_eq!(late.in_flight(), 0);
}

#[test]
fn a_failed_worker_lives_until_its_late_requests_complete() {
    let vm = vm(ControllerConfig::default());
    let late = LateDisk::new(vm.shared_memory(), SS, 64, 8);
    late.fill(0, &[0x5A; 3 * 512]);
    attach_disk(&vm, 0, Disk::new(late.clone()).unwrap());
    let mut host = vm.primary_worker(0).unwrap();
    let woken = Arc::new(Woken::default());
    let waker = Waker::from(woken.clone());
    let mut cx = Context::from_waker(&waker);
    let mut run = Box::pin(host.run(vm.to_host(0).unwrap()));
    let mut g = vm
        .remote_guest(GuestConfig::new(Profile::LinuxCurrent))
        .unwrap();
    for (op, payload) in win8_steps() {
        g.send_control(0, op, &payload).unwrap();
        assert!(run.as_mut().poll(&mut cx).is_pending());
        assert_eq!(g.recv(0).unwrap().unwrap().status(), NtStatus::SUCCESS);
    }
    for tag in 0..3u16 {
        let req = request(0, &read10(tag.into(), 1), DataDirection::READ, 512);
        let buffer = [GpaRange::new(Gpa::new(DATA + u64::from(tag) * 512), 512)];
        g.submit(tag, 0, &req, &buffer).unwrap();
    }
    g.flush().unwrap();
    assert!(run.as_mut().poll(&mut cx).is_pending());
    assert_eq!(late.queued(), 3);

    // The guest breaks the protocol: the worker stops serving it but stays
    // alive, waiting for the requests a disk still holds.
    raw(&mut g, 99, true, &packet(Operation::EXECUTE_SRB, &[0; 8]));
    assert!(run.as_mut().poll(&mut cx).is_pending());
    assert!(run.as_mut().poll(&mut cx).is_pending());
    assert_eq!(guest_bytes(&vm, DATA, 3 * 512), [0; 3 * 512]);

    // Long after, the disk completes: the data lands in the requests' own
    // buffers, the worker is woken, and it ends — with no completion.
    let before = woken.0.load(Ordering::SeqCst);
    assert_eq!(late.complete_all(), 3);
    assert!(woken.0.load(Ordering::SeqCst) > before);
    assert_eq!(guest_bytes(&vm, DATA, 3 * 512), [0x5A; 3 * 512]);
    let Poll::Ready(e) = run.as_mut().poll(&mut cx) else {
        panic!("the drained worker should end");
    };
    assert!(
        matches!(
            e,
            StorvspError::Packet {
                transaction_id: 99,
                ..
            }
        ),
        "{e:?}"
    );
    drop(run);
    assert!(host.is_drained());
    assert_eq!(host.channel().writer().reserved(), 0);
    assert!(
        g.recv(0).unwrap().is_none(),
        "no completion after the error"
    );
    assert_eq!((late.completed(), late.in_flight()), (3, 0));
    // Each request completed once: a second trigger finds nothing.
    assert!(!late.complete_next());
}

/// A waker that counts its wakes.
#[derive(Default)]
struct Woken(AtomicUsize);

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_closed_channel_drains_before_it_ends() {
    let vm = vm(ControllerConfig::default());
    let latch = Latch::default();
    attach_slow(&vm, 0, Arc::new(latch.clone()));
    let mut g = guest(&vm, Profile::LinuxCurrent);
    negotiate(&mut g, Version::WIN8);
    let req = request(0, &read10(0, 1), DataDirection::READ, 512);
    send_srb(&mut g, 1, &req, &[(DATA, 512)]);
    g.host_mut().process().unwrap();
    assert_eq!(g.host().in_flight(), 1);

    g.host_mut().close();
    // Still at the disk: kept, with its ring space; nothing new is read.
    send_srb(&mut g, 2, &req, &[(DATA + 512, 512)]);
    assert_eq!(g.host_mut().process(), Err(StorvspError::Closed));
    assert_eq!(g.host().in_flight(), 1);
    assert!(!g.host().is_drained());
    assert!(g.host().channel().writer().reserved() > 0);

    latch.release();
    assert_eq!(g.host_mut().process(), Err(StorvspError::Closed));
    assert!(g.host().is_drained());
    assert_eq!(g.host().channel().writer().reserved(), 0);
    assert!(g.host().channel().reader().bytes_available().unwrap() > 0);
    assert!(
        g.recv(0).unwrap().is_none(),
        "no completion on a closed channel"
    );
    // A closed channel stays closed.
    g.host_mut().close();
    assert_eq!(g.host_mut().process(), Err(StorvspError::Closed));
}

#[test]
fn an_owned_worker_is_built_here_and_runs_on_another_thread() {
    fn send_static<T: Send + 'static>(t: T) -> T {
        t
    }
    let vm = vm(ControllerConfig::default());
    attach(&vm, 0, 64);
    // Built on this thread, borrowing nothing from the VM.
    let mut worker = send_static(vm.owned_primary_worker(0).unwrap());
    let signals = send_static(vm.host_signals(0).unwrap());
    let host = std::thread::spawn(move || {
        let e = futures::executor::block_on(worker.run(&*signals.from_peer));
        (e, worker.is_drained())
    });
    let mut g = vm
        .remote_guest(GuestConfig::new(Profile::LinuxCurrent))
        .unwrap();
    g.negotiate().unwrap();
    for tag in 1..20u16 {
        let req = g.scsi_request(0, &read10(tag.into(), 1), Direction::In, 512);
        g.submit(tag, 0, &req, &[GpaRange::new(Gpa::new(DATA), 512)])
            .unwrap();
        g.flush().unwrap();
        let r = g.wait_tag(tag).unwrap();
        assert_eq!(r.srb().srb_status, srb_status(SrbStatus::SUCCESS));
    }
    raw(&mut g, 99, true, &[0xEE; 16]);
    let (e, drained) = join_within(host, Duration::from_secs(5));
    assert!(
        matches!(
            e,
            StorvspError::Packet {
                transaction_id: 99,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(drained);
}
