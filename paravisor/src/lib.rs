//! parastor's host-facing side: backends and the process.
//!
//! - [`file`](mod@file): a host file as a disk (the development backend).
//! - [`spec`]: the disk spec language of `parastor disk`, parsed and built
//!   into disk stacks.
//! - [`cli`]: the `parastor` command line, as library functions that tests
//!   can call without spawning the binary.
#![forbid(unsafe_code)]

pub mod cli;
pub mod file;
pub mod spec;
pub mod timer;
