//! Tasks: a spawned future pinned to its thread, its waker, and the
//! [`Task`] handle that joins it.

use crate::lock;
use crate::thread::ThreadShared;
use std::any::Any;
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// A spawned future, type-erased.
pub(crate) type TaskFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A task as its thread and its wakers see it.
pub(crate) struct TaskCell {
    /// Its key in the thread's task set.
    key: usize,
    /// Set while the task sits in a ready queue (or has finished): a wake
    /// then does nothing, so a task is queued at most once.
    scheduled: AtomicBool,
    /// Polled only on `thread` (the lock is never contended; it makes the
    /// cell `Sync` for wakers on other threads).
    future: Mutex<Option<TaskFuture>>,
    thread: Arc<ThreadShared>,
}

impl TaskCell {
    /// A task already counted as scheduled (the spawner queues it).
    pub(crate) fn new(key: usize, future: TaskFuture, thread: Arc<ThreadShared>) -> TaskCell {
        TaskCell {
            key,
            scheduled: AtomicBool::new(true),
            future: Mutex::new(Some(future)),
            thread,
        }
    }

    /// Polls the task once (on its thread).
    pub(crate) fn run(self: &Arc<Self>) {
        // Cleared before the poll: a wake during it queues the task again.
        self.scheduled.store(false, Ordering::SeqCst);
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        let finished = {
            let mut future = lock(&self.future);
            match future.as_mut() {
                Some(f) => f.as_mut().poll(&mut cx).is_ready().then(|| future.take()),
                None => None,
            }
        };
        if let Some(done) = finished {
            self.scheduled.store(true, Ordering::SeqCst);
            drop(done);
            self.thread.remove_task(self.key);
        }
    }

    /// Drops the future unfinished (the thread is closing).
    pub(crate) fn cancel(&self) {
        self.scheduled.store(true, Ordering::SeqCst);
        let future = lock(&self.future).take();
        drop(future);
    }
}

impl Wake for TaskCell {
    fn wake(self: Arc<Self>) {
        if !self.scheduled.swap(true, Ordering::SeqCst) {
            let thread = self.thread.clone();
            thread.schedule(self);
        }
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.scheduled.swap(true, Ordering::SeqCst) {
            self.thread.schedule(self.clone());
        }
    }
}

/// Why a [`Task`] produced no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The task was dropped before it finished: its thread shut down (or
    /// was already shut down when it was spawned).
    Cancelled,
    /// The task panicked; the panic message, if it was a string.
    Panicked(String),
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Cancelled => f.write_str("task cancelled: its runtime thread shut down"),
            JoinError::Panicked(msg) => write!(f, "task panicked: {msg}"),
        }
    }
}

impl std::error::Error for JoinError {}

impl JoinError {
    fn panicked(payload: Box<dyn Any + Send>) -> JoinError {
        let msg = match payload.downcast::<String>() {
            Ok(s) => *s,
            Err(payload) => match payload.downcast::<&'static str>() {
                Ok(s) => (*s).to_owned(),
                Err(_) => "(not a string)".to_owned(),
            },
        };
        JoinError::Panicked(msg)
    }
}

/// Where a task's outcome waits for its [`Task`] handle.
struct JoinState<T> {
    inner: Mutex<JoinInner<T>>,
}

enum JoinInner<T> {
    Running(Option<Waker>),
    Done(Result<T, JoinError>),
    Taken,
}

impl<T> JoinState<T> {
    fn finish(&self, result: Result<T, JoinError>) {
        let waker = {
            let mut inner = lock(&self.inner);
            match std::mem::replace(&mut *inner, JoinInner::Done(result)) {
                JoinInner::Running(waker) => waker,
                // Finished once already: keep the first outcome.
                other => {
                    *inner = other;
                    None
                }
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The task's end of its [`JoinState`]: dropping it unsent reports
/// cancellation.
struct JoinSender<T>(Option<Arc<JoinState<T>>>);

impl<T> JoinSender<T> {
    fn send(&mut self, result: Result<T, JoinError>) {
        if let Some(state) = self.0.take() {
            state.finish(result);
        }
    }
}

impl<T> Drop for JoinSender<T> {
    fn drop(&mut self) {
        self.send(Err(JoinError::Cancelled));
    }
}

/// The handle of a spawned task: awaiting it gives the task's output.
/// Dropping it detaches the task, which runs on.
#[must_use = "dropping a Task detaches it; await it for its output"]
pub struct Task<T> {
    state: Arc<JoinState<T>>,
}

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> Task<T> {
    /// Whether the task has finished (with a value, a panic or
    /// cancellation).
    pub fn is_finished(&self) -> bool {
        !matches!(*lock(&self.state.inner), JoinInner::Running(_))
    }
}

impl<T> Future for Task<T> {
    type Output = Result<T, JoinError>;

    /// # Panics
    ///
    /// If polled again after it returned its output.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = lock(&self.state.inner);
        match std::mem::replace(&mut *inner, JoinInner::Taken) {
            JoinInner::Done(result) => Poll::Ready(result),
            JoinInner::Running(waker) => {
                let waker = match waker {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *inner = JoinInner::Running(Some(waker));
                Poll::Pending
            }
            JoinInner::Taken => panic!("Task polled after it returned its output"),
        }
    }
}

/// Wraps `future` into a task body that reports its output (or panic) to
/// the returned handle.
pub(crate) fn wrap<F>(future: F) -> (TaskFuture, Task<F::Output>)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let state = Arc::new(JoinState {
        inner: Mutex::new(JoinInner::Running(None)),
    });
    let mut sender = JoinSender(Some(state.clone()));
    let body = async move {
        let mut future = pin!(future);
        poll_fn(|cx| {
            // A panicking task ends with its panic reported to the joiner;
            // the thread and its other tasks carry on.
            match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(v)) => {
                    sender.send(Ok(v));
                    Poll::Ready(())
                }
                Err(payload) => {
                    sender.send(Err(JoinError::panicked(payload)));
                    Poll::Ready(())
                }
            }
        })
        .await;
    };
    (Box::pin(body), Task { state })
}
