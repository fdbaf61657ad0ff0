//! stickylb's systemd unit (packaging/stickylb.service) under a real systemd:
//! a Debian container (tests/src/container.rs) booted in the load balancer's
//! namespace of a test network, with the binary, the unit and a config
//! installed where the package puts them. Needs root (CI is root), the
//! Debian packages systemd-container and debootstrap, and the network once
//! per machine to build the container's root.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use stickylb_tests::{
    container::{self, Container, ContainerOptions, Install},
    docblocks,
    netns::{self, Netns, Topology, TopologyOptions, VIP, daemon_config, sh, wait_for},
    traffic::{Load, summarize, sweep},
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

const FAST_HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";

/// The package's paths, inside the container.
const CONFIG: &str = "/etc/stickylb/stickylb.toml";
const UNIT: &str = "stickylb.service";

fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/stickylb.service")
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_file()).unwrap()
}

/// The values of `key=` in the unit, every line of it, space-separated
/// words.
fn unit_values(key: &str) -> Vec<String> {
    unit_text()
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .flat_map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect()
}

/// The bit of each capability name this test may meet (capability.h).
fn cap_bit(name: &str) -> u32 {
    match name {
        "CAP_DAC_OVERRIDE" => 1,
        "CAP_KILL" => 5,
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_ADMIN" => 12,
        "CAP_NET_RAW" => 13,
        "CAP_IPC_LOCK" => 14,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("capability {other} is not in this test's table"),
    }
}

fn cap_mask(names: &[String]) -> u64 {
    names.iter().fold(0, |m, n| m | 1 << cap_bit(n))
}

/// The test network, and the container in its LB namespace with stickylb
/// installed. Field order is drop order: the container (and the daemon in
/// it) first.
struct Bed {
    c: Container,
    topo: Topology,
    config: String,
}

fn config_for(backends: usize) -> String {
    daemon_config(
        Path::new("/sys/fs/bpf/stickylb"),
        Path::new("/run/stickylb/stickylb.sock"),
        VIP,
        backends,
        FAST_HEALTH,
        "affinity_timeout = \"120s\"\ntable_size = 1021",
    )
}

impl Bed {
    fn up(clients: usize) -> Self {
        let topo = Topology::up(
            &TopologyOptions {
                backends: 3,
                clients,
                redis: None,
            },
            BACKEND.as_ref(),
        )
        .unwrap();
        let config = config_for(3);
        let mut c = Container::prepare().unwrap();
        container::install(
            &c.root,
            &Install {
                binary: STICKYLB.as_ref(),
                unit: &unit_file(),
                config: &config,
            },
        )
        .unwrap();
        c.boot(&ContainerOptions::for_stickylb(topo.lb.path()))
            .unwrap();
        Self { c, topo, config }
    }

    /// `systemctl ARGS` in the container; its stdout, or why it failed (with
    /// the unit's status and journal).
    fn systemctl(&self, args: &str) -> Result<String, String> {
        self.c
            .sh(&format!("systemctl {args}"))
            .map_err(|e| format!("{e}\n{}", self.diagnose()))
    }

    fn diagnose(&self) -> String {
        let out = self.c.run(&format!(
            "systemctl status --no-pager -l {UNIT} || true; journalctl -u {UNIT} --no-pager -o cat | tail -n 40"
        ));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn show(&self, prop: &str) -> String {
        self.systemctl(&format!("show -p {prop} --value {UNIT}"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn main_pid(&self) -> u32 {
        self.show("MainPID").parse().unwrap()
    }

    fn journal(&self) -> String {
        self.c
            .sh(&format!("journalctl -u {UNIT} --no-pager -o cat"))
            .unwrap_or_default()
    }

    /// A line of /proc/PID/status (in the container's PID namespace).
    fn proc_status(&self, pid: u32, key: &str) -> String {
        let text = self.c.sh(&format!("cat /proc/{pid}/status")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
            .trim()
            .to_owned()
    }

    fn xdp_on_lb(&self) -> bool {
        self.topo
            .lb
            .ip(&["link", "show", "eth0"])
            .unwrap()
            .contains("xdp")
    }

    /// Each client's backend, after checking every client is served.
    fn all_served(&self) -> Vec<Option<usize>> {
        let before = sweep(&self.topo, &self.topo.clients);
        assert_eq!(
            before.iter().filter(|b| b.is_some()).count(),
            self.topo.clients.len(),
            "{}",
            self.diagnose()
        );
        before
    }

    fn answered(&self) -> usize {
        sweep(&self.topo, &self.topo.clients.clone())
            .iter()
            .filter(|b| b.is_some())
            .count()
    }
}

#[test]
fn start_returns_once_the_vips_serve_with_the_units_capabilities_and_limits() {
    let bed = Bed::up(50);
    let clients = bed.topo.clients.clone();

    let t = Instant::now();
    bed.systemctl(&format!("start {UNIT}")).unwrap();
    let start_ms = t.elapsed().as_millis();
    // Right after `systemctl start` returns: every client is served.
    let first = sweep(&bed.topo, &clients);
    let served = first.iter().filter(|b| b.is_some()).count();
    let status = bed.show("StatusText");
    println!(
        "systemctl start returned after {start_ms} ms; then {served} of {} clients served; \
         StatusText: {status}",
        clients.len()
    );
    assert_eq!(served, clients.len(), "{}", bed.diagnose());
    assert_eq!(status, "serving 1 of 1 VIP: web 3/3 backends up");
    assert_eq!(bed.show("ActiveState"), "active");

    // The daemon's capabilities are exactly the unit's bounding set (root's
    // full set, cut down by it), and its descriptor limit the unit's.
    let pid = bed.main_pid();
    let want = unit_values("CapabilityBoundingSet");
    let eff = u64::from_str_radix(&bed.proc_status(pid, "CapEff"), 16).unwrap();
    let bnd = u64::from_str_radix(&bed.proc_status(pid, "CapBnd"), 16).unwrap();
    println!("daemon pid {pid}: CapEff {eff:016x} CapBnd {bnd:016x} (unit: {want:?})");
    assert_eq!(eff, cap_mask(&want), "CapEff is not the unit's set");
    assert_eq!(bnd, cap_mask(&want), "CapBnd is not the unit's set");
    assert_eq!(bed.proc_status(pid, "NoNewPrivs"), "1");
    assert_eq!(bed.proc_status(pid, "Seccomp"), "2", "no syscall filter");
    // LimitNOFILE, as far as this machine allows: systemd sets the closest
    // limit it can, and without CAP_SYS_RESOURCE (not in this machine's
    // bounding set, so not in the container's either) that is its own hard
    // limit. On a host, PID 1 has it and the unit's value is what applies.
    let nofile: u64 = unit_values("LimitNOFILE")[0].parse().unwrap();
    assert_eq!(bed.show("LimitNOFILE"), nofile.to_string());
    let hard_of = |limits: &str| -> u64 {
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        line.split_whitespace().nth(4).unwrap().parse().unwrap()
    };
    let pid1 = hard_of(&bed.c.sh("cat /proc/1/limits").unwrap());
    let limits = bed.c.sh(&format!("cat /proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    println!("daemon: {line} (unit: {nofile}; the container's PID 1 can give at most {pid1})");
    let words: Vec<&str> = line.split_whitespace().collect();
    let want = nofile.min(pid1).to_string();
    assert_eq!(&words[3..5], &[want.as_str(), want.as_str()], "{line}");
    assert!(
        nofile.min(pid1) > 1024,
        "not raised above systemd's default soft limit"
    );

    // The sandbox as the daemon sees it: the file system read-only but the
    // pins (and /run/stickylb), the kernel's tunables read-only, a private
    // /tmp.
    let opts_of = |path: &str| -> String {
        bed.c
            .sh(&format!(
                "nsenter -t {pid} -m findmnt -no OPTIONS --target {path}"
            ))
            .unwrap()
            .trim()
            .to_owned()
    };
    for (path, want) in [
        ("/usr", "ro"),
        ("/etc", "ro"),
        ("/proc/sys", "ro"),
        ("/sys", "ro"),
        ("/sys/fs/bpf", "rw"),
        ("/run/stickylb", "rw"),
    ] {
        let got = opts_of(path);
        println!("the daemon's {path}: {got}");
        assert!(got.split(',').any(|o| o == want), "{path}: {got}");
    }
    let tmp_dev = |ns: &str| bed.c.sh(&format!("{ns}stat -c %d:%i /tmp")).unwrap();
    assert_ne!(
        tmp_dev(&format!("nsenter -t {pid} -m ")),
        tmp_dev(""),
        "no private /tmp"
    );

    // Each CLI command the operator runs reaches the daemon as installed.
    let out = bed.c.sh("stickylb status").unwrap();
    assert!(out.contains("VIP web"), "{out}");

    // The journal has the daemon's own lines, readiness included.
    let journal = bed.journal();
    for want in [
        "attached to eth0",
        "VIP web serving",
        "ready after",
        "control socket",
    ] {
        assert!(
            journal.contains(want),
            "{want:?} not in the journal:\n{journal}"
        );
    }

    // A VIP with no backend alive still lets the start end: ready, saying so.
    bed.c.sh("stickylb unload").unwrap();
    let mut bed = bed;
    for i in 0..3 {
        bed.topo.kill_server(i);
    }
    let t = Instant::now();
    bed.systemctl(&format!("start {UNIT}")).unwrap();
    let dark_ms = t.elapsed().as_millis();
    let status = bed.show("StatusText");
    println!(
        "with every backend down: systemctl start returned after {dark_ms} ms; StatusText: {status}"
    );
    assert_eq!(status, "serving 0 of 1 VIP: web: NO ALIVE BACKEND (0 of 3)");
    assert!(dark_ms < 15_000, "{dark_ms} ms");
    assert_eq!(bed.show("NRestarts"), "0");
}

#[test]
fn reload_applies_the_edited_file_between_reloading_and_ready() {
    let bed = Bed::up(20);
    // A watchdog far shorter than the test: a daemon that did not ping it
    // would be killed and restarted while the test runs.
    bed.c
        .sh(&format!(
            "mkdir -p /run/systemd/system/{UNIT}.d && printf '[Service]\\nWatchdogSec=2s\\n' \
             > /run/systemd/system/{UNIT}.d/watchdog.conf && systemctl daemon-reload"
        ))
        .unwrap();
    bed.systemctl(&format!("start {UNIT}")).unwrap();
    let pid = bed.main_pid();
    assert_eq!(bed.show("WatchdogUSec"), "2s");

    // Two backends in the file instead of three.
    let two = config_for(2);
    std::fs::write(bed.c.path(CONFIG), &two).unwrap();
    let t = Instant::now();
    bed.systemctl(&format!("reload {UNIT}")).unwrap();
    let reload_ms = t.elapsed().as_millis();
    let status = bed.show("StatusText");
    println!("systemctl reload: {reload_ms} ms; StatusText: {status}");
    assert_eq!(status, "serving 1 of 1 VIP: web 2/2 backends up");
    assert_eq!(bed.show("ActiveState"), "active");
    let out = bed.c.sh("stickylb status").unwrap();
    assert!(!out.contains(&netns::backend_addr(2).to_string()), "{out}");
    let journal = bed.journal();
    assert!(journal.contains("reload: "), "{journal}");

    // A broken file: the reload fails, says why, and the daemon runs on.
    std::fs::write(bed.c.path(CONFIG), two.replace("[[vip]]", "[[vip]")).unwrap();
    let err = bed.systemctl(&format!("reload {UNIT}")).unwrap_err();
    let status = bed.show("StatusText");
    println!("systemctl reload of a broken file: fails; StatusText: {status}");
    assert!(err.contains("reload"), "{err}");
    assert!(
        status.starts_with("reload failed (cannot parse config"),
        "{status}"
    );
    assert!(
        status.ends_with("serving 1 of 1 VIP: web 2/2 backends up"),
        "{status}"
    );
    assert_eq!(bed.show("ActiveState"), "active");
    // SIGHUP (what `stickylb reload` and `kill -HUP` do, no ExecReload):
    // RELOADING=1 then READY=1 from the daemon alone. A RELOADING=1 without
    // its READY=1 would leave the unit "reloading".
    std::fs::write(bed.c.path(CONFIG), &bed.config).unwrap();
    bed.systemctl(&format!("kill --kill-who=main -s HUP {UNIT}"))
        .unwrap();
    let mut state = String::new();
    let back = wait_for(Duration::from_secs(5), || {
        state = format!("{} {}", bed.show("ActiveState"), bed.show("StatusText"));
        state == "active serving 1 of 1 VIP: web 3/3 backends up"
    });
    println!("after SIGHUP with the file fixed: {state}");
    assert!(back, "{state}\n{}", bed.diagnose());

    // Past the watchdog's timeout, twice over: still the same daemon.
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(bed.main_pid(), pid, "{}", bed.diagnose());
    assert_eq!(bed.show("NRestarts"), "0");
    assert_eq!(bed.show("Result"), "success");
}

#[test]
fn restart_loses_no_client_stop_keeps_forwarding_unload_takes_it_down() {
    const CLIENTS: usize = 150;
    let bed = Bed::up(CLIENTS);
    let clients = bed.topo.clients.clone();
    bed.systemctl(&format!("start {UNIT}")).unwrap();
    let before = bed.all_served();
    let old_pid = bed.main_pid();
    // Maintenance is kept across the restart.
    bed.c.sh("stickylb maintenance on").unwrap();

    // For comparison: the same restart with nothing else running.
    let t = Instant::now();
    bed.systemctl(&format!("restart {UNIT}")).unwrap();
    println!(
        "systemctl restart with no load: {} ms",
        t.elapsed().as_millis()
    );
    let t = Instant::now();
    bed.c
        .sh("stickylb check -c /etc/stickylb/stickylb.toml")
        .unwrap();
    println!(
        "stickylb check with no load: {} ms",
        t.elapsed().as_millis()
    );
    // Bounded far above the restart: under this load a start in the
    // container can take seconds (the journal timeline printed below shows where).
    let load = Load::start(&bed.topo, &clients, Duration::from_secs(45));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    bed.c
        .sh("stickylb check -c /etc/stickylb/stickylb.toml")
        .unwrap();
    println!("stickylb check under load: {} ms", t.elapsed().as_millis());
    let t = Instant::now();
    bed.systemctl(&format!("restart {UNIT}")).unwrap();
    let restart_ms = t.elapsed().as_millis();
    std::thread::sleep(Duration::from_millis(700));
    let samples = load.finish();
    let s = summarize(&samples, &before, &[]);
    println!(
        "systemctl restart under load ({CLIENTS} clients): {} requests, {} failed, {} of \
         {CLIENTS} clients moved; systemctl restart took {restart_ms} ms",
        s.requests,
        s.failed,
        s.moved.len()
    );
    s.assert_none_failed_or_moved("systemctl restart under load");
    // Where the restart's time went, by the journal's clock.
    let precise = bed
        .c
        .sh(&format!("journalctl -u {UNIT} --no-pager -o short-precise"))
        .unwrap_or_default();
    let from = precise.rfind("Stopping stickylb").unwrap_or(0);
    for l in precise[from..].lines().take(40) {
        if [
            "Stopping",
            "Stopped",
            "exiting on",
            "Starting",
            "OK (",
            "adopted",
            "ready after",
            "Started",
            "limits",
        ]
        .iter()
        .any(|w| l.contains(w))
        {
            println!("  {}", l.chars().take(150).collect::<String>());
        }
    }
    assert_ne!(
        bed.main_pid(),
        old_pid,
        "systemctl restart did not restart it"
    );
    let journal = bed.journal();
    for want in ["exiting on SIGTERM", "adopted the running data path"] {
        assert!(journal.contains(want), "{want:?} not in:\n{journal}");
    }
    let status = bed.c.sh("stickylb status").unwrap();
    assert!(
        status.contains("MAINTENANCE"),
        "maintenance lost in the restart:\n{status}"
    );
    assert!(bed.show("StatusText").contains("in maintenance"));
    bed.c.sh("stickylb maintenance off").unwrap();

    // A crash: systemd starts it again (Restart=on-failure), the new daemon
    // adopts what is pinned, and the program forwarded all along.
    let crashed = bed.main_pid();
    let t = Instant::now();
    bed.systemctl(&format!("kill --kill-who=main -s KILL {UNIT}"))
        .unwrap();
    let mut state = String::new();
    let back = wait_for(Duration::from_secs(15), || {
        state = format!("{} {}", bed.show("ActiveState"), bed.show("NRestarts"));
        state == "active 1" && bed.main_pid() != crashed
    });
    println!(
        "kill -9 of the daemon: active again (NRestarts=1) after {} ms",
        t.elapsed().as_millis()
    );
    assert!(back, "{state}\n{}", bed.diagnose());
    assert_eq!(
        sweep(&bed.topo, &clients),
        before,
        "clients after a crash and Restart=on-failure"
    );

    // `systemctl stop`: the daemon is gone, the program forwards.
    bed.systemctl(&format!("stop {UNIT}")).unwrap();
    assert_eq!(bed.show("ActiveState"), "inactive");
    assert_eq!(
        sweep(&bed.topo, &clients),
        before,
        "clients after systemctl stop"
    );
    assert!(bed.xdp_on_lb());

    // `stickylb unload`: down.
    let out = bed.c.sh("stickylb unload").unwrap();
    println!("stickylb unload:\n{out}");
    assert!(out.contains("detached the XDP program from eth0"), "{out}");
    assert!(!bed.xdp_on_lb());
    assert_eq!(bed.answered(), 0, "the VIP still answers after unload");
}

/// How a start with a reduced capability set went.
struct CapRun {
    started: bool,
    /// Every client was served after the start.
    served: bool,
    /// That start's journal (its invocation's lines only).
    journal: String,
}

/// Starts the unit with `bounding` as its capability set and `config` as its
/// file; then takes it all down again.
fn start_with_caps(bed: &Bed, bounding: &[&str], config: &str) -> CapRun {
    let dropin = format!("/run/systemd/system/{UNIT}.d");
    std::fs::write(bed.c.path(CONFIG), config).unwrap();
    bed.c
        .sh(&format!(
            "mkdir -p {dropin} && printf '[Service]\\nCapabilityBoundingSet=\\nCapabilityBoundingSet={}\\nRestart=no\\n' > {dropin}/caps.conf && systemctl daemon-reload",
            bounding.join(" ")
        ))
        .unwrap();
    let started = bed
        .c
        .run(&format!("systemctl start {UNIT}"))
        .status
        .success();
    let served = started && bed.answered() == bed.topo.clients.len();
    let journal = bed
        .c
        .sh(&format!(
            "journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID=$(systemctl show -p InvocationID --value {UNIT})"
        ))
        .unwrap_or_default();
    let _ = bed.c.run(&format!(
        "systemctl stop {UNIT}; systemctl reset-failed {UNIT}; stickylb unload"
    ));
    CapRun {
        started,
        served,
        journal,
    }
}

/// The daemon's first complaint in `journal`, for the output.
fn complaint(journal: &str) -> String {
    journal
        .lines()
        .find(|l| l.starts_with("stickylb:") || l.contains("CAP_"))
        .unwrap_or("")
        .chars()
        .take(240)
        .collect()
}

/// A GUE VIP, whose health checks probe through the tunnel with a raw
/// socket (CAP_NET_RAW). No backend decapsulates here: the checks fail
/// either way, but only without the capability do they fail for it.
const RAW_SOCKET_REFUSED: &str = "cannot open a raw socket";

#[test]
fn each_capability_of_the_unit_is_needed() {
    let bed = Bed::up(10);
    // What a GUE VIP needs of the LB host (`stickylb check` says so).
    for key in ["forwarding", "accept_local"] {
        bed.topo
            .lb
            .sysctl(&format!("net.ipv4.conf.eth0.{key}"), "1")
            .unwrap();
    }
    let dsr = config_for(3);
    let gue = dsr.replace(
        "protocol = \"tcp\"\n",
        "protocol = \"tcp\"\nforwarding = \"gue\"\n",
    );
    assert_ne!(gue, dsr);
    let caps = unit_values("CapabilityBoundingSet");
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let all = start_with_caps(&bed, &caps, &dsr);
    assert!(all.served, "with the unit's own set:\n{}", all.journal);
    let all_gue = start_with_caps(&bed, &caps, &gue);
    assert!(all_gue.started, "{}", all_gue.journal);
    assert!(
        !all_gue.journal.contains(RAW_SOCKET_REFUSED),
        "{}",
        all_gue.journal
    );
    println!("with {caps:?}: DSR VIP served, GUE VIP's tunnel probes run");
    let mut unneeded = Vec::new();
    for drop in &caps {
        let fewer: Vec<&str> = caps.iter().copied().filter(|c| c != drop).collect();
        let r = start_with_caps(&bed, &fewer, &dsr);
        if !r.served {
            println!(
                "without {drop}: start {}, VIP not served: {}",
                if r.started { "succeeded" } else { "FAILED" },
                complaint(&r.journal)
            );
            continue;
        }
        let r = start_with_caps(&bed, &fewer, &gue);
        if r.journal.contains(RAW_SOCKET_REFUSED) {
            println!(
                "without {drop}: DSR served, but a GUE VIP's tunnel probes cannot run: {}",
                complaint(&r.journal)
            );
            continue;
        }
        unneeded.push(*drop);
    }
    assert!(
        unneeded.is_empty(),
        "the unit grants {unneeded:?}, which nothing needed"
    );
}

#[test]
fn the_unit_verifies_and_a_start_without_bpffs_fails_saying_so() {
    crate_root_check();
    let ns = Netns::new(&format!("sd-v{}", std::process::id() % 100_000)).unwrap();
    let mut c = Container::prepare().unwrap();
    container::install(
        &c.root,
        &Install {
            binary: STICKYLB.as_ref(),
            unit: &unit_file(),
            config: &config_for(1),
        },
    )
    .unwrap();
    // Offline on the host too, against the container's root (as CI would
    // on the host itself once the package is installed there).
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", c.root.display()))
        .arg(UNIT)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    println!(
        "host: systemd-analyze verify --man=no --root=ROOT {UNIT}: {} {text}",
        out.status
    );
    assert!(out.status.success() && text.is_empty(), "{text}");
    let exposure = sh(Command::new("systemd-analyze")
        .args(["security", "--no-pager", "--offline=true"])
        .arg(unit_file()))
    .unwrap();
    let overall = exposure
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap()
        .to_owned();
    println!(
        "systemd-analyze security --offline=true: {}",
        overall.trim()
    );
    let mut opts = ContainerOptions::for_stickylb(ns.path());
    opts.bpffs = false;
    c.boot(&opts).unwrap();
    // --man=no: verify also runs `man` on each Documentation= page, and
    // neither man-db nor the pages (the package's) are in this container.
    let out = c.run(&format!(
        "systemd-analyze verify --man=no /lib/systemd/system/{UNIT}"
    ));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("systemd-analyze verify: {} {}", out.status, text.trim());
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
    // It can fail: the same unit naming a binary that is not there.
    let bad = c.run(&format!(
        "sed 's|/usr/bin/stickylb run|/usr/bin/stickylb-missing run|' /lib/systemd/system/{UNIT} > /tmp/{UNIT} && systemd-analyze verify --man=no /tmp/{UNIT}"
    ));
    assert!(
        !bad.status.success(),
        "verify passed a unit with a missing binary"
    );

    let out = c.run(&format!("systemctl start {UNIT}"));
    let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let journal = c
        .sh(&format!("journalctl -u {UNIT} --no-pager -o cat"))
        .unwrap_or_default();
    let assert_result = c
        .sh(&format!("systemctl show -p AssertResult --value {UNIT}"))
        .unwrap();
    println!(
        "without bpffs: systemctl start: {} ({said}); journal: {}; AssertResult={}",
        out.status,
        journal.trim().replace('\n', " | "),
        assert_result.trim()
    );
    assert!(!out.status.success(), "started without bpffs");
    assert!(said.contains("Assertion failed"), "{said}");
    assert_eq!(assert_result.trim(), "no");
    // Refused before anything ran (`stickylb check` logs the file's name).
    assert!(!journal.contains(CONFIG), "{journal}");
    drop(c);
    drop(ns);
}

fn crate_root_check() {
    stickylb_tests::require_root();
}

#[test]
fn docs_systemd_md_runs_as_written() {
    let blocks = docblocks::load("docs/systemd.md").unwrap();
    let blocks = docblocks::of_role(&blocks, "systemd").unwrap();
    let bed = Bed::up(20);
    for b in blocks {
        let t = Instant::now();
        let out = bed.c.run(&b.text);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "docs/systemd.md line {} ({} ms, {}):\n{}\n{}",
            b.line,
            t.elapsed().as_millis(),
            out.status,
            b.text.trim(),
            text.trim()
        );
        assert!(
            out.status.success(),
            "docs/systemd.md line {}:\n{text}\n{}",
            b.line,
            bed.diagnose()
        );
    }
}

/// The .deb `cargo xtask test` built (`cargo xtask package`), as the
/// package test takes it.
fn package_path() -> PathBuf {
    let deb = std::env::var_os("STICKYLB_DEB").unwrap_or_else(|| {
        panic!(
            "STICKYLB_DEB is not set: run `cargo xtask test` (it builds the package first), \
             or `cargo xtask package` and set STICKYLB_DEB to the .deb it printed"
        )
    });
    let deb = PathBuf::from(deb);
    assert!(
        deb.is_file(),
        "STICKYLB_DEB={} is not a file",
        deb.display()
    );
    deb
}

/// The package's maintainer scripts under a real systemd, which the
/// package test on the host (no systemd as init) cannot run: `dpkg -i`
/// starts and enables nothing; the operator's `systemctl enable --now`
/// serves; a reinstall (dpkg's upgrade path) restarts the running service
/// on the new files under load, failing no request and moving no client;
/// `dpkg -r` stops it and takes the data path down, leaving only the
/// config; `dpkg --purge` leaves nothing, the operator's enablement
/// included.
#[test]
fn the_package_installs_upgrades_and_removes_under_systemd() {
    stickylb_tests::require_root();
    const CLIENTS: usize = 60;
    let deb = package_path();
    let topo = Topology::up(
        &TopologyOptions {
            backends: 3,
            clients: CLIENTS,
            redis: None,
        },
        BACKEND.as_ref(),
    )
    .unwrap();
    let mut c = Container::prepare().unwrap();
    std::fs::copy(&deb, c.root.join("root/stickylb.deb")).unwrap();
    c.boot(&ContainerOptions::for_stickylb(topo.lb.path()))
        .unwrap();
    let bed = Bed {
        c,
        topo,
        config: config_for(3),
    };
    let state = |what: &str| {
        let out = bed.c.run(&format!("systemctl {what} {UNIT} || true"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };

    let out = bed.c.sh("dpkg -i /root/stickylb.deb 2>&1").unwrap();
    println!("dpkg -i:\n{out}");
    assert_eq!(state("is-enabled"), "disabled", "installing enabled it");
    assert_eq!(state("is-active"), "inactive", "installing started it");
    assert!(!bed.xdp_on_lb(), "installing attached a program");

    // The operator's part: the config, then enable and start.
    bed.c
        .sh(&format!(
            "cat > {CONFIG} <<'STICKYLB_TOML'\n{}STICKYLB_TOML\n",
            bed.config
        ))
        .unwrap();
    bed.systemctl(&format!("enable --now {UNIT}")).unwrap();
    let clients = bed.topo.clients.clone();
    let before = bed.all_served();
    let old_pid = bed.main_pid();

    // An upgrade, as dpkg runs it: prerm upgrade, new files, postinst
    // configure with the old version (try-restart).
    let load = Load::start(&bed.topo, &clients, Duration::from_secs(45));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let out = bed.c.sh("dpkg -i /root/stickylb.deb 2>&1").unwrap();
    let upgrade_ms = t.elapsed().as_millis();
    std::thread::sleep(Duration::from_millis(700));
    let samples = load.finish();
    let s = summarize(&samples, &before, &[]);
    println!(
        "dpkg -i over the installed package (upgrade) under load ({CLIENTS} clients): {} \
         requests, {} failed, {} of {CLIENTS} clients moved; dpkg took {upgrade_ms} ms\n{out}",
        s.requests,
        s.failed,
        s.moved.len()
    );
    assert_eq!(state("is-active"), "active", "{}", bed.diagnose());
    assert_ne!(bed.main_pid(), old_pid, "the upgrade did not restart it");
    s.assert_none_failed_or_moved("the upgrade under load");
    assert!(
        bed.journal().contains("adopted the running data path"),
        "{}",
        bed.diagnose()
    );

    // Removal takes the data path down and leaves only the config.
    let out = bed.c.sh("dpkg -r stickylb 2>&1").unwrap();
    println!("dpkg -r:\n{out}");
    assert!(out.contains("detached the XDP program"), "{out}");
    assert_eq!(state("is-active"), "inactive");
    assert!(!bed.xdp_on_lb(), "dpkg -r left the program attached");
    assert_eq!(bed.answered(), 0, "the VIP still answers after dpkg -r");
    let left = bed
        .c
        .sh("ls -d /sys/fs/bpf/stickylb /usr/bin/stickylb /lib/systemd/system/stickylb.service /etc/stickylb/stickylb.toml 2>/dev/null || true")
        .unwrap();
    assert_eq!(left.trim(), CONFIG, "after dpkg -r");

    bed.c.sh("dpkg --purge stickylb").unwrap();
    let left = bed
        .c
        .sh("ls -d /etc/stickylb /run/stickylb /etc/systemd/system/multi-user.target.wants/stickylb.service 2>/dev/null || true")
        .unwrap();
    assert_eq!(left.trim(), "", "after dpkg --purge");
    assert!(
        bed.c
            .sh("dpkg-query -W -f '${Status}' stickylb 2>/dev/null || true")
            .unwrap()
            .trim()
            .is_empty(),
        "dpkg still knows the package after purge"
    );
}

/// An exec health check's command runs inside the unit's sandbox (the
/// capability set, the seccomp filter, MemoryDenyWriteExecute,
/// RestrictNamespaces, a read-only file system): a plain shell check
/// there still decides, both ways — up while the backend answers, down
/// once its server is killed.
#[test]
fn an_exec_health_check_decides_inside_the_sandbox() {
    let mut bed = Bed::up(10);
    let exec = "kind = \"exec\"\n\
                command = [\"/bin/bash\", \"-c\", \"exec 3<>/dev/tcp/$STICKYLB_BACKEND_ADDRESS/$STICKYLB_BACKEND_PORT\"]\n\
                interval = \"300ms\"\ntimeout = \"250ms\"\nrise = 2\nfall = 2";
    let config = daemon_config(
        Path::new("/sys/fs/bpf/stickylb"),
        Path::new("/run/stickylb/stickylb.sock"),
        VIP,
        3,
        exec,
        "affinity_timeout = \"120s\"\ntable_size = 1021",
    );
    std::fs::write(bed.c.path(CONFIG), &config).unwrap();
    bed.systemctl(&format!("start {UNIT}")).unwrap();
    let status = bed.show("StatusText");
    println!("exec checks under the unit: StatusText: {status}");
    assert_eq!(
        status,
        "serving 1 of 1 VIP: web 3/3 backends up",
        "{}",
        bed.diagnose()
    );
    assert_eq!(bed.answered(), 10, "{}", bed.diagnose());
    bed.topo.kill_server(0);
    let mut status = String::new();
    let down = wait_for(Duration::from_secs(5), || {
        status = bed.show("StatusText");
        status == "serving 1 of 1 VIP: web 2/3 backends up"
    });
    let out = bed.c.sh("stickylb status").unwrap_or_default();
    println!("backend 0's server killed: StatusText: {status}\n{out}");
    assert!(down, "{status}\n{}", bed.diagnose());
    assert!(out.contains("exit status"), "{out}");
}
