//! PERSISTENT RESERVE IN / OUT (SPC-5 6.16, 6.17): service actions,
//! reservation types, CDBs and parameter lists.

use bitfield_struct::bitfield;
use zerocopy::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::codes::{Control, ScsiOp, ServiceActionByte};
use crate::open_enum::open_enum;

open_enum! {
    /// PERSISTENT RESERVE IN service actions.
    pub struct PrInAction(u8) {
        /// READ KEYS.
        READ_KEYS = 0,
        /// READ RESERVATION.
        READ_RESERVATION = 1,
        /// REPORT CAPABILITIES.
        REPORT_CAPABILITIES = 2,
        /// READ FULL STATUS.
        READ_FULL_STATUS = 3,
    }
}

open_enum! {
    /// PERSISTENT RESERVE OUT service actions.
    pub struct PrOutAction(u8) {
        /// REGISTER.
        REGISTER = 0,
        /// RESERVE.
        RESERVE = 1,
        /// RELEASE.
        RELEASE = 2,
        /// CLEAR.
        CLEAR = 3,
        /// PREEMPT.
        PREEMPT = 4,
        /// PREEMPT AND ABORT.
        PREEMPT_AND_ABORT = 5,
        /// REGISTER AND IGNORE EXISTING KEY.
        REGISTER_AND_IGNORE = 6,
        /// REGISTER AND MOVE.
        REGISTER_AND_MOVE = 7,
    }
}

open_enum! {
    /// Persistent reservation types, a 4-bit field.
    pub struct PrType(u8) {
        /// Write Exclusive.
        WRITE_EXCLUSIVE = 1,
        /// Exclusive Access.
        EXCLUSIVE_ACCESS = 3,
        /// Write Exclusive – Registrants Only.
        WRITE_EXCLUSIVE_RO = 5,
        /// Exclusive Access – Registrants Only.
        EXCLUSIVE_ACCESS_RO = 6,
        /// Write Exclusive – All Registrants.
        WRITE_EXCLUSIVE_AR = 7,
        /// Exclusive Access – All Registrants.
        EXCLUSIVE_ACCESS_AR = 8,
    }
}

open_enum! {
    /// Protocol identifiers (SPC-5 7.6.1), a 4-bit field: in transport IDs
    /// and designation descriptors.
    pub struct ProtocolId(u8) {
        /// No specific protocol: parastor's 24-byte initiator transport IDs
        /// (the 16-byte initiator id at offset 8).
        NONE = 0x0F,
    }
}

wire_layout! {
    /// PERSISTENT RESERVE IN.
    pub struct PrInCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// Service action ([`PrInAction`]).
        pub service_action: ServiceActionByte,
        /// Reserved.
        pub reserved: [u8; 5],
        /// Allocation length.
        pub alloc_len: U16,
        /// Control.
        pub control: Control,
    }
    size 10
}

/// PERSISTENT RESERVE OUT byte 2.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct ScopeType {
    /// Reservation type.
    #[bits(4)]
    pub kind: PrType,
    /// Scope (0: logical unit).
    #[bits(4)]
    pub scope: u8,
}

wire_layout! {
    /// PERSISTENT RESERVE OUT.
    pub struct PrOutCdb {
        /// Operation code.
        pub op: ScsiOp,
        /// Service action ([`PrOutAction`]).
        pub service_action: ServiceActionByte,
        /// Scope and type.
        pub scope_type: ScopeType,
        /// Reserved.
        pub reserved: [u8; 2],
        /// Parameter list length.
        pub param_len: U32,
        /// Control.
        pub control: Control,
    }
    size 10
}

/// PERSISTENT RESERVE OUT parameter list byte 20.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct PrOutFlags {
    /// APTPL: activate persist through power loss.
    pub aptpl: bool,
    /// Reserved.
    pub reserved: bool,
    /// ALL_TG_PT: all target ports.
    pub all_tg_pt: bool,
    /// SPEC_I_PT: specify initiator ports.
    pub spec_i_pt: bool,
    /// Reserved.
    #[bits(4)]
    pub reserved2: u8,
}

wire_layout! {
    /// PERSISTENT RESERVE OUT basic parameter list.
    pub struct PrOutParams {
        /// Reservation key.
        pub key: U64,
        /// Service action reservation key.
        pub sa_key: U64,
        /// Obsolete.
        pub obsolete: [u8; 4],
        /// SPEC_I_PT, ALL_TG_PT, APTPL.
        pub flags: PrOutFlags,
        /// Reserved.
        pub reserved: u8,
        /// Obsolete.
        pub obsolete2: [u8; 2],
    }
    size 24
}

/// REGISTER AND MOVE parameter list byte 17.
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct RegisterMoveFlags {
    /// APTPL: activate persist through power loss.
    pub aptpl: bool,
    /// UNREG: unregister the initiator that moves the reservation.
    pub unreg: bool,
    /// Reserved.
    #[bits(6)]
    pub reserved: u8,
}

wire_layout! {
    /// PERSISTENT RESERVE OUT REGISTER AND MOVE parameter list header.
    pub struct PrRegisterMoveParams {
        /// Reservation key.
        pub key: U64,
        /// Service action reservation key.
        pub sa_key: U64,
        /// Reserved.
        pub reserved: u8,
        /// UNREG, APTPL.
        pub flags: RegisterMoveFlags,
        /// Relative target port identifier.
        pub target_port: U16,
        /// Length of the transport ID that follows.
        pub transport_id_len: U32,
    }
    size 24
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_flags() {
        let p = PrOutParams::read_from_bytes(&[
            0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0x0D, 0, 0, 0,
        ])
        .unwrap();
        assert_eq!((p.key.get(), p.sa_key.get()), (1, 2));
        assert!(p.flags.aptpl() && p.flags.all_tg_pt() && p.flags.spec_i_pt());
        let m = PrRegisterMoveParams {
            flags: RegisterMoveFlags::new().with_unreg(true),
            ..Default::default()
        };
        assert_eq!(m.as_bytes()[17], 0x02);
        let s = ScopeType::from_bits(0x13);
        assert_eq!((s.scope(), s.kind()), (1, PrType::EXCLUSIVE_ACCESS));
        // An undefined type is a value, not an error.
        assert_eq!(ScopeType::from_bits(0x0F).kind(), PrType::new(0xF));
    }
}
