//! The test API: SCSI requests with data buffers the driver places in
//! guest memory, as a SCSI midlayer would use the driver.
//!
//! [`Storvsc::srb`] sends one request and waits for it, retrying once
//! after a UNIT ATTENTION (as Linux's midlayer does) and rescanning the
//! bus (REPORT LUNS on path 0, target 0) when an `ENUMERATE_BUS` arrived
//! meanwhile. Buffers are placed in the data area the driver was given,
//! each segment at a fresh page plus a small offset, so segments are never
//! contiguous in guest memory. This path allocates freely; the bench uses
//! the lean one ([`Storvsc::submit`]).

use super::{Direction, Host, Reply, Slot, Storvsc, StorvscError};
use parastor_core::Gpa;
use parastor_core::GpaRange;
use parastor_hw::scsi::{ScsiOp, ScsiStatus, SenseData, SenseKey};
use parastor_hw::storvsp::{NtStatus, SENSE_BUFFER_SIZE, SrbStatus, SrbStatusAndFlags};
use std::collections::BTreeMap;

const PAGE: u64 = 4096;

/// The data phase of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data<'d> {
    /// No data.
    None,
    /// Data-in of this many bytes (the buffer starts filled with `0xCC`).
    In(usize),
    /// Data-out of these bytes.
    Out(&'d [u8]),
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Data::None => 0,
            Data::In(n) => *n,
            Data::Out(d) => d.len(),
        }
    }

    fn direction(&self) -> Direction {
        match self {
            Data::None => Direction::None,
            Data::In(_) => Direction::In,
            Data::Out(_) => Direction::Out,
        }
    }
}

/// One SCSI request of the test API.
#[derive(Clone, Debug)]
pub struct Srb<'d> {
    /// The LUN (path 0, target 0).
    pub lun: u8,
    /// The CDB (at most 16 bytes).
    pub cdb: Vec<u8>,
    /// The data phase.
    pub data: Data<'d>,
    /// How the buffer is cut into guest ranges: lengths of the leading
    /// segments (the rest of the buffer is one last segment). Empty: one
    /// range.
    pub segments: Vec<usize>,
    /// The channel to send it on (0: primary).
    pub channel: usize,
}

impl<'d> Srb<'d> {
    /// A request for `lun` with `cdb` and `data` on the primary channel,
    /// in one range.
    pub fn new(lun: u8, cdb: &[u8], data: Data<'d>) -> Self {
        Self {
            lun,
            cdb: cdb.to_vec(),
            data,
            segments: Vec::new(),
            channel: 0,
        }
    }

    /// The same request with its buffer cut at these segment lengths.
    pub fn segments(mut self, segments: &[usize]) -> Self {
        self.segments = segments.to_vec();
        self
    }

    /// The same request on channel `channel`.
    pub fn on(mut self, channel: usize) -> Self {
        self.channel = channel;
        self
    }
}

/// A completed request as the guest sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrbReply {
    /// The completion packet's NT status.
    pub nt_status: NtStatus,
    /// SRB status, flags included.
    pub srb_status: SrbStatusAndFlags,
    /// SCSI status.
    pub scsi_status: ScsiStatus,
    /// The sense bytes, when the host flagged them valid.
    pub sense: Vec<u8>,
    /// Bytes transferred, as the host reports them.
    pub data_transfer_length: u32,
    /// The data-in buffer after completion (empty for other requests).
    pub data: Vec<u8>,
    /// Whether the driver retried the request after a UNIT ATTENTION.
    pub retried: bool,
    /// StorVSP bytes of the completion packet.
    pub len: usize,
}

impl SrbReply {
    /// SRB status without flags.
    pub fn srb_code(&self) -> SrbStatus {
        self.srb_status.status()
    }

    /// Whether the request succeeded (SRB SUCCESS, SCSI GOOD).
    pub fn is_good(&self) -> bool {
        self.srb_code() == SrbStatus::SUCCESS && self.scsi_status == ScsiStatus::GOOD
    }

    /// The parsed sense data, if any.
    pub fn sense_data(&self) -> Option<SenseData> {
        SenseData::parse(&self.sense)
    }

    /// The data-in bytes actually transferred.
    pub fn transferred(&self) -> &[u8] {
        let n = (self.data_transfer_length as usize).min(self.data.len());
        &self.data[..n]
    }
}

/// A request started with [`Storvsc::start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tag(pub u16);

/// A test-API request in flight: where its buffer is.
#[derive(Debug)]
struct Pending {
    segments: Vec<GpaRange>,
    data_in: bool,
}

/// The test API's state.
#[derive(Debug)]
pub(super) struct TestState {
    /// Guest memory for data buffers.
    area: GpaRange,
    /// Next free address in it.
    next: u64,
    pending: BTreeMap<u16, Pending>,
    luns: Vec<u8>,
    unit_attentions: usize,
}

impl TestState {
    pub(super) fn new(area: GpaRange) -> Self {
        Self {
            area,
            next: area.gpa.get(),
            pending: BTreeMap::new(),
            luns: Vec::new(),
            unit_attentions: 0,
        }
    }
}

impl<'a, H: Host<'a>> Storvsc<'a, H> {
    /// LUNs on path 0, target 0, from the last REPORT LUNS scan.
    pub fn luns(&self) -> &[u8] {
        &self.test.luns
    }

    /// UNIT ATTENTION conditions met (and retried) by [`Storvsc::srb`].
    pub fn unit_attentions(&self) -> usize {
        self.test.unit_attentions
    }

    /// Negotiates ([`Storvsc::negotiate`]) and scans the bus once.
    pub fn connect(&mut self) -> Result<(), StorvscError> {
        self.negotiate()?;
        self.rescan()
    }

    /// Runs the host and reads what it sent; rescans if it asked for it.
    /// Returns whether a rescan happened.
    pub fn poll(&mut self) -> Result<bool, StorvscError> {
        self.host.run()?;
        self.stash()?;
        if self.rescan_pending {
            self.rescan()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Scans path 0 / target 0 with REPORT LUNS and records the LUNs.
    pub fn rescan(&mut self) -> Result<(), StorvscError> {
        loop {
            self.rescan_pending = false;
            let mut cdb = [0u8; 12];
            cdb[0] = ScsiOp::REPORT_LUNS.get();
            cdb[6..10].copy_from_slice(&4096u32.to_be_bytes());
            let r = self.srb_once(&Srb::new(0, &cdb, Data::In(4096)))?;
            if !r.is_good() {
                return Err(StorvscError::Scsi(format!("REPORT LUNS failed: {r:?}")));
            }
            self.test.luns = parse_report_luns(r.transferred());
            if !self.rescan_pending {
                return Ok(());
            }
        }
    }

    /// Sends `srb` and waits for its completion, retrying once after a
    /// UNIT ATTENTION; rescans first if an `ENUMERATE_BUS` arrived
    /// meanwhile.
    pub fn srb(&mut self, srb: &Srb<'_>) -> Result<SrbReply, StorvscError> {
        let mut r = self.srb_once(srb)?;
        if r.scsi_status == ScsiStatus::CHECK_CONDITION
            && r.sense_data()
                .is_some_and(|s| s.key == SenseKey::UNIT_ATTENTION)
        {
            self.test.unit_attentions += 1;
            r = self.srb_once(srb)?;
            r.retried = true;
        }
        if self.rescan_pending {
            self.rescan()?;
        }
        Ok(r)
    }

    fn srb_once(&mut self, srb: &Srb<'_>) -> Result<SrbReply, StorvscError> {
        let tag = self.start(srb)?;
        self.wait(tag)
    }

    /// Sends `srb` without waiting (on the lowest free tag); collect it
    /// with [`Storvsc::wait`] (no UNIT ATTENTION retry on this path).
    pub fn start(&mut self, srb: &Srb<'_>) -> Result<Tag, StorvscError> {
        let tag = self
            .slots
            .iter()
            .position(|s| *s == Slot::Free)
            .and_then(|t| u16::try_from(t).ok())
            .ok_or(StorvscError::BadTag {
                tag: self.config.queue_depth,
            })?;
        let len = srb.data.len();
        if self.test.pending.is_empty() {
            self.test.next = self.test.area.gpa.get();
        }
        // Each segment at a fresh page plus a small offset.
        let mut segments = Vec::new();
        let mut left = len;
        let mut cuts = srb.segments.iter().copied().filter(|&n| n > 0);
        let mut k = 0u64;
        let end = self.test.area.gpa + self.test.area.len;
        while left > 0 {
            let n = cuts.next().unwrap_or(left).min(left);
            let gpa = self.test.next.next_multiple_of(PAGE) + (k * 8) % 64;
            self.test.next = gpa + n as u64;
            if self.test.next > end.get() {
                return Err(StorvscError::Scsi(format!(
                    "the data area ({:#x} bytes) is too small for the requests in flight",
                    self.test.area.len
                )));
            }
            segments.push(GpaRange::new(Gpa::new(gpa), n as u64));
            left -= n;
            k += 1;
        }
        let mut at = 0;
        for s in &segments {
            let n = s.len as usize;
            match srb.data {
                Data::Out(d) => self.mem.write_at(s.gpa, &d[at..at + n])?,
                _ => self.mem.fill_at(s.gpa, n, 0xCC)?,
            }
            at += n;
        }
        let request = self.scsi_request(srb.lun, &srb.cdb, srb.data.direction(), len as u32);
        self.submit(tag, srb.channel, &request, &segments)?;
        self.flush()?;
        self.test.pending.insert(
            tag,
            Pending {
                segments,
                data_in: matches!(srb.data, Data::In(_)),
            },
        );
        Ok(Tag(tag))
    }

    /// Waits for the request `tag` to complete.
    pub fn wait(&mut self, tag: Tag) -> Result<SrbReply, StorvscError> {
        let reply = self.wait_tag(tag.0)?;
        let p = self
            .test
            .pending
            .remove(&tag.0)
            .ok_or(StorvscError::BadTag { tag: tag.0 })?;
        self.srb_reply(&reply, &p)
    }

    fn srb_reply(&self, reply: &Reply, p: &Pending) -> Result<SrbReply, StorvscError> {
        let c = reply.srb();
        let sense = if c.srb_status.autosense_valid() {
            let n = usize::from(c.sense_info_ex_length).min(SENSE_BUFFER_SIZE);
            c.payload[..n].to_vec()
        } else {
            Vec::new()
        };
        let mut data = Vec::new();
        if p.data_in {
            for s in &p.segments {
                let mut b = vec![0u8; s.len as usize];
                self.mem.read_at(s.gpa, &mut b)?;
                data.extend_from_slice(&b);
            }
        }
        Ok(SrbReply {
            nt_status: reply.status(),
            srb_status: c.srb_status,
            scsi_status: c.scsi_status,
            sense,
            data_transfer_length: c.data_transfer_length.get(),
            data,
            retried: false,
            len: reply.len,
        })
    }

    /// REPORT LUNS through `lun`: the LUNs on path 0, target 0.
    pub fn report_luns(&mut self, lun: u8) -> Result<Vec<u8>, StorvscError> {
        let mut cdb = [0u8; 12];
        cdb[0] = ScsiOp::REPORT_LUNS.get();
        cdb[6..10].copy_from_slice(&4096u32.to_be_bytes());
        let r = self.srb(&Srb::new(lun, &cdb, Data::In(4096)))?;
        if !r.is_good() {
            return Err(StorvscError::Scsi(format!("REPORT LUNS failed: {r:?}")));
        }
        Ok(parse_report_luns(r.transferred()))
    }

    /// Standard INQUIRY data of `lun` (up to 96 bytes).
    pub fn inquiry(&mut self, lun: u8) -> Result<Vec<u8>, StorvscError> {
        let r = self.srb(&Srb::new(
            lun,
            &[ScsiOp::INQUIRY.get(), 0, 0, 0, 96, 0],
            Data::In(96),
        ))?;
        if !r.is_good() {
            return Err(StorvscError::Scsi(format!("INQUIRY failed: {r:?}")));
        }
        Ok(r.transferred().to_vec())
    }
}

/// The LUNs of REPORT LUNS parameter data (single-level peripheral
/// addressing: the LUN is byte 1 of each 8-byte entry).
fn parse_report_luns(d: &[u8]) -> Vec<u8> {
    let list_len = d
        .get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let entries = d.get(8..).unwrap_or(&[]);
    let entries = entries.get(..list_len).unwrap_or(entries);
    entries.chunks_exact(8).map(|e| e[1]).collect()
}
