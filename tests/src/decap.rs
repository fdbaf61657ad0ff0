//! The decap program (`lb_user::DECAP_OBJECT`) loaded with private maps,
//! for BPF_PROG_TEST_RUN fixtures (`DecapRig`), and builders of the frames
//! a load balancer sends in the tunnel modes.

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, lpm_trie::Key, lpm_trie::LpmTrie},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use etherparse::{IpNumber, Ipv4Header, PacketBuilder};
use lb_common::{DECAP_PROGRAM_NAME, DecapSettings, decap_counter, decap_map_names};

use crate::require_root;

/// The decap program and its maps.
pub struct DecapRig {
    ebpf: Ebpf,
    cfg: Array<MapData, DecapSettings>,
    sources: LpmTrie<MapData, [u8; 4], u8>,
    stats: PerCpuArray<MapData, u64>,
}

/// Settings accepting IP-in-IP (if `ipip`) and GUE on `gue_port` (0: off)
/// to `local`.
pub fn settings(local: Ipv4Addr, ipip: bool, gue_port: u16) -> DecapSettings {
    DecapSettings {
        local_addr: local.octets(),
        gue_port: gue_port.to_be_bytes(),
        ipip: u8::from(ipip),
        _pad: 0,
    }
}

impl DecapRig {
    /// Loads the program with `settings` and the `accepted` sources.
    pub fn new(settings: DecapSettings, accepted: &[(Ipv4Addr, u8)]) -> Self {
        require_root();
        let mut ebpf = Ebpf::load(lb_user::DECAP_OBJECT).expect("load the decap object");
        let prog: &mut Xdp = ebpf
            .program_mut(DECAP_PROGRAM_NAME)
            .expect("decap program")
            .try_into()
            .expect("an XDP program");
        prog.load().expect("the verifier accepts the decap program");
        let take = |ebpf: &mut Ebpf, name: &str| ebpf.take_map(name).expect(name);
        let cfg = take(&mut ebpf, decap_map_names::CFG).try_into().unwrap();
        let sources = take(&mut ebpf, decap_map_names::SOURCES)
            .try_into()
            .unwrap();
        let stats = take(&mut ebpf, decap_map_names::STATS).try_into().unwrap();
        let mut rig = Self {
            ebpf,
            cfg,
            sources,
            stats,
        };
        rig.set(settings);
        for &(addr, len) in accepted {
            rig.sources
                .insert(&Key::new(u32::from(len), addr.octets()), 1, 0)
                .unwrap();
        }
        rig
    }

    pub fn set(&mut self, settings: DecapSettings) {
        self.cfg.set(0, settings, 0).unwrap();
    }

    /// Runs the program once on `frame`: the action and the frame as it
    /// left it.
    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(DECAP_PROGRAM_NAME)
            .unwrap()
            .try_into()
            .unwrap();
        let res = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    /// Every counter, summed over CPUs, by `decap_counter` index.
    pub fn counters(&self) -> [u64; decap_counter::COUNT as usize] {
        std::array::from_fn(|i| self.stats.get(&(i as u32), 0).unwrap().iter().sum())
    }
}

/// MAC of the backend's interface (destination of tunnelled frames).
pub const BACKEND_MAC: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x05];
/// MAC of the router in front of the backend.
pub const GW_MAC: [u8; 6] = [0x02, 0x9a, 0, 0, 0, 0x01];

/// The Ethernet header of every fixture frame.
pub fn eth_header() -> Vec<u8> {
    let mut v = BACKEND_MAC.to_vec();
    v.extend_from_slice(&GW_MAC);
    v.extend_from_slice(&0x0800u16.to_be_bytes());
    v
}

/// A client's UDP datagram (an IPv4 packet, no Ethernet header) to `vip`.
pub fn inner_udp(client: Ipv4Addr, vip: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(client.octets(), vip.octets(), 63)
        .udp(40000, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// A client's TCP SYN (an IPv4 packet) to `vip`.
pub fn inner_tcp_syn(client: Ipv4Addr, vip: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(client.octets(), vip.octets(), 63)
        .tcp(40001, dport, 1000, 64240)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    v
}

/// An outer IPv4 header (DF, checksum set) from `src` to `dst` carrying
/// `payload_len` bytes of `proto`, edited by `edit`.
pub fn outer_ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    payload_len: usize,
    edit: impl FnOnce(&mut Ipv4Header),
) -> Vec<u8> {
    let mut ip = Ipv4Header::new(
        payload_len as u16,
        64,
        IpNumber(proto),
        src.octets(),
        dst.octets(),
    )
    .unwrap();
    ip.dont_fragment = true;
    edit(&mut ip);
    ip.header_checksum = ip.calc_header_checksum();
    ip.to_bytes().to_vec()
}

/// An IP-in-IP frame from `src` to `dst` carrying `inner`.
pub fn ipip(src: Ipv4Addr, dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    ipip_with(src, dst, inner, |_| {})
}

/// `ipip` with the outer header edited.
pub fn ipip_with(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    inner: &[u8],
    edit: impl FnOnce(&mut Ipv4Header),
) -> Vec<u8> {
    let mut v = eth_header();
    v.extend(outer_ipv4(src, dst, 4, inner.len(), edit));
    v.extend_from_slice(inner);
    v
}

/// A GUE frame from `src` to `dst`:`port`: outer IPv4, UDP (checksum 0, as
/// the load balancer sends), then `payload` (variant 1: the inner packet).
pub fn gue(src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = eth_header();
    v.extend(outer_ipv4(src, dst, 17, 8 + payload.len(), |_| {}));
    v.extend_from_slice(&50123u16.to_be_bytes());
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

/// What the program hands the stack for a decapsulated `inner`: the
/// frame's own Ethernet header, then the inner packet.
pub fn decapsulated(inner: &[u8]) -> Vec<u8> {
    let mut v = eth_header();
    v.extend_from_slice(inner);
    v
}
