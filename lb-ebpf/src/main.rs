//! stickylb's data path: pin every client (by IP address) of a VIP to one
//! backend and forward its frames there the way the VIP says (L2 DSR,
//! IP-in-IP or GUE).
//!
//! Per frame: parse (parse.rs) → VIP lookup → affinity entry, or a Maglev slot
//! for a new client → forward by the VIP's `ForwardingMode` (DSR: rewrite
//! the MACs; IP-in-IP/GUE: encapsulate, next hop from the kernel's FIB; see
//! forward.rs) → `XDP_TX` or `XDP_REDIRECT`. ICMP errors about a client's
//! flow follow that client (icmp.rs). Anything else that is not a VIP's
//! TCP/UDP traffic is passed to the kernel untouched.
//!
//! While the daemon has sync on (`SLB_SYNC`), every pin and re-pin, and at
//! most every refresh interval a busy pin, is also written to
//! `SLB_SYNC_EVENTS` for the daemon to send to its peers.
//!
//! A client is pinned (given an affinity entry) only by a frame that a
//! spoofed source cannot cheaply send in bulk: a TCP client by the first
//! segment after its SYN, a UDP client within the VIP's per-CPU budget of
//! new pins. Until then its frames follow the Maglev table, which is where
//! its entry would send them.
#![no_std]
#![no_main]

mod forward;
mod icmp;
mod maps;
mod parse;

use aya_ebpf::{
    bindings::{BPF_RB_NO_WAKEUP, xdp_action},
    helpers::bpf_ktime_get_coarse_ns,
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    AFFINITY_REFRESH_NS, AffinityKey, AffinityValue, BackendInfo, ForwardingMode, OwnMac,
    PIN_BUDGET_WINDOW_NS, SyncEvent, SyncSettings, VipInfo, VipStats, coarse_secs, global_counter,
    proto, select, sync_kind,
};
use maps::{
    AFFINITY, BACKENDS, OWN_MAC, PIN_BUDGET, RING, SYNC, SYNC_EVENTS, VIP_STATS, count_global,
    find_vip,
};
use parse::{Flow, NotFlow, parse};

#[xdp]
pub fn stickylb(ctx: XdpContext) -> u32 {
    let flow = match parse(&ctx) {
        Ok(flow) => flow,
        Err(NotFlow::Icmp(l4)) => return icmp::handle(&ctx, l4),
        Err(NotFlow::Pass(counter)) => {
            count_global(counter);
            return xdp_action::XDP_PASS;
        }
    };
    let Some(vip) = find_vip(&flow.vip) else {
        count_global(global_counter::PASS_NOT_VIP);
        return xdp_action::XDP_PASS;
    };
    let Some(stats) = VIP_STATS.get_ptr_mut(vip.vip_id) else {
        count_global(global_counter::PASS_NOT_VIP);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU value; nothing else writes it while we run on this CPU.
    let stats = unsafe { &mut *stats };
    handle_vip(&ctx, &flow, &vip, stats)
}

#[inline(always)]
fn handle_vip(ctx: &XdpContext, flow: &Flow, vip: &VipInfo, stats: &mut VipStats) -> u32 {
    if flow.first_fragment {
        // The rest of the datagram carries no ports, so it could not follow
        // this fragment to the backend; forwarding it would only waste the
        // backend's reassembly buffer.
        stats.drop_fragment += 1;
        return xdp_action::XDP_DROP;
    }
    // SAFETY: parse() bounds-checked the Ethernet header.
    let eth = unsafe { &mut *flow.eth };
    // One lookup, as before: the same value is the source MAC of the
    // forwarded frame.
    let own = OWN_MAC.get(0).and_then(OwnMac::load);
    if let Some(counter) = not_for_us(&eth.dst_addr, own) {
        count_global(counter);
        return xdp_action::XDP_PASS;
    }
    // Checked before the pick, so that such a VIP pins no client. A mode
    // this build does not know was written by a newer daemon (pinned maps
    // outlive a downgrade): sending its frames by DSR could hand them to a
    // backend that is not on this segment, and passing them would let this
    // host's stack answer for the VIP. They are dropped as having no
    // backend reachable, under `drop_no_backend`: a counter of their own
    // would change `VipStats`' size (or the global array's length), and a
    // restart would then refuse to adopt the pinned maps.
    let Some(mode) = ForwardingMode::from_u8(vip.forwarding) else {
        stats.drop_no_backend += 1;
        return xdp_action::XDP_DROP;
    };
    let key = AffinityKey {
        vip_id: vip.vip_id,
        client: flow.client,
    };
    let Some((backend_id, backend)) = pick_backend(vip, &key, flow, &eth.src_addr, stats) else {
        return xdp_action::XDP_DROP;
    };

    forward::send(ctx, mode, own, backend_id, &backend, flow.client, stats)
}

/// Why a VIP's frame to `dst` is not this host's to forward (the
/// `global_counter` to pass it under), if it is not. `own`: this
/// interface's MAC (`OwnMac::load`).
#[inline(always)]
fn not_for_us(dst: &[u8; 6], own: Option<([u8; 6], bool)>) -> Option<u32> {
    if dst[0] & 1 != 0 {
        return Some(global_counter::PASS_MULTICAST_DST);
    }
    // Only frames sent to this host. Several nodes share the segment in a
    // cluster, and a bridge floods a frame to every port when it does not
    // know (or has forgotten, as when a node goes down) the destination
    // MAC: each node forwarding its copy would hand the backend duplicates
    // and hide a dead node from every measurement.
    if let Some((mac, true)) = own
        && *dst != mac
    {
        return Some(global_counter::PASS_OTHER_HOST);
    }
    None
}

/// The client's backend: its affinity entry if live and the backend alive,
/// else a fresh pick from the VIP's Maglev table (which becomes the entry,
/// if the frame may pin the client). `None`: the frame is dropped, and
/// counted here.
#[inline(always)]
fn pick_backend(
    vip: &VipInfo,
    key: &AffinityKey,
    flow: &Flow,
    src_mac: &[u8; 6],
    stats: &mut VipStats,
) -> Option<(u32, BackendInfo)> {
    // The coarse clock (CLOCK_MONOTONIC at tick resolution) is a plain read,
    // not a clocksource access: affinity timeouts are seconds, and the
    // refresh interval is one second, so a few ms of resolution is plenty.
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let mut known = false;
    let mut expired = false;
    if let Some(entry) = AFFINITY.get_ptr_mut(key) {
        // SAFETY: map value pointer, valid for this run. Another CPU may
        // refresh `last_seen_ns` concurrently; either write is fine.
        let entry = unsafe { &mut *entry };
        known = true;
        if !entry.is_live(now, vip.affinity_timeout_ns) {
            expired = true;
        } else if let Some(backend) = entry_backend(vip, entry.backend_id) {
            // DSR's loop: a backend given the MAC of the router the frame
            // came from would get it back to us unchanged, still to the VIP.
            // A tunnel backend's MAC is zero, so this never matches a
            // station's frame there; a tunnel has no such loop (its frames
            // are addressed to the backend, see forward::encapsulate), and
            // the same compare keeps DSR's path free of a mode test.
            if backend.mac == *src_mac {
                stats.drop_loop += 1;
                return None;
            }
            // Refresh coarsely: a write per packet would bounce the entry's
            // cache line between CPUs for every busy client.
            if entry.idle_ns(now) > AFFINITY_REFRESH_NS {
                entry.last_seen_ns = now;
                // Only here, so that a hit between refreshes costs nothing
                // more with sync on than off.
                announce_refresh(key, entry, now);
            }
            stats.affinity_hits += 1;
            return Some((entry.backend_id, *backend));
        }
    }

    let Some((backend_id, backend)) = maglev_pick(vip, key.client, stats) else {
        stats.drop_no_backend += 1;
        return None;
    };
    // Before pinning: a client must not be pinned by a frame that is not
    // forwarded. (The loop check above; the tunnel modes' own failures are
    // known only once the frame is routed, after the pin.)
    if backend.mac == *src_mac {
        stats.drop_loop += 1;
        return None;
    }
    if flow.bare_syn {
        // Anyone can send a SYN from any address, and a flood of them
        // would otherwise evict real clients from the LRU table. The SYN
        // goes where the entry would send it; the handshake's next
        // segment, which a spoofed source never sends, pins the client.
        stats.not_pinned_syn += 1;
        return Some((backend_id, backend));
    }
    if !known && flow.vip.proto == proto::UDP && !take_udp_pin(vip, now) {
        stats.not_pinned_udp_budget += 1;
        return Some((backend_id, backend));
    }
    let mut entry = AffinityValue {
        backend_id,
        synced_s: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    // The event is reserved before the insert, so that the entry records
    // whether it was announced: one that was not (the ring was full) is
    // announced by its first refresh instead.
    let kind = if known {
        sync_kind::REPICK
    } else {
        sync_kind::NEW
    };
    let event = if sync_settings().is_some() {
        reserve_event(key, &entry, kind)
    } else {
        None
    };
    if event.is_some() {
        entry.synced_s = coarse_secs(now);
    }
    // A failed insert only costs the next packet another (identical) pick;
    // it announces nothing.
    let inserted = AFFINITY.insert(key, entry, 0).is_ok();
    if let Some(event) = event {
        if inserted {
            event.submit(NO_WAKEUP);
        } else {
            event.discard(NO_WAKEUP);
        }
    }
    if !known {
        stats.new_clients += 1;
    } else if expired {
        stats.repick_expired += 1;
    } else {
        stats.repick_dead += 1;
    }
    if let Some(b) = maps::BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU value.
        unsafe { (*b).new_clients += 1 };
    }
    Some((backend_id, backend))
}

/// Events are committed without waking the ring's reader: a wake-up is an
/// irq_work queued on this CPU whenever the ring goes from empty to not
/// empty, which a daemon draining as fast as events come would pay for
/// nearly every new client (several µs, against tens of ns for the event).
/// The daemon drains the ring on a timer instead (`sync::events`).
const NO_WAKEUP: u64 = BPF_RB_NO_WAKEUP as u64;

/// The sync settings, if the daemon turned sync events on.
#[inline(always)]
fn sync_settings() -> Option<&'static SyncSettings> {
    SYNC.get(0).filter(|s| s.enabled != 0)
}

/// A sync event for `entry` of `key`, filled in and reserved in the ring,
/// to be submitted or discarded; `None` if the ring is full (counted).
#[inline(always)]
fn reserve_event(
    key: &AffinityKey,
    entry: &AffinityValue,
    kind: u32,
) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<SyncEvent>> {
    let Some(mut event) = SYNC_EVENTS.reserve::<SyncEvent>(0) else {
        count_global(global_counter::SYNC_EVENTS_LOST);
        return None;
    };
    event.write(SyncEvent {
        key: *key,
        backend_id: entry.backend_id,
        kind,
        created_ns: entry.created_ns,
        last_seen_ns: entry.last_seen_ns,
    });
    Some(event)
}

/// Announces a busy pin again if its last announcement is `refresh_s` old,
/// so that the peers' copies do not expire while the client is active here.
/// Called when `last_seen_ns` was just refreshed (at most once a second per
/// entry).
#[inline(always)]
fn announce_refresh(key: &AffinityKey, entry: &mut AffinityValue, now: u64) {
    let Some(settings) = sync_settings() else {
        return;
    };
    let now_s = coarse_secs(now);
    if now_s.wrapping_sub(entry.synced_s) < settings.refresh_s {
        return;
    }
    if let Some(event) = reserve_event(key, entry, sync_kind::REFRESH) {
        event.submit(NO_WAKEUP);
        entry.synced_s = now_s;
    }
}

/// Takes one of this CPU's new UDP pins of the VIP's current window; false
/// if they are spent. A VIP with a budget of 0 is unbounded.
#[inline(always)]
fn take_udp_pin(vip: &VipInfo, now: u64) -> bool {
    if vip.udp_pin_budget == 0 {
        return true;
    }
    let Some(b) = PIN_BUDGET.get_ptr_mut(vip.vip_id) else {
        return false;
    };
    // SAFETY: per-CPU value; nothing else writes it while we run here.
    let b = unsafe { &mut *b };
    if now.saturating_sub(b.window_start_ns) >= PIN_BUDGET_WINDOW_NS {
        b.window_start_ns = now;
        b.used = 0;
    }
    if b.used >= vip.udp_pin_budget {
        return false;
    }
    b.used += 1;
    true
}

/// The backend a live affinity entry of `vip` names, if it may still be
/// used: alive, and still this VIP's.
#[inline(always)]
fn entry_backend(vip: &VipInfo, backend_id: u32) -> Option<&'static BackendInfo> {
    BACKENDS.get(backend_id).filter(|b| {
        b.is_alive()
            // Ids are reused across VIPs: an entry whose purge was cut
            // short (daemon killed mid-way) must not follow its old id to
            // another VIP's backend.
            && u32::from(b.vip_id) == vip.vip_id
    })
}

/// The backend of the client's Maglev slot (see `lb_common::select`).
#[inline(always)]
fn maglev_pick(vip: &VipInfo, client: [u8; 4], stats: &mut VipStats) -> Option<(u32, BackendInfo)> {
    let pick = select::maglev_pick(
        client,
        vip.hash_seed,
        vip.ring_size,
        |slot| RING.get(vip.ring_base.wrapping_add(slot)).copied(),
        |id| BACKENDS.get(id).filter(|b| b.is_alive()).copied(),
    )?;
    if pick.probes > 0 {
        stats.probed += 1;
    }
    Some((pick.backend_id, pick.backend))
}

lb_ebpf::program_boilerplate!();
