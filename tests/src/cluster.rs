//! The multi-node test bed: clients behind a router that spreads their
//! connections over N stickylb nodes by ECMP, the routes learned over BGP
//! from a real BIRD 2 on every node, the nodes and the backends sharing one
//! L2 segment (XDP DSR rewrites only MACs).
//!
//! ```text
//!   <id>-cl eth0 10.78.0.2, clients 10.78.1.x/16 (TX checksum offload off)
//!      |
//!   <id>-rt eth-cl 10.78.0.1 | eth0 10.77.0.254   BIRD (router.conf), ip_forward,
//!      |                                          fib_multipath_hash_policy=1
//!   <id>-br br0 ---------+-------------+------------+----------+--- ...
//!      p-rt            p-n0 (XDP_PASS) p-n1 ...   p-b0       p-b1
//!                      |               |          |          |
//!                <id>-n0 eth0       <id>-n1    <id>-b0    <id>-b1
//!                10.77.0.1          10.77.0.2  10.77.0.10 10.77.0.11 ...
//!                stickylb XDP, BIRD (lb-node.conf)  lo: VIP, default via router
//! ```
//!
//! The BIRD configurations are docs/bird/*.conf, compiled in and run with
//! their `@...@` values substituted, so what operators read is what is
//! tested. Every BIRD runs in the foreground (a child the harness owns)
//! with its own config, control socket and pid file in the scratch folder.
//!
//! As with `Topology`, guards own everything: dropping the `Cluster` (also
//! on a panic) kills daemons and BIRDs, removes pins and deletes the
//! namespaces, and a `Reaper` does the same if this process dies first.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use lb_user::{
    api::{BackendState, StatusReply},
    control::{self, Request},
    dataplane::{Dataplane, LINK_PIN_NAME},
    runtime::{RECORD_DIR, Record},
};

use crate::{
    daemon::{Daemon, PinGuard},
    netns::{
        ChildGuard, KeptTopology, Netns, Reaper, Result, add_bridge, attach_peer_xdp, backend_addr,
        client_addrs, daemon_config, plug_into_bridge, sh, start_backend_server, vip_on_loopback,
        wait_for,
    },
};

/// The LB node's BIRD configuration operators run (docs/bird/lb-node.conf).
pub const LB_NODE_CONF: &str = include_str!("../../docs/bird/lb-node.conf");
/// The router's BIRD configuration (docs/bird/router.conf).
pub const ROUTER_CONF: &str = include_str!("../../docs/bird/router.conf");

/// Kernel table the VIP routes of a node live in (`[announce] table`).
pub const ANNOUNCE_TABLE: u32 = 200;
/// Route protocol number of those routes (`[announce] protocol`); BIRD
/// exports only routes carrying it.
pub const ANNOUNCE_PROTOCOL: u8 = 250;
pub const ROUTER_AS: u32 = 65000;
/// Every node's AS (the router peers with any node of `NODE_RANGE`).
pub const NODE_AS: u32 = 65001;

/// The VIP: outside every connected network, so only a BGP route reaches it.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 1);
/// What the router accepts from nodes: /32s of this range only.
pub const VIP_PREFIX: &str = "10.90.0.0/24";
/// The router on the LB segment (BGP peer of every node, backends' gateway).
pub const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
/// The router on the clients' side (their gateway).
pub const ROUTER_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
pub const CLIENT_MAIN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
/// The LB segment (router, nodes, backends) and the range nodes peer from.
pub const SEGMENT_PREFIX: u8 = 16;
pub const NODE_RANGE: &str = "10.77.0.0/24";

/// Node `i`'s address on the segment (its BGP next hop), for i < 9.
pub fn node_addr(i: usize) -> Ipv4Addr {
    assert!(i < 9, "node addresses 10.77.0.1-9 (backends start at .10)");
    Ipv4Addr::new(10, 77, 0, 1 + i as u8)
}

/// Client address number `i` (up to 64k), on the clients' side.
pub fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// Substitutes `@KEY@` placeholders in a BIRD template; fails if one is
/// left (the shipped file grew a value the harness does not fill).
pub fn bird_config(template: &str, values: &[(&str, String)]) -> Result<String> {
    let mut text = template.to_owned();
    for (k, v) in values {
        text = text.replace(&format!("@{k}@"), v);
    }
    let left: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('@'))
        .collect();
    if !left.is_empty() {
        return Err(format!("BIRD config placeholders left: {left:?}"));
    }
    Ok(text)
}

/// Node `i`'s BIRD configuration.
pub fn lb_node_config(i: usize) -> Result<String> {
    bird_config(
        LB_NODE_CONF,
        &[
            ("NODE_ADDR", node_addr(i).to_string()),
            ("NODE_AS", NODE_AS.to_string()),
            ("ROUTER_ADDR", ROUTER_ADDR.to_string()),
            ("ROUTER_AS", ROUTER_AS.to_string()),
            ("TABLE", ANNOUNCE_TABLE.to_string()),
            ("PROTO", ANNOUNCE_PROTOCOL.to_string()),
        ],
    )
}

/// The router's BIRD configuration.
pub fn router_config() -> Result<String> {
    bird_config(
        ROUTER_CONF,
        &[
            ("ROUTER_ADDR", ROUTER_ADDR.to_string()),
            ("ROUTER_AS", ROUTER_AS.to_string()),
            ("NODE_AS", NODE_AS.to_string()),
            ("NODE_RANGE", NODE_RANGE.into()),
            ("VIP_PREFIX", VIP_PREFIX.into()),
        ],
    )
}

/// The `[announce]` section of a node's daemon config matching the BIRD
/// configuration (for daemons that announce their VIPs themselves).
pub fn announce_section() -> String {
    format!("\n[announce]\ntable = {ANNOUNCE_TABLE}\nprotocol = {ANNOUNCE_PROTOCOL}\n")
}

/// Port every node's affinity sync listens on (`[sync] listen`).
pub const SYNC_PORT: u16 = 7946;

/// Health checks quick enough for scenarios that kill backends: down
/// after 2 failed checks 200 ms apart, up after 2 good ones.
pub const FAST_HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2";

/// One BIRD instance: its files, and the process (in the foreground, so
/// killing the child kills BIRD).
pub struct Bird {
    pub child: Option<ChildGuard>,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub pid_file: PathBuf,
    pub log: PathBuf,
}

impl Bird {
    /// Writes `config` (with a log file prepended) into `dir`; not started.
    fn new(dir: &Path, config: &str) -> Result<Self> {
        let b = Self {
            child: None,
            config: dir.join("bird.conf"),
            socket: dir.join("bird.ctl"),
            pid_file: dir.join("bird.pid"),
            log: dir.join("bird.log"),
        };
        // Only the log line is the harness's own: the rest is the doc.
        let text = format!(
            "log \"{}\" {{ info, remote, warning, error, auth, fatal, bug }};\n{config}",
            b.log.display()
        );
        fs::write(&b.config, text).map_err(|e| e.to_string())?;
        Ok(b)
    }

    /// Starts BIRD in `ns`; returns once its control socket answers.
    pub fn start(&mut self, ns: &Netns) -> Result<()> {
        self.child = None;
        let _ = fs::remove_file(&self.socket);
        let mut child = ChildGuard(
            ns.command("bird")
                .arg("-f")
                .arg("-c")
                .arg(&self.config)
                .arg("-s")
                .arg(&self.socket)
                .arg("-P")
                .arg(&self.pid_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(
                    fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.log)
                        .map_err(|e| e.to_string())?,
                )
                .spawn()
                .map_err(|e| format!("start bird: {e}"))?,
        );
        let mut exited = None;
        let ok = crate::netns::wait_for(Duration::from_secs(5), || {
            exited = child.exited();
            exited.is_some() || self.birdc(&["show", "status"]).is_ok()
        });
        if !ok || exited.is_some() {
            return Err(format!(
                "bird did not come up ({exited:?}); log:\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            ));
        }
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: the process dies, the kernel closes its BGP sessions.
    pub fn kill9(&mut self) {
        self.child = None;
    }

    /// SIGTERM: BIRD closes its sessions cleanly and exits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.signal(libc::SIGTERM);
            crate::netns::wait_for(Duration::from_secs(5), || c.exited().is_some());
        }
    }

    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.exited().is_none())
    }

    /// `birdc -s SOCKET <args>`: its output.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        sh(Command::new("birdc").arg("-s").arg(&self.socket).args(args))
    }

    /// Names of the BGP protocols in state Established.
    pub fn established(&self) -> Result<Vec<String>> {
        Ok(self
            .birdc(&["show", "protocols"])?
            .lines()
            .filter(|l| l.contains(" BGP ") && l.contains("Established"))
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }
}

/// One LB node. Field order is drop order: daemon and BIRD, then the pins,
/// then the namespace.
pub struct Node {
    pub daemon: Option<Daemon>,
    pub bird: Bird,
    pub pin: PinGuard,
    pub ns: Netns,
    pub index: usize,
    /// Its scratch folder: daemon config, log and socket, BIRD's files.
    pub dir: PathBuf,
}

impl Node {
    pub fn addr(&self) -> Ipv4Addr {
        node_addr(self.index)
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }

    /// The running daemon; panics if none was started.
    #[track_caller]
    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the node's daemon was started")
    }
}

/// Whether the announce table of namespace `ns` holds the VIP's route of
/// stickylb's protocol; by namespace name, for a thread that has no
/// `Cluster` (`Cluster::node_announces` for a node).
pub fn announces_in(ns: &str) -> Result<bool> {
    let text = sh(Command::new("ip").args([
        "-n",
        ns,
        "route",
        "show",
        "table",
        &ANNOUNCE_TABLE.to_string(),
        "proto",
        &ANNOUNCE_PROTOCOL.to_string(),
    ]))?;
    Ok(text
        .split_whitespace()
        .any(|w| w == VIP.to_string() || w == format!("{VIP}/32")))
}

pub struct ClusterOptions {
    pub nodes: usize,
    pub backends: usize,
    pub clients: usize,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The whole multi-node network. Field order is drop order: processes
/// (nodes' daemons and BIRDs, the router's BIRD, servers), then the
/// namespaces; `Drop` first detaches the bridge ports' XDP programs.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub router_bird: Bird,
    pub servers: Vec<Option<ChildGuard>>,
    pub id: String,
    pub client: Netns,
    pub router: Netns,
    pub backends: Vec<Netns>,
    pub bridge: Netns,
    /// Pin folders of the XDP_PASS programs on the nodes' bridge ports.
    pub peer_pins: Vec<PathBuf>,
    pub clients: Vec<Ipv4Addr>,
    pub server_bin: PathBuf,
    pub tmp: PathBuf,
    reaper: Option<Reaper>,
}

/// Paths of cluster `id` outside its namespaces.
fn peer_pin(id: &str, i: usize) -> PathBuf {
    Path::new("/sys/fs/bpf").join(format!("{id}-peer-n{i}"))
}

/// Where node `i`'s daemon pins its maps and link.
fn node_pin(id: &str, i: usize) -> PathBuf {
    Path::new("/sys/fs/bpf").join(format!("{id}-n{i}"))
}

impl Cluster {
    /// Builds the network, starts the backends' servers, the router's BIRD
    /// and every node's BIRD, and waits until each node has a BGP session
    /// with the router. No daemon runs yet (`start_daemon`) and nothing is
    /// announced.
    pub fn up(opts: &ClusterOptions, server_bin: &Path) -> Result<Self> {
        crate::require_root();
        let id = format!(
            "slc{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let tmp = std::env::temp_dir().join(&id);
        let mut paths: Vec<PathBuf> = vec![tmp.clone()];
        for i in 0..opts.nodes {
            paths.push(peer_pin(&id, i));
            paths.push(node_pin(&id, i));
            paths.push(Record::path_in(Path::new(RECORD_DIR), &node_pin(&id, i)));
        }
        let reaper = Reaper::spawn(&id, &paths.iter().map(PathBuf::as_path).collect::<Vec<_>>())?;
        fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        let bridge = Netns::new(&format!("{id}-br"))?;
        let client = Netns::new(&format!("{id}-cl"))?;
        let router = Netns::new(&format!("{id}-rt"))?;
        let mut backends = Vec::new();
        for i in 0..opts.backends {
            backends.push(Netns::new(&format!("{id}-b{i}"))?);
        }
        let router_dir = tmp.join("rt");
        fs::create_dir_all(&router_dir).map_err(|e| e.to_string())?;
        let mut nodes = Vec::new();
        for i in 0..opts.nodes {
            let dir = tmp.join(format!("n{i}"));
            fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            nodes.push(Node {
                daemon: None,
                bird: Bird::new(&dir, &lb_node_config(i)?)?,
                pin: PinGuard(node_pin(&id, i)),
                ns: Netns::new(&format!("{id}-n{i}"))?,
                index: i,
                dir,
            });
        }
        let mut c = Self {
            nodes,
            router_bird: Bird::new(&router_dir, &router_config()?)?,
            servers: Vec::new(),
            peer_pins: (0..opts.nodes).map(|i| peer_pin(&id, i)).collect(),
            id,
            client,
            router,
            backends,
            bridge,
            clients: (0..opts.clients).map(client_addr).collect(),
            server_bin: server_bin.to_owned(),
            tmp,
            reaper: Some(reaper),
        };
        c.wire()?;
        for i in 0..opts.backends {
            c.servers.push(None);
            c.start_server(i)?;
        }
        c.router_bird.start(&c.router)?;
        for n in &mut c.nodes {
            n.bird.start(&n.ns)?;
        }
        c.wait_sessions(opts.nodes, Duration::from_secs(15))?;
        Ok(c)
    }

    fn wire(&mut self) -> Result<()> {
        let cidr = |a: Ipv4Addr, p: u8| format!("{a}/{p}");
        add_bridge(&self.bridge)?;
        plug_into_bridge(&self.bridge, &self.router, "p-rt")?;
        for n in &self.nodes {
            plug_into_bridge(&self.bridge, &n.ns, &format!("p-n{}", n.index))?;
        }
        for (i, b) in self.backends.iter().enumerate() {
            plug_into_bridge(&self.bridge, b, &format!("p-b{i}"))?;
        }
        // Router: the clients' link, forwarding, L4 multipath hashing (per
        // namespace: set here, not in the root namespace).
        self.router.add_veth("eth-cl", &self.client, "eth0")?;
        self.router.ip(&["link", "set", "eth-cl", "up"])?;
        self.client.ip(&["link", "set", "eth0", "up"])?;
        self.router.ip(&[
            "addr",
            "add",
            &cidr(ROUTER_CLIENT_ADDR, 16),
            "dev",
            "eth-cl",
        ])?;
        self.router.ip(&[
            "addr",
            "add",
            &cidr(ROUTER_ADDR, SEGMENT_PREFIX),
            "dev",
            "eth0",
        ])?;
        self.router.sysctl("net.ipv4.ip_forward", "1")?;
        self.router
            .sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        // Nodes: their own address; the VIP is not local to them (their XDP
        // program takes the frames the router sends to their MAC).
        for n in &self.nodes {
            n.ns.ip(&[
                "addr",
                "add",
                &cidr(n.addr(), SEGMENT_PREFIX),
                "dev",
                "eth0",
            ])?;
        }
        // Backends: the VIP on loopback, never answering ARP for it; replies
        // go straight back through the router (DSR).
        for (i, b) in self.backends.iter().enumerate() {
            b.ip(&[
                "addr",
                "add",
                &cidr(backend_addr(i), SEGMENT_PREFIX),
                "dev",
                "eth0",
            ])?;
            vip_on_loopback(b, VIP)?;
            b.ip(&["route", "add", "default", "via", &ROUTER_ADDR.to_string()])?;
        }
        // Clients: many source addresses, the router as gateway; as in
        // `Topology`, their TCP checksums computed before the wire.
        client_addrs(
            &self.client,
            CLIENT_MAIN_ADDR,
            &self.clients,
            &[format!("route add default via {ROUTER_CLIENT_ADDR}")],
        )?;
        // stickylb's program with no VIP on every node's bridge port.
        attach_peer_xdp(
            &self.bridge,
            self.peer_pins
                .iter()
                .enumerate()
                .map(|(i, pin)| (format!("p-n{i}"), pin.clone()))
                .collect(),
        )
    }

    /// Starts (or restarts) backend `i`'s HTTP server; waits until it listens.
    pub fn start_server(&mut self, i: usize) -> Result<()> {
        self.servers[i] = None;
        self.servers[i] = Some(start_backend_server(
            &self.backends[i],
            &self.server_bin,
            &self.tmp,
            i,
            None,
        )?);
        Ok(())
    }

    /// Kills backend `i`'s server.
    pub fn kill_server(&mut self, i: usize) {
        self.servers[i] = None;
    }

    /// Takes backend `i`'s link down or up.
    pub fn set_backend_link(&self, i: usize, up: bool) -> Result<()> {
        self.backends[i]
            .ip(&["link", "set", "eth0", if up { "up" } else { "down" }])
            .map(|_| ())
    }

    /// Node `node`'s daemon config; `extra_vip` goes into the `[[vip]]`
    /// table, `extra` at the end (further sections: `announce_section()`,
    /// `[sync]`).
    pub fn config(&self, node: usize, health: &str, extra_vip: &str, extra: &str) -> String {
        let n = &self.nodes[node];
        daemon_config(
            &n.pin.0,
            &n.control_socket(),
            VIP,
            self.backends.len(),
            health,
            extra_vip,
        ) + extra
    }

    /// The cluster's shared sync key (`[sync] key_file`): written once into
    /// the scratch folder, mode 0600 as the daemon demands.
    pub fn sync_key_file(&self) -> Result<PathBuf> {
        let path = self.tmp.join("sync.key");
        if !path.exists() {
            let mut key = [0u8; 32];
            // SAFETY: getrandom writes at most `len` bytes into the buffer.
            let n = unsafe { libc::getrandom(key.as_mut_ptr().cast(), key.len(), 0) };
            if n != key.len() as isize {
                return Err("getrandom failed".into());
            }
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            fs::write(&path, hex).map_err(|e| e.to_string())?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
        }
        Ok(path)
    }

    /// Node `node`'s `[sync]` section: listening on its own address, every
    /// other node a peer, the cluster's key. A short join timeout: the
    /// first node up has no one to pull a table from.
    pub fn sync_section(&self, node: usize) -> Result<String> {
        let peers: Vec<String> = (0..self.nodes.len())
            .filter(|&i| i != node)
            .map(|i| format!("\"{}\"", SocketAddrV4::new(node_addr(i), SYNC_PORT)))
            .collect();
        Ok(format!(
            "\n[sync]\nlisten = \"{}\"\npeers = [{}]\nkey_file = \"{}\"\njoin_timeout = \"2s\"\n",
            SocketAddrV4::new(node_addr(node), SYNC_PORT),
            peers.join(", "),
            self.sync_key_file()?.display()
        ))
    }

    /// `config` of a node that announces its VIP itself (`[announce]`)
    /// and, with `sync`, syncs its affinity table with every other node.
    pub fn node_config(
        &self,
        node: usize,
        health: &str,
        extra_vip: &str,
        sync: bool,
    ) -> Result<String> {
        let mut extra = announce_section();
        if sync {
            extra += &self.sync_section(node)?;
        }
        Ok(self.config(node, health, extra_vip, &extra))
    }

    /// Starts every node's daemon with `node_config(.., sync)`, waits until
    /// each has all backends up and, with sync, has joined, and until the
    /// router forwards the VIP to every node (their own announcements).
    pub fn start_announcing(
        &mut self,
        bin: &Path,
        health: &str,
        extra_vip: &str,
        sync: bool,
    ) -> Result<Duration> {
        for i in 0..self.nodes.len() {
            let config = self.node_config(i, health, extra_vip, sync)?;
            self.start_daemon(i, bin, &config, &[])?;
        }
        for i in 0..self.nodes.len() {
            let d = self.daemon(i);
            if !d.wait_backends(Duration::from_secs(10), |s, _| s == BackendState::Up) {
                return Err(format!(
                    "node {i}: backends not up: {:?}\n{}",
                    d.vips(),
                    d.log_text()
                ));
            }
            if sync && !self.wait_sync_ready(i, Duration::from_secs(10)) {
                return Err(format!(
                    "node {i}: sync not ready: {:?}\n{}",
                    d.status().map(|s| s.sync),
                    d.log_text()
                ));
            }
        }
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_routed(&all, Duration::from_secs(10))
    }

    /// Node `i`'s status straight from its control socket (also while a
    /// `start_daemon`/`restart_daemon` of it is still waiting).
    pub fn node_status(&self, i: usize) -> Result<StatusReply> {
        let v = control::call(&self.nodes[i].control_socket(), &Request::Status)
            .map_err(|e| format!("{e:#}"))?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    /// Whether node `i`'s sync says it is ready (false without `[sync]`).
    pub fn sync_ready(&self, i: usize) -> bool {
        self.node_status(i)
            .is_ok_and(|s| s.sync.is_some_and(|s| s.ready))
    }

    pub fn wait_sync_ready(&self, i: usize, timeout: Duration) -> bool {
        wait_for(timeout, || self.sync_ready(i))
    }

    /// Whether node `i`'s table holds the VIP's route of stickylb's
    /// protocol (announced by its daemon, or put there by `add_vip_route`).
    pub fn node_announces(&self, i: usize) -> Result<bool> {
        announces_in(&self.nodes[i].ns.name)
    }

    /// Waits until backend `b`'s state on node `i` satisfies `pred`.
    pub fn wait_backend_state(
        &self,
        i: usize,
        b: usize,
        timeout: Duration,
        pred: impl Fn(BackendState) -> bool,
    ) -> bool {
        let addr = SocketAddrV4::new(backend_addr(b), 80);
        wait_for(timeout, || {
            self.node_status(i).is_ok_and(|s| {
                s.vips
                    .iter()
                    .flat_map(|v| &v.backends)
                    .filter(|x| x.address == addr)
                    .all(|x| pred(x.state))
            })
        })
    }

    /// Node `i`'s `lookup` of `client` on the VIP: the backend it names
    /// (by index) and whether that comes from an affinity entry (true) or
    /// from the Maglev table (false).
    pub fn lookup(&self, i: usize, client: Ipv4Addr) -> Result<(Option<usize>, bool)> {
        let v = self.daemon(i).call(&Request::Lookup {
            client: client.into(),
            vip: Some("web".into()),
        })?;
        let r: Vec<lb_user::api::LookupResult> =
            serde_json::from_value(v).map_err(|e| e.to_string())?;
        let r = r.first().ok_or("empty lookup reply")?;
        let backend = match r.backend {
            None => None,
            Some(a) => Some(
                (0..self.backends.len())
                    .find(|&k| backend_addr(k) == *a.ip())
                    .ok_or_else(|| format!("lookup names an unknown backend {a}"))?,
            ),
        };
        Ok((backend, r.affinity_age_ms.is_some()))
    }

    /// `stickylb maintenance on|off` on node `i` (withdraw or announce
    /// again; it keeps forwarding what arrives).
    pub fn set_maintenance(&self, i: usize, on: bool) -> Result<()> {
        let (code, out, err) = self
            .daemon(i)
            .cli(&["maintenance", if on { "on" } else { "off" }]);
        if code != 0 {
            return Err(format!("maintenance on node {i}: {out}{err}"));
        }
        Ok(())
    }

    /// Node `i` can (`false`) or cannot (`true`) reach the backends from
    /// its own stack: blackhole routes to their addresses in its
    /// namespace. Its health checks then fail, while its XDP program,
    /// which forwards by MAC and never consults a route, is untouched.
    pub fn set_backends_blackholed(&self, i: usize, blackholed: bool) -> Result<()> {
        let cmds: Vec<String> = (0..self.backends.len())
            .map(|b| {
                format!(
                    "route {} blackhole {}/32",
                    if blackholed { "add" } else { "del" },
                    backend_addr(b)
                )
            })
            .collect();
        self.nodes[i].ns.ip_batch(&cmds).map(|_| ())
    }

    /// Node `i` vanishes as in a power loss: its link down first (it falls
    /// silent: no FIN of a dying BIRD reaches the router, BFD has to notice),
    /// then its daemon and BIRD killed (kill -9).
    pub fn vanish_node(&mut self, i: usize) -> Result<()> {
        self.set_node_link(i, false)?;
        self.kill_node(i);
        Ok(())
    }

    /// Starts `stickylb run` on node `i` with `config_text` (see `config`);
    /// returns once its control socket answers.
    pub fn start_daemon(
        &mut self,
        i: usize,
        bin: &Path,
        config_text: &str,
        args: &[&str],
    ) -> Result<()> {
        let n = &mut self.nodes[i];
        n.daemon = None;
        n.daemon = Some(Daemon::start_in(
            &n.ns,
            &n.dir,
            n.control_socket(),
            bin,
            config_text,
            args,
        )?);
        Ok(())
    }

    /// Starts node `i`'s daemon again with the config it last ran with.
    pub fn restart_daemon(&mut self, i: usize, args: &[&str]) -> Result<()> {
        let n = &mut self.nodes[i];
        let d = n
            .daemon
            .as_mut()
            .ok_or("no daemon was started on the node")?;
        d.restart_in(&n.ns, args)
    }

    /// Node `i`'s daemon.
    #[track_caller]
    pub fn daemon(&self, i: usize) -> &Daemon {
        self.nodes[i].daemon()
    }

    /// SIGKILL to node `i`'s daemon (its pinned program keeps forwarding).
    pub fn kill9_daemon(&mut self, i: usize) {
        if let Some(d) = self.nodes[i].daemon.as_mut() {
            d.kill9();
        }
    }

    /// SIGTERM to node `i`'s daemon; waits for its clean exit.
    pub fn stop_daemon(&mut self, i: usize) -> Result<()> {
        match self.nodes[i].daemon.as_mut() {
            Some(d) => d.stop(),
            None => Ok(()),
        }
    }

    pub fn start_bird(&mut self, i: usize) -> Result<()> {
        let n = &mut self.nodes[i];
        n.bird.start(&n.ns)
    }

    /// SIGKILL to node `i`'s BIRD.
    pub fn kill9_bird(&mut self, i: usize) {
        self.nodes[i].bird.kill9();
    }

    /// SIGTERM to node `i`'s BIRD (it closes its session with the router).
    pub fn stop_bird(&mut self, i: usize) {
        self.nodes[i].bird.stop();
    }

    /// Node `i` dies: its daemon and its BIRD killed (kill -9).
    pub fn kill_node(&mut self, i: usize) {
        self.kill9_daemon(i);
        self.kill9_bird(i);
    }

    /// Takes node `i`'s link down or up (it vanishes from the segment; its
    /// processes keep running).
    pub fn set_node_link(&self, i: usize, up: bool) -> Result<()> {
        self.nodes[i]
            .ns
            .ip(&["link", "set", "eth0", if up { "up" } else { "down" }])
            .map(|_| ())
    }

    /// Whether the bridge floods unknown unicast to node `i`'s port. Off, a
    /// node sees only the frames sent to its own MAC, as behind a real
    /// NIC's MAC filter: a veth has none, and XDP sees every frame, so when
    /// a node's port goes down (and the bridge forgets its MAC) the frames
    /// the router still sends it are flooded and the other nodes' programs
    /// forward them, hiding the node's loss.
    pub fn set_node_flood(&self, i: usize, on: bool) -> Result<()> {
        sh(self.bridge.command("bridge").args([
            "link",
            "set",
            "dev",
            &format!("p-n{i}"),
            "flood",
            if on { "on" } else { "off" },
        ]))
        .map(|_| ())
    }

    /// Puts the VIP's route into node `i`'s table `ANNOUNCE_TABLE`, as the
    /// daemon's announcer does: its BIRD then announces the VIP.
    pub fn add_vip_route(&self, i: usize) -> Result<()> {
        self.nodes[i]
            .ns
            .ip(&[
                "route",
                "replace",
                &format!("{VIP}/32"),
                "dev",
                "lo",
                "table",
                &ANNOUNCE_TABLE.to_string(),
                "proto",
                &ANNOUNCE_PROTOCOL.to_string(),
            ])
            .map(|_| ())
    }

    /// Removes the VIP's route from node `i`'s table: a withdrawal.
    pub fn del_vip_route(&self, i: usize) -> Result<()> {
        self.nodes[i]
            .ns
            .ip(&[
                "route",
                "del",
                &format!("{VIP}/32"),
                "table",
                &ANNOUNCE_TABLE.to_string(),
            ])
            .map(|_| ())
    }

    /// Routes in node `i`'s table `ANNOUNCE_TABLE` (`ip route show table`).
    pub fn node_routes(&self, i: usize) -> Result<String> {
        self.nodes[i]
            .ns
            .ip(&["route", "show", "table", &ANNOUNCE_TABLE.to_string()])
    }

    /// The router's next hops towards the VIP (its main table, as BIRD
    /// installed them): empty when no node announces it.
    pub fn router_nexthops(&self) -> Result<Vec<Ipv4Addr>> {
        let text = self.router.ip(&["route", "show", &VIP.to_string()])?;
        let words: Vec<&str> = text.split_whitespace().collect();
        Ok(words
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect())
    }

    /// The nodes the router forwards the VIP to, by index, sorted.
    pub fn routed_nodes(&self) -> Result<Vec<usize>> {
        let hops = self.router_nexthops()?;
        let mut v: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| hops.contains(&node_addr(i)))
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Waits until the router forwards the VIP to exactly `nodes` (any
    /// order); how long that took, or an error naming what it had.
    pub fn wait_routed(&self, nodes: &[usize], timeout: Duration) -> Result<Duration> {
        let mut want = nodes.to_vec();
        want.sort_unstable();
        let start = Instant::now();
        loop {
            let have = self.routed_nodes()?;
            if have == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "router forwards the VIP to nodes {have:?}, not {want:?}, after {timeout:?}; \
                     router BIRD:\n{}",
                    self.router_bird
                        .birdc(&["show", "protocols"])
                        .unwrap_or_default()
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the router has `k` next hops for the VIP.
    pub fn wait_nexthops(&self, k: usize, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let have = self.router_nexthops()?;
            if have.len() == k {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "router has next hops {have:?}, not {k}, after {timeout:?}"
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the router's BIRD has `k` established BGP sessions.
    pub fn wait_sessions(&self, k: usize, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let n = self.router_bird.established()?.len();
            if n == k {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{n} BGP sessions up at the router, not {k}, after {timeout:?}:\n{}",
                    self.router_bird
                        .birdc(&["show", "protocols"])
                        .unwrap_or_default()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every namespace of the cluster.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut v = vec![&self.client, &self.router];
        v.extend(self.nodes.iter().map(|n| &n.ns));
        v.extend(&self.backends);
        v.push(&self.bridge);
        v
    }

    /// Keeps everything running after this process exits (see
    /// `Topology::persist`).
    pub fn persist(mut self) -> KeptTopology {
        if let Some(r) = self.reaper.take() {
            r.disarm();
        }
        let mut pids: Vec<u32> = self.servers.iter().flatten().map(ChildGuard::pid).collect();
        pids.extend(self.router_bird.pid());
        for n in &self.nodes {
            pids.extend(n.bird.pid());
            pids.extend(n.daemon.as_ref().and_then(Daemon::pid));
        }
        let mut pins = self.peer_pins.clone();
        pins.extend(self.nodes.iter().map(|n| n.pin.0.clone()));
        let kept = KeptTopology {
            id: self.id.clone(),
            namespaces: self.namespaces().iter().map(|n| n.name.clone()).collect(),
            pids,
            pins,
            tmp: self.tmp.clone(),
        };
        for c in self.servers.drain(..).flatten() {
            std::mem::forget(c);
        }
        if let Some(c) = self.router_bird.child.take() {
            std::mem::forget(c);
        }
        for mut n in self.nodes.drain(..) {
            if let Some(c) = n.bird.child.take() {
                std::mem::forget(c);
            }
            if let Some(c) = n.daemon.as_mut().and_then(|d| d.child.take()) {
                std::mem::forget(c);
            }
            std::mem::forget(n);
        }
        std::mem::forget(self);
        kept
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for pin in &self.peer_pins {
            let _ = Dataplane::detach_pinned(&pin.join(LINK_PIN_NAME));
            let _ = fs::remove_dir_all(pin);
        }
        // Processes go before the folder their sockets and logs are in.
        for n in &mut self.nodes {
            n.daemon = None;
            n.bird.child = None;
        }
        self.router_bird.child = None;
        let _ = fs::remove_dir_all(&self.tmp);
    }
}
