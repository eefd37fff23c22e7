//! `parastor disk info`: the disk stack as an indented tree.

use super::format;
use parastor_core::Description;
use std::fmt::Write;

/// Renders `desc` and its children as an indented tree, one fact per line.
pub fn render(desc: &Description) -> String {
    let mut out = String::new();
    node(&mut out, None, desc, 0);
    out
}

fn node(out: &mut String, label: Option<&str>, d: &Description, depth: usize) {
    let pad = "    ".repeat(depth);
    let bytes = u128::from(d.sector_count) * u128::from(d.sector_size);
    let bytes = u64::try_from(bytes).map_or_else(|_| format!("{bytes} bytes"), format::bytes);
    let label = label.map_or(String::new(), |l| format!("{l}: "));
    let _ = writeln!(
        out,
        "{pad}{label}{} — {} sectors ({bytes})",
        d.kind,
        format::count(d.sector_count)
    );
    let pad = "    ".repeat(depth + 1);
    let _ = writeln!(
        out,
        "{pad}sector size: {} bytes (physical {} bytes)",
        d.sector_size, d.physical_sector_size
    );
    let _ = writeln!(out, "{pad}read-only: {}", yes_no(d.read_only));
    let _ = writeln!(out, "{pad}FUA respected: {}", yes_no(d.fua));
    let granularity = match d.optimal_unmap_sectors {
        1 => "1 sector".to_owned(),
        n => format!("{n} sectors"),
    };
    let _ = writeln!(
        out,
        "{pad}unmap: {} (optimal granularity {granularity})",
        d.unmap_behavior.as_str()
    );
    if let Some(id) = d.disk_id {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(out, "{pad}disk id: {hex}");
    }
    for (key, value) in &d.details {
        let _ = writeln!(out, "{pad}{key}: {value}");
    }
    for (label, child) in &d.children {
        node(out, Some(label), child, depth + 1);
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parastor_core::UnmapBehavior;

    fn leaf(kind: &'static str) -> Description {
        Description {
            kind,
            sector_count: 65536,
            sector_size: 512,
            physical_sector_size: 4096,
            read_only: false,
            fua: true,
            unmap_behavior: UnmapBehavior::Zeroes,
            optimal_unmap_sectors: 8,
            disk_id: None,
            details: vec![("path", "/tmp/x.img".to_owned())],
            children: Vec::new(),
        }
    }

    #[test]
    fn tree_layout() {
        let mut top = leaf("layered");
        top.details.clear();
        top.read_only = true;
        top.disk_id = Some([0xab; 16]);
        top.children = vec![
            ("layer 0".to_owned(), leaf("ram")),
            ("layer 1".to_owned(), leaf("file")),
        ];
        let text = render(&top);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "layered — 65,536 sectors (32 MiB)");
        assert_eq!(lines[1], "    sector size: 512 bytes (physical 4096 bytes)");
        assert_eq!(lines[2], "    read-only: yes");
        assert_eq!(lines[3], "    FUA respected: yes");
        assert_eq!(
            lines[4],
            "    unmap: zeroes (optimal granularity 8 sectors)"
        );
        assert_eq!(lines[5], format!("    disk id: {}", "ab".repeat(16)));
        assert_eq!(lines[6], "    layer 0: ram — 65,536 sectors (32 MiB)");
        assert_eq!(
            lines[7],
            "        sector size: 512 bytes (physical 4096 bytes)"
        );
        assert_eq!(lines[11], "        path: /tmp/x.img");
        assert_eq!(lines[12], "    layer 1: file — 65,536 sectors (32 MiB)");
        assert_eq!(lines.len(), 18);
    }
}
