//! Link settings for the gate binary.
//!
//! - The entry point is the C `main`, called by the C runtime's start files;
//!   rustc links `no_std` binaries with `-nodefaultlibs`, so libc (which
//!   provides `__libc_start_main`, `memcpy` and friends) is named explicitly.
//! - The prebuilt `alloc` of a stable toolchain is compiled with unwinding,
//!   so its unwind tables name `rust_eh_personality`, which only `std`
//!   defines. Nothing here can unwind (panics abort, and no unwinder is
//!   linked), so the symbol is defined as 0 at link time rather than with a
//!   second `#[unsafe(no_mangle)]` function. For the same reason the
//!   landing pads in that prebuilt `alloc` (reached, for example, from
//!   `Arc`'s slow drop path) may name `_Unwind_Resume`, which is defined as
//!   0 too: no landing pad can ever run without an unwinder. If `std` does
//!   sneak in, the build fails before linking, at the duplicate
//!   `panic_impl` lang item.

fn main() {
    println!("cargo::rustc-link-lib=c");
    println!("cargo::rustc-link-arg-bins=-Wl,--defsym=rust_eh_personality=0");
    println!("cargo::rustc-link-arg-bins=-Wl,--defsym=_Unwind_Resume=0");
    println!("cargo::rerun-if-changed=build.rs");
}
