//! Benchmark traffic generator, run by BPF_PROG_TEST_RUN in live-frames mode:
//! the kernel hands it the same template frame over and over (a page pool of
//! copies, whose contents persist when pages are recycled), and transmits what
//! it returns with `XDP_TX` out of the generator's interface. Each frame gets
//! the whole Ethernet header (the configured MACs, IPv4) and the next client
//! address of a per-CPU sequence, with the IPv4 checksum updated to match.
//! The Ethernet header is written whole because a page comes back as the
//! forwarder under test left it: an encapsulating forwarder writes its outer
//! headers in front and over the frame's first 14 bytes (it leaves the IPv4
//! packet alone), which would otherwise turn every recycled frame into a
//! non-IPv4 one.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use bench_ebpf::GenConfig;
use lb_common::checksum;
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

const ETH_P_IPV4: u16 = 0x0800;

/// What to write into every frame (one entry, filled by user space).
#[map(name = "SLB_GEN_CONFIG")]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

/// Frames generated on each CPU: the sequence the client address follows.
#[map(name = "SLB_GEN_SEQ")]
static GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn traffic_gen(ctx: XdpContext) -> u32 {
    let Some(cfg) = GEN_CONFIG.get(0) else {
        return xdp_action::XDP_DROP;
    };
    let Some(seq) = GEN_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_DROP;
    };
    let start = ctx.data();
    if start + EthHdr::LEN + Ipv4Hdr::LEN > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: per-CPU slot, no other writer while this program runs here.
    let n = unsafe {
        let n = *seq;
        *seq = n + 1;
        n
    };
    let clients = u64::from(cfg.clients.max(1));
    let client = u32::from_be_bytes(cfg.client_base)
        .wrapping_add((n % clients) as u32)
        .to_be_bytes();
    // SAFETY: both headers lie inside the frame (checked above).
    let (eth, ip) = unsafe {
        (
            &mut *(start as *mut EthHdr),
            &mut *((start + EthHdr::LEN) as *mut Ipv4Hdr),
        )
    };
    eth.dst_addr = cfg.dst_mac;
    eth.src_addr = cfg.src_mac;
    eth.ether_type = ETH_P_IPV4.to_be();
    ip.check = checksum::replace4(ip.check, ip.src_addr, client);
    ip.src_addr = client;
    xdp_action::XDP_TX
}

lb_ebpf::program_boilerplate!();
