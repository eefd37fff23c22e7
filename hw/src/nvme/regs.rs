//! The NVMe controller register map (BAR0): CAP, VS, INTMS/INTMC, CC,
//! CSTS, NSSR, AQA, ASQ, ACQ, and the doorbells that follow at `0x1000`
//! spaced by the doorbell stride (NVMe Base 2.0 §3.1.3).

use bitfield_struct::bitfield;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::open_enum::open_enum;

/// Register offsets within BAR0.
pub mod offset {
    /// Controller Capabilities (64 bits).
    pub const CAP: u64 = 0x00;
    /// Version (32 bits).
    pub const VS: u64 = 0x08;
    /// Interrupt Mask Set (32 bits).
    pub const INTMS: u64 = 0x0C;
    /// Interrupt Mask Clear (32 bits).
    pub const INTMC: u64 = 0x10;
    /// Controller Configuration (32 bits).
    pub const CC: u64 = 0x14;
    /// Controller Status (32 bits).
    pub const CSTS: u64 = 0x1C;
    /// NVM Subsystem Reset (32 bits).
    pub const NSSR: u64 = 0x20;
    /// Admin Queue Attributes (32 bits).
    pub const AQA: u64 = 0x24;
    /// Admin Submission Queue Base Address (64 bits).
    pub const ASQ: u64 = 0x28;
    /// Admin Completion Queue Base Address (64 bits).
    pub const ACQ: u64 = 0x30;
    /// Controller Memory Buffer Location (32 bits).
    pub const CMBLOC: u64 = 0x38;
    /// Controller Memory Buffer Size (32 bits).
    pub const CMBSZ: u64 = 0x3C;
    /// The first doorbell (admin submission queue tail).
    pub const DOORBELLS: u64 = 0x1000;
}

/// The value written to NSSR to start an NVM subsystem reset: "NVMe" in
/// ASCII, `0x4E564D65`.
pub const NSSR_RESET_VALUE: u32 = 0x4E56_4D65;

/// Controller Capabilities (CAP, offset `0x00`).
#[bitfield(u64, repr = U64, from = U64::new, into = U64::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Cap {
    /// Maximum Queue Entries Supported, 0's based (at least 1).
    pub mqes: u16,
    /// Contiguous Queues Required.
    pub cqr: bool,
    /// Arbitration Mechanism Supported: bit 0 weighted round robin with
    /// urgent priority class, bit 1 vendor specific.
    #[bits(2)]
    pub ams: u8,
    /// Reserved.
    #[bits(5)]
    pub reserved0: u8,
    /// Timeout: worst-case time for CSTS.RDY to change, in 500 ms units.
    pub to: u8,
    /// Doorbell Stride: doorbells are `4 << DSTRD` bytes apart.
    #[bits(4)]
    pub dstrd: u8,
    /// NVM Subsystem Reset Supported.
    pub nssrs: bool,
    /// Command Sets Supported: bit 0 NVM command set, bit 6 one or more
    /// I/O command sets, bit 7 admin only.
    pub css: u8,
    /// Boot Partition Support.
    pub bps: bool,
    /// Controller Power Scope.
    #[bits(2)]
    pub cps: u8,
    /// Memory Page Size Minimum: `2 ^ (12 + MPSMIN)` bytes.
    #[bits(4)]
    pub mpsmin: u8,
    /// Memory Page Size Maximum: `2 ^ (12 + MPSMAX)` bytes.
    #[bits(4)]
    pub mpsmax: u8,
    /// Persistent Memory Region Supported.
    pub pmrs: bool,
    /// Controller Memory Buffer Supported.
    pub cmbs: bool,
    /// NVM Subsystem Shutdown Supported.
    pub nsss: bool,
    /// Controller Ready Modes Supported (bit 0 with media, bit 1
    /// independent of media).
    #[bits(2)]
    pub crms: u8,
    /// Reserved.
    #[bits(3)]
    pub reserved1: u8,
}

/// CAP.CSS bit: the NVM command set.
pub const CAP_CSS_NVM: u8 = 1 << 0;
/// CAP.CSS bit: one or more I/O command sets (CC.CSS = 110b).
pub const CAP_CSS_IO_SETS: u8 = 1 << 6;
/// CAP.CSS bit: no I/O command set, admin only (CC.CSS = 111b).
pub const CAP_CSS_ADMIN_ONLY: u8 = 1 << 7;

impl Cap {
    /// The doorbell stride in bytes, `4 << DSTRD`.
    pub const fn doorbell_stride(self) -> u64 {
        4u64 << self.dstrd()
    }

    /// The smallest memory page size in bytes.
    pub const fn min_page_size(self) -> u64 {
        1u64 << (12 + self.mpsmin() as u32)
    }

    /// The largest memory page size in bytes.
    pub const fn max_page_size(self) -> u64 {
        1u64 << (12 + self.mpsmax() as u32)
    }
}

/// Version (VS, offset `0x08`), also the format of Identify Controller
/// VER.
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Version {
    /// Tertiary version number.
    pub ter: u8,
    /// Minor version number.
    pub mnr: u8,
    /// Major version number.
    pub mjr: u16,
}

impl Version {
    /// NVMe 1.4.
    pub const V1_4: Self = Self::new().with_mjr(1).with_mnr(4);
    /// NVMe 2.0.
    pub const V2_0: Self = Self::new().with_mjr(2);
}

open_enum! {
    /// CC.CSS: the I/O command set selected at enable.
    pub struct CommandSetSelected(u8) {
        /// NVM command set.
        NVM = 0b000,
        /// All supported I/O command sets (CAP.CSS bit 6).
        ALL_IO = 0b110,
        /// Admin command set only (CAP.CSS bit 7).
        ADMIN_ONLY = 0b111,
    }
}

open_enum! {
    /// CC.AMS: the arbitration mechanism selected at enable.
    pub struct ArbitrationMechanism(u8) {
        /// Round robin (always supported).
        ROUND_ROBIN = 0b000,
        /// Weighted round robin with urgent priority class.
        WEIGHTED_ROUND_ROBIN = 0b001,
        /// Vendor specific.
        VENDOR_SPECIFIC = 0b111,
    }
}

open_enum! {
    /// CC.SHN: shutdown notification.
    pub struct ShutdownNotification(u8) {
        /// No notification, no effect.
        NONE = 0b00,
        /// Normal shutdown notification.
        NORMAL = 0b01,
        /// Abrupt shutdown notification.
        ABRUPT = 0b10,
        /// Reserved (the spec leaves 11b reserved).
        RESERVED = 0b11,
    }
}

open_enum! {
    /// CSTS.SHST: shutdown status.
    pub struct ShutdownStatus(u8) {
        /// Normal operation.
        NORMAL = 0b00,
        /// Shutdown processing occurring.
        OCCURRING = 0b01,
        /// Shutdown processing complete.
        COMPLETE = 0b10,
        /// Reserved.
        RESERVED = 0b11,
    }
}

/// Controller Configuration (CC, offset `0x14`).
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Cc {
    /// Enable.
    pub en: bool,
    /// Reserved.
    #[bits(3)]
    pub reserved0: u8,
    /// I/O Command Set Selected.
    #[bits(3)]
    pub css: CommandSetSelected,
    /// Memory Page Size: `2 ^ (12 + MPS)` bytes.
    #[bits(4)]
    pub mps: u8,
    /// Arbitration Mechanism Selected.
    #[bits(3)]
    pub ams: ArbitrationMechanism,
    /// Shutdown Notification.
    #[bits(2)]
    pub shn: ShutdownNotification,
    /// I/O Submission Queue Entry Size: `2 ^ IOSQES` bytes (6 for 64).
    #[bits(4)]
    pub iosqes: u8,
    /// I/O Completion Queue Entry Size: `2 ^ IOCQES` bytes (4 for 16).
    #[bits(4)]
    pub iocqes: u8,
    /// Controller Ready Independent of Media Enable.
    pub crime: bool,
    /// Reserved.
    #[bits(7)]
    pub reserved1: u8,
}

impl Cc {
    /// The memory page size in bytes, `2 ^ (12 + MPS)`.
    pub const fn page_size(self) -> u64 {
        1u64 << (12 + self.mps() as u32)
    }
}

/// Controller Status (CSTS, offset `0x1C`).
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Csts {
    /// Ready.
    pub rdy: bool,
    /// Controller Fatal Status.
    pub cfs: bool,
    /// Shutdown Status.
    #[bits(2)]
    pub shst: ShutdownStatus,
    /// NVM Subsystem Reset Occurred.
    pub nssro: bool,
    /// Processing Paused.
    pub pp: bool,
    /// Shutdown Type (1: NVM subsystem shutdown).
    pub st: bool,
    /// Reserved.
    #[bits(25)]
    pub reserved: u32,
}

/// Admin Queue Attributes (AQA, offset `0x24`). Both sizes are 0's based.
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Aqa {
    /// Admin Submission Queue Size, 0's based.
    #[bits(12)]
    pub asqs: u16,
    /// Reserved.
    #[bits(4)]
    pub reserved0: u8,
    /// Admin Completion Queue Size, 0's based.
    #[bits(12)]
    pub acqs: u16,
    /// Reserved.
    #[bits(4)]
    pub reserved1: u8,
}

/// The mask of the base-address bits of ASQ and ACQ: bits 11:0 are
/// reserved (the queues are 4 KiB aligned).
pub const QUEUE_BASE_MASK: u64 = !0xFFF;

/// Where a doorbell write lands: which queue, and whether it is a
/// submission queue tail or a completion queue head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Doorbell {
    /// Submission Queue `qid` Tail Doorbell.
    SqTail(u16),
    /// Completion Queue `qid` Head Doorbell.
    CqHead(u16),
}

impl Doorbell {
    /// The BAR0 offset of this doorbell for a controller with CAP.DSTRD =
    /// `dstrd`: `0x1000 + (2 * qid + is_cq) * (4 << dstrd)`.
    pub const fn offset(self, dstrd: u8) -> u64 {
        let index = match self {
            Self::SqTail(qid) => 2 * qid as u64,
            Self::CqHead(qid) => 2 * qid as u64 + 1,
        };
        offset::DOORBELLS + index * (4u64 << (dstrd & 0xF))
    }

    /// The doorbell at BAR0 `offset` for CAP.DSTRD = `dstrd`, or `None`
    /// if the offset is below the doorbells, not on a stride boundary, or
    /// names a queue beyond 65535. Total for any input.
    pub const fn from_offset(offset: u64, dstrd: u8) -> Option<Self> {
        if offset < offset::DOORBELLS {
            return None;
        }
        let stride = 4u64 << (dstrd & 0xF);
        let rel = offset - offset::DOORBELLS;
        if !rel.is_multiple_of(stride) {
            return None;
        }
        let index = rel / stride;
        let qid = index / 2;
        if qid > u16::MAX as u64 {
            return None;
        }
        if index.is_multiple_of(2) {
            Some(Self::SqTail(qid as u16))
        } else {
            Some(Self::CqHead(qid as u16))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields_at_spec_bits() {
        // MQES 15:0, CQR 16, TO 31:24, DSTRD 35:32, NSSRS 36, CSS 44:37,
        // MPSMIN 51:48, MPSMAX 55:52.
        let cap = Cap::from_bits(U64::new(
            0x3FF | 1 << 16 | 0x14 << 24 | 2 << 32 | 1 << 36 | 1 << 37 | 3 << 48 | 5 << 52,
        ));
        assert_eq!(cap.mqes(), 0x3FF);
        assert!(cap.cqr());
        assert_eq!(cap.to(), 0x14);
        assert_eq!(cap.dstrd(), 2);
        assert_eq!(cap.doorbell_stride(), 16);
        assert!(cap.nssrs());
        assert_eq!(cap.css(), CAP_CSS_NVM);
        assert_eq!(cap.min_page_size(), 32 * 1024);
        assert_eq!(cap.max_page_size(), 128 * 1024);
        assert_eq!(core::mem::size_of::<Cap>(), 8);
    }

    #[test]
    fn cc_and_csts_at_spec_bits() {
        // What Linux writes at enable: EN, CSS=NVM, MPS=0 (4 KiB),
        // IOSQES=6, IOCQES=4.
        let cc = Cc::from_bits(U32::new(0x0046_0001));
        assert!(cc.en());
        assert_eq!(cc.css(), CommandSetSelected::NVM);
        assert_eq!(cc.page_size(), 4096);
        assert_eq!(cc.iosqes(), 6);
        assert_eq!(cc.iocqes(), 4);
        assert_eq!(
            Cc::from_bits(U32::new(1 << 14)).shn(),
            ShutdownNotification::NORMAL
        );
        assert_eq!(
            Cc::from_bits(U32::new(6 << 4)).css(),
            CommandSetSelected::ALL_IO
        );
        let csts = Csts::new()
            .with_rdy(true)
            .with_shst(ShutdownStatus::COMPLETE);
        assert_eq!(csts.into_bits().get(), 0b1001);
        assert!(Csts::from_bits(U32::new(2)).cfs());
    }

    #[test]
    fn aqa_and_version() {
        let aqa = Aqa::from_bits(U32::new(0x001F_003F));
        assert_eq!(aqa.asqs(), 0x3F);
        assert_eq!(aqa.acqs(), 0x1F);
        assert_eq!(Version::V2_0.into_bits().get(), 0x0002_0000);
        assert_eq!(Version::V1_4.into_bits().get(), 0x0001_0400);
    }

    #[test]
    fn doorbell_offsets_follow_the_stride() {
        assert_eq!(Doorbell::SqTail(0).offset(0), 0x1000);
        assert_eq!(Doorbell::CqHead(0).offset(0), 0x1004);
        assert_eq!(Doorbell::SqTail(1).offset(0), 0x1008);
        assert_eq!(Doorbell::CqHead(3).offset(1), 0x1000 + 7 * 8);
        for dstrd in [0u8, 1, 4, 15] {
            for db in [Doorbell::SqTail(5), Doorbell::CqHead(u16::MAX)] {
                assert_eq!(Doorbell::from_offset(db.offset(dstrd), dstrd), Some(db));
            }
        }
        assert_eq!(Doorbell::from_offset(0xFFC, 0), None);
        assert_eq!(Doorbell::from_offset(0x1002, 0), None);
        assert_eq!(Doorbell::from_offset(0x1004, 1), None);
        // Beyond queue 65535, and any offset at all: no panic.
        assert_eq!(Doorbell::from_offset(0x1000 + 4 * 2 * 65536, 0), None);
        assert_eq!(Doorbell::from_offset(u64::MAX, 15), None);
        assert_eq!(offset::ACQ, 0x30);
    }
}
