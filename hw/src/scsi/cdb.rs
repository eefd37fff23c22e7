//! CDB layouts of the SPC / SBC commands a disk runs, and their flag
//! bytes.
//!
//! The LBA commands share three shapes, [`Cdb10`], [`Cdb12`] and
//! [`Cdb16`], generic over the meaning of byte 1: [`RwFlags`] for READ,
//! WRITE and COMPARE AND WRITE, [`VerifyFlags`] for VERIFY and WRITE AND
//! VERIFY, [`WriteSameFlags`] and [`SyncCacheFlags`]. The CDBs of
//! INQUIRY, MODE SENSE / SELECT and PERSISTENT RESERVE IN / OUT live with
//! their topic.

use bitfield_struct::bitfield;
use zerocopy::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::codes::{Control, ScsiOp, ServiceActionByte};
use crate::open_enum::open_enum;

/// READ(6) / WRITE(6) byte 1: the high bits of the LBA.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Lba6High {
    /// LBA bits 20:16.
    #[bits(5)]
    pub lba: u8,
    /// Reserved.
    #[bits(3)]
    pub reserved: u8,
}

wire_layout! {
    /// READ(6) / WRITE(6).
    pub struct Cdb6Rw {
        /// Operation code.
        pub op: ScsiOp,
        /// LBA bits 20:16.
        pub lba_hi: Lba6High,
        /// LBA bits 15:0.
        pub lba: U16,
        /// Transfer length; 0 means 256 blocks.
        pub len: u8,
        /// Control.
        pub control: Control,
    }
    size 6
}

/// The 10-byte LBA CDB: READ / WRITE / VERIFY / WRITE AND VERIFY (with
/// [`RwFlags`] or [`VerifyFlags`]), WRITE SAME ([`WriteSameFlags`]),
/// SYNCHRONIZE CACHE ([`SyncCacheFlags`]).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct Cdb10<F> {
    /// Operation code.
    pub op: ScsiOp,
    /// Byte 1: the command's flags.
    pub flags: F,
    /// Logical block address.
    pub lba: U32,
    /// Group number (4:0).
    pub group: u8,
    /// Transfer / verification / number of blocks.
    pub len: U16,
    /// Control.
    pub control: Control,
}

const _: () = assert!(size_of::<Cdb10<RwFlags>>() == 10);

/// The 12-byte LBA CDB: READ / WRITE / VERIFY / WRITE AND VERIFY(12).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct Cdb12<F> {
    /// Operation code.
    pub op: ScsiOp,
    /// Byte 1: the command's flags.
    pub flags: F,
    /// Logical block address.
    pub lba: U32,
    /// Transfer length.
    pub len: U32,
    /// Group number (4:0).
    pub group: u8,
    /// Control.
    pub control: Control,
}

const _: () = assert!(size_of::<Cdb12<RwFlags>>() == 12);

/// The 16-byte LBA CDB: READ / WRITE / VERIFY / WRITE AND VERIFY / WRITE
/// SAME / SYNCHRONIZE CACHE(16).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct Cdb16<F> {
    /// Operation code.
    pub op: ScsiOp,
    /// Byte 1: the command's flags.
    pub flags: F,
    /// Logical block address.
    pub lba: U64,
    /// Transfer length / number of blocks.
    pub len: U32,
    /// Group number (4:0).
    pub group: u8,
    /// Control.
    pub control: Control,
}

const _: () = assert!(size_of::<Cdb16<RwFlags>>() == 16);

/// Byte 1 of READ / WRITE(10/12/16) and COMPARE AND WRITE.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct RwFlags {
    /// RELADR (obsolete; refused).
    pub reladr: bool,
    /// FUA_NV (obsolete).
    pub fua_nv: bool,
    /// RARC (READ): rebuild assist recovery control.
    pub rarc: bool,
    /// FUA: force unit access.
    pub fua: bool,
    /// DPO: disable page out.
    pub dpo: bool,
    /// RDPROTECT / WRPROTECT.
    #[bits(3)]
    pub protect: u8,
}

/// Byte 1 of VERIFY and WRITE AND VERIFY(10/12/16).
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct VerifyFlags {
    /// RELADR (obsolete; refused).
    pub reladr: bool,
    /// BYTCHK: 0 no data compared, 1 all data, 3 one block compared with
    /// each (VERIFY only).
    #[bits(2)]
    pub bytchk: u8,
    /// Reserved.
    pub reserved: bool,
    /// DPO: disable page out.
    pub dpo: bool,
    /// VRPROTECT / WRPROTECT.
    #[bits(3)]
    pub protect: u8,
}

/// Byte 1 of WRITE SAME(10/16).
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct WriteSameFlags {
    /// NDOB (WRITE SAME(16) only): no data-out buffer, write zeros.
    pub ndob: bool,
    /// LBDATA (obsolete).
    pub lbdata: bool,
    /// PBDATA (obsolete).
    pub pbdata: bool,
    /// UNMAP: unmap the blocks if possible.
    pub unmap: bool,
    /// ANCHOR.
    pub anchor: bool,
    /// WRPROTECT.
    #[bits(3)]
    pub protect: u8,
}

/// Byte 1 of SYNCHRONIZE CACHE(10/16).
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct SyncCacheFlags {
    /// Obsolete.
    pub obsolete: bool,
    /// IMMED: return before the cache is synchronized.
    pub immed: bool,
    /// SYNC_NV (obsolete).
    pub sync_nv: bool,
    /// Reserved.
    #[bits(5)]
    pub reserved: u8,
}

wire_layout! {
    /// COMPARE AND WRITE.
    pub struct CompareAndWriteCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// WRPROTECT, DPO, FUA.
        pub flags: RwFlags,
        /// Logical block address.
        pub lba: U64,
        /// Reserved.
        pub reserved: [u8; 3],
        /// Number of logical blocks (the data-out buffer holds twice this).
        pub blocks: u8,
        /// Group number (4:0).
        pub group: u8,
        /// Control.
        pub control: Control,
    }
    size 16
}

/// The request byte of READ DEFECT DATA (byte 2 of the 10-byte form,
/// byte 1 of the 12-byte form).
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DefectListFlags {
    /// DEFECT LIST FORMAT requested (SBC-4 table 6.2.x).
    #[bits(3)]
    pub format: u8,
    /// REQ_GLIST: return the grown defect list.
    pub req_glist: bool,
    /// REQ_PLIST: return the primary defect list.
    pub req_plist: bool,
    /// Reserved.
    #[bits(3)]
    pub reserved: u8,
}

wire_layout! {
    /// READ DEFECT DATA(10) parameter data header (SBC-4): byte 1 has the
    /// layout of [`DefectListFlags`], its two list bits meaning PLISTV /
    /// GLISTV (the list is returned) and its format the list's format.
    pub struct DefectData10Header {
        /// Reserved.
        pub reserved: u8,
        /// PLISTV, GLISTV, DEFECT LIST FORMAT.
        pub flags: DefectListFlags,
        /// DEFECT LIST LENGTH, in bytes.
        pub len: U16,
    }
    size 4
}

wire_layout! {
    /// READ DEFECT DATA(12) parameter data header (SBC-4).
    pub struct DefectData12Header {
        /// Reserved.
        pub reserved: u8,
        /// PLISTV, GLISTV, DEFECT LIST FORMAT.
        pub flags: DefectListFlags,
        /// GENERATION CODE (0: not supported).
        pub generation: U16,
        /// DEFECT LIST LENGTH, in bytes.
        pub len: U32,
    }
    size 8
}

wire_layout! {
    /// READ DEFECT DATA(10).
    pub struct ReadDefectData10Cdb {
        /// Operation code.
        pub op: ScsiOp,
        /// Reserved.
        pub reserved: u8,
        /// REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT.
        pub flags: DefectListFlags,
        /// Reserved.
        pub reserved2: [u8; 4],
        /// Allocation length.
        pub alloc_len: U16,
        /// Control.
        pub control: Control,
    }
    size 10
}

wire_layout! {
    /// READ DEFECT DATA(12).
    pub struct ReadDefectData12Cdb {
        /// Operation code.
        pub op: ScsiOp,
        /// REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT.
        pub flags: DefectListFlags,
        /// ADDRESS DESCRIPTOR INDEX: the first defect descriptor returned.
        pub index: U32,
        /// Allocation length.
        pub alloc_len: U32,
        /// Reserved.
        pub reserved: u8,
        /// Control.
        pub control: Control,
    }
    size 12
}

/// UNMAP byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct UnmapFlags {
    /// ANCHOR.
    pub anchor: bool,
    /// Reserved.
    #[bits(7)]
    pub reserved: u8,
}

wire_layout! {
    /// UNMAP.
    pub struct UnmapCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// ANCHOR.
        pub flags: UnmapFlags,
        /// Reserved.
        pub reserved: [u8; 4],
        /// Group number (4:0).
        pub group: u8,
        /// Parameter list length.
        pub param_len: U16,
        /// Control.
        pub control: Control,
    }
    size 10
}

/// REQUEST SENSE byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct RequestSenseFlags {
    /// DESC: descriptor-format sense requested.
    pub desc: bool,
    /// Reserved.
    #[bits(7)]
    pub reserved: u8,
}

wire_layout! {
    /// REQUEST SENSE.
    pub struct RequestSenseCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// DESC.
        pub flags: RequestSenseFlags,
        /// Reserved.
        pub reserved: [u8; 2],
        /// Allocation length.
        pub alloc_len: u8,
        /// Control.
        pub control: Control,
    }
    size 6
}

/// START STOP UNIT byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ImmedFlags {
    /// IMMED: return before the operation completes.
    pub immed: bool,
    /// Reserved.
    #[bits(7)]
    pub reserved: u8,
}

/// START STOP UNIT byte 4.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct StartStopFlags {
    /// START.
    pub start: bool,
    /// LOEJ: load or eject the medium.
    pub loej: bool,
    /// NO_FLUSH.
    pub no_flush: bool,
    /// Reserved.
    pub reserved: bool,
    /// Power condition (0: start / loej apply).
    #[bits(4)]
    pub power_condition: u8,
}

wire_layout! {
    /// START STOP UNIT.
    pub struct StartStopCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// IMMED.
        pub immed: ImmedFlags,
        /// Reserved.
        pub reserved: u8,
        /// Power condition modifier (3:0).
        pub modifier: u8,
        /// Power condition, NO_FLUSH, LOEJ, START.
        pub flags: StartStopFlags,
        /// Control.
        pub control: Control,
    }
    size 6
}

/// SEND DIAGNOSTIC byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct SendDiagnosticFlags {
    /// UNITOFFL.
    pub unit_offline: bool,
    /// DEVOFFL.
    pub device_offline: bool,
    /// SELFTEST: run the default self-test.
    pub selftest: bool,
    /// Reserved.
    pub reserved: bool,
    /// PF: page format.
    pub pf: bool,
    /// Self-test code.
    #[bits(3)]
    pub self_test_code: u8,
}

wire_layout! {
    /// SEND DIAGNOSTIC.
    pub struct SendDiagnosticCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// Self-test code, PF, SELFTEST, DEVOFFL, UNITOFFL.
        pub flags: SendDiagnosticFlags,
        /// Reserved.
        pub reserved: u8,
        /// Parameter list length.
        pub param_len: U16,
        /// Control.
        pub control: Control,
    }
    size 6
}

wire_layout! {
    /// SERVICE ACTION IN(16): READ CAPACITY(16), GET LBA STATUS.
    pub struct ServiceActionIn16Cdb {
        /// Operation code.
        pub op: ScsiOp,
        /// Service action ([`ServiceActionIn`](super::ServiceActionIn)).
        pub service_action: ServiceActionByte,
        /// LBA (GET LBA STATUS starting LBA).
        pub lba: U64,
        /// Allocation length.
        pub alloc_len: U32,
        /// PMI (obsolete) or reserved.
        pub flags: u8,
        /// Control.
        pub control: Control,
    }
    size 16
}

open_enum! {
    /// REPORT SUPPORTED OPERATION CODES reporting options (byte 2, bits
    /// 2:0).
    pub struct ReportingOptions(u8) {
        /// Every supported command.
        ALL = 0,
        /// One command without service actions (error if it has them).
        ONE_NO_SERVICE_ACTION = 1,
        /// One command with a service action (error if it has none).
        ONE_SERVICE_ACTION = 2,
        /// One command, with or without a service action.
        ONE = 3,
    }
}

/// REPORT SUPPORTED OPERATION CODES byte 2.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ReportOpcodesOptions {
    /// Reporting options.
    #[bits(3)]
    pub options: ReportingOptions,
    /// Reserved.
    #[bits(4)]
    pub reserved: u8,
    /// RCTD: return command timeouts descriptors.
    pub rctd: bool,
}

wire_layout! {
    /// REPORT SUPPORTED OPERATION CODES (MAINTENANCE IN).
    pub struct ReportOpcodesCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// Service action ([`MaintenanceIn`](super::MaintenanceIn)).
        pub service_action: ServiceActionByte,
        /// RCTD, reporting options.
        pub options: ReportOpcodesOptions,
        /// Requested operation code.
        pub opcode: ScsiOp,
        /// Requested service action.
        pub requested_sa: U16,
        /// Allocation length.
        pub alloc_len: U32,
        /// Reserved.
        pub reserved: u8,
        /// Control.
        pub control: Control,
    }
    size 12
}

open_enum! {
    /// REPORT LUNS select report codes (byte 2).
    pub struct SelectReport(u8) {
        /// Logical units with LUN addressing (no well-known LUs).
        LOGICAL_UNITS = 0x00,
        /// Well-known logical units only.
        WELL_KNOWN = 0x01,
        /// Every logical unit.
        ALL = 0x02,
    }
}

wire_layout! {
    /// REPORT LUNS.
    pub struct ReportLunsCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// Reserved.
        pub reserved: u8,
        /// Select report.
        pub select_report: SelectReport,
        /// Reserved.
        pub reserved2: [u8; 3],
        /// Allocation length.
        pub alloc_len: U32,
        /// Reserved.
        pub reserved3: u8,
        /// Control.
        pub control: Control,
    }
    size 12
}
