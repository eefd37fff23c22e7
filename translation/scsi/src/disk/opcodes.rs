//! REPORT SUPPORTED OPERATION CODES (MAINTENANCE IN, service action 0x0C).
//!
//! [`SUPPORTED`] is the one list of the commands the adapter runs, each
//! with its CDB usage data (SPC-5 6.35.3): the operation code, the service
//! action in its own field, and a one in every other CDB bit the adapter
//! evaluates — every bit of every field it decodes or checks — and a zero
//! in every bit it ignores or treats as reserved. The control byte's NACA
//! bit is evaluated (a CDB with NACA set is refused: ACA is not
//! supported). The unit tests hold the list to what
//! [`parse_cdb`](parastor_hw::scsi::parse_cdb) and the adapter do: every
//! listed command is accepted, every other operation code is refused with
//! INVALID COMMAND OPERATION CODE, and a usage bit is one exactly where
//! changing the bit changes the decoded command.

use super::ScsiDisk;
use crate::data::data_in;
use crate::result::{Res, invalid_cdb_field};
use alloc::vec::Vec;
use parastor_core::SgList;
use parastor_hw::scsi::{
    MaintenanceIn, PrInAction, PrOutAction, ReportingOptions, ScsiOp, ServiceActionIn,
};

/// What a command needs from the disk before the adapter offers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Needs {
    /// Offered by every disk.
    Always,
    /// Offered when unmap is offered (UNMAP).
    Unmap,
    /// Offered when the disk has persistent reservations.
    Reservations,
    /// Offered when the disk's reservations can REGISTER AND MOVE.
    RegisterAndMove,
}

/// One supported command: operation code, service action (for the
/// operation codes that have them), when it is offered, and its CDB usage
/// data (as long as the CDB).
#[derive(Clone, Copy, Debug)]
pub(super) struct Supported {
    /// Operation code.
    pub(super) op: ScsiOp,
    /// Service action, if the operation code has service actions.
    pub(super) sa: Option<u8>,
    /// When the command is offered.
    pub(super) needs: Needs,
    /// CDB usage data.
    pub(super) usage: &'static [u8],
}

/// Usage of the control byte: NACA (bit 2).
const C: u8 = 0x04;
/// Usage of byte 1 of READ / WRITE (10/12/16): RDPROTECT / WRPROTECT
/// (7:5), DPO (4), FUA (3), the obsolete bit 0 (refused).
///
/// DPO is a cache-retention hint the adapter honours trivially (it keeps
/// no cache of its own), and it is claimed: SPC-5 marks a bit the device
/// server supports, and initiators (libiscsi's conformance suite among
/// them) read a clear DPO bit next to DPOFUA = 1 as "DPO not supported".
const RW: u8 = 0xF9;
/// Usage of byte 1 of VERIFY / WRITE AND VERIFY (10/12/16): VRPROTECT /
/// WRPROTECT (7:5), DPO (4), BYTCHK (2:1), the obsolete bit 0 (refused).
const VFY: u8 = 0xF7;
/// Every bit of the byte is evaluated.
const F: u8 = 0xFF;

const fn always(op: ScsiOp, usage: &'static [u8]) -> Supported {
    Supported {
        op,
        sa: None,
        needs: Needs::Always,
        usage,
    }
}

const fn with_sa(op: ScsiOp, sa: u8, needs: Needs, usage: &'static [u8]) -> Supported {
    Supported {
        op,
        sa: Some(sa),
        needs,
        usage,
    }
}

use Needs::{RegisterAndMove as Rm, Reservations as Pr};

/// Every command the adapter runs, in operation code order.
#[rustfmt::skip]
pub(super) const SUPPORTED: &[Supported] = &[
    always(ScsiOp::TEST_UNIT_READY, &[0x00, 0, 0, 0, 0, C]),
    // DESC; allocation length.
    always(ScsiOp::REQUEST_SENSE, &[0x03, 0x01, 0, 0, F, C]),
    // Accepted without effect: no field is looked at.
    always(ScsiOp::FORMAT_UNIT, &[0x04, 0, 0, 0, 0, C]),
    // LBA (20:0), transfer length.
    always(ScsiOp::READ6, &[0x08, 0x1F, F, F, F, C]),
    always(ScsiOp::WRITE6, &[0x0A, 0x1F, F, F, F, C]),
    // CMDDT (refused), EVPD; page code; allocation length.
    always(ScsiOp::INQUIRY, &[0x12, 0x03, F, F, F, C]),
    // PF, SP; parameter list length.
    always(ScsiOp::MODE_SELECT6, &[0x15, 0x11, 0, 0, F, C]),
    always(ScsiOp::RESERVE6, &[0x16, 0, 0, 0, 0, C]),
    always(ScsiOp::RELEASE6, &[0x17, 0, 0, 0, 0, C]),
    // PC and page code; subpage; allocation length (DBD ignored: no block
    // descriptors are ever returned).
    always(ScsiOp::MODE_SENSE6, &[0x1A, 0, F, F, F, C]),
    // IMMED; power condition (7:4), LOEJ, START.
    always(ScsiOp::START_STOP_UNIT, &[0x1B, 0x01, 0, 0, 0xF3, C]),
    // Self-test code (7:5), PF, SELFTEST; parameter list length.
    always(ScsiOp::SEND_DIAGNOSTIC, &[0x1D, 0xF4, 0, F, F, C]),
    always(ScsiOp::PREVENT_ALLOW_MEDIUM_REMOVAL, &[0x1E, 0, 0, 0, 0, C]),
    // The obsolete LBA and PMI fields are ignored.
    always(ScsiOp::READ_CAPACITY10, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, C]),
    always(ScsiOp::READ10, &[0x28, RW, F, F, F, F, 0, F, F, C]),
    always(ScsiOp::WRITE10, &[0x2A, RW, F, F, F, F, 0, F, F, C]),
    always(ScsiOp::WRITE_VERIFY10, &[0x2E, VFY, F, F, F, F, 0, F, F, C]),
    always(ScsiOp::VERIFY10, &[0x2F, VFY, F, F, F, F, 0, F, F, C]),
    // IMMED; LBA; number of blocks (0: to the last block).
    always(ScsiOp::PRE_FETCH10, &[0x34, 0x02, F, F, F, F, 0, F, F, C]),
    // IMMED; LBA; number of blocks.
    always(ScsiOp::SYNCHRONIZE_CACHE10, &[0x35, 0x02, F, F, F, F, 0, F, F, C]),
    // REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT; allocation length.
    always(ScsiOp::READ_DEFECT_DATA10, &[0x37, 0, 0x1F, 0, 0, 0, 0, F, F, C]),
    // WRPROTECT, ANCHOR, UNMAP, the obsolete PBDATA / LBDATA (refused).
    always(ScsiOp::WRITE_SAME10, &[0x41, 0xFE, F, F, F, F, 0, F, F, C]),
    // ANCHOR; parameter list length.
    Supported { op: ScsiOp::UNMAP, sa: None, needs: Needs::Unmap, usage: &[0x42, 0x01, 0, 0, 0, 0, 0, F, F, C] },
    always(ScsiOp::MODE_SELECT10, &[0x55, 0x11, 0, 0, 0, 0, 0, F, F, C]),
    always(ScsiOp::MODE_SENSE10, &[0x5A, 0, F, F, 0, 0, 0, F, F, C]),
    with_sa(ScsiOp::PERSISTENT_RESERVE_IN, PrInAction::READ_KEYS.get(), Pr, &[0x5E, PrInAction::READ_KEYS.get(), 0, 0, 0, 0, 0, F, F, C]),
    with_sa(ScsiOp::PERSISTENT_RESERVE_IN, PrInAction::READ_RESERVATION.get(), Pr, &[0x5E, PrInAction::READ_RESERVATION.get(), 0, 0, 0, 0, 0, F, F, C]),
    with_sa(ScsiOp::PERSISTENT_RESERVE_IN, PrInAction::REPORT_CAPABILITIES.get(), Pr, &[0x5E, PrInAction::REPORT_CAPABILITIES.get(), 0, 0, 0, 0, 0, F, F, C]),
    with_sa(ScsiOp::PERSISTENT_RESERVE_IN, PrInAction::READ_FULL_STATUS.get(), Pr, &[0x5E, PrInAction::READ_FULL_STATUS.get(), 0, 0, 0, 0, 0, F, F, C]),
    // SCOPE and TYPE only where the service action uses them (SPC-5:
    // REGISTER, CLEAR and REGISTER AND IGNORE EXISTING KEY ignore them);
    // parameter list length.
    with_sa(ScsiOp::PERSISTENT_RESERVE_OUT, PrOutAction::REGISTER.get(), Pr, &[0x5F, PrOutAction::REGISTER.get(), 0, 0, 0, F, F, F, F, C]),
    with_sa(ScsiOp::PERSISTENT_RESERVE_OUT, PrOutAction::RESERVE.get(), Pr, &[0x5F, PrOutAction::RESERVE.get(), F, 0, 0, F, F, F, F, C]),
    with_sa(ScsiOp::PERSISTENT_RESERVE_OUT, PrOutAction::RELEASE.get(), Pr, &[0x5F, PrOutAction::RELEASE.get(), F, 0, 0, F, F, F, F, C]),
    with_sa(ScsiOp::PERSISTENT_RESERVE_OUT, PrOutAction::CLEAR.get(), Pr, &[0x5F, PrOutAction::CLEAR.get(), 0, 0, 0, F, F, F, F, C]),
    with_sa(ScsiOp::PERSISTENT_RESERVE_OUT, PrOutAction::PREEMPT.get(), Pr, &[0x5F, PrOutAction::PREEMPT.get(), F, 0, 0, F, F, F, F, C]),
    with_sa(ScsiOp::PERSISTENT_RESERVE_OUT, PrOutAction::PREEMPT_AND_ABORT.get(), Pr, &[0x5F, PrOutAction::PREEMPT_AND_ABORT.get(), F, 0, 0, F, F, F, F, C]),
    with_sa(ScsiOp::PERSISTENT_RESERVE_OUT, PrOutAction::REGISTER_AND_IGNORE.get(), Pr, &[0x5F, PrOutAction::REGISTER_AND_IGNORE.get(), 0, 0, 0, F, F, F, F, C]),
    with_sa(ScsiOp::PERSISTENT_RESERVE_OUT, PrOutAction::REGISTER_AND_MOVE.get(), Rm, &[0x5F, PrOutAction::REGISTER_AND_MOVE.get(), F, 0, 0, F, F, F, F, C]),
    always(ScsiOp::READ16, &[0x88, RW, F, F, F, F, F, F, F, F, F, F, F, F, 0, C]),
    // WRPROTECT, DPO, FUA (the obsolete FUA_NV ignored); LBA; number of
    // blocks.
    always(ScsiOp::COMPARE_AND_WRITE, &[0x89, 0xF8, F, F, F, F, F, F, F, F, 0, 0, 0, F, 0, C]),
    always(ScsiOp::WRITE16, &[0x8A, RW, F, F, F, F, F, F, F, F, F, F, F, F, 0, C]),
    // ORPROTECT, DPO, FUA, the obsolete bit 0 (refused); LBA; length.
    always(ScsiOp::ORWRITE16, &[0x8B, RW, F, F, F, F, F, F, F, F, F, F, F, F, 0, C]),
    always(ScsiOp::WRITE_VERIFY16, &[0x8E, VFY, F, F, F, F, F, F, F, F, F, F, F, F, 0, C]),
    always(ScsiOp::VERIFY16, &[0x8F, VFY, F, F, F, F, F, F, F, F, F, F, F, F, 0, C]),
    always(ScsiOp::PRE_FETCH16, &[0x90, 0x02, F, F, F, F, F, F, F, F, F, F, F, F, 0, C]),
    always(ScsiOp::SYNCHRONIZE_CACHE16, &[0x91, 0x02, F, F, F, F, F, F, F, F, F, F, F, F, 0, C]),
    // WRPROTECT, ANCHOR, UNMAP, PBDATA / LBDATA (refused), NDOB.
    always(ScsiOp::WRITE_SAME16, &[0x93, F, F, F, F, F, F, F, F, F, F, F, F, F, 0, C]),
    // The obsolete LBA and PMI fields are ignored; allocation length.
    with_sa(ScsiOp::SERVICE_ACTION_IN16, ServiceActionIn::READ_CAPACITY16.get(), Needs::Always, &[0x9E, ServiceActionIn::READ_CAPACITY16.get(), 0, 0, 0, 0, 0, 0, 0, 0, F, F, F, F, 0, C]),
    // Starting LBA; allocation length (REPORT TYPE ignored: every block
    // is reported mapped).
    with_sa(ScsiOp::SERVICE_ACTION_IN16, ServiceActionIn::GET_LBA_STATUS.get(), Needs::Always, &[0x9E, ServiceActionIn::GET_LBA_STATUS.get(), F, F, F, F, F, F, F, F, F, F, F, F, 0, C]),
    // RCTD, REPORTING OPTIONS; requested operation code and service
    // action; allocation length.
    with_sa(ScsiOp::MAINTENANCE_IN, MaintenanceIn::REPORT_SUPPORTED_OPCODES.get(), Needs::Always, &[0xA3, MaintenanceIn::REPORT_SUPPORTED_OPCODES.get(), 0x87, F, F, F, F, F, F, F, 0, C]),
    always(ScsiOp::READ12, &[0xA8, RW, F, F, F, F, F, F, F, F, 0, C]),
    always(ScsiOp::WRITE12, &[0xAA, RW, F, F, F, F, F, F, F, F, 0, C]),
    always(ScsiOp::WRITE_VERIFY12, &[0xAE, VFY, F, F, F, F, F, F, F, F, 0, C]),
    always(ScsiOp::VERIFY12, &[0xAF, VFY, F, F, F, F, F, F, F, F, 0, C]),
    // REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT; ADDRESS DESCRIPTOR INDEX
    // (every index names past the empty list); allocation length.
    always(ScsiOp::READ_DEFECT_DATA12, &[0xB7, 0x1F, F, F, F, F, F, F, F, F, 0, C]),
];

/// A command timeouts descriptor (SPC-5 6.35.4) with no timeouts
/// specified: descriptor length 0x0A, the rest zero.
const NO_TIMEOUTS: [u8; 12] = [0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// SUPPORT field (one-command format): not supported.
const SUPPORT_NONE: u8 = 0b001;
/// SUPPORT field (one-command format): supported as the standard says.
const SUPPORT_STANDARD: u8 = 0b011;

impl ScsiDisk {
    /// Whether this disk offers commands that need `needs`.
    pub(super) fn offers(&self, needs: Needs) -> bool {
        match needs {
            Needs::Always => true,
            Needs::Unmap => self.unmap,
            Needs::Reservations => self.disk.persistent_reservations().is_some(),
            Needs::RegisterAndMove => self
                .disk
                .persistent_reservations()
                .is_some_and(|p| p.capabilities().register_and_move),
        }
    }

    /// The commands this disk offers.
    pub(super) fn offered(&self) -> impl Iterator<Item = &'static Supported> + '_ {
        SUPPORTED.iter().filter(|e| self.offers(e.needs))
    }

    pub(super) fn report_opcodes(
        &self,
        data: &SgList<'_>,
        rctd: bool,
        options: ReportingOptions,
        opcode: ScsiOp,
        service_action: u16,
        alloc_len: usize,
    ) -> Res {
        let timeouts: &[u8] = if rctd { &NO_TIMEOUTS } else { &[] };
        let mut out = Vec::new();
        if options == ReportingOptions::ALL {
            // All commands: a 4-byte length, then one command descriptor
            // (8 bytes, plus a timeouts descriptor with RCTD) each.
            out.extend_from_slice(&[0; 4]);
            for e in self.offered() {
                out.push(e.op.get());
                out.push(0);
                out.extend_from_slice(&u16::from(e.sa.unwrap_or(0)).to_be_bytes());
                out.push(0);
                // CTDP (bit 1), SERVACTV (bit 0).
                out.push(u8::from(rctd) << 1 | u8::from(e.sa.is_some()));
                out.extend_from_slice(&(e.usage.len() as u16).to_be_bytes());
                out.extend_from_slice(timeouts);
            }
            let len = (out.len() - 4) as u32;
            out[..4].copy_from_slice(&len.to_be_bytes());
            return data_in(data, &out, alloc_len);
        }
        // Errors name the REPORTING OPTIONS field (byte 2, bits 2:0): with
        // the field pointer an initiator can tell a refused option from a
        // service action the device does not have (libiscsi reads 24/00
        // without one as "not implemented").
        let bad_options = || invalid_cdb_field(2, 2);
        if options.get() > ReportingOptions::ONE.get() {
            return Err(bad_options());
        }
        // One command. An operation code this disk does not run at all is
        // reported as not supported whatever the option.
        let mut for_op = self.offered().filter(|e| e.op == opcode).peekable();
        let entry = match for_op.peek().map(|e| e.sa.is_some()) {
            None => None,
            // 001b names an operation code without service actions, 010b
            // one with them.
            Some(true) if options == ReportingOptions::ONE_NO_SERVICE_ACTION => {
                return Err(bad_options());
            }
            Some(false) if options == ReportingOptions::ONE_SERVICE_ACTION => {
                return Err(bad_options());
            }
            // 011b: the service action is ignored for an operation code
            // without service actions.
            Some(false) => for_op.next(),
            Some(true) => for_op.find(|e| e.sa.map(u16::from) == Some(service_action)),
        };
        match entry {
            None => out.extend_from_slice(&[0, SUPPORT_NONE, 0, 0]),
            Some(e) => {
                // CTDP (bit 7), SUPPORT; CDB SIZE; CDB USAGE DATA.
                out.extend_from_slice(&[0, u8::from(rctd) << 7 | SUPPORT_STANDARD]);
                out.extend_from_slice(&(e.usage.len() as u16).to_be_bytes());
                out.extend_from_slice(e.usage);
                out.extend_from_slice(timeouts);
            }
        }
        data_in(data, &out, alloc_len)
    }
}
