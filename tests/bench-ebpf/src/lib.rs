//! The benchmark's reference XDP programs are this package's binaries
//! (`floor-pass`, `floor-fwd`, `floor-encap`, `sink`, `gen`, the timing harness `wrap`, and the VLAN test's TC helper
//! `vlan-tag`; stickylb-tests' build script
//! builds them for the BPF target). This library holds the names and types
//! they share with the benchmark code that loads them, so it builds for both
//! the BPF target and the host; the `user` feature adds what only user space
//! needs. It also lets stickylb-tests list this package as a build
//! dependency, so that cargo rebuilds the embedded objects when it changes.
//! None of this is part of the load balancer.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// Program names (the function names in src/bin/*.rs).
pub mod program_names {
    /// Returns `XDP_PASS`: the cost of running any XDP program at all.
    pub const FLOOR_PASS: &str = "floor_pass";
    /// Parses Ethernet + IPv4, swaps the MACs, `XDP_TX`: the least a
    /// forwarder can do.
    pub const FLOOR_FWD: &str = "floor_fwd";
    /// Parses Ethernet + IPv4, puts an outer IPv4 header (IP-in-IP, with
    /// its checksum) in front with `bpf_xdp_adjust_head`, swaps the MACs,
    /// `XDP_TX`: the least an encapsulating forwarder can do.
    pub const FLOOR_ENCAP: &str = "floor_encap";
    /// Counts every frame in `map_names::SINK_COUNT` and drops it.
    pub const SINK: &str = "sink";
    /// Traffic generator for live-frames mode: rewrites MACs and the source
    /// address, `XDP_TX`.
    pub const GEN: &str = "traffic_gen";
    /// Benchmark harness: restores the frame, writes the client the mode
    /// asks for, tail-calls the program under test (`WrapConfig`).
    pub const WRAP: &str = "xdp_wrap";
    /// Test helper (TC egress, not XDP): tags IPv4 frames with
    /// `TEST_VLAN_ID` in the socket buffer's metadata.
    pub const VLAN_TAG: &str = "vlan_tag";
}

/// The VLAN the `vlan_tag` program tags frames with.
pub const TEST_VLAN_ID: u16 = 10;

/// Map names (at most 15 bytes, as the kernel keeps).
pub mod map_names {
    /// Per-CPU `u64` array of `sink_counter::COUNT` counters.
    pub const SINK_COUNT: &str = "SLB_SINK_COUNT";
    /// Array of one `GenConfig`.
    pub const GEN_CONFIG: &str = "SLB_GEN_CONFIG";
    /// Per-CPU `u64` array of one entry: frames generated on that CPU.
    pub const GEN_SEQ: &str = "SLB_GEN_SEQ";
    /// Array of one `WrapConfig`.
    pub const WRAP_CFG: &str = "SLB_WRAP_CFG";
    /// Per-CPU `u64` array of one entry: the wrapper's next new client.
    pub const WRAP_SEQ: &str = "SLB_WRAP_SEQ";
    /// Program array of one slot: the program the wrapper tail-calls.
    pub const WRAP_JUMP: &str = "SLB_WRAP_JUMP";
}

/// Indices into `SLB_SINK_COUNT`.
pub mod sink_counter {
    /// Every frame the sink received.
    pub const FRAMES: u32 = 0;
    /// Bytes of those frames.
    pub const BYTES: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// What the generator writes into every frame before transmitting it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct GenConfig {
    /// Destination MAC (the load balancer's interface).
    pub dst_mac: [u8; 6],
    /// Source MAC (the generator's interface).
    pub src_mac: [u8; 6],
    /// First client address, network byte order; frame `i` (counted per
    /// CPU) comes from `client_base + i % clients`.
    pub client_base: [u8; 4],
    /// Number of distinct client addresses (at least 1).
    pub clients: u32,
}

const _: () = assert!(size_of::<GenConfig>() == 20);

#[cfg(feature = "user")]
// SAFETY: repr(C), no implicit padding (checked by bytemuck's derive), valid
// for any bit pattern.
unsafe impl aya::Pod for GenConfig {}

/// The frame the wrapper restores every iteration: its length, in bytes.
pub const WRAP_FRAME_LEN: usize = 64;

/// Which client the wrapper writes into the frame.
pub mod wrap_mode {
    /// The template's own source address, every iteration.
    pub const SAME: u32 = 0;
    /// `client_base + prandom % clients`.
    pub const RANDOM: u32 = 1;
    /// `client_base + n`, n the CPU's next sequence number
    /// (`map_names::WRAP_SEQ`): a client never seen before.
    pub const NEW: u32 = 2;
}

/// What the wrapper restores and writes every iteration.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct WrapConfig {
    /// The template frame (`WRAP_FRAME_LEN` bytes: Ethernet, IPv4 without
    /// options, UDP), as 8-byte words so that the copy is 8 stores.
    pub frame: [u64; WRAP_FRAME_LEN / 8],
    /// `wrap_mode::*`.
    pub mode: u32,
    /// Number of clients of `RANDOM` (at least 1).
    pub clients: u32,
    /// First client address, network byte order.
    pub client_base: [u8; 4],
    pub _pad: u32,
}

const _: () = assert!(size_of::<WrapConfig>() == 80);

#[cfg(feature = "user")]
// SAFETY: repr(C), no implicit padding (checked by bytemuck's derive), valid
// for any bit pattern.
unsafe impl aya::Pod for WrapConfig {}
