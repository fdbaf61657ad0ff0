//! The health probe through the tunnel, for real: a load balancer namespace
//! and a backend namespace in another subnet, routed through a router
//! namespace. The backend side is played by a raw-socket responder that
//! receives the IP-in-IP or GUE packet, checks it and answers from the VIP
//! (SYN-ACK, RST, silence, or a UDP reply), as a backend behind a working
//! decap would; with no responder the backend's kernel itself answers with
//! ICMP. Needs root.
//!
//! ```text
//!   <id>-lb eth0 10.81.1.1/24 ── e-lb 10.81.1.254  <id>-rt  10.81.2.254 e-be ── eth0 10.81.2.10/24 <id>-be
//!   (probes from 10.81.1.1)                    (forwarding)                    (responder)
//! ```

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use etherparse::{IpNumber, Ipv4Header, PacketBuilder, TcpHeader, UdpHeader};
use lb_user::health::{Encap, Outcome, TunnelCheck, TunnelProbe};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use stickylb_tests::netns::{Netns, Reaper, enter_path};

const LB: Ipv4Addr = Ipv4Addr::new(10, 81, 1, 1);
const BE: Ipv4Addr = Ipv4Addr::new(10, 81, 2, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);
const GUE_PORT: u16 = 6080;
/// The outer TTL the probes send; the router takes one off.
const TTL: u8 = 17;
const TIMEOUT: Duration = Duration::from_millis(600);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The three namespaces, deleted on drop (and by the reaper if the test
/// process dies).
struct Net {
    lb: Netns,
    be: Netns,
    _rt: Netns,
    _reaper: Reaper,
}

fn net() -> Net {
    stickylb_tests::require_root();
    let id = format!(
        "slbth{}x{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let reaper = Reaper::spawn(&id, &[]).unwrap();
    let rt = Netns::new(&format!("{id}-rt")).unwrap();
    let lb = Netns::new(&format!("{id}-lb")).unwrap();
    let be = Netns::new(&format!("{id}-be")).unwrap();
    for (port, host, host_addr, rt_addr) in [
        ("e-lb", &lb, "10.81.1.1/24", "10.81.1.254/24"),
        ("e-be", &be, "10.81.2.10/24", "10.81.2.254/24"),
    ] {
        rt.add_veth(port, host, "eth0").unwrap();
        rt.ip(&["addr", "add", rt_addr, "dev", port]).unwrap();
        rt.ip(&["link", "set", port, "up"]).unwrap();
        host.ip(&["addr", "add", host_addr, "dev", "eth0"]).unwrap();
        host.ip(&["link", "set", "eth0", "up"]).unwrap();
        let gw = rt_addr.split('/').next().unwrap();
        host.ip(&["route", "add", "default", "via", gw]).unwrap();
    }
    rt.sysctl("net.ipv4.ip_forward", "1").unwrap();
    // The answers come from the VIP, which no interface of the router's
    // holds: they must not be dropped as spoofed.
    for k in ["all", "default", "e-lb", "e-be"] {
        rt.sysctl(&format!("net.ipv4.conf.{k}.rp_filter"), "0")
            .unwrap();
    }
    Net {
        lb,
        be,
        _rt: rt,
        _reaper: reaper,
    }
}

fn probe(encap: Encap, port: u16, check: TunnelCheck) -> TunnelProbe {
    TunnelProbe {
        encap,
        source: LB,
        backend: BE,
        vip: SocketAddrV4::new(VIP, port),
        ttl: TTL,
        check,
    }
}

const GUE: Encap = Encap::Gue { port: GUE_PORT };

/// Runs `probes` at the same time from the load balancer's namespace.
fn run(ns: &Netns, probes: Vec<TunnelProbe>) -> Vec<Outcome> {
    ns.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let tasks: Vec<_> = probes
                .into_iter()
                .map(|p| tokio::spawn(async move { p.probe(TIMEOUT).await }))
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        })
    })
}

fn run1(ns: &Netns, p: TunnelProbe) -> Outcome {
    let o = run(ns, vec![p]).remove(0);
    println!("{o:?}");
    o
}

// ---------------------------------------------------------------- responder

/// What the responder does with a SYN to a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    SynAck,
    Reset,
    Silent,
}

/// A tunnel packet as the backend received it.
#[derive(Clone, Debug)]
struct Received {
    outer: Ipv4Header,
    /// GUE only: the outer UDP header.
    gue: Option<UdpHeader>,
    inner: Ipv4Header,
    /// The inner TCP header, if TCP.
    tcp: Option<TcpHeader>,
    /// The inner UDP header and payload, if UDP.
    udp: Option<(UdpHeader, Vec<u8>)>,
}

/// The backend side: reads tunnel packets in the backend's namespace and
/// answers their inner packets from the VIP, straight (no tunnel back).
struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Responder {
    fn start(be: &Netns, encap: Encap, reply: fn(u16) -> Reply) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = be.path();
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            thread::spawn(move || {
                enter_path(&path);
                let proto = match encap {
                    Encap::Ipip => libc::IPPROTO_IPIP,
                    Encap::Gue { .. } => libc::IPPROTO_UDP,
                };
                let rx = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(proto))).unwrap();
                rx.set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                // GUE: a socket on the port, or the kernel answers ICMP port
                // unreachable besides what the raw socket reads.
                let _gue = match encap {
                    Encap::Gue { port } => Some(UdpSocket::bind((BE, port)).unwrap()),
                    Encap::Ipip => None,
                };
                let tx = Socket::new(
                    Domain::IPV4,
                    Type::RAW,
                    Some(Protocol::from(libc::IPPROTO_RAW)),
                )
                .unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let n = match (&rx).read(&mut buf) {
                        Ok(n) => n,
                        Err(_) => continue,
                    };
                    let Some(got) = parse(&buf[..n], encap) else {
                        continue;
                    };
                    if let Some(answer) = answer(&got, reply) {
                        let to = SockAddr::from(SocketAddrV4::new(got.inner.source.into(), 0));
                        tx.send_to(&answer, &to).unwrap();
                    }
                    seen.lock().unwrap().push(got);
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the responder started");
        Self {
            stop,
            thread: Some(thread),
            seen,
        }
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tunnel packet of ours (to BE), unwrapped; None for anything else.
fn parse(p: &[u8], encap: Encap) -> Option<Received> {
    let (outer, rest) = Ipv4Header::from_slice(p).ok()?;
    if outer.destination != BE.octets() {
        return None;
    }
    let (gue, inner) = match encap {
        Encap::Ipip => (None, rest),
        Encap::Gue { port } => {
            let (udp, rest) = UdpHeader::from_slice(rest).ok()?;
            if udp.destination_port != port {
                return None;
            }
            (Some(udp), rest)
        }
    };
    let (inner, l4) = Ipv4Header::from_slice(inner).ok()?;
    let (tcp, udp) = match inner.protocol {
        IpNumber::TCP => (Some(TcpHeader::from_slice(l4).ok()?.0), None),
        IpNumber::UDP => {
            let (h, payload) = UdpHeader::from_slice(l4).ok()?;
            (None, Some((h, payload.to_vec())))
        }
        _ => return None,
    };
    Some(Received {
        outer,
        gue,
        inner,
        tcp,
        udp,
    })
}

/// The backend's answer to an inner SYN or datagram, from the VIP.
fn answer(got: &Received, reply: fn(u16) -> Reply) -> Option<Vec<u8>> {
    let to = got.inner.source;
    let from = got.inner.destination;
    let mut out = Vec::new();
    if let Some(tcp) = &got.tcp {
        if !tcp.syn || tcp.ack {
            return None;
        }
        let b = PacketBuilder::ipv4(from, to, 64).tcp(
            tcp.destination_port,
            tcp.source_port,
            0x0bad_cafe,
            1000,
        );
        let ack = tcp.sequence_number.wrapping_add(1);
        match reply(tcp.destination_port) {
            Reply::SynAck => b.syn().ack(ack).write(&mut out, &[]).unwrap(),
            Reply::Reset => b.rst().ack(ack).write(&mut out, &[]).unwrap(),
            Reply::Silent => return None,
        }
    } else if let Some((udp, payload)) = &got.udp {
        if reply(udp.destination_port) == Reply::Silent {
            return None;
        }
        let mut text = b"pong ".to_vec();
        text.extend_from_slice(payload);
        PacketBuilder::ipv4(from, to, 64)
            .udp(udp.destination_port, udp.source_port)
            .write(&mut out, &text)
            .unwrap();
    }
    Some(out)
}

fn wait_seen(r: &Responder, n: usize) -> Vec<Received> {
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end && r.seen().len() < n {
        thread::sleep(Duration::from_millis(10));
    }
    r.seen()
}

/// The outer header the data path builds (through one router).
fn assert_outer(got: &Received, proto: IpNumber) {
    let o = &got.outer;
    assert_eq!(o.source, LB.octets());
    assert_eq!(o.destination, BE.octets());
    assert!(o.dont_fragment, "DF: {o:?}");
    assert_eq!(o.time_to_live, TTL - 1, "TTL, one router on the way");
    assert_eq!(o.protocol, proto);
    assert_eq!(o.header_checksum, o.calc_header_checksum());
    assert_eq!(got.inner.source, LB.octets());
    assert_eq!(got.inner.destination, VIP.octets());
    assert_eq!(got.inner.header_checksum, got.inner.calc_header_checksum());
}

// ---------------------------------------------------------------- TCP

#[test]
fn ipip_a_syn_ack_from_the_vip_passes_and_the_backend_gets_an_rst_for_it() {
    let n = net();
    let r = Responder::start(&n.be, Encap::Ipip, |_| Reply::SynAck);
    let o = run1(&n.lb, probe(Encap::Ipip, 80, TunnelCheck::Tcp));
    assert!(o.ok && !o.local, "{o:?}");
    assert_eq!(o.detail, "SYN-ACK through the ipip tunnel to 192.0.2.80:80");
    assert!(o.latency < TIMEOUT, "{o:?}");

    let seen = wait_seen(&r, 2);
    assert_eq!(seen.len(), 2, "a SYN then an RST: {seen:?}");
    for got in &seen {
        assert_outer(got, IpNumber::IPV4);
    }
    let syn = seen[0].tcp.as_ref().unwrap();
    assert!(syn.syn && !syn.ack && !syn.rst, "{syn:?}");
    assert_eq!(syn.destination_port, 80);
    assert!((32768..=60999).contains(&syn.source_port), "{syn:?}");
    let inner = &seen[0].inner;
    assert_eq!(
        syn.checksum,
        syn.calc_checksum_ipv4(inner, &[]).unwrap(),
        "inner TCP checksum"
    );
    let rst = seen[1].tcp.as_ref().unwrap();
    assert!(rst.rst && !rst.syn, "{rst:?}");
    assert_eq!(rst.source_port, syn.source_port);
    assert_eq!(rst.sequence_number, syn.sequence_number.wrapping_add(1));
}

#[test]
fn ipip_an_rst_from_the_vip_fails_at_once_saying_nothing_listens() {
    let n = net();
    let _r = Responder::start(&n.be, Encap::Ipip, |_| Reply::Reset);
    let o = run1(&n.lb, probe(Encap::Ipip, 80, TunnelCheck::Tcp));
    assert!(!o.ok && !o.local, "{o:?}");
    assert_eq!(
        o.detail,
        "RST through the ipip tunnel to 192.0.2.80:80: nothing listens on 192.0.2.80:80 on the \
         backend"
    );
    assert!(o.latency < TIMEOUT, "{o:?}");
}

#[test]
fn ipip_silence_fails_at_the_timeout_naming_the_likely_causes() {
    let n = net();
    let r = Responder::start(&n.be, Encap::Ipip, |_| Reply::Silent);
    let o = run1(&n.lb, probe(Encap::Ipip, 80, TunnelCheck::Tcp));
    assert!(!o.ok && !o.local, "{o:?}");
    assert!(
        o.detail.starts_with(
            "no answer through the ipip tunnel to 192.0.2.80:80 within 600ms: the backend's \
             decap is not attached or does not accept 10.81.1.1"
        ) && o.detail.contains("192.0.2.80 is not on its lo"),
        "{o:?}"
    );
    assert!(o.latency >= TIMEOUT && o.latency < TIMEOUT * 2, "{o:?}");
    assert_eq!(wait_seen(&r, 1).len(), 1, "the SYN reached the backend");
}

#[test]
fn ipip_to_a_host_that_takes_no_ipip_fails_at_once_on_its_icmp() {
    let n = net();
    // No responder: the backend's kernel has no IP-in-IP handler and
    // answers protocol unreachable.
    let o = run1(&n.lb, probe(Encap::Ipip, 80, TunnelCheck::Tcp));
    assert!(!o.ok && !o.local, "{o:?}");
    assert!(
        o.detail.starts_with(
            "10.81.2.10 answered ICMP protocol unreachable through the ipip tunnel to \
             192.0.2.80:80: nothing there takes IP-in-IP"
        ),
        "{o:?}"
    );
    assert!(o.latency < TIMEOUT, "{o:?}");
}

#[test]
fn gue_a_syn_ack_passes_and_the_outer_udp_is_the_data_paths() {
    let n = net();
    let r = Responder::start(&n.be, GUE, |_| Reply::SynAck);
    let o = run1(&n.lb, probe(GUE, 443, TunnelCheck::Tcp));
    assert!(o.ok && !o.local, "{o:?}");
    assert_eq!(o.detail, "SYN-ACK through the gue tunnel to 192.0.2.80:443");
    let seen = wait_seen(&r, 2);
    assert_eq!(seen.len(), 2, "a SYN then an RST: {seen:?}");
    for got in &seen {
        assert_outer(got, IpNumber::UDP);
        let udp = got.gue.as_ref().unwrap();
        assert_eq!(udp.destination_port, GUE_PORT);
        assert_eq!(udp.checksum, 0, "no UDP checksum, as the data path sends");
        assert_eq!(
            usize::from(udp.length),
            8 + usize::from(got.inner.total_len)
        );
    }
    assert!(seen[0].tcp.as_ref().unwrap().syn);
    assert!(seen[1].tcp.as_ref().unwrap().rst);
}

#[test]
fn gue_to_a_host_that_takes_no_gue_fails_at_once_on_its_icmp() {
    let n = net();
    let o = run1(&n.lb, probe(GUE, 80, TunnelCheck::Tcp));
    assert!(!o.ok && !o.local, "{o:?}");
    assert!(
        o.detail.starts_with(
            "10.81.2.10 answered ICMP port unreachable for UDP port 6080 through the gue \
             tunnel to 192.0.2.80:80: nothing there takes GUE"
        ),
        "{o:?}"
    );
    assert!(o.latency < TIMEOUT, "{o:?}");
}

#[test]
fn concurrent_probes_each_get_their_own_answer() {
    let n = net();
    // Even ports listen, odd ones refuse, 9xxx stay silent.
    let _r = Responder::start(&n.be, Encap::Ipip, |port| match port {
        9000.. => Reply::Silent,
        p if p % 2 == 0 => Reply::SynAck,
        _ => Reply::Reset,
    });
    let ports: Vec<u16> = (0..24).map(|i| 8000 + i).chain([9000, 9001]).collect();
    // Several probes of the same VIP:port too: only their ack numbers and
    // local ports tell their answers apart.
    let ports: Vec<u16> = ports
        .iter()
        .chain(&[8000, 8000, 8001, 8001])
        .copied()
        .collect();
    let probes = ports
        .iter()
        .map(|p| probe(Encap::Ipip, *p, TunnelCheck::Tcp))
        .collect();
    let outcomes = run(&n.lb, probes);
    for (port, o) in ports.iter().zip(&outcomes) {
        let want = match port {
            9000.. => "no answer",
            p if p % 2 == 0 => "SYN-ACK",
            _ => "RST",
        };
        assert!(o.detail.starts_with(want), "port {port}: {o:?}");
        assert!(
            o.detail.contains(&format!("192.0.2.80:{port}")),
            "port {port}: {o:?}"
        );
        assert_eq!(o.ok, want == "SYN-ACK", "port {port}: {o:?}");
    }
}

// ---------------------------------------------------------------- UDP

#[test]
fn udp_the_checks_datagram_goes_through_the_tunnel_and_its_reply_is_matched() {
    let n = net();
    for encap in [Encap::Ipip, GUE] {
        let r = Responder::start(&n.be, encap, |_| Reply::SynAck);
        let udp = |expect: Option<&str>| TunnelCheck::Udp {
            payload: b"ping".to_vec(),
            expect: expect.map(|e| e.as_bytes().to_vec()),
        };
        let name = if encap == Encap::Ipip { "ipip" } else { "gue" };
        let o = run1(&n.lb, probe(encap, 53, udp(Some("pong"))));
        assert!(o.ok, "{encap:?}: {o:?}");
        assert_eq!(
            o.detail,
            format!("reply through the {name} tunnel to 192.0.2.80:53 (9 bytes)")
        );
        let o = run1(&n.lb, probe(encap, 53, udp(Some("ready"))));
        assert!(!o.ok && !o.local, "{encap:?}: {o:?}");
        assert!(o.detail.contains("without \"ready\""), "{o:?}");
        let seen = wait_seen(&r, 2);
        let got = &seen[0];
        let proto = if encap == Encap::Ipip {
            IpNumber::IPV4
        } else {
            IpNumber::UDP
        };
        assert_outer(got, proto);
        let (h, payload) = got.udp.as_ref().unwrap();
        assert_eq!((h.destination_port, payload.as_slice()), (53, &b"ping"[..]));
        assert_eq!(
            h.checksum,
            h.calc_checksum_ipv4(&got.inner, payload).unwrap(),
            "inner UDP checksum"
        );
        drop(r);

        // The datagram arrives, nothing answers.
        let _silent = Responder::start(&n.be, encap, |_| Reply::Silent);
        let o = run1(&n.lb, probe(encap, 53, udp(None)));
        assert!(!o.ok && !o.local, "{encap:?}: {o:?}");
        assert!(
            o.detail.starts_with(&format!(
                "no reply through the {name} tunnel to 192.0.2.80:53 within 600ms"
            )) && o.detail.ends_with("or nothing answers on port 53"),
            "{o:?}"
        );
    }
}

// ---------------------------------------------------------------- daemon

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");

/// The daemon probes an `ipip` VIP's backend both ways: its own address
/// (a real listener) and through the tunnel (the responder), from the
/// interface's address; `status` shows both verdicts; `tunnel = false`
/// leaves only the first.
#[test]
fn the_daemon_checks_a_tunnel_vips_backend_through_the_tunnel_by_default() {
    use lb_user::api::BackendState;
    use stickylb_tests::{
        daemon::{Daemon, PinGuard},
        netns::wait_for,
    };
    let n = net();
    let id = n.lb.name.trim_end_matches("-lb").to_owned();
    let pin = PinGuard(std::path::Path::new("/sys/fs/bpf").join(&id));
    let dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = Remove(dir.clone());
    let socket = dir.join("stickylb.sock");
    // The backend's own service, which its own check connects to.
    let _listener =
        n.be.enter(|| std::net::TcpListener::bind((BE, 80)).unwrap());
    let config = |vip_health: &str| {
        format!(
            "interface = \"eth0\"\nxdp_mode = \"skb\"\npin_path = \"{}\"\n\
             control_socket = \"{}\"\nmetrics_listen = \"off\"\naffinity_capacity = 65536\n\n\
             [health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\n\
             fall = 1\n\n[tunnel]\nttl = {TTL}\n\n\
             [[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nforwarding = \"ipip\"\n\n\
             [vip.health]\n{vip_health}\n\n\
             [[vip.backend]]\naddress = \"{BE}\"\nport = 80\n",
            pin.0.display(),
            socket.display()
        )
    };
    // bpf_fib_lookup, and so the daemon's check of the machine, needs it.
    n.lb.sysctl("net.ipv4.conf.eth0.forwarding", "1").unwrap();
    let responder = Responder::start(&n.be, Encap::Ipip, |_| Reply::SynAck);
    let mut d = Daemon::start_in(
        &n.lb,
        &dir,
        socket.clone(),
        STICKYLB.as_ref(),
        &config(""),
        &[],
    )
    .unwrap();
    let backend = |d: &Daemon| d.vips().unwrap()[0].backends[0].clone();
    let check_is = |d: &Daemon, state: BackendState, detail: &str| {
        wait_for(Duration::from_secs(5), || {
            let b = backend(d);
            b.state == state && b.check.as_deref() == Some(detail)
        })
    };
    assert!(
        check_is(
            &d,
            BackendState::Up,
            "connected; SYN-ACK through the ipip tunnel to 192.0.2.80:80"
        ),
        "{:?}\n{}",
        backend(&d),
        d.log_text()
    );
    let (code, out, err) = d.cli(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("connected; SYN-ACK through the ipip tunnel to 192.0.2.80:80 in "),
        "{out}"
    );
    let syn = responder.seen()[0].clone();
    assert_eq!(
        syn.outer.source,
        LB.octets(),
        "from the interface's address"
    );
    assert_eq!(syn.outer.time_to_live, TTL - 1);

    // The decap (here: the responder) goes away: the backend's host itself
    // answers protocol unreachable, and the backend goes down although its
    // own address still answers.
    drop(responder);
    let down = "10.81.2.10 answered ICMP protocol unreachable through the ipip tunnel to \
                192.0.2.80:80: nothing there takes IP-in-IP (is the decap attached? `stickylb \
                decap attach` on the backend) (the check of its own address passed: connected)";
    assert!(
        check_is(&d, BackendState::Down, down),
        "{:?}\n{}",
        backend(&d),
        d.log_text()
    );

    // Without the tunnel probe only the backend's own address is checked.
    std::fs::write(&d.config, config("tunnel = false")).unwrap();
    let (code, out, err) = d.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        check_is(&d, BackendState::Up, "connected"),
        "{:?}\n{}",
        backend(&d),
        d.log_text()
    );
    d.stop().unwrap();
}

/// Removes a scratch folder on drop.
struct Remove(std::path::PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- real decap

/// The backend's half-open connections to the VIP: none once the probe's
/// RST went through.
fn syn_recv(be: &Netns) -> String {
    let out = be
        .command("ss")
        .args(["-Htn", "state", "syn-recv"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Against `stickylb decap` on the backend and a real listener on the VIP
/// on its lo: both modes pass and leave no half-open connection; without
/// the VIP on lo they time out; with the decap detached the backend's host
/// answers ICMP at once.
#[test]
fn against_the_real_decap_a_listener_on_the_vip_passes_and_a_missing_vip_or_decap_fails() {
    let n = net();
    let id = n.lb.name.trim_end_matches("-lb").to_owned();
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/slb-test-{id}"));
    let _pins = Remove(pin_dir.clone());
    let decap = |args: &[&str]| {
        let out =
            n.be.command(STICKYLB)
                .arg("decap")
                .args(args)
                .arg("--pin-dir")
                .arg(&pin_dir)
                .output()
                .unwrap();
        assert!(
            out.status.success(),
            "stickylb decap {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    decap(&["attach", "-i", "eth0", "--allow", &LB.to_string()]);
    stickylb_tests::netns::vip_on_loopback(&n.be, VIP).unwrap();
    let _listener =
        n.be.enter(|| std::net::TcpListener::bind((VIP, 80)).unwrap());

    for (encap, name) in [(Encap::Ipip, "ipip"), (GUE, "gue")] {
        let o = run1(&n.lb, probe(encap, 80, TunnelCheck::Tcp));
        assert!(o.ok, "{encap:?}: {o:?}");
        assert_eq!(
            o.detail,
            format!("SYN-ACK through the {name} tunnel to 192.0.2.80:80")
        );
        // The backend's SYN-ACK retries would keep it for seconds: the
        // probe's RST, decapsulated, closes it.
        assert!(
            stickylb_tests::netns::wait_for(Duration::from_secs(1), || syn_recv(&n.be).is_empty()),
            "half-open after the {name} probe: {}",
            syn_recv(&n.be)
        );
    }
    let o = run1(&n.lb, probe(Encap::Ipip, 81, TunnelCheck::Tcp));
    assert!(!o.ok, "{o:?}");
    assert!(o.detail.starts_with("RST through the ipip tunnel"), "{o:?}");

    // The VIP leaves lo: the decapsulated SYN is for nobody here.
    n.be.ip(&["addr", "del", &format!("{VIP}/32"), "dev", "lo"])
        .unwrap();
    for encap in [Encap::Ipip, GUE] {
        let o = run1(&n.lb, probe(encap, 80, TunnelCheck::Tcp));
        assert!(!o.ok && !o.local, "{o:?}");
        assert!(o.detail.starts_with("no answer through the"), "{o:?}");
        assert!(o.detail.contains("192.0.2.80 is not on its lo"), "{o:?}");
    }
    n.be.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])
        .unwrap();
    assert!(run1(&n.lb, probe(Encap::Ipip, 80, TunnelCheck::Tcp)).ok);

    // The decap goes: the backend's kernel takes neither IP-in-IP nor GUE.
    decap(&["detach", "-i", "eth0"]);
    let o = run1(&n.lb, probe(Encap::Ipip, 80, TunnelCheck::Tcp));
    assert!(!o.ok && !o.local, "{o:?}");
    assert!(o.detail.contains("ICMP protocol unreachable"), "{o:?}");
    let o = run1(&n.lb, probe(GUE, 80, TunnelCheck::Tcp));
    assert!(!o.ok && !o.local, "{o:?}");
    assert!(
        o.detail.contains("ICMP port unreachable for UDP port 6080"),
        "{o:?}"
    );
}

// ---------------------------------------------------------------- privilege

/// Drops CAP_NET_RAW from the calling thread's effective capabilities
/// (capabilities are per thread: the rest of the process keeps it).
fn drop_net_raw_on_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_RAW: u32 = 13;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a version-3 header and room for its two data structs.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_NET_RAW);
    // SAFETY: as above; only this thread's sets change.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

#[test]
fn without_cap_net_raw_the_probe_is_a_local_error_that_says_so() {
    let n = net();
    let path = n.lb.path();
    let outcomes = thread::spawn(move || {
        enter_path(&path);
        drop_net_raw_on_this_thread();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let udp = TunnelCheck::Udp {
                payload: b"ping".to_vec(),
                expect: None,
            };
            let mut out = Vec::new();
            for p in [
                probe(Encap::Ipip, 80, TunnelCheck::Tcp),
                probe(GUE, 80, TunnelCheck::Tcp),
                probe(Encap::Ipip, 53, udp),
            ] {
                out.push(p.probe(TIMEOUT).await);
            }
            out
        })
    })
    .join()
    .unwrap();
    for o in outcomes {
        println!("{o:?}");
        assert!(!o.ok && o.local, "{o:?}");
        assert!(
            o.detail
                .starts_with("cannot open a raw socket to probe through the ")
                && o.detail.contains("the daemon needs CAP_NET_RAW"),
            "{o:?}"
        );
        assert!(o.latency < TIMEOUT, "{o:?}");
    }
}
