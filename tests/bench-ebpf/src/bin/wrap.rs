//! Benchmark harness, not a reference: lets BPF_PROG_TEST_RUN time any XDP
//! program with `repeat` on any path, new clients included. With `repeat`
//! the kernel runs a program again and again on the same buffer, as the
//! previous iteration left it (and keeps a head adjustment it made), so
//! every iteration of this wrapper first puts the frame back: the head
//! moved back to the template's length, the template's bytes copied over.
//! Then it writes the client (the IPv4 source) the mode asks for — the
//! template's own, a random one of `clients` from `client_base`, or the
//! next of a per-CPU sequence from `client_base` (never seen before) —
//! with the IPv4 and UDP checksums updated to match, and tail-calls the
//! program under test (slot 0 of `SLB_WRAP_JUMP`). What the kernel times
//! is this plus the program; the wrapper's own share is measured by
//! tail-calling an XDP_PASS program.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_prandom_u32, bpf_xdp_adjust_head},
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use bench_ebpf::{WRAP_FRAME_LEN, WrapConfig, wrap_mode};
use lb_common::checksum;

/// Offsets in the template (Ethernet, then IPv4 with no options, then UDP).
const IP_CHECK: usize = 14 + 10;
const IP_SRC: usize = 14 + 12;
const UDP_CHECK: usize = 14 + 20 + 6;

#[map(name = "SLB_WRAP_CFG")]
static WRAP_CFG: Array<WrapConfig> = Array::with_max_entries(1, 0);

/// The next never-seen client of each CPU (mode `NEW`).
#[map(name = "SLB_WRAP_SEQ")]
static WRAP_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0: the program under test.
#[map(name = "SLB_WRAP_JUMP")]
static WRAP_JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[xdp]
pub fn xdp_wrap(ctx: XdpContext) -> u32 {
    let Some(cfg) = WRAP_CFG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let len = ctx.data_end() - ctx.data();
    if len != WRAP_FRAME_LEN {
        // The program under test moved the head (an encapsulation): move
        // it back, so that the frame starts where the template does.
        let delta = len as i32 - WRAP_FRAME_LEN as i32;
        // SAFETY: the context's own frame; pointers are re-read below.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
            return xdp_action::XDP_ABORTED;
        }
    }
    let start = ctx.data();
    // After the adjustment the frame is the template's length (no program
    // measured here moves its tail). `>`: the form the verifier learns the
    // frame's bounds from (an equality test, which LLVM would make of a
    // second check, teaches it nothing).
    if start + WRAP_FRAME_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // The frame starts XDP_PACKET_HEADROOM into its page, so 8-aligned.
    // Volatile stores: else LLVM makes a byte-wise memcpy of the copy.
    let words = start as *mut u64;
    for (i, w) in cfg.frame.iter().enumerate() {
        // SAFETY: WRAP_FRAME_LEN bytes lie inside the frame (checked above).
        unsafe { words.add(i).write_volatile(*w) };
    }
    // SAFETY: as above, byte-wise.
    let bytes = unsafe { &mut *(start as *mut [u8; WRAP_FRAME_LEN]) };
    let client = match cfg.mode {
        wrap_mode::RANDOM => {
            // SAFETY: a helper without arguments.
            let r = unsafe { bpf_get_prandom_u32() };
            Some(u32::from_be_bytes(cfg.client_base).wrapping_add(r % cfg.clients.max(1)))
        }
        wrap_mode::NEW => {
            let Some(seq) = WRAP_SEQ.get_ptr_mut(0) else {
                return xdp_action::XDP_ABORTED;
            };
            // SAFETY: per-CPU slot, no other writer while this runs here.
            let n = unsafe {
                let n = *seq;
                *seq = n + 1;
                n
            };
            Some(u32::from_be_bytes(cfg.client_base).wrapping_add(n as u32))
        }
        _ => None,
    };
    if let Some(client) = client {
        let to = client.to_be_bytes();
        let from = [
            bytes[IP_SRC],
            bytes[IP_SRC + 1],
            bytes[IP_SRC + 2],
            bytes[IP_SRC + 3],
        ];
        bytes[IP_SRC..IP_SRC + 4].copy_from_slice(&to);
        let ip = checksum::replace4([bytes[IP_CHECK], bytes[IP_CHECK + 1]], from, to);
        bytes[IP_CHECK..IP_CHECK + 2].copy_from_slice(&ip);
        // The UDP checksum covers the source address too (pseudo-header);
        // 0 means "none" and stays so, a computed 0 is sent as 0xffff.
        let udp = [bytes[UDP_CHECK], bytes[UDP_CHECK + 1]];
        if udp != [0, 0] {
            let mut c = checksum::replace4(udp, from, to);
            if c == [0, 0] {
                c = [0xff, 0xff];
            }
            bytes[UDP_CHECK..UDP_CHECK + 2].copy_from_slice(&c);
        }
    }
    // SAFETY: the context's own; returns only if the slot is empty or the
    // kernel's tail-call limit is reached.
    unsafe { WRAP_JUMP.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

lb_ebpf::program_boilerplate!();
