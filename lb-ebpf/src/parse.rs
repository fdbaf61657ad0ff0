//! Header parsing: from the raw frame to the VIP key and client address, or
//! the reason the frame is left to the kernel. Every read is bounds-checked
//! against `data_end`, as the verifier requires.

use aya_ebpf::programs::XdpContext;
use lb_common::{VipKey, global_counter, proto};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

pub const ETH_P_IPV4: u16 = 0x0800;
/// 802.1Q (C-tag) and 802.1ad (S-tag) tag protocol ids.
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const IP_MF: u16 = 0x2000;
pub const IP_DF: u16 = 0x4000;
pub const IP_OFFSET_MASK: u16 = 0x1fff;

/// A TCP/UDP IPv4 frame, as far as load balancing cares.
pub struct Flow {
    pub eth: *mut EthHdr,
    pub vip: VipKey,
    pub client: [u8; 4],
    /// First fragment of a fragmented datagram (MF set, offset 0).
    pub first_fragment: bool,
    /// A TCP SYN without ACK: the first segment of a handshake, which
    /// anyone can send from any source address.
    pub bare_syn: bool,
}

/// The `T` at `offset` in the frame, if the frame holds all of it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Why a frame is not a TCP/UDP flow.
pub enum NotFlow {
    /// Passed to the stack, counted under this `global_counter`.
    Pass(u32),
    /// An unfragmented ICMP packet (IPv4 header at `EthHdr::LEN`, ICMP
    /// header at this offset from the frame's start): `icmp::handle`'s.
    Icmp(usize),
}

impl From<u32> for NotFlow {
    fn from(counter: u32) -> Self {
        Self::Pass(counter)
    }
}

/// Parses the frame; `Err` says what else it is.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Flow, NotFlow> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(global_counter::PASS_SHORT_ETH)?;
    // SAFETY: ptr_at checked the header lies inside the frame.
    match u16::from_be(unsafe { (*eth).ether_type }) {
        ETH_P_IPV4 => {}
        // Counted apart from other protocols: a tagged frame is never
        // forwarded, since the MAC rewrite would send it out untagged or
        // into a VLAN the backend is not in (see docs/architecture.md).
        ETH_P_8021Q | ETH_P_8021AD => return Err(global_counter::PASS_VLAN.into()),
        _ => return Err(global_counter::PASS_NOT_IPV4.into()),
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, EthHdr::LEN).ok_or(global_counter::PASS_BAD_IPV4)?;
    // SAFETY: as above.
    let ip = unsafe { &*ip };
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(global_counter::PASS_BAD_IPV4.into());
    }
    let frags = u16::from_be_bytes(ip.frags);
    if frags & IP_OFFSET_MASK != 0 {
        return Err(global_counter::PASS_FRAGMENT.into());
    }
    // IP options are skipped, not refused: DSR leaves the IP header alone.
    let l4 = EthHdr::LEN + ihl;
    let (dport, bare_syn) = match ip.proto {
        proto::TCP => {
            let tcp: *const TcpHdr = ptr_at(ctx, l4).ok_or(global_counter::PASS_SHORT_L4)?;
            // SAFETY: checked by ptr_at; the flags byte lies inside the
            // 20-byte header.
            let flags = unsafe { *tcp.cast::<u8>().add(TCP_FLAGS_OFFSET) };
            // SAFETY: checked by ptr_at.
            let dport = unsafe { (*tcp).dest };
            (dport, flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
        }
        proto::UDP => {
            let udp: *const UdpHdr = ptr_at(ctx, l4).ok_or(global_counter::PASS_SHORT_L4)?;
            // SAFETY: checked by ptr_at.
            (unsafe { (*udp).dst }, false)
        }
        proto::ICMP if frags & IP_MF == 0 => return Err(NotFlow::Icmp(l4)),
        _ => return Err(global_counter::PASS_NOT_TCP_UDP.into()),
    };
    Ok(Flow {
        eth,
        vip: VipKey {
            addr: ip.dst_addr,
            port: dport,
            proto: ip.proto,
            _pad: 0,
        },
        client: ip.src_addr,
        first_fragment: frags & IP_MF != 0,
        bare_syn,
    })
}
