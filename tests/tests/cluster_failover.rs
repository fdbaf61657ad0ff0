//! Failures in the multi-node test bed (tests/src/cluster.rs): 3 stickylb
//! nodes that announce the VIP themselves through a real BIRD each, a
//! router doing L4 ECMP over them (BIRD, BFD), real HTTP backends, and the
//! affinity sync between the nodes. A node dies under load; a backend dies
//! and every node moves its clients alike; a backend recovers and then the
//! node that pinned clients dies (with and without sync); a node restarted
//! with `--fresh` pulls the table before it announces; a node that cannot
//! reach the backends withdraws. Each prints its figures. Needs root.
//!
//! The scenarios run one at a time (`serial`): each is a whole cluster of
//! processes on a small machine, and BFD's 300 ms would not survive the
//! scheduling delays of several at once.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_user::{
    announce::NotAnnounced,
    api::{BackendState, StatusReply},
    control::{self, Request},
};
use stickylb_tests::{
    cluster::{Cluster, ClusterOptions, FAST_HEALTH, VIP, announces_in},
    traffic::{Load, Sample, sweep_in},
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

const NODES: usize = 3;
const BACKENDS: usize = 3;
/// Clients of the scenarios that use one group of clients.
const CLIENTS: usize = 240;
/// Pins live through every scenario.
const AFFINITY: &str = "affinity_timeout = \"5m\"";
/// A route change reaches the router in milliseconds, a silent node is
/// noticed by BFD in 300 ms.
const ROUTE_BOUND: Duration = Duration::from_secs(5);
/// 2 checks 200 ms apart (`FAST_HEALTH`), with slack for a busy machine.
const HEALTH_BOUND: Duration = Duration::from_secs(5);
/// A request started this long after the router's next hops changed is
/// routed by the new ones.
const SETTLE: Duration = Duration::from_millis(200);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cluster of `clients` clients whose daemons announce (and, with
/// `sync`, sync), every node routed to.
fn cluster(clients: usize, sync: bool) -> Cluster {
    let mut c = Cluster::up(
        &ClusterOptions {
            nodes: NODES,
            backends: BACKENDS,
            clients,
        },
        BACKEND.as_ref(),
    )
    .expect("cluster up");
    c.start_announcing(STICKYLB.as_ref(), FAST_HEALTH, AFFINITY, sync)
        .expect("daemons announce");
    c
}

/// One request per client, `rounds` times (each from a new source port,
/// so the router's L4 hash sends a client to changing nodes): the
/// backends that answered each client, and how many requests failed.
fn answers(c: &Cluster, clients: &[Ipv4Addr], rounds: usize) -> (Vec<BTreeSet<usize>>, usize) {
    let mut sets = vec![BTreeSet::new(); clients.len()];
    let mut failed = 0;
    for _ in 0..rounds {
        for (k, a) in sweep_in(&c.client, VIP, clients).into_iter().enumerate() {
            match a {
                Some(b) => {
                    sets[k].insert(b);
                }
                None => failed += 1,
            }
        }
    }
    (sets, failed)
}

/// Each client's one backend, panicking if a client had none or several.
#[track_caller]
fn one_backend_each(c: &Cluster, clients: &[Ipv4Addr], rounds: usize) -> Vec<usize> {
    let (sets, failed) = answers(c, clients, rounds);
    assert_eq!(failed, 0, "requests failed");
    let split: Vec<(Ipv4Addr, &BTreeSet<usize>)> = clients
        .iter()
        .copied()
        .zip(&sets)
        .filter(|(_, s)| s.len() != 1)
        .collect();
    assert!(
        split.is_empty(),
        "clients answered by two backends: {split:?}"
    );
    sets.iter().map(|s| *s.first().unwrap()).collect()
}

/// Clients (indices) of `samples` answered by a backend other than
/// `before[client]`.
fn moved(samples: &[Sample], before: &[usize]) -> BTreeSet<usize> {
    samples
        .iter()
        .filter(|s| s.backend.is_some_and(|b| b != before[s.client]))
        .map(|s| s.client)
        .collect()
}

/// Scenario 2: a node dies under load (its link down, then its daemon and
/// BIRD kill -9: it falls silent, as in a power loss, so BFD has to notice). The router drops it; requests that were on their way to it
/// fail until then, none after; no client changes backend (every node has
/// the same backends, and the sync has its pins anyway).
#[test]
fn a_node_killed_under_load_leaves_the_router_and_no_client_moves() {
    let _serial = serial();
    let start = Instant::now();
    let mut c = cluster(CLIENTS, true);
    let clients = c.clients.clone();
    let before = one_backend_each(&c, &clients, 2);

    let load = Load::start_in(&c.client, VIP, &clients, Duration::from_secs(40));
    thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    c.vanish_node(2).unwrap();
    let dropped = c.wait_routed(&[0, 1], ROUTE_BOUND).unwrap();
    thread::sleep(Duration::from_secs(2));
    let samples = load.finish();
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.backend.is_none()).collect();
    let late: Vec<&&Sample> = failed
        .iter()
        .filter(|s| s.at > killed + dropped + SETTLE)
        .collect();
    let moved_load = moved(&samples, &before);
    let after = one_backend_each(&c, &clients, 2);
    let moved_after = (0..clients.len())
        .filter(|&k| after[k] != before[k])
        .count();
    eprintln!(
        "scenario 2, node 2 killed (link down, daemon and BIRD kill -9) under load from \
         {CLIENTS} clients: gone from the router's next hops after {dropped:?}; {} requests, \
         {} failed (all started before the router dropped the node: {}); clients that changed \
         backend: {} under load, {moved_after} after; {:?} in all",
        samples.len(),
        failed.len(),
        late.is_empty(),
        moved_load.len(),
        start.elapsed()
    );
    assert!(
        dropped < Duration::from_secs(1),
        "the router drops a dead node within BFD's 300 ms (and the kernel's FIN at once): {dropped:?}"
    );
    assert!(
        late.is_empty(),
        "requests failed after the router had moved off the node: {:?}",
        &late[..late.len().min(5)]
    );
    assert!(moved_load.is_empty(), "clients moved: {moved_load:?}");
    assert_eq!(moved_after, 0);
}

/// The route of node `ns`'s table, as `Cluster::node_announces` reads it;
/// no answer (the namespace going away) is no route.
fn announced_in(ns: &str) -> bool {
    announces_in(ns).unwrap_or(false)
}

fn status_at(socket: &Path) -> Option<StatusReply> {
    let v = control::call(socket, &Request::Status).ok()?;
    serde_json::from_value(v).ok()
}

/// When a restarting node withdrew, became ready and announced again.
#[derive(Debug, Default)]
struct Rejoin {
    withdrawn: Option<Duration>,
    /// The route was back while the status said not ready.
    announced_unready: bool,
    ready: Option<Duration>,
    announced: Option<Duration>,
}

/// Scenarios 3 and 5, on one cluster.
///
/// 3: a backend dies; every node marks it down by its own checks, and each
/// of its clients gets one new backend whichever node carries it: the
/// router spreads each client's connections over the nodes, and every
/// node's `lookup` names the backend that answered.
///
/// 5: the backend is back, so the moved clients' pins now differ from
/// what the Maglev table says: a node without them would send those
/// clients back to the recovered backend. A node restarted with `--fresh`
/// (its table replaced by an empty one) pulls a peer's table before it
/// announces: its route reappears only after its status says ready, it
/// has every moved client's pin by then, and no client moves.
#[test]
fn a_killed_backend_moves_its_clients_alike_on_every_node_and_a_fresh_node_pulls_them() {
    let _serial = serial();
    let start = Instant::now();
    let mut c = cluster(CLIENTS, true);
    let clients = c.clients.clone();
    let before = one_backend_each(&c, &clients, 2);
    let victims: Vec<usize> = (0..clients.len()).filter(|&k| before[k] == 2).collect();
    assert!(!victims.is_empty(), "backend 2 had clients: {before:?}");

    // Scenario 3.
    let killed = Instant::now();
    c.kill_server(2);
    let mut marked = Vec::new();
    for i in 0..NODES {
        assert!(
            c.wait_backend_state(i, 2, HEALTH_BOUND, |s| s == BackendState::Down),
            "node {i} did not mark backend 2 down: {:?}",
            c.daemon(i).vips()
        );
        marked.push(killed.elapsed());
    }
    let after = one_backend_each(&c, &clients, 3);
    let moved: Vec<usize> = (0..clients.len())
        .filter(|&k| after[k] != before[k])
        .collect();
    assert_eq!(moved, victims, "exactly backend 2's clients moved");
    assert!(moved.iter().all(|&k| after[k] != 2));
    let disagreements = lookups_disagreeing(&c, &clients, &after);
    eprintln!(
        "scenario 3, backend 2 killed: marked down by each node's own checks after {marked:?}; \
         {} of {CLIENTS} clients moved, each answered by one backend over 3 rounds of \
         connections spread by ECMP; `lookup` on every node disagreeing with the answering \
         backend: {} (of {} lookups)",
        moved.len(),
        disagreements.len(),
        NODES * CLIENTS
    );
    assert!(
        disagreements.is_empty(),
        "(node, client, lookup, answered): {:?}",
        &disagreements[..disagreements.len().min(10)]
    );

    // Scenario 5.
    c.start_server(2).unwrap();
    for i in 0..NODES {
        assert!(c.wait_backend_state(i, 2, HEALTH_BOUND, |s| s == BackendState::Up));
    }
    // The moved clients are the ones a node without their pins would send
    // elsewhere: the table says backend 2 for each of them.
    for &k in &moved {
        for i in 0..NODES {
            assert_eq!(
                c.lookup(i, clients[k]).unwrap(),
                (Some(after[k]), true),
                "node {i} holds {}'s pin",
                clients[k]
            );
        }
    }
    c.stop_daemon(1).unwrap();
    assert!(c.node_announces(1).unwrap(), "SIGTERM leaves the route");
    let ns = c.nodes[1].ns.name.clone();
    let socket = c.nodes[1].control_socket();
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let restarted = Instant::now();
    let watcher = thread::spawn(move || {
        let mut r = Rejoin::default();
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end && !flag.load(Ordering::Relaxed) {
            // The route first, then the status: a route seen with a status
            // read after it saying "not ready" was there before the node
            // was ready (ready never goes back to false).
            // Until the withdrawal only the route: a status call can wait
            // for the new daemon's main loop, past the withdrawal.
            let route = announced_in(&ns);
            if r.withdrawn.is_none() {
                if !route {
                    r.withdrawn = Some(restarted.elapsed());
                }
            } else {
                let ready = status_at(&socket).is_some_and(|s| s.sync.is_some_and(|s| s.ready));
                let at = restarted.elapsed();
                if ready && r.ready.is_none() {
                    r.ready = Some(at);
                }
                if route {
                    r.announced_unready |= !ready;
                    r.announced = Some(at);
                    break;
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
        r
    });
    let res = c.restart_daemon(1, &["--fresh"]);
    let rejoin = if res.is_ok() {
        // Until it announced (or the watcher's bound).
        watcher.join().unwrap()
    } else {
        done.store(true, Ordering::Relaxed);
        let _ = watcher.join();
        panic!("restart with --fresh: {res:?}");
    };
    // Read at once: what the node had when it announced.
    let pins_missing: Vec<Ipv4Addr> = moved
        .iter()
        .filter(|&&k| c.lookup(1, clients[k]).unwrap() != (Some(after[k]), true))
        .map(|&k| clients[k])
        .collect();
    let joined = c.daemon(1).status().unwrap().sync.unwrap();
    let routed = c.wait_routed(&[0, 1, 2], ROUTE_BOUND).unwrap();
    let again = one_backend_each(&c, &clients, 3);
    let moved_fresh = (0..clients.len()).filter(|&k| again[k] != after[k]).count();
    eprintln!(
        "scenario 5, node 1 restarted with --fresh (its table replaced): withdrawn at \
         {:?}, sync ready at {:?} (joined from {:?}), announced again at {:?} after the \
         restart; on the router {routed:?} later; moved clients' pins missing on node 1 when it \
         announced: {} of {}; clients that changed backend over 3 rounds: {moved_fresh}; {:?} in all",
        rejoin.withdrawn,
        rejoin.ready,
        joined.joined_from,
        rejoin.announced,
        pins_missing.len(),
        moved.len(),
        start.elapsed()
    );
    assert!(
        rejoin.withdrawn.is_some() && rejoin.ready.is_some() && rejoin.announced.is_some(),
        "withdrawn, ready and announced again: {rejoin:?}\n{}",
        c.daemon(1).log_text()
    );
    assert!(
        !rejoin.announced_unready && rejoin.ready <= rejoin.announced,
        "announced before it was ready: {rejoin:?}"
    );
    assert!(
        joined.joined_from.is_some(),
        "pulled a peer's table: {joined:?}"
    );
    assert!(pins_missing.is_empty(), "pins missing: {pins_missing:?}");
    assert_eq!(moved_fresh, 0);
}

/// (node, client, its lookup, the backend that answered) for every node
/// and client where they differ.
fn lookups_disagreeing(
    c: &Cluster,
    clients: &[Ipv4Addr],
    answered: &[usize],
) -> Vec<(usize, Ipv4Addr, Option<usize>, usize)> {
    let mut out = Vec::new();
    for i in 0..NODES {
        if c.nodes[i].daemon.is_none() {
            continue;
        }
        for (k, &cl) in clients.iter().enumerate() {
            let (b, _) = c.lookup(i, cl).unwrap();
            if b != Some(answered[k]) {
                out.push((i, cl, b, answered[k]));
            }
        }
    }
    out
}

/// Scenario 4, with or without sync: how many clients changed backend
/// when the node that pinned them died.
///
/// Why the run without sync must move clients: the clients of group N
/// are pinned through node 0 alone (nodes 1 and 2 in maintenance) while
/// backend 2 is down, so node 0 pins them to backends 0 and 1. Backend 2
/// comes back: their pins keep them where they are (the point of
/// affinity), but the Maglev table of the full backend set now sends
/// about a third of them to backend 2. When node 0 dies, nodes 1 and 2
/// carry them: with sync they hold node 0's pins and nothing moves;
/// without, they have no entry and pick from the table, so exactly the
/// N clients whose table answer is backend 2 move — a number fixed by the
/// addresses and the table (predicted below by `lookup` on node 1, and
/// never 0 for 200 clients). Group M, new clients pinned after the
/// recovery, some to backend 2, is pinned as the table says and moves in
/// neither run.
fn recovery_then_the_pinning_node_dies(sync: bool) -> usize {
    const N: usize = 200;
    const M: usize = 200;
    let start = Instant::now();
    let mut c = cluster(N + M, sync);
    let group_n: Vec<Ipv4Addr> = c.clients[..N].to_vec();
    let group_m: Vec<Ipv4Addr> = c.clients[N..].to_vec();
    let label = if sync { "with sync" } else { "sync off" };

    for i in [1, 2] {
        c.set_maintenance(i, true).unwrap();
    }
    c.wait_routed(&[0], ROUTE_BOUND).unwrap();
    c.kill_server(2);
    for i in 0..NODES {
        assert!(c.wait_backend_state(i, 2, HEALTH_BOUND, |s| s == BackendState::Down));
    }
    let pinned_n = one_backend_each(&c, &group_n, 1);
    assert!(pinned_n.iter().all(|&b| b != 2));

    c.start_server(2).unwrap();
    for i in 0..NODES {
        assert!(c.wait_backend_state(i, 2, HEALTH_BOUND, |s| s == BackendState::Up));
    }
    let n_again = one_backend_each(&c, &group_n, 2);
    let n_stayed = (0..N).filter(|&k| n_again[k] == pinned_n[k]).count();
    let pinned_m = one_backend_each(&c, &group_m, 2);
    let m_to_2 = pinned_m.iter().filter(|&&b| b == 2).count();

    // What node 1 would send group N to: their pins (synced) or the table.
    if sync {
        assert!(
            stickylb_tests::netns::wait_for(Duration::from_secs(5), || {
                group_n
                    .iter()
                    .chain(&group_m)
                    .all(|&cl| (1..NODES).all(|i| c.lookup(i, cl).unwrap().1))
            }),
            "nodes 1 and 2 hold node 0's pins"
        );
    }
    let predicted: usize = (0..N)
        .filter(|&k| c.lookup(1, group_n[k]).unwrap().0 != Some(pinned_n[k]))
        .count();

    for i in [1, 2] {
        c.set_maintenance(i, false).unwrap();
    }
    // No traffic runs between maintenance off and the kill: node 0 is the
    // only node that ever carried these clients.
    c.vanish_node(0).unwrap();
    let dropped = c.wait_routed(&[1, 2], ROUTE_BOUND).unwrap();
    let everyone: Vec<Ipv4Addr> = group_n.iter().chain(&group_m).copied().collect();
    let was: Vec<usize> = pinned_n.iter().chain(&pinned_m).copied().collect();
    let (sets, failed) = answers(&c, &everyone, 3);
    let moved_n = (0..N)
        .filter(|&k| sets[k] != BTreeSet::from([was[k]]))
        .count();
    let moved_m = (N..N + M)
        .filter(|&k| sets[k] != BTreeSet::from([was[k]]))
        .count();
    eprintln!(
        "scenario 4 ({label}): {N} clients pinned through node 0 while backend 2 was down; \
         after its recovery {n_stayed} of them stayed put, and of {M} new clients {m_to_2} were \
         pinned to it; node 0 killed ({dropped:?} until the router dropped it); over 3 rounds \
         through nodes 1 and 2: clients that changed backend: {moved_n} of the {N} (`lookup` \
         on node 1 named another backend for {predicted} of them before the kill), {moved_m} of \
         the {M} new ones; {failed} requests \
         failed; {:?} in all",
        start.elapsed(),
    );
    assert_eq!(
        n_stayed, N,
        "clients pinned while backend 2 was down stay put"
    );
    assert!(m_to_2 > 0, "new clients reach the recovered backend");
    assert_eq!(failed, 0);
    assert_eq!(
        moved_m, 0,
        "clients pinned by the full table move in neither run"
    );
    if sync {
        assert_eq!(moved_n, 0, "with sync, no client changes backend");
    } else {
        assert!(
            predicted > 0,
            "the table sends some of group N to backend 2"
        );
        assert_eq!(moved_n, predicted, "without sync, the table decides");
    }
    moved_n
}

/// Scenario 4 with sync: 0 clients change backend.
#[test]
fn the_node_that_pinned_clients_dies_and_with_sync_none_moves() {
    let _serial = serial();
    assert_eq!(recovery_then_the_pinning_node_dies(true), 0);
}

/// Scenario 4 with sync off: the clients whose pins only the dead node
/// held move (the figure to compare with the run with sync).
#[test]
fn the_node_that_pinned_clients_dies_and_without_sync_some_move() {
    let _serial = serial();
    let moved = recovery_then_the_pinning_node_dies(false);
    eprintln!("scenario 4: without sync {moved} clients changed backend, with sync 0");
}

/// Scenario 6: node 2 cannot reach the backends (blackhole routes to them
/// in its namespace: its health checks fail, while its XDP program, which
/// forwards by MAC, could still reach them). It marks them all down and
/// withdraws the VIP; the router leaves it; nodes 0 and 1 keep serving
/// and no request started after that fails; undone, node 2 announces
/// again and serves, still without a failed request, and every client is
/// answered by one backend whichever node carries it.
#[test]
fn a_node_that_cannot_reach_the_backends_withdraws_and_the_others_serve() {
    let _serial = serial();
    let start = Instant::now();
    let c = cluster(CLIENTS, true);
    let clients = c.clients.clone();
    let before = one_backend_each(&c, &clients, 2);

    let load = Load::start_in(&c.client, VIP, &clients, Duration::from_secs(40));
    thread::sleep(Duration::from_millis(500));
    let cut = Instant::now();
    c.set_backends_blackholed(2, true).unwrap();
    assert!(
        c.daemon(2)
            .wait_backends(HEALTH_BOUND, |s, _| s == BackendState::Down),
        "node 2 marks every backend down: {:?}",
        c.daemon(2).vips()
    );
    let down = cut.elapsed();
    let dropped = c.wait_routed(&[0, 1], ROUTE_BOUND).unwrap();
    let converged = Instant::now();
    let left = cut.elapsed();
    let vip = &c.daemon(2).vips().unwrap()[0];
    let reason = vip.announce.and_then(|a| a.reason);
    assert!(!c.node_announces(2).unwrap());
    for i in [0, 1] {
        assert!(
            c.daemon(i)
                .wait_backends(Duration::ZERO, |s, _| s == BackendState::Up),
            "node {i} still sees every backend up"
        );
    }
    thread::sleep(Duration::from_secs(2));

    let frames_cut = c.daemon(2).vips().unwrap()[0].counters.packets;
    let undone = Instant::now();
    c.set_backends_blackholed(2, false).unwrap();
    let back = c.wait_routed(&[0, 1, 2], Duration::from_secs(10)).unwrap();
    thread::sleep(Duration::from_secs(2));
    let samples = load.finish();
    let settled = converged + SETTLE;
    let failed = samples.iter().filter(|s| s.backend.is_none()).count();
    let late: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.backend.is_none() && s.at > settled)
        .collect();
    let frames_back = c.daemon(2).vips().unwrap()[0].counters.packets - frames_cut;
    let moved_load = moved(&samples, &before);
    // When each moved client was first answered by another backend: while
    // node 2 was losing its backends, while it was out, or once back.
    let mut phases = [0usize; 3];
    for &k in &moved_load {
        let first = samples
            .iter()
            .filter(|s| s.client == k && s.backend.is_some_and(|b| b != before[k]))
            .map(|s| s.at)
            .min()
            .unwrap();
        phases[if first < converged {
            0
        } else if first < undone {
            1
        } else {
            2
        }] += 1;
    }
    eprintln!(
        "scenario 6, clients first answered by another backend while node 2 lost its backends, \
         while it was out, after the undo: {phases:?}"
    );
    eprintln!(
        "scenario 6, node 2 cut off from the backends (blackhole routes): all marked down after \
         {down:?}, withdrawn ({reason:?}) and gone from the router {left:?} after the cut \
         ({dropped:?} after the marking); {} requests from {CLIENTS} clients, {failed} failed \
         ({} of them started after the router had left node 2); undone: node 2 routed again \
         {back:?} after, and forwarded {frames_back} frames of the load then; clients that \
         changed backend: {}; {:?} in all",
        samples.len(),
        late.len(),
        moved_load.len(),
        start.elapsed()
    );
    assert_eq!(reason, Some(NotAnnounced::NoAliveBackend));
    assert!(
        late.is_empty(),
        "requests failed after convergence: {:?}",
        &late[..late.len().min(5)]
    );
    assert!(frames_back > 0, "node 2 serves again once it announces");
    // While node 2 loses its backends one by one (its checks' jitter), the
    // clients the router still sends it are re-pinned there to the backends
    // it still sees: those requests are answered by another backend. Its
    // peers, which saw no change, keep their earlier pins (the earliest live
    // pin wins), so no client moves once node 2 is out; and when it serves
    // again (re-warmed: once every backend is back) it pulls their table,
    // so no client moves after the undo either.
    assert_eq!(
        (phases[1], phases[2]),
        (0, 0),
        "clients moved while node 2 was out or after it came back"
    );
    thread::sleep(Duration::from_secs(1));
    let (sets, failed_after) = answers(&c, &clients, 3);
    let split = sets.iter().filter(|s| s.len() != 1).count();
    let not_home = sets
        .iter()
        .enumerate()
        .filter(|(k, s)| s.len() == 1 && !s.contains(&before[*k]))
        .count();
    eprintln!(
        "scenario 6, after the undo: {failed_after} of {} requests failed, {split} clients \
         answered by two backends over 3 rounds, {not_home} by another backend than before \
         the cut",
        3 * CLIENTS
    );
    assert_eq!(not_home, 0, "clients not back on their backend");
    let log = c.daemon(2).log_text();
    assert!(
        log.contains("pulling a peer's table again to catch up")
            && log.contains("caught up with the table of"),
        "node 2 pulled its peers' table once it served again:\n{log}"
    );
    assert_eq!(failed_after, 0);
    assert_eq!(split, 0, "clients answered by two backends: {sets:?}");
}
