//! Benchmark reference: the least an L2 forwarder can do. Parse Ethernet and
//! IPv4 with bounds checks, swap the MACs, `XDP_TX`; anything else is passed.
//! stickylb's per-packet cost is reported as a multiple of this one's.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

const ETH_P_IPV4: u16 = 0x0800;

#[xdp]
pub fn floor_fwd(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + EthHdr::LEN + Ipv4Hdr::LEN > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: both headers lie inside the frame (checked above).
    let eth = unsafe { &mut *(start as *mut EthHdr) };
    if u16::from_be(eth.ether_type) != ETH_P_IPV4 {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: as above.
    let ip = unsafe { &*((start + EthHdr::LEN) as *const Ipv4Hdr) };
    if ip.vihl >> 4 != 4 || usize::from(ip.vihl & 0x0f) * 4 < Ipv4Hdr::LEN {
        return xdp_action::XDP_PASS;
    }
    core::mem::swap(&mut eth.dst_addr, &mut eth.src_addr);
    xdp_action::XDP_TX
}

lb_ebpf::program_boilerplate!();
