//! End to end across threads: the StorVSP workers run on a
//! `parastor-runtime` thread ([`RuntimeHost`]), signalled through eventfds
//! both ways, while the emulated StorVSC guest drives them from the test
//! thread — under every guest [`Profile`] (current Linux, Linux before
//! 5.19, Windows).

use parastor_core::Disk;
use parastor_emulated::runtime_host::GUEST_WAIT_SLICE;
use parastor_emulated::storvsc::{Data, Srb, SrbReply};
use parastor_emulated::{GuestConfig, Profile, RuntimeHost, StorvscError, StorvspVm};
use parastor_hw::scsi::ScsiOp;
use parastor_hw::storvsp::{NtStatus, Version};
use parastor_scsi::{DiskParams, ScsiDisk};
use parastor_storvsp::{Controller, ControllerConfig, ScsiPath, StorvspError};
use parastor_tests::buf::{pattern, read_vec};
use parastor_tests::stacks::ram;
use parastor_vmbus::OutgoingKind;
use std::sync::Arc;
use std::time::Instant;

use parastor_tests::per_profile;

per_profile!(
    negotiates_and_serves_every_channel_from_the_runtime_thread,
    random_queued_workload_matches_the_model,
    a_channel_the_worker_ends_is_reported_to_the_guest,
);

/// LUN 0: 512-byte sectors.
const L512: u8 = 0;
/// LUN 1: 4096-byte sectors.
const L4K: u8 = 1;
const SECTORS: u64 = 1024;
/// Requests outstanding at once in the queued workload.
const QD: usize = 8;

/// A controller with a 512-byte and a 4096-byte-sector RAM disk.
fn controller(max_sub_channels: u16) -> (Arc<Controller>, Disk, Disk) {
    let c = Arc::new(Controller::new(ControllerConfig {
        max_sub_channels,
        ..ControllerConfig::default()
    }));
    let (_, d512) = ram(SECTORS, 512);
    let (_, d4k) = ram(SECTORS, 4096);
    for (lun, d) in [(L512, &d512), (L4K, &d4k)] {
        c.attach(
            ScsiPath::new(0, 0, lun),
            Arc::new(ScsiDisk::new(d.clone(), DiskParams::default())),
        )
        .unwrap();
    }
    (c, d512, d4k)
}

fn ss_of(lun: u8) -> usize {
    if lun == L4K { 4096 } else { 512 }
}

fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn good(r: &SrbReply) {
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.nt_status, NtStatus::SUCCESS);
}

fn negotiates_and_serves_every_channel_from_the_runtime_thread(profile: Profile) {
    let (c, d512, _) = controller(3);
    let vm = StorvspVm::with_defaults(c);
    let host = RuntimeHost::start(&vm).unwrap();
    assert!(!host.thread().is_current());
    let mut vsc = host
        .connect(GuestConfig::new(profile).cpus(4))
        .unwrap_or_else(|e| panic!("{profile}: {e}"));
    assert_eq!(vsc.version(), Some(Version::BLUE), "{profile}");
    let channels = vsc.channels();
    // Three sub-channels, their workers started on the runtime thread as
    // the guest opened them.
    assert_eq!(channels, 4, "{profile}");
    for ch in 0..channels {
        let data = pattern(7 + ch as u64, 0, 4, 512);
        let lba = 16 * ch as u64;
        let w = Srb::new(L512, &rw16(ScsiOp::WRITE16.get(), lba, 4), Data::Out(&data)).on(ch);
        good(&vsc.srb(&w).unwrap());
        let r = Srb::new(L512, &rw16(ScsiOp::READ16.get(), lba, 4), Data::In(2048))
            .on((ch + 1) % channels);
        let r = vsc.srb(&r).unwrap();
        good(&r);
        assert_eq!(r.data, data, "{profile}: channel {ch}");
        assert_eq!(read_vec(&d512, lba, 4).unwrap(), data);
    }
}

fn random_queued_workload_matches_the_model(profile: Profile) {
    let (c, d512, d4k) = controller(3);
    let vm = StorvspVm::with_defaults(c);
    let host = RuntimeHost::start(&vm).unwrap();
    let mut vsc = host
        .connect(GuestConfig::new(profile).cpus(4))
        .unwrap_or_else(|e| panic!("{profile}: {e}"));
    let mut rng = fastrand::Rng::with_seed(0x5EED_7777_0000_0004);
    let mut mismatches = 0usize;
    let mut requests = 0usize;
    for (lun, disk) in [(L512, &d512), (L4K, &d4k)] {
        let ss = ss_of(lun);
        let max_blocks = (0x8000 / ss).clamp(1, 16) as u64;
        let mut model = vec![0u8; SECTORS as usize * ss];
        for batch in 0..40u64 {
            // Up to QD requests in flight at once, on disjoint ranges so
            // their order does not matter to the model.
            let mut ranges: Vec<(u64, u64)> = Vec::new();
            while ranges.len() < QD {
                let blocks = 1 + rng.u64(..max_blocks);
                let lba = rng.u64(..SECTORS - blocks + 1);
                if ranges
                    .iter()
                    .all(|&(l, b)| lba + blocks <= l || l + b <= lba)
                {
                    ranges.push((lba, blocks));
                }
            }
            let mut writes = Vec::new();
            let mut reads = Vec::new();
            let datas: Vec<Option<Vec<u8>>> = ranges
                .iter()
                .enumerate()
                .map(|(i, &(lba, blocks))| {
                    rng.bool().then(|| {
                        pattern(
                            batch << 8 | i as u64 | u64::from(lun) << 32,
                            lba,
                            blocks,
                            ss as u32,
                        )
                    })
                })
                .collect();
            for (i, (&(lba, blocks), data)) in ranges.iter().zip(&datas).enumerate() {
                let ch = rng.usize(..vsc.channels());
                let tag = match data {
                    Some(d) => vsc.start(
                        &Srb::new(
                            lun,
                            &rw16(ScsiOp::WRITE16.get(), lba, blocks as u32),
                            Data::Out(d),
                        )
                        .on(ch),
                    ),
                    None => vsc.start(
                        &Srb::new(
                            lun,
                            &rw16(ScsiOp::READ16.get(), lba, blocks as u32),
                            Data::In(blocks as usize * ss),
                        )
                        .on(ch),
                    ),
                }
                .unwrap_or_else(|e| panic!("{profile}: {e}"));
                if data.is_some() {
                    writes.push((i, tag));
                } else {
                    reads.push((i, tag));
                }
            }
            assert_eq!(vsc.outstanding(), QD, "{profile}: QD {QD} in flight");
            // Collected in an order other than submission's.
            rng.shuffle(&mut reads);
            for (i, tag) in reads {
                let (lba, blocks) = ranges[i];
                let r = vsc.wait(tag).unwrap();
                good(&r);
                let range = lba as usize * ss..(lba + blocks) as usize * ss;
                if r.data != model[range] {
                    mismatches += 1;
                }
                requests += 1;
            }
            for (i, tag) in writes.into_iter().rev() {
                good(&vsc.wait(tag).unwrap());
                let (lba, blocks) = ranges[i];
                let range = lba as usize * ss..(lba + blocks) as usize * ss;
                if let Some(d) = &datas[i] {
                    model[range].copy_from_slice(d);
                }
                requests += 1;
            }
        }
        if read_vec(disk, 0, SECTORS).unwrap() != model {
            mismatches += 1;
        }
    }
    assert_eq!(requests, 2 * 40 * QD);
    assert_eq!(mismatches, 0, "{profile}");
}

fn a_channel_the_worker_ends_is_reported_to_the_guest(profile: Profile) {
    let (c, _, _) = controller(0);
    let vm = StorvspVm::with_defaults(c);
    let host = RuntimeHost::start(&vm).unwrap();
    let mut vsc = host
        .connect(GuestConfig::new(profile))
        .unwrap_or_else(|e| panic!("{profile}: {e}"));
    // A packet StorVSP cannot parse: the worker ends the channel.
    vsc.channel_mut(0)
        .unwrap()
        .write_packet(
            OutgoingKind::InBand {
                completion_requested: true,
            },
            99,
            &[0xEE; 16],
        )
        .unwrap();
    let e = loop {
        match vsc.run_host() {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            e,
            StorvscError::Host(StorvspError::Packet {
                transaction_id: 99,
                ..
            })
        ),
        "{profile}: {e:?}"
    );
}

/// The worker's completion signal wakes the guest: 50 requests one at a
/// time take far less than 50 of the guest's wait slices (each would if
/// the host → guest eventfd were never written and the guest only woke
/// when its slice ran out).
#[test]
fn completions_wake_the_guest_without_waiting_out_its_slice() {
    const REQUESTS: u32 = 50;
    let (c, _, _) = controller(0);
    let vm = StorvspVm::with_defaults(c);
    let host = RuntimeHost::start(&vm).unwrap();
    let mut vsc = host
        .connect(GuestConfig::new(Profile::LinuxCurrent))
        .unwrap();
    let t = Instant::now();
    for i in 0..u64::from(REQUESTS) {
        let r = Srb::new(L512, &rw16(ScsiOp::READ16.get(), i, 1), Data::In(512));
        good(&vsc.srb(&r).unwrap());
    }
    let elapsed = t.elapsed();
    assert!(
        elapsed < GUEST_WAIT_SLICE * REQUESTS / 4,
        "{REQUESTS} requests took {elapsed:?}: the guest waited out its slices"
    );
}
