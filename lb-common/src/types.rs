//! Types stored in the maps. Each is `#[repr(C)]` with every padding byte an
//! explicit field, and derives `bytemuck::Pod`, whose derive refuses to compile
//! a struct with implicit padding. The size assertions pin the layout the XDP
//! program and the daemon share.
//!
//! Addresses and ports are kept in network byte order, exactly as they appear
//! in a packet, so the XDP program compares them without swapping.

use core::net::Ipv4Addr;

use bytemuck::{Pod, Zeroable};

use crate::counters::{
    Metric::{Own, Reason},
    counter_struct,
};

/// Key of `SLB_VIPS`: a load-balanced service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct VipKey {
    /// IPv4 address, network byte order.
    pub addr: [u8; 4],
    /// Port, network byte order.
    pub port: [u8; 2],
    /// `proto::TCP` or `proto::UDP`.
    pub proto: u8,
    pub _pad: u8,
}

impl VipKey {
    pub const fn new(addr: Ipv4Addr, port: u16, proto: u8) -> Self {
        Self {
            addr: addr.octets(),
            port: port.to_be_bytes(),
            proto,
            _pad: 0,
        }
    }

    pub const fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.addr[0], self.addr[1], self.addr[2], self.addr[3])
    }

    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }

    /// The key's eight bytes as one word, as the XDP program compares keys
    /// in `SLB_VIP_INDEX`. Never 0 for a real VIP (its protocol is TCP or
    /// UDP), which is how an empty slot is told apart.
    pub const fn word(&self) -> u64 {
        u64::from_ne_bytes([
            self.addr[0],
            self.addr[1],
            self.addr[2],
            self.addr[3],
            self.port[0],
            self.port[1],
            self.proto,
            self._pad,
        ])
    }
}

/// Value of `SLB_VIPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct VipInfo {
    /// Index into `SLB_VIP_STATS`, and part of every affinity key.
    pub vip_id: u32,
    /// New UDP clients the XDP program may pin per CPU per
    /// `PIN_BUDGET_WINDOW_NS`; past it, a new UDP client's frames are
    /// forwarded by the Maglev table without an entry. Bounds how fast a
    /// flood of spoofed sources can turn the affinity table over. 0: no
    /// bound (what this field, once reserved flags, holds in entries
    /// written before it existed). See `udp_pin_budget`.
    pub udp_pin_budget: u32,
    /// First slot of this VIP's Maglev table in `SLB_RING`.
    pub ring_base: u32,
    /// Number of slots in the table (a prime). Zero means "no table": every
    /// new client is dropped as having no backend.
    pub ring_size: u32,
    /// Seed of `client_hash` for this VIP.
    pub hash_seed: u32,
    /// How frames are sent to the backend: a `ForwardingMode` as `u8`.
    /// Carved out of what was padding, so an entry pinned by a version
    /// without it reads as 0, DSR, and the value's size did not change.
    pub forwarding: u8,
    pub _pad: [u8; 3],
    /// An affinity entry idle for longer than this is ignored and replaced.
    pub affinity_timeout_ns: u64,
}

/// Value of `SLB_VIP_INDEX`: a copy of one `SLB_VIPS` entry in an array
/// slot found by hashing its key (see `vip_index`), which the XDP program
/// reads with two plain loads where the hash map costs a hash and a bucket
/// walk. `seq` is a sequence lock: odd while the daemon rewrites the slot,
/// so a reader that sees it odd, or changed across its read, uses
/// `SLB_VIPS` instead. A zeroed slot is empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct VipSlot {
    pub seq: u32,
    pub _pad: u32,
    pub key: VipKey,
    pub info: VipInfo,
}

impl VipSlot {
    pub const fn is_empty(&self) -> bool {
        self.key.word() == 0
    }
}

/// How the XDP program sends a VIP's frames to the backend it picked
/// (`VipInfo::forwarding`). The discriminant is the value in the map.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ForwardingMode {
    /// L2 direct server return: only the MACs are rewritten; the backend
    /// holds the VIP on loopback and answers the client itself. 0, the value
    /// of every entry written before the mode existed.
    #[default]
    Dsr = 0,
    /// IP-in-IP (IPv4 protocol 4): an outer IPv4 header from
    /// `TunnelSettings`' source to the backend's address; the backend (any
    /// routed subnet) strips it with `stickylb decap` and answers the client
    /// directly from the VIP on loopback.
    Ipip = 1,
    /// GUE variant 1 (RFC draft-ietf-intarea-gue): outer IPv4 + UDP to the
    /// backend's address, port `TunnelSettings::gue_port`, the inner IPv4
    /// packet right after the UDP header. The UDP source port comes from the
    /// client hash, so the backend's NIC spreads clients over its queues.
    Gue = 2,
}

impl ForwardingMode {
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// `None` for a value this build does not know (one a newer version
    /// wrote): the XDP program drops such a VIP's frames rather than guess.
    pub const fn from_u8(v: u8) -> Option<Self> {
        const DSR: u8 = ForwardingMode::Dsr as u8;
        const IPIP: u8 = ForwardingMode::Ipip as u8;
        const GUE: u8 = ForwardingMode::Gue as u8;
        match v {
            DSR => Some(Self::Dsr),
            IPIP => Some(Self::Ipip),
            GUE => Some(Self::Gue),
            _ => None,
        }
    }

    /// Bytes the mode adds in front of the client's IPv4 packet.
    pub const fn overhead(self) -> u32 {
        match self {
            Self::Dsr => 0,
            Self::Ipip => IPIP_OVERHEAD,
            Self::Gue => GUE_OVERHEAD,
        }
    }

    /// Whether the backend is reached by encapsulation (routed, next hop
    /// from the kernel's FIB) rather than on this segment by its MAC.
    pub const fn is_tunnel(self) -> bool {
        !matches!(self, Self::Dsr)
    }
}

impl From<ForwardingMode> for u8 {
    fn from(m: ForwardingMode) -> Self {
        m.as_u8()
    }
}

impl TryFrom<u8> for ForwardingMode {
    /// The unknown value.
    type Error = u8;

    fn try_from(v: u8) -> Result<Self, u8> {
        Self::from_u8(v).ok_or(v)
    }
}

/// Value of `SLB_BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendInfo {
    /// Destination MAC written into frames forwarded to this backend (DSR).
    /// Unused, and zero, for a tunnel VIP's backend: the next hop's MAC
    /// comes from the kernel's FIB per frame.
    pub mac: [u8; 6],
    /// `backend_flags::*`.
    pub flags: u16,
    /// Backend address, network byte order. DSR does not use it (the VIP
    /// stays the destination); the tunnel modes send the outer header to it.
    pub addr: [u8; 4],
    /// Backend port, network byte order; informational like `addr`.
    pub port: [u8; 2],
    /// The VIP this backend serves (a backend id belongs to one VIP). With
    /// `addr` and `port` it lets a restarted daemon re-identify every id, so
    /// affinity entries keep pointing at the same server.
    pub vip_id: u16,
}

impl BackendInfo {
    pub const fn is_alive(&self) -> bool {
        self.flags & crate::backend_flags::ALIVE != 0
    }
}

/// Key of `SLB_AFFINITY`: one client of one VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AffinityKey {
    pub vip_id: u32,
    /// Client IPv4 address, network byte order.
    pub client: [u8; 4],
}

/// Value of `SLB_AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// When this entry was last announced to the peers (a sync event, or
    /// received from one): coarse seconds of the data-path clock
    /// (`bpf_ktime_get_coarse_ns() / 1e9`). 0: never. Lets the program
    /// announce a busy pin again at most every `SyncSettings::refresh_s`
    /// without a map of its own. Once `_pad`, always written 0, which
    /// reads as "never announced".
    pub synced_s: u32,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC at tick resolution)
    /// when the client was pinned.
    pub created_ns: u64,
    /// Last packet seen, refreshed at most every `AFFINITY_REFRESH_NS`.
    pub last_seen_ns: u64,
}

impl AffinityValue {
    /// Time since the client's last packet (as last recorded), at `now`.
    #[inline(always)]
    pub const fn idle_ns(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_seen_ns)
    }

    /// Whether the entry still pins its client at `now`: idle for less than
    /// the VIP's timeout. The one rule the XDP program applies and user
    /// space reports (so a timeout of 0 means "never sticky").
    #[inline(always)]
    pub const fn is_live(&self, now: u64, timeout_ns: u64) -> bool {
        self.idle_ns(now) < timeout_ns
    }
}

/// Value of `SLB_PIN_BUDGET` (per CPU, by VIP id): the new UDP pins made in
/// the current window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PinBudget {
    /// When the window began (`bpf_ktime_get_coarse_ns()`).
    pub window_start_ns: u64,
    /// Pins made since then.
    pub used: u32,
    pub _pad: u32,
}

/// Value of `SLB_OWN_MAC` (its one entry): the MAC of the interface the
/// program is attached to, written by the daemon when it attaches or adopts.
/// All zero: not known (a program loaded without a daemon, such as in
/// BPF_PROG_TEST_RUN); a forwarded frame then takes its source MAC from the
/// destination MAC it arrived with.
///
/// Aligned to 8 (as the kernel stores every map value) so that the program
/// reads it in one load.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct OwnMac {
    pub mac: [u8; 6],
    /// 1: a VIP frame addressed to another MAC is passed (`pass_other_host`),
    /// not forwarded: what the daemon writes. 0: forwarded whatever its
    /// destination, for BPF_PROG_TEST_RUN's `repeat`, which feeds the
    /// program its own output (addressed to the backend).
    pub only_to_us: u8,
    pub _pad: u8,
}

impl OwnMac {
    /// The daemon's: frames to other hosts are passed.
    pub const fn new(mac: [u8; 6]) -> Self {
        Self {
            mac,
            only_to_us: 1,
            _pad: 0,
        }
    }

    /// Frames are forwarded whatever their destination MAC (benchmarks).
    pub const fn any_destination(mac: [u8; 6]) -> Self {
        Self {
            mac,
            only_to_us: 0,
            _pad: 0,
        }
    }

    /// The MAC, if one was written, and whether only frames sent to it are
    /// forwarded. Taken from one 8-byte load and handed back by value: a
    /// copy of the bytes compiles, in the XDP program, to a call of a
    /// byte-by-byte `memmove` (the map value might alias the frame).
    #[inline(always)]
    pub fn load(&self) -> Option<([u8; 6], bool)> {
        let all = u64::from_le_bytes(bytemuck::cast(*self));
        let bits = all & 0xffff_ffff_ffff;
        let b = bits.to_le_bytes();
        (bits != 0).then_some(([b[0], b[1], b[2], b[3], b[4], b[5]], (all >> 48) & 1 != 0))
    }

    /// The MAC, if one was written.
    #[inline(always)]
    pub fn get(&self) -> Option<[u8; 6]> {
        self.load().map(|(mac, _)| mac)
    }
}

/// Outer IPv4 header + IPv4 protocol 4: what IP-in-IP adds.
pub const IPIP_OVERHEAD: u32 = 20;
/// Outer IPv4 header + UDP header (GUE variant 1 has no header of its own).
pub const GUE_OVERHEAD: u32 = 28;
/// The GUE port when the configuration names none.
pub const DEFAULT_GUE_PORT: u16 = 6080;
/// The outer TTL when the configuration names none.
pub const DEFAULT_TUNNEL_TTL: u8 = 64;

/// Value of `SLB_TUNNEL` (its one entry), written by the daemon: how the
/// tunnel modes build the outer header. All zero (no daemon, or one without
/// a tunnel VIP): a tunnel VIP's frames are dropped as `drop_no_route`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TunnelSettings {
    /// Outer source address (network byte order): this node's address.
    pub src_addr: [u8; 4],
    /// IP-in-IP only, when `src_prefix_len` > 0: the outer source is taken
    /// per client from this prefix (network byte order, host bits zero), its
    /// host bits from the client hash, so that a backend NIC hashing on
    /// the outer addresses spreads clients over its queues.
    pub src_prefix: [u8; 4],
    /// Length of `src_prefix` (0: off, the outer source is `src_addr`).
    pub src_prefix_len: u8,
    /// The outer header's TTL.
    pub ttl: u8,
    /// GUE destination port, network byte order.
    pub gue_port: [u8; 2],
    pub _pad: [u8; 4],
}

/// Value of the decap program's `SLB_DECAP_CFG` (its one entry), written by
/// `stickylb decap`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DecapSettings {
    /// The backend's own address (network byte order): the only outer
    /// destination accepted. All zero: nothing is decapsulated.
    pub local_addr: [u8; 4],
    /// GUE port accepted, network byte order; 0: GUE off.
    pub gue_port: [u8; 2],
    /// Nonzero: IP-in-IP accepted.
    pub ipip: u8,
    pub _pad: u8,
}

/// Key of the decap program's `SLB_DECAP_SRC` (an LPM trie): a load-balancer
/// source prefix whose tunnel packets are accepted. Laid out as the kernel's
/// `bpf_lpm_trie_key`: the prefix length, then the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DecapSourceKey {
    pub prefix_len: u32,
    /// Network byte order.
    pub addr: [u8; 4],
}

/// A record of `SLB_SYNC_EVENTS` (a ring buffer the daemon drains and sends
/// to its peers): the program pinned a client, re-pinned one, or refreshed a
/// pin whose peers' copies must not expire. Written only while sync is on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SyncEvent {
    pub key: AffinityKey,
    pub backend_id: u32,
    /// `sync_kind::*`.
    pub kind: u32,
    /// The entry's `created_ns` and `last_seen_ns` (data-path clock).
    pub created_ns: u64,
    pub last_seen_ns: u64,
}

/// Value of `SLB_SYNC` (its one entry), written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SyncSettings {
    /// Nonzero: write sync events.
    pub enabled: u32,
    /// A busy pin is announced again (a `REFRESH` event) once its last
    /// announcement is at least this many seconds old, so that its peers'
    /// copies do not expire while it is in use. Compared in whole seconds of
    /// `AffinityValue::synced_s`, and only when the entry's `last_seen_ns`
    /// is refreshed (at most every `AFFINITY_REFRESH_NS`).
    pub refresh_s: u32,
}

/// Seconds of the data-path clock, as `AffinityValue::synced_s` keeps them.
#[inline(always)]
pub const fn coarse_secs(ns: u64) -> u32 {
    (ns / 1_000_000_000) as u32
}

/// `SyncEvent::kind`.
pub mod sync_kind {
    pub const NEW: u32 = 1;
    pub const REPICK: u32 = 2;
    pub const REFRESH: u32 = 3;
}

/// The shared families of `VipStats`' reasons.
pub mod vip_families {
    use crate::counters::Family;

    pub const AFFINITY_MISSES: Family = Family {
        name: "vip_affinity_misses_total",
        help: "Frames of clients without a usable affinity entry, by reason.",
    };
    pub const DROPS: Family = Family {
        name: "vip_drops_total",
        help: "Frames dropped, by reason.",
    };
    pub const TOO_BIG: Family = Family {
        name: "vip_too_big_total",
        help: "Frames that would not fit the egress MTU once encapsulated, by what was done.",
    };
    pub const ICMP: Family = Family {
        name: "vip_icmp_total",
        help: "ICMP errors about a client's flow, by what was done with them.",
    };
    pub const NOT_PINNED: Family = Family {
        name: "vip_not_pinned_total",
        help: "Frames of clients without an entry, forwarded by the Maglev table without pinning the client, by reason.",
    };
}

counter_struct! {
    /// Per-CPU counters of one VIP (`SLB_VIP_STATS`).
    pub struct VipStats {
        packets {
            label: "packets",
            help: "Frames forwarded.",
            metrics: [Own("vip_packets_total")],
        }
        /// Whole frames, Ethernet header included.
        bytes {
            label: "bytes",
            help: "Bytes forwarded.",
            metrics: [Own("vip_bytes_total")],
        }
        /// Clients with no affinity entry at all; re-pins are `repick_*`.
        new_clients {
            label: "new clients",
            help: "Clients pinned by the Maglev table.",
            metrics: [
                Own("vip_new_clients_total"),
                Reason(&vip_families::AFFINITY_MISSES, "new"),
            ],
        }
        affinity_hits {
            label: "affinity hits",
            help: "Frames forwarded by an affinity entry.",
            metrics: [Own("vip_affinity_hits_total")],
        }
        repick_expired {
            label: "re-picked: expired",
            help: "Clients re-pinned because their entry had been idle past the timeout.",
            metrics: [Reason(&vip_families::AFFINITY_MISSES, "expired")],
        }
        repick_dead {
            label: "re-picked: dead",
            help: "Clients re-pinned because their backend was marked dead.",
            metrics: [Reason(&vip_families::AFFINITY_MISSES, "backend_dead")],
        }
        probed {
            label: "probed",
            help: "New pins that had to skip a dead backend's Maglev slot.",
            metrics: [Own("vip_probed_total")],
        }
        /// Also every frame of a VIP whose forwarding mode this build does
        /// not know (see `ForwardingMode::from_u8`): no backend can be
        /// reached the way the VIP asks for.
        drop_no_backend {
            label: "dropped: no backend",
            help: "Frames dropped: no alive backend found for a new client.",
            metrics: [Reason(&vip_families::DROPS, "no_backend")],
        }
        /// See the README on fragments.
        drop_fragment {
            label: "dropped: fragment",
            help: "Frames dropped: first fragment of a fragmented datagram.",
            metrics: [Reason(&vip_families::DROPS, "fragment")],
        }
        /// A backend configured with the MAC of the router the frames come
        /// from would bounce every frame between the two.
        drop_loop {
            label: "dropped: loop",
            help: "Frames dropped: the backend's MAC is the frame's source MAC, so forwarding would send it back where it came from.",
            metrics: [Reason(&vip_families::DROPS, "loop")],
        }
        /// Also the SYNs of clients whose entry is expired or names a dead
        /// backend: the entry is replaced on the handshake's next packet.
        /// A spoofed source never sends one, so it never takes an entry.
        not_pinned_syn {
            label: "not pinned: syn",
            help: "TCP SYNs (no ACK) of clients without a usable entry: forwarded by the Maglev table, the client pinned by its next packet.",
            metrics: [Reason(&vip_families::NOT_PINNED, "syn")],
        }
        not_pinned_udp_budget {
            label: "not pinned: udp budget",
            help: "UDP frames of new clients forwarded by the Maglev table without pinning: the VIP's budget of new UDP pins on this CPU was spent.",
            metrics: [Reason(&vip_families::NOT_PINNED, "udp_budget")],
        }
        /// Tunnel modes. The client keeps its pin: TCP sends again, and the
        /// daemon's health checks through the same next hop keep its
        /// neighbour entry resolved.
        drop_no_neigh {
            label: "tunnel dropped: no neighbour",
            help: "Frames dropped: the kernel has no resolved neighbour (MAC) for the next hop to the backend.",
            metrics: [Reason(&vip_families::DROPS, "no_neighbour")],
        }
        /// Tunnel modes: unreachable, blackhole or prohibit route, a backend
        /// address that is local, forwarding off on the interface, no tunnel
        /// source (or GUE port) configured, or no headroom for the outer
        /// header.
        drop_no_route {
            label: "tunnel dropped: no route",
            help: "Frames dropped: the kernel's FIB has no usable route to the backend.",
            metrics: [Reason(&vip_families::DROPS, "no_route")],
        }
        /// The ICMP message advertises the MTU minus the mode's overhead.
        too_big_icmp {
            label: "too big: icmp sent",
            help: "Frames too big for the egress MTU once encapsulated, with DF set: answered with ICMP fragmentation needed.",
            metrics: [Reason(&vip_families::TOO_BIG, "icmp_sent")],
        }
        /// Without DF, or too short to quote, nothing can be answered.
        drop_too_big {
            label: "too big: dropped",
            help: "Frames too big for the egress MTU once encapsulated that could not be answered with ICMP (no DF): dropped.",
            metrics: [
                Reason(&vip_families::DROPS, "too_big"),
                Reason(&vip_families::TOO_BIG, "dropped"),
            ],
        }
        /// Sent toward the VIP by a router on the path back to the client;
        /// the backend needs it for path MTU discovery.
        icmp_forwarded {
            label: "icmp: forwarded",
            help: "ICMP errors sent to the VIP about a client's flow, forwarded to that client's backend.",
            metrics: [Reason(&vip_families::ICMP, "forwarded")],
        }
        /// A router between this node and the backend could not pass an
        /// encapsulated frame: the client is told the MTU that fits.
        icmp_relayed {
            label: "icmp: relayed",
            help: "ICMP fragmentation needed about an encapsulated frame of the VIP, relayed to the client with the MTU minus the overhead.",
            metrics: [Reason(&vip_families::ICMP, "relayed")],
        }
    }
}

counter_struct! {
    /// Per-CPU counters of one backend (`SLB_BE_STATS`).
    pub struct BackendStats {
        packets {
            label: "packets",
            help: "Frames forwarded to the backend.",
            metrics: [Own("backend_packets_total")],
        }
        bytes {
            label: "bytes",
            help: "Bytes forwarded to the backend.",
            metrics: [Own("backend_bytes_total")],
        }
        /// New, or re-pinned from another backend.
        new_clients {
            label: "new clients",
            help: "Clients pinned to the backend.",
            metrics: [Own("backend_new_clients_total")],
        }
    }
}

// The layout both sides compile against; a change here is a change of the
// kernel/user-space contract (and of pinned maps a running daemon adopts).
const _: () = {
    assert!(size_of::<VipKey>() == 8);
    assert!(size_of::<VipInfo>() == 32);
    assert!(size_of::<VipSlot>() == 48);
    assert!(core::mem::offset_of!(VipSlot, key) == 8);
    assert!(core::mem::offset_of!(VipSlot, info) == 16);
    assert!(core::mem::offset_of!(VipInfo, forwarding) == 20);
    assert!(core::mem::offset_of!(VipInfo, affinity_timeout_ns) == 24);
    assert!(size_of::<BackendInfo>() == 16);
    assert!(size_of::<AffinityKey>() == 8);
    assert!(size_of::<AffinityValue>() == 24);
    assert!(size_of::<VipStats>() == 144);
    assert!(size_of::<TunnelSettings>() == 16);
    assert!(size_of::<DecapSettings>() == 8);
    assert!(size_of::<DecapSourceKey>() == 8);
    assert!(size_of::<PinBudget>() == 16);
    assert!(size_of::<OwnMac>() == 8);
    assert!(size_of::<BackendStats>() == 24);
    assert!(size_of::<SyncEvent>() == 32);
    assert!(size_of::<SyncSettings>() == 8);
    assert!(core::mem::offset_of!(AffinityValue, synced_s) == 4);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: every type is repr(C), has no implicit padding (bytemuck's Pod
    // derive checks that at compile time) and is valid for any bit pattern.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for VipSlot {}
    unsafe impl aya::Pod for BackendInfo {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for VipStats {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for PinBudget {}
    unsafe impl aya::Pod for OwnMac {}
    unsafe impl aya::Pod for SyncEvent {}
    unsafe impl aya::Pod for SyncSettings {}
    unsafe impl aya::Pod for TunnelSettings {}
    unsafe impl aya::Pod for DecapSettings {}
    unsafe impl aya::Pod for DecapSourceKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_liveness() {
        let e = AffinityValue {
            backend_id: 1,
            synced_s: 0,
            created_ns: 1_000,
            last_seen_ns: 5_000,
        };
        assert_eq!(e.idle_ns(5_000), 0);
        assert_eq!(
            e.idle_ns(4_000),
            0,
            "a clock read before the write is not negative idle"
        );
        assert!(e.is_live(5_999, 1_000));
        assert!(
            !e.is_live(6_000, 1_000),
            "idle for exactly the timeout has expired"
        );
        assert!(!e.is_live(5_000, 0), "timeout 0: never sticky");
    }

    #[test]
    fn own_mac_is_its_bytes_in_order_and_zero_is_none() {
        let mac = [0x02, 0x1b, 0x33, 0x44, 0x55, 0xfe];
        assert_eq!(OwnMac::new(mac).get(), Some(mac));
        assert_eq!(
            OwnMac::new([0, 0, 0, 0, 0, 1]).get(),
            Some([0, 0, 0, 0, 0, 1])
        );
        assert_eq!(OwnMac::default().get(), None);
        // The flag and the padding are not part of the MAC.
        let pad_only = OwnMac {
            mac: [0; 6],
            only_to_us: 1,
            _pad: 0xff,
        };
        assert_eq!(pad_only.get(), None);
        // The flag is read from the same load.
        assert_eq!(OwnMac::new(mac).load(), Some((mac, true)));
        assert_eq!(OwnMac::any_destination(mac).load(), Some((mac, false)));
    }

    #[test]
    fn forwarding_mode_round_trips_and_refuses_unknown_values() {
        let m = ForwardingMode::Dsr;
        assert_eq!(ForwardingMode::from_u8(m.as_u8()), Some(m));
        assert_eq!(ForwardingMode::try_from(u8::from(m)), Ok(m));
        assert_eq!(
            m.as_u8(),
            0,
            "a pre-mode pinned entry (zero) must read as DSR"
        );
        assert_eq!(ForwardingMode::try_from(u8::MAX), Err(u8::MAX));
        for m in [ForwardingMode::Ipip, ForwardingMode::Gue] {
            assert_eq!(ForwardingMode::from_u8(m.as_u8()), Some(m));
            assert!(m.is_tunnel());
        }
        assert_eq!(
            (ForwardingMode::Ipip.as_u8(), ForwardingMode::Gue.as_u8()),
            (1, 2),
            "the values in pinned maps"
        );
        assert!(!ForwardingMode::Dsr.is_tunnel());
    }
}
