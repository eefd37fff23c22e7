//! Submission and completion queue entries (NVMe Base 2.0 §4.2, §4.6).

use bitfield_struct::bitfield;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::open_enum::open_enum;

use super::status::{StatusCodeType, StatusWord};

/// The size of a submission queue entry, in bytes (CC.IOSQES = 6).
pub const SQE_LEN: usize = 64;
/// The size of a completion queue entry, in bytes (CC.IOCQES = 4).
pub const CQE_LEN: usize = 16;

open_enum! {
    /// CDW0.FUSE: fused operation.
    pub struct FusedOperation(u8) {
        /// Normal operation.
        NORMAL = 0b00,
        /// First command of a fused operation.
        FIRST = 0b01,
        /// Second command of a fused operation.
        SECOND = 0b10,
        /// Reserved.
        RESERVED = 0b11,
    }
}

open_enum! {
    /// CDW0.PSDT: how the data pointer describes the data.
    pub struct DataTransferKind(u8) {
        /// PRP1 and PRP2.
        PRP = 0b00,
        /// SGL; MPTR is the address of a contiguous metadata buffer.
        SGL_METADATA_BUFFER = 0b01,
        /// SGL; MPTR is the address of an SGL segment.
        SGL_METADATA_SEGMENT = 0b10,
        /// Reserved.
        RESERVED = 0b11,
    }
}

/// Command Dword 0, common to every command.
#[bitfield(u32, repr = U32, from = U32::new, into = U32::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Cdw0 {
    /// Opcode (admin or I/O; see [`super::command`]).
    pub opc: u8,
    /// Fused Operation.
    #[bits(2)]
    pub fuse: FusedOperation,
    /// Reserved.
    #[bits(4)]
    pub reserved: u8,
    /// PRP or SGL for Data Transfer.
    #[bits(2)]
    pub psdt: DataTransferKind,
    /// Command Identifier.
    pub cid: u16,
}

wire_layout! {
    /// A submission queue entry: the common command format. CDW2/CDW3 and
    /// CDW10–CDW15 are command specific (see [`super::command`] for their
    /// bitfields); `dptr` holds PRP1 and PRP2, or SGL1 (see
    /// [`Sqe::prp1`], [`Sqe::prp2`], [`Sqe::sgl1`]).
    pub struct Sqe {
        /// Command Dword 0.
        pub cdw0: Cdw0,
        /// Namespace Identifier.
        pub nsid: U32,
        /// Command Dword 2 (command specific).
        pub cdw2: U32,
        /// Command Dword 3 (command specific).
        pub cdw3: U32,
        /// Metadata Pointer.
        pub mptr: U64,
        /// Data Pointer: PRP1 then PRP2, or one 16-byte SGL descriptor.
        pub dptr: [u8; 16],
        /// Command Dword 10.
        pub cdw10: U32,
        /// Command Dword 11.
        pub cdw11: U32,
        /// Command Dword 12.
        pub cdw12: U32,
        /// Command Dword 13.
        pub cdw13: U32,
        /// Command Dword 14.
        pub cdw14: U32,
        /// Command Dword 15.
        pub cdw15: U32,
    }
    size 64
}

impl Sqe {
    /// PRP Entry 1 (the first 8 bytes of the data pointer).
    pub fn prp1(&self) -> u64 {
        u64::from_le_bytes(first_half(&self.dptr))
    }

    /// PRP Entry 2 (the last 8 bytes of the data pointer).
    pub fn prp2(&self) -> u64 {
        u64::from_le_bytes(second_half(&self.dptr))
    }

    /// Sets PRP1 and PRP2.
    pub fn set_prps(&mut self, prp1: u64, prp2: u64) {
        let mut dptr = [0; 16];
        dptr[..8].copy_from_slice(&prp1.to_le_bytes());
        dptr[8..].copy_from_slice(&prp2.to_le_bytes());
        self.dptr = dptr;
    }

    /// The data pointer as SGL Entry 1 (raw 16-byte descriptor).
    pub fn sgl1(&self) -> [u8; 16] {
        self.dptr
    }

    /// CDW10 and CDW11 as one 64-bit value (e.g. a Starting LBA).
    pub fn cdw10_11(&self) -> u64 {
        u64::from(self.cdw10.get()) | u64::from(self.cdw11.get()) << 32
    }
}

fn first_half(b: &[u8; 16]) -> [u8; 8] {
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

fn second_half(b: &[u8; 16]) -> [u8; 8] {
    [b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]
}

wire_layout! {
    /// A completion queue entry.
    pub struct Cqe {
        /// Dword 0: command specific.
        pub dw0: U32,
        /// Dword 1: command specific (mostly reserved).
        pub dw1: U32,
        /// SQ Head Pointer: where the controller has consumed the SQ to.
        pub sqhd: U16,
        /// SQ Identifier the command came from.
        pub sqid: U16,
        /// Command Identifier of the completed command.
        pub cid: U16,
        /// Phase tag and status.
        pub status: CqeStatus,
    }
    size 16
}

/// The last word of a completion queue entry: the phase tag and the
/// status field.
#[bitfield(u16, repr = U16, from = U16::new, into = U16::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct CqeStatus {
    /// Phase Tag: flips each pass the controller makes through the queue.
    pub p: bool,
    /// Status Code (meaning depends on [`Self::sct`]).
    pub sc: u8,
    /// Status Code Type.
    #[bits(3)]
    pub sct: StatusCodeType,
    /// Command Retry Delay: which CRDT of Identify Controller to wait.
    #[bits(2)]
    pub crd: u8,
    /// More: more status is in the error information log page.
    pub m: bool,
    /// Do Not Retry.
    pub dnr: bool,
}

impl CqeStatus {
    /// The status field without the phase tag.
    pub const fn status(self) -> StatusWord {
        StatusWord::from_bits(self.into_bits().get() >> 1)
    }

    /// This status with its status field (everything but the phase tag)
    /// replaced by `status`.
    pub const fn with_status(self, status: StatusWord) -> Self {
        Self::from_bits(U16::new(
            (self.into_bits().get() & 1) | (status.into_bits() << 1),
        ))
    }

    /// Whether the command succeeded (SCT generic, SC success).
    pub const fn is_success(self) -> bool {
        self.into_bits().get() >> 1 == 0
    }
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use zerocopy::FromBytes;

    use super::*;
    use crate::nvme::status::{GenericStatus, StatusCodeType};

    #[test]
    fn sqe_offsets_match_the_spec() {
        assert_eq!(offset_of!(Sqe, nsid), 4);
        assert_eq!(offset_of!(Sqe, mptr), 16);
        assert_eq!(offset_of!(Sqe, dptr), 24);
        assert_eq!(offset_of!(Sqe, cdw10), 40);
        assert_eq!(offset_of!(Sqe, cdw15), 60);
        assert_eq!(core::mem::size_of::<Sqe>(), SQE_LEN);
    }

    #[test]
    fn sqe_decodes_cdw0_and_prps() {
        let mut bytes = [0u8; 64];
        bytes[0] = 0x02; // Read
        bytes[1] = 0x40; // PSDT = 01b
        bytes[2..4].copy_from_slice(&0x1234u16.to_le_bytes());
        bytes[24..32].copy_from_slice(&0x1000u64.to_le_bytes());
        bytes[32..40].copy_from_slice(&0x2000u64.to_le_bytes());
        bytes[40..44].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        bytes[44..48].copy_from_slice(&0x1u32.to_le_bytes());
        let sqe = Sqe::read_from_bytes(&bytes).unwrap();
        assert_eq!(sqe.cdw0.opc(), 0x02);
        assert_eq!(sqe.cdw0.psdt(), DataTransferKind::SGL_METADATA_BUFFER);
        assert_eq!(sqe.cdw0.cid(), 0x1234);
        assert_eq!(sqe.prp1(), 0x1000);
        assert_eq!(sqe.prp2(), 0x2000);
        assert_eq!(sqe.cdw10_11(), 0x1_DEAD_BEEF);
        let mut built = Sqe::default();
        built.set_prps(0x1000, 0x2000);
        assert_eq!(built.dptr, sqe.dptr);
        assert!(Sqe::read_from_bytes(&bytes[..63]).is_err());
    }

    #[test]
    fn cqe_offsets_and_status_bits() {
        assert_eq!(offset_of!(Cqe, sqhd), 8);
        assert_eq!(offset_of!(Cqe, sqid), 10);
        assert_eq!(offset_of!(Cqe, cid), 12);
        assert_eq!(offset_of!(Cqe, status), 14);
        // P bit 0, SC 8:1, SCT 11:9, CRD 13:12, M 14, DNR 15.
        let s = CqeStatus::from_bits(U16::new(0x8000 | 0x4000 | 1 << 9 | 0x02 << 1 | 1));
        assert!(s.p());
        assert_eq!(s.sc(), 0x02);
        assert_eq!(s.sct(), StatusCodeType::COMMAND_SPECIFIC);
        assert!(s.m());
        assert!(s.dnr());
        assert!(!s.is_success());
        assert!(CqeStatus::new().with_p(true).is_success());
        let invalid_field =
            StatusWord::generic(GenericStatus::INVALID_FIELD_IN_COMMAND).with_dnr(true);
        let s = CqeStatus::new().with_p(true).with_status(invalid_field);
        assert!(s.p());
        assert_eq!(s.status(), invalid_field);
        assert_eq!(s.into_bits().get(), 0x8000 | 0x02 << 1 | 1);
    }
}
