//! parastor's SCSI adapter as a Linux SCSI target backstore, through TCMU
//! (the kernel's "target core in user space").
//!
//! The kernel's LIO target hands each SCSI command of a TCMU backstore to
//! user space on a command ring in a `uio` device's shared memory; this
//! crate takes the commands off that ring, runs them through
//! [`parastor_scsi::Lun`] and puts the completions back.
//!
//! - [`ring`]: the command ring (mailbox, entries, completions), over the
//!   shared mapping reached only by copies and atomics;
//! - [`serve`]: the loop that feeds ring commands to a LUN and completes them;
//! - [`uio`]: the `/dev/uioN` device (mapping, doorbell both ways);
//! - [`configfs`]: creating and removing the backstore and its tcm_loop
//!   target through `/sys/kernel/config`.

pub mod configfs;
pub mod ring;
pub mod serve;
pub mod uio;
