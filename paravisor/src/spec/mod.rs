//! Disk specs: the little language `parastor disk` uses to name a disk
//! stack, and the one way from a description of a stack to the stack.
//!
//! Three parts, each usable alone:
//!
//! - [`recipe`]: [`Recipe`], a disk stack as plain data (kinds, sizes,
//!   chunk, sector sizes, paths, delay), printable in the spec grammar.
//! - [`grammar`]: spec text to a recipe ([`parse`]), with no I/O; errors
//!   name the column and what was expected ([`SpecError`]).
//! - [`build`]: a recipe to a [`Disk`] ([`build_disk`]), taking files, keys
//!   and the timer from a [`Host`]; [`host::StdHost`] is the real host.
//!
//! [`build_spec`] does all three for the command line, pointing build errors
//! back at the part of the spec that failed.

pub mod build;
mod error;
pub mod grammar;
pub mod host;
pub mod recipe;
#[cfg(test)]
mod test_host;

pub use build::{BuildError, Host, build_disk};
pub use error::SpecError;
pub use grammar::{GRAMMAR, SpanTree, kind_names, parse, parse_with_spans};
pub use host::StdHost;
pub use recipe::{MAX_NESTING, Recipe, RecipePath};

use parastor_core::Disk;

/// Parses `spec` and builds the disk stack it names on this host.
pub fn build_spec(spec: &str) -> Result<Disk, SpecError> {
    build_spec_with(spec, &StdHost)
}

/// Parses `spec` and builds the disk stack it names with `host`. A build
/// error points at the text of the part that failed.
pub fn build_spec_with(spec: &str, host: &dyn Host) -> Result<Disk, SpecError> {
    let (recipe, spans) = parse_with_spans(spec)?;
    build_disk(&recipe, host).map_err(|e| {
        // The grammar wrote every part, so the path is always found.
        let span = spans.get(e.at()).unwrap_or(0..spec.len());
        // The error already shows the whole spec; name the part that failed
        // only when it is not the whole spec.
        let name = spec.get(span.clone()).filter(|&text| text != spec);
        SpecError::new(spec, span, e.describe(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_every_form() {
        let d = build_spec("mem:64M@4096").unwrap();
        assert_eq!(
            (d.kind(), d.sector_count(), d.sector_size()),
            ("ram", 16384, 4096)
        );
        let d = build_spec("memdiff:striped:128K:{mem:32M|mem:32M}").unwrap();
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
        let d = build_spec(&format!("file@4096:{path}")).unwrap();
        assert_eq!(
            (d.kind(), d.sector_count(), d.sector_size()),
            ("file", 256, 4096)
        );
        let d = build_spec(&format!("striped:64K:{{file:{path}|mem:1M}}")).unwrap();
        assert_eq!(d.sector_count(), 4096);
        let d = build_spec(&format!("memdiff:file:{path}")).unwrap();
        assert_eq!(
            d.describe().children[1].1.details,
            vec![("path", path.clone())]
        );
    }

    #[test]
    fn build_errors_point_at_the_failing_disk() {
        let e = build_spec("memdiff:striped:{mem:1M|mem:2M}").unwrap_err();
        assert_eq!((e.column(), e.span()), (9, 8..31));
        assert!(
            e.message()
                .starts_with("cannot build the striped disk 'striped:{mem:1M|mem:2M}': "),
            "{e}"
        );
        assert!(e.message().contains("member 1"), "{e}");
        let e = build_spec("striped:1000:{mem:1M|mem:1M}").unwrap_err();
        assert!(
            e.message().starts_with("cannot build the striped disk: "),
            "{e}"
        );
        let e = build_spec("striped:{mem:1M|file:/nonexistent/x.img}").unwrap_err();
        assert_eq!(e.column(), 17);
        assert!(e.message().contains("/nonexistent/x.img"), "{e}");
        assert!(!e.to_string().contains('\n'));
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1000).unwrap();
        let e = build_spec(&format!("file:{}", f.path().display())).unwrap_err();
        assert!(
            e.message()
                .contains("not a whole number of 512-byte sectors"),
            "{e}"
        );
    }

    #[test]
    fn builds_decorators() {
        let d = build_spec("prwrap:delay:0:mem:1M").unwrap();
        assert_eq!(d.kind(), "prwrap");
        assert!(d.persistent_reservations().is_some());
        assert_eq!(d.describe().children[0].1.kind, "delay");

        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.bin");
        let key_bytes: Vec<u8> = (0..64u8).collect();
        std::fs::write(&key, &key_bytes).unwrap();
        let d = build_spec(&format!("crypt:{}:mem:1M@4096", key.display())).unwrap();
        assert_eq!((d.kind(), d.sector_size()), ("crypt", 4096));

        std::fs::write(&key, &key_bytes[..32]).unwrap();
        let e = build_spec(&format!("crypt:{}:mem:1M", key.display())).unwrap_err();
        assert!(e.message().contains("64"), "{e}");
        std::fs::write(&key, vec![7u8; 1 << 20]).unwrap();
        let e = build_spec(&format!("crypt:{}:mem:1M", key.display())).unwrap_err();
        assert!(e.message().contains("more than 64 bytes"), "{e}");
        // An endless key file is refused, not read until memory runs out.
        let e = build_spec("crypt:/dev/zero:mem:1M").unwrap_err();
        assert!(e.message().contains("more than 64 bytes"), "{e}");
        assert!(!e.to_string().contains('\n'));
        let missing = dir.path().join("missing.bin");
        let e = build_spec(&format!("crypt:{}:mem:1M", missing.display())).unwrap_err();
        assert!(e.message().contains("cannot read the key file"), "{e}");
    }

    #[test]
    fn build_errors_point_into_the_spec() {
        let host = test_host::MemHost::default()
            .with_file("a", 1 << 20, 512)
            .with_key("short", vec![1; 32]);
        let fails = |spec: &str| build_spec_with(spec, &host).unwrap_err();

        let e = fails("striped:{mem:1M|file:gone}");
        assert_eq!((e.column(), e.span()), (17, 16..25));
        assert_eq!(e.message(), "no file gone here");
        let e = fails("memdiff:crypt:short:mem:1M");
        assert_eq!((e.column(), e.span()), (9, 8..26));
        assert!(e.message().starts_with("key file 'short': "), "{e}");
        // The part is named as the spec wrote it, not as it prints.
        let e = fails("memdiff:striped:{file:a|mem:2048K}");
        assert_eq!(e.column(), 9);
        assert!(
            e.message()
                .starts_with("cannot build the striped disk 'striped:{file:a|mem:2048K}': "),
            "{e}"
        );
        // The whole spec is not named twice.
        let e = fails("delay:1:mem:1M");
        assert_eq!(e.span(), 0..14);
        assert_eq!(
            e.to_string(),
            "spec error at column 1 of 'delay:1:mem:1M': cannot start the timer thread: no threads here"
        );
        // Grammar errors come first: the host is not asked for anything.
        let asked = host.log().len();
        let e = fails("striped:{file:a|x}");
        assert_eq!(e.column(), 17);
        assert_eq!(host.log().len(), asked);

        let disk = build_spec_with("memdiff:file:a", &host).unwrap();
        assert_eq!((disk.kind(), disk.sector_count()), ("layered", 2048));
    }
}
