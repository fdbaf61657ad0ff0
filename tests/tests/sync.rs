//! The affinity sync for real: two `stickylb run` daemons on two LB hosts
//! sharing one backend segment, clients through node A, their pins on node
//! B with the same backend; a node restarted with `--fresh` that has A's
//! table before it is ready; a peer with a wrong key rejected, counted, and
//! its entries not applied; and with sync off nothing crosses. Needs root.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use lb_user::{
    api::{BackendState, StatusReply},
    control::{self, Request},
    lb::{LookupResult, sync::SyncEntry},
    sync::wire::{self, Hello, Key, Message, Role},
};
use stickylb_tests::{
    daemon::{PinGuard, topology_with_pin},
    netns::{ChildGuard, LB_ADDR, Netns, Topology, VIP, backend_of, http_get, wait_for},
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

const FAST_HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";
const LB2_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 201);
const SYNC_PORT: u16 = 7946;

/// A daemon in any namespace of the topology, with its own config, socket
/// and log in the topology's scratch folder.
struct Node {
    child: Option<ChildGuard>,
    ns_path: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Node {
    fn start(ns: &Netns, name: &str, tmp: &Path, config: &str, args: &[&str]) -> Self {
        let path = tmp.join(format!("{name}.toml"));
        fs::write(&path, config).unwrap();
        let mut n = Self {
            child: None,
            ns_path: ns.path(),
            config: path,
            socket: tmp.join(format!("{name}.sock")),
            log: tmp.join(format!("{name}.log")),
        };
        n.run(args);
        n
    }

    fn run(&mut self, args: &[&str]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path.display()))
            .arg("--")
            .arg(STICKYLB)
            .arg("run")
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(ChildGuard(child));
        let sock = self.socket.clone();
        let up = wait_for(Duration::from_secs(15), || {
            self.child.as_mut().and_then(ChildGuard::exited).is_some()
                || control::call(&sock, &Request::Status).is_ok()
        });
        assert!(
            up && self.child.as_mut().and_then(ChildGuard::exited).is_none(),
            "daemon {} did not come up; log:\n{}",
            self.config.display(),
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status(&self) -> StatusReply {
        let v = control::call(&self.socket, &Request::Status).unwrap();
        serde_json::from_value(v).unwrap()
    }

    /// Client `c`'s pin here: its backend, or None when it has no
    /// affinity entry (the Maglev pick does not count).
    fn pinned(&self, c: Ipv4Addr) -> Option<SocketAddrV4> {
        let v = control::call(
            &self.socket,
            &Request::Lookup {
                client: c.into(),
                vip: None,
            },
        )
        .unwrap();
        let r: Vec<LookupResult> = serde_json::from_value(v).unwrap();
        r.first()
            .filter(|r| r.affinity_age_ms.is_some())
            .and_then(|r| r.backend)
    }

    fn assert_up(&self) {
        let ok = wait_for(Duration::from_secs(10), || {
            self.status()
                .vips
                .iter()
                .flat_map(|v| &v.backends)
                .all(|b| b.state == BackendState::Up)
        });
        assert!(
            ok,
            "backends not up: {:?}\n{}",
            self.status().vips,
            self.log_text()
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.signal(libc::SIGTERM);
            assert!(
                wait_for(Duration::from_secs(10), || c.exited().is_some()),
                "no exit on SIGTERM"
            );
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.config.display(), self.log_text());
        }
    }
}

fn write_key(tmp: &Path, name: &str, byte: u8) -> PathBuf {
    let path = tmp.join(name);
    fs::write(&path, [byte; 44]).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `topo.config` for a node with its own pin folder and socket, plus `tail`.
fn node_config(topo: &Topology, pin: &Path, socket: &Path, xdp_mode: &str, tail: &str) -> String {
    topo.config(
        pin,
        FAST_HEALTH,
        "affinity_timeout = \"120s\"\ntable_size = 1021",
    )
    .replace(
        &format!("control_socket = \"{}\"", topo.control_socket().display()),
        &format!("control_socket = \"{}\"", socket.display()),
    )
    .replace(
        "xdp_mode = \"driver\"",
        &format!("xdp_mode = \"{xdp_mode}\""),
    ) + tail
}

fn sync_section(listen: Ipv4Addr, peer: Ipv4Addr, key: &Path, extra: &str) -> String {
    format!(
        "\n[sync]\nlisten = \"{listen}:{SYNC_PORT}\"\npeers = [\"{peer}:{SYNC_PORT}\"]\n\
         key_file = \"{}\"\njoin_timeout = \"2s\"\n{extra}\n",
        key.display()
    )
}

/// One request from each client through node A, one at a time (a pause
/// between, so that A's one-entry queue for B never holds two): who
/// answered each.
fn pin_through_a(topo: &Topology, clients: &[Ipv4Addr]) -> Vec<SocketAddrV4> {
    let clients = clients.to_vec();
    let answered: Vec<Option<usize>> = topo.client.enter(move || {
        clients
            .iter()
            .map(|&c| {
                let a = http_get(
                    c,
                    SocketAddrV4::new(VIP, 80),
                    "/",
                    None,
                    Duration::from_secs(3),
                );
                thread::sleep(Duration::from_millis(30));
                a.ok().as_ref().and_then(backend_of)
            })
            .collect()
    });
    answered
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let b = b.unwrap_or_else(|| panic!("client {i} unanswered"));
            SocketAddrV4::new(stickylb_tests::netns::backend_addr(b), 80)
        })
        .collect()
}

#[test]
fn pins_cross_to_the_peer_a_fresh_node_pulls_them_and_a_forged_peer_is_refused() {
    let started = Instant::now();
    let (mut topo, pin_a) = topology_with_pin(3, 40, BACKEND.as_ref()).unwrap();
    let pin_b = PinGuard(PathBuf::from(format!("/sys/fs/bpf/{}-b", topo.id)));
    topo.add_host("lb2", LB2_ADDR).unwrap();
    let key = write_key(&topo.tmp, "sync.key", b'k');
    // A keeps one entry per peer at most: what B has after a restart it can
    // only have from A's table, not from A's queue.
    let a_cfg = node_config(
        &topo,
        &pin_a.0,
        &topo.tmp.join("a.sock"),
        "driver",
        &sync_section(
            LB_ADDR,
            LB2_ADDR,
            &key,
            "max_queue = 1\nbatch = 1\nflush_interval = \"1ms\"",
        ),
    );
    let b_cfg = node_config(
        &topo,
        &pin_b.0,
        &topo.tmp.join("b.sock"),
        "skb",
        &sync_section(LB2_ADDR, LB_ADDR, &key, ""),
    );
    let a = Node::start(&topo.lb, "a", &topo.tmp, &a_cfg, &[]);
    a.assert_up();
    // No peer answers: A is the first node, ready alone after join_timeout.
    assert!(
        wait_for(Duration::from_secs(10), || a
            .status()
            .sync
            .is_some_and(|s| s.ready)),
        "A not ready alone: {:?}",
        a.status().sync
    );
    assert_eq!(a.status().sync.unwrap().joined_from, None);

    let mut b = Node::start(&topo.hosts[0], "b", &topo.tmp, &b_cfg, &["--fresh"]);
    b.assert_up();
    assert!(
        wait_for(Duration::from_secs(10), || b
            .status()
            .sync
            .is_some_and(|s| s.ready)),
        "B did not join: {:?}",
        b.status().sync
    );
    let a_peer = SocketAddrV4::new(LB_ADDR, SYNC_PORT);
    assert_eq!(b.status().sync.unwrap().joined_from, Some(a_peer));
    assert!(
        wait_for(Duration::from_secs(10), || {
            a.status().sync.unwrap().peers[0].state == lb_user::api::PeerState::Up
        }),
        "A's connection to B: {:?}",
        a.status().sync
    );

    // Clients pinned through A show up on B with the same backend.
    let first: Vec<Ipv4Addr> = topo.clients[..20].to_vec();
    let backends = pin_through_a(&topo, &first);
    for (c, want) in first.iter().zip(&backends) {
        assert_eq!(a.pinned(*c), Some(*want), "A's own pin of {c}");
    }
    let crossed = wait_for(Duration::from_secs(5), || {
        first
            .iter()
            .zip(&backends)
            .all(|(c, want)| b.pinned(*c) == Some(*want))
    });
    let on_b: Vec<_> = first.iter().map(|c| b.pinned(*c)).collect();
    assert!(crossed, "B's pins {on_b:?}, A's {backends:?}");
    let sb = b.status().sync.unwrap();
    assert!(sb.peers[0].applied >= 20, "{sb:?}");
    assert!(sb.peers[0].lag_p99_ms.is_some(), "{sb:?}");
    println!(
        "sync lag on B: p50 {:?} ms, p99 {:?} ms over {} entries",
        sb.peers[0].lag_p50_ms, sb.peers[0].lag_p99_ms, sb.peers[0].lag_count
    );
    let (_, text, _) = cli(&b.socket, &["status"]);
    assert!(
        text.contains(&format!(
            "sync on {LB2_ADDR}:{SYNC_PORT}: ready (joined with the table of {a_peer})"
        )) && text.contains(&format!("peer {a_peer} up")),
        "{text}"
    );

    // B goes down; more clients are pinned through A meanwhile (A's queue
    // for B keeps one of them). B restarted with --fresh has every pin
    // before it says it is ready.
    b.stop();
    let later: Vec<Ipv4Addr> = topo.clients[20..40].to_vec();
    let later_backends = pin_through_a(&topo, &later);
    let dropped = a.status().sync.unwrap().peers[0].dropped;
    // At most 20 − dropped of them could reach B from the queue; the rest
    // must come with A's table.
    assert!(
        dropped >= 15,
        "A's queue for B dropped only {dropped}: B could get them from it"
    );
    b.run(&["--fresh"]);
    assert!(
        wait_for(Duration::from_secs(15), || b
            .status()
            .sync
            .is_some_and(|s| s.ready)),
        "B did not join again: {:?}",
        b.status().sync
    );
    for (c, want) in first
        .iter()
        .chain(&later)
        .zip(backends.iter().chain(&later_backends))
    {
        assert_eq!(b.pinned(*c), Some(*want), "{c} on B once ready");
    }

    // A peer without the key: refused at the handshake, counted, and the
    // pin it tries to send is not applied.
    let rejected_before = handshake_rejections(&a);
    let forged_client = Ipv4Addr::new(10, 77, 200, 1);
    let forged = SyncEntry {
        vip: lb_common::VipKey::new(VIP, 80, lb_common::proto::TCP),
        client: forged_client,
        backend: SocketAddrV4::new(stickylb_tests::netns::backend_addr(2), 80),
        pinned_ms: u64::MAX / 2,
        idle_ms: 0,
    };
    topo.hosts[0].enter(move || forge(SocketAddrV4::new(LB_ADDR, SYNC_PORT), forged));
    assert!(
        wait_for(Duration::from_secs(5), || handshake_rejections(&a)
            > rejected_before),
        "A did not count the forged peer: {:?}",
        a.status().sync
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(a.pinned(forged_client), None, "a forged entry was applied");
    let (_, text, _) = cli(&a.socket, &["status"]);
    assert!(
        text.contains("connections rejected:") && text.contains("handshake"),
        "{text}"
    );
    println!("sync test took {:?}", started.elapsed());
}

fn handshake_rejections(n: &Node) -> u64 {
    n.status()
        .sync
        .and_then(|s| s.rejected.get("handshake").copied())
        .unwrap_or(0)
}

/// A peer with the wrong key: claims to be B, answers A's hello with a proof
/// of another key, then sends a batch sealed with that key's session.
fn forge(to: SocketAddrV4, entry: SyncEntry) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&to.into(), Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let wrong = Key::new(vec![b'x'; 44]).unwrap();
    let mine = Hello::new(SocketAddrV4::new(LB2_ADDR, SYNC_PORT)).unwrap();
    s.write_all(&mine.encode()).unwrap();
    let mut reply = [0; wire::HELLO_LEN + wire::MAC_LEN];
    s.read_exact(&mut reply).unwrap();
    let theirs = Hello::decode(reply[..wire::HELLO_LEN].try_into().unwrap()).unwrap();
    let _ = s.write_all(&wire::proof(&wrong, Role::Client, &mine, &theirs));
    let (mut seal, _) = wire::session_keys(&wrong, &mine, &theirs);
    let _ = s.write_all(&seal.seal(&Message::Batch {
        sent_ms: 0,
        entries: vec![entry],
    }));
    // A closes the connection: nothing more is read from it.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

fn cli(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(STICKYLB)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn with_sync_off_nothing_crosses() {
    let (mut topo, pin_a) = topology_with_pin(2, 10, BACKEND.as_ref()).unwrap();
    let pin_b = PinGuard(PathBuf::from(format!("/sys/fs/bpf/{}-b", topo.id)));
    topo.add_host("lb2", LB2_ADDR).unwrap();
    let a_cfg = node_config(&topo, &pin_a.0, &topo.tmp.join("a.sock"), "driver", "");
    let b_cfg = node_config(&topo, &pin_b.0, &topo.tmp.join("b.sock"), "skb", "");
    let a = Node::start(&topo.lb, "a", &topo.tmp, &a_cfg, &[]);
    let b = Node::start(&topo.hosts[0], "b", &topo.tmp, &b_cfg, &["--fresh"]);
    a.assert_up();
    b.assert_up();
    assert_eq!(a.status().sync, None, "no [sync], no sync status");
    let clients = topo.clients.clone();
    let backends = pin_through_a(&topo, &clients);
    for (c, want) in clients.iter().zip(&backends) {
        assert_eq!(a.pinned(*c), Some(*want));
    }
    thread::sleep(Duration::from_secs(1));
    for c in &clients {
        assert_eq!(b.pinned(*c), None, "{c} crossed without sync");
    }
}
