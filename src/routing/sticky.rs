//! Layer 3 (routing): the sticky split's hash, nginx `split_clients`' MurmurHash2, and the
//! bound of a cumulative weight. Pure functions.

/// The sticky split's hash: MurmurHash2, 32 bits, seed 0 (the hash of nginx `split_clients`).
/// A key goes to the first deployment, in `traffic:` order, whose cumulative weight `W` (in
/// percent) satisfies `hash < W * 4294967295 / 100`; the last one with weight takes the rest.
pub(crate) fn sticky_hash(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The hash bound of a cumulative weight, as nginx `split_clients` computes it.
pub(super) fn sticky_bound(cumulative_percent: u32) -> u32 {
    (u64::from(cumulative_percent) * 0xffff_ffff / 100) as u32
}
