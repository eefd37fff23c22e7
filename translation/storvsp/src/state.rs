//! Saved state of a StorVSP [`Controller`], for servicing: plain,
//! versioned, untrusted data (see [`parastor_core::state`]).
//!
//! [`ControllerV1`] (component `storvsp-controller`) holds what the
//! controller's channels share: the negotiation (state, protocol version,
//! sub-channels asked for) and each LUN's device state ([`ScsiDiskV1`] or
//! [`DvdV1`]) by SCSI address. The LUNs themselves (their disks, identity
//! and medium) are not saved: the new service builds and attaches them
//! from its settings, exactly as at boot, and the restore then gives each
//! its saved state.
//!
//! Save refuses a LUN whose disk keeps its contents in this process (a
//! RAM disk or RAM layer, [`Disk::volatile_part`]): a restart would lose
//! the data the guest wrote, so servicing must not pretend to preserve it
//! ([`SaveError::VolatileDisk`] names the LUN and the part of its disk
//! stack). A caller whose settings accept that loss says so
//! ([`Volatile::Allow`]).
//!
//! Restore checks everything before changing anything: a negotiation no
//! guest can reach (a version outside Win6, Win7, Win8 and Blue, a version
//! before the guest could have sent one, sub-channels before Windows 8 or
//! beyond the configured maximum), a LUN saved twice, a saved LUN that is
//! not attached now or is now another kind of device (refused, naming its
//! address: the guest would find a disk replaced under it), and every
//! device state's own checks. A LUN attached now but absent from the saved
//! state is new to the guest, as after a hot add.
//!
//! [`Disk::volatile_part`]: parastor_core::Disk::volatile_part

use super::{Controller, NegotiationState, Protocol, ScsiPath};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use parastor_core::prwrap::ReservationsV1;
use parastor_core::state::{InvalidState, SaveError, Versioned, check_count};
use parastor_hw::storvsp::Version;
use parastor_scsi::Lun;
use parastor_scsi::state::{DvdV1, ScsiDiskV1};
use serde::{Deserialize, Serialize};

/// Most LUNs a saved controller may list (every SCSI address).
const MAX_LUNS: usize = 256 * 256 * 256;

/// Saved state of a StorVSP controller, version 1.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerV1 {
    /// The negotiation on the primary channel.
    pub negotiation: NegotiationV1,
    /// Each attached LUN's device state, by address (ascending).
    pub luns: Vec<LunV1>,
}

impl Versioned for ControllerV1 {
    const COMPONENT: &'static str = "storvsp-controller";
    const VERSION: u16 = 1;
}

/// The negotiation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NegotiationV1 {
    /// Where it stands: 0 waiting for BEGIN_INITIALIZATION, 1 for a
    /// version, 2 for QUERY_PROPERTIES, 3 for END_INITIALIZATION, 4 ready.
    pub state: u8,
    /// The protocol version settled (from state 2 on).
    pub version: Option<u16>,
    /// Sub-channels the guest asked for (Windows 8 and later, from state 3).
    pub sub_channels: Option<u16>,
}

/// One LUN's saved device state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunV1 {
    /// Path, target and LUN.
    pub path: [u8; 3],
    /// The device's state.
    pub device: DeviceV1,
    /// The persistent reservations this process keeps for the LUN's disk
    /// (a reservations decorator in its stack); `None` when the disk has
    /// none or they live in the device.
    pub reservations: Option<ReservationsV1>,
}

/// A device's saved state, by kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceV1 {
    /// A direct-access disk.
    Disk(ScsiDiskV1),
    /// A CD/DVD drive.
    Dvd(DvdV1),
}

/// Whether [`Controller::save`] accepts LUNs whose disks would not survive
/// the restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Volatile {
    /// Refuse ([`SaveError::VolatileDisk`]): the default for servicing.
    Refuse,
    /// Save anyway: the settings accept that those disks come back empty.
    Allow,
}

fn path_str(p: ScsiPath) -> String {
    format!("{}:{}:{}", p.path, p.target, p.lun)
}

const STATES: [NegotiationState; 5] = [
    NegotiationState::Begin,
    NegotiationState::QueryVersion,
    NegotiationState::QueryProperties,
    NegotiationState::EndInitialization,
    NegotiationState::Ready,
];

impl NegotiationV1 {
    fn save(p: Protocol) -> Self {
        NegotiationV1 {
            state: STATES.iter().position(|&s| s == p.state).unwrap_or(0) as u8,
            version: p.version.map(Version::get),
            sub_channels: p.sub_channels,
        }
    }

    /// The protocol state, if it is one a guest can reach with a
    /// controller allowing `max_sub_channels`.
    fn validate(&self, max_sub_channels: u16) -> Result<Protocol, InvalidState> {
        let state = *STATES.get(usize::from(self.state)).ok_or_else(|| {
            InvalidState::new(
                "state",
                format_args!("{} is not a negotiation state (0..=4)", self.state),
            )
        })?;
        let version = self.version.map(Version::new);
        let versioned = self.state >= 2;
        match version {
            Some(v) if !v.is_supported() => {
                return Err(InvalidState::new(
                    "version",
                    format_args!(
                        "{:#06x} is not a protocol version this controller accepts (Win6, Win7, Win8, Blue)",
                        v.get()
                    ),
                ));
            }
            Some(_) if !versioned => {
                return Err(InvalidState::new(
                    "version",
                    "a version is set before QUERY_PROTOCOL_VERSION succeeded",
                ));
            }
            None if versioned => {
                return Err(InvalidState::new(
                    "version",
                    "the negotiation is past QUERY_PROTOCOL_VERSION but no version is set",
                ));
            }
            _ => {}
        }
        if let Some(n) = self.sub_channels {
            if self.state < 3 || version.is_none_or(|v| v < Version::WIN8) {
                return Err(InvalidState::new(
                    "sub_channels",
                    "sub-channels are asked for only after QUERY_PROPERTIES, from Windows 8 on",
                ));
            }
            if n > max_sub_channels {
                return Err(InvalidState::new(
                    "sub_channels",
                    format_args!("{n} sub-channels, this controller allows {max_sub_channels}"),
                ));
            }
        }
        Ok(Protocol {
            state,
            version,
            sub_channels: self.sub_channels,
        })
    }
}

impl Controller {
    /// The controller's state, for servicing: call it after every channel
    /// has stopped taking requests and drained (see the module docs).
    /// Refused while a LUN is busy ([`SaveError::Busy`], from its device)
    /// or, unless `volatile` allows it, when a LUN's disk would not survive
    /// the restart ([`SaveError::VolatileDisk`], naming the LUN and where
    /// in its disk stack).
    pub fn save(&self, volatile: Volatile) -> Result<ControllerV1, SaveError> {
        let luns: Vec<(ScsiPath, Lun)> = self
            .luns
            .read()
            .iter()
            .map(|(p, l)| (*p, l.clone()))
            .collect();
        let mut saved = Vec::with_capacity(luns.len());
        for (path, lun) in luns {
            let disk = match &lun {
                Lun::Disk(d) => Some(d.disk().clone()),
                Lun::Dvd(d) => d.media(),
            };
            if volatile == Volatile::Refuse
                && let Some((part, kind)) = disk.and_then(|d| d.volatile_part())
            {
                let at = if part.is_empty() {
                    String::new()
                } else {
                    format!(" ({part})")
                };
                return Err(SaveError::VolatileDisk {
                    location: format!("LUN {}{at}", path_str(path)),
                    kind,
                });
            }
            let (device, reservations) = match &lun {
                Lun::Disk(d) => (
                    DeviceV1::Disk(d.save()?),
                    d.disk()
                        .persistent_reservations()
                        .and_then(|pr| pr.save_state())
                        .transpose()?,
                ),
                Lun::Dvd(d) => (DeviceV1::Dvd(d.save()?), None),
            };
            saved.push(LunV1 {
                path: [path.path, path.target, path.lun],
                device,
                reservations,
            });
        }
        Ok(ControllerV1 {
            negotiation: NegotiationV1::save(self.protocol()),
            luns: saved,
        })
    }

    /// Restores `saved` into this controller, built from the current
    /// settings with its LUNs attached and no channel served yet. Every
    /// field is checked first (see the module docs); nothing changes
    /// unless all of it is valid.
    pub fn restore(&self, saved: &ControllerV1) -> Result<(), InvalidState> {
        let protocol = saved
            .negotiation
            .validate(self.config.max_sub_channels)
            .map_err(|e| e.within("negotiation"))?;
        check_count("luns", saved.luns.len(), MAX_LUNS)?;
        let mut targets: Vec<(Lun, &LunV1)> = Vec::with_capacity(saved.luns.len());
        let mut seen: Vec<ScsiPath> = Vec::with_capacity(saved.luns.len());
        for (i, l) in saved.luns.iter().enumerate() {
            let field = format!("luns[{i}]");
            let path = ScsiPath::new(l.path[0], l.path[1], l.path[2]);
            if seen.contains(&path) {
                return Err(InvalidState::new(
                    format!("{field}.path"),
                    format_args!("LUN {} is saved twice", path_str(path)),
                ));
            }
            seen.push(path);
            let lun = self.lun(path).ok_or_else(|| {
                InvalidState::new(
                    format!("{field}.path"),
                    format_args!(
                        "LUN {} had state saved but is not attached now; the settings must keep every LUN the guest knows",
                        path_str(path)
                    ),
                )
            })?;
            let kind_ok = match (&lun, &l.device) {
                (Lun::Disk(_), DeviceV1::Disk(d)) => d.check(),
                (Lun::Dvd(_), DeviceV1::Dvd(d)) => d.check(),
                (now, _) => Err(InvalidState::new(
                    "",
                    format_args!(
                        "LUN {} was saved as another kind of device than the {} attached now",
                        path_str(path),
                        if matches!(now, Lun::Disk(_)) {
                            "disk"
                        } else {
                            "DVD drive"
                        }
                    ),
                )),
            };
            kind_ok.map_err(|e| e.within(&format!("{field}.device")))?;
            if let Some(r) = &l.reservations {
                let field = format!("{field}.reservations");
                let keeps = match &lun {
                    Lun::Disk(d) => d
                        .disk()
                        .persistent_reservations()
                        .is_some_and(|pr| pr.save_state().is_some()),
                    Lun::Dvd(_) => false,
                };
                if !keeps {
                    return Err(InvalidState::new(
                        field,
                        format_args!(
                            "LUN {} had reservations kept by the service, but its disk now keeps none to restore into",
                            path_str(path)
                        ),
                    ));
                }
                r.check().map_err(|e| e.within(&field))?;
            }
            targets.push((lun, l));
        }
        // Everything checked: apply (these restores repeat the checks
        // above, so they cannot fail now).
        for (lun, l) in targets {
            match (&lun, &l.device) {
                (Lun::Disk(d), DeviceV1::Disk(s)) => {
                    d.restore(s)?;
                    if let (Some(r), Some(pr)) =
                        (&l.reservations, d.disk().persistent_reservations())
                    {
                        pr.restore_state(r)?;
                    }
                }
                (Lun::Dvd(d), DeviceV1::Dvd(s)) => d.restore(s)?,
                _ => {}
            }
        }
        self.update_protocol(|p| *p = protocol);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ControllerConfig;
    use alloc::sync::Arc;
    use parastor_core::ram::RamDisk;
    use parastor_core::{Disk, DiskIo, InitiatorId};
    use parastor_scsi::state::{SenseEntryV1, SenseV1};
    use parastor_scsi::{DiskParams, ScsiDisk, ScsiDvd};

    fn ram(sectors: u64, ss: u32) -> Disk {
        Disk::new(RamDisk::new(sectors * u64::from(ss), ss).unwrap()).unwrap()
    }

    /// A disk that says its contents survive a restart (standing for a
    /// host block device).
    struct Durable {
        inner: Disk,
        inline: bool,
    }

    impl DiskIo for Durable {
        fn kind(&self) -> &'static str {
            "durable"
        }
        parastor_core::forward_geometry!(inner);
        parastor_core::forward_ops!(inner, inline; unmap_behavior, flush, unmap, children);
        async fn read(
            &self,
            buf: parastor_core::SgList<'_>,
            sector: u64,
            opts: parastor_core::IoOptions,
        ) -> Result<(), parastor_core::DiskError> {
            self.inner.read(buf, sector, opts).await
        }
        async fn write(
            &self,
            buf: parastor_core::SgList<'_>,
            sector: u64,
            opts: parastor_core::IoOptions,
        ) -> Result<(), parastor_core::DiskError> {
            self.inner.write(buf, sector, opts).await
        }
    }

    const P0: ScsiPath = ScsiPath::new(0, 0, 0);
    const P1: ScsiPath = ScsiPath::new(0, 0, 1);

    fn controller(disk: Disk) -> Controller {
        let c = Controller::new(ControllerConfig {
            max_sub_channels: 4,
            ..ControllerConfig::default()
        });
        c.attach(P0, Arc::new(ScsiDisk::new(disk, DiskParams::default())))
            .unwrap();
        c.attach(P1, Arc::new(ScsiDvd::new(None).unwrap())).unwrap();
        c
    }

    fn ready() -> NegotiationV1 {
        NegotiationV1 {
            state: 4,
            version: Some(Version::WIN8.get()),
            sub_channels: Some(2),
        }
    }

    fn saved() -> ControllerV1 {
        ControllerV1 {
            negotiation: ready(),
            luns: alloc::vec![
                LunV1 {
                    path: [0, 0, 0],
                    device: DeviceV1::Disk(ScsiDiskV1 {
                        sense: alloc::vec![SenseEntryV1 {
                            initiator: InitiatorId::new(1).to_bytes(),
                            sense: SenseV1 {
                                key: 5,
                                asc: 0x24,
                                ascq: 0,
                                information: None,
                            },
                        }],
                        known_sectors: 64,
                    }),
                    reservations: None,
                },
                LunV1 {
                    path: [0, 0, 1],
                    device: DeviceV1::Dvd(DvdV1 {
                        tray_open: true,
                        ..DvdV1::default()
                    }),
                    reservations: None,
                },
            ],
        }
    }

    /// The negotiation and every LUN's state round-trip through a blob into
    /// a fresh controller with the same LUNs attached.
    #[test]
    fn round_trip() {
        let c = controller(ram(64, 512));
        c.restore(&saved()).unwrap();
        assert_eq!(c.state(), NegotiationState::Ready);
        assert_eq!(c.version(), Some(Version::WIN8));
        assert_eq!(c.sub_channels_requested(), Some(2));
        let out = c.save(Volatile::Allow).unwrap();
        assert_eq!(out, saved());
        let blob = parastor_core::state::encode(&out).unwrap();
        let fresh = controller(ram(64, 512));
        parastor_core::state::restore::<ControllerV1, _>(&blob, |s| fresh.restore(&s)).unwrap();
        assert_eq!(fresh.save(Volatile::Allow).unwrap(), saved());
    }

    /// Reservations kept by a reservations decorator under a disk LUN
    /// round-trip with it; saved reservations need such a decorator now,
    /// and their own checks apply.
    #[test]
    fn reservations_round_trip_with_their_lun() {
        use parastor_core::ReservationsDisk;
        use parastor_core::prwrap::{RegistrationV1, ReservationV1};
        let pr = ReservationsV1 {
            generation: 3,
            registrations: alloc::vec![RegistrationV1 {
                initiator: InitiatorId::new(1).to_bytes(),
                key: 0x11,
            }],
            reservation: Some(ReservationV1 {
                kind: 3,
                holder: Some(InitiatorId::new(1).to_bytes()),
            }),
            aptpl: false,
        };
        let mut with_pr = saved();
        with_pr.luns[0].reservations = Some(pr.clone());
        let reserving = || controller(Disk::new(ReservationsDisk::new(ram(64, 512))).unwrap());
        let c = reserving();
        c.restore(&with_pr).unwrap();
        assert_eq!(c.save(Volatile::Allow).unwrap(), with_pr);
        // Without a reservations decorator now: refused.
        let plain = controller(ram(64, 512));
        let e = plain.restore(&with_pr).unwrap_err();
        assert_eq!(e.field, "luns[0].reservations", "{e}");
        // An invalid registration, under its LUN.
        let mut bad = with_pr.clone();
        if let Some(r) = &mut bad.luns[0].reservations {
            r.registrations[0].key = 0;
        }
        let c = reserving();
        let e = c.restore(&bad).unwrap_err();
        assert_eq!(e.field, "luns[0].reservations.registrations[0].key", "{e}");
        assert_eq!(
            c.save(Volatile::Allow).unwrap().luns[0].reservations,
            Some(ReservationsV1::default())
        );
    }

    /// A RAM disk refuses the save, naming the LUN; a durable disk saves.
    #[test]
    fn volatile_disks_refuse_the_save() {
        let c = controller(ram(64, 512));
        let e = c.save(Volatile::Refuse).unwrap_err();
        assert_eq!(
            e,
            SaveError::VolatileDisk {
                location: "LUN 0:0:0".into(),
                kind: "ram"
            }
        );
        let durable = Disk::new(Durable {
            inner: ram(64, 512),
            inline: false,
        })
        .unwrap();
        assert_eq!(durable.volatile_part(), Some(("inner".into(), "ram")));
        let c = controller(durable);
        let e = c.save(Volatile::Refuse).unwrap_err();
        assert!(
            alloc::string::ToString::to_string(&e).contains("LUN 0:0:0 (inner)"),
            "{e}"
        );
    }

    /// Negotiations no guest can reach, unknown or doubled LUNs and LUNs of
    /// another kind are refused, naming the field; nothing is applied.
    #[test]
    fn restore_refuses_invalid_state() {
        let with = |f: &dyn Fn(&mut ControllerV1)| {
            let mut s = saved();
            f(&mut s);
            s
        };
        let cases: [(&str, ControllerV1); 9] = [
            ("negotiation.state", with(&|s| s.negotiation.state = 5)),
            (
                "negotiation.version",
                with(&|s| s.negotiation.version = Some(0x0A00)),
            ),
            (
                "negotiation.version",
                with(&|s| s.negotiation.version = None),
            ),
            (
                "negotiation.version",
                with(&|s| {
                    s.negotiation = NegotiationV1 {
                        state: 1,
                        version: Some(Version::WIN7.get()),
                        sub_channels: None,
                    }
                }),
            ),
            (
                "negotiation.sub_channels",
                with(&|s| s.negotiation.sub_channels = Some(5)),
            ),
            (
                "negotiation.sub_channels",
                with(&|s| s.negotiation.version = Some(Version::WIN7.get())),
            ),
            ("luns[1].path", with(&|s| s.luns[1].path = [0, 0, 0])),
            ("luns[1].path", with(&|s| s.luns[1].path = [0, 1, 0])),
            (
                "luns[0].device",
                with(&|s| s.luns[0].device = DeviceV1::Dvd(DvdV1::default())),
            ),
        ];
        let c = controller(ram(64, 512));
        let before = c.save(Volatile::Allow).unwrap();
        for (field, bad) in cases {
            let e = c.restore(&bad).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert_eq!(c.save(Volatile::Allow).unwrap(), before, "{field}");
        }
        // A device state's own checks, under its LUN.
        let bad = with(&|s| {
            if let DeviceV1::Dvd(d) = &mut s.luns[1].device {
                d.media_present = true;
            }
        });
        assert_eq!(
            c.restore(&bad).unwrap_err().field,
            "luns[1].device.tray_open"
        );
    }
}
