//! BPF_PROG_TEST_RUN fixtures of the tunnel modes (IP-in-IP and GUE) against
//! the real compiled XDP object: the exact outer headers, the next hop from
//! the kernel's FIB, and every way forwarding can fail. Each test makes its
//! own network namespace (`stickylb_tests::fibnet`) for the FIB to look in.
//! Needs root; CI runs it as root.

use std::net::Ipv4Addr;

use etherparse::{
    EtherType, Ethernet2Header, IpDscp, IpEcn, IpNumber, Ipv4Header, PacketBuilder, UdpHeader,
};
use lb_common::{
    BackendStats, ForwardingMode, TunnelSettings, VipStats, client_hash, tunnel::TUNNEL_HASH_SEED,
};
use stickylb_tests::{
    Counters, LB_MAC, ROUTER_MAC, Rig, VIP, VIP_PORT, backend_addr, backend_mac, client,
    fibnet::{
        self, BACKEND_NET, FibNet, GUE_PORT, GW, GW_MAC, GW_UNRESOLVED, INGRESS, LB_ADDR, OTHER,
        OTHER_GW, OTHER_GW_MAC, OTHER_MAC, TUNNEL_TTL,
    },
};

// XDP actions (linux/bpf.h).
const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const DF: bool = true;
/// The inner TOS of the fixtures' frames: DSCP EF (46) and ECN ECT(1), so
/// that both halves are seen copied.
const TOS: u8 = (46 << 2) | 1;
/// The inner TTL: kept as it is (the load balancer is not a hop of the
/// client's packet), and not the outer one.
const INNER_TTL: u8 = 17;

/// A TCP data segment (ACK, so that it pins its client) from `c` to the VIP,
/// whose IPv4 packet is `ip_len` bytes long.
fn segment(c: [u8; 4], sport: u16, ip_len: usize, df: bool) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, INNER_TTL, IpNumber::TCP, c, VIP.octets()).unwrap();
    ip.dscp = IpDscp::try_new(TOS >> 2).unwrap();
    ip.ecn = IpEcn::try_new(TOS & 3).unwrap();
    ip.dont_fragment = df;
    ip.identification = 0x1234;
    let b = PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(sport, VIP_PORT, 1001, 64240)
        .ack(1)
        .psh();
    let payload = vec![0x5a; ip_len - 40];
    let mut v = Vec::new();
    b.write(&mut v, &payload).unwrap();
    assert_eq!(v.len(), 14 + ip_len);
    v
}

/// The frame the program must send for `frame` (a client's, as it arrived),
/// built independently with etherparse: a new Ethernet header from `smac`
/// to `dmac`, the outer IPv4 header of the design, GUE's UDP header if
/// `gue_sport` is given, then the client's IPv4 packet unchanged.
fn encapsulated(
    frame: &[u8],
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    gue_sport: Option<u16>,
) -> Vec<u8> {
    let inner = &frame[14..];
    let inner_tos = inner[1];
    let udp = gue_sport.map(|sport| UdpHeader {
        source_port: sport,
        destination_port: GUE_PORT,
        length: (8 + inner.len()) as u16,
        checksum: 0,
    });
    let payload_len = inner.len() + if udp.is_some() { 8 } else { 0 };
    let proto = if udp.is_some() {
        IpNumber::UDP
    } else {
        IpNumber::IPV4
    };
    let mut ip = Ipv4Header::new(
        payload_len as u16,
        TUNNEL_TTL,
        proto,
        src.octets(),
        dst.octets(),
    )
    .unwrap();
    ip.dscp = IpDscp::try_new(inner_tos >> 2).unwrap();
    ip.ecn = IpEcn::try_new(inner_tos & 3).unwrap();
    ip.identification = 0;
    ip.dont_fragment = true;
    ip.header_checksum = ip.calc_header_checksum();
    let mut v = Vec::new();
    Ethernet2Header {
        source: smac,
        destination: dmac,
        ether_type: EtherType::IPV4,
    }
    .write(&mut v)
    .unwrap();
    ip.write_raw(&mut v).unwrap();
    if let Some(u) = udp {
        u.write(&mut v).unwrap();
    }
    v.extend_from_slice(inner);
    v
}

/// RFC 1071: the one's-complement sum of a header with its checksum is
/// 0xffff when the checksum is right.
fn checksum_ok(header: &[u8]) -> bool {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// Checks every field of the outer headers of `out` (sent for the client
/// frame `frame`) one by one, so that a failure names the field.
fn check_fields(out: &[u8], frame: &[u8], src: Ipv4Addr, dst: Ipv4Addr, gue_sport: Option<u16>) {
    let (eth, rest) = Ethernet2Header::from_slice(out).unwrap();
    assert_eq!(eth.destination, GW_MAC, "destination MAC: the gateway's");
    assert_eq!(eth.source, LB_MAC, "source MAC: the egress interface's");
    assert_eq!(eth.ether_type, EtherType::IPV4);
    let (ip, rest) = Ipv4Header::from_slice(rest).unwrap();
    assert_eq!(out[14], 0x45, "version 4, IHL 5");
    assert_eq!(out[15], frame[15], "TOS copied from the inner header");
    assert_eq!(
        (ip.dscp.value(), ip.ecn.value()),
        (TOS >> 2, TOS & 3),
        "DSCP and ECN"
    );
    let overhead = if gue_sport.is_some() { 28 } else { 20 };
    assert_eq!(
        usize::from(ip.total_len),
        frame.len() - 14 + overhead,
        "total length"
    );
    assert_eq!(ip.identification, 0, "ID");
    assert!(ip.dont_fragment, "DF");
    assert!(!ip.more_fragments, "MF");
    assert_eq!(ip.fragment_offset.value(), 0, "fragment offset");
    assert_eq!(ip.time_to_live, TUNNEL_TTL, "outer TTL: the configured one");
    assert_eq!(Ipv4Addr::from(ip.source), src, "outer source");
    assert_eq!(Ipv4Addr::from(ip.destination), dst, "outer destination");
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "outer checksum (etherparse)"
    );
    assert!(checksum_ok(&out[14..34]), "outer checksum (RFC 1071 sum)");
    let inner = match gue_sport {
        Some(sport) => {
            assert_eq!(ip.protocol, IpNumber::UDP, "outer protocol");
            let (udp, inner) = UdpHeader::from_slice(rest).unwrap();
            assert_eq!(udp.source_port, sport, "UDP source port");
            assert_eq!(udp.destination_port, GUE_PORT, "UDP destination port");
            assert_eq!(usize::from(udp.length), 8 + frame.len() - 14, "UDP length");
            assert_eq!(udp.checksum, 0, "UDP checksum: none");
            inner
        }
        None => {
            assert_eq!(ip.protocol, IpNumber::IPV4, "outer protocol: IP-in-IP");
            rest
        }
    };
    assert_eq!(inner, &frame[14..], "the client's packet, unchanged");
    assert_eq!(inner[8], INNER_TTL, "inner TTL kept");
}

/// The GUE source port of client `c`, as documented: 49152 plus the low 14
/// bits of the client hash with the tunnel seed.
fn documented_sport(c: [u8; 4]) -> u16 {
    49152 + (client_hash(c, TUNNEL_HASH_SEED) & 0x3fff) as u16
}

fn zero(rig: &Rig) -> Counters {
    let mut c = rig.counters();
    c.vip = VipStats::default();
    c.backends
        .iter_mut()
        .for_each(|b| *b = BackendStats::default());
    c.global = Default::default();
    c
}

/// What the counters must have moved by for one frame of a new client
/// pinned to `backend`: forwarded as `sent` bytes if `sent` is given, else
/// not forwarded and counted by `set`.
fn new_client(rig: &Rig, backend: u32, sent: Option<usize>, set: fn(&mut VipStats)) -> Counters {
    let mut c = zero(rig);
    c.vip.new_clients = 1;
    c.backends[backend as usize].new_clients = 1;
    if let Some(len) = sent {
        c.vip.packets = 1;
        c.vip.bytes = len as u64;
        c.backends[backend as usize].packets = 1;
        c.backends[backend as usize].bytes = len as u64;
    }
    set(&mut c.vip);
    c
}

fn assert_counters(got: &Counters, want: &Counters) {
    let wrong = got.differences(want);
    assert!(wrong.is_empty(), "counters: {}", wrong.join("; "));
}

/// Runs `frame` on the rig in `net`: the action, the output, the counters'
/// change.
fn run(rig: &mut Rig, net: &FibNet, frame: &[u8]) -> (u32, Vec<u8>, Counters) {
    let before = rig.counters();
    let (action, out) = rig.run_in(net, frame);
    (action, out, rig.counters().since(&before))
}

fn pinned_to(rig: &Rig, c: [u8; 4]) -> Option<u32> {
    rig.dp
        .affinity(&rig.affinity_key(c))
        .unwrap()
        .map(|v| v.backend_id)
}

#[test]
fn ipip_outer_header_is_exact_and_the_inner_packet_unchanged() {
    let net = FibNet::new().unwrap();
    let mut rig = Rig::tunnel(3, ForwardingMode::Ipip);
    let c = client(1);
    let want = rig.predict(c).unwrap();
    let f = segment(c, 40000, 120, DF);
    let (action, out, delta) = run(&mut rig, &net, &f);
    assert_eq!(
        action, XDP_TX,
        "the next hop is out of the ingress interface"
    );
    let dst = backend_addr(want);
    check_fields(&out, &f, LB_ADDR, dst, None);
    assert_eq!(out, encapsulated(&f, LB_MAC, GW_MAC, LB_ADDR, dst, None));
    assert_counters(&delta, &new_client(&rig, want, Some(out.len()), |_| {}));
    assert_eq!(pinned_to(&rig, c), Some(want));

    // The next segment follows the pin, encapsulated the same way.
    let f2 = segment(c, 40001, 60, DF);
    let (action, out2, delta) = run(&mut rig, &net, &f2);
    assert_eq!(action, XDP_TX);
    assert_eq!(out2, encapsulated(&f2, LB_MAC, GW_MAC, LB_ADDR, dst, None));
    let mut hit = zero(&rig);
    hit.vip.affinity_hits = 1;
    hit.vip.packets = 1;
    hit.vip.bytes = out2.len() as u64;
    hit.backends[want as usize].packets = 1;
    hit.backends[want as usize].bytes = out2.len() as u64;
    assert_counters(&delta, &hit);
}

#[test]
fn gue_outer_header_is_exact_with_the_source_port_from_the_client_hash() {
    let net = FibNet::new().unwrap();
    let mut rig = Rig::tunnel(3, ForwardingMode::Gue);
    let c = client(2);
    let want = rig.predict(c).unwrap();
    let f = segment(c, 40000, 200, DF);
    let (action, out, delta) = run(&mut rig, &net, &f);
    assert_eq!(action, XDP_TX);
    let dst = backend_addr(want);
    let sport = documented_sport(c);
    check_fields(&out, &f, LB_ADDR, dst, Some(sport));
    assert_eq!(
        out,
        encapsulated(&f, LB_MAC, GW_MAC, LB_ADDR, dst, Some(sport))
    );
    assert_counters(&delta, &new_client(&rig, want, Some(out.len()), |_| {}));

    // Stable per client: another connection of it has the same outer flow.
    let (_, out2) = rig.run_in(&net, &segment(c, 50123, 60, DF));
    assert_eq!(
        &out2[34..36],
        &sport.to_be_bytes(),
        "same client, same port"
    );

    // Spread over clients, always in the dynamic range.
    let mut ports = std::collections::BTreeSet::new();
    for i in 100..164 {
        let c = client(i);
        let (action, out) = rig.run_in(&net, &segment(c, 40000, 60, DF));
        assert_eq!(action, XDP_TX);
        let p = u16::from_be_bytes([out[34], out[35]]);
        assert_eq!(p, documented_sport(c), "client {c:?}");
        assert!(p >= 49152, "{p}");
        ports.insert(p);
    }
    println!("64 clients, {} distinct GUE source ports", ports.len());
    assert!(ports.len() >= 56, "{} distinct ports", ports.len());
}

#[test]
fn ipip_source_comes_from_the_prefix_per_client_and_gue_ignores_it() {
    let net = FibNet::new().unwrap();
    let settings = TunnelSettings {
        src_prefix: [172, 16, 9, 0],
        src_prefix_len: 24,
        ..fibnet::settings()
    };
    let mut rig = Rig::tunnel(3, ForwardingMode::Ipip);
    rig.set_tunnel(settings);
    let mut sources = std::collections::BTreeSet::new();
    for i in 0..32 {
        let c = client(i);
        let want = rig.predict(c).unwrap();
        let f = segment(c, 40000, 80, DF);
        let (action, out) = rig.run_in(&net, &f);
        assert_eq!(action, XDP_TX);
        let src = Ipv4Addr::new(172, 16, 9, client_hash(c, TUNNEL_HASH_SEED) as u8);
        check_fields(&out, &f, src, backend_addr(want), None);
        assert_eq!(
            out,
            encapsulated(&f, LB_MAC, GW_MAC, src, backend_addr(want), None)
        );
        sources.insert(src);
    }
    println!("32 clients, {} distinct outer sources", sources.len());
    assert!(sources.len() >= 24, "{} distinct sources", sources.len());

    let mut gue = Rig::tunnel(3, ForwardingMode::Gue);
    gue.set_tunnel(settings);
    let c = client(5);
    let f = segment(c, 40000, 80, DF);
    let (action, out) = gue.run_in(&net, &f);
    assert_eq!(action, XDP_TX);
    let dst = backend_addr(gue.predict(c).unwrap());
    check_fields(&out, &f, LB_ADDR, dst, Some(documented_sport(c)));
}

#[test]
fn same_client_same_backend_in_every_mode() {
    let net = FibNet::new().unwrap();
    let mut rigs: Vec<Rig> = [
        ForwardingMode::Dsr,
        ForwardingMode::Ipip,
        ForwardingMode::Gue,
    ]
    .into_iter()
    .map(|m| Rig::tunnel(5, m))
    .collect();
    let mut per_backend = [0u32; 5];
    for i in 0..200 {
        let c = client(i);
        let want = rigs[0].predict(c).unwrap();
        let f = segment(c, 40000 + i as u16, 60, DF);
        let got: Vec<u32> = rigs
            .iter_mut()
            .map(|rig| {
                let (action, out) = rig.run_in(&net, &f);
                assert_eq!(action, XDP_TX, "{:?} client {c:?}", rig.forwarding());
                let backend = (0..5)
                    .find(|&b| match rig.forwarding() {
                        Some(ForwardingMode::Dsr) => out[..6] == backend_mac(b),
                        _ => out[30..34] == backend_addr(b).octets(),
                    })
                    .expect("sent to one of the backends");
                assert_eq!(pinned_to(rig, c), Some(backend));
                backend
            })
            .collect();
        assert_eq!(got, [want; 3], "client {c:?}: dsr, ipip, gue");
        per_backend[want as usize] += 1;
    }
    println!("200 clients over 5 backends, the same in every mode: {per_backend:?}");
}

#[test]
fn unresolved_neighbour_drops_but_keeps_the_pin() {
    let net = FibNet::new().unwrap();
    for mode in [ForwardingMode::Ipip, ForwardingMode::Gue] {
        net.ip(&[
            "route",
            "replace",
            BACKEND_NET,
            "via",
            &GW_UNRESOLVED.to_string(),
        ])
        .unwrap();
        let mut rig = Rig::tunnel(3, mode);
        let c = client(7);
        let want = rig.predict(c).unwrap();
        let f = segment(c, 40000, 100, DF);
        let (action, out, delta) = run(&mut rig, &net, &f);
        assert_eq!(action, XDP_DROP, "{mode:?}");
        assert_eq!(out, f, "{mode:?}: a dropped frame is left as it came");
        assert_counters(
            &delta,
            &new_client(&rig, want, None, |v| v.drop_no_neigh = 1),
        );
        assert_eq!(
            pinned_to(&rig, c),
            Some(want),
            "{mode:?}: pinned all the same"
        );

        // Once the neighbour is resolved, the client's next segment follows
        // its pin.
        net.ip(&[
            "neigh",
            "replace",
            &GW_UNRESOLVED.to_string(),
            "lladdr",
            "02:9a:00:00:00:fd",
            "dev",
            INGRESS,
            "nud",
            "permanent",
        ])
        .unwrap();
        let (action, out, delta) = run(&mut rig, &net, &f);
        assert_eq!(action, XDP_TX, "{mode:?}");
        assert_eq!(out[..6], [0x02, 0x9a, 0, 0, 0, 0xfd]);
        assert_eq!(delta.vip.affinity_hits, 1, "{mode:?}");
        net.ip(&["neigh", "del", &GW_UNRESOLVED.to_string(), "dev", INGRESS])
            .unwrap();
    }
}

#[test]
fn no_usable_route_drops_as_no_route() {
    let net = FibNet::new().unwrap();
    let c = client(9);
    let f = segment(c, 40000, 100, DF);
    let gw = GW.to_string();
    // (what is done to the namespace, what undoes it)
    let breakages: [(&str, &[&str], &[&str]); 5] = [
        (
            "unreachable route",
            &["route", "replace", "unreachable", BACKEND_NET],
            &["route", "replace", BACKEND_NET, "via", &gw],
        ),
        (
            "blackhole route",
            &["route", "replace", "blackhole", BACKEND_NET],
            &["route", "replace", BACKEND_NET, "via", &gw],
        ),
        (
            "prohibit route",
            &["route", "replace", "prohibit", BACKEND_NET],
            &["route", "replace", BACKEND_NET, "via", &gw],
        ),
        (
            "no route at all",
            &["route", "del", BACKEND_NET],
            &["route", "replace", BACKEND_NET, "via", &gw],
        ),
        (
            "backend address local",
            &["addr", "add", "192.0.2.0/24", "dev", "lo"],
            &["addr", "del", "192.0.2.0/24", "dev", "lo"],
        ),
    ];
    for mode in [ForwardingMode::Ipip, ForwardingMode::Gue] {
        for (what, break_it, undo) in breakages {
            net.ip(break_it).unwrap();
            let mut rig = Rig::tunnel(3, mode);
            let want = rig.predict(c).unwrap();
            let (action, out, delta) = run(&mut rig, &net, &f);
            net.ip(undo).unwrap();
            assert_eq!(action, XDP_DROP, "{mode:?}, {what}");
            assert_eq!(out, f, "{mode:?}, {what}");
            let wrong = delta.differences(&new_client(&rig, want, None, |v| v.drop_no_route = 1));
            assert!(wrong.is_empty(), "{mode:?}, {what}: {}", wrong.join("; "));
            // Repaired, the same frame goes through.
            let (action, _) = rig.run_in(&net, &f);
            assert_eq!(action, XDP_TX, "{mode:?}, {what} undone");
        }
    }

    // Forwarding off on the ingress interface: the FIB helper refuses.
    net.ns
        .sysctl(&format!("net.ipv4.conf.{INGRESS}.forwarding"), "0")
        .unwrap();
    let mut rig = Rig::tunnel(3, ForwardingMode::Ipip);
    let (action, _, delta) = run(&mut rig, &net, &f);
    assert_eq!(action, XDP_DROP, "forwarding off");
    assert_eq!(delta.vip.drop_no_route, 1, "forwarding off");
    assert_eq!(delta.vip.packets, 0, "forwarding off");
    net.ns
        .sysctl(&format!("net.ipv4.conf.{INGRESS}.forwarding"), "1")
        .unwrap();
    assert_eq!(rig.run_in(&net, &f).0, XDP_TX, "forwarding on again");
}

#[test]
fn no_tunnel_settings_drops_as_no_route() {
    let net = FibNet::new().unwrap();
    let c = client(11);
    let f = segment(c, 40000, 100, DF);
    let no_port = TunnelSettings {
        gue_port: [0; 2],
        ..fibnet::settings()
    };
    let cases: [(ForwardingMode, Option<TunnelSettings>, &str); 4] = [
        (ForwardingMode::Ipip, None, "nothing written"),
        (ForwardingMode::Gue, None, "nothing written"),
        (
            ForwardingMode::Gue,
            Some(TunnelSettings {
                src_addr: [0; 4],
                ..fibnet::settings()
            }),
            "no source address",
        ),
        (ForwardingMode::Gue, Some(no_port), "no GUE port"),
    ];
    for (mode, settings, what) in cases {
        let mut rig = Rig::new(3);
        rig.set_forwarding(mode);
        if let Some(s) = settings {
            rig.set_tunnel(s);
        }
        let want = rig.predict(c).unwrap();
        let (action, out, delta) = run(&mut rig, &net, &f);
        assert_eq!(action, XDP_DROP, "{mode:?}, {what}");
        assert_eq!(out, f, "{mode:?}, {what}");
        let wrong = delta.differences(&new_client(&rig, want, None, |v| v.drop_no_route = 1));
        assert!(wrong.is_empty(), "{mode:?}, {what}: {}", wrong.join("; "));
    }
    // IP-in-IP has no use for the GUE port.
    let mut rig = Rig::tunnel(3, ForwardingMode::Ipip);
    rig.set_tunnel(no_port);
    assert_eq!(rig.run_in(&net, &f).0, XDP_TX);
}

#[test]
fn route_out_of_another_interface_redirects_with_its_macs() {
    let net = FibNet::new().unwrap();
    net.ip(&[
        "route",
        "replace",
        BACKEND_NET,
        "via",
        &OTHER_GW.to_string(),
        "dev",
        OTHER,
    ])
    .unwrap();
    for mode in [ForwardingMode::Ipip, ForwardingMode::Gue] {
        let mut rig = Rig::tunnel(3, mode);
        let c = client(13);
        let want = rig.predict(c).unwrap();
        let f = segment(c, 40000, 100, DF);
        let (action, out, delta) = run(&mut rig, &net, &f);
        assert_eq!(action, XDP_REDIRECT, "{mode:?}");
        let sport = matches!(mode, ForwardingMode::Gue).then(|| documented_sport(c));
        assert_eq!(
            out,
            encapsulated(
                &f,
                OTHER_MAC,
                OTHER_GW_MAC,
                LB_ADDR,
                backend_addr(want),
                sport
            ),
            "{mode:?}"
        );
        assert_counters(&delta, &new_client(&rig, want, Some(out.len()), |_| {}));
        assert_ne!(net.other, net.ingress);
    }
}

/// The route to the backends with a locked MTU of 1400, so that the FIB
/// reports it (an unlocked route MTU is only a hint the FIB helper ignores).
fn small_mtu(net: &FibNet) {
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
fn a_frame_that_fits_only_before_encapsulation_with_df_is_answered_or_dropped() {
    let net = FibNet::new().unwrap();
    small_mtu(&net);
    for (mode, overhead) in [(ForwardingMode::Ipip, 20), (ForwardingMode::Gue, 28)] {
        let mut rig = Rig::tunnel(3, mode);
        let c = client(15);
        let want = rig.predict(c).unwrap();

        // Exactly the MTU once encapsulated: sent.
        let fits = segment(c, 40000, 1400 - overhead, DF);
        let (action, out, _) = run(&mut rig, &net, &fits);
        assert_eq!(action, XDP_TX, "{mode:?}: {} bytes fit", 1400 - overhead);
        assert_eq!(out.len(), 14 + 1400);

        // One byte more: too big. The client's segment had DF, so the
        // program asks icmp::frag_needed_reply for an answer advertising
        // 1400 - overhead.
        let big = segment(c, 40000, 1401 - overhead, DF);
        let (action, out, delta) = run(&mut rig, &net, &big);
        let mut want_counters = zero(&rig);
        want_counters.vip.affinity_hits = 1;
        if action == XDP_DROP {
            // No answer could be built: dropped, counted.
            assert_eq!(out, big, "{mode:?}");
            want_counters.vip.drop_too_big = 1;
        } else {
            // Answered: an ICMP fragmentation needed to the client, sent back
            // the way it came, with the MTU that fits once encapsulated.
            assert_eq!(action, XDP_TX, "{mode:?}: the answer goes back");
            let (ip, icmp) = Ipv4Header::from_slice(&out[14..]).unwrap();
            assert_eq!(ip.protocol, IpNumber::ICMP, "{mode:?}");
            assert_eq!(ip.destination, c, "{mode:?}");
            assert_eq!((icmp[0], icmp[1]), (3, 4), "{mode:?}: frag needed");
            assert_eq!(
                u16::from_be_bytes([icmp[6], icmp[7]]),
                1400 - overhead as u16,
                "{mode:?}: next-hop MTU"
            );
            want_counters.vip.too_big_icmp = 1;
        }
        assert_counters(&delta, &want_counters);
        assert_eq!(pinned_to(&rig, c), Some(want));
    }
}

#[test]
fn a_frame_too_big_once_encapsulated_without_df_is_dropped() {
    let net = FibNet::new().unwrap();
    small_mtu(&net);
    for (mode, overhead) in [(ForwardingMode::Ipip, 20), (ForwardingMode::Gue, 28)] {
        let mut rig = Rig::tunnel(3, mode);
        let c = client(17);
        let want = rig.predict(c).unwrap();
        let big = segment(c, 40000, 1401 - overhead, !DF);
        let (action, out, delta) = run(&mut rig, &net, &big);
        assert_eq!(action, XDP_DROP, "{mode:?}");
        assert_eq!(out, big, "{mode:?}");
        assert_counters(
            &delta,
            &new_client(&rig, want, None, |v| v.drop_too_big = 1),
        );
        // Without DF it is sent once it fits.
        let fits = segment(c, 40000, 1400 - overhead, !DF);
        assert_eq!(rig.run_in(&net, &fits).0, XDP_TX, "{mode:?}");
    }
}
