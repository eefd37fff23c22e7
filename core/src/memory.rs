//! Bounds-checked access to guest physical memory that others may change.
//!
//! Guest memory is reached only through [`GuestMemory`], keyed by guest
//! physical address ([`Gpa`]). Guest memory is *shared*: guest vCPUs, the
//! host (for shared pages of a confidential VM) and devices may read and
//! write it at any moment, concurrently with us. Rust references (`&[u8]`,
//! `&mut [u8]`) promise that nobody else changes the bytes while they live,
//! so no implementation ever hands one out into guest memory: every access
//! is a copy ([`GuestMemory::read_at`], [`GuestMemory::write_at`],
//! [`GuestMemory::fill_at`]) or an atomic operation
//! ([`GuestMemory::atomic`]).
//!
//! Every access is checked: outside the memory is
//! [`MemoryErrorKind::OutOfRange`]; inside but not accessible now (a hole,
//! a private page of a confidential VM, a page a higher VTL protects) is
//! [`MemoryErrorKind::Inaccessible`]. A bad GPA from a hostile guest or host
//! becomes a [`MemoryError`], never a panic or a stray access.
//!
//! # Access rules
//!
//! These hold for every implementation, and code reading guest memory may
//! rely on nothing more:
//!
//! 1. **Copies may tear.** A `read_at` that races with a writer may see any
//!    mix of old and new bytes (at byte granularity), never anything else;
//!    a `write_at` racing with another writer may leave any mix.
//! 2. **Small aligned copies do not tear.** A `read_at`/`write_at` of 1, 2,
//!    4 or 8 bytes at an address aligned to its size is single-copy atomic:
//!    a lone aligned field read with [`GuestMemoryExt::read_obj`] is some
//!    value a writer stored, whole. A larger object may tear between
//!    fields.
//! 3. **Atomics are real.** [`GuestMemory::atomic`] is a hardware atomic
//!    operation (or equivalent against every other access through the same
//!    memory), at least as strong as the ordering asked for. Shared
//!    structures that both sides poll — ring indices, interrupt masks,
//!    doorbell shadows, completion phases — are accessed only this way,
//!    with explicit orderings and fences.
//! 4. **Read once, then validate.** A value another party can change is
//!    copied into private memory once and validated there; it is never read
//!    again from guest memory to be used (a second read may differ — the
//!    double-fetch bug). [`FaultyMemory`](crate::faulty::FaultyMemory)
//!    tests this.
//!
//! Values of atomic operations are the memory's bytes in little-endian
//! order (the guest's byte order).

use crate::addr::{DmaDomainId, Gpa, GpaRange};
use crate::error::{MemoryError, MemoryErrorKind};
use crate::pin::{PinError, PinSet};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt;
use core::ops::Deref;
use core::sync::atomic::Ordering;
use spin::{Mutex, RwLock};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Width of an atomic access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// One byte.
    U8,
    /// Two bytes.
    U16,
    /// Four bytes.
    U32,
    /// Eight bytes.
    U64,
}

impl Width {
    /// Size in bytes.
    pub const fn bytes(self) -> usize {
        match self {
            Width::U8 => 1,
            Width::U16 => 2,
            Width::U32 => 4,
            Width::U64 => 8,
        }
    }

    /// The largest value of this width.
    pub const fn max(self) -> u64 {
        match self {
            Width::U8 => u8::MAX as u64,
            Width::U16 => u16::MAX as u64,
            Width::U32 => u32::MAX as u64,
            Width::U64 => u64::MAX,
        }
    }
}

/// An atomic read-modify-write (or plain load/store) operation. Operands
/// are truncated to the access width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomicOp {
    /// Reads the value.
    Load,
    /// Stores the value. What the operation returns is unspecified (an
    /// implementation may return 0): a plain store is cheaper than an
    /// exchange, and ring-index publishes are stores. Use [`AtomicOp::Swap`]
    /// for the previous value.
    Store(u64),
    /// Stores the value, returning the previous one.
    Swap(u64),
    /// Stores `new` if the value equals `current`; returns the previous
    /// value either way (the exchange happened iff it equals `current`).
    CompareExchange {
        /// The value expected.
        current: u64,
        /// The value to store.
        new: u64,
    },
    /// ORs the operand in, returning the previous value.
    FetchOr(u64),
    /// ANDs the operand in, returning the previous value.
    FetchAnd(u64),
}

impl AtomicOp {
    /// The value this operation leaves in memory when it found `old`
    /// (`None`: it leaves memory unchanged). For implementations that
    /// perform atomics under a lock.
    pub fn apply(self, old: u64, width: Width) -> Option<u64> {
        let m = width.max();
        match self {
            AtomicOp::Load => None,
            AtomicOp::Store(v) | AtomicOp::Swap(v) => Some(v & m),
            AtomicOp::CompareExchange { current, new } => (old == current & m).then_some(new & m),
            AtomicOp::FetchOr(v) => Some(old | (v & m)),
            AtomicOp::FetchAnd(v) => Some(old & v & m),
        }
    }
}

/// What an access (or a pin) is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reading guest memory (data going to a disk).
    Read,
    /// Writing guest memory (data coming from a disk).
    Write,
    /// Both.
    ReadWrite,
}

/// Guest physical memory another party (vCPUs, host, device) may change at
/// any time. Implementations never hand out a Rust reference into it; see
/// the [module docs](self) for the access rules every caller relies on.
pub trait GuestMemory: Send + Sync {
    /// The first GPA past this memory: every access must end at or below it.
    fn extent(&self) -> Gpa;

    /// Copies `dst.len()` bytes at `gpa` into `dst`. Fails if any byte is
    /// out of range or inaccessible; `dst` then holds unspecified bytes.
    fn read_at(&self, gpa: Gpa, dst: &mut [u8]) -> Result<(), MemoryError>;

    /// Copies `src` into guest memory at `gpa`. Checks the whole range
    /// before writing anything.
    fn write_at(&self, gpa: Gpa, src: &[u8]) -> Result<(), MemoryError>;

    /// Sets `len` bytes at `gpa` to `byte`. Checks the whole range before
    /// writing anything.
    fn fill_at(&self, gpa: Gpa, len: usize, byte: u8) -> Result<(), MemoryError>;

    /// A real atomic operation of `width` at `gpa`, which must be naturally
    /// aligned ([`MemoryErrorKind::Misaligned`] otherwise), at least as
    /// strong as `order`. Returns the value before the operation (for
    /// [`AtomicOp::Load`], the value; for [`AtomicOp::Store`], unspecified).
    fn atomic(
        &self,
        gpa: Gpa,
        width: Width,
        op: AtomicOp,
        order: Ordering,
    ) -> Result<u64, MemoryError>;

    /// Copies the concatenation of `srcs` into guest memory at `gpa`.
    /// Checks the whole range before writing anything.
    fn write_vectored_at(&self, gpa: Gpa, srcs: &[&[u8]]) -> Result<(), MemoryError> {
        let total = srcs
            .iter()
            .fold(0u64, |n, s| n.saturating_add(s.len() as u64));
        check_range(gpa, total, self.extent())?;
        let mut at = gpa;
        for src in srcs {
            self.write_at(at, src)?;
            at += src.len() as u64;
        }
        Ok(())
    }

    /// Whether the bytes at `gpa` equal `expected` (read in 512-byte
    /// pieces through a stack buffer).
    fn compare_at(&self, gpa: Gpa, expected: &[u8]) -> Result<bool, MemoryError> {
        check_range(gpa, expected.len() as u64, self.extent())?;
        let mut buf = [0u8; 512];
        let mut at = gpa;
        for want in expected.chunks(buf.len()) {
            let got = &mut buf[..want.len()];
            self.read_at(at, got)?;
            if got != want {
                return Ok(false);
            }
            at += want.len() as u64;
        }
        Ok(true)
    }

    /// Checks that `range` may be accessed for `access` now, without
    /// touching it: the default checks the bounds only.
    fn check(&self, range: GpaRange, access: Access) -> Result<(), MemoryError> {
        let _ = access;
        check_range(range.gpa, range.len, self.extent())
    }

    /// Device-visible addresses for `ranges` in DMA domain `domain`, valid
    /// while `out` holds them (its owner unpins on drop). The default, for
    /// memory no device can address, is [`PinError::Unsupported`]: the
    /// caller bounces through memory it can hand to the device.
    fn pin(
        &self,
        ranges: &[GpaRange],
        access: Access,
        domain: DmaDomainId,
        out: &mut PinSet,
    ) -> Result<(), PinError> {
        let _ = (ranges, access, domain, out);
        Err(PinError::Unsupported)
    }

    /// When all of `[gpa, gpa + len)` is a window onto another memory (a
    /// wrapper that only forwards, or a buffer carved from a larger
    /// memory): that memory and where the range starts there. `None`
    /// (the default) when this memory holds the bytes itself, or the range
    /// is not wholly inside the window (the caller then goes through this
    /// memory's own accessors, which report the error). Lets [`copy`]
    /// reach the memory that really holds both sides of a copy.
    fn window(&self, gpa: Gpa, len: u64) -> Option<(&dyn GuestMemory, Gpa)> {
        let _ = (gpa, len);
        None
    }

    /// This memory as [`Any`], so an implementation can recognise another
    /// memory of its own type in [`copy_from`](Self::copy_from). The
    /// default is `None`.
    fn as_any(&self) -> Option<&dyn Any> {
        None
    }

    /// Copies `len` bytes from `src` at `src_gpa` into this memory at
    /// `gpa` without a staging buffer, if this implementation can (for
    /// example, both are its own mappings): `Some(result)` if it did (or
    /// found the copy invalid), `None` if it cannot, and the caller stages
    /// through private memory. The default is `None`. Called by [`copy`],
    /// after both sides went through their [`window`](Self::window)s.
    fn copy_from(
        &self,
        gpa: Gpa,
        src: &dyn GuestMemory,
        src_gpa: Gpa,
        len: usize,
    ) -> Option<Result<(), MemoryError>> {
        let _ = (gpa, src, src_gpa, len);
        None
    }

    /// The other direction of [`copy_from`](Self::copy_from): copies `len`
    /// bytes at `gpa` of this memory into `dst` at `dst_gpa` without a
    /// staging buffer, if this implementation can (for example, `dst` is
    /// private [`LocalMemory`] it can fill in place); `None` if not. The
    /// default is `None`. [`copy`] asks the destination's `copy_from`
    /// first, then this.
    fn copy_to(
        &self,
        gpa: Gpa,
        dst: &dyn GuestMemory,
        dst_gpa: Gpa,
        len: usize,
    ) -> Option<Result<(), MemoryError>> {
        let _ = (gpa, dst, dst_gpa, len);
        None
    }
}

/// How many [`GuestMemory::window`]s [`copy`] looks through on each side
/// (a wrapper chain is a few levels deep; this bounds a cycle).
const MAX_WINDOWS: usize = 8;

/// The memory that really holds `[gpa, gpa + len)` of `mem`, through its
/// [`window`](GuestMemory::window)s.
fn through_windows(mut mem: &dyn GuestMemory, mut gpa: Gpa, len: u64) -> (&dyn GuestMemory, Gpa) {
    for _ in 0..MAX_WINDOWS {
        match mem.window(gpa, len) {
            Some((inner, at)) => (mem, gpa) = (inner, at),
            None => break,
        }
    }
    (mem, gpa)
}

/// Copies `len` bytes from `src` at `src_gpa` to `dst` at `dst_gpa`.
///
/// Directly from memory to memory when the memory under both sides (after
/// their [`window`](GuestMemory::window)s) can do it
/// ([`GuestMemory::copy_from`]); otherwise through a stack buffer, in
/// pieces of 4 KiB (copies up to 4 KiB) or 16 KiB. Either way `src` and
/// `dst` may be the same memory, even overlapping ranges (the result is
/// then a forward copy's, piece by piece), and the copy may tear as
/// `read_at`/`write_at` do. An error leaves `dst` partly written.
pub fn copy(
    src: &dyn GuestMemory,
    src_gpa: Gpa,
    dst: &dyn GuestMemory,
    dst_gpa: Gpa,
    len: usize,
) -> Result<(), MemoryError> {
    let (inner_src, inner_src_gpa) = through_windows(src, src_gpa, len as u64);
    let (inner_dst, inner_dst_gpa) = through_windows(dst, dst_gpa, len as u64);
    if let Some(done) = inner_dst
        .copy_from(inner_dst_gpa, inner_src, inner_src_gpa, len)
        .or_else(|| inner_src.copy_to(inner_src_gpa, inner_dst, inner_dst_gpa, len))
    {
        return done;
    }
    if len <= SMALL_COPY {
        copy_via::<SMALL_COPY>(src, src_gpa, dst, dst_gpa, len)
    } else {
        copy_via::<LARGE_COPY>(src, src_gpa, dst, dst_gpa, len)
    }
}

/// The piece size of a staged [`copy`] up to this size (a small copy gets
/// a small buffer, since the buffer is zeroed first).
const SMALL_COPY: usize = 4096;
/// The piece size of larger staged copies: stays in the L1 cache between
/// the read and the write.
const LARGE_COPY: usize = 16 << 10;

/// [`copy`] through a stack buffer, in pieces of at most `N` bytes. Out
/// of line, so the direct path of [`copy`] does not set up (and probe) a
/// 16 KiB stack frame.
#[inline(never)]
fn copy_via<const N: usize>(
    src: &dyn GuestMemory,
    mut src_gpa: Gpa,
    dst: &dyn GuestMemory,
    mut dst_gpa: Gpa,
    len: usize,
) -> Result<(), MemoryError> {
    let mut tmp = [0u8; N];
    let mut left = len;
    while left > 0 {
        let n = left.min(N);
        let piece = &mut tmp[..n];
        src.read_at(src_gpa, piece)?;
        dst.write_at(dst_gpa, piece)?;
        src_gpa += n as u64;
        dst_gpa += n as u64;
        left -= n;
    }
    Ok(())
}

macro_rules! typed_atomics {
    ($($t:ty, $w:expr, $load:ident, $store:ident, $cx:ident;)*) => {
        $(
            #[doc = concat!("Atomically loads the `", stringify!($t), "` at `gpa` (naturally aligned).")]
            fn $load(&self, gpa: Gpa, order: Ordering) -> Result<$t, MemoryError> {
                Ok(self.atomic(gpa, $w, AtomicOp::Load, order)? as $t)
            }

            #[doc = concat!("Atomically stores the `", stringify!($t), "` `v` at `gpa` (naturally aligned).")]
            fn $store(&self, gpa: Gpa, v: $t, order: Ordering) -> Result<(), MemoryError> {
                self.atomic(gpa, $w, AtomicOp::Store(v.into()), order)?;
                Ok(())
            }

            #[doc = concat!("Atomically replaces the `", stringify!($t), "` at `gpa` with `new` if it equals `current`: `Ok(previous)` if it did, `Err(actual)` if not.")]
            fn $cx(
                &self,
                gpa: Gpa,
                current: $t,
                new: $t,
                order: Ordering,
            ) -> Result<Result<$t, $t>, MemoryError> {
                let op = AtomicOp::CompareExchange { current: current.into(), new: new.into() };
                let old = self.atomic(gpa, $w, op, order)? as $t;
                Ok(if old == current { Ok(old) } else { Err(old) })
            }
        )*
    };
}

/// Typed helpers over [`GuestMemory`], available on every implementation
/// (including `dyn GuestMemory`).
pub trait GuestMemoryExt: GuestMemory {
    /// Reads a plain-old-data object at `gpa` (one copy; see the access
    /// rules for tearing).
    fn read_obj<T: FromBytes + IntoBytes>(&self, gpa: Gpa) -> Result<T, MemoryError> {
        let mut v = T::new_zeroed();
        self.read_at(gpa, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Writes a plain-old-data object at `gpa`.
    fn write_obj<T: IntoBytes + Immutable>(&self, gpa: Gpa, v: &T) -> Result<(), MemoryError> {
        self.write_at(gpa, v.as_bytes())
    }

    typed_atomics! {
        u8, Width::U8, load_u8, store_u8, compare_exchange_u8;
        u16, Width::U16, load_u16, store_u16, compare_exchange_u16;
        u32, Width::U32, load_u32, store_u32, compare_exchange_u32;
        u64, Width::U64, load_u64, store_u64, compare_exchange_u64;
    }
}

impl<M: GuestMemory + ?Sized> GuestMemoryExt for M {}

/// A cloneable, shared handle to guest memory: what owners (channel
/// workers, asynchronous backends) keep.
#[derive(Clone)]
pub struct GuestMem(Arc<dyn GuestMemory>);

impl GuestMem {
    /// A handle owning `mem`.
    pub fn new(mem: impl GuestMemory + 'static) -> Self {
        Self(Arc::new(mem))
    }

    /// A handle sharing `mem`.
    pub fn from_arc(mem: Arc<dyn GuestMemory>) -> Self {
        Self(mem)
    }

    /// The shared memory.
    pub fn as_arc(&self) -> &Arc<dyn GuestMemory> {
        &self.0
    }
}

impl Deref for GuestMem {
    type Target = dyn GuestMemory;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for GuestMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMem")
            .field("extent", &self.0.extent())
            .finish()
    }
}

/// Checks that `[gpa, gpa + len)` lies inside `[0, extent)`.
pub fn check_range(gpa: Gpa, len: u64, extent: Gpa) -> Result<(), MemoryError> {
    match gpa.checked_add(len) {
        Some(end) if end <= extent => Ok(()),
        _ => Err(MemoryError::new(gpa, len, MemoryErrorKind::OutOfRange)),
    }
}

/// Checks an atomic access's alignment (and range) and returns its width in
/// bytes.
pub fn check_atomic(gpa: Gpa, width: Width, extent: Gpa) -> Result<usize, MemoryError> {
    let n = width.bytes();
    check_range(gpa, n as u64, extent)?;
    if !gpa.is_aligned(n as u64) {
        return Err(MemoryError::new(gpa, n as u64, MemoryErrorKind::Misaligned));
    }
    Ok(n)
}

/// Performs `op` on the little-endian value in `bytes` (1, 2, 4 or 8 of
/// them), for memory that does atomics under a lock. Returns the value
/// before.
pub(crate) fn atomic_on_bytes(bytes: &mut [u8], width: Width, op: AtomicOp) -> u64 {
    let mut le = [0u8; 8];
    let n = width.bytes().min(bytes.len());
    le[..n].copy_from_slice(&bytes[..n]);
    let old = u64::from_le_bytes(le);
    if let Some(new) = op.apply(old, width) {
        bytes[..n].copy_from_slice(&new.to_le_bytes()[..n]);
    }
    old
}

/// Size of one independently locked, lazily allocated piece of
/// [`RamGuestMemory`].
const CHUNK_SHIFT: u32 = 16;
const CHUNK_SIZE: usize = 1 << CHUNK_SHIFT;

/// The bytes of one allocated chunk.
type ChunkData = Box<[u8]>;

/// Guest memory held in host RAM: the tests' guest.
///
/// Memory is split into 64 KiB chunks, each allocated on first write (so a
/// large, mostly untouched guest is cheap) and each with its own lock (so
/// concurrent I/O to different buffers does not contend). Sound without
/// `unsafe`: the bytes are only touched under their chunk's lock and never
/// leave it, and atomics are performed under the chunk's lock — so they are
/// atomic against every access through this memory (the only way to reach
/// it). The lock is a plain spin mutex rather than a reader-writer lock:
/// one atomic read-modify-write per access instead of two, which is what
/// the many small control-field accesses of a VMBus ring are made of.
/// It stays `spin` (not [`crate::sync`]) even with `std`: this is test
/// memory (the service reaches guest RAM lock-free, through
/// `parastor_sys::GuestRam`), and a holder only copies within one chunk.
pub struct RamGuestMemory {
    size: u64,
    chunks: Box<[Mutex<Option<ChunkData>>]>,
}

impl RamGuestMemory {
    /// Guest memory of `size` bytes, initially zero.
    pub fn new(size: u64) -> Self {
        let n = size.div_ceil(CHUNK_SIZE as u64) as usize;
        let mut chunks = Vec::with_capacity(n);
        chunks.resize_with(n, || Mutex::new(None));
        Self {
            size,
            chunks: chunks.into_boxed_slice(),
        }
    }

    /// Size of this memory in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Splits `[gpa, gpa+len)` (already checked) into per-chunk pieces:
    /// (chunk, offset, len).
    fn pieces(gpa: Gpa, len: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        let mut pos = gpa.get();
        let end = pos + len as u64;
        core::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let chunk = (pos >> CHUNK_SHIFT) as usize;
            let off = (pos & (CHUNK_SIZE as u64 - 1)) as usize;
            let n = (CHUNK_SIZE - off).min((end - pos) as usize);
            pos += n as u64;
            Some((chunk, off, n))
        })
    }

    fn chunk(&self, i: usize) -> &Mutex<Option<ChunkData>> {
        // `pieces` of a checked range stay below `size`, so inside `chunks`.
        &self.chunks[i]
    }
}

fn new_chunk() -> ChunkData {
    alloc::vec![0u8; CHUNK_SIZE].into_boxed_slice()
}

impl GuestMemory for RamGuestMemory {
    fn extent(&self) -> Gpa {
        Gpa::new(self.size)
    }

    fn read_at(&self, gpa: Gpa, dst: &mut [u8]) -> Result<(), MemoryError> {
        check_range(gpa, dst.len() as u64, self.extent())?;
        let mut done = 0;
        for (chunk, off, n) in Self::pieces(gpa, dst.len()) {
            let out = &mut dst[done..done + n];
            match self.chunk(chunk).lock().as_deref() {
                Some(data) => out.copy_from_slice(&data[off..off + n]),
                // Never-written memory reads as zero.
                None => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, gpa: Gpa, src: &[u8]) -> Result<(), MemoryError> {
        check_range(gpa, src.len() as u64, self.extent())?;
        let mut done = 0;
        for (chunk, off, n) in Self::pieces(gpa, src.len()) {
            let mut guard = self.chunk(chunk).lock();
            let data = guard.get_or_insert_with(new_chunk);
            data[off..off + n].copy_from_slice(&src[done..done + n]);
            done += n;
        }
        Ok(())
    }

    fn fill_at(&self, gpa: Gpa, len: usize, byte: u8) -> Result<(), MemoryError> {
        check_range(gpa, len as u64, self.extent())?;
        for (chunk, off, n) in Self::pieces(gpa, len) {
            let mut guard = self.chunk(chunk).lock();
            match guard.as_deref_mut() {
                Some(data) => data[off..off + n].fill(byte),
                // Zeroing a never-written chunk changes nothing.
                None if byte == 0 => {}
                None => guard.get_or_insert_with(new_chunk)[off..off + n].fill(byte),
            }
        }
        Ok(())
    }

    fn atomic(
        &self,
        gpa: Gpa,
        width: Width,
        op: AtomicOp,
        _order: Ordering,
    ) -> Result<u64, MemoryError> {
        let n = check_atomic(gpa, width, self.extent())?;
        // Naturally aligned and at most 8 bytes: inside one chunk. The
        // chunk lock orders this against every other access (SeqCst).
        let (chunk, off, _) = Self::pieces(gpa, n).next().unwrap_or((0, 0, 0));
        let mut guard = self.chunk(chunk).lock();
        let data = match guard.as_deref_mut() {
            Some(data) => data,
            // Never written: a load reads zero without allocating.
            None if op == AtomicOp::Load => return Ok(0),
            None => guard.get_or_insert_with(new_chunk),
        };
        Ok(atomic_on_bytes(&mut data[off..off + n], width, op))
    }
}

/// Private host memory presented as a small guest memory starting at GPA 0:
/// a bounce buffer or a staging area that a disk call can use like guest
/// memory.
///
/// Nobody outside this process can reach it, so unlike guest memory it may
/// be borrowed directly ([`LocalMemory::with`], [`LocalMemory::with_mut`])
/// by whoever owns it — that is what it is for (deciphering in place,
/// comparing buffers).
pub struct LocalMemory {
    /// `spin`, not [`crate::sync`]: one owner uses it at a time (a bounce
    /// buffer or staging area of one request), so it is never contended.
    data: RwLock<Vec<u8>>,
}

impl LocalMemory {
    /// `len` zeroed bytes.
    pub fn new(len: usize) -> Self {
        Self {
            data: RwLock::new(alloc::vec![0; len]),
        }
    }

    /// Wraps an existing buffer.
    pub fn from_vec(data: Vec<u8>) -> Self {
        Self {
            data: RwLock::new(data),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.data.read().len()
    }

    /// Whether the memory is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the buffer back out.
    pub fn into_vec(self) -> Vec<u8> {
        self.data.into_inner()
    }

    /// Runs `f` on the whole buffer.
    pub fn with<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.data.read())
    }

    /// Runs `f` on the whole buffer, mutably.
    pub fn with_mut<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        f(&mut self.data.write())
    }
}

/// `[gpa, gpa + len)` of a local buffer of `size` bytes, checked.
fn local_range(gpa: Gpa, len: usize, size: usize) -> Result<core::ops::Range<usize>, MemoryError> {
    check_range(gpa, len as u64, Gpa::new(size as u64))?;
    // Checked: the end is at most `size`, so both fit in usize.
    let start = gpa.get() as usize;
    Ok(start..start + len)
}

impl GuestMemory for LocalMemory {
    fn extent(&self) -> Gpa {
        Gpa::new(self.len() as u64)
    }

    /// `Some`: mapped memory copies straight into and out of a staging
    /// buffer (see [`GuestMemory::copy_to`]).
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }

    fn read_at(&self, gpa: Gpa, dst: &mut [u8]) -> Result<(), MemoryError> {
        let data = self.data.read();
        dst.copy_from_slice(&data[local_range(gpa, dst.len(), data.len())?]);
        Ok(())
    }

    fn write_at(&self, gpa: Gpa, src: &[u8]) -> Result<(), MemoryError> {
        let mut data = self.data.write();
        let r = local_range(gpa, src.len(), data.len())?;
        data[r].copy_from_slice(src);
        Ok(())
    }

    fn fill_at(&self, gpa: Gpa, len: usize, byte: u8) -> Result<(), MemoryError> {
        let mut data = self.data.write();
        let r = local_range(gpa, len, data.len())?;
        data[r].fill(byte);
        Ok(())
    }

    fn atomic(
        &self,
        gpa: Gpa,
        width: Width,
        op: AtomicOp,
        _order: Ordering,
    ) -> Result<u64, MemoryError> {
        let mut data = self.data.write();
        let n = check_atomic(gpa, width, Gpa::new(data.len() as u64))?;
        let r = local_range(gpa, n, data.len())?;
        Ok(atomic_on_bytes(&mut data[r], width, op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Denied;

    fn g(v: u64) -> Gpa {
        Gpa::new(v)
    }

    #[test]
    fn ram_memory_round_trip_across_chunks() {
        let mem = RamGuestMemory::new(4 * CHUNK_SIZE as u64);
        let data: Vec<u8> = (0..3 * CHUNK_SIZE).map(|i| (i % 251) as u8).collect();
        mem.write_at(g(100), &data).unwrap();
        let mut back = alloc::vec![0; data.len()];
        mem.read_at(g(100), &mut back).unwrap();
        assert_eq!(back, data);
        let mut head = [0xffu8; 100];
        mem.read_at(g(0), &mut head).unwrap();
        assert_eq!(head, [0; 100]);
        assert!(mem.compare_at(g(100), &data).unwrap());
        assert!(!mem.compare_at(g(101), &data[..600]).unwrap());

        // Fill across a chunk boundary, into a never-written chunk too.
        let at = 4 * CHUNK_SIZE as u64 - 10 - CHUNK_SIZE as u64;
        mem.fill_at(g(at), 20, 0x5a).unwrap();
        let mut f = [0u8; 22];
        mem.read_at(g(at - 1), &mut f).unwrap();
        assert_eq!(f[0], data[(at - 1 - 100) as usize]);
        assert_eq!(&f[1..21], &[0x5a; 20]);
        mem.fill_at(g(3 * CHUNK_SIZE as u64 + 100), 100, 0).unwrap();

        // A vectored write lands its pieces one after another.
        mem.write_vectored_at(g(CHUNK_SIZE as u64 - 3), &[b"ab", b"", b"cdef"])
            .unwrap();
        let mut v = [0u8; 6];
        mem.read_at(g(CHUNK_SIZE as u64 - 3), &mut v).unwrap();
        assert_eq!(&v, b"abcdef");
    }

    #[test]
    fn out_of_range_is_an_error() {
        let mem = RamGuestMemory::new(8192);
        let mut b = [0u8; 16];
        let e = mem.read_at(g(8190), &mut b).unwrap_err();
        assert_eq!(e.kind, MemoryErrorKind::OutOfRange);
        assert_eq!((e.gpa, e.len), (g(8190), 16));
        assert!(mem.write_at(g(u64::MAX - 4), &b).is_err());
        assert!(mem.fill_at(g(8192), 1, 0).is_err());
        assert!(mem.fill_at(g(8192), 0, 0).is_ok());
        // A vectored write that ends outside writes nothing.
        mem.write_at(g(8000), &[7; 8]).unwrap();
        assert!(
            mem.write_vectored_at(g(8000), &[&[1; 8], &[1; 200]])
                .is_err()
        );
        assert!(mem.compare_at(g(8000), &[7; 8]).unwrap());
        assert!(mem.compare_at(g(8190), &[0; 4]).is_err());
        let local = LocalMemory::new(10);
        assert!(local.read_at(g(5), &mut b).is_err());
        assert!(local.fill_at(g(u64::MAX), 2, 0).is_err());
        assert!(mem.check(GpaRange::new(g(8191), 2), Access::Read).is_err());
        assert!(mem.check(GpaRange::new(g(8190), 2), Access::Write).is_ok());
        let e = MemoryError::new(g(0x10), 4, MemoryErrorKind::Inaccessible(Denied::Private));
        assert_ne!(e.kind, MemoryErrorKind::OutOfRange);
        assert_eq!(
            std::format!("{e}"),
            "4 bytes at gpa 0x10: inaccessible (private to the guest)"
        );
    }

    #[test]
    fn atomics_round_trip_and_check_alignment() {
        let ram = RamGuestMemory::new(2 * CHUNK_SIZE as u64);
        let local = LocalMemory::new(64);
        let mems: [&dyn GuestMemory; 2] = [&ram, &local];
        for mem in mems {
            assert_eq!(mem.load_u32(g(8), Ordering::Acquire).unwrap(), 0);
            mem.store_u32(g(8), 0x1122_3344, Ordering::Release).unwrap();
            // Little-endian in memory.
            let mut b = [0u8; 4];
            mem.read_at(g(8), &mut b).unwrap();
            assert_eq!(b, [0x44, 0x33, 0x22, 0x11]);
            assert_eq!(mem.load_u16(g(10), Ordering::Relaxed).unwrap(), 0x1122);
            assert_eq!(mem.load_u8(g(8), Ordering::Relaxed).unwrap(), 0x44);
            assert_eq!(
                mem.compare_exchange_u32(g(8), 1, 2, Ordering::SeqCst)
                    .unwrap(),
                Err(0x1122_3344)
            );
            assert_eq!(
                mem.compare_exchange_u32(g(8), 0x1122_3344, 5, Ordering::SeqCst)
                    .unwrap(),
                Ok(0x1122_3344)
            );
            assert_eq!(mem.load_u32(g(8), Ordering::SeqCst).unwrap(), 5);
            mem.store_u64(g(16), u64::MAX - 1, Ordering::SeqCst)
                .unwrap();
            assert_eq!(mem.load_u64(g(16), Ordering::SeqCst).unwrap(), u64::MAX - 1);
            let old = mem
                .atomic(g(16), Width::U64, AtomicOp::FetchOr(1), Ordering::SeqCst)
                .unwrap();
            assert_eq!(old, u64::MAX - 1);
            let old = mem
                .atomic(
                    g(16),
                    Width::U64,
                    AtomicOp::FetchAnd(0xff),
                    Ordering::SeqCst,
                )
                .unwrap();
            assert_eq!(old, u64::MAX);
            let old = mem
                .atomic(g(16), Width::U8, AtomicOp::Swap(0x1ff), Ordering::SeqCst)
                .unwrap();
            assert_eq!(old, 0xff, "swap returns the old value");
            assert_eq!(
                mem.load_u64(g(16), Ordering::SeqCst).unwrap(),
                0xff,
                "truncated"
            );
            mem.store_u16(g(24), 0xbeef, Ordering::Relaxed).unwrap();
            mem.store_u8(g(26), 0x7f, Ordering::Relaxed).unwrap();
            assert_eq!(mem.read_obj::<u32>(g(24)).unwrap(), 0x007f_beef);
            mem.write_obj(g(32), &0xdead_beef_u32).unwrap();
            assert_eq!(mem.load_u32(g(32), Ordering::Relaxed).unwrap(), 0xdead_beef);

            for (gpa, w) in [(9, Width::U32), (2, Width::U64), (1, Width::U16)] {
                let e = mem
                    .atomic(g(gpa), w, AtomicOp::Load, Ordering::SeqCst)
                    .unwrap_err();
                assert_eq!(e.kind, MemoryErrorKind::Misaligned, "{gpa} {w:?}");
            }
            let end = mem.extent().get();
            let e = mem.load_u32(g(end), Ordering::SeqCst).unwrap_err();
            assert_eq!(e.kind, MemoryErrorKind::OutOfRange);
        }
        assert_eq!(GuestMem::new(RamGuestMemory::new(4096)).extent(), g(4096));
    }

    #[test]
    fn ram_atomics_are_atomic_across_threads() {
        let mem = Arc::new(RamGuestMemory::new(4096));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let mem = mem.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        loop {
                            let v = mem.load_u64(g(64), Ordering::Acquire).unwrap();
                            if mem
                                .compare_exchange_u64(g(64), v, v + 1, Ordering::AcqRel)
                                .unwrap()
                                .is_ok()
                            {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(mem.load_u64(g(64), Ordering::SeqCst).unwrap(), 4000);
    }
}
