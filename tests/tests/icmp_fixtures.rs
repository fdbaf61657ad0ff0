//! BPF_PROG_TEST_RUN fixtures of the XDP program's ICMP paths (icmp.rs)
//! against the real compiled object: errors about a client's flow go to
//! that client's backend, everything else is passed as before. Needs root.

use std::net::Ipv4Addr;

use etherparse::{
    Icmpv4Type, IpNumber, Ipv4Header, PacketBuilder, TcpHeader,
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
};
use lb_common::{AffinityValue, BackendStats, VipStats, global_counter as gc};
use stickylb_tests::{
    Counters, LB_MAC, ROUTER_MAC, Rig, VIP, VIP_PORT, backend_mac, client, frame, monotonic_ns,
};

// XDP actions (linux/bpf.h).
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

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
