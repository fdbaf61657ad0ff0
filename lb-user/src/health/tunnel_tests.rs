//! The probe's packets, checked against etherparse (an independent builder
//! and checksum), its answer matching, its socket filter (run by a small
//! classic BPF interpreter) and its port leases.

use super::*;

use etherparse::{IpNumber, Ipv4Header, TcpHeader, UdpHeader};

const SRC: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 10);
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10), 80);
const OURS: SocketAddrV4 = SocketAddrV4::new(SRC, 40001);

/// What the data path's outer and inner IPv4 headers hold: DF, ID 0.
fn ether_ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: IpNumber, ttl: u8, len: u16) -> Ipv4Header {
    let mut h = Ipv4Header::new(len, ttl, proto, src.octets(), dst.octets()).unwrap();
    h.dont_fragment = true;
    h.identification = 0;
    h.header_checksum = h.calc_header_checksum();
    h
}

fn ether_tcp(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let ip = ether_ipv4(*src.ip(), *dst.ip(), IpNumber::TCP, 64, 20);
    let window = if flags & tcp_flags::RST != 0 {
        0
    } else {
        64240
    };
    let mut tcp = TcpHeader::new(src.port(), dst.port(), seq, window);
    tcp.syn = flags & tcp_flags::SYN != 0;
    tcp.rst = flags & tcp_flags::RST != 0;
    tcp.ack = flags & tcp_flags::ACK != 0;
    tcp.acknowledgment_number = ack;
    tcp.checksum = tcp.calc_checksum_ipv4(&ip, &[]).unwrap();
    let mut out = ip.to_bytes().to_vec();
    out.extend_from_slice(&tcp.to_bytes());
    out
}

#[test]
fn the_syn_is_exactly_what_etherparse_builds() {
    let syn = ipv4_tcp(OURS, VIP, 0x1234_5678, 0, tcp_flags::SYN);
    assert_eq!(syn, ether_tcp(OURS, VIP, 0x1234_5678, 0, tcp_flags::SYN));
    // And read back, field by field, with checksums recomputed.
    let (ip, rest) = Ipv4Header::from_slice(&syn).unwrap();
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    assert!(ip.dont_fragment);
    assert_eq!((ip.time_to_live, ip.protocol), (64, IpNumber::TCP));
    assert_eq!(usize::from(ip.total_len), syn.len());
    let (tcp, payload) = TcpHeader::from_slice(rest).unwrap();
    assert!(payload.is_empty());
    assert!(tcp.syn && !tcp.ack && !tcp.rst && !tcp.fin);
    assert_eq!((tcp.source_port, tcp.destination_port), (40001, 80));
    assert_eq!(tcp.sequence_number, 0x1234_5678);
    assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(&ip, &[]).unwrap());
}

#[test]
fn the_reset_acknowledges_nothing_and_carries_the_next_sequence_number() {
    let rst = ipv4_tcp(OURS, VIP, 0xffff_ffff, 0, tcp_flags::RST);
    assert_eq!(rst, ether_tcp(OURS, VIP, 0xffff_ffff, 0, tcp_flags::RST));
    let (ip, rest) = Ipv4Header::from_slice(&rst).unwrap();
    let (tcp, _) = TcpHeader::from_slice(rest).unwrap();
    assert!(tcp.rst && !tcp.syn && !tcp.ack);
    assert_eq!(tcp.window_size, 0);
    assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(&ip, &[]).unwrap());
}

#[test]
fn ipip_wraps_the_inner_packet_in_the_data_paths_outer_header() {
    let mut inner = ipv4_tcp(OURS, VIP, 7, 0, tcp_flags::SYN);
    // A TOS the outer header must copy (DSCP AF41, ECT(0)); the inner
    // checksum no longer matters here.
    inner[1] = 0x8a;
    let packet = ipip(SRC, BACKEND, 17, &inner);
    let mut want = Ipv4Header::new(
        inner.len() as u16,
        17,
        IpNumber::IPV4,
        SRC.octets(),
        BACKEND.octets(),
    )
    .unwrap();
    want.dont_fragment = true;
    want.dscp = etherparse::IpDscp::try_new(0x8a >> 2).unwrap();
    want.ecn = etherparse::IpEcn::try_new(0x8a & 3).unwrap();
    want.header_checksum = want.calc_header_checksum();
    let (outer, rest) = Ipv4Header::from_slice(&packet).unwrap();
    assert_eq!(outer, want);
    assert_eq!(&packet[..20], &want.to_bytes()[..]);
    assert_eq!(outer.identification, 0);
    assert_eq!(rest, &inner[..]);
}

#[test]
fn the_udp_datagram_has_its_checksum() {
    let ours = SocketAddrV4::new(SRC, 51000);
    let vip = SocketAddrV4::new(*VIP.ip(), 53);
    for payload in [&b""[..], b"ping", b"odd"] {
        let p = ipv4_udp(ours, vip, payload).unwrap();
        let ip = ether_ipv4(SRC, *vip.ip(), IpNumber::UDP, 64, 8 + payload.len() as u16);
        let udp = UdpHeader::with_ipv4_checksum(51000, 53, &ip, payload).unwrap();
        let mut want = ip.to_bytes().to_vec();
        want.extend_from_slice(&udp.to_bytes());
        want.extend_from_slice(payload);
        assert_eq!(p, want, "{payload:?}");
        let (_, rest) = Ipv4Header::from_slice(&p).unwrap();
        let (got, _) = UdpHeader::from_slice(rest).unwrap();
        assert_ne!(got.checksum, 0, "0 would mean no checksum");
    }
    // What still fits in the outer packet of either mode (GUE: outer IPv4,
    // UDP, inner IPv4, UDP).
    assert!(ipv4_udp(ours, vip, &vec![0; 65_535 - 56]).is_some());
    assert!(ipv4_udp(ours, vip, &vec![0; 65_535 - 55]).is_none());
}

// ---- Answers ----

const EXPECT: Expect = Expect {
    from: VIP,
    to: OURS,
    ack: 1001,
};

fn answer(from: SocketAddrV4, to: SocketAddrV4, ack: u32, flags: u8) -> Vec<u8> {
    ipv4_tcp(from, to, 555, ack, flags)
}

#[test]
fn a_syn_ack_or_reset_acknowledging_our_syn_is_the_answer() {
    use tcp_flags::{ACK, FIN, RST, SYN};
    assert_eq!(
        match_answer(&answer(VIP, OURS, 1001, SYN | ACK), &EXPECT),
        Some(Answer::SynAck)
    );
    assert_eq!(
        match_answer(&answer(VIP, OURS, 1001, RST | ACK), &EXPECT),
        Some(Answer::Reset)
    );
    // Another probe's answer, or a stale one: its ack number differs.
    assert_eq!(
        match_answer(&answer(VIP, OURS, 1000, SYN | ACK), &EXPECT),
        None
    );
    assert_eq!(
        match_answer(&answer(VIP, OURS, 1002, RST | ACK), &EXPECT),
        None
    );
    // An RST that acknowledges nothing is no answer to a SYN.
    assert_eq!(match_answer(&answer(VIP, OURS, 1001, RST), &EXPECT), None);
    // Neither is a bare ACK, a SYN, or a SYN-FIN.
    for flags in [ACK, SYN, SYN | ACK | FIN] {
        assert_eq!(
            match_answer(&answer(VIP, OURS, 1001, flags), &EXPECT),
            None,
            "{flags:#x}"
        );
    }
}

#[test]
fn answers_of_other_flows_are_not_ours() {
    use tcp_flags::{ACK, SYN};
    let other_port = SocketAddrV4::new(*OURS.ip(), OURS.port() + 1);
    let other_vip_port = SocketAddrV4::new(*VIP.ip(), 443);
    let other_vip = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 11), 80);
    let other_dst = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), OURS.port());
    for (from, to) in [
        (VIP, other_port),
        (other_vip_port, OURS),
        (other_vip, OURS),
        (VIP, other_dst),
    ] {
        assert_eq!(
            match_answer(&answer(from, to, 1001, SYN | ACK), &EXPECT),
            None,
            "{from} → {to}"
        );
    }
}

#[test]
fn fragments_truncated_and_other_protocols_are_ignored_and_options_are_skipped() {
    use tcp_flags::{ACK, SYN};
    let good = answer(VIP, OURS, 1001, SYN | ACK);
    let mut frag = good.clone();
    frag[6] |= 0x20; // more fragments
    assert_eq!(match_answer(&frag, &EXPECT), None);
    let mut later = good.clone();
    later[7] = 1; // offset 8
    assert_eq!(match_answer(&later, &EXPECT), None);
    let mut udp = good.clone();
    udp[9] = 17;
    assert_eq!(match_answer(&udp, &EXPECT), None);
    for n in 0..good.len() {
        assert_eq!(match_answer(&good[..n], &EXPECT), None, "{n} bytes");
    }
    let mut v6 = good.clone();
    v6[0] = 0x65;
    assert_eq!(match_answer(&v6, &EXPECT), None);
    // IHL 6: a 4-byte option before the TCP header.
    let mut opts = good[..20].to_vec();
    opts[0] = 0x46;
    opts.extend_from_slice(&[1, 1, 1, 0]);
    opts.extend_from_slice(&good[20..]);
    assert_eq!(match_answer(&opts, &EXPECT), Some(Answer::SynAck));
}

// ---- The socket filter ----

/// Runs a classic BPF program of the instructions `answer_filter` uses;
/// returns what it keeps of `p` (0: dropped). An out-of-bounds load drops,
/// as in the kernel.
fn run_filter(prog: &[libc::sock_filter], p: &[u8]) -> u32 {
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    let byte = |at: usize| p.get(at).copied().map(u32::from);
    let half = |at: usize| Some(byte(at)? << 8 | byte(at + 1)?);
    let word = |at: usize| Some(half(at)? << 16 | half(at + 2)?);
    loop {
        let i = prog[pc];
        pc += 1;
        let k = i.k as usize;
        match i.code {
            BPF_LD_W_ABS | BPF_LD_H_ABS | BPF_LD_B_ABS => {
                let v = match i.code {
                    BPF_LD_W_ABS => word(k),
                    BPF_LD_H_ABS => half(k),
                    _ => byte(k),
                };
                match v {
                    Some(v) => a = v,
                    None => return 0,
                }
            }
            BPF_LD_H_IND => match half(x as usize + k) {
                Some(v) => a = v,
                None => return 0,
            },
            BPF_LDX_B_MSH => match byte(k) {
                Some(v) => x = 4 * (v & 0xf),
                None => return 0,
            },
            BPF_JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            BPF_JSET_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
            BPF_RET_K => return i.k,
            code => panic!("instruction {code:#x} not interpreted"),
        }
    }
}

#[test]
fn the_filter_keeps_exactly_tcp_from_the_vip_port_to_our_port() {
    use tcp_flags::{ACK, SYN};
    let prog = answer_filter(VIP, OURS);
    // Every jump lands inside the program.
    for (pc, i) in prog.iter().enumerate() {
        if i.code == BPF_JEQ_K || i.code == BPF_JSET_K {
            assert!(pc + 1 + usize::from(i.jt.max(i.jf)) < prog.len(), "at {pc}");
        }
    }
    let good = answer(VIP, OURS, 1, SYN | ACK);
    assert_eq!(run_filter(&prog, &good), 0xffff);
    // Whatever the flags or ack: user space decides on those.
    assert_eq!(run_filter(&prog, &answer(VIP, OURS, 9, ACK)), 0xffff);
    let mut opts = good[..20].to_vec();
    opts[0] = 0x46;
    opts.extend_from_slice(&[1, 1, 1, 0]);
    opts.extend_from_slice(&good[20..]);
    assert_eq!(run_filter(&prog, &opts), 0xffff, "IP options skipped");

    let other_port = SocketAddrV4::new(*OURS.ip(), OURS.port() + 1);
    let other_vip_port = SocketAddrV4::new(*VIP.ip(), 81);
    let other_vip = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 11), 80);
    let other_dst = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 2), OURS.port());
    for (from, to) in [
        (VIP, other_port),
        (other_vip_port, OURS),
        (other_vip, OURS),
        (VIP, other_dst),
        (OURS, VIP),
    ] {
        assert_eq!(
            run_filter(&prog, &answer(from, to, 1, SYN | ACK)),
            0,
            "{from} → {to}"
        );
    }
    let mut frag = good.clone();
    frag[7] = 3;
    assert_eq!(run_filter(&prog, &frag), 0, "a later fragment");
    let mut udp = good.clone();
    udp[9] = 17;
    assert_eq!(run_filter(&prog, &udp), 0, "not TCP");
    assert_eq!(run_filter(&prog, &good[..21]), 0, "truncated");
}

// ---- Ports ----

#[test]
fn concurrent_probes_never_share_a_port_and_release_it() {
    let leases: Vec<PortLease> = (0..500).map(|_| PortLease::take().unwrap()).collect();
    let ports: BTreeSet<u16> = leases.iter().map(|l| l.port).collect();
    assert_eq!(ports.len(), leases.len());
    assert!(ports.iter().all(|p| PROBE_PORTS.contains(p)));
    {
        let in_use = PORTS_IN_USE.lock().unwrap();
        assert!(ports.iter().all(|p| in_use.contains(p)));
    }
    drop(leases);
    let in_use = PORTS_IN_USE.lock().unwrap();
    assert!(ports.iter().all(|p| !in_use.contains(p)));
}

// ---- Failures this host can tell without root ----

#[tokio::test]
async fn a_source_that_is_not_ours_or_a_missing_privilege_is_a_local_error() {
    let probe = TunnelProbe {
        encap: Encap::Gue { port: 6080 },
        // TEST-NET-3: never an address of the host running the tests.
        source: Ipv4Addr::new(203, 0, 113, 77),
        backend: Ipv4Addr::LOCALHOST,
        vip: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9),
        ttl: 64,
        check: TunnelCheck::Tcp,
    };
    let o = probe.probe(Duration::from_millis(200)).await;
    assert!(!o.ok && o.local, "{o:?}");
    // Unprivileged, the raw socket is refused first; as root, the bind.
    assert!(
        o.detail.contains("CAP_NET_RAW") || o.detail.contains("is not an address of this host"),
        "{o:?}"
    );
    assert!(o.latency < Duration::from_millis(200), "{o:?}");
}
