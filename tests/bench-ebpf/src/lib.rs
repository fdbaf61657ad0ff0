//! The benchmark's reference XDP programs are this package's binaries
//! (`floor-pass`, `floor-fwd`, `floor-encap`, `sink`, `gen`, and the VLAN test's TC helper
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
