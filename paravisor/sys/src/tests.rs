//! Tests that need `unsafe` (to make pages inaccessible with
//! [`MappedRegion::protect`]), so they live inside the fence.
#![allow(unsafe_code)]

use crate::{GuestRam, Protection};
use parastor_core::{
    Access, Denied, DmaDomainId, Gpa, GpaRange, GuestMemory, GuestMemoryExt, MemoryErrorKind,
    PinError, PinSet,
};
use std::sync::atomic::Ordering;

const PAGE: u64 = 4096;

/// A page both switched off in the access map and `PROT_NONE` in the
/// mapping: every access through `GuestRam` is refused with `Inaccessible`
/// and the process survives, which proves none touched the page (a touch
/// would end the test process with SIGSEGV).
#[test]
fn guest_ram_never_touches_a_page_the_access_map_took_away() {
    let ram = GuestRam::memfd("never-touch", 4 * PAGE as usize)
        .unwrap()
        .with_access_map();
    ram.fill_at(Gpa::new(0), 4 * PAGE as usize, 0x5a).unwrap();
    let (_, region) = ram.regions().next().unwrap();
    let page = GpaRange::new(Gpa::new(2 * PAGE), PAGE);
    ram.set_accessible(page, false).unwrap();
    // SAFETY: the access map keeps every access of `ram` away from the
    // page until it is restored below, and nothing else uses `region`.
    unsafe { region.protect(2 * PAGE as usize, PAGE as usize, Protection::None) }.unwrap();

    let unmapped = MemoryErrorKind::Inaccessible(Denied::Unmapped);
    let mut buf = vec![0; 2 * PAGE as usize];
    for gpa in [2 * PAGE, 2 * PAGE - 1, 2 * PAGE - 10, 3 * PAGE - 8] {
        let at = Gpa::new(gpa);
        assert_eq!(ram.read_at(at, &mut buf[..16]).unwrap_err().kind, unmapped);
        assert_eq!(ram.write_at(at, &buf[..16]).unwrap_err().kind, unmapped);
        assert_eq!(ram.fill_at(at, 16, 0).unwrap_err().kind, unmapped);
        let pieces: [&[u8]; 2] = [&buf[..3], &buf[..13]];
        assert_eq!(
            ram.write_vectored_at(at, &pieces).unwrap_err().kind,
            unmapped
        );
        assert_eq!(ram.compare_at(at, &buf[..16]).unwrap_err().kind, unmapped);
    }
    assert_eq!(
        ram.read_at(Gpa::new(PAGE), &mut buf).unwrap_err().kind,
        unmapped
    );
    for gpa in [2 * PAGE, 3 * PAGE - 8] {
        let at = Gpa::new(gpa);
        assert_eq!(
            ram.load_u64(at, Ordering::Acquire).unwrap_err().kind,
            unmapped
        );
        assert_eq!(
            ram.store_u32(at, 1, Ordering::Release).unwrap_err().kind,
            unmapped
        );
        assert_eq!(
            ram.compare_exchange_u16(at, 0, 1, Ordering::SeqCst)
                .unwrap_err()
                .kind,
            unmapped
        );
    }
    assert_eq!(ram.check(page, Access::Read).unwrap_err().kind, unmapped);
    // Direct copies from memory to memory, as source and as destination.
    let other = GuestRam::memfd("never-touch-other", 4 * PAGE as usize).unwrap();
    for gpa in [2 * PAGE, 2 * PAGE - 100] {
        let at = Gpa::new(gpa);
        let to = ram.copy_from(at, &other, Gpa::new(0), 200).unwrap();
        assert_eq!(to.unwrap_err().kind, unmapped);
        let from = other.copy_from(Gpa::new(0), &ram, at, 200).unwrap();
        assert_eq!(from.unwrap_err().kind, unmapped);
        let within = ram.copy_from(Gpa::new(0), &ram, at, 200).unwrap();
        assert_eq!(within.unwrap_err().kind, unmapped);
    }
    let mut pins = PinSet::with_capacity(2);
    assert!(matches!(
        ram.pin(&[page], Access::Write, DmaDomainId::KERNEL, &mut pins),
        Err(PinError::NotDeviceVisible(_))
    ));
    // The pages around it are untouched and usable.
    ram.read_at(Gpa::new(PAGE), &mut buf[..PAGE as usize])
        .unwrap();
    ram.read_at(Gpa::new(3 * PAGE), &mut buf[PAGE as usize..])
        .unwrap();
    assert!(buf.iter().all(|&b| b == 0x5a));

    // SAFETY: restores access before the access map lets anything in.
    unsafe { region.protect(2 * PAGE as usize, PAGE as usize, Protection::ReadWrite) }.unwrap();
    ram.set_accessible(page, true).unwrap();
    assert_eq!(
        ram.load_u64(Gpa::new(2 * PAGE), Ordering::Acquire),
        Ok(0x5a5a_5a5a_5a5a_5a5a)
    );
}
