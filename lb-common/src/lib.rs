//! Everything the stickylb XDP program and its user-space daemon must agree on:
//! map names and capacities, flag bits, counter indices, the `#[repr(C)]` types
//! stored in maps, and the client hash. Each is defined here and nowhere else.
//!
//! The crate is `no_std` so the XDP program can use it; the `user` feature adds
//! what only user space needs (aya `Pod` impls and the Maglev table builder).
#![no_std]

#[cfg(test)]
extern crate std;

#[cfg(feature = "user")]
extern crate alloc;

pub mod checksum;
pub mod counters;
pub mod hash;
#[cfg(feature = "user")]
pub mod maglev;
pub mod select;
pub mod tunnel;
pub mod types;
pub mod vip_index;

pub use hash::client_hash;
pub use types::*;

/// Name of the XDP program (the function name in lb-ebpf).
pub const PROGRAM_NAME: &str = "stickylb";

/// Map names as they appear in the object file and under the pin directory.
/// The kernel keeps 15 bytes of a map name, so every name fits in that.
pub mod map_names {
    /// `VipKey` → `VipInfo`: which (address, port, protocol) are load-balanced.
    pub const VIPS: &str = "SLB_VIPS";
    /// backend id → `BackendInfo`: MAC and liveness of every backend.
    pub const BACKENDS: &str = "SLB_BACKENDS";
    /// Pool of Maglev slots (backend ids); each VIP owns `ring_size` slots
    /// starting at its `ring_base`.
    pub const RING: &str = "SLB_RING";
    /// `AffinityKey` → `AffinityValue`: the sticky table (LRU).
    pub const AFFINITY: &str = "SLB_AFFINITY";
    /// Per-CPU `VipStats`, indexed by VIP id.
    pub const VIP_STATS: &str = "SLB_VIP_STATS";
    /// Per-CPU `BackendStats`, indexed by backend id.
    pub const BACKEND_STATS: &str = "SLB_BE_STATS";
    /// Per-CPU `u64` counters for traffic that is not a VIP's, indexed by
    /// `global_counter::*`.
    pub const GLOBAL_STATS: &str = "SLB_GLOBAL";
    /// Per-CPU `PinBudget`, indexed by VIP id.
    pub const PIN_BUDGET: &str = "SLB_PIN_BUDGET";
    /// One `OwnMac` (index 0): the MAC of the interface the program is
    /// attached to, the source MAC of every forwarded frame.
    pub const OWN_MAC: &str = "SLB_OWN_MAC";
    /// Ring buffer of `SyncEvent`s (new pins, re-pins, refreshes) the daemon
    /// drains and sends to its peers.
    pub const SYNC_EVENTS: &str = "SLB_SYNC_EVENTS";
    /// One `SyncSettings` (index 0): whether the program writes sync events,
    /// and how often it announces a busy pin again.
    pub const SYNC: &str = "SLB_SYNC";
    /// One `TunnelSettings` (index 0): the outer header of the tunnel modes.
    pub const TUNNEL: &str = "SLB_TUNNEL";
    /// `VipSlot`s: `SLB_VIPS` again, as an array the program reads without
    /// hashing (`vip_index`). Only a shortcut: a VIP it lacks is found in
    /// `SLB_VIPS`.
    pub const VIP_INDEX: &str = "SLB_VIP_INDEX";

    /// Every map the XDP program defines.
    pub const ALL: [&str; 13] = [
        VIPS,
        BACKENDS,
        RING,
        AFFINITY,
        VIP_STATS,
        BACKEND_STATS,
        GLOBAL_STATS,
        PIN_BUDGET,
        OWN_MAC,
        SYNC_EVENTS,
        SYNC,
        TUNNEL,
        VIP_INDEX,
    ];
}

/// The decap program's maps (`stickylb decap`, lb-ebpf's `stickylb-decap`).
pub mod decap_map_names {
    /// One `DecapSettings` (index 0).
    pub const CFG: &str = "SLB_DECAP_CFG";
    /// LPM trie `DecapSourceKey` → `u8` (1): the accepted outer sources.
    pub const SOURCES: &str = "SLB_DECAP_SRC";
    /// Per-CPU `u64`, indexed by `decap_counter`.
    pub const STATS: &str = "SLB_DECAP_STATS";

    pub const ALL: [&str; 3] = [CFG, SOURCES, STATS];
}

/// Name of the decap program (the function name in lb-ebpf's decap.rs).
pub const DECAP_PROGRAM_NAME: &str = "stickylb_decap";
/// Most source prefixes the decap program accepts.
pub const MAX_DECAP_SOURCES: u32 = 256;

/// The shape of each map as the kernel reports it (`bpf_map_info`): what a
/// map pinned by an earlier run must match to be adopted. The XDP program's
/// definitions (lb-ebpf/src/maps.rs) use the same sizes and capacities, and a
/// privileged test compares the maps it creates with this table.
pub mod map_shapes {
    use core::mem::size_of;

    use crate::{
        AffinityKey, AffinityValue, BackendInfo, BackendStats, MAX_BACKENDS, MAX_VIPS, OwnMac,
        PinBudget, RING_POOL_SIZE, SYNC_RING_BYTES, SyncSettings, TunnelSettings, VipInfo, VipKey,
        VipSlot, VipStats, global_counter, map_names, vip_index,
    };

    /// `BPF_MAP_TYPE_*` numbers (uapi/linux/bpf.h).
    pub mod kind {
        pub const HASH: u32 = 1;
        pub const ARRAY: u32 = 2;
        pub const PERCPU_ARRAY: u32 = 6;
        pub const LRU_HASH: u32 = 9;
        pub const RINGBUF: u32 = 27;
    }

    /// `BPF_F_MMAPABLE`: the ring is read and written through mmap.
    pub const F_MMAPABLE: u32 = 1 << 10;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MapShape {
        pub name: &'static str,
        pub kind: u32,
        pub key_size: u32,
        pub value_size: u32,
        /// `None`: chosen at load time (the affinity table's capacity).
        pub max_entries: Option<u32>,
        pub flags: u32,
    }

    const fn shape(
        name: &'static str,
        kind: u32,
        key: usize,
        value: usize,
        max_entries: Option<u32>,
        flags: u32,
    ) -> MapShape {
        MapShape {
            name,
            kind,
            key_size: key as u32,
            value_size: value as u32,
            max_entries,
            flags,
        }
    }

    /// Every map, in `map_names::ALL` order.
    pub const ALL: [MapShape; 13] = [
        shape(
            map_names::VIPS,
            kind::HASH,
            size_of::<VipKey>(),
            size_of::<VipInfo>(),
            Some(MAX_VIPS),
            0,
        ),
        shape(
            map_names::BACKENDS,
            kind::ARRAY,
            4,
            size_of::<BackendInfo>(),
            Some(MAX_BACKENDS),
            0,
        ),
        shape(
            map_names::RING,
            kind::ARRAY,
            4,
            4,
            Some(RING_POOL_SIZE),
            F_MMAPABLE,
        ),
        shape(
            map_names::AFFINITY,
            kind::LRU_HASH,
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
            None,
            0,
        ),
        shape(
            map_names::VIP_STATS,
            kind::PERCPU_ARRAY,
            4,
            size_of::<VipStats>(),
            Some(MAX_VIPS),
            0,
        ),
        shape(
            map_names::BACKEND_STATS,
            kind::PERCPU_ARRAY,
            4,
            size_of::<BackendStats>(),
            Some(MAX_BACKENDS),
            0,
        ),
        shape(
            map_names::GLOBAL_STATS,
            kind::PERCPU_ARRAY,
            4,
            8,
            Some(global_counter::COUNT),
            0,
        ),
        shape(
            map_names::PIN_BUDGET,
            kind::PERCPU_ARRAY,
            4,
            size_of::<PinBudget>(),
            Some(MAX_VIPS),
            0,
        ),
        shape(
            map_names::OWN_MAC,
            kind::ARRAY,
            4,
            size_of::<OwnMac>(),
            Some(1),
            0,
        ),
        // A ring buffer has neither keys nor values; its capacity is its
        // size in bytes.
        shape(
            map_names::SYNC_EVENTS,
            kind::RINGBUF,
            0,
            0,
            Some(SYNC_RING_BYTES),
            0,
        ),
        shape(
            map_names::SYNC,
            kind::ARRAY,
            4,
            size_of::<SyncSettings>(),
            Some(1),
            0,
        ),
        shape(
            map_names::TUNNEL,
            kind::ARRAY,
            4,
            size_of::<TunnelSettings>(),
            Some(1),
            0,
        ),
        shape(
            map_names::VIP_INDEX,
            kind::ARRAY,
            4,
            size_of::<VipSlot>(),
            Some(vip_index::SLOTS),
            0,
        ),
    ];
}

/// Most VIPs one load balancer serves (ids `0..MAX_VIPS`).
pub const MAX_VIPS: u32 = 64;
/// Most backends over all VIPs (ids `0..MAX_BACKENDS`).
pub const MAX_BACKENDS: u32 = 4096;
/// Slots in the ring pool shared by all VIPs. With the default table size this
/// holds 32 tables, so every VIP can have a second one to switch to atomically.
pub const RING_POOL_SIZE: u32 = 1 << 21;
/// Default capacity of the affinity table (clients × VIPs remembered). The
/// daemon can change it at load time; the LRU evicts the least recent entry
/// when full.
pub const DEFAULT_AFFINITY_CAPACITY: u32 = 1 << 20;
/// Default Maglev table size: a prime, as the algorithm requires.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// Default seed of the client hash. Every LB node serving the same VIP must use
/// the same seed to pick the same backends.
pub const DEFAULT_HASH_SEED: u32 = 0x5eed_0b1c;
/// Default affinity (idle) timeout: how long a quiet client keeps its backend.
pub const DEFAULT_AFFINITY_TIMEOUT_NS: u64 = 300 * 1_000_000_000;
/// The XDP program refreshes an affinity entry's `last_seen_ns` at most this
/// often, so the hit path does not write the map on every packet. A client's
/// effective idle timeout is therefore between `timeout - AFFINITY_REFRESH_NS`
/// and `timeout`.
pub const AFFINITY_REFRESH_NS: u64 = 1_000_000_000;
/// Size of the `SLB_SYNC_EVENTS` ring buffer (a power of two, as the kernel
/// requires). An event takes 40 bytes there (32 and the kernel's 8-byte
/// header), so 2 MiB hold about 52,000: half a second of a burst of 100,000
/// new clients a second, while the daemon drains it every few ms. A full
/// ring loses events (counted as `sync_events_lost`), never frames; a lost
/// refresh is tried again by the entry's next packet after a second.
pub const SYNC_RING_BYTES: u32 = 1 << 21;
/// When the Maglev slot of a new client names a backend the daemon has marked
/// dead but not yet removed from the table, the program tries this many
/// following slots for an alive one before dropping.
pub const MAX_PROBES: u32 = 8;
/// Ring slot value meaning "no backend".
pub const NO_BACKEND: u32 = u32::MAX;
/// The window of `VipInfo::udp_pin_budget`.
pub const PIN_BUDGET_WINDOW_NS: u64 = 1_000_000_000;
/// Fewest new UDP pins per CPU per window `udp_pin_budget` gives a VIP, so a
/// VIP with a very long timeout still pins its clients at a modest rate.
pub const MIN_UDP_PIN_BUDGET: u32 = 16;

/// The `VipInfo::udp_pin_budget` the daemon writes: new UDP pins per CPU per
/// second such that, with every CPU spending its whole budget on spoofed
/// sources for a whole affinity timeout, the flood's entries fill at most
/// half of an affinity table of `capacity` entries, and so cannot evict the
/// clients of the other half before they time out. Never below
/// `MIN_UDP_PIN_BUDGET`; never 0 (which means unbounded).
pub const fn udp_pin_budget(capacity: u32, timeout_ns: u64, cpus: u32) -> u32 {
    let windows = timeout_ns.div_ceil(PIN_BUDGET_WINDOW_NS);
    let windows = if windows == 0 { 1 } else { windows };
    let cpus = if cpus == 0 { 1 } else { cpus as u64 };
    let budget = capacity as u64 / 2 / cpus / windows;
    if budget < MIN_UDP_PIN_BUDGET as u64 {
        MIN_UDP_PIN_BUDGET
    } else if budget > u32::MAX as u64 {
        u32::MAX
    } else {
        budget as u32
    }
}

/// `BackendInfo::flags` bits.
pub mod backend_flags {
    /// Set while the backend passes its health checks. Affinity to a backend
    /// without it is ignored and the client is re-picked at once.
    pub const ALIVE: u16 = 1 << 0;
    /// The id is allocated to a configured backend (user-space bookkeeping;
    /// the data path only looks at `ALIVE`).
    pub const IN_USE: u16 = 1 << 1;
}

/// IP protocol numbers a VIP can have (and the ones the tunnels use).
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Defines the `global_counter` indices, `COUNT` and `NAMES` from one list,
/// so an index and its name cannot drift apart.
macro_rules! indexed_counters {
    ($($(#[$doc:meta])* $index:ident = $name:literal,)*) => {
        // Numbers the indices 0, 1, ... in list order.
        #[repr(u32)]
        #[expect(
            non_camel_case_types,
            reason = "each variant is named after the constant it numbers"
        )]
        enum Index {
            $($index,)*
        }

        $(
            $(#[$doc])*
            pub const $index: u32 = Index::$index as u32;
        )*

        /// Number of counters.
        pub const COUNT: u32 = NAMES.len() as u32;

        /// Names, indexed like the counters, for metrics and status output.
        pub const NAMES: [&str; [$($name),*].len()] = [$($name),*];
    };
}

/// Indices into the `SLB_GLOBAL` per-CPU array: what happened to frames that
/// are not forwarded as VIP traffic. Appending one changes the map's size,
/// which a restart refuses to adopt (see `map_shapes`).
pub mod global_counter {
    indexed_counters! {
        /// Frame too short for an Ethernet header.
        PASS_SHORT_ETH = "pass_short_eth",
        /// Not IPv4 (ARP, IPv6, ...).
        PASS_NOT_IPV4 = "pass_not_ipv4",
        /// IPv4 header truncated or invalid (version, IHL).
        PASS_BAD_IPV4 = "pass_bad_ipv4",
        /// IPv4, but neither TCP nor UDP.
        PASS_NOT_TCP_UDP = "pass_not_tcp_udp",
        /// Non-first fragment: it has no ports, so it cannot be matched to a VIP.
        PASS_FRAGMENT = "pass_fragment",
        /// TCP/UDP header truncated.
        PASS_SHORT_L4 = "pass_short_l4",
        /// Well-formed TCP/UDP, but not to a VIP.
        PASS_NOT_VIP = "pass_not_vip",
        /// A VIP frame whose destination MAC is multicast/broadcast: it was not
        /// sent to this host (and when `SLB_OWN_MAC` is unset, the source MAC
        /// of a forwarded frame is taken from it), so it is left to the stack.
        PASS_MULTICAST_DST = "pass_multicast_dst",
        /// VLAN-tagged in the frame (802.1Q or 802.1ad ethertype): never
        /// forwarded, since a backend on another VLAN, or none, would get it.
        PASS_VLAN = "pass_vlan",
        /// A VIP frame addressed to another host's MAC (a bridge flooding
        /// unknown unicast, a NIC in promiscuous mode): the host it was sent
        /// to forwards it; forwarding it here too would hand its backend a
        /// second copy. Counted only once the daemon wrote `SLB_OWN_MAC`.
        PASS_OTHER_HOST = "pass_other_host",
        /// An ICMP error (destination unreachable, time exceeded) quoting
        /// neither a VIP's flow nor a tunnel frame of this node's: left to
        /// the stack. (ICMP that is not an error, such as echo, counts as
        /// `pass_not_tcp_udp`, as before.)
        PASS_ICMP_UNMATCHED = "pass_icmp_unmatched",
        /// Not a frame: a sync event (`SLB_SYNC_EVENTS`) the program could
        /// not write because the ring was full. The frame was forwarded.
        SYNC_EVENTS_LOST = "sync_events_lost",
    }

    /// The counters above that count frames passed to the stack (all but
    /// the last, which counts lost sync events).
    pub const PASSED: core::ops::Range<u32> = 0..SYNC_EVENTS_LOST;
}

/// Indices into the decap program's `SLB_DECAP_STATS` per-CPU array.
pub mod decap_counter {
    indexed_counters! {
        /// IP-in-IP from an accepted source to this backend: decapsulated.
        DECAP_IPIP = "decap_ipip",
        /// GUE from an accepted source to this backend: decapsulated.
        DECAP_GUE = "decap_gue",
        /// A tunnel frame from a source that is not an accepted load
        /// balancer's: dropped (the backend is not an open relay).
        REJECT_SOURCE = "reject_source",
        /// A tunnel frame from an accepted source to another address than
        /// this backend's: dropped.
        REJECT_DEST = "reject_dest",
        /// A tunnel frame whose inner packet is not a whole IPv4 header (or
        /// is a fragment of the outer packet), or is Not-ECT in an outer
        /// header marked CE (RFC 6040 says to drop it): dropped.
        REJECT_MALFORMED = "reject_malformed",
        /// Anything else (not IPv4, not IP-in-IP, not to the GUE port):
        /// passed unchanged.
        PASS_NOT_TUNNEL = "pass_not_tunnel",
    }
}

#[cfg(test)]
mod tests {
    use super::{map_names, map_shapes};

    #[test]
    fn global_counters_keep_their_indices() {
        // The indices are the pinned map's layout: a counter of an earlier
        // run must keep its slot.
        use super::global_counter::*;
        assert_eq!(COUNT, 12);
        assert_eq!(
            (
                PASS_SHORT_ETH,
                PASS_NOT_VIP,
                PASS_MULTICAST_DST,
                PASS_VLAN,
                PASS_OTHER_HOST,
                PASS_ICMP_UNMATCHED,
                SYNC_EVENTS_LOST
            ),
            (0, 6, 7, 8, 9, 10, 11)
        );
        assert_eq!(PASSED, 0..11);
        assert_eq!(NAMES[PASS_NOT_VIP as usize], "pass_not_vip");
    }

    #[test]
    fn every_map_has_its_shape_in_order() {
        let names: [&str; 13] = core::array::from_fn(|i| map_shapes::ALL[i].name);
        assert_eq!(names, map_names::ALL);
    }

    #[test]
    fn udp_pin_budget_leaves_half_the_table_to_real_clients() {
        use super::{MIN_UDP_PIN_BUDGET, udp_pin_budget};
        const S: u64 = 1_000_000_000;
        // The defaults: 1M entries, 300 s, 2 CPUs.
        let b = udp_pin_budget(1 << 20, 300 * S, 2);
        assert_eq!(b, 873);
        assert!(u64::from(b) * 2 * 300 <= (1 << 20) / 2);
        // A timeout that is not whole seconds rounds up (fewer pins).
        assert_eq!(udp_pin_budget(1 << 20, 300 * S - 1, 2), 873);
        // Timeout 0 (never sticky) counts as one window; 0 CPUs as one.
        assert_eq!(udp_pin_budget(1 << 20, 0, 0), 1 << 19);
        // Never below the floor, never 0 (unbounded).
        assert_eq!(udp_pin_budget(1024, 86_400 * S, 64), MIN_UDP_PIN_BUDGET);
    }
}
