//! The Internet checksum (RFC 1071), shared by every place that writes one:
//! the XDP program's outer headers and ICMP replies, the decap program's
//! incremental update, and the daemon's health probes.

/// The checksum of a one's-complement sum of 16-bit words: the carries
/// folded back in and the result complemented. Two folds bring any `u32`
/// below 0x10000 (the first leaves at most 0x1fffe).
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[cfg(test)]
mod tests {
    use super::fold;

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
