//! The per-CPU [`Runtime`], [`ThreadHandle`]s that spawn onto its threads,
//! and [`block_on`].

use crate::task::{Task, wrap};
use crate::thread::{Local, ThreadShared, install, local_or_create, uninstall, with_running};
use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// A handle to one runtime thread; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct ThreadHandle {
    shared: Arc<ThreadShared>,
}

impl fmt::Debug for ThreadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadHandle")
            .field("cpu", &self.shared.cpu)
            .finish()
    }
}

impl ThreadHandle {
    /// Moves `future` to this thread and runs it there as a task; it is
    /// polled only on this thread from then on. Dropping the returned
    /// [`Task`] detaches it. On a thread that has shut down the task is
    /// dropped at once and its `Task` reports [`crate::JoinError::Cancelled`].
    pub fn spawn<F>(&self, future: F) -> Task<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (body, task) = wrap(future);
        self.shared.spawn(body);
        task
    }

    /// The CPU the thread is pinned to (`None` for a [`block_on`] thread).
    pub fn cpu(&self) -> Option<usize> {
        self.shared.cpu
    }

    /// Whether the calling thread is this runtime thread.
    pub fn is_current(&self) -> bool {
        self.shared.is_current()
    }
}

/// The runtime thread the caller runs on, while a loop runs there (inside
/// a task, or inside [`block_on`]).
pub fn current() -> Option<ThreadHandle> {
    with_running(|l| ThreadHandle {
        shared: l.shared.clone(),
    })
}

/// Runs `future` to completion on the calling thread, with the same loop,
/// reactor and timers as a runtime thread (for the command line and tests).
/// Tasks spawned onto this thread (through [`current`]) run while it
/// blocks; any still pending afterwards wait for the next `block_on` on
/// this thread.
///
/// # Panics
///
/// If called inside a runtime loop (a task, or another `block_on`): it
/// would stall that thread's tasks. Also if the thread's epoll, eventfd or
/// timerfd cannot be created (out of file descriptors).
pub fn block_on<F: Future>(future: F) -> F::Output {
    let local = match local_or_create() {
        Ok(l) => l,
        Err(e) => panic!("block_on cannot create its epoll, eventfd and timerfd: {e}"),
    };
    let mut future = pin!(future);
    local.run(|cx| match future.as_mut().poll(cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    })
}

/// The CPUs this process may run on (its affinity mask).
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// Worker threads, one per CPU, each pinned to its CPU and running its own
/// loop. Dropping the runtime shuts it down like [`Runtime::shutdown`].
pub struct Runtime {
    threads: Vec<ThreadHandle>,
    joins: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Runtime {
    /// Starts one worker thread per CPU in `cpus`, named `parastor-cpuN`,
    /// each with its affinity set to that CPU. Fails if `cpus` is empty,
    /// names a CPU twice, or names one this process may not run on.
    pub fn per_cpu(cpus: &[usize]) -> io::Result<Runtime> {
        if cpus.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a runtime needs at least one CPU",
            ));
        }
        let allowed = allowed_cpus()?;
        for (i, cpu) in cpus.iter().enumerate() {
            if cpus[..i].contains(cpu) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("CPU {cpu} is listed twice"),
                ));
            }
            if !allowed.contains(cpu) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("CPU {cpu} is not in this process's affinity mask {allowed:?}"),
                ));
            }
        }
        let mut runtime = Runtime {
            threads: Vec::with_capacity(cpus.len()),
            joins: Vec::with_capacity(cpus.len()),
        };
        for &cpu in cpus {
            // On failure `runtime` drops, stopping the threads started.
            let shared = ThreadShared::new(Some(cpu))?;
            let (started_tx, started_rx) = mpsc::channel();
            let worker = shared.clone();
            let join = std::thread::Builder::new()
                .name(format!("parastor-cpu{cpu}"))
                .spawn(move || worker_main(worker, cpu, &started_tx))?;
            let started = started_rx.recv().unwrap_or_else(|_| {
                Err(io::Error::other(format!(
                    "runtime thread for CPU {cpu} exited while starting"
                )))
            });
            runtime.threads.push(ThreadHandle { shared });
            runtime.joins.push(join);
            started?;
        }
        Ok(runtime)
    }

    /// The runtime's threads, in the order of the CPUs given.
    pub fn threads(&self) -> &[ThreadHandle] {
        &self.threads
    }

    /// The `i`-th thread.
    pub fn thread(&self, i: usize) -> Option<&ThreadHandle> {
        self.threads.get(i)
    }

    /// Stops every thread and waits for it: intake stops, tasks still
    /// pending are dropped on their own thread (their [`Task`]s report
    /// cancellation), then the threads exit and are joined.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for t in &self.threads {
            t.shared.request_stop();
        }
        for join in self.joins.drain(..) {
            // A worker that panicked has nothing left to clean up.
            let _ = join.join();
        }
    }
}

/// A worker thread: pin, build the loop state, run until stopped, then
/// drop the remaining tasks here.
fn worker_main(shared: Arc<ThreadShared>, cpu: usize, started: &mpsc::Sender<io::Result<()>>) {
    let setup = || -> io::Result<Rc<Local>> {
        let mut set = CpuSet::new();
        set.set(cpu);
        sched_setaffinity(None, &set)?;
        Ok(Rc::new(Local::new(shared.clone())?))
    };
    let local = match setup() {
        Ok(l) => l,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    install(local.clone());
    let _ = started.send(Ok(()));
    local.run(|_| shared.stop_requested().then_some(()));
    // Tasks are dropped while this thread's state is still installed, so
    // their sleeps and fd registrations clean up here.
    local.close();
    drop(local);
    drop(uninstall());
}
