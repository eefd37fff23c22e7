//! [`ScsiDvd`] save and restore; the format is [`DvdV1`].

use super::ScsiDvd;
use crate::state::{DvdV1, SavedSense, restore_sense, save_sense};
use parastor_core::state::{InvalidState, SaveError};
use parastor_hw::scsi::mmc::MediaEventCode;

/// The media events a drive keeps for GET EVENT STATUS NOTIFICATION.
const EVENTS: [MediaEventCode; 3] = [
    MediaEventCode::EJECT_REQUEST,
    MediaEventCode::NEW_MEDIA,
    MediaEventCode::MEDIA_REMOVAL,
];

impl ScsiDvd {
    /// The drive's state, for servicing. The medium itself is not saved:
    /// the new service opens it from its settings.
    pub fn save(&self) -> Result<DvdV1, SaveError> {
        let s = self.state.lock();
        Ok(DvdV1 {
            media_present: s.media.is_some(),
            tray_open: s.tray_open,
            prevent_removal: s.prevent,
            pending_event: s.event.map_or(0, |e| e.get()),
            unit_attention: s.unit_attention,
            sense: save_sense(self.sense.snapshot()),
        })
    }

    /// Restores `saved` into this drive, built from the current settings
    /// (with the medium they name, or none) and not yet given a command.
    /// Everything is checked before anything changes.
    ///
    /// If the settings' medium disagrees with the saved presence, the
    /// difference is what the guest sees, as a host change would show it:
    /// a medium now missing is a media-removal event (tray closed); a
    /// medium now present is an insertion (tray closed, new-media event,
    /// NOT READY TO READY CHANGE unit attention).
    pub fn restore(&self, saved: &DvdV1) -> Result<(), InvalidState> {
        let (event, sense) = saved.validate()?;
        let mut s = self.state.lock();
        s.prevent = saved.prevent_removal;
        match (saved.media_present, s.media.is_some()) {
            (true, false) => {
                s.tray_open = false;
                s.event = Some(MediaEventCode::MEDIA_REMOVAL);
                s.unit_attention = false;
            }
            (false, true) => {
                s.tray_open = false;
                s.event = Some(MediaEventCode::NEW_MEDIA);
                s.unit_attention = true;
            }
            _ => {
                s.tray_open = saved.tray_open;
                s.event = event;
                s.unit_attention = saved.unit_attention;
            }
        }
        drop(s);
        self.sense.replace(&sense);
        Ok(())
    }
}

impl DvdV1 {
    /// Checks every field without restoring anything: the same checks
    /// [`ScsiDvd::restore`] makes.
    pub fn check(&self) -> Result<(), InvalidState> {
        self.validate().map(|_| ())
    }

    fn validate(&self) -> Result<(Option<MediaEventCode>, SavedSense), InvalidState> {
        let sense = restore_sense("sense", &self.sense)?;
        if self.media_present && self.tray_open {
            return Err(InvalidState::new(
                "tray_open",
                "the tray is open with a medium loaded; a loaded medium means a closed tray",
            ));
        }
        if self.unit_attention && !self.media_present {
            return Err(InvalidState::new(
                "unit_attention",
                "a medium-change unit attention without a medium; it is raised only by an insertion",
            ));
        }
        let event = match self.pending_event {
            0 => None,
            code => Some(EVENTS.into_iter().find(|e| e.get() == code).ok_or_else(|| {
                InvalidState::new(
                    "pending_event",
                    format_args!(
                        "{code} is not a media event the drive reports: expected 0 (none), 1 (eject request), 2 (new media) or 3 (media removal)"
                    ),
                )
            })?),
        };
        Ok((event, sense))
    }
}

#[cfg(test)]
mod tests {
    use crate::ScsiDvd;
    use crate::state::DvdV1;
    use parastor_core::Disk;
    use parastor_core::ram::RamDisk;
    use parastor_hw::scsi::mmc::MediaEventCode;

    fn medium() -> Disk {
        Disk::new(RamDisk::new(16 * 2048, 2048).unwrap()).unwrap()
    }

    /// Every combination the drive can reach round-trips through a blob
    /// into a fresh drive with the same medium.
    #[test]
    fn round_trip() {
        let d = ScsiDvd::new(None).unwrap();
        d.change_media(Some(medium())).unwrap();
        d.state.lock().prevent = true;
        d.request_eject();
        let saved = d.save().unwrap();
        assert_eq!(
            saved,
            DvdV1 {
                media_present: true,
                tray_open: false,
                prevent_removal: true,
                pending_event: MediaEventCode::EJECT_REQUEST.get(),
                unit_attention: true,
                sense: alloc::vec::Vec::new(),
            }
        );
        let blob = parastor_core::state::encode(&saved).unwrap();
        let fresh = ScsiDvd::new(Some(medium())).unwrap();
        parastor_core::state::restore::<DvdV1, _>(&blob, |s| fresh.restore(&s)).unwrap();
        assert_eq!(fresh.save().unwrap(), saved);

        // An empty drive with its tray open.
        let open = DvdV1 {
            tray_open: true,
            pending_event: MediaEventCode::MEDIA_REMOVAL.get(),
            ..DvdV1::default()
        };
        let fresh = ScsiDvd::new(None).unwrap();
        fresh.restore(&open).unwrap();
        assert_eq!(fresh.save().unwrap(), open);
    }

    /// A medium the settings no longer (or newly) name shows as a host
    /// removal (or insertion).
    #[test]
    fn media_difference_is_a_media_change() {
        let loaded = DvdV1 {
            media_present: true,
            ..DvdV1::default()
        };
        let d = ScsiDvd::new(None).unwrap();
        d.restore(&loaded).unwrap();
        let s = d.save().unwrap();
        assert_eq!(
            (
                s.media_present,
                s.tray_open,
                s.pending_event,
                s.unit_attention
            ),
            (false, false, MediaEventCode::MEDIA_REMOVAL.get(), false)
        );
        let d = ScsiDvd::new(Some(medium())).unwrap();
        d.restore(&DvdV1::default()).unwrap();
        let s = d.save().unwrap();
        assert_eq!(
            (
                s.media_present,
                s.tray_open,
                s.pending_event,
                s.unit_attention
            ),
            (true, false, MediaEventCode::NEW_MEDIA.get(), true)
        );
    }

    /// States no drive can reach are refused, naming the field, with
    /// nothing applied.
    #[test]
    fn restore_refuses_impossible_states() {
        let cases = [
            (
                "tray_open",
                DvdV1 {
                    media_present: true,
                    tray_open: true,
                    ..DvdV1::default()
                },
            ),
            (
                "unit_attention",
                DvdV1 {
                    unit_attention: true,
                    ..DvdV1::default()
                },
            ),
            (
                "pending_event",
                DvdV1 {
                    pending_event: MediaEventCode::MEDIA_CHANGED.get(),
                    ..DvdV1::default()
                },
            ),
        ];
        let d = ScsiDvd::new(None).unwrap();
        let before = d.save().unwrap();
        for (field, bad) in cases {
            assert_eq!(d.restore(&bad).unwrap_err().field, field);
            assert_eq!(d.save().unwrap(), before);
        }
    }
}
