//! [`run`]: `parastor tcmu` on the host's kernel — configfs, the `uio`
//! devices, the serve loop, the control FIFO and the signals, set up and
//! torn down in the order the kernel needs.

use super::{ControlCommand, Target, TcmuArgs, build_target};
use crate::cli::CliError;
use futures::channel::oneshot;
use parastor_core::InitiatorId;
use parastor_tcmu::configfs::{
    self, Backstore, BackstoreConfig, ConfigFs, ConfigFsError, LoopTarget, ScsiNames,
};
use parastor_tcmu::ring::CommandRing;
use parastor_tcmu::serve::{self, ServeError, ServeStats};
use parastor_tcmu::uio::{UioDevice, UioPaths};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// The TCMU HBA directory every backstore goes in: `core/user_0`.
const HBA: u32 = 0;

/// How long the kernel may take to show a LUN's block and sg devices
/// (a slow emulated machine scans slowly).
const DEVICE_TIMEOUT: Duration = Duration::from_secs(120);

/// How the main thread learns it must stop: the events (signal, serve loop
/// ended) and the flag set on a signal, for waits that cannot take events.
struct Wake {
    events: mpsc::Sender<Event>,
    event: mpsc::Receiver<Event>,
    stopping: Arc<AtomicBool>,
}

/// The error of a serve loop that ended without being told to.
const SERVE_ENDED: &str = "the serve loop ended on its own";

/// What the main thread waits for once the LUN is served.
enum Event {
    /// SIGINT or SIGTERM.
    Signal(i32),
    /// The serve loop ended by itself (the kernel broke a ring).
    ServeEnded,
}

fn configfs_error(e: ConfigFsError) -> CliError {
    CliError::new(e.to_string())
}

/// Serves the LUN `args` describe until SIGINT or SIGTERM, then drains and
/// removes everything made. A failure at any point removes what was made
/// so far and returns one line saying what failed.
pub fn run(args: TcmuArgs) -> Result<ExitCode, CliError> {
    let identity = args.check()?;
    let target = Arc::new(build_target(&args, identity)?);
    target.lun().limit_transfer(configfs::MAX_TRANSFER_BYTES);
    let fs = ConfigFs::host();
    if !fs.root().is_dir() {
        return Err(CliError::new(format!(
            "{} is missing: mount configfs and load target_core_user and tcm_loop \
             (modprobe target_core_user tcm_loop)",
            fs.root().display()
        )));
    }

    // Signals are caught before anything exists that a signal would leave
    // behind.
    let (events, event) = mpsc::channel();
    let stopping = Arc::new(AtomicBool::new(false));
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| CliError::new(format!("cannot catch SIGINT and SIGTERM: {e}")))?;
    {
        let events = events.clone();
        let stopping = stopping.clone();
        std::thread::Builder::new()
            .name("parastor-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    stopping.store(true, Ordering::SeqCst);
                    let _ = events.send(Event::Signal(signal));
                }
            })
            .map_err(|e| CliError::new(format!("cannot start the signal thread: {e}")))?;
    }

    configfs::ensure_pr_dir(Path::new(configfs::PR_STATE_DIR)).map_err(configfs_error)?;
    let uio_paths = UioPaths::default();
    let removed = fs
        .cleanup_leftovers(&|name| args.is_ours(name), &|hba, name| {
            UioDevice::is_served(&uio_paths, hba, name)
        })
        .map_err(configfs_error)?;
    for dir in removed {
        eprintln!("parastor: removed leftover {}", dir.display());
    }

    let mut session = Session::default();
    let wake = Wake {
        events,
        event,
        stopping,
    };
    let outcome = serve_until_stopped(&mut session, &args, &fs, &uio_paths, &target, &wake);
    let torn_down = session.teardown();
    match (outcome, torn_down) {
        // The serve loop's own error says why it ended.
        (Err(e), Err(why)) if e.to_string() == SERVE_ENDED => Err(why),
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => Ok(ExitCode::SUCCESS),
    }
}

/// Starts serving into `session`, says so (the control FIFO first, so a
/// command written as soon as the ready file appears reaches it), and
/// waits for a signal or for the serve loop to end.
fn serve_until_stopped(
    session: &mut Session,
    args: &TcmuArgs,
    fs: &ConfigFs,
    uio_paths: &UioPaths,
    target: &Arc<Target>,
    wake: &Wake,
) -> Result<(), CliError> {
    let Wake {
        events,
        event,
        stopping,
    } = wake;
    let names = session
        .start(args, fs, uio_paths, target, events, stopping)
        .map_err(|e| {
            if stopping.load(Ordering::SeqCst) {
                CliError::new("stopped by a signal before the LUN was ready")
            } else {
                e
            }
        })?;
    if let Some(fifo) = &args.control {
        start_control(fifo, target.clone())?;
        session.fifo = Some(fifo.clone());
    }
    let ready = names.iter().map(|n| format!("{n}\n")).collect::<String>();
    announce(&ready, args.ready.as_deref())?;
    session.ready = args.ready.clone();
    match event.recv() {
        Ok(Event::Signal(signal)) => {
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            eprintln!("parastor: {name}: draining and removing the LUN");
            Ok(())
        }
        // Every sender gone: nothing can stop or end serving any more.
        Err(_) => Ok(()),
        Ok(Event::ServeEnded) => Err(CliError::new(SERVE_ENDED)),
    }
}

/// Writes the ready lines to standard output and, atomically (a temporary
/// file renamed into place), to `file`.
pub(super) fn announce(ready: &str, file: Option<&Path>) -> Result<(), CliError> {
    if let Some(file) = file {
        let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, ready)
            .and_then(|()| std::fs::rename(&tmp, file))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                CliError::new(format!(
                    "cannot write the ready file {}: {e}",
                    file.display()
                ))
            })?;
    }
    let mut out = io::stdout().lock();
    out.write_all(ready.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::new(format!("writing to standard output failed: {e}")))
}

/// Makes the FIFO `path` (or uses the FIFO already there) and starts the
/// thread that carries out its commands, one result line each on standard
/// error.
pub(super) fn start_control(path: &Path, target: Arc<Target>) -> Result<(), CliError> {
    let mode = rustix::fs::Mode::from_raw_mode(0o600);
    match rustix::fs::mkfifoat(rustix::fs::CWD, path, mode) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST)
            if std::fs::metadata(path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type())) => {}
        Err(e) => {
            return Err(CliError::new(format!(
                "cannot make the control FIFO {}: {}",
                path.display(),
                io::Error::from(e)
            )));
        }
    }
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("parastor-control".into())
        .spawn(move || control_loop(&path, &target))
        .map(|_| ())
        .map_err(|e| CliError::new(format!("cannot start the control thread: {e}")))
}

/// Reads commands from the FIFO for as long as the process lives: each
/// writer's lines, then waits for the next writer.
fn control_loop(path: &Path, target: &Target) {
    loop {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("parastor: control FIFO {}: {e}", path.display());
                return;
            }
        };
        for line in BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            match ControlCommand::parse(&line).and_then(|c| target.control(&c)) {
                Ok(done) => eprintln!("parastor: {done}"),
                Err(e) => eprintln!("parastor: control: {e}"),
            }
        }
    }
}

/// The running serve loop: the sender that stops it (sending, or dropping
/// it, resolves the loop's stop future) and its thread.
struct Serving {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<Result<ServeStats, ServeError>>,
}

/// Everything a run has made, torn down in the right order by
/// [`Session::teardown`].
#[derive(Default)]
struct Session {
    backstores: Vec<Backstore>,
    targets: Vec<LoopTarget>,
    serving: Option<Serving>,
    ready: Option<PathBuf>,
    fifo: Option<PathBuf>,
}

impl Session {
    /// Makes the backstores, serves their rings and links each into a
    /// tcm_loop target; the SCSI devices of each path.
    fn start(
        &mut self,
        args: &TcmuArgs,
        fs: &ConfigFs,
        uio_paths: &UioPaths,
        target: &Target,
        events: &mpsc::Sender<Event>,
        stopping: &Arc<AtomicBool>,
    ) -> Result<Vec<ScsiNames>, CliError> {
        let lun = target.lun();
        // What the LUN advertises (VPD 0xB0), now at most the TCMU limit.
        let max_transfer = lun
            .as_disk()
            .map_or(configfs::MAX_TRANSFER_BYTES, |d| d.max_transfer_bytes());
        let mut paths = Vec::new();
        for (i, name) in args.backstore_names().iter().enumerate() {
            let config = BackstoreConfig::new(
                HBA,
                name,
                target.size_bytes(),
                lun.block_size(),
                max_transfer,
            );
            self.backstores
                .push(Backstore::create(fs, &config).map_err(configfs_error)?);
            let uio = UioDevice::open_backstore(uio_paths, HBA, name)
                .map_err(|e| CliError::new(e.to_string()))?;
            let ring = CommandRing::open(uio.memory(), uio.map_len() as u64).map_err(|e| {
                CliError::new(format!("the ring of uio{} ({name}): {e}", uio.index()))
            })?;
            paths.push(serve::Path {
                ring,
                doorbell: Arc::new(uio),
                // Each backstore is its own I_T nexus.
                initiator: InitiatorId::new(i as u128 + 1),
            });
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let lun = lun.clone();
        let done = events.clone();
        // The loop runs on a thread of its own, not pinned: the kernel
        // wakes it from whichever CPU posted a command, and on the same CPU
        // that wake-up is cheapest.
        let thread = std::thread::Builder::new()
            .name("parastor-serve".into())
            .spawn(move || {
                let stop = async move {
                    let _ = stopped.await;
                };
                let result = parastor_runtime::block_on(serve::serve(paths, lun, stop));
                let _ = done.send(Event::ServeEnded);
                result
            })
            .map_err(|e| CliError::new(format!("cannot start the serve thread: {e}")))?;
        self.serving = Some(Serving { stop, thread });

        // Linking each LUN makes the kernel scan it through the ring, now
        // served.
        let mut names = Vec::new();
        for backstore in &self.backstores {
            let target = LoopTarget::create(fs, backstore).map_err(configfs_error)?;
            self.targets.push(target);
            let Some(target) = self.targets.last() else {
                continue;
            };
            let give_up = || stopping.load(Ordering::SeqCst);
            names.push(
                target
                    .wait_for_devices(
                        Path::new("/sys"),
                        Path::new("/dev"),
                        DEVICE_TIMEOUT,
                        &give_up,
                    )
                    .map_err(configfs_error)?,
            );
        }
        Ok(names)
    }

    /// Removes everything in order: the ready file, the tcm_loop targets
    /// (still served: removing a SCSI device may send it commands), the
    /// serve loop (drained), the backstores and the FIFO. Goes on past
    /// failures and returns the first.
    fn teardown(mut self) -> Result<(), CliError> {
        let mut first: Option<CliError> = None;
        let mut note = |e: CliError| {
            if first.is_none() {
                first = Some(e);
            }
        };
        if let Some(ready) = self.ready.take() {
            let _ = std::fs::remove_file(ready);
        }
        while let Some(target) = self.targets.pop() {
            if let Err(e) = target.remove() {
                note(configfs_error(e));
            }
        }
        if let Some(Serving { stop, thread }) = self.serving.take() {
            let _ = stop.send(());
            match thread.join().map_err(|_| "it panicked") {
                Ok(Ok(stats)) => eprintln!(
                    "parastor: served {} commands ({} in place, {} deferred, at most {} in \
                     flight)",
                    stats.commands, stats.inline, stats.deferred, stats.max_in_flight
                ),
                Ok(Err(e)) => note(CliError::new(format!("serving failed: {e}"))),
                Err(e) => note(CliError::new(format!("the serve loop failed: {e}"))),
            }
        }
        while let Some(backstore) = self.backstores.pop() {
            if let Err(e) = backstore.remove() {
                note(configfs_error(e));
            }
        }
        if let Some(fifo) = self.fifo.take() {
            let _ = std::fs::remove_file(fifo);
        }
        first.map_or(Ok(()), Err)
    }
}
