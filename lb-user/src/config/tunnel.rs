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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use lb_common::TunnelSettings;

    use crate::config::{Forwarding, testutil::*};

    /// MINIMAL's VIP forwarding by `mode`, with a `[tunnel]` of `section`.
    fn with(mode: &str, section: &str) -> String {
        doc(
            &format!("[tunnel]\n{section}\n"),
            &format!("forwarding = \"{mode}\""),
            "",
        )
    }

    #[test]
    fn defaults_and_explicit_values() {
        let c = parse(MINIMAL);
        assert_eq!(c.tunnel, super::TunnelConfig::default());
        assert_eq!((c.tunnel.gue_port, c.tunnel.ttl), (6080, 64));
        assert_eq!((c.tunnel.source, c.tunnel.source_prefix), (None, None));
        let c = parse(&with(
            "ipip",
            "source = \"192.0.2.1\"\nsource_prefix = \"10.200.0.0/16\"\ngue_port = 7000\nttl = 1",
        ));
        assert_eq!(c.vips[0].forwarding, Forwarding::Ipip);
        assert_eq!(c.tunnel.source, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(
            c.tunnel.source_prefix,
            Some((Ipv4Addr::new(10, 200, 0, 0), 16))
        );
        assert_eq!((c.tunnel.gue_port, c.tunnel.ttl), (7000, 1));
        for (mode, want) in [
            ("dsr", Forwarding::Dsr),
            ("ipip", Forwarding::Ipip),
            ("gue", Forwarding::Gue),
        ] {
            assert_eq!(parse(&with(mode, "")).vips[0].forwarding, want);
        }
        let e = syntax_error(&with("vxlan", ""));
        assert!(e.contains("vxlan"), "{e}");
        let e = syntax_error(&with("gue", "gue-port = 1"));
        assert!(e.contains("gue-port"), "{e}");
    }

    #[test]
    fn settings_are_the_data_paths_entry() {
        let c = parse(&with(
            "ipip",
            "source_prefix = \"10.200.0.0/16\"\ngue_port = 7000\nttl = 9",
        ));
        assert_eq!(
            c.tunnel.settings(Ipv4Addr::new(192, 0, 2, 1)),
            TunnelSettings {
                src_addr: [192, 0, 2, 1],
                src_prefix: [10, 200, 0, 0],
                src_prefix_len: 16,
                ttl: 9,
                gue_port: [0x1b, 0x58],
                _pad: [0; 4],
            }
        );
        let plain = parse(MINIMAL).tunnel.settings(Ipv4Addr::UNSPECIFIED);
        assert_eq!((plain.src_prefix_len, plain.src_addr), (0, [0; 4]));
        assert_eq!(plain.gue_port, 6080u16.to_be_bytes());
    }

    #[test]
    fn zero_port_and_ttl_are_refused_saying_why() {
        assert_only_problem(
            &with("gue", "gue_port = 0"),
            "tunnel gue_port",
            "is 0: GUE frames go to this UDP port",
        );
        assert_only_problem(
            &with("gue", "ttl = 0"),
            "tunnel ttl",
            "is 0: the first router would drop",
        );
        // Every problem at once.
        let p = problems(&with("gue", "gue_port = 0\nttl = 0"));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("(default 6080)") && p[1].contains("(default 64)"),
            "{p:?}"
        );
    }

    #[test]
    fn a_source_that_cannot_be_on_the_wire_is_refused() {
        for s in ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255"] {
            assert_only_problem(
                &with("ipip", &format!("source = \"{s}\"")),
                "tunnel source",
                &format!("{s} cannot be the source of a packet on the wire"),
            );
        }
    }

    #[test]
    fn a_source_prefix_is_a_network_of_8_to_32_bits() {
        for ok in [
            "10.0.0.0/8",
            "10.200.0.0/16",
            "10.200.3.0/24",
            "10.200.3.7/32",
        ] {
            parse(&with("ipip", &format!("source_prefix = \"{ok}\"")));
        }
        for short in ["0.0.0.0/0", "10.0.0.0/7", "8.0.0.0/5"] {
            let p = problems(&with("ipip", &format!("source_prefix = \"{short}\"")));
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(
                p[0].starts_with(&format!(
                    "tunnel source_prefix: {short}: the length must be 8 to 32"
                )) && p[0].contains("routed back to this load balancer"),
                "{p:?}"
            );
        }
        assert_only_problem(
            &with("ipip", "source_prefix = \"10.200.3.1/16\""),
            "tunnel source_prefix",
            "10.200.3.1/16 has host bits set: the host bits come from the client hash; write \
             the network, 10.200.0.0/16",
        );
        let e = syntax_error(&with("ipip", "source_prefix = \"10.200.0.0/33\""));
        assert!(e.contains("not a prefix length"), "{e}");
        let e = syntax_error(&with("ipip", "source_prefix = \"10.200.0.0\""));
        assert!(e.contains("is not a prefix"), "{e}");
    }

    #[test]
    fn a_prefix_without_an_ipip_vip_is_warned_about_not_refused() {
        let warned = |text: &str| -> Vec<String> {
            parse(text)
                .warnings()
                .iter()
                .map(ToString::to_string)
                .filter(|w| w.starts_with("tunnel source_prefix"))
                .collect()
        };
        let w = warned(&with("gue", "source_prefix = \"10.200.0.0/16\""));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(
                "tunnel source_prefix: 10.200.0.0/16 is set but no VIP forwards by IP-in-IP"
            ) && w[0].contains("GUE VIPs (vip \"web\" among them)")
                && w[0].contains("UDP source port"),
            "{w:?}"
        );
        let w = warned(&with("dsr", "source_prefix = \"10.200.0.0/16\""));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].ends_with("it has no effect"), "{w:?}");
        assert_eq!(
            warned(&with("ipip", "source_prefix = \"10.200.0.0/16\"")),
            Vec::<String>::new()
        );
        assert_eq!(warned(&with("gue", "")), Vec::<String>::new());
    }

    #[test]
    fn a_mac_on_a_tunnel_vips_backend_is_refused() {
        for mode in ["ipip", "gue"] {
            let text = doc(
                "",
                &format!("forwarding = \"{mode}\""),
                "mac = \"02:00:00:00:00:0b\"",
            );
            assert_only_problem(
                &text,
                "vip \"web\" backend 10.0.0.11:80 mac",
                &format!(
                    "02:00:00:00:00:0b is set, but the VIP forwards by {mode}: frames are \
                     routed to the backend's address and the next hop's MAC comes from the \
                     kernel's FIB for every frame, so a backend MAC is never used; leave mac out"
                ),
            );
        }
        // The same rule for a backend added at run time.
        let c = parse(&with("gue", ""));
        let mut b = backend(&c).clone();
        b.mac = Some([2, 0, 0, 0, 0, 0x0b]);
        let p = crate::config::backend_problems(&b, &c.vips[0]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "backend 10.0.0.11:80 mac");
        // DSR takes one, as always.
        parse(&doc("", "", "mac = \"02:00:00:00:00:0b\""));
    }

    #[test]
    fn a_tunnel_vips_backend_is_not_told_to_be_on_the_interfaces_network() {
        let dsr = problems(&doc("", "", "").replace("10.0.0.11", "127.0.0.5"));
        assert!(dsr[0].ends_with("on the interface's network"), "{dsr:?}");
        let gue = problems(&with("gue", "").replace("10.0.0.11", "127.0.0.5"));
        assert_eq!(gue.len(), 1, "{gue:?}");
        assert!(
            gue[0].ends_with("give the backend's own address"),
            "{gue:?}"
        );
    }

    #[test]
    fn serializes_back() {
        let c = parse(&with(
            "ipip",
            "source = \"192.0.2.1\"\nsource_prefix = \"10.200.0.0/16\"\ngue_port = 7000",
        ));
        let text = toml::to_string(&c).unwrap();
        assert_eq!(parse(&text), c);
    }
}
