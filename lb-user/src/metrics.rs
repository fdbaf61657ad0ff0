//! Prometheus text exposition of the daemon's status, over a minimal HTTP
//! server (one GET per connection) on the configured, by default loopback,
//! address.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use lb_common::{BackendStats, VipStats};

use crate::lb::VipStatus;

/// A `reason` label value and the VIP counter it reports.
type Reason = (&'static str, fn(&VipStats) -> u64);

/// Renders the exposition text from a status snapshot and the passed-frame
/// counters.
pub fn render(vips: &[VipStatus], global: &[(&str, u64)]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP stickylb_{name} {help}");
        let _ = writeln!(out, "# TYPE stickylb_{name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "stickylb_{name}{{{labels}}} {v}");
        }
    };
    let vip = |v: &VipStatus| format!("vip=\"{}\"", v.name);
    let per_vip = |f: fn(&VipStatus) -> u64| -> Vec<(String, f64)> {
        vips.iter().map(|v| (vip(v), f(v) as f64)).collect()
    };
    family(
        "vip_packets_total",
        "counter",
        "Frames forwarded.",
        per_vip(|v| v.counters.packets),
    );
    family(
        "vip_bytes_total",
        "counter",
        "Bytes forwarded.",
        per_vip(|v| v.counters.bytes),
    );
    family(
        "vip_new_clients_total",
        "counter",
        "Clients pinned by the Maglev table.",
        per_vip(|v| v.counters.new_clients),
    );
    family(
        "vip_affinity_hits_total",
        "counter",
        "Frames forwarded by an affinity entry.",
        per_vip(|v| v.counters.affinity_hits),
    );
    // One series per VIP and reason, VIP by VIP.
    let by_reason = |reasons: &[Reason]| -> Vec<(String, f64)> {
        vips.iter()
            .flat_map(|v| {
                reasons.iter().map(move |(reason, count)| {
                    (
                        format!("{},reason=\"{reason}\"", vip(v)),
                        count(&v.counters) as f64,
                    )
                })
            })
            .collect()
    };
    family(
        "vip_affinity_misses_total",
        "counter",
        "Frames of clients without a usable affinity entry, by reason.",
        by_reason(&[
            ("new", |c| c.new_clients),
            ("expired", |c| c.repick_expired),
            ("backend_dead", |c| c.repick_dead),
        ]),
    );
    family(
        "vip_drops_total",
        "counter",
        "Frames dropped, by reason.",
        by_reason(&[
            ("no_backend", |c| c.drop_no_backend),
            ("fragment", |c| c.drop_fragment),
        ]),
    );
    let per_backend = |f: &dyn Fn(&crate::lb::BackendStatus) -> f64| -> Vec<(String, f64)> {
        vips.iter()
            .flat_map(|v| {
                v.backends
                    .iter()
                    .map(move |b| (format!("{},backend=\"{}\"", vip(v), b.address), f(b)))
            })
            .collect()
    };
    family(
        "backend_up",
        "gauge",
        "1 if the backend is alive in the data path.",
        per_backend(&|b| f64::from(u8::from(b.state == "up" || b.state == "draining"))),
    );
    family(
        "backend_packets_total",
        "counter",
        "Frames forwarded to the backend.",
        per_backend(&|b| b.counters.packets as f64),
    );
    family(
        "backend_bytes_total",
        "counter",
        "Bytes forwarded to the backend.",
        per_backend(&|b| b.counters.bytes as f64),
    );
    family(
        "backend_new_clients_total",
        "counter",
        "Clients pinned to the backend.",
        per_backend(&|b| b.counters.new_clients as f64),
    );
    family(
        "backend_clients",
        "gauge",
        "Clients with a live affinity entry.",
        per_backend(&|b| b.clients as f64),
    );
    family(
        "backend_check_latency_seconds",
        "gauge",
        "Duration of the last health check.",
        per_backend(&|b| b.check_latency_ms.unwrap_or(f64::NAN) / 1000.0),
    );
    family(
        "passed_frames_total",
        "counter",
        "Frames left to the kernel, by reason.",
        global
            .iter()
            .map(|(n, v)| (format!("reason=\"{n}\""), *v as f64))
            .collect(),
    );
    out
}

/// Serves `/metrics`; each scrape asks the main loop for fresh text.
pub async fn serve(listener: TcpListener, to_main: mpsc::Sender<oneshot::Sender<String>>) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                crate::control::accept_failed("metrics", &e).await;
                continue;
            }
        };
        let to_main = to_main.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
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
            let _ = stream.write_all(resp.as_bytes()).await;
        });
    }
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
            alive_backends: 0,
            counters: VipStats {
                new_clients: base + 1,
                repick_expired: base + 2,
                repick_dead: base + 3,
                drop_no_backend: base + 4,
                drop_fragment: base + 5,
                ..VipStats::default()
            },
            backends: Vec::new(),
        };
        let text = render(&[vip("web", 0), vip("dns", 10)], &[]);
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
                "stickylb_vip_drops_total{vip=\"dns\",reason=\"no_backend\"} 14",
                "stickylb_vip_drops_total{vip=\"dns\",reason=\"fragment\"} 15",
            ]
        );
    }

    #[test]
    fn whole_exposition() {
        let backend = crate::lb::BackendStatus {
            id: 0,
            address: "10.0.0.11:80".parse().unwrap(),
            state: "up".into(),
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
        };
        let vip = VipStatus {
            name: "web".into(),
            address: std::net::Ipv4Addr::new(192, 0, 2, 10),
            port: 80,
            protocol: "tcp".into(),
            table_size: 7,
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
            backends: vec![backend],
        };
        let text = render(&[vip], &[("pass_not_ipv4", 31), ("pass_not_vip", 32)]);
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
                "# HELP stickylb_vip_drops_total Frames dropped, by reason.",
                "# TYPE stickylb_vip_drops_total counter",
                "stickylb_vip_drops_total{vip=\"web\",reason=\"no_backend\"} 8",
                "stickylb_vip_drops_total{vip=\"web\",reason=\"fragment\"} 9",
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
                "# HELP stickylb_passed_frames_total Frames left to the kernel, by reason.",
                "# TYPE stickylb_passed_frames_total counter",
                "stickylb_passed_frames_total{reason=\"pass_not_ipv4\"} 31",
                "stickylb_passed_frames_total{reason=\"pass_not_vip\"} 32",
            ]
        );
    }
}
