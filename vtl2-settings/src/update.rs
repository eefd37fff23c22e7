//! Runtime settings updates: the change set from the current settings to
//! new ones, and the rules on what may change while the VM runs.
//!
//! As in OpenHCL (`handle_modify_vtl2_settings`):
//!
//! - SCSI controllers are matched by instance id; adding or removing one is
//!   `StorageCannotAddRemoveControllerAtRuntime`. Their LUNs are diffed
//!   slot by slot: a new LUN is added, a gone LUN removed, a changed LUN
//!   removed and added again — except a DVD that only switches between
//!   empty and loaded, which is a media change (insert / eject). Any
//!   change that involves a striped disk is
//!   `StripedStorageCannotChangeControllerAtRuntime`.
//! - IDE: any change is `StorageCannotModifyIdeAtRuntime`, except a DVD
//!   (same slot, identity and parameters) switching between empty and
//!   loaded, which is a media change.
//! - NVMe controllers and namespaces are not diffed: OpenHCL builds them at
//!   boot only and ignores later changes, and so does this module.
//! - Fixed settings and NICs produce no storage change.
//!
//! Error paths are relative to the new document's base content
//! (`dynamic.storage_controllers[i].luns[j]`).

use crate::error::{Error, ErrorCode, Errors, Object};
use crate::model::{Backing, Child, ChildAddress, Controller, Protocol, Settings};
use crate::read;
use crate::validate;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use parastor_hw::Guid;

/// One storage change to apply to a running VM, in application order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Attach a new disk or DVD at a SCSI LUN.
    AddDisk {
        /// The SCSI controller.
        controller: Guid,
        /// The new child (its address is a SCSI LUN).
        child: Box<Child>,
    },
    /// Detach the disk or DVD at a SCSI LUN.
    RemoveDisk {
        /// The SCSI controller.
        controller: Guid,
        /// The LUN.
        lun: u8,
    },
    /// Insert (backing not empty) or eject (backing empty) DVD media.
    ChangeMedia {
        /// The SCSI or IDE controller.
        controller: Guid,
        /// The DVD's address.
        address: ChildAddress,
        /// The new medium.
        backing: Backing,
    },
}

/// The changes from the current settings to new settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeSet {
    /// The changes, in application order (removals before additions on the
    /// same LUN).
    pub changes: Vec<Change>,
}

fn object(c: &Controller, address: ChildAddress) -> Object {
    let instance_id = c.instance_id.to_string();
    match address {
        ChildAddress::ScsiLun(lun) => Object::ScsiLun {
            instance_id,
            lun: lun.into(),
        },
        ChildAddress::Ide { channel, drive } => Object::IdeDevice {
            instance_id,
            channel: Some(channel.into()),
            drive: drive.into(),
        },
        ChildAddress::NvmeNsid(nsid) => Object::NvmeNamespace { instance_id, nsid },
    }
}

/// Whether `old` → `new` is only a DVD media insert or eject.
fn is_media_change(old: &Child, new: &Child) -> bool {
    old.is_dvd && new.is_dvd && (old.backing == Backing::Empty) != (new.backing == Backing::Empty)
}

struct Differ {
    errors: Vec<Error>,
    changes: Vec<Change>,
}

impl Differ {
    fn error(&mut self, code: ErrorCode, path: String, object: Object, message: &str) {
        self.errors
            .push(Error::new(code, path, message).with_object(Some(object)));
    }

    fn child_path(c: &Controller, index: usize, address: ChildAddress) -> String {
        match c.children.iter().position(|ch| ch.address == address) {
            Some(j) => format!("dynamic.storage_controllers[{index}].luns[{j}]"),
            None => format!("dynamic.storage_controllers[{index}].luns"),
        }
    }

    fn scsi(&mut self, old: &Controller, new: &Controller, index: usize) {
        for (address, o, n) in changed_slots(old, new) {
            if let (Some(o), Some(n)) = (o, n)
                && is_media_change(o, n)
            {
                self.changes.push(Change::ChangeMedia {
                    controller: new.instance_id,
                    address,
                    backing: n.backing.clone(),
                });
                continue;
            }
            if o.is_some_and(|c| c.backing.is_striped())
                || n.is_some_and(|c| c.backing.is_striped())
            {
                self.error(
                    ErrorCode::StripedStorageCannotChangeControllerAtRuntime,
                    Self::child_path(new, index, address),
                    object(new, address),
                    "a striped disk cannot be added, removed or changed at runtime",
                );
                continue;
            }
            let ChildAddress::ScsiLun(lun) = address else {
                continue;
            };
            if o.is_some() {
                self.changes.push(Change::RemoveDisk {
                    controller: new.instance_id,
                    lun,
                });
            }
            if let Some(n) = n {
                self.changes.push(Change::AddDisk {
                    controller: new.instance_id,
                    child: Box::new(n.clone()),
                });
            }
        }
    }

    fn ide(&mut self, old: &Controller, new: &Controller, index: usize) {
        if old.io_queue_depth != new.io_queue_depth {
            self.error(
                ErrorCode::StorageCannotModifyIdeAtRuntime,
                format!("dynamic.storage_controllers[{index}].io_queue_depth"),
                Object::Instance(new.instance_id.to_string()),
                "the IDE controller cannot change at runtime",
            );
        }
        for (address, o, n) in changed_slots(old, new) {
            if let (Some(o), Some(n)) = (o, n)
                && is_media_change(o, n)
                && o.identity == n.identity
                && o.params == n.params
                && o.ntfs_guid == n.ntfs_guid
            {
                self.changes.push(Change::ChangeMedia {
                    controller: new.instance_id,
                    address,
                    backing: n.backing.clone(),
                });
                continue;
            }
            self.error(
                ErrorCode::StorageCannotModifyIdeAtRuntime,
                Self::child_path(new, index, address),
                object(new, address),
                "IDE devices cannot change at runtime, except DVD media insert or eject",
            );
        }
    }
}

/// Every child address of `old` or `new` whose child differs between them,
/// in address order, with the child before and after.
fn changed_slots<'a>(
    old: &'a Controller,
    new: &'a Controller,
) -> Vec<(ChildAddress, Option<&'a Child>, Option<&'a Child>)> {
    let before: BTreeMap<_, _> = old.children.iter().map(|c| (c.address, c)).collect();
    let after: BTreeMap<_, _> = new.children.iter().map(|c| (c.address, c)).collect();
    let mut slots: Vec<_> = before.keys().chain(after.keys()).copied().collect();
    slots.sort_unstable();
    slots.dedup();
    slots
        .into_iter()
        .map(|a| (a, before.get(&a).copied(), after.get(&a).copied()))
        .filter(|(_, o, n)| o != n)
        .collect()
}

/// The controller of `s` with `c`'s instance id and protocol.
fn find<'a>(s: &'a Settings, c: &Controller) -> Option<&'a Controller> {
    s.controllers
        .iter()
        .find(|o| o.instance_id == c.instance_id && o.protocol == c.protocol)
}

/// Computes the changes from `old` to `new` (both validated), or every
/// runtime rule they break.
pub fn diff(old: &Settings, new: &Settings) -> Result<ChangeSet, Errors> {
    let mut d = Differ {
        errors: Vec::new(),
        changes: Vec::new(),
    };
    let runtime_code = |p: Protocol| match p {
        Protocol::Ide => ErrorCode::StorageCannotModifyIdeAtRuntime,
        _ => ErrorCode::StorageCannotAddRemoveControllerAtRuntime,
    };
    for (i, new_c) in new.controllers.iter().enumerate() {
        if new_c.protocol == Protocol::Nvme {
            continue;
        }
        match find(old, new_c) {
            None => d.error(
                runtime_code(new_c.protocol),
                format!("dynamic.storage_controllers[{i}]"),
                Object::Instance(new_c.instance_id.to_string()),
                "a controller cannot be added at runtime",
            ),
            Some(old_c) if new_c.protocol == Protocol::Scsi => d.scsi(old_c, new_c, i),
            Some(old_c) => d.ide(old_c, new_c, i),
        }
    }
    for old_c in &old.controllers {
        if old_c.protocol != Protocol::Nvme && find(new, old_c).is_none() {
            d.error(
                runtime_code(old_c.protocol),
                String::from("dynamic.storage_controllers"),
                Object::Instance(old_c.instance_id.to_string()),
                "a controller cannot be removed at runtime",
            );
        }
    }
    if d.errors.is_empty() {
        Ok(ChangeSet { changes: d.changes })
    } else {
        Err(Errors(d.errors))
    }
}

/// Reads a settings update against the current settings: decodes it,
/// validates it, merges it onto `current` and computes the change set.
pub fn read_update(data: &[u8], current: &Settings) -> Result<(Settings, ChangeSet), Errors> {
    let new = validate::validate(&read::decode(data)?, Some(current))?;
    let changes = diff(current, &new)?;
    Ok((new, changes))
}
