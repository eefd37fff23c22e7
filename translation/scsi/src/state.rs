//! Saved state of the SCSI devices, for servicing: plain, versioned,
//! untrusted data (see [`parastor_core::state`]).
//!
//! - [`ScsiDiskV1`] (component `scsi-disk`): each initiator's pending
//!   sense, and the capacity the initiators were last told about — a
//!   pending capacity UNIT ATTENTION is exactly "the disk's size now
//!   differs from it", so restoring it re-raises a pending one and raises
//!   one for a size that changed across the restart. Unit attentions a
//!   persistent reservation change raised on other initiators and not yet
//!   reported are not saved (the format predates them): they are lost
//!   across servicing, as if the initiators had already seen them; the
//!   reservation state itself is saved with the disk.
//!   [`ScsiDisk::save`](crate::ScsiDisk::save) refuses while a command
//!   holds or waits for an LBA range (COMPARE AND WRITE, writes): a save
//!   follows the transport's drain, and a range lock has no meaning
//!   outside the commands that hold it.
//! - [`DvdV1`] (component `scsi-dvd`): tray, medium presence, removal
//!   prevention, the unreported media event, the pending NOT READY TO
//!   READY unit attention, and pending sense.
//!
//! Restore goes into a device the new service built from its settings,
//! before any command reaches it; every field is checked first and
//! nothing is applied unless all of it is valid.

use crate::SENSE_SLOTS;
use alloc::format;
use alloc::vec::Vec;
use parastor_core::InitiatorId;
use parastor_core::state::{InvalidState, Versioned, check_count};
use parastor_hw::scsi::{AdditionalSense, SenseData, SenseKey};
use serde::{Deserialize, Serialize};

/// Saved state of a [`ScsiDisk`](crate::ScsiDisk), version 1.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiDiskV1 {
    /// Pending sense per initiator, the one stored longest ago first.
    pub sense: Vec<SenseEntryV1>,
    /// The sector count the initiators were last told about.
    pub known_sectors: u64,
}

impl Versioned for ScsiDiskV1 {
    const COMPONENT: &'static str = "scsi-disk";
    const VERSION: u16 = 1;
}

impl ScsiDiskV1 {
    /// Checks every field without restoring anything: the same checks
    /// [`ScsiDisk::restore`](crate::ScsiDisk::restore) makes.
    pub fn check(&self) -> Result<(), InvalidState> {
        restore_sense("sense", &self.sense).map(|_| ())
    }
}

/// Saved state of a [`ScsiDvd`](crate::ScsiDvd), version 1.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DvdV1 {
    /// Whether a medium was loaded.
    pub media_present: bool,
    /// Whether the tray was open (never with a medium loaded).
    pub tray_open: bool,
    /// Whether PREVENT ALLOW MEDIUM REMOVAL prevented removal.
    pub prevent_removal: bool,
    /// The media event not yet reported by GET EVENT STATUS NOTIFICATION,
    /// as its MMC code: 0 none, 1 eject request, 2 new media, 3 media
    /// removal.
    pub pending_event: u8,
    /// Whether the NOT READY TO READY CHANGE unit attention of an
    /// insertion was still to be reported (only with a medium loaded).
    pub unit_attention: bool,
    /// Pending sense per initiator, the one stored longest ago first.
    pub sense: Vec<SenseEntryV1>,
}

impl Versioned for DvdV1 {
    const COMPONENT: &'static str = "scsi-dvd";
    const VERSION: u16 = 1;
}

/// One initiator's pending sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenseEntryV1 {
    /// The initiator, as [`InitiatorId::to_bytes`].
    pub initiator: [u8; 16],
    /// Its sense.
    pub sense: SenseV1,
}

/// Sense data. The field pointer of ILLEGAL REQUEST sense
/// ([`SenseData::field`]) is not kept: restored sense has the same key,
/// codes and information without it (SPC makes the pointer optional),
/// which keeps this format as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenseV1 {
    /// Sense key (0..=15).
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// The INFORMATION field, if valid.
    pub information: Option<u64>,
}

pub(crate) fn save_sense(entries: Vec<(InitiatorId, SenseData)>) -> Vec<SenseEntryV1> {
    entries
        .into_iter()
        .map(|(initiator, s)| SenseEntryV1 {
            initiator: initiator.to_bytes(),
            sense: SenseV1 {
                key: s.key.get(),
                asc: s.additional.asc(),
                ascq: s.additional.ascq(),
                information: s.information,
            },
        })
        .collect()
}

/// Checks saved sense entries (`field`): at most [`SENSE_SLOTS`], no
/// initiator twice, sense keys of four bits.
/// Sense entries checked for restore.
pub(crate) type SavedSense = Vec<(InitiatorId, SenseData)>;

pub(crate) fn restore_sense(
    field: &str,
    saved: &[SenseEntryV1],
) -> Result<SavedSense, InvalidState> {
    check_count(field, saved.len(), SENSE_SLOTS)?;
    let mut out: Vec<(InitiatorId, SenseData)> = Vec::with_capacity(saved.len());
    for (i, e) in saved.iter().enumerate() {
        let initiator = InitiatorId::new(u128::from_be_bytes(e.initiator));
        if let Some(j) = out.iter().position(|(x, _)| *x == initiator) {
            return Err(InvalidState::new(
                format!("{field}[{i}].initiator"),
                format_args!(
                    "initiator {:#x} already has sense at {field}[{j}]",
                    initiator.get()
                ),
            ));
        }
        if e.sense.key > 0xF {
            return Err(InvalidState::new(
                format!("{field}[{i}].sense.key"),
                format_args!("{:#x} is not a sense key (0..=0xf)", e.sense.key),
            ));
        }
        out.push((
            initiator,
            SenseData {
                information: e.sense.information,
                ..SenseData::new(
                    SenseKey::new(e.sense.key),
                    AdditionalSense::from_parts(e.sense.asc, e.sense.ascq),
                )
            },
        ));
    }
    Ok(out)
}
