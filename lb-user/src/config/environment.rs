//! What `validate` cannot know: whether this machine can run the file.

use std::{net::Ipv4Addr, path::Path};

use super::{
    BackendConfig, Config, Forwarding, Problem, Problems, VipConfig,
    validate::{MAX_INTERFACE_LEN, is_valid_interface_name, vip_label},
};
use crate::{fmt::fmt_mac, neigh, netdev};

impl Config {
    /// Checks against the machine this runs on: what `validate` cannot know.
    pub fn check_environment(&self) -> Vec<Problem> {
        let mut out = Problems::default();
        // An invalid name is already reported by validate(), and must not be
        // joined to a path (it may contain '/').
        if is_valid_interface_name(&self.interface)
            && self.interface.len() <= MAX_INTERFACE_LEN
            && netdev::ifindex(&self.interface).is_none()
        {
            out.push(
                "interface",
                format!(
                    "no network interface named {:?} on this machine (`ip link` lists them)",
                    self.interface
                ),
            );
        }
        if let Ok(meta) = std::fs::symlink_metadata(&self.control_socket)
            && !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type())
        {
            out.push(
                "control_socket",
                format!(
                    "{} exists and is not a socket ({}); the daemon replaces only a stale \
                     socket, so choose another path",
                    self.control_socket.display(),
                    if meta.is_dir() {
                        "a directory"
                    } else {
                        "a file"
                    }
                ),
            );
        }
        if let Some(parent) = self.control_socket.parent().filter(|p| p.is_absolute()) {
            // The daemon creates missing directories, so the question is
            // whether the nearest existing ancestor lets it.
            let existing = parent.ancestors().find(|a| a.exists());
            match existing {
                Some(dir) if !dir.is_dir() => out.push(
                    "control_socket",
                    format!("{} is not a directory", dir.display()),
                ),
                Some(dir) if !is_writable_dir(dir) => out.push(
                    "control_socket",
                    if dir == parent {
                        format!(
                            "cannot create the socket in {}: no write access",
                            dir.display()
                        )
                    } else {
                        format!(
                            "cannot create {}: no write access to {}",
                            parent.display(),
                            dir.display()
                        )
                    },
                ),
                _ => {}
            }
        }
        self.check_socket_folder(&mut out);
        self.check_backends_on_this_machine(&mut out);
        self.check_sync_environment(&mut out);
        self.tunnel_problems(&TunnelMachine::read(&self.interface), &mut out);
        out.0
    }

    /// The outer source of the tunnel modes on this machine: `[tunnel]
    /// source`, else the interface's primary IPv4 address. `None`: neither
    /// (`check_environment` refuses that when a VIP uses a tunnel).
    pub fn tunnel_source(&self) -> Option<Ipv4Addr> {
        self.tunnel
            .source
            .or_else(|| netdev::addresses().primary_ipv4(&self.interface))
    }

    /// The `SLB_TUNNEL` entry for this file on this machine.
    pub fn tunnel_settings(&self) -> lb_common::TunnelSettings {
        self.tunnel
            .settings(self.tunnel_source().unwrap_or(Ipv4Addr::UNSPECIFIED))
    }

    /// What the tunnel modes need of this machine, checked only when a VIP
    /// uses one: forwarding on the interface (`bpf_fib_lookup` answers
    /// "forwarding disabled" for an interface that does not forward, and
    /// every frame would be dropped), and an outer source that is this
    /// host's (the ICMP errors routers send about the tunnel come back to
    /// it, and the backends' decap accepts only the sources it was given).
    fn tunnel_problems(&self, m: &TunnelMachine, out: &mut Problems) {
        let Some((first, vip)) = self
            .vips
            .iter()
            .enumerate()
            .find(|(_, v)| v.forwarding != Forwarding::Dsr)
        else {
            return;
        };
        // A missing interface is reported on its own.
        if m.forwarding == Some(false) {
            let others = self
                .vips
                .iter()
                .filter(|v| v.forwarding != Forwarding::Dsr)
                .count()
                - 1;
            out.push(
                "interface",
                format!(
                    "forwarding is off on {iface} (net.ipv4.conf.{key}.forwarding = 0), but \
                     {label}{more} forwards by {mode}: the kernel's route lookup from XDP \
                     (bpf_fib_lookup) refuses to route for an interface that does not \
                     forward, so every tunnelled frame would be dropped; enable it with \
                     `sysctl -w net.ipv4.conf.{key}.forwarding=1` (and keep it in \
                     /etc/sysctl.d/ across reboots)",
                    iface = self.interface,
                    key = sysctl_name(&self.interface),
                    label = vip_label(first, &vip.name),
                    more = match others {
                        0 => String::new(),
                        n => format!(" (and {n} other VIP{})", if n == 1 { "" } else { "s" }),
                    },
                    mode = vip.forwarding,
                ),
            );
        }
        match self.tunnel.source {
            None if m.primary.is_none() && m.forwarding.is_some() => out.push(
                "tunnel source",
                format!(
                    "is not set and {iface} has no IPv4 address to send tunnelled frames \
                     from ({label} forwards by {mode}): add one (`ip addr add ADDR/LEN dev \
                     {iface}`) or set source = \"...\" in [tunnel] to one of this host's \
                     addresses",
                    iface = self.interface,
                    label = vip_label(first, &vip.name),
                    mode = vip.forwarding,
                ),
            ),
            Some(s) if !m.local.contains(&s) && !s.is_loopback() && !s.is_unspecified() => {
                out.push(
                    "tunnel source",
                    format!(
                        "{s} is not an address of this host: the ICMP errors routers send \
                         about tunnelled frames would go to whoever holds it, and the \
                         backends' decap would accept frames from a source this node does \
                         not own; give one of this host's addresses (`ip -4 addr` lists \
                         them), or leave source out to use {iface}'s primary address",
                        iface = self.interface,
                    ),
                );
            }
            _ => {}
        }
    }

    /// The daemon refuses a socket folder others could replace the socket
    /// in (see `control::bind`); `check` says so first.
    fn check_socket_folder(&self, out: &mut Problems) {
        if let Some(parent) = self.control_socket.parent().filter(|p| p.is_dir())
            && let Some(why) = crate::control::unsafe_socket_dir(parent)
        {
            out.push("control_socket", why);
        }
    }

    /// Every warning about the file: its own (`warnings`), then this
    /// machine's (`environment_warnings`).
    pub fn all_warnings(&self) -> Vec<Problem> {
        let mut out = self.warnings();
        out.extend(self.environment_warnings());
        out
    }

    /// What is allowed on this machine but probably not meant: `check`
    /// prints these, `run` and a reload log them.
    pub fn environment_warnings(&self) -> Vec<Problem> {
        let mut out = Problems::default();
        self.warn_vips_not_held(&Machine::read(&self.interface), &mut out);
        out.0
    }

    /// A VIP reaches the program either because the interface holds it (the
    /// host answers ARP for it) or because a router sends it here (a routed
    /// VIP); only the first can be seen from here.
    fn warn_vips_not_held(&self, m: &Machine, out: &mut Problems) {
        // Announced VIPs are routed here by design: the router sends their
        // traffic to this host's own address, so no interface holds them.
        if self.announce.is_some() || netdev::ifindex(&self.interface).is_none() {
            return;
        }
        for (i, vip) in self.vips.iter().enumerate() {
            if !m.addrs.holds(&self.interface, vip.address) {
                out.push(
                    format!("{} address", vip_label(i, &vip.name)),
                    format!(
                        "{addr} is not an address of {iface}, so this host answers no ARP \
                         for it and clients on the link cannot reach the VIP: add it with \
                         `ip addr add {addr}/32 dev {iface}`. This is fine if a router \
                         sends the VIP's traffic to this host (a routed VIP: a static \
                         route, BGP or ECMP)",
                        addr = vip.address,
                        iface = self.interface
                    ),
                );
            }
        }
    }

    /// Backends that are this host or its router: traffic sent to them is
    /// lost or loops, and nothing in the file alone shows it.
    fn check_backends_on_this_machine(&self, out: &mut Problems) {
        let m = Machine::read(&self.interface);
        for (i, vip) in self.vips.iter().enumerate() {
            for b in &vip.backends {
                let label = format!(
                    "{} backend {}:{}",
                    vip_label(i, &vip.name),
                    b.address,
                    b.port
                );
                m.backend_problems(b, vip, &label, out);
            }
        }
    }
}

/// What `check` would say about `b` on this machine, with `interface` the
/// LB's: the same rules for a backend added at run time as for one in the
/// file.
pub fn backend_machine_problems(
    b: &BackendConfig,
    vip: &VipConfig,
    interface: &str,
) -> Vec<Problem> {
    let mut out = Problems::default();
    let label = format!("backend {}:{}", b.address, b.port);
    Machine::read(interface).backend_problems(b, vip, &label, &mut out);
    out.0
}

/// The name of `iface` in a sysctl key: a dot in an interface name (a VLAN
/// such as eth0.100) is written as '/', since dots separate the key's parts.
fn sysctl_name(iface: &str) -> String {
    iface.replace('.', "/")
}

/// What the tunnel checks read of this machine.
#[derive(Debug, Default)]
struct TunnelMachine {
    /// `net.ipv4.conf.<interface>.forwarding`; `None`: unreadable (no
    /// such interface).
    forwarding: Option<bool>,
    /// The interface's primary IPv4 address.
    primary: Option<Ipv4Addr>,
    /// Every IPv4 address of this host.
    local: Vec<Ipv4Addr>,
}

impl TunnelMachine {
    fn read(interface: &str) -> Self {
        let addrs = netdev::addresses();
        Self {
            forwarding: netdev::ipv4_forwarding(interface),
            primary: addrs.primary_ipv4(interface),
            local: addrs.ipv4.iter().map(|(_, a)| *a).collect(),
        }
    }
}

/// This host's addresses and its routers, as the kernel knows them in the
/// daemon's network namespace.
struct Machine {
    interface: String,
    addrs: netdev::Addresses,
    gateways: Vec<Ipv4Addr>,
    /// The gateways' MACs on `interface` (those resolved so far).
    router_macs: Vec<(Ipv4Addr, [u8; 6])>,
}

impl Machine {
    fn read(interface: &str) -> Self {
        let gateways = neigh::default_gateways();
        let neighbours = neigh::read(interface);
        let router_macs = gateways
            .iter()
            .filter_map(|g| neighbours.get(g).map(|mac| (*g, *mac)))
            .collect();
        Self {
            interface: interface.to_owned(),
            addrs: netdev::addresses(),
            gateways,
            router_macs,
        }
    }

    fn address_problem(&self, address: Ipv4Addr, forwarding: Forwarding) -> Option<String> {
        // A loopback address is refused by `validate` already, and every
        // host holds one.
        if address.is_loopback() {
            return None;
        }
        if let Some((iface, _)) = self.addrs.ipv4.iter().find(|(_, a)| *a == address) {
            return Some(format!(
                "{address} is an address of this host (on {iface}): the load balancer \
                 would send the VIP's traffic to itself, where it is lost; give the address \
                 of another machine that serves the VIP"
            ));
        }
        // DSR leaves the VIP as the destination, so the router sends the
        // frame back; a tunnel addresses the outer header to the router
        // itself, which loops nothing (and may well run the decap).
        (forwarding == Forwarding::Dsr && self.gateways.contains(&address)).then(|| {
            format!(
                "{address} is this host's default gateway: the router would send the VIP's \
                 frames straight back here, and they would loop; give the address of a \
                 machine that serves the VIP"
            )
        })
    }

    fn backend_problems(
        &self,
        b: &BackendConfig,
        vip: &VipConfig,
        label: &str,
        out: &mut Problems,
    ) {
        // The VIP's own address is refused by `validate` already.
        if b.address != vip.address
            && let Some(why) = self.address_problem(b.address, vip.forwarding)
        {
            out.push(format!("{label} address"), why);
        }
        // A tunnel VIP's backend has no MAC (`validate` refuses one).
        if vip.forwarding != Forwarding::Dsr {
            return;
        }
        let Some(mac) = b.mac else { return };
        if let Some((iface, _)) = self.addrs.macs.iter().find(|(_, m)| **m == mac) {
            out.push(
                format!("{label} mac"),
                format!(
                    "{} is the MAC of {iface}, this host's own interface{}: frames would \
                     come back to the load balancer instead of reaching the backend; give \
                     the backend's MAC, or leave mac out to resolve it from the neighbour \
                     table",
                    fmt_mac(&mac),
                    if *iface == self.interface {
                        " (the one the program is attached to)"
                    } else {
                        ""
                    }
                ),
            );
        } else if let Some((gw, _)) = self.router_macs.iter().find(|(_, m)| *m == mac) {
            out.push(
                format!("{label} mac"),
                format!(
                    "{} is the MAC of the router ({gw}, this host's default gateway): it \
                     would send the VIP's frames back here, and they would loop between \
                     the two; give the backend's MAC, or leave mac out to resolve it from \
                     the neighbour table",
                    fmt_mac(&mac)
                ),
            );
        }
    }
}

fn is_writable_dir(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // access(2) rather than reading mode bits: it accounts for root, ACLs
    // and read-only mounts the way creating the socket will.
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use crate::config::testutil::*;

    #[test]
    fn environment_checks_interface_and_socket_directory() {
        let dir = TempDir::new("env");
        let mut c = parse(MINIMAL);
        c.interface = "lo".into();
        c.control_socket = dir.0.join("not/yet/there.sock");
        assert_eq!(c.check_environment(), vec![]);

        c.interface = "nosuchnic0".into();
        let file = dir.0.join("file");
        std::fs::write(&file, "").unwrap();
        c.control_socket = file.join("s.sock");
        let p: Vec<String> = c
            .check_environment()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(p[0].starts_with("interface: no network interface named \"nosuchnic0\""));
        assert!(p[1].starts_with("control_socket: ") && p[1].ends_with("is not a directory"));

        // A file or folder where the socket would go is not replaced.
        c.interface = "lo".into();
        for (path, kind) in [(file.clone(), "a file"), (dir.0.clone(), "a directory")] {
            c.control_socket = path;
            let p: Vec<String> = c
                .check_environment()
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(p.len(), 1, "{p:#?}");
            assert!(
                p[0].contains(&format!("exists and is not a socket ({kind})")),
                "{p:?}"
            );
        }
    }

    #[test]
    fn an_announced_vip_is_not_expected_on_the_interface() {
        let mut c = parse(MINIMAL);
        c.interface = "lo".into();
        let held = |c: &crate::config::Config| {
            c.environment_warnings()
                .iter()
                .filter(|w| w.message.contains("is not an address of"))
                .count()
        };
        assert_eq!(held(&c), 1, "192.0.2.10 is not on lo");
        c.announce = Some(crate::config::AnnounceConfig {
            table: 200,
            protocol: 250,
            withdraw_delay: std::time::Duration::from_secs(2),
        });
        assert_eq!(held(&c), 0, "routed here by the announcement");
    }

    #[test]
    fn a_reload_checks_the_machine_against_the_running_interface() {
        let dir = TempDir::new("reload");
        let file = dir.0.join("lb.toml");
        // The file moves to lo (staged for the next restart); the daemon
        // runs on an interface this machine does not have (it has gone):
        // the old code checked the file's interface, and for the wrong one.
        let text = MINIMAL.replace("\"eth0\"", "\"lo\"");
        let text = format!(
            "control_socket = \"{}\"\n{text}",
            dir.0.join("s.sock").display()
        );
        std::fs::write(&file, text).unwrap();
        let c = crate::config::Config::load_for_reload(&file, "lo").unwrap();
        assert_eq!(c.interface, "lo");
        let err = crate::config::Config::load_for_reload(&file, "nosuchnic1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"nosuchnic1\""),
            "checked on the running one: {err}"
        );
        // A new name that is no interface here is refused: the next start
        // would refuse the file.
        let text = MINIMAL.replace("\"eth0\"", "\"nosuchnic0\"");
        let text = format!(
            "control_socket = \"{}\"\n{text}",
            dir.0.join("s.sock").display()
        );
        std::fs::write(&file, text).unwrap();
        assert!(crate::config::Config::load_for_this_machine(&file).is_err());
        let err = crate::config::Config::load_for_reload(&file, "lo")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"nosuchnic0\""), "{err}");
    }

    #[test]
    fn a_socket_folder_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = TempDir::new("env-sockdir");
        let mut c = parse(MINIMAL);
        c.interface = "lo".into();
        c.control_socket = dir.0.join("s.sock");
        for (mode, refused) in [
            (0o755, false),
            (0o775, true),
            (0o777, true),
            (0o1777, false),
        ] {
            std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(mode)).unwrap();
            let p = c.check_environment();
            assert_eq!(p.len(), usize::from(refused), "mode {mode:o}: {p:?}");
            if refused {
                assert!(
                    p[0].message.contains("writable by others")
                        && p[0].message.contains("chmod go-w"),
                    "{p:?}"
                );
            }
        }
    }

    mod tunnel {
        use std::net::Ipv4Addr;

        use super::super::{Machine, TunnelMachine};
        use crate::config::{Config, Forwarding, Problems, testutil::*};

        /// Two VIPs forwarding by `modes`, on interface `iface`.
        fn config(iface: &str, modes: [Forwarding; 2], tunnel: &str) -> Config {
            let mut c = parse(&format!(
                "interface = \"{iface}\"\n[tunnel]\n{tunnel}\n\
                 [[vip]]\nname = \"a\"\naddress = \"192.0.2.10\"\nport = 80\n\
                 [[vip.backend]]\naddress = \"10.9.0.11\"\nport = 80\n\
                 [[vip]]\nname = \"b\"\naddress = \"192.0.2.10\"\nport = 443\n\
                 [[vip.backend]]\naddress = \"10.9.0.11\"\nport = 443\n"
            ));
            for (v, m) in c.vips.iter_mut().zip(modes) {
                v.forwarding = m;
            }
            c
        }

        fn machine(forwarding: Option<bool>, primary: Option<[u8; 4]>) -> TunnelMachine {
            TunnelMachine {
                forwarding,
                primary: primary.map(Ipv4Addr::from),
                local: primary
                    .into_iter()
                    .map(Ipv4Addr::from)
                    .chain([Ipv4Addr::new(198, 51, 100, 1)])
                    .collect(),
            }
        }

        fn found(c: &Config, m: &TunnelMachine) -> Vec<String> {
            let mut out = Problems::default();
            c.tunnel_problems(m, &mut out);
            out.0.iter().map(ToString::to_string).collect()
        }

        #[test]
        fn forwarding_off_is_refused_with_the_command_that_fixes_it() {
            let c = config("eth0", [Forwarding::Dsr, Forwarding::Gue], "");
            assert_eq!(
                found(&c, &machine(Some(false), Some([192, 0, 2, 2]))),
                [
                    "interface: forwarding is off on eth0 (net.ipv4.conf.eth0.forwarding = 0), \
                  but vip \"b\" forwards by gue: the kernel's route lookup from XDP \
                  (bpf_fib_lookup) refuses to route for an interface that does not forward, \
                  so every tunnelled frame would be dropped; enable it with `sysctl -w \
                  net.ipv4.conf.eth0.forwarding=1` (and keep it in /etc/sysctl.d/ across \
                  reboots)"
                ]
            );
            assert_eq!(
                found(&c, &machine(Some(true), Some([192, 0, 2, 2]))),
                Vec::<String>::new()
            );
            // A VLAN's dots are slashes in a sysctl key; the others are counted.
            let c = config("eth0.100", [Forwarding::Ipip, Forwarding::Gue], "");
            let p = found(&c, &machine(Some(false), Some([192, 0, 2, 2])));
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(
                p[0].contains("vip \"a\" (and 1 other VIP) forwards by ipip")
                    && p[0].contains("`sysctl -w net.ipv4.conf.eth0/100.forwarding=1`"),
                "{p:?}"
            );
        }

        #[test]
        fn dsr_alone_needs_nothing_of_the_tunnel() {
            let c = config("eth0", [Forwarding::Dsr; 2], "source = \"203.0.113.9\"");
            assert_eq!(found(&c, &machine(Some(false), None)), Vec::<String>::new());
        }

        #[test]
        fn an_unset_source_needs_an_address_on_the_interface() {
            let c = config("eth0", [Forwarding::Ipip, Forwarding::Dsr], "");
            assert_eq!(
                found(&c, &machine(Some(true), None)),
                [
                    "tunnel source: is not set and eth0 has no IPv4 address to send tunnelled \
                  frames from (vip \"a\" forwards by ipip): add one (`ip addr add ADDR/LEN \
                  dev eth0`) or set source = \"...\" in [tunnel] to one of this host's \
                  addresses"
                ]
            );
            // A missing interface is reported on its own, once.
            assert_eq!(found(&c, &machine(None, None)), Vec::<String>::new());
            // Set, it need not be on the interface: any of this host's.
            let c = config(
                "eth0",
                [Forwarding::Ipip, Forwarding::Dsr],
                "source = \"198.51.100.1\"",
            );
            assert_eq!(found(&c, &machine(Some(true), None)), Vec::<String>::new());
        }

        #[test]
        fn a_source_that_is_not_this_hosts_is_refused() {
            let c = config(
                "eth0",
                [Forwarding::Gue, Forwarding::Gue],
                "source = \"203.0.113.9\"",
            );
            let p = found(&c, &machine(Some(true), Some([192, 0, 2, 2])));
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(
                p[0].starts_with("tunnel source: 203.0.113.9 is not an address of this host")
                    && p[0].ends_with("or leave source out to use eth0's primary address"),
                "{p:?}"
            );
        }

        #[test]
        fn the_settings_default_to_the_interfaces_address() {
            // lo always holds 127.0.0.1 (its first address).
            let mut c = config("lo", [Forwarding::Gue, Forwarding::Dsr], "");
            assert_eq!(c.tunnel_source(), Some(Ipv4Addr::LOCALHOST));
            assert_eq!(c.tunnel_settings().src_addr, [127, 0, 0, 1]);
            c.tunnel.source = Some(Ipv4Addr::new(192, 0, 2, 1));
            assert_eq!(c.tunnel_settings().src_addr, [192, 0, 2, 1]);
            c.interface = "nosuchnic0".into();
            c.tunnel.source = None;
            assert_eq!(c.tunnel_source(), None);
            assert_eq!(c.tunnel_settings().src_addr, [0; 4]);
        }

        /// The router check is DSR's (the VIP stays the destination, so the
        /// router sends the frame back); a tunnel addresses the router
        /// itself. This host's own address is wrong in every mode.
        #[test]
        fn a_gateway_is_a_possible_tunnel_backend_but_this_host_is_not() {
            let gw = Ipv4Addr::new(10, 9, 0, 1);
            let m = Machine {
                interface: "eth0".into(),
                addrs: crate::netdev::Addresses {
                    ipv4: vec![("eth0".into(), Ipv4Addr::new(10, 9, 0, 2))],
                    macs: Default::default(),
                },
                gateways: vec![gw],
                router_macs: vec![],
            };
            for (octet, mode, want) in [
                (1, Forwarding::Dsr, 1),
                (1, Forwarding::Gue, 0),
                (1, Forwarding::Ipip, 0),
                (2, Forwarding::Dsr, 1),
                (2, Forwarding::Gue, 1),
            ] {
                let mut c = config("eth0", [mode, mode], "");
                c.vips[0].backends[0].address = Ipv4Addr::new(10, 9, 0, octet);
                let mut out = Problems::default();
                m.backend_problems(&c.vips[0].backends[0], &c.vips[0], "b", &mut out);
                assert_eq!(out.0.len(), want, "10.9.0.{octet} {mode}: {:?}", out.0);
            }
        }
    }
}
