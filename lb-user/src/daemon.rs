//! `stickylb run`: load or adopt the data path, keep it equal to the config
//! and to the backends' health, and answer the control socket.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use log::{error, info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use crate::{
    api::{
        AttachState, BackendAdded, BackendChanged, BackendRemoved, FlowsReply, LookupReply,
        ReloadReply, StatusReply,
    },
    config::{CheckKind, Config, HealthConfig, XdpModeSetting, parse_mac},
    control::{self, Envelope, Reply, Request},
    dataplane::{AttachMode, Attached, Dataplane, LINK_PIN_NAME, LoadOptions},
    health::{self, CheckSpec, CheckerHandle, Probe, State},
    lb::Lb,
    metrics, neigh, netdev,
};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config_path: PathBuf,
    /// Replace pinned state from an earlier run instead of adopting it.
    pub fresh: bool,
    /// Leave the program attached and the maps pinned on exit.
    pub keep: bool,
}

/// One running checker, and what it was started with (to know when a reload
/// must restart it).
struct Checker {
    _handle: CheckerHandle,
    /// Tells this checker's events from those a replaced checker of the same
    /// backend id left queued.
    generation: u64,
    target: SocketAddr,
    cfg: HealthConfig,
}

/// What a checker's events are keyed by: backend id and checker generation.
type CheckKey = (u32, u64);

fn spec(cfg: &HealthConfig) -> CheckSpec {
    CheckSpec {
        probe: match cfg.kind {
            CheckKind::Tcp => Probe::Tcp,
            CheckKind::Http => Probe::Http {
                path: cfg.path.clone(),
                expect_status: cfg.expect_status,
            },
        },
        interval: cfg.interval,
        timeout: cfg.timeout,
        rise: cfg.rise,
        fall: cfg.fall,
    }
}

struct Daemon {
    lb: Lb,
    cfg: Config,
    opts: RunOptions,
    attached: Attached,
    started: Instant,
    checkers: HashMap<u32, Checker>,
    checker_generation: u64,
    health_tx: mpsc::Sender<health::Event<CheckKey>>,
}

impl Daemon {
    /// Starts, restarts or stops checkers so there is exactly one per
    /// backend, with its current settings.
    fn sync_checkers(&mut self) {
        let mut wanted = HashMap::new();
        for v in self.lb.vips() {
            for b in &v.backends {
                let port = b.health_cfg.port.unwrap_or(b.addr.port());
                let target = SocketAddr::V4(SocketAddrV4::new(*b.addr.ip(), port));
                wanted.insert(b.id, (target, b.health_cfg.clone(), b.health));
            }
        }
        self.checkers.retain(|id, c| {
            wanted
                .get(id)
                .is_some_and(|(t, cfg, _)| *t == c.target && *cfg == c.cfg)
        });
        for (id, (target, cfg, state)) in wanted {
            if self.checkers.contains_key(&id) {
                continue;
            }
            self.checker_generation += 1;
            let generation = self.checker_generation;
            let handle = health::spawn(
                (id, generation),
                target,
                spec(&cfg),
                state,
                self.health_tx.clone(),
            );
            self.checkers.insert(
                id,
                Checker {
                    _handle: handle,
                    generation,
                    target,
                    cfg,
                },
            );
        }
    }

    fn on_health(&mut self, ev: health::Event<CheckKey>) {
        let (id, generation) = ev.key;
        // A backend id is reused as soon as it is free: a result of the
        // checker it had before says nothing about the backend it has now.
        if self.checkers.get(&id).map(|c| c.generation) != Some(generation) {
            return;
        }
        self.lb.record_check(id, ev.outcome);
        if let Some(t) = ev.transition {
            // A passing check has just made the kernel resolve the backend's
            // MAC: read it now rather than at the next tick, so a new
            // backend takes clients at once.
            if t.to == State::Up {
                self.refresh_macs();
            }
            if let Err(e) = self.lb.set_health(id, t.to, &t.reason) {
                error!("cannot apply a health change of backend id {id}: {e}");
            }
        }
    }

    fn refresh_macs(&mut self) {
        let table = neigh::read(&self.cfg.interface);
        let ids: Vec<(u32, std::net::Ipv4Addr)> = self
            .lb
            .vips()
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| (b.id, *b.addr.ip())))
            .collect();
        for (id, ip) in ids {
            if let Some(mac) = table.get(&ip)
                && let Err(e) = self.lb.set_neighbour_mac(id, Some(*mac))
            {
                error!("cannot record the MAC of {ip}: {e}");
            }
        }
    }

    /// Re-reads the config file and makes the running state match it,
    /// reverting live CLI changes (the file is the source of truth). An
    /// invalid file changes nothing; global fields need a restart.
    fn reload(&mut self) -> anyhow::Result<ReloadReply> {
        let new = Config::load(&self.opts.config_path)?;
        let needs_restart: Vec<String> = self
            .cfg
            .restart_only_changes(&new)
            .into_iter()
            .map(str::to_owned)
            .collect();
        // Planned against the running state, live changes included, so the
        // report says exactly what this reload changes.
        let plan = self.lb.plan_config(&new, needs_restart.clone())?;
        if !needs_restart.is_empty() {
            warn!(
                "reload: {} changed, which takes a restart (with --fresh for interface, pin_path or affinity_capacity); applying the rest",
                needs_restart.join(", ")
            );
        }
        let mut applied = new;
        // Keep the running values of what cannot change without a restart.
        applied.keep_restart_only_fields(&self.cfg);
        let summary = plan.to_string();
        let changed = !plan.is_empty();
        let applying = self.lb.apply(plan.clone());
        // Checkers follow the backends the books hold, whatever got applied.
        self.sync_checkers();
        applying.context("reload partly applied (a map write failed); reload again to finish")?;
        self.cfg = applied;
        info!("reload: {summary}");
        Ok(ReloadReply {
            changed,
            diff: summary,
            needs_restart,
            plan: plan.report,
        })
    }

    fn handle(&mut self, req: Request) -> Reply {
        self.answer(req)
            .unwrap_or_else(|e| Reply::err(format!("{e:#}")))
    }

    /// Carries out one request; its reply type is the one `api::Request`
    /// names for it.
    fn answer(&mut self, req: Request) -> anyhow::Result<Reply> {
        Ok(match req {
            Request::Status => Reply::ok(StatusReply {
                pid: std::process::id(),
                interface: self.cfg.interface.clone(),
                attached: self.attached.into(),
                config: self.opts.config_path.clone(),
                pin_path: self.cfg.pin_path.clone(),
                uptime_s: self.started.elapsed().as_secs(),
                passed: self.passed()?,
                vips: self.lb.status()?,
            }),
            Request::Lookup { client, vip } => {
                let client = ipv4_client(client)?;
                let reply: LookupReply = self.lb.lookup(client, vip.as_deref())?;
                Reply::ok(reply)
            }
            Request::Flows { vip, backend } => {
                let backend = backend.map(ipv4_backend).transpose()?;
                let reply: FlowsReply = self.lb.flows(vip.as_deref(), backend)?;
                Reply::ok(reply)
            }
            Request::BackendAdd {
                vip,
                backend,
                weight,
                mac,
            } => {
                let backend = ipv4_backend(backend)?;
                let mac = mac
                    .map(|m| parse_mac(&m))
                    .transpose()
                    .map_err(anyhow::Error::msg)?;
                let added = self.lb.add_backend(&vip, backend, weight, mac);
                // Whatever got applied: checkers follow the books.
                self.sync_checkers();
                let id = added?;
                Reply::ok(BackendAdded { id })
            }
            Request::BackendRemove { vip, backend } => {
                let backend = ipv4_backend(backend)?;
                let vi = self.lb.vip_index(&vip)?;
                let removed = self.lb.remove_backend(vi, backend);
                self.sync_checkers();
                let id = removed?;
                Reply::ok(BackendRemoved { id })
            }
            Request::BackendWeight {
                vip,
                backend,
                weight,
            } => {
                let backend = ipv4_backend(backend)?;
                let reply: BackendChanged = self.lb.set_weight(&vip, backend, weight)?;
                Reply::ok(reply)
            }
            Request::BackendDrain {
                vip,
                backend,
                drained,
            } => {
                let backend = ipv4_backend(backend)?;
                let reply: BackendChanged = self.lb.set_drain(&vip, backend, drained)?;
                Reply::ok(reply)
            }
            Request::Reload => Reply::ok(self.reload()?),
        })
    }

    /// Frames left to the kernel, by counter name.
    fn passed(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let counts = self.lb.maps().global_stats()?;
        Ok(lb_common::global_counter::NAMES
            .iter()
            .zip(counts)
            .map(|(n, c)| ((*n).to_owned(), c))
            .collect())
    }

    fn metrics(&self) -> String {
        let vips = self.lb.status().unwrap_or_default();
        let counts = self.lb.maps().global_stats().unwrap_or_default();
        let global: Vec<(&str, u64)> = lb_common::global_counter::NAMES
            .iter()
            .copied()
            .zip(counts)
            .collect();
        metrics::render(&vips, &global)
    }
}

/// The load balancer is IPv4-only for now, while the control API already
/// takes IPv6: refuse it here, with a message saying so.
fn ipv4_client(client: IpAddr) -> anyhow::Result<Ipv4Addr> {
    match client {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(ip) => bail!("client {ip}: IPv6 clients are not supported yet"),
    }
}

fn ipv4_backend(backend: SocketAddr) -> anyhow::Result<SocketAddrV4> {
    match backend {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => bail!("backend {a}: IPv6 backends are not supported yet"),
    }
}

fn ensure_bpffs(pin_path: &Path) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if pin_path.starts_with(root) {
        let mounted = std::fs::read_to_string("/proc/self/mounts")
            .map(|m| {
                m.lines()
                    .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
            })
            .unwrap_or(false);
        if !mounted {
            bail!(
                "no bpffs on /sys/fs/bpf, so maps cannot be pinned; mount it: mount -t bpf bpf /sys/fs/bpf"
            );
        }
    }
    std::fs::create_dir_all(pin_path)
        .with_context(|| format!("create pin folder {}", pin_path.display()))
}

/// A pinned link from an earlier run must be on the configured interface;
/// one whose interface has gone is stale and removed.
fn check_pinned_link(link_pin: &Path, interface: &str) -> anyhow::Result<()> {
    if !link_pin.exists() {
        return Ok(());
    }
    let have = Dataplane::pinned_link_ifindex(link_pin)
        .with_context(|| format!("inspect the pinned XDP link {}", link_pin.display()))?;
    if have == 0 {
        warn!(
            "the XDP link pinned at {} lost its interface; replacing it",
            link_pin.display()
        );
        std::fs::remove_file(link_pin)?;
        return Ok(());
    }
    if netdev::ifindex(interface) != Some(have) {
        bail!(
            "the running stickylb (pinned at {}) is attached to {}, but the config says {interface}; \
             start with --fresh to move it",
            link_pin.parent().unwrap_or(link_pin).display(),
            netdev::ifname(have)
        );
    }
    Ok(())
}

/// Removes everything pinned by an earlier run: the link (detaching the
/// program) and the maps.
pub fn unpin_all(pin_path: &Path) -> anyhow::Result<()> {
    if Dataplane::detach_pinned(&pin_path.join(LINK_PIN_NAME))? {
        info!("detached the XDP program pinned at {}", pin_path.display());
    }
    if pin_path.exists() {
        std::fs::remove_dir_all(pin_path)
            .with_context(|| format!("remove {}", pin_path.display()))?;
    }
    Ok(())
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let cfg = Config::load_for_this_machine(&opts.config_path)?;
    // Sockets first: a second daemon on the same socket stops here, before
    // it touches the maps.
    let listener = control::bind(&cfg.control_socket)?;
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let (dp, pinned_link) = load_data_path(&cfg, opts.fresh)?;
    let lb = Lb::start(dp, &cfg)?;
    let (health_tx, health_rx) = mpsc::channel(1024);
    let mut d = Daemon {
        lb,
        cfg,
        opts,
        attached: Attached::Adopted,
        started: Instant::now(),
        checkers: HashMap::new(),
        checker_generation: 0,
        health_tx,
    };
    d.attach(&pinned_link)?;
    d.refresh_macs();
    d.sync_checkers();
    let d = serve(d, listener, metrics_listener, health_rx).await?;
    shut_down(d)
}

/// Loads the program with the maps pinned under `pin_path` (adopting those
/// of an earlier run unless `fresh`); the pinned link's path, and whether a
/// link was pinned there already.
fn load_data_path(cfg: &Config, fresh: bool) -> anyhow::Result<(Dataplane, PinnedLinkPath)> {
    if fresh {
        unpin_all(&cfg.pin_path)?;
    }
    ensure_bpffs(&cfg.pin_path)?;
    let path = cfg.pin_path.join(LINK_PIN_NAME);
    check_pinned_link(&path, &cfg.interface)?;
    let existed = path.exists();
    let dp = Dataplane::load(&LoadOptions {
        affinity_capacity: cfg.affinity_capacity,
        pin_dir: Some(cfg.pin_path.clone()),
    })
    .with_context(|| {
        format!(
            "cannot load the data path with the maps pinned at {} (if they come from an incompatible version or capacity, start with --fresh)",
            cfg.pin_path.display()
        )
    })?;
    Ok((dp, PinnedLinkPath { path, existed }))
}

/// Where the XDP link is pinned, and whether an earlier run had pinned one.
struct PinnedLinkPath {
    path: PathBuf,
    existed: bool,
}

impl Daemon {
    /// Attaches through the pinned link: adopts an earlier run's (the new
    /// program replaces the old one atomically), or attaches anew in the
    /// configured mode, falling back to skb mode for `auto`.
    fn attach(&mut self, link: &PinnedLinkPath) -> anyhow::Result<()> {
        let (mode, fallback) = match self.cfg.xdp_mode {
            XdpModeSetting::Auto => (AttachMode::Driver, Some(AttachMode::Skb)),
            XdpModeSetting::Driver => (AttachMode::Driver, None),
            XdpModeSetting::Skb => (AttachMode::Skb, None),
        };
        self.write_own_mac();
        let (attached, refused) =
            self.lb
                .maps_mut()
                .attach_pinned(&self.cfg.interface, mode, fallback, &link.path)?;
        for e in refused {
            warn!(
                "{}: {e} ({:?}); using {}, which is slower",
                self.cfg.interface,
                std::error::Error::source(&e),
                AttachState::Skb
            );
        }
        self.attached = attached;
        match AttachState::from(attached) {
            AttachState::Adopted => info!(
                "adopted the running data path on {} (pinned at {}): nothing was reset",
                self.cfg.interface,
                self.cfg.pin_path.display()
            ),
            mode => info!("attached to {} in {mode}", self.cfg.interface),
        }
        self.warn_hidden_vlan_tags(attached);
        if link.existed && attached != Attached::Adopted {
            warn!("a pinned link existed but was not adopted");
        }
        Ok(())
    }
}

impl Daemon {
    /// In driver mode a VLAN tag carried outside the frame is invisible to
    /// the program, and `XDP_TX` sends the frame without it (into the
    /// native VLAN): say so, since nothing else would. In skb mode the tag
    /// stays with the frame, and a tag in the frame is passed (`pass_vlan`).
    fn warn_hidden_vlan_tags(&self, attached: Attached) {
        let driver = match AttachState::from(attached) {
            AttachState::Driver => true,
            AttachState::Skb => false,
            AttachState::Adopted => self.cfg.xdp_mode != XdpModeSetting::Skb,
        };
        if !driver {
            return;
        }
        let iface = &self.cfg.interface;
        match crate::netdev::hidden_vlan_tags(iface) {
            Ok(Some(why)) => warn!(
                "{iface}: in driver mode the XDP program cannot see a VLAN tag the kernel carries \
                 outside the frame ({why}): a tagged frame to a VIP would be forwarded without \
                 its tag, into the native VLAN. If tagged traffic can reach {iface}, attach \
                 stickylb to the VLAN's own interface instead, or turn the offload off \
                 (`ethtool -K {iface} rxvlan off`; for a veth, `txvlan off` on its peer) so that \
                 tags stay in the frame, where the program sees them and passes the frame to \
                 the kernel (counted as pass_vlan)"
            ),
            Ok(None) => {}
            Err(e) => warn!(
                "{iface}: cannot read its VLAN offload setting ({e}): if tagged traffic can reach \
                 it with rx-vlan-offload on, tagged frames to a VIP are forwarded without their \
                 tag in driver mode"
            ),
        }
    }
}

impl Daemon {
    /// Tells the program the interface's MAC, the source of the frames it
    /// forwards (before it is attached, so that it never sends one from the
    /// MAC it arrived with, which in promiscuous mode can be another host's).
    /// Written at every start: the pinned map may hold an earlier MAC.
    fn write_own_mac(&mut self) {
        let iface = &self.cfg.interface;
        let mac = match netdev::mac(iface) {
            Ok(Some(mac)) => Some(mac),
            Ok(None) => {
                warn!(
                    "{iface} has no Ethernet MAC address: forwarded frames keep the destination \
                     MAC they arrived with as their source"
                );
                None
            }
            Err(e) => {
                warn!(
                    "cannot read the MAC address of {iface} ({e}): forwarded frames keep the \
                     destination MAC they arrived with as their source; restart stickylb once \
                     {iface} can be read"
                );
                None
            }
        };
        if let Err(e) = self.lb.maps_mut().set_own_mac(mac) {
            warn!(
                "cannot write the MAC of {iface} into the data path ({e}): forwarded frames may \
                 go out with a stale or borrowed source MAC; restart stickylb with --fresh"
            );
        }
    }
}

/// The event loop: health events, control requests, metrics scrapes, the
/// neighbour table, signals. Returns on SIGTERM or SIGINT.
async fn serve(
    mut d: Daemon,
    listener: tokio::net::UnixListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    mut health_rx: mpsc::Receiver<health::Event<CheckKey>>,
) -> anyhow::Result<Daemon> {
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Envelope>(64);
    tokio::spawn(control::serve(listener, ctl_tx));
    let (met_tx, mut met_rx) = mpsc::channel::<oneshot::Sender<String>>(16);
    if let Some(l) = metrics_listener {
        info!("metrics on http://{}/metrics", l.local_addr()?);
        tokio::spawn(metrics::serve(l, met_tx));
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut neigh_tick = tokio::time::interval(Duration::from_secs(1));
    info!("control socket {}", d.cfg.control_socket.display());
    loop {
        tokio::select! {
            Some(ev) = health_rx.recv() => d.on_health(ev),
            Some((req, reply)) = ctl_rx.recv() => {
                let r = d.handle(req);
                let _ = reply.send(r);
            }
            Some(reply) = met_rx.recv() => { let _ = reply.send(d.metrics()); }
            _ = neigh_tick.tick() => d.refresh_macs(),
            _ = sighup.recv() => {
                if let Err(e) = d.reload() {
                    error!("reload failed: {e:#}");
                }
            }
            _ = sigterm.recv() => return Ok(d),
            _ = sigint.recv() => return Ok(d),
        }
    }
}

/// Leaves the program forwarding with `--keep`; else detaches and unpins.
fn shut_down(d: Daemon) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(&d.cfg.control_socket);
    if d.opts.keep {
        info!(
            "exiting; the program keeps forwarding (--keep), state pinned at {}",
            d.cfg.pin_path.display()
        );
    } else {
        let pin = d.cfg.pin_path.clone();
        drop(d);
        unpin_all(&pin)?;
        info!("exiting; detached and unpinned");
    }
    Ok(())
}
