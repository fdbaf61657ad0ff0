//! What `status`, `lookup` and `flows` report: read from the running state
//! and the maps, changing nothing. None of it walks the affinity table on
//! the caller's thread: `status` takes client counts made elsewhere, and
//! `flows` hands a `FlowsQuery` to whatever walks the table.

use std::{
    collections::BinaryHeap,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use lb_common::{AffinityKey, AffinityValue, MAX_BACKENDS, select};

use super::{BackendSerial, Lb, LbError, Maps, Result};
use crate::{
    api::{
        BackendState, BackendStatus, FlowEntry, FlowsReply, LookupResult, MAX_FLOWS_LIMIT,
        VipStatus,
    },
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

    /// What `flows` needs of the running state, taken here in
    /// O(VIPs + backends) so that the walk of the affinity table can run
    /// on another thread: optionally one VIP's entries and/or one
    /// backend's, at most `limit` of them listed.
    pub fn flows_query(
        &self,
        vip: Option<&str>,
        backend: Option<SocketAddrV4>,
        limit: usize,
    ) -> Result<FlowsQuery> {
        if let Some(name) = vip {
            self.vip_index(name)?;
        }
        if limit > MAX_FLOWS_LIMIT {
            return Err(LbError::Invalid(format!(
                "a limit of {limit} flows is above the maximum, {MAX_FLOWS_LIMIT}; \
                 narrow with --vip or --backend, or count them with --limit 0"
            )));
        }
        let vips = self
            .vips
            .iter()
            .filter(|v| vip.is_none_or(|n| n == v.name))
            .map(|v| {
                let len = v.backends.iter().map(|b| b.id as usize + 1).max();
                let mut backends = vec![None; len.unwrap_or(0)];
                for b in &v.backends {
                    backends[b.id as usize] = Some((b.addr, b.alive()));
                }
                FlowsVip {
                    id: v.id,
                    name: v.name.clone(),
                    timeout_ns: v.info.affinity_timeout_ns,
                    backends,
                }
            })
            .collect();
        Ok(FlowsQuery {
            vips,
            backend,
            limit,
            epoch: self.current_id_epoch(),
        })
    }

    /// Everything `stickylb status` shows, with the clients of each
    /// (VIP id, backend id) as `clients_of` says they were counted. It reads no
    /// affinity entry: the daemon answers status on the thread that applies
    /// health changes, so it costs a lookup per VIP and per backend and a
    /// pass over each ring in memory, never a walk of the table. The
    /// restarts of each backend's checker are `restarts_of` its serial (the
    /// daemon owns the checkers).
    pub fn status(
        &self,
        clients_of: impl Fn(u32, u32) -> usize,
        restarts_of: impl Fn(BackendSerial) -> u64,
    ) -> Result<Vec<VipStatus>> {
        let mut out = Vec::new();
        for (vi, v) in self.vips.iter().enumerate() {
            let stats = self.maps.vip_stats(v.id)?;
            // Backend ids are small (below MAX_BACKENDS): counted by index.
            let mut slots_of = vec![0usize; MAX_BACKENDS as usize];
            for &id in &v.table {
                if let Some(n) = slots_of.get_mut(id as usize) {
                    *n += 1;
                }
            }
            let mut backends = Vec::new();
            for b in &v.backends {
                let s = self.maps.backend_stats(b.id)?;
                let clients = clients_of(v.id, b.id);
                let slots = slots_of.get(b.id as usize).copied().unwrap_or(0);
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
                    checker_restarts: restarts_of(b.serial),
                });
            }
            out.push(VipStatus {
                name: v.name.clone(),
                address: v.cfg.address,
                port: v.cfg.port,
                protocol: v.cfg.protocol.to_string(),
                table_size: v.info.ring_size,
                affinity_timeout_s: Duration::from_nanos(v.info.affinity_timeout_ns).as_secs_f64(),
                forwarding: v.cfg.forwarding,
                alive_backends: v.backends.iter().filter(|b| b.alive()).count(),
                // A VIP waiting to re-warm is not warming up for the gate
                // yet (it has no alive backend: that is why it is not
                // announced), but status says what it waits for.
                warming: v.warming_up.is_some() || v.rewarm.is_some(),
                warming_why: self.warming_why(vi, std::time::Instant::now()),
                announce: None,
                counters: stats,
                backends,
            });
        }
        Ok(out)
    }
}

/// One VIP as `flows` shows it. Looked up per entry of millions: found in
/// a short list, its backends indexed by id, no hashing.
#[derive(Clone, Debug)]
struct FlowsVip {
    id: u32,
    name: String,
    timeout_ns: u64,
    /// By backend id: (address, alive).
    backends: Vec<Option<(SocketAddrV4, bool)>>,
}

/// A `flows` request with what it needs of the running state, to be run
/// over the affinity table wherever that is walked.
#[derive(Clone, Debug)]
pub struct FlowsQuery {
    /// The VIPs asked for.
    vips: Vec<FlowsVip>,
    backend: Option<SocketAddrV4>,
    limit: usize,
    /// The id epoch it was made in: it names backends by id, so it holds
    /// only while no id is freed (see `Lb::id_epoch`).
    pub epoch: u64,
}

impl FlowsQuery {
    /// A collector of the matching entries, for a walk at `now`.
    pub fn collect(&self, now: u64) -> FlowsCollector<'_> {
        FlowsCollector {
            query: self,
            now,
            first: BinaryHeap::new(),
            total: 0,
        }
    }
}

/// A flow ranked by VIP name and client, the order of the reply.
struct Ranked(FlowEntry);

impl Ranked {
    fn rank(&self) -> (&str, Ipv4Addr) {
        (&self.0.vip, self.0.client)
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.rank() == other.rank()
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// Collects the first `limit` matching entries of a walk (in memory for
/// those only, whatever the size of the table) and counts all of them.
pub struct FlowsCollector<'a> {
    query: &'a FlowsQuery,
    now: u64,
    /// The first entries so far; the greatest on top, to be dropped first.
    first: BinaryHeap<Ranked>,
    total: u64,
}

impl FlowsCollector<'_> {
    pub fn add(&mut self, k: &AffinityKey, e: &AffinityValue) {
        let Some(v) = self.query.vips.iter().find(|v| v.id == k.vip_id) else {
            return;
        };
        let b = v.backends.get(e.backend_id as usize).copied().flatten();
        let baddr = b.map(|b| b.0);
        if self.query.backend.is_some() && self.query.backend != baddr {
            return;
        }
        self.total += 1;
        let client = Ipv4Addr::from(k.client);
        if self.first.len() >= self.query.limit {
            match self.first.peek() {
                Some(last) if (v.name.as_str(), client) < last.rank() => {}
                _ => return,
            }
        }
        self.first.push(Ranked(FlowEntry {
            vip: v.name.clone(),
            client,
            backend: baddr,
            age_ms: self.now.saturating_sub(e.created_ns) / 1_000_000,
            idle_ms: e.idle_ns(self.now) / 1_000_000,
            live: e.is_live(self.now, v.timeout_ns) && b.is_some_and(|b| b.1),
        }));
        if self.first.len() > self.query.limit {
            self.first.pop();
        }
    }

    pub fn finish(self) -> FlowsReply {
        let flows: Vec<FlowEntry> = self
            .first
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.0)
            .collect();
        FlowsReply {
            truncated: (flows.len() as u64) < self.total,
            total: self.total,
            limit: self.query.limit,
            flows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Config,
        lb::{fake::FakeMaps, tests::started},
    };

    /// VIPs "web" (3 backends, 192.0.2.10-12) and "dns" (one, 192.0.2.20),
    /// every backend up.
    fn two_vips() -> Lb<FakeMaps> {
        let mut s = String::from("interface = \"lo\"\n");
        for (name, port, octets) in [("web", 80, &[10u8, 11, 12][..]), ("dns", 53, &[20][..])] {
            s += &format!(
                "\n[[vip]]\nname = \"{name}\"\naddress = \"198.51.100.10\"\nport = {port}\n\
                 table_size = 251\naffinity_timeout = \"60s\"\n"
            );
            for o in octets {
                s += &format!(
                    "\n[[vip.backend]]\naddress = \"192.0.2.{o}\"\nport = {port}\n\
                     mac = \"02:00:00:00:00:{o:02x}\"\n"
                );
            }
        }
        started(&Config::parse(&s).unwrap())
    }

    fn run(lb: &Lb<FakeMaps>, q: &FlowsQuery, now: u64) -> FlowsReply {
        let mut c = q.collect(now);
        for (k, e) in lb.maps().affinity_entries() {
            c.add(&k, &e);
        }
        c.finish()
    }

    #[test]
    fn flows_lists_the_first_by_vip_and_client_and_counts_all() {
        let mut lb = two_vips();
        let now = 100_000_000_000;
        let (web, dns) = (lb.vips()[0].id, lb.vips()[1].id);
        let web_ids: Vec<u32> = lb.vips()[0].backends.iter().map(|b| b.id).collect();
        let dns_id = lb.vips()[1].backends[0].id;
        // Inserted out of order; web has the lower VIP id, dns the name
        // that sorts first.
        for c in (0..10u8).rev() {
            lb.maps_mut()
                .pin(web, [10, 0, 0, c], web_ids[usize::from(c) % 3], now);
        }
        lb.maps_mut().pin(dns, [10, 0, 0, 1], dns_id, now);
        // An entry to a removed backend is listed, with no backend.
        lb.maps_mut().pin(dns, [10, 0, 0, 2], 999, now);

        let all = run(&lb, &lb.flows_query(None, None, 100).unwrap(), now);
        assert_eq!((all.total, all.truncated, all.limit), (12, false, 100));
        let order: Vec<(&str, u8)> = all
            .flows
            .iter()
            .map(|f| (f.vip.as_str(), f.client.octets()[3]))
            .collect();
        assert_eq!(order[..3], [("dns", 1), ("dns", 2), ("web", 0)]);
        assert_eq!(all.flows[1].backend, None);
        assert!(!all.flows[1].live);
        assert!(all.flows[0].live);

        let first = run(&lb, &lb.flows_query(None, None, 4).unwrap(), now);
        assert_eq!((first.total, first.truncated), (12, true));
        assert_eq!(first.flows, all.flows[..4]);

        let b = lb.vips()[0].backends[1].addr;
        let one = run(&lb, &lb.flows_query(Some("web"), Some(b), 2).unwrap(), now);
        assert_eq!((one.total, one.truncated), (3, true));
        assert!(one.flows.iter().all(|f| f.backend == Some(b)));
        let clients: Vec<u8> = one.flows.iter().map(|f| f.client.octets()[3]).collect();
        assert_eq!(clients, [1, 4]);

        let counted = run(&lb, &lb.flows_query(Some("dns"), None, 0).unwrap(), now);
        assert_eq!((counted.total, counted.truncated), (2, true));
        assert!(counted.flows.is_empty());
    }

    #[test]
    fn flows_refuses_an_unknown_vip_and_a_limit_above_the_maximum() {
        let lb = two_vips();
        assert!(matches!(
            lb.flows_query(Some("nope"), None, 10),
            Err(LbError::UnknownVip(_))
        ));
        let e = lb
            .flows_query(None, None, MAX_FLOWS_LIMIT + 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("above the maximum"), "{e}");
        assert!(lb.flows_query(None, None, MAX_FLOWS_LIMIT).is_ok());
    }

    #[test]
    fn status_takes_the_counts_it_is_given_and_reads_no_affinity_entry() {
        let mut lb = two_vips();
        let web = lb.vips()[0].id;
        let ids: Vec<u32> = lb.vips()[0].backends.iter().map(|b| b.id).collect();
        lb.maps_mut().pin(web, [10, 0, 0, 1], ids[0], 0);
        let counted = ids[1];
        let vips = lb
            .status(
                |vip, b| if (vip, b) == (web, counted) { 7 } else { 0 },
                |_| 0,
            )
            .unwrap();
        let clients: Vec<usize> = vips[0].backends.iter().map(|b| b.clients).collect();
        assert_eq!(clients, [0, 7, 0]);
        let slots: usize = vips[0].backends.iter().map(|b| b.slots).sum();
        assert_eq!(slots, 251);
    }
}
