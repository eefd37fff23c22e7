//! The kernel's side of TCMU, as a model: what Linux's LIO target
//! (`drivers/target/target_core_user.c`) does with a TCMU backstore's
//! shared map, so the handler's command ring can be tested, fuzzed and
//! measured in one process.
//!
//! [`TcmuKernel`] lays out a mailbox, a command ring and a data area in a
//! memfd-backed [`GuestRam`] (address = offset in the map, as the handler
//! sees a `uio` map) the way the kernel does: the ring right after the
//! 128-byte mailbox, the data area right after the ring, cut into data
//! blocks. It posts commands as the kernel queues them
//! ([`TcmuKernel::post`]):
//!
//! - data blocks are taken lowest-free first from a bitmap; consecutive
//!   blocks share one iovec (so a command has one iovec per run of
//!   blocks), and the iovecs' bases are offsets in the map;
//! - an entry is `max(48 + 16 × iovecs, 112)` bytes plus the CDB rounded
//!   up to 8; the CDB sits right after the iovecs and `cdb_off` is its
//!   offset in the map; a command larger than half the ring is refused;
//! - there must be room for the entry (and, if it does not fit before the
//!   ring's end, for a padding entry up to the end first), with one byte
//!   always left free so a full ring is told from an empty one; otherwise
//!   the command waits ([`PostError::RingFull`] / [`PostError::DataFull`]:
//!   collect completions and retry, as the kernel does when the handler
//!   rings);
//! - command ids are the lowest free id from 1 (the kernel's id
//!   allocator), so ids are reused as soon as they complete;
//! - data-out bytes are copied into the blocks before `cmd_head` is
//!   published with release ordering, and the handler's doorbell is rung.
//!
//! [`TcmuKernel::collect`] is `tcmu_handle_completions`: from the last
//! cleaned position up to `cmd_tail` (loaded with acquire ordering), step
//! over padding and TMR entries by their length, and for every other entry
//! look the command up by the `cmd_id` written in it — an unknown id breaks
//! the ring, as in the kernel — then read the response: UNKNOWN_OP fails
//! the command with CHECK CONDITION, CHECK CONDITION carries the sense
//! buffer, and with `READ_LEN` a data-in command's data is cut to
//! `read_len` (0 meaning all). The data blocks are freed.
//!
//! Hostile-handler checks are the kernel's too: the tail is taken modulo
//! the ring size, and an id that is not in flight marks the ring broken
//! (nothing more is collected or posted).
//!
//! For the handler's robustness tests the model can also write what a
//! correct kernel never would: [`TcmuKernel::post_with`] lets a test
//! corrupt a registered command's entry bytes before they are published,
//! [`TcmuKernel::post_raw`] publishes arbitrary bytes, and
//! [`TcmuKernel::post_tmr`] posts a task-management notification.
//!
//! The capability flags are those of Linux 6.1 (out-of-order completion,
//! `READ_LEN`, TMR, `KEEP_BUF`); the defaults of [`TcmuConfig::linux_6_1`]
//! are its default sizes (an 8 MiB command area, 4 KiB data blocks, a
//! 1 GiB data area); [`TcmuConfig::small`] shrinks them for tests.

use std::collections::HashMap;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use parastor_core::{Gpa, GuestMem, GuestMemoryExt, MemoryError};
use parastor_hw::scsi::ScsiStatus;
use parastor_hw::tcmu::{
    CMD_ENTRY_LEN, CMD_HEAD_OFFSET, CMD_REQUEST_LEN, CMD_TAIL_OFFSET, CmdRequest, CmdResponse,
    ENTRY_ALIGN, EntryHeader, EntryOp, IOVEC_LEN, Iovec, MAILBOX_LEN, MAILBOX_VERSION, Mailbox,
    MailboxFlags, SENSE_BUFFER_LEN, TMR_ENTRY_LEN, TmrEntry, TmrType,
};
use parastor_runtime::{EventFd, block_on, sleep};
use parastor_sys::GuestRam;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromZeros, IntoBytes};

fn mem_err(e: MemoryError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Sizes and capabilities of a modelled TCMU backstore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcmuConfig {
    /// Bytes of the command area: mailbox plus ring (the kernel's
    /// `cmd_ring_size_mb`); the ring is this less [`MAILBOX_LEN`].
    pub cmd_area: u32,
    /// Bytes of one data block (the kernel's page size times
    /// `data_pages_per_blk`).
    pub block_size: u32,
    /// Number of data blocks.
    pub blocks: u32,
    /// Capability flags written into the mailbox.
    pub flags: MailboxFlags,
}

impl TcmuConfig {
    /// Linux 6.1's capability flags: out-of-order completion, `READ_LEN`,
    /// TMR notifications and `KEEP_BUF`.
    pub fn flags_6_1() -> MailboxFlags {
        MailboxFlags::new()
            .with_oooc(true)
            .with_read_len(true)
            .with_tmr(true)
            .with_keep_buf(true)
    }

    /// Linux 6.1's defaults: an 8 MiB command area, 4 KiB blocks, 1 GiB of
    /// data.
    pub fn linux_6_1() -> Self {
        TcmuConfig {
            cmd_area: 8 << 20,
            block_size: 4096,
            blocks: 256 * 1024,
            flags: Self::flags_6_1(),
        }
    }

    /// A small map for tests: a `cmd_area`-byte command area and `blocks`
    /// 4 KiB data blocks, with 6.1's flags.
    pub fn small(cmd_area: u32, blocks: u32) -> Self {
        TcmuConfig {
            cmd_area,
            block_size: 4096,
            blocks,
            flags: Self::flags_6_1(),
        }
    }

    /// Total bytes of the map.
    pub fn map_len(&self) -> u64 {
        u64::from(self.cmd_area) + u64::from(self.block_size) * u64::from(self.blocks)
    }
}

/// A command's data transfer, as the kernel's `se_cmd` has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataDir {
    /// No data.
    None,
    /// Data-in (device to initiator) of this many bytes.
    In(u32),
    /// Data-out (initiator to device): these bytes.
    Out(Vec<u8>),
}

impl DataDir {
    fn len(&self) -> u64 {
        match self {
            DataDir::None => 0,
            DataDir::In(n) => u64::from(*n),
            DataDir::Out(b) => b.len() as u64,
        }
    }
}

/// Why a command could not be posted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PostError {
    /// Not enough ring space now: collect completions and retry.
    RingFull,
    /// Not enough free data blocks now: collect completions and retry.
    DataFull,
    /// The command can never fit (entry over half the ring, data over the
    /// data area, or every id in flight).
    TooBig,
    /// The handler broke the ring: nothing is posted any more.
    Broken,
}

impl fmt::Display for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PostError::RingFull => "no command ring space",
            PostError::DataFull => "no data area space",
            PostError::TooBig => "command too big for this backstore",
            PostError::Broken => "ring broken by the handler",
        })
    }
}

impl std::error::Error for PostError {}

/// A completed command, as the kernel hands it back to the target core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The command's id.
    pub id: u16,
    /// The status the target core completes with.
    pub status: ScsiStatus,
    /// The handler set UNKNOWN_OP.
    pub unknown_op: bool,
    /// The sense buffer, with CHECK CONDITION.
    pub sense: Option<[u8; SENSE_BUFFER_LEN]>,
    /// `read_len` if the handler reported a valid one for a data-in
    /// command.
    pub read_len: Option<u32>,
    /// The data-in bytes gathered back (cut to `read_len`).
    pub data_in: Vec<u8>,
}

struct InFlight {
    blocks: Vec<u32>,
    dir: DataDir,
}

/// What [`TcmuKernel::post_with`] lets a test change before publishing.
pub struct EntryBytes<'a> {
    /// The entry, from its header to the end of its CDB's padding.
    pub bytes: &'a mut [u8],
    /// Offset of the entry in the map.
    pub map_offset: u64,
    /// The data area: `[start, end)` offsets in the map.
    pub data_area: (u64, u64),
}

/// The kernel's side of one TCMU backstore; see the [module docs](self).
pub struct TcmuKernel {
    config: TcmuConfig,
    mem: GuestMem,
    ring_size: u32,
    data_off: u64,
    head: u32,
    last_cleaned: u32,
    free_blocks: Vec<bool>,
    inflight: HashMap<u16, InFlight>,
    broken: bool,
    /// Rung when commands are posted (the handler waits on it).
    to_handler: Arc<EventFd>,
    /// Rung by the handler when it completed commands.
    to_kernel: Arc<EventFd>,
}

impl fmt::Debug for TcmuKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcmuKernel")
            .field("config", &self.config)
            .field("head", &self.head)
            .field("last_cleaned", &self.last_cleaned)
            .field("inflight", &self.inflight.len())
            .field("broken", &self.broken)
            .finish()
    }
}

impl TcmuKernel {
    /// A new backstore map laid out by `config`, with an empty ring.
    pub fn new(config: TcmuConfig) -> io::Result<TcmuKernel> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        if (config.cmd_area as usize) < MAILBOX_LEN + 2 * CMD_ENTRY_LEN
            || !config.cmd_area.is_multiple_of(ENTRY_ALIGN)
        {
            return Err(invalid("TCMU command area too small or unaligned"));
        }
        if config.block_size == 0 || !config.block_size.is_multiple_of(ENTRY_ALIGN) {
            return Err(invalid(
                "TCMU data block size must be a non-zero multiple of 8",
            ));
        }
        let len = usize::try_from(config.map_len()).map_err(|_| invalid("TCMU map too big"))?;
        let ram = GuestRam::memfd("tcmu-model", len)?;
        let mem = GuestMem::new(ram);
        let ring_size = config.cmd_area - MAILBOX_LEN as u32;
        let mut mb = Mailbox::new_zeroed();
        mb.version = U16::new(MAILBOX_VERSION);
        mb.flags = config.flags;
        mb.cmdr_off = U32::new(MAILBOX_LEN as u32);
        mb.cmdr_size = U32::new(ring_size);
        mem.write_obj(Gpa::ZERO, &mb).map_err(mem_err)?;
        Ok(TcmuKernel {
            config,
            mem,
            ring_size,
            data_off: u64::from(config.cmd_area),
            head: 0,
            last_cleaned: 0,
            free_blocks: vec![true; config.blocks as usize],
            inflight: HashMap::new(),
            broken: false,
            to_handler: Arc::new(EventFd::new()?),
            to_kernel: Arc::new(EventFd::new()?),
        })
    }

    /// The map, as the handler maps it (address = offset in the map).
    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    /// Bytes of the map.
    pub fn map_len(&self) -> u64 {
        self.config.map_len()
    }

    /// The configuration.
    pub fn config(&self) -> TcmuConfig {
        self.config
    }

    /// Size of the command ring.
    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    /// The kernel's doorbell to the handler: readable after commands were
    /// posted (read 8 bytes to consume).
    pub fn to_handler(&self) -> &Arc<EventFd> {
        &self.to_handler
    }

    /// The handler's doorbell to the kernel: signal it after completing.
    pub fn to_kernel(&self) -> &Arc<EventFd> {
        &self.to_kernel
    }

    /// Ids of commands posted and not yet collected.
    pub fn in_flight(&self) -> Vec<u16> {
        let mut ids: Vec<u16> = self.inflight.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Whether the handler broke the ring (completed an id not in flight).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The ring's head (where the next entry goes).
    pub fn head(&self) -> u32 {
        self.head
    }

    /// The ring position up to which completions were collected.
    pub fn last_cleaned(&self) -> u32 {
        self.last_cleaned
    }

    fn at(&self, pos: u32) -> Gpa {
        Gpa::new(MAILBOX_LEN as u64 + u64::from(pos))
    }

    fn used(&self) -> u32 {
        if self.head >= self.last_cleaned {
            self.head - self.last_cleaned
        } else {
            self.ring_size - self.last_cleaned + self.head
        }
    }

    /// Whether an entry of `size` bytes (plus a padding entry if it does
    /// not fit before the ring's end) fits, one byte always left free.
    fn ring_space(&self, size: u32) -> bool {
        let to_end = self.ring_size - self.head;
        let needed = if to_end >= size { size } else { size + to_end };
        let free = self.ring_size - self.used() - 1;
        free >= needed
    }

    fn insert_padding(&mut self, size: u32) -> io::Result<()> {
        let to_end = self.ring_size - self.head;
        if to_end < size {
            let pad = EntryHeader::new(EntryOp::PAD, to_end, 0);
            self.mem
                .write_obj(self.at(self.head), &pad)
                .map_err(mem_err)?;
            self.publish_head(0)?;
        }
        Ok(())
    }

    fn publish_head(&mut self, head: u32) -> io::Result<()> {
        self.head = head;
        self.mem
            .store_u32(Gpa::new(CMD_HEAD_OFFSET), head, Ordering::Release)
            .map_err(mem_err)
    }

    fn lowest_free_id(&self) -> Option<u16> {
        (1..=u16::MAX).find(|id| !self.inflight.contains_key(id))
    }

    /// Posts a command: `cdb` with data `dir`; returns its id. The
    /// handler's doorbell is rung.
    pub fn post(&mut self, cdb: &[u8], dir: DataDir) -> Result<u16, PostError> {
        self.post_with(cdb, dir, |_| {})
    }

    /// [`Self::post`], but `edit` may change the entry's bytes (a
    /// registered command's entry, corrupted as a test wants) before the
    /// head is published.
    pub fn post_with(
        &mut self,
        cdb: &[u8],
        dir: DataDir,
        edit: impl FnOnce(EntryBytes<'_>),
    ) -> Result<u16, PostError> {
        if self.broken {
            return Err(PostError::Broken);
        }
        let bs = u64::from(self.config.block_size);
        let data_len = dir.len();
        let nblocks = data_len.div_ceil(bs);
        if nblocks > u64::from(self.config.blocks) {
            return Err(PostError::TooBig);
        }
        let free: Vec<u32> = self
            .free_blocks
            .iter()
            .enumerate()
            .filter(|(_, f)| **f)
            .map(|(i, _)| i as u32)
            .take(nblocks as usize)
            .collect();
        if (free.len() as u64) < nblocks {
            return Err(PostError::DataFull);
        }
        // One iovec per run of consecutive blocks.
        let mut iovs: Vec<(u64, u64)> = Vec::new();
        let mut left = data_len;
        let mut prev: Option<u32> = None;
        for &b in &free {
            let n = left.min(bs);
            left -= n;
            match (prev, iovs.last_mut()) {
                (Some(p), Some(last)) if p + 1 == b => last.1 += n,
                _ => iovs.push((self.data_off + u64::from(b) * bs, n)),
            }
            prev = Some(b);
        }
        let base = (CMD_REQUEST_LEN + IOVEC_LEN * iovs.len()).max(CMD_ENTRY_LEN);
        let size = base + cdb.len().next_multiple_of(ENTRY_ALIGN as usize);
        if size > (self.ring_size / 2) as usize {
            return Err(PostError::TooBig);
        }
        let size = size as u32;
        if !self.ring_space(size) {
            return Err(PostError::RingFull);
        }
        let id = self.lowest_free_id().ok_or(PostError::TooBig)?;
        self.insert_padding(size).map_err(|_| PostError::Broken)?;

        let entry_off = MAILBOX_LEN as u64 + u64::from(self.head);
        let mut bytes = vec![0u8; size as usize];
        let mut req = CmdRequest::new_zeroed();
        req.hdr = EntryHeader::new(EntryOp::CMD, size, id);
        req.iov_cnt = U32::new(iovs.len() as u32);
        req.cdb_off = U64::new(entry_off + base as u64);
        bytes[..CMD_REQUEST_LEN].copy_from_slice(req.as_bytes());
        for (i, (b, l)) in iovs.iter().enumerate() {
            let iov = Iovec {
                base: U64::new(*b),
                len: U64::new(*l),
            };
            let at = CMD_REQUEST_LEN + i * IOVEC_LEN;
            bytes[at..at + IOVEC_LEN].copy_from_slice(iov.as_bytes());
        }
        bytes[base..base + cdb.len()].copy_from_slice(cdb);
        edit(EntryBytes {
            bytes: &mut bytes,
            map_offset: entry_off,
            data_area: (self.data_off, self.config.map_len()),
        });

        if let DataDir::Out(data) = &dir {
            let mut at = 0usize;
            for (b, l) in &iovs {
                let l = *l as usize;
                self.mem
                    .write_at(Gpa::new(*b), &data[at..at + l])
                    .map_err(|_| PostError::Broken)?;
                at += l;
            }
        }
        self.mem
            .write_at(Gpa::new(entry_off), &bytes)
            .map_err(|_| PostError::Broken)?;
        for &b in &free {
            self.free_blocks[b as usize] = false;
        }
        self.inflight.insert(id, InFlight { blocks: free, dir });
        let head = (self.head + size) % self.ring_size;
        self.publish_head(head).map_err(|_| PostError::Broken)?;
        self.ring_handler();
        Ok(id)
    }

    /// Publishes `bytes` as-is at the head and moves the head by
    /// `advance` bytes (no padding, no command registered): for entries a
    /// correct kernel never writes. Returns the ring offset written at.
    pub fn post_raw(&mut self, bytes: &[u8], advance: u32) -> io::Result<u32> {
        let at = self.head;
        let room = (self.ring_size - at) as usize;
        let n = bytes.len().min(room);
        self.mem
            .write_at(self.at(at), &bytes[..n])
            .map_err(mem_err)?;
        self.publish_head((at + advance) % self.ring_size)?;
        self.ring_handler();
        Ok(at)
    }

    /// Posts a task-management notification naming `ids`.
    pub fn post_tmr(&mut self, tmr_type: TmrType, ids: &[u16]) -> Result<(), PostError> {
        if self.broken {
            return Err(PostError::Broken);
        }
        let size = (TMR_ENTRY_LEN + 2 * ids.len()).next_multiple_of(ENTRY_ALIGN as usize);
        if size > (self.ring_size / 2) as usize {
            return Err(PostError::TooBig);
        }
        let size = size as u32;
        if !self.ring_space(size) {
            return Err(PostError::RingFull);
        }
        self.insert_padding(size).map_err(|_| PostError::Broken)?;
        let mut bytes = vec![0u8; size as usize];
        let mut tmr = TmrEntry::new_zeroed();
        tmr.hdr = EntryHeader::new(EntryOp::TMR, size, 0);
        tmr.tmr_type = tmr_type;
        tmr.cmd_cnt = U32::new(ids.len() as u32);
        bytes[..TMR_ENTRY_LEN].copy_from_slice(tmr.as_bytes());
        for (i, id) in ids.iter().enumerate() {
            let at = TMR_ENTRY_LEN + 2 * i;
            bytes[at..at + 2].copy_from_slice(&id.to_le_bytes());
        }
        self.mem
            .write_at(self.at(self.head), &bytes)
            .map_err(|_| PostError::Broken)?;
        let head = (self.head + size) % self.ring_size;
        self.publish_head(head).map_err(|_| PostError::Broken)?;
        self.ring_handler();
        Ok(())
    }

    fn ring_handler(&self) {
        // An eventfd signal only fails on a closed descriptor, which the
        // model owns.
        let _ = self.to_handler.signal();
    }

    /// Collects the completions the handler has published, as
    /// `tcmu_handle_completions` does, appending them to `out`; returns
    /// how many. Stops (and marks the ring broken) at an id not in flight.
    pub fn collect(&mut self, out: &mut Vec<Completion>) -> usize {
        if self.broken {
            return 0;
        }
        let Ok(tail) = self
            .mem
            .load_u32(Gpa::new(CMD_TAIL_OFFSET), Ordering::Acquire)
        else {
            self.broken = true;
            return 0;
        };
        let tail = tail % self.ring_size;
        let mut n = 0;
        while self.last_cleaned != tail {
            let Ok(rsp) = self.read_slot(self.last_cleaned) else {
                self.broken = true;
                break;
            };
            let op = rsp.hdr.op();
            let len = rsp.hdr.entry_len();
            if op != EntryOp::PAD && op != EntryOp::TMR {
                let id = rsp.hdr.cmd_id.get();
                let Some(cmd) = self.inflight.remove(&id) else {
                    self.broken = true;
                    break;
                };
                out.push(self.complete(id, cmd, &rsp));
                n += 1;
            }
            if len == 0 {
                // The kernel would spin here forever; the model stops.
                self.broken = true;
                break;
            }
            self.last_cleaned = ((u64::from(self.last_cleaned) + u64::from(len))
                % u64::from(self.ring_size)) as u32;
        }
        n
    }

    /// The response-sized view of the entry at ring position `pos` (up to
    /// the ring's end when shorter, as the kernel flushes).
    fn read_slot(&self, pos: u32) -> Result<CmdResponse, MemoryError> {
        let mut rsp = CmdResponse::new_zeroed();
        let n = ((self.ring_size - pos) as usize).min(CMD_ENTRY_LEN);
        self.mem
            .read_at(self.at(pos), &mut rsp.as_mut_bytes()[..n])?;
        Ok(rsp)
    }

    fn complete(&mut self, id: u16, cmd: InFlight, rsp: &CmdResponse) -> Completion {
        for &b in &cmd.blocks {
            self.free_blocks[b as usize] = true;
        }
        let mut done = Completion {
            id,
            status: rsp.scsi_status,
            unknown_op: false,
            sense: None,
            read_len: None,
            data_in: Vec::new(),
        };
        if rsp.hdr.uflags.unknown_op() {
            done.unknown_op = true;
            done.status = ScsiStatus::CHECK_CONDITION;
            return done;
        }
        let mut read_len = cmd.dir.len();
        let data_in = matches!(cmd.dir, DataDir::In(_));
        let read_len_valid = data_in && rsp.hdr.uflags.read_len() && rsp.read_len.get() != 0;
        if read_len_valid {
            read_len = read_len.min(u64::from(rsp.read_len.get()));
            done.read_len = Some(read_len as u32);
        }
        if rsp.scsi_status == ScsiStatus::CHECK_CONDITION {
            done.sense = Some(rsp.sense_buffer);
            if !read_len_valid {
                return done;
            }
        }
        if data_in {
            let bs = u64::from(self.config.block_size);
            let mut data = vec![0u8; read_len as usize];
            for (i, chunk) in data.chunks_mut(bs as usize).enumerate() {
                let b = cmd.blocks[i];
                let _ = self
                    .mem
                    .read_at(Gpa::new(self.data_off + u64::from(b) * bs), chunk);
            }
            done.data_in = data;
        }
        done
    }

    /// Waits up to `timeout` for the handler's doorbell; whether it rang.
    pub fn wait_doorbell(&self, timeout: Duration) -> bool {
        let bell = &self.to_kernel;
        if matches!(bell.try_take(), Ok(Some(_))) {
            return true;
        }
        block_on(async {
            let mut timer = pin!(sleep(timeout));
            poll_fn(|cx| {
                if bell.poll_wait(cx).is_ready() {
                    return Poll::Ready(true);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                Poll::Pending
            })
            .await
        })
    }

    /// Collects until `want` more completions arrived, waiting on the
    /// handler's doorbell for at most `timeout` in all; returns how many
    /// arrived.
    pub fn collect_at_least(
        &mut self,
        want: usize,
        timeout: Duration,
        out: &mut Vec<Completion>,
    ) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        let mut got = self.collect(out);
        while got < want && !self.broken {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            self.wait_doorbell((deadline - now).min(Duration::from_millis(20)));
            got += self.collect(out);
        }
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_lay_out_entries_like_the_kernel() {
        let mut k = TcmuKernel::new(TcmuConfig::small(4096, 8)).unwrap();
        let mb: Mailbox = k.memory().read_obj(Gpa::ZERO).unwrap();
        assert_eq!(mb.version.get(), 2);
        assert_eq!(mb.cmdr_off.get(), 128);
        assert_eq!(mb.cmdr_size.get(), 4096 - 128);
        assert!(mb.flags.oooc() && mb.flags.read_len() && mb.flags.tmr() && mb.flags.keep_buf());

        // READ(10) of 8 KiB: two consecutive blocks, one iovec.
        let id = k
            .post(&[0x28, 0, 0, 0, 0, 0, 0, 0, 16, 0], DataDir::In(8192))
            .unwrap();
        assert_eq!(id, 1);
        let req: CmdRequest = k.memory().read_obj(Gpa::new(128)).unwrap();
        assert_eq!(req.hdr.op(), EntryOp::CMD);
        assert_eq!(req.hdr.entry_len(), 112 + 16);
        assert_eq!(req.hdr.cmd_id.get(), 1);
        assert_eq!(req.iov_cnt.get(), 1);
        assert_eq!(req.cdb_off.get(), 128 + 112);
        let iov: Iovec = k.memory().read_obj(Gpa::new(128 + 48)).unwrap();
        assert_eq!((iov.base.get(), iov.len.get()), (4096, 8192));
        assert_eq!(k.head(), 128);
        assert_eq!(
            k.memory()
                .load_u32(Gpa::new(12), Ordering::Acquire)
                .unwrap(),
            128
        );
        assert_eq!(k.to_handler().try_take().unwrap(), Some(1));
        // The next command takes the lowest free id and the next blocks.
        let id2 = k
            .post(
                &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                DataDir::Out(vec![7; 512]),
            )
            .unwrap();
        assert_eq!(id2, 2);
        let iov: Iovec = k.memory().read_obj(Gpa::new(128 + 128 + 48)).unwrap();
        assert_eq!((iov.base.get(), iov.len.get()), (4096 + 8192, 512));
        let mut b = [0u8; 512];
        k.memory().read_at(Gpa::new(4096 + 8192), &mut b).unwrap();
        assert_eq!(b, [7; 512]);
        // Data area full.
        assert_eq!(
            k.post(&[0x28; 10], DataDir::In(6 * 4096)),
            Err(PostError::DataFull)
        );
        assert_eq!(
            k.post(&[0x28; 10], DataDir::In(9 * 4096)),
            Err(PostError::TooBig)
        );
    }

    #[test]
    fn ring_fills_pads_at_the_end_and_breaks_on_unknown_ids() {
        // Ring of 640 bytes; an entry without data is 112 + 8 = 120
        // bytes, so five fit (600) and a sixth would leave no free byte.
        let mut k = TcmuKernel::new(TcmuConfig::small(768, 4)).unwrap();
        for _ in 0..5 {
            k.post(&[0; 6], DataDir::None).unwrap();
        }
        assert_eq!(k.post(&[0; 6], DataDir::None), Err(PostError::RingFull));
        // A handler completes two in order (ids 1, 2) by hand.
        for (pos, id) in [(0u32, 1u16), (120, 2)] {
            let mut rsp: CmdResponse = k.memory().read_obj(k.at(pos)).unwrap();
            rsp.hdr.cmd_id = U16::new(id);
            k.memory().write_obj(k.at(pos), &rsp).unwrap();
        }
        k.memory()
            .store_u32(Gpa::new(64), 240, Ordering::Release)
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(k.collect(&mut out), 2);
        assert_eq!(out.iter().map(|c| c.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(out[0].status, ScsiStatus::GOOD);
        // Head at 600: 40 bytes to the end, so a pad of 40 first and the
        // entry at 0 (with the lowest free id again).
        assert_eq!(k.post(&[0; 6], DataDir::None), Ok(1));
        let pad: EntryHeader = k.memory().read_obj(k.at(600)).unwrap();
        assert_eq!((pad.op(), pad.entry_len()), (EntryOp::PAD, 40));
        assert_eq!(k.head(), 120);
        // Completing an id that is not in flight breaks the ring.
        let mut rsp: CmdResponse = k.memory().read_obj(k.at(240)).unwrap();
        rsp.hdr.cmd_id = U16::new(999);
        k.memory().write_obj(k.at(240), &rsp).unwrap();
        k.memory()
            .store_u32(Gpa::new(64), 360, Ordering::Release)
            .unwrap();
        assert_eq!(k.collect(&mut out), 0);
        assert!(k.is_broken());
        assert_eq!(k.post(&[0; 6], DataDir::None), Err(PostError::Broken));
    }
}
