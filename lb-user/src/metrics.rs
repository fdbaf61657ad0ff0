//! Prometheus text exposition of the daemon's status, over a minimal HTTP
//! server (one GET per connection) on the configured, by default loopback,
//! address.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use crate::lb::VipStatus;

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
    family(
        "vip_affinity_misses_total",
        "counter",
        "Frames of clients without a usable affinity entry, by reason.",
        vips.iter()
            .flat_map(|v| {
                [
                    (
                        format!("{},reason=\"new\"", vip(v)),
                        v.counters.new_clients as f64,
                    ),
                    (
                        format!("{},reason=\"expired\"", vip(v)),
                        v.counters.repick_expired as f64,
                    ),
                    (
                        format!("{},reason=\"backend_dead\"", vip(v)),
                        v.counters.repick_dead as f64,
                    ),
                ]
            })
            .collect(),
    );
    family(
        "vip_drops_total",
        "counter",
        "Frames dropped, by reason.",
        vips.iter()
            .flat_map(|v| {
                [
                    (
                        format!("{},reason=\"no_backend\"", vip(v)),
                        v.counters.drop_no_backend as f64,
                    ),
                    (
                        format!("{},reason=\"fragment\"", vip(v)),
                        v.counters.drop_fragment as f64,
                    ),
                ]
            })
            .collect(),
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
