//! The conformance suite every [`Disk`] and every composition must pass.
//!
//! [`run_all`] runs the whole suite over disks made by a factory (a fresh
//! disk per check, so checks do not see each other's data). Each check is
//! also public on its own, for disks that need a particular setup.
//!
//! Checks panic with a message naming the request and the outcome on the
//! first violation. Out-of-range requests must fail with exactly
//! [`DiskError::IllegalBlock`]; memory errors are accepted inside a
//! [`DiskError::Member`] wrapper (see [`Want`]).

use crate::buf::{self, Layout, TestBuf, block_on, pattern, read_vec, unmap, write, write_vec};
use crate::checker::{Checker, Op, Want};
use crate::model::SectorState;
use futures::task::ArcWake;
use parastor_core::Gpa;
use parastor_core::{Disk, DiskError, GpaRange, IoOptions, SectorMarker, UnmapBehavior};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// Default number of random operation sequences [`read_after_write`] tries.
pub const DEFAULT_CASES: u32 = 48;

/// Runs the whole suite over disks made by `make`.
///
/// Writable disks get every check; read-only disks get the checks that do
/// not need to modify the disk plus [`read_only`].
pub fn run_all(make: &dyn Fn() -> Disk) {
    let disk = make();
    metadata(&disk);
    representability(&make());
    range_checks(&make());
    whole_sector_buffers(&make());
    buffer_access(&make());
    layer_interface(&make());
    if disk.is_read_only() {
        read_only(&make());
    } else {
        unmap_semantics(&make());
        fua_and_flush(&make(), None);
        read_after_write(make, DEFAULT_CASES);
    }
}

/// Fixed metadata is sane and the handle agrees with its description.
pub fn metadata(disk: &Disk) {
    let ss = disk.sector_size();
    assert!(ss.is_power_of_two() && ss >= 512, "sector size {ss}");
    let pss = disk.physical_sector_size();
    assert!(
        pss.is_power_of_two() && pss >= ss,
        "physical sector size {pss} < {ss}"
    );
    assert!(disk.sector_count() > 0, "empty disk");
    assert!(disk.optimal_unmap_sectors() >= 1);
    let d = disk.describe();
    assert_eq!(d.kind, disk.kind());
    assert_eq!(d.sector_count, disk.sector_count());
    assert_eq!(d.sector_size, ss);
    assert_eq!(d.physical_sector_size, pss);
    assert_eq!(d.read_only, disk.is_read_only());
    assert_eq!(d.unmap_behavior, disk.unmap_behavior());
    let clone = disk.clone();
    assert!(clone.ptr_eq(disk));
    assert_eq!(clone.sector_count(), disk.sector_count());
}

/// Writes `data` at `sector`, panicking on failure.
#[track_caller]
fn must_write(disk: &Disk, sector: u64, data: &[u8]) {
    if let Err(e) = write_vec(disk, sector, data) {
        panic!(
            "write of {} bytes at sector {sector} failed: {e:?}",
            data.len()
        );
    }
}

/// Reads `count` sectors at `sector`, panicking on failure.
#[track_caller]
fn must_read(disk: &Disk, sector: u64, count: u64) -> Vec<u8> {
    match read_vec(disk, sector, count) {
        Ok(v) => v,
        Err(e) => panic!("read of {count} sectors at sector {sector} failed: {e:?}"),
    }
}

/// Reads into an empty or `count`-sector buffer at `sector`.
fn try_read(disk: &Disk, sector: u64, count: u64) -> Result<(), DiskError> {
    buf::read(
        disk,
        sector,
        &TestBuf::contiguous(count as usize * disk.sector_size() as usize),
    )
}

/// Writes `count` sectors of junk at `sector`.
fn try_write(disk: &Disk, sector: u64, count: u64) -> Result<(), DiskError> {
    let data = pattern(0xbad, sector, count, disk.sector_size());
    write_vec(disk, sector, &data)
}

/// Layer read of `count` sectors at `sector`.
fn try_read_present(disk: &Disk, sector: u64, count: u64) -> Result<(), DiskError> {
    let buf = TestBuf::contiguous(count as usize * disk.sector_size() as usize);
    let mut bits = vec![0u64; count.div_ceil(64) as usize + 1];
    let mut marker = SectorMarker::new(sector, count, &mut bits);
    block_on(disk.read_present(buf.sg(true), sector, &mut marker, IoOptions::default()))
}

/// Checks a read and a layer read of `count` sectors at `sector` against
/// `want`; `what` names the request in a failure.
#[track_caller]
fn check_reads(disk: &Disk, sector: u64, count: u64, want: Want, what: std::fmt::Arguments<'_>) {
    want.check(try_read(disk, sector, count), format_args!("read {what}"));
    want.check(
        try_read_present(disk, sector, count),
        format_args!("read_present {what}"),
    );
}

/// Requests whose byte range is not representable — `sector + count`
/// overflows `u64`, or `(sector + count) * sector_size` overflows or exceeds
/// `i64::MAX` — fail with `IllegalBlock` for read, write and unmap, without
/// a panic and without touching the disk's data; so do representable
/// requests at the very edge of representability.
pub fn representability(disk: &Disk) {
    let ss = u64::from(disk.sector_size());
    let n = disk.sector_count();
    let writable = !disk.is_read_only();
    let (first, last) = (
        pattern(1, 0, 1, disk.sector_size()),
        pattern(2, n - 1, 1, disk.sector_size()),
    );
    if writable {
        must_write(disk, 0, &first);
        must_write(disk, n - 1, &last);
    }
    let max_end = i64::MAX as u64 / ss; // last representable end sector
    assert!(max_end > n, "disk too large for the representability cases");
    let data_cases = [
        (u64::MAX, 0),
        (u64::MAX, 1),
        (u64::MAX - 1, 2),
        (1 << 63, 1),
        (u64::MAX / ss, 1),
        (u64::MAX / ss + 1, 1),
        (max_end, 1),
        (max_end - 1, 2),
        (max_end + 1, 0),
        (u64::MAX - 7, 8),
        // 2^64 / ss wraps the byte offset to exactly 0.
        (1u64 << (64 - ss.trailing_zeros()), 1),
        ((1u64 << (64 - ss.trailing_zeros())) - 1, 2),
    ];
    for &(sector, count) in &data_cases {
        check_reads(
            disk,
            sector,
            count,
            Want::IllegalBlock,
            format_args!("{count}@{sector}"),
        );
        Want::IllegalBlock.check(
            try_write(disk, sector, count),
            format_args!("write {count}@{sector}"),
        );
    }
    // Representable, but far out of range: the handle lets these through
    // and the disk itself must refuse them (a read-only disk may refuse a
    // modification as such).
    for (sector, count) in [(max_end - 1, 1), (max_end, 0), (max_end - 8, 8)] {
        let what = format_args!("{count}@{sector}");
        check_reads(disk, sector, count, Want::IllegalBlock, what);
        let modify = if writable {
            Want::IllegalBlock
        } else {
            Want::ReadOnly
        };
        modify.check(try_write(disk, sector, count), format_args!("write {what}"));
        modify.check(unmap(disk, sector, count), format_args!("unmap {what}"));
    }
    let unmap_cases = [
        (0, u64::MAX),
        (1, u64::MAX),
        (u64::MAX, u64::MAX),
        (u64::MAX, 1),
        (u64::MAX, 0),
        (n, u64::MAX - n),
        (0, max_end + 1),
        (max_end, 1),
        (1u64 << (64 - ss.trailing_zeros()), 1),
        (0, 1u64 << (64 - ss.trailing_zeros())),
    ];
    for &(sector, count) in &unmap_cases {
        Want::IllegalBlock.check(
            unmap(disk, sector, count),
            format_args!("unmap {count}@{sector}"),
        );
    }
    if writable {
        assert_eq!(
            must_read(disk, 0, 1),
            first,
            "sector 0 changed by rejected requests"
        );
        assert_eq!(
            must_read(disk, n - 1, 1),
            last,
            "last sector changed by rejected requests"
        );
    }
}

/// In-range requests succeed; representable requests that reach past the
/// end — including empty ones that start past it, and ones that cross it —
/// fail with `IllegalBlock` and change nothing. Unmap is range-checked even
/// when the disk ignores unmap.
pub fn range_checks(disk: &Disk) {
    let n = disk.sector_count();
    let ss = disk.sector_size();
    let writable = !disk.is_read_only();
    let want_write = if writable { Want::Ok } else { Want::ReadOnly };
    let ok = [
        (0, 1),
        (n - 1, 1),
        (0, 0),
        (n, 0),
        (0, n.min(16)),
        (n - n.min(16), n.min(16)),
    ];
    for &(sector, count) in &ok {
        let what = format_args!("{count}@{sector} of {n}");
        check_reads(disk, sector, count, Want::Ok, what);
        want_write.check(try_write(disk, sector, count), format_args!("write {what}"));
        want_write.check(unmap(disk, sector, count), format_args!("unmap {what}"));
    }
    let tail = pattern(3, n - 1, 1, ss);
    if writable {
        must_write(disk, n - 1, &tail);
    }
    let bad = [
        (n, 1),
        (n - 1, 2),
        (n + 1, 0),
        (n + 1, 1),
        (n + 1000, 1),
        (n - 1, 17),
        (n, 16),
    ];
    // A read-only disk may refuse a modification either way.
    let bad_write = |r: &Result<(), DiskError>| {
        Want::IllegalBlock.matches(r) || (!writable && Want::ReadOnly.matches(r))
    };
    for &(sector, count) in &bad {
        check_reads(
            disk,
            sector,
            count,
            Want::IllegalBlock,
            format_args!("{count}@{sector} of {n}"),
        );
        let r = try_write(disk, sector, count);
        assert!(
            bad_write(&r),
            "write {count}@{sector} of {n}: expected IllegalBlock, got {r:?}"
        );
        let r = unmap(disk, sector, count);
        assert!(
            bad_write(&r),
            "unmap {count}@{sector} of {n}: expected IllegalBlock, got {r:?}"
        );
    }
    if writable {
        assert_eq!(
            must_read(disk, n - 1, 1),
            tail,
            "rejected requests changed the last sector"
        );
    }
    assert_eq!(disk.sector_count(), n);
}

/// Data buffers that are not a whole number of sectors fail with
/// `InvalidInput` (for example 3584 bytes on a 4096-byte-sector disk).
pub fn whole_sector_buffers(disk: &Disk) {
    let ss = disk.sector_size() as usize;
    let lens = [1, ss / 2, ss - 1, ss + 1, 2 * ss - 512, 3 * ss + 7];
    for len in lens.into_iter().filter(|l| l % ss != 0) {
        let buf = TestBuf::contiguous(len);
        Want::InvalidInput.check(
            buf::read(disk, 0, &buf),
            format_args!("read of {len} bytes"),
        );
        Want::InvalidInput.check(
            write(disk, 0, &buf, IoOptions::default()),
            format_args!("write of {len} bytes"),
        );
    }
}

/// A read into a buffer the device may not write, or into guest ranges
/// outside guest memory, fails with `MemoryAccess`; so does a write from
/// ranges outside guest memory. The disk keeps working afterwards.
pub fn buffer_access(disk: &Disk) {
    let ss = disk.sector_size() as u64;
    let buf = TestBuf::contiguous(ss as usize);
    let r = block_on(disk.read(buf.sg(false), 0, IoOptions::default()));
    Want::MemoryAccess.check(r, "read into a read-only buffer");
    let outside = [
        TestBuf::with_ranges(vec![GpaRange::new(Gpa::new(8192 - 100), ss)], 8192),
        TestBuf::with_ranges(
            vec![
                GpaRange::new(Gpa::new(0), 100),
                GpaRange::new(Gpa::new(1 << 40), ss - 100),
            ],
            8192,
        ),
        TestBuf::with_ranges(vec![GpaRange::new(Gpa::new(u64::MAX - 2 * ss), ss)], 8192),
        TestBuf::with_ranges(
            vec![
                GpaRange::new(Gpa::new(100), ss),
                GpaRange::new(Gpa::new(9000), ss),
            ],
            8192,
        ),
    ];
    for (i, buf) in outside.iter().enumerate() {
        let count = buf.len() as u64 / ss;
        Want::MemoryAccess.check(buf::read(disk, 0, buf), format_args!("read case {i}"));
        let want = if disk.is_read_only() {
            Want::ReadOnly
        } else {
            Want::MemoryAccess
        };
        want.check(
            write(disk, 0, buf, IoOptions::default()),
            format_args!("write case {i}"),
        );
        let _ = count;
    }
    if !disk.is_read_only() {
        let data = pattern(4, 0, 2, disk.sector_size());
        must_write(disk, 0, &data);
        assert_eq!(
            must_read(disk, 0, 2),
            data,
            "disk broken after memory errors"
        );
    }
}

/// The layer interface: `read_present` marks what it supplies and is
/// range-checked; on disks that support it, `write_no_overwrite` is
/// range-checked and never overwrites sectors the disk already has.
pub fn layer_interface(disk: &Disk) {
    let n = disk.sector_count();
    let ss = disk.sector_size();
    let count = n.min(4);
    if !disk.is_read_only() {
        must_write(disk, 0, &pattern(5, 0, count, ss));
    }
    let buf = TestBuf::contiguous(count as usize * ss as usize);
    let mut bits = [0u64; 1];
    let mut marker = SectorMarker::new(0, count, &mut bits);
    let r = block_on(disk.read_present(buf.sg(true), 0, &mut marker, IoOptions::default()));
    Want::Ok.check(r, "read_present");
    if !disk.is_read_only() {
        // Written sectors are present, and read back as written.
        assert!(
            marker.all_set(),
            "read_present did not mark sectors just written"
        );
        assert_eq!(buf.contents(), pattern(5, 0, count, ss));
    }
    for s in 0..count {
        if marker.is_set(s) {
            let one = &buf.contents()[s as usize * ss as usize..][..ss as usize];
            assert_eq!(
                one,
                &must_read(disk, s, 1)[..],
                "read_present and read disagree at {s}"
            );
        }
    }
    if disk.supports_write_no_overwrite() && !disk.is_read_only() {
        let other = TestBuf::from_data(&pattern(6, 0, count, ss), &Layout::contiguous());
        let r = block_on(disk.write_no_overwrite(other.sg(false), 0));
        Want::Ok.check(r, "write_no_overwrite in range");
        assert_eq!(
            must_read(disk, 0, count),
            pattern(5, 0, count, ss),
            "write_no_overwrite overwrote present sectors"
        );
        for (sector, count) in [(n, 1), (n - 1, 2), (n + 1, 0), (u64::MAX, 1)] {
            let buf = TestBuf::contiguous(count as usize * ss as usize);
            let r = block_on(disk.write_no_overwrite(buf.sg(false), sector));
            Want::IllegalBlock.check(r, format_args!("write_no_overwrite {count}@{sector}"));
        }
    }
}

/// Unmap behaves as [`Disk::unmap_behavior`] says: `Zeroes` → unmapped
/// sectors read zero; `Unspecified` → they read as anything, but the same
/// twice; `Ignored` → data unchanged. Neighbouring sectors never change,
/// and a write after an unmap reads back.
pub fn unmap_semantics(disk: &Disk) {
    let n = disk.sector_count();
    let ss = disk.sector_size();
    let behavior = disk.unmap_behavior();
    let len = n.min(9);
    let data = pattern(7, 0, len, ss);
    must_write(disk, 0, &data);
    let mid = (1, len.saturating_sub(2));
    Want::Ok.check(unmap(disk, mid.0, mid.1), "unmap of the middle");
    Want::Ok.check(unmap(disk, 0, 0), "empty unmap");
    let after = must_read(disk, 0, len);
    let ssz = ss as usize;
    assert_eq!(
        after[..ssz],
        data[..ssz],
        "unmap changed the sector before the range"
    );
    if len >= 2 {
        let last = (len as usize - 1) * ssz;
        assert_eq!(
            after[last..],
            data[last..],
            "unmap changed the sector after the range"
        );
    }
    let unmapped = &after[ssz..ssz * (1 + mid.1 as usize)];
    let expected = &data[ssz..ssz * (1 + mid.1 as usize)];
    check_unmapped(disk, behavior, unmapped, expected, 1, "partial unmap");

    // The whole disk.
    let tail = pattern(8, n - 1, 1, ss);
    must_write(disk, n - 1, &tail);
    Want::Ok.check(unmap(disk, 0, n), "unmap of the whole disk");
    let first = must_read(disk, 0, 1);
    check_unmapped(
        disk,
        behavior,
        &first,
        &data[..ssz],
        0,
        "whole-disk unmap, first sector",
    );
    let last = must_read(disk, n - 1, 1);
    check_unmapped(
        disk,
        behavior,
        &last,
        &tail,
        n - 1,
        "whole-disk unmap, last sector",
    );

    // Writes after an unmap read back.
    must_write(disk, 0, &data);
    assert_eq!(
        must_read(disk, 0, len),
        data,
        "write after unmap did not read back"
    );
}

/// Checks what unmapped sectors starting at `sector` read as.
fn check_unmapped(
    disk: &Disk,
    behavior: UnmapBehavior,
    got: &[u8],
    before: &[u8],
    sector: u64,
    what: &str,
) {
    match behavior {
        UnmapBehavior::Zeroes => {
            assert!(
                got.iter().all(|&b| b == 0),
                "{what}: unmapped sectors do not read zero"
            )
        }
        UnmapBehavior::Ignored => assert_eq!(got, before, "{what}: ignored unmap changed data"),
        UnmapBehavior::Unspecified => {
            let again = must_read(
                disk,
                sector,
                (got.len() / disk.sector_size() as usize) as u64,
            );
            assert_eq!(
                got,
                &again[..],
                "{what}: unmapped sectors read differently twice"
            );
        }
    }
}

/// FUA writes and flushes succeed, and the data is there afterwards.
///
/// With `power_cut` (which must make the disk lose what a power failure
/// would — see [`VolatileCacheDisk`](crate::doubles::VolatileCacheDisk)),
/// durability is checked too: FUA writes survive a power cut on a disk that
/// [respects FUA](Disk::is_fua_respected), and flushed writes survive on
/// every disk. A disk that drops FUA on its way down, or does not pass a
/// flush on, fails. Without it, only success and read-back are checked.
pub fn fua_and_flush(disk: &Disk, power_cut: Option<&dyn Fn()>) {
    let n = disk.sector_count();
    let ss = disk.sector_size();
    let places = [0, n / 2, n - 1].map(|sector| (sector, (n - sector).min(3)));
    Want::Ok.check(buf::flush(disk), "flush of a fresh disk");
    for (i, &(sector, count)) in places.iter().enumerate() {
        let data = pattern(9 + i as u64, sector, count, ss);
        let buf = TestBuf::from_data(&data, &Layout::contiguous());
        Want::Ok.check(
            write(disk, sector, &buf, IoOptions::fua()),
            format_args!("FUA write at {sector}"),
        );
        assert_eq!(
            must_read(disk, sector, count),
            data,
            "FUA write at {sector} did not read back"
        );
    }
    if let Some(cut) = power_cut
        && disk.is_fua_respected()
    {
        cut();
        for (i, &(sector, count)) in places.iter().enumerate() {
            assert!(
                must_read(disk, sector, count) == pattern(9 + i as u64, sector, count, ss),
                "FUA write at {sector} lost at a power cut: FUA did not reach the medium"
            );
        }
    }
    // Plain writes, made durable by a flush.
    for (i, &(sector, count)) in places.iter().enumerate() {
        must_write(disk, sector, &pattern(20 + i as u64, sector, count, ss));
    }
    Want::Ok.check(buf::flush(disk), "flush");
    Want::Ok.check(buf::flush(disk), "second flush");
    if let Some(cut) = power_cut {
        cut();
    }
    for (i, &(sector, count)) in places.iter().enumerate() {
        assert!(
            must_read(disk, sector, count) == pattern(20 + i as u64, sector, count, ss),
            "flushed write at {sector} lost{}",
            if power_cut.is_some() {
                " at a power cut: the flush did not reach the medium"
            } else {
                ""
            }
        );
    }
}

/// A read-only disk refuses writes and unmaps with `ReadOnly`, still
/// serves reads, and accepts flushes (nothing waits to become durable).
pub fn read_only(disk: &Disk) {
    assert!(disk.is_read_only());
    Want::Ok.check(buf::flush(disk), "flush of a read-only disk");
    let n = disk.sector_count();
    let before = must_read(disk, 0, n.min(4));
    Want::ReadOnly.check(try_write(disk, 0, 1), "write to a read-only disk");
    Want::ReadOnly.check(
        try_write(disk, n - 1, 1),
        "write to the end of a read-only disk",
    );
    let fua = TestBuf::from_data(&pattern(1, 0, 1, disk.sector_size()), &Layout::contiguous());
    Want::ReadOnly.check(
        write(disk, 0, &fua, IoOptions::fua()),
        "FUA write to a read-only disk",
    );
    Want::ReadOnly.check(unmap(disk, 0, 1), "unmap of a read-only disk");
    assert_eq!(
        must_read(disk, 0, n.min(4)),
        before,
        "a refused write changed the disk"
    );
}

/// Raw, disk-independent operations that [`read_after_write`] maps onto a
/// disk of a given size.
#[derive(Clone, Debug)]
pub enum RawOp {
    /// A read.
    Read {
        /// Placement.
        place: Place,
        /// Raw start.
        at: u64,
        /// Raw length.
        len: u64,
        /// Buffer layout.
        layout: Layout,
        /// Buffer writable by the device.
        writable: bool,
    },
    /// A write.
    Write {
        /// Placement.
        place: Place,
        /// Raw start.
        at: u64,
        /// Raw length.
        len: u64,
        /// Buffer layout.
        layout: Layout,
        /// Data seed.
        seed: u64,
        /// FUA.
        fua: bool,
    },
    /// An unmap.
    Unmap {
        /// Placement.
        place: Place,
        /// Raw start.
        at: u64,
        /// Raw length.
        len: u64,
    },
    /// A flush.
    Flush,
}

/// Where a raw operation lands relative to the end of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Fully inside.
    Inside,
    /// Fully inside, ending exactly at the last sector (where off-by-one
    /// bugs live).
    AtEnd,
    /// Starts inside (or at the end) and crosses the end.
    AcrossEnd,
    /// Starts past the end.
    Beyond,
}

fn place() -> impl Strategy<Value = Place> {
    prop_oneof![
        6 => Just(Place::Inside),
        2 => Just(Place::AtEnd),
        1 => Just(Place::AcrossEnd),
        1 => Just(Place::Beyond),
    ]
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        proptest::collection::vec(any::<u32>(), 0..=3),
        proptest::collection::vec(0u16..8192, 0..=4),
        any::<bool>(),
        prop_oneof![15 => Just(None), 1 => (0u16..600).prop_map(Some)],
    )
        .prop_map(|(cuts, gaps, reverse, short_memory)| Layout {
            cuts,
            gaps,
            reverse,
            short_memory,
        })
}

/// The strategy for one raw operation.
pub fn raw_op() -> impl Strategy<Value = RawOp> {
    prop_oneof![
        4 => (place(), any::<u64>(), any::<u64>(), layout(), prop::bool::weighted(0.95))
            .prop_map(|(place, at, len, layout, writable)| RawOp::Read { place, at, len, layout, writable }),
        4 => (place(), any::<u64>(), any::<u64>(), layout(), any::<u64>(), any::<bool>())
            .prop_map(|(place, at, len, layout, seed, fua)| RawOp::Write { place, at, len, layout, seed, fua }),
        1 => (place(), any::<u64>(), any::<u64>())
            .prop_map(|(place, at, len)| RawOp::Unmap { place, at, len }),
        1 => Just(RawOp::Flush),
    ]
}

/// Maps `(place, at, len)` onto a disk of `n` sectors; requests are at most
/// `max` sectors long (at least `min`).
fn locate(place: Place, at: u64, len: u64, n: u64, min: u64, max: u64) -> (u64, u64) {
    let max = max.min(n).max(min);
    let len = min + len % (max - min + 1);
    match place {
        Place::Inside if len <= n => (at % (n - len + 1), len),
        Place::AtEnd if len <= n => (n - len, len),
        Place::AtEnd => (0, n),
        Place::Inside | Place::AcrossEnd => {
            let len = len.max(1);
            (n.saturating_sub(len) + 1 + at % len, len)
        }
        Place::Beyond => (n + 1 + at % (1 << 20), len),
    }
}

impl RawOp {
    /// The operation on a disk of `n` sectors of `ss` bytes.
    pub fn to_op(&self, n: u64, ss: u32) -> Op {
        let max = (64 * 1024 / u64::from(ss)).max(1);
        let bytes = |count: u64| count as usize * ss as usize;
        match self.clone() {
            RawOp::Read {
                place,
                at,
                len,
                layout,
                writable,
            } => {
                let (sector, count) = locate(place, at, len, n, 1, max);
                Op::Read {
                    sector,
                    bytes: bytes(count),
                    layout,
                    writable,
                }
            }
            RawOp::Write {
                place,
                at,
                len,
                layout,
                seed,
                fua,
            } => {
                let (sector, count) = locate(place, at, len, n, 1, max);
                Op::Write {
                    sector,
                    bytes: bytes(count),
                    layout,
                    seed,
                    fua,
                }
            }
            RawOp::Unmap { place, at, len } => {
                let (sector, count) = locate(place, at, len, n, 0, max);
                Op::Unmap { sector, count }
            }
            RawOp::Flush => Op::Flush,
        }
    }
}

/// Property test: random sequences of reads, writes (some FUA), unmaps and
/// flushes — in range and out of range, with 1–4-range buffers at unaligned
/// guest addresses — agree with the reference [`crate::model::Model`] on a
/// fresh disk from `make`. The initial contents are treated as unknown (but
/// stable). Runs `cases` sequences; panics with the shrunk failing sequence.
pub fn read_after_write(make: &dyn Fn() -> Disk, cases: u32) {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    // A fixed seed: CI must see the same cases every run (a random seed let
    // a planted off-by-one slip through now and then).
    let rng = proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&proptest::collection::vec(raw_op(), 1..24), |raw| {
        let disk = make();
        let (n, ss) = (disk.sector_count(), disk.sector_size());
        let ops: Vec<Op> = raw.iter().map(|r| r.to_op(n, ss)).collect();
        let mut checker = Checker::new(disk, SectorState::Unknown);
        checker
            .run(&ops)
            .map_err(|f| TestCaseError::fail(f.to_string()))
    });
    if let Err(e) = result {
        panic!("read-after-write property failed: {e}");
    }
}

/// A waker that records that it was woken.
struct WakeFlag(AtomicBool);

impl ArcWake for WakeFlag {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.store(true, Ordering::SeqCst);
    }
}

/// A future under test, polled by hand with a waker that records wakes.
struct Polled<F> {
    fut: Pin<Box<F>>,
    flag: Arc<WakeFlag>,
}

impl<F: Future> Polled<F> {
    fn new(fut: F) -> Self {
        Self {
            fut: Box::pin(fut),
            flag: Arc::new(WakeFlag(AtomicBool::new(false))),
        }
    }

    fn poll(&mut self) -> Poll<F::Output> {
        self.flag.0.store(false, Ordering::SeqCst);
        let waker = futures::task::waker(self.flag.clone());
        self.fut.as_mut().poll(&mut Context::from_waker(&waker))
    }

    fn woken(&self) -> bool {
        self.flag.0.load(Ordering::SeqCst)
    }
}

/// Resize notification, for disks that can change size. `resize(n)` must
/// set the disk's sector count to `n` (through whatever owns the disk's
/// size: a RAM disk handle, the top layer of a layered disk, …). The disk
/// needs at least 8 sectors.
///
/// Checks: `wait_resize(known)` completes at once when `known` is stale,
/// stays pending until the size changes and then is woken and completes with
/// the new count (every waiter); a shrink makes the tail `IllegalBlock`
/// while the rest keeps its data; sectors that come back after a shrink and
/// regrow read zero — data past the new end never reappears; a waiter that
/// registers after a resize is still woken by the next one when the
/// previous waiter is dropped; a resize to the same size completes no waiter.
pub fn resize_notification(disk: &Disk, resize: &dyn Fn(u64)) {
    let old = disk.sector_count();
    let ss = disk.sector_size();
    assert!(old >= 8, "resize_notification needs at least 8 sectors");
    let data = pattern(12, old - 3, 3, ss);
    must_write(disk, old - 3, &data);

    // A stale count completes at once.
    let mut stale = Polled::new(disk.wait_resize(old + 1));
    assert_eq!(
        stale.poll(),
        Poll::Ready(old),
        "wait_resize with a stale count"
    );
    drop(stale);

    // Shrink by two.
    let new = old - 2;
    let mut w = Polled::new(disk.wait_resize(old));
    assert!(
        w.poll().is_pending(),
        "wait_resize completed before a resize"
    );
    assert!(
        w.poll().is_pending(),
        "wait_resize completed before a resize"
    );
    resize(new);
    assert!(w.woken(), "shrink did not wake the waiter");
    assert_eq!(w.poll(), Poll::Ready(new), "waiter after shrink");
    drop(w);
    assert_eq!(disk.sector_count(), new);
    Want::IllegalBlock.check(try_read(disk, new, 1), "read of the dropped tail");
    Want::IllegalBlock.check(try_read(disk, new - 1, 2), "read across the new end");
    Want::IllegalBlock.check(try_write(disk, new, 1), "write to the dropped tail");
    Want::IllegalBlock.check(unmap(disk, new, 1), "unmap of the dropped tail");
    Want::IllegalBlock.check(unmap(disk, new + 1, 0), "empty unmap past the new end");
    assert_eq!(
        must_read(disk, new - 1, 1),
        data[..ss as usize],
        "data before the new end"
    );

    // Grow back: every waiter is woken; the regrown sectors read zero.
    let mut w1 = Polled::new(disk.wait_resize(new));
    let mut w2 = Polled::new(disk.wait_resize(new));
    assert!(w1.poll().is_pending() && w2.poll().is_pending());
    resize(old);
    assert!(w1.woken() && w2.woken(), "grow did not wake every waiter");
    assert_eq!((w1.poll(), w2.poll()), (Poll::Ready(old), Poll::Ready(old)));
    drop((w1, w2));
    assert_eq!(disk.sector_count(), old);
    let regrown = must_read(disk, new, 2);
    assert!(
        regrown.iter().all(|&b| b == 0),
        "data past a shrink reappeared after regrowing"
    );
    must_write(disk, old - 1, &data[2 * ss as usize..]);
    assert_eq!(must_read(disk, old - 1, 1), data[2 * ss as usize..]);

    // Hand-off: a waiter that registers after a resize, while the previous
    // waiter is still alive, must not lose its wake-up when that one is
    // dropped.
    let mut a = Polled::new(disk.wait_resize(old));
    assert!(a.poll().is_pending());
    resize(old - 1);
    assert!(a.woken());
    let mut b = Polled::new(disk.wait_resize(old - 1));
    assert!(b.poll().is_pending());
    assert_eq!(a.poll(), Poll::Ready(old - 1));
    drop(a);
    resize(old);
    assert!(
        b.woken(),
        "a waiter lost its wake-up when an earlier waiter was dropped"
    );
    assert_eq!(b.poll(), Poll::Ready(old));
    drop(b);

    // A dropped waiter does not disturb later ones; resizing to the same
    // size completes nobody.
    let mut gone = Polled::new(disk.wait_resize(old));
    assert!(gone.poll().is_pending());
    drop(gone);
    let mut c = Polled::new(disk.wait_resize(old));
    assert!(c.poll().is_pending());
    resize(old);
    assert!(
        c.poll().is_pending(),
        "a resize to the same size completed a waiter"
    );
    resize(old + 1);
    assert!(c.woken());
    assert_eq!(c.poll(), Poll::Ready(old + 1));
    drop(c);
    resize(old);
    assert_eq!(disk.sector_count(), old);
}
