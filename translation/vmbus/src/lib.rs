//! VMBus channels: packet rings in guest memory.
//!
//! A channel is two rings that the guest allocates and offers: *incoming*
//! (guest → host) and *outgoing* (host → guest), each a control page and a
//! data area (wire layout in [`parastor_hw::vmbus`]). For now a ring is a
//! contiguous GPA region ([`RingRegion`]); GPADL-described rings come with
//! the VMBus control path.
//!
//! - [`RingReader`] / [`RingWriter`]: one side of one ring — validated
//!   indices, wrap-around copies, space accounting with reservations, and
//!   the signalling decisions (`interrupt_mask`, `pending_send_sz`).
//! - [`Channel`]: an endpoint over both rings that parses packets (in-band
//!   payloads, GPA-direct ranges as [`parastor_core::GpaRange`]s) and
//!   notifies its peer. [`Channel::host`] is StorVSP's side;
//!   [`Channel::guest`] is the mirror an emulated StorVSC uses.
//! - [`Notify`] / [`Wait`]: signalling to and from the peer, as traits;
//!   [`ChannelSignals`] holds one of each for a worker; [`Signal`] is the
//!   in-process implementation of both (counter + waker).
//!
//! The guest is untrusted: every index, length and range from the rings is
//! validated before use, each endpoint keeps its own index privately and
//! only publishes it, and malformed input is a typed error — never a panic,
//! an out-of-bounds access or an endless loop.
//!
//! Memory ordering: the rings' control fields are reached only through
//! atomic loads (`Acquire`) and stores (`Release`), with a `SeqCst` fence
//! between publishing one's own field and loading the peer's, so signals
//! are not lost on real shared memory (see the `ring` module's docs).

#![no_std]

extern crate alloc;

mod channel;
mod ring;
pub mod signal;
pub mod state;
#[cfg(test)]
mod tests;

pub use channel::{
    Channel, ChannelError, ChannelMemory, GPA_DIRECT_INLINE_LEN, GpaDirectRange,
    INLINE_PAYLOAD_LEN, INLINE_RANGES, OutgoingKind, Packet, PacketHead, PacketKind, PacketRef,
};
pub use ring::{
    OutgoingPacket, PacketHeader, Reservation, RingError, RingReader, RingRegion, RingWriter,
    WriteOutcome, init_ring, packet_ring_size,
};
pub use signal::{ChannelSignals, Notify, Signal, SignalWait, Wait};

use parastor_core::{Gpa, GuestMemory};
use parastor_hw::vmbus::RingFeatures;

/// Lays out and initialises a channel's two rings of `ring_size` bytes
/// each, back to back at `gpa` (incoming first), as a guest does before
/// offering them. Returns `(incoming, outgoing)`.
pub fn init_ring_pair(
    mem: &dyn GuestMemory,
    gpa: Gpa,
    ring_size: u64,
) -> Result<(RingRegion, RingRegion), RingError> {
    let incoming = RingRegion::new(gpa, ring_size);
    let out_gpa = gpa.checked_add(ring_size).ok_or(RingError::Layout(
        parastor_hw::vmbus::RingLayoutError::BadSize { size: ring_size },
    ))?;
    let outgoing = RingRegion::new(out_gpa, ring_size);
    init_ring(mem, incoming, RingFeatures::new())?;
    init_ring(mem, outgoing, RingFeatures::new())?;
    Ok((incoming, outgoing))
}
