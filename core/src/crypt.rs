//! The crypt decorator: XTS-AES-256 encryption of everything a disk
//! stores.
//!
//! [`CryptDisk`] wraps any [`Disk`]: writes are encrypted before they reach
//! the inner disk, reads are decrypted after it returns them, so data
//! written through it never reaches the host in plaintext. There is no
//! integrity protection (XTS has none): a host that changes ciphertext
//! makes the guest read garbage, not an error.
//!
//! # Cipher, data unit and tweak
//! - **Cipher**: XTS-AES-256 (IEEE 1619-2007). The key is 64 bytes: the
//!   32-byte data key followed by the 32-byte tweak key. Keys whose halves
//!   are equal are refused ([`CryptError::EqualKeyHalves`]).
//! - **Data unit**: one *logical sector* of the inner disk (512 or 4096
//!   bytes, or any other valid sector size); each sector is enciphered
//!   independently, so any sector can be read or written alone.
//! - **Tweak**: the sector's LBA in units of the logical sector size, as a
//!   64-bit number, little-endian, zero-extended to 16 bytes. This is
//!   dm-crypt's `aes-xts-plain64` on 512-byte sectors, and dm-crypt with
//!   `sector_size:4096` plus `iv_large_sectors` on 4 KiB sectors (plain
//!   dm-crypt on a 4 KiB volume without `iv_large_sectors` counts 512-byte
//!   units instead, which parastor does not use). OpenVMM's `CryptDisk`
//!   uses the same scheme, so volumes written by either are readable by
//!   the other.
//!
//! # Data path
//! - Both directions go through a private staging buffer from the disk's own
//!   [`BouncePool`]; the cipher never works on guest memory, which the
//!   guest (or host) may change under it. Requests larger than one staging
//!   piece are processed piece by piece, in order. Released staging
//!   buffers are reused, so the steady state allocates nothing.
//! - The staging budget is never exceeded. A disk that really waits waits
//!   for room in it (first come, first served); an inline stack, which
//!   must not wait, tries staging for the whole piece, then for a
//!   64 KiB piece, and otherwise fails the request with
//!   [`DiskError::Busy`] (SCSI TASK SET FULL, StorVSP `SRB_STATUS_BUSY`:
//!   the guest retries). Sized at least one piece per worker, the budget
//!   makes Busy unreachable in the steady state.
//! - **Writes** never modify the guest's buffer (the [`Disk`] handle passes
//!   it read-only): the data is copied out of guest memory 16 KiB at a time
//!   into staging and enciphered there, then written to the inner disk.
//! - **Reads** go from the inner disk into staging, are deciphered there
//!   16 KiB at a time and copied into the guest's buffer: the guest never
//!   sees ciphertext (OpenVMM deciphers in the guest's buffer, so the
//!   guest may briefly see it).
//! - Metadata, flush, unmap, eject, `wait_resize` and persistent
//!   reservations pass through. Unmapped sectors decrypt to garbage, so
//!   [`UnmapBehavior::Zeroes`] becomes [`UnmapBehavior::Unspecified`].
//!
//! # Speed
//! The cipher loop ([`Xts256`], in `xts.rs`) runs inside the `aes` crate's
//! backend closure (AES-NI, VAES-256 or VAES-512, chosen at run time) and
//! enciphers many blocks per call, across sector boundaries, with all of a
//! batch's initial tweaks computed in one call. See that module.
//!
//! Each backend call has a fixed cost (the backend broadcasts its round
//! keys), so a call per request, not per sector, is what keeps small
//! sectors fast. Whether rustc inlines the `aes` crate's generic helpers
//! (`[T; N]::map` for that broadcast, `hybrid_array`'s `try_from_fn` for
//! loading a batch) depends on how the crate is split into codegen units;
//! with `codegen-units = 1` for this crate they always are, which mostly
//! shows on single-sector calls.

mod xts;

pub use xts::Xts256;

use crate::bounce::{AcquireError, BounceBuffer, BouncePool};
use crate::disk::{Disk, DiskIo, IoOptions, UnmapBehavior};
use crate::drive;
use crate::error::{DiskError, MemoryError};
use crate::sg::SgList;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use xts::{Dir, Stream};

/// Default staging budget of a [`CryptDisk`]: bytes of ciphertext that may
/// be in flight to the inner disk at once.
pub const DEFAULT_STAGING_BUDGET: usize = 4 << 20;

/// Largest piece a request is processed in when the inner disk completes
/// inline: small enough that the staging buffer (writes) or the guest
/// buffer (reads) is still in the L2 cache when the next step touches it.
/// Disks that really wait get one inner request per staging budget.
const INLINE_PIECE: usize = 256 << 10;

/// The smaller piece an inline stack tries when staging for a whole piece
/// is not free, before answering [`DiskError::Busy`].
const FALLBACK_PIECE: usize = 64 << 10;

/// The cipher the decorator uses, for display.
const CIPHER_NAME: &str = "xts-aes-256";

/// Why a crypt disk or cipher could not be set up, or a raw cipher call
/// was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptError {
    /// The key is not 64 bytes long; carries the length given.
    InvalidKeyLength(usize),
    /// The data key and the tweak key (the two halves) are equal.
    EqualKeyHalves,
    /// The data unit is not a non-zero multiple of 16 bytes.
    InvalidSectorSize(usize),
    /// A buffer is not a whole number of sectors.
    PartialSector {
        /// Buffer length in bytes.
        len: usize,
        /// Sector size in bytes.
        sector_size: usize,
    },
    /// Source and destination buffers differ in length.
    LengthMismatch {
        /// Source length in bytes.
        src: usize,
        /// Destination length in bytes.
        dst: usize,
    },
    /// The request's sector numbers run past `u64::MAX`.
    SectorOverflow,
}

impl fmt::Display for CryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptError::InvalidKeyLength(len) => write!(
                f,
                "XTS-AES-256 key is {len} bytes: expected 64 (a 32-byte data key followed by a 32-byte tweak key)"
            ),
            CryptError::EqualKeyHalves => f.write_str(
                "XTS-AES-256 key halves are equal: the data key (first 32 bytes) and the tweak key (last 32 bytes) must differ",
            ),
            CryptError::InvalidSectorSize(size) => write!(
                f,
                "data unit of {size} bytes is invalid: expected a non-zero multiple of 16"
            ),
            CryptError::PartialSector { len, sector_size } => write!(
                f,
                "buffer of {len} bytes is not a whole number of {sector_size}-byte sectors"
            ),
            CryptError::LengthMismatch { src, dst } => write!(
                f,
                "source is {src} bytes but destination is {dst} bytes: expected equal lengths"
            ),
            CryptError::SectorOverflow => {
                f.write_str("sector numbers of the request run past 2^64 - 1")
            }
        }
    }
}

impl core::error::Error for CryptError {}

/// A disk whose contents are encrypted with XTS-AES-256 on an inner disk.
/// See the module docs for the on-disk format.
pub struct CryptDisk {
    xts: Xts256,
    inner: Disk,
    inline: bool,
    shift: u32,
    pool: BouncePool,
    /// Bytes per inner request (a whole number of sectors).
    piece: usize,
}

impl fmt::Debug for CryptDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptDisk")
            .field("inner", &self.inner)
            .field("staging_budget", &self.pool.budget())
            .finish_non_exhaustive()
    }
}

impl CryptDisk {
    /// Encrypts `inner` with `key` = data key ‖ tweak key (64 bytes),
    /// staging writes within [`DEFAULT_STAGING_BUDGET`].
    ///
    /// # Errors
    /// [`CryptError::InvalidKeyLength`] or [`CryptError::EqualKeyHalves`].
    pub fn new(key: &[u8], inner: Disk) -> Result<CryptDisk, CryptError> {
        Self::with_staging_budget(key, inner, DEFAULT_STAGING_BUDGET)
    }

    /// As [`CryptDisk::new`], with at most `budget` bytes of staging
    /// memory (rounded down to whole sectors, at least one sector).
    ///
    /// # Errors
    /// As [`CryptDisk::new`].
    pub fn with_staging_budget(
        key: &[u8],
        inner: Disk,
        budget: usize,
    ) -> Result<CryptDisk, CryptError> {
        let xts = Xts256::new(key)?;
        let sector = inner.sector_size() as usize;
        let budget = (budget / sector).max(1) * sector;
        let pool = BouncePool::new(budget);
        let inline = inner.completes_inline();
        // Staging blocks come in power-of-two sizes within the budget.
        let largest = (pool.max_len() / sector).max(1) * sector;
        let piece = if inline {
            largest.min((INLINE_PIECE / sector).max(1) * sector)
        } else {
            largest
        };
        Ok(CryptDisk {
            xts,
            shift: inner.sector_shift(),
            inline,
            pool,
            piece,
            inner,
        })
    }

    /// The disk holding the ciphertext.
    pub fn inner(&self) -> &Disk {
        &self.inner
    }

    /// The raw cipher.
    pub fn cipher(&self) -> &Xts256 {
        &self.xts
    }

    /// Checks `[sector, sector + len bytes)` against the current size.
    fn check_range(&self, sector: u64, len: usize) -> Result<(), DiskError> {
        let count = (len >> self.shift) as u64;
        match sector.checked_add(count) {
            Some(end) if end <= self.inner.sector_count() => Ok(()),
            _ => Err(DiskError::IllegalBlock),
        }
    }

    /// The request `buf` at `sector`, range-checked and cut into the pieces
    /// it is processed in (at most `self.piece` bytes each).
    fn pieces<'a>(&self, buf: SgList<'a>, sector: u64) -> Result<Pieces<'a>, DiskError> {
        self.check_range(sector, buf.len())?;
        Ok(Pieces {
            rest: buf,
            lba: sector,
            piece: self.piece,
            shift: self.shift,
        })
    }

    /// A staging buffer for the next piece of a request, `want` bytes
    /// (a whole number of sectors) or, on an inline stack under contention,
    /// fewer: the piece is then cut to the buffer's length.
    ///
    /// The budget is never exceeded. A stack that really waits waits for
    /// room (first come, first served). An inline stack must not wait (its
    /// caller polls once): it tries the whole piece, then a piece of
    /// [`FALLBACK_PIECE`], and answers [`DiskError::Busy`] if neither is
    /// free (the frontend's "retry" status).
    async fn staging(&self, want: usize) -> Result<BounceBuffer, DiskError> {
        let failed = |e: AcquireError| match e {
            AcquireError::TooLarge { .. } => {
                DiskError::InvalidInput("staging piece larger than the staging budget")
            }
            AcquireError::Alloc(_) => DiskError::Busy("crypt staging memory unavailable"),
        };
        if !self.inline {
            return self.pool.acquire(want).await.map_err(failed);
        }
        if let Some(buf) = self.pool.try_acquire(want).map_err(failed)? {
            return Ok(buf);
        }
        let sector = 1usize << self.shift;
        let small = (FALLBACK_PIECE / sector).max(1) * sector;
        if small < want
            && let Some(buf) = self.pool.try_acquire(small).map_err(failed)?
        {
            return Ok(buf);
        }
        Err(DiskError::Busy("crypt staging budget in use"))
    }

    /// Enciphers the guest data `src` (sectors from `lba` on) into the
    /// private staging buffer `dst`: each 16 KiB piece is copied out of guest
    /// memory once and enciphered in place while it is in the L1 cache, so
    /// the cipher never reads guest memory (which the guest may change
    /// meanwhile) directly.
    fn encrypt_from(&self, src: &SgList<'_>, lba: u64, dst: &mut [u8]) -> Result<(), MemoryError> {
        let mut stream = Stream::new(&self.xts, lba, 1 << self.shift);
        let mut reader = src.reader();
        for piece in dst.chunks_mut(CIPHER_PIECE) {
            reader.read(piece)?;
            stream.run(Dir::Encrypt, None, piece);
        }
        Ok(())
    }

    /// Deciphers the private staging buffer `src` (sectors from `lba` on,
    /// as read from the inner disk) in place and copies the plaintext into
    /// the guest's buffer `dst`, 16 KiB at a time while it is in the L1
    /// cache: the guest never sees ciphertext.
    fn decrypt_into(&self, src: &mut [u8], lba: u64, dst: &SgList<'_>) -> Result<(), MemoryError> {
        let mut stream = Stream::new(&self.xts, lba, 1 << self.shift);
        let mut writer = dst.writer()?;
        for piece in src.chunks_mut(CIPHER_PIECE) {
            stream.run(Dir::Decrypt, None, piece);
            writer.write(piece)?;
        }
        Ok(())
    }
}

/// Bytes enciphered or deciphered per step between guest memory and
/// staging: a multiple of 16 (every sector size is), small enough to stay
/// in the L1 cache between the copy and the cipher pass, large enough that
/// the cipher's fixed cost per call (broadcasting round keys) stays small.
const CIPHER_PIECE: usize = 16 << 10;

/// A request cut into pieces: each piece's buffer and first sector.
struct Pieces<'a> {
    rest: SgList<'a>,
    lba: u64,
    piece: usize,
    shift: u32,
}

impl<'a> Pieces<'a> {
    /// Bytes of the next piece (0 when the request is done).
    fn next_len(&self) -> usize {
        self.rest.len().min(self.piece)
    }

    /// The next piece, at most `max` bytes (a whole number of sectors), or
    /// `None` when the request is done.
    fn next(&mut self, max: usize) -> Result<Option<(SgList<'a>, u64)>, DiskError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let bad = |_| DiskError::InvalidInput("request buffer shorter than the request");
        let len = self.next_len().min(max);
        let part = self.rest.subrange(0, len).map_err(bad)?;
        let lba = self.lba;
        self.rest = self
            .rest
            .subrange(len, self.rest.len() - len)
            .map_err(bad)?;
        self.lba += (len >> self.shift) as u64;
        Ok(Some((part, lba)))
    }
}

impl DiskIo for CryptDisk {
    fn kind(&self) -> &'static str {
        "crypt"
    }
    crate::forward_geometry!(inner);
    crate::forward_ops!(inner, inline; flush, unmap, eject, wait_resize, persistent_reservations);
    fn unmap_behavior(&self) -> UnmapBehavior {
        match self.inner.unmap_behavior() {
            // Zeros (or anything) below decrypt to garbage.
            UnmapBehavior::Zeroes | UnmapBehavior::Unspecified => UnmapBehavior::Unspecified,
            UnmapBehavior::Ignored => UnmapBehavior::Ignored,
        }
    }
    fn completes_inline(&self) -> bool {
        self.inline
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        alloc::vec![
            ("cipher", String::from(CIPHER_NAME)),
            (
                "tweak",
                String::from("plain64: sector number, little-endian")
            ),
            ("data unit", format!("{} bytes", 1u32 << self.shift)),
            (
                "aes",
                String::from(if aes::hardware_accelerated() {
                    "hardware"
                } else {
                    "software"
                })
            ),
            ("staging budget", format!("{} bytes", self.pool.budget())),
        ]
    }
    fn children(&self) -> Vec<(String, Disk)> {
        alloc::vec![(String::from("encrypted"), self.inner.clone())]
    }
    async fn read(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        let mut pieces = self.pieces(buf, sector)?;
        while pieces.next_len() > 0 {
            let staging = self.staging(pieces.next_len()).await?;
            let Some((part, lba)) = pieces.next(staging.len())? else {
                break;
            };
            let inner = &self.inner;
            drive!(self.inline, inner.read(staging.sg(true), lba, opts))?;
            staging
                .with_private_mut(|v| self.decrypt_into(v, lba, &part))
                .ok_or(DiskError::InvalidInput("staging memory is not private"))??;
            drop(staging);
        }
        Ok(())
    }

    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        let mut pieces = self.pieces(buf, sector)?;
        while pieces.next_len() > 0 {
            let staging = self.staging(pieces.next_len()).await?;
            let Some((part, lba)) = pieces.next(staging.len())? else {
                break;
            };
            staging
                .with_private_mut(|v| self.encrypt_from(&part, lba, v))
                .ok_or(DiskError::InvalidInput("staging memory is not private"))??;
            let inner = &self.inner;
            let cipher = staging.sg(false);
            drive!(self.inline, inner.write(cipher, lba, opts))?;
            drop(staging);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Gpa, GpaRange};
    use crate::delay::{DelayDisk, DelayHandle, Timer};
    use crate::disk::{BoxFuture, IO_FUTURE_BYTES};
    use crate::memory::{GuestMemory, RamGuestMemory};
    use crate::ram::RamDisk;
    use alloc::boxed::Box;
    use alloc::sync::Arc;
    use alloc::vec;
    use core::time::Duration;
    use futures::executor::block_on;
    use std::string::ToString;

    /// IEEE 1619-2007 Annex B, XTS-AES-256 vectors 10 to 14: one 512-byte
    /// data unit of bytes 0..=255 twice, under one key, at growing data
    /// unit sequence numbers. (number, sequence number, ciphertext hex)
    const IEEE_1619: [(u32, u64, &[&str]); 5] = [
        (
            10,
            0xff,
            &[
                "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b",
                "5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd",
                "5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0",
                "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca",
                "2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0",
                "b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f",
                "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec",
                "583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a",
                "84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1",
                "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae",
                "9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29",
                "a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac",
                "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f",
                "645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385",
                "1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa",
                "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151",
            ],
        ),
        (
            11,
            0xffff,
            &[
                "77a31251618a15e6b92d1d66dffe7b50b50bad552305ba0217a610688eff7e11",
                "e1d0225438e093242d6db274fde801d4cae06f2092c728b2478559df58e837c2",
                "469ee4a4fa794e4bbc7f39bc026e3cb72c33b0888f25b4acf56a2a9804f1ce6d",
                "3d6e1dc6ca181d4b546179d55544aa7760c40d06741539c7e3cd9d2f6650b201",
                "3fd0eeb8c2b8e3d8d240ccae2d4c98320a7442e1c8d75a42d6e6cfa4c2eca179",
                "8d158c7aecdf82490f24bb9b38e108bcda12c3faf9a21141c3613b58367f922a",
                "aa26cd22f23d708dae699ad7cb40a8ad0b6e2784973dcb605684c08b8d6998c6",
                "9aac049921871ebb65301a4619ca80ecb485a31d744223ce8ddc2394828d6a80",
                "470c092f5ba413c3378fa6054255c6f9df4495862bbb3287681f931b687c888a",
                "bf844dfc8fc28331e579928cd12bd2390ae123cf03818d14dedde5c0c24c8ab0",
                "18bfca75ca096f2d531f3d1619e785f1ada437cab92e980558b3dce1474afb75",
                "bfedbf8ff54cb2618e0244c9ac0d3c66fb51598cd2db11f9be39791abe447c63",
                "094f7c453b7ff87cb5bb36b7c79efb0872d17058b83b15ab0866ad8a58656c5a",
                "7e20dbdf308b2461d97c0ec0024a2715055249cf3b478ddd4740de654f75ca68",
                "6e0d7345c69ed50cdc2a8b332b1f8824108ac937eb050585608ee734097fc090",
                "54fbff89eeaeea791f4a7ab1f9868294a4f9e27b42af8100cb9d59cef9645803",
            ],
        ),
        (
            12,
            0xffffff,
            &[
                "e387aaa58ba483afa7e8eb469778317ecf4cf573aa9d4eac23f2cdf914e4e200",
                "a8b490e42ee646802dc6ee2b471b278195d60918ececb44bf79966f83faba049",
                "9298ebc699c0c8634715a320bb4f075d622e74c8c932004f25b41e361025b5a8",
                "7815391f6108fc4afa6a05d9303c6ba68a128a55705d415985832fdeaae6c8e1",
                "9110e84d1b1f199a2692119edc96132658f09da7c623efcec712537a3d94c0bf",
                "5d7e352ec94ae5797fdb377dc1551150721adf15bd26a8efc2fcaad56881fa9e",
                "62462c28f30ae1ceaca93c345cf243b73f542e2074a705bd2643bb9f7cc79bb6",
                "e7091ea6e232df0f9ad0d6cf502327876d82207abf2115cdacf6d5a48f6c1879",
                "a65b115f0f8b3cb3c59d15dd8c769bc014795a1837f3901b5845eb491adfefe0",
                "97b1fa30a12fc1f65ba22905031539971a10f2f36c321bb51331cdefb39e3964",
                "c7ef079994f5b69b2edd83a71ef549971ee93f44eac3938fcdd61d01fa71799d",
                "a3a8091c4c48aa9ed263ff0749df95d44fef6a0bb578ec69456aa5408ae32c7a",
                "f08ad7ba8921287e3bbee31b767be06a0e705c864a769137df28292283ea81a2",
                "480241b44d9921cdbec1bc28dc1fda114bd8e5217ac9d8ebafa720e9da4f9ace",
                "231cc949e5b96fe76ffc21063fddc83a6b8679c00d35e09576a875305bed5f36",
                "ed242c8900dd1fa965bc950dfce09b132263a1eef52dd6888c309f5a7d712826",
            ],
        ),
        (
            13,
            0xffffffff,
            &[
                "bf53d2dade78e822a4d949a9bc6766b01b06a8ef70d26748c6a7fc36d80ae4c5",
                "520f7c4ab0ac8544424fa405162fef5a6b7f229498063618d39f0003cb5fb8d1",
                "c86b643497da1ff945c8d3bedeca4f479702a7a735f043ddb1d6aaade3c4a0ac",
                "7ca7f3fa5279bef56f82cd7a2f38672e824814e10700300a055e1630b8f1cb0e",
                "919f5e942010a416e2bf48cb46993d3cb6a51c19bacf864785a00bc2ecff15d3",
                "50875b246ed53e68be6f55bd7e05cfc2b2ed6432198a6444b6d8c247fab941f5",
                "69768b5c429366f1d3f00f0345b96123d56204c01c63b22ce78baf116e525ed9",
                "0fdea39fa469494d3866c31e05f295ff21fea8d4e6e13d67e47ce722e9698a1c",
                "1048d68ebcde76b86fcf976eab8aa9790268b7068e017a8b9b749409514f1053",
                "027fd16c3786ea1bac5f15cb79711ee2abe82f5cf8b13ae73030ef5b9e4457e7",
                "5d1304f988d62dd6fc4b94ed38ba831da4b7634971b6cd8ec325d9c61c00f1df",
                "73627ed3745a5e8489f3a95c69639c32cd6e1d537a85f75cc844726e8a72fc00",
                "77ad22000f1d5078f6b866318c668f1ad03d5a5fced5219f2eabbd0aa5c0f460",
                "d183f04404a0d6f469558e81fab24a167905ab4c7878502ad3e38fdbe62a4155",
                "6cec37325759533ce8f25f367c87bb5578d667ae93f9e2fd99bcbc5f2fbba88c",
                "f6516139420fcff3b7361d86322c4bd84c82f335abb152c4a93411373aaa8220",
            ],
        ),
        (
            14,
            0xffffffffff,
            &[
                "64497e5a831e4a932c09be3e5393376daa599548b816031d224bbf50a818ed23",
                "50eae7e96087c8a0db51ad290bd00c1ac1620857635bf246c176ab463be30b80",
                "8da548081ac847b158e1264be25bb0910bbc92647108089415d45fab1b3d2604",
                "e8a8eff1ae4020cfa39936b66827b23f371b92200be90251e6d73c5f86de5fd4",
                "a950781933d79a28272b782a2ec313efdfcc0628f43d744c2dc2ff3dcb66999b",
                "50c7ca895b0c64791eeaa5f29499fb1c026f84ce5b5c72ba1083cddb5ce45434",
                "631665c333b60b11593fb253c5179a2c8db813782a004856a1653011e93fb6d8",
                "76c18366dd8683f53412c0c180f9c848592d593f8609ca736317d356e13e2bff",
                "3a9f59cd9aeb19cd482593d8c46128bb32423b37a9adfb482b99453fbe25a41b",
                "f6feb4aa0bef5ed24bf73c762978025482c13115e4015aac992e5613a3b5c2f6",
                "85b84795cb6e9b2656d8c88157e52c42f978d8634c43d06fea928f2822e465aa",
                "6576e9bf419384506cc3ce3c54ac1a6f67dc66f3b30191e698380bc999b05abc",
                "e19dc0c6dcc2dd001ec535ba18deb2df1a101023108318c75dc98611a09dc48a",
                "0acdec676fabdf222f07e026f059b672b56e5cbc8e1d21bbd867dd9272120546",
                "81d70ea737134cdfce93b6f82ae22423274e58a0821cc5502e2d0ab4585e94de",
                "6975be5e0b4efce51cd3e70c25a1fbbbd609d273ad5b0d59631c531f6a0a57b9",
            ],
        ),
    ];

    const IEEE_KEY: &str = "27182818284590452353602874713526624977572470936999595749669676273141592653589793238462643383279502884197169399375105820974944592";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The shared seeded test generator (`fastrand`), so failures repeat.
    struct Rng(fastrand::Rng);
    impl Rng {
        fn new(seed: u64) -> Self {
            Self(fastrand::Rng::with_seed(seed))
        }
        fn next(&mut self) -> u64 {
            self.0.u64(..)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.0.u64(..n)
        }
        fn fill(&mut self, buf: &mut [u8]) {
            self.0.fill(buf);
        }
        fn key(&mut self) -> [u8; 64] {
            let mut k = [0u8; 64];
            self.fill(&mut k);
            k
        }
    }

    /// The `xts-mode` crate (one block per call) as an independent oracle.
    fn oracle(key: &[u8], data: &mut [u8], lba: u64, sector_size: usize, encrypt: bool) {
        use aes::cipher::KeyInit;
        let c1 = aes::Aes256::new_from_slice(&key[..32]).unwrap();
        let c2 = aes::Aes256::new_from_slice(&key[32..]).unwrap();
        let x = xts_mode::Xts128::new(c1, c2);
        let tweak = xts_mode::get_tweak_default;
        if encrypt {
            x.encrypt_area(data, sector_size, u128::from(lba), tweak);
        } else {
            x.decrypt_area(data, sector_size, u128::from(lba), tweak);
        }
    }

    fn ram(sectors: u64, sector_size: u32) -> Disk {
        Disk::new(RamDisk::new(sectors * u64::from(sector_size), sector_size).unwrap()).unwrap()
    }

    fn crypt(key: &[u8], inner: &Disk) -> Disk {
        Disk::new(CryptDisk::new(key, inner.clone()).unwrap()).unwrap()
    }

    fn read_vec(disk: &Disk, sector: u64, len: usize) -> Vec<u8> {
        let mem = RamGuestMemory::new(len as u64);
        let r = [GpaRange::new(Gpa::new(0), len as u64)];
        let sg = SgList::new(&mem, &r, true).unwrap();
        block_on(disk.read(sg, sector, IoOptions::default())).unwrap();
        let mut out = vec![0u8; len];
        mem.read_at(Gpa::new(0), &mut out).unwrap();
        out
    }

    fn write_vec(disk: &Disk, sector: u64, data: &[u8]) {
        let mem = RamGuestMemory::new(data.len() as u64);
        mem.write_at(Gpa::new(0), data).unwrap();
        let r = [GpaRange::new(Gpa::new(0), data.len() as u64)];
        let sg = SgList::new(&mem, &r, false).unwrap();
        block_on(disk.write(sg, sector, IoOptions::default())).unwrap();
    }

    #[test]
    fn ieee_1619_vectors_10_to_14() {
        let key = unhex(IEEE_KEY);
        let xts = Xts256::new(&key).unwrap();
        let plain: Vec<u8> = (0..512).map(|i| i as u8).collect();
        for (number, seq, hex) in IEEE_1619 {
            let expected = unhex(&hex.concat());
            let mut buf = plain.clone();
            xts.encrypt_sectors(&mut buf, seq, 512).unwrap();
            assert!(buf == expected, "vector {number}: encryption");
            let mut copy = vec![0u8; 512];
            xts.encrypt_sectors_to(&plain, &mut copy, seq, 512).unwrap();
            assert!(copy == expected, "vector {number}: buffer to buffer");
            xts.decrypt_sectors(&mut buf, seq, 512).unwrap();
            assert!(buf == plain, "vector {number}: decryption");
        }
        // The same data units through a CryptDisk: the inner disk holds the
        // published ciphertext at those LBAs (a sparse disk of 2^40 + 1
        // sectors reaches vector 14's 0xff_ffff_ffff).
        let inner = ram((1 << 40) + 1, 512);
        let disk = crypt(&key, &inner);
        for (number, seq, hex) in IEEE_1619 {
            write_vec(&disk, seq, &plain);
            assert!(
                read_vec(&inner, seq, 512) == unhex(&hex.concat()),
                "vector {number}: stored"
            );
            assert!(
                read_vec(&disk, seq, 512) == plain,
                "vector {number}: read back"
            );
        }
    }

    #[test]
    fn matches_the_xts_mode_oracle() {
        let mut rng = Rng::new(0x5eed_1234_abcd_0001);
        for sector_size in [512usize, 1024, 2048, 4096, 65536] {
            for _ in 0..6 {
                let key = rng.key();
                let xts = Xts256::new(&key).unwrap();
                let max = if sector_size == 65536 { 3 } else { 100 };
                let count = 1 + rng.below(max) as usize;
                let lba = match rng.below(4) {
                    0 => rng.below(1 << 20),
                    1 => (1 << 32) - rng.below(8),
                    2 => u64::MAX - (count as u64 - 1) - rng.below(4),
                    _ => rng.next() >> 1,
                };
                let mut plain = vec![0u8; count * sector_size];
                rng.fill(&mut plain);
                let mut ours = plain.clone();
                xts.encrypt_sectors(&mut ours, lba, sector_size).unwrap();
                let mut theirs = plain.clone();
                oracle(&key, &mut theirs, lba, sector_size, true);
                assert!(
                    ours == theirs,
                    "ss {sector_size}, {count} sectors at {lba:#x}"
                );
                let mut to = vec![0u8; plain.len()];
                xts.encrypt_sectors_to(&plain, &mut to, lba, sector_size)
                    .unwrap();
                assert!(to == theirs);
                xts.decrypt_sectors(&mut ours, lba, sector_size).unwrap();
                assert!(ours == plain);
            }
        }
    }

    /// A run fed in pieces of any whole number of blocks equals the run fed
    /// at once (pieces that end inside a group of eight tweaks, inside a
    /// sector, across sectors).
    #[test]
    fn streams_in_odd_pieces() {
        let mut rng = Rng::new(77);
        let key = rng.key();
        let xts = Xts256::new(&key).unwrap();
        for sector_size in [512usize, 4096] {
            let mut plain = vec![0u8; 9 * sector_size];
            rng.fill(&mut plain);
            let mut whole = plain.clone();
            xts.encrypt_sectors(&mut whole, 1000, sector_size).unwrap();
            for _ in 0..20 {
                for dir in [Dir::Encrypt, Dir::Decrypt] {
                    let (input, expect) = match dir {
                        Dir::Encrypt => (&plain, &whole),
                        Dir::Decrypt => (&whole, &plain),
                    };
                    let mut buf = input.clone();
                    let mut stream = Stream::new(&xts, 1000, sector_size);
                    let mut at = 0;
                    while at < buf.len() {
                        let limit = if rng.below(2) == 0 { 9 } else { 300 };
                        let blocks = 1 + rng.below(limit);
                        let end = (at + 16 * blocks as usize).min(buf.len());
                        stream.run(dir, None, &mut buf[at..end]);
                        at = end;
                    }
                    assert!(&buf == expect);
                }
            }
        }
    }

    #[test]
    fn round_trip_and_ciphertext_on_the_inner_disk() {
        let mut rng = Rng::new(3);
        for sector_size in [512u32, 4096] {
            let key = rng.key();
            let inner = ram(4096, sector_size);
            let disk = crypt(&key, &inner);
            let ss = sector_size as usize;
            for (sector, count) in [(0u64, 1usize), (7, 3), (100, 130), (4095, 1)] {
                let mut plain = vec![0u8; count * ss];
                rng.fill(&mut plain);
                // The guest buffer is left as it was by the write.
                let mem = RamGuestMemory::new(plain.len() as u64);
                mem.write_at(Gpa::new(0), &plain).unwrap();
                let r = [GpaRange::new(Gpa::new(0), plain.len() as u64)];
                let sg = SgList::new(&mem, &r, true).unwrap();
                block_on(disk.write(sg, sector, IoOptions::fua())).unwrap();
                let mut guest = vec![0u8; plain.len()];
                mem.read_at(Gpa::new(0), &mut guest).unwrap();
                assert!(guest == plain, "guest buffer modified by a write");
                // The inner disk holds the oracle's ciphertext.
                let stored = read_vec(&inner, sector, plain.len());
                assert!(stored != plain);
                let mut expect = plain.clone();
                oracle(&key, &mut expect, sector, ss, true);
                assert!(stored == expect);
                assert!(read_vec(&disk, sector, plain.len()) == plain);
            }
        }
    }

    /// Guest buffers of many ranges with odd lengths and addresses, some
    /// crossing the guest memory's 64 KiB chunks at addresses that split
    /// AES blocks.
    #[test]
    fn multi_range_buffers_with_odd_splits() {
        let mut rng = Rng::new(11);
        for sector_size in [512u32, 4096] {
            let key = rng.key();
            let inner = ram(1024, sector_size);
            let disk = crypt(&key, &inner);
            let ss = sector_size as usize;
            for round in 0..12 {
                let count = 1 + rng.below(12) as usize;
                let len = count * ss;
                let mem = RamGuestMemory::new(1 << 20);
                // Ranges of 1..=40 bytes, or a few KiB, scattered, including
                // ones that straddle a 64 KiB chunk boundary.
                let mut ranges = Vec::new();
                let mut total = 0usize;
                let mut gpa = 65536 - 5 - rng.below(40);
                while total < len {
                    let n = match rng.below(3) {
                        0 => 1 + rng.below(40) as usize,
                        1 => 1 + rng.below(5000) as usize,
                        _ => 70_000,
                    }
                    .min(len - total);
                    ranges.push(GpaRange::new(Gpa::new(gpa), n as u64));
                    total += n;
                    gpa += n as u64 + 1 + rng.below(50);
                    if gpa > (1 << 20) - 80_000 {
                        gpa = rng.below(1000);
                    }
                }
                let mut plain = vec![0u8; len];
                rng.fill(&mut plain);
                let wsg = SgList::new(&mem, &ranges, true).unwrap();
                wsg.write_all(&plain).unwrap();
                let sector = rng.below(1024 - count as u64);
                block_on(disk.write(wsg, sector, IoOptions::default())).unwrap();
                let mut expect = plain.clone();
                oracle(&key, &mut expect, sector, ss, true);
                assert!(
                    read_vec(&inner, sector, len) == expect,
                    "round {round}: stored"
                );
                // Read back into the same odd layout.
                wsg.zero().unwrap();
                block_on(disk.read(wsg, sector, IoOptions::default())).unwrap();
                let mut back = vec![0u8; len];
                wsg.read_all(&mut back).unwrap();
                assert!(back == plain, "round {round}: read back");
            }
        }
    }

    /// A single guest range that crosses a chunk of the guest memory
    /// inside an AES block (its 64 KiB chunk boundary falls 5 bytes into
    /// the range), and a sector that spans two ranges.
    #[test]
    fn blocks_split_by_memory_pieces_and_ranges() {
        let key: Vec<u8> = (0..64).map(|i| i * 3).collect();
        let inner = ram(64, 512);
        let disk = crypt(&key, &inner);
        let mut rng = Rng::new(21);
        let mut plain = vec![0u8; 16 * 512];
        rng.fill(&mut plain);
        let mem = RamGuestMemory::new(1 << 18);
        let ranges = [
            GpaRange::new(Gpa::new(65536 - 5), 4096 + 7),
            GpaRange::new(Gpa::new(200_000), 4096 - 7),
            GpaRange::new(Gpa::new(131_072 - 9), 8192),
        ];
        let sg = SgList::new(&mem, &ranges, true).unwrap();
        sg.write_all(&plain).unwrap();
        block_on(disk.write(sg, 3, IoOptions::default())).unwrap();
        let mut expect = plain.clone();
        oracle(&key, &mut expect, 3, 512, true);
        assert!(read_vec(&inner, 3, plain.len()) == expect);
        sg.zero().unwrap();
        block_on(disk.read(sg, 3, IoOptions::default())).unwrap();
        let mut back = vec![0u8; plain.len()];
        sg.read_all(&mut back).unwrap();
        assert!(back == plain);
    }

    /// Guest memory that checks every byte written into it against the
    /// plaintext expected there.
    struct PlaintextOnly {
        ram: RamGuestMemory,
        plain: Vec<u8>,
        writes: core::sync::atomic::AtomicUsize,
        foreign: core::sync::atomic::AtomicUsize,
    }

    impl PlaintextOnly {
        fn saw(&self, gpa: Gpa, bytes: &[u8]) {
            let at = gpa.get() as usize;
            self.writes
                .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            if self.plain.get(at..at + bytes.len()) != Some(bytes) {
                self.foreign
                    .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    impl crate::memory::GuestMemory for PlaintextOnly {
        fn extent(&self) -> Gpa {
            self.ram.extent()
        }
        fn read_at(&self, gpa: Gpa, dst: &mut [u8]) -> Result<(), MemoryError> {
            self.ram.read_at(gpa, dst)
        }
        fn write_at(&self, gpa: Gpa, src: &[u8]) -> Result<(), MemoryError> {
            self.saw(gpa, src);
            self.ram.write_at(gpa, src)
        }
        fn fill_at(&self, gpa: Gpa, len: usize, byte: u8) -> Result<(), MemoryError> {
            self.saw(gpa, &vec![byte; len]);
            self.ram.fill_at(gpa, len, byte)
        }
        fn atomic(
            &self,
            gpa: Gpa,
            width: crate::memory::Width,
            op: crate::memory::AtomicOp,
            order: core::sync::atomic::Ordering,
        ) -> Result<u64, MemoryError> {
            self.ram.atomic(gpa, width, op, order)
        }
    }

    #[test]
    fn the_guest_never_sees_ciphertext_on_a_read() {
        use core::sync::atomic::Ordering;
        let key: Vec<u8> = (0..64u32).map(|i| (i * 5 + 1) as u8).collect();
        for (inner, len) in [
            (ram(256, 512), 300 * 1024 / 512 * 512),
            (ram(64, 4096), 4096),
        ] {
            let disk = crypt(&key, &inner);
            let mut plain =
                vec![0u8; len.min(inner.sector_count() as usize * inner.sector_size() as usize)];
            Rng::new(len as u64).fill(&mut plain);
            write_vec(&disk, 0, &plain);
            let mem = PlaintextOnly {
                ram: RamGuestMemory::new(plain.len() as u64),
                plain: plain.clone(),
                writes: Default::default(),
                foreign: Default::default(),
            };
            let r = [GpaRange::new(Gpa::new(0), plain.len() as u64)];
            let sg = SgList::new(&mem, &r, true).unwrap();
            block_on(disk.read(sg, 0, IoOptions::default())).unwrap();
            assert!(mem.writes.load(Ordering::Relaxed) > 0);
            assert_eq!(
                mem.foreign.load(Ordering::Relaxed),
                0,
                "bytes other than the plaintext were written to the guest"
            );
            let mut back = vec![0u8; plain.len()];
            mem.ram.read_at(Gpa::new(0), &mut back).unwrap();
            assert!(back == plain);
        }
    }

    #[test]
    fn out_of_range_is_illegal_block() {
        let inner = ram(64, 512);
        let disk = crypt(
            &[1; 32].iter().chain(&[2; 32]).copied().collect::<Vec<_>>(),
            &inner,
        );
        let mem = RamGuestMemory::new(8192);
        let r = [GpaRange::new(Gpa::new(0), 1024)];
        let sg = SgList::new(&mem, &r, true).unwrap();
        let o = IoOptions::default();
        for sector in [63, 64, 1000, u64::MAX - 1, u64::MAX] {
            assert_eq!(
                block_on(disk.read(sg, sector, o)),
                Err(DiskError::IllegalBlock)
            );
            assert_eq!(
                block_on(disk.write(sg, sector, o)),
                Err(DiskError::IllegalBlock)
            );
            assert_eq!(
                block_on(disk.unmap(sector, 2, o)),
                Err(DiskError::IllegalBlock)
            );
        }
        // Straight to the implementation, past the handle's checks.
        let raw = CryptDisk::new(
            &[3; 32].iter().chain(&[4; 32]).copied().collect::<Vec<_>>(),
            inner,
        )
        .unwrap();
        assert_eq!(
            block_on(DiskIo::read(&raw, sg, u64::MAX, o)),
            Err(DiskError::IllegalBlock)
        );
        assert_eq!(
            block_on(DiskIo::write(&raw, sg, 63, o)),
            Err(DiskError::IllegalBlock)
        );
        assert_eq!(
            block_on(DiskIo::unmap(&raw, u64::MAX, 2, o)),
            Err(DiskError::IllegalBlock)
        );
        assert!(block_on(disk.read(sg, 62, o)).is_ok());
    }

    /// A RAM store behind a plain forwarding disk that reports a chosen
    /// unmap behaviour. The store is shared, so a test can resize it under
    /// the crypt disk.
    struct Forward(Arc<RamDisk>, UnmapBehavior);
    impl DiskIo for Forward {
        fn kind(&self) -> &'static str {
            "forward"
        }
        fn sector_count(&self) -> u64 {
            self.0.sector_count()
        }
        fn sector_size(&self) -> u32 {
            self.0.sector_size()
        }
        fn is_read_only(&self) -> bool {
            false
        }
        fn is_fua_respected(&self) -> bool {
            true
        }
        fn unmap_behavior(&self) -> UnmapBehavior {
            self.1
        }
        fn completes_inline(&self) -> bool {
            true
        }
        async fn read(
            &self,
            buf: SgList<'_>,
            sector: u64,
            opts: IoOptions,
        ) -> Result<(), DiskError> {
            DiskIo::read(&*self.0, buf, sector, opts).await
        }
        async fn write(
            &self,
            buf: SgList<'_>,
            sector: u64,
            opts: IoOptions,
        ) -> Result<(), DiskError> {
            DiskIo::write(&*self.0, buf, sector, opts).await
        }
        async fn flush(&self, opts: IoOptions) -> Result<(), DiskError> {
            DiskIo::flush(&*self.0, opts).await
        }
        async fn unmap(&self, sector: u64, count: u64, opts: IoOptions) -> Result<(), DiskError> {
            DiskIo::unmap(&*self.0, sector, count, opts).await
        }
    }

    #[test]
    fn unmap_behaviour_and_pass_through() {
        let key: Vec<u8> = (0..64).collect();
        for (below, expect) in [
            (UnmapBehavior::Zeroes, UnmapBehavior::Unspecified),
            (UnmapBehavior::Unspecified, UnmapBehavior::Unspecified),
            (UnmapBehavior::Ignored, UnmapBehavior::Ignored),
        ] {
            let store = Arc::new(RamDisk::new(64 * 512, 512).unwrap());
            let inner = Disk::new(Forward(store, below)).unwrap();
            let disk = crypt(&key, &inner);
            assert_eq!(disk.unmap_behavior(), expect);
        }
        // Unmap reaches the inner disk: a RAM disk then reads zeros there.
        let inner = ram(64, 512);
        let disk = crypt(&key, &inner);
        write_vec(&disk, 8, &[0x33; 4096]);
        assert!(read_vec(&inner, 8, 4096) != vec![0; 4096]);
        block_on(disk.unmap(8, 8, IoOptions::default())).unwrap();
        assert_eq!(read_vec(&inner, 8, 4096), vec![0; 4096]);
    }

    #[test]
    fn key_errors() {
        let inner = ram(8, 512);
        for len in [0usize, 16, 32, 48, 63, 65, 128] {
            let key = vec![7u8; len];
            let err = CryptDisk::new(&key, inner.clone()).unwrap_err();
            assert_eq!(err, CryptError::InvalidKeyLength(len));
            let text = err.to_string();
            assert!(text.contains(&std::format!("{len} bytes")) && text.contains("expected 64"));
        }
        let mut key = [9u8; 64];
        assert_eq!(
            CryptDisk::new(&key, inner.clone()).unwrap_err(),
            CryptError::EqualKeyHalves
        );
        assert!(
            CryptError::EqualKeyHalves
                .to_string()
                .contains("must differ")
        );
        key[63] = 8;
        assert!(CryptDisk::new(&key, inner).is_ok());
    }

    #[test]
    fn raw_api_rejects_malformed_requests() {
        let key: Vec<u8> = (0..64).collect();
        let xts = Xts256::new(&key).unwrap();
        let mut buf = vec![0u8; 1024];
        for size in [0usize, 8, 24, 1000] {
            assert_eq!(
                xts.encrypt_sectors(&mut buf, 0, size),
                Err(CryptError::InvalidSectorSize(size))
            );
        }
        assert_eq!(
            xts.decrypt_sectors(&mut buf[..700], 0, 512),
            Err(CryptError::PartialSector {
                len: 700,
                sector_size: 512
            })
        );
        let src = vec![0u8; 512];
        assert_eq!(
            xts.encrypt_sectors_to(&src, &mut buf, 0, 512),
            Err(CryptError::LengthMismatch {
                src: 512,
                dst: 1024
            })
        );
        assert_eq!(
            xts.encrypt_sectors(&mut buf, u64::MAX, 512),
            Err(CryptError::SectorOverflow)
        );
        assert!(
            buf.iter().all(|&b| b == 0),
            "a refused request changed nothing"
        );
        // The last representable sector is fine, and so is an empty buffer.
        assert!(xts.encrypt_sectors(&mut buf[..512], u64::MAX, 512).is_ok());
        assert!(xts.encrypt_sectors(&mut [], u64::MAX, 512).is_ok());
        // Any multiple of 16 is a valid data unit for the raw cipher.
        let mut odd = vec![5u8; 48 * 3];
        let mut expect = odd.clone();
        xts.encrypt_sectors(&mut odd, 9, 48).unwrap();
        oracle(&key, &mut expect, 9, 48, true);
        assert_eq!(odd, expect);
    }

    /// A timer that must never be used (a zero delay skips it).
    struct NoTimer;
    impl Timer for NoTimer {
        fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
            Box::pin(core::future::pending())
        }
    }

    /// The staging budget is never exceeded. An inline stack whose budget
    /// is taken answers Busy for reads and writes (nothing written), and
    /// goes in smaller pieces when only those are free; a stack that
    /// really waits waits for room, then completes.
    #[test]
    fn staging_budget_is_enforced_busy_or_wait() {
        const BUDGET: usize = 128 << 10;
        let mut rng = Rng::new(8);
        let key = rng.key();
        let inner = ram(1024, 512);
        let raw = CryptDisk::with_staging_budget(&key, inner.clone(), BUDGET).unwrap();
        let pool = raw.pool.clone();
        let disk = Disk::new(raw).unwrap();
        let mut plain = vec![0u8; BUDGET];
        rng.fill(&mut plain);
        let mem = RamGuestMemory::new(BUDGET as u64);
        mem.write_at(Gpa::new(0), &plain).unwrap();
        let r = [GpaRange::new(Gpa::new(0), BUDGET as u64)];
        let write = |disk: &Disk| {
            let sg = SgList::new(&mem, &r, false).unwrap();
            block_on(disk.write(sg, 0, IoOptions::default()))
        };
        // The whole budget in use: Busy, and the inner disk untouched.
        let all = pool.try_acquire(BUDGET).unwrap().unwrap();
        assert!(matches!(write(&disk), Err(DiskError::Busy(_))));
        assert!(read_vec(&inner, 0, BUDGET).iter().all(|&b| b == 0));
        let sg = SgList::new(&mem, &r, true).unwrap();
        assert!(matches!(
            block_on(disk.read(sg, 0, IoOptions::default())),
            Err(DiskError::Busy(_))
        ));
        drop(all);
        // Half of it in use: the write goes in 64 KiB pieces.
        let half = pool.try_acquire(BUDGET / 2).unwrap().unwrap();
        write(&disk).unwrap();
        assert!(pool.high_water() <= BUDGET);
        let mut expect = plain.clone();
        oracle(&key, &mut expect, 0, 512, true);
        assert!(read_vec(&inner, 0, BUDGET) == expect);
        assert!(read_vec(&disk, 0, FALLBACK_PIECE) == plain[..FALLBACK_PIECE]);
        drop(half);
        assert!(read_vec(&disk, 0, BUDGET) == plain);

        // A disk that does not complete inline waits for the budget.
        let delayed = Disk::new(DelayDisk::new(
            inner.clone(),
            DelayHandle::new(Duration::ZERO),
            Arc::new(NoTimer),
        ))
        .unwrap();
        let raw = CryptDisk::with_staging_budget(&key, delayed, BUDGET).unwrap();
        let pool = raw.pool.clone();
        let disk = Disk::new(raw).unwrap();
        let all = pool.try_acquire(BUDGET).unwrap().unwrap();
        let sg = SgList::new(&mem, &r, false).unwrap();
        let mut fut = Box::pin(disk.write(sg, 8, IoOptions::default()));
        let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(pool.waiting(), 1);
        drop(all);
        assert!(matches!(
            fut.as_mut().poll(&mut cx),
            core::task::Poll::Ready(Ok(()))
        ));
        assert!(read_vec(&disk, 8, BUDGET) == plain);
        assert!(pool.high_water() <= BUDGET);
    }

    /// Requests larger than the staging budget go in order, in pieces; a
    /// disk that does not complete inline waits for staging memory.
    #[test]
    fn staging_pieces_inline_and_not() {
        let mut rng = Rng::new(5);
        let key = rng.key();
        let ram_disk = ram(256, 512);
        let delayed = Disk::new(DelayDisk::new(
            ram_disk.clone(),
            DelayHandle::new(Duration::ZERO),
            Arc::new(NoTimer),
        ))
        .unwrap();
        assert!(!delayed.completes_inline());
        for inner in [ram_disk.clone(), delayed] {
            let raw = CryptDisk::with_staging_budget(&key, inner.clone(), 1500).unwrap();
            assert_eq!(raw.pool.budget(), 1024);
            let disk = Disk::new(raw).unwrap();
            assert_eq!(disk.completes_inline(), inner.completes_inline());
            let mut plain = vec![0u8; 37 * 512];
            rng.fill(&mut plain);
            write_vec(&disk, 11, &plain);
            let mut expect = plain.clone();
            oracle(&key, &mut expect, 11, 512, true);
            assert!(read_vec(&ram_disk, 11, plain.len()) == expect);
            assert!(read_vec(&disk, 11, plain.len()) == plain);
            block_on(disk.flush(IoOptions::default())).unwrap();
        }
    }

    #[test]
    fn metadata_children_and_resize() {
        let key: Vec<u8> = (100..164).collect();
        let store = RamDisk::new(64 * 4096, 4096).unwrap();
        let inner = Disk::new(store).unwrap();
        let disk = crypt(&key, &inner);
        assert_eq!(disk.kind(), "crypt");
        assert_eq!(disk.sector_size(), 4096);
        assert_eq!(disk.sector_count(), 64);
        assert!(disk.completes_inline());
        assert_eq!(block_on(disk.eject()), Err(DiskError::UnsupportedEject));
        let d = disk.describe();
        assert_eq!(d.children.len(), 1);
        assert_eq!(d.children[0].0, "encrypted");
        assert!(
            d.details
                .iter()
                .any(|(k, v)| *k == "cipher" && v == "xts-aes-256")
        );
        assert!(disk.persistent_reservations().is_none());
    }

    #[test]
    fn sector_count_follows_the_inner_disk() {
        let key: Vec<u8> = (1..65).collect();
        let store = Arc::new(RamDisk::new(64 * 512, 512).unwrap());
        let shared = Forward(store.clone(), UnmapBehavior::Zeroes);
        let disk = crypt(&key, &Disk::new(shared).unwrap());
        let mem = RamGuestMemory::new(4096);
        let r = [GpaRange::new(Gpa::new(0), 512)];
        let sg = SgList::new(&mem, &r, true).unwrap();
        assert_eq!(
            block_on(disk.read(sg, 100, IoOptions::default())),
            Err(DiskError::IllegalBlock)
        );
        store.resize(128);
        assert_eq!(disk.sector_count(), 128);
        assert!(block_on(disk.read(sg, 100, IoOptions::default())).is_ok());
        store.resize(32);
        assert_eq!(
            block_on(disk.write(sg, 40, IoOptions::default())),
            Err(DiskError::IllegalBlock)
        );
    }

    /// The zero-allocation design needs the decorator's futures to fit the
    /// inline budget of [`crate::IoFuture`].
    #[test]
    fn futures_fit_the_inline_budget() {
        let key: Vec<u8> = (0..64).rev().collect();
        let c = CryptDisk::new(&key, ram(64, 512)).unwrap();
        let mem = RamGuestMemory::new(1 << 16);
        let r = [GpaRange::new(Gpa::new(0), 4096)];
        let sg = SgList::new(&mem, &r, true).unwrap();
        let o = IoOptions::default();
        let sizes = [
            core::mem::size_of_val(&DiskIo::read(&c, sg, 0, o)),
            core::mem::size_of_val(&DiskIo::write(&c, sg, 0, o)),
            core::mem::size_of_val(&DiskIo::flush(&c, o)),
            core::mem::size_of_val(&DiskIo::unmap(&c, 0, 8, o)),
            core::mem::size_of_val(&DiskIo::eject(&c)),
        ];
        for size in sizes {
            assert!(
                size <= IO_FUTURE_BYTES,
                "future of {size} bytes exceeds {IO_FUTURE_BYTES}: {sizes:?}"
            );
        }
    }
}
