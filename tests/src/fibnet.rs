//! A network namespace for BPF_PROG_TEST_RUN of the tunnel modes: the
//! program's `bpf_fib_lookup` looks the backend up in the namespace of the
//! frame's ingress interface, so a test run needs a real interface (given in
//! `struct xdp_md`) in a namespace with routes and neighbours, and must be
//! made from a thread inside that namespace (the kernel finds the ingress
//! interface by index in the caller's namespace).
//!
//! Nothing is sent: a test run's XDP_TX or XDP_REDIRECT only returns the
//! action. The namespace (and with it every interface) is deleted on drop.
//!
//! ```text
//!   ns slbfib<pid>x<n> (forwarding on)
//!   ingress  lb0 = veth = lb0p   10.98.0.1/24, MAC LB_MAC
//!            gateway 10.98.0.254, neighbour GW_MAC (permanent)
//!            192.0.2.0/24 (the rig's backends) via 10.98.0.254
//!            203.0.0.0/16 (the rig's clients, `crate::client`) via 10.98.0.254
//!   other    lb1 = veth = lb1p   10.99.0.1/24, MAC OTHER_MAC
//!            gateway 10.99.0.254, neighbour OTHER_GW_MAC (permanent)
//! ```

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use lb_common::TunnelSettings;
use lb_user::dataplane::Dataplane;

use crate::{
    LB_MAC,
    netns::{Netns, Result, enter_path},
};

/// The interface the rig's frames arrive on (`lb0`).
pub const INGRESS: &str = "lb0";
/// A second interface, for routes that leave by another one (`lb1`).
pub const OTHER: &str = "lb1";
/// The load balancer's address on `lb0`: the tunnel source of `settings`.
pub const LB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
/// The next hop toward the rig's backends, on `lb0`.
pub const GW: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 254);
pub const GW_MAC: [u8; 6] = [0x02, 0x9a, 0, 0, 0, 0xfe];
/// An address on `lb0`'s subnet with no neighbour entry.
pub const GW_UNRESOLVED: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 253);
pub const OTHER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const OTHER_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 1, 0xfe];
/// The next hop on `lb1`.
pub const OTHER_GW: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 254);
pub const OTHER_GW_MAC: [u8; 6] = [0x02, 0x9a, 0, 0, 1, 0xfe];
/// The subnet of the rig's backends (`crate::backend_addr`).
pub const BACKEND_NET: &str = "192.0.2.0/24";
/// The subnet of the rig's clients (`crate::client`): routed back out of
/// the ingress interface, as a client's router would be, for what is sent
/// to a client (ICMP relayed from the tunnel's path).
pub const CLIENT_NET: &str = "203.0.0.0/16";
/// The GUE port of `settings` (not the default, so that a test sees it
/// is the configured one).
pub const GUE_PORT: u16 = 7777;
/// The outer TTL of `settings` (not the default, for the same reason).
pub const TUNNEL_TTL: u8 = 33;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// The tunnel settings the tests use: source `LB_ADDR`, TTL `TUNNEL_TTL`,
/// GUE port `GUE_PORT`, no source prefix.
pub fn settings() -> TunnelSettings {
    TunnelSettings {
        src_addr: LB_ADDR.octets(),
        src_prefix: [0; 4],
        src_prefix_len: 0,
        ttl: TUNNEL_TTL,
        gue_port: GUE_PORT.to_be_bytes(),
        _pad: [0; 4],
    }
}

/// The namespace described in the module's doc.
pub struct FibNet {
    pub ns: Netns,
    /// ifindex of `lb0`, the ingress interface of every run.
    pub ingress: u32,
    /// ifindex of `lb1`.
    pub other: u32,
}

impl FibNet {
    pub fn new() -> Result<Self> {
        crate::require_root();
        let name = format!(
            "slbfib{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Netns::new(&name)?;
        let lines = [
            format!(
                "link add {INGRESS} address {} type veth peer name lb0p",
                mac(LB_MAC)
            ),
            format!(
                "link add {OTHER} address {} type veth peer name lb1p",
                mac(OTHER_MAC)
            ),
            format!("addr add {LB_ADDR}/24 dev {INGRESS}"),
            format!("addr add {OTHER_ADDR}/24 dev {OTHER}"),
            format!("link set {INGRESS} up"),
            "link set lb0p up".into(),
            format!("link set {OTHER} up"),
            "link set lb1p up".into(),
            format!(
                "neigh replace {GW} lladdr {} dev {INGRESS} nud permanent",
                mac(GW_MAC)
            ),
            format!(
                "neigh replace {OTHER_GW} lladdr {} dev {OTHER} nud permanent",
                mac(OTHER_GW_MAC)
            ),
            format!("route add {BACKEND_NET} via {GW} dev {INGRESS}"),
            format!("route add {CLIENT_NET} via {GW} dev {INGRESS}"),
        ];
        ns.ip_batch(&lines)?;
        // The FIB helper refuses to route for an interface without
        // forwarding (BPF_FIB_LKUP_RET_FWD_DISABLED).
        ns.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        let (ingress, other) = ns.enter(|| (ifindex(INGRESS), ifindex(OTHER)));
        Ok(Self {
            ingress: ingress?,
            other: other?,
            ns,
        })
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        self.ns.ip(args)
    }

    /// Routes `addr` (a /32, replacing any route of it) as `how` says
    /// (`["via", "10.98.0.254", "dev", "lb0"]`, `["mtu", "lock", "1400"]`
    /// appended, or a type: `["unreachable"]` put first).
    pub fn route(&self, addr: Ipv4Addr, how: &[&str]) -> Result<()> {
        let dst = format!("{addr}/32");
        let mut args = vec!["route", "replace"];
        match how.first() {
            Some(&kind @ ("unreachable" | "blackhole" | "prohibit")) => {
                args.extend([kind, dst.as_str()]);
                args.extend(&how[1..]);
            }
            _ => {
                args.push(dst.as_str());
                args.extend(how);
            }
        }
        self.ip(&args).map(|_| ())
    }

    /// Where the namespace is, for threads that enter it.
    pub fn path(&self) -> PathBuf {
        self.ns.path()
    }

    /// Runs `dp` once on `frame` arriving on `lb0`, from a thread inside
    /// the namespace: the action and the frame as the program left it.
    pub fn run(&self, dp: &mut Dataplane, frame: &[u8]) -> (u32, Vec<u8>) {
        let path = self.path();
        let ingress = self.ingress;
        std::thread::scope(|s| {
            s.spawn(|| {
                enter_path(&path);
                dp.test_run_from(frame, ingress)
            })
            .join()
            .expect("test run thread panicked")
        })
        .expect("BPF_PROG_TEST_RUN")
    }
}

/// The index of interface `name` in the calling thread's namespace.
fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated name.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!(
            "no interface {name}: {}",
            std::io::Error::last_os_error()
        )),
        i => Ok(i),
    }
}
