//! The PCI Express function: the type-0 configuration header (class
//! 01-08-02, NVM Express), BAR0 (registers and doorbells, 64-bit), BAR4
//! (the MSI-X table and pending bit array, 64-bit), a PCI Express endpoint
//! capability and the MSI-X capability; and MSI-X delivery through an
//! [`MsiSink`].
//!
//! The configuration space is a 256-byte image behind a lock (a cold path:
//! the guest touches it at probe). The MSI-X table is atomics, read on
//! every interrupt without a lock. The command register's bus-master and
//! memory-space bits are mirrored into an atomic the workers check before
//! they touch guest memory.

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use parastor_hw::pci::capability::{
    CapabilityHeader, CapabilityId, DevicePortType, MSIX_TABLE_ENTRY_LEN, MsixCapability,
    MsixLocation, MsixMessageControl, PcieCapabilities, PcieCapability, pba_len,
};
use parastor_hw::pci::config::{
    CLASS_CODE_NVME, CONFIG_SPACE_LEN, Command, MemoryBar, Status, Type0Header, offset,
};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromZeros, IntoBytes};

/// Where interrupts leave the controller: an MSI-X message for a vector.
///
/// Called only for an enabled, unmasked vector; a masked vector's message
/// waits in the pending bit array and is delivered here on unmask.
///
/// It is called from inside the controller (a queue's worker, or the
/// register write that unmasks a vector), so it must not call back into
/// the controller: set an event or wake a task instead.
pub trait MsiSink: Send + Sync {
    /// Delivers `message`, the MSI-X table entry of `vector`.
    fn signal(&self, vector: u16, message: MsiMessage);
}

/// An MSI-X message: the address and data the guest programmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsiMessage {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// The BAR holding the NVMe registers and doorbells.
pub const REGISTER_BAR: u8 = 0;
/// The BAR holding the MSI-X table (offset 0) and pending bit array.
pub const MSIX_BAR: u8 = 4;

/// Offset of the PCI Express capability.
const PCIE_CAP: usize = 0x40;
/// Offset of the MSI-X capability.
const MSIX_CAP: usize = 0x80;

/// PCI identity of the function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIdentity {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Revision ID.
    pub revision_id: u8,
}

/// One MSI-X table entry, as atomics.
#[derive(Default)]
struct MsixEntry {
    address_low: AtomicU32,
    address_high: AtomicU32,
    data: AtomicU32,
    control: AtomicU32,
}

/// The MSI-X table, pending bits and capability state.
pub(crate) struct Msix {
    entries: Box<[MsixEntry]>,
    pending: Box<[AtomicU64]>,
    enabled: AtomicBool,
    function_mask: AtomicBool,
    sink: Arc<dyn MsiSink>,
    /// PBA offset within BAR4.
    pba_offset: u64,
}

impl Msix {
    fn new(vectors: u16, sink: Arc<dyn MsiSink>) -> Self {
        let entries: Box<[MsixEntry]> = (0..vectors)
            .map(|_| {
                let e = MsixEntry::default();
                // Every vector starts masked (PCI: reset value of the mask bit).
                e.control.store(1, Ordering::Relaxed);
                e
            })
            .collect();
        let table_len = u64::from(vectors) * u64::from(MSIX_TABLE_ENTRY_LEN);
        Self {
            entries,
            pending: (0..usize::from(vectors).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            enabled: AtomicBool::new(false),
            function_mask: AtomicBool::new(false),
            sink,
            pba_offset: table_len.next_multiple_of(4096),
        }
    }

    /// How many vectors the table has.
    pub(crate) fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    fn bar_size(&self) -> u64 {
        let pba = u64::from(pba_len(u32::from(self.vectors())));
        (self.pba_offset + pba).next_power_of_two().max(4096)
    }

    fn masked(&self, vector: usize) -> bool {
        self.function_mask.load(Ordering::Acquire)
            || self
                .entries
                .get(vector)
                .is_none_or(|e| e.control.load(Ordering::Acquire) & 1 != 0)
    }

    /// Signals `vector`: delivered now if enabled and unmasked, else
    /// remembered in the pending bit array (if enabled). An unknown vector
    /// is dropped.
    pub(crate) fn signal(&self, vector: u16) {
        let v = usize::from(vector);
        let Some(entry) = self.entries.get(v) else {
            return;
        };
        if !self.enabled.load(Ordering::Acquire) {
            return;
        }
        if self.masked(v) {
            if let Some(word) = self.pending.get(v / 64) {
                word.fetch_or(1 << (v % 64), Ordering::AcqRel);
            }
            // Unmasked meanwhile: deliver what is pending.
            if !self.masked(v) {
                self.deliver_pending();
            }
            return;
        }
        let message = MsiMessage {
            address: u64::from(entry.address_high.load(Ordering::Acquire)) << 32
                | u64::from(entry.address_low.load(Ordering::Acquire)),
            data: entry.data.load(Ordering::Acquire),
        };
        self.sink.signal(vector, message);
    }

    /// Delivers every pending vector that is now unmasked.
    fn deliver_pending(&self) {
        if !self.enabled.load(Ordering::Acquire) || self.function_mask.load(Ordering::Acquire) {
            return;
        }
        for (w, word) in self.pending.iter().enumerate() {
            let mut bits = word.load(Ordering::Acquire);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let v = w * 64 + b;
                if !self.masked(v) && word.fetch_and(!(1 << b), Ordering::AcqRel) & (1 << b) != 0 {
                    self.signal(v as u16);
                }
            }
        }
    }

    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= self.pba_offset {
            // PBA: qword reads or dword reads of the pending bits.
            let rel = offset - self.pba_offset;
            let Some(word) = self.pending.get((rel / 8) as usize) else {
                return;
            };
            let v = word.load(Ordering::Acquire);
            let bytes = v.to_le_bytes();
            let start = (rel % 8) as usize;
            if let Some(src) = bytes.get(start..start + data.len()) {
                data.copy_from_slice(src);
            }
            return;
        }
        let index = (offset / u64::from(MSIX_TABLE_ENTRY_LEN)) as usize;
        let Some(e) = self.entries.get(index) else {
            return;
        };
        let words = [
            e.address_low.load(Ordering::Acquire),
            e.address_high.load(Ordering::Acquire),
            e.data.load(Ordering::Acquire),
            e.control.load(Ordering::Acquire),
        ];
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let start = (offset % 16) as usize;
        if let Some(src) = bytes.get(start..start + data.len()) {
            data.copy_from_slice(src);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset >= self.pba_offset {
            return; // The PBA is read-only.
        }
        let index = (offset / u64::from(MSIX_TABLE_ENTRY_LEN)) as usize;
        let Some(e) = self.entries.get(index) else {
            return;
        };
        let fields = [&e.address_low, &e.address_high, &e.data, &e.control];
        let start = (offset % 16) as usize;
        for (i, chunk) in data.chunks(4).enumerate() {
            let Ok(b) = <[u8; 4]>::try_from(chunk) else {
                return;
            };
            let Some(field) = fields.get(start / 4 + i) else {
                return;
            };
            let mut v = u32::from_le_bytes(b);
            if start / 4 + i == 3 {
                v &= 1; // Only the mask bit is writable.
            }
            field.store(v, Ordering::Release);
        }
        if start / 4 + data.len() / 4 > 3 {
            self.deliver_pending();
        }
    }
}

/// The configuration space image and the latched BARs.
struct ConfigSpace {
    image: [u8; CONFIG_SPACE_LEN],
    bar0: u64,
    bar4: u64,
}

/// The PCI function.
pub(crate) struct PciFunction {
    config: spin::Mutex<ConfigSpace>,
    /// The command register, for the workers' lock-free check.
    command: AtomicU16,
    pub(crate) msix: Msix,
    bar0: MemoryBar,
    bar4: MemoryBar,
}

impl PciFunction {
    /// A function with `identity`, a register BAR of `bar0_size` bytes and
    /// `vectors` MSI-X vectors delivered to `sink`.
    pub(crate) fn new(
        identity: PciIdentity,
        bar0_size: u64,
        vectors: u16,
        sink: Arc<dyn MsiSink>,
    ) -> Self {
        let msix = Msix::new(vectors, sink);
        let bar0 = MemoryBar {
            size: bar0_size.next_power_of_two().max(0x4000),
            is_64bit: true,
            prefetchable: false,
        };
        let bar4 = MemoryBar {
            size: msix.bar_size(),
            is_64bit: true,
            prefetchable: false,
        };
        let mut header = Type0Header::new_zeroed();
        header.vendor_id = U16::new(identity.vendor_id);
        header.device_id = U16::new(identity.device_id);
        header.status = Status::new().with_capabilities_list(true);
        header.revision_id = identity.revision_id;
        header.class = CLASS_CODE_NVME[0];
        header.subclass = CLASS_CODE_NVME[1];
        header.prog_if = CLASS_CODE_NVME[2];
        header.subsystem_vendor_id = U16::new(identity.subsystem_vendor_id);
        header.subsystem_id = U16::new(identity.subsystem_id);
        header.capabilities_pointer = PCIE_CAP as u8;
        let mut image = [0u8; CONFIG_SPACE_LEN];
        image[..64].copy_from_slice(header.as_bytes());

        let mut pcie = PcieCapability::new_zeroed();
        pcie.header = CapabilityHeader {
            id: CapabilityId::PCI_EXPRESS,
            next: MSIX_CAP as u8,
        };
        pcie.capabilities = PcieCapabilities::new()
            .with_version(2)
            .with_device_port_type(DevicePortType::ENDPOINT);
        let pcie_bytes = pcie.as_bytes();
        image[PCIE_CAP..PCIE_CAP + pcie_bytes.len()].copy_from_slice(pcie_bytes);

        let cap = MsixCapability {
            header: CapabilityHeader {
                id: CapabilityId::MSIX,
                next: 0,
            },
            message_control: MsixMessageControl::new()
                .with_table_size(vectors.saturating_sub(1).min(0x7FF)),
            table: MsixLocation::from_bits(U32::new(u32::from(MSIX_BAR))),
            pba: MsixLocation::from_bits(U32::new(msix.pba_offset as u32 | u32::from(MSIX_BAR))),
        };
        let cap_bytes = cap.as_bytes();
        image[MSIX_CAP..MSIX_CAP + cap_bytes.len()].copy_from_slice(cap_bytes);

        Self {
            config: spin::Mutex::new(ConfigSpace {
                image,
                bar0: bar0.latch(0),
                bar4: bar4.latch(0),
            }),
            command: AtomicU16::new(0),
            msix,
            bar0,
            bar4,
        }
    }

    /// Whether the function may master the bus (DMA to guest memory).
    pub(crate) fn bus_master(&self) -> bool {
        Command::from_bits(U16::new(self.command.load(Ordering::Acquire))).bus_master()
    }

    /// Reads configuration space: 1, 2 or 4 bytes, naturally aligned;
    /// anything else reads as zeros.
    pub(crate) fn config_read(&self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if !access_ok(u64::from(offset), data.len(), &[1, 2, 4]) {
            return;
        }
        let dword = usize::from(offset) & !3;
        let Some(value) = self.read_dword(dword) else {
            return;
        };
        let bytes = value.to_le_bytes();
        let start = usize::from(offset) & 3;
        data.copy_from_slice(&bytes[start..start + data.len()]);
    }

    fn read_dword(&self, dword: usize) -> Option<u32> {
        let cfg = self.config.lock();
        let bar = |v: u64, high: bool| {
            if high { (v >> 32) as u32 } else { v as u32 }
        };
        Some(match dword {
            0x10 => bar(cfg.bar0, false),
            0x14 => bar(cfg.bar0, true),
            0x20 => bar(cfg.bar4, false),
            0x24 => bar(cfg.bar4, true),
            _ => {
                let b = cfg.image.get(dword..dword + 4)?;
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
        })
    }

    /// Writes configuration space (1, 2 or 4 bytes, naturally aligned;
    /// anything else is ignored). Only the writable bits change.
    pub(crate) fn config_write(&self, offset: u16, data: &[u8]) -> ConfigChange {
        if !access_ok(u64::from(offset), data.len(), &[1, 2, 4]) {
            return ConfigChange::None;
        }
        let dword = usize::from(offset) & !3;
        let shift = (usize::from(offset) & 3) * 8;
        let mut value = 0u32;
        let mut mask = 0u32;
        for (i, b) in data.iter().enumerate() {
            value |= u32::from(*b) << (shift + i * 8);
            mask |= 0xFF << (shift + i * 8);
        }
        let mut cfg = self.config.lock();
        let merge =
            |old: u32, writable: u32| (old & !(mask & writable)) | (value & mask & writable);
        let old_of = |cfg: &ConfigSpace, at: usize| {
            let b = &cfg.image[at..at + 4];
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        };
        let mut change = ConfigChange::None;
        match dword {
            offset::COMMAND => {
                // Memory space, bus master, parity, SERR, interrupt disable.
                let old = old_of(&cfg, dword);
                let new = merge(old, 0x0546);
                cfg.image[dword..dword + 4].copy_from_slice(&new.to_le_bytes());
                let was = Command::from_bits(U16::new(old as u16));
                let now = Command::from_bits(U16::new(new as u16));
                self.command.store(new as u16, Ordering::Release);
                if now.bus_master() && !was.bus_master() {
                    change = ConfigChange::BusMasterEnabled;
                }
            }
            0x0C => {
                let old = old_of(&cfg, dword);
                let new = merge(old, 0xFF); // cache line size
                cfg.image[dword..dword + 4].copy_from_slice(&new.to_le_bytes());
            }
            0x10 | 0x14 | 0x20 | 0x24 => {
                let (bar, latched) = if dword < 0x20 {
                    (self.bar0, &mut cfg.bar0)
                } else {
                    (self.bar4, &mut cfg.bar4)
                };
                let high = dword == 0x14 || dword == 0x24;
                let current = if high {
                    (*latched >> 32) as u32
                } else {
                    *latched as u32
                };
                let written = (current & !mask) | (value & mask);
                let full = if high {
                    (*latched & 0xFFFF_FFFF) | u64::from(written) << 32
                } else {
                    (*latched & !0xFFFF_FFFF) | u64::from(written)
                };
                *latched = bar.latch(full);
            }
            0x3C => {
                let old = old_of(&cfg, dword);
                let new = merge(old, 0xFF); // interrupt line
                cfg.image[dword..dword + 4].copy_from_slice(&new.to_le_bytes());
            }
            d if d == PCIE_CAP + 8 => {
                // Device control (low half) is writable but for FLR;
                // device status is RW1C with nothing to clear.
                let old = old_of(&cfg, dword);
                let new = merge(old, 0x7FFF);
                cfg.image[dword..dword + 4].copy_from_slice(&new.to_le_bytes());
            }
            d if d == MSIX_CAP => {
                // Message control: function mask (14) and enable (15).
                let old = old_of(&cfg, dword);
                let new = merge(old, 0xC000 << 16);
                cfg.image[dword..dword + 4].copy_from_slice(&new.to_le_bytes());
                let mc = MsixMessageControl::from_bits(U16::new((new >> 16) as u16));
                self.msix.enabled.store(mc.enable(), Ordering::Release);
                self.msix
                    .function_mask
                    .store(mc.function_mask(), Ordering::Release);
                drop(cfg);
                self.msix.deliver_pending();
                return change;
            }
            _ => {}
        }
        change
    }

    /// Reads the MSI-X BAR (dword or qword, naturally aligned).
    pub(crate) fn msix_read(&self, offset: u64, data: &mut [u8]) {
        if !access_ok(offset, data.len(), &[4, 8]) || offset >= self.bar4.size {
            data.fill(0);
            return;
        }
        self.msix.read(offset, data);
    }

    /// Writes the MSI-X BAR (dword or qword, naturally aligned).
    pub(crate) fn msix_write(&self, offset: u64, data: &[u8]) {
        if !access_ok(offset, data.len(), &[4, 8]) || offset >= self.bar4.size {
            return;
        }
        self.msix.write(offset, data);
    }

    /// The size of the register BAR.
    pub(crate) fn bar0_size(&self) -> u64 {
        self.bar0.size
    }

    /// The size of the MSI-X BAR.
    pub(crate) fn msix_bar_size(&self) -> u64 {
        self.bar4.size
    }

    /// The saved form of the configuration space.
    pub(crate) fn save(&self) -> crate::state::PciV1 {
        let cfg = self.config.lock();
        crate::state::PciV1 {
            config: cfg.image.to_vec(),
            bar0: cfg.bar0,
            bar4: cfg.bar4,
            msix_table: self
                .msix
                .entries
                .iter()
                .map(|e| {
                    [
                        e.address_low.load(Ordering::Acquire),
                        e.address_high.load(Ordering::Acquire),
                        e.data.load(Ordering::Acquire),
                        e.control.load(Ordering::Acquire),
                    ]
                })
                .collect(),
            msix_pending: self
                .msix
                .pending
                .iter()
                .map(|w| w.load(Ordering::Acquire))
                .collect(),
        }
    }

    /// Restores a saved configuration space (already validated: lengths
    /// match this function's).
    pub(crate) fn restore(&self, saved: &crate::state::PciV1) {
        let mut cfg = self.config.lock();
        // Read-only parts come from this build; writable parts from the save.
        for (at, writable) in [(offset::COMMAND, 0x0546u32), (0x0C, 0xFF), (0x3C, 0xFF)]
            .into_iter()
            .chain([(PCIE_CAP + 8, 0x7FFF), (MSIX_CAP, 0xC000 << 16)])
        {
            let get = |img: &[u8]| {
                let b = &img[at..at + 4];
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            };
            let old = get(&cfg.image);
            let new = (old & !writable) | (get(&saved.config) & writable);
            cfg.image[at..at + 4].copy_from_slice(&new.to_le_bytes());
        }
        cfg.bar0 = self.bar0.latch(saved.bar0);
        cfg.bar4 = self.bar4.latch(saved.bar4);
        let command =
            u16::from_le_bytes([cfg.image[offset::COMMAND], cfg.image[offset::COMMAND + 1]]);
        self.command.store(command, Ordering::Release);
        let mc = MsixMessageControl::from_bits(U16::new(u16::from_le_bytes([
            cfg.image[MSIX_CAP + 2],
            cfg.image[MSIX_CAP + 3],
        ])));
        self.msix.enabled.store(mc.enable(), Ordering::Release);
        self.msix
            .function_mask
            .store(mc.function_mask(), Ordering::Release);
        for (e, s) in self.msix.entries.iter().zip(&saved.msix_table) {
            e.address_low.store(s[0], Ordering::Release);
            e.address_high.store(s[1], Ordering::Release);
            e.data.store(s[2], Ordering::Release);
            e.control.store(s[3] & 1, Ordering::Release);
        }
        for (w, s) in self.msix.pending.iter().zip(&saved.msix_pending) {
            w.store(*s, Ordering::Release);
        }
    }

    /// The lengths a saved configuration must have for this function.
    pub(crate) fn saved_lengths(&self) -> (usize, usize) {
        (self.msix.entries.len(), self.msix.pending.len())
    }
}

/// What a configuration write changed that the controller must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConfigChange {
    /// Nothing.
    None,
    /// Bus mastering was just enabled: workers may have work waiting.
    BusMasterEnabled,
}

/// Whether an access of `len` bytes at `offset` has one of the `widths`
/// and is naturally aligned.
pub(crate) fn access_ok(offset: u64, len: usize, widths: &[usize]) -> bool {
    widths.contains(&len) && offset.is_multiple_of(len as u64)
}
