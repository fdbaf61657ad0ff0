//! Benchmark reference: an XDP program that returns `XDP_PASS` and does
//! nothing else, the cost of running any XDP program at all.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn floor_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

lb_ebpf::program_boilerplate!();
