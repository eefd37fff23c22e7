//! `MappedRegion` as the device side of shared memory: copies and atomics
//! through one view, the "guest" through a second view of the same memory
//! file (on another thread where it matters), bounds and alignment errors.

use parastor_sys::{AccessError, AccessErrorKind, MappedRegion, Protection};
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;

const PAGE: usize = 4096;

/// A fresh memory file of `len` bytes and a second read-write view of it.
fn two_views(name: &str, len: usize) -> (MappedRegion, MappedRegion) {
    let device = MappedRegion::memfd(name, len).expect("memfd region");
    let guest = MappedRegion::map(device.fd().expect("memfd"), 0, len, Protection::ReadWrite)
        .expect("second view");
    (device, guest)
}

fn out_of_bounds(offset: usize, len: usize, region_len: usize) -> AccessError {
    AccessError {
        offset,
        len,
        kind: AccessErrorKind::OutOfBounds { region_len },
    }
}

#[test]
fn copies_through_one_view_are_seen_through_the_other() {
    let (device, guest) = two_views("copies", 4 * PAGE);
    assert_eq!(device.len(), 4 * PAGE);

    // A new memory file reads as zeros.
    let mut buf = vec![0xaa; 3 * PAGE];
    guest.read_at(PAGE / 2, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));

    // write_at across a page boundary, at every small length and alignment
    // (the 1/2/4/8-byte aligned cases take the single-word path).
    for len in 0..=17 {
        for offset in [PAGE - 9, PAGE - 8, PAGE - 4, PAGE - 1, 2 * PAGE + 3] {
            let src: Vec<u8> = (0..len as u8)
                .map(|i| i.wrapping_mul(37) ^ offset as u8)
                .collect();
            device.write_at(offset, &src).unwrap();
            let mut seen = vec![0; len];
            guest.read_at(offset, &mut seen).unwrap();
            assert_eq!(seen, src, "{len} bytes at {offset:#x}");
        }
    }

    // fill_at, then a vectored write over part of it.
    guest.fill_at(PAGE, 2 * PAGE, 0x5c).unwrap();
    device
        .write_vectored_at(PAGE + 10, &[b"abc", b"", b"defgh", &[0xee; PAGE]])
        .unwrap();
    let mut seen = vec![0; 2 * PAGE];
    device.read_at(PAGE, &mut seen).unwrap();
    let mut expected = vec![0x5c; 2 * PAGE];
    expected[10..18].copy_from_slice(b"abcdefgh");
    expected[18..18 + PAGE].fill(0xee);
    assert_eq!(seen, expected);

    // The end of the mapping is reachable, exactly.
    guest.write_at(4 * PAGE - 3, b"end").unwrap();
    let mut end = [0; 3];
    device.read_at(4 * PAGE - 3, &mut end).unwrap();
    assert_eq!(&end, b"end");
    device.read_at(4 * PAGE, &mut []).unwrap();
}

#[test]
fn accesses_outside_the_mapping_are_refused_and_touch_nothing() {
    let len = 2 * PAGE + 100; // not a whole number of pages
    let (device, guest) = two_views("bounds", len);
    guest.fill_at(0, len, 0x11).unwrap();

    let mut buf = [0; 16];
    assert_eq!(
        device.read_at(len - 15, &mut buf),
        Err(out_of_bounds(len - 15, 16, len))
    );
    assert_eq!(
        device.read_at(len + 1, &mut []),
        Err(out_of_bounds(len + 1, 0, len))
    );
    assert_eq!(
        device.read_at(usize::MAX - 3, &mut buf),
        Err(out_of_bounds(usize::MAX - 3, 16, len))
    );
    assert_eq!(
        device.write_at(len - 1, b"ab"),
        Err(out_of_bounds(len - 1, 2, len))
    );
    assert_eq!(device.fill_at(1, len, 0), Err(out_of_bounds(1, len, len)));
    assert_eq!(
        device.fill_at(usize::MAX, 2, 0),
        Err(out_of_bounds(usize::MAX, 2, len))
    );
    // A vectored write that does not fit writes none of its pieces.
    assert_eq!(
        device.write_vectored_at(len - 8, &[b"1234", b"5678", b"9"]),
        Err(out_of_bounds(len - 8, 9, len))
    );
    // Pieces that each fit but together do not are refused as a whole.
    let big = vec![0u8; 1 << 20];
    let pieces = vec![&big[..]; 4];
    assert!(device.write_vectored_at(0, &pieces).is_err());

    let mut all = vec![0; len];
    guest.read_at(0, &mut all).unwrap();
    assert!(
        all.iter().all(|&b| b == 0x11),
        "a refused write changed memory"
    );

    let err = device.read_at(len - 15, &mut buf).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "access of 16 bytes at offset {:#x} does not fit in the {len}-byte mapping",
            len - 15
        )
    );
}

#[test]
fn a_read_only_view_refuses_writes() {
    let device = MappedRegion::memfd("read-only", PAGE).unwrap();
    let view = MappedRegion::map(device.fd().unwrap(), 0, PAGE, Protection::Read).unwrap();
    assert!(!view.is_writable());
    assert!(view.fd().is_none());
    device.write_at(8, b"visible").unwrap();
    let mut seen = [0; 7];
    view.read_at(8, &mut seen).unwrap();
    assert_eq!(&seen, b"visible");
    assert_eq!(
        view.atomic_load::<u64>(8, Ordering::Acquire),
        device.atomic_load::<u64>(8, Ordering::Acquire)
    );

    let read_only = |offset, len| AccessError {
        offset,
        len,
        kind: AccessErrorKind::ReadOnly,
    };
    assert_eq!(view.write_at(0, b"x"), Err(read_only(0, 1)));
    assert_eq!(view.fill_at(0, 10, 0), Err(read_only(0, 10)));
    assert_eq!(
        view.write_vectored_at(0, &[b"ab", b"c"]),
        Err(read_only(0, 3))
    );
    assert_eq!(
        view.atomic_store::<u32>(0, 1, Ordering::Release),
        Err(read_only(0, 4))
    );
    assert_eq!(
        view.atomic_swap::<u8>(0, 1, Ordering::AcqRel),
        Err(read_only(0, 1))
    );
    assert_eq!(
        view.atomic_compare_exchange::<u16>(0, 0, 1, Ordering::SeqCst),
        Err(read_only(0, 2))
    );
    assert_eq!(
        view.atomic_fetch_or::<u64>(0, 1, Ordering::Relaxed),
        Err(read_only(0, 8))
    );
    assert_eq!(
        view.atomic_fetch_and::<u32>(4, 1, Ordering::Relaxed),
        Err(read_only(4, 4))
    );
    view.read_at(8, &mut seen).unwrap();
    assert_eq!(&seen, b"visible");
}

#[test]
fn atomics_of_every_width_act_on_the_shared_bytes() {
    let (device, guest) = two_views("atomics", PAGE);
    // Every ordering is accepted by every operation (loads and stores
    // strengthen the ones they cannot take instead of panicking).
    let orders = [
        Ordering::Relaxed,
        Ordering::Acquire,
        Ordering::Release,
        Ordering::AcqRel,
        Ordering::SeqCst,
    ];
    for order in orders {
        device
            .atomic_store::<u64>(64, 0x1122_3344_5566_7788, order)
            .unwrap();
        assert_eq!(
            guest.atomic_load::<u64>(64, order),
            Ok(0x1122_3344_5566_7788)
        );
        let low_half = u32::from_ne_bytes(
            0x1122_3344_5566_7788u64.to_ne_bytes()[..4]
                .try_into()
                .unwrap(),
        );
        assert_eq!(guest.atomic_load::<u32>(64, order), Ok(low_half));
        device.atomic_store::<u32>(128, 3, order).unwrap();
        assert_eq!(guest.atomic_swap::<u32>(128, 7, order), Ok(3));
        assert_eq!(device.atomic_load::<u32>(128, order), Ok(7));
        device.atomic_store::<u16>(130, 0x0f0f, order).unwrap();
        assert_eq!(guest.atomic_fetch_or::<u16>(130, 0x00f0, order), Ok(0x0f0f));
        assert_eq!(device.atomic_load::<u16>(130, order), Ok(0x0fff));
        assert_eq!(
            device.atomic_fetch_and::<u16>(130, 0xf00f, order),
            Ok(0x0fff)
        );
        assert_eq!(guest.atomic_load::<u16>(130, order), Ok(0x000f));
        device.atomic_store::<u8>(132, 9, order).unwrap();
        assert_eq!(
            guest.atomic_compare_exchange::<u8>(132, 8, 1, order),
            Ok(Err(9))
        );
        assert_eq!(
            guest.atomic_compare_exchange::<u8>(132, 9, 1, order),
            Ok(Ok(9))
        );
        assert_eq!(device.atomic_load::<u8>(132, order), Ok(1));
    }
    // The atomics and the copies see the same bytes.
    device
        .atomic_store::<u32>(256, 0xdead_beef, Ordering::Release)
        .unwrap();
    let mut raw = [0; 4];
    guest.read_at(256, &mut raw).unwrap();
    assert_eq!(u32::from_ne_bytes(raw), 0xdead_beef);
    guest
        .write_at(264, &0x0123_4567_89ab_cdefu64.to_ne_bytes())
        .unwrap();
    assert_eq!(
        device.atomic_load::<u64>(264, Ordering::Acquire),
        Ok(0x0123_4567_89ab_cdef)
    );
}

#[test]
fn atomics_refuse_misaligned_and_out_of_bounds_offsets() {
    let len = PAGE + 6;
    let device = MappedRegion::memfd("atomic-errors", len).unwrap();
    let misaligned = |offset, align| AccessError {
        offset,
        len: align,
        kind: AccessErrorKind::Misaligned { align },
    };
    assert_eq!(
        device.atomic_load::<u16>(1, Ordering::Relaxed),
        Err(misaligned(1, 2))
    );
    assert_eq!(
        device.atomic_store::<u32>(6, 1, Ordering::Relaxed),
        Err(misaligned(6, 4))
    );
    assert_eq!(
        device.atomic_swap::<u64>(4, 1, Ordering::Relaxed),
        Err(misaligned(4, 8))
    );
    assert_eq!(
        device.atomic_compare_exchange::<u64>(12, 0, 1, Ordering::SeqCst),
        Err(misaligned(12, 8))
    );
    assert_eq!(
        device.atomic_fetch_or::<u32>(2, 1, Ordering::Relaxed),
        Err(misaligned(2, 4))
    );
    assert_eq!(
        device.atomic_fetch_and::<u16>(3, 1, Ordering::Relaxed),
        Err(misaligned(3, 2))
    );
    // u8 is always aligned; bounds still apply to every width.
    device
        .atomic_store::<u8>(len - 1, 1, Ordering::Relaxed)
        .unwrap();
    assert_eq!(
        device.atomic_load::<u8>(len, Ordering::Relaxed),
        Err(out_of_bounds(len, 1, len))
    );
    assert_eq!(
        device.atomic_load::<u64>(PAGE, Ordering::Relaxed),
        Err(out_of_bounds(PAGE, 8, len))
    );
    device
        .atomic_store::<u32>(PAGE, 5, Ordering::Relaxed)
        .unwrap();
    assert_eq!(
        device.atomic_load::<u32>(usize::MAX - 3, Ordering::Relaxed),
        Err(out_of_bounds(usize::MAX - 3, 4, len))
    );
    assert_eq!(
        misaligned(6, 4).to_string(),
        "atomic access of 4 bytes at offset 0x6 is not 4-byte aligned"
    );
}

/// The guest, on its own thread and through its own view, publishes
/// numbered messages: payload first, then the sequence number with
/// `Release`, then it waits for the device's acknowledgement. The device
/// side polls the number with `Acquire` and must then read exactly that
/// message's payload, which shows the orderings hold across two mappings
/// of the same memory. While waiting, the guest keeps rewriting an aligned
/// 8-byte word with whole values, and the device's plain 8-byte `read_at`
/// of it must never see a mix of two values.
#[test]
fn a_guest_thread_publishes_through_its_view_while_the_device_polls() {
    const MESSAGES: u64 = 2_000;
    const SEQ: usize = 0;
    const ACK: usize = 8;
    const WORD: usize = 16;
    const PAYLOAD: usize = PAGE;
    let (device, guest) = two_views("mutator", 3 * PAGE);
    let guest_thread = thread::spawn(move || {
        let mut payload = vec![0; PAGE];
        let mut word = 0u8;
        for n in 1..=MESSAGES {
            payload.fill(n as u8);
            payload[..8].copy_from_slice(&n.to_le_bytes());
            guest.write_at(PAYLOAD, &payload).unwrap();
            guest
                .atomic_store::<u64>(SEQ, n, Ordering::Release)
                .unwrap();
            while guest.atomic_load::<u64>(ACK, Ordering::Acquire).unwrap() != n {
                word = word.wrapping_add(1);
                guest.write_at(WORD, &[word; 8]).unwrap();
                thread::yield_now();
            }
        }
        guest
    });
    let mut last = 0;
    let mut payload = vec![0; PAGE];
    while last < MESSAGES {
        let seq = device.atomic_load::<u64>(SEQ, Ordering::Acquire).unwrap();
        let mut word = [0; 8];
        device.read_at(WORD, &mut word).unwrap();
        assert!(
            word.iter().all(|&b| b == word[0]),
            "an aligned 8-byte read tore: {word:?}"
        );
        if seq == last {
            thread::yield_now();
            continue;
        }
        assert_eq!(seq, last + 1, "a message was skipped");
        last = seq;
        device.read_at(PAYLOAD, &mut payload).unwrap();
        assert_eq!(
            payload[..8],
            seq.to_le_bytes(),
            "payload number of message {seq}"
        );
        assert!(
            payload[8..].iter().all(|&b| b == seq as u8),
            "payload of message {seq} is not whole"
        );
        device
            .atomic_store::<u64>(ACK, seq, Ordering::Release)
            .unwrap();
    }
    let guest = guest_thread.join().unwrap();
    // After the guest's last write both views agree byte for byte.
    let (mut a, mut b) = (vec![0; 3 * PAGE], vec![0; 3 * PAGE]);
    device.read_at(0, &mut a).unwrap();
    guest.read_at(0, &mut b).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[PAYLOAD..PAYLOAD + 8], MESSAGES.to_le_bytes());
}

/// Two threads, each through its own view, increment one shared counter
/// with compare-and-exchange and with fetch-or on disjoint bits: no update
/// is lost, which only real atomic instructions on the shared page give.
#[test]
fn atomic_updates_from_two_views_are_never_lost() {
    const ROUNDS: u32 = 50_000;
    let (device, guest) = two_views("contended", PAGE);
    let guest = Arc::new(guest);
    let device = Arc::new(device);
    let workers: Vec<_> = [Arc::clone(&device), Arc::clone(&guest)]
        .into_iter()
        .enumerate()
        .map(|(who, view)| {
            thread::spawn(move || {
                for i in 0..ROUNDS {
                    let mut current = view.atomic_load::<u32>(0, Ordering::Relaxed).unwrap();
                    loop {
                        match view
                            .atomic_compare_exchange::<u32>(
                                0,
                                current,
                                current + 1,
                                Ordering::AcqRel,
                            )
                            .unwrap()
                        {
                            Ok(_) => break,
                            Err(actual) => current = actual,
                        }
                    }
                    let bit = 1u64 << ((i % 32) * 2 + who as u32);
                    view.atomic_fetch_or::<u64>(8, bit, Ordering::Relaxed)
                        .unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(
        device.atomic_load::<u32>(0, Ordering::Acquire),
        Ok(2 * ROUNDS)
    );
    assert_eq!(guest.atomic_load::<u64>(8, Ordering::Acquire), Ok(u64::MAX));
}

#[test]
fn views_are_checked_against_the_file_and_the_memory_file_cannot_shrink() {
    let device = MappedRegion::memfd("views", 2 * PAGE).unwrap();
    let fd = device.fd().unwrap();
    let invalid = |result: io::Result<MappedRegion>| result.unwrap_err().kind();
    assert_eq!(
        invalid(MappedRegion::memfd("empty", 0)),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        invalid(MappedRegion::map(fd, 0, 0, Protection::Read)),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        invalid(MappedRegion::map(fd, 1, 8, Protection::Read)),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        invalid(MappedRegion::map(fd, 0, 2 * PAGE + 1, Protection::Read)),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        invalid(MappedRegion::map(
            fd,
            PAGE as u64,
            PAGE + 1,
            Protection::Read
        )),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        invalid(MappedRegion::map(
            fd,
            u64::MAX - 4095,
            PAGE,
            Protection::Read
        )),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        invalid(MappedRegion::map(fd, 0, PAGE, Protection::None)),
        io::ErrorKind::InvalidInput
    );

    // A view of the second page only: its offset 0 is the file's PAGE.
    let tail = MappedRegion::map(fd, PAGE as u64, PAGE, Protection::ReadWrite).unwrap();
    tail.write_at(0, b"second page").unwrap();
    let mut seen = [0; 11];
    device.read_at(PAGE, &mut seen).unwrap();
    assert_eq!(&seen, b"second page");

    // Sealed: nobody holding the descriptor can shrink (or grow) the file
    // under the mappings.
    assert!(rustix::fs::ftruncate(fd, PAGE as u64).is_err());
    assert!(rustix::fs::ftruncate(fd, 4 * PAGE as u64).is_err());
    device.read_at(2 * PAGE - 1, &mut [0]).unwrap();
    // A view outlives the region (and descriptor) it was made from.
    drop(device);
    tail.read_at(0, &mut seen).unwrap();
    assert_eq!(&seen, b"second page");
}
