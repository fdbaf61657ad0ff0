//! stickylb user space: loading the XDP program and reading and writing its
//! maps. The `stickylb` binary is a thin CLI over this library, and the
//! privileged tests drive the same code.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod lb;
pub mod metrics;
pub mod neigh;
pub mod util;

/// The compiled XDP program, embedded at build time by build.rs.
pub static XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stickylb-xdp"));
