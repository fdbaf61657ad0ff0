//! `SLB_VIP_INDEX`, the array copy of `SLB_VIPS` the XDP program reads
//! first (see `lb_common::vip_index`).
//!
//! The program trusts a slot only when its sequence number is even and the
//! same before and after it read the slot, so every rewrite takes three
//! updates: the sequence made odd, the new contents (still odd), the
//! sequence made even again. A reader that overlaps any of them sees an odd
//! or a changed sequence and falls back to `SLB_VIPS`. The index is only
//! ever a shortcut: a VIP missing from it is served from the hash, so a
//! full window or a failed write costs speed, never a frame. What must
//! hold is the other direction: no even slot names info `SLB_VIPS` no
//! longer has. So a VIP's slots are made odd before its hash entry changes
//! and rewritten after, and a VIP leaves the index before the hash.
//!
//! Every operation reads the slots it decides on from the map rather than
//! from a copy of our own, so that what another process wrote over the same
//! pins (a test's or a tool's load, an interrupted run) is seen; a key found
//! in two slots of its window is cleared from all but one.

use aya::maps::{Array, MapData, MapError};
use bytemuck::Zeroable as _;
use lb_common::{VipInfo, VipKey, VipSlot, map_names, vip_index};

use super::{Result, map_err};

/// Whether VIPs are put in the index at all. The program's read of a slot
/// relies on x86-64 keeping loads in order (the sequence, then the slot,
/// then the sequence again); a weakly ordered CPU would need load-acquire
/// there, so elsewhere the index stays empty and every VIP is found in
/// `SLB_VIPS`.
const ENABLED: bool = cfg!(target_arch = "x86_64");

pub(super) struct VipIndex {
    map: Array<MapData, VipSlot>,
    /// `ENABLED`, unless `disable` was called.
    enabled: bool,
}

fn window(key: &VipKey) -> impl Iterator<Item = u32> + Clone {
    let home = vip_index::home(key.word());
    (0..vip_index::PROBES).map(move |p| vip_index::slot(home, p))
}

impl VipIndex {
    pub(super) fn new(map: Array<MapData, VipSlot>) -> Self {
        Self {
            map,
            enabled: ENABLED,
        }
    }

    /// Empties the index and keeps it empty.
    pub(super) fn disable(&mut self) -> Result<()> {
        self.enabled = false;
        self.reconcile(&[])
    }

    fn get(&self, index: u32) -> Result<VipSlot> {
        self.map
            .get(&index, 0)
            .map_err(map_err(map_names::VIP_INDEX, "get"))
    }

    fn set(&mut self, index: u32, slot: VipSlot) -> Result<()> {
        self.map
            .set(index, slot, 0)
            .map_err(map_err(map_names::VIP_INDEX, "set"))
    }

    /// Makes slot `index` odd (in doubt: the program asks `SLB_VIPS`); its
    /// sequence as it is now.
    fn doubt(&mut self, index: u32) -> Result<u32> {
        let old = self.get(index)?;
        if old.seq & 1 == 0 {
            self.set(
                index,
                VipSlot {
                    seq: old.seq | 1,
                    ..old
                },
            )?;
        }
        Ok(old.seq | 1)
    }

    /// Rewrites slot `index` to hold `key` and `info` (an empty slot if
    /// `key` is zeroed), under the sequence lock.
    fn write(&mut self, index: u32, key: VipKey, info: VipInfo) -> Result<()> {
        let odd = self.doubt(index)?;
        let new = VipSlot {
            seq: odd,
            _pad: 0,
            key,
            info,
        };
        self.set(index, new)?;
        self.set(
            index,
            VipSlot {
                seq: odd.wrapping_add(1),
                ..new
            },
        )
    }

    fn clear(&mut self, index: u32) -> Result<()> {
        self.write(index, VipKey::zeroed(), VipInfo::zeroed())
    }

    /// `key`'s window as the map holds it now: (index, slot), in order.
    fn read_window(&self, key: &VipKey) -> Result<Vec<(u32, VipSlot)>> {
        window(key).map(|i| Ok((i, self.get(i)?))).collect()
    }

    /// The slots of `key`'s window that hold it, in window order.
    fn holding(&self, key: &VipKey) -> Result<Vec<u32>> {
        Ok(self
            .read_window(key)?
            .into_iter()
            .filter(|(_, s)| s.key == *key)
            .map(|(i, _)| i)
            .collect())
    }

    /// The first slot of `key`'s window that holds it.
    pub(super) fn slot_of(&self, key: &VipKey) -> Result<Option<u32>> {
        Ok(self.holding(key)?.first().copied())
    }

    /// Before `key`'s entry in `SLB_VIPS` changes: every slot holding it
    /// made odd, so that from now until `place` the program asks the hash.
    pub(super) fn doubt_key(&mut self, key: &VipKey) -> Result<()> {
        for i in self.holding(key)? {
            self.doubt(i)?;
        }
        Ok(())
    }

    /// Puts `key` → `info` (already in `SLB_VIPS`) into its window: over
    /// the first slot holding it (any other one cleared), else into the
    /// first empty one. A full window leaves it out, which is no error
    /// (the program finds it in `SLB_VIPS`). On a failed write the slot is
    /// left odd or cleared, never with other info and an even sequence.
    pub(super) fn place(&mut self, key: VipKey, info: VipInfo) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let slots = self.read_window(&key)?;
        let mut held = slots.iter().filter(|(_, s)| s.key == key);
        let own = held.next().copied();
        for &(extra, _) in held {
            self.clear(extra)?;
        }
        let target = own.or_else(|| slots.iter().find(|(_, s)| s.is_empty()).copied());
        let Some((index, have)) = target else {
            log::debug!(
                "{}: no free slot for {}:{} in its window; served from {}",
                map_names::VIP_INDEX,
                key.ip(),
                key.port(),
                map_names::VIPS
            );
            return Ok(());
        };
        if have.seq & 1 == 0 && have.key == key && have.info == info {
            return Ok(());
        }
        self.write(index, key, info).inspect_err(|_| {
            let _ = self.clear(index);
        })
    }

    /// Takes `key` out of the index: every slot of its window holding it.
    /// An error leaves a slot either as it was or odd (unused), never
    /// naming other info.
    pub(super) fn remove(&mut self, key: &VipKey) -> Result<()> {
        for i in self.holding(key)? {
            self.clear(i)?;
        }
        Ok(())
    }

    /// Makes the index agree with `vips`, every entry of `SLB_VIPS`: slots
    /// left by another run (a VIP since removed, info since changed, a
    /// rewrite cut short, a key outside its window or in two slots) are
    /// cleared, then every VIP is placed.
    pub(super) fn reconcile(&mut self, vips: &[(VipKey, VipInfo)]) -> Result<()> {
        let slots = (0..vip_index::SLOTS)
            .map(|i| self.map.get(&i, 0))
            .collect::<std::result::Result<Vec<_>, MapError>>()
            .map_err(map_err(map_names::VIP_INDEX, "get"))?;
        let mut seen = Vec::new();
        for (index, slot) in (0..).zip(slots) {
            if slot.is_empty() && slot.seq & 1 == 0 {
                continue;
            }
            let current = vips.iter().find(|(k, _)| *k == slot.key).map(|(_, i)| i);
            let keep = self.enabled
                && slot.seq & 1 == 0
                && current == Some(&slot.info)
                && vip_index::in_window(slot.key.word(), index)
                && !seen.contains(&slot.key);
            if keep {
                seen.push(slot.key);
            } else {
                self.clear(index)?;
            }
        }
        for (key, info) in vips {
            self.place(*key, *info)?;
        }
        Ok(())
    }
}
