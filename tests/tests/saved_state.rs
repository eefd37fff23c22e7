//! Saved state of every component: golden blobs of each version, the
//! envelope's refusals on real blobs, validation errors that name their
//! field, and which disks survive a restart.
//!
//! Golden blobs live in `tests/state/<component>-v<version>.bin`. Each is
//! decoded and compared with the value built here, and the value is
//! encoded and compared with the blob: a field added, removed, reordered
//! or retyped in a `…V1` struct fails this test instead of a servicing
//! restore. Changing a saved struct means a new version (see
//! `parastor_core::state`), with its own golden blob: run this test once
//! with `PARASTOR_BLESS_STATE=1` to write blobs that do not exist yet
//! (existing ones are never overwritten).

use parastor_core::prwrap::{RegistrationV1, ReservationV1, ReservationsV1};
use parastor_core::state::{self, StateError, Versioned};
use parastor_core::{Disk, InitiatorId, ReservationsDisk};
use parastor_scsi::state::{DvdV1, ScsiDiskV1, SenseEntryV1, SenseV1};
use parastor_scsi::{DiskParams, ScsiDisk, ScsiDvd};
use parastor_storvsp::state::{ChannelV1, ControllerV1, DeviceV1, LunV1, NegotiationV1, Volatile};
use parastor_storvsp::{Controller, ControllerConfig, ScsiPath};
use parastor_tests::fuzz_state::{
    RING_BASE, RING_SIZE, restore_channel, restore_controller, restore_dvd, restore_reservations,
    restore_rings, restore_scsi_disk,
};
use parastor_tests::stacks::{disk, file_disk, layer, layered, ram_disk, ram_layer, striped};
use parastor_vmbus::state::{ChannelRingsV1, RingV1};
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;

const A: InitiatorId = InitiatorId::new(0xA);
const B: InitiatorId = InitiatorId::new(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);

fn golden_reservations() -> ReservationsV1 {
    ReservationsV1 {
        generation: 7,
        registrations: vec![
            RegistrationV1 {
                initiator: A.to_bytes(),
                key: 0xAAAA,
            },
            RegistrationV1 {
                initiator: B.to_bytes(),
                key: u64::MAX,
            },
        ],
        reservation: Some(ReservationV1 {
            kind: 5,
            holder: Some(B.to_bytes()),
        }),
        aptpl: false,
    }
}

fn sense(who: InitiatorId, key: u8, asc: u8, information: Option<u64>) -> SenseEntryV1 {
    SenseEntryV1 {
        initiator: who.to_bytes(),
        sense: SenseV1 {
            key,
            asc,
            ascq: 1,
            information,
        },
    }
}

fn golden_scsi_disk() -> ScsiDiskV1 {
    ScsiDiskV1 {
        sense: vec![sense(A, 5, 0x24, None), sense(B, 0xE, 0x1D, Some(513))],
        known_sectors: 0x1_0000_0001,
    }
}

fn golden_dvd() -> DvdV1 {
    DvdV1 {
        media_present: true,
        tray_open: false,
        prevent_removal: true,
        pending_event: 1,
        unit_attention: true,
        sense: vec![sense(B, 2, 0x3A, Some(u64::MAX))],
    }
}

fn golden_rings() -> ChannelRingsV1 {
    ChannelRingsV1 {
        incoming: RingV1 {
            gpa: RING_BASE,
            size: RING_SIZE,
            own_index: 1024,
        },
        outgoing: RingV1 {
            gpa: RING_BASE + RING_SIZE,
            size: RING_SIZE,
            own_index: 4088,
        },
    }
}

fn golden_controller() -> ControllerV1 {
    ControllerV1 {
        negotiation: NegotiationV1 {
            state: 4,
            version: Some(0x0600),
            sub_channels: Some(3),
        },
        luns: vec![
            LunV1 {
                path: [0, 0, 0],
                device: DeviceV1::Disk(golden_scsi_disk()),
                reservations: Some(golden_reservations()),
            },
            LunV1 {
                path: [0, 0, 1],
                device: DeviceV1::Dvd(golden_dvd()),
                reservations: None,
            },
        ],
    }
}

fn golden_channel() -> ChannelV1 {
    ChannelV1 {
        primary: true,
        rings: golden_rings(),
        enumerate_pending: true,
    }
}

fn golden_driver_queue(qid: u16) -> parastor_nvme_driver::state::QueueV1 {
    parastor_nvme_driver::state::QueueV1 {
        qid,
        size: 32,
        sq: 0x10_0000 + u64::from(qid) * 0x1_0000,
        cq: 0x10_2000 + u64::from(qid) * 0x1_0000,
        lists: 0x10_4000 + u64::from(qid) * 0x1_0000,
        sq_tail: 5,
        sq_head: 3,
        cq_head: 3,
        phase: true,
        cq_unannounced: 1,
        cq_announced: 2,
        seqs: (0..24).map(|i| i % 64).collect(),
        commands: vec![
            parastor_nvme_driver::state::CommandV1 {
                slot: 3,
                memory: Some((0x20_0000, 0x1000)),
                event_request: false,
            },
            parastor_nvme_driver::state::CommandV1 {
                slot: 4,
                memory: None,
                event_request: qid == 0,
            },
        ],
    }
}

fn golden_driver() -> parastor_nvme_driver::state::DriverV1 {
    parastor_nvme_driver::state::DriverV1 {
        cap: 0x0000_0020_3c03_07ff,
        facts: parastor_nvme_driver::state::FactsV1 {
            cntlid: 1,
            vid: 0x1b36,
            serial: String::from("deadbeef"),
            model: String::from("QEMU NVMe Ctrl"),
            firmware: String::from("10.0.2"),
            nn: 256,
            oncs: 0x015f,
            sgls: 1,
            max_transfer: 512 * 1024,
            volatile_write_cache: true,
            io_queues: 2,
        },
        admin: golden_driver_queue(0),
        io: vec![golden_driver_queue(1), golden_driver_queue(2)],
        io_count: 2,
        shadow: Some((0x30_0000, 0x30_1000)),
    }
}

fn restore_driver(blob: &[u8]) -> Result<parastor_nvme_driver::state::DriverV1, StateError> {
    parastor_nvme_driver::state::DriverV1::decode(blob)
}

fn golden_path<T: Versioned>() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("state")
        .join(format!("{}-v{}.bin", T::COMPONENT, T::VERSION))
}

/// The golden blob of `T`'s version, checked against `value` both ways.
fn golden<T: Versioned + PartialEq + Debug>(value: &T) -> Vec<u8> {
    let path = golden_path::<T>();
    let encoded = state::encode(value).unwrap();
    if !path.exists() && std::env::var_os("PARASTOR_BLESS_STATE").is_some() {
        std::fs::write(&path, &encoded).unwrap();
    }
    let blob = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; a new version needs its golden blob (PARASTOR_BLESS_STATE=1)",
            path.display()
        )
    });
    assert_eq!(
        state::decode::<T>(&blob).as_ref(),
        Ok(value),
        "{} no longer decodes to the same value: a saved struct changed without a new version",
        path.display()
    );
    assert_eq!(
        encoded,
        blob,
        "{}: the encoding of the same value changed",
        path.display()
    );
    blob
}

#[test]
fn golden_blobs_decode_and_restore() {
    let blob = golden(&golden_reservations());
    assert_eq!(restore_reservations(&blob), Ok(golden_reservations()));
    let blob = golden(&golden_scsi_disk());
    assert_eq!(restore_scsi_disk(&blob), Ok(golden_scsi_disk()));
    let blob = golden(&golden_dvd());
    assert_eq!(restore_dvd(&blob), Ok(golden_dvd()));
    let blob = golden(&golden_rings());
    assert_eq!(restore_rings(&blob), Ok(golden_rings()));
    let blob = golden(&golden_controller());
    assert_eq!(restore_controller(&blob), Ok(golden_controller()));
    let blob = golden(&golden_channel());
    assert_eq!(restore_channel(&blob), Ok(golden_channel()));
    let blob = golden(&golden_driver());
    assert_eq!(restore_driver(&blob), Ok(golden_driver()));
}

type Restore<T> = fn(&[u8]) -> Result<T, StateError>;

/// Every prefix of a valid blob is refused as truncated, every flipped
/// bit of its payload or checksum as damaged, and a byte more as
/// trailing.
fn envelope_refusals<T: Versioned + Debug>(value: &T, restore: Restore<T>) {
    let blob = state::encode(value).unwrap();
    assert!(restore(&blob).is_ok());
    for n in 0..blob.len() {
        match restore(&blob[..n]) {
            Err(StateError::Truncated { got, .. }) => assert_eq!(got, n),
            other => panic!("{}: prefix of {n} bytes: {other:?}", T::COMPONENT),
        }
    }
    let payload_at = state::envelope_len(T::COMPONENT.len()) - 4;
    for byte in 0..blob.len() {
        for bit in 0..8 {
            let mut m = blob.clone();
            m[byte] ^= 1 << bit;
            let e = restore(&m).expect_err("a damaged blob is refused");
            if byte >= payload_at {
                assert!(
                    matches!(e, StateError::Checksum { component, .. } if component == T::COMPONENT),
                    "{}: byte {byte} bit {bit}: {e:?}",
                    T::COMPONENT
                );
            }
        }
    }
    let mut long = blob.clone();
    long.extend_from_slice(b"more");
    assert!(matches!(
        restore(&long),
        Err(StateError::TrailingBytes { .. })
    ));
}

#[test]
fn envelope_refuses_truncated_damaged_and_long_blobs() {
    envelope_refusals(&golden_reservations(), restore_reservations);
    envelope_refusals(&golden_scsi_disk(), restore_scsi_disk);
    envelope_refusals(&golden_dvd(), restore_dvd);
    envelope_refusals(&golden_rings(), restore_rings);
    envelope_refusals(&golden_controller(), restore_controller);
    envelope_refusals(&golden_channel(), restore_channel);
    envelope_refusals(&golden_driver(), restore_driver);
}

/// Blobs with a valid envelope and checksum whose values are wrong: each
/// refused as invalid, naming the component and the field.
fn invalid<T: Versioned + Debug>(cases: Vec<(&str, T)>, restore: Restore<T>) {
    for (field, value) in cases {
        let blob = state::encode(&value).unwrap();
        match restore(&blob) {
            Err(StateError::Invalid { component, error }) => {
                assert_eq!(component, T::COMPONENT);
                assert_eq!(error.field, field, "{value:?}: {error}");
                let text = StateError::Invalid { component, error }.to_string();
                assert!(
                    text.contains(T::COMPONENT) && text.contains(field),
                    "{text}"
                );
            }
            other => panic!("{}: {field}: {other:?}", T::COMPONENT),
        }
    }
}

#[test]
fn validation_names_the_field() {
    let g = golden_reservations();
    let mut dup = g.clone();
    dup.registrations[1].initiator = A.to_bytes();
    let mut zero = g.clone();
    zero.registrations[0].key = 0;
    invalid(
        vec![
            ("registrations[1].initiator", dup),
            ("registrations[0].key", zero),
            (
                "reservation.kind",
                ReservationsV1 {
                    reservation: Some(ReservationV1 {
                        kind: 4,
                        holder: Some(A.to_bytes()),
                    }),
                    ..g.clone()
                },
            ),
            (
                "reservation.holder",
                ReservationsV1 {
                    reservation: Some(ReservationV1 {
                        kind: 1,
                        holder: Some(InitiatorId::new(0xC).to_bytes()),
                    }),
                    ..g.clone()
                },
            ),
            (
                "aptpl",
                ReservationsV1 {
                    aptpl: true,
                    ..g.clone()
                },
            ),
        ],
        restore_reservations,
    );

    let g = golden_scsi_disk();
    let mut key = g.clone();
    key.sense[1].sense.key = 0x10;
    let mut dup = g.clone();
    dup.sense[1].initiator = A.to_bytes();
    invalid(
        vec![("sense[1].sense.key", key), ("sense[1].initiator", dup)],
        restore_scsi_disk,
    );

    let g = golden_dvd();
    invalid(
        vec![
            (
                "tray_open",
                DvdV1 {
                    tray_open: true,
                    ..g.clone()
                },
            ),
            (
                "pending_event",
                DvdV1 {
                    pending_event: 9,
                    ..g.clone()
                },
            ),
            (
                "unit_attention",
                DvdV1 {
                    media_present: false,
                    ..g.clone()
                },
            ),
        ],
        restore_dvd,
    );

    let g = golden_rings();
    let mut misaligned = g;
    misaligned.incoming.own_index = 1020;
    let mut outside = g;
    outside.outgoing.gpa = 1 << 40;
    let mut size = g;
    size.outgoing.size = 100;
    let g = golden_controller();
    let mut moved = g.clone();
    moved.luns[1].path = [0, 0, 7];
    let mut swapped = g.clone();
    swapped.luns[0].device = DeviceV1::Dvd(golden_dvd());
    let mut version = g.clone();
    version.negotiation.version = Some(0x0A00);
    invalid(
        vec![
            ("luns[1].path", moved),
            ("luns[0].device", swapped),
            ("negotiation.version", version),
        ],
        restore_controller,
    );

    invalid(
        vec![
            ("incoming.own_index", misaligned),
            ("outgoing.gpa", outside),
            ("outgoing.size", size),
        ],
        restore_rings,
    );

    let c = golden_channel();
    let mut sub_rescan = c;
    sub_rescan.primary = false;
    let mut ring_outside = c;
    ring_outside.rings.incoming.gpa = 1 << 40;
    let mut ring_index = c;
    ring_index.rings.outgoing.own_index = 4;
    let mut ring_size = c;
    ring_size.rings.outgoing.size = 12345;
    invalid(
        vec![
            ("enumerate_pending", sub_rescan),
            ("rings.incoming.gpa", ring_outside),
            ("rings.outgoing.own_index", ring_index),
            ("rings.outgoing.size", ring_size),
        ],
        restore_channel,
    );
}

/// A controller whose LUNs are all host-backed saves for servicing; one
/// with a RAM layer under a LUN refuses, naming the LUN and the layer.
#[test]
fn controller_save_refuses_volatile_luns() {
    let c = Controller::new(ControllerConfig::default());
    let file = file_disk(64, 512, false);
    c.attach(
        ScsiPath::new(0, 0, 0),
        Arc::new(ScsiDisk::new(file.clone(), DiskParams::default())),
    )
    .unwrap();
    c.attach(
        ScsiPath::new(0, 0, 2),
        Arc::new(ScsiDvd::new(Some(file_disk(8, 2048, true))).unwrap()),
    )
    .unwrap();
    let saved = c.save(Volatile::Refuse).unwrap();
    assert_eq!(saved.luns.len(), 2);

    let memdiff = layered(
        false,
        vec![ram_layer(false, false), layer(file, false, false)],
    );
    c.attach(
        ScsiPath::new(0, 1, 0),
        Arc::new(ScsiDisk::new(memdiff, DiskParams::default())),
    )
    .unwrap();
    let e = c.save(Volatile::Refuse).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot save LUN 0:1:0 (layer 0): its ram disk keeps its contents in this process and would not survive the restart"
    );
    assert_eq!(c.save(Volatile::Allow).unwrap().luns.len(), 3);
}

/// Which disks survive a restart of the service, and which part of a
/// stack does not.
#[test]
fn volatile_disks_are_found_in_any_stack() {
    let ram = ram_disk(64, 512);
    assert_eq!(ram.volatile_part(), Some((String::new(), "ram")));
    let file = file_disk(64, 512, false);
    assert!(file.survives_restart());
    assert_eq!(file.volatile_part(), None);

    // A RAM layer over a file (memdiff): the layer is named.
    let memdiff = layered(
        false,
        vec![ram_layer(false, false), layer(file.clone(), false, false)],
    );
    assert_eq!(memdiff.volatile_part(), Some(("layer 0".into(), "ram")));
    // Two host layers, and a stripe of files: both survive.
    let two = layered(
        false,
        vec![
            layer(file_disk(64, 512, false), false, false),
            layer(file.clone(), false, false),
        ],
    );
    assert!(two.survives_restart());
    let stripe = striped(
        vec![file_disk(64, 512, false), file_disk(64, 512, false)],
        Some(4096),
        None,
    );
    assert!(stripe.survives_restart());
    // A stripe with a RAM member, under reservations: the path says where.
    let mixed = striped(vec![file.clone(), ram_disk(64, 512)], Some(4096), None);
    let pr: Disk = disk(ReservationsDisk::new(mixed));
    assert_eq!(pr.volatile_part(), Some(("inner/member 1".into(), "ram")));
    assert!(!pr.survives_restart());
}
