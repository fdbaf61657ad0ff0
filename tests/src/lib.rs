//! Helpers for stickylb's privileged tests: a loaded XDP program with one VIP
//! and a few backends (`Rig`), frame builders, and counter snapshots; for the
//! tunnel modes, a namespace whose FIB the program's lookups see
//! (`fibnet::FibNet`, `Rig::run_in`).
//!
//! Frames only ever go through BPF_PROG_TEST_RUN here: nothing is sent on
//! any interface, so the documentation address ranges are used freely.

pub mod bench;
pub mod cluster;
pub mod container;
pub mod daemon;
pub mod decap;
pub mod deploybed;
pub mod docblocks;
pub mod fibnet;
pub mod netns;
pub mod routed;
pub mod traffic;

use std::net::Ipv4Addr;

use etherparse::{IpHeaders, Ipv4Header, PacketBuilder, PacketBuilderStep};
use lb_common::{
    AffinityKey, BackendInfo, BackendStats, ForwardingMode, TunnelSettings, VipInfo, VipKey,
    VipStats, backend_flags, counters::CounterTable, global_counter, maglev, proto, select,
};
use lb_user::dataplane::{Dataplane, LoadOptions};

/// Fails the test, loudly, when not root: these tests load XDP programs, and
/// CI runs them as root, so a skip would hide a regression.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this test loads an XDP program and needs root (CAP_BPF, CAP_NET_ADMIN); \
             run `cargo xtask test` as root"
        );
    }
}

pub use lb_user::util::monotonic_ns;

pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const VIP_PORT: u16 = 80;
/// MAC of the load balancer's interface (destination of client frames).
pub const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0xfe];
/// MAC of the client's router (source of client frames).
pub const ROUTER_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x01];
/// Table size of the rig: small, prime, quick to write.
pub const TABLE_SIZE: u32 = 1021;
pub const TIMEOUT_NS: u64 = 60 * 1_000_000_000;

pub fn backend_mac(id: u32) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, (id >> 8) as u8, id as u8]
}

pub fn backend_addr(id: u32) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 1 + id as u8)
}

/// Backend `id`'s identity (address:port): what seeds its Maglev permutation.
pub fn backend_identity(id: u32) -> String {
    format!("{}:80", backend_addr(id))
}

/// The backends-map entry of backend `id` (port 80), in service for `vip_id`.
pub fn backend_info(id: u32, mac: [u8; 6], alive: bool, vip_id: u32) -> BackendInfo {
    BackendInfo {
        mac,
        flags: backend_flags::IN_USE | if alive { backend_flags::ALIVE } else { 0 },
        addr: backend_addr(id).octets(),
        port: 80u16.to_be_bytes(),
        vip_id: vip_id as u16,
    }
}

/// Maglev members for identities, in order: member index = backend id.
pub fn maglev_members<'a>(
    backends: impl IntoIterator<Item = (&'a str, u32, bool)>,
) -> Vec<maglev::Member<'a>> {
    backends
        .into_iter()
        .map(|(identity, weight, in_service)| maglev::Member {
            identity: identity.as_bytes(),
            weight,
            in_service,
        })
        .collect()
}

/// Client number `i` (distinct for i < 2^16).
pub fn client(i: u32) -> [u8; 4] {
    [203, 0, (i >> 8) as u8, i as u8]
}

struct RigBackend {
    identity: String,
    weight: u32,
    alive: bool,
}

/// The affinity capacity `Rig` loads the program with.
pub const RIG_AFFINITY_CAPACITY: u32 = 1 << 16;

/// The program loaded with one TCP VIP and its backends, and user space's
/// copy of the Maglev table it wrote.
pub struct Rig {
    pub dp: Dataplane,
    pub vip_key: VipKey,
    pub vip: VipInfo,
    backends: Vec<RigBackend>,
    /// Slot → backend id, as written to the ring.
    pub table: Vec<u32>,
}

impl Rig {
    /// Loads the program with `n` alive backends of weight 1.
    pub fn new(n: u32) -> Self {
        Self::load(n, None)
    }

    /// As `new`, its maps pinned in `pin_dir`, so that a test can reach
    /// them as another process would, or load the program again over them.
    pub fn pinned(n: u32, pin_dir: &std::path::Path) -> Self {
        Self::load(n, Some(pin_dir.to_owned()))
    }

    fn load(n: u32, pin_dir: Option<std::path::PathBuf>) -> Self {
        require_root();
        let dp = Dataplane::load(&LoadOptions {
            affinity_capacity: RIG_AFFINITY_CAPACITY,
            pin_dir,
        })
        .expect("load the XDP object");
        let vip = VipInfo {
            vip_id: 3,
            udp_pin_budget: 0,
            ring_base: 2 * TABLE_SIZE,
            ring_size: TABLE_SIZE,
            hash_seed: lb_common::DEFAULT_HASH_SEED,
            forwarding: lb_common::ForwardingMode::Dsr.as_u8(),
            _pad: [0; 3],
            affinity_timeout_ns: TIMEOUT_NS,
        };
        let mut rig = Self {
            dp,
            vip_key: VipKey::new(VIP, VIP_PORT, proto::TCP),
            vip,
            backends: Vec::new(),
            table: vec![lb_common::NO_BACKEND; TABLE_SIZE as usize],
        };
        rig.dp.set_vip(rig.vip_key, rig.vip).unwrap();
        for _ in 0..n {
            rig.add_backend();
        }
        rig.rebuild();
        rig
    }

    /// Adds an alive backend (not in the table until `rebuild`); its id.
    pub fn add_backend(&mut self) -> u32 {
        let id = self.backends.len() as u32;
        self.backends.push(RigBackend {
            identity: backend_identity(id),
            weight: 1,
            alive: true,
        });
        self.write_backend(id);
        id
    }

    fn write_backend(&mut self, id: u32) {
        let alive = self.backends[id as usize].alive;
        let info = backend_info(id, self.backend_mac_of(id), alive, self.vip.vip_id);
        self.dp.set_backend(id, info).unwrap();
    }

    /// The MAC the backends map holds for backend `id`: `backend_mac(id)`
    /// for a DSR VIP, zero for a tunnel VIP (as the daemon writes it: the
    /// next hop's MAC comes from the FIB).
    pub fn backend_mac_of(&self, id: u32) -> [u8; 6] {
        match self.forwarding() {
            Some(m) if m.is_tunnel() => [0; 6],
            _ => backend_mac(id),
        }
    }

    /// The VIP's forwarding mode (`None`: a value this build does not know).
    pub fn forwarding(&self) -> Option<ForwardingMode> {
        ForwardingMode::from_u8(self.vip.forwarding)
    }

    /// Sets the VIP's forwarding mode, and rewrites the backends' entries
    /// as the daemon would for it (see `backend_mac_of`).
    pub fn set_forwarding(&mut self, mode: ForwardingMode) {
        self.vip.forwarding = mode.as_u8();
        self.dp.set_vip(self.vip_key, self.vip).unwrap();
        for id in 0..self.backends.len() as u32 {
            self.write_backend(id);
        }
    }

    /// Writes `SLB_TUNNEL` (`fibnet::settings()` is what the tunnel
    /// fixtures use).
    pub fn set_tunnel(&mut self, settings: TunnelSettings) {
        self.dp.set_tunnel(settings).unwrap();
    }

    /// The rig with its VIP in `mode` and `fibnet::settings()` written: what
    /// a tunnel fixture starts from.
    pub fn tunnel(n: u32, mode: ForwardingMode) -> Self {
        let mut rig = Self::new(n);
        rig.set_forwarding(mode);
        rig.set_tunnel(fibnet::settings());
        rig
    }

    /// Marks a backend alive or dead in the backends map only.
    pub fn set_alive(&mut self, id: u32, alive: bool) {
        self.backends[id as usize].alive = alive;
        self.write_backend(id);
    }

    pub fn set_weight(&mut self, id: u32, weight: u32) {
        self.backends[id as usize].weight = weight;
    }

    /// Rebuilds the Maglev table from the backends' weights and liveness and
    /// writes only the slots that changed; how many it wrote.
    pub fn rebuild(&mut self) -> usize {
        let members = maglev_members(
            self.backends
                .iter()
                .map(|b| (b.identity.as_str(), b.weight, b.alive)),
        );
        let new = maglev::build(&members, TABLE_SIZE).unwrap();
        // Member indices are backend ids here; EMPTY is NO_BACKEND.
        let changed: Vec<(u32, u32)> = maglev::changed_slots(&self.table, &new).collect();
        let n = self.dp.write_ring(self.vip.ring_base, changed).unwrap();
        self.table = new;
        n
    }

    /// The backend user space predicts for a new client.
    pub fn predict(&self, client: [u8; 4]) -> Option<u32> {
        let alive = |id: u32| {
            self.backends
                .get(id as usize)
                .filter(|b| b.alive)
                .map(|_| ())
        };
        select::maglev_pick(
            client,
            self.vip.hash_seed,
            self.vip.ring_size,
            |s| self.table.get(s as usize).copied(),
            alive,
        )
        .map(|p| p.backend_id)
    }

    pub fn affinity_key(&self, client: [u8; 4]) -> AffinityKey {
        AffinityKey {
            vip_id: self.vip.vip_id,
            client,
        }
    }

    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.dp.test_run(frame).expect("BPF_PROG_TEST_RUN")
    }

    /// Runs `frame` as arriving on `net`'s ingress interface, so that the
    /// program's FIB lookups see `net`'s routes (the tunnel modes).
    pub fn run_in(&mut self, net: &fibnet::FibNet, frame: &[u8]) -> (u32, Vec<u8>) {
        net.run(&mut self.dp, frame)
    }

    pub fn counters(&self) -> Counters {
        Counters {
            vip: self.dp.vip_stats(self.vip.vip_id).unwrap(),
            backends: (0..self.backends.len() as u32)
                .map(|id| self.dp.backend_stats(id).unwrap())
                .collect(),
            global: self.dp.global_stats().unwrap(),
        }
    }
}

/// Every counter the program keeps for the rig.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub vip: VipStats,
    pub backends: Vec<BackendStats>,
    pub global: [u64; global_counter::COUNT as usize],
}

impl Counters {
    /// `self - before`, field by field.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            vip: self.vip.since(&before.vip),
            backends: self
                .backends
                .iter()
                .zip(&before.backends)
                .map(|(a, b)| a.since(b))
                .collect(),
            global: std::array::from_fn(|i| self.global[i] - before.global[i]),
        }
    }

    /// Every counter that differs from `want`, by name ("vip probed: 0, want
    /// 1"), read through the counter tables so a new counter is compared and
    /// named without a change here.
    pub fn differences(&self, want: &Self) -> Vec<String> {
        fn table<S: CounterTable>(what: &str, got: &S, want: &S, out: &mut Vec<String>) {
            for c in S::COUNTERS {
                let (g, w) = ((c.get)(got), (c.get)(want));
                if g != w {
                    out.push(format!("{what} {}: {g}, want {w}", c.name));
                }
            }
        }
        let mut out = Vec::new();
        table("vip", &self.vip, &want.vip, &mut out);
        if self.backends.len() != want.backends.len() {
            out.push(format!(
                "{} backends, want {}",
                self.backends.len(),
                want.backends.len()
            ));
        }
        for (i, (g, w)) in self.backends.iter().zip(&want.backends).enumerate() {
            table(&format!("backend {i}"), g, w, &mut out);
        }
        for (name, (g, w)) in global_counter::NAMES
            .iter()
            .zip(self.global.iter().zip(&want.global))
        {
            if g != w {
                out.push(format!("global {name}: {g}, want {w}"));
            }
        }
        out
    }
}

/// Frame builders (etherparse), from the client's router to the LB's MAC.
pub mod frame {
    use super::*;

    const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\n\r\n";

    fn eth() -> PacketBuilderStep<etherparse::Ethernet2Header> {
        PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC)
    }

    pub fn tcp_syn(client: [u8; 4], sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
        let b = eth()
            .ipv4(client, dst.octets(), 64)
            .tcp(sport, dport, 1000, 64240)
            .syn();
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    }

    pub fn tcp_data(client: [u8; 4], sport: u16) -> Vec<u8> {
        let b = eth()
            .ipv4(client, VIP.octets(), 64)
            .tcp(sport, VIP_PORT, 1001, 64240)
            .ack(1)
            .psh();
        let mut v = Vec::new();
        b.write(&mut v, PAYLOAD).unwrap();
        v
    }

    /// A SYN to the rig's VIP.
    pub fn to_vip(client: [u8; 4], sport: u16) -> Vec<u8> {
        tcp_syn(client, sport, VIP, VIP_PORT)
    }

    pub fn udp(client: [u8; 4], dst: Ipv4Addr, dport: u16) -> Vec<u8> {
        let b = eth().ipv4(client, dst.octets(), 64).udp(5353, dport);
        let mut v = Vec::new();
        b.write(&mut v, b"ping").unwrap();
        v
    }

    /// A TCP segment to the VIP with a hand-set IPv4 header.
    pub fn tcp_with_ip(client: [u8; 4], edit: impl FnOnce(&mut Ipv4Header)) -> Vec<u8> {
        let mut ip =
            Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, client, VIP.octets()).unwrap();
        edit(&mut ip);
        let b = eth()
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .tcp(40000, VIP_PORT, 1000, 64240)
            .syn();
        let mut v = Vec::new();
        b.write(&mut v, PAYLOAD).unwrap();
        v
    }

    pub fn icmp_echo(client: [u8; 4]) -> Vec<u8> {
        let b = eth()
            .ipv4(client, VIP.octets(), 64)
            .icmpv4_echo_request(1, 1);
        let mut v = Vec::new();
        b.write(&mut v, b"ping").unwrap();
        v
    }

    pub fn arp_request(client: [u8; 4]) -> Vec<u8> {
        let arp = etherparse::ArpPacket::new(
            etherparse::ArpHardwareId::ETHERNET,
            etherparse::EtherType::IPV4,
            etherparse::ArpOperation::REQUEST,
            &ROUTER_MAC,
            &client,
            &[0; 6],
            &VIP.octets(),
        )
        .unwrap();
        let b = PacketBuilder::ethernet2(ROUTER_MAC, [0xff; 6]).arp(arp);
        let mut v = Vec::new();
        b.write(&mut v).unwrap();
        v
    }

    pub fn ipv6_tcp() -> Vec<u8> {
        let mut src = [0u8; 16];
        src[..2].copy_from_slice(&[0x20, 0x01]);
        let mut dst = src;
        dst[15] = 10;
        let b = eth().ipv6(src, dst, 64).tcp(40000, VIP_PORT, 1, 1024).syn();
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    }

    /// `frame` as the program should send it to backend `id`: new MACs, all
    /// else identical.
    pub fn forwarded(frame: &[u8], id: u32) -> Vec<u8> {
        let mut v = frame.to_vec();
        v[..6].copy_from_slice(&backend_mac(id));
        v[6..12].copy_from_slice(&LB_MAC);
        v
    }
}
