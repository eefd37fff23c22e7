//! TCMU wire formats: the command ring the Linux kernel's LIO target shares
//! with a user-space SCSI backstore handler ("target core in user space").
//!
//! A TCMU backstore is a `uio` device whose one memory map holds three
//! parts, all addressed by byte offsets from the start of the map:
//!
//! 1. the **mailbox** ([`Mailbox`], 128 bytes at offset 0): the ABI version,
//!    capability flags, where the command ring lies (`cmdr_off`,
//!    `cmdr_size`), the ring head the kernel advances (`cmd_head`) and, on
//!    its own cache line, the ring tail the handler advances (`cmd_tail`);
//! 2. the **command ring** (`cmdr_size` bytes at `cmdr_off`): variable-size
//!    entries, each starting with an [`EntryHeader`] whose `len_op` holds
//!    the entry's length (a multiple of [`ENTRY_ALIGN`]) and its kind
//!    ([`EntryOp`]: a SCSI command, a padding entry, or a task-management
//!    notification). `cmd_head` and `cmd_tail` are byte offsets into the
//!    ring, `0..cmdr_size`;
//! 3. the **data area** (everything after the ring): the kernel allocates
//!    data blocks there for each command and describes them with
//!    [`Iovec`]s whose `base` is an offset in the map.
//!
//! A command entry ([`CmdRequest`] followed by `iov_cnt + iov_bidi_cnt +
//! iov_dif_cnt` [`Iovec`]s and then the CDB at `cdb_off`) is at least
//! [`CMD_ENTRY_LEN`] bytes long, because the handler completes a command by
//! overwriting an entry with a [`CmdResponse`] (status, `read_len`, 96 bytes
//! of sense). Entries never wrap: when an entry does not fit before the end
//! of the ring, the kernel first fills the rest with a padding entry.
//!
//! The kernel walks completions from its last-cleaned position up to
//! `cmd_tail`, one entry at a time by each entry's own `len_op`, and for
//! every command entry it looks up the command by the `cmd_id` found in
//! that entry. A handler that completes out of order (the
//! [`MailboxFlags::oooc`] capability) therefore writes the completed
//! command's id and response into the oldest not-yet-completed command
//! entry, whatever command that entry carried (its fields were copied out
//! when it was fetched), and never changes `len_op`.
//!
//! All integers are in the host's byte order (the map is plain shared
//! memory); parastor's hosts are little-endian, so the layouts use
//! zerocopy's little-endian types. Everything the kernel writes is
//! untrusted: [`check_entry`], [`CmdRequest::layout`], [`cdb_len`] and
//! [`Iovec::check`] validate every length, offset and count and never
//! panic.
//!
//! Source of the facts (layouts, values, the kernel's behaviour — not
//! code): Linux `include/uapi/linux/target_core_user.h` and
//! `drivers/target/target_core_user.c` (`queue_cmd_ring`,
//! `ring_insert_padding`, `tcmu_handle_completions`,
//! `tcmu_handle_completion`). The offsets were checked against the header
//! as compiled by gcc on x86-64.

use core::fmt;

use bitfield_struct::bitfield;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::open_enum::open_enum;
use crate::scsi::ScsiStatus;

/// The mailbox version this module describes (`TCMU_MAILBOX_VERSION`):
/// version 2 entries carry a `cmd_id`, so completions can be out of order.
pub const MAILBOX_VERSION: u16 = 2;

/// Size of the mailbox; the kernel puts the command ring right after it.
pub const MAILBOX_LEN: usize = 128;

/// Offset of `cmd_head` in the mailbox (written by the kernel).
pub const CMD_HEAD_OFFSET: u64 = 12;

/// Offset of `cmd_tail` in the mailbox (written by the handler): on its own
/// 64-byte cache line.
pub const CMD_TAIL_OFFSET: u64 = 64;

/// Every entry's length, and so every ring position, is a multiple of this
/// (`TCMU_OP_ALIGN_SIZE`, the size of a `u64`).
pub const ENTRY_ALIGN: u32 = 8;

/// Size of an entry header.
pub const ENTRY_HEADER_LEN: usize = 8;

/// Size of the fixed part of a command request; its iovecs start here.
pub const CMD_REQUEST_LEN: usize = 48;

/// Size of one iovec.
pub const IOVEC_LEN: usize = 16;

/// The smallest command entry (`sizeof(struct tcmu_cmd_entry)`): the
/// response, which overwrites an entry, must fit in it.
pub const CMD_ENTRY_LEN: usize = 112;

/// Size of the sense buffer of a response (`TCMU_SENSE_BUFFERSIZE`).
pub const SENSE_BUFFER_LEN: usize = 96;

/// Size of a task-management entry without its command ids.
pub const TMR_ENTRY_LEN: usize = 32;

/// The longest CDB a command entry can carry: a variable-length CDB's
/// additional length (one byte) plus its 8-byte header.
pub const MAX_CDB_LEN: usize = 8 + 255;

/// Capability flags the kernel sets in the mailbox
/// (`TCMU_MAILBOX_FLAG_CAP_*`).
#[bitfield(u16, repr = U16, from = U16::new, into = U16::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct MailboxFlags {
    /// Out-of-order completion: completions are matched by `cmd_id`
    /// (`CAP_OOOC`).
    pub oooc: bool,
    /// The handler may report a shorter data-in length in
    /// [`CmdResponse::read_len`] (`CAP_READ_LEN`).
    pub read_len: bool,
    /// The kernel can post task-management notifications ([`EntryOp::TMR`])
    /// (`CAP_TMR`).
    pub tmr: bool,
    /// The handler may keep a command's data buffer after completing it
    /// ([`UFlags::keep_buf`]) (`CAP_KEEP_BUF`).
    pub keep_buf: bool,
    /// Reserved.
    #[bits(12)]
    pub reserved: u16,
}

/// The mailbox at offset 0 of the map (`struct tcmu_mailbox`).
// Spelled out rather than `wire_layout!`: arrays this long have no
// `Default`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct Mailbox {
    /// ABI version ([`MAILBOX_VERSION`]).
    pub version: U16,
    /// Capabilities.
    pub flags: MailboxFlags,
    /// Offset of the command ring in the map.
    pub cmdr_off: U32,
    /// Size of the command ring in bytes.
    pub cmdr_size: U32,
    /// Where the kernel writes its next entry (offset in the ring);
    /// published with release semantics after the entry is complete.
    pub cmd_head: U32,
    /// Padding up to the tail's cache line.
    pub reserved1: [u8; 48],
    /// Up to where the handler has completed (offset in the ring).
    pub cmd_tail: U32,
    /// Padding to the end of the tail's cache line.
    pub reserved2: [u8; 60],
}

const _: () = assert!(core::mem::size_of::<Mailbox>() == MAILBOX_LEN);

open_enum! {
    /// The kind of a ring entry: the low three bits of `len_op`
    /// (`enum tcmu_opcode`).
    pub struct EntryOp(u8) {
        /// Padding up to the end of the ring (or skipped space).
        PAD = 0,
        /// A SCSI command.
        CMD = 1,
        /// A task-management notification (informational).
        TMR = 2,
    }
}

/// Mask of the entry kind in `len_op` (`TCMU_OP_MASK`).
pub const OP_MASK: u32 = 0x7;

/// Flags the handler sets in a completed entry (`TCMU_UFLAG_*`).
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct UFlags {
    /// The handler does not know this entry: the kernel fails the command
    /// with CHECK CONDITION.
    pub unknown_op: bool,
    /// [`CmdResponse::read_len`] is valid.
    pub read_len: bool,
    /// The handler keeps the data buffer (needs [`MailboxFlags::keep_buf`]).
    pub keep_buf: bool,
    /// Reserved.
    #[bits(5)]
    pub reserved: u8,
}

wire_layout! {
    /// The header every ring entry starts with (`struct
    /// tcmu_cmd_entry_hdr`).
    pub struct EntryHeader {
        /// Length of the entry in bytes (upper bits) and its kind
        /// ([`EntryOp`], low three bits).
        pub len_op: U32,
        /// The command's id (command entries only): how a completion
        /// names the command it completes.
        pub cmd_id: U16,
        /// Flags from the kernel (none defined).
        pub kflags: u8,
        /// Flags from the handler.
        pub uflags: UFlags,
    }
    size ENTRY_HEADER_LEN
}

impl EntryHeader {
    /// A header of kind `op` and length `len` (a multiple of
    /// [`ENTRY_ALIGN`]; lower bits of `len` are dropped).
    pub fn new(op: EntryOp, len: u32, cmd_id: u16) -> Self {
        EntryHeader {
            len_op: U32::new((len & !OP_MASK) | (u32::from(op.get()) & OP_MASK)),
            cmd_id: U16::new(cmd_id),
            kflags: 0,
            uflags: UFlags::new(),
        }
    }

    /// The entry's kind.
    pub fn op(&self) -> EntryOp {
        // The mask keeps three bits, so the cast is exact.
        EntryOp::new((self.len_op.get() & OP_MASK) as u8)
    }

    /// The entry's length in bytes, as written (unvalidated).
    pub fn entry_len(&self) -> u32 {
        self.len_op.get() & !OP_MASK
    }
}

wire_layout! {
    /// The fixed part of a command entry as the kernel writes it (the
    /// `req` arm of `struct tcmu_cmd_entry`). `iov_cnt` data iovecs follow,
    /// then `iov_bidi_cnt` bidirectional and `iov_dif_cnt` protection
    /// iovecs, then the CDB at `cdb_off`.
    pub struct CmdRequest {
        /// The entry header.
        pub hdr: EntryHeader,
        /// Number of data iovecs.
        pub iov_cnt: U32,
        /// Number of iovecs of the data-in half of a bidirectional command.
        pub iov_bidi_cnt: U32,
        /// Number of protection-information iovecs.
        pub iov_dif_cnt: U32,
        /// Alignment padding.
        pub reserved: [u8; 4],
        /// Offset of the CDB in the map (not in the ring, not in the entry).
        pub cdb_off: U64,
        /// Reserved.
        pub pad1: U64,
        /// Reserved.
        pub pad2: U64,
    }
    size CMD_REQUEST_LEN
}

wire_layout! {
    /// One data buffer of a command (`struct iovec`, 64-bit): `base` is an
    /// offset in the map, inside the data area.
    pub struct Iovec {
        /// Offset of the buffer in the map.
        pub base: U64,
        /// Length of the buffer in bytes.
        pub len: U64,
    }
    size IOVEC_LEN
}

/// A completion as the handler writes it over a command entry (the
/// `rsp` arm of `struct tcmu_cmd_entry`). The header's `len_op` is the
/// entry's own and is never rewritten; `cmd_id` and `uflags` are the
/// completed command's.
// Spelled out rather than `wire_layout!`: arrays this long have no
// `Default`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
pub struct CmdResponse {
    /// The entry header.
    pub hdr: EntryHeader,
    /// SCSI status.
    pub scsi_status: ScsiStatus,
    /// Reserved.
    pub pad1: u8,
    /// Reserved.
    pub pad2: [u8; 2],
    /// Bytes of data-in actually transferred, when
    /// [`UFlags::read_len`] is set (0 means "all").
    pub read_len: U32,
    /// Sense data, with CHECK CONDITION.
    pub sense_buffer: [u8; SENSE_BUFFER_LEN],
}

const _: () = assert!(core::mem::size_of::<CmdResponse>() == CMD_ENTRY_LEN);

open_enum! {
    /// The task-management function a [`TmrEntry`] reports
    /// (`TCMU_TMR_*`).
    pub struct TmrType(u8) {
        /// A function TCMU has no code for.
        UNKNOWN = 0,
        /// ABORT TASK.
        ABORT_TASK = 1,
        /// ABORT TASK SET.
        ABORT_TASK_SET = 2,
        /// CLEAR ACA.
        CLEAR_ACA = 3,
        /// CLEAR TASK SET.
        CLEAR_TASK_SET = 4,
        /// LOGICAL UNIT RESET.
        LUN_RESET = 5,
        /// TARGET WARM RESET.
        TARGET_WARM_RESET = 6,
        /// TARGET COLD RESET.
        TARGET_COLD_RESET = 7,
        /// LOGICAL UNIT RESET of the PR-aware kind.
        LUN_RESET_PRO = 128,
    }
}

wire_layout! {
    /// A task-management notification (`struct tcmu_tmr_entry`), followed
    /// by `cmd_cnt` 16-bit ids of the commands it aborted. It needs no
    /// completion: the kernel's completion walk steps over it.
    pub struct TmrEntry {
        /// The entry header.
        pub hdr: EntryHeader,
        /// The function.
        pub tmr_type: TmrType,
        /// Reserved.
        pub pad1: u8,
        /// Reserved.
        pub pad2: [u8; 2],
        /// Number of command ids that follow.
        pub cmd_cnt: U32,
        /// Reserved.
        pub pad3: [u8; 16],
    }
    size TMR_ENTRY_LEN
}

/// The length of the CDB whose first byte is `opcode` as the kernel sizes
/// it when it copies the CDB into an entry (`scsi_command_size`): by the
/// operation code's group, except for the variable-length CDB (`0x7F`),
/// which is 8 bytes plus its additional length (byte 7, `varlen_byte7`).
/// Groups the SCSI standard leaves reserved or vendor-specific are sized
/// as the kernel sizes them (10 or 12 bytes).
pub const fn cdb_len(opcode: u8, varlen_byte7: u8) -> usize {
    if opcode == 0x7F {
        return 8 + varlen_byte7 as usize;
    }
    match opcode >> 5 {
        0 => 6,
        3 | 5 => 12,
        4 => 16,
        _ => 10,
    }
}

/// What is wrong with a ring entry the kernel wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryError {
    /// The length is shorter than an entry header (zero included): the
    /// ring cannot be walked past it.
    TooShort {
        /// The length written.
        len: u32,
    },
    /// The entry would run past the end of the ring (entries never wrap).
    PastRingEnd {
        /// The entry's offset in the ring.
        offset: u32,
        /// The length written.
        len: u32,
        /// The ring's size.
        ring_size: u32,
    },
    /// The entry would run past `cmd_head`, into space the kernel has not
    /// published.
    PastHead {
        /// The length written.
        len: u32,
        /// Bytes published from the entry's start up to the head.
        available: u32,
    },
    /// A command entry shorter than a response ([`CMD_ENTRY_LEN`]).
    CommandTooShort {
        /// The length written.
        len: u32,
    },
    /// The iovec counts do not fit in the entry.
    IovCountTooBig {
        /// Data iovecs.
        iov_cnt: u32,
        /// Bidirectional iovecs.
        iov_bidi_cnt: u32,
        /// Protection iovecs.
        iov_dif_cnt: u32,
        /// The entry's length.
        len: u32,
    },
    /// The command has bidirectional or protection-information iovecs,
    /// which parastor does not accept.
    BidiOrDif {
        /// Bidirectional iovecs.
        iov_bidi_cnt: u32,
        /// Protection iovecs.
        iov_dif_cnt: u32,
    },
    /// `cdb_off` is not inside the entry, after its iovecs.
    CdbOutsideEntry {
        /// The offset written.
        cdb_off: u64,
    },
    /// The CDB's length (from its operation code) runs past the entry.
    CdbPastEntry {
        /// The offset written.
        cdb_off: u64,
        /// The CDB's length.
        cdb_len: usize,
    },
    /// An iovec is not inside the data area.
    IovecOutsideData {
        /// Which iovec.
        index: u32,
        /// Its base.
        base: u64,
        /// Its length.
        len: u64,
    },
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EntryError::TooShort { len } => {
                write!(f, "entry length {len} is shorter than an entry header")
            }
            EntryError::PastRingEnd {
                offset,
                len,
                ring_size,
            } => write!(
                f,
                "entry of {len} bytes at ring offset {offset} runs past the ring's end ({ring_size})"
            ),
            EntryError::PastHead { len, available } => write!(
                f,
                "entry of {len} bytes runs past cmd_head ({available} bytes published)"
            ),
            EntryError::CommandTooShort { len } => write!(
                f,
                "command entry of {len} bytes is shorter than a response ({CMD_ENTRY_LEN})"
            ),
            EntryError::IovCountTooBig {
                iov_cnt,
                iov_bidi_cnt,
                iov_dif_cnt,
                len,
            } => write!(
                f,
                "{iov_cnt}+{iov_bidi_cnt}+{iov_dif_cnt} iovecs do not fit in a {len}-byte entry"
            ),
            EntryError::BidiOrDif {
                iov_bidi_cnt,
                iov_dif_cnt,
            } => write!(
                f,
                "command has {iov_bidi_cnt} bidirectional and {iov_dif_cnt} protection iovecs; expected none"
            ),
            EntryError::CdbOutsideEntry { cdb_off } => {
                write!(
                    f,
                    "cdb_off {cdb_off:#x} is not inside the entry after its iovecs"
                )
            }
            EntryError::CdbPastEntry { cdb_off, cdb_len } => write!(
                f,
                "the {cdb_len}-byte CDB at {cdb_off:#x} runs past the end of its entry"
            ),
            EntryError::IovecOutsideData { index, base, len } => write!(
                f,
                "iovec {index} ({base:#x}+{len:#x}) is not inside the data area"
            ),
        }
    }
}

impl core::error::Error for EntryError {}

/// Validates the length of the entry with header `hdr` at ring offset
/// `offset`, in a ring of `ring_size` bytes with `available` bytes
/// published from `offset` up to `cmd_head`, and returns its kind and
/// length. The length must cover at least a header (the low bits of
/// `len_op` are the kind, so it is a multiple of [`ENTRY_ALIGN`] by
/// construction), end at or before the ring's end, and end at or before the
/// head. Kinds are not judged here: an unknown kind with a valid length is
/// returned as it is.
pub fn check_entry(
    hdr: &EntryHeader,
    offset: u32,
    ring_size: u32,
    available: u32,
) -> Result<(EntryOp, u32), EntryError> {
    let len = hdr.entry_len();
    if (len as usize) < ENTRY_HEADER_LEN {
        return Err(EntryError::TooShort { len });
    }
    if offset.checked_add(len).is_none_or(|end| end > ring_size) {
        return Err(EntryError::PastRingEnd {
            offset,
            len,
            ring_size,
        });
    }
    if len > available {
        return Err(EntryError::PastHead { len, available });
    }
    Ok((hdr.op(), len))
}

/// Where the parts of a validated command entry lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdLayout {
    /// Number of data iovecs (they start at [`CMD_REQUEST_LEN`] in the
    /// entry).
    pub iov_cnt: u32,
    /// Offset of the CDB from the start of the entry.
    pub cdb_start: u32,
    /// Bytes from the CDB's start to the end of the entry: the most the
    /// CDB may be.
    pub cdb_room: u32,
}

impl CmdRequest {
    /// Validates the counts and the CDB offset of this request, the start
    /// of a command entry `len` bytes long (already checked with
    /// [`check_entry`]) at offset `entry_off` in the map. The entry must
    /// hold a response, the iovecs must fit in it, there must be no
    /// bidirectional or protection iovecs, and the CDB must start inside
    /// the entry after the iovecs. The CDB's own length is checked by the
    /// caller once it has read the operation code ([`cdb_len`]).
    pub fn layout(&self, entry_off: u64, len: u32) -> Result<CmdLayout, EntryError> {
        if (len as usize) < CMD_ENTRY_LEN {
            return Err(EntryError::CommandTooShort { len });
        }
        let iov_cnt = self.iov_cnt.get();
        let iov_bidi_cnt = self.iov_bidi_cnt.get();
        let iov_dif_cnt = self.iov_dif_cnt.get();
        let too_big = EntryError::IovCountTooBig {
            iov_cnt,
            iov_bidi_cnt,
            iov_dif_cnt,
            len,
        };
        let iovs = u64::from(iov_cnt) + u64::from(iov_bidi_cnt) + u64::from(iov_dif_cnt);
        let iov_end = iovs * IOVEC_LEN as u64 + CMD_REQUEST_LEN as u64;
        if iov_end > u64::from(len) {
            return Err(too_big);
        }
        if iov_bidi_cnt != 0 || iov_dif_cnt != 0 {
            return Err(EntryError::BidiOrDif {
                iov_bidi_cnt,
                iov_dif_cnt,
            });
        }
        let cdb_off = self.cdb_off.get();
        let outside = EntryError::CdbOutsideEntry { cdb_off };
        let cdb_start = cdb_off.checked_sub(entry_off).ok_or(outside)?;
        if cdb_start < iov_end || cdb_start >= u64::from(len) {
            return Err(outside);
        }
        // Both below `len`, a u32.
        let cdb_start = cdb_start as u32;
        Ok(CmdLayout {
            iov_cnt,
            cdb_start,
            cdb_room: len - cdb_start,
        })
    }
}

impl Iovec {
    /// The buffer as `(offset, length)` if it lies inside the data area
    /// `[data_start, data_end)` of the map; iovec `index` of its command,
    /// for the error.
    pub fn check(
        &self,
        index: u32,
        data_start: u64,
        data_end: u64,
    ) -> Result<(u64, u64), EntryError> {
        let (base, len) = (self.base.get(), self.len.get());
        match base.checked_add(len) {
            Some(end) if base >= data_start && end <= data_end => Ok((base, len)),
            _ => Err(EntryError::IovecOutsideData { index, base, len }),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn layouts_match_the_kernel_header() {
        // Offsets as gcc lays out `struct tcmu_mailbox` / `tcmu_cmd_entry`
        // on x86-64 (checked with offsetof).
        let mut mb = Mailbox::new_zeroed();
        mb.cmd_head = U32::new(0x1122_3344);
        mb.cmd_tail = U32::new(0x5566_7788);
        let b = mb.as_bytes();
        assert_eq!(
            &b[CMD_HEAD_OFFSET as usize..][..4],
            &0x1122_3344u32.to_le_bytes()
        );
        assert_eq!(
            &b[CMD_TAIL_OFFSET as usize..][..4],
            &0x5566_7788u32.to_le_bytes()
        );

        let mut req = CmdRequest::new_zeroed();
        req.cdb_off = U64::new(0xAABB);
        req.iov_dif_cnt = U32::new(9);
        assert_eq!(&req.as_bytes()[24..26], &[0xBB, 0xAA]);
        assert_eq!(req.as_bytes()[16], 9);

        let mut rsp = CmdResponse::new_zeroed();
        rsp.scsi_status = ScsiStatus::CHECK_CONDITION;
        rsp.read_len = U32::new(0x0102_0304);
        rsp.sense_buffer[0] = 0x70;
        assert_eq!(rsp.as_bytes()[8], 2);
        assert_eq!(&rsp.as_bytes()[12..16], &[4, 3, 2, 1]);
        assert_eq!(rsp.as_bytes()[16], 0x70);

        let mut tmr = TmrEntry::new_zeroed();
        tmr.cmd_cnt = U32::new(3);
        assert_eq!(tmr.as_bytes()[12], 3);
    }

    #[test]
    fn header_packs_kind_and_length() {
        let h = EntryHeader::new(EntryOp::CMD, 136, 7);
        assert_eq!(h.len_op.get(), 137);
        assert_eq!(h.op(), EntryOp::CMD);
        assert_eq!(h.entry_len(), 136);
        let odd = EntryHeader::read_from_bytes(&[0x0B, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(odd.op(), EntryOp::new(3));
        assert_eq!(odd.entry_len(), 8);
        assert_eq!(std::format!("{:?}", odd.op()), "EntryOp(0x3)");
    }

    #[test]
    fn entry_lengths_are_checked() {
        let h = |op, len| EntryHeader::new(op, len, 1);
        assert_eq!(
            check_entry(&h(EntryOp::CMD, 136), 0, 1024, 1024),
            Ok((EntryOp::CMD, 136))
        );
        assert_eq!(
            check_entry(&h(EntryOp::PAD, 0), 8, 1024, 64),
            Err(EntryError::TooShort { len: 0 })
        );
        assert_eq!(
            check_entry(&h(EntryOp::PAD, 1024), 1000, 1024, 24),
            Err(EntryError::PastRingEnd {
                offset: 1000,
                len: 1024,
                ring_size: 1024
            })
        );
        assert_eq!(
            check_entry(&h(EntryOp::CMD, 200), 0, 1024, 128),
            Err(EntryError::PastHead {
                len: 200,
                available: 128
            })
        );
        // A PAD to the exact end of the ring is fine.
        assert_eq!(
            check_entry(&h(EntryOp::PAD, 24), 1000, 1024, 24),
            Ok((EntryOp::PAD, 24))
        );
        // Overflowing offset + len.
        assert!(check_entry(&h(EntryOp::PAD, 0xFFFF_FFF8), 16, u32::MAX, u32::MAX).is_err());
    }

    fn request(iov: u32, bidi: u32, dif: u32, cdb_off: u64) -> CmdRequest {
        let mut r = CmdRequest::new_zeroed();
        r.iov_cnt = U32::new(iov);
        r.iov_bidi_cnt = U32::new(bidi);
        r.iov_dif_cnt = U32::new(dif);
        r.cdb_off = U64::new(cdb_off);
        r
    }

    #[test]
    fn command_layout_is_validated() {
        // The kernel's shape: one iovec, base size 112, 16-byte CDB after it.
        let entry = 0x1000;
        assert_eq!(
            request(1, 0, 0, entry + 112).layout(entry, 128),
            Ok(CmdLayout {
                iov_cnt: 1,
                cdb_start: 112,
                cdb_room: 16
            })
        );
        // Six iovecs: base 48 + 96 = 144.
        assert_eq!(
            request(6, 0, 0, entry + 144)
                .layout(entry, 160)
                .map(|l| l.cdb_start),
            Ok(144)
        );
        assert_eq!(
            request(0, 0, 0, entry + 112).layout(entry, 104),
            Err(EntryError::CommandTooShort { len: 104 })
        );
        assert!(matches!(
            request(5, 0, 0, entry + 112).layout(entry, 120),
            Err(EntryError::IovCountTooBig { .. })
        ));
        assert!(matches!(
            request(u32::MAX, u32::MAX, u32::MAX, 0).layout(entry, 128),
            Err(EntryError::IovCountTooBig { .. })
        ));
        assert_eq!(
            request(1, 1, 0, entry + 128).layout(entry, 144),
            Err(EntryError::BidiOrDif {
                iov_bidi_cnt: 1,
                iov_dif_cnt: 0
            })
        );
        assert_eq!(
            request(0, 0, 1, entry + 128).layout(entry, 144),
            Err(EntryError::BidiOrDif {
                iov_bidi_cnt: 0,
                iov_dif_cnt: 1
            })
        );
        // CDB before the entry, inside the iovecs, at or past its end.
        for off in [0, entry - 8, entry + 48, entry + 128, u64::MAX] {
            assert_eq!(
                request(1, 0, 0, off).layout(entry, 128),
                Err(EntryError::CdbOutsideEntry { cdb_off: off })
            );
        }
    }

    #[test]
    fn cdb_lengths_follow_the_kernel() {
        assert_eq!(cdb_len(0x12, 0), 6); // INQUIRY
        assert_eq!(cdb_len(0x28, 0), 10); // READ(10)
        assert_eq!(cdb_len(0x5E, 0), 10); // PR IN
        assert_eq!(cdb_len(0x88, 0), 16); // READ(16)
        assert_eq!(cdb_len(0xA8, 0), 12); // READ(12)
        assert_eq!(cdb_len(0x60, 0), 12); // group 3 (reserved)
        assert_eq!(cdb_len(0xC0, 0), 10); // vendor
        assert_eq!(cdb_len(0x7F, 24), 32);
        assert_eq!(cdb_len(0x7F, 255), MAX_CDB_LEN);
    }

    #[test]
    fn iovecs_must_lie_in_the_data_area() {
        let v = |base: u64, len: u64| Iovec {
            base: U64::new(base),
            len: U64::new(len),
        };
        assert_eq!(
            v(0x1000, 0x1000).check(0, 0x1000, 0x3000),
            Ok((0x1000, 0x1000))
        );
        assert_eq!(
            v(0x2000, 0x1000).check(0, 0x1000, 0x3000),
            Ok((0x2000, 0x1000))
        );
        for (b, l) in [
            (0x800, 0x100),
            (0x2800, 0x1000),
            (u64::MAX, 2),
            (0x1000, u64::MAX),
        ] {
            assert_eq!(
                v(b, l).check(3, 0x1000, 0x3000),
                Err(EntryError::IovecOutsideData {
                    index: 3,
                    base: b,
                    len: l
                })
            );
        }
    }
}
