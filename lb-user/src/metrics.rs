//! Prometheus text exposition of the daemon's status, over a minimal HTTP
//! server (one GET per connection) on the configured, by default loopback,
//! address.

use std::{fmt::Write as _, net::SocketAddr, sync::atomic::AtomicU64, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use lb_common::{
    BackendStats, VipStats,
    counters::{Counter, CounterTable, Family, Metric},
};

use crate::api::{BackendStatus, ClientsCounted, LocalErrors, PeerState, SyncStatus, VipStatus};
use crate::conncap::ConnectionCap;

/// Renders the exposition text from a status snapshot, the passed-frame
/// counters and when the clients were counted (None: not yet).
pub fn render(
    vips: &[VipStatus],
    global: &[(&str, u64)],
    counted: Option<&ClientsCounted>,
) -> String {
    let mut out = String::new();
    let vip = |v: &VipStatus| format!("vip=\"{}\"", v.name);
    let vip_rows: Vec<(String, &VipStats)> = vips.iter().map(|v| (vip(v), &v.counters)).collect();
    counter_families(&mut out, &vip_rows);
    let backends: Vec<(String, &BackendStatus)> = vips
        .iter()
        .flat_map(|v| {
            v.backends
                .iter()
                .map(move |b| (format!("{},backend=\"{}\"", vip(v), b.address), b))
        })
        .collect();
    let per_backend = |f: fn(&BackendStatus) -> f64| {
        backends
            .iter()
            .map(move |(labels, b)| (labels.clone(), f(b)))
    };
    family(
        &mut out,
        "backend_up",
        "gauge",
        "1 if the backend is alive in the data path.",
        per_backend(|b| f64::from(u8::from(b.state.is_alive()))),
    );
    let backend_rows: Vec<(String, &BackendStats)> = backends
        .iter()
        .map(|(labels, b)| (labels.clone(), &b.counters))
        .collect();
    counter_families(&mut out, &backend_rows);
    family(
        &mut out,
        "backend_clients",
        "gauge",
        "Clients with a live affinity entry.",
        per_backend(|b| b.clients as f64),
    );
    family(
        &mut out,
        "backend_check_latency_seconds",
        "gauge",
        "Duration of the last health check.",
        per_backend(|b| b.check_latency_ms.unwrap_or(f64::NAN) / 1000.0),
    );
    family(
        &mut out,
        "checker_restarts_total",
        "counter",
        "Times the backend's health checker died and was started again.",
        per_backend(|b| b.checker_restarts as f64),
    );
    let announced: Vec<(String, f64)> = vips
        .iter()
        .filter_map(|v| {
            v.announce
                .map(|a| (vip(v), f64::from(u8::from(a.announced))))
        })
        .collect();
    if !announced.is_empty() {
        family(
            &mut out,
            "vip_announced",
            "gauge",
            "1 while the VIP's address is announced (its route is in the [announce] table).",
            announced,
        );
    }
    family(
        &mut out,
        "passed_frames_total",
        "counter",
        "Frames left to the kernel, by reason.",
        global
            .iter()
            .filter(|(n, _)| *n != lost_name())
            .map(|(n, v)| (format!("reason=\"{n}\""), *v as f64)),
    );
    if let Some((_, lost)) = global.iter().find(|(n, _)| *n == lost_name()) {
        let name = "sync_events_lost_total";
        let _ = writeln!(
            out,
            "# HELP stickylb_{name} Sync events the XDP program could not write (ring full); \
             their frames were forwarded."
        );
        let _ = writeln!(out, "# TYPE stickylb_{name} counter");
        let _ = writeln!(out, "stickylb_{name} {lost}");
    }
    if let Some(c) = counted {
        gauge(
            &mut out,
            "clients_counted_age_seconds",
            "Time since the walk of the affinity table that counted backend_clients ended.",
            c.age_ms as f64 / 1000.0,
        );
        gauge(
            &mut out,
            "clients_count_duration_seconds",
            "How long that walk took.",
            c.walk_ms as f64 / 1000.0,
        );
        gauge(
            &mut out,
            "affinity_entries",
            "Affinity entries that walk saw, live or not.",
            c.entries as f64,
        );
    }
    out
}

/// The affinity table's capacity (the running maps' `affinity_capacity`), so
/// that its fill is `affinity_entries / affinity_capacity`. Always there,
/// unlike `affinity_entries`, which waits for the first walk.
pub fn render_affinity_capacity(out: &mut String, capacity: u32) {
    gauge(
        out,
        "affinity_capacity",
        "Entries the affinity table holds at most (affinity_capacity); once full, each new client evicts the least recently used entry.",
        f64::from(capacity),
    );
}

/// Reloads since the daemon started, by result, and whether the last one
/// failed: the config file on disk is then not the one that runs.
pub fn render_reloads(out: &mut String, ok: u64, failed: u64, last_failed: bool) {
    family(
        out,
        "reloads_total",
        "counter",
        "Config reloads (SIGHUP, `stickylb reload`, `systemctl reload`) since the daemon started, by result; a failed one changes nothing.",
        [
            ("result=\"ok\"".to_owned(), ok as f64),
            ("result=\"failed\"".to_owned(), failed as f64),
        ],
    );
    gauge(
        out,
        "reload_failed",
        "1 while the last reload failed: the config file on disk is not the one that runs (`stickylb reload` says why).",
        f64::from(u8::from(last_failed)),
    );
}

/// A gauge without labels.
fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(out, "# HELP stickylb_{name} {help}");
    let _ = writeln!(out, "# TYPE stickylb_{name} gauge");
    let _ = writeln!(out, "stickylb_{name} {v}");
}

/// The global counter that counts lost sync events, not passed frames.
fn lost_name() -> &'static str {
    lb_common::global_counter::NAMES[lb_common::global_counter::SYNC_EVENTS_LOST as usize]
}

/// One metric family: `stickylb_<name>`, one series per (labels, value).
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: impl IntoIterator<Item = (String, f64)>,
) {
    let _ = writeln!(out, "# HELP stickylb_{name} {help}");
    let _ = writeln!(out, "# TYPE stickylb_{name} {kind}");
    for (labels, v) in rows {
        let _ = writeln!(out, "stickylb_{name}{{{labels}}} {v}");
    }
}

/// The families of a counter table, for `rows` of (labels, counters). A
/// family of its own comes where its counter is listed; a shared family
/// where its last member is, so that it follows the counters it sums up,
/// with one series per row and reason, row by row.
fn counter_families<S: CounterTable>(out: &mut String, rows: &[(String, &S)]) {
    let table = S::COUNTERS;
    for (i, c) in table.iter().enumerate() {
        for m in c.metrics {
            match m {
                Metric::Own(name) => family(
                    out,
                    name,
                    "counter",
                    c.help,
                    rows.iter()
                        .map(|(labels, s)| (labels.clone(), (c.get)(s) as f64)),
                ),
                Metric::Reason(f, _) => {
                    let member = |later: &Counter<S>| {
                        later
                            .metrics
                            .iter()
                            .any(|m| matches!(m, Metric::Reason(g, _) if g.name == f.name))
                    };
                    if table[i + 1..].iter().any(member) {
                        continue;
                    }
                    let reasons = reasons::<S>(f);
                    family(
                        out,
                        f.name,
                        "counter",
                        f.help,
                        rows.iter().flat_map(|(labels, s)| {
                            reasons.iter().map(move |(reason, c)| {
                                (format!("{labels},reason=\"{reason}\""), (c.get)(s) as f64)
                            })
                        }),
                    );
                }
            }
        }
    }
}

/// The members of a shared family, in table order, with their reason.
fn reasons<S: CounterTable>(family: &Family) -> Vec<(&'static str, &'static Counter<S>)> {
    S::COUNTERS
        .iter()
        .flat_map(|c| {
            c.metrics.iter().filter_map(move |m| match m {
                Metric::Reason(f, reason) if f.name == family.name => Some((*reason, c)),
                _ => None,
            })
        })
        .collect()
}

/// Scrapes served at once; more connections are closed at once. Prometheus
/// scrapes one at a time.
const MAX_METRICS_CONNECTIONS: usize = 32;
/// A scraper sends its request as soon as it is connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A scraper that does not read the answer is not waited for longer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Metrics connections closed at once because the cap was reached.
pub(crate) static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Serves `/metrics`; each scrape asks the main loop for fresh text.
pub async fn serve(listener: TcpListener, to_main: mpsc::Sender<oneshot::Sender<String>>) {
    let mut cap = ConnectionCap::new("metrics", MAX_METRICS_CONNECTIONS, &REFUSED);
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                crate::control::accept_failed("metrics", &e).await;
                continue;
            }
        };
        let Some(permit) = cap.admit() else {
            continue;
        };
        let to_main = to_main.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = [0u8; 2048];
            let Ok(Ok(n)) = tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut buf)).await
            else {
                return;
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if head.starts_with("GET /metrics") || head.starts_with("GET / ") {
                let (tx, rx) = oneshot::channel();
                let body = if to_main.send(tx).await.is_ok() {
                    rx.await.ok()
                } else {
                    None
                };
                match body {
                    Some(b) => ("200 OK", b),
                    None => ("503 Service Unavailable", "shutting down\n".to_owned()),
                }
            } else {
                ("404 Not Found", "try /metrics\n".to_owned())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(REPLY_TIMEOUT, stream.write_all(resp.as_bytes())).await;
        });
    }
}

/// The daemon's own problems (see `api::LocalErrors`), appended to `out`.
pub fn render_local_errors(out: &mut String, l: &LocalErrors) {
    family(
        out,
        "local_check_errors_total",
        "counter",
        "Health checks that could not run for a reason of this host's (out of descriptors, memory or local ports); they count for no backend.",
        [(String::new(), l.checks as f64)],
    );
    family(
        out,
        "refused_connections_total",
        "counter",
        "Connections closed at once because their listener had as many open as it serves.",
        [
            ("listener=\"metrics\"".to_owned(), l.refused_metrics as f64),
            ("listener=\"control\"".to_owned(), l.refused_control as f64),
        ],
    );
}

/// The affinity sync's families: per peer, and rejected connections by reason.
pub fn render_sync(out: &mut String, s: &SyncStatus) {
    let per_peer = |f: fn(&crate::api::PeerStatus) -> f64| {
        s.peers
            .iter()
            .map(move |p| (format!("peer=\"{}\"", p.address), f(p)))
            .collect::<Vec<_>>()
    };
    gauge(
        out,
        "sync_ready",
        "1 once this node has its cluster's table (pulled from a peer, or none answered in time).",
        f64::from(u8::from(s.ready)),
    );
    family(
        out,
        "sync_peer_up",
        "gauge",
        "1 while this node's connection to the peer is up.",
        per_peer(|p| f64::from(u8::from(p.state == PeerState::Up))),
    );
    family(
        out,
        "sync_entries_sent_total",
        "counter",
        "Affinity entries sent to the peer (batches and corrections).",
        per_peer(|p| p.sent as f64),
    );
    family(
        out,
        "sync_entries_received_total",
        "counter",
        "Affinity entries received from the peer (snapshots included).",
        per_peer(|p| p.received as f64),
    );
    family(
        out,
        "sync_entries_applied_total",
        "counter",
        "Received entries written or refreshed here.",
        per_peer(|p| p.applied as f64),
    );
    family(
        out,
        "sync_entries_not_applied_total",
        "counter",
        "Received entries not applied: unknown VIP or backend, a dead backend here, expired, \
         or losing to this node's pin (answered with a correction).",
        per_peer(|p| p.rejected as f64),
    );
    family(
        out,
        "sync_corrections_sent_total",
        "counter",
        "This node's pins sent back to the peer because they won over the peer's.",
        per_peer(|p| p.corrections_sent as f64),
    );
    family(
        out,
        "sync_dropped_total",
        "counter",
        "Entries for the peer dropped from its full queue (the oldest go).",
        per_peer(|p| p.dropped as f64),
    );
    family(
        out,
        "sync_queued",
        "gauge",
        "Entries waiting to be sent to the peer.",
        per_peer(|p| p.queued as f64),
    );
    family(
        out,
        "sync_rejected_total",
        "counter",
        "Sync connections dropped for failing the handshake, an HMAC, the sequence or the parse; nothing they sent was applied.",
        crate::sync::wire::Reject::ALL.iter().map(|r| {
            (
                format!("reason=\"{}\"", r.name()),
                s.rejected.get(r.name()).copied().unwrap_or(0) as f64,
            )
        }),
    );
    family(
        out,
        "sync_untranslated_total",
        "counter",
        "Data-path sync events whose ids were not in the books (not sent).",
        [(String::new(), s.untranslated as f64)],
    );
    let _ = writeln!(
        out,
        "# HELP stickylb_sync_lag_ms From the sender's data path last seeing a client to its entry applied here (both nodes' wall clocks: skew adds), over the last {} entries.",
        crate::sync::LAG_SAMPLES
    );
    let _ = writeln!(out, "# TYPE stickylb_sync_lag_ms summary");
    for p in &s.peers {
        for (q, v) in [("0.5", p.lag_p50_ms), ("0.99", p.lag_p99_ms)] {
            if let Some(v) = v {
                let _ = writeln!(
                    out,
                    "stickylb_sync_lag_ms{{peer=\"{}\",quantile=\"{q}\"}} {v}",
                    p.address
                );
            }
        }
        let _ = writeln!(
            out,
            "stickylb_sync_lag_ms_sum{{peer=\"{}\"}} {}",
            p.address, p.lag_sum_ms
        );
        let _ = writeln!(
            out,
            "stickylb_sync_lag_ms_count{{peer=\"{}\"}} {}",
            p.address, p.lag_count
        );
    }
}

/// Whether the node is in maintenance (`stickylb maintenance on`).
pub fn render_maintenance(out: &mut String, on: bool) {
    gauge(
        out,
        "maintenance",
        "1 while the node is in maintenance: no VIP announced, what arrives still forwarded.",
        f64::from(u8::from(on)),
    );
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for metrics on {addr} ({e}); change metrics_listen or set it to \"off\""
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_and_drops_have_a_series_per_vip_and_reason() {
        let vip = |name: &str, base: u64| VipStatus {
            name: name.into(),
            address: std::net::Ipv4Addr::new(192, 0, 2, 10),
            port: 80,
            protocol: "tcp".into(),
            table_size: 7,
            affinity_timeout_s: 300.0,
            forwarding: crate::config::Forwarding::Dsr,
            alive_backends: 0,
            warming: false,
            warming_why: None,
            announce: None,
            counters: VipStats {
                new_clients: base + 1,
                repick_expired: base + 2,
                repick_dead: base + 3,
                drop_no_backend: base + 4,
                drop_fragment: base + 5,
                drop_loop: base + 6,
                ..VipStats::default()
            },
            backends: Vec::new(),
        };
        let text = render(&[vip("web", 0), vip("dns", 10)], &[], None);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("misses_total{") || l.contains("drops_total{"))
            .collect();
        assert_eq!(
            lines,
            [
                "stickylb_vip_affinity_misses_total{vip=\"web\",reason=\"new\"} 1",
                "stickylb_vip_affinity_misses_total{vip=\"web\",reason=\"expired\"} 2",
                "stickylb_vip_affinity_misses_total{vip=\"web\",reason=\"backend_dead\"} 3",
                "stickylb_vip_affinity_misses_total{vip=\"dns\",reason=\"new\"} 11",
                "stickylb_vip_affinity_misses_total{vip=\"dns\",reason=\"expired\"} 12",
                "stickylb_vip_affinity_misses_total{vip=\"dns\",reason=\"backend_dead\"} 13",
                "stickylb_vip_drops_total{vip=\"web\",reason=\"no_backend\"} 4",
                "stickylb_vip_drops_total{vip=\"web\",reason=\"fragment\"} 5",
                "stickylb_vip_drops_total{vip=\"web\",reason=\"loop\"} 6",
                "stickylb_vip_drops_total{vip=\"web\",reason=\"no_neighbour\"} 0",
                "stickylb_vip_drops_total{vip=\"web\",reason=\"no_route\"} 0",
                "stickylb_vip_drops_total{vip=\"web\",reason=\"too_big\"} 0",
                "stickylb_vip_drops_total{vip=\"dns\",reason=\"no_backend\"} 14",
                "stickylb_vip_drops_total{vip=\"dns\",reason=\"fragment\"} 15",
                "stickylb_vip_drops_total{vip=\"dns\",reason=\"loop\"} 16",
                "stickylb_vip_drops_total{vip=\"dns\",reason=\"no_neighbour\"} 0",
                "stickylb_vip_drops_total{vip=\"dns\",reason=\"no_route\"} 0",
                "stickylb_vip_drops_total{vip=\"dns\",reason=\"too_big\"} 0",
            ]
        );
    }

    /// Every counter's table name is its key in the status JSON (the
    /// counters are flattened into each VIP's and backend's object).
    #[test]
    fn reloads_are_counted_by_result_and_the_last_failure_shown() {
        let mut out = String::new();
        render_reloads(&mut out, 3, 1, true);
        assert!(
            out.contains("# TYPE stickylb_reloads_total counter\n"),
            "{out}"
        );
        assert!(
            out.contains("stickylb_reloads_total{result=\"ok\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("stickylb_reloads_total{result=\"failed\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("stickylb_reload_failed 1\n"), "{out}");
        let mut out = String::new();
        render_reloads(&mut out, 0, 0, false);
        assert!(out.contains("stickylb_reload_failed 0\n"), "{out}");
    }

    #[test]
    fn counter_names_are_the_json_keys() {
        fn keys<S: CounterTable + serde::Serialize + Default>() -> Vec<String> {
            let json = serde_json::to_value(S::default()).unwrap();
            let mut keys: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        }
        fn names<S: CounterTable>() -> Vec<String> {
            let mut names: Vec<String> = S::COUNTERS.iter().map(|c| c.name.into()).collect();
            names.sort();
            names
        }
        assert_eq!(keys::<VipStats>(), names::<VipStats>());
        assert_eq!(keys::<BackendStats>(), names::<BackendStats>());
    }

    /// The whole text, pinned: the lines before the counter table drove
    /// it, plus `probed`.
    #[test]
    fn whole_exposition() {
        let backend = crate::lb::BackendStatus {
            id: 0,
            address: "10.0.0.11:80".parse().unwrap(),
            state: crate::api::BackendState::Up,
            reason: String::new(),
            weight: 1,
            drained: false,
            mac: None,
            mac_source: crate::lb::MacSource::Unknown,
            check: None,
            check_latency_ms: Some(2.5),
            slots: 7,
            clients: 4,
            counters: BackendStats {
                packets: 21,
                bytes: 22,
                new_clients: 23,
            },
            from_config: true,
            checker_restarts: 0,
        };
        let vip = VipStatus {
            name: "web".into(),
            address: std::net::Ipv4Addr::new(192, 0, 2, 10),
            port: 80,
            protocol: "tcp".into(),
            table_size: 7,
            affinity_timeout_s: 300.0,
            forwarding: crate::config::Forwarding::Dsr,
            alive_backends: 1,
            warming: false,
            warming_why: None,
            announce: None,
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
                drop_loop: 10,
                not_pinned_syn: 11,
                not_pinned_udp_budget: 12,
                ..Default::default()
            },
            backends: vec![backend],
        };
        let text = render(&[vip], &[("pass_not_ipv4", 31), ("pass_not_vip", 32)], None);
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "# HELP stickylb_vip_packets_total Frames forwarded.",
                "# TYPE stickylb_vip_packets_total counter",
                "stickylb_vip_packets_total{vip=\"web\"} 1",
                "# HELP stickylb_vip_bytes_total Bytes forwarded.",
                "# TYPE stickylb_vip_bytes_total counter",
                "stickylb_vip_bytes_total{vip=\"web\"} 2",
                "# HELP stickylb_vip_new_clients_total Clients pinned by the Maglev table.",
                "# TYPE stickylb_vip_new_clients_total counter",
                "stickylb_vip_new_clients_total{vip=\"web\"} 3",
                "# HELP stickylb_vip_affinity_hits_total Frames forwarded by an affinity entry.",
                "# TYPE stickylb_vip_affinity_hits_total counter",
                "stickylb_vip_affinity_hits_total{vip=\"web\"} 4",
                "# HELP stickylb_vip_affinity_misses_total Frames of clients without a usable affinity entry, by reason.",
                "# TYPE stickylb_vip_affinity_misses_total counter",
                "stickylb_vip_affinity_misses_total{vip=\"web\",reason=\"new\"} 3",
                "stickylb_vip_affinity_misses_total{vip=\"web\",reason=\"expired\"} 5",
                "stickylb_vip_affinity_misses_total{vip=\"web\",reason=\"backend_dead\"} 6",
                "# HELP stickylb_vip_probed_total New pins that had to skip a dead backend's Maglev slot.",
                "# TYPE stickylb_vip_probed_total counter",
                "stickylb_vip_probed_total{vip=\"web\"} 7",
                "# HELP stickylb_vip_not_pinned_total Frames of clients without an entry, forwarded by the Maglev table without pinning the client, by reason.",
                "# TYPE stickylb_vip_not_pinned_total counter",
                "stickylb_vip_not_pinned_total{vip=\"web\",reason=\"syn\"} 11",
                "stickylb_vip_not_pinned_total{vip=\"web\",reason=\"udp_budget\"} 12",
                "# HELP stickylb_vip_drops_total Frames dropped, by reason.",
                "# TYPE stickylb_vip_drops_total counter",
                "stickylb_vip_drops_total{vip=\"web\",reason=\"no_backend\"} 8",
                "stickylb_vip_drops_total{vip=\"web\",reason=\"fragment\"} 9",
                "stickylb_vip_drops_total{vip=\"web\",reason=\"loop\"} 10",
                "stickylb_vip_drops_total{vip=\"web\",reason=\"no_neighbour\"} 0",
                "stickylb_vip_drops_total{vip=\"web\",reason=\"no_route\"} 0",
                "stickylb_vip_drops_total{vip=\"web\",reason=\"too_big\"} 0",
                "# HELP stickylb_vip_too_big_total Frames that would not fit the egress MTU once encapsulated, by what was done.",
                "# TYPE stickylb_vip_too_big_total counter",
                "stickylb_vip_too_big_total{vip=\"web\",reason=\"icmp_sent\"} 0",
                "stickylb_vip_too_big_total{vip=\"web\",reason=\"dropped\"} 0",
                "# HELP stickylb_vip_icmp_total ICMP errors about a client's flow, by what was done with them.",
                "# TYPE stickylb_vip_icmp_total counter",
                "stickylb_vip_icmp_total{vip=\"web\",reason=\"forwarded\"} 0",
                "stickylb_vip_icmp_total{vip=\"web\",reason=\"relayed\"} 0",
                "# HELP stickylb_backend_up 1 if the backend is alive in the data path.",
                "# TYPE stickylb_backend_up gauge",
                "stickylb_backend_up{vip=\"web\",backend=\"10.0.0.11:80\"} 1",
                "# HELP stickylb_backend_packets_total Frames forwarded to the backend.",
                "# TYPE stickylb_backend_packets_total counter",
                "stickylb_backend_packets_total{vip=\"web\",backend=\"10.0.0.11:80\"} 21",
                "# HELP stickylb_backend_bytes_total Bytes forwarded to the backend.",
                "# TYPE stickylb_backend_bytes_total counter",
                "stickylb_backend_bytes_total{vip=\"web\",backend=\"10.0.0.11:80\"} 22",
                "# HELP stickylb_backend_new_clients_total Clients pinned to the backend.",
                "# TYPE stickylb_backend_new_clients_total counter",
                "stickylb_backend_new_clients_total{vip=\"web\",backend=\"10.0.0.11:80\"} 23",
                "# HELP stickylb_backend_clients Clients with a live affinity entry.",
                "# TYPE stickylb_backend_clients gauge",
                "stickylb_backend_clients{vip=\"web\",backend=\"10.0.0.11:80\"} 4",
                "# HELP stickylb_backend_check_latency_seconds Duration of the last health check.",
                "# TYPE stickylb_backend_check_latency_seconds gauge",
                "stickylb_backend_check_latency_seconds{vip=\"web\",backend=\"10.0.0.11:80\"} 0.0025",
                "# HELP stickylb_checker_restarts_total Times the backend's health checker died and was started again.",
                "# TYPE stickylb_checker_restarts_total counter",
                "stickylb_checker_restarts_total{vip=\"web\",backend=\"10.0.0.11:80\"} 0",
                "# HELP stickylb_passed_frames_total Frames left to the kernel, by reason.",
                "# TYPE stickylb_passed_frames_total counter",
                "stickylb_passed_frames_total{reason=\"pass_not_ipv4\"} 31",
                "stickylb_passed_frames_total{reason=\"pass_not_vip\"} 32",
            ]
        );
    }

    #[test]
    fn lost_sync_events_are_not_passed_frames() {
        let text = render(&[], &[("pass_not_vip", 3), ("sync_events_lost", 7)], None);
        assert!(text.contains("stickylb_passed_frames_total{reason=\"pass_not_vip\"} 3"));
        assert!(!text.contains("reason=\"sync_events_lost\""), "{text}");
        assert!(text.contains("# TYPE stickylb_sync_events_lost_total counter"));
        assert!(
            text.contains("\nstickylb_sync_events_lost_total 7\n"),
            "{text}"
        );
    }

    #[test]
    fn backend_up_is_one_for_the_alive_states() {
        use crate::api::{BackendState, MacSource};
        let states = [
            BackendState::Up,
            BackendState::Draining,
            BackendState::UpNoMac,
            BackendState::Down,
            BackendState::Unknown,
        ];
        let backends = states
            .iter()
            .enumerate()
            .map(|(i, &state)| BackendStatus {
                id: i as u32,
                address: std::net::SocketAddrV4::new(
                    std::net::Ipv4Addr::new(10, 0, 0, 1),
                    i as u16,
                ),
                state,
                reason: String::new(),
                weight: 1,
                drained: false,
                mac: None,
                mac_source: MacSource::Unknown,
                check: None,
                check_latency_ms: None,
                slots: 0,
                clients: 0,
                counters: Default::default(),
                from_config: true,
                checker_restarts: 0,
            })
            .collect();
        let v = VipStatus {
            name: "web".into(),
            address: std::net::Ipv4Addr::new(192, 0, 2, 10),
            port: 80,
            protocol: "tcp".into(),
            table_size: 7,
            affinity_timeout_s: 300.0,
            forwarding: crate::config::Forwarding::Dsr,
            alive_backends: 2,
            warming: false,
            warming_why: None,
            announce: None,
            counters: VipStats::default(),
            backends,
        };
        let text = render(&[v], &[], None);
        let up: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("stickylb_backend_up{"))
            .collect();
        assert_eq!(
            up,
            [
                "stickylb_backend_up{vip=\"web\",backend=\"10.0.0.1:0\"} 1",
                "stickylb_backend_up{vip=\"web\",backend=\"10.0.0.1:1\"} 1",
                "stickylb_backend_up{vip=\"web\",backend=\"10.0.0.1:2\"} 0",
                "stickylb_backend_up{vip=\"web\",backend=\"10.0.0.1:3\"} 0",
                "stickylb_backend_up{vip=\"web\",backend=\"10.0.0.1:4\"} 0",
            ]
        );
    }

    #[test]
    fn announced_vips_and_maintenance_have_gauges() {
        use crate::api::VipAnnounce;
        let vip = |name: &str, announce: Option<VipAnnounce>| VipStatus {
            name: name.into(),
            address: std::net::Ipv4Addr::new(192, 0, 2, 10),
            port: 80,
            protocol: "tcp".into(),
            table_size: 7,
            affinity_timeout_s: 300.0,
            forwarding: crate::config::Forwarding::Dsr,
            alive_backends: 0,
            warming: false,
            warming_why: None,
            announce,
            counters: VipStats::default(),
            backends: Vec::new(),
        };
        let gauge_lines = |text: &str, name: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with(name))
                .map(str::to_owned)
                .collect()
        };
        // Without [announce]: no family at all.
        let text = render(&[vip("web", None)], &[], None);
        assert!(!text.contains("vip_announced"), "{text}");
        let on = VipAnnounce {
            announced: true,
            reason: None,
        };
        let off = VipAnnounce {
            announced: false,
            reason: Some(crate::announce::NotAnnounced::NoAliveBackend),
        };
        let text = render(&[vip("web", Some(on)), vip("dns", Some(off))], &[], None);
        assert_eq!(
            gauge_lines(&text, "stickylb_vip_announced"),
            [
                "stickylb_vip_announced{vip=\"web\"} 1",
                "stickylb_vip_announced{vip=\"dns\"} 0"
            ]
        );
        for (on, want) in [
            (true, "stickylb_maintenance 1"),
            (false, "stickylb_maintenance 0"),
        ] {
            let mut text = String::new();
            render_maintenance(&mut text, on);
            assert_eq!(gauge_lines(&text, "stickylb_maintenance"), [want]);
            assert!(text.contains("# TYPE stickylb_maintenance gauge"));
        }
    }

    #[test]
    fn the_counts_age_comes_last_once_counted() {
        let counted = ClientsCounted {
            age_ms: 1500,
            walk_ms: 320,
            entries: 1_000_000,
        };
        let text = render(&[], &[], Some(&counted));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[lines.len() - 9..],
            [
                "# HELP stickylb_clients_counted_age_seconds Time since the walk of the affinity table that counted backend_clients ended.",
                "# TYPE stickylb_clients_counted_age_seconds gauge",
                "stickylb_clients_counted_age_seconds 1.5",
                "# HELP stickylb_clients_count_duration_seconds How long that walk took.",
                "# TYPE stickylb_clients_count_duration_seconds gauge",
                "stickylb_clients_count_duration_seconds 0.32",
                "# HELP stickylb_affinity_entries Affinity entries that walk saw, live or not.",
                "# TYPE stickylb_affinity_entries gauge",
                "stickylb_affinity_entries 1000000",
            ]
        );
        assert!(!render(&[], &[], None).contains("clients_counted"));
    }

    #[test]
    fn affinity_capacity_follows_the_entries() {
        let counted = ClientsCounted {
            age_ms: 0,
            walk_ms: 0,
            entries: 300,
        };
        let mut text = render(&[], &[], Some(&counted));
        render_affinity_capacity(&mut text, 65536);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[lines.len() - 6..],
            [
                "# HELP stickylb_affinity_entries Affinity entries that walk saw, live or not.",
                "# TYPE stickylb_affinity_entries gauge",
                "stickylb_affinity_entries 300",
                "# HELP stickylb_affinity_capacity Entries the affinity table holds at most (affinity_capacity); once full, each new client evicts the least recently used entry.",
                "# TYPE stickylb_affinity_capacity gauge",
                "stickylb_affinity_capacity 65536",
            ]
        );
        // Before the first walk: the capacity alone.
        let mut text = String::new();
        render_affinity_capacity(&mut text, 1024);
        assert!(
            text.ends_with("\nstickylb_affinity_capacity 1024\n"),
            "{text}"
        );
    }

    #[test]
    fn sync_families_have_a_series_per_peer_and_reason() {
        let peer = |addr: &str, up: bool| crate::api::PeerStatus {
            address: addr.parse().unwrap(),
            state: if up { PeerState::Up } else { PeerState::Down },
            since_s: 1,
            sent: 10,
            received: 20,
            applied: 18,
            rejected: 2,
            corrections_sent: 0,
            dropped: 3,
            queued: 4,
            last_error: None,
            lag_p50_ms: up.then_some(5),
            lag_p99_ms: up.then_some(9),
            lag_count: 20,
            lag_sum_ms: 120,
        };
        let s = SyncStatus {
            listen: "10.0.0.1:7946".parse().unwrap(),
            ready: true,
            joined_from: None,
            rejected: [("handshake".to_owned(), 7)].into_iter().collect(),
            untranslated: 1,
            from_unknown_address: 0,
            peers: vec![peer("10.0.0.2:7946", true), peer("10.0.0.3:7946", false)],
        };
        let mut text = String::new();
        render_sync(&mut text, &s);
        for line in [
            "stickylb_sync_ready 1",
            "stickylb_sync_peer_up{peer=\"10.0.0.2:7946\"} 1",
            "stickylb_sync_peer_up{peer=\"10.0.0.3:7946\"} 0",
            "stickylb_sync_entries_sent_total{peer=\"10.0.0.2:7946\"} 10",
            "stickylb_sync_entries_received_total{peer=\"10.0.0.3:7946\"} 20",
            "stickylb_sync_dropped_total{peer=\"10.0.0.2:7946\"} 3",
            "stickylb_sync_rejected_total{reason=\"handshake\"} 7",
            "stickylb_sync_rejected_total{reason=\"frame_mac\"} 0",
            "stickylb_sync_lag_ms{peer=\"10.0.0.2:7946\",quantile=\"0.99\"} 9",
            "stickylb_sync_lag_ms_count{peer=\"10.0.0.3:7946\"} 20",
            "# TYPE stickylb_sync_lag_ms summary",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(
            !text.contains("stickylb_sync_lag_ms{peer=\"10.0.0.3:7946\""),
            "no quantiles without samples"
        );
    }
}

#[cfg(test)]
mod serve_tests;
