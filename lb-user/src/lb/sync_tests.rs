//! The conflict rule branch by branch, the clock's round trip, and two
//! nodes over `FakeMaps` exchanging pins until they are quiet.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{AffinityKey, AffinityValue, SyncEvent, VipKey, coarse_secs, proto, sync_kind};

use super::{Pin, Resolution, SyncApplied, SyncEntry, clock, resolve};
use crate::{
    config::Config,
    health::State,
    lb::{Lb, fake::FakeMaps, tests::started},
    util::monotonic_ns,
};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The VIPs' affinity timeout in `cfg`.
const TIMEOUT_NS: u64 = 60 * S;

fn addr(octet: u8) -> SocketAddrV4 {
    SocketAddrV4::new([192, 0, 2, octet].into(), 80)
}

fn pin(octet: u8, pinned_ms: u64) -> Pin {
    Pin {
        backend: addr(octet),
        pinned_ms,
    }
}

/// Two VIPs ("web" on port 80, "api" on 81) with backends 192.0.2.10-12.
fn cfg() -> Config {
    let mut s = String::from("interface = \"lo\"\n");
    for (name, port) in [("web", 80), ("api", 81)] {
        s += &format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"{VIP}\"\nport = {port}\n\
             table_size = 251\naffinity_timeout = \"60s\"\n"
        );
        for octet in 10..=12u8 {
            s += &format!(
                "\n[[vip.backend]]\naddress = \"192.0.2.{octet}\"\nport = 80\n\
                 mac = \"02:00:00:00:00:{octet:02x}\"\n"
            );
        }
    }
    Config::parse(&s).expect("valid config")
}

fn web() -> VipKey {
    VipKey::new(VIP, 80, proto::TCP)
}

fn vip_id(lb: &Lb<FakeMaps>, key: VipKey) -> u32 {
    lb.vips().iter().find(|v| v.key == key).unwrap().id
}

fn backend_id(lb: &Lb<FakeMaps>, key: VipKey, octet: u8) -> u32 {
    let v = lb.vips().iter().find(|v| v.key == key).unwrap();
    v.backends
        .iter()
        .find(|b| b.addr == addr(octet))
        .unwrap()
        .id
}

fn client(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + i)
}

fn key(lb: &Lb<FakeMaps>, c: Ipv4Addr) -> AffinityKey {
    AffinityKey {
        vip_id: vip_id(lb, web()),
        client: c.octets(),
    }
}

/// Pins `c` of "web" to backend `octet` as the XDP program would, created at
/// `created_ns` and last seen at `last_seen_ns`.
fn local_pin(lb: &mut Lb<FakeMaps>, c: Ipv4Addr, octet: u8, created_ns: u64, last_seen_ns: u64) {
    let k = key(lb, c);
    let backend_id = backend_id(lb, web(), octet);
    lb.maps_mut().affinity.insert(
        (k.vip_id, k.client),
        AffinityValue {
            backend_id,
            synced_s: 0,
            created_ns,
            last_seen_ns,
        },
    );
}

fn stored(lb: &Lb<FakeMaps>, c: Ipv4Addr) -> Option<AffinityValue> {
    let k = key(lb, c);
    lb.maps().affinity.get(&(k.vip_id, k.client)).copied()
}

fn stored_backend(lb: &Lb<FakeMaps>, c: Ipv4Addr) -> Option<SocketAddrV4> {
    let v = stored(lb, c)?;
    let vip = lb.vips().iter().find(|v| v.key == web()).unwrap();
    vip.backends
        .iter()
        .find(|b| b.id == v.backend_id)
        .map(|b| b.addr)
}

fn entry(c: Ipv4Addr, octet: u8, pinned_ms: u64, idle_ms: u32) -> SyncEntry {
    SyncEntry {
        vip: web(),
        client: c,
        backend: addr(octet),
        pinned_ms,
        idle_ms,
    }
}

fn set_alive(lb: &mut Lb<FakeMaps>, octet: u8, alive: bool) {
    let id = backend_id(lb, web(), octet);
    let state = if alive { State::Up } else { State::Down };
    lb.set_health(id, state, "test").unwrap();
}

#[test]
fn resolve_branch_by_branch() {
    use Resolution::*;
    // The client is new here.
    assert_eq!(resolve(None, pin(10, 5), true), Insert);
    // The received backend is dead (or was unknown) here: never applied,
    // whatever this node has.
    assert_eq!(resolve(None, pin(10, 5), false), DeadBackend);
    assert_eq!(resolve(Some(pin(11, 1)), pin(10, 5), false), DeadBackend);
    // Same backend: the same pin refreshes; an earlier one lowers this
    // node's; a later one is answered with this node's.
    assert_eq!(resolve(Some(pin(10, 5)), pin(10, 5), true), Refresh);
    assert_eq!(resolve(Some(pin(10, 9)), pin(10, 5), true), Lower);
    assert_eq!(resolve(Some(pin(10, 5)), pin(10, 9), true), KeepLocal);
    // The earlier pin wins.
    assert_eq!(resolve(Some(pin(11, 4)), pin(10, 5), true), KeepLocal);
    assert_eq!(resolve(Some(pin(11, 6)), pin(10, 5), true), Insert);
    // A tie goes to the lower backend address, then port.
    assert_eq!(resolve(Some(pin(11, 5)), pin(10, 5), true), Insert);
    assert_eq!(resolve(Some(pin(10, 5)), pin(11, 5), true), KeepLocal);
    let low_port = Pin {
        backend: SocketAddrV4::new([192, 0, 2, 10].into(), 79),
        pinned_ms: 5,
    };
    assert_eq!(resolve(Some(low_port), pin(10, 5), true), KeepLocal);
    assert_eq!(resolve(Some(pin(10, 5)), low_port, true), Insert);
}

#[test]
fn the_rule_is_the_same_seen_from_either_side() {
    // For any two different pins, exactly one side keeps its own.
    let pins = [pin(10, 5), pin(11, 5), pin(12, 5), pin(10, 6), pin(11, 4)];
    for a in pins {
        for b in pins {
            if a.backend == b.backend {
                continue;
            }
            let at_a = resolve(Some(a), b, true);
            let at_b = resolve(Some(b), a, true);
            assert_ne!(at_a, at_b, "{a:?} vs {b:?}");
            assert!(matches!(at_a, Resolution::Insert | Resolution::KeepLocal));
        }
    }
}

#[test]
fn a_received_pinned_ms_reads_back_exactly() {
    let c = clock();
    assert_eq!(c, clock(), "taken once");
    let boot_ms = c.wall_ms(0);
    let now_ms = c.wall_ms(monotonic_ns());
    // Any ms since this host booted.
    for ms in [
        boot_ms + 1,
        now_ms,
        now_ms - 1,
        now_ms + 3,
        (boot_ms + now_ms) / 2,
    ] {
        assert_eq!(c.wall_ms(c.mono_ns(ms)), ms, "{ms}");
    }
    // A local pin's pinned_ms survives a trip through a peer and back.
    let created = monotonic_ns();
    let ms = c.wall_ms(created);
    assert_eq!(c.wall_ms(c.mono_ns(ms)), ms);
    assert!(c.mono_ns(ms) <= created && created - c.mono_ns(ms) < MS);
    // Before this host's boot: clamped to boot.
    assert_eq!(c.mono_ns(boot_ms - 1), 0);
    // The mapping is the wall clock's, to within the time it took to read.
    let wall_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(c.wall_ms(monotonic_ns()).abs_diff(wall_now) < 1000);
}

#[test]
fn identities_translate_entries_and_events() {
    let lb = started(&cfg());
    let ids = lb.identities();
    let now = monotonic_ns();
    let k = key(&lb, client(1));
    let b11 = backend_id(&lb, web(), 11);
    let v = AffinityValue {
        backend_id: b11,
        synced_s: 0,
        created_ns: now - 10 * S,
        last_seen_ns: now - 2 * S - 500 * MS,
    };
    let e = ids.entry(&k, &v, now).expect("known ids");
    assert_eq!(e.vip, web());
    assert_eq!(e.client, client(1));
    assert_eq!(e.backend, addr(11));
    assert_eq!(e.pinned_ms, clock().wall_ms(now - 10 * S));
    assert_eq!(e.idle_ms, 2500);
    let ev = SyncEvent {
        key: k,
        backend_id: b11,
        kind: sync_kind::NEW,
        created_ns: v.created_ns,
        last_seen_ns: v.last_seen_ns,
    };
    assert_eq!(ids.event(&ev, now), Some(e));
    // A last-seen after `now` (read before the program wrote it) is idle 0.
    assert_eq!(ids.entry(&k, &v, v.last_seen_ns - 1).unwrap().idle_ms, 0);
    // Unknown VIP id, unknown backend id, another VIP's backend id.
    let bad_vip = AffinityKey { vip_id: 63, ..k };
    assert_eq!(ids.entry(&bad_vip, &v, now), None);
    let bad_backend = AffinityValue {
        backend_id: 4000,
        ..v
    };
    assert_eq!(ids.entry(&k, &bad_backend, now), None);
    let api = VipKey::new(VIP, 81, proto::TCP);
    let other = AffinityValue {
        backend_id: backend_id(&lb, api, 11),
        ..v
    };
    assert_eq!(ids.entry(&k, &other, now), None);
}

#[test]
fn unknown_vip_backend_and_dead_backend_are_counted_not_applied() {
    let mut lb = started(&cfg());
    set_alive(&mut lb, 12, false);
    lb.maps_mut().take_log();
    let now = monotonic_ns();
    let ms = clock().wall_ms(now);
    let other_vip = SyncEntry {
        vip: VipKey::new(VIP, 8080, proto::TCP),
        ..entry(client(1), 10, ms, 0)
    };
    let udp = SyncEntry {
        vip: VipKey::new(VIP, 80, proto::UDP),
        ..entry(client(1), 10, ms, 0)
    };
    let got = lb
        .apply_remote(
            &[
                other_vip,
                udp,
                entry(client(2), 99, ms, 0),
                entry(client(3), 12, ms, 0),
            ],
            now,
        )
        .unwrap();
    assert_eq!(
        got,
        SyncApplied {
            unknown_vip: 2,
            unknown_backend: 1,
            dead_backend: 1,
            ..Default::default()
        }
    );
    assert!(lb.maps().log.is_empty(), "{:?}", lb.maps().log);
    // A backend without a MAC is not alive either.
    assert!(lb.maps().affinity.is_empty());
}

#[test]
fn a_new_client_is_inserted_with_the_senders_times() {
    let mut lb = started(&cfg());
    let now = monotonic_ns();
    let pinned_ms = clock().wall_ms(now) - 30_000;
    let got = lb
        .apply_remote(&[entry(client(1), 11, pinned_ms, 1500)], now)
        .unwrap();
    assert_eq!(got.inserted, 1);
    let v = stored(&lb, client(1)).expect("inserted");
    assert_eq!(v.backend_id, backend_id(&lb, web(), 11));
    assert_eq!(clock().wall_ms(v.created_ns), pinned_ms, "exact pinned_ms");
    assert_eq!(v.last_seen_ns, now - 1500 * MS);
    assert_eq!(v.synced_s, coarse_secs(now), "marked as just announced");
    // What this node would now send of it is what it received (but idle).
    let back = lb
        .identities()
        .entry(&key(&lb, client(1)), &v, now)
        .unwrap();
    assert_eq!(back, entry(client(1), 11, pinned_ms, 1500));
    // An idle time longer than `now` since boot is never in the future.
    let got = lb
        .apply_remote(&[entry(client(2), 11, pinned_ms, 10_000)], 5 * S)
        .unwrap();
    assert_eq!(got.inserted, 1);
    assert_eq!(stored(&lb, client(2)).unwrap().last_seen_ns, 0);
}

#[test]
fn an_entry_idle_for_the_timeout_is_not_inserted() {
    let mut lb = started(&cfg());
    let now = monotonic_ns();
    let ms = clock().wall_ms(now);
    let got = lb
        .apply_remote(&[entry(client(1), 11, ms, 60_000)], now)
        .unwrap();
    assert_eq!(got.expired, 1);
    assert_eq!(got.inserted, 0);
    assert!(lb.maps().affinity.is_empty());
}

#[test]
fn the_same_pin_only_moves_last_seen_forward() {
    let mut lb = started(&cfg());
    let now = monotonic_ns();
    local_pin(&mut lb, client(1), 10, now - 20 * S, now - 5 * S);
    let ms = clock().wall_ms(now - 20 * S);
    // Received idle 1 s: last seen moves forward, created_ns stays.
    let got = lb
        .apply_remote(&[entry(client(1), 10, ms, 1000)], now)
        .unwrap();
    assert_eq!(got.refreshed, 1);
    assert_eq!(got.inserted, 0);
    let v = stored(&lb, client(1)).unwrap();
    assert_eq!(v.last_seen_ns, now - S);
    assert_eq!(v.created_ns, now - 20 * S);
    assert_eq!(v.synced_s, coarse_secs(now));
    // Received idle 10 s (older news): nothing written.
    lb.maps_mut().take_log();
    let got = lb
        .apply_remote(&[entry(client(1), 10, ms, 10_000)], now)
        .unwrap();
    assert_eq!(got.refreshed, 1);
    assert!(lb.maps().log.is_empty());
    assert_eq!(stored(&lb, client(1)).unwrap().last_seen_ns, now - S);
}

#[test]
fn the_same_backend_pinned_earlier_lowers_ours_and_later_is_corrected() {
    let mut lb = started(&cfg());
    let now = monotonic_ns();
    local_pin(&mut lb, client(1), 10, now - 20 * S, now - 5 * S);
    let ms = clock().wall_ms(now - 20 * S);
    // Pinned to the same backend 7 ms earlier elsewhere: ours takes that
    // pinned_ms; last seen only moves forward (the sender's is older).
    let got = lb
        .apply_remote(&[entry(client(1), 10, ms - 7, 9000)], now)
        .unwrap();
    assert_eq!((got.lowered, got.applied(), got.not_applied()), (1, 1, 0));
    let v = stored(&lb, client(1)).unwrap();
    assert_eq!(clock().wall_ms(v.created_ns), ms - 7);
    assert_eq!(v.last_seen_ns, now - 5 * S);
    // Pinned to it 3 ms later elsewhere: answered with ours (so that the
    // sender lowers its own), last seen moved forward all the same.
    let got = lb
        .apply_remote(&[entry(client(1), 10, ms - 4, 1000)], now)
        .unwrap();
    assert_eq!(got.kept_local, vec![entry(client(1), 10, ms - 7, 1000)]);
    assert_eq!((got.applied(), got.not_applied()), (0, 1));
    let v = stored(&lb, client(1)).unwrap();
    assert_eq!(clock().wall_ms(v.created_ns), ms - 7);
    assert_eq!(v.last_seen_ns, now - S);
}

#[test]
fn the_earlier_pin_wins_and_a_losing_one_is_answered() {
    let mut lb = started(&cfg());
    let now = monotonic_ns();
    local_pin(&mut lb, client(1), 10, now - 20 * S, now - S);
    local_pin(&mut lb, client(2), 10, now - 20 * S, now - S);
    let local_ms = clock().wall_ms(now - 20 * S);
    let got = lb
        .apply_remote(
            &[
                // Earlier than ours: taken.
                entry(client(1), 11, local_ms - 1, 0),
                // Later than ours (a re-pick during the sync lag):
                // answered with ours.
                entry(client(2), 11, local_ms + 1, 0),
            ],
            now,
        )
        .unwrap();
    assert_eq!(got.inserted, 1);
    assert_eq!(stored_backend(&lb, client(1)), Some(addr(11)));
    assert_eq!(stored_backend(&lb, client(2)), Some(addr(10)));
    assert_eq!(got.kept_local, vec![entry(client(2), 10, local_ms, 1000)]);
    // A tie: the lower backend address wins on both sides.
    let got = lb
        .apply_remote(&[entry(client(2), 12, local_ms, 0)], now)
        .unwrap();
    assert_eq!(got.kept_local.len(), 1);
    local_pin(&mut lb, client(3), 12, now - 20 * S, now - S);
    let got = lb
        .apply_remote(&[entry(client(3), 11, local_ms, 0)], now)
        .unwrap();
    assert_eq!(got.inserted, 1);
    assert_eq!(stored_backend(&lb, client(3)), Some(addr(11)));
}

#[test]
fn received_entries_are_applied_or_counted_as_not_applied() {
    let mut lb = started(&cfg());
    let now = monotonic_ns();
    set_alive(&mut lb, 12, false);
    local_pin(&mut lb, client(1), 10, now - 20 * S, now - S);
    let ms = clock().wall_ms(now - 20 * S);
    let mut other = entry(client(9), 10, ms, 0);
    other.vip = VipKey::new(VIP, 9, proto::TCP);
    let mut stranger = entry(client(8), 10, ms, 0);
    stranger.backend = SocketAddrV4::new([192, 0, 2, 99].into(), 80);
    let sent = [
        entry(client(1), 10, ms, 0),      // refreshed
        entry(client(1), 11, ms + 1, 0),  // corrected
        entry(client(2), 11, ms, 0),      // inserted
        entry(client(3), 11, ms, 70_000), // expired
        entry(client(4), 12, ms, 0),      // dead backend
        other,                            // unknown VIP
        stranger,                         // unknown backend
    ];
    let got = lb.apply_remote(&sent, now).unwrap();
    assert_eq!(got.applied(), 2, "{got:?}");
    assert_eq!(got.not_applied(), 5, "{got:?}");
}

#[test]
fn an_expired_or_dead_local_pin_counts_as_absent() {
    let mut lb = started(&cfg());
    let now = monotonic_ns();
    // Pinned earlier than the received one, but idle for the timeout.
    local_pin(&mut lb, client(1), 10, now - 100 * S, now - TIMEOUT_NS);
    // Pinned earlier, live, but its backend is down here.
    local_pin(&mut lb, client(2), 12, now - 100 * S, now);
    set_alive(&mut lb, 12, false);
    let early = clock().wall_ms(now - 50 * S);
    let got = lb
        .apply_remote(
            &[
                entry(client(1), 11, early, 0),
                entry(client(2), 11, early, 0),
            ],
            now,
        )
        .unwrap();
    assert_eq!(got.inserted, 2);
    assert!(got.kept_local.is_empty());
    assert_eq!(stored_backend(&lb, client(1)), Some(addr(11)));
    assert_eq!(stored_backend(&lb, client(2)), Some(addr(11)));
}

/// What a node has to send: its whole table, as a snapshot would be.
fn table(lb: &Lb<FakeMaps>, now: u64) -> Vec<SyncEntry> {
    let ids = lb.identities();
    lb.maps()
        .affinity_entries()
        .iter()
        .filter_map(|(k, v)| ids.entry(k, v, now))
        .collect()
}

/// Sends `a`'s table to `b`, then each side's corrections to the other,
/// until neither has anything to send; how many messages that took.
fn exchange(a: &mut Lb<FakeMaps>, b: &mut Lb<FakeMaps>, now: u64) -> usize {
    let mut to_b = table(a, now);
    let mut to_a = table(b, now);
    let mut messages = 0;
    while !to_a.is_empty() || !to_b.is_empty() {
        messages += 1;
        assert!(messages <= 10, "no end to the corrections");
        let from_b = b.apply_remote(&to_b, now).unwrap().kept_local;
        let from_a = a.apply_remote(&to_a, now).unwrap().kept_local;
        to_a = from_b;
        to_b = from_a;
    }
    messages
}

fn two_nodes_with_random_pins(seed: u64, clients: u32) -> (Lb<FakeMaps>, Lb<FakeMaps>, u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut a, mut b) = (started(&cfg()), started(&cfg()));
    let now = monotonic_ns();
    for i in 0..clients {
        for lb in [&mut a, &mut b] {
            if rng.u8(0..4) == 0 {
                continue;
            }
            // Few distinct times, so that ties happen.
            let created = now - rng.u64(1..5) * MS;
            local_pin(lb, client(i), rng.u8(10..=12), created, now);
        }
    }
    (a, b, now)
}

#[test]
fn two_nodes_converge_on_the_earliest_pin_and_fall_quiet() {
    for seed in 0..20 {
        let (mut a, mut b, now) = two_nodes_with_random_pins(seed, 200);
        let messages = exchange(&mut a, &mut b, now);
        assert!(messages <= 3, "seed {seed}: {messages} messages");
        for i in 0..200 {
            let c = client(i);
            assert_eq!(
                stored_backend(&a, c),
                stored_backend(&b, c),
                "seed {seed}: client {c}"
            );
        }
        // Quiet: one more full exchange inserts nothing and corrects nothing.
        let again = b.apply_remote(&table(&a, now), now).unwrap();
        assert_eq!((again.inserted, again.kept_local.len()), (0, 0));
        assert_eq!(again.refreshed as usize, table(&a, now).len());
    }
}

#[test]
fn nodes_whose_health_views_differ_fall_quiet_too() {
    for seed in 0..20 {
        let (mut a, mut b, now) = two_nodes_with_random_pins(seed, 200);
        // A cannot reach .12, B cannot reach .10.
        set_alive(&mut a, 12, false);
        set_alive(&mut b, 10, false);
        exchange(&mut a, &mut b, now);
        for i in 0..200 {
            let c = client(i);
            let (at_a, at_b) = (stored_backend(&a, c), stored_backend(&b, c));
            // Where each node's pin is one the other can use, they agree;
            // neither followed the other to a backend it thinks dead.
            let usable_at_a = |b: Option<SocketAddrV4>| b == Some(addr(10)) || b == Some(addr(11));
            let usable_at_b = |b: Option<SocketAddrV4>| b == Some(addr(11)) || b == Some(addr(12));
            if usable_at_b(at_a) && usable_at_a(at_b) {
                assert_eq!(at_a, at_b, "seed {seed}: client {c}");
            }
        }
    }
    // The smallest case by hand: A pins earlier to a backend B thinks dead,
    // B later to one both think alive.
    let (mut a, mut b) = (started(&cfg()), started(&cfg()));
    set_alive(&mut b, 10, false);
    let now = monotonic_ns();
    local_pin(&mut a, client(1), 10, now - 2 * S, now);
    local_pin(&mut b, client(1), 11, now - S, now);
    let messages = exchange(&mut a, &mut b, now);
    assert_eq!(messages, 2, "B's pin, A's correction, and nothing after");
    assert_eq!(stored_backend(&a, client(1)), Some(addr(10)));
    assert_eq!(stored_backend(&b, client(1)), Some(addr(11)));
}

/// A node's pin of `c` as it would send the client: live and to a backend
/// alive here, with its pinned_ms.
fn effective(lb: &Lb<FakeMaps>, c: Ipv4Addr) -> Option<(SocketAddrV4, u64)> {
    let v = stored(lb, c)?;
    let vip = lb.vips().iter().find(|v| v.key == web()).unwrap();
    let b = vip
        .backends
        .iter()
        .find(|b| b.id == v.backend_id && b.alive())?;
    Some((b.addr, clock().wall_ms(v.created_ns)))
}

/// Every node sends its table to every other (full mesh), one entry a
/// message, delivered in a random order; every correction goes back to
/// the entry's sender and joins the pool. How many were delivered before
/// the pool ran dry (it must).
fn mesh_exchange(nodes: &mut [Lb<FakeMaps>], rng: &mut fastrand::Rng, now: u64) -> usize {
    let mut pool: Vec<(usize, usize, SyncEntry)> = Vec::new();
    for from in 0..nodes.len() {
        for e in table(&nodes[from], now) {
            for to in (0..nodes.len()).filter(|&t| t != from) {
                pool.push((from, to, e));
            }
        }
    }
    let mut delivered = 0;
    while !pool.is_empty() {
        delivered += 1;
        assert!(delivered < 1_000_000, "no end to the corrections");
        let (from, to, e) = pool.swap_remove(rng.usize(..pool.len()));
        let got = nodes[to].apply_remote(&[e], now).unwrap();
        assert_eq!(got.applied() + got.not_applied(), 1, "{got:?}");
        for back in got.kept_local {
            pool.push((to, from, back));
        }
    }
    delivered
}

fn nodes_with_random_pins(rng: &mut fastrand::Rng, n: usize, clients: u32) -> Vec<Lb<FakeMaps>> {
    let mut nodes: Vec<Lb<FakeMaps>> = (0..n).map(|_| started(&cfg())).collect();
    let now = monotonic_ns();
    for i in 0..clients {
        for lb in &mut nodes {
            if rng.u8(0..3) == 0 {
                continue;
            }
            // Few distinct times and backends, so that ties and one
            // backend pinned independently at different times happen.
            let created = now - rng.u64(1..6) * MS;
            local_pin(lb, client(i), rng.u8(10..=12), created, now);
        }
    }
    nodes
}

#[test]
fn three_and_four_nodes_converge_on_the_earliest_live_pin_in_any_order() {
    const CLIENTS: u32 = 60;
    for seed in 0..40 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let n = if seed % 2 == 0 { 3 } else { 4 };
        let mut nodes = nodes_with_random_pins(&mut rng, n, CLIENTS);
        // Half the runs: one view of health everywhere (.12 down on every
        // node in some); the others: each node may think one backend dead.
        let same_view = seed % 4 < 2;
        let mut dead = vec![None; n];
        if same_view {
            if rng.bool() {
                dead = vec![Some(12u8); n];
            }
        } else {
            for d in &mut dead {
                *d = rng.bool().then(|| rng.u8(10..=12));
            }
        }
        for (lb, d) in nodes.iter_mut().zip(&dead) {
            if let Some(octet) = d {
                set_alive(lb, *octet, false);
            }
        }
        let alive_everywhere = |b: SocketAddrV4| dead.iter().all(|d| d.map(addr) != Some(b));
        let now = monotonic_ns();
        // Every node's pins before: the earliest of all, and the earliest
        // whose backend is alive everywhere.
        let before: Vec<Vec<(SocketAddrV4, u64)>> = (0..CLIENTS)
            .map(|i| {
                let mut pins: Vec<(SocketAddrV4, u64)> = nodes
                    .iter()
                    .filter_map(|lb| {
                        let v = stored(lb, client(i))?;
                        Some((
                            stored_backend(lb, client(i))?,
                            clock().wall_ms(v.created_ns),
                        ))
                    })
                    .collect();
                pins.sort_by_key(|&(b, ms)| (ms, b));
                pins
            })
            .collect();
        let stored_before: Vec<Vec<Option<AffinityValue>>> = nodes
            .iter()
            .map(|lb| (0..CLIENTS).map(|i| stored(lb, client(i))).collect())
            .collect();
        mesh_exchange(&mut nodes, &mut rng, now);
        for i in 0..CLIENTS {
            let c = client(i);
            let after: Vec<_> = nodes.iter().map(|lb| effective(lb, c)).collect();
            // No node was moved to a backend it thinks dead: an entry to
            // one is the node's own, untouched.
            for (n, (lb, d)) in nodes.iter().zip(&dead).enumerate() {
                if let (Some(octet), Some(v)) = (d, stored(lb, c))
                    && v.backend_id == backend_id(lb, web(), *octet)
                {
                    assert_eq!(
                        Some(v),
                        stored_before[n][i as usize],
                        "seed {seed}: {c} moved to a dead backend on node {n}"
                    );
                }
            }
            let earliest = before[i as usize].first().copied();
            let earliest_live = before[i as usize]
                .iter()
                .copied()
                .find(|&(b, _)| alive_everywhere(b));
            if same_view {
                // One view: every node ends on the earliest live pin.
                assert!(
                    after.iter().all(|a| *a == earliest_live),
                    "seed {seed}: {c}: {after:?}, pins {:?}",
                    before[i as usize]
                );
            } else if let Some(p) = earliest.filter(|&(b, _)| alive_everywhere(b)) {
                // The earliest pin is usable everywhere: all take it.
                assert!(
                    after.iter().all(|a| *a == Some(p)),
                    "seed {seed}: {c}: {after:?}, pins {:?}",
                    before[i as usize]
                );
            }
        }
        // Quiet: another full round applies the same pins and corrects
        // nothing.
        for from in 0..n {
            for to in (0..n).filter(|&t| t != from) {
                let sent = table(&nodes[from], now);
                let got = nodes[to].apply_remote(&sent, now).unwrap();
                assert_eq!((got.inserted, got.lowered), (0, 0), "seed {seed}");
                if same_view {
                    assert!(got.kept_local.is_empty(), "seed {seed}: {got:?}");
                }
            }
        }
    }
}

#[test]
fn one_backend_pinned_independently_ends_as_one_pin() {
    // A pinned the client to X at 100, B to X at 105, D to Y at 102. With a
    // node keeping its own pinned_ms for a same-backend pin, A would move
    // to D's (Y, 102) and B and D stay split.
    let now = monotonic_ns();
    let base = now - 200 * MS;
    let want = Some((addr(10), clock().wall_ms(base)));
    for seed in 0..20 {
        let mut nodes: Vec<Lb<FakeMaps>> = (0..3).map(|_| started(&cfg())).collect();
        local_pin(&mut nodes[0], client(1), 10, base, now);
        local_pin(&mut nodes[1], client(1), 10, base + 5 * MS, now);
        local_pin(&mut nodes[2], client(1), 11, base + 2 * MS, now);
        mesh_exchange(&mut nodes, &mut fastrand::Rng::with_seed(seed), now);
        for lb in &nodes {
            assert_eq!(effective(lb, client(1)), want, "seed {seed}");
        }
    }
}
