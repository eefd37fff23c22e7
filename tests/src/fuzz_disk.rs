//! The `disk_ops` fuzz harness: arbitrary bytes → a small disk stack and a
//! sequence of hostile requests, checked against the reference model.
//!
//! The stack is one of: a RAM disk; a layered disk of 1–3 RAM layers (with
//! or without read cache and write-through, possibly read-only); a striped
//! disk of 2–4 RAM members with an arbitrary chunk size and logical size;
//! a RAM layer (optionally read-cache) over such a striped disk. Sector size
//! is 512 or 4096 and sizes stay small. Requests use arbitrary `u64`
//! sectors and counts, buffers of 1–4 ranges (unaligned, sometimes not
//! whole sectors, sometimes outside guest memory or not writable), and
//! resizes of the top RAM disk where there is one. Up to two decorators —
//! XTS-AES-256 encryption and persistent reservations — may wrap the stack;
//! under encryption, sectors never written read as unknown (pinned by their
//! first read) instead of zero.
//!
//! Properties: nothing panics; unrepresentable and out-of-range requests
//! fail with exactly `IllegalBlock`; valid in-range requests succeed and
//! reads agree with the model; every other outcome is the one
//! [`Checker`] predicts. Layer configurations that break a construction
//! rule must fail with the rule's error.
//!
//! Reuse between inputs: each request's buffer takes its guest memory from
//! the thread's [`scratch`](crate::scratch) pool (zeroed, as good as new);
//! the stack, decorators and model are built anew for every input, so an
//! input behaves the same alone as after others.

use crate::buf::Layout;
use crate::checker::{Checker, Op};
use crate::model::SectorState;
use crate::stacks::{disk, layer, ram};
use arbitrary::{Arbitrary, Unstructured};
use parastor_core::crypt::CryptDisk;
use parastor_core::layered::{
    InvalidLayer, LayerConfig, LayerSource, LayeredDisk, LayeredDiskError,
};
use parastor_core::ram::RamDisk;
use parastor_core::striped::StripedDisk;
use parastor_core::{Disk, ReservationsDisk};

/// Most operations one input runs.
const MAX_OPS: usize = 64;
/// Largest request, in bytes.
const MAX_BYTES: u64 = 64 * 1024;

/// One layer of a fuzzed layered disk.
#[derive(Arbitrary, Debug)]
struct LayerSpec {
    /// Sectors, relative to the disk's base size (0 = sized from below for
    /// all but the bottom layer).
    size: u8,
    write_through: bool,
    read_cache: bool,
}

/// Striping parameters.
#[derive(Arbitrary, Debug)]
struct StripeSpec {
    members: u8,
    chunk_log: u8,
    chunks_per_member: u8,
    member_tail: u8,
    logical: Option<u8>,
}

/// The stack under test.
#[derive(Arbitrary, Debug)]
enum StackSpec {
    Ram {
        sectors: u8,
    },
    Layered {
        read_only: bool,
        layers: Vec<LayerSpec>,
    },
    Striped(StripeSpec),
    LayeredOverStriped {
        read_cache: bool,
        stripe: StripeSpec,
    },
}

/// A sector number: near the disk (mostly in range) or anywhere.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sector {
    Near(u16),
    Raw(u64),
}

/// A buffer layout.
#[derive(Arbitrary, Debug)]
struct FuzzLayout {
    cuts: Vec<u32>,
    gaps: Vec<u16>,
    reverse: bool,
    /// ≥ 250: guest memory ends short of the buffer.
    short: u8,
    short_by: u16,
}

/// One request.
#[derive(Arbitrary, Debug)]
enum FuzzOp {
    Read {
        sector: Sector,
        count: u8,
        partial: u16,
        layout: FuzzLayout,
        read_only_buf: u8,
    },
    Write {
        sector: Sector,
        count: u8,
        partial: u16,
        layout: FuzzLayout,
        seed: u64,
        fua: bool,
    },
    Unmap {
        sector: Sector,
        count: Sector,
    },
    Flush,
    Resize {
        sectors: u16,
    },
}

/// A decorator wrapped around the stack.
#[derive(Arbitrary, Debug)]
enum Decorator {
    /// XTS-AES-256 with a key derived from the seed.
    Crypt {
        /// Key material, stretched to 64 bytes.
        seed: u64,
    },
    /// Persistent reservations (no reservation is taken, so every request
    /// must pass).
    PrWrap,
}

/// The whole input.
#[derive(Arbitrary, Debug)]
struct Input {
    big_sectors: bool,
    stack: StackSpec,
    ops: Vec<FuzzOp>,
    decorators: Vec<Decorator>,
}

/// A 64-byte XTS key from `seed`, with halves that differ.
fn key(seed: u64) -> [u8; 64] {
    let mut x = seed | 1;
    let mut k = [0u8; 64];
    for b in k.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    if k[..32] == k[32..] {
        k[32] ^= 1;
    }
    k
}

/// Wraps `disk` in `decorators`, innermost first; returns the stack and
/// whether it encrypts.
fn decorate(mut disk: Disk, decorators: &[Decorator]) -> (Disk, bool) {
    let mut crypt = false;
    for d in decorators.iter().take(2) {
        disk = match d {
            Decorator::Crypt { seed } => {
                crypt = true;
                let c = CryptDisk::new(&key(*seed), disk).expect("a valid key");
                Disk::new(c).expect("crypt keeps valid metadata")
            }
            Decorator::PrWrap => {
                Disk::new(ReservationsDisk::new(disk)).expect("prwrap keeps valid metadata")
            }
        };
    }
    (disk, crypt)
}

/// A built stack: the disk and, if it has one, the RAM disk whose size is
/// the stack's size.
struct Stack {
    disk: Disk,
    top: Option<RamDisk>,
}

fn build_stripe(spec: &StripeSpec, ss: u32) -> Disk {
    let n = 2 + usize::from(spec.members % 3);
    let chunk_sectors = 1u64 << (spec.chunk_log % 5);
    let cpm = 1 + u64::from(spec.chunks_per_member % 4);
    let member_sectors = chunk_sectors * cpm + u64::from(spec.member_tail) % chunk_sectors;
    let members = (0..n).map(|_| ram(member_sectors, ss).1).collect();
    let logical = spec
        .logical
        .map(|k| chunk_sectors * n as u64 * (1 + u64::from(k) % cpm));
    let chunk = (chunk_sectors * u64::from(ss)) as u32;
    disk(StripedDisk::new(members, Some(chunk), logical).expect("a valid striping"))
}

/// The error [`LayeredDisk::new`] must give for these write-through flags,
/// if any.
fn write_through_error(flags: &[bool]) -> Option<LayeredDiskError> {
    let n = flags.len();
    let mut path = 1;
    while flags[path - 1] {
        if path == n {
            let error = InvalidLayer::UselessWriteThrough;
            return Some(LayeredDiskError::Layer {
                index: n - 1,
                error,
            });
        }
        path += 1;
    }
    let index = (path..n).find(|&i| flags[i])?;
    Some(LayeredDiskError::Layer {
        index,
        error: InvalidLayer::UselessWriteThrough,
    })
}

fn build(stack: &StackSpec, ss: u32) -> Option<Stack> {
    let base = if ss == 512 { 64 } else { 16 };
    match stack {
        StackSpec::Ram { sectors } => {
            let (r, d) = ram(8 + u64::from(*sectors) % (4 * base), ss);
            Some(Stack {
                disk: d,
                top: Some(r),
            })
        }
        StackSpec::Layered { read_only, layers } => {
            let specs = &layers[..layers.len().min(3)];
            if specs.is_empty() {
                let e = LayeredDisk::new(*read_only, Vec::new()).err();
                assert_eq!(e, Some(LayeredDiskError::NoLayers));
                return None;
            }
            let mut top = None;
            let configs: Vec<LayerConfig> = specs
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let sectors = 8 + u64::from(l.size) % (2 * base);
                    if i == 0 {
                        let (r, d) = ram(sectors, ss);
                        top = Some(r);
                        layer(d, l.write_through, l.read_cache)
                    } else if l.size == 0 && i + 1 < specs.len() {
                        LayerConfig {
                            layer: LayerSource::Ram {
                                len_bytes: None,
                                sector_size: None,
                            },
                            write_through: l.write_through,
                            read_cache: l.read_cache,
                        }
                    } else {
                        layer(ram(sectors, ss).1, l.write_through, l.read_cache)
                    }
                })
                .collect();
            let flags: Vec<bool> = specs.iter().map(|l| l.write_through).collect();
            let want = write_through_error(&flags);
            match (LayeredDisk::new(*read_only, configs), want) {
                (Ok(l), None) => Some(Stack { disk: disk(l), top }),
                (Err(e), Some(w)) => {
                    assert_eq!(
                        e, w,
                        "layered construction error for write-through {flags:?}"
                    );
                    None
                }
                (r, w) => panic!(
                    "layered construction with write-through {flags:?}: expected {w:?}, got {:?}",
                    r.err()
                ),
            }
        }
        StackSpec::Striped(spec) => Some(Stack {
            disk: build_stripe(spec, ss),
            top: None,
        }),
        StackSpec::LayeredOverStriped { read_cache, stripe } => {
            let striped = build_stripe(stripe, ss);
            let (r, d) = ram(striped.sector_count(), ss);
            let configs = vec![layer(d, false, *read_cache), layer(striped, false, false)];
            let l = LayeredDisk::new(false, configs).expect("RAM over striped is valid");
            Some(Stack {
                disk: disk(l),
                top: Some(r),
            })
        }
    }
}

fn sector(s: Sector, n: u64) -> u64 {
    match s {
        Sector::Near(v) => u64::from(v) % (n + 8),
        Sector::Raw(v) => v,
    }
}

fn layout(l: &FuzzLayout) -> Layout {
    Layout {
        cuts: l.cuts.iter().copied().take(3).collect(),
        gaps: l.gaps.iter().copied().take(4).collect(),
        reverse: l.reverse,
        short_memory: (l.short >= 250).then_some(l.short_by % 2048),
    }
}

fn bytes(count: u8, partial: u16, ss: u32) -> usize {
    let max = MAX_BYTES / u64::from(ss);
    let count = u64::from(count) % (max + 1);
    // Mostly whole sectors; sometimes a ragged tail.
    let tail = if partial >= 0xf000 {
        u64::from(partial) % u64::from(ss)
    } else {
        0
    };
    (count * u64::from(ss) + tail) as usize
}

/// Runs one fuzz input. Panics on any violated property.
pub fn disk_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary(&mut u) else {
        return;
    };
    let ss = if input.big_sectors { 4096 } else { 512 };
    let Some(stack) = build(&input.stack, ss) else {
        return;
    };
    let top = stack.top.clone();
    let resize = move |n: u64| {
        if let Some(t) = &top {
            t.resize(n);
        }
    };
    let (disk, crypt) = decorate(stack.disk.clone(), &input.decorators);
    let fresh = if crypt {
        SectorState::Unknown
    } else {
        SectorState::Zero
    };
    let mut checker = Checker::new(disk, fresh.clone()).with_regrown(fresh);
    if stack.top.is_some() {
        checker = checker.with_resize(&resize);
    }
    let initial = stack.disk.sector_count();
    for op in input.ops.iter().take(MAX_OPS) {
        let n = checker.model().sector_count();
        let op = match op {
            FuzzOp::Read {
                sector: s,
                count,
                partial,
                layout: l,
                read_only_buf,
            } => Op::Read {
                sector: sector(*s, n),
                bytes: bytes(*count, *partial, ss),
                layout: layout(l),
                writable: *read_only_buf < 250,
            },
            FuzzOp::Write {
                sector: s,
                count,
                partial,
                layout: l,
                seed,
                fua,
            } => Op::Write {
                sector: sector(*s, n),
                bytes: bytes(*count, *partial, ss),
                layout: layout(l),
                seed: *seed,
                fua: *fua,
            },
            FuzzOp::Unmap { sector: s, count } => Op::Unmap {
                sector: sector(*s, n),
                count: sector(*count, n),
            },
            FuzzOp::Flush => Op::Flush,
            FuzzOp::Resize { sectors } => Op::Resize {
                sectors: u64::from(*sectors) % (2 * initial + 1),
            },
        };
        if let Err(f) = checker.apply(&op) {
            panic!(
                "disk_ops: {f}\nstack: {:?} ({ss}-byte sectors)",
                input.stack
            );
        }
    }
}
