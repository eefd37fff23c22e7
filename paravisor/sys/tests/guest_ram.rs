//! `GuestRam` as `parastor_core::GuestMemory`: layout, bounds, holes, the
//! access map, atomics, a guest thread writing through its own view, and
//! kernel pins moving file data straight into guest memory.

use parastor_core::{
    Access, Denied, DeviceRange, DmaDomainId, Gpa, GpaRange, GuestMemory, GuestMemoryExt,
    MemoryError, MemoryErrorKind, PinError, PinOwner, PinSet,
};
use parastor_sys::{GuestRam, KernelPins, MappedRegion, Protection, io};
use std::io::Write as _;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;

const PAGE: u64 = 4096;

fn region(len: u64) -> Arc<MappedRegion> {
    Arc::new(MappedRegion::memfd("guest-ram-test", len as usize).unwrap())
}

/// Three regions: [0, 4 pages), [4, 6 pages) adjacent to it, a hole of two
/// pages, then [8, 9 pages).
fn split_ram() -> GuestRam {
    GuestRam::new(vec![
        (Gpa::new(8 * PAGE), region(PAGE)),
        (Gpa::new(0), region(4 * PAGE)),
        (Gpa::new(4 * PAGE), region(2 * PAGE)),
    ])
    .unwrap()
}

fn err(gpa: u64, len: u64, kind: MemoryErrorKind) -> MemoryError {
    MemoryError::new(Gpa::new(gpa), len, kind)
}

const UNMAPPED: MemoryErrorKind = MemoryErrorKind::Inaccessible(Denied::Unmapped);

#[test]
fn copies_cross_adjacent_regions_and_stop_at_holes_and_the_extent() {
    let ram = split_ram();
    assert_eq!(ram.extent(), Gpa::new(9 * PAGE));
    let data: Vec<u8> = (0..2 * PAGE as usize).map(|i| (i % 253) as u8).collect();
    // Across the boundary between the first two regions.
    let at = Gpa::new(3 * PAGE + 100);
    ram.write_at(at, &data).unwrap();
    let mut back = vec![0; data.len()];
    ram.read_at(at, &mut back).unwrap();
    assert_eq!(back, data);
    // The bytes really are split between the two mappings.
    let regions: Vec<_> = ram.regions().collect();
    assert_eq!(regions.len(), 3);
    let mut tail = vec![0; 100];
    regions[1].1.read_at(0, &mut tail).unwrap();
    assert_eq!(tail, data[PAGE as usize - 100..PAGE as usize]);

    ram.fill_at(Gpa::new(4 * PAGE - 8), 16, 0xab).unwrap();
    ram.write_vectored_at(Gpa::new(4 * PAGE - 3), &[b"ab", b"cd", b"e"])
        .unwrap();
    let mut seen = [0; 16];
    ram.read_at(Gpa::new(4 * PAGE - 8), &mut seen).unwrap();
    assert_eq!(&seen, b"\xab\xab\xab\xab\xababcde\xab\xab\xab\xab\xab\xab");
    assert_eq!(ram.compare_at(Gpa::new(4 * PAGE - 3), b"abcde"), Ok(true));

    // Into the hole, from either side, and inside it.
    let mut buf = [0; 8];
    assert_eq!(
        ram.read_at(Gpa::new(6 * PAGE - 4), &mut buf),
        Err(err(6 * PAGE - 4, 8, UNMAPPED))
    );
    assert_eq!(
        ram.write_at(Gpa::new(7 * PAGE), &buf),
        Err(err(7 * PAGE, 8, UNMAPPED))
    );
    assert_eq!(
        ram.fill_at(Gpa::new(8 * PAGE - 1), 2, 0),
        Err(err(8 * PAGE - 1, 2, UNMAPPED))
    );
    assert_eq!(
        ram.write_vectored_at(Gpa::new(6 * PAGE - 2), &[b"ab", b"cd"]),
        Err(err(6 * PAGE - 2, 4, UNMAPPED))
    );
    // Nothing was written next to the hole by the refused writes.
    assert_eq!(ram.compare_at(Gpa::new(6 * PAGE - 2), &[0, 0]), Ok(true));
    // Past the extent, and wrapping.
    let out = MemoryErrorKind::OutOfRange;
    assert_eq!(
        ram.read_at(Gpa::new(9 * PAGE - 4), &mut buf),
        Err(err(9 * PAGE - 4, 8, out))
    );
    assert_eq!(
        ram.read_at(Gpa::new(u64::MAX - 2), &mut buf),
        Err(err(u64::MAX - 2, 8, out))
    );
    assert_eq!(
        ram.fill_at(Gpa::new(0), usize::MAX, 0),
        Err(err(0, usize::MAX as u64, out))
    );
    // The last region's end is reachable exactly; empty accesses at the
    // extent are fine.
    ram.write_at(Gpa::new(9 * PAGE - 8), &buf).unwrap();
    ram.read_at(Gpa::new(9 * PAGE), &mut []).unwrap();
    assert_eq!(
        ram.check(GpaRange::new(Gpa::new(5 * PAGE), 2 * PAGE), Access::Read),
        Err(err(5 * PAGE, 2 * PAGE, UNMAPPED))
    );
    ram.check(GpaRange::new(Gpa::new(PAGE), 5 * PAGE), Access::ReadWrite)
        .unwrap();
}

#[test]
fn a_layout_must_be_page_aligned_writable_and_not_overlapping() {
    let page = PAGE as usize;
    assert!(GuestRam::new(vec![]).is_err());
    let overlap = GuestRam::new(vec![
        (Gpa::new(0), region(2 * PAGE)),
        (Gpa::new(PAGE), region(PAGE)),
    ]);
    assert!(overlap.unwrap_err().to_string().contains("overlap"));
    let unaligned = GuestRam::new(vec![(Gpa::new(100), region(PAGE))]);
    assert!(unaligned.unwrap_err().to_string().contains("page"));
    let end = GuestRam::new(vec![(Gpa::new(u64::MAX - PAGE + 1), region(2 * PAGE))]);
    assert!(end.is_err());
    let base = region(PAGE);
    let read_only =
        Arc::new(MappedRegion::map(base.fd().unwrap(), 0, page, Protection::Read).unwrap());
    let ro = GuestRam::new(vec![(Gpa::new(0), read_only)]);
    assert!(ro.unwrap_err().to_string().contains("read-only"));
    // A hole before the first region reads as unmapped, not out of range.
    let high = GuestRam::new(vec![(Gpa::new(2 * PAGE), region(PAGE))]).unwrap();
    assert_eq!(high.extent(), Gpa::new(3 * PAGE));
    assert_eq!(
        high.read_at(Gpa::new(0), &mut [0; 4]),
        Err(err(0, 4, UNMAPPED))
    );
}

#[test]
fn atomics_are_little_endian_aligned_and_shared_with_a_second_view() {
    let ram = GuestRam::memfd("atomics", 2 * PAGE as usize).unwrap();
    let (_, region) = ram.regions().next().unwrap();
    let guest = MappedRegion::map(
        region.fd().unwrap(),
        0,
        2 * PAGE as usize,
        Protection::ReadWrite,
    )
    .unwrap();

    ram.store_u32(Gpa::new(16), 0x1122_3344, Ordering::Release)
        .unwrap();
    let mut raw = [0; 4];
    guest.read_at(16, &mut raw).unwrap();
    assert_eq!(raw, [0x44, 0x33, 0x22, 0x11], "atomics speak little-endian");
    guest
        .write_at(24, &0x0102_0304_0506_0708u64.to_le_bytes())
        .unwrap();
    assert_eq!(
        ram.load_u64(Gpa::new(24), Ordering::Acquire),
        Ok(0x0102_0304_0506_0708)
    );
    assert_eq!(ram.load_u16(Gpa::new(24), Ordering::Relaxed), Ok(0x0708));
    assert_eq!(ram.load_u8(Gpa::new(31), Ordering::Relaxed), Ok(0x01));
    assert_eq!(
        ram.compare_exchange_u32(Gpa::new(16), 1, 2, Ordering::AcqRel),
        Ok(Err(0x1122_3344))
    );
    assert_eq!(
        ram.compare_exchange_u32(Gpa::new(16), 0x1122_3344, 2, Ordering::AcqRel),
        Ok(Ok(0x1122_3344))
    );
    assert_eq!(
        guest.atomic_load::<u32>(16, Ordering::Acquire),
        Ok(u32::from_le(2))
    );
    let op = parastor_core::AtomicOp::FetchOr(0xf0);
    assert_eq!(
        ram.atomic(Gpa::new(16), parastor_core::Width::U8, op, Ordering::SeqCst),
        Ok(2)
    );
    let op = parastor_core::AtomicOp::FetchAnd(0x0f);
    assert_eq!(
        ram.atomic(
            Gpa::new(16),
            parastor_core::Width::U16,
            op,
            Ordering::SeqCst
        ),
        Ok(0xf2)
    );
    let op = parastor_core::AtomicOp::Swap(0x1_0000_0007);
    assert_eq!(
        ram.atomic(
            Gpa::new(16),
            parastor_core::Width::U32,
            op,
            Ordering::SeqCst
        ),
        Ok(2)
    );
    assert_eq!(
        ram.load_u32(Gpa::new(16), Ordering::SeqCst),
        Ok(7),
        "operands truncate to the width"
    );

    let misaligned = MemoryErrorKind::Misaligned;
    assert_eq!(
        ram.load_u32(Gpa::new(18), Ordering::Relaxed),
        Err(err(18, 4, misaligned))
    );
    assert_eq!(
        ram.store_u64(Gpa::new(4), 1, Ordering::Relaxed),
        Err(err(4, 8, misaligned))
    );
    assert_eq!(
        ram.load_u64(Gpa::new(2 * PAGE), Ordering::Relaxed),
        Err(err(2 * PAGE, 8, MemoryErrorKind::OutOfRange))
    );
}

/// A guest thread produces records into a ring in guest memory through its
/// own mapping: it writes a record, then publishes the ring's write index
/// with a release store. The device side reads only through `GuestRam`:
/// an acquire load of the index, then the records up to it, each checked
/// whole; then it publishes its read index so the guest can reuse slots.
#[test]
fn a_guest_thread_fills_a_ring_while_guest_ram_consumes_it() {
    const RECORDS: u32 = 20_000;
    const SLOTS: u32 = 16;
    const RECORD: usize = 256;
    const WRITE_INDEX: u64 = 0;
    const READ_INDEX: u64 = 4;
    const RING: u64 = 64;
    let ram = GuestRam::memfd("ring", 2 * PAGE as usize).unwrap();
    let (_, region) = ram.regions().next().unwrap();
    let guest = MappedRegion::map(
        region.fd().unwrap(),
        0,
        2 * PAGE as usize,
        Protection::ReadWrite,
    )
    .unwrap();
    let producer = thread::spawn(move || {
        let mut record = [0u8; RECORD];
        for n in 0..RECORDS {
            while n - u32::from_le(
                guest
                    .atomic_load::<u32>(READ_INDEX as usize, Ordering::Acquire)
                    .unwrap(),
            ) >= SLOTS
            {
                thread::yield_now();
            }
            record.fill(n as u8);
            record[..4].copy_from_slice(&n.to_le_bytes());
            let slot = RING as usize + (n % SLOTS) as usize * RECORD;
            guest.write_at(slot, &record).unwrap();
            guest
                .atomic_store::<u32>(WRITE_INDEX as usize, (n + 1).to_le(), Ordering::Release)
                .unwrap();
        }
    });
    let mut next = 0;
    let mut record = [0u8; RECORD];
    while next < RECORDS {
        let written = ram
            .load_u32(Gpa::new(WRITE_INDEX), Ordering::Acquire)
            .unwrap();
        assert!(
            written >= next && written - next <= SLOTS,
            "index {written} after {next}"
        );
        if written == next {
            thread::yield_now();
            continue;
        }
        while next < written {
            let slot = RING + u64::from(next % SLOTS) * RECORD as u64;
            ram.read_at(Gpa::new(slot), &mut record).unwrap();
            assert_eq!(record[..4], next.to_le_bytes());
            assert!(
                record[4..].iter().all(|&b| b == next as u8),
                "record {next} torn"
            );
            next += 1;
        }
        ram.store_u32(Gpa::new(READ_INDEX), next, Ordering::Release)
            .unwrap();
    }
    producer.join().unwrap();
}

#[test]
fn the_access_map_takes_pages_away_without_touching_them() {
    let plain = GuestRam::memfd("no-map", PAGE as usize).unwrap();
    assert!(
        plain
            .set_accessible(GpaRange::new(Gpa::new(0), 1), false)
            .is_err()
    );

    let ram = GuestRam::memfd("access-map", 4 * PAGE as usize)
        .unwrap()
        .with_access_map();
    ram.fill_at(Gpa::new(0), 4 * PAGE as usize, 0x33).unwrap();
    // Taking away 1 byte takes away its page.
    ram.set_accessible(GpaRange::new(Gpa::new(2 * PAGE + 5), 1), false)
        .unwrap();
    let mut buf = [0; 8];
    assert_eq!(
        ram.read_at(Gpa::new(2 * PAGE - 4), &mut buf),
        Err(err(2 * PAGE - 4, 8, UNMAPPED))
    );
    assert_eq!(
        ram.write_at(Gpa::new(3 * PAGE - 1), &[1]),
        Err(err(3 * PAGE - 1, 1, UNMAPPED))
    );
    assert_eq!(
        ram.fill_at(Gpa::new(0), 4 * PAGE as usize, 0),
        Err(err(0, 4 * PAGE, UNMAPPED))
    );
    assert_eq!(
        ram.load_u32(Gpa::new(2 * PAGE), Ordering::Acquire),
        Err(err(2 * PAGE, 4, UNMAPPED))
    );
    assert_eq!(
        ram.check(GpaRange::new(Gpa::new(2 * PAGE), 1), Access::Read),
        Err(err(2 * PAGE, 1, UNMAPPED))
    );
    let mut pins = PinSet::with_capacity(4);
    let range = GpaRange::new(Gpa::new(PAGE), 2 * PAGE);
    assert_eq!(
        ram.pin(&[range], Access::Write, DmaDomainId::KERNEL, &mut pins),
        Err(PinError::NotDeviceVisible(err(PAGE, 2 * PAGE, UNMAPPED)))
    );
    // Its neighbours still work; the refused fill changed nothing.
    ram.read_at(Gpa::new(3 * PAGE), &mut buf).unwrap();
    assert_eq!(buf, [0x33; 8]);
    ram.set_accessible(GpaRange::new(Gpa::new(2 * PAGE), PAGE), true)
        .unwrap();
    ram.read_at(Gpa::new(2 * PAGE - 4), &mut buf).unwrap();
    assert_eq!(buf, [0x33; 8]);
    assert!(
        ram.set_accessible(GpaRange::new(Gpa::new(4 * PAGE), 1), false)
            .is_err()
    );
}

/// A file with `content`.
fn file_with(content: &[u8]) -> std::fs::File {
    let fd = rustix::fs::memfd_create("guest-ram-file", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let mut file = std::fs::File::from(fd);
    file.write_all(content).unwrap();
    file
}

#[test]
fn kernel_pins_move_file_data_straight_into_and_out_of_guest_ram() {
    let ram = split_ram();
    let content: Vec<u8> = (0..64 * 1024).map(|i| (i * 13 % 251) as u8).collect();
    let file = file_with(&content);
    // Out-of-order guest ranges, one crossing the boundary between the two
    // adjacent regions (so it pins as two host ranges).
    let ranges = [
        GpaRange::new(Gpa::new(8 * PAGE + 10), 1000),
        GpaRange::new(Gpa::new(4 * PAGE - 300), 2000),
        GpaRange::new(Gpa::new(100), 96),
    ];
    let mut pins = PinSet::with_capacity(8);
    for range in &ranges {
        ram.pin(&[*range], Access::Write, DmaDomainId::KERNEL, &mut pins)
            .unwrap();
    }
    assert_eq!(pins.ranges().len(), 4);
    let kernel = KernelPins::from_pins(&pins).expect("GuestRam's own pins");
    assert_eq!(kernel.len(), 3096);
    io::preadv_exact(file.as_fd(), &kernel, 5000).unwrap();
    let mut at = 5000;
    for range in &ranges {
        let mut got = vec![0; range.len as usize];
        ram.read_at(range.gpa, &mut got).unwrap();
        assert_eq!(got, content[at..at + got.len()], "range at {:?}", range.gpa);
        at += got.len();
    }

    // And back out: change guest memory, write it to the file elsewhere.
    ram.fill_at(Gpa::new(4 * PAGE - 300), 2000, 0xee).unwrap();
    io::pwritev_all(file.as_fd(), &kernel, 40_000, false).unwrap();
    let mut written = vec![0; 3096];
    rustix::io::pread(&file, &mut written, 40_000).unwrap();
    assert_eq!(written[..1000], content[5000..6000]);
    assert!(written[1000..3000].iter().all(|&b| b == 0xee));
    assert_eq!(written[3000..], content[8000..8096]);

    // A read past the end of the file fails cleanly.
    let short = io::preadv_exact(file.as_fd(), &kernel, 64 * 1024 - 10).unwrap_err();
    assert_eq!(short.kind(), std::io::ErrorKind::UnexpectedEof);
}

/// A pin owner that is not `GuestRam`.
struct Forger;

impl PinOwner for Forger {
    fn unpin(&self, _: &[DeviceRange]) {}
}

#[test]
fn only_guest_ram_pins_for_the_kernel_domain_are_kernel_pins() {
    let ram = GuestRam::memfd("pins", 2 * PAGE as usize).unwrap();
    let range = GpaRange::new(Gpa::new(0), PAGE);
    let mut pins = PinSet::with_capacity(4);
    // Another domain: GuestRam has no device addresses there.
    assert_eq!(
        ram.pin(&[range], Access::Read, DmaDomainId::new(3), &mut pins),
        Err(PinError::Unsupported)
    );
    assert!(KernelPins::from_pins(&pins).is_none(), "an empty set");
    assert_eq!(
        ram.pin(
            &[GpaRange::new(Gpa::new(PAGE), 2 * PAGE)],
            Access::Read,
            DmaDomainId::KERNEL,
            &mut pins
        ),
        Err(PinError::Memory(err(
            PAGE,
            2 * PAGE,
            MemoryErrorKind::OutOfRange
        )))
    );
    // Addresses from anyone else prove nothing, even real ones.
    let (_, region) = ram.regions().next().unwrap();
    let mut real = PinSet::with_capacity(1);
    ram.pin(&[range], Access::Read, DmaDomainId::KERNEL, &mut real)
        .unwrap();
    let va = real.ranges()[0];
    let forger: Arc<dyn PinOwner> = Arc::new(Forger);
    let mut forged = PinSet::with_capacity(1);
    forged.push(&forger, DmaDomainId::KERNEL, &[va]).unwrap();
    assert!(KernelPins::from_pins(&forged).is_none());
    assert!(KernelPins::from_pins(&real).is_some());
    assert_eq!(va.len, PAGE);
    assert_eq!(region.len() as u64, 2 * PAGE);
    // Too many ranges for the set.
    let mut small = PinSet::with_capacity(1);
    let two = [range, GpaRange::new(Gpa::new(PAGE), 10)];
    assert_eq!(
        ram.pin(&two, Access::Read, DmaDomainId::KERNEL, &mut small),
        Err(PinError::TooManyRanges)
    );
}

/// Copies straight from one `GuestRam` to another (`copy_from`, the path
/// `parastor_core::memory::copy` takes between mapped memories) cross
/// region boundaries on both sides, overlap within one memory like
/// `memmove`, and refuse holes, pages the access map took away and ranges
/// past the extent on either side without writing anything.
#[test]
fn direct_copies_cross_regions_and_refuse_holes_access_maps_and_the_extent() {
    let split = split_ram();
    let flat = GuestRam::memfd("copy-flat", 8 * PAGE as usize)
        .unwrap()
        .with_access_map();
    let len = 2 * PAGE as usize + 300;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    split.write_at(Gpa::new(3 * PAGE + 100), &data).unwrap();
    // Out of the split memory, across its region boundary.
    let done = flat.copy_from(Gpa::new(PAGE + 7), &split, Gpa::new(3 * PAGE + 100), len);
    assert_eq!(done, Some(Ok(())));
    let mut back = vec![0; len];
    flat.read_at(Gpa::new(PAGE + 7), &mut back).unwrap();
    assert_eq!(back, data);
    // Into it, across the boundary at a different offset.
    split.fill_at(Gpa::new(0), 6 * PAGE as usize, 0).unwrap();
    let done = split.copy_from(Gpa::new(3 * PAGE + 5), &flat, Gpa::new(PAGE + 7), len);
    assert_eq!(done, Some(Ok(())));
    split.read_at(Gpa::new(3 * PAGE + 5), &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(split.compare_at(Gpa::new(3 * PAGE), &[0; 5]), Ok(true));
    // A word-sized copy.
    let done = flat.copy_from(Gpa::new(8), &split, Gpa::new(3 * PAGE + 5), 8);
    assert_eq!(done, Some(Ok(())));
    assert_eq!(flat.compare_at(Gpa::new(8), &data[..8]), Ok(true));

    // The source runs into the hole: refused, nothing written.
    let before = vec![0xee; 16];
    flat.write_at(Gpa::new(0), &before).unwrap();
    assert_eq!(
        flat.copy_from(Gpa::new(0), &split, Gpa::new(6 * PAGE - 8), 16),
        Some(Err(err(6 * PAGE - 8, 16, UNMAPPED)))
    );
    // A destination page taken away by the access map: refused.
    flat.set_accessible(GpaRange::new(Gpa::new(3 * PAGE), PAGE), false)
        .unwrap();
    assert_eq!(
        flat.copy_from(Gpa::new(3 * PAGE - 8), &split, Gpa::new(0), 16),
        Some(Err(err(3 * PAGE - 8, 16, UNMAPPED)))
    );
    // A source page taken away: refused.
    assert_eq!(
        split.copy_from(Gpa::new(0), &flat, Gpa::new(3 * PAGE + 8), 16),
        Some(Err(err(3 * PAGE + 8, 16, UNMAPPED)))
    );
    assert_eq!(flat.compare_at(Gpa::new(0), &before), Ok(true));
    // Past either extent.
    assert_eq!(
        split.copy_from(Gpa::new(9 * PAGE - 4), &flat, Gpa::new(0), 8),
        Some(Err(err(9 * PAGE - 4, 8, MemoryErrorKind::OutOfRange)))
    );
    assert_eq!(
        split.copy_from(Gpa::new(0), &flat, Gpa::new(u64::MAX - 2), 8),
        Some(Err(err(u64::MAX - 2, 8, MemoryErrorKind::OutOfRange)))
    );
    flat.set_accessible(GpaRange::new(Gpa::new(3 * PAGE), PAGE), true)
        .unwrap();

    // Overlapping ranges of one memory: as `memmove`, either direction.
    flat.write_at(Gpa::new(0), &data[..3000]).unwrap();
    assert_eq!(
        flat.copy_from(Gpa::new(100), &flat, Gpa::new(0), 3000),
        Some(Ok(()))
    );
    assert_eq!(flat.compare_at(Gpa::new(100), &data[..3000]), Ok(true));
    assert_eq!(
        flat.copy_from(Gpa::new(0), &flat, Gpa::new(100), 3000),
        Some(Ok(()))
    );
    assert_eq!(flat.compare_at(Gpa::new(0), &data[..3000]), Ok(true));

    // Memory of another type is not taken for `GuestRam`: the caller
    // stages instead.
    let other = parastor_core::memory::RamGuestMemory::new(PAGE);
    assert_eq!(flat.copy_from(Gpa::new(0), &other, Gpa::new(0), 16), None);
}

/// A wrapper that shows `inner` shifted by `base` and says so through
/// `window` only when `windowed`.
struct Shifted {
    inner: GuestRam,
    base: u64,
    windowed: bool,
}

impl GuestMemory for Shifted {
    fn extent(&self) -> Gpa {
        Gpa::new(self.inner.extent().get() - self.base)
    }
    fn read_at(&self, gpa: Gpa, dst: &mut [u8]) -> Result<(), MemoryError> {
        self.inner.read_at(gpa + self.base, dst)
    }
    fn write_at(&self, gpa: Gpa, src: &[u8]) -> Result<(), MemoryError> {
        self.inner.write_at(gpa + self.base, src)
    }
    fn fill_at(&self, gpa: Gpa, len: usize, byte: u8) -> Result<(), MemoryError> {
        self.inner.fill_at(gpa + self.base, len, byte)
    }
    fn atomic(
        &self,
        gpa: Gpa,
        width: parastor_core::memory::Width,
        op: parastor_core::memory::AtomicOp,
        order: Ordering,
    ) -> Result<u64, MemoryError> {
        self.inner.atomic(gpa + self.base, width, op, order)
    }
    fn window(&self, gpa: Gpa, len: u64) -> Option<(&dyn GuestMemory, Gpa)> {
        let _ = len;
        self.windowed
            .then(|| (&self.inner as &dyn GuestMemory, gpa + self.base))
    }
}

/// `memory::copy` and `sg::copy` look through windows to the `GuestRam`s
/// underneath (the translated addresses land where the wrapper's own
/// accessors would put them) and give the same bytes when they must stage.
#[test]
fn copies_through_windows_land_where_the_wrappers_say() {
    use parastor_core::SgList;
    for windowed in [true, false] {
        let shifted = Shifted {
            inner: split_ram(),
            base: 2 * PAGE,
            windowed,
        };
        let flat = GuestRam::memfd("copy-window", 8 * PAGE as usize).unwrap();
        let data: Vec<u8> = (0..5000).map(|i| (i * 13 % 241) as u8).collect();
        flat.write_at(Gpa::new(PAGE), &data).unwrap();
        // Through the wrapper: GPA 1 page + 50 is the split memory's
        // 3 pages + 50, so the copy crosses its region boundary.
        parastor_core::memory::copy(&flat, Gpa::new(PAGE), &shifted, Gpa::new(PAGE + 50), 5000)
            .unwrap();
        assert_eq!(
            shifted.inner.compare_at(Gpa::new(3 * PAGE + 50), &data),
            Ok(true)
        );
        // And back out, as two scattered views.
        let src = [
            GpaRange::new(Gpa::new(PAGE + 50), 1000),
            GpaRange::new(Gpa::new(PAGE + 1050), 4000),
        ];
        let dst = [
            GpaRange::new(Gpa::new(5 * PAGE), 3000),
            GpaRange::new(Gpa::new(7), 2000),
        ];
        let from = SgList::new(&shifted, &src, false).unwrap();
        let to = SgList::new(&flat, &dst, true).unwrap();
        parastor_core::sg::copy(&from, &to).unwrap();
        assert_eq!(flat.compare_at(Gpa::new(5 * PAGE), &data[..3000]), Ok(true));
        assert_eq!(flat.compare_at(Gpa::new(7), &data[3000..]), Ok(true));
        // The wrapper's hole (the split memory's 6..8 pages) is refused
        // either way.
        let e =
            parastor_core::memory::copy(&flat, Gpa::new(0), &shifted, Gpa::new(4 * PAGE - 4), 8)
                .unwrap_err();
        assert_eq!(e.kind, UNMAPPED);
        // A read-only view is never written.
        let ro = SgList::new(&flat, &dst, false).unwrap();
        assert_eq!(
            parastor_core::sg::copy(&from, &ro).unwrap_err().kind,
            MemoryErrorKind::WriteProtected
        );
    }
}

/// The one-region layout (checked without a search): below the region is a
/// hole, past it is out of range, and its edges are reachable exactly.
#[test]
fn one_region_above_zero_has_a_hole_below_it() {
    let ram = GuestRam::new(vec![(Gpa::new(2 * PAGE), region(PAGE))]).unwrap();
    let mut buf = [0; 8];
    assert_eq!(
        ram.read_at(Gpa::new(2 * PAGE - 4), &mut buf),
        Err(err(2 * PAGE - 4, 8, UNMAPPED))
    );
    assert_eq!(ram.write_at(Gpa::new(0), &buf), Err(err(0, 8, UNMAPPED)));
    assert_eq!(
        ram.load_u32(Gpa::new(PAGE), Ordering::Acquire),
        Err(err(PAGE, 4, UNMAPPED))
    );
    assert_eq!(
        ram.read_at(Gpa::new(3 * PAGE - 4), &mut buf),
        Err(err(3 * PAGE - 4, 8, MemoryErrorKind::OutOfRange))
    );
    ram.write_at(Gpa::new(2 * PAGE), &[1; 8]).unwrap();
    ram.write_at(Gpa::new(3 * PAGE - 8), &[2; 8]).unwrap();
    assert_eq!(
        ram.load_u64(Gpa::new(2 * PAGE), Ordering::Acquire),
        Ok(0x0101_0101_0101_0101)
    );
    assert_eq!(ram.compare_at(Gpa::new(3 * PAGE - 8), &[2; 8]), Ok(true));
}

/// Private staging memory (`LocalMemory`) is filled from and copied into
/// `GuestRam` in place, across region boundaries; holes are still
/// refused, and a range outside the staging buffer goes the staged way,
/// which reports it.
#[test]
fn copies_between_guest_ram_and_private_staging_memory_are_direct() {
    use parastor_core::LocalMemory;
    let ram = split_ram();
    let local = LocalMemory::new(3 * PAGE as usize);
    let data: Vec<u8> = (0..2 * PAGE as usize)
        .map(|i| (i * 5 % 247) as u8)
        .collect();
    ram.write_at(Gpa::new(3 * PAGE + 9), &data).unwrap();
    let len = data.len();
    assert_eq!(
        ram.copy_to(Gpa::new(3 * PAGE + 9), &local, Gpa::new(11), len),
        Some(Ok(()))
    );
    local.with(|b| assert_eq!(&b[11..11 + len], &data[..]));
    ram.fill_at(Gpa::new(0), 6 * PAGE as usize, 0).unwrap();
    assert_eq!(
        ram.copy_from(Gpa::new(3 * PAGE + 1), &local, Gpa::new(11), len),
        Some(Ok(()))
    );
    assert_eq!(ram.compare_at(Gpa::new(3 * PAGE + 1), &data), Ok(true));
    // Through `memory::copy`, both directions.
    parastor_core::memory::copy(&local, Gpa::new(11), &ram, Gpa::new(100), len).unwrap();
    assert_eq!(ram.compare_at(Gpa::new(100), &data), Ok(true));
    local.with_mut(|b| b.fill(0));
    parastor_core::memory::copy(&ram, Gpa::new(100), &local, Gpa::new(0), len).unwrap();
    local.with(|b| assert_eq!(&b[..len], &data[..]));
    // The hole, on the guest side.
    assert_eq!(
        ram.copy_to(Gpa::new(6 * PAGE - 8), &local, Gpa::new(0), 16),
        Some(Err(err(6 * PAGE - 8, 16, UNMAPPED)))
    );
    assert_eq!(
        ram.copy_from(Gpa::new(8 * PAGE - 8), &local, Gpa::new(0), 16),
        Some(Err(err(8 * PAGE - 8, 16, UNMAPPED)))
    );
    // Past the staging buffer: not done in place; `memory::copy` stages
    // and reports what `LocalMemory` itself says.
    let beyond = Gpa::new(3 * PAGE - 8);
    assert_eq!(ram.copy_to(Gpa::new(0), &local, beyond, 16), None);
    assert_eq!(ram.copy_from(Gpa::new(0), &local, beyond, 16), None);
    let mut probe = [0; 16];
    let expected = local.read_at(beyond, &mut probe).unwrap_err();
    assert_eq!(
        parastor_core::memory::copy(&local, beyond, &ram, Gpa::new(0), 16),
        Err(expected)
    );
}
