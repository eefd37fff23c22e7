//! The std implementation of [`parastor_core::Timer`]: one background
//! thread that completes sleeps in deadline order.
//!
//! The delay decorator asks for a sleep per delayed request; a thread per
//! sleep would be wasteful, so all sleeps share one thread and a deadline
//! heap. Dropping the timer stops the thread; sleeps still pending then never
//! complete (their disks are gone with it).

use parastor_core::Timer;
use parastor_core::disk::BoxFuture;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::poll_fn;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

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
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    cond: Condvar,
}

/// Locks `m`, recovering the data if a panicking thread poisoned it (the
/// protected state is always consistent between statements).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A [`Timer`] backed by one background thread.
pub struct StdTimer {
    shared: Arc<Shared>,
}

impl StdTimer {
    /// Starts the timer thread.
    pub fn new() -> std::io::Result<StdTimer> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            cond: Condvar::new(),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("parastor-timer".into())
            .spawn(move || run(&worker))?;
        Ok(StdTimer { shared })
    }
}

impl Drop for StdTimer {
    fn drop(&mut self) {
        lock(&self.shared.queue).shutdown = true;
        self.shared.cond.notify_one();
    }
}

/// The timer thread: completes sleeps whose deadline has passed, then waits
/// for the next deadline or a new sleep.
fn run(shared: &Shared) {
    let mut q = lock(&shared.queue);
    loop {
        if q.shutdown {
            return;
        }
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

impl Timer for StdTimer {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let slot = Arc::new(Mutex::new(Slot::default()));
        // A duration too long to represent sleeps "forever" (~136 years).
        let now = Instant::now();
        let deadline = now
            .checked_add(duration)
            .unwrap_or_else(|| now + Duration::from_secs(u32::MAX.into()));
        {
            let mut q = lock(&self.shared.queue);
            q.seq += 1;
            let seq = q.seq;
            q.heap.push(Reverse(Entry {
                deadline,
                seq,
                slot: slot.clone(),
            }));
        }
        self.shared.cond.notify_one();
        Box::pin(poll_fn(move |cx| {
            let mut s = lock(&slot);
            if s.done {
                Poll::Ready(())
            } else {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::task::{Context, Wake};

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
        let timer = StdTimer::new().unwrap();
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        let mut sleeps = [("long", 90), ("mid", 50), ("short", 10)]
            .map(|(name, ms)| (name, ms, timer.sleep(Duration::from_millis(ms))));
        for (name, _, sleep) in &mut sleeps {
            let report = Mutex::new(tx.clone());
            let waker = Waker::from(Arc::new(Report { name, tx: report }));
            if sleep
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
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
            let ready = sleep.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            assert!(ready.is_ready(), "{name} woke but is not ready");
        }
    }
}
