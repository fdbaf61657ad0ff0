//! The daemon's configuration file (TOML), documented field by field in
//! docs/config.md.
//!
//! Parsing goes through private `Raw*` types that mirror the file, because
//! health settings cascade (`[health]` → `[vip.health]` →
//! `[vip.backend.health]`) and only the file knows which fields were set at
//! each level. The public types hold the resolved values, so the rest of the
//! daemon never has to re-apply the cascade.
//!
//! `Config::parse` reports every validation problem at once; a syntax error
//! (bad value, unknown field) stops parsing at the first one, as toml does.

use std::{
    collections::HashMap,
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use thiserror::Error;

use lb_common::{
    AFFINITY_REFRESH_NS, DEFAULT_AFFINITY_CAPACITY, DEFAULT_AFFINITY_TIMEOUT_NS, DEFAULT_HASH_SEED,
    DEFAULT_TABLE_SIZE, MAX_BACKENDS, MAX_VIPS, RING_POOL_SIZE,
    maglev::{is_prime, next_prime},
};

/// Where the maps are pinned unless `pin_path` says otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/stickylb";
/// Where the daemon listens for CLI commands unless `control_socket` says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/stickylb/stickylb.sock";
/// Where Prometheus metrics are served unless `metrics_listen` says otherwise.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9321));
/// The value of `metrics_listen` that turns the metrics endpoint off.
pub const METRICS_OFF: &str = "off";

/// The kernel keeps interface names in IFNAMSIZ (16) bytes, NUL included.
const MAX_INTERFACE_LEN: usize = 15;
/// sun_path holds 108 bytes, NUL included; a longer socket path cannot be bound.
const MAX_SOCKET_PATH_LEN: usize = 107;
const MIN_TABLE_SIZE: u32 = 7;
const MIN_AFFINITY_CAPACITY: u32 = 1024;
/// Weights feed Maglev's turn-taking; beyond this, shares stop being
/// meaningful and the per-round arithmetic risks overflow.
pub const MAX_WEIGHT: u32 = 65_535;
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(10);

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
    #[serde(serialize_with = "ser_metrics_listen")]
    pub metrics_listen: Option<SocketAddr>,
    /// Entries of the affinity LRU table, shared by all VIPs.
    pub affinity_capacity: u32,
    /// Seed of the client hash; every node serving the same VIPs must agree on it.
    pub hash_seed: u32,
    /// `[health]`: the defaults every VIP and backend starts from.
    pub health: HealthConfig,
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
    #[serde(serialize_with = "ser_duration")]
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
}

/// One backend of a VIP.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendConfig {
    pub address: Ipv4Addr,
    pub port: u16,
    /// Relative share of new clients; 0 drains the backend.
    pub weight: u32,
    /// `None`: resolved from the kernel's neighbour table.
    #[serde(serialize_with = "ser_mac", skip_serializing_if = "Option::is_none")]
    pub mac: Option<[u8; 6]>,
    /// The VIP's health overridden by the fields set in `[vip.backend.health]`.
    pub health: HealthConfig,
}

/// How a backend's health is checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthConfig {
    pub kind: CheckKind,
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_duration")]
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
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect.
    #[default]
    Tcp,
    /// An HTTP/1.1 GET of `path`, expecting `expect_status`.
    Http,
}

/// One thing wrong with a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// What a reload must do to go from one configuration to another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Global fields that changed and only take effect on a restart.
    pub global_changed: Vec<String>,
    /// Names, in the new file's order.
    pub vips_added: Vec<String>,
    /// Names, in the old file's order.
    pub vips_removed: Vec<String>,
    pub vips_changed: Vec<VipChange>,
}

/// How one VIP (same name in both configurations) changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipChange {
    pub name: String,
    /// Any of `"address/port/protocol"`, `"affinity_timeout"`, `"table_size"`,
    /// `"forwarding"`.
    pub settings_changed: Vec<String>,
    pub backends_added: Vec<(Ipv4Addr, u16)>,
    pub backends_removed: Vec<(Ipv4Addr, u16)>,
    /// Same (address, port), different weight, MAC or health check.
    pub backends_changed: Vec<(Ipv4Addr, u16)>,
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

    fn parse_checking(text: &str, environment: bool) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax(e.to_string().trim_end().to_owned()))?;
        let config = raw.resolve();
        let mut problems = config.validate();
        if environment {
            problems.extend(config.check_environment());
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

    /// Every problem with this configuration; empty when it is usable.
    /// Touches nothing outside `self` (see `check_environment` for that).
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Problems::default();
        self.validate_globals(&mut out);
        self.validate_vip_set(&mut out);
        let global_health = health_problems(&self.health);
        for (path, message) in &global_health {
            out.push(*path, message.clone());
        }
        let mut seen_names: HashMap<&str, usize> = HashMap::new();
        let mut seen_keys: HashMap<(Ipv4Addr, u16, Protocol), usize> = HashMap::new();
        for (i, vip) in self.vips.iter().enumerate() {
            let label = vip_label(i, &vip.name);
            if let Some(&first) = seen_names.get(vip.name.as_str()) {
                out.push(&label, format!("duplicate name (also vip #{})", first + 1));
            } else {
                seen_names.insert(&vip.name, i);
            }
            let key = (vip.address, vip.port, vip.protocol);
            if let Some(&first) = seen_keys.get(&key) {
                out.push(
                    &label,
                    format!(
                        "{}:{}/{} is also served by {}; each (address, port, protocol) \
                         belongs to one VIP only",
                        vip.address,
                        vip.port,
                        vip.protocol,
                        vip_label(first, &self.vips[first].name)
                    ),
                );
            } else {
                seen_keys.insert(key, i);
            }
            validate_vip(vip, &label, &global_health, &mut out);
        }
        out.0
    }

    fn validate_globals(&self, out: &mut Problems) {
        let iface = &self.interface;
        if iface.is_empty() {
            out.push(
                "interface",
                "is empty: name the NIC to attach XDP to, e.g. \"eth0\"",
            );
        } else if iface.len() > MAX_INTERFACE_LEN {
            out.push(
                "interface",
                format!(
                    "{iface:?} is {} bytes long; Linux interface names are at most \
                     {MAX_INTERFACE_LEN}",
                    iface.len()
                ),
            );
        } else if !is_valid_interface_name(iface) {
            out.push(
                "interface",
                format!(
                    "{iface:?} cannot be an interface name: no '/', ':' or whitespace, \
                     and not \".\" or \"..\""
                ),
            );
        }
        if !self.pin_path.is_absolute() {
            out.push(
                "pin_path",
                format!(
                    "{:?} is relative; use an absolute path on bpffs, e.g. {DEFAULT_PIN_PATH:?}",
                    self.pin_path
                ),
            );
        }
        if !self.control_socket.is_absolute() {
            out.push(
                "control_socket",
                format!(
                    "{:?} is relative; use an absolute path, e.g. {DEFAULT_CONTROL_SOCKET:?}",
                    self.control_socket
                ),
            );
        }
        let socket_len = self.control_socket.as_os_str().len();
        if socket_len > MAX_SOCKET_PATH_LEN {
            out.push(
                "control_socket",
                format!(
                    "path is {socket_len} bytes long; a Unix socket path is at most \
                     {MAX_SOCKET_PATH_LEN}"
                ),
            );
        }
        if self.affinity_capacity < MIN_AFFINITY_CAPACITY {
            out.push(
                "affinity_capacity",
                format!(
                    "{} is too small: must be at least {MIN_AFFINITY_CAPACITY} \
                     (default {DEFAULT_AFFINITY_CAPACITY})",
                    self.affinity_capacity
                ),
            );
        }
    }

    /// Limits that apply to all VIPs together: the data path's maps are sized
    /// once, at load time.
    fn validate_vip_set(&self, out: &mut Problems) {
        if self.vips.is_empty() {
            out.push(
                "vip",
                "no VIPs: add at least one [[vip]] table with its [[vip.backend]]s",
            );
        }
        if self.vips.len() > MAX_VIPS as usize {
            out.push(
                "vip",
                format!(
                    "{} VIPs, more than the {MAX_VIPS} the data path holds",
                    self.vips.len()
                ),
            );
        }
        let backends: usize = self.vips.iter().map(|v| v.backends.len()).sum();
        if backends > MAX_BACKENDS as usize {
            out.push(
                "vip",
                format!(
                    "{backends} backends over all VIPs, more than the {MAX_BACKENDS} the \
                     data path holds"
                ),
            );
        }
        let tables: u64 = self.vips.iter().map(|v| u64::from(v.table_size)).sum();
        let largest = self.vips.iter().map(|v| v.table_size).max().unwrap_or(0);
        let needed = tables + u64::from(largest);
        if needed > u64::from(RING_POOL_SIZE) {
            out.push(
                "vip",
                format!(
                    "the Maglev tables need {needed} ring slots ({tables} for the VIPs' \
                     tables plus {largest} to build a replacement for the largest beside \
                     it), more than the pool's {RING_POOL_SIZE}; use smaller table_size \
                     values or fewer VIPs"
                ),
            );
        }
    }

    /// Checks against the machine this runs on: what `validate` cannot know.
    pub fn check_environment(&self) -> Vec<Problem> {
        let mut out = Problems::default();
        // An invalid name is already reported by validate(), and must not be
        // joined to a path (it may contain '/').
        if is_valid_interface_name(&self.interface)
            && self.interface.len() <= MAX_INTERFACE_LEN
            && !interface_exists(&self.interface)
        {
            out.push(
                "interface",
                format!(
                    "no network interface named {:?} on this machine (`ip link` lists them)",
                    self.interface
                ),
            );
        }
        if let Ok(meta) = std::fs::symlink_metadata(&self.control_socket)
            && !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type())
        {
            out.push(
                "control_socket",
                format!(
                    "{} exists and is not a socket ({}); the daemon replaces only a stale \
                     socket, so choose another path",
                    self.control_socket.display(),
                    if meta.is_dir() {
                        "a directory"
                    } else {
                        "a file"
                    }
                ),
            );
        }
        if let Some(parent) = self.control_socket.parent().filter(|p| p.is_absolute()) {
            // The daemon creates missing directories, so the question is
            // whether the nearest existing ancestor lets it.
            let existing = parent.ancestors().find(|a| a.exists());
            match existing {
                Some(dir) if !dir.is_dir() => out.push(
                    "control_socket",
                    format!("{} is not a directory", dir.display()),
                ),
                Some(dir) if !is_writable_dir(dir) => out.push(
                    "control_socket",
                    if dir == parent {
                        format!(
                            "cannot create the socket in {}: no write access",
                            dir.display()
                        )
                    } else {
                        format!(
                            "cannot create {}: no write access to {}",
                            parent.display(),
                            dir.display()
                        )
                    },
                ),
                _ => {}
            }
        }
        out.0
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
        }
    }
}

impl fmt::Display for Forwarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dsr => "dsr",
        })
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
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

/// Compares two configurations. Pass the running one as `old` — including
/// changes made live with the CLI — so that a reload brings the data path
/// back to exactly what the file says.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    let globals = [
        ("interface", old.interface != new.interface),
        ("xdp_mode", old.xdp_mode != new.xdp_mode),
        ("pin_path", old.pin_path != new.pin_path),
        ("control_socket", old.control_socket != new.control_socket),
        ("metrics_listen", old.metrics_listen != new.metrics_listen),
        (
            "affinity_capacity",
            old.affinity_capacity != new.affinity_capacity,
        ),
        ("hash_seed", old.hash_seed != new.hash_seed),
    ];
    d.global_changed = globals
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| (*name).to_owned())
        .collect();
    for nv in &new.vips {
        match old.vip(&nv.name) {
            None => d.vips_added.push(nv.name.clone()),
            Some(ov) => {
                let change = diff_vip(ov, nv);
                if !change.is_empty() {
                    d.vips_changed.push(change);
                }
            }
        }
    }
    d.vips_removed = old
        .vips
        .iter()
        .filter(|ov| new.vip(&ov.name).is_none())
        .map(|ov| ov.name.clone())
        .collect();
    d
}

fn diff_vip(old: &VipConfig, new: &VipConfig) -> VipChange {
    let mut c = VipChange {
        name: new.name.clone(),
        ..VipChange::default()
    };
    let settings = [
        (
            "address/port/protocol",
            (old.address, old.port, old.protocol) != (new.address, new.port, new.protocol),
        ),
        (
            "affinity_timeout",
            old.affinity_timeout != new.affinity_timeout,
        ),
        ("table_size", old.table_size != new.table_size),
        ("forwarding", old.forwarding != new.forwarding),
    ];
    c.settings_changed = settings
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| (*name).to_owned())
        .collect();
    // The VIP's own health is only the default its backends inherit; a
    // change that matters shows up in the backends' resolved health.
    let find = |list: &'_ [BackendConfig], key| list.iter().find(|b| b.key() == key).cloned();
    for nb in &new.backends {
        match find(&old.backends, nb.key()) {
            None => c.backends_added.push(nb.key()),
            Some(ob) if ob != *nb => c.backends_changed.push(nb.key()),
            Some(_) => {}
        }
    }
    c.backends_removed = old
        .backends
        .iter()
        .filter(|ob| find(&new.backends, ob.key()).is_none())
        .map(BackendConfig::key)
        .collect();
    c
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        self.global_changed.is_empty()
            && self.vips_added.is_empty()
            && self.vips_removed.is_empty()
            && self.vips_changed.is_empty()
    }

    /// Whether some changes are left for a restart.
    pub fn needs_restart(&self) -> bool {
        !self.global_changed.is_empty()
    }
}

impl VipChange {
    pub fn is_empty(&self) -> bool {
        self.settings_changed.is_empty()
            && self.backends_added.is_empty()
            && self.backends_removed.is_empty()
            && self.backends_changed.is_empty()
    }
}

/// One line for the reload log.
impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no changes");
        }
        let mut parts = Vec::new();
        if !self.vips_added.is_empty() {
            parts.push(format!("VIPs added: {}", self.vips_added.join(", ")));
        }
        if !self.vips_removed.is_empty() {
            parts.push(format!("VIPs removed: {}", self.vips_removed.join(", ")));
        }
        for c in &self.vips_changed {
            let mut what = c.settings_changed.clone();
            for (sign, keys) in [
                ('+', &c.backends_added),
                ('-', &c.backends_removed),
                ('~', &c.backends_changed),
            ] {
                what.extend(keys.iter().map(|(a, p)| format!("{sign}{a}:{p}")));
            }
            parts.push(format!("VIP {} changed: {}", c.name, what.join(" ")));
        }
        if !self.global_changed.is_empty() {
            parts.push(format!(
                "needs a restart to apply: {}",
                self.global_changed.join(", ")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

// ---------------------------------------------------------------------------
// Validation helpers

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

/// Empty names cannot be quoted usefully, so they are named by position
/// (1-based, as a person counts them in the file).
fn vip_label(index: usize, name: &str) -> String {
    if name.is_empty() {
        format!("vip #{}", index + 1)
    } else {
        format!("vip {name:?}")
    }
}

fn is_valid_vip_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The kernel's own rule (dev_valid_name), so a name we accept is one it could have.
fn is_valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

fn is_unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || a.is_broadcast())
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

fn validate_vip(
    vip: &VipConfig,
    label: &str,
    global_health: &[(&'static str, String)],
    out: &mut Problems,
) {
    if vip.name.is_empty() {
        out.push(
            format!("{label} name"),
            "is empty: give every VIP a name of letters, digits, '_', '.' and '-'",
        );
    } else if !is_valid_vip_name(&vip.name) {
        out.push(
            format!("{label} name"),
            format!(
                "{:?} has characters other than letters, digits, '_', '.' and '-'",
                vip.name
            ),
        );
    }
    if !is_unicast(vip.address) {
        out.push(
            format!("{label} address"),
            format!(
                "{} is not a unicast address; a VIP is an address clients connect to",
                vip.address
            ),
        );
    }
    if vip.port == 0 {
        out.push(format!("{label} port"), "is 0: use a port from 1 to 65535");
    }
    if vip.table_size < MIN_TABLE_SIZE {
        out.push(
            format!("{label} table_size"),
            format!(
                "{} is too small: must be a prime of at least {MIN_TABLE_SIZE} \
                 (default {DEFAULT_TABLE_SIZE})",
                vip.table_size
            ),
        );
    } else if !is_prime(vip.table_size) {
        out.push(
            format!("{label} table_size"),
            format!(
                "{} is not prime; Maglev needs a prime table size (next prime: {})",
                vip.table_size,
                next_prime(vip.table_size)
            ),
        );
    }
    if vip.backends.len() > vip.table_size as usize {
        out.push(
            format!("{label} table_size"),
            format!(
                "{} slots for {} backends: some backends would get none; use a prime \
                 of at least 100 × the number of backends for even shares",
                vip.table_size,
                vip.backends.len()
            ),
        );
    }
    let min_timeout = Duration::from_nanos(2 * AFFINITY_REFRESH_NS);
    if vip.affinity_timeout < min_timeout {
        out.push(
            format!("{label} affinity_timeout"),
            format!(
                "{} is too short: must be at least {}, because the data path refreshes \
                 an entry's last-seen time only once every {} and a busy client would \
                 otherwise lose its backend",
                fmt_duration(vip.affinity_timeout),
                fmt_duration(min_timeout),
                fmt_duration(Duration::from_nanos(AFFINITY_REFRESH_NS)),
            ),
        );
    } else if vip.affinity_timeout.as_nanos() > u128::from(u64::MAX) {
        out.push(
            format!("{label} affinity_timeout"),
            format!(
                "{} is too long: the data path counts it in 64-bit nanoseconds \
                 (at most about 584 years)",
                fmt_duration(vip.affinity_timeout)
            ),
        );
    }
    if vip.backends.is_empty() {
        out.push(label, "no backends: add at least one [[vip.backend]] table");
    }

    // A problem the VIP merely inherited was already reported for [health].
    let vip_health: Vec<_> = health_problems(&vip.health);
    for (field, message) in &vip_health {
        if !global_health
            .iter()
            .any(|(f, m)| f == field && m == message)
        {
            out.push(format!("{label} {field}"), message.clone());
        }
    }

    let mut seen: HashMap<(Ipv4Addr, u16), usize> = HashMap::new();
    for (i, b) in vip.backends.iter().enumerate() {
        let blabel = format!("{label} backend {}:{}", b.address, b.port);
        if let Some(&first) = seen.get(&b.key()) {
            out.push(
                &blabel,
                format!("duplicate backend (also backend #{})", first + 1),
            );
        } else {
            seen.insert(b.key(), i);
        }
        validate_backend(b, vip, &blabel, &vip_health, out);
    }
}

/// What `stickylb check` would report about `b` as a backend of `vip`: the
/// same rules for a backend added at run time as for one in the file.
pub fn backend_problems(b: &BackendConfig, vip: &VipConfig) -> Vec<Problem> {
    let mut out = Problems::default();
    let label = format!("backend {}:{}", b.address, b.port);
    validate_backend(b, vip, &label, &health_problems(&vip.health), &mut out);
    out.0
}

fn validate_backend(
    b: &BackendConfig,
    vip: &VipConfig,
    label: &str,
    vip_health: &[(&'static str, String)],
    out: &mut Problems,
) {
    if b.address == vip.address {
        out.push(
            format!("{label} address"),
            "is the VIP's own address; a backend must be reached at its own address \
             (with DSR it holds the VIP on loopback)",
        );
    } else if !is_unicast(b.address) {
        out.push(
            format!("{label} address"),
            format!("{} is not a unicast address", b.address),
        );
    }
    if b.port == 0 {
        out.push(format!("{label} port"), "is 0: use a port from 1 to 65535");
    }
    if b.weight > MAX_WEIGHT {
        out.push(
            format!("{label} weight"),
            format!(
                "{} is too large: must be 0 to {MAX_WEIGHT} (0 drains the backend)",
                b.weight
            ),
        );
    }
    if let Some(mac) = &b.mac {
        if mac[0] & 1 != 0 {
            out.push(
                format!("{label} mac"),
                format!(
                    "{} is a multicast/broadcast address; give the backend's unicast MAC, \
                     or leave mac out to resolve it from the neighbour table",
                    fmt_mac(mac)
                ),
            );
        } else if *mac == [0; 6] {
            out.push(
                format!("{label} mac"),
                "00:00:00:00:00:00 is not a MAC address; give the backend's MAC, or leave \
                 mac out to resolve it from the neighbour table",
            );
        }
    }
    for (field, message) in health_problems(&b.health) {
        if !vip_health.iter().any(|(f, m)| *f == field && *m == message) {
            out.push(format!("{label} {field}"), message);
        }
    }
}

/// Messages carry the offending values, so that the same inherited problem
/// compares equal at every level and is reported once, where it was set.
fn health_problems(h: &HealthConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if h.interval < MIN_HEALTH_INTERVAL {
        out.push((
            "health.interval",
            format!(
                "{} is too short: must be at least {}",
                fmt_duration(h.interval),
                fmt_duration(MIN_HEALTH_INTERVAL)
            ),
        ));
    }
    if h.timeout.is_zero() {
        out.push((
            "health.timeout",
            "is 0: must be more than 0 and at most the interval".to_owned(),
        ));
    } else if h.timeout > h.interval {
        out.push((
            "health.timeout",
            format!(
                "{} is longer than the interval {}: must be at most the interval, so \
                 checks do not overlap",
                fmt_duration(h.timeout),
                fmt_duration(h.interval)
            ),
        ));
    }
    if h.rise == 0 {
        out.push((
            "health.rise",
            "is 0: must be at least 1 (successes before a backend counts as alive)".to_owned(),
        ));
    }
    if h.fall == 0 {
        out.push((
            "health.fall",
            "is 0: must be at least 1 (failures before a backend counts as dead)".to_owned(),
        ));
    }
    if h.port == Some(0) {
        out.push((
            "health.port",
            "is 0: use a port from 1 to 65535, or leave it out to check the backend's port"
                .to_owned(),
        ));
    }
    // Checked whatever the kind: a level that checks by TCP still passes its
    // path down to VIPs or backends that switch to HTTP, and the problem
    // belongs where the value was written.
    if !h.path.starts_with('/') {
        out.push((
            "health.path",
            format!("{:?} must start with '/', e.g. \"/healthz\"", h.path),
        ));
    } else if !h.path.bytes().all(|b| b.is_ascii_graphic()) {
        // It is sent as written in the request line: a space or a line
        // break would break the request (or add headers to it).
        out.push((
            "health.path",
            format!(
                "{:?} has spaces, control or non-ASCII characters: percent-encode them \
                 (e.g. %20 for a space)",
                h.path
            ),
        ));
    }
    if !(100..=599).contains(&h.expect_status) {
        out.push((
            "health.expect_status",
            format!(
                "{} is not an HTTP status: must be 100 to 599",
                h.expect_status
            ),
        ));
    }
    out
}

// ---------------------------------------------------------------------------
// The file as written

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
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
    health: RawHealth,
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
        }
    }
}

impl RawConfig {
    fn resolve(self) -> Config {
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
            health,
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

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    de_str(d, DURATION_EXPECTED, parse_duration)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_ipv4<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Addr, D::Error> {
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

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_duration(*d))
}

fn ser_mac<S: Serializer>(mac: &Option<[u8; 6]>, s: S) -> Result<S::Ok, S::Error> {
    match mac {
        Some(mac) => s.serialize_str(&fmt_mac(mac)),
        None => s.serialize_none(),
    }
}

fn ser_metrics_listen<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match addr {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_str(METRICS_OFF),
    }
}

fn is_writable_dir(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // access(2) rather than reading mode bits: it accounts for root, ACLs
    // and read-only mounts the way creating the socket will.
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Whether the current network namespace has an interface of that name.
/// Asks the kernel rather than /sys/class/net, which shows the namespace
/// sysfs was mounted in (not ours when the daemon was moved into a network
/// namespace with `nsenter --net`).
fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../docs/stickylb.example.toml");

    const MINIMAL: &str = r#"
interface = "eth0"

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80

[[vip.backend]]
address = "10.0.0.11"
port = 80
"#;

    /// A valid one-VIP, one-backend file with extra lines at the end of the
    /// global part, the VIP table and the backend table.
    fn doc(global: &str, vip: &str, backend: &str) -> String {
        format!(
            "interface = \"eth0\"\n{global}\n\
             [[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\n{vip}\n\
             [[vip.backend]]\naddress = \"10.0.0.11\"\nport = 80\n{backend}\n"
        )
    }

    fn parse(text: &str) -> Config {
        match Config::parse(text) {
            Ok(c) => c,
            Err(e) => panic!("expected a valid config, got: {e}"),
        }
    }

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text) {
            Err(ConfigError::Invalid(p)) => p.iter().map(ToString::to_string).collect(),
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    fn syntax_error(text: &str) -> String {
        match Config::parse(text) {
            Err(ConfigError::Syntax(msg)) => msg,
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    /// Asserts that the only problem is one at `path` whose message contains `needle`.
    #[track_caller]
    fn assert_only_problem(text: &str, path: &str, needle: &str) {
        let p = problems(text);
        assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
        assert!(
            p[0].starts_with(&format!("{path}: ")) && p[0].contains(needle),
            "expected `{path}: ...{needle}...`, got {:?}",
            p[0]
        );
    }

    #[track_caller]
    fn assert_validate_has(config: &Config, path: &str, needle: &str) {
        let p: Vec<String> = config.validate().iter().map(ToString::to_string).collect();
        assert!(
            p.iter()
                .any(|s| s.starts_with(&format!("{path}: ")) && s.contains(needle)),
            "expected `{path}: ...{needle}...` among {p:#?}"
        );
    }

    fn backend(config: &Config) -> &BackendConfig {
        &config.vips[0].backends[0]
    }

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

    // --- validation: one test per rule ------------------------------------

    #[test]
    fn interface_must_be_set() {
        let text = MINIMAL.replace("\"eth0\"", "\"\"");
        assert_only_problem(&text, "interface", "is empty");
    }

    #[test]
    fn interface_at_most_15_bytes() {
        let text = MINIMAL.replace("\"eth0\"", "\"a-very-long-nic0\"");
        assert_only_problem(
            &text,
            "interface",
            "is 16 bytes long; Linux interface names are at most 15",
        );
    }

    #[test]
    fn interface_must_be_a_possible_name() {
        let text = MINIMAL.replace("\"eth0\"", "\"../eth0\"");
        assert_only_problem(&text, "interface", "cannot be an interface name");
    }

    #[test]
    fn at_least_one_vip() {
        assert_only_problem(
            "interface = \"eth0\"",
            "vip",
            "no VIPs: add at least one [[vip]]",
        );
    }

    #[test]
    fn vip_name_well_formed() {
        let text = MINIMAL.replace("\"web\"", "\"my web\"");
        assert_only_problem(
            &text,
            "vip \"my web\" name",
            "has characters other than letters, digits, '_', '.' and '-'",
        );
        let text = MINIMAL.replace("\"web\"", "\"\"");
        assert_only_problem(&text, "vip #1 name", "is empty");
    }

    #[test]
    fn vip_names_unique() {
        let second = "\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.11\"\nport = 80\n\
                      [[vip.backend]]\naddress = \"10.0.0.11\"\nport = 80\n";
        assert_only_problem(
            &format!("{MINIMAL}{second}"),
            "vip \"web\"",
            "duplicate name (also vip #1)",
        );
    }

    #[test]
    fn vip_address_port_protocol_unique() {
        let second = "\n[[vip]]\nname = \"web2\"\naddress = \"192.0.2.10\"\nport = 80\n\
                      [[vip.backend]]\naddress = \"10.0.0.11\"\nport = 80\n";
        assert_only_problem(
            &format!("{MINIMAL}{second}"),
            "vip \"web2\"",
            "192.0.2.10:80/tcp is also served by vip \"web\"",
        );
        // Same address and port over another protocol is another service.
        let udp = second.replace("port = 80\n[[", "port = 80\nprotocol = \"udp\"\n[[");
        parse(&format!("{MINIMAL}{udp}"));
    }

    #[test]
    fn vip_address_unicast() {
        let text = MINIMAL.replace("192.0.2.10", "224.0.0.1");
        assert_only_problem(
            &text,
            "vip \"web\" address",
            "224.0.0.1 is not a unicast address",
        );
    }

    #[test]
    fn at_most_max_vips() {
        let mut c = parse(MINIMAL);
        let template = c.vips[0].clone();
        c.vips = (0..=MAX_VIPS)
            .map(|i| VipConfig {
                name: format!("v{i}"),
                port: 1000 + i as u16,
                table_size: 251,
                ..template.clone()
            })
            .collect();
        assert_validate_has(&c, "vip", "65 VIPs, more than the 64 the data path holds");
        c.vips.pop();
        assert_eq!(c.validate(), vec![]);
    }

    #[test]
    fn table_size_prime() {
        assert_only_problem(
            &doc("", "table_size = 65536", ""),
            "vip \"web\" table_size",
            "65536 is not prime; Maglev needs a prime table size (next prime: 65537)",
        );
    }

    #[test]
    fn table_size_at_least_7() {
        assert_only_problem(
            &doc("", "table_size = 5", ""),
            "vip \"web\" table_size",
            "5 is too small: must be a prime of at least 7",
        );
    }

    #[test]
    fn table_size_not_below_backend_count() {
        let extra: String = (12..=20)
            .map(|i| format!("[[vip.backend]]\naddress = \"10.0.0.{i}\"\nport = 80\n"))
            .collect();
        assert_only_problem(
            &format!("{}{extra}", doc("", "table_size = 7", "")),
            "vip \"web\" table_size",
            "7 slots for 10 backends: some backends would get none",
        );
    }

    #[test]
    fn tables_fit_in_the_ring_pool_with_room_for_a_rebuild() {
        let mut c = parse(MINIMAL);
        let template = c.vips[0].clone();
        // 16 tables of 2^17 - 1 fill the pool exactly, leaving no room to
        // build a replacement beside the largest.
        let big = 131_071;
        assert!(is_prime(big));
        c.vips = (0..16)
            .map(|i| VipConfig {
                name: format!("v{i}"),
                port: 1000 + i,
                table_size: big,
                ..template.clone()
            })
            .collect();
        assert_validate_has(
            &c,
            "vip",
            "the Maglev tables need 2228207 ring slots (2097136 for the VIPs' tables plus \
             131071 to build a replacement for the largest beside it), more than the \
             pool's 2097152",
        );
        c.vips.truncate(15);
        assert_eq!(c.validate(), vec![]);
    }

    #[test]
    fn affinity_timeout_at_least_two_refresh_periods() {
        assert_only_problem(
            &doc("", "affinity_timeout = \"1500ms\"", ""),
            "vip \"web\" affinity_timeout",
            "1s 500ms is too short: must be at least 2s, because the data path refreshes \
             an entry's last-seen time only once every 1s",
        );
        parse(&doc("", "affinity_timeout = \"2s\"", ""));
    }

    #[test]
    fn affinity_timeout_fits_in_nanoseconds() {
        assert_only_problem(
            &doc("", "affinity_timeout = \"600years\"", ""),
            "vip \"web\" affinity_timeout",
            "is too long",
        );
    }

    #[test]
    fn every_vip_has_a_backend() {
        let text =
            "interface = \"eth0\"\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\n";
        assert_only_problem(
            text,
            "vip \"web\"",
            "no backends: add at least one [[vip.backend]]",
        );
    }

    #[test]
    fn backends_unique_within_a_vip() {
        let text = format!("{MINIMAL}[[vip.backend]]\naddress = \"10.0.0.11\"\nport = 80\n");
        let p = problems(&text);
        assert_eq!(
            p,
            vec!["vip \"web\" backend 10.0.0.11:80: duplicate backend (also backend #1)"]
        );
        // Another port on the same host is another backend.
        parse(&format!(
            "{MINIMAL}[[vip.backend]]\naddress = \"10.0.0.11\"\nport = 81\n"
        ));
    }

    #[test]
    fn backend_is_not_the_vip() {
        let text = MINIMAL.replace("10.0.0.11", "192.0.2.10");
        assert_only_problem(
            &text,
            "vip \"web\" backend 192.0.2.10:80 address",
            "is the VIP's own address",
        );
    }

    #[test]
    fn backend_address_unicast() {
        let text = MINIMAL.replace("10.0.0.11", "255.255.255.255");
        assert_only_problem(
            &text,
            "vip \"web\" backend 255.255.255.255:80 address",
            "is not a unicast address",
        );
    }

    #[test]
    fn at_most_max_backends_in_total() {
        let mut c = parse(MINIMAL);
        let template = c.vips[0].clone();
        let per_vip = 1025;
        c.vips = (0..4u16)
            .map(|v| VipConfig {
                name: format!("v{v}"),
                port: 1000 + v,
                backends: (0..per_vip)
                    .map(|i| BackendConfig {
                        port: 2000 + i,
                        ..template.backends[0].clone()
                    })
                    .collect(),
                ..template.clone()
            })
            .collect();
        assert_validate_has(&c, "vip", "4100 backends over all VIPs, more than the 4096");
    }

    #[test]
    fn weight_at_most_65535() {
        assert_only_problem(
            &doc("", "", "weight = 65536"),
            "vip \"web\" backend 10.0.0.11:80 weight",
            "65536 is too large: must be 0 to 65535 (0 drains the backend)",
        );
        assert_eq!(backend(&parse(&doc("", "", "weight = 0"))).weight, 0);
    }

    #[test]
    fn mac_unicast() {
        assert_only_problem(
            &doc("", "", "mac = \"ff:ff:ff:ff:ff:ff\""),
            "vip \"web\" backend 10.0.0.11:80 mac",
            "ff:ff:ff:ff:ff:ff is a multicast/broadcast address",
        );
        assert_only_problem(
            &doc("", "", "mac = \"00:00:00:00:00:00\""),
            "vip \"web\" backend 10.0.0.11:80 mac",
            "is not a MAC address",
        );
    }

    #[test]
    fn ports_not_zero() {
        let text = MINIMAL.replace(
            "port = 80\n\n[[vip.backend]]",
            "port = 0\n\n[[vip.backend]]",
        );
        assert_only_problem(
            &text,
            "vip \"web\" port",
            "is 0: use a port from 1 to 65535",
        );
        let text = format!("{}0\n", MINIMAL.trim_end().trim_end_matches("80"));
        assert_only_problem(
            &text,
            "vip \"web\" backend 10.0.0.11:0 port",
            "is 0: use a port from 1 to 65535",
        );
        assert_only_problem(&doc("[health]\nport = 0", "", ""), "health.port", "is 0");
    }

    #[test]
    fn health_interval_at_least_10ms() {
        assert_only_problem(
            &doc("[health]\ninterval = \"5ms\"\ntimeout = \"1ms\"", "", ""),
            "health.interval",
            "5ms is too short: must be at least 10ms",
        );
    }

    #[test]
    fn health_timeout_positive() {
        assert_only_problem(
            &doc("[health]\ntimeout = \"0s\"", "", ""),
            "health.timeout",
            "is 0: must be more than 0 and at most the interval",
        );
    }

    #[test]
    fn health_timeout_within_interval() {
        assert_only_problem(
            &doc("", "[vip.health]\ntimeout = \"2s\"", ""),
            "vip \"web\" health.timeout",
            "2s is longer than the interval 1s",
        );
    }

    #[test]
    fn health_rise_and_fall_at_least_1() {
        assert_only_problem(
            &doc("", "", "[vip.backend.health]\nrise = 0"),
            "vip \"web\" backend 10.0.0.11:80 health.rise",
            "is 0: must be at least 1",
        );
        assert_only_problem(
            &doc("", "", "[vip.backend.health]\nfall = 0"),
            "vip \"web\" backend 10.0.0.11:80 health.fall",
            "is 0: must be at least 1",
        );
    }

    #[test]
    fn http_path_starts_with_slash() {
        assert_only_problem(
            &doc("", "[vip.health]\nkind = \"http\"\npath = \"healthz\"", ""),
            "vip \"web\" health.path",
            "\"healthz\" must start with '/'",
        );
        // Also under a TCP check: a backend may inherit the path and turn
        // HTTP on, and the problem is reported once, where the path is set.
        let text = format!(
            "{}[[vip.backend]]\naddress = \"10.0.0.12\"\nport = 80\n\
             [vip.backend.health]\nkind = \"http\"\n",
            doc(
                "[health]\nkind = \"http\"\npath = \"healthz\"",
                "[vip.health]\nkind = \"tcp\"",
                "[vip.backend.health]\nkind = \"http\""
            )
        );
        assert_eq!(
            problems(&text),
            vec!["health.path: \"healthz\" must start with '/', e.g. \"/healthz\""]
        );
    }

    #[test]
    fn http_path_is_sent_as_written_so_it_must_be_one_token() {
        for bad in ["/health check", "/a\\r\\nX: y", "/gr\u{fc}n"] {
            let text = doc(
                "",
                &format!("[vip.health]\nkind = \"http\"\npath = \"{bad}\""),
                "",
            );
            let p = problems(&text);
            assert_eq!(p.len(), 1, "{bad:?}: {p:?}");
            assert!(p[0].contains("percent-encode"), "{p:?}");
        }
        parse(&doc(
            "",
            "[vip.health]\nkind = \"http\"\npath = \"/a%20b?x=1&y=~\"",
            "",
        ));
    }

    #[test]
    fn http_expect_status_is_a_status() {
        assert_only_problem(
            &doc("[health]\nkind = \"http\"\nexpect_status = 99", "", ""),
            "health.expect_status",
            "99 is not an HTTP status: must be 100 to 599",
        );
    }

    #[test]
    fn inherited_health_problem_is_reported_once_where_it_is_set() {
        let text = format!(
            "{}[[vip.backend]]\naddress = \"10.0.0.12\"\nport = 80\n",
            doc("[health]\nrise = 0", "", "")
        );
        assert_eq!(
            problems(&text),
            vec![
                "health.rise: is 0: must be at least 1 (successes before a backend counts as alive)"
            ]
        );
    }

    #[test]
    fn affinity_capacity_at_least_1024() {
        assert_only_problem(
            &doc("affinity_capacity = 1000", "", ""),
            "affinity_capacity",
            "1000 is too small: must be at least 1024",
        );
    }

    #[test]
    fn paths_absolute_and_socket_path_short() {
        assert_only_problem(
            &doc("pin_path = \"bpf\"", "", ""),
            "pin_path",
            "is relative",
        );
        assert_only_problem(
            &doc("control_socket = \"x.sock\"", "", ""),
            "control_socket",
            "is relative",
        );
        let long = format!("/run/{}.sock", "s".repeat(100));
        assert_only_problem(
            &doc(&format!("control_socket = \"{long}\""), "", ""),
            "control_socket",
            "path is 110 bytes long; a Unix socket path is at most 107",
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
interface = ""
affinity_capacity = 10

[health]
fall = 0

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
table_size = 100
affinity_timeout = "1s"

[[vip.backend]]
address = "10.0.0.11"
port = 80
weight = 100000

[[vip.backend]]
address = "10.0.0.11"
port = 80

[[vip]]
name = "empty"
address = "192.0.2.11"
port = 0
"#;
        let err = Config::parse(text).unwrap_err();
        let ConfigError::Invalid(list) = &err else {
            panic!("{err:?}")
        };
        let paths: Vec<&str> = list.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "interface",
                "affinity_capacity",
                "health.fall",
                "vip \"web\" table_size",
                "vip \"web\" affinity_timeout",
                "vip \"web\" backend 10.0.0.11:80 weight",
                "vip \"web\" backend 10.0.0.11:80",
                "vip \"empty\" port",
                "vip \"empty\"",
            ]
        );
        let shown = err.to_string();
        assert!(
            shown.starts_with("invalid config: 9 problems\n  interface: "),
            "{shown}"
        );
        assert_eq!(shown.lines().count(), 10, "{shown}");
    }

    // --- environment ------------------------------------------------------

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "stickylb-config-{tag}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn environment_checks_interface_and_socket_directory() {
        let dir = TempDir::new("env");
        let mut c = parse(MINIMAL);
        c.interface = "lo".into();
        c.control_socket = dir.0.join("not/yet/there.sock");
        assert_eq!(c.check_environment(), vec![]);

        c.interface = "nosuchnic0".into();
        let file = dir.0.join("file");
        std::fs::write(&file, "").unwrap();
        c.control_socket = file.join("s.sock");
        let p: Vec<String> = c
            .check_environment()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(p[0].starts_with("interface: no network interface named \"nosuchnic0\""));
        assert!(p[1].starts_with("control_socket: ") && p[1].ends_with("is not a directory"));

        // A file or folder where the socket would go is not replaced.
        c.interface = "lo".into();
        for (path, kind) in [(file.clone(), "a file"), (dir.0.clone(), "a directory")] {
            c.control_socket = path;
            let p: Vec<String> = c
                .check_environment()
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(p.len(), 1, "{p:#?}");
            assert!(
                p[0].contains(&format!("exists and is not a socket ({kind})")),
                "{p:?}"
            );
        }
    }

    // --- diff -------------------------------------------------------------

    const TWO_VIPS: &str = r#"
interface = "eth0"

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80

[[vip.backend]]
address = "10.0.0.11"
port = 80

[[vip.backend]]
address = "10.0.0.12"
port = 80

[[vip]]
name = "dns"
address = "192.0.2.10"
port = 53
protocol = "udp"

[[vip.backend]]
address = "10.0.0.21"
port = 53
"#;

    fn diff_of(old: &str, new: &str) -> ConfigDiff {
        diff(&parse(old), &parse(new))
    }

    fn web_change(d: &ConfigDiff) -> &VipChange {
        assert_eq!(d.vips_changed.len(), 1, "{d:#?}");
        assert_eq!(d.vips_changed[0].name, "web");
        &d.vips_changed[0]
    }

    const B11: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 0, 11), 80);
    const B12: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 0, 0, 12), 80);

    #[test]
    fn diff_of_equal_configs_is_empty() {
        let d = diff_of(TWO_VIPS, TWO_VIPS);
        assert!(d.is_empty(), "{d:#?}");
        assert_eq!(d.to_string(), "no changes");
        // Order in the file is not a change.
        let reordered = TWO_VIPS
            .replace("10.0.0.11", "10.0.0.99")
            .replace("10.0.0.12", "10.0.0.11")
            .replace("10.0.0.99", "10.0.0.12");
        assert!(diff_of(TWO_VIPS, &reordered).is_empty());
    }

    #[test]
    fn diff_weight_change_is_a_backend_change() {
        let new = TWO_VIPS.replacen(
            "port = 80\n\n[[vip.backend]]\naddress = \"10.0.0.12\"",
            "port = 80\nweight = 3\n\n[[vip.backend]]\naddress = \"10.0.0.12\"",
            1,
        );
        let d = diff_of(TWO_VIPS, &new);
        let c = web_change(&d);
        assert_eq!(c.backends_changed, vec![B11]);
        assert!(c.settings_changed.is_empty() && c.backends_added.is_empty());
        assert!(c.backends_removed.is_empty());
        assert!(d.global_changed.is_empty() && !d.needs_restart());
    }

    #[test]
    fn diff_health_change_reaches_the_backends() {
        let new = TWO_VIPS.replace(
            "interface = \"eth0\"\n",
            "interface = \"eth0\"\n[health]\nrise = 4\n",
        );
        let d = diff_of(TWO_VIPS, &new);
        assert_eq!(d.vips_changed.len(), 2);
        assert_eq!(d.vips_changed[0].backends_changed, vec![B11, B12]);
        assert!(d.global_changed.is_empty());
    }

    #[test]
    fn diff_backend_added_and_removed() {
        let new = TWO_VIPS.replace("10.0.0.12", "10.0.0.13");
        let d = diff_of(TWO_VIPS, &new);
        let c = web_change(&d);
        assert_eq!(c.backends_added, vec![(Ipv4Addr::new(10, 0, 0, 13), 80)]);
        assert_eq!(c.backends_removed, vec![B12]);
        assert!(c.backends_changed.is_empty());
        assert_eq!(
            d.to_string(),
            "VIP web changed: +10.0.0.13:80 -10.0.0.12:80"
        );
    }

    #[test]
    fn diff_vip_added_and_removed() {
        let new = TWO_VIPS.replace("\"dns\"", "\"dns2\"");
        let d = diff_of(TWO_VIPS, &new);
        assert_eq!(d.vips_added, vec!["dns2"]);
        assert_eq!(d.vips_removed, vec!["dns"]);
        assert!(d.vips_changed.is_empty());
        let d = diff_of(TWO_VIPS, MINIMAL);
        assert_eq!(d.vips_removed, vec!["dns"]);
        assert!(d.vips_added.is_empty());
    }

    #[test]
    fn diff_vip_settings() {
        let new = TWO_VIPS.replacen(
            "port = 80\n",
            "port = 8080\ntable_size = 251\naffinity_timeout = \"1m\"\n",
            1,
        );
        let d = diff_of(TWO_VIPS, &new);
        assert_eq!(
            web_change(&d).settings_changed,
            ["address/port/protocol", "affinity_timeout", "table_size"]
        );
        let new = TWO_VIPS.replacen("port = 80\n", "port = 80\ntable_size = 251\n", 1);
        assert_eq!(
            web_change(&diff_of(TWO_VIPS, &new)).settings_changed,
            ["table_size"]
        );
    }

    #[test]
    fn diff_global_changes_need_a_restart() {
        let new = TWO_VIPS.replace(
            "\"eth0\"",
            "\"eth1\"\nhash_seed = 1\nmetrics_listen = \"off\"",
        );
        let d = diff_of(TWO_VIPS, &new);
        assert_eq!(
            d.global_changed,
            ["interface", "metrics_listen", "hash_seed"]
        );
        assert!(d.needs_restart());
        assert!(d.vips_changed.is_empty() && !d.is_empty());
        assert_eq!(
            d.to_string(),
            "needs a restart to apply: interface, metrics_listen, hash_seed"
        );
    }
}
