//! The Internet checksum (RFC 1071), shared by every place that writes one:
//! the XDP program's outer headers and ICMP replies, the decap program's
//! incremental update, the daemon's health probes, and the benchmark's
//! programs that rewrite a client address.

/// The checksum of a one's-complement sum of 16-bit words: the carries
/// folded back in and the result complemented. Two folds bring any `u32`
/// below 0x10000 (the first leaves at most 0x1fffe).
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// `check` (a checksum field, as its bytes in the frame) updated for a
/// 4-byte field of what it covers changing from `from` to `to`, without
/// summing the rest again: HC' = ~(~HC + ~m + m') (RFC 1624), word by word.
#[inline(always)]
pub const fn replace4(check: [u8; 2], from: [u8; 4], to: [u8; 4]) -> [u8; 2] {
    const fn word(b: [u8; 4], i: usize) -> u32 {
        u16::from_be_bytes([b[i], b[i + 1]]) as u32
    }
    let sum = (!u16::from_be_bytes(check)) as u32
        + (!word(from, 0) & 0xffff)
        + (!word(from, 2) & 0xffff)
        + word(to, 0)
        + word(to, 2);
    fold(sum).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::{fold, replace4};

    /// The checksum of `words` summed from scratch.
    fn full(words: &[u16]) -> [u8; 2] {
        fold(words.iter().map(|&w| u32::from(w)).sum()).to_be_bytes()
    }

    #[test]
    fn replacing_four_bytes_gives_the_checksum_summed_afresh() {
        // An IPv4 header's words, its source address at words 6 and 7.
        let mut words = [
            0x4500, 0x0054, 0x1c46, 0x4000, 0x4011, 0x0000, 0xc0a8, 0x0001, 0xc0a8, 0x00c7,
        ];
        for to in [
            [10, 77, 1, 1],
            [255, 255, 255, 255],
            [0, 0, 0, 0],
            [192, 168, 0, 1],
        ] {
            let from = [
                (words[6] >> 8) as u8,
                words[6] as u8,
                (words[7] >> 8) as u8,
                words[7] as u8,
            ];
            let check = full(&words);
            words[6] = u16::from_be_bytes([to[0], to[1]]);
            words[7] = u16::from_be_bytes([to[2], to[3]]);
            assert_eq!(replace4(check, from, to), full(&words), "to {to:?}");
        }
    }

    #[test]
    fn folds_every_carry_and_complements() {
        assert_eq!(fold(0), 0xffff);
        assert_eq!(fold(0xffff), 0);
        // The largest sum after one fold; a second fold is needed.
        assert_eq!(fold(0x1_fffe), 0);
        assert_eq!(fold(u32::MAX), 0);
        // RFC 1071's example: words 0001 f203 f4f5 f6f7 sum to 0x2_ddf0,
        // whose folded sum is 0xddf2.
        assert_eq!(fold(0x0001 + 0xf203 + 0xf4f5 + 0xf6f7), !0xddf2);
    }
}
