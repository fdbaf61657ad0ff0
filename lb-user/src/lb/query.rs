//! What `status`, `lookup` and `flows` report: read from the running state
//! and the maps, changing nothing.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use lb_common::{AffinityKey, select};

use super::{Backend, Lb, Maps, Result};
use crate::{
    api::{BackendState, BackendStatus, FlowEntry, LookupResult, VipStatus},
    fmt::fmt_mac,
    health::State,
    util::monotonic_ns,
};

impl<M: Maps> Lb<M> {
    /// Where `client` goes on each VIP (or the named one), and why.
    pub fn lookup(&self, client: Ipv4Addr, vip: Option<&str>) -> Result<Vec<LookupResult>> {
        if let Some(name) = vip {
            self.vip_index(name)?;
        }
        let now = monotonic_ns();
        let mut out = Vec::new();
        for v in self.vips.iter().filter(|v| vip.is_none_or(|n| n == v.name)) {
            let key = AffinityKey {
                vip_id: v.id,
                client: client.octets(),
            };
            let backend_addr = |id: u32| v.backends.iter().find(|b| b.id == id);
            let entry = self.maps.affinity(&key)?;
            let mut res = LookupResult {
                vip: v.name.clone(),
                client,
                backend: None,
                reason: String::new(),
                slot: None,
                affinity_age_ms: None,
                affinity_idle_ms: None,
            };
            if let Some(e) = entry {
                let idle = e.idle_ns(now);
                let live = e.is_live(now, v.info.affinity_timeout_ns);
                let b = backend_addr(e.backend_id);
                res.affinity_age_ms = Some(now.saturating_sub(e.created_ns) / 1_000_000);
                res.affinity_idle_ms = Some(idle / 1_000_000);
                match b {
                    Some(b) if live && b.alive() => {
                        res.backend = Some(b.addr);
                        res.reason = "affinity entry".into();
                        out.push(res);
                        continue;
                    }
                    Some(b) if live => {
                        res.reason = format!("affinity entry to {} (down), re-picked: ", b.addr);
                    }
                    _ if live => {
                        res.reason = "affinity entry to a removed backend, re-picked: ".into()
                    }
                    _ => res.reason = "affinity entry expired, re-picked: ".into(),
                }
            }
            let pick = select::maglev_pick(
                client.octets(),
                v.info.hash_seed,
                v.info.ring_size,
                |s| v.table.get(s as usize).copied(),
                |id| backend_addr(id).filter(|b| b.alive()),
            );
            match pick {
                Some(p) => {
                    res.backend = Some(p.backend.addr);
                    res.slot = Some(p.slot);
                    res.reason += &if p.probes == 0 {
                        format!("Maglev slot {} of {}", p.slot, v.info.ring_size)
                    } else {
                        format!(
                            "Maglev slot {} of {} (+{} past dead backends)",
                            p.slot, v.info.ring_size, p.probes
                        )
                    };
                }
                None => res.reason += "no backend alive: frames are dropped",
            }
            out.push(res);
        }
        Ok(out)
    }

    /// Affinity entries, optionally of one VIP and/or one backend.
    pub fn flows(
        &self,
        vip: Option<&str>,
        backend: Option<SocketAddrV4>,
    ) -> Result<Vec<FlowEntry>> {
        if let Some(name) = vip {
            self.vip_index(name)?;
        }
        let now = monotonic_ns();
        let mut out = Vec::new();
        for (k, e) in self.maps.affinity_entries()? {
            let Some(v) = self.vips.iter().find(|v| v.id == k.vip_id) else {
                continue;
            };
            if vip.is_some_and(|n| n != v.name) {
                continue;
            }
            let b = v.backends.iter().find(|b| b.id == e.backend_id);
            let baddr = b.map(|b| b.addr);
            if backend.is_some() && backend != baddr {
                continue;
            }
            let idle = e.idle_ns(now);
            out.push(FlowEntry {
                vip: v.name.clone(),
                client: Ipv4Addr::from(k.client),
                backend: baddr,
                age_ms: now.saturating_sub(e.created_ns) / 1_000_000,
                idle_ms: idle / 1_000_000,
                live: e.is_live(now, v.info.affinity_timeout_ns) && b.is_some_and(Backend::alive),
            });
        }
        out.sort_by(|a, b| (&a.vip, a.client).cmp(&(&b.vip, b.client)));
        Ok(out)
    }

    /// Everything `stickylb status` shows.
    pub fn status(&self) -> Result<Vec<VipStatus>> {
        let now = monotonic_ns();
        // One pass over the affinity table (up to millions of entries) and
        // one over each ring, whatever the number of backends.
        let timeouts: HashMap<u32, u64> = self
            .vips
            .iter()
            .map(|v| (v.id, v.info.affinity_timeout_ns))
            .collect();
        let mut clients_of: HashMap<(u32, u32), usize> = HashMap::new();
        for (k, e) in self.maps.affinity_entries()? {
            if timeouts.get(&k.vip_id).is_some_and(|&t| e.is_live(now, t)) {
                *clients_of.entry((k.vip_id, e.backend_id)).or_default() += 1;
            }
        }
        let mut out = Vec::new();
        for v in &self.vips {
            let stats = self.maps.vip_stats(v.id)?;
            let mut slots_of: HashMap<u32, usize> = HashMap::new();
            for &id in &v.table {
                *slots_of.entry(id).or_default() += 1;
            }
            let mut backends = Vec::new();
            for b in &v.backends {
                let s = self.maps.backend_stats(b.id)?;
                let clients = clients_of.get(&(v.id, b.id)).copied().unwrap_or(0);
                let slots = slots_of.get(&b.id).copied().unwrap_or(0);
                backends.push(BackendStatus {
                    id: b.id,
                    address: b.addr,
                    state: match (b.health, b.alive()) {
                        (Some(State::Up), true) if b.drained || b.weight == 0 => {
                            BackendState::Draining
                        }
                        (Some(State::Up), true) => BackendState::Up,
                        (Some(State::Up), false) => BackendState::UpNoMac,
                        (Some(State::Down), _) => BackendState::Down,
                        (None, _) => BackendState::Unknown,
                    },
                    reason: b.reason.clone(),
                    weight: b.weight,
                    drained: b.drained,
                    mac: b.mac.map(|m| fmt_mac(&m)),
                    mac_source: b.mac_source,
                    check: b.last_check.as_ref().map(|o| o.detail.clone()),
                    check_latency_ms: b
                        .last_check
                        .as_ref()
                        .map(|o| o.latency.as_secs_f64() * 1000.0),
                    slots,
                    clients,
                    counters: s,
                    from_config: b.from_config,
                    // The daemon, which owns the checkers, fills it in.
                    checker_restarts: 0,
                });
            }
            out.push(VipStatus {
                name: v.name.clone(),
                address: v.cfg.address,
                port: v.cfg.port,
                protocol: v.cfg.protocol.to_string(),
                table_size: v.info.ring_size,
                affinity_timeout_s: Duration::from_nanos(v.info.affinity_timeout_ns).as_secs_f64(),
                alive_backends: v.backends.iter().filter(|b| b.alive()).count(),
                counters: stats,
                backends,
            });
        }
        Ok(out)
    }
}
