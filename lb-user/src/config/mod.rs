//! The daemon's configuration file (TOML), documented field by field in
//! docs/config.md.
//!
//! This module is the schema: the resolved types the rest of the daemon
//! reads, their defaults and the errors. Beside it:
//! - `raw`: the file as written, and how health settings cascade
//!   (`[health]` → `[vip.health]` → `[vip.backend.health]`). Only the file
//!   knows which fields were set at each level, so the public types hold the
//!   resolved values and the rest of the daemon never re-applies the cascade.
//! - `validate`: every rule a file must meet, reported all at once.
//! - `environment`: what the machine must offer for the file to run on it.
//! - `restart`: the global fields that only take effect on a restart.
//! - `diff`: what a reload changes.
//!
//! `Config::parse` reports every validation problem at once; a syntax error
//! (bad value, unknown field) stops parsing at the first one, as toml does.

mod announce;
#[cfg(test)]
mod doc_keys;
mod environment;
mod raw;
mod restart;
mod sync;
#[cfg(test)]
mod testutil;
mod tunnel;
mod validate;

pub use announce::{AnnounceConfig, DEFAULT_ROUTE_PROTOCOL, DEFAULT_WITHDRAW_DELAY};
pub use environment::backend_machine_problems;
pub use raw::parse_mac;
pub use sync::{SyncConfig, load_key as load_sync_key};
pub use tunnel::{MIN_SOURCE_PREFIX_LEN, TunnelConfig, parse_prefix};
pub use validate::backend_problems;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where the maps are pinned unless `pin_path` says otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/stickylb";
/// Where the daemon listens for CLI commands unless `control_socket` says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/stickylb/stickylb.sock";
/// Where Prometheus metrics are served unless `metrics_listen` says otherwise.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9321));
/// The value of `metrics_listen` that turns the metrics endpoint off.
pub const METRICS_OFF: &str = "off";
/// Weights feed Maglev's turn-taking; beyond this, shares stop being
/// meaningful and the per-round arithmetic risks overflow.
pub const MAX_WEIGHT: u32 = 65_535;

/// The whole configuration file, with every default filled in and every
/// health override resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    /// The NIC the XDP program is attached to.
    pub interface: String,
    pub xdp_mode: XdpModeSetting,
    /// Directory (on bpffs) where the maps are pinned.
    pub pin_path: PathBuf,
    /// Unix socket the CLI talks to.
    pub control_socket: PathBuf,
    /// Prometheus endpoint; `None` when the file says `"off"`.
    #[serde(serialize_with = "raw::ser_metrics_listen")]
    pub metrics_listen: Option<SocketAddr>,
    /// Entries of the affinity LRU table, shared by all VIPs.
    pub affinity_capacity: u32,
    /// Seed of the client hash; every node serving the same VIPs must agree on it.
    pub hash_seed: u32,
    /// `[announce]`: the routes the node's BGP daemon exports; `None`:
    /// nothing is announced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceConfig>,
    /// `[health]`: the defaults every VIP and backend starts from.
    pub health: HealthConfig,
    /// `[sync]`: the affinity sync with peer nodes; `None`: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncConfig>,
    /// `[tunnel]`: the outer header of the tunnel modes (defaults when the
    /// section is absent).
    pub tunnel: TunnelConfig,
    /// Serialized as `vip`, like the file, so a printed config loads back.
    #[serde(rename = "vip")]
    pub vips: Vec<VipConfig>,
}

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Driver mode, falling back to skb mode (with a warning) when the NIC's
    /// driver has no native XDP.
    #[default]
    Auto,
    Driver,
    Skb,
}

/// One virtual service.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VipConfig {
    /// Identity of the VIP across reloads, and its label in metrics and the CLI.
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// How long a quiet client keeps its backend.
    #[serde(serialize_with = "raw::ser_duration")]
    pub affinity_timeout: Duration,
    /// Maglev table size (a prime).
    pub table_size: u32,
    pub forwarding: Forwarding,
    /// `[health]` overridden by the fields set in `[vip.health]`.
    pub health: HealthConfig,
    #[serde(rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// How frames reach the backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// L2 direct server return: only MAC addresses are rewritten.
    #[default]
    Dsr,
    /// IP-in-IP to the backend's address (any routed subnet); the backend
    /// runs `stickylb decap`.
    Ipip,
    /// GUE (outer IPv4 + UDP to `[tunnel] gue_port`) to the backend's
    /// address; the backend runs `stickylb decap`.
    Gue,
}

/// One backend of a VIP.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendConfig {
    pub address: Ipv4Addr,
    pub port: u16,
    /// Relative share of new clients; 0 drains the backend.
    pub weight: u32,
    /// `None`: resolved from the kernel's neighbour table.
    #[serde(
        serialize_with = "raw::ser_mac",
        skip_serializing_if = "Option::is_none"
    )]
    pub mac: Option<[u8; 6]>,
    /// The VIP's health overridden by the fields set in `[vip.backend.health]`.
    pub health: HealthConfig,
}

/// How a backend's health is checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthConfig {
    pub kind: CheckKind,
    #[serde(serialize_with = "raw::ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "raw::ser_duration")]
    pub timeout: Duration,
    /// Consecutive successes that bring a dead backend back.
    pub rise: u32,
    /// Consecutive failures that mark an alive backend dead.
    pub fall: u32,
    /// `None`: the backend's own port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// HTTP only.
    pub path: String,
    /// HTTP only.
    pub expect_status: u16,
    /// UDP only: the datagram sent (as UTF-8 bytes).
    pub payload: String,
    /// UDP only: what the reply must contain; `None`: any reply passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// Exec only: the program (an absolute path) and its arguments, run
    /// without a shell.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// In the tunnel modes (`forwarding = "ipip"` or `"gue"`), also probe
    /// the VIP through the tunnel (see `health::tunnel`); both must pass.
    /// Ignored for DSR VIPs.
    pub tunnel: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect.
    #[default]
    Tcp,
    /// An HTTP/1.0 GET of `path` (with a Host header), expecting `expect_status`.
    Http,
    /// A datagram (`payload`) that must be answered (by a reply holding
    /// `expect`, if set).
    Udp,
    /// A command (`command`) that must exit with status 0.
    Exec,
}

/// One thing wrong with a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Where, e.g. `vip "web" backend 10.0.0.12:80 weight`.
    pub path: String,
    /// What is wrong and what would be right.
    pub message: String,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse config: {0}")]
    Syntax(String),
    #[error("{}", InvalidList(.0))]
    Invalid(Vec<Problem>),
}

impl Config {
    /// Parses, resolves and validates a configuration file's text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Self::parse_checking(text, false)
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::parse(&read(path)?)
    }

    /// `load`, plus the problems of running the file on this machine
    /// (`check_environment`), all reported together: what `stickylb check`
    /// and `stickylb run` use.
    pub fn load_for_this_machine(path: &Path) -> Result<Config, ConfigError> {
        Self::parse_checking(&read(path)?, true)
    }

    /// `load_for_this_machine` for a reload of a daemon running on
    /// `running_interface`: `interface` only changes on a restart, so the
    /// machine's checks look at the running one (a changed name is the
    /// caller's to report as needing a restart; the file keeps it). A new
    /// name must still be an interface of this machine: the next start
    /// would refuse the file otherwise.
    pub fn load_for_reload(path: &Path, running_interface: &str) -> Result<Config, ConfigError> {
        Self::parse_checking_on(&read(path)?, true, Some(running_interface))
    }

    fn parse_checking(text: &str, environment: bool) -> Result<Config, ConfigError> {
        Self::parse_checking_on(text, environment, None)
    }

    /// `interface`: the one the machine's checks look at, if not the file's.
    fn parse_checking_on(
        text: &str,
        environment: bool,
        interface: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax(e.to_string().trim_end().to_owned()))?;
        let config = raw.resolve();
        let mut problems = config.validate();
        if environment {
            match interface {
                Some(running) if running != config.interface => {
                    problems.extend(
                        config
                            .check_environment()
                            .into_iter()
                            .filter(|p| p.path == "interface"),
                    );
                    let mut on_running = config.clone();
                    on_running.interface = running.to_owned();
                    problems.extend(on_running.check_environment());
                }
                _ => problems.extend(config.check_environment()),
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The VIP with this name.
    pub fn vip(&self, name: &str) -> Option<&VipConfig> {
        self.vips.iter().find(|v| v.name == name)
    }
}

impl VipConfig {
    /// The affinity timeout as the data path stores it.
    pub fn affinity_timeout_ns(&self) -> u64 {
        u64::try_from(self.affinity_timeout.as_nanos()).unwrap_or(u64::MAX)
    }
}

impl BackendConfig {
    /// Identity of the backend inside its VIP, across reloads.
    pub fn key(&self) -> (Ipv4Addr, u16) {
        (self.address, self.port)
    }

    /// The string that seeds the backend's Maglev permutation (`address:port`),
    /// so every node builds the same table from the same backends.
    pub fn identity(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }

    /// The port health checks connect to.
    pub fn health_port(&self) -> u16 {
        self.health.port.unwrap_or(self.port)
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            port: None,
            path: "/".to_owned(),
            expect_status: 200,
            payload: String::new(),
            expect: None,
            command: Vec::new(),
            tunnel: true,
        }
    }
}

impl Protocol {
    /// The IP protocol number, as the data path's `VipKey` holds it.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => lb_common::proto::TCP,
            Self::Udp => lb_common::proto::UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

impl fmt::Display for XdpModeSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Driver => "driver",
            Self::Skb => "skb",
        })
    }
}

impl From<Forwarding> for lb_common::ForwardingMode {
    fn from(f: Forwarding) -> Self {
        match f {
            Forwarding::Dsr => Self::Dsr,
            Forwarding::Ipip => Self::Ipip,
            Forwarding::Gue => Self::Gue,
        }
    }
}

impl From<lb_common::ForwardingMode> for Forwarding {
    fn from(f: lb_common::ForwardingMode) -> Self {
        match f {
            lb_common::ForwardingMode::Dsr => Self::Dsr,
            lb_common::ForwardingMode::Ipip => Self::Ipip,
            lb_common::ForwardingMode::Gue => Self::Gue,
        }
    }
}

impl Forwarding {
    /// IP-in-IP or GUE: backends reached through the routing table.
    pub fn is_tunnel(self) -> bool {
        self != Self::Dsr
    }
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dsr => "dsr",
            Self::Ipip => "ipip",
            Self::Gue => "gue",
        })
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Udp => "udp",
            Self::Exec => "exec",
        })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

struct InvalidList<'a>(&'a [Problem]);

impl fmt::Display for InvalidList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "invalid config: {n} problem{}",
            if n == 1 { "" } else { "s" }
        )?;
        for p in self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// Collects problems in the order they are found, which is the order of the file.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}
