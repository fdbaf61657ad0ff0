//! ICMP: errors about a client's flow follow the client.
//!
//! - An error sent to a VIP (by a router on the path from a backend back to
//!   the client, since backends answer from the VIP) quotes the backend's
//!   packet: VIP → client. It is forwarded to that client's backend, in
//!   every mode, so that path MTU discovery works through the balancer.
//! - Fragmentation needed sent to this node's tunnel source quotes an
//!   encapsulated frame of ours: the client is told the MTU that fits.
//! - A frame too big to encapsulate is answered here (`frag_needed_reply`).
//!
//! Anything else (echo, errors about other traffic) is passed as before.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    AffinityKey, BackendInfo, ForwardingMode, TunnelSettings, VipInfo, VipKey, VipStats,
    global_counter, proto,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    forward::{self, Route},
    maps::{AFFINITY, OWN_MAC, TUNNEL, VIP_STATS, count_global, find_vip},
    parse::{ETH_P_IPV4, IP_DF, IP_OFFSET_MASK, ptr_at},
};

const DEST_UNREACH: u8 = 3;
const FRAG_NEEDED: u8 = 4;
const TIME_EXCEEDED: u8 = 11;
/// ICMP header: type, code, checksum, 4 bytes that depend on the type (for
/// fragmentation needed: 2 unused, then the next-hop MTU).
const ICMP_LEN: usize = 8;
/// What an error quotes of the packet it is about and what we quote: its
/// IPv4 header (without options) and the first 8 bytes after it.
const QUOTE_LEN: usize = Ipv4Hdr::LEN + 8;
/// Our fragmentation needed frame: Ethernet, IPv4 (no options), ICMP, quote.
const REPLY_IP_AT: usize = EthHdr::LEN;
const REPLY_ICMP_AT: usize = REPLY_IP_AT + Ipv4Hdr::LEN;
const REPLY_QUOTE_AT: usize = REPLY_ICMP_AT + ICMP_LEN;
const REPLY_LEN: usize = REPLY_QUOTE_AT + QUOTE_LEN;
/// The IPv4 total length of our reply.
const REPLY_TOT_LEN: u16 = (REPLY_LEN - EthHdr::LEN) as u16;
/// IPv4 requires every link to carry 68 bytes: a smaller MTU is not one a
/// client could use.
pub(crate) const MIN_MTU: u16 = 68;
/// Precedence "internetwork control" (0xc0), as Linux sends its ICMP errors.
const REPLY_TOS: u8 = 0xc0;
const REPLY_TTL: u8 = 64;
const UDP_LEN: usize = 8;

/// An unfragmented ICMP packet, its ICMP header at `l4` (see
/// `parse::NotFlow::Icmp`).
#[inline(always)]
pub fn handle(ctx: &XdpContext, l4: usize) -> u32 {
    // Type and code: a one-byte read's bounds check compiles to a
    // comparison the verifier cannot use.
    let is_error = match ptr_at::<[u8; 2]>(ctx, l4) {
        // SAFETY: checked by ptr_at.
        Some(ty) => matches!(unsafe { (*ty)[0] }, DEST_UNREACH | TIME_EXCEEDED),
        None => false,
    };
    if !is_error {
        count_global(global_counter::PASS_NOT_TCP_UDP);
        return xdp_action::XDP_PASS;
    }
    if let Some(action) = error(ctx, l4) {
        return action;
    }
    count_global(global_counter::PASS_ICMP_UNMATCHED);
    xdp_action::XDP_PASS
}

/// An ICMP error (header at `l4`): the action, if it is about one of ours.
#[inline(always)]
fn error(ctx: &XdpContext, l4: usize) -> Option<u32> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
    let icmp: *const [u8; ICMP_LEN] = ptr_at(ctx, l4)?;
    // SAFETY: both checked by ptr_at.
    let (ip, icmp) = unsafe { (&*ip, *icmp) };
    let q = l4 + ICMP_LEN;
    let quoted: *const Ipv4Hdr = ptr_at(ctx, q)?;
    // SAFETY: checked by ptr_at.
    let quoted = unsafe { &*quoted };
    let ihl = usize::from(quoted.vihl & 0x0f) * 4;
    if quoted.vihl >> 4 != 4
        || ihl < Ipv4Hdr::LEN
        || u16::from_be_bytes(quoted.frags) & IP_OFFSET_MASK != 0
    {
        return None;
    }
    if let Some(action) = about_flow(ctx, ip, quoted, q + ihl) {
        return Some(action);
    }
    if icmp[0] == DEST_UNREACH && icmp[1] == FRAG_NEEDED && ihl == Ipv4Hdr::LEN {
        let mtu = u16::from_be_bytes([icmp[6], icmp[7]]);
        return relay(ctx, ip, quoted, q + Ipv4Hdr::LEN, mtu);
    }
    None
}

/// An error to a VIP about its flow to a client (the quoted header, its L4
/// header at `l4`): forwarded to that client's backend. `None` if the quote
/// is not a VIP's TCP/UDP packet.
#[inline(always)]
fn about_flow(ctx: &XdpContext, ip: &Ipv4Hdr, quoted: &Ipv4Hdr, l4: usize) -> Option<u32> {
    if !matches!(quoted.proto, proto::TCP | proto::UDP) || quoted.src_addr != ip.dst_addr {
        return None;
    }
    // The source port is the first field of both headers.
    let sport: *const [u8; 2] = ptr_at(ctx, l4)?;
    let key = VipKey {
        addr: quoted.src_addr,
        // SAFETY: checked by ptr_at.
        port: unsafe { *sport },
        proto: quoted.proto,
        _pad: 0,
    };
    let client = quoted.dst_addr;
    let vip = find_vip(&key)?;
    let stats = VIP_STATS.get_ptr_mut(vip.vip_id)?;
    // SAFETY: per-CPU value; nothing else writes it while we run on this CPU.
    let stats = unsafe { &mut *stats };
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: checked by ptr_at.
    let (dst_mac, src_mac) = unsafe { ((*eth).dst_addr, (*eth).src_addr) };
    let own = OWN_MAC.get(0).and_then(lb_common::OwnMac::load);
    if let Some(counter) = crate::not_for_us(&dst_mac, own) {
        count_global(counter);
        return Some(xdp_action::XDP_PASS);
    }
    // As for the VIP's own frames (main.rs): a mode this build does not
    // know is not guessed.
    let Some(mode) = ForwardingMode::from_u8(vip.forwarding) else {
        stats.drop_no_backend += 1;
        return Some(xdp_action::XDP_DROP);
    };
    let Some((backend_id, backend)) = client_backend(&vip, client, stats) else {
        stats.drop_no_backend += 1;
        return Some(xdp_action::XDP_DROP);
    };
    if backend.mac == src_mac {
        stats.drop_loop += 1;
        return Some(xdp_action::XDP_DROP);
    }
    let action = forward::send(ctx, mode, own, backend_id, &backend, client, stats);
    if matches!(action, xdp_action::XDP_TX | xdp_action::XDP_REDIRECT) {
        stats.icmp_forwarded += 1;
    }
    Some(action)
}

/// Where the client's frames go now: its live affinity entry's backend if
/// usable, else its Maglev pick. Read only: an error a router sends is no
/// sign of the client, so it neither pins nor refreshes the client.
#[inline(always)]
fn client_backend(
    vip: &VipInfo,
    client: [u8; 4],
    stats: &mut VipStats,
) -> Option<(u32, BackendInfo)> {
    let key = AffinityKey {
        vip_id: vip.vip_id,
        client,
    };
    // SAFETY: a map value pointer stays valid for the whole program run.
    if let Some(entry) = unsafe { AFFINITY.get(key) } {
        // SAFETY: helper without preconditions.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        if entry.is_live(now, vip.affinity_timeout_ns)
            && let Some(backend) = crate::entry_backend(vip, entry.backend_id)
        {
            return Some((entry.backend_id, *backend));
        }
    }
    crate::maglev_pick(vip, client, stats)
}

/// Fragmentation needed about an encapsulated frame of ours (the quoted
/// outer header `outer`, IHL 5, what follows it at `after`): relayed to the
/// client with the MTU minus the tunnel's overhead, as if the VIP had sent
/// it. `None` if the quote is not one of ours.
#[inline(always)]
fn relay(
    ctx: &XdpContext,
    ip: &Ipv4Hdr,
    outer: &Ipv4Hdr,
    after: usize,
    reported: u16,
) -> Option<u32> {
    let tunnel = TUNNEL.get(0)?;
    // Sent to the address the frame came from, which must be ours.
    if ip.dst_addr != outer.src_addr || !our_source(tunnel, outer.src_addr) {
        return None;
    }
    let (inner_at, want) = match outer.proto {
        proto::IPIP => (after, ForwardingMode::Ipip),
        proto::UDP => {
            let dport: *const [u8; 2] = ptr_at(ctx, after + 2)?;
            // SAFETY: checked by ptr_at.
            if unsafe { *dport } != tunnel.gue_port {
                return None;
            }
            (after + UDP_LEN, ForwardingMode::Gue)
        }
        _ => return None,
    };
    let inner: *const Ipv4Hdr = ptr_at(ctx, inner_at)?;
    // The client's packet, header and first 8 bytes: what we quote.
    ptr_at::<[u8; QUOTE_LEN]>(ctx, inner_at)?;
    // SAFETY: checked by ptr_at.
    let inner = unsafe { &*inner };
    if inner.vihl != 0x45 || !matches!(inner.proto, proto::TCP | proto::UDP) {
        return None;
    }
    let dport: *const [u8; 2] = ptr_at(ctx, inner_at + Ipv4Hdr::LEN + 2)?;
    let key = VipKey {
        addr: inner.dst_addr,
        // SAFETY: checked by ptr_at.
        port: unsafe { *dport },
        proto: inner.proto,
        _pad: 0,
    };
    let (vip_addr, client) = (inner.dst_addr, inner.src_addr);
    let vip = find_vip(&key)?;
    if ForwardingMode::from_u8(vip.forwarding) != Some(want) {
        return None;
    }
    let mtu = reported
        .checked_sub(want.overhead() as u16)
        .filter(|&m| m >= MIN_MTU)?;
    // The client's packet moves to where our reply quotes it; the ICMP
    // frame's own headers and the rest of its quote go.
    let shift = inner_at.checked_sub(REPLY_QUOTE_AT)?;
    let stats = VIP_STATS.get_ptr_mut(vip.vip_id)?;
    // SAFETY: per-CPU value; nothing else writes it while we run on this CPU.
    let stats = unsafe { &mut *stats };
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: checked by ptr_at.
    let dst_mac = unsafe { (*eth).dst_addr };
    let own = OWN_MAC.get(0).and_then(lb_common::OwnMac::load);
    if let Some(counter) = crate::not_for_us(&dst_mac, own) {
        count_global(counter);
        return Some(xdp_action::XDP_PASS);
    }
    let (ifindex, smac, dmac) = match forward::route(ctx, vip_addr, client, REPLY_TOT_LEN) {
        Route::Out {
            ifindex,
            smac,
            dmac,
        } => (ifindex, smac, dmac),
        Route::NoNeigh => {
            stats.drop_no_neigh += 1;
            return Some(xdp_action::XDP_DROP);
        }
        Route::FragNeeded { .. } | Route::NoRoute => {
            stats.drop_no_route += 1;
            return Some(xdp_action::XDP_DROP);
        }
    };
    if !resize(ctx, shift as i32) {
        stats.drop_no_route += 1;
        return Some(xdp_action::XDP_DROP);
    }
    if write_frag_needed(ctx, dmac, smac, vip_addr, client, mtu).is_none() {
        stats.drop_no_route += 1;
        return Some(xdp_action::XDP_DROP);
    }
    let action = forward::emit(ctx, ifindex);
    if matches!(action, xdp_action::XDP_TX | xdp_action::XDP_REDIRECT) {
        stats.icmp_relayed += 1;
    }
    Some(action)
}

/// Whether `addr` is an outer source this node's tunnels send from.
#[inline(always)]
fn our_source(tunnel: &TunnelSettings, addr: [u8; 4]) -> bool {
    if addr == tunnel.src_addr {
        return true;
    }
    let len = u32::from(tunnel.src_prefix_len);
    if len == 0 || len > 32 {
        return false;
    }
    let mask = u32::MAX << (32 - len);
    u32::from_be_bytes(addr) & mask == u32::from_be_bytes(tunnel.src_prefix) & mask
}

/// Turns the frame (a client's packet to a VIP, not yet encapsulated) into
/// an ICMP fragmentation-needed reply to the client advertising `mtu`, sent
/// back the way it came; the action to return, or `None` if it cannot be
/// answered (DF clear, or too short to quote): the caller drops and counts.
#[inline(always)]
pub fn frag_needed_reply(ctx: &XdpContext, mtu: u16) -> Option<u32> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN)?;
    ptr_at::<[u8; QUOTE_LEN]>(ctx, EthHdr::LEN)?;
    // SAFETY: all three checked by ptr_at.
    let (eth, ip) = unsafe { (&*eth, &*ip) };
    // Options would not fit the quote; and an ICMP message is never
    // answered with another (RFC 1122 3.2.2).
    if ip.vihl != 0x45
        || u16::from_be_bytes(ip.frags) & IP_DF == 0
        || !matches!(ip.proto, proto::TCP | proto::UDP)
    {
        return None;
    }
    let (peer_mac, our_mac) = (eth.src_addr, eth.dst_addr);
    let (client, vip) = (ip.src_addr, ip.dst_addr);
    // The client's packet stays where it is; the reply's headers go in
    // front of it.
    let shift = EthHdr::LEN as i32 - REPLY_QUOTE_AT as i32;
    if !resize(ctx, shift) {
        return None;
    }
    write_frag_needed(ctx, peer_mac, our_mac, vip, client, mtu)?;
    Some(xdp_action::XDP_TX)
}

/// Moves the frame's start by `shift` bytes (`bpf_xdp_adjust_head`: > 0
/// drops bytes in front, < 0 makes room there), then cuts it to
/// `REPLY_LEN`. False if either helper refused (the frame may then be cut
/// already: it is not to be sent).
#[inline(always)]
fn resize(ctx: &XdpContext, shift: i32) -> bool {
    // The length to keep is counted from the frame's start before `shift`
    // moves it; cutting a frame known to be that long cannot fail.
    let len = (ctx.data_end() - ctx.data()) as i32;
    let keep = REPLY_LEN as i32 + shift;
    if len < keep {
        return false;
    }
    // SAFETY: the context is the program's own; the helper checks the rest.
    if len > keep && unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep - len) } != 0 {
        return false;
    }
    // SAFETY: as above.
    unsafe { bpf_xdp_adjust_head(ctx.ctx, shift) == 0 }
}

/// Writes the Ethernet, IPv4 and ICMP headers of a fragmentation needed
/// from `src` to `dst` advertising `mtu` in front of the quote already at
/// `REPLY_QUOTE_AT` (the frame is `REPLY_LEN` long), checksums included.
#[inline(always)]
fn write_frag_needed(
    ctx: &XdpContext,
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    mtu: u16,
) -> Option<()> {
    let frame: *mut [u8; REPLY_LEN] = ptr_at(ctx, 0)?;
    // SAFETY: checked by ptr_at; nothing else refers to the frame now.
    let frame = unsafe { &mut *frame };
    frame[..6].copy_from_slice(&eth_dst);
    frame[6..12].copy_from_slice(&eth_src);
    frame[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());

    let [l0, l1] = REPLY_TOT_LEN.to_be_bytes();
    let mut ip = [
        0x45,
        REPLY_TOS,
        l0,
        l1,
        0,
        0,
        0,
        0,
        REPLY_TTL,
        proto::ICMP,
        0,
        0,
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    let check = checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    frame[REPLY_IP_AT..REPLY_ICMP_AT].copy_from_slice(&ip);

    let [m0, m1] = mtu.to_be_bytes();
    let mut icmp = [DEST_UNREACH, FRAG_NEEDED, 0, 0, 0, 0, m0, m1];
    let mut quote = [0u8; QUOTE_LEN];
    quote.copy_from_slice(&frame[REPLY_QUOTE_AT..]);
    let check = lb_common::checksum::fold(sum(&icmp) + sum(&quote));
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    frame[REPLY_ICMP_AT..REPLY_QUOTE_AT].copy_from_slice(&icmp);
    Some(())
}

/// The ones' complement sum of `bytes` (even length) as 16-bit words,
/// not yet folded.
#[inline(always)]
fn sum<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i + 1 < N {
        s += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    s
}

#[inline(always)]
fn checksum<const N: usize>(bytes: &[u8; N]) -> u16 {
    lb_common::checksum::fold(sum(bytes))
}
