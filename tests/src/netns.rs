//! A test network made of network namespaces: a bridge namespace joining a
//! client namespace (hundreds of client addresses), the load balancer's
//! namespace and backend namespaces running real HTTP servers.
//!
//! Everything is owned by guards: dropping the `Topology` (also when a test
//! panics) kills its processes and deletes its namespaces, which deletes
//! their interfaces. Nothing is created in the root namespace: every veth is
//! created inside the bridge namespace with its other end moved straight
//! into its host's namespace.
//!
//! ```text
//!                      ns <id>-br: bridge br0
//!        +--------------+----------+----------+---------+
//!      p-cl           p-lb       p-b0       p-b1  ...  (XDP_PASS on p-lb)
//!        |              |          |          |
//!   <id>-cl eth0   <id>-lb eth0  <id>-b0    <id>-b1
//!   10.77.0.2      10.77.0.1     eth0 10.77.0.10 ...
//!   10.77.1.x/16   VIP/32        lo: VIP/32 (arp_ignore=1, arp_announce=2)
//!   (clients)      stickylb XDP  slb-backend on :80
//! ```

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use lb_user::dataplane::{AttachMode, Dataplane, LINK_PIN_NAME, LoadOptions};

pub type Result<T> = std::result::Result<T, String>;

/// Runs a command to completion; its stdout, or an error with its stderr.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Self> {
        sh(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        sh(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A veth pair: `local` in this namespace, `peer_name` in `peer`, both
    /// down.
    pub fn add_veth(&self, local: &str, peer: &Netns, peer_name: &str) -> Result<()> {
        self.ip(&[
            "link", "add", local, "type", "veth", "peer", "name", peer_name, "netns", &peer.name,
        ])
        .map(drop)
    }

    /// Feeds `ip -batch` so hundreds of commands cost one process.
    pub fn ip_batch(&self, lines: &[String]) -> Result<()> {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .ok_or("no stdin")?
            .write_all(lines.join("\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "ip -batch: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// A command that runs in this namespace's network stack only: unlike
    /// `ip netns exec`, `nsenter --net` keeps the root mount namespace, so
    /// the root bpffs (pinned maps) stays visible.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        sh(self
            .command("sysctl")
            .args(["-q", "-w", &format!("{key}={value}")]))
        .map(|_| ())
    }

    /// Runs `f` on a thread inside this namespace (threads it spawns stay
    /// there too); sockets it opens belong to the namespace.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        thread::spawn(move || {
            enter_path(&path);
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }
}

/// Moves the calling thread into the network namespace at `path` (threads
/// it spawns afterwards inherit it).
pub fn enter_path(path: &Path) {
    let file = fs::File::open(path).expect("open netns");
    // SAFETY: a valid netns fd; setns only affects this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }

    /// Whether it has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Cleans up after this process if it dies without running destructors
/// (Ctrl-C, kill -9, a test binary killed by its harness): a small shell that
/// waits for this process to exit, then kills whatever still runs in the
/// namespaces named `<id>-*`, deletes them and removes the given paths.
///
/// It runs in its own process group, so a terminal's Ctrl-C (sent to the
/// whole foreground group) does not reach it. It notices its parent's exit
/// by being re-parented, which also works while the parent is an unreaped
/// zombie. Dropping it (orderly teardown) or `disarm` (a kept network) kills
/// it without cleaning anything.
pub struct Reaper(Option<Child>);

/// Waits until the shell's parent (`$1`) has exited, then runs
/// `CLEANUP_SCRIPT` with the remaining arguments.
const REAPER_SCRIPT: &str = r#"
parent=$1
shift
while :; do
    read -r _ _ _ ppid _ < /proc/$$/stat || break
    [ "$ppid" = "$parent" ] || break
    sleep 0.2
done
"#;

/// `$1`: a topology id; kills what runs in its namespaces, deletes them,
/// then removes the other arguments (paths).
const CLEANUP_SCRIPT: &str = r#"
id=$1
shift
for ns in $(ip netns list | cut -d' ' -f1); do
    case $ns in
    "$id"-*)
        ip netns pids "$ns" | xargs -r kill -9
        ip netns del "$ns"
        ;;
    esac
done
rm -rf -- "$@"
"#;

impl Reaper {
    /// Starts watching; `paths` are removed after the namespaces (pin
    /// folders, scratch folders).
    pub fn spawn(id: &str, paths: &[&Path]) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{REAPER_SCRIPT}{CLEANUP_SCRIPT}"))
            .arg("slb-reaper")
            .arg(std::process::id().to_string())
            .arg(id)
            .args(paths)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start the cleanup watcher: {e}"))?;
        Ok(Self(Some(child)))
    }

    /// Stops watching: what it would have removed is meant to outlive this
    /// process.
    pub fn disarm(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a [`Reaper`] does once its process is gone, done now: kills what
/// runs in the namespaces `<id>-*`, deletes them, removes `paths`.
pub fn remove_leftovers(id: &str, paths: &[&Path]) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(CLEANUP_SCRIPT)
        .arg("slb-cleanup")
        .arg(id)
        .args(paths)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Names of the namespaces `<id>-*` that exist.
pub fn namespaces_of(id: &str) -> Result<Vec<String>> {
    let prefix = format!("{id}-");
    Ok(sh(Command::new("ip").args(["netns", "list"]))?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(String::from)
        .collect())
}

/// Processes running in namespace `name`.
pub fn pids_in(name: &str) -> Result<Vec<u32>> {
    Ok(sh(Command::new("ip").args(["netns", "pids", name]))?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Waits until `cond` holds, polling; false on timeout.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub const LB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const CLIENT_MAIN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 1);
pub const PREFIX: u8 = 16;

pub fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + i as u8)
}

/// Client address number `i` (up to 64k).
pub fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// Makes the bridge `br0` in namespace `br`.
pub fn add_bridge(br: &Netns) -> Result<()> {
    br.ip(&["link", "add", "br0", "type", "bridge"])?;
    br.ip(&["link", "set", "br0", "up"])?;
    Ok(())
}

/// Plugs `host` into `br0` of namespace `br`: a veth whose bridge end is
/// `port` and whose other end is `host`'s `eth0`, both up.
pub fn plug_into_bridge(br: &Netns, host: &Netns, port: &str) -> Result<()> {
    br.add_veth(port, host, "eth0")?;
    br.ip(&["link", "set", port, "master", "br0"])?;
    br.ip(&["link", "set", port, "up"])?;
    host.ip(&["link", "set", "eth0", "up"])?;
    Ok(())
}

/// A backend's `vip`: on loopback, never answered for in ARP, so frames to
/// the VIP only reach it when a load balancer forwards them.
pub fn vip_on_loopback(backend: &Netns, vip: Ipv4Addr) -> Result<()> {
    backend.ip(&["addr", "add", &format!("{vip}/32"), "dev", "lo"])?;
    for (k, v) in [("arp_ignore", "1"), ("arp_announce", "2")] {
        backend.sysctl(&format!("net.ipv4.conf.all.{k}"), v)?;
        backend.sysctl(&format!("net.ipv4.conf.eth0.{k}"), v)?;
    }
    Ok(())
}

/// The client namespace's addresses (`main` and `clients`, all /`PREFIX`
/// on eth0) and then `more` `ip` lines, in one batch; and its
/// TCP checksums computed before the wire: veth leaves them partial, XDP_TX
/// loses that mark, and the backend would drop the segment (a NIC computes
/// them on the wire).
pub fn client_addrs(
    client: &Netns,
    main: Ipv4Addr,
    clients: &[Ipv4Addr],
    more: &[String],
) -> Result<()> {
    let mut batch = vec![format!("addr add {main}/{PREFIX} dev eth0")];
    batch.extend(
        clients
            .iter()
            .map(|a| format!("addr add {a}/{PREFIX} dev eth0")),
    );
    batch.extend_from_slice(more);
    client.ip_batch(&batch)?;
    sh(client.command("ethtool").args(["-K", "eth0", "tx", "off"]))?;
    Ok(())
}

/// XDP_TX on a veth in driver mode needs an XDP program on its peer:
/// stickylb's own program with no VIP, which passes every frame, on each
/// `(port, pin folder)` of namespace `bridge`. The links are pinned so they
/// outlive this process when the network is kept.
pub fn attach_peer_xdp(bridge: &Netns, ports: Vec<(String, PathBuf)>) -> Result<()> {
    let path = bridge.path();
    thread::spawn(move || -> Result<()> {
        enter_path(&path);
        for (port, pin) in &ports {
            fs::create_dir_all(pin).map_err(|e| e.to_string())?;
            let mut dp = Dataplane::load(&LoadOptions {
                affinity_capacity: 1024,
                pin_dir: None,
            })
            .map_err(|e| format!("{e:#}"))?;
            dp.attach_pinned(port, AttachMode::Driver, None, &pin.join(LINK_PIN_NAME))
                .map_err(|e| format!("{e:#}"))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| "peer XDP thread panicked")?
}

/// Starts backend `i`'s HTTP server (`server_bin`, named `backend-<i>`, on
/// :80) in `ns`, its ready file and stderr log in `tmp`; waits until it
/// listens.
pub fn start_backend_server(
    ns: &Netns,
    server_bin: &Path,
    tmp: &Path,
    i: usize,
    redis: Option<SocketAddrV4>,
) -> Result<ChildGuard> {
    let ready = tmp.join(format!("b{i}.ready"));
    let log = tmp.join(format!("b{i}.log"));
    let _ = fs::remove_file(&ready);
    let mut cmd = ns.command(server_bin);
    cmd.args(["--name", &format!("backend-{i}"), "--listen", "0.0.0.0:80"])
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Not the caller's stderr: a kept network's servers outlive the
        // command that started them and must not hold its terminal/pipe.
        .stderr(fs::File::create(&log).map_err(|e| e.to_string())?);
    if let Some(r) = redis {
        cmd.args(["--redis", &r.to_string()]);
    }
    let mut child = ChildGuard(cmd.spawn().map_err(|e| format!("start slb-backend: {e}"))?);
    let mut exited = None;
    wait_for(Duration::from_secs(10), || {
        exited = child.exited();
        ready.exists() || exited.is_some()
    });
    if ready.exists() {
        return Ok(child);
    }
    let why = match exited {
        Some(status) => format!("it exited ({status})"),
        None => "no ready file after 10 s".to_string(),
    };
    let stderr = fs::read_to_string(&log).unwrap_or_default();
    Err(format!(
        "backend {i} did not start listening: {why}; its stderr: {:?}",
        stderr.trim()
    ))
}

/// A daemon config on `eth0` in driver mode: one TCP VIP `web` on `vip`:80
/// whose backends are `backend_addr(0..backends)`:80; `health` is the
/// `[health]` table, `extra_vip` is appended to the `[[vip]]` table.
pub fn daemon_config(
    pin_path: &Path,
    control_socket: &Path,
    vip: Ipv4Addr,
    backends: usize,
    health: &str,
    extra_vip: &str,
) -> String {
    let mut s = format!(
        "interface = \"eth0\"\n\
         xdp_mode = \"driver\"\n\
         pin_path = \"{}\"\n\
         control_socket = \"{}\"\n\
         metrics_listen = \"127.0.0.1:9321\"\n\
         affinity_capacity = 65536\n\n\
         [health]\n{health}\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\n{extra_vip}\n",
        pin_path.display(),
        control_socket.display()
    );
    for i in 0..backends {
        s += &format!(
            "\n[[vip.backend]]\naddress = \"{}\"\nport = 80\n",
            backend_addr(i)
        );
    }
    s
}

pub struct TopologyOptions {
    pub backends: usize,
    pub clients: usize,
    /// `--redis` for every backend (the address of a Redis they can reach).
    pub redis: Option<SocketAddrV4>,
}

/// The whole test network. Field order is drop order: processes first,
/// then the namespaces (Drop then removes the pinned XDP link of the bridge
/// port and the scratch folder).
pub struct Topology {
    pub servers: Vec<Option<ChildGuard>>,
    /// Other processes the user of the topology started in it.
    pub others: Vec<ChildGuard>,
    pub id: String,
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<Netns>,
    /// Further hosts on the bridge (`add_host`).
    pub hosts: Vec<Netns>,
    pub bridge: Netns,
    /// Pin folder of the XDP_PASS program on the LB's bridge port.
    pub peer_pin: PathBuf,
    pub clients: Vec<Ipv4Addr>,
    pub server_bin: PathBuf,
    pub redis: Option<SocketAddrV4>,
    pub tmp: PathBuf,
    /// Last, so it outlives every other guard's teardown.
    reaper: Option<Reaper>,
}

/// What a topology keeps outside its namespaces, by its id.
pub struct TopologyPaths {
    /// Pin folder of the XDP_PASS program on the LB's bridge port.
    pub peer_pin: PathBuf,
    /// Pin folder for the daemon run on the topology (`pin_path`).
    pub daemon_pin: PathBuf,
    /// Scratch folder: logs, configs, the control socket.
    pub tmp: PathBuf,
    /// The runtime record of the daemon on `daemon_pin` (a clean exit
    /// removes it, a kill -9 leaves it).
    pub daemon_record: PathBuf,
}

impl TopologyPaths {
    pub fn of(id: &str) -> Self {
        let bpf = Path::new("/sys/fs/bpf");
        let daemon_pin = bpf.join(id);
        Self {
            peer_pin: bpf.join(format!("{id}-peer")),
            daemon_record: lb_user::runtime::Record::path_in(
                Path::new(lb_user::runtime::RECORD_DIR),
                &daemon_pin,
            ),
            daemon_pin,
            tmp: std::env::temp_dir().join(id),
        }
    }
}

impl Topology {
    /// Where a daemon run on this topology pins its maps and link.
    pub fn daemon_pin(&self) -> PathBuf {
        TopologyPaths::of(&self.id).daemon_pin
    }

    /// Builds the network, starts one `slb-backend` per backend namespace
    /// and waits until each listens.
    pub fn up(opts: &TopologyOptions, server_bin: &Path) -> Result<Self> {
        crate::require_root();
        let id = format!(
            "slb{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let TopologyPaths {
            peer_pin,
            daemon_pin,
            tmp,
            daemon_record,
        } = TopologyPaths::of(&id);
        let reaper = Reaper::spawn(&id, &[&peer_pin, &daemon_pin, &tmp, &daemon_record])?;
        let bridge = Netns::new(&format!("{id}-br"))?;
        let client = Netns::new(&format!("{id}-cl"))?;
        let lb = Netns::new(&format!("{id}-lb"))?;
        let mut backends = Vec::new();
        for i in 0..opts.backends {
            backends.push(Netns::new(&format!("{id}-b{i}"))?);
        }
        fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        let mut topo = Self {
            servers: Vec::new(),
            others: Vec::new(),
            peer_pin,
            id,
            client,
            lb,
            backends,
            hosts: Vec::new(),
            bridge,
            clients: (0..opts.clients).map(client_addr).collect(),
            server_bin: server_bin.to_owned(),
            redis: opts.redis,
            tmp,
            reaper: Some(reaper),
        };
        topo.wire()?;
        for i in 0..opts.backends {
            topo.servers.push(None);
            topo.start_server(i)?;
        }
        Ok(topo)
    }

    fn wire(&mut self) -> Result<()> {
        add_bridge(&self.bridge)?;
        plug_into_bridge(&self.bridge, &self.client, "p-cl")?;
        plug_into_bridge(&self.bridge, &self.lb, "p-lb")?;
        for (i, b) in self.backends.iter().enumerate() {
            plug_into_bridge(&self.bridge, b, &format!("p-b{i}"))?;
        }
        let cidr = |a: Ipv4Addr| format!("{a}/{PREFIX}");
        // Load balancer: its own address, and the VIP so it answers ARP
        // for it (frames to the VIP then reach its XDP program).
        self.lb
            .ip(&["addr", "add", &cidr(LB_ADDR), "dev", "eth0"])?;
        self.lb
            .ip(&["addr", "add", &format!("{VIP}/32"), "dev", "eth0"])?;
        for (i, b) in self.backends.iter().enumerate() {
            b.ip(&["addr", "add", &cidr(backend_addr(i)), "dev", "eth0"])?;
            vip_on_loopback(b, VIP)?;
        }
        // Clients: many source addresses on one interface.
        client_addrs(&self.client, CLIENT_MAIN_ADDR, &self.clients, &[])?;
        attach_peer_xdp(&self.bridge, vec![("p-lb".into(), self.peer_pin.clone())])
    }

    /// Adds a host on the bridge with `addr`; its namespace.
    pub fn add_host(&mut self, name: &str, addr: Ipv4Addr) -> Result<&Netns> {
        let ns = Netns::new(&format!("{}-{name}", self.id))?;
        plug_into_bridge(&self.bridge, &ns, &format!("p-{name}"))?;
        ns.ip(&["addr", "add", &format!("{addr}/{PREFIX}"), "dev", "eth0"])?;
        self.hosts.push(ns);
        Ok(self.hosts.last().expect("just pushed"))
    }

    /// Every namespace of the topology.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut v = vec![&self.client, &self.lb];
        v.extend(&self.backends);
        v.extend(&self.hosts);
        v.push(&self.bridge);
        v
    }

    /// Keeps everything running after this process exits: returns what
    /// must be removed later (`slb-netns down` does that) and disarms every
    /// guard.
    pub fn persist(mut self) -> KeptTopology {
        if let Some(r) = self.reaper.take() {
            r.disarm();
        }
        let mut pids: Vec<u32> = self.servers.iter().flatten().map(ChildGuard::pid).collect();
        pids.extend(self.others.iter().map(ChildGuard::pid));
        let kept = KeptTopology {
            id: self.id.clone(),
            namespaces: self.namespaces().iter().map(|n| n.name.clone()).collect(),
            pids,
            pins: vec![self.peer_pin.clone()],
            tmp: self.tmp.clone(),
        };
        for c in self
            .servers
            .drain(..)
            .flatten()
            .chain(self.others.drain(..))
        {
            std::mem::forget(c);
        }
        std::mem::forget(self);
        kept
    }

    /// Starts (or restarts) backend `i`'s HTTP server; waits until it listens.
    pub fn start_server(&mut self, i: usize) -> Result<()> {
        // The old server must be gone (killed and reaped) before the new one
        // binds port 80: two listeners on one port is EADDRINUSE.
        self.servers[i] = None;
        self.servers[i] = Some(start_backend_server(
            &self.backends[i],
            &self.server_bin,
            &self.tmp,
            i,
            self.redis,
        )?);
        Ok(())
    }

    /// Kills backend `i`'s server (its host stays up: connections are refused).
    pub fn kill_server(&mut self, i: usize) {
        self.servers[i] = None;
    }

    /// Takes backend `i`'s link down or up (its host vanishes from the wire).
    pub fn set_backend_link(&self, i: usize, up: bool) -> Result<()> {
        self.backends[i]
            .ip(&["link", "set", "eth0", if up { "up" } else { "down" }])
            .map(|_| ())
    }

    /// A daemon config for this network; `extra_vip` is appended to the
    /// `[[vip]]` table (e.g. "affinity_timeout = \"10s\"").
    pub fn config(&self, pin_path: &Path, health: &str, extra_vip: &str) -> String {
        daemon_config(
            pin_path,
            &self.tmp.join("ctl.sock"),
            VIP,
            self.backends.len(),
            health,
            extra_vip,
        )
    }

    pub fn control_socket(&self) -> PathBuf {
        self.tmp.join("ctl.sock")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Dataplane::detach_pinned(&self.peer_pin.join(LINK_PIN_NAME));
        let _ = fs::remove_dir_all(&self.peer_pin);
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// What a kept topology consists of, to remove it later.
#[derive(Clone, Debug, Default)]
pub struct KeptTopology {
    pub id: String,
    pub namespaces: Vec<String>,
    pub pids: Vec<u32>,
    /// Pin folders (each detached and removed).
    pub pins: Vec<PathBuf>,
    pub tmp: PathBuf,
}

impl KeptTopology {
    pub fn to_lines(&self) -> String {
        let mut s = format!("id {}\ntmp {}\n", self.id, self.tmp.display());
        s += &self
            .namespaces
            .iter()
            .map(|n| format!("netns {n}\n"))
            .collect::<String>();
        s += &self
            .pids
            .iter()
            .map(|p| format!("pid {p}\n"))
            .collect::<String>();
        s += &self
            .pins
            .iter()
            .map(|p| format!("pin {}\n", p.display()))
            .collect::<String>();
        s
    }

    pub fn from_lines(text: &str) -> Self {
        let mut k = Self::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("id", v)) => k.id = v.into(),
                Some(("tmp", v)) => k.tmp = v.into(),
                Some(("netns", v)) => k.namespaces.push(v.into()),
                Some(("pid", v)) => k.pids.extend(v.parse::<u32>().ok()),
                Some(("pin", v)) => k.pins.push(v.into()),
                _ => {}
            }
        }
        k
    }

    /// Stops the processes (SIGTERM first, so they exit cleanly; a daemon
    /// then leaves its program pinned), then removes pins (detaching their
    /// programs), namespaces and the scratch folder.
    pub fn remove(&self) {
        for &p in &self.pids {
            // SAFETY: kill(2) on a pid we started.
            unsafe { libc::kill(p as i32, libc::SIGTERM) };
        }
        thread::sleep(Duration::from_millis(500));
        for &p in &self.pids {
            // SAFETY: as above; a pid already gone just fails.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        for pin in &self.pins {
            let _ = Dataplane::detach_pinned(&pin.join(LINK_PIN_NAME));
            let _ = fs::remove_dir_all(pin);
        }
        for n in &self.namespaces {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// What one HTTP request got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub set_cookie: Option<String>,
}

/// One HTTP/1.1 GET on a new TCP connection from `src` (a local address of
/// the calling thread's namespace), bounded by `timeout`.
pub fn http_get(
    src: Ipv4Addr,
    dst: SocketAddrV4,
    path: &str,
    cookie: Option<&str>,
    timeout: Duration,
) -> std::io::Result<Answer> {
    use socket2::{Domain, Socket, Type};
    // Which step failed, from which port: a failure under load is only
    // explained by these (a lost SYN times out in connect, a stalled
    // server in read).
    let step = |what: &'static str, port: u16| {
        move |e: std::io::Error| {
            std::io::Error::new(
                e.kind(),
                format!("{what} (from {src}:{port} to {dst}): {e}"),
            )
        }
    };
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    defer_handshake_ack(&sock)?;
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())
        .map_err(step("bind", 0))?;
    let port = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map_or(0, |a| a.port());
    sock.connect_timeout(&SocketAddr::V4(dst).into(), timeout)
        .map_err(step("connect", port))?;
    let mut stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    // One write, so one segment (`write!` on the stream would send a
    // segment per piece); see `defer_handshake_ack`.
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {dst}\r\n{cookie}Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(step("write", port))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(step("read", port))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let set_cookie = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("Set-Cookie: ")
                .or_else(|| l.strip_prefix("set-cookie: "))
        })
        .map(|c| c.split(';').next().unwrap_or(c).to_owned());
    Ok(Answer {
        status,
        body: body.to_owned(),
        set_cookie,
    })
}

/// Makes the handshake's last ACK ride on the request's segment instead of
/// going out alone just before it (Linux "saves one ACK" on a connecting
/// socket with TCP_DEFER_ACCEPT set).
///
/// Two segments reaching a server's request socket back to back may be
/// processed on two CPUs at once (in the test network, frames forwarded by
/// XDP_TX reach a backend from either CPU). One turns the request socket
/// into the connection; on kernels without "inet: Avoid ehash lookup race
/// in inet_ehash_insert()" the other can look the flow up in between, find
/// neither, reach the listener and be reset (`tcp_send_reset`: state
/// LISTEN, reason TCP_FLAGS). The backend then resets a connection the load
/// balancer forwarded correctly: one in tens of thousands on 2 CPUs, more
/// under CPU load, enough to fail the end-to-end test most runs. With the
/// ACK and the whole request in one segment, only one segment meets the
/// request socket.
fn defer_handshake_ack(sock: &socket2::Socket) -> std::io::Result<()> {
    let seconds: libc::c_int = 1;
    // SAFETY: setsockopt(2) on an open socket, with a pointer to a c_int and
    // its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const seconds).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Which backend answered: the name in the body ("backend-3\n" → 3).
pub fn backend_of(answer: &Answer) -> Option<usize> {
    answer
        .body
        .split_whitespace()
        .next()?
        .strip_prefix("backend-")?
        .parse()
        .ok()
}
