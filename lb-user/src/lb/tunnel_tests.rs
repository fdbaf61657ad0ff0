//! The tunnel modes against `FakeMaps`: `SLB_TUNNEL` written on start,
//! left alone on adoption, rewritten (and planned) on reload; a tunnel
//! VIP's backends alive without a MAC; a VIP changing mode; the pick (and
//! so `lookup`) the same in every mode.

use std::net::Ipv4Addr;

use lb_common::{TunnelSettings, backend_flags};

use super::{
    Lb, MacSource,
    fake::{FakeMaps, Op},
};
use crate::{
    api::BackendState,
    config::{Config, Forwarding},
    health::State,
    util::monotonic_ns,
};

/// One VIP "web" forwarding by `mode` with three backends in 10.9.0.0/24
/// (another subnet than the interface's: a tunnel needs no adjacency), a
/// `[tunnel]` section of `tunnel`'s lines, and MACs only for DSR.
fn config(mode: Forwarding, tunnel: &str) -> Config {
    let mut s = format!(
        "interface = \"lo\"\n[tunnel]\nsource = \"192.0.2.1\"\n{tunnel}\n\n\
         [[vip]]\nname = \"web\"\naddress = \"198.51.100.10\"\nport = 80\n\
         table_size = 251\nforwarding = \"{mode}\"\n"
    );
    for octet in [11, 12, 13] {
        s += &format!("\n[[vip.backend]]\naddress = \"10.9.0.{octet}\"\nport = 80\n");
        if mode == Forwarding::Dsr {
            s += &format!("mac = \"02:00:00:00:00:{octet:02x}\"\n");
        }
    }
    Config::parse(&s).expect("valid config")
}

/// Started on fresh maps, every backend up, the log kept.
fn started(cfg: &Config) -> Lb<FakeMaps> {
    let mut lb = Lb::start(FakeMaps::default(), cfg).unwrap();
    let ids: Vec<u32> = lb.vips()[0].backends.iter().map(|b| b.id).collect();
    for id in ids {
        lb.set_health(id, State::Up, "test").unwrap();
    }
    lb
}

fn settings(gue_port: u16, ttl: u8) -> TunnelSettings {
    TunnelSettings {
        src_addr: [192, 0, 2, 1],
        src_prefix: [0; 4],
        src_prefix_len: 0,
        ttl,
        gue_port: gue_port.to_be_bytes(),
        _pad: [0; 4],
    }
}

fn tunnel_writes(log: &[Op]) -> Vec<TunnelSettings> {
    log.iter()
        .filter_map(|op| match op {
            Op::SetTunnel(t) => Some(*t),
            _ => None,
        })
        .collect()
}

#[test]
fn start_writes_the_tunnel_settings_once_before_any_vip() {
    let cfg = config(
        Forwarding::Ipip,
        "source_prefix = \"10.200.0.0/16\"\nttl = 32",
    );
    let mut lb = Lb::start(FakeMaps::default(), &cfg).unwrap();
    let log = lb.maps_mut().take_log();
    let want = TunnelSettings {
        src_prefix: [10, 200, 0, 0],
        src_prefix_len: 16,
        ..settings(6080, 32)
    };
    assert_eq!(tunnel_writes(&log), [want], "{log:?}");
    assert!(matches!(log[0], Op::SetTunnel(_)), "first: {log:?}");
    assert_eq!(lb.maps().tunnel, want);
    assert_eq!(lb.tunnel(), want);
    // The VIP's own entry says how it forwards, as before.
    let vip = lb.maps().vips.values().next().unwrap();
    assert_eq!(vip.forwarding, lb_common::ForwardingMode::Ipip.as_u8());
}

#[test]
fn a_restart_adopts_the_tunnel_settings_and_writes_them_only_if_the_file_changed() {
    let cfg = config(Forwarding::Gue, "");
    let mut pinned = started(&cfg).into_maps();
    pinned.take_log();
    let lb = Lb::start(pinned, &cfg).unwrap();
    assert_eq!(
        lb.maps().log,
        Vec::<Op>::new(),
        "adoption wrote to the maps"
    );
    assert_eq!(lb.tunnel(), settings(6080, 64));

    let mut pinned = lb.into_maps();
    let changed = config(Forwarding::Gue, "gue_port = 7000");
    let lb = Lb::start(pinned.clone(), &changed).unwrap();
    assert_eq!(tunnel_writes(&lb.maps().log), [settings(7000, 64)]);
    // What the file changed while no daemon ran is planned like a reload.
    pinned.take_log();
    let adopted = Lb::adopted(pinned, &changed).unwrap();
    let plan = adopted.plan_config(&changed, Vec::new()).unwrap();
    assert_eq!(plan.to_string(), "tunnel: gue_port 6080 -> 7000");
}

#[test]
fn a_reload_plans_and_applies_a_tunnel_change_and_nothing_else() {
    let mut lb = started(&config(Forwarding::Gue, ""));
    lb.maps_mut().take_log();
    let new = config(Forwarding::Gue, "gue_port = 7000\nttl = 16");
    let plan = lb.plan_config(&new, Vec::new()).unwrap();
    assert!(!plan.is_empty());
    assert_eq!(
        plan.to_string(),
        "tunnel: gue_port 6080 -> 7000, ttl 64 -> 16"
    );
    let fields: Vec<(&str, &str, &str)> = plan
        .report
        .tunnel
        .iter()
        .map(|s| (s.field.as_str(), s.from.as_str(), s.to.as_str()))
        .collect();
    assert_eq!(fields, [("gue_port", "6080", "7000"), ("ttl", "64", "16")]);
    // The reply carries it as JSON, and an older reply without it parses.
    let json = serde_json::to_value(&plan.report).unwrap();
    assert_eq!(json["tunnel"][0]["field"], "gue_port");
    lb.apply(plan).unwrap();
    assert_eq!(
        lb.maps_mut().take_log(),
        [Op::SetTunnel(settings(7000, 16))],
        "only the tunnel entry changes"
    );
    // Applied: the same file again plans nothing.
    let again = lb.plan_config(&new, Vec::new()).unwrap();
    assert!(again.is_empty(), "{again}");
    assert!(
        serde_json::to_value(&again.report)
            .unwrap()
            .get("tunnel")
            .is_none()
    );
}

#[test]
fn a_source_prefix_and_source_change_show_as_the_file_writes_them() {
    let mut lb = started(&config(Forwarding::Ipip, ""));
    let mut new = config(Forwarding::Ipip, "source_prefix = \"10.200.0.0/16\"");
    new.tunnel.source = Some(Ipv4Addr::new(192, 0, 2, 5));
    let plan = lb.plan_config(&new, Vec::new()).unwrap();
    assert_eq!(
        plan.to_string(),
        "tunnel: source 192.0.2.1 -> 192.0.2.5, source_prefix (none) -> 10.200.0.0/16"
    );
    lb.apply(plan).unwrap();
    assert_eq!(lb.maps().tunnel.src_addr, [192, 0, 2, 5]);
    assert_eq!(
        (lb.maps().tunnel.src_prefix, lb.maps().tunnel.src_prefix_len),
        ([10, 200, 0, 0], 16)
    );
}

#[test]
fn a_tunnel_vips_backends_are_alive_without_a_mac() {
    for mode in [Forwarding::Ipip, Forwarding::Gue] {
        let lb = started(&config(mode, ""));
        let v = &lb.vips()[0];
        assert_eq!(v.backends.iter().filter(|b| b.alive()).count(), 3, "{mode}");
        for b in &v.backends {
            assert_eq!(b.mac_source, MacSource::Routed);
            let info = lb.maps().backends[b.id as usize];
            assert_eq!(info.mac, [0; 6], "no MAC in the map");
            assert_ne!(info.flags & backend_flags::ALIVE, 0, "alive in the map");
            assert_eq!(info.addr, b.addr.ip().octets(), "the outer destination");
        }
        // The table is served from all three.
        let owners: std::collections::BTreeSet<u32> = v.table.iter().copied().collect();
        assert_eq!(owners.len(), 3, "{mode}");
    }
}

#[test]
fn a_routed_backend_ignores_the_neighbour_table() {
    let mut lb = started(&config(Forwarding::Gue, ""));
    let id = lb.vips()[0].backends[0].id;
    lb.maps_mut().take_log();
    lb.set_neighbour_mac(id, Some([2, 0, 0, 0, 0, 0x11]))
        .unwrap();
    lb.set_neighbour_mac(id, None).unwrap();
    assert_eq!(lb.maps_mut().take_log(), Vec::<Op>::new());
    assert!(lb.vips()[0].backends[0].alive());
    assert_eq!(lb.vips()[0].backends[0].mac, None);
}

#[test]
fn status_shows_the_mode_and_a_routed_backend() {
    let lb = started(&config(Forwarding::Ipip, ""));
    let s = lb.status(|_, _| 0, |_| 0).unwrap();
    assert_eq!(s[0].forwarding, Forwarding::Ipip);
    let b = &s[0].backends[0];
    assert_eq!(
        (b.state, b.mac.as_deref(), b.mac_source),
        (BackendState::Up, None, MacSource::Routed)
    );
    let json = serde_json::to_value(&s[0]).unwrap();
    assert_eq!(json["forwarding"], "ipip");
    assert_eq!(json["backends"][0]["mac_source"], "routed");
    // DSR as it always was.
    let lb = started(&config(Forwarding::Dsr, ""));
    let s = lb.status(|_, _| 0, |_| 0).unwrap();
    assert_eq!(s[0].forwarding, Forwarding::Dsr);
    assert_eq!(s[0].backends[0].mac_source, MacSource::Config);
    assert_eq!(s[0].backends[0].mac.as_deref(), Some("02:00:00:00:00:0b"));
}

/// Where each of `clients` goes on the VIP, as `lookup` predicts it.
fn predictions(lb: &Lb<FakeMaps>, clients: &[Ipv4Addr]) -> Vec<std::net::SocketAddrV4> {
    clients
        .iter()
        .map(|c| {
            let r = lb.lookup(*c, Some("web")).unwrap();
            r[0].backend
                .unwrap_or_else(|| panic!("{c}: {}", r[0].reason))
        })
        .collect()
}

#[test]
fn lookup_predicts_the_same_backend_in_every_mode() {
    let clients: Vec<Ipv4Addr> = (0..300u32)
        .map(|i| Ipv4Addr::from(0xcb00_7100 + i * 7919))
        .collect();
    let dsr = predictions(&started(&config(Forwarding::Dsr, "")), &clients);
    let ipip = predictions(&started(&config(Forwarding::Ipip, "")), &clients);
    let gue = predictions(&started(&config(Forwarding::Gue, "")), &clients);
    assert_eq!(ipip, dsr);
    assert_eq!(gue, dsr);
    // Not trivially so: the clients are spread over every backend.
    let used: std::collections::BTreeSet<_> = dsr.iter().collect();
    assert_eq!(used.len(), 3);
    // And it is the table the data path reads: a slot's owner.
    let lb = started(&config(Forwarding::Gue, ""));
    for (c, want) in clients.iter().zip(&gue).take(20) {
        let r = &lb.lookup(*c, Some("web")).unwrap()[0];
        let slot = r.slot.expect("picked from the table");
        let id = lb.vips()[0].table[slot as usize];
        let owner = lb.vips()[0].backends.iter().find(|b| b.id == id).unwrap();
        assert_eq!(owner.addr, *want);
    }
}

#[test]
fn a_vip_moving_to_a_tunnel_keeps_its_clients_and_ids() {
    let mut lb = started(&config(Forwarding::Dsr, ""));
    let vip_id = lb.vips()[0].id;
    let ids: Vec<u32> = lb.vips()[0].backends.iter().map(|b| b.id).collect();
    let table = lb.vips()[0].table.clone();
    let now = monotonic_ns();
    lb.maps_mut().pin(vip_id, [203, 0, 113, 7], ids[1], now);
    lb.maps_mut().take_log();

    let gue = config(Forwarding::Gue, "");
    let plan = lb.plan_config(&gue, Vec::new()).unwrap();
    assert_eq!(
        plan.to_string(),
        "VIP web: forwarding dsr -> gue ~10.9.0.11:80 (mac 02:00:00:00:00:0b -> (routed)) \
         ~10.9.0.12:80 (mac 02:00:00:00:00:0c -> (routed)) \
         ~10.9.0.13:80 (mac 02:00:00:00:00:0d -> (routed))"
    );
    lb.apply(plan).unwrap();
    let log = lb.maps_mut().take_log();
    assert!(!log.iter().any(|op| matches!(op, Op::Purge(_))), "{log:?}");
    assert!(
        !log.iter().any(|op| matches!(op, Op::WriteRing { .. })),
        "same table: {log:?}"
    );
    let v = &lb.vips()[0];
    assert_eq!(v.id, vip_id);
    assert_eq!(v.table, table);
    assert_eq!(v.backends.iter().map(|b| b.id).collect::<Vec<_>>(), ids);
    assert!(v.backends.iter().all(|b| b.alive() && b.routed()));
    for b in &v.backends {
        assert_eq!(lb.maps().backends[b.id as usize].mac, [0; 6]);
    }
    let info = lb.maps().vips.values().next().unwrap();
    assert_eq!(info.forwarding, lb_common::ForwardingMode::Gue.as_u8());
    // The pinned client keeps its backend.
    let r = &lb.lookup([203, 0, 113, 7].into(), Some("web")).unwrap()[0];
    assert_eq!(
        (r.backend, r.reason.as_str()),
        (Some(v.backends[1].addr), "affinity entry")
    );
}

#[test]
fn a_restart_that_moves_a_vip_back_to_dsr_keeps_the_backends_on_the_link() {
    let mut pinned = started(&config(Forwarding::Gue, "")).into_maps();
    pinned.take_log();
    let mut dsr = config(Forwarding::Dsr, "");
    for b in &mut dsr.vips[0].backends {
        b.mac = None;
    }
    let on_link: std::collections::HashMap<Ipv4Addr, [u8; 6]> = [11, 12, 13]
        .map(|o| (Ipv4Addr::new(10, 9, 0, o), [2, 0, 0, 0, 0, o]))
        .into();
    let lb = Lb::start_with_neighbours(pinned.clone(), &dsr, on_link).unwrap();
    let log = &lb.maps().log;
    assert!(
        !log.iter().any(|op| matches!(op, Op::WriteRing { .. })),
        "{log:?}"
    );
    assert!(
        lb.vips()[0]
            .backends
            .iter()
            .all(|b| b.alive() && !b.routed())
    );
    // Without the table, the same restart takes them all out.
    let lb = Lb::start(pinned, &dsr).unwrap();
    assert!(lb.vips()[0].backends.iter().all(|b| !b.alive()));
}

#[test]
fn a_vip_back_to_dsr_takes_its_backends_macs_from_the_neighbour_table() {
    let mut lb = started(&config(Forwarding::Ipip, ""));
    let table = lb.vips()[0].table.clone();
    // On the link: two of the three answer ARP.
    lb.set_neighbour_table(
        [
            (Ipv4Addr::new(10, 9, 0, 11), [2, 0, 0, 0, 0, 0x11]),
            (Ipv4Addr::new(10, 9, 0, 12), [2, 0, 0, 0, 0, 0x12]),
        ]
        .into(),
    );
    let mut dsr = config(Forwarding::Dsr, "");
    for b in &mut dsr.vips[0].backends {
        b.mac = None;
    }
    let plan = lb.plan_config(&dsr, Vec::new()).unwrap();
    assert_eq!(plan.to_string(), "VIP web: forwarding ipip -> dsr");
    lb.apply(plan).unwrap();
    let v = &lb.vips()[0];
    let state: Vec<(bool, MacSource, Option<[u8; 6]>)> = v
        .backends
        .iter()
        .map(|b| (b.alive(), b.mac_source, b.mac))
        .collect();
    assert_eq!(
        state,
        [
            (true, MacSource::Neighbour, Some([2, 0, 0, 0, 0, 0x11])),
            (true, MacSource::Neighbour, Some([2, 0, 0, 0, 0, 0x12])),
            (false, MacSource::Unknown, None),
        ]
    );
    assert_eq!(
        lb.maps().backends[v.backends[0].id as usize].mac,
        [2, 0, 0, 0, 0, 0x11]
    );
    // Only the third backend's slots moved: it cannot be reached by DSR.
    let third = v.backends[2].id;
    for (old, new) in table.iter().zip(&v.table) {
        assert!(
            old == new || *old == third,
            "a slot of a reachable backend moved"
        );
    }
    let s = lb.status(|_, _| 0, |_| 0).unwrap();
    assert_eq!(s[0].backends[2].state, BackendState::UpNoMac);
}

#[test]
fn a_backend_added_live_to_a_tunnel_vip_is_routed_and_refused_a_mac() {
    let mut lb = started(&config(Forwarding::Ipip, ""));
    let addr = std::net::SocketAddrV4::new(Ipv4Addr::new(10, 9, 7, 14), 80);
    let refused = lb
        .add_backend("web", addr, 1, Some([2, 0, 0, 0, 0, 0x14]), |_, _| {
            Vec::new()
        })
        .unwrap_err()
        .to_string();
    assert!(
        refused.starts_with(
            "backend 10.9.7.14:80 mac: 02:00:00:00:00:14 is set, but the VIP forwards by ipip"
        ),
        "{refused}"
    );
    let id = lb
        .add_backend("web", addr, 1, None, |_, _| Vec::new())
        .unwrap();
    let b = lb.vips()[0].backends.iter().find(|b| b.id == id).unwrap();
    assert!(b.routed() && !b.alive(), "not checked yet");
    lb.set_health(id, State::Up, "test").unwrap();
    let b = lb.vips()[0].backends.iter().find(|b| b.id == id).unwrap();
    assert!(b.alive(), "alive on its check alone");
    assert!(lb.vips()[0].table.contains(&id));
    let info = lb.maps().backends[id as usize];
    assert_eq!((info.mac, info.addr), ([0; 6], [10, 9, 7, 14]));
}
