//! MurmurHash3 (x86, 32-bit): seeded, fast, with full avalanche from its
//! finaliser. The XDP program hashes the client address with
//! [`client_hash`]; user space uses the same function to predict which Maglev
//! slot a client falls in, and [`murmur3_32`] to derive each backend's
//! permutation from its identity.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
const fn mix_k(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

#[inline(always)]
const fn mix_h(h: u32, k: u32) -> u32 {
    (h ^ mix_k(k))
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of a client's IPv4 address (its four octets as on the wire). This is
/// `murmur3_32(&octets, seed)`, unrolled for the verifier and the hot path.
#[inline(always)]
pub const fn client_hash(octets: [u8; 4], seed: u32) -> u32 {
    fmix32(mix_h(seed, u32::from_le_bytes(octets)) ^ 4)
}

/// MurmurHash3_x86_32 of `data`.
pub const fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let blocks = data.len() / 4;
    let mut i = 0;
    while i < blocks {
        let k = u32::from_le_bytes([
            data[4 * i],
            data[4 * i + 1],
            data[4 * i + 2],
            data[4 * i + 3],
        ]);
        h = mix_h(h, k);
        i += 1;
    }
    let tail = blocks * 4;
    let rest = data.len() - tail;
    if rest > 0 {
        let mut k: u32 = 0;
        if rest >= 3 {
            k ^= (data[tail + 2] as u32) << 16;
        }
        if rest >= 2 {
            k ^= (data[tail + 1] as u32) << 8;
        }
        k ^= data[tail] as u32;
        h ^= mix_k(k);
    }
    fmix32(h ^ data.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published MurmurHash3_x86_32 reference vectors.
    #[test]
    fn murmur3_reference_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"", 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_32(&[0, 0, 0, 0], 0), 0x2362_f9de);
        assert_eq!(murmur3_32(&[0x21, 0x43, 0x65, 0x87], 0), 0xf55b_516b);
        assert_eq!(
            murmur3_32(&[0x21, 0x43, 0x65, 0x87], 0x5082_edee),
            0x2362_f9de
        );
        assert_eq!(murmur3_32(&[0x21, 0x43, 0x65], 0), 0x7e4a_8634);
        assert_eq!(murmur3_32(&[0x21, 0x43], 0), 0xa0f7_b07a);
        assert_eq!(murmur3_32(&[0x21], 0), 0x7266_1cf4);
        assert_eq!(murmur3_32(b"test", 0), 0xba6b_d213);
        assert_eq!(murmur3_32(b"Hello, world!", 0), 0xc036_3e43);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn client_hash_is_murmur3_of_the_octets() {
        let mut x: u32 = 0x1234_5678;
        for seed in [0, 1, crate::DEFAULT_HASH_SEED, u32::MAX] {
            for _ in 0..10_000 {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let o = x.to_be_bytes();
                assert_eq!(client_hash(o, seed), murmur3_32(&o, seed));
            }
        }
    }

    #[test]
    fn client_hash_is_deterministic_and_seeded() {
        let a = [10, 0, 0, 1];
        // Pinned: every node must compute the same value (checked against an
        // independent MurmurHash3 implementation).
        assert_eq!(client_hash(a, 7), 497_565_148);
        assert_ne!(client_hash(a, 7), client_hash(a, 8));
        assert_ne!(client_hash(a, 7), client_hash([10, 0, 0, 2], 7));
    }

    // Flipping any one input bit flips each output bit with probability ~1/2.
    #[test]
    fn client_hash_avalanche() {
        let mut flips = [[0u32; 32]; 32];
        let mut x: u32 = 99;
        let n = 4000;
        for _ in 0..n {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let h = client_hash(x.to_be_bytes(), crate::DEFAULT_HASH_SEED);
            for (bit, row) in flips.iter_mut().enumerate() {
                let d = h ^ client_hash((x ^ (1 << bit)).to_be_bytes(), crate::DEFAULT_HASH_SEED);
                for (out, c) in row.iter_mut().enumerate() {
                    *c += (d >> out) & 1;
                }
            }
        }
        for row in flips {
            for c in row {
                let p = f64::from(c) / f64::from(n);
                assert!((0.43..0.57).contains(&p), "bit flip probability {p}");
            }
        }
    }
}
