//! Operation codes, service actions, status codes and the control byte
//! (SPC-5, SBC-4, MMC-6, SAM-5).

use bitfield_struct::bitfield;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::open_enum::open_enum;

open_enum! {
    /// A CDB's operation code (byte 0): SPC-5, SBC-4 and the MMC-6
    /// commands parastor's CD/DVD drive runs.
    pub struct ScsiOp(u8) {
        /// TEST UNIT READY.
        TEST_UNIT_READY = 0x00,
        /// REQUEST SENSE.
        REQUEST_SENSE = 0x03,
        /// FORMAT UNIT.
        FORMAT_UNIT = 0x04,
        /// READ(6).
        READ6 = 0x08,
        /// WRITE(6).
        WRITE6 = 0x0A,
        /// INQUIRY.
        INQUIRY = 0x12,
        /// MODE SELECT(6).
        MODE_SELECT6 = 0x15,
        /// RESERVE(6) (obsolete).
        RESERVE6 = 0x16,
        /// RELEASE(6) (obsolete).
        RELEASE6 = 0x17,
        /// MODE SENSE(6).
        MODE_SENSE6 = 0x1A,
        /// START STOP UNIT.
        START_STOP_UNIT = 0x1B,
        /// SEND DIAGNOSTIC.
        SEND_DIAGNOSTIC = 0x1D,
        /// PREVENT ALLOW MEDIUM REMOVAL.
        PREVENT_ALLOW_MEDIUM_REMOVAL = 0x1E,
        /// READ CAPACITY(10).
        READ_CAPACITY10 = 0x25,
        /// READ(10).
        READ10 = 0x28,
        /// WRITE(10).
        WRITE10 = 0x2A,
        /// WRITE AND VERIFY(10).
        WRITE_VERIFY10 = 0x2E,
        /// VERIFY(10).
        VERIFY10 = 0x2F,
        /// PRE-FETCH(10).
        PRE_FETCH10 = 0x34,
        /// SYNCHRONIZE CACHE(10).
        SYNCHRONIZE_CACHE10 = 0x35,
        /// READ DEFECT DATA(10).
        READ_DEFECT_DATA10 = 0x37,
        /// WRITE SAME(10).
        WRITE_SAME10 = 0x41,
        /// UNMAP.
        UNMAP = 0x42,
        /// READ TOC/PMA/ATIP (MMC).
        READ_TOC = 0x43,
        /// GET CONFIGURATION (MMC).
        GET_CONFIGURATION = 0x46,
        /// GET EVENT STATUS NOTIFICATION (MMC).
        GET_EVENT_STATUS_NOTIFICATION = 0x4A,
        /// READ DISC INFORMATION (MMC).
        READ_DISC_INFORMATION = 0x51,
        /// READ TRACK INFORMATION (MMC).
        READ_TRACK_INFORMATION = 0x52,
        /// MODE SELECT(10).
        MODE_SELECT10 = 0x55,
        /// MODE SENSE(10).
        MODE_SENSE10 = 0x5A,
        /// READ BUFFER CAPACITY (MMC).
        READ_BUFFER_CAPACITY = 0x5C,
        /// PERSISTENT RESERVE IN.
        PERSISTENT_RESERVE_IN = 0x5E,
        /// PERSISTENT RESERVE OUT.
        PERSISTENT_RESERVE_OUT = 0x5F,
        /// READ(16).
        READ16 = 0x88,
        /// COMPARE AND WRITE.
        COMPARE_AND_WRITE = 0x89,
        /// WRITE(16).
        WRITE16 = 0x8A,
        /// ORWRITE(16).
        ORWRITE16 = 0x8B,
        /// WRITE AND VERIFY(16).
        WRITE_VERIFY16 = 0x8E,
        /// VERIFY(16).
        VERIFY16 = 0x8F,
        /// PRE-FETCH(16).
        PRE_FETCH16 = 0x90,
        /// SYNCHRONIZE CACHE(16).
        SYNCHRONIZE_CACHE16 = 0x91,
        /// WRITE SAME(16).
        WRITE_SAME16 = 0x93,
        /// SERVICE ACTION IN(16) ([`ServiceActionIn`]).
        SERVICE_ACTION_IN16 = 0x9E,
        /// REPORT LUNS.
        REPORT_LUNS = 0xA0,
        /// MAINTENANCE IN ([`MaintenanceIn`]).
        MAINTENANCE_IN = 0xA3,
        /// READ(12).
        READ12 = 0xA8,
        /// WRITE(12).
        WRITE12 = 0xAA,
        /// GET PERFORMANCE (MMC).
        GET_PERFORMANCE = 0xAC,
        /// READ DISC STRUCTURE (MMC; READ DVD STRUCTURE in older MMC).
        READ_DISC_STRUCTURE = 0xAD,
        /// WRITE AND VERIFY(12).
        WRITE_VERIFY12 = 0xAE,
        /// VERIFY(12).
        VERIFY12 = 0xAF,
        /// SET STREAMING (MMC).
        SET_STREAMING = 0xB6,
        /// READ DEFECT DATA(12).
        READ_DEFECT_DATA12 = 0xB7,
        /// MECHANISM STATUS (MMC).
        MECHANISM_STATUS = 0xBD,
    }
}

impl ScsiOp {
    /// The CDB length this operation code's group implies (SPC-5
    /// 4.2.5.1); `None` for the reserved and vendor-specific groups.
    pub const fn cdb_len(self) -> Option<usize> {
        match self.get() >> 5 {
            0 => Some(6),
            1 | 2 => Some(10),
            4 => Some(16),
            5 => Some(12),
            _ => None,
        }
    }
}

/// The CDB length operation code `opcode`'s group implies; see
/// [`ScsiOp::cdb_len`].
pub const fn cdb_len(opcode: ScsiOp) -> Option<usize> {
    opcode.cdb_len()
}

open_enum! {
    /// Service actions of SERVICE ACTION IN(16) (byte 1, bits 4:0).
    pub struct ServiceActionIn(u8) {
        /// READ CAPACITY(16).
        READ_CAPACITY16 = 0x10,
        /// GET LBA STATUS.
        GET_LBA_STATUS = 0x12,
    }
}

open_enum! {
    /// Service actions of MAINTENANCE IN (byte 1, bits 4:0).
    pub struct MaintenanceIn(u8) {
        /// REPORT SUPPORTED OPERATION CODES.
        REPORT_SUPPORTED_OPCODES = 0x0C,
    }
}

/// Byte 1 of a CDB with a service action: the action (4:0).
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ServiceActionByte {
    /// Service action.
    #[bits(5)]
    pub action: u8,
    /// Reserved or command-specific.
    #[bits(3)]
    pub high: u8,
}

open_enum! {
    /// SCSI status codes (SAM-5).
    pub struct ScsiStatus(u8) {
        /// GOOD.
        GOOD = 0x00,
        /// CHECK CONDITION.
        CHECK_CONDITION = 0x02,
        /// CONDITION MET.
        CONDITION_MET = 0x04,
        /// BUSY.
        BUSY = 0x08,
        /// RESERVATION CONFLICT.
        RESERVATION_CONFLICT = 0x18,
        /// TASK SET FULL.
        TASK_SET_FULL = 0x28,
        /// ACA ACTIVE.
        ACA_ACTIVE = 0x30,
        /// TASK ABORTED.
        TASK_ABORTED = 0x40,
    }
}

/// The control byte, the last byte of every CDB (SAM-5 5.2).
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Control {
    /// LINK (obsolete).
    pub link: bool,
    /// FLAG (obsolete).
    pub flag: bool,
    /// NACA: normal auto contingent allegiance requested.
    pub naca: bool,
    /// Reserved.
    #[bits(3)]
    pub reserved: u8,
    /// Vendor specific.
    #[bits(2)]
    pub vendor: u8,
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    #[test]
    fn cdb_lengths_by_group() {
        assert_eq!(ScsiOp::READ6.cdb_len(), Some(6));
        assert_eq!(ScsiOp::READ10.cdb_len(), Some(10));
        assert_eq!(ScsiOp::READ_TOC.cdb_len(), Some(10));
        assert_eq!(ScsiOp::READ12.cdb_len(), Some(12));
        assert_eq!(ScsiOp::MECHANISM_STATUS.cdb_len(), Some(12));
        assert_eq!(ScsiOp::READ16.cdb_len(), Some(16));
        assert_eq!(cdb_len(ScsiOp::new(0x60)), None);
        assert_eq!(cdb_len(ScsiOp::new(0xC0)), None);
        assert_eq!(cdb_len(ScsiOp::new(0xE0)), None);
    }

    #[test]
    fn unknown_codes_are_values() {
        // An opcode nobody named is still an opcode; Debug says which.
        let op = ScsiOp::new(0x02);
        assert_eq!(op.name(), None);
        assert_eq!(format!("{op:?}"), "ScsiOp(0x2)");
        assert_eq!(format!("{:?}", ScsiOp::READ10), "READ10");
        assert_eq!(format!("{:?}", ScsiStatus::new(0x22)), "ScsiStatus(0x22)");
        assert_eq!(ScsiStatus::RESERVATION_CONFLICT.get(), 0x18);
        for v in 0..=u8::MAX {
            assert_eq!(ScsiOp::new(v).get(), v);
            assert_eq!(ScsiStatus::new(v).get(), v);
            assert_eq!(ServiceActionIn::new(v).get(), v);
        }
        // Names are unique.
        for (i, a) in ScsiOp::KNOWN.iter().enumerate() {
            for b in &ScsiOp::KNOWN[i + 1..] {
                assert_ne!(a, b, "{a:?}");
            }
        }
    }

    #[test]
    fn control_byte_bits() {
        assert_eq!(Control::new().with_naca(true).into_bits(), 0x04);
        assert!(Control::from_bits(0xFF).naca());
        assert_eq!(Control::from_bits(0xC0).vendor(), 3);
        assert_eq!(
            ServiceActionByte::from_bits(0xF2).action(),
            0x12,
            "the action is the low five bits"
        );
    }
}
