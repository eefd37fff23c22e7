//! parastor's runtime: per-CPU worker threads, each with its own executor,
//! epoll reactor and timer heap.
//!
//! - [`Runtime::per_cpu`] starts one worker thread per CPU, pinned to it
//!   and named `parastor-cpuN`. A [`ThreadHandle`] spawns `Send + 'static`
//!   futures onto its thread: a task is created anywhere, moved to its
//!   thread once, and polled only there from then on.
//! - Waking is by wakers, never by polling every task: a wake on the task's
//!   own thread pushes it on a local ready queue; a wake from another thread
//!   pushes it on the thread's remote queue and writes the thread's eventfd
//!   only when the thread is parked in `epoll_wait`.
//! - [`sleep`] / [`sleep_until`] use the thread's deadline heap over a slab
//!   (no allocation per sleep once warmed up) and one timerfd armed to the
//!   earliest deadline; [`RuntimeTimer`] is parastor-core's
//!   [`Timer`](parastor_core::Timer) on top of them.
//! - [`FdReady`] waits for an edge-triggered file descriptor; [`EventFd`]
//!   is the counter every other event source enters through (a peer's
//!   signal now; MSI-X and io_uring completion eventfds later);
//!   [`EventFdSignal`] is VMBus's `Notify` and `Wait` on one.
//! - [`block_on`] runs a future on the calling thread with the same loop,
//!   for the command line and tests.
//!
//! Everything is built on `rustix`'s safe system-call wrappers: this crate
//! has no `unsafe`.
#![forbid(unsafe_code)]

mod fallback;
mod fd;
mod runtime;
mod signal;
mod task;
mod thread;
mod timer;

pub use fd::{EventFd, FdReady, Interest};
pub use runtime::{Runtime, ThreadHandle, allowed_cpus, block_on, current};
pub use signal::EventFdSignal;
pub use task::{JoinError, Task};
pub use timer::{RuntimeTimer, Sleep, sleep, sleep_until};

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering the data if a panicking thread poisoned it (every
/// structure guarded here is consistent between statements).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
