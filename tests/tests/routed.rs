//! End to end on the routed bed (tests/src/routed.rs): one daemon, one VIP
//! per forwarding mode — `dsr` to backends on the LB's segment, `ipip` and
//! `gue` to backends in other subnets behind the router, decapsulated by
//! `stickylb decap` — and the DSR scenarios run on all three at once:
//! stickiness and `lookup`'s prediction, a killed server, recovery, daemon
//! kill -9 and restart, drain. Then path MTU discovery through the LB: large
//! uploads to tunnel VIPs whose encapsulated frames no longer fit, first at
//! the LB's own link (the LB answers "fragmentation needed"), then at a
//! smaller link behind the router (the router's answer is relayed to the
//! client); and downloads through a small link at the client's router, whose
//! "fragmentation needed" to the VIP the LB forwards to the client's backend
//! in every mode. The scenarios run in order on one network and print their
//! figures. Needs root (CI is root).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::{Duration, Instant},
};

use lb_common::VipStats;
use lb_user::api::BackendState;
use stickylb_tests::{
    cluster::FAST_HEALTH,
    netns::wait_for,
    routed::{
        LB_ADDR, Routed, RoutedOptions, TcpServer, VipSpec, cached_pmtu, download, upload, vip,
    },
    traffic::{Load, REQUEST_TIMEOUT, summarize, sweep_in},
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

/// IP-in-IP's outer sources, one per client hash (`[tunnel] source_prefix`):
/// the backends' decap accepts them, the router routes them to the LB.
const SOURCE_PREFIX: &str = "10.85.0.0/24";
/// Clients of the main scenarios; each VIP sees all of them.
const CLIENTS: usize = 120;
/// New clients for recovery and for drain.
const FRESH: usize = 45;
const DSR_BACKENDS: usize = 3;
/// Tunnel backends t0-t2 on 1500-byte links, t3 behind a 1400-byte link.
const TUNNEL_MTUS: [u32; 4] = [1500, 1500, 1500, SMALL_MTU];
const SMALL_MTU: u32 = 1400;
/// Sweeps of the stickiness scenario (a new connection each request).
const ROUNDS: usize = 4;
/// FAST_HEALTH: fall 2 × 200 ms plus one interval in flight, the ±10%
/// jitter and a timeout (810 ms), and 500 ms for a machine of 2 CPUs busy
/// with three loads of 16 client threads each (up to 862 ms seen).
const DETECTION_BOUND: Duration = Duration::from_millis(3 * 220 + 150 + 500);
/// The port of the upload sinks (the path-MTU VIPs).
const SINK_PORT: u16 = 9000;
const UPLOAD_BYTES: usize = 256 * 1024;
/// The port of the download sources (the VIPs of ICMP forwarded to backends).
const SOURCE_PORT: u16 = 9001;
const DOWNLOAD_BYTES: usize = 256 * 1024;
/// The router's end of the clients' link in the download scenario.
const CLIENT_LINK_MTU: u32 = 1400;
/// Each upload or download as a whole.
const TRANSFER_BOUND: Duration = Duration::from_secs(10);

/// One VIP of the main scenarios.
struct Mode {
    name: &'static str,
    address: Ipv4Addr,
    backends: Vec<usize>,
    /// The backend whose server is killed, then brought back.
    victim: usize,
    /// The backend drained.
    drained: usize,
}

fn modes(r: &Routed) -> Vec<Mode> {
    let t = |i| r.tunnel_backend(i);
    vec![
        Mode {
            name: "dsr",
            address: vip(1),
            backends: (0..DSR_BACKENDS).collect(),
            victim: 0,
            drained: 1,
        },
        Mode {
            name: "ipip",
            address: vip(2),
            backends: vec![t(0), t(1), t(2)],
            victim: t(0),
            drained: t(1),
        },
        Mode {
            name: "gue",
            address: vip(3),
            backends: vec![t(0), t(1), t(2)],
            victim: t(0),
            drained: t(2),
        },
    ]
}

/// A path-MTU VIP: uploads to its one backend's sink.
struct MtuCase {
    name: &'static str,
    forwarding: &'static str,
    address: Ipv4Addr,
    backend: usize,
    /// The path MTU the client should end up with.
    want_pmtu: u32,
    /// Which counter of the VIP shows the too-big answer.
    counter: fn(&VipStats) -> u64,
    counter_name: &'static str,
}

fn mtu_cases(r: &Routed) -> Vec<MtuCase> {
    let (big, small) = (r.tunnel_backend(0), r.tunnel_backend(3));
    let too_big = |s: &VipStats| s.too_big_icmp;
    let relayed = |s: &VipStats| s.icmp_relayed;
    vec![
        // The LB's own link is the limit: 1500 - 20 (IP-in-IP), - 28 (GUE).
        MtuCase {
            name: "ipip-lb",
            forwarding: "ipip",
            address: vip(4),
            backend: big,
            want_pmtu: 1480,
            counter: too_big,
            counter_name: "too_big_icmp",
        },
        MtuCase {
            name: "gue-lb",
            forwarding: "gue",
            address: vip(5),
            backend: big,
            want_pmtu: 1472,
            counter: too_big,
            counter_name: "too_big_icmp",
        },
        // The router's 1400-byte link to the backend is the limit: its
        // "fragmentation needed" goes to the LB (the outer source), which
        // relays it to the client less the overhead.
        MtuCase {
            name: "ipip-router",
            forwarding: "ipip",
            address: vip(6),
            backend: small,
            want_pmtu: SMALL_MTU - 20,
            counter: relayed,
            counter_name: "icmp_relayed",
        },
        MtuCase {
            name: "gue-router",
            forwarding: "gue",
            address: vip(7),
            backend: small,
            want_pmtu: SMALL_MTU - 28,
            counter: relayed,
            counter_name: "icmp_relayed",
        },
        // The control: DSR adds nothing, the frames fit, nothing is counted.
        MtuCase {
            name: "dsr-control",
            forwarding: "dsr",
            address: vip(8),
            backend: 0,
            want_pmtu: 0,
            counter: too_big,
            counter_name: "too_big_icmp",
        },
    ]
}

/// The download VIPs: name, mode, address, backend.
fn download_cases(r: &Routed) -> Vec<(&'static str, &'static str, Ipv4Addr, usize)> {
    let t0 = r.tunnel_backend(0);
    vec![
        ("dsr-icmp", "dsr", vip(9), 0),
        ("ipip-icmp", "ipip", vip(10), t0),
        ("gue-icmp", "gue", vip(11), t0),
    ]
}

fn predicted(r: &Routed, vip: &str, clients: &[Ipv4Addr]) -> Vec<Option<usize>> {
    clients
        .iter()
        .map(|c| r.lookup(vip, *c).unwrap().0)
        .collect()
}

fn count_on(v: &[Option<usize>], backends: &[usize]) -> Vec<usize> {
    backends
        .iter()
        .map(|b| v.iter().filter(|x| **x == Some(*b)).count())
        .collect()
}

#[test]
fn one_vip_per_mode_through_a_router() {
    let started = Instant::now();
    let vips_held: Vec<Ipv4Addr> = (1..=11).map(vip).collect();
    let mut r = Routed::up(
        &RoutedOptions {
            dsr_backends: DSR_BACKENDS,
            tunnel_mtus: TUNNEL_MTUS.to_vec(),
            clients: CLIENTS + 2 * FRESH + 8,
            vips: vips_held.clone(),
        },
        BACKEND.as_ref(),
    )
    .unwrap();
    let modes = modes(&r);
    let cases = mtu_cases(&r);
    let downs = download_cases(&r);
    let bin: &Path = STICKYLB.as_ref();
    // The sinks of the path-MTU VIPs (and of their health checks).
    let _sinks: Vec<TcpServer> = [0, r.tunnel_backend(0), r.tunnel_backend(3)]
        .iter()
        .map(|&n| TcpServer::sink(r.backend_ns(n), SINK_PORT).unwrap())
        .collect();
    r.route_to_lb(SOURCE_PREFIX).unwrap();
    let _sources: Vec<TcpServer> = [0, r.tunnel_backend(0)]
        .iter()
        .map(|&n| TcpServer::source(r.backend_ns(n), SOURCE_PORT, DOWNLOAD_BYTES).unwrap())
        .collect();
    for i in 0..r.tunnel.len() {
        let out = r
            .attach_decap(
                bin,
                i,
                &["--allow", &LB_ADDR.to_string(), "--allow", SOURCE_PREFIX],
            )
            .unwrap();
        let attached = out.lines().next().unwrap_or_default().to_owned();
        let mut check = vec!["check".to_owned()];
        for v in &vips_held {
            check.extend(["--vip".to_owned(), v.to_string()]);
        }
        let check: Vec<&str> = check.iter().map(String::as_str).collect();
        let out = r
            .decap(bin, i, &check)
            .unwrap_or_else(|e| panic!("decap check on t{i}: {e}"));
        let not_ok: Vec<&str> = out.lines().filter(|l| !l.starts_with("ok")).collect();
        println!("t{i}: {attached}; decap check passed, besides ok: {not_ok:?}");
    }
    let mut specs: Vec<VipSpec> = modes
        .iter()
        .map(|m| VipSpec {
            name: m.name.into(),
            address: m.address,
            port: 80,
            forwarding: m.name.into(),
            backends: m.backends.clone(),
            extra: "affinity_timeout = \"120s\"".into(),
        })
        .collect();
    specs.extend(cases.iter().map(|c| VipSpec {
        name: c.name.into(),
        address: c.address,
        port: SINK_PORT,
        forwarding: c.forwarding.into(),
        backends: vec![c.backend],
        extra: String::new(),
    }));
    specs.extend(
        downs
            .iter()
            .map(|(name, forwarding, address, backend)| VipSpec {
                name: (*name).into(),
                address: *address,
                port: SOURCE_PORT,
                forwarding: (*forwarding).into(),
                backends: vec![*backend],
                extra: String::new(),
            }),
    );
    let config = r.config(
        &specs,
        FAST_HEALTH,
        &format!("\n[tunnel]\nsource = \"{LB_ADDR}\"\nsource_prefix = \"{SOURCE_PREFIX}\"\n"),
    );
    r.start_daemon(bin, &config, &[]).unwrap();
    assert!(
        r.daemon()
            .wait_backends(Duration::from_secs(10), |s, _| s == BackendState::Up),
        "backends up: {:#?}\n{}",
        r.daemon().vips(),
        r.daemon().log_text()
    );
    println!(
        "bed up: {} namespaces, daemon serving {} VIPs after {} ms",
        r.namespaces().len(),
        specs.len(),
        started.elapsed().as_millis()
    );
    let clients: Vec<Ipv4Addr> = r.clients[..CLIENTS].to_vec();
    let fresh_a: Vec<Ipv4Addr> = r.clients[CLIENTS..CLIENTS + FRESH].to_vec();
    let fresh_b: Vec<Ipv4Addr> = r.clients[CLIENTS + FRESH..CLIENTS + 2 * FRESH].to_vec();
    let uploaders: Vec<Ipv4Addr> = r.clients[CLIENTS + 2 * FRESH..].to_vec();

    // 1. Prediction, then stickiness: ROUNDS requests per client per VIP,
    // a new connection each, each client answered by the backend `lookup`
    // named before any traffic.
    let mut first = Vec::new();
    for m in &modes {
        let want = predicted(&r, m.name, &clients);
        let t = Instant::now();
        let got = sweep_in(&r.client, m.address, &clients);
        // A VIP that does not forward fails here, before the other rounds
        // wait out their timeouts too.
        assert!(
            got.iter().all(Option::is_some),
            "{}: {} of {CLIENTS} unanswered: {:?}\n{}",
            m.name,
            got.iter().filter(|b| b.is_none()).count(),
            r.vip_status(m.name),
            r.daemon().log_text()
        );
        let mut rounds = vec![got.clone()];
        rounds.extend((1..ROUNDS).map(|_| sweep_in(&r.client, m.address, &clients)));
        let flips = (0..CLIENTS)
            .filter(|&i| rounds.iter().any(|x| x[i] != got[i]))
            .count();
        let wrong = (0..CLIENTS).filter(|&i| got[i] != want[i]).count();
        let counts = count_on(&got, &m.backends);
        println!(
            "{}: stickiness: {} requests from {CLIENTS} clients in {} ms, {flips} clients changed \
             backend, {wrong} answered by another backend than `lookup` named; per backend {counts:?}",
            m.name,
            ROUNDS * CLIENTS,
            t.elapsed().as_millis()
        );
        assert_eq!(flips, 0, "{}", m.name);
        assert_eq!(wrong, 0, "{}", m.name);
        assert!(counts.iter().all(|&n| n > 0), "{}: {counts:?}", m.name);
        assert_eq!(
            predicted(&r, m.name, &clients),
            got,
            "{}: lookup after traffic (affinity entries)",
            m.name
        );
        first.push(got);
    }

    // 2. A backend's server killed in every VIP at once (t0 serves both
    // tunnel VIPs): its clients move once it is marked down, nobody else
    // moves or fails.
    let loads: Vec<Load> = modes
        .iter()
        .map(|m| Load::start_in(&r.client, m.address, &clients, Duration::from_secs(20)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    for n in modes
        .iter()
        .map(|m| m.victim)
        .collect::<std::collections::BTreeSet<_>>()
    {
        r.kill_server(n);
    }
    // When each VIP marks its victim down, from one status call per poll.
    let mut detect: Vec<Option<Duration>> = vec![None; modes.len()];
    wait_for(DETECTION_BOUND, || {
        if let Ok(st) = r.status() {
            for (k, m) in modes.iter().enumerate() {
                let down = st.vips.iter().filter(|v| v.name == m.name).any(|v| {
                    v.backends.iter().any(|b| {
                        *b.address.ip() == r.backend_addr(m.victim) && b.state == BackendState::Down
                    })
                });
                if down && detect[k].is_none() {
                    detect[k] = Some(t0.elapsed());
                }
            }
        }
        detect.iter().all(Option::is_some)
    });
    for (m, d) in modes.iter().zip(&detect) {
        assert!(
            d.is_some(),
            "{}: backend {} not down after {DETECTION_BOUND:?}: {:?}",
            m.name,
            m.victim,
            r.vip_status(m.name)
        );
    }
    let mut after_kill = Vec::new();
    for (k, m) in modes.iter().enumerate() {
        let theirs: Vec<Ipv4Addr> = (0..CLIENTS)
            .filter(|&i| first[k][i] == Some(m.victim))
            .map(|i| clients[i])
            .collect();
        let moved = wait_for(Duration::from_secs(3), || {
            sweep_in(&r.client, m.address, &theirs)
                .iter()
                .all(|b| b.is_some_and(|b| b != m.victim))
        });
        assert!(moved, "{}: the victim's clients did not all move", m.name);
    }
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    for (k, (m, load)) in modes.iter().zip(loads).enumerate() {
        let detect = detect[k].expect("asserted above");
        let s = summarize(&load.finish(), &first[k], &[m.victim]);
        let survivors_moved = s
            .moved
            .iter()
            .filter(|&&c| first[k][c] != Some(m.victim))
            .count();
        let after = sweep_in(&r.client, m.address, &clients);
        let victims = first[k].iter().filter(|b| **b == Some(m.victim)).count();
        println!(
            "{}: server killed: marked down after {} ms (bound {} ms), its {victims} clients \
             all answered elsewhere after {} ms; {} requests under load, {} failed, {} of them \
             from other backends' clients; {survivors_moved} of those clients moved",
            m.name,
            detect.as_millis(),
            DETECTION_BOUND.as_millis(),
            took.as_millis(),
            s.requests,
            s.failed,
            s.failed_survivors,
        );
        assert_eq!(
            s.failed_survivors, 0,
            "{}: {:?}",
            m.name, s.survivor_failures
        );
        assert_eq!(survivors_moved, 0, "{}", m.name);
        for i in 0..CLIENTS {
            if first[k][i] == Some(m.victim) {
                assert!(after[i].is_some_and(|b| b != m.victim), "{}: {i}", m.name);
            } else {
                assert_eq!(after[i], first[k][i], "{}: client {i}", m.name);
            }
        }
        after_kill.push(after);
    }

    // 3. Recovery: the servers back; moved clients stay where they are, new
    // clients go where `lookup` says, the recovered backend among them.
    for n in modes
        .iter()
        .map(|m| m.victim)
        .collect::<std::collections::BTreeSet<_>>()
    {
        r.start_server(n).unwrap();
    }
    for m in &modes {
        assert!(
            r.wait_backend(m.name, m.victim, BackendState::Up, Duration::from_secs(5)),
            "{}: {:?}",
            m.name,
            r.vip_status(m.name)
        );
    }
    for (k, m) in modes.iter().enumerate() {
        let again = sweep_in(&r.client, m.address, &clients);
        let want = predicted(&r, m.name, &fresh_a);
        let got = sweep_in(&r.client, m.address, &fresh_a);
        let to_recovered = got.iter().filter(|b| **b == Some(m.victim)).count();
        println!(
            "{}: recovery: {} of {CLIENTS} clients kept their post-failover backend; \
             {to_recovered} of {FRESH} new clients went to the recovered backend",
            m.name,
            (0..CLIENTS)
                .filter(|&i| again[i] == after_kill[k][i])
                .count()
        );
        assert_eq!(again, after_kill[k], "{}", m.name);
        assert_eq!(got, want, "{}", m.name);
        assert!(to_recovered > 0, "{}", m.name);
    }

    // 4. Daemon kill -9 and restart under load on every VIP: nothing
    // fails, nobody moves.
    let loads: Vec<Load> = modes
        .iter()
        .map(|m| Load::start_in(&r.client, m.address, &clients, Duration::from_secs(20)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    r.daemon_mut().kill9();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    r.restart_daemon(&[]).unwrap();
    let restart_ms = t.elapsed().as_millis();
    std::thread::sleep(Duration::from_millis(500));
    for (k, (m, load)) in modes.iter().zip(loads).enumerate() {
        let s = summarize(&load.finish(), &after_kill[k], &[]);
        println!(
            "{}: daemon kill -9 and restart ({restart_ms} ms) under load: {} requests, {} failed, \
             {} clients moved",
            m.name,
            s.requests,
            s.failed,
            s.moved.len()
        );
        assert_eq!((s.failed, s.moved.len()), (0, 0), "{}", m.name);
    }
    assert!(
        r.daemon()
            .log_text()
            .contains("adopted the running data path")
    );

    // 5. Drain: weight 0 keeps the pinned clients, takes no new ones.
    for m in &modes {
        let b = format!("{}:80", r.backend_addr(m.drained));
        let (code, out, err) = r
            .daemon()
            .cli(&["backend", "weight", "--vip", m.name, &b, "0"]);
        assert_eq!(code, 0, "{out}{err}");
    }
    for (k, m) in modes.iter().enumerate() {
        let kept = sweep_in(&r.client, m.address, &clients);
        let got = sweep_in(&r.client, m.address, &fresh_b);
        let on_drained = got.iter().filter(|b| **b == Some(m.drained)).count();
        println!(
            "{}: drain: {} pinned clients of the drained backend, all kept: {}; {on_drained} of \
             {FRESH} new clients reached it",
            m.name,
            after_kill[k]
                .iter()
                .filter(|b| **b == Some(m.drained))
                .count(),
            kept == after_kill[k]
        );
        assert_eq!(kept, after_kill[k], "{}", m.name);
        assert!(got.iter().all(Option::is_some), "{}", m.name);
        assert_eq!(on_drained, 0, "{}", m.name);
    }

    // 6. Path MTU discovery through the LB: uploads whose full-size
    // segments, encapsulated, no longer fit.
    for (c, src) in cases.iter().zip(&uploaders) {
        let before = r.vip_status(c.name).unwrap().counters;
        let (src, dst) = (*src, SocketAddrV4::new(c.address, SINK_PORT));
        let up = r
            .client
            .enter(move || upload(src, dst, UPLOAD_BYTES, TRANSFER_BOUND));
        let after = r.vip_status(c.name).unwrap().counters;
        let pmtu = cached_pmtu(&r.client, c.address).unwrap();
        let counted = (c.counter)(&after) - (c.counter)(&before);
        println!(
            "{}: upload of {UPLOAD_BYTES} bytes: {:?}; client's path MTU to the VIP {pmtu:?}; \
             too_big_icmp +{}, icmp_relayed +{}, drop_too_big +{}",
            c.name,
            up.as_ref().map(|u| format!(
                "{} bytes received in {} ms",
                u.received,
                u.took.as_millis()
            )),
            after.too_big_icmp - before.too_big_icmp,
            after.icmp_relayed - before.icmp_relayed,
            after.drop_too_big - before.drop_too_big,
        );
        let up = up.unwrap_or_else(|e| {
            panic!(
                "{}: upload failed: {e}; VIP: {:?}",
                c.name,
                r.vip_status(c.name)
            )
        });
        assert_eq!(up.received, UPLOAD_BYTES as u64, "{}", c.name);
        assert_eq!(after.drop_too_big, before.drop_too_big, "{}", c.name);
        if c.want_pmtu == 0 {
            assert_eq!(counted, 0, "{}", c.name);
            assert_eq!(pmtu, None, "{}: nothing lowered the path MTU", c.name);
        } else {
            assert!(counted > 0, "{}: {} not counted", c.name, c.counter_name);
            assert_eq!(pmtu, Some(c.want_pmtu), "{}", c.name);
        }
    }

    // 7. ICMP to a VIP finds its backend: the router's end of the clients'
    // link shrinks, a backend's full-size segments to the client no longer
    // pass it, and the router's "fragmentation needed" (sent to the VIP,
    // their source, so to the LB) is forwarded in the VIP's mode to the
    // backend of the client it quotes, which sends smaller segments.
    r.set_router_client_mtu(CLIENT_LINK_MTU).unwrap();
    for ((name, _, address, backend), src) in downs.iter().zip(&uploaders[cases.len()..]) {
        let before = r.vip_status(name).unwrap().counters;
        let (src, dst) = (*src, SocketAddrV4::new(*address, SOURCE_PORT));
        let down = r.client.enter(move || download(src, dst, TRANSFER_BOUND));
        let after = r.vip_status(name).unwrap().counters;
        let pmtu = cached_pmtu(r.backend_ns(*backend), src).unwrap();
        let forwarded = after.icmp_forwarded - before.icmp_forwarded;
        println!(
            "{name}: download of {DOWNLOAD_BYTES} bytes through a {CLIENT_LINK_MTU}-byte link: \
             {:?}; the backend's path MTU to the client {pmtu:?}; icmp_forwarded +{forwarded}",
            down.as_ref()
                .map(|u| format!("{} bytes in {} ms", u.received, u.took.as_millis())),
        );
        let down = down.unwrap_or_else(|e| {
            panic!(
                "{name}: download failed: {e}; VIP: {:?}",
                r.vip_status(name)
            )
        });
        assert_eq!(down.received, DOWNLOAD_BYTES as u64, "{name}");
        assert!(forwarded > 0, "{name}: icmp_forwarded not counted");
        assert_eq!(pmtu, Some(CLIENT_LINK_MTU), "{name}");
    }

    println!(
        "whole run: {} ms (request timeout {} ms)",
        started.elapsed().as_millis(),
        REQUEST_TIMEOUT.as_millis()
    );
    r.daemon_mut().stop().unwrap();
}
