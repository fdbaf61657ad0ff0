//! Per-packet cost of the XDP program, by BPF_PROG_TEST_RUN, next to two
//! reference programs built the same way (tests/bench-ebpf's `floor-pass`
//! and `floor-fwd`): an XDP_PASS program and the least a forwarder can
//! do (parse Ethernet + IPv4, swap MACs, XDP_TX).
//!
//! Two methods, never mixed in one ratio:
//! - *repeat*: one BPF_PROG_TEST_RUN with `repeat` iterations on one frame;
//!   the kernel reports the mean time per iteration. Right for paths the
//!   frame does not leave on the second iteration (affinity hit, non-VIP
//!   pass; the MAC rewrite is idempotent).
//! - *per call*: many BPF_PROG_TEST_RUN calls with repeat = 1, each on a
//!   different pre-built frame; the mean of the kernel's per-call times. The
//!   only honest way to time a packet that changes the state it depends on
//!   (a new client's first packet) or one that should miss the CPU caches
//!   (a random client of a big table). Each call also times the kernel's
//!   test harness around one run, so the reference programs are timed the
//!   same way and the table shows the difference too.
//!
//! Every timed run's return code is checked, and the program's own counters
//! must confirm that each measured packet took the path it is reported as.

use std::{
    fmt::Display,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use lb_common::{
    AFFINITY_REFRESH_NS, AffinityKey, AffinityValue, DEFAULT_AFFINITY_TIMEOUT_NS,
    DEFAULT_HASH_SEED, DEFAULT_TABLE_SIZE, ForwardingMode, SyncEvent, VipInfo, VipKey, VipStats,
    global_counter, maglev, proto, select, sync_kind,
};
use lb_user::dataplane::{Dataplane, LoadOptions, SyncEvents};
use serde_json::{Value, json};

use super::{
    Ctx, Plot, Section, Table, median,
    objects::{RefProgram, Reference},
    plot, progress,
};
use crate::{
    LB_MAC, ROUTER_MAC, VIP, backend_identity, backend_info, backend_mac, fibnet::FibNet,
    maglev_members, monotonic_ns,
};

pub(super) const XDP_PASS: u32 = 2;
pub(super) const XDP_TX: u32 = 3;

/// Frame length (Ethernet header to end of payload, no FCS).
pub(super) const FRAME_LEN: usize = 64;
pub(super) const VIP_PORT: u16 = 80;
/// A second VIP on the same address whose affinity timeout is 0.
const REPICK_PORT: u16 = 81;
const BACKENDS: u32 = 4;
/// Runs between two drains of the sync ring while sync is on: as a reader
/// that drains in batches, so that few events find it waiting (see
/// `lb_run_sync`).
const DRAIN_EVERY: u32 = 1000;

/// Error text with its whole source chain.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s += &format!(": {c}");
        src = c.source();
    }
    s
}

pub(super) fn err<E: std::error::Error>(what: impl Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {}", chain(&e))
}

/// Client address number `i` (distinct for i < 2^22): 100.64.0.0/10.
pub(super) fn client_addr(i: u32) -> [u8; 4] {
    (u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i).to_be_bytes()
}

/// A 64-byte UDP frame from `client` to `dst:dport`.
pub(super) fn udp64(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    client: [u8; 4],
    dst: Ipv4Addr,
    dport: u16,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(client, dst.octets(), 64)
        .udp(40000, dport);
    let payload = [0u8; FRAME_LEN - 14 - 20 - 8];
    let mut v = Vec::with_capacity(FRAME_LEN);
    b.write(&mut v, &payload).expect("build a UDP frame");
    v
}

/// Pins the calling thread to one CPU, so that successive runs share caches.
/// `measure` on a thread of its own pinned to the last CPU: the CPU, and
/// what it measured.
pub(super) fn on_last_cpu<T: Send + 'static>(
    measure: impl FnOnce() -> T + Send + 'static,
) -> Result<(usize, T), String> {
    std::thread::spawn(move || (pin_to_last_cpu(), measure()))
        .join()
        .map_err(|_| "the measuring thread panicked".to_string())
}

pub(super) fn pin_to_last_cpu() -> usize {
    let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within
    // it for any cpu < CPU_SETSIZE; sched_setaffinity(0) affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
    cpu
}

/// One VIP of an [`Lb`].
pub(super) struct VipSpec {
    pub key: VipKey,
    pub id: u32,
    pub timeout_ns: u64,
}

/// The VIP entry of `v`: the whole default-size table at slot 0.
fn vip_info(v: &VipSpec, mode: ForwardingMode) -> VipInfo {
    VipInfo {
        vip_id: v.id,
        udp_pin_budget: 0,
        ring_base: 0,
        ring_size: DEFAULT_TABLE_SIZE,
        hash_seed: DEFAULT_HASH_SEED,
        forwarding: mode.as_u8(),
        _pad: [0; 3],
        affinity_timeout_ns: v.timeout_ns,
    }
}

/// stickylb's real program, loaded without pins, with its VIPs sharing one
/// Maglev table (the default size) over the given backends.
pub(super) struct Lb {
    pub dp: Dataplane,
    pub table: Vec<u32>,
}

impl Lb {
    pub(super) fn load(capacity: u32, macs: &[[u8; 6]], vips: &[VipSpec]) -> Result<Self, String> {
        let mut dp = Dataplane::load(&LoadOptions {
            affinity_capacity: capacity,
            pin_dir: None,
        })
        .map_err(err("load stickylb"))?;
        // As the daemon would: in every bench the load balancer's interface
        // has LB_MAC. It is also what keeps a frame the repeat method runs
        // again forwardable: its source stays LB_MAC, never the backend's
        // (which the program would drop as a loop). Any destination: the
        // repeat method's later iterations are addressed to the backend,
        // which the daemon's setting would pass as another host's frames;
        // the destination check it skips is one 6-byte compare.
        dp.set_own_mac_any_destination(LB_MAC)
            .map_err(err("set the LB's MAC"))?;
        let identities: Vec<String> = (0..macs.len() as u32).map(backend_identity).collect();
        let vip_id = vips.first().map_or(0, |v| v.id);
        for (id, mac) in (0..).zip(macs) {
            dp.set_backend(id, backend_info(id, *mac, true, vip_id))
                .map_err(err("set a backend"))?;
        }
        let members = maglev_members(identities.iter().map(|s| (s.as_str(), 1, true)));
        let table = maglev::build(&members, DEFAULT_TABLE_SIZE)
            .map_err(|e| format!("Maglev table: {e:?}"))?;
        dp.write_ring(0, table.iter().enumerate().map(|(s, &b)| (s as u32, b)))
            .map_err(err("write the Maglev table"))?;
        for v in vips {
            dp.set_vip(v.key, vip_info(v, ForwardingMode::Dsr))
                .map_err(err("set a VIP"))?;
        }
        Ok(Self { dp, table })
    }

    /// Switches VIP `v` to forwarding `mode`.
    pub(super) fn set_forwarding(
        &mut self,
        v: &VipSpec,
        mode: ForwardingMode,
    ) -> Result<(), String> {
        self.dp
            .set_vip(v.key, vip_info(v, mode))
            .map_err(err("set a VIP's forwarding"))
    }

    /// The backend the program will pick for a new client.
    pub(super) fn predict(&self, client: [u8; 4]) -> u32 {
        select::maglev_pick(
            client,
            DEFAULT_HASH_SEED,
            DEFAULT_TABLE_SIZE,
            |s| self.table.get(s as usize).copied(),
            Some,
        )
        .map_or(0, |p| p.backend_id)
    }

    /// Pins the given clients (numbers for `client_addr`) of VIP `vip_id`
    /// to the backends the program would pick, last seen now.
    fn prefill(&mut self, vip_id: u32, clients: impl Iterator<Item = u32>) -> Result<(), String> {
        self.prefill_at(vip_id, clients, monotonic_ns())
    }

    /// The same, last seen (and pinned) at `now`.
    fn prefill_at(
        &mut self,
        vip_id: u32,
        clients: impl Iterator<Item = u32>,
        now: u64,
    ) -> Result<(), String> {
        for i in clients {
            let client = client_addr(i);
            let value = AffinityValue {
                backend_id: self.predict(client),
                synced_s: 0,
                created_ns: now,
                last_seen_ns: now,
            };
            self.dp
                .set_affinity(AffinityKey { vip_id, client }, value)
                .map_err(err("prefill the affinity table"))?;
        }
        Ok(())
    }

    pub(super) fn stats(&self, vip_id: u32) -> Result<VipStats, String> {
        self.dp.vip_stats(vip_id).map_err(err("read VIP counters"))
    }

    fn not_vip(&self) -> Result<u64, String> {
        self.dp
            .global_stats()
            .map(|g| g[global_counter::PASS_NOT_VIP as usize])
            .map_err(err("read global counters"))
    }
}

#[derive(Clone, Copy)]
struct Knobs {
    repeat: u32,
    runs: usize,
    /// Calls per run of a per-call measurement.
    calls: usize,
    /// Clients in the big table.
    big: u32,
    capacity: u32,
}

impl Knobs {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                repeat: 100_000,
                runs: 3,
                calls: 5_000,
                big: 100_000,
                capacity: 1 << 18,
            }
        } else {
            Self {
                repeat: 1_000_000,
                runs: 5,
                calls: 20_000,
                big: 1_000_000,
                capacity: 1 << 21,
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Repeat,
    PerCall,
    /// Per call, each run given an ingress interface (`struct xdp_md`) of
    /// a namespace with routes, for the tunnel modes' FIB lookup.
    PerCallFrom,
}

impl Method {
    fn label(self, k: &Knobs) -> String {
        match self {
            Self::Repeat => format!("repeat {}", count(u64::from(k.repeat))),
            Self::PerCall => format!("{} calls × repeat 1", count(k.calls as u64)),
            Self::PerCallFrom => format!(
                "{} calls × repeat 1, from an interface",
                count(k.calls as u64)
            ),
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Repeat => "repeat",
            Self::PerCall => "per_call",
            Self::PerCallFrom => "per_call_from_interface",
        }
    }
}

/// One measured path.
struct Row {
    key: &'static str,
    path: String,
    method: Method,
    /// ns/packet of each run.
    runs: Vec<f64>,
    /// ns/packet of the floor forwarder, run just before each of `runs`
    /// (repeat rows of stickylb): a burst of other load on this shared
    /// machine then slows both sides of each ratio alike.
    paired_floor: Vec<f64>,
    /// Frames the program ran on (warm-up included).
    packets: u64,
    action: &'static str,
    /// What the program's counters confirmed.
    checked: String,
}

impl Row {
    fn ns(&self) -> f64 {
        median(&mut self.runs.clone())
    }

    /// Median of the run-by-run ratios to the floor forwarder run alongside,
    /// if it was.
    fn paired_ratio(&self) -> Option<f64> {
        (!self.paired_floor.is_empty()).then(|| {
            let mut r: Vec<f64> = self
                .runs
                .iter()
                .zip(&self.paired_floor)
                .map(|(s, f)| s / f)
                .collect();
            median(&mut r)
        })
    }
}

fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

type RunFn<'a> = dyn FnMut(&[u8], u32) -> Result<(u32, Duration), String> + 'a;

/// The floor forwarder and the frame to run it on, for paired runs.
struct Floor<'f, 'r> {
    frame: &'f [u8],
    run: &'f mut RunFn<'r>,
}

/// Repeat method: a warm-up, then `runs` runs of `repeat` on `frame`, each
/// after a run of the floor forwarder if `floor` is given.
fn repeated(
    k: &Knobs,
    key: &'static str,
    path: &str,
    frame: &[u8],
    expect: u32,
    run: &mut RunFn<'_>,
    mut floor: Option<Floor<'_, '_>>,
) -> Result<Row, String> {
    let check = |ret: u32| {
        if ret == expect {
            Ok(())
        } else {
            Err(format!(
                "{path}: the program returned {ret}, expected {expect}: not the path to measure"
            ))
        }
    };
    let warm = (k.repeat / 10).max(1);
    check(run(frame, warm)?.0)?;
    let mut row = Row {
        key,
        path: path.into(),
        method: Method::Repeat,
        runs: Vec::new(),
        paired_floor: Vec::new(),
        packets: u64::from(warm),
        action: if expect == XDP_TX {
            "XDP_TX"
        } else {
            "XDP_PASS"
        },
        checked: String::new(),
    };
    for _ in 0..k.runs {
        if let Some(f) = floor.as_mut() {
            let (ret, d) = (f.run)(f.frame, k.repeat)?;
            if ret != XDP_TX {
                return Err(format!("floor forwarder returned {ret} alongside {path}"));
            }
            row.paired_floor.push(d.as_nanos() as f64);
        }
        let (ret, d) = run(frame, k.repeat)?;
        check(ret)?;
        row.runs.push(d.as_nanos() as f64);
        row.packets += u64::from(k.repeat);
    }
    Ok(row)
}

/// `per_call`, every run given the ingress interface `run` passes: the
/// row is of the from-an-interface method, compared with its own floors.
fn per_call_from(
    key: &'static str,
    path: &str,
    warm: &[Vec<u8>],
    runs: &[Vec<Vec<u8>>],
    expect: u32,
    run: &mut RunFn<'_>,
) -> Result<Row, String> {
    let mut row = per_call(key, path, warm, runs, expect, run)?;
    row.method = Method::PerCallFrom;
    Ok(row)
}

/// Per-call method: each frame of `warm`, then of each run, once.
fn per_call(
    key: &'static str,
    path: &str,
    warm: &[Vec<u8>],
    runs: &[Vec<Vec<u8>>],
    expect: u32,
    run: &mut RunFn<'_>,
) -> Result<Row, String> {
    let mut wrong = 0u64;
    let mut row = Row {
        key,
        path: path.into(),
        method: Method::PerCall,
        paired_floor: Vec::new(),
        runs: Vec::new(),
        packets: 0,
        action: if expect == XDP_TX {
            "XDP_TX"
        } else {
            "XDP_PASS"
        },
        checked: String::new(),
    };
    for f in warm {
        wrong += u64::from(run(f, 1)?.0 != expect);
        row.packets += 1;
    }
    for frames in runs {
        let mut total = Duration::ZERO;
        for f in frames {
            let (ret, d) = run(f, 1)?;
            wrong += u64::from(ret != expect);
            total += d;
        }
        row.packets += frames.len() as u64;
        row.runs.push(total.as_nanos() as f64 / frames.len() as f64);
    }
    if wrong > 0 {
        return Err(format!(
            "{path}: {wrong} of {} runs did not return {expect}: not the path to measure",
            row.packets
        ));
    }
    Ok(row)
}

fn frames_of(clients: impl Iterator<Item = u32>, port: u16) -> Vec<Vec<u8>> {
    clients
        .map(|i| udp64(ROUTER_MAC, LB_MAC, client_addr(i), VIP, port))
        .collect()
}

/// xorshift64*: a fixed pseudo-random sequence (no dependency, reproducible).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % u64::from(n)) as u32
    }
}

fn lb_run(lb: &mut Lb) -> impl FnMut(&[u8], u32) -> Result<(u32, Duration), String> + '_ {
    move |f: &[u8], n: u32| {
        lb.dp
            .test_run_repeat(f, n)
            .map_err(err("BPF_PROG_TEST_RUN stickylb"))
    }
}

/// Sync events read back while a row runs, by kind.
#[derive(Default)]
struct Seen {
    by_kind: [u64; 4],
}

impl Seen {
    fn of(&self, kind: u32) -> u64 {
        self.by_kind[kind as usize]
    }

    fn total(&self) -> u64 {
        self.by_kind.iter().sum()
    }
}

/// Runs stickylb as `lb_run` does, and every `drain_every` runs (outside
/// the kernel's timing) drains the sync ring, so that it never fills and
/// every event is written, not lost. With `drain_every` 1 every event is
/// written to a ring the reader had emptied: without `BPF_RB_NO_WAKEUP`
/// that queues a wake-up of the reader, which is what a reader that has
/// caught up would cost the data path; the program commits without it.
fn lb_run_sync<'a>(
    lb: &'a mut Lb,
    events: &'a mut SyncEvents,
    seen: &'a mut Seen,
    drain_every: u32,
) -> impl FnMut(&[u8], u32) -> Result<(u32, Duration), String> + 'a {
    let mut buf: Vec<SyncEvent> = Vec::with_capacity(4096);
    let mut calls = 0u32;
    move |f: &[u8], n: u32| {
        let r = lb
            .dp
            .test_run_repeat(f, n)
            .map_err(err("BPF_PROG_TEST_RUN stickylb"))?;
        calls += 1;
        if !calls.is_multiple_of(drain_every) {
            return Ok(r);
        }
        drain_into(events, &mut buf, seen);
        Ok(r)
    }
}

/// Reads every waiting sync event, counting them by kind.
fn drain_into(events: &mut SyncEvents, buf: &mut Vec<SyncEvent>, seen: &mut Seen) {
    loop {
        buf.clear();
        let got = events.drain(buf, 4096);
        for e in buf.iter() {
            if let Some(k) = seen.by_kind.get_mut(e.kind as usize) {
                *k += 1;
            }
        }
        if got < 4096 {
            break;
        }
    }
}

fn lost_events(lb: &Lb) -> Result<u64, String> {
    lb.dp
        .global_stats()
        .map(|g| g[global_counter::SYNC_EVENTS_LOST as usize])
        .map_err(err("read global counters"))
}

fn ref_run(p: &mut RefProgram) -> impl FnMut(&[u8], u32) -> Result<(u32, Duration), String> + '_ {
    move |f: &[u8], n: u32| {
        p.test_run_repeat(f, n)
            .map_err(err("BPF_PROG_TEST_RUN reference"))
    }
}

/// Checks that every packet the row ran took the path named `what` (the
/// counter `pick` reads): counted as forwarded, on that path, on no other.
fn confirm(
    row: &mut Row,
    d: &VipStats,
    what: &str,
    pick: impl Fn(&VipStats) -> u64,
) -> Result<(), String> {
    let forwarded = d.packets;
    let on_path = pick(d);
    let paths = d.new_clients + d.affinity_hits + d.repick_expired + d.repick_dead;
    if forwarded != row.packets || on_path != row.packets || paths != row.packets {
        return Err(format!(
            "{}: of {} packets the program counted {forwarded} forwarded, {} new clients, \
             {} affinity hits, {} re-picks: not the path to measure",
            row.path,
            row.packets,
            d.new_clients,
            d.affinity_hits,
            d.repick_expired + d.repick_dead
        ));
    }
    row.checked = format!("{} {what}", count(on_path));
    Ok(())
}

fn measure(k: &Knobs) -> Result<(Vec<Row>, Value), String> {
    let mut rows = Vec::new();
    let mut info = serde_json::Map::new();
    let hot = client_addr(0);
    let hot_frame = udp64(ROUTER_MAC, LB_MAC, hot, VIP, VIP_PORT);

    progress("xdp: reference programs (repeat)");
    let mut pass = RefProgram::load(Reference::FloorPass).map_err(err("floor-pass"))?;
    let mut fwd = RefProgram::load(Reference::FloorFwd).map_err(err("floor-fwd"))?;
    let mut r = repeated(
        k,
        "floor_pass",
        "floor: XDP_PASS program",
        &hot_frame,
        XDP_PASS,
        &mut ref_run(&mut pass),
        None,
    )?;
    r.checked = "return code".into();
    rows.push(r);
    let mut r = repeated(
        k,
        "floor_fwd",
        "floor: forwarder (Eth+IPv4, swap MACs)",
        &hot_frame,
        XDP_TX,
        &mut ref_run(&mut fwd),
        None,
    )?;
    r.checked = "return code".into();
    rows.push(r);

    let repick = VipSpec {
        key: VipKey::new(VIP, REPICK_PORT, proto::UDP),
        id: 1,
        timeout_ns: 0,
    };
    let macs: Vec<[u8; 6]> = (0..BACKENDS).map(backend_mac).collect();

    // Small table: the hot client only (plus the new clients measured below).
    progress("xdp: stickylb, one client in the table");
    let mut lb = Lb::load(k.capacity, &macs, &[sticky_spec(), repick])?;
    lb.prefill(0, std::iter::once(0))?;

    let before = lb.not_vip()?;
    let other = udp64(ROUTER_MAC, LB_MAC, hot, Ipv4Addr::new(198, 51, 100, 99), 80);
    let mut r = repeated(
        k,
        "not_vip",
        "stickylb: not a VIP → XDP_PASS",
        &other,
        XDP_PASS,
        &mut lb_run(&mut lb),
        Some(Floor {
            frame: &hot_frame,
            run: &mut ref_run(&mut fwd),
        }),
    )?;
    let passed = lb.not_vip()? - before;
    if passed != r.packets {
        return Err(format!(
            "not a VIP: {passed} of {} packets counted as pass_not_vip",
            r.packets
        ));
    }
    r.checked = format!("{} pass_not_vip", count(passed));
    rows.push(r);

    let s0 = lb.stats(0)?;
    let mut r = repeated(
        k,
        "hit_1",
        "stickylb: affinity hit, 1 client in table",
        &hot_frame,
        XDP_TX,
        &mut lb_run(&mut lb),
        Some(Floor {
            frame: &hot_frame,
            run: &mut ref_run(&mut fwd),
        }),
    )?;
    confirm(&mut r, &lb.stats(0)?.since(&s0), "affinity hits", |d| {
        d.affinity_hits
    })?;
    rows.push(r);

    // Affinity timeout 0: the entry is found but always stale, so every
    // packet takes the Maglev pick and rewrites the entry.
    let s1 = lb.stats(1)?;
    let repick_frame = udp64(ROUTER_MAC, LB_MAC, hot, VIP, REPICK_PORT);
    let mut r = repeated(
        k,
        "repick",
        "stickylb: re-pick every packet (VIP timeout 0)",
        &repick_frame,
        XDP_TX,
        &mut lb_run(&mut lb),
        Some(Floor {
            frame: &hot_frame,
            run: &mut ref_run(&mut fwd),
        }),
    )?;
    let d = lb.stats(1)?.since(&s1);
    // The very first packet of this client on this VIP is a new client.
    if d.new_clients > 1 {
        return Err(format!(
            "re-pick: {} new clients, expected 1",
            d.new_clients
        ));
    }
    let mut shifted = d;
    shifted.repick_expired += shifted.new_clients;
    shifted.new_clients = 0;
    confirm(&mut r, &shifted, "re-picks (Maglev + map update)", |d| {
        d.repick_expired
    })?;
    rows.push(r);

    progress("xdp: stickylb, sync on (hit)");
    let mut events = lb.dp.sync_events().map_err(err("the sync ring's reader"))?;
    lb.dp
        .set_sync(true, Duration::from_secs(30))
        .map_err(err("turn sync on"))?;
    let s0 = lb.stats(0)?;
    let mut seen = Seen::default();
    let mut r = repeated(
        k,
        "hit_1_sync",
        "stickylb: affinity hit, 1 client in table, sync on",
        &hot_frame,
        XDP_TX,
        &mut lb_run_sync(&mut lb, &mut events, &mut seen, DRAIN_EVERY),
        Some(Floor {
            frame: &hot_frame,
            run: &mut ref_run(&mut fwd),
        }),
    )?;
    confirm(&mut r, &lb.stats(0)?.since(&s0), "affinity hits", |d| {
        d.affinity_hits
    })?;
    drain_into(&mut events, &mut Vec::new(), &mut seen);
    // The hot client's entry is refreshed at most once a second, and
    // announced at most once per refresh interval: a handful at most.
    r.checked += &format!("; {} sync events", seen.total());
    rows.push(r);
    lb.dp
        .set_sync(false, Duration::from_secs(30))
        .map_err(err("turn sync off"))?;

    progress("xdp: per-call runs (references, new clients)");
    // New clients: fresh addresses for every call, never seen before.
    let fresh = |run: usize| {
        let base = (1 << 20) + (run * k.calls) as u32;
        frames_of(base..base + k.calls as u32, VIP_PORT)
    };
    let warm_frames = fresh(0);
    let run_frames: Vec<Vec<Vec<u8>>> = (1..=k.runs).map(fresh).collect();
    let mut r = per_call(
        "floor_pass_call",
        "floor: XDP_PASS program",
        &warm_frames,
        &run_frames,
        XDP_PASS,
        &mut ref_run(&mut pass),
    )?;
    r.checked = "return codes".into();
    rows.push(r);
    let mut r = per_call(
        "floor_fwd_call",
        "floor: forwarder (Eth+IPv4, swap MACs)",
        &warm_frames,
        &run_frames,
        XDP_TX,
        &mut ref_run(&mut fwd),
    )?;
    r.checked = "return codes".into();
    rows.push(r);
    let s0 = lb.stats(0)?;
    let mut r = per_call(
        "new_client_call",
        "stickylb: new client (miss → Maglev → insert)",
        &warm_frames,
        &run_frames,
        XDP_TX,
        &mut lb_run(&mut lb),
    )?;
    confirm(&mut r, &lb.stats(0)?.since(&s0), "new clients", |d| {
        d.new_clients
    })?;
    rows.push(r);

    // The same with sync on: other fresh clients (the table is as full as
    // for the row above, give or take one run's), each also writing a NEW
    // event.
    let fresh_sync = |run: usize| {
        let base = (1 << 21) + (run * k.calls) as u32;
        frames_of(base..base + k.calls as u32, VIP_PORT)
    };
    let warm_sync = fresh_sync(0);
    let runs_sync: Vec<Vec<Vec<u8>>> = (1..=k.runs).map(fresh_sync).collect();
    lb.dp
        .set_sync(true, Duration::from_secs(30))
        .map_err(err("turn sync on"))?;
    let s0 = lb.stats(0)?;
    let lost0 = lost_events(&lb)?;
    let mut seen = Seen::default();
    let mut r = per_call(
        "new_client_sync_call",
        "stickylb: new client, sync on (… + NEW event)",
        &warm_sync,
        &runs_sync,
        XDP_TX,
        &mut lb_run_sync(&mut lb, &mut events, &mut seen, DRAIN_EVERY),
    )?;
    confirm(&mut r, &lb.stats(0)?.since(&s0), "new clients", |d| {
        d.new_clients
    })?;
    drain_into(&mut events, &mut Vec::new(), &mut seen);
    let lost = lost_events(&lb)? - lost0;
    if seen.of(sync_kind::NEW) != r.packets || lost != 0 {
        return Err(format!(
            "new client, sync on: {} NEW events and {lost} lost for {} new clients",
            seen.of(sync_kind::NEW),
            r.packets
        ));
    }
    r.checked += &format!("; {} NEW events", count(seen.of(sync_kind::NEW)));
    rows.push(r);

    // Again, but drained after every call: every event is written to an
    // empty ring (a reader that has caught up), where a commit that wakes
    // the reader queues an irq_work.
    let fresh_wake = |run: usize| {
        let base = (5 << 19) + (run * k.calls) as u32;
        frames_of(base..base + k.calls as u32, VIP_PORT)
    };
    let warm_wake = fresh_wake(0);
    let runs_wake: Vec<Vec<Vec<u8>>> = (1..=k.runs).map(fresh_wake).collect();
    let s0 = lb.stats(0)?;
    let mut seen = Seen::default();
    let mut r = per_call(
        "new_client_sync_wake_call",
        "stickylb: new client, sync on, drained after every call (caught-up reader)",
        &warm_wake,
        &runs_wake,
        XDP_TX,
        &mut lb_run_sync(&mut lb, &mut events, &mut seen, 1),
    )?;
    confirm(&mut r, &lb.stats(0)?.since(&s0), "new clients", |d| {
        d.new_clients
    })?;
    if seen.of(sync_kind::NEW) != r.packets {
        return Err(format!(
            "new client, sync on, woken: {} NEW events for {} new clients",
            seen.of(sync_kind::NEW),
            r.packets
        ));
    }
    r.checked += &format!("; {} NEW events", count(seen.of(sync_kind::NEW)));
    rows.push(r);
    lb.dp
        .set_sync(false, Duration::from_secs(30))
        .map_err(err("turn sync off"))?;

    // A hit that refreshes its entry's last-seen time (idle over a second),
    // sync off and on: on, it also writes a REFRESH event (the entry was
    // never announced). Each call is another client, prefilled as last seen
    // two seconds ago; at most once a second per entry in real traffic.
    progress("xdp: per-call runs (hit with refresh, sync off and on)");
    let per_set = (k.runs + 1) * k.calls;
    let stale = monotonic_ns().saturating_sub(2 * AFFINITY_REFRESH_NS);
    let (off_base, on_base) = (3 << 20, (3 << 20) + per_set as u32);
    lb.prefill_at(0, off_base..on_base + per_set as u32, stale)?;
    let set = |base: u32, run: usize| {
        let from = base + (run * k.calls) as u32;
        frames_of(from..from + k.calls as u32, VIP_PORT)
    };
    for (key, path, base, sync) in [
        (
            "refresh_call",
            "stickylb: affinity hit + last-seen refresh",
            off_base,
            false,
        ),
        (
            "refresh_sync_call",
            "stickylb: affinity hit + last-seen refresh, sync on (… + REFRESH event)",
            on_base,
            true,
        ),
    ] {
        let warm = set(base, 0);
        let runs: Vec<Vec<Vec<u8>>> = (1..=k.runs).map(|r| set(base, r)).collect();
        lb.dp
            .set_sync(sync, Duration::from_secs(30))
            .map_err(err("set sync"))?;
        let s0 = lb.stats(0)?;
        let mut seen = Seen::default();
        let mut r = per_call(
            key,
            path,
            &warm,
            &runs,
            XDP_TX,
            &mut lb_run_sync(&mut lb, &mut events, &mut seen, DRAIN_EVERY),
        )?;
        confirm(&mut r, &lb.stats(0)?.since(&s0), "affinity hits", |d| {
            d.affinity_hits
        })?;
        drain_into(&mut events, &mut Vec::new(), &mut seen);
        let want = if sync { r.packets } else { 0 };
        if seen.of(sync_kind::REFRESH) != want || seen.total() != want {
            return Err(format!(
                "{path}: {} REFRESH events of {} sync events, want {want}",
                seen.of(sync_kind::REFRESH),
                seen.total()
            ));
        }
        r.checked += &format!("; {} REFRESH events", count(want));
        rows.push(r);
    }
    drop(lb);

    // Pre-filled tables: a hot client (repeat) and a rotation over many
    // clients (per call), so that big tables show their cache misses.
    for (label, n) in [("1k".to_string(), 1_000u32), (big_label(k.big), k.big)] {
        progress(format!("xdp: stickylb, {label} clients in the table"));
        let mut lb = Lb::load(k.capacity, &macs, &[sticky_spec()])?;
        let t = Instant::now();
        lb.prefill(0, 0..n)?;
        info.insert(
            format!("prefill_{label}_seconds"),
            json!(t.elapsed().as_secs_f64()),
        );
        let s0 = lb.stats(0)?;
        let frame = udp64(ROUTER_MAC, LB_MAC, client_addr(n / 2), VIP, VIP_PORT);
        let mut r = repeated(
            k,
            if n == 1_000 { "hit_1k" } else { "hit_big" },
            &format!("stickylb: affinity hit, {label} clients in table, same client"),
            &frame,
            XDP_TX,
            &mut lb_run(&mut lb),
            Some(Floor {
                frame: &hot_frame,
                run: &mut ref_run(&mut fwd),
            }),
        )?;
        confirm(&mut r, &lb.stats(0)?.since(&s0), "affinity hits", |d| {
            d.affinity_hits
        })?;
        rows.push(r);

        // Rotation: a fixed pseudo-random sequence of clients of the table,
        // a different stretch of it in every run.
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(n));
        let mut pick = || frames_of((0..k.calls).map(|_| rng.below(n)), VIP_PORT);
        let warm = pick();
        let runs: Vec<Vec<Vec<u8>>> = (0..k.runs).map(|_| pick()).collect();
        let s0 = lb.stats(0)?;
        let mut r = per_call(
            if n == 1_000 {
                "hit_1k_call"
            } else {
                "hit_big_call"
            },
            &format!("stickylb: affinity hit, {label} clients in table, random client"),
            &warm,
            &runs,
            XDP_TX,
            &mut lb_run(&mut lb),
        )?;
        confirm(&mut r, &lb.stats(0)?.since(&s0), "affinity hits", |d| {
            d.affinity_hits
        })?;
        rows.push(r);
    }
    measure_tunnels(k, &macs, &mut rows)?;
    Ok((rows, Value::Object(info)))
}

/// The forwarding modes' rows, per call from an ingress interface: the
/// tunnel modes look the backend's next hop up in the kernel's FIB, which
/// needs a real ingress interface (given in `struct xdp_md`) of a namespace
/// with routes, found from the calling thread's namespace; and their frames
/// change shape, so the repeat method cannot time them. The references and
/// a DSR VIP are timed the same way, on the same interface.
///
/// Moves the calling thread into that namespace for good (the measuring
/// thread, which ends after this).
fn measure_tunnels(k: &Knobs, macs: &[[u8; 6]], rows: &mut Vec<Row>) -> Result<(), String> {
    progress("xdp: forwarding modes, per call from an interface");
    let net = FibNet::new()?;
    crate::netns::enter_path(&net.path());
    let ifindex = net.ingress;
    let mut pass = RefProgram::load(Reference::FloorPass).map_err(err("floor-pass"))?;
    let mut encap = RefProgram::load(Reference::FloorEncap).map_err(err("floor-encap"))?;
    let hot = udp64(ROUTER_MAC, LB_MAC, client_addr(0), VIP, VIP_PORT);
    let same = |n: usize| vec![hot.clone(); n];
    let same_runs: Vec<Vec<Vec<u8>>> = (0..k.runs).map(|_| same(k.calls)).collect();
    for (key, path, program, expect) in [
        (
            "floor_pass_from",
            "floor: XDP_PASS program",
            &mut pass,
            XDP_PASS,
        ),
        (
            "floor_encap_from",
            "floor: encapsulating forwarder (Eth+IPv4, adjust_head, outer IPv4 + checksum, swap MACs)",
            &mut encap,
            XDP_TX,
        ),
    ] {
        let mut r = per_call_from(
            key,
            path,
            &same(k.calls),
            &same_runs,
            expect,
            &mut ref_run_from(program, ifindex),
        )?;
        r.checked = "return codes".into();
        rows.push(r);
    }

    let spec = sticky_spec();
    for (mode, name) in [
        (ForwardingMode::Dsr, "dsr"),
        (ForwardingMode::Ipip, "ipip"),
        (ForwardingMode::Gue, "gue"),
    ] {
        let mut lb = Lb::load(k.capacity, macs, std::slice::from_ref(&spec))?;
        lb.set_forwarding(&spec, mode)?;
        lb.dp
            .set_tunnel(crate::fibnet::settings())
            .map_err(err("write the tunnel settings"))?;
        lb.prefill(spec.id, std::iter::once(0))?;
        let s0 = lb.stats(spec.id)?;
        let key: &'static str = match mode {
            ForwardingMode::Dsr => "dsr_hit_from",
            ForwardingMode::Ipip => "ipip_hit_from",
            ForwardingMode::Gue => "gue_hit_from",
        };
        let mut r = per_call_from(
            key,
            &format!("stickylb {name}: affinity hit, 1 client in table"),
            &same(k.calls),
            &same_runs,
            XDP_TX,
            &mut lb_run_from(&mut lb, ifindex),
        )?;
        confirm(
            &mut r,
            &lb.stats(spec.id)?.since(&s0),
            "affinity hits",
            |d| d.affinity_hits,
        )?;
        rows.push(r);
        if mode == ForwardingMode::Dsr {
            continue;
        }
        // Every call a client never seen: a miss, the Maglev pick, the
        // insert, then the encapsulation.
        let fresh = |run: usize| {
            let base = (1 << 21) + (run * k.calls) as u32;
            frames_of(base..base + k.calls as u32, VIP_PORT)
        };
        let warm = fresh(0);
        let runs: Vec<Vec<Vec<u8>>> = (1..=k.runs).map(fresh).collect();
        let s0 = lb.stats(spec.id)?;
        let key: &'static str = if mode == ForwardingMode::Ipip {
            "ipip_new_from"
        } else {
            "gue_new_from"
        };
        let mut r = per_call_from(
            key,
            &format!("stickylb {name}: new client"),
            &warm,
            &runs,
            XDP_TX,
            &mut lb_run_from(&mut lb, ifindex),
        )?;
        confirm(&mut r, &lb.stats(spec.id)?.since(&s0), "new clients", |d| {
            d.new_clients
        })?;
        rows.push(r);
    }
    Ok(())
}

fn lb_run_from(
    lb: &mut Lb,
    ifindex: u32,
) -> impl FnMut(&[u8], u32) -> Result<(u32, Duration), String> + '_ {
    move |f: &[u8], n: u32| {
        debug_assert_eq!(n, 1, "one run per call");
        lb.dp
            .test_run_from_timed(f, ifindex)
            .map_err(err("BPF_PROG_TEST_RUN stickylb from an interface"))
    }
}

fn ref_run_from(
    p: &mut RefProgram,
    ifindex: u32,
) -> impl FnMut(&[u8], u32) -> Result<(u32, Duration), String> + '_ {
    move |f: &[u8], n: u32| {
        debug_assert_eq!(n, 1, "one run per call");
        p.test_run_from(f, ifindex)
            .map_err(err("BPF_PROG_TEST_RUN reference from an interface"))
    }
}

fn sticky_spec() -> VipSpec {
    VipSpec {
        key: VipKey::new(VIP, VIP_PORT, proto::UDP),
        id: 0,
        timeout_ns: DEFAULT_AFFINITY_TIMEOUT_NS,
    }
}

/// A label short enough for the plots.
fn short_label(key: &str, big: &str) -> String {
    match key {
        "floor_pass" | "floor_pass_call" => "floor: XDP_PASS".into(),
        "floor_fwd" | "floor_fwd_call" => "floor: forwarder".into(),
        "not_vip" => "not a VIP (pass)".into(),
        "hit_1" => "hit, 1 client".into(),
        "repick" => "re-pick every packet".into(),
        "new_client_call" => "new client".into(),
        "hit_1_sync" => "hit, 1 client, sync on".into(),
        "new_client_sync_call" => "new client, sync on".into(),
        "new_client_sync_wake_call" => "new client, sync on, caught-up reader".into(),
        "refresh_call" => "hit + refresh".into(),
        "refresh_sync_call" => "hit + refresh, sync on".into(),
        "hit_1k" => "hit, 1k clients, same".into(),
        "hit_1k_call" => "hit, 1k clients, random".into(),
        "hit_big" => format!("hit, {big} clients, same"),
        "hit_big_call" => format!("hit, {big} clients, random"),
        "floor_pass_from" => "floor: XDP_PASS".into(),
        "floor_encap_from" => "floor: encapsulating forwarder".into(),
        "dsr_hit_from" => "dsr, hit".into(),
        "ipip_hit_from" => "ipip, hit".into(),
        "ipip_new_from" => "ipip, new client".into(),
        "gue_hit_from" => "gue, hit".into(),
        "gue_new_from" => "gue, new client".into(),
        other => other.into(),
    }
}

/// A table size as the rows name it: 1M, 65k.
pub(super) fn big_label(n: u32) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else {
        format!("{}k", n / 1_000)
    }
}

pub fn run(ctx: &Ctx) -> Result<Section, String> {
    let k = Knobs::new(ctx.quick);
    let (cpu, result) = on_last_cpu(move || measure(&k))?;
    let (rows, info) = result?;
    let find = |key: &str| {
        rows.iter()
            .find(|r| r.key == key)
            .map(Row::ns)
            .ok_or_else(|| format!("no row {key}"))
    };
    let floor = |m: Method| match m {
        Method::Repeat => find("floor_fwd"),
        Method::PerCall => find("floor_fwd_call"),
        // The tunnel rows are compared with the encapsulating floor.
        Method::PerCallFrom => find("floor_encap_from"),
    };
    let pass_floor = |m: Method| match m {
        Method::Repeat => find("floor_pass"),
        Method::PerCall => find("floor_pass_call"),
        Method::PerCallFrom => find("floor_pass_from"),
    };

    let mut table = Table {
        title: "ns per packet (median of runs); ratios against the reference timed the same way"
            .into(),
        headers: [
            "path",
            "method",
            "ns/packet",
            "× floor forwarder",
            "minus XDP_PASS program",
            "action; confirmed by counters",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    let mut json_rows = Vec::new();
    for r in &rows {
        let ns = r.ns();
        let ratio = match r.paired_ratio() {
            Some(paired) => paired,
            None => ns / floor(r.method)?,
        };
        let above = ns - pass_floor(r.method)?;
        table.rows.push(vec![
            r.path.clone(),
            r.method.label(&k),
            plot::fmt_num(ns),
            format!("{ratio:.2}×"),
            format!("{above:+.1}"),
            format!("{}; {}", r.action, r.checked),
        ]);
        json_rows.push(json!({
            "key": r.key,
            "path": r.path,
            "method": r.method.key(),
            "ns_per_packet": ns,
            "runs_ns": r.runs,
            "ratio_to_floor_forwarder": ratio,
            "paired_floor_runs_ns": r.paired_floor,
            "minus_xdp_pass_ns": above,
            "packets": r.packets,
            "action": r.action,
            "confirmed": r.checked,
        }));
    }

    let bl = big_label(k.big);
    let bars = |m: Method| -> Vec<(String, f64)> {
        rows.iter()
            .filter(|r| r.method == m)
            .map(|r| (short_label(r.key, &bl), r.ns()))
            .collect()
    };
    let plots = vec![
        Plot {
            file: "bench-xdp-cost.svg".into(),
            svg: plot::bars(
                &format!(
                    "XDP cost per packet, BPF_PROG_TEST_RUN repeat {}",
                    count(u64::from(k.repeat))
                ),
                "ns",
                &bars(Method::Repeat),
            ),
            caption: "Per-packet cost, repeat method (one frame run many times)".into(),
        },
        Plot {
            file: "bench-xdp-cost-per-call.svg".into(),
            svg: plot::bars(
                "XDP cost per call (repeat 1, a different frame every call)",
                "ns",
                &bars(Method::PerCall),
            ),
            caption: "Per-call cost, including the kernel's timing of one run".into(),
        },
        Plot {
            file: "bench-xdp-cost-tunnel.svg".into(),
            svg: plot::bars(
                "XDP cost per call from an interface (repeat 1): the forwarding modes",
                "ns",
                &bars(Method::PerCallFrom),
            ),
            caption: "Per-call cost of each forwarding mode next to the encapsulating floor, \
                      every run from an ingress interface (the FIB lookup's)"
                .into(),
        },
    ];

    let hit_row = rows
        .iter()
        .find(|r| r.key == "hit_1")
        .ok_or("no row hit_1")?;
    let hit = hit_row.ns();
    let f = floor(Method::Repeat)?;
    let hit_ratio = hit_row.paired_ratio().unwrap_or(hit / f);
    let new = find("new_client_call")?;
    let fc = floor(Method::PerCall)?;
    let pc = pass_floor(Method::PerCall)?;
    let big = find("hit_big_call")?;
    let hit_sync_row = rows
        .iter()
        .find(|r| r.key == "hit_1_sync")
        .ok_or("no row hit_1_sync")?;
    let hit_sync = hit_sync_row.ns();
    let new_sync = find("new_client_sync_call")?;
    let new_wake = find("new_client_sync_wake_call")?;
    let refresh = find("refresh_call")?;
    let refresh_sync = find("refresh_sync_call")?;
    let from = |key: &str| find(key);
    let fe = floor(Method::PerCallFrom)?;
    let tunnel_headline = format!(
        "XDP cost of the tunnel modes (per call from an interface, FIB lookup included): \
         ipip affinity hit {} ns = {:.2}× the encapsulating floor ({} ns), new client {} ns; \
         gue affinity hit {} ns = {:.2}×, new client {} ns; dsr affinity hit timed the same way {} ns",
        plot::fmt_num(from("ipip_hit_from")?),
        from("ipip_hit_from")? / fe,
        plot::fmt_num(fe),
        plot::fmt_num(from("ipip_new_from")?),
        plot::fmt_num(from("gue_hit_from")?),
        from("gue_hit_from")? / fe,
        plot::fmt_num(from("gue_new_from")?),
        plot::fmt_num(from("dsr_hit_from")?),
    );
    let headlines = vec![
        tunnel_headline,
        format!(
            "XDP cost: stickylb affinity hit {} ns/packet = {:.2}× the floor forwarder (median of \
             the ratios to a floor run just before each stickylb run; the floor's own median: {} ns)",
            plot::fmt_num(hit),
            hit_ratio,
            plot::fmt_num(f)
        ),
        format!(
            "XDP cost: stickylb new client (miss → Maglev → insert) {} ns per call = {:.1}× the floor \
             forwarder timed the same way ({} ns; an XDP_PASS program {} ns)",
            plot::fmt_num(new),
            new / fc,
            plot::fmt_num(fc),
            plot::fmt_num(pc)
        ),
        format!(
            "XDP cost: affinity hit for a random one of {bl} clients in the table {} ns per call = \
             {:.1}× the floor forwarder timed the same way",
            plot::fmt_num(big),
            big / fc
        ),
        format!(
            "XDP cost of sync: new client {:+.1} ns ({} → {} ns per call, the NEW event; \
             {:+.1} ns when the reader has caught up, the ring empty at every event); \
             affinity hit {:+.1} ns ({} → {} ns/packet, {:.2}× → {:.2}× the floor forwarder); \
             a hit that refreshes its entry (at most once a second per client) {:+.1} ns \
             ({} → {} ns per call, the REFRESH event)",
            new_sync - new,
            plot::fmt_num(new),
            plot::fmt_num(new_sync),
            new_wake - new,
            hit_sync - hit,
            plot::fmt_num(hit),
            plot::fmt_num(hit_sync),
            hit_ratio,
            hit_sync_row.paired_ratio().unwrap_or(hit_sync / f),
            refresh_sync - refresh,
            plot::fmt_num(refresh),
            plot::fmt_num(refresh_sync)
        ),
    ];

    let method = format!(
        "BPF_PROG_TEST_RUN on the real stickylb object (loaded through `Dataplane`, no pins, \
         affinity capacity {cap}) and on two reference programs built by the project the same \
         way (tests/bench-ebpf's `floor-pass`: returns XDP_PASS; `floor-fwd`: parses Ethernet + IPv4 with \
         bounds checks, swaps the MACs, XDP_TX). One UDP VIP with {BACKENDS} backends and a \
         Maglev table of {tsize} slots; 64-byte UDP frames; JIT on; the measuring thread pinned \
         to CPU {cpu}. Every timed run's return code is checked (XDP_TX for forwarding paths, \
         XDP_PASS otherwise) and stickylb's own counters must show that every packet took the \
         path named (last column).\n\n\
         *Repeat*: one frame, `repeat` = {rep} iterations in the kernel, median of {runs} runs of \
         the kernel's mean ns per iteration (whole ns). Each stickylb run follows a run of the \
         floor forwarder, and its ratio is the median of the run-by-run ratios, so a burst of \
         other load on this shared machine slows both sides of a ratio alike. Right for a hit and for a pass: the MAC \
         rewrite is idempotent, so every iteration takes the same path. The same client is hit \
         on every iteration, so its entry stays in cache whatever the size of the table. \
         *Re-pick every packet* uses a second VIP whose affinity timeout is 0: the client's \
         entry is found but stale, so each packet takes the Maglev pick and rewrites its entry \
         (the work of a new client, with the entry's key already in the map).\n\n\
         *Per call*: {calls} BPF_PROG_TEST_RUN calls with repeat 1 per run, each on a different \
         pre-built frame, median of {runs} runs of the mean per-call time the kernel reports (after a \
         warm-up run). It includes the kernel's timing of a single run (clock reads, bottom-half \
         disable/enable) and an indirect call of the program (the kernel installs the direct-call \
         XDP dispatcher only for repeat > 1), so the references are timed the same way on the same frames and the \
         ratio compares like with like; \"minus XDP_PASS program\" subtracts that per-call \
         overhead. *New client*: every call is a client address never seen before, so every \
         packet misses the affinity table, takes a Maglev pick and inserts its entry. *Random \
         client*: the affinity table is pre-filled through `Dataplane::set_affinity` with 1k / \
         {bl} entries (as the program would have pinned them, last seen at fill time), and each \
         call sends a client drawn at random from it, so the lookup walks cold memory the way it \
         does with many clients. The program refreshes an entry's last-seen time at most once a \
         second per client; in the {bl} rotation nearly every packet makes that write, as it \
         would with that many clients each sending less than once a second.\n\n\
         *Sync on*: the same paths with the program's sync events on (`Dataplane::set_sync`, \
         refresh interval 30 s), the ring drained every {drain} calls, outside the kernel's \
         timing, as a reader that drains in batches would, so that no event is lost (each row \
         checks the events it read: one NEW per new client, one REFRESH per refreshing hit, \
         none lost). *Drained after every call*: every event is written to an empty ring, as \
         for a reader that has caught up. A commit without `BPF_RB_NO_WAKEUP` would then wake \
         the reader (the kernel's irq_work, a self-interrupt, inside the timed run: about \
         8 µs here); the program commits with it and the daemon drains on a timer, so this \
         row should cost what the batched one does. *Hit + refresh*: every call is \
         another client of a set pre-filled as last seen two seconds ago, so that each packet \
         takes the coarse refresh (the write of its last-seen time), and with sync on also \
         announces the entry (never announced before).\n\n\
         *Per call, from an interface* (the forwarding modes): the tunnel modes look up the \
         backend's next hop with `bpf_fib_lookup`, which needs a real ingress interface, so \
         every run is given one (`struct xdp_md` with the ingress ifindex of a veth in a \
         namespace of the bench's own, with forwarding on, a route to the backends' subnet and \
         a permanent neighbour for its gateway: `tests/src/fibnet.rs`), from a thread inside \
         that namespace; and an encapsulated frame changes shape, so only repeat-1 runs time \
         it (each call starts from a fresh copy of the frame). The references are timed the \
         same way on the same interface: the XDP_PASS program and tests/bench-ebpf's \
         `floor-encap` (parses Ethernet + IPv4 with bounds checks, `bpf_xdp_adjust_head`, \
         writes an outer IPv4 header with its checksum, the MACs swapped, XDP_TX: the least \
         an encapsulating forwarder does, with no next-hop lookup), against which this \
         method's ratios are taken. *Affinity hit*: one client pre-filled, the same frame \
         every call; *new client*: a client never seen every call. One VIP per mode (a program \
         loaded for each), the same backends; the DSR row is the same hit with the MAC rewrite, \
         for the cost of the mode alone.",
        cap = k.capacity,
        tsize = DEFAULT_TABLE_SIZE,
        rep = count(u64::from(k.repeat)),
        runs = k.runs,
        calls = count(k.calls as u64),
        drain = count(u64::from(DRAIN_EVERY)),
    );

    Ok(Section {
        title: "Per-packet cost of the XDP program".into(),
        method,
        tables: vec![table],
        plots,
        json: json!({
            "repeat": k.repeat,
            "runs": k.runs,
            "calls_per_run": k.calls,
            "big_table_clients": k.big,
            "affinity_capacity": k.capacity,
            "table_size": DEFAULT_TABLE_SIZE,
            "cpu": cpu,
            "rows": json_rows,
            "info": info,
        }),
        headlines,
    })
}
