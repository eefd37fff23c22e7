//! LEB128 varints: seven bits a byte, least significant first, the high
//! bit set on every byte but the last. Protobuf and postcard write integers
//! (and lengths) the same way, so their codecs share these two functions.

use alloc::vec::Vec;

/// Appends `v` as a varint (1 to 10 bytes).
pub(crate) fn write(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Reads a varint of at most `max_bytes` bytes (10 for 64 bits, 5 for 32;
/// more than 10 counts as 10) at `*pos`, advancing `*pos` past the bytes
/// read. A tenth byte may only carry bit 63.
pub(crate) fn read(data: &[u8], pos: &mut usize, max_bytes: u32) -> Result<u64, &'static str> {
    let mut v: u64 = 0;
    for i in 0..max_bytes.min(10) {
        let b = *data.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        if i == 9 && b > 1 {
            return Err("varint overflows 64 bits");
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip_and_limits() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            write(&mut out, v);
            let mut pos = 0;
            assert_eq!(read(&out, &mut pos, 10), Ok(v));
            assert_eq!(pos, out.len());
        }
        let mut pos = 0;
        assert_eq!(read(&[0x80, 0x80], &mut pos, 10), Err("truncated varint"));
        let mut pos = 0;
        assert_eq!(
            read(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut pos, 5),
            Err("varint too long")
        );
        let ten = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        let mut pos = 0;
        assert_eq!(read(&ten, &mut pos, 10), Err("varint overflows 64 bits"));
        // More than 10 bytes are never read.
        let eleven = [0x80; 11];
        let mut pos = 0;
        assert_eq!(read(&eleven, &mut pos, 99), Err("varint overflows 64 bits"));
        assert_eq!(pos, 10);
    }
}
