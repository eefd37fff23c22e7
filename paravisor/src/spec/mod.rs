//! Disk specs: the little language `parastor disk` uses to name a disk stack.
//!
//! A spec is parsed into a [`SpecNode`] tree ([`parse`]) and the tree is then
//! built into a [`Disk`] ([`build_node`]); [`build`] does both. See
//! [`GRAMMAR`] for the language. Every kind of disk is one row of a table of
//! prefixes (`KINDS`): the row names the prefix and the function that parses
//! what follows it, so a new kind (a decorator such as `crypt:KEYFILE:SPEC`)
//! is a new row, a new [`NodeKind`] variant and a new arm in the builder.
//!
//! Errors name the byte column of the spec where parsing failed and what
//! was expected there ([`SpecError`]).

use crate::file::FileDisk;
use crate::timer::StdTimer;
use parastor_core::crypt::CryptDisk;
use parastor_core::layered::{LayerConfig, LayerSource, LayeredDisk};
use parastor_core::ram::RamDisk;
use parastor_core::striped::StripedDisk;
use parastor_core::{DelayDisk, DelayHandle, Disk, ReservationsDisk, Timer};
use std::fmt;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The spec language, for `--help`.
pub const GRAMMAR: &str = "\
DISK SPECS
  A SPEC names a disk stack. Kinds nest: a kind that wraps other disks takes
  their specs as arguments.

  mem:SIZE[@SECTOR]          A RAM disk of SIZE bytes with SECTOR-byte sectors
                             (default 512). SIZE must be whole sectors.
  file[@SECTOR]:PATH         A host file as a disk with SECTOR-byte sectors
                             (default 512); its length must be whole sectors.
                             Opened read-write, or read-only if writing is not
                             permitted. PATH runs to the end of the spec, or,
                             inside {...}, to the next '|' or '}': a path
                             cannot contain those two characters there.
  memdiff:SPEC               SPEC under a RAM layer that takes all writes, so
                             SPEC itself is never modified.
  striped:[CHUNK:]{SPEC|SPEC|...}
                             The member disks striped in CHUNK-byte chunks
                             (default: the striped disk's own default).
  crypt:KEYFILE:SPEC         SPEC encrypted with XTS-AES-256: KEYFILE holds
                             the 64 raw key bytes (data key, then tweak key);
                             each sector is a data unit and its LBA the tweak
                             (dm-crypt aes-xts-plain64). KEYFILE runs to the
                             next ':' and cannot contain one.
  delay:MILLIS:SPEC          SPEC with MILLIS milliseconds added before every
                             read and write.
  prwrap:SPEC                SPEC with SCSI/NVMe persistent reservations,
                             enforced on every I/O.

  SIZE, CHUNK and SECTOR are decimal numbers with an optional binary suffix
  K, M, G or T (case-insensitive; a trailing B or iB is allowed): 64M, 64MiB,
  128k, 4096. Sector sizes are powers of two from 512 to 65536.

  Examples:
    mem:64M
    mem:1G@4096
    file@4096:/var/tmp/disk.img
    memdiff:file:base.img
    striped:128K:{mem:32M|mem:32M}
    memdiff:striped:128K:{file:a.img|file:b.img}
    crypt:key.bin:file:disk.img
    prwrap:delay:5:mem:1G";

/// A parsed spec: one disk of the stack, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecNode {
    /// The bytes of the spec this node was parsed from.
    pub span: Range<usize>,
    /// What the node is.
    pub kind: NodeKind,
}

/// One kind of disk, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// `mem:SIZE[@SECTOR]`: a RAM disk.
    Mem {
        /// Size in bytes (a non-zero whole number of sectors).
        len_bytes: u64,
        /// Sector size in bytes.
        sector_size: u32,
    },
    /// `file[@SECTOR]:PATH`: a host file.
    File {
        /// The file.
        path: PathBuf,
        /// Sector size in bytes.
        sector_size: u32,
    },
    /// `memdiff:SPEC`: a writable RAM layer over the disk.
    MemDiff(Box<SpecNode>),
    /// `crypt:KEYFILE:SPEC`: XTS-AES-256 over the disk.
    Crypt {
        /// The file holding the 64-byte key.
        key_file: PathBuf,
        /// The disk holding the ciphertext.
        inner: Box<SpecNode>,
    },
    /// `delay:MILLIS:SPEC`: added latency on reads and writes.
    Delay {
        /// The delay in milliseconds.
        millis: u64,
        /// The delayed disk.
        inner: Box<SpecNode>,
    },
    /// `prwrap:SPEC`: persistent reservations, enforced.
    PrWrap(Box<SpecNode>),
    /// `striped:[CHUNK:]{SPEC|…}`: members striped together.
    Striped {
        /// Stripe chunk size in bytes; `None` for the striped disk's default.
        chunk_bytes: Option<u32>,
        /// The members, in stripe order.
        members: Vec<SpecNode>,
    },
}

/// A spec that could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    spec: String,
    span: Range<usize>,
    message: String,
}

impl SpecError {
    fn new(spec: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        Self {
            spec: spec.to_owned(),
            span,
            message: message.into(),
        }
    }

    /// The 1-based byte column where the problem starts.
    pub fn column(&self) -> usize {
        self.span.start + 1
    }

    /// The bytes of the spec the problem covers (at least one byte unless
    /// the problem is at the end of the spec).
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// What was wrong and what was expected, without the position.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The whole spec.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// The spec with a line of carets under the problem, for terminals.
    pub fn caret_diagram(&self) -> String {
        let start = floor_char_boundary(&self.spec, self.span.start);
        let end = floor_char_boundary(&self.spec, self.span.end).max(start);
        let pad = self.spec[..start].chars().count();
        let width = self.spec[start..end].chars().count().max(1);
        format!(
            "  {}\n  {}{}",
            self.spec,
            " ".repeat(pad),
            "^".repeat(width)
        )
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spec error at column {} of '{}': {}",
            self.column(),
            self.spec,
            self.message
        )
    }
}

impl std::error::Error for SpecError {}

/// One row of the prefix table: a kind's name and the parser for what
/// follows the name.
struct Kind {
    name: &'static str,
    parse: fn(&mut Parser<'_>, Range<usize>) -> Result<NodeKind, SpecError>,
}

/// Every kind of disk a spec can name.
const KINDS: &[Kind] = &[
    Kind {
        name: "mem",
        parse: parse_mem,
    },
    Kind {
        name: "file",
        parse: parse_file,
    },
    Kind {
        name: "memdiff",
        parse: parse_memdiff,
    },
    Kind {
        name: "striped",
        parse: parse_striped,
    },
    Kind {
        name: "crypt",
        parse: parse_crypt,
    },
    Kind {
        name: "delay",
        parse: parse_delay,
    },
    Kind {
        name: "prwrap",
        parse: parse_prwrap,
    },
];

/// The names of the kinds a spec can use, in table order.
pub fn kind_names() -> impl Iterator<Item = &'static str> {
    KINDS.iter().map(|k| k.name)
}

const DEFAULT_SECTOR_SIZE: u32 = 512;

/// Parses `spec` into a tree, without opening or creating anything.
pub fn parse(spec: &str) -> Result<SpecNode, SpecError> {
    let mut p = Parser {
        spec,
        pos: 0,
        depth: 0,
        nesting: 0,
    };
    let node = p.spec_node()?;
    if p.pos < spec.len() {
        return Err(p.error_here(format!(
            "unexpected {} after the end of the spec: expected nothing more",
            p.found()
        )));
    }
    Ok(node)
}

/// Parses `spec` and builds the disk stack it names.
pub fn build(spec: &str) -> Result<Disk, SpecError> {
    build_node(spec, &parse(spec)?)
}

struct Parser<'s> {
    spec: &'s str,
    pos: usize,
    /// How many `{` deep the parser is; file paths end at `|` or `}` inside.
    depth: usize,
    /// How many specs deep the parser is, bounded by [`MAX_NESTING`].
    nesting: usize,
}

/// How deeply specs may nest: far more than any real stack, few enough that
/// a hostile spec cannot exhaust the stack of the recursive parser and
/// builder.
pub const MAX_NESTING: usize = 64;

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.spec[self.pos..].chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// How the next character reads in a message.
    fn found(&self) -> String {
        match self.peek() {
            None => "end of spec".to_owned(),
            Some(c) => format!("'{c}'"),
        }
    }

    fn error_here(&self, message: String) -> SpecError {
        let len = self.peek().map_or(0, char::len_utf8);
        SpecError::new(self.spec, self.pos..self.pos + len, message)
    }

    fn expect(&mut self, c: char, context: &str) -> Result<(), SpecError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error_here(format!("expected '{c}' {context}, found {}", self.found())))
        }
    }

    /// Takes the longest run of characters satisfying `f`.
    fn take_while(&mut self, f: impl Fn(char) -> bool) -> Range<usize> {
        let start = self.pos;
        while let Some(c) = self.peek().filter(|&c| f(c)) {
            self.pos += c.len_utf8();
        }
        start..self.pos
    }

    fn spec_node(&mut self) -> Result<SpecNode, SpecError> {
        let start = self.pos;
        if self.nesting == MAX_NESTING {
            return Err(self.error_here(format!(
                "the spec nests too deeply: expected at most {MAX_NESTING} levels of disks"
            )));
        }
        self.nesting += 1;
        let node = self.spec_node_inner(start);
        self.nesting -= 1;
        node
    }

    fn spec_node_inner(&mut self, start: usize) -> Result<SpecNode, SpecError> {
        let name = self.take_while(|c| c.is_ascii_alphanumeric());
        let known = || kind_names().collect::<Vec<_>>().join(", ");
        if name.is_empty() {
            return Err(self.error_here(format!(
                "expected a disk kind (one of {}), found {}",
                known(),
                self.found()
            )));
        }
        let word = &self.spec[name.clone()];
        let Some(kind) = KINDS.iter().find(|k| k.name == word) else {
            return Err(SpecError::new(
                self.spec,
                name,
                format!("unknown disk kind '{word}': expected one of {}", known()),
            ));
        };
        let kind = (kind.parse)(self, name)?;
        Ok(SpecNode {
            span: start..self.pos,
            kind,
        })
    }

    /// A size such as `64M`: returns the value and where it was written.
    fn size(&mut self, what: &str) -> Result<(u64, Range<usize>), SpecError> {
        let span = self.take_while(|c| c.is_ascii_alphanumeric() || c == '.');
        let text = &self.spec[span.clone()];
        let err = |message: String| SpecError::new(self.spec, span.clone(), message);
        if text.is_empty() {
            return Err(self.error_here(format!(
                "expected a {what} (a number with an optional K, M, G or T suffix), found {}",
                self.found()
            )));
        }
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err(format!(
                "invalid {what} '{text}': expected a number with an optional K, M, G or T suffix"
            )));
        }
        let shift = match text[digits..].to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            suffix => {
                return Err(err(format!(
                    "invalid {what} '{text}': unknown suffix '{}', expected K, M, G or T \
                     (optionally followed by B or iB)",
                    &text[digits..digits + suffix.len()]
                )));
            }
        };
        let too_large = || {
            err(format!(
                "{what} '{text}' is too large: at most 2^63-1 bytes"
            ))
        };
        let value: u64 = text[..digits].parse().map_err(|_| too_large())?;
        let bytes = value
            .checked_mul(1 << shift)
            .filter(|&b| b <= i64::MAX as u64);
        Ok((bytes.ok_or_else(too_large)?, span))
    }

    /// A sector size after `@`.
    fn sector_size(&mut self) -> Result<u32, SpecError> {
        let (size, span) = self.size("sector size")?;
        match u32::try_from(size) {
            Ok(s) if parastor_hw::is_valid_sector_size(s) => Ok(s),
            _ => Err(SpecError::new(
                self.spec,
                span,
                format!("invalid sector size {size}: expected a power of two from 512 to 65536"),
            )),
        }
    }
}

/// `mem:SIZE[@SECTOR]`
fn parse_mem(p: &mut Parser<'_>, _name: Range<usize>) -> Result<NodeKind, SpecError> {
    p.expect(':', "after 'mem'")?;
    let (len_bytes, span) = p.size("disk size")?;
    let sector_size = if p.eat('@') {
        p.sector_size()?
    } else {
        DEFAULT_SECTOR_SIZE
    };
    if len_bytes == 0 {
        return Err(SpecError::new(
            p.spec,
            span,
            "disk size is 0: expected at least one sector",
        ));
    }
    if len_bytes % u64::from(sector_size) != 0 {
        return Err(SpecError::new(
            p.spec,
            span,
            format!(
                "disk size {len_bytes} bytes is not a whole number of {sector_size}-byte sectors"
            ),
        ));
    }
    Ok(NodeKind::Mem {
        len_bytes,
        sector_size,
    })
}

/// `file[@SECTOR]:PATH`
fn parse_file(p: &mut Parser<'_>, _name: Range<usize>) -> Result<NodeKind, SpecError> {
    let sector_size = if p.eat('@') {
        p.sector_size()?
    } else {
        DEFAULT_SECTOR_SIZE
    };
    p.expect(':', "before the file path")?;
    let nested = p.depth > 0;
    let path = p.take_while(|c| !(nested && (c == '|' || c == '}')));
    if path.is_empty() {
        return Err(p.error_here(format!("expected a file path, found {}", p.found())));
    }
    Ok(NodeKind::File {
        path: PathBuf::from(&p.spec[path]),
        sector_size,
    })
}

/// `memdiff:SPEC`
fn parse_memdiff(p: &mut Parser<'_>, _name: Range<usize>) -> Result<NodeKind, SpecError> {
    p.expect(':', "after 'memdiff'")?;
    Ok(NodeKind::MemDiff(Box::new(p.spec_node()?)))
}

/// `striped:[CHUNK:]{SPEC|SPEC|…}`
fn parse_striped(p: &mut Parser<'_>, _name: Range<usize>) -> Result<NodeKind, SpecError> {
    p.expect(':', "after 'striped'")?;
    let chunk_bytes = if p.peek() == Some('{') {
        None
    } else {
        let (chunk, span) = p.size("chunk size")?;
        let chunk = u32::try_from(chunk)
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| {
                SpecError::new(
                    p.spec,
                    span,
                    format!("invalid chunk size {chunk}: expected 1 byte to 4 GiB - 1"),
                )
            })?;
        p.expect(':', "after the chunk size")?;
        Some(chunk)
    };
    p.expect('{', "to open the member list")?;
    let open = p.pos - 1;
    if p.peek() == Some('}') {
        return Err(SpecError::new(
            p.spec,
            open..p.pos + 1,
            "empty member list: expected at least one member spec between '{' and '}'",
        ));
    }
    p.depth += 1;
    let mut members = Vec::new();
    loop {
        members.push(p.spec_node()?);
        if p.eat('|') {
            continue;
        }
        if p.eat('}') {
            break;
        }
        return Err(p.error_here(format!(
            "expected '|' or '}}' after stripe member {}, found {}",
            members.len() - 1,
            p.found()
        )));
    }
    p.depth -= 1;
    Ok(NodeKind::Striped {
        chunk_bytes,
        members,
    })
}

/// `crypt:KEYFILE:SPEC`
fn parse_crypt(p: &mut Parser<'_>, _name: Range<usize>) -> Result<NodeKind, SpecError> {
    p.expect(':', "after 'crypt'")?;
    let path = p.take_while(|c| c != ':');
    if path.is_empty() {
        return Err(p.error_here(format!("expected a key file path, found {}", p.found())));
    }
    let key_file = PathBuf::from(&p.spec[path]);
    p.expect(':', "after the key file path")?;
    Ok(NodeKind::Crypt {
        key_file,
        inner: Box::new(p.spec_node()?),
    })
}

/// `delay:MILLIS:SPEC`
fn parse_delay(p: &mut Parser<'_>, _name: Range<usize>) -> Result<NodeKind, SpecError> {
    p.expect(':', "after 'delay'")?;
    let span = p.take_while(|c| c.is_ascii_digit());
    if span.is_empty() {
        return Err(p.error_here(format!(
            "expected the delay in milliseconds (a whole number), found {}",
            p.found()
        )));
    }
    let millis = p.spec[span.clone()].parse::<u64>().map_err(|_| {
        SpecError::new(
            p.spec,
            span,
            "delay is too large: expected at most 2^64-1 milliseconds",
        )
    })?;
    p.expect(':', "after the delay")?;
    Ok(NodeKind::Delay {
        millis,
        inner: Box::new(p.spec_node()?),
    })
}

/// `prwrap:SPEC`
fn parse_prwrap(p: &mut Parser<'_>, _name: Range<usize>) -> Result<NodeKind, SpecError> {
    p.expect(':', "after 'prwrap'")?;
    Ok(NodeKind::PrWrap(Box::new(p.spec_node()?)))
}

/// The timer every `delay:` disk of this process shares.
fn shared_timer() -> io::Result<Arc<dyn Timer>> {
    static TIMER: OnceLock<Arc<StdTimer>> = OnceLock::new();
    if let Some(t) = TIMER.get() {
        return Ok(t.clone());
    }
    let timer = Arc::new(StdTimer::new()?);
    Ok(TIMER.get_or_init(|| timer).clone())
}

/// Builds the disk stack `node` describes; `spec` is the text it was parsed
/// from, for error messages.
pub fn build_node(spec: &str, node: &SpecNode) -> Result<Disk, SpecError> {
    // The error already shows the whole spec; name the part that failed
    // only when it is not the whole spec.
    let this = match spec.get(node.span.clone()) {
        Some(text) if text != spec => format!(" '{text}'"),
        _ => String::new(),
    };
    let fail = |message: String| SpecError::new(spec, node.span.clone(), message);
    let wrap = |disk: Result<Disk, parastor_core::InvalidDisk>| {
        disk.map_err(|e| fail(format!("the disk{this} is not valid: {e}")))
    };
    match &node.kind {
        NodeKind::Mem {
            len_bytes,
            sector_size,
        } => {
            let ram = RamDisk::new(*len_bytes, *sector_size)
                .map_err(|e| fail(format!("cannot create the RAM disk{this}: {e}")))?;
            wrap(Disk::new(ram))
        }
        NodeKind::File { path, sector_size } => {
            let file = match FileDisk::open(path, *sector_size, false) {
                Err(e) if write_not_permitted(&e) => FileDisk::open(path, *sector_size, true),
                r => r,
            }
            .map_err(|e| fail(e.to_string()))?;
            wrap(Disk::new(file))
        }
        NodeKind::MemDiff(lower) => {
            let lower = build_node(spec, lower)?;
            let layers = vec![
                LayerConfig {
                    layer: LayerSource::Ram {
                        len_bytes: None,
                        sector_size: None,
                    },
                    write_through: false,
                    read_cache: false,
                },
                LayerConfig {
                    layer: LayerSource::Disk(lower),
                    write_through: false,
                    read_cache: false,
                },
            ];
            let layered = LayeredDisk::new(false, layers)
                .map_err(|e| fail(format!("cannot build the memdiff disk{this}: {e}")))?;
            wrap(Disk::new(layered))
        }
        NodeKind::Striped {
            chunk_bytes,
            members,
        } => {
            let members = members
                .iter()
                .map(|m| build_node(spec, m))
                .collect::<Result<Vec<_>, _>>()?;
            let striped = StripedDisk::new(members, *chunk_bytes, None)
                .map_err(|e| fail(format!("cannot build the striped disk{this}: {e}")))?;
            wrap(Disk::new(striped))
        }
        NodeKind::Crypt { key_file, inner } => {
            let key = read_key_file(key_file).map_err(|e| {
                fail(format!(
                    "cannot read the key file '{}': {e}",
                    key_file.display()
                ))
            })?;
            if key.len() > KEY_LEN {
                return Err(fail(format!(
                    "key file '{}' holds more than {KEY_LEN} bytes: expected the {KEY_LEN} raw \
                     bytes of an XTS-AES-256 key",
                    key_file.display()
                )));
            }
            let inner = build_node(spec, inner)?;
            let crypt = CryptDisk::new(&key, inner)
                .map_err(|e| fail(format!("key file '{}': {e}", key_file.display())))?;
            wrap(Disk::new(crypt))
        }
        NodeKind::Delay { millis, inner } => {
            let inner = build_node(spec, inner)?;
            let timer =
                shared_timer().map_err(|e| fail(format!("cannot start the timer thread: {e}")))?;
            let delay = DelayHandle::new(Duration::from_millis(*millis));
            wrap(Disk::new(DelayDisk::new(inner, delay, timer)))
        }
        NodeKind::PrWrap(inner) => {
            let inner = build_node(spec, inner)?;
            wrap(Disk::new(ReservationsDisk::new(inner)))
        }
    }
}

/// Bytes of an XTS-AES-256 key (data key, then tweak key).
const KEY_LEN: usize = 64;

/// Reads at most one byte more than a key from `path`: enough to tell a
/// key file that is too long, without reading a huge file or an endless one
/// (`/dev/zero`) to its end.
fn read_key_file(path: &std::path::Path) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut key = Vec::new();
    std::fs::File::open(path)?
        .take(KEY_LEN as u64 + 1)
        .read_to_end(&mut key)?;
    Ok(key)
}

/// Whether opening read-write failed only because writing is not allowed,
/// so a read-only open may succeed.
fn write_not_permitted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
        || e.kind() == io::ErrorKind::ReadOnlyFilesystem
        || e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(spec: &str) -> NodeKind {
        match parse(spec) {
            Ok(n) => {
                assert_eq!(n.span, 0..spec.len());
                n.kind
            }
            Err(e) => panic!("{spec}: {e}"),
        }
    }

    fn err(spec: &str) -> SpecError {
        match parse(spec) {
            Ok(n) => panic!("{spec} parsed as {n:?}"),
            Err(e) => e,
        }
    }

    fn mem(len_bytes: u64, sector_size: u32) -> NodeKind {
        NodeKind::Mem {
            len_bytes,
            sector_size,
        }
    }

    #[test]
    fn mem_forms() {
        assert_eq!(kind("mem:64M"), mem(64 << 20, 512));
        assert_eq!(kind("mem:64M@4096"), mem(64 << 20, 4096));
        assert_eq!(kind("mem:64m@4k"), mem(64 << 20, 4096));
        assert_eq!(kind("mem:1048576"), mem(1 << 20, 512));
        assert_eq!(kind("mem:2GiB"), mem(2 << 30, 512));
        assert_eq!(kind("mem:3gb"), mem(3 << 30, 512));
        assert_eq!(kind("mem:1T"), mem(1 << 40, 512));
        assert_eq!(kind("mem:512K"), mem(512 << 10, 512));
        assert_eq!(kind("mem:1024B@1024"), mem(1024, 1024));
        assert_eq!(kind("mem:64K@65536"), mem(64 << 10, 65536));
    }

    #[test]
    fn file_forms() {
        assert_eq!(
            kind("file:/tmp/a.img"),
            NodeKind::File {
                path: "/tmp/a.img".into(),
                sector_size: 512
            }
        );
        assert_eq!(
            kind("file@4096:rel/dir/b.img"),
            NodeKind::File {
                path: "rel/dir/b.img".into(),
                sector_size: 4096
            }
        );
        // At the top level the path runs to the end, whatever it holds.
        assert_eq!(
            kind("file:/x/a|b}:c{d"),
            NodeKind::File {
                path: "/x/a|b}:c{d".into(),
                sector_size: 512
            }
        );
    }

    #[test]
    fn memdiff_and_striped_nest() {
        let NodeKind::MemDiff(inner) = kind("memdiff:striped:128K:{mem:32M|mem:32M}") else {
            panic!()
        };
        assert_eq!(inner.span, 8..38);
        let NodeKind::Striped {
            chunk_bytes,
            members,
        } = inner.kind
        else {
            panic!()
        };
        assert_eq!(chunk_bytes, Some(128 << 10));
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].kind, mem(32 << 20, 512));
        assert_eq!(members[1].span, 30..37);

        // File paths end at '|' and '}' inside braces.
        let NodeKind::Striped {
            chunk_bytes,
            members,
        } = kind("striped:{file:/a b/c.img|memdiff:file@4096:d.img|mem:1M}")
        else {
            panic!()
        };
        assert_eq!(chunk_bytes, None);
        assert_eq!(
            members.iter().map(|m| m.kind.clone()).collect::<Vec<_>>(),
            vec![
                NodeKind::File {
                    path: "/a b/c.img".into(),
                    sector_size: 512
                },
                NodeKind::MemDiff(Box::new(SpecNode {
                    span: 33..48,
                    kind: NodeKind::File {
                        path: "d.img".into(),
                        sector_size: 4096
                    },
                })),
                mem(1 << 20, 512),
            ]
        );

        // Nested stripes.
        let NodeKind::Striped { members, .. } = kind("striped:4K:{striped:{mem:1M|mem:1M}|mem:2M}")
        else {
            panic!()
        };
        assert!(
            matches!(&members[0].kind, NodeKind::Striped { members, .. } if members.len() == 2)
        );
        assert_eq!(kind("memdiff:memdiff:mem:1M"), {
            let inner = SpecNode {
                span: 16..22,
                kind: mem(1 << 20, 512),
            };
            NodeKind::MemDiff(Box::new(SpecNode {
                span: 8..22,
                kind: NodeKind::MemDiff(Box::new(inner)),
            }))
        });
    }

    #[test]
    fn missing_brace_names_the_column() {
        let e = err("striped:128K:mem:1M");
        assert_eq!(e.column(), 14);
        assert_eq!(
            e.to_string(),
            "spec error at column 14 of 'striped:128K:mem:1M': expected '{' to open the member list, found 'm'"
        );
        assert_eq!(e.caret_diagram(), "  striped:128K:mem:1M\n               ^");
        let e = err("striped:128K:{mem:1M|mem:1M");
        assert_eq!(e.column(), 28);
        assert!(e.message().contains("expected '|' or '}'"), "{e}");
        assert!(e.message().contains("end of spec"), "{e}");
        let e = err("striped:128K:{mem:1M mem:1M}");
        assert_eq!(e.column(), 21);
        assert!(e.message().contains("after stripe member 0"), "{e}");
        let e = err("striped:128K{mem:1M}");
        assert_eq!(e.column(), 13);
        assert_eq!(e.message(), "expected ':' after the chunk size, found '{'");
    }

    #[test]
    fn empty_member_list() {
        let e = err("striped:64K:{}");
        assert_eq!(e.column(), 13);
        assert_eq!(e.span(), 12..14);
        assert!(e.message().contains("empty member list"), "{e}");
        let e = err("striped:{mem:1M|}");
        assert_eq!(e.column(), 17);
        assert!(e.message().contains("expected a disk kind"), "{e}");
        let e = err("striped:{|mem:1M}");
        assert_eq!(e.column(), 10);
    }

    #[test]
    fn unknown_kind() {
        let e = err("ram:64M");
        assert_eq!((e.column(), e.span()), (1, 0..3));
        assert_eq!(
            e.message(),
            "unknown disk kind 'ram': expected one of mem, file, memdiff, striped, crypt, delay, prwrap"
        );
        let e = err("memdiff:nvme:1");
        assert_eq!(e.column(), 9);
        let e = err("");
        assert_eq!(e.column(), 1);
        assert!(e.message().contains("found end of spec"), "{e}");
        let e = err(":64M");
        assert!(e.message().contains("expected a disk kind"), "{e}");
    }

    #[test]
    fn bad_sizes() {
        let e = err("mem:64X");
        assert_eq!((e.column(), e.span()), (5, 4..7));
        assert!(e.message().contains("unknown suffix 'X'"), "{e}");
        let e = err("mem:");
        assert!(e.message().contains("expected a disk size"), "{e}");
        let e = err("mem:M");
        assert!(e.message().contains("invalid disk size 'M'"), "{e}");
        let e = err("mem:1.5G");
        assert_eq!(e.span(), 4..8);
        let e = err("mem:99999999999999999999999");
        assert!(e.message().contains("too large"), "{e}");
        let e = err("mem:9000000T");
        assert!(e.message().contains("too large"), "{e}");
        let e = err("mem:0");
        assert!(e.message().contains("at least one sector"), "{e}");
        let e = err("mem64M");
        assert!(e.message().contains("unknown disk kind 'mem64M'"), "{e}");
        let e = err("mem=64M");
        assert_eq!(e.column(), 4);
        assert!(
            e.message().contains("expected ':' after 'mem', found '='"),
            "{e}"
        );
    }

    #[test]
    fn size_not_a_sector_multiple() {
        let e = err("mem:1000");
        assert_eq!((e.column(), e.span()), (5, 4..8));
        assert_eq!(
            e.message(),
            "disk size 1000 bytes is not a whole number of 512-byte sectors"
        );
        let e = err("mem:6K@4096");
        assert!(
            e.message()
                .contains("6144 bytes is not a whole number of 4096-byte"),
            "{e}"
        );
    }

    #[test]
    fn bad_sector_sizes() {
        for (spec, col) in [
            ("mem:1M@1000", 8),
            ("mem:1M@256", 8),
            ("mem:1M@128K", 8),
            ("mem:1M@99999999999", 8),
            ("file@520:x", 6),
            ("mem:1M@0", 8),
        ] {
            let e = err(spec);
            assert_eq!(e.column(), col, "{spec}: {e}");
            assert!(e.message().contains("sector size"), "{spec}: {e}");
        }
        let e = err("mem:1M@");
        assert!(e.message().contains("expected a sector size"), "{e}");
    }

    #[test]
    fn trailing_garbage() {
        let e = err("mem:64M extra");
        assert_eq!(e.column(), 8);
        assert!(
            e.message()
                .contains("unexpected ' ' after the end of the spec"),
            "{e}"
        );
        let e = err("striped:{mem:1M}}");
        assert_eq!(e.column(), 17);
        let e = err("mem:64M|mem:1M");
        assert_eq!(e.column(), 8);
        let e = err("memdiff:mem:1M@512:x");
        assert_eq!(e.column(), 19);
    }

    #[test]
    fn file_path_required() {
        let e = err("file:");
        assert!(
            e.message()
                .contains("expected a file path, found end of spec"),
            "{e}"
        );
        let e = err("striped:{file:|mem:1M}");
        assert_eq!(e.column(), 15);
        let e = err("file/x");
        assert!(
            e.message().contains("expected ':' before the file path"),
            "{e}"
        );
    }

    #[test]
    fn hostile_text_does_not_panic() {
        for spec in [
            "é",
            "mem:é",
            "mem:1Mé",
            "striped:{é}",
            "striped:é:{mem:1M}",
            "file@é:x",
            "striped:{{{{",
            "}}}}",
            "memdiff:",
            "striped:1:",
            "mem:1M@4K@4K",
            "\u{0}",
            "memdiff:memdiff:memdiff:",
            "striped:{mem:1M|",
            "mem:18446744073709551615",
        ] {
            let e = err(spec);
            let _ = (e.to_string(), e.caret_diagram());
            assert!(!e.to_string().contains('\n'));
        }
        // Nesting is bounded, so a hostile spec cannot overflow the stack.
        let deep = "memdiff:".repeat(MAX_NESTING - 1) + "mem:1M";
        assert!(parse(&deep).is_ok());
        let deep = "memdiff:".repeat(100_000) + "mem:1M";
        let e = err(&deep);
        assert_eq!(e.column(), MAX_NESTING * 8 + 1);
        assert!(e.message().contains("nests too deeply"), "{e}");
        let deep = "striped:{".repeat(100_000);
        assert!(err(&deep).message().contains("nests too deeply"));
    }

    #[test]
    fn caret_under_multibyte_text() {
        let e = err("memdiff:ünknown");
        assert_eq!(e.caret_diagram(), "  memdiff:ünknown\n          ^");
    }

    #[test]
    fn builds_every_form() {
        let d = build("mem:64M@4096").unwrap();
        assert_eq!(
            (d.kind(), d.sector_count(), d.sector_size()),
            ("ram", 16384, 4096)
        );
        let d = build("memdiff:striped:128K:{mem:32M|mem:32M}").unwrap();
        assert_eq!(
            (d.sector_count(), d.sector_size(), d.is_read_only()),
            (131072, 512, false)
        );
        let desc = d.describe();
        assert_eq!(desc.children.len(), 2);
        assert_eq!(desc.children[0].1.kind, "ram");
        let striped = &desc.children[1].1;
        assert_eq!(striped.kind, "striped");
        assert_eq!(striped.children.len(), 2);
        assert_eq!(striped.children[1].1.sector_count, 65536);

        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let path = f.path().display().to_string();
        let d = build(&format!("file@4096:{path}")).unwrap();
        assert_eq!(
            (d.kind(), d.sector_count(), d.sector_size()),
            ("file", 256, 4096)
        );
        let d = build(&format!("striped:64K:{{file:{path}|mem:1M}}")).unwrap();
        assert_eq!(d.sector_count(), 4096);
        let d = build(&format!("memdiff:file:{path}")).unwrap();
        assert_eq!(
            d.describe().children[1].1.details,
            vec![("path", path.clone())]
        );
    }

    #[test]
    fn build_errors_point_at_the_failing_disk() {
        let e = build("memdiff:striped:{mem:1M|mem:2M}").unwrap_err();
        assert_eq!((e.column(), e.span()), (9, 8..31));
        assert!(
            e.message()
                .starts_with("cannot build the striped disk 'striped:{mem:1M|mem:2M}': "),
            "{e}"
        );
        assert!(e.message().contains("member 1"), "{e}");
        let e = build("striped:1000:{mem:1M|mem:1M}").unwrap_err();
        assert!(
            e.message().starts_with("cannot build the striped disk: "),
            "{e}"
        );
        let e = build("striped:{mem:1M|file:/nonexistent/x.img}").unwrap_err();
        assert_eq!(e.column(), 17);
        assert!(e.message().contains("/nonexistent/x.img"), "{e}");
        assert!(!e.to_string().contains('\n'));
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1000).unwrap();
        let e = build(&format!("file:{}", f.path().display())).unwrap_err();
        assert!(
            e.message()
                .contains("not a whole number of 512-byte sectors"),
            "{e}"
        );
    }

    #[test]
    fn decorator_forms() {
        let n = parse("crypt:/tmp/k.bin:memdiff:mem:1M").unwrap();
        let NodeKind::Crypt { key_file, inner } = n.kind else {
            panic!("not crypt: {n:?}")
        };
        assert_eq!(key_file, PathBuf::from("/tmp/k.bin"));
        assert!(matches!(inner.kind, NodeKind::MemDiff(_)));
        let n = parse("delay:25:prwrap:mem:1M").unwrap();
        let NodeKind::Delay { millis, inner } = n.kind else {
            panic!("not delay: {n:?}")
        };
        assert_eq!(millis, 25);
        assert!(matches!(inner.kind, NodeKind::PrWrap(_)));
        let e = parse("delay:x:mem:1M").unwrap_err();
        assert_eq!(e.column(), 7);
        assert!(e.message().contains("milliseconds"), "{e}");
        let e = parse("delay:99999999999999999999999:mem:1M").unwrap_err();
        assert!(e.message().contains("too large"), "{e}");
        let e = parse("crypt::mem:1M").unwrap_err();
        assert!(e.message().contains("key file path"), "{e}");
        let e = parse("crypt:key.bin").unwrap_err();
        assert!(e.message().contains("after the key file path"), "{e}");
        let e = parse("prwrap").unwrap_err();
        assert!(e.message().contains("after 'prwrap'"), "{e}");
    }

    #[test]
    fn builds_decorators() {
        let d = build("prwrap:delay:0:mem:1M").unwrap();
        assert_eq!(d.kind(), "prwrap");
        assert!(d.persistent_reservations().is_some());
        assert_eq!(d.describe().children[0].1.kind, "delay");

        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.bin");
        let key_bytes: Vec<u8> = (0..64u8).collect();
        std::fs::write(&key, &key_bytes).unwrap();
        let d = build(&format!("crypt:{}:mem:1M@4096", key.display())).unwrap();
        assert_eq!((d.kind(), d.sector_size()), ("crypt", 4096));

        std::fs::write(&key, &key_bytes[..32]).unwrap();
        let e = build(&format!("crypt:{}:mem:1M", key.display())).unwrap_err();
        assert!(e.message().contains("64"), "{e}");
        std::fs::write(&key, vec![7u8; 1 << 20]).unwrap();
        let e = build(&format!("crypt:{}:mem:1M", key.display())).unwrap_err();
        assert!(e.message().contains("more than 64 bytes"), "{e}");
        // An endless key file is refused, not read until memory runs out.
        let e = build("crypt:/dev/zero:mem:1M").unwrap_err();
        assert!(e.message().contains("more than 64 bytes"), "{e}");
        assert!(!e.to_string().contains('\n'));
        let missing = dir.path().join("missing.bin");
        let e = build(&format!("crypt:{}:mem:1M", missing.display())).unwrap_err();
        assert!(e.message().contains("cannot read the key file"), "{e}");
    }

    #[test]
    fn grammar_documents_every_kind() {
        for name in kind_names() {
            assert!(
                GRAMMAR.contains(&format!("\n  {name}")),
                "{name} is not documented"
            );
        }
    }
}
