//! parastor's host-facing side: backends and the process.
//!
//! - [`file`](mod@file): a host file as a disk (the development backend).
//! - [`spec`]: disk stacks as recipes: the spec grammar of `parastor disk`
//!   (text to recipe, no I/O) and the one builder from a recipe to a disk
//!   stack.
//! - [`cli`]: the `parastor` command line, as library functions that tests
//!   can call without spawning the binary.
#![forbid(unsafe_code)]

pub mod cli;
pub mod file;
pub mod spec;
