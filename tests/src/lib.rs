//! parastor's test harness: the disk conformance suite and its reference
//! model, test doubles, stack builders, and the fuzz harnesses (which the
//! cargo-fuzz project in `fuzz/` and the corpus replay test both call).
//!
//! - [`conformance`]: the suite every disk and composition must pass.
//! - [`model`]: the reference model of a disk's contents.
//! - [`checker`]: runs operations against a disk and the model in step.
//! - [`buf`]: guest buffers (multi-range, unaligned) and blocking helpers.
//! - [`scratch`]: guest memory reused (zeroed) from buffer to buffer and
//!   from fuzz input to fuzz input.
//! - [`doubles`]: a disk wrapper that fails, records, hooks and yields, and
//!   a disk with a volatile write cache that a power cut empties.
//! - [`stacks`]: builders for RAM, file, layered and striped stacks.
//! - [`fuzz_disk`]: the `disk_ops` fuzz harness.
//! - [`fuzz_scsi`]: the `scsi_cdb` fuzz harness (SCSI adapter).
//! - [`fuzz_storvsp`]: the `storvsp` fuzz harness (StorVSP over VMBus rings).
//! - [`fuzz_nvme`]: the `nvme_controller` fuzz harness (a hostile guest
//!   driving the NVMe controller: registers, queues, PRPs and SGLs).
//! - [`fuzz_nvme_driver`]: the `nvme_driver` fuzz harness (a hostile
//!   device — the fault-injection middleware with a plan from the input —
//!   against parastor's NVMe driver).
//! - [`fuzz_nvme_wire`]: the `nvme_wire` fuzz harness (NVMe and PCI wire
//!   parsers in `hw`: SGLs, identification descriptors, BARs, doorbells).
//! - [`fuzz_state`]: the `state_restore` fuzz harness (saved state of every
//!   component, restored into fresh objects).
//! - [`fuzz_tcmu`]: the `tcmu_ring` fuzz harness (a hostile kernel's TCMU
//!   ring through the handler's command ring).
//! - [`nvme`]: the NVMe testbed: parastor's NVMe driver over parastor's
//!   NVMe controller and RAM disks, in one process.
//! - [`tcmu`]: the TCMU handler driven by the model of the kernel's side
//!   (inline steps on the caller's thread, or `serve` on a runtime thread).
#![forbid(unsafe_code)]

pub mod buf;
pub mod checker;
pub mod conformance;
pub mod doubles;
pub mod fuzz_disk;
pub mod fuzz_nvme;
pub mod fuzz_nvme_driver;
pub mod fuzz_nvme_wire;
pub mod fuzz_scsi;
pub mod fuzz_state;
pub mod fuzz_storvsp;
pub mod fuzz_tcmu;
pub mod model;
pub mod nvme;
pub mod scratch;
pub mod stacks;
pub mod tcmu;

/// Runs each listed test (a `fn(Profile)` in the calling module) once per
/// guest profile, as `linux_current::NAME`, `linux_pre_5_19::NAME` and
/// `windows::NAME`.
#[macro_export]
macro_rules! per_profile {
    ($($name:ident),* $(,)?) => {
        $crate::per_profile!(@mod linux_current, LinuxCurrent, $($name),*);
        $crate::per_profile!(@mod linux_pre_5_19, LinuxPre519, $($name),*);
        $crate::per_profile!(@mod windows, Windows, $($name),*);
    };
    (@mod $module:ident, $profile:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    super::$name(::parastor_emulated::Profile::$profile);
                }
            )*
        }
    };
}
