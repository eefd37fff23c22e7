//! One runtime thread: the state other threads share with it
//! ([`ThreadShared`]), the state only it touches ([`Local`]), and its loop.

use crate::fd::FdSlot;
use crate::lock;
use crate::task::{TaskCell, TaskFuture};
use crate::timer::Timers;
use rustix::buffer::spare_capacity;
use rustix::event::{EventfdFlags, epoll, eventfd};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

/// Tasks run before the loop looks at other threads' wakes, timers and
/// file descriptors again, so a busy thread still notices them.
const BUDGET: usize = 64;

/// epoll tokens of the thread's own descriptors; registrations use
/// `FD_TOKEN_BASE + key` in the low 32 bits and a generation above.
const WAKE_TOKEN: u64 = 0;
const TIMER_TOKEN: u64 = 1;
pub(crate) const FD_TOKEN_BASE: u64 = 2;

/// Events read per `epoll_wait`.
const EVENTS: usize = 64;

/// Gives every runtime thread a distinct id (never reused, unlike an
/// address).
static NEXT_THREAD_ID: AtomicU64 = AtomicU64::new(1);

/// A registration dropped away from its thread: the thread removes it.
pub(crate) struct Orphan {
    pub(crate) fd: Arc<OwnedFd>,
    pub(crate) key: usize,
    pub(crate) generation: u32,
}

/// What other threads hand to this thread.
#[derive(Default)]
struct Remote {
    /// Tasks woken from other threads (keeps its capacity: swapped with
    /// [`Local::spare`], never reallocated once warm).
    queue: Vec<Arc<TaskCell>>,
    /// The thread is in (or about to enter) a blocking `epoll_wait`: the
    /// next waker writes the eventfd and clears this, so a burst of wakes
    /// costs one write.
    parked: bool,
    /// Fd registrations dropped on another thread.
    orphans: Vec<Orphan>,
}

/// The part of a runtime thread every thread may reach.
pub(crate) struct ThreadShared {
    pub(crate) id: u64,
    /// The CPU the thread is pinned to (`None` for a [`crate::block_on`]
    /// thread).
    pub(crate) cpu: Option<usize>,
    /// Written to end a blocking `epoll_wait`.
    wake_fd: OwnedFd,
    remote: Mutex<Remote>,
    /// Every live task, so closing the thread can drop them on it.
    tasks: Mutex<Slab<Arc<TaskCell>>>,
    /// No more tasks are accepted; set once, before the thread drops its
    /// tasks.
    closed: AtomicBool,
    /// The thread should stop once it notices.
    stop: AtomicBool,
    /// The loop's main future (the `block_on` future, or the stop check of a
    /// worker) was woken.
    main_woken: AtomicBool,
}

impl ThreadShared {
    pub(crate) fn new(cpu: Option<usize>) -> io::Result<Arc<ThreadShared>> {
        let wake_fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Arc::new(ThreadShared {
            id: NEXT_THREAD_ID.fetch_add(1, Ordering::Relaxed),
            cpu,
            wake_fd,
            remote: Mutex::default(),
            tasks: Mutex::default(),
            closed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            main_woken: AtomicBool::new(true),
        }))
    }

    /// Whether [`Self::request_stop`] was called.
    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Whether the calling thread is this runtime thread.
    pub(crate) fn is_current(self: &Arc<Self>) -> bool {
        with_local(|l| Arc::ptr_eq(&l.shared, self)).unwrap_or(false)
    }

    /// Adds a task and queues its first poll. A closed thread drops it at
    /// once (its join handle then reports cancellation).
    pub(crate) fn spawn(self: &Arc<Self>, future: TaskFuture) {
        let task = {
            let mut tasks = lock(&self.tasks);
            if self.closed.load(Ordering::SeqCst) {
                None
            } else {
                let entry = tasks.vacant_entry();
                let task = Arc::new(TaskCell::new(entry.key(), future, self.clone()));
                entry.insert(task.clone());
                Some(task)
            }
        };
        // Dropped (when refused) outside the lock: its destructors may
        // spawn or wake.
        if let Some(task) = task {
            self.schedule(task);
        }
    }

    /// Forgets a finished task.
    pub(crate) fn remove_task(&self, key: usize) -> Option<Arc<TaskCell>> {
        lock(&self.tasks).try_remove(key)
    }

    /// Queues a woken task on its thread.
    pub(crate) fn schedule(self: &Arc<Self>, task: Arc<TaskCell>) {
        let mut task = Some(task);
        with_local(|l| {
            if Arc::ptr_eq(&l.shared, self)
                && let Some(task) = task.take()
            {
                l.ready.borrow_mut().push_back(task);
            }
        });
        let Some(task) = task else { return };
        let (wake, refused) = {
            let mut remote = lock(&self.remote);
            if self.closed.load(Ordering::SeqCst) {
                (false, Some(task))
            } else {
                remote.queue.push(task);
                (std::mem::take(&mut remote.parked), None)
            }
        };
        drop(refused);
        if wake {
            self.kick();
        }
    }

    /// Hands a registration dropped on another thread back to this one.
    pub(crate) fn orphan(&self, orphan: Orphan) {
        let wake = {
            let mut remote = lock(&self.remote);
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            remote.orphans.push(orphan);
            std::mem::take(&mut remote.parked)
        };
        if wake {
            self.kick();
        }
    }

    /// Wakes the loop's main future.
    pub(crate) fn wake_main(self: &Arc<Self>) {
        self.main_woken.store(true, Ordering::SeqCst);
        if !self.is_current() {
            self.unpark();
        }
    }

    /// Asks the thread to stop. Writes the eventfd whether or not the
    /// thread looks parked: shutdown is rare, and it must not depend on
    /// the wake protocol being intact.
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.main_woken.store(true, Ordering::SeqCst);
        self.kick();
    }

    /// Ends the thread's blocking wait, if it is in one.
    fn unpark(&self) {
        let wake = std::mem::take(&mut lock(&self.remote).parked);
        if wake {
            self.kick();
        }
    }

    /// Writes the wake eventfd. A full counter (`EAGAIN`) already means
    /// "wake up".
    fn kick(&self) {
        let _ = rustix::io::write(&self.wake_fd, &1u64.to_ne_bytes());
    }

    /// Marks the thread parked unless work arrived; true if it may block.
    /// Decided under the remote lock, which every remote waker takes after
    /// publishing its work, so a wake is either seen here or writes the
    /// eventfd.
    fn park(&self) -> bool {
        let mut remote = lock(&self.remote);
        let idle = remote.queue.is_empty()
            && remote.orphans.is_empty()
            && !self.main_woken.load(Ordering::SeqCst);
        remote.parked = idle;
        idle
    }
}

/// The loop's waker for its main future.
struct MainWake(Arc<ThreadShared>);

impl Wake for MainWake {
    fn wake(self: Arc<Self>) {
        self.0.wake_main();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.wake_main();
    }
}

/// The part of a runtime thread only that thread touches.
pub(crate) struct Local {
    pub(crate) shared: Arc<ThreadShared>,
    pub(crate) epoll: OwnedFd,
    timerfd: OwnedFd,
    /// Tasks to poll, in wake order.
    ready: RefCell<VecDeque<Arc<TaskCell>>>,
    /// Swapped with the remote queue so neither reallocates.
    spare: RefCell<Vec<Arc<TaskCell>>>,
    events: RefCell<Vec<epoll::Event>>,
    pub(crate) timers: RefCell<Timers>,
    pub(crate) fds: RefCell<Slab<FdSlot>>,
    /// Counts fd registrations so a reused slab key gets a new token.
    pub(crate) fd_generation: Cell<u32>,
    main_waker: Waker,
    /// A loop is running on this thread (sleeps and fd waits register here
    /// only then: outside a loop nobody would fire them).
    pub(crate) running: Cell<bool>,
    /// The deadline the timerfd is armed for.
    armed: Cell<Option<Instant>>,
}

thread_local! {
    static CONTEXT: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's runtime state, if it has any.
pub(crate) fn with_local<R>(f: impl FnOnce(&Local) -> R) -> Option<R> {
    CONTEXT
        .try_with(|c| c.try_borrow().ok()?.as_ref().map(|l| f(l)))
        .ok()
        .flatten()
}

/// Runs `f` with this thread's runtime state while its loop runs.
pub(crate) fn with_running<R>(f: impl FnOnce(&Local) -> R) -> Option<R> {
    with_local(|l| l.running.get().then(|| f(l))).flatten()
}

/// This thread's runtime state, created on first use (for `block_on`).
pub(crate) fn local_or_create() -> io::Result<Rc<Local>> {
    if let Some(l) = CONTEXT.with_borrow(|c| c.clone()) {
        return Ok(l);
    }
    let local = Rc::new(Local::new(ThreadShared::new(None)?)?);
    CONTEXT.set(Some(local.clone()));
    Ok(local)
}

/// Makes `local` this thread's runtime state (a worker thread).
pub(crate) fn install(local: Rc<Local>) {
    CONTEXT.set(Some(local));
}

/// Removes this thread's runtime state.
pub(crate) fn uninstall() -> Option<Rc<Local>> {
    CONTEXT.take()
}

impl Local {
    pub(crate) fn new(shared: Arc<ThreadShared>) -> io::Result<Local> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let timerfd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )?;
        epoll::add(
            &epoll,
            &shared.wake_fd,
            epoll::EventData::new_u64(WAKE_TOKEN),
            epoll::EventFlags::IN,
        )?;
        epoll::add(
            &epoll,
            &timerfd,
            epoll::EventData::new_u64(TIMER_TOKEN),
            epoll::EventFlags::IN,
        )?;
        let main_waker = Waker::from(Arc::new(MainWake(shared.clone())));
        Ok(Local {
            shared,
            epoll,
            timerfd,
            ready: RefCell::new(VecDeque::with_capacity(64)),
            spare: RefCell::new(Vec::with_capacity(64)),
            events: RefCell::new(Vec::with_capacity(EVENTS)),
            timers: RefCell::default(),
            fds: RefCell::default(),
            fd_generation: Cell::new(0),
            main_waker,
            running: Cell::new(false),
            armed: Cell::new(None),
        })
    }

    /// Runs the loop until `main` returns a value. `main` is called first
    /// and then whenever the loop's main waker was woken.
    pub(crate) fn run<T>(&self, mut main: impl FnMut(&mut Context<'_>) -> Option<T>) -> T {
        let _running = Running::enter(self);
        let waker = self.main_waker.clone();
        let mut cx = Context::from_waker(&waker);
        self.shared.main_woken.store(true, Ordering::SeqCst);
        loop {
            self.take_remote();
            if self.shared.main_woken.swap(false, Ordering::SeqCst)
                && let Some(out) = main(&mut cx)
            {
                return out;
            }
            for _ in 0..BUDGET {
                // The borrow ends before the poll: the task may wake itself.
                let task = self.ready.borrow_mut().pop_front();
                match task {
                    Some(task) => task.run(),
                    None => break,
                }
            }
            self.fire_timers();
            let block = self.ready.borrow().is_empty() && self.shared.park();
            self.poll_io(block);
        }
    }

    /// Moves other threads' wakes onto the ready queue and clears `parked`.
    fn take_remote(&self) {
        let mut spare = self.spare.borrow_mut();
        let orphans = {
            let mut remote = lock(&self.shared.remote);
            remote.parked = false;
            std::mem::swap(&mut remote.queue, &mut *spare);
            if remote.orphans.is_empty() {
                None
            } else {
                Some(std::mem::take(&mut remote.orphans))
            }
        };
        self.ready.borrow_mut().extend(spare.drain(..));
        for orphan in orphans.into_iter().flatten() {
            crate::fd::deregister(self, &orphan.fd, orphan.key, orphan.generation);
        }
    }

    /// Wakes every sleep whose deadline has passed and arms the timerfd for
    /// the next one.
    fn fire_timers(&self) {
        let now = Instant::now();
        loop {
            // One at a time: the borrow ends before the wake.
            let due = self.timers.borrow_mut().pop_due(now);
            match due {
                Some(Some(waker)) => waker.wake(),
                Some(None) => {}
                None => break,
            }
        }
        let next = self.timers.borrow_mut().next_deadline();
        if next != self.armed.get() {
            // A disarmed timerfd (all zero) for no deadline; otherwise at
            // least 1 ns, since zero would disarm it.
            let value = next.map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(now)
                    .max(Duration::from_nanos(1))
            });
            let spec = Itimerspec {
                it_interval: Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: timespec(value),
            };
            // Cannot fail for a valid descriptor and value.
            if timerfd_settime(&self.timerfd, TimerfdTimerFlags::empty(), &spec).is_ok() {
                self.armed.set(next);
            }
        }
    }

    /// Waits for file descriptor events (blocking only if `block`) and
    /// wakes what waits on them.
    fn poll_io(&self, block: bool) {
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let mut events = self.events.borrow_mut();
        events.clear();
        let timeout = if block { None } else { Some(&zero) };
        match epoll::wait(&self.epoll, spare_capacity(&mut events), timeout) {
            Ok(_) | Err(Errno::INTR) => {}
            // Only a broken descriptor (a bug here, not a peer's doing)
            // fails epoll_wait.
            Err(e) => panic!("epoll_wait failed on a runtime thread: {e}"),
        }
        for event in events.iter() {
            let flags = event.flags;
            match event.data.u64() {
                WAKE_TOKEN => {
                    let mut buf = [0u8; 8];
                    let _ = rustix::io::read(&self.shared.wake_fd, &mut buf);
                }
                TIMER_TOKEN => {
                    let mut buf = [0u8; 8];
                    let _ = rustix::io::read(&self.timerfd, &mut buf);
                    self.armed.set(None);
                }
                token => crate::fd::dispatch(self, token, flags),
            }
        }
    }

    /// Refuses new tasks and drops every task of this thread, on it.
    pub(crate) fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = lock(&self.shared.tasks).drain().collect();
        for task in tasks {
            task.cancel();
        }
        let (queue, orphans) = {
            let mut remote = lock(&self.shared.remote);
            (
                std::mem::take(&mut remote.queue),
                std::mem::take(&mut remote.orphans),
            )
        };
        drop(queue);
        drop(orphans);
        self.ready.borrow_mut().clear();
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.close();
    }
}

/// Marks a loop as running for its lifetime (also when unwinding).
struct Running<'a>(&'a Local);

impl<'a> Running<'a> {
    fn enter(local: &'a Local) -> Running<'a> {
        assert!(
            !local.running.replace(true),
            "block_on called inside a runtime loop: it would stall that thread's tasks"
        );
        Running(local)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.set(false);
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wake eventfd's counter (and resets it).
    fn kicks(shared: &ThreadShared) -> u64 {
        let mut buf = [0u8; 8];
        match rustix::io::read(&shared.wake_fd, &mut buf) {
            Ok(_) => u64::from_ne_bytes(buf),
            Err(_) => 0,
        }
    }

    #[test]
    fn remote_wakes_write_the_eventfd_once_per_park_and_never_when_running() {
        // No loop on this test thread: every spawn takes the remote path.
        let shared = ThreadShared::new(None).unwrap();
        shared.main_woken.store(false, Ordering::SeqCst);
        shared.spawn(Box::pin(async {}));
        assert_eq!(kicks(&shared), 0, "the thread was not parked");
        assert!(!shared.park(), "work is queued: the thread must not block");
        lock(&shared.remote).queue.clear();
        assert!(shared.park());
        for _ in 0..3 {
            shared.spawn(Box::pin(async {}));
        }
        assert_eq!(kicks(&shared), 1, "a burst of wakes costs one write");
        assert_eq!(lock(&shared.remote).queue.len(), 3);
        lock(&shared.remote).queue.clear();
        lock(&shared.tasks).clear();
    }
}
