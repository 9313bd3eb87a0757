//! Internet checksum arithmetic (RFC 1071 / RFC 1624) on values as they sit in memory.
//!
//! The ones'-complement sum does not depend on byte order as long as every 16-bit word is
//! read the same way, so fields are loaded and stored raw (network order in memory) and
//! never swapped.

/// Folds a 64-bit running sum to 16 bits (three rounds cover any carry a u64 of 16-bit
/// words can hold in our use).
#[inline(always)]
pub fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Adds the two 16-bit halves of a 32-bit field to a running sum.
#[inline(always)]
pub fn add32(sum: u64, v: u32) -> u64 {
    sum + u64::from(v & 0xffff) + u64::from(v >> 16)
}

/// RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')` for a 32-bit field changing from `from` to
/// `to`.
#[inline(always)]
pub fn replace4(check: u16, from: u32, to: u32) -> u16 {
    let s = add32(add32(u64::from(!check), !from), to);
    !fold(s)
}

/// RFC 1624 eqn. 3 for a 16-bit field.
#[inline(always)]
pub fn replace2(check: u16, from: u16, to: u16) -> u16 {
    let s = u64::from(!check) + u64::from(!from) + u64::from(to);
    !fold(s)
}
