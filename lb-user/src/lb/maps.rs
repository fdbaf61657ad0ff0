//! The seam between the load balancer's bookkeeping and the kernel: what
//! `Lb` needs of the maps, so the same reconcile code runs on the real
//! data path and, in unit tests, on an in-memory fake that records every
//! write in order.

use lb_common::{
    AffinityKey, AffinityValue, BackendInfo, BackendStats, TunnelSettings, VipInfo, VipKey,
    VipStats, global_counter,
};

use crate::dataplane::{Dataplane, DataplaneError};

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// The data path's maps as `Lb` reads and writes them.
pub trait Maps {
    /// Every VIP in the VIP map.
    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>>;
    /// Every backend id marked in use, with its entry.
    fn backends_in_use(&self) -> Result<Vec<(u32, BackendInfo)>>;
    /// `len` ring slots from `base`.
    fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>>;
    fn set_vip(&mut self, key: VipKey, info: VipInfo) -> Result<()>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<()>;
    fn set_backend(&mut self, id: u32, info: BackendInfo) -> Result<()>;
    /// Writes `(slot, backend id)` pairs into the table at `base`; how many.
    fn write_ring(&mut self, base: u32, slots: &[(u32, u32)]) -> Result<usize>;
    fn affinity(&self, key: &AffinityKey) -> Result<Option<AffinityValue>>;
    /// Writes one affinity entry (a pin received from a peer).
    fn set_affinity(&mut self, key: AffinityKey, value: AffinityValue) -> Result<()>;
    /// Deletes the affinity entries `doomed` selects; how many.
    fn purge_affinity(
        &mut self,
        doomed: &dyn Fn(&AffinityKey, &AffinityValue) -> bool,
    ) -> Result<usize>;
    fn vip_stats(&self, vip_id: u32) -> Result<VipStats>;
    fn backend_stats(&self, backend_id: u32) -> Result<BackendStats>;
    fn global_stats(&self) -> Result<[u64; global_counter::COUNT as usize]>;
    /// The outer header of the tunnel modes (`SLB_TUNNEL`).
    fn tunnel(&self) -> Result<TunnelSettings>;
    fn set_tunnel(&mut self, settings: TunnelSettings) -> Result<()>;
}

impl Maps for Dataplane {
    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>> {
        Dataplane::vips(self)
    }
    fn backends_in_use(&self) -> Result<Vec<(u32, BackendInfo)>> {
        Dataplane::backends_in_use(self)
    }
    fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>> {
        Dataplane::read_ring(self, base, len)
    }
    fn set_vip(&mut self, key: VipKey, info: VipInfo) -> Result<()> {
        Dataplane::set_vip(self, key, info)
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        Dataplane::remove_vip(self, key)
    }
    fn set_backend(&mut self, id: u32, info: BackendInfo) -> Result<()> {
        Dataplane::set_backend(self, id, info)
    }
    fn write_ring(&mut self, base: u32, slots: &[(u32, u32)]) -> Result<usize> {
        Dataplane::write_ring(self, base, slots.iter().copied())
    }
    fn affinity(&self, key: &AffinityKey) -> Result<Option<AffinityValue>> {
        Dataplane::affinity(self, key)
    }
    fn set_affinity(&mut self, key: AffinityKey, value: AffinityValue) -> Result<()> {
        Dataplane::set_affinity(self, key, value)
    }
    fn purge_affinity(
        &mut self,
        doomed: &dyn Fn(&AffinityKey, &AffinityValue) -> bool,
    ) -> Result<usize> {
        Dataplane::purge_affinity(self, doomed)
    }
    fn vip_stats(&self, vip_id: u32) -> Result<VipStats> {
        Dataplane::vip_stats(self, vip_id)
    }
    fn backend_stats(&self, backend_id: u32) -> Result<BackendStats> {
        Dataplane::backend_stats(self, backend_id)
    }
    fn global_stats(&self) -> Result<[u64; global_counter::COUNT as usize]> {
        Dataplane::global_stats(self)
    }
    fn tunnel(&self) -> Result<TunnelSettings> {
        Dataplane::tunnel_settings(self)
    }
    fn set_tunnel(&mut self, settings: TunnelSettings) -> Result<()> {
        Dataplane::set_tunnel(self, settings)
    }
}
