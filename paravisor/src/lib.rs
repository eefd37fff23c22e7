//! parastor's host-facing side: backends and the process.
#![forbid(unsafe_code)]
