//! One StorVSP channel worker: packets in, completions out.

use super::slots::{NewRequest, RequestRecord, SlotFuture, SlotOutput, Slots, SrbAnswer};
use super::{Controller, NegotiationState, ScsiPath, StorvspError};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::task::{Context, Poll, Waker};
use parastor_core::{DiskError, GpaRange, SgList};
use parastor_hw::scsi::{
    AdditionalSense, CdbError, InquiryCdb, InquiryData, InquiryFlags3, Peripheral,
    PeripheralDeviceType, PeripheralQualifier, ReportLuns, ScsiOp, ScsiStatus, SenseData,
};
use parastor_hw::storvsp::{
    self as hw, Body, DataDirection, MAX_PACKET_LEN, NtStatus, Operation, PACKET_HEADER_LEN,
    PacketFlags, PacketHeader, ParseError, ProtocolVersion, RequestSize, ScsiRequest, SrbStatus,
    SrbStatusAndFlags, Version, parse_packet,
};
use parastor_scsi::{Lun, ScsiResult, SenseDelivery, disk_error_result};
use parastor_vmbus::{
    Channel, ChannelMemory, OutgoingKind, PacketKind, PacketRef, Reservation, RingError, Wait,
};
use zerocopy::{FromBytes, IntoBytes};

/// Passes [`StorvspChannel::run`] makes in one poll before it wakes
/// itself and yields to its executor.
pub const RUN_BUDGET: usize = 64;

/// Bytes of standard INQUIRY data returned for a missing LUN.
const MISSING_LUN_INQUIRY_LEN: usize = 36;

/// The payload size of the completion of `packet` (a guest request): the
/// request's own payload after the StorVSP header, at most the whole
/// payload union (`0x34`) — whatever the negotiated version, as Hyper-V
/// answers. Guests check it: Linux 5.19 and later send every packet at
/// `0x40` bytes and drop a completion shorter than that; Windows expects
/// exactly the size it sent (the negotiated one).
fn reply_len(packet: &PacketRef) -> usize {
    packet
        .payload()
        .len()
        .saturating_sub(PACKET_HEADER_LEN)
        .min(hw::PACKET_PAYLOAD_LEN)
}

/// The worker serving one VMBus channel of a [`Controller`]: it reads the
/// guest's packets, answers them, runs SCSI requests and writes their
/// completions.
///
/// Drive it with [`StorvspChannel::run`] (an async loop that ends only when
/// the guest breaks the protocol or the channel is closed, once drained),
/// or step it with [`StorvspChannel::poll_work`] /
/// [`StorvspChannel::process`]. Dropping a worker whose requests are still
/// running detaches them (see [`parastor_core::DiskIo`] on dropped
/// futures): close it and drive it until drained first.
///
/// A worker over a [`Channel`] that owns its memory and signal
/// ([`Channel::host_owned`]) is a `StorvspChannel<'static>` and `Send`:
/// it can be built on the controller's thread and moved to its CPU's.
///
/// Requests in flight are explicit records ([`RequestRecord`]) in slots
/// sized to the queue depth, allocated when the channel opens; each slot's
/// command future reuses its slot's storage and has its own waker, so a
/// pass polls only the requests that were woken — O(1) work per
/// completion however many requests a guest keeps waiting.
///
/// Once a step has failed, or the channel was closed
/// ([`StorvspChannel::close`]), the channel *drains*: it reads nothing more
/// from the guest and writes no completion, frees the requests whose
/// commands have not started, and keeps polling those that have until they
/// finish — a disk may still be reading or writing their buffers — giving
/// each one's ring space back as it does. Every step returns the error;
/// [`StorvspChannel::run`] returns it once the drain is complete
/// ([`StorvspChannel::is_drained`]).
pub struct StorvspChannel<'a> {
    controller: Arc<Controller>,
    channel: Channel<'a>,
    primary: bool,
    slots: Slots<'a>,
    /// The controller's LUN generation the guest last heard about.
    announced: u64,
    /// An `ENUMERATE_BUS` is waiting for ring space.
    enumerate_pending: bool,
    /// Poll mode: the incoming ring's interrupt mask is set.
    masked: bool,
    /// Our last registration for controller events (see
    /// `Controller::register_again`).
    registered: Option<(u64, Waker)>,
    /// The LUN last addressed, valid while the controller's generation is
    /// the one recorded: most requests go to the same LUN, and this skips
    /// the LUN map's lock.
    last_lun: Option<(u64, ScsiPath, Lun)>,
    /// Why the channel ended, once it has.
    failed: Option<StorvspError>,
    /// Quiescing for a save ([`StorvspChannel::quiesce`]): no packet is
    /// read, requests running finish and are completed.
    quiescing: bool,
    /// The buffer packets are read into, kept between passes.
    packet: Option<Box<PacketRef>>,
}

impl fmt::Debug for StorvspChannel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorvspChannel")
            .field("primary", &self.primary)
            .field("in_flight", &self.slots.busy())
            .field("poll_mode", &self.masked)
            .field("channel", &self.channel)
            .finish()
    }
}

/// What one pass of a channel's work did.
#[derive(Clone, Copy)]
struct Pass {
    /// Something happened (a packet taken, a completion or notification
    /// sent).
    worked: bool,
    /// Another pass may find more to do without waiting.
    again: bool,
}

impl<'a> StorvspChannel<'a> {
    /// The worker for the controller's primary channel, which carries the
    /// protocol negotiation and the bus-rescan notifications.
    pub fn primary(controller: Arc<Controller>, channel: Channel<'a>) -> Self {
        Self::new(controller, channel, true)
    }

    /// The worker for a sub-channel (created after the guest's
    /// `CREATE_SUB_CHANNELS`): it takes no packets until the primary
    /// channel's negotiation is complete.
    pub fn sub_channel(controller: Arc<Controller>, channel: Channel<'a>) -> Self {
        Self::new(controller, channel, false)
    }

    fn new(controller: Arc<Controller>, channel: Channel<'a>, primary: bool) -> Self {
        let announced = controller.generation();
        let slots = Slots::new(controller.config.io_queue_depth);
        Self {
            controller,
            channel,
            primary,
            slots,
            announced,
            enumerate_pending: false,
            masked: false,
            registered: None,
            last_lun: None,
            failed: None,
            quiescing: false,
            packet: None,
        }
    }

    /// A worker over a restored `channel` (see [`crate::state::ChannelV1`]):
    /// no request in flight, not in poll mode, the saved bus rescan owed.
    pub(crate) fn restored(
        controller: Arc<Controller>,
        channel: Channel<'a>,
        primary: bool,
        enumerate_pending: bool,
    ) -> Self {
        let mut worker = Self::new(controller, channel, primary);
        worker.enumerate_pending = enumerate_pending;
        worker
    }

    /// Whether this worker serves the primary channel.
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// Whether a bus-rescan notification is owed to the guest: one is
    /// waiting for ring space, or the LUNs changed since the guest last
    /// heard and the negotiation is complete (Windows 7 and later).
    pub(crate) fn rescan_owed(&self) -> bool {
        self.enumerate_pending
            || (self.primary
                && self.controller.is_ready()
                && self.announced != self.controller.generation()
                && self
                    .controller
                    .version()
                    .is_some_and(|v| v >= Version::WIN7))
    }

    /// Stops taking packets, for a save: the requests running finish and
    /// their completions are written (each into the ring space reserved
    /// before its packet was read, so none waits for room), nothing new is
    /// read. Drive it with [`StorvspChannel::poll_work`] or
    /// [`StorvspChannel::process`] until [`StorvspChannel::is_quiesced`],
    /// or await [`StorvspChannel::quiesce_all`]; then save
    /// ([`StorvspChannel::save`]), or [`StorvspChannel::resume`].
    pub fn quiesce(&mut self) {
        self.quiescing = true;
    }

    /// Takes packets again after [`StorvspChannel::quiesce`] (a save that
    /// was abandoned).
    pub fn resume(&mut self) {
        self.quiescing = false;
    }

    /// Whether the channel is quiesced: it takes no packets and no request
    /// is in flight, so nothing of it is at a disk and every answer is in
    /// the ring.
    pub fn is_quiesced(&self) -> bool {
        self.quiescing && self.failed.is_none() && self.slots.busy() == 0
    }

    /// Whether the channel was asked to quiesce.
    pub(crate) fn is_quiescing(&self) -> bool {
        self.quiescing
    }

    /// Why the channel ended, if it has.
    pub(crate) fn failure(&self) -> Option<StorvspError> {
        self.failed
    }

    /// Quiesces the channel ([`StorvspChannel::quiesce`]) and drives it
    /// until every request in flight has finished and been completed.
    /// Returns the channel's error if it fails meanwhile (it then drains
    /// like any failed channel and cannot be saved).
    pub async fn quiesce_all(&mut self) -> Result<(), StorvspError> {
        self.quiesce();
        core::future::poll_fn(|cx| {
            for _ in 0..RUN_BUDGET {
                match self.poll_work(cx) {
                    Err(e) if self.slots.busy() == 0 => return Poll::Ready(Err(e)),
                    Err(_) => return Poll::Pending,
                    Ok(_) if self.slots.busy() == 0 => return Poll::Ready(Ok(())),
                    Ok(true) => {}
                    Ok(false) => return Poll::Pending,
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    /// The controller this channel serves.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// The VMBus channel endpoint.
    pub fn channel(&self) -> &Channel<'a> {
        &self.channel
    }

    /// SCSI requests taken and not yet completed (while draining: not yet
    /// finished).
    pub fn in_flight(&self) -> usize {
        self.slots.busy()
    }

    /// The records of the SCSI requests in flight, in slot order.
    pub fn requests(&self) -> impl Iterator<Item = &RequestRecord> {
        self.slots.records()
    }

    /// How many times request futures have been polled, in total: each
    /// pass polls only the requests woken since the last one.
    pub fn request_polls(&self) -> u64 {
        self.slots.polls()
    }

    /// Whether the channel failed and every request it had started has
    /// finished: nothing of the channel's is at a disk any more.
    pub fn is_drained(&self) -> bool {
        self.failed.is_some() && self.slots.busy() == 0
    }

    /// Whether the channel is in poll mode: at least
    /// [`ControllerConfig::poll_mode_queue_depth`] requests are in flight,
    /// the incoming ring's interrupt mask is set, and the ring is read on
    /// every completion instead of on the guest's signal.
    ///
    /// [`ControllerConfig::poll_mode_queue_depth`]: super::ControllerConfig::poll_mode_queue_depth
    pub fn poll_mode(&self) -> bool {
        self.masked
    }

    /// Serves the channel until the guest breaks the protocol or the
    /// channel is closed ([`StorvspChannel::close`]), waiting on
    /// `incoming` (the guest's notifications to the host) when there is
    /// nothing to do. Returns why the channel stopped, once its requests
    /// are drained (see [`StorvspChannel`]): the worker lives until no disk
    /// holds a buffer of its requests.
    ///
    /// In poll mode ([`StorvspChannel::poll_mode`]) the guest does not
    /// signal new packets; the worker is woken by its requests completing
    /// and reads the ring then.
    ///
    /// A guest that keeps the worker busy (packets or signals as fast as
    /// they are served) cannot hold the executor: after [`RUN_BUDGET`]
    /// passes in a row the future wakes itself and yields.
    pub async fn run(&mut self, incoming: &dyn Wait) -> StorvspError {
        core::future::poll_fn(|cx| {
            for _ in 0..RUN_BUDGET {
                // Arm the signal before looking at the rings, so a packet
                // the guest writes after our look still wakes us.
                let signalled = incoming.poll_wait(cx).is_ready();
                match self.poll_work(cx) {
                    Err(e) if self.slots.busy() == 0 => return Poll::Ready(e),
                    // Draining: woken by the requests still running.
                    Err(_) => return Poll::Pending,
                    Ok(true) => {}
                    Ok(false) if signalled => {}
                    Ok(false) => return Poll::Pending,
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    /// Does all the work possible now without waiting, until nothing
    /// more can be done: finishes requests whose futures are ready, sends
    /// a pending bus-rescan notification, and takes new packets while ring
    /// space and the queue depth allow. Returns whether anything happened
    /// (a packet taken, a completion or notification sent).
    ///
    /// A pass asks for another only after it took guest packets, finished
    /// requests or sent a notification (or left poll mode, which only
    /// finished requests do), so this returns once the guest stops adding
    /// packets; a guest adding them as fast as they are served (from
    /// another thread) keeps it going.
    pub fn process(&mut self) -> Result<bool, StorvspError> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut any = false;
        loop {
            let pass = self.pass(&mut cx)?;
            any |= pass.worked;
            if !pass.again {
                return Ok(any);
            }
        }
    }

    /// One pass of the work [`StorvspChannel::process`] repeats. Returns
    /// whether another pass may find more to do at once; if not, wait for
    /// `cx` or the guest's signal before the next. Requests still running,
    /// and controller events (negotiation finished, LUNs changed), wake
    /// `cx`; ring activity is signalled separately (see
    /// [`StorvspChannel::run`]).
    ///
    /// The pass ends by entering or leaving poll mode
    /// ([`StorvspChannel::poll_mode`]) as the number of requests in flight
    /// crosses the threshold; leaving it asks for another pass when
    /// packets arrived while the guest's signals were masked, so the caller
    /// reads again instead of waiting for a signal that will not come.
    pub fn poll_work(&mut self, cx: &mut Context<'_>) -> Result<bool, StorvspError> {
        Ok(self.pass(cx)?.again)
    }

    /// Closes the channel (the guest closed it, or the controller is
    /// stopping or resetting): it reads nothing more and writes no
    /// completion, and drains like a failed channel — requests whose
    /// commands have not started are freed now, the others finish first.
    /// Keep driving it ([`StorvspChannel::run`] returns
    /// [`StorvspError::Closed`] once drained, or step it until
    /// [`StorvspChannel::is_drained`]) before the guest may reuse the
    /// ring and data pages. Closing a channel that already failed changes
    /// nothing.
    pub fn close(&mut self) {
        if self.failed.is_none() {
            self.fail(
                StorvspError::Closed,
                &mut Context::from_waker(Waker::noop()),
            );
        }
    }

    /// Ends the channel with `e` and starts draining.
    fn fail(&mut self, e: StorvspError, cx: &mut Context<'_>) {
        self.failed = Some(e);
        // Nothing the guest sends is served any more. Requests whose
        // commands never started go now; the others are drained.
        let channel = &mut self.channel;
        self.slots.release_queued(|r| channel.release(r));
        self.drain(cx);
    }

    /// A pass; on its first error, ends the channel and starts draining.
    fn pass(&mut self, cx: &mut Context<'_>) -> Result<Pass, StorvspError> {
        if let Some(e) = self.failed {
            self.drain(cx);
            return Err(e);
        }
        self.try_pass(cx).inspect_err(|&e| self.fail(e, cx))
    }

    /// One step of a failed channel's drain: polls the requests woken since
    /// the last step, and frees each that finished — its ring space given
    /// back, no completion written (the channel failed).
    fn drain(&mut self, cx: &mut Context<'_>) {
        self.slots.register(cx.waker());
        let channel = &mut self.channel;
        let never: Result<bool, core::convert::Infallible> =
            self.slots.poll_ready(|slots, index, _answer| {
                if let Some(r) = slots.release(index) {
                    channel.release(r);
                }
                Ok(())
            });
        let Ok(_) = never;
    }

    fn try_pass(&mut self, cx: &mut Context<'_>) -> Result<Pass, StorvspError> {
        let work = self.do_work(cx);
        // The completions written in the pass go out together (also when
        // it ends in an error: the guest gets what was answered).
        let published = self.channel.publish_writes();
        let mut pass = work?;
        published?;
        pass.again |= self.update_poll_mode()?;
        Ok(pass)
    }

    /// Sets the incoming ring's interrupt mask when the requests in flight
    /// reach the poll-mode threshold, and clears it (checking for packets
    /// that arrived meanwhile) when they drop below. Returns whether
    /// packets are waiting after unmasking.
    fn update_poll_mode(&mut self) -> Result<bool, StorvspError> {
        let threshold = self.controller.config.poll_mode_queue_depth.max(1);
        let poll = self.slots.busy() >= threshold;
        if poll == self.masked {
            return Ok(false);
        }
        self.masked = poll;
        if poll {
            self.channel.set_interrupt_mask(true)?;
            Ok(false)
        } else {
            Ok(self.channel.unmask_and_check()?)
        }
    }

    fn do_work(&mut self, cx: &mut Context<'_>) -> Result<Pass, StorvspError> {
        let mut progress = false;

        // Finish the requests woken since the last pass (and only those).
        // Requests wake the worker only while there are some: the in-place
        // path does no atomic work for it.
        let waiting = self.slots.busy() > 0;
        if waiting {
            self.slots.register(cx.waker());
        }
        let Self {
            slots,
            channel,
            controller,
            ..
        } = self;
        progress |= slots.poll_ready(|slots, index, answer| {
            finish_slot(channel, controller, slots, index, answer)
        })?;

        // Wake on controller events (negotiation, LUN changes) before
        // checking them. Every channel registers: a LUN change also lets a
        // sub-channel drop the LUN it cached, so a detached disk is not
        // kept open by an idle channel.
        let ready = self.controller.is_ready();
        self.controller
            .register_again(cx.waker(), &mut self.registered);
        if self
            .last_lun
            .as_ref()
            .is_some_and(|(generation, ..)| *generation != self.controller.generation())
        {
            self.last_lun = None;
        }

        // Quiescing: requests finish, nothing new starts.
        if self.quiescing {
            return Ok(Pass {
                worked: progress,
                again: progress,
            });
        }

        if self.primary && ready {
            progress |= self.announce_rescan()?;
        }

        // Take packets. Sub-channels wait for the negotiation.
        if !self.primary && !ready {
            return Ok(Pass {
                worked: progress,
                again: progress,
            });
        }
        // The ring space of the packets taken is handed back to the guest
        // once, after the batch (also when the batch ends in an error).
        let taken = self.take_packets();
        let published = self.channel.publish_reads();
        let (taken, drained) = taken?;
        published?;
        // Requests that started waiting in this batch wake the worker from
        // now on; one that was woken before this registration is found by
        // another pass.
        let started = !waiting && self.slots.busy() > 0;
        if started {
            self.slots.register(cx.waker());
        }
        let woken = started && self.slots.any_ready();
        // After a batch that emptied the ring, another pass is due only if
        // the guest wrote more before the read index was published (the
        // publish saw it); after that, the guest signals its next packet.
        let more = taken && (!drained || self.channel.has_seen_packets());
        Ok(Pass {
            worked: progress || taken,
            again: progress || more || woken,
        })
    }

    /// Takes packets while ring space and the queue depth allow, without
    /// publishing the read index: the first peek loads the guest's write
    /// index, the rest take the packets it showed. Returns whether any was
    /// taken, and whether the batch ended for want of packets (rather than
    /// ring space or queue depth).
    fn take_packets(&mut self) -> Result<(bool, bool), StorvspError> {
        // The worker's packet buffer, reused from pass to pass (it is
        // large: clearing a fresh one costs more than taking a small
        // packet).
        let mut packet = self
            .packet
            .take()
            .unwrap_or_else(|| Box::new(PacketRef::empty()));
        let r = self.take_packets_into(&mut packet);
        self.packet = Some(packet);
        r
    }

    fn take_packets_into(&mut self, packet: &mut PacketRef) -> Result<(bool, bool), StorvspError> {
        let mut taken = false;
        while !self.slots.is_full() {
            let reservation = match self.channel.reserve(MAX_PACKET_LEN) {
                Ok(r) => r,
                // The guest is not draining completions; the writer has
                // asked it (pending_send_sz) to signal when it does.
                Err(RingError::Full { .. }) => return Ok((taken, false)),
                Err(e) => return Err(e.into()),
            };
            let next = if taken {
                self.channel.take_seen_packet_into(packet)
            } else {
                self.channel.take_packet_into(packet)
            };
            match next {
                Ok(true) => {
                    taken = true;
                    self.handle(packet, reservation)?;
                }
                Ok(false) => {
                    self.channel.release(reservation);
                    return Ok((taken, true));
                }
                Err(e) => {
                    self.channel.release(reservation);
                    return Err(e.into());
                }
            }
        }
        Ok((taken, false))
    }

    /// Sends `ENUMERATE_BUS` if the LUNs changed since the guest last
    /// heard (Win7 and later), at the negotiated request size (a packet
    /// the host starts has no request to echo). Returns whether a packet
    /// was sent.
    fn announce_rescan(&mut self) -> Result<bool, StorvspError> {
        let generation = self.controller.generation();
        if generation != self.announced {
            self.announced = generation;
            self.enumerate_pending = self
                .controller
                .version()
                .is_some_and(|v| v >= Version::WIN7);
        }
        if !self.enumerate_pending {
            return Ok(false);
        }
        let size = self.controller.request_size();
        let mut buf = [0u8; MAX_PACKET_LEN];
        buf[..PACKET_HEADER_LEN].copy_from_slice(
            PacketHeader::new(
                Operation::ENUMERATE_BUS,
                PacketFlags::new(),
                NtStatus::SUCCESS,
            )
            .as_bytes(),
        );
        match self.channel.write_packet(
            OutgoingKind::InBand {
                completion_requested: false,
            },
            0,
            &buf[..size.packet_len()],
        ) {
            Ok(()) => {
                self.enumerate_pending = false;
                Ok(true)
            }
            Err(RingError::Full { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a completion (see [`write_completion`]).
    fn complete(
        &mut self,
        reservation: Reservation,
        transaction_id: u64,
        reply_len: usize,
        status: NtStatus,
        payload: &[u8],
    ) -> Result<(), StorvspError> {
        write_completion(
            &mut self.channel,
            reservation,
            transaction_id,
            reply_len,
            status,
            payload,
        )
    }

    fn handle(&mut self, packet: &PacketRef, reservation: Reservation) -> Result<(), StorvspError> {
        let transaction_id = packet.transaction_id;
        let reply_len = reply_len(packet);
        let size = self.controller.request_size();
        let (operation, body) = match check_packet(packet, size) {
            Ok(p) => p,
            Err(e) => {
                self.channel.release(reservation);
                return Err(e);
            }
        };
        let ready = self.controller.is_ready();
        let (status, reply) = match (operation, body) {
            (Operation::EXECUTE_SRB, Body::ExecuteSrb(request)) if ready => {
                return self.execute_srb(packet, request, reservation);
            }
            (Operation::RESET_LUN | Operation::RESET_ADAPTER | Operation::RESET_BUS, _)
                if ready =>
            {
                (NtStatus::SUCCESS, [0; hw::PACKET_PAYLOAD_LEN])
            }
            // Not a Fibre Channel adapter: there is no HBA data to report,
            // in any state, on any channel (catalog §5.2: operations not
            // served get `INVALID_DEVICE_STATE`); the negotiation state is
            // left alone. Sub-channels take no negotiation packets.
            (operation, _) if operation == Operation::FC_HBA_DATA || !self.primary => {
                (NtStatus::INVALID_DEVICE_STATE, [0; hw::PACKET_PAYLOAD_LEN])
            }
            (operation, body) => self.negotiate(operation, body),
        };
        self.complete(reservation, transaction_id, reply_len, status, &reply)
    }

    /// The primary channel's negotiation state machine (catalog §5.2):
    /// the completion status and payload (zero padded) for a non-I/O
    /// packet.
    fn negotiate(
        &mut self,
        operation: Operation,
        body: Body,
    ) -> (NtStatus, [u8; hw::PACKET_PAYLOAD_LEN]) {
        use NegotiationState as S;
        let controller = self.controller.clone();
        let mut reply = [0; hw::PACKET_PAYLOAD_LEN];
        let status = controller.update_protocol(|proto| match (proto.state, operation, body) {
            (S::Begin, Operation::BEGIN_INITIALIZATION, _) => {
                proto.state = S::QueryVersion;
                NtStatus::SUCCESS
            }
            (S::QueryVersion, Operation::QUERY_PROTOCOL_VERSION, Body::ProtocolVersion(v)) => {
                let v = v.major_minor;
                set_reply(&mut reply, ProtocolVersion::new(v).as_bytes());
                if v.is_supported() {
                    proto.version = Some(v);
                    proto.state = S::QueryProperties;
                    NtStatus::SUCCESS
                } else {
                    NtStatus::REVISION_MISMATCH
                }
            }
            (S::QueryProperties, Operation::QUERY_PROPERTIES, _) => {
                let version = proto.version.unwrap_or(Version::WIN6);
                set_reply(&mut reply, controller.properties(version).as_bytes());
                proto.state = S::EndInitialization;
                NtStatus::SUCCESS
            }
            (
                S::EndInitialization | S::Ready,
                Operation::CREATE_SUB_CHANNELS,
                Body::CreateSubChannels(count),
            ) => {
                if proto.version.is_none_or(|v| v < Version::WIN8) || proto.sub_channels.is_some() {
                    NtStatus::INVALID_DEVICE_STATE
                } else if count > controller.config.max_sub_channels {
                    NtStatus::INVALID_PARAMETER
                } else {
                    proto.sub_channels = Some(count);
                    NtStatus::SUCCESS
                }
            }
            (S::EndInitialization, Operation::END_INITIALIZATION, _) => {
                proto.state = S::Ready;
                // The guest scans the bus now; nothing to announce yet.
                self.announced = controller.generation();
                self.enumerate_pending = false;
                NtStatus::SUCCESS
            }
            _ => NtStatus::INVALID_DEVICE_STATE,
        });
        (status, reply)
    }

    fn execute_srb(
        &mut self,
        packet: &PacketRef,
        request: ScsiRequest,
        reservation: Reservation,
    ) -> Result<(), StorvspError> {
        let transaction_id = packet.transaction_id;
        let reply_len = reply_len(packet);
        let command = match self.start_srb(packet, &request) {
            Ok(answer) => {
                return complete_srb(
                    &mut self.channel,
                    &self.controller,
                    reservation,
                    transaction_id,
                    reply_len,
                    &request,
                    answer,
                );
            }
            Err(command) => command,
        };
        // A disk that really waits: the command runs in a request slot
        // (one is free: packets are taken only then).
        let taken = self.slots.take(NewRequest {
            transaction_id,
            reply_len,
            srb: request,
            ranges: packet.ranges(),
            lun: command.path,
            reservation,
        });
        let index = match taken {
            Ok(index) => index,
            // Packets are taken only while a slot is free; should that ever
            // not hold, the guest hears "busy" and retries.
            Err(request) => {
                return complete_srb(
                    &mut self.channel,
                    &self.controller,
                    request.reservation,
                    transaction_id,
                    reply_len,
                    &request.srb,
                    SrbAnswer::Srb(SrbStatus::BUSY),
                );
            }
        };
        let ranges = self.slots.lend_ranges(index);
        let mem = self.channel.memory().clone();
        let future = SlotFuture::from_or_box(run_command(mem, command, ranges));
        match self.slots.start(index, future) {
            Some(answer) => self.finish(index, answer),
            None => Ok(()),
        }
    }

    /// Completes the request in slot `index` with `answer` and frees the
    /// slot.
    fn finish(&mut self, index: usize, answer: SrbAnswer) -> Result<(), StorvspError> {
        finish_slot(
            &mut self.channel,
            &self.controller,
            &mut self.slots,
            index,
            answer,
        )
    }

    /// Runs an `EXECUTE_SRB` as far as it goes in place: its answer, or
    /// (`Err`) the command to run on a disk that waits.
    fn start_srb(
        &mut self,
        packet: &PacketRef,
        request: &ScsiRequest,
    ) -> Result<SrbAnswer, Command> {
        let invalid = SrbAnswer::Srb(SrbStatus::INVALID_REQUEST);
        let Some(cdb) = request.cdb().filter(|c| !c.is_empty()) else {
            return Ok(invalid);
        };
        if request.data_transfer_length.get() > self.controller.config.max_transfer_bytes {
            // Larger than the limit reported in QUERY_PROPERTIES.
            return Ok(invalid);
        }
        let mut cdb_buf = [0u8; hw::CDB_MAX_LEN];
        let cdb_len = cdb.len();
        cdb_buf[..cdb_len].copy_from_slice(cdb);
        let cdb = &cdb_buf[..cdb_len];
        let len = request.data_transfer_length.get() as usize;
        // The device writes guest memory unless this is a write.
        let writable = request.data_in != DataDirection::WRITE;
        let mem = &**self.channel.memory();
        let ranges = packet.ranges();
        let Ok(sg) = SgList::new(mem, ranges, writable).and_then(|sg| sg.subrange(0, len)) else {
            // The ranges are shorter than the transfer the guest asked for.
            return Ok(invalid);
        };
        let path = ScsiPath::new(request.path_id, request.target_id, request.lun);
        // REPORT LUNS is the target's: answered from the LUN map.
        match ReportLuns::parse(cdb) {
            Ok(report) => return Ok(self.report_luns(report, path, mem, ranges, len)),
            Err(CdbError::InvalidOpcode) => {}
            Err(e) => return Ok(SrbAnswer::Scsi(ScsiResult::check(e.sense()))),
        }
        let initiator = self.controller.config.initiator;
        let delivery = sense_delivery(request, self.controller.request_size());
        let Some(disk) = cached_lun(&self.controller, &mut self.last_lun, path) else {
            return Ok(missing_lun(cdb, mem, ranges, len));
        };
        // The common case (RAM disks and compositions of them): the command
        // runs in place, with no allocation.
        if let Some(r) = disk.run_now(cdb, &sg, initiator, delivery) {
            return Ok(SrbAnswer::Scsi(r));
        }
        Err(Command {
            disk: disk.clone(),
            cdb: cdb_buf,
            cdb_len,
            len,
            writable,
            initiator,
            delivery,
            path,
        })
    }

    /// REPORT LUNS from the LUN map: the LUNs on the request's path and
    /// target, sorted, single-level peripheral addressing.
    fn report_luns(
        &self,
        report: ReportLuns,
        path: ScsiPath,
        mem: &dyn parastor_core::GuestMemory,
        ranges: &[GpaRange],
        len: usize,
    ) -> SrbAnswer {
        // Every SELECT REPORT gets the same list: there are no well-known
        // logical units, and all LUNs use LUN addressing.
        let alloc_len = usize::try_from(report.alloc_len).unwrap_or(usize::MAX);
        let luns: Vec<u8> = self
            .controller
            .paths()
            .into_iter()
            .filter(|p| p.path == path.path && p.target == path.target)
            .map(|p| p.lun)
            .collect();
        let mut data = vec![0u8; 8 + 8 * luns.len()];
        data[..4].copy_from_slice(&((8 * luns.len()) as u32).to_be_bytes());
        for (i, lun) in luns.iter().enumerate() {
            data[8 + 8 * i + 1] = *lun;
        }
        SrbAnswer::Scsi(write_data(mem, ranges, len, &data, alloc_len))
    }
}

/// An `EXECUTE_SRB` to run on a LUN whose disk waits.
pub(crate) struct Command {
    pub(crate) disk: Lun,
    pub(crate) cdb: [u8; hw::CDB_MAX_LEN],
    pub(crate) cdb_len: usize,
    /// Bytes to transfer.
    pub(crate) len: usize,
    /// The device writes guest memory.
    pub(crate) writable: bool,
    pub(crate) initiator: parastor_core::InitiatorId,
    pub(crate) delivery: SenseDelivery,
    pub(crate) path: ScsiPath,
}

/// Runs `command` on its LUN over `ranges` of `mem`; hands `ranges` back
/// with the outcome (`None`: the data buffer could not be built).
pub(crate) async fn run_command(
    mem: ChannelMemory<'_>,
    command: Command,
    ranges: Vec<GpaRange>,
) -> SlotOutput {
    let Command {
        disk,
        cdb,
        cdb_len,
        len,
        writable,
        initiator,
        delivery,
        ..
    } = command;
    let result = match SgList::new(&*mem, &ranges, writable).and_then(|sg| sg.subrange(0, len)) {
        Ok(sg) => Some(disk.execute(&cdb[..cdb_len], sg, initiator, delivery).await),
        Err(_) => None,
    };
    (result, ranges)
}

/// Completes the request in slot `index` with `answer` (its completion
/// written into the slot's reservation) and frees the slot.
fn finish_slot(
    channel: &mut Channel<'_>,
    controller: &Controller,
    slots: &mut Slots<'_>,
    index: usize,
    answer: SrbAnswer,
) -> Result<(), StorvspError> {
    let record = slots.record(index);
    let (transaction_id, reply_len, srb) =
        (record.transaction_id(), record.reply_len(), *record.srb());
    match slots.release(index) {
        Some(reservation) => complete_srb(
            channel,
            controller,
            reservation,
            transaction_id,
            reply_len,
            &srb,
            answer,
        ),
        // A busy slot always holds its reservation.
        None => Ok(()),
    }
}

/// Completes an `EXECUTE_SRB` with `answer`, in a completion of
/// `reply_len` payload bytes (the request's own size). The sense data is
/// capped to the negotiated version's sense buffer.
fn complete_srb(
    channel: &mut Channel<'_>,
    controller: &Controller,
    reservation: Reservation,
    transaction_id: u64,
    reply_len: usize,
    request: &ScsiRequest,
    answer: SrbAnswer,
) -> Result<(), StorvspError> {
    let size = controller.request_size();
    let (status, reply) = srb_completion(request, &answer, size);
    write_completion(
        channel,
        reservation,
        transaction_id,
        reply_len,
        status,
        reply.as_bytes(),
    )
}

/// Writes a completion for `transaction_id` into `reservation`: the header
/// with `status`, then `payload`, zero padded or truncated to `reply_len`
/// bytes (the request's own size, see [`reply_len`]). Published with the
/// pass's other writes.
fn write_completion(
    channel: &mut Channel<'_>,
    reservation: Reservation,
    transaction_id: u64,
    reply_len: usize,
    status: NtStatus,
    payload: &[u8],
) -> Result<(), StorvspError> {
    let mut buf = [0u8; MAX_PACKET_LEN];
    buf[..PACKET_HEADER_LEN].copy_from_slice(
        PacketHeader::new(Operation::COMPLETE_IO, PacketFlags::new(), status).as_bytes(),
    );
    let reply_len = reply_len.min(hw::PACKET_PAYLOAD_LEN);
    let n = payload.len().min(reply_len);
    buf[PACKET_HEADER_LEN..PACKET_HEADER_LEN + n].copy_from_slice(&payload[..n]);
    channel.write_reserved_deferred(
        reservation,
        OutgoingKind::Completion,
        transaction_id,
        &buf[..PACKET_HEADER_LEN + reply_len],
    )?;
    Ok(())
}

/// The LUN at `path`: `last` (the LUN a channel last addressed) if the
/// controller's LUN map has not changed since, else from the map, and
/// remembered in `last`.
fn cached_lun<'l>(
    controller: &Controller,
    last: &'l mut Option<(u64, ScsiPath, Lun)>,
    path: ScsiPath,
) -> Option<&'l Lun> {
    let generation = controller.generation();
    let hit = matches!(last, Some((g, p, _)) if *g == generation && *p == path);
    if !hit {
        *last = controller.lun(path).map(|lun| (generation, path, lun));
    }
    last.as_ref().map(|(_, _, lun)| lun)
}

/// How `request`'s CHECK CONDITION sense reaches the guest: in its
/// completion (autosense) when autosense is on — always before Windows 8,
/// else unless the request sets `DISABLE_AUTOSENSE` — and the request has
/// a sense buffer; otherwise only through REQUEST SENSE. This is the rule
/// [`srb_completion`] applies when it fills the completion's sense.
pub(crate) fn sense_delivery(request: &ScsiRequest, size: RequestSize) -> SenseDelivery {
    if autosense_room(request, size) > 0 {
        SenseDelivery::Autosense
    } else {
        SenseDelivery::RequestSense
    }
}

/// How many sense bytes the completion of `request` carries: none when
/// the guest disabled autosense (a Win8+ flag) or gave no sense buffer,
/// else its buffer, capped by the protocol's. The one rule both
/// [`sense_delivery`] and [`srb_completion`] follow.
fn autosense_room(request: &ScsiRequest, size: RequestSize) -> usize {
    let enabled = size == RequestSize::PreWin8 || !request.srb_flags.disable_autosense();
    if enabled {
        usize::from(request.sense_info_ex_length).min(size.sense_buffer_len())
    } else {
        0
    }
}

/// Copies `bytes` to the start of the (zeroed) completion payload `reply`.
fn set_reply(reply: &mut [u8; hw::PACKET_PAYLOAD_LEN], bytes: &[u8]) {
    let n = bytes.len().min(reply.len());
    reply[..n].copy_from_slice(&bytes[..n]);
}

/// The packet's operation and body, if it is a request StorVSP answers;
/// else why the channel must end. A short `FC_HBA_DATA` is answered like
/// any other (with no body).
fn check_packet(packet: &PacketRef, size: RequestSize) -> Result<(Operation, Body), StorvspError> {
    let transaction_id = packet.transaction_id;
    if packet.kind == PacketKind::Completion {
        return Err(StorvspError::UnexpectedPacket { transaction_id });
    }
    if !packet.completion_requested {
        return Err(StorvspError::NotTransactional { transaction_id });
    }
    match parse_packet(packet.payload(), size) {
        Ok((header, body)) => Ok((header.operation, body)),
        Err(ParseError::TruncatedBody {
            operation: Operation::FC_HBA_DATA,
            ..
        }) => Ok((Operation::FC_HBA_DATA, Body::None)),
        Err(error) => Err(StorvspError::Packet {
            transaction_id,
            error,
        }),
    }
}

/// Writes `data`, truncated to `alloc_len` and the buffer, to the request's
/// data-in buffer.
fn write_data(
    mem: &dyn parastor_core::GuestMemory,
    ranges: &[GpaRange],
    len: usize,
    data: &[u8],
    alloc_len: usize,
) -> ScsiResult {
    let n = data.len().min(alloc_len).min(len);
    if n == 0 {
        return ScsiResult::good(0);
    }
    let written = SgList::new(mem, ranges, true)
        .and_then(|sg| sg.subrange(0, n))
        .map_err(|_| ScsiResult::check(SenseData::illegal(AdditionalSense::INVALID_FIELD_IN_CDB)))
        .and_then(|sg| {
            sg.write_all(&data[..n])
                .map_err(|e| disk_error_result(&DiskError::MemoryAccess(e)))
        });
    match written {
        Ok(()) => ScsiResult::good(n),
        Err(r) => r,
    }
}

/// A request to a LUN that is not attached (catalog §5.3): standard
/// INQUIRY says "no logical unit" (peripheral qualifier 3, type 0x1F), so
/// the guest keeps scanning; VPD pages are an invalid CDB; every other
/// command is `SRB_STATUS_INVALID_LUN`.
fn missing_lun(
    cdb: &[u8],
    mem: &dyn parastor_core::GuestMemory,
    ranges: &[GpaRange],
    len: usize,
) -> SrbAnswer {
    if cdb.first().copied().map(ScsiOp::new) != Some(ScsiOp::INQUIRY) {
        return SrbAnswer::Srb(SrbStatus::INVALID_LUN);
    }
    let inquiry = match InquiryCdb::read_from_prefix(cdb) {
        Ok((c, _)) if !c.flags.evpd() => c,
        _ => {
            return SrbAnswer::Scsi(ScsiResult::check(SenseData::illegal(
                AdditionalSense::INVALID_FIELD_IN_CDB,
            )));
        }
    };
    let data = InquiryData {
        // No logical unit here, of no known type.
        peripheral: Peripheral::new()
            .with_qualifier(PeripheralQualifier::NOT_SUPPORTED)
            .with_device_type(PeripheralDeviceType::UNKNOWN),
        // SPC-4.
        version: 0x06,
        flags3: InquiryFlags3::new().with_response_data_format(2),
        additional_len: (MISSING_LUN_INQUIRY_LEN - 5) as u8,
        ..Default::default()
    };
    SrbAnswer::Scsi(write_data(
        mem,
        ranges,
        len,
        data.as_bytes(),
        inquiry.alloc_len.get().into(),
    ))
}

/// The completion of an `EXECUTE_SRB`: NT status and the request as sent
/// back, with SRB status, SCSI status, transfer length and sense (capped to
/// the guest's sense buffer and the protocol's) filled in.
pub(crate) fn srb_completion(
    request: &ScsiRequest,
    answer: &SrbAnswer,
    size: RequestSize,
) -> (NtStatus, ScsiRequest) {
    let mut out = *request;
    out.payload = [0; hw::SCSI_REQUEST_PAYLOAD_LEN];
    out.sense_info_ex_length = 0;
    let srb = match answer {
        SrbAnswer::Srb(srb) => {
            out.scsi_status = ScsiStatus::GOOD;
            out.data_transfer_length = 0.into();
            SrbStatusAndFlags::new().with_status(*srb)
        }
        SrbAnswer::Scsi(r) => {
            out.scsi_status = r.status;
            out.data_transfer_length = u32::try_from(r.tx).unwrap_or(u32::MAX).into();
            let mut srb = SrbStatusAndFlags::new().with_status(match r.status {
                ScsiStatus::GOOD => SrbStatus::SUCCESS,
                // Out of a resource right now: the guest's port driver
                // requeues SRB_STATUS_BUSY (and Linux storvsc hands the
                // SCSI status to the midlayer, which retries TASK SET FULL).
                ScsiStatus::TASK_SET_FULL | ScsiStatus::BUSY => SrbStatus::BUSY,
                _ => SrbStatus::ERROR,
            });
            let cap = autosense_room(request, size);
            if let Some(sense) = r.sense.filter(|_| cap > 0) {
                let fixed = sense.to_fixed();
                let bytes = fixed.as_bytes();
                let n = cap.min(bytes.len());
                if n > 0 {
                    out.payload[..n].copy_from_slice(&bytes[..n]);
                    out.sense_info_ex_length = n as u8;
                    srb.set_autosense_valid(true);
                }
            }
            srb
        }
    };
    out.srb_status = srb;
    (srb.status().nt_status(), out)
}
