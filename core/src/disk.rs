//! The disk abstraction: [`DiskIo`] (what a disk implements) and [`Disk`]
//! (the cheap, cloneable, type-erased handle everything else holds).

use crate::error::{DiskError, IoError, IoErrorKind, MemoryError, MemoryErrorKind};
use crate::pr::PersistentReservations;
use crate::sg::SgList;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::future::Future;
use core::pin::{Pin, pin};
use core::task::{Context, Poll, Waker};
use stackfuture::StackFuture;

pub mod arena;
pub mod layer;

pub use arena::{ArenaFuture, FutureArena, FuturePool};
use layer::PlainLayer;
pub use layer::{LayerIo, SectorMarker};

/// Bytes of inline storage for the future of one [`Disk`] operation.
///
/// Futures that fit are stored in place (no heap allocation per I/O);
/// larger ones fall back to the heap. Composite disks keep their own futures
/// small by driving inline members without storing their futures (see
/// [`drive!`](crate::drive)), so RAM and layered stacks stay allocation-free.
pub const IO_FUTURE_BYTES: usize = 1024;

/// The future of one [`Disk`] operation.
pub type IoFuture<'a, T> = StackFuture<'a, T, IO_FUTURE_BYTES>;

/// A boxed future, for rare operations where an allocation does not matter.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What reading an unmapped sector returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnmapBehavior {
    /// Unmapped sectors read as zero.
    Zeroes,
    /// Unmapped sectors may read as anything (but read consistently).
    Unspecified,
    /// Unmap does nothing; the disk reports no unmap support.
    Ignored,
}

impl UnmapBehavior {
    /// A lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            UnmapBehavior::Zeroes => "zeroes",
            UnmapBehavior::Unspecified => "unspecified",
            UnmapBehavior::Ignored => "ignored",
        }
    }
}

/// Who issued a request: the identity persistent reservations are keyed
/// by. Frontends derive it from the I_T nexus (SCSI) or the host identifier
/// (NVMe); `InitiatorId::LOCAL` is parastor itself.
///
/// Stored as two `u64` halves rather than a `u128`: a 16-byte-aligned field
/// in [`IoOptions`] would make every I/O future too aligned for the inline
/// [`IoFuture`] storage, and every I/O would then allocate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InitiatorId {
    hi: u64,
    lo: u64,
}

impl InitiatorId {
    /// parastor's own requests (tools, tests, read-cache population).
    pub const LOCAL: InitiatorId = InitiatorId::new(0);

    /// The initiator with identity `id`.
    pub const fn new(id: u128) -> Self {
        InitiatorId {
            hi: (id >> 64) as u64,
            lo: id as u64,
        }
    }

    /// The identity as a number.
    pub const fn get(self) -> u128 {
        ((self.hi as u128) << 64) | self.lo as u128
    }

    /// The identity as 16 big-endian bytes (a host identifier).
    pub const fn to_bytes(self) -> [u8; 16] {
        self.get().to_be_bytes()
    }
}

// Inline futures (IoFuture) are pointer-aligned: request arguments must not
// need more.
const _: () = assert!(core::mem::align_of::<IoOptions>() <= core::mem::align_of::<usize>());

/// Per-request options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoOptions {
    /// The initiator of the request.
    pub initiator: InitiatorId,
    /// Writes: the data must be durable when the write completes.
    pub fua: bool,
    /// Unmap: only unmap at the block level; do not pass the hint on to a
    /// file system or thin pool underneath.
    pub block_level_only: bool,
    /// Unmap of a layer: the layers below hold zeros for this range, so the
    /// layer may simply drop the sectors.
    pub next_is_zero: bool,
}

impl IoOptions {
    /// Options with `fua` set.
    pub const fn fua() -> Self {
        IoOptions {
            initiator: InitiatorId::LOCAL,
            fua: true,
            block_level_only: false,
            next_is_zero: false,
        }
    }
}

/// One disk: metadata and operations.
///
/// # Range contract
/// Every implementation checks every request against its *current* sector
/// count and answers an out-of-range request with
/// [`DiskError::IllegalBlock`] — never a panic. Callers do not pre-validate
/// (the count can change at any time). The [`Disk`] handle guarantees that
/// `(sector + count) * sector_size` is representable and at most `i64::MAX`
/// and that buffers hold whole sectors.
///
/// # Inline completion
/// A disk whose operations always finish on their first poll (RAM, and
/// synchronous host files) says so with [`DiskIo::completes_inline`];
/// composite disks then run its operations without storing their futures,
/// which keeps whole stacks free of per-I/O heap allocation.
///
/// # Dropping an operation's future
/// A future returned by [`read`](DiskIo::read), [`write`](DiskIo::write),
/// [`flush`](DiskIo::flush) or [`unmap`](DiskIo::unmap) may be dropped at
/// any time. Dropping never blocks, never panics and is never unsound: it
/// *detaches* the operation. Its effect on the medium is then unspecified
/// (none, part or all of it — as for an aborted SCSI command), and until
/// the backend's own completion arrives a read's buffer may still be
/// written and a write's buffer still read.
///
/// An implementation that hands a buffer's addresses to a device or the
/// kernel (NVMe DMA, io_uring) therefore keeps, in an in-flight table
/// ([`InFlight`](crate::inflight::InFlight))
/// until that completion, everything the
/// device still uses: the pins or the bounce buffer, and a handle on the
/// guest memory. Composite disks await every piece they started before
/// completing (striped: all members). Inline disks
/// ([`DiskIo::completes_inline`]) finish on their first poll, so for them
/// a dropped future is only ever an operation not started.
///
/// **Frontends must not use drop as cancellation.** An operation the guest
/// waits for is awaited — or aborted through the backend and then awaited
/// — before the guest-visible resources tied to it (ring space reserved
/// for its completion, its completion slot, the guest's right to reuse
/// its data pages) are released: a frontend whose channel fails *drains*
/// its requests instead of dropping them.
pub trait DiskIo: Send + Sync + 'static {
    /// Short name of the implementation ("ram", "layered", "striped", …).
    fn kind(&self) -> &'static str;
    /// Current number of logical sectors. May change at runtime; a disk
    /// whose size changes implements [`DiskIo::wait_resize`].
    fn sector_count(&self) -> u64;
    /// Logical sector size in bytes (a power of two, at least 512). Fixed.
    fn sector_size(&self) -> u32;
    /// Physical sector size in bytes. Fixed.
    fn physical_sector_size(&self) -> u32 {
        self.sector_size()
    }
    /// A natural 16-byte identity, if the disk has one. Fixed.
    fn disk_id(&self) -> Option<[u8; 16]> {
        None
    }
    /// Whether writes and unmaps are refused. Fixed.
    ///
    /// A flush of a read-only disk succeeds without reaching the disk:
    /// nothing was written through it, so nothing waits to become durable
    /// (SBC: a SYNCHRONIZE CACHE range that holds no cached data is not an
    /// error, and a write-protected logical unit refuses only commands
    /// that write). A read-only implementation never sees `flush`.
    fn is_read_only(&self) -> bool;
    /// Whether a write with `fua` set is durable when it completes. Fixed.
    fn is_fua_respected(&self) -> bool;
    /// What unmapped sectors read as. Fixed.
    fn unmap_behavior(&self) -> UnmapBehavior;
    /// Preferred unmap granularity in sectors. Fixed.
    fn optimal_unmap_sectors(&self) -> u32 {
        1
    }
    /// Whether every operation's future completes on its first poll.
    fn completes_inline(&self) -> bool {
        false
    }
    /// Implementation-specific facts for `parastor disk info`.
    fn details(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// Child disks (layers, stripe members, the decorated disk), labelled.
    fn children(&self) -> Vec<(String, Disk)> {
        Vec::new()
    }
    /// The persistent-reservation interface, if the disk has one.
    fn persistent_reservations(&self) -> Option<&dyn PersistentReservations> {
        None
    }
    /// Whether this disk's own contents and state survive a restart of
    /// the service (servicing): true (the default) for disks whose data
    /// lives outside the process — host block devices, NVMe namespaces,
    /// files — and for decorators whose state is configuration or is
    /// saved and restored with the frontend's state (crypt, delay,
    /// reservations); false for disks whose data lives only in this
    /// process's memory (RAM disks and RAM layers). Fixed.
    ///
    /// A disk answers for itself only: [`Disk::survives_restart`] combines
    /// it with every child's, so a composite needs no override.
    fn survives_restart(&self) -> bool {
        true
    }

    /// Reads `buf.len()` bytes starting at `sector` into `buf`.
    fn read(
        &self,
        buf: SgList<'_>,
        sector: u64,
        opts: IoOptions,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// Writes `buf` starting at `sector`; honours `opts.fua`.
    fn write(
        &self,
        buf: SgList<'_>,
        sector: u64,
        opts: IoOptions,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// Makes all completed writes durable.
    fn flush(&self, opts: IoOptions) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// Tells the disk that `[sector, sector + count)` is no longer needed.
    fn unmap(
        &self,
        sector: u64,
        count: u64,
        opts: IoOptions,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// Ejects removable media.
    fn eject(&self) -> impl Future<Output = Result<(), DiskError>> + Send {
        core::future::ready(Err(DiskError::UnsupportedEject))
    }

    /// Completes with the new sector count once it differs from `known`.
    /// The default suits disks whose size is fixed: it completes at once if
    /// `known` is stale and otherwise never.
    fn wait_resize(&self, known: u64) -> impl Future<Output = u64> + Send {
        let now = self.sector_count();
        async move {
            if now != known {
                return now;
            }
            core::future::pending().await
        }
    }

    /// [`DiskIo::read`], run to completion at once. Composite disks call
    /// this instead of building a future when the disk
    /// [completes inline](DiskIo::completes_inline). The default polls the
    /// future once; a disk whose work is synchronous anyway (RAM) overrides
    /// it to skip the future altogether.
    fn read_inline(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        run_inline(self.read(buf, sector, opts))
    }

    /// [`DiskIo::write`], run to completion at once (see
    /// [`DiskIo::read_inline`]).
    fn write_inline(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        run_inline(self.write(buf, sector, opts))
    }

    /// The layer side of this disk, if it has its own: a disk that holds
    /// only some sectors, or a decorator that passes its inner disk's
    /// presence through, returns `Some(self)` and implements [`LayerIo`].
    /// `None` (the default) makes it a plain layer: every sector present,
    /// no read-cache fills. See [`layer`].
    fn as_layer(&self) -> Option<&impl LayerIo> {
        None::<&PlainLayer>
    }
}

/// The object-safe twin of [`DiskIo`], with futures stored inline.
trait DynDisk: Send + Sync {
    fn sector_count(&self) -> u64;
    fn details(&self) -> Vec<(&'static str, String)>;
    fn children(&self) -> Vec<(String, Disk)>;
    fn persistent_reservations(&self) -> Option<&dyn PersistentReservations>;
    fn read<'a>(
        &'a self,
        buf: SgList<'a>,
        sector: u64,
        opts: IoOptions,
    ) -> IoFuture<'a, Result<(), DiskError>>;
    fn write<'a>(
        &'a self,
        buf: SgList<'a>,
        sector: u64,
        opts: IoOptions,
    ) -> IoFuture<'a, Result<(), DiskError>>;
    fn flush(&self, opts: IoOptions) -> IoFuture<'_, Result<(), DiskError>>;
    fn unmap(
        &self,
        sector: u64,
        count: u64,
        opts: IoOptions,
    ) -> IoFuture<'_, Result<(), DiskError>>;
    fn eject(&self) -> IoFuture<'_, Result<(), DiskError>>;
    fn wait_resize(&self, known: u64) -> IoFuture<'_, u64>;
    fn read_present<'a, 'm: 'a>(
        &'a self,
        buf: SgList<'a>,
        sector: u64,
        marker: &'a mut SectorMarker<'m>,
        opts: IoOptions,
    ) -> IoFuture<'a, Result<(), DiskError>>;
    fn write_no_overwrite<'a>(
        &'a self,
        buf: SgList<'a>,
        sector: u64,
    ) -> IoFuture<'a, Result<(), DiskError>>;
    fn read_inline(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError>;
    fn write_inline(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError>;
    fn read_present_inline(
        &self,
        buf: SgList<'_>,
        sector: u64,
        marker: &mut SectorMarker<'_>,
        opts: IoOptions,
    ) -> Result<(), DiskError>;
}

impl<T: DiskIo> DynDisk for T {
    fn sector_count(&self) -> u64 {
        DiskIo::sector_count(self)
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        DiskIo::details(self)
    }
    fn children(&self) -> Vec<(String, Disk)> {
        DiskIo::children(self)
    }
    fn persistent_reservations(&self) -> Option<&dyn PersistentReservations> {
        DiskIo::persistent_reservations(self)
    }
    fn read<'a>(
        &'a self,
        buf: SgList<'a>,
        sector: u64,
        opts: IoOptions,
    ) -> IoFuture<'a, Result<(), DiskError>> {
        StackFuture::from_or_box(DiskIo::read(self, buf, sector, opts))
    }
    fn write<'a>(
        &'a self,
        buf: SgList<'a>,
        sector: u64,
        opts: IoOptions,
    ) -> IoFuture<'a, Result<(), DiskError>> {
        StackFuture::from_or_box(DiskIo::write(self, buf, sector, opts))
    }
    fn flush(&self, opts: IoOptions) -> IoFuture<'_, Result<(), DiskError>> {
        StackFuture::from_or_box(DiskIo::flush(self, opts))
    }
    fn unmap(
        &self,
        sector: u64,
        count: u64,
        opts: IoOptions,
    ) -> IoFuture<'_, Result<(), DiskError>> {
        StackFuture::from_or_box(DiskIo::unmap(self, sector, count, opts))
    }
    fn eject(&self) -> IoFuture<'_, Result<(), DiskError>> {
        StackFuture::from_or_box(DiskIo::eject(self))
    }
    fn wait_resize(&self, known: u64) -> IoFuture<'_, u64> {
        StackFuture::from_or_box(DiskIo::wait_resize(self, known))
    }
    fn read_present<'a, 'm: 'a>(
        &'a self,
        buf: SgList<'a>,
        sector: u64,
        marker: &'a mut SectorMarker<'m>,
        opts: IoOptions,
    ) -> IoFuture<'a, Result<(), DiskError>> {
        match self.as_layer() {
            Some(own) => StackFuture::from_or_box(own.read_present(buf, sector, marker, opts)),
            None => {
                StackFuture::from_or_box(layer::read_all_present(self, buf, sector, marker, opts))
            }
        }
    }
    fn write_no_overwrite<'a>(
        &'a self,
        buf: SgList<'a>,
        sector: u64,
    ) -> IoFuture<'a, Result<(), DiskError>> {
        match self.as_layer() {
            Some(own) => StackFuture::from_or_box(own.write_no_overwrite(buf, sector)),
            None => ready(Err(DiskError::Unsupported("write-no-overwrite"))),
        }
    }
    fn read_inline(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        DiskIo::read_inline(self, buf, sector, opts)
    }
    fn write_inline(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        DiskIo::write_inline(self, buf, sector, opts)
    }
    fn read_present_inline(
        &self,
        buf: SgList<'_>,
        sector: u64,
        marker: &mut SectorMarker<'_>,
        opts: IoOptions,
    ) -> Result<(), DiskError> {
        match self.as_layer() {
            Some(own) => own.read_present_inline(buf, sector, marker, opts),
            None => layer::read_all_present_inline(self, buf, sector, marker, opts),
        }
    }
}

/// Why a [`DiskIo`] cannot become a [`Disk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidDisk {
    /// The logical sector size is not a power of two in 512..=65536.
    SectorSize(u32),
    /// The physical sector size is not a power of two at least as large as
    /// the logical one.
    PhysicalSectorSize {
        /// The physical size reported.
        physical: u32,
        /// The logical size reported.
        logical: u32,
    },
}

impl fmt::Display for InvalidDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidDisk::SectorSize(s) => write!(
                f,
                "sector size {s} is invalid: expected a power of two from 512 to 65536"
            ),
            InvalidDisk::PhysicalSectorSize { physical, logical } => write!(
                f,
                "physical sector size {physical} is invalid: expected a power of two of at least the logical size {logical}"
            ),
        }
    }
}

impl core::error::Error for InvalidDisk {}

/// Metadata fixed at construction, cached so the hot path reads no vtable.
#[derive(Clone, Copy, Debug)]
struct Fixed {
    kind: &'static str,
    sector_size: u32,
    sector_shift: u32,
    physical_sector_size: u32,
    disk_id: Option<[u8; 16]>,
    read_only: bool,
    fua: bool,
    unmap_behavior: UnmapBehavior,
    optimal_unmap_sectors: u32,
    inline: bool,
    write_no_overwrite: bool,
    survives_restart: bool,
}

struct DiskInner<T: ?Sized> {
    fixed: Fixed,
    /// Storage for the futures of this disk's operations that composites
    /// keep while they wait ([`drive!`](crate::drive)).
    futures: FuturePool,
    io: T,
}

/// A disk: a cheap, cloneable handle over any [`DiskIo`].
///
/// The handle checks what every request must satisfy before the disk sees
/// it — whole sectors, a representable byte range, no modification of a
/// read-only disk — and forwards everything else, including
/// [`Disk::wait_resize`], to the implementation.
#[derive(Clone)]
pub struct Disk {
    inner: Arc<DiskInner<dyn DynDisk>>,
}

impl fmt::Debug for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Disk")
            .field("kind", &self.inner.fixed.kind)
            .field("sector_count", &self.sector_count())
            .field("sector_size", &self.inner.fixed.sector_size)
            .finish()
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> IoFuture<'a, T> {
    StackFuture::from(core::future::ready(v))
}

impl Disk {
    /// Wraps `io`, checking and caching its fixed metadata.
    pub fn new<T: DiskIo>(io: T) -> Result<Disk, InvalidDisk> {
        let sector_size = io.sector_size();
        if !parastor_hw::is_valid_sector_size(sector_size) {
            return Err(InvalidDisk::SectorSize(sector_size));
        }
        let physical = io.physical_sector_size();
        if !parastor_hw::is_valid_physical_sector_size(physical, sector_size) {
            return Err(InvalidDisk::PhysicalSectorSize {
                physical,
                logical: sector_size,
            });
        }
        let fixed = Fixed {
            kind: io.kind(),
            sector_size,
            sector_shift: sector_size.trailing_zeros(),
            physical_sector_size: physical,
            disk_id: io.disk_id(),
            read_only: io.is_read_only(),
            fua: io.is_fua_respected(),
            unmap_behavior: io.unmap_behavior(),
            optimal_unmap_sectors: io.optimal_unmap_sectors().max(1),
            inline: io.completes_inline(),
            survives_restart: io.survives_restart(),
            write_no_overwrite: io
                .as_layer()
                .is_some_and(|l| l.supports_write_no_overwrite()),
        };
        let inner: Arc<DiskInner<dyn DynDisk>> = Arc::new(DiskInner {
            fixed,
            futures: FuturePool::new(),
            io,
        });
        Ok(Disk { inner })
    }

    /// Short name of the implementation.
    pub fn kind(&self) -> &'static str {
        self.inner.fixed.kind
    }
    /// Current number of logical sectors.
    pub fn sector_count(&self) -> u64 {
        self.inner.io.sector_count()
    }
    /// Logical sector size in bytes.
    pub fn sector_size(&self) -> u32 {
        self.inner.fixed.sector_size
    }
    /// log2 of the logical sector size.
    pub fn sector_shift(&self) -> u32 {
        self.inner.fixed.sector_shift
    }
    /// Physical sector size in bytes.
    pub fn physical_sector_size(&self) -> u32 {
        self.inner.fixed.physical_sector_size
    }
    /// The disk's natural 16-byte identity, if any.
    pub fn disk_id(&self) -> Option<[u8; 16]> {
        self.inner.fixed.disk_id
    }
    /// Whether the disk refuses writes and unmaps (a flush succeeds).
    pub fn is_read_only(&self) -> bool {
        self.inner.fixed.read_only
    }
    /// Whether FUA writes are durable on completion.
    pub fn is_fua_respected(&self) -> bool {
        self.inner.fixed.fua
    }
    /// What unmapped sectors read as.
    pub fn unmap_behavior(&self) -> UnmapBehavior {
        self.inner.fixed.unmap_behavior
    }
    /// Preferred unmap granularity in sectors (at least 1).
    pub fn optimal_unmap_sectors(&self) -> u32 {
        self.inner.fixed.optimal_unmap_sectors
    }
    /// Whether every operation completes on its first poll.
    pub fn completes_inline(&self) -> bool {
        self.inner.fixed.inline
    }
    /// Whether this disk and every disk below it survive a restart of the
    /// service ([`DiskIo::survives_restart`]); see
    /// [`Disk::volatile_part`] for which one does not.
    pub fn survives_restart(&self) -> bool {
        self.volatile_part().is_none()
    }
    /// The first disk in this stack (this one, then its children, depth
    /// first) whose contents would not survive a restart of the service:
    /// its path of child labels from this disk (`""` for this disk itself,
    /// `"layer 0"`, `"inner/member 1"`) and its kind. `None` when the
    /// whole stack survives.
    pub fn volatile_part(&self) -> Option<(String, &'static str)> {
        if !self.inner.fixed.survives_restart {
            return Some((String::new(), self.kind()));
        }
        self.inner
            .io
            .children()
            .into_iter()
            .find_map(|(label, child)| {
                child.volatile_part().map(|(path, kind)| {
                    let path = if path.is_empty() {
                        label
                    } else {
                        alloc::format!("{label}/{path}")
                    };
                    (path, kind)
                })
            })
    }
    /// Runs `op` on this disk in place if it [completes
    /// inline](Disk::completes_inline): `Some` of its result, with no future
    /// built or stored. `None`, with `op` not called, on a disk whose
    /// operations may wait: the caller awaits (or keeps) the operation's
    /// future instead. See [`if_inline`].
    ///
    /// ```
    /// use parastor_core::ram::RamDisk;
    /// use parastor_core::{Disk, Gpa, GpaRange, IoOptions, RamGuestMemory, SgList};
    ///
    /// let disk = Disk::new(RamDisk::new(4096, 512).unwrap()).unwrap();
    /// let mem = RamGuestMemory::new(512);
    /// let range = [GpaRange::new(Gpa::new(0), 512)];
    /// let buf = SgList::new(&mem, &range, true).unwrap();
    /// // A RAM disk completes inline: the read ran, no future was built.
    /// // (On a disk that waits this is `None`: await `disk.read(..)`.)
    /// let now = disk.run_now(|d| d.read_inline(buf, 0, IoOptions::default()));
    /// assert_eq!(now, Some(Ok(())));
    /// ```
    pub fn run_now<T>(&self, op: impl FnOnce(&Disk) -> T) -> Option<T> {
        if_inline(self.completes_inline(), || op(self))
    }
    /// The persistent-reservation interface, if any.
    pub fn persistent_reservations(&self) -> Option<&dyn PersistentReservations> {
        self.inner.io.persistent_reservations()
    }
    /// An arena from this disk's [`FuturePool`], for the future of one
    /// operation on this disk that a composite keeps while it waits
    /// ([`drive!`](crate::drive) uses it); reset and recycled when dropped.
    pub fn future_arena(&self) -> FutureArena<'_> {
        self.inner.futures.arena(arena::ARENA_BYTES)
    }
    /// Whether two handles refer to the same disk.
    pub fn ptr_eq(&self, other: &Disk) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Checks representability of `count` sectors at `sector`.
    pub fn check_representable(&self, sector: u64, count: u64) -> Result<(), DiskError> {
        let end = sector.checked_add(count).ok_or(DiskError::IllegalBlock)?;
        match end.checked_mul(u64::from(self.sector_size())) {
            Some(bytes) if bytes <= i64::MAX as u64 => Ok(()),
            _ => Err(DiskError::IllegalBlock),
        }
    }

    /// Checks a data request: whole sectors, representable.
    fn check_buffer(&self, buf: &SgList<'_>, sector: u64) -> Result<(), DiskError> {
        if buf.len() & (self.sector_size() as usize - 1) != 0 {
            return Err(DiskError::InvalidInput(
                "buffer length is not a whole number of sectors",
            ));
        }
        self.check_representable(sector, (buf.len() >> self.sector_shift()) as u64)
    }

    /// What a read must satisfy before the disk sees it.
    fn check_read(&self, buf: &SgList<'_>, sector: u64) -> Result<(), DiskError> {
        self.check_buffer(buf, sector)?;
        if !buf.is_writable() {
            let gpa = buf
                .segments()
                .next()
                .map_or(crate::addr::Gpa::ZERO, |r| r.gpa);
            let kind = MemoryErrorKind::WriteProtected;
            return Err(MemoryError {
                gpa,
                len: buf.len() as u64,
                kind,
            }
            .into());
        }
        Ok(())
    }

    /// What a write must satisfy before the disk sees it.
    fn check_write(&self, buf: &SgList<'_>, sector: u64) -> Result<(), DiskError> {
        self.check_buffer(buf, sector)?;
        if self.is_read_only() {
            return Err(DiskError::ReadOnly);
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `sector` into `buf`.
    pub fn read<'a>(
        &'a self,
        buf: SgList<'a>,
        sector: u64,
        opts: IoOptions,
    ) -> IoFuture<'a, Result<(), DiskError>> {
        match self.check_read(&buf, sector) {
            Ok(()) => self.inner.io.read(buf, sector, opts),
            Err(e) => ready(Err(e)),
        }
    }

    /// Writes `buf` at `sector`. The buffer is only read.
    pub fn write<'a>(
        &'a self,
        buf: SgList<'a>,
        sector: u64,
        opts: IoOptions,
    ) -> IoFuture<'a, Result<(), DiskError>> {
        match self.check_write(&buf, sector) {
            Ok(()) => self.inner.io.write(buf.read_only(), sector, opts),
            Err(e) => ready(Err(e)),
        }
    }

    /// [`Disk::read`] for a disk that [completes inline](Disk::completes_inline),
    /// run to completion without building a future. On any other disk it
    /// fails rather than block.
    pub fn read_inline(
        &self,
        buf: SgList<'_>,
        sector: u64,
        opts: IoOptions,
    ) -> Result<(), DiskError> {
        self.check_read(&buf, sector)?;
        self.inner.io.read_inline(buf, sector, opts)
    }

    /// [`Disk::write`] run to completion without building a future (see
    /// [`Disk::read_inline`]).
    pub fn write_inline(
        &self,
        buf: SgList<'_>,
        sector: u64,
        opts: IoOptions,
    ) -> Result<(), DiskError> {
        self.check_write(&buf, sector)?;
        self.inner.io.write_inline(buf.read_only(), sector, opts)
    }

    /// Makes completed writes durable. On a read-only disk this succeeds at
    /// once without reaching the disk (see [`DiskIo::is_read_only`]).
    pub fn flush(&self, opts: IoOptions) -> IoFuture<'_, Result<(), DiskError>> {
        if self.is_read_only() {
            return ready(Ok(()));
        }
        self.inner.io.flush(opts)
    }

    /// Unmaps `[sector, sector + count)`. On a disk whose unmap behaviour is
    /// [`UnmapBehavior::Ignored`] this only range-checks.
    pub fn unmap(
        &self,
        sector: u64,
        count: u64,
        opts: IoOptions,
    ) -> IoFuture<'_, Result<(), DiskError>> {
        if let Err(e) = self.check_representable(sector, count) {
            return ready(Err(e));
        }
        if self.is_read_only() {
            return ready(Err(DiskError::ReadOnly));
        }
        if self.unmap_behavior() == UnmapBehavior::Ignored {
            let in_range = sector + count <= self.sector_count();
            return ready(if in_range {
                Ok(())
            } else {
                Err(DiskError::IllegalBlock)
            });
        }
        self.inner.io.unmap(sector, count, opts)
    }

    /// Ejects removable media.
    pub fn eject(&self) -> IoFuture<'_, Result<(), DiskError>> {
        self.inner.io.eject()
    }

    /// Completes with the new sector count once it differs from `known`.
    pub fn wait_resize(&self, known: u64) -> IoFuture<'_, u64> {
        self.inner.io.wait_resize(known)
    }

    /// The stack below this disk as a tree, for display.
    pub fn describe(&self) -> Description {
        let f = &self.inner.fixed;
        Description {
            kind: f.kind,
            sector_count: self.sector_count(),
            sector_size: f.sector_size,
            physical_sector_size: f.physical_sector_size,
            read_only: f.read_only,
            fua: f.fua,
            unmap_behavior: f.unmap_behavior,
            optimal_unmap_sectors: f.optimal_unmap_sectors,
            disk_id: f.disk_id,
            details: self.inner.io.details(),
            children: self
                .inner
                .io
                .children()
                .into_iter()
                .map(|(label, d)| (label, d.describe()))
                .collect(),
        }
    }
}

/// A disk stack described as a tree: each node's geometry and behaviours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description {
    /// Implementation name.
    pub kind: &'static str,
    /// Current sector count.
    pub sector_count: u64,
    /// Logical sector size.
    pub sector_size: u32,
    /// Physical sector size.
    pub physical_sector_size: u32,
    /// Read-only.
    pub read_only: bool,
    /// FUA respected.
    pub fua: bool,
    /// Unmap behaviour.
    pub unmap_behavior: UnmapBehavior,
    /// Optimal unmap granularity.
    pub optimal_unmap_sectors: u32,
    /// Disk id.
    pub disk_id: Option<[u8; 16]>,
    /// Implementation-specific facts.
    pub details: Vec<(&'static str, String)>,
    /// Labelled children.
    pub children: Vec<(String, Description)>,
}

/// Implements the geometry half of [`DiskIo`] — sector count and sizes,
/// disk id, read-only, FUA, unmap granularity — by forwarding to the disk in
/// field `$inner` (a [`Disk`]). For decorators, which change how data moves
/// but not what the disk is. Use inside `impl DiskIo for …`.
#[macro_export]
macro_rules! forward_geometry {
    ($inner:ident) => {
        fn sector_count(&self) -> u64 {
            self.$inner.sector_count()
        }
        fn sector_size(&self) -> u32 {
            self.$inner.sector_size()
        }
        fn physical_sector_size(&self) -> u32 {
            self.$inner.physical_sector_size()
        }
        fn disk_id(&self) -> Option<[u8; 16]> {
            self.$inner.disk_id()
        }
        fn is_read_only(&self) -> bool {
            self.$inner.is_read_only()
        }
        fn is_fua_respected(&self) -> bool {
            self.$inner.is_fua_respected()
        }
        fn optimal_unmap_sectors(&self) -> u32 {
            self.$inner.optimal_unmap_sectors()
        }
    };
}

/// Implements operations a decorator passes through unchanged by forwarding
/// them to the disk in field `$inner` (a [`Disk`]), driving the inner
/// operation with [`drive!`](crate::drive) according to the `bool` field
/// `$inline` (whether the inner disk completes inline).
///
/// `forward_ops!(inner, inline; flush, eject, …)` writes one method per
/// name, inside `impl DiskIo for …` or `impl LayerIo for …`. The names:
/// - [`DiskIo`]: `unmap_behavior`, `flush`, `unmap`, `eject`,
///   `wait_resize`, `persistent_reservations`, and `children` (the inner
///   disk, labelled "inner");
/// - [`LayerIo`]: `supports_write_no_overwrite`, `write_no_overwrite`.
///
/// Geometry has its own macro, [`forward_geometry!`](crate::forward_geometry).
#[macro_export]
macro_rules! forward_ops {
    ($inner:ident, $inline:ident; $($op:ident),+ $(,)?) => {
        $($crate::forward_ops!(@op $op, $inner, $inline);)+
    };
    (@op unmap_behavior, $inner:ident, $inline:ident) => {
        fn unmap_behavior(&self) -> $crate::disk::UnmapBehavior {
            self.$inner.unmap_behavior()
        }
    };
    (@op flush, $inner:ident, $inline:ident) => {
        async fn flush(
            &self,
            opts: $crate::disk::IoOptions,
        ) -> ::core::result::Result<(), $crate::error::DiskError> {
            let inner = &self.$inner;
            $crate::drive!(self.$inline, inner.flush(opts))
        }
    };
    (@op unmap, $inner:ident, $inline:ident) => {
        async fn unmap(
            &self,
            sector: u64,
            count: u64,
            opts: $crate::disk::IoOptions,
        ) -> ::core::result::Result<(), $crate::error::DiskError> {
            let inner = &self.$inner;
            $crate::drive!(self.$inline, inner.unmap(sector, count, opts))
        }
    };
    (@op eject, $inner:ident, $inline:ident) => {
        async fn eject(&self) -> ::core::result::Result<(), $crate::error::DiskError> {
            let inner = &self.$inner;
            $crate::drive!(self.$inline, inner.eject())
        }
    };
    (@op wait_resize, $inner:ident, $inline:ident) => {
        fn wait_resize(&self, known: u64) -> impl ::core::future::Future<Output = u64> + Send {
            self.$inner.wait_resize(known)
        }
    };
    (@op persistent_reservations, $inner:ident, $inline:ident) => {
        fn persistent_reservations(
            &self,
        ) -> ::core::option::Option<&dyn $crate::pr::PersistentReservations> {
            self.$inner.persistent_reservations()
        }
    };
    (@op children, $inner:ident, $inline:ident) => {
        fn children(&self) -> ::alloc::vec::Vec<(::alloc::string::String, $crate::disk::Disk)> {
            ::alloc::vec![(::alloc::string::String::from("inner"), self.$inner.clone())]
        }
    };
    (@op supports_write_no_overwrite, $inner:ident, $inline:ident) => {
        fn supports_write_no_overwrite(&self) -> bool {
            self.$inner.supports_write_no_overwrite()
        }
    };
    (@op write_no_overwrite, $inner:ident, $inline:ident) => {
        async fn write_no_overwrite(
            &self,
            buf: $crate::sg::SgList<'_>,
            sector: u64,
        ) -> ::core::result::Result<(), $crate::error::DiskError> {
            let inner = &self.$inner;
            $crate::drive!(self.$inline, inner.write_no_overwrite(buf, sector))
        }
    };
}

/// Awaits a disk operation from inside a composite disk's future.
///
/// `drive!(inline, disk.op(..))`: if `inline` (the target disk completes
/// on its first poll), `op` runs to completion right here, through
/// [`if_inline`], and its future is never stored in the caller's state;
/// otherwise the future goes into an arena from `disk`'s own
/// [`FuturePool`] ([`Disk::future_arena`]) and is awaited there. Either way
/// the caller's own future stays small enough to live inline in an
/// [`IoFuture`], and in the steady state neither way allocates: RAM and
/// layered stacks build no inner future at all, and over a disk that
/// really waits (NVMe) the arenas are recycled. `disk` is an identifier
/// (a [`Disk`]). Use inside `async` code only.
///
/// Reads, writes and layer reads of inline disks go through the disk's
/// synchronous twins ([`Disk::read_inline`], …), so no future is built for
/// them at all; any other operation is polled once in place
/// ([`run_inline`]).
#[macro_export]
macro_rules! drive {
    ($inline:expr, $disk:ident . read ( $($arg:expr),* $(,)? )) => {
        $crate::drive!(@twin $inline, $disk, read, read_inline, $($arg),*)
    };
    ($inline:expr, $disk:ident . write ( $($arg:expr),* $(,)? )) => {
        $crate::drive!(@twin $inline, $disk, write, write_inline, $($arg),*)
    };
    ($inline:expr, $disk:ident . read_present ( $($arg:expr),* $(,)? )) => {
        $crate::drive!(@twin $inline, $disk, read_present, read_present_inline, $($arg),*)
    };
    (@twin $inline:expr, $disk:ident, $op:ident, $twin:ident, $($arg:expr),*) => {
        match $crate::disk::if_inline($inline, || $disk.$twin($($arg),*)) {
            ::core::option::Option::Some(result) => result,
            ::core::option::Option::None => {
                let arena = $disk.future_arena();
                let fut = arena.pin($disk.$op($($arg),*));
                fut.await
            }
        }
    };
    ($inline:expr, $disk:ident . $op:ident ( $($arg:expr),* $(,)? )) => {
        match $crate::disk::if_inline($inline, || $crate::disk::run_inline($disk.$op($($arg),*))) {
            ::core::option::Option::Some(result) => result,
            ::core::option::Option::None => {
                let arena = $disk.future_arena();
                let fut = arena.pin($disk.$op($($arg),*));
                fut.await
            }
        }
    };
}

/// The one place the inline decision is made: runs `op` in place and
/// returns `Some` of its result if `inline` (the disk completes every
/// operation on its first poll, [`Disk::completes_inline`]); otherwise
/// returns `None` without calling `op`, and the caller builds and keeps the
/// operation's future instead.
///
/// `op` is a synchronous twin ([`Disk::read_inline`], [`Disk::write_inline`],
/// [`Disk::read_present_inline`]) or any future polled in place with
/// [`run_inline`] / [`poll_inline`]. [`drive!`](crate::drive) (composites)
/// and [`Disk::run_now`] (frontends) are built on it.
#[inline]
pub fn if_inline<T>(inline: bool, op: impl FnOnce() -> T) -> Option<T> {
    if inline { Some(op()) } else { None }
}

/// The error of an operation that did not finish on its first poll on a
/// disk that promised it would ([`Disk::completes_inline`]): a device
/// failure rather than a hang.
pub const BROKEN_INLINE: DiskError = DiskError::Io(IoError::new(IoErrorKind::DeviceFailed, 0));

/// Polls `fut` once, in place, and returns its output; a future that is not
/// ready breaks the inline contract and yields [`BROKEN_INLINE`] instead of
/// a hang. For futures whose output is not a disk result (a frontend's
/// whole command); disk operations use [`run_inline`].
pub fn poll_inline<F: Future>(fut: F) -> Result<F::Output, DiskError> {
    let fut = pin!(fut);
    match fut.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => Err(BROKEN_INLINE),
    }
}

/// Polls the disk operation `fut` once and returns its result; a future
/// that is not ready breaks the inline contract and yields
/// [`BROKEN_INLINE`] instead of a hang.
pub fn run_inline<T>(fut: impl Future<Output = Result<T, DiskError>>) -> Result<T, DiskError> {
    poll_inline(fut)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU32, Ordering};

    /// A disk whose reads and writes never complete.
    struct Stuck;

    impl DiskIo for Stuck {
        fn kind(&self) -> &'static str {
            "stuck"
        }
        fn sector_count(&self) -> u64 {
            8
        }
        fn sector_size(&self) -> u32 {
            512
        }
        fn is_read_only(&self) -> bool {
            false
        }
        fn is_fua_respected(&self) -> bool {
            false
        }
        fn unmap_behavior(&self) -> UnmapBehavior {
            UnmapBehavior::Ignored
        }
        async fn read(&self, _: SgList<'_>, _: u64, _: IoOptions) -> Result<(), DiskError> {
            core::future::pending().await
        }
        async fn write(&self, _: SgList<'_>, _: u64, _: IoOptions) -> Result<(), DiskError> {
            core::future::pending().await
        }
        async fn flush(&self, _: IoOptions) -> Result<(), DiskError> {
            Ok(())
        }
        async fn unmap(&self, _: u64, _: u64, _: IoOptions) -> Result<(), DiskError> {
            Ok(())
        }
    }

    #[test]
    fn inline_twins_answer_or_refuse() {
        use crate::addr::{Gpa, GpaRange};
        use crate::memory::{GuestMemory, RamGuestMemory};
        use crate::ram::RamDisk;
        let mem = RamGuestMemory::new(4096);
        let r = [GpaRange::new(Gpa::new(0), 1024)];
        let sg = SgList::new(&mem, &r, true).unwrap();
        let o = IoOptions::default();

        let ram = Disk::new(RamDisk::new(8192, 512).unwrap()).unwrap();
        mem.fill_at(Gpa::new(0), 1024, 0xab).unwrap();
        ram.write_inline(sg, 3, o).unwrap();
        mem.fill_at(Gpa::new(0), 1024, 0).unwrap();
        ram.read_inline(sg, 3, o).unwrap();
        let mut b = [0u8; 1024];
        mem.read_at(Gpa::new(0), &mut b).unwrap();
        assert_eq!(b, [0xab; 1024]);
        let mut bits = [0u64; 1];
        let mut m = SectorMarker::new(0, 16, &mut bits);
        ram.read_present_inline(sg, 2, &mut m, o).unwrap();
        assert_eq!(m.next_set(0), Some((3, 1)));
        // The handle's checks apply to the twins too.
        assert_eq!(ram.read_inline(sg, 15, o), Err(DiskError::IllegalBlock));
        assert_eq!(
            ram.write_inline(sg, u64::MAX, o),
            Err(DiskError::IllegalBlock)
        );
        let mut m = SectorMarker::new(10, 2, &mut bits);
        assert!(matches!(
            ram.read_present_inline(sg, 2, &mut m, o),
            Err(DiskError::InvalidInput(_))
        ));

        // A disk that would wait is refused, not blocked on.
        let stuck = Disk::new(Stuck).unwrap();
        assert!(!stuck.completes_inline());
        let refused = BROKEN_INLINE;
        assert_eq!(stuck.read_inline(sg, 0, o), Err(refused.clone()));
        assert_eq!(stuck.write_inline(sg, 0, o), Err(refused));
    }

    /// The inline decision: run in place on an inline disk, leave the
    /// operation alone (not even built) on one that waits, and turn a
    /// broken promise into an error.
    #[test]
    fn run_now_decides_once() {
        use crate::addr::{Gpa, GpaRange};
        use crate::memory::RamGuestMemory;
        use crate::ram::RamDisk;
        let mem = RamGuestMemory::new(4096);
        let r = [GpaRange::new(Gpa::new(0), 512)];
        let sg = SgList::new(&mem, &r, true).unwrap();
        let o = IoOptions::default();

        let ram = Disk::new(RamDisk::new(8192, 512).unwrap()).unwrap();
        assert_eq!(ram.run_now(|d| d.read_inline(sg, 1, o)), Some(Ok(())));
        assert_eq!(
            ram.run_now(|d| run_inline(d.flush(o))),
            Some(Ok(())),
            "any operation, polled in place"
        );

        let stuck = Disk::new(Stuck).unwrap();
        let mut called = false;
        assert_eq!(stuck.run_now(|_| called = true), None);
        assert!(!called, "a disk that waits runs nothing in place");
        assert_eq!(if_inline(false, || unreachable!("not inline")), None::<()>);

        // Polling in place: a future that waits is a broken promise.
        let pending = poll_inline(core::future::pending::<u8>());
        assert_eq!(pending, Err(BROKEN_INLINE));
        assert_eq!(poll_inline(core::future::ready(7u8)), Ok(7));
        assert_eq!(run_inline(stuck.read(sg, 0, o)), Err(BROKEN_INLINE));
    }

    /// A disk whose flush always fails and counts its calls.
    struct FailingFlush {
        read_only: bool,
        flushes: Arc<AtomicU32>,
    }

    impl DiskIo for FailingFlush {
        fn kind(&self) -> &'static str {
            "failing-flush"
        }
        fn sector_count(&self) -> u64 {
            8
        }
        fn sector_size(&self) -> u32 {
            512
        }
        fn is_read_only(&self) -> bool {
            self.read_only
        }
        fn is_fua_respected(&self) -> bool {
            true
        }
        fn unmap_behavior(&self) -> UnmapBehavior {
            UnmapBehavior::Ignored
        }
        async fn read(&self, _: SgList<'_>, _: u64, _: IoOptions) -> Result<(), DiskError> {
            Ok(())
        }
        async fn write(&self, _: SgList<'_>, _: u64, _: IoOptions) -> Result<(), DiskError> {
            Ok(())
        }
        async fn flush(&self, _: IoOptions) -> Result<(), DiskError> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            Err(DiskError::Io(IoError::new(IoErrorKind::DeviceFailed, 5)))
        }
        async fn unmap(&self, _: u64, _: u64, _: IoOptions) -> Result<(), DiskError> {
            Ok(())
        }
    }

    /// A flush of a read-only disk succeeds without reaching the disk; on a
    /// writable disk it reaches it (and its error comes back).
    #[test]
    fn flush_of_a_read_only_disk_succeeds_without_reaching_it() {
        let o = IoOptions::default();
        for read_only in [true, false] {
            let flushes = Arc::new(AtomicU32::new(0));
            let disk = Disk::new(FailingFlush {
                read_only,
                flushes: flushes.clone(),
            })
            .unwrap();
            let r = run_inline(disk.flush(o));
            let calls = flushes.load(Ordering::Relaxed);
            if read_only {
                assert_eq!((r, calls), (Ok(()), 0));
            } else {
                let failed = DiskError::Io(IoError::new(IoErrorKind::DeviceFailed, 5));
                assert_eq!((r, calls), (Err(failed), 1));
            }
        }
    }
}
