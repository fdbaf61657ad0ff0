//! The daemon for real: `stickylb run` on a veth in a namespace, real HTTP
//! backends, real TCP clients. Failover, recovery, kill -9 and restart,
//! reload, and the CLI's output and exit codes. Needs root (CI is root).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_user::{
    api::{BackendState, FlowsReply},
    control::Request,
    lb::LookupResult,
};
use stickylb_tests::{
    daemon::{Daemon, topology_with_pin},
    netns::{backend_addr, wait_for},
    traffic::sweep,
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

pub const FAST_HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";

fn flows(d: &Daemon) -> BTreeMap<Ipv4Addr, Option<SocketAddrV4>> {
    let v = d
        .call(&Request::Flows {
            vip: None,
            backend: None,
            limit: None,
        })
        .unwrap();
    let f: FlowsReply = serde_json::from_value(v).unwrap();
    f.flows.into_iter().map(|e| (e.client, e.backend)).collect()
}

fn addr_index(a: SocketAddrV4) -> usize {
    (0..16).find(|&i| backend_addr(i) == *a.ip()).unwrap()
}

#[test]
fn daemon_failover_restart_reload_and_cli() {
    let (mut topo, pin) = topology_with_pin(3, 60, BACKEND.as_ref()).unwrap();
    let config = topo.config(
        &pin.0,
        FAST_HEALTH,
        "affinity_timeout = \"60s\"\ntable_size = 1021",
    );
    let mut d = Daemon::start(&topo, STICKYLB.as_ref(), &config, &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    let status = d.call(&Request::Status).unwrap();
    assert_eq!(status["attached"], "driver mode");

    // Every client reaches a backend, and `lookup` names the one that answered.
    let clients = topo.clients.clone();
    let first = sweep(&topo, &clients);
    assert!(
        first.iter().all(Option::is_some),
        "unanswered: {first:?}\n{}",
        d.log_text()
    );
    for (c, b) in clients.iter().zip(&first) {
        let r: Vec<LookupResult> = serde_json::from_value(
            d.call(&Request::Lookup {
                client: (*c).into(),
                vip: None,
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(r[0].backend.map(addr_index), *b, "lookup {c}: {r:?}");
        assert_eq!(r[0].reason, "affinity entry");
    }
    assert_eq!(sweep(&topo, &clients), first, "stickiness");

    // Failover: kill backend 1's server. Its clients must be answered by
    // others within interval × fall + one interval (+ scheduling slack), and
    // nobody else may move.
    let victim = 1;
    let t0 = Instant::now();
    topo.kill_server(victim);
    let theirs: Vec<Ipv4Addr> = clients
        .iter()
        .zip(&first)
        .filter(|(_, b)| **b == Some(victim))
        .map(|(c, _)| *c)
        .collect();
    assert!(!theirs.is_empty());
    let moved = wait_for(Duration::from_secs(5), || {
        sweep(&topo, &theirs)
            .iter()
            .all(|b| b.is_some_and(|b| b != victim))
    });
    let failover = t0.elapsed();
    println!(
        "failover: {} clients of backend {victim} answered elsewhere after {} ms (interval 200ms, fall 2)",
        theirs.len(),
        failover.as_millis()
    );
    assert!(moved, "clients did not move:\n{}", d.log_text());
    assert!(
        failover < Duration::from_millis(200 * 2 + 200 + 800),
        "failover took {failover:?}"
    );
    let after = sweep(&topo, &clients);
    let others_moved = clients
        .iter()
        .zip(first.iter().zip(&after))
        .filter(|(_, (a, b))| **a != Some(victim) && a != b)
        .count();
    println!("failover: {others_moved} clients of surviving backends changed backend");
    assert_eq!(others_moved, 0);
    let vips = d.vips().unwrap();
    let dead = &vips[0].backends[victim];
    assert_eq!(dead.state, BackendState::Down);
    assert!(dead.reason.contains("failed tcp checks"), "{}", dead.reason);
    assert!(d.log_text().contains(&format!(
        "{}:80 down: 2 failed tcp checks",
        backend_addr(victim)
    )));

    // Recovery: the moved clients stay where they are now.
    topo.start_server(victim).unwrap();
    assert!(d.wait_backends(Duration::from_secs(5), |s, _| s == BackendState::Up));
    assert_eq!(sweep(&topo, &clients), after, "recovery moved clients");

    // kill -9: the program keeps forwarding without its daemon; a new
    // daemon adopts the pinned maps and link, and nothing moves or resets.
    let flows_before = flows(&d);
    let new_before = d.vips().unwrap()[0].counters.new_clients;
    d.kill9();
    assert_eq!(
        sweep(&topo, &clients),
        after,
        "forwarding without the daemon"
    );
    d.restart(&topo, &[]).unwrap();
    assert!(d.log_text().contains("adopted the running data path"));
    assert_eq!(flows(&d), flows_before, "affinity entries after restart");
    let vip = &d.vips().unwrap()[0];
    assert_eq!(
        vip.counters.new_clients, new_before,
        "counters after restart"
    );
    assert!(
        vip.backends.iter().all(|b| b.state == BackendState::Up),
        "{vip:?}"
    );
    assert_eq!(sweep(&topo, &clients), after, "clients after restart");

    // Reload with a new weight applies without a reset.
    let reweighted = config.replacen(
        "port = 80\n\n[[vip.backend]]",
        "port = 80\nweight = 3\n\n[[vip.backend]]",
        1,
    );
    assert_ne!(reweighted, config);
    std::fs::write(&d.config, &reweighted).unwrap();
    let (code, out, err) = d.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("reloaded:"), "{out}");
    let vip = &d.vips().unwrap()[0];
    assert_eq!(
        vip.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [3, 1, 1]
    );
    assert_eq!(flows(&d), flows_before, "affinity entries after reload");
    assert_eq!(sweep(&topo, &clients), after, "clients after reload");

    // A reload after live changes reports exactly what it changes: it
    // brings the running state back to the file, live changes included.
    let (b1, b2) = (backend_addr(1), backend_addr(2));
    for args in [
        &["backend", "drain", "--vip", "web", &format!("{b1}:80")][..],
        &[
            "backend",
            "weight",
            "--vip",
            "web",
            &format!("{b2}:80"),
            "4",
        ][..],
    ] {
        let (code, out, err) = d.cli(args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    let (code, out, err) = d.cli(&["--json", "reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["changed"], true, "{out}");
    assert_eq!(
        reply["diff"],
        format!("VIP web: ~{b1}:80 (drained yes -> no) ~{b2}:80 (weight 4 -> 1)"),
        "{out}"
    );
    let vip = &d.vips().unwrap()[0];
    assert!(vip.backends.iter().all(|b| !b.drained), "{vip:?}");
    assert_eq!(vip.backends[2].weight, 1);
    let (code, out, err) = d.cli(&["reload"]);
    assert_eq!((code, out.trim()), (0, "reloaded: no changes"), "{err}");

    cli_checks(&d, clients[0]);

    // A restart with another interface than the running one's is refused
    // (it would leave the old one forwarding); the running state is kept.
    d.kill9();
    std::fs::write(
        &d.config,
        reweighted.replace("interface = \"eth0\"", "interface = \"lo\""),
    )
    .unwrap();
    assert!(d.restart(&topo, &[]).is_err());
    assert!(
        d.log_text()
            .contains("is attached to eth0, but the config says lo; start with --fresh"),
        "{}",
        d.log_text()
    );
    std::fs::write(&d.config, &reweighted).unwrap();
    d.restart(&topo, &[]).unwrap();
    assert_eq!(
        sweep(&topo, &clients),
        after,
        "clients after the refused restart"
    );

    // Prometheus metrics on the LB namespace's loopback.
    let scrape = || {
        topo.lb.enter(|| {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect("127.0.0.1:9321").unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
    };
    // A reload of a broken file fails and shows in the metrics until one
    // succeeds (the restart above started the counts afresh).
    std::fs::write(&d.config, reweighted.replace("[[vip]]", "[[vip]")).unwrap();
    let (code, _, err) = d.cli(&["reload"]);
    assert_ne!(code, 0, "a reload of a broken file succeeded: {err}");
    let text = scrape();
    for want in [
        "stickylb_reloads_total{result=\"ok\"} 0\n",
        "stickylb_reloads_total{result=\"failed\"} 1\n",
        "stickylb_reload_failed 1\n",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    std::fs::write(&d.config, &reweighted).unwrap();
    let (code, _, err) = d.cli(&["reload"]);
    assert_eq!(code, 0, "{err}");
    let text = scrape();
    for want in [
        "stickylb_reloads_total{result=\"ok\"} 1\n",
        "stickylb_reloads_total{result=\"failed\"} 1\n",
        "stickylb_reload_failed 0\n",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains("stickylb_backend_up{vip=\"web\",backend=\"10.77.0.10:80\"} 1"),
        "{text}"
    );
    let packets: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("stickylb_vip_packets_total{vip=\"web\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(packets > 0.0, "{text}");

    // Taking it down is explicit: `stickylb unload` detaches and unpins.
    d.unload(&topo).unwrap();
    assert!(!pin.0.exists(), "pins left behind");
    let link = topo.lb.ip(&["link", "show", "eth0"]).unwrap();
    assert!(!link.contains("xdp"), "XDP still attached: {link}");
}

/// Every subcommand's output and exit code, errors included.
fn cli_checks(d: &Daemon, client: Ipv4Addr) {
    let c = client.to_string();
    let (code, out, _) = d.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("VIP web 10.77.100.1:80/tcp"), "{out}");
    assert!(
        out.contains("10.77.0.10:80") && out.contains(" up "),
        "{out}"
    );
    let (code, out, _) = d.cli(&["backends"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().filter(|l| l.contains(":80 ")).count(),
        3,
        "{out}"
    );
    let (code, out, _) = d.cli(&["lookup", &c]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("{c} on web: 10.77.0.1")) && out.contains("affinity entry"),
        "{out}"
    );
    let (code, out, _) = d.cli(&["lookup", "10.77.250.250"]);
    assert_eq!(code, 0);
    assert!(out.contains("Maglev slot"), "{out}");
    let (code, out, _) = d.cli(&["--json", "lookup", &c]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["reason"], "affinity entry");
    let (code, out, _) = d.cli(&["flows", "--vip", "web"]);
    assert_eq!(code, 0);
    assert!(out.trim_end().ends_with("60 entries"), "{out}");
    let (code, out, _) = d.cli(&["--json", "status"]);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());

    let b = "10.77.0.12:80";
    for args in [
        vec!["backend", "drain", "--vip", "web", b],
        vec!["backend", "undrain", "--vip", "web", b],
        vec!["backend", "weight", "--vip", "web", b, "2"],
        vec![
            "backend",
            "add",
            "--vip",
            "web",
            "10.77.0.99:80",
            "--weight",
            "1",
        ],
        vec!["backend", "remove", "--vip", "web", "10.77.0.99:80"],
    ] {
        let (code, out, err) = d.cli(&args);
        assert_eq!((code, out.as_str()), (0, "ok\n"), "{args:?}: {err}");
    }

    // Errors: one line on stderr, non-zero exit.
    let one_line_err = |args: &[&str], want_code: i32, want: &str| {
        let (code, out, err) = d.cli(args);
        assert_eq!(code, want_code, "{args:?}: {out}{err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        if want_code == 1 {
            assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        }
    };
    one_line_err(&["lookup", &c, "--vip", "nope"], 1, "no VIP named \"nope\"");
    one_line_err(&["lookup", "10.77.1"], 2, "invalid value '10.77.1'");
    one_line_err(
        &["lookup", "2001:db8::1"],
        1,
        "client 2001:db8::1: IPv6 clients are not supported yet",
    );
    one_line_err(
        &["backend", "drain", "--vip", "web", "[2001:db8::5]:80"],
        1,
        "backend [2001:db8::5]:80: IPv6 backends are not supported yet",
    );
    // Under --json the same error is a JSON object on stdout.
    let (code, out, err) = d.cli(&["--json", "lookup", &c, "--vip", "nope"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.is_empty(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"ok": false, "error": "no VIP named \"nope\""})
    );
    one_line_err(
        &["backend", "drain", "--vip", "web", "10.77.0.98:80"],
        1,
        "has no backend 10.77.0.98:80",
    );
    one_line_err(
        &["backend", "add", "--vip", "web", b],
        1,
        "already has backend",
    );
    one_line_err(
        &[
            "backend",
            "add",
            "--vip",
            "web",
            "10.77.0.97:80",
            "--mac",
            "zz",
        ],
        1,
        "invalid MAC address",
    );
    // A live addition obeys the same rules as a backend in the file.
    one_line_err(
        &[
            "backend",
            "add",
            "--vip",
            "web",
            "10.77.0.97:80",
            "--mac",
            "ff:ff:ff:ff:ff:ff",
        ],
        1,
        "backend 10.77.0.97:80 mac: ff:ff:ff:ff:ff:ff is a multicast/broadcast address",
    );
    one_line_err(
        &["backend", "add", "--vip", "web", "10.77.0.97:0"],
        1,
        "backend 10.77.0.97:0 port: is 0",
    );
    one_line_err(
        &["backend", "add", "--vip", "web", "10.77.100.1:80"],
        1,
        "is the VIP's own address",
    );
    let (code, _, err) = std::process::Command::new(STICKYLB)
        .args(["--socket", "/nonexistent/stickylb.sock", "status"])
        .output()
        .map(|o| {
            (
                o.status.code().unwrap(),
                String::new(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert_eq!(code, 1);
    assert!(
        err.starts_with("stickylb: cannot reach the stickylb daemon"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1);
}
