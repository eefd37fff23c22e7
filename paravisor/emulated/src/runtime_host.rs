//! A StorVSP host on a `parastor-runtime` thread, for the emulated guest
//! driven from another thread: the cross-thread configuration the service
//! runs in, with the guest driver standing in for the VM.
//!
//! Each channel gets two [`EventFdSignal`]s: guest → host (the guest's
//! ring writes notify it; the worker's [`StorvspChannel::run`] waits on
//! it in its runtime thread's epoll loop) and host → guest (the worker's
//! completions notify it; the guest blocks on it in
//! [`parastor_runtime::block_on`] on its own thread, for at most
//! [`GUEST_WAIT_SLICE`] at a time). The guest thus sleeps in `epoll_wait`
//! like a vCPU waiting for its interrupt rather than spinning: every
//! request at queue depth 1 pays two cross-thread wake-ups, which is the
//! cost this configuration exists to measure.

use crate::storvsc::{GuestConfig, Host, Progress, Storvsc, StorvscError};
use crate::vm::StorvspVm;
use parastor_core::{GpaRange, GuestMem};
use parastor_runtime::{EventFdSignal, Runtime, Task, ThreadHandle, block_on, sleep};
use parastor_storvsp::{Controller, StorvspChannel, StorvspError};
use parastor_vmbus::signal::Wait;
use parastor_vmbus::{Channel, RingRegion};
use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

/// The longest the guest blocks on its signal in one [`Host::run`]: a
/// completion always signals, so this bounds only a wait for one that is
/// not coming (the driver's own deadline then reports it).
pub const GUEST_WAIT_SLICE: Duration = Duration::from_millis(20);

/// The StorVSP workers of a [`StorvspVm`], on a runtime thread.
///
/// Built from the VM, it shares the VM's guest memory, rings and
/// controller but has its own signals (eventfds), so the VM's in-process
/// signals and hosts must not be used on the same channels at the same
/// time. The primary channel's worker starts at once; sub-channel workers
/// join that thread as the guest opens them. Dropping it cancels the
/// workers (and stops the runtime, if it owns one).
pub struct RuntimeHost {
    /// Declared before `runtime`: detached first, then cancelled by the
    /// runtime's shutdown.
    workers: Mutex<Vec<Task<StorvspError>>>,
    thread: ThreadHandle,
    controller: Arc<Controller>,
    mem: GuestMem,
    rings: Vec<(RingRegion, RingRegion)>,
    data: GpaRange,
    to_host: Vec<Arc<EventFdSignal>>,
    to_guest: Vec<Arc<EventFdSignal>>,
    runtime: Option<Runtime>,
}

impl fmt::Debug for RuntimeHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeHost")
            .field("thread", &self.thread)
            .field("rings", &self.rings)
            .finish_non_exhaustive()
    }
}

impl RuntimeHost {
    /// Serves `vm` on a runtime of its own: one thread, pinned to the last
    /// CPU this process may run on.
    pub fn start(vm: &StorvspVm) -> io::Result<RuntimeHost> {
        let cpus = parastor_runtime::allowed_cpus()?;
        let cpu = *cpus
            .last()
            .ok_or_else(|| io::Error::other("this process may run on no CPU"))?;
        let runtime = Runtime::per_cpu(&[cpu])?;
        let thread = runtime
            .thread(0)
            .cloned()
            .ok_or_else(|| io::Error::other("a one-CPU runtime has no thread"))?;
        let mut host = Self::on_thread(vm, thread)?;
        host.runtime = Some(runtime);
        Ok(host)
    }

    /// Serves `vm` on `thread` (a runtime the caller keeps running).
    pub fn on_thread(vm: &StorvspVm, thread: ThreadHandle) -> io::Result<RuntimeHost> {
        let n = vm.channel_count();
        let signals = |_| EventFdSignal::new().map(Arc::new);
        let host = RuntimeHost {
            workers: Mutex::new(Vec::with_capacity(n)),
            thread,
            controller: vm.controller().clone(),
            mem: vm.shared_memory(),
            rings: (0..n).filter_map(|i| vm.rings(i)).collect(),
            data: vm.data_area(),
            to_host: (0..n).map(signals).collect::<io::Result<_>>()?,
            to_guest: (0..n).map(signals).collect::<io::Result<_>>()?,
            runtime: None,
        };
        host.spawn_worker(0)?;
        Ok(host)
    }

    /// The runtime thread the workers run on.
    pub fn thread(&self) -> &ThreadHandle {
        &self.thread
    }

    /// Builds channel `i`'s worker here (owning what it uses) and moves it
    /// to the runtime thread.
    fn spawn_worker(&self, i: usize) -> io::Result<()> {
        let (&(incoming, outgoing), to_guest, to_host) =
            match (self.rings.get(i), self.to_guest.get(i), self.to_host.get(i)) {
                (Some(r), Some(g), Some(h)) => (r, g.clone(), h.clone()),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("the VM has no channel {i} ({} laid out)", self.rings.len()),
                    ));
                }
            };
        let channel = Channel::host_owned(self.mem.clone(), incoming, outgoing, to_guest)
            .map_err(|e| io::Error::other(format!("channel {i}'s host endpoint: {e}")))?;
        let mut worker = if i == 0 {
            StorvspChannel::primary(self.controller.clone(), channel)
        } else {
            StorvspChannel::sub_channel(self.controller.clone(), channel)
        };
        let task = self
            .thread
            .spawn(async move { worker.run(&*to_host).await });
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        Ok(())
    }

    /// The guest's endpoint of channel `i`, notifying this host's worker.
    fn guest_channel(&self, i: usize) -> Result<Channel<'_>, StorvscError> {
        let (&(incoming, outgoing), to_host) = self
            .rings
            .get(i)
            .zip(self.to_host.get(i))
            .ok_or(StorvscError::BadChannel { channel: i })?;
        Ok(Channel::guest(&*self.mem, incoming, outgoing, &**to_host)?)
    }

    /// A driver on channel 0 served by this host, not yet negotiated.
    pub fn guest(
        &self,
        config: GuestConfig,
    ) -> Result<Storvsc<'_, RuntimeGuest<'_>>, StorvscError> {
        Ok(Storvsc::new(
            config,
            self.guest_channel(0)?,
            RuntimeGuest {
                host: self,
                opened: 1,
            },
            self.data,
        ))
    }

    /// A driver as [`RuntimeHost::guest`], negotiated and with the bus
    /// scanned once ([`Storvsc::connect`]).
    pub fn connect(
        &self,
        config: GuestConfig,
    ) -> Result<Storvsc<'_, RuntimeGuest<'_>>, StorvscError> {
        let mut g = self.guest(config)?;
        g.connect()?;
        Ok(g)
    }

    /// The error of a worker that has ended, if one has (a worker ends
    /// only on a channel error, once its requests have drained).
    fn ended_worker(&self) -> Option<StorvspError> {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let i = workers.iter().position(|t| t.is_finished())?;
        let task = workers.swap_remove(i);
        drop(workers);
        match block_on(task) {
            Ok(e) => Some(e),
            // A worker panic is a bug in the service: surface it in the
            // test that hit it.
            Err(e) => panic!("the StorVSP worker on the runtime thread failed: {e}"),
        }
    }
}

/// The guest's view of a [`RuntimeHost`]: waits on the completion signals
/// of the channels it opened.
#[derive(Debug)]
pub struct RuntimeGuest<'a> {
    host: &'a RuntimeHost,
    opened: usize,
}

impl<'a> Host<'a> for RuntimeGuest<'a> {
    /// Blocks until a worker signals the guest (or [`GUEST_WAIT_SLICE`]
    /// passes); fails if a worker has ended its channel.
    fn run(&mut self) -> Result<Progress, StorvscError> {
        if let Some(e) = self.host.ended_worker() {
            return Err(StorvscError::Host(e));
        }
        let signals = self.host.to_guest.get(..self.opened).unwrap_or_default();
        block_on(async {
            let mut timeout = pin!(sleep(GUEST_WAIT_SLICE));
            poll_fn(|cx| {
                let mut signalled = false;
                // Poll every one, so each is armed for the next wake.
                for s in signals {
                    signalled |= s.poll_wait(cx).is_ready();
                }
                if signalled || timeout.as_mut().poll(cx).is_ready() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await
        });
        Ok(Progress::Elsewhere)
    }

    /// Starts sub-channel `index`'s worker on the runtime thread.
    fn open_sub_channel(&mut self, index: u16) -> Result<Channel<'a>, StorvscError> {
        let i = usize::from(index);
        if i == 0 || i >= self.host.rings.len() || i != self.opened {
            return Err(StorvscError::NoSubChannel { index });
        }
        if self.host.spawn_worker(i).is_err() {
            return Err(StorvscError::NoSubChannel { index });
        }
        self.opened += 1;
        self.host.guest_channel(i)
    }
}
