//! SCSI wire formats: operation codes, CDB layouts, sense data, status
//! codes, VPD and mode pages (SPC-5 / SBC-4), and a CDB parser.
//!
//! Every layout is a `#[repr(C)]` zerocopy type whose size is asserted at
//! compile time. [`parse_cdb`] decodes any byte string into a typed
//! [`Command`] (LBA, length and flags extracted, lengths checked) and never
//! panics: a short or unknown CDB yields a [`CdbError`] that maps to the
//! ILLEGAL REQUEST sense the standard asks for.

use core::mem::size_of;
use zerocopy::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Operation codes (SPC-5, SBC-4).
pub mod op {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// FORMAT UNIT.
    pub const FORMAT_UNIT: u8 = 0x04;
    /// READ(6).
    pub const READ6: u8 = 0x08;
    /// WRITE(6).
    pub const WRITE6: u8 = 0x0A;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SELECT(6).
    pub const MODE_SELECT6: u8 = 0x15;
    /// RESERVE(6) (obsolete).
    pub const RESERVE6: u8 = 0x16;
    /// RELEASE(6) (obsolete).
    pub const RELEASE6: u8 = 0x17;
    /// MODE SENSE(6).
    pub const MODE_SENSE6: u8 = 0x1A;
    /// START STOP UNIT.
    pub const START_STOP_UNIT: u8 = 0x1B;
    /// SEND DIAGNOSTIC.
    pub const SEND_DIAGNOSTIC: u8 = 0x1D;
    /// PREVENT ALLOW MEDIUM REMOVAL.
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
    /// READ CAPACITY(10).
    pub const READ_CAPACITY10: u8 = 0x25;
    /// READ(10).
    pub const READ10: u8 = 0x28;
    /// WRITE(10).
    pub const WRITE10: u8 = 0x2A;
    /// WRITE AND VERIFY(10).
    pub const WRITE_VERIFY10: u8 = 0x2E;
    /// VERIFY(10).
    pub const VERIFY10: u8 = 0x2F;
    /// SYNCHRONIZE CACHE(10).
    pub const SYNCHRONIZE_CACHE10: u8 = 0x35;
    /// WRITE SAME(10).
    pub const WRITE_SAME10: u8 = 0x41;
    /// UNMAP.
    pub const UNMAP: u8 = 0x42;
    /// MODE SELECT(10).
    pub const MODE_SELECT10: u8 = 0x55;
    /// MODE SENSE(10).
    pub const MODE_SENSE10: u8 = 0x5A;
    /// PERSISTENT RESERVE IN.
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    /// PERSISTENT RESERVE OUT.
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    /// READ(16).
    pub const READ16: u8 = 0x88;
    /// COMPARE AND WRITE.
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    /// WRITE(16).
    pub const WRITE16: u8 = 0x8A;
    /// WRITE AND VERIFY(16).
    pub const WRITE_VERIFY16: u8 = 0x8E;
    /// VERIFY(16).
    pub const VERIFY16: u8 = 0x8F;
    /// SYNCHRONIZE CACHE(16).
    pub const SYNCHRONIZE_CACHE16: u8 = 0x91;
    /// WRITE SAME(16).
    pub const WRITE_SAME16: u8 = 0x93;
    /// SERVICE ACTION IN(16) (READ CAPACITY(16), GET LBA STATUS).
    pub const SERVICE_ACTION_IN16: u8 = 0x9E;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xA0;
    /// MAINTENANCE IN (REPORT SUPPORTED OPERATION CODES).
    pub const MAINTENANCE_IN: u8 = 0xA3;
    /// READ(12).
    pub const READ12: u8 = 0xA8;
    /// WRITE(12).
    pub const WRITE12: u8 = 0xAA;
    /// WRITE AND VERIFY(12).
    pub const WRITE_VERIFY12: u8 = 0xAE;
    /// VERIFY(12).
    pub const VERIFY12: u8 = 0xAF;

    /// SERVICE ACTION IN(16) service action: READ CAPACITY(16).
    pub const SA_READ_CAPACITY16: u8 = 0x10;
    /// SERVICE ACTION IN(16) service action: GET LBA STATUS.
    pub const SA_GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN service action: REPORT SUPPORTED OPERATION CODES.
    pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0C;
}

/// SCSI status codes (SAM-5).
pub mod status {
    /// GOOD.
    pub const GOOD: u8 = 0x00;
    /// CHECK CONDITION.
    pub const CHECK_CONDITION: u8 = 0x02;
    /// CONDITION MET.
    pub const CONDITION_MET: u8 = 0x04;
    /// BUSY.
    pub const BUSY: u8 = 0x08;
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    /// TASK SET FULL.
    pub const TASK_SET_FULL: u8 = 0x28;
    /// ACA ACTIVE.
    pub const ACA_ACTIVE: u8 = 0x30;
    /// TASK ABORTED.
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Sense keys (SPC-5 table 52).
pub mod sense_key {
    /// NO SENSE.
    pub const NO_SENSE: u8 = 0x0;
    /// RECOVERED ERROR.
    pub const RECOVERED_ERROR: u8 = 0x1;
    /// NOT READY.
    pub const NOT_READY: u8 = 0x2;
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// HARDWARE ERROR.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// DATA PROTECT.
    pub const DATA_PROTECT: u8 = 0x7;
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: u8 = 0xB;
    /// MISCOMPARE.
    pub const MISCOMPARE: u8 = 0xE;
}

/// Additional sense codes (ASC) used by parastor; the ASCQ is given where
/// a constant is used.
pub mod asc {
    /// No additional sense information (ASCQ 0).
    pub const NO_ADDITIONAL_SENSE: u8 = 0x00;
    /// Peripheral device write fault (ASCQ 0).
    pub const WRITE_FAULT: u8 = 0x03;
    /// Logical unit not ready (ASCQ 0: cause not reportable).
    pub const LUN_NOT_READY: u8 = 0x04;
    /// End-to-end protection check failed (ASCQ 1 guard, 2 application
    /// tag, 3 reference tag).
    pub const PROTECTION_CHECK: u8 = 0x10;
    /// Unrecovered read error (ASCQ 0).
    pub const UNRECOVERED_READ: u8 = 0x11;
    /// Parameter list length error (ASCQ 0).
    pub const PARAMETER_LIST_LENGTH: u8 = 0x1A;
    /// Miscompare during verify operation (ASCQ 0).
    pub const MISCOMPARE_DURING_VERIFY: u8 = 0x1D;
    /// Invalid command operation code (ASCQ 0).
    pub const INVALID_COMMAND: u8 = 0x20;
    /// Logical block address out of range (ASCQ 0).
    pub const LBA_OUT_OF_RANGE: u8 = 0x21;
    /// Invalid field in CDB (ASCQ 0).
    pub const INVALID_FIELD_IN_CDB: u8 = 0x24;
    /// Invalid field in parameter list (ASCQ 0); ASCQ 4 is invalid release
    /// of persistent reservation.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: u8 = 0x26;
    /// Write protected (ASCQ 0); ASCQ 7 is space allocation failed write
    /// protect.
    pub const WRITE_PROTECTED: u8 = 0x27;
    /// Power on, reset or bus device reset occurred (ASCQ 0).
    pub const POWER_ON_RESET: u8 = 0x29;
    /// Parameters changed; ASCQ 9 is capacity data has changed.
    pub const PARAMETERS_CHANGED: u8 = 0x2A;
    /// Saving parameters not supported (ASCQ 0).
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: u8 = 0x39;
    /// Logical unit failure; ASCQ 2 is timeout on logical unit.
    pub const LOGICAL_UNIT_FAILURE: u8 = 0x3E;
    /// Internal target failure (ASCQ 0).
    pub const INTERNAL_TARGET_FAILURE: u8 = 0x44;

    /// ASCQ of [`PARAMETERS_CHANGED`]: capacity data has changed.
    pub const ASCQ_CAPACITY_DATA_CHANGED: u8 = 0x09;
    /// ASCQ of [`INVALID_FIELD_IN_PARAMETER_LIST`]: invalid release of
    /// persistent reservation.
    pub const ASCQ_INVALID_RELEASE: u8 = 0x04;
    /// ASCQ of [`WRITE_PROTECTED`]: space allocation failed write protect.
    pub const ASCQ_SPACE_ALLOCATION_FAILED: u8 = 0x07;
    /// ASCQ of [`LOGICAL_UNIT_FAILURE`]: timeout on logical unit.
    pub const ASCQ_TIMEOUT_ON_LOGICAL_UNIT: u8 = 0x02;
}

/// VPD page codes.
pub mod vpd {
    /// Supported VPD pages.
    pub const SUPPORTED_PAGES: u8 = 0x00;
    /// Unit serial number.
    pub const UNIT_SERIAL_NUMBER: u8 = 0x80;
    /// Device identification.
    pub const DEVICE_IDENTIFICATION: u8 = 0x83;
    /// Block limits.
    pub const BLOCK_LIMITS: u8 = 0xB0;
    /// Block device characteristics.
    pub const BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xB1;
    /// Logical block provisioning.
    pub const LOGICAL_BLOCK_PROVISIONING: u8 = 0xB2;
    /// Microsoft paging extent properties.
    pub const MSFT_PAGING_EXTENT_PROPERTIES: u8 = 0xCE;
    /// Microsoft virtual device properties.
    pub const MSFT_VIRTUAL_DEVICE_PROPERTIES: u8 = 0xCF;
}

/// Mode page codes and page control values.
pub mod mode {
    /// Caching mode page.
    pub const CACHING_PAGE: u8 = 0x08;
    /// Control mode page.
    pub const CONTROL_PAGE: u8 = 0x0A;
    /// All pages.
    pub const ALL_PAGES: u8 = 0x3F;
    /// Page control: current values.
    pub const PC_CURRENT: u8 = 0;
    /// Page control: changeable values.
    pub const PC_CHANGEABLE: u8 = 1;
    /// Page control: default values.
    pub const PC_DEFAULT: u8 = 2;
    /// Page control: saved values.
    pub const PC_SAVED: u8 = 3;
    /// Device-specific parameter bit: write protected.
    pub const DSP_WP: u8 = 0x80;
    /// Device-specific parameter bit: DPO and FUA supported.
    pub const DSP_DPOFUA: u8 = 0x10;
}

/// PERSISTENT RESERVE IN / OUT service actions and type codes.
pub mod pr {
    /// PR IN: READ KEYS.
    pub const IN_READ_KEYS: u8 = 0;
    /// PR IN: READ RESERVATION.
    pub const IN_READ_RESERVATION: u8 = 1;
    /// PR IN: REPORT CAPABILITIES.
    pub const IN_REPORT_CAPABILITIES: u8 = 2;
    /// PR IN: READ FULL STATUS.
    pub const IN_READ_FULL_STATUS: u8 = 3;
    /// PR OUT: REGISTER.
    pub const OUT_REGISTER: u8 = 0;
    /// PR OUT: RESERVE.
    pub const OUT_RESERVE: u8 = 1;
    /// PR OUT: RELEASE.
    pub const OUT_RELEASE: u8 = 2;
    /// PR OUT: CLEAR.
    pub const OUT_CLEAR: u8 = 3;
    /// PR OUT: PREEMPT.
    pub const OUT_PREEMPT: u8 = 4;
    /// PR OUT: PREEMPT AND ABORT.
    pub const OUT_PREEMPT_AND_ABORT: u8 = 5;
    /// PR OUT: REGISTER AND IGNORE EXISTING KEY.
    pub const OUT_REGISTER_AND_IGNORE: u8 = 6;
    /// PR OUT: REGISTER AND MOVE.
    pub const OUT_REGISTER_AND_MOVE: u8 = 7;
    /// Type: Write Exclusive.
    pub const TYPE_WRITE_EXCLUSIVE: u8 = 1;
    /// Type: Exclusive Access.
    pub const TYPE_EXCLUSIVE_ACCESS: u8 = 3;
    /// Type: Write Exclusive – Registrants Only.
    pub const TYPE_WRITE_EXCLUSIVE_RO: u8 = 5;
    /// Type: Exclusive Access – Registrants Only.
    pub const TYPE_EXCLUSIVE_ACCESS_RO: u8 = 6;
    /// Type: Write Exclusive – All Registrants.
    pub const TYPE_WRITE_EXCLUSIVE_AR: u8 = 7;
    /// Type: Exclusive Access – All Registrants.
    pub const TYPE_EXCLUSIVE_ACCESS_AR: u8 = 8;
    /// Transport ID protocol identifier "no specific protocol", used for
    /// parastor's 24-byte initiator transport IDs (16-byte id at offset 8).
    pub const PROTOCOL_NONE: u8 = 0x0F;
}

macro_rules! wire {
    ($(#[$m:meta])* $name:ident, $size:expr, { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
        pub struct $name { $($(#[$fm])* pub $f: $t,)* }
        const _: () = assert!(size_of::<$name>() == $size);
    };
}

wire!(
    /// READ(6) / WRITE(6).
    Cdb6Rw, 6, {
    /// Operation code.
    op: u8,
    /// LBA bits 20:16 in bits 4:0.
    lba_hi: u8,
    /// LBA bits 15:0.
    lba: U16,
    /// Transfer length; 0 means 256 blocks.
    len: u8,
    /// Control.
    control: u8,
});
wire!(
    /// READ(10) / WRITE(10) / VERIFY(10) / WRITE AND VERIFY(10) / WRITE
    /// SAME(10) / SYNCHRONIZE CACHE(10).
    Cdb10, 10, {
    /// Operation code.
    op: u8,
    /// Flags: FUA (bit 3) for READ/WRITE; BYTCHK (bits 2:1) for VERIFY;
    /// ANCHOR (4) / UNMAP (3) for WRITE SAME; IMMED (1) for SYNC CACHE.
    flags: u8,
    /// Logical block address.
    lba: U32,
    /// Group number.
    group: u8,
    /// Transfer / verification / number of blocks.
    len: U16,
    /// Control.
    control: u8,
});
wire!(
    /// READ(12) / WRITE(12) / VERIFY(12) / WRITE AND VERIFY(12).
    Cdb12, 12, {
    /// Operation code.
    op: u8,
    /// Flags, as [`Cdb10::flags`].
    flags: u8,
    /// Logical block address.
    lba: U32,
    /// Transfer length.
    len: U32,
    /// Group number.
    group: u8,
    /// Control.
    control: u8,
});
wire!(
    /// READ(16) / WRITE(16) / VERIFY(16) / WRITE AND VERIFY(16) / WRITE
    /// SAME(16) / SYNCHRONIZE CACHE(16).
    Cdb16, 16, {
    /// Operation code.
    op: u8,
    /// Flags, as [`Cdb10::flags`]; WRITE SAME(16) adds NDOB (bit 0).
    flags: u8,
    /// Logical block address.
    lba: U64,
    /// Transfer length / number of blocks.
    len: U32,
    /// Group number.
    group: u8,
    /// Control.
    control: u8,
});
wire!(
    /// COMPARE AND WRITE.
    CompareAndWriteCdb, 16, {
    /// Operation code.
    op: u8,
    /// Flags: FUA (bit 3).
    flags: u8,
    /// Logical block address.
    lba: U64,
    /// Reserved.
    reserved: [u8; 3],
    /// Number of logical blocks (the data-out buffer holds twice this).
    blocks: u8,
    /// Group number.
    group: u8,
    /// Control.
    control: u8,
});
wire!(
    /// UNMAP.
    UnmapCdb, 10, {
    /// Operation code.
    op: u8,
    /// ANCHOR (bit 0).
    flags: u8,
    /// Reserved.
    reserved: [u8; 4],
    /// Group number.
    group: u8,
    /// Parameter list length.
    param_len: U16,
    /// Control.
    control: u8,
});
wire!(
    /// UNMAP parameter list header.
    UnmapHeader, 8, {
    /// Bytes that follow this field.
    data_len: U16,
    /// Bytes of block descriptors.
    desc_len: U16,
    /// Reserved.
    reserved: [u8; 4],
});
wire!(
    /// UNMAP block descriptor.
    UnmapDescriptor, 16, {
    /// First LBA.
    lba: U64,
    /// Number of blocks.
    blocks: U32,
    /// Reserved.
    reserved: [u8; 4],
});
wire!(
    /// INQUIRY.
    InquiryCdb, 6, {
    /// Operation code.
    op: u8,
    /// EVPD (bit 0), CMDDT (bit 1, obsolete).
    flags: u8,
    /// VPD page code.
    page: u8,
    /// Allocation length.
    alloc_len: U16,
    /// Control.
    control: u8,
});
wire!(
    /// Standard INQUIRY data (the first 36 bytes).
    InquiryData, 36, {
    /// Peripheral qualifier and device type.
    device_type: u8,
    /// RMB (bit 7).
    removable: u8,
    /// Version (5 = SPC-3, 6 = SPC-4, 7 = SPC-5).
    version: u8,
    /// NORMACA, HISUP (bit 4), response data format (3:0).
    flags3: u8,
    /// Additional length (n - 4).
    additional_len: u8,
    /// SCCS, ACC, TPGS, 3PC, PROTECT.
    flags5: u8,
    /// ENCSERV, MULTIP.
    flags6: u8,
    /// CMDQUE (bit 1).
    flags7: u8,
    /// T10 vendor identification.
    vendor: [u8; 8],
    /// Product identification.
    product: [u8; 16],
    /// Product revision level.
    revision: [u8; 4],
});
wire!(
    /// MODE SENSE(6).
    ModeSense6Cdb, 6, {
    /// Operation code.
    op: u8,
    /// DBD (bit 3).
    flags: u8,
    /// Page control (7:6) and page code (5:0).
    page: u8,
    /// Subpage code.
    subpage: u8,
    /// Allocation length.
    alloc_len: u8,
    /// Control.
    control: u8,
});
wire!(
    /// MODE SENSE(10).
    ModeSense10Cdb, 10, {
    /// Operation code.
    op: u8,
    /// LLBAA (bit 4), DBD (bit 3).
    flags: u8,
    /// Page control (7:6) and page code (5:0).
    page: u8,
    /// Subpage code.
    subpage: u8,
    /// Reserved.
    reserved: [u8; 3],
    /// Allocation length.
    alloc_len: U16,
    /// Control.
    control: u8,
});
wire!(
    /// MODE SELECT(6).
    ModeSelect6Cdb, 6, {
    /// Operation code.
    op: u8,
    /// PF (bit 4), SP (bit 0).
    flags: u8,
    /// Reserved.
    reserved: [u8; 2],
    /// Parameter list length.
    param_len: u8,
    /// Control.
    control: u8,
});
wire!(
    /// MODE SELECT(10).
    ModeSelect10Cdb, 10, {
    /// Operation code.
    op: u8,
    /// PF (bit 4), SP (bit 0).
    flags: u8,
    /// Reserved.
    reserved: [u8; 5],
    /// Parameter list length.
    param_len: U16,
    /// Control.
    control: u8,
});
wire!(
    /// Mode parameter header for the 6-byte commands.
    ModeHeader6, 4, {
    /// Bytes that follow this field.
    data_len: u8,
    /// Medium type.
    medium_type: u8,
    /// Device-specific parameter (WP, DPOFUA).
    device_specific: u8,
    /// Block descriptor length.
    block_desc_len: u8,
});
wire!(
    /// Mode parameter header for the 10-byte commands.
    ModeHeader10, 8, {
    /// Bytes that follow this field.
    data_len: U16,
    /// Medium type.
    medium_type: u8,
    /// Device-specific parameter (WP, DPOFUA).
    device_specific: u8,
    /// LONGLBA (bit 0).
    flags: u8,
    /// Reserved.
    reserved: u8,
    /// Block descriptor length.
    block_desc_len: U16,
});
wire!(
    /// Caching mode page (0x08).
    CachingPage, 20, {
    /// PS (bit 7), SPF (bit 6), page code.
    page: u8,
    /// Page length (0x12).
    len: u8,
    /// IC, ABPF, CAP, DISC, SIZE, WCE (bit 2), MF, RCD (bit 0).
    flags: u8,
    /// Retention priorities.
    retention: u8,
    /// Disable pre-fetch transfer length.
    disable_prefetch_len: U16,
    /// Minimum pre-fetch.
    min_prefetch: U16,
    /// Maximum pre-fetch.
    max_prefetch: U16,
    /// Maximum pre-fetch ceiling.
    max_prefetch_ceiling: U16,
    /// FSW, LBCSS, DRA, NV_DIS.
    flags2: u8,
    /// Number of cache segments.
    segments: u8,
    /// Cache segment size.
    segment_size: U16,
    /// Reserved.
    reserved: u8,
    /// Obsolete.
    obsolete: [u8; 3],
});
/// [`CachingPage::flags`]: write cache enable.
pub const CACHING_WCE: u8 = 0x04;
wire!(
    /// Control mode page (0x0A).
    ControlPage, 12, {
    /// PS (bit 7), SPF (bit 6), page code.
    page: u8,
    /// Page length (0x0A).
    len: u8,
    /// TST, TMF_ONLY, DPICZ, D_SENSE (bit 2), GLTSD, RLEC.
    flags: u8,
    /// Queue algorithm modifier (7:4), NUAR, QERR (2:1).
    queue: u8,
    /// VS, RAC, UA_INTLCK_CTRL, SWP.
    flags4: u8,
    /// ATO, TAS, ATMPE, RWWP, autoload mode.
    flags5: u8,
    /// Obsolete.
    obsolete: U16,
    /// Busy timeout period.
    busy_timeout: U16,
    /// Extended self-test completion time.
    self_test_time: U16,
});
wire!(
    /// READ CAPACITY(10) parameter data.
    ReadCapacity10Data, 8, {
    /// Last LBA (0xFFFFFFFF if it does not fit).
    last_lba: U32,
    /// Logical block length in bytes.
    block_len: U32,
});
wire!(
    /// READ CAPACITY(16) parameter data.
    ReadCapacity16Data, 32, {
    /// Last LBA.
    last_lba: U64,
    /// Logical block length in bytes.
    block_len: U32,
    /// P_TYPE, PROT_EN.
    protection: u8,
    /// P_I_EXPONENT (7:4), logical blocks per physical block exponent (3:0).
    exponents: u8,
    /// LBPME (bit 7), LBPRZ (bit 6), lowest aligned LBA (13:8).
    lbp_aligned_hi: u8,
    /// Lowest aligned LBA (7:0).
    aligned_lo: u8,
    /// Reserved.
    reserved: [u8; 16],
});
wire!(
    /// SERVICE ACTION IN(16).
    ServiceActionIn16Cdb, 16, {
    /// Operation code.
    op: u8,
    /// Service action (4:0).
    service_action: u8,
    /// LBA (GET LBA STATUS starting LBA).
    lba: U64,
    /// Allocation length.
    alloc_len: U32,
    /// PMI (obsolete) or reserved.
    flags: u8,
    /// Control.
    control: u8,
});
wire!(
    /// GET LBA STATUS parameter data header.
    LbaStatusHeader, 8, {
    /// Bytes that follow this field.
    data_len: U32,
    /// Reserved.
    reserved: [u8; 4],
});
wire!(
    /// GET LBA STATUS descriptor.
    LbaStatusDescriptor, 16, {
    /// First LBA.
    lba: U64,
    /// Number of blocks.
    blocks: U32,
    /// Provisioning status (0 mapped, 1 deallocated, 2 anchored).
    status: u8,
    /// Reserved.
    reserved: [u8; 3],
});
wire!(
    /// PERSISTENT RESERVE IN.
    PrInCdb, 10, {
    /// Operation code.
    op: u8,
    /// Service action (4:0).
    service_action: u8,
    /// Reserved.
    reserved: [u8; 5],
    /// Allocation length.
    alloc_len: U16,
    /// Control.
    control: u8,
});
wire!(
    /// PERSISTENT RESERVE OUT.
    PrOutCdb, 10, {
    /// Operation code.
    op: u8,
    /// Service action (4:0).
    service_action: u8,
    /// Scope (7:4) and type (3:0).
    scope_type: u8,
    /// Reserved.
    reserved: [u8; 2],
    /// Parameter list length.
    param_len: U32,
    /// Control.
    control: u8,
});
wire!(
    /// PERSISTENT RESERVE OUT basic parameter list.
    PrOutParams, 24, {
    /// Reservation key.
    key: U64,
    /// Service action reservation key.
    sa_key: U64,
    /// Obsolete.
    obsolete: [u8; 4],
    /// SPEC_I_PT (bit 3), ALL_TG_PT (bit 2), APTPL (bit 0).
    flags: u8,
    /// Reserved.
    reserved: u8,
    /// Obsolete.
    obsolete2: [u8; 2],
});
wire!(
    /// PERSISTENT RESERVE OUT REGISTER AND MOVE parameter list header.
    PrRegisterMoveParams, 24, {
    /// Reservation key.
    key: U64,
    /// Service action reservation key.
    sa_key: U64,
    /// Reserved.
    reserved: u8,
    /// UNREG (bit 1), APTPL (bit 0).
    flags: u8,
    /// Relative target port identifier.
    target_port: U16,
    /// Length of the transport ID that follows.
    transport_id_len: U32,
});
wire!(
    /// START STOP UNIT.
    StartStopCdb, 6, {
    /// Operation code.
    op: u8,
    /// IMMED (bit 0).
    immed: u8,
    /// Reserved.
    reserved: u8,
    /// Power condition modifier (3:0).
    modifier: u8,
    /// Power condition (7:4), NO_FLUSH (2), LOEJ (1), START (0).
    flags: u8,
    /// Control.
    control: u8,
});
wire!(
    /// REPORT SUPPORTED OPERATION CODES (MAINTENANCE IN).
    ReportOpcodesCdb, 12, {
    /// Operation code.
    op: u8,
    /// Service action (4:0).
    service_action: u8,
    /// RCTD (bit 7), reporting options (2:0).
    options: u8,
    /// Requested operation code.
    opcode: u8,
    /// Requested service action.
    requested_sa: U16,
    /// Allocation length.
    alloc_len: U32,
    /// Reserved.
    reserved: u8,
    /// Control.
    control: u8,
});
wire!(
    /// Fixed-format sense data.
    FixedSense, 18, {
    /// VALID (bit 7), response code 0x70.
    response_code: u8,
    /// Obsolete.
    obsolete: u8,
    /// FILEMARK, EOM, ILI, SDAT_OVFL, sense key (3:0).
    key: u8,
    /// Information.
    information: U32,
    /// Additional sense length (10).
    additional_len: u8,
    /// Command-specific information.
    command_specific: U32,
    /// Additional sense code.
    asc: u8,
    /// Additional sense code qualifier.
    ascq: u8,
    /// Field replaceable unit code.
    fru: u8,
    /// Sense-key specific (SKSV in bit 7 of the first byte).
    key_specific: [u8; 3],
});
wire!(
    /// Descriptor-format sense data header.
    DescriptorSenseHeader, 8, {
    /// Response code 0x72.
    response_code: u8,
    /// Sense key (3:0).
    key: u8,
    /// Additional sense code.
    asc: u8,
    /// Additional sense code qualifier.
    ascq: u8,
    /// SDAT_OVFL (bit 7).
    flags: u8,
    /// Reserved.
    reserved: [u8; 2],
    /// Bytes of descriptors that follow.
    additional_len: u8,
});
wire!(
    /// Information sense-data descriptor (type 0).
    InformationDescriptor, 12, {
    /// Descriptor type (0).
    kind: u8,
    /// Additional length (0x0A).
    len: u8,
    /// VALID (bit 7).
    valid: u8,
    /// Reserved.
    reserved: u8,
    /// Information.
    information: U64,
});
wire!(
    /// VPD page header.
    VpdHeader, 4, {
    /// Peripheral qualifier and device type.
    device_type: u8,
    /// Page code.
    page: u8,
    /// Page length (bytes after this header).
    len: U16,
});
wire!(
    /// Designation descriptor header (VPD 0x83).
    DesignatorHeader, 4, {
    /// Protocol identifier (7:4), code set (3:0).
    code_set: u8,
    /// PIV (7), association (5:4), designator type (3:0).
    kind: u8,
    /// Reserved.
    reserved: u8,
    /// Designator length.
    len: u8,
});
wire!(
    /// Block limits VPD page (0xB0), including its header.
    BlockLimitsPage, 64, {
    /// Page header.
    header: VpdHeader,
    /// WSNZ (bit 0).
    wsnz: u8,
    /// Maximum COMPARE AND WRITE length (blocks).
    max_compare_write: u8,
    /// Optimal transfer length granularity.
    opt_granularity: U16,
    /// Maximum transfer length (blocks).
    max_transfer: U32,
    /// Optimal transfer length (blocks).
    opt_transfer: U32,
    /// Maximum prefetch length.
    max_prefetch: U32,
    /// Maximum unmap LBA count.
    max_unmap_lba_count: U32,
    /// Maximum unmap block descriptor count.
    max_unmap_descriptors: U32,
    /// Optimal unmap granularity.
    opt_unmap_granularity: U32,
    /// UGAVALID (bit 31), unmap granularity alignment.
    unmap_alignment: U32,
    /// Maximum WRITE SAME length (blocks).
    max_write_same: U64,
    /// Maximum atomic transfer length.
    max_atomic: U32,
    /// Atomic alignment.
    atomic_alignment: U32,
    /// Atomic transfer length granularity.
    atomic_granularity: U32,
    /// Maximum atomic transfer length with atomic boundary.
    max_atomic_boundary: U32,
    /// Maximum atomic boundary size.
    max_boundary: U32,
});
wire!(
    /// Block device characteristics VPD page (0xB1), including its header.
    BlockCharacteristicsPage, 64, {
    /// Page header.
    header: VpdHeader,
    /// Medium rotation rate (1 = non-rotating).
    rotation_rate: U16,
    /// Product type.
    product_type: u8,
    /// WABEREQ, WACEREQ, nominal form factor.
    form_factor: u8,
    /// FUAB (bit 1), VBULS (bit 0).
    flags: u8,
    /// Reserved.
    reserved: [u8; 32],
    /// Reserved.
    reserved2: [u8; 23],
});
wire!(
    /// Logical block provisioning VPD page (0xB2), including its header.
    ProvisioningPage, 8, {
    /// Page header.
    header: VpdHeader,
    /// Threshold exponent.
    threshold_exponent: u8,
    /// LBPU (7), LBPWS (6), LBPWS10 (5), LBPRZ (4:2), ANC_SUP (1), DP (0).
    flags: u8,
    /// Minimum percentage (7:3), provisioning type (2:0).
    provisioning_type: u8,
    /// Threshold percentage.
    threshold_percentage: u8,
});
wire!(
    /// Microsoft paging extent properties VPD page (0xCE), including its
    /// header. A Windows-defined page (Hyper-V virtual disks report it);
    /// the layout is Windows' `VPD_MSFT_PAGING_EXTENT_PROPERTIES`.
    MsftPagingExtentPage, 8, {
    /// Page header (page length 4).
    header: VpdHeader,
    /// Page version ([`MSFT_PAGE_VERSION`]).
    version: u8,
    /// MODE SELECT extension supported (bit 0, [`MSFT_MODE_SELECT_EXTENSION`]).
    flags: u8,
    /// Reserved.
    reserved: [u8; 2],
});
wire!(
    /// Microsoft virtual device properties VPD page (0xCF), including its
    /// header: tells a Windows guest the disk is virtual (the signature
    /// identifies the page's format).
    MsftVirtualDevicePage, 24, {
    /// Page header (page length 20).
    header: VpdHeader,
    /// Page version ([`MSFT_PAGE_VERSION`]).
    version: u8,
    /// LBPRZ (bit 0), DisableIoRetries (bit 1, version 2), Spaces (bit 2,
    /// version 2); the rest reserved.
    flags: u8,
    /// Reserved.
    reserved: [u8; 2],
    /// [`MSFT_VIRTUAL_DEVICE_SIGNATURE`].
    signature: [u8; 16],
});

/// Version of the Microsoft VPD pages 0xCE and 0xCF that parastor reports:
/// 1, the version Hyper-V keeps so that older Windows guests accept them.
pub const MSFT_PAGE_VERSION: u8 = 1;
/// [`MsftPagingExtentPage::flags`]: MODE SELECT extension supported.
pub const MSFT_MODE_SELECT_EXTENSION: u8 = 0x01;
/// The signature GUID of [`MsftVirtualDevicePage`],
/// 89a98f15-c928-4d8b-94cd-ef51faa99d33, in Windows `GUID` byte order: the
/// first three fields little-endian, the last eight bytes as written.
pub const MSFT_VIRTUAL_DEVICE_SIGNATURE: [u8; 16] = [
    0x15, 0x8f, 0xa9, 0x89, 0x28, 0xc9, 0x8b, 0x4d, 0x94, 0xcd, 0xef, 0x51, 0xfa, 0xa9, 0x9d, 0x33,
];

/// Sense data in protocol-neutral form: key, ASC, ASCQ and an optional
/// INFORMATION field. Encode with [`SenseData::to_fixed`] or
/// [`SenseData::write_descriptor`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenseData {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field (for MISCOMPARE: offset of the first differing
    /// byte), if valid.
    pub information: Option<u64>,
}

/// Bytes of descriptor-format sense data that [`SenseData::write_descriptor`]
/// produces at most.
pub const DESCRIPTOR_SENSE_MAX: usize = 20;

impl SenseData {
    /// Sense with `key`/`asc`/`ascq` and no information.
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        SenseData {
            key,
            asc,
            ascq,
            information: None,
        }
    }

    /// ILLEGAL REQUEST with `asc`/`ascq`.
    pub const fn illegal(asc: u8, ascq: u8) -> Self {
        Self::new(sense_key::ILLEGAL_REQUEST, asc, ascq)
    }

    /// Fixed-format (0x70) encoding; the INFORMATION field is set (VALID)
    /// only if it fits in 32 bits.
    pub fn to_fixed(&self) -> FixedSense {
        let mut s = FixedSense {
            response_code: 0x70,
            key: self.key & 0xF,
            additional_len: 10,
            asc: self.asc,
            ascq: self.ascq,
            ..Default::default()
        };
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            s.response_code |= 0x80;
            s.information = info.into();
        }
        s
    }

    /// Writes descriptor-format (0x72) sense into `buf` (with an
    /// information descriptor if there is information) and returns the
    /// bytes written, truncated to `buf`.
    pub fn write_descriptor(&self, buf: &mut [u8]) -> usize {
        let mut out = [0u8; DESCRIPTOR_SENSE_MAX];
        let mut hdr = DescriptorSenseHeader {
            response_code: 0x72,
            key: self.key & 0xF,
            asc: self.asc,
            ascq: self.ascq,
            ..Default::default()
        };
        let mut len = 8;
        if let Some(info) = self.information {
            hdr.additional_len = 12;
            let d = InformationDescriptor {
                kind: 0,
                len: 0x0A,
                valid: 0x80,
                reserved: 0,
                information: info.into(),
            };
            out[8..20].copy_from_slice(d.as_bytes());
            len = 20;
        }
        out[..8].copy_from_slice(hdr.as_bytes());
        let n = len.min(buf.len());
        buf[..n].copy_from_slice(&out[..n]);
        n
    }

    /// Decodes fixed (0x70/0x71) or descriptor (0x72/0x73) sense; `None`
    /// if `buf` is too short or has another response code.
    pub fn parse(buf: &[u8]) -> Option<SenseData> {
        match buf.first()? & 0x7F {
            0x70 | 0x71 => {
                let (s, _) = FixedSense::read_from_prefix(buf).ok()?;
                Some(SenseData {
                    key: s.key & 0xF,
                    asc: s.asc,
                    ascq: s.ascq,
                    information: (s.response_code & 0x80 != 0)
                        .then(|| u64::from(s.information.get())),
                })
            }
            0x72 | 0x73 => {
                let (h, rest) = DescriptorSenseHeader::read_from_prefix(buf).ok()?;
                let information = InformationDescriptor::read_from_prefix(rest)
                    .ok()
                    .filter(|(d, _)| d.kind == 0 && d.valid & 0x80 != 0)
                    .map(|(d, _)| d.information.get());
                Some(SenseData {
                    key: h.key & 0xF,
                    asc: h.asc,
                    ascq: h.ascq,
                    information,
                })
            }
            _ => None,
        }
    }
}

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
            CdbError::InvalidOpcode => SenseData::illegal(asc::INVALID_COMMAND, 0),
            CdbError::TooShort | CdbError::InvalidField => {
                SenseData::illegal(asc::INVALID_FIELD_IN_CDB, 0)
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
        /// Page code.
        page: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// MODE SENSE(6) / (10).
    ModeSense {
        /// Page control.
        pc: u8,
        /// Page code.
        page: u8,
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
        service_action: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// PERSISTENT RESERVE OUT.
    PersistentReserveOut {
        /// Service action.
        service_action: u8,
        /// Scope.
        scope: u8,
        /// Type code.
        kind: u8,
        /// Parameter list length.
        param_len: u32,
    },
    /// REPORT SUPPORTED OPERATION CODES.
    ReportSupportedOpcodes {
        /// RCTD bit.
        rctd: bool,
        /// Reporting options.
        options: u8,
        /// Requested operation code.
        opcode: u8,
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
    NoOp(u8),
}

/// The CDB length an operation code's group implies (SPC-5 4.2.5.1);
/// `None` for the reserved and vendor-specific groups.
pub const fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

fn read<T: FromBytes>(cdb: &[u8]) -> Result<T, CdbError> {
    T::read_from_prefix(cdb)
        .map(|(t, _)| t)
        .map_err(|_| CdbError::TooShort)
}

fn rw(cdb: &[u8]) -> Result<Transfer, CdbError> {
    let op = cdb.first().copied().ok_or(CdbError::TooShort)?;
    Ok(match cdb_len(op) {
        Some(6) => {
            let c: Cdb6Rw = read(cdb)?;
            let blocks = if c.len == 0 { 256 } else { u32::from(c.len) };
            Transfer {
                lba: (u64::from(c.lba_hi & 0x1F) << 16) | u64::from(c.lba.get()),
                blocks,
                fua: false,
            }
        }
        Some(10) => {
            let c: Cdb10 = read(cdb)?;
            Transfer {
                lba: c.lba.get().into(),
                blocks: c.len.get().into(),
                fua: c.flags & 0x08 != 0,
            }
        }
        Some(12) => {
            let c: Cdb12 = read(cdb)?;
            Transfer {
                lba: c.lba.get().into(),
                blocks: c.len.get(),
                fua: c.flags & 0x08 != 0,
            }
        }
        _ => {
            let c: Cdb16 = read(cdb)?;
            Transfer {
                lba: c.lba.get(),
                blocks: c.len.get(),
                fua: c.flags & 0x08 != 0,
            }
        }
    })
}

/// Parses a CDB. `cdb` may be longer than the command (transports pad to
/// 16 bytes); never panics.
pub fn parse_cdb(cdb: &[u8]) -> Result<Command, CdbError> {
    let op0 = *cdb.first().ok_or(CdbError::TooShort)?;
    let len = cdb_len(op0).ok_or(CdbError::InvalidOpcode)?;
    if cdb.len() < len {
        return Err(CdbError::TooShort);
    }
    let cdb = &cdb[..len];
    let b = |i: usize| cdb[i];
    let cmd = match op0 {
        op::TEST_UNIT_READY => Command::TestUnitReady,
        op::REQUEST_SENSE => Command::RequestSense {
            desc: b(1) & 1 != 0,
            alloc_len: b(4),
        },
        op::INQUIRY => {
            let c: InquiryCdb = read(cdb)?;
            if c.flags & 0x02 != 0 || (c.flags & 1 == 0 && c.page != 0) {
                return Err(CdbError::InvalidField);
            }
            Command::Inquiry {
                evpd: c.flags & 1 != 0,
                page: c.page,
                alloc_len: c.alloc_len.get(),
            }
        }
        op::MODE_SENSE6 => {
            let c: ModeSense6Cdb = read(cdb)?;
            Command::ModeSense {
                pc: c.page >> 6,
                page: c.page & 0x3F,
                subpage: c.subpage,
                alloc_len: c.alloc_len.into(),
                long: false,
            }
        }
        op::MODE_SENSE10 => {
            let c: ModeSense10Cdb = read(cdb)?;
            Command::ModeSense {
                pc: c.page >> 6,
                page: c.page & 0x3F,
                subpage: c.subpage,
                alloc_len: c.alloc_len.get(),
                long: true,
            }
        }
        op::MODE_SELECT6 => {
            let c: ModeSelect6Cdb = read(cdb)?;
            Command::ModeSelect {
                pf: c.flags & 0x10 != 0,
                sp: c.flags & 1 != 0,
                param_len: c.param_len.into(),
                long: false,
            }
        }
        op::MODE_SELECT10 => {
            let c: ModeSelect10Cdb = read(cdb)?;
            Command::ModeSelect {
                pf: c.flags & 0x10 != 0,
                sp: c.flags & 1 != 0,
                param_len: c.param_len.get(),
                long: true,
            }
        }
        op::READ_CAPACITY10 => Command::ReadCapacity10,
        op::SERVICE_ACTION_IN16 => {
            let c: ServiceActionIn16Cdb = read(cdb)?;
            match c.service_action & 0x1F {
                op::SA_READ_CAPACITY16 => Command::ReadCapacity16 {
                    alloc_len: c.alloc_len.get(),
                },
                op::SA_GET_LBA_STATUS => Command::GetLbaStatus {
                    lba: c.lba.get(),
                    alloc_len: c.alloc_len.get(),
                },
                _ => return Err(CdbError::InvalidField),
            }
        }
        op::READ6 | op::WRITE6 => {
            let t = rw(cdb)?;
            if op0 == op::READ6 {
                Command::Read(t)
            } else {
                Command::Write(t)
            }
        }
        op::READ10 | op::READ12 | op::READ16 => {
            no_protect(cdb)?;
            if b(1) & 0x01 != 0 {
                // Obsolete RelAdr.
                return Err(CdbError::InvalidField);
            }
            Command::Read(rw(cdb)?)
        }
        op::WRITE10 | op::WRITE12 | op::WRITE16 => {
            no_protect(cdb)?;
            if b(1) & 0x01 != 0 {
                return Err(CdbError::InvalidField);
            }
            Command::Write(rw(cdb)?)
        }
        op::VERIFY10 | op::VERIFY12 | op::VERIFY16 => {
            no_protect(cdb)?;
            let bytchk = (b(1) >> 1) & 3;
            if bytchk == 2 || b(1) & 1 != 0 {
                return Err(CdbError::InvalidField);
            }
            let mut range = rw(cdb)?;
            range.fua = false;
            Command::Verify { range, bytchk }
        }
        op::WRITE_VERIFY10 | op::WRITE_VERIFY12 | op::WRITE_VERIFY16 => {
            no_protect(cdb)?;
            let bytchk = (b(1) >> 1) & 3;
            if bytchk > 1 || b(1) & 1 != 0 {
                return Err(CdbError::InvalidField);
            }
            let mut range = rw(cdb)?;
            range.fua = false;
            Command::WriteAndVerify { range, bytchk }
        }
        op::WRITE_SAME10 | op::WRITE_SAME16 => {
            no_protect(cdb)?;
            let flags = b(1);
            // PBDATA / LBDATA (bits 2:1) are not supported.
            if flags & 0x06 != 0 {
                return Err(CdbError::InvalidField);
            }
            let mut range = rw(cdb)?;
            range.fua = false;
            Command::WriteSame {
                range,
                unmap: flags & 0x08 != 0,
                anchor: flags & 0x10 != 0,
                ndob: op0 == op::WRITE_SAME16 && flags & 0x01 != 0,
            }
        }
        op::UNMAP => {
            let c: UnmapCdb = read(cdb)?;
            Command::Unmap {
                anchor: c.flags & 1 != 0,
                param_len: c.param_len.get(),
            }
        }
        op::SYNCHRONIZE_CACHE10 | op::SYNCHRONIZE_CACHE16 => {
            let immed = b(1) & 0x02 != 0;
            let mut range = rw(cdb)?;
            range.fua = false;
            Command::SynchronizeCache { range, immed }
        }
        op::COMPARE_AND_WRITE => {
            no_protect(cdb)?;
            let c: CompareAndWriteCdb = read(cdb)?;
            Command::CompareAndWrite(Transfer {
                lba: c.lba.get(),
                blocks: c.blocks.into(),
                fua: c.flags & 0x08 != 0,
            })
        }
        op::START_STOP_UNIT => {
            let c: StartStopCdb = read(cdb)?;
            Command::StartStopUnit {
                immed: c.immed & 1 != 0,
                power_condition: c.flags >> 4,
                loej: c.flags & 0x02 != 0,
                start: c.flags & 0x01 != 0,
            }
        }
        op::PERSISTENT_RESERVE_IN => {
            let c: PrInCdb = read(cdb)?;
            Command::PersistentReserveIn {
                service_action: c.service_action & 0x1F,
                alloc_len: c.alloc_len.get(),
            }
        }
        op::PERSISTENT_RESERVE_OUT => {
            let c: PrOutCdb = read(cdb)?;
            Command::PersistentReserveOut {
                service_action: c.service_action & 0x1F,
                scope: c.scope_type >> 4,
                kind: c.scope_type & 0xF,
                param_len: c.param_len.get(),
            }
        }
        op::MAINTENANCE_IN => {
            let c: ReportOpcodesCdb = read(cdb)?;
            if c.service_action & 0x1F != op::SA_REPORT_SUPPORTED_OPCODES {
                return Err(CdbError::InvalidField);
            }
            Command::ReportSupportedOpcodes {
                rctd: c.options & 0x80 != 0,
                options: c.options & 0x07,
                opcode: c.opcode,
                service_action: c.requested_sa.get(),
                alloc_len: c.alloc_len.get(),
            }
        }
        op::SEND_DIAGNOSTIC => Command::SendDiagnostic {
            code: b(1) >> 5,
            pf: b(1) & 0x10 != 0,
            selftest: b(1) & 0x04 != 0,
            param_len: u16::from_be_bytes([b(3), b(4)]),
        },
        op::FORMAT_UNIT | op::RESERVE6 | op::RELEASE6 | op::PREVENT_ALLOW_MEDIUM_REMOVAL => {
            Command::NoOp(op0)
        }
        _ => return Err(CdbError::InvalidOpcode),
    };
    // NACA (control byte bit 2) asks for auto contingent allegiance, which
    // is not supported (SAM-5 5.9.1.1: the command is refused).
    if cdb[len - 1] & CONTROL_NACA != 0 {
        return Err(CdbError::InvalidField);
    }
    Ok(cmd)
}

/// Control byte: NACA.
pub const CONTROL_NACA: u8 = 0x04;

/// Refuses a nonzero RDPROTECT / WRPROTECT / VRPROTECT field (byte 1 bits
/// 7:5): the device has no protection information (INQUIRY PROTECT = 0),
/// so SBC-4 asks for INVALID FIELD IN CDB.
fn no_protect(cdb: &[u8]) -> Result<(), CdbError> {
    match cdb.get(1) {
        Some(b) if b & 0xE0 != 0 => Err(CdbError::InvalidField),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read6_zero_is_256() {
        let c = parse_cdb(&[op::READ6, 0x1F, 0xFF, 0xFF, 0, 0]).unwrap();
        assert_eq!(
            c,
            Command::Read(Transfer {
                lba: 0x1F_FFFF,
                blocks: 256,
                fua: false
            })
        );
    }

    #[test]
    fn write16_fua() {
        let mut cdb = [0u8; 16];
        cdb[0] = op::WRITE16;
        cdb[1] = 0x08;
        cdb[2..10].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        cdb[10..14].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            parse_cdb(&cdb).unwrap(),
            Command::Write(Transfer {
                lba: 0x0102_0304_0506_0708,
                blocks: 9,
                fua: true
            })
        );
    }

    #[test]
    fn short_and_unknown() {
        assert_eq!(parse_cdb(&[]), Err(CdbError::TooShort));
        assert_eq!(parse_cdb(&[op::READ10, 0, 0]), Err(CdbError::TooShort));
        assert_eq!(parse_cdb(&[0xFF; 16]), Err(CdbError::InvalidOpcode));
        assert_eq!(
            parse_cdb(&[0x02, 0, 0, 0, 0, 0]),
            Err(CdbError::InvalidOpcode)
        );
    }

    #[test]
    fn field_decoding() {
        assert_eq!(cdb_len(op::READ6), Some(6));
        assert_eq!(cdb_len(op::READ10), Some(10));
        assert_eq!(cdb_len(op::READ12), Some(12));
        assert_eq!(cdb_len(op::READ16), Some(16));
        assert_eq!(cdb_len(0xC0), None);
        let mut ws = [0u8; 16];
        ws[0] = op::WRITE_SAME16;
        ws[1] = 0x19;
        ws[13] = 4;
        assert_eq!(
            parse_cdb(&ws),
            Ok(Command::WriteSame {
                range: Transfer {
                    lba: 0,
                    blocks: 4,
                    fua: false
                },
                unmap: true,
                anchor: true,
                ndob: true
            })
        );
        let v = [op::VERIFY10, 0x06, 0, 0, 0, 9, 0, 0, 2, 0];
        assert!(matches!(
            parse_cdb(&v),
            Ok(Command::Verify { bytchk: 3, range }) if range.lba == 9 && range.blocks == 2
        ));
        let pr = [op::PERSISTENT_RESERVE_OUT, 0x01, 0x03, 0, 0, 0, 0, 0, 24, 0];
        assert_eq!(
            parse_cdb(&pr),
            Ok(Command::PersistentReserveOut {
                service_action: 1,
                scope: 0,
                kind: 3,
                param_len: 24
            })
        );
        let caw = [
            op::COMPARE_AND_WRITE,
            0x08,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            7,
            0,
            0,
            0,
            1,
            0,
            0,
        ];
        assert_eq!(
            parse_cdb(&caw),
            Ok(Command::CompareAndWrite(Transfer {
                lba: 7,
                blocks: 1,
                fua: true
            }))
        );
        let mut sai = [0u8; 16];
        sai[0] = op::SERVICE_ACTION_IN16;
        sai[1] = 0x11;
        assert_eq!(parse_cdb(&sai), Err(CdbError::InvalidField));
        assert_eq!(
            parse_cdb(&[op::WRITE_VERIFY10, 0x06, 0, 0, 0, 0, 0, 0, 1, 0]),
            Err(CdbError::InvalidField)
        );
        assert_eq!(CdbError::InvalidOpcode.sense(), SenseData::illegal(0x20, 0));
    }

    #[test]
    fn sense_round_trip() {
        let s = SenseData {
            key: sense_key::MISCOMPARE,
            asc: asc::MISCOMPARE_DURING_VERIFY,
            ascq: 0,
            information: Some(513),
        };
        let f = s.to_fixed();
        assert_eq!(f.as_bytes()[0], 0xF0);
        assert_eq!(SenseData::parse(f.as_bytes()), Some(s));
        let mut buf = [0u8; 32];
        let n = s.write_descriptor(&mut buf);
        assert_eq!(n, 20);
        assert_eq!(SenseData::parse(&buf[..n]), Some(s));
    }

    #[test]
    fn msft_signature_is_the_guid_in_windows_order() {
        // 89a98f15-c928-4d8b-94cd-ef51faa99d33: data1, data2, data3 stored
        // little-endian, data4 as written.
        let mut want = [0u8; 16];
        want[..4].copy_from_slice(&0x89a9_8f15u32.to_le_bytes());
        want[4..6].copy_from_slice(&0xc928u16.to_le_bytes());
        want[6..8].copy_from_slice(&0x4d8bu16.to_le_bytes());
        want[8..].copy_from_slice(&[0x94, 0xcd, 0xef, 0x51, 0xfa, 0xa9, 0x9d, 0x33]);
        assert_eq!(MSFT_VIRTUAL_DEVICE_SIGNATURE, want);
        let page = MsftVirtualDevicePage {
            signature: want,
            ..Default::default()
        };
        assert_eq!(&page.as_bytes()[8..], &want);
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
            let _ = SenseData::parse(&buf[..len]);
        }
    }
}

/// MMC-6 (multimedia commands: CD/DVD drives) operation codes, sense
/// codes, event and feature numbers, and response layouts.
pub mod mmc {
    use super::{FromBytes, Immutable, IntoBytes, KnownLayout, U16, U32, Unaligned, size_of};

    /// Peripheral device type of a CD/DVD device (SPC-5 table 141).
    pub const DEVICE_TYPE_CDROM: u8 = 0x05;
    /// The logical block size of CD/DVD data (MMC-6 4.1.3): 2048 bytes.
    pub const BLOCK_SIZE: u32 = 2048;

    /// MMC operation codes (the SPC/SBC ones shared with disks are in
    /// [`super::op`]).
    pub mod op {
        /// READ DISC INFORMATION.
        pub const READ_DISC_INFORMATION: u8 = 0x51;
        /// READ TRACK INFORMATION.
        pub const READ_TRACK_INFORMATION: u8 = 0x52;
        /// READ TOC/PMA/ATIP.
        pub const READ_TOC: u8 = 0x43;
        /// GET CONFIGURATION.
        pub const GET_CONFIGURATION: u8 = 0x46;
        /// GET EVENT STATUS NOTIFICATION.
        pub const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4A;
        /// READ BUFFER CAPACITY.
        pub const READ_BUFFER_CAPACITY: u8 = 0x5C;
        /// GET PERFORMANCE.
        pub const GET_PERFORMANCE: u8 = 0xAC;
        /// READ DISC STRUCTURE (READ DVD STRUCTURE).
        pub const READ_DVD_STRUCTURE: u8 = 0xAD;
        /// SET STREAMING.
        pub const SET_STREAMING: u8 = 0xB6;
        /// MECHANISM STATUS.
        pub const MECHANISM_STATUS: u8 = 0xBD;
    }

    /// MMC additional sense codes and qualifiers.
    pub mod asc {
        /// Not ready to ready change, medium may have changed (ASCQ 0).
        pub const NOT_READY_TO_READY_CHANGE: u8 = 0x28;
        /// Medium not present (ASCQ 1 tray closed, 2 tray open).
        pub const MEDIUM_NOT_PRESENT: u8 = 0x3A;
        /// ASCQ of [`MEDIUM_NOT_PRESENT`]: tray closed.
        pub const ASCQ_TRAY_CLOSED: u8 = 0x01;
        /// ASCQ of [`MEDIUM_NOT_PRESENT`]: tray open.
        pub const ASCQ_TRAY_OPEN: u8 = 0x02;
        /// Medium removal prevented (with ASCQ 2).
        pub const MEDIUM_REMOVAL: u8 = 0x53;
        /// ASCQ of [`MEDIUM_REMOVAL`]: medium removal prevented.
        pub const ASCQ_MEDIUM_REMOVAL_PREVENTED: u8 = 0x02;
    }

    /// GET EVENT STATUS NOTIFICATION classes and media event codes.
    pub mod event {
        /// Notification class field of the media class.
        pub const CLASS_MEDIA: u8 = 4;
        /// Notification class request / supported classes bit of the
        /// media class.
        pub const CLASS_MEDIA_BIT: u8 = 1 << CLASS_MEDIA;
        /// Header byte 2: no event available.
        pub const NEA: u8 = 0x80;
        /// Media event: no change.
        pub const MEDIA_NO_CHANGE: u8 = 0;
        /// Media event: eject request.
        pub const MEDIA_EJECT_REQUEST: u8 = 1;
        /// Media event: new media.
        pub const MEDIA_NEW_MEDIA: u8 = 2;
        /// Media event: media removal.
        pub const MEDIA_REMOVAL: u8 = 3;
        /// Media status: door or tray open.
        pub const STATUS_TRAY_OPEN: u8 = 0x01;
        /// Media status: media present.
        pub const STATUS_MEDIA_PRESENT: u8 = 0x02;
    }

    /// Feature numbers (GET CONFIGURATION).
    pub mod feature {
        /// Profile List.
        pub const PROFILE_LIST: u16 = 0x0000;
        /// Core.
        pub const CORE: u16 = 0x0001;
        /// Morphing.
        pub const MORPHING: u16 = 0x0002;
        /// Removable Medium.
        pub const REMOVABLE_MEDIUM: u16 = 0x0003;
        /// Random Readable.
        pub const RANDOM_READABLE: u16 = 0x0010;
        /// DVD Read.
        pub const DVD_READ: u16 = 0x001F;
        /// Feature descriptor byte 2: current.
        pub const CURRENT: u8 = 0x01;
        /// Feature descriptor byte 2: persistent.
        pub const PERSISTENT: u8 = 0x02;
    }

    /// Profile numbers (GET CONFIGURATION).
    pub mod profile {
        /// No current profile (no medium).
        pub const NONE: u16 = 0x0000;
        /// CD-ROM.
        pub const CD_ROM: u16 = 0x0008;
        /// DVD-ROM.
        pub const DVD_ROM: u16 = 0x0010;
    }

    /// MMC mode page codes.
    pub mod mode {
        /// Read/write error recovery parameters.
        pub const ERROR_RECOVERY_PAGE: u8 = 0x01;
        /// Power condition.
        pub const POWER_CONDITION_PAGE: u8 = 0x1A;
        /// Time-out and protect (CD/DVD inactivity).
        pub const TIMEOUT_PROTECT_PAGE: u8 = 0x1D;
    }

    wire!(
        /// GET EVENT STATUS NOTIFICATION response header.
        GesnHeader, 4, {
        /// Bytes that follow this field.
        event_data_len: U16,
        /// NEA (bit 7), notification class (bits 2:0).
        class: u8,
        /// Supported event classes.
        supported: u8,
    });
    wire!(
        /// Media class event descriptor.
        MediaEvent, 4, {
        /// Media event code (bits 3:0).
        code: u8,
        /// Media present (bit 1), door/tray open (bit 0).
        status: u8,
        /// Start slot.
        start_slot: u8,
        /// End slot.
        end_slot: u8,
    });
    wire!(
        /// GET CONFIGURATION response header.
        FeatureHeader, 8, {
        /// Bytes that follow this field.
        data_len: U32,
        /// Reserved.
        reserved: U16,
        /// Current profile.
        current_profile: U16,
    });
    wire!(
        /// Feature descriptor header.
        FeatureDescriptor, 4, {
        /// Feature code.
        code: U16,
        /// Version (bits 5:2), persistent (bit 1), current (bit 0).
        flags: u8,
        /// Bytes that follow this header.
        additional_len: u8,
    });
    wire!(
        /// READ TOC response header.
        TocHeader, 4, {
        /// Bytes that follow this field.
        data_len: U16,
        /// First track (format 0) or session (format 1).
        first: u8,
        /// Last track (format 0) or session (format 1).
        last: u8,
    });
    wire!(
        /// READ TOC track descriptor.
        TocDescriptor, 8, {
        /// Reserved.
        reserved: u8,
        /// ADR (bits 7:4), CONTROL (bits 3:0).
        adr_control: u8,
        /// Track number (0xAA: lead-out).
        track: u8,
        /// Reserved.
        reserved2: u8,
        /// Start address, LBA or MSF (0, M, S, F).
        address: [u8; 4],
    });
    wire!(
        /// Standard disc information (READ DISC INFORMATION, type 0).
        DiscInformation, 34, {
        /// Bytes that follow this field.
        data_len: U16,
        /// Erasable (bit 4), last session state (3:2), disc status (1:0).
        status: u8,
        /// First track on disc.
        first_track: u8,
        /// Number of sessions, LSB.
        sessions_lsb: u8,
        /// First track in last session, LSB.
        first_track_last_session_lsb: u8,
        /// Last track in last session, LSB.
        last_track_last_session_lsb: u8,
        /// DID_V, DBC_V, URU, DAC_V, BG format status.
        flags: u8,
        /// Disc type.
        disc_type: u8,
        /// Number of sessions, MSB.
        sessions_msb: u8,
        /// First track in last session, MSB.
        first_track_last_session_msb: u8,
        /// Last track in last session, MSB.
        last_track_last_session_msb: u8,
        /// Disc identification.
        disc_id: U32,
        /// Last session lead-in start address.
        last_lead_in: U32,
        /// Last possible lead-out start address.
        last_lead_out: U32,
        /// Disc bar code.
        bar_code: [u8; 8],
        /// Disc application code.
        application_code: u8,
        /// Number of OPC tables.
        opc_tables: u8,
    });
    wire!(
        /// Track information (READ TRACK INFORMATION).
        TrackInformation, 48, {
        /// Bytes that follow this field.
        data_len: U16,
        /// Track number, LSB.
        track_lsb: u8,
        /// Session number, LSB.
        session_lsb: u8,
        /// Reserved.
        reserved: u8,
        /// LJRS, damage, copy, track mode.
        track_mode: u8,
        /// RT, blank, packet, FP, data mode.
        data_mode: u8,
        /// LRA_V, NWA_V.
        valid: u8,
        /// Track start address.
        start: U32,
        /// Next writable address.
        next_writable: U32,
        /// Free blocks.
        free_blocks: U32,
        /// Fixed packet size / blocking factor.
        packet_size: U32,
        /// Track size.
        size: U32,
        /// Last recorded address.
        last_recorded: U32,
        /// Track number, MSB.
        track_msb: u8,
        /// Session number, MSB.
        session_msb: u8,
        /// Reserved.
        reserved2: U16,
        /// Read compatibility LBA.
        read_compat_lba: U32,
        /// Next layer jump address.
        next_layer_jump: U32,
        /// Last layer jump address.
        last_layer_jump: U32,
    });
    wire!(
        /// MECHANISM STATUS header.
        MechanismStatusHeader, 8, {
        /// Fault (7), changer state (6:5), current slot (4:0).
        changer: u8,
        /// Mechanism state (7:5), door open (4).
        mechanism: u8,
        /// Current LBA (obsolete).
        current_lba: [u8; 3],
        /// Number of slots available.
        slots: u8,
        /// Length of slot tables.
        slot_table_len: U16,
    });
    wire!(
        /// GET PERFORMANCE header.
        PerformanceHeader, 8, {
        /// Bytes that follow this field.
        data_len: U32,
        /// Write (bit 1), Except (bit 0).
        flags: u8,
        /// Reserved.
        reserved: [u8; 3],
    });
    wire!(
        /// GET PERFORMANCE nominal performance descriptor.
        PerformanceDescriptor, 16, {
        /// Start LBA.
        start_lba: U32,
        /// Start performance, kB/s.
        start_performance: U32,
        /// End LBA.
        end_lba: U32,
        /// End performance, kB/s.
        end_performance: U32,
    });
    wire!(
        /// A 12-byte mode page (0x01, 0x1A, 0x1D): code, length 0x0A,
        /// ten parameter bytes.
        ModePage12, 12, {
        /// PS (bit 7), SPF (bit 6), page code.
        page: u8,
        /// Page length (0x0A).
        len: u8,
        /// Parameters.
        body: [u8; 10],
    });
}
