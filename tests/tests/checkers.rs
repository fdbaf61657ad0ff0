//! Health checkers for real: a checker belongs to its backend whatever a
//! reload does to backend ids, a fresh daemon writes no VIP's table before
//! it knows every backend's health, and a config whose durations would make
//! the checkers fail is refused. Needs root (CI is root).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use lb_common::{DEFAULT_HASH_SEED, client_hash, maglev};
use lb_user::{
    api::{BackendState, FlowsReply, VipStatus},
    control::Request,
    lb::FlowEntry,
};
use stickylb_tests::{
    daemon::{Daemon, PinGuard, topology_with_pin},
    netns::{ChildGuard, Topology, TopologyOptions, VIP, backend_addr, backend_of, http_get},
    traffic::Load,
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

/// Every check goes to port 80, whatever the backend's port: so a backend
/// whose port changes keeps its check target, which is what makes a reused
/// id dangerous.
const HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\nport = 80";

/// How long a backend may take to be up and in the table after a reload:
/// its first check comes within 100 ms of the reload and decides at once.
const UP_WITHIN: Duration = Duration::from_secs(5);

/// The second VIP's port: every backend also serves it.
const API_PORT: u16 = 81;

/// A topology of `n` backends, each serving port 80 and `API_PORT`.
fn topology(n: usize) -> Topology {
    let mut topo = Topology::up(
        &TopologyOptions {
            backends: n,
            clients: 60,
            redis: None,
        },
        BACKEND.as_ref(),
    )
    .unwrap();
    for i in 0..n {
        let ready = topo.tmp.join(format!("b{i}-api.ready"));
        let child = topo.backends[i]
            .command(BACKEND)
            .args(["--name", &format!("backend-{i}")])
            .args(["--listen", &format!("0.0.0.0:{API_PORT}")])
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        topo.others.push(ChildGuard(child));
        assert!(
            stickylb_tests::netns::wait_for(Duration::from_secs(10), || ready.exists()),
            "backend {i} does not listen on port {API_PORT}"
        );
    }
    topo
}

/// A VIP block: `name` on `VIP:port` with backends (index, port).
fn vip(name: &str, port: u16, backends: &[(usize, u16)]) -> String {
    let mut s = format!(
        "\n[[vip]]\nname = \"{name}\"\naddress = \"{VIP}\"\nport = {port}\n\
         affinity_timeout = \"60s\"\ntable_size = 1021\n"
    );
    for (i, p) in backends {
        s += &format!(
            "\n[[vip.backend]]\naddress = \"{}\"\nport = {p}\n",
            backend_addr(*i)
        );
    }
    s
}

fn config(topo: &Topology, pin: &PinGuard, health: &str, vips: &[String]) -> String {
    format!(
        "interface = \"eth0\"\nxdp_mode = \"driver\"\npin_path = \"{}\"\n\
         control_socket = \"{}\"\nmetrics_listen = \"off\"\naffinity_capacity = 65536\n\n\
         [health]\n{health}\n{}",
        pin.0.display(),
        topo.control_socket().display(),
        vips.concat()
    )
}

/// One request from each client to `VIP:port`: which backend answered.
fn sweep_port(topo: &Topology, clients: &[Ipv4Addr], port: u16) -> Vec<Option<usize>> {
    let clients = clients.to_vec();
    topo.client.enter(move || {
        let handles: Vec<_> = clients
            .chunks(8)
            .map(|chunk| {
                let chunk = chunk.to_vec();
                thread::spawn(move || {
                    chunk
                        .iter()
                        .map(|&c| {
                            http_get(
                                c,
                                SocketAddrV4::new(VIP, port),
                                "/",
                                None,
                                Duration::from_millis(1000),
                            )
                            .ok()
                            .and_then(|a| backend_of(&a))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn describe(vips: &[VipStatus]) -> String {
    vips.iter()
        .flat_map(|v| {
            v.backends.iter().map(move |b| {
                format!(
                    "{} {}: {:?} ({}), {} slots, check {:?}",
                    v.name, b.address, b.state, b.reason, b.slots, b.check
                )
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every backend of every VIP is up and owns slots within `UP_WITHIN`, and
/// every VIP answers the clients it has `seen` and `new` ones; each of its
/// backends takes some of the new (the others are pinned).
fn assert_all_serving(
    d: &Daemon,
    topo: &Topology,
    what: &str,
    seen: &[Ipv4Addr],
    new: &[Ipv4Addr],
) {
    let t0 = Instant::now();
    let up = stickylb_tests::netns::wait_for(UP_WITHIN, || {
        d.vips().is_ok_and(|vips| {
            vips.iter()
                .flat_map(|v| &v.backends)
                .all(|b| b.state == BackendState::Up && b.slots > 0)
        })
    });
    let vips = d.vips().unwrap();
    let stuck = vips
        .iter()
        .flat_map(|v| &v.backends)
        .filter(|b| b.state != BackendState::Up || b.slots == 0)
        .count();
    let waited = t0.elapsed();
    // Figures first, for a failing run too: what the clients saw.
    let mut failures = Vec::new();
    let mut idle = Vec::new();
    let mut figures = Vec::new();
    for v in &vips {
        let answered = sweep_port(topo, &[seen, new].concat(), v.port);
        let failed = answered.iter().filter(|a| a.is_none()).count();
        figures.push(format!("VIP {} {failed}/{} failed", v.name, answered.len()));
        if failed > 0 {
            failures.push(format!("VIP {}: {answered:?}", v.name));
        }
        let answered = &answered[seen.len()..];
        for b in &v.backends {
            let i = (0..16)
                .find(|&i| backend_addr(i) == *b.address.ip())
                .unwrap();
            if !answered.contains(&Some(i)) {
                idle.push(format!("VIP {}: backend {}", v.name, b.address));
            }
        }
    }
    println!(
        "{what}: {stuck} backends not up with slots after {} ms; requests: {}; backends that took no new client: {}",
        waited.as_millis(),
        figures.join(", "),
        idle.len()
    );
    assert!(
        up,
        "{what}: not every backend up within {UP_WITHIN:?}:\n{}\n{}",
        describe(&vips),
        d.log_text()
    );
    assert!(failures.is_empty(), "{what}: failed requests: {failures:?}");
    assert!(idle.is_empty(), "{what}: took no new client: {idle:?}");
    // Every checker is alive and has never died.
    let status = d.call(&Request::Status).unwrap();
    for v in status["vips"].as_array().unwrap() {
        for b in v["backends"].as_array().unwrap() {
            assert_eq!(b["checker_restarts"], 0, "{what}: {b}");
        }
    }
}

fn reload(d: &Daemon, text: &str) {
    std::fs::write(&d.config, text).unwrap();
    let (code, out, err) = d.cli(&["reload"]);
    assert_eq!(code, 0, "reload: {out}{err}");
}

/// A reload that ends in the same backend ids for different backends.
fn reload_case(what: &str, before: &[String], after: &[String]) {
    let topo = topology(4);
    let pin = PinGuard(topo.daemon_pin());
    let d = Daemon::start(
        &topo,
        STICKYLB.as_ref(),
        &config(&topo, &pin, HEALTH, before),
        &[],
    )
    .unwrap();
    let (old, new) = topo.clients.split_at(topo.clients.len() / 2);
    assert_all_serving(&d, &topo, &format!("{what}: before"), &[], old);
    reload(&d, &config(&topo, &pin, HEALTH, after));
    assert_all_serving(&d, &topo, &format!("{what}: after"), old, new);
}

#[test]
fn backend_moved_to_another_vip_gets_its_own_checker() {
    // 10.77.0.11:80 leaves web for api; api's new backend takes its id.
    reload_case(
        "move",
        &[
            vip("web", 80, &[(0, 80), (1, 80)]),
            vip("api", API_PORT, &[(2, 80), (3, 80)]),
        ],
        &[
            vip("web", 80, &[(0, 80)]),
            vip("api", API_PORT, &[(2, 80), (3, 80), (1, 80)]),
        ],
    );
}

#[test]
fn vips_swapping_names_get_their_own_checkers() {
    // Each name now has the other's backends: every backend is new to its
    // VIP, and they take back the same ids.
    reload_case(
        "swap",
        &[
            vip("web", 80, &[(0, 80), (1, 80)]),
            vip("api", API_PORT, &[(2, 80), (3, 80)]),
        ],
        &[
            vip("api", 80, &[(0, 80), (1, 80)]),
            vip("web", API_PORT, &[(2, 80), (3, 80)]),
        ],
    );
}

#[test]
fn backend_with_a_new_port_gets_its_own_checker() {
    // With DSR the backend port only names the backend (and is its check
    // port unless health.port says otherwise, as here): 10.77.0.11:8080 is
    // a new backend, checked on port 80 like the old one.
    reload_case(
        "port",
        &[
            vip("web", 80, &[(0, 80), (1, 80)]),
            vip("api", API_PORT, &[(2, 80), (3, 80)]),
        ],
        &[
            vip("web", 80, &[(0, 80), (1, 8080)]),
            vip("api", API_PORT, &[(2, 80), (3, 80)]),
        ],
    );
}

/// Clients connect without pause while a fresh daemon starts; backend 2's
/// first check answers 2 s after the others' (longer than a client's 1 s
/// connect timeout, so clients retry while only 0 and 1 are known). No client may end up
/// pinned to a backend the full table does not give it.
#[test]
fn fresh_start_pins_nobody_from_a_partial_set() {
    let (topo, pin) = topology_with_pin(3, 200, BACKEND.as_ref()).unwrap();
    let table_size = 1021;
    let slow = "\n[vip.backend.health]\nkind = \"http\"\npath = \"/delay/2000\"\n\
                interval = \"4s\"\ntimeout = \"3s\"\n";
    let mut text = topo.config(
        &pin.0,
        "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2",
        &format!("affinity_timeout = \"60s\"\ntable_size = {table_size}"),
    );
    text += slow;
    assert!(text.ends_with(&format!("port = 80\n{slow}")), "{text}");
    text = text.replace(
        "metrics_listen = \"127.0.0.1:9321\"",
        "metrics_listen = \"off\"",
    );

    // The load starts as soon as the control socket answers: the program is
    // attached and the checkers run, the first checks not in yet. (Before,
    // the LB's own stack would refuse every connection, in a busy loop.)
    let t0 = Instant::now();
    let d = Daemon::start(&topo, STICKYLB.as_ref(), &text, &[]).unwrap();
    let load = Load::start(&topo, &topo.clients, Duration::from_secs(15));
    let up = d.wait_backends(Duration::from_secs(5), |s, _| s == BackendState::Up);
    let warm = t0.elapsed();
    // More load on the full table, until (nearly) every client is pinned.
    let flows = || -> Vec<FlowEntry> {
        let v = d
            .call(&Request::Flows {
                vip: None,
                backend: None,
                limit: None,
            })
            .unwrap();
        serde_json::from_value::<FlowsReply>(v).unwrap().flows
    };
    stickylb_tests::netns::wait_for(Duration::from_secs(5), || flows().len() >= 190);
    let samples = load.finish();
    assert!(up, "backends not up:\n{}", d.log_text());

    let identities: Vec<String> = (0..3).map(|i| format!("{}:80", backend_addr(i))).collect();
    let members: Vec<maglev::Member<'_>> = identities
        .iter()
        .map(|id| maglev::Member {
            identity: id.as_bytes(),
            weight: 1,
            in_service: true,
        })
        .collect();
    let table = maglev::build(&members, table_size).unwrap();
    let predict = |c: Ipv4Addr| {
        let slot = client_hash(c.octets(), DEFAULT_HASH_SEED) % table_size;
        backend_addr(table[slot as usize] as usize)
    };
    let flows = flows();
    let pinned: BTreeMap<Ipv4Addr, Ipv4Addr> = flows
        .iter()
        .filter_map(|f| Some((f.client, *f.backend?.ip())))
        .collect();
    let wrong: Vec<(Ipv4Addr, Ipv4Addr, Ipv4Addr)> = pinned
        .iter()
        .filter(|(c, b)| predict(**c) != **b)
        .map(|(c, b)| (*c, *b, predict(*c)))
        .collect();
    let failed = samples.iter().filter(|s| s.backend.is_none()).count();
    let first_answer = |want: Option<usize>| {
        samples
            .iter()
            .filter(|s| s.backend.is_some() && (want.is_none() || s.backend == want))
            .map(|s| s.at.saturating_duration_since(t0).as_millis())
            .min()
    };
    println!(
        "fresh start: first answer after {:?} ms, first by the slow backend after {:?} ms",
        first_answer(None),
        first_answer(Some(2))
    );
    println!(
        "fresh start: {} of {} pinned clients pinned from a partial set; {failed} of {} requests \
         failed while starting; all backends up after {} ms",
        wrong.len(),
        pinned.len(),
        samples.len(),
        warm.as_millis()
    );
    assert!(
        pinned.len() >= 150,
        "only {} clients pinned: {samples:?}",
        pinned.len()
    );
    assert!(
        wrong.is_empty(),
        "(client, pinned to, full table's pick): {wrong:?}\n{}",
        d.log_text()
    );
    let log = d.log_text();
    assert!(log.contains("VIP web serving: 3 of 3 backends up"), "{log}");
}

/// A duration no checker can add to an instant is refused by `check`, with
/// the field and the allowed range.
#[test]
fn check_refuses_durations_out_of_range() {
    let dir = std::env::temp_dir().join(format!("slb-checkers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stickylb.toml");
    let text = format!(
        "interface = \"lo\"\ncontrol_socket = \"{}\"\nmetrics_listen = \"off\"\n\n\
         [health]\ninterval = \"500000000000y\"\ntimeout = \"1s\"\n{}",
        dir.join("ctl.sock").display(),
        vip("web", 80, &[(0, 80)])
    );
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(STICKYLB)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    println!(
        "check of interval = \"500000000000y\": exit {:?}: {}",
        out.status.code(),
        err.trim()
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("health.interval: ") && err.contains("is too long: must be from 10ms to 1h"),
        "{err}"
    );
}
