//! The daemon tells the XDP program its interface's MAC (the source MAC of
//! every forwarded frame) through the pinned `SLB_OWN_MAC`, when it attaches
//! and again when it adopts an earlier run's pins. Needs root (CI is root).

use aya::maps::{Array, Map, MapData};
use lb_common::{OwnMac, map_names};
use stickylb_tests::{
    daemon::{Daemon, PinGuard},
    netns::{Topology, TopologyOptions},
};

const STICKYLB: &str = env!("CARGO_BIN_EXE_stickylb-under-test");
const BACKEND: &str = env!("CARGO_BIN_EXE_slb-backend");

fn pinned_own_mac(pin: &std::path::Path) -> Array<MapData, OwnMac> {
    let data = MapData::from_pin(pin.join(map_names::OWN_MAC)).expect("SLB_OWN_MAC is pinned");
    Array::try_from(Map::Array(data)).expect("an array of OwnMac")
}

/// `ip -br link` prints `name state mac flags`.
fn eth0_mac(topo: &Topology) -> [u8; 6] {
    let out = topo.lb.ip(&["-br", "link", "show", "eth0"]).unwrap();
    let text = out
        .split_whitespace()
        .find(|w| w.len() == 17 && w.matches(':').count() == 5)
        .unwrap_or_else(|| panic!("no MAC in {out:?}"));
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(text.split(':')) {
        *m = u8::from_str_radix(b, 16).unwrap();
    }
    mac
}

#[test]
fn the_daemon_writes_the_interface_mac_on_attach_and_on_adoption() {
    let topo = Topology::up(
        &TopologyOptions {
            backends: 1,
            clients: 1,
            redis: None,
        },
        BACKEND.as_ref(),
    )
    .unwrap();
    let pin = PinGuard(topo.daemon_pin());
    let config = topo.config(&pin.0, "kind = \"tcp\"", "");
    let mut d = Daemon::start(&topo, STICKYLB.as_ref(), &config, &[]).unwrap();
    let want = eth0_mac(&topo);
    let have = pinned_own_mac(&pin.0).get(&0, 0).unwrap();
    println!(
        "eth0 {want:02x?}, SLB_OWN_MAC after attach {:02x?}",
        have.mac
    );
    assert_eq!(have, OwnMac::new(want));

    // A pinned map from an earlier run may hold another MAC (the interface's
    // MAC was changed, or the pins came from another host's run): the
    // adopting daemon writes the current one.
    d.kill9();
    let stale = OwnMac::new([0x02, 0x5e, 0, 0, 0, 0x99]);
    pinned_own_mac(&pin.0).set(0, stale, 0).unwrap();
    d.restart(&topo, &[]).unwrap();
    assert!(
        d.log_text().contains("adopted the running data path"),
        "{}",
        d.log_text()
    );
    let have = pinned_own_mac(&pin.0).get(&0, 0).unwrap();
    println!("SLB_OWN_MAC after adoption {:02x?}", have.mac);
    assert_eq!(have, OwnMac::new(want));
    d.stop().unwrap();
}
