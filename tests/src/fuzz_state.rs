//! The `state_restore` fuzz harness: arbitrary bytes restored as every
//! component's saved state, into fresh objects.
//!
//! Each input is tried two ways for each component (persistent
//! reservations, SCSI disk, SCSI DVD, VMBus rings, StorVSP controller): as
//! a whole blob (so the
//! envelope checks are fuzzed), and as the payload of a valid envelope of
//! that component, version 1 (so the fuzzer gets past the checksum to the
//! decoder and the validation).
//!
//! Properties:
//! - nothing panics;
//! - a refused restore changes nothing: the object saves exactly what a
//!   fresh one saves;
//! - an accepted restore is exact: the object saves back the state it was
//!   given (the DVD drive is built with a medium when the state says one
//!   was loaded, so no media change intervenes).

use parastor_core::prwrap::ReservationsV1;
use parastor_core::ram::RamDisk;
use parastor_core::state::{self, StateError, Versioned};
use parastor_core::{Disk, RamGuestMemory, ReservationsDisk};
use parastor_scsi::state::{DvdV1, ScsiDiskV1};
use parastor_scsi::{DiskParams, ScsiDisk, ScsiDvd};
use parastor_storvsp::state::{ControllerV1, DeviceV1, Volatile};
use parastor_storvsp::{Controller, ControllerConfig, ScsiPath};
use parastor_vmbus::init_ring_pair;
use parastor_vmbus::state::ChannelRingsV1;
use std::sync::Arc;

/// Guest memory the ring states are restored into: two 8 KiB rings at
/// 64 KiB, 256 KiB in all.
const MEM_BYTES: u64 = 256 << 10;
/// Where the rings are.
pub const RING_BASE: u64 = 0x10000;
/// Size of each ring.
pub const RING_SIZE: u64 = 8192;

/// `payload` in a valid envelope of `T`'s component and version.
pub fn seal<T: Versioned>(payload: &[u8]) -> Vec<u8> {
    let name = T::COMPONENT.as_bytes();
    let mut b = Vec::with_capacity(state::envelope_len(name.len()) + payload.len());
    b.extend_from_slice(&state::MAGIC);
    b.push(name.len() as u8);
    b.extend_from_slice(name);
    b.extend_from_slice(&T::VERSION.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(payload);
    let crc = crc32(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// CRC-32 (IEEE), bit by bit: an independent check of the envelope's.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn ram(sectors: u64, ss: u32) -> Disk {
    Disk::new(RamDisk::new(sectors * u64::from(ss), ss).expect("RAM disk")).expect("disk")
}

/// Restores `blob` as persistent-reservation state into a fresh disk.
pub fn restore_reservations(blob: &[u8]) -> Result<ReservationsV1, StateError> {
    let d = ReservationsDisk::new(ram(8, 512));
    let fresh = d.save().expect("a fresh disk saves");
    let r = state::restore::<ReservationsV1, _>(blob, |s| d.restore(&s).map(|()| s));
    match &r {
        Ok(s) => assert_eq!(&d.save().expect("save"), s, "restore is exact"),
        Err(_) => assert_eq!(d.save().expect("save"), fresh, "a refusal changes nothing"),
    }
    r
}

/// Restores `blob` as SCSI disk state into a fresh adapter.
pub fn restore_scsi_disk(blob: &[u8]) -> Result<ScsiDiskV1, StateError> {
    let d = ScsiDisk::new(ram(8, 512), DiskParams::default());
    let fresh = d.save().expect("a fresh disk saves");
    let r = state::restore::<ScsiDiskV1, _>(blob, |s| d.restore(&s).map(|()| s));
    match &r {
        Ok(s) => assert_eq!(&d.save().expect("save"), s, "restore is exact"),
        Err(_) => assert_eq!(d.save().expect("save"), fresh, "a refusal changes nothing"),
    }
    r
}

/// Restores `blob` as DVD drive state into a fresh drive, loaded when the
/// state says a medium was.
pub fn restore_dvd(blob: &[u8]) -> Result<DvdV1, StateError> {
    let saved: DvdV1 = state::decode(blob)?;
    let media = saved.media_present.then(|| ram(4, 2048));
    let d = ScsiDvd::new(media).expect("DVD drive");
    let fresh = d.save().expect("a fresh drive saves");
    match d.restore(&saved) {
        Ok(()) => {
            assert_eq!(d.save().expect("save"), saved, "restore is exact");
            Ok(saved)
        }
        Err(e) => {
            assert_eq!(d.save().expect("save"), fresh, "a refusal changes nothing");
            Err(e.of(DvdV1::COMPONENT))
        }
    }
}

/// Restores `blob` as a channel's ring state over fresh guest memory with
/// two rings laid out at [`RING_BASE`].
pub fn restore_rings(blob: &[u8]) -> Result<ChannelRingsV1, StateError> {
    let mem = RamGuestMemory::new(MEM_BYTES);
    init_ring_pair(&mem, parastor_core::Gpa::new(RING_BASE), RING_SIZE).expect("rings");
    let saved: ChannelRingsV1 = state::decode(blob)?;
    match saved.restore(&mem) {
        Ok((reader, writer)) => {
            let again = ChannelRingsV1::save(&reader, &writer).expect("save");
            assert_eq!(again, saved, "restore is exact");
            Ok(saved)
        }
        Err(e) => Err(e.of(ChannelRingsV1::COMPONENT)),
    }
}

/// Restores `blob` as StorVSP controller state into a fresh controller
/// (up to 4 sub-channels) with a 64-sector disk with in-process
/// reservations at 0:0:0 and a DVD drive
/// at 0:0:1, loaded when the state says it was.
pub fn restore_controller(blob: &[u8]) -> Result<ControllerV1, StateError> {
    let saved: ControllerV1 = state::decode(blob)?;
    let loaded = saved
        .luns
        .iter()
        .any(|l| l.path == [0, 0, 1] && matches!(&l.device, DeviceV1::Dvd(d) if d.media_present));
    let c = Controller::new(ControllerConfig {
        max_sub_channels: 4,
        ..ControllerConfig::default()
    });
    let pr = Disk::new(ReservationsDisk::new(ram(64, 512))).expect("disk");
    let disk = ScsiDisk::new(pr, DiskParams::default());
    c.attach(ScsiPath::new(0, 0, 0), Arc::new(disk))
        .expect("attach disk");
    let dvd = ScsiDvd::new(loaded.then(|| ram(4, 2048))).expect("DVD drive");
    c.attach(ScsiPath::new(0, 0, 1), Arc::new(dvd))
        .expect("attach DVD");
    let fresh = c.save(Volatile::Allow).expect("a fresh controller saves");
    match c.restore(&saved) {
        Ok(()) => {
            let again = c.save(Volatile::Allow).expect("save");
            assert_eq!(again.negotiation, saved.negotiation, "restore is exact");
            for l in &saved.luns {
                let now = again
                    .luns
                    .iter()
                    .find(|n| n.path == l.path)
                    .expect("LUN saved");
                assert_eq!(now.device, l.device, "restore is exact");
                if l.reservations.is_some() {
                    assert_eq!(now.reservations, l.reservations, "restore is exact");
                }
            }
            Ok(saved)
        }
        Err(e) => {
            assert_eq!(
                c.save(Volatile::Allow).expect("save"),
                fresh,
                "a refusal changes nothing"
            );
            Err(e.of(ControllerV1::COMPONENT))
        }
    }
}

/// The fuzz entry point.
pub fn state_restore(data: &[u8]) {
    let _ = restore_reservations(data);
    let _ = restore_reservations(&seal::<ReservationsV1>(data));
    let _ = restore_scsi_disk(data);
    let _ = restore_scsi_disk(&seal::<ScsiDiskV1>(data));
    let _ = restore_dvd(data);
    let _ = restore_dvd(&seal::<DvdV1>(data));
    let _ = restore_rings(data);
    let _ = restore_rings(&seal::<ChannelRingsV1>(data));
    let _ = restore_controller(data);
    let _ = restore_controller(&seal::<ControllerV1>(data));
}
