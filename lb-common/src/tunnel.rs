//! The per-client parts of the tunnel modes' outer header: what a backend's
//! NIC can spread clients on. The XDP program builds every outer header
//! with these, and user space (the tests, the tunnel health probe) predicts
//! them with the same functions.
//!
//! Only the client's address is hashed, as for the Maglev pick: every
//! connection of one client has one outer flow, and so lands on one receive
//! queue of its backend.

use crate::{TunnelSettings, client_hash};

/// Seed of [`tunnel_hash`]. Fixed rather than the VIP's Maglev seed: every
/// load-balancer node sends a client's frames with the same outer header
/// (so a node failing over does not move the client to another receive
/// queue of its backend), and the spread over queues does not follow the
/// Maglev slots the backend was given.
pub const TUNNEL_HASH_SEED: u32 = 0x0e4c_a95e;

/// First GUE source port: the ports come from the dynamic range
/// 49152-65535 (RFC 6335), 14 bits of [`tunnel_hash`].
pub const GUE_SPORT_BASE: u16 = 49152;

/// The hash behind the outer header's per-client fields.
#[inline(always)]
pub const fn tunnel_hash(client: [u8; 4]) -> u32 {
    client_hash(client, TUNNEL_HASH_SEED)
}

/// The UDP source port of a GUE frame of `client` (49152-65535).
#[inline(always)]
pub const fn gue_source_port(client: [u8; 4]) -> u16 {
    GUE_SPORT_BASE | (tunnel_hash(client) & 0x3fff) as u16
}

impl TunnelSettings {
    /// The outer source address of an IP-in-IP frame of `client`: from the
    /// prefix when one is set (its host bits from [`tunnel_hash`]), else
    /// `src_addr`. A prefix length over 32 counts as 32.
    #[inline(always)]
    pub const fn ipip_source(&self, client: [u8; 4]) -> [u8; 4] {
        let len = self.src_prefix_len;
        if len == 0 {
            return self.src_addr;
        }
        let host_mask = if len >= 32 { 0 } else { u32::MAX >> len };
        let prefix = u32::from_be_bytes(self.src_prefix) & !host_mask;
        (prefix | (tunnel_hash(client) & host_mask)).to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(prefix: [u8; 4], len: u8) -> TunnelSettings {
        TunnelSettings {
            src_addr: [10, 0, 0, 1],
            src_prefix: prefix,
            src_prefix_len: len,
            ttl: 64,
            gue_port: 6080u16.to_be_bytes(),
            _pad: [0; 4],
        }
    }

    #[test]
    fn gue_ports_stay_in_the_dynamic_range_and_spread() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..4096u32 {
            let p = gue_source_port([198, 18, (i >> 8) as u8, i as u8]);
            assert!(p >= GUE_SPORT_BASE, "{p}");
            seen.insert(p);
        }
        // 4096 clients over 16384 ports: nearly all distinct.
        assert!(seen.len() > 3500, "{}", seen.len());
        assert_eq!(
            gue_source_port([198, 18, 0, 1]),
            gue_source_port([198, 18, 0, 1])
        );
        assert_eq!(
            u32::from(gue_source_port([198, 18, 0, 1])),
            49152 + (client_hash([198, 18, 0, 1], TUNNEL_HASH_SEED) & 0x3fff)
        );
    }

    #[test]
    fn ipip_source_takes_host_bits_from_the_hash() {
        let c = [198, 18, 0, 7];
        assert_eq!(settings([0; 4], 0).ipip_source(c), [10, 0, 0, 1]);
        let s = settings([172, 16, 0, 0], 24).ipip_source(c);
        assert_eq!(s[..3], [172, 16, 0]);
        assert_eq!(s[3], (tunnel_hash(c) & 0xff) as u8);
        // Host bits the configuration left set are ignored.
        assert_eq!(settings([172, 16, 0, 99], 24).ipip_source(c), s);
        assert_eq!(
            settings([172, 16, 5, 5], 32).ipip_source(c),
            [172, 16, 5, 5]
        );
        assert_eq!(
            settings([172, 16, 5, 5], 40).ipip_source(c),
            [172, 16, 5, 5]
        );
        let spread: std::collections::BTreeSet<_> = (0..256u32)
            .map(|i| settings([172, 16, 0, 0], 24).ipip_source([198, 18, 1, i as u8])[3])
            .collect();
        assert!(spread.len() > 128, "{}", spread.len());
    }
}
