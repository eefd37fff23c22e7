//! The recipe of a disk stack: which disks to build and how they wrap one
//! another, as plain data.
//!
//! A [`Recipe`] is what the spec grammar reads ([`super::grammar`]) and what
//! the builder turns into a [`Disk`](parastor_core::Disk)
//! ([`super::build`]). It holds no open files and no handles, so it can be
//! compared, cloned, printed and sent anywhere; anything that wants a disk
//! stack (the command line, the settings resolver) writes a recipe and hands
//! it to the one builder.
//!
//! Printing a recipe ([`fmt::Display`]) writes it in the spec grammar, sizes
//! with the largest exact binary suffix: `mem:64M@4096`,
//! `striped:128K:{mem:32M|mem:32M}`.

use core::fmt;

/// The sector size of a `mem:` or `file:` disk whose spec names none.
pub const DEFAULT_SECTOR_SIZE: u32 = 512;

/// How deeply recipes may nest (the whole stack counts as level 1): far more
/// than any real stack, few enough that a hostile spec cannot exhaust the
/// stack of the recursive parser, printer and builder.
pub const MAX_NESTING: usize = 64;

/// One disk of a stack and, for a disk that wraps others, the recipes of the
/// disks it wraps.
///
/// The values are what to build, not yet checked against each other: the
/// grammar accepts only sizes it can express (a non-zero whole number of
/// sectors, a sector size that is a power of two from 512 to 65536, a
/// non-zero chunk), and the builder checks the rest (members of one stripe
/// set agree, a key is 64 bytes, a file is a whole number of sectors).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Recipe {
    /// `mem:SIZE[@SECTOR]`: a RAM disk, zero-filled.
    Mem {
        /// Size in bytes (a non-zero whole number of sectors).
        len_bytes: u64,
        /// Sector size in bytes.
        sector_size: u32,
    },
    /// `file[@SECTOR]:PATH`: a host file (or block device node) as a disk,
    /// opened read-write, or read-only where writing is not permitted.
    File {
        /// The file, as the host names it.
        path: String,
        /// Sector size in bytes.
        sector_size: u32,
    },
    /// `memdiff:SPEC`: a RAM layer over `lower` that takes every write, so
    /// `lower` is never modified. The layer takes its size and sector size
    /// from `lower`.
    MemDiff {
        /// The disk under the RAM layer.
        lower: Box<Recipe>,
    },
    /// `striped:[CHUNK:]{SPEC|…}`: the members striped together.
    Striped {
        /// Stripe chunk size in bytes; `None` for the striped disk's default.
        chunk_bytes: Option<u32>,
        /// The members, in stripe order (at least one).
        members: Vec<Recipe>,
    },
    /// `crypt:KEYFILE:SPEC`: `inner` encrypted with XTS-AES-256.
    Crypt {
        /// The host file holding the 64-byte key (data key, then tweak key).
        key_file: String,
        /// The disk holding the ciphertext.
        inner: Box<Recipe>,
    },
    /// `delay:MILLIS:SPEC`: `inner` with latency added to reads and writes.
    Delay {
        /// The delay in milliseconds.
        millis: u64,
        /// The delayed disk.
        inner: Box<Recipe>,
    },
    /// `prwrap:SPEC`: `inner` with persistent reservations, enforced on
    /// every I/O.
    PrWrap {
        /// The disk the reservations guard.
        inner: Box<Recipe>,
    },
}

impl Recipe {
    /// The disk's kind as the grammar names it: `mem`, `file`, `memdiff`,
    /// `striped`, `crypt`, `delay` or `prwrap`.
    pub fn kind(&self) -> &'static str {
        match self {
            Recipe::Mem { .. } => "mem",
            Recipe::File { .. } => "file",
            Recipe::MemDiff { .. } => "memdiff",
            Recipe::Striped { .. } => "striped",
            Recipe::Crypt { .. } => "crypt",
            Recipe::Delay { .. } => "delay",
            Recipe::PrWrap { .. } => "prwrap",
        }
    }

    /// The recipes of the disks this one wraps, in order: the stripe
    /// members, or the one wrapped disk; none for `mem` and `file`.
    pub fn children(&self) -> &[Recipe] {
        match self {
            Recipe::Mem { .. } | Recipe::File { .. } => &[],
            Recipe::MemDiff { lower: inner }
            | Recipe::Crypt { inner, .. }
            | Recipe::Delay { inner, .. }
            | Recipe::PrWrap { inner } => core::slice::from_ref(inner),
            Recipe::Striped { members, .. } => members,
        }
    }

    /// The part of this recipe at `path`, if there is one.
    pub fn part(&self, path: &RecipePath) -> Option<&Recipe> {
        path.steps()
            .iter()
            .try_fold(self, |part, &i| part.children().get(i))
    }
}

/// Where a part sits in a recipe: from the whole recipe, the index of the
/// child to go down to at each level (see [`Recipe::children`]). The empty
/// path is the whole recipe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RecipePath(Vec<usize>);

impl RecipePath {
    /// The path of `steps`, outermost first.
    pub fn new(steps: Vec<usize>) -> Self {
        Self(steps)
    }

    /// The child indices, outermost first.
    pub fn steps(&self) -> &[usize] {
        &self.0
    }

    /// This path as seen from the parent part, whose child `index` is the
    /// part this path starts from.
    pub fn below(mut self, index: usize) -> Self {
        self.0.insert(0, index);
        self
    }

    /// Whether this is the whole recipe.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

/// Writes `bytes` with the largest binary suffix that divides it exactly.
fn write_size(f: &mut fmt::Formatter<'_>, bytes: u64) -> fmt::Result {
    for (shift, suffix) in [(40, 'T'), (30, 'G'), (20, 'M'), (10, 'K')] {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return write!(f, "{}{suffix}", bytes >> shift);
        }
    }
    write!(f, "{bytes}")
}

/// Writes `@SECTOR` unless the sector size is the default.
fn write_sector_size(f: &mut fmt::Formatter<'_>, sector_size: u32) -> fmt::Result {
    if sector_size == DEFAULT_SECTOR_SIZE {
        Ok(())
    } else {
        write!(f, "@{sector_size}")
    }
}

/// The recipe in the spec grammar. Parsing the text gives back an equal
/// recipe whenever the grammar can say it: sizes the grammar accepts,
/// non-empty paths, no `|` or `}` in a file path inside a member list and
/// no `:` in a key file path (the grammar has no escapes). Parts nested
/// deeper than [`MAX_NESTING`] levels print as `…`, so printing a recipe
/// built in code stays bounded (the grammar refuses such depth anyway).
impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, 1)
    }
}

impl Recipe {
    /// Writes this recipe, which sits at nesting level `level`.
    fn write(&self, f: &mut fmt::Formatter<'_>, level: usize) -> fmt::Result {
        if level > MAX_NESTING {
            return f.write_str("…");
        }
        let level = level + 1;
        match self {
            Recipe::Mem {
                len_bytes,
                sector_size,
            } => {
                f.write_str("mem:")?;
                write_size(f, *len_bytes)?;
                write_sector_size(f, *sector_size)
            }
            Recipe::File { path, sector_size } => {
                f.write_str("file")?;
                write_sector_size(f, *sector_size)?;
                write!(f, ":{path}")
            }
            Recipe::MemDiff { lower } => {
                f.write_str("memdiff:")?;
                lower.write(f, level)
            }
            Recipe::Striped {
                chunk_bytes,
                members,
            } => {
                f.write_str("striped:")?;
                if let Some(chunk) = chunk_bytes {
                    write_size(f, u64::from(*chunk))?;
                    f.write_str(":")?;
                }
                f.write_str("{")?;
                for (i, member) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_str("|")?;
                    }
                    member.write(f, level)?;
                }
                f.write_str("}")
            }
            Recipe::Crypt { key_file, inner } => {
                write!(f, "crypt:{key_file}:")?;
                inner.write(f, level)
            }
            Recipe::Delay { millis, inner } => {
                write!(f, "delay:{millis}:")?;
                inner.write(f, level)
            }
            Recipe::PrWrap { inner } => {
                f.write_str("prwrap:")?;
                inner.write(f, level)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `mem` recipe.
    pub(crate) fn mem(len_bytes: u64, sector_size: u32) -> Recipe {
        Recipe::Mem {
            len_bytes,
            sector_size,
        }
    }

    #[test]
    fn prints_in_the_grammar() {
        assert_eq!(mem(64 << 20, 512).to_string(), "mem:64M");
        assert_eq!(mem(64 << 20, 4096).to_string(), "mem:64M@4096");
        assert_eq!(mem(1536 << 20, 512).to_string(), "mem:1536M");
        assert_eq!(mem(3 << 40, 512).to_string(), "mem:3T");
        assert_eq!(mem(1000, 512).to_string(), "mem:1000");
        assert_eq!(mem(0, 512).to_string(), "mem:0");
        let file = Recipe::File {
            path: "/var/tmp/a b.img".into(),
            sector_size: 4096,
        };
        assert_eq!(file.to_string(), "file@4096:/var/tmp/a b.img");
        let stack = Recipe::PrWrap {
            inner: Box::new(Recipe::Delay {
                millis: 5,
                inner: Box::new(Recipe::Crypt {
                    key_file: "k.bin".into(),
                    inner: Box::new(Recipe::MemDiff {
                        lower: Box::new(Recipe::Striped {
                            chunk_bytes: Some(96 << 10),
                            members: vec![file, mem(1 << 30, 4096)],
                        }),
                    }),
                }),
            }),
        };
        assert_eq!(
            stack.to_string(),
            "prwrap:delay:5:crypt:k.bin:memdiff:striped:96K:{file@4096:/var/tmp/a b.img|mem:1G@4096}"
        );
        let default_chunk = Recipe::Striped {
            chunk_bytes: None,
            members: vec![mem(1 << 20, 512)],
        };
        assert_eq!(default_chunk.to_string(), "striped:{mem:1M}");

        // Printing stops at the nesting limit.
        let deep = (1..1000).fold(mem(1 << 20, 512), |r, _| Recipe::PrWrap {
            inner: Box::new(r),
        });
        assert_eq!(deep.to_string(), "prwrap:".repeat(MAX_NESTING) + "…");
    }

    #[test]
    fn parts_by_path() {
        let a = mem(1 << 20, 512);
        let b = Recipe::MemDiff {
            lower: Box::new(mem(2 << 20, 512)),
        };
        let stack = Recipe::Striped {
            chunk_bytes: None,
            members: vec![a.clone(), b.clone()],
        };
        assert_eq!(stack.part(&RecipePath::default()), Some(&stack));
        assert!(RecipePath::default().is_root());
        assert_eq!(stack.part(&RecipePath::new(vec![0])), Some(&a));
        assert_eq!(stack.part(&RecipePath::new(vec![1])), Some(&b));
        assert_eq!(
            stack.part(&RecipePath::new(vec![1, 0])),
            Some(&mem(2 << 20, 512))
        );
        assert_eq!(stack.part(&RecipePath::new(vec![2])), None);
        assert_eq!(stack.part(&RecipePath::new(vec![0, 0])), None);
        assert_eq!(
            RecipePath::new(vec![0]).below(1),
            RecipePath::new(vec![1, 0])
        );
        assert_eq!(stack.kind(), "striped");
        assert_eq!(b.children().len(), 1);
        assert!(a.children().is_empty());
    }
}
