//! The affinity sync and node loss: what the sync costs the XDP path (the
//! sync rows of the XDP cost section), how many entries a second one node
//! sends and its peer applies, the lag at given new-client rates, and how
//! long the router takes to stop using a node that vanished, with BFD,
//! with BGP's hold timer alone, and when the node's BIRD dies.
//!
//! Two real daemons on the multi-node test bed (`crate::cluster`): new
//! clients are pinned on node A by running A's own program (loaded on A's
//! pinned maps) with BPF_PROG_TEST_RUN on crafted frames, so that A's
//! daemon drains their events from the real ring and sends them to B,
//! whose daemon applies them to its real table.

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    thread,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use lb_common::global_counter;
use lb_user::{
    api::PeerStatus,
    dataplane::{Dataplane, LoadOptions},
};
use serde_json::{Value, json};

use super::{Ctx, Plot, Section, Table, median, plot, progress};
use crate::cluster::{Cluster, ClusterOptions, VIP, node_addr};

const SYNC_PORT: u16 = 7946;
/// Room for every client the section pins (the test bed's default is
/// smaller).
const CAPACITY: u32 = 524_288;
/// Clients of the section come from 100.64.0.0/10, a fresh range per run.
const CLIENT_BASE: u32 = 0x6440_0000;
/// The sync's limits for the throughput run: far above what is measured, so
/// that the figure is the transport's and the daemons', not the bucket's.
const MAX_RATE: u32 = 10_000_000;
const HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 2";
/// How often the bench reads the peer's status while it waits.
const POLL: Duration = Duration::from_millis(5);

struct Knobs {
    /// New clients pushed through node A for the throughput run.
    burst: u32,
    /// (new clients per second, seconds) for the lag runs.
    rates: Vec<(u32, f64)>,
    /// Repetitions of the throughput run and of each node-loss case.
    losses: usize,
}

impl Knobs {
    fn of(quick: bool) -> Self {
        if quick {
            Self {
                burst: 10_000,
                rates: vec![(1_000, 1.5), (10_000, 1.0)],
                losses: 1,
            }
        } else {
            Self {
                burst: 100_000,
                rates: vec![(1_000, 3.0), (10_000, 3.0)],
                losses: 3,
            }
        }
    }
}

fn key_of(s: &Value, key: &str) -> Option<f64> {
    s["rows"]
        .as_array()?
        .iter()
        .find(|r| r["key"] == key)?
        .get("ns_per_packet")?
        .as_f64()
}

fn ratio_of(s: &Value, key: &str) -> Option<f64> {
    s["rows"]
        .as_array()?
        .iter()
        .find(|r| r["key"] == key)?
        .get("ratio_to_floor_forwarder")?
        .as_f64()
}

/// The sync rows of the XDP cost section, measured again here (on another
/// thread: the section pins its thread to a CPU).
fn xdp(ctx: &Ctx) -> Result<(Table, Value, String), String> {
    progress("sync: XDP cost of the events (the XDP cost section's sync rows)");
    let c = ctx.clone();
    let s = thread::spawn(move || super::xdp_cost::run(&c))
        .join()
        .map_err(|_| "the XDP cost section panicked")??;
    let j = s.json;
    let cases = [
        (
            "new client (miss → Maglev → insert)",
            "per call",
            "new_client_call",
            "new_client_sync_call",
            "NEW event, ring drained in batches",
        ),
        (
            "new client, reader caught up",
            "per call",
            "new_client_call",
            "new_client_sync_wake_call",
            "NEW event, ring drained after every call",
        ),
        (
            "affinity hit + last-seen refresh",
            "per call",
            "refresh_call",
            "refresh_sync_call",
            "REFRESH event (at most once per refresh interval per client)",
        ),
        (
            "affinity hit, 1 client",
            "repeat",
            "hit_1",
            "hit_1_sync",
            "none (a hit writes no event)",
        ),
    ];
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut head = Vec::new();
    for (path, method, off, on, event) in cases {
        let (Some(a), Some(b)) = (key_of(&j, off), key_of(&j, on)) else {
            return Err(format!("the XDP cost section has no rows {off} / {on}"));
        };
        let (ra, rb) = (ratio_of(&j, off), ratio_of(&j, on));
        let fr = |r: Option<f64>| r.map_or("–".into(), |r| format!("{r:.2}×"));
        rows.push(vec![
            path.to_string(),
            method.to_string(),
            plot::fmt_num(a),
            plot::fmt_num(b),
            format!("{:+.1}", b - a),
            format!("{} → {}", fr(ra), fr(rb)),
            event.to_string(),
        ]);
        raw.push(json!({
            "path": path, "off_key": off, "on_key": on, "off_ns": a, "on_ns": b,
            "extra_ns": b - a, "off_ratio": ra, "on_ratio": rb,
        }));
        head.push(format!("{path} {:+.1} ns", b - a));
    }
    Ok((
        Table {
            title: "Extra ns per packet on the XDP path with sync on (BPF_PROG_TEST_RUN; the XDP \
                    cost section's method and frames)"
                .into(),
            headers: [
                "path",
                "method",
                "sync off ns",
                "sync on ns",
                "extra ns",
                "× floor forwarder, off → on",
                "event written",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        },
        json!({ "rows": raw, "xdp_section": j }),
        format!("XDP cost of sync: {}", head.join("; ")),
    ))
}

/// A TCP data segment from `client` to the test bed's VIP (a SYN pins
/// nothing), 64 bytes or so.
fn data_frame(client: Ipv4Addr, sport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(client.octets(), VIP.octets(), 64)
        .tcp(sport, 80, 1001, 64240)
        .ack(1)
        .psh();
    let mut v = Vec::new();
    b.write(&mut v, b"GET / HTTP/1.1\r\n\r\n")
        .expect("build a frame");
    v
}

/// Node A's program, loaded again on A's pinned maps: what it pins lands in
/// A's table and its events in A's ring, which A's daemon drains.
struct Pusher {
    dp: Dataplane,
    next: u32,
}

impl Pusher {
    fn open(c: &Cluster) -> Result<Self, String> {
        let dp = Dataplane::load(&LoadOptions {
            affinity_capacity: CAPACITY,
            pin_dir: Some(c.nodes[0].pin.0.clone()),
        })
        .map_err(|e| format!("load node A's program on its pins: {e:#}"))?;
        Ok(Self {
            dp,
            next: CLIENT_BASE,
        })
    }

    /// Frames of the next `n` clients, never seen before.
    fn frames(&mut self, n: u32) -> Vec<Vec<u8>> {
        let from = self.next;
        self.next += n;
        (from..self.next)
            .map(|a| data_frame(Ipv4Addr::from(a), 40000))
            .collect()
    }

    /// Runs the program on each frame; checks that each was forwarded.
    fn run(&mut self, frames: &[Vec<u8>]) -> Result<(), String> {
        for f in frames {
            let (action, _) = self
                .dp
                .test_run(f)
                .map_err(|e| format!("BPF_PROG_TEST_RUN on node A: {e:#}"))?;
            if action != super::xdp_cost::XDP_TX {
                return Err(format!("node A's program returned {action}"));
            }
        }
        Ok(())
    }

    /// Pins `n` clients never seen before.
    fn push(&mut self, n: u32) -> Result<(), String> {
        let f = self.frames(n);
        self.run(&f)
    }

    fn lost(&self) -> Result<u64, String> {
        self.dp
            .global_stats()
            .map(|g| g[global_counter::SYNC_EVENTS_LOST as usize])
            .map_err(|e| format!("read node A's counters: {e:#}"))
    }
}

fn peer(c: &Cluster, node: usize) -> Result<PeerStatus, String> {
    c.daemon(node)
        .status()?
        .sync
        .and_then(|s| s.peers.into_iter().next())
        .ok_or_else(|| format!("node {node} shows no sync peer"))
}

/// Waits until B has applied `want` entries from A in all; when.
fn wait_applied(c: &Cluster, want: u64, timeout: Duration) -> Result<Instant, String> {
    let start = Instant::now();
    loop {
        let p = peer(c, 1)?;
        if p.applied >= want {
            return Ok(Instant::now());
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "node B applied {} of {want} entries from A after {timeout:?}: {p:?}; \
                 A's side: {:?}",
                p.applied,
                peer(c, 0)
            ));
        }
        thread::sleep(POLL);
    }
}

fn daemon_config(c: &Cluster, i: usize, key: &std::path::Path, extra: &str) -> String {
    let me = node_addr(i);
    let other = node_addr(1 - i);
    c.config(i, HEALTH, "affinity_timeout = \"10m\"", "")
        .replace(
            "affinity_capacity = 65536",
            &format!("affinity_capacity = {CAPACITY}"),
        )
        + &format!(
            "\n[sync]\nlisten = \"{me}:{SYNC_PORT}\"\npeers = [\"{other}:{SYNC_PORT}\"]\n\
             key_file = \"{}\"\njoin_timeout = \"2s\"\n{extra}\n",
            key.display()
        )
}

/// Two nodes with sync, both ready with every backend alive.
fn start_pair(c: &mut Cluster, ctx: &Ctx, extra: &str) -> Result<(), String> {
    let key = c.tmp.join("sync.key");
    fs::write(&key, [b'k'; 44]).map_err(|e| e.to_string())?;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    for i in 0..2 {
        let cfg = daemon_config(c, i, &key, extra);
        c.start_daemon(i, &ctx.stickylb_bin, &cfg, &[])?;
    }
    let start = Instant::now();
    loop {
        let ok = (0..2).all(|i| {
            c.daemon(i).status().is_ok_and(|s| {
                let alive = s.vips.iter().all(|v| {
                    v.backends
                        .iter()
                        .all(|b| b.state == lb_user::api::BackendState::Up)
                });
                let up = s.sync.as_ref().is_some_and(|y| {
                    y.ready
                        && y.peers
                            .iter()
                            .all(|p| p.state == lb_user::api::PeerState::Up)
                });
                alive && up
            })
        });
        if ok {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "the two nodes are not both ready with their peer up and every backend alive \
                 after 30 s: A {:?}; B {:?}",
                c.daemon(0).status().map(|s| s.sync),
                c.daemon(1).status().map(|s| s.sync)
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Entries per second: `n` new clients pinned on A as fast as one thread
/// can, timed until B has applied them all.
fn throughput(
    c: &Cluster,
    pusher: &mut Pusher,
    n: u32,
) -> Result<(Vec<String>, Value, f64), String> {
    progress(format!(
        "sync: {n} new clients on node A, until B has them all"
    ));
    let before_b = peer(c, 1)?;
    let before_a = peer(c, 0)?;
    let lost0 = pusher.lost()?;
    let frames = pusher.frames(n);
    let t0 = Instant::now();
    pusher.run(&frames)?;
    let pushed = t0.elapsed();
    let want = before_b.applied + u64::from(n);
    let done = wait_applied(c, want, Duration::from_secs(120))?;
    let took = done - t0;
    // A's sent count when B had them all: every entry once.
    let a = peer(c, 0)?;
    let b = peer(c, 1)?;
    let lost = pusher.lost()? - lost0;
    let sent = a.sent - before_a.sent;
    let not_applied = b.rejected - before_b.rejected;
    if lost != 0 || a.dropped != before_a.dropped || not_applied != 0 {
        return Err(format!(
            "throughput run: {lost} events lost in the ring, {} dropped from A's queue, \
             {not_applied} not applied on B",
            a.dropped - before_a.dropped
        ));
    }
    let rate = f64::from(n) / took.as_secs_f64();
    let push_rate = f64::from(n) / pushed.as_secs_f64();
    // B finished within one drain and one flush of the last push: the sync
    // kept pace with the pusher, so its own rate is at least this.
    let behind = took - pushed;
    let kept_pace = behind <= Duration::from_millis(40);
    let row = vec![
        plot::fmt_num(f64::from(n)),
        format!("{:.0} ms ({}/s)", pushed.as_secs_f64() * 1e3, k(push_rate)),
        format!(
            "{:.0} ms ({:.0} ms after the last)",
            took.as_secs_f64() * 1e3,
            behind.as_secs_f64() * 1e3
        ),
        format!("{}{}/s", if kept_pace { "≥ " } else { "" }, k(rate)),
        sent.to_string(),
        format!("{lost} / 0 / {not_applied}"),
    ];
    let j = json!({
        "clients": n, "push_s": pushed.as_secs_f64(), "all_applied_s": took.as_secs_f64(),
        "entries_per_s": rate, "push_per_s": push_rate, "sent": sent, "lost": lost,
        "not_applied": not_applied, "behind_last_push_s": behind.as_secs_f64(),
        "kept_pace_with_the_pusher": kept_pace,
    });
    Ok((row, j, rate))
}

fn k(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Lag at `rate` new clients a second for `secs`: pinned on A at that pace
/// (in 1 ms steps), then B's own figures for the entries.
fn lag(
    c: &Cluster,
    pusher: &mut Pusher,
    rate: u32,
    secs: f64,
) -> Result<(Vec<String>, Value), String> {
    progress(format!("sync: lag at {rate} new clients/s for {secs} s"));
    let before = peer(c, 1)?;
    let total = (f64::from(rate) * secs) as u32;
    let frames = pusher.frames(total);
    let t0 = Instant::now();
    let mut done = 0u32;
    while done < total {
        let due = ((t0.elapsed().as_secs_f64() * f64::from(rate)) as u32).min(total);
        if due > done {
            pusher.run(&frames[done as usize..due as usize])?;
            done = due;
        }
        thread::sleep(Duration::from_millis(1));
    }
    let pushed = t0.elapsed();
    wait_applied(
        c,
        before.applied + u64::from(total),
        Duration::from_secs(60),
    )?;
    let b = peer(c, 1)?;
    let count = b.lag_count - before.lag_count;
    let mean = (b.lag_sum_ms - before.lag_sum_ms) as f64 / count.max(1) as f64;
    let (p50, p99) = (
        b.lag_p50_ms.ok_or("no lag figure on B")?,
        b.lag_p99_ms.ok_or("no lag figure on B")?,
    );
    let row = vec![
        format!("{}/s", k(f64::from(rate))),
        format!("{:.1}", pushed.as_secs_f64()),
        total.to_string(),
        p50.to_string(),
        p99.to_string(),
        format!("{mean:.1}"),
    ];
    let j = json!({
        "rate_per_s": rate, "seconds": pushed.as_secs_f64(), "clients": total,
        "lag_p50_ms": p50, "lag_p99_ms": p99, "lag_mean_ms": mean, "lag_samples": count,
    });
    Ok((row, j))
}

/// Every BIRD's configuration with BFD turned off (`bfd on` → `off`),
/// restarted; the BGP hold timer (3 s) is then all that notices a silent
/// peer.
fn set_bfd(c: &mut Cluster, on: bool) -> Result<(), String> {
    let (from, to) = if on {
        ("bfd off;", "bfd on;")
    } else {
        ("bfd on;", "bfd off;")
    };
    let mut files = vec![c.router_bird.config.clone()];
    files.extend(c.nodes.iter().map(|n| n.bird.config.clone()));
    for f in files {
        let text = fs::read_to_string(&f).map_err(|e| e.to_string())?;
        if !text.contains(from) {
            return Err(format!("{} has no `{from}`", f.display()));
        }
        fs::write(&f, text.replace(from, to)).map_err(|e| e.to_string())?;
    }
    c.router_bird.stop();
    c.router_bird.start(&c.router)?;
    for i in 0..c.nodes.len() {
        c.stop_bird(i);
        c.start_bird(i)?;
    }
    c.wait_sessions(c.nodes.len(), Duration::from_secs(30))?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Loss {
    LinkDown,
    BirdKilled,
}

/// Node 1 vanishes as `how`: time until the router forwards the VIP to node
/// 0 only; then node 1 comes back.
fn lose_node(c: &mut Cluster, how: Loss) -> Result<f64, String> {
    c.wait_routed(&[0, 1], Duration::from_secs(60))?;
    // Past the first keepalives of a fresh session.
    thread::sleep(Duration::from_millis(1500));
    let t0 = Instant::now();
    match how {
        Loss::LinkDown => c.set_node_link(1, false)?,
        Loss::BirdKilled => c.kill9_bird(1),
    }
    let r = c.wait_routed(&[0], Duration::from_secs(30));
    let took = t0.elapsed();
    match how {
        Loss::LinkDown => c.set_node_link(1, true)?,
        Loss::BirdKilled => c.start_bird(1)?,
    }
    r?;
    Ok(took.as_secs_f64() * 1e3)
}

fn node_loss(c: &mut Cluster, reps: usize) -> Result<(Vec<Vec<String>>, Value), String> {
    for i in 0..2 {
        c.add_vip_route(i)?;
    }
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    let mut case = |c: &mut Cluster, name: &str, how: Loss, bound: &str| -> Result<(), String> {
        let mut ms = Vec::new();
        for r in 0..reps {
            progress(format!("sync: node loss, {name} ({}/{reps})", r + 1));
            ms.push(lose_node(c, how)?);
        }
        let all: Vec<String> = ms.iter().map(|m| format!("{m:.0}")).collect();
        let med = median(&mut ms.clone());
        rows.push(vec![
            name.to_string(),
            bound.to_string(),
            format!("{med:.0}"),
            all.join(" / "),
        ]);
        raw.push(json!({ "case": name, "bound": bound, "ms": ms, "median_ms": med }));
        Ok(())
    };
    case(
        c,
        "link down, BFD (docs/bird: 100 ms × 3)",
        Loss::LinkDown,
        "200–300 ms (3 × 100 ms after the last BFD packet) + the route update",
    )?;
    case(
        c,
        "node's BIRD killed (kill -9: the kernel closes its TCP session)",
        Loss::BirdKilled,
        "at once (FIN/RST)",
    )?;
    progress("sync: node loss, BFD off (all BIRDs restarted)");
    set_bfd(c, false)?;
    case(
        c,
        "link down, BFD off, BGP hold time 3 s (keepalive 1 s)",
        Loss::LinkDown,
        "2–3 s (hold 3 s after the last keepalive)",
    )?;
    set_bfd(c, true)?;
    rows.push(vec![
        "link down, BIRD's default timers (hold 240 s, keepalive 80 s, no BFD)".into(),
        "160–240 s (hold 240 s after the last keepalive)".into(),
        "not measured".into(),
        "–".into(),
    ]);
    raw.push(json!({ "case": "default timers", "bound": "hold 240 s", "ms": null }));
    Ok((rows, Value::Array(raw)))
}

/// The node-loss case's name for the plot.
fn short_case(case: &str) -> String {
    if case.starts_with("link down, BFD (") {
        "link down, BFD".into()
    } else if case.starts_with("link down, BFD off") {
        "link down, BFD off, hold 3 s".into()
    } else if case.starts_with("node's BIRD killed") {
        "BIRD killed (TCP close)".into()
    } else {
        case.into()
    }
}

pub fn run(ctx: &Ctx) -> Result<Section, String> {
    let kn = Knobs::of(ctx.quick);
    let started = Instant::now();
    let (xdp_table, xdp_json, xdp_head) = xdp(ctx)?;

    progress("sync: the test bed (router, 2 LB nodes with BIRD, 2 backends)");
    let mut c = Cluster::up(
        &ClusterOptions {
            nodes: 2,
            backends: 2,
            clients: 1,
        },
        &ctx.backend_bin,
    )?;
    start_pair(
        &mut c,
        ctx,
        &format!("max_rate = {MAX_RATE}\nmax_queue = 1000000"),
    )?;
    let mut pusher = Pusher::open(&c)?;
    // A first small run: connections, caches and the books warm.
    pusher.push(100)?;
    wait_applied(&c, 100, Duration::from_secs(30))?;

    let mut tp_rows = Vec::new();
    let mut tp_json = Vec::new();
    let mut rates = Vec::new();
    for _ in 0..kn.losses {
        let (row, j, r) = throughput(&c, &mut pusher, kn.burst)?;
        tp_rows.push(row);
        tp_json.push(j);
        rates.push(r);
    }
    let rate = median(&mut rates);
    let mut lag_rows = Vec::new();
    let mut lag_json = Vec::new();
    for &(r, s) in &kn.rates {
        let (row, j) = lag(&c, &mut pusher, r, s)?;
        lag_rows.push(row);
        lag_json.push(j);
    }
    let st = c.daemon(0).status()?.sync.ok_or("no sync status on A")?;
    let flush_note = "flush_interval 20 ms (default), ring drained every 10 ms";
    drop(pusher);
    for i in 0..2 {
        c.stop_daemon(i)?;
    }
    let (loss_rows, loss_json) = node_loss(&mut c, kn.losses)?;
    drop(c);

    let lag_head = lag_json
        .iter()
        .map(|j| {
            format!(
                "{}/s: p50 {} ms, p99 {} ms",
                k(j["rate_per_s"].as_f64().unwrap_or(0.0)),
                j["lag_p50_ms"],
                j["lag_p99_ms"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let loss_head = loss_json
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| {
            Some(format!(
                "{} {:.0} ms",
                j["case"].as_str()?,
                j["median_ms"].as_f64()?
            ))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let loss_plot: Vec<(String, f64)> = loss_json
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| Some((short_case(j["case"].as_str()?), j["median_ms"].as_f64()?)))
        .collect();
    let secs = started.elapsed().as_secs_f64();
    Ok(Section {
        title: "Affinity sync and node loss".into(),
        method: format!(
            "*XDP path*: the sync rows of the per-packet section, measured again in this run \
             (BPF_PROG_TEST_RUN on the real object, the same frames and method; see there): the \
             same path with the program's sync events off and on. The program commits its \
             events with `BPF_RB_NO_WAKEUP` and the daemon drains the ring on a timer (half the \
             flush interval, at most 10 ms), so a reader that has caught up costs the data path \
             no wake-up.\n\n\
             *Entries per second and lag*: two real `stickylb run` daemons on the multi-node \
             test bed (tests/src/cluster.rs: router and 2 LB nodes with BIRD, 2 backends with \
             their HTTP servers, TCP health checks), `[sync]` between them (key file, \
             {flush_note}, `max_rate` {MAX_RATE} and `max_queue` 1000000 so that neither \
             bounds the figure; the defaults are 100000/s and 200000), affinity capacity \
             {CAPACITY}. New clients are pinned on node A by running A's own program, loaded on \
             A's pinned maps, with BPF_PROG_TEST_RUN on a TCP data segment from a client address \
             never seen before (a SYN pins nothing): A's daemon drains their NEW events from the \
             real ring, translates and batches them and sends them over its authenticated TCP \
             connection to B, whose daemon applies them (`Lb::apply_remote`) to its real table. \
             *Throughput*: {burst} clients pinned as fast as one thread can (frames built \
             beforehand), timed from the first until B's status shows them all applied (polled \
             every {poll} ms); when B had them all within 40 ms of the last (one drain and one \
             flush), the sync kept pace with the pusher and the rate is shown as a lower bound \
             (≥); {reps} run(s). Every run checks \
             that no event was lost in the ring, none dropped from A's queue and none refused by \
             B. *Lag*: clients pinned at a given rate (paced in 1 ms steps); p50/p99 are B's own \
             figures (`stickylb status`: over its last 1024 entries, `applied_at − (sent_ms − \
             idle_ms)`: from A's data path pinning the client to B applying it, whole ms, both \
             nodes on this host's clock), the mean over all of the run's entries.\n\n\
             *Node loss*: the same test bed, the VIP's route put in both nodes' announce table \
             (as the daemon does) so that both BIRDs announce it and the router holds an ECMP \
             route over both; then node 1 vanishes, and the time is from that moment until the \
             router's kernel route names node 0 only (polled every 5 ms with `ip route`). *Link \
             down*: node 1's interface set down (its processes keep running; only BFD or the \
             hold timer can tell). *BIRD killed*: kill -9 of node 1's BIRD (its kernel closes the \
             TCP session at once). BIRD's configs are the shipped docs/bird/*.conf (BFD 100 ms × \
             3, hold 3 s, keepalive 1 s); for *BFD off* every BIRD is restarted with `bfd off`. \
             BIRD's default timers (hold 240 s, no BFD) are not measured: the hold time is the \
             bound. {reps} repetition(s) of each case, median and each run shown. This section \
             took {secs:.0} s.",
            burst = kn.burst,
            poll = POLL.as_millis(),
            reps = kn.losses,
        ),
        tables: vec![
            xdp_table,
            Table {
                title: "Entries per second, node A → node B (two real daemons)".into(),
                headers: [
                    "new clients on A",
                    "pinned on A in",
                    "all applied on B after",
                    "entries per second",
                    "sent by A",
                    "lost in ring / dropped / not applied",
                ]
                .map(String::from)
                .to_vec(),
                rows: tp_rows,
            },
            Table {
                title: "Lag at a given new-client rate (B's figures)".into(),
                headers: [
                    "new clients per second",
                    "seconds",
                    "clients",
                    "lag p50 ms",
                    "lag p99 ms",
                    "lag mean ms",
                ]
                .map(String::from)
                .to_vec(),
                rows: lag_rows,
            },
            Table {
                title: "Node loss: time until the router stops using the node".into(),
                headers: [
                    "how the node vanished",
                    "expected",
                    "ms (median)",
                    "ms each run",
                ]
                .map(String::from)
                .to_vec(),
                rows: loss_rows,
            },
        ],
        plots: vec![Plot {
            file: "bench-sync-node-loss.svg".into(),
            svg: plot::bars(
                "Node loss: ms until the router stops using the node",
                "ms",
                &loss_plot,
            ),
            caption: "Time until the router reroutes, by how the node vanished".into(),
        }],
        json: json!({
            "xdp": xdp_json,
            "throughput": tp_json,
            "lag": lag_json,
            "node_loss": loss_json,
            "sender_status": serde_json::to_value(&st).unwrap_or(Value::Null),
            "seconds": secs,
            "quick": ctx.quick,
        }),
        headlines: vec![
            xdp_head,
            format!(
                "Sync: node A → node B {}/s entries sent and applied (two real daemons, median of {} run(s)); lag {lag_head}",
                k(rate),
                kn.losses
            ),
            format!("Node loss, time until the router reroutes: {loss_head}"),
        ],
    })
}
