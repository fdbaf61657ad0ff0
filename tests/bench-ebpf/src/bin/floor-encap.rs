//! Benchmark reference: the least an encapsulating forwarder can do. Parse
//! Ethernet and IPv4 with bounds checks, make room for an outer IPv4 header
//! (`bpf_xdp_adjust_head`), write it with its checksum (IP-in-IP, addresses
//! taken from the packet), rebuild the Ethernet header with the MACs
//! swapped, `XDP_TX`; anything else is passed. No next-hop lookup: the cost
//! of stickylb's tunnel modes is reported as a multiple of this one's.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_adjust_head, macros::xdp, programs::XdpContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

const ETH_P_IPV4: u16 = 0x0800;
const IPPROTO_IPIP: u8 = 4;
const OUTER_LEN: usize = Ipv4Hdr::LEN;

#[xdp]
pub fn floor_encap(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + EthHdr::LEN + Ipv4Hdr::LEN > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: both headers lie inside the frame (checked above).
    let (eth, ip) = unsafe {
        (
            &*(start as *const EthHdr),
            &*((start + EthHdr::LEN) as *const Ipv4Hdr),
        )
    };
    if u16::from_be(eth.ether_type) != ETH_P_IPV4
        || ip.vihl >> 4 != 4
        || usize::from(ip.vihl & 0x0f) * 4 < Ipv4Hdr::LEN
    {
        return xdp_action::XDP_PASS;
    }
    let (smac, dmac) = (eth.dst_addr, eth.src_addr);
    let (tos, src, dst) = (ip.tos, ip.dst_addr, ip.src_addr);
    let tot_len = (end - start - EthHdr::LEN + OUTER_LEN) as u16;
    // SAFETY: moves the frame's start; pointers are re-read and re-checked.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OUTER_LEN as i32)) } != 0 {
        return xdp_action::XDP_DROP;
    }
    let start = ctx.data();
    if start + EthHdr::LEN + Ipv4Hdr::LEN > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: bounds-checked just above; the headers do not overlap.
    let (eth, ip) = unsafe {
        (
            &mut *(start as *mut EthHdr),
            &mut *((start + EthHdr::LEN) as *mut Ipv4Hdr),
        )
    };
    eth.dst_addr = dmac;
    eth.src_addr = smac;
    eth.ether_type = ETH_P_IPV4.to_be();
    ip.vihl = 0x45;
    ip.tos = tos;
    ip.tot_len = tot_len.to_be_bytes();
    ip.id = [0; 2];
    ip.frags = [0x40, 0];
    ip.ttl = 64;
    ip.proto = IPPROTO_IPIP;
    ip.src_addr = src;
    ip.dst_addr = dst;
    let word = |hi: u8, lo: u8| u32::from(u16::from_be_bytes([hi, lo]));
    let mut sum = word(0x45, tos)
        + u32::from(tot_len)
        + word(0x40, 0)
        + word(64, IPPROTO_IPIP)
        + word(src[0], src[1])
        + word(src[2], src[3])
        + word(dst[0], dst[1])
        + word(dst[2], dst[3]);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    ip.check = (!(sum as u16)).to_be_bytes();
    xdp_action::XDP_TX
}

lb_ebpf::program_boilerplate!();
