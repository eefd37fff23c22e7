//! The scenarios: small self-describing units the guest runs in turn.
//!
//! A scenario is a busybox `sh` script (`scenarios/NAME.sh`, run with
//! `guest/lib.sh` sourced and `set -e`), the kernel modules it needs (the
//! harness copies them and their dependencies into the guest and loads them
//! before the script starts), any extra QEMU arguments (devices) and a
//! timeout. To add one: write `scenarios/NAME.sh`, add an entry to
//! [`SCENARIOS`]; `cargo xtask vmtest NAME` runs it.

use std::time::Duration;

/// One scenario.
#[derive(Debug)]
pub(crate) struct Scenario {
    /// Its name: the script's file name and the name on the result line.
    pub(crate) name: &'static str,
    /// One line for `--list`.
    pub(crate) about: &'static str,
    /// The guest script.
    pub(crate) script: &'static str,
    /// Kernel modules to load before the script runs (names as `modprobe`
    /// takes them).
    pub(crate) modules: &'static [&'static str],
    /// Data files the script reads: (name, contents), at
    /// `/vmtest/data/NAME` in the guest.
    pub(crate) data: &'static [(&'static str, &'static str)],
    /// Extra QEMU arguments (devices the scenario drives). `{disks}`
    /// stands for the directory holding the scenario's [`disks`](Self::disks).
    pub(crate) qemu_args: &'static [&'static str],
    /// Disk images the QEMU arguments name: (file name, bytes), created
    /// zero-filled in `{disks}` before each boot.
    pub(crate) disks: &'static [(&'static str, u64)],
    /// Whether `cargo xtask vmtest` without names (and CI) runs it.
    pub(crate) default_run: bool,
    /// How long the script may run in the guest: a few times what it takes
    /// under TCG, as a hang costs CI this much.
    pub(crate) timeout: Duration,
}

/// What every SCSI-target scenario loads: configfs, LIO's core, TCMU (and
/// the uio it needs), the kernel's own fileio backstore (the reference
/// backstore), the tcm_loop fabric, and the initiator's disk and generic
/// drivers.
const SCSI_MODULES: &[&str] = &[
    "configfs",
    "target_core_mod",
    "target_core_user",
    "target_core_file",
    "tcm_loop",
    "sd_mod",
    "sg",
];

/// The SCSI modules and the CD/DVD driver (`sr_mod`, and `cdrom` through
/// modules.dep).
const SCSI_TOOLS_MODULES: &[&str] = &[
    "configfs",
    "target_core_mod",
    "target_core_user",
    "target_core_file",
    "tcm_loop",
    "sd_mod",
    "sg",
    "sr_mod",
];

/// The SCSI modules, ext4 (with crc32c for its metadata checksums, which
/// the kernel would otherwise ask `modprobe` for by alias) and loop devices
/// to mount the image read back.
const SCSI_FS_MODULES: &[&str] = &[
    "configfs",
    "target_core_mod",
    "target_core_user",
    "target_core_file",
    "tcm_loop",
    "sd_mod",
    "sg",
    "crc32c_generic",
    "ext4",
    "loop",
];

/// dm-crypt with XTS-AES (the AES-NI driver: TCG's `-cpu max` has the
/// instructions) and loop devices over files.
const CRYPT_MODULES: &[&str] = &["dm_mod", "dm_crypt", "xts", "aesni_intel", "loop"];

/// The kernel fileio backstore's conformance outcome per test (`passed`,
/// `skipped` or `failed`, then `SUITE.TEST`), from Debian's 6.1 kernel
/// (6.1.0-57): the reference parastor is held to. `kernel-fileio`
/// re-derives it and prints the differences, so a kernel update shows.
const KERNEL_REFERENCE: &[(&str, &str)] = &[(
    "kernel-conformance.tests",
    include_str!("scenarios/kernel-conformance.tests"),
)];

/// The kernel's NVMe driver (to write and read the data parastor's driver
/// checks) and VFIO with the type-1 IOMMU (the emulated VT-d).
const NVME_VFIO_MODULES: &[&str] = &["nvme", "vfio", "vfio_iommu_type1", "vfio_pci"];

/// An NVMe subsystem with one controller (serial `deadbeef`) and two
/// namespaces: 512-byte LBAs (nsid 1) and 4096-byte LBAs (nsid 2).
const NVME_VFIO_QEMU: &[&str] = &[
    "-device",
    "nvme-subsys,id=vfio-subsys,nqn=nqn.2026-12.parastor:nvme-vfio",
    "-device",
    "nvme,id=vfio-nvme,serial=deadbeef,subsys=vfio-subsys",
    "-drive",
    "file={disks}/nvme-vfio-ns1.img,if=none,id=vfio-ns1,format=raw,discard=unmap",
    "-device",
    "nvme-ns,drive=vfio-ns1,bus=vfio-nvme,nsid=1,logical_block_size=512,physical_block_size=512",
    "-drive",
    "file={disks}/nvme-vfio-ns2.img,if=none,id=vfio-ns2,format=raw,discard=unmap",
    "-device",
    "nvme-ns,drive=vfio-ns2,bus=vfio-nvme,nsid=2,logical_block_size=4096,physical_block_size=4096",
];

/// The namespaces' images (both NVMe scenarios share the controller).
const NVME_VFIO_DISKS: &[(&str, u64)] = &[
    ("nvme-vfio-ns1.img", 64 << 20),
    ("nvme-vfio-ns2.img", 64 << 20),
];

/// The registry, in the order `cargo xtask vmtest` runs them.
/// `kernel-fileio` (the kernel backstore's conformance run) is only run
/// when named: `scsi-conformance` compares with its stored results.
pub(crate) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "kernel-fileio",
        about: "libiscsi conformance suite against the kernel's own fileio backstore; \
                differences from the stored reference (needs no TCMU)",
        script: include_str!("scenarios/kernel-fileio.sh"),
        modules: SCSI_MODULES,
        data: KERNEL_REFERENCE,
        qemu_args: &[],
        disks: &[],
        default_run: false,
        timeout: Duration::from_secs(120),
    },
    Scenario {
        name: "dm-crypt",
        about: "parastor's crypt: disks and dm-crypt aes-xts-plain64 read each other's data (512 B and 4 KiB sectors)",
        script: include_str!("scenarios/dm-crypt.sh"),
        modules: CRYPT_MODULES,
        data: &[],
        qemu_args: &[],
        disks: &[],
        default_run: true,
        timeout: Duration::from_secs(90),
    },
    Scenario {
        name: "scsi-conformance",
        about: "libiscsi conformance suite on parastor tcmu mem: and file: at once; parastor \
                fails no test the kernel's fileio backstore does not fail (stored reference)",
        script: include_str!("scenarios/scsi-conformance.sh"),
        modules: SCSI_MODULES,
        data: KERNEL_REFERENCE,
        qemu_args: &[],
        disks: &[],
        default_run: true,
        timeout: Duration::from_secs(720),
    },
    Scenario {
        name: "scsi-tools",
        about: "sg3_utils and scsi_id against parastor tcmu: identity, VPD, capacity, unmap, write same, \
                compare and write, reservations over two paths, resize, DVD media",
        script: include_str!("scenarios/scsi-tools.sh"),
        modules: SCSI_TOOLS_MODULES,
        data: &[],
        qemu_args: &[],
        disks: &[],
        default_run: true,
        timeout: Duration::from_secs(150),
    },
    Scenario {
        name: "scsi-fs",
        about: "ext4 made and filled through parastor tcmu, checked after through parastor disk read",
        script: include_str!("scenarios/scsi-fs.sh"),
        modules: SCSI_FS_MODULES,
        data: &[],
        qemu_args: &[],
        disks: &[],
        default_run: true,
        timeout: Duration::from_secs(150),
    },
    Scenario {
        name: "scsi-perf",
        about: "fio 4 KiB random reads QD1/QD32: parastor tcmu against the kernel's fileio backstore (informative)",
        script: include_str!("scenarios/scsi-perf.sh"),
        modules: SCSI_MODULES,
        data: &[],
        qemu_args: &[],
        disks: &[],
        default_run: true,
        timeout: Duration::from_secs(150),
    },
    Scenario {
        name: "nvme-vfio",
        about: "parastor's NVMe driver over QEMU's NVMe through VFIO (emulated VT-d): identify, 512 B and \
                4 KiB namespaces, data the kernel wrote, writes the kernel reads back, DSM, flush, resets",
        script: include_str!("scenarios/nvme-vfio.sh"),
        modules: NVME_VFIO_MODULES,
        data: &[],
        qemu_args: NVME_VFIO_QEMU,
        disks: NVME_VFIO_DISKS,
        default_run: true,
        timeout: Duration::from_secs(90),
    },
    Scenario {
        name: "nvme-perf",
        about: "fio 4 KiB random reads QD1/QD32 on the kernel's nvme driver against parastor's driver \
                over VFIO, same QEMU controller (informative)",
        script: include_str!("scenarios/nvme-perf.sh"),
        modules: NVME_VFIO_MODULES,
        data: &[],
        qemu_args: NVME_VFIO_QEMU,
        disks: NVME_VFIO_DISKS,
        default_run: true,
        timeout: Duration::from_secs(90),
    },
];

/// The scenario called `name`.
pub(crate) fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_usable() {
        for (i, s) in SCENARIOS.iter().enumerate() {
            assert!(
                s.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{}: names are lowercase words joined by `-`",
                s.name
            );
            assert!(
                SCENARIOS[..i].iter().all(|t| t.name != s.name),
                "{} twice",
                s.name
            );
            assert!(!s.script.is_empty() && !s.about.is_empty());
            assert!(s.timeout >= Duration::from_secs(10));
            assert!(
                s.modules
                    .iter()
                    .all(|m| !m.contains(char::is_whitespace) && !m.contains(',')),
                "{}: module names go into a comma-separated plan field",
                s.name
            );
        }
        for s in SCENARIOS {
            for arg in s.qemu_args.iter().filter(|a| a.contains("{disks}")) {
                assert!(
                    s.disks
                        .iter()
                        .any(|(name, _)| arg.contains(&format!("{{disks}}/{name},"))),
                    "{}: `{arg}` names a disk the scenario does not create",
                    s.name
                );
            }
        }
        assert_eq!(
            SCENARIOS[0].name, "kernel-fileio",
            "the reference runs first"
        );
        assert!(find("dm-crypt").is_some());
        assert!(find("nope").is_none());
    }
}
