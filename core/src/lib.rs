//! parastor's storage pipeline.
//!
//! Everything a guest reads or writes passes through here: a [`Disk`] is a
//! cheap handle over anything that implements [`DiskIo`]; composites
//! ([`layered`], [`striped`]) and decorators wrap disks in disks; requests
//! carry their data as scatter-gather lists ([`sg`]) over bounds-checked
//! guest memory ([`memory`]); [`bounce`] provides staging memory under a
//! byte budget. The crate is `no_std` + `alloc` so it can run in any
//! paravisor environment.
#![no_std]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod addr;
pub mod bounce;
pub mod crypt;
pub mod delay;
pub mod disk;
pub mod error;
pub mod faulty;
pub mod inflight;
pub mod layered;
pub mod memory;
pub mod pin;
pub mod pr;
pub mod prwrap;
pub mod ram;
pub mod ready;
pub mod resize;
pub mod sg;
pub mod state;
pub mod striped;
pub mod sync;

pub use addr::{DeviceAddress, DeviceRange, DmaDomainId, Gpa, GpaRange};
pub use crypt::{CryptDisk, CryptError, Xts256};
pub use delay::{DelayDisk, DelayHandle, Timer};
pub use disk::{
    BROKEN_INLINE, BoxFuture, Description, Disk, DiskIo, InitiatorId, InvalidDisk, IoFuture,
    IoOptions, LayerIo, SectorMarker, UnmapBehavior, if_inline, poll_inline, run_inline,
};
pub use error::{
    Denied, DiskError, IoError, IoErrorKind, MediumError, MemoryError, MemoryErrorKind,
};
pub use memory::{
    Access, AtomicOp, GuestMem, GuestMemory, GuestMemoryExt, LocalMemory, RamGuestMemory, Width,
};
pub use pin::{PinError, PinOwner, PinSet};
pub use pr::{
    AccessClass, PersistentReservations, Registrant, ReservationCapabilities, ReservationNotice,
    ReservationReport, ReservationType,
};
pub use prwrap::ReservationsDisk;
pub use sg::{OwnedSgList, SgList};
