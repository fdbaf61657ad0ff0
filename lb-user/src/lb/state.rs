//! What the daemon knows of each VIP and backend, beyond what the maps say:
//! configuration, health, where a MAC came from; and the ring pool's layout.

use std::{net::SocketAddrV4, time::Instant};

use lb_common::{BackendInfo, RING_POOL_SIZE, VipInfo, VipKey, backend_flags};

use super::{LbError, Result};
use crate::{
    api::MacSource,
    config::{BackendConfig, HealthConfig, VipConfig},
    health::{Outcome, State},
};

/// A backend's identity for as long as the daemon runs. Its `id` (its index
/// in the data path's maps) is reused as soon as it is free, so within one
/// change a backend may take the id of another that left; the serial is
/// never reused, so what is keyed by it (its checker, and the checker's
/// results) cannot pass to another backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendSerial(u64);

impl std::fmt::Display for BackendSerial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Hands out serials: one source per `Lb`.
#[derive(Clone, Debug, Default)]
pub(super) struct Serials(u64);

impl Serials {
    pub(super) fn next(&mut self) -> BackendSerial {
        self.0 += 1;
        BackendSerial(self.0)
    }
}

#[derive(Clone, Debug)]
pub struct Backend {
    pub id: u32,
    /// Never shared with another backend, unlike `id`.
    pub serial: BackendSerial,
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
    /// While its VIP warms up: by when its first check result is due (it
    /// counts as down if none has come by then).
    pub first_result_by: Option<Instant>,
    /// While its VIP warms up: why its checks could not run (a local error
    /// of this host's), so that counting it down says so.
    pub checks_blocked: Option<String>,
}

impl Backend {
    /// `routed`: its VIP forwards through a tunnel, so it has no MAC.
    pub(super) fn new(id: u32, serial: BackendSerial, spec: &BackendSpec, routed: bool) -> Self {
        let cfg = &spec.cfg;
        Self {
            id,
            serial,
            addr: SocketAddrV4::new(cfg.address, cfg.port),
            weight: cfg.weight,
            drained: spec.drained,
            health: None,
            health_cfg: cfg.health.clone(),
            mac: cfg.mac.filter(|_| !routed),
            mac_source: if routed {
                MacSource::Routed
            } else if cfg.mac.is_some() {
                MacSource::Config
            } else {
                MacSource::Unknown
            },
            last_check: None,
            reason: "not checked yet".into(),
            from_config: spec.from_config,
            first_result_by: None,
            checks_blocked: None,
        }
    }

    /// Forwardable: healthy and with a MAC to send to (a routed backend
    /// needs none).
    pub fn alive(&self) -> bool {
        self.health == Some(State::Up) && (self.routed() || self.mac.is_some())
    }

    /// A tunnel VIP's backend: reached through the routing table, no MAC.
    pub fn routed(&self) -> bool {
        self.mac_source == MacSource::Routed
    }

    /// Takes new clients.
    pub fn in_service(&self) -> bool {
        self.alive() && !self.drained && self.weight > 0
    }

    /// Its entry in the backends map.
    pub fn info(&self, vip_id: u32) -> BackendInfo {
        BackendInfo {
            mac: self.mac.filter(|_| !self.routed()).unwrap_or([0; 6]),
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

    /// What this backend is asked to be: the part a plan compares.
    pub fn spec(&self) -> BackendSpec {
        BackendSpec {
            cfg: BackendConfig {
                address: *self.addr.ip(),
                port: self.addr.port(),
                weight: self.weight,
                mac: self.mac.filter(|_| self.mac_source == MacSource::Config),
                health: self.health_cfg.clone(),
            },
            drained: self.drained,
            from_config: self.from_config,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Vip {
    pub name: String,
    pub id: u32,
    pub key: VipKey,
    pub info: VipInfo,
    /// The VIP's settings; its `backends` list is always empty: the
    /// backends in effect are `backends` below.
    pub cfg: VipConfig,
    /// Slot → backend id, as in the ring.
    pub table: Vec<u32>,
    /// `table` is what a rebuild from `backends` as they are makes (false for
    /// a table read back from the maps: it may name backends that are gone
    /// or no longer alive, and must be rebuilt once).
    pub table_current: bool,
    pub backends: Vec<Backend>,
    /// `Some(since)` while the VIP waits for its backends' first check
    /// results: its table stays empty until then, so that no client is
    /// pinned from a partial view of its backends.
    pub warming_up: Option<Instant>,
    /// `Some` once every backend of the VIP went down while it served, until
    /// it serves again: its table stays empty, and from the first backend
    /// back it warms up (`warming_up` is then set) until every backend is
    /// back or `serve_by`. Rebuilt from the first backend back, its table
    /// would send every client arriving to that one, and keep them there.
    pub rewarm: Option<Rewarm>,
}

/// A VIP's re-warm after it lost every backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewarm {
    /// Set when the first backend is back: the VIP serves then, or before
    /// if every backend is back first.
    pub serve_by: Option<Instant>,
}

impl Vip {
    /// What this VIP is asked to be, live changes included.
    pub fn spec(&self) -> VipSpec {
        VipSpec {
            cfg: self.cfg.clone(),
            backends: self.backends.iter().map(Backend::spec).collect(),
        }
    }
}

/// One backend as asked for: by the config file, or by a live change.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendSpec {
    pub cfg: BackendConfig,
    /// Drained by `backend drain` (the file cannot say so: its weight 0 does).
    pub drained: bool,
    /// Listed in the file (false: added with `backend add`).
    pub from_config: bool,
}

impl BackendSpec {
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.cfg.address, self.cfg.port)
    }
}

/// One VIP as asked for. `cfg.backends` is not read: `backends` is the list.
#[derive(Clone, Debug, PartialEq)]
pub struct VipSpec {
    pub cfg: VipConfig,
    pub backends: Vec<BackendSpec>,
}

impl VipSpec {
    /// A VIP as the file says, live changes undone.
    pub fn from_config(cfg: &VipConfig) -> Self {
        let mut settings = cfg.clone();
        let backends = std::mem::take(&mut settings.backends)
            .into_iter()
            .map(|cfg| BackendSpec {
                cfg,
                drained: false,
                from_config: true,
            })
            .collect();
        Self {
            cfg: settings,
            backends,
        }
    }

    pub fn key(&self) -> VipKey {
        vip_key(&self.cfg)
    }
}

pub(super) fn vip_key(cfg: &VipConfig) -> VipKey {
    VipKey::new(cfg.address, cfg.port, cfg.protocol.number())
}

/// First-fit allocation of table regions in the ring pool. Derived from the
/// VIPs' entries whenever it is needed, so it cannot disagree with them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct RingAlloc {
    used: Vec<(u32, u32)>,
}

impl RingAlloc {
    /// The regions `vips` use.
    pub(super) fn of(vips: &[Vip]) -> Self {
        Self {
            used: vips
                .iter()
                .map(|v| (v.info.ring_base, v.info.ring_size))
                .collect(),
        }
    }

    pub(super) fn alloc(&mut self, size: u32) -> Result<u32> {
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

    pub(super) fn free(&mut self, base: u32) {
        self.used.retain(|&(b, _)| b != base);
    }
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
