//! `stickylb run`: load or adopt the data path, keep it equal to the config
//! and to the backends' health, and answer the control socket.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use log::{error, info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use crate::{
    announce::{self, Announcer, GateInputs, Maintenance, NotAnnounced},
    api::{
        AnnounceStatus, AttachState, BackendAdded, BackendChanged, BackendRemoved,
        DEFAULT_FLOWS_LIMIT, LocalErrors, LookupReply, MaintenanceReply, ReloadReply, StatusReply,
        VipAnnounce, VipStatus, WithdrawReply,
    },
    census::{Census, Counts, FlowsJob},
    config::{
        CheckKind, Config, Forwarding, HealthConfig, Protocol, TunnelConfig, VipConfig,
        XdpModeSetting, backend_machine_problems, parse_mac,
    },
    control::{self, Envelope, Reply, Request},
    dataplane::{AttachMode, Attached, Dataplane, LINK_PIN_NAME, LoadOptions},
    health::{self, CheckSpec, CheckerHandle, Encap, Probe, State, TunnelCheck, TunnelProbe},
    lb::{BackendSerial, Lb},
    metrics, neigh, netdev,
    runtime::{self, PinLock, Record},
    util::Every,
};

mod readiness;
mod sync_node;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config_path: PathBuf,
    /// Replace pinned state from an earlier run instead of adopting it.
    pub fresh: bool,
}

/// One running checker, and what it was started with (to know when a reload
/// must restart it).
struct Checker {
    handle: CheckerHandle,
    /// Tells this checker's events from those a replaced checker of the same
    /// backend left queued.
    generation: u64,
    target: SocketAddr,
    cfg: HealthConfig,
    /// Its probe through the tunnel, which also depends on the VIP and
    /// `[tunnel]`.
    tunnel: Option<TunnelProbe>,
    /// Its supervisor's restarts as last seen by a warm-up tick.
    restarts_seen: u64,
}

/// What a checker's events are keyed by: the backend's serial (never reused,
/// unlike its id) and the checker's generation.
type CheckKey = (BackendSerial, u64);

fn spec(cfg: &HealthConfig, tunnel: Option<TunnelProbe>) -> CheckSpec {
    CheckSpec {
        probe: match cfg.kind {
            CheckKind::Tcp => Probe::Tcp,
            CheckKind::Http => Probe::Http {
                path: cfg.path.clone(),
                expect_status: cfg.expect_status,
            },
            CheckKind::Udp => Probe::Udp {
                payload: cfg.payload.as_bytes().to_vec(),
                expect: cfg.expect.as_ref().map(|e| e.as_bytes().to_vec()),
            },
            CheckKind::Exec => Probe::Exec {
                command: cfg.command.clone(),
            },
        },
        interval: cfg.interval,
        timeout: cfg.timeout,
        rise: cfg.rise,
        fall: cfg.fall,
        tunnel,
    }
}

/// The probe through the tunnel of a backend at `backend` of `vip`, checked
/// as `health` says, if it gets one: in the tunnel modes, unless `tunnel =
/// false`; for a UDP VIP only with a UDP check (its datagram is what is
/// sent: any other check says nothing of what the service answers). `source`:
/// the tunnel source as resolved (see [`tunnel_source`]); without one, none.
fn tunnel_probe(
    vip: &VipConfig,
    backend: Ipv4Addr,
    health: &HealthConfig,
    tunnel: &TunnelConfig,
    source: Option<Ipv4Addr>,
) -> Option<TunnelProbe> {
    let encap = match vip.forwarding {
        Forwarding::Dsr => return None,
        Forwarding::Ipip => Encap::Ipip,
        Forwarding::Gue => Encap::Gue {
            port: tunnel.gue_port,
        },
    };
    if !health.tunnel {
        return None;
    }
    let check = match (vip.protocol, health.kind) {
        (Protocol::Tcp, _) => TunnelCheck::Tcp,
        (Protocol::Udp, CheckKind::Udp) => TunnelCheck::Udp {
            payload: health.payload.as_bytes().to_vec(),
            expect: health.expect.as_ref().map(|e| e.as_bytes().to_vec()),
        },
        (Protocol::Udp, _) => return None,
    };
    Some(TunnelProbe {
        encap,
        source: source?,
        backend,
        vip: SocketAddrV4::new(vip.address, vip.port),
        ttl: tunnel.ttl,
        check,
    })
}

struct Daemon {
    lb: Lb,
    cfg: Config,
    opts: RunOptions,
    attached: Attached,
    started: Instant,
    checkers: HashMap<BackendSerial, Checker>,
    checker_generation: u64,
    health_tx: mpsc::Sender<health::Event<CheckKey>>,
    /// Walks the affinity table for status, metrics and flows, off the
    /// main loop.
    census: Census,
    local_checks: LocalCheckErrors,
    /// The affinity sync with peer nodes (`[sync]`); None without one.
    sync: Option<sync_node::NodeSync>,
    /// The VIPs' routes in the `[announce]` table.
    announcer: Announcer,
    /// `stickylb maintenance`: kept on disk across restarts.
    maintenance: Maintenance,
    /// `stickylb unload` has withdrawn the VIPs: none is announced again.
    unloading: bool,
    /// What systemd hears (`Type=notify`): readiness, status, reloads.
    readiness: readiness::Readiness,
}

/// Health checks that could not run for a reason of this host's: counted,
/// and logged at most every `LOCAL_ERROR_LOG_EVERY`.
struct LocalCheckErrors {
    count: u64,
    last: Option<String>,
    logging: Every,
    unlogged: u64,
}

const LOCAL_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

impl Default for LocalCheckErrors {
    fn default() -> Self {
        Self {
            count: 0,
            last: None,
            logging: Every::new(LOCAL_ERROR_LOG_EVERY),
            unlogged: 0,
        }
    }
}

impl LocalCheckErrors {
    fn record(&mut self, target: SocketAddr, detail: &str) {
        self.count += 1;
        self.unlogged += 1;
        self.last = Some(detail.to_owned());
        if !self.logging.due() {
            return;
        }
        warn!(
            "health checks cannot run: {detail} (checking {target}; {} such errors since the \
             last message). This is the daemon's own problem, not the backends': they keep \
             their state until checks run again. Look for what holds descriptors, memory or \
             local ports (`ls /proc/{}/fd | wc -l`, `ss -s`) or raise LimitNOFILE",
            self.unlogged,
            std::process::id()
        );
        self.unlogged = 0;
    }
}

impl Daemon {
    /// Starts, restarts or stops checkers so there is exactly one per
    /// backend, with its current settings.
    fn sync_checkers(&mut self) {
        let tunnel = self.cfg.tunnel.clone();
        self.sync_checkers_with(&tunnel);
    }

    /// [`Self::sync_checkers`] with `tunnel` for `[tunnel]` (a reload's
    /// before it is the daemon's).
    fn sync_checkers_with(&mut self, tunnel: &TunnelConfig) {
        let tunnel_vips = self
            .lb
            .vips()
            .iter()
            .any(|v| v.cfg.forwarding != Forwarding::Dsr);
        // The source the data path encapsulates from (written by the last
        // start or reload), so probes and clients' frames share it.
        let written = Ipv4Addr::from(self.lb.tunnel().src_addr);
        let source = (tunnel_vips && !written.is_unspecified()).then_some(written);
        let mut wanted = HashMap::new();
        let mut unprobed = Vec::new();
        for v in self.lb.vips() {
            for b in &v.backends {
                let port = b.health_cfg.port.unwrap_or(b.addr.port());
                let target = SocketAddr::V4(SocketAddrV4::new(*b.addr.ip(), port));
                let label = format!("{}: backend {}", v.name, b.addr);
                let probe = tunnel_probe(&v.cfg, *b.addr.ip(), &b.health_cfg, tunnel, source);
                if probe.is_none()
                    && source.is_none()
                    && v.cfg.forwarding != Forwarding::Dsr
                    && b.health_cfg.tunnel
                {
                    unprobed.push(label.clone());
                }
                wanted.insert(
                    b.serial,
                    (target, b.health_cfg.clone(), probe, b.health, label),
                );
            }
        }
        if !unprobed.is_empty() {
            warn!(
                "no health probe through the tunnel for {}: {} has no IPv4 address and                  [tunnel] source is not set; only the backends' own addresses are checked",
                unprobed.join(", "),
                self.cfg.interface
            );
        }
        self.checkers.retain(|serial, c| {
            wanted.get(serial).is_some_and(|(t, cfg, probe, ..)| {
                *t == c.target && *cfg == c.cfg && *probe == c.tunnel
            })
        });
        for (serial, (target, cfg, tunnel, state, label)) in wanted {
            if self.checkers.contains_key(&serial) {
                continue;
            }
            self.checker_generation += 1;
            let generation = self.checker_generation;
            // A VIP warming up waits for this checker's first result from now.
            self.lb.checker_started(serial, Instant::now());
            let handle = health::spawn_with(
                (serial, generation),
                label,
                target,
                spec(&cfg, tunnel.clone()),
                state,
                self.health_tx.clone(),
                health::real_probe(),
            );
            self.checkers.insert(
                serial,
                Checker {
                    handle,
                    generation,
                    target,
                    cfg,
                    tunnel,
                    restarts_seen: 0,
                },
            );
        }
    }

    fn on_health(&mut self, ev: health::Event<CheckKey>) {
        let (serial, generation) = ev.key;
        // A result of a checker since replaced (new target or settings)
        // says nothing about the backend as it is now.
        if self.checkers.get(&serial).map(|c| c.generation) != Some(generation) {
            return;
        }
        // By the backend's id as it is now: ids are reused as soon as they
        // are free, so the id is looked up at every result, never kept.
        let Some((vi, bi)) = self.lb.find_serial(serial) else {
            return;
        };
        let id = self.lb.vips()[vi].backends[bi].id;
        if ev.outcome.is_local_error() {
            let target = self.checkers[&serial].target;
            self.local_checks.record(target, &ev.outcome.detail);
            // Not the backend's failure: a VIP warming up waits for it longer.
            self.lb
                .checks_blocked(serial, Instant::now(), &ev.outcome.detail);
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

    /// A backend's first result was due: VIPs that waited for it serve.
    fn warm_up_tick(&mut self) {
        // A checker restarted since the last tick had its first probe cut
        // short: its backend's result is due from the new checker.
        let now = Instant::now();
        for (serial, c) in &mut self.checkers {
            let restarts = c.handle.restarts();
            if restarts != c.restarts_seen {
                c.restarts_seen = restarts;
                self.lb.checker_restarted(*serial, now);
            }
        }
        if let Err(e) = self.lb.warm_up_tick(now) {
            error!("cannot write the table of a VIP that finished warming up: {e}");
        }
    }

    fn refresh_macs(&mut self) {
        let table = neigh::read(&self.cfg.interface);
        // Routed backends (a tunnel VIP's) need no MAC.
        let ids: Vec<(u32, std::net::Ipv4Addr)> = self
            .lb
            .vips()
            .iter()
            .flat_map(|v| v.backends.iter())
            .filter(|b| !b.routed())
            .map(|b| (b.id, *b.addr.ip()))
            .collect();
        for (id, ip) in ids {
            if let Some(mac) = table.get(&ip)
                && let Err(e) = self.lb.set_neighbour_mac(id, Some(*mac))
            {
                error!("cannot record the MAC of {ip}: {e}");
            }
        }
        self.lb.set_neighbour_table(table);
    }

    /// Re-reads the config file and makes the running state match it,
    /// reverting live CLI changes (the file is the source of truth). An
    /// invalid file changes nothing; global fields need a restart.
    fn reload(&mut self) -> anyhow::Result<ReloadReply> {
        // The same checks as at start and `stickylb check`: a file that
        // names a missing interface or a backend that is this host changes
        // nothing. They look at the running interface: a new one is only
        // staged for the next restart (and reported so below).
        let new = Config::load_for_reload(&self.opts.config_path, &self.cfg.interface)?;
        // Warned about as it runs now: on the running interface.
        let mut running = new.clone();
        running.interface.clone_from(&self.cfg.interface);
        let warnings = log_warnings("reload", &running);
        let needs_restart: Vec<String> = self
            .cfg
            .restart_only_changes(&new)
            .into_iter()
            .map(str::to_owned)
            .collect();
        // A VIP the file moves from a tunnel mode to DSR takes its
        // backends' MACs from the neighbour table as it is now.
        self.refresh_macs();
        // Planned against the running state, live changes included, so the
        // report says exactly what this reload changes. `[tunnel]` resolves
        // on the running interface (an unset source is its address).
        let plan = self.lb.plan_config(&running, needs_restart.clone())?;
        if !needs_restart.is_empty() {
            warn!(
                "reload: {} changed, which takes a restart (with --fresh for interface, pin_path or affinity_capacity); applying the rest",
                needs_restart.join(", ")
            );
        }
        let mut applied = new;
        // Keep the running values of what cannot change without a restart.
        applied.keep_restart_only_fields(&self.cfg);
        let mut summary = plan.to_string();
        let announce_changes = self.announcer.reconfigure(applied.announce.clone());
        let changed = !plan.is_empty() || !announce_changes.is_empty();
        if !announce_changes.is_empty() {
            let lines: Vec<String> = announce_changes
                .iter()
                .map(|c| format!("{} {} -> {}", c.field, c.from, c.to))
                .collect();
            summary = if plan.is_empty() {
                lines.join("; ")
            } else {
                format!("{summary}; {}", lines.join("; "))
            };
        }
        let applying = self.lb.apply(plan.clone());
        // Checkers follow the backends the books hold, whatever got applied.
        self.sync_checkers_with(&applied.tunnel);
        applying.context("reload partly applied (a map write failed); reload again to finish")?;
        self.cfg = applied;
        info!("reload: {summary}");
        Ok(ReloadReply {
            changed,
            diff: summary,
            needs_restart,
            plan: plan.report,
            warnings,
            announce: announce_changes,
        })
    }

    /// Answers `req` on `reply`: at once, or for `flows`, which walks the
    /// affinity table, from the census thread.
    fn handle(&mut self, req: Request, reply: oneshot::Sender<Reply>) {
        let answer = match req {
            Request::Flows {
                vip,
                backend,
                limit,
            } => match self.flows(vip.as_deref(), backend, limit) {
                Ok(query) => return self.census.flows(FlowsJob { query, reply }),
                Err(e) => Err(e),
            },
            req => self.answer(req),
        };
        let _ = reply.send(answer.unwrap_or_else(|e| Reply::err(format!("{e:#}"))));
    }

    /// What the census thread needs to answer a `flows` request.
    fn flows(
        &self,
        vip: Option<&str>,
        backend: Option<SocketAddr>,
        limit: Option<usize>,
    ) -> anyhow::Result<crate::lb::FlowsQuery> {
        let backend = backend.map(ipv4_backend).transpose()?;
        Ok(self
            .lb
            .flows_query(vip, backend, limit.unwrap_or(DEFAULT_FLOWS_LIMIT))?)
    }

    /// Carries out one request; its reply type is the one `api::Request`
    /// names for it.
    fn answer(&mut self, req: Request) -> anyhow::Result<Reply> {
        Ok(match req {
            Request::Status => {
                let counts = self.census.counts();
                Reply::ok(StatusReply {
                    pid: std::process::id(),
                    interface: self.cfg.interface.clone(),
                    attached: self.attached.into(),
                    config: self.opts.config_path.clone(),
                    pin_path: self.cfg.pin_path.clone(),
                    uptime_s: self.started.elapsed().as_secs(),
                    passed: self.passed()?,
                    clients_counted: counts.as_deref().map(Counts::report),
                    vips: self.vip_status(counts.as_deref())?,
                    tunnel: self
                        .lb
                        .vips()
                        .iter()
                        .any(|v| v.cfg.forwarding.is_tunnel())
                        .then(|| self.lb.tunnel().into()),
                    local_errors: self.local_errors(),
                    sync: self.sync_status(),
                    maintenance: self.maintenance.is_on(),
                    announce: self.announcer.config().map(|a| AnnounceStatus {
                        table: a.table,
                        protocol: a.protocol,
                        withdraw_delay_ms: u64::try_from(a.withdraw_delay.as_millis())
                            .unwrap_or(u64::MAX),
                    }),
                })
            }
            Request::Lookup { client, vip } => {
                let client = ipv4_client(client)?;
                let reply: LookupReply = self.lb.lookup(client, vip.as_deref())?;
                Reply::ok(reply)
            }
            // `handle` hands these to the census thread before they get here.
            Request::Flows { .. } => {
                bail!("internal error: a flows request reached the main loop's answer")
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
                let interface = self.cfg.interface.clone();
                let added = self.lb.add_backend(&vip, backend, weight, mac, |b, v| {
                    backend_machine_problems(b, v, &interface)
                });
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
            Request::Reload => Reply::ok(self.reload_notified()?),
            Request::Maintenance { on } => Reply::ok(self.set_maintenance(on)?),
            Request::Withdraw => Reply::ok(self.withdraw_for_unload()),
        })
    }

    fn set_maintenance(&mut self, on: bool) -> anyhow::Result<MaintenanceReply> {
        let changed = self.maintenance.is_on() != on;
        if changed {
            self.maintenance.set(on).with_context(|| {
                format!(
                    "cannot record maintenance {} in {}: nothing changed",
                    if on { "on" } else { "off" },
                    self.maintenance.file().display()
                )
            })?;
            info!(
                "maintenance {}",
                if on {
                    "on: withdrawing every VIP; what still arrives is forwarded"
                } else {
                    "off: announcing the VIPs that can be served"
                }
            );
            self.sync_announce();
        }
        Ok(MaintenanceReply {
            maintenance: on,
            changed,
            announced: self.announced(),
        })
    }

    /// `stickylb unload`'s first step: the routers stop sending new traffic
    /// here while the program still forwards what arrives.
    fn withdraw_for_unload(&mut self) -> WithdrawReply {
        self.unloading = true;
        let withdrawn = self.announcer.withdraw_all("stickylb unload");
        let delay = self
            .announcer
            .config()
            .map_or(Duration::ZERO, |a| a.withdraw_delay);
        WithdrawReply {
            withdrawn,
            withdraw_delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The VIP addresses announced now.
    fn announced(&self) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = self
            .lb
            .vips()
            .iter()
            .map(|v| v.cfg.address)
            .filter(|a| self.announcer.is_announced(*a))
            .collect();
        // Several VIPs (ports) share an address, not necessarily in a row.
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Each VIP's own decision: its name, address and alive backends, and
    /// whether it may be announced.
    fn gates(&self) -> Vec<(&str, Ipv4Addr, usize, Result<(), NotAnnounced>)> {
        let attached = self.cfg.pin_path.join(LINK_PIN_NAME).exists();
        let cluster_ready = self.cluster_ready();
        self.lb
            .vips()
            .iter()
            .map(|v| {
                let alive = v.backends.iter().filter(|b| b.alive()).count();
                let inputs = GateInputs {
                    attached,
                    unloading: self.unloading,
                    maintenance: self.maintenance.is_on(),
                    // A VIP back from having no alive backend waits, as a
                    // joining node does, for its peers' table.
                    cluster_ready: cluster_ready && !self.held_for_catch_up(v.cfg.address),
                    warming: v.warming_up.is_some(),
                    alive_backends: alive,
                };
                (
                    v.name.as_str(),
                    v.cfg.address,
                    alive,
                    announce::decide(&inputs),
                )
            })
            .collect()
    }

    /// Makes the announced routes match every VIP's decision now. Called
    /// after everything the decision depends on may have changed; changes
    /// only what differs.
    fn sync_announce(&mut self) {
        if self.announcer.config().is_none() {
            return;
        }
        let wanted = announce::wanted_by_address(self.gates());
        self.announcer.sync(&wanted);
    }

    /// Frames left to the kernel, by counter name.
    fn passed(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let counts = self.lb.maps().global_stats()?;
        // Lost sync events are not frames: they are reported with the sync.
        Ok(lb_common::global_counter::NAMES
            .iter()
            .zip(counts)
            .take(lb_common::global_counter::PASSED.end as usize)
            .map(|(n, c)| ((*n).to_owned(), c))
            .collect())
    }

    /// The VIPs' status, with what only the daemon knows: its checkers'.
    fn vip_status(&self, counts: Option<&Counts>) -> anyhow::Result<Vec<VipStatus>> {
        let restarts_of = |serial| {
            self.checkers
                .get(&serial)
                .map_or(0, |c| c.handle.restarts())
        };
        let mut vips = self.lb.status(clients_of(counts), restarts_of)?;
        if self.announcer.config().is_some() {
            let gates = self.gates();
            for v in &mut vips {
                let reason = gates.iter().find(|g| g.0 == v.name).and_then(|g| g.3.err());
                v.announce = Some(VipAnnounce {
                    announced: self.announcer.is_announced(v.address),
                    reason,
                });
            }
        }
        Ok(vips)
    }

    fn metrics(&self) -> String {
        let clients = self.census.counts();
        let vips = self.vip_status(clients.as_deref()).unwrap_or_default();
        let counts = self.lb.maps().global_stats().unwrap_or_default();
        let global: Vec<(&str, u64)> = lb_common::global_counter::NAMES
            .iter()
            .copied()
            .zip(counts)
            .collect();
        let counted = clients.as_deref().map(Counts::report);
        let mut text = metrics::render(&vips, &global, counted.as_ref());
        metrics::render_affinity_capacity(&mut text, self.cfg.affinity_capacity);
        metrics::render_local_errors(&mut text, &self.local_errors());
        if let Some(s) = self.sync_status() {
            metrics::render_sync(&mut text, &s);
        }
        metrics::render_maintenance(&mut text, self.maintenance.is_on());
        let (ok, failed, last_failed) = self.readiness.reloads();
        metrics::render_reloads(&mut text, ok, failed, last_failed);
        text
    }

    fn local_errors(&self) -> LocalErrors {
        LocalErrors {
            checks: self.local_checks.count,
            last_check_error: self.local_checks.last.clone(),
            refused_metrics: metrics::REFUSED.load(Ordering::Relaxed),
            refused_control: control::REFUSED.load(Ordering::Relaxed),
        }
    }
}

/// The clients of (VIP id, backend id) as `counts` has them; none before
/// the first walk.
fn clients_of(counts: Option<&Counts>) -> impl Fn(u32, u32) -> usize {
    move |vip, backend| counts.map_or(0, |c| c.clients(vip, backend))
}

/// What `check` would warn about `cfg`, in the log.
/// Logs what is allowed but probably wrong in `cfg`; the warnings, for a
/// reply.
fn log_warnings(when: &str, cfg: &Config) -> Vec<String> {
    cfg.all_warnings()
        .into_iter()
        .map(|w| {
            warn!("{when}: {w}");
            w.to_string()
        })
        .collect()
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

/// What `unpin_all` removed.
#[derive(Debug, Default)]
pub struct Unpinned {
    /// The XDP link was pinned and is gone, so the program is detached:
    /// from this interface index (0: its interface had gone already).
    pub detached_from: Option<u32>,
    /// The maps unpinned, by name.
    pub maps: Vec<String>,
    /// Whether the pin folder itself was removed.
    pub folder: bool,
}

/// Removes everything pinned under `pin_path`: the link (detaching the
/// program) and the maps; the folder too unless `keep_folder` (the caller
/// holds the lock on it and goes on using it).
pub fn unpin_all(pin_path: &Path, keep_folder: bool) -> anyhow::Result<Unpinned> {
    let mut out = Unpinned::default();
    let link = pin_path.join(LINK_PIN_NAME);
    if link.exists() {
        let ifindex = Dataplane::pinned_link_ifindex(&link).unwrap_or(0);
        if Dataplane::detach_pinned(&link)? {
            info!("detached the XDP program pinned at {}", pin_path.display());
            out.detached_from = Some(ifindex);
        }
    }
    if !pin_path.exists() {
        return Ok(out);
    }
    // Only stickylb's own names: the folder may hold other software's pins
    // (a pin_path of /sys/fs/bpf itself), which are not ours to remove.
    for name in lb_common::map_names::ALL {
        let path = pin_path.join(name);
        if std::fs::symlink_metadata(&path).is_ok() {
            std::fs::remove_file(&path).with_context(|| format!("unpin {}", path.display()))?;
            out.maps.push(name.to_owned());
        }
    }
    out.maps.sort();
    let others: Vec<String> = std::fs::read_dir(pin_path)
        .with_context(|| format!("read {}", pin_path.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !others.is_empty() {
        warn!(
            "{} holds pins that are not stickylb's ({}): left as they are",
            pin_path.display(),
            others.join(", ")
        );
    } else if !keep_folder {
        std::fs::remove_dir(pin_path).with_context(|| format!("remove {}", pin_path.display()))?;
        out.folder = true;
    }
    Ok(out)
}

/// What a daemon that has exited still holds: its pin lock, to be dropped
/// only after the tokio runtime (and with it every listener its tasks hold),
/// so that once the lock is free a new daemon can bind the same addresses.
#[derive(Debug)]
pub struct Exited {
    _lock: PinLock,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<Exited> {
    crate::limits::raise_nofile();
    let cfg = Config::load_for_this_machine(&opts.config_path)?;
    log_warnings("start", &cfg);
    // Before anything slow (loading, adopting, attaching take seconds): a
    // SIGHUP or SIGTERM meanwhile must not kill the daemon by its default
    // action, half-way through taking over the data path.
    let signals = Signals {
        term: signal(SignalKind::terminate())?,
        int: signal(SignalKind::interrupt())?,
        hup: signal(SignalKind::hangup())?,
    };
    // The lock first: a second daemon on the same pins stops here, whatever
    // its socket and metrics settings, before it touches a map, a pin or
    // the first daemon's socket (and before --fresh unpins anything).
    ensure_bpffs(&cfg.pin_path)?;
    let lock = PinLock::acquire(&cfg.pin_path)?;
    let listener = control::bind(&cfg.control_socket)?;
    let _socket = SocketFile(cfg.control_socket.clone());
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let maintenance = Maintenance::load(Path::new(announce::MAINTENANCE_DIR), &cfg.pin_path);
    if maintenance.is_on() {
        info!(
            "in maintenance (since `stickylb maintenance on`, recorded in {}): no VIP is \
             announced until `stickylb maintenance off`",
            maintenance.file().display()
        );
    }
    let (dp, pinned_link) = load_data_path(&cfg, opts.fresh)?;
    let unmanaged = unmanaged(pinned_link.path.clone());
    let lb = Lb::start_with_neighbours(dp, &cfg, neigh::read(&cfg.interface))
        .map_err(|e| unmanaged(e.into()))?;
    if cfg.has_tunnel_vips() {
        let t = crate::api::TunnelStatus::from(lb.tunnel());
        info!(
            "tunnel: outer source {}{}, GUE port {}, TTL {}",
            t.source,
            t.source_prefix.map_or(String::new(), |p| format!(
                " (IP-in-IP: per client from {p})"
            )),
            t.gue_port,
            t.ttl
        );
    }
    let census = lb
        .maps()
        .table_reader()
        .map_err(anyhow::Error::from)
        .and_then(|r| Census::start(r, lb.id_epoch()))
        .map_err(&unmanaged)?;
    let (health_tx, health_rx) = mpsc::channel(1024);
    let mut lb = lb;
    let (sync, sync_rx) = match &cfg.sync {
        Some(s) => {
            // A link pinned by the last run (never after --fresh): its
            // program forwarded all along, with the table it kept.
            let adopted = pinned_link.existed;
            let (sync, rx) = sync_node::start(&mut lb, s, adopted)
                .await
                .map_err(&unmanaged)?;
            (Some(sync), Some(rx))
        }
        None => {
            // SLB_SYNC is pinned: a run with [sync] before this one left the
            // program writing events into a ring nobody reads.
            lb.maps_mut()
                .set_sync(false, std::time::Duration::ZERO)
                .context("cannot turn the data path's sync events off")
                .map_err(&unmanaged)?;
            (None, None)
        }
    };
    let cfg_announce = cfg.announce.clone();
    let mut d = Daemon {
        lb,
        cfg,
        opts,
        attached: Attached::Adopted,
        started: Instant::now(),
        checkers: HashMap::new(),
        checker_generation: 0,
        health_tx,
        census,
        local_checks: LocalCheckErrors::default(),
        sync,
        announcer: Announcer::new(cfg_announce),
        maintenance,
        unloading: false,
        readiness: readiness::Readiness::new(crate::notify::Notifier::from_env()),
    };
    d.attach(&pinned_link).map_err(&unmanaged)?;
    // After the attach: a route is only ever there for a program that
    // forwards. An adopted run's routes are found and kept as they are.
    if let Err(e) = d.announcer.adopt() {
        error!("cannot read the announce table (the VIPs are announced once it can be): {e}");
    }
    d.refresh_macs();
    d.sync_checkers();
    d.sync_announce();
    let record = publish_record(&d);
    let (d, signal) = serve(d, listener, metrics_listener, health_rx, sync_rx, signals)
        .await
        .map_err(&unmanaged)?;
    shut_down(d, signal);
    drop(record);
    Ok(Exited { _lock: lock })
}

/// What a failure after the data path was loaded must also say: when a
/// program is pinned at `link` (adopted from an earlier run, or attached by
/// this one), it keeps forwarding with nobody checking the backends.
fn unmanaged(link: PathBuf) -> impl Fn(anyhow::Error) -> anyhow::Error {
    move |e| {
        if link.exists() {
            e.context(format!(
                "the XDP program pinned at {} keeps forwarding, but no daemon checks the \
                 backends or updates the maps: fix the cause and `stickylb run` again (it \
                 adopts the running state), or take it down with `stickylb unload`",
                link.display()
            ))
        } else {
            e
        }
    }
}

/// The signals the daemon handles, taken over at the start.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// Removes the control socket file however `run` ends (an error after the
/// bind included), so no dead socket is left for the CLI to find.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Leaves the runtime record by which the CLI finds this daemon whatever
/// its config file says later. Without it the CLI falls back to the file's
/// control_socket, so a failure is worth a warning, not a refusal to run.
fn publish_record(d: &Daemon) -> Option<runtime::RecordGuard> {
    let record = Record {
        pid: std::process::id(),
        config: runtime::config_key(&d.opts.config_path),
        control_socket: d.cfg.control_socket.clone(),
        pin_path: d.cfg.pin_path.clone(),
        interface: d.cfg.interface.clone(),
    };
    let dir = Path::new(runtime::RECORD_DIR);
    record
        .publish(dir)
        .inspect_err(|e| {
            warn!(
                "cannot write the runtime record in {} ({e}): `stickylb -c FILE` then finds \
                 this daemon only while FILE's control_socket is {}",
                dir.display(),
                d.cfg.control_socket.display()
            )
        })
        .ok()
}

/// Loads the program with the maps pinned under `pin_path` (adopting those
/// of an earlier run unless `fresh`); the pinned link's path, and whether a
/// link was pinned there already.
fn load_data_path(cfg: &Config, fresh: bool) -> anyhow::Result<(Dataplane, PinnedLinkPath)> {
    if fresh {
        withdraw_before_fresh(cfg);
        let gone = unpin_all(&cfg.pin_path, true)?;
        if !gone.maps.is_empty() {
            info!(
                "--fresh: removed the state pinned at {} ({})",
                cfg.pin_path.display(),
                gone.maps.join(", ")
            );
        }
    }
    let path = cfg.pin_path.join(LINK_PIN_NAME);
    check_pinned_link(&path, &cfg.interface)?;
    let existed = path.exists();
    let mut dp = Dataplane::load(&LoadOptions {
        affinity_capacity: cfg.affinity_capacity,
        pin_dir: Some(cfg.pin_path.clone()),
    })
    .with_context(|| {
        format!(
            "cannot load the data path with the maps pinned at {} (if they come from an incompatible version or capacity, start with --fresh)",
            cfg.pin_path.display()
        )
    })?;
    // Before the program is attached or its link adopted: an index pinned
    // by an earlier run may lag the VIPs that run left (a rewrite cut
    // short, or an older version changing VIPs without it).
    dp.reconcile_vip_index().with_context(|| {
        format!(
            "cannot bring the VIP index pinned at {} in line with its VIPs",
            cfg.pin_path.display()
        )
    })?;
    Ok((dp, PinnedLinkPath { path, existed }))
}

/// A `--fresh` start replaces the maps (every client re-picked): the
/// routers first move new traffic away from this node, for withdraw_delay.
fn withdraw_before_fresh(cfg: &Config) {
    let Some(a) = &cfg.announce else {
        return;
    };
    match announce::withdraw_table(a) {
        Ok(routes) if routes.is_empty() => {}
        Ok(routes) => {
            let list: Vec<String> = routes.iter().map(|r| r.dst.to_string()).collect();
            info!(
                "--fresh: withdrew {} from table {}; waiting {} before replacing the data path",
                list.join(", "),
                a.table,
                crate::fmt::fmt_duration(a.withdraw_delay)
            );
            std::thread::sleep(a.withdraw_delay);
        }
        Err(e) => warn!(
            "--fresh: cannot withdraw the VIPs from table {} ({e}): replacing the data path \
             while they may still be announced",
            a.table
        ),
    }
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
        // Adopted or new, in whatever mode: ask the interface as it is now.
        if let Some(w) = Dataplane::xdp_tx_warning(&self.cfg.interface) {
            warn!("{w}");
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

impl Daemon {
    /// Whether this node has what it needs from its cluster to announce its
    /// VIPs: with peers configured, its own table adopted from the last run
    /// (ready at once), or a ready peer's table pulled, or none answered
    /// within join_timeout. The announcer gates on it; the sync sets it.
    fn cluster_ready(&self) -> bool {
        self.sync.as_ref().is_none_or(|s| s.cluster.ready())
    }

    /// The sync's status, `ready` being the gate the announcer reads.
    fn sync_status(&self) -> Option<crate::api::SyncStatus> {
        let mut status = self.sync.as_ref()?.cluster.status();
        status.ready = self.cluster_ready();
        Some(status)
    }
}

/// The event loop: health events, control requests, metrics scrapes, the
/// neighbour table, signals. Returns on SIGTERM or SIGINT, with its name.
async fn serve(
    mut d: Daemon,
    listener: tokio::net::UnixListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    mut health_rx: mpsc::Receiver<health::Event<CheckKey>>,
    mut sync_rx: Option<mpsc::Receiver<sync_node::Inbound>>,
    signals: Signals,
) -> anyhow::Result<(Daemon, &'static str)> {
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Envelope>(64);
    tokio::spawn(control::serve(listener, ctl_tx));
    let (met_tx, mut met_rx) = mpsc::channel::<oneshot::Sender<String>>(16);
    if let Some(l) = metrics_listener {
        info!("metrics on http://{}/metrics", l.local_addr()?);
        tokio::spawn(metrics::serve(l, met_tx));
    }
    let Signals {
        term: mut sigterm,
        int: mut sigint,
        hup: mut sighup,
    } = signals;
    let mut neigh_tick = tokio::time::interval(Duration::from_secs(1));
    let mut watchdog = d
        .readiness
        .notifier
        .watchdog_every()
        .map(tokio::time::interval);
    info!("control socket {}", d.cfg.control_socket.display());
    loop {
        d.allow_sync_pull_when_warm();
        // At the first pass (an adopted data path may be decided at once)
        // and after every event.
        d.notify_state();
        tokio::select! {
            Some(ev) = health_rx.recv() => d.on_health(ev),
            Some((req, reply)) = ctl_rx.recv() => {
                let changes_ids = sync_node::may_change_ids(&req);
                d.handle(req, reply);
                d.refresh_sync_ids(changes_ids);
            }
            Some(msg) = sync_node::recv(&mut sync_rx) => d.on_sync(msg),
            Some(reply) = met_rx.recv() => { let _ = reply.send(d.metrics()); }
            _ = neigh_tick.tick() => {
                d.refresh_macs();
                d.refresh_sync_ids(false);
            }
            () = sleep_until(d.lb.warm_up_deadline()) => {
                // select! picks among ready arms at random, and after a stall
                // (a long map write, a loaded machine) the deadline may be
                // ready together with the result it waited for: take in
                // every result queued by now before counting anyone down.
                tokio::task::yield_now().await;
                while let Ok(ev) = health_rx.try_recv() {
                    d.on_health(ev);
                }
                d.warm_up_tick();
            }
            () = sleep_until(d.ready_deadline()) => {}
            () = tick(&mut watchdog) => d.readiness.notifier.watchdog(),
            _ = sighup.recv() => {
                if let Err(e) = d.reload_notified() {
                    error!("reload failed: {e:#}");
                }
                d.refresh_sync_ids(true);
            }
            _ = sigterm.recv() => return Ok((d, "SIGTERM")),
            _ = sigint.recv() => return Ok((d, "SIGINT")),
        }
        // Health, warm-up, reloads, live changes, maintenance and the
        // cluster all come through this loop: the routes follow them here.
        d.catch_up_after_rewarm();
        d.sync_announce();
    }
}

/// The next tick of `interval`; never without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; for ever if `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Exits leaving the data path as it is: the program keeps forwarding and
/// every client keeps its backend, with the state pinned for the next
/// daemon to adopt (a restart is SIGTERM then start). Taking it down is
/// `stickylb unload`'s job, never a signal's. The VIPs' routes stay too:
/// what they announce (this node forwards) stays true.
fn shut_down(mut d: Daemon, signal: &str) {
    d.notify_stopping(signal);
    info!(
        "exiting on {signal}; the XDP program keeps forwarding on {} with its state pinned at {}: \
         a new `stickylb run` adopts it (no client moves), `stickylb unload` takes it down",
        d.cfg.interface,
        d.cfg.pin_path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpin_all_removes_only_stickylbs_own_pins() {
        let dir = std::env::temp_dir().join(format!("stickylb-unpin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(lb_common::map_names::AFFINITY), "").unwrap();
        std::fs::write(dir.join("cilium_calls"), "").unwrap();
        let gone = unpin_all(&dir, false).unwrap();
        assert_eq!(gone.maps, vec![lb_common::map_names::AFFINITY.to_owned()]);
        assert!(
            dir.join("cilium_calls").exists(),
            "another's pin was removed"
        );
        assert!(!gone.folder);
        std::fs::remove_file(dir.join("cilium_calls")).unwrap();
        assert!(unpin_all(&dir, false).unwrap().folder);
        assert!(!dir.exists());
    }

    #[test]
    fn a_failure_with_a_pinned_program_says_it_keeps_forwarding_unmanaged() {
        let dir = std::env::temp_dir().join(format!("stickylb-unmanaged-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join(LINK_PIN_NAME);
        let say = unmanaged(link.clone());
        let text = format!("{:#}", say(anyhow::anyhow!("attach failed")));
        assert_eq!(text, "attach failed", "nothing pinned: nothing forwards");
        std::fs::write(&link, "").unwrap();
        let text = format!("{:#}", say(anyhow::anyhow!("attach failed")));
        assert!(
            text.contains("keeps forwarding") && text.contains("stickylb unload"),
            "{text}"
        );
        assert!(text.ends_with("attach failed"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn vip(forwarding: Forwarding, protocol: Protocol) -> VipConfig {
        VipConfig {
            name: "web".into(),
            address: Ipv4Addr::new(192, 0, 2, 10),
            port: 80,
            protocol,
            affinity_timeout: Duration::from_secs(300),
            table_size: 7,
            forwarding,
            health: HealthConfig::default(),
            backends: vec![],
        }
    }

    #[test]
    fn tunnel_vips_get_a_tunnel_probe_by_default_and_dsr_vips_never() {
        const SRC: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
        const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 10);
        let tunnel = TunnelConfig {
            gue_port: 7000,
            ttl: 9,
            ..TunnelConfig::default()
        };
        let h = HealthConfig::default();
        assert!(h.tunnel, "on by default");
        let probe =
            |v: &VipConfig, h: &HealthConfig, src| tunnel_probe(v, BACKEND, h, &tunnel, src);
        let ipip = vip(Forwarding::Ipip, Protocol::Tcp);
        assert_eq!(
            probe(&ipip, &h, Some(SRC)),
            Some(TunnelProbe {
                encap: Encap::Ipip,
                source: SRC,
                backend: BACKEND,
                vip: "192.0.2.10:80".parse().unwrap(),
                ttl: 9,
                check: TunnelCheck::Tcp,
            })
        );
        // Whatever the check of the backend's own address: TCP VIPs get a SYN.
        let http = HealthConfig {
            kind: CheckKind::Http,
            ..h.clone()
        };
        let gue = vip(Forwarding::Gue, Protocol::Tcp);
        let p = probe(&gue, &http, Some(SRC)).unwrap();
        assert_eq!(
            (p.encap, p.check),
            (Encap::Gue { port: 7000 }, TunnelCheck::Tcp)
        );

        let off = HealthConfig {
            tunnel: false,
            ..h.clone()
        };
        assert_eq!(probe(&ipip, &off, Some(SRC)), None);
        assert_eq!(
            probe(&vip(Forwarding::Dsr, Protocol::Tcp), &h, Some(SRC)),
            None
        );
        assert_eq!(probe(&ipip, &h, None), None, "no source, no probe");

        // A UDP VIP: only a UDP check says what to send.
        let udp_vip = vip(Forwarding::Gue, Protocol::Udp);
        assert_eq!(probe(&udp_vip, &h, Some(SRC)), None);
        let udp = HealthConfig {
            kind: CheckKind::Udp,
            payload: "ping".into(),
            expect: Some("pong".into()),
            ..h.clone()
        };
        assert_eq!(
            probe(&udp_vip, &udp, Some(SRC)).unwrap().check,
            TunnelCheck::Udp {
                payload: b"ping".to_vec(),
                expect: Some(b"pong".to_vec()),
            }
        );
    }
}
