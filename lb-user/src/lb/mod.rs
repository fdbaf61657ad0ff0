//! The load balancer's state in user space, and how it is kept equal to the
//! data path's maps: VIP and backend ids, Maglev tables, liveness.
//!
//! A change of what is asked for — a config file, or a live CLI change —
//! is first planned (`plan`: pure, refuses as a whole what cannot be done)
//! and then applied (`apply`), in an order that keeps clients where they
//! are: removals (and the purge of their clients) before anything reuses
//! their ids, a backend marked dead in the backends map before its slots
//! are rewritten, only changed slots and changed entries written. Health
//! and neighbour changes are applied directly: they are not asked for.
//! Everything reaches the kernel through the `Maps` seam, so all of it runs
//! in unit tests against `fake::FakeMaps`.

mod apply;
pub mod fake;
mod maps;
mod plan;
mod query;
mod state;
pub mod sync;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tunnel_tests;

use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lb_common::{ForwardingMode, NO_BACKEND, TunnelSettings, backend_flags, maglev};
use log::{info, warn};
use thiserror::Error;

pub use self::{
    apply::ApplyReport,
    maps::Maps,
    plan::Plan,
    query::{FlowsCollector, FlowsQuery},
    state::{Backend, BackendSerial, BackendSpec, Rewarm, Vip, VipSpec},
};
pub use crate::api::{
    BackendChange, BackendState, BackendStatus, FlowEntry, LookupResult, MacSource, PlanReport,
    RebuildReport, VipChange, VipStatus,
};
use crate::fmt::{fmt_duration, fmt_mac};
use crate::{
    config::{self, BackendConfig, Config, Problem, VipConfig},
    dataplane::{Dataplane, DataplaneError},
    health::{self, Outcome, State},
};

#[derive(Debug, Error)]
pub enum LbError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("no VIP named {0:?}")]
    UnknownVip(String),
    #[error("VIP {vip:?} has no backend {addr}")]
    UnknownBackend { vip: String, addr: SocketAddrV4 },
    #[error("VIP {vip:?} already has backend {addr}")]
    DuplicateBackend { vip: String, addr: SocketAddrV4 },
    #[error("all {0} {1} ids are in use")]
    Exhausted(u32, &'static str),
    #[error("no room in the ring pool for a table of {0} slots")]
    RingFull(u32),
    #[error("{0}")]
    Invalid(String),
    #[error("the running state changed since this plan was made; plan again")]
    StalePlan,
}

pub type Result<T, E = LbError> = std::result::Result<T, E>;

/// The running state and the maps it is kept equal to.
/// What a UDP VIP's budget of new pins derives from
/// (`lb_common::udp_pin_budget`).
#[derive(Clone, Copy, Debug)]
struct UdpPinBudget {
    affinity_capacity: u32,
    cpus: u32,
}

pub struct Lb<M: Maps = Dataplane> {
    maps: M,
    hash_seed: u32,
    /// `udp_pin_budget` of every UDP VIP (a restart-only setting, like the
    /// affinity capacity it derives from).
    udp_pin_budget: UdpPinBudget,
    vips: Vec<Vip>,
    /// Bumped by every change, so a plan is applied only to the state it
    /// was made against.
    generation: u64,
    serials: state::Serials,
    /// Bumped whenever ids are freed (and so may be reused): client counts
    /// and `flows` queries keyed by id are only good for the epoch they
    /// were made in. Shared with the census thread.
    id_epoch: Arc<AtomicU64>,
    /// Re-warms ended (a VIP serving again after every backend was down):
    /// the pins this node made while its view was going dark may differ
    /// from its peers', which a sync then pulls again.
    rewarmed: u64,
    /// What `SLB_TUNNEL` holds.
    tunnel: TunnelSettings,
    /// The neighbour table as the daemon last read it: the MAC a backend of
    /// a VIP that goes from a tunnel mode to DSR starts with, so that it
    /// stays alive through the switch if it is on the link.
    neighbours: HashMap<Ipv4Addr, [u8; 6]>,
}

impl<M: Maps> Lb<M> {
    /// Takes over the maps (fresh or adopted from a previous run) and makes
    /// them match `cfg`. Adopted VIPs are matched by (address, port,
    /// protocol), adopted backends by (VIP, address, port); they keep their
    /// ids, tables and liveness, so nothing moves, and what already matches
    /// is not written again.
    pub fn start(maps: M, cfg: &Config) -> Result<Self> {
        Self::start_with_neighbours(maps, cfg, HashMap::new())
    }

    /// `start`, knowing the neighbour table: a VIP the file moved from a
    /// tunnel mode to DSR while no daemon ran keeps the backends that are on
    /// the link alive through the switch (see `neighbours`).
    pub fn start_with_neighbours(
        maps: M,
        cfg: &Config,
        neighbours: HashMap<Ipv4Addr, [u8; 6]>,
    ) -> Result<Self> {
        let mut lb = Self::adopted(maps, cfg)?;
        lb.neighbours = neighbours;
        let plan = lb.plan_config(cfg, Vec::new())?;
        if !plan.is_empty() && !lb.vips.is_empty() {
            // What the file changed while no daemon ran (a fresh start adds
            // every VIP and says so VIP by VIP).
            info!("start: {plan}");
        }
        lb.apply(plan)?;
        Ok(lb)
    }

    /// The running state re-identified from `maps` for `cfg`, with nothing
    /// applied yet: what `start` plans against.
    fn adopted(maps: M, cfg: &Config) -> Result<Self> {
        let mut lb = Self {
            maps,
            hash_seed: cfg.hash_seed,
            udp_pin_budget: UdpPinBudget {
                affinity_capacity: cfg.affinity_capacity,
                cpus: aya::util::nr_cpus().map_or(1, |n| n as u32),
            },
            vips: Vec::new(),
            generation: 0,
            serials: state::Serials::default(),
            id_epoch: Arc::default(),
            rewarmed: 0,
            tunnel: TunnelSettings::default(),
            neighbours: HashMap::new(),
        };
        lb.adopt(cfg)?;
        Ok(lb)
    }

    /// Re-identifies the VIPs and backends of a previous run from the maps;
    /// removes what `cfg` no longer has.
    fn adopt(&mut self, cfg: &Config) -> Result<()> {
        let adopted_vips = self.maps.vips()?;
        let adopted_backends = self.maps.backends_in_use()?;
        // Written again only if the file (or the address it defaults to)
        // now says otherwise: see `plan_config`.
        self.tunnel = self.maps.tunnel()?;
        for (key, info) in adopted_vips {
            let Some(vcfg) = cfg.vips.iter().find(|v| state::vip_key(v) == key) else {
                self.maps.remove_vip(&key)?;
                let purged = self.maps.purge_affinity(&|k, _| k.vip_id == info.vip_id)?;
                info!(
                    "VIP {}:{} of the previous run is not configured: removed ({purged} affinity entries dropped)",
                    key.ip(),
                    key.port()
                );
                continue;
            };
            let table = self.maps.read_ring(info.ring_base, info.ring_size)?;
            let spec = VipSpec::from_config(vcfg);
            // The mode the previous run forwarded in: its backends are as
            // that mode has them until the plan switches the VIP.
            let pinned_mode = ForwardingMode::from_u8(info.forwarding)
                .map_or(spec.cfg.forwarding, config::Forwarding::from);
            // Backends of this VIP that the config no longer has are not
            // adopted: they are cleared below, before any id is reused.
            let backends = adopted_backends
                .iter()
                .filter(|(_, b)| u32::from(b.vip_id) == info.vip_id)
                .filter_map(|&(id, b)| {
                    let addr =
                        SocketAddrV4::new(Ipv4Addr::from(b.addr), u16::from_be_bytes(b.port));
                    let bspec = spec.backends.iter().find(|s| s.addr() == addr)?;
                    let mut be =
                        Backend::new(id, self.serials.next(), bspec, pinned_mode.is_tunnel());
                    // The MAC in use stays in use until the neighbour table
                    // says otherwise (a configured one wins, as always).
                    if be.mac.is_none() && !be.routed() && b.mac != [0; 6] {
                        be.mac = Some(b.mac);
                        be.mac_source = MacSource::Neighbour;
                    }
                    // Adopt liveness: a restart must not flap anything. A
                    // backend that was not alive has its health re-learned
                    // from scratch (its MAC is kept: it is re-read from the
                    // neighbour table before the backend can come up).
                    if b.flags & backend_flags::ALIVE != 0 {
                        be.health = Some(State::Up);
                        be.reason = "adopted as up from the running data path".into();
                    }
                    Some(be)
                })
                .collect();
            // What the maps say of the VIP's settings, so the plan reports
            // (and makes) the change when the file now says otherwise.
            let mut settings = spec.cfg;
            settings.table_size = info.ring_size;
            settings.affinity_timeout = Duration::from_nanos(info.affinity_timeout_ns);
            settings.forwarding = pinned_mode;
            // A VIP the previous run was still warming up (its table all
            // empty, some backend's health not known yet) goes on warming
            // up: rebuilt now, its table would come from a partial set.
            let mut backends: Vec<Backend> = backends;
            let now = Instant::now();
            let warming_up = (table.iter().all(|&s| s == NO_BACKEND)
                && backends.iter().any(|b| b.health.is_none()))
            .then(|| {
                for b in backends.iter_mut().filter(|b| b.health.is_none()) {
                    b.first_result_by = Some(apply::first_result_due(b, now));
                }
                info!(
                    "VIP {}: the previous run had not started serving it; waiting for every \
                     backend's first check before it does",
                    vcfg.name
                );
                now
            });
            self.vips.push(Vip {
                name: vcfg.name.clone(),
                id: info.vip_id,
                key,
                info,
                cfg: settings,
                table,
                table_current: false,
                backends,
                // Adopted while serving: it keeps serving.
                warming_up,
                rewarm: None,
            });
        }
        // Adopted backend ids that were not adopted above (their VIP or they
        // are gone from the config): dead for the data path at once, their
        // clients' entries purged, so an id reused later inherits nobody.
        let adopted = self.used_backend_ids();
        for (id, b) in &adopted_backends {
            if !adopted.contains(id) {
                clear_backend(&mut self.maps, *id)?;
                let purged = self.maps.purge_affinity(&|_, v| v.backend_id == *id)?;
                info!(
                    "backend {}:{} of the previous run is not configured: removed ({purged} clients re-picked)",
                    Ipv4Addr::from(b.addr),
                    u16::from_be_bytes(b.port)
                );
            }
        }
        Ok(())
    }

    /// Plans the change to what `new` says, live changes undone.
    /// `needs_restart`: the settings of `new` that differ from the running
    /// ones but only take effect on a restart (the hash seed among them: it
    /// is read from `new` only at start).
    /// `[tunnel]` is resolved on this machine (`Config::tunnel_settings`:
    /// an unset source is the interface's address).
    pub fn plan_config(&self, new: &Config, needs_restart: Vec<String>) -> Result<Plan> {
        let desired = new.vips.iter().map(VipSpec::from_config).collect();
        let mut plan = self.plan(desired, needs_restart)?;
        plan.set_tunnel(&self.tunnel, new.tunnel_settings());
        Ok(plan)
    }

    /// What `SLB_TUNNEL` holds (as this daemon wrote or adopted it).
    pub fn tunnel(&self) -> TunnelSettings {
        self.tunnel
    }

    /// Records the neighbour table just read (see `neighbours`).
    pub fn set_neighbour_table(&mut self, table: HashMap<Ipv4Addr, [u8; 6]>) {
        self.neighbours = table;
    }

    /// Plans and applies `cfg` in one step (a config with restart-only
    /// changes gets them ignored, as a reload does).
    pub fn apply_config(&mut self, cfg: &Config) -> Result<Plan> {
        let plan = self.plan_config(cfg, Vec::new())?;
        self.apply(plan.clone())?;
        Ok(plan)
    }

    pub fn vips(&self) -> &[Vip] {
        &self.vips
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    pub fn into_maps(self) -> M {
        self.maps
    }

    /// The id epoch, shared: see `id_epoch`.
    pub fn id_epoch(&self) -> Arc<AtomicU64> {
        self.id_epoch.clone()
    }

    fn current_id_epoch(&self) -> u64 {
        self.id_epoch.load(Ordering::Relaxed)
    }

    fn used_backend_ids(&self) -> BTreeSet<u32> {
        self.vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id))
            .collect()
    }

    pub fn vip_index(&self, name: &str) -> Result<usize> {
        self.vips
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| LbError::UnknownVip(name.to_owned()))
    }

    fn backend_index(&self, vi: usize, addr: SocketAddrV4) -> Result<usize> {
        self.vips[vi]
            .backends
            .iter()
            .position(|b| b.addr == addr)
            .ok_or_else(|| LbError::UnknownBackend {
                vip: self.vips[vi].name.clone(),
                addr,
            })
    }

    /// Position of a backend id: (VIP index, backend index).
    pub fn find_backend(&self, id: u32) -> Option<(usize, usize)> {
        self.vips.iter().enumerate().find_map(|(vi, v)| {
            v.backends
                .iter()
                .position(|b| b.id == id)
                .map(|bi| (vi, bi))
        })
    }

    /// Position of the backend with this serial: (VIP index, backend index).
    pub fn find_serial(&self, serial: BackendSerial) -> Option<(usize, usize)> {
        self.vips.iter().enumerate().find_map(|(vi, v)| {
            v.backends
                .iter()
                .position(|b| b.serial == serial)
                .map(|bi| (vi, bi))
        })
    }

    /// Rebuilds VIP `vi`'s Maglev table and writes the slots that changed.
    pub fn rebuild(&mut self, vi: usize) -> Result<RebuildReport> {
        rebuild(&mut self.maps, &mut self.vips[vi])
    }

    /// Writes backend `bi` of VIP `vi` to the backends map.
    fn write_backend(&mut self, vi: usize, bi: usize) -> Result<()> {
        let v = &self.vips[vi];
        let b = &v.backends[bi];
        self.maps.set_backend(b.id, b.info(v.id))?;
        Ok(())
    }

    /// Records a health transition of backend `id` and applies it: the
    /// backends map first (the data path re-picks the backend's clients at
    /// once when it goes down), then the table.
    pub fn set_health(
        &mut self,
        id: u32,
        state: State,
        reason: &str,
    ) -> Result<Option<RebuildReport>> {
        let Some((vi, bi)) = self.find_backend(id) else {
            return Ok(None);
        };
        self.generation += 1;
        let b = &mut self.vips[vi].backends[bi];
        let was_alive = b.alive();
        b.health = Some(state);
        b.reason = reason.to_owned();
        let addr = b.addr;
        let name = self.vips[vi].name.clone();
        self.vips[vi].backends[bi].first_result_by = None;
        self.vips[vi].backends[bi].checks_blocked = None;
        self.write_backend(vi, bi)?;
        let report = self.rebuild(vi)?;
        let now_alive = self.vips[vi].backends[bi].alive();
        if self.vips[vi].warming_up.is_some() || self.vips[vi].rewarm.is_some() {
            info!("{name}: backend {addr} {state}: {reason}");
            let served = self.serve_if_warm(vi, Instant::now())?;
            return Ok(Some(served.unwrap_or_default()));
        }
        if was_alive != now_alive || state == State::Down {
            info!(
                "{name}: backend {addr} {state}: {reason} ({} slots rewritten in {} us)",
                report.slots_written,
                report.build_us + report.write_us
            );
        } else {
            info!("{name}: backend {addr} {state}: {reason}");
        }
        if was_alive && !now_alive {
            self.rewarm_if_dark(vi);
        }
        Ok(Some(report))
    }

    /// The checker of backend `serial` starts at `now`: if its VIP waits
    /// for its first result, the result is due from `now` on.
    pub fn checker_started(&mut self, serial: BackendSerial, now: Instant) {
        if let Some((vi, bi)) = self.find_serial(serial) {
            let b = &mut self.vips[vi].backends[bi];
            if b.first_result_by.is_some() {
                b.first_result_by = Some(apply::first_result_due(b, now));
            }
        }
    }

    /// The check of backend `serial` could not run at `now` for a reason of
    /// this host's (`detail`): if its VIP waits for its first result, it
    /// waits one interval longer (up to a cap), rather than counting the
    /// backend down for the daemon's own problem.
    pub fn checks_blocked(&mut self, serial: BackendSerial, now: Instant, detail: &str) {
        if let Some(b) = self.postpone_first_result(serial, now, |b| b.health_cfg.interval) {
            b.checks_blocked = Some(detail.to_owned());
        }
    }

    /// The checker of backend `serial` died and was (or is about to be)
    /// started again by its supervisor, seen at `now`: if its VIP waits for
    /// its first result, it waits for the new checker's (up to a cap).
    pub fn checker_restarted(&mut self, serial: BackendSerial, now: Instant) {
        self.postpone_first_result(serial, now, apply::restart_push);
    }

    /// Pushes the first-result deadline of backend `serial` by `push` of
    /// it, if its VIP waits for that result; the backend if so.
    fn postpone_first_result(
        &mut self,
        serial: BackendSerial,
        now: Instant,
        push: impl Fn(&Backend) -> Duration,
    ) -> Option<&mut Backend> {
        let (vi, bi) = self.find_serial(serial)?;
        let since = self.vips[vi].warming_up?;
        let b = &mut self.vips[vi].backends[bi];
        if b.health.is_some() {
            return None;
        }
        let due = apply::postponed_result_due(b, since, now, push(b))?;
        b.first_result_by = Some(due);
        Some(b)
    }

    /// When the next backend's first result is due, of all VIPs warming up:
    /// the daemon calls `warm_up_tick` then.
    pub fn warm_up_deadline(&self) -> Option<Instant> {
        let rewarms = self
            .vips
            .iter()
            .filter_map(|v| v.rewarm.and_then(|r| r.serve_by));
        self.vips
            .iter()
            .filter(|v| v.warming_up.is_some())
            .flat_map(|v| v.backends.iter())
            .filter(|b| b.health.is_none())
            .filter_map(|b| b.first_result_by)
            .chain(rewarms)
            .min()
    }

    /// Marks VIP `vi`, serving, for a re-warm if no backend of it is alive
    /// any more: see `Vip::rewarm`. Its table is all empty already (no
    /// backend is in service), so nothing is written; it warms up once the
    /// first backend is back (until then it has no alive backend, which is
    /// what it is withdrawn for).
    fn rewarm_if_dark(&mut self, vi: usize) {
        let v = &mut self.vips[vi];
        if v.warming_up.is_some()
            || v.rewarm.is_some()
            || v.backends.is_empty()
            || v.backends.iter().any(Backend::alive)
        {
            return;
        }
        self.generation += 1;
        v.rewarm = Some(Rewarm::default());
        warn!(
            "VIP {}: every backend is down; once one is back, it waits up to {} for the others \
             before serving again",
            v.name,
            fmt_duration(rewarm_window(v))
        );
    }

    /// How many re-warms have ended (VIPs serving again after every backend
    /// was down).
    pub fn rewarmed(&self) -> u64 {
        self.rewarmed
    }

    /// Why VIP `vi` is warming up, for status output (`None`: it is not).
    pub fn warming_why(&self, vi: usize, now: Instant) -> Option<String> {
        let v = &self.vips[vi];
        if v.warming_up.is_none() && v.rewarm.is_none() {
            return None;
        }
        Some(match v.rewarm.map(|r| r.serve_by) {
            None => "not serving until every backend's first check is in".to_owned(),
            Some(None) => format!(
                "every backend is down; once one is back, waiting up to {} for the others \
                 before serving again",
                fmt_duration(rewarm_window(v))
            ),
            Some(Some(by)) => format!(
                "every backend was down; waiting up to {} more for the others before serving \
                 again",
                fmt_duration(Duration::from_millis(
                    by.saturating_duration_since(now).as_millis() as u64
                ))
            ),
        })
    }

    /// Counts as down every backend of a VIP warming up whose first result
    /// was due by `now` and has not come, and starts serving the VIPs whose
    /// backends are all known then.
    pub fn warm_up_tick(&mut self, now: Instant) -> Result<()> {
        for vi in 0..self.vips.len() {
            self.serve_if_warm(vi, now)?;
        }
        Ok(())
    }

    /// Starts VIP `vi` serving once it warms up and every backend's health
    /// is known (a backend whose first result was due by `now` counts as
    /// down): its table is written once, from the whole set.
    fn serve_if_warm(&mut self, vi: usize, now: Instant) -> Result<Option<RebuildReport>> {
        let since = self.vips[vi].warming_up;
        if since.is_none() && self.vips[vi].rewarm.is_none() {
            return Ok(None);
        }
        let name = self.vips[vi].name.clone();
        // Every overdue backend is counted down in the books first, so that
        // a failed write cannot leave one overdue (its deadline past, the
        // daemon woken for it again and again); then each is written.
        let mut overdue = Vec::new();
        for (bi, b) in self.vips[vi].backends.iter_mut().enumerate() {
            if b.health.is_none() && b.first_result_by.is_some_and(|t| t <= now) {
                b.health = Some(State::Down);
                let waited = fmt_duration(Duration::from_millis(
                    since.map_or(0, |t| t.elapsed().as_millis() as u64),
                ));
                b.reason = match b.checks_blocked.take() {
                    Some(e) => format!(
                        "checks cannot run: {e} (for {waited} since the VIP's start; this \
                         host's problem, not the backend's): counted as down until one runs"
                    ),
                    None => format!(
                        "no first check result within {waited} of the VIP's start: counted as \
                         down until one comes"
                    ),
                };
                warn!("{name}: backend {}: {}", b.addr, b.reason);
                b.first_result_by = None;
                overdue.push(bi);
            }
        }
        if !overdue.is_empty() {
            self.generation += 1;
        }
        let mut failed = None;
        for bi in overdue {
            if let Err(e) = self.write_backend(vi, bi) {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let v = &mut self.vips[vi];
        if let Some(Rewarm { serve_by }) = v.rewarm {
            let up = v.backends.iter().filter(|b| b.alive()).count();
            let all = v.backends.len();
            if up < all {
                match serve_by {
                    // Still dark: the wait starts again with the next one back.
                    _ if up == 0 => {
                        v.rewarm = Some(Rewarm::default());
                        v.warming_up = None;
                        return Ok(None);
                    }
                    None => {
                        let window = rewarm_window(v);
                        v.rewarm = Some(Rewarm {
                            serve_by: Some(now.checked_add(window).unwrap_or(now)),
                        });
                        v.warming_up = Some(now);
                        self.generation += 1;
                        info!(
                            "VIP {}: every backend was down; {up} of {all} back: waiting up to \
                             {} for the others before serving again",
                            v.name,
                            fmt_duration(window)
                        );
                        return Ok(None);
                    }
                    Some(by) if by > now => return Ok(None),
                    Some(_) => {}
                }
            }
            self.generation += 1;
            self.rewarmed += 1;
            v.warming_up = None;
            v.rewarm = None;
            let report = rebuild(&mut self.maps, v)?;
            info!(
                "VIP {} serving again: {up} of {all} backends up, {} ms after the first was back \
                 ({} slots written)",
                v.name,
                since.map_or(0, |t| now.saturating_duration_since(t).as_millis()),
                report.slots_written
            );
            return Ok(Some(report));
        }
        let Some(since) = since else {
            return Ok(None);
        };
        if v.backends.iter().any(|b| b.health.is_none()) {
            return Ok(None);
        }
        self.generation += 1;
        v.warming_up = None;
        let report = rebuild(&mut self.maps, v)?;
        let up = v.backends.iter().filter(|b| b.alive()).count();
        info!(
            "VIP {} serving: {up} of {} backends up, after {} ms waiting for their first checks ({} slots written)",
            v.name,
            v.backends.len(),
            since.elapsed().as_millis(),
            report.slots_written
        );
        Ok(Some(report))
    }

    pub fn record_check(&mut self, id: u32, outcome: Outcome) {
        if let Some((vi, bi)) = self.find_backend(id) {
            self.vips[vi].backends[bi].last_check = Some(outcome);
        }
    }

    /// Sets a backend's MAC learned from the neighbour table (ignored when
    /// the config gives one).
    pub fn set_neighbour_mac(&mut self, id: u32, mac: Option<[u8; 6]>) -> Result<()> {
        let Some((vi, bi)) = self.find_backend(id) else {
            return Ok(());
        };
        let b = &mut self.vips[vi].backends[bi];
        // A routed backend needs no MAC: the FIB gives the next hop's.
        if b.mac_source == MacSource::Config || b.routed() || b.mac == mac {
            return Ok(());
        }
        self.generation += 1;
        let was_alive = b.alive();
        b.mac = mac;
        b.mac_source = if mac.is_some() {
            MacSource::Neighbour
        } else {
            MacSource::Unknown
        };
        let addr = b.addr;
        let now_alive = b.alive();
        match mac {
            Some(m) => info!("backend {addr}: MAC {} (neighbour table)", fmt_mac(&m)),
            None => warn!("backend {addr}: MAC no longer known; out of the table until it is"),
        }
        self.write_backend(vi, bi)?;
        if was_alive != now_alive {
            self.rebuild(vi)?;
            if self.vips[vi].warming_up.is_some() || self.vips[vi].rewarm.is_some() {
                self.serve_if_warm(vi, Instant::now())?;
            } else if !now_alive {
                self.rewarm_if_dark(vi);
            }
        }
        Ok(())
    }

    /// Plans and applies a live change: `edit` changes a copy of the
    /// running desired state. Live changes take the same path as a reload.
    fn change_live(&mut self, edit: impl FnOnce(&mut Vec<VipSpec>)) -> Result<(Plan, ApplyReport)> {
        let mut desired = self.desired();
        edit(&mut desired);
        let plan = self.plan(desired, Vec::new())?;
        let report = self.apply(plan.clone())?;
        Ok((plan, report))
    }

    /// Adds a backend at run time (not written to the config file). It is
    /// refused for what the file's rules refuse, and for what `machine`
    /// finds (the checks only the running host can make), in that order.
    pub fn add_backend(
        &mut self,
        vip: &str,
        addr: SocketAddrV4,
        weight: u32,
        mac: Option<[u8; 6]>,
        machine: impl FnOnce(&BackendConfig, &VipConfig) -> Vec<Problem>,
    ) -> Result<u32> {
        let vi = self.vip_index(vip)?;
        let cfg = BackendConfig {
            address: *addr.ip(),
            port: addr.port(),
            weight,
            mac,
            health: self.vips[vi].cfg.health.clone(),
        };
        let mut problems = config::backend_problems(&cfg, &self.vips[vi].cfg);
        problems.extend(machine(&cfg, &self.vips[vi].cfg));
        if !problems.is_empty() {
            let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(LbError::Invalid(all.join("; ")));
        }
        if self.vips[vi].backends.iter().any(|b| b.addr == addr) {
            return Err(LbError::DuplicateBackend {
                vip: vip.to_owned(),
                addr,
            });
        }
        let (plan, _) = self.change_live(|d| {
            d[vi].backends.push(BackendSpec {
                cfg,
                drained: false,
                from_config: false,
            })
        })?;
        let id = plan.report.vips[vi]
            .backends
            .iter()
            .find(|b| b.address == addr.into())
            .map(|b| b.id)
            .expect("the plan has the added backend");
        info!(
            "{vip}: backend {addr} added (weight {weight}); it takes clients once its check passes"
        );
        Ok(id)
    }

    /// Removes a backend: out of the table first, then its entry cleared
    /// and its clients' entries purged, so a later backend reusing the id
    /// inherits nobody.
    pub fn remove_backend(&mut self, vi: usize, addr: SocketAddrV4) -> Result<u32> {
        let bi = self.backend_index(vi, addr)?;
        let id = self.vips[vi].backends[bi].id;
        self.change_live(|d| d[vi].backends.retain(|b| b.addr() != addr))?;
        Ok(id)
    }

    /// Edits one backend's desired state live; the VIP's table rebuild.
    fn change_backend(
        &mut self,
        vip: &str,
        addr: SocketAddrV4,
        edit: impl FnOnce(&mut BackendSpec),
    ) -> Result<RebuildReport> {
        let vi = self.vip_index(vip)?;
        let bi = self.backend_index(vi, addr)?;
        let (_, report) = self.change_live(|d| edit(&mut d[vi].backends[bi]))?;
        Ok(report.rebuilt(vip))
    }

    pub fn set_weight(
        &mut self,
        vip: &str,
        addr: SocketAddrV4,
        weight: u32,
    ) -> Result<RebuildReport> {
        if weight > config::MAX_WEIGHT {
            return Err(LbError::Invalid(format!(
                "weight {weight} is above the maximum, {}",
                config::MAX_WEIGHT
            )));
        }
        let r = self.change_backend(vip, addr, |b| b.cfg.weight = weight)?;
        info!(
            "{vip}: backend {addr} weight {weight} ({} slots rewritten)",
            r.slots_written
        );
        Ok(r)
    }

    pub fn set_drain(
        &mut self,
        vip: &str,
        addr: SocketAddrV4,
        drained: bool,
    ) -> Result<RebuildReport> {
        let r = self.change_backend(vip, addr, |b| b.drained = drained)?;
        info!(
            "{vip}: backend {addr} {} ({} slots rewritten)",
            if drained {
                "drained: no new clients"
            } else {
                "undrained"
            },
            r.slots_written
        );
        Ok(r)
    }
}

/// Frees backend `id` in the backends map: not in use, not alive.
fn clear_backend<M: Maps>(maps: &mut M, id: u32) -> Result<()> {
    Ok(maps.set_backend(id, bytemuck::Zeroable::zeroed())?)
}

/// Writes an empty table of `size` slots at `base`, so that the first
/// rebuild into it writes every slot and no frame meets a stale one.
fn write_empty_table<M: Maps>(maps: &mut M, base: u32, size: u32) -> Result<()> {
    let empty: Vec<(u32, u32)> = (0..size).map(|s| (s, NO_BACKEND)).collect();
    maps.write_ring(base, &empty)?;
    Ok(())
}

/// Rebuilds `v`'s Maglev table and writes the slots that changed; nothing
/// while it warms up or waits to re-warm (its table stays empty until
/// `serve_if_warm` writes it whole).
fn rebuild<M: Maps>(maps: &mut M, v: &mut Vip) -> Result<RebuildReport> {
    if v.warming_up.is_some() || v.rewarm.is_some() {
        return Ok(RebuildReport::default());
    }
    let t0 = Instant::now();
    let identities: Vec<String> = v.backends.iter().map(|b| b.addr.to_string()).collect();
    let members: Vec<maglev::Member<'_>> = v
        .backends
        .iter()
        .zip(&identities)
        .map(|(b, id)| maglev::Member {
            identity: id.as_bytes(),
            weight: b.weight,
            in_service: b.in_service(),
        })
        .collect();
    let built = maglev::build(&members, v.info.ring_size)
        .map_err(|e| LbError::Invalid(format!("VIP {}: {e}", v.name)))?;
    let table: Vec<u32> = built
        .iter()
        .map(|&m| {
            if m == maglev::EMPTY {
                NO_BACKEND
            } else {
                v.backends[m as usize].id
            }
        })
        .collect();
    let build_us = t0.elapsed().as_micros() as u64;
    let t1 = Instant::now();
    let changes: Vec<(u32, u32)> = maglev::changed_slots(&v.table, &table).collect();
    let slots_written = if changes.is_empty() {
        0
    } else {
        maps.write_ring(v.info.ring_base, &changes)?
    };
    v.table = table;
    v.table_current = true;
    Ok(RebuildReport {
        slots_written,
        build_us,
        write_us: t1.elapsed().as_micros() as u64,
    })
}

/// How long a VIP re-warming (`Vip::rewarm`) waits, once its first backend is
/// back, for the others: long enough for a backend that came back at the
/// same moment to pass its `rise` checks, each backend by its own settings
/// — `rise` intervals, the checks' start spread and a probe's timeout, and
/// the cold start's slack for a result to reach the books.
fn rewarm_window(v: &Vip) -> Duration {
    v.backends
        .iter()
        .map(|b| {
            let h = &b.health_cfg;
            h.interval
                .saturating_mul(h.rise.max(1))
                .saturating_add(health::first_result_within(h.interval, h.timeout))
                .saturating_add(apply::FIRST_RESULT_SLACK)
        })
        .max()
        .unwrap_or_default()
}
