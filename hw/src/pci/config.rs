//! The type-0 configuration space header (64 bytes) and BAR rules.

use bitfield_struct::bitfield;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The size of the standard (type-0) header, in bytes.
pub const HEADER_LEN: usize = 64;
/// The size of conventional PCI configuration space, in bytes.
pub const CONFIG_SPACE_LEN: usize = 256;
/// The size of PCI Express extended configuration space, in bytes.
pub const EXTENDED_CONFIG_SPACE_LEN: usize = 4096;

/// Header offsets.
pub mod offset {
    /// Command register.
    pub const COMMAND: usize = 0x04;
    /// Status register.
    pub const STATUS: usize = 0x06;
    /// BAR0; BARn is at `BAR0 + 4 * n`.
    pub const BAR0: usize = 0x10;
    /// Capabilities pointer.
    pub const CAPABILITIES_POINTER: usize = 0x34;
}

/// Command register.
#[bitfield(u16, repr = U16, from = U16::new, into = U16::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Command {
    /// I/O Space Enable.
    pub io_space: bool,
    /// Memory Space Enable.
    pub memory_space: bool,
    /// Bus Master Enable: the function may issue DMA.
    pub bus_master: bool,
    /// Special Cycles.
    pub special_cycles: bool,
    /// Memory Write and Invalidate.
    pub mwi: bool,
    /// VGA Palette Snoop.
    pub vga_palette_snoop: bool,
    /// Parity Error Response.
    pub parity_error_response: bool,
    /// Reserved.
    pub reserved0: bool,
    /// SERR# Enable.
    pub serr: bool,
    /// Fast Back-to-Back Enable.
    pub fast_back_to_back: bool,
    /// Interrupt Disable (INTx).
    pub interrupt_disable: bool,
    /// Reserved.
    #[bits(5)]
    pub reserved1: u8,
}

/// Status register.
#[bitfield(u16, repr = U16, from = U16::new, into = U16::get)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Status {
    /// Reserved.
    #[bits(3)]
    pub reserved: u8,
    /// Interrupt Status (INTx pending).
    pub interrupt_status: bool,
    /// Capabilities List present.
    pub capabilities_list: bool,
    /// 66 MHz Capable.
    pub mhz66: bool,
    /// Reserved.
    pub reserved1: bool,
    /// Fast Back-to-Back Capable.
    pub fast_back_to_back: bool,
    /// Master Data Parity Error.
    pub master_data_parity_error: bool,
    /// DEVSEL Timing.
    #[bits(2)]
    pub devsel_timing: u8,
    /// Signaled Target Abort.
    pub signaled_target_abort: bool,
    /// Received Target Abort.
    pub received_target_abort: bool,
    /// Received Master Abort.
    pub received_master_abort: bool,
    /// Signaled System Error.
    pub signaled_system_error: bool,
    /// Detected Parity Error.
    pub detected_parity_error: bool,
}

wire_layout! {
    /// The type-0 (endpoint) configuration header.
    pub struct Type0Header {
        /// Vendor ID.
        pub vendor_id: U16,
        /// Device ID.
        pub device_id: U16,
        /// Command.
        pub command: Command,
        /// Status.
        pub status: Status,
        /// Revision ID.
        pub revision_id: u8,
        /// Programming Interface (NVMe: 02h).
        pub prog_if: u8,
        /// Sub Class (NVM controller: 08h).
        pub subclass: u8,
        /// Base Class (mass storage: 01h).
        pub class: u8,
        /// Cache Line Size.
        pub cache_line_size: u8,
        /// Latency Timer.
        pub latency_timer: u8,
        /// Header Type: bits 6:0 layout (0), bit 7 multi-function.
        pub header_type: u8,
        /// BIST.
        pub bist: u8,
        /// Base Address Registers 0–5.
        pub bars: [U32; 6],
        /// CardBus CIS Pointer.
        pub cardbus_cis: U32,
        /// Subsystem Vendor ID.
        pub subsystem_vendor_id: U16,
        /// Subsystem ID.
        pub subsystem_id: U16,
        /// Expansion ROM Base Address.
        pub expansion_rom: U32,
        /// Capabilities Pointer (dword aligned; bits 1:0 reserved).
        pub capabilities_pointer: u8,
        /// Reserved.
        pub reserved: [u8; 7],
        /// Interrupt Line.
        pub interrupt_line: u8,
        /// Interrupt Pin (0: none, 1–4: INTA#–INTD#).
        pub interrupt_pin: u8,
        /// Min_Gnt.
        pub min_gnt: u8,
        /// Max_Lat.
        pub max_lat: u8,
    }
    size 64
}

/// The class code of an NVMe controller: mass storage (01h), NVM
/// controller (08h), NVM Express I/O controller interface (02h).
pub const CLASS_CODE_NVME: [u8; 3] = [0x01, 0x08, 0x02];

/// What a memory BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemoryBar {
    /// Size in bytes: a power of two, at least 16.
    pub size: u64,
    /// A 64-bit BAR (it takes this BAR and the next).
    pub is_64bit: bool,
    /// Prefetchable.
    pub prefetchable: bool,
}

/// BAR low bits: I/O space indicator.
pub const BAR_IO_SPACE: u32 = 1;
/// BAR low bits: memory type 64-bit (bits 2:1 = 10b).
pub const BAR_MEMORY_64: u32 = 0b100;
/// BAR low bits: prefetchable.
pub const BAR_PREFETCHABLE: u32 = 0b1000;

impl MemoryBar {
    /// The read-only low bits (type and prefetchable) of this BAR.
    pub const fn flags(self) -> u32 {
        (if self.is_64bit { BAR_MEMORY_64 } else { 0 })
            | (if self.prefetchable {
                BAR_PREFETCHABLE
            } else {
                0
            })
    }

    /// The 64-bit value a device holds after software writes `written`
    /// (low dword, and high dword for 64-bit BARs): the address bits
    /// below the size read as zero and the flag bits read as the BAR's
    /// type, which is how software sizes a BAR by writing all ones.
    pub const fn latch(self, written: u64) -> u64 {
        let size = if self.size < 16 {
            16
        } else {
            self.size.next_power_of_two()
        };
        let mask = if self.is_64bit {
            !(size - 1)
        } else {
            !(size - 1) & 0xFFFF_FFFF
        };
        (written & mask) | self.flags() as u64
    }

    /// The base address software programmed, from the latched value.
    pub const fn address(latched: u64) -> u64 {
        latched & !0xF
    }
}

/// The size a memory BAR decodes, from what it reads back after software
/// wrote all ones: `low` and (for a 64-bit BAR) `high`. `None` for an I/O
/// BAR, an unimplemented BAR (reads back zero) or a malformed read-back.
/// Total for any input.
pub const fn memory_bar_size(low: u32, high: Option<u32>) -> Option<u64> {
    if low & BAR_IO_SPACE != 0 {
        return None;
    }
    let is_64bit = (low >> 1) & 0b11 == 0b10;
    let value = match (is_64bit, high) {
        (true, Some(high)) => (high as u64) << 32 | (low & !0xF) as u64,
        (true, None) => return None,
        (false, _) => 0xFFFF_FFFF_0000_0000 | (low & !0xF) as u64,
    };
    if value & 0xFFFF_FFF0 == 0 && value >> 32 == 0xFFFF_FFFF && !is_64bit {
        return None;
    }
    if value == 0 {
        return None;
    }
    let size = (!value).wrapping_add(1);
    if size == 0 || !size.is_power_of_two() {
        None
    } else {
        Some(size)
    }
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn header_offsets() {
        assert_eq!(offset_of!(Type0Header, command), offset::COMMAND);
        assert_eq!(offset_of!(Type0Header, status), offset::STATUS);
        assert_eq!(offset_of!(Type0Header, prog_if), 0x09);
        assert_eq!(offset_of!(Type0Header, class), 0x0B);
        assert_eq!(offset_of!(Type0Header, header_type), 0x0E);
        assert_eq!(offset_of!(Type0Header, bars), offset::BAR0);
        assert_eq!(offset_of!(Type0Header, subsystem_vendor_id), 0x2C);
        assert_eq!(offset_of!(Type0Header, expansion_rom), 0x30);
        assert_eq!(
            offset_of!(Type0Header, capabilities_pointer),
            offset::CAPABILITIES_POINTER
        );
        assert_eq!(offset_of!(Type0Header, interrupt_line), 0x3C);
        assert_eq!(offset_of!(Type0Header, max_lat), 0x3F);
    }

    #[test]
    fn command_and_status_bits() {
        let c = Command::from_bits(U16::new(0x0406));
        assert!(c.memory_space() && c.bus_master() && c.interrupt_disable());
        assert!(!c.io_space());
        assert!(Status::from_bits(U16::new(0x0010)).capabilities_list());
    }

    #[test]
    fn bar_sizing_round_trips() {
        let bar = MemoryBar {
            size: 0x4000,
            is_64bit: true,
            prefetchable: false,
        };
        let latched = bar.latch(u64::MAX);
        assert_eq!(latched, 0xFFFF_FFFF_FFFF_C004);
        let (low, high) = (latched as u32, (latched >> 32) as u32);
        assert_eq!(memory_bar_size(low, Some(high)), Some(0x4000));
        assert_eq!(
            MemoryBar::address(bar.latch(0xFE00_1234_5678)),
            0xFE00_1234_4000
        );

        let bar32 = MemoryBar {
            size: 0x1000,
            is_64bit: false,
            prefetchable: true,
        };
        let latched = bar32.latch(u64::MAX);
        assert_eq!(latched, 0xFFFF_F008);
        assert_eq!(memory_bar_size(latched as u32, None), Some(0x1000));
        // I/O BAR, unimplemented BAR, 64-bit without its high half.
        assert_eq!(memory_bar_size(0xFFFF_FF01, None), None);
        assert_eq!(memory_bar_size(0, None), None);
        assert_eq!(memory_bar_size(0xFFFF_C004, None), None);
        assert_eq!(memory_bar_size(0x0000_0004, Some(0)), None);
    }

    #[test]
    fn bar_sizing_is_total() {
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..10_000 {
            let low = rng.u32(..);
            let high = rng.bool().then(|| rng.u32(..));
            if let Some(size) = memory_bar_size(low, high) {
                assert!(size.is_power_of_two() && size >= 16);
            }
        }
    }
}
