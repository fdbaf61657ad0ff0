//! The demo's multi-node act: three stickylb nodes behind a router that
//! spreads the clients' connections over them by ECMP (real BIRD on every
//! node and on the router, tests/src/cluster.rs), the nodes syncing their
//! affinity tables; one node dies under load and comes back with `--fresh`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    ops::Range,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_user::{
    announce::{MAINTENANCE_DIR, Maintenance},
    api::{BackendState, PeerState},
    control::Request,
    lb::LookupResult,
};
use stickylb_tests::{
    cluster::{self, Cluster, ClusterOptions, VIP, node_addr},
    netns::{Reaper, backend_addr, backend_of, enter_path, http_get, sh, wait_for},
};

use crate::{indent, step};

const NODES: usize = 3;
const BACKENDS: usize = 3;
const SYNC_PORT: u16 = 7946;
const HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";
/// Threads of the load; each walks its share of the clients, a new TCP
/// connection per request (so a new source port: the router's L4 hash
/// sends one client's connections to different nodes).
const WORKERS: usize = 16;
/// Pause after each walk: keeps the load at some 1-2k requests/s, which
/// the small machines CI runs on can carry next to everything else.
const PAUSE: Duration = Duration::from_millis(100);
/// How long one request may take. A SYN sent to a node that has just died
/// is lost; the kernel sends it again after 1 s, by then (BFD) over a live
/// node: such a request is slow, not failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A request slower than this met the node's death (a lost SYN).
const SLOW: Duration = Duration::from_millis(500);
const NODE_DEAD: usize = 0;

struct Sizes {
    /// Clients under steady load from the start.
    load: usize,
    /// Clients that first appear while a backend is down, through one
    /// node only.
    late: usize,
    /// How long each phase lets the load run.
    phase: Duration,
}

/// One request of the load: when it ended, whose it was, which backend
/// answered (None: it failed).
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    took: Duration,
    client: usize,
    backend: Option<usize>,
}

/// A steady load from some clients, in the clients' namespace, until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(c: &Cluster, clients: Range<usize>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let addrs: Vec<(usize, Ipv4Addr)> = clients.map(|i| (i, c.clients[i])).collect();
        let per = addrs.len().div_ceil(WORKERS);
        let ns = c.client.path();
        let workers = addrs
            .chunks(per)
            .map(|chunk| {
                let chunk = chunk.to_vec();
                let (ns, stop, samples) = (ns.clone(), stop.clone(), samples.clone());
                thread::spawn(move || {
                    enter_path(&ns);
                    while !stop.load(Ordering::Relaxed) {
                        for &(i, a) in &chunk {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            let start = Instant::now();
                            let backend =
                                http_get(a, SocketAddrV4::new(VIP, 80), "/", None, REQUEST_TIMEOUT)
                                    .ok()
                                    .and_then(|a| backend_of(&a));
                            samples.lock().unwrap().push(Sample {
                                at: Instant::now(),
                                took: start.elapsed(),
                                client: i,
                                backend,
                            });
                        }
                        thread::sleep(PAUSE);
                    }
                })
            })
            .collect();
        Self {
            stop,
            samples,
            workers,
        }
    }

    /// The requests that ended in `[from, to)`.
    fn between(&self, from: Instant, to: Instant) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.at >= from && s.at < to)
            .copied()
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Removes the maintenance state the act may leave on (it is kept in
/// /run across daemon restarts); a `Reaper` does it if the demo is killed.
struct MaintenanceFiles(Vec<PathBuf>, Option<Reaper>);

impl Drop for MaintenanceFiles {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = fs::remove_file(f);
        }
        self.1.take();
    }
}

/// Node `i`'s `[sync]`: its own address, the others as peers.
fn sync_section(i: usize, key: &Path) -> String {
    let peers: Vec<String> = (0..NODES)
        .filter(|&j| j != i)
        .map(|j| format!("\"{}:{SYNC_PORT}\"", node_addr(j)))
        .collect();
    format!(
        "\n[sync]\nlisten = \"{}:{SYNC_PORT}\"\npeers = [{}]\nkey_file = \"{}\"\njoin_timeout = \"2s\"\n",
        node_addr(i),
        peers.join(", "),
        key.display()
    )
}

fn idx(a: SocketAddrV4) -> Option<usize> {
    (0..BACKENDS).find(|&i| backend_addr(i) == *a.ip())
}

/// Node `node`'s `lookup` of `client`: the backend, and whether it comes
/// from an affinity entry (else it is the Maglev table's pick).
fn lookup(c: &Cluster, node: usize, client: Ipv4Addr) -> Result<(Option<usize>, bool), String> {
    let r: Vec<LookupResult> = serde_json::from_value(c.daemon(node).call(&Request::Lookup {
        client: client.into(),
        vip: Some("web".into()),
    })?)
    .map_err(|e| e.to_string())?;
    let r = r.first().ok_or("empty lookup reply")?;
    Ok((r.backend.and_then(idx), r.affinity_age_ms.is_some()))
}

/// One request from each of `clients` (parallel): who answered, or why not.
fn round(c: &Cluster, clients: &[usize]) -> Vec<Result<usize, String>> {
    let addrs: Vec<Ipv4Addr> = clients.iter().map(|&i| c.clients[i]).collect();
    c.client.enter(move || {
        let per = addrs.len().div_ceil(WORKERS);
        let hs: Vec<_> = addrs
            .chunks(per)
            .map(|chunk| {
                let chunk = chunk.to_vec();
                thread::spawn(move || {
                    chunk
                        .iter()
                        .map(|&a| {
                            let r =
                                http_get(a, SocketAddrV4::new(VIP, 80), "/", None, REQUEST_TIMEOUT)
                                    .map_err(|e| e.to_string())?;
                            backend_of(&r).ok_or_else(|| format!("answer {:?}", r.body))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// A request from each of `clients` until each has an answer (three tries):
/// who answered each.
fn pin(c: &Cluster, clients: Range<usize>) -> Result<BTreeMap<usize, usize>, String> {
    let mut answered = BTreeMap::new();
    let mut left: Vec<usize> = clients.collect();
    for _ in 0..3 {
        let mut errors = Vec::new();
        for (i, r) in left.iter().zip(round(c, &left)) {
            match r {
                Ok(b) => {
                    answered.insert(*i, b);
                }
                Err(e) => errors.push((*i, e)),
            }
        }
        if errors.is_empty() {
            return Ok(answered);
        }
        println!(
            "   ({} of {} requests failed, e.g. {}; again)",
            errors.len(),
            left.len(),
            errors[0].1
        );
        left = errors.into_iter().map(|(i, _)| i).collect();
    }
    Err(format!(
        "{} clients got no answer in three tries",
        left.len()
    ))
}

/// Watches `ip ARGS` in a namespace (every 5 ms) for when its output
/// lacks `needle`: the first and last time it did, after `t0`.
struct Absence(thread::JoinHandle<Option<(Duration, Duration)>>);

impl Absence {
    fn watch(
        ns: PathBuf,
        args: Vec<String>,
        needle: String,
        t0: Instant,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self(thread::spawn(move || {
            enter_path(&ns);
            let mut gone: Option<(Duration, Duration)> = None;
            while !stop.load(Ordering::Relaxed) {
                let present = Command::new("ip")
                    .args(&args)
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&needle));
                let at = t0.elapsed();
                match (&mut gone, present) {
                    (None, false) => gone = Some((at, at)),
                    (Some((_, last)), false) => *last = at,
                    _ => {}
                }
                thread::sleep(Duration::from_millis(5));
            }
            gone
        }))
    }

    /// What it saw, for a person.
    fn describe(self) -> String {
        match self.0.join() {
            Err(_) => "(the watcher panicked)".into(),
            Ok(None) => "never gone".into(),
            Ok(Some((from, to))) => format!(
                "gone from +{} to +{} ms after the restart (looked at every 5 ms)",
                ms(from),
                ms(to)
            ),
        }
    }
}

/// Whether each of `nodes` has all its peers up.
fn peers_up(c: &Cluster, nodes: &[usize]) -> bool {
    nodes.iter().all(|&i| {
        c.daemon(i).status().is_ok_and(|s| {
            s.sync
                .is_some_and(|s| s.peers.iter().all(|p| p.state == PeerState::Up))
        })
    })
}

/// Node 0's pins of `clients`, and how many of them node 1 or node 2 does
/// not hold the same.
fn disagreements(c: &Cluster, clients: &[usize]) -> (usize, BTreeMap<usize, usize>) {
    let mut pins = BTreeMap::new();
    let mut differ = 0;
    for &i in clients {
        let a = c.clients[i];
        let Ok((Some(b), true)) = lookup(c, 0, a) else {
            differ += 1;
            continue;
        };
        pins.insert(i, b);
        let same = [1, 2]
            .iter()
            .all(|&n| lookup(c, n, a).is_ok_and(|p| p == (Some(b), true)));
        differ += usize::from(!same);
    }
    (differ, pins)
}

/// Frames each node forwarded for the VIP so far.
fn packets(c: &Cluster, nodes: &[usize]) -> Result<BTreeMap<usize, u64>, String> {
    nodes
        .iter()
        .map(|&i| Ok((i, c.daemon(i).vips()?[0].counters.packets)))
        .collect()
}

fn shares(before: &BTreeMap<usize, u64>, after: &BTreeMap<usize, u64>) -> String {
    let d: Vec<(usize, u64)> = after
        .iter()
        .map(|(i, a)| (*i, a - before.get(i).copied().unwrap_or(0)))
        .collect();
    let total: u64 = d.iter().map(|(_, n)| n).sum::<u64>().max(1);
    d.iter()
        .map(|(i, n)| format!("node {i} {:>3} % ({n} frames)", n * 100 / total))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The lines of `stickylb status` about announcing and sync.
fn status_excerpt(c: &Cluster, node: usize) -> String {
    let (_, out, err) = c.daemon(node).cli(&["status"]);
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("sync on")
                || t.starts_with("peer ")
                || t.starts_with("VIP ")
                || t.contains("announced")
                || t.starts_with("announcing")
        })
        .collect();
    if lines.is_empty() {
        format!("{out}{err}")
    } else {
        lines.join("\n") + "\n"
    }
}

/// The last backend that answered each client before `t`.
fn last_backends(samples: &[Sample], t: Instant) -> BTreeMap<usize, usize> {
    let mut m = BTreeMap::new();
    for s in samples.iter().filter(|s| s.at < t) {
        if let Some(b) = s.backend {
            m.insert(s.client, b);
        }
    }
    m
}

/// Clients answered after `t` by another backend than in `baseline`.
fn changed(samples: &[Sample], baseline: &BTreeMap<usize, usize>) -> BTreeSet<usize> {
    samples
        .iter()
        .filter_map(|s| Some((s.client, s.backend?)))
        .filter(|(c, b)| baseline.get(c).is_some_and(|old| old != b))
        .map(|(c, _)| c)
        .collect()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

pub fn run(stickylb: &Path, server: &Path, quick: bool, first: usize) -> Result<(), String> {
    let sizes = if quick {
        Sizes {
            load: 150,
            late: 45,
            phase: Duration::from_millis(1500),
        }
    } else {
        Sizes {
            load: 300,
            late: 60,
            phase: Duration::from_secs(3),
        }
    };
    let load_clients = 0..sizes.load;
    let late_clients = sizes.load..sizes.load + sizes.late;

    step(
        first,
        "several nodes: three stickylb nodes behind a BGP router",
    );
    let t = Instant::now();
    let mut c = Cluster::up(
        &ClusterOptions {
            nodes: NODES,
            backends: BACKENDS,
            clients: sizes.load + sizes.late,
        },
        server,
    )?;
    let files: Vec<PathBuf> = c
        .nodes
        .iter()
        .map(|n| {
            Maintenance::load(Path::new(MAINTENANCE_DIR), &n.pin.0)
                .file()
                .to_owned()
        })
        .collect();
    let reaper = Reaper::spawn(
        &c.id,
        &files.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    )?;
    let maintenance = MaintenanceFiles(files, Some(reaper));
    println!(
        "   namespaces {id}-*: {} clients (10.78.1.x) → a router running BIRD with ECMP over the\n   \
         nodes, hashing on L4 ports (fib_multipath_hash_policy=1) → {NODES} LB nodes (10.77.0.1-{NODES}),\n   \
         each with stickylb and its own BIRD → {BACKENDS} backends. VIP {VIP}: no node owns it, the\n   \
         router reaches it only through the routes the nodes announce. BGP sessions up in {} ms.",
        sizes.load + sizes.late,
        ms(t.elapsed()),
        id = c.id
    );
    // As a real switch port and NIC would (see `set_node_flood`).
    for i in 0..NODES {
        c.set_node_flood(i, false)?;
    }
    let key = c.tmp.join("sync.key");
    sh(Command::new("sh").arg("-c").arg(format!(
        "umask 077; head -c 32 /dev/urandom | base64 > {}",
        key.display()
    )))?;
    println!(
        "   shared sync key: umask 077; head -c 32 /dev/urandom | base64 > {}",
        key.display()
    );
    let t = Instant::now();
    for i in 0..NODES {
        let extra = cluster::announce_section() + &sync_section(i, &key);
        let config = c.config(i, HEALTH, "affinity_timeout = \"10m\"", &extra);
        c.start_daemon(i, stickylb, &config, &[])?;
        if i == 0 {
            // The first node finds no peer with a table: it waits
            // join_timeout, then serves alone; the others join it.
            let ready = wait_for(Duration::from_secs(8), || {
                c.daemon(0)
                    .status()
                    .is_ok_and(|s| s.sync.is_some_and(|s| s.ready))
            });
            if !ready {
                return Err(format!(
                    "node 0 did not become ready:\n{}",
                    c.daemon(0).log_text()
                ));
            }
        }
    }
    for i in 0..NODES {
        if !c
            .daemon(i)
            .wait_backends(Duration::from_secs(10), |s, _| s == BackendState::Up)
        {
            return Err(format!(
                "node {i}: backends not up:\n{}",
                c.daemon(i).log_text()
            ));
        }
    }
    c.wait_routed(&[0, 1, 2], Duration::from_secs(10))?;
    println!(
        "   every node: stickylb run with [announce] (table {}, protocol {}) and [sync] (listen on its\n   \
         address, port {SYNC_PORT}, the other two as peers). Node 0 waited join_timeout (2s) for a table and\n   \
         served alone; nodes 1 and 2 pulled node 0's. All announced, routed by all {NODES} in {} ms.",
        cluster::ANNOUNCE_TABLE,
        cluster::ANNOUNCE_PROTOCOL,
        ms(t.elapsed())
    );
    println!("   node 0: ip route show table {}", cluster::ANNOUNCE_TABLE);
    print!("{}", indent(&indent(&c.node_routes(0)?)));
    let t = Instant::now();
    if !wait_for(Duration::from_secs(15), || peers_up(&c, &[0, 1, 2])) {
        println!("   (not every node's peers are up after 15 s; node 0:)");
        print!("{}", indent(&indent(&status_excerpt(&c, 0))));
    } else {
        println!(
            "   stickylb status on every node: both peers up (after {} ms more).",
            ms(t.elapsed())
        );
    }
    println!("   node 1: stickylb status (announce and sync lines):");
    print!("{}", indent(&indent(&status_excerpt(&c, 1))));
    println!("   router: birdc show route");
    print!(
        "{}",
        indent(&indent(&c.router_bird.birdc(&["show", "route"])?))
    );
    println!("   router: ip route show {VIP}   (one route, a next hop per node)");
    print!(
        "{}",
        indent(&indent(&c.router.ip(&[
            "route",
            "show",
            &VIP.to_string()
        ])?))
    );

    step(first + 1, "steady load over the three nodes");
    // What the Maglev table gives every client with every backend up (the
    // late clients have not talked yet; the others' first pins): after the
    // outage below it gives the same again, and some pins differ from it.
    let mut maglev = BTreeMap::new();
    for i in late_clients.clone() {
        maglev.insert(i, lookup(&c, 1, c.clients[i])?.0);
    }
    let before = packets(&c, &[0, 1, 2])?;
    let t0 = Instant::now();
    let load = Load::start(&c, load_clients.clone());
    thread::sleep(sizes.phase);
    let t1 = Instant::now();
    let after = packets(&c, &[0, 1, 2])?;
    let s = load.between(t0, t1);
    let failed = s.iter().filter(|s| s.backend.is_none()).count();
    let mut per_client: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for x in &s {
        if let Some(b) = x.backend {
            per_client.entry(x.client).or_default().insert(b);
        }
    }
    let split = per_client.values().filter(|b| b.len() > 1).count();
    for (i, b) in &per_client {
        maglev.insert(*i, b.first().copied());
    }
    println!(
        "   {} clients, each a new TCP connection every ~{} ms: {} requests in {} ms, {failed} failed.\n   \
         each node's share: {}\n   \
         clients answered by more than one backend: {split} (their connections reach every node; all\n   \
         nodes build the same Maglev table from the same backends and hash seed).",
        sizes.load,
        ms(PAUSE) + 20,
        s.len(),
        ms(t1 - t0),
        shares(&before, &after)
    );

    step(
        first + 2,
        "pins only the sync knows: new clients while backend-1 is down, through node 0 only",
    );
    for i in [1, 2] {
        let (code, out, err) = c.daemon(i).cli(&["maintenance", "on"]);
        if code != 0 {
            return Err(format!("node {i}: maintenance on: {out}{err}"));
        }
    }
    let took = c.wait_routed(&[0], Duration::from_secs(10))?;
    println!(
        "   stickylb maintenance on, on nodes 1 and 2: they withdraw the VIP (and keep forwarding what\n   \
         still arrives); the router sends everything to node 0 after {} ms.",
        ms(took)
    );
    let t = Instant::now();
    c.kill_server(1);
    let down = wait_for(Duration::from_secs(10), || {
        (0..NODES).all(|i| {
            c.daemon(i)
                .vips()
                .is_ok_and(|v| v[0].backends[1].state == BackendState::Down)
        })
    });
    if !down {
        return Err("backend-1 was not marked down on every node".into());
    }
    println!(
        "   backend-1 killed: every node marked it down by its own checks within {} ms.",
        ms(t.elapsed())
    );
    let pinned = pin(&c, late_clients.clone())?;
    c.start_server(1)?;
    let up = wait_for(Duration::from_secs(10), || {
        (0..NODES).all(|i| {
            c.daemon(i)
                .vips()
                .is_ok_and(|v| v[0].backends.iter().all(|b| b.state == BackendState::Up))
        })
    });
    if !up {
        return Err("backend-1 did not come back on every node".into());
    }
    for i in [1, 2] {
        let (code, out, err) = c.daemon(i).cli(&["maintenance", "off"]);
        if code != 0 {
            return Err(format!("node {i}: maintenance off: {out}{err}"));
        }
    }
    c.wait_routed(&[0, 1, 2], Duration::from_secs(10))?;
    drop(maintenance);
    let repinned = (0..sizes.load)
        .filter(|i| maglev.get(i) == Some(&Some(1)))
        .count();
    let t = Instant::now();
    let everyone: Vec<usize> = (0..sizes.load + sizes.late).collect();
    let mut agreement = (0, BTreeMap::new());
    let agreed = wait_for(Duration::from_secs(10), || {
        agreement = disagreements(&c, &everyone);
        agreement.0 == 0
    });
    let (disagree, node0) = agreement;
    // The clients whose pin is not what the table now says: without the
    // pins node 0 sent, nodes 1 and 2 would send them to backend-1.
    let only_sync: Vec<usize> = node0
        .iter()
        .filter(|(i, b)| maglev.get(i).copied().flatten().is_some_and(|m| m != **b))
        .map(|(i, _)| *i)
        .collect();
    println!(
        "   node 0 re-pinned the {repinned} steady clients backend-1 had, and pinned {} new clients, to\n   \
         backend-0 or backend-2. Backend-1 is back, maintenance is off: for {} clients the Maglev table now\n   \
         says backend-1, and only their pins keep them where they are.",
        pinned.len(),
        only_sync.len()
    );
    if agreed {
        println!(
            "   nodes 1 and 2 hold node 0's pin for every one of the {} clients ({} ms after maintenance\n   \
             ended): the sync sent them.",
            everyone.len(),
            ms(t.elapsed())
        );
    } else {
        println!(
            "   nodes 1 and 2 still disagree with node 0 on {disagree} of the {} clients after 10 s; node 1:",
            everyone.len()
        );
        print!("{}", indent(&indent(&status_excerpt(&c, 1))));
    }
    if let Some(&i) = only_sync.first() {
        let a = c.clients[i].to_string();
        let (_, out, _) = c.daemon(1).cli(&["lookup", &a]);
        println!("   node 1: stickylb lookup {a}");
        print!("{}", indent(&indent(&out)));
    }
    let late = Load::start(&c, late_clients.clone());
    thread::sleep(sizes.phase / 2);

    step(
        first + 3,
        "node 0 dies under load: link down, kill -9 of stickylb and BIRD",
    );
    let t_kill = Instant::now();
    c.set_node_link(NODE_DEAD, false)?;
    c.kill_node(NODE_DEAD);
    let took = c.wait_routed(&[1, 2], Duration::from_secs(10))?;
    let t_routed = t_kill + took;
    println!(
        "   +{:>5} ms  the router stops using node 0 (BFD: 3 missed packets of 100 ms)",
        ms(took)
    );
    println!(
        "   router: ip route show {VIP}\n{}",
        indent(&indent(&c.router.ip(&[
            "route",
            "show",
            &VIP.to_string()
        ])?))
    );
    thread::sleep(sizes.phase);
    let t_seen = Instant::now();
    let mut all = load.between(t0, t_seen);
    all.extend(late.between(t0, t_seen));
    let baseline = last_backends(&all, t_kill);
    let during: Vec<Sample> = all.iter().filter(|s| s.at >= t_kill).copied().collect();
    let failed = during.iter().filter(|s| s.backend.is_none()).count();
    let slow = during
        .iter()
        .filter(|s| s.backend.is_some() && s.took > SLOW)
        .count();
    let late_fail = during
        .iter()
        .filter(|s| s.backend.is_none() && s.at > t_routed + REQUEST_TIMEOUT)
        .count();
    let moved = changed(&during, &baseline);
    let moved_sync = only_sync.iter().filter(|i| moved.contains(i)).count();
    println!(
        "   +{:>5} ms  {} requests since the kill: {failed} failed ({late_fail} of them after the reroute);\n   \
         \x20          {slow} took over {} ms: the router sent their SYN to node 0 before it noticed, the\n   \
         \x20          kernel sent it again 1 s later, to a live node.\n   \
         \x20          Clients that changed backend: {} of {} ({moved_sync} of the {} that only the synced pins keep):\n   \
         \x20          the survivors have node 0's pins.",
        ms(t_seen - t_kill),
        during.len(),
        ms(SLOW),
        moved.len(),
        baseline.len(),
        only_sync.len()
    );
    // A peer that vanished without closing its connections is noticed by
    // the missing keepalives (10 s).
    let gone = wait_for(Duration::from_secs(15), || {
        [1, 2].iter().all(|&n| {
            c.daemon(n).status().is_ok_and(|s| {
                s.sync.is_some_and(|s| {
                    s.peers.iter().any(|p| {
                        *p.address.ip() == node_addr(NODE_DEAD) && p.state != PeerState::Up
                    })
                })
            })
        })
    });
    println!(
        "   +{:>5} ms  the survivors {} their peer 10.77.0.1 down (nothing heard from it for 10 s); node 1:",
        ms(t_kill.elapsed()),
        if gone { "see" } else { "still do not see" }
    );
    print!("{}", indent(&indent(&status_excerpt(&c, 1))));

    step(
        first + 4,
        "node 0 comes back with --fresh: it pulls the table before it announces",
    );
    let t_back = Instant::now();
    let mut all = load.between(t0, t_back);
    all.extend(late.between(t0, t_back));
    let baseline = last_backends(&all, t_back);
    c.set_node_link(NODE_DEAD, true)?;
    c.start_bird(NODE_DEAD)?;
    c.restart_daemon(NODE_DEAD, &["--fresh"])?;
    let t_up = t_back.elapsed();
    println!(
        "   +{:>5} ms  link up, BIRD started; stickylb run --fresh (new, empty maps; it waits withdraw_delay,\n   \
         \x20          2 s, before replacing them) answers",
        ms(t_up)
    );
    let (mut joined, mut announced, mut routed) = (None, None, None);
    let mut early = false;
    let mut first_state = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while routed.is_none() && Instant::now() < deadline {
        let st = c.daemon(NODE_DEAD).status()?;
        let sync = st.sync.clone().ok_or("no sync status")?;
        let vip = st.vips.first().ok_or("no VIP")?;
        let is_announced = vip.announce.is_some_and(|a| a.announced);
        if first_state.is_none() {
            first_state = Some(format!(
                "sync {}, VIP {}; the router uses nodes {:?}",
                if sync.ready { "ready" } else { "JOINING" },
                match vip.announce.and_then(|a| a.reason) {
                    Some(r) => format!("not announced: {r}"),
                    None if is_announced => "announced".into(),
                    None => "not announced".into(),
                },
                c.routed_nodes()?
            ));
        }
        if sync.ready && joined.is_none() {
            let received: u64 = sync.peers.iter().map(|p| p.received).sum();
            joined = Some((t_back.elapsed(), sync.joined_from, received));
        }
        if is_announced && announced.is_none() {
            early |= joined.is_none();
            announced = Some(t_back.elapsed());
        }
        if announced.is_some() && c.routed_nodes()?.contains(&NODE_DEAD) {
            routed = Some(t_back.elapsed());
        }
        thread::sleep(Duration::from_millis(10));
    }
    println!(
        "   +{:>5} ms  first status: {}",
        ms(t_up),
        first_state.unwrap_or_default()
    );
    match joined {
        Some((at, from, n)) => println!(
            "   +{:>5} ms  joined with the table of {}: {n} entries received",
            ms(at),
            from.map_or("no peer".into(), |f| f.to_string())
        ),
        None => return Err("node 0 did not join".into()),
    }
    let (Some(announced), Some(routed)) = (announced, routed) else {
        return Err(format!(
            "node 0 did not announce the VIP again:\n{}",
            c.daemon(NODE_DEAD).log_text()
        ));
    };
    println!(
        "   +{:>5} ms  VIP announced (joined, warmed up, backends alive){}",
        ms(announced),
        if early {
            "  -- BEFORE it had joined!"
        } else {
            ""
        }
    );
    println!("   +{:>5} ms  the router uses node 0 again", ms(routed));
    let t_routed = t_back + routed;
    let before = packets(&c, &[0, 1, 2])?;
    thread::sleep(sizes.phase);
    let t_end = Instant::now();
    let after = packets(&c, &[0, 1, 2])?;
    let mut all = load.between(t_back, t_end);
    all.extend(late.between(t_back, t_end));
    let failed = all.iter().filter(|s| s.backend.is_none()).count();
    let moved = changed(&all, &baseline);
    let moved_sync = only_sync.iter().filter(|i| moved.contains(i)).count();
    let after_routed = all.iter().filter(|s| s.at >= t_routed).count();
    println!(
        "   {} requests since the restart ({after_routed} once node 0 was routed again), {failed} failed;\n   \
         clients that changed backend: {} ({moved_sync} of the {} that only the synced pins keep).\n   \
         each node's share now: {}\n   \
         (--fresh emptied node 0's table: had it announced before the pull, the clients it got would\n   \
         have been picked from the Maglev table again, and those {} sent to backend-1.)",
        all.len(),
        moved.len(),
        only_sync.len(),
        shares(&before, &after),
        only_sync.len()
    );

    step(
        first + 5,
        "node 1's daemon killed -9, its BIRD alive: the program keeps forwarding",
    );
    const OTHER: usize = 1;
    let t_kill = Instant::now();
    let mut all = load.between(t0, t_kill);
    all.extend(late.between(t0, t_kill));
    let baseline = last_backends(&all, t_kill);
    c.kill9_daemon(OTHER);
    thread::sleep(sizes.phase / 2);
    let route_kept = c.node_routes(OTHER)?.contains(&VIP.to_string());
    let routed_kept = c.routed_nodes()?.contains(&OTHER);
    println!(
        "   +{:>5} ms  stickylb on node 1 killed; its route is {} the table, the router {} node 1",
        ms(t_kill.elapsed()),
        if route_kept { "still in" } else { "GONE from" },
        if routed_kept {
            "still uses"
        } else {
            "NO LONGER uses"
        }
    );
    // The restart adopts the pinned maps and pulls a peer's table again;
    // watch the node's table meanwhile.
    let t_restart = Instant::now();
    let watch_stop = Arc::new(AtomicBool::new(false));
    let table = cluster::ANNOUNCE_TABLE.to_string();
    let in_table = Absence::watch(
        c.nodes[OTHER].ns.path(),
        vec!["route".into(), "show".into(), "table".into(), table],
        VIP.to_string(),
        t_restart,
        watch_stop.clone(),
    );
    let at_router = Absence::watch(
        c.router.path(),
        vec!["route".into(), "show".into(), VIP.to_string()],
        node_addr(OTHER).to_string(),
        t_restart,
        watch_stop.clone(),
    );
    c.restart_daemon(OTHER, &[])?;
    let ready = wait_for(Duration::from_secs(10), || {
        c.daemon(OTHER).status().is_ok_and(|s| {
            s.sync.is_some_and(|s| s.ready)
                && s.vips
                    .first()
                    .and_then(|v| v.announce)
                    .is_some_and(|a| a.announced)
        })
    });
    thread::sleep(Duration::from_millis(200));
    watch_stop.store(true, Ordering::Relaxed);
    println!(
        "   +{:>5} ms  stickylb run again (adopting the maps, pulling a peer's table): {}\n   \
         \x20          node 1's route: {}\n   \
         \x20          the router's next hop via node 1: {}",
        ms(t_restart.elapsed()),
        if ready {
            "joined, VIP announced"
        } else {
            "NOT ready after 10 s"
        },
        in_table.describe(),
        at_router.describe()
    );
    thread::sleep(sizes.phase / 2);
    let t_end = Instant::now();
    let mut all = load.between(t_kill, t_end);
    all.extend(late.between(t_kill, t_end));
    let failed = all.iter().filter(|s| s.backend.is_none()).count();
    let moved = changed(&all, &baseline);
    println!(
        "   {} requests meanwhile, {failed} failed; clients that changed backend: {}.",
        all.len(),
        moved.len()
    );
    drop(late);
    drop(load);

    step(first + 6, "teardown of the nodes");
    drop(c);
    println!("   daemons, BIRDs and servers killed, pins removed, namespaces deleted.");
    Ok(())
}
