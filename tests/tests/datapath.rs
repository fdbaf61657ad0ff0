//! What the XDP program refuses to do, through BPF_PROG_TEST_RUN on the real
//! object: pin a client on a frame anyone can spoof (a bare SYN, UDP past the
//! VIP's budget), forward a frame back to the MAC it came from, forward a
//! VLAN-tagged frame; and the source MAC it forwards from. Needs root; CI
//! runs it as root.
//!
//! Counters are looked up by name through the counter tables, so that a
//! missing counter is a failure that names it.

use lb_common::{VipKey, VipStats, counters::CounterTable, global_counter, proto};
use stickylb_tests::{Counters, ROUTER_MAC, Rig, VIP, backend_info, backend_mac, client, frame};

// XDP actions (linux/bpf.h).
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// The VIP counter `name` in `c`, or a failure naming it.
fn vip_counter(c: &Counters, name: &str) -> u64 {
    let counter = VipStats::COUNTERS
        .iter()
        .find(|k| k.name == name)
        .unwrap_or_else(|| panic!("VipStats has no counter {name:?}"));
    (counter.get)(&c.vip)
}

fn global(c: &Counters, name: &str) -> u64 {
    let i = global_counter::NAMES
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("no global counter {name:?}"));
    c.global[i]
}

fn entry_backend(rig: &Rig, c: [u8; 4]) -> Option<u32> {
    rig.dp
        .affinity(&rig.affinity_key(c))
        .unwrap()
        .map(|e| e.backend_id)
}

#[test]
fn a_syn_is_forwarded_by_the_table_without_pinning_and_the_next_segment_pins() {
    let mut rig = Rig::new(3);
    let c = client(1);
    let want = rig.predict(c).unwrap();
    let before = rig.counters();
    let syn = frame::to_vip(c, 40000);
    let (action, out) = rig.run(&syn);
    assert_eq!(action, XDP_TX);
    assert_eq!(out, frame::forwarded(&syn, want));
    let d = rig.counters().since(&before);
    println!(
        "SYN of a new client: entry {:?}, new_clients {}",
        entry_backend(&rig, c),
        d.vip.new_clients
    );
    assert_eq!(entry_backend(&rig, c), None, "a bare SYN pinned its client");
    assert_eq!(d.vip.new_clients, 0);
    assert_eq!(d.backends[want as usize].new_clients, 0);
    assert_eq!(vip_counter(&d, "not_pinned_syn"), 1);
    assert_eq!(d.vip.packets, 1);

    // The retransmitted SYN: still not pinned, still the same backend.
    let (action, out) = rig.run(&syn);
    assert_eq!((action, out), (XDP_TX, frame::forwarded(&syn, want)));
    assert_eq!(entry_backend(&rig, c), None);

    // The handshake's last ACK (here riding on the request) pins.
    let before = rig.counters();
    let ack = frame::tcp_data(c, 40000);
    let (action, out) = rig.run(&ack);
    assert_eq!((action, out), (XDP_TX, frame::forwarded(&ack, want)));
    assert_eq!(entry_backend(&rig, c), Some(want));
    let d = rig.counters().since(&before);
    assert_eq!((d.vip.new_clients, d.vip.affinity_hits), (1, 0));
    assert_eq!(d.backends[want as usize].new_clients, 1);
    assert_eq!(vip_counter(&d, "not_pinned_syn"), 0);

    // Pinned: a SYN of another connection is a hit, as before.
    let before = rig.counters();
    let (action, _) = rig.run(&frame::to_vip(c, 40001));
    assert_eq!(action, XDP_TX);
    let d = rig.counters().since(&before);
    assert_eq!(
        (d.vip.affinity_hits, vip_counter(&d, "not_pinned_syn")),
        (1, 0)
    );
}

#[test]
fn a_syn_does_not_replace_a_stale_entry_the_next_segment_does() {
    let mut rig = Rig::new(3);
    let c = client(2);
    let (action, _) = rig.run(&frame::tcp_data(c, 40000));
    assert_eq!(action, XDP_TX);
    let old = entry_backend(&rig, c).expect("pinned");
    rig.set_alive(old, false);
    rig.rebuild();
    let now = rig.predict(c).unwrap();
    assert_ne!(now, old);
    let before = rig.counters();
    let syn = frame::to_vip(c, 40001);
    assert_eq!(rig.run(&syn), (XDP_TX, frame::forwarded(&syn, now)));
    assert_eq!(
        entry_backend(&rig, c),
        Some(old),
        "the SYN rewrote the entry"
    );
    let ack = frame::tcp_data(c, 40001);
    assert_eq!(rig.run(&ack), (XDP_TX, frame::forwarded(&ack, now)));
    assert_eq!(entry_backend(&rig, c), Some(now));
    let d = rig.counters().since(&before);
    assert_eq!(
        (vip_counter(&d, "not_pinned_syn"), d.vip.repick_dead),
        (1, 1)
    );
}

/// Runs the test thread on CPU 0 only: the budget is per CPU.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[test]
fn new_udp_clients_past_the_budget_are_forwarded_unpinned_and_counted() {
    pin_to_cpu0();
    let mut rig = Rig::new(3);
    let budget = 5u32;
    let key = VipKey::new(VIP, 53, proto::UDP);
    let mut info = rig.vip;
    info.udp_pin_budget = budget;
    rig.dp.set_vip(key, info).unwrap();
    let before = rig.counters();
    let n = 3 * budget;
    let t = std::time::Instant::now();
    for i in 0..n {
        let c = client(100 + i);
        let f = frame::udp(c, VIP, 53);
        let want = rig.predict(c).unwrap();
        assert_eq!(rig.run(&f), (XDP_TX, frame::forwarded(&f, want)), "{c:?}");
    }
    let elapsed = t.elapsed();
    let d = rig.counters().since(&before);
    let pinned = (0..n)
        .filter(|&i| entry_backend(&rig, client(100 + i)).is_some())
        .count() as u64;
    let refused = vip_counter(&d, "not_pinned_udp_budget");
    println!(
        "UDP budget {budget}/s/CPU: {n} new clients in {elapsed:?}: {pinned} pinned, {refused} refused"
    );
    // The window is a second; the burst takes far less.
    assert!(elapsed.as_millis() < 900, "burst took {elapsed:?}");
    assert_eq!(pinned, u64::from(budget));
    assert_eq!(d.vip.new_clients, u64::from(budget));
    assert_eq!(refused, u64::from(n - budget));
    assert_eq!(d.vip.packets, u64::from(n));

    // A pinned client is a hit whatever the budget; an unpinned one keeps
    // going where the table says, still unpinned.
    let before = rig.counters();
    let f = frame::udp(client(100), VIP, 53);
    assert_eq!(rig.run(&f).0, XDP_TX);
    let f = frame::udp(client(100 + n - 1), VIP, 53);
    assert_eq!(rig.run(&f).0, XDP_TX);
    let d = rig.counters().since(&before);
    assert_eq!(
        (
            d.vip.affinity_hits,
            vip_counter(&d, "not_pinned_udp_budget")
        ),
        (1, 1)
    );

    // The next window has a fresh budget.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let c = client(100 + n - 1);
    assert_eq!(rig.run(&frame::udp(c, VIP, 53)).0, XDP_TX);
    assert!(
        entry_backend(&rig, c).is_some(),
        "not pinned in a new window"
    );

    // Budget 0: unbounded, as before the budget existed.
    info.udp_pin_budget = 0;
    rig.dp.set_vip(key, info).unwrap();
    for i in 0..n {
        let c = client(1000 + i);
        assert_eq!(rig.run(&frame::udp(c, VIP, 53)).0, XDP_TX);
        assert!(entry_backend(&rig, c).is_some());
    }
}

#[test]
fn a_frame_is_never_forwarded_to_the_mac_it_came_from() {
    let mut rig = Rig::new(3);
    // A new client whose backend has the router's MAC (the source of every
    // client frame): dropped, counted, not pinned.
    let c = client(3);
    let b = rig.predict(c).unwrap();
    let vip_id = rig.vip.vip_id;
    rig.dp
        .set_backend(b, backend_info(b, ROUTER_MAC, true, vip_id))
        .unwrap();
    for f in [frame::tcp_data(c, 40000), frame::to_vip(c, 40000)] {
        let before = rig.counters();
        let (action, out) = rig.run(&f);
        let d = rig.counters().since(&before);
        println!(
            "backend MAC = source MAC: action {action} (1 drop, 3 tx), out dst {:02x?}",
            &out[..6]
        );
        assert_eq!(action, XDP_DROP);
        assert_eq!(vip_counter(&d, "drop_loop"), 1);
        assert_eq!((d.vip.packets, d.vip.new_clients), (0, 0));
        assert_eq!(entry_backend(&rig, c), None);
    }
    // A pinned client whose backend later gets that MAC: the hit path
    // refuses too.
    rig.dp
        .set_backend(b, backend_info(b, backend_mac(b), true, vip_id))
        .unwrap();
    assert_eq!(rig.run(&frame::tcp_data(c, 40000)).0, XDP_TX);
    assert_eq!(entry_backend(&rig, c), Some(b));
    rig.dp
        .set_backend(b, backend_info(b, ROUTER_MAC, true, vip_id))
        .unwrap();
    let before = rig.counters();
    assert_eq!(rig.run(&frame::tcp_data(c, 40000)).0, XDP_DROP);
    let d = rig.counters().since(&before);
    assert_eq!((vip_counter(&d, "drop_loop"), d.vip.affinity_hits), (1, 0));
}

#[test]
fn a_forwarded_frame_leaves_from_the_lb_mac_and_forwards_again_unchanged() {
    // Neither LB_MAC (the test frames' destination) nor a backend's.
    const OWN: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x42];
    const OTHER_HOST: [u8; 6] = [0x02, 0x0e, 0, 0, 0, 0x07];
    let mut rig = Rig::new(3);
    assert_eq!(rig.dp.own_mac().unwrap(), None, "unset on load");
    rig.dp.set_own_mac(Some(OWN)).unwrap();
    assert_eq!(rig.dp.own_mac().unwrap(), Some(OWN));

    // Sent to us: forwarded from our MAC.
    let c = client(5);
    let want = rig.predict(c).unwrap();
    let mut to_us = frame::tcp_data(c, 40000);
    to_us[..6].copy_from_slice(&OWN);
    let (action, out) = rig.run(&to_us);
    println!(
        "own MAC set, frame to {:02x?}: action {action} (3 tx), out src {:02x?}",
        &to_us[..6],
        &out[6..12]
    );
    let mut expect = frame::forwarded(&to_us, want);
    expect[6..12].copy_from_slice(&OWN);
    assert_eq!((action, out), (XDP_TX, expect));

    // Sent to another host (a bridge flooding unknown unicast, promiscuous
    // mode): that host forwards it; here it is passed, unchanged, counted,
    // and pins nobody.
    let other = client(6);
    let mut stray = frame::tcp_data(other, 40000);
    stray[..6].copy_from_slice(&OTHER_HOST);
    let before = rig.counters();
    let (action, out) = rig.run(&stray);
    let d = rig.counters().since(&before);
    println!(
        "own MAC set, frame to {:02x?}: action {action} (2 pass), pass_other_host {}",
        &stray[..6],
        global(&d, "pass_other_host")
    );
    assert_eq!((action, out), (XDP_PASS, stray));
    assert_eq!(
        (
            global(&d, "pass_other_host"),
            d.vip.new_clients,
            d.vip.packets
        ),
        (1, 0, 0)
    );

    // The frame it forwarded, run again: it is addressed to the backend,
    // so it is passed as another host's...
    let (_, once) = rig.run(&to_us);
    assert_eq!(rig.run(&once), (XDP_PASS, once.clone()));
    // ...unless any destination is forwarded (what benchmarks set for
    // `repeat`): then forwarded the same (it is not from the backend's
    // MAC), iteration after iteration.
    rig.dp.set_own_mac_any_destination(OWN).unwrap();
    let (_, once) = rig.run(&to_us);
    assert_eq!(rig.run(&once), (XDP_TX, once.clone()));
    const REPEAT: u32 = 64;
    let before = rig.counters();
    let (action, _) = rig.dp.test_run_repeat(&to_us, REPEAT).unwrap();
    let d = rig.counters().since(&before);
    println!(
        "own MAC set, repeat {REPEAT}: action {action}, packets {}, drop_loop {}",
        d.vip.packets,
        vip_counter(&d, "drop_loop")
    );
    assert_eq!(action, XDP_TX);
    assert_eq!(vip_counter(&d, "drop_loop"), 0);
    assert_eq!(
        (d.vip.packets, d.vip.affinity_hits),
        (REPEAT.into(), REPEAT.into())
    );

    // Unset (no daemon): the old destination MAC is the source, as before,
    // and a repeat then reaches the backend's MAC as source and drops.
    rig.dp.set_own_mac(None).unwrap();
    let f = frame::tcp_data(c, 40000);
    assert_eq!(rig.run(&f), (XDP_TX, frame::forwarded(&f, want)));
    let before = rig.counters();
    let (action, _) = rig.dp.test_run_repeat(&f, REPEAT).unwrap();
    let d = rig.counters().since(&before);
    println!(
        "own MAC unset, repeat {REPEAT}: action {action} (1 drop), packets {}, drop_loop {}",
        d.vip.packets,
        vip_counter(&d, "drop_loop")
    );
    assert_eq!(action, XDP_DROP);
    assert_eq!(
        (d.vip.packets, vip_counter(&d, "drop_loop")),
        (2, u64::from(REPEAT) - 2)
    );
}

/// `f` with a VLAN tag (`tpid`, VLAN 10) inserted after the MACs.
fn tagged(f: &[u8], tpid: u16) -> Vec<u8> {
    let mut v = f[..12].to_vec();
    v.extend_from_slice(&tpid.to_be_bytes());
    v.extend_from_slice(&10u16.to_be_bytes());
    v.extend_from_slice(&f[12..]);
    v
}

#[test]
fn vlan_tagged_frames_to_the_vip_are_passed_and_counted() {
    let mut rig = Rig::new(3);
    for (tpid, what) in [(0x8100u16, "802.1Q"), (0x88a8, "802.1ad")] {
        let c = client(4);
        let f = tagged(&frame::tcp_data(c, 40000), tpid);
        let before = rig.counters();
        let (action, out) = rig.run(&f);
        let d = rig.counters().since(&before);
        println!(
            "{what}-tagged frame to the VIP: action {action} (2 pass), pass_not_ipv4 {}",
            d.global[global_counter::PASS_NOT_IPV4 as usize]
        );
        assert_eq!((action, out), (XDP_PASS, f.clone()), "{what}");
        assert_eq!(global(&d, "pass_vlan"), 1, "{what}");
        assert_eq!(d.global.iter().sum::<u64>(), 1, "{what}: one counter");
        assert_eq!(d.vip.packets, 0);
        assert_eq!(entry_backend(&rig, c), None);
    }
}
