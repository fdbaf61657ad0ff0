//! `SLB_VIP_INDEX`, the array copy of `SLB_VIPS` the program reads first:
//! that the program really reads it, trusts a slot only when its sequence
//! lock says so, loses a removed VIP from it before the hash, and that a
//! load over pins another run left puts it right before anything is
//! attached. BPF_PROG_TEST_RUN on the real object, maps pinned so the test
//! can write a slot as a torn or stale one would be. Needs root; CI runs it
//! as root.

use std::path::PathBuf;

use aya::maps::{Array, Map, MapData};
use lb_common::{VipInfo, VipKey, VipSlot, map_names, proto, vip_index};
use lb_user::dataplane::{Dataplane, LoadOptions};
use stickylb_tests::{
    RIG_AFFINITY_CAPACITY, Rig, VIP, VIP_PORT, client, daemon::PinGuard, frame, require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn pin_dir(test: &str) -> PinGuard {
    PinGuard(PathBuf::from(format!(
        "/sys/fs/bpf/slb-vipidx-{test}-{}",
        std::process::id()
    )))
}

/// A rig with its maps pinned for `test`, and the index slot its VIP got.
fn pinned_rig(test: &str) -> (PinGuard, Rig, u32) {
    require_root();
    let pin = pin_dir(test);
    let rig = Rig::pinned(3, &pin.0);
    let slot = rig
        .dp
        .vip_index_slot(&rig.vip_key)
        .unwrap()
        .expect("set_vip gave the VIP a slot");
    (pin, rig, slot)
}

/// The pinned index, opened as another process would.
fn index(pin: &PinGuard) -> Array<MapData, VipSlot> {
    let data = MapData::from_pin(pin.0.join(map_names::VIP_INDEX)).expect("SLB_VIP_INDEX pinned");
    Array::try_from(Map::Array(data)).expect("an array of VipSlot")
}

fn slot_at(pin: &PinGuard, i: u32) -> VipSlot {
    index(pin).get(&i, 0).unwrap()
}

fn write_slot(pin: &PinGuard, i: u32, slot: VipSlot) {
    index(pin).set(i, slot, 0).unwrap();
}

/// What the program does with a new client's SYN to `port` of the VIP
/// address (forwarded unpinned if it is a VIP with a table).
fn new_client_to(rig: &mut Rig, n: u32, port: u16) -> u32 {
    rig.run(&frame::tcp_syn(client(n), 40000, VIP, port)).0
}

#[test]
fn the_program_reads_the_vips_slot_and_uses_the_hash_when_the_slot_is_in_doubt() {
    let (pin, mut rig, i) = pinned_rig("read");
    let placed = slot_at(&pin, i);
    assert_eq!((placed.key, placed.info), (rig.vip_key, rig.vip));
    assert_eq!(placed.seq & 1, 0, "left odd: {placed:?}");
    assert!(vip_index::in_window(rig.vip_key.word(), i));
    assert_eq!(new_client_to(&mut rig, 1, VIP_PORT), XDP_TX);

    // The same VIP in the slot without a table (SLB_VIPS keeps its table):
    // a new client has no backend, so the program read the slot.
    let no_table = VipInfo {
        ring_size: 0,
        ..rig.vip
    };
    write_slot(
        &pin,
        i,
        VipSlot {
            info: no_table,
            ..placed
        },
    );
    assert_eq!(new_client_to(&mut rig, 2, VIP_PORT), XDP_DROP);

    // The slot in the middle of a rewrite (odd): SLB_VIPS decides.
    write_slot(
        &pin,
        i,
        VipSlot {
            seq: placed.seq | 1,
            info: no_table,
            ..placed
        },
    );
    assert_eq!(new_client_to(&mut rig, 3, VIP_PORT), XDP_TX);

    // Another key in the VIP's slot: not the VIP's entry, SLB_VIPS decides.
    let other = VipKey::new(VIP, VIP_PORT + 1, proto::TCP);
    write_slot(
        &pin,
        i,
        VipSlot {
            key: other,
            info: no_table,
            ..placed
        },
    );
    assert_eq!(new_client_to(&mut rig, 4, VIP_PORT), XDP_TX);
}

#[test]
fn a_removed_vip_leaves_the_index_and_its_frames_are_passed() {
    let (pin, mut rig, i) = pinned_rig("remove");
    let key = rig.vip_key;
    rig.dp.remove_vip(&key).unwrap();
    assert_eq!(rig.dp.vip_index_slot(&key).unwrap(), None);
    let cleared = slot_at(&pin, i);
    assert!(cleared.is_empty() && cleared.seq & 1 == 0, "{cleared:?}");
    assert_eq!(new_client_to(&mut rig, 1, VIP_PORT), XDP_PASS);
    // Removing it again is no error, and putting it back gives it a slot.
    rig.dp.remove_vip(&key).unwrap();
    rig.dp.set_vip(key, rig.vip).unwrap();
    assert!(rig.dp.vip_index_slot(&key).unwrap().is_some());
    assert_eq!(new_client_to(&mut rig, 2, VIP_PORT), XDP_TX);
}

#[test]
fn a_load_over_pins_clears_stale_slots_before_the_program_runs() {
    let (pin, mut rig, own) = pinned_rig("stale");
    let placed = slot_at(&pin, own);

    // What another run could leave: a slot for a VIP SLB_VIPS no longer
    // holds (here port 81), and the VIP's own slot with older info.
    let gone = VipKey::new(VIP, VIP_PORT + 1, proto::TCP);
    let gone_home = vip_index::home(gone.word());
    let gone_slot = (0..vip_index::PROBES)
        .map(|p| vip_index::slot(gone_home, p))
        .find(|&s| s != own)
        .unwrap();
    write_slot(
        &pin,
        gone_slot,
        VipSlot {
            seq: 2,
            _pad: 0,
            key: gone,
            info: rig.vip,
        },
    );
    write_slot(
        &pin,
        own,
        VipSlot {
            info: VipInfo {
                ring_size: 0,
                ..rig.vip
            },
            ..placed
        },
    );
    // Both are live for the program loaded now: the stale slots matter.
    assert_eq!(new_client_to(&mut rig, 1, VIP_PORT + 1), XDP_TX);
    assert_eq!(new_client_to(&mut rig, 2, VIP_PORT), XDP_DROP);

    // A second load over the same pins, as a restarted daemon does: a load
    // alone writes nothing (a tool may load over a running daemon's pins),
    // the daemon's reconcile puts the index right.
    let mut again = Dataplane::load(&LoadOptions {
        affinity_capacity: RIG_AFFINITY_CAPACITY,
        pin_dir: Some(pin.0.clone()),
    })
    .expect("load over the pins");
    assert_eq!(slot_at(&pin, gone_slot).key, gone, "a load wrote the index");
    again.reconcile_vip_index().unwrap();
    let g = slot_at(&pin, gone_slot);
    assert!(g.is_empty() && g.seq & 1 == 0, "stale slot kept: {g:?}");
    let i = again
        .vip_index_slot(&rig.vip_key)
        .unwrap()
        .expect("the VIP placed");
    let s = slot_at(&pin, i);
    assert_eq!((s.key, s.info, s.seq & 1), (rig.vip_key, rig.vip, 0));
    let syn = |n: u32, port: u16| frame::tcp_syn(client(n), 40000, VIP, port);
    assert_eq!(again.test_run(&syn(3, VIP_PORT + 1)).unwrap().0, XDP_PASS);
    assert_eq!(again.test_run(&syn(4, VIP_PORT)).unwrap().0, XDP_TX);
}

/// Keys of the VIP's address whose home slot is `home`, other than `not`.
fn keys_homed_at(home: u32, not: VipKey, n: usize) -> Vec<VipKey> {
    (1..u16::MAX)
        .map(|port| VipKey::new(VIP, port, proto::TCP))
        .filter(|k| *k != not && vip_index::home(k.word()) == home)
        .take(n)
        .collect()
}

#[test]
fn reconcile_clears_odd_misplaced_and_duplicate_slots_and_keeps_one_good_copy() {
    let (pin, mut rig, own) = pinned_rig("reconcile");
    let good = slot_at(&pin, own);
    let home = vip_index::home(rig.vip_key.word());
    let others: Vec<u32> = (0..vip_index::PROBES)
        .map(|p| vip_index::slot(home, p))
        .filter(|&s| s != own)
        .collect();
    // A second, even copy of the VIP in its window (with the current info),
    // the VIP's own slot odd (a rewrite cut short), and a copy outside its
    // window.
    write_slot(&pin, others[0], VipSlot { seq: 4, ..good });
    write_slot(
        &pin,
        own,
        VipSlot {
            seq: good.seq | 1,
            ..good
        },
    );
    let outside = vip_index::slot(home, vip_index::PROBES + 3);
    write_slot(&pin, outside, VipSlot { seq: 2, ..good });

    rig.dp.reconcile_vip_index().unwrap();
    let holding: Vec<u32> = (0..vip_index::SLOTS)
        .filter(|&i| slot_at(&pin, i).key == rig.vip_key)
        .collect();
    assert_eq!(holding.len(), 1, "copies left in {holding:?}");
    let kept = slot_at(&pin, holding[0]);
    assert!(vip_index::in_window(rig.vip_key.word(), holding[0]));
    assert_eq!((kept.info, kept.seq & 1), (rig.vip, 0), "{kept:?}");
    assert!(slot_at(&pin, outside).is_empty());
    assert_eq!(new_client_to(&mut rig, 1, VIP_PORT), XDP_TX);
}

#[test]
fn a_vip_whose_window_is_full_is_served_from_the_hash() {
    let (_pin, mut rig, own) = pinned_rig("full");
    let home = vip_index::home(rig.vip_key.word());
    // Enough other VIPs homed at the same slot to fill the window (the
    // rig's VIP holds one of its slots already), and one more.
    let keys = keys_homed_at(home, rig.vip_key, vip_index::PROBES as usize);
    assert_eq!(keys.len(), vip_index::PROBES as usize);
    for k in &keys {
        rig.dp.set_vip(*k, rig.vip).unwrap();
    }
    let last = *keys.last().unwrap();
    let placed: Vec<Option<u32>> = keys
        .iter()
        .map(|k| rig.dp.vip_index_slot(k).unwrap())
        .collect();
    assert_eq!(placed.last(), Some(&None), "{placed:?}");
    assert!(placed[..placed.len() - 1].iter().all(Option::is_some));
    assert_eq!(rig.dp.vip_index_slot(&rig.vip_key).unwrap(), Some(own));
    // The one left out is still a VIP: its frames are forwarded.
    assert_eq!(new_client_to(&mut rig, 1, last.port()), XDP_TX);
    // Once a slot frees up, the next write of it finds room.
    rig.dp.remove_vip(&keys[0]).unwrap();
    rig.dp.set_vip(last, rig.vip).unwrap();
    assert!(rig.dp.vip_index_slot(&last).unwrap().is_some());
    assert_eq!(new_client_to(&mut rig, 2, last.port()), XDP_TX);
}

#[test]
fn a_disabled_index_is_empty_and_every_vip_still_forwards() {
    require_root();
    let pin = pin_dir("disabled");
    let mut rig = Rig::pinned(3, &pin.0);
    rig.dp.disable_vip_index().unwrap();
    assert!((0..vip_index::SLOTS).all(|i| slot_at(&pin, i).is_empty()));
    let key = rig.vip_key;
    rig.dp.set_vip(key, rig.vip).unwrap();
    assert_eq!(rig.dp.vip_index_slot(&key).unwrap(), None);
    assert_eq!(new_client_to(&mut rig, 1, VIP_PORT), XDP_TX);
}
