//! Test helper, not a benchmark reference: a TC egress program that gives
//! every IPv4 frame the VLAN tag `bench_ebpf::TEST_VLAN_ID` the way VLAN
//! offload carries it, in the socket buffer's metadata rather than in the
//! frame. This kernel has neither 802.1Q devices nor bridge VLAN filtering,
//! so this is how the VLAN test makes the frames a NIC with `rx-vlan-offload`
//! or a VLAN-aware bridge would hand to the load balancer. ARP stays
//! untagged so the client still resolves the VIP. With the sending veth's
//! `tx-vlan-offload` off, the kernel writes the tag into the frame instead.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK},
    helpers::bpf_skb_vlan_push,
    macros::classifier,
    programs::TcContext,
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;

#[classifier]
pub fn vlan_tag(ctx: TcContext) -> i32 {
    if ctx.load::<u16>(12).map(u16::from_be) == Ok(ETH_P_IPV4) {
        // SAFETY: the context's own socket buffer. A failed push leaves the
        // frame untagged, which the test sees as nothing being tagged.
        unsafe {
            bpf_skb_vlan_push(
                ctx.skb.skb.cast::<__sk_buff>(),
                ETH_P_8021Q.to_be(),
                bench_ebpf::TEST_VLAN_ID,
            )
        };
    }
    TC_ACT_OK
}

lb_ebpf::program_boilerplate!();
