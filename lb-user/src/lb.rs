//! The load balancer's state in user space, and how it is kept equal to the
//! data path's maps: VIP and backend ids, Maglev tables, liveness.
//!
//! Everything that changes the maps goes through here, in an order that keeps
//! clients where they are: a backend is marked dead in the backends map
//! before its slots are rewritten (so its clients are re-picked at once), only
//! changed slots are written, and ids are re-identified from the maps on
//! start so a restarted daemon changes nothing that need not change.

use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use lb_common::{
    AffinityKey, BackendInfo, BackendStats, MAX_BACKENDS, MAX_VIPS, NO_BACKEND, RING_POOL_SIZE,
    VipInfo, VipKey, VipStats, backend_flags, maglev, select,
};
use log::{info, warn};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    config::{self, BackendConfig, Config, HealthConfig, VipConfig},
    dataplane::{Dataplane, DataplaneError},
    health::{Outcome, State},
    util::monotonic_ns,
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
}

pub type Result<T, E = LbError> = std::result::Result<T, E>;

/// Where a backend's MAC came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MacSource {
    Config,
    Neighbour,
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Backend {
    pub id: u32,
    pub addr: SocketAddrV4,
    /// Weight in effect (config, or a live `backend weight` change).
    pub weight: u32,
    /// Drained at run time (`backend drain`): no new clients.
    pub drained: bool,
    pub health: Option<State>,
    pub health_cfg: HealthConfig,
    pub mac: Option<[u8; 6]>,
    pub mac_source: MacSource,
    pub last_check: Option<Outcome>,
    /// Why the backend is in its state, for status output.
    pub reason: String,
    /// Whether the backend came from the config file (false: added live).
    pub from_config: bool,
}

impl Backend {
    /// Forwardable: healthy and with a MAC to send to.
    pub fn alive(&self) -> bool {
        self.health == Some(State::Up) && self.mac.is_some()
    }

    /// Takes new clients.
    pub fn in_service(&self) -> bool {
        self.alive() && !self.drained && self.weight > 0
    }

    fn info(&self, vip_id: u32) -> BackendInfo {
        BackendInfo {
            mac: self.mac.unwrap_or([0; 6]),
            flags: backend_flags::IN_USE
                | if self.alive() {
                    backend_flags::ALIVE
                } else {
                    0
                },
            addr: self.addr.ip().octets(),
            port: self.addr.port().to_be_bytes(),
            vip_id: vip_id as u16,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Vip {
    pub name: String,
    pub id: u32,
    pub key: VipKey,
    pub info: VipInfo,
    pub cfg: VipConfig,
    /// Slot → backend id, as in the ring.
    pub table: Vec<u32>,
    pub backends: Vec<Backend>,
}

/// What one table rebuild did.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct RebuildReport {
    pub slots_written: usize,
    pub build_us: u64,
    pub write_us: u64,
}

/// First-fit allocation of table regions in the ring pool.
#[derive(Clone, Debug, Default)]
struct RingAlloc {
    used: Vec<(u32, u32)>,
}

impl RingAlloc {
    fn alloc(&mut self, size: u32) -> Result<u32> {
        self.used.sort_unstable();
        let mut start = 0u32;
        for &(base, len) in &self.used {
            if base >= start + size {
                break;
            }
            start = start.max(base + len);
        }
        if start + size > RING_POOL_SIZE {
            return Err(LbError::RingFull(size));
        }
        self.used.push((start, size));
        Ok(start)
    }

    fn free(&mut self, base: u32) {
        self.used.retain(|&(b, _)| b != base);
    }
}

pub struct Lb {
    pub dp: Dataplane,
    hash_seed: u32,
    pub vips: Vec<Vip>,
    ring: RingAlloc,
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

fn vip_key(cfg: &VipConfig) -> VipKey {
    VipKey::new(cfg.address, cfg.port, cfg.protocol.number())
}

fn backend_from_config(id: u32, cfg: &BackendConfig) -> Backend {
    Backend {
        id,
        addr: SocketAddrV4::new(cfg.address, cfg.port),
        weight: cfg.weight,
        drained: false,
        health: None,
        health_cfg: cfg.health.clone(),
        mac: cfg.mac,
        mac_source: if cfg.mac.is_some() {
            MacSource::Config
        } else {
            MacSource::Unknown
        },
        last_check: None,
        reason: "not checked yet".into(),
        from_config: true,
    }
}

impl Lb {
    /// Takes over the maps (fresh or adopted from a previous run) and makes
    /// them match `cfg`. Adopted VIPs are matched by (address, port,
    /// protocol), adopted backends by (VIP, address, port); they keep their
    /// ids, tables and liveness, so nothing moves.
    pub fn start(dp: Dataplane, cfg: &Config) -> Result<Self> {
        let mut lb = Self {
            dp,
            hash_seed: cfg.hash_seed,
            vips: Vec::new(),
            ring: RingAlloc::default(),
        };
        let adopted_vips = lb.dp.vips()?;
        let adopted_backends = lb.dp.backends_in_use()?;
        for (key, info) in adopted_vips {
            let Some(vcfg) = cfg.vips.iter().find(|v| vip_key(v) == key) else {
                // Not in the config any more.
                lb.dp.remove_vip(&key)?;
                let purged = lb.dp.purge_affinity(|k, _| k.vip_id == info.vip_id)?;
                info!(
                    "VIP {}:{} of the previous run is not configured: removed ({purged} affinity entries dropped)",
                    key.ip(),
                    key.port()
                );
                continue;
            };
            let table = lb.dp.read_ring(info.ring_base, info.ring_size)?;
            lb.ring.used.push((info.ring_base, info.ring_size));
            // Backends of this VIP that the config no longer has are not
            // adopted: they are cleared below, before any id is reused.
            let backends = adopted_backends
                .iter()
                .filter(|(_, b)| u32::from(b.vip_id) == info.vip_id)
                .filter_map(|&(id, b)| {
                    let addr =
                        SocketAddrV4::new(Ipv4Addr::from(b.addr), u16::from_be_bytes(b.port));
                    let bcfg = vcfg
                        .backends
                        .iter()
                        .find(|c| c.address == *addr.ip() && c.port == addr.port())?;
                    let mut be = backend_from_config(id, bcfg);
                    // Adopt liveness: a restart must not flap anything. A
                    // backend that was not alive is re-learned from scratch.
                    if b.flags & backend_flags::ALIVE != 0 {
                        be.health = Some(State::Up);
                        be.reason = "adopted as up from the running data path".into();
                        if be.mac.is_none() {
                            be.mac = Some(b.mac);
                            be.mac_source = MacSource::Neighbour;
                        }
                    }
                    Some(be)
                })
                .collect();
            lb.vips.push(Vip {
                name: vcfg.name.clone(),
                id: info.vip_id,
                key,
                info,
                cfg: vcfg.clone(),
                table,
                backends,
            });
        }
        // Adopted backend ids that were not adopted above (their VIP or they
        // are gone from the config): dead for the data path at once, their
        // clients' entries purged, so an id reused below inherits nobody.
        // The tables stop naming them when apply_config rebuilds them.
        let adopted = lb.used_backend_ids();
        for (id, b) in &adopted_backends {
            if !adopted.contains(id) {
                lb.clear_backend(*id)?;
                let purged = lb.dp.purge_affinity(|_, v| v.backend_id == *id)?;
                info!(
                    "backend {}:{} of the previous run is not configured: removed ({purged} clients re-picked)",
                    Ipv4Addr::from(b.addr),
                    u16::from_be_bytes(b.port)
                );
            }
        }
        lb.apply_config(cfg)?;
        Ok(lb)
    }

    fn clear_backend(&mut self, id: u32) -> Result<()> {
        self.dp.set_backend(
            id,
            BackendInfo {
                mac: [0; 6],
                flags: 0,
                addr: [0; 4],
                port: [0; 2],
                vip_id: 0,
            },
        )?;
        Ok(())
    }

    fn used_backend_ids(&self) -> BTreeSet<u32> {
        self.vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id))
            .collect()
    }

    fn alloc_backend_id(&self, also_taken: &BTreeSet<u32>) -> Result<u32> {
        let used = self.used_backend_ids();
        (0..MAX_BACKENDS)
            .find(|id| !used.contains(id) && !also_taken.contains(id))
            .ok_or(LbError::Exhausted(MAX_BACKENDS, "backend"))
    }

    fn alloc_vip_id(&self) -> Result<u32> {
        let used: BTreeSet<u32> = self.vips.iter().map(|v| v.id).collect();
        (0..MAX_VIPS)
            .find(|id| !used.contains(id))
            .ok_or(LbError::Exhausted(MAX_VIPS, "VIP"))
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

    /// Makes the maps match `cfg`: VIPs and backends added, changed or
    /// removed; runtime state (health, drain) kept for what stays.
    ///
    /// What can run out (ring space, ids) is checked before anything is
    /// touched, so a config that cannot be applied changes nothing.
    pub fn apply_config(&mut self, cfg: &Config) -> Result<()> {
        // Which running VIP each config entry continues: by name, else a
        // VIP with its (address, port, protocol) that no entry names.
        let mut running: Vec<Option<String>> = vec![None; cfg.vips.len()];
        let mut taken = vec![false; self.vips.len()];
        for (ci, c) in cfg.vips.iter().enumerate() {
            if let Some(ri) = self.vips.iter().position(|v| v.name == c.name) {
                running[ci] = Some(c.name.clone());
                taken[ri] = true;
            }
        }
        for (ci, c) in cfg.vips.iter().enumerate() {
            if running[ci].is_some() {
                continue;
            }
            let key = vip_key(c);
            if let Some(ri) =
                (0..self.vips.len()).find(|&ri| !taken[ri] && self.vips[ri].key == key)
            {
                running[ci] = Some(self.vips[ri].name.clone());
                taken[ri] = true;
            }
        }
        self.check_ring_space(cfg, &running, &taken)?;

        self.hash_seed = cfg.hash_seed;
        // Removals first, freeing ids and ring space for what is added.
        for ri in (0..self.vips.len()).rev() {
            if !taken[ri] {
                self.remove_vip(ri)?;
            }
        }
        for (c, name) in cfg.vips.iter().zip(&running) {
            if let Some(name) = name {
                let vi = self.vip_index(name)?;
                self.remove_backends_not_in(vi, c)?;
            }
        }
        let mut old_keys = Vec::new();
        for (c, name) in cfg.vips.iter().zip(&running) {
            match name {
                Some(name) => {
                    let vi = self.vip_index(name)?;
                    old_keys.push(self.vips[vi].key);
                    self.update_vip(vi, c)?;
                }
                None => self.add_vip(c)?,
            }
        }
        // Only now: a VIP may have taken over another's old key (a swap, or
        // a shift along a range of ports), which must stay.
        for key in old_keys {
            if !self.vips.iter().any(|v| v.key == key) {
                self.dp.remove_vip(&key)?;
            }
        }
        Ok(())
    }

    /// Replays `apply_config`'s ring allocations on a copy of the allocator.
    fn check_ring_space(
        &self,
        cfg: &Config,
        running: &[Option<String>],
        kept: &[bool],
    ) -> Result<()> {
        let mut ring = self.ring.clone();
        for (v, _) in self.vips.iter().zip(kept).filter(|(_, k)| !**k) {
            ring.free(v.info.ring_base);
        }
        for (c, name) in cfg.vips.iter().zip(running) {
            let old = name
                .as_ref()
                .and_then(|n| self.vips.iter().find(|v| v.name == *n));
            match old {
                Some(v) if v.info.ring_size == c.table_size => {}
                Some(v) => {
                    ring.alloc(c.table_size).map_err(|_| fragmented(c))?;
                    ring.free(v.info.ring_base);
                }
                None => {
                    ring.alloc(c.table_size).map_err(|_| fragmented(c))?;
                }
            }
        }
        Ok(())
    }

    fn vip_info(&self, id: u32, cfg: &VipConfig, base: u32) -> VipInfo {
        VipInfo {
            vip_id: id,
            flags: 0,
            ring_base: base,
            ring_size: cfg.table_size,
            hash_seed: self.hash_seed,
            forwarding: lb_common::ForwardingMode::from(cfg.forwarding).as_u8(),
            _pad: [0; 3],
            affinity_timeout_ns: cfg.affinity_timeout.as_nanos() as u64,
        }
    }

    fn add_vip(&mut self, cfg: &VipConfig) -> Result<()> {
        let id = self.alloc_vip_id()?;
        let base = self.ring.alloc(cfg.table_size)?;
        let mut taken = BTreeSet::new();
        let mut backends = Vec::new();
        for b in &cfg.backends {
            let bid = self.alloc_backend_id(&taken)?;
            taken.insert(bid);
            backends.push(backend_from_config(bid, b));
        }
        let info = self.vip_info(id, cfg, base);
        let key = vip_key(cfg);
        // Start from an all-empty table so the first rebuild writes every slot.
        self.dp
            .write_ring(base, (0..cfg.table_size).map(|s| (s, NO_BACKEND)))?;
        self.vips.push(Vip {
            name: cfg.name.clone(),
            id,
            key,
            info,
            cfg: cfg.clone(),
            table: vec![NO_BACKEND; cfg.table_size as usize],
            backends,
        });
        let vi = self.vips.len() - 1;
        for bi in 0..self.vips[vi].backends.len() {
            self.write_backend(vi, bi)?;
        }
        self.rebuild(vi)?;
        self.dp.set_vip(key, info)?;
        info!(
            "VIP {} {}:{}/{} added with {} backends",
            cfg.name,
            cfg.address,
            cfg.port,
            cfg.protocol,
            cfg.backends.len()
        );
        Ok(())
    }

    /// Removes the VIP's backends that `cfg` does not list (by address:port),
    /// live-added ones included.
    fn remove_backends_not_in(&mut self, vi: usize, cfg: &VipConfig) -> Result<()> {
        let gone: Vec<SocketAddrV4> = self.vips[vi]
            .backends
            .iter()
            .filter(|b| {
                !cfg.backends
                    .iter()
                    .any(|c| c.address == *b.addr.ip() && c.port == b.addr.port())
            })
            .map(|b| b.addr)
            .collect();
        self.remove_backends(vi, &gone)?;
        Ok(())
    }

    /// Brings a running VIP to `cfg`. The caller has already removed the
    /// backends `cfg` does not list (`remove_backends_not_in`, for every VIP
    /// before any addition), and removes the VIP's old key from the VIP map
    /// if no VIP holds it afterwards.
    fn update_vip(&mut self, vi: usize, cfg: &VipConfig) -> Result<()> {
        let old_key = self.vips[vi].key;
        let new_key = vip_key(cfg);
        self.vips[vi].name = cfg.name.clone();
        self.vips[vi].cfg = cfg.clone();

        // Backends: update or add, matched by address:port.
        for bcfg in &cfg.backends {
            let addr = SocketAddrV4::new(bcfg.address, bcfg.port);
            match self.vips[vi].backends.iter().position(|b| b.addr == addr) {
                Some(bi) => {
                    let b = &mut self.vips[vi].backends[bi];
                    b.weight = bcfg.weight;
                    b.drained = false;
                    b.health_cfg = bcfg.health.clone();
                    b.from_config = true;
                    if bcfg.mac.is_some() {
                        b.mac = bcfg.mac;
                        b.mac_source = MacSource::Config;
                    } else if b.mac_source == MacSource::Config {
                        // Keep forwarding to the MAC in use until the
                        // neighbour table says otherwise: dropping it would
                        // take the backend out and re-pin all its clients.
                        b.mac_source = MacSource::Neighbour;
                    }
                    self.write_backend(vi, bi)?;
                }
                None => {
                    let id = self.alloc_backend_id(&BTreeSet::new())?;
                    self.vips[vi].backends.push(backend_from_config(id, bcfg));
                    let bi = self.vips[vi].backends.len() - 1;
                    self.write_backend(vi, bi)?;
                }
            }
        }

        // A new table size needs a new region: fill it, then switch the VIP
        // to it in one map update, so no frame sees a half-written table.
        let old = self.vips[vi].info;
        let mut info = self.vip_info(self.vips[vi].id, cfg, old.ring_base);
        if cfg.table_size != old.ring_size {
            info.ring_base = self.ring.alloc(cfg.table_size)?;
            self.dp
                .write_ring(info.ring_base, (0..cfg.table_size).map(|s| (s, NO_BACKEND)))?;
            self.vips[vi].table = vec![NO_BACKEND; cfg.table_size as usize];
        }
        self.vips[vi].info = info;
        self.rebuild(vi)?;
        if info != old || new_key != old_key {
            self.dp.set_vip(new_key, info)?;
        }
        if info.ring_base != old.ring_base {
            self.ring.free(old.ring_base);
            info!("VIP {}: table size now {}", cfg.name, cfg.table_size);
        }
        self.vips[vi].key = new_key;
        Ok(())
    }

    fn remove_vip(&mut self, vi: usize) -> Result<()> {
        let vip = self.vips.remove(vi);
        self.dp.remove_vip(&vip.key)?;
        for b in &vip.backends {
            self.clear_backend(b.id)?;
        }
        self.ring.free(vip.info.ring_base);
        let purged = self.dp.purge_affinity(|k, _| k.vip_id == vip.id)?;
        info!(
            "VIP {} removed ({purged} affinity entries dropped)",
            vip.name
        );
        Ok(())
    }

    /// Writes backend `bi` of VIP `vi` to the backends map.
    fn write_backend(&mut self, vi: usize, bi: usize) -> Result<()> {
        let v = &self.vips[vi];
        let b = &v.backends[bi];
        self.dp.set_backend(b.id, b.info(v.id))?;
        Ok(())
    }

    /// Rebuilds VIP `vi`'s Maglev table and writes the slots that changed.
    pub fn rebuild(&mut self, vi: usize) -> Result<RebuildReport> {
        let t0 = Instant::now();
        let v = &self.vips[vi];
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
        let base = v.info.ring_base;
        let slots_written = self.dp.write_ring(base, changes)?;
        self.vips[vi].table = table;
        Ok(RebuildReport {
            slots_written,
            build_us,
            write_us: t1.elapsed().as_micros() as u64,
        })
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
        let b = &mut self.vips[vi].backends[bi];
        let was_alive = b.alive();
        b.health = Some(state);
        b.reason = reason.to_owned();
        let addr = b.addr;
        let name = self.vips[vi].name.clone();
        self.write_backend(vi, bi)?;
        let report = self.rebuild(vi)?;
        let now_alive = self.vips[vi].backends[bi].alive();
        let state_word = match state {
            State::Up => "up",
            State::Down => "down",
        };
        if was_alive != now_alive || state == State::Down {
            info!(
                "{name}: backend {addr} {state_word}: {reason} ({} slots rewritten in {} us)",
                report.slots_written,
                report.build_us + report.write_us
            );
        } else {
            info!("{name}: backend {addr} {state_word}: {reason}");
        }
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
        if b.mac_source == MacSource::Config || b.mac == mac {
            return Ok(());
        }
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
        }
        Ok(())
    }

    /// Adds a backend at run time (not written to the config file).
    pub fn add_backend(
        &mut self,
        vip: &str,
        addr: SocketAddrV4,
        weight: u32,
        mac: Option<[u8; 6]>,
    ) -> Result<u32> {
        let vi = self.vip_index(vip)?;
        if self.vips[vi].backends.iter().any(|b| b.addr == addr) {
            return Err(LbError::DuplicateBackend {
                vip: vip.to_owned(),
                addr,
            });
        }
        let cfg = BackendConfig {
            address: *addr.ip(),
            port: addr.port(),
            weight,
            mac,
            health: self.vips[vi].cfg.health.clone(),
        };
        let problems = config::backend_problems(&cfg, &self.vips[vi].cfg);
        if !problems.is_empty() {
            let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(LbError::Invalid(all.join("; ")));
        }
        let id = self.alloc_backend_id(&BTreeSet::new())?;
        let mut b = backend_from_config(id, &cfg);
        b.from_config = false;
        self.vips[vi].backends.push(b);
        let bi = self.vips[vi].backends.len() - 1;
        self.write_backend(vi, bi)?;
        info!(
            "{vip}: backend {addr} added (weight {weight}); it takes clients once its check passes"
        );
        Ok(id)
    }

    /// Removes a backend: out of the table and dead for the data path first,
    /// then its id is freed and its clients' entries purged so a later
    /// backend reusing the id inherits nobody.
    pub fn remove_backend(&mut self, vi: usize, addr: SocketAddrV4) -> Result<u32> {
        Ok(self.remove_backends(vi, &[addr])?[0])
    }

    /// Removes several backends of one VIP with one table rebuild and one
    /// pass over the affinity table (which may hold millions of entries);
    /// their ids, in order.
    fn remove_backends(&mut self, vi: usize, addrs: &[SocketAddrV4]) -> Result<Vec<u32>> {
        if addrs.is_empty() {
            return Ok(Vec::new());
        }
        for &addr in addrs {
            self.backend_index(vi, addr)?;
        }
        let mut ids = Vec::new();
        for &addr in addrs {
            let bi = self.backend_index(vi, addr)?;
            ids.push(self.vips[vi].backends.remove(bi).id);
        }
        self.rebuild(vi)?;
        for &id in &ids {
            self.clear_backend(id)?;
        }
        let purged = self.dp.purge_affinity(|_, v| ids.contains(&v.backend_id))?;
        let names: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        info!(
            "{}: backend {} removed; {purged} clients re-picked on their next packet",
            self.vips[vi].name,
            names.join(", ")
        );
        Ok(ids)
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
        let vi = self.vip_index(vip)?;
        let bi = self.backend_index(vi, addr)?;
        self.vips[vi].backends[bi].weight = weight;
        let r = self.rebuild(vi)?;
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
        let vi = self.vip_index(vip)?;
        let bi = self.backend_index(vi, addr)?;
        self.vips[vi].backends[bi].drained = drained;
        let r = self.rebuild(vi)?;
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
            let entry = self.dp.affinity(&key)?;
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
        for (k, e) in self.dp.affinity_entries()? {
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
        for (k, e) in self.dp.affinity_entries()? {
            if timeouts.get(&k.vip_id).is_some_and(|&t| e.is_live(now, t)) {
                *clients_of.entry((k.vip_id, e.backend_id)).or_default() += 1;
            }
        }
        let mut out = Vec::new();
        for v in &self.vips {
            let stats = self.dp.vip_stats(v.id)?;
            let mut slots_of: HashMap<u32, usize> = HashMap::new();
            for &id in &v.table {
                *slots_of.entry(id).or_default() += 1;
            }
            let mut backends = Vec::new();
            for b in &v.backends {
                let s = self.dp.backend_stats(b.id)?;
                let clients = clients_of.get(&(v.id, b.id)).copied().unwrap_or(0);
                let slots = slots_of.get(&b.id).copied().unwrap_or(0);
                backends.push(BackendStatus {
                    id: b.id,
                    address: b.addr,
                    state: match (b.health, b.alive()) {
                        (Some(State::Up), true) if b.drained || b.weight == 0 => "draining".into(),
                        (Some(State::Up), true) => "up".into(),
                        (Some(State::Up), false) => "up (no MAC)".into(),
                        (Some(State::Down), _) => "down".into(),
                        (None, _) => "unknown".into(),
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

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LookupResult {
    pub vip: String,
    pub client: Ipv4Addr,
    pub backend: Option<SocketAddrV4>,
    pub reason: String,
    pub slot: Option<u32>,
    pub affinity_age_ms: Option<u64>,
    pub affinity_idle_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowEntry {
    pub vip: String,
    pub client: Ipv4Addr,
    pub backend: Option<SocketAddrV4>,
    pub age_ms: u64,
    pub idle_ms: u64,
    pub live: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    pub id: u32,
    pub address: SocketAddrV4,
    pub state: String,
    pub reason: String,
    pub weight: u32,
    pub drained: bool,
    pub mac: Option<String>,
    pub mac_source: MacSource,
    pub check: Option<String>,
    pub check_latency_ms: Option<f64>,
    /// Maglev slots owned.
    pub slots: usize,
    /// Clients with a live affinity entry.
    pub clients: usize,
    #[serde(flatten)]
    pub counters: BackendStats,
    pub from_config: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VipStatus {
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    pub table_size: u32,
    pub affinity_timeout_s: f64,
    pub alive_backends: usize,
    #[serde(flatten)]
    pub counters: VipStats,
    pub backends: Vec<BackendStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_alloc_first_fit() {
        let mut r = RingAlloc::default();
        assert_eq!(r.alloc(100).unwrap(), 0);
        assert_eq!(r.alloc(50).unwrap(), 100);
        assert_eq!(r.alloc(10).unwrap(), 150);
        r.free(100);
        assert_eq!(r.alloc(40).unwrap(), 100);
        assert_eq!(r.alloc(20).unwrap(), 160);
        assert!(matches!(r.alloc(RING_POOL_SIZE), Err(LbError::RingFull(_))));
    }
}
