//! The file as written: private `Raw*` types that mirror it, the cascade
//! that resolves them into the public types, and the parsers (and printers)
//! of its string-valued fields.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serializer, de};

use lb_common::{
    DEFAULT_AFFINITY_CAPACITY, DEFAULT_AFFINITY_TIMEOUT_NS, DEFAULT_HASH_SEED, DEFAULT_TABLE_SIZE,
};

use super::{
    BackendConfig, CheckKind, Config, DEFAULT_CONTROL_SOCKET, DEFAULT_METRICS_LISTEN,
    DEFAULT_PIN_PATH, Forwarding, HealthConfig, METRICS_OFF, Protocol, VipConfig, XdpModeSetting,
};
use crate::fmt::{fmt_duration, fmt_mac};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    interface: String,
    #[serde(default)]
    xdp_mode: XdpModeSetting,
    #[serde(default = "default_pin_path")]
    pin_path: PathBuf,
    #[serde(default = "default_control_socket")]
    control_socket: PathBuf,
    #[serde(
        default = "default_metrics_listen",
        deserialize_with = "de_metrics_listen"
    )]
    metrics_listen: Option<SocketAddr>,
    #[serde(default = "default_affinity_capacity")]
    affinity_capacity: u32,
    #[serde(default = "default_hash_seed")]
    hash_seed: u32,
    #[serde(default)]
    announce: Option<super::announce::RawAnnounce>,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    sync: Option<super::sync::RawSync>,
    #[serde(default)]
    tunnel: Option<super::tunnel::RawTunnel>,
    #[serde(default, rename = "vip")]
    vips: Vec<RawVip>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: String,
    #[serde(deserialize_with = "de_ipv4")]
    address: Ipv4Addr,
    port: u16,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default = "default_affinity_timeout", deserialize_with = "de_duration")]
    affinity_timeout: Duration,
    #[serde(default = "default_table_size")]
    table_size: u32,
    #[serde(default)]
    forwarding: Forwarding,
    #[serde(default)]
    health: RawHealth,
    #[serde(default, rename = "backend")]
    backends: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    #[serde(deserialize_with = "de_ipv4")]
    address: Ipv4Addr,
    port: u16,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default, deserialize_with = "de_opt_mac")]
    mac: Option<[u8; 6]>,
    #[serde(default)]
    health: RawHealth,
}

/// A health table in which only the fields the file sets are `Some`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: Option<CheckKind>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    timeout: Option<Duration>,
    rise: Option<u32>,
    fall: Option<u32>,
    port: Option<u16>,
    path: Option<String>,
    expect_status: Option<u16>,
    payload: Option<String>,
    expect: Option<String>,
    command: Option<Vec<String>>,
    tunnel: Option<bool>,
}

impl RawHealth {
    fn over(&self, base: &HealthConfig) -> HealthConfig {
        HealthConfig {
            kind: self.kind.unwrap_or(base.kind),
            interval: self.interval.unwrap_or(base.interval),
            timeout: self.timeout.unwrap_or(base.timeout),
            rise: self.rise.unwrap_or(base.rise),
            fall: self.fall.unwrap_or(base.fall),
            port: self.port.or(base.port),
            path: self.path.clone().unwrap_or_else(|| base.path.clone()),
            expect_status: self.expect_status.unwrap_or(base.expect_status),
            payload: self.payload.clone().unwrap_or_else(|| base.payload.clone()),
            expect: self.expect.clone().or_else(|| base.expect.clone()),
            command: self.command.clone().unwrap_or_else(|| base.command.clone()),
            tunnel: self.tunnel.unwrap_or(base.tunnel),
        }
    }
}

impl RawConfig {
    pub(super) fn resolve(self) -> Config {
        let health = self.health.over(&HealthConfig::default());
        let vips = self
            .vips
            .into_iter()
            .map(|v| {
                let vip_health = v.health.over(&health);
                let backends = v
                    .backends
                    .into_iter()
                    .map(|b| BackendConfig {
                        address: b.address,
                        port: b.port,
                        weight: b.weight,
                        mac: b.mac,
                        health: b.health.over(&vip_health),
                    })
                    .collect();
                VipConfig {
                    name: v.name,
                    address: v.address,
                    port: v.port,
                    protocol: v.protocol,
                    affinity_timeout: v.affinity_timeout,
                    table_size: v.table_size,
                    forwarding: v.forwarding,
                    health: vip_health,
                    backends,
                }
            })
            .collect();
        Config {
            interface: self.interface,
            xdp_mode: self.xdp_mode,
            pin_path: self.pin_path,
            control_socket: self.control_socket,
            metrics_listen: self.metrics_listen,
            affinity_capacity: self.affinity_capacity,
            hash_seed: self.hash_seed,
            announce: self.announce.map(super::announce::RawAnnounce::resolve),
            health,
            sync: self.sync.map(super::sync::RawSync::resolve),
            tunnel: self
                .tunnel
                .map(super::tunnel::RawTunnel::resolve)
                .unwrap_or_default(),
            vips,
        }
    }
}

fn default_pin_path() -> PathBuf {
    DEFAULT_PIN_PATH.into()
}
fn default_control_socket() -> PathBuf {
    DEFAULT_CONTROL_SOCKET.into()
}
fn default_metrics_listen() -> Option<SocketAddr> {
    Some(DEFAULT_METRICS_LISTEN)
}
fn default_affinity_capacity() -> u32 {
    DEFAULT_AFFINITY_CAPACITY
}
fn default_hash_seed() -> u32 {
    DEFAULT_HASH_SEED
}
fn default_affinity_timeout() -> Duration {
    Duration::from_nanos(DEFAULT_AFFINITY_TIMEOUT_NS)
}
fn default_table_size() -> u32 {
    DEFAULT_TABLE_SIZE
}
fn default_weight() -> u32 {
    1
}

// ---------------------------------------------------------------------------
// String-valued fields. toml prefixes these messages with the line and the
// offending `key = value`, so they only need to say what a valid value is.

struct StrVisitor<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> de::Visitor<'_> for StrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

fn de_str<'de, D: Deserializer<'de>, T>(
    d: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    d.deserialize_str(StrVisitor { expecting, parse })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| {
        format!(
            "invalid duration {s:?} ({e}): expected a number and a unit, like \"500ms\", \
             \"1s\" or \"5m\""
        )
    })
}

fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.parse().map_err(|_| {
        format!("invalid IPv4 address {s:?}: expected four numbers 0-255 like 10.0.0.1")
    })
}

/// Parses "aa:bb:cc:dd:ee:ff"; the error says what a MAC looks like.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let err =
        || format!("invalid MAC address {s:?}: expected six hex pairs like 02:00:00:00:00:01");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(err)?;
        if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(err());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
    }
    if parts.next().is_some() {
        return Err(err());
    }
    Ok(mac)
}

fn parse_metrics_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == METRICS_OFF {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        format!(
            "invalid metrics_listen {s:?}: expected \"{METRICS_OFF}\" or an address and \
             port like \"127.0.0.1:9321\""
        )
    })
}

const DURATION_EXPECTED: &str = "a duration string like \"500ms\" or \"5m\"";

pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_str(d, DURATION_EXPECTED, parse_duration)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

pub(super) fn de_ipv4<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Addr, D::Error> {
    de_str(d, "an IPv4 address string like \"10.0.0.1\"", parse_ipv4)
}

fn de_opt_mac<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 6]>, D::Error> {
    de_str(
        d,
        "a MAC address string like \"02:00:00:00:00:01\"",
        parse_mac,
    )
    .map(Some)
}

fn de_metrics_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    de_str(
        d,
        "\"off\" or an address string like \"127.0.0.1:9321\"",
        parse_metrics_listen,
    )
}

pub(super) fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_duration(*d))
}

pub(super) fn ser_mac<S: Serializer>(mac: &Option<[u8; 6]>, s: S) -> Result<S::Ok, S::Error> {
    match mac {
        Some(mac) => s.serialize_str(&fmt_mac(mac)),
        None => s.serialize_none(),
    }
}

pub(super) fn ser_metrics_listen<S: Serializer>(
    addr: &Option<SocketAddr>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match addr {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_str(METRICS_OFF),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{ConfigError, testutil::*};

    const EXAMPLE: &str = include_str!("../../../docs/stickylb.example.toml");

    // --- parsing and defaults -------------------------------------------

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL);
        assert_eq!(c.interface, "eth0");
        assert_eq!(c.xdp_mode, XdpModeSetting::Auto);
        assert_eq!(c.pin_path, Path::new("/sys/fs/bpf/stickylb"));
        assert_eq!(c.control_socket, Path::new("/run/stickylb/stickylb.sock"));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9321".parse().unwrap()));
        assert_eq!(c.affinity_capacity, DEFAULT_AFFINITY_CAPACITY);
        assert_eq!(c.hash_seed, DEFAULT_HASH_SEED);
        assert_eq!(c.health, HealthConfig::default());
        let vip = &c.vips[0];
        assert_eq!(vip.name, "web");
        assert_eq!(vip.address, Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(vip.port, 80);
        assert_eq!(vip.protocol, Protocol::Tcp);
        assert_eq!(vip.affinity_timeout, Duration::from_secs(300));
        assert_eq!(vip.affinity_timeout_ns(), DEFAULT_AFFINITY_TIMEOUT_NS);
        assert_eq!(vip.table_size, 65_537);
        assert_eq!(vip.forwarding, Forwarding::Dsr);
        assert_eq!(vip.health, HealthConfig::default());
        let b = backend(&c);
        assert_eq!(b.key(), (Ipv4Addr::new(10, 0, 0, 11), 80));
        assert_eq!(b.identity(), "10.0.0.11:80");
        assert_eq!(b.weight, 1);
        assert_eq!(b.mac, None);
        assert_eq!(b.health_port(), 80);
        let h = &b.health;
        assert_eq!(h.kind, CheckKind::Tcp);
        assert_eq!(h.interval, Duration::from_secs(1));
        assert_eq!(h.timeout, Duration::from_millis(500));
        assert_eq!((h.rise, h.fall), (2, 3));
        assert_eq!(h.port, None);
        assert_eq!(h.path, "/");
        assert_eq!(h.expect_status, 200);
    }

    #[test]
    fn explicit_values_are_read() {
        let c = parse(&doc(
            "xdp_mode = \"skb\"\nmetrics_listen = \"off\"\nhash_seed = 7\n\
             affinity_capacity = 4096\npin_path = \"/sys/fs/bpf/x\"",
            "protocol = \"udp\"\naffinity_timeout = \"1h 30m\"\ntable_size = 251",
            "weight = 5\nmac = \"02:AB:00:00:00:01\"",
        ));
        assert_eq!(c.xdp_mode, XdpModeSetting::Skb);
        assert_eq!(c.metrics_listen, None);
        assert_eq!((c.hash_seed, c.affinity_capacity), (7, 4096));
        assert_eq!(c.pin_path, Path::new("/sys/fs/bpf/x"));
        assert_eq!(c.vips[0].protocol, Protocol::Udp);
        assert_eq!(c.vips[0].protocol.number(), lb_common::proto::UDP);
        assert_eq!(c.vips[0].affinity_timeout, Duration::from_secs(5400));
        assert_eq!(c.vips[0].table_size, 251);
        assert_eq!(backend(&c).weight, 5);
        assert_eq!(backend(&c).mac, Some([0x02, 0xab, 0, 0, 0, 1]));
    }

    #[test]
    fn health_overrides_cascade_field_by_field() {
        let c = parse(
            r#"
interface = "eth0"

[health]
interval = "2s"
rise = 5
path = "/global"

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80

[vip.health]
kind = "http"
timeout = "1s"
path = "/vip"

[[vip.backend]]
address = "10.0.0.11"
port = 80

[vip.backend.health]
port = 8080
fall = 7
tunnel = false

[[vip.backend]]
address = "10.0.0.12"
port = 80

[[vip]]
name = "other"
address = "192.0.2.11"
port = 80

[[vip.backend]]
address = "10.0.0.13"
port = 80
"#,
        );
        let global = HealthConfig {
            interval: Duration::from_secs(2),
            rise: 5,
            path: "/global".into(),
            ..HealthConfig::default()
        };
        assert_eq!(c.health, global);
        let web = HealthConfig {
            kind: CheckKind::Http,
            timeout: Duration::from_secs(1),
            path: "/vip".into(),
            ..global.clone()
        };
        assert_eq!(c.vips[0].health, web);
        let overridden = HealthConfig {
            port: Some(8080),
            fall: 7,
            tunnel: false,
            ..web.clone()
        };
        assert_eq!(c.vips[0].backends[0].health, overridden);
        assert_eq!(c.vips[0].backends[0].health_port(), 8080);
        assert_eq!(c.vips[0].backends[1].health, web);
        // A VIP without [vip.health] inherits [health] untouched.
        assert_eq!(c.vips[1].health, global);
        assert_eq!(c.vips[1].backends[0].health, global);
    }

    #[test]
    fn example_file_validates() {
        let c = parse(EXAMPLE);
        assert_eq!(c.vips.len(), 2);
        let web = c.vip("web").unwrap();
        assert_eq!(web.health.kind, CheckKind::Http);
        assert_eq!(web.backends[2].weight, 0);
        assert_eq!(web.backends[2].health_port(), 8080);
        assert_eq!(c.vip("dns").unwrap().protocol, Protocol::Udp);
        // What the example shows commented out is the default.
        assert_eq!(c.hash_seed, DEFAULT_HASH_SEED);
    }

    #[test]
    fn serializes_back_to_an_equal_config() {
        let c = parse(EXAMPLE);
        let text = toml::to_string(&c).unwrap();
        assert_eq!(parse(&text), c, "re-parsed from:\n{text}");

        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["vip"][0]["affinity_timeout"], "5m");
        assert_eq!(json["vip"][0]["health"]["timeout"], "500ms");
        assert_eq!(json["vip"][0]["backend"][0]["mac"], "02:00:00:00:00:11");
        assert_eq!(json["metrics_listen"], "127.0.0.1:9321");

        let mut off = c;
        off.metrics_listen = None;
        let text = toml::to_string(&off).unwrap();
        assert_eq!(parse(&text).metrics_listen, None);
    }

    #[test]
    fn load_reads_a_file_and_names_it_on_error() {
        let dir = TempDir::new("load");
        let path = dir.0.join("stickylb.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        assert_eq!(Config::load(&path).unwrap(), parse(MINIMAL));

        let missing = dir.0.join("missing.toml");
        let err = Config::load(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    // --- syntax errors ----------------------------------------------------

    #[test]
    fn unknown_field_is_named() {
        let msg = syntax_error(&doc("", "", "wieght = 3"));
        assert!(msg.contains("unknown field `wieght`"), "{msg}");
        assert!(msg.contains("`weight`"), "lists the valid fields: {msg}");
        assert!(msg.contains("line 11"), "{msg}");

        let msg = syntax_error(&doc("[health]\nintervall = \"1s\"", "", ""));
        assert!(msg.contains("unknown field `intervall`"), "{msg}");
    }

    #[test]
    fn bad_mac_is_explained() {
        let msg = syntax_error(&doc("", "", "mac = \"zz:00:00:00:00:01\""));
        assert!(
            msg.contains(
                "invalid MAC address \"zz:00:00:00:00:01\": expected six hex pairs like \
                 02:00:00:00:00:01"
            ),
            "{msg}"
        );
        assert!(msg.contains("line 11") && msg.contains("mac ="), "{msg}");
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "2:0:0:0:0:1",
            "02-00-00-00-00-01",
        ] {
            let msg = syntax_error(&doc("", "", &format!("mac = \"{bad}\"")));
            assert!(msg.contains("invalid MAC address"), "{bad}: {msg}");
        }
    }

    #[test]
    fn bad_ip_is_explained() {
        let text = MINIMAL.replace("10.0.0.11", "10.0.0.256");
        let msg = syntax_error(&text);
        assert!(
            msg.contains("invalid IPv4 address \"10.0.0.256\": expected four numbers 0-255"),
            "{msg}"
        );
        assert!(
            msg.contains("line 10") && msg.contains("address ="),
            "{msg}"
        );
    }

    #[test]
    fn bad_duration_is_explained() {
        let msg = syntax_error(&doc("", "affinity_timeout = \"5 parsecs\"", ""));
        assert!(msg.contains("invalid duration \"5 parsecs\""), "{msg}");
        assert!(msg.contains("like \"500ms\", \"1s\" or \"5m\""), "{msg}");
        assert!(msg.contains("affinity_timeout ="), "{msg}");

        let msg = syntax_error(&doc("[health]\ninterval = 5", "", ""));
        assert!(msg.contains("expected a duration string"), "{msg}");
    }

    #[test]
    fn bad_metrics_listen_and_enum_values_are_explained() {
        let msg = syntax_error(&doc("metrics_listen = \"9321\"", "", ""));
        assert!(
            msg.contains("expected \"off\" or an address and port"),
            "{msg}"
        );

        let msg = syntax_error(&doc("", "protocol = \"sctp\"", ""));
        assert!(msg.contains("unknown variant `sctp`"), "{msg}");
        assert!(msg.contains("`tcp`") && msg.contains("`udp`"), "{msg}");

        let msg = syntax_error(&doc("xdp_mode = \"native\"", "", ""));
        assert!(msg.contains("unknown variant `native`"), "{msg}");
    }

    #[test]
    fn missing_required_field_is_named() {
        let msg =
            syntax_error(&MINIMAL.replace("port = 80\n\n[[vip.backend]]", "\n[[vip.backend]]"));
        assert!(msg.contains("missing field `port`"), "{msg}");
    }
}
