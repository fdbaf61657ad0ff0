//! The reconcile logic against `FakeMaps`: adoption, plan/apply, the order
//! of map writes. No root, no kernel.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use lb_common::{NO_BACKEND, VipKey, backend_flags};

use super::{
    BackendChange, Lb, LbError, VipChange,
    fake::{FakeMaps, Op},
};
use crate::{config::Config, health::State};

/// A VIP: (name, port, table size, backends as (last octet, weight)).
type VipDef<'a> = (&'a str, u16, u32, &'a [(u8, u32)]);

fn config(vips: &[VipDef<'_>]) -> Config {
    let mut s = String::from("interface = \"lo\"\n");
    for (name, port, size, backends) in vips {
        s += &format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"198.51.100.10\"\nport = {port}\ntable_size = {size}\n"
        );
        for (octet, weight) in *backends {
            s += &format!(
                "\n[[vip.backend]]\naddress = \"192.0.2.{octet}\"\nport = 80\nweight = {weight}\nmac = \"02:00:00:00:00:{octet:02x}\"\n"
            );
        }
    }
    Config::parse(&s).expect("valid config")
}

fn web(backends: &[(u8, u32)]) -> Config {
    config(&[("web", 80, 251, backends)])
}

fn addr(octet: u8) -> SocketAddrV4 {
    SocketAddrV4::new([192, 0, 2, octet].into(), 80)
}

/// An Lb on fresh fake maps with every backend up, and the log emptied.
pub(super) fn started(cfg: &Config) -> Lb<FakeMaps> {
    let mut lb = Lb::start(FakeMaps::default(), cfg).unwrap();
    let ids: Vec<u32> = lb
        .vips()
        .iter()
        .flat_map(|v| v.backends.iter().map(|b| b.id))
        .collect();
    for id in ids {
        lb.set_health(id, State::Up, "test").unwrap();
    }
    lb.maps_mut().take_log();
    lb
}

fn id_of(lb: &Lb<FakeMaps>, vip: &str, octet: u8) -> u32 {
    let v = &lb.vips()[lb.vip_index(vip).unwrap()];
    v.backends
        .iter()
        .find(|b| b.addr == addr(octet))
        .unwrap()
        .id
}

/// The fake's ring for VIP `vi`, as the XDP program would read it.
fn ring_of(lb: &Lb<FakeMaps>, vi: usize) -> Vec<u32> {
    let info = lb.vips()[vi].info;
    lb.maps().ring[info.ring_base as usize..(info.ring_base + info.ring_size) as usize].to_vec()
}

#[test]
fn adoption_writes_nothing_that_need_not_change() {
    let cfg = web(&[(10, 1), (11, 1), (12, 1)]);
    let mut lb = started(&cfg);
    lb.set_health(id_of(&lb, "web", 12), State::Down, "test")
        .unwrap();
    let table = lb.vips()[0].table.clone();
    let ids: Vec<u32> = lb.vips()[0].backends.iter().map(|b| b.id).collect();
    let mut pinned = lb.into_maps();
    pinned.take_log();

    let lb2 = Lb::start(pinned, &cfg).unwrap();
    assert_eq!(
        lb2.maps().log,
        Vec::<Op>::new(),
        "adoption wrote to the maps"
    );
    assert_eq!(lb2.vips()[0].table, table);
    let ids2: Vec<u32> = lb2.vips()[0].backends.iter().map(|b| b.id).collect();
    assert_eq!(ids2, ids);
    let health: Vec<Option<State>> = lb2.vips()[0].backends.iter().map(|b| b.health).collect();
    assert_eq!(health, [Some(State::Up), Some(State::Up), None]);
    // And a reload of the same file plans nothing.
    let plan = lb2.plan_config(&cfg, Vec::new()).unwrap();
    assert!(plan.is_empty(), "{plan}");
    assert_eq!(plan.to_string(), "no changes");
}

#[test]
fn adoption_plans_a_table_size_the_file_changed() {
    let mut pinned = started(&web(&[(10, 1), (11, 1)])).into_maps();
    pinned.take_log();
    let file = config(&[("web", 80, 509, &[(10, 1), (11, 1)])]);
    // The state adopted from the maps carries the pinned size, so the plan
    // made at start reports the file's change.
    let adopted = Lb::adopted(pinned.clone(), &file).unwrap();
    let plan = adopted.plan_config(&file, Vec::new()).unwrap();
    assert_eq!(plan.to_string(), "VIP web: table_size 251 -> 509");
    let lb = Lb::start(pinned, &file).unwrap();
    assert_eq!(lb.vips()[0].info.ring_size, 509);
    assert_eq!(ring_of(&lb, 0), lb.vips()[0].table);
}

#[test]
fn failover_marks_dead_before_rewriting_slots() {
    let mut lb = started(&web(&[(10, 1), (11, 1), (12, 1)]));
    let victim = id_of(&lb, "web", 11);
    let owned = lb.vips()[0].table.iter().filter(|&&s| s == victim).count();
    lb.set_health(victim, State::Down, "test").unwrap();
    let log = lb.maps_mut().take_log();
    assert_eq!(log.len(), 2, "{log:?}");
    let Op::SetBackend(id, info) = log[0] else {
        panic!("first write is not the backend entry: {log:?}")
    };
    assert_eq!(id, victim);
    assert_eq!(info.flags & backend_flags::ALIVE, 0);
    let Op::WriteRing { slots, .. } = &log[1] else {
        panic!("second write is not the ring: {log:?}")
    };
    assert_eq!(slots.len(), owned);
    assert!(slots.iter().all(|&(_, id)| id != victim));
    assert_eq!(ring_of(&lb, 0), lb.vips()[0].table);
}

#[test]
fn reused_id_is_purged_before_reuse() {
    let mut lb = started(&web(&[(10, 1), (11, 1), (12, 1)]));
    let gone = id_of(&lb, "web", 11);
    let kept = id_of(&lb, "web", 10);
    lb.maps_mut().pin(0, [203, 0, 113, 1], gone, 1);
    lb.maps_mut().pin(0, [203, 0, 113, 2], kept, 1);

    // One reload drops .11 and adds .13, which gets .11's id.
    lb.apply_config(&web(&[(10, 1), (12, 1), (13, 1)])).unwrap();
    assert_eq!(id_of(&lb, "web", 13), gone);
    let log = lb.maps_mut().take_log();
    let purge = log
        .iter()
        .position(|op| matches!(op, Op::Purge(p) if p == &[(0, gone)]))
        .unwrap_or_else(|| panic!("no purge of id {gone}: {log:?}"));
    let cleared = log
        .iter()
        .position(|op| matches!(op, Op::SetBackend(id, i) if *id == gone && i.flags == 0))
        .expect("the freed id is cleared");
    let reused = log
        .iter()
        .position(|op| matches!(op, Op::SetBackend(id, i) if *id == gone && i.flags != 0))
        .expect("the id is written for its new backend");
    assert!(cleared < reused && purge < reused, "{log:?}");
    // The client of the kept backend is still pinned; the other is gone.
    assert_eq!(lb.maps().affinity.len(), 1);
    assert_eq!(lb.maps().affinity.values().next().unwrap().backend_id, kept);
}

#[test]
fn rename_keeps_id_table_and_key() {
    let mut lb = started(&web(&[(10, 1), (11, 1)]));
    let (id, table) = (lb.vips()[0].id, lb.vips()[0].table.clone());
    let renamed = config(&[("www", 80, 251, &[(10, 1), (11, 1)])]);
    let plan = lb.plan_config(&renamed, Vec::new()).unwrap();
    assert_eq!(plan.to_string(), "VIP www: renamed from web");
    assert!(matches!(
        &plan.report.vips[0].change,
        VipChange::Kept { renamed_from: Some(n), settings } if n == "web" && settings.is_empty()
    ));
    lb.apply(plan).unwrap();
    assert_eq!(lb.vips()[0].name, "www");
    assert_eq!(lb.vips()[0].id, id);
    assert_eq!(lb.vips()[0].table, table);
    assert_eq!(lb.maps_mut().take_log(), Vec::<Op>::new());
}

#[test]
fn key_swap_keeps_both_vips_in_the_map() {
    let a = &[(10, 1)][..];
    let b = &[(20, 1)][..];
    let mut lb = started(&config(&[("a", 81, 251, a), ("b", 82, 251, b)]));
    let ids = (lb.vips()[0].id, lb.vips()[1].id);
    let plan = lb
        .plan_config(&config(&[("a", 82, 251, a), ("b", 81, 251, b)]), Vec::new())
        .unwrap();
    assert_eq!(
        plan.to_string(),
        "VIP a: address/port/protocol 198.51.100.10:81/tcp -> 198.51.100.10:82/tcp; \
         VIP b: address/port/protocol 198.51.100.10:82/tcp -> 198.51.100.10:81/tcp"
    );
    lb.apply(plan).unwrap();
    let key = |port| VipKey::new([198, 51, 100, 10].into(), port, 6);
    let vips = &lb.maps().vips;
    assert_eq!(vips.len(), 2);
    assert_eq!(vips[&key(82)].vip_id, ids.0);
    assert_eq!(vips[&key(81)].vip_id, ids.1);
    let log = lb.maps_mut().take_log();
    assert!(
        !log.iter().any(|op| matches!(op, Op::RemoveVip(_))),
        "{log:?}"
    );
}

#[test]
fn refused_plan_changes_nothing() {
    // Three big tables; growing the second leaves a hole where it was, and
    // growing the third then finds no contiguous space although the sizes
    // are valid. The plan is refused before anything changes.
    let vips = |sizes: [u32; 3]| {
        config(&[
            ("a", 80, sizes[0], &[(10, 1)]),
            ("b", 81, sizes[1], &[(11, 1)]),
            ("c", 82, sizes[2], &[(12, 1)]),
        ])
    };
    let mut lb = started(&vips([500_009, 500_009, 500_009]));
    lb.apply_config(&vips([500_009, 510_007, 500_009])).unwrap();
    let before_maps = lb.maps().vips.clone();
    let before: Vec<_> = lb
        .vips()
        .iter()
        .map(|v| (v.info, v.table.clone()))
        .collect();
    lb.maps_mut().take_log();
    let mut too_far = vips([500_009, 510_007, 520_019]);
    // Also a backend change that must not be applied either.
    too_far.vips[0].backends[0].weight = 7;
    let err = lb.apply_config(&too_far).unwrap_err();
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert_eq!(lb.maps_mut().take_log(), Vec::<Op>::new());
    assert_eq!(lb.maps().vips, before_maps);
    let after: Vec<_> = lb
        .vips()
        .iter()
        .map(|v| (v.info, v.table.clone()))
        .collect();
    assert_eq!(after, before);
    assert_eq!(lb.vips()[0].backends[0].weight, 1);
}

#[test]
fn exhausted_ids_are_refused_before_anything_changes() {
    let lb = started(&web(&[(10, 1)]));
    // More VIPs than there are ids (the file's validation stops this; a
    // plan must stop it on its own as well).
    let mut desired = lb.desired();
    for i in 0..lb_common::MAX_VIPS {
        let mut v = desired[0].clone();
        v.cfg.name = format!("v{i}");
        v.cfg.port = 1000 + i as u16;
        desired.push(v);
    }
    let Err(e) = lb.plan(desired, Vec::new()) else {
        panic!("a plan past the VIP ids was accepted")
    };
    assert!(matches!(e, LbError::Exhausted(_, "VIP")), "{e}");
}

#[test]
fn reload_after_live_changes_reports_what_it_reverts() {
    let cfg = web(&[(10, 1), (11, 1), (12, 1)]);
    let mut lb = started(&cfg);
    lb.set_drain("web", addr(10), true).unwrap();
    lb.set_weight("web", addr(11), 5).unwrap();
    let added = lb
        .add_backend(
            "web",
            addr(13),
            1,
            Some([2, 0, 0, 0, 0, 13]),
            no_machine_problems,
        )
        .unwrap();
    lb.maps_mut().take_log();

    let plan = lb.plan_config(&cfg, Vec::new()).unwrap();
    assert!(!plan.is_empty());
    assert_eq!(
        plan.to_string(),
        "VIP web: ~192.0.2.10:80 (drained yes -> no) ~192.0.2.11:80 (weight 5 -> 1) -192.0.2.13:80"
    );
    let removed = &plan.report.vips[0].removed_backends;
    assert_eq!(
        (removed[0].address, removed[0].id),
        (addr(13).into(), added)
    );
    lb.apply(plan).unwrap();
    assert!(lb.plan_config(&cfg, Vec::new()).unwrap().is_empty());
    let b = &lb.vips()[0].backends;
    assert!(!b[0].drained);
    assert_eq!(b[1].weight, 1);
    assert_eq!(b.len(), 3);
}

#[test]
fn live_changes_take_the_plan_path() {
    let mut lb = started(&web(&[(10, 1), (11, 1)]));
    // A drain writes only slots (the entry says nothing of draining).
    let r = lb.set_drain("web", addr(10), true).unwrap();
    let log = lb.maps_mut().take_log();
    assert!(r.slots_written > 0);
    assert!(
        matches!(&log[..], [Op::WriteRing { slots, .. }] if slots.len() == r.slots_written),
        "{log:?}"
    );
    // A live-added backend is written, not yet alive, and owns no slot.
    let id = lb
        .add_backend("web", addr(12), 1, None, no_machine_problems)
        .unwrap();
    let log = lb.maps_mut().take_log();
    assert!(
        matches!(&log[..], [Op::SetBackend(i, info)] if *i == id && !info.is_alive()),
        "{log:?}"
    );
    // Removing it clears and purges.
    lb.remove_backend(0, addr(12)).unwrap();
    let log = lb.maps_mut().take_log();
    assert!(
        log.iter()
            .any(|op| matches!(op, Op::SetBackend(i, info) if *i == id && info.flags == 0))
    );
    assert!(log.iter().any(|op| matches!(op, Op::Purge(_))));
    // Errors name what is wrong, and change nothing.
    assert!(matches!(
        lb.set_weight("web", addr(99), 1),
        Err(LbError::UnknownBackend { .. })
    ));
    assert!(matches!(
        lb.set_drain("nope", addr(10), true),
        Err(LbError::UnknownVip(_))
    ));
    assert_eq!(lb.maps_mut().take_log(), Vec::<Op>::new());
}

#[test]
fn stale_plan_is_refused() {
    let mut lb = started(&web(&[(10, 1), (11, 1)]));
    let plan = lb.plan_config(&web(&[(10, 1)]), Vec::new()).unwrap();
    lb.set_health(id_of(&lb, "web", 10), State::Down, "test")
        .unwrap();
    lb.maps_mut().take_log();
    assert!(matches!(lb.apply(plan), Err(LbError::StalePlan)));
    assert_eq!(lb.maps_mut().take_log(), Vec::<Op>::new());
    assert_eq!(lb.vips()[0].backends.len(), 2);
}

#[test]
fn plan_lists_additions_removals_and_restart_only_fields() {
    let lb = started(&config(&[
        ("a", 81, 251, &[(10, 1)]),
        ("b", 82, 251, &[(11, 1)]),
    ]));
    let plan = lb
        .plan_config(
            &config(&[
                ("a", 81, 251, &[(10, 2), (12, 1)]),
                ("c", 83, 251, &[(13, 1)]),
            ]),
            vec!["hash_seed".into()],
        )
        .unwrap();
    assert_eq!(
        plan.to_string(),
        "VIP a: ~192.0.2.10:80 (weight 1 -> 2) +192.0.2.12:80; VIP c added with 1 backends; \
         VIP b removed; needs a restart to apply: hash_seed"
    );
    assert!(matches!(
        plan.report.vips[0].backends[1].change,
        BackendChange::Added
    ));
    assert_eq!(plan.report.vips[1].change, VipChange::Added);
    // The VIP added reuses the removed one's id only after it is purged.
    assert_eq!(plan.report.vips[1].id, plan.report.removed[0].id);
    let json = serde_json::to_value(&plan.report).unwrap();
    assert_eq!(json["vips"][1]["change"], "added");
    assert_eq!(json["removed"][0]["name"], "b");
    assert_eq!(json["needs_restart"][0], "hash_seed");
}

#[test]
fn added_vip_fills_its_table_before_it_is_published() {
    let mut lb = started(&web(&[(10, 1)]));
    lb.apply_config(&config(&[
        ("web", 80, 251, &[(10, 1)]),
        ("api", 81, 7, &[(20, 1)]),
    ]))
    .unwrap();
    let log = lb.maps_mut().take_log();
    let ring = log.iter().position(|op| matches!(op, Op::WriteRing { slots, .. } if slots.iter().all(|&(_, v)| v == NO_BACKEND)));
    let vip = log.iter().position(|op| matches!(op, Op::SetVip(..)));
    assert!(ring.unwrap() < vip.unwrap(), "{log:?}");
}

#[test]
fn order_in_the_file_is_not_a_change() {
    let lb = started(&web(&[(10, 1), (11, 2), (12, 1)]));
    let plan = lb
        .plan_config(&web(&[(12, 1), (10, 1), (11, 2)]), Vec::new())
        .unwrap();
    assert!(plan.is_empty(), "{plan}");
}

#[test]
fn a_health_default_change_reaches_every_backend() {
    let cfg = web(&[(10, 1), (11, 1)]);
    let lb = started(&cfg);
    let mut new = cfg.clone();
    for b in &mut new.vips[0].backends {
        b.health.rise = 4;
    }
    new.vips[0].health.rise = 4;
    let plan = lb.plan_config(&new, Vec::new()).unwrap();
    let changed: Vec<_> = plan.report.vips[0]
        .backends
        .iter()
        .filter(|b| matches!(&b.change, BackendChange::Kept { settings } if settings[0].field == "health"))
        .map(|b| b.address)
        .collect();
    assert_eq!(changed, [addr(10).into(), addr(11).into()]);
    assert!(
        matches!(&plan.report.vips[0].change, VipChange::Kept { settings, .. } if settings.len() == 1),
        "{plan}"
    );
}

#[test]
fn vip_settings_are_reported_old_and_new() {
    let lb = started(&web(&[(10, 1)]));
    let mut new = web(&[(10, 1)]);
    new.vips[0].port = 8080;
    new.vips[0].table_size = 509;
    new.vips[0].affinity_timeout = std::time::Duration::from_secs(60);
    let plan = lb.plan_config(&new, Vec::new()).unwrap();
    assert_eq!(
        plan.to_string(),
        "VIP web: address/port/protocol 198.51.100.10:80/tcp -> 198.51.100.10:8080/tcp \
         table_size 251 -> 509 affinity_timeout 5m -> 1m"
    );
}

#[test]
fn a_failed_write_leaves_the_books_equal_to_the_maps() {
    let mut lb = started(&web(&[(10, 1), (11, 1)]));
    let key = lb.vips()[0].key;
    let before = lb.vips()[0].info;
    // A new table size: the new region is filled and rebuilt (two ring
    // writes), then the VIP entry switched (the third write), which fails.
    lb.maps_mut().writes_before_failure = Some(2);
    assert!(lb.apply_config(&web_sized(509)).is_err());
    lb.maps_mut().writes_before_failure = None;
    assert_eq!(lb.vips().len(), 1, "the VIP fell out of the books");
    assert_eq!(lb.vips()[0].backends.len(), 2);
    assert_eq!(lb.maps().vips[&key], before, "the data path was switched");
    assert_eq!(lb.vips()[0].info, before, "the books say another table");
    assert_eq!(
        lb.vips()[0].cfg.table_size,
        251,
        "the books say it was done"
    );
    let retry = lb.plan_config(&web_sized(509), Vec::new()).unwrap();
    assert_eq!(retry.to_string(), "VIP web: table_size 251 -> 509");
    assert_eq!(ring_of(&lb, 0), lb.vips()[0].table);
    // And the same change goes through once the maps take writes again.
    lb.apply_config(&web_sized(509)).unwrap();
    assert_eq!(lb.maps().vips[&key].ring_size, 509);
    assert_eq!(ring_of(&lb, 0), lb.vips()[0].table);

    // A backend entry that cannot be written: every backend stays known.
    lb.maps_mut().writes_before_failure = Some(0);
    assert!(
        lb.add_backend("web", addr(12), 1, None, no_machine_problems)
            .is_err()
    );
    lb.maps_mut().writes_before_failure = None;
    let known: Vec<_> = lb.vips()[0].backends.iter().map(|b| b.addr).collect();
    assert!(
        known.contains(&addr(10)) && known.contains(&addr(11)),
        "{known:?}"
    );
}

fn web_sized(size: u32) -> Config {
    config(&[("web", 80, size, &[(10, 1), (11, 1)])])
}

#[test]
fn a_failed_removal_keeps_what_it_did_not_clear() {
    let mut lb = started(&config(&[
        ("a", 81, 251, &[(10, 1)]),
        ("b", 82, 251, &[(11, 1)]),
    ]));
    let b_id = lb.vips()[1].id;
    let b_backend = id_of(&lb, "b", 11);
    lb.maps_mut().pin(b_id, [203, 0, 113, 9], b_backend, 1);
    // VIP b's entry goes, then clearing its backend fails.
    lb.maps_mut().writes_before_failure = Some(1);
    assert!(
        lb.apply_config(&config(&[("a", 81, 251, &[(10, 1)])]))
            .is_err()
    );
    lb.maps_mut().writes_before_failure = None;
    // b is still in the books (its id and its clients are not free yet),
    // and the retry finishes the removal, purge included.
    assert!(
        lb.vip_index("b").is_ok(),
        "a half-removed VIP left the books"
    );
    let plan = lb
        .plan_config(&config(&[("a", 81, 251, &[(10, 1)])]), Vec::new())
        .unwrap();
    assert_eq!(plan.to_string(), "VIP b removed");
    lb.apply(plan).unwrap();
    assert!(lb.maps().affinity.is_empty());
    assert_eq!(lb.vips().len(), 1);

    // A backend whose removal is cut short stays known until it is done.
    let mut lb = started(&web(&[(10, 1), (11, 1)]));
    lb.maps_mut().writes_before_failure = Some(1);
    assert!(lb.remove_backend(0, addr(11)).is_err());
    lb.maps_mut().writes_before_failure = None;
    assert_eq!(lb.vips()[0].backends.len(), 2);
    lb.remove_backend(0, addr(11)).unwrap();
    assert_eq!(lb.vips()[0].backends.len(), 1);
}

#[test]
fn adoption_rebuilds_a_table_that_names_a_backend_gone_from_the_file() {
    let first = started(&web(&[(10, 1), (11, 1), (12, 1)]));
    let gone = id_of(&first, "web", 12);
    let pinned = first.into_maps();
    let lb = Lb::start(pinned, &web(&[(10, 1), (11, 1)])).unwrap();
    assert!(lb.vips()[0].table.iter().all(|&s| s != gone));
    assert_eq!(ring_of(&lb, 0), lb.vips()[0].table);
}

/// A backend moved to another VIP takes back its old id (the lowest free
/// one), but it is another backend: a new serial, so nothing keyed by the
/// old one's (its checker) passes to it.
#[test]
fn a_backend_that_takes_a_freed_id_gets_a_new_serial() {
    let before = config(&[
        ("web", 80, 251, &[(10, 1), (11, 1)]),
        ("api", 81, 251, &[(12, 1)]),
    ]);
    let mut lb = started(&before);
    let serial_of = |lb: &Lb<FakeMaps>, vip: &str, octet: u8| {
        let v = &lb.vips()[lb.vip_index(vip).unwrap()];
        v.backends
            .iter()
            .find(|b| b.addr == addr(octet))
            .unwrap()
            .serial
    };
    let (moved_id, moved_serial) = (id_of(&lb, "web", 11), serial_of(&lb, "web", 11));
    let kept = serial_of(&lb, "web", 10);
    let after = config(&[
        ("web", 80, 251, &[(10, 1)]),
        ("api", 81, 251, &[(12, 1), (11, 1)]),
    ]);
    lb.apply_config(&after).unwrap();
    assert_eq!(id_of(&lb, "api", 11), moved_id, "the freed id is reused");
    assert_ne!(serial_of(&lb, "api", 11), moved_serial);
    assert_eq!(lb.find_serial(moved_serial), None);
    assert_eq!(
        serial_of(&lb, "web", 10),
        kept,
        "a kept backend keeps its serial"
    );
    let (vi, bi) = lb.find_serial(serial_of(&lb, "api", 11)).unwrap();
    assert_eq!(lb.vips()[vi].backends[bi].health, None, "not checked yet");
}

/// Slots of VIP `vi`'s ring that name a backend.
fn filled(lb: &Lb<FakeMaps>, vi: usize) -> usize {
    ring_of(lb, vi).iter().filter(|&&s| s != NO_BACKEND).count()
}

/// The ring writes in `log` that name a backend.
fn ring_writes(log: &[Op]) -> usize {
    log.iter()
        .filter(|op| matches!(op, Op::WriteRing { slots, .. } if slots.iter().any(|&(_, v)| v != NO_BACKEND)))
        .count()
}

#[test]
fn a_fresh_vip_writes_its_table_once_every_backend_is_known() {
    let cfg = web(&[(10, 1), (11, 1), (12, 1)]);
    let mut lb = Lb::start(FakeMaps::default(), &cfg).unwrap();
    assert!(lb.vips()[0].warming_up.is_some());
    assert!(lb.warm_up_deadline().is_some());
    lb.maps_mut().take_log();
    // Two of three known: the table stays empty, whatever they say.
    lb.set_health(id_of(&lb, "web", 10), State::Up, "test")
        .unwrap();
    lb.set_health(id_of(&lb, "web", 11), State::Down, "test")
        .unwrap();
    assert_eq!(filled(&lb, 0), 0);
    assert_eq!(ring_writes(&lb.maps_mut().take_log()), 0);
    // The third: the whole table, once, from all three.
    lb.set_health(id_of(&lb, "web", 12), State::Up, "test")
        .unwrap();
    assert!(lb.vips()[0].warming_up.is_none());
    assert_eq!(lb.warm_up_deadline(), None);
    assert_eq!(ring_writes(&lb.maps_mut().take_log()), 1);
    assert_eq!(ring_of(&lb, 0), lb.vips()[0].table);
    let up = [id_of(&lb, "web", 10), id_of(&lb, "web", 12)];
    assert!(
        ring_of(&lb, 0).iter().all(|s| up.contains(s)),
        "the two that are up"
    );
    // Later changes are applied at once, as always.
    lb.set_health(id_of(&lb, "web", 11), State::Up, "test")
        .unwrap();
    assert_eq!(ring_writes(&lb.maps_mut().take_log()), 1);
}

#[test]
fn a_backend_without_a_first_result_by_its_deadline_counts_as_down() {
    let cfg = web(&[(10, 1), (11, 1)]);
    let mut lb = Lb::start(FakeMaps::default(), &cfg).unwrap();
    lb.set_health(id_of(&lb, "web", 10), State::Up, "test")
        .unwrap();
    let due = lb.warm_up_deadline().unwrap();
    // Default health: 1s interval, 500ms timeout: the first result of
    // a fresh checker is due within 100ms + 500ms; the deadline is a
    // backstop beyond that (twice the timeout, plus a second of slack for
    // a busy event loop), not a tight expectation.
    let left = due - std::time::Instant::now();
    assert!(
        left > std::time::Duration::from_millis(1900)
            && left <= std::time::Duration::from_millis(2100),
        "{left:?}"
    );
    lb.warm_up_tick(due - std::time::Duration::from_millis(1))
        .unwrap();
    assert_eq!(filled(&lb, 0), 0, "not before the deadline");
    lb.warm_up_tick(due).unwrap();
    let v = &lb.vips()[0];
    assert!(v.warming_up.is_none());
    let late = v.backends.iter().find(|b| b.addr == addr(11)).unwrap();
    assert_eq!(late.health, Some(State::Down));
    assert!(
        late.reason.contains("no first check result"),
        "{}",
        late.reason
    );
    let first = id_of(&lb, "web", 10);
    assert!(ring_of(&lb, 0).iter().all(|&s| s == first));
    // Its first result when it comes is applied like any other.
    lb.set_health(id_of(&lb, "web", 11), State::Up, "test")
        .unwrap();
    assert!(ring_of(&lb, 0).contains(&id_of(&lb, "web", 11)));
}

#[test]
fn the_deadline_counts_from_the_checker_start() {
    let mut lb = Lb::start(FakeMaps::default(), &web(&[(10, 1)])).unwrap();
    let serial = lb.vips()[0].backends[0].serial;
    let later = std::time::Instant::now() + std::time::Duration::from_secs(5);
    lb.checker_started(serial, later);
    assert!(lb.warm_up_deadline().unwrap() > later);
}

#[test]
fn an_adopted_vip_serves_without_waiting() {
    let cfg = web(&[(10, 1), (11, 1)]);
    let mut pinned = started(&cfg).into_maps();
    pinned.take_log();
    let lb = Lb::start(pinned, &cfg).unwrap();
    assert!(lb.vips()[0].warming_up.is_none());
    assert_eq!(lb.warm_up_deadline(), None);
    assert_eq!(filled(&lb, 0), 251);
}

#[test]
fn a_vip_added_by_reload_waits_while_the_others_serve() {
    let mut lb = started(&web(&[(10, 1)]));
    lb.apply_config(&config(&[
        ("web", 80, 251, &[(10, 1)]),
        ("api", 81, 7, &[(20, 1), (21, 1)]),
    ]))
    .unwrap();
    let api = lb.vip_index("api").unwrap();
    assert!(lb.vips()[api].warming_up.is_some());
    assert!(lb.vips()[lb.vip_index("web").unwrap()].warming_up.is_none());
    lb.set_health(id_of(&lb, "api", 20), State::Up, "test")
        .unwrap();
    assert_eq!(filled(&lb, api), 0);
    // A backend added live while it waits is waited for too.
    lb.add_backend(
        "api",
        addr(22),
        1,
        Some([2, 0, 0, 0, 0, 22]),
        no_machine_problems,
    )
    .unwrap();
    lb.set_health(id_of(&lb, "api", 21), State::Up, "test")
        .unwrap();
    assert_eq!(filled(&lb, api), 0);
    // Removing the last one it waits for lets it serve.
    lb.remove_backend(api, addr(22)).unwrap();
    assert!(lb.vips()[api].warming_up.is_none());
    assert_eq!(filled(&lb, api), 7);
}

#[test]
fn an_overdue_backend_counts_as_down_while_the_vip_waits_for_another() {
    // 192.0.2.11 may take a minute for its first result, 192.0.2.10 half
    // a second: once .10 is overdue it is down, and the next deadline is
    // .11's (the daemon must not wake for .10 again and again).
    let cfg = Config::parse(
        "interface = \"lo\"\n\
         [[vip]]\nname = \"web\"\naddress = \"198.51.100.10\"\nport = 80\ntable_size = 251\n\
         [[vip.backend]]\naddress = \"192.0.2.10\"\nport = 80\nmac = \"02:00:00:00:00:0a\"\n\
         [[vip.backend]]\naddress = \"192.0.2.11\"\nport = 80\nmac = \"02:00:00:00:00:0b\"\n\
         [vip.backend.health]\ninterval = \"2m\"\ntimeout = \"1m\"\n",
    )
    .unwrap();
    let mut lb = Lb::start(FakeMaps::default(), &cfg).unwrap();
    let first = lb.warm_up_deadline().unwrap();
    lb.warm_up_tick(first).unwrap();
    let v = &lb.vips()[0];
    assert_eq!(v.backends[0].health, Some(State::Down));
    assert!(v.warming_up.is_some(), "still waiting for .11");
    let next = lb.warm_up_deadline().unwrap();
    assert!(
        next > first + std::time::Duration::from_secs(50),
        "{next:?}"
    );
    lb.warm_up_tick(next).unwrap();
    assert!(lb.vips()[0].warming_up.is_none());
    assert_eq!(lb.warm_up_deadline(), None);
    assert_eq!(filled(&lb, 0), 0, "nobody up: an empty table");
}

#[test]
fn udp_vips_get_a_pin_budget_from_capacity_timeout_and_cpus_tcp_none() {
    let text = "interface = \"lo\"\naffinity_capacity = 4096\n\
                \n[[vip]]\nname = \"dns\"\naddress = \"198.51.100.10\"\nport = 53\n\
                protocol = \"udp\"\naffinity_timeout = \"10s\"\ntable_size = 251\n\
                \n[[vip.backend]]\naddress = \"192.0.2.1\"\nport = 53\nmac = \"02:00:00:00:00:01\"\n\
                \n[[vip]]\nname = \"web\"\naddress = \"198.51.100.10\"\nport = 80\ntable_size = 251\n\
                \n[[vip.backend]]\naddress = \"192.0.2.2\"\nport = 80\nmac = \"02:00:00:00:00:02\"\n";
    let lb = started(&Config::parse(text).expect("valid config"));
    let cpus = aya::util::nr_cpus().map_or(1, |n| n as u32);
    let info = |name: &str| lb.vips()[lb.vip_index(name).unwrap()].info;
    assert_eq!(
        info("dns").udp_pin_budget,
        lb_common::udp_pin_budget(4096, 10_000_000_000, cpus)
    );
    assert_ne!(info("dns").udp_pin_budget, 0);
    assert_eq!(info("web").udp_pin_budget, 0, "TCP: unbounded");
    // What the maps hold is what the books say.
    let maps = super::Maps::vips(lb.maps()).unwrap();
    assert!(maps.iter().any(|(_, i)| *i == info("dns")));
}

#[test]
fn a_restart_while_a_vip_warms_up_goes_on_warming_up() {
    let cfg = web(&[(10, 1), (11, 1)]);
    let mut first = Lb::start(FakeMaps::default(), &cfg).unwrap();
    first
        .set_health(id_of(&first, "web", 10), State::Up, "test")
        .unwrap();
    assert_eq!(filled(&first, 0), 0, "still waiting for .11");
    // The next daemon finds .10 alive, .11 not, and an empty table: it must
    // not write the table from .10 alone.
    let lb = Lb::start(first.into_maps(), &cfg).unwrap();
    let v = &lb.vips()[0];
    assert!(v.warming_up.is_some(), "adopted as serving");
    assert_eq!(filled(&lb, 0), 0, "{:?}", ring_of(&lb, 0));
    assert!(lb.warm_up_deadline().is_some());
    let mut lb = lb;
    lb.set_health(id_of(&lb, "web", 11), State::Up, "test")
        .unwrap();
    assert!(lb.vips()[0].warming_up.is_none());
    let both = [id_of(&lb, "web", 10), id_of(&lb, "web", 11)];
    assert!(both.iter().all(|id| ring_of(&lb, 0).contains(id)));
}

#[test]
fn a_local_error_postpones_the_first_result_up_to_a_cap() {
    let cfg = web(&[(10, 1), (11, 1)]);
    let mut lb = Lb::start(FakeMaps::default(), &cfg).unwrap();
    lb.set_health(id_of(&lb, "web", 10), State::Up, "test")
        .unwrap();
    let serial = serial_of(&lb, "web", 11);
    let due = lb.warm_up_deadline().unwrap();
    lb.checks_blocked(serial, due - std::time::Duration::from_millis(1), "EMFILE");
    let pushed = lb.warm_up_deadline().unwrap();
    assert!(
        pushed >= due + std::time::Duration::from_secs(1),
        "one interval later"
    );
    lb.warm_up_tick(due).unwrap();
    assert!(
        lb.vips()[0].warming_up.is_some(),
        "not counted down for EMFILE"
    );
    // Errors without end: the VIP serves all the same, within the cap.
    let mut at = pushed;
    for _ in 0..100 {
        lb.checks_blocked(serial, at, "EMFILE");
        at = lb.warm_up_deadline().unwrap();
    }
    let cap = due + super::apply::BLOCKED_WARM_UP_CAP;
    assert!(
        at <= cap + std::time::Duration::from_millis(50),
        "{:?}",
        at - due
    );
    lb.warm_up_tick(at).unwrap();
    let v = &lb.vips()[0];
    assert!(v.warming_up.is_none());
    let b = v.backends.iter().find(|b| b.addr == addr(11)).unwrap();
    assert_eq!(b.health, Some(State::Down));
    assert!(
        b.reason.contains("checks cannot run: EMFILE"),
        "{}",
        b.reason
    );
}

#[test]
fn a_checker_restart_postpones_the_first_result() {
    let mut lb = Lb::start(FakeMaps::default(), &web(&[(10, 1)])).unwrap();
    let due = lb.warm_up_deadline().unwrap();
    lb.checker_restarted(lb.vips()[0].backends[0].serial, due);
    let later = lb.warm_up_deadline().unwrap();
    assert!(
        later >= due + crate::health::MAX_BACKOFF,
        "{:?}",
        later - due
    );
    lb.warm_up_tick(due).unwrap();
    assert!(lb.vips()[0].warming_up.is_some());
}

#[test]
fn overdue_backends_are_all_counted_down_when_a_write_fails() {
    let cfg = web(&[(10, 1), (11, 1), (12, 1)]);
    let mut lb = Lb::start(FakeMaps::default(), &cfg).unwrap();
    let due = lb.warm_up_deadline().unwrap();
    lb.maps_mut().writes_before_failure = Some(0);
    let _ = lb.warm_up_tick(due);
    let v = &lb.vips()[0];
    assert!(
        v.backends.iter().all(|b| b.health == Some(State::Down)),
        "{:?}",
        v.backends.iter().map(|b| b.health).collect::<Vec<_>>()
    );
    // No deadline left in the past for the daemon to wake for again and again.
    assert_eq!(lb.warm_up_deadline(), None);
}

/// A VIP "api" warming up, .20 up and .21 not known yet, and the config
/// without .21, on maps that accept `writes` more writes.
fn warming_api_losing_its_last_unknown(writes: Option<usize>) -> (Lb<FakeMaps>, Config) {
    let both = config(&[
        ("web", 80, 251, &[(10, 1)]),
        ("api", 81, 7, &[(20, 1), (21, 1)]),
    ]);
    let mut lb = started(&web(&[(10, 1)]));
    lb.apply_config(&both).unwrap();
    lb.set_health(id_of(&lb, "api", 20), State::Up, "test")
        .unwrap();
    lb.maps_mut().writes_before_failure = writes;
    (
        lb,
        config(&[("web", 80, 251, &[(10, 1)]), ("api", 81, 7, &[(20, 1)])]),
    )
}

#[test]
fn a_plan_applied_whole_is_not_failed_by_the_warm_up_that_follows() {
    // How many writes the removal itself takes.
    let (mut lb, without) = warming_api_losing_its_last_unknown(Some(1000));
    let plan = lb.plan_config(&without, Vec::new()).unwrap();
    lb.apply(plan).unwrap();
    let api = lb.vip_index("api").unwrap();
    assert!(
        lb.vips()[api].warming_up.is_none(),
        "serving once .21 is gone"
    );
    // The table, written whole after the plan, is one ring write.
    let removal = 1000 - lb.maps().writes_before_failure.unwrap() - 1;
    // Again, with room for the removal only: the table write after it fails.
    let (mut lb, without) = warming_api_losing_its_last_unknown(Some(removal));
    let plan = lb.plan_config(&without, Vec::new()).unwrap();
    lb.apply(plan)
        .expect("the plan was applied whole; only the table write after it failed");
    let api = lb.vip_index("api").unwrap();
    assert_eq!(lb.vips()[api].backends.len(), 1);
}

fn serial_of(lb: &Lb<FakeMaps>, vip: &str, octet: u8) -> super::BackendSerial {
    let v = &lb.vips()[lb.vip_index(vip).unwrap()];
    v.backends
        .iter()
        .find(|b| b.addr == addr(octet))
        .unwrap()
        .serial
}

#[test]
fn freeing_an_id_starts_a_new_id_epoch() {
    let mut lb = started(&web(&[(10, 1), (11, 1)]));
    let epoch = lb.id_epoch();
    let e0 = epoch.load(std::sync::atomic::Ordering::Relaxed);
    lb.set_weight("web", addr(10), 2).unwrap();
    lb.add_backend(
        "web",
        addr(12),
        1,
        Some([2, 0, 0, 0, 0, 12]),
        no_machine_problems,
    )
    .unwrap();
    assert_eq!(
        epoch.load(std::sync::atomic::Ordering::Relaxed),
        e0,
        "no id freed"
    );
    assert_eq!(lb.flows_query(None, None, 10).unwrap().epoch, e0);
    lb.remove_backend(0, addr(11)).unwrap();
    let e1 = epoch.load(std::sync::atomic::Ordering::Relaxed);
    assert_ne!(e1, e0, "an id freed: counts keyed by it are stale");
    assert_eq!(lb.flows_query(None, None, 10).unwrap().epoch, e1);
    // A move to another VIP frees the id too.
    lb.apply_config(&config(&[
        ("web", 80, 251, &[(10, 1)]),
        ("api", 81, 7, &[(11, 1)]),
    ]))
    .unwrap();
    assert_ne!(epoch.load(std::sync::atomic::Ordering::Relaxed), e1);
}

#[test]
fn a_failed_plan_still_lets_a_warming_vip_serve_once_its_last_unknown_is_gone() {
    // "api" waits for .21 only (.20 is down, so its table stays empty and
    // serving it writes nothing). The plan removes .21 and adds a backend
    // to "web", whose write fails: "api" must serve all the same.
    let setup = |writes: Option<usize>, web: &[(u8, u32)]| {
        let (mut lb, _) = warming_api_losing_its_last_unknown(None);
        lb.set_health(id_of(&lb, "api", 20), State::Down, "test")
            .unwrap();
        lb.maps_mut().writes_before_failure = writes;
        let plan = lb
            .plan_config(
                &config(&[("web", 80, 251, web), ("api", 81, 7, &[(20, 1)])]),
                Vec::new(),
            )
            .unwrap();
        (lb, plan)
    };
    // The writes the removal of .21 takes.
    let (mut lb, plan) = setup(Some(1000), &[(10, 1)]);
    lb.apply(plan).unwrap();
    let removal = 1000 - lb.maps().writes_before_failure.unwrap();
    let (mut lb, plan) = setup(Some(removal), &[(10, 1), (11, 1)]);
    assert!(lb.apply(plan).is_err(), "the write to web fails");
    let api = lb.vip_index("api").unwrap();
    assert_eq!(lb.vips()[api].backends.len(), 1, ".21 removed");
    assert!(lb.vips()[api].warming_up.is_none(), "api serves");
    assert_eq!(lb.warm_up_deadline(), None);
}

/// A live add's machine checks, for tests whose backends pass them all.
fn no_machine_problems(
    _: &crate::config::BackendConfig,
    _: &crate::config::VipConfig,
) -> Vec<crate::config::Problem> {
    Vec::new()
}

/// Marks the backends `octets` of VIP "web" `state`, in that order.
fn mark(lb: &mut Lb<FakeMaps>, octets: &[u8], state: State) {
    for &o in octets {
        lb.set_health(id_of(lb, "web", o), state, "test").unwrap();
    }
}

/// VIP "web" with backends .10, .11, .12 serving, then all three down.
fn dark_web() -> Lb<FakeMaps> {
    let mut lb = started(&web(&[(10, 1), (11, 1), (12, 1)]));
    mark(&mut lb, &[10, 11, 12], State::Down);
    lb.maps_mut().take_log();
    lb
}

#[test]
fn a_vip_that_lost_every_backend_serves_again_once_all_are_back() {
    let serving = started(&web(&[(10, 1), (11, 1), (12, 1)]));
    let whole = serving.vips()[0].table.clone();
    let mut lb = dark_web();
    let v = &lb.vips()[0];
    assert!(v.rewarm.is_some(), "re-warming");
    assert!(v.warming_up.is_none(), "not warming up before one is back");
    assert_eq!(filled(&lb, 0), 0);
    assert_eq!(
        lb.warm_up_deadline(),
        None,
        "nothing to wait for while dark"
    );
    let why = lb.warming_why(0, Instant::now()).unwrap();
    assert!(why.contains("every backend is down"), "{why}");

    // Back one by one: the table stays empty, nobody is pinned to the first.
    let before = Instant::now();
    mark(&mut lb, &[10], State::Up);
    let deadline = lb.warm_up_deadline().expect("a deadline once one is back");
    assert!(
        lb.vips()[0].warming_up.is_some(),
        "warming up once one is back"
    );
    let h = &lb.vips()[0].backends[0].health_cfg;
    assert!(deadline >= before + h.interval * h.rise, "{deadline:?}");
    let why = lb.warming_why(0, Instant::now()).unwrap();
    assert!(why.contains("more for the others"), "{why}");
    mark(&mut lb, &[11], State::Up);
    assert_eq!(filled(&lb, 0), 0);
    assert_eq!(ring_writes(&lb.maps_mut().take_log()), 0);
    assert_eq!(lb.rewarmed(), 0, "not over yet");
    // The last: one rebuild, from all three, the table they had before.
    mark(&mut lb, &[12], State::Up);
    let v = &lb.vips()[0];
    assert!(v.warming_up.is_none() && v.rewarm.is_none());
    assert_eq!(
        lb.rewarmed(),
        1,
        "counted once it serves again (a sync pulls then)"
    );
    assert_eq!(lb.warm_up_deadline(), None);
    assert_eq!(ring_writes(&lb.maps_mut().take_log()), 1);
    assert_eq!(ring_of(&lb, 0), whole);
    assert_eq!(lb.warming_why(0, Instant::now()), None);
    // Serving as before: a later change is applied at once.
    mark(&mut lb, &[11], State::Down);
    assert!(lb.vips()[0].warming_up.is_none());
    assert_eq!(ring_writes(&lb.maps_mut().take_log()), 1);
}

#[test]
fn a_rewarm_serves_at_its_deadline_without_a_backend_that_stays_down() {
    let mut lb = dark_web();
    mark(&mut lb, &[10, 11], State::Up);
    let deadline = lb.warm_up_deadline().unwrap();
    lb.warm_up_tick(deadline - Duration::from_millis(1))
        .unwrap();
    assert!(lb.vips()[0].warming_up.is_some());
    assert_eq!(filled(&lb, 0), 0);
    lb.warm_up_tick(deadline).unwrap();
    assert!(lb.vips()[0].warming_up.is_none());
    assert_eq!(lb.warm_up_deadline(), None);
    assert_eq!(ring_writes(&lb.maps_mut().take_log()), 1);
    let up = [id_of(&lb, "web", 10), id_of(&lb, "web", 11)];
    let ring = ring_of(&lb, 0);
    assert!(ring.iter().all(|s| up.contains(s)), "the two that are up");
    assert!(up.iter().all(|id| ring.contains(id)), "both of them");
    // The one that stayed down joins later like any recovered backend.
    mark(&mut lb, &[12], State::Up);
    assert!(ring_of(&lb, 0).contains(&id_of(&lb, "web", 12)));
}

#[test]
fn a_rewarm_waits_again_when_the_first_back_goes_down_again() {
    let mut lb = dark_web();
    mark(&mut lb, &[10], State::Up);
    let deadline = lb.warm_up_deadline().unwrap();
    mark(&mut lb, &[10], State::Down);
    assert_eq!(lb.warm_up_deadline(), None);
    lb.warm_up_tick(deadline).unwrap();
    let v = &lb.vips()[0];
    assert!(
        v.rewarm.is_some() && v.warming_up.is_none(),
        "still dark: still waiting"
    );
    mark(&mut lb, &[11], State::Up);
    assert!(lb.warm_up_deadline().unwrap() >= deadline);
    assert_eq!(filled(&lb, 0), 0);
}

#[test]
fn no_rewarm_while_one_backend_stays_up() {
    let mut lb = started(&web(&[(10, 1), (11, 1), (12, 1)]));
    mark(&mut lb, &[10, 11], State::Down);
    assert!(lb.vips()[0].warming_up.is_none());
    assert_eq!(lb.warm_up_deadline(), None);
    lb.maps_mut().take_log();
    mark(&mut lb, &[10], State::Up);
    assert_eq!(ring_writes(&lb.maps_mut().take_log()), 1, "at once");
    assert_eq!(lb.rewarmed(), 0);
    assert!(ring_of(&lb, 0).contains(&id_of(&lb, "web", 10)));
    // A drained backend still alive keeps the VIP serving, too.
    lb.set_drain("web", addr(12), true).unwrap();
    mark(&mut lb, &[10], State::Down);
    assert!(lb.vips()[0].warming_up.is_none());
}

#[test]
fn a_vip_that_lost_every_mac_rewarms_too() {
    let mut lb = started(&web(&[(10, 1)]));
    let id = id_of(&lb, "web", 10);
    // Configured MACs never go away: lose it as a learned one would.
    let mut lb2 = {
        let mut cfg = web(&[(10, 1)]);
        cfg.vips[0].backends[0].mac = None;
        let mut lb2 = Lb::start(FakeMaps::default(), &cfg).unwrap();
        lb2.set_neighbour_mac(id, Some([2, 0, 0, 0, 0, 10]))
            .unwrap();
        lb2.set_health(id, State::Up, "test").unwrap();
        lb2
    };
    assert!(lb2.vips()[0].warming_up.is_none());
    lb2.set_neighbour_mac(id, None).unwrap();
    assert!(lb2.vips()[0].rewarm.is_some());
    lb2.set_neighbour_mac(id, Some([2, 0, 0, 0, 0, 10]))
        .unwrap();
    assert!(
        lb2.vips()[0].warming_up.is_none(),
        "its only backend is back"
    );
    assert!(filled(&lb2, 0) > 0);
    // The configured one, for contrast, is untouched by the neighbour table.
    lb.set_neighbour_mac(id, None).unwrap();
    assert!(lb.vips()[0].warming_up.is_none());
}

#[test]
fn reloads_and_live_changes_during_a_rewarm_keep_it_going() {
    let mut lb = dark_web();
    mark(&mut lb, &[10], State::Up);
    // A reload with a new table size and a new backend: still re-warming.
    lb.apply_config(&config(&[(
        "web",
        80,
        509,
        &[(10, 1), (11, 1), (12, 1), (13, 1)],
    )]))
    .unwrap();
    let v = &lb.vips()[0];
    assert_eq!(v.info.ring_size, 509);
    assert!(v.rewarm.is_some());
    assert_eq!(filled(&lb, 0), 0);
    lb.set_weight("web", addr(10), 3).unwrap();
    lb.set_drain("web", addr(11), true).unwrap();
    lb.set_drain("web", addr(11), false).unwrap();
    assert_eq!(filled(&lb, 0), 0);
    mark(&mut lb, &[11, 12], State::Up);
    assert!(lb.vips()[0].warming_up.is_some(), ".13 is not known yet");
    // Removing the one missing: every backend left is alive, so it serves.
    lb.remove_backend(0, addr(13)).unwrap();
    assert!(lb.vips()[0].warming_up.is_none());
    let ring = ring_of(&lb, 0);
    assert_eq!(ring, lb.vips()[0].table);
    for o in [10, 11, 12] {
        assert!(ring.contains(&id_of(&lb, "web", o)), ".{o} in the table");
    }
}

#[test]
fn a_backend_added_during_a_rewarm_does_not_hold_it_past_the_deadline() {
    let mut lb = dark_web();
    lb.add_backend("web", addr(13), 1, Some([2, 0, 0, 0, 0, 13]), |_, _| {
        Vec::new()
    })
    .unwrap();
    mark(&mut lb, &[10, 11, 12], State::Up);
    for _ in 0..4 {
        let Some(at) = lb.warm_up_deadline() else {
            break;
        };
        lb.warm_up_tick(at).unwrap();
    }
    let v = &lb.vips()[0];
    assert!(v.warming_up.is_none() && v.rewarm.is_none());
    assert_eq!(lb.warm_up_deadline(), None);
    assert!(filled(&lb, 0) > 0);
    assert!(!ring_of(&lb, 0).contains(&id_of(&lb, "web", 13)));
}
