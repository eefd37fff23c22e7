//! The TCMU handler driven by the in-process model of the kernel's side
//! (`parastor_emulated::tcmu::TcmuKernel`), shared by the TCMU tests and the
//! TCMU benchmark.
//!
//! - [`run_fetched_inline`]: the handler's own steps on the caller's thread
//!   (fetch, run in place, complete), for a LUN that completes inline;
//! - [`TcmuRig`]: `parastor_tcmu::serve` on a runtime thread, one path per
//!   model kernel, eventfd doorbells both ways.

use std::sync::Arc;

use parastor_core::{InitiatorId, SgList};
use parastor_emulated::tcmu::{TcmuConfig, TcmuKernel};
use parastor_runtime::{EventFd, Runtime, Task, block_on};
use parastor_scsi::{Lun, ScsiResult, SenseDelivery};
use parastor_tcmu::ring::{CommandRing, RingCommand};
use parastor_tcmu::serve::{EventFdDoorbell, Path, ServeError, ServeStats, serve};

/// Fetches what the kernel posted on `ring` and runs each command in place
/// on `lun` (initiator 1, autosense), completing it on the ring; `each`
/// sees every result. Returns how many commands ran. `cmds` is the
/// caller's reusable fetch buffer, so the steady state allocates nothing.
///
/// # Panics
///
/// If the ring refuses to fetch, a command's data ranges are not in the
/// ring's memory, the LUN does not complete inline, or a completion does
/// not move the tail (it always does for commands completed in order).
pub fn run_fetched_inline(
    ring: &mut CommandRing,
    lun: &Lun,
    cmds: &mut Vec<RingCommand>,
    mut each: impl FnMut(&ScsiResult),
) -> usize {
    let mem = ring.memory().clone();
    ring.fetch(cmds).expect("fetch from the model's ring");
    let mut ran = 0;
    for cmd in cmds.drain(..) {
        let sg = SgList::new(&*mem, &cmd.data, true).expect("data ranges in the ring's memory");
        let result = lun
            .run_now(
                cmd.cdb.as_bytes(),
                &sg,
                InitiatorId::new(1),
                SenseDelivery::Autosense,
            )
            .expect("the LUN completes inline");
        each(&result);
        assert!(
            ring.complete(cmd.id, &result),
            "an in-order completion moves the tail"
        );
        ring.recycle(cmd);
        ran += 1;
    }
    ran
}

/// `serve` on its own runtime thread, serving one path per model kernel;
/// path `i` is initiator `i + 1`.
pub struct TcmuRig {
    /// The kernels, one per path, in path order.
    pub kernels: Vec<TcmuKernel>,
    stop: Arc<EventFd>,
    task: Option<Task<Result<ServeStats, ServeError>>>,
    _runtime: Runtime,
}

impl TcmuRig {
    /// Starts serving `lun` on one path per config.
    pub fn start(lun: Lun, configs: &[TcmuConfig]) -> TcmuRig {
        let kernels: Vec<TcmuKernel> = configs
            .iter()
            .map(|c| TcmuKernel::new(*c).expect("model kernel"))
            .collect();
        let paths = kernels
            .iter()
            .enumerate()
            .map(|(i, k)| Path {
                ring: CommandRing::open(k.memory().clone(), k.map_len()).expect("open the ring"),
                doorbell: Arc::new(EventFdDoorbell {
                    posted: k.to_handler().clone(),
                    completed: k.to_kernel().clone(),
                }),
                initiator: InitiatorId::new(i as u128 + 1),
            })
            .collect();
        let cpus = parastor_runtime::allowed_cpus().expect("allowed CPUs");
        let runtime = Runtime::per_cpu(&cpus[cpus.len() - 1..]).expect("runtime");
        let stop = Arc::new(EventFd::new().expect("eventfd"));
        let signal = stop.clone();
        let task =
            runtime
                .thread(0)
                .expect("runtime thread")
                .spawn(serve(paths, lun, async move {
                    let _ = signal.wait().await;
                }));
        TcmuRig {
            kernels,
            stop,
            task: Some(task),
            _runtime: runtime,
        }
    }

    /// Starts serving `lun` on one path.
    pub fn one(lun: Lun, config: TcmuConfig) -> TcmuRig {
        Self::start(lun, &[config])
    }

    /// The first path's kernel.
    pub fn k(&mut self) -> &mut TcmuKernel {
        &mut self.kernels[0]
    }

    /// Whether the serve task has ended (it should not before
    /// [`finish`](Self::finish)).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the handler and returns what it did.
    ///
    /// # Panics
    ///
    /// If called twice, or the serve task ended without a result.
    pub fn finish(&mut self) -> Result<ServeStats, ServeError> {
        self.stop.signal().expect("signal stop");
        block_on(self.task.take().expect("finish once")).expect("serve task ended")
    }
}
