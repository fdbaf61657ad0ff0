//! The routed test bed: the load balancer behind a router, with DSR
//! backends on its own L2 segment and tunnel backends (IP-in-IP, GUE) in
//! other subnets behind the router, reachable from the LB only through it.
//!
//! ```text
//!   <id>-cl eth0 10.81.0.2, clients 10.81.1.x/16 (TX checksum offload off)
//!      |
//!   <id>-rt eth-cl 10.81.0.1/16   ip_forward; 10.84.0.0/24 (the VIPs) via the LB
//!      | eth0 10.82.0.254/24                 | eth-t0 10.83.0.1/24  | eth-t1 10.83.1.1/24 ...
//!   <id>-br br0 --+-------------+-----       |   (MTU per link)     |
//!      p-rt     p-lb (XDP_PASS)  p-d0 ...  <id>-t0 eth0 10.83.0.2  <id>-t1 eth0 10.83.1.2
//!                 |               |        lo: the VIPs, `stickylb decap` on eth0,
//!           <id>-lb eth0       <id>-d0     default via the router
//!           10.82.0.1/24       eth0 10.82.0.10, lo: the VIPs (DSR backends)
//!           forwarding=1, stickylb XDP (driver), default via 10.82.0.254
//! ```
//!
//! Every backend holds every VIP on loopback (arp_ignore=1, arp_announce=2)
//! and runs `slb-backend` on :80, named `backend-<n>` with `n` its index
//! across both kinds: DSR backends first, then tunnel backends. Replies
//! leave every backend straight for the router (direct server return).
//!
//! Guards own everything, as in `Topology` and `Cluster`: dropping a
//! `Routed` (also on a panic) kills the daemon and the servers, removes the
//! pins and deletes the namespaces, and a `Reaper` does the same if this
//! process dies first.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use lb_user::{
    api::{BackendState, StatusReply, VipStatus},
    control::{self, Request},
    dataplane::{Dataplane, LINK_PIN_NAME},
    runtime::{RECORD_DIR, Record},
};

use crate::{
    daemon::{Daemon, PinGuard},
    netns::{
        ChildGuard, Netns, Reaper, Result, add_bridge, attach_peer_xdp, client_addrs, enter_path,
        plug_into_bridge, sh, start_backend_server, wait_for,
    },
};

pub const LB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 82, 0, 1);
/// The router on the LB segment: the LB's and the DSR backends' gateway.
pub const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 82, 0, 254);
pub const SEGMENT_PREFIX: u8 = 24;
/// The router on the clients' side (their gateway).
pub const ROUTER_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 1);
pub const CLIENT_MAIN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 2);
/// The range the router sends to the LB: every VIP of the bed is in it.
pub const VIP_RANGE: &str = "10.84.0.0/24";

/// VIP number `i` (1-based host part) in `VIP_RANGE`.
pub fn vip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 84, 0, i)
}

/// Client address number `i` (up to 64k).
pub fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 81, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// DSR backend `i`'s address on the LB segment, for i < 200.
pub fn dsr_addr(i: usize) -> Ipv4Addr {
    assert!(i < 200, "DSR backends are 10.82.0.10-209");
    Ipv4Addr::new(10, 82, 0, 10 + i as u8)
}

/// Tunnel backend `i`'s address: alone in its own subnet 10.83.i.0/24,
/// whose other address (.1) is the router's.
pub fn tunnel_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 83, i as u8, 2)
}

fn tunnel_gateway(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 83, i as u8, 1)
}

pub struct RoutedOptions {
    pub dsr_backends: usize,
    /// One entry per tunnel backend: the MTU of its link with the router
    /// (both ends).
    pub tunnel_mtus: Vec<u32>,
    pub clients: usize,
    /// Put on every backend's loopback: the VIPs the tests configure.
    pub vips: Vec<Ipv4Addr>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The whole routed network. Field order is drop order: the daemon, the
/// servers, the pins, then the namespaces; `Drop` first stops the
/// processes and detaches the programs pinned outside the daemon's folder.
pub struct Routed {
    pub daemon: Option<Daemon>,
    /// `slb-backend` of backend `n` (DSR first, then tunnel backends).
    pub servers: Vec<Option<ChildGuard>>,
    pub pin: PinGuard,
    pub id: String,
    pub client: Netns,
    pub router: Netns,
    pub lb: Netns,
    pub dsr: Vec<Netns>,
    pub tunnel: Vec<Netns>,
    pub bridge: Netns,
    /// Pin folder of the XDP_PASS program on the LB's bridge port.
    pub peer_pin: PathBuf,
    /// `stickylb decap --pin-dir` of each tunnel backend.
    pub decap_pins: Vec<PathBuf>,
    pub clients: Vec<Ipv4Addr>,
    pub server_bin: PathBuf,
    pub tmp: PathBuf,
    /// Last, so it outlives every other guard's teardown.
    _reaper: Reaper,
}

impl Routed {
    /// Builds the network, starts every backend's server and waits until
    /// each listens. No daemon runs yet and no decap is attached.
    pub fn up(opts: &RoutedOptions, server_bin: &Path) -> Result<Self> {
        crate::require_root();
        let id = format!(
            "slr{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let bpf = Path::new("/sys/fs/bpf");
        let tmp = std::env::temp_dir().join(&id);
        let daemon_pin = bpf.join(&id);
        let peer_pin = bpf.join(format!("{id}-peer"));
        let decap_pins: Vec<PathBuf> = (0..opts.tunnel_mtus.len())
            .map(|i| bpf.join(format!("{id}-decap-t{i}")))
            .collect();
        let record = Record::path_in(Path::new(RECORD_DIR), &daemon_pin);
        let mut paths: Vec<&Path> = vec![&tmp, &daemon_pin, &peer_pin, &record];
        paths.extend(decap_pins.iter().map(PathBuf::as_path));
        let reaper = Reaper::spawn(&id, &paths)?;
        fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        let mut r = Self {
            daemon: None,
            servers: Vec::new(),
            pin: PinGuard(daemon_pin),
            client: Netns::new(&format!("{id}-cl"))?,
            router: Netns::new(&format!("{id}-rt"))?,
            lb: Netns::new(&format!("{id}-lb"))?,
            dsr: (0..opts.dsr_backends)
                .map(|i| Netns::new(&format!("{id}-d{i}")))
                .collect::<Result<_>>()?,
            tunnel: (0..opts.tunnel_mtus.len())
                .map(|i| Netns::new(&format!("{id}-t{i}")))
                .collect::<Result<_>>()?,
            bridge: Netns::new(&format!("{id}-br"))?,
            id,
            peer_pin,
            decap_pins,
            clients: (0..opts.clients).map(client_addr).collect(),
            server_bin: server_bin.to_owned(),
            tmp,
            _reaper: reaper,
        };
        r.wire(opts)?;
        for n in 0..r.backends() {
            r.servers.push(None);
            r.start_server(n)?;
        }
        Ok(r)
    }

    fn wire(&self, opts: &RoutedOptions) -> Result<()> {
        let cidr = |a: Ipv4Addr, p: u8| format!("{a}/{p}");
        // The LB segment: router, LB and DSR backends on one bridge.
        add_bridge(&self.bridge)?;
        plug_into_bridge(&self.bridge, &self.router, "p-rt")?;
        plug_into_bridge(&self.bridge, &self.lb, "p-lb")?;
        for (i, b) in self.dsr.iter().enumerate() {
            plug_into_bridge(&self.bridge, b, &format!("p-d{i}"))?;
        }
        // Router: the clients' link, the segment, one link per tunnel
        // backend; the VIPs routed to the LB's own address.
        self.router.add_veth("eth-cl", &self.client, "eth0")?;
        let mut rt = vec![
            "link set eth-cl up".to_owned(),
            format!("addr add {} dev eth-cl", cidr(ROUTER_CLIENT_ADDR, 16)),
            format!("addr add {} dev eth0", cidr(ROUTER_ADDR, SEGMENT_PREFIX)),
            format!("route add {VIP_RANGE} via {LB_ADDR}"),
        ];
        for (i, (b, mtu)) in self.tunnel.iter().zip(&opts.tunnel_mtus).enumerate() {
            let link = format!("eth-t{i}");
            self.router.ip(&[
                "link",
                "add",
                &link,
                "mtu",
                &mtu.to_string(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "mtu",
                &mtu.to_string(),
                "netns",
                &b.name,
            ])?;
            rt.push(format!("link set {link} up"));
            rt.push(format!(
                "addr add {} dev {link}",
                cidr(tunnel_gateway(i), 24)
            ));
        }
        self.router.ip_batch(&rt)?;
        self.router.sysctl("net.ipv4.ip_forward", "1")?;
        self.client.ip(&["link", "set", "eth0", "up"])?;
        // LB: its own address only (the router sends it the VIPs), the
        // router as gateway, forwarding on its interface for the FIB
        // helper the tunnel modes look the next hop up with.
        self.lb.ip_batch(&[
            format!("addr add {} dev eth0", cidr(LB_ADDR, SEGMENT_PREFIX)),
            format!("route add default via {ROUTER_ADDR}"),
        ])?;
        self.lb.sysctl("net.ipv4.conf.eth0.forwarding", "1")?;
        for (i, b) in self.dsr.iter().enumerate() {
            backend_host(b, dsr_addr(i), SEGMENT_PREFIX, ROUTER_ADDR, &opts.vips)?;
        }
        for (i, b) in self.tunnel.iter().enumerate() {
            backend_host(b, tunnel_addr(i), 24, tunnel_gateway(i), &opts.vips)?;
        }
        client_addrs(
            &self.client,
            CLIENT_MAIN_ADDR,
            &self.clients,
            &[format!("route add default via {ROUTER_CLIENT_ADDR}")],
        )?;
        attach_peer_xdp(&self.bridge, vec![("p-lb".into(), self.peer_pin.clone())])
    }

    /// Backends of both kinds.
    pub fn backends(&self) -> usize {
        self.dsr.len() + self.tunnel.len()
    }

    /// Backend `n`'s address (DSR backends first, then tunnel backends).
    pub fn backend_addr(&self, n: usize) -> Ipv4Addr {
        if n < self.dsr.len() {
            dsr_addr(n)
        } else {
            tunnel_addr(n - self.dsr.len())
        }
    }

    /// The index of the backend at `addr`.
    pub fn backend_index(&self, addr: Ipv4Addr) -> Option<usize> {
        (0..self.backends()).find(|&n| self.backend_addr(n) == addr)
    }

    /// Backend `n`'s namespace.
    pub fn backend_ns(&self, n: usize) -> &Netns {
        if n < self.dsr.len() {
            &self.dsr[n]
        } else {
            &self.tunnel[n - self.dsr.len()]
        }
    }

    /// Index (as a backend) of tunnel backend `i`.
    pub fn tunnel_backend(&self, i: usize) -> usize {
        self.dsr.len() + i
    }

    /// Starts (or restarts) backend `n`'s HTTP server; waits until it listens.
    pub fn start_server(&mut self, n: usize) -> Result<()> {
        self.servers[n] = None;
        self.servers[n] = Some(start_backend_server(
            self.backend_ns(n),
            &self.server_bin,
            &self.tmp,
            n,
            None,
        )?);
        Ok(())
    }

    /// Kills backend `n`'s server (its host stays up: connections are refused).
    pub fn kill_server(&mut self, n: usize) {
        self.servers[n] = None;
    }

    /// The router sends `prefix` to the LB too (e.g. the LB's `[tunnel]
    /// source_prefix`, so that errors about its outer packets reach it).
    pub fn route_to_lb(&self, prefix: &str) -> Result<()> {
        self.router
            .ip(&["route", "add", prefix, "via", &LB_ADDR.to_string()])
            .map(|_| ())
    }

    /// Sets the MTU of the router's end of the clients' link only: the
    /// client still advertises the MSS of 1500 bytes, so backends send it
    /// full-size segments, which the router cannot forward. For downloads
    /// only: a veth drops what exceeds its receiver's MTU, so the client's
    /// own full-size frames are lost.
    pub fn set_router_client_mtu(&self, mtu: u32) -> Result<()> {
        self.router
            .ip(&["link", "set", "eth-cl", "mtu", &mtu.to_string()])
            .map(|_| ())
    }

    /// Sets the MTU of tunnel backend `i`'s link with the router (both ends).
    pub fn set_tunnel_mtu(&self, i: usize, mtu: u32) -> Result<()> {
        let m = mtu.to_string();
        self.router
            .ip(&["link", "set", &format!("eth-t{i}"), "mtu", &m])?;
        self.tunnel[i].ip(&["link", "set", "eth0", "mtu", &m])?;
        Ok(())
    }

    /// `stickylb decap attach` on tunnel backend `i`'s eth0 in driver
    /// mode, run as an operator would in its namespace (from the root mount
    /// namespace, so its pins land in the root bpffs, in `decap_pins[i]`);
    /// `args` say what it accepts (`--allow <LB>`). Its output.
    pub fn attach_decap(&self, bin: &Path, i: usize, args: &[&str]) -> Result<String> {
        self.decap(
            bin,
            i,
            &[&["attach", "--xdp-mode", "driver"], args].concat(),
        )
    }

    /// `stickylb decap <args> --interface eth0 --pin-dir <its pins>` on
    /// tunnel backend `i`: its output.
    pub fn decap(&self, bin: &Path, i: usize, args: &[&str]) -> Result<String> {
        sh(self.tunnel[i]
            .command(bin)
            .arg("decap")
            .args(args)
            .args(["--interface", "eth0", "--pin-dir"])
            .arg(&self.decap_pins[i]))
    }

    pub fn control_socket(&self) -> PathBuf {
        self.tmp.join("ctl.sock")
    }

    /// A daemon config on the LB's eth0 in driver mode with `vips`;
    /// `health` is the `[health]` table, `extra` goes at the end.
    pub fn config(&self, vips: &[VipSpec], health: &str, extra: &str) -> String {
        let mut s = format!(
            "interface = \"eth0\"\n\
             xdp_mode = \"driver\"\n\
             pin_path = \"{}\"\n\
             control_socket = \"{}\"\n\
             metrics_listen = \"127.0.0.1:9321\"\n\
             affinity_capacity = 65536\n\n\
             [health]\n{health}\n",
            self.pin.0.display(),
            self.control_socket().display()
        );
        for v in vips {
            s += &format!(
                "\n[[vip]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\nprotocol = \"tcp\"\n\
                 forwarding = \"{}\"\n{}\n",
                v.name, v.address, v.port, v.forwarding, v.extra
            );
            for &n in &v.backends {
                s += &format!(
                    "\n[[vip.backend]]\naddress = \"{}\"\nport = {}\n",
                    self.backend_addr(n),
                    v.port
                );
            }
        }
        s + extra
    }

    /// Starts `stickylb run` in the LB namespace with `config_text`;
    /// returns once its control socket answers.
    pub fn start_daemon(&mut self, bin: &Path, config_text: &str, args: &[&str]) -> Result<()> {
        self.daemon = None;
        self.daemon = Some(Daemon::start_in(
            &self.lb,
            &self.tmp,
            self.control_socket(),
            bin,
            config_text,
            args,
        )?);
        Ok(())
    }

    /// The running daemon; panics if none was started.
    #[track_caller]
    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the daemon was started")
    }

    #[track_caller]
    pub fn daemon_mut(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("the daemon was started")
    }

    /// Starts the daemon again with the config it last ran with.
    pub fn restart_daemon(&mut self, args: &[&str]) -> Result<()> {
        let d = self.daemon.as_mut().ok_or("no daemon was started")?;
        d.restart_in(&self.lb, args)
    }

    pub fn status(&self) -> Result<StatusReply> {
        let v = control::call(&self.control_socket(), &Request::Status)
            .map_err(|e| format!("{e:#}"))?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    /// VIP `name`'s status.
    pub fn vip_status(&self, name: &str) -> Result<VipStatus> {
        self.status()?
            .vips
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| format!("no VIP {name:?} in the status"))
    }

    /// The state of backend `n` in VIP `name`.
    pub fn backend_state(&self, name: &str, n: usize) -> Result<BackendState> {
        let addr = self.backend_addr(n);
        self.vip_status(name)?
            .backends
            .iter()
            .find(|b| *b.address.ip() == addr)
            .map(|b| b.state)
            .ok_or_else(|| format!("backend {addr} not in VIP {name:?}"))
    }

    /// Waits until backend `n` is in `state` in VIP `name`.
    pub fn wait_backend(&self, name: &str, n: usize, state: BackendState, t: Duration) -> bool {
        wait_for(t, || self.backend_state(name, n).is_ok_and(|s| s == state))
    }

    /// `lookup` of `client` on VIP `name`: the backend it names (by index)
    /// and whether that comes from an affinity entry.
    pub fn lookup(&self, name: &str, client: Ipv4Addr) -> Result<(Option<usize>, bool)> {
        let v = self.daemon().call(&Request::Lookup {
            client: client.into(),
            vip: Some(name.into()),
        })?;
        let r: Vec<lb_user::api::LookupResult> =
            serde_json::from_value(v).map_err(|e| e.to_string())?;
        let r = r.first().ok_or("empty lookup reply")?;
        let backend = match r.backend {
            None => None,
            Some(a) => Some(
                self.backend_index(*a.ip())
                    .ok_or_else(|| format!("lookup names an unknown backend {a}"))?,
            ),
        };
        Ok((backend, r.affinity_age_ms.is_some()))
    }

    /// Every namespace of the bed.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut v = vec![&self.client, &self.router, &self.lb];
        v.extend(&self.dsr);
        v.extend(&self.tunnel);
        v.push(&self.bridge);
        v
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        // Processes go before the folder their sockets and logs are in.
        self.daemon = None;
        self.servers.clear();
        let _ = Dataplane::detach_pinned(&self.peer_pin.join(LINK_PIN_NAME));
        let _ = fs::remove_dir_all(&self.peer_pin);
        for p in &self.decap_pins {
            let _ = fs::remove_dir_all(p);
        }
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// A VIP of a routed config.
#[derive(Clone, Debug)]
pub struct VipSpec {
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    /// "dsr", "ipip" or "gue".
    pub forwarding: String,
    /// Backend indices (`Routed::backend_addr`).
    pub backends: Vec<usize>,
    /// More lines of the `[[vip]]` table.
    pub extra: String,
}

/// A backend host: its address on eth0, its gateway, the VIPs on loopback
/// never answered for in ARP (frames to a VIP reach it only from the LB).
fn backend_host(
    ns: &Netns,
    addr: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    vips: &[Ipv4Addr],
) -> Result<()> {
    let mut batch = vec![
        "link set eth0 up".to_owned(),
        format!("addr add {addr}/{prefix} dev eth0"),
    ];
    batch.extend(vips.iter().map(|v| format!("addr add {v}/32 dev lo")));
    batch.push(format!("route add default via {gateway}"));
    ns.ip_batch(&batch)?;
    let mut cmd = ns.command("sysctl");
    cmd.args(["-q", "-w"]);
    for k in ["arp_ignore=1", "arp_announce=2"] {
        for dev in ["all", "eth0"] {
            let (name, value) = k.split_once('=').expect("key=value");
            cmd.arg(format!("net.ipv4.conf.{dev}.{name}={value}"));
        }
    }
    sh(&mut cmd).map(|_| ())
}

/// A TCP test server in a namespace, on `port` of every local address (the
/// VIPs on loopback included), until dropped: a sink reads each connection
/// to its end and answers with the number of bytes read, as decimal text; a
/// source sends each connection `bytes` bytes and closes it.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

#[derive(Clone, Copy)]
enum Serve {
    Sink,
    Source(usize),
}

impl TcpServer {
    /// The sink (uploads).
    pub fn sink(ns: &Netns, port: u16) -> Result<Self> {
        Self::serve(ns, port, Serve::Sink)
    }

    /// The source (downloads) of `bytes` bytes a connection.
    pub fn source(ns: &Netns, port: u16, bytes: usize) -> Result<Self> {
        Self::serve(ns, port, Serve::Source(bytes))
    }

    fn serve(ns: &Netns, port: u16, how: Serve) -> Result<Self> {
        let path = ns.path();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = thread::spawn(move || {
            enter_path(&path);
            let listener = match TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
            {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("bind :{port}: {e}")));
                    return;
                }
            };
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        thread::spawn(move || match how {
                            Serve::Sink => drain_and_answer(s),
                            Serve::Source(n) => send_bytes(s, n),
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|e| format!("test server did not start: {e}"))??;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

fn drain_and_answer(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => return,
        }
    }
    let _ = s.write_all(total.to_string().as_bytes());
}

fn send_bytes(mut s: TcpStream, bytes: usize) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_write_timeout(Some(Duration::from_secs(20)));
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut sent = 0;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len());
        if s.write_all(&chunk[..n]).is_err() {
            return;
        }
        sent += n;
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What one upload (or download) did.
#[derive(Clone, Debug)]
pub struct Upload {
    /// What the sink says it read (a download: what came).
    pub received: u64,
    pub took: Duration,
}

/// Sends `bytes` from `src` to `dst` (a `TcpServer::sink`), in the calling thread's
/// namespace, on one connection bounded by `timeout` as a whole; writes
/// in 64 KiB pieces so that segments leave at the full MSS.
pub fn upload(
    src: Ipv4Addr,
    dst: SocketAddrV4,
    bytes: usize,
    timeout: Duration,
) -> std::io::Result<Upload> {
    use socket2::{Domain, Socket, Type};
    let start = Instant::now();
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
    sock.connect_timeout(&SocketAddr::V4(dst).into(), timeout)?;
    let mut stream: TcpStream = sock.into();
    let left = |what: &str| {
        timeout
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{what}: no answer within {timeout:?}"),
                )
            })
    };
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0;
    while sent < bytes {
        stream.set_write_timeout(Some(left("write")?))?;
        let n = (bytes - sent).min(chunk.len());
        stream.write_all(&chunk[..n])?;
        sent += n;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    stream.set_read_timeout(Some(left("read")?))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let received = answer.trim().parse().map_err(|_| {
        std::io::Error::other(format!("the sink answered {answer:?}, not a byte count"))
    })?;
    Ok(Upload {
        received,
        took: start.elapsed(),
    })
}

/// Reads what a `TcpServer::source` at `dst` sends, from `src` in the calling
/// thread's namespace, bounded by `timeout` as a whole; how many bytes
/// came and how long that took.
pub fn download(src: Ipv4Addr, dst: SocketAddrV4, timeout: Duration) -> std::io::Result<Upload> {
    use socket2::{Domain, Socket, Type};
    let start = Instant::now();
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
    sock.connect_timeout(&SocketAddr::V4(dst).into(), timeout)?;
    let mut stream: TcpStream = sock.into();
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    loop {
        let left = timeout
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{received} bytes after {timeout:?}"),
                )
            })?;
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n as u64,
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "{received} bytes after {} ms: {e}",
                        start.elapsed().as_millis()
                    ),
                ));
            }
        }
    }
    Ok(Upload {
        received,
        took: start.elapsed(),
    })
}

/// The path MTU the kernel of namespace `ns` holds for `dst` (`ip route
/// get`'s cached `mtu`), if it learnt one.
pub fn cached_pmtu(ns: &Netns, dst: Ipv4Addr) -> Result<Option<u32>> {
    let text = ns.ip(&["route", "get", &dst.to_string()])?;
    let words: Vec<&str> = text.split_whitespace().collect();
    Ok(words
        .windows(2)
        .find(|w| w[0] == "mtu")
        .and_then(|w| w[1].parse().ok()))
}
