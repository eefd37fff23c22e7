//! Saved state of VMBus rings, for servicing: plain, versioned,
//! untrusted data (see [`parastor_core::state`]).
//!
//! A ring is saved as where it is (GPA and size) and *our own* index: the
//! reader's read index, the writer's write index. The peer's index is in
//! the control page and is loaded (and validated) again after the restore,
//! as it is at every use. A save happens between passes, after the
//! endpoint published everything it consumed or wrote; an endpoint with
//! unpublished progress refuses to save. Space the writer reserved for
//! completions of requests in flight is not part of the ring's state:
//! whoever owns those requests (StorVSP) saves them and reserves again on
//! restore, before reading anything new.
//!
//! Restore validates every value against the ring geometry and the guest
//! memory the new service has: the size must be a valid ring size
//! (page multiple, a data area of at most 1 GiB), the ring must lie
//! inside guest memory (both ends are touched), and the index must be
//! inside the data area and 8-byte aligned. The index in guest memory is
//! not trusted: the saved one is published again.

use crate::channel::{Channel, ChannelMemory, Peer};
use crate::ring::{RingError, RingReader, RingRegion, RingWriter, check_saved};
use crate::signal::Notify;
use alloc::format;
use alloc::sync::Arc;
use parastor_core::state::{InvalidState, SaveError, Versioned};
use parastor_core::{Gpa, GuestMem, GuestMemory};
use parastor_hw::vmbus::RingLayoutError;
use serde::{Deserialize, Serialize};

/// One saved ring: where it is and our index in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingV1 {
    /// GPA of the control page.
    pub gpa: u64,
    /// Size of the ring, control page included, in bytes.
    pub size: u64,
    /// Our index: the read index of a ring we read, the write index of a
    /// ring we write.
    pub own_index: u32,
}

/// The two rings of one channel endpoint, version 1 (component
/// `vmbus-rings`): `incoming` is read, `outgoing` written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRingsV1 {
    /// The ring this endpoint reads.
    pub incoming: RingV1,
    /// The ring this endpoint writes.
    pub outgoing: RingV1,
}

impl Versioned for ChannelRingsV1 {
    const COMPONENT: &'static str = "vmbus-rings";
    const VERSION: u16 = 1;
}

/// A ring error met while reopening a saved ring, as the field it blames.
fn invalid(ring: &RingV1, e: RingError) -> InvalidState {
    let span = format!(
        "[{:#x}, {:#x})",
        ring.gpa,
        ring.gpa.saturating_add(ring.size)
    );
    if ring.gpa.checked_add(ring.size).is_none() {
        return InvalidState::new(
            "gpa",
            format_args!("ring {span} wraps around the address space"),
        );
    }
    match e {
        RingError::Layout(
            l @ (RingLayoutError::IndexOutOfRange { .. } | RingLayoutError::IndexMisaligned { .. }),
        ) => InvalidState::new(
            "own_index",
            format_args!("{l}; expected an 8-byte aligned offset in the data area"),
        ),
        RingError::Layout(l) => InvalidState::new(
            "size",
            format_args!("{l}; expected a page multiple with a data area of 1 GiB at most"),
        ),
        RingError::Memory(m) => InvalidState::new(
            "gpa",
            format_args!("ring {span} is not in guest memory: {m}"),
        ),
        other => InvalidState::new("gpa", format_args!("ring {span}: {other}")),
    }
}

fn busy(what: &str) -> SaveError {
    SaveError::Busy {
        component: ChannelRingsV1::COMPONENT,
        what: format!("{what}; save between passes, after publishing"),
    }
}

impl RingV1 {
    fn of(region: RingRegion, own_index: u32) -> Self {
        RingV1 {
            gpa: region.gpa.get(),
            size: region.size,
            own_index,
        }
    }

    fn region(&self) -> RingRegion {
        RingRegion::new(Gpa::new(self.gpa), self.size)
    }
}

impl<'a> RingReader<'a> {
    /// The ring's saved state. Refused while packets consumed are not yet
    /// published.
    pub fn save(&self) -> Result<RingV1, SaveError> {
        if self.has_unpublished() {
            return Err(busy(
                "the incoming ring has consumed packets not yet published",
            ));
        }
        Ok(RingV1::of(self.region(), self.read_index()))
    }

    /// Reopens a saved ring for reading in `mem`, after validating it (see
    /// the module docs).
    pub fn restore(mem: &'a dyn GuestMemory, saved: &RingV1) -> Result<Self, InvalidState> {
        RingReader::reopen(
            ChannelMemory::Borrowed(mem),
            saved.region(),
            saved.own_index,
        )
        .map_err(|e| invalid(saved, e))
    }
}

impl<'a> RingWriter<'a> {
    /// The ring's saved state. Refused while packets written are not yet
    /// published.
    pub fn save(&self) -> Result<RingV1, SaveError> {
        if self.has_unpublished() {
            return Err(busy(
                "the outgoing ring has packets written but not yet published",
            ));
        }
        Ok(RingV1::of(self.region(), self.write_index()))
    }

    /// Reopens a saved ring for writing in `mem`, after validating it (see
    /// the module docs), with nothing reserved.
    pub fn restore(mem: &'a dyn GuestMemory, saved: &RingV1) -> Result<Self, InvalidState> {
        RingWriter::reopen(
            ChannelMemory::Borrowed(mem),
            saved.region(),
            saved.own_index,
        )
        .map_err(|e| invalid(saved, e))
    }
}

impl ChannelRingsV1 {
    /// Saves an endpoint's two rings.
    pub fn save(incoming: &RingReader<'_>, outgoing: &RingWriter<'_>) -> Result<Self, SaveError> {
        Ok(ChannelRingsV1 {
            incoming: incoming.save()?,
            outgoing: outgoing.save()?,
        })
    }

    /// Reopens both rings in `mem`; either failing names its ring.
    pub fn restore<'a>(
        &self,
        mem: &'a dyn GuestMemory,
    ) -> Result<(RingReader<'a>, RingWriter<'a>), InvalidState> {
        self.check(mem)?;
        let reader = RingReader::restore(mem, &self.incoming).map_err(|e| e.within("incoming"))?;
        let writer = RingWriter::restore(mem, &self.outgoing).map_err(|e| e.within("outgoing"))?;
        Ok((reader, writer))
    }

    /// Checks both rings against `mem` without touching either; either
    /// failing names its ring.
    pub fn check(&self, mem: &dyn GuestMemory) -> Result<(), InvalidState> {
        for (name, ring) in [("incoming", &self.incoming), ("outgoing", &self.outgoing)] {
            check_saved(mem, ring.region(), ring.own_index)
                .map_err(|e| invalid(ring, e).within(name))?;
        }
        Ok(())
    }

    /// Reopens a host endpoint's rings in `mem` (which it then owns a
    /// share of), signalling the guest through `peer`, after checking both
    /// (nothing is touched unless both are valid).
    pub fn restore_host_owned(
        &self,
        mem: GuestMem,
        peer: Arc<dyn Notify>,
    ) -> Result<Channel<'static>, InvalidState> {
        self.check(&*mem)?;
        let mem = ChannelMemory::Owned(mem);
        let reader =
            RingReader::reopen(mem.clone(), self.incoming.region(), self.incoming.own_index)
                .map_err(|e| invalid(&self.incoming, e).within("incoming"))?;
        let writer =
            RingWriter::reopen(mem.clone(), self.outgoing.region(), self.outgoing.own_index)
                .map_err(|e| invalid(&self.outgoing, e).within("outgoing"))?;
        Ok(Channel::from_rings(mem, reader, writer, Peer::Owned(peer)))
    }

    /// Like [`ChannelRingsV1::restore_host_owned`], over memory and a
    /// signal borrowed for the endpoint's lifetime.
    pub fn restore_host<'a>(
        &self,
        mem: &'a dyn GuestMemory,
        peer: &'a dyn Notify,
    ) -> Result<Channel<'a>, InvalidState> {
        let (reader, writer) = self.restore(mem)?;
        Ok(Channel::from_rings(
            ChannelMemory::Borrowed(mem),
            reader,
            writer,
            Peer::Borrowed(peer),
        ))
    }
}

impl Channel<'_> {
    /// The endpoint's rings, saved (see [`ChannelRingsV1`]). Refused while
    /// a ring has unpublished progress.
    pub fn save_rings(&self) -> Result<ChannelRingsV1, SaveError> {
        ChannelRingsV1::save(self.reader(), self.writer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Channel, OutgoingKind, OutgoingPacket, Signal, init_ring_pair};
    use parastor_core::RamGuestMemory;
    use parastor_hw::vmbus::{DescriptorFlags, PacketType};

    const BASE: u64 = 0x10000;
    const RING: u64 = 8192;
    const KIND: OutgoingKind = OutgoingKind::InBand {
        completion_requested: true,
    };

    fn ctl(mem: &RamGuestMemory, ring: RingRegion, offset: u64) -> u32 {
        let mut b = [0; 4];
        mem.read_at(ring.gpa + offset, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn set_ctl(mem: &RamGuestMemory, ring: RingRegion, offset: u64, value: u32) {
        mem.write_at(ring.gpa + offset, &value.to_le_bytes())
            .unwrap();
    }

    /// Takes the next packet from `r` and publishes; its transaction id.
    fn take(r: &mut RingReader<'_>) -> Option<u64> {
        let mut buf = [0u8; 64];
        let (h, _) = r.peek_into(&mut buf).unwrap()?;
        r.consume_deferred(&h);
        r.publish().unwrap();
        Some(u64::from_le_bytes(buf[8..16].try_into().unwrap()))
    }

    fn completion(w: &mut RingWriter<'_>, tid: u64) {
        w.write(&OutgoingPacket {
            packet_type: PacketType::COMPLETION,
            flags: DescriptorFlags::new(),
            transaction_id: tid,
            header: &[],
            payload: &[0x5a; 40],
        })
        .unwrap();
    }

    /// A host endpoint saved mid-stream and reopened from the blob carries
    /// on exactly where it was, whatever the guest wrote over the
    /// host's own indices in the control pages meanwhile.
    #[test]
    fn round_trip_continues_the_stream() {
        let mem = RamGuestMemory::new(1 << 20);
        let sig = Signal::new();
        let (inc, out) = init_ring_pair(&mem, Gpa::new(BASE), RING).unwrap();
        let mut guest = Channel::guest(&mem, inc, out, &sig).unwrap();
        // Three 1 KiB packets; the host takes one and answers it.
        for tid in 0..3 {
            guest.write_packet(KIND, tid, &[0xab; 1000]).unwrap();
        }
        let mut reader = RingReader::new(&mem, inc).unwrap();
        let mut writer = RingWriter::new(&mem, out).unwrap();
        assert_eq!(take(&mut reader), Some(0));
        completion(&mut writer, 100);

        let saved = ChannelRingsV1::save(&reader, &writer).unwrap();
        assert_eq!(
            saved.incoming,
            RingV1 {
                gpa: BASE,
                size: RING,
                own_index: 1024
            }
        );
        assert_eq!(saved.outgoing.gpa, BASE + RING);
        let blob = parastor_core::state::encode(&saved).unwrap();

        // The guest scribbles over the host's indices.
        set_ctl(&mem, inc, 4, 8);
        set_ctl(&mem, out, 0, 16);
        let (mut reader, mut writer) =
            parastor_core::state::restore::<ChannelRingsV1, _>(&blob, |s| s.restore(&mem)).unwrap();
        assert_eq!(ctl(&mem, inc, 4), 1024, "read index published again");
        assert_eq!(ctl(&mem, out, 0), saved.outgoing.own_index);
        assert_eq!(take(&mut reader), Some(1));
        assert_eq!(take(&mut reader), Some(2));
        assert_eq!(take(&mut reader), None);
        completion(&mut writer, 101);
        for tid in [100, 101] {
            assert_eq!(guest.read_packet().unwrap().unwrap().transaction_id, tid);
        }
        assert_eq!(guest.read_packet().unwrap(), None);
    }

    /// Unpublished progress cannot be saved.
    #[test]
    fn save_refuses_unpublished_progress() {
        let mem = RamGuestMemory::new(1 << 20);
        let sig = Signal::new();
        let (inc, out) = init_ring_pair(&mem, Gpa::new(BASE), RING).unwrap();
        let mut guest = Channel::guest(&mem, inc, out, &sig).unwrap();
        guest.write_packet(KIND, 1, b"x").unwrap();
        let mut reader = RingReader::new(&mem, inc).unwrap();
        let mut buf = [0u8; 64];
        let (h, _) = reader.peek_into(&mut buf).unwrap().unwrap();
        reader.consume_deferred(&h);
        let e = reader.save().unwrap_err();
        assert!(
            alloc::string::ToString::to_string(&e).contains("not yet published"),
            "{e}"
        );
        let mut writer = RingWriter::new(&mem, out).unwrap();
        writer
            .write_deferred(&OutgoingPacket {
                packet_type: PacketType::COMPLETION,
                flags: DescriptorFlags::new(),
                transaction_id: 1,
                header: &[],
                payload: &[],
            })
            .unwrap();
        assert!(writer.save().is_err());
    }

    /// Geometry, memory and index errors name their ring and field.
    #[test]
    fn restore_refuses_invalid_rings() {
        let mem = RamGuestMemory::new(1 << 20);
        let (inc, out) = init_ring_pair(&mem, Gpa::new(BASE), RING).unwrap();
        let good = ChannelRingsV1 {
            incoming: RingV1 {
                gpa: inc.gpa.get(),
                size: inc.size,
                own_index: 0,
            },
            outgoing: RingV1 {
                gpa: out.gpa.get(),
                size: out.size,
                own_index: 0,
            },
        };
        good.restore(&mem).unwrap();
        let cases = [
            (
                "incoming.size",
                ChannelRingsV1 {
                    incoming: RingV1 {
                        size: RING + 1,
                        ..good.incoming
                    },
                    ..good
                },
            ),
            (
                "incoming.size",
                ChannelRingsV1 {
                    incoming: RingV1 {
                        size: 4096,
                        ..good.incoming
                    },
                    ..good
                },
            ),
            (
                "outgoing.gpa",
                ChannelRingsV1 {
                    outgoing: RingV1 {
                        gpa: (1 << 20) - 4096,
                        ..good.outgoing
                    },
                    ..good
                },
            ),
            (
                "outgoing.gpa",
                ChannelRingsV1 {
                    outgoing: RingV1 {
                        gpa: u64::MAX - 4095,
                        ..good.outgoing
                    },
                    ..good
                },
            ),
            (
                "incoming.own_index",
                ChannelRingsV1 {
                    incoming: RingV1 {
                        own_index: 12,
                        ..good.incoming
                    },
                    ..good
                },
            ),
            (
                "outgoing.own_index",
                ChannelRingsV1 {
                    outgoing: RingV1 {
                        own_index: 4096,
                        ..good.outgoing
                    },
                    ..good
                },
            ),
        ];
        for (field, bad) in cases {
            let e = bad.restore(&mem).map(|_| ()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }
}
