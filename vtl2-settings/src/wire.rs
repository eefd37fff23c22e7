//! The host's schema (`underhill.settings`), message by message, as decoded
//! from any wire format and before validation.
//!
//! Every decoder (JSON now; protobuf and postcard later) produces these
//! types, so [`crate::validate`] checks one shape whatever the encoding.
//! Field names follow the schema's snake_case names; each doc gives the
//! protobuf field number. proto3 `optional` fields are `Option`; plain
//! proto3 scalars use their zero value when absent, as the schema does.
//! Enum fields keep the raw number (proto3 enums are open); the named
//! values are the `*_` constants below.

use alloc::string::String;
use alloc::vec::Vec;

/// `Vtl2SettingsBase.Version.UNKNOWN`.
pub const VERSION_UNKNOWN: i32 = 0;
/// `Vtl2SettingsBase.Version.V1`.
pub const VERSION_V1: i32 = 1;

/// `StorageProtocol.UNKNOWN`.
pub const PROTOCOL_UNKNOWN: i32 = 0;
/// `StorageProtocol.SCSI` (alias `scsi`).
pub const PROTOCOL_SCSI: i32 = 1;
/// `StorageProtocol.IDE` (alias `ide`).
pub const PROTOCOL_IDE: i32 = 2;
/// `StorageProtocol.NVME`.
pub const PROTOCOL_NVME: i32 = 3;

/// `PhysicalDevices.BackingType.UNKNOWN`.
pub const BACKING_UNKNOWN: i32 = 0;
/// `PhysicalDevices.BackingType.SINGLE` (alias `single`).
pub const BACKING_SINGLE: i32 = 1;
/// `PhysicalDevices.BackingType.STRIPED` (alias `striping`).
pub const BACKING_STRIPED: i32 = 2;

/// `PhysicalDevice.DeviceType.UNKNOWN`.
pub const DEVICE_UNKNOWN: i32 = 0;
/// `PhysicalDevice.DeviceType.NVME` (aliases `NVMe`, `nvme`).
pub const DEVICE_NVME: i32 = 1;
/// `PhysicalDevice.DeviceType.VSCSI` (aliases `VScsi`, `vscsi`).
pub const DEVICE_VSCSI: i32 = 2;

/// Chunk namespace of base (fixed + dynamic) settings.
pub const NAMESPACE_BASE: &str = "Base";
/// Chunk namespace of the NIC list.
pub const NAMESPACE_NETWORK_DEVICE: &str = "NetworkDevice";
/// Chunk namespace of NIC acceleration (subordinate ids).
pub const NAMESPACE_NETWORK_ACCELERATION: &str = "NetworkAcceleration";

/// `Vtl2Settings`: the top-level message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vtl2Settings {
    /// 1: namespace chunks.
    pub namespace_settings: Vec<Chunk>,
    /// 2: schema version (legacy top-level form).
    pub version: i32,
    /// 3: fixed settings (legacy top-level form).
    pub fixed: Option<Fixed>,
    /// 4: dynamic settings (legacy top-level form).
    pub dynamic: Option<Dynamic>,
}

impl Vtl2Settings {
    /// Takes the top-level (legacy form) base content — `version`, `fixed`
    /// and `dynamic` — out of the document, leaving its chunks.
    pub fn take_base(&mut self) -> Base {
        Base {
            version: self.version,
            fixed: self.fixed.take(),
            dynamic: self.dynamic.take(),
        }
    }
}

/// `Vtl2SettingsChunk`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk {
    /// 1: `Base`, `NetworkDevice` or `NetworkAcceleration`.
    pub namespace: String,
    /// 2: the chunk's own message, itself JSON or protobuf.
    pub settings: Vec<u8>,
}

/// `Vtl2SettingsBase`: the `Base` chunk's message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Base {
    /// 1: schema version.
    pub version: i32,
    /// 2: fixed settings.
    pub fixed: Option<Fixed>,
    /// 3: dynamic settings.
    pub dynamic: Option<Dynamic>,
}

/// `Vtl2SettingsFixed`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fixed {
    /// 1: SCSI sub-channel count.
    pub scsi_sub_channels: Option<u32>,
    /// 2: I/O ring size.
    pub io_ring_size: Option<u32>,
    /// 3: bounce-buffer budget in pages.
    pub max_bounce_buffer_pages: Option<u32>,
}

/// `Vtl2SettingsDynamic`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dynamic {
    /// 1: storage controllers.
    pub storage_controllers: Vec<StorageController>,
    /// 2: NICs (legacy list).
    pub nic_devices: Vec<NicDeviceLegacy>,
}

/// `NicDeviceLegacy`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NicDeviceLegacy {
    /// 1: GUID string.
    pub instance_id: String,
    /// 2: GUID string.
    pub subordinate_instance_id: Option<String>,
    /// 3: sub-channel count.
    pub max_sub_channels: Option<u32>,
}

/// `NicDevice` (the `NetworkDevice` chunk's list element).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NicDevice {
    /// 1: GUID string.
    pub instance_id: String,
    /// 2: sub-channel count.
    pub max_sub_channels: Option<u32>,
}

/// `Vtl2SettingsNetworkDevice`: the `NetworkDevice` chunk's message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkDevice {
    /// 1: NICs.
    pub nic_devices: Vec<NicDevice>,
}

/// `NicAcceleration`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NicAcceleration {
    /// 1: GUID string.
    pub instance_id: String,
    /// 2: GUID string (zero GUID: no subordinate).
    pub subordinate_instance_id: String,
}

/// `Vtl2SettingsNetworkAcceleration`: the `NetworkAcceleration` chunk's message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkAcceleration {
    /// 1: acceleration entries.
    pub nic_acceleration: Vec<NicAcceleration>,
}

/// `StorageController`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StorageController {
    /// 1: GUID string.
    pub instance_id: String,
    /// 2: `StorageProtocol` number.
    pub protocol: i32,
    /// 3: children.
    pub luns: Vec<Lun>,
    /// 4: I/O queue depth.
    pub io_queue_depth: Option<u32>,
}

/// `Lun`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lun {
    /// 1: IDE channel (IDE only, required there).
    pub channel: Option<u32>,
    /// 2: SCSI LUN, NVMe NSID or IDE drive.
    pub location: u32,
    /// 3: GUID string.
    pub device_id: String,
    /// 4: vendor id.
    pub vendor_id: String,
    /// 5: product id.
    pub product_id: String,
    /// 6: product revision level.
    pub product_revision_level: String,
    /// 7: serial number.
    pub serial_number: String,
    /// 8: model number.
    pub model_number: String,
    /// 9: medium rotation rate.
    pub medium_rotation_rate: Option<u32>,
    /// 10: physical sector size.
    pub physical_sector_size: Option<u32>,
    /// 11: FUA.
    pub fua: Option<bool>,
    /// 12: write cache.
    pub write_cache: Option<bool>,
    /// 13: ODX.
    pub odx: Option<bool>,
    /// 14: disable thin provisioning (unmap).
    pub disable_thin_provisioning: Option<bool>,
    /// 15: maximum transfer length.
    pub max_transfer_length: Option<u64>,
    /// 16: backing devices.
    pub physical_devices: Option<PhysicalDevices>,
    /// 17: DVD drive.
    pub is_dvd: bool,
    /// 18: stripe chunk size in KiB.
    pub chunk_size_in_kb: u32,
    /// 19: disk size override in bytes.
    pub scsi_disk_size_in_bytes: Option<u64>,
    /// 20: GUID string.
    pub ntfs_guid: Option<String>,
    /// 1001 (deprecated, unused).
    pub total_logic_size_in_kb: u32,
    /// 1002 (deprecated legacy form): `DeviceType` number.
    pub device_type: Option<i32>,
    /// 1003 (deprecated legacy form): GUID string.
    pub device_path: Option<String>,
    /// 1004 (deprecated legacy form): NSID or host LUN.
    pub sub_device_path: Option<u32>,
}

/// `PhysicalDevices`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PhysicalDevices {
    /// 1: `BackingType` number.
    pub r#type: i32,
    /// 2: the device (single).
    pub device: Option<PhysicalDevice>,
    /// 3: the devices (striped).
    pub devices: Vec<PhysicalDevice>,
}

/// `PhysicalDevice`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PhysicalDevice {
    /// 1: `DeviceType` number.
    pub device_type: i32,
    /// 2: GUID string of the backing VMBus controller.
    pub device_path: String,
    /// 3: NSID or host LUN.
    pub sub_device_path: u32,
}

/// The schema form of a validated model: base content (version V1, fixed
/// and dynamic, NICs in the legacy `nic_devices` list) that validates back
/// to the same model. Used to re-validate models that arrive in parastor's
/// own formats, and to print a model in the host's schema.
pub fn base_from_model(s: &crate::model::Settings) -> Base {
    use crate::model::{Backing, ChildAddress, PhysicalDeviceKind, Protocol};
    use alloc::string::ToString;
    let device = |d: &crate::model::PhysicalDevice| PhysicalDevice {
        device_type: match d.kind {
            PhysicalDeviceKind::Nvme => DEVICE_NVME,
            PhysicalDeviceKind::Vscsi => DEVICE_VSCSI,
        },
        device_path: d.instance_id.to_string(),
        sub_device_path: d.sub_device,
    };
    let controllers = s
        .controllers
        .iter()
        .map(|c| StorageController {
            instance_id: c.instance_id.to_string(),
            protocol: match c.protocol {
                Protocol::Scsi => PROTOCOL_SCSI,
                Protocol::Ide => PROTOCOL_IDE,
                Protocol::Nvme => PROTOCOL_NVME,
            },
            io_queue_depth: c.io_queue_depth,
            luns: c
                .children
                .iter()
                .map(|ch| {
                    let (channel, location) = match ch.address {
                        ChildAddress::ScsiLun(l) => (None, u32::from(l)),
                        ChildAddress::Ide { channel, drive } => {
                            (Some(u32::from(channel)), u32::from(drive))
                        }
                        ChildAddress::NvmeNsid(n) => (None, n),
                    };
                    let (physical_devices, chunk_size_in_kb) = match &ch.backing {
                        Backing::Empty => (None, 0),
                        Backing::Single(d) => (
                            Some(PhysicalDevices {
                                r#type: BACKING_SINGLE,
                                device: Some(device(d)),
                                devices: Vec::new(),
                            }),
                            0,
                        ),
                        Backing::Striped {
                            devices,
                            chunk_size_kb,
                        } => (
                            Some(PhysicalDevices {
                                r#type: BACKING_STRIPED,
                                device: None,
                                devices: devices.iter().map(device).collect(),
                            }),
                            *chunk_size_kb,
                        ),
                    };
                    let id = &ch.identity;
                    let p = &ch.params;
                    Lun {
                        channel,
                        location,
                        device_id: id.device_id.map(|g| g.to_string()).unwrap_or_default(),
                        vendor_id: id.vendor_id.clone(),
                        product_id: id.product_id.clone(),
                        product_revision_level: id.product_revision_level.clone(),
                        serial_number: id.serial_number.clone(),
                        model_number: id.model_number.clone(),
                        medium_rotation_rate: Some(p.medium_rotation_rate),
                        physical_sector_size: p.physical_sector_size,
                        fua: p.fua,
                        write_cache: p.write_cache,
                        odx: p.odx,
                        disable_thin_provisioning: Some(!p.unmap),
                        max_transfer_length: p.max_transfer_length,
                        physical_devices,
                        is_dvd: ch.is_dvd,
                        chunk_size_in_kb,
                        scsi_disk_size_in_bytes: p.size_override,
                        ntfs_guid: ch.ntfs_guid.map(|g| g.to_string()),
                        ..Lun::default()
                    }
                })
                .collect(),
        })
        .collect();
    let nics = s
        .nics
        .iter()
        .map(|n| NicDeviceLegacy {
            instance_id: n.instance_id.to_string(),
            subordinate_instance_id: n.subordinate_instance_id.map(|g| g.to_string()),
            max_sub_channels: n.max_sub_channels,
        })
        .collect();
    Base {
        version: VERSION_V1,
        fixed: Some(Fixed {
            scsi_sub_channels: Some(s.fixed.scsi_sub_channels),
            io_ring_size: Some(s.fixed.io_ring_size),
            max_bounce_buffer_pages: Some(s.fixed.max_bounce_buffer_pages),
        }),
        dynamic: Some(Dynamic {
            storage_controllers: controllers,
            nic_devices: nics,
        }),
    }
}
