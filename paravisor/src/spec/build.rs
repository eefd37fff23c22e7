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

/// What the builder needs from the host it runs on: the only way it reaches
/// files, key material and time. The builder asks once per part that needs
/// it, in build order (a `crypt` part reads its key before the disks under
/// it are built; a `delay` part asks for the timer after).
pub trait Host {
    /// Opens the host file `path` as a disk of `sector_size`-byte sectors.
    /// The error should name the path.
    fn open_file(&self, path: &str, sector_size: u32) -> io::Result<Disk>;

    /// Reads the key file `path`: at most `limit` bytes from its start, so
    /// a huge or endless file is never read to its end.
    fn read_key(&self, path: &str, limit: usize) -> io::Result<Vec<u8>>;

    /// The timer `delay` disks sleep on.
    fn timer(&self) -> io::Result<Arc<dyn Timer>>;

    /// Called with each RAM disk the builder makes for a `mem:` part,
    /// before anything wraps it: a host that resizes disks at run time
    /// keeps the handle (a [`RamDisk`] clone is the same disk). Does
    /// nothing by default.
    fn made_ram_disk(&self, ram: &RamDisk) {
        let _ = ram;
    }
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
    build_part(recipe, host, 1)
}

/// Builds `recipe`, a part at nesting level `level`. An error's path runs
/// from this part down; each parent puts its own step in front.
fn build_part(recipe: &Recipe, host: &dyn Host, level: usize) -> Result<Disk, BuildError> {
    let fail = |failure| BuildError {
        at: RecipePath::default(),
        part: recipe.to_string(),
        failure,
    };
    // The grammar stops at this depth already; a recipe written in code
    // must not overflow the stack either.
    if level > MAX_NESTING {
        return Err(fail(BuildFailure::TooDeep));
    }
    let child = |index: usize, part: &Recipe| {
        build_part(part, host, level + 1).map_err(|mut e| {
            e.at = e.at.below(index);
            e
        })
    };
    let valid = |disk: Result<Disk, InvalidDisk>| disk.map_err(|e| fail(BuildFailure::Invalid(e)));
    match recipe {
        Recipe::Mem {
            len_bytes,
            sector_size,
        } => {
            let ram =
                RamDisk::new(*len_bytes, *sector_size).map_err(|e| fail(BuildFailure::Ram(e)))?;
            host.made_ram_disk(&ram);
            valid(Disk::new(ram))
        }
        Recipe::File { path, sector_size } => host
            .open_file(path, *sector_size)
            .map_err(|e| fail(BuildFailure::OpenFile(e))),
        Recipe::MemDiff { lower } => {
            let lower = child(0, lower)?;
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
            let layered =
                LayeredDisk::new(false, layers).map_err(|e| fail(BuildFailure::MemDiff(e)))?;
            valid(Disk::new(layered))
        }
        Recipe::Striped {
            chunk_bytes,
            members,
        } => {
            let members = members
                .iter()
                .enumerate()
                .map(|(i, m)| child(i, m))
                .collect::<Result<Vec<_>, _>>()?;
            let striped = StripedDisk::new(members, *chunk_bytes, None)
                .map_err(|e| fail(BuildFailure::Striped(e)))?;
            valid(Disk::new(striped))
        }
        Recipe::Crypt { key_file, inner } => {
            let path = key_file.clone();
            let key = match host.read_key(key_file, KEY_LEN + 1) {
                Ok(key) if key.len() > KEY_LEN => {
                    return Err(fail(BuildFailure::KeyTooLong { path }));
                }
                Ok(key) => key,
                Err(error) => return Err(fail(BuildFailure::ReadKey { path, error })),
            };
            let inner = child(0, inner)?;
            let crypt = CryptDisk::new(&key, inner)
                .map_err(|error| fail(BuildFailure::Key { path, error }))?;
            valid(Disk::new(crypt))
        }
        Recipe::Delay { millis, inner } => {
            let inner = child(0, inner)?;
            let timer = host.timer().map_err(|e| fail(BuildFailure::Timer(e)))?;
            let delay = DelayHandle::new(Duration::from_millis(*millis));
            valid(Disk::new(DelayDisk::new(inner, delay, timer)))
        }
        Recipe::PrWrap { inner } => {
            let inner = child(0, inner)?;
            valid(Disk::new(ReservationsDisk::new(inner)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::dd::{read_sectors, write_sectors};
    use crate::spec::grammar::parse;
    use crate::spec::recipe::tests::mem;
    use crate::spec::test_host::MemHost;

    fn key() -> Vec<u8> {
        (0..64u8).collect()
    }

    fn build(spec: &str, host: &MemHost) -> Result<Disk, BuildError> {
        build_disk(&parse(spec).unwrap(), host)
    }

    fn read(disk: &Disk, lba: u64, count: u64) -> Vec<u8> {
        let mut out = Vec::new();
        read_sectors(disk, lba, count, &mut out).unwrap();
        out
    }

    #[test]
    fn builds_a_whole_stack_from_the_host() {
        let host = MemHost::default()
            .with_file("a", 1 << 20, 512)
            .with_file("b", 1 << 20, 512)
            .with_key("k", key())
            .with_timer();
        let spec = "prwrap:delay:3:crypt:k:memdiff:striped:64K:{file:a|file:b|mem:1M}";
        let disk = build(spec, &host).unwrap();
        // The key is read (bounded) before the disks under it are built; the
        // timer is asked for once the delayed disk exists.
        assert_eq!(
            host.log(),
            [
                "key k (at most 65 bytes)",
                "open a@512",
                "open b@512",
                "timer"
            ]
        );
        assert_eq!((disk.sector_count(), disk.sector_size()), (6144, 512));
        assert!(disk.persistent_reservations().is_some());
        let kinds = |d: &parastor_core::Description| {
            d.children.iter().map(|(_, c)| c.kind).collect::<Vec<_>>()
        };
        let top = disk.describe();
        assert_eq!((top.kind, kinds(&top)), ("prwrap", vec!["delay"]));
        let delay = &top.children[0].1;
        assert_eq!(kinds(delay), ["crypt"]);
        let crypt = &delay.children[0].1;
        assert_eq!(kinds(crypt), ["layered"]);
        let memdiff = &crypt.children[0].1;
        assert_eq!(kinds(memdiff), ["ram", "striped"]);
        assert_eq!(kinds(&memdiff.children[1].1), ["ram", "ram", "ram"]);

        // Data goes through every layer: it reads back as written, the delay
        // sleeps its 3 ms, and the host's files are never written (memdiff).
        let data: Vec<u8> = (0..8 * 512).map(|i| (i % 251) as u8).collect();
        write_sectors(&disk, 100, &mut &data[..]).unwrap();
        let timer = host.timer.as_ref().unwrap();
        let sleeps_before_read = timer.0.lock().unwrap().len();
        assert_eq!(read(&disk, 100, 8), data);
        let sleeps = timer.0.lock().unwrap();
        assert!(sleeps.len() > sleeps_before_read);
        assert!(sleeps.iter().all(|&d| d == Duration::from_millis(3)));
        assert!(read(&host.files["a"], 0, 2048).iter().all(|&b| b == 0));
        assert!(read(&host.files["b"], 0, 2048).iter().all(|&b| b == 0));
    }

    #[test]
    fn crypt_uses_the_key_from_the_host() {
        let host = MemHost::default()
            .with_file("a", 64 << 10, 4096)
            .with_key("k", key());
        let disk = build("crypt:k:file@4096:a", &host).unwrap();
        assert_eq!((disk.kind(), disk.sector_size()), ("crypt", 4096));
        let data = vec![0x5a; 4096];
        write_sectors(&disk, 3, &mut &data[..]).unwrap();
        assert_eq!(read(&disk, 3, 1), data);
        let stored = read(&host.files["a"], 3, 1);
        assert_ne!(stored, data, "the file holds ciphertext");
        // Another key reads other plaintext from the same ciphertext.
        let mut other = key();
        other[0] ^= 1;
        let host2 = MemHost::default()
            .with_disk("a", host.files["a"].clone())
            .with_key("k", other);
        let disk2 = build("crypt:k:file@4096:a", &host2).unwrap();
        assert_ne!(read(&disk2, 3, 1), data);
    }

    #[test]
    fn errors_name_the_failing_part() {
        let host = MemHost::default()
            .with_file("a", 1 << 20, 512)
            .with_key("short", vec![1; 32])
            .with_key("long", vec![1; 1000])
            .with_key("halves", [[7; 32], [7; 32]].concat());
        let fails = |spec: &str| build(spec, &host).unwrap_err();

        let e = fails("memdiff:striped:{file:a|mem:2M}");
        assert_eq!(e.at().steps(), [0]);
        assert_eq!(e.part(), "striped:{file:a|mem:2M}");
        assert!(matches!(
            e.failure(),
            BuildFailure::Striped(StripedDiskError::MismatchedSectorCount { member: 1, .. })
        ));
        assert_eq!(
            e.to_string(),
            "cannot build the striped disk 'striped:{file:a|mem:2M}': member 1 has 4096 sectors, \
             but member 0 has 2048: all members must be the same size"
        );
        assert_eq!(
            e.describe(None),
            "cannot build the striped disk: member 1 has 4096 sectors, but member 0 has 2048: \
             all members must be the same size"
        );

        // Of two members with the same text, the path says which failed.
        let e = fails("striped:{memdiff:file:a|memdiff:file:gone}");
        assert_eq!((e.at().steps(), e.part()), (&[1, 0][..], "file:gone"));
        assert_eq!(e.to_string(), "no file gone here");
        let source = std::error::Error::source(&e).unwrap();
        assert_eq!(source.to_string(), "no file gone here");

        let e = fails("file@4096:a");
        assert!(e.at().is_root());
        assert_eq!(e.to_string(), "a has 512-byte sectors");

        let e = fails("prwrap:crypt:missing:mem:1M");
        assert_eq!(e.at().steps(), [0]);
        assert_eq!(
            e.to_string(),
            "cannot read the key file 'missing': no file missing here"
        );
        assert!(matches!(e.failure(), BuildFailure::ReadKey { path, .. } if path == "missing"));

        // The host is asked for one byte more than a key, never more.
        let e = fails("crypt:long:mem:1M");
        assert!(matches!(e.failure(), BuildFailure::KeyTooLong { path } if path == "long"));
        assert_eq!(
            e.to_string(),
            "key file 'long' holds more than 64 bytes: expected the 64 raw bytes of an \
             XTS-AES-256 key"
        );
        assert!(
            host.log()
                .contains(&"key long (at most 65 bytes)".to_owned())
        );

        let e = fails("crypt:short:mem:1M");
        assert!(matches!(
            e.failure(),
            BuildFailure::Key {
                error: CryptError::InvalidKeyLength(32),
                ..
            }
        ));
        assert!(e.to_string().starts_with("key file 'short': "), "{e}");
        let e = fails("crypt:halves:mem:1M");
        assert!(matches!(
            e.failure(),
            BuildFailure::Key {
                error: CryptError::EqualKeyHalves,
                ..
            }
        ));

        // MemHost has no timer unless given one.
        let e = fails("striped:{mem:1M|delay:1:mem:1M}");
        assert_eq!((e.at().steps(), e.part()), (&[1][..], "delay:1:mem:1M"));
        assert_eq!(
            e.to_string(),
            "cannot start the timer thread: no threads here"
        );
    }

    #[test]
    fn recipes_written_in_code_are_checked_too() {
        let host = MemHost::default();
        let e = build_disk(&mem(0, 512), &host).unwrap_err();
        assert!(matches!(e.failure(), BuildFailure::Ram(_)));
        assert!(
            e.to_string()
                .starts_with("cannot create the RAM disk 'mem:0': "),
            "{e}"
        );
        let e = build_disk(&mem(1 << 20, 1000), &host).unwrap_err();
        assert!(matches!(e.failure(), BuildFailure::Ram(_)), "{e}");

        let empty = Recipe::Striped {
            chunk_bytes: None,
            members: Vec::new(),
        };
        let e = build_disk(&empty, &host).unwrap_err();
        assert!(matches!(
            e.failure(),
            BuildFailure::Striped(StripedDiskError::EmptyMemberList)
        ));

        // Nesting is bounded here as in the grammar: no stack overflow.
        let nest = |levels: usize| {
            (1..levels).fold(mem(1 << 20, 512), |r, _| Recipe::MemDiff {
                lower: Box::new(r),
            })
        };
        assert!(build_disk(&nest(MAX_NESTING), &host).is_ok());
        let e = build_disk(&nest(1000), &host).unwrap_err();
        assert!(matches!(e.failure(), BuildFailure::TooDeep));
        assert_eq!(e.at().steps(), [0; MAX_NESTING]);
        assert_eq!(
            e.describe(None),
            "the recipe nests too deeply: expected at most 64 levels of disks"
        );
        assert!(host.log().is_empty());
    }
}
