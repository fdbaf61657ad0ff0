//! The daemon side of the tunnel modes for real: `stickylb run` with an
//! IP-in-IP and a GUE VIP in a namespace. `check` refuses the file while
//! the interface does not forward; the daemon writes `SLB_TUNNEL` (read
//! back here through its pin), shows each VIP's mode and its backends as
//! routed, rewrites the entry on a reload that changes `[tunnel]`, and a
//! restart keeps it. Frames are not looked at here (see the fixtures and
//! the end-to-end tests of the tunnel modes). Needs root (CI is root).

use std::{path::Path, process::Stdio, time::Duration};

use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{ForwardingMode, TunnelSettings, VipInfo, VipKey, map_names};
use lb_user::{api::MacSource, config::Forwarding, control::Request, lb::LookupResult};
use stickylb_tests::{
    daemon::{Daemon, topology_with_pin},
    netns::{LB_ADDR, Topology, VIP, backend_addr},
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

const FAST_HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";

/// Two VIPs on the topology's VIP address: "tun-ipip" (port 80) and
/// "tun-gue" (port 8080), each with every backend's port 80; `tunnel`: the
/// lines of `[tunnel]`.
fn config(topo: &Topology, pin: &Path, tunnel: &str) -> String {
    let mut s = format!(
        "interface = \"eth0\"\nxdp_mode = \"driver\"\npin_path = \"{}\"\n\
         control_socket = \"{}\"\nmetrics_listen = \"off\"\naffinity_capacity = 65536\n\n\
         [health]\n{FAST_HEALTH}\n\n[tunnel]\n{tunnel}\n",
        pin.display(),
        topo.control_socket().display()
    );
    for (name, port, mode) in [("tun-ipip", 80, "ipip"), ("tun-gue", 8080, "gue")] {
        s += &format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"{VIP}\"\nport = {port}\n\
             forwarding = \"{mode}\"\n"
        );
        for i in 0..topo.backends.len() {
            s += &format!(
                "\n[[vip.backend]]\naddress = \"{}\"\nport = 80\n",
                backend_addr(i)
            );
        }
    }
    s
}

/// `stickylb check -c FILE` in the LB's namespace: exit code and stderr.
fn check(topo: &Topology, file: &Path) -> (i32, String) {
    let out = topo
        .lb
        .command(STICKYLB)
        .args(["check", "-c"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pinned_tunnel(pin: &Path) -> TunnelSettings {
    let data = MapData::from_pin(pin.join(map_names::TUNNEL)).expect("SLB_TUNNEL is pinned");
    let map: Array<MapData, TunnelSettings> =
        Array::try_from(Map::Array(data)).expect("an array of TunnelSettings");
    map.get(&0, 0).unwrap()
}

/// Each pinned VIP's port and forwarding mode, by port.
fn pinned_modes(pin: &Path) -> Vec<(u16, Option<ForwardingMode>)> {
    let data = MapData::from_pin(pin.join(map_names::VIPS)).expect("SLB_VIPS is pinned");
    let map: HashMap<MapData, VipKey, VipInfo> =
        HashMap::try_from(Map::HashMap(data)).expect("a hash of VipKey to VipInfo");
    let mut out: Vec<(u16, Option<ForwardingMode>)> = map
        .iter()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.port(), ForwardingMode::from_u8(v.forwarding))
        })
        .collect();
    out.sort_unstable_by_key(|(p, _)| *p);
    out
}

fn expected(gue_port: u16) -> TunnelSettings {
    TunnelSettings {
        // No `source`: the interface's primary address.
        src_addr: LB_ADDR.octets(),
        src_prefix: [0; 4],
        src_prefix_len: 0,
        ttl: 64,
        gue_port: gue_port.to_be_bytes(),
        _pad: [0; 4],
    }
}

#[test]
fn tunnel_vips_run_show_their_mode_and_keep_slb_tunnel_written() {
    let (topo, pin) = topology_with_pin(2, 1, BACKEND.as_ref()).unwrap();
    let text = config(&topo, &pin.0, "");
    let file = topo.tmp.join("tunnel-check.toml");
    std::fs::write(&file, &text).unwrap();

    // Forwarding off: refused, saying how to turn it on.
    topo.lb
        .sysctl("net.ipv4.conf.eth0.forwarding", "0")
        .unwrap();
    let (code, err) = check(&topo, &file);
    println!("check with forwarding off: exit {code}: {}", err.trim());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.lines().any(|l| l
            == "  interface: forwarding is off on eth0 (net.ipv4.conf.eth0.forwarding = 0), but \
                vip \"tun-ipip\" (and 1 other VIP) forwards by ipip: the kernel's route lookup \
                from XDP (bpf_fib_lookup) refuses to route for an interface that does not \
                forward, so every tunnelled frame would be dropped; enable it with `sysctl -w \
                net.ipv4.conf.eth0.forwarding=1` (and keep it in /etc/sysctl.d/ across reboots)"),
        "{err}"
    );
    assert!(err.contains("invalid config: 1 problem"), "{err}");
    topo.lb
        .sysctl("net.ipv4.conf.eth0.forwarding", "1")
        .unwrap();
    let (code, err) = check(&topo, &file);
    assert_eq!(code, 0, "{err}");

    // Running: the modes, routed backends, the tunnel entry.
    let mut d = Daemon::start(&topo, STICKYLB.as_ref(), &text, &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    let s = d.status().unwrap();
    let modes: Vec<(&str, Forwarding)> = s
        .vips
        .iter()
        .map(|v| (v.name.as_str(), v.forwarding))
        .collect();
    assert_eq!(
        modes,
        [("tun-ipip", Forwarding::Ipip), ("tun-gue", Forwarding::Gue)]
    );
    for v in &s.vips {
        assert_eq!(v.alive_backends, 2, "{v:?}");
        for b in &v.backends {
            assert_eq!((b.mac.as_deref(), b.mac_source), (None, MacSource::Routed));
        }
    }
    let t = s.tunnel.expect("status shows the tunnel settings");
    assert_eq!((t.source, t.gue_port, t.ttl), (LB_ADDR, 6080, 64));
    assert_eq!(pinned_tunnel(&pin.0), expected(6080));
    assert_eq!(
        pinned_modes(&pin.0),
        [
            (80, Some(ForwardingMode::Ipip)),
            (8080, Some(ForwardingMode::Gue))
        ]
    );
    let (code, out, err) = d.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    println!("{out}");
    assert!(
        out.contains("tunnel: outer source 10.77.0.1, GUE port 6080, TTL 64"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "VIP tun-gue {VIP}:8080/tcp  table 65537  affinity timeout 300s  forwarding gue  2/2 \
             backends alive"
        )),
        "{out}"
    );
    assert_eq!(out.matches("(routed)").count(), 4, "{out}");
    // The pick is the mode's no more than DSR's: lookup names a backend.
    let r: Vec<LookupResult> = serde_json::from_value(
        d.call(&Request::Lookup {
            client: "10.77.0.2".parse().unwrap(),
            vip: None,
        })
        .unwrap(),
    )
    .unwrap();
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|l| l.backend.is_some()), "{r:?}");

    // A reload that changes gue_port rewrites the entry, and says so.
    std::fs::write(&d.config, config(&topo, &pin.0, "gue_port = 7000")).unwrap();
    let (code, out, err) = d.cli(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "reloaded: tunnel: gue_port 6080 -> 7000");
    assert_eq!(pinned_tunnel(&pin.0), expected(7000));
    assert_eq!(d.status().unwrap().tunnel.unwrap().gue_port, 7000);

    // A restart adopts it as it is, whether the daemon stopped or died.
    d.stop().unwrap();
    assert_eq!(pinned_tunnel(&pin.0), expected(7000), "kept pinned");
    d.restart(&topo, &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    assert_eq!(pinned_tunnel(&pin.0), expected(7000));
    let log = d.log_text();
    assert!(
        !log.lines()
            .any(|l| l.contains("start: ") && l.contains("tunnel: ")),
        "a restart planned a tunnel change:\n{log}"
    );
    assert_eq!(
        log.matches("tunnel: outer source 10.77.0.1, GUE port 7000, TTL 64")
            .count(),
        1,
        "{log}"
    );
    d.kill9();
    d.restart(&topo, &[]).unwrap();
    d.assert_up(Duration::from_secs(5));
    assert_eq!(pinned_tunnel(&pin.0), expected(7000));
    d.unload(&topo).unwrap();
}
