//! `cargo xtask demo`: stickylb at work, shown to a person. Builds the test
//! network, starts the daemon, pins clients, kills a backend, restarts the
//! daemon, and shows why sticky sessions want a shared session store. Then
//! several nodes: three stickylb nodes behind a BGP router with ECMP, one
//! of them dying under load (cluster_act.rs). Tears everything down at the
//! end; `--keep` leaves the single-node network up (the nodes always go).
//! `--only-nodes` runs the multi-node act alone.

mod cluster_act;

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    process::{ExitCode, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use lb_user::api::BackendState;
use stickylb_tests::{
    daemon::{Daemon, PinGuard},
    netns::{ChildGuard, Topology, TopologyOptions, VIP, backend_of, http_get, wait_for},
};

const CLIENTS: usize = 240;
const SHOWN: usize = 24;
const REDIS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 50), 6379);

/// What one client saw on its last /session request.
#[derive(Clone, Debug, Default)]
struct Seen {
    backend: Option<usize>,
    visits: u64,
    new_session: bool,
    moved: bool,
    lost: bool,
}

/// A /session answer: backend, visits, whether the session was new, and the
/// cookie the server set.
type SessionAnswer = Option<(usize, u64, bool, Option<String>)>;

/// Clients with cookie jars, in the client namespace.
struct Clients {
    addrs: Vec<Ipv4Addr>,
    cookies: Arc<Mutex<BTreeMap<Ipv4Addr, String>>>,
    seen: Vec<Seen>,
}

impl Clients {
    /// One /session request per client (parallel); updates what each saw.
    fn round(&mut self, topo: &Topology) -> usize {
        let addrs = self.addrs.clone();
        let jar = self.cookies.clone();
        let answers: Vec<SessionAnswer> = topo.client.enter(move || {
            let per = addrs.len().div_ceil(16);
            let hs: Vec<_> = addrs
                .chunks(per)
                .map(|chunk| {
                    let chunk = chunk.to_vec();
                    let jar = jar.clone();
                    thread::spawn(move || {
                        chunk
                            .iter()
                            .map(|c| {
                                let cookie = jar.lock().unwrap().get(c).cloned();
                                let a = http_get(
                                    *c,
                                    SocketAddrV4::new(VIP, 80),
                                    "/session",
                                    cookie.as_deref(),
                                    Duration::from_millis(800),
                                )
                                .ok()?;
                                let b = backend_of(&a)?;
                                let field = |k: &str| {
                                    a.body
                                        .split_whitespace()
                                        .find_map(|w| w.strip_prefix(k))
                                        .map(str::to_owned)
                                };
                                let visits = field("visits=")?.parse().ok()?;
                                let new = field("new=")? == "true";
                                Some((b, visits, new, a.set_cookie))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut failed = 0;
        for (i, a) in answers.into_iter().enumerate() {
            let s = &mut self.seen[i];
            match a {
                Some((b, visits, new, cookie)) => {
                    if let Some(c) = cookie {
                        self.cookies.lock().unwrap().insert(self.addrs[i], c);
                    }
                    if s.backend.is_some_and(|old| old != b) {
                        s.moved = true;
                        s.lost = new;
                    }
                    s.backend = Some(b);
                    s.visits = visits;
                    s.new_session = new;
                }
                None => failed += 1,
            }
        }
        failed
    }

    fn reset_marks(&mut self) {
        for s in &mut self.seen {
            s.moved = false;
            s.lost = false;
        }
    }

    fn per_backend(&self) -> [usize; 3] {
        let mut n = [0; 3];
        for s in &self.seen {
            if let Some(b) = s.backend {
                n[b] += 1;
            }
        }
        n
    }
}

struct View {
    tty: bool,
    drawn: usize,
}

const COLORS: [&str; 3] = ["\x1b[36m", "\x1b[35m", "\x1b[32m"];
const RESET: &str = "\x1b[0m";

impl View {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.tty {
            format!("{code}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    /// Draws the first SHOWN clients as a grid, over the previous drawing
    /// when on a terminal.
    fn table(&mut self, clients: &Clients, redraw: bool) {
        let mut lines = Vec::new();
        for row in 0..SHOWN / 2 {
            let mut line = String::from("   ");
            for col in 0..2 {
                let i = row + col * (SHOWN / 2);
                let s = &clients.seen[i];
                let b = match s.backend {
                    Some(b) => self.paint(COLORS[b], &format!("backend-{b}")),
                    None => self.paint("\x1b[31m", "(no answer)"),
                };
                let mark = if s.lost {
                    self.paint("\x1b[1;31m", " moved, session lost")
                } else if s.moved {
                    self.paint("\x1b[1;33m", " moved, session kept")
                } else {
                    String::new()
                };
                let cell = format!(
                    "{:<12} → {b} visits {:>2}{mark}",
                    clients.addrs[i].to_string(),
                    s.visits
                );
                let visible = strip_ansi(&cell).chars().count();
                line += &cell;
                line += &" ".repeat(58usize.saturating_sub(visible));
            }
            lines.push(line);
        }
        let n = clients.per_backend();
        lines.push(format!(
            "   ({SHOWN} of {} clients shown) all clients per backend: backend-0 {}, backend-1 {}, backend-2 {}",
            clients.addrs.len(),
            n[0],
            n[1],
            n[2]
        ));
        let mut out = std::io::stdout().lock();
        if self.tty && redraw && self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        let clear = if self.tty { "\x1b[2K" } else { "" };
        for l in &lines {
            let _ = writeln!(out, "{clear}{l}");
        }
        let _ = out.flush();
        self.drawn = lines.len();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// Acts in all: 7 on one node, 7 on several.
const STEPS: usize = 14;

fn step(n: usize, title: &str) {
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m[{n}/{STEPS}] {title}\x1b[0m");
    } else {
        println!("\n[{n}/{STEPS}] {title}");
    }
}

fn main() -> ExitCode {
    let keep = std::env::args().any(|a| a == "--keep");
    let quick = std::env::args().any(|a| a == "--quick");
    let only_nodes = std::env::args().any(|a| a == "--only-nodes");
    match run(keep, quick, only_nodes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slb-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(keep: bool, quick: bool, only_nodes: bool) -> Result<(), String> {
    stickylb_tests::require_root();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no exe dir")?;
    let stickylb = dir.join("stickylb-under-test");
    let server = dir.join("slb-backend");
    let started = Instant::now();
    if !only_nodes {
        one_node(&stickylb, &server, keep, quick)?;
        println!("\n   (one node: {:.1} s)", started.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    cluster_act::run(&stickylb, &server, quick, 8)?;
    println!(
        "\n   (several nodes: {:.1} s; the whole demo: {:.1} s)",
        t.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if keep && !only_nodes {
        println!(
            "   The single-node network is still up (step 7). Nodes to explore: cargo xtask netns up --nodes 3"
        );
    }
    Ok(())
}

/// The single-node acts (1 to 7).
fn one_node(
    stickylb: &std::path::Path,
    server: &std::path::Path,
    keep: bool,
    quick: bool,
) -> Result<(), String> {
    let mut view = View {
        tty: std::io::stdout().is_terminal(),
        drawn: 0,
    };
    println!(
        "{}: a sticky L4 load balancer in XDP, on a network of namespaces",
        view.paint("\x1b[1m", "stickylb demo")
    );

    step(1, "network");
    let t = Instant::now();
    let mut topo = Topology::up(
        &TopologyOptions {
            backends: 3,
            clients: CLIENTS,
            redis: None,
        },
        server,
    )?;
    println!(
        "   namespaces {id}-*: a bridge; a client host with {CLIENTS} addresses (10.77.1.x); the load balancer\n   \
         (10.77.0.1, VIP {VIP}); 3 backends (10.77.0.10-12, VIP on loopback) running an HTTP server that\n   \
         keeps sessions in its own memory. Built in {} ms.",
        t.elapsed().as_millis(),
        id = topo.id
    );

    step(2, "the daemon");
    let pin = PinGuard(topo.daemon_pin());
    let health = if quick {
        "interval = \"200ms\"\ntimeout = \"100ms\"\nfall = 2\nrise = 2"
    } else {
        ""
    };
    let config = topo.config(&pin.0, health, "affinity_timeout = \"10m\"");
    let mut d = Daemon::start(&topo, stickylb, &config, &[])?;
    if !d.wait_backends(Duration::from_secs(8), |s, _| s == BackendState::Up) {
        return Err(format!("backends did not come up:\n{}", d.log_text()));
    }
    println!(
        "   stickylb run -c {} (in the LB namespace): XDP attached to eth0 in driver mode,\n   \
         health checks: {}. All 3 backends up.",
        d.config.display(),
        if quick {
            "tcp every 200ms, down after 2 failures"
        } else {
            "tcp every 1s, down after 3 failures (defaults)"
        }
    );
    let (_, out, _) = d.cli(&["backends"]);
    print!("{}", indent(&out));

    step(3, "clients pinned to backends");
    println!("   every client requests /session again and again, a new TCP connection each time:");
    let mut clients = Clients {
        addrs: topo.clients.clone(),
        cookies: Arc::new(Mutex::new(BTreeMap::new())),
        seen: vec![Seen::default(); CLIENTS],
    };
    let rounds = if quick { 3 } else { 6 };
    let mut changed = 0;
    for r in 0..rounds {
        let before: Vec<Option<usize>> = clients.seen.iter().map(|s| s.backend).collect();
        clients.round(&topo);
        if r > 0 {
            changed += clients
                .seen
                .iter()
                .zip(&before)
                .filter(|(s, b)| s.backend != **b)
                .count();
        }
        // A terminal shows every round in place; a log gets the last one.
        if view.tty || r + 1 == rounds {
            view.table(&clients, r > 0);
        }
        thread::sleep(Duration::from_millis(250));
    }
    println!(
        "   {} requests; clients that ever changed backend: {changed}",
        rounds * CLIENTS
    );
    let c0 = clients.addrs[0].to_string();
    let (_, out, _) = d.cli(&["lookup", &c0]);
    println!("   stickylb lookup {c0}:\n{}", indent(&out));

    step(4, "backend-1 dies");
    let before: Vec<Option<usize>> = clients.seen.iter().map(|s| s.backend).collect();
    let theirs = before.iter().filter(|b| **b == Some(1)).count();
    println!("   killing backend-1's server ({theirs} clients are pinned to it) ...");
    let t0 = Instant::now();
    topo.kill_server(1);
    let detected = wait_for(Duration::from_secs(10), || {
        d.vips()
            .is_ok_and(|v| v[0].backends[1].state == BackendState::Down)
    });
    let detect = t0.elapsed();
    if !detected {
        return Err(format!("backend-1 was not marked down:\n{}", d.log_text()));
    }
    clients.reset_marks();
    clients.round(&topo);
    let moved = clients.seen.iter().filter(|s| s.moved).count();
    let others_moved = clients
        .seen
        .iter()
        .zip(&before)
        .filter(|(s, b)| s.moved && **b != Some(1))
        .count();
    println!(
        "   marked down after {} ms; its {moved} clients now go elsewhere, {others_moved} of the other {} clients moved:",
        detect.as_millis(),
        CLIENTS - theirs
    );
    view.table(&clients, false);
    let lost = clients.seen.iter().filter(|s| s.lost).count();
    println!(
        "   {lost} of {moved} moved clients lost their session: it lived in backend-1's memory (drawback of sticky sessions)."
    );
    topo.start_server(1)?;
    if !d.wait_backends(Duration::from_secs(8), |s, _| s == BackendState::Up) {
        return Err("backend-1 did not come back".into());
    }
    println!(
        "   backend-1 is back; clients keep their new backends while their affinity entries live."
    );

    step(5, "the daemon restarts (kill -9, then start again)");
    let before: Vec<Option<usize>> = clients.seen.iter().map(|s| s.backend).collect();
    d.kill9();
    clients.reset_marks();
    let failed_while_down = clients.round(&topo);
    let t = Instant::now();
    d.restart(&topo, &[])?;
    let restart = t.elapsed();
    clients.round(&topo);
    let moved = clients
        .seen
        .iter()
        .zip(&before)
        .filter(|(s, b)| s.backend != **b)
        .count();
    println!(
        "   while the daemon was dead the XDP program kept forwarding ({failed_while_down} requests failed);\n   \
         the new daemon adopted the pinned maps in {} ms: {moved} clients moved.",
        restart.as_millis()
    );
    view.table(&clients, false);

    step(6, "the same failure with a shared session store");
    let redis_ns = topo.add_host("redis", *REDIS.ip())?;
    let redis = ChildGuard(
        redis_ns
            .command("redis-server")
            .args([
                "--bind",
                &REDIS.ip().to_string(),
                "--port",
                "6379",
                "--protected-mode",
                "no",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start redis-server (apt-get install redis-server): {e}"))?,
    );
    let redis_up = wait_for(Duration::from_secs(10), || {
        redis_ns
            .command("redis-cli")
            .args(["-h", &REDIS.ip().to_string(), "-p", "6379", "ping"])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
    });
    if !redis_up {
        return Err(format!(
            "redis-server on {REDIS} did not answer PING within 10 s"
        ));
    }
    topo.others.push(redis);
    topo.redis = Some(REDIS);
    for i in 0..3 {
        topo.start_server(i)?;
    }
    println!(
        "   redis-server runs in its own namespace ({REDIS}); the backends now keep sessions there."
    );
    for _ in 0..2 {
        clients.round(&topo);
    }
    let before: Vec<Option<usize>> = clients.seen.iter().map(|s| s.backend).collect();
    let theirs = before.iter().filter(|b| **b == Some(2)).count();
    println!("   killing backend-2's server ({theirs} clients) ...");
    let t0 = Instant::now();
    topo.kill_server(2);
    wait_for(Duration::from_secs(10), || {
        d.vips()
            .is_ok_and(|v| v[0].backends[2].state == BackendState::Down)
    });
    let detect = t0.elapsed();
    clients.reset_marks();
    clients.round(&topo);
    let moved = clients.seen.iter().filter(|s| s.moved).count();
    let lost = clients.seen.iter().filter(|s| s.lost).count();
    println!(
        "   marked down after {} ms; {moved} clients moved:",
        detect.as_millis()
    );
    view.table(&clients, false);
    println!(
        "   {lost} of {moved} moved clients lost their session: the new backend found it in Redis."
    );

    step(
        7,
        if keep {
            "keeping the single-node network up"
        } else {
            "teardown of the single-node network"
        },
    );
    if keep {
        let daemon_pid = d.child.as_ref().map(ChildGuard::pid);
        if let Some(c) = d.child.take() {
            std::mem::forget(c);
        }
        std::mem::forget(pin);
        let pin_path = topo.daemon_pin();
        let mut kept = topo.persist();
        kept.pids.extend(daemon_pid);
        kept.pins.push(pin_path);
        let state = std::path::Path::new("/run/stickylb-netns");
        std::fs::create_dir_all(state).map_err(|e| e.to_string())?;
        std::fs::write(state.join("state"), kept.to_lines()).map_err(|e| e.to_string())?;
        println!(
            "   Left running. Try:\n     target/release/stickylb-under-test --socket {} status\n     ip netns exec {id}-cl curl --interface 10.77.1.7 http://{VIP}/\n   \
             Remove it all with: cargo xtask netns down",
            d.socket.display(),
            id = kept.id
        );
    } else {
        // SIGTERM would leave the program forwarding: taking the data path
        // down is `stickylb unload`'s job.
        let removed = d.unload(&topo)?;
        print!("{}", indent(&removed));
        drop(topo);
        drop(pin);
        println!("   daemon stopped and unloaded, namespaces deleted.");
    }
    Ok(())
}

pub(crate) fn indent(s: &str) -> String {
    s.lines().map(|l| format!("   {l}\n")).collect()
}
