//! Benchmark receiver: counts every frame (and its bytes) in a per-CPU array
//! and drops it. Attached in driver mode to the interface the load balancer
//! under test transmits to.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use bench_ebpf::sink_counter;

/// Frames and bytes received, per CPU, indexed by `sink_counter::*`.
#[map(name = "SLB_SINK_COUNT")]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(sink_counter::COUNT, 0);

#[inline(always)]
fn add(index: u32, n: u64) {
    if let Some(c) = SINK_COUNT.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no other writer while this program runs here.
        unsafe { *c += n };
    }
}

#[xdp]
pub fn sink(ctx: XdpContext) -> u32 {
    add(sink_counter::FRAMES, 1);
    add(sink_counter::BYTES, (ctx.data_end() - ctx.data()) as u64);
    xdp_action::XDP_DROP
}

lb_ebpf::program_boilerplate!();
