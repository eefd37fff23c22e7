//! Errors, as the host expects them: OpenHCL's error codes
//! (`Vtl2SettingsErrorCode`, written `"<Category>.<Code>"`), each with the
//! path of the field at fault and the object it belongs to.
//!
//! Decoders and validation report every error of a document (up to
//! [`MAX_ERRORS`], then how many more), so the public results carry an
//! [`Errors`] list, never a single error.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

macro_rules! codes {
    ($($(#[$m:meta])* $name:ident,)*) => {
        /// OpenHCL's host-visible error codes (`Vtl2SettingsErrorCode`), all
        /// of them, so every later stage (resolver, runtime) reports in the
        /// same vocabulary.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum ErrorCode {
            $($(#[$m])* $name,)*
        }

        impl ErrorCode {
            /// Every code, in OpenHCL's order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The code's name as the host sees it, without the category.
            pub const fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => stringify!($name),)*
                }
            }
        }
    };
}

codes! {
    /// An internal failure of the service.
    InternalFailure,
    /// The JSON document is malformed or breaks the schema's shape.
    JsonFormatError,
    /// No VMBus server is available.
    NoVmbusServer,
    /// The schema version is not supported.
    UnsupportedSchemaVersion,
    /// A GUID field does not hold a GUID.
    InvalidInstanceId,
    /// The protobuf document is malformed.
    ProtobufFormatError,
    /// A chunk names an unknown namespace.
    UnsupportedSchemaNamespace,
    /// A chunk has no settings.
    EmptyNamespaceChunk,
    /// A controller was added or removed at runtime.
    StorageCannotAddRemoveControllerAtRuntime,
    /// A LUN location or NSID is out of range.
    StorageLunLocationExceedsMaxLimits,
    /// Two children of a controller share a location.
    StorageLunLocationDuplicated,
    /// An unsupported device or backing type.
    StorageUnsupportedDeviceType,
    /// A backing device was not found in VTL2.
    StorageCannotFindVtl2Device,
    /// An empty drive where none is allowed.
    EmptyDriveNotAllowed,
    /// A backing device could not be opened.
    StorageCannotOpenVtl2Device,
    /// A SCSI controller was not found.
    StorageScsiControllerNotFound,
    /// Attaching a disk failed.
    StorageAttachDiskFailed,
    /// Removing a disk failed.
    StorageRmDiskFailed,
    /// Two controllers share an instance id.
    StorageControllerGuidAlreadyExists,
    /// Too many SCSI controllers.
    StorageScsiControllerExceedsMaxLimits,
    /// Bad vendor id.
    StorageInvalidVendorId,
    /// Bad product id.
    StorageInvalidProductId,
    /// Bad product revision level.
    StorageInvalidProductRevisionLevel,
    /// IDE child without a channel.
    StorageIdeChannelNotProvided,
    /// IDE channel, drive or controller count out of range.
    StorageIdeChannelExceedsMaxLimits,
    /// IDE location out of range.
    StorageIdeLocationExceedsMaxLimits,
    /// Two IDE children in one slot.
    StorageIdeChannelInvalidConfiguration,
    /// A striped disk changed at runtime.
    StripedStorageCannotChangeControllerAtRuntime,
    /// Wrong number of physical devices for the backing type.
    StorageInvalidPhysicalDiskCount,
    /// IDE changed at runtime (other than DVD media).
    StorageCannotModifyIdeAtRuntime,
    /// Unknown controller protocol.
    StorageInvalidControllerType,
    /// Bad device id.
    StorageInvalidDeviceId,
    /// Changing DVD media failed.
    StorageChangeMediaFailed,
    /// Bad NTFS format GUID.
    StorageInvalidNtfsFormatGuid,
    /// Modifying a NIC failed.
    NetworkingModifyNicFailed,
    /// Adding a NIC failed.
    NetworkingAddNicFailed,
    /// Removing a NIC failed.
    NetworkingRemoveNicFailed,
}

/// The category part of a host error id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// Failures of the paravisor itself.
    Underhill,
    /// Failures while creating the VM's devices.
    VmCreation,
    /// Errors in the settings the host sent.
    Configuration,
}

impl Category {
    /// The category's name.
    pub const fn name(self) -> &'static str {
        match self {
            Category::Underhill => "Underhill",
            Category::VmCreation => "VmCreation",
            Category::Configuration => "Configuration",
        }
    }
}

impl ErrorCode {
    /// The category this crate reports the code under. Everything this
    /// crate detects is a fault in the host's settings, so it is
    /// `Configuration` (the reference's example is
    /// `Configuration.StorageScsiControllerExceedsMaxLimits`); only
    /// `InternalFailure` is the paravisor's own.
    pub const fn category(self) -> Category {
        match self {
            ErrorCode::InternalFailure => Category::Underhill,
            _ => Category::Configuration,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.category().name(), self.name())
    }
}

/// The object an error belongs to, as OpenHCL's messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// A controller or NIC, by its instance id as written in the document
    /// (cut to [`MAX_QUOTED`] bytes, see [`shown`]).
    Instance(String),
    /// A SCSI LUN of a controller.
    ScsiLun {
        /// Controller instance id as written (cut like [`Object::Instance`]).
        instance_id: String,
        /// The LUN.
        lun: u32,
    },
    /// An NVMe namespace of a controller.
    NvmeNamespace {
        /// Controller instance id as written (cut like [`Object::Instance`]).
        instance_id: String,
        /// The namespace id.
        nsid: u32,
    },
    /// An IDE device of a controller.
    IdeDevice {
        /// Controller instance id as written (cut like [`Object::Instance`]).
        instance_id: String,
        /// The channel, if given.
        channel: Option<u32>,
        /// The drive (`location`).
        drive: u32,
    },
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Instance(id) => write!(f, "instance ID: {id}"),
            Object::ScsiLun { instance_id, lun } => {
                write!(f, "instance ID: {instance_id}, scsi LUN {lun}")
            }
            Object::NvmeNamespace { instance_id, nsid } => {
                write!(f, "instance ID: {instance_id}, nvme namespace ID {nsid}")
            }
            Object::IdeDevice {
                instance_id,
                channel,
                drive,
            } => match channel {
                Some(c) => write!(f, "instance ID: {instance_id}, ide device {c}/{drive}"),
                None => write!(f, "instance ID: {instance_id}, ide device ?/{drive}"),
            },
        }
    }
}

/// One error in a settings document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The host-visible code.
    pub code: ErrorCode,
    /// Path of the field at fault, e.g.
    /// `dynamic.storage_controllers[1].luns[0].location`; empty for the
    /// document itself.
    pub path: String,
    /// The object the field belongs to, when there is one.
    pub object: Option<Object>,
    /// What was wrong and what was expected.
    pub message: String,
}

impl Error {
    /// A new error without an object.
    pub fn new(code: ErrorCode, path: impl Into<String>, message: impl Into<String>) -> Error {
        Error {
            code,
            path: path.into(),
            object: None,
            message: message.into(),
        }
    }

    /// The same error, naming `object`.
    pub fn with_object(mut self, object: Option<Object>) -> Error {
        self.object = object;
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.code)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(o) = &self.object {
            write!(f, ", {o}")?;
        }
        Ok(())
    }
}

impl core::error::Error for Error {}

/// Most errors one document reports in detail. A hostile document can
/// hold an error every two bytes (an empty protobuf message, a JSON `{}`),
/// and each error costs a few hundred bytes, so an unbounded list would
/// turn a 1 MiB blob into hundreds of MiB of errors. Four full SCSI
/// controllers with every LUN wrong in a few ways come to about a thousand;
/// past that a longer list helps no one. One last error then says how many
/// more were found.
pub const MAX_ERRORS: usize = 1024;

/// Longest value (an id, a string the host sent) an error quotes; longer
/// ones are cut and marked `…` ([`shown`]).
pub const MAX_QUOTED: usize = 64;

/// `s` as an error quotes it: at most [`MAX_QUOTED`] bytes (cut on a
/// character boundary, then `…`), so a hostile megabyte-long id repeated in
/// every error of its LUNs costs a few dozen bytes each.
pub fn shown(s: &str) -> String {
    if s.len() <= MAX_QUOTED {
        return String::from(s);
    }
    let mut end = MAX_QUOTED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::from(s.get(..end).unwrap_or_default());
    out.push('…');
    out
}

/// Collects a document's errors: the first [`MAX_ERRORS`] in full, the
/// rest only counted.
#[derive(Debug, Default)]
pub(crate) struct Collector {
    errors: Vec<Error>,
    /// The code of the first error not kept, and how many were not kept.
    dropped: Option<(ErrorCode, usize)>,
}

impl Collector {
    pub(crate) fn push(&mut self, e: Error) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        } else {
            self.dropped.get_or_insert((e.code, 0)).1 += 1;
        }
    }

    pub(crate) fn extend(&mut self, errors: Errors) {
        for e in errors.0 {
            self.push(e);
        }
    }

    /// Errors found so far, kept or not.
    pub(crate) fn count(&self) -> usize {
        self.errors.len() + self.dropped.map_or(0, |(_, n)| n)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// The errors kept, then (if any were not) one naming how many more
    /// there were, under the code of the first of them.
    pub(crate) fn into_errors(mut self) -> Errors {
        if let Some((code, n)) = self.dropped {
            self.errors.push(Error::new(
                code,
                "",
                format!("{n} more errors not reported (at most {MAX_ERRORS} are)"),
            ));
        }
        Errors(self.errors)
    }

    /// `Ok(value)` when no error was found, else every error.
    pub(crate) fn result<T>(self, value: T) -> Result<T, Errors> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self.into_errors())
        }
    }
}

/// Every error of a document (never empty when returned as an error), or
/// the first [`MAX_ERRORS`] of them and one saying how many more there
/// were.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Errors(pub Vec<Error>);

impl Errors {
    /// Whether any error with `code` is present.
    pub fn contains(&self, code: ErrorCode) -> bool {
        self.0.iter().any(|e| e.code == code)
    }

    /// The codes, in report order.
    pub fn codes(&self) -> Vec<ErrorCode> {
        self.0.iter().map(|e| e.code).collect()
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl core::error::Error for Errors {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn error_code_names_are_host_ids() {
        assert_eq!(
            ErrorCode::StorageScsiControllerExceedsMaxLimits.to_string(),
            "Configuration.StorageScsiControllerExceedsMaxLimits"
        );
        assert_eq!(ErrorCode::ALL.len(), 37);
        assert_eq!(ErrorCode::ALL[0], ErrorCode::InternalFailure);
    }

    #[test]
    fn shown_cuts_long_values_on_a_char_boundary() {
        assert_eq!(shown("abc"), "abc");
        let exact = "a".repeat(MAX_QUOTED);
        assert_eq!(shown(&exact), exact);
        let long = alloc::format!("a{}", "é".repeat(100));
        let cut = shown(&long);
        assert_eq!(cut.len(), MAX_QUOTED - 1 + 3);
        assert!(cut.ends_with("é…"));
    }

    #[test]
    fn collector_keeps_the_first_errors_and_counts_the_rest() {
        let c = Collector::default();
        assert!(c.is_empty());
        assert_eq!(c.result(5), Ok(5));
        let mut c = Collector::default();
        for _ in 0..MAX_ERRORS {
            c.push(Error::new(ErrorCode::InvalidInstanceId, "a", "x"));
        }
        c.extend(Errors(alloc::vec![
            Error::new(ErrorCode::StorageInvalidVendorId, "b", "y"),
            Error::new(ErrorCode::InvalidInstanceId, "c", "z"),
        ]));
        assert_eq!(c.count(), MAX_ERRORS + 2);
        let e = c.result(()).unwrap_err();
        assert_eq!(e.0.len(), MAX_ERRORS + 1);
        let last = &e.0[MAX_ERRORS];
        assert_eq!(last.code, ErrorCode::StorageInvalidVendorId);
        assert_eq!(last.path, "");
        assert_eq!(
            last.message,
            alloc::format!("2 more errors not reported (at most {MAX_ERRORS} are)")
        );
    }

    #[test]
    fn error_display_names_path_and_object() {
        let e = Error::new(
            ErrorCode::StorageLunLocationDuplicated,
            "dynamic.storage_controllers[0].luns[1].location",
            "LUN used twice",
        )
        .with_object(Some(Object::ScsiLun {
            instance_id: "abc".into(),
            lun: 3,
        }));
        assert_eq!(
            e.to_string(),
            "Configuration.StorageLunLocationDuplicated: \
             dynamic.storage_controllers[0].luns[1].location: LUN used twice, \
             instance ID: abc, scsi LUN 3"
        );
    }
}
