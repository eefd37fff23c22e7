//! The `parastor` binary: see `parastor --help`.
#![forbid(unsafe_code)]

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = parastor::cli::Cli::parse();
    match parastor::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line for scripts and logs; the picture only for people.
            eprintln!("parastor: error: {e}");
            if let Some(detail) = e.detail().filter(|_| std::io::stderr().is_terminal()) {
                eprintln!("{detail}");
            }
            ExitCode::FAILURE
        }
    }
}
