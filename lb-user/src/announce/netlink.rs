//! The three rtnetlink requests the announcer needs, written by hand like
//! `dataplane::veth`'s: add and delete one IPv4 route in a table, and dump
//! IPv4 routes. A crate (netlink-packet-route and its kin) would bring four
//! dependencies for these few dozen bytes.
//!
//! The routes are `blackhole` routes: they need no device (a `dev lo` route
//! depends on lo being up and known to the BGP daemon), and since no
//! `ip rule` points at the table they never route anything; if one ever
//! did by mistake, a blackhole drops the traffic rather than looping it.

use std::{io, net::Ipv4Addr};

use crate::netlink::{self, NLM_F_REQUEST, NLMSG_ERROR, NLMSG_HDR, attr, header, u16_at, u32_at};

const NLMSG_DONE: u16 = 3;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const RTA_DST: u16 = 1;
const RTA_TABLE: u16 = 15;
const RTN_BLACKHOLE: u8 = 6;
const RT_SCOPE_UNIVERSE: u8 = 0;
/// In a delete: match a route of any scope.
const RT_SCOPE_NOWHERE: u8 = 255;
/// Makes the kernel honour a dump request's filters (Linux 4.20+).
const NETLINK_GET_STRICT_CHK: libc::c_int = 12;
const RTMSG: usize = 12;

/// One IPv4 route as a dump shows it (the fields the announcer reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub table: u32,
    pub protocol: u8,
}

/// What a request does to one route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Add a blackhole /32; refused (EEXIST) if the table has a route to
    /// that address already, of whatever protocol: never replaced.
    Add,
    /// Delete the route to that prefix of that protocol (any type or scope);
    /// another protocol's route to it is left alone.
    Delete,
}

/// The rtmsg's one-byte table: the table itself when it fits, else
/// RT_TABLE_UNSPEC with the real one in RTA_TABLE (as iproute2 does).
fn short_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(0)
}

/// The request for `op` on `route`, with sequence number `seq`.
pub fn route_request(op: Op, route: &Route, seq: u32) -> Vec<u8> {
    let (kind, flags, scope, rtype) = match op {
        Op::Add => (
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            RT_SCOPE_UNIVERSE,
            RTN_BLACKHOLE,
        ),
        Op::Delete => (RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, RT_SCOPE_NOWHERE, 0),
    };
    let mut req = vec![0; NLMSG_HDR];
    req.extend_from_slice(&[
        libc::AF_INET as u8,
        route.prefix_len,
        0, // src_len
        0, // tos
        short_table(route.table),
        route.protocol,
        scope,
        rtype,
    ]);
    req.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    attr(&mut req, RTA_DST, &route.dst.octets());
    attr(&mut req, RTA_TABLE, &route.table.to_ne_bytes());
    header(&mut req, kind, flags, seq);
    req
}

/// A dump of the IPv4 routes of `table` marked `protocol`. The kernel
/// applies these filters only on a socket with strict checking on (else it
/// sends every route of every table, and the caller filters): on a node
/// that holds a full BGP table, that is the difference between a few routes
/// and a million.
pub fn dump_request(seq: u32, table: u32, protocol: u8) -> Vec<u8> {
    let mut req = vec![0; NLMSG_HDR];
    req.extend_from_slice(&[
        libc::AF_INET as u8,
        0,
        0,
        0,
        short_table(table),
        protocol,
        0,
        0,
    ]);
    req.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut req, RTA_TABLE, &table.to_ne_bytes());
    header(&mut req, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq);
    req
}

/// What one received datagram holds.
#[derive(Debug, Default, PartialEq)]
pub struct Reply {
    pub routes: Vec<Route>,
    /// An NLMSG_ERROR: 0 for an ack, else the (positive) errno.
    pub error: Option<i32>,
    /// NLMSG_DONE: the end of a dump.
    pub done: bool,
}

/// Parses a datagram of netlink messages; a truncated one is an error.
pub fn parse(buf: &[u8]) -> io::Result<Reply> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "truncated rtnetlink message");
    let mut out = Reply::default();
    let mut at = 0;
    while at + NLMSG_HDR <= buf.len() {
        let len = u32_at(buf, at).ok_or_else(bad)? as usize;
        let kind = u16_at(buf, at + 4).ok_or_else(bad)?;
        if len < NLMSG_HDR || at + len > buf.len() {
            return Err(bad());
        }
        let body = &buf[at + NLMSG_HDR..at + len];
        match kind {
            NLMSG_DONE => out.done = true,
            NLMSG_ERROR => {
                let code = u32_at(body, 0).ok_or_else(bad)? as i32;
                out.error = Some(-code);
            }
            RTM_NEWROUTE => {
                if let Some(r) = parse_route(body) {
                    out.routes.push(r);
                }
            }
            _ => {}
        }
        at += len.next_multiple_of(4);
    }
    Ok(out)
}

/// An IPv4 route's rtmsg and attributes; `None` for another family or a
/// route without a destination (the default route).
fn parse_route(body: &[u8]) -> Option<Route> {
    let msg = body.get(..RTMSG)?;
    if msg[0] != libc::AF_INET as u8 {
        return None;
    }
    let mut route = Route {
        dst: Ipv4Addr::UNSPECIFIED,
        prefix_len: msg[1],
        table: u32::from(msg[4]),
        protocol: msg[5],
    };
    let mut dst = None;
    for a in netlink::checked_attrs(&body[RTMSG..]) {
        let (kind, payload) = a.ok()?;
        match kind {
            RTA_DST => dst = Some(Ipv4Addr::from(<[u8; 4]>::try_from(payload).ok()?)),
            RTA_TABLE => route.table = u32_at(payload, 0)?,
            _ => {}
        }
    }
    route.dst = dst?;
    Some(route)
}

/// A NETLINK_ROUTE socket of this network namespace.
pub struct Socket {
    socket: netlink::Socket,
    seq: u32,
}

impl Socket {
    pub fn open() -> io::Result<Self> {
        let socket = netlink::Socket::open()?;
        // Refused by a kernel before 4.20: dumps are then filtered here.
        socket.try_set_option(NETLINK_GET_STRICT_CHK, 1);
        Ok(Self { socket, seq: 0 })
    }

    fn send(&self, req: &[u8]) -> io::Result<()> {
        self.socket.send(req)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<Reply> {
        parse(self.socket.recv(buf)?)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Carries out `op` on `route` and waits for the kernel's answer.
    pub fn route(&mut self, op: Op, route: &Route) -> io::Result<()> {
        let seq = self.next_seq();
        self.send(&route_request(op, route, seq))?;
        let mut buf = vec![0u8; 8192];
        loop {
            let reply = self.recv(&mut buf)?;
            match reply.error {
                Some(0) => return Ok(()),
                Some(e) => return Err(io::Error::from_raw_os_error(e)),
                None => {}
            }
        }
    }

    /// Every IPv4 route in `table` marked with `protocol`.
    pub fn routes(&mut self, table: u32, protocol: u8) -> io::Result<Vec<Route>> {
        let seq = self.next_seq();
        self.send(&dump_request(seq, table, protocol))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        loop {
            let reply = self.recv(&mut buf)?;
            out.extend(
                reply
                    .routes
                    .into_iter()
                    .filter(|r| r.table == table && r.protocol == protocol),
            );
            match reply.error {
                // A filtered dump of a table the kernel has not made yet
                // (it makes one with its first route).
                Some(libc::ENOENT) => return Ok(Vec::new()),
                Some(e) if e != 0 => return Err(io::Error::from_raw_os_error(e)),
                _ => {}
            }
            if reply.done {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(table: u32) -> Route {
        Route {
            dst: Ipv4Addr::new(192, 0, 2, 10),
            prefix_len: 32,
            table,
            protocol: 250,
        }
    }

    #[test]
    fn an_add_is_a_new_blackhole_route_that_never_replaces() {
        let req = route_request(Op::Add, &route(200), 7);
        // header 16 + rtmsg 12 + RTA_DST 8 + RTA_TABLE 8
        assert_eq!(req.len(), 44);
        assert_eq!(u32_at(&req, 0), Some(44));
        assert_eq!(u16_at(&req, 4), Some(RTM_NEWROUTE));
        let flags = u16_at(&req, 6).unwrap();
        assert_eq!(flags & NLM_F_CREATE, NLM_F_CREATE);
        assert_eq!(
            flags & NLM_F_EXCL,
            NLM_F_EXCL,
            "must not replace another's route"
        );
        assert_eq!(flags & NLM_F_ACK, NLM_F_ACK);
        assert_eq!(u32_at(&req, 8), Some(7));
        assert_eq!(
            &req[16..28],
            &[
                2,
                32,
                0,
                0,
                200,
                250,
                RT_SCOPE_UNIVERSE,
                RTN_BLACKHOLE,
                0,
                0,
                0,
                0
            ]
        );
        assert_eq!(&req[28..36], &[8, 0, 1, 0, 192, 0, 2, 10]);
        assert_eq!(u16_at(&req, 36), Some(8));
        assert_eq!(u16_at(&req, 38), Some(RTA_TABLE));
        assert_eq!(u32_at(&req, 40), Some(200));
    }

    #[test]
    fn a_delete_matches_our_protocol_only_and_any_type_or_scope() {
        let req = route_request(Op::Delete, &route(200), 1);
        assert_eq!(u16_at(&req, 4), Some(RTM_DELROUTE));
        assert_eq!(u16_at(&req, 6), Some(NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(req[16 + 5], 250, "protocol");
        assert_eq!(req[16 + 6], RT_SCOPE_NOWHERE, "any scope");
        assert_eq!(req[16 + 7], 0, "any type");
    }

    #[test]
    fn a_table_above_255_goes_in_rta_table_only() {
        let req = route_request(Op::Add, &route(1000), 1);
        assert_eq!(req[16 + 4], 0);
        assert_eq!(u32_at(&req, 40), Some(1000));
    }

    #[test]
    fn a_dump_asks_for_one_table_and_protocol() {
        let req = dump_request(3, 1000, 250);
        assert_eq!(req.len(), 36);
        assert_eq!(u16_at(&req, 4), Some(RTM_GETROUTE));
        assert_eq!(u16_at(&req, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        // Strict checking refuses a dump whose lengths, tos, scope or flags
        // are set: only family, table, protocol and type may be.
        assert_eq!(&req[16..28], &[2, 0, 0, 0, 0, 250, 0, 0, 0, 0, 0, 0]);
        assert_eq!(u16_at(&req, 30), Some(RTA_TABLE));
        assert_eq!(u32_at(&req, 32), Some(1000));
        assert_eq!(dump_request(1, 200, 250)[16 + 4], 200);
    }

    /// A route message as the kernel sends one in a dump.
    fn kernel_route(dst: Option<[u8; 4]>, short: u8, table: Option<u32>, proto: u8) -> Vec<u8> {
        let mut m = vec![0; NLMSG_HDR];
        m.extend_from_slice(&[2, 32, 0, 0, short, proto, 0, RTN_BLACKHOLE, 0, 0, 0, 0]);
        if let Some(t) = table {
            attr(&mut m, RTA_TABLE, &t.to_ne_bytes());
        }
        // An attribute the parser does not know, with a payload that needs padding.
        attr(&mut m, 0x7f, &[1, 2, 3]);
        if let Some(d) = dst {
            attr(&mut m, RTA_DST, &d);
        }
        header(&mut m, RTM_NEWROUTE, 2, 1);
        m
    }

    #[test]
    fn a_dump_datagram_is_parsed_route_by_route() {
        let mut buf = kernel_route(Some([192, 0, 2, 10]), 200, Some(200), 250);
        buf.extend(kernel_route(Some([198, 51, 100, 1]), 0, Some(1000), 4));
        // The default route has no RTA_DST: skipped.
        buf.extend(kernel_route(None, 254, Some(254), 3));
        // No RTA_TABLE (an old kernel): the rtmsg's table.
        buf.extend(kernel_route(Some([10, 0, 0, 1]), 7, None, 250));
        let r = parse(&buf).unwrap();
        assert_eq!(
            r.routes,
            vec![
                route(200),
                Route {
                    dst: Ipv4Addr::new(198, 51, 100, 1),
                    prefix_len: 32,
                    table: 1000,
                    protocol: 4
                },
                Route {
                    dst: Ipv4Addr::new(10, 0, 0, 1),
                    prefix_len: 32,
                    table: 7,
                    protocol: 250
                },
            ]
        );
        assert!(!r.done && r.error.is_none());
    }

    #[test]
    fn done_errors_and_truncation() {
        let mut done = vec![0; 20];
        header(&mut done, NLMSG_DONE, 2, 1);
        assert!(parse(&done).unwrap().done);
        let mut err = vec![0; NLMSG_HDR];
        err.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        err.extend_from_slice(&[0; 16]); // the request's header, echoed
        header(&mut err, NLMSG_ERROR, 0, 1);
        assert_eq!(parse(&err).unwrap().error, Some(libc::EEXIST));
        let mut ack = err.clone();
        ack[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert_eq!(parse(&ack).unwrap().error, Some(0));
        let whole = kernel_route(Some([192, 0, 2, 10]), 200, Some(200), 250);
        assert!(parse(&whole[..whole.len() - 4]).is_err());
    }
}
