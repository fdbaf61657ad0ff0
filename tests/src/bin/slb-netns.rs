//! `cargo xtask netns up|down`: the test network by hand. `up` builds it
//! (3 backends, 250 clients), starts the daemon and leaves it all running;
//! `up --nodes N` builds the multi-node network instead (a BGP/ECMP router,
//! N stickylb nodes each with its BIRD); `down` removes everything `up` (or
//! `cargo xtask demo --keep`) left.
//! `hold` builds the same network for as long as it runs: Ctrl-C (or any
//! signal that ends it) removes it all.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use lb_user::api::BackendState;
use stickylb_tests::{
    cluster::{self, Cluster, ClusterOptions},
    daemon::Daemon,
    netns::{KeptTopology, Topology, TopologyOptions, VIP},
};

const STATE_DIR: &str = "/run/stickylb-netns";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let action = args.first().cloned().unwrap_or_default();
    let nodes = match args.get(1..) {
        Some([flag, n]) if flag == "--nodes" => n.parse::<usize>().ok(),
        _ => None,
    };
    let result = match action.as_str() {
        "up" if args.len() == 1 => up(),
        "up" => match nodes {
            Some(n) if (2..=9).contains(&n) => up_cluster(n),
            _ => Err("usage: slb-netns up [--nodes N] (N from 2 to 9)".into()),
        },
        "down" => down(),
        "hold" => hold(),
        _ => Err("usage: slb-netns up [--nodes N]|down|hold".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slb-netns: {e}");
            ExitCode::FAILURE
        }
    }
}

fn state_file() -> std::path::PathBuf {
    Path::new(STATE_DIR).join("state")
}

/// The network with the daemon running and every backend up; the daemon's
/// pin folder.
fn build() -> Result<(Topology, Daemon, PathBuf), String> {
    stickylb_tests::require_root();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no exe dir")?;
    let topo = Topology::up(
        &TopologyOptions {
            backends: 3,
            clients: 250,
            redis: None,
        },
        &dir.join("slb-backend"),
    )?;
    let pin = topo.daemon_pin();
    let config = topo.config(&pin, "", "affinity_timeout = \"5m\"");
    let d = Daemon::start(&topo, &dir.join("stickylb-under-test"), &config, &[])?;
    if !d.wait_backends(Duration::from_secs(8), |s, _| s == BackendState::Up) {
        return Err(format!("backends did not come up:\n{}", d.log_text()));
    }
    Ok((topo, d, pin))
}

fn up() -> Result<(), String> {
    if state_file().exists() {
        return Err(format!(
            "a test network is already up ({}); `cargo xtask netns down` first",
            state_file().display()
        ));
    }
    let (topo, mut d, pin) = build()?;
    let daemon_pid = d.child.as_ref().map(|c| c.pid());
    if let Some(c) = d.child.take() {
        std::mem::forget(c);
    }
    let id = topo.id.clone();
    let tmp = topo.tmp.clone();
    let mut kept: KeptTopology = topo.persist();
    kept.pids.extend(daemon_pid);
    kept.pins.push(pin);
    std::fs::create_dir_all(STATE_DIR).map_err(|e| e.to_string())?;
    std::fs::write(state_file(), kept.to_lines()).map_err(|e| e.to_string())?;
    describe(&id, daemon_pid, &tmp, "cargo xtask netns down");
    Ok(())
}

/// The multi-node network with a daemon and BIRD on every node, the VIP
/// announced by all of them, kept running.
fn up_cluster(nodes: usize) -> Result<(), String> {
    if state_file().exists() {
        return Err(format!(
            "a test network is already up ({}); `cargo xtask netns down` first",
            state_file().display()
        ));
    }
    stickylb_tests::require_root();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no exe dir")?;
    let mut c = Cluster::up(
        &ClusterOptions {
            nodes,
            backends: 3,
            clients: 250,
        },
        &dir.join("slb-backend"),
    )?;
    // Every daemon announces the VIP itself ([announce]) and syncs its
    // affinity table with the others ([sync]).
    c.start_announcing(
        &dir.join("stickylb-under-test"),
        "",
        "affinity_timeout = \"5m\"",
        true,
    )?;
    let id = c.id.clone();
    let tmp = c.tmp.clone();
    let kept = c.persist();
    std::fs::create_dir_all(STATE_DIR).map_err(|e| e.to_string())?;
    std::fs::write(state_file(), kept.to_lines()).map_err(|e| e.to_string())?;
    let last = nodes - 1;
    println!(
        "multi-node test network up (namespaces {id}-*, files in {tmp}):\n\
         \n  clients  {id}-cl  {cm} + 10.78.1.1-250, default via {rc}\
         \n  router   {id}-rt  {rc} | {ra}, BIRD (docs/bird/router.conf), L4 ECMP\
         \n  nodes    {id}-n0..n{last}  10.77.0.1-{nodes}, stickylb XDP + BIRD (docs/bird/lb-node.conf)\
         \n  backends {id}-b0..b2  10.77.0.10-12, VIP {vip} on lo, default via {ra}\
         \n  bridge   {id}-br  br0\
         \n\nTry:\
         \n  ip -n {id}-rt route show {vip}\
         \n  ip netns exec {id}-cl curl -s --interface 10.78.1.7 http://{vip}/\
         \n  birdc -s {tmp}/rt/bird.ctl show protocols\
         \n  target/release/stickylb-under-test --socket {tmp}/n0/ctl.sock lookup 10.78.1.7\
         \n  ip -n {id}-n1 route show table {table}   # the route node 1's daemon announces\
         \n  target/release/stickylb-under-test --socket {tmp}/n1/ctl.sock maintenance on   # node 1 withdraws\
         \n\nRemove it all: cargo xtask netns down",
        cm = cluster::CLIENT_MAIN_ADDR,
        rc = cluster::ROUTER_CLIENT_ADDR,
        ra = cluster::ROUTER_ADDR,
        vip = cluster::VIP,
        table = cluster::ANNOUNCE_TABLE,
        tmp = tmp.display(),
    );
    Ok(())
}

/// Holds the network until a signal ends this process. Nothing here handles
/// the signal: the topology's cleanup watcher removes the network once this
/// process is gone, which is what a test of that watcher needs.
fn hold() -> Result<(), String> {
    let (topo, daemon, _pin) = build()?;
    // The first line is for programs (tests/tests/cleanup.rs).
    println!("ready {}", topo.id);
    let pid = daemon.child.as_ref().map(|c| c.pid());
    describe(&topo.id, pid, &topo.tmp, "Ctrl-C");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    loop {
        std::thread::park();
    }
}

/// What is up, and what to try.
fn describe(id: &str, daemon_pid: Option<u32>, tmp: &Path, remove: &str) {
    println!(
        "test network up (namespaces {id}-*; daemon pid {}, log {}):\n\
         \n  client   {id}-cl  10.77.0.2 + 10.77.1.1-250 (TX checksum offload off)\
         \n  LB       {id}-lb  10.77.0.1, VIP {VIP} on eth0, stickylb XDP in driver mode\
         \n  backends {id}-b0..b2  10.77.0.10-12, VIP on lo, slb-backend on :80\
         \n  bridge   {id}-br  br0 (XDP_PASS on the LB's port p-lb)\
         \n\nTry:\
         \n  ip netns exec {id}-cl curl -s --interface 10.77.1.7 http://{VIP}/\
         \n  target/release/stickylb-under-test --socket {sock} status\
         \n  target/release/stickylb-under-test --socket {sock} lookup 10.77.1.7\
         \n  ip netns exec {id}-b1 ip link set eth0 down   # and watch status\
         \n\nconfig: {cfg}\nRemove it all: {remove}",
        daemon_pid.unwrap_or(0),
        tmp.join("daemon.log").display(),
        sock = tmp.join("ctl.sock").display(),
        cfg = tmp.join("stickylb.toml").display(),
    );
}

fn down() -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string(state_file()) else {
        println!("no test network is up");
        return Ok(());
    };
    let kept = KeptTopology::from_lines(&text);
    kept.remove();
    std::fs::remove_file(state_file()).map_err(|e| e.to_string())?;
    println!(
        "removed test network {} ({} namespaces)",
        kept.id,
        kept.namespaces.len()
    );
    Ok(())
}
