//! Sending a frame to the backend picked for it, the way its VIP says:
//! L2 DSR (rewrite the MACs, `XDP_TX`) or a tunnel (IP-in-IP or GUE in
//! front of the client's packet, the next hop from the kernel's FIB,
//! `XDP_TX` or `XDP_REDIRECT`).
//!
//! The tunnel modes put an outer IPv4 header (IHL 5) in front of the
//! client's packet, which is not changed at all (its TTL is not
//! decremented: the load balancer is not a router hop of the client's
//! packet, as in DSR):
//! - TOS copied from the inner header (DSCP and ECN), so that the path to the
//!   backend queues and marks the client's traffic as its own;
//! - ID 0 and DF set: a link on the way that is too small answers with ICMP
//!   fragmentation needed (relayed to the client, see icmp.rs) instead of
//!   fragmenting, since the backend's decapsulation does not reassemble;
//! - TTL `TunnelSettings::ttl`, source `TunnelSettings::src_addr` (IP-in-IP
//!   with a prefix: one address of it per client), destination the
//!   backend's address; checksum computed;
//! - GUE: a UDP header to `gue_port`, source port from the client hash
//!   (`lb_common::tunnel`), checksum 0 (allowed for IPv4; the inner packet
//!   carries its own checksums).
//!
//! The Ethernet header is rebuilt with the MACs the FIB gives for the
//! backend's next hop; the frame leaves by `XDP_TX` if that is the interface
//! it came in on, else by `XDP_REDIRECT`.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::{BackendInfo, ForwardingMode, TunnelSettings, VipStats, proto, tunnel};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};

use crate::maps::{BACKEND_STATS, TUNNEL};

const AF_INET: u8 = 2;
const ETH_P_IPV4: u16 = 0x0800;
/// In the first byte of an IPv4 header's flags/fragment-offset field.
const IP_DF: u8 = 0x40;

/// Where the kernel's FIB sends a packet (`route`).
#[expect(
    clippy::enum_variant_names,
    reason = "`Route::NoRoute` reads as the counter it feeds, `drop_no_route`"
)]
pub enum Route {
    /// Out of `ifindex`, from `smac` to `dmac` (the next hop's).
    Out {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// The packet (of the `tot_len` asked about) does not fit the route's
    /// MTU, which is this.
    FragNeeded { mtu: u16 },
    /// The next hop's MAC is not resolved.
    NoNeigh,
    /// No usable route (or forwarding is off on the interface).
    NoRoute,
}

/// What the FIB says about an IPv4 packet of `tot_len` bytes from `src` to
/// `dst` arriving on the frame's interface. The lookup is the kernel's
/// forwarding decision (policy rules included) in the interface's network
/// namespace, and needs forwarding on for that interface; giving the length
/// makes it check the route's MTU too.
#[inline(always)]
pub fn route(ctx: &XdpContext, src: [u8; 4], dst: [u8; 4], tot_len: u16) -> Route {
    // SAFETY: plain data (integers and unions of them): all zero is valid,
    // and is what every field not set here must be.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // SAFETY: `p` is a whole `struct bpf_fib_lookup` of the size given.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut p, size_of::<FibParams>() as i32, 0) };
    // Negative: invalid arguments (an ifindex the namespace does not have).
    if rc < 0 {
        return Route::NoRoute;
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Route::Out {
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
        },
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Route::FragNeeded {
            // SAFETY: the helper wrote the MTU into the union.
            mtu: unsafe { p.__bindgen_anon_1.mtu_result },
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => Route::NoNeigh,
        // Blackhole, unreachable, prohibit, local (not forwarded),
        // forwarding disabled, unsupported lightweight tunnel, no source.
        _ => Route::NoRoute,
    }
}

/// Sends the frame (its MACs already set) out of `ifindex`: `XDP_TX` when
/// that is the interface it came in on, else `XDP_REDIRECT`.
#[inline(always)]
pub fn emit(ctx: &XdpContext, ifindex: u32) -> u32 {
    if ifindex == ctx.ingress_ifindex() as u32 {
        return xdp_action::XDP_TX;
    }
    // SAFETY: helper without preconditions; flags 0 cannot be rejected, so
    // it returns XDP_REDIRECT.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

/// Forwards the frame to `backend` by `mode` and counts it (VIP and
/// backend packets and bytes) if it was forwarded. `own`: this interface's
/// MAC (`OwnMac::load`). `client`: the client's address, which picks the
/// GUE source port (and the IP-in-IP outer source from a prefix).
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    mode: ForwardingMode,
    own: Option<([u8; 6], bool)>,
    backend_id: u32,
    backend: &BackendInfo,
    client: [u8; 4],
    stats: &mut VipStats,
) -> u32 {
    match mode {
        // L2 DSR: the frame goes out unchanged but for its MACs; the backend
        // owns the VIP on loopback and answers the client directly. It is
        // sent from our interface's MAC. Without a daemon to write ours,
        // the destination MAC stands in (the frame came to us).
        ForwardingMode::Dsr => {
            let start = ctx.data();
            if start + EthHdr::LEN > ctx.data_end() {
                return xdp_action::XDP_DROP;
            }
            // SAFETY: bounds-checked just above.
            let eth = unsafe { &mut *(start as *mut EthHdr) };
            match own {
                Some((mac, _)) => eth.src_addr = mac,
                None => eth.src_addr = eth.dst_addr,
            }
            eth.dst_addr = backend.mac;
            count_forwarded(ctx, backend_id, stats);
            xdp_action::XDP_TX
        }
        ForwardingMode::Ipip | ForwardingMode::Gue => {
            match encapsulate(ctx, mode, backend, client, stats) {
                Sent::Forwarded(action) => {
                    count_forwarded(ctx, backend_id, stats);
                    action
                }
                Sent::Not(action) => action,
            }
        }
    }
}

/// What `encapsulate` did with the frame.
enum Sent {
    /// Sent to the backend with this action (to be counted).
    Forwarded(u32),
    /// Not sent to the backend (dropped, or answered to the client; counted
    /// already): return this action.
    Not(u32),
}

/// Encapsulates the frame for `backend` by `mode` (IP-in-IP or GUE) and
/// sends it toward its next hop; or counts why not.
///
/// No loop check here, unlike DSR's (the backend's MAC is zero for a tunnel
/// backend, so `pick_backend`'s compare never matches a real station's
/// source MAC). A DSR frame keeps its destination, the VIP, so a backend
/// MAC that is the sending router's would bring the frame straight back to
/// us as VIP traffic. An encapsulated frame is addressed to the backend: a
/// next hop that is the router the frame came from, out of the interface it
/// came in on, is the ordinary one-armed deployment (clients and backends
/// both behind one router), and whatever comes back to us is IP-in-IP or
/// UDP to a backend address, not a VIP's traffic, so it is never
/// encapsulated again. A backend address that is one of ours is not
/// forwarded by the FIB at all (`drop_no_route`).
#[inline(always)]
fn encapsulate(
    ctx: &XdpContext,
    mode: ForwardingMode,
    backend: &BackendInfo,
    client: [u8; 4],
    stats: &mut VipStats,
) -> Sent {
    let Some(t) = TUNNEL.get(0) else {
        stats.drop_no_route += 1;
        return Sent::Not(xdp_action::XDP_DROP);
    };
    let gue = matches!(mode, ForwardingMode::Gue);
    // No source configured (no daemon, or one that has no tunnel VIP), or
    // no GUE port: an outer header cannot be built.
    if t.src_addr == [0; 4] || (gue && t.gue_port == [0; 2]) {
        stats.drop_no_route += 1;
        return Sent::Not(xdp_action::XDP_DROP);
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + EthHdr::LEN + Ipv4Hdr::LEN > end {
        return Sent::Not(xdp_action::XDP_DROP);
    }
    // SAFETY: bounds-checked just above (parse() checked it too).
    let inner = unsafe { &*((start + EthHdr::LEN) as *const Ipv4Hdr) };
    let tos = inner.tos;
    let df = inner.frags[0] & IP_DF != 0;
    // The bytes that follow the Ethernet header, not the inner header's
    // length: the outer header then never claims more than the frame holds
    // (nor wraps around on a forged length). A padded runt carries its
    // padding inside the tunnel, which the backend's stack trims by the
    // inner length.
    let inner_len = (end - start - EthHdr::LEN) as u16;
    let overhead = mode.overhead() as u16;
    let outer_len = inner_len.wrapping_add(overhead);
    let (src, sport) = if gue {
        (t.src_addr, tunnel::gue_source_port(client))
    } else {
        (t.ipip_source(client), 0)
    };

    let (ifindex, smac, dmac) = match route(ctx, src, backend.addr, outer_len) {
        Route::Out {
            ifindex,
            smac,
            dmac,
        } => (ifindex, smac, dmac),
        Route::FragNeeded { mtu } => {
            // Answered on the frame as it came (not encapsulated), with the
            // MTU the client's packets must fit to fit once encapsulated;
            // below IPv4's minimum no client could use it: dropped.
            let fits = mtu.saturating_sub(overhead);
            if df
                && fits >= crate::icmp::MIN_MTU
                && let Some(action) = crate::icmp::frag_needed_reply(ctx, fits)
            {
                stats.too_big_icmp += 1;
                return Sent::Not(action);
            }
            stats.drop_too_big += 1;
            return Sent::Not(xdp_action::XDP_DROP);
        }
        // The client keeps its pin (made before forwarding): TCP sends again,
        // and the daemon's health checks through the same next hop resolve
        // the neighbour meanwhile.
        Route::NoNeigh => {
            stats.drop_no_neigh += 1;
            return Sent::Not(xdp_action::XDP_DROP);
        }
        Route::NoRoute => {
            stats.drop_no_route += 1;
            return Sent::Not(xdp_action::XDP_DROP);
        }
    };

    // SAFETY: moves the frame's start only; every packet pointer is re-read
    // and re-checked below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -i32::from(overhead)) } != 0 {
        // No headroom for the outer header (a driver that gives XDP none):
        // as unable to send it as without a route.
        stats.drop_no_route += 1;
        return Sent::Not(xdp_action::XDP_DROP);
    }
    let start = ctx.data();
    // The largest outer header (GUE's) for both modes, so that the verifier
    // sees one constant bound: an IP-in-IP frame is longer anyway (its inner
    // packet has at least an IPv4 and an L4 header after the outer one).
    if start + EthHdr::LEN + Ipv4Hdr::LEN + UdpHdr::LEN > ctx.data_end() {
        return Sent::Not(xdp_action::XDP_DROP);
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
    let outer_proto = if gue { proto::UDP } else { proto::IPIP };
    write_outer_ipv4(ip, t, tos, outer_len, outer_proto, src, backend.addr);
    if gue {
        // SAFETY: bounds-checked above, right after the outer IPv4 header.
        let udp = unsafe { &mut *((start + EthHdr::LEN + Ipv4Hdr::LEN) as *mut UdpHdr) };
        udp.src = sport.to_be_bytes();
        udp.dst = t.gue_port;
        udp.len = (inner_len.wrapping_add(UdpHdr::LEN as u16)).to_be_bytes();
        udp.check = [0; 2];
    }
    Sent::Forwarded(emit(ctx, ifindex))
}

/// Writes the outer IPv4 header (see the module's doc), checksum included.
#[inline(always)]
fn write_outer_ipv4(
    ip: &mut Ipv4Hdr,
    t: &TunnelSettings,
    tos: u8,
    tot_len: u16,
    outer_proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
) {
    ip.vihl = 0x45;
    ip.tos = tos;
    ip.tot_len = tot_len.to_be_bytes();
    ip.id = [0; 2];
    ip.frags = [IP_DF, 0];
    ip.ttl = t.ttl;
    ip.proto = outer_proto;
    ip.src_addr = src;
    ip.dst_addr = dst;
    // The one's-complement sum of the header's 16-bit words (the checksum
    // word counted as 0).
    let word = |hi: u8, lo: u8| u32::from(u16::from_be_bytes([hi, lo]));
    let sum = word(0x45, tos)
        + u32::from(tot_len)
        + word(IP_DF, 0)
        + word(t.ttl, outer_proto)
        + word(src[0], src[1])
        + word(src[2], src[3])
        + word(dst[0], dst[1])
        + word(dst[2], dst[3]);
    ip.check = lb_common::checksum::fold(sum).to_be_bytes();
}

/// Counts a forwarded frame (its length as sent) for the VIP and backend.
#[inline(always)]
fn count_forwarded(ctx: &XdpContext, backend_id: u32, stats: &mut VipStats) {
    let len = (ctx.data_end() - ctx.data()) as u64;
    stats.packets += 1;
    stats.bytes += len;
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU value.
        let b = unsafe { &mut *b };
        b.packets += 1;
        b.bytes += len;
    }
}
