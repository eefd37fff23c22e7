//! The driver model against StorVSP and against scripted hosts that
//! answer with the wrong sizes: each profile accepts what its real driver
//! accepts and reports what it would drop.

use super::*;
use crate::vm::{StorvspVm, VmConfig};
use parastor_hw::storvsp::{SrbStatus, SrbStatusAndFlags, Version};
use parastor_storvsp::{Controller, ControllerConfig};
use std::sync::Arc;

/// Versions StorVSP does not accept (4.3 and 1.0).
const UNNAMED_4_3: Version = Version::from_parts(4, 3);
const UNNAMED_1_0: Version = Version::from_parts(1, 0);

fn vm(max_sub_channels: u16) -> StorvspVm {
    StorvspVm::new(
        Arc::new(Controller::new(ControllerConfig {
            max_sub_channels,
            ..ControllerConfig::default()
        })),
        VmConfig::default(),
    )
}

#[test]
fn every_profile_negotiates_with_storvsp() {
    for profile in Profile::ALL {
        let vm = vm(3);
        let mut g = vm.guest(GuestConfig::new(profile).cpus(4)).unwrap();
        g.negotiate().unwrap_or_else(|e| panic!("{profile}: {e}"));
        // Win10 is refused; Blue is the first accepted.
        assert_eq!(g.version(), Some(Version::BLUE), "{profile}");
        assert!(g.is_ready());
        assert_eq!(g.request_len(), 0x34, "{profile}");
        assert_eq!(g.channels(), 4, "{profile}: primary + 3 sub-channels");
        assert_eq!(vm.controller().sub_channels_requested(), Some(3));
    }
}

#[test]
fn older_versions_and_their_sizes() {
    for profile in [Profile::LinuxPre519, Profile::Windows] {
        for (offer, want) in [
            (&[Version::WIN7][..], Version::WIN7),
            (&[UNNAMED_4_3, Version::WIN6][..], Version::WIN6),
        ] {
            let vm = vm(2);
            let mut g = vm
                .guest(GuestConfig::new(profile).cpus(4).versions(offer))
                .unwrap();
            g.negotiate().unwrap();
            assert_eq!(g.version(), Some(want));
            assert_eq!(g.request_len(), 0x24);
            assert_eq!(g.channels(), 1, "no sub-channels before Win8");
        }
    }
    // Current Linux sends full-size packets on any version.
    let vm = vm(0);
    let mut g = vm
        .guest(GuestConfig::new(Profile::LinuxCurrent).versions(&[Version::WIN7]))
        .unwrap();
    g.negotiate().unwrap();
    assert_eq!(g.request_len(), 0x34);
}

#[test]
fn no_acceptable_version() {
    let vm = vm(0);
    let mut g = vm
        .guest(GuestConfig::new(Profile::Windows).versions(&[UNNAMED_1_0, Version::WIN10]))
        .unwrap();
    assert_eq!(g.negotiate(), Err(StorvscError::NoVersion));
}

/// A host that answers every packet with a completion of the size
/// `size(version)` returns (payload bytes after the header), accepting the
/// versions StorVSP accepts; SCSI requests succeed with no data.
struct SizedHost<'a> {
    ch: Channel<'a>,
    version: Option<Version>,
    size: fn(Option<Version>) -> usize,
}

impl<'a> Host<'a> for SizedHost<'a> {
    fn run(&mut self) -> Result<Progress, StorvscError> {
        let mut worked = false;
        while let Some(p) = self.ch.read_packet()? {
            worked = true;
            let op = Operation::new(u32::from_le_bytes(p.payload[..4].try_into().unwrap()));
            let mut body = [0u8; 0x34];
            let mut status = NtStatus::SUCCESS;
            // Sized by the version before this packet (OpenVMM switches
            // after answering QUERY_PROTOCOL_VERSION).
            let size = (self.size)(self.version);
            if op == Operation::QUERY_PROTOCOL_VERSION {
                let v = Version::new(u16::from_le_bytes([p.payload[12], p.payload[13]]));
                body[..2].copy_from_slice(&v.get().to_le_bytes());
                if v.is_supported() {
                    self.version = Some(v);
                } else {
                    status = NtStatus::REVISION_MISMATCH;
                }
            } else if op == Operation::EXECUTE_SRB {
                body.copy_from_slice(&p.payload[12..12 + 0x34]);
                body[2] = SrbStatusAndFlags::new()
                    .with_status(SrbStatus::SUCCESS)
                    .into_bits();
            }
            let mut packet = PacketHeader::new(Operation::COMPLETE_IO, PacketFlags::new(), status)
                .as_bytes()
                .to_vec();
            packet.extend_from_slice(&body[..size]);
            self.ch
                .write_packet(OutgoingKind::Completion, p.transaction_id, &packet)?;
        }
        Ok(if worked {
            Progress::Worked
        } else {
            Progress::Idle
        })
    }

    fn open_sub_channel(&mut self, index: u16) -> Result<Channel<'a>, StorvscError> {
        Err(StorvscError::NoSubChannel { index })
    }
}

fn sized_guest(
    vm: &StorvspVm,
    profile: Profile,
    size: fn(Option<Version>) -> usize,
) -> Storvsc<'_, SizedHost<'_>> {
    let host = SizedHost {
        ch: vm.host_channel(0).unwrap(),
        version: None,
        size,
    };
    Storvsc::new(
        GuestConfig::new(profile),
        vm.guest_channel(0).unwrap(),
        host,
        vm.data_area(),
    )
}

/// The rule StorVSP had before: the negotiated size, pre-Win8 before a
/// version is settled.
fn negotiated_size(version: Option<Version>) -> usize {
    version.map_or(0x24, |v| if v >= Version::WIN8 { 0x34 } else { 0x24 })
}

#[test]
fn the_old_negotiated_size_rule_fails_current_linux_only() {
    for profile in Profile::ALL {
        let vm = vm(0);
        let mut g = sized_guest(&vm, profile, negotiated_size);
        let r = g.negotiate();
        if profile == Profile::LinuxCurrent {
            // BEGIN_INITIALIZATION's 0x30-byte completion is dropped.
            assert_eq!(
                r,
                Err(StorvscError::Rejected {
                    channel: 0,
                    transaction_id: CONTROL_TRANSACTION_ID,
                    rejection: Rejection::TooShort {
                        len: 0x30,
                        min: 0x40
                    }
                })
            );
            assert_eq!(g.version(), None);
        } else {
            r.unwrap_or_else(|e| panic!("{profile}: {e}"));
        }
    }
}

#[test]
fn a_short_completion_is_rejected_by_every_profile() {
    for profile in Profile::ALL {
        let vm = vm(0);
        let mut g = sized_guest(&vm, profile, |_| 0x1C);
        let e = g.negotiate().unwrap_err();
        let want = match profile {
            Profile::Windows => Rejection::WrongSize {
                len: 0x28,
                expected: 0x30,
            },
            Profile::LinuxCurrent => Rejection::TooShort {
                len: 0x28,
                min: 0x40,
            },
            Profile::LinuxPre519 => Rejection::TooShort {
                len: 0x28,
                min: 0x30,
            },
        };
        assert_eq!(e.rejection(), Some(want), "{profile}");
    }
}

#[test]
fn windows_rejects_a_completion_of_another_size_than_it_sent() {
    // Always full size: too long for Windows before a version settles.
    let vm1 = vm(0);
    let mut g = sized_guest(&vm1, Profile::Windows, |_| 0x34);
    assert_eq!(
        g.negotiate().unwrap_err().rejection(),
        Some(Rejection::WrongSize {
            len: 0x40,
            expected: 0x30
        })
    );
    // Linux takes longer completions.
    for profile in [Profile::LinuxCurrent, Profile::LinuxPre519] {
        let vm = vm(0);
        sized_guest(&vm, profile, |_| 0x34).negotiate().unwrap();
    }
    // Always pre-Win8 size: too short for Windows (and Linux before 5.19)
    // once Blue is negotiated — QUERY_PROPERTIES is the first packet at
    // the new size.
    for profile in [Profile::Windows, Profile::LinuxPre519] {
        let vm = vm(0);
        let mut g = sized_guest(&vm, profile, |_| 0x24);
        let e = g.negotiate().unwrap_err();
        assert_eq!(g.version(), Some(Version::BLUE));
        assert!(
            matches!(
                e.rejection(),
                Some(Rejection::WrongSize {
                    len: 0x30,
                    expected: 0x40
                }) | Some(Rejection::TooShort {
                    len: 0x30,
                    min: 0x40
                })
            ),
            "{profile}: {e}"
        );
    }
}

#[test]
fn a_short_srb_completion_leaves_the_request_outstanding() {
    for profile in Profile::ALL {
        let vm = vm(0);
        // Right until the first SCSI request, then pre-Win8 size.
        let mut g = sized_guest(&vm, profile, negotiated_size);
        if profile == Profile::LinuxCurrent {
            g.host_mut().size = |_| 0x34;
        }
        g.negotiate().unwrap();
        g.host_mut().size = |_| 0x24;
        let req = g.scsi_request(0, &[0, 0, 0, 0, 0, 0], Direction::None, 0);
        g.submit(3, 0, &req, &[]).unwrap();
        g.flush().unwrap();
        g.run_host().unwrap();
        let e = g.reap(|_, _| panic!("{profile}: accepted")).unwrap_err();
        assert!(
            matches!(
                e,
                StorvscError::Rejected {
                    transaction_id: 4,
                    ..
                }
            ),
            "{profile}: {e}"
        );
        assert_eq!(g.outstanding(), 1, "{profile}: never completed");
        // The tag stays busy.
        assert_eq!(
            g.submit(3, 0, &req, &[]),
            Err(StorvscError::BadTag { tag: 3 })
        );
    }
}

#[test]
fn completions_for_unknown_or_zero_transactions_are_rejected() {
    let vm = vm(0);
    let mut g = vm.guest(GuestConfig::new(Profile::LinuxCurrent)).unwrap();
    g.negotiate().unwrap();
    let mut host = vm.host_channel(0).unwrap();
    let mut packet = PacketHeader::new(
        Operation::COMPLETE_IO,
        PacketFlags::new(),
        NtStatus::SUCCESS,
    )
    .as_bytes()
    .to_vec();
    packet.resize(0x40, 0);
    for (tid, want) in [
        (0, Rejection::ZeroTransactionId),
        (7, Rejection::UnknownTransaction),
    ] {
        host.write_packet(OutgoingKind::Completion, tid, &packet)
            .unwrap();
        assert_eq!(g.recv(0).unwrap_err().rejection(), Some(want));
    }
    // A notification with transaction id 0 is fine at 4 bytes for Linux.
    host.write_packet(
        OutgoingKind::InBand {
            completion_requested: false,
        },
        0,
        &Operation::ENUMERATE_BUS.get().to_le_bytes(),
    )
    .unwrap();
    let r = g.recv(0).unwrap().unwrap();
    assert_eq!(r.operation(), Operation::ENUMERATE_BUS);
    assert_eq!(g.enumerations(), 1);
}

/// Linux decides by the transaction id, not the packet type: id 0 with
/// `COMPLETE_IO` is invalid even in band, and id 0 with any other operation
/// is unsolicited, so a completion carrying one is ignored, not rejected.
#[test]
fn transaction_id_zero_is_judged_by_operation() {
    let vm = vm(0);
    let mut g = vm.guest(GuestConfig::new(Profile::LinuxCurrent)).unwrap();
    g.negotiate().unwrap();
    let mut host = vm.host_channel(0).unwrap();
    let packet = |op| {
        let mut p = PacketHeader::new(op, PacketFlags::new(), NtStatus::SUCCESS)
            .as_bytes()
            .to_vec();
        p.resize(0x40, 0);
        p
    };
    let in_band = OutgoingKind::InBand {
        completion_requested: false,
    };
    host.write_packet(in_band, 0, &packet(Operation::COMPLETE_IO))
        .unwrap();
    assert_eq!(
        g.recv(0).unwrap_err().rejection(),
        Some(Rejection::ZeroTransactionId)
    );
    host.write_packet(
        OutgoingKind::Completion,
        0,
        &packet(Operation::QUERY_PROPERTIES),
    )
    .unwrap();
    let r = g.recv(0).unwrap().unwrap();
    assert_eq!(r.operation(), Operation::QUERY_PROPERTIES);
    assert_eq!(g.enumerations(), 0);
}

#[test]
fn lean_path_round_trip_on_every_channel() {
    for profile in Profile::ALL {
        let vm = vm(2);
        let mut g = vm.guest(GuestConfig::new(profile).cpus(3)).unwrap();
        g.negotiate().unwrap();
        assert_eq!(g.channels(), 3);
        // TEST UNIT READY to a missing LUN on each channel, all queued
        // before one flush.
        let req = g.scsi_request(0, &[0; 6], Direction::None, 0);
        for tag in 0..6u16 {
            g.submit(tag, usize::from(tag % 3), &req, &[]).unwrap();
        }
        assert_eq!(g.outstanding(), 6);
        g.flush().unwrap();
        g.run_host().unwrap();
        let mut seen = Vec::new();
        g.reap(|tag, r| {
            assert_eq!(r.channel(), usize::from(tag % 3));
            assert_eq!(
                r.srb().srb_status,
                SrbStatusAndFlags::new().with_status(SrbStatus::INVALID_LUN)
            );
            assert_eq!(r.len(), 0x40);
            seen.push(tag);
        })
        .unwrap();
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2, 3, 4, 5], "{profile}");
        assert_eq!(g.outstanding(), 0);
        // Bad tags and channels are refused.
        assert_eq!(
            g.submit(256, 0, &req, &[]),
            Err(StorvscError::BadTag { tag: 256 })
        );
        assert_eq!(
            g.submit(0, 9, &req, &[]),
            Err(StorvscError::BadChannel { channel: 9 })
        );
        assert_eq!(g.wait_tag(5), Err(StorvscError::BadTag { tag: 5 }));
    }
}

#[test]
fn an_idle_host_that_never_answers_is_an_error_not_a_hang() {
    let vm = vm(0);
    let mut g = vm.guest(GuestConfig::new(Profile::Windows)).unwrap();
    g.negotiate().unwrap();
    // A request to a disk that is not there completes; a control packet
    // the worker has already ended on does not: close the worker first.
    g.channel_mut(0)
        .unwrap()
        .write_packet(
            OutgoingKind::InBand {
                completion_requested: true,
            },
            1,
            &[0xEE; 16],
        )
        .unwrap();
    assert!(matches!(
        g.control(Operation::RESET_BUS, &[]),
        Err(StorvscError::Host(_))
    ));
}
