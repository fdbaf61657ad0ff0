//! BPF_PROG_TEST_RUN fixtures of the decap program (`stickylb decap`),
//! against the real compiled object: (description, frame, expected action,
//! expected output frame, expected counter), as a table.

use std::net::Ipv4Addr;

use lb_common::{DEFAULT_GUE_PORT, decap_counter};
use stickylb_tests::{
    decap::{
        DecapRig, decapsulated, eth_header, gue, inner_tcp_syn, inner_udp, ipip, ipip_with,
        settings,
    },
    frame,
};

/// The backend's own address (outer destination).
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 5, 7);
/// Another address (of this host or not).
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 0, 5, 8);
/// A load balancer accepted by its address.
const LB: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// A load balancer's per-client source prefix, accepted as a prefix.
const LB_PREFIX: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 9, 0, 0), 24);
const IN_PREFIX: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 77);
/// Neither.
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 66);
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

/// XDP_PASS and XDP_DROP.
const PASS: u32 = 2;
const DROP: u32 = 1;

fn rig() -> DecapRig {
    DecapRig::new(
        settings(LOCAL, true, DEFAULT_GUE_PORT),
        &[(LB, 32), LB_PREFIX],
    )
}

fn datagram() -> Vec<u8> {
    inner_udp(CLIENT, VIP, 53, b"a client's query")
}

/// One fixture: what goes in, what must come out, which counter moves.
struct Case {
    what: &'static str,
    frame: Vec<u8>,
    action: u32,
    /// `None`: the frame unchanged.
    out: Option<Vec<u8>>,
    counter: u32,
}

fn run_cases(rig: &mut DecapRig, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in cases {
        let before = rig.counters();
        let (action, out) = rig.run(&c.frame);
        let after = rig.counters();
        let want_out = c.out.clone().unwrap_or_else(|| c.frame.clone());
        if action != c.action {
            failures.push(format!("{}: action {action}, want {}", c.what, c.action));
        }
        // A dropped frame has no output worth comparing.
        if c.action == PASS && out != want_out {
            failures.push(format!(
                "{}: output frame differs:\n  got  {out:02x?}\n  want {want_out:02x?}",
                c.what
            ));
        }
        let moved: Vec<(usize, u64)> = (0..after.len())
            .filter(|&i| after[i] != before[i])
            .map(|i| (i, after[i] - before[i]))
            .collect();
        if moved != [(c.counter as usize, 1)] {
            let named: Vec<String> = moved
                .iter()
                .map(|(i, n)| format!("{} +{n}", decap_counter::NAMES[*i]))
                .collect();
            failures.push(format!(
                "{}: counters moved {named:?}, want {} +1",
                c.what,
                decap_counter::NAMES[c.counter as usize]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn accepted_tunnel_frames_become_the_inner_packet() {
    let d = datagram();
    let syn = inner_tcp_syn(CLIENT, VIP, 80);
    // IHL 6: an outer header with options is stripped whole.
    let with_options = ipip_with(LB, LOCAL, &d, |ip| {
        ip.options = [1, 1, 1, 0][..].try_into().unwrap();
    });
    assert_eq!(with_options.len(), 14 + 24 + d.len());
    run_cases(
        &mut rig(),
        vec![
            Case {
                what: "IP-in-IP from an accepted address",
                frame: ipip(LB, LOCAL, &d),
                action: PASS,
                out: Some(decapsulated(&d)),
                counter: decap_counter::DECAP_IPIP,
            },
            Case {
                what: "IP-in-IP carrying a TCP SYN",
                frame: ipip(LB, LOCAL, &syn),
                action: PASS,
                out: Some(decapsulated(&syn)),
                counter: decap_counter::DECAP_IPIP,
            },
            Case {
                what: "GUE from an accepted address",
                frame: gue(LB, LOCAL, DEFAULT_GUE_PORT, &d),
                action: PASS,
                out: Some(decapsulated(&d)),
                counter: decap_counter::DECAP_GUE,
            },
            Case {
                what: "IP-in-IP from an accepted prefix",
                frame: ipip(IN_PREFIX, LOCAL, &d),
                action: PASS,
                out: Some(decapsulated(&d)),
                counter: decap_counter::DECAP_IPIP,
            },
            Case {
                what: "GUE from an accepted prefix",
                frame: gue(IN_PREFIX, LOCAL, DEFAULT_GUE_PORT, &syn),
                action: PASS,
                out: Some(decapsulated(&syn)),
                counter: decap_counter::DECAP_GUE,
            },
            Case {
                what: "IP-in-IP with outer IP options",
                frame: with_options,
                action: PASS,
                out: Some(decapsulated(&d)),
                counter: decap_counter::DECAP_IPIP,
            },
        ],
    );
}

#[test]
fn the_output_is_an_ipv4_frame_with_the_original_ethernet_header() {
    let d = datagram();
    let (action, out) = rig().run(&ipip(LB, LOCAL, &d));
    assert_eq!(action, PASS);
    assert_eq!(out[..14], eth_header()[..]);
    assert_eq!(out[12..14], [0x08, 0x00]);
    let (ip, rest) = etherparse::Ipv4Header::from_slice(&out[14..]).unwrap();
    assert_eq!((ip.source, ip.destination), (CLIENT.octets(), VIP.octets()));
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    assert_eq!(rest.len(), d.len() - 20);
}

#[test]
fn tunnel_frames_from_others_or_to_others_are_dropped() {
    let d = datagram();
    let mut r = rig();
    run_cases(
        &mut r,
        vec![
            Case {
                what: "IP-in-IP from a source that is no load balancer",
                frame: ipip(STRANGER, LOCAL, &d),
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_SOURCE,
            },
            Case {
                what: "GUE from a source that is no load balancer",
                frame: gue(STRANGER, LOCAL, DEFAULT_GUE_PORT, &d),
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_SOURCE,
            },
            Case {
                what: "IP-in-IP from just outside the accepted prefix",
                frame: ipip(Ipv4Addr::new(10, 9, 1, 1), LOCAL, &d),
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_SOURCE,
            },
            Case {
                what: "IP-in-IP from a load balancer to another address",
                frame: ipip(LB, OTHER, &d),
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_DEST,
            },
            Case {
                what: "GUE from a load balancer to another address",
                frame: gue(LB, OTHER, DEFAULT_GUE_PORT, &d),
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_DEST,
            },
        ],
    );
}

#[test]
fn malformed_tunnel_frames_are_dropped() {
    let d = datagram();
    let whole = ipip(LB, LOCAL, &d);
    // The outer length still says the whole packet: the frame was cut.
    let cut_in_inner_header = whole[..14 + 20 + 12].to_vec();
    let cut_in_inner_payload = whole[..whole.len() - 4].to_vec();
    // A GUE variant 0 header (version 0, no flags, proto 4) before the inner.
    let mut gue_v0 = vec![0x00, 0x00, 0x04, 0x00];
    gue_v0.extend_from_slice(&d);
    let ipv6_inner = {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv6(
            [0x20, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            64,
        )
        .udp(1, 2)
        .write(&mut v, b"x")
        .unwrap();
        v
    };
    run_cases(
        &mut rig(),
        vec![
            Case {
                what: "IP-in-IP whose inner header is cut short",
                frame: cut_in_inner_header,
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_MALFORMED,
            },
            Case {
                what: "IP-in-IP whose inner packet is longer than the frame",
                frame: cut_in_inner_payload,
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_MALFORMED,
            },
            Case {
                what: "IP-in-IP with no inner packet at all",
                frame: ipip(LB, LOCAL, &[]),
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_MALFORMED,
            },
            Case {
                what: "GUE with a variant 0 header",
                frame: gue(LB, LOCAL, DEFAULT_GUE_PORT, &gue_v0),
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_MALFORMED,
            },
            Case {
                what: "GUE carrying IPv6",
                frame: gue(LB, LOCAL, DEFAULT_GUE_PORT, &ipv6_inner),
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_MALFORMED,
            },
            Case {
                what: "IP-in-IP first fragment (MF set)",
                frame: ipip_with(LB, LOCAL, &d, |ip| {
                    ip.dont_fragment = false;
                    ip.more_fragments = true;
                }),
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_MALFORMED,
            },
            Case {
                what: "IP-in-IP later fragment (offset set)",
                frame: ipip_with(LB, LOCAL, &d, |ip| {
                    ip.dont_fragment = false;
                    ip.fragment_offset = 185u16.try_into().unwrap();
                }),
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_MALFORMED,
            },
            Case {
                what: "GUE first fragment (MF set)",
                frame: {
                    let mut f = gue(LB, LOCAL, DEFAULT_GUE_PORT, &d);
                    // flags/offset: MF; the checksum does not matter here.
                    f[14 + 6] = 0x20;
                    f
                },
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_MALFORMED,
            },
        ],
    );
}

#[test]
fn other_traffic_passes_unchanged() {
    let d = datagram();
    let mut tcp = Vec::new();
    etherparse::PacketBuilder::ethernet2(
        stickylb_tests::decap::GW_MAC,
        stickylb_tests::decap::BACKEND_MAC,
    )
    .ipv4(LB.octets(), LOCAL.octets(), 64)
    .tcp(40000, 80, 1, 1024)
    .syn()
    .write(&mut tcp, &[])
    .unwrap();
    // Its bytes are those of the frame, so a GUE-port datagram of a
    // stranger's would look the same on another port.
    let udp_other_port = gue(LB, LOCAL, DEFAULT_GUE_PORT + 1, &d);
    run_cases(
        &mut rig(),
        vec![
            Case {
                what: "TCP to this host",
                frame: tcp,
                action: PASS,
                out: None,
                counter: decap_counter::PASS_NOT_TUNNEL,
            },
            Case {
                what: "UDP to another port, from a load balancer",
                frame: udp_other_port,
                action: PASS,
                out: None,
                counter: decap_counter::PASS_NOT_TUNNEL,
            },
            Case {
                what: "UDP to another port, from a stranger",
                frame: gue(STRANGER, LOCAL, 53, &d),
                action: PASS,
                out: None,
                counter: decap_counter::PASS_NOT_TUNNEL,
            },
            Case {
                what: "ARP",
                frame: frame::arp_request(LB.octets()),
                action: PASS,
                out: None,
                counter: decap_counter::PASS_NOT_TUNNEL,
            },
            Case {
                what: "IPv6",
                frame: frame::ipv6_tcp(),
                action: PASS,
                out: None,
                counter: decap_counter::PASS_NOT_TUNNEL,
            },
            Case {
                what: "ICMP echo",
                frame: frame::icmp_echo(LB.octets()),
                action: PASS,
                out: None,
                counter: decap_counter::PASS_NOT_TUNNEL,
            },
            Case {
                what: "a frame too short for IPv4",
                frame: eth_header(),
                action: PASS,
                out: None,
                counter: decap_counter::PASS_NOT_TUNNEL,
            },
        ],
    );
}

/// With a mode off its frames are not tunnel frames: passed to the stack
/// unchanged and counted `pass_not_tunnel` (this kernel, without ipip/fou,
/// then drops IP-in-IP as an unknown protocol, and GUE as a datagram to a
/// port nobody listens on), not decapsulated, not rejected.
#[test]
fn a_mode_turned_off_is_not_decapsulated() {
    let d = datagram();
    let mut r = DecapRig::new(settings(LOCAL, false, DEFAULT_GUE_PORT), &[(LB, 32)]);
    run_cases(
        &mut r,
        vec![
            Case {
                what: "IP-in-IP with ipip off",
                frame: ipip(LB, LOCAL, &d),
                action: PASS,
                out: None,
                counter: decap_counter::PASS_NOT_TUNNEL,
            },
            Case {
                what: "GUE with ipip off (still on)",
                frame: gue(LB, LOCAL, DEFAULT_GUE_PORT, &d),
                action: PASS,
                out: Some(decapsulated(&d)),
                counter: decap_counter::DECAP_GUE,
            },
        ],
    );
    r.set(settings(LOCAL, true, 0));
    run_cases(
        &mut r,
        vec![
            Case {
                what: "GUE with gue off",
                frame: gue(LB, LOCAL, DEFAULT_GUE_PORT, &d),
                action: PASS,
                out: None,
                counter: decap_counter::PASS_NOT_TUNNEL,
            },
            Case {
                what: "IP-in-IP with gue off (still on)",
                frame: ipip(LB, LOCAL, &d),
                action: PASS,
                out: Some(decapsulated(&d)),
                counter: decap_counter::DECAP_IPIP,
            },
        ],
    );
}

/// Before `stickylb decap` writes the settings (all zero), nothing is a
/// tunnel frame.
#[test]
fn unset_settings_decapsulate_nothing() {
    let d = datagram();
    let mut r = DecapRig::new(Default::default(), &[(LB, 32)]);
    run_cases(
        &mut r,
        vec![Case {
            what: "IP-in-IP before any settings",
            frame: ipip(LB, LOCAL, &d),
            action: PASS,
            out: None,
            counter: decap_counter::PASS_NOT_TUNNEL,
        }],
    );
}

/// The embedded decap object defines the maps and the program lb-common
/// names (what `stickylb decap` opens and pins). No root needed.
#[test]
fn the_decap_object_defines_every_name_lb_common_declares() {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let elf = object::File::parse(lb_user::DECAP_OBJECT).expect("the decap object parses");
    assert_eq!(elf.architecture(), object::Architecture::Bpf);
    let section_of = |name: &str| {
        elf.symbols()
            .find(|s| s.name() == Ok(name))
            .and_then(|s| s.section_index())
            .and_then(|i| elf.section_by_index(i).ok())
            .and_then(|s| s.name().ok().map(str::to_owned))
    };
    for map in lb_common::decap_map_names::ALL {
        assert!(
            map.len() <= 15,
            "map name {map} is longer than the kernel keeps"
        );
        assert_eq!(section_of(map).as_deref(), Some("maps"), "map {map}");
    }
    assert_eq!(
        section_of(lb_common::DECAP_PROGRAM_NAME).as_deref(),
        Some("xdp")
    );
}
