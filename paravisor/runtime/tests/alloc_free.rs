//! Once warmed up, the runtime's I/O paths make no heap allocation: wakes
//! (local and from another thread), sleeps and eventfd waits. Counted with
//! `stats_alloc`; this binary holds a single test so no other test's thread
//! allocates while it counts.

use parastor_runtime::{EventFd, Runtime, allowed_cpus, block_on, sleep};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Wakes itself once (a local wake through the ready queue).
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

/// One round trip: the caller signals the worker's eventfd and waits for
/// the answer on its own, then both sides sleep and yield.
async fn round(to_worker: &EventFd, from_worker: &EventFd) {
    to_worker.signal().unwrap();
    from_worker.wait().await.unwrap();
    sleep(Duration::from_micros(20)).await;
    yield_now().await;
}

#[test]
fn wakes_sleeps_and_eventfd_waits_do_not_allocate() {
    let cpu = allowed_cpus().unwrap()[0];
    let rt = Runtime::per_cpu(&[cpu]).unwrap();
    let to_worker = Arc::new(EventFd::new().unwrap());
    let from_worker = Arc::new(EventFd::new().unwrap());
    let worker = {
        let (to_worker, from_worker) = (to_worker.clone(), from_worker.clone());
        rt.thread(0).unwrap().spawn(async move {
            loop {
                to_worker.wait().await.unwrap();
                sleep(Duration::from_micros(10)).await;
                yield_now().await;
                from_worker.signal().unwrap();
            }
        })
    };
    block_on(async {
        for _ in 0..200 {
            round(&to_worker, &from_worker).await;
        }
    });
    let region = Region::new(GLOBAL);
    block_on(async {
        for _ in 0..1000 {
            round(&to_worker, &from_worker).await;
        }
    });
    let change = region.change();
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "allocations in 1000 cross-thread eventfd round trips with sleeps and yields: {change:?}"
    );
    drop(worker);
    rt.shutdown();
}
