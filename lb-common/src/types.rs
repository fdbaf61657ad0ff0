//! Types stored in the maps. Each is `#[repr(C)]` with every padding byte an
//! explicit field, and derives `bytemuck::Pod`, whose derive refuses to compile
//! a struct with implicit padding. The size assertions pin the layout the XDP
//! program and the daemon share.
//!
//! Addresses and ports are kept in network byte order, exactly as they appear
//! in a packet, so the XDP program compares them without swapping.

use core::net::Ipv4Addr;

use bytemuck::{Pod, Zeroable};

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
}

/// Value of `SLB_VIPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct VipInfo {
    /// Index into `SLB_VIP_STATS`, and part of every affinity key.
    pub vip_id: u32,
    /// Reserved for per-VIP behaviour bits; zero today.
    pub flags: u32,
    /// First slot of this VIP's Maglev table in `SLB_RING`.
    pub ring_base: u32,
    /// Number of slots in the table (a prime). Zero means "no table": every
    /// new client is dropped as having no backend.
    pub ring_size: u32,
    /// Seed of `client_hash` for this VIP.
    pub hash_seed: u32,
    pub _pad: u32,
    /// An affinity entry idle for longer than this is ignored and replaced.
    pub affinity_timeout_ns: u64,
}

/// Value of `SLB_BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendInfo {
    /// Destination MAC written into frames forwarded to this backend.
    pub mac: [u8; 6],
    /// `backend_flags::*`.
    pub flags: u16,
    /// Backend address, network byte order. Not used to forward (DSR keeps
    /// the VIP as destination); kept so the map explains itself.
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
    pub _pad: u32,
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

/// Per-CPU counters of one VIP (`SLB_VIP_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct VipStats {
    /// Frames forwarded.
    pub packets: u64,
    /// Bytes forwarded (whole frames).
    pub bytes: u64,
    /// Clients with no affinity entry, pinned by the Maglev table.
    pub new_clients: u64,
    /// Frames forwarded by a live affinity entry.
    pub affinity_hits: u64,
    /// Clients re-pinned because their entry had been idle past the timeout.
    pub repick_expired: u64,
    /// Clients re-pinned because their backend was marked dead.
    pub repick_dead: u64,
    /// New pins that had to skip a dead backend's Maglev slot.
    pub probed: u64,
    /// Frames dropped: no alive backend found for a new client.
    pub drop_no_backend: u64,
    /// Frames dropped: first fragment of a fragmented datagram (see README).
    pub drop_fragment: u64,
}

impl VipStats {
    /// Sum of per-CPU values.
    pub fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_clients += o.new_clients;
        self.affinity_hits += o.affinity_hits;
        self.repick_expired += o.repick_expired;
        self.repick_dead += o.repick_dead;
        self.probed += o.probed;
        self.drop_no_backend += o.drop_no_backend;
        self.drop_fragment += o.drop_fragment;
    }

    /// Counts since `before` (a snapshot of the same counters).
    pub fn since(&self, before: &Self) -> Self {
        Self {
            packets: self.packets - before.packets,
            bytes: self.bytes - before.bytes,
            new_clients: self.new_clients - before.new_clients,
            affinity_hits: self.affinity_hits - before.affinity_hits,
            repick_expired: self.repick_expired - before.repick_expired,
            repick_dead: self.repick_dead - before.repick_dead,
            probed: self.probed - before.probed,
            drop_no_backend: self.drop_no_backend - before.drop_no_backend,
            drop_fragment: self.drop_fragment - before.drop_fragment,
        }
    }
}

/// Per-CPU counters of one backend (`SLB_BE_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    /// Clients pinned to this backend (new, or re-pinned from another).
    pub new_clients: u64,
}

impl BackendStats {
    pub fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_clients += o.new_clients;
    }

    /// Counts since `before`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            packets: self.packets - before.packets,
            bytes: self.bytes - before.bytes,
            new_clients: self.new_clients - before.new_clients,
        }
    }
}

// The layout both sides compile against; a change here is a change of the
// kernel/user-space contract (and of pinned maps a running daemon adopts).
const _: () = {
    assert!(size_of::<VipKey>() == 8);
    assert!(size_of::<VipInfo>() == 32);
    assert!(size_of::<BackendInfo>() == 16);
    assert!(size_of::<AffinityKey>() == 8);
    assert!(size_of::<AffinityValue>() == 24);
    assert!(size_of::<VipStats>() == 72);
    assert!(size_of::<BackendStats>() == 24);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: every type is repr(C), has no implicit padding (bytemuck's Pod
    // derive checks that at compile time) and is valid for any bit pattern.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for BackendInfo {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for VipStats {}
    unsafe impl aya::Pod for BackendStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_liveness() {
        let e = AffinityValue {
            backend_id: 1,
            _pad: 0,
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
}
