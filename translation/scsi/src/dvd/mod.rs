//! A read-only SCSI CD/DVD drive (MMC-6, DVD-ROM profile) over a [`Disk`].
//!
//! [`ScsiDvd`] presents peripheral device type 5, removable, with 2048-byte
//! logical blocks over any backend whose sector size divides 2048 (512,
//! 1024 or 2048 bytes); a backend with larger sectors is refused with
//! [`DvdError::UnsupportedSectorSize`] when the drive is built or the medium
//! inserted (never an assertion, unlike OpenHCL's `SimpleScsiDvd`).
//!
//! Medium and tray:
//! - The host inserts or removes media with [`ScsiDvd::change_media`]; the
//!   host is authoritative, so PREVENT ALLOW MEDIUM REMOVAL does not block
//!   it. [`ScsiDvd::request_eject`] models the eject button (an eject
//!   request event; the guest decides).
//! - The guest ejects with START STOP UNIT LoEj=1 Start=0, refused with
//!   05/53/02 MEDIUM REMOVAL PREVENTED while removal is prevented. The
//!   medium is dropped (the backend's `eject` is called; a backend without
//!   removable media is fine) and the tray is open. LoEj=1 Start=1 closes
//!   the tray.
//! - No medium: NOT READY 02/3A/01 (tray closed) or 02/3A/02 (tray open),
//!   as MMC-6 distinguishes them (host removal leaves the tray closed, a
//!   guest eject leaves it open).
//! - After an insertion, the next command other than INQUIRY, REQUEST
//!   SENSE, GET CONFIGURATION and GET EVENT STATUS NOTIFICATION (which
//!   MMC-6 runs without reporting a unit attention) gets UNIT ATTENTION
//!   06/28/00 once; REQUEST SENSE reports and clears it.
//! - GET EVENT STATUS NOTIFICATION (polled mode only; asynchronous → 05/24/00)
//!   reports the media class: new media, media removal, eject request, each
//!   once. One event is kept: a later event replaces an unreported one, so
//!   the guest sees the latest state.
//!
//! Writes: the DVD-ROM profile has no write feature, so WRITE and every
//! other command outside the list are 05/20/00 INVALID COMMAND OPERATION
//! CODE (not DATA PROTECT, which would suggest a write-protected writable
//! medium).

use crate::data::{check_data_out, data_in, read_capacity10};
use crate::inquiry::{push_t10_designator, standard_inquiry, vpd_page};
use crate::mode_pages::{check_mode_sense, mode_select_pages, mode_sense_data};
use crate::result::{Res, ScsiResult, illegal, invalid_cdb, invalid_param};
use crate::sense::{SenseDelivery, SenseTable};
use alloc::vec::Vec;
use core::fmt;
use parastor_core::sync::Mutex;
use parastor_core::{Disk, DiskError, InitiatorId, IoOptions, SgList};
use parastor_hw::scsi::mmc::{
    self, AdrControl, ConfigurationRt, DataMode, DiscInformation, DiscInformationType,
    DiscMediaType, DiscStatus, DiscStructureFormat, EventClasses, FeatureCode, FeatureDescriptor,
    FeatureFlags, FeatureHeader, GesnClass, GesnHeader, MechanismState, MechanismStatusHeader,
    MediaEvent, MediaEventByte, MediaEventCode, MediaStatus, MmcCommand, NotificationClass,
    PerformanceDataType, PerformanceDescriptor, PerformanceHeader, PerformanceType, Profile,
    StreamingType, TocDescriptor, TocFormat, TocHeader, TrackAddressType, TrackInformation,
    TrackMode, parse_mmc_cdb,
};
use parastor_hw::scsi::{
    AdditionalSense, CdbError, Command, DeviceSpecific, InquiryData, InquiryFlags1, InquiryFlags3,
    ModePage, ModePage12, ModePageCode, PageControl, Peripheral, PeripheralDeviceType, ScsiOp,
    SenseData, SenseKey, Transfer, VpdPage, parse_cdb,
};
use zerocopy::IntoBytes;

const BLOCK: u64 = mmc::BLOCK_SIZE as u64;
/// Largest READ, in bytes.
const MAX_TRANSFER_BYTES: u64 = 8 << 20;
/// Nominal read speed reported by GET PERFORMANCE (8x DVD), kB/s.
const READ_SPEED_KBS: u32 = 11_080;

/// Why a medium cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DvdError {
    /// The backend's sector size is larger than, or does not divide, the
    /// 2048-byte block.
    UnsupportedSectorSize(u32),
}

impl fmt::Display for DvdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DvdError::UnsupportedSectorSize(ss) => write!(
                f,
                "backend sector size {ss} does not divide the 2048-byte DVD block"
            ),
        }
    }
}

impl core::error::Error for DvdError {}

/// The identity a [`ScsiDvd`] shows in INQUIRY.
#[derive(Clone, Debug)]
pub struct DvdParams {
    /// T10 vendor identification, space padded.
    pub vendor: [u8; 8],
    /// Product identification, space padded.
    pub product: [u8; 16],
    /// Product revision level.
    pub revision: [u8; 4],
    /// Device identifier for VPD 0x83.
    pub device_id: [u8; 16],
}

impl Default for DvdParams {
    fn default() -> Self {
        DvdParams {
            vendor: *b"Msft    ",
            product: *b"Virtual DVD-ROM ",
            revision: *b"1.0 ",
            device_id: [0; 16],
        }
    }
}

/// A loaded medium.
#[derive(Clone)]
struct Media {
    disk: Disk,
    /// log2(2048 / backend sector size).
    shift: u32,
}

impl Media {
    fn new(disk: Disk) -> Result<Media, DvdError> {
        let ss = disk.sector_size();
        if ss == 0 || ss > mmc::BLOCK_SIZE || !mmc::BLOCK_SIZE.is_multiple_of(ss) {
            return Err(DvdError::UnsupportedSectorSize(ss));
        }
        Ok(Media {
            shift: (mmc::BLOCK_SIZE / ss).trailing_zeros(),
            disk,
        })
    }

    /// Capacity in 2048-byte blocks (a partial tail block is not visible).
    fn blocks(&self) -> u64 {
        self.disk.sector_count() >> self.shift
    }
}

#[derive(Default)]
struct State {
    media: Option<Media>,
    tray_open: bool,
    prevent: bool,
    /// Media event not yet reported by GET EVENT STATUS NOTIFICATION.
    event: Option<MediaEventCode>,
    /// NOT READY TO READY CHANGE not yet reported.
    unit_attention: bool,
}

impl State {
    fn not_ready(&self) -> ScsiResult {
        ScsiResult::check(SenseData::new(
            SenseKey::NOT_READY,
            if self.tray_open {
                AdditionalSense::MEDIUM_NOT_PRESENT_TRAY_OPEN
            } else {
                AdditionalSense::MEDIUM_NOT_PRESENT_TRAY_CLOSED
            },
        ))
    }

    fn media(&self) -> Res<Media> {
        self.media.clone().ok_or_else(|| self.not_ready())
    }

    fn media_status(&self) -> MediaStatus {
        MediaStatus::new()
            .with_media_present(self.media.is_some())
            .with_tray_open(self.tray_open)
    }
}

fn unit_attention() -> SenseData {
    SenseData::new(
        SenseKey::UNIT_ATTENTION,
        AdditionalSense::NOT_READY_TO_READY_CHANGE,
    )
}

fn invalid_opcode() -> ScsiResult {
    illegal(AdditionalSense::INVALID_COMMAND)
}

/// LBA to MSF (0, M, S, F) with the 2-second (150-frame) lead-in offset.
fn msf(lba: u64) -> [u8; 4] {
    let f = lba.saturating_add(150);
    let m = (f / (75 * 60)).min(255);
    [0, m as u8, ((f / 75) % 60) as u8, (f % 75) as u8]
}

/// The commands this drive runs, by operation code.
const MMC_OPCODES: &[ScsiOp] = &[
    ScsiOp::TEST_UNIT_READY,
    ScsiOp::REQUEST_SENSE,
    ScsiOp::INQUIRY,
    ScsiOp::START_STOP_UNIT,
    ScsiOp::PREVENT_ALLOW_MEDIUM_REMOVAL,
    ScsiOp::READ_CAPACITY10,
    ScsiOp::READ10,
    ScsiOp::READ12,
    ScsiOp::READ16,
    ScsiOp::MODE_SELECT10,
    ScsiOp::MODE_SENSE10,
    ScsiOp::READ_TOC,
    ScsiOp::GET_CONFIGURATION,
    ScsiOp::GET_EVENT_STATUS_NOTIFICATION,
    ScsiOp::READ_DISC_INFORMATION,
    ScsiOp::READ_TRACK_INFORMATION,
    ScsiOp::READ_BUFFER_CAPACITY,
    ScsiOp::GET_PERFORMANCE,
    ScsiOp::READ_DISC_STRUCTURE,
    ScsiOp::SET_STREAMING,
    ScsiOp::MECHANISM_STATUS,
];

/// A SCSI CD/DVD-ROM drive whose medium is an optional [`Disk`].
pub struct ScsiDvd {
    params: DvdParams,
    state: Mutex<State>,
    /// Sense of each initiator's last failed command, for REQUEST SENSE.
    sense: SenseTable,
}

impl ScsiDvd {
    /// A drive with `media` loaded (or empty, tray closed) and the default
    /// identity.
    pub fn new(media: Option<Disk>) -> Result<ScsiDvd, DvdError> {
        Self::with_params(media, DvdParams::default())
    }

    /// A drive with `media` loaded (or empty) and identity `params`.
    pub fn with_params(media: Option<Disk>, params: DvdParams) -> Result<ScsiDvd, DvdError> {
        let media = media.map(Media::new).transpose()?;
        Ok(ScsiDvd {
            params,
            state: Mutex::new(State {
                media,
                ..State::default()
            }),
            sense: SenseTable::default(),
        })
    }

    /// Host insertion (`Some`) or removal (`None`) of the medium. An
    /// insertion closes the tray and raises a new-media event and a
    /// unit attention; a removal raises a media-removal event. A medium
    /// with sectors larger than 2048 bytes is refused and the drive is
    /// left unchanged.
    pub fn change_media(&self, media: Option<Disk>) -> Result<(), DvdError> {
        let media = media.map(Media::new).transpose()?;
        let mut s = self.state.lock();
        match media {
            Some(m) => {
                s.media = Some(m);
                s.tray_open = false;
                s.event = Some(MediaEventCode::NEW_MEDIA);
                s.unit_attention = true;
            }
            None => {
                if s.media.take().is_some() {
                    s.event = Some(MediaEventCode::MEDIA_REMOVAL);
                }
                s.unit_attention = false;
            }
        }
        Ok(())
    }

    /// The eject button: an eject request event for the guest to act on.
    pub fn request_eject(&self) {
        self.state.lock().event = Some(MediaEventCode::EJECT_REQUEST);
    }

    /// The loaded medium, if any.
    pub fn media(&self) -> Option<Disk> {
        self.state.lock().media.as_ref().map(|m| m.disk.clone())
    }

    /// Executes one command; the same contract as
    /// [`ScsiDisk::execute`](crate::ScsiDisk::execute).
    pub async fn execute(
        &self,
        cdb: &[u8],
        data: SgList<'_>,
        initiator: InitiatorId,
        delivery: SenseDelivery,
    ) -> ScsiResult {
        let result = self.run(cdb, &data, initiator).await;
        self.sense.finish(result, initiator, delivery)
    }

    async fn run(&self, cdb: &[u8], data: &SgList<'_>, initiator: InitiatorId) -> Res {
        // The checks MMC-6 makes before any field: a command this drive
        // does not run, a CDB shorter than its operation code, then the
        // unit attention (which these four do not report).
        let op = ScsiOp::new(*cdb.first().ok_or_else(invalid_cdb)?);
        if !MMC_OPCODES.contains(&op) {
            return Err(invalid_opcode());
        }
        let len = op.cdb_len().ok_or_else(invalid_opcode)?;
        let cdb = cdb.get(..len).ok_or_else(invalid_cdb)?;
        if !matches!(
            op,
            ScsiOp::INQUIRY
                | ScsiOp::REQUEST_SENSE
                | ScsiOp::GET_CONFIGURATION
                | ScsiOp::GET_EVENT_STATUS_NOTIFICATION
        ) {
            let mut s = self.state.lock();
            if core::mem::take(&mut s.unit_attention) {
                return Err(ScsiResult::check(unit_attention()));
            }
        }
        match parse_mmc_cdb(cdb) {
            Ok(cmd) => return self.run_mmc(data, cmd),
            // One of the SPC / SBC commands, parsed below.
            Err(CdbError::InvalidOpcode) => {}
            Err(e) => return Err(ScsiResult::check(e.sense())),
        }
        let cmd = parse_cdb(cdb).map_err(|e| ScsiResult::check(e.sense()))?;
        let opts = IoOptions {
            initiator,
            ..IoOptions::default()
        };
        match cmd {
            Command::TestUnitReady => {
                self.state.lock().media()?;
                Ok(0)
            }
            Command::RequestSense { desc, alloc_len } => {
                let sense = {
                    let mut s = self.state.lock();
                    if core::mem::take(&mut s.unit_attention) {
                        Some(unit_attention())
                    } else if let Some(sense) = self.sense.take(initiator) {
                        Some(sense)
                    } else if s.media.is_none() {
                        s.not_ready().sense
                    } else {
                        None
                    }
                };
                crate::sense::request_sense(data, sense, desc, alloc_len.into())
            }
            Command::Inquiry {
                evpd,
                page,
                alloc_len,
            } => self.inquiry(data, evpd, page, alloc_len.into()),
            Command::ReadCapacity10 => {
                let m = self.state.lock().media()?;
                read_capacity10(data, m.blocks(), mmc::BLOCK_SIZE)
            }
            Command::Read(t) => self.read(data, t, opts).await,
            Command::ModeSense {
                pc,
                page,
                subpage,
                alloc_len,
                ..
            } => mode_sense(data, pc, page, subpage, alloc_len.into()),
            Command::ModeSelect {
                pf, sp, param_len, ..
            } => mode_select(data, pf, sp, param_len.into()),
            Command::StartStopUnit {
                power_condition,
                loej,
                start,
                ..
            } => {
                // A power condition makes LoEj and Start ignored (MMC-6).
                if power_condition != 0 || !loej {
                    return Ok(0);
                }
                if start {
                    self.state.lock().tray_open = false;
                    return Ok(0);
                }
                let ejected = {
                    let mut s = self.state.lock();
                    if s.prevent {
                        return Err(illegal(AdditionalSense::MEDIUM_REMOVAL_PREVENTED));
                    }
                    s.tray_open = true;
                    let m = s.media.take();
                    if m.is_some() {
                        s.event = Some(MediaEventCode::MEDIA_REMOVAL);
                    }
                    m
                };
                if let Some(m) = ejected {
                    match m.disk.eject().await {
                        Ok(()) | Err(DiskError::UnsupportedEject) => {}
                        Err(e) => log::warn!("dvd: backend eject failed: {e}"),
                    }
                }
                Ok(0)
            }
            _ => Err(invalid_opcode()),
        }
    }

    /// Runs an MMC command; its fields are judged here, after the medium
    /// where MMC-6 checks that first.
    fn run_mmc(&self, data: &SgList<'_>, cmd: MmcCommand) -> Res {
        match cmd {
            MmcCommand::PreventAllowMediumRemoval {
                prevent,
                persistent,
            } => {
                self.state.lock().prevent = prevent || persistent;
                Ok(0)
            }
            MmcCommand::ReadToc {
                msf,
                format,
                track,
                alloc_len,
            } => self.read_toc(data, msf, format, track, alloc_len.into()),
            MmcCommand::GetConfiguration {
                rt,
                start,
                alloc_len,
            } => self.get_configuration(data, rt, start, alloc_len.into()),
            MmcCommand::GetEventStatusNotification {
                polled,
                classes,
                alloc_len,
            } => self.gesn(data, polled, classes, alloc_len.into()),
            MmcCommand::ReadDiscInformation {
                data_type,
                alloc_len,
            } => self.disc_information(data, data_type, alloc_len.into()),
            MmcCommand::ReadTrackInformation {
                address_type,
                number,
                alloc_len,
            } => self.track_information(data, address_type, number, alloc_len.into()),
            MmcCommand::ReadBufferCapacity { block, alloc_len } => {
                read_buffer_capacity(data, block, alloc_len.into())
            }
            MmcCommand::GetPerformance {
                data_type,
                max_descriptors,
                kind,
                ..
            } => self.get_performance(data, data_type, max_descriptors, kind),
            MmcCommand::ReadDiscStructure {
                media_type,
                layer,
                format,
                alloc_len,
                ..
            } => self.read_dvd_structure(data, media_type, layer, format, alloc_len.into()),
            MmcCommand::SetStreaming { kind, param_len } => {
                set_streaming(data, kind, param_len.into())
            }
            MmcCommand::MechanismStatus { alloc_len } => {
                self.mechanism_status(data, alloc_len.into())
            }
        }
    }

    async fn read(&self, data: &SgList<'_>, t: Transfer, opts: IoOptions) -> Res {
        let m = self.state.lock().media()?;
        match t.lba.checked_add(t.blocks.into()) {
            Some(end) if end <= m.blocks() => {}
            _ => return Err(DiskError::IllegalBlock.into()),
        }
        let bytes = u64::from(t.blocks) * BLOCK;
        if bytes > MAX_TRANSFER_BYTES || bytes > data.len() as u64 {
            return Err(invalid_cdb());
        }
        if bytes == 0 {
            return Ok(0);
        }
        let buf = data
            .subrange(0, bytes as usize)
            .map_err(|_| invalid_cdb())?;
        m.disk.read(buf, t.lba << m.shift, opts).await?;
        Ok(bytes as usize)
    }

    fn inquiry(&self, data: &SgList<'_>, evpd: bool, page: VpdPage, alloc_len: usize) -> Res {
        if !evpd {
            let d = InquiryData {
                peripheral: Peripheral::new().with_device_type(PeripheralDeviceType::CDROM),
                flags1: InquiryFlags1::new().with_rmb(true),
                flags3: InquiryFlags3::new().with_response_data_format(2),
                ..standard_inquiry(
                    self.params.vendor,
                    self.params.product,
                    self.params.revision,
                )
            };
            return data_in(data, d.as_bytes(), alloc_len);
        }
        let body: Vec<u8> = match page {
            VpdPage::SUPPORTED_PAGES => [VpdPage::SUPPORTED_PAGES, VpdPage::DEVICE_IDENTIFICATION]
                .as_bytes()
                .to_vec(),
            VpdPage::DEVICE_IDENTIFICATION => {
                let mut b = Vec::new();
                push_t10_designator(&mut b, &self.params.vendor, &self.params.device_id);
                b
            }
            _ => return Err(invalid_cdb()),
        };
        let out = vpd_page(PeripheralDeviceType::CDROM, page, &body);
        data_in(data, &out, alloc_len)
    }

    fn gesn(
        &self,
        data: &SgList<'_>,
        polled: bool,
        classes: EventClasses,
        alloc_len: usize,
    ) -> Res {
        if !polled {
            // Asynchronous notification is not supported.
            return Err(invalid_cdb());
        }
        let supported = EventClasses::new().with_media(true);
        let mut out = Vec::with_capacity(8);
        if !classes.media() {
            let h = GesnHeader {
                event_data_len: 2.into(),
                class: GesnClass::new().with_nea(true),
                supported,
            };
            return data_in(data, h.as_bytes(), alloc_len);
        }
        let (code, status) = {
            let mut s = self.state.lock();
            let code = s.event.take().unwrap_or(MediaEventCode::NO_CHANGE);
            (code, s.media_status())
        };
        out.extend_from_slice(
            GesnHeader {
                event_data_len: 6.into(),
                class: GesnClass::new().with_class(NotificationClass::MEDIA),
                supported,
            }
            .as_bytes(),
        );
        out.extend_from_slice(
            MediaEvent {
                code: MediaEventByte::new().with_code(code),
                status,
                start_slot: 0,
                end_slot: 0,
            }
            .as_bytes(),
        );
        data_in(data, &out, alloc_len)
    }

    fn get_configuration(
        &self,
        data: &SgList<'_>,
        rt: ConfigurationRt,
        start: FeatureCode,
        alloc_len: usize,
    ) -> Res {
        if !matches!(
            rt,
            ConfigurationRt::ALL | ConfigurationRt::CURRENT | ConfigurationRt::ONE
        ) {
            return Err(invalid_cdb());
        }
        let loaded = self.state.lock().media.is_some();
        let cur = FeatureFlags::new().with_current(loaded);
        let always = FeatureFlags::new().with_persistent(true).with_current(true);
        let mut out = Vec::new();
        out.extend_from_slice(&[0; size_of::<FeatureHeader>()]);
        let mut add = |code: FeatureCode, version: u8, flags: FeatureFlags, body: &[u8]| {
            let wanted = match rt {
                ConfigurationRt::ALL => code >= start,
                ConfigurationRt::CURRENT => code >= start && flags.current(),
                _ => code == start,
            };
            if wanted {
                out.extend_from_slice(
                    FeatureDescriptor {
                        code,
                        flags: flags.with_version(version),
                        additional_len: body.len() as u8,
                    }
                    .as_bytes(),
                );
                out.extend_from_slice(body);
            }
        };
        // DVD-ROM (current with a medium), then CD-ROM (never current).
        let mut profiles = [0u8; 8];
        profiles[..2].copy_from_slice(Profile::DVD_ROM.as_bytes());
        profiles[2] = u8::from(loaded);
        profiles[4..6].copy_from_slice(Profile::CD_ROM.as_bytes());
        add(FeatureCode::PROFILE_LIST, 0, always, &profiles);
        // Core: SCSI physical interface (1), DBE.
        add(FeatureCode::CORE, 2, always, &[0, 0, 0, 1, 0x01, 0, 0, 0]);
        // Morphing: polled events only (Async = 0).
        add(FeatureCode::MORPHING, 1, always, &[0, 0, 0, 0]);
        // Removable medium: tray loading mechanism, Load, Eject, Lock.
        add(
            FeatureCode::REMOVABLE_MEDIUM,
            0,
            always,
            &[0x20 | 0x10 | 0x08 | 0x01, 0, 0, 0],
        );
        // Random readable: 2048-byte blocks, blocking 16.
        let mut rr = [0u8; 8];
        rr[..4].copy_from_slice(&mmc::BLOCK_SIZE.to_be_bytes());
        rr[4..6].copy_from_slice(&16u16.to_be_bytes());
        add(FeatureCode::RANDOM_READABLE, 0, cur, &rr);
        add(FeatureCode::DVD_READ, 0, cur, &[]);
        let h = FeatureHeader {
            data_len: ((out.len() - 4) as u32).into(),
            reserved: 0.into(),
            current_profile: if loaded {
                Profile::DVD_ROM
            } else {
                Profile::NONE
            },
        };
        out[..size_of::<FeatureHeader>()].copy_from_slice(h.as_bytes());
        data_in(data, &out, alloc_len)
    }

    fn read_toc(
        &self,
        data: &SgList<'_>,
        msf_bit: bool,
        format: TocFormat,
        track: u8,
        alloc_len: usize,
    ) -> Res {
        let m = self.state.lock().media()?;
        let addr = |lba: u64| {
            if msf_bit {
                msf(lba)
            } else {
                u32::try_from(lba).unwrap_or(u32::MAX).to_be_bytes()
            }
        };
        let desc = |track: u8, lba: u64| TocDescriptor {
            // Q sub-channel: current position; a data track, recorded
            // uninterrupted.
            adr_control: AdrControl::new().with_adr(1).with_control(4),
            track,
            address: addr(lba),
            ..Default::default()
        };
        let mut descs = Vec::new();
        match format {
            TocFormat::TOC => match track {
                0 | 1 => {
                    descs.push(desc(1, 0));
                    descs.push(desc(0xAA, m.blocks()));
                }
                0xAA => descs.push(desc(0xAA, m.blocks())),
                _ => return Err(invalid_cdb()),
            },
            TocFormat::SESSION_INFO => descs.push(desc(1, 0)),
            _ => return Err(invalid_cdb()),
        }
        let mut out = Vec::new();
        out.extend_from_slice(
            TocHeader {
                data_len: ((2 + descs.len() * size_of::<TocDescriptor>()) as u16).into(),
                first: 1,
                last: 1,
            }
            .as_bytes(),
        );
        for d in &descs {
            out.extend_from_slice(d.as_bytes());
        }
        data_in(data, &out, alloc_len)
    }

    fn disc_information(
        &self,
        data: &SgList<'_>,
        data_type: DiscInformationType,
        alloc_len: usize,
    ) -> Res {
        if data_type != DiscInformationType::STANDARD {
            return Err(invalid_cdb());
        }
        self.state.lock().media()?;
        let d = DiscInformation {
            data_len: ((size_of::<DiscInformation>() - 2) as u16).into(),
            // Last session complete, disc finalized.
            status: DiscStatus::new().with_last_session(3).with_disc_status(2),
            first_track: 1,
            sessions_lsb: 1,
            first_track_last_session_lsb: 1,
            last_track_last_session_lsb: 1,
            last_lead_in: u32::MAX.into(),
            last_lead_out: u32::MAX.into(),
            ..Default::default()
        };
        data_in(data, d.as_bytes(), alloc_len)
    }

    fn track_information(
        &self,
        data: &SgList<'_>,
        address_type: TrackAddressType,
        number: u32,
        alloc_len: usize,
    ) -> Res {
        let m = self.state.lock().media()?;
        let blocks = m.blocks();
        let ok = match address_type {
            TrackAddressType::LBA => u64::from(number) < blocks,
            TrackAddressType::TRACK | TrackAddressType::SESSION => number == 1,
            _ => false,
        };
        if !ok {
            return Err(invalid_cdb());
        }
        let size = u32::try_from(blocks).unwrap_or(u32::MAX);
        let t = TrackInformation {
            data_len: ((size_of::<TrackInformation>() - 2) as u16).into(),
            track_lsb: 1,
            session_lsb: 1,
            // Data track, recorded uninterrupted.
            track_mode: TrackMode::new().with_mode(4),
            // Data mode 1.
            data_mode: DataMode::new().with_mode(1),
            size: size.into(),
            last_recorded: size.saturating_sub(1).into(),
            ..Default::default()
        };
        data_in(data, t.as_bytes(), alloc_len)
    }

    fn read_dvd_structure(
        &self,
        data: &SgList<'_>,
        media_type: DiscMediaType,
        layer: u8,
        format: DiscStructureFormat,
        alloc_len: usize,
    ) -> Res {
        if media_type != DiscMediaType::DVD {
            return Err(invalid_cdb());
        }
        let mut out = Vec::new();
        let mut push = |body: &[u8]| {
            out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(body);
        };
        match format {
            DiscStructureFormat::PHYSICAL => {
                let m = self.state.lock().media()?;
                if layer != 0 {
                    return Err(invalid_cdb());
                }
                let mut body = [0u8; 2048];
                // DVD-ROM book, part version 1; 120 mm, rate not
                // specified; one layer, PTP, embossed.
                body[0] = 0x01;
                body[1] = 0x0F;
                body[2] = 0x01;
                let start = 0x0003_0000u32;
                let end = u64::from(start) + m.blocks().saturating_sub(1);
                body[4..8].copy_from_slice(&start.to_be_bytes());
                body[8..12].copy_from_slice(&u32::try_from(end).unwrap_or(u32::MAX).to_be_bytes());
                push(&body);
            }
            DiscStructureFormat::COPYRIGHT => {
                self.state.lock().media()?;
                // No copy protection, all regions.
                push(&[0, 0, 0, 0]);
            }
            DiscStructureFormat::LIST => {
                // Structure list: format, SDS/RDS (readable), length.
                let mut body = Vec::new();
                for (f, len) in [
                    (DiscStructureFormat::PHYSICAL, 2048u16),
                    (DiscStructureFormat::COPYRIGHT, 4),
                    (DiscStructureFormat::LIST, 12),
                ] {
                    body.push(f.get());
                    body.push(0x40);
                    body.extend_from_slice(&len.to_be_bytes());
                }
                push(&body);
            }
            _ => return Err(invalid_cdb()),
        }
        data_in(data, &out, alloc_len)
    }

    fn get_performance(
        &self,
        data: &SgList<'_>,
        data_type: PerformanceDataType,
        max_descriptors: u16,
        kind: PerformanceType,
    ) -> Res {
        let blocks = self.state.lock().media.as_ref().map(Media::blocks);
        let mut descs = Vec::new();
        match kind {
            PerformanceType::PERFORMANCE => {
                let nominal = data_type.except() == 0 && !data_type.write();
                if let Some(blocks) = blocks.filter(|_| nominal && max_descriptors > 0) {
                    descs.push(PerformanceDescriptor {
                        start_lba: 0.into(),
                        start_performance: READ_SPEED_KBS.into(),
                        end_lba: u32::try_from(blocks.saturating_sub(1))
                            .unwrap_or(u32::MAX)
                            .into(),
                        end_performance: READ_SPEED_KBS.into(),
                    });
                }
            }
            // Write speed descriptors: none (read-only drive).
            PerformanceType::WRITE_SPEED => {}
            _ => return Err(invalid_cdb()),
        }
        let mut out = Vec::new();
        out.extend_from_slice(
            PerformanceHeader {
                data_len: ((4 + descs.len() * size_of::<PerformanceDescriptor>()) as u32).into(),
                ..Default::default()
            }
            .as_bytes(),
        );
        for d in &descs {
            out.extend_from_slice(d.as_bytes());
        }
        data_in(data, &out, usize::MAX)
    }

    fn mechanism_status(&self, data: &SgList<'_>, alloc_len: usize) -> Res {
        let open = self.state.lock().tray_open;
        let h = MechanismStatusHeader {
            mechanism: MechanismState::new().with_door_open(open),
            ..Default::default()
        };
        data_in(data, h.as_bytes(), alloc_len)
    }
}

fn read_buffer_capacity(data: &SgList<'_>, block: bool, alloc_len: usize) -> Res {
    let mut out = [0u8; 12];
    out[1] = 10;
    if block {
        out[3] = 0x01;
    }
    data_in(data, &out, alloc_len)
}

fn set_streaming(data: &SgList<'_>, kind: StreamingType, param_len: usize) -> Res {
    if !matches!(
        kind,
        StreamingType::PERFORMANCE | StreamingType::DBI_CACHE_ZONE
    ) {
        return Err(invalid_cdb());
    }
    // Validate that the list is readable, then ignore it.
    if param_len > 0 {
        check_data_out(data, param_len)?;
    }
    Ok(0)
}

/// The mode pages offered, for page control `pc`.
fn mode_page(code: ModePage, pc: PageControl) -> ModePage12 {
    let mut body = [0u8; 10];
    // Read retry count 1; the power condition timers and the time-out
    // and protect minimum time-outs are 0.
    if pc != PageControl::CHANGEABLE && code == ModePage::ERROR_RECOVERY {
        body[1] = 1;
    }
    ModePage12 {
        page: ModePageCode::new().with_page(code),
        len: 0x0A,
        body,
    }
}

const MODE_PAGES: [ModePage; 3] = [
    ModePage::ERROR_RECOVERY,
    ModePage::POWER_CONDITION,
    ModePage::TIMEOUT_PROTECT,
];

fn mode_sense(
    data: &SgList<'_>,
    pc: PageControl,
    page: ModePage,
    subpage: u8,
    alloc_len: usize,
) -> Res {
    check_mode_sense(pc, page, subpage)?;
    let mut pages = Vec::new();
    if page == ModePage::ALL {
        for code in MODE_PAGES {
            pages.extend_from_slice(mode_page(code, pc).as_bytes());
        }
    } else if MODE_PAGES.contains(&page) {
        pages.extend_from_slice(mode_page(page, pc).as_bytes());
    } else {
        return Err(invalid_cdb());
    }
    mode_sense_data(data, true, DeviceSpecific::new(), &pages, alloc_len)
}

/// Accepts (and ignores) a well-formed parameter list of the pages
/// [`mode_sense`] reports.
fn mode_select(data: &SgList<'_>, pf: bool, sp: bool, param_len: usize) -> Res {
    mode_select_pages(data, pf, sp, param_len, true, |code, body| {
        if !MODE_PAGES.contains(&code) || body.len() != 0x0A {
            return Err(invalid_param());
        }
        Ok(())
    })
}

mod state;
#[cfg(test)]
mod tests;
