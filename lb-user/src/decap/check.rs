//! `stickylb decap check`: what a backend needs besides the decap program
//! for tunnelled clients to reach its servers, each finding with the exact
//! command that fixes it.
//!
//! The judging is a plain function of what was read (`Facts`), so that it
//! is tested without a machine set up either way.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::InterfaceStatus;

/// How a finding stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// Works in the usual setups; read the detail.
    Warn,
    /// Clients of the VIP will not be served until fixed.
    Fail,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked ("vip 10.0.0.100 on lo", "arp_ignore", ...).
    pub check: String,
    pub level: Level,
    pub detail: String,
    /// The command(s) that fix it, when not `Ok`.
    pub fix: Option<String>,
}

/// What the checks read from the machine.
pub struct Facts<'a> {
    pub interface: &'a str,
    pub vips: &'a [Ipv4Addr],
    /// Every (interface, IPv4 address) of this namespace.
    pub addresses: &'a [(String, Ipv4Addr)],
    /// `net.ipv4.conf.<name>.<key>` for name "all" and the interface;
    /// `None` when unreadable.
    pub sysctl: &'a dyn Fn(&str, &str) -> Option<u32>,
    /// The decap program on the interface.
    pub decap: Option<&'a InterfaceStatus>,
}

fn finding(check: impl Into<String>, level: Level, detail: String, fix: Option<String>) -> Finding {
    Finding {
        check: check.into(),
        level,
        detail,
        fix,
    }
}

/// Every finding, in the order an operator would fix them.
pub fn judge(f: &Facts<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let iface = f.interface;
    out.push(decap_finding(f));
    for &vip in f.vips {
        let on_lo = f.addresses.iter().any(|(i, a)| i == "lo" && *a == vip);
        let elsewhere: Vec<&str> = f
            .addresses
            .iter()
            .filter(|(i, a)| i != "lo" && *a == vip)
            .map(|(i, _)| i.as_str())
            .collect();
        let check = format!("vip {vip} on lo");
        out.push(if on_lo && elsewhere.is_empty() {
            finding(
                check,
                Level::Ok,
                format!("{vip} is on lo: the stack accepts the decapsulated packets to it"),
                None,
            )
        } else if on_lo {
            finding(
                check,
                Level::Fail,
                format!(
                    "{vip} is also on {}: this host would answer ARP for the VIP and draw the \
                     clients' traffic away from the load balancers",
                    elsewhere.join(", ")
                ),
                Some(
                    elsewhere
                        .iter()
                        .map(|i| format!("ip addr del {vip}/32 dev {i}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
            )
        } else {
            finding(
                check,
                Level::Fail,
                format!(
                    "{vip} is not on lo: the stack drops decapsulated packets to it (not a \
                     local address)"
                ),
                Some(format!("ip addr add {vip}/32 dev lo")),
            )
        });
    }
    let get = |name: &str, key: &str| (f.sysctl)(name, key);
    // The kernel uses the larger of "all" and the interface's value for
    // these three.
    let effective = |key: &str| -> Option<u32> { Some(get("all", key)?.max(get(iface, key)?)) };
    let set_both = |key: &str, v: u32| {
        format!("sysctl -w net.ipv4.conf.all.{key}={v} net.ipv4.conf.{iface}.{key}={v}")
    };
    let unreadable = |key: &str| {
        finding(
            key,
            Level::Fail,
            format!("cannot read net.ipv4.conf.{{all,{iface}}}.{key}"),
            None,
        )
    };
    out.push(match effective("arp_ignore") {
        None => unreadable("arp_ignore"),
        Some(v) if v >= 1 => finding(
            "arp_ignore",
            Level::Ok,
            format!("{v}: {iface} answers ARP only for its own addresses, not the VIP on lo"),
            None,
        ),
        Some(v) => finding(
            "arp_ignore",
            Level::Fail,
            format!(
                "{v}: {iface} answers ARP for the VIP on lo, so a router on its segment may \
                 send the VIP's clients here instead of to the load balancers"
            ),
            Some(set_both("arp_ignore", 1)),
        ),
    });
    out.push(match effective("arp_announce") {
        None => unreadable("arp_announce"),
        Some(v) if v >= 2 => finding(
            "arp_announce",
            Level::Ok,
            format!("{v}: ARP requests from {iface} never carry the VIP as their source"),
            None,
        ),
        Some(v) => finding(
            "arp_announce",
            Level::Fail,
            format!(
                "{v}: ARP requests from {iface} may carry the VIP as their source (answering \
                 a client from it), which tells its neighbours the VIP is here"
            ),
            Some(set_both("arp_announce", 2)),
        ),
    });
    out.push(match effective("rp_filter") {
        None => unreadable("rp_filter"),
        Some(0) => finding(
            "rp_filter",
            Level::Ok,
            "0 (off): decapsulated packets are accepted whatever their source".into(),
            None,
        ),
        Some(1) => finding(
            "rp_filter",
            Level::Warn,
            format!(
                "1 (strict): a decapsulated packet arrives on {iface} from the client's \
                 address, and is dropped unless this host's route back to that client leaves \
                 by {iface}. With a default route through {iface} that holds; on a host with \
                 several interfaces it may not. Loose mode (2) accepts any client that is \
                 routable at all"
            ),
            Some(set_both("rp_filter", 2)),
        ),
        Some(v) => finding(
            "rp_filter",
            Level::Ok,
            format!("{v} (loose): decapsulated packets from any routable client are accepted"),
            None,
        ),
    });
    out
}

fn decap_finding(f: &Facts<'_>) -> Finding {
    let iface = f.interface;
    let attach = format!("stickylb decap attach --interface {iface} --allow LB_ADDRESS");
    let Some(st) = f.decap.filter(|s| s.attached) else {
        let why = f
            .decap
            .and_then(|s| s.problem.clone())
            .unwrap_or_else(|| "nothing pinned".into());
        return finding(
            "decap",
            Level::Fail,
            format!(
                "the decap program is not attached to {iface} ({why}): tunnelled packets are \
                 dropped (this kernel has no ipip/fou)"
            ),
            Some(attach),
        );
    };
    let Some(settings) = &st.settings else {
        return finding(
            "decap",
            Level::Fail,
            "attached, but its settings are not pinned".into(),
            Some(format!(
                "stickylb decap detach --interface {iface}; {attach}"
            )),
        );
    };
    if settings.sources.is_empty() {
        return finding(
            "decap",
            Level::Fail,
            "attached, but no source is accepted: every tunnelled packet is dropped".into(),
            Some(attach),
        );
    }
    let sources: Vec<String> = settings.sources.iter().map(ToString::to_string).collect();
    let modes = match (settings.ipip, settings.gue_port) {
        (true, Some(p)) => format!("ip-in-ip and gue (port {p})"),
        (true, None) => "ip-in-ip".into(),
        (false, Some(p)) => format!("gue (port {p})"),
        (false, None) => "nothing".into(),
    };
    let held = f.addresses.iter().any(|(_, a)| *a == settings.address);
    if !held {
        return finding(
            "decap",
            Level::Warn,
            format!(
                "attached ({modes} to {}), but no interface here has {}: the load balancers \
                 must send to this host's address",
                settings.address, settings.address
            ),
            Some(format!(
                "stickylb decap attach --interface {iface} --address ADDRESS_OF_THIS_HOST \
                 --allow ..."
            )),
        );
    }
    finding(
        "decap",
        Level::Ok,
        format!(
            "attached to {iface} in {} mode: {modes} to {} from {}",
            st.mode.unwrap_or("?"),
            settings.address,
            sources.join(", ")
        ),
        None,
    )
}

/// `net.ipv4.conf.<name>.<key>` of this namespace.
pub fn read_sysctl(name: &str, key: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/{key}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::PathBuf};

    use super::*;
    use crate::decap::{Settings, Source};

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 100, 1);
    const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

    fn attached() -> InterfaceStatus {
        InterfaceStatus {
            interface: "eth0".into(),
            pin_dir: PathBuf::from("/sys/fs/bpf/stickylb-decap/eth0"),
            attached: true,
            mode: Some("driver"),
            link_id: Some(3),
            program_id: Some(9),
            settings: Some(Settings {
                address: HOST,
                ipip: true,
                gue_port: Some(6080),
                sources: vec![Source {
                    addr: Ipv4Addr::new(10, 0, 0, 1),
                    len: 32,
                }],
            }),
            counters: Vec::new(),
            problem: None,
        }
    }

    fn run(
        addresses: &[(&str, Ipv4Addr)],
        sysctls: &[(&str, &str, u32)],
        decap: Option<&InterfaceStatus>,
    ) -> Vec<Finding> {
        let values: HashMap<(String, String), u32> = sysctls
            .iter()
            .map(|(n, k, v)| ((n.to_string(), k.to_string()), *v))
            .collect();
        let sysctl = move |n: &str, k: &str| values.get(&(n.into(), k.into())).copied();
        let addresses: Vec<(String, Ipv4Addr)> =
            addresses.iter().map(|(i, a)| (i.to_string(), *a)).collect();
        judge(&Facts {
            interface: "eth0",
            vips: &[VIP],
            addresses: &addresses,
            sysctl: &sysctl,
            decap,
        })
    }

    fn good_sysctls() -> Vec<(&'static str, &'static str, u32)> {
        vec![
            ("all", "arp_ignore", 1),
            ("eth0", "arp_ignore", 0),
            ("all", "arp_announce", 0),
            ("eth0", "arp_announce", 2),
            ("all", "rp_filter", 0),
            ("eth0", "rp_filter", 2),
        ]
    }

    fn level_of<'a>(f: &'a [Finding], check: &str) -> &'a Finding {
        f.iter().find(|x| x.check == check).unwrap()
    }

    #[test]
    fn a_ready_backend_passes_every_check() {
        let st = attached();
        let f = run(&[("lo", VIP), ("eth0", HOST)], &good_sysctls(), Some(&st));
        assert!(f.iter().all(|x| x.level == Level::Ok), "{f:#?}");
        assert_eq!(f.len(), 5);
    }

    #[test]
    fn a_missing_vip_says_how_to_add_it() {
        let st = attached();
        let f = run(&[("eth0", HOST)], &good_sysctls(), Some(&st));
        let vip = level_of(&f, "vip 10.0.100.1 on lo");
        assert_eq!(vip.level, Level::Fail);
        assert_eq!(vip.fix.as_deref(), Some("ip addr add 10.0.100.1/32 dev lo"));
    }

    #[test]
    fn a_vip_on_the_interface_too_is_a_failure() {
        let st = attached();
        let f = run(
            &[("lo", VIP), ("eth0", HOST), ("eth0", VIP)],
            &good_sysctls(),
            Some(&st),
        );
        let vip = level_of(&f, "vip 10.0.100.1 on lo");
        assert_eq!(vip.level, Level::Fail);
        assert_eq!(
            vip.fix.as_deref(),
            Some("ip addr del 10.0.100.1/32 dev eth0")
        );
    }

    #[test]
    fn arp_and_rp_filter_take_the_larger_of_all_and_the_interface() {
        let st = attached();
        let sysctls = [
            ("all", "arp_ignore", 0),
            ("eth0", "arp_ignore", 0),
            ("all", "arp_announce", 1),
            ("eth0", "arp_announce", 0),
            ("all", "rp_filter", 1),
            ("eth0", "rp_filter", 0),
        ];
        let f = run(&[("lo", VIP), ("eth0", HOST)], &sysctls, Some(&st));
        let ignore = level_of(&f, "arp_ignore");
        assert_eq!(ignore.level, Level::Fail);
        assert_eq!(
            ignore.fix.as_deref(),
            Some("sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.eth0.arp_ignore=1")
        );
        assert_eq!(level_of(&f, "arp_announce").level, Level::Fail);
        let rp = level_of(&f, "rp_filter");
        assert_eq!(rp.level, Level::Warn);
        assert!(rp.detail.contains("strict"), "{}", rp.detail);
        assert_eq!(
            rp.fix.as_deref(),
            Some("sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.eth0.rp_filter=2")
        );
    }

    #[test]
    fn decap_must_be_attached_with_sources_to_an_address_of_ours() {
        let f = run(&[("lo", VIP), ("eth0", HOST)], &good_sysctls(), None);
        let d = level_of(&f, "decap");
        assert_eq!(d.level, Level::Fail);
        assert!(
            d.fix
                .as_deref()
                .unwrap()
                .starts_with("stickylb decap attach --interface eth0")
        );

        let mut st = attached();
        st.settings.as_mut().unwrap().sources.clear();
        let f = run(&[("lo", VIP), ("eth0", HOST)], &good_sysctls(), Some(&st));
        assert_eq!(level_of(&f, "decap").level, Level::Fail);

        let st = attached();
        let f = run(&[("lo", VIP)], &good_sysctls(), Some(&st));
        assert_eq!(level_of(&f, "decap").level, Level::Warn);
    }

    #[test]
    fn unreadable_sysctls_fail() {
        let st = attached();
        let f = run(&[("lo", VIP), ("eth0", HOST)], &[], Some(&st));
        assert_eq!(level_of(&f, "rp_filter").level, Level::Fail);
    }
}
