//! Announcing the VIPs (`[announce]`): the daemon's route for the VIP in
//! its table, as the kernel of the LB namespace holds it, through warm-up,
//! backends dying and coming back, maintenance, restarts, `--fresh` and
//! `unload`. No BGP daemon: what BIRD would export is exactly what
//! `ip route show table T proto P` shows. Needs root (CI is root).

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_user::{
    announce::{MAINTENANCE_DIR, Maintenance, NotAnnounced, netlink::Socket},
    dataplane::{Dataplane, LINK_PIN_NAME, LoadOptions},
};
use stickylb_tests::{
    daemon::{Daemon, topology_with_pin},
    netns::{CLIENT_MAIN_ADDR, LB_ADDR, Topology, VIP, enter_path, wait_for},
    traffic::sweep,
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");
const TABLE: u32 = 200;
const PROTO: u8 = 250;
const FAST_HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";
const WITHDRAW_DELAY_MS: u64 = 400;

fn config(topo: &Topology, pin: &std::path::Path) -> String {
    format!(
        "{}\n[announce]\ntable = {TABLE}\nprotocol = {PROTO}\nwithdraw_delay = \"{WITHDRAW_DELAY_MS}ms\"\n",
        topo.config(pin, FAST_HEALTH, "")
    )
}

/// `ip route show table T [proto P]` in the LB namespace, one route a line.
fn routes(topo: &Topology, proto: Option<u8>) -> Vec<String> {
    let t = TABLE.to_string();
    let p = proto.map(|p| p.to_string());
    let mut args = vec!["route", "show", "table", t.as_str()];
    if let Some(p) = &p {
        args.extend(["proto", p.as_str()]);
    }
    let text = match topo.lb.ip(&args) {
        Ok(t) => t,
        // The kernel makes a table with its first route.
        Err(e) if e.contains("FIB table does not exist") => String::new(),
        Err(e) => panic!("{e}"),
    };
    text.lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn announced(topo: &Topology) -> bool {
    routes(topo, Some(PROTO)) == [format!("blackhole {VIP}")]
}

#[track_caller]
fn wait_announced(topo: &Topology, d: &Daemon, want: bool, within: Duration) {
    assert!(
        wait_for(within, || announced(topo) == want),
        "announced should be {want}: routes {:?}, status {:?}\n{}",
        routes(topo, None),
        d.status()
            .map(|s| s.vips.into_iter().map(|v| v.announce).collect::<Vec<_>>()),
        d.log_text()
    );
}

/// The maintenance file a daemon on `pin` keeps in the host's maintenance
/// folder, removed when dropped (a failed test included).
struct MaintenanceFile(PathBuf);

impl MaintenanceFile {
    fn of(pin: &std::path::Path) -> Self {
        let m = Maintenance::load(std::path::Path::new(MAINTENANCE_DIR), pin);
        Self(m.file().to_owned())
    }
}

impl Drop for MaintenanceFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn reason(d: &Daemon) -> Option<NotAnnounced> {
    d.vips().unwrap()[0].announce.unwrap().reason
}

#[test]
fn the_route_follows_warm_up_health_and_maintenance_and_stale_routes_go() {
    let (mut topo, pin) = topology_with_pin(2, 8, BACKEND.as_ref()).unwrap();
    let _maintenance = MaintenanceFile::of(&pin.0);
    // Left in the table before the daemon starts: a route of stickylb's
    // protocol that no VIP wants (a /32 and a wider one), and another
    // protocol's route, which is not stickylb's to touch.
    topo.lb
        .ip(&[
            "route",
            "add",
            "blackhole",
            "10.99.0.1/32",
            "table",
            "200",
            "proto",
            "250",
        ])
        .unwrap();
    topo.lb
        .ip(&[
            "route",
            "add",
            "blackhole",
            "10.99.1.0/24",
            "table",
            "200",
            "proto",
            "250",
        ])
        .unwrap();
    topo.lb
        .ip(&[
            "route",
            "add",
            "blackhole",
            "10.99.0.2/32",
            "table",
            "200",
            "proto",
            "251",
        ])
        .unwrap();
    let mut d = Daemon::start(&topo, STICKYLB.as_ref(), &config(&topo, &pin.0), &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    wait_announced(&topo, &d, true, Duration::from_secs(3));
    assert_eq!(
        routes(&topo, None),
        [
            "blackhole 10.77.100.1 proto 250",
            "blackhole 10.99.0.2 proto 251"
        ],
        "stale routes of our protocol removed, another protocol's kept"
    );
    let s = d.status().unwrap();
    assert!(!s.maintenance);
    assert_eq!(s.announce.unwrap().table, TABLE);
    assert!(s.vips[0].announce.unwrap().announced);
    assert_eq!(reason(&d), None);
    assert!(
        !d.log_text().contains("is not an address of"),
        "the VIP-not-held warning fired with [announce]:\n{}",
        d.log_text()
    );

    // Every backend dies: withdrawn, for that reason; one back: announced.
    topo.kill_server(0);
    topo.kill_server(1);
    wait_announced(&topo, &d, false, Duration::from_secs(3));
    assert_eq!(reason(&d), Some(NotAnnounced::NoAliveBackend));
    assert!(!d.vips().unwrap()[0].announce.unwrap().announced);
    topo.start_server(1).unwrap();
    wait_announced(&topo, &d, true, Duration::from_secs(3));
    topo.start_server(0).unwrap();
    d.assert_up(Duration::from_secs(5));

    // Maintenance: withdrawn, yet what still arrives is served.
    let (code, out, err) = d.cli(&["maintenance", "on"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("maintenance on"), "{out}");
    assert!(!announced(&topo), "withdrawn by the time the CLI returns");
    assert_eq!(reason(&d), Some(NotAnnounced::Maintenance));
    let clients = topo.clients.clone();
    let answers = sweep(&topo, &clients);
    assert!(
        answers.iter().all(Option::is_some),
        "in maintenance: {answers:?}"
    );
    let (code, out, _) = d.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("MAINTENANCE") && out.contains("not announced: the node is in maintenance"),
        "{out}"
    );

    // It survives a restart: the backends come up, nothing is announced.
    d.stop().unwrap();
    assert!(!announced(&topo));
    d.restart(&topo, &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    thread::sleep(Duration::from_millis(500));
    assert!(
        !announced(&topo),
        "{:?}\n{}",
        routes(&topo, None),
        d.log_text()
    );
    assert!(d.status().unwrap().maintenance);
    let (code, out, err) = d.cli(&["maintenance", "off"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        announced(&topo),
        "announced by the time the CLI returns: {out}"
    );
    let (_, out, _) = d.cli(&["maintenance", "off"]);
    assert!(out.contains("already"), "{out}");

    // A reload to another table moves the route, and says so.
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, text.replace("table = 200", "table = 201")).unwrap();
    let (code, out, err) = d.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("announce table 200 -> 201"), "{out}");
    assert!(routes(&topo, Some(PROTO)).is_empty(), "left in table 200");
    let t201 = topo
        .lb
        .ip(&["route", "show", "table", "201", "proto", "250"])
        .unwrap();
    assert_eq!(t201.trim(), format!("blackhole {VIP}"));
}

/// Polls the table from inside the LB namespace every 2 ms, until dropped:
/// how many polls found the VIP's route missing, and when it first did.
struct Poller {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Polled>>,
}

#[derive(Debug, Default)]
struct Polled {
    polls: u64,
    missing: u64,
    first_missing: Option<Instant>,
    /// When the program's pinned link was first seen gone.
    link_gone: Option<Instant>,
}

impl Poller {
    fn start(topo: &Topology, link: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = topo.lb.path();
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            enter_path(&ns);
            let mut sock = Socket::open().unwrap();
            let mut p = Polled::default();
            while !flag.load(Ordering::Relaxed) {
                let have = sock
                    .routes(TABLE, PROTO)
                    .unwrap()
                    .iter()
                    .any(|r| r.dst == VIP && r.prefix_len == 32);
                let now = Instant::now();
                p.polls += 1;
                if !have {
                    p.missing += 1;
                    p.first_missing.get_or_insert(now);
                }
                if !link.exists() {
                    p.link_gone.get_or_insert(now);
                }
                thread::sleep(Duration::from_millis(2));
            }
            p
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Polled {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn a_restart_keeps_the_route_and_fresh_and_unload_withdraw_first() {
    let (topo, pin) = topology_with_pin(2, 4, BACKEND.as_ref()).unwrap();
    let link = pin.0.join(LINK_PIN_NAME);
    let mut d = Daemon::start(&topo, STICKYLB.as_ref(), &config(&topo, &pin.0), &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    wait_announced(&topo, &d, true, Duration::from_secs(3));

    // SIGTERM and start again: the adopted program forwarded all along, and
    // its route was never missing, not for one poll.
    let poller = Poller::start(&topo, link.clone());
    thread::sleep(Duration::from_millis(50));
    d.stop().unwrap();
    thread::sleep(Duration::from_millis(200));
    d.restart(&topo, &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    thread::sleep(Duration::from_millis(300));
    let p = poller.finish();
    assert!(p.polls > 50, "{p:?}");
    assert_eq!(
        p.missing,
        0,
        "the route flapped over a restart: {p:?}\n{}",
        d.log_text()
    );
    assert!(announced(&topo));

    // --fresh: withdrawn, withdraw_delay waited, the maps replaced, then
    // announced again once the new data path has warmed up.
    d.stop().unwrap();
    let started = Instant::now();
    d.restart(&topo, &["--fresh"]).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(WITHDRAW_DELAY_MS),
        "--fresh did not wait withdraw_delay"
    );
    assert!(
        d.log_text().contains("--fresh: withdrew 10.77.100.1"),
        "{}",
        d.log_text()
    );
    d.assert_up(Duration::from_secs(5));
    wait_announced(&topo, &d, true, Duration::from_secs(3));

    // unload: the route goes, then withdraw_delay later the program.
    let poller = Poller::start(&topo, link.clone());
    thread::sleep(Duration::from_millis(50));
    let out = d.unload(&topo).unwrap();
    let p = poller.finish();
    assert!(out.contains("withdrew 10.77.100.1"), "{out}");
    let (Some(route_gone), Some(link_gone)) = (p.first_missing, p.link_gone) else {
        panic!("{p:?}\n{out}");
    };
    let lead = link_gone.duration_since(route_gone);
    assert!(
        link_gone > route_gone && lead >= Duration::from_millis(WITHDRAW_DELAY_MS - 50),
        "route gone {lead:?} before the program (want withdraw_delay {WITHDRAW_DELAY_MS}ms): {p:?}"
    );
    assert!(routes(&topo, Some(PROTO)).is_empty());
}

#[test]
fn unload_without_a_daemon_withdraws_what_a_killed_one_left() {
    let (topo, pin) = topology_with_pin(1, 2, BACKEND.as_ref()).unwrap();
    let mut d = Daemon::start(&topo, STICKYLB.as_ref(), &config(&topo, &pin.0), &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    wait_announced(&topo, &d, true, Duration::from_secs(3));
    // kill -9 leaves the route, true while the program forwards.
    d.kill9();
    thread::sleep(Duration::from_millis(100));
    assert!(announced(&topo));
    let (code, out, err) = d.cli_by_config(&topo, &["unload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("withdrew 10.77.100.1 from table 200"), "{out}");
    assert!(routes(&topo, Some(PROTO)).is_empty());
    assert_eq!(Ipv4Addr::new(10, 77, 100, 1), VIP);
}

#[test]
fn a_warming_vip_is_not_announced_until_its_backends_first_checks() {
    let (topo, pin) = topology_with_pin(1, 2, BACKEND.as_ref()).unwrap();
    // The backend's host is off the wire: its first check takes the whole
    // timeout, and the VIP warms up all that while.
    topo.set_backend_link(0, false).unwrap();
    let slow = "kind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"800ms\"\nrise = 1\nfall = 1";
    let text = config(&topo, &pin.0).replace(FAST_HEALTH, slow);
    assert!(text.contains(slow));
    let d = Daemon::start(&topo, STICKYLB.as_ref(), &text, &[]).unwrap();
    let v = &d.vips().unwrap()[0];
    assert!(v.warming, "{v:?}");
    assert_eq!(v.announce.unwrap().reason, Some(NotAnnounced::WarmingUp));
    assert!(!announced(&topo));
    assert!(
        wait_for(Duration::from_secs(5), || reason(&d)
            == Some(NotAnnounced::NoAliveBackend)),
        "{:?}\n{}",
        d.vips(),
        d.log_text()
    );
    assert!(!announced(&topo));
    topo.set_backend_link(0, true).unwrap();
    wait_announced(&topo, &d, true, Duration::from_secs(5));
    let log = d.log_text();
    assert!(
        log.contains("announced 10.77.100.1 (table 200): VIP web is served, 1 alive backend(s)"),
        "{log}"
    );
}

#[test]
fn another_protocols_route_to_the_vip_is_never_replaced() {
    let (topo, pin) = topology_with_pin(1, 2, BACKEND.as_ref()).unwrap();
    let vip = format!("{VIP}/32");
    topo.lb
        .ip(&[
            "route",
            "add",
            "blackhole",
            &vip,
            "table",
            "200",
            "proto",
            "251",
        ])
        .unwrap();
    let d = Daemon::start(&topo, STICKYLB.as_ref(), &config(&topo, &pin.0), &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    assert!(
        wait_for(Duration::from_secs(3), || d
            .log_text()
            .contains("that is not stickylb's")),
        "{}",
        d.log_text()
    );
    assert_eq!(routes(&topo, None), [format!("blackhole {VIP} proto 251")]);
    assert!(!d.vips().unwrap()[0].announce.unwrap().announced);
    // Once it is gone, stickylb's own takes its place.
    topo.lb
        .ip(&["route", "del", &vip, "table", "200", "proto", "251"])
        .unwrap();
    wait_announced(&topo, &d, true, Duration::from_secs(3));
}

/// `config` with a `[sync]` whose one peer never answers (nothing listens
/// at its address): a fresh start becomes ready only after join_timeout.
fn config_with_sync(topo: &Topology, pin: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let key = topo.tmp.join("sync.key");
    std::fs::write(&key, [7u8; 44]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "{}\n[sync]\nlisten = \"{LB_ADDR}:7946\"\npeers = [\"{CLIENT_MAIN_ADDR}:7946\"]\n\
         key_file = \"{}\"\njoin_timeout = \"{}ms\"\n",
        config(topo, pin),
        key.display(),
        JOIN_TIMEOUT.as_millis()
    )
}

const JOIN_TIMEOUT: Duration = Duration::from_millis(1500);

/// The sync settings the program reads now, from its pinned map (loaded
/// beside the daemon's, which it leaves as they are).
fn sync_enabled(pin: &std::path::Path) -> bool {
    let dp = Dataplane::load(&LoadOptions {
        affinity_capacity: 65536,
        pin_dir: Some(pin.to_owned()),
    })
    .unwrap();
    dp.sync_settings().unwrap().enabled != 0
}

#[test]
fn with_sync_peers_a_restart_keeps_the_route_and_a_fresh_start_waits_for_the_join() {
    let (topo, pin) = topology_with_pin(2, 4, BACKEND.as_ref()).unwrap();
    let link = pin.0.join(LINK_PIN_NAME);
    let started = Instant::now();
    let mut d = Daemon::start(
        &topo,
        STICKYLB.as_ref(),
        &config_with_sync(&topo, &pin.0),
        &[],
    )
    .unwrap();
    d.assert_up(Duration::from_secs(5));
    // New maps: nothing is announced before the join gives up on the peer.
    wait_announced(&topo, &d, true, Duration::from_secs(6));
    assert!(
        started.elapsed() >= JOIN_TIMEOUT,
        "announced {:?} after the start, before the join timeout",
        started.elapsed()
    );
    assert!(sync_enabled(&pin.0));

    // A plain restart adopts the table: the route is never missing, not
    // even while the new run's pull from the (silent) peer is under way.
    let poller = Poller::start(&topo, link.clone());
    thread::sleep(Duration::from_millis(50));
    d.stop().unwrap();
    thread::sleep(Duration::from_millis(200));
    d.restart(&topo, &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    let ready_at_once = d.status().unwrap().sync.unwrap().ready;
    thread::sleep(JOIN_TIMEOUT + Duration::from_millis(300));
    let p = poller.finish();
    assert!(p.polls > 50, "{p:?}");
    assert_eq!(
        p.missing,
        0,
        "the route went over a restart with [sync]: {p:?}\n{}",
        d.log_text()
    );
    assert!(ready_at_once, "an adopted run is ready at once");

    // Restarted without [sync]: the program writes no more sync events
    // (its settings are pinned, so the daemon turns them off).
    d.stop().unwrap();
    std::fs::write(&d.config, config(&topo, &pin.0)).unwrap();
    d.restart(&topo, &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    d.stop().unwrap();
    assert!(!sync_enabled(&pin.0), "SLB_SYNC left on without [sync]");
}

#[test]
fn unload_withdraws_from_the_config_when_the_daemon_cannot_be_asked() {
    let (topo, pin) = topology_with_pin(2, 4, BACKEND.as_ref()).unwrap();
    let link = pin.0.join(LINK_PIN_NAME);
    let mut d = Daemon::start(&topo, STICKYLB.as_ref(), &config(&topo, &pin.0), &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    wait_announced(&topo, &d, true, Duration::from_secs(3));
    // Its control socket gone (the daemon runs on, unreachable): unload
    // cannot ask it to withdraw, and empties its [announce] table itself
    // before the program goes.
    std::fs::remove_file(&d.socket).unwrap();
    let poller = Poller::start(&topo, link.clone());
    thread::sleep(Duration::from_millis(50));
    let out = d.unload(&topo).unwrap();
    let p = poller.finish();
    assert!(out.contains("did not withdraw its VIPs"), "{out}");
    let (Some(route_gone), Some(link_gone)) = (p.first_missing, p.link_gone) else {
        panic!("{p:?}\n{out}");
    };
    assert!(
        link_gone.duration_since(route_gone) >= Duration::from_millis(WITHDRAW_DELAY_MS - 50),
        "{p:?}\n{out}"
    );
    assert!(routes(&topo, Some(PROTO)).is_empty(), "{out}");
}
