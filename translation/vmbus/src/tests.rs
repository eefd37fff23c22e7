//! Tests for the VMBus ring and channel: round trips, wrap-around, flow
//! control, signalling, malformed rings and a hostile-ring loop.

extern crate std;

use super::*;
use alloc::vec;
use alloc::vec::Vec;
use parastor_core::faulty::FaultyMemory;
use parastor_core::{Gpa, GpaRange, GuestMemory, MemoryErrorKind, RamGuestMemory};
use parastor_hw::vmbus::{DescriptorError, GpaRangeError, PacketType, RingLayoutError};

const RING: u64 = 8192; // one control page + 4 KiB of data
const DATA: u32 = 4096;
const BASE: u64 = 0x10000;

/// The rigs' guest memory: RAM that can copy in small pieces (as a copy
/// racing a writer may be seen) and inject faults.
type TestMemory = FaultyMemory<RamGuestMemory>;

struct Rig {
    mem: TestMemory,
    /// Fired by the guest for the host.
    host_sig: Signal,
    /// Fired by the host for the guest.
    guest_sig: Signal,
    incoming: RingRegion,
    outgoing: RingRegion,
}

impl Rig {
    fn new() -> Self {
        Self::with_pieces(None)
    }

    /// A rig whose memory copies in pieces of at most 7 bytes.
    fn fragmented() -> Self {
        Self::with_pieces(Some(7))
    }

    fn with_pieces(max_piece: Option<usize>) -> Self {
        let mem = TestMemory::new(RamGuestMemory::new(1 << 20));
        mem.set_max_piece(max_piece);
        let (incoming, outgoing) = init_ring_pair(&mem, Gpa::new(BASE), RING).unwrap();
        Self {
            mem,
            host_sig: Signal::new(),
            guest_sig: Signal::new(),
            incoming,
            outgoing,
        }
    }

    fn host(&self) -> Channel<'_> {
        Channel::host(&self.mem, self.incoming, self.outgoing, &self.guest_sig).unwrap()
    }

    fn guest(&self) -> Channel<'_> {
        Channel::guest(&self.mem, self.incoming, self.outgoing, &self.host_sig).unwrap()
    }

    fn ctl(&self, ring: RingRegion, offset: u64) -> u32 {
        let mut b = [0; 4];
        self.mem.read_at(ring.gpa + offset, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn set_ctl(&self, ring: RingRegion, offset: u64, value: u32) {
        self.mem
            .write_at(ring.gpa + offset, &value.to_le_bytes())
            .unwrap();
    }

    /// Puts raw packet bytes at `at` in the incoming ring and publishes
    /// `write_index`.
    fn raw(&self, at: u32, bytes: &[u8], write_index: u32) {
        for (i, b) in bytes.iter().enumerate() {
            let pos = (at as usize + i) % DATA as usize;
            self.mem
                .write_at(self.incoming.gpa + 4096 + pos as u64, &[*b])
                .unwrap();
        }
        self.set_ctl(self.incoming, 0, write_index);
    }
}

fn descriptor(ty: u16, off8: u16, len8: u16, flags: u16, tid: u64) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&ty.to_le_bytes());
    v.extend_from_slice(&off8.to_le_bytes());
    v.extend_from_slice(&len8.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&tid.to_le_bytes());
    v
}

fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(8) * 8, 0);
    v
}

#[test]
fn in_band_round_trip_both_directions() {
    let rig = Rig::new();
    let mut host = rig.host();
    let mut guest = rig.guest();
    assert_eq!(host.read_packet().unwrap(), None);

    guest
        .write_packet(
            OutgoingKind::InBand {
                completion_requested: true,
            },
            7,
            b"hello",
        )
        .unwrap();
    let p = host.read_packet().unwrap().unwrap();
    assert_eq!(p.kind, PacketKind::InBand);
    assert_eq!(p.transaction_id, 7);
    assert!(p.completion_requested);
    assert_eq!(p.payload, padded(b"hello"));
    assert!(p.ranges.is_empty());
    assert_eq!(host.read_packet().unwrap(), None);

    host.write_packet(OutgoingKind::Completion, 7, &[1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    let c = guest.read_packet().unwrap().unwrap();
    assert_eq!(c.kind, PacketKind::Completion);
    assert_eq!(c.transaction_id, 7);
    assert!(!c.completion_requested);
    assert_eq!(c.payload, vec![1, 2, 3, 4, 5, 6, 7, 8]);

    // Empty payloads work too.
    host.write_packet(
        OutgoingKind::InBand {
            completion_requested: false,
        },
        9,
        &[],
    )
    .unwrap();
    let e = guest.read_packet().unwrap().unwrap();
    assert_eq!((e.transaction_id, e.payload.len()), (9, 0));
}

#[test]
fn gpa_direct_round_trip_both_directions() {
    let rig = Rig::new();
    let mut host = rig.host();
    let mut guest = rig.guest();
    // Data buffer: 100 bytes into page 0x40, through 0x41, ending on 0x50.
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
    let pfns = [0x40, 0x41, 0x50];
    rig.mem
        .write_at(Gpa::new(0x40 * 4096 + 100), &data[..8092])
        .unwrap();
    rig.mem
        .write_at(Gpa::new(0x50 * 4096), &data[8092..])
        .unwrap();
    let second = [0x50u64];
    let ranges = [
        GpaDirectRange {
            byte_offset: 100,
            byte_count: 8192,
            pfns: &pfns,
        },
        // Continues right where the first ended: merged.
        GpaDirectRange {
            byte_offset: 100,
            byte_count: 10,
            pfns: &second,
        },
    ];
    guest.write_gpa_direct(42, true, &ranges, b"cdb").unwrap();
    let p = host.read_packet().unwrap().unwrap();
    assert_eq!(p.kind, PacketKind::GpaDirect);
    assert_eq!(p.transaction_id, 42);
    assert!(p.completion_requested);
    assert_eq!(p.payload, padded(b"cdb"));
    assert_eq!(
        p.ranges,
        vec![
            GpaRange::new(Gpa::new(0x40 * 4096 + 100), 8092),
            GpaRange::new(Gpa::new(0x50 * 4096), 100 + 10),
        ]
    );
    let sg = p.sg_list(&rig.mem, false).unwrap();
    assert_eq!(sg.len(), 8202);
    let mut back = vec![0; 8202];
    sg.read_all(&mut back).unwrap();
    assert_eq!(&back[..8192], &data[..]);

    // The other direction uses the same format.
    host.write_gpa_direct(43, false, &ranges[1..], &[]).unwrap();
    let q = guest.read_packet().unwrap().unwrap();
    assert_eq!(q.kind, PacketKind::GpaDirect);
    assert!(!q.completion_requested);
    assert_eq!(
        q.ranges,
        vec![GpaRange::new(Gpa::new(0x50 * 4096 + 100), 10)]
    );
}

#[test]
fn wrap_around_at_every_alignment() {
    wrap_around_at_every_alignment_on(Rig::new);
    wrap_around_at_every_alignment_on(Rig::fragmented);
}

fn wrap_around_at_every_alignment_on(new_rig: fn() -> Rig) {
    for start in (0..DATA).step_by(8) {
        let rig = new_rig();
        for ring in [rig.incoming, rig.outgoing] {
            rig.set_ctl(ring, 0, start);
            rig.set_ctl(ring, 4, start);
        }
        let mut host = rig.host();
        let mut guest = rig.guest();
        for round in 0..3u64 {
            let len = 40 + ((start as usize / 8 + round as usize * 5) % 300);
            let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ (start as u8)).collect();
            let before = guest.writer().write_index();
            guest
                .write_packet(
                    OutgoingKind::InBand {
                        completion_requested: false,
                    },
                    round,
                    &payload,
                )
                .unwrap();
            // The trailer records the write index before the packet.
            let end = guest.writer().write_index();
            let trailer_pos = (end + DATA - 4) % DATA;
            let mut t = [0; 4];
            rig.mem
                .read_at(rig.incoming.gpa + 4096 + u64::from(trailer_pos), &mut t)
                .unwrap();
            assert_eq!(u32::from_le_bytes(t), before);
            let p = host.read_packet().unwrap().unwrap();
            assert_eq!(p.transaction_id, round);
            assert_eq!(p.payload, padded(&payload), "start {start} round {round}");
            assert_eq!(host.reader().read_index(), end);

            host.write_packet(OutgoingKind::Completion, round, &payload)
                .unwrap();
            let c = guest.read_packet().unwrap().unwrap();
            assert_eq!(c.payload, padded(&payload));
        }
    }
}

#[test]
fn ring_full_then_recovery() {
    ring_full_then_recovery_on(Rig::new);
    ring_full_then_recovery_on(Rig::fragmented);
}

fn ring_full_then_recovery_on(new_rig: fn() -> Rig) {
    let rig = new_rig();
    let mut host = rig.host();
    let mut guest = rig.guest();
    let payload = [0xab; 1000]; // 16 + 1000 + 8 = 1024 bytes in the ring
    assert_eq!(packet_ring_size(0, 1000), Some(1024));
    for tid in 0..3 {
        guest
            .write_packet(
                OutgoingKind::InBand {
                    completion_requested: true,
                },
                tid,
                &payload,
            )
            .unwrap();
    }
    // 1024 bytes free, but a writer needs strictly more than it writes.
    let full = guest.write_packet(
        OutgoingKind::InBand {
            completion_requested: true,
        },
        3,
        &payload,
    );
    assert_eq!(
        full,
        Err(RingError::Full {
            needed: 1024,
            free: 1024
        })
    );
    assert_eq!(rig.ctl(rig.incoming, 12), 1024, "pending_send_sz published");
    assert_eq!(
        rig.ctl(rig.incoming, 64) & 1,
        1,
        "the pending-send-size feature bit advertised"
    );

    // Consuming one packet crosses the threshold: the host signals.
    let signals = rig.guest_sig.count();
    assert_eq!(host.read_packet().unwrap().unwrap().transaction_id, 0);
    assert_eq!(rig.guest_sig.count(), signals + 1);
    // Consuming another does not signal again.
    assert_eq!(host.read_packet().unwrap().unwrap().transaction_id, 1);
    assert_eq!(rig.guest_sig.count(), signals + 1);

    guest
        .write_packet(
            OutgoingKind::InBand {
                completion_requested: true,
            },
            3,
            &payload,
        )
        .unwrap();
    assert_eq!(rig.ctl(rig.incoming, 12), 0, "pending_send_sz cleared");
    // Nothing was overwritten: the remaining packets arrive in order.
    for tid in [2, 3] {
        let p = host.read_packet().unwrap().unwrap();
        assert_eq!(p.transaction_id, tid);
        assert_eq!(&p.payload[..1000], &payload[..]);
    }
    assert_eq!(host.read_packet().unwrap(), None);

    // A packet that can never fit is refused outright.
    assert!(matches!(
        guest.write_packet(OutgoingKind::Completion, 9, &[0; 5000]),
        Err(RingError::TooLarge { .. })
    ));
}

#[test]
fn signal_on_empty_to_non_empty_only() {
    signal_on_empty_to_non_empty_only_on(Rig::new);
    signal_on_empty_to_non_empty_only_on(Rig::fragmented);
}

fn signal_on_empty_to_non_empty_only_on(new_rig: fn() -> Rig) {
    let rig = new_rig();
    let mut host = rig.host();
    let mut guest = rig.guest();
    let inband = OutgoingKind::InBand {
        completion_requested: false,
    };
    guest.write_packet(inband, 1, b"a").unwrap();
    assert_eq!(rig.host_sig.count(), 1);
    assert!(rig.host_sig.take());
    guest.write_packet(inband, 2, b"b").unwrap();
    assert_eq!(rig.host_sig.count(), 1, "ring was not empty");

    // The host drains with the interrupt mask set: no signals.
    host.set_interrupt_mask(true).unwrap();
    assert_eq!(rig.ctl(rig.incoming, 8), 1);
    while host.read_packet().unwrap().is_some() {}
    guest.write_packet(inband, 3, b"c").unwrap();
    assert_eq!(rig.host_sig.count(), 1, "interrupt mask set");
    // Unmasking finds the packet that arrived silently.
    assert!(host.unmask_and_check().unwrap());
    assert_eq!(rig.ctl(rig.incoming, 8), 0);
    assert_eq!(host.read_packet().unwrap().unwrap().transaction_id, 3);
    assert!(!host.unmask_and_check().unwrap());
    guest.write_packet(inband, 4, b"d").unwrap();
    assert_eq!(rig.host_sig.count(), 2);

    // No pending_send_sz: consuming never signals.
    let before = rig.guest_sig.count();
    host.read_packet().unwrap().unwrap();
    assert_eq!(rig.guest_sig.count(), before);

    // The host's writes signal the guest the same way.
    host.write_packet(OutgoingKind::Completion, 4, &[]).unwrap();
    assert_eq!(rig.guest_sig.count(), before + 1);
    guest.set_interrupt_mask(true).unwrap();
    guest.read_packet().unwrap().unwrap();
    host.write_packet(OutgoingKind::Completion, 5, &[]).unwrap();
    assert_eq!(rig.guest_sig.count(), before + 1);
}

#[test]
fn pending_send_size_needs_the_feature_bit() {
    pending_send_size_needs_the_feature_bit_on(Rig::new);
    pending_send_size_needs_the_feature_bit_on(Rig::fragmented);
}

fn pending_send_size_needs_the_feature_bit_on(new_rig: fn() -> Rig) {
    let rig = new_rig();
    let mut host = rig.host();
    let mut guest = rig.guest();
    let payload = [0; 1000];
    for tid in 0..3 {
        guest
            .write_packet(OutgoingKind::Completion, tid, &payload)
            .unwrap();
    }
    assert!(
        guest
            .write_packet(OutgoingKind::Completion, 3, &payload)
            .is_err()
    );
    // A writer that did not advertise the feature is never signalled.
    rig.set_ctl(rig.incoming, 64, 0);
    let before = rig.guest_sig.count();
    host.read_packet().unwrap().unwrap();
    assert_eq!(rig.guest_sig.count(), before);
}

#[test]
fn reservations_hold_space() {
    reservations_hold_space_on(Rig::new);
    reservations_hold_space_on(Rig::fragmented);
}

fn reservations_hold_space_on(new_rig: fn() -> Rig) {
    let rig = new_rig();
    let mut host = rig.host();
    let mut guest = rig.guest();
    // Reserve room for a 1000-byte completion (1024 in the ring).
    let r = host.reserve(1000).unwrap();
    assert_eq!(r.bytes(), 1024);
    let big = [7u8; 2000]; // 2024 in the ring
    host.write_packet(OutgoingKind::Completion, 1, &big)
        .unwrap();
    // Free 2072, of which 1024 reserved: a 1024-byte packet still fits...
    host.write_packet(OutgoingKind::Completion, 2, &[0; 1000])
        .unwrap();
    // ...but now only 24 unreserved bytes are left.
    assert_eq!(
        host.write_packet(OutgoingKind::Completion, 9, &[0; 8]),
        Err(RingError::Full {
            needed: 32,
            free: 24
        })
    );
    assert_eq!(rig.ctl(rig.outgoing, 12), 32 + 1024);
    assert_eq!(host.writer().reserved(), 1024);
    // The reservation can always be written.
    host.write_reserved_deferred(r, OutgoingKind::Completion, 3, &[1; 1000])
        .unwrap();
    host.publish_writes().unwrap();
    assert_eq!(host.writer().reserved(), 0);
    for tid in [1, 2, 3] {
        assert_eq!(guest.read_packet().unwrap().unwrap().transaction_id, tid);
    }

    // A reservation is refused when the ring cannot promise it.
    let a = host.reserve(2040).unwrap(); // 2064 in the ring
    assert!(matches!(host.reserve(2040), Err(RingError::Full { .. })));
    host.release(a);
    let b = host.reserve(2040).unwrap();
    // Writing more than was reserved is refused (and the space returned).
    assert!(matches!(
        host.write_reserved_deferred(b, OutgoingKind::Completion, 4, &[0; 2041]),
        Err(RingError::TooLarge { .. })
    ));
    assert_eq!(host.writer().reserved(), 0);
}

/// Lengths no descriptor can describe are refused, even when adding them
/// up would overflow.
#[test]
fn oversized_lengths_are_refused() {
    assert_eq!(packet_ring_size(usize::MAX, usize::MAX), None);
    assert_eq!(packet_ring_size(0, usize::MAX), None);
    let rig = Rig::new();
    let mut host = rig.host();
    assert!(matches!(
        host.reserve(usize::MAX),
        Err(RingError::TooLarge { .. })
    ));
    assert_eq!(host.writer().reserved(), 0);
}

/// A writer opened over a ring with unread packets (a channel opened
/// again) keeps them: its free space is behind the reader's index, which
/// it loads (and validates) when it opens the ring.
#[test]
fn reopened_writer_keeps_unread_packets() {
    let rig = Rig::new();
    let payload = [0xab; 1000]; // 1024 bytes in the ring
    let kind = OutgoingKind::InBand {
        completion_requested: false,
    };
    let mut guest = rig.guest();
    for tid in 0..3 {
        guest.write_packet(kind, tid, &payload).unwrap();
    }
    let mut guest = rig.guest();
    assert_eq!(
        guest.write_packet(kind, 3, &payload),
        Err(RingError::Full {
            needed: 1024,
            free: 1024
        })
    );
    let mut host = rig.host();
    for tid in 0..3 {
        assert_eq!(host.read_packet().unwrap().unwrap().transaction_id, tid);
    }
    // A bad read index is refused when the writer opens the ring.
    rig.set_ctl(rig.outgoing, 4, 12);
    assert!(matches!(
        Channel::host(&rig.mem, rig.incoming, rig.outgoing, &rig.guest_sig),
        Err(RingError::Layout(RingLayoutError::IndexMisaligned {
            index: 12
        }))
    ));
}

fn fatal(rig: &Rig) -> RingError {
    let mut host = rig.host();
    let e = host.read_packet().unwrap_err();
    assert!(e.is_fatal(), "{e:?}");
    // A broken ring stays broken: same error, nothing consumed.
    assert_eq!(host.read_packet().unwrap_err(), e);
    assert_eq!(host.reader().read_index(), 0);
    match e {
        ChannelError::Ring(r) => r,
        _ => unreachable!(),
    }
}

#[test]
fn malformed_indices() {
    let rig = Rig::new();
    rig.set_ctl(rig.incoming, 0, DATA);
    assert_eq!(
        fatal(&rig),
        RingError::Layout(RingLayoutError::IndexOutOfRange {
            index: DATA,
            data_size: DATA
        })
    );
    rig.set_ctl(rig.incoming, 0, 12);
    assert_eq!(
        fatal(&rig),
        RingError::Layout(RingLayoutError::IndexMisaligned { index: 12 })
    );
    rig.set_ctl(rig.incoming, 0, 8);
    assert_eq!(
        fatal(&rig),
        RingError::Truncated {
            needed: 24,
            available: 8
        }
    );
    // A bad read index is refused when the ring is opened.
    rig.set_ctl(rig.incoming, 0, 0);
    rig.set_ctl(rig.incoming, 4, 0xffff_fff8);
    assert!(matches!(
        Channel::host(&rig.mem, rig.incoming, rig.outgoing, &rig.guest_sig),
        Err(RingError::Layout(RingLayoutError::IndexOutOfRange { .. }))
    ));
    rig.set_ctl(rig.incoming, 4, 0);
    // The writer refuses to trust a corrupted read index from the reader:
    // it loads it again (and refuses it) once the space it last knew to be
    // free is used up, before the ring could overflow.
    let mut guest = rig.guest();
    rig.set_ctl(rig.incoming, 4, 3);
    let packet = [0u8; 64];
    let first_error = (0..DATA).find_map(|_| {
        guest
            .write_packet(OutgoingKind::Completion, 0, &packet)
            .err()
    });
    assert_eq!(
        first_error,
        Some(RingError::Layout(RingLayoutError::IndexMisaligned {
            index: 3
        }))
    );
}

#[test]
fn malformed_geometry() {
    let mem = RamGuestMemory::new(64 * 1024);
    let sig = Signal::new();
    let bad = |a: RingRegion, b: RingRegion| Channel::host(&mem, a, b, &sig).unwrap_err();
    let ok = RingRegion::new(Gpa::new(0), RING);
    assert!(matches!(
        bad(RingRegion::new(Gpa::new(RING), 5000), ok),
        RingError::Layout(RingLayoutError::NotPageMultiple { .. })
    ));
    assert!(matches!(
        bad(RingRegion::new(Gpa::new(RING), 4096), ok),
        RingError::Layout(RingLayoutError::BadSize { .. })
    ));
    assert!(matches!(
        bad(RingRegion::new(Gpa::new(u64::MAX - 4095), RING), ok),
        RingError::Layout(RingLayoutError::BadSize { .. })
    ));
    match bad(ok, RingRegion::new(Gpa::new(60 * 1024), RING)) {
        RingError::Memory(e) => assert_eq!(e.kind, MemoryErrorKind::OutOfRange),
        e => panic!("{e:?}"),
    }
}

#[test]
fn malformed_descriptors() {
    let cases: [(Vec<u8>, u32, DescriptorError); 4] = [
        (
            descriptor(6, 1, 3, 0, 1),
            24 + 8,
            DescriptorError::DataOffsetTooSmall { offset: 8 },
        ),
        (
            descriptor(6, 4, 3, 0, 1),
            24 + 8,
            DescriptorError::DataOffsetPastLength {
                offset: 32,
                len: 24,
            },
        ),
        (
            descriptor(6, 2, 0, 0, 1),
            24 + 8,
            DescriptorError::DataOffsetPastLength { offset: 16, len: 0 },
        ),
        (
            descriptor(6, 2, 100, 0, 1),
            32,
            DescriptorError::TooLong {
                len: 808,
                available: 32,
            },
        ),
    ];
    for (bytes, write_index, error) in cases {
        let rig = Rig::new();
        rig.raw(0, &bytes, write_index);
        assert_eq!(fatal(&rig), RingError::Descriptor(error));
    }
    // A length of u16::MAX units in a wrapped ring is still bounded.
    let rig = Rig::new();
    rig.set_ctl(rig.incoming, 4, DATA - 8);
    rig.raw(DATA - 8, &descriptor(6, 2, u16::MAX, 0, 1), 16);
    let mut host = rig.host();
    assert!(matches!(
        host.read_packet(),
        Err(ChannelError::Ring(RingError::Descriptor(
            DescriptorError::TooLong { .. }
        )))
    ));
}

/// A GPA-direct packet with `area` as its range header area, in a fresh rig;
/// returns the read result and whether the packet was consumed.
fn gpa_case(area: &[u8]) -> (Result<Option<Packet>, ChannelError>, bool) {
    let rig = Rig::new();
    let area = padded(area);
    let off8 = (2 + area.len() / 8) as u16;
    let mut bytes = descriptor(9, off8, off8 + 1, 1, 77);
    bytes.extend_from_slice(&area);
    bytes.extend_from_slice(&[0xcc; 8]); // payload
    bytes.extend_from_slice(&[0; 8]); // trailer
    rig.raw(0, &bytes, bytes.len() as u32);
    let mut host = rig.host();
    let r = host.read_packet();
    let consumed = host.read_packet() == Ok(None);
    (r, consumed)
}

fn gpa_area(count: u32, ranges: &[(u32, u32, &[u64])]) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 0];
    v.extend_from_slice(&count.to_le_bytes());
    for (byte_count, byte_offset, pfns) in ranges {
        v.extend_from_slice(&byte_count.to_le_bytes());
        v.extend_from_slice(&byte_offset.to_le_bytes());
        for p in *pfns {
            v.extend_from_slice(&p.to_le_bytes());
        }
    }
    v
}

#[test]
fn malformed_gpa_ranges() {
    let cases: Vec<(Vec<u8>, GpaRangeError)> = vec![
        (Vec::new(), GpaRangeError::MissingHeader),
        (gpa_area(0, &[]), GpaRangeError::NoRanges),
        (
            gpa_area(2, &[(10, 0, &[5])]),
            GpaRangeError::RangeHeaderTruncated { index: 1 },
        ),
        (
            gpa_area(1, &[(0, 0, &[5])]),
            GpaRangeError::EmptyRange { index: 0 },
        ),
        (
            gpa_area(1, &[(10, 4096, &[5])]),
            GpaRangeError::ByteOffsetTooLarge {
                index: 0,
                byte_offset: 4096,
            },
        ),
        (
            // byte_offset + byte_count overflows 32 bits: needs 1048577 PFNs.
            gpa_area(1, &[(u32::MAX, 4095, &[5])]),
            GpaRangeError::PfnArrayTruncated {
                index: 0,
                needed: 1_048_577,
                available: 1,
            },
        ),
        (
            gpa_area(1, &[(4097, 0, &[5])]),
            GpaRangeError::PfnArrayTruncated {
                index: 0,
                needed: 2,
                available: 1,
            },
        ),
        (
            gpa_area(1, &[(1, 0, &[u64::MAX])]),
            GpaRangeError::PfnTooLarge {
                index: 0,
                pfn: u64::MAX,
            },
        ),
    ];
    for (area, error) in cases {
        let (r, consumed) = gpa_case(&area);
        assert_eq!(
            r,
            Err(ChannelError::GpaRanges {
                transaction_id: 77,
                error
            })
        );
        assert!(!r.unwrap_err().is_fatal());
        assert!(consumed, "{error:?}: bad packet must be skipped");
    }
    // The top page of the address space is usable and does not overflow.
    let top = parastor_hw::vmbus::MAX_PFN;
    let (r, _) = gpa_case(&gpa_area(2, &[(4096, 0, &[top]), (4096, 0, &[top])]));
    let p = r.unwrap().unwrap();
    assert_eq!(p.ranges, vec![GpaRange::new(Gpa::new(top << 12), 4096); 2]);
    assert!(p.sg_list(&RamGuestMemory::new(4096), false).is_ok());
    // And a well-formed one through the same path.
    let (r, _) = gpa_case(&gpa_area(1, &[(10, 8, &[5])]));
    assert_eq!(
        r.unwrap().unwrap().ranges,
        vec![GpaRange::new(Gpa::new(5 * 4096 + 8), 10)]
    );
}

#[test]
fn unsupported_packet_type_is_skipped() {
    let rig = Rig::new();
    let mut bytes = descriptor(7, 2, 3, 0, 5);
    bytes.extend_from_slice(&[0; 16]);
    rig.raw(0, &bytes, 32);
    let mut host = rig.host();
    assert_eq!(
        host.read_packet(),
        Err(ChannelError::UnsupportedPacketType {
            packet_type: PacketType::DATA_USING_TRANSFER_PAGES,
            transaction_id: 5
        })
    );
    assert_eq!(host.read_packet(), Ok(None));
}

#[test]
fn hostile_ring_contents_never_panic_or_hang() {
    let mut rng = fastrand::Rng::with_seed(0x1234_5678_9abc_def1);
    let mut outcomes = [0usize; 4];
    for _ in 0..1500 {
        let rig = Rig::new();
        // Random data area, with plausible descriptors sprinkled in.
        for _ in 0..64 {
            let pos = rng.u64(..u64::from(DATA)) & !7;
            let bytes = if rng.u64(..2) == 0 {
                descriptor(
                    [6, 9, 11, 7, rng.u64(..16) as u16][rng.u64(..5) as usize],
                    rng.u64(..8) as u16,
                    rng.u64(..64) as u16,
                    rng.u64(..4) as u16,
                    rng.u64(..),
                )
            } else {
                rng.u64(..).to_le_bytes().to_vec()
            };
            rig.raw(pos as u32, &bytes, 0);
        }
        // Random control pages, often with in-range aligned indices.
        for ring in [rig.incoming, rig.outgoing] {
            for field in [0u64, 4, 8, 12, 64] {
                let v = match rng.u64(..8) {
                    0 => rng.u64(..) as u32,
                    _ => (rng.u64(..u64::from(DATA)) as u32) & !7,
                };
                rig.set_ctl(ring, field, v);
            }
        }
        let Ok(mut host) = Channel::host(&rig.mem, rig.incoming, rig.outgoing, &rig.guest_sig)
        else {
            outcomes[0] += 1;
            continue;
        };
        for _ in 0..64 {
            match host.read_packet() {
                Ok(None) => {
                    outcomes[1] += 1;
                    break;
                }
                Ok(Some(p)) => {
                    outcomes[2] += 1;
                    if p.kind == PacketKind::GpaDirect {
                        assert!(p.sg_list(&rig.mem, false).is_ok());
                    }
                }
                Err(e) if e.is_fatal() => {
                    outcomes[3] += 1;
                    break;
                }
                Err(_) => {}
            }
            // The peer may move its index under us at any time.
            if rng.u64(..8) == 0 {
                rig.set_ctl(rig.incoming, 0, rng.u64(..) as u32 & 0xff8);
            }
        }
        // Writing against a hostile read index fails cleanly or succeeds.
        let _ = host.write_packet(OutgoingKind::Completion, 1, &[0; 100]);
        let _ = host.reserve(rng.u64(..8000) as usize);
    }
    // The loop exercised refused rings, parsed packets and broken rings.
    assert!(
        outcomes[0] > 0 && outcomes[2] > 0 && outcomes[3] > 0,
        "{outcomes:?}"
    );
}

#[test]
fn signal_wakes_a_waiter() {
    let sig = Signal::new();
    sig.notify();
    futures::executor::block_on(sig.wait());
    assert!(!sig.take());
    assert_eq!(sig.count(), 1);
}

#[test]
fn packet_ref_inline_and_spilled() {
    let rig = Rig::new();
    let mut host = rig.host();
    let mut guest = rig.guest();
    // Small: payload and ranges inline.
    let pfns = [0x40u64, 0x41];
    let small = [GpaDirectRange {
        byte_offset: 8,
        byte_count: 4096,
        pfns: &pfns,
    }];
    guest.write_gpa_direct(1, true, &small, b"req").unwrap();
    let mut p = PacketRef::empty();
    assert!(host.take_packet_into(&mut p).unwrap());
    assert_eq!(p.kind, PacketKind::GpaDirect);
    assert_eq!(p.payload(), &padded(b"req")[..]);
    assert_eq!(
        p.ranges(),
        &[GpaRange::new(Gpa::new(0x40 * 4096 + 8), 4096)]
    );
    // Large: 40 discontiguous pages and a 300-byte payload spill to the
    // heap, with the same contents as `read_packet`.
    let many: Vec<u64> = (0..40u64).map(|i| 0x40 + 2 * i).collect();
    let large = [GpaDirectRange {
        byte_offset: 0,
        byte_count: 40 * 4096,
        pfns: &many,
    }];
    let body = [0x5a; 300];
    guest.write_gpa_direct(2, true, &large, &body).unwrap();
    assert!(host.take_packet_into(&mut p).unwrap());
    assert_eq!(p.ranges().len(), 40);
    assert_eq!(
        p.ranges()[39],
        GpaRange::new(Gpa::new((0x40 + 78) * 4096), 4096)
    );
    assert_eq!(&p.payload()[..300], &body[..]);
    let owned = p.to_packet();
    assert_eq!(owned.ranges, p.ranges());
    assert_eq!(owned.payload, p.payload());
    // Reused after spilling: the heap buffers take the next packet's size.
    guest.write_gpa_direct(3, true, &small, b"req").unwrap();
    assert!(host.take_packet_into(&mut p).unwrap());
    assert_eq!(p.payload(), &padded(b"req")[..]);
    assert_eq!(
        p.ranges(),
        &[GpaRange::new(Gpa::new(0x40 * 4096 + 8), 4096)]
    );
    host.publish_reads().unwrap();
}

#[test]
fn deferred_reads_publish_once() {
    let rig = Rig::new();
    let mut host = rig.host();
    let mut guest = rig.guest();
    let payload = [0xab; 1000]; // 1024 bytes in the ring
    let kind = OutgoingKind::InBand {
        completion_requested: true,
    };
    for tid in 0..3 {
        guest.write_packet(kind, tid, &payload).unwrap();
    }
    assert!(matches!(
        guest.write_packet(kind, 3, &payload),
        Err(RingError::Full { .. })
    ));
    let signals = rig.guest_sig.count();
    // Taken but unpublished: the guest still sees a full ring.
    let mut packet = PacketRef::empty();
    for tid in 0..2 {
        assert!(host.take_packet_into(&mut packet).unwrap());
        assert_eq!(packet.transaction_id, tid);
    }
    assert_eq!(rig.ctl(rig.incoming, 4), 0, "read index not yet published");
    assert_eq!(rig.guest_sig.count(), signals);
    // One publish hands back both packets and signals once.
    host.publish_reads().unwrap();
    assert_eq!(rig.ctl(rig.incoming, 4), 2048);
    assert_eq!(rig.guest_sig.count(), signals + 1);
    host.publish_reads().unwrap();
    assert_eq!(rig.guest_sig.count(), signals + 1);
    guest.write_packet(kind, 3, &payload).unwrap();
    for tid in [2, 3] {
        assert_eq!(host.read_packet().unwrap().unwrap().transaction_id, tid);
    }
    assert!(!host.take_packet_into(&mut packet).unwrap());
}

/// A batch takes its first packet with a load of the writer's index and
/// the rest from what that load showed; the publish at its end tells
/// whether the writer added packets meanwhile (which it did not signal)
/// or the ring was empty then (so the writer signals its next packet).
#[test]
fn batch_sees_packets_written_before_the_publish() {
    let rig = Rig::new();
    let mut host = rig.host();
    let mut guest = rig.guest();
    let kind = OutgoingKind::InBand {
        completion_requested: true,
    };
    let mut packet = PacketRef::empty();
    guest.write_packet(kind, 1, b"one").unwrap();
    guest.write_packet(kind, 2, b"two").unwrap();
    assert!(host.take_packet_into(&mut packet).unwrap());
    assert_eq!(packet.transaction_id, 1);
    // Written after the load: not seen yet, and not signalled (the guest
    // still sees its earlier packets unread).
    let signals = rig.host_sig.count();
    guest.write_packet(kind, 3, b"three").unwrap();
    assert_eq!(rig.host_sig.count(), signals);
    assert!(host.take_seen_packet_into(&mut packet).unwrap());
    assert_eq!(packet.transaction_id, 2);
    assert!(!host.take_seen_packet_into(&mut packet).unwrap());
    // The publish loads the writer's index: packet 3 is known now.
    host.publish_reads().unwrap();
    assert!(host.has_seen_packets());
    assert!(host.take_seen_packet_into(&mut packet).unwrap());
    assert_eq!(packet.transaction_id, 3);
    host.publish_reads().unwrap();
    // Empty at the publish: nothing known, and the guest's next packet is
    // signalled.
    assert!(!host.has_seen_packets());
    guest.write_packet(kind, 4, b"four").unwrap();
    assert_eq!(rig.host_sig.count(), signals + 1);
    assert!(!host.take_seen_packet_into(&mut packet).unwrap());
    assert!(host.take_packet_into(&mut packet).unwrap());
    assert_eq!(packet.transaction_id, 4);
}

/// Deferred writes reach the reader only when published, with one index
/// update and at most one signal for the batch.
#[test]
fn deferred_writes_publish_once() {
    let rig = Rig::new();
    let mut host = rig.host();
    let mut guest = rig.guest();
    let mut reservations: Vec<_> = (0..3).map(|_| host.reserve(40).unwrap()).collect();
    for tid in 0..3 {
        let r = reservations.remove(0);
        host.write_reserved_deferred(r, OutgoingKind::Completion, tid, &[tid as u8; 40])
            .unwrap();
    }
    assert_eq!(rig.ctl(rig.outgoing, 0), 0, "write index not yet published");
    assert_eq!(guest.read_packet().unwrap(), None);
    assert_eq!(rig.guest_sig.count(), 0);
    host.publish_writes().unwrap();
    assert_eq!(rig.guest_sig.count(), 1, "one signal for the batch");
    host.publish_writes().unwrap();
    assert_eq!(rig.guest_sig.count(), 1, "nothing new to publish");
    for tid in 0..3 {
        let p = guest.read_packet().unwrap().unwrap();
        assert_eq!((p.kind, p.transaction_id), (PacketKind::Completion, tid));
        assert_eq!(&p.payload[..40], &[tid as u8; 40]);
    }
    // A batch published while the reader is behind does not signal.
    let r = host.reserve(8).unwrap();
    host.write_reserved_deferred(r, OutgoingKind::Completion, 7, &[0; 8])
        .unwrap();
    host.publish_writes().unwrap();
    assert_eq!(rig.guest_sig.count(), 2);
    let r = host.reserve(8).unwrap();
    host.write_reserved_deferred(r, OutgoingKind::Completion, 8, &[0; 8])
        .unwrap();
    host.publish_writes().unwrap();
    assert_eq!(rig.guest_sig.count(), 2, "the guest has not read packet 7");
}

#[test]
fn guest_deferred_requests_publish_once_and_describe_their_pages() {
    // A ring large enough for a request spanning many pages.
    let mem = RamGuestMemory::new(1 << 22);
    let (incoming, outgoing) = init_ring_pair(&mem, Gpa::new(BASE), 4 * RING).unwrap();
    let (host_sig, guest_sig) = (Signal::new(), Signal::new());
    let mut host = Channel::host(&mem, incoming, outgoing, &guest_sig).unwrap();
    let mut guest = Channel::guest(&mem, incoming, outgoing, &host_sig).unwrap();
    // Two ranges: one starting mid-page and crossing two page boundaries,
    // one inside a single page; then one of 100 pages (the range area
    // spills from the stack to the heap).
    let buffer = [
        GpaRange::new(Gpa::new(0x40 * 4096 + 100), 8192),
        GpaRange::new(Gpa::new(0x90 * 4096 + 8), 16),
    ];
    guest
        .write_gpa_direct_deferred(7, true, &buffer, b"request")
        .unwrap();
    let big = [GpaRange::new(Gpa::new(0x100 * 4096), 100 * 4096)];
    guest
        .write_gpa_direct_deferred(8, false, &big, &[1; 64])
        .unwrap();
    guest
        .write_packet_deferred(
            OutgoingKind::InBand {
                completion_requested: true,
            },
            9,
            b"control",
        )
        .unwrap();
    assert_eq!(host.read_packet().unwrap(), None, "not yet published");
    assert_eq!(host_sig.count(), 0);
    guest.publish_writes().unwrap();
    assert_eq!(host_sig.count(), 1, "one signal for the batch");
    let p = host.read_packet().unwrap().unwrap();
    assert_eq!((p.kind, p.transaction_id), (PacketKind::GpaDirect, 7));
    assert!(p.completion_requested);
    assert_eq!(p.ranges, buffer);
    assert_eq!(p.payload, padded(b"request"));
    let p = host.read_packet().unwrap().unwrap();
    assert_eq!((p.kind, p.transaction_id), (PacketKind::GpaDirect, 8));
    assert!(!p.completion_requested);
    assert_eq!(p.ranges, big);
    let p = host.read_packet().unwrap().unwrap();
    assert_eq!((p.kind, p.transaction_id), (PacketKind::InBand, 9));
    assert_eq!(p.payload, padded(b"control"));
    // One range (the built-directly fast path up to 6 pages, the general
    // one beyond): the host sees exactly the range.
    for (i, pages) in [1u64, 4, 6, 7].into_iter().enumerate() {
        let r = [GpaRange::new(
            Gpa::new(0x200 * 4096 + 300),
            pages * 4096 - 600,
        )];
        guest
            .write_gpa_direct_deferred(20 + i as u64, true, &r, &[7; 8])
            .unwrap();
        guest.publish_writes().unwrap();
        let p = host.read_packet().unwrap().unwrap();
        assert_eq!(
            (p.transaction_id, p.ranges.as_slice()),
            (20 + i as u64, &r[..])
        );
    }
    // Ranges no packet can describe are refused before anything is
    // written.
    for bad in [
        GpaRange::new(Gpa::new(0x1000), 0),
        GpaRange::new(Gpa::new(u64::MAX - 10), 100),
    ] {
        assert!(matches!(
            guest.write_gpa_direct_deferred(10, true, &[bad], &[]),
            Err(RingError::TooLarge { .. })
        ));
    }
    guest.publish_writes().unwrap();
    assert_eq!(host.read_packet().unwrap(), None);
}

#[test]
fn rings_over_inaccessible_memory_fail_without_panicking() {
    use parastor_core::Denied;
    // A ring whose data page is not mapped cannot be opened.
    let rig = Rig::new();
    let data_page = GpaRange::new(rig.incoming.gpa + 4096, 4096);
    rig.mem.deny(data_page, Denied::Unmapped);
    let denied = MemoryErrorKind::Inaccessible(Denied::Unmapped);
    match Channel::host(&rig.mem, rig.incoming, rig.outgoing, &rig.guest_sig) {
        Err(RingError::Memory(e)) => assert_eq!(e.kind, denied),
        other => panic!("opened a ring over an unmapped page: {other:?}"),
    }
    rig.mem.clear();

    // A ring that loses its data page while open answers an error on the
    // next access, and keeps answering it.
    let mut host = rig.host();
    let mut guest = rig.guest();
    guest
        .write_packet(OutgoingKind::Completion, 1, &[1; 24])
        .unwrap();
    rig.mem.deny(data_page, Denied::Private);
    for _ in 0..3 {
        match host.read_packet() {
            Err(ChannelError::Ring(RingError::Memory(e))) => {
                assert_eq!(e.kind, MemoryErrorKind::Inaccessible(Denied::Private));
            }
            other => panic!("read from an inaccessible ring: {other:?}"),
        }
    }
    // The writer side too, and the control page: errors, not out of range.
    let control = GpaRange::new(rig.outgoing.gpa, 4096);
    rig.mem.deny(control, Denied::VtlProtected);
    match host.write_packet(OutgoingKind::Completion, 2, &[2; 8]) {
        Err(RingError::Memory(e)) => {
            assert_eq!(e.kind, MemoryErrorKind::Inaccessible(Denied::VtlProtected));
        }
        other => panic!("wrote to an inaccessible ring: {other:?}"),
    }
    // Access restored: the packet written before is still there, intact.
    rig.mem.clear();
    let p = host.read_packet().unwrap().unwrap();
    assert_eq!((p.transaction_id, p.payload), (1, vec![1; 24]));
}

#[test]
fn packets_are_fetched_from_the_ring_once() {
    // Every byte of the packet reads differently on the second fetch: a
    // reader that validated one copy of the descriptor and used another
    // would see a different length, type or payload.
    let rig = Rig::new();
    let mut host = rig.host();
    let mut guest = rig.guest();
    let payload: Vec<u8> = (0..40).collect();
    guest
        .write_packet(
            OutgoingKind::InBand {
                completion_requested: true,
            },
            0x1234,
            &payload,
        )
        .unwrap();
    let start = rig.incoming.gpa + 4096;
    let len = 16 + 40 + 8;
    let mut hostile = vec![0xff; len];
    // A second fetch would see a descriptor claiming the whole ring.
    hostile[..16].copy_from_slice(&descriptor(6, 2, 0x1ff, 1, 0xdead));
    rig.mem.flip(GpaRange::new(start, len as u64), hostile);
    let p = host.read_packet().unwrap().unwrap();
    assert_eq!(p.transaction_id, 0x1234);
    assert!(p.completion_requested);
    assert_eq!(p.payload, payload);
    assert_eq!(rig.mem.flip_reads(start), 1, "the packet was fetched once");
    assert_eq!(host.read_packet().unwrap(), None);
}

/// An event between two threads: set by `notify`, consumed by `wait`,
/// which gives up after a while — a signal the ring protocol failed to
/// send shows up as a timeout instead of a hang.
#[derive(Default)]
struct Event {
    set: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Event {
    fn notify(&self) {
        *self.set.lock().unwrap() = true;
        self.cv.notify_one();
    }

    /// Whether the event fired within the timeout.
    fn wait(&self) -> bool {
        let guard = self.set.lock().unwrap();
        let (mut set, _) = self
            .cv
            .wait_timeout_while(guard, std::time::Duration::from_secs(10), |s| !*s)
            .unwrap();
        core::mem::take(&mut *set)
    }
}

#[test]
fn two_threads_on_one_ring_never_lose_a_wakeup() {
    // A producer and a consumer on their own threads, over shared RAM, each
    // sleeping whenever the ring says it may (producer: ring full, after
    // publishing pending_send_sz; consumer: ring empty, after unmasking)
    // and woken only by the signals the ring tells the other side to
    // send. A lost signal leaves one side asleep: the wait times out.
    const PACKETS: u64 = 20_000;
    let mem = RamGuestMemory::new(1 << 20);
    let region = RingRegion::new(Gpa::new(0x10000), 8192);
    init_ring(&mem, region, Default::default()).unwrap();
    let (data_ready, space_ready) = (Event::default(), Event::default());
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut writer = RingWriter::new(&mem, region).unwrap();
            let mut seq = 0u64;
            while seq < PACKETS {
                // Packets of varying size, so the ring fills at varying
                // points and wraps everywhere.
                let payload = [seq as u8; 200];
                let len = 8 + (seq as usize * 37) % 190;
                let packet = OutgoingPacket {
                    packet_type: PacketType::DATA_INBAND,
                    flags: Default::default(),
                    transaction_id: seq,
                    header: &[],
                    payload: &payload[..len],
                };
                match writer.write(&packet) {
                    Ok(outcome) => {
                        if outcome.signal {
                            data_ready.notify();
                        }
                        seq += 1;
                    }
                    Err(RingError::Full { .. }) => {
                        assert!(space_ready.wait(), "producer lost its wakeup at {seq}");
                    }
                    Err(e) => panic!("producer: {e}"),
                }
            }
        });
        s.spawn(|| {
            let mut reader = RingReader::new(&mem, region).unwrap();
            let mut buf = [0u8; 256];
            let mut expect = 0u64;
            while expect < PACKETS {
                reader.set_interrupt_mask(true).unwrap();
                while let Some((header, held)) = reader.peek_into(&mut buf).unwrap() {
                    let d = header.descriptor;
                    assert_eq!(d.transaction_id.get(), expect);
                    let at = d.data_offset() as usize;
                    let len = 8 + (expect as usize * 37) % 190;
                    assert!(held >= at + len);
                    assert!(buf[at..at + len].iter().all(|&b| b == expect as u8));
                    reader.consume_deferred(&header);
                    expect += 1;
                    if reader.publish().unwrap() {
                        space_ready.notify();
                    }
                }
                if expect < PACKETS && !reader.unmask_and_check().unwrap() {
                    assert!(data_ready.wait(), "consumer lost its wakeup at {expect}");
                }
            }
        });
    });
}
