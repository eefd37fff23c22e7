//! `wire_layout!`: the one way this crate declares a fixed wire layout.
//!
//! ```text
//! wire_layout! {
//!     /// UNMAP block descriptor.
//!     pub struct UnmapDescriptor {
//!         /// First LBA.
//!         pub lba: U64,
//!         /// Number of blocks.
//!         pub blocks: U32,
//!         /// Reserved.
//!         pub reserved: [u8; 4],
//!     }
//!     size 16
//! }
//! ```
//!
//! expands to the struct with `#[repr(C)]`, zerocopy's `FromBytes`,
//! `IntoBytes`, `Immutable`, `KnownLayout` and `Unaligned` (so it has
//! alignment 1 and no padding: its fields are byte-order types, bytes,
//! bitfields and open enums), `Clone`, `Copy`, `Debug`, `Default` (all
//! zeros), `PartialEq` and `Eq`, and a compile-time check that it is
//! `size` bytes long — so the size stated beside the spec's table cannot
//! drift from the fields. Layouts that need something else (generic CDB
//! shapes, types without `Default`) spell their derives out.

/// Declares a wire layout; see the module docs.
macro_rules! wire_layout {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($body:tt)*
        }
        size $size:expr
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(
            Clone,
            Copy,
            Debug,
            Default,
            PartialEq,
            Eq,
            ::zerocopy::FromBytes,
            ::zerocopy::IntoBytes,
            ::zerocopy::Immutable,
            ::zerocopy::KnownLayout,
            ::zerocopy::Unaligned,
        )]
        $vis struct $name {
            $($body)*
        }

        const _: () = assert!(::core::mem::size_of::<$name>() == $size);
    };
}
