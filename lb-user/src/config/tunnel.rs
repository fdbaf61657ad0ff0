//! `[tunnel]`: how the tunnel modes (`forwarding = "ipip"` or `"gue"`) build
//! the outer header. Every field has a default, so a file with tunnel VIPs
//! needs no section at all.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::raw;

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
