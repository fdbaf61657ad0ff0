//! stickylb user space: loading the XDP program and reading and writing its
//! maps. The `stickylb` binary is a thin CLI over this library, and the
//! privileged tests drive the same code; what they need is public, the
//! daemon's own machinery is not.

pub mod announce;
pub mod api;
mod census;
pub mod cli;
pub mod config;
mod conncap;
pub mod control;
mod daemon;
pub mod dataplane;
pub mod decap;
mod fmt;
pub mod health;
pub mod lb;
mod limits;
mod metrics;
mod neigh;
mod netdev;
mod netlink;
mod notify;
pub mod runtime;
pub mod sync;
pub mod util;

/// The compiled XDP program, embedded at build time by build.rs.
pub static XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stickylb-xdp"));

/// The compiled decap program (`stickylb decap`), embedded likewise.
pub static DECAP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stickylb-decap"));
