//! The driver's sense of time: a monotonic clock next to the host's
//! [`Timer`](parastor_core::delay::Timer).
//!
//! The driver sleeps through the `Timer` it is given (register polling,
//! the watchdog's period) and reads the time from a [`Clock`]. Commands
//! are not stamped with a clock read: the watchdog copies the clock into
//! a coarse counter every period, and a submission stamps its command
//! with that counter (one relaxed load), so timing costs the I/O path
//! nothing and needs no timer per command.

use core::fmt;
use core::time::Duration;

/// A monotonic clock.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Time since an arbitrary fixed origin; never goes backwards.
    fn now(&self) -> Duration;
}

/// The host's monotonic clock (`std::time::Instant`), from the moment
/// the value was made.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: std::time::Instant,
}

impl MonotonicClock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            origin: std::time::Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}
