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

use crate::dataplane::{AttachMode, Attached};

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

/// Where a backend's MAC came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MacSource {
    Config,
    Neighbour,
    Unknown,
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
    pub vips: Vec<VipStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VipStatus {
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    pub table_size: u32,
    pub affinity_timeout_s: f64,
    pub alive_backends: usize,
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
    /// Clients with a live affinity entry.
    pub clients: usize,
    #[serde(flatten)]
    pub counters: BackendStats,
    /// From the config file (not added with `backend add`).
    pub from_config: bool,
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

/// Reply to [`Request::Flows`], sorted by VIP and client.
pub type FlowsReply = Vec<FlowEntry>;

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
    /// when nothing did).
    pub diff: String,
    /// Fields that changed but take a restart to apply.
    pub needs_restart: Vec<String>,
    /// What the reload did, VIP by VIP and backend by backend. Absent from
    /// the replies of daemons older than the CLI (a package upgrade before
    /// the daemon's restart).
    #[serde(default)]
    pub plan: PlanReport,
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
    pub address: SocketAddrV4,
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
    pub address: SocketAddrV4,
    pub id: u32,
}

impl PlanReport {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.needs_restart.is_empty()
            && self.removed.is_empty()
            && self.vips.iter().all(|v| {
                v.removed_backends.is_empty()
                    && matches!(&v.change, VipChange::Kept { renamed_from: None, settings } if settings.is_empty())
                    && v.backends.iter().all(|b| {
                        matches!(&b.change, BackendChange::Kept { settings } if settings.is_empty())
                    })
            })
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
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::json;

    /// Serializes as the daemon does (through `control::Reply`) and parses
    /// as the CLI does; the value must survive unchanged.
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + fmt::Debug>(v: &T) {
        let reply = crate::control::Reply::ok(v);
        let line = serde_json::to_string(&reply).unwrap();
        let back: crate::control::Reply = serde_json::from_str(&line).unwrap();
        assert!(back.ok, "{line}");
        let parsed: T = serde_json::from_value(back.result.unwrap()).unwrap();
        assert_eq!(&parsed, v, "{line}");
    }

    fn backend(state: BackendState) -> BackendStatus {
        BackendStatus {
            id: 3,
            address: "10.0.0.11:80".parse().unwrap(),
            state,
            reason: "2 passed tcp checks".into(),
            weight: 2,
            drained: false,
            mac: Some("02:00:00:00:00:0b".into()),
            mac_source: MacSource::Neighbour,
            check: Some("connected".into()),
            check_latency_ms: Some(0.25),
            slots: 509,
            clients: 12,
            counters: BackendStats {
                packets: 100,
                bytes: 6400,
                new_clients: 12,
            },
            from_config: true,
        }
    }

    fn status() -> StatusReply {
        StatusReply {
            pid: 4242,
            interface: "eth0".into(),
            attached: AttachState::Skb,
            config: "/etc/stickylb/stickylb.toml".into(),
            pin_path: "/sys/fs/bpf/stickylb".into(),
            uptime_s: 61,
            passed: lb_common::global_counter::NAMES
                .iter()
                .zip(1..)
                .map(|(n, c)| ((*n).to_owned(), c))
                .collect(),
            vips: vec![VipStatus {
                name: "web".into(),
                address: Ipv4Addr::new(192, 0, 2, 10),
                port: 80,
                protocol: "tcp".into(),
                table_size: 1021,
                affinity_timeout_s: 300.0,
                alive_backends: 1,
                counters: VipStats {
                    packets: 1,
                    bytes: 2,
                    new_clients: 3,
                    affinity_hits: 4,
                    repick_expired: 5,
                    repick_dead: 6,
                    probed: 7,
                    drop_no_backend: 8,
                    drop_fragment: 9,
                },
                backends: vec![
                    backend(BackendState::Up),
                    backend(BackendState::UpNoMac),
                    BackendStatus {
                        mac: None,
                        mac_source: MacSource::Unknown,
                        check: None,
                        check_latency_ms: None,
                        ..backend(BackendState::Unknown)
                    },
                ],
            }],
        }
    }

    #[test]
    fn every_reply_round_trips() {
        round_trip(&status());
        let lookup: LookupReply = vec![
            LookupResult {
                vip: "web".into(),
                client: Ipv4Addr::new(10, 1, 0, 1),
                backend: Some("10.0.0.11:80".parse().unwrap()),
                reason: "affinity entry".into(),
                slot: None,
                affinity_age_ms: Some(1200),
                affinity_idle_ms: Some(3),
            },
            LookupResult {
                vip: "dns".into(),
                client: Ipv4Addr::new(10, 1, 0, 1),
                backend: None,
                reason: "no backend alive: frames are dropped".into(),
                slot: Some(17),
                affinity_age_ms: None,
                affinity_idle_ms: None,
            },
        ];
        round_trip(&lookup);
        let flows: FlowsReply = vec![FlowEntry {
            vip: "web".into(),
            client: Ipv4Addr::new(10, 1, 0, 1),
            backend: None,
            age_ms: 5,
            idle_ms: 4,
            live: false,
        }];
        round_trip(&flows);
        round_trip(&BackendAdded { id: 7 });
        round_trip(&BackendRemoved { id: 7 });
        round_trip(&BackendChanged {
            slots_written: 40,
            build_us: 120,
            write_us: 30,
        });
        let plan = PlanReport {
            needs_restart: vec!["interface".into()],
            removed: vec![RemovedVip {
                name: "old".into(),
                id: 2,
            }],
            vips: vec![VipReport {
                name: "web".into(),
                id: 0,
                change: VipChange::Kept {
                    renamed_from: Some("www".into()),
                    settings: vec![SettingChange {
                        field: "table_size".into(),
                        from: "251".into(),
                        to: "509".into(),
                    }],
                },
                backends: vec![
                    BackendReport {
                        address: "10.0.0.12:80".parse().unwrap(),
                        id: 3,
                        change: BackendChange::Added,
                    },
                    BackendReport {
                        address: "10.0.0.11:80".parse().unwrap(),
                        id: 1,
                        change: BackendChange::Kept {
                            settings: Vec::new(),
                        },
                    },
                ],
                removed_backends: vec![RemovedBackend {
                    address: "10.0.0.10:80".parse().unwrap(),
                    id: 0,
                }],
            }],
        };
        assert_eq!(
            plan.to_string(),
            "VIP web: renamed from www table_size 251 -> 509 +10.0.0.12:80 -10.0.0.10:80; \
             VIP old removed; needs a restart to apply: interface"
        );
        round_trip(&ReloadReply {
            changed: true,
            diff: plan.to_string(),
            needs_restart: vec!["interface".into()],
            plan,
        });
    }

    /// The JSON field names and values scripts see; a rename here is a
    /// change of the contract.
    #[test]
    fn status_json_shape() {
        let v = serde_json::to_value(status()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "attached",
                "config",
                "interface",
                "passed",
                "pid",
                "pin_path",
                "uptime_s",
                "vips"
            ]
        );
        assert_eq!(v["attached"], "generic (skb) mode");
        assert_eq!(v["passed"]["pass_not_vip"], 7);
        let vip = &v["vips"][0];
        // Counters are flattened into the VIP and backend objects.
        assert_eq!(vip["probed"], 7);
        assert_eq!(vip["backends"][0]["packets"], 100);
        assert_eq!(vip["backends"][0]["address"], "10.0.0.11:80");
        assert_eq!(vip["backends"][0]["mac_source"], "neighbour");
        assert_eq!(vip["backends"][1]["state"], "up_no_mac");
        assert_eq!(
            serde_json::to_value(ReloadReply {
                changed: false,
                diff: "no changes".into(),
                needs_restart: Vec::new(),
                plan: PlanReport::default(),
            })
            .unwrap(),
            json!({"changed": false, "diff": "no changes", "needs_restart": [],
                   "plan": {"needs_restart": [], "removed": [], "vips": []}})
        );
        assert_eq!(
            serde_json::to_value(BackendAdded { id: 4 }).unwrap(),
            json!({"id": 4})
        );
    }

    #[test]
    fn backend_state_words_and_json_values() {
        let all = [
            (BackendState::Up, "up", "up"),
            (BackendState::Draining, "draining", "draining"),
            (BackendState::UpNoMac, "up (no MAC)", "up_no_mac"),
            (BackendState::Down, "down", "down"),
            (BackendState::Unknown, "unknown", "unknown"),
        ];
        for (state, words, value) in all {
            assert_eq!(state.to_string(), words);
            assert_eq!(serde_json::to_value(state).unwrap(), json!(value));
            assert_eq!(
                serde_json::from_value::<BackendState>(json!(value)).unwrap(),
                state
            );
        }
        // The status table pads the state column.
        assert_eq!(format!("[{:<10}]", BackendState::Up), "[up        ]");
        assert!(serde_json::from_value::<BackendState>(json!("up (no MAC)")).is_err());
        let alive: Vec<BackendState> = all
            .iter()
            .map(|(s, ..)| *s)
            .filter(|s| s.is_alive())
            .collect();
        assert_eq!(alive, [BackendState::Up, BackendState::Draining]);
    }

    #[test]
    fn attach_state_words_and_json_values() {
        let all = [
            (Attached::New(AttachMode::Driver), "driver mode"),
            (Attached::New(AttachMode::Skb), "generic (skb) mode"),
            (Attached::Adopted, "adopted from the previous run"),
        ];
        for (attached, words) in all {
            let state = AttachState::from(attached);
            assert_eq!(state.to_string(), words);
            assert_eq!(serde_json::to_value(state).unwrap(), json!(words));
            assert_eq!(
                serde_json::from_value::<AttachState>(json!(words)).unwrap(),
                state
            );
        }
        let err = serde_json::from_value::<AttachState>(json!("driver")).unwrap_err();
        assert!(err.to_string().contains("unknown attach state"), "{err}");
    }

    #[test]
    fn requests_take_ip_and_socket_addresses() {
        // IPv4 addresses keep the JSON they had as Ipv4Addr/SocketAddrV4.
        let req = Request::Flows {
            vip: None,
            backend: Some("10.0.0.2:80".parse().unwrap()),
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"cmd": "flows", "vip": null, "backend": "10.0.0.2:80"})
        );
        let v6 = Request::Lookup {
            client: "2001:db8::1".parse().unwrap(),
            vip: None,
        };
        let text = serde_json::to_string(&v6).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), v6);
    }
}
