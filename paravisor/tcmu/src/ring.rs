//! The TCMU command ring, seen from the handler's side.
//!
//! [`CommandRing`] reads commands the kernel posts in a TCMU map (mailbox,
//! command ring, data area; see [`parastor_hw::tcmu`]) and writes their
//! completions back. The map is shared with the kernel, so it is reached
//! only through a [`GuestMem`] (address = byte offset in the map) by copies
//! and atomics: `cmd_head` is loaded with acquire ordering before the
//! entries it publishes are read, and `cmd_tail` is stored with release
//! ordering after the responses it covers are written. Every entry is read
//! once into private memory and validated there; nothing the kernel wrote
//! is read twice.
//!
//! # Fetching
//!
//! [`CommandRing::fetch`] walks the entries from where the last fetch
//! stopped up to `cmd_head`:
//!
//! - padding and task-management entries are stepped over (TCMU needs no
//!   answer to a TMR notification); when they are at the tail, the tail
//!   moves past them at once, so the kernel gets their space back without
//!   waiting for the next completion;
//! - a well-formed command becomes a [`RingCommand`]: its id, its CDB and
//!   its data iovecs as ranges of the map ([`GpaRange`]s inside the data
//!   area), ready to be an [`SgList`](parastor_core::SgList) over the same
//!   memory;
//! - a malformed command (iovec counts that do not fit, bidirectional or
//!   protection iovecs, a CDB outside its entry, an iovec outside the data
//!   area) is completed at once with CHECK CONDITION, HARDWARE ERROR /
//!   INTERNAL TARGET FAILURE; an entry of an unknown kind is completed at
//!   once with [`UFlags::unknown_op`], the ABI's "not understood";
//! - an entry whose length cannot be right (shorter than a header, past
//!   the ring's end, past `cmd_head`) leaves no way to find the next entry.
//!   The ring is resynchronised at `cmd_head`: the entry's header is
//!   rewritten as one padding entry reaching the head, so both this side
//!   and the kernel's completion walk step over the unreadable span (its
//!   commands, if any, are lost to the kernel's command timeout) and the
//!   ring keeps going.
//!
//! # Completing
//!
//! The kernel walks completions from its last-cleaned position to
//! `cmd_tail`, entry by entry by each entry's own length, and finds the
//! command of each command entry by the `cmd_id` written in it. Commands
//! may complete in any order ([`MailboxFlags::oooc`]), so
//! [`CommandRing::complete`] writes the completed command's id and response
//! into the oldest fetched entry not yet used for a completion (whose own
//! command's fields were all copied out when it was fetched), steps the
//! tail over it and over the padding behind it, and publishes the tail. The
//! entries' layout between tail and fetch position is kept privately
//! ([`VecDeque`] of slots), never re-read from the map.
//!
//! `read_len`: when the kernel offers [`MailboxFlags::read_len`], every
//! completion that moved data reports [`ScsiResult::tx`] as `read_len`
//! with [`UFlags::read_len`]; the kernel uses it for data-in commands only
//! (a residual for INQUIRY, MODE SENSE, a short READ) and ignores it
//! otherwise, so the ring needs no data direction.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::Ordering;

use parastor_core::{Gpa, GpaRange, GuestMem, GuestMemoryExt, MemoryError};
use parastor_hw::scsi::{AdditionalSense, ScsiStatus, SenseData, SenseKey};
use parastor_hw::tcmu::{
    self, CMD_ENTRY_LEN, CMD_HEAD_OFFSET, CMD_REQUEST_LEN, CMD_TAIL_OFFSET, CmdRequest,
    CmdResponse, ENTRY_ALIGN, EntryError, EntryHeader, EntryOp, IOVEC_LEN, Iovec, MAILBOX_LEN,
    MAILBOX_VERSION, MAX_CDB_LEN, Mailbox, MailboxFlags, UFlags,
};
use parastor_scsi::ScsiResult;
use zerocopy::{FromZeros, IntoBytes};

/// Why a TCMU map cannot be served, or a fetch could not read the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingError {
    /// The map is smaller than the mailbox or than the memory claims.
    MapTooSmall {
        /// Bytes in the map.
        len: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// The mailbox's version is not [`MAILBOX_VERSION`].
    Version(u16),
    /// The kernel does not match completions by command id
    /// ([`MailboxFlags::oooc`] is clear), which this ring relies on.
    NoOutOfOrderCompletion,
    /// `cmdr_off` / `cmdr_size` do not describe a ring inside the map.
    BadRing {
        /// `cmdr_off`.
        cmdr_off: u32,
        /// `cmdr_size`.
        cmdr_size: u32,
        /// Bytes in the map.
        len: u64,
    },
    /// `cmd_head` is not an aligned offset inside the ring.
    BadHead {
        /// The value read.
        head: u32,
        /// The ring's size.
        ring_size: u32,
    },
    /// `cmd_tail` (at open) is not an aligned offset inside the ring.
    BadTail {
        /// The value read.
        tail: u32,
        /// The ring's size.
        ring_size: u32,
    },
    /// An access to the map failed.
    Memory(MemoryError),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::MapTooSmall { len, needed } => {
                write!(f, "TCMU map of {len} bytes is too small: need {needed}")
            }
            RingError::Version(v) => write!(
                f,
                "TCMU mailbox version {v} is not supported (expected {MAILBOX_VERSION})"
            ),
            RingError::NoOutOfOrderCompletion => f.write_str(
                "the kernel does not offer out-of-order completion (mailbox flag CAP_OOOC)",
            ),
            RingError::BadRing {
                cmdr_off,
                cmdr_size,
                len,
            } => write!(
                f,
                "TCMU command ring {cmdr_size} bytes at {cmdr_off:#x} is not an aligned ring \
                 after the mailbox inside the {len}-byte map"
            ),
            RingError::BadHead { head, ring_size } => write!(
                f,
                "cmd_head {head:#x} is not an aligned offset in the {ring_size}-byte ring"
            ),
            RingError::BadTail { tail, ring_size } => write!(
                f,
                "cmd_tail {tail:#x} is not an aligned offset in the {ring_size}-byte ring"
            ),
            RingError::Memory(e) => write!(f, "TCMU map access failed: {e}"),
        }
    }
}

impl std::error::Error for RingError {}

impl From<MemoryError> for RingError {
    fn from(e: MemoryError) -> Self {
        RingError::Memory(e)
    }
}

/// A command's CDB, copied out of its entry.
#[derive(Clone)]
pub struct Cdb {
    bytes: [u8; MAX_CDB_LEN],
    len: u16,
}

impl Cdb {
    /// The CDB's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

impl fmt::Debug for Cdb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cdb({:02x?})", self.as_bytes())
    }
}

/// A well-formed command fetched from the ring.
#[derive(Debug, Clone)]
pub struct RingCommand {
    /// The kernel's id for the command; [`CommandRing::complete`] takes it
    /// back.
    pub id: u16,
    /// The CDB.
    pub cdb: Cdb,
    /// The data buffer: the command's data iovecs, as ranges of the map
    /// (inside the data area). The same memory as the ring's, so an
    /// `SgList` over the ring's [`GuestMem`] reaches the bytes.
    pub data: Vec<GpaRange>,
}

impl RingCommand {
    /// Total bytes of the data buffer.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|r| r.len).sum()
    }
}

/// What one [`CommandRing::fetch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Commands pushed to the output.
    pub commands: usize,
    /// Entries completed at once (malformed commands, unknown kinds).
    pub refused: usize,
    /// The tail moved: tell the kernel.
    pub notify: bool,
}

/// Counters over a ring's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Commands fetched.
    pub commands: u64,
    /// Completions written (commands and refusals).
    pub completions: u64,
    /// Padding entries stepped over.
    pub pads: u64,
    /// Task-management notifications stepped over.
    pub tmrs: u64,
    /// Malformed command entries refused with CHECK CONDITION.
    pub malformed: u64,
    /// Entries of unknown kinds refused with UNKNOWN_OP.
    pub unknown: u64,
    /// Resynchronisations at `cmd_head` after an unreadable entry length.
    pub resyncs: u64,
}

/// One fetched entry between the tail and the fetch position.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Offset in the ring.
    offset: u32,
    /// Length (may reach across the ring's end only for a resync pad).
    len: u32,
    /// A command entry (takes one completion) with its kernel flags, or
    /// an entry the tail just steps over.
    cmd: Option<u8>,
}

/// Sense for a command entry the kernel wrote wrongly: not the
/// initiator's fault, so not ILLEGAL REQUEST.
const MALFORMED_SENSE: SenseData = SenseData::new(
    SenseKey::HARDWARE_ERROR,
    AdditionalSense::INTERNAL_TARGET_FAILURE,
);

/// Iovecs read per copy.
const IOV_CHUNK: usize = 16;

/// Ranges a new data vector has room for: more than the kernel's 4 KiB
/// blocks usually split a command into.
const SPARE_RANGES: usize = 16;

/// The most ranges reserved up front for one command (a hostile count
/// must not reserve gigabytes before its iovecs are checked).
const MAX_RESERVE: u32 = 1024;

/// The handler's side of one TCMU command ring; see the
/// [module docs](self).
pub struct CommandRing {
    mem: GuestMem,
    flags: MailboxFlags,
    cmdr_off: u64,
    ring_size: u32,
    data_start: u64,
    data_end: u64,
    /// Next entry to fetch (offset in the ring).
    cursor: u32,
    /// The tail as last published.
    tail: u32,
    /// Entries in `[tail, cursor)`, in ring order.
    slots: VecDeque<Slot>,
    /// Command slots in `slots` (fetched, completion not yet written).
    pending: usize,
    /// Spare data-range vectors, so steady-state fetches do not allocate.
    spare: Vec<Vec<GpaRange>>,
    stats: RingStats,
}

impl fmt::Debug for CommandRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandRing")
            .field("ring_size", &self.ring_size)
            .field("cursor", &self.cursor)
            .field("tail", &self.tail)
            .field("pending", &self.pending)
            .finish()
    }
}

fn aligned_in(v: u32, size: u32) -> bool {
    v < size && v.is_multiple_of(ENTRY_ALIGN)
}

impl CommandRing {
    /// Opens the ring of a TCMU map of `len` bytes reached through `mem`
    /// (address = offset in the map): validates the mailbox (version,
    /// out-of-order completion, an aligned ring after the mailbox and
    /// inside the map) and starts at the kernel's `cmd_tail`, so commands
    /// a previous handler fetched but never completed are fetched again.
    pub fn open(mem: GuestMem, len: u64) -> Result<CommandRing, RingError> {
        let extent = mem.extent().get();
        if len < MAILBOX_LEN as u64 || len > extent {
            return Err(RingError::MapTooSmall {
                len: len.min(extent),
                needed: len.max(MAILBOX_LEN as u64),
            });
        }
        let mb: Mailbox = mem.read_obj(Gpa::ZERO)?;
        let version = mb.version.get();
        if version != MAILBOX_VERSION {
            return Err(RingError::Version(version));
        }
        if !mb.flags.oooc() {
            return Err(RingError::NoOutOfOrderCompletion);
        }
        let (cmdr_off, cmdr_size) = (mb.cmdr_off.get(), mb.cmdr_size.get());
        let ring_end = u64::from(cmdr_off) + u64::from(cmdr_size);
        if (cmdr_off as usize) < MAILBOX_LEN
            || !cmdr_off.is_multiple_of(ENTRY_ALIGN)
            || !cmdr_size.is_multiple_of(ENTRY_ALIGN)
            || (cmdr_size as usize) < 2 * CMD_ENTRY_LEN
            || ring_end > len
        {
            return Err(RingError::BadRing {
                cmdr_off,
                cmdr_size,
                len,
            });
        }
        let tail = mem.load_u32(Gpa::new(CMD_TAIL_OFFSET), Ordering::Acquire)?;
        if !aligned_in(tail, cmdr_size) {
            return Err(RingError::BadTail {
                tail,
                ring_size: cmdr_size,
            });
        }
        Ok(CommandRing {
            mem,
            flags: mb.flags,
            cmdr_off: u64::from(cmdr_off),
            ring_size: cmdr_size,
            data_start: ring_end,
            data_end: len,
            cursor: tail,
            tail,
            slots: VecDeque::with_capacity(64),
            pending: 0,
            spare: Vec::new(),
            stats: RingStats::default(),
        })
    }

    /// The memory the ring and its data area are in.
    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    /// The kernel's capability flags.
    pub fn flags(&self) -> MailboxFlags {
        self.flags
    }

    /// The data area: `[start, end)` offsets in the map.
    pub fn data_area(&self) -> (u64, u64) {
        (self.data_start, self.data_end)
    }

    /// Commands fetched whose completion has not been written.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Counters so far.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// Offset of ring position `pos` in the map.
    fn at(&self, pos: u32) -> Gpa {
        Gpa::new(self.cmdr_off + u64::from(pos))
    }

    /// Bytes from `from` forward to `to`, around the ring.
    fn distance(&self, from: u32, to: u32) -> u32 {
        if to >= from {
            to - from
        } else {
            self.ring_size - from + to
        }
    }

    /// `pos + len`, around the ring.
    fn advance(&self, pos: u32, len: u32) -> u32 {
        ((u64::from(pos) + u64::from(len)) % u64::from(self.ring_size)) as u32
    }

    /// Fetches the entries the kernel has published since the last fetch:
    /// well-formed commands are pushed to `out`; padding and TMR entries
    /// are stepped over; malformed and unknown entries are completed at
    /// once (see the [module docs](self)). When [`Fetched::notify`] is set,
    /// completions were written: ring the kernel's doorbell.
    ///
    /// An error (a `cmd_head` outside the ring, a failed access) fetches
    /// nothing more; what was fetched before it is in `out`.
    pub fn fetch(&mut self, out: &mut Vec<RingCommand>) -> Result<Fetched, RingError> {
        let mut fetched = Fetched::default();
        let head = self
            .mem
            .load_u32(Gpa::new(CMD_HEAD_OFFSET), Ordering::Acquire)?;
        if !aligned_in(head, self.ring_size) {
            return Err(RingError::BadHead {
                head,
                ring_size: self.ring_size,
            });
        }
        while self.cursor != head {
            let offset = self.cursor;
            let available = self.distance(offset, head);
            let hdr: EntryHeader = self.mem.read_obj(self.at(offset))?;
            let (op, len) = match tcmu::check_entry(&hdr, offset, self.ring_size, available) {
                Ok(v) => v,
                Err(e) => {
                    self.resync(offset, available, e)?;
                    continue;
                }
            };
            self.cursor = self.advance(offset, len);
            match op {
                EntryOp::PAD => {
                    self.stats.pads += 1;
                    self.slots.push_back(Slot {
                        offset,
                        len,
                        cmd: None,
                    });
                }
                EntryOp::TMR => {
                    self.stats.tmrs += 1;
                    self.slots.push_back(Slot {
                        offset,
                        len,
                        cmd: None,
                    });
                }
                EntryOp::CMD => {
                    self.push_cmd(offset, len, hdr.kflags);
                    match self.read_command(offset, len, hdr.cmd_id.get())? {
                        Ok(cmd) => {
                            self.stats.commands += 1;
                            fetched.commands += 1;
                            out.push(cmd);
                        }
                        Err(e) => {
                            log::warn!(
                                "TCMU command {} at ring offset {offset:#x} refused: {e}",
                                hdr.cmd_id.get()
                            );
                            self.stats.malformed += 1;
                            fetched.refused += 1;
                            let result = ScsiResult::check(MALFORMED_SENSE);
                            fetched.notify |= self.complete(hdr.cmd_id.get(), &result);
                        }
                    }
                }
                _ => {
                    log::warn!(
                        "TCMU entry of unknown kind {op:?} at ring offset {offset:#x}: \
                         answered UNKNOWN_OP"
                    );
                    // The kernel's completion walk treats every entry that
                    // is neither padding nor TMR as a command.
                    self.push_cmd(offset, len, hdr.kflags);
                    self.stats.unknown += 1;
                    fetched.refused += 1;
                    let flags = UFlags::new().with_unknown_op(true);
                    fetched.notify |= self.write_completion(
                        hdr.cmd_id.get(),
                        flags,
                        ScsiStatus::CHECK_CONDITION,
                        0,
                        &[],
                    )?;
                }
            }
        }
        // Padding and TMR entries at the tail need no completion: give
        // their space back now rather than with the next completion.
        if self.release_skips() {
            self.publish_tail()?;
            fetched.notify = true;
        }
        Ok(fetched)
    }

    /// Moves the tail past the padding and TMR entries in front of it;
    /// whether it moved (not yet published).
    fn release_skips(&mut self) -> bool {
        let mut moved = false;
        while let Some(slot) = self.slots.front().copied() {
            if slot.cmd.is_some() {
                break;
            }
            self.slots.pop_front();
            self.tail = self.advance(self.tail, slot.len);
            moved = true;
        }
        moved
    }

    fn publish_tail(&self) -> Result<(), RingError> {
        self.mem
            .store_u32(Gpa::new(CMD_TAIL_OFFSET), self.tail, Ordering::Release)?;
        Ok(())
    }

    fn push_cmd(&mut self, offset: u32, len: u32, kflags: u8) {
        self.slots.push_back(Slot {
            offset,
            len,
            cmd: Some(kflags),
        });
        self.pending += 1;
    }

    /// The entry at `offset` has a length that cannot be right: make the
    /// whole published span `[offset, head)` one padding entry and go on
    /// from the head.
    fn resync(&mut self, offset: u32, available: u32, e: EntryError) -> Result<(), RingError> {
        log::warn!(
            "TCMU ring entry at offset {offset:#x}: {e}; skipping {available} bytes to cmd_head"
        );
        let pad = EntryHeader::new(EntryOp::PAD, available, 0);
        self.mem.write_obj(self.at(offset), &pad)?;
        self.slots.push_back(Slot {
            offset,
            len: available,
            cmd: None,
        });
        self.cursor = self.advance(offset, available);
        self.stats.resyncs += 1;
        Ok(())
    }

    /// Reads and validates the command entry of `len` bytes at ring
    /// `offset`. The outer error is a failed access; the inner one a
    /// malformed entry.
    fn read_command(
        &mut self,
        offset: u32,
        len: u32,
        id: u16,
    ) -> Result<Result<RingCommand, EntryError>, RingError> {
        let entry = self.at(offset);
        let mut req = CmdRequest::new_zeroed();
        // `check_entry` guaranteed `len` bytes; a shorter entry than the
        // request is refused by `layout` before any field is used.
        let n = CMD_REQUEST_LEN.min(len as usize);
        self.mem
            .read_at(entry, req.as_mut_bytes().get_mut(..n).unwrap_or(&mut []))?;
        let layout = match req.layout(entry.get(), len) {
            Ok(l) => l,
            Err(e) => return Ok(Err(e)),
        };

        let mut cdb = Cdb {
            bytes: [0; MAX_CDB_LEN],
            len: 0,
        };
        let room = (layout.cdb_room as usize).min(MAX_CDB_LEN);
        let cdb_off = entry.get() + u64::from(layout.cdb_start);
        self.mem
            .read_at(Gpa::new(cdb_off), &mut cdb.bytes[..room])?;
        let need = tcmu::cdb_len(cdb.bytes[0], cdb.bytes[7]);
        if need > room {
            return Ok(Err(EntryError::CdbPastEntry {
                cdb_off,
                cdb_len: need,
            }));
        }
        // At most MAX_CDB_LEN (263).
        cdb.len = need as u16;

        let mut data = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(SPARE_RANGES));
        data.clear();
        // One allocation at most, and none once the spare vectors have
        // grown to the commands' sizes.
        data.reserve(layout.iov_cnt.min(MAX_RESERVE) as usize);
        let mut chunk = [Iovec::new_zeroed(); IOV_CHUNK];
        let mut index = 0u32;
        let mut at = entry + CMD_REQUEST_LEN as u64;
        while index < layout.iov_cnt {
            let n = ((layout.iov_cnt - index) as usize).min(IOV_CHUNK);
            self.mem.read_at(at, chunk[..n].as_mut_bytes())?;
            for iov in &chunk[..n] {
                match iov.check(index, self.data_start, self.data_end) {
                    Ok((base, len)) => data.push(GpaRange::new(Gpa::new(base), len)),
                    Err(e) => {
                        self.spare.push(data);
                        return Ok(Err(e));
                    }
                }
                index += 1;
            }
            at += (n * IOVEC_LEN) as u64;
        }
        Ok(Ok(RingCommand { id, cdb, data }))
    }

    /// Returns a finished command's buffers for reuse by later fetches.
    pub fn recycle(&mut self, cmd: RingCommand) {
        if self.spare.len() < 256 {
            self.spare.push(cmd.data);
        }
    }

    /// Completes command `id` with `result`: writes the id and the
    /// response (status, fixed-format sense, `read_len`) into the oldest
    /// fetched entry still waiting for a completion, moves the tail past
    /// it and past the padding behind it, and publishes the tail. `true`
    /// when the tail moved (ring the kernel's doorbell); `false` when no
    /// fetched command is waiting (nothing written), or the map could not
    /// be written.
    pub fn complete(&mut self, id: u16, result: &ScsiResult) -> bool {
        let mut flags = UFlags::new();
        let mut read_len = 0;
        if self.flags.read_len() && result.tx > 0 {
            flags.set_read_len(true);
            read_len = u32::try_from(result.tx).unwrap_or(u32::MAX);
        }
        let fixed = result.sense.map(|s| s.to_fixed());
        let sense = fixed.as_ref().map_or(&[][..], |f| f.as_bytes());
        match self.write_completion(id, flags, result.status, read_len, sense) {
            Ok(moved) => moved,
            Err(e) => {
                log::error!("TCMU completion of command {id} failed: {e}");
                false
            }
        }
    }

    fn write_completion(
        &mut self,
        id: u16,
        uflags: UFlags,
        status: ScsiStatus,
        read_len: u32,
        sense: &[u8],
    ) -> Result<bool, RingError> {
        if self.pending == 0 {
            return Ok(false);
        }
        let mut moved = self.release_skips();
        if let Some(slot) = self.slots.front().copied()
            && let Some(kflags) = slot.cmd
        {
            let mut rsp = CmdResponse::new_zeroed();
            rsp.hdr.cmd_id.set(id);
            rsp.hdr.kflags = kflags;
            rsp.hdr.uflags = uflags;
            rsp.scsi_status = status;
            rsp.read_len.set(read_len);
            let n = sense.len().min(rsp.sense_buffer.len());
            rsp.sense_buffer[..n].copy_from_slice(&sense[..n]);
            // Everything after `len_op`, which stays the entry's own.
            let bytes = &rsp.as_bytes()[4..];
            self.mem.write_at(self.at(slot.offset) + 4, bytes)?;
            self.slots.pop_front();
            self.pending -= 1;
            self.tail = self.advance(self.tail, slot.len);
            self.stats.completions += 1;
            moved = true;
            self.release_skips();
        }
        if moved {
            self.publish_tail()?;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parastor_emulated::tcmu::{Completion, DataDir, EntryBytes, TcmuConfig, TcmuKernel};
    use parastor_hw::tcmu::{MailboxFlags, TmrType};
    use zerocopy::little_endian::{U32, U64};

    const READ10_8: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];
    const TUR: [u8; 6] = [0; 6];

    fn setup(config: TcmuConfig) -> (TcmuKernel, CommandRing) {
        let k = TcmuKernel::new(config).unwrap();
        let ring = CommandRing::open(k.memory().clone(), k.map_len()).unwrap();
        (k, ring)
    }

    fn small() -> (TcmuKernel, CommandRing) {
        setup(TcmuConfig::small(4096, 64))
    }

    fn fetch(ring: &mut CommandRing) -> Vec<RingCommand> {
        let mut out = Vec::new();
        ring.fetch(&mut out).unwrap();
        out
    }

    fn collect(k: &mut TcmuKernel) -> Vec<Completion> {
        let mut out = Vec::new();
        k.collect(&mut out);
        assert!(!k.is_broken(), "the handler broke the ring");
        out
    }

    fn sense_key_asc(c: &Completion) -> (u8, u8) {
        let s = c.sense.expect("sense with CHECK CONDITION");
        (s[2] & 0xF, s[12])
    }

    #[test]
    fn open_validates_the_mailbox() {
        let k = TcmuKernel::new(TcmuConfig::small(4096, 4)).unwrap();
        let mem = k.memory();
        let len = k.map_len();
        let reopen = || CommandRing::open(mem.clone(), len).map(|_| ()).unwrap_err();
        let good: Mailbox = mem.read_obj(Gpa::ZERO).unwrap();
        let with = |f: &dyn Fn(&mut Mailbox)| {
            let mut mb = good;
            f(&mut mb);
            mem.write_obj(Gpa::ZERO, &mb).unwrap();
        };
        with(&|mb| mb.version.set(1));
        assert_eq!(reopen(), RingError::Version(1));
        with(&|mb| mb.flags = MailboxFlags::new().with_read_len(true));
        assert_eq!(reopen(), RingError::NoOutOfOrderCompletion);
        for (off, size) in [
            (64, 3968),
            (128, 3970),
            (132, 3960),
            (128, 200),
            (128, u32::MAX - 64),
        ] {
            with(&|mb| {
                mb.cmdr_off.set(off);
                mb.cmdr_size.set(size);
            });
            assert!(
                matches!(reopen(), RingError::BadRing { .. }),
                "{off} {size}"
            );
        }
        with(&|mb| mb.cmd_tail.set(4));
        assert!(matches!(reopen(), RingError::BadTail { tail: 4, .. }));
        with(&|mb| mb.cmd_tail.set(3968));
        assert!(matches!(reopen(), RingError::BadTail { tail: 3968, .. }));
        with(&|_| {});
        assert!(matches!(
            CommandRing::open(mem.clone(), len + 1).unwrap_err(),
            RingError::MapTooSmall { .. }
        ));
        assert!(CommandRing::open(mem.clone(), len).is_ok());
    }

    #[test]
    fn a_read_moves_its_data_and_reports_read_len() {
        let (mut k, mut ring) = small();
        let id = k.post(&READ10_8, DataDir::In(4096)).unwrap();
        let cmds = fetch(&mut ring);
        assert_eq!(cmds.len(), 1);
        let cmd = &cmds[0];
        assert_eq!(cmd.id, id);
        assert_eq!(cmd.cdb.as_bytes(), READ10_8);
        assert_eq!(cmd.data_len(), 4096);
        let (start, end) = ring.data_area();
        assert!(
            cmd.data
                .iter()
                .all(|r| r.gpa.get() >= start && r.gpa.get() + r.len <= end)
        );
        // The handler writes the data into the iovecs, then completes.
        let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        ring.memory().write_at(cmd.data[0].gpa, &pattern).unwrap();
        assert_eq!(ring.pending(), 1);
        assert!(ring.complete(id, &ScsiResult::good(4096)));
        assert_eq!(ring.pending(), 0);
        let done = collect(&mut k);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].id, id);
        assert_eq!(done[0].status, ScsiStatus::GOOD);
        assert_eq!(done[0].read_len, Some(4096));
        assert_eq!(done[0].data_in, pattern);
        assert!(k.in_flight().is_empty());
    }

    #[test]
    fn a_short_transfer_is_a_residual_through_read_len() {
        let (mut k, mut ring) = small();
        // INQUIRY with allocation length 96; the device returns 36 bytes.
        let id = k.post(&[0x12, 0, 0, 0, 96, 0], DataDir::In(96)).unwrap();
        let cmd = fetch(&mut ring).remove(0);
        ring.memory()
            .write_at(cmd.data[0].gpa, &[0xAB; 36])
            .unwrap();
        assert!(ring.complete(id, &ScsiResult::good(36)));
        let done = collect(&mut k);
        assert_eq!(done[0].read_len, Some(36));
        assert_eq!(done[0].data_in, vec![0xAB; 36]);

        // Without CAP_READ_LEN the ring does not claim a length.
        let mut config = TcmuConfig::small(4096, 8);
        config.flags.set_read_len(false);
        let (mut k, mut ring) = setup(config);
        let id = k.post(&[0x12, 0, 0, 0, 96, 0], DataDir::In(96)).unwrap();
        fetch(&mut ring);
        assert!(ring.complete(id, &ScsiResult::good(36)));
        let done = collect(&mut k);
        assert_eq!(done[0].read_len, None);
        assert_eq!(done[0].data_in.len(), 96);
    }

    #[test]
    fn check_condition_carries_fixed_sense() {
        let (mut k, mut ring) = small();
        let id = k.post(&READ10_8, DataDir::In(4096)).unwrap();
        fetch(&mut ring);
        let sense = SenseData::illegal(AdditionalSense::LBA_OUT_OF_RANGE);
        assert!(ring.complete(id, &ScsiResult::check(sense)));
        let done = collect(&mut k);
        assert_eq!(done[0].status, ScsiStatus::CHECK_CONDITION);
        let s = done[0].sense.unwrap();
        assert_eq!((s[0], s[2], s[12], s[13]), (0x70, 0x5, 0x21, 0x00));
        assert_eq!(done[0].read_len, None);
    }

    #[test]
    fn completions_out_of_order_go_into_the_oldest_entry() {
        let (mut k, mut ring) = small();
        let ids: Vec<u16> = (0..3)
            .map(|_| k.post(&TUR, DataDir::None).unwrap())
            .collect();
        assert_eq!(fetch(&mut ring).len(), 3);
        // The last one completes first: its id lands in the first entry,
        // and the tail covers exactly that entry.
        assert!(ring.complete(ids[2], &ScsiResult::good(0)));
        let tail = k
            .memory()
            .load_u32(Gpa::new(CMD_TAIL_OFFSET), Ordering::Acquire)
            .unwrap();
        assert_eq!(tail, 120);
        let first: EntryHeader = k.memory().read_obj(Gpa::new(128)).unwrap();
        assert_eq!(first.cmd_id.get(), ids[2]);
        assert_eq!((first.op(), first.entry_len()), (EntryOp::CMD, 120));
        assert_eq!(
            collect(&mut k).iter().map(|c| c.id).collect::<Vec<_>>(),
            [ids[2]]
        );
        assert!(ring.complete(ids[0], &ScsiResult::good(0)));
        assert!(ring.complete(ids[1], &ScsiResult::good(0)));
        assert_eq!(
            collect(&mut k).iter().map(|c| c.id).collect::<Vec<_>>(),
            [ids[0], ids[1]]
        );
        // Nothing waiting: nothing written, tail unchanged.
        assert!(!ring.complete(ids[0], &ScsiResult::good(0)));
        assert_eq!(ring.stats().completions, 3);
    }

    #[test]
    fn many_commands_wrap_the_ring_with_padding() {
        // A 1 KiB ring with 8 KiB reads of one iovec (128-byte entries) and
        // TURs (120 bytes): padding at most wraps.
        let (mut k, mut ring) = setup(TcmuConfig::small(1024 + 128, 32));
        let mut rng = fastrand_lite(7);
        let mut posted = std::collections::HashMap::new();
        let mut waiting: Vec<RingCommand> = Vec::new();
        let mut done = Vec::new();
        for round in 0..400u32 {
            let dir = if round % 3 == 0 {
                DataDir::None
            } else {
                DataDir::In(8192)
            };
            let cdb: &[u8] = if round % 3 == 0 { &TUR } else { &READ10_8 };
            match k.post(cdb, dir) {
                Ok(id) => {
                    assert!(
                        posted.insert(id, round).is_none(),
                        "id {id} reused while in flight"
                    );
                }
                Err(_) => {
                    // Flow control: complete some, in a shuffled order.
                    waiting.extend(fetch(&mut ring));
                    let n = waiting.len().div_ceil(2);
                    for _ in 0..n {
                        let i = (rng() as usize) % waiting.len();
                        let cmd = waiting.swap_remove(i);
                        let tx = cmd.data_len() as usize;
                        assert!(ring.complete(cmd.id, &ScsiResult::good(tx)));
                        ring.recycle(cmd);
                    }
                    for c in collect(&mut k) {
                        assert!(posted.remove(&c.id).is_some());
                        done.push(c);
                    }
                }
            }
        }
        waiting.extend(fetch(&mut ring));
        for cmd in waiting.drain(..) {
            assert!(ring.complete(cmd.id, &ScsiResult::good(cmd.data_len() as usize)));
        }
        for c in collect(&mut k) {
            assert!(posted.remove(&c.id).is_some());
            done.push(c);
        }
        assert!(posted.is_empty(), "never completed: {posted:?}");
        assert!(done.len() > 300);
        assert!(ring.stats().pads > 5, "{:?}", ring.stats());
        assert_eq!(ring.stats().commands, done.len() as u64);
        assert_eq!(k.last_cleaned(), k.head());
    }

    /// A tiny deterministic generator (xorshift) for shuffles.
    fn fastrand_lite(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        }
    }

    /// Posts a command whose entry `edit` corrupts, then a good one;
    /// the corrupt one is refused with HARDWARE ERROR / INTERNAL TARGET
    /// FAILURE, the good one is served.
    fn refused(edit: impl FnOnce(EntryBytes<'_>)) {
        let (mut k, mut ring) = small();
        let bad = k.post_with(&READ10_8, DataDir::In(4096), edit).unwrap();
        let good = k.post(&READ10_8, DataDir::In(4096)).unwrap();
        let mut out = Vec::new();
        let f = ring.fetch(&mut out).unwrap();
        assert_eq!((f.commands, f.refused, f.notify), (1, 1, true));
        assert_eq!(out[0].id, good);
        let done = collect(&mut k);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].id, bad);
        assert_eq!(done[0].status, ScsiStatus::CHECK_CONDITION);
        assert_eq!(sense_key_asc(&done[0]), (0x4, 0x44));
        assert!(ring.complete(good, &ScsiResult::good(4096)));
        assert_eq!(collect(&mut k)[0].id, good);
        assert_eq!(ring.stats().malformed, 1);
    }

    fn set_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(U32::new(v).as_bytes());
    }

    fn set_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(U64::new(v).as_bytes());
    }

    #[test]
    fn malformed_commands_are_refused_and_the_ring_goes_on() {
        // cdb_off outside the entry (in the mailbox), inside the iovecs,
        // past the entry.
        refused(|e| set_u64(e.bytes, 24, 0));
        refused(|e| set_u64(e.bytes, 24, e.map_offset + 48));
        refused(|e| set_u64(e.bytes, 24, e.map_offset + 4096));
        // A CDB whose opcode says 16 bytes in a 16-byte slot at its end
        // leaves room; one that says more (variable length) does not.
        refused(|e| {
            let at = e.bytes.len() - 16;
            e.bytes[at] = 0x7F;
            e.bytes[at + 7] = 200;
        });
        // An iovec outside the data area: in the ring, past the map's end,
        // wrapping.
        refused(|e| set_u64(e.bytes, 48, 128));
        refused(|e| set_u64(e.bytes, 48, e.data_area.1 - 100));
        refused(|e| {
            set_u64(e.bytes, 48, u64::MAX - 10);
        });
        // Iovec counts that do not fit, bidirectional and protection iovecs.
        refused(|e| set_u32(e.bytes, 8, 2));
        refused(|e| set_u32(e.bytes, 8, u32::MAX));
        refused(|e| set_u32(e.bytes, 12, 1));
        refused(|e| set_u32(e.bytes, 16, u32::MAX));
    }

    #[test]
    fn an_unknown_entry_kind_is_answered_unknown_op() {
        let (mut k, mut ring) = small();
        let id = k
            .post_with(&TUR, DataDir::None, |e| e.bytes[0] |= 0x3)
            .unwrap();
        let good = k.post(&TUR, DataDir::None).unwrap();
        let mut out = Vec::new();
        let f = ring.fetch(&mut out).unwrap();
        assert_eq!((f.commands, f.refused, f.notify), (1, 1, true));
        let done = collect(&mut k);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].id, id);
        assert!(done[0].unknown_op);
        assert_eq!(done[0].status, ScsiStatus::CHECK_CONDITION);
        assert!(ring.complete(good, &ScsiResult::good(0)));
        assert_eq!(collect(&mut k)[0].id, good);
        assert_eq!(ring.stats().unknown, 1);
    }

    /// An entry whose length cannot be walked: the ring resynchronises at
    /// the head, the lost command stays with the kernel (its timeout), and
    /// later commands are served.
    fn resynced(len_op: u32) {
        let (mut k, mut ring) = small();
        let first = k.post(&TUR, DataDir::None).unwrap();
        let lost = k
            .post_with(&TUR, DataDir::None, |e| set_u32(e.bytes, 0, len_op))
            .unwrap();
        let also_lost = k.post(&TUR, DataDir::None).unwrap();
        let mut out = Vec::new();
        let f = ring.fetch(&mut out).unwrap();
        assert_eq!((f.commands, f.refused), (1, 0));
        assert_eq!(out[0].id, first);
        assert_eq!(ring.stats().resyncs, 1);
        let after = k.post(&TUR, DataDir::None).unwrap();
        out.extend(fetch(&mut ring));
        assert_eq!(out.iter().map(|c| c.id).collect::<Vec<_>>(), [first, after]);
        for c in &out {
            assert!(ring.complete(c.id, &ScsiResult::good(0)));
        }
        let done = collect(&mut k);
        assert_eq!(
            done.iter().map(|c| c.id).collect::<Vec<_>>(),
            [first, after]
        );
        assert_eq!(k.in_flight(), [lost, also_lost]);
        assert_eq!(k.last_cleaned(), k.head());
    }

    #[test]
    fn unwalkable_entry_lengths_resync_at_the_head() {
        resynced(EntryOp::CMD.get().into()); // zero length
        resynced(u32::from(EntryOp::PAD.get())); // zero-length padding
        resynced(0x1000_0001); // past the ring's end
        resynced(512 | 1); // past the head (two 120-byte entries published)
    }

    #[test]
    fn tmr_entries_are_stepped_over() {
        let (mut k, mut ring) = small();
        let a = k.post(&TUR, DataDir::None).unwrap();
        k.post_tmr(TmrType::ABORT_TASK, &[a]).unwrap();
        let b = k.post(&TUR, DataDir::None).unwrap();
        let cmds = fetch(&mut ring);
        assert_eq!(cmds.iter().map(|c| c.id).collect::<Vec<_>>(), [a, b]);
        assert_eq!(ring.stats().tmrs, 1);
        assert!(ring.complete(b, &ScsiResult::good(0)));
        assert!(ring.complete(a, &ScsiResult::good(0)));
        assert_eq!(collect(&mut k).len(), 2);
        assert_eq!(k.last_cleaned(), k.head());
        // A notification alone: its space comes back with the fetch.
        k.post_tmr(TmrType::LUN_RESET, &[]).unwrap();
        let f = ring.fetch(&mut Vec::new()).unwrap();
        assert_eq!((f.commands, f.notify), (0, true));
        assert_eq!(collect(&mut k).len(), 0);
        assert_eq!(k.last_cleaned(), k.head());
        assert_eq!(ring.stats().tmrs, 2);
    }

    #[test]
    fn a_head_outside_the_ring_is_an_error() {
        let (k, mut ring) = small();
        for head in [3, 4096] {
            k.memory()
                .store_u32(Gpa::new(CMD_HEAD_OFFSET), head, Ordering::Release)
                .unwrap();
            assert!(matches!(
                ring.fetch(&mut Vec::new()),
                Err(RingError::BadHead { .. })
            ));
        }
    }

    #[test]
    fn a_new_handler_fetches_what_the_last_one_left() {
        let (mut k, mut ring) = small();
        let a = k.post(&TUR, DataDir::None).unwrap();
        let b = k.post(&TUR, DataDir::None).unwrap();
        assert_eq!(fetch(&mut ring).len(), 2);
        assert!(ring.complete(a, &ScsiResult::good(0)));
        drop(ring);
        let mut again = CommandRing::open(k.memory().clone(), k.map_len()).unwrap();
        let cmds = fetch(&mut again);
        assert_eq!(cmds.iter().map(|c| c.id).collect::<Vec<_>>(), [b]);
        assert!(again.complete(b, &ScsiResult::good(0)));
        assert_eq!(
            collect(&mut k).iter().map(|c| c.id).collect::<Vec<_>>(),
            [a, b]
        );
    }
}
