//! What a StorVSC guest driver does on the wire, per guest: the versions
//! it offers, the sizes of the packets it sends, and the completions it
//! accepts. Each fact names its source.

use core::fmt;
use parastor_hw::storvsp::{
    Operation, PACKET_HEADER_LEN, PACKET_PAYLOAD_LEN, RequestSize, SCSI_REQUEST_LEN_PRE_WIN8,
    Version,
};

/// A guest's StorVSC driver, as far as the host can tell it apart.
///
/// Sources (facts only; the drivers' code is not copied):
///
/// - **Linux** — `drivers/scsi/storvsc_drv.c`.
///   - 5.19 and later (commit 86c8fb4d228e "scsi: storvsc: Removing Pre
///     Win8 related logic", merged for 5.19-rc1): `protocol_version[]` is
///     Win10 (6.2), Win8.1 / Blue (6.0), Win8 (5.1), tried in that order
///     until one completes with status 0 (`storvsc_channel_init`); every
///     packet — negotiation, `CREATE_SUB_CHANNELS`, `EXECUTE_SRB`,
///     `RESET_BUS` — is sent at `sizeof(struct vstor_packet)` = `0x40`
///     bytes; `storvsc_on_channel_callback` drops (`"Invalid pkt"`,
///     `continue`) a packet with a transaction id shorter than
///     `minlen = sizeof(struct vstor_packet)`, so such a completion never
///     completes its request; an unsolicited packet (transaction id 0)
///     needs only the 4-byte operation, and one carrying `COMPLETE_IO`
///     is dropped. The SRB's `length` is `0x34` and its sense buffer
///     `0x14`. Sub-channels are requested after `END_INITIALIZATION`
///     when `QUERY_PROPERTIES` reports multi-channel support, one per
///     online CPU but the first, capped by the host's maximum
///     (`handle_multichannel_storage`); a failed request leaves the
///     device on its primary channel.
///   - 5.15 to 5.18 (before that commit; the incoming-length check came
///     with commit 91b1b640b834 in 5.12, and its exemption of unsolicited
///     packets with 6fd13d699d24 in 5.15): `vmstor_protocols[]` is Win10,
///     Win8.1, Win8, Win7, Win6; packets are sent at
///     `sizeof(struct vstor_packet) - vmscsi_size_delta`, where the delta
///     starts at `sizeof(struct vmscsi_win8_extension)` (`0x10`) and
///     becomes 0 once a Win8-or-later version is accepted — `0x30`-byte
///     packets until then, `0x40` after; `minlen` is the same size, so a
///     completion may not be shorter than what the driver sends at that
///     moment. Sense buffer `0x12` before Win8, `0x14` after;
///     sub-channels only from Win8 on.
/// - **Windows** — its driver is not public. OpenVMM's StorVSP
///   (`vm/devices/storage/storvsp/src/lib.rs`, `send_vmbus_packet`) pads
///   or truncates every packet because "Windows guests check that each
///   packet's size is exactly the largest possible packet size for the
///   negotiated protocol version"; the parastor reference
///   (`openvmm-storage.md` §5.2) records the same. So this profile sends
///   every packet at exactly the negotiated size (`0x30` bytes before a
///   version is settled and for Win6 / Win7, `0x40` from Win8) and
///   rejects any packet of another size. Assumed, for want of a public
///   source: it offers versions newest first, Win10 to Win6 (as every
///   open StorVSC does), and sends `CREATE_SUB_CHANNELS` *before*
///   `END_INITIALIZATION` — the ordering OpenVMM's state machine accepts
///   it in besides Linux's (§5.2), so some guest uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Linux 5.19 and later.
    LinuxCurrent,
    /// Linux 5.15 to 5.18 (the `vmscsi_size_delta` sizes).
    LinuxPre519,
    /// Windows.
    Windows,
}

/// Linux's transaction id for negotiation packets (`VMBUS_RQST_INIT`,
/// `U64_MAX - 2`, in `include/linux/hyperv.h`); this model uses it for
/// every profile's control packets.
pub const CONTROL_TRANSACTION_ID: u64 = u64::MAX - 2;

/// Why a guest would not accept a packet from the host. A real driver
/// drops it (and its request never completes) or fails the device; the
/// model reports it as [`StorvscError::Rejected`].
///
/// [`StorvscError::Rejected`]: super::StorvscError::Rejected
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Shorter than the driver's minimum (Linux `minlen`).
    TooShort {
        /// StorVSP bytes received (header and payload).
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// Not exactly the size the driver expects (Windows).
    WrongSize {
        /// StorVSP bytes received.
        len: usize,
        /// The size expected.
        expected: usize,
    },
    /// A `COMPLETE_IO` or `FC_HBA_DATA` packet with transaction id 0, in
    /// band or as a completion (Linux: "Invalid packet with ID of 0"). Other
    /// operations with id 0 are unsolicited and accepted.
    ZeroTransactionId,
    /// A completion for no request the driver has outstanding (Linux:
    /// "Incorrect transaction ID").
    UnknownTransaction,
    /// A completion whose StorVSP operation is not `COMPLETE_IO`.
    NotCompleteIo {
        /// The operation received.
        operation: Operation,
    },
    /// A packet type the driver does not expect from the host.
    UnexpectedPacketType,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len, min } => {
                write!(f, "{len}-byte packet, the driver's minimum is {min}")
            }
            Self::WrongSize { len, expected } => {
                write!(
                    f,
                    "{len}-byte packet, the driver expects exactly {expected}"
                )
            }
            Self::ZeroTransactionId => {
                write!(f, "COMPLETE_IO or FC_HBA_DATA with transaction id 0")
            }
            Self::UnknownTransaction => write!(f, "completion for no outstanding request"),
            Self::NotCompleteIo { operation } => {
                write!(
                    f,
                    "completion with operation {operation:?}, not COMPLETE_IO"
                )
            }
            Self::UnexpectedPacketType => write!(f, "packet type the driver does not expect"),
        }
    }
}

impl Profile {
    /// Every profile.
    pub const ALL: [Self; 3] = [Self::LinuxCurrent, Self::LinuxPre519, Self::Windows];

    /// A short name for test output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::LinuxCurrent => "linux-current",
            Self::LinuxPre519 => "linux-pre-5.19",
            Self::Windows => "windows",
        }
    }

    /// The versions offered in `QUERY_PROTOCOL_VERSION`, in order.
    pub const fn versions(self) -> &'static [Version] {
        match self {
            Self::LinuxCurrent => &[Version::WIN10, Version::BLUE, Version::WIN8],
            Self::LinuxPre519 | Self::Windows => &[
                Version::WIN10,
                Version::BLUE,
                Version::WIN8,
                Version::WIN7,
                Version::WIN6,
            ],
        }
    }

    /// Payload bytes (after the 12-byte StorVSP header) of every packet
    /// the driver sends while `version` is negotiated (`None`: none yet).
    #[inline]
    pub const fn request_len(self, version: Option<Version>) -> usize {
        match (self, version) {
            (Self::LinuxCurrent, _) => PACKET_PAYLOAD_LEN,
            (_, Some(v)) => RequestSize::for_version(v).request_len(),
            (_, None) => SCSI_REQUEST_LEN_PRE_WIN8,
        }
    }

    /// The sense buffer the driver declares in its SRBs.
    #[inline]
    pub const fn sense_buffer_len(self, version: Option<Version>) -> usize {
        match (self, version) {
            (Self::LinuxCurrent, _) => RequestSize::Win8.sense_buffer_len(),
            (_, Some(v)) => RequestSize::for_version(v).sense_buffer_len(),
            (_, None) => RequestSize::PreWin8.sense_buffer_len(),
        }
    }

    /// Whether the driver asks for sub-channels before
    /// `END_INITIALIZATION` (Windows) rather than after it (Linux).
    #[inline]
    pub const fn sub_channels_before_end(self) -> bool {
        matches!(self, Self::Windows)
    }

    /// Whether the driver uses sub-channels, given the negotiated
    /// `version` and the `QUERY_PROPERTIES` multi-channel flag.
    #[inline]
    pub const fn uses_sub_channels(self, version: Version, multi_channel: bool) -> bool {
        match self {
            // Since 5.19 only the flag is looked at (Win8 is the oldest
            // version offered anyway).
            Self::LinuxCurrent => multi_channel,
            Self::LinuxPre519 | Self::Windows => {
                multi_channel && version.get() >= Version::WIN8.get()
            }
        }
    }

    /// The sub-channels the driver asks for on a guest with `cpus` CPUs
    /// when the host allows `max`: one per CPU but the first, capped.
    pub fn sub_channel_count(self, cpus: u16, max: u16) -> u16 {
        cpus.saturating_sub(1).min(max)
    }

    /// Checks the size of a packet from the host, `len` StorVSP bytes
    /// (header and payload, as the ring delivers it) with transaction id
    /// `transaction_id`, received while `version` is negotiated.
    #[inline]
    pub fn check_len(
        self,
        version: Option<Version>,
        transaction_id: u64,
        len: usize,
    ) -> Result<(), Rejection> {
        let sent = PACKET_HEADER_LEN + self.request_len(version);
        match self {
            Self::Windows if len != sent => Err(Rejection::WrongSize {
                len,
                expected: sent,
            }),
            Self::Windows => Ok(()),
            // Unsolicited packets need only their operation.
            Self::LinuxCurrent | Self::LinuxPre519 => {
                let min = if transaction_id == 0 { 4 } else { sent };
                if len < min {
                    Err(Rejection::TooShort { len, min })
                } else {
                    Ok(())
                }
            }
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_each_driver() {
        use Profile::*;
        // Linux ≥ 5.19: always 0x40-byte packets, minimum 0x40 back.
        for v in [None, Some(Version::WIN7), Some(Version::BLUE)] {
            assert_eq!(LinuxCurrent.request_len(v), 0x34);
            assert_eq!(
                LinuxCurrent.check_len(v, 1, 0x30),
                Err(Rejection::TooShort {
                    len: 0x30,
                    min: 0x40
                })
            );
            assert_eq!(LinuxCurrent.check_len(v, 1, 0x40), Ok(()));
            assert_eq!(LinuxCurrent.check_len(v, 1, 0x48), Ok(()));
            assert_eq!(LinuxCurrent.check_len(v, 0, 4), Ok(()));
            assert!(LinuxCurrent.check_len(v, 0, 3).is_err());
        }
        // Linux 5.15–5.18: 0x30 until a Win8+ version, 0x40 after.
        assert_eq!(LinuxPre519.request_len(None), 0x24);
        assert_eq!(LinuxPre519.request_len(Some(Version::WIN7)), 0x24);
        assert_eq!(LinuxPre519.request_len(Some(Version::WIN8)), 0x34);
        assert_eq!(LinuxPre519.check_len(None, 5, 0x30), Ok(()));
        assert!(LinuxPre519.check_len(None, 5, 0x2C).is_err());
        assert!(LinuxPre519.check_len(Some(Version::BLUE), 5, 0x30).is_err());
        assert_eq!(LinuxPre519.sense_buffer_len(None), 0x12);
        assert_eq!(LinuxPre519.sense_buffer_len(Some(Version::BLUE)), 0x14);
        // Windows: exactly the negotiated size, either way.
        assert_eq!(Windows.check_len(None, 5, 0x30), Ok(()));
        assert_eq!(
            Windows.check_len(None, 5, 0x40),
            Err(Rejection::WrongSize {
                len: 0x40,
                expected: 0x30
            })
        );
        assert!(Windows.check_len(Some(Version::BLUE), 5, 0x30).is_err());
        assert!(Windows.check_len(Some(Version::BLUE), 0, 0x30).is_err());
        assert_eq!(Windows.check_len(Some(Version::BLUE), 0, 0x40), Ok(()));
    }

    #[test]
    fn versions_and_sub_channels() {
        assert_eq!(
            Profile::LinuxCurrent.versions(),
            [Version::WIN10, Version::BLUE, Version::WIN8]
        );
        assert_eq!(Profile::LinuxPre519.versions().len(), 5);
        assert!(Profile::LinuxCurrent.uses_sub_channels(Version::WIN7, true));
        assert!(!Profile::LinuxPre519.uses_sub_channels(Version::WIN7, true));
        assert!(!Profile::Windows.uses_sub_channels(Version::BLUE, false));
        assert_eq!(Profile::LinuxCurrent.sub_channel_count(8, 4), 4);
        assert_eq!(Profile::LinuxCurrent.sub_channel_count(3, 4), 2);
        assert_eq!(Profile::Windows.sub_channel_count(0, 4), 0);
        assert!(Profile::Windows.sub_channels_before_end());
        assert!(!Profile::LinuxPre519.sub_channels_before_end());
    }
}
