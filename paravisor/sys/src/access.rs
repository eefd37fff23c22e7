//! Copies and atomic operations on a [`MappedRegion`]'s bytes.
//!
//! This module allows `unsafe` because the bytes of a mapping another party
//! writes can be reached only through raw pointers: a Rust reference would
//! promise that nobody else changes them. Every method bounds-checks first
//! (through `MappedRegion::span`), then performs one raw-pointer copy or
//! one atomic instruction.
//!
//! Copies use `ptr::copy_nonoverlapping` (or `write_bytes`) for speed. When
//! another party writes the same bytes at the same moment the copy may see
//! any mix of old and new bytes; nothing else about the result is assumed.
//! A naturally aligned copy of 1, 2, 4 or 8 bytes is done as one relaxed
//! atomic access instead, so a lone aligned field never tears.
#![allow(unsafe_code)]

use crate::error::{AccessError, AccessErrorKind};
use crate::mmap::MappedRegion;
use core::ptr;
use core::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};
use sealed::Word as _;

/// An integer the mapping can be accessed atomically as: `u8`, `u16`,
/// `u32` or `u64`. An atomic access must be naturally aligned (its offset a
/// multiple of its size).
pub trait AtomicWord: sealed::Word {}

impl AtomicWord for u8 {}
impl AtomicWord for u16 {}
impl AtomicWord for u32 {}
impl AtomicWord for u64 {}

/// The operations behind [`AtomicWord`], out of reach of other crates (the
/// trait is sealed: only the four widths above exist).
mod sealed {
    use core::sync::atomic::Ordering;

    /// One atomic width: its size and the atomic instructions on it.
    pub trait Word: Copy + Eq + core::fmt::Debug + Send + Sync + 'static {
        /// Size (and required alignment) in bytes.
        const SIZE: usize;

        /// Atomic load.
        ///
        /// # Safety
        ///
        /// `p` is aligned to `SIZE` and valid for reads of `SIZE` bytes for
        /// the duration of the call.
        unsafe fn load(p: *mut u8, order: Ordering) -> Self;

        /// Atomic store.
        ///
        /// # Safety
        ///
        /// `p` is aligned to `SIZE` and valid for writes of `SIZE` bytes
        /// for the duration of the call.
        unsafe fn store(p: *mut u8, value: Self, order: Ordering);

        /// Atomic swap; returns the previous value.
        ///
        /// # Safety
        ///
        /// As for [`store`](Self::store), and valid for reads.
        unsafe fn swap(p: *mut u8, value: Self, order: Ordering) -> Self;

        /// Atomic compare-and-exchange: `Ok(previous)` if it held
        /// `current` and now holds `new`, else `Err(actual)`.
        ///
        /// # Safety
        ///
        /// As for [`swap`](Self::swap).
        unsafe fn compare_exchange(
            p: *mut u8,
            current: Self,
            new: Self,
            order: Ordering,
        ) -> Result<Self, Self>;

        /// Atomic bitwise or; returns the previous value.
        ///
        /// # Safety
        ///
        /// As for [`swap`](Self::swap).
        unsafe fn fetch_or(p: *mut u8, value: Self, order: Ordering) -> Self;

        /// Atomic bitwise and; returns the previous value.
        ///
        /// # Safety
        ///
        /// As for [`swap`](Self::swap).
        unsafe fn fetch_and(p: *mut u8, value: Self, order: Ordering) -> Self;

        /// The value's bytes in native order, into `out` (`SIZE` bytes).
        fn write_ne(self, out: &mut [u8]);

        /// The value from `SIZE` native-order bytes.
        fn read_ne(bytes: &[u8]) -> Self;
    }
}

/// Implements `sealed::Word` for one integer type and its atomic type.
macro_rules! word {
    ($int:ty, $atomic:ty) => {
        impl sealed::Word for $int {
            const SIZE: usize = size_of::<$int>();

            unsafe fn load(p: *mut u8, order: Ordering) -> Self {
                // SAFETY: the caller promises an aligned pointer valid for
                // `SIZE` bytes; every access this process makes to the
                // mapping is a copy or an atomic (see the module docs).
                unsafe { <$atomic>::from_ptr(p.cast()) }.load(load_order(order))
            }

            unsafe fn store(p: *mut u8, value: Self, order: Ordering) {
                // SAFETY: as in `load`; the caller promises writability.
                unsafe { <$atomic>::from_ptr(p.cast()) }.store(value, store_order(order));
            }

            unsafe fn swap(p: *mut u8, value: Self, order: Ordering) -> Self {
                // SAFETY: as in `store`.
                unsafe { <$atomic>::from_ptr(p.cast()) }.swap(value, order)
            }

            unsafe fn compare_exchange(
                p: *mut u8,
                current: Self,
                new: Self,
                order: Ordering,
            ) -> Result<Self, Self> {
                // SAFETY: as in `store`.
                unsafe { <$atomic>::from_ptr(p.cast()) }.compare_exchange(
                    current,
                    new,
                    order,
                    failure_order(order),
                )
            }

            unsafe fn fetch_or(p: *mut u8, value: Self, order: Ordering) -> Self {
                // SAFETY: as in `store`.
                unsafe { <$atomic>::from_ptr(p.cast()) }.fetch_or(value, order)
            }

            unsafe fn fetch_and(p: *mut u8, value: Self, order: Ordering) -> Self {
                // SAFETY: as in `store`.
                unsafe { <$atomic>::from_ptr(p.cast()) }.fetch_and(value, order)
            }

            fn write_ne(self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_ne_bytes());
            }

            fn read_ne(bytes: &[u8]) -> Self {
                let mut raw = [0; size_of::<$int>()];
                raw.copy_from_slice(bytes);
                <$int>::from_ne_bytes(raw)
            }
        }
    };
}

word!(u8, AtomicU8);
word!(u16, AtomicU16);
word!(u32, AtomicU32);
word!(u64, AtomicU64);

/// `order` made valid for a load (which cannot be `Release` or `AcqRel`)
/// without weakening it.
fn load_order(order: Ordering) -> Ordering {
    match order {
        Ordering::Release | Ordering::AcqRel => Ordering::SeqCst,
        other => other,
    }
}

/// `order` made valid for a store (which cannot be `Acquire` or `AcqRel`)
/// without weakening it.
fn store_order(order: Ordering) -> Ordering {
    match order {
        Ordering::Acquire | Ordering::AcqRel => Ordering::SeqCst,
        other => other,
    }
}

/// The failure ordering of a compare-and-exchange: the load part of the
/// success ordering.
fn failure_order(order: Ordering) -> Ordering {
    match order {
        Ordering::Release | Ordering::Relaxed => Ordering::Relaxed,
        Ordering::Acquire | Ordering::AcqRel => Ordering::Acquire,
        _ => Ordering::SeqCst,
    }
}

/// Whether a copy of `len` bytes at `p` is one naturally aligned word.
fn is_single_word(p: *mut u8, len: usize) -> bool {
    matches!(len, 1 | 2 | 4 | 8) && p.addr().is_multiple_of(len)
}

/// Copies `dst.len()` bytes from `src` into `dst`.
///
/// # Safety
///
/// `src` is valid for reads of `dst.len()` bytes for the duration of the
/// call.
unsafe fn copy_out(src: *mut u8, dst: &mut [u8]) {
    let len = dst.len();
    if is_single_word(src, len) {
        match len {
            // SAFETY: `src` is aligned to `len` (checked) and valid for
            // `len` bytes (the caller).
            1 => unsafe { u8::load(src, Ordering::Relaxed) }.write_ne(dst),
            // SAFETY: as above.
            2 => unsafe { u16::load(src, Ordering::Relaxed) }.write_ne(dst),
            // SAFETY: as above.
            4 => unsafe { u32::load(src, Ordering::Relaxed) }.write_ne(dst),
            // SAFETY: as above.
            _ => unsafe { u64::load(src, Ordering::Relaxed) }.write_ne(dst),
        }
        return;
    }
    // SAFETY: `src` is valid for `len` bytes (the caller) and `dst` is a
    // private buffer of `len` bytes, which cannot overlap the mapping
    // because nothing ever makes a reference into a mapping.
    unsafe { ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), len) };
}

/// Copies `src` to `dst`.
///
/// # Safety
///
/// `dst` is valid for writes of `src.len()` bytes for the duration of the
/// call.
unsafe fn copy_in(dst: *mut u8, src: &[u8]) {
    let len = src.len();
    if is_single_word(dst, len) {
        match len {
            // SAFETY: `dst` is aligned to `len` (checked) and valid for
            // writes of `len` bytes (the caller).
            1 => unsafe { u8::store(dst, u8::read_ne(src), Ordering::Relaxed) },
            // SAFETY: as above.
            2 => unsafe { u16::store(dst, u16::read_ne(src), Ordering::Relaxed) },
            // SAFETY: as above.
            4 => unsafe { u32::store(dst, u32::read_ne(src), Ordering::Relaxed) },
            // SAFETY: as above.
            _ => unsafe { u64::store(dst, u64::read_ne(src), Ordering::Relaxed) },
        }
        return;
    }
    // SAFETY: `dst` is valid for `len` bytes (the caller); `src` is private
    // memory, which cannot overlap a mapping no reference points into.
    unsafe { ptr::copy_nonoverlapping(src.as_ptr(), dst, len) };
}

impl MappedRegion {
    /// Copies the bytes at `offset` into `dst`.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), AccessError> {
        let src = self.span(offset, dst.len())?;
        // SAFETY: `span` checked that `[offset, offset + dst.len())` lies in
        // the live mapping, which `&self` keeps mapped.
        unsafe { copy_out(src, dst) };
        Ok(())
    }

    /// Copies `src` to the bytes at `offset`.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<(), AccessError> {
        let dst = self.span_mut(offset, src.len())?;
        // SAFETY: `span_mut` checked that the range lies in the live,
        // writable mapping, which `&self` keeps mapped.
        unsafe { copy_in(dst, src) };
        Ok(())
    }

    /// Copies the pieces of `srcs`, one after the other, to the bytes from
    /// `offset`: one bounds check for the whole run, then one copy per
    /// piece. Nothing is written if the run does not fit.
    pub fn write_vectored_at(&self, offset: usize, srcs: &[&[u8]]) -> Result<(), AccessError> {
        let total = srcs
            .iter()
            .try_fold(0usize, |sum, src| sum.checked_add(src.len()))
            .ok_or(AccessError {
                offset,
                len: usize::MAX,
                kind: AccessErrorKind::OutOfBounds {
                    region_len: self.len(),
                },
            })?;
        let mut dst = self.span_mut(offset, total)?;
        for src in srcs {
            // SAFETY: the pieces together fit in `[offset, offset + total)`,
            // checked by `span_mut` above, and `dst` has advanced only past
            // earlier pieces, so this piece lies inside it too.
            unsafe { copy_in(dst, src) };
            dst = dst.wrapping_add(src.len());
        }
        Ok(())
    }

    /// Copies `len` bytes from `src` at `src_offset` to the bytes at
    /// `offset`, straight from mapping to mapping (no staging buffer).
    /// `src` may be this region, and the ranges may overlap (the copy is
    /// then a `memmove`). Racing writers may make it tear as
    /// [`read_at`](Self::read_at) may; a copy of 1, 2, 4 or 8 bytes goes
    /// through `read_at` and `write_at`, so an aligned word does not tear.
    pub fn copy_from_region(
        &self,
        offset: usize,
        src: &MappedRegion,
        src_offset: usize,
        len: usize,
    ) -> Result<(), AccessError> {
        if len <= 8 {
            let mut word = [0u8; 8];
            let piece = word.get_mut(..len).unwrap_or_default();
            src.read_at(src_offset, piece)?;
            return self.write_at(offset, piece);
        }
        let from = src.span(src_offset, len)?;
        let to = self.span_mut(offset, len)?;
        // Both ranges are checked live (`span`, writable `span_mut`) and
        // kept mapped by the borrows; no Rust reference points into either.
        // SAFETY: `from`/`to` are valid for `len` bytes; `ptr::copy` allows
        // the overlap of two views of one memory.
        unsafe { ptr::copy(from, to, len) };
        Ok(())
    }

    /// Sets `len` bytes from `offset` to `byte`.
    pub fn fill_at(&self, offset: usize, len: usize, byte: u8) -> Result<(), AccessError> {
        let dst = self.span_mut(offset, len)?;
        // SAFETY: `span_mut` checked that `[offset, offset + len)` lies in
        // the live, writable mapping.
        unsafe { ptr::write_bytes(dst, byte, len) };
        Ok(())
    }

    /// Atomically loads the `T` at `offset`.
    pub fn atomic_load<T: AtomicWord>(
        &self,
        offset: usize,
        order: Ordering,
    ) -> Result<T, AccessError> {
        let p = self.word::<T>(offset, false)?;
        // SAFETY: `word` checked bounds and alignment for `T`.
        Ok(unsafe { T::load(p, order) })
    }

    /// Atomically stores `value` at `offset`.
    pub fn atomic_store<T: AtomicWord>(
        &self,
        offset: usize,
        value: T,
        order: Ordering,
    ) -> Result<(), AccessError> {
        let p = self.word::<T>(offset, true)?;
        // SAFETY: `word` checked bounds, alignment and writability.
        unsafe { T::store(p, value, order) };
        Ok(())
    }

    /// Atomically replaces the `T` at `offset` with `value`; returns the
    /// previous value.
    pub fn atomic_swap<T: AtomicWord>(
        &self,
        offset: usize,
        value: T,
        order: Ordering,
    ) -> Result<T, AccessError> {
        let p = self.word::<T>(offset, true)?;
        // SAFETY: `word` checked bounds, alignment and writability.
        Ok(unsafe { T::swap(p, value, order) })
    }

    /// Atomically replaces the `T` at `offset` with `new` if it holds
    /// `current`: `Ok(Ok(current))` if it did, `Ok(Err(actual))` if not.
    /// A failed exchange orders like a load with `order`'s load part.
    pub fn atomic_compare_exchange<T: AtomicWord>(
        &self,
        offset: usize,
        current: T,
        new: T,
        order: Ordering,
    ) -> Result<Result<T, T>, AccessError> {
        let p = self.word::<T>(offset, true)?;
        // SAFETY: `word` checked bounds, alignment and writability.
        Ok(unsafe { T::compare_exchange(p, current, new, order) })
    }

    /// Atomically ors `value` into the `T` at `offset`; returns the
    /// previous value.
    pub fn atomic_fetch_or<T: AtomicWord>(
        &self,
        offset: usize,
        value: T,
        order: Ordering,
    ) -> Result<T, AccessError> {
        let p = self.word::<T>(offset, true)?;
        // SAFETY: `word` checked bounds, alignment and writability.
        Ok(unsafe { T::fetch_or(p, value, order) })
    }

    /// Atomically ands `value` into the `T` at `offset`; returns the
    /// previous value.
    pub fn atomic_fetch_and<T: AtomicWord>(
        &self,
        offset: usize,
        value: T,
        order: Ordering,
    ) -> Result<T, AccessError> {
        let p = self.word::<T>(offset, true)?;
        // SAFETY: `word` checked bounds, alignment and writability.
        Ok(unsafe { T::fetch_and(p, value, order) })
    }

    /// The address of the `T` at `offset`, checked for bounds, natural
    /// alignment and (for `write`) writability.
    fn word<T: AtomicWord>(&self, offset: usize, write: bool) -> Result<*mut u8, AccessError> {
        let p = if write {
            self.span_mut(offset, T::SIZE)?
        } else {
            self.span(offset, T::SIZE)?
        };
        // The base is page-aligned, so this is the offset's alignment; the
        // address is checked to say so without relying on it.
        if !p.addr().is_multiple_of(T::SIZE) {
            return Err(AccessError {
                offset,
                len: T::SIZE,
                kind: AccessErrorKind::Misaligned { align: T::SIZE },
            });
        }
        Ok(p)
    }
}
