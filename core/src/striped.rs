//! Striped disks: several equal members interleaved in fixed-size chunks
//! (RAID 0).
//!
//! Chunk `i` of the striped disk lives on member `i mod N`, at member chunk
//! `i / N`. A request is split at chunk boundaries and each piece goes to
//! its member — concurrently for members that do real asynchronous I/O, in
//! place for members that complete inline. Unmap sends one coalesced range
//! to each member; flush fans out to all. Errors say which member failed.
//! The size rules are OpenVMM's `disk_striped`, each with its own error.

use crate::disk::{
    ArenaFuture, Disk, DiskIo, FuturePool, IoFuture, IoOptions, UnmapBehavior, run_inline,
};
use crate::error::DiskError;
use crate::sg::SgList;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::future::Future;
use core::task::Poll;

/// Chunk size used when none is given: 128 KiB.
pub const DEFAULT_CHUNK_BYTES: u32 = 128 * 1024;

/// Why a striped disk could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StripedDiskError {
    /// No members were given.
    EmptyMemberList,
    /// A member's sector size differs from member 0's.
    MismatchedSectorSize {
        /// Index of the member.
        member: usize,
        /// Member 0's sector size.
        expected: u32,
        /// This member's sector size.
        found: u32,
    },
    /// A member's sector count differs from member 0's.
    MismatchedSectorCount {
        /// Index of the member.
        member: usize,
        /// Member 0's sector count.
        expected: u64,
        /// This member's sector count.
        found: u64,
    },
    /// Some members are read-only and others are not.
    MismatchedReadOnly {
        /// Index of the member.
        member: usize,
    },
    /// The chunk size is 0 or not a multiple of the sector size.
    InvalidChunkSize {
        /// The chunk size in bytes.
        chunk_bytes: u32,
        /// The members' sector size.
        sector_size: u32,
    },
    /// The members are smaller than one chunk, so the disk would be empty.
    MemberTooSmall {
        /// Sectors per member.
        member_sectors: u64,
        /// Sectors per chunk.
        chunk_sectors: u64,
    },
    /// The requested size exceeds what the members hold.
    InvalidLogicalSectorCount {
        /// The requested sector count.
        requested: u64,
        /// Sectors available across all members.
        total: u64,
    },
    /// The requested size is not a whole number of stripes.
    NotStripeMultiple {
        /// The requested sector count.
        requested: u64,
        /// Sectors per full stripe (members × chunk sectors).
        stripe_sectors: u64,
    },
}

impl fmt::Display for StripedDiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StripedDiskError::EmptyMemberList => {
                f.write_str("striped disk has no members: expected at least one")
            }
            StripedDiskError::MismatchedSectorSize {
                member,
                expected,
                found,
            } => write!(
                f,
                "member {member} has sector size {found}, but member 0 has {expected}: all members must match"
            ),
            StripedDiskError::MismatchedSectorCount {
                member,
                expected,
                found,
            } => write!(
                f,
                "member {member} has {found} sectors, but member 0 has {expected}: all members must be the same size"
            ),
            StripedDiskError::MismatchedReadOnly { member } => write!(
                f,
                "member {member} differs from member 0 in being read-only: all members must match"
            ),
            StripedDiskError::InvalidChunkSize {
                chunk_bytes,
                sector_size,
            } => write!(
                f,
                "chunk size {chunk_bytes} is invalid: expected a non-zero multiple of the sector size {sector_size}"
            ),
            StripedDiskError::MemberTooSmall {
                member_sectors,
                chunk_sectors,
            } => write!(
                f,
                "members have {member_sectors} sectors, fewer than one chunk of {chunk_sectors} sectors"
            ),
            StripedDiskError::InvalidLogicalSectorCount { requested, total } => write!(
                f,
                "requested size of {requested} sectors exceeds the {total} sectors the members hold"
            ),
            StripedDiskError::NotStripeMultiple {
                requested,
                stripe_sectors,
            } => write!(
                f,
                "requested size of {requested} sectors is not a multiple of the stripe size of {stripe_sectors} sectors"
            ),
        }
    }
}

impl core::error::Error for StripedDiskError {}

/// A striped disk. See the module docs.
pub struct StripedDisk {
    members: Vec<Disk>,
    chunk_sectors: u64,
    sector_count: u64,
    shift: u32,
    inline: bool,
    /// Arenas for the futures of requests' pieces (members that wait).
    futures: FuturePool,
}

/// One piece of a request: `count` sectors at `member_sector` of `member`,
/// starting `offset` sectors into the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    member: usize,
    member_sector: u64,
    offset: u64,
    count: u64,
}

impl StripedDisk {
    /// Stripes `members` in chunks of `chunk_bytes` (default 128 KiB). The
    /// size is `logical_sector_count`, or everything the members hold.
    pub fn new(
        members: Vec<Disk>,
        chunk_bytes: Option<u32>,
        logical_sector_count: Option<u64>,
    ) -> Result<StripedDisk, StripedDiskError> {
        let first = members.first().ok_or(StripedDiskError::EmptyMemberList)?;
        let (ss, count, ro) = (
            first.sector_size(),
            first.sector_count(),
            first.is_read_only(),
        );
        for (member, d) in members.iter().enumerate().skip(1) {
            if d.sector_size() != ss {
                return Err(StripedDiskError::MismatchedSectorSize {
                    member,
                    expected: ss,
                    found: d.sector_size(),
                });
            }
            if d.sector_count() != count {
                return Err(StripedDiskError::MismatchedSectorCount {
                    member,
                    expected: count,
                    found: d.sector_count(),
                });
            }
            if d.is_read_only() != ro {
                return Err(StripedDiskError::MismatchedReadOnly { member });
            }
        }
        let chunk_bytes = chunk_bytes.unwrap_or(DEFAULT_CHUNK_BYTES);
        if chunk_bytes == 0 || !chunk_bytes.is_multiple_of(ss) {
            return Err(StripedDiskError::InvalidChunkSize {
                chunk_bytes,
                sector_size: ss,
            });
        }
        let chunk_sectors = u64::from(chunk_bytes / ss);
        let usable = count / chunk_sectors * chunk_sectors;
        if usable == 0 {
            return Err(StripedDiskError::MemberTooSmall {
                member_sectors: count,
                chunk_sectors,
            });
        }
        let n = members.len() as u64;
        let total = usable.saturating_mul(n);
        let stripe_sectors = chunk_sectors * n;
        let sector_count = logical_sector_count.unwrap_or(total);
        if sector_count > total {
            return Err(StripedDiskError::InvalidLogicalSectorCount {
                requested: sector_count,
                total,
            });
        }
        if sector_count == 0 || !sector_count.is_multiple_of(stripe_sectors) {
            return Err(StripedDiskError::NotStripeMultiple {
                requested: sector_count,
                stripe_sectors,
            });
        }
        Ok(StripedDisk {
            chunk_sectors,
            sector_count,
            shift: ss.trailing_zeros(),
            inline: members.iter().all(Disk::completes_inline),
            members,
            futures: FuturePool::new(),
        })
    }

    /// Sectors per chunk.
    pub fn chunk_sectors(&self) -> u64 {
        self.chunk_sectors
    }

    /// The members.
    pub fn members(&self) -> &[Disk] {
        &self.members
    }

    /// Range-checks `[sector, sector + count)` and splits it into pieces.
    fn pieces(
        &self,
        sector: u64,
        count: u64,
    ) -> Result<impl Iterator<Item = Piece> + use<>, DiskError> {
        match sector.checked_add(count) {
            Some(end) if end <= self.sector_count => {}
            _ => return Err(DiskError::IllegalBlock),
        }
        let (cs, n) = (self.chunk_sectors, self.members.len() as u64);
        let mut done = 0;
        Ok(core::iter::from_fn(move || {
            if done >= count {
                return None;
            }
            let lba = sector + done;
            let (chunk, within) = (lba / cs, lba % cs);
            let len = (cs - within).min(count - done);
            let piece = Piece {
                member: (chunk % n) as usize,
                member_sector: (chunk / n) * cs + within,
                offset: done,
                count: len,
            };
            done += len;
            Some(piece)
        }))
    }

    /// Runs each piece through the members' synchronous twins (all
    /// members complete inline). A plain function: the hot path builds no
    /// nested future.
    fn each_piece_now(
        &self,
        sector: u64,
        count: u64,
        op: impl Fn(&Disk, Piece) -> Result<(), DiskError>,
    ) -> Result<(), DiskError> {
        for p in self.pieces(sector, count)? {
            op(&self.members[p.member], p).map_err(|e| e.in_member(p.member as u32))?;
        }
        Ok(())
    }

    /// Runs every piece concurrently (members that really wait), waiting
    /// for all and reporting the first error in request order. The
    /// pieces' futures and their table live in one arena from the disk's
    /// [`FuturePool`], recycled across requests: no allocation per I/O.
    async fn each_piece_later<'a>(
        &'a self,
        sector: u64,
        count: u64,
        op: impl Fn(&'a Disk, Piece) -> IoFuture<'a, Result<(), DiskError>>,
    ) -> Result<(), DiskError> {
        let n = self.pieces(sector, count)?.count();
        let arena = self.futures.arena(n * PIECE_ARENA_BYTES);
        // A block, so the (not `Send`) vector is gone before the await.
        let table = {
            let mut table = bumpalo::collections::Vec::with_capacity_in(n, arena.bump());
            for p in self.pieces(sector, count)? {
                let fut = arena.pin(op(&self.members[p.member], p));
                table.push(Some((p.member, fut)));
            }
            table.into_boxed_slice()
        };
        join_pieces(table).await
    }

    fn piece_buf<'a>(&self, buf: &SgList<'a>, p: Piece) -> Result<SgList<'a>, DiskError> {
        buf.sectors(self.shift, p.offset, p.count)
    }
}

/// One running piece: its member and its future, pinned in the request's
/// arena; `None` once finished.
type RunningPiece<'b, F> = Option<(usize, ArenaFuture<'b, F>)>;

/// Arena bytes per piece: its future (an [`IoFuture`]) and its table
/// entry, with room for alignment.
const PIECE_ARENA_BYTES: usize = core::mem::size_of::<IoFuture<'static, Result<(), DiskError>>>()
    + core::mem::size_of::<RunningPiece<'static, IoFuture<'static, Result<(), DiskError>>>>()
    + 16;

/// Polls every piece until all have finished (none is left running, even
/// after an error); the first error in request order, tagged with its
/// member.
async fn join_pieces<F: Future<Output = Result<(), DiskError>>>(
    mut pieces: bumpalo::boxed::Box<'_, [RunningPiece<'_, F>]>,
) -> Result<(), DiskError> {
    let mut first: Option<(usize, DiskError)> = None;
    core::future::poll_fn(|cx| {
        let mut waiting = false;
        for (index, slot) in pieces.iter_mut().enumerate() {
            let Some((member, fut)) = slot else { continue };
            match fut.as_mut().poll(cx) {
                Poll::Pending => waiting = true,
                Poll::Ready(result) => {
                    if let Err(e) = result
                        && first.as_ref().is_none_or(|(i, _)| index < *i)
                    {
                        first = Some((index, e.in_member(*member as u32)));
                    }
                    *slot = None;
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    first.map_or(Ok(()), |(_, e)| Err(e))
}

impl DiskIo for StripedDisk {
    fn kind(&self) -> &'static str {
        "striped"
    }
    fn sector_count(&self) -> u64 {
        self.sector_count
    }
    fn sector_size(&self) -> u32 {
        1 << self.shift
    }
    // The merged metadata is derived from the members (which all agree on
    // read-only); the `Disk` handle caches it.
    fn physical_sector_size(&self) -> u32 {
        let members = self.members.iter().map(Disk::physical_sector_size);
        members.max().unwrap_or(1 << self.shift)
    }
    fn is_read_only(&self) -> bool {
        self.members[0].is_read_only()
    }
    fn is_fua_respected(&self) -> bool {
        self.members.iter().all(Disk::is_fua_respected)
    }
    fn unmap_behavior(&self) -> UnmapBehavior {
        let behaviors = || self.members.iter().map(Disk::unmap_behavior);
        if behaviors().all(|b| b == UnmapBehavior::Zeroes) {
            UnmapBehavior::Zeroes
        } else if behaviors().all(|b| b == UnmapBehavior::Ignored) {
            UnmapBehavior::Ignored
        } else {
            UnmapBehavior::Unspecified
        }
    }
    fn optimal_unmap_sectors(&self) -> u32 {
        let members = self.members.iter().map(Disk::optimal_unmap_sectors);
        members.max().unwrap_or(1)
    }
    fn completes_inline(&self) -> bool {
        self.inline
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        alloc::vec![
            ("members", format!("{}", self.members.len())),
            (
                "chunk",
                format!("{} bytes", self.chunk_sectors << self.shift)
            ),
        ]
    }
    fn children(&self) -> Vec<(String, Disk)> {
        self.members
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("member {i}"), d.clone()))
            .collect()
    }

    async fn read(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        let count = (buf.len() >> self.shift) as u64;
        let bufs = &buf;
        if self.inline {
            return self.each_piece_now(sector, count, |disk, p| {
                disk.read_inline(self.piece_buf(bufs, p)?, p.member_sector, opts)
            });
        }
        self.each_piece_later(sector, count, |disk, p| match self.piece_buf(bufs, p) {
            Ok(b) => disk.read(b, p.member_sector, opts),
            Err(e) => stackfuture::StackFuture::from(core::future::ready(Err(e))),
        })
        .await
    }

    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        let count = (buf.len() >> self.shift) as u64;
        let bufs = &buf;
        if self.inline {
            return self.each_piece_now(sector, count, |disk, p| {
                disk.write_inline(self.piece_buf(bufs, p)?, p.member_sector, opts)
            });
        }
        self.each_piece_later(sector, count, |disk, p| match self.piece_buf(bufs, p) {
            Ok(b) => disk.write(b, p.member_sector, opts),
            Err(e) => stackfuture::StackFuture::from(core::future::ready(Err(e))),
        })
        .await
    }

    fn read_inline(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        let count = (buf.len() >> self.shift) as u64;
        self.each_piece_now(sector, count, |disk, p| {
            disk.read_inline(self.piece_buf(&buf, p)?, p.member_sector, opts)
        })
    }

    fn write_inline(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        let count = (buf.len() >> self.shift) as u64;
        self.each_piece_now(sector, count, |disk, p| {
            disk.write_inline(self.piece_buf(&buf, p)?, p.member_sector, opts)
        })
    }

    async fn flush(&self, opts: IoOptions) -> Result<(), DiskError> {
        if self.inline {
            for (i, d) in self.members.iter().enumerate() {
                run_inline(d.flush(opts)).map_err(|e| e.in_member(i as u32))?;
            }
            return Ok(());
        }
        let n = self.members.len();
        let arena = self.futures.arena(n * PIECE_ARENA_BYTES);
        let table = {
            let mut table = bumpalo::collections::Vec::with_capacity_in(n, arena.bump());
            for (i, d) in self.members.iter().enumerate() {
                table.push(Some((i, arena.pin(d.flush(opts)))));
            }
            table.into_boxed_slice()
        };
        join_pieces(table).await
    }

    async fn unmap(&self, sector: u64, count: u64, opts: IoOptions) -> Result<(), DiskError> {
        // Each member's pieces of one request are adjacent on that member:
        // coalesce them into one range per member.
        let mut ranges: Vec<Option<(u64, u64)>> = alloc::vec![None; self.members.len()];
        for p in self.pieces(sector, count)? {
            let r = &mut ranges[p.member];
            *r = Some(match *r {
                None => (p.member_sector, p.member_sector + p.count),
                Some((start, _)) => (start, p.member_sector + p.count),
            });
        }
        let futures = ranges.into_iter().enumerate().filter_map(|(i, r)| {
            let (start, end) = r?;
            let d = &self.members[i];
            Some(async move {
                d.unmap(start, end - start, opts)
                    .await
                    .map_err(|e| e.in_member(i as u32))
            })
        });
        futures_util::future::join_all(futures)
            .await
            .into_iter()
            .collect()
    }

    async fn eject(&self) -> Result<(), DiskError> {
        for (i, d) in self.members.iter().enumerate() {
            d.eject().await.map_err(|e| e.in_member(i as u32))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram::RamDisk;

    #[test]
    fn mapping() {
        let members = (0..3)
            .map(|_| Disk::new(RamDisk::new(64 * 512, 512).unwrap()).unwrap())
            .collect();
        let s = StripedDisk::new(members, Some(8 * 512), None).unwrap();
        assert_eq!(s.sector_count, 3 * 64);
        let pieces: Vec<Piece> = s.pieces(6, 20).unwrap().collect();
        assert_eq!(
            pieces,
            [
                Piece {
                    member: 0,
                    member_sector: 6,
                    offset: 0,
                    count: 2
                },
                Piece {
                    member: 1,
                    member_sector: 0,
                    offset: 2,
                    count: 8
                },
                Piece {
                    member: 2,
                    member_sector: 0,
                    offset: 10,
                    count: 8
                },
                Piece {
                    member: 0,
                    member_sector: 8,
                    offset: 18,
                    count: 2
                },
            ]
        );
        assert!(s.pieces(190, 3).is_err());
        assert!(s.pieces(u64::MAX, 2).is_err());
        assert_eq!(s.pieces(192, 0).unwrap().count(), 0);
    }
}
