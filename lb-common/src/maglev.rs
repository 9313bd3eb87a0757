//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), computed in user space; the
//! kernel only does `table[hash % M]`. Also the flow hash the kernel uses, so both sides
//! and the tests agree on it.
//!
//! Backends are identified by a stable 64-bit identity hash (address and port), not by
//! the agent-local backend id, so every node computes the same table for the same set of
//! endpoints: a connection that moves between nodes (ECMP to NodePorts) keeps its backend.

/// 64-bit FNV-1a. Stable across builds and machines (unlike std's `DefaultHasher`).
pub const fn fnv1a64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// Identity of a backend for Maglev: stable across nodes and restarts.
pub fn backend_identity(addr_be: u32, port_be: u16) -> [u8; 6] {
    let a = addr_be.to_ne_bytes();
    let p = port_be.to_ne_bytes();
    [a[0], a[1], a[2], a[3], p[0], p[1]]
}

/// Flow hash used by the kernel to pick a Maglev slot: a murmur3-style finaliser over the
/// 5-tuple. Cheap (no loops, verifier friendly) and well mixed in the low bits.
#[inline(always)]
pub fn flow_hash(saddr_be: u32, daddr_be: u32, sport_be: u16, dport_be: u16, proto: u8) -> u32 {
    let mut h = mix32(saddr_be ^ 0x9e37_79b9);
    h = mix32(h ^ daddr_be);
    h = mix32(h ^ ((u32::from(sport_be) << 16) | u32::from(dport_be)));
    mix32(h ^ u32::from(proto))
}

/// Hash of the client address alone (ClientIP affinity falls back to it for the first pick,
/// so a client maps to the same backend even before its affinity entry exists).
#[inline(always)]
pub fn addr_hash(saddr_be: u32) -> u32 {
    mix32(saddr_be ^ 0x85eb_ca6b)
}

#[inline(always)]
const fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Returns true when `n` is prime (table sizes must be prime for the permutation to cover
/// every slot).
pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(feature = "user")]
pub use table::*;

#[cfg(feature = "user")]
mod table {
    extern crate alloc;
    use alloc::vec;
    use alloc::vec::Vec;

    use super::{fnv1a64, is_prime};

    /// One backend as Maglev sees it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MaglevBackend {
        /// Stable identity (see [`super::backend_identity`]).
        pub identity: [u8; 6],
        /// What to write into the table for this backend (the agent's backend id).
        pub id: u32,
        /// Relative weight, at least 1.
        pub weight: u32,
    }

    /// Builds a Maglev table of size `m` (prime) over `backends`. Returns an empty vector when
    /// there are no backends. Deterministic: the result does not depend on the order of
    /// `backends`.
    pub fn build_table(backends: &[MaglevBackend], m: u32) -> Vec<u32> {
        assert!(is_prime(m), "Maglev table size {m} must be prime");
        if backends.is_empty() {
            return Vec::new();
        }
        let mut sorted: Vec<MaglevBackend> = backends.to_vec();
        sorted.sort_by(|a, b| a.identity.cmp(&b.identity).then(a.id.cmp(&b.id)));
        let m64 = u64::from(m);
        let perms: Vec<(u64, u64)> = sorted
            .iter()
            .map(|b| {
                let offset = fnv1a64(&b.identity, 0x5bd1_e995) % m64;
                let skip = fnv1a64(&b.identity, 0x27d4_eb2f) % (m64 - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_weight = sorted.iter().map(|b| b.weight.max(1)).max().unwrap_or(1);
        let mut next = vec![0_u64; sorted.len()];
        let mut table = vec![u32::MAX; m as usize];
        let mut filled = 0_u32;
        // Weighted Maglev: in round r, a backend of weight w takes a turn when
        // (r % max_weight) < w, so turns are proportional to weight.
        let mut round = 0_u64;
        while filled < m {
            for (i, b) in sorted.iter().enumerate() {
                if round % u64::from(max_weight) >= u64::from(b.weight.max(1)) {
                    continue;
                }
                let (offset, skip) = perms[i];
                loop {
                    let slot = ((offset + next[i] * skip) % m64) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = b.id;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break;
                }
            }
            round += 1;
        }
        table
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::maglev::backend_identity;

        fn backends(n: u32) -> Vec<MaglevBackend> {
            (1..=n)
                .map(|i| MaglevBackend {
                    identity: backend_identity(0x0a00_0000 | i, 8080),
                    id: i,
                    weight: 1,
                })
                .collect()
        }

        fn counts(table: &[u32], n: u32) -> Vec<usize> {
            (1..=n)
                .map(|id| table.iter().filter(|&&x| x == id).count())
                .collect()
        }

        #[test]
        fn equal_weights_differ_by_at_most_one_slot() {
            for n in [1, 2, 3, 7, 10, 50] {
                let t = build_table(&backends(n), 1021);
                let c = counts(&t, n);
                let (min, max) = (c.iter().min().unwrap(), c.iter().max().unwrap());
                assert!(max - min <= 1, "n={n}: slot counts {c:?}");
                assert!(t.iter().all(|&x| x >= 1 && x <= n));
            }
        }

        #[test]
        fn order_of_input_does_not_matter() {
            let mut b = backends(9);
            let t1 = build_table(&b, 251);
            b.reverse();
            assert_eq!(t1, build_table(&b, 251));
        }

        #[test]
        fn removing_a_backend_moves_few_other_slots() {
            let all = backends(10);
            let before = build_table(&all, 1021);
            let fewer: Vec<_> = all.iter().copied().filter(|b| b.id != 4).collect();
            let after = build_table(&fewer, 1021);
            let mut moved_others = 0;
            for (a, b) in before.iter().zip(&after) {
                if *a != 4 && a != b {
                    moved_others += 1;
                }
                assert_ne!(*b, 4, "removed backend still in table");
            }
            // Maglev guarantees near-minimal disruption, not zero: the paper measures a few
            // percent of slots for one removal at this size.
            assert!(
                moved_others < 1021 / 20,
                "{moved_others} unrelated slots moved"
            );
        }

        #[test]
        fn weights_are_proportional() {
            let mut b = backends(2);
            b[0].weight = 3;
            let t = build_table(&b, 1021);
            let c = counts(&t, 2);
            // 3:1 within 10%.
            assert!(
                c[0] * 10 >= c[1] * 27 && c[0] * 10 <= c[1] * 33,
                "counts {c:?}"
            );
        }

        #[test]
        fn flow_hash_spreads_ports() {
            let m = 251;
            let mut hits = vec![0_u32; m];
            for port in 0..10_000_u16 {
                let h = crate::maglev::flow_hash(
                    0x0a00_0001,
                    0x0a60_0001,
                    port.to_be(),
                    80_u16.to_be(),
                    6,
                );
                hits[(h % m as u32) as usize] += 1;
            }
            let max = *hits.iter().max().unwrap();
            assert!(max < 80, "a slot got {max} of 10000 flows");
        }
    }
}
