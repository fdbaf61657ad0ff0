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
//! hold is the other direction: a slot never names a VIP's stale info for
//! longer than the update that changed it, which is why the hash is
//! written before the index and a VIP leaves the index before the hash.

use aya::maps::{Array, MapData, MapError};
use bytemuck::Zeroable as _;
use lb_common::{VipInfo, VipKey, VipSlot, map_names, vip_index};

use super::{Result, map_err};

pub(super) struct VipIndex {
    map: Array<MapData, VipSlot>,
    /// What each slot holds: we are its only writer, so this is read from
    /// the map once, when it is opened.
    slots: Vec<VipSlot>,
}

impl VipIndex {
    pub(super) fn open(map: Array<MapData, VipSlot>) -> Result<Self> {
        let slots = (0..vip_index::SLOTS)
            .map(|i| map.get(&i, 0))
            .collect::<std::result::Result<_, MapError>>()
            .map_err(map_err(map_names::VIP_INDEX, "get"))?;
        Ok(Self { map, slots })
    }

    fn set(&mut self, index: u32, slot: VipSlot) -> Result<()> {
        self.map
            .set(index, slot, 0)
            .map_err(map_err(map_names::VIP_INDEX, "set"))?;
        self.slots[index as usize] = slot;
        Ok(())
    }

    /// Rewrites slot `index` to hold `key` and `info` (an empty slot if
    /// `key` is zeroed), under the sequence lock.
    fn write(&mut self, index: u32, key: VipKey, info: VipInfo) -> Result<()> {
        let old = self.slots[index as usize];
        // An odd sequence left by an interrupted rewrite is odd already.
        let odd = old.seq | 1;
        self.set(index, VipSlot { seq: odd, ..old })?;
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

    /// The slot of `key`'s window that holds it.
    pub(super) fn slot_of(&self, key: &VipKey) -> Option<u32> {
        let home = vip_index::home(key.word());
        (0..vip_index::PROBES)
            .map(|p| vip_index::slot(home, p))
            .find(|&i| self.slots[i as usize].key == *key)
    }

    /// Puts `key` → `info` (already in `SLB_VIPS`) into its window: over
    /// its own slot, else into the first empty one. A full window leaves it
    /// out, which is no error (the program finds it in `SLB_VIPS`). On a
    /// failed write the slot is cleared if it can be, so that it cannot
    /// keep older info with an even sequence.
    pub(super) fn place(&mut self, key: VipKey, info: VipInfo) -> Result<()> {
        let home = vip_index::home(key.word());
        let window = (0..vip_index::PROBES).map(|p| vip_index::slot(home, p));
        let target = self
            .slot_of(&key)
            .or_else(|| window.clone().find(|&i| self.slots[i as usize].is_empty()));
        let Some(index) = target else {
            log::debug!(
                "{}: no free slot for {}:{} in its window; served from {}",
                map_names::VIP_INDEX,
                key.ip(),
                key.port(),
                map_names::VIPS
            );
            return Ok(());
        };
        let have = self.slots[index as usize];
        if have.seq & 1 == 0 && have.key == key && have.info == info {
            return Ok(());
        }
        self.write(index, key, info).inspect_err(|_| {
            let _ = self.clear(index);
        })
    }

    /// Takes `key` out of the index. An error leaves its slot either as it
    /// was or odd (unused), never naming other info.
    pub(super) fn remove(&mut self, key: &VipKey) -> Result<()> {
        match self.slot_of(key) {
            Some(index) => self.clear(index),
            None => Ok(()),
        }
    }

    /// Makes the index agree with `vips`, every entry of `SLB_VIPS`: slots
    /// left by another run (a VIP since removed, info since changed, a
    /// rewrite cut short, a key outside its window or in two slots) are
    /// cleared, then every VIP is placed.
    pub(super) fn reconcile(&mut self, vips: &[(VipKey, VipInfo)]) -> Result<()> {
        let mut seen = Vec::new();
        for index in 0..vip_index::SLOTS {
            let slot = self.slots[index as usize];
            if slot.is_empty() && slot.seq & 1 == 0 {
                continue;
            }
            let current = vips.iter().find(|(k, _)| *k == slot.key).map(|(_, i)| i);
            let keep = slot.seq & 1 == 0
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
