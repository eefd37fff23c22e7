//! Validation: the host's schema messages ([`crate::wire`]) checked against
//! every rule of OpenHCL's schema and turned into the [`crate::model`].
//!
//! All errors of a document are collected, each with OpenHCL's host error
//! code, the path of the field at fault and the object it belongs to
//! (controller instance id, SCSI LUN, NVMe namespace id, IDE channel/drive).
//! The model is produced only when there is no error at all.
//!
//! # Rules (reference table), with the test of each
//!
//! - [x] version not V1 when base content is present → `UnsupportedSchemaVersion`
//!   (`rule_version_must_be_v1`)
//! - [x] unknown chunk namespace → `UnsupportedSchemaNamespace`; empty chunk →
//!   `EmptyNamespaceChunk` (in [`mod@crate::read`]: `read_unknown_namespace`,
//!   `read_empty_chunk`)
//! - [x] controller `instance_id`, `device_path`, NIC ids not GUIDs →
//!   `InvalidInstanceId` (`rule_invalid_instance_ids`, `rule_nic_ids`)
//! - [x] bad `ntfs_guid` → `StorageInvalidNtfsFormatGuid` (`rule_ntfs_guid`)
//! - [x] duplicate controller instance id across SCSI, IDE and NVMe →
//!   `StorageControllerGuidAlreadyExists` (`rule_duplicate_controller_guid`)
//! - [x] more than 4 SCSI controllers → `StorageScsiControllerExceedsMaxLimits`
//!   (`rule_max_scsi_controllers`)
//! - [x] more than 1 IDE controller → `StorageIdeChannelExceedsMaxLimits`
//!   (`rule_max_ide_controllers`)
//! - [x] protocol UNKNOWN → `StorageInvalidControllerType` (`rule_unknown_protocol`)
//! - [x] SCSI location ≥ 64; NVMe NSID 0 or 0xFFFFFFFF →
//!   `StorageLunLocationExceedsMaxLimits` (`rule_scsi_lun_range`, `rule_nvme_nsid_range`)
//! - [x] duplicate SCSI LUN or NVMe NSID → `StorageLunLocationDuplicated`
//!   (`rule_duplicate_locations`)
//! - [x] DVD on NVMe; backing or device type UNKNOWN → `StorageUnsupportedDeviceType`
//!   (`rule_nvme_dvd`, `rule_unknown_backing_and_device_type`)
//! - [x] IDE child without channel → `StorageIdeChannelNotProvided` (`rule_ide_channel_required`)
//! - [x] IDE channel ≥ 2 or location ≥ 2 → `StorageIdeChannelExceedsMaxLimits`
//!   (`rule_ide_slot_range`)
//! - [x] two IDE children in one slot → `StorageIdeChannelInvalidConfiguration`
//!   (`rule_ide_duplicate_slot`)
//! - [x] legacy and new backing fields mixed, or no backing on a non-DVD →
//!   `JsonFormatError` (`rule_legacy_mixed_with_new`, `rule_no_backing`)
//! - [x] single without `device` or with `devices`; striped with < 2 devices or
//!   with `device` → `StorageInvalidPhysicalDiskCount` (`rule_physical_disk_count`)
//! - [x] vendor / product / revision not printable ASCII or longer than
//!   8 / 16 / 4 (SCSI and IDE) → `StorageInvalidVendorId` /
//!   `StorageInvalidProductId` / `StorageInvalidProductRevisionLevel`
//!   (`rule_identity_strings`)
//! - [x] device_id not a GUID or zero on SCSI/IDE hard disks →
//!   `StorageInvalidDeviceId` (`rule_device_id`)
//! - [x] runtime rules — adding/removing a controller
//!   (`StorageCannotAddRemoveControllerAtRuntime`), changing a striped disk
//!   (`StripedStorageCannotChangeControllerAtRuntime`), changing IDE other
//!   than DVD media (`StorageCannotModifyIdeAtRuntime`): these compare two
//!   settings, so they live in [`crate::update`] (tests in `tests/update.rs`).
//! - [x] merging an update against the current settings (base replaces
//!   fixed + dynamic, NICs kept when the new base has none and no
//!   `NetworkDevice` chunk): [`validate`]'s `current` argument.
//!
//! Not a schema rule in OpenHCL, so not enforced here: a striped disk's
//! `chunk_size_in_kb` of 0 (OpenHCL fails when opening the striped disk).

use crate::error::{Collector, Error, ErrorCode, Errors, Object, shown};
use crate::model::{
    Backing, Child, ChildAddress, Controller, DiskParams, FixedSettings, Identity, Nic,
    PhysicalDevice, PhysicalDeviceKind, Protocol, Settings, defaults,
};
use crate::wire;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use parastor_hw::Guid;

/// The decoded parts of one document, each with the path its fields are
/// reported under (empty for the top level, `namespace_settings[i].settings`
/// for a chunk).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Input {
    /// Base content (top-level `version`/`fixed`/`dynamic`, or the last
    /// `Base` chunk), if any.
    pub base: Option<(String, wire::Base)>,
    /// The last `NetworkDevice` chunk, if any: replaces the NIC list.
    pub network_device: Option<(String, wire::NetworkDevice)>,
    /// `NetworkAcceleration` chunks, in order: update subordinate ids.
    pub network_acceleration: Vec<(String, wire::NetworkAcceleration)>,
}

/// Joins a path prefix and a relative path.
fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        String::from(rest)
    } else if rest.is_empty() {
        String::from(prefix)
    } else {
        format!("{prefix}.{rest}")
    }
}

struct Validator {
    errors: Collector,
}

impl Validator {
    fn push(&mut self, code: ErrorCode, path: String, object: &Option<Object>, message: String) {
        self.errors
            .push(Error::new(code, path, message).with_object(object.clone()));
    }

    fn guid(
        &mut self,
        text: &str,
        path: String,
        object: &Option<Object>,
        code: ErrorCode,
    ) -> Option<Guid> {
        match Guid::parse(text) {
            Ok(g) => Some(g),
            Err(e) => {
                self.push(code, path, object, format!("{e}, found `{}`", shown(text)));
                None
            }
        }
    }

    fn fixed(f: Option<&wire::Fixed>) -> FixedSettings {
        let d = FixedSettings::default();
        let Some(f) = f else { return d };
        FixedSettings {
            scsi_sub_channels: f.scsi_sub_channels.unwrap_or(d.scsi_sub_channels),
            io_ring_size: f.io_ring_size.unwrap_or(d.io_ring_size),
            max_bounce_buffer_pages: f
                .max_bounce_buffer_pages
                .unwrap_or(d.max_bounce_buffer_pages),
        }
    }

    fn controllers(&mut self, prefix: &str, dynamic: &wire::Dynamic) -> Vec<Controller> {
        let mut seen = BTreeSet::new();
        let mut scsi = 0usize;
        let mut ide = 0usize;
        let mut out = Vec::new();
        for (i, c) in dynamic.storage_controllers.iter().enumerate() {
            let path = join(prefix, &format!("dynamic.storage_controllers[{i}]"));
            // Every error of the controller and its children names it: quote
            // a bounded form of the id, not the host's string as sent.
            let shown_id = shown(&c.instance_id);
            let object = Some(Object::Instance(shown_id.clone()));
            let id = self.guid(
                &c.instance_id,
                join(&path, "instance_id"),
                &object,
                ErrorCode::InvalidInstanceId,
            );
            if let Some(id) = id
                && !seen.insert(id)
            {
                self.push(
                    ErrorCode::StorageControllerGuidAlreadyExists,
                    join(&path, "instance_id"),
                    &object,
                    String::from("controller instance ID used more than once"),
                );
            }
            let protocol = match c.protocol {
                wire::PROTOCOL_SCSI => {
                    scsi += 1;
                    if scsi > defaults::MAX_SCSI_CONTROLLERS {
                        self.push(
                            ErrorCode::StorageScsiControllerExceedsMaxLimits,
                            path.clone(),
                            &object,
                            format!(
                                "exceeded {} max SCSI controllers",
                                defaults::MAX_SCSI_CONTROLLERS
                            ),
                        );
                    }
                    Protocol::Scsi
                }
                wire::PROTOCOL_IDE => {
                    ide += 1;
                    if ide > defaults::MAX_IDE_CONTROLLERS {
                        self.push(
                            ErrorCode::StorageIdeChannelExceedsMaxLimits,
                            path.clone(),
                            &object,
                            format!(
                                "exceeded {} max IDE controller",
                                defaults::MAX_IDE_CONTROLLERS
                            ),
                        );
                    }
                    Protocol::Ide
                }
                wire::PROTOCOL_NVME => Protocol::Nvme,
                other => {
                    self.push(
                        ErrorCode::StorageInvalidControllerType,
                        join(&path, "protocol"),
                        &object,
                        format!("expected protocol SCSI, IDE or NVME, found {other}"),
                    );
                    continue;
                }
            };
            let children = self.children(&path, c, &shown_id, protocol);
            if let Some(instance_id) = id {
                out.push(Controller {
                    instance_id,
                    protocol,
                    io_queue_depth: c.io_queue_depth,
                    children,
                });
            }
        }
        out
    }

    fn children(
        &mut self,
        path: &str,
        c: &wire::StorageController,
        shown_id: &str,
        p: Protocol,
    ) -> Vec<Child> {
        let mut slots = BTreeSet::new();
        let mut out = Vec::new();
        for (j, lun) in c.luns.iter().enumerate() {
            let path = join(path, &format!("luns[{j}]"));
            let id = String::from(shown_id);
            let object = Some(match p {
                Protocol::Scsi => Object::ScsiLun {
                    instance_id: id,
                    lun: lun.location,
                },
                Protocol::Nvme => Object::NvmeNamespace {
                    instance_id: id,
                    nsid: lun.location,
                },
                Protocol::Ide => Object::IdeDevice {
                    instance_id: id,
                    channel: lun.channel,
                    drive: lun.location,
                },
            });
            let before = self.errors.count();
            let address = self.address(&path, lun, p, &object, &mut slots);
            if p == Protocol::Nvme && lun.is_dvd {
                self.push(
                    ErrorCode::StorageUnsupportedDeviceType,
                    join(&path, "is_dvd"),
                    &object,
                    String::from("an NVMe namespace cannot be a DVD"),
                );
            }
            let backing = self.backing(&path, lun, &object);
            let ntfs_guid = lun.ntfs_guid.as_ref().and_then(|g| {
                self.guid(
                    g,
                    join(&path, "ntfs_guid"),
                    &object,
                    ErrorCode::StorageInvalidNtfsFormatGuid,
                )
            });
            let identity = self.identity(&path, lun, p, &object);
            if self.errors.count() != before {
                continue;
            }
            if let (Some(address), Some(backing)) = (address, backing) {
                out.push(Child {
                    address,
                    identity,
                    params: params(lun),
                    is_dvd: lun.is_dvd,
                    backing,
                    ntfs_guid,
                });
            }
        }
        out
    }

    fn address(
        &mut self,
        path: &str,
        lun: &wire::Lun,
        p: Protocol,
        object: &Option<Object>,
        slots: &mut BTreeSet<ChildAddress>,
    ) -> Option<ChildAddress> {
        let loc_path = join(path, "location");
        let address = match p {
            Protocol::Scsi => match u8::try_from(lun.location) {
                Ok(l) if u32::from(l) < defaults::SCSI_LUN_COUNT => ChildAddress::ScsiLun(l),
                _ => {
                    self.push(
                        ErrorCode::StorageLunLocationExceedsMaxLimits,
                        loc_path,
                        object,
                        format!(
                            "SCSI LUN {} is not below {}",
                            lun.location,
                            defaults::SCSI_LUN_COUNT
                        ),
                    );
                    return None;
                }
            },
            Protocol::Nvme => {
                if defaults::INVALID_NSIDS.contains(&lun.location) {
                    self.push(
                        ErrorCode::StorageLunLocationExceedsMaxLimits,
                        loc_path,
                        object,
                        format!("NVMe namespace ID {:#x} is not valid", lun.location),
                    );
                    return None;
                }
                ChildAddress::NvmeNsid(lun.location)
            }
            Protocol::Ide => {
                let Some(channel) = lun.channel else {
                    self.push(
                        ErrorCode::StorageIdeChannelNotProvided,
                        join(path, "channel"),
                        object,
                        String::from("an IDE device needs a channel"),
                    );
                    return None;
                };
                let mut ok = true;
                if channel >= defaults::IDE_CHANNELS {
                    self.push(
                        ErrorCode::StorageIdeChannelExceedsMaxLimits,
                        join(path, "channel"),
                        object,
                        format!(
                            "IDE channel {channel} is not below {}",
                            defaults::IDE_CHANNELS
                        ),
                    );
                    ok = false;
                }
                if lun.location >= defaults::IDE_DRIVES_PER_CHANNEL {
                    self.push(
                        ErrorCode::StorageIdeChannelExceedsMaxLimits,
                        loc_path.clone(),
                        object,
                        format!(
                            "IDE drive {} is not below {}",
                            lun.location,
                            defaults::IDE_DRIVES_PER_CHANNEL
                        ),
                    );
                    ok = false;
                }
                let (Ok(channel), Ok(drive), true) =
                    (u8::try_from(channel), u8::try_from(lun.location), ok)
                else {
                    return None;
                };
                ChildAddress::Ide { channel, drive }
            }
        };
        if !slots.insert(address) {
            let (code, what) = match p {
                Protocol::Ide => (
                    ErrorCode::StorageIdeChannelInvalidConfiguration,
                    "IDE channel/drive slot",
                ),
                Protocol::Scsi => (ErrorCode::StorageLunLocationDuplicated, "SCSI LUN"),
                Protocol::Nvme => (ErrorCode::StorageLunLocationDuplicated, "NVMe namespace ID"),
            };
            self.push(
                code,
                loc_path,
                object,
                format!("{what} used more than once"),
            );
            return None;
        }
        Some(address)
    }

    fn device(
        &mut self,
        path: &str,
        device_type: i32,
        device_path: &str,
        sub_device_path: u32,
        names: [&str; 2],
        object: &Option<Object>,
    ) -> Option<PhysicalDevice> {
        let [type_name, path_name] = names;
        let kind = match device_type {
            wire::DEVICE_NVME => Some(PhysicalDeviceKind::Nvme),
            wire::DEVICE_VSCSI => Some(PhysicalDeviceKind::Vscsi),
            other => {
                self.push(
                    ErrorCode::StorageUnsupportedDeviceType,
                    join(path, type_name),
                    object,
                    format!("expected device type NVME or VSCSI, found {other}"),
                );
                None
            }
        };
        let instance_id = self.guid(
            device_path,
            join(path, path_name),
            object,
            ErrorCode::InvalidInstanceId,
        );
        Some(PhysicalDevice {
            kind: kind?,
            instance_id: instance_id?,
            sub_device: sub_device_path,
        })
    }

    fn backing(&mut self, path: &str, lun: &wire::Lun, object: &Option<Object>) -> Option<Backing> {
        let legacy =
            lun.device_type.is_some() || lun.device_path.is_some() || lun.sub_device_path.is_some();
        if legacy {
            if lun.physical_devices.is_some() || lun.is_dvd {
                self.push(
                    ErrorCode::JsonFormatError,
                    path.into(),
                    object,
                    String::from(
                        "legacy device_type/device_path/sub_device_path cannot be mixed with \
                         physical_devices or is_dvd",
                    ),
                );
                return None;
            }
            return self
                .device(
                    path,
                    lun.device_type.unwrap_or(wire::DEVICE_UNKNOWN),
                    lun.device_path.as_deref().unwrap_or_default(),
                    lun.sub_device_path.unwrap_or_default(),
                    ["device_type", "device_path"],
                    object,
                )
                .map(Backing::Single);
        }
        let Some(pd) = &lun.physical_devices else {
            if lun.is_dvd {
                return Some(Backing::Empty);
            }
            self.push(
                ErrorCode::JsonFormatError,
                join(path, "physical_devices"),
                object,
                String::from("a disk that is not a DVD needs physical_devices"),
            );
            return None;
        };
        let pd_path = join(path, "physical_devices");
        let count_error = |v: &mut Self, what: &str| {
            v.push(
                ErrorCode::StorageInvalidPhysicalDiskCount,
                pd_path.clone(),
                object,
                String::from(what),
            );
        };
        match pd.r#type {
            wire::BACKING_SINGLE => {
                if !pd.devices.is_empty() {
                    count_error(self, "a single backing takes `device`, not `devices`");
                    return None;
                }
                let Some(d) = &pd.device else {
                    count_error(self, "a single backing needs `device`");
                    return None;
                };
                self.device(
                    &join(&pd_path, "device"),
                    d.device_type,
                    &d.device_path,
                    d.sub_device_path,
                    ["device_type", "device_path"],
                    object,
                )
                .map(Backing::Single)
            }
            wire::BACKING_STRIPED => {
                if pd.device.is_some() {
                    count_error(self, "a striped backing takes `devices`, not `device`");
                    return None;
                }
                if pd.devices.len() < 2 {
                    count_error(
                        self,
                        &format!(
                            "a striped backing needs at least 2 devices, found {}",
                            pd.devices.len()
                        ),
                    );
                    return None;
                }
                let mut devices = Vec::with_capacity(pd.devices.len());
                let mut ok = true;
                for (k, d) in pd.devices.iter().enumerate() {
                    match self.device(
                        &join(&pd_path, &format!("devices[{k}]")),
                        d.device_type,
                        &d.device_path,
                        d.sub_device_path,
                        ["device_type", "device_path"],
                        object,
                    ) {
                        Some(d) => devices.push(d),
                        None => ok = false,
                    }
                }
                ok.then_some(Backing::Striped {
                    devices,
                    chunk_size_kb: lun.chunk_size_in_kb,
                })
            }
            other => {
                self.push(
                    ErrorCode::StorageUnsupportedDeviceType,
                    join(&pd_path, "type"),
                    object,
                    format!("expected backing type SINGLE or STRIPED, found {other}"),
                );
                None
            }
        }
    }

    fn identity(
        &mut self,
        path: &str,
        lun: &wire::Lun,
        p: Protocol,
        object: &Option<Object>,
    ) -> Identity {
        let guest_scsi = matches!(p, Protocol::Scsi | Protocol::Ide);
        if guest_scsi {
            for (value, name, max, code) in [
                (
                    &lun.vendor_id,
                    "vendor_id",
                    defaults::VENDOR_ID_MAX_LEN,
                    ErrorCode::StorageInvalidVendorId,
                ),
                (
                    &lun.product_id,
                    "product_id",
                    defaults::PRODUCT_ID_MAX_LEN,
                    ErrorCode::StorageInvalidProductId,
                ),
                (
                    &lun.product_revision_level,
                    "product_revision_level",
                    defaults::PRODUCT_REVISION_MAX_LEN,
                    ErrorCode::StorageInvalidProductRevisionLevel,
                ),
            ] {
                if !value.bytes().all(|b| defaults::IDENTITY_BYTES.contains(&b)) {
                    self.push(
                        code,
                        join(path, name),
                        object,
                        format!("`{}` is not printable ASCII", shown(value)),
                    );
                } else if value.len() > max {
                    self.push(
                        code,
                        join(path, name),
                        object,
                        format!("`{}` is longer than {max} characters", shown(value)),
                    );
                }
            }
        }
        let device_id = if guest_scsi && !lun.is_dvd {
            match Guid::parse(&lun.device_id) {
                Ok(g) if !g.is_zero() => Some(g),
                Ok(_) => {
                    self.push(
                        ErrorCode::StorageInvalidDeviceId,
                        join(path, "device_id"),
                        object,
                        String::from("device_id must not be the zero GUID"),
                    );
                    None
                }
                Err(e) => {
                    self.push(
                        ErrorCode::StorageInvalidDeviceId,
                        join(path, "device_id"),
                        object,
                        format!("{e}, found `{}`", shown(&lun.device_id)),
                    );
                    None
                }
            }
        } else {
            Guid::parse(&lun.device_id).ok()
        };
        Identity {
            device_id,
            vendor_id: lun.vendor_id.clone(),
            product_id: lun.product_id.clone(),
            product_revision_level: lun.product_revision_level.clone(),
            serial_number: lun.serial_number.clone(),
            model_number: lun.model_number.clone(),
        }
    }

    fn nics(&mut self, input: &Input, current: &[Nic]) -> Vec<Nic> {
        let mut nics = current.to_vec();
        if let Some((prefix, dynamic)) = input
            .base
            .as_ref()
            .and_then(|(p, b)| b.dynamic.as_ref().map(|d| (p, d)))
            .filter(|(_, d)| !d.nic_devices.is_empty())
        {
            nics.clear();
            for (i, n) in dynamic.nic_devices.iter().enumerate() {
                let path = join(prefix, &format!("dynamic.nic_devices[{i}]"));
                let object = Some(Object::Instance(shown(&n.instance_id)));
                let id = self.guid(
                    &n.instance_id,
                    join(&path, "instance_id"),
                    &object,
                    ErrorCode::InvalidInstanceId,
                );
                let sub = n.subordinate_instance_id.as_ref().map(|s| {
                    self.guid(
                        s,
                        join(&path, "subordinate_instance_id"),
                        &object,
                        ErrorCode::InvalidInstanceId,
                    )
                });
                if let (Some(instance_id), None | Some(Some(_))) = (id, sub) {
                    nics.push(Nic {
                        instance_id,
                        subordinate_instance_id: sub.flatten().filter(|g| !g.is_zero()),
                        max_sub_channels: n.max_sub_channels,
                    });
                }
            }
        }
        if let Some((prefix, nd)) = &input.network_device {
            nics.clear();
            for (i, n) in nd.nic_devices.iter().enumerate() {
                let path = join(prefix, &format!("nic_devices[{i}].instance_id"));
                let object = Some(Object::Instance(shown(&n.instance_id)));
                if let Some(instance_id) =
                    self.guid(&n.instance_id, path, &object, ErrorCode::InvalidInstanceId)
                {
                    nics.push(Nic {
                        instance_id,
                        subordinate_instance_id: None,
                        max_sub_channels: n.max_sub_channels,
                    });
                }
            }
        }
        // The last entry for a NIC wins. Collected first and applied in one
        // pass: a NIC-by-entry scan would be quadratic in hostile input.
        let mut subordinates = BTreeMap::new();
        for (prefix, na) in &input.network_acceleration {
            for (i, a) in na.nic_acceleration.iter().enumerate() {
                let path = join(prefix, &format!("nic_acceleration[{i}]"));
                let object = Some(Object::Instance(shown(&a.instance_id)));
                let id = self.guid(
                    &a.instance_id,
                    join(&path, "instance_id"),
                    &object,
                    ErrorCode::InvalidInstanceId,
                );
                let sub = self.guid(
                    &a.subordinate_instance_id,
                    join(&path, "subordinate_instance_id"),
                    &object,
                    ErrorCode::InvalidInstanceId,
                );
                if let (Some(id), Some(sub)) = (id, sub) {
                    subordinates.insert(id, (!sub.is_zero()).then_some(sub));
                }
            }
        }
        if !subordinates.is_empty() {
            for nic in &mut nics {
                if let Some(&sub) = subordinates.get(&nic.instance_id) {
                    nic.subordinate_instance_id = sub;
                }
            }
        }
        nics
    }
}

fn params(lun: &wire::Lun) -> DiskParams {
    let d = DiskParams::default();
    DiskParams {
        fua: lun.fua,
        write_cache: lun.write_cache,
        odx: lun.odx,
        unmap: lun.disable_thin_provisioning.map_or(d.unmap, |off| !off),
        medium_rotation_rate: lun.medium_rotation_rate.unwrap_or(d.medium_rotation_rate),
        physical_sector_size: lun.physical_sector_size,
        max_transfer_length: lun.max_transfer_length,
        size_override: lun.scsi_disk_size_in_bytes,
    }
}

/// Validates a decoded document and builds the settings model, or returns
/// every error found.
///
/// `current` is the settings the document updates (`None` at boot, which
/// is the same as default settings). OpenHCL's merge rules apply: base
/// content replaces the fixed settings and all controllers; the NIC list is
/// replaced by a non-empty base NIC list or a `NetworkDevice` chunk and
/// otherwise kept; `NetworkAcceleration` only updates the subordinate ids
/// of listed NICs. Runtime-change rules are not checked here (see
/// [`crate::update`]).
pub fn validate(input: &Input, current: Option<&Settings>) -> Result<Settings, Errors> {
    let mut v = Validator {
        errors: Collector::default(),
    };
    let mut settings = current.cloned().unwrap_or_default();
    if let Some((prefix, base)) = &input.base {
        if base.version != wire::VERSION_V1 {
            v.push(
                ErrorCode::UnsupportedSchemaVersion,
                join(prefix, "version"),
                &None,
                format!("expected schema version V1, found {}", base.version),
            );
        }
        settings.fixed = Validator::fixed(base.fixed.as_ref());
        settings.controllers = match &base.dynamic {
            Some(dynamic) => v.controllers(prefix, dynamic),
            None => Vec::new(),
        };
    }
    settings.nics = v.nics(input, &settings.nics);
    v.errors.result(settings)
}
