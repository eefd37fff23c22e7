//! The builder: a [`Recipe`] to the decorated disk stack it describes.
//!
//! This is the one way from a recipe to a [`Disk`]. What needs the host —
//! opening a file as a disk, reading a key file, the timer delay disks sleep
//! on — comes through the [`Host`] trait: [`StdHost`](super::host::StdHost)
//! for the real thing, an in-memory host for tests. Everything else (RAM
//! disks, layers, stripes, XTS, reservations) is built here from
//! `parastor-core`.
//!
//! A failure is a [`BuildError`]: the path of the failing part in the recipe,
//! the part's own recipe text, and why.

use super::recipe::{MAX_NESTING, Recipe, RecipePath};
use parastor_core::crypt::CryptDisk;
use parastor_core::layered::{LayerConfig, LayerSource, LayeredDisk, LayeredDiskError};
use parastor_core::ram::{RamDisk, RamDiskError};
use parastor_core::striped::{StripedDisk, StripedDiskError};
use parastor_core::{
    CryptError, DelayDisk, DelayHandle, Disk, InvalidDisk, ReservationsDisk, Timer,
};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of an XTS-AES-256 key (data key, then tweak key).
pub const KEY_LEN: usize = 64;

/// What the builder needs from the host it runs on.
pub trait Host {
    /// Opens the host file `path` as a disk of `sector_size`-byte sectors.
    /// The error should name the path.
    fn open_file(&self, path: &str, sector_size: u32) -> io::Result<Disk>;

    /// Reads the key file `path`: at most `limit` bytes from its start, so
    /// a huge or endless file is never read to its end.
    fn read_key(&self, path: &str, limit: usize) -> io::Result<Vec<u8>>;

    /// The timer `delay` disks sleep on.
    fn timer(&self) -> io::Result<Arc<dyn Timer>>;
}

/// Why one part of a recipe could not be built.
#[derive(Debug)]
pub enum BuildFailure {
    /// The recipe nests deeper than [`MAX_NESTING`] levels.
    TooDeep,
    /// The RAM disk's size or sector size is not valid.
    Ram(RamDiskError),
    /// The host could not open the file as a disk.
    OpenFile(io::Error),
    /// The RAM layer could not go over the lower disk.
    MemDiff(LayeredDiskError),
    /// The members cannot be striped together.
    Striped(StripedDiskError),
    /// The host could not read the key file.
    ReadKey {
        /// The key file.
        path: String,
        /// What the host reported.
        error: io::Error,
    },
    /// The key file holds more than [`KEY_LEN`] bytes.
    KeyTooLong {
        /// The key file.
        path: String,
    },
    /// The key file holds no valid XTS-AES-256 key.
    Key {
        /// The key file.
        path: String,
        /// What is wrong with the key.
        error: CryptError,
    },
    /// The host could not provide a timer.
    Timer(io::Error),
    /// The disk built reports geometry a [`Disk`] refuses.
    Invalid(InvalidDisk),
}

/// A recipe that could not be built: where, what, and why.
#[derive(Debug)]
pub struct BuildError {
    at: RecipePath,
    part: String,
    failure: BuildFailure,
}

impl BuildError {
    /// Where the failing part sits in the recipe.
    pub fn at(&self) -> &RecipePath {
        &self.at
    }

    /// The failing part's recipe, in the spec grammar.
    pub fn part(&self) -> &str {
        &self.part
    }

    /// Why the part failed.
    pub fn failure(&self) -> &BuildFailure {
        &self.failure
    }

    /// What went wrong, naming the failing part as `name` (quoted), or not
    /// at all when `name` is `None` (for a caller that shows the whole
    /// recipe alongside anyway).
    pub fn describe(&self, name: Option<&str>) -> String {
        let this = name.map_or(String::new(), |n| format!(" '{n}'"));
        match &self.failure {
            BuildFailure::TooDeep => format!(
                "the recipe nests too deeply: expected at most {MAX_NESTING} levels of disks"
            ),
            BuildFailure::Ram(e) => format!("cannot create the RAM disk{this}: {e}"),
            // The host's message names the file.
            BuildFailure::OpenFile(e) => e.to_string(),
            BuildFailure::MemDiff(e) => format!("cannot build the memdiff disk{this}: {e}"),
            BuildFailure::Striped(e) => format!("cannot build the striped disk{this}: {e}"),
            BuildFailure::ReadKey { path, error } => {
                format!("cannot read the key file '{path}': {error}")
            }
            BuildFailure::KeyTooLong { path } => format!(
                "key file '{path}' holds more than {KEY_LEN} bytes: expected the {KEY_LEN} raw \
                 bytes of an XTS-AES-256 key"
            ),
            BuildFailure::Key { path, error } => format!("key file '{path}': {error}"),
            BuildFailure::Timer(e) => format!("cannot start the timer thread: {e}"),
            BuildFailure::Invalid(e) => format!("the disk{this} is not valid: {e}"),
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(Some(&self.part)))
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.failure {
            BuildFailure::OpenFile(e) | BuildFailure::Timer(e) => Some(e),
            BuildFailure::ReadKey { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Builds the disk stack `recipe` describes, taking files, keys and the
/// timer from `host`.
pub fn build_disk(recipe: &Recipe, host: &dyn Host) -> Result<Disk, BuildError> {
    Builder {
        host,
        path: Vec::new(),
    }
    .disk(recipe)
}

/// The builder's walk: the host and the path of the part being built.
struct Builder<'h> {
    host: &'h dyn Host,
    path: Vec<usize>,
}

impl Builder<'_> {
    fn disk(&mut self, recipe: &Recipe) -> Result<Disk, BuildError> {
        let fail = |path: &[usize], failure| BuildError {
            at: RecipePath::new(path.to_vec()),
            part: recipe.to_string(),
            failure,
        };
        // The grammar stops at this depth already; a recipe written in code
        // must not overflow the stack either.
        if self.path.len() >= MAX_NESTING {
            return Err(fail(&self.path, BuildFailure::TooDeep));
        }
        let wrap = |path: &[usize], disk: Result<Disk, InvalidDisk>| {
            disk.map_err(|e| fail(path, BuildFailure::Invalid(e)))
        };
        match recipe {
            Recipe::Mem {
                len_bytes,
                sector_size,
            } => {
                let ram = RamDisk::new(*len_bytes, *sector_size)
                    .map_err(|e| fail(&self.path, BuildFailure::Ram(e)))?;
                wrap(&self.path, Disk::new(ram))
            }
            Recipe::File { path, sector_size } => self
                .host
                .open_file(path, *sector_size)
                .map_err(|e| fail(&self.path, BuildFailure::OpenFile(e))),
            Recipe::MemDiff { lower } => {
                let lower = self.child(0, lower)?;
                let layer = |layer| LayerConfig {
                    layer,
                    write_through: false,
                    read_cache: false,
                };
                let ram = LayerSource::Ram {
                    len_bytes: None,
                    sector_size: None,
                };
                let layers = vec![layer(ram), layer(LayerSource::Disk(lower))];
                let layered = LayeredDisk::new(false, layers)
                    .map_err(|e| fail(&self.path, BuildFailure::MemDiff(e)))?;
                wrap(&self.path, Disk::new(layered))
            }
            Recipe::Striped {
                chunk_bytes,
                members,
            } => {
                let members = members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| self.child(i, m))
                    .collect::<Result<Vec<_>, _>>()?;
                let striped = StripedDisk::new(members, *chunk_bytes, None)
                    .map_err(|e| fail(&self.path, BuildFailure::Striped(e)))?;
                wrap(&self.path, Disk::new(striped))
            }
            Recipe::Crypt { key_file, inner } => {
                let path = || key_file.clone();
                let key = self.host.read_key(key_file, KEY_LEN + 1).map_err(|error| {
                    let failure = BuildFailure::ReadKey {
                        path: path(),
                        error,
                    };
                    fail(&self.path, failure)
                })?;
                if key.len() > KEY_LEN {
                    return Err(fail(&self.path, BuildFailure::KeyTooLong { path: path() }));
                }
                let inner = self.child(0, inner)?;
                let crypt = CryptDisk::new(&key, inner).map_err(|error| {
                    fail(
                        &self.path,
                        BuildFailure::Key {
                            path: path(),
                            error,
                        },
                    )
                })?;
                wrap(&self.path, Disk::new(crypt))
            }
            Recipe::Delay { millis, inner } => {
                let inner = self.child(0, inner)?;
                let timer = self
                    .host
                    .timer()
                    .map_err(|e| fail(&self.path, BuildFailure::Timer(e)))?;
                let delay = DelayHandle::new(Duration::from_millis(*millis));
                wrap(&self.path, Disk::new(DelayDisk::new(inner, delay, timer)))
            }
            Recipe::PrWrap { inner } => {
                let inner = self.child(0, inner)?;
                wrap(&self.path, Disk::new(ReservationsDisk::new(inner)))
            }
        }
    }

    /// Builds child `index` of the part being built.
    fn child(&mut self, index: usize, recipe: &Recipe) -> Result<Disk, BuildError> {
        self.path.push(index);
        let disk = self.disk(recipe);
        self.path.pop();
        disk
    }
}
