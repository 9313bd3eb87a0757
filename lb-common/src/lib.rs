//! Types shared by the kernel programs (lb-ebpf) and user space (lb-agent).
//!
//! Every map key and value is `#[repr(C)]`, has its padding written out as fields, carries
//! no `bool`/`Option`/enum, and has a compile-time size assertion. Fields in network byte
//! order end in `_be`. The `user` feature adds `aya::Pod` impls.
#![no_std]
// Padding is written out as public fields so the layout is explicit and the types can be
// built with struct literals on both sides (STYLE.md: no hidden padding).
#![allow(clippy::pub_underscore_fields, reason = "explicit padding fields")]
// The eBPF side has no function calls to spare: its helpers must be inlined.
#![allow(
    clippy::inline_always,
    reason = "helpers shared with the eBPF programs"
)]

pub mod maglev;
pub mod maps;
pub mod reason;

pub use maps::*;
pub use reason::Reason;

/// The Internet checksum (RFC 1071) of `bytes`: the ones' complement of the ones'
/// complement sum of its 16-bit big-endian words, an odd last byte padded with zero.
/// For building and checking whole packets in user space (tests, benchmarks); the
/// programs update checksums incrementally instead (RFC 1624).
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .fold(0, u32::wrapping_add);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    #[allow(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    #[test]
    fn internet_checksum_matches_rfc_1071s_example_and_verifies_to_zero() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(super::internet_checksum(&data), !0xddf2);
        // Data followed by its checksum sums to zero; an odd length pads with zero.
        let mut with = data.to_vec();
        with.extend(super::internet_checksum(&data).to_be_bytes());
        assert_eq!(super::internet_checksum(&with), 0);
        assert_eq!(super::internet_checksum(&[0xab]), !0xab00);
    }
}
