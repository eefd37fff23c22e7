//! The real `parastor` binary, run as a script would run it.

mod common;

use common::{run, text};
use std::process::{Command, Output};

fn parastor(args: &[&str], stdin: &[u8]) -> Output {
    run(
        Command::new(env!("CARGO_BIN_EXE_parastor")).args(args),
        stdin,
    )
}

#[test]
fn write_then_read_round_trips_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let spec = format!("file:{}", path.display());
    // A few sectors at an odd LBA.
    let data: Vec<u8> = (0..3 * 512).map(|i| (i * 31 % 256) as u8).collect();

    let out = parastor(&["disk", "write", &spec, "5"], &data);
    assert!(out.status.success(), "write failed: {}", text(&out.stderr));

    let out = parastor(&["disk", "read", &spec, "5", "3"], &[]);
    assert!(out.status.success(), "read failed: {}", text(&out.stderr));
    assert_eq!(out.stdout, data);

    // The bytes are in the file, where LBA 5 is.
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[5 * 512..8 * 512], &data[..]);
    assert!(
        file[..5 * 512]
            .iter()
            .chain(&file[8 * 512..])
            .all(|&b| b == 0)
    );

    // Partial sectors are refused with one clear line.
    let out = parastor(&["disk", "write", &spec, "0"], &[1; 100]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("expected a whole number of 512-byte sectors"),
        "{err}"
    );
}

#[test]
fn verify_memdiff_over_stripes_passes() {
    let out = parastor(
        &[
            "disk",
            "verify",
            "memdiff:striped:128K:{mem:32M|mem:32M}",
            "--ops",
            "2000",
            "--seed",
            "1",
        ],
        &[],
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "verify failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("seed: 1"), "{stdout}");
    assert!(stdout.contains("mismatched sectors: 0"), "{stdout}");
    assert!(stdout.trim_end().ends_with("result: PASS"), "{stdout}");
}

#[test]
fn bad_spec_is_a_one_line_error() {
    let out = parastor(&["disk", "info", "striped:128K:mem:1M"], &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("column 14"), "{err}");
    assert!(err.contains("expected '{'"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("Error {"),
        "{err}"
    );
}

#[test]
fn info_prints_the_stack() {
    let out = parastor(
        &["disk", "info", "memdiff:striped:128K:{mem:32M|mem:32M}"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info = text(&out.stdout);
    let first = info.lines().next().unwrap();
    assert_eq!(first, "layered — 131,072 sectors (64 MiB)");
    assert!(
        info.contains("\n    layer 1: striped — 131,072 sectors (64 MiB)\n"),
        "{info}"
    );
    assert!(
        info.contains("\n        member 1: ram — 65,536 sectors (32 MiB)\n"),
        "{info}"
    );
}

#[test]
fn disk_help_documents_specs() {
    let out = parastor(&["disk", "--help"], &[]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for form in [
        "mem:SIZE[@SECTOR]",
        "file[@SECTOR]:PATH",
        "memdiff:SPEC",
        "striped:[CHUNK:]",
    ] {
        assert!(help.contains(form), "{form} missing from:\n{help}");
    }
}
