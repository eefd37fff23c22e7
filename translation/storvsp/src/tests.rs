//! White-box tests: the packed negotiation word, the completion-size rule
//! and the SRB completion's sense handling. Everything a guest can
//! observe through the rings is tested end to end in
//! `tests/tests/storvsp_channel.rs` and `tests/tests/storvsp_e2e.rs`,
//! driven by the emulated StorVSC of `parastor-emulated` under each guest
//! profile.

extern crate std;

use super::channel::{sense_delivery, srb_completion};
use super::*;
use alloc::sync::Arc;
use parastor_core::Gpa;
use parastor_core::RamGuestMemory;
use parastor_hw::scsi::{AdditionalSense, ScsiStatus, SenseData, SenseKey};
use parastor_hw::storvsp::{
    NtStatus, Operation, PACKET_HEADER_LEN, PacketFlags, PacketHeader, ScsiRequest, SrbFlags,
    SrbStatus, SrbStatusAndFlags, Version,
};
use parastor_scsi::{ScsiResult, SenseDelivery};
use parastor_vmbus::{Channel, OutgoingKind, PacketKind, Signal, init_ring_pair};
use zerocopy::{FromZeros, IntoBytes};

/// The SRB status byte with `status` and no flags.
fn srb_byte(status: SrbStatus) -> SrbStatusAndFlags {
    SrbStatusAndFlags::new().with_status(status)
}

#[test]
fn protocol_word_round_trips() {
    use NegotiationState as S;
    for state in [
        S::Begin,
        S::QueryVersion,
        S::QueryProperties,
        S::EndInitialization,
        S::Ready,
    ] {
        for version in [None, Some(Version::WIN6), Some(Version::new(0xFFFF))] {
            for sub_channels in [None, Some(0), Some(u16::MAX)] {
                let p = Protocol {
                    state,
                    version,
                    sub_channels,
                };
                assert_eq!(Protocol::unpack(p.pack()), p);
            }
        }
    }
}

/// Sends one raw in-band packet of `op` with `payload_len` payload bytes
/// on a fresh primary channel whose controller stands at `proto`, and
/// returns the payload length of the completion (`None`: no completion).
fn completion_len(proto: Protocol, op: Operation, payload_len: usize) -> Option<usize> {
    let mem = RamGuestMemory::new(1 << 20);
    let (incoming, outgoing) = init_ring_pair(&mem, Gpa::new(0x10000), 0x4000).unwrap();
    let (to_host, to_guest) = (Signal::new(), Signal::new());
    let controller = Arc::new(Controller::new(ControllerConfig::default()));
    controller.update_protocol(|p| *p = proto);
    let mut host = StorvspChannel::primary(
        controller,
        Channel::host(&mem, incoming, outgoing, &to_guest).unwrap(),
    );
    let mut guest = Channel::guest(&mem, incoming, outgoing, &to_host).unwrap();
    let mut packet = PacketHeader::new(
        op,
        PacketFlags::new().with_request_completion(true),
        NtStatus::SUCCESS,
    )
    .as_bytes()
    .to_vec();
    packet.resize(PACKET_HEADER_LEN + payload_len, 0);
    guest
        .write_packet(
            OutgoingKind::InBand {
                completion_requested: true,
            },
            5,
            &packet,
        )
        .unwrap();
    host.process().unwrap();
    let p = guest.read_packet().unwrap()?;
    assert_eq!((p.kind, p.transaction_id), (PacketKind::Completion, 5));
    Some(p.payload.len() - PACKET_HEADER_LEN)
}

#[test]
fn a_completion_echoes_its_requests_size_whatever_the_version() {
    use NegotiationState as S;
    let at = |state, version| Protocol {
        state,
        version,
        sub_channels: None,
    };
    // Before a version: as sent (0x34 from current Linux, 0x24 from
    // Windows and older Linux), at most the 0x34-byte union. (VMBus
    // packets are whole 8-byte units: a bare 12-byte header arrives with
    // 4 bytes of padding, which count as payload — for Linux's `minlen`
    // too.)
    for (len, want) in [(0x34, 0x34), (0x24, 0x24), (0, 4), (0x44, 0x34)] {
        assert_eq!(
            completion_len(at(S::Begin, None), Operation::BEGIN_INITIALIZATION, len),
            Some(want),
            "{len:#x}-byte BEGIN_INITIALIZATION"
        );
    }
    // Refused out of state: the same rule.
    assert_eq!(
        completion_len(at(S::Begin, None), Operation::QUERY_PROPERTIES, 0x34),
        Some(0x34)
    );
    // A full-size request on a pre-Win8 channel is answered full size
    // (Linux 5.19+ on an old host); a pre-Win8-size one stays small.
    for (len, want) in [(0x34, 0x34), (0x24, 0x24)] {
        assert_eq!(
            completion_len(
                at(S::Ready, Some(Version::WIN7)),
                Operation::EXECUTE_SRB,
                len
            ),
            Some(want)
        );
        assert_eq!(
            completion_len(at(S::Ready, Some(Version::WIN7)), Operation::RESET_BUS, len),
            Some(want)
        );
    }
    assert_eq!(
        completion_len(
            at(S::Ready, Some(Version::BLUE)),
            Operation::EXECUTE_SRB,
            0x34
        ),
        Some(0x34)
    );
    // An SRB shorter than the negotiated size is not a request at all.
    assert_eq!(
        completion_len(
            at(S::Ready, Some(Version::BLUE)),
            Operation::RESET_LUN,
            0x24
        ),
        Some(0x24)
    );
}

/// `ENUMERATE_BUS`, which the host starts, has no request to echo: it is
/// sent at the negotiated size.
#[test]
fn enumerate_bus_uses_the_negotiated_size() {
    use NegotiationState as S;
    for (version, want) in [(Version::WIN7, 0x24), (Version::WIN8, 0x34)] {
        let mem = RamGuestMemory::new(1 << 20);
        let (incoming, outgoing) = init_ring_pair(&mem, Gpa::new(0x10000), 0x4000).unwrap();
        let (to_host, to_guest) = (Signal::new(), Signal::new());
        let controller = Arc::new(Controller::new(ControllerConfig::default()));
        controller.update_protocol(|p| {
            *p = Protocol {
                state: S::Ready,
                version: Some(version),
                sub_channels: None,
            }
        });
        let mut host = StorvspChannel::primary(
            controller.clone(),
            Channel::host(&mem, incoming, outgoing, &to_guest).unwrap(),
        );
        let mut guest = Channel::guest(&mem, incoming, outgoing, &to_host).unwrap();
        let disk =
            parastor_core::Disk::new(parastor_core::ram::RamDisk::new(4096, 512).unwrap()).unwrap();
        controller
            .attach(
                ScsiPath::new(0, 0, 0),
                Arc::new(parastor_scsi::ScsiDisk::new(
                    disk,
                    parastor_scsi::DiskParams::default(),
                )),
            )
            .unwrap();
        assert!(host.process().unwrap());
        let p = guest.read_packet().unwrap().unwrap();
        assert_eq!((p.kind, p.transaction_id), (PacketKind::InBand, 0));
        assert_eq!(p.payload.len() - PACKET_HEADER_LEN, want, "{version:#x}");
        assert_eq!(
            PacketHeader::new(
                Operation::ENUMERATE_BUS,
                PacketFlags::new(),
                NtStatus::SUCCESS
            )
            .as_bytes(),
            &p.payload[..PACKET_HEADER_LEN]
        );
    }
}

#[test]
fn sense_is_capped_to_the_sense_buffers() {
    let mut request = ScsiRequest::new_zeroed();
    request.sense_info_ex_length = 0x14;
    let check = SrbAnswer::Scsi(ScsiResult::check(SenseData::illegal(
        AdditionalSense::INVALID_FIELD_IN_CDB,
    )));
    for size in [RequestSize::PreWin8, RequestSize::Win8] {
        let (nt, out) = srb_completion(&request, &check, size);
        assert_eq!(nt, NtStatus::IO_DEVICE_ERROR);
        assert_eq!(out.scsi_status, ScsiStatus::CHECK_CONDITION);
        assert_eq!(
            out.srb_status,
            srb_byte(SrbStatus::ERROR).with_autosense_valid(true)
        );
        // 18 bytes of fixed-format sense fit either buffer (0x12, 0x14).
        let n = usize::from(out.sense_info_ex_length);
        assert_eq!(n, 18);
        assert!(n <= size.sense_buffer_len());
        assert_eq!(
            SenseData::parse(&out.payload[..n]).map(|s| s.key),
            Some(SenseKey::ILLEGAL_REQUEST)
        );
    }
    // The guest's own, smaller buffer.
    request.sense_info_ex_length = 8;
    let (_, out) = srb_completion(&request, &check, RequestSize::Win8);
    assert_eq!(out.sense_info_ex_length, 8);
    assert_eq!(out.payload[8..], [0; 12]);
    // DISABLE_AUTOSENSE is a Windows 8 field: honoured only there.
    request.srb_flags = SrbFlags::new().with_disable_autosense(true);
    let (_, out) = srb_completion(&request, &check, RequestSize::Win8);
    assert_eq!(out.srb_status, srb_byte(SrbStatus::ERROR));
    assert_eq!(out.sense_info_ex_length, 0);
    let (_, out) = srb_completion(&request, &check, RequestSize::PreWin8);
    assert_ne!(out.sense_info_ex_length, 0);
    // An SRB-level answer carries no SCSI status or data.
    let (nt, out) = srb_completion(
        &request,
        &SrbAnswer::Srb(SrbStatus::INVALID_LUN),
        RequestSize::Win8,
    );
    assert_eq!(nt, NtStatus::DEVICE_DOES_NOT_EXIST);
    assert_eq!(out.srb_status, srb_byte(SrbStatus::INVALID_LUN));
    assert_eq!(out.data_transfer_length.get(), 0);
}

/// The sense delivery a request runs with is exactly what its completion
/// does: `Autosense` when, and only when, the completion carries the sense
/// (so the LUN forgets only sense the guest received).
#[test]
fn sense_delivery_matches_what_the_completion_carries() {
    let check = SrbAnswer::Scsi(ScsiResult::check(SenseData::illegal(
        AdditionalSense::INVALID_FIELD_IN_CDB,
    )));
    let disabled = SrbFlags::new().with_disable_autosense(true);
    for size in [RequestSize::PreWin8, RequestSize::Win8] {
        for flags in [
            SrbFlags::new(),
            disabled,
            SrbFlags::from_bits(u32::MAX.into()),
        ] {
            for sense_len in [0u8, 1, 8, 0x12, 0x14, 0xFF] {
                let mut request = ScsiRequest::new_zeroed();
                request.srb_flags = flags;
                request.sense_info_ex_length = sense_len;
                let (_, out) = srb_completion(&request, &check, size);
                let carried = out.srb_status.autosense_valid();
                assert_eq!(carried, out.sense_info_ex_length > 0);
                let want = if carried {
                    SenseDelivery::Autosense
                } else {
                    SenseDelivery::RequestSense
                };
                assert_eq!(
                    sense_delivery(&request, size),
                    want,
                    "{size:?}, flags {flags:?}, sense buffer {sense_len}"
                );
            }
        }
    }
}

#[test]
fn command_futures_fit_their_slot() {
    use super::channel::{Command, run_command};
    use super::slots::SLOT_FUTURE_BYTES;
    use parastor_core::Disk;
    use parastor_core::ram::RamDisk;
    use parastor_scsi::{DiskParams, Lun, ScsiDisk, ScsiDvd};

    let mem = RamGuestMemory::new(1 << 20);
    let disk = Disk::new(RamDisk::new(1 << 16, 512).unwrap()).unwrap();
    let luns = [
        Lun::Disk(Arc::new(ScsiDisk::new(disk, DiskParams::default()))),
        Lun::Dvd(Arc::new(ScsiDvd::new(None).unwrap())),
    ];
    for lun in luns {
        let command = Command {
            disk: lun,
            cdb: [0; 16],
            cdb_len: 10,
            len: 512,
            writable: true,
            initiator: parastor_core::InitiatorId::new(1),
            delivery: SenseDelivery::Autosense,
            path: ScsiPath::new(0, 0, 0),
        };
        let future = run_command(
            parastor_vmbus::ChannelMemory::Borrowed(&mem),
            command,
            alloc::vec::Vec::new(),
        );
        let size = core::mem::size_of_val(&future);
        // Larger would box every request's future (an allocation each).
        assert!(
            size <= SLOT_FUTURE_BYTES,
            "a command future takes {size} bytes, its slot {SLOT_FUTURE_BYTES}"
        );
        assert!(core::mem::align_of_val(&future) <= 8);
    }
}

#[test]
fn a_drain_frees_queued_requests_and_keeps_submitted_ones() {
    use super::slots::{NewRequest, Phase, SlotFuture, Slots};
    use parastor_core::GpaRange;

    let mem = RamGuestMemory::new(1 << 20);
    let (incoming, outgoing) = init_ring_pair(&mem, Gpa::new(0x10000), 0x4000).unwrap();
    let signal = Signal::new();
    let mut channel = Channel::host(&mem, incoming, outgoing, &signal).unwrap();
    let ranges = [GpaRange::new(Gpa::new(0x8000), 512)];
    let mut slots = Slots::new(2);
    let mut take = |slots: &mut Slots<'_>, tid| {
        let reservation = channel.reserve(0x40).unwrap();
        slots
            .take(NewRequest {
                transaction_id: tid,
                reply_len: 0x34,
                srb: ScsiRequest::new_zeroed(),
                ranges: &ranges,
                lun: ScsiPath::new(0, 0, 1),
                reservation,
            })
            .ok()
            .unwrap()
    };
    let queued = take(&mut slots, 7);
    let submitted = take(&mut slots, 8);
    assert!(slots.is_full());
    assert_eq!(slots.record(queued).phase(), Phase::Queued);
    assert_eq!(slots.record(queued).ranges(), ranges);
    // A command still at its disk.
    let never = SlotFuture::from_or_box(core::future::pending());
    assert_eq!(slots.start(submitted, never), None);
    assert_eq!(slots.record(submitted).phase(), Phase::Submitted);
    let held = channel.writer().reserved();

    let mut released = alloc::vec::Vec::new();
    slots.release_queued(|r| {
        released.push(r.bytes());
        channel.release(r);
    });
    // Only the request that never started went, with its ring space.
    assert_eq!(released.len(), 1);
    assert_eq!(channel.writer().reserved(), held - released[0]);
    assert_eq!(slots.busy(), 1);
    let left: alloc::vec::Vec<_> = slots.records().map(|r| r.transaction_id()).collect();
    assert_eq!(left, [8]);
    assert_eq!(slots.record(submitted).lun(), ScsiPath::new(0, 0, 1));
}

/// A disk out of a shared resource (`DiskError::Busy`, answered TASK SET
/// FULL by the SCSI table) completes as `SRB_STATUS_BUSY` with
/// `STATUS_DEVICE_BUSY`, the SCSI status kept for Linux's midlayer, no
/// sense and no data.
#[test]
fn busy_disk_completes_srb_status_busy() {
    let mut request = ScsiRequest::new_zeroed();
    request.sense_info_ex_length = 0x14;
    request.data_transfer_length = 4096.into();
    let busy = SrbAnswer::Scsi(parastor_scsi::disk_error_result(
        &parastor_core::DiskError::Busy("staging budget"),
    ));
    let (nt, out) = srb_completion(&request, &busy, RequestSize::Win8);
    assert_eq!(nt, NtStatus::DEVICE_BUSY);
    assert_eq!(out.srb_status, srb_byte(SrbStatus::BUSY));
    assert_eq!(out.scsi_status, ScsiStatus::TASK_SET_FULL);
    assert_eq!(out.sense_info_ex_length, 0);
    assert_eq!(out.data_transfer_length.get(), 0);
}

/// A controller gives every LUN it attaches its one scratch pool: a WRITE
/// SAME on an attached disk draws from the controller's budget.
#[test]
fn attached_disks_share_the_controller_scratch_pool() {
    let controller = Controller::new(ControllerConfig::default());
    assert_eq!(
        controller.scratch().budget(),
        parastor_scsi::DEFAULT_SCRATCH_BUDGET
    );
    let mem = RamGuestMemory::new(1 << 20);
    for lun in 0..2u8 {
        let disk =
            parastor_core::Disk::new(parastor_core::ram::RamDisk::new(1 << 20, 512).unwrap())
                .unwrap();
        let scsi = Arc::new(parastor_scsi::ScsiDisk::new(
            disk,
            parastor_scsi::DiskParams::default(),
        ));
        controller
            .attach(ScsiPath::new(0, 0, lun), scsi.clone())
            .unwrap();
        // WRITE SAME(10) of 64 blocks from one block at GPA 0.
        let cdb = [0x41, 0, 0, 0, 0, 0, 0, 0, 64, 0];
        let ranges = [parastor_core::GpaRange::new(
            parastor_core::Gpa::new(0),
            512,
        )];
        let sg = parastor_core::SgList::new(&mem, &ranges, false).unwrap();
        let mut fut = core::pin::pin!(scsi.execute(
            &cdb,
            sg,
            parastor_core::InitiatorId::new(1),
            SenseDelivery::Autosense,
        ));
        let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
        let core::task::Poll::Ready(r) = fut.as_mut().poll(&mut cx) else {
            panic!("a RAM disk's WRITE SAME finishes in one poll");
        };
        assert_eq!(r.status, ScsiStatus::GOOD);
    }
    // Both LUNs' commands took (and reused) the controller's block.
    assert_eq!(controller.scratch().allocations(), 1);
    assert_eq!(controller.scratch().high_water(), 64 * 512);
}

#[test]
fn channel_state_carries_an_owed_rescan_and_refuses_what_cannot_be() {
    use NegotiationState as S;
    use parastor_core::state::SaveError;
    let shared = parastor_core::GuestMem::new(RamGuestMemory::new(1 << 20));
    let mem = &*shared;
    let (incoming, outgoing) = init_ring_pair(mem, Gpa::new(0x10000), 0x4000).unwrap();
    let (to_host, to_guest) = (Signal::new(), Arc::new(Signal::new()));
    let controller = Arc::new(Controller::new(ControllerConfig::default()));
    let ready = Protocol {
        state: S::Ready,
        version: Some(Version::WIN8),
        sub_channels: None,
    };
    controller.update_protocol(|p| *p = ready);
    let mut host = StorvspChannel::primary(
        controller.clone(),
        Channel::host(mem, incoming, outgoing, &*to_guest).unwrap(),
    );
    // Not quiesced: refused.
    assert!(matches!(host.save(), Err(SaveError::Busy { .. })));
    host.quiesce();
    assert!(host.is_quiesced());
    assert!(!host.save().unwrap().enumerate_pending);
    // A LUN hot-added while quiesced: the guest is owed a rescan, and the
    // quiesced worker does not send it.
    let disk =
        parastor_core::Disk::new(parastor_core::ram::RamDisk::new(4096, 512).unwrap()).unwrap();
    controller
        .attach(
            ScsiPath::new(0, 0, 0),
            Arc::new(parastor_scsi::ScsiDisk::new(
                disk,
                parastor_scsi::DiskParams::default(),
            )),
        )
        .unwrap();
    assert!(!host.process().unwrap());
    let saved = host.save().unwrap();
    assert!(saved.primary && saved.enumerate_pending);
    drop(host);

    let fresh = Arc::new(Controller::new(ControllerConfig::default()));
    fresh.update_protocol(|p| *p = ready);
    // The guest never asked for sub-channels: no sub-channel can be saved.
    let sub = state::ChannelV1 {
        primary: false,
        enumerate_pending: false,
        ..saved
    };
    let e = StorvspChannel::restore(fresh.clone(), mem, &*to_guest, &sub).unwrap_err();
    assert_eq!(e.field, "primary", "{e}");
    // Restored (owning its memory and signal), the worker sends the owed
    // ENUMERATE_BUS.
    let mut host: StorvspChannel<'static> =
        StorvspChannel::restore_owned(fresh, shared.clone(), to_guest.clone(), &saved).unwrap();
    let mut guest = Channel::guest(mem, incoming, outgoing, &to_host).unwrap();
    assert!(guest.read_packet().unwrap().is_none());
    assert!(host.process().unwrap());
    let p = guest.read_packet().unwrap().unwrap();
    assert_eq!((p.kind, p.transaction_id), (PacketKind::InBand, 0));
    assert_eq!(
        &p.payload[..PACKET_HEADER_LEN],
        PacketHeader::new(
            Operation::ENUMERATE_BUS,
            PacketFlags::new(),
            NtStatus::SUCCESS
        )
        .as_bytes()
    );
    assert!(guest.read_packet().unwrap().is_none(), "sent once");
}
