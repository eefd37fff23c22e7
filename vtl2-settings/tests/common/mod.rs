//! Helpers shared by the integration tests (each test binary uses some).
#![allow(dead_code)]

/// Standard padded base64, as hosts write a chunk's `settings` bytes in
/// JSON (the crate only decodes base64, so the tests bring an encoder).
pub(crate) fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Appends `v` as a protobuf / postcard varint.
pub(crate) fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A protobuf length-delimited field: number `n`, then `body`.
pub(crate) fn pb_len(n: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(&mut out, (n << 3) | 2);
    varint(&mut out, body.len() as u64);
    out.extend_from_slice(body);
    out
}
