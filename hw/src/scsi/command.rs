//! [`parse_cdb`]: a CDB of the SPC / SBC command set a disk runs, decoded
//! into a [`Command`].

use zerocopy::{FromBytes, Unaligned};

use super::cdb::{
    Cdb6Rw, Cdb10, Cdb12, Cdb16, CompareAndWriteCdb, ReadDefectData10Cdb, ReadDefectData12Cdb,
    ReportLunsCdb, ReportOpcodesCdb, ReportingOptions, RequestSenseCdb, RwFlags, SelectReport,
    SendDiagnosticCdb, ServiceActionIn16Cdb, StartStopCdb, SyncCacheFlags, UnmapCdb, VerifyFlags,
    WriteSameFlags,
};
use super::codes::{Control, MaintenanceIn, ScsiOp, ServiceActionIn};
use super::inquiry::{InquiryCdb, VpdPage};
use super::mode::{
    ModePage, ModeSelect6Cdb, ModeSelect10Cdb, ModeSense6Cdb, ModeSense10Cdb, PageControl,
};
use super::pr::{PrInAction, PrInCdb, PrOutAction, PrOutCdb, PrType};
use super::sense::{AdditionalSense, SenseData};

/// Why a CDB could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CdbError {
    /// The CDB is empty or shorter than its operation code requires.
    TooShort,
    /// The operation code (or its service action) is not supported.
    InvalidOpcode,
    /// A field of the CDB holds a value that is not supported.
    InvalidField,
}

impl CdbError {
    /// The ILLEGAL REQUEST sense for this error.
    pub const fn sense(self) -> SenseData {
        match self {
            CdbError::InvalidOpcode => SenseData::illegal(AdditionalSense::INVALID_COMMAND),
            CdbError::TooShort | CdbError::InvalidField => {
                SenseData::illegal(AdditionalSense::INVALID_FIELD_IN_CDB)
            }
        }
    }
}

/// A data transfer command's decoded fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks (READ(6)/WRITE(6) length 0 is already 256).
    pub blocks: u32,
    /// Force unit access.
    pub fua: bool,
    /// DPO (disable page out): a cache-retention hint. Decoded so the
    /// command's usage data can claim the bit; the adapter keeps no cache
    /// of its own to retain blocks in, so every value is honoured as is.
    pub dpo: bool,
}

/// A parsed CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// TEST UNIT READY.
    TestUnitReady,
    /// REQUEST SENSE.
    RequestSense {
        /// Descriptor format requested.
        desc: bool,
        /// Allocation length.
        alloc_len: u8,
    },
    /// INQUIRY.
    Inquiry {
        /// EVPD set.
        evpd: bool,
        /// Page code (0 without EVPD).
        page: VpdPage,
        /// Allocation length.
        alloc_len: u16,
    },
    /// MODE SENSE(6) / (10).
    ModeSense {
        /// Page control.
        pc: PageControl,
        /// Page code.
        page: ModePage,
        /// Subpage code.
        subpage: u8,
        /// Allocation length.
        alloc_len: u16,
        /// The 10-byte form.
        long: bool,
    },
    /// MODE SELECT(6) / (10).
    ModeSelect {
        /// PF bit.
        pf: bool,
        /// SP bit.
        sp: bool,
        /// Parameter list length.
        param_len: u16,
        /// The 10-byte form.
        long: bool,
    },
    /// READ CAPACITY(10).
    ReadCapacity10,
    /// READ CAPACITY(16).
    ReadCapacity16 {
        /// Allocation length.
        alloc_len: u32,
    },
    /// GET LBA STATUS.
    GetLbaStatus {
        /// Starting LBA.
        lba: u64,
        /// Allocation length.
        alloc_len: u32,
    },
    /// READ(6/10/12/16).
    Read(Transfer),
    /// WRITE(6/10/12/16).
    Write(Transfer),
    /// VERIFY(10/12/16).
    Verify {
        /// Range (FUA unused).
        range: Transfer,
        /// BYTCHK: 0 no data, 1 compare all, 3 one block compared with each.
        bytchk: u8,
    },
    /// WRITE AND VERIFY(10/12/16).
    WriteAndVerify {
        /// Range (FUA unused).
        range: Transfer,
        /// BYTCHK: 0 verify medium, 1 compare with data written.
        bytchk: u8,
    },
    /// WRITE SAME(10/16).
    WriteSame {
        /// Range.
        range: Transfer,
        /// UNMAP bit.
        unmap: bool,
        /// ANCHOR bit.
        anchor: bool,
        /// NDOB bit (16 only): no data-out buffer, write zeros.
        ndob: bool,
    },
    /// UNMAP.
    Unmap {
        /// ANCHOR bit.
        anchor: bool,
        /// Parameter list length.
        param_len: u16,
    },
    /// SYNCHRONIZE CACHE(10/16).
    SynchronizeCache {
        /// Range (0 blocks = to the end).
        range: Transfer,
        /// IMMED bit.
        immed: bool,
    },
    /// COMPARE AND WRITE.
    CompareAndWrite(Transfer),
    /// ORWRITE(16): the data-out buffer ORed into the blocks.
    OrWrite(Transfer),
    /// PRE-FETCH(10/16).
    PreFetch {
        /// Range (0 blocks = to the end; FUA and DPO unused).
        range: Transfer,
        /// IMMED bit.
        immed: bool,
    },
    /// READ DEFECT DATA(10/12).
    ReadDefectData {
        /// REQ_PLIST.
        plist: bool,
        /// REQ_GLIST.
        glist: bool,
        /// DEFECT LIST FORMAT requested.
        format: u8,
        /// ADDRESS DESCRIPTOR INDEX (12-byte form; 0 for the 10-byte one).
        index: u32,
        /// Allocation length.
        alloc_len: u32,
        /// The 12-byte form.
        long: bool,
    },
    /// START STOP UNIT.
    StartStopUnit {
        /// IMMED bit.
        immed: bool,
        /// Power condition.
        power_condition: u8,
        /// LOEJ bit.
        loej: bool,
        /// START bit.
        start: bool,
    },
    /// PERSISTENT RESERVE IN.
    PersistentReserveIn {
        /// Service action.
        service_action: PrInAction,
        /// Allocation length.
        alloc_len: u16,
    },
    /// PERSISTENT RESERVE OUT.
    PersistentReserveOut {
        /// Service action.
        service_action: PrOutAction,
        /// Scope.
        scope: u8,
        /// Type code.
        kind: PrType,
        /// Parameter list length.
        param_len: u32,
    },
    /// REPORT SUPPORTED OPERATION CODES.
    ReportSupportedOpcodes {
        /// RCTD bit.
        rctd: bool,
        /// Reporting options.
        options: ReportingOptions,
        /// Requested operation code.
        opcode: ScsiOp,
        /// Requested service action.
        service_action: u16,
        /// Allocation length.
        alloc_len: u32,
    },
    /// SEND DIAGNOSTIC.
    SendDiagnostic {
        /// Self-test code.
        code: u8,
        /// PF bit.
        pf: bool,
        /// SELFTEST bit.
        selftest: bool,
        /// Parameter list length.
        param_len: u16,
    },
    /// FORMAT UNIT, RESERVE(6), RELEASE(6), PREVENT ALLOW MEDIUM REMOVAL:
    /// accepted without effect.
    NoOp(ScsiOp),
}

/// Reads a `T` from the start of `cdb` (whose length the caller checked
/// against the operation code).
fn read<T: FromBytes>(cdb: &[u8]) -> Result<T, CdbError> {
    T::read_from_prefix(cdb)
        .map(|(t, _)| t)
        .map_err(|_| CdbError::TooShort)
}

/// The LBA, block count and byte-1 flags of a 10-, 12- or 16-byte LBA CDB
/// (`cdb` is exactly as long as its operation code's group says).
fn lba_cdb<F: FromBytes + Unaligned>(cdb: &[u8]) -> Result<(u64, u32, F), CdbError> {
    Ok(match cdb.len() {
        10 => {
            let c: Cdb10<F> = read(cdb)?;
            (c.lba.get().into(), c.len.get().into(), c.flags)
        }
        12 => {
            let c: Cdb12<F> = read(cdb)?;
            (c.lba.get().into(), c.len.get(), c.flags)
        }
        _ => {
            let c: Cdb16<F> = read(cdb)?;
            (c.lba.get(), c.len.get(), c.flags)
        }
    })
}

/// The range of a 10/12/16-byte CDB, with FUA unused.
fn range<F: FromBytes + Unaligned>(cdb: &[u8]) -> Result<(Transfer, F), CdbError> {
    let (lba, blocks, flags) = lba_cdb::<F>(cdb)?;
    Ok((
        Transfer {
            lba,
            blocks,
            fua: false,
            dpo: false,
        },
        flags,
    ))
}

/// A READ / WRITE(10/12/16) or ORWRITE(16): refuses RDPROTECT, WRPROTECT
/// and ORPROTECT (the device has no protection information, INQUIRY
/// PROTECT = 0, so SBC-4 asks for INVALID FIELD IN CDB) and the obsolete
/// RELADR.
fn read_write(cdb: &[u8]) -> Result<Transfer, CdbError> {
    let (lba, blocks, flags) = lba_cdb::<RwFlags>(cdb)?;
    if flags.protect() != 0 || flags.reladr() {
        return Err(CdbError::InvalidField);
    }
    Ok(Transfer {
        lba,
        blocks,
        fua: flags.fua(),
        dpo: flags.dpo(),
    })
}

/// Parses a CDB. `cdb` may be longer than the command (transports pad to
/// 16 bytes); never panics.
///
/// Beyond decoding, the parser refuses what this logical unit does not
/// support, with [`CdbError::InvalidField`]: NACA in the control byte (no
/// ACA), nonzero RDPROTECT / WRPROTECT / VRPROTECT (no protection
/// information), RELADR, a reserved BYTCHK, LBDATA / PBDATA, and a
/// service action other than the ones [`Command`] has. Any other operation
/// code is [`CdbError::InvalidOpcode`].
pub fn parse_cdb(cdb: &[u8]) -> Result<Command, CdbError> {
    let op = ScsiOp::new(*cdb.first().ok_or(CdbError::TooShort)?);
    let len = op.cdb_len().ok_or(CdbError::InvalidOpcode)?;
    let cdb = cdb.get(..len).ok_or(CdbError::TooShort)?;
    let cmd = match op {
        ScsiOp::TEST_UNIT_READY => Command::TestUnitReady,
        ScsiOp::REQUEST_SENSE => {
            let c: RequestSenseCdb = read(cdb)?;
            Command::RequestSense {
                desc: c.flags.desc(),
                alloc_len: c.alloc_len,
            }
        }
        ScsiOp::INQUIRY => {
            let c: InquiryCdb = read(cdb)?;
            if c.flags.cmddt() || (!c.flags.evpd() && c.page != VpdPage::SUPPORTED_PAGES) {
                return Err(CdbError::InvalidField);
            }
            Command::Inquiry {
                evpd: c.flags.evpd(),
                page: c.page,
                alloc_len: c.alloc_len.get(),
            }
        }
        ScsiOp::MODE_SENSE6 => {
            let c: ModeSense6Cdb = read(cdb)?;
            Command::ModeSense {
                pc: c.page.pc(),
                page: c.page.page(),
                subpage: c.subpage,
                alloc_len: c.alloc_len.into(),
                long: false,
            }
        }
        ScsiOp::MODE_SENSE10 => {
            let c: ModeSense10Cdb = read(cdb)?;
            Command::ModeSense {
                pc: c.page.pc(),
                page: c.page.page(),
                subpage: c.subpage,
                alloc_len: c.alloc_len.get(),
                long: true,
            }
        }
        ScsiOp::MODE_SELECT6 => {
            let c: ModeSelect6Cdb = read(cdb)?;
            Command::ModeSelect {
                pf: c.flags.pf(),
                sp: c.flags.sp(),
                param_len: c.param_len.into(),
                long: false,
            }
        }
        ScsiOp::MODE_SELECT10 => {
            let c: ModeSelect10Cdb = read(cdb)?;
            Command::ModeSelect {
                pf: c.flags.pf(),
                sp: c.flags.sp(),
                param_len: c.param_len.get(),
                long: true,
            }
        }
        ScsiOp::READ_CAPACITY10 => Command::ReadCapacity10,
        ScsiOp::SERVICE_ACTION_IN16 => {
            let c: ServiceActionIn16Cdb = read(cdb)?;
            match ServiceActionIn::new(c.service_action.action()) {
                ServiceActionIn::READ_CAPACITY16 => Command::ReadCapacity16 {
                    alloc_len: c.alloc_len.get(),
                },
                ServiceActionIn::GET_LBA_STATUS => Command::GetLbaStatus {
                    lba: c.lba.get(),
                    alloc_len: c.alloc_len.get(),
                },
                _ => return Err(CdbError::InvalidField),
            }
        }
        ScsiOp::READ6 | ScsiOp::WRITE6 => {
            let c: Cdb6Rw = read(cdb)?;
            let t = Transfer {
                lba: (u64::from(c.lba_hi.lba()) << 16) | u64::from(c.lba.get()),
                blocks: if c.len == 0 { 256 } else { c.len.into() },
                fua: false,
                dpo: false,
            };
            if op == ScsiOp::READ6 {
                Command::Read(t)
            } else {
                Command::Write(t)
            }
        }
        ScsiOp::READ10 | ScsiOp::READ12 | ScsiOp::READ16 => Command::Read(read_write(cdb)?),
        ScsiOp::WRITE10 | ScsiOp::WRITE12 | ScsiOp::WRITE16 => Command::Write(read_write(cdb)?),
        ScsiOp::VERIFY10 | ScsiOp::VERIFY12 | ScsiOp::VERIFY16 => {
            let (mut range, flags) = range::<VerifyFlags>(cdb)?;
            range.dpo = flags.dpo();
            if flags.protect() != 0 || flags.bytchk() == 2 || flags.reladr() {
                return Err(CdbError::InvalidField);
            }
            Command::Verify {
                range,
                bytchk: flags.bytchk(),
            }
        }
        ScsiOp::WRITE_VERIFY10 | ScsiOp::WRITE_VERIFY12 | ScsiOp::WRITE_VERIFY16 => {
            let (mut range, flags) = range::<VerifyFlags>(cdb)?;
            range.dpo = flags.dpo();
            if flags.protect() != 0 || flags.bytchk() > 1 || flags.reladr() {
                return Err(CdbError::InvalidField);
            }
            Command::WriteAndVerify {
                range,
                bytchk: flags.bytchk(),
            }
        }
        ScsiOp::WRITE_SAME10 | ScsiOp::WRITE_SAME16 => {
            let (range, flags) = range::<WriteSameFlags>(cdb)?;
            if flags.protect() != 0 || flags.lbdata() || flags.pbdata() {
                return Err(CdbError::InvalidField);
            }
            Command::WriteSame {
                range,
                unmap: flags.unmap(),
                anchor: flags.anchor(),
                // Bit 0 is reserved in WRITE SAME(10).
                ndob: op == ScsiOp::WRITE_SAME16 && flags.ndob(),
            }
        }
        ScsiOp::UNMAP => {
            let c: UnmapCdb = read(cdb)?;
            Command::Unmap {
                anchor: c.flags.anchor(),
                param_len: c.param_len.get(),
            }
        }
        ScsiOp::SYNCHRONIZE_CACHE10 | ScsiOp::SYNCHRONIZE_CACHE16 => {
            let (range, flags) = range::<SyncCacheFlags>(cdb)?;
            Command::SynchronizeCache {
                range,
                immed: flags.immed(),
            }
        }
        ScsiOp::PRE_FETCH10 | ScsiOp::PRE_FETCH16 => {
            let (range, flags) = range::<SyncCacheFlags>(cdb)?;
            Command::PreFetch {
                range,
                immed: flags.immed(),
            }
        }
        ScsiOp::ORWRITE16 => Command::OrWrite(read_write(cdb)?),
        ScsiOp::READ_DEFECT_DATA10 => {
            let c: ReadDefectData10Cdb = read(cdb)?;
            Command::ReadDefectData {
                plist: c.flags.req_plist(),
                glist: c.flags.req_glist(),
                format: c.flags.format(),
                index: 0,
                alloc_len: c.alloc_len.get().into(),
                long: false,
            }
        }
        ScsiOp::READ_DEFECT_DATA12 => {
            let c: ReadDefectData12Cdb = read(cdb)?;
            Command::ReadDefectData {
                plist: c.flags.req_plist(),
                glist: c.flags.req_glist(),
                format: c.flags.format(),
                index: c.index.get(),
                alloc_len: c.alloc_len.get(),
                long: true,
            }
        }
        ScsiOp::COMPARE_AND_WRITE => {
            let c: CompareAndWriteCdb = read(cdb)?;
            if c.flags.protect() != 0 {
                return Err(CdbError::InvalidField);
            }
            Command::CompareAndWrite(Transfer {
                lba: c.lba.get(),
                blocks: c.blocks.into(),
                fua: c.flags.fua(),
                dpo: c.flags.dpo(),
            })
        }
        ScsiOp::START_STOP_UNIT => {
            let c: StartStopCdb = read(cdb)?;
            Command::StartStopUnit {
                immed: c.immed.immed(),
                power_condition: c.flags.power_condition(),
                loej: c.flags.loej(),
                start: c.flags.start(),
            }
        }
        ScsiOp::PERSISTENT_RESERVE_IN => {
            let c: PrInCdb = read(cdb)?;
            Command::PersistentReserveIn {
                service_action: PrInAction::new(c.service_action.action()),
                alloc_len: c.alloc_len.get(),
            }
        }
        ScsiOp::PERSISTENT_RESERVE_OUT => {
            let c: PrOutCdb = read(cdb)?;
            Command::PersistentReserveOut {
                service_action: PrOutAction::new(c.service_action.action()),
                scope: c.scope_type.scope(),
                kind: c.scope_type.kind(),
                param_len: c.param_len.get(),
            }
        }
        ScsiOp::MAINTENANCE_IN => {
            let c: ReportOpcodesCdb = read(cdb)?;
            if MaintenanceIn::new(c.service_action.action())
                != MaintenanceIn::REPORT_SUPPORTED_OPCODES
            {
                return Err(CdbError::InvalidField);
            }
            Command::ReportSupportedOpcodes {
                rctd: c.options.rctd(),
                options: c.options.options(),
                opcode: c.opcode,
                service_action: c.requested_sa.get(),
                alloc_len: c.alloc_len.get(),
            }
        }
        ScsiOp::SEND_DIAGNOSTIC => {
            let c: SendDiagnosticCdb = read(cdb)?;
            Command::SendDiagnostic {
                code: c.flags.self_test_code(),
                pf: c.flags.pf(),
                selftest: c.flags.selftest(),
                param_len: c.param_len.get(),
            }
        }
        ScsiOp::FORMAT_UNIT
        | ScsiOp::RESERVE6
        | ScsiOp::RELEASE6
        | ScsiOp::PREVENT_ALLOW_MEDIUM_REMOVAL => Command::NoOp(op),
        _ => return Err(CdbError::InvalidOpcode),
    };
    // NACA asks for auto contingent allegiance, which is not supported
    // (SAM-5 5.9.1.1: the command is refused).
    if control(cdb).naca() {
        return Err(CdbError::InvalidField);
    }
    Ok(cmd)
}

/// The control byte: the last byte of `cdb` (cut to its command's
/// length).
fn control(cdb: &[u8]) -> Control {
    Control::from_bits(cdb.last().copied().unwrap_or(0))
}

/// A parsed REPORT LUNS.
///
/// REPORT LUNS is the SCSI target's command, not a logical unit's: a
/// transport (StorVSP) answers it from its LUN map, so it is parsed on its
/// own rather than by [`parse_cdb`]. The target decides what to do with
/// the fields; the parser only decodes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportLuns {
    /// Select report.
    pub select_report: SelectReport,
    /// Allocation length.
    pub alloc_len: u32,
}

impl ReportLuns {
    /// Parses a REPORT LUNS CDB (`cdb` may be longer than 12 bytes): a
    /// CDB with another operation code is [`CdbError::InvalidOpcode`], a
    /// short one [`CdbError::TooShort`]. Never panics.
    pub fn parse(cdb: &[u8]) -> Result<ReportLuns, CdbError> {
        if ScsiOp::new(*cdb.first().ok_or(CdbError::TooShort)?) != ScsiOp::REPORT_LUNS {
            return Err(CdbError::InvalidOpcode);
        }
        let c: ReportLunsCdb = read(cdb)?;
        Ok(ReportLuns {
            select_report: c.select_report,
            alloc_len: c.alloc_len.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read6_zero_is_256() {
        let c = parse_cdb(&[ScsiOp::READ6.get(), 0x1F, 0xFF, 0xFF, 0, 0]).unwrap();
        assert_eq!(
            c,
            Command::Read(Transfer {
                lba: 0x1F_FFFF,
                blocks: 256,
                fua: false,
                dpo: false
            })
        );
        // The reserved bits above the LBA are not part of it.
        let c = parse_cdb(&[ScsiOp::WRITE6.get(), 0xE1, 0x00, 0x02, 9, 0]).unwrap();
        assert_eq!(
            c,
            Command::Write(Transfer {
                lba: 0x1_0002,
                blocks: 9,
                fua: false,
                dpo: false
            })
        );
    }

    #[test]
    fn write16_fua() {
        let mut cdb = [0u8; 16];
        cdb[0] = ScsiOp::WRITE16.get();
        cdb[1] = 0x08;
        cdb[2..10].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        cdb[10..14].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            parse_cdb(&cdb).unwrap(),
            Command::Write(Transfer {
                lba: 0x0102_0304_0506_0708,
                blocks: 9,
                fua: true,
                dpo: false
            })
        );
    }

    #[test]
    fn read12_and_read10() {
        let mut c12 = [0u8; 12];
        c12[0] = ScsiOp::READ12.get();
        c12[2..6].copy_from_slice(&77u32.to_be_bytes());
        c12[6..10].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        assert_eq!(
            parse_cdb(&c12),
            Ok(Command::Read(Transfer {
                lba: 77,
                blocks: 0x1_0000,
                fua: false,
                dpo: false
            }))
        );
        let c10 = [ScsiOp::READ10.get(), 0x08, 0, 0, 1, 0, 0, 0, 4, 0];
        assert_eq!(
            parse_cdb(&c10),
            Ok(Command::Read(Transfer {
                lba: 256,
                blocks: 4,
                fua: true,
                dpo: false
            }))
        );
        // RELADR and RDPROTECT are refused.
        let mut bad = c10;
        bad[1] = 0x01;
        assert_eq!(parse_cdb(&bad), Err(CdbError::InvalidField));
        bad[1] = 0x20;
        assert_eq!(parse_cdb(&bad), Err(CdbError::InvalidField));
    }

    #[test]
    fn short_and_unknown() {
        assert_eq!(parse_cdb(&[]), Err(CdbError::TooShort));
        assert_eq!(
            parse_cdb(&[ScsiOp::READ10.get(), 0, 0]),
            Err(CdbError::TooShort)
        );
        assert_eq!(parse_cdb(&[0xFF; 16]), Err(CdbError::InvalidOpcode));
        assert_eq!(
            parse_cdb(&[0x02, 0, 0, 0, 0, 0]),
            Err(CdbError::InvalidOpcode)
        );
        // MMC and target commands are not a disk's.
        assert_eq!(
            parse_cdb(&[ScsiOp::READ_TOC.get(), 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(CdbError::InvalidOpcode)
        );
        assert_eq!(
            parse_cdb(&[ScsiOp::REPORT_LUNS.get(), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(CdbError::InvalidOpcode)
        );
    }

    #[test]
    fn field_decoding() {
        let mut ws = [0u8; 16];
        ws[0] = ScsiOp::WRITE_SAME16.get();
        ws[1] = 0x19;
        ws[13] = 4;
        assert_eq!(
            parse_cdb(&ws),
            Ok(Command::WriteSame {
                range: Transfer {
                    lba: 0,
                    blocks: 4,
                    fua: false,
                    dpo: false
                },
                unmap: true,
                anchor: true,
                ndob: true
            })
        );
        // NDOB does not exist in WRITE SAME(10).
        let ws10 = [ScsiOp::WRITE_SAME10.get(), 0x09, 0, 0, 0, 0, 0, 0, 1, 0];
        assert!(matches!(
            parse_cdb(&ws10),
            Ok(Command::WriteSame {
                unmap: true,
                ndob: false,
                ..
            })
        ));
        let mut lbdata = ws10;
        lbdata[1] = 0x02;
        assert_eq!(parse_cdb(&lbdata), Err(CdbError::InvalidField));
        let v = [ScsiOp::VERIFY10.get(), 0x06, 0, 0, 0, 9, 0, 0, 2, 0];
        assert!(matches!(
            parse_cdb(&v),
            Ok(Command::Verify { bytchk: 3, range }) if range.lba == 9 && range.blocks == 2
        ));
        let pr = [
            ScsiOp::PERSISTENT_RESERVE_OUT.get(),
            0x01,
            0x03,
            0,
            0,
            0,
            0,
            0,
            24,
            0,
        ];
        assert_eq!(
            parse_cdb(&pr),
            Ok(Command::PersistentReserveOut {
                service_action: PrOutAction::RESERVE,
                scope: 0,
                kind: PrType::EXCLUSIVE_ACCESS,
                param_len: 24
            })
        );
        let mut caw = [0u8; 16];
        caw[0] = ScsiOp::COMPARE_AND_WRITE.get();
        caw[1] = 0x08;
        caw[9] = 7;
        caw[13] = 1;
        assert_eq!(
            parse_cdb(&caw),
            Ok(Command::CompareAndWrite(Transfer {
                lba: 7,
                blocks: 1,
                fua: true,
                dpo: false
            }))
        );
        let mut sai = [0u8; 16];
        sai[0] = ScsiOp::SERVICE_ACTION_IN16.get();
        sai[1] = 0x11;
        assert_eq!(parse_cdb(&sai), Err(CdbError::InvalidField));
        sai[1] = 0xF0;
        sai[13] = 32;
        assert_eq!(
            parse_cdb(&sai),
            Ok(Command::ReadCapacity16 { alloc_len: 32 })
        );
        assert_eq!(
            parse_cdb(&[ScsiOp::WRITE_VERIFY10.get(), 0x06, 0, 0, 0, 0, 0, 0, 1, 0]),
            Err(CdbError::InvalidField)
        );
        assert_eq!(
            CdbError::InvalidOpcode.sense(),
            SenseData::illegal(AdditionalSense::INVALID_COMMAND)
        );
        assert_eq!(
            CdbError::TooShort.sense(),
            SenseData::illegal(AdditionalSense::INVALID_FIELD_IN_CDB)
        );
    }

    #[test]
    fn spc_commands() {
        assert_eq!(
            parse_cdb(&[ScsiOp::INQUIRY.get(), 1, 0xB0, 0x01, 0x00, 0]),
            Ok(Command::Inquiry {
                evpd: true,
                page: VpdPage::BLOCK_LIMITS,
                alloc_len: 256
            })
        );
        // A page without EVPD, and CMDDT, are refused.
        assert_eq!(
            parse_cdb(&[ScsiOp::INQUIRY.get(), 0, 0x80, 0, 36, 0]),
            Err(CdbError::InvalidField)
        );
        assert_eq!(
            parse_cdb(&[ScsiOp::INQUIRY.get(), 2, 0, 0, 36, 0]),
            Err(CdbError::InvalidField)
        );
        assert_eq!(
            parse_cdb(&[ScsiOp::MODE_SENSE10.get(), 0, 0x48, 0, 0, 0, 0, 0, 64, 0]),
            Ok(Command::ModeSense {
                pc: PageControl::CHANGEABLE,
                page: ModePage::CACHING,
                subpage: 0,
                alloc_len: 64,
                long: true
            })
        );
        assert_eq!(
            parse_cdb(&[ScsiOp::MODE_SELECT6.get(), 0x11, 0, 0, 24, 0]),
            Ok(Command::ModeSelect {
                pf: true,
                sp: true,
                param_len: 24,
                long: false
            })
        );
        assert_eq!(
            parse_cdb(&[ScsiOp::REQUEST_SENSE.get(), 1, 0, 0, 252, 0]),
            Ok(Command::RequestSense {
                desc: true,
                alloc_len: 252
            })
        );
        assert_eq!(
            parse_cdb(&[ScsiOp::START_STOP_UNIT.get(), 1, 0, 0, 0x32, 0]),
            Ok(Command::StartStopUnit {
                immed: true,
                power_condition: 3,
                loej: true,
                start: false
            })
        );
        assert_eq!(
            parse_cdb(&[ScsiOp::SEND_DIAGNOSTIC.get(), 0xB4, 0, 0x01, 0x02, 0]),
            Ok(Command::SendDiagnostic {
                code: 5,
                pf: true,
                selftest: true,
                param_len: 0x102
            })
        );
        let mut rsoc = [0u8; 12];
        rsoc[0] = ScsiOp::MAINTENANCE_IN.get();
        rsoc[1] = 0x0C;
        rsoc[2] = 0x82;
        rsoc[3] = ScsiOp::PERSISTENT_RESERVE_OUT.get();
        rsoc[5] = 4;
        rsoc[9] = 200;
        assert_eq!(
            parse_cdb(&rsoc),
            Ok(Command::ReportSupportedOpcodes {
                rctd: true,
                options: ReportingOptions::ONE_SERVICE_ACTION,
                opcode: ScsiOp::PERSISTENT_RESERVE_OUT,
                service_action: 4,
                alloc_len: 200
            })
        );
        rsoc[1] = 0x0D;
        assert_eq!(parse_cdb(&rsoc), Err(CdbError::InvalidField));
        // An undefined service action of PERSISTENT RESERVE IN is decoded;
        // the adapter decides.
        assert_eq!(
            parse_cdb(&[
                ScsiOp::PERSISTENT_RESERVE_IN.get(),
                0x1F,
                0,
                0,
                0,
                0,
                0,
                0,
                8,
                0
            ]),
            Ok(Command::PersistentReserveIn {
                service_action: PrInAction::new(0x1F),
                alloc_len: 8
            })
        );
        assert_eq!(
            parse_cdb(&[ScsiOp::PREVENT_ALLOW_MEDIUM_REMOVAL.get(), 0, 0, 0, 1, 0]),
            Ok(Command::NoOp(ScsiOp::PREVENT_ALLOW_MEDIUM_REMOVAL))
        );
    }

    #[test]
    fn naca_is_refused_and_padding_ignored() {
        assert_eq!(
            parse_cdb(&[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0x04]),
            Err(CdbError::InvalidField)
        );
        // Other control bits are ignored, as are bytes past the command.
        let mut padded = [0xFFu8; 16];
        padded[..6].copy_from_slice(&[ScsiOp::TEST_UNIT_READY.get(), 0, 0, 0, 0, 0xC3]);
        assert_eq!(parse_cdb(&padded), Ok(Command::TestUnitReady));
    }

    #[test]
    fn report_luns() {
        let mut c = [0u8; 16];
        c[0] = ScsiOp::REPORT_LUNS.get();
        c[2] = 0x02;
        c[6..10].copy_from_slice(&0x0001_0008u32.to_be_bytes());
        assert_eq!(
            ReportLuns::parse(&c),
            Ok(ReportLuns {
                select_report: SelectReport::ALL,
                alloc_len: 0x1_0008
            })
        );
        // Unnamed select report values and NACA are the target's to judge.
        c[2] = 0xFA;
        c[11] = 0x04;
        assert_eq!(
            ReportLuns::parse(&c[..12]).map(|r| r.select_report),
            Ok(SelectReport::new(0xFA))
        );
        assert_eq!(ReportLuns::parse(&c[..11]), Err(CdbError::TooShort));
        assert_eq!(ReportLuns::parse(&[]), Err(CdbError::TooShort));
        assert_eq!(
            ReportLuns::parse(&[ScsiOp::INQUIRY.get(); 12]),
            Err(CdbError::InvalidOpcode)
        );
    }

    /// DPO (byte 1 bit 4) is decoded wherever SBC defines it: READ,
    /// WRITE, VERIFY, WRITE AND VERIFY and COMPARE AND WRITE.
    #[test]
    fn dpo_is_decoded() {
        let dpo = |cdb: &[u8]| match parse_cdb(cdb) {
            Ok(
                Command::Read(t)
                | Command::Write(t)
                | Command::CompareAndWrite(t)
                | Command::Verify { range: t, .. }
                | Command::WriteAndVerify { range: t, .. },
            ) => t.dpo,
            other => panic!("{cdb:02x?}: {other:?}"),
        };
        for op in [
            ScsiOp::READ10,
            ScsiOp::WRITE10,
            ScsiOp::VERIFY10,
            ScsiOp::WRITE_VERIFY10,
            ScsiOp::READ12,
            ScsiOp::VERIFY12,
            ScsiOp::READ16,
            ScsiOp::WRITE16,
            ScsiOp::VERIFY16,
            ScsiOp::WRITE_VERIFY16,
            ScsiOp::COMPARE_AND_WRITE,
        ] {
            let mut cdb = [0u8; 16];
            cdb[0] = op.get();
            assert!(!dpo(&cdb), "{op:?}");
            cdb[1] = 0x10;
            assert!(dpo(&cdb), "{op:?}");
        }
    }

    #[test]
    fn prefetch_orwrite_and_read_defect_data() {
        let mut pf = [0u8; 10];
        pf[0] = ScsiOp::PRE_FETCH10.get();
        pf[1] = 0x02;
        pf[2..6].copy_from_slice(&9u32.to_be_bytes());
        pf[7..9].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(
            parse_cdb(&pf),
            Ok(Command::PreFetch {
                range: Transfer {
                    lba: 9,
                    blocks: 3,
                    fua: false,
                    dpo: false
                },
                immed: true
            })
        );
        let mut or = [0u8; 16];
        or[0] = ScsiOp::ORWRITE16.get();
        or[1] = 0x18;
        or[13] = 2;
        assert_eq!(
            parse_cdb(&or),
            Ok(Command::OrWrite(Transfer {
                lba: 0,
                blocks: 2,
                fua: true,
                dpo: true
            }))
        );
        or[1] = 0x20;
        assert_eq!(parse_cdb(&or), Err(CdbError::InvalidField));
        let rdd10 = [
            ScsiOp::READ_DEFECT_DATA10.get(),
            0,
            0x1D,
            0,
            0,
            0,
            0,
            1,
            2,
            0,
        ];
        assert_eq!(
            parse_cdb(&rdd10),
            Ok(Command::ReadDefectData {
                plist: true,
                glist: true,
                format: 5,
                index: 0,
                alloc_len: 0x102,
                long: false
            })
        );
        let rdd12 = [
            ScsiOp::READ_DEFECT_DATA12.get(),
            0x08,
            0,
            0,
            0,
            4,
            0,
            0,
            1,
            0,
            0,
            0,
        ];
        assert_eq!(
            parse_cdb(&rdd12),
            Ok(Command::ReadDefectData {
                plist: false,
                glist: true,
                format: 0,
                index: 4,
                alloc_len: 0x100,
                long: true
            })
        );
    }

    #[test]
    fn hostile_cdbs_do_not_panic() {
        let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
        for _ in 0..100_000 {
            let x = rng.u64(..);
            let len = (x % 20) as usize;
            let mut buf = [0u8; 20];
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (x >> ((i % 8) * 8)) as u8 ^ i as u8;
            }
            buf[0] = (x >> 3) as u8;
            let _ = parse_cdb(&buf[..len]);
            let _ = ReportLuns::parse(&buf[..len]);
            let _ = super::super::mmc::parse_mmc_cdb(&buf[..len]);
            let _ = SenseData::parse(&buf[..len]);
        }
    }
}
