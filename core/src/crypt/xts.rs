//! The XTS-AES-256 cipher loop (IEEE 1619), batched for throughput.
//!
//! The `aes` crate picks its fastest backend at run time (AES-NI, VAES-256,
//! VAES-512) and hands it to a closure ([`BlockCipherEncClosure`]); the
//! whole XTS loop below runs inside that closure, so it is compiled in the
//! backend's target-feature context (the tweak arithmetic and XORs
//! vectorise with the same instruction set) and encrypts
//! `ParBlocksSize` blocks (64 with VAES-512) per backend call — across
//! sector boundaries, since every block carries its own tweak.
//!
//! Per window of [`WINDOW`] blocks (2 KiB of data and 2 KiB of tweaks, so
//! everything stays in L1):
//! 1. the tweaks are generated into a small buffer: eight lanes
//!    `T·α^l … T·α^(l+7)` advanced by `α^8` per step with branch-free u64
//!    shifts and XORs (no table indexed by the key-derived tweak);
//! 2. the data is XORed with them (from a separate source buffer for
//!    buffer-to-buffer encryption);
//! 3. the backend enciphers the window in `ParBlocksSize` groups;
//! 4. the data is XORed with the tweaks again.
//!
//! The per-sector initial tweaks `E_K2(LBA)` are computed in batches of up
//! to [`MAX_IVS`] sectors, one tweak-cipher call per batch.

use super::CryptError;
use aes::cipher::array::Array;
use aes::cipher::consts::U16;
use aes::cipher::typenum::Unsigned;
use aes::cipher::{
    BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt, BlockCipherEncBackend,
    BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, KeyInit, ParBlocks,
    ParBlocksSizeUser,
};
use aes::{Aes256, Aes256Enc};
use core::fmt;

/// One AES block as the `aes` crate sees it.
type Block = aes::Block;
/// One AES block (or tweak) as plain bytes.
type B16 = [u8; 16];

/// Bytes per AES block.
const BLOCK: usize = 16;
/// Blocks per window: the tweak buffer and one slice of data (2 KiB each).
const WINDOW: usize = 128;
/// Sectors whose initial tweaks are computed per tweak-cipher call.
pub(crate) const MAX_IVS: usize = 64;

/// XTS-AES-256 with a 64-bit little-endian sector-number tweak
/// (dm-crypt's `aes-xts-plain64`).
///
/// The data unit is a *sector* of any size that is a multiple of 16 bytes
/// (no ciphertext stealing); sector `n` of a buffer that starts at
/// `first_lba` is enciphered with the tweak
/// `E_K2((first_lba + n) as u128 little-endian)`.
///
/// This is the raw cipher loop; [`crate::crypt::CryptDisk`] wraps it
/// around a disk. Round keys are zeroed when the value is dropped.
#[derive(Clone)]
pub struct Xts256 {
    /// K1: enciphers the data.
    data: Aes256,
    /// K2: enciphers sector numbers into initial tweaks.
    tweak: Aes256Enc,
}

impl fmt::Debug for Xts256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Xts256 { .. }")
    }
}

/// Which way a run of blocks is transformed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Encrypt,
    Decrypt,
}

impl Xts256 {
    /// Key length in bytes: the data key followed by the tweak key.
    pub const KEY_LEN: usize = 64;

    /// A cipher for `key` = data key ‖ tweak key (IEEE 1619 order).
    ///
    /// # Errors
    /// [`CryptError::InvalidKeyLength`] unless `key` is 64 bytes;
    /// [`CryptError::EqualKeyHalves`] if the two keys are equal (XTS then
    /// loses its security argument; FIPS implementations refuse it too).
    pub fn new(key: &[u8]) -> Result<Self, CryptError> {
        if key.len() != Self::KEY_LEN {
            return Err(CryptError::InvalidKeyLength(key.len()));
        }
        let (k1, k2) = key.split_at(32);
        // Branch-free comparison: the keys are secret.
        let diff = k1.iter().zip(k2).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            return Err(CryptError::EqualKeyHalves);
        }
        let k1 = <&Array<u8, _>>::try_from(k1).map_err(|_| CryptError::InvalidKeyLength(64))?;
        let k2 = <&Array<u8, _>>::try_from(k2).map_err(|_| CryptError::InvalidKeyLength(64))?;
        Ok(Self {
            data: Aes256::new(k1),
            tweak: Aes256Enc::new(k2),
        })
    }

    /// Encrypts whole sectors in place; `data` starts at sector
    /// `first_lba`.
    ///
    /// # Errors
    /// [`CryptError::InvalidSectorSize`], [`CryptError::PartialSector`] or
    /// [`CryptError::SectorOverflow`] if the request is malformed; `data`
    /// is then unchanged.
    pub fn encrypt_sectors(
        &self,
        data: &mut [u8],
        first_lba: u64,
        sector_size: usize,
    ) -> Result<(), CryptError> {
        self.sectors_in_place(Dir::Encrypt, data, first_lba, sector_size)
    }

    /// Decrypts whole sectors in place; `data` starts at sector
    /// `first_lba`.
    ///
    /// # Errors
    /// As [`Xts256::encrypt_sectors`].
    pub fn decrypt_sectors(
        &self,
        data: &mut [u8],
        first_lba: u64,
        sector_size: usize,
    ) -> Result<(), CryptError> {
        self.sectors_in_place(Dir::Decrypt, data, first_lba, sector_size)
    }

    /// [`Xts256::encrypt_sectors`] or [`Xts256::decrypt_sectors`].
    fn sectors_in_place(
        &self,
        dir: Dir,
        data: &mut [u8],
        first_lba: u64,
        sector_size: usize,
    ) -> Result<(), CryptError> {
        check(data.len(), first_lba, sector_size)?;
        Stream::new(self, first_lba, sector_size).run(dir, None, data);
        Ok(())
    }

    /// Encrypts whole sectors from `src` into `dst` (equal lengths),
    /// leaving `src` untouched.
    ///
    /// # Errors
    /// As [`Xts256::encrypt_sectors`], and [`CryptError::LengthMismatch`]
    /// if the buffers differ in length.
    pub fn encrypt_sectors_to(
        &self,
        src: &[u8],
        dst: &mut [u8],
        first_lba: u64,
        sector_size: usize,
    ) -> Result<(), CryptError> {
        if src.len() != dst.len() {
            return Err(CryptError::LengthMismatch {
                src: src.len(),
                dst: dst.len(),
            });
        }
        check(dst.len(), first_lba, sector_size)?;
        Stream::new(self, first_lba, sector_size).run(Dir::Encrypt, Some(src), dst);
        Ok(())
    }

    /// Enciphers `ivs[i] = E_K2(lba + i)` (little-endian, zero-extended).
    fn initial_tweaks(&self, lba: u64, ivs: &mut [Block]) {
        for (i, iv) in ivs.iter_mut().enumerate() {
            *iv = Array(u128::from(lba.wrapping_add(i as u64)).to_le_bytes());
        }
        self.tweak.encrypt_with_backend(Tweaks { blocks: ivs });
    }
}

/// Validates a sector request for the public API.
fn check(len: usize, first_lba: u64, sector_size: usize) -> Result<(), CryptError> {
    if sector_size < BLOCK || !sector_size.is_multiple_of(BLOCK) {
        return Err(CryptError::InvalidSectorSize(sector_size));
    }
    if !len.is_multiple_of(sector_size) {
        return Err(CryptError::PartialSector { len, sector_size });
    }
    let sectors = (len / sector_size) as u64;
    // The last sector's number must fit in 64 bits.
    if sectors > 0 && first_lba.checked_add(sectors - 1).is_none() {
        return Err(CryptError::SectorOverflow);
    }
    Ok(())
}

/// A position in a run of consecutive sectors: enciphers any number of
/// whole blocks at a time, so a sector may arrive in several pieces.
pub(crate) struct Stream<'a> {
    xts: &'a Xts256,
    /// Blocks per sector.
    bps: usize,
    /// The sector whose first block comes after the current sector.
    next_lba: u64,
    /// Blocks not yet processed in the current sector (0 = at a boundary).
    left: usize,
    /// Tweaks of the next eight blocks, valid while `left > 0`.
    lanes: Lanes,
}

impl<'a> Stream<'a> {
    /// A stream at the start of sector `lba`. `sector_size` must be a
    /// non-zero multiple of 16 (callers check).
    pub(crate) fn new(xts: &'a Xts256, lba: u64, sector_size: usize) -> Self {
        Self {
            xts,
            bps: (sector_size / BLOCK).max(1),
            next_lba: lba,
            left: 0,
            lanes: [0; 16],
        }
    }

    /// Transforms the next `dst.len() / 16` blocks: in place, or from
    /// `src` (same length) when given. A trailing partial block is ignored
    /// (callers pass whole blocks).
    pub(crate) fn run(&mut self, dir: Dir, src: Option<&[u8]>, dst: &mut [u8]) {
        let (dst, _) = Block::slice_as_chunks_mut(dst);
        let src = src.map(|s| Block::slice_as_chunks(s).0);
        let total = match src {
            Some(s) => dst.len().min(s.len()),
            None => dst.len(),
        };
        let mut ivs = [Block::default(); MAX_IVS];
        let mut off = 0;
        while off < total {
            let rest = total - off;
            // This call: the rest of the current sector plus up to MAX_IVS
            // new sectors.
            let fresh = if rest > self.left {
                (rest - self.left).div_ceil(self.bps).min(MAX_IVS)
            } else {
                0
            };
            let take = rest.min(self.left + fresh * self.bps);
            if fresh > 0 {
                self.xts.initial_tweaks(self.next_lba, &mut ivs[..fresh]);
            }
            let ivs = Array::cast_slice_to_core(&ivs[..fresh]);
            let mut cur = Cursor {
                ivs,
                next: 0,
                lanes: self.lanes,
                left: self.left,
                bps: self.bps,
            };
            let out = &mut dst[off..off + take];
            match dir {
                Dir::Encrypt => self.xts.data.encrypt_with_backend(Enc {
                    src: src.map(|s| &s[off..off + take]),
                    dst: out,
                    cur: &mut cur,
                }),
                Dir::Decrypt => self.xts.data.decrypt_with_backend(Dec {
                    dst: out,
                    cur: &mut cur,
                }),
            }
            self.lanes = cur.lanes;
            self.left = cur.left;
            self.next_lba = self.next_lba.wrapping_add(fresh as u64);
            off += take;
        }
    }
}

/// Eight consecutive tweaks as interleaved little-endian (low, high) u64
/// pairs: tweak `k` is `(x[2k], x[2k + 1])`.
type Lanes = [u64; 16];

/// All-ones in the low half of every tweak.
const LOW_HALVES: Lanes = {
    let mut m = [0u64; 16];
    let mut i = 0;
    while i < 16 {
        m[i] = u64::MAX;
        i += 2;
    }
    m
};

/// Every tweak multiplied by α^8 in GF(2^128) (polynomial
/// x^128 + x^7 + x^2 + x + 1): shift left by 8 and fold the 8 bits shifted
/// out back in as `top·(x^7 + x^2 + x + 1)`, computed with shifts and
/// XORs only (constant time).
#[inline(always)]
fn step8(x: &Lanes) -> Lanes {
    let mut carry = [0u64; 16];
    for i in 0..16 {
        carry[i] = x[i] >> 56;
    }
    let mut y = [0u64; 16];
    for i in 0..16 {
        // The low half receives the high half's carry, reduced; the high
        // half receives the low half's carry as is.
        let c = carry[i ^ 1];
        y[i] = (x[i] << 8) ^ c ^ (((c << 1) ^ (c << 2) ^ (c << 7)) & LOW_HALVES[i]);
    }
    y
}

/// The eight tweaks `t·α^(first + k)`, k = 0..8, for `first + 7 <= 57`.
#[inline(always)]
fn lanes_from(t: &B16, first: u64) -> Lanes {
    let (lo, hi) = load(t);
    let mut y = [0u64; 16];
    for k in 0..8 {
        let s = first + k as u64;
        // `(v >> 1) >> (63 - s)` is `v >> (64 - s)` without the undefined
        // shift by 64 when s = 0.
        let top = (hi >> 1) >> (63 - s);
        y[2 * k + 1] = (hi << s) | ((lo >> 1) >> (63 - s));
        y[2 * k] = (lo << s) ^ top ^ (top << 1) ^ (top << 2) ^ (top << 7);
    }
    y
}

#[inline(always)]
fn load(b: &B16) -> (u64, u64) {
    let (lo, hi) = b.split_at(8);
    let lo: [u8; 8] = lo.try_into().unwrap_or_default();
    let hi: [u8; 8] = hi.try_into().unwrap_or_default();
    (u64::from_le_bytes(lo), u64::from_le_bytes(hi))
}

#[inline(always)]
fn store_lanes(x: &Lanes, out: &mut [B16; 8]) {
    for (k, o) in out.iter_mut().enumerate() {
        let (lo, hi) = o.split_at_mut(8);
        lo.copy_from_slice(&x[2 * k].to_le_bytes());
        hi.copy_from_slice(&x[2 * k + 1].to_le_bytes());
    }
}

/// The tweak sequence across sectors inside one backend call.
struct Cursor<'a> {
    /// Initial tweaks of the sectors that start in this call.
    ivs: &'a [B16],
    next: usize,
    lanes: Lanes,
    left: usize,
    bps: usize,
}

impl Cursor<'_> {
    /// Writes the tweaks of the next `out.len()` blocks.
    #[inline(always)]
    fn fill(&mut self, out: &mut [B16]) {
        let mut i = 0;
        while i < out.len() {
            if self.left == 0 {
                let Some(iv) = self.ivs.get(self.next) else {
                    return;
                };
                self.lanes = lanes_from(iv, 0);
                self.next += 1;
                self.left = self.bps;
            }
            let m = (out.len() - i).min(self.left);
            let (groups, rem) = out[i..i + m].as_chunks_mut::<8>();
            let mut x = self.lanes;
            for g in groups {
                store_lanes(&x, g);
                x = step8(&x);
            }
            if !rem.is_empty() {
                // A piece that ends inside a group of eight (odd splits).
                let mut tmp = [[0u8; 16]; 8];
                store_lanes(&x, &mut tmp);
                let r = rem.len();
                rem.copy_from_slice(&tmp[..r]);
                x = lanes_from(&tmp[0], r as u64);
            }
            self.lanes = x;
            self.left -= m;
            i += m;
        }
    }
}

#[inline(always)]
fn xor_in_place(dst: &mut [Block], tw: &[B16]) {
    let d = Block::slice_as_flattened_mut(dst);
    for (d, t) in d.iter_mut().zip(tw.as_flattened()) {
        *d ^= *t;
    }
}

#[inline(always)]
fn xor_from(dst: &mut [Block], src: &[Block], tw: &[B16]) {
    let d = Block::slice_as_flattened_mut(dst);
    let s = Block::slice_as_flattened(src);
    for ((d, s), t) in d.iter_mut().zip(s).zip(tw.as_flattened()) {
        *d = *s ^ *t;
    }
}

/// Window length for a backend that enciphers `par` blocks at once: a
/// multiple of `par` when possible.
#[inline(always)]
fn window_for(par: usize) -> usize {
    if par <= WINDOW {
        WINDOW / par * par
    } else {
        WINDOW
    }
}

/// Whether a short run is better enciphered as one padded parallel batch
/// than block by block (a lone block costs the full round latency).
#[inline(always)]
fn pad_tail(tail: usize, par: usize) -> bool {
    tail * 4 >= par
}

/// The XTS loop shared by encryption and decryption, run inside a
/// backend's closure: per window, generate tweaks, XOR (from `src` if
/// given), encipher with `par_blocks` / `tail_blocks`, XOR again.
#[inline(always)]
fn xts_windows<P: aes::cipher::array::ArraySize>(
    dst: &mut [Block],
    src: Option<&[Block]>,
    cur: &mut Cursor<'_>,
    mut par_blocks: impl FnMut(&mut Array<Block, P>),
    mut tail_blocks: impl FnMut(&mut [Block]),
) {
    let par = P::USIZE;
    let w = window_for(par);
    let mut tw = [[0u8; 16]; WINDOW];
    let mut off = 0;
    while off < dst.len() {
        let n = (dst.len() - off).min(w);
        let tw = &mut tw[..n];
        cur.fill(tw);
        let win = &mut dst[off..off + n];
        match src {
            Some(src) => xor_from(win, &src[off..off + n], tw),
            None => xor_in_place(win, tw),
        }
        let (groups, tail) = Array::<Block, P>::slice_as_chunks_mut(win);
        for g in groups {
            par_blocks(g);
        }
        if !tail.is_empty() {
            if pad_tail(tail.len(), par) {
                let mut g = Array::<Block, P>::default();
                g[..tail.len()].copy_from_slice(tail);
                par_blocks(&mut g);
                tail.copy_from_slice(&g[..tail.len()]);
            } else {
                tail_blocks(tail);
            }
        }
        xor_in_place(win, tw);
        off += n;
    }
}

/// The XTS encryption loop, run with the data key's backend.
struct Enc<'a, 'c> {
    src: Option<&'a [Block]>,
    dst: &'a mut [Block],
    cur: &'a mut Cursor<'c>,
}

impl BlockSizeUser for Enc<'_, '_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for Enc<'_, '_> {
    #[inline(always)]
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        xts_windows::<<B as ParBlocksSizeUser>::ParBlocksSize>(
            self.dst,
            self.src,
            self.cur,
            |g| backend.encrypt_par_blocks(g.into()),
            |t| backend.encrypt_tail_blocks(t.into()),
        );
    }
}

/// The XTS decryption loop, run with the data key's backend.
struct Dec<'a, 'c> {
    dst: &'a mut [Block],
    cur: &'a mut Cursor<'c>,
}

impl BlockSizeUser for Dec<'_, '_> {
    type BlockSize = U16;
}

impl BlockCipherDecClosure for Dec<'_, '_> {
    #[inline(always)]
    fn call<B: BlockCipherDecBackend<BlockSize = U16>>(self, backend: &B) {
        xts_windows::<<B as ParBlocksSizeUser>::ParBlocksSize>(
            self.dst,
            None,
            self.cur,
            |g| backend.decrypt_par_blocks(g.into()),
            |t| backend.decrypt_tail_blocks(t.into()),
        );
    }
}

/// Enciphers a batch of initial tweaks with the tweak key's backend.
struct Tweaks<'a> {
    blocks: &'a mut [Block],
}

impl BlockSizeUser for Tweaks<'_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for Tweaks<'_> {
    #[inline(always)]
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        let par = <B as ParBlocksSizeUser>::ParBlocksSize::USIZE;
        let (groups, tail) = ParBlocks::<B>::slice_as_chunks_mut(self.blocks);
        for g in groups {
            backend.encrypt_par_blocks(g.into());
        }
        if pad_tail(tail.len(), par) {
            let mut g = ParBlocks::<B>::default();
            g[..tail.len()].copy_from_slice(tail);
            backend.encrypt_par_blocks((&mut g).into());
            tail.copy_from_slice(&g[..tail.len()]);
        } else {
            for b in tail {
                backend.encrypt_block(b.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// α^8 by lanes equals eight single doublings.
    #[test]
    fn lane_arithmetic_matches_doubling() {
        fn double(t: u128) -> u128 {
            (t << 1) ^ if t >> 127 == 1 { 0x87 } else { 0 }
        }
        let seeds = [
            u128::MAX,
            1,
            1 << 127,
            0x8000_0000_0000_0000_8000_0000_0000_0001,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ];
        for seed in seeds {
            let x = lanes_from(&seed.to_le_bytes(), 0);
            let mut t = seed;
            for k in 0..8 {
                assert_eq!(u128::from(x[2 * k]) | u128::from(x[2 * k + 1]) << 64, t);
                t = double(t);
            }
            let y = step8(&x);
            let mut t = seed;
            for _ in 0..8 {
                t = double(t);
            }
            for k in 0..8 {
                assert_eq!(u128::from(y[2 * k]) | u128::from(y[2 * k + 1]) << 64, t);
                t = double(t);
            }
            for first in 0..=50u64 {
                let z = lanes_from(&seed.to_le_bytes(), first);
                let mut t = seed;
                for _ in 0..first {
                    t = double(t);
                }
                assert_eq!(u128::from(z[0]) | u128::from(z[1]) << 64, t);
            }
        }
    }
}
