use super::*;
use crate::data::BIT_BUCKET_BASE;
use core::sync::atomic::{AtomicU32, Ordering};
use futures::executor::block_on;
use parastor_core::ram::RamDisk;
use parastor_core::{DiskIo, Gpa, IoError, MediumError, RamGuestMemory, ReservationsDisk};
use parastor_hw::nvme::data::{RawSglDescriptor, SglDescriptorType};
use parastor_hw::nvme::queue::{Cdw0, DataTransferKind};
use parastor_hw::nvme::status::StatusCodeType;
use std::sync::Arc;
use std::vec;
use zerocopy::{FromZeros, IntoBytes};

#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

const PAGE: u64 = 4096;
const MEM: u64 = 8 << 20;
const HOST_A: InitiatorId = InitiatorId::new(0xA);
const HOST_B: InitiatorId = InitiatorId::new(0xB);

fn params(host: InitiatorId) -> IoParams {
    IoParams {
        page_size: PAGE,
        max_transfer: MAX_TRANSFER_BYTES,
        host_id: host,
        host_id_extended: false,
        write_cache: true,
    }
}

/// A RAM disk behind a handle that can say it does not complete inline,
/// be read-only, fail reads with a medium error, read unmapped sectors as
/// unspecified, and count unmaps.
struct TestDisk {
    ram: Disk,
    inline: bool,
    read_only: bool,
    unmap: UnmapBehavior,
    fail_reads: bool,
    unmaps: Arc<AtomicU32>,
    fua_writes: Arc<AtomicU32>,
}

impl TestDisk {
    fn new(bytes: u64, sector: u32) -> Self {
        Self {
            ram: Disk::new(RamDisk::new(bytes, sector).unwrap()).unwrap(),
            inline: true,
            read_only: false,
            unmap: UnmapBehavior::Zeroes,
            fail_reads: false,
            unmaps: Arc::new(AtomicU32::new(0)),
            fua_writes: Arc::new(AtomicU32::new(0)),
        }
    }
}

impl DiskIo for TestDisk {
    fn kind(&self) -> &'static str {
        "test"
    }
    fn sector_count(&self) -> u64 {
        self.ram.sector_count()
    }
    fn sector_size(&self) -> u32 {
        self.ram.sector_size()
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn is_fua_respected(&self) -> bool {
        true
    }
    fn unmap_behavior(&self) -> UnmapBehavior {
        self.unmap
    }
    fn completes_inline(&self) -> bool {
        self.inline
    }
    async fn read(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        if self.fail_reads {
            return Err(DiskError::Medium(MediumError::UnrecoveredRead));
        }
        self.ram.read_inline(buf, sector, opts)
    }
    async fn write(&self, buf: SgList<'_>, sector: u64, opts: IoOptions) -> Result<(), DiskError> {
        if opts.fua {
            self.fua_writes.fetch_add(1, Ordering::Relaxed);
        }
        self.ram.write_inline(buf, sector, opts)
    }
    async fn flush(&self, _: IoOptions) -> Result<(), DiskError> {
        Ok(())
    }
    async fn unmap(&self, sector: u64, count: u64, opts: IoOptions) -> Result<(), DiskError> {
        self.unmaps.fetch_add(1, Ordering::Relaxed);
        parastor_core::run_inline(self.ram.unmap(sector, count, opts))
    }
}

struct Rig {
    mem: RamGuestMemory,
    disk: Disk,
    scratch: BouncePool,
    ranges: Vec<GpaRange>,
}

impl Rig {
    fn with(disk: Disk) -> Self {
        Self {
            mem: RamGuestMemory::new(MEM),
            disk,
            scratch: BouncePool::new(SCRATCH_BUDGET),
            ranges: Vec::new(),
        }
    }

    fn ram(bytes: u64, sector: u32) -> Self {
        Self::with(Disk::new(RamDisk::new(bytes, sector).unwrap()).unwrap())
    }

    fn run_as(&mut self, sqe: &Sqe, p: IoParams) -> IoOutcome {
        block_on(execute(
            &self.mem,
            &self.disk,
            sqe,
            &p,
            &self.scratch,
            &mut self.ranges,
        ))
    }

    fn run(&mut self, sqe: &Sqe) -> IoOutcome {
        self.run_as(sqe, params(HOST_A))
    }

    fn fill(&self, gpa: u64, data: &[u8]) {
        self.mem.write_at(Gpa::new(gpa), data).unwrap();
    }

    fn guest(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read_at(Gpa::new(gpa), &mut b).unwrap();
        b
    }

    /// The disk's bytes at `sector` (read through a spare guest area).
    fn medium(&self, sector: u64, len: usize) -> Vec<u8> {
        let m = RamGuestMemory::new(len as u64);
        let r = [GpaRange::new(Gpa::new(0), len as u64)];
        let sg = SgList::new(&m, &r, true).unwrap();
        block_on(self.disk.read(sg, sector, IoOptions::default())).unwrap();
        let mut b = vec![0u8; len];
        m.read_at(Gpa::new(0), &mut b).unwrap();
        b
    }

    fn put_medium(&self, sector: u64, data: &[u8]) {
        let m = RamGuestMemory::new(data.len() as u64);
        m.write_at(Gpa::new(0), data).unwrap();
        let r = [GpaRange::new(Gpa::new(0), data.len() as u64)];
        let sg = SgList::new(&m, &r, false).unwrap();
        block_on(self.disk.write(sg, sector, IoOptions::default())).unwrap();
    }
}

fn cmd(op: NvmOpcode, slba: u64, blocks: u32) -> Sqe {
    let mut s = Sqe::new_zeroed();
    s.cdw0 = Cdw0::new().with_opc(op.get()).with_cid(7);
    s.nsid.set(1);
    s.cdw10.set(slba as u32);
    s.cdw11.set((slba >> 32) as u32);
    s.cdw12.set(blocks.saturating_sub(1) & 0xFFFF);
    s
}

fn with_prps(mut s: Sqe, prp1: u64, prp2: u64) -> Sqe {
    s.set_prps(prp1, prp2);
    s
}

fn with_sgl(mut s: Sqe, ty: SglDescriptorType, address: u64, length: u32) -> Sqe {
    s.cdw0 = s.cdw0.with_psdt(DataTransferKind::SGL_METADATA_BUFFER);
    s.dptr = RawSglDescriptor::new(ty, address, length)
        .as_bytes()
        .try_into()
        .unwrap();
    s
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn dnr(sc: GenericStatus) -> StatusWord {
    StatusWord::generic(sc).with_dnr(true)
}

fn put_entries(rig: &Rig, at: u64, entries: &[u64]) {
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    rig.fill(at, &bytes);
}

#[test]
fn write_then_read_through_a_prp_list() {
    for sector in [512u32, 4096] {
        let mut rig = Rig::ram(16 << 20, sector);
        let len = 5 * PAGE as usize;
        let blocks = (len / sector as usize) as u32;
        let data = pattern(len, 3);
        // Write from pages 0x10000, 0x30000, 0x20000, 0x50000, 0x40000.
        let pages = [0x10000u64, 0x30000, 0x20000, 0x50000, 0x40000];
        for (i, p) in pages.iter().enumerate() {
            rig.fill(*p, &data[i * PAGE as usize..][..PAGE as usize]);
        }
        put_entries(&rig, 0x90000, &pages[1..]);
        let mut w = with_prps(cmd(NvmOpcode::WRITE, 8, blocks), pages[0], 0x90000);
        w.cdw12.set(w.cdw12.get() | 1 << 30); // FUA
        let o = rig.run(&w);
        assert_eq!(o.status, StatusWord::SUCCESS);
        assert_eq!((o.bytes_written, o.bytes_read), (len as u64, 0));
        assert_eq!(rig.medium(8, len), data, "sector {sector}");
        // Read it back into one contiguous run of pages.
        put_entries(&rig, 0x91000, &[0x101000, 0x102000, 0x103000, 0x104000]);
        let r = with_prps(cmd(NvmOpcode::READ, 8, blocks), 0x100000, 0x91000);
        let o = rig.run(&r);
        assert_eq!(o.status, StatusWord::SUCCESS);
        assert_eq!((o.bytes_read, o.bytes_written), (len as u64, 0));
        assert_eq!(rig.guest(0x100000, len), data);
        // The ranges vector holds the merged pages.
        assert_eq!(
            rig.ranges,
            vec![GpaRange::new(Gpa::new(0x100000), len as u64)]
        );
    }
}

#[test]
fn fua_reaches_the_disk_and_a_disabled_cache_forces_it() {
    let disk = TestDisk::new(1 << 20, 512);
    let fua = disk.fua_writes.clone();
    let mut rig = Rig::with(Disk::new(disk).unwrap());
    let w = with_prps(cmd(NvmOpcode::WRITE, 0, 1), 0x1000, 0);
    assert!(rig.run(&w).status.is_success());
    assert_eq!(fua.load(Ordering::Relaxed), 0);
    let mut w_fua = w;
    w_fua.cdw12.set(w.cdw12.get() | 1 << 30);
    assert!(rig.run(&w_fua).status.is_success());
    assert_eq!(fua.load(Ordering::Relaxed), 1);
    let no_cache = IoParams {
        write_cache: false,
        ..params(HOST_A)
    };
    assert!(rig.run_as(&w, no_cache).status.is_success());
    assert_eq!(fua.load(Ordering::Relaxed), 2);
    let now = execute_now(&rig.mem, &rig.disk, &w, &no_cache, &mut rig.ranges).unwrap();
    assert!(now.status.is_success());
    assert_eq!(fua.load(Ordering::Relaxed), 3);
    assert!(
        rig.run_as(&cmd(NvmOpcode::WRITE_ZEROES, 4, 2), no_cache)
            .status
            .is_success()
    );
    assert_eq!(fua.load(Ordering::Relaxed), 4);
}

#[test]
fn inline_fast_path_matches_execute() {
    let mut rig = Rig::ram(1 << 20, 512);
    let data = pattern(4096, 9);
    rig.fill(0x10000, &data);
    let p = params(HOST_A);
    let w = with_prps(cmd(NvmOpcode::WRITE, 3, 8), 0x10000, 0);
    let o = execute_now(&rig.mem, &rig.disk, &w, &p, &mut rig.ranges).unwrap();
    assert_eq!((o.status, o.bytes_written), (StatusWord::SUCCESS, 4096));
    assert_eq!(rig.medium(3, 4096), data);
    let r = with_prps(cmd(NvmOpcode::READ, 3, 8), 0x20000, 0);
    let o = execute_now(&rig.mem, &rig.disk, &r, &p, &mut rig.ranges).unwrap();
    assert_eq!((o.status, o.bytes_read), (StatusWord::SUCCESS, 4096));
    assert_eq!(rig.guest(0x20000, 4096), data);
    let f = cmd(NvmOpcode::FLUSH, 0, 0);
    assert_eq!(
        execute_now(&rig.mem, &rig.disk, &f, &p, &mut rig.ranges).map(|o| o.status),
        Some(StatusWord::SUCCESS)
    );
    // Errors come back the same way as from execute.
    let bad = with_prps(cmd(NvmOpcode::READ, 2047, 2), 0x20000, 0);
    let now = execute_now(&rig.mem, &rig.disk, &bad, &p, &mut rig.ranges).unwrap();
    assert_eq!(now, rig.run(&bad));
    assert_eq!(now.status, dnr(GenericStatus::LBA_OUT_OF_RANGE));
    // Other commands, bit-bucket reads and disks that wait: not here.
    let c = with_prps(cmd(NvmOpcode::COMPARE, 3, 8), 0x10000, 0);
    assert!(execute_now(&rig.mem, &rig.disk, &c, &p, &mut rig.ranges).is_none());
    let bucket = with_sgl(
        cmd(NvmOpcode::READ, 3, 1),
        SglDescriptorType::BIT_BUCKET,
        0,
        512,
    );
    assert!(execute_now(&rig.mem, &rig.disk, &bucket, &p, &mut rig.ranges).is_none());
    let mut waits = TestDisk::new(1 << 20, 512);
    waits.inline = false;
    let waits = Disk::new(waits).unwrap();
    assert!(execute_now(&rig.mem, &waits, &r, &p, &mut rig.ranges).is_none());
}

#[test]
fn lba_range_and_transfer_size_are_checked() {
    let mut rig = Rig::ram(1 << 20, 512); // 2048 blocks
    rig.put_medium(2040, &pattern(4096, 1));
    let lba_oor = dnr(GenericStatus::LBA_OUT_OF_RANGE);
    for op in [
        NvmOpcode::READ,
        NvmOpcode::WRITE,
        NvmOpcode::COMPARE,
        NvmOpcode::VERIFY,
        NvmOpcode::WRITE_ZEROES,
    ] {
        for (slba, n) in [(2041u64, 8u32), (2048, 1), (u64::MAX, 1), (u64::MAX - 3, 8)] {
            let o = rig.run(&with_prps(cmd(op, slba, n), 0x10000, 0));
            assert_eq!(o.status, lba_oor, "{op:?} {slba} {n}");
            assert_eq!((o.lba, o.param_error_location), (slba, 40));
        }
        // The last block is fine.
        let o = rig.run(&with_prps(cmd(op, 2047, 1), 0x10000, 0));
        assert!(o.status.is_success() || op == NvmOpcode::COMPARE, "{op:?}");
    }
    assert_eq!(rig.medium(2040, 4096)[..3584], pattern(4096, 1)[..3584]);
    // MDTS: 1 MiB is the most one command moves.
    let mut big = Rig::ram(64 << 20, 4096);
    let limit = (MAX_TRANSFER_BYTES / 4096) as u32;
    for op in [NvmOpcode::READ, NvmOpcode::WRITE, NvmOpcode::COMPARE] {
        let o = big.run(&with_prps(cmd(op, 0, limit + 1), 0x10000, 0x20000));
        assert_eq!(
            o.status,
            dnr(GenericStatus::INVALID_FIELD_IN_COMMAND),
            "{op:?}"
        );
        assert_eq!(o.param_error_location, 48);
    }
    // Verify and Write Zeroes move no data: MDTS does not apply.
    let o = big.run(&cmd(NvmOpcode::VERIFY, 0, 16384));
    assert_eq!(o.status, StatusWord::SUCCESS);
    let o = big.run(&cmd(NvmOpcode::WRITE_ZEROES, 0, 16384));
    assert_eq!(o.status, StatusWord::SUCCESS);
}

#[test]
fn hostile_data_pointers_touch_nothing() {
    let mut rig = Rig::ram(1 << 20, 512);
    let before = pattern(8192, 5);
    rig.put_medium(0, &before);
    let cases = [
        // PRP1 outside guest memory.
        (
            with_prps(cmd(NvmOpcode::WRITE, 0, 16), MEM, 0),
            GenericStatus::DATA_TRANSFER_ERROR,
        ),
        // PRP2 data page outside guest memory.
        (
            with_prps(cmd(NvmOpcode::WRITE, 0, 16), 0x1000, MEM + 0x1000),
            GenericStatus::DATA_TRANSFER_ERROR,
        ),
        // PRP2 with an offset.
        (
            with_prps(cmd(NvmOpcode::WRITE, 0, 16), 0x1000, 0x2200),
            GenericStatus::PRP_OFFSET_INVALID,
        ),
        // An SGL shorter than the transfer.
        (
            with_sgl(
                cmd(NvmOpcode::WRITE, 0, 16),
                SglDescriptorType::DATA_BLOCK,
                0x1000,
                4096,
            ),
            GenericStatus::DATA_SGL_LENGTH_INVALID,
        ),
        // A bit bucket in data sent to the disk.
        (
            with_sgl(
                cmd(NvmOpcode::WRITE, 0, 16),
                SglDescriptorType::BIT_BUCKET,
                0,
                8192,
            ),
            GenericStatus::SGL_DESCRIPTOR_TYPE_INVALID,
        ),
    ];
    for (sqe, sc) in cases {
        let o = rig.run(&sqe);
        assert_eq!(o.status, dnr(sc));
        assert_eq!(o.param_error_location, 24, "located at the data pointer");
        assert!(rig.ranges.is_empty());
    }
    assert_eq!(rig.medium(0, 8192), before, "nothing was written");
    // A reserved PSDT is located at PSDT.
    let mut s = with_prps(cmd(NvmOpcode::READ, 0, 1), 0x1000, 0);
    s.cdw0 = s.cdw0.with_psdt(DataTransferKind::RESERVED);
    let o = rig.run(&s);
    assert_eq!(o.status, dnr(GenericStatus::INVALID_FIELD_IN_COMMAND));
    assert_eq!(o.param_error_location, 1 | 6 << 8);
}

#[test]
fn sgl_reads_and_writes_with_bit_buckets() {
    let mut rig = Rig::ram(1 << 20, 512);
    let data = pattern(2048, 7);
    rig.put_medium(4, &data);
    // Read 4 blocks: 100 bytes to 0x1000, 400 discarded, 1548 to 0x3000.
    let descs = [
        RawSglDescriptor::new(SglDescriptorType::DATA_BLOCK, 0x1000, 100),
        RawSglDescriptor::new(SglDescriptorType::BIT_BUCKET, 0, 400),
        RawSglDescriptor::new(SglDescriptorType::DATA_BLOCK, 0x3000, 1548),
    ];
    let bytes: Vec<u8> = descs.iter().flat_map(|d| d.as_bytes().to_vec()).collect();
    rig.fill(0x20000, &bytes);
    rig.fill(0x1000, &[0xEE; 1024]);
    let s = with_sgl(
        cmd(NvmOpcode::READ, 4, 4),
        SglDescriptorType::LAST_SEGMENT,
        0x20000,
        48,
    );
    let o = rig.run(&s);
    assert_eq!((o.status, o.bytes_read), (StatusWord::SUCCESS, 2048));
    assert_eq!(rig.guest(0x1000, 100), data[..100]);
    assert_eq!(
        rig.guest(0x1064, 16),
        vec![0xEE; 16],
        "bucket bytes land nowhere in the guest"
    );
    assert_eq!(rig.guest(0x3000, 1548), data[500..]);
    assert!(rig.ranges.iter().any(|r| r.gpa.get() >= BIT_BUCKET_BASE));
    assert_eq!(rig.scratch.in_use(), 0, "the bucket scratch went back");
    // An SGL write from two blocks.
    let descs = [
        RawSglDescriptor::new(SglDescriptorType::DATA_BLOCK, 0x5001, 700),
        RawSglDescriptor::new(SglDescriptorType::DATA_BLOCK, 0x7003, 324),
    ];
    let bytes: Vec<u8> = descs.iter().flat_map(|d| d.as_bytes().to_vec()).collect();
    rig.fill(0x21000, &bytes);
    let new = pattern(1024, 11);
    rig.fill(0x5001, &new[..700]);
    rig.fill(0x7003, &new[700..]);
    let s = with_sgl(
        cmd(NvmOpcode::WRITE, 100, 2),
        SglDescriptorType::SEGMENT,
        0x21000,
        32,
    );
    let o = rig.run(&s);
    assert_eq!((o.status, o.bytes_written), (StatusWord::SUCCESS, 1024));
    assert_eq!(rig.medium(100, 1024), new);
}

#[test]
fn flush_and_read_only_disks() {
    let mut rig = Rig::ram(1 << 20, 512);
    assert_eq!(
        rig.run(&cmd(NvmOpcode::FLUSH, 0, 0)).status,
        StatusWord::SUCCESS
    );
    let mut ro = TestDisk::new(1 << 20, 512);
    ro.read_only = true;
    let mut rig = Rig::with(Disk::new(ro).unwrap());
    let wp = dnr(GenericStatus::NAMESPACE_WRITE_PROTECTED);
    assert_eq!(
        rig.run(&cmd(NvmOpcode::FLUSH, 0, 0)).status,
        StatusWord::SUCCESS
    );
    let o = rig.run(&with_prps(cmd(NvmOpcode::WRITE, 0, 1), 0x1000, 0));
    assert_eq!((o.status, o.bytes_written), (wp, 0));
    assert_eq!(rig.run(&cmd(NvmOpcode::WRITE_ZEROES, 0, 1)).status, wp);
    let mut deac = cmd(NvmOpcode::WRITE_ZEROES, 0, 1);
    deac.cdw12.set(deac.cdw12.get() | 1 << 25);
    assert_eq!(rig.run(&deac).status, wp);
    rig.fill(0x1000, &[0; 16]);
    let mut dsm = with_prps(cmd(NvmOpcode::DATASET_MANAGEMENT, 0, 0), 0x1000, 0);
    dsm.cdw10.set(0);
    dsm.cdw11.set(4);
    rig.fill(0x1004, &1u32.to_le_bytes());
    assert_eq!(rig.run(&dsm).status, wp);
    let o = rig.run(&with_prps(cmd(NvmOpcode::READ, 0, 1), 0x1000, 0));
    assert_eq!(o.status, StatusWord::SUCCESS);
}

#[test]
fn compare_is_a_real_byte_compare() {
    let mut rig = Rig::ram(4 << 20, 512);
    // 512 KiB: two scratch chunks.
    let len = 512 << 10;
    let data = pattern(len, 21);
    rig.put_medium(10, &data);
    rig.fill(0x100000, &data);
    let blocks = (len / 512) as u32;
    let mut list = vec![];
    for i in 1..(len as u64 / PAGE) {
        list.push(0x100000 + i * PAGE);
    }
    put_entries(&rig, 0x90000, &list);
    let c = with_prps(cmd(NvmOpcode::COMPARE, 10, blocks), 0x100000, 0x90000);
    let o = rig.run(&c);
    assert_eq!((o.status, o.bytes_read), (StatusWord::SUCCESS, len as u64));
    // One byte differs, in the second chunk.
    rig.fill(0x100000 + len as u64 - 1, &[!data[len - 1]]);
    let o = rig.run(&c);
    assert_eq!(
        o.status,
        StatusWord::media(MediaStatus::COMPARE_FAILURE).with_dnr(true)
    );
    assert_eq!(o.status.sct(), StatusCodeType::MEDIA);
    assert_eq!((o.lba, o.bytes_read), (10, 0));
    // And in the first.
    rig.fill(0x100000 + len as u64 - 1, &[data[len - 1]]);
    rig.fill(0x100000, &[!data[0]]);
    assert_eq!(rig.run(&c).status.sc(), MediaStatus::COMPARE_FAILURE.get());
    assert_eq!(rig.scratch.in_use(), 0);
    // A compare does not change the medium.
    assert_eq!(rig.medium(10, len), data);
}

#[test]
fn verify_reads_and_reports_medium_errors() {
    let mut rig = Rig::ram(1 << 20, 512);
    let o = rig.run(&cmd(NvmOpcode::VERIFY, 0, 2048));
    assert_eq!((o.status, o.bytes_read), (StatusWord::SUCCESS, 1 << 20));
    let mut bad = TestDisk::new(1 << 20, 512);
    bad.fail_reads = true;
    let mut rig = Rig::with(Disk::new(bad).unwrap());
    let unrecovered = StatusWord::media(MediaStatus::UNRECOVERED_READ_ERROR).with_dnr(true);
    let o = rig.run(&cmd(NvmOpcode::VERIFY, 7, 2));
    assert_eq!((o.status, o.lba), (unrecovered, 7));
    let o = rig.run(&with_prps(cmd(NvmOpcode::READ, 9, 1), 0x1000, 0));
    assert_eq!((o.status, o.lba, o.bytes_read), (unrecovered, 9, 0));
}

#[test]
fn write_zeroes_unmaps_only_where_that_reads_zero() {
    // A disk whose unmapped sectors read as zeros: DEAC unmaps.
    let zeroes = TestDisk::new(1 << 20, 512);
    let unmaps = zeroes.unmaps.clone();
    let mut rig = Rig::with(Disk::new(zeroes).unwrap());
    rig.put_medium(0, &pattern(8192, 2));
    let mut wz = cmd(NvmOpcode::WRITE_ZEROES, 2, 4);
    wz.cdw12.set(wz.cdw12.get() | 1 << 25);
    assert_eq!(rig.run(&wz).status, StatusWord::SUCCESS);
    assert_eq!(unmaps.load(Ordering::Relaxed), 1);
    assert_eq!(rig.medium(2, 2048), vec![0; 2048]);
    assert_eq!(rig.medium(0, 1024), pattern(8192, 2)[..1024]);
    assert_eq!(rig.medium(6, 1024), pattern(8192, 2)[3072..4096]);
    // Without DEAC: real zero writes.
    let wz = cmd(NvmOpcode::WRITE_ZEROES, 8, 2);
    assert_eq!(rig.run(&wz).status, StatusWord::SUCCESS);
    assert_eq!(unmaps.load(Ordering::Relaxed), 1);
    assert_eq!(rig.medium(8, 1024), vec![0; 1024]);
    // A disk whose unmapped sectors read as anything: DEAC writes zeros.
    let mut unspecified = TestDisk::new(1 << 20, 512);
    unspecified.unmap = UnmapBehavior::Unspecified;
    let unmaps = unspecified.unmaps.clone();
    let mut rig = Rig::with(Disk::new(unspecified).unwrap());
    // More than one scratch chunk of zeros.
    let n = (SCRATCH_CHUNK / 512 * 2 + 3) as u32;
    rig.put_medium(1, &pattern(n as usize * 512, 4));
    let mut wz = cmd(NvmOpcode::WRITE_ZEROES, 1, n);
    wz.cdw12.set(wz.cdw12.get() | 1 << 25);
    assert_eq!(rig.run(&wz).status, StatusWord::SUCCESS);
    assert_eq!(unmaps.load(Ordering::Relaxed), 0);
    assert!(rig.medium(1, n as usize * 512).iter().all(|&b| b == 0));
}

fn dsm(rig: &Rig, ranges: &[(u64, u32)], ad: bool) -> Sqe {
    let mut bytes = vec![];
    for &(slba, nlb) in ranges {
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&nlb.to_le_bytes());
        bytes.extend_from_slice(&slba.to_le_bytes());
    }
    // The range list straddles a page: PRP1 with an offset, PRP2.
    let at = 0x41000 - 48;
    rig.fill(at, &bytes);
    let mut s = with_prps(cmd(NvmOpcode::DATASET_MANAGEMENT, 0, 0), at, 0x41000);
    s.cdw10.set(ranges.len() as u32 - 1);
    s.cdw11.set(if ad { 4 } else { 3 });
    s.cdw12.set(0);
    s
}

#[test]
fn dataset_management_deallocates_every_checked_range() {
    let mut rig = Rig::ram(1 << 20, 512);
    let full = pattern(1 << 20, 6);
    rig.put_medium(0, &full);
    // Hints only: nothing happens.
    let s = dsm(&rig, &[(0, 8)], false);
    assert_eq!(rig.run(&s).status, StatusWord::SUCCESS);
    assert_eq!(rig.medium(0, 4096), full[..4096]);
    // Three ranges (one empty) deallocated.
    let s = dsm(&rig, &[(0, 8), (100, 0), (2040, 8), (50, 2)], true);
    assert_eq!(rig.run(&s).status, StatusWord::SUCCESS);
    assert_eq!(rig.medium(0, 4096), vec![0; 4096]);
    assert_eq!(rig.medium(2040, 4096), vec![0; 4096]);
    assert_eq!(rig.medium(50, 1024), vec![0; 1024]);
    assert_eq!(rig.medium(8, 512), full[4096..4608]);
    // One range past the end: LBA Out of Range, and no range is touched.
    rig.put_medium(0, &full);
    let s = dsm(&rig, &[(0, 8), (2044, 5)], true);
    let o = rig.run(&s);
    assert_eq!(o.status, dnr(GenericStatus::LBA_OUT_OF_RANGE));
    assert_eq!(rig.medium(0, 4096), full[..4096]);
    let s = dsm(&rig, &[(u64::MAX, 2)], true);
    assert_eq!(rig.run(&s).status, dnr(GenericStatus::LBA_OUT_OF_RANGE));
    // All 256 ranges are read.
    let ranges: Vec<(u64, u32)> = (0..256).map(|i| (i * 8, 1)).collect();
    let s = dsm(&rig, &ranges, true);
    assert_eq!(rig.run(&s).status, StatusWord::SUCCESS);
    assert_eq!(rig.medium(255 * 8, 512), vec![0; 512]);
    assert_eq!(
        rig.medium(255 * 8 + 1, 512),
        full[(255 * 8 + 1) * 512..][..512]
    );
    assert_eq!(rig.scratch.in_use(), 0);
}

/// A reservation command's parameter data at 0x60000.
fn resv(rig: &Rig, op: NvmOpcode, cdw10: u32, keys: &[u64]) -> Sqe {
    let bytes: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
    rig.fill(0x60000, &bytes);
    let mut s = with_prps(cmd(op, 0, 0), 0x60000, 0);
    s.cdw10.set(cdw10);
    s.cdw11.set(0);
    s.cdw12.set(0);
    s
}

const REGISTER: u32 = 0;
const UNREGISTER: u32 = 1;
const REPLACE: u32 = 2;
const IEKEY: u32 = 1 << 3;

fn rtype(t: u32) -> u32 {
    t << 8
}

fn report(rig: &mut Rig, host: IoParams, eds: bool, len: u32) -> (StatusWord, Vec<u8>) {
    rig.fill(0x70000, &vec![0xCC; len as usize + 64]);
    let mut s = with_prps(cmd(NvmOpcode::RESERVATION_REPORT, 0, 0), 0x70000, 0x71000);
    s.cdw10.set(len / 4 - 1);
    s.cdw11.set(u32::from(eds));
    s.cdw12.set(0);
    let o = rig.run_as(&s, host);
    (o.status, rig.guest(0x70000, len as usize + 64))
}

#[test]
fn reservations_between_two_hosts() {
    let inner = Disk::new(RamDisk::new(1 << 20, 512).unwrap()).unwrap();
    let mut rig = Rig::with(Disk::new(ReservationsDisk::new(inner)).unwrap());
    let a = params(HOST_A);
    let b = params(HOST_B);
    let conflict = dnr(GenericStatus::RESERVATION_CONFLICT);
    let ok = StatusWord::SUCCESS;
    // Register A with key 0xA1, B with 0xB1.
    let s = resv(&rig, NvmOpcode::RESERVATION_REGISTER, REGISTER, &[0, 0xA1]);
    let o = rig.run_as(&s, a);
    assert_eq!((o.status, o.reservation_changed), (ok, true));
    // Registering again with the same key changes nothing; another key conflicts.
    assert_eq!(rig.run_as(&s, a).status, ok);
    let s2 = resv(&rig, NvmOpcode::RESERVATION_REGISTER, REGISTER, &[0, 0xA2]);
    assert_eq!(rig.run_as(&s2, a).status, conflict);
    let s = resv(&rig, NvmOpcode::RESERVATION_REGISTER, REGISTER, &[0, 0xB1]);
    assert_eq!(rig.run_as(&s, b).status, ok);
    // A acquires Write Exclusive.
    let acq = resv(&rig, NvmOpcode::RESERVATION_ACQUIRE, rtype(1), &[0xA1, 0]);
    assert_eq!(rig.run_as(&acq, a).status, ok);
    // B's write conflicts, B's read does not; A writes.
    let w = with_prps(cmd(NvmOpcode::WRITE, 0, 1), 0x1000, 0);
    let r = with_prps(cmd(NvmOpcode::READ, 0, 1), 0x1000, 0);
    assert_eq!(rig.run_as(&w, b).status, conflict);
    assert_eq!(
        execute_now(&rig.mem, &rig.disk, &w, &b, &mut rig.ranges).map(|o| o.status),
        Some(conflict)
    );
    assert_eq!(rig.run_as(&r, b).status, ok);
    assert_eq!(rig.run_as(&w, a).status, ok);
    // B cannot acquire with a wrong key, nor release A's reservation.
    let acq_b = resv(&rig, NvmOpcode::RESERVATION_ACQUIRE, rtype(1), &[0xB2, 0]);
    assert_eq!(rig.run_as(&acq_b, b).status, conflict);

    // Report, 64-bit host identifiers.
    let (st, buf) = report(&mut rig, a, false, 24 + 2 * 24);
    assert_eq!(st, ok);
    assert_eq!(
        u32::from_le_bytes(buf[0..4].try_into().unwrap()),
        2,
        "two registrations"
    );
    assert_eq!(buf[4], 1, "write exclusive");
    assert_eq!(u16::from_le_bytes([buf[5], buf[6]]), 2);
    assert_eq!(buf[9], 0, "no PTPL");
    let e0 = &buf[24..48];
    assert_eq!(u16::from_le_bytes([e0[0], e0[1]]), 0xFFFF);
    assert_eq!(e0[2], 1, "A holds it");
    assert_eq!(e0[8..16], HOST_A.to_bytes()[..8]);
    assert_eq!(u64::from_le_bytes(e0[16..24].try_into().unwrap()), 0xA1);
    let e1 = &buf[48..72];
    assert_eq!(e1[2], 0);
    assert_eq!(u64::from_le_bytes(e1[16..24].try_into().unwrap()), 0xB1);
    assert_eq!(buf[72..], vec![0xCC; 64], "nothing past the structure");
    // Extended: 64-byte header and entries with 128-bit ids.
    let (st, buf) = report(&mut rig, a, true, 64 + 2 * 64);
    assert_eq!(st, ok);
    assert_eq!(buf[4], 1);
    assert_eq!(buf[24..64], vec![0; 40]);
    let e0 = &buf[64..128];
    assert_eq!(e0[2], 1);
    assert_eq!(u64::from_le_bytes(e0[8..16].try_into().unwrap()), 0xA1);
    assert_eq!(e0[16..32], HOST_A.to_bytes());
    // A short buffer gets the structure truncated.
    let (st, buf) = report(&mut rig, a, false, 32);
    assert_eq!(st, ok);
    assert_eq!(buf[24..32], [0xFF, 0xFF, 1, 0, 0, 0, 0, 0]);
    assert_eq!(buf[32], 0xCC);
    // A host with an extended identifier must ask for the extended format.
    let ext = IoParams {
        host_id_extended: true,
        ..a
    };
    let (st, _) = report(&mut rig, ext, false, 64);
    assert_eq!(st, dnr(GenericStatus::HOST_ID_INCONSISTENT_FORMAT));

    // B preempts A: B holds Exclusive Access, A is unregistered.
    let pre = resv(
        &rig,
        NvmOpcode::RESERVATION_ACQUIRE,
        rtype(2) | 1,
        &[0xB1, 0xA1],
    );
    assert_eq!(rig.run_as(&pre, b).status, ok);
    assert_eq!(rig.run_as(&r, a).status, conflict);
    assert_eq!(rig.run_as(&w, b).status, ok);
    // Release with the wrong type: Invalid Field; with the right one: released.
    let rel = resv(&rig, NvmOpcode::RESERVATION_RELEASE, rtype(1), &[0xB1]);
    assert_eq!(
        rig.run_as(&rel, b).status,
        dnr(GenericStatus::INVALID_FIELD_IN_COMMAND)
    );
    let rel = resv(&rig, NvmOpcode::RESERVATION_RELEASE, rtype(2), &[0xB1]);
    assert_eq!(rig.run_as(&rel, b).status, ok);
    assert_eq!(rig.run_as(&r, a).status, ok);
    // Replace needs a registration (or IEKEY), and the current key.
    let host_c = params(InitiatorId::new(0xC));
    let rep = resv(&rig, NvmOpcode::RESERVATION_REGISTER, REPLACE, &[0, 0xC1]);
    assert_eq!(
        rig.run_as(&rep, host_c).status,
        conflict,
        "C is not registered"
    );
    let rep = resv(
        &rig,
        NvmOpcode::RESERVATION_REGISTER,
        REPLACE,
        &[0xB7, 0xB9],
    );
    assert_eq!(rig.run_as(&rep, b).status, conflict, "wrong current key");
    // Replace B's key, then unregister B ignoring the key.
    let rep = resv(
        &rig,
        NvmOpcode::RESERVATION_REGISTER,
        REPLACE,
        &[0xB1, 0xB9],
    );
    assert_eq!(rig.run_as(&rep, b).status, ok);
    let unreg = resv(
        &rig,
        NvmOpcode::RESERVATION_REGISTER,
        UNREGISTER,
        &[0xB1, 0],
    );
    assert_eq!(rig.run_as(&unreg, b).status, conflict, "old key");
    let unreg = resv(
        &rig,
        NvmOpcode::RESERVATION_REGISTER,
        UNREGISTER | IEKEY,
        &[0, 0],
    );
    assert_eq!(rig.run_as(&unreg, b).status, ok);
    assert_eq!(
        rig.run_as(&unreg, b).status,
        conflict,
        "not registered any more"
    );
    // Register A again and clear everything.
    let s = resv(&rig, NvmOpcode::RESERVATION_REGISTER, REGISTER, &[0, 0xA5]);
    assert_eq!(rig.run_as(&s, a).status, ok);
    let clear = resv(&rig, NvmOpcode::RESERVATION_RELEASE, 1, &[0xA5]);
    assert_eq!(rig.run_as(&clear, a).status, ok);
    let (_, buf) = report(&mut rig, a, false, 24);
    assert_eq!(u16::from_le_bytes([buf[5], buf[6]]), 0);
}

#[test]
fn reservation_fields_are_validated() {
    let inner = Disk::new(RamDisk::new(1 << 20, 512).unwrap()).unwrap();
    let mut rig = Rig::with(Disk::new(ReservationsDisk::new(inner)).unwrap());
    let invalid_field = dnr(GenericStatus::INVALID_FIELD_IN_COMMAND);
    let cases = [
        // Register: reserved action, reserved CPTPL, key 0.
        (NvmOpcode::RESERVATION_REGISTER, 3, 40),
        (NvmOpcode::RESERVATION_REGISTER, 1 << 30, 40),
        // Acquire: IEKEY, type 0 and 7, reserved action.
        (NvmOpcode::RESERVATION_ACQUIRE, IEKEY | rtype(1), 40),
        (NvmOpcode::RESERVATION_ACQUIRE, rtype(0), 40),
        (NvmOpcode::RESERVATION_ACQUIRE, rtype(7), 40),
        (NvmOpcode::RESERVATION_ACQUIRE, rtype(1) | 3, 40),
        // Release: type 9, reserved action.
        (NvmOpcode::RESERVATION_RELEASE, rtype(9), 40),
        (NvmOpcode::RESERVATION_RELEASE, rtype(1) | 2, 40),
    ];
    for (op, cdw10, loc) in cases {
        let s = resv(&rig, op, cdw10, &[1, 2]);
        let o = rig.run(&s);
        assert_eq!(
            (o.status, o.param_error_location),
            (invalid_field, loc),
            "{op:?} {cdw10:#x}"
        );
    }
    let s = resv(&rig, NvmOpcode::RESERVATION_REGISTER, REGISTER, &[0, 0]);
    assert_eq!(rig.run(&s).status, invalid_field, "key 0");
    // APTPL cannot be promised by an in-memory reservation disk.
    let s = resv(
        &rig,
        NvmOpcode::RESERVATION_REGISTER,
        REGISTER | 3 << 30,
        &[0, 5],
    );
    assert_eq!(rig.run(&s).status, invalid_field);
    // Parameter data outside guest memory.
    let mut s = resv(&rig, NvmOpcode::RESERVATION_REGISTER, REGISTER, &[0, 5]);
    s.set_prps(MEM, 0);
    assert_eq!(rig.run(&s).status, dnr(GenericStatus::DATA_TRANSFER_ERROR));
    // A namespace without reservations does not know the commands.
    let mut plain = Rig::ram(1 << 20, 512);
    for op in [
        NvmOpcode::RESERVATION_REGISTER,
        NvmOpcode::RESERVATION_REPORT,
        NvmOpcode::RESERVATION_ACQUIRE,
        NvmOpcode::RESERVATION_RELEASE,
    ] {
        let s = resv(&plain, op, 0, &[0, 1]);
        assert_eq!(
            plain.run(&s).status,
            dnr(GenericStatus::INVALID_COMMAND_OPCODE)
        );
    }
}

#[test]
fn unknown_opcodes_are_refused() {
    let mut rig = Rig::ram(1 << 20, 512);
    for op in [0x03u8, 0x04, 0x19, 0x7F, 0x80, 0xFF] {
        let o = rig.run(&cmd(NvmOpcode::new(op), 0, 1));
        assert_eq!(
            o.status,
            dnr(GenericStatus::INVALID_COMMAND_OPCODE),
            "{op:#x}"
        );
        assert_eq!(o.param_error_location, 0);
    }
}

#[test]
fn host_identifiers_become_initiators() {
    let mut id = [0u8; 16];
    id[0] = 0x12;
    id[7] = 0x34;
    id[15] = 0x56;
    let short = initiator_from_host_id(&id, false);
    assert_eq!(short.to_bytes()[..8], id[..8]);
    assert_eq!(short.to_bytes()[8..], [0; 8]);
    assert_eq!(initiator_from_host_id(&id, true).to_bytes(), id);
}

#[test]
fn command_futures_fit_a_storvsp_sized_slot() {
    let rig = Rig::ram(1 << 20, 512);
    let mut ranges = Vec::new();
    let s = cmd(NvmOpcode::READ, 0, 1);
    let p = params(HOST_A);
    let fut = execute(&rig.mem, &rig.disk, &s, &p, &rig.scratch, &mut ranges);
    fn assert_send<T: Send>(_: &T) {}
    assert_send(&fut);
    let size = core::mem::size_of_val(&fut);
    std::println!("io::execute future: {size} bytes");
    assert!(size <= 2048, "execute's future takes {size} bytes");
}

/// Runs `f` until a run makes no allocation (up to 300 runs, 2 ms apart);
/// the fewest allocations any run made. Other tests of this binary may
/// allocate concurrently, which only adds: code that allocates never
/// reaches 0.
fn fewest_allocations(mut f: impl FnMut()) -> usize {
    let mut fewest = usize::MAX;
    for _ in 0..300 {
        let region = stats_alloc::Region::new(GLOBAL);
        f();
        fewest = fewest.min(region.change().allocations);
        if fewest == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    fewest
}

#[test]
fn read_write_flush_allocate_nothing() {
    let mut rig = Rig::ram(4 << 20, 512);
    rig.ranges.reserve(512);
    put_entries(
        &rig,
        0x90000,
        &(1..64).map(|i| 0x100000 + i * PAGE).collect::<Vec<_>>(),
    );
    let w = with_prps(cmd(NvmOpcode::WRITE, 0, 512), 0x100000, 0x90000);
    let r = with_prps(cmd(NvmOpcode::READ, 0, 512), 0x100000, 0x90000);
    let f = cmd(NvmOpcode::FLUSH, 0, 0);
    let p = params(HOST_A);
    let mut waits = TestDisk::new(4 << 20, 512);
    waits.inline = false;
    let waits = Disk::new(waits).unwrap();
    // A waker, made before counting.
    let waker = std::task::Waker::noop();
    let probe = {
        let ranges = [GpaRange::new(Gpa::new(0x100000), 4096)];
        let sg = SgList::new(&rig.mem, &ranges, false).unwrap();
        fewest_allocations(|| {
            let fut = waits.write(sg, 0, IoOptions::default());
            let mut fut = core::pin::pin!(fut);
            let mut cx = core::task::Context::from_waker(waker);
            assert!(fut.as_mut().poll(&mut cx).is_ready());
        })
    };
    assert_eq!(probe, 0, "the disk's own write allocated");
    for sqe in [&w, &r, &f] {
        let n = fewest_allocations(|| {
            let o = execute_now(&rig.mem, &rig.disk, sqe, &p, &mut rig.ranges).unwrap();
            assert!(o.status.is_success());
        });
        assert_eq!(n, 0, "execute_now allocated");
        // Through the future, on a disk that does not complete inline.
        let n = fewest_allocations(|| {
            let fut = execute(&rig.mem, &waits, sqe, &p, &rig.scratch, &mut rig.ranges);
            let mut fut = core::pin::pin!(fut);
            let mut cx = core::task::Context::from_waker(waker);
            match fut.as_mut().poll(&mut cx) {
                core::task::Poll::Ready(o) => assert!(o.status.is_success()),
                core::task::Poll::Pending => panic!("test disk completes on first poll"),
            }
        });
        assert_eq!(n, 0, "execute allocated");
    }
}

#[test]
fn io_errors_go_through_the_table() {
    // A disk failure surfaces with the table's status and the command's LBA.
    struct Failing(DiskError);
    impl DiskIo for Failing {
        fn kind(&self) -> &'static str {
            "failing"
        }
        fn sector_count(&self) -> u64 {
            64
        }
        fn sector_size(&self) -> u32 {
            512
        }
        fn is_read_only(&self) -> bool {
            false
        }
        fn is_fua_respected(&self) -> bool {
            true
        }
        fn unmap_behavior(&self) -> UnmapBehavior {
            UnmapBehavior::Zeroes
        }
        async fn read(&self, _: SgList<'_>, _: u64, _: IoOptions) -> Result<(), DiskError> {
            Err(self.0.clone())
        }
        async fn write(&self, _: SgList<'_>, _: u64, _: IoOptions) -> Result<(), DiskError> {
            Err(self.0.clone())
        }
        async fn flush(&self, _: IoOptions) -> Result<(), DiskError> {
            Err(self.0.clone())
        }
        async fn unmap(&self, _: u64, _: u64, _: IoOptions) -> Result<(), DiskError> {
            Err(self.0.clone())
        }
    }
    for e in [
        DiskError::Io(IoError::new(IoErrorKind::TimedOut, 0)),
        DiskError::Medium(MediumError::WriteFault),
        DiskError::Busy("x"),
    ] {
        let mut rig = Rig::with(Disk::new(Failing(e.clone())).unwrap());
        let want = disk_error_status(&e);
        for s in [
            with_prps(cmd(NvmOpcode::WRITE, 5, 1), 0x1000, 0),
            with_prps(cmd(NvmOpcode::READ, 5, 1), 0x1000, 0),
            cmd(NvmOpcode::WRITE_ZEROES, 5, 1),
        ] {
            let o = rig.run(&s);
            assert_eq!((o.status, o.lba), (want, 5), "{e:?}");
            assert_eq!(o.param_error_location, NO_PARAM_LOCATION);
        }
        assert_eq!(rig.run(&cmd(NvmOpcode::FLUSH, 0, 0)).status, want);
    }
    // Deallocation is advisory: an unmap the backend cannot do is no error.
    let e = DiskError::Io(IoError::new(IoErrorKind::Unsupported, 95));
    let mut rig = Rig::with(Disk::new(Failing(e)).unwrap());
    let s = dsm(&rig, &[(0, 8)], true);
    assert_eq!(rig.run(&s).status, StatusWord::SUCCESS);
}
