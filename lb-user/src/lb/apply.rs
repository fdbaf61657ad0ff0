//! Carrying out a `Plan` on the maps, in the order that keeps clients where
//! they are.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use lb_common::{NO_BACKEND, VipInfo, VipKey};
use log::{error, info};
use serde::Serialize;

use super::{
    Lb, LbError, Maps, Plan, RebuildReport, Result, Vip, clear_backend,
    plan::VipWork,
    rebuild,
    state::{Backend, BackendSpec},
    write_empty_table,
};
use crate::{
    api::{BackendChange, BackendReport, MacSource, PlanReport, VipReport},
    config::VipConfig,
    health,
};

/// What applying a plan did to each VIP's table.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ApplyReport {
    /// (VIP name, its table rebuild), in the plan's order.
    pub rebuilt: Vec<(String, RebuildReport)>,
}

impl ApplyReport {
    /// The rebuild of the VIP named `vip` (all zero if it was not rebuilt).
    pub fn rebuilt(&self, vip: &str) -> RebuildReport {
        self.rebuilt
            .iter()
            .find(|(n, _)| n == vip)
            .map(|(_, r)| *r)
            .unwrap_or_default()
    }
}

impl<M: Maps> Lb<M> {
    /// Carries out `plan`, made by `plan` against the current state:
    /// 1. VIPs no longer asked for leave the VIP map, their backends are
    ///    cleared and their clients purged;
    /// 2. backends no longer asked for leave their tables, are cleared, and
    ///    their clients are purged — before any id is reused;
    /// 3. every VIP asked for is updated or added, in the plan's order:
    ///    backend entries first, a new table region filled before the VIP
    ///    entry switches to it, only changed slots and entries written;
    /// 4. keys no VIP holds any more leave the VIP map (only now: a VIP may
    ///    have taken another's key, as in a swap).
    pub fn apply(&mut self, plan: Plan) -> Result<ApplyReport> {
        if plan.generation() != self.generation {
            return Err(LbError::StalePlan);
        }
        self.generation += 1;
        let (report, work, removed_keys, tunnel) = plan.into_parts();
        let mut old: Vec<Option<Vip>> = std::mem::take(&mut self.vips)
            .into_iter()
            .map(Some)
            .collect();
        let frees_ids = !report.removed.is_empty()
            || report.vips.iter().any(|v| !v.removed_backends.is_empty());
        let result = self.apply_to(&report, &work, &removed_keys, tunnel, &mut old);
        if result.is_err() {
            // Keep what was not reached in the books: its maps are as they were.
            self.vips.extend(old.into_iter().flatten());
        }
        if frees_ids {
            // Only now, once the freed ids' entries are purged: counts and
            // queries made before name the old backends by these ids.
            self.id_epoch.fetch_add(1, Ordering::Relaxed);
        }
        // A VIP warming up may have lost the last backend it waited for,
        // whether or not the rest got applied. A table it cannot write then
        // is not this plan's failure (the plan is applied): like any failed
        // rebuild, the VIP's next change writes its table whole.
        if let Err(e) = self.warm_up_tick(Instant::now()) {
            error!("cannot write the table of a VIP that finished warming up: {e}");
        }
        result
    }

    fn apply_to(
        &mut self,
        plan: &PlanReport,
        work: &[VipWork],
        removed_keys: &[VipKey],
        tunnel: Option<lb_common::TunnelSettings>,
        old: &mut [Option<Vip>],
    ) -> Result<ApplyReport> {
        // First: a VIP this plan switches to a tunnel mode must never
        // forward with the old (or no) outer source.
        if let Some(t) = tunnel {
            self.maps.set_tunnel(t)?;
            self.tunnel = t;
        }
        for (r, key) in plan.removed.iter().zip(removed_keys) {
            let Some(slot) = old
                .iter_mut()
                .find(|v| v.as_ref().is_some_and(|v| v.id == r.id))
            else {
                continue;
            };
            // Out of the books only once its maps are clear: until then its
            // ids and region are not free, and a retry removes it again.
            let vip = slot.as_ref().expect("found above");
            self.maps.remove_vip(key)?;
            for b in &vip.backends {
                clear_backend(&mut self.maps, b.id)?;
            }
            let vip_id = vip.id;
            let purged = self.maps.purge_affinity(&|k, _| k.vip_id == vip_id)?;
            let vip = slot.take().expect("found above");
            info!(
                "VIP {} removed ({purged} affinity entries dropped)",
                vip.name
            );
        }
        for (vp, w) in plan.vips.iter().zip(work) {
            if let (Some(ri), false) = (w.running, vp.removed_backends.is_empty())
                && let Some(v) = old[ri].as_mut()
            {
                self.remove_backends(v, vp)?;
            }
        }
        let mut report = ApplyReport::default();
        let mut old_keys = Vec::new();
        for (vp, w) in plan.vips.iter().zip(work) {
            let vip = match w.running.and_then(|ri| old[ri].take()) {
                Some(mut v) => {
                    old_keys.push(v.key);
                    let r = self.update_vip(&mut v, vp, w);
                    // Kept in the books even if a write failed: its entries
                    // are in the maps, as far as they got.
                    let name = v.name.clone();
                    self.vips.push(v);
                    report.rebuilt.push((name, r?));
                    continue;
                }
                None => {
                    let (v, r) = self.add_vip(vp, w)?;
                    report.rebuilt.push((v.name.clone(), r));
                    v
                }
            };
            self.vips.push(vip);
        }
        for key in old_keys {
            if !self.vips.iter().any(|v| v.key == key) {
                self.maps.remove_vip(&key)?;
            }
        }
        Ok(report)
    }

    fn vip_info(&self, id: u32, cfg: &VipConfig, base: u32) -> VipInfo {
        VipInfo {
            vip_id: id,
            udp_pin_budget: match cfg.protocol {
                crate::config::Protocol::Udp => lb_common::udp_pin_budget(
                    self.udp_pin_budget.affinity_capacity,
                    cfg.affinity_timeout.as_nanos() as u64,
                    self.udp_pin_budget.cpus,
                ),
                crate::config::Protocol::Tcp => 0,
            },
            ring_base: base,
            ring_size: cfg.table_size,
            hash_seed: self.hash_seed,
            forwarding: lb_common::ForwardingMode::from(cfg.forwarding).as_u8(),
            _pad: [0; 3],
            affinity_timeout_ns: cfg.affinity_timeout.as_nanos() as u64,
        }
    }

    /// Removes the backends `vp` drops with one table rebuild and one pass
    /// over the affinity table (which may hold millions of entries).
    fn remove_backends(&mut self, v: &mut Vip, vp: &VipReport) -> Result<()> {
        let ids: Vec<u32> = vp.removed_backends.iter().map(|b| b.id).collect();
        let (gone, kept) = std::mem::take(&mut v.backends)
            .into_iter()
            .partition(|b| ids.contains(&b.id));
        v.backends = kept;
        let cleared = (|| -> Result<usize> {
            rebuild(&mut self.maps, v)?;
            for &id in &ids {
                clear_backend(&mut self.maps, id)?;
            }
            Ok(self
                .maps
                .purge_affinity(&|_, e| ids.contains(&e.backend_id))?)
        })();
        let purged = match cleared {
            Ok(n) => n,
            Err(e) => {
                // Still in the books (their ids are not free) until a retry
                // has cleared them.
                let mut gone: Vec<Backend> = gone;
                v.backends.append(&mut gone);
                return Err(e);
            }
        };
        let names: Vec<String> = vp
            .removed_backends
            .iter()
            .map(|b| b.address.to_string())
            .collect();
        info!(
            "{}: backend {} removed; {purged} clients re-picked on their next packet",
            v.name,
            names.join(", ")
        );
        Ok(())
    }

    fn add_vip(&mut self, vp: &VipReport, w: &VipWork) -> Result<(Vip, RebuildReport)> {
        let cfg = &w.spec.cfg;
        let info = self.vip_info(vp.id, cfg, w.ring_base);
        let key = w.spec.key();
        write_empty_table(&mut self.maps, w.ring_base, cfg.table_size)?;
        // Not serving until every backend's health is known: its table is
        // then written once, from the whole set.
        let now = Instant::now();
        let backends = vp
            .backends
            .iter()
            .zip(&w.spec.backends)
            .map(|(b, spec)| {
                let mut b =
                    Backend::new(b.id, self.serials.next(), spec, cfg.forwarding.is_tunnel());
                b.first_result_by = Some(first_result_due(&b, now));
                b
            })
            .collect();
        let mut v = Vip {
            name: vp.name.clone(),
            id: vp.id,
            key,
            info,
            cfg: cfg.clone(),
            table: vec![NO_BACKEND; cfg.table_size as usize],
            table_current: false,
            backends,
            warming_up: Some(now),
            rewarm: None,
        };
        for b in &v.backends {
            self.maps.set_backend(b.id, b.info(v.id))?;
        }
        let r = rebuild(&mut self.maps, &mut v)?;
        self.maps.set_vip(key, info)?;
        info!(
            "VIP {} {}:{}/{} added with {} backends",
            cfg.name,
            cfg.address,
            cfg.port,
            cfg.protocol,
            v.backends.len()
        );
        Ok((v, r))
    }

    /// Brings a running VIP to what `vp` asks. Its dropped backends are gone
    /// already (`remove_backends`); the caller removes its old key from the
    /// VIP map if no VIP holds it afterwards.
    fn update_vip(&mut self, v: &mut Vip, vp: &VipReport, w: &VipWork) -> Result<RebuildReport> {
        // What was asked before, put back if a write fails: the next plan
        // must see (and report) the change as not made yet.
        let asked_before = (v.name.clone(), v.cfg.clone());
        let backends_before: Vec<Backend> = v.backends.clone();
        let result = self.update_vip_maps(v, vp, w);
        if result.is_err() {
            (v.name, v.cfg) = asked_before;
            for b in &mut v.backends {
                if let Some(was) = backends_before.iter().find(|o| o.id == b.id) {
                    b.weight = was.weight;
                    b.drained = was.drained;
                    b.health_cfg = was.health_cfg.clone();
                    b.from_config = was.from_config;
                }
            }
        }
        result
    }

    fn update_vip_maps(
        &mut self,
        v: &mut Vip,
        vp: &VipReport,
        w: &VipWork,
    ) -> Result<RebuildReport> {
        let new_key = w.spec.key();
        v.name = vp.name.clone();
        v.cfg = w.spec.cfg.clone();
        let mut running = std::mem::take(&mut v.backends);
        let mut written = Ok(());
        for (bp, spec) in vp.backends.iter().zip(&w.spec.backends) {
            let b = match bp.change {
                BackendChange::Kept { .. } => {
                    let i = running
                        .iter()
                        .position(|b| b.id == bp.id)
                        .expect("a kept backend is in the running VIP");
                    let mut b = running.swap_remove(i);
                    let before = b.info(v.id);
                    let routed = v.cfg.forwarding.is_tunnel();
                    update_backend(&mut b, bp, spec, routed, &self.neighbours);
                    if b.info(v.id) != before {
                        written = self.maps.set_backend(b.id, b.info(v.id));
                    }
                    b
                }
                BackendChange::Added => {
                    let mut b = Backend::new(
                        bp.id,
                        self.serials.next(),
                        spec,
                        v.cfg.forwarding.is_tunnel(),
                    );
                    if v.warming_up.is_some() {
                        b.first_result_by = Some(first_result_due(&b, Instant::now()));
                    }
                    written = self.maps.set_backend(b.id, b.info(v.id));
                    if written.is_err() {
                        // Not added: no entry, so not in the books either.
                        break;
                    }
                    b
                }
            };
            v.backends.push(b);
            if written.is_err() {
                break;
            }
        }
        // On a failed write the books keep every backend, reached or not.
        v.backends.append(&mut running);
        written?;

        // A new table size needs a new region: fill it, then switch the VIP
        // to it in one map update, so no frame sees a half-written table.
        let old = v.info;
        let info = self.vip_info(v.id, &v.cfg, w.ring_base);
        if v.table_current && info == old && new_key == v.key && vp.is_unchanged() {
            // Nothing asked of this VIP changed, so its table is what the
            // last rebuild made (health changes rebuild at once): a live
            // change to another VIP need not rebuild this one.
            return Ok(RebuildReport::default());
        }
        let old_table = (info.ring_base != old.ring_base).then(|| v.table.clone());
        let switched = self.switch_table(v, info, new_key);
        if switched.is_err() {
            // The VIP map still points at the old entry and table: the books
            // must too, or the old region would count as free.
            v.info = old;
            if let Some(t) = old_table {
                v.table = t;
            }
            v.table_current = false;
        }
        let r = switched?;
        if info.ring_base != old.ring_base {
            info!("VIP {}: table size now {}", v.name, info.ring_size);
        }
        v.key = new_key;
        Ok(r)
    }

    /// Fills a new table region if `info` has one, rebuilds, and points the
    /// VIP map at `info` (under `key`) last.
    fn switch_table(&mut self, v: &mut Vip, info: VipInfo, key: VipKey) -> Result<RebuildReport> {
        let old = v.info;
        if info.ring_base != old.ring_base {
            write_empty_table(&mut self.maps, info.ring_base, info.ring_size)?;
            v.table = vec![NO_BACKEND; info.ring_size as usize];
        }
        v.info = info;
        let r = rebuild(&mut self.maps, v)?;
        if info != old || key != v.key {
            self.maps.set_vip(key, info)?;
        }
        Ok(r)
    }
}

/// How long after its checker starts a result may take to reach the books
/// (the channel, an event loop held up by a long map write or a loaded
/// machine), beyond the probe's own bound.
pub(super) const FIRST_RESULT_SLACK: Duration = Duration::from_secs(1);

/// By when a new backend's first check result is due, counted from `now`.
/// A backstop, not an expectation: the probe is bounded by its timeout
/// already, so a result that has not come by twice that (plus the first
/// probe's spread and `FIRST_RESULT_SLACK`) is not coming.
pub(super) fn first_result_due(b: &Backend, now: Instant) -> Instant {
    now.checked_add(first_result_backstop(b)).unwrap_or(now)
}

fn first_result_backstop(b: &Backend) -> Duration {
    let timeout = b.health_cfg.timeout;
    health::first_result_within(b.health_cfg.interval, timeout)
        .saturating_add(timeout)
        .saturating_add(FIRST_RESULT_SLACK)
}

/// How long past its first deadline local errors (this host's, not the
/// backend's) may keep a backend's first result from coming before it is
/// counted as down all the same: its VIP must serve at some point.
pub(super) const BLOCKED_WARM_UP_CAP: Duration = Duration::from_secs(30);

/// The new deadline of a backend whose check could not run at `now`, or
/// whose checker had to be restarted: `push` further, up to
/// `BLOCKED_WARM_UP_CAP` past `since` (its VIP's start of warm-up) plus
/// its backstop, never earlier than it was.
pub(super) fn postponed_result_due(
    b: &Backend,
    since: Instant,
    now: Instant,
    push: Duration,
) -> Option<Instant> {
    let current = b.first_result_by?;
    let cap = since
        .checked_add(first_result_backstop(b).saturating_add(BLOCKED_WARM_UP_CAP))
        .unwrap_or(current);
    let pushed = current.max(now).checked_add(push).unwrap_or(cap);
    Some(pushed.min(cap).max(current))
}

/// How much later a first result may come after its checker restarts: the
/// supervisor's longest wait, then a new checker's backstop.
pub(super) fn restart_push(b: &Backend) -> Duration {
    health::MAX_BACKOFF.saturating_add(first_result_backstop(b))
}

/// Brings a kept backend to `spec`; health and the learned MAC stay.
/// `routed`: its VIP forwards through a tunnel (now). A backend whose VIP
/// goes from a tunnel mode to DSR takes its MAC from `neighbours`: its
/// health is kept, and so is its place in the table if it is on the link.
fn update_backend(
    b: &mut Backend,
    planned: &BackendReport,
    spec: &BackendSpec,
    routed: bool,
    neighbours: &std::collections::HashMap<std::net::Ipv4Addr, [u8; 6]>,
) {
    debug_assert_eq!(std::net::SocketAddr::V4(b.addr), planned.address);
    b.weight = spec.cfg.weight;
    b.drained = spec.drained;
    b.health_cfg = spec.cfg.health.clone();
    b.from_config = spec.from_config;
    if routed {
        b.mac = None;
        b.mac_source = MacSource::Routed;
    } else if spec.cfg.mac.is_some() {
        b.mac = spec.cfg.mac;
        b.mac_source = MacSource::Config;
    } else if b.mac_source == MacSource::Config {
        // Keep forwarding to the MAC in use until the neighbour table says
        // otherwise: dropping it would take the backend out and re-pin all
        // its clients.
        b.mac_source = MacSource::Neighbour;
    } else if b.routed() {
        b.mac = neighbours.get(b.addr.ip()).copied();
        b.mac_source = if b.mac.is_some() {
            MacSource::Neighbour
        } else {
            MacSource::Unknown
        };
    }
}
