//! End to end in network namespaces: 240 real clients, 3 real HTTP backends,
//! the daemon at its default health-check settings, XDP in driver mode.
//! The scenarios run in order on one network and print their figures.
//! Needs root (CI is root).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_user::{api::BackendState, control::Request, lb::LookupResult};
use stickylb_tests::{
    daemon::{Daemon, PinGuard},
    netns::{
        ChildGuard, LB_ADDR, Topology, TopologyOptions, VIP, backend_addr, client_addr, http_get,
        sh, wait_for,
    },
    traffic::{Load, REQUEST_TIMEOUT, summarize, sweep},
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

const CLIENTS: usize = 240;
const BACKENDS: usize = 3;
/// Defaults: interval 1 s, timeout 500 ms, fall 3, rise 2 (docs/config.md).
/// Detection takes at most fall intervals plus one interval for the check
/// in flight, stretched by the ±10% jitter, plus a timeout.
const DETECTION_BOUND: Duration = Duration::from_millis(3 * 1100 + 1100 + 500);

fn idx(a: SocketAddrV4) -> usize {
    (0..BACKENDS)
        .find(|&i| backend_addr(i) == *a.ip())
        .expect("known backend")
}

/// The daemon's answer to `lookup` for each client: the backend it names.
fn predicted(d: &Daemon, clients: &[Ipv4Addr]) -> Vec<Option<usize>> {
    clients
        .iter()
        .map(|c| {
            let r: Vec<LookupResult> = serde_json::from_value(
                d.call(&Request::Lookup {
                    client: (*c).into(),
                    vip: Some("web".into()),
                })
                .unwrap(),
            )
            .unwrap();
            r[0].backend.map(idx)
        })
        .collect()
}

fn per_backend(v: &[Option<usize>]) -> [usize; BACKENDS] {
    let mut n = [0; BACKENDS];
    for b in v.iter().flatten() {
        n[*b] += 1;
    }
    n
}

/// Kills/takes down a backend under load and checks its clients move within
/// the detection bound while nobody else moves; the new client → backend map.
fn failover(
    name: &str,
    d: &Daemon,
    topo: &mut Topology,
    clients: &[Ipv4Addr],
    before: &[Option<usize>],
    victim: usize,
    fail: impl FnOnce(&mut Topology),
) -> Vec<Option<usize>> {
    let theirs: Vec<Ipv4Addr> = clients
        .iter()
        .zip(before)
        .filter(|(_, b)| **b == Some(victim))
        .map(|(c, _)| *c)
        .collect();
    assert!(!theirs.is_empty(), "backend {victim} has clients");
    let load = Load::start(topo, clients, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    fail(topo);
    // Detection: when the daemon marks the backend down (and the data path
    // re-picks its clients at once), polled cheaply over the control socket.
    let detected = wait_for(DETECTION_BOUND + Duration::from_secs(2), || {
        d.vips()
            .is_ok_and(|v| v[0].backends[victim].state == BackendState::Down)
    });
    let detect = t0.elapsed();
    // Client-visible: every client of the victim answered elsewhere. A sweep
    // that still hits the dead backend waits out the request timeout, so this
    // figure is coarser by up to that much.
    let moved_in_time = wait_for(DETECTION_BOUND + Duration::from_secs(3), || {
        sweep(topo, &theirs)
            .iter()
            .all(|b| b.is_some_and(|b| b != victim))
    });
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let samples = load.finish();
    let s = summarize(&samples, before, &[victim]);
    let survivors_moved = s
        .moved
        .iter()
        .filter(|&&c| before[c] != Some(victim))
        .count();
    println!(
        "scenario 3 ({name}): backend {victim} marked down after {} ms (bound {} ms); its {} clients \
         all answered by others after {} ms; {} requests under load, {} failed (all of the failed \
         backend's clients: {}), {survivors_moved} clients of surviving backends moved",
        detect.as_millis(),
        DETECTION_BOUND.as_millis(),
        theirs.len(),
        took.as_millis(),
        s.requests,
        s.failed,
        s.failed_survivors == 0,
    );
    assert!(
        detected && detect <= DETECTION_BOUND,
        "{name}: detection took {detect:?}"
    );
    assert!(
        moved_in_time && took <= DETECTION_BOUND + REQUEST_TIMEOUT + Duration::from_millis(500),
        "{name}: clients moved after {took:?}"
    );
    assert_eq!(
        survivors_moved, 0,
        "{name}: surviving backends' clients moved"
    );
    let failures: Vec<String> = s
        .survivor_failures
        .iter()
        .map(|x| {
            let since = x.at.checked_duration_since(t0).map_or_else(
                || format!("-{} ms", (t0 - x.at).as_millis()),
                |d| format!("+{} ms", d.as_millis()),
            );
            format!(
                "client {} (backend {:?}) started {since} after the failure, failed after {} ms: {}",
                clients[x.client],
                before[x.client],
                x.took.as_millis(),
                x.error.as_deref().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        s.failed_survivors,
        0,
        "{name}: surviving backends' clients saw failures:\n{}",
        failures.join("\n")
    );
    let after = sweep(topo, clients);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if *b == Some(victim) {
            assert!(
                a.is_some_and(|a| a != victim),
                "{name}: client {i} on {a:?}"
            );
        } else {
            assert_eq!(a, b, "{name}: client {i}");
        }
    }
    after
}

#[test]
fn scenarios_in_network_namespaces() {
    let mut topo = Topology::up(
        &TopologyOptions {
            backends: BACKENDS,
            clients: CLIENTS + 120,
            redis: None,
        },
        BACKEND.as_ref(),
    )
    .unwrap();
    let pin = PinGuard(topo.daemon_pin());
    let config = topo.config(&pin.0, "", "affinity_timeout = \"120s\"");
    let mut d = Daemon::start(&topo, STICKYLB.as_ref(), &config, &[]).unwrap();
    assert!(
        d.wait_backends(Duration::from_secs(5), |s, _| s == BackendState::Up),
        "{}",
        d.log_text()
    );
    let clients: Vec<Ipv4Addr> = topo.clients[..CLIENTS].to_vec();
    let fresh_a: Vec<Ipv4Addr> = topo.clients[CLIENTS..CLIENTS + 60].to_vec();
    let fresh_b: Vec<Ipv4Addr> = topo.clients[CLIENTS + 60..].to_vec();

    // 2. Prediction: before any traffic, `lookup` names each client's backend.
    let want = predicted(&d, &clients);
    assert!(want.iter().all(Option::is_some));

    // 1. Stickiness: 10 requests per client, a new TCP connection each.
    let t = Instant::now();
    let rounds: Vec<Vec<Option<usize>>> = (0..10).map(|_| sweep(&topo, &clients)).collect();
    let first = rounds[0].clone();
    let flips = (0..CLIENTS)
        .filter(|&i| rounds.iter().any(|r| r[i] != first[i]))
        .count();
    let counts = per_backend(&first);
    let avg = CLIENTS as f64 / BACKENDS as f64;
    let max = *counts.iter().max().unwrap() as f64;
    println!(
        "scenario 1 (stickiness): {} requests from {CLIENTS} clients in {} ms; {flips} clients ever \
         changed backend; per backend {counts:?} (Maglev prediction {:?}), max/avg {:.2}",
        10 * CLIENTS,
        t.elapsed().as_millis(),
        per_backend(&want),
        max / avg
    );
    assert!(first.iter().all(Option::is_some), "unanswered requests");
    assert_eq!(flips, 0);
    assert_eq!(counts, per_backend(&want));
    // 240 clients hashed over 3 equal backends: each gets 80 ± a few sd.
    assert!(
        counts.iter().all(|&n| (50..=110).contains(&n)),
        "{counts:?}"
    );

    // 2. ... and every client was answered by the backend `lookup` named.
    let wrong = (0..CLIENTS).filter(|&i| first[i] != want[i]).count();
    println!(
        "scenario 2 (prediction): {wrong} of {CLIENTS} clients answered by another backend than `stickylb lookup` named"
    );
    assert_eq!(wrong, 0);
    assert_eq!(
        predicted(&d, &clients),
        first,
        "lookup after traffic (affinity entries)"
    );

    // 3. Failover, twice: a killed server, then a link taken down.
    let after_kill = failover("server killed", &d, &mut topo, &clients, &first, 0, |t| {
        t.kill_server(0)
    });

    // 4. Recovery: moved clients stay; new clients reach the recovered backend.
    topo.start_server(0).unwrap();
    assert!(
        d.wait_backends(Duration::from_secs(8), |s, _| s == BackendState::Up),
        "{}",
        d.log_text()
    );
    let again = sweep(&topo, &clients);
    let stayed = (0..CLIENTS).filter(|&i| again[i] == after_kill[i]).count();
    let new_pred = predicted(&d, &fresh_a);
    let new_got = sweep(&topo, &fresh_a);
    let to_recovered = new_got.iter().filter(|b| **b == Some(0)).count();
    println!(
        "scenario 4 (recovery): {stayed} of {CLIENTS} clients kept their post-failover backend; \
         {to_recovered} of {} new clients went to the recovered backend (predicted {})",
        fresh_a.len(),
        new_pred.iter().filter(|b| **b == Some(0)).count()
    );
    assert_eq!(stayed, CLIENTS);
    assert_eq!(new_got, new_pred);
    assert!(to_recovered > 0);

    let after_link = failover("link down", &d, &mut topo, &clients, &again, 2, |t| {
        t.set_backend_link(2, false).unwrap()
    });
    topo.set_backend_link(2, true).unwrap();
    assert!(
        d.wait_backends(Duration::from_secs(8), |s, _| s == BackendState::Up),
        "{}",
        d.log_text()
    );

    // 5. Daemon restart under load: kill -9, start again; nothing fails,
    // nobody moves.
    let load = Load::start(&topo, &clients, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    d.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    d.restart(&topo, &[]).unwrap();
    let restart_ms = t.elapsed().as_millis();
    std::thread::sleep(Duration::from_millis(700));
    let samples = load.finish();
    let s = summarize(&samples, &after_link, &[]);
    println!(
        "scenario 5 (daemon kill -9 and restart under load): {} requests, {} failed, {} clients moved; \
         restart took {restart_ms} ms",
        s.requests,
        s.failed,
        s.moved.len()
    );
    assert_eq!((s.failed, s.moved.len()), (0, 0));
    assert!(d.log_text().contains("adopted the running data path"));

    // 6. Drain: weight 0 keeps pinned clients, takes no new ones.
    let drained = 1;
    let b = format!("{}:80", backend_addr(drained));
    let (code, out, err) = d.cli(&["backend", "weight", "--vip", "web", &b, "0"]);
    assert_eq!(code, 0, "{out}{err}");
    let kept = sweep(&topo, &clients);
    let theirs_kept = (0..CLIENTS)
        .filter(|&i| after_link[i] == Some(drained))
        .all(|i| kept[i] == Some(drained));
    let new_got = sweep(&topo, &fresh_b);
    let new_on_drained = new_got.iter().filter(|b| **b == Some(drained)).count();
    println!(
        "scenario 6 (drain): {} pinned clients of the drained backend kept it: {theirs_kept}; \
         {new_on_drained} of {} new clients reached it",
        after_link.iter().filter(|b| **b == Some(drained)).count(),
        fresh_b.len()
    );
    assert!(theirs_kept);
    assert_eq!(kept, after_link);
    assert!(new_got.iter().all(Option::is_some));
    assert_eq!(new_on_drained, 0);

    // 7. Traffic that is not a VIP's reaches the LB's own stack.
    non_vip_traffic(&topo, &d);

    let mut per: BTreeMap<String, u64> = BTreeMap::new();
    for v in d.vips().unwrap() {
        for b in v.backends {
            per.insert(b.address.to_string(), b.counters.packets);
        }
    }
    println!("packets forwarded per backend: {per:?}");
    d.stop().unwrap();
}

fn non_vip_traffic(topo: &Topology, d: &Daemon) {
    let before = d.call(&Request::Status).unwrap()["passed"]["pass_not_vip"]
        .as_u64()
        .unwrap();
    // A TCP service on another port of the LB (think sshd), on the VIP
    // address and on the LB's own address.
    let ready = topo.tmp.join("lb-svc.ready");
    let _svc = ChildGuard(
        topo.lb
            .command(&topo.server_bin)
            .args([
                "--name",
                "lb-local",
                "--listen",
                "0.0.0.0:2222",
                "--ready-file",
            ])
            .arg(&ready)
            .spawn()
            .unwrap(),
    );
    assert!(wait_for(Duration::from_secs(5), || ready.exists()));
    let src = client_addr(0);
    let answers = topo.client.enter(move || {
        [VIP, LB_ADDR].map(|dst| {
            http_get(
                src,
                SocketAddrV4::new(dst, 2222),
                "/",
                None,
                Duration::from_secs(2),
            )
            .map(|a| a.body)
            .unwrap_or_else(|e| format!("error: {e}"))
        })
    });
    let ping = |dst: Ipv4Addr| {
        sh(topo
            .client
            .command("ping")
            .args(["-c", "2", "-i", "0.2", "-W", "1", &dst.to_string()]))
        .is_ok()
    };
    let (ping_vip, ping_lb) = (ping(VIP), ping(LB_ADDR));
    let after = d.call(&Request::Status).unwrap()["passed"]["pass_not_vip"]
        .as_u64()
        .unwrap();
    println!(
        "scenario 7 (non-VIP traffic): TCP to VIP:2222 → {:?}, to LB:2222 → {:?}; ping VIP {ping_vip}, \
         ping LB {ping_lb}; pass_not_vip counter +{}",
        answers[0].trim(),
        answers[1].trim(),
        after - before
    );
    assert_eq!(
        answers.map(|a| a.trim().to_owned()),
        ["lb-local", "lb-local"].map(String::from)
    );
    assert!(ping_vip && ping_lb);
    assert!(after > before);
}
