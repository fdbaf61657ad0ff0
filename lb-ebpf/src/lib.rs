//! Empty on purpose: the XDP program is the `stickylb-xdp` binary. This
//! library target only lets lb-user list lb-ebpf as a build dependency, so
//! that cargo rebuilds lb-user (which embeds the object) when it changes.
#![no_std]
