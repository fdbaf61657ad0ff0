//! docs/deploying.md, followed as written: every ```sh block of the guide
//! runs, in the guide's order, where its `<!-- run: ROLE -->` mark says, in
//! a network of namespaces with the guide's own addresses
//! (`stickylb_tests::deploybed`), and the test checks what each step is for:
//! the backends set up, the config accepted, clients reaching the backend
//! `stickylb lookup` names, the tunnel backends decapsulating, an upgrade
//! and a restart through `nsenter --net` under load that fail no request
//! and move no client, `ip netns exec` refused, and `unload` taking it all
//! down. Then it checks what the guide says of a bpffs mounted inside `ip
//! netns exec`: the pins die with the daemon. Needs root (CI is root).
//!
//! Roles: `install` (the LB and the tunnel backends), `backend` (every
//! backend), `tunnel-backend` (10.20.0.11 and .12), `router`, `lb`,
//! `client` (198.51.100.0/24), `daemon` (`stickylb run` on the LB, started
//! in the background), `upgrade` (on the LB, under load), `host` and
//! `host-daemon` (the machine's own namespace, with the LB in `lb`).

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_user::{
    api::{BackendState, StatusReply},
    control::{self, Request},
};
use stickylb_tests::{
    deploybed::{
        API, BACKENDS, Bed, DSR_BACKENDS, GroupGuard, Host, LB_NETNS_ALIAS, WEB, output, shell,
    },
    docblocks::{self, Block},
    netns::{Netns, wait_for},
    traffic::{Load, LoadSummary, summarize, sweep_in},
};

const GUIDE: &str = "docs/deploying.md";
const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");
const ROLES: &[&str] = &[
    "install",
    "backend",
    "tunnel-backend",
    "router",
    "lb",
    "client",
    "daemon",
    "upgrade",
    "host",
    "host-daemon",
];
/// The longest a foreground block may take.
const BLOCK_LIMIT: Duration = Duration::from_secs(20);
/// What the guide's blocks must have done, each checked once at least: a
/// guide that lost a step fails here rather than passing by running less.
const EXPECTED: &[&str] = &[
    "installed",
    "arp settings",
    "service listening",
    "decap attached",
    "decap counted the load",
    "decap status",
    "decap detached",
    "router",
    "forwarding",
    "check",
    "lookup",
    "client reached the lookup's backend",
    "RUST_LOG",
    "metrics",
    "upgraded under load",
    "stopped through nsenter",
    "status through nsenter",
    "unloaded",
];
/// The client the guide's `lookup` and `curl` use.
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// A file the guide tells the reader to write: `<!-- file: PATH -->` on the
/// line before a fenced block.
struct FileBlock {
    path: String,
    text: String,
    line: usize,
}

fn file_blocks(markdown: &str) -> Vec<FileBlock> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(path) = l
            .trim()
            .strip_prefix("<!-- file:")
            .and_then(|r| r.strip_suffix("-->"))
        else {
            continue;
        };
        assert!(
            lines.get(i + 1).is_some_and(|f| f.starts_with("```")),
            "{GUIDE} line {}: a `file:` mark must be just before a fence",
            i + 1
        );
        let text: String = lines[i + 2..]
            .iter()
            .take_while(|l| l.trim() != "```")
            .map(|l| format!("{l}\n"))
            .collect();
        out.push(FileBlock {
            path: path.trim().to_owned(),
            text,
            line: i + 2,
        });
    }
    out
}

/// One step of the guide, in its order.
enum Step<'a> {
    Run(&'a Block),
    File(&'a FileBlock),
}

impl Step<'_> {
    fn line(&self) -> usize {
        match self {
            Step::Run(b) => b.line,
            Step::File(f) => f.line,
        }
    }
}

/// What one block printed on one host.
struct Ran {
    stdout: String,
}

/// One VIP's share of the load: its clients and the backend each had
/// before.
struct VipLoad {
    name: &'static str,
    vip: Ipv4Addr,
    load: Load,
    before: Vec<Option<usize>>,
    clients: Vec<Ipv4Addr>,
}

/// The load running across the upgrade and the restart through nsenter.
struct Underway {
    loads: Vec<VipLoad>,
    started: Instant,
}

/// Field order is drop order: the load and the daemon end before the bed.
struct Guide {
    load: Option<Underway>,
    /// The running `stickylb run` block, and its log.
    daemon: Option<(GroupGuard, PathBuf)>,
    bed: Bed,
    /// The blocks' working folder: holds `target/release/stickylb`.
    wd: PathBuf,
    daemons_started: usize,
    daemon_pids: Vec<u32>,
    /// Backend (address) of `CLIENT` per VIP, as `lookup` said.
    lookup: BTreeMap<String, Ipv4Addr>,
    /// What the guide's checks found: each a line of the report.
    report: Vec<String>,
    /// Which of `EXPECTED` were checked.
    fired: std::collections::BTreeSet<&'static str>,
}

fn main_text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Guide {
    /// Runs `block` on `host` (its mount namespace) in network namespace
    /// `net`, or with neither in the machine's mount namespace; fails the
    /// test unless it exits 0.
    fn run_on(&self, name: &str, host: Option<&Host>, net: &Netns, block: &Block) -> Ran {
        let mut cmd = match host {
            Some(h) => h.shell(net, &self.wd, &block.text, Some(BLOCK_LIMIT)),
            None => shell(None, net, &self.wd, &block.text, Some(BLOCK_LIMIT)),
        };
        let t = Instant::now();
        let out = output(&mut cmd).unwrap();
        let (stdout, stderr) = main_text(&out);
        println!(
            "--- {GUIDE} line {} on {name} ({} ms): exit {}\n{}{}",
            block.line,
            t.elapsed().as_millis(),
            out.status,
            indent(&stdout),
            indent(&stderr)
        );
        assert!(
            out.status.success(),
            "{GUIDE} line {}, role {}, on {name} failed ({}):\n{}\nstdout:\n{stdout}\nstderr:\n{stderr}{}",
            block.line,
            block.role,
            out.status,
            block.text,
            self.daemon_log()
        );
        Ran {
            stdout: stdout + &stderr,
        }
    }

    fn daemon_log(&self) -> String {
        self.daemon
            .as_ref()
            .map(|(_, log)| {
                format!(
                    "\ndaemon log:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                )
            })
            .unwrap_or_default()
    }

    fn status(&self) -> Result<StatusReply, String> {
        let v = control::call(&self.bed.control_socket(), &Request::Status)
            .map_err(|e| format!("{e:#}"))?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    /// Starts a `stickylb run` block in the background on the LB host (in
    /// network namespace `net`), and waits until it answers with every
    /// backend up.
    fn start_daemon(&mut self, net_is_host: bool, block: &Block) {
        assert!(self.daemon.is_none(), "line {}: a daemon runs", block.line);
        self.daemons_started += 1;
        let log = self
            .bed
            .tmp
            .join(format!("daemon-{}.log", self.daemons_started));
        let net = if net_is_host {
            &self.bed.host
        } else {
            &self.bed.lb.ns
        };
        let mut cmd = self.bed.lb.shell(net, &self.wd, &block.text, None);
        let f = fs::File::create(&log).unwrap();
        cmd.stdout(f.try_clone().unwrap()).stderr(f);
        let mut child = GroupGuard::spawn(&mut cmd).unwrap();
        let t = Instant::now();
        let mut exited = None;
        let up = wait_for(Duration::from_secs(15), || {
            exited = child.exited();
            exited.is_some()
                || self.status().is_ok_and(|s| {
                    s.vips.len() == 2
                        && s.vips
                            .iter()
                            .flat_map(|v| &v.backends)
                            .all(|b| b.state == BackendState::Up)
                })
        });
        let text = fs::read_to_string(&log).unwrap_or_default();
        assert!(
            up && exited.is_none(),
            "{GUIDE} line {}: the daemon did not come up with every backend up ({exited:?}); \
             status: {:?}\nlog:\n{text}",
            block.line,
            self.status()
        );
        let pid = self.status().unwrap().pid;
        println!(
            "--- {GUIDE} line {} (daemon, pid {pid}): every backend up after {} ms",
            block.line,
            t.elapsed().as_millis()
        );
        if self.daemons_started == 1 {
            // The line the guide quotes; logged as the status turns, so
            // given a moment.
            for vip in ["web", "api"] {
                let want = format!("VIP {vip} serving: 2 of 2 backends up, after ");
                let logged = wait_for(Duration::from_secs(2), || {
                    fs::read_to_string(&log).is_ok_and(|t| t.contains(&want))
                });
                assert!(logged, "{want:?} not in the log:\n{text}");
            }
        } else {
            assert!(
                text.contains("adopted the running data path"),
                "line {}: the restarted daemon did not adopt the data path:\n{text}",
                block.line
            );
        }
        self.daemon_pids.push(pid);
        self.daemon = Some((child, log));
    }

    /// The running daemon has exited by itself (after `stop`), cleanly.
    fn daemon_stopped(&mut self, line: usize) {
        let (mut child, log) = self.daemon.take().expect("a daemon was running");
        let mut status = None;
        wait_for(Duration::from_secs(10), || {
            status = child.exited();
            status.is_some()
        });
        assert!(
            status.is_some_and(|s| s.success()),
            "line {line}: the daemon did not exit cleanly ({status:?}):\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn start_load(&mut self) {
        let bed = &self.bed;
        let (web_clients, api_clients) = bed.clients.split_at(bed.clients.len() / 2);
        let mut loads = Vec::new();
        for (name, vip, clients) in [("web", WEB, web_clients), ("api", API, api_clients)] {
            let before = sweep_in(&bed.client, vip, clients);
            let answered = before.iter().filter(|b| b.is_some()).count();
            assert_eq!(
                answered,
                clients.len(),
                "{name}: clients answered before the upgrade"
            );
            let load = Load::start_in(&bed.client, vip, clients, Duration::from_secs(40));
            loads.push(VipLoad {
                name,
                vip,
                load,
                before,
                clients: clients.to_vec(),
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        self.load = Some(Underway {
            loads,
            started: Instant::now(),
        });
    }

    fn finish_load(&mut self) {
        let Underway { loads, started } = self.load.take().expect("the load was started");
        let secs = started.elapsed().as_secs_f64();
        for VipLoad {
            name,
            vip,
            load,
            before,
            clients,
        } in loads
        {
            let samples = load.finish();
            let s: LoadSummary = summarize(&samples, &before, &[]);
            let spread: BTreeMap<usize, usize> =
                before.iter().flatten().fold(BTreeMap::new(), |mut m, &b| {
                    *m.entry(b).or_default() += 1;
                    m
                });
            let line = format!(
                "{name} ({vip}): {} clients (per backend {spread:?}), {} requests over the \
                 upgrade and the restart through nsenter ({secs:.1} s): {} failed, {} clients \
                 moved",
                clients.len(),
                s.requests,
                s.failed,
                s.moved.len()
            );
            println!("{line}");
            self.report.push(line);
            assert!(
                s.requests > clients.len() * 3,
                "too little load: {}",
                s.requests
            );
            s.assert_none_failed_or_moved(name);
            // Both backends of each VIP had clients, so "none moved" says
            // something.
            assert_eq!(spread.len(), 2, "{name}: clients per backend {spread:?}");
        }
    }

    fn run_step(&mut self, step: &Step) {
        let block = match step {
            Step::File(f) => {
                let at = self.bed.lb.path(&f.path);
                fs::write(&at, &f.text)
                    .unwrap_or_else(|e| panic!("line {}: write {}: {e}", f.line, f.path));
                println!("--- {GUIDE} line {}: wrote {} on the LB", f.line, f.path);
                return;
            }
            Step::Run(b) => *b,
        };
        let text = block.text.as_str();
        let bed = &self.bed;
        let lb = &bed.lb;
        let tunnel = &bed.backends[DSR_BACKENDS..];
        match block.role.as_str() {
            "install" => {
                for (name, h) in std::iter::once(("lb", lb))
                    .chain(tunnel.iter().map(|h| (h.ns.name.as_str(), h)))
                {
                    let ran = self.run_on(name, Some(h), &h.ns, block);
                    assert!(ran.stdout.contains("stickylb "), "{}", ran.stdout);
                    assert!(h.path("/usr/local/bin/stickylb").exists());
                }
                self.fired.insert("installed");
            }
            "backend" => {
                for (h, addr) in bed.backends.iter().zip(BACKENDS) {
                    let ran = self.run_on(&addr.to_string(), Some(h), &h.ns, block);
                    if text.contains("ss -ltn") {
                        assert!(ran.stdout.contains("0.0.0.0:80"), "{}", ran.stdout);
                        self.fired.insert("service listening");
                    }
                    if text.contains("arp_ignore") {
                        for (k, v) in [("arp_ignore", "1"), ("arp_announce", "2")] {
                            for scope in ["all", "eth0"] {
                                let key = format!("net.ipv4.conf.{scope}.{k}");
                                assert_eq!(sysctl(&h.ns, &key), v, "{key} on {addr}");
                            }
                        }
                        self.fired.insert("arp settings");
                    }
                }
            }
            "tunnel-backend" => {
                let mut decapsulated = Vec::new();
                for (h, addr) in tunnel.iter().zip(&BACKENDS[DSR_BACKENDS..]) {
                    let ran = self.run_on(&addr.to_string(), Some(h), &h.ns, block);
                    if ran.stdout.contains("counters:") {
                        decapsulated.push((*addr, counter(&ran.stdout, "decap_ipip")));
                    }
                    if text.contains("decap detach") {
                        assert!(!h.path("/sys/fs/bpf/stickylb-decap/eth0").exists());
                    } else {
                        assert!(h.path("/sys/fs/bpf/stickylb-decap/eth0/link").exists());
                    }
                    if text.contains("decap check") {
                        assert!(ran.stdout.contains("ok    decap"), "{}", ran.stdout);
                    }
                }
                if text.contains("decap detach") {
                    self.fired.insert("decap detached");
                } else if text.contains("decap attach") {
                    self.fired.insert("decap attached");
                }
                let under_load = self.load.is_some();
                if !decapsulated.is_empty() && (under_load || text.contains("decap status")) {
                    let line = format!(
                        "decap_ipip on the tunnel backends ({}): {decapsulated:?}",
                        if under_load {
                            "under the load"
                        } else {
                            "after the guide's curl"
                        }
                    );
                    println!("{line}");
                    self.report.push(line);
                }
                for (addr, n) in decapsulated {
                    if text.contains("decap status") {
                        assert!(n > 0, "{addr} decapsulated nothing");
                        self.fired.insert("decap status");
                    } else if under_load {
                        // The probes through the tunnel bring 2 a second:
                        // thousands are the clients' packets.
                        assert!(n > 1000, "{addr} decapsulated {n} packets");
                        self.fired.insert("decap counted the load");
                    }
                }
            }
            "router" => {
                self.run_on("router", None, &bed.router, block);
                self.fired.insert("router");
            }
            "client" => {
                let ran = self.run_on("client", None, &bed.client, block);
                let answers: Vec<&str> = ran.stdout.split_whitespace().collect();
                assert_eq!(answers.len(), 2, "{}", ran.stdout);
                for (vip, answer) in ["web", "api"].iter().zip(answers) {
                    let i: usize = answer
                        .strip_prefix("backend-")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("{vip}: answered {answer:?}"));
                    let line = format!(
                        "{CLIENT} on {vip}: lookup said {}, curl reached {}",
                        self.lookup[*vip], BACKENDS[i]
                    );
                    println!("{line}");
                    self.report.push(line);
                    assert_eq!(BACKENDS[i], self.lookup[*vip], "{vip}");
                }
                self.fired.insert("client reached the lookup's backend");
            }
            "daemon" => self.start_daemon(false, block),
            "host-daemon" => self.start_daemon(true, block),
            "upgrade" => {
                self.start_load();
                let lb = &self.bed.lb;
                let before = fs::metadata(lb.path("/usr/local/bin/stickylb")).unwrap();
                let ran = self.run_on("lb", Some(lb), &lb.ns, block);
                assert!(ran.stdout.contains("keeps forwarding"), "{}", ran.stdout);
                self.daemon_stopped(block.line);
                let after = fs::metadata(self.bed.lb.path("/usr/local/bin/stickylb")).unwrap();
                use std::os::unix::fs::MetadataExt as _;
                assert_ne!(before.ino(), after.ino(), "the binary was not replaced");
                assert!(self.bed.lb_has_xdp().unwrap(), "XDP gone while stopped");
                self.fired.insert("upgraded under load");
            }
            "host" => {
                let ran = self.run_on("host", Some(lb), &bed.host, block);
                if text.contains("stickylb stop") {
                    assert!(ran.stdout.contains("keeps forwarding"), "{}", ran.stdout);
                    self.daemon_stopped(block.line);
                    self.fired.insert("stopped through nsenter");
                }
                if text.contains("stickylb status") {
                    assert!(ran.stdout.contains("VIP web"), "{}", ran.stdout);
                    assert!(ran.stdout.contains("VIP api"), "{}", ran.stdout);
                    self.fired.insert("status through nsenter");
                }
            }
            "lb" => {
                if text.contains("stickylb unload") {
                    self.finish_load();
                }
                let lb = &self.bed.lb;
                let ran = self.run_on("lb", Some(lb), &lb.ns, block);
                self.check_lb(block, &ran);
            }
            other => panic!(
                "line {}: role {other:?} is not one of {ROLES:?}",
                block.line
            ),
        }
    }

    fn check_lb(&mut self, block: &Block, ran: &Ran) {
        let text = block.text.as_str();
        let out = &ran.stdout;
        if text.contains("stickylb check") {
            // As the guide shows it: the routed VIP's warning only.
            assert!(
                out.contains("OK (2 VIPs, 4 backends, interface eth0), 1 warning"),
                "{out}"
            );
            assert!(out.contains("vip \"api\" address: 192.0.2.20 is not an address"));
            self.fired.insert("check");
        }
        if text.contains("sysctl -p") {
            assert_eq!(
                sysctl(&self.bed.lb.ns, "net.ipv4.conf.eth0.forwarding"),
                "1"
            );
            self.fired.insert("forwarding");
        }
        if text.contains("stickylb lookup") {
            for vip in ["web", "api"] {
                let prefix = format!("{CLIENT} on {vip}: ");
                let to = out
                    .lines()
                    .find_map(|l| l.strip_prefix(&prefix))
                    .and_then(|r| r.split(':').next())
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("no lookup line for {vip} in:\n{out}"));
                self.lookup.insert(vip.to_owned(), to);
            }
            assert!(out.contains("VIP web") && out.contains("VIP api"), "{out}");
            self.fired.insert("lookup");
        }
        if text.contains("--help") {
            assert!(out.contains("RUST_LOG"), "{out}");
            self.fired.insert("RUST_LOG");
        }
        if text.contains("/metrics") {
            for b in BACKENDS {
                assert!(
                    out.lines()
                        .any(|l| l.contains(&format!("backend=\"{b}:80\"")) && l.ends_with(" 1")),
                    "stickylb_backend_up of {b} is not 1:\n{out}"
                );
                self.fired.insert("metrics");
            }
        }
        if text.contains("stickylb unload") {
            self.daemon_stopped(block.line);
            assert!(!self.bed.lb_has_xdp().unwrap(), "XDP attached after unload");
            assert!(!self.bed.lb.path("/sys/fs/bpf/stickylb").exists());
            assert!(out.contains("lose service"), "{out}");
            self.fired.insert("unloaded");
        }
    }
}

/// A sysctl's value in network namespace `ns`.
fn sysctl(ns: &Netns, key: &str) -> String {
    stickylb_tests::netns::sh(ns.command("sysctl").args(["-n", key]))
        .unwrap()
        .trim()
        .to_owned()
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// `name N` in a `decap status` line.
fn counter(out: &str, name: &str) -> u64 {
    out.split([',', ':', '\n'])
        .find_map(|part| part.trim().strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
}

#[test]
fn the_guide_marks_every_command_with_a_known_role() {
    let blocks = docblocks::load(GUIDE).unwrap();
    for b in &blocks {
        assert!(
            ROLES.contains(&b.role.as_str()),
            "{GUIDE} line {}: role {:?} is not one this test runs ({ROLES:?})",
            b.line,
            b.role
        );
    }
    for role in ROLES {
        docblocks::of_role(&blocks, role).unwrap();
    }
    let md =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(GUIDE)).unwrap();
    let files = file_blocks(&md);
    assert_eq!(files.len(), 1);
    // The config the guide shows is one the daemon accepts.
    let dir = std::env::temp_dir().join(format!("dpl-parse-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stickylb.toml");
    fs::write(&path, &files[0].text).unwrap();
    let out = Command::new(STICKYLB)
        .args(["--json", "check", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .output();
    let _ = fs::remove_dir_all(&dir);
    let out = out.unwrap();
    // `check` also checks this machine (eth0 need not exist here), so only
    // the file's own problems count.
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = v["problems"].as_array().cloned().unwrap_or_default();
    assert!(
        problems
            .iter()
            .all(|p| p["path"].as_str() == Some("interface")),
        "{v}"
    );
}

#[test]
fn the_deployment_guide_works_as_written() {
    let t0 = Instant::now();
    let md =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(GUIDE)).unwrap();
    let blocks = docblocks::parse(&md).unwrap();
    let files = file_blocks(&md);
    let mut steps: Vec<Step> = blocks
        .iter()
        .map(Step::Run)
        .chain(files.iter().map(Step::File))
        .collect();
    steps.sort_by_key(Step::line);

    let bed = Bed::up(BACKEND.as_ref()).unwrap();
    let wd = bed.tmp.join("work");
    fs::create_dir_all(wd.join("target/release")).unwrap();
    fs::copy(STICKYLB, wd.join("target/release/stickylb")).unwrap();
    println!("test bed up in {} ms", t0.elapsed().as_millis());
    let mut g = Guide {
        bed,
        wd,
        daemon: None,
        daemons_started: 0,
        daemon_pids: Vec::new(),
        load: None,
        lookup: BTreeMap::new(),
        report: Vec::new(),
        fired: Default::default(),
    };
    for step in &steps {
        g.run_step(step);
    }
    assert!(g.daemon.is_none() && g.load.is_none());
    assert_eq!(
        g.daemons_started, 3,
        "start, upgrade, restart through nsenter"
    );
    let mut pids = g.daemon_pids.clone();
    pids.dedup();
    assert_eq!(pids.len(), 3, "{pids:?}");
    let missing: Vec<_> = EXPECTED.iter().filter(|e| !g.fired.contains(*e)).collect();
    assert!(missing.is_empty(), "the guide never did: {missing:?}");

    ip_netns_exec(&mut g, &md);
    println!("\nsummary:");
    for l in &g.report {
        println!("  {l}");
    }
    println!("whole test: {} ms", t0.elapsed().as_millis());
}

/// `text` run in the background on the LB host, from the machine's own
/// namespace (`host`), logging to `log`; once web's backends are up (the
/// guide's last step detached the tunnel backends' decap, so api's stay
/// down).
fn spawn_daemon(g: &Guide, text: &str, log: &Path) -> GroupGuard {
    let bed = &g.bed;
    let f = fs::File::create(log).unwrap();
    let mut cmd = bed.lb.shell(&bed.host, &g.wd, text, None);
    cmd.stdout(f.try_clone().unwrap()).stderr(f);
    let mut child = GroupGuard::spawn(&mut cmd).unwrap();
    let mut exited = None;
    let up = wait_for(Duration::from_secs(15), || {
        exited = child.exited();
        exited.is_some()
            || g.status().is_ok_and(|s| {
                s.vips
                    .iter()
                    .filter(|v| v.name == "web")
                    .flat_map(|v| &v.backends)
                    .all(|b| b.state == BackendState::Up)
            })
    });
    assert!(
        up && exited.is_none(),
        "`{text}` did not come up ({exited:?}):\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
    child
}

/// Waits (10 s at most) for `child` to exit; its status.
fn wait_exit(child: &mut GroupGuard) -> Option<std::process::ExitStatus> {
    let mut exited = None;
    wait_for(Duration::from_secs(10), || {
        exited = child.exited();
        exited.is_some()
    });
    exited
}

/// A command on the LB host from the machine's own namespace: its exit
/// status and its stdout and stderr together, printed.
fn on_host(g: &Guide, text: &str) -> (bool, String) {
    let out = output(&mut g.bed.lb.shell(&g.bed.host, &g.wd, text, Some(BLOCK_LIMIT))).unwrap();
    let (so, se) = main_text(&out);
    println!("{text}: {}\n{}{}", out.status, indent(&so), indent(&se));
    (out.status.success(), so + &se)
}

/// What the guide says of `ip netns exec`: the daemon refuses to start;
/// `status`, `lookup`, `reload` and `stop` work under it, `unload` refuses
/// and changes nothing; a bpffs mounted inside it lets the daemon
/// run, but its pins go with it and the program is detached when it exits.
fn ip_netns_exec(g: &mut Guide, md: &str) {
    let run = "stickylb run -c /etc/stickylb/stickylb.toml";
    let exec = format!("ip netns exec {LB_NETNS_ALIAS}");
    let (ok, out) = on_host(g, &format!("{exec} {run}"));
    assert!(!ok);
    // The error is the last line, after the log of the checks before it.
    let error = out
        .lines()
        .find(|l| l.starts_with("stickylb: "))
        .unwrap_or_else(|| panic!("no error line in:\n{out}"));
    assert!(error.contains("no bpffs on /sys/fs/bpf"), "{out}");
    assert!(
        md.contains(error),
        "the guide does not show the refusal as it is: {error:?}"
    );

    // A daemon started as the guide says, then the CLI under `ip netns
    // exec`.
    let log = g.bed.tmp.join("daemon-nsenter.log");
    let mut daemon = spawn_daemon(
        g,
        &format!("nsenter --net=/run/netns/{LB_NETNS_ALIAS} {run}"),
        &log,
    );
    let pid = g.status().unwrap().pid;
    let (ok, out) = on_host(g, &format!("{exec} stickylb status"));
    assert!(ok && out.contains("VIP web"), "{out}");
    let (ok, out) = on_host(g, &format!("{exec} stickylb lookup 198.51.100.7"));
    assert!(ok && out.contains("198.51.100.7 on web: 10.0.0.1"), "{out}");
    let (ok, out) = on_host(g, &format!("{exec} stickylb reload"));
    assert!(ok && out.contains("reloaded"), "{out}");
    // `unload` cannot remove pins it does not see: it refuses, changing
    // nothing (it used to stop the daemon's lookup short and say "nothing
    // pinned", exit status 0, leaving the daemon and its program running).
    let (ok, unload_out) = on_host(g, &format!("{exec} stickylb unload"));
    assert!(!ok, "{unload_out}");
    assert!(
        unload_out.contains(&format!(
            "the daemon (pid {pid}) pins its maps at /sys/fs/bpf/stickylb on a bpffs that \
             this command does not see"
        )) && unload_out.contains("Nothing was changed"),
        "{unload_out}"
    );
    let still = g.status().map(|s| s.pid);
    assert_eq!(
        still,
        Ok(pid),
        "unload under ip netns exec changed the daemon"
    );
    assert!(g.bed.lb_has_xdp().unwrap());
    assert!(daemon.exited().is_none());
    // `stop` finds the daemon's lock through /proc/PID/root and stops it
    // (it used to say "had already exited" and signal nothing); the
    // program keeps forwarding, as after any stop.
    let (ok, stop_out) = on_host(g, &format!("{exec} stickylb stop"));
    assert!(
        ok && stop_out.contains(&format!("stopped the daemon (pid {pid})")),
        "{stop_out}"
    );
    let exited = wait_exit(&mut daemon);
    let line = format!(
        "under ip netns exec, with the daemon (pid {pid}) running: `unload` refused ({:?}); \
         `stop` said {:?}; then the daemon {}, XDP {}",
        unload_out.lines().last().unwrap_or("").trim(),
        stop_out.trim(),
        if exited.is_some() {
            "had exited"
        } else {
            "DID NOT exit"
        },
        if g.bed.lb_has_xdp().unwrap() {
            "still attached"
        } else {
            "DETACHED"
        }
    );
    println!("{line}");
    g.report.push(line);
    assert!(exited.is_some_and(|s| s.success()));
    assert!(g.bed.lb_has_xdp().unwrap());
    let (ok, out) = on_host(
        g,
        &format!("nsenter --net=/run/netns/{LB_NETNS_ALIAS} stickylb unload"),
    );
    assert!(ok && out.contains("detached the XDP program"), "{out}");
    assert!(!g.bed.lb_has_xdp().unwrap());

    // Following the daemon's hint inside `ip netns exec`, with nothing
    // attached (the unload above).
    let log = g.bed.tmp.join("daemon-netns-exec.log");
    let mut child = spawn_daemon(
        g,
        &format!("exec {exec} sh -c 'mount -t bpf bpf /sys/fs/bpf && exec {run}'"),
        &log,
    );
    let bed = &g.bed;
    let clients = &bed.clients[..20];
    let served = sweep_in(&bed.client, WEB, clients);
    assert!(served.iter().all(Option::is_some), "{served:?}");
    assert!(bed.lb_has_xdp().unwrap());
    assert!(
        !bed.lb.path("/sys/fs/bpf/stickylb").exists(),
        "its pins are visible outside its own mount namespace"
    );
    // SIGTERM, as `stickylb stop` sends.
    // SAFETY: kill(2) on our own child (`exec` made it the daemon).
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let exited = wait_exit(&mut child);
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
    let detached = wait_for(Duration::from_secs(3), || !bed.lb_has_xdp().unwrap());
    let after = sweep_in(&bed.client, WEB, clients);
    let line = format!(
        "ip netns exec + a bpffs of its own: the daemon served {} of {} clients; after SIGTERM \
         XDP {} and {} of them were served",
        served.iter().flatten().count(),
        clients.len(),
        if detached {
            "was detached"
        } else {
            "STILL attached"
        },
        after.iter().flatten().count()
    );
    println!("{line}");
    g.report.push(line);
    assert!(detached, "the program outlived the daemon's private bpffs");
    assert!(after.iter().all(Option::is_none), "{after:?}");
}
