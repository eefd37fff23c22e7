//! Reading the guest's serial log: result lines, the boot marker, and the
//! kernel-log lines that fail a run whatever the scenarios said.
//!
//! The guest prints (see `guest/init.sh` and `guest/lib.sh`):
//! - `PARASTOR-BOOTED <uptime>` when `/init` starts;
//! - `PARASTOR-RESULT <name> <pass|fail> <seconds> [key=value ...]` per
//!   scenario;
//! - its whole kernel log, each line tagged `PARASTOR-DMESG `;
//! - `PARASTOR-DONE <uptime>` just before powering off.
//!
//! Markers are searched anywhere in a line: a kernel message printed to the
//! console can share a line with the guest's output.

/// One scenario's result line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResultLine {
    /// The scenario.
    pub(crate) name: String,
    /// `pass` said the guest.
    pub(crate) passed: bool,
    /// Guest seconds the scenario took.
    pub(crate) seconds: f64,
    /// Its figures, in the order printed.
    pub(crate) figures: Vec<(String, String)>,
}

/// Parses a `PARASTOR-RESULT` line (the marker anywhere in `line`);
/// `None` for any other line or a malformed one.
pub(crate) fn parse_result(line: &str) -> Option<ResultLine> {
    let (_, rest) = line.split_once("PARASTOR-RESULT ")?;
    let mut words = rest.split_whitespace();
    let name = words.next()?.to_string();
    let passed = match words.next()? {
        "pass" => true,
        "fail" => false,
        _ => return None,
    };
    let seconds: f64 = words.next()?.parse().ok()?;
    let figures = words
        .map(|word| match word.split_once('=') {
            Some((key, value)) => (key.to_string(), value.to_string()),
            None => (word.to_string(), String::new()),
        })
        .collect();
    Some(ResultLine {
        name,
        passed,
        seconds,
        figures,
    })
}

/// What the whole serial log says.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct LogSummary {
    /// Guest uptime when `/init` started.
    pub(crate) booted_at: Option<f64>,
    /// Guest uptime at the end (`None`: the guest never got there).
    pub(crate) done_at: Option<f64>,
    /// Result lines, in order.
    pub(crate) results: Vec<ResultLine>,
    /// Lines that fail the run on their own: a kernel panic, an oops, an
    /// IOMMU fault.
    pub(crate) faults: Vec<String>,
    /// Why scenarios failed, in their words: `[NAME] FAIL: MESSAGE` lines
    /// (from `fail` in `guest/lib.sh`) as (NAME, MESSAGE).
    pub(crate) failures: Vec<(String, String)>,
}

/// A scenario's own failure message: `[NAME] FAIL: MESSAGE`.
pub(crate) fn parse_failure(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('[')?;
    let (name, message) = rest.split_once("] FAIL: ")?;
    (!name.is_empty() && !name.contains(char::is_whitespace))
        .then(|| (name.to_string(), message.trim().to_string()))
}

/// Whether a kernel-log line reports something that fails the run: an
/// IOMMU (VT-d) fault — QEMU completes a DMA to an unmapped address
/// successfully, only the guest's kernel log tells — a panic, an oops or a
/// kernel BUG.
pub(crate) fn is_fault(line: &str) -> bool {
    let dmar_fault = line.contains("DMAR: [DMA") && line.contains("fault");
    dmar_fault
        || line.contains("DMAR: DRHD: handling fault")
        || line.contains("Kernel panic")
        || line.contains("Oops:")
        || line.contains("BUG: ")
        || line.contains("general protection fault")
}

/// Whether `line` comes from the guest kernel: a tagged `dmesg` line, or a
/// console message (`[   12.345678] ...`). Only those are scanned for
/// faults: the scenarios' own output may say anything.
pub(crate) fn is_kernel_line(line: &str) -> bool {
    if line.contains("PARASTOR-DMESG ") {
        return true;
    }
    let Some(rest) = line.trim_start().strip_prefix('[') else {
        return false;
    };
    rest.split_once(']').is_some_and(|(stamp, _)| {
        stamp.contains('.')
            && stamp
                .chars()
                .all(|c| c == ' ' || c == '.' || c.is_ascii_digit())
    })
}

/// Reads the whole serial log.
pub(crate) fn summarize(text: &str) -> LogSummary {
    let mut summary = LogSummary::default();
    let uptime = |line: &str, marker: &str| {
        let (_, rest) = line.split_once(marker)?;
        rest.split_whitespace().next()?.parse::<f64>().ok()
    };
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        if let Some(result) = parse_result(line) {
            summary.results.push(result);
        } else if let Some(t) = uptime(line, "PARASTOR-BOOTED ") {
            summary.booted_at = Some(t);
        } else if let Some(t) = uptime(line, "PARASTOR-DONE ") {
            summary.done_at = Some(t);
        } else if let Some(failure) = parse_failure(line) {
            summary.failures.push(failure);
        } else if is_kernel_line(line) && is_fault(line) {
            summary.faults.push(line.trim().to_string());
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines() {
        assert_eq!(
            parse_result("PARASTOR-RESULT kernel-fileio pass 12.5 passed=205 failed=10 odd"),
            Some(ResultLine {
                name: "kernel-fileio".into(),
                passed: true,
                seconds: 12.5,
                figures: vec![
                    ("passed".into(), "205".into()),
                    ("failed".into(), "10".into()),
                    ("odd".into(), String::new()),
                ],
            })
        );
        let failed = parse_result("[   3.1] x PARASTOR-RESULT dm-crypt fail 3.0 ").unwrap();
        assert_eq!((failed.name.as_str(), failed.passed), ("dm-crypt", false));
        assert!(failed.figures.is_empty());
        assert_eq!(parse_result("PARASTOR-RESULT a maybe 1.0"), None);
        assert_eq!(parse_result("PARASTOR-RESULT a pass soon"), None);
        assert_eq!(parse_result("PARASTOR-RESULT a"), None);
        assert_eq!(parse_result("echo PARASTOR-RESULTS"), None);
    }

    #[test]
    fn faults_are_found() {
        let dmar = "PARASTOR-DMESG [    7.1] DMAR: [DMA Read NO_PASID] Request device [00:03.0] \
                    fault addr 0x1000 [fault reason 0x06] PTE Read access is not set";
        assert!(is_fault(dmar));
        assert!(is_fault(
            "[   9.0] Kernel panic - not syncing: Attempted to kill init!"
        ));
        assert!(is_fault(
            "PARASTOR-DMESG BUG: unable to handle page fault for address: 0"
        ));
        assert!(!is_fault("PARASTOR-DMESG DMAR: IOMMU enabled"));
        assert!(!is_fault("PARASTOR-DMESG DMAR: [DMA Read] ok"));
        assert!(!is_fault("[kernel-fileio] ok: size = '512'"));
    }

    #[test]
    fn only_kernel_lines_are_scanned() {
        assert!(is_kernel_line("PARASTOR-DMESG [    1.0] x"));
        assert!(is_kernel_line("[   12.345678] Kernel panic - not syncing"));
        assert!(!is_kernel_line("[kernel-fileio] BUG: in the output"));
        assert!(!is_kernel_line("BUG: printed by a tool"));
        let s = summarize("[dm-crypt] Kernel panic said a tool\n[    3.5] Kernel panic - x\n");
        assert_eq!(s.faults, ["[    3.5] Kernel panic - x"]);
    }

    #[test]
    fn whole_logs() {
        let log = "\
SeaBIOS\r
PARASTOR-BOOTED 5.71\r
=== vmtest: scenario kernel-fileio\r
PARASTOR-RESULT kernel-fileio pass 20.3 passed=205\r
[dm-crypt] FAIL: 512: dm-crypt does not read what parastor wrote\r
PARASTOR-RESULT dm-crypt fail 2.0 exit=1\r
PARASTOR-DMESG [    0.0] Linux version 6.1.0\r
PARASTOR-DMESG [   30.2] DMAR: [DMA Write NO_PASID] Request device [00:04.0] fault addr 0x0\r
PARASTOR-DONE 31.0\r
";
        let s = summarize(log);
        assert_eq!(s.booted_at, Some(5.71));
        assert_eq!(s.done_at, Some(31.0));
        assert_eq!(s.results.len(), 2);
        assert!(s.results[0].passed && !s.results[1].passed);
        assert_eq!(s.faults.len(), 1);
        assert!(s.faults[0].contains("fault addr"));
        assert_eq!(
            s.failures,
            [(
                "dm-crypt".to_string(),
                "512: dm-crypt does not read what parastor wrote".to_string()
            )]
        );
        assert_eq!(summarize("").results, vec![]);
        assert_eq!(parse_failure("[a b] FAIL: x"), None);
        assert_eq!(parse_failure("x [a] FAIL: x"), None);
    }
}
