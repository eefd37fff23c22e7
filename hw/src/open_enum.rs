//! `open_enum!`: the one way this crate declares a code a peer sends.
//!
//! A closed Rust `enum` cannot hold a value its author did not list, so
//! reading one from the wire forces a decision (reject? map to a catch-all?)
//! at the lowest layer, often by accident. An *open enum* is an integer
//! newtype with associated constants instead: every value of the integer
//! is a value of the type, the known ones have names, and deciding what an
//! unknown value means is left to the code that understands the protocol.
//!
//! ```text
//! open_enum! {
//!     /// SCSI status codes.
//!     pub struct ScsiStatus(u8) {
//!         /// GOOD.
//!         GOOD = 0x00,
//!         /// CHECK CONDITION.
//!         CHECK_CONDITION = 0x02,
//!     }
//! }
//! ```
//!
//! The integer is either a byte (`(u8)`) or a multi-byte integer with its
//! wire byte order (`(le u32)`, `(be u16)`), stored as zerocopy's
//! byte-order type so the open enum is itself a wire type (alignment 1)
//! and can be a field of a layout. Every open enum:
//!
//! - is `Copy`, `Eq`, `Ord` (by numeric value), `Hash`, `Default` (zero)
//!   and a zerocopy `FromBytes` / `IntoBytes` / `Unaligned` type;
//! - has `new(value)` and `get()` (`const`), `From` conversions to and
//!   from its integer, `from_bits` / `into_bits` (so it can be a field of a
//!   `#[bitfield]`), `name()` (the constant's name, if known) and `KNOWN`
//!   (every named value, in declaration order);
//! - prints with `Debug` as its constant's name (`CHECK_CONDITION`), or as
//!   `ScsiStatus(0x42)` when the value has no name; `LowerHex` and
//!   `UpperHex` print the raw value.

/// Declares an open enum; see the [module documentation](self).
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident(u8) {
            $($(#[$cmeta:meta])* $konst:ident = $value:expr),* $(,)?
        }
    ) => {
        $crate::open_enum::open_enum!(@emit
            [$(#[$meta])*] $vis $name, u8, u8,
            [value => value], [this => this.0],
            { $($(#[$cmeta])* $konst = $value,)* }
        );
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident(le $int:ident) {
            $($(#[$cmeta:meta])* $konst:ident = $value:expr),* $(,)?
        }
    ) => {
        $crate::open_enum::open_enum!(@emit
            [$(#[$meta])*] $vis $name,
            $crate::open_enum::open_enum!(@wire LittleEndian $int), $int,
            [value => <$crate::open_enum::open_enum!(@wire LittleEndian $int)>::new(value)],
            [this => this.0.get()],
            { $($(#[$cmeta])* $konst = $value,)* }
        );
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident(be $int:ident) {
            $($(#[$cmeta:meta])* $konst:ident = $value:expr),* $(,)?
        }
    ) => {
        $crate::open_enum::open_enum!(@emit
            [$(#[$meta])*] $vis $name,
            $crate::open_enum::open_enum!(@wire BigEndian $int), $int,
            [value => <$crate::open_enum::open_enum!(@wire BigEndian $int)>::new(value)],
            [this => this.0.get()],
            { $($(#[$cmeta])* $konst = $value,)* }
        );
    };
    (@wire $order:ident u16) => { ::zerocopy::byteorder::U16<::zerocopy::byteorder::$order> };
    (@wire $order:ident u32) => { ::zerocopy::byteorder::U32<::zerocopy::byteorder::$order> };
    (@wire $order:ident u64) => { ::zerocopy::byteorder::U64<::zerocopy::byteorder::$order> };
    (@emit
        [$(#[$meta:meta])*] $vis:vis $name:ident, $repr:ty, $int:ty,
        [$v:ident => $new:expr], [$s:ident => $get:expr],
        { $($(#[$cmeta:meta])* $konst:ident = $value:expr,)* }
    ) => {
        $(#[$meta])*
        #[repr(transparent)]
        #[derive(
            Clone,
            Copy,
            PartialEq,
            Eq,
            PartialOrd,
            Ord,
            Hash,
            Default,
            ::zerocopy::FromBytes,
            ::zerocopy::IntoBytes,
            ::zerocopy::Immutable,
            ::zerocopy::KnownLayout,
            ::zerocopy::Unaligned,
        )]
        $vis struct $name($repr);

        #[allow(dead_code)]
        impl $name {
            $($(#[$cmeta])* $vis const $konst: Self = Self::new($value);)*

            /// Every named value, in declaration order.
            $vis const KNOWN: &'static [Self] = &[$(Self::$konst),*];

            /// The value `value`, named or not.
            $vis const fn new($v: $int) -> Self {
                Self($new)
            }

            /// The raw value.
            $vis const fn get(self) -> $int {
                let $s = self;
                $get
            }

            /// [`Self::new`], for `#[bitfield]` fields of this type.
            $vis const fn from_bits(value: $int) -> Self {
                Self::new(value)
            }

            /// [`Self::get`], for `#[bitfield]` fields of this type.
            $vis const fn into_bits(self) -> $int {
                self.get()
            }

            /// The constant's name if the value has one.
            $vis const fn name(self) -> Option<&'static str> {
                $(
                    if self.get() == Self::$konst.get() {
                        return Some(stringify!($konst));
                    }
                )*
                None
            }
        }

        impl ::core::convert::From<$int> for $name {
            fn from(value: $int) -> Self {
                Self::new(value)
            }
        }

        impl ::core::convert::From<$name> for $int {
            fn from(value: $name) -> Self {
                value.get()
            }
        }

        impl ::core::fmt::LowerHex for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::LowerHex::fmt(&self.get(), f)
            }
        }

        impl ::core::fmt::UpperHex for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::UpperHex::fmt(&self.get(), f)
            }
        }

        impl ::core::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                match self.name() {
                    Some(name) => f.write_str(name),
                    None => write!(f, concat!(stringify!($name), "({:#x})"), self.get()),
                }
            }
        }
    };
}

pub(crate) use open_enum;

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;

    open_enum! {
        /// A byte-sized code.
        pub(crate) struct Byte(u8) {
            /// Zero.
            ZERO = 0,
            /// Seven.
            SEVEN = 7,
        }
    }

    open_enum! {
        /// A little-endian code.
        pub(crate) struct Le(le u32) {
            /// A big value.
            BIG = 0x1234_5678,
        }
    }

    open_enum! {
        /// A big-endian code.
        pub(crate) struct Be(be u16) {
            /// One.
            ONE = 1,
        }
    }

    #[test]
    fn known_and_unknown_values() {
        assert_eq!(Byte::SEVEN.get(), 7);
        assert_eq!(Byte::new(7), Byte::SEVEN);
        assert_eq!(Byte::SEVEN.name(), Some("SEVEN"));
        assert_eq!(Byte::new(8).name(), None);
        assert_eq!(format!("{:?}", Byte::SEVEN), "SEVEN");
        assert_eq!(format!("{:?}", Byte::new(0x42)), "Byte(0x42)");
        assert_eq!(
            format!("{:#04x} {:X}", Byte::SEVEN, Byte::new(0xAB)),
            "0x07 AB"
        );
        assert_eq!(Byte::KNOWN, &[Byte::ZERO, Byte::SEVEN]);
        assert_eq!(Byte::default(), Byte::ZERO);
        assert!(Byte::ZERO < Byte::SEVEN);
        // Every value round-trips, named or not.
        for v in 0..=u8::MAX {
            assert_eq!(u8::from(Byte::from(v)), v);
            assert_eq!(Byte::from_bits(v).into_bits(), v);
        }
    }

    #[test]
    fn wire_byte_order() {
        use zerocopy::{FromBytes, IntoBytes};
        assert_eq!(Le::BIG.as_bytes(), &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(Be::ONE.as_bytes(), &[0, 1]);
        assert_eq!(Le::read_from_bytes(&[1, 0, 0, 0]).unwrap(), Le::new(1));
        assert_eq!(format!("{:?}", Le::new(1)), "Le(0x1)");
        assert_eq!(format!("{:?}", Le::BIG), "BIG");
        // Ordering is numeric, not by wire bytes.
        assert!(Le::new(0x100) > Le::new(0xFF));
        assert!(Be::new(0x100) > Be::new(0xFF));
    }
}
