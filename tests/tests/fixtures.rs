//! BPF_PROG_TEST_RUN fixtures against the real compiled XDP object: a table of
//! (description, rig state and input frame, expected action, expected output
//! frame, expected counter deltas), in the manner of Katran's test fixtures.
//! Needs root; CI runs it as root.

use std::net::Ipv4Addr;

use lb_common::{
    AffinityValue, BackendStats, ForwardingMode, VipStats, global_counter as gc, proto,
};
use stickylb_tests::{
    Counters, Rig, TIMEOUT_NS, VIP, VIP_PORT, backend_info, backend_mac, client, frame,
    monotonic_ns,
};

// XDP actions (linux/bpf.h).
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

type AfterCheck = Box<dyn Fn(&Rig) -> Result<(), String>>;

/// What one fixture expects.
struct Expect {
    frame: Vec<u8>,
    action: u32,
    output: Vec<u8>,
    counters: Counters,
    /// Checks on map state after the run.
    after: Option<AfterCheck>,
}

struct Case {
    name: &'static str,
    /// Puts the rig in the state the case needs; returns the frame to send
    /// and what must happen.
    prepare: fn(&mut Rig) -> Expect,
}

fn zero(rig: &Rig) -> Counters {
    let mut c = rig.counters();
    c.vip = VipStats::default();
    c.backends
        .iter_mut()
        .for_each(|b| *b = BackendStats::default());
    c.global = Default::default();
    c
}

/// How the program is expected to choose the backend of a forwarded frame.
#[derive(Clone, Copy)]
enum Via {
    NewClient,
    Hit,
    RepickDead,
    RepickExpired,
    NewClientProbed,
    /// A bare SYN of a client without a usable entry: forwarded by the
    /// table, nothing pinned.
    SynNotPinned,
}

fn forwarded(rig: &Rig, frame: Vec<u8>, backend: u32, via: Via) -> Expect {
    let len = frame.len() as u64;
    let mut c = zero(rig);
    c.vip.packets = 1;
    c.vip.bytes = len;
    let b = &mut c.backends[backend as usize];
    b.packets = 1;
    b.bytes = len;
    match via {
        Via::Hit => c.vip.affinity_hits = 1,
        Via::NewClient => c.vip.new_clients = 1,
        Via::NewClientProbed => {
            c.vip.new_clients = 1;
            c.vip.probed = 1;
        }
        Via::RepickDead => c.vip.repick_dead = 1,
        Via::RepickExpired => c.vip.repick_expired = 1,
        Via::SynNotPinned => c.vip.not_pinned_syn = 1,
    }
    if !matches!(via, Via::Hit | Via::SynNotPinned) {
        c.backends[backend as usize].new_clients = 1;
    }
    let client: [u8; 4] = frame[26..30].try_into().unwrap();
    let key = rig.affinity_key(client);
    let after: AfterCheck = if matches!(via, Via::SynNotPinned) {
        Box::new(move |rig| match rig.dp.affinity(&key).unwrap() {
            None => Ok(()),
            Some(v) => Err(format!("a bare SYN pinned the client: {v:?}")),
        })
    } else {
        Box::new(move |rig| match rig.dp.affinity(&key).unwrap() {
            Some(v) if v.backend_id == backend => Ok(()),
            other => Err(format!("affinity entry {other:?}, want backend {backend}")),
        })
    };
    Expect {
        output: frame::forwarded(&frame, backend),
        frame,
        action: XDP_TX,
        counters: c,
        after: Some(after),
    }
}

fn passed(rig: &Rig, frame: Vec<u8>, counter: u32) -> Expect {
    let mut c = zero(rig);
    c.global[counter as usize] = 1;
    Expect {
        output: frame.clone(),
        frame,
        action: XDP_PASS,
        counters: c,
        after: None,
    }
}

fn dropped(rig: &Rig, frame: Vec<u8>, set: fn(&mut VipStats)) -> Expect {
    let mut c = zero(rig);
    set(&mut c.vip);
    Expect {
        output: frame.clone(),
        frame,
        action: XDP_DROP,
        counters: c,
        after: None,
    }
}

/// Sends a data segment from `c` so that it gets an affinity entry (a bare
/// SYN would not pin it); its backend.
fn pin(rig: &mut Rig, c: [u8; 4]) -> u32 {
    let (action, _) = rig.run(&frame::tcp_data(c, 39999));
    assert_eq!(action, XDP_TX, "pinning {c:?}");
    rig.dp
        .affinity(&rig.affinity_key(c))
        .unwrap()
        .expect("entry")
        .backend_id
}

fn entry(backend_id: u32, last_seen_ns: u64) -> AffinityValue {
    AffinityValue {
        backend_id,
        synced_s: 0,
        created_ns: last_seen_ns,
        last_seen_ns,
    }
}

// No case for a frame shorter than an Ethernet header: BPF_PROG_TEST_RUN
// refuses such input (EINVAL), and no driver hands one to XDP either.
const CASES: &[Case] = &[
    Case {
        name: "SYN from a new client goes to its Maglev backend, only the MACs rewritten, \
               not pinned",
        prepare: |rig| {
            let c = client(1);
            let b = rig.predict(c).unwrap();
            forwarded(rig, frame::to_vip(c, 40000), b, Via::SynNotPinned)
        },
    },
    Case {
        name: "data segment from a new client goes to its Maglev backend and pins it",
        prepare: |rig| {
            let c = client(30);
            let b = rig.predict(c).unwrap();
            forwarded(rig, frame::tcp_data(c, 40000), b, Via::NewClient)
        },
    },
    Case {
        name: "same client, another source port: same backend, by affinity",
        prepare: |rig| {
            let c = client(2);
            let b = pin(rig, c);
            forwarded(rig, frame::to_vip(c, 40001), b, Via::Hit)
        },
    },
    Case {
        name: "data segment of a pinned client follows its affinity",
        prepare: |rig| {
            let c = client(3);
            let b = pin(rig, c);
            forwarded(rig, frame::tcp_data(c, 39999), b, Via::Hit)
        },
    },
    Case {
        name: "affinity survives a backend added to the ring",
        prepare: |rig| {
            let pinned: Vec<([u8; 4], u32)> = (100..300)
                .map(|i| (client(i), pin(rig, client(i))))
                .collect();
            rig.add_backend();
            rig.rebuild();
            // A pinned client the new table would send elsewhere.
            let &(c, b) = pinned
                .iter()
                .find(|(c, b)| rig.predict(*c) != Some(*b))
                .expect("the new backend takes some clients");
            forwarded(rig, frame::to_vip(c, 40002), b, Via::Hit)
        },
    },
    Case {
        name: "affinity to a backend marked dead is re-picked at once",
        prepare: |rig| {
            let c = client(4);
            let b = pin(rig, c);
            rig.set_alive(b, false);
            rig.rebuild();
            let now = rig.predict(c).unwrap();
            assert_ne!(now, b);
            forwarded(rig, frame::tcp_data(c, 40003), now, Via::RepickDead)
        },
    },
    Case {
        name: "affinity to an id that now belongs to another VIP's backend is re-picked",
        prepare: |rig| {
            // The daemon took backend b out of this VIP (table rebuilt
            // without it) and, its purge of b's clients cut short, gave
            // the id to a backend of another VIP.
            let c = client(6);
            let b = pin(rig, c);
            rig.set_alive(b, false);
            rig.rebuild();
            let other_vip = rig.vip.vip_id + 1;
            rig.dp
                .set_backend(b, backend_info(b, backend_mac(b), true, other_vip))
                .unwrap();
            let now = rig.predict(c).unwrap();
            assert_ne!(now, b);
            forwarded(rig, frame::tcp_data(c, 40005), now, Via::RepickDead)
        },
    },
    Case {
        name: "dead backend not yet out of the table: next alive slot",
        prepare: |rig| {
            let c = client(5);
            let home = rig.predict(c).unwrap();
            rig.set_alive(home, false);
            let now = rig.predict(c).unwrap();
            assert_ne!(now, home);
            forwarded(rig, frame::tcp_data(c, 40004), now, Via::NewClientProbed)
        },
    },
    Case {
        name: "expired affinity is replaced by the Maglev pick",
        prepare: |rig| {
            let c = client(6);
            let home = rig.predict(c).unwrap();
            let other = (home + 1) % 3;
            let stale = monotonic_ns() - TIMEOUT_NS - 1_000_000_000;
            rig.dp
                .set_affinity(rig.affinity_key(c), entry(other, stale))
                .unwrap();
            forwarded(rig, frame::tcp_data(c, 40005), home, Via::RepickExpired)
        },
    },
    Case {
        name: "a live affinity entry wins over the Maglev table",
        prepare: |rig| {
            let c = client(7);
            let other = (rig.predict(c).unwrap() + 1) % 3;
            rig.dp
                .set_affinity(rig.affinity_key(c), entry(other, monotonic_ns()))
                .unwrap();
            forwarded(rig, frame::to_vip(c, 40006), other, Via::Hit)
        },
    },
    Case {
        name: "drained backend (weight 0) keeps its pinned clients",
        prepare: |rig| {
            let c = client(8);
            let b = pin(rig, c);
            rig.set_weight(b, 0);
            rig.rebuild();
            assert!((0..1000).all(|i| rig.predict(client(i)) != Some(b)));
            forwarded(rig, frame::to_vip(c, 40007), b, Via::Hit)
        },
    },
    Case {
        name: "UDP VIP is balanced like TCP",
        prepare: |rig| {
            let key = lb_common::VipKey::new(VIP, 53, proto::UDP);
            rig.dp.set_vip(key, rig.vip).unwrap();
            let c = client(9);
            let b = rig.predict(c).unwrap();
            forwarded(rig, frame::udp(c, VIP, 53), b, Via::NewClient)
        },
    },
    Case {
        name: "IPv4 options are skipped, the frame forwarded unchanged",
        prepare: |rig| {
            let c = client(10);
            let b = rig.predict(c).unwrap();
            let f = frame::tcp_with_ip(c, |ip| ip.options = [1u8, 1, 1, 0].into());
            assert_eq!(f[14], 0x46, "IHL 6");
            forwarded(rig, f, b, Via::SynNotPinned)
        },
    },
    Case {
        name: "first fragment to a VIP is dropped and counted",
        prepare: |rig| {
            let f = frame::tcp_with_ip(client(11), |ip| ip.more_fragments = true);
            dropped(rig, f, |v| v.drop_fragment = 1)
        },
    },
    Case {
        name: "non-first fragment has no ports: passed",
        prepare: |rig| {
            let f = frame::tcp_with_ip(client(12), |ip| {
                ip.fragment_offset = etherparse::IpFragOffset::try_new(185).unwrap()
            });
            passed(rig, f, gc::PASS_FRAGMENT)
        },
    },
    Case {
        name: "no alive backend: dropped and counted",
        prepare: |rig| {
            for b in 0..3 {
                rig.set_alive(b, false);
            }
            rig.rebuild();
            dropped(rig, frame::to_vip(client(13), 40000), |v| {
                v.drop_no_backend = 1
            })
        },
    },
    Case {
        name: "all backends dead, table not rewritten: dropped",
        prepare: |rig| {
            for b in 0..3 {
                rig.set_alive(b, false);
            }
            dropped(rig, frame::to_vip(client(14), 40000), |v| {
                v.drop_no_backend = 1
            })
        },
    },
    Case {
        name: "VIP without a table yet: dropped",
        prepare: |rig| {
            let mut info = rig.vip;
            info.ring_size = 0;
            rig.dp.set_vip(rig.vip_key, info).unwrap();
            dropped(rig, frame::to_vip(client(15), 40000), |v| {
                v.drop_no_backend = 1
            })
        },
    },
    Case {
        name: "VIP with a forwarding mode this build does not know: dropped, no client pinned",
        prepare: |rig| {
            // What a newer daemon could have left in the pinned map.
            let unknown = u8::MAX;
            assert_eq!(ForwardingMode::from_u8(unknown), None);
            let mut info = rig.vip;
            info.forwarding = unknown;
            rig.dp.set_vip(rig.vip_key, info).unwrap();
            let c = client(29);
            let key = rig.affinity_key(c);
            let mut e = dropped(rig, frame::to_vip(c, 40000), |v| v.drop_no_backend = 1);
            e.after = Some(Box::new(move |rig| match rig.dp.affinity(&key).unwrap() {
                None => Ok(()),
                Some(v) => Err(format!("client pinned: {v:?}")),
            }));
            e
        },
    },
    Case {
        name: "TCP to another port of the VIP address: passed",
        prepare: |rig| {
            passed(
                rig,
                frame::tcp_syn(client(16), 40000, VIP, 22),
                gc::PASS_NOT_VIP,
            )
        },
    },
    Case {
        name: "UDP to the TCP VIP's port: passed",
        prepare: |rig| passed(rig, frame::udp(client(17), VIP, VIP_PORT), gc::PASS_NOT_VIP),
    },
    Case {
        name: "TCP to a non-VIP address: passed",
        prepare: |rig| {
            let f = frame::tcp_syn(client(18), 40000, Ipv4Addr::new(198, 51, 100, 11), VIP_PORT);
            passed(rig, f, gc::PASS_NOT_VIP)
        },
    },
    Case {
        name: "ARP request for the VIP: passed",
        prepare: |rig| passed(rig, frame::arp_request(client(19)), gc::PASS_NOT_IPV4),
    },
    Case {
        name: "IPv6 TCP: passed",
        prepare: |rig| passed(rig, frame::ipv6_tcp(), gc::PASS_NOT_IPV4),
    },
    Case {
        name: "ICMP echo to the VIP: passed",
        prepare: |rig| passed(rig, frame::icmp_echo(client(20)), gc::PASS_NOT_TCP_UDP),
    },
    Case {
        name: "IPv4 header cut short: passed",
        prepare: |rig| {
            passed(
                rig,
                frame::to_vip(client(22), 40000)[..26].to_vec(),
                gc::PASS_BAD_IPV4,
            )
        },
    },
    Case {
        name: "IHL below 5: passed",
        prepare: |rig| {
            let mut f = frame::to_vip(client(23), 40000);
            f[14] = 0x44;
            passed(rig, f, gc::PASS_BAD_IPV4)
        },
    },
    Case {
        name: "TCP header cut short: passed",
        prepare: |rig| {
            passed(
                rig,
                frame::to_vip(client(24), 40000)[..44].to_vec(),
                gc::PASS_SHORT_L4,
            )
        },
    },
    Case {
        name: "IHL pointing past the frame: passed",
        prepare: |rig| {
            let mut f = frame::to_vip(client(25), 40000);
            f[14] = 0x4f;
            f.truncate(14 + 60);
            passed(rig, f, gc::PASS_SHORT_L4)
        },
    },
    Case {
        name: "VIP frame to the broadcast MAC: passed",
        prepare: |rig| {
            let mut f = frame::to_vip(client(26), 40000);
            f[..6].copy_from_slice(&[0xff; 6]);
            passed(rig, f, gc::PASS_MULTICAST_DST)
        },
    },
    Case {
        name: "a hit within the refresh interval does not write the entry",
        prepare: |rig| {
            let c = client(27);
            let b = pin(rig, c);
            let key = rig.affinity_key(c);
            let seen = rig.dp.affinity(&key).unwrap().unwrap().last_seen_ns;
            let mut e = forwarded(rig, frame::to_vip(c, 40010), b, Via::Hit);
            e.after = Some(Box::new(move |rig| {
                let now = rig.dp.affinity(&key).unwrap().unwrap().last_seen_ns;
                (now == seen)
                    .then_some(())
                    .ok_or(format!("last_seen moved {seen} → {now}"))
            }));
            e
        },
    },
    Case {
        name: "a hit after the refresh interval refreshes the entry",
        prepare: |rig| {
            let c = client(28);
            let b = pin(rig, c);
            let key = rig.affinity_key(c);
            let old = monotonic_ns() - 2 * lb_common::AFFINITY_REFRESH_NS;
            rig.dp.set_affinity(key, entry(b, old)).unwrap();
            let mut e = forwarded(rig, frame::to_vip(c, 40011), b, Via::Hit);
            e.after = Some(Box::new(move |rig| {
                let v = rig.dp.affinity(&key).unwrap().unwrap();
                (v.last_seen_ns > old + lb_common::AFFINITY_REFRESH_NS && v.created_ns == old)
                    .then_some(())
                    .ok_or(format!("entry not refreshed: {v:?}"))
            }));
            e
        },
    },
];

fn run_case(case: &Case) -> Result<(), String> {
    let mut rig = Rig::new(3);
    let e = (case.prepare)(&mut rig);
    let before = rig.counters();
    let (action, output) = rig.run(&e.frame);
    let delta = rig.counters().since(&before);
    if action != e.action {
        return Err(format!("action {action}, want {}", e.action));
    }
    if output != e.output {
        return Err(format!(
            "output frame\n  got  {output:02x?}\n  want {:02x?}",
            e.output
        ));
    }
    let wrong = delta.differences(&e.counters);
    if !wrong.is_empty() {
        return Err(format!("counters: {}", wrong.join("; ")));
    }
    if let Some(after) = &e.after {
        after(&rig)?;
    }
    Ok(())
}

#[test]
fn fixture_table() {
    let mut failed = Vec::new();
    for case in CASES {
        match run_case(case) {
            Ok(()) => println!("fixture ok: {}", case.name),
            Err(e) => {
                println!("fixture FAILED: {}: {e}", case.name);
                failed.push(case.name);
            }
        }
    }
    println!(
        "fixtures: {} passed, {} failed",
        CASES.len() - failed.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "failed fixtures: {failed:#?}");
}

#[test]
fn thousand_clients_land_where_user_space_predicts() {
    let mut rig = Rig::new(5);
    let mut per_backend = [0u32; 5];
    for i in 0..1000 {
        let c = client(i);
        let want = rig.predict(c).unwrap();
        let f = frame::tcp_data(c, 40000 + i as u16);
        let (action, out) = rig.run(&f);
        assert_eq!(action, XDP_TX, "client {c:?}");
        assert_eq!(out, frame::forwarded(&f, want), "client {c:?}");
        per_backend[want as usize] += 1;
    }
    let c = rig.counters();
    assert_eq!(c.vip.new_clients, 1000);
    assert_eq!(c.vip.packets, 1000);
    println!("1000 clients over 5 backends: {per_backend:?}");
    assert!(
        per_backend.iter().all(|&n| (150..=250).contains(&n)),
        "{per_backend:?}"
    );
}
