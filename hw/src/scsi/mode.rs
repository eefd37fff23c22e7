//! MODE SENSE / MODE SELECT: CDBs, parameter headers, page codes and the
//! mode pages parastor reports (SPC-5, SBC-4, MMC-6).

use bitfield_struct::bitfield;
use zerocopy::big_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::codes::{Control, ScsiOp};
use crate::open_enum::open_enum;

open_enum! {
    /// Mode page codes, a 6-bit field.
    pub struct ModePage(u8) {
        /// Read/write error recovery (MMC drives).
        ERROR_RECOVERY = 0x01,
        /// Caching.
        CACHING = 0x08,
        /// Control.
        CONTROL = 0x0A,
        /// Power condition (MMC drives).
        POWER_CONDITION = 0x1A,
        /// Time-out and protect (MMC drives: CD/DVD inactivity).
        TIMEOUT_PROTECT = 0x1D,
        /// All pages (MODE SENSE only).
        ALL = 0x3F,
    }
}

open_enum! {
    /// MODE SENSE page control, a 2-bit field.
    pub struct PageControl(u8) {
        /// Current values.
        CURRENT = 0,
        /// Changeable values (a mask).
        CHANGEABLE = 1,
        /// Default values.
        DEFAULT = 2,
        /// Saved values.
        SAVED = 3,
    }
}

/// MODE SENSE byte 2: page control and page code.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ModePageSelect {
    /// Page code.
    #[bits(6)]
    pub page: ModePage,
    /// Page control.
    #[bits(2)]
    pub pc: PageControl,
}

/// MODE SENSE(6) / (10) byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ModeSenseFlags {
    /// Reserved.
    #[bits(3)]
    pub reserved: u8,
    /// DBD: disable block descriptors.
    pub dbd: bool,
    /// LLBAA (MODE SENSE(10) only): long LBA block descriptors accepted.
    pub llbaa: bool,
    /// Reserved.
    #[bits(3)]
    pub reserved2: u8,
}

wire_layout! {
    /// MODE SENSE(6).
    pub struct ModeSense6Cdb {
        /// Operation code.
        pub op: ScsiOp,
        /// DBD.
        pub flags: ModeSenseFlags,
        /// Page control and page code.
        pub page: ModePageSelect,
        /// Subpage code.
        pub subpage: u8,
        /// Allocation length.
        pub alloc_len: u8,
        /// Control.
        pub control: Control,
    }
    size 6
}

wire_layout! {
    /// MODE SENSE(10).
    pub struct ModeSense10Cdb {
        /// Operation code.
        pub op: ScsiOp,
        /// LLBAA, DBD.
        pub flags: ModeSenseFlags,
        /// Page control and page code.
        pub page: ModePageSelect,
        /// Subpage code.
        pub subpage: u8,
        /// Reserved.
        pub reserved: [u8; 3],
        /// Allocation length.
        pub alloc_len: U16,
        /// Control.
        pub control: Control,
    }
    size 10
}

/// MODE SELECT(6) / (10) byte 1.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ModeSelectFlags {
    /// SP: save pages.
    pub sp: bool,
    /// Reserved.
    #[bits(3)]
    pub reserved: u8,
    /// PF: the list is in page format.
    pub pf: bool,
    /// Reserved.
    #[bits(3)]
    pub reserved2: u8,
}

wire_layout! {
    /// MODE SELECT(6).
    pub struct ModeSelect6Cdb {
        /// Operation code.
        pub op: ScsiOp,
        /// PF, SP.
        pub flags: ModeSelectFlags,
        /// Reserved.
        pub reserved: [u8; 2],
        /// Parameter list length.
        pub param_len: u8,
        /// Control.
        pub control: Control,
    }
    size 6
}

wire_layout! {
    /// MODE SELECT(10).
    pub struct ModeSelect10Cdb {
        /// Operation code.
        pub op: ScsiOp,
        /// PF, SP.
        pub flags: ModeSelectFlags,
        /// Reserved.
        pub reserved: [u8; 5],
        /// Parameter list length.
        pub param_len: U16,
        /// Control.
        pub control: Control,
    }
    size 10
}

/// The device-specific parameter of a direct-access device's mode
/// parameter header.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct DeviceSpecific {
    /// Reserved.
    #[bits(4)]
    pub reserved: u8,
    /// DPOFUA: DPO and FUA supported.
    pub dpofua: bool,
    /// Reserved.
    #[bits(2)]
    pub reserved2: u8,
    /// WP: write protected.
    pub wp: bool,
}

wire_layout! {
    /// Mode parameter header for the 6-byte commands.
    pub struct ModeHeader6 {
        /// Bytes that follow this field.
        pub data_len: u8,
        /// Medium type.
        pub medium_type: u8,
        /// Device-specific parameter.
        pub device_specific: DeviceSpecific,
        /// Block descriptor length.
        pub block_desc_len: u8,
    }
    size 4
}

/// Mode parameter header (10) byte 4.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ModeHeaderFlags {
    /// LONGLBA: block descriptors are 16 bytes.
    pub longlba: bool,
    /// Reserved.
    #[bits(7)]
    pub reserved: u8,
}

wire_layout! {
    /// Mode parameter header for the 10-byte commands.
    pub struct ModeHeader10 {
        /// Bytes that follow this field.
        pub data_len: U16,
        /// Medium type.
        pub medium_type: u8,
        /// Device-specific parameter.
        pub device_specific: DeviceSpecific,
        /// LONGLBA.
        pub flags: ModeHeaderFlags,
        /// Reserved.
        pub reserved: u8,
        /// Block descriptor length.
        pub block_desc_len: U16,
    }
    size 8
}

/// Byte 0 of a mode page: its code and format.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ModePageCode {
    /// Page code.
    #[bits(6)]
    pub page: ModePage,
    /// SPF: subpage format (a subpage code and a 2-byte length follow).
    pub spf: bool,
    /// PS: parameters saveable.
    pub ps: bool,
}

/// Caching mode page byte 2.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct CachingFlags {
    /// RCD: read cache disable.
    pub rcd: bool,
    /// MF: multiplication factor.
    pub mf: bool,
    /// WCE: write cache enable.
    pub wce: bool,
    /// SIZE.
    pub size: bool,
    /// DISC: discontinuity.
    pub disc: bool,
    /// CAP: caching analysis permitted.
    pub cap: bool,
    /// ABPF: abort pre-fetch.
    pub abpf: bool,
    /// IC: initiator control.
    pub ic: bool,
}

/// Caching mode page byte 12.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct CachingFlags2 {
    /// NV_DIS: non-volatile cache disabled.
    pub nv_dis: bool,
    /// Reserved / vendor specific.
    #[bits(4)]
    pub reserved: u8,
    /// DRA: disable read-ahead.
    pub dra: bool,
    /// LBCSS: logical block cache segment size.
    pub lbcss: bool,
    /// FSW: force sequential write.
    pub fsw: bool,
}

wire_layout! {
    /// Caching mode page (0x08).
    pub struct CachingPage {
        /// PS, SPF, page code.
        pub page: ModePageCode,
        /// Page length (0x12).
        pub len: u8,
        /// IC, ABPF, CAP, DISC, SIZE, WCE, MF, RCD.
        pub flags: CachingFlags,
        /// Demand read (7:4) and write (3:0) retention priorities.
        pub retention: u8,
        /// Disable pre-fetch transfer length.
        pub disable_prefetch_len: U16,
        /// Minimum pre-fetch.
        pub min_prefetch: U16,
        /// Maximum pre-fetch.
        pub max_prefetch: U16,
        /// Maximum pre-fetch ceiling.
        pub max_prefetch_ceiling: U16,
        /// FSW, LBCSS, DRA, NV_DIS.
        pub flags2: CachingFlags2,
        /// Number of cache segments.
        pub segments: u8,
        /// Cache segment size.
        pub segment_size: U16,
        /// Reserved.
        pub reserved: u8,
        /// Obsolete.
        pub obsolete: [u8; 3],
    }
    size 20
}

/// Control mode page byte 2.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ControlFlags {
    /// RLEC: report log exception condition.
    pub rlec: bool,
    /// GLTSD: global logging target save disable.
    pub gltsd: bool,
    /// D_SENSE: descriptor-format sense data.
    pub d_sense: bool,
    /// DPICZ: disable protection information check if protect field is
    /// zero.
    pub dpicz: bool,
    /// TMF_ONLY.
    pub tmf_only: bool,
    /// TST: task set type.
    #[bits(3)]
    pub tst: u8,
}

/// Control mode page byte 3.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ControlQueue {
    /// Obsolete.
    pub obsolete: bool,
    /// QERR: queue error management.
    #[bits(2)]
    pub qerr: u8,
    /// NUAR: no unit attention on release.
    pub nuar: bool,
    /// Queue algorithm modifier (1: unrestricted reordering).
    #[bits(4)]
    pub algorithm: u8,
}

/// Control mode page byte 4.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ControlFlags4 {
    /// Obsolete.
    #[bits(3)]
    pub obsolete: u8,
    /// SWP: software write protect.
    pub swp: bool,
    /// UA_INTLCK_CTRL: unit attention interlocks control.
    #[bits(2)]
    pub ua_intlck_ctrl: u8,
    /// RAC: report a check.
    pub rac: bool,
    /// VS: vendor specific.
    pub vs: bool,
}

/// Control mode page byte 5.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ControlFlags5 {
    /// Autoload mode.
    #[bits(3)]
    pub autoload_mode: u8,
    /// SBLP.
    pub sblp: bool,
    /// RWWP: reject write without protection.
    pub rwwp: bool,
    /// ATMPE: application tag mode page enabled.
    pub atmpe: bool,
    /// TAS: task aborted status.
    pub tas: bool,
    /// ATO: application tag owner.
    pub ato: bool,
}

wire_layout! {
    /// Control mode page (0x0A).
    pub struct ControlPage {
        /// PS, SPF, page code.
        pub page: ModePageCode,
        /// Page length (0x0A).
        pub len: u8,
        /// TST, TMF_ONLY, DPICZ, D_SENSE, GLTSD, RLEC.
        pub flags: ControlFlags,
        /// Queue algorithm modifier, NUAR, QERR.
        pub queue: ControlQueue,
        /// VS, RAC, UA_INTLCK_CTRL, SWP.
        pub flags4: ControlFlags4,
        /// ATO, TAS, ATMPE, RWWP, SBLP, autoload mode.
        pub flags5: ControlFlags5,
        /// Obsolete.
        pub obsolete: U16,
        /// Busy timeout period.
        pub busy_timeout: U16,
        /// Extended self-test completion time.
        pub self_test_time: U16,
    }
    size 12
}

wire_layout! {
    /// A 12-byte mode page (the MMC pages 0x01, 0x1A, 0x1D): code, length
    /// 0x0A, ten parameter bytes.
    pub struct ModePage12 {
        /// PS, SPF, page code.
        pub page: ModePageCode,
        /// Page length (0x0A).
        pub len: u8,
        /// Parameters.
        pub body: [u8; 10],
    }
    size 12
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_select_and_code_bytes() {
        let s = ModePageSelect::from_bits(0xBF);
        assert_eq!(s.pc(), PageControl::DEFAULT);
        assert_eq!(s.page(), ModePage::ALL);
        let c = ModePageCode::from_bits(0x48);
        assert!(c.spf() && !c.ps());
        assert_eq!(c.page(), ModePage::CACHING);
        // A page code nobody named is still a page code.
        assert_eq!(ModePageCode::from_bits(0x2C).page(), ModePage::new(0x2C));
    }

    #[test]
    fn header_and_page_bits() {
        let h = ModeHeader6 {
            device_specific: DeviceSpecific::new().with_wp(true).with_dpofua(true),
            ..Default::default()
        };
        assert_eq!(h.as_bytes()[2], 0x90);
        let p = CachingPage {
            page: ModePageCode::new().with_page(ModePage::CACHING),
            flags: CachingFlags::new().with_wce(true),
            ..Default::default()
        };
        assert_eq!(p.as_bytes()[..3], [0x08, 0, 0x04]);
        let c = ControlPage {
            queue: ControlQueue::new().with_algorithm(1),
            ..Default::default()
        };
        assert_eq!(c.as_bytes()[3], 0x10);
    }
}
