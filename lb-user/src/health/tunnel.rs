//! The probe through the tunnel: what a client's packet meets on its way
//! to a backend in the `ipip` and `gue` modes, which a check of the
//! backend's own address does not see (its decap missing or refusing our
//! source, the VIP missing from its loopback, nothing listening on the VIP).
//!
//! For a TCP VIP it sends a SYN from the tunnel source (an ephemeral port
//! of its own) to VIP:port, encapsulated as the XDP program does: an outer
//! IPv4 header with DF, `[tunnel] ttl`, the inner TOS, to the backend's
//! address (ID 0 for IP-in-IP, which the kernel keeps for a DF packet of
//! a header-included socket; for GUE the kernel's header, its ID from the
//! connected socket's counter), carrying protocol 4 (IP-in-IP, built whole and sent on
//! a raw `IPPROTO_IPIP` socket with `IP_HDRINCL`) or UDP to `gue_port`
//! (GUE variant 1: the inner packet is the UDP payload; sent from a UDP
//! socket, UDP checksum 0 as the data path sends it, its source port the
//! kernel's ephemeral one: the decap does not look at it). The backend
//! answers from the VIP to our address without a tunnel, routed: the answer
//! is read on a raw `IPPROTO_TCP` socket bound to our address, whose classic
//! BPF filter lets through only VIP:port → our port (so the daemon is not
//! handed every TCP segment of the host), and is matched on addresses,
//! ports and the acknowledgement of our sequence number. A SYN-ACK passes,
//! and is answered with an encapsulated RST so the backend keeps no
//! half-open connection; an RST fails (nothing listens on VIP:port); an
//! ICMP error for the tunnel packet (the backend's host takes no IP-in-IP,
//! or nothing listens on its GUE port) fails at once; silence fails at the
//! timeout. For a UDP VIP checked with `kind = "udp"` the check's datagram
//! is sent the same way, from a UDP socket bound to our address, on which
//! the reply arrives.
//!
//! This host's own TCP knows nothing of the probe's connection: it answers
//! the SYN-ACK with an RST of its own, routed to the VIP like any packet of
//! this host's. Where that route leads back to a load balancer, the RST is
//! forwarded like a client's packet from this host's address (the probed
//! backend closes the same half-open connection our RST does; another drops
//! it, knowing no such connection). Stopping it would need a firewall rule,
//! which the daemon does not make.

use std::collections::BTreeSet;
use std::io::{self, Read as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd as _;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use socket2::{Domain, SockFilter, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::failure::{Failure, is_local};
use super::{Outcome, io_detail, udp};
use crate::fmt::fmt_duration;

/// How the probe's packet is wrapped, as the VIP's `forwarding` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    /// Outer IPv4, protocol 4.
    Ipip,
    /// Outer IPv4 + UDP to `port`, no GUE header (variant 1).
    Gue { port: u16 },
}

impl Encap {
    fn name(self) -> &'static str {
        match self {
            Encap::Ipip => "ipip",
            Encap::Gue { .. } => "gue",
        }
    }
}

/// What is sent to the VIP through the tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TunnelCheck {
    /// A SYN that must be answered with a SYN-ACK (a TCP VIP).
    Tcp,
    /// A datagram that must be answered (holding `expect`, if set): a UDP
    /// VIP whose check is `kind = "udp"`.
    Udp {
        payload: Vec<u8>,
        expect: Option<Vec<u8>>,
    },
}

/// One backend's probe through the tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelProbe {
    pub encap: Encap,
    /// Outer and inner source: the tunnel source (`[tunnel] source`, or the
    /// interface's primary address). It must be an address of this host:
    /// the answer comes back to it.
    pub source: Ipv4Addr,
    /// Outer destination: the backend's own address.
    pub backend: Ipv4Addr,
    /// Inner destination.
    pub vip: SocketAddrV4,
    /// Outer TTL (`[tunnel] ttl`).
    pub ttl: u8,
    pub check: TunnelCheck,
}

impl TunnelProbe {
    /// Probes once; never takes (much) longer than `timeout`.
    pub async fn probe(&self, timeout: Duration) -> Outcome {
        let started = Instant::now();
        let deadline = started + timeout;
        let result = match &self.check {
            TunnelCheck::Tcp => self.tcp(deadline, timeout).await,
            TunnelCheck::Udp { payload, expect } => {
                self.udp(payload, expect.as_deref(), deadline, timeout)
                    .await
            }
        };
        let (ok, local, detail) = match result {
            Ok(detail) => (true, false, detail),
            Err(f) => (false, f.local, f.detail),
        };
        Outcome {
            ok,
            latency: started.elapsed(),
            detail,
            local,
        }
    }

    /// "through the ipip tunnel to 192.0.2.10:80", which every detail of
    /// this probe holds.
    fn path(&self) -> String {
        format!("through the {} tunnel to {}", self.encap.name(), self.vip)
    }

    async fn tcp(&self, deadline: Instant, timeout: Duration) -> Result<String, Failure> {
        let lease = PortLease::take().ok_or_else(|| Failure {
            detail: format!("no free local port for a probe {}", self.path()),
            local: true,
        })?;
        let ours = SocketAddrV4::new(self.source, lease.port);
        let isn = fastrand::u32(..);
        let answers = self.answer_socket(ours)?;
        let tunnel = self.tunnel_socket()?;
        let syn = ipv4_tcp(ours, self.vip, isn, 0, tcp_flags::SYN);
        tunnel.send(&syn).map_err(|e| self.io(e))?;
        let expect = Expect {
            from: self.vip,
            to: ours,
            ack: isn.wrapping_add(1),
        };
        let mut buf = [0u8; 256];
        loop {
            let n = tokio::select! {
                n = recv(&answers, &mut buf) => n.map_err(|e| self.io(e))?,
                e = tunnel.error() => return Err(self.icmp(e)),
                () = tokio::time::sleep_until(deadline) => return Err(self.silence(timeout)),
            };
            match match_answer(&buf[..n], &expect) {
                None => continue,
                Some(Answer::SynAck) => {
                    let rst = ipv4_tcp(ours, self.vip, expect.ack, 0, tcp_flags::RST);
                    // The verdict is in: a lost RST only leaves the backend
                    // a half-open connection until its SYN-ACK retries give
                    // up, as a lost client's would.
                    let _ = tunnel.send(&rst);
                    return Ok(format!("SYN-ACK {}", self.path()));
                }
                Some(Answer::Reset) => {
                    return Err(format!(
                        "RST {}: nothing listens on {} on the backend",
                        self.path(),
                        self.vip
                    )
                    .into());
                }
            }
        }
    }

    async fn udp(
        &self,
        payload: &[u8],
        expect: Option<&[u8]>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<String, Failure> {
        let socket = UdpSocket::bind(SocketAddrV4::new(self.source, 0))
            .await
            .map_err(|e| self.bind_failure(e))?;
        let SocketAddr::V4(ours) = socket.local_addr().map_err(|e| self.io(e))? else {
            return Err("the probe's socket has no IPv4 address".into());
        };
        let tunnel = self.tunnel_socket()?;
        let datagram = ipv4_udp(ours, self.vip, payload).ok_or_else(|| {
            Failure::from(format!("a payload of {} bytes is too long", payload.len()))
        })?;
        tunnel.send(&datagram).map_err(|e| self.io(e))?;
        let mut buf = vec![0u8; udp::MAX_REPLY];
        loop {
            let (n, from) = tokio::select! {
                r = socket.recv_from(&mut buf) => r.map_err(|e| self.io(e))?,
                e = tunnel.error() => return Err(self.icmp(e)),
                () = tokio::time::sleep_until(deadline) => return Err(self.silence(timeout)),
            };
            // Unconnected (connecting needs a route to the VIP, which this
            // host may lack), so anything sent to our port is read: only
            // the VIP's answer counts.
            if from != SocketAddr::V4(self.vip) {
                continue;
            }
            let reply = &buf[..n];
            return match expect {
                Some(want) if !udp::contains(reply, want) => Err(format!(
                    "reply {} without {:?} ({n} bytes: {:?})",
                    self.path(),
                    String::from_utf8_lossy(want),
                    udp::preview(reply)
                )
                .into()),
                _ => Ok(format!("reply {} ({n} bytes)", self.path())),
            };
        }
    }

    /// The raw socket the answer to a SYN from `ours` is read on.
    fn answer_socket(&self, ours: SocketAddrV4) -> Result<AsyncFd<Socket>, Failure> {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_TCP)),
        )
        .map_err(|e| self.raw_failure(e))?;
        // Filtered first: what arrives before is matched (and dropped) in
        // user space like anything else.
        let filter: Vec<SockFilter> = answer_filter(self.vip, ours)
            .iter()
            .map(|i| SockFilter::new(i.code, i.jt, i.jf, i.k))
            .collect();
        s.attach_filter(&filter).map_err(|e| self.local(e))?;
        // Bound: the kernel hands it only what is addressed to `source`.
        s.bind(&SocketAddr::V4(SocketAddrV4::new(self.source, 0)).into())
            .map_err(|e| self.bind_failure(e))?;
        s.set_nonblocking(true).map_err(|e| self.local(e))?;
        // SAFETY: the socket owns its descriptor, which stays open (and the
        // same) for as long as the AsyncFd that owns the socket.
        unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) }
            .map_err(|e| self.local(e.into()))
    }

    fn tunnel_socket(&self) -> Result<Tunnel, Failure> {
        let s = match self.encap {
            Encap::Ipip => {
                let s = Socket::new(
                    Domain::IPV4,
                    Type::RAW,
                    Some(socket2::Protocol::from(libc::IPPROTO_IPIP)),
                )
                .map_err(|e| self.raw_failure(e))?;
                s.set_header_included_v4(true).map_err(|e| self.local(e))?;
                // Send-only: a raw IP-in-IP socket is also handed every
                // IP-in-IP packet this host receives.
                s.attach_filter(&[SockFilter::new(BPF_RET_K, 0, 0, 0)])
                    .map_err(|e| self.local(e))?;
                s
            }
            Encap::Gue { .. } => {
                let s = Socket::new(Domain::IPV4, Type::DGRAM, None).map_err(|e| self.local(e))?;
                set_int(&s, libc::SOL_SOCKET, libc::SO_NO_CHECK, 1).map_err(|e| self.local(e))?;
                set_int(
                    &s,
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    libc::IP_PMTUDISC_DO,
                )
                .map_err(|e| self.local(e))?;
                s.set_ttl_v4(u32::from(self.ttl))
                    .map_err(|e| self.local(e))?;
                s
            }
        };
        // Bound and connected, so that the kernel reports an ICMP error
        // about our packet on this socket (and only one about ours).
        s.bind(&SocketAddr::V4(SocketAddrV4::new(self.source, 0)).into())
            .map_err(|e| self.bind_failure(e))?;
        let port = match self.encap {
            Encap::Ipip => 0,
            Encap::Gue { port } => port,
        };
        s.connect(&SocketAddr::V4(SocketAddrV4::new(self.backend, port)).into())
            .map_err(|e| self.io(e))?;
        s.set_nonblocking(true).map_err(|e| self.local(e))?;
        Ok(Tunnel {
            socket: s,
            encap: self.encap,
            source: self.source,
            backend: self.backend,
            ttl: self.ttl,
        })
    }

    fn io(&self, e: io::Error) -> Failure {
        Failure {
            detail: format!("{} {}", io_detail(&e), self.path()),
            local: is_local(&e),
        }
    }

    fn local(&self, e: io::Error) -> Failure {
        Failure {
            detail: format!("cannot probe {}: {}", self.path(), io_detail(&e)),
            local: true,
        }
    }

    fn raw_failure(&self, e: io::Error) -> Failure {
        if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
            return Failure {
                detail: format!(
                    "cannot open a raw socket to probe {} ({}): the daemon needs CAP_NET_RAW \
                     (run it as root), or set `tunnel = false` in [health]",
                    self.path(),
                    io_detail(&e)
                ),
                local: true,
            };
        }
        self.local(e)
    }

    fn bind_failure(&self, e: io::Error) -> Failure {
        if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
            return Failure {
                detail: format!(
                    "cannot probe {}: the tunnel source {} is not an address of this host \
                     (the answers come back to it): set [tunnel] source to one",
                    self.path(),
                    self.source
                ),
                local: true,
            };
        }
        self.local(e)
    }

    /// An ICMP error the backend's side sent about our tunnel packet.
    fn icmp(&self, e: io::Error) -> Failure {
        let backend = self.backend;
        let detail = match (e.raw_os_error(), self.encap) {
            (Some(libc::ENOPROTOOPT), _) => format!(
                "{backend} answered ICMP protocol unreachable {}: nothing there takes \
                 IP-in-IP (is the decap attached? `stickylb decap attach` on the backend)",
                self.path()
            ),
            (Some(libc::ECONNREFUSED), Encap::Gue { port }) => format!(
                "{backend} answered ICMP port unreachable for UDP port {port} {}: nothing \
                 there takes GUE (is the decap attached with this port? `stickylb decap \
                 status` on the backend)",
                self.path()
            ),
            _ => return self.io(e),
        };
        detail.into()
    }

    fn silence(&self, timeout: Duration) -> Failure {
        let vip = self.vip.ip();
        let what = match self.check {
            TunnelCheck::Tcp => format!(
                "no answer {} within {}: the backend's decap is not attached or does not \
                 accept {} (`stickylb decap status`), or {vip} is not on its lo \
                 (`stickylb decap check`)",
                self.path(),
                fmt_duration(timeout),
                self.source
            ),
            TunnelCheck::Udp { .. } => format!(
                "no reply {} within {}: the backend's decap is not attached or does not \
                 accept {} (`stickylb decap status`), {vip} is not on its lo (`stickylb \
                 decap check`), or nothing answers on port {}",
                self.path(),
                fmt_duration(timeout),
                self.source,
                self.vip.port()
            ),
        };
        what.into()
    }
}

/// The socket that sends the encapsulated packets, and how it wraps them.
struct Tunnel {
    socket: Socket,
    encap: Encap,
    source: Ipv4Addr,
    backend: Ipv4Addr,
    ttl: u8,
}

/// How often a probe looks for an ICMP error on its tunnel socket: a
/// pending error (`SO_ERROR`) is all that socket can tell, and it is not
/// registered with the reactor for so little; a look costs one syscall.
const ERROR_POLL: Duration = Duration::from_millis(20);

impl Tunnel {
    /// Sends one inner IPv4 packet through the tunnel.
    fn send(&self, inner: &[u8]) -> io::Result<()> {
        let n = match self.encap {
            Encap::Ipip => self
                .socket
                .send(&ipip(self.source, self.backend, self.ttl, inner))?,
            Encap::Gue { .. } => {
                // The inner TOS on the outer header, as the data path does.
                set_int(
                    &self.socket,
                    libc::IPPROTO_IP,
                    libc::IP_TOS,
                    libc::c_int::from(inner[1]),
                )?;
                self.socket.send(inner)?
            }
        };
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        Ok(())
    }

    /// Resolves when the kernel reports an error on the socket (an ICMP
    /// error about our packet); never otherwise.
    async fn error(&self) -> io::Error {
        loop {
            match self.socket.take_error() {
                Ok(Some(e)) => return e,
                Ok(None) => {}
                Err(e) => return e,
            }
            tokio::time::sleep(ERROR_POLL).await;
        }
    }
}

async fn recv(fd: &AsyncFd<Socket>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|s| s.get_ref().read(buf)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

fn set_int(
    s: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid socket, and a c_int option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The local ports of the probes under way, so that concurrent probes (one
/// per backend) never share one and take each other's answers.
static PORTS_IN_USE: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// The range probe ports are drawn from: Linux's default ephemeral range.
const PROBE_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

/// A probe's local port, free again when dropped.
struct PortLease {
    port: u16,
}

impl PortLease {
    /// A random port no other probe holds: random so that a probe's port
    /// is not that of the previous probe, whose late answer could match.
    fn take() -> Option<Self> {
        let mut in_use = PORTS_IN_USE.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..64 {
            let port = fastrand::u16(PROBE_PORTS);
            if in_use.insert(port) {
                return Some(Self { port });
            }
        }
        None
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        PORTS_IN_USE
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.port);
    }
}

// ---- Packets ----

pub(super) mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// The inner header's TTL: what this host's own packets carry.
const INNER_TTL: u8 = 64;
/// The window of the probe's SYN (unscaled: the SYN carries no options).
const SYN_WINDOW: u16 = 64240;
const IPV4_DF: u16 = 0x4000;

/// The ones' complement sum of `data` as 16-bit big-endian words, folded.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// An IPv4 header without options: DF set, ID 0, checksum computed.
pub(super) fn ipv4_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    tos: u8,
    payload_len: u16,
) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[1] = tos;
    h[2..4].copy_from_slice(&(20 + payload_len).to_be_bytes());
    h[6..8].copy_from_slice(&IPV4_DF.to_be_bytes());
    h[8] = ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = lb_common::checksum::fold(sum16(&h, 0));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// The TCP/UDP pseudo header's sum.
fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u32 {
    let mut acc = sum16(&src.octets(), 0);
    acc = sum16(&dst.octets(), acc);
    acc + u32::from(proto) + u32::from(len)
}

/// An inner IPv4 + TCP segment (no options, no data) from `src` to `dst`.
pub(super) fn ipv4_tcp(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    flags: u8,
) -> Vec<u8> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    let window = if flags & tcp_flags::RST != 0 {
        0
    } else {
        SYN_WINDOW
    };
    tcp[14..16].copy_from_slice(&window.to_be_bytes());
    let c = lb_common::checksum::fold(sum16(
        &tcp,
        pseudo_sum(*src.ip(), *dst.ip(), libc::IPPROTO_TCP as u8, 20),
    ));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut p = ipv4_header(
        *src.ip(),
        *dst.ip(),
        libc::IPPROTO_TCP as u8,
        INNER_TTL,
        0,
        20,
    )
    .to_vec();
    p.extend_from_slice(&tcp);
    p
}

/// An inner IPv4 + UDP datagram from `src` to `dst`, checksum computed;
/// `None` if it does not fit in one IPv4 packet.
pub(super) fn ipv4_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Option<Vec<u8>> {
    let udp_len = u16::try_from(8 + payload.len())
        .ok()
        .filter(|l| *l <= u16::MAX - 20 - 28)?;
    let mut udp = Vec::with_capacity(usize::from(udp_len));
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let c = match lb_common::checksum::fold(sum16(
        &udp,
        pseudo_sum(*src.ip(), *dst.ip(), libc::IPPROTO_UDP as u8, udp_len),
    )) {
        // 0 means "no checksum" in UDP: a computed 0 is sent as its other
        // ones' complement form.
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let mut p = ipv4_header(
        *src.ip(),
        *dst.ip(),
        libc::IPPROTO_UDP as u8,
        INNER_TTL,
        0,
        udp_len,
    )
    .to_vec();
    p.extend_from_slice(&udp);
    Some(p)
}

/// `inner` in an outer IPv4 header as the data path builds it: DF, ID 0,
/// `ttl`, the inner TOS (DSCP and ECN), protocol 4.
pub(super) fn ipip(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, inner: &[u8]) -> Vec<u8> {
    let len = u16::try_from(inner.len()).unwrap_or(u16::MAX - 20);
    let mut p = ipv4_header(src, dst, libc::IPPROTO_IPIP as u8, ttl, inner[1], len).to_vec();
    p.extend_from_slice(inner);
    p
}

/// What a SYN's answer must be: from the VIP to our port, acknowledging
/// our sequence number.
#[derive(Clone, Copy, Debug)]
pub(super) struct Expect {
    pub(super) from: SocketAddrV4,
    pub(super) to: SocketAddrV4,
    /// Our initial sequence number + 1.
    pub(super) ack: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    SynAck,
    Reset,
}

/// The answer `packet` (an IPv4 packet as a raw socket reads it) gives to
/// our SYN, or `None` if it is not one: another flow's, another probe's (its
/// ack number differs), a fragment, or malformed.
pub(super) fn match_answer(packet: &[u8], e: &Expect) -> Option<Answer> {
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    if packet[0] >> 4 != 4 || ihl < 20 || packet.len() < ihl + 20 {
        return None;
    }
    let frag = u16::from_be_bytes([packet[6], packet[7]]);
    if frag & 0x3fff != 0 || packet[9] != libc::IPPROTO_TCP as u8 {
        return None;
    }
    let addr =
        |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    if addr(12) != *e.from.ip() || addr(16) != *e.to.ip() {
        return None;
    }
    let tcp = &packet[ihl..];
    let port = |at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    if port(0) != e.from.port() || port(2) != e.to.port() {
        return None;
    }
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let flags = tcp[13];
    // Only an acknowledgement of our SYN is an answer to it (RFC 9293
    // 3.10.7.3: an RST in SYN-SENT is acceptable if it acknowledges the SYN).
    if flags & tcp_flags::ACK == 0 || ack != e.ack {
        return None;
    }
    if flags & tcp_flags::RST != 0 {
        Some(Answer::Reset)
    } else if flags & tcp_flags::SYN != 0 && flags & tcp_flags::FIN == 0 {
        Some(Answer::SynAck)
    } else {
        None
    }
}

// Classic BPF opcodes (linux/filter.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_LD_H_ABS: u16 = 0x28;
const BPF_LD_B_ABS: u16 = 0x30;
const BPF_LD_H_IND: u16 = 0x48;
const BPF_LDX_B_MSH: u16 = 0xb1;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

/// A socket filter that keeps only unfragmented TCP from `from` to `to`
/// (addresses and ports), so the raw socket is not handed every TCP segment
/// of the host.
pub(super) fn answer_filter(from: SocketAddrV4, to: SocketAddrV4) -> Vec<libc::sock_filter> {
    // Every jump that fails goes to the last instruction, the drop.
    const LEN: u8 = 15;
    let drop_from = |i: u8| LEN - 1 - i - 1;
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        ins(BPF_LD_W_ABS, 0, 0, 12),
        ins(BPF_JEQ_K, 0, drop_from(1), u32::from(*from.ip())),
        ins(BPF_LD_W_ABS, 0, 0, 16),
        ins(BPF_JEQ_K, 0, drop_from(3), u32::from(*to.ip())),
        ins(BPF_LD_B_ABS, 0, 0, 9),
        ins(BPF_JEQ_K, 0, drop_from(5), libc::IPPROTO_TCP as u32),
        ins(BPF_LD_H_ABS, 0, 0, 6),
        ins(BPF_JSET_K, drop_from(7), 0, 0x1fff),
        ins(BPF_LDX_B_MSH, 0, 0, 0),
        ins(BPF_LD_H_IND, 0, 0, 0),
        ins(BPF_JEQ_K, 0, drop_from(10), u32::from(from.port())),
        ins(BPF_LD_H_IND, 0, 0, 2),
        ins(BPF_JEQ_K, 0, drop_from(12), u32::from(to.port())),
        ins(BPF_RET_K, 0, 0, 0xffff),
        ins(BPF_RET_K, 0, 0, 0),
    ]
}

#[cfg(test)]
#[path = "tunnel_tests.rs"]
mod tests;
