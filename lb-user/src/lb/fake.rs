//! An in-memory stand-in for the data path's maps that logs every write in
//! order, so the reconcile logic (adoption, plan/apply, failover) is tested
//! without root and the order of map writes can be asserted.

use std::collections::{BTreeMap, HashMap};

use lb_common::{
    AffinityKey, AffinityValue, BackendInfo, BackendStats, MAX_BACKENDS, RING_POOL_SIZE,
    TunnelSettings, VipInfo, VipKey, VipStats, backend_flags, global_counter,
};

use super::maps::{Maps, Result};
use crate::dataplane::DataplaneError;

/// One write to the maps, as `FakeMaps` recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    SetVip(VipKey, VipInfo),
    RemoveVip(VipKey),
    SetBackend(u32, BackendInfo),
    /// Slots written at a table base: (slot, backend id) pairs.
    WriteRing {
        base: u32,
        slots: Vec<(u32, u32)>,
    },
    /// An affinity entry written (a pin received from a peer).
    SetAffinity(AffinityKey, AffinityValue),
    /// Affinity entries deleted, by (VIP id, backend id) of each.
    Purge(Vec<(u32, u32)>),
    /// `SLB_TUNNEL` written.
    SetTunnel(TunnelSettings),
}

/// Maps held in memory. Clone it to hand "the pinned state" to a second
/// `Lb`, as a restarted daemon would find it.
#[derive(Clone, Debug)]
pub struct FakeMaps {
    pub vips: HashMap<VipKey, VipInfo>,
    pub backends: Vec<BackendInfo>,
    pub ring: Vec<u32>,
    pub affinity: BTreeMap<(u32, [u8; 4]), AffinityValue>,
    pub tunnel: TunnelSettings,
    pub log: Vec<Op>,
    /// Writes that still succeed before every further one fails (None:
    /// all succeed), to see what a kernel error half-way leaves behind.
    pub writes_before_failure: Option<usize>,
}

impl Default for FakeMaps {
    fn default() -> Self {
        Self {
            vips: HashMap::new(),
            backends: vec![bytemuck::Zeroable::zeroed(); MAX_BACKENDS as usize],
            ring: vec![0; RING_POOL_SIZE as usize],
            affinity: BTreeMap::new(),
            tunnel: TunnelSettings::default(),
            log: Vec::new(),
            writes_before_failure: None,
        }
    }
}

impl FakeMaps {
    /// Every affinity entry, as a walk of the kernel map would see them.
    pub fn affinity_entries(&self) -> Vec<(AffinityKey, AffinityValue)> {
        self.affinity
            .iter()
            .map(|(&(vip_id, client), v)| (AffinityKey { vip_id, client }, *v))
            .collect()
    }

    /// Takes the log, leaving it empty.
    pub fn take_log(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.log)
    }

    /// Pins `client` of `vip_id` to `backend_id`, as the XDP program would.
    pub fn pin(&mut self, vip_id: u32, client: [u8; 4], backend_id: u32, now_ns: u64) {
        self.affinity.insert(
            (vip_id, client),
            AffinityValue {
                backend_id,
                synced_s: 0,
                created_ns: now_ns,
                last_seen_ns: now_ns,
            },
        );
    }

    /// Refuses a write once `writes_before_failure` are used up.
    fn write(&mut self) -> Result<()> {
        match &mut self.writes_before_failure {
            Some(0) => Err(DataplaneError::Map {
                map: "fake",
                op: "write (failure injected by the test)",
                source: Box::new(aya::maps::MapError::KeyNotFound),
            }),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn range(base: u32, len: u32) -> Result<std::ops::Range<usize>> {
        base.checked_add(len)
            .filter(|&e| e <= RING_POOL_SIZE)
            .map(|e| base as usize..e as usize)
            .ok_or(DataplaneError::RingRange { base, len })
    }
}

impl Maps for FakeMaps {
    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>> {
        let mut all: Vec<(VipKey, VipInfo)> = self.vips.iter().map(|(k, v)| (*k, *v)).collect();
        all.sort_by_key(|(k, _)| (k.addr, k.port, k.proto));
        Ok(all)
    }

    fn backends_in_use(&self) -> Result<Vec<(u32, BackendInfo)>> {
        Ok(self
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.flags & backend_flags::IN_USE != 0)
            .map(|(i, b)| (i as u32, *b))
            .collect())
    }

    fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>> {
        Ok(self.ring[Self::range(base, len)?].to_vec())
    }

    fn set_vip(&mut self, key: VipKey, info: VipInfo) -> Result<()> {
        self.write()?;
        self.vips.insert(key, info);
        self.log.push(Op::SetVip(key, info));
        Ok(())
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.write()?;
        self.vips.remove(key);
        self.log.push(Op::RemoveVip(*key));
        Ok(())
    }

    fn set_backend(&mut self, id: u32, info: BackendInfo) -> Result<()> {
        self.write()?;
        *self
            .backends
            .get_mut(id as usize)
            .ok_or(DataplaneError::RingRange { base: id, len: 1 })? = info;
        self.log.push(Op::SetBackend(id, info));
        Ok(())
    }

    fn write_ring(&mut self, base: u32, slots: &[(u32, u32)]) -> Result<usize> {
        self.write()?;
        for &(slot, value) in slots {
            let i = Self::range(base, slot.saturating_add(1))?.end - 1;
            self.ring[i] = value;
        }
        self.log.push(Op::WriteRing {
            base,
            slots: slots.to_vec(),
        });
        Ok(slots.len())
    }

    fn affinity(&self, key: &AffinityKey) -> Result<Option<AffinityValue>> {
        Ok(self.affinity.get(&(key.vip_id, key.client)).copied())
    }

    fn set_affinity(&mut self, key: AffinityKey, value: AffinityValue) -> Result<()> {
        self.write()?;
        self.affinity.insert((key.vip_id, key.client), value);
        self.log.push(Op::SetAffinity(key, value));
        Ok(())
    }

    fn purge_affinity(
        &mut self,
        doomed: &dyn Fn(&AffinityKey, &AffinityValue) -> bool,
    ) -> Result<usize> {
        self.write()?;
        let mut gone = Vec::new();
        self.affinity.retain(|&(vip_id, client), v| {
            let drop = doomed(&AffinityKey { vip_id, client }, v);
            if drop {
                gone.push((vip_id, v.backend_id));
            }
            !drop
        });
        let n = gone.len();
        self.log.push(Op::Purge(gone));
        Ok(n)
    }

    fn vip_stats(&self, _vip_id: u32) -> Result<VipStats> {
        Ok(VipStats::default())
    }

    fn backend_stats(&self, _backend_id: u32) -> Result<BackendStats> {
        Ok(BackendStats::default())
    }

    fn global_stats(&self) -> Result<[u64; global_counter::COUNT as usize]> {
        Ok([0; global_counter::COUNT as usize])
    }

    fn tunnel(&self) -> Result<TunnelSettings> {
        Ok(self.tunnel)
    }

    fn set_tunnel(&mut self, settings: TunnelSettings) -> Result<()> {
        self.write()?;
        self.tunnel = settings;
        self.log.push(Op::SetTunnel(settings));
        Ok(())
    }
}
