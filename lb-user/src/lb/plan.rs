//! Planning a change: from the running state and what is asked for (a
//! config file, or a live CLI change applied to the running state), a
//! `Plan` that says what will be added, removed and changed, with the ids
//! and ring space it will use. Planning touches no map: a plan that cannot
//! be carried out is refused here, as a whole, before anything changes.
//! The same `Plan` is what the log and the `reload` reply print.

use std::{collections::BTreeSet, fmt};

use std::net::Ipv4Addr;

use lb_common::{MAX_BACKENDS, MAX_VIPS, TunnelSettings, VipKey};

use super::{
    Lb, LbError, Maps, Result,
    state::{BackendSpec, RingAlloc, VipSpec},
};
use crate::{
    api::{
        BackendChange, BackendReport, PlanReport, RemovedBackend, RemovedVip, SettingChange,
        VipChange, VipReport,
    },
    config::{Forwarding, VipConfig},
    fmt::{fmt_duration, fmt_mac},
};

/// A planned change: what it does (`report`, which the log and the reload
/// reply print) and what `apply` needs to do it.
#[derive(Clone, Debug)]
pub struct Plan {
    pub report: PlanReport,
    /// One per `report.vips`, in the same order.
    work: Vec<VipWork>,
    /// The VIP-map keys of `report.removed`, in the same order.
    removed_keys: Vec<VipKey>,
    /// The state this plan was made against (see `Lb::apply`).
    generation: u64,
    /// The `SLB_TUNNEL` entry to write, if it changes.
    tunnel: Option<TunnelSettings>,
}

/// What `apply` needs for one VIP of the plan.
#[derive(Clone, Debug)]
pub(super) struct VipWork {
    /// First slot of the VIP's table afterwards.
    pub(super) ring_base: u32,
    /// Its backends are in the order of the report's.
    pub(super) spec: VipSpec,
    /// Index of the VIP it continues in the running list.
    pub(super) running: Option<usize>,
}

impl Plan {
    /// Whether carrying it out changes anything (restart-only settings
    /// included: they are a change the operator asked for).
    pub fn is_empty(&self) -> bool {
        self.report.is_empty()
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn into_parts(
        self,
    ) -> (
        PlanReport,
        Vec<VipWork>,
        Vec<VipKey>,
        Option<TunnelSettings>,
    ) {
        (self.report, self.work, self.removed_keys, self.tunnel)
    }

    /// Makes the plan bring `SLB_TUNNEL` from `running` to `wanted`.
    pub(super) fn set_tunnel(&mut self, running: &TunnelSettings, wanted: TunnelSettings) {
        self.report.tunnel = tunnel_settings(running, &wanted);
        self.tunnel = (*running != wanted).then_some(wanted);
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.report.fmt(f)
    }
}

fn setting(field: &str, from: impl fmt::Display, to: impl fmt::Display) -> SettingChange {
    SettingChange {
        field: field.to_owned(),
        from: from.to_string(),
        to: to.to_string(),
    }
}

/// The `[tunnel]` fields that differ, as the file writes them.
fn tunnel_settings(old: &TunnelSettings, new: &TunnelSettings) -> Vec<SettingChange> {
    let mut out = Vec::new();
    if old.src_addr != new.src_addr {
        let src = |a: [u8; 4]| {
            if a == [0; 4] {
                "(none)".to_owned()
            } else {
                Ipv4Addr::from(a).to_string()
            }
        };
        out.push(setting("source", src(old.src_addr), src(new.src_addr)));
    }
    if (old.src_prefix, old.src_prefix_len) != (new.src_prefix, new.src_prefix_len) {
        let prefix = |t: &TunnelSettings| {
            if t.src_prefix_len == 0 {
                "(none)".to_owned()
            } else {
                format!("{}/{}", Ipv4Addr::from(t.src_prefix), t.src_prefix_len)
            }
        };
        out.push(setting("source_prefix", prefix(old), prefix(new)));
    }
    if old.gue_port != new.gue_port {
        out.push(setting(
            "gue_port",
            u16::from_be_bytes(old.gue_port),
            u16::from_be_bytes(new.gue_port),
        ));
    }
    if old.ttl != new.ttl {
        out.push(setting("ttl", old.ttl, new.ttl));
    }
    out
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn vip_settings(old: &VipConfig, new: &VipConfig) -> Vec<SettingChange> {
    let mut out = Vec::new();
    let addr = |c: &VipConfig| format!("{}:{}/{}", c.address, c.port, c.protocol);
    if (old.address, old.port, old.protocol) != (new.address, new.port, new.protocol) {
        out.push(setting("address/port/protocol", addr(old), addr(new)));
    }
    if old.table_size != new.table_size {
        out.push(setting("table_size", old.table_size, new.table_size));
    }
    if old.affinity_timeout != new.affinity_timeout {
        out.push(setting(
            "affinity_timeout",
            fmt_duration(old.affinity_timeout),
            fmt_duration(new.affinity_timeout),
        ));
    }
    if old.forwarding != new.forwarding {
        out.push(setting("forwarding", old.forwarding, new.forwarding));
    }
    if old.health != new.health {
        // Only the default that backends added live inherit: a change that
        // reaches a listed backend shows as that backend's own change.
        out.push(setting("health (default for added backends)", "old", "new"));
    }
    out
}

/// `old_mode`, `new_mode`: the VIP's forwarding before and after (a tunnel
/// VIP's backends have no MAC: they are routed).
fn backend_settings(
    old: &BackendSpec,
    new: &BackendSpec,
    old_mode: Forwarding,
    new_mode: Forwarding,
) -> Vec<SettingChange> {
    let mut out = Vec::new();
    if old.cfg.weight != new.cfg.weight {
        out.push(setting("weight", old.cfg.weight, new.cfg.weight));
    }
    if old.drained != new.drained {
        out.push(setting("drained", yes_no(old.drained), yes_no(new.drained)));
    }
    if old.cfg.mac != new.cfg.mac {
        let mac = |m: Option<[u8; 6]>, mode: Forwarding| match m {
            Some(m) => fmt_mac(&m),
            None if mode.is_tunnel() => "(routed)".to_owned(),
            None => "(neighbour table)".to_owned(),
        };
        out.push(setting(
            "mac",
            mac(old.cfg.mac, old_mode),
            mac(new.cfg.mac, new_mode),
        ));
    }
    if old.cfg.health != new.cfg.health {
        let h = &new.cfg.health;
        out.push(setting(
            "health",
            health_summary(&old.cfg.health),
            health_summary(h),
        ));
    }
    if old.from_config != new.from_config {
        let src = |f: bool| if f { "config file" } else { "added live" };
        out.push(setting(
            "source",
            src(old.from_config),
            src(new.from_config),
        ));
    }
    out
}

fn health_summary(h: &crate::config::HealthConfig) -> String {
    let mut out = format!(
        "{} every {} (timeout {}, rise {}, fall {}",
        h.kind,
        fmt_duration(h.interval),
        fmt_duration(h.timeout),
        h.rise,
        h.fall
    );
    if let Some(port) = h.port {
        out += &format!(", port {port}");
    }
    match h.kind {
        crate::config::CheckKind::Http => {
            out += &format!(", path {}, expect {}", h.path, h.expect_status);
        }
        crate::config::CheckKind::Udp => {
            out += &format!(", payload {:?}", h.payload);
            if let Some(e) = &h.expect {
                out += &format!(", expect {e:?}");
            }
        }
        crate::config::CheckKind::Exec => out += &format!(", command {:?}", h.command),
        crate::config::CheckKind::Tcp => {}
    }
    if !h.tunnel {
        out += ", no tunnel probe";
    }
    out + ")"
}

/// Why a config whose tables fit the pool in total was refused.
fn fragmented(c: &VipConfig) -> LbError {
    LbError::Invalid(format!(
        "VIP {}: no contiguous space of {} slots left in the ring pool for its table \
         (earlier table_size changes have left the free space in pieces); nothing was \
         changed. `stickylb run --fresh` lays all tables out anew, but re-pins every \
         client",
        c.name, c.table_size
    ))
}

impl<M: Maps> Lb<M> {
    /// The desired state equal to the running one, live changes included:
    /// what a live change edits before it is planned.
    pub fn desired(&self) -> Vec<VipSpec> {
        self.vips.iter().map(|v| v.spec()).collect()
    }

    /// Plans the change from the running state to `desired`. Pure: reads
    /// only `self`. `needs_restart` names settings that differ but are not
    /// applied (the caller knows which; see `Config::restart_only_changes`).
    pub fn plan(&self, desired: Vec<VipSpec>, needs_restart: Vec<String>) -> Result<Plan> {
        // Which running VIP each desired one continues: by name, else a VIP
        // with its (address, port, protocol) that nothing names.
        let mut running: Vec<Option<usize>> = vec![None; desired.len()];
        let mut taken = vec![false; self.vips.len()];
        for (ci, d) in desired.iter().enumerate() {
            if let Some(ri) = self.vips.iter().position(|v| v.name == d.cfg.name) {
                running[ci] = Some(ri);
                taken[ri] = true;
            }
        }
        for (ci, d) in desired.iter().enumerate() {
            if running[ci].is_some() {
                continue;
            }
            let key = d.key();
            if let Some(ri) =
                (0..self.vips.len()).find(|&ri| !taken[ri] && self.vips[ri].key == key)
            {
                running[ci] = Some(ri);
                taken[ri] = true;
            }
        }

        // Ids: what stays keeps its id; the rest is free for what is added
        // (apply frees — and purges — before it adds).
        let mut vip_ids: BTreeSet<u32> = running
            .iter()
            .flatten()
            .map(|&ri| self.vips[ri].id)
            .collect();
        let mut backend_ids: BTreeSet<u32> = BTreeSet::new();
        for (d, ri) in desired.iter().zip(&running) {
            if let Some(&ri) = ri.as_ref() {
                for b in &self.vips[ri].backends {
                    if d.backends.iter().any(|s| s.addr() == b.addr) {
                        backend_ids.insert(b.id);
                    }
                }
            }
        }
        let take_lowest = |used: &mut BTreeSet<u32>, max: u32, what: &'static str| {
            let id = (0..max)
                .find(|id| !used.contains(id))
                .ok_or(LbError::Exhausted(max, what))?;
            used.insert(id);
            Ok::<u32, LbError>(id)
        };

        // Ring space, replayed in the order apply allocates it.
        let mut ring = RingAlloc::of(&self.vips);
        for (v, _) in self.vips.iter().zip(&taken).filter(|(_, t)| !**t) {
            ring.free(v.info.ring_base);
        }

        let mut vips = Vec::with_capacity(desired.len());
        let mut work = Vec::with_capacity(desired.len());
        for (spec, ri) in desired.into_iter().zip(running) {
            let old = ri.map(|ri| &self.vips[ri]);
            let (id, ring_base, change) = match old {
                Some(v) => {
                    let base = if v.info.ring_size == spec.cfg.table_size {
                        v.info.ring_base
                    } else {
                        let base = ring
                            .alloc(spec.cfg.table_size)
                            .map_err(|_| fragmented(&spec.cfg))?;
                        ring.free(v.info.ring_base);
                        base
                    };
                    let change = VipChange::Kept {
                        renamed_from: (v.name != spec.cfg.name).then(|| v.name.clone()),
                        settings: vip_settings(&v.cfg, &spec.cfg),
                    };
                    (v.id, base, change)
                }
                None => {
                    let base = ring
                        .alloc(spec.cfg.table_size)
                        .map_err(|_| fragmented(&spec.cfg))?;
                    (
                        take_lowest(&mut vip_ids, MAX_VIPS, "VIP")?,
                        base,
                        VipChange::Added,
                    )
                }
            };
            let mut backends = Vec::with_capacity(spec.backends.len());
            for b in &spec.backends {
                let addr = b.addr();
                let (id, change) =
                    match old.and_then(|v| v.backends.iter().find(|r| r.addr == addr)) {
                        Some(r) => (
                            r.id,
                            BackendChange::Kept {
                                settings: backend_settings(
                                    &r.spec(),
                                    b,
                                    old.map_or(spec.cfg.forwarding, |v| v.cfg.forwarding),
                                    spec.cfg.forwarding,
                                ),
                            },
                        ),
                        None => (
                            take_lowest(&mut backend_ids, MAX_BACKENDS, "backend")?,
                            BackendChange::Added,
                        ),
                    };
                backends.push(BackendReport {
                    address: addr.into(),
                    id,
                    change,
                });
            }
            let removed_backends = old
                .map(|v| {
                    v.backends
                        .iter()
                        .filter(|r| !spec.backends.iter().any(|b| b.addr() == r.addr))
                        .map(|r| RemovedBackend {
                            address: r.addr.into(),
                            id: r.id,
                        })
                        .collect()
                })
                .unwrap_or_default();
            vips.push(VipReport {
                name: spec.cfg.name.clone(),
                id,
                change,
                backends,
                removed_backends,
            });
            work.push(VipWork {
                ring_base,
                spec,
                running: ri,
            });
        }
        let gone: Vec<&super::Vip> = self
            .vips
            .iter()
            .zip(&taken)
            .filter(|(_, t)| !**t)
            .map(|(v, _)| v)
            .collect();
        Ok(Plan {
            report: PlanReport {
                needs_restart,
                removed: gone
                    .iter()
                    .map(|v| RemovedVip {
                        name: v.name.clone(),
                        id: v.id,
                    })
                    .collect(),
                vips,
                tunnel: Vec::new(),
            },
            work,
            removed_keys: gone.iter().map(|v| v.key).collect(),
            generation: self.generation,
            tunnel: None,
        })
    }
}
