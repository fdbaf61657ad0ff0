//! What a veth's peer needs for XDP_TX to work: a frame the program sends
//! back out of a veth in driver mode is handed to the peer's XDP receive
//! path, and is dropped when the peer has no XDP program. Asked of the
//! kernel with one rtnetlink RTM_GETLINK per interface (the peer may be in
//! another namespace: IFLA_TARGET_NETNSID reaches it). The same reply
//! says which XDP programs an interface has, in which mode (`xdp_on_link`).

use std::io;

use crate::netlink::{self, NLM_F_REQUEST, NLMSG_ERROR, NLMSG_HDR, attr, attrs, u16_at, u32_at};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_XDP: u16 = 43;
const IFLA_TARGET_NETNSID: u16 = 46;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_MULTI: u8 = 4;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;

/// What rtnetlink says about one interface.
#[derive(Debug, Default, PartialEq)]
struct Link {
    kind: Option<String>,
    /// The other end of a veth (its index in `peer_netnsid`'s namespace).
    peer: Option<u32>,
    /// The namespace of `peer`, as this namespace numbers it; `None`: ours.
    peer_netnsid: Option<i32>,
    /// A driver-mode (native) XDP program is attached.
    driver_xdp: bool,
    xdp: XdpOnLink,
}

/// The XDP programs attached to an interface, by mode (program ids).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpOnLink {
    pub driver: Option<u32>,
    pub skb: Option<u32>,
    pub hw: Option<u32>,
}

impl XdpOnLink {
    /// Every attached program with its mode's name.
    pub fn programs(&self) -> impl Iterator<Item = (&'static str, u32)> {
        [("driver", self.driver), ("skb", self.skb), ("hw", self.hw)]
            .into_iter()
            .filter_map(|(mode, id)| Some((mode, id?)))
    }
}

/// The XDP programs attached to the interface `ifindex` of this namespace.
pub fn xdp_on_link(ifindex: u32) -> io::Result<XdpOnLink> {
    get_link(ifindex, None).map(|l| l.xdp)
}

/// Whether frames the program sends back out of `ifindex` are lost: `Some(the
/// peer's name or index)` when `ifindex` is a veth with a driver-mode XDP
/// program and its peer has none; `None` otherwise.
pub fn veth_peer_without_xdp(ifindex: u32) -> io::Result<Option<String>> {
    let ours = get_link(ifindex, None)?;
    let (Some("veth"), Some(peer), true) = (ours.kind.as_deref(), ours.peer, ours.driver_xdp)
    else {
        return Ok(None);
    };
    let theirs = get_link(peer, ours.peer_netnsid)?;
    if theirs.driver_xdp {
        return Ok(None);
    }
    Ok(Some(match ours.peer_netnsid {
        None => crate::netdev::ifname(peer),
        Some(_) => format!("(interface #{peer} in another network namespace)"),
    }))
}

fn get_link(ifindex: u32, netnsid: Option<i32>) -> io::Result<Link> {
    let mut req = Vec::with_capacity(64);
    req.extend_from_slice(&[0; NLMSG_HDR]); // nlmsghdr, filled in below
    // ifinfomsg: family, pad, type, index, flags, change.
    req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    req.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    req.extend_from_slice(&[0; 8]);
    attr(
        &mut req,
        IFLA_EXT_MASK,
        &RTEXT_FILTER_SKIP_STATS.to_ne_bytes(),
    );
    if let Some(id) = netnsid {
        attr(&mut req, IFLA_TARGET_NETNSID, &id.to_ne_bytes());
    }
    netlink::header(&mut req, RTM_GETLINK, NLM_F_REQUEST, 1);

    let socket = netlink::Socket::open()?;
    socket.send(&req)?;
    let mut buf = vec![0u8; 32 * 1024];
    parse_reply(socket.recv(&mut buf)?)
}

fn parse_reply(b: &[u8]) -> io::Result<Link> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short rtnetlink reply");
    let len = u32_at(b, 0).ok_or_else(bad)? as usize;
    let kind = u16_at(b, 4).ok_or_else(bad)?;
    let msg = b.get(NLMSG_HDR..len).ok_or_else(bad)?;
    if kind == NLMSG_ERROR {
        let errno = u32_at(msg, 0).ok_or_else(bad)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if kind != RTM_NEWLINK {
        return Err(bad());
    }
    let mut link = Link::default();
    for (t, p) in attrs(msg.get(16..).ok_or_else(bad)?) {
        match t {
            IFLA_LINK => link.peer = u32_at(p, 0),
            IFLA_LINK_NETNSID => link.peer_netnsid = u32_at(p, 0).map(|v| v as i32),
            IFLA_LINKINFO => {
                for (t, p) in attrs(p) {
                    if t == IFLA_INFO_KIND {
                        let name = p.split(|c| *c == 0).next().unwrap_or_default();
                        link.kind = Some(String::from_utf8_lossy(name).into_owned());
                    }
                }
            }
            IFLA_XDP => {
                let mut attached = 0;
                let mut drv_prog = 0;
                for (t, p) in attrs(p) {
                    match t {
                        IFLA_XDP_ATTACHED => attached = p.first().copied().unwrap_or(0),
                        IFLA_XDP_DRV_PROG_ID => {
                            drv_prog = u32_at(p, 0).unwrap_or(0);
                            link.xdp.driver = Some(drv_prog).filter(|id| *id != 0);
                        }
                        IFLA_XDP_SKB_PROG_ID => {
                            link.xdp.skb = u32_at(p, 0).filter(|id| *id != 0);
                        }
                        IFLA_XDP_HW_PROG_ID => link.xdp.hw = u32_at(p, 0).filter(|id| *id != 0),
                        _ => {}
                    }
                }
                link.driver_xdp = attached == XDP_ATTACHED_DRV
                    || (attached == XDP_ATTACHED_MULTI && drv_prog != 0);
            }
            _ => {}
        }
    }
    // A negative id: the peer is in our own namespace.
    if link.peer_netnsid.is_some_and(|id| id < 0) {
        link.peer_netnsid = None;
    }
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_no_veth() {
        let lo = crate::netdev::ifindex("lo").unwrap();
        let link = get_link(lo, None).unwrap();
        assert_eq!((link.peer, link.driver_xdp), (None, false), "{link:?}");
        assert_eq!(link.xdp, XdpOnLink::default());
        assert_eq!(veth_peer_without_xdp(lo).unwrap(), None);
    }

    #[test]
    fn a_missing_interface_is_an_error() {
        let e = get_link(u32::MAX >> 1, None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    }
}
