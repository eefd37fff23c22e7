//! Namespaces: NSIDs chosen by the caller (the settings' `location`),
//! 1..=NN, added and removed at runtime; each change (and each resize,
//! picked up from [`Disk::wait_resize`] with no polling) lands in the
//! changed-namespace list and raises a namespace-attribute notice.

use crate::Shared;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::pin::Pin;
use core::sync::atomic::Ordering;
use core::task::{Context, Poll, Waker};
use parastor_core::Disk;
use parastor_hw::nvme::log::CHANGED_NAMESPACE_LIST_ENTRIES;

/// Why a namespace cannot be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceError {
    /// The NSID is 0 or beyond the controller's NN.
    OutOfRange {
        /// The NSID asked for.
        nsid: u32,
        /// The highest NSID the controller offers.
        max: u32,
    },
    /// The NSID already has a namespace.
    Exists {
        /// The NSID asked for.
        nsid: u32,
    },
}

impl fmt::Display for NamespaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange { nsid, max } => {
                write!(f, "namespace ID {nsid} is out of range: expected 1..={max}")
            }
            Self::Exists { nsid } => write!(f, "namespace ID {nsid} is already in use"),
        }
    }
}

impl core::error::Error for NamespaceError {}

/// A resize watch: completes with the disk's new sector count.
type Watch = Pin<Box<dyn core::future::Future<Output = u64> + Send>>;

/// One namespace.
pub(crate) struct Namespace {
    pub(crate) disk: Disk,
    /// The sector count last reported to the guest.
    known: u64,
    watch: Option<Watch>,
}

/// Every namespace and the changed-namespace list.
pub(crate) struct Namespaces {
    max: u32,
    map: BTreeMap<u32, Namespace>,
    /// NSIDs changed since the host last read the log, ascending.
    changed: Vec<u32>,
    /// More than the log can list changed.
    overflow: bool,
    waker: Option<Waker>,
    /// The flushes of a shutdown in progress (`None`: no shutdown flush).
    flushes: Option<Vec<Flush>>,
}

/// A namespace's flush at shutdown.
type Flush = Pin<Box<dyn core::future::Future<Output = ()> + Send>>;

impl Namespaces {
    pub(crate) fn new(config: &crate::ControllerConfig) -> Self {
        Self {
            max: config.max_namespaces,
            map: BTreeMap::new(),
            changed: Vec::new(),
            overflow: false,
            waker: None,
            flushes: None,
        }
    }

    /// Starts flushing every namespace for a shutdown; `false` if one is
    /// already under way.
    pub(crate) fn start_flush(&mut self) -> bool {
        if self.flushes.is_some() {
            return false;
        }
        self.flushes = Some(
            self.map
                .values()
                .map(|n| {
                    let disk = n.disk.clone();
                    Box::pin(async move {
                        // A failed flush cannot fail the shutdown; the
                        // guest learns nothing more from it here.
                        let _ = disk.flush(parastor_core::IoOptions::default()).await;
                    }) as Flush
                })
                .collect(),
        );
        true
    }

    /// Forgets a shutdown flush (controller reset).
    pub(crate) fn reset_flush(&mut self) {
        self.flushes = None;
    }

    /// Each NSID's disk, indexed by NSID (0..=highest in use).
    pub(crate) fn disks(&self) -> impl Iterator<Item = Option<Disk>> + '_ {
        let top = self.map.keys().next_back().copied().unwrap_or(0);
        (0..=top).map(|nsid| self.map.get(&nsid).map(|n| n.disk.clone()))
    }

    /// The namespace `nsid`, if active.
    pub(crate) fn get(&self, nsid: u32) -> Option<&Namespace> {
        self.map.get(&nsid)
    }

    /// Active NSIDs greater than `after`, ascending.
    pub(crate) fn active_after(&self, after: u32) -> impl Iterator<Item = u32> + '_ {
        self.map
            .range(after.saturating_add(1)..)
            .map(|(&nsid, _)| nsid)
            .filter(move |&n| n > after)
    }

    /// NN.
    pub(crate) fn max(&self) -> u32 {
        self.max
    }

    fn mark_changed(&mut self, nsid: u32) {
        if self.overflow {
            return;
        }
        if let Err(at) = self.changed.binary_search(&nsid) {
            if self.changed.len() == CHANGED_NAMESPACE_LIST_ENTRIES {
                self.overflow = true;
                self.changed.clear();
            } else {
                self.changed.insert(at, nsid);
            }
        }
    }

    /// Takes the changed-namespace list: the NSIDs, or `None` for "more
    /// than 1024 changed".
    pub(crate) fn take_changed(&mut self) -> Option<Vec<u32>> {
        let overflow = core::mem::take(&mut self.overflow);
        let list = core::mem::take(&mut self.changed);
        (!overflow).then_some(list)
    }

    /// The changed-namespace list, for the saved state.
    pub(crate) fn changed(&self) -> (&[u32], bool) {
        (&self.changed, self.overflow)
    }

    /// Restores the changed list and each namespace's known size.
    pub(crate) fn restore_changed(&mut self, changed: Vec<u32>, overflow: bool) {
        self.changed = changed;
        self.overflow = overflow;
    }

    /// Sets the size last reported for `nsid` (restore).
    pub(crate) fn set_known(&mut self, nsid: u32, known: u64) {
        if let Some(n) = self.map.get_mut(&nsid) {
            n.known = known;
            n.watch = None;
        }
    }

    /// (NSID, size last reported) of every namespace.
    pub(crate) fn known(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.map.iter().map(|(&nsid, n)| (nsid, n.known))
    }

    /// Inserts without notice (restore).
    pub(crate) fn insert_quiet(&mut self, nsid: u32, disk: Disk) -> Result<(), NamespaceError> {
        if nsid == 0 || nsid > self.max {
            return Err(NamespaceError::OutOfRange {
                nsid,
                max: self.max,
            });
        }
        if self.map.contains_key(&nsid) {
            return Err(NamespaceError::Exists { nsid });
        }
        let known = disk.sector_count();
        self.map.insert(
            nsid,
            Namespace {
                disk,
                known,
                watch: None,
            },
        );
        Ok(())
    }
}

/// A namespace changed: bump the generation (workers refresh), raise the
/// notice, wake the watchers and the admin worker.
fn changed(s: &Shared) {
    s.ns_generation.fetch_add(1, Ordering::AcqRel);
    s.events.lock().namespace_changed();
    s.wakeups.wake(s.watcher_index());
    s.wakeups.wake(Shared::ADMIN);
}

pub(crate) fn add(s: &Shared, nsid: u32, disk: Disk) -> Result<(), NamespaceError> {
    {
        let mut ns = s.namespaces.lock();
        ns.insert_quiet(nsid, disk)?;
        ns.mark_changed(nsid);
    }
    changed(s);
    Ok(())
}

pub(crate) fn remove(s: &Shared, nsid: u32) -> Option<Disk> {
    let disk = {
        let mut ns = s.namespaces.lock();
        let n = ns.map.remove(&nsid)?;
        ns.mark_changed(nsid);
        n.disk
    };
    changed(s);
    Some(disk)
}

/// Polls every namespace's resize watch; a new size is a change.
pub(crate) fn run_watchers(s: &Shared) {
    let mut any = false;
    let mut flushed = false;
    {
        let mut guard = s.namespaces.lock();
        let ns = &mut *guard;
        let waker = ns
            .waker
            .get_or_insert_with(|| crate::wake::worker_waker(&s.wakeups, s.watcher_index()))
            .clone();
        let mut cx = Context::from_waker(&waker);
        let mut resized = Vec::new();
        for (&nsid, n) in ns.map.iter_mut() {
            // Twice at most: a watch that completes at once with the size
            // already known is answered by one fresh watch, never a spin.
            for _ in 0..2 {
                let watch = n.watch.get_or_insert_with(|| {
                    let disk = n.disk.clone();
                    let known = n.known;
                    Box::pin(async move { disk.wait_resize(known).await })
                });
                match watch.as_mut().poll(&mut cx) {
                    Poll::Ready(count) => {
                        n.watch = None;
                        if count != n.known {
                            n.known = count;
                            resized.push(nsid);
                        }
                    }
                    Poll::Pending => break,
                }
            }
        }
        for nsid in resized {
            ns.mark_changed(nsid);
            any = true;
        }
        if let Some(flushes) = ns.flushes.as_mut() {
            flushes.retain_mut(|f| f.as_mut().poll(&mut cx).is_pending());
            if flushes.is_empty() {
                flushed = true;
            }
        }
    }
    if flushed {
        crate::regs::shutdown_flushed(s);
    }
    if any {
        s.ns_generation.fetch_add(1, Ordering::AcqRel);
        s.events.lock().namespace_changed();
        s.wakeups.wake(Shared::ADMIN);
    }
}
