//! The control API's contract: every request the CLI sends and every reply
//! the daemon answers with, as types both sides share. The daemon serializes
//! these and the CLI (and the tests) parse them back, so a renamed field or
//! state is a compile error, not a blank column.
//!
//! The wire framing (one JSON line each way, the `{ok, result, error}`
//! envelope) is in `control`.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
};

use lb_common::{BackendStats, VipStats};
use serde::{Deserialize, Serialize};

use crate::{
    announce::NotAnnounced,
    dataplane::{AttachMode, Attached},
};

/// One request to the daemon. Addresses are `IpAddr`/`SocketAddr` so that
/// the protocol need not change for IPv6; the daemon refuses IPv6 for now.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Answered with [`StatusReply`].
    Status,
    /// Answered with [`LookupReply`].
    Lookup {
        client: IpAddr,
        /// Only this VIP; default: every VIP.
        vip: Option<String>,
    },
    /// Answered with [`FlowsReply`].
    Flows {
        vip: Option<String>,
        backend: Option<SocketAddr>,
        /// The most entries the reply lists; default [`DEFAULT_FLOWS_LIMIT`],
        /// at most [`MAX_FLOWS_LIMIT`]; 0: only count them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// Answered with [`BackendAdded`].
    BackendAdd {
        vip: String,
        backend: SocketAddr,
        weight: u32,
        mac: Option<String>,
    },
    /// Answered with [`BackendRemoved`].
    BackendRemove { vip: String, backend: SocketAddr },
    /// Answered with [`BackendChanged`].
    BackendWeight {
        vip: String,
        backend: SocketAddr,
        weight: u32,
    },
    /// Answered with [`BackendChanged`].
    BackendDrain {
        vip: String,
        backend: SocketAddr,
        drained: bool,
    },
    /// Answered with [`ReloadReply`].
    Reload,
    /// Answered with [`MaintenanceReply`].
    Maintenance { on: bool },
    /// `stickylb unload`'s first step: withdraw every VIP and announce none
    /// again, the program still forwarding. Answered with [`WithdrawReply`].
    Withdraw,
}

/// How the daemon's XDP program came to be attached, as `status` and the
/// startup log describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachState {
    /// Attached by this run in native (driver) mode.
    Driver,
    /// Attached by this run in generic (skb) mode.
    Skb,
    /// The link pinned by an earlier run was taken over.
    Adopted,
}

impl AttachState {
    const ALL: [Self; 3] = [Self::Driver, Self::Skb, Self::Adopted];

    /// The words `status` prints, also the JSON value.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Driver => "driver mode",
            Self::Skb => "generic (skb) mode",
            Self::Adopted => "adopted from the previous run",
        }
    }
}

impl From<Attached> for AttachState {
    fn from(a: Attached) -> Self {
        match a {
            Attached::New(AttachMode::Driver) => Self::Driver,
            Attached::New(AttachMode::Skb) => Self::Skb,
            Attached::Adopted => Self::Adopted,
        }
    }
}

impl fmt::Display for AttachState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.describe())
    }
}

// The JSON value is the description itself, as it was before this type
// existed, so scripts reading `attached` keep working.
impl Serialize for AttachState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.describe())
    }
}

impl<'de> Deserialize<'de> for AttachState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::ALL
            .into_iter()
            .find(|a| a.describe() == text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown attach state {text:?}")))
    }
}

/// A backend's state as `status` shows it. JSON: snake_case (`"up_no_mac"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    /// Passing its checks, MAC known, taking new clients.
    Up,
    /// Alive, but takes no new clients (drained, or weight 0); its pinned
    /// clients stay.
    Draining,
    /// Passing its checks, but its MAC is unknown, so it is out of the table.
    /// Daemons before the typed API wrote it as "up (no MAC)": still read.
    #[serde(alias = "up (no MAC)")]
    UpNoMac,
    /// Failing its checks.
    Down,
    /// Not checked yet.
    Unknown,
}

impl BackendState {
    /// Alive in the data path: frames of its pinned clients reach it.
    pub fn is_alive(self) -> bool {
        matches!(self, Self::Up | Self::Draining)
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Up => "up",
            Self::Draining => "draining",
            Self::UpNoMac => "up (no MAC)",
            Self::Down => "down",
            Self::Unknown => "unknown",
        })
    }
}

/// The `SLB_TUNNEL` entry as the daemon wrote it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TunnelStatus {
    /// The outer source (the configured one, or the interface's address).
    pub source: Ipv4Addr,
    /// IP-in-IP's per-client outer sources ("address/length").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_prefix: Option<String>,
    pub gue_port: u16,
    pub ttl: u8,
}

impl From<lb_common::TunnelSettings> for TunnelStatus {
    fn from(t: lb_common::TunnelSettings) -> Self {
        Self {
            source: Ipv4Addr::from(t.src_addr),
            source_prefix: (t.src_prefix_len > 0)
                .then(|| format!("{}/{}", Ipv4Addr::from(t.src_prefix), t.src_prefix_len)),
            gue_port: u16::from_be_bytes(t.gue_port),
            ttl: t.ttl,
        }
    }
}

/// Where a backend's MAC came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MacSource {
    Config,
    Neighbour,
    Unknown,
    /// A tunnel VIP's backend: frames are routed to its address and the
    /// next hop's MAC comes from the kernel's FIB per frame; it has none.
    Routed,
}

/// Reply to [`Request::Status`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusReply {
    pub pid: u32,
    pub interface: String,
    pub attached: AttachState,
    /// The config file the daemon reads on reload.
    pub config: PathBuf,
    pub pin_path: PathBuf,
    pub uptime_s: u64,
    /// Frames left to the kernel, by counter name.
    pub passed: BTreeMap<String, u64>,
    /// When the backends' `clients` were counted. None: not yet (a daemon
    /// that has just started), or a daemon older than the CLI, which counted
    /// them for every reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients_counted: Option<ClientsCounted>,
    pub vips: Vec<VipStatus>,
    /// How tunnelled frames are built; absent when no VIP uses a tunnel
    /// (and from a daemon that predates the tunnel modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelStatus>,
    /// The daemon's own problems, which it does not blame on any backend.
    /// Absent from older daemons.
    #[serde(default)]
    pub local_errors: LocalErrors,
    /// In maintenance: no VIP is announced, what arrives is still served.
    #[serde(default)]
    pub maintenance: bool,
    /// The `[announce]` settings; absent when the daemon announces nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceStatus>,
    /// The affinity sync with peer nodes; absent when `[sync]` is not set
    /// (and from older daemons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
}

/// The affinity sync, as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncStatus {
    /// Where peers connect to this node.
    pub listen: SocketAddrV4,
    /// Whether this node has joined its cluster (it announces only then).
    pub ready: bool,
    /// The peer whose table it pulled; None while joining, or when it
    /// became ready alone (no peer answered within the join timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_from: Option<SocketAddrV4>,
    /// Connections dropped for failing the handshake, a frame's HMAC or its
    /// parse, by reason (`sync::wire::Reject`).
    pub rejected: BTreeMap<String, u64>,
    /// Data-path events whose ids were not in the books (dropped).
    pub untranslated: u64,
    /// Connections accepted from an address that is no peer's (each still
    /// had to prove it knows the key).
    pub from_unknown_address: u64,
    pub peers: Vec<PeerStatus>,
}

/// One configured peer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    pub address: SocketAddrV4,
    /// This node's connection to it.
    pub state: PeerState,
    /// Seconds in that state.
    pub since_s: u64,
    /// Entries sent to it (batches and corrections; not snapshots).
    pub sent: u64,
    /// Entries received from it (snapshots included).
    pub received: u64,
    /// Received and applied (written or refreshed here).
    pub applied: u64,
    /// Received and not applied: unknown VIP or backend, a dead backend,
    /// expired, or losing to this node's pin (answered with a correction).
    /// `received` = `applied` + `rejected`.
    pub rejected: u64,
    /// Corrections sent to it: this node's pins that won over its.
    #[serde(default)]
    pub corrections_sent: u64,
    /// Entries for it dropped from a full queue (the oldest go).
    pub dropped: u64,
    /// Waiting in its queue.
    pub queued: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Lag of its recent entries (ms): when applied here, after its data
    /// path last saw the client, by both nodes' wall clocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_p50_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_p99_ms: Option<u64>,
    /// Lag samples since the start, and their sum (for a metrics summary).
    pub lag_count: u64,
    pub lag_sum_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    #[default]
    Connecting,
    Up,
    Down,
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerState::Connecting => "connecting",
            PeerState::Up => "up",
            PeerState::Down => "down",
        })
    }
}

/// Where the daemon announces its VIPs.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnnounceStatus {
    pub table: u32,
    pub protocol: u32,
    pub withdraw_delay_ms: u64,
}

/// Whether one VIP is announced.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VipAnnounce {
    /// Its address's route is in the table.
    pub announced: bool,
    /// Why this VIP cannot be served from here, if it cannot. Its address
    /// can still be announced for another VIP on the same address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<NotAnnounced>,
}

/// Reply to [`Request::Maintenance`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MaintenanceReply {
    pub maintenance: bool,
    /// False when the node already was in that state.
    pub changed: bool,
    /// The VIP addresses announced now (none in maintenance).
    pub announced: Vec<Ipv4Addr>,
}

/// Reply to [`Request::Withdraw`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WithdrawReply {
    /// The VIP addresses that were announced and are no longer.
    pub withdrawn: Vec<Ipv4Addr>,
    /// How long the routers get to move traffic away before the program
    /// goes (`[announce] withdraw_delay`; 0 without `[announce]`).
    pub withdraw_delay_ms: u64,
}

/// What went wrong on the daemon's side: health checks that could not run
/// (out of descriptors, memory or local ports: the backends keep their
/// state meanwhile), and connections closed at once because their listener
/// had as many open as it allows.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalErrors {
    /// Health checks that could not be made since the start.
    pub checks: u64,
    /// The last such check's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_error: Option<String>,
    /// Metrics connections refused over the cap.
    pub refused_metrics: u64,
    /// Control connections refused over the cap.
    pub refused_control: u64,
}

/// The walk of the affinity table that counted the backends' clients: it
/// runs in the background (a table of millions of entries takes a while),
/// so the counts are as old as it says.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientsCounted {
    /// Milliseconds since the walk ended.
    pub age_ms: u64,
    /// How long the walk took.
    pub walk_ms: u64,
    /// Affinity entries it saw, live or not, of every VIP.
    pub entries: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VipStatus {
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    pub table_size: u32,
    pub affinity_timeout_s: f64,
    /// How frames reach the backends (`dsr` from a daemon that predates
    /// the tunnel modes).
    #[serde(default)]
    pub forwarding: crate::config::Forwarding,
    pub alive_backends: usize,
    /// Waiting for every backend's first check result: its table is empty
    /// until then (false from a daemon that predates warm-up: serving).
    #[serde(default)]
    pub warming: bool,
    /// While `warming`: why, and until when (absent from a daemon that
    /// predates the re-warm after every backend was down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warming_why: Option<String>,
    /// Absent when the daemon announces nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<VipAnnounce>,
    #[serde(flatten)]
    pub counters: VipStats,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    pub id: u32,
    pub address: SocketAddrV4,
    pub state: BackendState,
    /// Why the backend is in its state.
    pub reason: String,
    pub weight: u32,
    pub drained: bool,
    pub mac: Option<String>,
    pub mac_source: MacSource,
    /// What the last health check saw.
    pub check: Option<String>,
    pub check_latency_ms: Option<f64>,
    /// Maglev slots owned.
    pub slots: usize,
    /// Clients with a live affinity entry, as of the last walk of the
    /// table (see [`StatusReply::clients_counted`]).
    pub clients: usize,
    #[serde(flatten)]
    pub counters: BackendStats,
    /// From the config file (not added with `backend add`).
    pub from_config: bool,
    /// Times its health checker died (a bug) and was started again.
    #[serde(default)]
    pub checker_restarts: u64,
}

/// Reply to [`Request::Lookup`]: one row per VIP looked at.
pub type LookupReply = Vec<LookupResult>;

/// Where one client goes on one VIP, and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LookupResult {
    pub vip: String,
    pub client: Ipv4Addr,
    /// None: no backend alive, frames are dropped.
    pub backend: Option<SocketAddrV4>,
    pub reason: String,
    /// The Maglev slot picked, if the table was consulted.
    pub slot: Option<u32>,
    pub affinity_age_ms: Option<u64>,
    pub affinity_idle_ms: Option<u64>,
}

/// How many entries a `flows` reply lists unless asked for another limit.
pub const DEFAULT_FLOWS_LIMIT: usize = 1000;
/// The most entries a `flows` reply lists (some 15 MB of JSON): a table
/// of millions is seen through `--vip` and `--backend`, or counted.
pub const MAX_FLOWS_LIMIT: usize = 100_000;

/// Reply to [`Request::Flows`]: the first `limit` matching entries, sorted
/// by VIP and client, and how many matched.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(from = "FlowsWire")]
pub struct FlowsReply {
    pub flows: Vec<FlowEntry>,
    /// Entries that matched, listed or not.
    pub total: u64,
    /// Fewer entries are listed than matched.
    pub truncated: bool,
    /// The limit applied.
    pub limit: usize,
}

/// A `flows` reply as it may come: bounded, or the bare list of every
/// entry that daemons before the bound sent.
#[derive(Deserialize)]
#[serde(untagged)]
enum FlowsWire {
    Bounded {
        flows: Vec<FlowEntry>,
        total: u64,
        truncated: bool,
        limit: usize,
    },
    Unbounded(Vec<FlowEntry>),
}

impl From<FlowsWire> for FlowsReply {
    fn from(w: FlowsWire) -> Self {
        match w {
            FlowsWire::Bounded {
                flows,
                total,
                truncated,
                limit,
            } => Self {
                flows,
                total,
                truncated,
                limit,
            },
            FlowsWire::Unbounded(flows) => Self {
                total: flows.len() as u64,
                truncated: false,
                limit: flows.len(),
                flows,
            },
        }
    }
}

/// One affinity entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowEntry {
    pub vip: String,
    pub client: Ipv4Addr,
    /// None: the entry points to a backend that has been removed.
    pub backend: Option<SocketAddrV4>,
    pub age_ms: u64,
    pub idle_ms: u64,
    /// The entry would be followed by the next frame.
    pub live: bool,
}

/// Reply to [`Request::BackendAdd`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackendAdded {
    /// The backend id the new backend got.
    pub id: u32,
}

/// Reply to [`Request::BackendRemove`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackendRemoved {
    /// The id the backend had; it is free now.
    pub id: u32,
}

/// Reply to [`Request::BackendWeight`] and [`Request::BackendDrain`]: the
/// table rebuild the change caused.
pub type BackendChanged = RebuildReport;

/// What one table rebuild did.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RebuildReport {
    pub slots_written: usize,
    pub build_us: u64,
    pub write_us: u64,
}

/// Reply to [`Request::Reload`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadReply {
    /// The reload changed something (restart-only fields included).
    pub changed: bool,
    /// What it changed, in one line: `plan`'s `Display` ("no changes"
    /// when nothing did), then the `announce` changes.
    pub diff: String,
    /// Fields that changed but take a restart to apply.
    pub needs_restart: Vec<String>,
    /// What the reload did, VIP by VIP and backend by backend. Absent from
    /// the replies of daemons older than the CLI (a package upgrade before
    /// the daemon's restart).
    #[serde(default)]
    pub plan: PlanReport,
    /// What is allowed but probably wrong in the new file (e.g. a UDP VIP
    /// checked by TCP only), each with its fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The `[announce]` fields the reload changed (applied), each with its
    /// old and new value (`off` for an absent section); also in `diff`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub announce: Vec<SettingChange>,
}

/// What a change of the desired state does (a reload, or a live CLI
/// change): planned against the running state, live changes included.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlanReport {
    /// Settings that differ but take a restart to apply; not applied.
    pub needs_restart: Vec<String>,
    /// Running VIPs that nothing asks for any more.
    pub removed: Vec<RemovedVip>,
    /// The VIPs afterwards, in the order asked for.
    pub vips: Vec<VipReport>,
    /// `[tunnel]` settings that change (the `SLB_TUNNEL` entry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunnel: Vec<SettingChange>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemovedVip {
    pub name: String,
    pub id: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VipReport {
    pub name: String,
    pub id: u32,
    #[serde(flatten)]
    pub change: VipChange,
    pub backends: Vec<BackendReport>,
    /// Backends of the running VIP that are not asked for any more.
    pub removed_backends: Vec<RemovedBackend>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum VipChange {
    Added,
    Kept {
        /// The running VIP had this name (matched by address, port, protocol).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        renamed_from: Option<String>,
        settings: Vec<SettingChange>,
    },
}

/// One setting's old and new value, as an operator would write them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SettingChange {
    pub field: String,
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackendReport {
    pub address: SocketAddr,
    pub id: u32,
    #[serde(flatten)]
    pub change: BackendChange,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum BackendChange {
    Added,
    Kept { settings: Vec<SettingChange> },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemovedBackend {
    pub address: SocketAddr,
    pub id: u32,
}

impl PlanReport {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.needs_restart.is_empty()
            && self.removed.is_empty()
            && self.tunnel.is_empty()
            && self.vips.iter().all(VipReport::is_unchanged)
    }
}

impl VipReport {
    /// Whether nothing about this VIP changes.
    pub fn is_unchanged(&self) -> bool {
        self.removed_backends.is_empty()
            && matches!(&self.change, VipChange::Kept { renamed_from: None, settings } if settings.is_empty())
            && self.backends.iter().all(
                |b| matches!(&b.change, BackendChange::Kept { settings } if settings.is_empty()),
            )
    }
}

fn settings_line(settings: &[SettingChange]) -> impl Iterator<Item = String> + '_ {
    settings
        .iter()
        .map(|s| format!("{} {} -> {}", s.field, s.from, s.to))
}

/// One line for the log and the `reload` reply: `+` a backend added, `-`
/// one removed, `~` one changed.
impl fmt::Display for PlanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no changes");
        }
        let mut parts = Vec::new();
        for v in &self.vips {
            let mut what: Vec<String> = Vec::new();
            match &v.change {
                VipChange::Added => {
                    parts.push(format!(
                        "VIP {} added with {} backends",
                        v.name,
                        v.backends.len()
                    ));
                    continue;
                }
                VipChange::Kept {
                    renamed_from,
                    settings,
                } => {
                    if let Some(old) = renamed_from {
                        what.push(format!("renamed from {old}"));
                    }
                    what.extend(settings_line(settings));
                }
            }
            for b in &v.backends {
                match &b.change {
                    BackendChange::Added => what.push(format!("+{}", b.address)),
                    BackendChange::Kept { settings } if !settings.is_empty() => {
                        let s: Vec<String> = settings_line(settings).collect();
                        what.push(format!("~{} ({})", b.address, s.join(", ")));
                    }
                    BackendChange::Kept { .. } => {}
                }
            }
            what.extend(v.removed_backends.iter().map(|b| format!("-{}", b.address)));
            if !what.is_empty() {
                parts.push(format!("VIP {}: {}", v.name, what.join(" ")));
            }
        }
        for r in &self.removed {
            parts.push(format!("VIP {} removed", r.name));
        }
        if !self.tunnel.is_empty() {
            let s: Vec<String> = settings_line(&self.tunnel).collect();
            parts.push(format!("tunnel: {}", s.join(", ")));
        }
        if !self.needs_restart.is_empty() {
            parts.push(format!(
                "needs a restart to apply: {}",
                self.needs_restart.join(", ")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests;
