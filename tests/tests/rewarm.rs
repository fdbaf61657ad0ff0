//! Every backend of a VIP down, then back one after the other, while clients
//! keep coming: the VIP must not serve from the first one back alone, or
//! every client arriving is pinned to it and stays there once the others
//! are back (a thundering herd that sticks). Prints the distribution.
//! Needs root (CI is root).

use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use lb_user::api::BackendState;
use stickylb_tests::{
    daemon::{Daemon, PinGuard},
    netns::{Topology, TopologyOptions, wait_for},
    traffic::{Load, sweep},
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

const BACKENDS: usize = 3;
/// Few enough that the load reaches every client within the gap between
/// the first backend's recovery and the others'.
const CLIENTS: usize = 48;
/// Fast checks: a backend is down within ~0.5 s, up ~0.4 s after it is.
const HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\nport = 80";
/// Between backend 0's server coming back and the others'.
const GAP: Duration = Duration::from_millis(1000);

fn per_backend(v: &[Option<usize>]) -> [usize; BACKENDS] {
    let mut n = [0; BACKENDS];
    for b in v.iter().flatten() {
        n[*b] += 1;
    }
    n
}

#[test]
fn clients_spread_over_every_backend_after_all_were_down() {
    let started = Instant::now();
    let mut topo = Topology::up(
        &TopologyOptions {
            backends: BACKENDS,
            clients: CLIENTS,
            redis: None,
        },
        BACKEND.as_ref(),
    )
    .unwrap();
    let pin = PinGuard(topo.daemon_pin());
    let config = topo.config(&pin.0, HEALTH, "affinity_timeout = \"120s\"");
    let d = Daemon::start(&topo, STICKYLB.as_ref(), &config, &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    let clients: Vec<Ipv4Addr> = topo.clients[..CLIENTS].to_vec();
    let before = per_backend(&sweep(&topo, &clients));
    println!("rewarm: clients per backend before the outage {before:?}");
    assert!(before.iter().all(|&n| n > 0), "{before:?}");

    // Every server gone: every backend marked down, each by its own check.
    for i in 0..BACKENDS {
        topo.kill_server(i);
    }
    assert!(
        d.wait_backends(Duration::from_secs(5), |s, _| s == BackendState::Down),
        "backends down: {:?}\n{}",
        d.vips(),
        d.log_text()
    );

    // Back one after the other, clients arriving all along.
    let load = Load::start(&topo, &clients, Duration::from_secs(15));
    thread::sleep(Duration::from_millis(300));
    topo.start_server(0).unwrap();
    let back = Instant::now();
    // Meanwhile status says what the VIP waits for.
    let mut said = None;
    wait_for(GAP, || {
        said = d.vips().ok().and_then(|v| v[0].warming_why.clone());
        said.as_deref()
            .is_some_and(|w| w.contains("more for the others"))
    });
    thread::sleep(GAP.saturating_sub(back.elapsed()));
    for i in 1..BACKENDS {
        topo.start_server(i).unwrap();
    }
    d.assert_up(Duration::from_secs(5));
    let serving = d
        .vips()
        .unwrap()
        .iter()
        .all(|v| !v.warming && v.alive_backends == BACKENDS);
    // Let the load see the VIP serving from every backend, then stop it.
    thread::sleep(Duration::from_millis(500));
    let samples = load.finish();
    let answered: Vec<Option<usize>> = samples.iter().map(|s| s.backend).collect();
    let during = per_backend(&answered);

    let after = sweep(&topo, &clients);
    let counts = per_backend(&after);
    let failed = after.iter().filter(|b| b.is_none()).count();
    println!(
        "rewarm: backend 0 back first, the others {} ms later; answers during the recovery per \
         backend {during:?} ({} requests, {} failed); clients per backend after it {counts:?} \
         ({failed} failed); serving from all {BACKENDS} once they were up: {serving}; {} ms in all",
        GAP.as_millis(),
        samples.len(),
        samples.iter().filter(|s| s.backend.is_none()).count(),
        started.elapsed().as_millis()
    );
    println!("rewarm: status while backend 0 alone was back: {said:?}");
    assert_eq!(failed, 0, "{after:?}");
    // A third each expected; all on backend 0 is the herd.
    assert!(
        counts[0] <= CLIENTS / 2 && counts.iter().all(|&n| n >= CLIENTS / 8),
        "clients herded after the recovery: per backend {counts:?}\n{}",
        d.log_text()
    );
    assert!(
        said.as_deref().is_some_and(|w| w.contains("waiting up to")),
        "status did not say why the VIP waited: {said:?}"
    );
    let log = d.log_text();
    assert!(
        log.contains("every backend is down") && log.contains("serving again"),
        "the log does not say why the VIP waited:\n{log}"
    );

    // Again, with backend 2 staying down: the VIP serves at its deadline
    // (the daemon's warm-up timer), from backends 0 and 1.
    for i in 0..BACKENDS {
        topo.kill_server(i);
    }
    assert!(
        d.wait_backends(Duration::from_secs(5), |s, _| s == BackendState::Down),
        "backends down: {:?}",
        d.vips()
    );
    let load = Load::start(&topo, &clients, Duration::from_secs(15));
    topo.start_server(0).unwrap();
    let back = Instant::now();
    thread::sleep(Duration::from_millis(300));
    topo.start_server(1).unwrap();
    let served = wait_for(Duration::from_secs(6), || {
        d.vips()
            .is_ok_and(|v| !v[0].warming && v[0].alive_backends == 2)
    });
    let took = back.elapsed();
    thread::sleep(Duration::from_millis(300));
    drop(load.finish());
    let after = sweep(&topo, &clients);
    let counts = per_backend(&after);
    println!(
        "rewarm: backend 2 staying down: serving {} ms after backend 0's server was back; \
         clients per backend {counts:?} ({} failed)",
        took.as_millis(),
        after.iter().filter(|b| b.is_none()).count()
    );
    assert!(served, "not serving by the deadline: {:?}", d.vips());
    assert!(
        counts[0] <= CLIENTS * 3 / 4 && counts[1] >= CLIENTS / 8 && counts[2] == 0,
        "clients herded after the recovery: per backend {counts:?}\n{}",
        d.log_text()
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}
