//! Benchmark section "TCP and HTTP through the load balancer": the same
//! namespaces, the same nginx backends and the same clients, aimed in turn
//! at one backend directly (the ceiling), at stickylb (XDP: DSR, and the
//! IP-in-IP and GUE tunnel modes to backends running `stickylb decap`), at
//! HAProxy (`mode tcp`, `balance source`, `hash-type consistent`) and at
//! nginx's stream module (`hash $remote_addr consistent`). HTTP requests/s
//! and latency percentiles from many client addresses, TCP throughput with
//! iperf3, and the CPU the load balancer spent per million requests.

mod decap;
mod loadgen;
mod procs;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use lb_common::ForwardingMode;
use lb_user::api::BackendState;
use serde_json::{Value, json};

use super::{Ctx, Plot, Section, Table, plot, progress};
use crate::{
    daemon::{Daemon, PinGuard},
    netns::{
        CLIENT_MAIN_ADDR, LB_ADDR, Netns, Topology, TopologyOptions, VIP, backend_addr, backend_of,
        http_get, vip_on_loopback, wait_for,
    },
};
use decap::Decap;
use loadgen::{Load, Outcome, Spec};
use procs::{BpfStats, Proc, ProgStats, WrkResult};

const BACKENDS: usize = 4;
/// Client addresses of the many-client runs: one connection each.
const SOURCES: usize = 64;
const HTTP_PORT: u16 = 80;
const IPERF_PORT: u16 = 5201;
/// The proxies' listen addresses, on the LB's eth0 beside the VIP.
const HAPROXY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 2);
const NGINX_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 3);
/// stickylb's tunnel VIPs (on the LB's eth0 and on the backends' lo, as
/// the DSR VIP).
const VIP_IPIP: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 4);
const VIP_GUE: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 5);
/// wrk's connections (one source address).
const WRK_CONNS: usize = 64;
const HEALTH: &str = "kind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 1\nfall = 3";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Direct,
    Stickylb,
    StickylbIpip,
    StickylbGue,
    Haproxy,
    Nginx,
}

const TARGETS: [Target; 6] = [
    Target::Direct,
    Target::Stickylb,
    Target::StickylbIpip,
    Target::StickylbGue,
    Target::Haproxy,
    Target::Nginx,
];
const TUNNELS: [Target; 2] = [Target::StickylbIpip, Target::StickylbGue];
const PROXIES: [Target; 2] = [Target::Haproxy, Target::Nginx];

impl Target {
    fn key(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Stickylb => "stickylb",
            Self::StickylbIpip => "stickylb_ipip",
            Self::StickylbGue => "stickylb_gue",
            Self::Haproxy => "haproxy",
            Self::Nginx => "nginx_stream",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Stickylb => "stickylb",
            Self::StickylbIpip => "stickylb ipip",
            Self::StickylbGue => "stickylb gue",
            Self::Haproxy => "HAProxy",
            Self::Nginx => "nginx stream",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct to one backend (ceiling)",
            Self::Stickylb => "stickylb (XDP, DSR)",
            Self::StickylbIpip => "stickylb ipip",
            Self::StickylbGue => "stickylb gue",
            Self::Haproxy => "HAProxy (mode tcp, balance source)",
            Self::Nginx => "nginx stream (hash $remote_addr)",
        }
    }

    fn addr(self) -> Ipv4Addr {
        match self {
            Self::Direct => backend_addr(0),
            Self::Stickylb => VIP,
            Self::StickylbIpip => VIP_IPIP,
            Self::StickylbGue => VIP_GUE,
            Self::Haproxy => HAPROXY_ADDR,
            Self::Nginx => NGINX_ADDR,
        }
    }

    /// One of stickylb's VIPs: its CPU is the XDP program's and the daemon's.
    fn is_stickylb(self) -> bool {
        matches!(
            self,
            Self::Stickylb | Self::StickylbIpip | Self::StickylbGue
        )
    }

    fn tunnel(self) -> Option<ForwardingMode> {
        match self {
            Self::StickylbIpip => Some(ForwardingMode::Ipip),
            Self::StickylbGue => Some(ForwardingMode::Gue),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    KeepAlive,
    NewConn,
}

const MODES: [Mode; 2] = [Mode::KeepAlive, Mode::NewConn];

impl Mode {
    fn key(self) -> &'static str {
        match self {
            Self::KeepAlive => "keepalive",
            Self::NewConn => "new_connection",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::KeepAlive => "keep-alive",
            Self::NewConn => "new connection per request",
        }
    }
}

struct Plan {
    rounds: usize,
    warmup: Duration,
    measure: Duration,
    wrk_secs: u64,
    iperf_secs: u64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 1,
                warmup: Duration::from_millis(300),
                measure: Duration::from_millis(1000),
                wrk_secs: 1,
                iperf_secs: 1,
            }
        } else {
            Self {
                rounds: 3,
                warmup: Duration::from_millis(500),
                measure: Duration::from_secs(3),
                wrk_secs: 2,
                iperf_secs: 2,
            }
        }
    }
}

/// Processes whose CPU is read around each run.
struct Pids {
    haproxy: u32,
    nginx: u32,
    daemon: Option<u32>,
    /// Program id of the rig's XDP_PASS program on the LB's bridge port.
    peer_prog: Option<u32>,
    /// Program ids of the backends' decap programs, while attached.
    decap_progs: Vec<u32>,
}

/// CPU counters at one instant.
struct Snap {
    at: Instant,
    cpu: [u64; 10],
    haproxy: u64,
    nginx: u64,
    daemon: u64,
    xdp: (u64, u64),
    peer_xdp: (u64, u64),
    /// The backends' decap programs, summed.
    decap_xdp: (u64, u64),
}

fn snap(p: &Pids) -> Snap {
    let xdp = p
        .daemon
        .map(|d| procs::prog_sum(&procs::xdp_progs(d)))
        .unwrap_or_default();
    Snap {
        at: Instant::now(),
        cpu: procs::cpu_stat(),
        haproxy: procs::group_ticks(p.haproxy),
        nginx: procs::group_ticks(p.nginx),
        daemon: p.daemon.map(procs::group_ticks).unwrap_or(0),
        xdp,
        // The rig's XDP_PASS program on the LB's bridge port (a rig detail:
        // see docs/testing.md), found by id through its pinned link: no
        // process holds it.
        peer_xdp: p
            .peer_prog
            .and_then(procs::prog_by_id)
            .map_or((0, 0), |s| (s.run_time_ns, s.run_cnt)),
        decap_xdp: p
            .decap_progs
            .iter()
            .filter_map(|&id| procs::prog_by_id(id))
            .fold((0, 0), |(ns, n), s| (ns + s.run_time_ns, n + s.run_cnt)),
    }
}

/// Many-client HTTP results of one run of one (mode, target).
#[derive(Default)]
struct Acc {
    out: Outcome,
    secs: f64,
    softirq_ticks: u64,
    busy_ticks: u64,
    /// utime+stime of the LB's process(es) (the daemon for stickylb).
    lb_ticks: u64,
    xdp_ns: u64,
    xdp_runs: u64,
    peer_ns: u64,
    peer_runs: u64,
    /// The backends' decap programs (tunnel targets).
    decap_ns: u64,
    decap_runs: u64,
}

impl Acc {
    fn add(&mut self, t: Target, out: Outcome, a: &Snap, b: &Snap) {
        self.out.merge(out);
        self.secs += (b.at - a.at).as_secs_f64();
        let d = |i: usize| b.cpu[i].saturating_sub(a.cpu[i]);
        let total: u64 = (0..10).map(d).sum();
        self.softirq_ticks += d(6);
        self.busy_ticks += total.saturating_sub(d(3) + d(4));
        self.lb_ticks += match t {
            Target::Direct => 0,
            Target::Stickylb | Target::StickylbIpip | Target::StickylbGue => {
                b.daemon.saturating_sub(a.daemon)
            }
            Target::Haproxy => b.haproxy.saturating_sub(a.haproxy),
            Target::Nginx => b.nginx.saturating_sub(a.nginx),
        };
        if t.is_stickylb() {
            self.xdp_ns += b.xdp.0.saturating_sub(a.xdp.0);
            self.xdp_runs += b.xdp.1.saturating_sub(a.xdp.1);
        }
        self.peer_ns += b.peer_xdp.0.saturating_sub(a.peer_xdp.0);
        self.peer_runs += b.peer_xdp.1.saturating_sub(a.peer_xdp.1);
        self.decap_ns += b.decap_xdp.0.saturating_sub(a.decap_xdp.0);
        self.decap_runs += b.decap_xdp.1.saturating_sub(a.decap_xdp.1);
    }

    fn req_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.out.requests as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Milliseconds of `x_ms` per million requests.
    fn per_m(&self, x_ms: f64) -> f64 {
        if self.out.requests == 0 {
            f64::NAN
        } else {
            x_ms * 1e6 / self.out.requests as f64
        }
    }

    fn ticks_ms(ticks: u64) -> f64 {
        ticks as f64 * 1000.0 / procs::clk_tck()
    }

    /// The LB's CPU in ms: the proxy's process time, or for stickylb the
    /// XDP program's run time plus the daemon's process time.
    fn lb_ms(&self) -> f64 {
        Self::ticks_ms(self.lb_ticks) + self.xdp_ns as f64 / 1e6
    }
}

/// Everything the section runs, torn down in reverse order of declaration
/// (processes first, then the daemon and its pins, then the namespaces).
pub fn run(ctx: &Ctx) -> Result<Section, String> {
    let plan = Plan::new(ctx.quick);
    for tool in ["nginx", "haproxy", "wrk", "iperf3"] {
        if !["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists())
        {
            return Err(format!(
                "{tool} is not installed (cargo xtask bench installs it)"
            ));
        }
    }
    if !Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists() {
        return Err("nginx's stream module is not installed (libnginx-mod-stream)".into());
    }

    progress("tcp: building the namespaces");
    let mut topo = Topology::up(
        &TopologyOptions {
            backends: BACKENDS,
            clients: SOURCES,
            redis: None,
        },
        &ctx.backend_bin,
    )?;
    for ns in [&topo.client, &topo.lb] {
        // New-connection runs open tens of thousands of connections: the
        // client closes first, and the proxies close first toward backends.
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    }
    for a in [HAPROXY_ADDR, NGINX_ADDR, VIP_IPIP, VIP_GUE] {
        topo.lb
            .ip(&["addr", "add", &format!("{a}/32"), "dev", "eth0"])?;
    }
    // The tunnel modes' next hop comes from the kernel's FIB, which the XDP
    // helper only consults for an interface with forwarding on.
    topo.lb.sysctl("net.ipv4.conf.eth0.forwarding", "1")?;
    // The LB holds the tunnel VIPs (the clients share its segment and ARP
    // for them), and the health checks through the tunnel are answered from
    // the VIP: without accept_local the kernel drops those answers as
    // coming from one of its own addresses.
    topo.lb.sysctl("net.ipv4.conf.eth0.accept_local", "1")?;
    for b in &topo.backends {
        for v in [VIP_IPIP, VIP_GUE] {
            vip_on_loopback(b, v)?;
        }
    }

    // nginx backends instead of slb-backend.
    let workers = procs::nproc();
    let mut backends = Vec::new();
    for i in 0..BACKENDS {
        topo.kill_server(i);
        let dir = topo.tmp.join(format!("nginx-b{i}"));
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let conf = dir.join("nginx.conf");
        fs::write(&conf, procs::nginx_backend_conf(&dir, i, workers)).map_err(|e| e.to_string())?;
        backends.push(start_nginx(
            &topo.backends[i],
            &format!("nginx backend {i}"),
            &dir,
        )?);
    }
    for (i, b) in backends.iter_mut().enumerate() {
        wait_http(&topo, SocketAddrV4::new(backend_addr(i), HTTP_PORT), b)?;
    }
    let mut iperf = Proc::spawn(
        &topo.backends[0],
        "iperf3 server",
        "iperf3",
        &["-s", "-p", &IPERF_PORT.to_string()],
        &topo.tmp.join("iperf3-server.log"),
    )?;
    if !wait_for(Duration::from_secs(5), || {
        procs::listening(&topo.backends[0], IPERF_PORT)
    }) {
        iperf.check()?;
        return Err("iperf3 server did not listen".into());
    }

    progress("tcp: starting HAProxy and nginx stream");
    let hdir = topo.tmp.join("haproxy");
    fs::create_dir_all(&hdir).map_err(|e| e.to_string())?;
    let hconf = hdir.join("haproxy.cfg");
    fs::write(
        &hconf,
        procs::haproxy_conf(HAPROXY_ADDR, BACKENDS, HTTP_PORT, IPERF_PORT),
    )
    .map_err(|e| e.to_string())?;
    let hconf_s = hconf.to_string_lossy().into_owned();
    procs::run_bounded(
        topo.lb.command("haproxy").args(["-c", "-f", &hconf_s]),
        Duration::from_secs(10),
        &hdir.join("check.out"),
    )?;
    let mut haproxy = Proc::spawn(
        &topo.lb,
        "HAProxy",
        "haproxy",
        &["-db", "-f", &hconf_s],
        &hdir.join("haproxy.log"),
    )?;
    let ndir = topo.tmp.join("nginx-stream");
    fs::create_dir_all(&ndir).map_err(|e| e.to_string())?;
    fs::write(
        ndir.join("nginx.conf"),
        procs::nginx_stream_conf(&ndir, NGINX_ADDR, BACKENDS, HTTP_PORT, IPERF_PORT),
    )
    .map_err(|e| e.to_string())?;
    let mut nginx = start_nginx(&topo.lb, "nginx stream", &ndir)?;
    wait_http(
        &topo,
        SocketAddrV4::new(HAPROXY_ADDR, HTTP_PORT),
        &mut haproxy,
    )?;
    wait_http(&topo, SocketAddrV4::new(NGINX_ADDR, HTTP_PORT), &mut nginx)?;

    progress("tcp: starting the stickylb daemon");
    let pin = PinGuard(topo.daemon_pin());
    let mut config = topo.config(&pin.0, HEALTH, "");
    let _ = write!(
        config,
        "\n[[vip]]\nname = \"iperf\"\naddress = \"{VIP}\"\nport = {IPERF_PORT}\nprotocol = \"tcp\"\n\
         table_size = 1021\n\n[[vip.backend]]\naddress = \"{}\"\nport = {IPERF_PORT}\n\n\
         [vip.backend.health]\nport = {HTTP_PORT}\n",
        backend_addr(0)
    );
    for (name, vip, mode) in [("web-ipip", VIP_IPIP, "ipip"), ("web-gue", VIP_GUE, "gue")] {
        let _ = write!(
            config,
            "\n[[vip]]\nname = \"{name}\"\naddress = \"{vip}\"\nport = {HTTP_PORT}\n\
             protocol = \"tcp\"\nforwarding = \"{mode}\"\n"
        );
        for i in 0..BACKENDS {
            let _ = write!(
                config,
                "\n[[vip.backend]]\naddress = \"{}\"\nport = {HTTP_PORT}\n",
                backend_addr(i)
            );
        }
    }
    let _ = write!(
        config,
        "\n[tunnel]\nsource = \"{LB_ADDR}\"\ngue_port = {}\nttl = {}\n",
        decap::GUE_PORT,
        lb_common::DEFAULT_TUNNEL_TTL
    );
    // The backends decapsulate before the daemon starts: health checks
    // through the tunnel, where the daemon makes them, need it.
    let mut decap = Decap::new(&topo, &ctx.stickylb_bin)?;
    decap.attach(&topo)?;
    let mut daemon = Daemon::start(&topo, &ctx.stickylb_bin, &config, &[])?;
    let stats = BpfStats::enable()?;

    let peer_link = topo.peer_pin.join(lb_user::dataplane::LINK_PIN_NAME);
    let peer_prog = lb_user::dataplane::Dataplane::pinned_link_info(&peer_link)
        .map(|(prog, _)| prog)
        .map_err(|e| format!("read the rig's peer XDP link {}: {e}", peer_link.display()))?;
    let mut pids = Pids {
        haproxy: haproxy.pid(),
        nginx: nginx.pid(),
        daemon: None,
        peer_prog: Some(peer_prog),
        decap_progs: Vec::new(),
    };
    let mut res = Results::default();
    let mut xdp_seen = String::new();
    let mut tunnel_written_by = "";
    for round in 0..plan.rounds {
        // stickylb, with its XDP program attached.
        if round > 0 {
            decap.attach(&topo)?;
            daemon.restart(&topo, &[])?;
        }
        if !daemon.wait_backends(Duration::from_secs(10), |s, _| s == BackendState::Up) {
            return Err(format!(
                "stickylb's backends did not come up: {:?}\n{}",
                daemon.vips(),
                daemon.log_text()
            ));
        }
        tunnel_written_by = decap::ensure_tunnel_settings(&pin.0)?;
        for v in [VIP, VIP_IPIP, VIP_GUE] {
            wait_vip(&topo, &daemon, v)?;
        }
        let dpid = daemon.child.as_ref().map(|c| c.pid()).ok_or("no daemon")?;
        let progs: Vec<ProgStats> = procs::xdp_progs(dpid);
        if progs.is_empty() {
            return Err(format!(
                "found no XDP program fd in the daemon (pid {dpid})'s /proc fdinfo"
            ));
        }
        xdp_seen = format!("{progs:?}");
        pids.daemon = Some(dpid);
        // The tunnel modes first, while the backends decapsulate; then DSR
        // with the decap program detached, so that the DSR row (and every
        // row after it) is measured on the same backends as before.
        pids.decap_progs = decap.programs()?;
        for t in TUNNELS {
            let before = decap.counts(&topo)?;
            res.measure(&topo, &pids, t, &plan)?;
            let after = decap.counts(&topo)?;
            res.note_decap(t, &before, &after)?;
        }
        decap.detach(&topo)?;
        pids.decap_progs.clear();
        res.measure(&topo, &pids, Target::Stickylb, &plan)?;
        // The others with no XDP program on the LB's eth0: the proxies'
        // frames would otherwise also pass through stickylb's program.
        daemon.unload(&topo)?;
        pids.daemon = None;
        thread::sleep(Duration::from_millis(200));
        let link = topo.lb.ip(&["link", "show", "eth0"])?;
        if link.contains("xdp") {
            return Err(format!(
                "XDP still attached after stopping the daemon: {link}"
            ));
        }
        for t in [Target::Direct, Target::Haproxy, Target::Nginx] {
            res.measure(&topo, &pids, t, &plan)?;
        }
        haproxy.check()?;
        nginx.check()?;
        iperf.check()?;
    }
    let stats_how = stats.how();
    drop(stats);

    Ok(report(
        ctx,
        &plan,
        &res,
        stats_how,
        &xdp_seen,
        tunnel_written_by,
    ))
}

/// Every run of every round.
#[derive(Default)]
struct Results {
    http: BTreeMap<(&'static str, &'static str), Vec<Acc>>,
    wrk: BTreeMap<&'static str, Vec<WrkResult>>,
    gbits: BTreeMap<&'static str, Vec<f64>>,
    /// Tunnel targets: frames the backends' decap programs decapsulated
    /// during each round's runs, summed over the backends.
    decap: BTreeMap<&'static str, Vec<u64>>,
}

impl Results {
    /// One round's runs against `t`: many-client HTTP in both modes, wrk
    /// from one address, iperf3.
    fn measure(
        &mut self,
        topo: &Topology,
        pids: &Pids,
        t: Target,
        plan: &Plan,
    ) -> Result<(), String> {
        for mode in MODES {
            let (out, a, b) = http_run(topo, pids, t, mode, plan)?;
            let mut r = Acc::default();
            r.add(t, out, &a, &b);
            self.http.entry((mode.key(), t.key())).or_default().push(r);
        }
        let w = wrk_run(topo, t, plan)?;
        self.wrk.entry(t.key()).or_default().push(w);
        // Not through a tunnel: MTU-sized segments no longer fit the wire
        // once encapsulated (see the method).
        if t.tunnel().is_none() {
            let g = iperf_run(topo, t, plan)?;
            self.gbits.entry(t.key()).or_default().push(g);
        }
        Ok(())
    }

    /// Records what the backends decapsulated during `t`'s runs, and fails
    /// unless they decapsulated frames of `t`'s kind: that its requests
    /// took the tunnel.
    fn note_decap(
        &mut self,
        t: Target,
        before: &decap::Counts,
        after: &decap::Counts,
    ) -> Result<(), String> {
        let n = match t.tunnel() {
            Some(ForwardingMode::Ipip) => after.ipip - before.ipip,
            Some(ForwardingMode::Gue) => after.gue - before.gue,
            _ => return Ok(()),
        };
        let rejected = after.rejected - before.rejected;
        if n == 0 || rejected != 0 {
            return Err(format!(
                "{}: the backends decapsulated {n} frames of its kind and rejected {rejected}",
                t.short()
            ));
        }
        self.decap.entry(t.key()).or_default().push(n);
        Ok(())
    }

    /// The median round (by req/s) of a (mode, target).
    fn http(&self, m: Mode, t: Target) -> Option<&Acc> {
        median_by(self.http.get(&(m.key(), t.key()))?, Acc::req_s)
    }

    fn wrk(&self, t: Target) -> Option<&WrkResult> {
        median_by(self.wrk.get(t.key())?, |w| w.req_s)
    }

    fn gbits(&self, t: Target) -> Option<f64> {
        median_by(self.gbits.get(t.key())?, |g| *g).copied()
    }
}

/// The median element by `key` (the lower one of an even count).
fn median_by<T>(v: &[T], key: impl Fn(&T) -> f64) -> Option<&T> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| key(&v[a]).total_cmp(&key(&v[b])));
    idx.get(v.len().saturating_sub(1) / 2).map(|&i| &v[i])
}

/// Starts nginx with a private prefix, config, pid and error log in `dir`.
fn start_nginx(ns: &Netns, name: &str, dir: &Path) -> Result<Proc, String> {
    let d = dir.to_string_lossy().into_owned();
    let conf = dir.join("nginx.conf").to_string_lossy().into_owned();
    let err = dir.join("error.log").to_string_lossy().into_owned();
    procs::run_bounded(
        ns.command("nginx")
            .args(["-t", "-p", &d, "-c", &conf, "-e", &err]),
        Duration::from_secs(10),
        &dir.join("check.out"),
    )?;
    Proc::spawn(
        ns,
        name,
        "nginx",
        &["-p", &d, "-c", &conf, "-e", &err],
        &dir.join("stdout.log"),
    )
}

/// One GET from a client address; which backend answered.
fn probe(topo: &Topology, src: Ipv4Addr, dst: SocketAddrV4) -> Option<usize> {
    topo.client.enter(move || {
        http_get(src, dst, "/", None, Duration::from_secs(1))
            .ok()
            .filter(|a| a.status == 200)
            .and_then(|a| backend_of(&a))
    })
}

/// Waits until `dst` answers HTTP 200 from the client namespace.
fn wait_http(topo: &Topology, dst: SocketAddrV4, p: &mut Proc) -> Result<(), String> {
    let src = topo.clients[0];
    if wait_for(Duration::from_secs(10), || probe(topo, src, dst).is_some()) {
        return Ok(());
    }
    p.check()?;
    Err(format!(
        "{} does not answer on {dst}; log:\n{}",
        p.name,
        procs::tail(&p.log)
    ))
}

fn wait_vip(topo: &Topology, d: &Daemon, vip: Ipv4Addr) -> Result<(), String> {
    let src = topo.clients[0];
    let dst = SocketAddrV4::new(vip, HTTP_PORT);
    if wait_for(Duration::from_secs(10), || probe(topo, src, dst).is_some()) {
        return Ok(());
    }
    Err(format!(
        "no answer through stickylb on {dst}; daemon log:\n{}",
        d.log_text()
    ))
}

/// One many-client HTTP run: warm-up, then the measured window with CPU
/// counters read at both ends.
fn http_run(
    topo: &Topology,
    pids: &Pids,
    t: Target,
    mode: Mode,
    plan: &Plan,
) -> Result<(Outcome, Snap, Snap), String> {
    progress(format!("tcp: HTTP {} → {}", mode.label(), t.short()));
    let spec = Spec {
        target: SocketAddrV4::new(t.addr(), HTTP_PORT),
        sources: topo.clients[..SOURCES].to_vec(),
        conns: SOURCES,
        new_conn: mode == Mode::NewConn,
        threads: procs::nproc(),
    };
    let load = Load::start(topo.client.path(), &spec);
    thread::sleep(plan.warmup);
    load.measure();
    let a = snap(pids);
    thread::sleep(plan.measure);
    load.stop();
    let b = snap(pids);
    let out = load.finish()?;
    if out.requests == 0 {
        return Err(format!(
            "no request answered by {} ({}): {:?}",
            t.short(),
            mode.label(),
            out.first_error
        ));
    }
    Ok((out, a, b))
}

/// wrk from the client namespace's main address (one source address).
fn wrk_run(topo: &Topology, t: Target, plan: &Plan) -> Result<WrkResult, String> {
    progress(format!("tcp: wrk (one client address) → {}", t.short()));
    let url = format!("http://{}:{HTTP_PORT}/", t.addr());
    let out = procs::run_bounded(
        topo.client.command("wrk").args([
            "-t",
            &procs::nproc().to_string(),
            "-c",
            &WRK_CONNS.to_string(),
            "-d",
            &format!("{}s", plan.wrk_secs),
            "--timeout",
            "2s",
            "--latency",
            &url,
        ]),
        Duration::from_secs(plan.wrk_secs + 20),
        &topo.tmp.join(format!("wrk-{}.out", t.key())),
    )?;
    procs::parse_wrk(&out)
}

/// iperf3, one TCP stream from the client to the iperf3 server on backend 0.
fn iperf_run(topo: &Topology, t: Target, plan: &Plan) -> Result<f64, String> {
    progress(format!("tcp: iperf3 → {}", t.short()));
    let out = procs::run_bounded(
        topo.client.command("iperf3").args([
            "-c",
            &t.addr().to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &plan.iperf_secs.to_string(),
            "-B",
            &topo.clients[0].to_string(),
            "--connect-timeout",
            "3000",
            "-J",
        ]),
        Duration::from_secs(plan.iperf_secs + 20),
        &topo.tmp.join(format!("iperf3-{}.json", t.key())),
    )?;
    procs::parse_iperf(&out).map(|bps| bps / 1e9)
}

fn k(x: f64) -> String {
    if !x.is_finite() {
        "—".into()
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        let r = a / b;
        if r >= 100.0 {
            format!("{r:.0}×")
        } else {
            format!("{r:.2}×")
        }
    } else {
        "—".into()
    }
}

fn ms(x: f64) -> String {
    if !x.is_finite() {
        "—".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn num(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

fn shares(o: &Outcome) -> String {
    let total: u64 = o.per_backend.iter().sum();
    if total == 0 {
        return "—".into();
    }
    o.per_backend
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| format!("b{i} {:.0}%", *n as f64 * 100.0 / total as f64))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn report(
    ctx: &Ctx,
    plan: &Plan,
    res: &Results,
    stats_how: &str,
    xdp_seen: &str,
    tunnel_written_by: &str,
) -> Section {
    let get = |m: Mode, t: Target| res.http(m, t);
    let per_round = |m: Mode, t: Target| -> Vec<f64> {
        res.http
            .get(&(m.key(), t.key()))
            .map(|v| v.iter().map(Acc::req_s).collect())
            .unwrap_or_default()
    };
    let rps = |m: Mode, t: Target| get(m, t).map_or(f64::NAN, Acc::req_s);
    let mut tables = Vec::new();
    let mut headlines = Vec::new();
    let mut json_http = serde_json::Map::new();

    for mode in MODES {
        let direct = rps(mode, Target::Direct);
        let sticky = rps(mode, Target::Stickylb);
        let mut rows = Vec::new();
        let mut jm = serde_json::Map::new();
        for t in TARGETS {
            let Some(a) = get(mode, t) else { continue };
            let mut o = a.out.clone();
            let (p50, p90, p99) = (
                o.percentile_ms(50.0),
                o.percentile_ms(90.0),
                o.percentile_ms(99.0),
            );
            let r = a.req_s();
            rows.push(vec![
                t.label().into(),
                k(r),
                ratio(r, direct),
                if PROXIES.contains(&t) {
                    ratio(sticky, r)
                } else {
                    "".into()
                },
                ms(p50),
                ms(p99),
                format!("{}", o.errors),
                shares(&o),
                format!("{}", o.unsticky_sources()),
                per_round(mode, t)
                    .iter()
                    .map(|x| k(*x))
                    .collect::<Vec<_>>()
                    .join(" / "),
            ]);
            let tck = |x: u64| Acc::ticks_ms(x);
            jm.insert(
                t.key().into(),
                json!({
                    "requests": o.requests,
                    "seconds": a.secs,
                    "req_per_s": num(r),
                    "req_per_s_each_round": per_round(mode, t).into_iter().map(num).collect::<Vec<_>>(),
                    "ratio_to_direct": num(r / direct),
                    "latency_ms": {"p50": num(p50), "p90": num(p90), "p99": num(p99)},
                    "errors": o.errors,
                    "first_error": o.first_error,
                    "server_closed_keepalive": o.server_closes,
                    "connects": o.connects,
                    "answers_per_backend": o.per_backend.iter().take(BACKENDS).collect::<Vec<_>>(),
                    "client_addresses_on_more_than_one_backend": o.unsticky_sources(),
                    "lb_process_cpu_ms": tck(a.lb_ticks),
                    "xdp_run_time_ns": a.xdp_ns,
                    "xdp_run_cnt": a.xdp_runs,
                    "lb_cpu_ms_per_1m_requests": if t == Target::Direct { Value::Null } else { num(a.per_m(a.lb_ms())) },
                    "machine_softirq_ms_per_1m_requests": num(a.per_m(tck(a.softirq_ticks))),
                    "machine_busy_cpu_ms_per_1m_requests": num(a.per_m(tck(a.busy_ticks))),
                    "rig_peer_xdp_run_time_ns": a.peer_ns,
                    "rig_peer_xdp_run_cnt": a.peer_runs,
                    "backends_decap_xdp_run_time_ns": a.decap_ns,
                    "backends_decap_xdp_run_cnt": a.decap_runs,
                }),
            );
        }
        json_http.insert(mode.key().into(), Value::Object(jm));
        tables.push(Table {
            title: format!(
                "HTTP, {}: {SOURCES} client addresses, one connection each (our epoll client)",
                mode.label()
            ),
            headers: [
                "target",
                "req/s",
                "× direct",
                "stickylb ×",
                "p50 ms",
                "p99 ms",
                "errors",
                "answers per backend",
                "addresses on >1 backend",
                "req/s each round",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        });
        let (h, n) = (rps(mode, Target::Haproxy), rps(mode, Target::Nginx));
        headlines.push(format!(
            "HTTP {} ({SOURCES} client addresses) through stickylb: {} req/s = {} direct; HAProxy {} (stickylb {}); nginx stream {} ({})",
            mode.label(),
            k(sticky),
            ratio(sticky, direct),
            k(h),
            ratio(sticky, h),
            k(n),
            ratio(sticky, n),
        ));
        let lat = |t: Target| {
            get(mode, t).map_or_else(
                || "—".to_owned(),
                |a| {
                    let mut o = a.out.clone();
                    format!(
                        "p50 {} / p99 {} ms",
                        ms(o.percentile_ms(50.0)),
                        ms(o.percentile_ms(99.0))
                    )
                },
            )
        };
        let (i, g) = (
            rps(mode, Target::StickylbIpip),
            rps(mode, Target::StickylbGue),
        );
        headlines.push(format!(
            "HTTP {} through stickylb's tunnel modes (encapsulation at the LB, `stickylb decap` on \
             the backends): ipip {} req/s = {} DSR ({}), gue {} = {} ({}); DSR {}",
            mode.label(),
            k(i),
            ratio(i, sticky),
            lat(Target::StickylbIpip),
            k(g),
            ratio(g, sticky),
            lat(Target::StickylbGue),
            lat(Target::Stickylb),
        ));
    }

    // CPU per million requests.
    let mut cpu_rows = Vec::new();
    let mut per_cpu = Vec::new();
    for mode in MODES {
        let direct_busy =
            get(mode, Target::Direct).map_or(f64::NAN, |a| a.per_m(Acc::ticks_ms(a.busy_ticks)));
        let lb_rate = |t: Target| {
            get(mode, t).map_or(f64::NAN, |a| a.out.requests as f64 / (a.lb_ms() / 1000.0))
        };
        let s_rate = lb_rate(Target::Stickylb);
        for t in TARGETS {
            let Some(a) = get(mode, t) else { continue };
            let lb = a.per_m(a.lb_ms());
            let what = match t {
                Target::Direct => "—".to_owned(),
                Target::Stickylb | Target::StickylbIpip | Target::StickylbGue => {
                    let mut w = format!(
                        "{} (XDP {} + daemon {}; {:.1} XDP runs/request, {:.0} ns/run)",
                        ms(lb),
                        ms(a.per_m(a.xdp_ns as f64 / 1e6)),
                        ms(a.per_m(Acc::ticks_ms(a.lb_ticks))),
                        a.xdp_runs as f64 / a.out.requests.max(1) as f64,
                        a.xdp_ns as f64 / a.xdp_runs.max(1) as f64,
                    );
                    if t.tunnel().is_some() {
                        let _ = write!(
                            w,
                            "; on the backends, not in the LB's figure: decap {} ({:.1} runs/request, {:.0} ns/run)",
                            ms(a.per_m(a.decap_ns as f64 / 1e6)),
                            a.decap_runs as f64 / a.out.requests.max(1) as f64,
                            a.decap_ns as f64 / a.decap_runs.max(1) as f64,
                        );
                    }
                    w
                }
                _ => format!("{} (process)", ms(lb)),
            };
            let busy = a.per_m(Acc::ticks_ms(a.busy_ticks));
            cpu_rows.push(vec![
                mode.label().into(),
                t.label().into(),
                what,
                if t == Target::Direct {
                    "—".into()
                } else {
                    k(lb_rate(t))
                },
                if PROXIES.contains(&t) {
                    ratio(s_rate, lb_rate(t))
                } else {
                    "".into()
                },
                ms(a.per_m(Acc::ticks_ms(a.softirq_ticks))),
                ms(busy),
                if t == Target::Direct {
                    "".into()
                } else {
                    ms(busy - direct_busy)
                },
            ]);
        }
        let (h, n) = (lb_rate(Target::Haproxy), lb_rate(Target::Nginx));
        // The whole rig's CPU that routing through each LB added per request
        // (machine busy time minus direct's): one measure for all three,
        // unlike the LB columns (XDP run time vs process time).
        let added = |t: Target| {
            get(mode, t).map_or(f64::NAN, |a| {
                a.per_m(Acc::ticks_ms(a.busy_ticks)) - direct_busy
            })
        };
        let s_added = added(Target::Stickylb);
        per_cpu.push(format!(
            "{}: stickylb {} req per LB CPU-second (XDP program run time + daemon; ipip {}, gue \
             {}), HAProxy {} (stickylb {}), nginx stream {} ({}); whole-machine CPU added per \
             request over direct, the like-for-like measure: HAProxy {} and nginx stream {} \
             stickylb's",
            mode.label(),
            k(s_rate),
            k(lb_rate(Target::StickylbIpip)),
            k(lb_rate(Target::StickylbGue)),
            k(h),
            ratio(s_rate, h),
            k(n),
            ratio(s_rate, n),
            ratio(added(Target::Haproxy), s_added),
            ratio(added(Target::Nginx), s_added),
        ));
    }
    headlines.push(format!(
        "stickylb vs HAProxy and nginx, req/s per CPU in the load balancer (the XDP figure \
         leaves out the veth driver's work around the program; see the method) — {}",
        per_cpu.join("; ")
    ));
    tables.push(Table {
        title: "CPU per million requests (the many-client runs above)".into(),
        headers: [
            "mode",
            "target",
            "LB CPU ms per 1M requests",
            "requests per LB CPU-second",
            "stickylb ×",
            "machine softirq ms per 1M",
            "machine busy CPU ms per 1M",
            "busy − direct",
        ]
        .map(String::from)
        .to_vec(),
        rows: cpu_rows,
    });

    // wrk, one client address.
    let wd = res.wrk(Target::Direct).map_or(f64::NAN, |w| w.req_s);
    let ws = res.wrk(Target::Stickylb).map_or(f64::NAN, |w| w.req_s);
    let mut wrows = Vec::new();
    let mut jw = serde_json::Map::new();
    for t in TARGETS {
        let Some(w) = res.wrk(t) else { continue };
        let each: Vec<f64> = res.wrk[t.key()].iter().map(|w| w.req_s).collect();
        wrows.push(vec![
            t.label().into(),
            k(w.req_s),
            ratio(w.req_s, wd),
            if PROXIES.contains(&t) {
                ratio(ws, w.req_s)
            } else {
                "".into()
            },
            ms(w.p50_ms),
            ms(w.p99_ms),
            w.errors.to_string(),
            each.iter().map(|x| k(*x)).collect::<Vec<_>>().join(" / "),
        ]);
        jw.insert(
            t.key().into(),
            json!({"req_per_s": num(w.req_s), "req_per_s_each_round": each.iter().map(|x| num(*x)).collect::<Vec<_>>(), "p50_ms": num(w.p50_ms), "p99_ms": num(w.p99_ms), "errors": w.errors}),
        );
    }
    tables.push(Table {
        title: format!(
            "HTTP keep-alive with wrk from one client address ({} threads, {WRK_CONNS} connections, {} s): all of it lands on one backend",
            procs::nproc(),
            plan.wrk_secs
        ),
        headers: ["target", "req/s", "× direct", "stickylb ×", "p50 ms", "p99 ms", "errors", "req/s each round"]
            .map(String::from)
            .to_vec(),
        rows: wrows,
    });

    // iperf3.
    let gd = res.gbits(Target::Direct).unwrap_or(f64::NAN);
    let gs = res.gbits(Target::Stickylb).unwrap_or(f64::NAN);
    let mut irows = Vec::new();
    for t in TARGETS {
        let Some(g) = res.gbits(t) else {
            continue;
        };
        irows.push(vec![
            t.label().into(),
            format!("{g:.2}"),
            ratio(g, gd),
            if PROXIES.contains(&t) {
                ratio(gs, g)
            } else {
                "".into()
            },
            res.gbits[t.key()]
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" / "),
        ]);
    }
    tables.push(Table {
        title: format!(
            "TCP throughput, iperf3, one stream client → server for {} s",
            plan.iperf_secs
        ),
        headers: ["target", "Gbit/s", "× direct", "stickylb ×", "each round"]
            .map(String::from)
            .to_vec(),
        rows: irows,
    });
    let (gh, gn) = (
        res.gbits(Target::Haproxy).unwrap_or(f64::NAN),
        res.gbits(Target::Nginx).unwrap_or(f64::NAN),
    );
    headlines.push(format!(
        "TCP throughput (iperf3, one stream) through stickylb: {gs:.2} Gbit/s = {} direct; HAProxy {gh:.2} (stickylb {}); nginx stream {gn:.2} ({})",
        ratio(gs, gd),
        ratio(gs, gh),
        ratio(gs, gn)
    ));

    // Plots.
    let mut rps_bars = Vec::new();
    let mut cpu_bars = Vec::new();
    for mode in MODES {
        for t in TARGETS {
            if let Some(a) = get(mode, t) {
                rps_bars.push((format!("{} · {}", mode.label(), t.short()), a.req_s()));
                if t != Target::Direct {
                    cpu_bars.push((
                        format!("{} · {}", mode.label(), t.short()),
                        a.per_m(a.lb_ms()),
                    ));
                }
            }
        }
    }
    let gbit_bars: Vec<(String, f64)> = TARGETS
        .iter()
        .filter_map(|t| res.gbits(*t).map(|g| (t.short().to_owned(), g)))
        .collect();
    let plots = vec![
        Plot {
            file: "bench-tcp-http-rps.svg".into(),
            svg: plot::bars(
                &format!("HTTP requests/s, {SOURCES} client addresses"),
                "req/s",
                &rps_bars,
            ),
            caption: "HTTP requests per second through each target".into(),
        },
        Plot {
            file: "bench-tcp-http-cpu.svg".into(),
            svg: plot::bars(
                "Load balancer CPU per million HTTP requests",
                "ms",
                &cpu_bars,
            ),
            caption: "CPU ms spent by the load balancer per million requests".into(),
        },
        Plot {
            file: "bench-tcp-http-iperf.svg".into(),
            svg: plot::bars("iperf3 throughput, one TCP stream", "Gbit/s", &gbit_bars),
            caption: "TCP throughput through each target".into(),
        },
    ];

    let secs = plan.measure.as_secs_f64();
    let method = format!(
        "One namespace topology (tests/src/netns.rs): a client namespace with {SOURCES} client addresses, the load \
balancer's namespace and {BACKENDS} backend namespaces on one bridge, all veth. Every backend runs **nginx** (Debian) with \
{workers} workers, `return 200 \"backend-N\\n\"` on 0.0.0.0:80 (all addresses, so it also accepts the VIP it holds on \
loopback for DSR), keep-alive up to 10⁶ requests. Backend 0 also runs an iperf3 server. Six targets, all in the same \
run: **direct** to backend 0 (no load balancer: the ceiling); **stickylb** — the real daemon (`stickylb run`, driver-mode \
XDP on the LB's eth0, DSR, TCP health checks every 1 s, a second VIP on port {IPERF_PORT} with backend 0 only for \
iperf3); **stickylb ipip** and **stickylb gue** — the same daemon, two more VIPs ({VIP_IPIP}, {VIP_GUE}) with the \
same backends in `forwarding = \"ipip\"` / `\"gue\"` (see below); **HAProxy 2.6** (`mode tcp`, \
`balance source`, `hash-type consistent`, {workers} threads, health checks every 1 s) on {HAPROXY_ADDR}; **nginx stream** \
(`hash $remote_addr consistent`, {workers} workers) on {NGINX_ADDR}. The proxies listen on their own /32 on the LB's eth0 \
and connect to the backends; stickylb's daemon is unloaded (`stickylb unload`: XDP detached) while direct and the proxies are measured, so \
their frames do not pass through its program. The ceiling is one backend; the load balancers spread over \
{BACKENDS}, which on {cores} shared cores adds no CPU but does add parallelism (more listening sockets and workers), so a \
ratio above 1× here is possible, not an error.\n\n\
**Tunnel modes.** The backends stay on the same segment as the load balancer, but are reached through the tunnel: \
each tunnel VIP is on every backend's lo (as the DSR VIP), the daemon's `[tunnel]` has source {LB_ADDR} (the LB's \
eth0), GUE port {gue_port}, and `net.ipv4.conf.eth0.forwarding=1` on the LB (the XDP FIB helper needs it); the \
encapsulated frame is addressed to the backend's own address, and the FIB's next hop is the backend itself (its \
neighbour entry, kept resolved by the health checks). Every backend runs `stickylb decap attach --interface eth0 \
--allow {LB_ADDR} --address <its own> --gue-port {gue_port} --xdp-mode driver` (pins in a folder of its own) for the \
tunnel targets only: it is attached before the daemon starts, the tunnel targets are measured, and it is detached \
again before DSR, direct and the proxies, whose rows are thus measured exactly as without tunnel modes. This \
measures the cost of the encapsulation at the load balancer and of the decapsulation (one more XDP program, on \
each backend's veth) — not a routed path: no router sits between them. That the requests took the tunnel is \
checked on every run: the backends' decap counters of the target's kind grew and none rejected a frame. The \
decap programs' own run time (summed over the backends, from their program ids, with the same BPF statistics) is \
shown beside the LB's CPU of the tunnel rows, not added to it: it is spent on the backends. The \
tunnel settings in the program were written by: {tunnel_written_by} (\"bench\": this daemon does not write them \
from `[tunnel]` yet, so the bench wrote the same values into its pinned `SLB_TUNNEL`). iperf3 is not run through \
the tunnels: the client's MTU-sized segments no longer fit the 1500-byte wire once 20 or 28 bytes are put in \
front, and are answered with \"fragmentation needed\" or dropped by design (see docs/tunnels.md on MTU and \
MSS); HTTP's requests are small, and the answers go from the backend straight to the client as in DSR.\n\n\
**HTTP from many client addresses.** wrk sends from one source address, and all three load balancers pin a source \
address to one backend, so wrk alone would measure one backend. The many-client figures come from our own load \
generator (tests/src/bench/tcp_http/loadgen.rs): {SOURCES} connections, each bound to its own client address, one request \
in flight each (closed loop), {threads} epoll threads — the same design as wrk. Two modes: **keep-alive** (requests back \
to back on each connection) and **new connection per request** (connect, GET, read the answer, close; latency includes \
the handshake). Latency is from writing the request (or from `connect()`) to the last byte of the answer; p50/p99 are \
exact, over every request of the measured window. Each run: {warm} s warm-up, then {secs} s measured. {rounds} round(s), each \
measuring stickylb, then direct, HAProxy and nginx; every figure in the tables (CPU included) is from the median round by \
req/s (Gbit/s for iperf3), and each round's req/s is shown so the noise of this shared machine is visible. \"answers per backend\" shows the spread; \
\"addresses on >1 backend\" counts client addresses answered by more than one backend (0 = sticky). wrk is run too, \
from the client namespace's main address ({CLIENT_MAIN_ADDR}), {wrk_t} threads and {WRK_CONNS} connections for \
{wrk_s} s, as a cross-check of our client against a standard tool (everything then lands on one backend). \
**Throughput**: iperf3, one TCP stream, client → server (the bulk direction passes the load balancer in all four \
cases), {iperf_s} s per target. The client's veth has TX checksum offload off (needed for XDP_TX on veth), so it sends \
MTU-sized frames, in every case. Through stickylb on this rig each bulk frame crosses the bridge twice and passes two \
XDP programs (stickylb's and the rig's peer program); the proxies instead end the stream and copy it into \
another TCP connection toward the backend.\n\n\
**CPU.** All figures are per million answered requests of the many-client runs. *LB CPU*, for HAProxy and nginx: \
utime + stime of the process (all HAProxy threads; nginx master + workers) from /proc/<pid>/stat before and after the \
window. On veth the receiving side's softirq work runs on the sender's CPU and tick-based accounting (this kernel has no \
IRQ_TIME_ACCOUNTING) charges it to whatever task is running, so a proxy's figure also holds part of the kernel work of \
delivering its segments to the backends and clients — an over-estimate of what it would cost with real NICs. For \
stickylb: the XDP program's own run time (run_time_ns from /proc/<daemon>/fdinfo of its program fd, BPF statistics \
on via {stats_how} for the duration of the section, off again after), plus the daemon's process time (health checks; \
nothing per packet). The XDP figure is exact but narrow: the veth driver's work around the program (NAPI poll, XDP_TX) \
is not in it; its ns per run, under live traffic with caches shared with everything else on the machine, is far \
above the hot-loop BPF_PROG_TEST_RUN figure of the first section. Also not in it, and paid by stickylb's path only: this rig's XDP_PASS program on the LB's bridge port \
(needed for XDP_TX on veth, see docs/testing.md), which every forwarded frame passes (its run time is in the JSON as \
`rig_peer_xdp_run_time_ns`). *Machine softirq* and *machine busy CPU*: deltas of the `cpu` line of /proc/stat (all CPUs, all \
processes: the clients, backends and load balancer alike, and anything else this shared machine ran; 10 ms ticks), \
coarse whole-rig figures (the closed-loop clients keep the CPUs busy, so busy CPU per request is close to \
{cores} cores ÷ req/s); \"busy − direct\" is what routing through the load balancer added to the whole rig's CPU per \
request. *Requests per LB CPU-second* = answered requests ÷ LB CPU. Everything shares {cores} CPU cores, so a \
load balancer's CPU is taken from the clients and backends: req/s is a whole-rig figure.",
        workers = procs::nproc(),
        threads = procs::nproc(),
        warm = plan.warmup.as_secs_f64(),
        rounds = plan.rounds,
        wrk_t = procs::nproc(),
        wrk_s = plan.wrk_secs,
        iperf_s = plan.iperf_secs,
        cores = procs::nproc(),
        gue_port = decap::GUE_PORT,
    );

    let json = json!({
        "quick": ctx.quick,
        "config": {
            "backends": BACKENDS,
            "client_addresses": SOURCES,
            "connections": SOURCES,
            "rounds": plan.rounds,
            "warmup_s": plan.warmup.as_secs_f64(),
            "measure_s": secs,
            "wrk_s": plan.wrk_secs,
            "wrk_connections": WRK_CONNS,
            "iperf_s": plan.iperf_secs,
            "clk_tck": procs::clk_tck(),
            "bpf_stats": stats_how,
            "daemon_xdp_programs": xdp_seen,
        },
        "http_many_clients": Value::Object(json_http),
        "wrk_one_client_address": Value::Object(jw),
        "tunnel": {
            "vips": {"ipip": VIP_IPIP.to_string(), "gue": VIP_GUE.to_string()},
            "source": LB_ADDR.to_string(),
            "gue_port": decap::GUE_PORT,
            "settings_written_by": tunnel_written_by,
            "frames_decapsulated_each_round": res.decap.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
        "iperf3_gbit_s": res.gbits.iter().map(|(k, v)| (k.to_string(), json!({
            "median": res.gbits.get(k).and_then(|v| median_by(v, |g| *g)).map_or(Value::Null, |g| num(*g)),
            "each_round": v.iter().map(|g| num(*g)).collect::<Vec<_>>(),
        }))).collect::<serde_json::Map<_, _>>(),
    });

    Section {
        title: "TCP and HTTP through the load balancer".into(),
        method,
        tables,
        plots,
        json,
        headlines,
    }
}
