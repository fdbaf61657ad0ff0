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

/// `packet` (an IPv4 header first, from byte `at`) with its ECN field set
/// to `ecn` and its header checksum computed again (by etherparse, in full).
fn with_ecn(mut packet: Vec<u8>, at: usize, ecn: u8) -> Vec<u8> {
    let (mut ip, _) = etherparse::Ipv4Header::from_slice(&packet[at..]).unwrap();
    ip.ecn = etherparse::IpEcn::try_new(ecn).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let bytes = ip.to_bytes();
    packet[at..at + bytes.len()].copy_from_slice(&bytes);
    packet
}

/// The RFC 1071 sum of an IPv4 header, its checksum included: 0xffff when
/// the checksum is right.
fn header_sum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

const NOT_ECT: u8 = 0;
const ECT1: u8 = 1;
const ECT0: u8 = 2;
const CE: u8 = 3;

/// RFC 6040's decapsulation table for an outer CE (and an outer mark that
/// is not CE, which changes nothing): an ECN-capable inner packet becomes
/// CE, its checksum updated; a Not-ECT one is dropped.
#[test]
fn an_outer_ce_mark_is_carried_into_the_inner_packet() {
    let d = datagram();
    let inner = |ecn| with_ecn(d.clone(), 0, ecn);
    let outer_ipip = |outer, inner_ecn| with_ecn(ipip(LB, LOCAL, &inner(inner_ecn)), 14, outer);
    let outer_gue = |outer, inner_ecn| {
        with_ecn(
            gue(LB, LOCAL, DEFAULT_GUE_PORT, &inner(inner_ecn)),
            14,
            outer,
        )
    };
    // The expected inner packets, checked once more by the RFC 1071 sum and
    // against the bytes that must change: TOS and checksum only.
    let marked = inner(CE);
    assert_eq!(header_sum(&marked[..20]), 0xffff);
    for from in [ECT0, ECT1] {
        let before = inner(from);
        let changed: Vec<usize> = (0..d.len()).filter(|&i| before[i] != marked[i]).collect();
        assert!(
            changed.iter().all(|i| [1, 10, 11].contains(i)),
            "{changed:?}"
        );
        assert_eq!(marked[1], before[1] | 3);
    }
    let mut r = rig();
    run_cases(
        &mut r,
        vec![
            Case {
                what: "IP-in-IP, outer CE, inner ECT(0): inner marked CE",
                frame: outer_ipip(CE, ECT0),
                action: PASS,
                out: Some(decapsulated(&marked)),
                counter: decap_counter::DECAP_IPIP,
            },
            Case {
                what: "IP-in-IP, outer CE, inner ECT(1): inner marked CE",
                frame: outer_ipip(CE, ECT1),
                action: PASS,
                out: Some(decapsulated(&marked)),
                counter: decap_counter::DECAP_IPIP,
            },
            Case {
                what: "IP-in-IP, outer CE, inner CE already: unchanged",
                frame: outer_ipip(CE, CE),
                action: PASS,
                out: Some(decapsulated(&marked)),
                counter: decap_counter::DECAP_IPIP,
            },
            Case {
                what: "GUE, outer CE, inner ECT(0): inner marked CE",
                frame: outer_gue(CE, ECT0),
                action: PASS,
                out: Some(decapsulated(&marked)),
                counter: decap_counter::DECAP_GUE,
            },
            Case {
                what: "IP-in-IP, outer CE, inner Not-ECT: dropped",
                frame: outer_ipip(CE, NOT_ECT),
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_MALFORMED,
            },
            Case {
                what: "GUE, outer CE, inner Not-ECT: dropped",
                frame: outer_gue(CE, NOT_ECT),
                action: DROP,
                out: None,
                counter: decap_counter::REJECT_MALFORMED,
            },
            Case {
                what: "IP-in-IP, outer ECT(0) as sent, inner ECT(0): unchanged",
                frame: outer_ipip(ECT0, ECT0),
                action: PASS,
                out: Some(decapsulated(&inner(ECT0))),
                counter: decap_counter::DECAP_IPIP,
            },
            Case {
                what: "IP-in-IP, outer Not-ECT, inner ECT(1): unchanged",
                frame: outer_ipip(NOT_ECT, ECT1),
                action: PASS,
                out: Some(decapsulated(&inner(ECT1))),
                counter: decap_counter::DECAP_IPIP,
            },
        ],
    );
    // The program's incremental update is the full sum's result.
    let (_, out) = r.run(&outer_ipip(CE, ECT0));
    assert_eq!(header_sum(&out[14..34]), 0xffff);
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
