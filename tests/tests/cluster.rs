//! Several stickylb nodes behind a router doing L4 ECMP over the routes
//! their BIRDs announce (tests/src/cluster.rs, docs/bird/*.conf): real BGP,
//! real clients and servers, in namespaces. Needs root (CI is root).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use lb_user::{control::Request, lb::LookupResult};
use stickylb_tests::{
    cluster::{Cluster, ClusterOptions, FAST_HEALTH, VIP},
    netns::{backend_addr, backend_of, http_get},
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

const NODES: usize = 3;
const BACKENDS: usize = 3;
const CLIENTS: usize = 210;
/// Connections per client, each from its own source port, so the router's
/// L4 hash has a chance to send one client to several nodes.
const CONNECTIONS: usize = 4;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// BGP sessions are up before `Cluster::up` returns; a route change then
/// reaches the router in milliseconds (measured: 5 ms), a silent node is
/// noticed by BFD (3 x 100 ms).
const ROUTE_BOUND: Duration = Duration::from_secs(5);

fn cluster(clients: usize) -> Cluster {
    Cluster::up(
        &ClusterOptions {
            nodes: NODES,
            backends: BACKENDS,
            clients,
        },
        BACKEND.as_ref(),
    )
    .expect("cluster up")
}

fn idx(a: SocketAddrV4) -> usize {
    (0..BACKENDS)
        .find(|&i| backend_addr(i) == *a.ip())
        .expect("known backend")
}

/// Node `node`'s `lookup` of `client`: the backend it names and whether it
/// holds an affinity entry (it carried the client) or only predicts.
fn lookup(c: &Cluster, node: usize, client: Ipv4Addr) -> (Option<usize>, bool) {
    let r: Vec<LookupResult> = serde_json::from_value(
        c.daemon(node)
            .call(&Request::Lookup {
                client: client.into(),
                vip: Some("web".into()),
            })
            .expect("lookup"),
    )
    .expect("lookup reply");
    (r[0].backend.map(idx), r[0].affinity_age_ms.is_some())
}

/// Scenario 1: 3 nodes, 210 clients with 4 connections each. Without any
/// sync between the nodes (the backends never change), every node's Maglev
/// table sends a client to the same backend, so a client whose connections
/// the router spreads over several nodes still reaches one backend.
#[test]
fn ecmp_spreads_clients_over_nodes_and_each_client_reaches_one_backend() {
    let start = Instant::now();
    let mut c = cluster(CLIENTS);
    // Sync off on purpose: which nodes carried a client is read below from
    // the nodes' affinity entries, and a node holds one for exactly the
    // clients it forwarded only while no peer sends it theirs. The
    // backends never change here, so every node's Maglev table alone
    // sends a client to one backend.
    let took = c
        .start_announcing(STICKYLB.as_ref(), "", "affinity_timeout = \"5m\"", false)
        .expect("daemons announce");
    println!(
        "router forwards the VIP to all {NODES} nodes {took:?} after their backends were up (each daemon announced it)"
    );

    // Every client's connections, in parallel over the clients (each
    // client's own connections one after the other).
    let clients = c.clients.clone();
    let answers: Vec<Vec<Result<usize, String>>> = c.client.enter(move || {
        let per = clients.len().div_ceil(16);
        let handles: Vec<_> = clients
            .chunks(per)
            .map(|chunk| {
                let chunk = chunk.to_vec();
                thread::spawn(move || {
                    chunk
                        .iter()
                        .map(|&cl| {
                            (0..CONNECTIONS)
                                .map(|_| {
                                    let a = http_get(
                                        cl,
                                        SocketAddrV4::new(VIP, 80),
                                        "/",
                                        None,
                                        REQUEST_TIMEOUT,
                                    )
                                    .map_err(|e| e.to_string())?;
                                    backend_of(&a).ok_or_else(|| format!("body {:?}", a.body))
                                })
                                .collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let failures: Vec<&String> = answers
        .iter()
        .flatten()
        .filter_map(|r| r.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures.len(),
        CLIENTS * CONNECTIONS,
        &failures[..failures.len().min(5)]
    );
    let backend_sets: Vec<BTreeSet<usize>> = answers
        .iter()
        .map(|a| a.iter().map(|r| *r.as_ref().unwrap()).collect())
        .collect();
    let split: Vec<(Ipv4Addr, &BTreeSet<usize>)> = c
        .clients
        .iter()
        .copied()
        .zip(&backend_sets)
        .filter(|(_, s)| s.len() > 1)
        .collect();

    // Which nodes carried each client: with no sync, a node holds an
    // affinity entry for exactly the clients it forwarded.
    let mut carried_by: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); CLIENTS];
    let mut disagreements = Vec::new();
    for node in 0..NODES {
        for (k, &cl) in c.clients.iter().enumerate() {
            let (backend, pinned) = lookup(&c, node, cl);
            if pinned {
                carried_by[k].insert(node);
            }
            let want = backend_sets[k].first().copied();
            if backend != want {
                disagreements.push((node, cl, backend, want));
            }
        }
    }
    let mut frames = BTreeMap::new();
    let mut clients_of = BTreeMap::new();
    for node in 0..NODES {
        let vips = c.daemon(node).vips().unwrap();
        frames.insert(node, vips[0].counters.packets);
        clients_of.insert(
            node,
            carried_by.iter().filter(|s| s.contains(&node)).count(),
        );
    }
    let multi = carried_by.iter().filter(|s| s.len() >= 2).count();
    let uncarried = carried_by.iter().filter(|s| s.is_empty()).count();
    let mut per_backend = [0usize; BACKENDS];
    for s in &backend_sets {
        for &b in s {
            per_backend[b] += 1;
        }
    }
    println!(
        "{CLIENTS} clients x {CONNECTIONS} connections over {NODES} nodes: frames forwarded per \
         node {frames:?}, clients carried per node {clients_of:?}; clients carried by >= 2 nodes: \
         {multi}, by all {NODES}: {}; clients per backend {per_backend:?}; clients answered by \
         two backends: {}; lookups disagreeing with the answering backend: {}",
        carried_by.iter().filter(|s| s.len() == NODES).count(),
        split.len(),
        disagreements.len()
    );
    assert_eq!(uncarried, 0, "every client was forwarded by some node");
    assert!(
        multi > 0,
        "no client's connections were spread over two nodes: the test proves nothing"
    );
    assert!(
        frames.values().all(|&f| f > 0),
        "every node forwarded: {frames:?}"
    );
    assert!(
        split.is_empty(),
        "clients answered by two backends: {split:?}"
    );
    assert!(
        disagreements.is_empty(),
        "(node, client, lookup, answered): {:?}",
        &disagreements[..disagreements.len().min(10)]
    );

    // The CLI as an operator runs it, on every node, for a sample of the
    // clients spread over nodes.
    let sample: Vec<usize> = (0..CLIENTS)
        .filter(|&k| carried_by[k].len() >= 2)
        .take(8)
        .collect();
    for &k in &sample {
        let want = format!("{}:80", backend_addr(*backend_sets[k].first().unwrap()));
        for node in 0..NODES {
            let (code, out, err) = c.daemon(node).cli(&["lookup", &c.clients[k].to_string()]);
            assert_eq!(code, 0, "stickylb lookup on node {node}: {err}");
            assert!(
                out.contains(&want),
                "node {node}: lookup of {} names {want}? {out}",
                c.clients[k]
            );
        }
    }
    println!(
        "`stickylb lookup` agrees on all {NODES} nodes for {} sampled clients; {:?} in all",
        sample.len(),
        start.elapsed()
    );
    assert!(start.elapsed() < Duration::from_secs(50));
}

/// The router stops using a node whose route goes: withdrawn by its daemon
/// (maintenance), removed from its table by hand, its BIRD killed, its link
/// down; and uses it again once it is back. The daemons announce, with sync.
#[test]
fn router_drops_a_node_that_withdraws_dies_or_loses_its_link() {
    let start = Instant::now();
    let mut c = cluster(1);
    let took = c
        .start_announcing(STICKYLB.as_ref(), FAST_HEALTH, "", true)
        .expect("daemons announce");
    println!("announced by {NODES} daemons: on the router after {took:?}");
    assert_eq!(
        c.router_nexthops().unwrap().len(),
        NODES,
        "one ECMP route with a next hop per node"
    );

    c.set_maintenance(2, true).unwrap();
    let withdrawn = c.wait_routed(&[0, 1], ROUTE_BOUND).unwrap();
    assert!(
        !c.node_announces(2).unwrap(),
        "maintenance removed the route"
    );
    c.set_maintenance(2, false).unwrap();
    let back = c.wait_routed(&[0, 1, 2], ROUTE_BOUND).unwrap();
    println!(
        "node 2 in maintenance (its daemon withdrew): gone from the router after {withdrawn:?}, back {back:?} after maintenance off"
    );

    // A route put into the table by hand is announced as the daemon's is:
    // BIRD exports whatever of protocol 250 the table holds.
    c.set_maintenance(1, true).unwrap();
    c.wait_routed(&[0, 2], ROUTE_BOUND).unwrap();
    c.add_vip_route(1).unwrap();
    let injected = c.wait_routed(&[0, 1, 2], ROUTE_BOUND).unwrap();
    c.del_vip_route(1).unwrap();
    let removed = c.wait_routed(&[0, 2], ROUTE_BOUND).unwrap();
    c.set_maintenance(1, false).unwrap();
    c.wait_routed(&[0, 1, 2], ROUTE_BOUND).unwrap();
    println!(
        "a route injected into node 1's table: on the router after {injected:?}, removed: gone after {removed:?}"
    );

    c.kill9_bird(1);
    let killed = c.wait_routed(&[0, 2], ROUTE_BOUND).unwrap();
    c.start_bird(1).unwrap();
    let rejoined = c.wait_routed(&[0, 1, 2], Duration::from_secs(10)).unwrap();
    println!(
        "node 1's BIRD killed (kill -9): gone from the router after {killed:?}; restarted, back after {rejoined:?}"
    );

    c.set_node_link(0, false).unwrap();
    let link = c.wait_routed(&[1, 2], ROUTE_BOUND).unwrap();
    c.set_node_link(0, true).unwrap();
    let relinked = c.wait_routed(&[0, 1, 2], Duration::from_secs(15)).unwrap();
    println!(
        "node 0's link down: gone from the router after {link:?} (BFD 3 x 100 ms); link up, back after {relinked:?}"
    );
    assert!(
        link < Duration::from_secs(1),
        "BFD notices a silent node in well under a second: {link:?}"
    );
    println!("{:?} in all", start.elapsed());
}
