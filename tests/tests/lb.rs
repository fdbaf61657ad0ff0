//! The daemon's map bookkeeping (`lb_user::lb::Lb`) against the real maps:
//! only changed slots are written, and a second daemon adopting pinned maps
//! re-identifies every id and writes nothing. Needs root.

use std::{net::Ipv4Addr, path::PathBuf};

use lb_common::VipKey;
use lb_user::{
    config::Config,
    dataplane::{Dataplane, LoadOptions},
    health::State,
    lb::Lb,
};
use stickylb_tests::{daemon::PinGuard, require_root};

fn config(pin: &std::path::Path, backends: usize, weight0: u32) -> Config {
    Config::parse(&config_text(pin, backends, weight0)).expect("valid config")
}

fn config_text(pin: &std::path::Path, backends: usize, weight0: u32) -> String {
    let mut s = format!(
        "interface = \"lo\"\npin_path = \"{}\"\n\n[[vip]]\nname = \"web\"\naddress = \"198.51.100.10\"\nport = 80\ntable_size = 65537\n",
        pin.display()
    );
    for i in 0..backends {
        let w = if i == 0 { weight0 } else { 1 };
        s += &format!(
            "\n[[vip.backend]]\naddress = \"192.0.2.{}\"\nport = 80\nweight = {w}\nmac = \"02:00:00:00:00:{:02x}\"\n",
            10 + i,
            10 + i
        );
    }
    s
}

/// A pin folder of this test process, removed (links detached) on drop.
fn pin_dir(test: &str) -> PinGuard {
    PinGuard(PathBuf::from(format!(
        "/sys/fs/bpf/slb-lbtest{test}-{}",
        std::process::id()
    )))
}

fn load(pin: &std::path::Path) -> Dataplane {
    Dataplane::load(&LoadOptions {
        affinity_capacity: 4096,
        pin_dir: Some(pin.to_owned()),
    })
    .expect("load")
}

fn slots_of(lb: &Lb, id: u32) -> usize {
    lb.vips()[0].table.iter().filter(|&&s| s == id).count()
}

#[test]
fn rewrites_only_changed_slots_and_adopts_without_writing() {
    require_root();
    let pin = pin_dir("1");
    let cfg = config(&pin.0, 4, 1);
    let mut lb = Lb::start(load(&pin.0), &cfg).unwrap();
    let ids: Vec<u32> = lb.vips()[0].backends.iter().map(|b| b.id).collect();

    // Backends come up one by one; each first rebuild writes its share.
    for &id in &ids {
        lb.set_health(id, State::Up, "test").unwrap();
    }
    assert!(lb.vips()[0].table.iter().all(|&s| ids.contains(&s)));

    // A backend going down rewrites exactly the slots it owned.
    let victim = ids[2];
    let owned = slots_of(&lb, victim);
    let r = lb.set_health(victim, State::Down, "test").unwrap().unwrap();
    println!(
        "down: {} slots rewritten (owned {owned}), build {} us, write {} us",
        r.slots_written, r.build_us, r.write_us
    );
    assert_eq!(r.slots_written, owned);
    assert_eq!(slots_of(&lb, victim), 0);
    // Nothing changed: nothing written.
    assert_eq!(lb.rebuild(0).unwrap().slots_written, 0);
    // Coming back takes exactly those slots back.
    let r = lb.set_health(victim, State::Up, "test").unwrap().unwrap();
    assert_eq!((r.slots_written, slots_of(&lb, victim)), (owned, owned));
    // What the kernel holds is what user space thinks.
    let info = lb.vips()[0].info;
    assert_eq!(
        lb.maps().read_ring(info.ring_base, info.ring_size).unwrap(),
        lb.vips()[0].table
    );

    // Drain: the backend's slots go to the others; the ring follows.
    let addr = lb.vips()[0].backends[1].addr;
    let owned = slots_of(&lb, ids[1]);
    let r = lb.set_drain("web", addr, true).unwrap();
    assert_eq!(r.slots_written, owned);

    // A second daemon on the same pinned maps (as after kill -9): same ids,
    // same table, liveness adopted, and no slot written.
    let table = lb.vips()[0].table.clone();
    drop(lb);
    let cfg2 = config(&pin.0, 4, 1);
    let lb2 = Lb::start(load(&pin.0), &cfg2).unwrap();
    let ids2: Vec<u32> = lb2.vips()[0].backends.iter().map(|b| b.id).collect();
    assert_eq!(ids2, ids);
    assert!(
        lb2.vips()[0]
            .backends
            .iter()
            .all(|b| b.health == Some(State::Up))
    );
    // The restarted daemon does not know about the live drain (the config is
    // the source of truth), so the drained backend's slots come back: and
    // only those.
    let back: usize = table
        .iter()
        .zip(&lb2.vips()[0].table)
        .filter(|(a, b)| a != b)
        .inspect(|(_, b)| assert_eq!(**b, ids[1]))
        .count();
    assert_eq!(back, owned);
    let info = lb2.vips()[0].info;
    assert_eq!(
        lb2.maps()
            .read_ring(info.ring_base, info.ring_size)
            .unwrap(),
        lb2.vips()[0].table
    );
    let key = VipKey::new(Ipv4Addr::new(198, 51, 100, 10), 80, 6);
    assert_eq!(lb2.vips()[0].key, key);

    // A third start with the last backend gone from the config: the others
    // keep their ids, the gone one is cleared from the backends map, and
    // the table stops naming it.
    let table = lb2.vips()[0].table.clone();
    drop(lb2);
    let lb3 = Lb::start(load(&pin.0), &config(&pin.0, 3, 1)).unwrap();
    let ids3: Vec<u32> = lb3.vips()[0].backends.iter().map(|b| b.id).collect();
    assert_eq!(ids3, ids[..3]);
    assert_eq!(lb3.maps().backend(ids[3]).unwrap().flags, 0);
    assert!(lb3.vips()[0].table.iter().all(|&s| s != ids[3]));
    // Removing it from the config rebuilds the base table, so a few slots
    // beyond its own change hands (as the Maglev unit tests measure).
    let owned = table.iter().filter(|&&s| s == ids[3]).count();
    let moved = table
        .iter()
        .zip(&lb3.vips()[0].table)
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        moved >= owned && (moved as f64) < owned as f64 * 1.6,
        "{moved} moved, owned {owned}"
    );
}

#[test]
fn reload_changes_weights_and_table_size_in_place() {
    require_root();
    let pin = pin_dir("2");
    let mut lb = Lb::start(load(&pin.0), &config(&pin.0, 3, 1)).unwrap();
    let ids: Vec<u32> = lb.vips()[0].backends.iter().map(|b| b.id).collect();
    for &id in &ids {
        lb.set_health(id, State::Up, "test").unwrap();
    }
    // The mac line removed: the MAC in use stays until the neighbour table
    // says otherwise, so the backend stays in the table with its clients.
    let table = lb.vips()[0].table.clone();
    let mac = lb.maps().backend(ids[1]).unwrap().mac;
    let text = config_text(&pin.0, 3, 1).replace("mac = \"02:00:00:00:00:0b\"\n", "");
    assert!(!text.contains(":0b\""), "{text}");
    lb.apply_config(&Config::parse(&text).unwrap()).unwrap();
    let b = lb.maps().backend(ids[1]).unwrap();
    assert_eq!(b.mac, mac);
    assert!(b.is_alive());
    assert_eq!(lb.vips()[0].table, table);
    lb.apply_config(&config(&pin.0, 3, 1)).unwrap();

    let vip_id = lb.vips()[0].id;
    let before = slots_of(&lb, ids[0]);
    lb.apply_config(&config(&pin.0, 3, 3)).unwrap();
    let after = slots_of(&lb, ids[0]);
    assert_eq!(lb.vips()[0].id, vip_id);
    // Weights 3:1:1 give the first backend 3/5 of the table.
    let share = after as f64 / 65_537.0;
    assert!(
        (share - 0.6).abs() < 0.01,
        "weight 3: {before} → {after} slots"
    );

    // A new table size gets a new ring region, filled before the switch.
    let text = format!(
        "interface = \"lo\"\npin_path = \"{}\"\n\n[[vip]]\nname = \"web\"\naddress = \"198.51.100.10\"\nport = 80\ntable_size = 251\n\n[[vip.backend]]\naddress = \"192.0.2.10\"\nport = 80\nmac = \"02:00:00:00:00:0a\"\n",
        pin.0.display()
    );
    let old_base = lb.vips()[0].info.ring_base;
    lb.apply_config(&Config::parse(&text).unwrap()).unwrap();
    let info = lb.vips()[0].info;
    assert_eq!(info.ring_size, 251);
    assert_ne!(info.ring_base, old_base);
    assert!(lb.vips()[0].table.iter().all(|&s| s == ids[0]));
    assert_eq!(
        lb.maps().read_ring(info.ring_base, 251).unwrap(),
        lb.vips()[0].table
    );
    assert_eq!(lb.vips()[0].backends.len(), 1);
}

/// A config of VIPs `(name, port, table_size)` on one address, each with one
/// backend of its own.
fn vips_config(pin: &std::path::Path, vips: &[(&str, u16, u32)]) -> Config {
    let mut s = format!("interface = \"lo\"\npin_path = \"{}\"\n", pin.display());
    for (i, (name, port, size)) in vips.iter().enumerate() {
        s += &format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"198.51.100.10\"\nport = {port}\n\
             table_size = {size}\n\n[[vip.backend]]\naddress = \"192.0.2.{}\"\nport = 80\n\
             mac = \"02:00:00:00:00:{:02x}\"\n",
            10 + i,
            10 + i
        );
    }
    Config::parse(&s).expect("valid config")
}

/// VIP map entries by port: the VIP id each port leads to.
fn vip_ids_by_port(lb: &Lb) -> Vec<(u16, u32)> {
    let mut v: Vec<(u16, u32)> = lb
        .maps()
        .vips()
        .unwrap()
        .into_iter()
        .map(|(k, info)| (u16::from_be_bytes(k.port), info.vip_id))
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn reload_moves_vips_between_keys_and_refuses_what_does_not_fit() {
    require_root();
    let pin = pin_dir("3");
    let mut lb = Lb::start(
        load(&pin.0),
        &vips_config(&pin.0, &[("a", 80, 251), ("b", 81, 251)]),
    )
    .unwrap();
    let id = |lb: &Lb, name: &str| lb.vips()[lb.vip_index(name).unwrap()].id;
    let (a, b) = (id(&lb, "a"), id(&lb, "b"));
    assert_eq!(vip_ids_by_port(&lb), [(80, a), (81, b)]);

    // Shift along the ports: b's old key is a's new one and must stay.
    lb.apply_config(&vips_config(&pin.0, &[("a", 81, 251), ("b", 82, 251)]))
        .unwrap();
    assert_eq!(vip_ids_by_port(&lb), [(81, a), (82, b)]);
    // Swap.
    lb.apply_config(&vips_config(&pin.0, &[("a", 82, 251), ("b", 81, 251)]))
        .unwrap();
    assert_eq!(vip_ids_by_port(&lb), [(81, b), (82, a)]);
    // Consolidation: b goes, a takes b's key.
    lb.apply_config(&vips_config(&pin.0, &[("a", 81, 251)]))
        .unwrap();
    assert_eq!(vip_ids_by_port(&lb), [(81, a)]);
    assert_eq!(lb.vips().len(), 1);

    // Three big tables; growing the second leaves a hole where it was, and
    // growing the third then finds no contiguous space although the sizes
    // are valid. The reload is refused before anything changes.
    let big = [("a", 80, 500_009), ("b", 81, 500_009), ("c", 82, 500_009)];
    lb.apply_config(&vips_config(&pin.0, &big)).unwrap();
    let grown = [("a", 80, 500_009), ("b", 81, 510_007), ("c", 82, 500_009)];
    lb.apply_config(&vips_config(&pin.0, &grown)).unwrap();
    let before: Vec<_> = lb
        .vips()
        .iter()
        .map(|v| (v.info, v.backends.len()))
        .collect();
    let map_before = lb.maps().vips().unwrap();
    let mut too_far = vips_config(
        &pin.0,
        &[("a", 80, 500_009), ("b", 81, 510_007), ("c", 82, 520_019)],
    );
    // Also a backend change that must not be applied either.
    too_far.vips[0].backends.clear();
    let err = lb.apply_config(&too_far).unwrap_err().to_string();
    println!("refused: {err}");
    assert!(err.contains("nothing was changed"), "{err}");
    let after: Vec<_> = lb
        .vips()
        .iter()
        .map(|v| (v.info, v.backends.len()))
        .collect();
    assert_eq!(after, before);
    assert_eq!(lb.maps().vips().unwrap(), map_before);
}

#[test]
fn pinned_maps_of_another_shape_are_refused() {
    use lb_common::map_shapes;
    use lb_user::dataplane::pinned_shape;
    require_root();
    let pin = pin_dir("4");
    // What the object creates is what lb-common's shape table says.
    let dp = load(&pin.0);
    for want in map_shapes::ALL {
        let have = pinned_shape(want.name, &pin.0.join(want.name)).unwrap();
        let want = map_shapes::MapShape {
            max_entries: Some(want.max_entries.unwrap_or(4096)),
            ..want
        };
        assert_eq!(have, want);
    }
    drop(dp);
    // The same capacity adopts; another is refused, before anything loads.
    drop(load(&pin.0));
    let err = Dataplane::load(&LoadOptions {
        affinity_capacity: 8192,
        pin_dir: Some(pin.0.clone()),
    })
    .map(|_| ())
    .unwrap_err()
    .to_string();
    println!("refused: {err}");
    assert!(
        err.contains("SLB_AFFINITY")
            && err.contains("4096 entries instead of 8192")
            && err.contains("--fresh")
            && err.contains("affinity_capacity"),
        "{err}"
    );
}

#[test]
fn affinity_entries_read_in_batches_match_one_by_one() {
    use lb_common::{AffinityKey, AffinityValue};
    require_root();
    let mut dp = Dataplane::load(&LoadOptions {
        affinity_capacity: 1 << 17,
        pin_dir: None,
    })
    .expect("load");
    let n: u32 = 100_000;
    for i in 0..n {
        let key = AffinityKey {
            vip_id: i % 3,
            client: i.to_be_bytes(),
        };
        let value = AffinityValue {
            backend_id: i % 7,
            synced_s: 0,
            created_ns: u64::from(i),
            last_seen_ns: u64::from(i) * 2,
        };
        dp.set_affinity(key, value).unwrap();
    }
    let t = std::time::Instant::now();
    let mut batched = dp.affinity_entries().unwrap();
    let batch_time = t.elapsed();
    let t = std::time::Instant::now();
    let mut single = dp.affinity_entries_one_by_one().unwrap();
    let single_time = t.elapsed();
    println!(
        "{n} affinity entries read in {} ms in batches, {} ms one by one",
        batch_time.as_millis(),
        single_time.as_millis()
    );
    assert_eq!(batched.len(), n as usize);
    let order = |e: &(AffinityKey, AffinityValue)| (e.0.vip_id, e.0.client);
    batched.sort_by_key(order);
    single.sort_by_key(order);
    assert_eq!(batched, single);
    assert!(
        batched
            .iter()
            .all(|(k, v)| v.backend_id == u32::from_be_bytes(k.client) % 7)
    );

    // Purging a third (VIP 0's entries), in delete batches.
    let t = std::time::Instant::now();
    let purged = dp.purge_affinity(|k, _| k.vip_id == 0).unwrap();
    println!("{purged} entries purged in {} ms", t.elapsed().as_millis());
    let left = dp.affinity_entries().unwrap();
    assert_eq!(purged, (0..n).filter(|i| i % 3 == 0).count());
    assert_eq!(left.len(), n as usize - purged);
    assert!(left.iter().all(|(k, _)| k.vip_id != 0));
}

#[test]
fn a_restart_adopts_a_down_backend_as_not_alive() {
    require_root();
    let pin = pin_dir("5");
    let cfg = config(&pin.0, 3, 1);
    let mut lb = Lb::start(load(&pin.0), &cfg).unwrap();
    let ids: Vec<u32> = lb.vips()[0].backends.iter().map(|b| b.id).collect();
    for &id in &ids {
        lb.set_health(id, State::Up, "test").unwrap();
    }
    lb.set_health(ids[1], State::Down, "test").unwrap();
    let table = lb.vips()[0].table.clone();
    drop(lb);

    let lb = Lb::start(load(&pin.0), &cfg).unwrap();
    let health: Vec<Option<State>> = lb.vips()[0].backends.iter().map(|b| b.health).collect();
    // Up ones adopted as up; the down one is learned afresh by its checks,
    // and stays out of the table and dead for the data path meanwhile.
    assert_eq!(health, [Some(State::Up), None, Some(State::Up)]);
    assert!(!lb.maps().backend(ids[1]).unwrap().is_alive());
    assert_eq!(lb.vips()[0].table, table);
    assert!(lb.vips()[0].table.iter().all(|&s| s != ids[1]));
}

#[test]
fn pinned_link_info_reads_what_aya_and_the_kernel_say() {
    use aya::programs::links::{FdLink, LinkType, PinnedLink};
    use lb_user::dataplane::{AttachMode, Attached, LINK_PIN_NAME};
    use stickylb_tests::netns::Netns;
    require_root();
    let pin = pin_dir("6");
    let ns = Netns::new(&format!("slb-lbt6-{}", std::process::id())).unwrap();
    let link = pin.0.join(LINK_PIN_NAME);
    let (dir, at) = (pin.0.clone(), link.clone());
    // Generic XDP on the new namespace's own loopback: nothing else is touched.
    let lo = ns.enter(move || {
        let mut dp = load(&dir);
        let (how, refused) = dp.attach_pinned("lo", AttachMode::Skb, None, &at).unwrap();
        assert_eq!((how, refused.len()), (Attached::New(AttachMode::Skb), 0));
        // SAFETY: a NUL-terminated name.
        unsafe { libc::if_nametoindex(c"lo".as_ptr()) }
    });
    // The link outlives the program's handle: it is pinned.
    let (prog, ifindex) = Dataplane::pinned_link_info(&link).unwrap();
    let info = FdLink::from(PinnedLink::from_pin(&link).unwrap())
        .info()
        .unwrap();
    assert_eq!(info.link_type().unwrap(), LinkType::Xdp);
    assert_eq!(prog, info.program_id());
    assert_eq!(ifindex, lo);
    assert_eq!(Dataplane::pinned_link_ifindex(&link).unwrap(), lo);
    assert!(ns.ip(&["link", "show", "lo"]).unwrap().contains("xdp"));
    // A pinned map is not a link.
    let err = Dataplane::pinned_link_info(&pin.0.join(lb_common::map_names::VIPS)).unwrap_err();
    assert!(err.to_string().contains("is not an XDP link"), "{err}");
    assert!(Dataplane::detach_pinned(&link).unwrap());
    assert!(!ns.ip(&["link", "show", "lo"]).unwrap().contains("xdp"));
    assert!(!Dataplane::detach_pinned(&link).unwrap());
}
