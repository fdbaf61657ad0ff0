//! VLAN-tagged traffic to a VIP, in namespaces, with the real daemon: what
//! the XDP program sees of a tag, in skb and driver mode, with the tag in the
//! frame or in the socket buffer's metadata (as VLAN offload carries it).
//! This kernel has no 802.1Q devices and no bridge VLAN filtering, so the
//! client's frames are tagged by a TC egress program (tests/bench-ebpf's
//! `vlan-tag`); with the client veth's tx-vlan-offload off, the kernel writes
//! the tag into the frame. Needs root (CI is root).

use std::{net::SocketAddrV4, time::Duration};

use aya::{
    Ebpf,
    programs::{SchedClassifier, TcAttachType, tc},
};
use lb_user::api::StatusReply;
use stickylb_tests::{
    daemon::{Daemon, topology_with_pin},
    netns::{Topology, VIP, http_get, sh},
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");
static VLAN_TAG: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vlan-tag"));

const HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 2";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    /// In the socket buffer (VLAN offload): invisible in the frame.
    Metadata,
    /// In the frame (ethertype 0x8100).
    InBand,
}

struct Outcome {
    answered: usize,
    forwarded: u64,
    pass_vlan: u64,
    pass_not_ipv4: u64,
    log: String,
}

fn passed(s: &StatusReply, name: &str) -> u64 {
    s.passed.get(name).copied().unwrap_or(0)
}

/// Requests from tagged clients through a daemon attached in `mode`.
fn run(mode: &str, tag: Tag) -> Outcome {
    let (topo, pin) = topology_with_pin(1, 4, BACKEND.as_ref()).unwrap();
    let config = topo
        .config(&pin.0, HEALTH, "")
        .replace("xdp_mode = \"driver\"", &format!("xdp_mode = \"{mode}\""));
    let d = Daemon::start(&topo, STICKYLB.as_ref(), &config, &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    // Untagged, every client is answered: the rig works.
    let clients = topo.clients.clone();
    let ask = |topo: &Topology| {
        let clients = clients.clone();
        topo.client.enter(move || {
            clients
                .iter()
                .filter(|&&c| {
                    http_get(
                        c,
                        SocketAddrV4::new(VIP, 80),
                        "/",
                        None,
                        Duration::from_millis(700),
                    )
                    .is_ok()
                })
                .count()
        })
    };
    assert_eq!(ask(&topo), clients.len(), "untagged requests");

    match tag {
        // The bridge's receive path moves an in-frame tag into metadata;
        // its port then writes it back into the frame.
        Tag::InBand => sh(topo
            .bridge
            .command("ethtool")
            .args(["-K", "p-lb", "txvlan", "off"]))
        .map(drop)
        .unwrap(),
        Tag::Metadata => {}
    }
    let _tagger = topo.client.enter(|| {
        let mut bpf = Ebpf::load(VLAN_TAG).expect("load vlan-tag");
        let prog: &mut SchedClassifier = bpf
            .program_mut(bench_ebpf::program_names::VLAN_TAG)
            .expect("vlan_tag program")
            .try_into()
            .expect("a TC program");
        prog.load().expect("load vlan_tag");
        // EEXIST: the qdisc is there already.
        let _ = tc::qdisc_add_clsact("eth0");
        prog.attach("eth0", TcAttachType::Egress)
            .expect("attach vlan_tag");
        bpf
    });
    let before = d.status().unwrap();
    let answered = ask(&topo);
    let after = d.status().unwrap();
    Outcome {
        answered,
        forwarded: after.vips[0].counters.packets - before.vips[0].counters.packets,
        pass_vlan: passed(&after, "pass_vlan") - passed(&before, "pass_vlan"),
        pass_not_ipv4: passed(&after, "pass_not_ipv4") - passed(&before, "pass_not_ipv4"),
        log: d.log_text(),
    }
}

/// What a warning at attach says when tags may be hidden from the program.
const WARNING: &str = "cannot see a VLAN tag the kernel carries outside the frame";

#[test]
fn vlan_tagged_frames_are_passed_or_keep_their_tag_and_driver_mode_warns() {
    let mut rows = Vec::new();
    for mode in ["skb", "driver"] {
        for tag in [Tag::InBand, Tag::Metadata] {
            let o = run(mode, tag);
            println!(
                "VLAN tag {tag:?}, {mode} mode: {}/4 clients answered, {} frames forwarded, \
                 pass_vlan {}, pass_not_ipv4 {}, warning at attach: {}",
                o.answered,
                o.forwarded,
                o.pass_vlan,
                o.pass_not_ipv4,
                o.log.contains(WARNING)
            );
            rows.push((mode, tag, o));
        }
    }
    for (mode, tag, o) in &rows {
        match (*mode, tag) {
            // The program sees the tag: passed, counted, never forwarded
            // (and this host, without a VLAN device, drops it).
            (_, Tag::InBand) => {
                assert_eq!(o.forwarded, 0, "{mode}: in-band tagged frames forwarded");
                assert!(o.pass_vlan > 0, "{mode}: pass_vlan not counted");
                assert_eq!(o.answered, 0, "{mode}");
            }
            // Generic XDP leaves the tag in the socket buffer, and XDP_TX
            // sends it with the frame: the backend, which has no VLAN
            // device, gets it tagged and does not answer. Forwarded
            // untagged, it would.
            ("skb", Tag::Metadata) => {
                assert!(o.forwarded > 0, "skb: not forwarded");
                assert_eq!(o.answered, 0, "skb: the tag was stripped");
            }
            // Driver mode: the tag is invisible and XDP_TX loses it. The
            // program cannot tell; the daemon said so at attach.
            (_, Tag::Metadata) => {
                assert!(o.forwarded > 0, "{mode}: not forwarded");
            }
        }
        let warned = o.log.contains(WARNING);
        assert_eq!(
            warned,
            *mode == "driver",
            "{mode} mode, warning: {warned}\n{}",
            o.log
        );
        if warned {
            assert!(o.log.contains("veth"), "{}", o.log);
        }
    }
}
