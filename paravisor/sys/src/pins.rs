//! [`KernelPins`]: the proof that a [`PinSet`]'s device addresses are host
//! virtual addresses inside live [`GuestRam`](crate::GuestRam) mappings, so
//! the kernel may move data straight into and out of them
//! ([`io::preadv_exact`](crate::io::preadv_exact),
//! [`io::pwritev_all`](crate::io::pwritev_all)).
//!
//! A `PinSet` is plain data anyone can fill, so its numbers prove nothing by
//! themselves. What does: its owner is this crate's own `GuestRam` layout
//! (checked by downcast — no other crate can make one), that owner is kept
//! alive by the set (an `Arc`, so its mappings stay mapped while the set is
//! borrowed), and every range lies inside one of the owner's mappings
//! (re-checked here, one comparison per mapping and range).

use crate::error::AccessError;
use crate::guest_ram::Layout;
use crate::io::Span;
use parastor_core::{DeviceRange, DmaDomainId, PinSet};

/// Kernel-visible pinned guest memory: the ranges of one [`PinSet`], each
/// checked to lie inside a live mapping of the `GuestRam` that pinned them.
#[derive(Clone, Copy)]
pub struct KernelPins<'a> {
    /// The memory that pinned the ranges (the set's owner).
    layout: &'a Layout,
    /// The ranges, in order: host virtual addresses.
    ranges: &'a [DeviceRange],
    /// Their total length in bytes.
    len: u64,
}

impl<'a> KernelPins<'a> {
    /// `pins` as kernel-visible memory, if its domain is
    /// [`DmaDomainId::KERNEL`], its owner is a [`GuestRam`](crate::GuestRam)
    /// and every range lies inside one of that memory's mappings; `None`
    /// otherwise (the caller bounces).
    pub fn from_pins(pins: &'a PinSet) -> Option<Self> {
        if pins.domain() != Some(DmaDomainId::KERNEL) {
            return None;
        }
        let layout = pins.owner_as::<Layout>()?;
        let mut len = 0u64;
        for range in pins.ranges() {
            layout.region_for(range)?;
            len = len.checked_add(range.len)?;
        }
        Some(Self {
            layout,
            ranges: pins.ranges(),
            len,
        })
    }

    /// Total bytes of the pinned ranges.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no byte is pinned.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ranges as spans of their mappings, for the kernel to write
    /// (`destination`) or read.
    pub(crate) fn spans(
        &self,
        destination: bool,
    ) -> impl Iterator<Item = Result<Span<'a>, AccessError>> + use<'a> {
        let layout = self.layout;
        self.ranges.iter().map(move |range| {
            // `from_pins` checked every range; this repeats the lookup to
            // get the region, and the span's own bounds check.
            let (region, offset, len) = layout.region_for(range).ok_or(AccessError {
                offset: 0,
                len: usize::try_from(range.len).unwrap_or(usize::MAX),
                kind: crate::AccessErrorKind::OutOfBounds { region_len: 0 },
            })?;
            if destination {
                Span::destination(region, offset, len)
            } else {
                Span::source(region, offset, len)
            }
        })
    }
}
