//! The validated settings model, in parastor's own terms.
//!
//! This is what the rest of parastor consumes: every value here has passed
//! validation ([`crate::validate`]), so a SCSI LUN is below 64, an IDE drive
//! is at a real (channel, drive) slot, a striped set has at least two
//! members, and so on. Wire details (field numbers, legacy field forms,
//! aliases) stay in [`crate::wire`] and the decoders.
//!
//! Every default lives in [`defaults`]; nothing else in the crate spells a
//! default value.

use alloc::string::String;
use alloc::vec::Vec;
use parastor_hw::Guid;

/// Defaults and limits, each exactly as the reference (OpenHCL's
/// `underhill_config`) gives it. This is the only place they are spelled.
pub mod defaults {
    /// `fixed.scsi_sub_channels` when absent.
    pub const SCSI_SUB_CHANNELS: u32 = 0;
    /// The largest sub-channel count a SCSI controller is given; larger
    /// requests are clamped to it when used.
    pub const MAX_SCSI_SUB_CHANNELS: u32 = 256;
    /// `fixed.io_ring_size` when absent.
    pub const IO_RING_SIZE: u32 = 256;
    /// `fixed.max_bounce_buffer_pages` when absent (OpenHCL's default).
    pub const MAX_BOUNCE_BUFFER_PAGES: u32 = 2048;
    /// `medium_rotation_rate` when absent (0: rate not reported).
    pub const MEDIUM_ROTATION_RATE: u32 = 0;
    /// Most SCSI controllers in one document.
    pub const MAX_SCSI_CONTROLLERS: usize = 4;
    /// SCSI LUNs per controller: locations `0..SCSI_LUN_COUNT`.
    pub const SCSI_LUN_COUNT: u32 = 64;
    /// Most IDE controllers in one document.
    pub const MAX_IDE_CONTROLLERS: usize = 1;
    /// IDE channels per controller.
    pub const IDE_CHANNELS: u32 = 2;
    /// IDE drives per channel.
    pub const IDE_DRIVES_PER_CHANNEL: u32 = 2;
    /// NVMe namespace ids that are never valid (0 and the broadcast id).
    pub const INVALID_NSIDS: [u32; 2] = [0, 0xFFFF_FFFF];
    /// Longest `vendor_id`, in bytes.
    pub const VENDOR_ID_MAX_LEN: usize = 8;
    /// Longest `product_id`, in bytes.
    pub const PRODUCT_ID_MAX_LEN: usize = 16;
    /// Longest `product_revision_level`, in bytes.
    pub const PRODUCT_REVISION_MAX_LEN: usize = 4;
    /// Bytes allowed in vendor / product / revision strings (OpenHCL's
    /// "printable ASCII", which includes 0x7F).
    pub const IDENTITY_BYTES: core::ops::RangeInclusive<u8> = 0x20..=0x7f;
}

/// The whole validated settings document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// Settings fixed for the life of the VM.
    pub fixed: FixedSettings,
    /// The guest-visible storage controllers, in document order.
    pub controllers: Vec<Controller>,
    /// NICs (parsed and validated only; parastor does nothing else with them).
    pub nics: Vec<Nic>,
}

/// Settings fixed for the life of the VM (`Vtl2SettingsFixed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedSettings {
    /// Requested SCSI sub-channel count, as given; see
    /// [`FixedSettings::effective_scsi_sub_channels`].
    pub scsi_sub_channels: u32,
    /// I/O ring size.
    pub io_ring_size: u32,
    /// Bounce-buffer budget, in pages.
    pub max_bounce_buffer_pages: u32,
}

impl Default for FixedSettings {
    fn default() -> Self {
        FixedSettings {
            scsi_sub_channels: defaults::SCSI_SUB_CHANNELS,
            io_ring_size: defaults::IO_RING_SIZE,
            max_bounce_buffer_pages: defaults::MAX_BOUNCE_BUFFER_PAGES,
        }
    }
}

impl FixedSettings {
    /// The sub-channel count a SCSI controller is given: the requested
    /// count clamped to [`defaults::MAX_SCSI_SUB_CHANNELS`].
    pub fn effective_scsi_sub_channels(&self) -> u32 {
        self.scsi_sub_channels.min(defaults::MAX_SCSI_SUB_CHANNELS)
    }
}

/// The guest-visible protocol of a controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// StorVSP (SCSI over VMBus).
    Scsi,
    /// IDE (emulated, with StorVSP acceleration).
    Ide,
    /// NVMe over VPCI.
    Nvme,
}

/// One guest-visible storage controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    /// Guest-visible identity: StorVSP instance id, VPCI instance id and
    /// NVMe subsystem identity.
    pub instance_id: Guid,
    /// The controller's protocol.
    pub protocol: Protocol,
    /// Per-controller I/O queue depth; `None` means the service default.
    pub io_queue_depth: Option<u32>,
    /// The controller's children (LUNs, drives or namespaces), in document
    /// order. Every child's [`Child::address`] matches [`Controller::protocol`].
    pub children: Vec<Child>,
}

/// Where a child sits on its controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChildAddress {
    /// A SCSI LUN, below [`defaults::SCSI_LUN_COUNT`].
    ScsiLun(u8),
    /// An IDE (channel, drive) slot, each below 2.
    Ide {
        /// Channel: 0 primary, 1 secondary.
        channel: u8,
        /// Drive on the channel: 0 or 1.
        drive: u8,
    },
    /// An NVMe namespace id (never 0 or 0xFFFFFFFF).
    NvmeNsid(u32),
}

/// One LUN, IDE drive or NVMe namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// Where the guest sees it.
    pub address: ChildAddress,
    /// Identity strings reported to the guest (INQUIRY / Identify).
    pub identity: Identity,
    /// Disk parameters.
    pub params: DiskParams,
    /// Whether this is a DVD drive (SCSI and IDE only).
    pub is_dvd: bool,
    /// What stores the data.
    pub backing: Backing,
    /// If set, the disk is formatted as NTFS with this GUID before use.
    pub ntfs_guid: Option<Guid>,
}

/// Identity strings a child reports to the guest, preserved exactly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// Disk id. Always present and non-zero for SCSI and IDE hard disks
    /// (validation requires it); for DVDs and NVMe namespaces it is the
    /// parsed value when the document's string was a GUID, else `None`.
    pub device_id: Option<Guid>,
    /// SCSI vendor id (at most 8 printable ASCII bytes on SCSI/IDE).
    pub vendor_id: String,
    /// SCSI product id (at most 16 printable ASCII bytes on SCSI/IDE).
    pub product_id: String,
    /// SCSI product revision level (at most 4 printable ASCII bytes on SCSI/IDE).
    pub product_revision_level: String,
    /// Serial number.
    pub serial_number: String,
    /// Model number.
    pub model_number: String,
}

/// Disk parameters of a child. `None` means "not set: use the backing's
/// own value or the frontend's default".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskParams {
    /// Whether FUA is reported.
    pub fua: Option<bool>,
    /// Whether a write cache is reported.
    pub write_cache: Option<bool>,
    /// Whether ODX (offloaded data transfer) is reported.
    pub odx: Option<bool>,
    /// Whether unmap (thin provisioning) is exposed: the inverse of the
    /// wire's `disable_thin_provisioning`, default `true`.
    pub unmap: bool,
    /// Medium rotation rate (VPD B1h); 0 when not set.
    pub medium_rotation_rate: u32,
    /// Physical sector size override, in bytes.
    pub physical_sector_size: Option<u32>,
    /// Maximum transfer length, in bytes.
    pub max_transfer_length: Option<u64>,
    /// Disk size override, in bytes (`scsi_disk_size_in_bytes`).
    pub size_override: Option<u64>,
}

impl Default for DiskParams {
    fn default() -> Self {
        DiskParams {
            fua: None,
            write_cache: None,
            odx: None,
            unmap: true,
            medium_rotation_rate: defaults::MEDIUM_ROTATION_RATE,
            physical_sector_size: None,
            max_transfer_length: None,
            size_override: None,
        }
    }
}

/// What stores a child's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// No medium: only valid for a DVD (an empty drive).
    Empty,
    /// One physical device.
    Single(PhysicalDevice),
    /// Two or more physical devices striped together.
    Striped {
        /// The members, in stripe order.
        devices: Vec<PhysicalDevice>,
        /// Stripe chunk size in KiB, as given (`chunk_size_in_kb`).
        chunk_size_kb: u32,
    },
}

impl Backing {
    /// Whether this is a striped set.
    pub fn is_striped(&self) -> bool {
        matches!(self, Backing::Striped { .. })
    }
}

/// The kind of device the host offers VTL2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PhysicalDeviceKind {
    /// An NVMe namespace on a PCI function (VPCI over VMBus).
    Nvme,
    /// A vSCSI LUN on a VMBus SCSI controller.
    Vscsi,
}

/// One device the host offers VTL2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysicalDevice {
    /// NVMe or vSCSI.
    pub kind: PhysicalDeviceKind,
    /// VMBus instance id of the backing controller (`device_path`).
    pub instance_id: Guid,
    /// NVMe namespace id or vSCSI host LUN (`sub_device_path`).
    pub sub_device: u32,
}

/// A NIC of the document (validated, otherwise unused by parastor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nic {
    /// The NIC's instance id.
    pub instance_id: Guid,
    /// Accelerated subordinate NIC, if any (a zero GUID means none).
    pub subordinate_instance_id: Option<Guid>,
    /// Sub-channel count, if set.
    pub max_sub_channels: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_defaults_match_reference() {
        let f = FixedSettings::default();
        assert_eq!(f.scsi_sub_channels, 0);
        assert_eq!(f.io_ring_size, 256);
        assert_eq!(f.max_bounce_buffer_pages, 2048);
    }

    #[test]
    fn sub_channels_clamped_to_256() {
        let mut f = FixedSettings {
            scsi_sub_channels: 31,
            ..FixedSettings::default()
        };
        assert_eq!(f.effective_scsi_sub_channels(), 31);
        f.scsi_sub_channels = 100_000;
        assert_eq!(f.effective_scsi_sub_channels(), 256);
    }

    #[test]
    fn disk_params_default_unmap_on() {
        let p = DiskParams::default();
        assert!(p.unmap);
        assert_eq!(p.medium_rotation_rate, 0);
        assert_eq!(p.fua, None);
    }

    #[test]
    fn backing_is_striped() {
        assert!(!Backing::Empty.is_striped());
        assert!(
            Backing::Striped {
                devices: Vec::new(),
                chunk_size_kb: 128
            }
            .is_striped()
        );
    }
}
