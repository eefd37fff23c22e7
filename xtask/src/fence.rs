//! `cargo xtask ci`'s `fence` step: `unsafe` stays inside `parastor-sys`.
//!
//! The workspace forbids `unsafe_code`, but that protects a crate only if
//! its manifest inherits the workspace's lints, and only the one crate that
//! needs `unsafe` (`paravisor/sys`) may have its own lint table. So:
//!
//! - every workspace member except `paravisor/sys` has `[lints]
//!   workspace = true`;
//! - `paravisor/sys` denies `unsafe_code` and the unsafe-hygiene lints, and
//!   carries every other workspace lint with the workspace's level;
//! - in the sources (every `.rs` file of the repository outside `target`
//!   directories), the keyword `unsafe` and `allow`/`expect`/`warn` of
//!   `unsafe_code` appear only under `paravisor/sys/src/`, comments and
//!   string literals aside. The one exception is [`EXCEPTIONS`].
//!
//! The checks read text with small purpose-made scanners (no TOML or Rust
//! parser dependency); the unit tests below pin what they accept.

use crate::util::{self, Error, Result};
use std::fs;
use std::path::Path;

/// The crate allowed to use `unsafe`, relative to the workspace root.
const SYS_CRATE: &str = "paravisor/sys";

/// Where `unsafe` may appear: the sources of [`SYS_CRATE`].
const SYS_SOURCES: &str = "paravisor/sys/src/";

/// Lints `paravisor/sys` must set to `deny` (table, lint), on top of the
/// workspace's lints it carries over.
const SYS_REQUIRED: &[(&str, &str)] = &[
    ("lints.rust", "unsafe_code"),
    ("lints.rust", "unsafe_op_in_unsafe_fn"),
    ("lints.clippy", "undocumented_unsafe_blocks"),
    ("lints.clippy", "multiple_unsafe_ops_per_block"),
    ("lints.clippy", "missing_safety_doc"),
];

/// Files outside [`SYS_SOURCES`] that may use `unsafe` in one fixed form,
/// with the reason. Anything else `unsafe` in them is still refused.
const EXCEPTIONS: &[Exception] = &[Exception {
    path: "xtask/nostd-gate/src/main.rs",
    form: "#[unsafe(no_mangle)]",
    reason: "the no_std gate binary (a separate workspace) must export its \
             entry point, and `no_mangle` counts as unsafe",
}];

/// A narrow permission for `unsafe` outside `parastor-sys`.
struct Exception {
    /// The file, relative to the workspace root.
    path: &'static str,
    /// The only unsafe form allowed there: `#[unsafe(no_mangle)]` (the
    /// `allow(unsafe_code)` it needs is then accepted too).
    form: &'static str,
    /// Why, for the docs and for whoever reads this list.
    reason: &'static str,
}

/// Runs the step over the workspace.
pub(crate) fn check() -> Result<()> {
    let root = util::workspace_root();
    let mut problems = Vec::new();

    let workspace_manifest = read(&root.join("Cargo.toml"))?;
    let members = workspace_members(&workspace_manifest);
    if !members.iter().any(|m| m == SYS_CRATE) {
        problems.push(format!(
            "Cargo.toml: `{SYS_CRATE}` is not a workspace member"
        ));
    }
    for member in &members {
        let path = format!("{member}/Cargo.toml");
        let manifest = read(&root.join(&path))?;
        if member == SYS_CRATE {
            problems.extend(check_sys_manifest(&path, &manifest, &workspace_manifest));
        } else if !inherits_workspace_lints(&manifest) {
            problems.push(format!(
                "{path}: needs `[lints]` with `workspace = true` (only `{SYS_CRATE}` may have \
                 its own lint table, so that every other crate forbids `unsafe_code`)"
            ));
        }
    }

    let mut files = Vec::new();
    rust_files(&root, &root, &mut files)?;
    for rel in &files {
        let text = read(&root.join(rel))?;
        problems.extend(check_source(rel, &text));
    }

    if problems.is_empty() {
        println!(
            "fence: {} manifests and {} Rust files checked; `unsafe` only under {SYS_SOURCES}",
            members.len(),
            files.len()
        );
        for exception in EXCEPTIONS {
            println!(
                "fence: exception: `{}` in {}: {}",
                exception.form, exception.path, exception.reason
            );
        }
        Ok(())
    } else {
        Err(Error::new(format!(
            "the unsafe fence is broken:\n  {}",
            problems.join("\n  ")
        )))
    }
}

/// Reads a file, naming it in the error.
fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map_err(|err| Error::new(format!("cannot read {}: {err}", path.display())))
}

/// Every `.rs` file under `dir`, as paths relative to `root` with `/`
/// separators, skipping `target` directories and hidden ones.
fn rust_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries = fs::read_dir(dir)
        .map_err(|err| Error::new(format!("cannot list {}: {err}", dir.display())))?;
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(root, &path, out)?;
            }
        } else if name.ends_with(".rs") {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}

/// The `members` of the root manifest's `[workspace]` table.
fn workspace_members(manifest: &str) -> Vec<String> {
    let mut members = Vec::new();
    let mut table = String::new();
    let mut in_members = false;
    for line in manifest.lines() {
        let line = strip_toml_comment(line).trim();
        if !in_members {
            if let Some(header) = table_header(line) {
                table = header;
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if table != "workspace" || key.trim() != "members" {
                continue;
            }
            let value = value.trim();
            let value = value.strip_prefix('[').unwrap_or(value);
            in_members = !collect_strings(value, &mut members);
        } else {
            in_members = !collect_strings(line, &mut members);
        }
    }
    members
}

/// Appends the double-quoted strings of one line of a TOML array to `out`;
/// returns whether the line closes the array.
fn collect_strings(line: &str, out: &mut Vec<String>) -> bool {
    let mut rest = line;
    while let Some(start) = rest.find(['"', ']']) {
        if rest[start..].starts_with(']') {
            return true;
        }
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else {
            return false;
        };
        out.push(after[..end].to_owned());
        rest = &after[end + 1..];
    }
    false
}

/// A line's text before a `#` comment (one outside a basic string).
fn strip_toml_comment(line: &str) -> &str {
    let mut in_string = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '#' if !in_string => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The name of a `[table]` header line, without brackets and spaces.
fn table_header(line: &str) -> Option<String> {
    let inner = line.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let inner = inner.strip_suffix(']').unwrap_or(inner);
    Some(
        inner
            .split('.')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// The `key = value` pairs of a manifest as (table, key, value), values as
/// written (comments stripped, spaces trimmed). Dotted keys are joined to
/// the table: `lints.workspace = true` at the top gives ("lints",
/// "workspace", "true").
fn manifest_entries(manifest: &str) -> Vec<(String, String, String)> {
    let mut entries = Vec::new();
    let mut table = String::new();
    for line in manifest.lines() {
        let line = strip_toml_comment(line).trim();
        if let Some(header) = table_header(line) {
            table = header;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key: Vec<_> = key.split('.').map(|k| k.trim().trim_matches('"')).collect();
        let (last, prefix) = key.split_last().unwrap_or((&"", &[]));
        let full_table = std::iter::once(table.as_str())
            .chain(prefix.iter().copied())
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(".");
        entries.push((full_table, (*last).to_owned(), value.trim().to_owned()));
    }
    entries
}

/// Whether a member manifest inherits the workspace's lints.
fn inherits_workspace_lints(manifest: &str) -> bool {
    manifest_entries(manifest)
        .iter()
        .any(|(table, key, value)| {
            let value: String = value.split_whitespace().collect();
            (table == "lints" && key == "workspace" && value == "true")
                || (table.is_empty() && key == "lints" && value == "{workspace=true}")
        })
}

/// The lint level a lint entry's value sets: `"deny"` or `{ level =
/// "deny", … }` both give `deny`.
fn lint_level(value: &str) -> Option<String> {
    let value = value.trim();
    let level = if value.starts_with('{') {
        let start = value.find("level")?;
        let rest = value[start + "level".len()..]
            .trim_start()
            .strip_prefix('=')?;
        rest.trim_start()
    } else {
        value
    };
    let level = level.strip_prefix('"')?;
    Some(level[..level.find('"')?].to_owned())
}

/// `paravisor/sys`'s lint table: the unsafe-hygiene lints at `deny`, and
/// every workspace lint carried over at the workspace's level (with
/// `unsafe_code` at `deny` instead of `forbid`).
fn check_sys_manifest(path: &str, manifest: &str, workspace_manifest: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let entries = manifest_entries(manifest);
    let level_of = |table: &str, lint: &str| {
        entries
            .iter()
            .find(|(t, k, _)| t == table && k == lint)
            .and_then(|(_, _, v)| lint_level(v))
    };
    if inherits_workspace_lints(manifest) {
        problems.push(format!(
            "{path}: must not inherit the workspace's lints (their `forbid(unsafe_code)` \
             cannot be relaxed); it needs its own table"
        ));
    }
    for (table, lint) in SYS_REQUIRED {
        if level_of(table, lint).as_deref() != Some("deny") {
            problems.push(format!("{path}: `[{table}]` must set `{lint} = \"deny\"`"));
        }
    }
    for (table, lint, value) in manifest_entries(workspace_manifest) {
        let Some(table) = table.strip_prefix("workspace.") else {
            continue;
        };
        if !table.starts_with("lints.") || lint == "unsafe_code" {
            continue;
        }
        let want = lint_level(&value);
        if want.is_some() && level_of(table, &lint) != want {
            problems.push(format!(
                "{path}: `[{table}]` must carry the workspace's `{lint} = {value}`"
            ));
        }
    }
    problems
}

/// Problems with one source file: `unsafe`, or a lint attribute allowing
/// `unsafe_code`, outside [`SYS_SOURCES`] (and not an [`EXCEPTIONS`] form).
fn check_source(rel: &str, text: &str) -> Vec<String> {
    if rel.starts_with(SYS_SOURCES) {
        return Vec::new();
    }
    let exception = EXCEPTIONS.iter().find(|e| e.path == rel);
    let code = strip_comments_and_literals(text);
    let mut problems = Vec::new();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    for (start, word) in identifiers(&code) {
        let permitted = |form: &str| exception.is_some_and(|e| e.form == form);
        match word {
            "unsafe" => {
                let after: String = code[start..]
                    .chars()
                    .take(40)
                    .filter(|c| !c.is_whitespace())
                    .collect();
                let before = code[..start].trim_end();
                let is_no_mangle = after.starts_with("unsafe(no_mangle)") && before.ends_with("#[");
                if !(is_no_mangle && permitted("#[unsafe(no_mangle)]")) {
                    problems.push(format!(
                        "{rel}:{}: `unsafe` outside {SYS_SOURCES} (only parastor-sys may \
                         use unsafe; put the operation behind a safe type there)",
                        line_of(start)
                    ));
                }
            }
            "unsafe_code" => {
                let level = enclosing_call(&code, start);
                if matches!(level, Some("allow" | "expect" | "warn")) && exception.is_none() {
                    problems.push(format!(
                        "{rel}:{}: `{}(unsafe_code)` outside {SYS_SOURCES}",
                        line_of(start),
                        level.unwrap_or_default()
                    ));
                }
            }
            _ => {}
        }
    }
    problems
}

/// The identifiers of `code` with their byte offsets (raw identifiers
/// `r#x` count as `x`; they cannot be keywords anyway).
fn identifiers(code: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push((start, &code[start..i]));
        } else if c.is_ascii_digit() {
            // A number with a suffix (`1u8`) is not an identifier.
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The name before the innermost unclosed `(` that encloses offset `at`:
/// `allow` for the `unsafe_code` in `#![allow(dead_code, unsafe_code)]`.
fn enclosing_call(code: &str, at: usize) -> Option<&str> {
    let mut depth = 0usize;
    for (i, c) in code[..at].char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' if depth == 0 => {
                let before = code[..i].trim_end();
                let start = before
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(0, |p| p + 1);
                return Some(&before[start..]);
            }
            '(' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// `text` with every comment, string literal and character literal
/// replaced by spaces (newlines kept, so offsets and line numbers stay).
/// Handles nested block comments, raw strings (`r#"…"#`, `br"…"`, `c"…"`)
/// and tells lifetimes (`'a`) from character literals (`'a'`).
fn strip_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let prev_is_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if let Some(len) = raw_string_len(&chars[i..], prev_is_ident) {
            for &c in &chars[i..i + len] {
                blank(&mut out, c);
            }
            i += len;
        } else if c == '"' {
            // A plain string (its `b`/`c` prefix, if any, is left as an
            // identifier character, which is harmless).
            blank(&mut out, c);
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
                blank(&mut out, chars[i]);
                i += 1;
            }
            if i < chars.len() {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '\'' {
            // 'x', '\n', '\u{..}', '\'' are literals; 'a (no closing quote
            // right after one character) is a lifetime or label.
            let literal_len = if next == Some('\\') {
                // Skip the escaped character itself: `'\''` ends at the
                // second quote after the backslash.
                chars
                    .get(i + 3..)
                    .and_then(|rest| rest.iter().position(|&c| c == '\''))
                    .map(|p| p + 4)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(3)
            } else {
                None
            };
            let len = literal_len.unwrap_or(1);
            for &c in &chars[i..(i + len).min(chars.len())] {
                blank(&mut out, c);
            }
            i += len;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The length of a raw string literal starting at `chars[0]` (`r"…"`,
/// `r#"…"#`, with an optional `b` or `c` prefix), or `None` if none starts
/// there. `prev_is_ident`: the character before is part of an identifier,
/// so an `r` here is not a prefix.
fn raw_string_len(chars: &[char], prev_is_ident: bool) -> Option<usize> {
    if prev_is_ident {
        return None;
    }
    let mut i = usize::from(matches!(chars.first(), Some('b' | 'c')));
    if chars.get(i) != Some(&'r') {
        return None;
    }
    i += 1;
    let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
    i += hashes;
    if chars.get(i) != Some(&'"') {
        return None;
    }
    i += 1;
    while i < chars.len() {
        if chars[i] == '"'
            && chars[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return Some(i + 1 + hashes);
        }
        i += 1;
    }
    Some(chars.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample source with `UNSAFE` standing for the keyword, so this
    /// file's own text never contains the code it tests for.
    fn sample(text: &str) -> String {
        text.replace("UNSAFE", concat!("un", "safe"))
    }

    #[test]
    fn unsafe_in_code_is_found_and_in_comments_and_strings_is_not() {
        let source = sample(
            r####"
//! Crate docs may say UNSAFE, and `UNSAFE { }` in backticks.
/* a block comment: UNSAFE /* nested: UNSAFE */ still UNSAFE */
fn f<'a>(x: &'a str) -> char {
    let s = "UNSAFE { in a string }";
    let r = r#"UNSAFE "quoted" inside"#;
    let b = br"UNSAFE";
    let q = '"'; // a quote char must not open a string: UNSAFE
    let e = '\''; let u = '\u{22}';
    let not_UNSAFE = unsafe_fn_name();
    'outer: loop { break 'outer; }
    UNSAFE { core::hint::unreachable_unchecked() }
}
UNSAFE impl Send for X {}
"####,
        );
        let problems = check_source("core/src/x.rs", &source);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems[0].starts_with("core/src/x.rs:12: `unsafe` outside"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].starts_with("core/src/x.rs:14: "),
            "{}",
            problems[1]
        );
    }

    #[test]
    fn allowing_unsafe_code_is_refused_but_forbidding_it_is_fine() {
        let source = "#![forbid(unsafe_code)]\n#![deny(missing_docs, unsafe_code)]\n\
                      #![allow(dead_code, unsafe_code)]\n#[expect(unsafe_code)]\nfn f() {}\n\
                      #[cfg_attr(test, warn(unsafe_code))]\nfn g() {}\n";
        let problems = check_source("hw/src/lib.rs", source);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[0].contains(":3: `allow(unsafe_code)`"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].contains(":4: `expect(unsafe_code)`"),
            "{}",
            problems[1]
        );
        assert!(
            problems[2].contains(":6: `warn(unsafe_code)`"),
            "{}",
            problems[2]
        );
    }

    #[test]
    fn the_sys_sources_may_use_unsafe_and_its_tests_may_not() {
        let source = sample("#![allow(unsafe_code)]\nUNSAFE fn f() {}\n");
        assert!(check_source("paravisor/sys/src/mmap.rs", &source).is_empty());
        assert_eq!(
            check_source("paravisor/sys/tests/region.rs", &source).len(),
            2
        );
        assert_eq!(check_source("paravisor/sysx/src/lib.rs", &source).len(), 2);
    }

    #[test]
    fn the_gate_exception_admits_only_no_mangle() {
        let gate = "xtask/nostd-gate/src/main.rs";
        let ok = sample("#[allow(unsafe_code)] // why\n#[UNSAFE(no_mangle)]\nfn main() {}\n");
        assert!(check_source(gate, &ok).is_empty());
        let other = sample("#[UNSAFE(export_name = \"x\")]\nfn a() {}\nfn b() { UNSAFE {} }\n");
        assert_eq!(check_source(gate, &other).len(), 2);
        assert_eq!(check_source("xtask/src/main.rs", &ok).len(), 2);
        assert!(EXCEPTIONS.iter().all(|e| !e.reason.is_empty()));
    }

    #[test]
    fn members_and_lint_inheritance_are_read_from_manifests() {
        let root = r#"
[workspace]
resolver = "3"
members = [
    "hw", # the wire formats
    "paravisor/sys",
    "tests" ]
exclude = ["xtask/nostd-gate"]
[workspace.lints.rust]
unsafe_code = "forbid"
missing_docs = "warn"
[workspace.lints.clippy]
undocumented_unsafe_blocks = "deny"
"#;
        assert_eq!(workspace_members(root), ["hw", "paravisor/sys", "tests"]);
        assert_eq!(
            workspace_members("[workspace]\nmembers = [\"a\", \"b\"]\n"),
            ["a", "b"]
        );

        assert!(inherits_workspace_lints(
            "[package]\nname = \"x\"\n\n[lints]\nworkspace = true\n"
        ));
        assert!(inherits_workspace_lints(
            "lints.workspace = true\n[package]\n"
        ));
        assert!(inherits_workspace_lints("lints = { workspace = true }\n"));
        assert!(!inherits_workspace_lints("[package]\nname = \"x\"\n"));
        assert!(!inherits_workspace_lints("[lints]\nworkspace = false\n"));
        assert!(!inherits_workspace_lints(
            "[lints.rust]\nworkspace = true\n"
        ));
        assert!(!inherits_workspace_lints(
            "[package]\nworkspace = true\n[lints]\n"
        ));
        assert!(!inherits_workspace_lints("[lints]\n# workspace = true\n"));

        let good = r#"
[lints.rust]
unsafe_code = "deny" # modules allow it one by one
unsafe_op_in_unsafe_fn = "deny"
missing_docs = "warn"
[lints.clippy]
undocumented_unsafe_blocks = { level = "deny", priority = 1 }
multiple_unsafe_ops_per_block = "deny"
missing_safety_doc = "deny"
"#;
        assert_eq!(
            check_sys_manifest("s/Cargo.toml", good, root),
            Vec::<String>::new()
        );
        let weak = good
            .replace("unsafe_code = \"deny\"", "unsafe_code = \"allow\"")
            .replace("missing_docs = \"warn\"\n", "");
        let problems = check_sys_manifest("s/Cargo.toml", &weak, root);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].contains("`unsafe_code = \"deny\"`"));
        assert!(problems[1].contains("`missing_docs = \"warn\"`"));
        let inherits = "[lints]\nworkspace = true\n";
        assert!(check_sys_manifest("s/Cargo.toml", inherits, root)[0].contains("must not inherit"));
    }

    #[test]
    fn this_repository_passes() {
        check().expect("the repository's own fence check");
    }
}
