//! Pinning: device-visible addresses for guest memory, for the length of
//! one I/O.
//!
//! A backend that wants a device (or the kernel) to move a request's data
//! directly asks the guest memory for device addresses of the request's
//! ranges ([`GuestMemory::pin`](crate::memory::GuestMemory::pin), or
//! [`SgList::pin`](crate::sg::SgList::pin) for a whole request). It gets
//! them in a [`PinSet`] — valid until the set is cleared or dropped, when
//! its [`PinOwner`] unpins them — or learns it cannot
//! ([`PinError::Unsupported`], [`PinError::NotDeviceVisible`],
//! [`PinError::TooManyRanges`]) and bounces the data through memory it can
//! hand to the device instead. [`PinError::Memory`] is a bad request (a
//! range outside guest memory), answered as an error.
//!
//! The owner's concrete type is the proof of where the addresses came
//! from: a backend that can only use, say, kernel-pinned host memory
//! downcasts the owner ([`PinSet::owner_as`]) and bounces when it is
//! anything else.

use crate::addr::{DeviceRange, DmaDomainId};
use crate::error::MemoryError;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt;

/// Whoever pinned the ranges in a [`PinSet`]; unpins them when the set
/// lets go.
pub trait PinOwner: Any + Send + Sync {
    /// Releases `ranges`, which this owner pinned into one set.
    fn unpin(&self, ranges: &[DeviceRange]);
}

/// Why guest memory could not be pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinError {
    /// This memory cannot give device addresses at all (or not for that
    /// domain): bounce.
    Unsupported,
    /// Part of the range is valid guest memory the device may not see (a
    /// private page of a confidential VM): bounce.
    NotDeviceVisible(MemoryError),
    /// The request has more ranges than the set can hold: bounce.
    TooManyRanges,
    /// The range is not valid guest memory: fail the request.
    Memory(MemoryError),
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinError::Unsupported => f.write_str("memory cannot be pinned for this domain"),
            PinError::NotDeviceVisible(e) => write!(f, "not device-visible: {e}"),
            PinError::TooManyRanges => f.write_str("too many ranges to pin"),
            PinError::Memory(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for PinError {}

impl From<MemoryError> for PinError {
    fn from(e: MemoryError) -> Self {
        PinError::Memory(e)
    }
}

/// The device ranges of one pinned request, with the owner that unpins
/// them.
///
/// The range storage is allocated once, with a fixed capacity (the most
/// ranges one request may have), and reused: pinning and unpinning
/// allocate nothing.
pub struct PinSet {
    owner: Option<Arc<dyn PinOwner>>,
    domain: Option<DmaDomainId>,
    ranges: Vec<DeviceRange>,
}

impl PinSet {
    /// An empty set that can hold up to `capacity` ranges.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            owner: None,
            domain: None,
            ranges: Vec::with_capacity(capacity),
        }
    }

    /// The most ranges the set holds.
    pub fn capacity(&self) -> usize {
        self.ranges.capacity()
    }

    /// The pinned device ranges, in the order of the guest ranges.
    pub fn ranges(&self) -> &[DeviceRange] {
        &self.ranges
    }

    /// Whether nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.owner.is_none()
    }

    /// The domain the addresses belong to.
    pub fn domain(&self) -> Option<DmaDomainId> {
        self.domain
    }

    /// The owner, as its concrete type `T` if it is one: how a backend
    /// proves the addresses came from the kind of pin it can use.
    pub fn owner_as<T: PinOwner>(&self) -> Option<&T> {
        let any: &dyn Any = self.owner.as_deref()?;
        any.downcast_ref::<T>()
    }

    /// For [`GuestMemory::pin`](crate::memory::GuestMemory::pin)
    /// implementations: adds `ranges` pinned by `owner` in `domain`. A set
    /// holds the pins of one owner and domain; anything else is
    /// [`PinError::Unsupported`]. More ranges than the capacity is
    /// [`PinError::TooManyRanges`] (the caller unpins `ranges` itself).
    pub fn push(
        &mut self,
        owner: &Arc<dyn PinOwner>,
        domain: DmaDomainId,
        ranges: &[DeviceRange],
    ) -> Result<(), PinError> {
        match &self.owner {
            Some(o) if !Arc::ptr_eq(o, owner) || self.domain != Some(domain) => {
                return Err(PinError::Unsupported);
            }
            _ => {}
        }
        if self.ranges.capacity() - self.ranges.len() < ranges.len() {
            return Err(PinError::TooManyRanges);
        }
        if self.owner.is_none() {
            self.owner = Some(owner.clone());
            self.domain = Some(domain);
        }
        self.ranges.extend_from_slice(ranges);
        Ok(())
    }

    /// Unpins everything; the set can be reused.
    pub fn clear(&mut self) {
        if let Some(owner) = self.owner.take() {
            owner.unpin(&self.ranges);
        }
        self.domain = None;
        self.ranges.clear();
    }
}

impl Drop for PinSet {
    fn drop(&mut self) {
        self.clear();
    }
}

impl fmt::Debug for PinSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinSet")
            .field("domain", &self.domain)
            .field("ranges", &self.ranges)
            .finish()
    }
}
