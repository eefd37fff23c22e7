//! Tests of the guest's shell helpers (`guest/lib.sh`) that need no guest:
//! the parsing of libiscsi's output and the comparison with the kernel's
//! results, run with the host's `sh` and `awk` (POSIX, as busybox's are).

mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Output of `iscsi-test-cu -v` in the shapes seen in the guest: an
    /// outcome at the end of the test line, on a line of its own after the
    /// test's messages, `[SKIPPED]` in a passing test, `[FAILED]` messages
    /// and assertion lines, stderr lines interleaved.
    const OUTPUT: &str = "\
Can not use BLKSECTGET for /dev/sg devices
     CUnit - A unit testing framework for C - Version 2.1-3

Suite: CompareAndWrite
  Test: Simple ...passed
  Test: DpoFua ...    [SKIPPED] REPORT_SUPPORTED_OPCODES is not implemented.
passed
Suite: ExtendedCopy
  Test: Simple ...    [FAILED] EXTENDEDCOPY command failed with status 2
FAILED
    1. test_extendedcopy_simple.c:79  - CU_ASSERT_EQUAL(_r,0)
  Test: ParamHdr ...passed
Suite: ModeSense6
  Test: Control-SWP ...    SWP is not changeable
passed
  Test: Residuals ...FAILED
    1. test_modesense6_residuals.c:40  - CU_ASSERT_EQUAL(_r,0)

Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      3      3    n/a      0        0
               tests      6      6      4      2        0
";

    /// Runs `script` in `sh` with `guest/lib.sh` sourced and `stdin` fed.
    fn sh(script: &str, stdin: &str) -> String {
        let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/src/vmtest/guest/lib.sh");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(". {lib}; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{script}: {}", out.status);
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn conformance_output_gives_one_outcome_per_test() {
        assert_eq!(
            sh("conformance_parse", OUTPUT),
            "passed CompareAndWrite.Simple\n\
             skipped CompareAndWrite.DpoFua\n\
             failed ExtendedCopy.Simple\n\
             passed ExtendedCopy.ParamHdr\n\
             passed ModeSense6.Control-SWP\n\
             failed ModeSense6.Residuals\n"
        );
    }

    #[test]
    fn failed_tests_output_is_kept() {
        let out = sh("conformance_failures", OUTPUT);
        assert!(
            out.contains("ExtendedCopy:   Test: Simple ...    [FAILED]"),
            "{out}"
        );
        assert!(
            out.contains("ExtendedCopy:     1. test_extendedcopy_simple.c:79"),
            "{out}"
        );
        assert!(
            out.contains("ModeSense6:     1. test_modesense6_residuals.c:40"),
            "{out}"
        );
        assert!(
            !out.contains("ParamHdr") && !out.contains("DpoFua"),
            "{out}"
        );
    }

    #[test]
    fn comparison_names_regressions_and_gains() {
        let dir = std::env::temp_dir().join(format!("vmtest-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("conformance-kernel.tests"),
            "passed A.one\nfailed A.two\nskipped A.three\npassed A.four\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("conformance-mem.tests"),
            "failed A.one\npassed A.two\npassed A.three\npassed A.four\nfailed A.new\n",
        )
        .unwrap();
        let out = sh(
            &format!(
                "VMTEST_DIR={}; conformance_compare kernel mem; \
                 echo \"counts $CONF_REGRESSIONS $CONF_GAINS\"",
                dir.display()
            ),
            "",
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            out,
            "REGRESSION mem A.one (kernel: passed)\n\
             GAIN mem A.two (kernel: failed)\n\
             GAIN mem A.three (kernel: skipped)\n\
             REGRESSION mem A.new (kernel: absent)\n\
             counts 2 2\n"
        );
    }
}
