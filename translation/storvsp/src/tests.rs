//! StorVSP unit tests: a guest-side [`Channel`] (an emulated StorVSC)
//! drives the controller over real rings in [`RamGuestMemory`].

extern crate std;

use super::*;
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use core::sync::atomic::AtomicBool;
use core::time::Duration;
use parastor_core::ram::RamDisk;
use parastor_core::{DelayDisk, DelayHandle, Disk, GuestMemory, RamGuestMemory, Timer};
use parastor_hw::scsi::{ScsiOp, ScsiStatus, SenseData, SenseKey};
use parastor_hw::storvsp::{
    DataDirection, NtStatus, Operation, PACKET_HEADER_LEN, PacketFlags, PacketHeader,
    ProtocolVersion, ScsiRequest, SrbStatus, SrbStatusAndFlags, Version,
};
use parastor_hw::vmbus::RingFeatures;
use parastor_scsi::{DiskParams, ScsiDisk};
use parastor_vmbus::{
    Channel, GpaDirectRange, Notify, OutgoingKind, PacketKind, RingRegion, Signal, init_ring,
    init_ring_pair,
};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use NegotiationState as S;

/// Packet flags of a request that wants its completion.
const REQUEST_COMPLETION: PacketFlags = PacketFlags::new().with_request_completion(true);

/// The SRB status byte with `status` and no flags.
fn srb_byte(status: SrbStatus) -> SrbStatusAndFlags {
    SrbStatusAndFlags::new().with_status(status)
}

const RING: u64 = 16384;
const BASE: u64 = 0x10000;
/// Where test data buffers live (page aligned).
const DATA: u64 = 0x100000;
const SS: u32 = 512;

struct Rig {
    mem: RamGuestMemory,
    host_sig: Signal,
    guest_sig: Signal,
    incoming: RingRegion,
    outgoing: RingRegion,
    controller: Arc<Controller>,
}

impl Rig {
    fn new(config: ControllerConfig) -> Self {
        Self::with_ring(config, RING, RING)
    }

    /// Rings of `in_size` (guest → host) and `out_size` bytes.
    fn with_ring(config: ControllerConfig, in_size: u64, out_size: u64) -> Self {
        let mem = RamGuestMemory::new(4 << 20);
        let incoming = RingRegion::new(BASE, in_size);
        let outgoing = RingRegion::new(BASE + in_size, out_size);
        init_ring(&mem, incoming, RingFeatures::new()).unwrap();
        init_ring(&mem, outgoing, RingFeatures::new()).unwrap();
        Self {
            mem,
            host_sig: Signal::new(),
            guest_sig: Signal::new(),
            incoming,
            outgoing,
            controller: Arc::new(Controller::new(config)),
        }
    }

    fn host(&self) -> StorvspChannel<'_> {
        let ch = Channel::host(&self.mem, self.incoming, self.outgoing, &self.guest_sig).unwrap();
        StorvspChannel::primary(self.controller.clone(), ch)
    }

    fn guest(&self) -> Channel<'_> {
        Channel::guest(&self.mem, self.incoming, self.outgoing, &self.host_sig).unwrap()
    }

    fn attach(&self, lun: u8, sectors: u64) -> Arc<ScsiDisk> {
        let ram = RamDisk::new(sectors * u64::from(SS), SS).unwrap();
        let disk = Arc::new(ScsiDisk::new(
            Disk::new(ram).unwrap(),
            DiskParams::default(),
        ));
        self.controller
            .attach(ScsiPath::new(0, 0, lun), disk.clone())
            .unwrap();
        disk
    }
}

/// A reply as the guest sees it.
#[derive(Debug)]
struct Reply {
    kind: PacketKind,
    tid: u64,
    header: PacketHeader,
    /// Everything after the StorVSP header (including VMBus padding).
    body: Vec<u8>,
}

impl Reply {
    fn status(&self) -> NtStatus {
        self.header.status
    }

    fn srb(&self) -> ScsiRequest {
        let mut r = ScsiRequest::new_zeroed();
        let n = self.body.len().min(r.as_bytes().len());
        r.as_mut_bytes()[..n].copy_from_slice(&self.body[..n]);
        r
    }
}

fn send(guest: &mut Channel<'_>, tid: u64, op: Operation, payload: &[u8]) {
    let mut bytes = PacketHeader::new(op, REQUEST_COMPLETION, NtStatus::SUCCESS)
        .as_bytes()
        .to_vec();
    bytes.extend_from_slice(payload);
    guest
        .write_packet(
            OutgoingKind::InBand {
                completion_requested: true,
            },
            tid,
            &bytes,
        )
        .unwrap();
}

fn recv(guest: &mut Channel<'_>) -> Option<Reply> {
    let p = guest.read_packet().unwrap()?;
    let header = PacketHeader::read_from_prefix(&p.payload).unwrap().0;
    Some(Reply {
        kind: p.kind,
        tid: p.transaction_id,
        header,
        body: p.payload[PACKET_HEADER_LEN..].to_vec(),
    })
}

/// Sends one packet, runs the host, returns the one reply.
fn call(
    host: &mut StorvspChannel<'_>,
    guest: &mut Channel<'_>,
    tid: u64,
    op: Operation,
    payload: &[u8],
) -> Reply {
    send(guest, tid, op, payload);
    host.process().unwrap();
    let r = recv(guest).expect("a reply");
    assert_eq!(r.kind, PacketKind::Completion);
    assert_eq!(r.tid, tid);
    assert_eq!(r.header.operation, Operation::COMPLETE_IO);
    assert!(recv(guest).is_none(), "exactly one reply");
    r
}

/// The negotiation packets a guest sends, in order, settling on `version`.
fn win8_steps(version: &ProtocolVersion) -> [(Operation, &[u8]); 4] {
    [
        (Operation::BEGIN_INITIALIZATION, &[]),
        (Operation::QUERY_PROTOCOL_VERSION, version.as_bytes()),
        (Operation::QUERY_PROPERTIES, &[0; 24]),
        (Operation::END_INITIALIZATION, &[]),
    ]
}

/// Runs the negotiation steps (transaction ids 1-4), each answered
/// `SUCCESS`, from where the controller stands until it reaches `until`,
/// settling on `version`. Returns the last step's reply.
fn negotiate_to(
    host: &mut StorvspChannel<'_>,
    guest: &mut Channel<'_>,
    version: Version,
    until: NegotiationState,
) -> Option<Reply> {
    let version = ProtocolVersion::new(version);
    let steps = win8_steps(&version);
    let mut last = None;
    loop {
        let i = match host.controller().state() {
            s if s == until => return last,
            S::Begin => 0,
            S::QueryVersion => 1,
            S::QueryProperties => 2,
            S::EndInitialization => 3,
            S::Ready => panic!("negotiated past {until:?}"),
        };
        let (op, payload) = steps[i];
        let r = call(host, guest, i as u64 + 1, op, payload);
        assert_eq!(r.status(), NtStatus::SUCCESS, "{op:?}");
        last = Some(r);
    }
}

fn negotiate(host: &mut StorvspChannel<'_>, guest: &mut Channel<'_>, version: Version) {
    negotiate_to(host, guest, version, S::Ready);
}

/// The `QUERY_PROPERTIES` answer in a reply.
fn properties(r: &Reply) -> parastor_hw::storvsp::ChannelProperties {
    parastor_hw::storvsp::ChannelProperties::read_from_prefix(&r.body)
        .unwrap()
        .0
}

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

/// Sends an SRB whose data buffer is `ranges` (gpa, len), each within one
/// page run.
fn send_srb(
    guest: &mut Channel<'_>,
    tid: u64,
    req: &ScsiRequest,
    size: RequestSize,
    ranges: &[(u64, u32)],
) {
    let pfns: Vec<Vec<u64>> = ranges
        .iter()
        .map(|&(gpa, len)| {
            let first = gpa >> 12;
            let last = (gpa + u64::from(len) - 1) >> 12;
            (first..=last).collect()
        })
        .collect();
    let r: Vec<GpaDirectRange<'_>> = ranges
        .iter()
        .zip(&pfns)
        .map(|(&(gpa, len), pfns)| GpaDirectRange {
            byte_offset: (gpa & 0xFFF) as u32,
            byte_count: len,
            pfns,
        })
        .collect();
    let mut bytes = PacketHeader::new(
        Operation::EXECUTE_SRB,
        REQUEST_COMPLETION,
        NtStatus::SUCCESS,
    )
    .as_bytes()
    .to_vec();
    bytes.extend_from_slice(req.wire_bytes(size));
    if r.is_empty() {
        guest
            .write_packet(
                OutgoingKind::InBand {
                    completion_requested: true,
                },
                tid,
                &bytes,
            )
            .unwrap();
    } else {
        guest.write_gpa_direct(tid, true, &r, &bytes).unwrap();
    }
}

fn srb(
    host: &mut StorvspChannel<'_>,
    guest: &mut Channel<'_>,
    tid: u64,
    req: &ScsiRequest,
    ranges: &[(u64, u32)],
) -> Reply {
    send_srb(guest, tid, req, RequestSize::Win8, ranges);
    host.process().unwrap();
    let r = recv(guest).expect("a completion");
    assert_eq!(r.tid, tid);
    r
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

#[test]
fn negotiation_win8_reports_properties_and_full_size_completions() {
    let rig = Rig::new(ControllerConfig {
        max_sub_channels: 7,
        ..ControllerConfig::default()
    });
    let (mut host, mut guest) = (rig.host(), rig.guest());
    let r = negotiate_to(&mut host, &mut guest, Version::WIN8, S::QueryProperties).unwrap();
    // Before the version settled: pre-Win8 size.
    assert_eq!(r.body.len(), 0x24);
    let r = negotiate_to(&mut host, &mut guest, Version::WIN8, S::EndInitialization).unwrap();
    assert_eq!(r.body.len(), 0x34);
    let p = properties(&r);
    assert_eq!(p.maximum_sub_channel_count.get(), 7);
    assert!(p.flags.multi_channel());
    assert_eq!(p.flags.into_bits().get(), 1);
    assert_eq!(p.max_transfer_bytes.get(), DEFAULT_MAX_TRANSFER_BYTES);
    assert_eq!(rig.controller.state(), S::EndInitialization);
    negotiate(&mut host, &mut guest, Version::WIN8);
    assert_eq!(rig.controller.version(), Some(Version::WIN8));
}

#[test]
fn version_sequences_settle_on_an_accepted_version() {
    // Linux tries newest first; Windows similar. Only exact
    // Win6/Win7/Win8/Blue are accepted.
    for (offers, settled) in [
        (&[Version::WIN10, Version::BLUE][..], Version::BLUE),
        (
            &[Version::WIN10, Version::new(0x0601), Version::WIN8][..],
            Version::WIN8,
        ),
        (&[Version::new(0x0403), Version::WIN7][..], Version::WIN7),
        (&[Version::new(0x0100), Version::WIN6][..], Version::WIN6),
    ] {
        let rig = Rig::new(ControllerConfig::default());
        let (mut host, mut guest) = (rig.host(), rig.guest());
        negotiate_to(&mut host, &mut guest, settled, S::QueryVersion);
        for (i, &v) in offers.iter().enumerate() {
            let r = call(
                &mut host,
                &mut guest,
                10 + i as u64,
                Operation::QUERY_PROTOCOL_VERSION,
                ProtocolVersion::new(v).as_bytes(),
            );
            let want = if v == settled {
                NtStatus::SUCCESS
            } else {
                NtStatus::REVISION_MISMATCH
            };
            assert_eq!(r.status(), want, "version {v:#x}");
        }
        assert_eq!(rig.controller.version(), Some(settled));
        assert_eq!(rig.controller.state(), NegotiationState::QueryProperties);
        // Properties for a pre-Win8 version: no multi-channel.
        let r = call(
            &mut host,
            &mut guest,
            50,
            Operation::QUERY_PROPERTIES,
            &[0; 24],
        );
        let p = properties(&r);
        if settled < Version::WIN8 {
            assert_eq!(p.flags.into_bits().get(), 0);
            assert_eq!(r.body.len(), 0x24);
        } else {
            assert_eq!(r.body.len(), 0x34);
        }
    }
}

#[test]
fn out_of_order_packets_get_invalid_device_state() {
    let rig = Rig::new(ControllerConfig::default());
    rig.attach(0, 64);
    let (mut host, mut guest) = (rig.host(), rig.guest());
    let bad = |host: &mut StorvspChannel<'_>, guest: &mut Channel<'_>, op, payload: &[u8]| {
        let r = call(host, guest, 99, op, payload);
        assert_eq!(r.status(), NtStatus::INVALID_DEVICE_STATE, "{op:?}");
    };
    bad(&mut host, &mut guest, Operation::QUERY_PROPERTIES, &[0; 24]);
    bad(&mut host, &mut guest, Operation::END_INITIALIZATION, &[]);
    bad(&mut host, &mut guest, Operation::EXECUTE_SRB, &[0; 0x24]);
    negotiate_to(&mut host, &mut guest, Version::WIN8, S::QueryVersion);
    bad(&mut host, &mut guest, Operation::BEGIN_INITIALIZATION, &[]);
    bad(&mut host, &mut guest, Operation::QUERY_PROPERTIES, &[0; 24]);
    bad(&mut host, &mut guest, Operation::RESET_BUS, &[]);
    assert_eq!(rig.controller.state(), S::QueryVersion);
    negotiate_to(&mut host, &mut guest, Version::WIN8, S::QueryProperties);
    bad(
        &mut host,
        &mut guest,
        Operation::QUERY_PROTOCOL_VERSION,
        ProtocolVersion::new(Version::WIN8).as_bytes(),
    );
    negotiate(&mut host, &mut guest, Version::WIN8);
    bad(&mut host, &mut guest, Operation::BEGIN_INITIALIZATION, &[]);
    bad(&mut host, &mut guest, Operation::FC_HBA_DATA, &[0; 36]);
    bad(&mut host, &mut guest, Operation::ENUMERATE_BUS, &[]);
    // Resets are no-ops once ready.
    for op in [
        Operation::RESET_LUN,
        Operation::RESET_ADAPTER,
        Operation::RESET_BUS,
    ] {
        let r = call(&mut host, &mut guest, 5, op, &[]);
        assert_eq!(r.status(), NtStatus::SUCCESS);
        assert_eq!(r.body.len(), 0x34);
    }
}

#[test]
fn srb_write_then_read_over_several_ranges() {
    let rig = Rig::new(ControllerConfig::default());
    let lun = rig.attach(0, 64);
    let (mut host, mut guest) = (rig.host(), rig.guest());
    negotiate(&mut host, &mut guest, Version::WIN8);

    let data: Vec<u8> = (0..2048u32).map(|i| (i * 7 + 3) as u8).collect();
    // Write 4 sectors from two non-adjacent ranges (one spans a page).
    rig.mem.write(DATA + 0x800, &data[..1536]).unwrap();
    rig.mem.write(DATA + 0x5000, &data[1536..]).unwrap();
    let req = request(0, &write10(8, 4), DataDirection::WRITE, 2048);
    let r = srb(
        &mut host,
        &mut guest,
        10,
        &req,
        &[(DATA + 0x800, 1536), (DATA + 0x5000, 512)],
    );
    assert_eq!(r.status(), NtStatus::SUCCESS);
    let c = r.srb();
    assert_eq!(c.srb_status, srb_byte(SrbStatus::SUCCESS));
    assert_eq!(c.scsi_status, ScsiStatus::GOOD);
    assert_eq!(c.data_transfer_length.get(), 2048);
    assert_eq!(r.body.len(), 0x34);

    // The disk has it.
    let mut on_disk = vec![0u8; 2048];
    let local = parastor_core::LocalMemory::new(2048);
    let range = [parastor_core::GpaRange::new(0, 2048)];
    futures::executor::block_on(lun.disk().read(
        parastor_core::SgList::local(&local, &range, true),
        8,
        parastor_core::IoOptions::default(),
    ))
    .unwrap();
    local.read(0, &mut on_disk).unwrap();
    assert_eq!(on_disk, data);

    // Read back into three ranges.
    let req = request(0, &read10(8, 4), DataDirection::READ, 2048);
    let ranges = [
        (DATA + 0x10000, 512),
        (DATA + 0x20100, 1024),
        (DATA + 0x30000, 512),
    ];
    let r = srb(&mut host, &mut guest, 11, &req, &ranges);
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));
    assert_eq!(r.srb().data_transfer_length.get(), 2048);
    let mut back = Vec::new();
    for (gpa, len) in ranges {
        let mut b = vec![0u8; len as usize];
        rig.mem.read(gpa, &mut b).unwrap();
        back.extend_from_slice(&b);
    }
    assert_eq!(back, data);
}

#[test]
fn check_condition_carries_capped_autosense() {
    for (size, version) in [
        (RequestSize::Win8, Version::WIN8),
        (RequestSize::PreWin8, Version::WIN7),
    ] {
        let rig = Rig::new(ControllerConfig::default());
        rig.attach(0, 64);
        let (mut host, mut guest) = (rig.host(), rig.guest());
        negotiate(&mut host, &mut guest, version);
        // Past the end of a 64-sector disk.
        let req = request(0, &read10(100, 1), DataDirection::READ, 512);
        send_srb(&mut guest, 7, &req, size, &[(DATA, 512)]);
        host.process().unwrap();
        let r = recv(&mut guest).unwrap();
        assert_eq!(r.body.len(), size.request_len());
        let c = r.srb();
        assert_eq!(
            c.srb_status,
            srb_byte(SrbStatus::ERROR).with_autosense_valid(true)
        );
        assert_eq!(c.scsi_status, ScsiStatus::CHECK_CONDITION);
        assert_eq!(r.status(), NtStatus::IO_DEVICE_ERROR);
        let n = usize::from(c.sense_info_ex_length);
        assert!(n <= size.sense_buffer_len());
        let sense = SenseData::parse(&c.payload[..n]).unwrap();
        assert_eq!(sense.key, SenseKey::ILLEGAL_REQUEST);

        // A guest sense buffer of 8 bytes gets 8 bytes.
        let mut req = request(0, &read10(100, 1), DataDirection::READ, 512);
        req.sense_info_ex_length = 8;
        send_srb(&mut guest, 8, &req, size, &[(DATA, 512)]);
        host.process().unwrap();
        let c = recv(&mut guest).unwrap().srb();
        assert_eq!(c.sense_info_ex_length, 8);
        assert_eq!(c.payload[8..], [0; 12]);

        // Autosense disabled (a Windows 8 field): no sense.
        if size == RequestSize::Win8 {
            req.sense_info_ex_length = 0x14;
            req.srb_flags = parastor_hw::storvsp::SrbFlags::new().with_disable_autosense(true);
            send_srb(&mut guest, 10, &req, size, &[(DATA, 512)]);
            host.process().unwrap();
            let c = recv(&mut guest).unwrap().srb();
            assert_eq!(c.srb_status, srb_byte(SrbStatus::ERROR));
            assert_eq!(c.sense_info_ex_length, 0);
            req.srb_flags = Default::default();
        }

        // No sense buffer: no autosense.
        req.sense_info_ex_length = 0;
        send_srb(&mut guest, 9, &req, size, &[(DATA, 512)]);
        host.process().unwrap();
        let c = recv(&mut guest).unwrap().srb();
        assert_eq!(c.srb_status, srb_byte(SrbStatus::ERROR));
    }
}

#[test]
fn missing_lun_answers() {
    let rig = Rig::new(ControllerConfig::default());
    rig.attach(0, 64);
    let (mut host, mut guest) = (rig.host(), rig.guest());
    negotiate(&mut host, &mut guest, Version::WIN8);

    // TEST UNIT READY to LUN 5: INVALID_LUN, no sense.
    let req = request(
        5,
        &[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0],
        DataDirection::UNKNOWN,
        0,
    );
    let r = srb(&mut host, &mut guest, 1, &req, &[]);
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::INVALID_LUN));
    assert_eq!(r.srb().sense_info_ex_length, 0);
    assert_eq!(r.status(), NtStatus::DEVICE_DOES_NOT_EXIST);

    // Standard INQUIRY: "no logical unit".
    rig.mem.write(DATA, &[0xEE; 96]).unwrap();
    let req = request(
        5,
        &[ScsiOp::INQUIRY.get(), 0, 0, 0, 96, 0],
        DataDirection::READ,
        96,
    );
    let r = srb(&mut host, &mut guest, 2, &req, &[(DATA, 96)]);
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));
    assert_eq!(r.srb().data_transfer_length.get(), 36);
    let mut b = [0u8; 36];
    rig.mem.read(DATA, &mut b).unwrap();
    assert_eq!(b[0], 0x7F);

    // VPD page: invalid CDB.
    let req = request(
        5,
        &[ScsiOp::INQUIRY.get(), 1, 0x80, 0, 96, 0],
        DataDirection::READ,
        96,
    );
    let r = srb(&mut host, &mut guest, 3, &req, &[(DATA, 96)]);
    assert_eq!(r.srb().scsi_status, ScsiStatus::CHECK_CONDITION);

    // Another target: same.
    let mut req = request(
        0,
        &[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0],
        DataDirection::UNKNOWN,
        0,
    );
    req.target_id = 1;
    let r = srb(&mut host, &mut guest, 4, &req, &[]);
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::INVALID_LUN));
}

#[test]
fn dvd_and_disk_luns_share_a_controller() {
    let rig = Rig::new(ControllerConfig::default());
    let disk = rig.attach(0, 64);
    let media = RamDisk::new(16 * 2048, 2048).unwrap();
    let dvd = Arc::new(parastor_scsi::dvd::ScsiDvd::new(Some(Disk::new(media).unwrap())).unwrap());
    rig.controller
        .attach(ScsiPath::new(0, 0, 1), dvd.clone())
        .unwrap();
    assert!(
        rig.controller
            .lun(ScsiPath::new(0, 0, 0))
            .unwrap()
            .as_disk()
            .is_some()
    );
    assert!(
        rig.controller
            .lun(ScsiPath::new(0, 0, 1))
            .unwrap()
            .as_dvd()
            .is_some()
    );
    let (mut host, mut guest) = (rig.host(), rig.guest());
    negotiate(&mut host, &mut guest, Version::WIN8);
    // INQUIRY: peripheral device type 0 (disk) and 5 (CD/DVD).
    for (tid, lun, kind) in [(1, 0u8, 0u8), (2, 1, 5)] {
        let req = request(
            lun,
            &[ScsiOp::INQUIRY.get(), 0, 0, 0, 36, 0],
            DataDirection::READ,
            36,
        );
        let r = srb(&mut host, &mut guest, tid, &req, &[(DATA, 36)]);
        assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));
        let mut b = [0u8; 1];
        rig.mem.read(DATA, &mut b).unwrap();
        assert_eq!(b[0] & 0x1F, kind);
    }
    // A DVD read of one 2048-byte block runs on the drive.
    let req = request(1, &read10(0, 1), DataDirection::READ, 2048);
    let r = srb(&mut host, &mut guest, 3, &req, &[(DATA, 2048)]);
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));
    assert_eq!(r.srb().data_transfer_length.get(), 2048);
    // Writes go to the disk only; the DVD refuses them.
    let req = request(1, &write10(0, 1), DataDirection::WRITE, 2048);
    let r = srb(&mut host, &mut guest, 4, &req, &[(DATA, 2048)]);
    assert_eq!(r.srb().scsi_status, ScsiStatus::CHECK_CONDITION);
    // Removing the DVD hands it back.
    let old = rig.controller.remove(ScsiPath::new(0, 0, 1)).unwrap();
    assert!(Arc::ptr_eq(old.as_dvd().unwrap(), &dvd));
    assert_eq!(disk.capacity(), 64);
}

fn report_luns(
    rig: &Rig,
    host: &mut StorvspChannel<'_>,
    guest: &mut Channel<'_>,
    lun: u8,
) -> Vec<u8> {
    let mut cdb = [0u8; 12];
    cdb[0] = ScsiOp::REPORT_LUNS.get();
    cdb[6..10].copy_from_slice(&256u32.to_be_bytes());
    let req = request(lun, &cdb, DataDirection::READ, 256);
    let r = srb(host, guest, 20, &req, &[(DATA, 256)]);
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));
    let n = r.srb().data_transfer_length.get() as usize;
    let mut b = vec![0u8; n];
    rig.mem.read(DATA, &mut b).unwrap();
    let list = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
    assert_eq!(list + 8, n);
    b[8..].chunks(8).map(|e| e[1]).collect()
}

#[test]
fn report_luns_comes_from_the_lun_map() {
    let rig = Rig::new(ControllerConfig::default());
    rig.attach(3, 8);
    rig.attach(0, 8);
    rig.attach(1, 8);
    // Another target: not listed.
    let other = Arc::new(ScsiDisk::new(
        Disk::new(RamDisk::new(4096, SS).unwrap()).unwrap(),
        DiskParams::default(),
    ));
    rig.controller
        .attach(ScsiPath::new(0, 1, 9), other.clone())
        .unwrap();
    assert_eq!(
        rig.controller.attach(ScsiPath::new(0, 1, 9), other),
        Err(AttachError::Occupied(ScsiPath::new(0, 1, 9)))
    );
    let (mut host, mut guest) = (rig.host(), rig.guest());
    negotiate(&mut host, &mut guest, Version::WIN8);
    // Through a LUN that does not exist, too.
    assert_eq!(report_luns(&rig, &mut host, &mut guest, 0), [0, 1, 3]);
    assert_eq!(report_luns(&rig, &mut host, &mut guest, 7), [0, 1, 3]);
}

/// REPORT LUNS is parsed as a CDB: a short one is INVALID FIELD IN CDB,
/// the allocation length caps the data, and every SELECT REPORT value
/// gets the same list.
#[test]
fn report_luns_cdb_fields() {
    let rig = Rig::new(ControllerConfig::default());
    rig.attach(0, 8);
    rig.attach(2, 8);
    let (mut host, mut guest) = (rig.host(), rig.guest());
    negotiate(&mut host, &mut guest, Version::WIN8);
    let mut cdb = [0u8; 12];
    cdb[0] = ScsiOp::REPORT_LUNS.get();
    cdb[6..10].copy_from_slice(&256u32.to_be_bytes());
    // Ten bytes of a twelve-byte command.
    let req = request(0, &cdb[..10], DataDirection::READ, 256);
    let r = srb(&mut host, &mut guest, 30, &req, &[(DATA, 256)]);
    assert_eq!(r.srb().scsi_status, ScsiStatus::CHECK_CONDITION);
    let sense = SenseData::parse(&r.srb().payload).unwrap();
    assert_eq!(
        (sense.key, sense.additional.asc(), sense.additional.ascq()),
        (SenseKey::ILLEGAL_REQUEST, 0x24, 0)
    );
    // An allocation length of 12: the header and the first LUN.
    cdb[6..10].copy_from_slice(&12u32.to_be_bytes());
    for select in [0u8, 1, 2, 0x10, 0xFF] {
        cdb[2] = select;
        let req = request(0, &cdb, DataDirection::READ, 256);
        let r = srb(&mut host, &mut guest, 31, &req, &[(DATA, 256)]);
        assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));
        assert_eq!(r.srb().data_transfer_length.get(), 12, "{select:#x}");
        let mut b = [0u8; 12];
        rig.mem.read(DATA, &mut b).unwrap();
        assert_eq!(b[..4], 16u32.to_be_bytes(), "two LUNs");
        assert_eq!(b[9], 0);
    }
}

#[test]
fn short_or_invalid_buffers_are_invalid_requests() {
    let rig = Rig::new(ControllerConfig::default());
    rig.attach(0, 64);
    let (mut host, mut guest) = (rig.host(), rig.guest());
    negotiate(&mut host, &mut guest, Version::WIN8);
    // Ranges shorter than the transfer.
    let req = request(0, &read10(0, 2), DataDirection::READ, 1024);
    let r = srb(&mut host, &mut guest, 1, &req, &[(DATA, 512)]);
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::INVALID_REQUEST));
    assert_eq!(r.srb().data_transfer_length.get(), 0);
    // CDB length over 16 and zero.
    for len in [17u8, 0] {
        let mut req = request(0, &read10(0, 1), DataDirection::READ, 512);
        req.cdb_length = len;
        let r = srb(&mut host, &mut guest, 2, &req, &[(DATA, 512)]);
        assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::INVALID_REQUEST));
    }
    // Still serving.
    let req = request(0, &read10(0, 1), DataDirection::READ, 512);
    let r = srb(&mut host, &mut guest, 3, &req, &[(DATA, 512)]);
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));
}

#[test]
fn hot_add_and_remove_send_enumerate_bus() {
    let rig = Rig::new(ControllerConfig::default());
    let (mut host, mut guest) = (rig.host(), rig.guest());
    // Before Ready: nothing is announced.
    rig.attach(0, 8);
    host.process().unwrap();
    assert!(recv(&mut guest).is_none());
    negotiate(&mut host, &mut guest, Version::WIN8);
    host.process().unwrap();
    assert!(recv(&mut guest).is_none());

    rig.attach(1, 8);
    assert!(host.process().unwrap());
    let r = recv(&mut guest).unwrap();
    assert_eq!(r.kind, PacketKind::InBand);
    assert_eq!(r.header.operation, Operation::ENUMERATE_BUS);
    assert_eq!(r.body.len(), 0x34);
    assert!(recv(&mut guest).is_none());
    assert_eq!(report_luns(&rig, &mut host, &mut guest, 0), [0, 1]);

    assert!(rig.controller.remove(ScsiPath::new(0, 0, 0)).is_some());
    assert!(rig.controller.remove(ScsiPath::new(0, 0, 0)).is_none());
    host.process().unwrap();
    let r = recv(&mut guest).unwrap();
    assert_eq!(r.header.operation, Operation::ENUMERATE_BUS);
    assert_eq!(report_luns(&rig, &mut host, &mut guest, 0), [1]);
    let req = request(0, &read10(0, 1), DataDirection::READ, 512);
    let r = srb(&mut host, &mut guest, 3, &req, &[(DATA, 512)]);
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::INVALID_LUN));
}

#[test]
fn win6_guests_get_no_enumerate_bus() {
    let rig = Rig::new(ControllerConfig::default());
    let (mut host, mut guest) = (rig.host(), rig.guest());
    negotiate(&mut host, &mut guest, Version::WIN6);
    rig.attach(0, 8);
    host.process().unwrap();
    assert!(recv(&mut guest).is_none());
}

#[test]
fn create_sub_channels_once_on_win8() {
    let config = ControllerConfig {
        max_sub_channels: 4,
        ..ControllerConfig::default()
    };
    let rig = Rig::new(config);
    let (mut host, mut guest) = (rig.host(), rig.guest());
    negotiate(&mut host, &mut guest, Version::WIN8);
    let r = call(
        &mut host,
        &mut guest,
        5,
        Operation::CREATE_SUB_CHANNELS,
        &5u16.to_le_bytes(),
    );
    assert_eq!(r.status(), NtStatus::INVALID_PARAMETER);
    assert_eq!(rig.controller.sub_channels_requested(), None);
    let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
    assert!(rig.controller.poll_sub_channels(&mut cx).is_pending());
    let r = call(
        &mut host,
        &mut guest,
        6,
        Operation::CREATE_SUB_CHANNELS,
        &3u16.to_le_bytes(),
    );
    assert_eq!(r.status(), NtStatus::SUCCESS);
    assert_eq!(
        rig.controller.poll_sub_channels(&mut cx),
        core::task::Poll::Ready(3)
    );
    assert_eq!(rig.controller.sub_channels_requested(), Some(3));
    let r = call(
        &mut host,
        &mut guest,
        7,
        Operation::CREATE_SUB_CHANNELS,
        &1u16.to_le_bytes(),
    );
    assert_eq!(r.status(), NtStatus::INVALID_DEVICE_STATE);
    assert_eq!(rig.controller.sub_channels_requested(), Some(3));

    // Before END_INITIALIZATION works too; pre-Win8 refuses.
    for (version, want) in [
        (Version::BLUE, NtStatus::SUCCESS),
        (Version::WIN7, NtStatus::INVALID_DEVICE_STATE),
    ] {
        let rig = Rig::new(config);
        let (mut host, mut guest) = (rig.host(), rig.guest());
        negotiate_to(&mut host, &mut guest, version, S::EndInitialization);
        let r = call(
            &mut host,
            &mut guest,
            4,
            Operation::CREATE_SUB_CHANNELS,
            &2u16.to_le_bytes(),
        );
        assert_eq!(r.status(), want);
    }
}

#[test]
fn sub_channel_waits_for_ready_then_serves_io() {
    let rig = Rig::new(ControllerConfig {
        max_sub_channels: 1,
        ..ControllerConfig::default()
    });
    rig.attach(0, 64);
    // A second ring pair for the sub-channel.
    let (sin, sout) = init_ring_pair(&rig.mem, BASE + 8 * RING, RING).unwrap();
    let sub_host_sig = Signal::new();
    let sub_guest_sig = Signal::new();
    let mut sub_host = StorvspChannel::sub_channel(
        rig.controller.clone(),
        Channel::host(&rig.mem, sin, sout, &sub_guest_sig).unwrap(),
    );
    let mut sub_guest = Channel::guest(&rig.mem, sin, sout, &sub_host_sig).unwrap();
    let (mut host, mut guest) = (rig.host(), rig.guest());

    let req = request(0, &read10(0, 1), DataDirection::READ, 512);
    send_srb(&mut sub_guest, 1, &req, RequestSize::Win8, &[(DATA, 512)]);
    assert!(!sub_host.process().unwrap(), "not ready: nothing taken");
    assert!(recv(&mut sub_guest).is_none());

    negotiate(&mut host, &mut guest, Version::WIN8);
    assert!(sub_host.process().unwrap());
    let r = recv(&mut sub_guest).unwrap();
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));

    // Negotiation packets on a sub-channel are out of state.
    send(&mut sub_guest, 2, Operation::BEGIN_INITIALIZATION, &[]);
    sub_host.process().unwrap();
    let r = recv(&mut sub_guest).unwrap();
    assert_eq!(r.status(), NtStatus::INVALID_DEVICE_STATE);
}

/// A timer whose sleeps all end when the gate opens.
struct Gate(Arc<AtomicBool>);

impl Timer for Gate {
    fn sleep(&self, _: Duration) -> parastor_core::disk::BoxFuture<'static, ()> {
        let open = self.0.clone();
        Box::pin(core::future::poll_fn(move |_| {
            if open.load(Ordering::Acquire) {
                core::task::Poll::Ready(())
            } else {
                core::task::Poll::Pending
            }
        }))
    }
}

#[test]
fn queue_depth_limits_requests_in_flight() {
    let rig = Rig::new(ControllerConfig {
        io_queue_depth: 3,
        ..ControllerConfig::default()
    });
    let gate = Arc::new(AtomicBool::new(false));
    let ram = RamDisk::new(64 * u64::from(SS), SS).unwrap();
    let delayed = DelayDisk::new(
        Disk::new(ram).unwrap(),
        DelayHandle::new(Duration::from_millis(1)),
        Arc::new(Gate(gate.clone())),
    );
    rig.controller
        .attach(
            ScsiPath::new(0, 0, 0),
            Arc::new(ScsiDisk::new(
                Disk::new(delayed).unwrap(),
                DiskParams::default(),
            )),
        )
        .unwrap();
    let (mut host, mut guest) = (rig.host(), rig.guest());
    negotiate(&mut host, &mut guest, Version::WIN8);
    for tid in 0..5 {
        let req = request(0, &read10(tid as u32, 1), DataDirection::READ, 512);
        send_srb(
            &mut guest,
            100 + tid,
            &req,
            RequestSize::Win8,
            &[(DATA + tid * 512, 512)],
        );
    }
    host.process().unwrap();
    assert_eq!(host.in_flight(), 3);
    assert!(recv(&mut guest).is_none());
    gate.store(true, Ordering::Release);
    host.process().unwrap();
    assert_eq!(host.in_flight(), 0);
    let mut tids: Vec<u64> = core::iter::from_fn(|| recv(&mut guest))
        .map(|r| {
            assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));
            r.tid
        })
        .collect();
    tids.sort();
    assert_eq!(tids, [100, 101, 102, 103, 104]);
}

#[test]
fn full_completion_ring_stops_intake_without_losing_completions() {
    // A small ring: the outgoing side holds only a few completions.
    let rig = Rig::with_ring(ControllerConfig::default(), 4 * RING, 8192);
    rig.attach(0, 64);
    let (mut host, mut guest) = (rig.host(), rig.guest());
    negotiate(&mut host, &mut guest, Version::WIN8);
    let mut sent = 0u64;
    let mut got = Vec::new();
    for round in 0..20 {
        // Fill the incoming ring as far as it goes.
        loop {
            let req = request(0, &read10(0, 1), DataDirection::READ, 512);
            let mut bytes = PacketHeader::new(
                Operation::EXECUTE_SRB,
                REQUEST_COMPLETION,
                NtStatus::SUCCESS,
            )
            .as_bytes()
            .to_vec();
            bytes.extend_from_slice(req.as_bytes());
            let pfn = [DATA >> 12];
            let r = [GpaDirectRange {
                byte_offset: 0,
                byte_count: 512,
                pfns: &pfn,
            }];
            if guest.write_gpa_direct(sent, true, &r, &bytes).is_err() {
                break;
            }
            sent += 1;
        }
        host.process().unwrap();
        // The host stopped with packets left: the completion ring is full.
        if round == 0 {
            assert!(host.channel().reader().bytes_available().unwrap() > 0);
            assert_eq!(host.in_flight(), 0);
        }
        // Drain some completions; the guest's reads signal the host.
        for _ in 0..2 {
            if let Some(r) = recv(&mut guest) {
                got.push(r.tid);
            }
        }
    }
    // Drain everything.
    loop {
        host.process().unwrap();
        match recv(&mut guest) {
            Some(r) => got.push(r.tid),
            None => break,
        }
    }
    assert_eq!(got, (0..sent).collect::<Vec<_>>());
    assert!(rig.host_sig.count() > 0, "the guest signalled freed space");
}

#[test]
fn malformed_packets_end_the_channel_with_an_error() {
    type Case = fn(&mut Channel<'_>);
    type Check = fn(&StorvspError) -> bool;
    let cases: [(Case, Check); 5] = [
        (
            |g| {
                g.write_packet(
                    OutgoingKind::InBand {
                        completion_requested: true,
                    },
                    1,
                    &[0xFF; 16],
                )
                .unwrap()
            },
            |e| matches!(e, StorvspError::Packet { .. }),
        ),
        (
            |g| {
                g.write_packet(
                    OutgoingKind::InBand {
                        completion_requested: true,
                    },
                    1,
                    &[0; 4],
                )
                .unwrap()
            },
            |e| matches!(e, StorvspError::Packet { .. }),
        ),
        (
            |g| {
                g.write_packet(
                    OutgoingKind::InBand {
                        completion_requested: false,
                    },
                    1,
                    PacketHeader::new(Operation::RESET_BUS, PacketFlags::new(), NtStatus::SUCCESS)
                        .as_bytes(),
                )
                .unwrap()
            },
            |e| matches!(e, StorvspError::NotTransactional { transaction_id: 1 }),
        ),
        (
            |g| {
                g.write_packet(
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
            |g| send(g, 1, Operation::EXECUTE_SRB, &[0; 8]),
            |e| matches!(e, StorvspError::Packet { .. }),
        ),
    ];
    for (i, (write, check)) in cases.into_iter().enumerate() {
        let rig = Rig::new(ControllerConfig::default());
        let (mut host, mut guest) = (rig.host(), rig.guest());
        negotiate(&mut host, &mut guest, Version::WIN8);
        write(&mut guest);
        let e = host.process().unwrap_err();
        assert!(check(&e), "case {i}: {e}");
        // The reservation taken for the bad packet was given back.
        assert_eq!(host.channel().writer().reserved(), 0);
    }
}

#[test]
fn run_serves_until_the_guest_breaks_the_protocol() {
    let rig = Rig::new(ControllerConfig::default());
    rig.attach(0, 64);
    let mut host = rig.host();
    let mut guest = rig.guest();
    send(&mut guest, 1, Operation::BEGIN_INITIALIZATION, &[]);
    send(
        &mut guest,
        2,
        Operation::QUERY_PROTOCOL_VERSION,
        ProtocolVersion::new(Version::WIN8).as_bytes(),
    );
    send(&mut guest, 3, Operation::QUERY_PROPERTIES, &[0; 24]);
    send(&mut guest, 4, Operation::END_INITIALIZATION, &[]);
    let req = request(0, &read10(0, 1), DataDirection::READ, 512);
    send_srb(&mut guest, 5, &req, RequestSize::Win8, &[(DATA, 512)]);
    guest
        .write_packet(
            OutgoingKind::InBand {
                completion_requested: true,
            },
            6,
            &[0xAB; 12],
        )
        .unwrap();
    let e = futures::executor::block_on(host.run(&rig.host_sig));
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
    let tids: Vec<u64> = core::iter::from_fn(|| recv(&mut guest))
        .map(|r| r.tid)
        .collect();
    assert_eq!(tids, [1, 2, 3, 4, 5]);
}

#[test]
fn random_packets_never_panic_or_hang() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..200 {
        let rig = Rig::new(ControllerConfig::default());
        rig.attach(0, 16);
        let (mut host, mut guest) = (rig.host(), rig.guest());
        if next() % 2 == 0 {
            negotiate(&mut host, &mut guest, Version::WIN8);
        }
        for _ in 0..8 {
            let len = (next() % 80) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 4 {
                // Mostly valid operations.
                bytes[..4].copy_from_slice(&((next() % 15) as u32).to_le_bytes());
            }
            let r = if next() % 3 == 0 {
                let pfn = [(DATA >> 12) + next() % 4];
                let range = [GpaDirectRange {
                    byte_offset: (next() % 4096) as u32,
                    byte_count: (next() % 8192) as u32,
                    pfns: &pfn,
                }];
                guest.write_gpa_direct(next(), next() % 8 != 0, &range, &bytes)
            } else {
                guest.write_packet(
                    OutgoingKind::InBand {
                        completion_requested: next() % 8 != 0,
                    },
                    next(),
                    &bytes,
                )
            };
            if r.is_err() {
                break;
            }
        }
        let _ = host.process();
        while recv(&mut guest).is_some() {}
    }
}

/// Waits (bounded) for the next packet from the host.
fn recv_wait(guest: &mut Channel<'_>) -> Reply {
    for _ in 0..5000 {
        if let Some(r) = recv(guest) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("no packet from the host within 5 s");
}

/// Serves `rig`'s primary channel with [`StorvspChannel::run`] on a thread
/// of its own. A test that panics does not join it (as a scoped thread
/// would, waiting forever on a worker whose guest is gone): it fails
/// instead of hanging, and the worker thread ends with the test process.
fn spawn_run(rig: &Arc<Rig>) -> std::thread::JoinHandle<StorvspError> {
    let rig = rig.clone();
    std::thread::spawn(move || {
        let mut host = rig.host();
        futures::executor::block_on(host.run(&rig.host_sig))
    })
}

#[test]
fn run_on_a_thread_wakes_for_packets_and_hot_adds() {
    let rig = Arc::new(Rig::new(ControllerConfig::default()));
    rig.attach(0, 64);
    let host = spawn_run(&rig);
    let mut guest = rig.guest();
    let version = ProtocolVersion::new(Version::WIN8);
    for (i, (op, payload)) in win8_steps(&version).into_iter().enumerate() {
        send(&mut guest, i as u64, op, payload);
        let r = recv_wait(&mut guest);
        assert_eq!((r.tid, r.status()), (i as u64, NtStatus::SUCCESS));
    }
    for tid in 10..40u64 {
        let req = request(0, &read10(tid as u32, 1), DataDirection::READ, 512);
        send_srb(&mut guest, tid, &req, RequestSize::Win8, &[(DATA, 512)]);
        let r = recv_wait(&mut guest);
        assert_eq!(r.tid, tid);
        assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));
    }
    // A hot add wakes the idle worker, which tells the guest.
    rig.attach(1, 8);
    let r = recv_wait(&mut guest);
    assert_eq!(r.header.operation, Operation::ENUMERATE_BUS);
    // A broken packet ends the worker.
    guest
        .write_packet(
            OutgoingKind::InBand {
                completion_requested: true,
            },
            99,
            &[0xEE; 16],
        )
        .unwrap();
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
fn a_failed_channel_drops_its_requests_and_stays_ended() {
    let rig = Rig::new(ControllerConfig::default());
    let latch = Latch::default();
    rig.attach_slow(0, Arc::new(latch.clone()));
    let (mut host, mut guest) = (rig.host(), rig.guest());
    negotiate(&mut host, &mut guest, Version::WIN8);
    let held = Arc::strong_count(&latch.0);
    let req = request(0, &read10(0, 1), DataDirection::READ, 512);
    send_srb(&mut guest, 10, &req, RequestSize::Win8, &[(DATA, 512)]);
    host.process().unwrap();
    assert_eq!(host.in_flight(), 1);
    // The request's sleep holds the timer.
    assert_eq!(Arc::strong_count(&latch.0), held + 1);

    send(&mut guest, 11, Operation::EXECUTE_SRB, &[0; 8]);
    let e = host.process().unwrap_err();
    assert!(
        matches!(
            e,
            StorvspError::Packet {
                transaction_id: 11,
                ..
            }
        ),
        "{e:?}"
    );
    // The request in flight is gone, with its future and ring space.
    assert_eq!(host.in_flight(), 0);
    assert_eq!(Arc::strong_count(&latch.0), held);
    assert_eq!(host.channel().writer().reserved(), 0);
    latch.release();
    assert!(recv(&mut guest).is_none(), "no completion for it");

    // Ended: the same error, and the ring is not read any more.
    send_srb(&mut guest, 12, &req, RequestSize::Win8, &[(DATA, 512)]);
    let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
    assert_eq!(host.poll_work(&mut cx), Err(e));
    assert_eq!(host.process(), Err(e));
    assert!(host.channel().reader().bytes_available().unwrap() > 0);
    assert!(recv(&mut guest).is_none());
}

/// A timer that never fires and wakes its task every time it is polled: a
/// disk whose requests keep asking to be polled again.
struct Restless;

impl Timer for Restless {
    fn sleep(&self, _: Duration) -> parastor_core::disk::BoxFuture<'static, ()> {
        Box::pin(core::future::poll_fn(|cx| {
            cx.waker().wake_by_ref();
            core::task::Poll::Pending
        }))
    }
}

/// A waker that, when woken, signals `signal` (at most `limit` times):
/// with a [`Restless`] request in flight, every pass of a worker whose
/// incoming signal this is finds itself signalled.
struct Relay {
    signal: Arc<Signal>,
    wakes: core::sync::atomic::AtomicUsize,
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
    let rig = Rig::new(ControllerConfig::default());
    rig.attach_slow(0, Arc::new(Restless));
    let mut host = rig.host();
    let incoming = Arc::new(Signal::new());
    let limit = 100 * super::channel::RUN_BUDGET;
    let relay = Arc::new(Relay {
        signal: incoming.clone(),
        wakes: Default::default(),
        limit,
        relaying: AtomicBool::new(false),
    });
    let waker = core::task::Waker::from(relay.clone());
    let mut cx = core::task::Context::from_waker(&waker);
    let mut run = Box::pin(host.run(&incoming));
    let mut guest = rig.guest();
    let version = ProtocolVersion::new(Version::WIN8);
    for (i, (op, payload)) in win8_steps(&version).into_iter().enumerate() {
        send(&mut guest, i as u64, op, payload);
        assert!(run.as_mut().poll(&mut cx).is_pending());
        assert_eq!(recv(&mut guest).unwrap().tid, i as u64);
    }
    // A request that never finishes and wakes the worker at every poll,
    // which (through the relay) signals it: a worker that is never out of
    // work, as under a guest flooding it with packets or signals.
    let req = request(0, &read10(0, 1), DataDirection::READ, 512);
    send_srb(&mut guest, 10, &req, RequestSize::Win8, &[(DATA, 512)]);
    for _ in 0..3 {
        relay.wakes.store(0, Ordering::Release);
        assert!(run.as_mut().poll(&mut cx).is_pending());
        // The poll gave up after its budget (and woke itself to go on),
        // rather than running until the relay's limit.
        let wakes = relay.wakes.load(Ordering::Acquire);
        assert!(
            (1..=2 * super::channel::RUN_BUDGET).contains(&wakes),
            "{wakes} wakes in one poll"
        );
    }
}

#[test]
fn reset_allows_a_new_negotiation() {
    let rig = Rig::new(ControllerConfig {
        max_sub_channels: 2,
        ..ControllerConfig::default()
    });
    {
        let (mut host, mut guest) = (rig.host(), rig.guest());
        negotiate(&mut host, &mut guest, Version::WIN8);
        call(
            &mut host,
            &mut guest,
            5,
            Operation::CREATE_SUB_CHANNELS,
            &2u16.to_le_bytes(),
        );
    }
    rig.controller.reset();
    assert_eq!(rig.controller.state(), NegotiationState::Begin);
    assert_eq!(rig.controller.version(), None);
    assert_eq!(rig.controller.sub_channels_requested(), None);
    // Fresh rings for the reopened channel.
    let (incoming, outgoing) = init_ring_pair(&rig.mem, BASE + 8 * RING, RING).unwrap();
    let mut host = StorvspChannel::primary(
        rig.controller.clone(),
        Channel::host(&rig.mem, incoming, outgoing, &rig.guest_sig).unwrap(),
    );
    let mut guest = Channel::guest(&rig.mem, incoming, outgoing, &rig.host_sig).unwrap();
    negotiate(&mut host, &mut guest, Version::WIN7);
    assert_eq!(rig.controller.version(), Some(Version::WIN7));
}

/// A timer whose sleeps all end, waking their tasks, once released: a
/// slow disk the test finishes by hand, even under [`StorvspChannel::run`].
#[derive(Clone, Default)]
struct Latch(Arc<LatchState>);

#[derive(Default)]
struct LatchState {
    open: AtomicBool,
    wakers: std::sync::Mutex<Vec<core::task::Waker>>,
}

impl Latch {
    fn release(&self) {
        self.0.open.store(true, Ordering::Release);
        for w in core::mem::take(&mut *self.0.wakers.lock().unwrap()) {
            w.wake();
        }
    }
}

impl Timer for Latch {
    fn sleep(&self, _: Duration) -> parastor_core::disk::BoxFuture<'static, ()> {
        let state = self.0.clone();
        Box::pin(core::future::poll_fn(move |cx| {
            if state.open.load(Ordering::Acquire) {
                return core::task::Poll::Ready(());
            }
            state.wakers.lock().unwrap().push(cx.waker().clone());
            // Re-check: the latch may have opened before the waker was
            // stored.
            if state.open.load(Ordering::Acquire) {
                core::task::Poll::Ready(())
            } else {
                core::task::Poll::Pending
            }
        }))
    }
}

impl Rig {
    /// Attaches a 64-sector disk whose every request waits on `timer`.
    fn attach_slow(&self, lun: u8, timer: Arc<dyn Timer>) {
        let ram = RamDisk::new(64 * u64::from(SS), SS).unwrap();
        let delayed = DelayDisk::new(
            Disk::new(ram).unwrap(),
            DelayHandle::new(Duration::from_millis(1)),
            timer,
        );
        self.controller
            .attach(
                ScsiPath::new(0, 0, lun),
                Arc::new(ScsiDisk::new(
                    Disk::new(delayed).unwrap(),
                    DiskParams::default(),
                )),
            )
            .unwrap();
    }

    /// The incoming (guest → host) ring's `interrupt_mask`, as the guest
    /// sees it.
    fn interrupt_mask(&self) -> u32 {
        let mut b = [0u8; 4];
        self.mem
            .read(
                self.incoming.gpa + u64::from(parastor_hw::vmbus::RING_INTERRUPT_MASK_OFFSET),
                &mut b,
            )
            .unwrap();
        u32::from_le_bytes(b)
    }
}

#[test]
fn poll_mode_masks_guest_signals_while_io_is_outstanding() {
    let rig = Rig::new(ControllerConfig {
        poll_mode_queue_depth: 2,
        ..ControllerConfig::default()
    });
    let latch = Latch::default();
    rig.attach_slow(0, Arc::new(latch.clone()));
    let (mut host, mut guest) = (rig.host(), rig.guest());
    negotiate(&mut host, &mut guest, Version::WIN8);
    assert!(!host.poll_mode());
    assert_eq!(rig.interrupt_mask(), 0);
    let send_read = |guest: &mut Channel<'_>, tid: u64| {
        let req = request(0, &read10(tid as u32, 1), DataDirection::READ, 512);
        send_srb(
            guest,
            tid,
            &req,
            RequestSize::Win8,
            &[(DATA + tid * 512, 512)],
        );
    };

    // Below the threshold: the guest still signals each packet.
    let signals = rig.host_sig.count();
    send_read(&mut guest, 1);
    assert_eq!(rig.host_sig.count(), signals + 1);
    host.process().unwrap();
    assert_eq!(host.in_flight(), 1);
    assert!(!host.poll_mode());
    assert_eq!(rig.interrupt_mask(), 0);

    // At the threshold: masked.
    send_read(&mut guest, 2);
    host.process().unwrap();
    assert_eq!(host.in_flight(), 2);
    assert!(host.poll_mode());
    assert_eq!(rig.interrupt_mask(), 1);

    // A packet written while masked: no signal, yet the next pass reads it.
    let signals = rig.host_sig.count();
    send_read(&mut guest, 3);
    assert_eq!(
        rig.host_sig.count(),
        signals,
        "masked: the guest did not signal"
    );
    host.process().unwrap();
    assert_eq!(host.in_flight(), 3);
    assert_eq!(rig.interrupt_mask(), 1);
    assert!(recv(&mut guest).is_none());

    // The disk finishes: below the threshold again, unmasked.
    latch.release();
    host.process().unwrap();
    assert_eq!(host.in_flight(), 0);
    assert!(!host.poll_mode());
    assert_eq!(rig.interrupt_mask(), 0);
    let mut tids: Vec<u64> = core::iter::from_fn(|| recv(&mut guest))
        .map(|r| {
            assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));
            r.tid
        })
        .collect();
    tids.sort();
    assert_eq!(tids, [1, 2, 3]);
    // Unmasked: the guest signals again.
    let signals = rig.host_sig.count();
    send_read(&mut guest, 4);
    assert_eq!(rig.host_sig.count(), signals + 1);
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
        let rig = Rig::new(ControllerConfig {
            poll_mode_queue_depth: depth,
            ..ControllerConfig::default()
        });
        let latch = Latch::default();
        rig.attach_slow(0, Arc::new(latch.clone()));
        let (mut host, mut guest) = (rig.host(), rig.guest());
        negotiate(&mut host, &mut guest, Version::WIN8);
        // Idle: never masked, whatever the threshold (0 counts as 1).
        assert_eq!(rig.interrupt_mask(), 0, "depth {depth}");
        let req = request(0, &read10(0, 1), DataDirection::READ, 512);
        send_srb(&mut guest, 9, &req, RequestSize::Win8, &[(DATA, 512)]);
        host.process().unwrap();
        assert_eq!(host.in_flight(), 1);
        assert_eq!(host.poll_mode(), expect_masked, "depth {depth}");
        assert_eq!(rig.interrupt_mask(), u32::from(expect_masked));
        latch.release();
        host.process().unwrap();
        assert_eq!(rig.interrupt_mask(), 0);
        assert_eq!(recv(&mut guest).unwrap().tid, 9);
    }
}

/// A waker that counts its wakes.
#[derive(Default)]
struct WakeCount(core::sync::atomic::AtomicUsize);

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
    let rig = Rig::new(ControllerConfig::default());
    let latch = Latch::default();
    rig.attach_slow(0, Arc::new(latch.clone()));
    rig.attach(1, 64);
    let mut host = rig.host();
    let wakes = Arc::new(WakeCount::default());
    let waker = core::task::Waker::from(wakes.clone());
    let mut cx = core::task::Context::from_waker(&waker);
    let mut run = Box::pin(host.run(&rig.host_sig));
    let mut guest = rig.guest();
    let version = ProtocolVersion::new(Version::WIN8);
    for (i, (op, payload)) in win8_steps(&version).into_iter().enumerate() {
        send(&mut guest, i as u64, op, payload);
        assert!(run.as_mut().poll(&mut cx).is_pending());
        assert_eq!(recv(&mut guest).unwrap().tid, i as u64);
    }
    assert_eq!(rig.interrupt_mask(), 0);

    // A request to the slow disk: outstanding, so the worker masks and
    // goes to sleep.
    let slow = request(0, &read10(0, 1), DataDirection::READ, 512);
    send_srb(&mut guest, 10, &slow, RequestSize::Win8, &[(DATA, 512)]);
    assert!(run.as_mut().poll(&mut cx).is_pending());
    assert_eq!(rig.interrupt_mask(), 1);
    wakes.take();

    // A request to the fast disk while masked: the guest does not signal
    // it, and nothing wakes the sleeping worker.
    let signals = rig.host_sig.count();
    let fast = request(1, &read10(0, 1), DataDirection::READ, 512);
    send_srb(
        &mut guest,
        11,
        &fast,
        RequestSize::Win8,
        &[(DATA + 4096, 512)],
    );
    assert_eq!(rig.host_sig.count(), signals);
    assert_eq!(wakes.take(), 0);
    assert!(recv(&mut guest).is_none());

    // The completion wakes the worker, which polls the ring and finds the
    // unsignalled packet; then in-flight drops to 0 and it unmasks.
    latch.release();
    assert!(wakes.take() > 0);
    assert!(run.as_mut().poll(&mut cx).is_pending());
    let mut tids = [recv(&mut guest).unwrap(), recv(&mut guest).unwrap()].map(|r| {
        assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));
        r.tid
    });
    tids.sort();
    assert_eq!(tids, [10, 11]);
    assert_eq!(rig.interrupt_mask(), 0);

    // Unmasked: signalled packets are served as before.
    wakes.take();
    let signals = rig.host_sig.count();
    send_srb(
        &mut guest,
        12,
        &fast,
        RequestSize::Win8,
        &[(DATA + 4096, 512)],
    );
    assert_eq!(rig.host_sig.count(), signals + 1);
    assert!(wakes.take() > 0);
    assert!(run.as_mut().poll(&mut cx).is_pending());
    assert_eq!(recv(&mut guest).unwrap().tid, 12);

    guest
        .write_packet(
            OutgoingKind::InBand {
                completion_requested: true,
            },
            99,
            &[0xEE; 16],
        )
        .unwrap();
    match run.as_mut().poll(&mut cx) {
        core::task::Poll::Ready(StorvspError::Packet {
            transaction_id: 99, ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn transfers_over_max_transfer_bytes_are_invalid_requests() {
    let rig = Rig::new(ControllerConfig {
        max_transfer_bytes: 4096,
        ..ControllerConfig::default()
    });
    rig.attach(0, 64);
    let (mut host, mut guest) = (rig.host(), rig.guest());
    let r = negotiate_to(&mut host, &mut guest, Version::WIN8, S::EndInitialization).unwrap();
    assert_eq!(properties(&r).max_transfer_bytes.get(), 4096);
    negotiate(&mut host, &mut guest, Version::WIN8);

    // Over the limit: refused without touching the disk.
    rig.mem.write(DATA, &[0xAA; 8192]).unwrap();
    let req = request(0, &write10(0, 16), DataDirection::WRITE, 8192);
    let r = srb(&mut host, &mut guest, 10, &req, &[(DATA, 8192)]);
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::INVALID_REQUEST));
    assert_eq!(r.srb().data_transfer_length.get(), 0);
    assert_ne!(r.status(), NtStatus::SUCCESS);
    // One byte over, with no buffer checks reached.
    let req = request(0, &read10(0, 9), DataDirection::READ, 4097);
    let r = srb(&mut host, &mut guest, 11, &req, &[(DATA, 8192)]);
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::INVALID_REQUEST));

    // Exactly the limit is served; the refused write left no trace.
    rig.mem.write(DATA, &[0x55; 4096]).unwrap();
    let req = request(0, &read10(0, 8), DataDirection::READ, 4096);
    let r = srb(&mut host, &mut guest, 12, &req, &[(DATA, 4096)]);
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));
    assert_eq!(r.srb().data_transfer_length.get(), 4096);
    let mut back = [0xFFu8; 4096];
    rig.mem.read(DATA, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
}

#[test]
fn fc_hba_data_is_refused_without_ending_the_channel() {
    let full = [0u8; core::mem::size_of::<parastor_hw::storvsp::FcWwnPacket>()];
    let rig = Rig::new(ControllerConfig {
        max_sub_channels: 1,
        ..ControllerConfig::default()
    });
    rig.attach(0, 64);
    let (mut host, mut guest) = (rig.host(), rig.guest());
    // Before negotiation, with a full or a short (even empty) payload: the
    // state does not move.
    for payload in [&full[..], &full[..4], &[]] {
        let r = call(&mut host, &mut guest, 7, Operation::FC_HBA_DATA, payload);
        assert_eq!(r.status(), NtStatus::INVALID_DEVICE_STATE);
        assert_eq!(r.body.len(), 0x24);
        assert_eq!(rig.controller.state(), S::Begin);
    }
    negotiate_to(&mut host, &mut guest, Version::WIN8, S::QueryVersion);
    let r = call(&mut host, &mut guest, 8, Operation::FC_HBA_DATA, &full);
    assert_eq!(r.status(), NtStatus::INVALID_DEVICE_STATE);
    assert_eq!(rig.controller.state(), S::QueryVersion);
    // Negotiate from QueryVersion on.
    negotiate(&mut host, &mut guest, Version::WIN8);
    // Ready: still refused, with a completion of the negotiated size.
    for payload in [&full[..], &[]] {
        let r = call(&mut host, &mut guest, 9, Operation::FC_HBA_DATA, payload);
        assert_eq!(r.status(), NtStatus::INVALID_DEVICE_STATE);
        assert_eq!(r.body.len(), 0x34);
    }
    assert_eq!(rig.controller.state(), NegotiationState::Ready);
    // The channel goes on serving I/O.
    let req = request(0, &read10(0, 1), DataDirection::READ, 512);
    let r = srb(&mut host, &mut guest, 10, &req, &[(DATA, 512)]);
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));
    // A sub-channel answers the same.
    let (incoming, outgoing) = init_ring_pair(&rig.mem, BASE + 8 * RING, RING).unwrap();
    let mut sub = StorvspChannel::sub_channel(
        rig.controller.clone(),
        Channel::host(&rig.mem, incoming, outgoing, &rig.guest_sig).unwrap(),
    );
    let mut sub_guest = Channel::guest(&rig.mem, incoming, outgoing, &rig.host_sig).unwrap();
    let r = call(&mut sub, &mut sub_guest, 11, Operation::FC_HBA_DATA, &[]);
    assert_eq!(r.status(), NtStatus::INVALID_DEVICE_STATE);
    let r = srb(&mut sub, &mut sub_guest, 12, &req, &[(DATA, 512)]);
    assert_eq!(r.srb().srb_status, srb_byte(SrbStatus::SUCCESS));
}

/// A detached LUN is not kept open by a channel that addressed it last:
/// the LUN change drops the channel's cached reference even when the guest
/// sends nothing more.
#[test]
fn detached_lun_is_released_by_idle_channels() {
    let rig = Rig::new(ControllerConfig::default());
    let disk = rig.attach(0, 64);
    let (mut host, mut guest) = (rig.host(), rig.guest());
    negotiate(&mut host, &mut guest, Version::WIN8);
    let req = request(0, &read10(0, 1), DataDirection::READ, 512);
    send_srb(&mut guest, 1, &req, RequestSize::Win8, &[(DATA, 512)]);
    host.process().unwrap();
    assert_eq!(
        recv(&mut guest).unwrap().srb().srb_status,
        srb_byte(SrbStatus::SUCCESS)
    );
    let held = Arc::strong_count(&disk);
    assert!(rig.controller.remove(ScsiPath::new(0, 0, 0)).is_some());
    host.process().unwrap();
    // Only the test's handle is left.
    assert!(held > 1);
    assert_eq!(Arc::strong_count(&disk), 1);
}
