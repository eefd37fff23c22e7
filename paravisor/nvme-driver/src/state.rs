//! Saved state of an [`NvmeDriver`](crate::NvmeDriver) for servicing with
//! the controller kept running ("keepalive"): plain, versioned, untrusted
//! data (see [`parastor_core::state`]), component `nvme-driver`.
//!
//! [`DriverV1`] holds what a new driver instance needs to take over a
//! controller that never stopped: CAP, what Identify Controller said, the
//! admin queue pair and every I/O queue pair created so far (the device
//! addresses of their rings and list pages, SQ tail and head, CQ head,
//! phase, the doorbell values announced, each slot's command-identifier
//! sequence), the commands the device still has (slot, sequence, the
//! driver DMA memory they use, whether it is the Asynchronous Event
//! Request) and the shadow doorbell pages.
//!
//! Saving freezes the driver: its queues stop reading completions, every
//! command still with the device fails for its (old) owner, and dropping
//! the old driver touches neither the controller nor the DMA memory. A
//! restore re-attaches that memory
//! ([`DeviceAccess::attach_dma`](crate::DeviceAccess::attach_dma)),
//! rebuilds the queues where they were, and lets the commands saved in
//! flight complete (their owners are gone: the completions are consumed
//! and their memory freed) before any new I/O starts; the saved Asynchronous Event Request is adopted by the
//! next [`run_async_events`](crate::NvmeDriver::run_async_events). Every
//! value is checked against the device before it is used; a bad one is
//! an [`InvalidState`] naming the field.

use alloc::string::String;
use alloc::vec::Vec;
use parastor_core::state::{InvalidState, StateError, Versioned, check_count};
use serde::{Deserialize, Serialize};

pub use parastor_core::state::SaveError;

/// The newest saved state.
pub type SavedDriver = DriverV1;

/// Version 1 of the driver's saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverV1 {
    /// CAP as the driver read it (checked against the device at restore).
    pub cap: u64,
    /// What Identify Controller said.
    pub facts: FactsV1,
    /// The admin queue pair.
    pub admin: QueueV1,
    /// The I/O queue pairs created so far (QID = position + 1).
    pub io: Vec<QueueV1>,
    /// I/O queue positions the controller granted.
    pub io_count: u16,
    /// The shadow doorbell and EventIdx pages, if Doorbell Buffer Config
    /// set them up.
    pub shadow: Option<(u64, u64)>,
}

impl Versioned for DriverV1 {
    const COMPONENT: &'static str = "nvme-driver";
    const VERSION: u16 = 1;
}

impl DriverV1 {
    /// Encodes the state in its envelope (postcard inside).
    ///
    /// # Errors
    /// If it does not fit the envelope's limits.
    pub fn encode(&self) -> Result<Vec<u8>, SaveError> {
        parastor_core::state::encode(self)
    }

    /// Decodes a blob [`DriverV1::encode`] made.
    ///
    /// # Errors
    /// A damaged, foreign or newer blob.
    pub fn decode(blob: &[u8]) -> Result<Self, StateError> {
        parastor_core::state::decode(blob)
    }
}

/// What Identify Controller said (see
/// [`ControllerFacts`](crate::ControllerFacts)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactsV1 {
    /// CNTLID.
    pub cntlid: u16,
    /// VID.
    pub vid: u16,
    /// SN, trimmed.
    pub serial: String,
    /// MN, trimmed.
    pub model: String,
    /// FR, trimmed.
    pub firmware: String,
    /// NN.
    pub nn: u32,
    /// ONCS.
    pub oncs: u16,
    /// SGLS.
    pub sgls: u32,
    /// The largest transfer per command, in bytes.
    pub max_transfer: u64,
    /// VWC bit 0.
    pub volatile_write_cache: bool,
    /// I/O queue pairs granted.
    pub io_queues: u16,
}

/// One queue pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueV1 {
    /// The queue identifier.
    pub qid: u16,
    /// Entries per ring.
    pub size: u16,
    /// Device address of the submission ring.
    pub sq: u64,
    /// Device address of the completion ring.
    pub cq: u64,
    /// Device address of the list pages (one per slot).
    pub lists: u64,
    /// The next SQ entry the driver writes.
    pub sq_tail: u16,
    /// The SQ head the controller last reported.
    pub sq_head: u16,
    /// The next CQ entry the driver reads.
    pub cq_head: u16,
    /// The phase tag that entry has when it is new.
    pub phase: bool,
    /// Completions consumed since the head doorbell was written.
    pub cq_unannounced: u16,
    /// The head last announced.
    pub cq_announced: u16,
    /// Each slot's command-identifier sequence number.
    pub seqs: Vec<u16>,
    /// The commands the device has.
    pub commands: Vec<CommandV1>,
}

/// A command the device had at the save.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandV1 {
    /// Its slot.
    pub slot: u16,
    /// Driver DMA memory it uses (a bounce buffer or an admin command's
    /// data buffer), as (device address, length): kept until it completes.
    pub memory: Option<(u64, u64)>,
    /// The Asynchronous Event Request (waits for an event; adopted by the
    /// next event loop).
    pub event_request: bool,
}

/// The most I/O queues a saved state may name.
pub(crate) const MAX_SAVED_QUEUES: usize = 4096;

impl QueueV1 {
    /// Checks the values that do not need the device: ring positions
    /// inside the ring, one sequence per slot, commands on distinct slots.
    pub(crate) fn check(&self, slots: usize) -> Result<(), InvalidState> {
        let size = self.size;
        if !(2..=4096).contains(&size) {
            return Err(InvalidState::new("size", "outside 2..=4096"));
        }
        for (field, v) in [
            ("sq_tail", self.sq_tail),
            ("sq_head", self.sq_head),
            ("cq_head", self.cq_head),
            ("cq_announced", self.cq_announced),
        ] {
            if v >= size {
                return Err(InvalidState::new(field, "outside the ring"));
            }
        }
        if self.cq_unannounced >= size {
            return Err(InvalidState::new(
                "cq_unannounced",
                "not below the ring size",
            ));
        }
        if self.seqs.len() != slots {
            return Err(InvalidState::new(
                "seqs",
                format_args!("{} sequences for {slots} slots", self.seqs.len()),
            ));
        }
        check_count("commands", self.commands.len(), slots)?;
        let mut seen = alloc::vec![false; slots];
        for (i, c) in self.commands.iter().enumerate() {
            let field = alloc::format!("commands[{i}].slot");
            match seen.get_mut(usize::from(c.slot)) {
                Some(s) if !*s => *s = true,
                Some(_) => return Err(InvalidState::new(field, "slot named twice")),
                None => return Err(InvalidState::new(field, "no such slot")),
            }
            if let Some((addr, len)) = c.memory
                && (addr % 4096 != 0 || len == 0 || len % 4096 != 0)
            {
                return Err(InvalidState::new(
                    alloc::format!("commands[{i}].memory"),
                    "not whole 4 KiB pages",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> QueueV1 {
        QueueV1 {
            qid: 1,
            size: 8,
            sq: 0x1000,
            cq: 0x2000,
            lists: 0x3000,
            sq_tail: 3,
            sq_head: 1,
            cq_head: 1,
            phase: true,
            cq_unannounced: 0,
            cq_announced: 1,
            seqs: alloc::vec![0; 6],
            commands: alloc::vec![CommandV1 {
                slot: 2,
                memory: Some((0x8000, 0x1000)),
                event_request: false,
            }],
        }
    }

    #[test]
    fn a_saved_queue_is_checked_before_use() {
        assert_eq!(queue().check(6), Ok(()));
        let field = |q: QueueV1| q.check(6).unwrap_err().field;
        assert_eq!(field(QueueV1 { size: 1, ..queue() }), "size");
        assert_eq!(
            field(QueueV1 {
                sq_tail: 8,
                ..queue()
            }),
            "sq_tail"
        );
        assert_eq!(
            field(QueueV1 {
                cq_head: 9,
                ..queue()
            }),
            "cq_head"
        );
        assert_eq!(
            field(QueueV1 {
                seqs: alloc::vec![0; 5],
                ..queue()
            }),
            "seqs"
        );
        let mut twice = queue();
        twice.commands.push(twice.commands[0].clone());
        assert_eq!(field(twice), "commands[1].slot");
        let mut beyond = queue();
        beyond.commands[0].slot = 6;
        assert_eq!(field(beyond), "commands[0].slot");
        let mut unaligned = queue();
        unaligned.commands[0].memory = Some((0x8001, 0x1000));
        assert_eq!(field(unaligned), "commands[0].memory");
    }

    #[test]
    fn the_state_round_trips_and_a_damaged_blob_is_refused() {
        let saved = DriverV1 {
            cap: 0x1234,
            facts: FactsV1 {
                cntlid: 1,
                vid: 0x1b36,
                serial: String::from("deadbeef"),
                model: String::from("m"),
                firmware: String::from("1.0"),
                nn: 256,
                oncs: 0x5f,
                sgls: 1,
                max_transfer: 512 * 1024,
                volatile_write_cache: true,
                io_queues: 2,
            },
            admin: queue(),
            io: alloc::vec![queue()],
            io_count: 2,
            shadow: Some((0x9000, 0xA000)),
        };
        let blob = saved.encode().unwrap();
        assert_eq!(DriverV1::decode(&blob).unwrap(), saved);
        let mut bad = blob.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(DriverV1::decode(&bad).is_err());
    }
}
