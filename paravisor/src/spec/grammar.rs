//! The spec grammar: spec text to a [`Recipe`], with no I/O.
//!
//! [`GRAMMAR`] is the language. Every kind of disk is one row of a table of
//! prefixes (`KINDS`): the row names the prefix and the function that parses
//! what follows it, so a new kind is a new row, a new [`Recipe`] variant and
//! a new arm in the builder.
//!
//! Errors name the byte column of the spec where parsing failed and what
//! was expected there ([`SpecError`]). The parser only reads the text: it
//! opens nothing, so anything that wants a recipe can use it.

use super::error::SpecError;
use super::recipe::{DEFAULT_SECTOR_SIZE, MAX_NESTING, Recipe, RecipePath};
use core::ops::Range;

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

/// Where each part of a parsed recipe was written: a tree shaped like the
/// recipe, so an error about a part (a [`RecipePath`]) can point at its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanTree {
    /// The bytes of the spec the part was parsed from.
    pub span: Range<usize>,
    /// Where the part's children were written, in [`Recipe::children`]
    /// order.
    pub children: Vec<SpanTree>,
}

impl SpanTree {
    /// Where the part at `path` was written, if the recipe has that part.
    pub fn get(&self, path: &RecipePath) -> Option<Range<usize>> {
        path.steps()
            .iter()
            .try_fold(self, |tree, &i| tree.children.get(i))
            .map(|tree| tree.span.clone())
    }
}

/// What a kind's parser returns: the recipe and where its children were
/// written.
type KindParse = Result<(Recipe, Vec<SpanTree>), SpecError>;

/// One row of the prefix table: a kind's name and the parser for what
/// follows the name.
struct Kind {
    name: &'static str,
    parse: fn(&mut Parser<'_>) -> KindParse,
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

/// Parses `spec` into a recipe.
pub fn parse(spec: &str) -> Result<Recipe, SpecError> {
    parse_with_spans(spec).map(|(recipe, _)| recipe)
}

/// Parses `spec` into a recipe and where each of its parts was written.
pub fn parse_with_spans(spec: &str) -> Result<(Recipe, SpanTree), SpecError> {
    let mut p = Parser {
        spec,
        pos: 0,
        depth: 0,
        nesting: 0,
    };
    let parsed = p.spec_node()?;
    if p.pos < spec.len() {
        return Err(p.error_here(format!(
            "unexpected {} after the end of the spec: expected nothing more",
            p.found()
        )));
    }
    Ok(parsed)
}

struct Parser<'s> {
    spec: &'s str,
    pos: usize,
    /// How many `{` deep the parser is; file paths end at `|` or `}` inside.
    depth: usize,
    /// How many specs deep the parser is, bounded by [`MAX_NESTING`].
    nesting: usize,
}

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

    /// One spec: a kind and what follows it.
    fn spec_node(&mut self) -> Result<(Recipe, SpanTree), SpecError> {
        let start = self.pos;
        if self.nesting == MAX_NESTING {
            return Err(self.error_here(format!(
                "the spec nests too deeply: expected at most {MAX_NESTING} levels of disks"
            )));
        }
        self.nesting += 1;
        let parsed = self.kind_and_arguments();
        self.nesting -= 1;
        let (recipe, children) = parsed?;
        Ok((
            recipe,
            SpanTree {
                span: start..self.pos,
                children,
            },
        ))
    }

    fn kind_and_arguments(&mut self) -> KindParse {
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
        (kind.parse)(self)
    }

    /// `:SPEC` after a kind that wraps one disk: the wrapped disk's recipe
    /// and where it was written.
    fn wrapped(&mut self, after: &str) -> Result<(Box<Recipe>, Vec<SpanTree>), SpecError> {
        self.expect(':', after)?;
        let (recipe, spans) = self.spec_node()?;
        Ok((Box::new(recipe), vec![spans]))
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

    /// `@SECTOR`, or the default sector size when there is no `@`.
    fn optional_sector_size(&mut self) -> Result<u32, SpecError> {
        if !self.eat('@') {
            return Ok(DEFAULT_SECTOR_SIZE);
        }
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
fn parse_mem(p: &mut Parser<'_>) -> KindParse {
    p.expect(':', "after 'mem'")?;
    let (len_bytes, span) = p.size("disk size")?;
    let sector_size = p.optional_sector_size()?;
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
    let mem = Recipe::Mem {
        len_bytes,
        sector_size,
    };
    Ok((mem, Vec::new()))
}

/// `file[@SECTOR]:PATH`
fn parse_file(p: &mut Parser<'_>) -> KindParse {
    let sector_size = p.optional_sector_size()?;
    p.expect(':', "before the file path")?;
    let nested = p.depth > 0;
    let path = p.take_while(|c| !(nested && (c == '|' || c == '}')));
    if path.is_empty() {
        return Err(p.error_here(format!("expected a file path, found {}", p.found())));
    }
    let file = Recipe::File {
        path: p.spec[path].to_owned(),
        sector_size,
    };
    Ok((file, Vec::new()))
}

/// `memdiff:SPEC`
fn parse_memdiff(p: &mut Parser<'_>) -> KindParse {
    let (lower, spans) = p.wrapped("after 'memdiff'")?;
    Ok((Recipe::MemDiff { lower }, spans))
}

/// `striped:[CHUNK:]{SPEC|SPEC|…}`
fn parse_striped(p: &mut Parser<'_>) -> KindParse {
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
    let (mut members, mut spans) = (Vec::new(), Vec::new());
    loop {
        let (member, span) = p.spec_node()?;
        members.push(member);
        spans.push(span);
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
    let striped = Recipe::Striped {
        chunk_bytes,
        members,
    };
    Ok((striped, spans))
}

/// `crypt:KEYFILE:SPEC`
fn parse_crypt(p: &mut Parser<'_>) -> KindParse {
    p.expect(':', "after 'crypt'")?;
    let path = p.take_while(|c| c != ':');
    if path.is_empty() {
        return Err(p.error_here(format!("expected a key file path, found {}", p.found())));
    }
    let key_file = p.spec[path].to_owned();
    let (inner, spans) = p.wrapped("after the key file path")?;
    Ok((Recipe::Crypt { key_file, inner }, spans))
}

/// `delay:MILLIS:SPEC`
fn parse_delay(p: &mut Parser<'_>) -> KindParse {
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
    let (inner, spans) = p.wrapped("after the delay")?;
    Ok((Recipe::Delay { millis, inner }, spans))
}

/// `prwrap:SPEC`
fn parse_prwrap(p: &mut Parser<'_>) -> KindParse {
    let (inner, spans) = p.wrapped("after 'prwrap'")?;
    Ok((Recipe::PrWrap { inner }, spans))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::recipe::tests::mem;

    /// Parses `spec`, which must parse as a whole.
    fn kind(spec: &str) -> Recipe {
        match parse_with_spans(spec) {
            Ok((recipe, spans)) => {
                assert_eq!(spans.span, 0..spec.len());
                recipe
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
            Recipe::File {
                path: "/tmp/a.img".into(),
                sector_size: 512
            }
        );
        assert_eq!(
            kind("file@4096:rel/dir/b.img"),
            Recipe::File {
                path: "rel/dir/b.img".into(),
                sector_size: 4096
            }
        );
        // At the top level the path runs to the end, whatever it holds.
        assert_eq!(
            kind("file:/x/a|b}:c{d"),
            Recipe::File {
                path: "/x/a|b}:c{d".into(),
                sector_size: 512
            }
        );
    }

    #[test]
    fn memdiff_and_striped_nest() {
        let spec = "memdiff:striped:128K:{mem:32M|mem:32M}";
        let (recipe, spans) = parse_with_spans(spec).unwrap();
        let Recipe::MemDiff { lower } = recipe else {
            panic!("not memdiff: {recipe:?}")
        };
        assert_eq!(spans.get(&RecipePath::new(vec![0])), Some(8..38));
        let Recipe::Striped {
            chunk_bytes,
            members,
        } = *lower
        else {
            panic!()
        };
        assert_eq!(chunk_bytes, Some(128 << 10));
        assert_eq!(members, vec![mem(32 << 20, 512), mem(32 << 20, 512)]);
        assert_eq!(spans.get(&RecipePath::new(vec![0, 1])), Some(30..37));
        assert_eq!(spans.get(&RecipePath::new(vec![0, 2])), None);

        // File paths end at '|' and '}' inside braces.
        let spec = "striped:{file:/a b/c.img|memdiff:file@4096:d.img|mem:1M}";
        let (recipe, spans) = parse_with_spans(spec).unwrap();
        let Recipe::Striped {
            chunk_bytes,
            members,
        } = recipe
        else {
            panic!()
        };
        assert_eq!(chunk_bytes, None);
        assert_eq!(
            members,
            vec![
                Recipe::File {
                    path: "/a b/c.img".into(),
                    sector_size: 512
                },
                Recipe::MemDiff {
                    lower: Box::new(Recipe::File {
                        path: "d.img".into(),
                        sector_size: 4096
                    }),
                },
                mem(1 << 20, 512),
            ]
        );
        assert_eq!(spans.get(&RecipePath::new(vec![1, 0])), Some(33..48));

        // Nested stripes.
        let Recipe::Striped { members, .. } = kind("striped:4K:{striped:{mem:1M|mem:1M}|mem:2M}")
        else {
            panic!()
        };
        assert!(matches!(&members[0], Recipe::Striped { members, .. } if members.len() == 2));
        let (recipe, spans) = parse_with_spans("memdiff:memdiff:mem:1M").unwrap();
        let inner = Recipe::MemDiff {
            lower: Box::new(mem(1 << 20, 512)),
        };
        assert_eq!(
            recipe,
            Recipe::MemDiff {
                lower: Box::new(inner)
            }
        );
        let at = |steps: &[usize]| spans.get(&RecipePath::new(steps.to_vec()));
        assert_eq!((at(&[0]), at(&[0, 0])), (Some(8..22), Some(16..22)));
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
    fn decorator_forms() {
        let n = parse("crypt:/tmp/k.bin:memdiff:mem:1M").unwrap();
        let Recipe::Crypt { key_file, inner } = n else {
            panic!("not crypt: {n:?}")
        };
        assert_eq!(key_file, "/tmp/k.bin");
        assert!(matches!(*inner, Recipe::MemDiff { .. }));
        let n = parse("delay:25:prwrap:mem:1M").unwrap();
        let Recipe::Delay { millis, inner } = n else {
            panic!("not delay: {n:?}")
        };
        assert_eq!(millis, 25);
        assert!(matches!(*inner, Recipe::PrWrap { .. }));
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
    fn grammar_documents_every_kind() {
        for name in kind_names() {
            assert!(
                GRAMMAR.contains(&format!("\n  {name}")),
                "{name} is not documented"
            );
        }
    }

    #[test]
    fn recipe_kinds_are_the_grammar_names() {
        let one_of_each = [
            "mem:1M",
            "file:a",
            "memdiff:mem:1M",
            "striped:{mem:1M}",
            "crypt:k:mem:1M",
            "delay:1:mem:1M",
            "prwrap:mem:1M",
        ];
        let kinds: Vec<&str> = one_of_each.iter().map(|s| kind(s).kind()).collect();
        assert_eq!(kinds, kind_names().collect::<Vec<_>>());
        for (spec, kind) in one_of_each.iter().zip(kinds) {
            assert!(spec.starts_with(&format!("{kind}:")), "{spec}");
        }
    }

    #[test]
    fn recipes_print_back_to_specs_that_parse_the_same() {
        for (spec, printed) in [
            ("mem:64M", "mem:64M"),
            ("mem:64m@4k", "mem:64M@4096"),
            ("mem:1048576", "mem:1M"),
            ("mem:2GiB@512", "mem:2G"),
            ("mem:1000K", "mem:1000K"),
            ("mem:1536M", "mem:1536M"),
            ("mem:1536B", "mem:1536"),
            ("file:/x/a|b}:c{d", "file:/x/a|b}:c{d"),
            ("file@4096:rel/b.img", "file@4096:rel/b.img"),
            ("file@512:a", "file:a"),
            (
                "striped:{file:/a b/c.img|memdiff:file@4096:d.img|mem:1M}",
                "striped:{file:/a b/c.img|memdiff:file@4096:d.img|mem:1M}",
            ),
            (
                "striped:131072:{mem:32M|mem:32M}",
                "striped:128K:{mem:32M|mem:32M}",
            ),
            ("delay:0:striped:1:{mem:512}", "delay:0:striped:1:{mem:512}"),
            (
                "crypt:k|}.bin:striped:{mem:1M}",
                "crypt:k|}.bin:striped:{mem:1M}",
            ),
        ] {
            let recipe = parse(spec).unwrap();
            assert_eq!(recipe.to_string(), printed, "{spec}");
            assert_eq!(parse(printed).unwrap(), recipe, "{spec}");
        }
        // The examples of the help text are already in printed form.
        let examples = GRAMMAR.lines().skip_while(|l| !l.contains("Examples:"));
        let examples: Vec<&str> = examples.skip(1).map(str::trim).collect();
        assert_eq!(examples.len(), 8);
        for spec in examples {
            assert_eq!(kind(spec).to_string(), spec);
        }
    }

    /// Checks that the text of every part of `recipe` (at `path`) parses
    /// alone to that part.
    fn assert_spans_cover_parts(spec: &str, recipe: &Recipe, spans: &SpanTree, path: Vec<usize>) {
        let at = RecipePath::new(path.clone());
        let text = &spec[spans.get(&at).unwrap()];
        assert_eq!(
            parse(text).as_ref(),
            Ok(recipe.part(&at).unwrap()),
            "{spec}"
        );
        for i in 0..recipe.part(&at).unwrap().children().len() {
            let mut child = path.clone();
            child.push(i);
            assert_spans_cover_parts(spec, recipe, spans, child);
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn sector_size() -> impl Strategy<Value = u32> {
            prop::sample::select(vec![512u32, 1024, 2048, 4096, 8192, 65536])
        }

        /// Any count, or a round one (which prints with a suffix).
        fn count(max: u64) -> impl Strategy<Value = u64> {
            prop_oneof![1..=max, (1u64..=1024, 0u32..=21).prop_map(|(n, k)| n << k)]
        }

        /// A path the grammar can hold anywhere: no ':', '|' or '}'.
        fn path() -> impl Strategy<Value = String> {
            "[A-Za-z0-9é_./ @{-]{1,16}"
        }

        fn recipe() -> impl Strategy<Value = Recipe> {
            let leaf = prop_oneof![
                (count(1 << 32), sector_size()).prop_map(|(sectors, sector_size)| {
                    Recipe::Mem {
                        len_bytes: sectors * u64::from(sector_size),
                        sector_size,
                    }
                }),
                (path(), sector_size())
                    .prop_map(|(path, sector_size)| Recipe::File { path, sector_size }),
            ];
            leaf.prop_recursive(5, 24, 4, |inner| {
                let chunk = prop::option::of(count(u64::from(u32::MAX)));
                prop_oneof![
                    inner
                        .clone()
                        .prop_map(|r| Recipe::MemDiff { lower: Box::new(r) }),
                    (chunk, prop::collection::vec(inner.clone(), 1..4)).prop_map(
                        |(chunk, members)| Recipe::Striped {
                            chunk_bytes: chunk.map(|c| u32::try_from(c).unwrap()),
                            members,
                        }
                    ),
                    (path(), inner.clone()).prop_map(|(key_file, r)| Recipe::Crypt {
                        key_file,
                        inner: Box::new(r),
                    }),
                    (any::<u64>(), inner.clone()).prop_map(|(millis, r)| Recipe::Delay {
                        millis,
                        inner: Box::new(r),
                    }),
                    inner.prop_map(|r| Recipe::PrWrap { inner: Box::new(r) }),
                ]
            })
        }

        /// Pieces of the grammar, and a few characters it does not use.
        fn piece() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "mem:", "file:", "memdiff:", "striped:", "crypt:", "delay:", "prwrap:", "{", "}",
                "|", "@", ":", "1M", "4096", "64K", "5", "k.bin", "a", "0", "é", " ",
            ])
        }

        /// Specs made of the grammar's pieces, and printed recipes with one
        /// piece inserted or one character removed: most fail, close to
        /// valid text.
        fn spec_text() -> impl Strategy<Value = String> {
            let pieces = prop::collection::vec(piece(), 0..14).prop_map(|p| p.concat());
            let edited = (
                recipe(),
                any::<prop::sample::Index>(),
                piece(),
                any::<bool>(),
            )
                .prop_map(|(recipe, at, piece, remove)| {
                    let mut spec = recipe.to_string();
                    let starts: Vec<usize> = spec
                        .char_indices()
                        .map(|(i, _)| i)
                        .chain([spec.len()])
                        .collect();
                    let i = starts[at.index(starts.len())];
                    if remove && i < spec.len() {
                        spec.remove(i);
                    } else {
                        spec.insert_str(i, piece);
                    }
                    spec
                });
            prop_oneof![pieces, edited]
        }

        proptest! {
            #[test]
            fn printed_recipes_parse_back(recipe in recipe()) {
                let spec = recipe.to_string();
                let parsed = parse_with_spans(&spec);
                let Ok((parsed, spans)) = parsed else {
                    return Err(TestCaseError::fail(format!("{parsed:?}")));
                };
                prop_assert_eq!(&parsed, &recipe);
                assert_spans_cover_parts(&spec, &recipe, &spans, Vec::new());
            }

            #[test]
            fn any_spec_parses_or_says_where_it_fails(spec in spec_text()) {
                match parse_with_spans(&spec) {
                    Ok((recipe, spans)) => {
                        prop_assert_eq!(spans.span.clone(), 0..spec.len());
                        prop_assert_eq!(parse(&recipe.to_string()), Ok(recipe.clone()));
                        assert_spans_cover_parts(&spec, &recipe, &spans, Vec::new());
                    }
                    Err(e) => {
                        let span = e.span();
                        prop_assert!(span.start <= span.end && span.end <= spec.len(), "{}", e);
                        prop_assert!(!e.to_string().contains('\n'));
                        prop_assert_eq!(e.caret_diagram().lines().count(), 2);
                    }
                }
            }
        }
    }
}
