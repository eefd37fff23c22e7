//! End to end: the emulated StorVSC guest driver
//! ([`parastor_emulated::storvsc`]) negotiates with a StorVSP controller
//! over real VMBus rings and runs SCSI workloads on RAM-backed disks (512-
//! and 4096-byte sectors) and a DVD — every test under every guest
//! [`Profile`] (current Linux, Linux before 5.19, Windows), whose drivers
//! check every completion's size as the real ones do.

use parastor_core::ram::RamDisk;
use parastor_core::{Disk, InitiatorId, ReservationsDisk};
use parastor_emulated::storvsc::{Data, Srb, SrbReply};
use parastor_emulated::{GuestConfig, InlineHost, Profile, Storvsc, StorvscError, StorvspVm};
use parastor_hw::scsi::mmc::{EventClasses, MediaEventCode, MediaStatus};
use parastor_hw::scsi::{
    PrInAction, PrOutAction, PrType, ScsiOp, ScsiStatus, SenseKey, ServiceActionIn,
};
use parastor_hw::storvsp::{NtStatus, PACKET_HEADER_LEN, SrbStatus, Version};
use parastor_scsi::ScsiDvd;
use parastor_scsi::{DiskParams, ScsiDisk};
use parastor_storvsp::{Controller, ControllerConfig, ScsiPath};
use parastor_tests::buf::{pattern, read_vec, write_vec};
use parastor_tests::stacks::ram;
use std::sync::Arc;

/// Protocol version 1.0, which StorVSP does not accept.
const V1_0: Version = Version::from_parts(1, 0);
/// Protocol version 4.3, which StorVSP does not accept.
const V4_3: Version = Version::from_parts(4, 3);
/// Protocol version 7.0, which StorVSP does not accept.
const V7_0: Version = Version::from_parts(7, 0);

/// The driver, served in this thread.
type Guest<'a> = Storvsc<'a, InlineHost<'a>>;

use parastor_tests::per_profile;

per_profile!(
    negotiates_blue_and_opens_sub_channels,
    completions_echo_the_size_of_each_packet,
    older_versions_are_settled_on_without_sub_channels,
    no_acceptable_version_fails_cleanly,
    read_write_10_and_16_on_both_sector_sizes,
    multi_range_buffers,
    write_same_unmap_verify_and_compare_and_write,
    hot_add_enumerate_bus_rescan_and_hot_remove,
    resize_raises_one_unit_attention,
    dvd_eject_and_host_media_change,
    persistent_reservations_between_two_initiators,
    io_on_primary_and_sub_channels,
    random_workload_matches_the_model,
    autosense_is_not_reported_again_by_request_sense,
);

/// A negotiated, scanned guest of `profile` with `cpus` CPUs.
fn connect(vm: &StorvspVm, profile: Profile, cpus: u16) -> Guest<'_> {
    vm.connect(GuestConfig::new(profile).cpus(cpus))
        .unwrap_or_else(|e| panic!("{profile}: {e}"))
}

/// LUN 0: 512-byte sectors.
const L512: u8 = 0;
/// LUN 1: 4096-byte sectors.
const L4K: u8 = 1;
/// LUN 2: the DVD drive.
const LDVD: u8 = 2;
const SECTORS: u64 = 1024;
const DVD_SS: u32 = 2048;

struct Luns {
    ram512: RamDisk,
    disk512: Disk,
    disk4k: Disk,
    dvd: Arc<ScsiDvd>,
}

fn scsi_disk(disk: Disk) -> Arc<ScsiDisk> {
    Arc::new(ScsiDisk::new(disk, DiskParams::default()))
}

fn dvd_media(seed: u64) -> Disk {
    let (_, d) = ram(64, DVD_SS);
    write_vec(&d, 0, &pattern(seed, 0, 4, DVD_SS)).unwrap();
    d
}

/// A controller with two disks and a DVD.
fn controller(max_sub_channels: u16) -> (Arc<Controller>, Luns) {
    let c = Arc::new(Controller::new(ControllerConfig {
        max_sub_channels,
        ..ControllerConfig::default()
    }));
    let (ram512, disk512) = ram(SECTORS, 512);
    let (_, disk4k) = ram(SECTORS, 4096);
    let dvd = Arc::new(ScsiDvd::new(Some(dvd_media(1))).unwrap());
    c.attach(ScsiPath::new(0, 0, L512), scsi_disk(disk512.clone()))
        .unwrap();
    c.attach(ScsiPath::new(0, 0, L4K), scsi_disk(disk4k.clone()))
        .unwrap();
    c.attach(ScsiPath::new(0, 0, LDVD), dvd.clone()).unwrap();
    (
        c,
        Luns {
            ram512,
            disk512,
            disk4k,
            dvd,
        },
    )
}

fn rw10(opcode: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = opcode;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn ss_of(lun: u8) -> usize {
    if lun == L4K { 4096 } else { 512 }
}

fn write(vsc: &mut Guest<'_>, lun: u8, lba: u64, data: &[u8], sixteen: bool) -> SrbReply {
    let blocks = data.len() / ss_of(lun);
    let cdb = if sixteen {
        rw16(ScsiOp::WRITE16.get(), lba, blocks as u32).to_vec()
    } else {
        rw10(ScsiOp::WRITE10.get(), lba as u32, blocks as u16).to_vec()
    };
    vsc.srb(&Srb::new(lun, &cdb, Data::Out(data))).unwrap()
}

fn read(vsc: &mut Guest<'_>, lun: u8, lba: u64, blocks: usize, sixteen: bool) -> Vec<u8> {
    let cdb = if sixteen {
        rw16(ScsiOp::READ16.get(), lba, blocks as u32).to_vec()
    } else {
        rw10(ScsiOp::READ10.get(), lba as u32, blocks as u16).to_vec()
    };
    let r = vsc
        .srb(&Srb::new(lun, &cdb, Data::In(blocks * ss_of(lun))))
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data_transfer_length as usize, blocks * ss_of(lun));
    r.data
}

fn good(r: &SrbReply) {
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.nt_status, NtStatus::SUCCESS);
}

fn check(r: &SrbReply, key: SenseKey) {
    assert_eq!(r.scsi_status, ScsiStatus::CHECK_CONDITION, "{r:?}");
    assert_eq!(r.sense_data().map(|s| s.key), Some(key), "{r:?}");
}

fn negotiates_blue_and_opens_sub_channels(profile: Profile) {
    let (c, _l) = controller(3);
    let vm = StorvspVm::with_defaults(c.clone());
    let vsc = connect(&vm, profile, 3);
    // Win10 is refused with REVISION_MISMATCH; Blue is the first accepted.
    assert_eq!(vsc.version(), Some(Version::BLUE));
    assert_eq!(vsc.request_len(), 0x34);
    assert_eq!(vsc.properties().unwrap().maximum_sub_channel_count.get(), 3);
    assert_eq!(vsc.channels(), 3);
    assert_eq!(c.sub_channels_requested(), Some(2));
    assert_eq!(vsc.luns(), [L512, L4K, LDVD]);
}

/// Every completion is the header plus the size of the packet it
/// completes: `0x30` bytes for a packet of the pre-Windows 8 size (Linux
/// before 5.19 and Windows until a version is settled), `0x40` for a
/// full-size one (current Linux always) — so each profile's own check
/// passes, and the sizes are the ones the real guests send.
fn completions_echo_the_size_of_each_packet(profile: Profile) {
    let (c, _l) = controller(0);
    let vm = StorvspVm::with_defaults(c);
    let mut g = vm.guest(GuestConfig::new(profile)).unwrap();
    let before = PACKET_HEADER_LEN + profile.request_len(None);
    assert_eq!(g.begin_initialization().unwrap().len, before);
    // Win10 refused, then Blue: both answered at the size they were sent.
    for v in [Version::WIN10, Version::BLUE] {
        assert_eq!(g.query_protocol_version(v).unwrap().len, before);
    }
    assert_eq!(g.version(), Some(Version::BLUE));
    assert_eq!(g.query_properties().unwrap().len, 0x40);
    assert_eq!(g.end_initialization().unwrap().len, 0x40);
    let r = g
        .srb(&Srb::new(
            L512,
            &[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0],
            Data::None,
        ))
        .unwrap();
    good(&r);
    assert_eq!(r.len, 0x40);
}

fn older_versions_are_settled_on_without_sub_channels(profile: Profile) {
    for (versions, want) in [
        (&[V7_0, Version::WIN8][..], Version::WIN8),
        (&[Version::WIN7][..], Version::WIN7),
        (&[V4_3, Version::WIN6][..], Version::WIN6),
    ] {
        let (c, l) = controller(4);
        let vm = StorvspVm::with_defaults(c);
        let mut vsc = vm
            .connect(GuestConfig::new(profile).cpus(5).versions(versions))
            .unwrap_or_else(|e| panic!("{profile} {want:#x}: {e}"));
        assert_eq!(vsc.version(), Some(want));
        assert_eq!(vsc.request_len(), profile.request_len(Some(want)));
        // The host offers sub-channels from Win8 on.
        let subs = if want >= Version::WIN8 { 5 } else { 1 };
        assert_eq!(vsc.channels(), subs);
        // I/O works at every request size, sense included.
        let data = pattern(9, 0, 2, 512);
        good(&write(&mut vsc, L512, 4, &data, false));
        assert_eq!(read(&mut vsc, L512, 4, 2, false), data);
        assert_eq!(read_vec(&l.disk512, 4, 2).unwrap(), data);
        let r = vsc
            .srb(&Srb::new(
                L512,
                &rw10(ScsiOp::READ10.get(), 5000, 1),
                Data::In(512),
            ))
            .unwrap();
        check(&r, SenseKey::ILLEGAL_REQUEST);
    }
}

/// The sense of a failed command comes back in its completion
/// (autosense), so REQUEST SENSE afterwards has nothing left to report
/// (SPC clears delivered sense): on both disks and the DVD, at Windows 8+
/// and pre-Windows 8 versions.
fn autosense_is_not_reported_again_by_request_sense(profile: Profile) {
    for versions in [None, Some(&[Version::WIN7][..])] {
        let (c, _l) = controller(0);
        let vm = StorvspVm::with_defaults(c);
        let mut config = GuestConfig::new(profile);
        if let Some(v) = versions {
            config = config.versions(v);
        }
        let mut vsc = vm
            .connect(config)
            .unwrap_or_else(|e| panic!("{profile}: {e}"));
        for lun in [L512, L4K, LDVD] {
            let block = if lun == LDVD {
                DVD_SS as usize
            } else {
                ss_of(lun)
            };
            let read = rw10(ScsiOp::READ10.get(), 5000, 1);
            let r = vsc.srb(&Srb::new(lun, &read, Data::In(block))).unwrap();
            check(&r, SenseKey::ILLEGAL_REQUEST);
            assert!(r.srb_status.autosense_valid(), "{r:?}");
            let s = r.sense_data().unwrap();
            assert_eq!(
                (s.additional.asc(), s.additional.ascq()),
                (0x21, 0),
                "LBA OUT OF RANGE: {r:?}"
            );
            let rs = [ScsiOp::REQUEST_SENSE.get(), 0, 0, 0, 18, 0];
            let r = vsc.srb(&Srb::new(lun, &rs, Data::In(18))).unwrap();
            good(&r);
            assert_eq!(r.data_transfer_length, 18);
            assert_eq!(
                (r.data[2] & 0xF, r.data[12], r.data[13]),
                (SenseKey::NO_SENSE.get(), 0, 0),
                "{profile}, LUN {lun}, version {:x?}: {r:?}",
                vsc.version()
            );
        }
    }
}

fn no_acceptable_version_fails_cleanly(profile: Profile) {
    let (c, _l) = controller(0);
    let vm = StorvspVm::with_defaults(c);
    let err = vm
        .connect(GuestConfig::new(profile).versions(&[V1_0, Version::WIN10]))
        .unwrap_err();
    assert_eq!(err, StorvscError::NoVersion);
}

fn read_write_10_and_16_on_both_sector_sizes(profile: Profile) {
    let (c, l) = controller(0);
    let vm = StorvspVm::with_defaults(c);
    let mut vsc = connect(&vm, profile, 1);
    for (lun, disk) in [(L512, &l.disk512), (L4K, &l.disk4k)] {
        let ss = ss_of(lun);
        for (i, sixteen) in [false, true].into_iter().enumerate() {
            let lba = 10 + 20 * i as u64;
            let data = pattern(lun.into(), lba, 7, ss as u32);
            good(&write(&mut vsc, lun, lba, &data, sixteen));
            assert_eq!(read(&mut vsc, lun, lba, 7, !sixteen), data);
            assert_eq!(read_vec(disk, lba, 7).unwrap(), data);
        }
        // Past the end: LBA out of range.
        let r = vsc
            .srb(&Srb::new(
                lun,
                &rw16(ScsiOp::READ16.get(), SECTORS, 1),
                Data::In(ss),
            ))
            .unwrap();
        check(&r, SenseKey::ILLEGAL_REQUEST);
        assert_eq!(r.srb_code(), SrbStatus::ERROR);
    }
}

fn multi_range_buffers(profile: Profile) {
    let (c, l) = controller(0);
    let vm = StorvspVm::with_defaults(c);
    let mut vsc = connect(&vm, profile, 1);
    // 9 sectors in ranges of odd sizes (some crossing page boundaries).
    let data = pattern(5, 0, 9, 512);
    let cuts = [100, 4000, 512, 3];
    let r = vsc
        .srb(&Srb::new(L512, &rw10(ScsiOp::WRITE10.get(), 50, 9), Data::Out(&data)).segments(&cuts))
        .unwrap();
    good(&r);
    assert_eq!(read_vec(&l.disk512, 50, 9).unwrap(), data);
    let r = vsc
        .srb(
            &Srb::new(
                L512,
                &rw16(ScsiOp::READ16.get(), 50, 9),
                Data::In(data.len()),
            )
            .segments(&[7, 5000, 1]),
        )
        .unwrap();
    good(&r);
    assert_eq!(r.data, data);
    // 4096-byte sectors, one range per 1000 bytes.
    let data = pattern(6, 0, 3, 4096);
    let cuts = vec![1000; 12];
    good(
        &vsc.srb(
            &Srb::new(L4K, &rw10(ScsiOp::WRITE10.get(), 3, 3), Data::Out(&data)).segments(&cuts),
        )
        .unwrap(),
    );
    let r = vsc
        .srb(
            &Srb::new(L4K, &rw10(ScsiOp::READ10.get(), 3, 3), Data::In(data.len())).segments(&cuts),
        )
        .unwrap();
    assert_eq!(r.data, data);
    assert_eq!(read_vec(&l.disk4k, 3, 3).unwrap(), data);
}

fn write_same_unmap_verify_and_compare_and_write(profile: Profile) {
    let (c, l) = controller(0);
    let vm = StorvspVm::with_defaults(c);
    let mut vsc = connect(&vm, profile, 1);

    // WRITE SAME(16): one block replicated over 20.
    let block = vec![0x5Au8; 512];
    let mut cdb = rw16(ScsiOp::WRITE_SAME16.get(), 100, 20);
    cdb[1] = 0;
    good(&vsc.srb(&Srb::new(L512, &cdb, Data::Out(&block))).unwrap());
    assert_eq!(read(&mut vsc, L512, 100, 20, true), vec![0x5A; 20 * 512]);

    // UNMAP two extents: they read back as zeros; the rest is untouched.
    let mut param = vec![0u8; 8 + 32];
    param[0..2].copy_from_slice(&(6u16 + 32).to_be_bytes());
    param[2..4].copy_from_slice(&32u16.to_be_bytes());
    param[8..16].copy_from_slice(&100u64.to_be_bytes());
    param[16..20].copy_from_slice(&4u32.to_be_bytes());
    param[24..32].copy_from_slice(&110u64.to_be_bytes());
    param[32..36].copy_from_slice(&2u32.to_be_bytes());
    let mut cdb = [0u8; 10];
    cdb[0] = ScsiOp::UNMAP.get();
    cdb[7..9].copy_from_slice(&(param.len() as u16).to_be_bytes());
    good(&vsc.srb(&Srb::new(L512, &cdb, Data::Out(&param))).unwrap());
    let got = read(&mut vsc, L512, 100, 20, false);
    for (i, s) in got.chunks(512).enumerate() {
        let zero = (0..4).contains(&i) || (10..12).contains(&i);
        assert_eq!(s, if zero { [0u8; 512] } else { [0x5A; 512] }, "sector {i}");
    }

    // VERIFY(10) with BYTCHK: a match is GOOD, a mismatch MISCOMPARE.
    let data = pattern(3, 200, 4, 512);
    good(&write(&mut vsc, L512, 200, &data, false));
    let mut cdb = rw10(ScsiOp::VERIFY10.get(), 200, 4);
    cdb[1] = 0x02;
    good(&vsc.srb(&Srb::new(L512, &cdb, Data::Out(&data))).unwrap());
    let mut bad = data.clone();
    bad[700] ^= 1;
    let r = vsc.srb(&Srb::new(L512, &cdb, Data::Out(&bad))).unwrap();
    check(&r, SenseKey::MISCOMPARE);
    // Without BYTCHK: a medium check only.
    good(
        &vsc.srb(&Srb::new(
            L512,
            &rw10(ScsiOp::VERIFY10.get(), 200, 4),
            Data::None,
        ))
        .unwrap(),
    );
    let mut cdb = rw16(ScsiOp::VERIFY16.get(), 200, 4);
    cdb[1] = 0x02;
    good(&vsc.srb(&Srb::new(L512, &cdb, Data::Out(&data))).unwrap());

    // COMPARE AND WRITE: writes only if the compare half matches.
    let new = pattern(4, 200, 2, 512);
    let mut cdb = [0u8; 16];
    cdb[0] = ScsiOp::COMPARE_AND_WRITE.get();
    cdb[2..10].copy_from_slice(&200u64.to_be_bytes());
    cdb[13] = 2;
    let mut buf = data[..1024].to_vec();
    buf.extend_from_slice(&new);
    good(&vsc.srb(&Srb::new(L512, &cdb, Data::Out(&buf))).unwrap());
    assert_eq!(read_vec(&l.disk512, 200, 2).unwrap(), new);
    // The same again: the compare half no longer matches.
    let r = vsc.srb(&Srb::new(L512, &cdb, Data::Out(&buf))).unwrap();
    check(&r, SenseKey::MISCOMPARE);
    assert_eq!(read_vec(&l.disk512, 200, 2).unwrap(), new);

    // The same on 4096-byte sectors.
    let block = vec![0xA5u8; 4096];
    good(
        &vsc.srb(&Srb::new(
            L4K,
            &rw16(ScsiOp::WRITE_SAME16.get(), 8, 3),
            Data::Out(&block),
        ))
        .unwrap(),
    );
    assert_eq!(read_vec(&l.disk4k, 8, 3).unwrap(), vec![0xA5; 3 * 4096]);
}

fn hot_add_enumerate_bus_rescan_and_hot_remove(profile: Profile) {
    let (c, _l) = controller(0);
    let vm = StorvspVm::with_defaults(c.clone());
    let mut vsc = connect(&vm, profile, 1);
    assert_eq!(vsc.luns(), [L512, L4K, LDVD]);
    assert!(!vsc.poll().unwrap(), "nothing to rescan");

    let (_, d) = ram(64, 512);
    c.attach(ScsiPath::new(0, 0, 7), scsi_disk(d.clone()))
        .unwrap();
    assert!(vsc.poll().unwrap(), "ENUMERATE_BUS → rescan");
    assert_eq!(vsc.enumerations(), 1);
    assert_eq!(vsc.luns(), [L512, L4K, LDVD, 7]);
    let data = pattern(7, 0, 1, 512);
    good(&write(&mut vsc, 7, 0, &data, false));
    assert_eq!(read_vec(&d, 0, 1).unwrap(), data);

    // A hot add noticed in the middle of other I/O: the driver rescans
    // before returning.
    let (_, d2) = ram(64, 4096);
    c.attach(ScsiPath::new(0, 0, 9), scsi_disk(d2)).unwrap();
    read(&mut vsc, L512, 0, 1, false);
    assert_eq!(vsc.enumerations(), 2);
    assert_eq!(vsc.luns(), [L512, L4K, LDVD, 7, 9]);

    // Hot remove: the LUN disappears from the scan and I/O to it fails.
    assert!(c.remove(ScsiPath::new(0, 0, 7)).is_some());
    assert!(vsc.poll().unwrap());
    assert_eq!(vsc.luns(), [L512, L4K, LDVD, 9]);
    let r = vsc
        .srb(&Srb::new(
            7,
            &rw10(ScsiOp::READ10.get(), 0, 1),
            Data::In(512),
        ))
        .unwrap();
    assert_eq!(r.srb_code(), SrbStatus::INVALID_LUN);
    assert_eq!(r.nt_status, NtStatus::DEVICE_DOES_NOT_EXIST);
}

fn resize_raises_one_unit_attention(profile: Profile) {
    let (c, l) = controller(0);
    let vm = StorvspVm::with_defaults(c);
    let mut vsc = connect(&vm, profile, 1);
    let capacity = |vsc: &mut Guest<'_>| {
        let mut cdb = [0u8; 16];
        cdb[0] = ScsiOp::SERVICE_ACTION_IN16.get();
        cdb[1] = ServiceActionIn::READ_CAPACITY16.get();
        cdb[13] = 32;
        let r = vsc.srb(&Srb::new(L512, &cdb, Data::In(32))).unwrap();
        good(&r);
        (
            u64::from_be_bytes(r.data[..8].try_into().unwrap()) + 1,
            r.retried,
        )
    };
    assert_eq!(capacity(&mut vsc), (SECTORS, false));
    l.ram512.resize(SECTORS * 2);
    // The first command meets the UNIT ATTENTION; the driver retries it.
    assert_eq!(capacity(&mut vsc), (SECTORS * 2, true));
    assert_eq!(vsc.unit_attentions(), 1);
    // Only once.
    assert_eq!(capacity(&mut vsc), (SECTORS * 2, false));
    read(&mut vsc, L512, SECTORS * 2 - 1, 1, true);
    assert_eq!(vsc.unit_attentions(), 1);
    // The other LUNs never saw it.
    read(&mut vsc, L4K, 0, 1, true);
    assert_eq!(vsc.unit_attentions(), 1);
}

fn gesn(vsc: &mut Guest<'_>) -> (u8, u8) {
    let mut cdb = [0u8; 10];
    cdb[0] = ScsiOp::GET_EVENT_STATUS_NOTIFICATION.get();
    cdb[1] = 0x01; // polled
    cdb[4] = EventClasses::new().with_media(true).into_bits();
    cdb[7..9].copy_from_slice(&8u16.to_be_bytes());
    let r = vsc.srb(&Srb::new(LDVD, &cdb, Data::In(8))).unwrap();
    good(&r);
    (r.data[4] & 0x0F, r.data[5])
}

fn dvd_eject_and_host_media_change(profile: Profile) {
    let (c, l) = controller(0);
    let vm = StorvspVm::with_defaults(c);
    let mut vsc = connect(&vm, profile, 1);
    let tur = Srb::new(
        LDVD,
        &[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0],
        Data::None,
    );
    good(&vsc.srb(&tur).unwrap());
    let r = vsc
        .srb(&Srb::new(
            LDVD,
            &rw10(ScsiOp::READ10.get(), 0, 2),
            Data::In(2 * DVD_SS as usize),
        ))
        .unwrap();
    good(&r);
    assert_eq!(r.data, pattern(1, 0, 2, DVD_SS));

    // Guest eject: START STOP UNIT with LoEj and not Start.
    good(
        &vsc.srb(&Srb::new(
            LDVD,
            &[ScsiOp::START_STOP_UNIT.get(), 0, 0, 0, 0x02, 0],
            Data::None,
        ))
        .unwrap(),
    );
    assert!(l.dvd.media().is_none());
    assert_eq!(gesn(&mut vsc).0, MediaEventCode::MEDIA_REMOVAL.get());
    check(&vsc.srb(&tur).unwrap(), SenseKey::NOT_READY);

    // Host inserts new media: GESN reports it; the next command meets a
    // UNIT ATTENTION the driver retries through.
    l.dvd.change_media(Some(dvd_media(2))).unwrap();
    let (code, st) = gesn(&mut vsc);
    assert_eq!(code, MediaEventCode::NEW_MEDIA.get());
    assert_ne!(
        st & MediaStatus::new().with_media_present(true).into_bits(),
        0
    );
    let r = vsc
        .srb(&Srb::new(
            LDVD,
            &rw10(ScsiOp::READ10.get(), 0, 1),
            Data::In(DVD_SS as usize),
        ))
        .unwrap();
    good(&r);
    assert!(r.retried);
    assert_eq!(r.data, pattern(2, 0, 1, DVD_SS));
    assert_eq!(gesn(&mut vsc).0, MediaEventCode::NO_CHANGE.get());

    // The DVD is read-only.
    let data = vec![0u8; DVD_SS as usize];
    let r = vsc
        .srb(&Srb::new(
            LDVD,
            &rw10(ScsiOp::WRITE10.get(), 0, 1),
            Data::Out(&data),
        ))
        .unwrap();
    assert_eq!(r.scsi_status, ScsiStatus::CHECK_CONDITION);
}

fn pr_out(sa: u8, kind: u8, key: u64, sa_key: u64) -> ([u8; 10], Vec<u8>) {
    let mut cdb = [0u8; 10];
    cdb[0] = ScsiOp::PERSISTENT_RESERVE_OUT.get();
    cdb[1] = sa;
    cdb[2] = kind;
    cdb[5..9].copy_from_slice(&24u32.to_be_bytes());
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    (cdb, p)
}

fn pr_cmd(vsc: &mut Guest<'_>, sa: u8, kind: u8, key: u64, sa_key: u64) -> SrbReply {
    let (cdb, p) = pr_out(sa, kind, key, sa_key);
    vsc.srb(&Srb::new(0, &cdb, Data::Out(&p))).unwrap()
}

fn read_keys(vsc: &mut Guest<'_>) -> Vec<u64> {
    let mut cdb = [0u8; 10];
    cdb[0] = ScsiOp::PERSISTENT_RESERVE_IN.get();
    cdb[1] = PrInAction::READ_KEYS.get();
    cdb[7..9].copy_from_slice(&256u16.to_be_bytes());
    let r = vsc.srb(&Srb::new(0, &cdb, Data::In(256))).unwrap();
    good(&r);
    let n = u32::from_be_bytes(r.data[4..8].try_into().unwrap()) as usize;
    let mut keys: Vec<u64> = r.data[8..8 + n]
        .chunks_exact(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect();
    keys.sort_unstable();
    keys
}

/// Two initiators: this profile's guest and the next profile's.
fn persistent_reservations_between_two_initiators(profile: Profile) {
    let (_, inner) = ram(SECTORS, 512);
    let shared = Disk::new(ReservationsDisk::new(inner)).unwrap();
    let ctl = |id: u128| {
        let c = Arc::new(Controller::new(ControllerConfig {
            initiator: InitiatorId::new(id),
            ..ControllerConfig::default()
        }));
        c.attach(ScsiPath::new(0, 0, 0), scsi_disk(shared.clone()))
            .unwrap();
        c
    };
    let (ha, hb) = (
        StorvspVm::with_defaults(ctl(0xA)),
        StorvspVm::with_defaults(ctl(0xB)),
    );
    let other = Profile::ALL
        .into_iter()
        .cycle()
        .skip_while(|&p| p != profile)
        .nth(1)
        .unwrap();
    let mut a = connect(&ha, profile, 1);
    let mut b = connect(&hb, other, 1);

    good(&pr_cmd(&mut a, PrOutAction::REGISTER.get(), 0, 0, 0xAAAA));
    good(&pr_cmd(
        &mut a,
        PrOutAction::RESERVE.get(),
        PrType::WRITE_EXCLUSIVE.get(),
        0xAAAA,
        0,
    ));
    let data = pattern(11, 0, 1, 512);
    // The holder writes; the other initiator may read but not write.
    good(&write(&mut a, 0, 0, &data, false));
    let r = write(&mut b, 0, 0, &[0u8; 512], false);
    assert_eq!(r.scsi_status, ScsiStatus::RESERVATION_CONFLICT, "{r:?}");
    assert_eq!(read(&mut b, 0, 0, 1, true), data);
    // B registers; both keys are visible from either side.
    good(&pr_cmd(&mut b, PrOutAction::REGISTER.get(), 0, 0, 0xBBBB));
    assert_eq!(read_keys(&mut a), [0xAAAA, 0xBBBB]);
    assert_eq!(read_keys(&mut b), [0xAAAA, 0xBBBB]);
    // B may not release A's reservation (no-op), nor reserve over it.
    let r = pr_cmd(
        &mut b,
        PrOutAction::RESERVE.get(),
        PrType::WRITE_EXCLUSIVE.get(),
        0xBBBB,
        0,
    );
    assert_eq!(r.scsi_status, ScsiStatus::RESERVATION_CONFLICT, "{r:?}");
    // A releases: B can write.
    good(&pr_cmd(
        &mut a,
        PrOutAction::RELEASE.get(),
        PrType::WRITE_EXCLUSIVE.get(),
        0xAAAA,
        0,
    ));
    good(&write(&mut b, 0, 1, &data, true));
    assert_eq!(read(&mut a, 0, 1, 1, false), data);
}

fn io_on_primary_and_sub_channels(profile: Profile) {
    let (c, l) = controller(2);
    let vm = StorvspVm::with_defaults(c);
    let mut vsc = connect(&vm, profile, 3);
    assert_eq!(vsc.channels(), 3);
    // Sequential I/O on each channel.
    for ch in 0..3 {
        let data = pattern(20 + ch as u64, 0, 4, 512);
        let lba = 40 * ch as u64;
        let r = vsc
            .srb(
                &Srb::new(
                    L512,
                    &rw10(ScsiOp::WRITE10.get(), lba as u32, 4),
                    Data::Out(&data),
                )
                .on(ch),
            )
            .unwrap();
        good(&r);
        let r = vsc
            .srb(
                &Srb::new(L512, &rw16(ScsiOp::READ16.get(), lba, 4), Data::In(2048))
                    .on((ch + 1) % 3),
            )
            .unwrap();
        assert_eq!(r.data, data);
    }
    // Several requests outstanding at once, spread over the channels.
    let datas: Vec<Vec<u8>> = (0..6).map(|i| pattern(50 + i, 0, 2, 4096)).collect();
    let tags: Vec<_> = datas
        .iter()
        .enumerate()
        .map(|(i, d)| {
            vsc.start(
                &Srb::new(
                    L4K,
                    &rw10(ScsiOp::WRITE10.get(), 2 * i as u32, 2),
                    Data::Out(d),
                )
                .on(i % 3),
            )
            .unwrap()
        })
        .collect();
    for t in tags.into_iter().rev() {
        good(&vsc.wait(t).unwrap());
    }
    for (i, d) in datas.iter().enumerate() {
        assert_eq!(&read_vec(&l.disk4k, 2 * i as u64, 2).unwrap(), d);
    }
}

fn random_workload_matches_the_model(profile: Profile) {
    let (c, l) = controller(3);
    let vm = StorvspVm::with_defaults(c);
    let mut vsc = connect(&vm, profile, 4);
    let mut rng = fastrand::Rng::with_seed(0x5EED_1234_ABCD_0001);
    let mut mismatches = 0usize;
    for (lun, disk) in [(L512, &l.disk512), (L4K, &l.disk4k)] {
        let ss = ss_of(lun);
        let max_blocks = (0x40000 / ss).min(64) as u64;
        let mut model = vec![0u8; SECTORS as usize * ss];
        for i in 0..400u64 {
            let blocks = 1 + below(&mut rng, max_blocks);
            let lba = below(&mut rng, SECTORS - blocks + 1);
            let range = lba as usize * ss..(lba + blocks) as usize * ss;
            let sixteen = below(&mut rng, 2) == 0;
            let ch = below(&mut rng, vsc.channels() as u64) as usize;
            let len = range.len();
            let cuts: Vec<usize> = (0..below(&mut rng, 4))
                .map(|_| 1 + below(&mut rng, len as u64) as usize)
                .collect();
            if below(&mut rng, 2) == 0 {
                let data = pattern(i ^ u64::from(lun) << 32, lba, blocks, ss as u32);
                let cdb = if sixteen {
                    rw16(ScsiOp::WRITE16.get(), lba, blocks as u32).to_vec()
                } else {
                    rw10(ScsiOp::WRITE10.get(), lba as u32, blocks as u16).to_vec()
                };
                let r = vsc
                    .srb(&Srb::new(lun, &cdb, Data::Out(&data)).segments(&cuts).on(ch))
                    .unwrap();
                good(&r);
                model[range].copy_from_slice(&data);
            } else {
                let cdb = if sixteen {
                    rw16(ScsiOp::READ16.get(), lba, blocks as u32).to_vec()
                } else {
                    rw10(ScsiOp::READ10.get(), lba as u32, blocks as u16).to_vec()
                };
                let r = vsc
                    .srb(&Srb::new(lun, &cdb, Data::In(len)).segments(&cuts).on(ch))
                    .unwrap();
                good(&r);
                if r.data != model[range] {
                    mismatches += 1;
                }
            }
        }
        if read_vec(disk, 0, SECTORS).unwrap() != model {
            mismatches += 1;
        }
    }
    assert_eq!(mismatches, 0);
}

/// A uniform value in `0..n`.
fn below(rng: &mut fastrand::Rng, n: u64) -> u64 {
    rng.u64(..n)
}
