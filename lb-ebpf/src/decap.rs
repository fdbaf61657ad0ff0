//! `stickylb decap`'s program, attached on a backend's interface: strips
//! the IP-in-IP or GUE header of frames a load balancer sent, and hands the
//! client's packet to the stack (where the VIP sits on loopback, as in DSR).
//! Only tunnel frames from an accepted load-balancer source
//! (`SLB_DECAP_SRC`) to this backend's own address are decapsulated; other
//! tunnel frames are dropped and counted, so the backend is not an open
//! relay. Everything else is passed unchanged.
//!
//! What is a tunnel frame is decided by the settings: IPv4 protocol 4 while
//! `ipip` is on, UDP to `gue_port` while GUE is on. With a mode off, its
//! frames are ordinary traffic to the stack (`pass_not_tunnel`), which on a
//! kernel without ipip/fou answers or drops them as it would without us.
//!
//! Checks, in order: source (`reject_source`), destination
//! (`reject_dest`), then the shape (`reject_malformed`: an outer fragment,
//! a GUE header other than variant 1, an inner that is not a whole IPv4
//! packet header). The outer checksum is not verified: the inner packet
//! carries its own, which the stack checks.
//!
//! ECN (RFC 6040, normal mode): the load balancer copies the inner ECN
//! field to the outer header, so a router on the way that marks congestion
//! marks the outer one. An outer CE is carried into an ECN-capable inner
//! packet (ECT(0) or ECT(1) becomes CE, its header checksum updated), and
//! a Not-ECT inner packet in a CE outer one is dropped, as the RFC says
//! (its sender could not hear the mark): counted `reject_malformed`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use lb_common::{DecapSettings, MAX_DECAP_SOURCES, decap_counter, proto};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};

/// What is accepted (written by `stickylb decap`).
#[map(name = "SLB_DECAP_CFG")]
static CFG: Array<DecapSettings> = Array::with_max_entries(1, 0);

/// Accepted outer source prefixes → 1.
#[map(name = "SLB_DECAP_SRC")]
static SOURCES: LpmTrie<[u8; 4], u8> =
    LpmTrie::with_max_entries(MAX_DECAP_SOURCES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Per-CPU counters, by `decap_counter` index.
#[map(name = "SLB_DECAP_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(decap_counter::COUNT, 0);

const ETH_P_IPV4: u16 = 0x0800;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;
/// The ECN field (the TOS byte's two low bits) and its values.
const ECN_MASK: u8 = 0b11;
const ECN_NOT_ECT: u8 = 0;
const ECN_CE: u8 = 0b11;

#[xdp]
pub fn stickylb_decap(ctx: XdpContext) -> u32 {
    let (action, counter) = decide(&ctx);
    count(counter);
    action
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no other writer while this program runs here.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

const PASS: (u32, u32) = (xdp_action::XDP_PASS, decap_counter::PASS_NOT_TUNNEL);

/// The action and the counter that says why.
#[inline(always)]
fn decide(ctx: &XdpContext) -> (u32, u32) {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return PASS;
    };
    // SAFETY: ptr_at checked the header lies inside the frame. Copied now,
    // while the verifier knows it is in bounds: strip() writes it back.
    let eth = unsafe { core::ptr::read_unaligned(eth) };
    if u16::from_be(eth.ether_type) != ETH_P_IPV4 {
        return PASS;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return PASS;
    };
    // SAFETY: as above.
    let ip = unsafe { &*ip };
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return PASS;
    }
    let Some(cfg) = CFG.get(0) else {
        return PASS;
    };
    let frags = u16::from_be_bytes(ip.frags);
    let outer = EthHdr::LEN + ihl;
    let (inner, kind) = match ip.proto {
        proto::IPIP if cfg.ipip != 0 => (outer, decap_counter::DECAP_IPIP),
        // A non-first fragment has no UDP header, so it cannot be told
        // from other UDP: the stack gets it (and, with nothing to reassemble
        // it for on the GUE port, drops it).
        proto::UDP if cfg.gue_port != [0, 0] && frags & IP_OFFSET_MASK == 0 => {
            let Some(udp) = ptr_at::<UdpHdr>(ctx, outer) else {
                return PASS;
            };
            // SAFETY: as above.
            if unsafe { (*udp).dst } != cfg.gue_port {
                return PASS;
            }
            (outer + UdpHdr::LEN, decap_counter::DECAP_GUE)
        }
        _ => return PASS,
    };
    let src = Key::new(32, ip.src_addr);
    if SOURCES.get(&src).is_none() {
        return (xdp_action::XDP_DROP, decap_counter::REJECT_SOURCE);
    }
    if ip.dst_addr != cfg.local_addr {
        return (xdp_action::XDP_DROP, decap_counter::REJECT_DEST);
    }
    // The load balancer sets DF, so a fragment was made by someone else;
    // the inner packet of one cannot be handed on without reassembly.
    if frags & (IP_MF | IP_OFFSET_MASK) != 0 || !whole_inner_ipv4(ctx, inner) {
        return (xdp_action::XDP_DROP, decap_counter::REJECT_MALFORMED);
    }
    if ip.tos & ECN_MASK == ECN_CE && !carry_ce(ctx, inner) {
        return (xdp_action::XDP_DROP, decap_counter::REJECT_MALFORMED);
    }
    if strip(ctx, &eth, inner - EthHdr::LEN).is_none() {
        // Cannot happen with the bounds checked above; dropping is what a
        // kernel without the tunnel module would do too.
        return (xdp_action::XDP_DROP, decap_counter::REJECT_MALFORMED);
    }
    (xdp_action::XDP_PASS, kind)
}

/// Whether an IPv4 header, whole, starts at `at` and its packet fits in the
/// frame (a trailer after it is Ethernet padding, which the stack trims).
/// For GUE this is also the variant check: GUE's variant is the two top
/// bits after UDP, variant 1 (01, "no GUE header: the inner IP packet
/// starts here") is what IPv4's version nibble 0100 begins with, and a GUE
/// header (variant 0, 00) never has version 4 there.
#[inline(always)]
fn whole_inner_ipv4(ctx: &XdpContext, at: usize) -> bool {
    let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, at) else {
        return false;
    };
    // SAFETY: ptr_at checked the header lies inside the frame.
    let inner = unsafe { &*inner };
    let ihl = usize::from(inner.vihl & 0x0f) * 4;
    let len = usize::from(u16::from_be_bytes(inner.tot_len));
    inner.vihl >> 4 == 4
        && ihl >= Ipv4Hdr::LEN
        && len >= ihl
        && ctx.data() + at + len <= ctx.data_end()
}

/// Carries an outer CE mark into the inner IPv4 header at `at` (RFC 6040):
/// an ECN-capable inner becomes CE, its checksum updated incrementally
/// (RFC 1624); false if the inner is Not-ECT (to be dropped).
#[inline(always)]
fn carry_ce(ctx: &XdpContext, at: usize) -> bool {
    let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, at) else {
        return false;
    };
    // SAFETY: ptr_at checked the header lies inside the frame, which the
    // program may write.
    let inner = unsafe { &mut *inner.cast_mut() };
    match inner.tos & ECN_MASK {
        ECN_NOT_ECT => false,
        ECN_CE => true,
        _ => {
            // The checksum word that holds the TOS byte, before and after.
            let old = u16::from_be_bytes([inner.vihl, inner.tos]);
            inner.tos |= ECN_CE;
            let new = u16::from_be_bytes([inner.vihl, inner.tos]);
            // HC' = ~(~HC + ~m + m') (RFC 1624).
            let sum =
                u32::from(!u16::from_be_bytes(inner.check)) + u32::from(!old) + u32::from(new);
            inner.check = lb_common::checksum::fold(sum).to_be_bytes();
            true
        }
    }
}

/// Removes the `len` bytes after the Ethernet header: the frame's Ethernet
/// header `eth` is written again in front of what follows them (its
/// ethertype stays IPv4, which the inner packet is).
#[inline(always)]
fn strip(ctx: &XdpContext, eth: &EthHdr, len: usize) -> Option<()> {
    let delta = i32::try_from(len).ok()?;
    // SAFETY: the helper only needs a valid context; it refuses a delta
    // that would leave less than an Ethernet header.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return None;
    }
    let new = ptr_at::<EthHdr>(ctx, 0)?.cast_mut();
    // SAFETY: bounds checked by ptr_at on the adjusted frame.
    unsafe { core::ptr::write_unaligned(new, *eth) };
    Some(())
}

lb_ebpf::program_boilerplate!();
