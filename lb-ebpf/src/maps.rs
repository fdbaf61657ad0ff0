//! The maps the program shares with the daemon. Names, capacities and value
//! types come from lb-common; a host test checks the names in the built
//! object against `lb_common::map_names::ALL`.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use lb_common::{
    AffinityKey, AffinityValue, BackendInfo, BackendStats, DEFAULT_AFFINITY_CAPACITY, MAX_BACKENDS,
    MAX_VIPS, OwnMac, PinBudget, RING_POOL_SIZE, SYNC_RING_BYTES, SyncSettings, TunnelSettings,
    VipInfo, VipKey, VipSlot, VipStats, global_counter, vip_index,
};

/// Which (address, port, protocol) are VIPs, and how each is balanced.
#[map(name = "SLB_VIPS")]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(MAX_VIPS, 0);

/// MAC and liveness of every backend, by backend id.
#[map(name = "SLB_BACKENDS")]
pub static BACKENDS: Array<BackendInfo> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Maglev tables of all VIPs: slot → backend id. Memory-mappable, so the
/// daemon writes and reads tables as plain memory instead of one syscall
/// per slot.
#[map(name = "SLB_RING")]
pub static RING: Array<u32> = Array::with_max_entries(RING_POOL_SIZE, BPF_F_MMAPABLE);

/// The sticky table: (VIP, client) → backend. LRU so a full table forgets the
/// quietest clients instead of refusing new ones.
#[map(name = "SLB_AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(DEFAULT_AFFINITY_CAPACITY, 0);

/// Per-CPU counters per VIP id.
#[map(name = "SLB_VIP_STATS")]
pub static VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Per-CPU counters per backend id.
#[map(name = "SLB_BE_STATS")]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per-CPU counters of frames passed to the stack, by `global_counter` index.
#[map(name = "SLB_GLOBAL")]
pub static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(global_counter::COUNT, 0);

/// Per-CPU new UDP pins of the current window, per VIP id (see
/// `VipInfo::udp_pin_budget`). Per CPU, so that counting needs no atomics.
#[map(name = "SLB_PIN_BUDGET")]
pub static PIN_BUDGET: PerCpuArray<PinBudget> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// The MAC of the interface we are attached to (the daemon writes it).
#[map(name = "SLB_OWN_MAC")]
pub static OWN_MAC: Array<OwnMac> = Array::with_max_entries(1, 0);

/// New pins, re-pins and refreshes for the daemon to send to its peers
/// (`SyncEvent`s). One ring for all CPUs: the daemon reads one stream, and
/// the kernel's reservation lock is taken only for new pins and for at most
/// one refresh per busy entry per second.
#[map(name = "SLB_SYNC_EVENTS")]
pub static SYNC_EVENTS: RingBuf = RingBuf::with_byte_size(SYNC_RING_BYTES, 0);

/// Whether to write sync events, and how often to announce a busy pin.
#[map(name = "SLB_SYNC")]
pub static SYNC: Array<SyncSettings> = Array::with_max_entries(1, 0);

/// How the tunnel modes build the outer header (the daemon writes it).
#[map(name = "SLB_TUNNEL")]
pub static TUNNEL: Array<TunnelSettings> = Array::with_max_entries(1, 0);

/// `SLB_VIPS` again as an array found by hashing the key (`vip_index`): an
/// array lookup the verifier inlines, where the hash map's costs a jhash,
/// a bucket walk and a memcmp on every packet.
#[map(name = "SLB_VIP_INDEX")]
pub static VIP_INDEX: Array<VipSlot> = Array::with_max_entries(vip_index::SLOTS, 0);

/// The VIP `key` names: from its slot in `SLB_VIP_INDEX` if it has one
/// there and the slot was not being rewritten while read, else from
/// `SLB_VIPS`, which holds every VIP. A copy, since an index slot may be
/// rewritten under us.
#[inline(always)]
pub fn find_vip(key: &VipKey) -> Option<VipInfo> {
    let word = key.word();
    let home = vip_index::home(word);
    for probe in 0..vip_index::PROBES {
        let Some(slot) = VIP_INDEX.get_ptr(vip_index::slot(home, probe)) else {
            break;
        };
        // SAFETY: a map value pointer stays valid for the whole program run;
        // the volatile reads keep the sequence lock's order (seq, key and
        // info, seq again), which x86's ordering of loads preserves.
        unsafe {
            let seq = core::ptr::read_volatile(&raw const (*slot).seq);
            if seq & 1 != 0 {
                break;
            }
            let have = core::ptr::read_volatile((&raw const (*slot).key).cast::<u64>());
            if have != word {
                continue;
            }
            let info = core::ptr::read_volatile(&raw const (*slot).info);
            if core::ptr::read_volatile(&raw const (*slot).seq) != seq {
                break;
            }
            return Some(info);
        }
    }
    // SAFETY: a map value pointer stays valid for the whole program run.
    unsafe { VIPS.get(key) }.copied()
}

#[inline(always)]
pub fn count_global(index: u32) {
    if let Some(c) = GLOBAL_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no other writer while this program runs here.
        unsafe { *c += 1 };
    }
}
