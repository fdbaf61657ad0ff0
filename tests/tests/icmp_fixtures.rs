//! BPF_PROG_TEST_RUN fixtures of the XDP program's ICMP paths (icmp.rs)
//! against the real compiled object: errors about a client's flow go to
//! that client's backend, everything else is passed as before. Needs root.

use std::net::Ipv4Addr;

use etherparse::{
    Icmpv4Type, IpNumber, Ipv4Header, PacketBuilder, TcpHeader,
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
};
use lb_common::{
    AffinityValue, BackendStats, ForwardingMode, TunnelSettings, VipStats, global_counter as gc,
};
use stickylb_tests::{
    Counters, LB_MAC, ROUTER_MAC, Rig, VIP, VIP_PORT, backend_addr, backend_mac, client,
    fibnet::{
        self, BACKEND_NET, FibNet, GUE_PORT, GW, GW_MAC, INGRESS, LB_ADDR, OTHER, OTHER_GW,
        OTHER_GW_MAC, OTHER_MAC,
    },
    frame, monotonic_ns,
};

// XDP actions (linux/bpf.h).
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// The router on the path back to the client that reports the error.
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The client's port of the flow an error is about.
const CLIENT_PORT: u16 = 40123;

/// A backend's TCP segment to the client (from the VIP, as DSR sends it),
/// as a router quotes it: its IPv4 header, its TCP header and `payload`.
fn backend_segment(from: Ipv4Addr, sport: u16, to: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let tcp = TcpHeader::new(sport, CLIENT_PORT, 7000, 502);
    let mut ip = Ipv4Header::new(
        (tcp.header_len() + payload.len()) as u16,
        61,
        IpNumber::TCP,
        from.octets(),
        to,
    )
    .unwrap();
    ip.dont_fragment = true;
    ip.header_checksum = ip.calc_header_checksum();
    let mut v = Vec::new();
    ip.write(&mut v).unwrap();
    tcp.write(&mut v).unwrap();
    v.extend_from_slice(payload);
    v
}

/// The quote of a segment of the VIP's flow to client `c`, as Linux
/// routers send it (all of a short packet).
fn quote_of(c: [u8; 4]) -> Vec<u8> {
    backend_segment(VIP, VIP_PORT, c, &[0x55; 100])
}

/// An ICMP error of `icmp_type` from the router to `to`, quoting `quote`.
fn icmp_error(to: Ipv4Addr, icmp_type: Icmpv4Type, quote: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC)
        .ipv4(ROUTER.octets(), to.octets(), 255)
        .icmpv4(icmp_type);
    let mut v = Vec::new();
    b.write(&mut v, quote).unwrap();
    v
}

fn frag_needed(mtu: u16) -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: mtu,
    })
}

fn time_exceeded() -> Icmpv4Type {
    Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit)
}

/// The counters all at zero, shaped like the rig's.
fn zero(rig: &Rig) -> Counters {
    let mut c = rig.counters();
    c.vip = VipStats::default();
    c.backends
        .iter_mut()
        .for_each(|b| *b = BackendStats::default());
    c.global = Default::default();
    c
}

/// Runs `frame` and checks the action, the output frame and every counter.
fn check(
    rig: &mut Rig,
    frame: &[u8],
    action: u32,
    output: &[u8],
    counters: &Counters,
) -> Result<(), String> {
    let before = rig.counters();
    let (got, out) = rig.run(frame);
    let delta = rig.counters().since(&before);
    if got != action {
        return Err(format!("action {got}, want {action}"));
    }
    if out != output {
        return Err(format!(
            "output frame\n  got  {out:02x?}\n  want {output:02x?}"
        ));
    }
    let wrong = delta.differences(counters);
    if !wrong.is_empty() {
        return Err(format!("counters: {}", wrong.join("; ")));
    }
    Ok(())
}

/// `frame` forwarded (MACs only) to backend `b`, counted as an ICMP error
/// forwarded, and nothing else.
fn check_forwarded(rig: &mut Rig, frame: &[u8], b: u32) -> Result<(), String> {
    let mut c = zero(rig);
    let len = frame.len() as u64;
    c.vip.packets = 1;
    c.vip.bytes = len;
    c.vip.icmp_forwarded = 1;
    c.backends[b as usize].packets = 1;
    c.backends[b as usize].bytes = len;
    check(rig, frame, XDP_TX, &frame::forwarded(frame, b), &c)
}

fn check_passed(rig: &mut Rig, frame: &[u8], counter: u32) -> Result<(), String> {
    let mut c = zero(rig);
    c.global[counter as usize] = 1;
    check(rig, frame, XDP_PASS, frame, &c)
}

/// Pins client `c` by a data segment; its backend.
fn pin(rig: &mut Rig, c: [u8; 4]) -> u32 {
    let (action, _) = rig.run(&frame::tcp_data(c, 39999));
    assert_eq!(action, XDP_TX, "pinning {c:?}");
    rig.dp
        .affinity(&rig.affinity_key(c))
        .unwrap()
        .expect("entry")
        .backend_id
}

/// A backend other than the one the table gives `c`, pinned for `c`, so
/// that a frame following the pin cannot be told from one following the
/// table by chance.
fn pin_elsewhere(rig: &mut Rig, c: [u8; 4]) -> (u32, AffinityValue) {
    let other = (rig.predict(c).unwrap() + 1) % 3;
    let now = monotonic_ns();
    let entry = AffinityValue {
        backend_id: other,
        synced_s: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    rig.dp.set_affinity(rig.affinity_key(c), entry).unwrap();
    (other, entry)
}

/// Checks that `c`'s affinity entry is still `want` (`None`: no entry).
fn entry_is(rig: &Rig, c: [u8; 4], want: Option<AffinityValue>) -> Result<(), String> {
    let got = rig.dp.affinity(&rig.affinity_key(c)).unwrap();
    (got == want)
        .then_some(())
        .ok_or(format!("affinity entry {got:?}, want {want:?}"))
}

type CaseFn = fn(&mut Rig) -> Result<(), String>;

const CASES: &[(&str, CaseFn)] = &[
    (
        "frag-needed to a DSR VIP about a pinned client's flow: to its backend, \
         the frame unchanged but for the MACs, the entry untouched",
        |rig| {
            let c = client(1);
            let (b, entry) = pin_elsewhere(rig, c);
            let f = icmp_error(VIP, frag_needed(1400), &quote_of(c));
            check_forwarded(rig, &f, b)?;
            entry_is(rig, c, Some(entry))
        },
    ),
    (
        "frag-needed about a client pinned by its traffic: its backend",
        |rig| {
            let c = client(2);
            let b = pin(rig, c);
            check_forwarded(rig, &icmp_error(VIP, frag_needed(1280), &quote_of(c)), b)
        },
    ),
    (
        "frag-needed about an unpinned client: its Maglev backend, nothing pinned",
        |rig| {
            let c = client(3);
            let b = rig.predict(c).unwrap();
            check_forwarded(rig, &icmp_error(VIP, frag_needed(1400), &quote_of(c)), b)?;
            entry_is(rig, c, None)
        },
    ),
    (
        "time exceeded about a pinned client's flow: its backend",
        |rig| {
            let c = client(4);
            let (b, entry) = pin_elsewhere(rig, c);
            check_forwarded(rig, &icmp_error(VIP, time_exceeded(), &quote_of(c)), b)?;
            entry_is(rig, c, Some(entry))
        },
    ),
    (
        "time exceeded about an unpinned client: its Maglev backend, nothing pinned",
        |rig| {
            let c = client(5);
            let b = rig.predict(c).unwrap();
            check_forwarded(rig, &icmp_error(VIP, time_exceeded(), &quote_of(c)), b)?;
            entry_is(rig, c, None)
        },
    ),
    (
        "port unreachable (any code of type 3) about a client's flow: its backend",
        |rig| {
            let c = client(6);
            let b = rig.predict(c).unwrap();
            let t = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
            check_forwarded(rig, &icmp_error(VIP, t, &quote_of(c)), b)
        },
    ),
    (
        "a quote of only the 8 bytes RFC 792 asks for is enough",
        |rig| {
            let c = client(7);
            let b = rig.predict(c).unwrap();
            let q = &quote_of(c)[..28];
            check_forwarded(rig, &icmp_error(VIP, frag_needed(1400), q), b)
        },
    ),
    (
        "pinned to a backend now dead: the Maglev pick, the entry left alone",
        |rig| {
            let c = client(8);
            let (b, entry) = pin_elsewhere(rig, c);
            rig.set_alive(b, false);
            rig.rebuild();
            let now = rig.predict(c).unwrap();
            assert_ne!(now, b);
            check_forwarded(rig, &icmp_error(VIP, frag_needed(1400), &quote_of(c)), now)?;
            entry_is(rig, c, Some(entry))
        },
    ),
    ("expired entry: the Maglev pick", |rig| {
        let c = client(9);
        let home = rig.predict(c).unwrap();
        let other = (home + 1) % 3;
        let stale = monotonic_ns() - stickylb_tests::TIMEOUT_NS - 1_000_000_000;
        let entry = AffinityValue {
            backend_id: other,
            synced_s: 0,
            created_ns: stale,
            last_seen_ns: stale,
        };
        rig.dp.set_affinity(rig.affinity_key(c), entry).unwrap();
        check_forwarded(rig, &icmp_error(VIP, frag_needed(1400), &quote_of(c)), home)?;
        entry_is(rig, c, Some(entry))
    }),
    ("no alive backend: dropped and counted", |rig| {
        for b in 0..3 {
            rig.set_alive(b, false);
        }
        rig.rebuild();
        let f = icmp_error(VIP, frag_needed(1400), &quote_of(client(10)));
        let mut c = zero(rig);
        c.vip.drop_no_backend = 1;
        check(rig, &f, XDP_DROP, &f, &c)
    }),
    ("echo request to the VIP: passed as before", |rig| {
        check_passed(rig, &frame::icmp_echo(client(11)), gc::PASS_NOT_TCP_UDP)
    }),
    (
        "an ICMP message other than these errors (parameter problem): passed as before",
        |rig| {
            let t = Icmpv4Type::ParameterProblem(
                etherparse::icmpv4::ParameterProblemHeader::PointerIndicatesError(1),
            );
            let f = icmp_error(VIP, t, &quote_of(client(12)));
            check_passed(rig, &f, gc::PASS_NOT_TCP_UDP)
        },
    ),
    (
        "an error about another port of the VIP address: passed, unmatched",
        |rig| {
            let q = backend_segment(VIP, 22, client(13), &[]);
            let f = icmp_error(VIP, frag_needed(1400), &q);
            check_passed(rig, &f, gc::PASS_ICMP_UNMATCHED)
        },
    ),
    ("an error about a non-VIP flow: passed, unmatched", |rig| {
        let other = Ipv4Addr::new(198, 51, 100, 11);
        let q = backend_segment(other, VIP_PORT, client(14), &[]);
        let f = icmp_error(other, frag_needed(1400), &q);
        check_passed(rig, &f, gc::PASS_ICMP_UNMATCHED)
    }),
    (
        "an error about the VIP's flow sent to another address: passed, unmatched",
        |rig| {
            let f = icmp_error(
                Ipv4Addr::new(198, 51, 100, 11),
                frag_needed(1400),
                &quote_of(client(15)),
            );
            check_passed(rig, &f, gc::PASS_ICMP_UNMATCHED)
        },
    ),
    (
        "an error about a UDP flow of a TCP VIP's port: passed, unmatched",
        |rig| {
            let mut q = quote_of(client(16));
            q[9] = 17;
            let f = icmp_error(VIP, frag_needed(1400), &q);
            check_passed(rig, &f, gc::PASS_ICMP_UNMATCHED)
        },
    ),
    ("a quote cut inside the ports: passed, unmatched", |rig| {
        let q = &quote_of(client(17))[..21];
        check_passed(
            rig,
            &icmp_error(VIP, frag_needed(1400), q),
            gc::PASS_ICMP_UNMATCHED,
        )
    }),
    (
        "a quote cut inside the IPv4 header: passed, unmatched",
        |rig| {
            let q = &quote_of(client(18))[..12];
            check_passed(
                rig,
                &icmp_error(VIP, frag_needed(1400), q),
                gc::PASS_ICMP_UNMATCHED,
            )
        },
    ),
    ("an error without a quote: passed, unmatched", |rig| {
        check_passed(
            rig,
            &icmp_error(VIP, frag_needed(1400), &[]),
            gc::PASS_ICMP_UNMATCHED,
        )
    }),
    (
        "an error whose ICMP header is cut short: passed, unmatched",
        |rig| {
            let f = icmp_error(VIP, frag_needed(1400), &[]);
            let mut cut = f[..14 + 20 + 4].to_vec();
            // The IPv4 total length as cut, so that only the ICMP header
            // is short.
            cut[16..18].copy_from_slice(&24u16.to_be_bytes());
            check_passed(rig, &cut, gc::PASS_ICMP_UNMATCHED)
        },
    ),
    (
        "a quote whose IPv4 header has options: its ports found after them",
        |rig| {
            let c = client(19);
            let b = rig.predict(c).unwrap();
            let mut q = quote_of(c);
            // IHL 6: 4 bytes of options (NOP, NOP, NOP, EOL) before TCP.
            q[0] = 0x46;
            q.splice(20..20, [1, 1, 1, 0]);
            check_forwarded(rig, &icmp_error(VIP, frag_needed(1400), &q), b)
        },
    ),
    (
        "a quote of a non-first fragment (no ports): passed, unmatched",
        |rig| {
            let mut q = quote_of(client(20));
            q[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
            check_passed(
                rig,
                &icmp_error(VIP, frag_needed(1400), &q),
                gc::PASS_ICMP_UNMATCHED,
            )
        },
    ),
    (
        "an error about a client's flow to the broadcast MAC: passed",
        |rig| {
            let mut f = icmp_error(VIP, frag_needed(1400), &quote_of(client(21)));
            f[..6].copy_from_slice(&[0xff; 6]);
            check_passed(rig, &f, gc::PASS_MULTICAST_DST)
        },
    ),
    (
        "an error about a client's flow for another host's MAC: passed",
        |rig| {
            rig.dp.set_own_mac(Some(LB_MAC)).unwrap();
            let mut f = icmp_error(VIP, frag_needed(1400), &quote_of(client(22)));
            f[..6].copy_from_slice(&backend_mac(9));
            check_passed(rig, &f, gc::PASS_OTHER_HOST)
        },
    ),
];

#[test]
fn icmp_fixture_table() {
    let mut failed = Vec::new();
    for (name, case) in CASES {
        let mut rig = Rig::new(3);
        match case(&mut rig) {
            Ok(()) => println!("icmp fixture ok: {name}"),
            Err(e) => {
                println!("icmp fixture FAILED: {name}: {e}");
                failed.push(*name);
            }
        }
    }
    println!(
        "icmp fixtures: {} passed, {} failed",
        CASES.len() - failed.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "failed fixtures: {failed:#?}");
}

// ---- Tunnel modes: each test in a namespace of its own (`fibnet`), for
// the program's FIB lookups.

/// The TOS of our ICMP messages: precedence "internetwork control".
const REPLY_TOS: u8 = 0xc0;

/// A client's TCP data segment to the VIP with DF set (`df`), its IPv4
/// packet `ip_len` bytes long.
fn client_segment(c: [u8; 4], ip_len: usize, df: bool) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 57, IpNumber::TCP, c, VIP.octets()).unwrap();
    ip.dont_fragment = df;
    ip.identification = 0x4321;
    let b = PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(CLIENT_PORT, VIP_PORT, 1001, 64240)
        .ack(1)
        .psh();
    let mut v = Vec::new();
    b.write(&mut v, &vec![0x5a; ip_len - 40]).unwrap();
    assert_eq!(v.len(), 14 + ip_len);
    v
}

/// The fragmentation needed the program must send, built by etherparse
/// (which computes both checksums): `smac` → `dmac`, IPv4 `src` → `dst`
/// (TOS 0xc0, ID 0, no DF, TTL 64), advertising `mtu`, quoting `quote`.
fn frag_needed_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv4Addr,
    dst: [u8; 4],
    mtu: u16,
    quote: &[u8],
) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, IpNumber::ICMP, src.octets(), dst).unwrap();
    ip.dscp = etherparse::IpDscp::try_new(REPLY_TOS >> 2).unwrap();
    ip.identification = 0;
    ip.dont_fragment = false;
    let b = PacketBuilder::ethernet2(smac, dmac)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .icmpv4(frag_needed(mtu));
    let mut v = Vec::new();
    b.write(&mut v, quote).unwrap();
    v
}

/// Checks the fragmentation needed `out` field by field (so that a failure
/// names the field), the checksums recomputed by etherparse.
fn check_frag_needed(
    out: &[u8],
    (smac, dmac): ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: [u8; 4],
    mtu: u16,
    quote: &[u8],
) {
    assert_eq!(
        out.len(),
        14 + 20 + 8 + 28,
        "Ethernet + IPv4 + ICMP + quote"
    );
    let (eth, rest) = etherparse::Ethernet2Header::from_slice(out).unwrap();
    assert_eq!(eth.destination, dmac, "destination MAC");
    assert_eq!(eth.source, smac, "source MAC");
    assert_eq!(eth.ether_type, etherparse::EtherType::IPV4, "ethertype");
    let (ip, rest) = Ipv4Header::from_slice(rest).unwrap();
    assert_eq!(out[14], 0x45, "version 4, IHL 5");
    assert_eq!(out[15], REPLY_TOS, "TOS");
    assert_eq!(ip.total_len, 56, "total length");
    assert_eq!(ip.identification, 0, "ID");
    assert!(!ip.dont_fragment && !ip.more_fragments, "flags");
    assert_eq!(ip.fragment_offset.value(), 0, "fragment offset");
    assert_eq!(ip.time_to_live, 64, "TTL");
    assert_eq!(ip.protocol, IpNumber::ICMP, "protocol");
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 checksum"
    );
    assert_eq!(Ipv4Addr::from(ip.source), src, "source: the VIP");
    assert_eq!(ip.destination, dst, "destination: the client");
    let (icmp, payload) = etherparse::Icmpv4Header::from_slice(rest).unwrap();
    assert_eq!(
        icmp.icmp_type,
        frag_needed(mtu),
        "type 3 code 4, next-hop MTU"
    );
    assert_eq!(&rest[4..6], &[0, 0], "unused");
    assert_eq!(
        icmp.checksum,
        icmp.icmp_type.calc_checksum(payload),
        "ICMP checksum"
    );
    assert_eq!(
        payload, quote,
        "quote: the client's IPv4 header and 8 bytes"
    );
}

fn tunnel_rig(mode: ForwardingMode) -> Rig {
    Rig::tunnel(3, mode)
}

/// Routes client `c` (a /32) through the gateway on the ingress interface.
fn route_client(net: &FibNet, c: [u8; 4]) {
    net.route(Ipv4Addr::from(c), &["via", &GW.to_string(), "dev", INGRESS])
        .unwrap();
}

fn run_counted(rig: &mut Rig, net: &FibNet, frame: &[u8]) -> (u32, Vec<u8>, Counters) {
    let before = rig.counters();
    let (action, out) = rig.run_in(net, frame);
    (action, out, rig.counters().since(&before))
}

fn assert_counters(got: &Counters, want: &Counters) {
    let wrong = got.differences(want);
    assert!(wrong.is_empty(), "counters: {}", wrong.join("; "));
}

const MODES: [ForwardingMode; 2] = [ForwardingMode::Ipip, ForwardingMode::Gue];

#[test]
fn an_error_about_a_tunnel_vips_flow_goes_encapsulated_to_the_clients_backend() {
    let net = FibNet::new().unwrap();
    for mode in MODES {
        let mut rig = tunnel_rig(mode);
        for (c, pinned) in [(client(40), true), (client(41), false)] {
            let b = if pinned {
                pin_elsewhere(&mut rig, c).0
            } else {
                rig.predict(c).unwrap()
            };
            let entry = rig.dp.affinity(&rig.affinity_key(c)).unwrap();
            // The client's own frame, for the outer header it gets.
            let (action, own) = rig.run_in(&net, &client_segment(c, 60, true));
            assert_eq!(action, XDP_TX, "{mode:?}");
            let entry = if pinned {
                entry
            } else {
                // The client's frame pinned it; the error must not change that.
                rig.dp.affinity(&rig.affinity_key(c)).unwrap()
            };
            let f = icmp_error(VIP, frag_needed(1400), &quote_of(c));
            let (action, out, delta) = run_counted(&mut rig, &net, &f);
            assert_eq!(action, XDP_TX, "{mode:?}");
            let overhead = mode.overhead() as usize;
            let outer = 14 + overhead;
            assert_eq!(
                &out[outer..],
                &f[14..],
                "{mode:?}: the ICMP packet, unchanged"
            );
            // The same outer header as the client's frames but for the
            // lengths and the checksum: same backend, same source, same
            // GUE source port.
            let (eth, rest) = etherparse::Ethernet2Header::from_slice(&out).unwrap();
            assert_eq!((eth.source, eth.destination), (LB_MAC, GW_MAC), "{mode:?}");
            let (ip, rest) = Ipv4Header::from_slice(rest).unwrap();
            let (own_ip, own_rest) = Ipv4Header::from_slice(&own[14..]).unwrap();
            assert_eq!(Ipv4Addr::from(ip.destination), backend_addr(b), "{mode:?}");
            assert_eq!(ip.source, own_ip.source, "{mode:?}");
            assert_eq!(ip.source, LB_ADDR.octets(), "{mode:?}");
            assert_eq!(ip.protocol, own_ip.protocol, "{mode:?}");
            assert!(ip.dont_fragment, "{mode:?}");
            assert_eq!(
                usize::from(ip.total_len),
                f.len() - 14 + overhead,
                "{mode:?}"
            );
            assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "{mode:?}");
            if mode == ForwardingMode::Gue {
                let (udp, _) = etherparse::UdpHeader::from_slice(rest).unwrap();
                let (own_udp, _) = etherparse::UdpHeader::from_slice(own_rest).unwrap();
                assert_eq!(udp.source_port, own_udp.source_port, "the client's port");
                assert_eq!(udp.destination_port, GUE_PORT);
                assert_eq!(usize::from(udp.length), 8 + f.len() - 14);
            } else {
                assert_eq!(ip.protocol, IpNumber::IPV4);
            }
            let mut want = zero(&rig);
            want.vip.icmp_forwarded = 1;
            want.vip.packets = 1;
            want.vip.bytes = out.len() as u64;
            want.backends[b as usize].packets = 1;
            want.backends[b as usize].bytes = out.len() as u64;
            assert_counters(&delta, &want);
            entry_is(&rig, c, entry).unwrap();
        }
    }
}

/// Our encapsulated frame of client `c`'s segment, as a router between us
/// and the backend quotes it in an error (Linux: up to 576 bytes in all).
fn our_tunnel_frame(rig: &mut Rig, net: &FibNet, c: [u8; 4]) -> (Vec<u8>, Vec<u8>) {
    let seg = client_segment(c, 1000, true);
    let (action, out) = rig.run_in(net, &seg);
    assert_eq!(action, XDP_TX);
    (seg, out[14..14 + 548].to_vec())
}

/// What a router on the way to the backend sends us about `quote`.
fn from_backend_path(to: Ipv4Addr, mtu: u16, quote: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(GW_MAC, LB_MAC)
        .ipv4(GW.octets(), to.octets(), 64)
        .icmpv4(frag_needed(mtu));
    let mut v = Vec::new();
    b.write(&mut v, quote).unwrap();
    v
}

#[test]
fn frag_needed_about_our_tunnel_frame_is_relayed_to_the_client() {
    let net = FibNet::new().unwrap();
    for mode in MODES {
        let mut rig = tunnel_rig(mode);
        let c = client(50);
        route_client(&net, c);
        let (seg, quote) = our_tunnel_frame(&mut rig, &net, c);
        let entry = rig.dp.affinity(&rig.affinity_key(c)).unwrap();
        let f = from_backend_path(LB_ADDR, 1400, &quote);
        let (action, out, delta) = run_counted(&mut rig, &net, &f);
        assert_eq!(
            action, XDP_TX,
            "{mode:?}: toward the client, same interface"
        );
        let mtu = 1400 - mode.overhead() as u16;
        let fields = (LB_MAC, GW_MAC);
        check_frag_needed(&out, fields, VIP, c, mtu, &seg[14..42]);
        assert_eq!(
            out,
            frag_needed_frame(LB_MAC, GW_MAC, VIP, c, mtu, &seg[14..42]),
            "{mode:?}"
        );
        let mut want = zero(&rig);
        want.vip.icmp_relayed = 1;
        assert_counters(&delta, &want);
        entry_is(&rig, c, entry).unwrap();

        // Toward a client routed out of the other interface: redirected,
        // with that interface's MACs.
        let c2 = client(51);
        net.route(
            Ipv4Addr::from(c2),
            &["via", &OTHER_GW.to_string(), "dev", OTHER],
        )
        .unwrap();
        let (seg2, quote2) = our_tunnel_frame(&mut rig, &net, c2);
        let (action, out) = rig.run_in(&net, &from_backend_path(LB_ADDR, 1400, &quote2));
        assert_eq!(action, XDP_REDIRECT, "{mode:?}");
        assert_eq!(
            out,
            frag_needed_frame(OTHER_MAC, OTHER_GW_MAC, VIP, c2, mtu, &seg2[14..42]),
            "{mode:?}"
        );
    }
}

#[test]
fn frag_needed_from_an_ipip_prefix_source_is_relayed() {
    let net = FibNet::new().unwrap();
    let mut rig = tunnel_rig(ForwardingMode::Ipip);
    rig.set_tunnel(TunnelSettings {
        src_prefix: [172, 16, 9, 0],
        src_prefix_len: 24,
        ..fibnet::settings()
    });
    let c = client(52);
    route_client(&net, c);
    let (seg, quote) = our_tunnel_frame(&mut rig, &net, c);
    let src = Ipv4Addr::new(quote[12], quote[13], quote[14], quote[15]);
    assert_eq!(
        &src.octets()[..3],
        &[172, 16, 9],
        "outer source from the prefix"
    );
    let (action, out, delta) = run_counted(&mut rig, &net, &from_backend_path(src, 1400, &quote));
    assert_eq!(action, XDP_TX);
    assert_eq!(
        out,
        frag_needed_frame(LB_MAC, GW_MAC, VIP, c, 1380, &seg[14..42])
    );
    let mut want = zero(&rig);
    want.vip.icmp_relayed = 1;
    assert_counters(&delta, &want);
}

#[test]
fn frag_needed_that_is_not_about_our_tunnel_frame_is_passed() {
    let net = FibNet::new().unwrap();
    let mut rig = tunnel_rig(ForwardingMode::Gue);
    let c = client(53);
    route_client(&net, c);
    let (_, quote) = our_tunnel_frame(&mut rig, &net, c);
    let unmatched = |rig: &mut Rig, what: &str, f: Vec<u8>| {
        let (action, out, delta) = run_counted(rig, &net, &f);
        assert_eq!(action, XDP_PASS, "{what}");
        assert_eq!(out, f, "{what}");
        let mut want = zero(rig);
        want.global[gc::PASS_ICMP_UNMATCHED as usize] = 1;
        assert_counters(&delta, &want);
    };
    let edit = |at: usize, bytes: &[u8]| {
        let mut q = quote.clone();
        q[at..at + bytes.len()].copy_from_slice(bytes);
        q
    };
    unmatched(
        &mut rig,
        "sent to another address",
        from_backend_path(Ipv4Addr::new(10, 98, 0, 9), 1400, &quote),
    );
    let other_src = Ipv4Addr::new(10, 98, 0, 9);
    unmatched(
        &mut rig,
        "from another outer source",
        from_backend_path(other_src, 1400, &edit(12, &other_src.octets())),
    );
    unmatched(
        &mut rig,
        "to another UDP port",
        from_backend_path(LB_ADDR, 1400, &edit(22, &6080u16.to_be_bytes())),
    );
    unmatched(
        &mut rig,
        "quote cut inside the inner ports",
        from_backend_path(LB_ADDR, 1400, &quote[..20 + 8 + 20 + 2]),
    );
    unmatched(
        &mut rig,
        "an MTU that leaves less than 68 bytes",
        from_backend_path(LB_ADDR, 28 + 67, &quote),
    );
    unmatched(&mut rig, "time exceeded, not frag-needed", {
        let mut f = from_backend_path(LB_ADDR, 1400, &quote);
        let icmp = etherparse::Icmpv4Header::with_checksum(time_exceeded(), &quote);
        f[34..42].copy_from_slice(&icmp.to_bytes());
        f
    });
    // A GUE frame of ours about a VIP now in another mode.
    rig.set_forwarding(ForwardingMode::Ipip);
    unmatched(
        &mut rig,
        "the VIP is no longer GUE",
        from_backend_path(LB_ADDR, 1400, &quote),
    );

    // No route back to the client: dropped, counted.
    rig.set_forwarding(ForwardingMode::Gue);
    net.route(Ipv4Addr::from(c), &["unreachable"]).unwrap();
    let f = from_backend_path(LB_ADDR, 1400, &quote);
    let (action, _, delta) = run_counted(&mut rig, &net, &f);
    assert_eq!(action, XDP_DROP);
    let mut want = zero(&rig);
    want.vip.drop_no_route = 1;
    assert_counters(&delta, &want);
}

/// The route to the backends with a locked MTU of 1400 (an unlocked route
/// MTU is a hint the FIB helper ignores).
fn backends_behind_1400(net: &FibNet) {
    net.ip(&[
        "route",
        "replace",
        BACKEND_NET,
        "via",
        &GW.to_string(),
        "dev",
        INGRESS,
        "mtu",
        "lock",
        "1400",
    ])
    .unwrap();
}

#[test]
fn an_oversize_frame_to_a_tunnel_vip_is_answered_with_exact_bytes() {
    let net = FibNet::new().unwrap();
    backends_behind_1400(&net);
    for mode in MODES {
        let mut rig = tunnel_rig(mode);
        let c = client(60);
        let b = rig.predict(c).unwrap();
        let overhead = mode.overhead() as usize;
        let f = client_segment(c, 1401 - overhead, true);
        let (action, out, delta) = run_counted(&mut rig, &net, &f);
        assert_eq!(action, XDP_TX, "{mode:?}: back the way it came");
        let mtu = (1400 - overhead) as u16;
        // MACs swapped: to the router it came from, from us.
        check_frag_needed(&out, (LB_MAC, ROUTER_MAC), VIP, c, mtu, &f[14..42]);
        assert_eq!(
            out,
            frag_needed_frame(LB_MAC, ROUTER_MAC, VIP, c, mtu, &f[14..42]),
            "{mode:?}"
        );
        let mut want = zero(&rig);
        want.vip.too_big_icmp = 1;
        want.vip.new_clients = 1;
        want.backends[b as usize].new_clients = 1;
        assert_counters(&delta, &want);

        // DF clear: nothing can be answered; dropped, counted.
        let f = client_segment(c, 1401 - overhead, false);
        let (action, out, delta) = run_counted(&mut rig, &net, &f);
        assert_eq!(action, XDP_DROP, "{mode:?}");
        assert_eq!(out, f, "{mode:?}");
        let mut want = zero(&rig);
        want.vip.drop_too_big = 1;
        want.vip.affinity_hits = 1;
        assert_counters(&delta, &want);

        // IP options would not fit the quote: dropped, counted.
        let mut f = client_segment(c, 1401 - overhead - 4, true);
        f[14] = 0x46;
        f.splice(34..34, [1, 1, 1, 0]);
        let tot = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&tot.to_be_bytes());
        let (action, _, delta) = run_counted(&mut rig, &net, &f);
        assert_eq!(action, XDP_DROP, "{mode:?}: options");
        assert_counters(&delta, &want);
    }
}

#[test]
fn an_oversize_icmp_error_to_a_tunnel_vip_is_never_answered() {
    let net = FibNet::new().unwrap();
    backends_behind_1400(&net);
    let mut rig = tunnel_rig(ForwardingMode::Ipip);
    let c = client(61);
    // Longer than any router quotes, so that encapsulated it is too big.
    let mut f = icmp_error(
        VIP,
        frag_needed(1400),
        &backend_segment(VIP, VIP_PORT, c, &[0; 1400]),
    );
    // With DF, so that only its being ICMP keeps it from an answer.
    f[20] |= 0x40;
    let mut ip = Ipv4Header::from_slice(&f[14..]).unwrap().0;
    ip.header_checksum = ip.calc_header_checksum();
    f[14..34].copy_from_slice(&ip.to_bytes());
    let (action, out, delta) = run_counted(&mut rig, &net, &f);
    assert_eq!(
        action, XDP_DROP,
        "an ICMP error is not answered with another"
    );
    assert_eq!(out, f);
    let mut want = zero(&rig);
    want.vip.drop_too_big = 1;
    assert_counters(&delta, &want);
}
