//! Behaviour of the runtime seen from outside: timers, wakes across
//! threads, fd readiness, tasks pinned to their thread, shutdown.

use parastor_runtime::{
    EventFd, FdReady, Interest, JoinError, Runtime, allowed_cpus, block_on, current, sleep,
};
use std::future::{Future, poll_fn};
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// `fut`'s output, or `None` if `limit` passes first (so a lost wake fails
/// the test instead of hanging it).
async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut timeout = pin!(sleep(limit));
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        timeout.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Yields once: wakes itself and returns `Pending`.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Two CPUs to run on (the same one twice is refused, so tests needing two
/// threads use two distinct CPUs when there are, else skip that part).
fn cpus() -> Vec<usize> {
    allowed_cpus().unwrap()
}

/// A one-way flag with a waker: the simplest cross-thread wake.
#[derive(Default)]
struct Flag {
    state: Mutex<(bool, Option<Waker>)>,
}

impl Flag {
    fn set(&self) {
        let waker = {
            let mut s = self.state.lock().unwrap();
            s.0 = true;
            s.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Waits for the flag and clears it.
    async fn take(&self) {
        poll_fn(|cx| {
            let mut s = self.state.lock().unwrap();
            if std::mem::take(&mut s.0) {
                Poll::Ready(())
            } else {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

#[test]
fn sleeps_complete_in_deadline_order_and_not_early() {
    block_on(async {
        let order = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let here = current().expect("block_on runs a loop");
        let tasks: Vec<_> = [("long", 60), ("mid", 30), ("short", 5), ("zero", 0)]
            .into_iter()
            .map(|(name, ms)| {
                let order = order.clone();
                here.spawn(async move {
                    sleep(Duration::from_millis(ms)).await;
                    order.lock().unwrap().push((name, ms, start.elapsed()));
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        let names: Vec<_> = order.iter().map(|o| o.0).collect();
        assert_eq!(names, ["zero", "short", "mid", "long"], "{order:?}");
        for &(name, ms, at) in order.iter() {
            assert!(at >= Duration::from_millis(ms), "{name} early: {order:?}");
        }
    });
}

/// Counts wakes.
#[derive(Default)]
struct CountWake(AtomicUsize);

impl Wake for CountWake {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_dropped_sleep_never_fires_and_later_ones_still_do() {
    block_on(async {
        let count = Arc::new(CountWake::default());
        let waker = Waker::from(count.clone());
        {
            let mut cancelled = pin!(sleep(Duration::from_millis(5)));
            assert!(
                cancelled
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
            );
        }
        let start = Instant::now();
        sleep(Duration::from_millis(30)).await;
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "a dropped sleep woke");
    });
}

#[test]
fn a_task_woken_from_another_thread_runs_once_per_wake_on_its_thread() {
    let cpus = cpus();
    let rt = Runtime::per_cpu(&cpus[..1]).unwrap();
    let flag = Arc::new(Flag::default());
    let polls = Arc::new(AtomicUsize::new(0));
    let task = {
        let (flag, polls) = (flag.clone(), polls.clone());
        rt.thread(0).unwrap().spawn(async move {
            let mut take = pin!(flag.take());
            poll_fn(|cx| {
                polls.fetch_add(1, Ordering::SeqCst);
                take.as_mut().poll(cx)
            })
            .await;
            std::thread::current().name().map(str::to_owned)
        })
    };
    // The task is parked on its first poll; nothing polls it again until
    // the wake (wakers, not polling).
    let start = Instant::now();
    while polls.load(Ordering::SeqCst) == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(polls.load(Ordering::SeqCst), 1, "polled without a wake");
    flag.set();
    let name = block_on(within(Duration::from_secs(30), task))
        .expect("the remote wake reached the parked thread")
        .unwrap();
    assert_eq!(name.as_deref(), Some(&*format!("parastor-cpu{}", cpus[0])));
    assert_eq!(polls.load(Ordering::SeqCst), 2);
    rt.shutdown();
}

#[test]
fn tasks_stay_on_their_thread_and_cpu() {
    let cpus = cpus();
    let cpus = &cpus[..cpus.len().min(2)];
    let rt = Runtime::per_cpu(cpus).unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let thread = rt.thread(i % cpus.len()).unwrap().clone();
            let cpu = cpus[i % cpus.len()];
            let other = rt.thread((i + 1) % cpus.len()).unwrap().clone();
            thread.clone().spawn(async move {
                let me = std::thread::current().id();
                for round in 0..50 {
                    match round % 3 {
                        0 => yield_now().await,
                        1 => sleep(Duration::from_micros(50)).await,
                        // Waits for a task on the other thread: woken from it.
                        _ => other.spawn(async {}).await.unwrap(),
                    }
                    assert_eq!(std::thread::current().id(), me, "task hopped threads");
                    assert_eq!(rustix::thread::sched_getcpu(), cpu, "thread left its CPU");
                    assert!(thread.is_current());
                }
            })
        })
        .collect();
    block_on(async {
        for t in tasks {
            within(Duration::from_secs(60), t)
                .await
                .expect("task finished")
                .unwrap();
        }
    });
    rt.shutdown();
}

#[test]
fn fd_readiness_wakes_the_reader() {
    let cpus = cpus();
    let rt = Runtime::per_cpu(&cpus[..1]).unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let ours = Arc::new(rustix::fd::OwnedFd::from(ours));
    let reader = rt.thread(0).unwrap().spawn(async move {
        let ready = FdReady::new(ours.clone(), Interest::READABLE);
        let mut got = Vec::new();
        let mut waits = 0;
        while got.len() < 6 {
            let mut buf = [0u8; 16];
            match rustix::io::read(&*ours, &mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(rustix::io::Errno::AGAIN) => {
                    ready.clear(Interest::READABLE);
                    poll_fn(|cx| ready.poll_ready(cx, Interest::READABLE)).await?;
                    waits += 1;
                }
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        Ok::<_, io::Error>((got, waits))
    });
    std::thread::sleep(Duration::from_millis(20));
    theirs.write_all(b"abc").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    theirs.write_all(b"def").unwrap();
    let (got, waits) = block_on(within(Duration::from_secs(30), reader))
        .expect("readiness woke the reader")
        .unwrap()
        .unwrap();
    assert_eq!(got, b"abcdef");
    assert!(waits >= 1, "the reader never waited");
    rt.shutdown();
}

#[test]
fn fd_ready_outside_a_runtime_is_an_error_not_a_hang() {
    let e = EventFd::new().unwrap();
    let waker = Waker::noop();
    match e.poll_wait(&mut Context::from_waker(waker)) {
        Poll::Ready(Err(err)) => assert!(err.to_string().contains("outside a runtime")),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn eventfd_signals_from_another_thread_are_counted() {
    let cpus = cpus();
    let rt = Runtime::per_cpu(&cpus[..1]).unwrap();
    let efd = Arc::new(EventFd::new().unwrap());
    let waiter = {
        let efd = efd.clone();
        rt.thread(0).unwrap().spawn(async move {
            let mut total = 0;
            while total < 3 {
                total += efd.wait().await.unwrap();
            }
            total
        })
    };
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(5));
        efd.signal().unwrap();
    }
    let total = block_on(within(Duration::from_secs(30), waiter))
        .expect("signals woke the waiter")
        .unwrap();
    assert_eq!(total, 3);
}

/// Drop records where it ran.
struct DropProbe(Arc<Mutex<Option<String>>>);

impl Drop for DropProbe {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = std::thread::current().name().map(str::to_owned);
    }
}

#[test]
fn shutdown_drops_pending_tasks_on_their_thread_and_joins() {
    let cpus = cpus();
    let rt = Runtime::per_cpu(&cpus[..1]).unwrap();
    let handle = rt.thread(0).unwrap().clone();
    let dropped = Arc::new(Mutex::new(None));
    let probe = DropProbe(dropped.clone());
    let started = Arc::new(AtomicBool::new(false));
    let forever = {
        let started = started.clone();
        handle.spawn(async move {
            let _probe = probe;
            started.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        })
    };
    while !started.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    rt.shutdown();
    // Joined: the drop has happened, on the worker.
    assert_eq!(
        dropped.lock().unwrap().as_deref(),
        Some(&*format!("parastor-cpu{}", cpus[0]))
    );
    assert_eq!(block_on(forever), Err(JoinError::Cancelled));
    // Intake stopped: a task spawned now is refused.
    let late = handle.spawn(async { 1 });
    assert_eq!(block_on(late), Err(JoinError::Cancelled));
}

#[test]
fn a_panicking_task_is_reported_and_its_thread_carries_on() {
    let cpus = cpus();
    let rt = Runtime::per_cpu(&cpus[..1]).unwrap();
    let t = rt.thread(0).unwrap();
    let bad = t.spawn(async { panic!("boom") });
    assert_eq!(block_on(bad), Err(JoinError::Panicked("boom".into())));
    assert_eq!(block_on(t.spawn(async { 7 })), Ok(7));
}

#[test]
fn per_cpu_refuses_bad_cpu_lists() {
    assert!(Runtime::per_cpu(&[]).is_err());
    let c = cpus()[0];
    let e = Runtime::per_cpu(&[c, c]).unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    let e = Runtime::per_cpu(&[100_000]).unwrap_err();
    assert!(e.to_string().contains("affinity"), "{e}");
}

/// Ping-pong between two runtime threads, many rounds, with two wake
/// paths (a waker flag and an eventfd): a wake lost in the parking race
/// stalls a round and the time limit fails the test.
#[test]
fn no_wake_is_lost_between_two_busy_threads() {
    const ROUNDS: usize = 20_000;
    let cpus = cpus();
    let pair: Vec<usize> = if cpus.len() >= 2 {
        cpus[..2].to_vec()
    } else {
        cpus[..1].to_vec()
    };
    let rt = Runtime::per_cpu(&pair).unwrap();
    let a = rt.thread(0).unwrap();
    let b = rt.thread(pair.len() - 1).unwrap();
    let (ping, pong) = (Arc::new(Flag::default()), Arc::new(Flag::default()));
    let (ping_fd, pong_fd) = (
        Arc::new(EventFd::new().unwrap()),
        Arc::new(EventFd::new().unwrap()),
    );
    let server = {
        let (ping, pong, ping_fd, pong_fd) =
            (ping.clone(), pong.clone(), ping_fd.clone(), pong_fd.clone());
        b.spawn(async move {
            for i in 0..ROUNDS {
                if i % 2 == 0 {
                    ping.take().await;
                    pong.set();
                } else {
                    ping_fd.wait().await.unwrap();
                    pong_fd.signal().unwrap();
                }
            }
        })
    };
    let client = a.spawn(async move {
        for i in 0..ROUNDS {
            if i % 2 == 0 {
                ping.set();
                pong.take().await;
            } else {
                ping_fd.signal().unwrap();
                pong_fd.wait().await.unwrap();
            }
        }
    });
    block_on(async {
        let done = within(Duration::from_secs(120), async {
            client.await.unwrap();
            server.await.unwrap();
        })
        .await;
        assert!(done.is_some(), "a wake was lost: the ping-pong stalled");
    });
    rt.shutdown();
}

#[test]
fn runtime_timer_sleeps_on_the_runtime_and_off_it() {
    use parastor_core::Timer;
    let timer = parastor_runtime::RuntimeTimer;
    let start = Instant::now();
    block_on(timer.sleep(Duration::from_millis(10)));
    assert!(start.elapsed() >= Duration::from_millis(10));
    // Another executor: the fallback timer thread completes it.
    let start = Instant::now();
    futures_lite_block_on(timer.sleep(Duration::from_millis(10)));
    assert!(start.elapsed() >= Duration::from_millis(10));
}

/// A minimal foreign executor (not the runtime's loop).
fn futures_lite_block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut Context::from_waker(&waker)) {
            return v;
        }
        std::thread::park();
    }
}

/// `EventFdSignal` through VMBus's traits: notifications from a plain
/// thread wake a waiter on a runtime thread, and its answers come back the
/// same way, round after round.
#[test]
fn eventfd_signals_carry_vmbus_notifications_across_threads() {
    use parastor_runtime::EventFdSignal;
    use parastor_vmbus::signal::{Notify, Wait};
    const ROUNDS: usize = 2_000;
    let rt = Runtime::per_cpu(&cpus()[..1]).unwrap();
    let to_host = Arc::new(EventFdSignal::new().unwrap());
    let to_guest = Arc::new(EventFdSignal::new().unwrap());
    let host = {
        let (to_host, to_guest) = (to_host.clone(), to_guest.clone());
        rt.thread(0).unwrap().spawn(async move {
            for _ in 0..ROUNDS {
                poll_fn(|cx| to_host.poll_wait(cx)).await;
                to_guest.notify();
            }
        })
    };
    block_on(async {
        let done = within(Duration::from_secs(60), async {
            for _ in 0..ROUNDS {
                to_host.notify();
                poll_fn(|cx| to_guest.poll_wait(cx)).await;
            }
            host.await.unwrap();
        })
        .await;
        assert!(done.is_some(), "a notification was lost");
    });
    // Nothing left over: every notification was consumed by its wait.
    assert_eq!(to_host.eventfd().try_take().unwrap(), None);
    assert_eq!(to_guest.eventfd().try_take().unwrap(), None);
}
