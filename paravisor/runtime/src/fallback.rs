//! The timer for sleeps polled outside any runtime loop (by another
//! executor, such as `futures::executor::block_on` in tests and tools): one
//! process-wide thread completes them in deadline order.
//!
//! This is the former `parastor::timer::StdTimer`, kept only for those
//! contexts. It allocates per sleep and hops threads; runtime threads never
//! use it.

use crate::lock;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Whether a sleep has finished, and who to wake when it does.
#[derive(Default)]
struct Slot {
    done: bool,
    waker: Option<Waker>,
}

/// A pending sleep in the deadline heap.
struct Entry {
    deadline: Instant,
    /// Breaks ties so equal deadlines complete in request order.
    seq: u64,
    slot: Arc<Mutex<Slot>>,
}

impl Entry {
    fn key(&self) -> (Instant, u64) {
        (self.deadline, self.seq)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    cond: Condvar,
}

/// The timer thread, started on first use; `None` if it could not be.
fn shared() -> Option<&'static Shared> {
    static SHARED: OnceLock<Option<&'static Shared>> = OnceLock::new();
    *SHARED.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("parastor-timer".into())
            .spawn(move || run(shared))
            .ok()
            .map(|_| shared)
    })
}

/// The timer thread: completes sleeps whose deadline has passed, then waits
/// for the next deadline or a new sleep.
fn run(shared: &Shared) {
    let mut q = lock(&shared.queue);
    loop {
        let now = Instant::now();
        let next = q.heap.peek().map(|Reverse(e)| e.deadline);
        match next {
            Some(deadline) if deadline <= now => {
                if let Some(Reverse(e)) = q.heap.pop() {
                    let waker = {
                        let mut s = lock(&e.slot);
                        s.done = true;
                        s.waker.take()
                    };
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
            }
            Some(deadline) => {
                q = shared
                    .cond
                    .wait_timeout(q, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            None => q = shared.cond.wait(q).unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// A sleep on the fallback timer thread.
pub(crate) struct Sleep {
    deadline: Instant,
    slot: Option<Arc<Mutex<Slot>>>,
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("fallback::Sleep")
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Sleep {
    pub(crate) fn new(deadline: Instant) -> Sleep {
        Sleep {
            deadline,
            slot: None,
        }
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let slot = match &self.slot {
            Some(slot) => slot,
            None => {
                let Some(shared) = shared() else {
                    // No thread could be started: block this (non-runtime)
                    // thread instead of never completing.
                    std::thread::sleep(self.deadline.saturating_duration_since(Instant::now()));
                    return Poll::Ready(());
                };
                let slot = Arc::new(Mutex::new(Slot::default()));
                {
                    let mut q = lock(&shared.queue);
                    q.seq += 1;
                    let seq = q.seq;
                    q.heap.push(Reverse(Entry {
                        deadline: self.deadline,
                        seq,
                        slot: slot.clone(),
                    }));
                }
                shared.cond.notify_one();
                self.slot.insert(slot)
            }
        };
        let mut s = lock(slot);
        if s.done {
            Poll::Ready(())
        } else {
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::task::Wake;
    use std::time::Duration;

    /// A waker that reports the name of the sleep it belongs to.
    struct Report {
        name: &'static str,
        tx: Mutex<mpsc::Sender<&'static str>>,
    }

    impl Wake for Report {
        fn wake(self: Arc<Self>) {
            let _ = lock(&self.tx).send(self.name);
        }
    }

    /// Sleeps requested longest first complete shortest first, and none
    /// completes before its duration. The order is observed from the wakes
    /// themselves, so a timer that fired in request order (FIFO) fails
    /// however loaded the machine is.
    #[test]
    fn sleeps_complete_in_deadline_order_and_not_early() {
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        let mut sleeps = [("long", 90), ("mid", 50), ("short", 10)]
            .map(|(name, ms)| (name, ms, Sleep::new(start + Duration::from_millis(ms))));
        for (name, _, sleep) in &mut sleeps {
            let report = Mutex::new(tx.clone());
            let waker = Waker::from(Arc::new(Report { name, tx: report }));
            if sleep.poll(&mut Context::from_waker(&waker)).is_ready() {
                // Already over (a very slow machine): it completed by now.
                tx.send(name).unwrap();
            }
        }
        let mut order = Vec::new();
        for _ in 0..sleeps.len() {
            let name = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("every sleep completes");
            order.push((name, start.elapsed()));
        }
        let names: Vec<_> = order.iter().map(|&(n, _)| n).collect();
        assert_eq!(names, ["short", "mid", "long"], "{order:?}");
        for (name, at) in &order {
            let ms = sleeps.iter().find(|s| s.0 == *name).unwrap().1;
            assert!(*at >= Duration::from_millis(ms), "{name} early: {order:?}");
        }
        for (name, _, sleep) in &mut sleeps {
            let ready = sleep.poll(&mut Context::from_waker(Waker::noop()));
            assert!(ready.is_ready(), "{name} woke but is not ready");
        }
    }
}
