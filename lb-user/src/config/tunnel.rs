//! `[tunnel]`: how the tunnel modes (`forwarding = "ipip"` or `"gue"`) build
//! the outer header. Every field has a default, so a file with tunnel VIPs
//! needs no section at all.

use std::net::Ipv4Addr;

use lb_common::TunnelSettings;
use serde::{Deserialize, Serialize};

use super::{Config, Forwarding, Problems, raw, validate::vip_label};

/// The shortest `source_prefix`: its addresses are claimed as this node's
/// sources, and the ICMP errors routers send back to them must be routed
/// here. Shorter than a /8 would claim a sizeable part of the whole
/// address space, which no deployment routes to one load balancer.
pub const MIN_SOURCE_PREFIX_LEN: u8 = 8;

/// The resolved `[tunnel]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TunnelConfig {
    /// The outer source address; `None`: the interface's primary IPv4
    /// address, looked up when the daemon starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Ipv4Addr>,
    /// IP-in-IP only: pick the outer source per client from this prefix
    /// (address, length), so that backends' NICs spread clients by the
    /// outer source. `None`: every frame carries `source`.
    #[serde(serialize_with = "ser_prefix", skip_serializing_if = "Option::is_none")]
    pub source_prefix: Option<(Ipv4Addr, u8)>,
    /// The UDP port GUE frames are sent to (the backends' decap must accept it).
    pub gue_port: u16,
    /// The outer header's TTL.
    pub ttl: u8,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            source: None,
            source_prefix: None,
            gue_port: lb_common::DEFAULT_GUE_PORT,
            ttl: lb_common::DEFAULT_TUNNEL_TTL,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTunnel {
    #[serde(default, deserialize_with = "de_opt_ipv4")]
    source: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "de_opt_prefix")]
    source_prefix: Option<(Ipv4Addr, u8)>,
    #[serde(default = "default_gue_port")]
    gue_port: u16,
    #[serde(default = "default_ttl")]
    ttl: u8,
}

fn default_gue_port() -> u16 {
    lb_common::DEFAULT_GUE_PORT
}
fn default_ttl() -> u8 {
    lb_common::DEFAULT_TUNNEL_TTL
}

impl RawTunnel {
    pub(super) fn resolve(self) -> TunnelConfig {
        TunnelConfig {
            source: self.source,
            source_prefix: self.source_prefix,
            gue_port: self.gue_port,
            ttl: self.ttl,
        }
    }
}

impl TunnelConfig {
    /// The `SLB_TUNNEL` entry for these settings, `source` being the outer
    /// source in effect (`self.source`, or the interface's address the
    /// daemon found; unspecified if neither: no tunnel VIP needs it).
    pub fn settings(&self, source: Ipv4Addr) -> TunnelSettings {
        let (prefix, len) = self.source_prefix.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
        TunnelSettings {
            src_addr: source.octets(),
            src_prefix: prefix.octets(),
            src_prefix_len: len,
            ttl: self.ttl,
            gue_port: self.gue_port.to_be_bytes(),
            _pad: [0; 4],
        }
    }

    pub(super) fn validate(&self, out: &mut Problems) {
        if self.gue_port == 0 {
            out.push(
                "tunnel gue_port",
                format!(
                    "is 0: GUE frames go to this UDP port on the backends (their `stickylb \
                     decap` must accept the same one); use a port from 1 to 65535 (default {})",
                    lb_common::DEFAULT_GUE_PORT
                ),
            );
        }
        if self.ttl == 0 {
            out.push(
                "tunnel ttl",
                format!(
                    "is 0: the first router would drop every encapsulated frame (and the \
                     backend's own stack refuses a TTL of 0); use 1 to 255 (default {})",
                    lb_common::DEFAULT_TUNNEL_TTL
                ),
            );
        }
        if let Some(s) = self.source
            && (s.is_unspecified() || s.is_multicast() || s.is_broadcast() || s.is_loopback())
        {
            out.push(
                "tunnel source",
                format!(
                    "{s} cannot be the source of a packet on the wire: give this host's \
                     own address on the interface, or leave source out to use the \
                     interface's primary address"
                ),
            );
        }
        if let Some((addr, len)) = self.source_prefix {
            let prefix = format!("{addr}/{len}");
            if !(MIN_SOURCE_PREFIX_LEN..=32).contains(&len) {
                out.push(
                    "tunnel source_prefix",
                    format!(
                        "{prefix}: the length must be {MIN_SOURCE_PREFIX_LEN} to 32. Its \
                         addresses become the outer sources of IP-in-IP frames, so the \
                         backends' decap must accept the whole prefix and the ICMP errors \
                         routers send to those sources must be routed back to this load \
                         balancer: a prefix shorter than /{MIN_SOURCE_PREFIX_LEN} would claim \
                         addresses other networks own"
                    ),
                );
            } else if host_bits(addr, len) != 0 {
                let network = Ipv4Addr::from(u32::from(addr) & mask(len));
                out.push(
                    "tunnel source_prefix",
                    format!(
                        "{prefix} has host bits set: the host bits come from the client \
                         hash; write the network, {network}/{len}"
                    ),
                );
            }
        }
    }
}

fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn host_bits(addr: Ipv4Addr, len: u8) -> u32 {
    u32::from(addr) & !mask(len)
}

impl Config {
    /// Whether any VIP forwards through a tunnel (and so needs `[tunnel]`,
    /// the interface's forwarding and an outer source).
    pub fn has_tunnel_vips(&self) -> bool {
        self.vips.iter().any(|v| v.forwarding != Forwarding::Dsr)
    }

    /// A `source_prefix` only IP-in-IP uses: set without an IP-in-IP VIP it
    /// does nothing. Warned about, not refused: the file works as it says,
    /// and the section may be ready for VIPs to come.
    pub(super) fn warn_unused_source_prefix(&self, out: &mut Problems) {
        let Some((addr, len)) = self.tunnel.source_prefix else {
            return;
        };
        if self.vips.iter().any(|v| v.forwarding == Forwarding::Ipip) {
            return;
        }
        let gue = self
            .vips
            .iter()
            .enumerate()
            .find(|(_, v)| v.forwarding == Forwarding::Gue);
        out.push(
            "tunnel source_prefix",
            match gue {
                Some((i, v)) => format!(
                    "{addr}/{len} is set but no VIP forwards by IP-in-IP: only IP-in-IP takes \
                     its outer source from the prefix; GUE VIPs ({} among them) always send \
                     from the tunnel source and spread clients by the UDP source port. \
                     Remove source_prefix, or it takes effect for IP-in-IP VIPs added later",
                    vip_label(i, &v.name)
                ),
                None => format!(
                    "{addr}/{len} is set but no VIP forwards by IP-in-IP, the only mode that \
                     uses it: it has no effect"
                ),
            },
        );
    }
}

fn de_opt_ipv4<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    raw::de_ipv4(d).map(Some)
}

/// "10.0.9.0/24" → (10.0.9.0, 24).
pub fn parse_prefix(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a prefix (address/length, e.g. 10.0.9.0/24)"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{len:?} is not a prefix length (0-32)"))?;
    Ok((addr, len))
}

fn de_opt_prefix<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<(Ipv4Addr, u8)>, D::Error> {
    let s = String::deserialize(d)?;
    parse_prefix(&s).map(Some).map_err(serde::de::Error::custom)
}

fn ser_prefix<S: serde::Serializer>(p: &Option<(Ipv4Addr, u8)>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some((a, l)) => s.serialize_str(&format!("{a}/{l}")),
        None => s.serialize_none(),
    }
}
