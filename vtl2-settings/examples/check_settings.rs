//! Checks a VTL2 settings blob (JSON, protobuf or postcard) and prints the
//! validated model or every error, one per line.
//!
//! ```text
//! cargo run -p parastor-vtl2-settings --example check_settings -- SETTINGS [UPDATE]
//! ```
//!
//! With `UPDATE`, the second blob is read as a runtime update of the first
//! and the change set (or the runtime errors) is printed. The exit status
//! is 1 when any error is found.

use parastor_vtl2_settings::model::{Backing, Settings};
use parastor_vtl2_settings::update::{Change, read_update};
use parastor_vtl2_settings::{Errors, read};
use std::process::ExitCode;

fn load(path: &str) -> Result<Vec<u8>, ExitCode> {
    std::fs::read(path).map_err(|e| {
        eprintln!("{path}: {e}");
        ExitCode::from(2)
    })
}

fn report(path: &str, e: &Errors) -> ExitCode {
    for err in &e.0 {
        println!("{path}: {err}");
    }
    ExitCode::from(1)
}

fn summary(s: &Settings) {
    println!(
        "fixed: scsi_sub_channels={} (effective {}), io_ring_size={}, max_bounce_buffer_pages={}",
        s.fixed.scsi_sub_channels,
        s.fixed.effective_scsi_sub_channels(),
        s.fixed.io_ring_size,
        s.fixed.max_bounce_buffer_pages
    );
    for c in &s.controllers {
        println!("{:?} controller {}", c.protocol, c.instance_id);
        for ch in &c.children {
            let backing = match &ch.backing {
                Backing::Empty => String::from("empty"),
                Backing::Single(d) => format!("{:?} {} #{}", d.kind, d.instance_id, d.sub_device),
                Backing::Striped {
                    devices,
                    chunk_size_kb,
                } => format!(
                    "striped over {} devices, {chunk_size_kb} KiB",
                    devices.len()
                ),
            };
            let dvd = if ch.is_dvd { " (DVD)" } else { "" };
            println!("  {:?}{dvd}: {backing}", ch.address);
        }
    }
    for n in &s.nics {
        println!("NIC {}", n.instance_id);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (first, update) = match args.as_slice() {
        [a] => (a, None),
        [a, b] => (a, Some(b)),
        _ => {
            eprintln!("usage: check_settings SETTINGS [UPDATE]");
            return ExitCode::from(2);
        }
    };
    let data = match load(first) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let current = match read(&data) {
        Ok(s) => s,
        Err(e) => return report(first, &e),
    };
    let Some(update) = update else {
        summary(&current);
        return ExitCode::SUCCESS;
    };
    let data = match load(update) {
        Ok(d) => d,
        Err(code) => return code,
    };
    match read_update(&data, &current) {
        Ok((new, changes)) => {
            summary(&new);
            for c in &changes.changes {
                match c {
                    Change::AddDisk { controller, child } => {
                        println!("change: add {:?} on {controller}", child.address)
                    }
                    Change::RemoveDisk { controller, lun } => {
                        println!("change: remove LUN {lun} on {controller}")
                    }
                    Change::ChangeMedia {
                        controller,
                        address,
                        backing,
                    } => {
                        let what = if *backing == Backing::Empty {
                            "eject"
                        } else {
                            "insert"
                        };
                        println!("change: {what} media at {address:?} on {controller}")
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => report(update, &e),
    }
}
