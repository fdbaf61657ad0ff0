//! Where an affinity hit's time goes: `perf record` (cpu-clock samples of
//! the one thread whose BPF_PROG_TEST_RUN calls run the program, kernel
//! time included; not of its CPU, which other work shares) while BPF_PROG_TEST_RUN runs stickylb's
//! hit path, and the floor forwarder the same way, for as long. The JIT
//! code of a BPF program shows up as `bpf_prog_<tag>_<name>` once
//! `net.core.bpf_jit_kallsyms` is 1; the kernel functions it calls (the
//! hash map's lookup, the clock) and the test-run loop around it show up by
//! name. The figures explain the distance to the floor: what the program
//! spends in its own instructions and what in kernel code it cannot inline.

use std::{
    collections::BTreeMap,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lb_common::{DEFAULT_AFFINITY_TIMEOUT_NS, VipKey, proto};
use serde_json::json;

use super::{
    Ctx, Plot, Section, Table,
    objects::{RefProgram, Reference},
    plot, progress,
    xdp_cost::{Lb, VIP_PORT, VipSpec, XDP_TX, client_addr, err, pin_to_last_cpu, udp64},
};
use crate::{LB_MAC, ROUTER_MAC, VIP, backend_mac};

/// The section's title, as `slb-bench` lists it.
pub const TITLE: &str = "Where an affinity hit's time goes (profile)";
const REPEAT: u32 = 1_000_000;
const SAMPLE_HZ: u32 = 10_000;

/// The groups the samples are summed into (`group`).
pub const OWN_CODE: &str = "the program's own JIT code";
pub const DISPATCHER: &str = "other BPF programs (the XDP dispatcher)";
pub const HASH_LOOKUPS: &str = "hash map lookups (helper calls)";
pub const CLOCK: &str = "clock (bpf_ktime_get_coarse_ns)";
pub const HARNESS: &str = "BPF_PROG_TEST_RUN loop and other kernel code";

/// What a kernel symbol is spent on, for the summary.
fn group(sym: &str, program: &str) -> &'static str {
    if sym.starts_with("bpf_prog_") && sym.ends_with(program) {
        OWN_CODE
    } else if sym.starts_with("bpf_prog_") {
        DISPATCHER
    } else if sym.contains("htab")
        || sym.contains("lookup_nulls_elem")
        || sym.contains("jhash")
        || sym == "memcmp"
        || sym.contains("lru")
    {
        HASH_LOOKUPS
    } else if sym.contains("ktime_get") || sym.contains("jiffies") {
        CLOCK
    } else {
        HARNESS
    }
}

struct Profile {
    samples: u64,
    /// (share %, symbol), largest first.
    symbols: Vec<(f64, String)>,
    ns_per_packet: f64,
}

/// Runs `run_once` (one BPF_PROG_TEST_RUN of `REPEAT`, returning the
/// action and the kernel's mean ns) on a thread of its own, pinned to the
/// last CPU, until `perf record` of that thread for `secs` is done.
fn profile(
    what: &str,
    secs: u64,
    mut run_once: impl FnMut() -> Result<(u32, f64), String> + Send + 'static,
) -> Result<Profile, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let flag = stop.clone();
    let worker = std::thread::spawn(move || -> Result<f64, String> {
        pin_to_last_cpu();
        // SAFETY: gettid has no preconditions.
        let _ = tx.send(unsafe { libc::gettid() });
        let mut ns = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            let (action, mean) = run_once()?;
            if action != XDP_TX {
                return Err(format!("returned {action}, not XDP_TX"));
            }
            ns.push(mean);
        }
        Ok(super::median(&mut ns))
    });
    let tid = rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| format!("{what}: the measuring thread did not start"))?;
    // A first run warms the caches before the samples start.
    std::thread::sleep(Duration::from_millis(200));
    let data = std::env::temp_dir().join(format!("slb-perf-{}-{what}.data", std::process::id()));
    let rec = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F"])
        .arg(SAMPLE_HZ.to_string())
        .arg("-t")
        .arg(tid.to_string())
        .arg("-o")
        .arg(&data)
        .args(["--", "sleep"])
        .arg(secs.to_string())
        .output();
    stop.store(true, Ordering::Relaxed);
    let ns = worker
        .join()
        .map_err(|_| format!("{what}: the measuring thread panicked"))??;
    let rec = rec.map_err(|e| format!("run perf record (Debian linux-perf): {e}"))?;
    if !rec.status.success() {
        let _ = std::fs::remove_file(&data);
        return Err(format!(
            "perf record failed: {}",
            String::from_utf8_lossy(&rec.stderr).trim()
        ));
    }
    let rep = Command::new("perf")
        .args(["report", "--stdio", "--no-children", "--sort", "sym", "-i"])
        .arg(&data)
        .output();
    let _ = std::fs::remove_file(&data);
    let rep = rep.map_err(|e| format!("run perf report: {e}"))?;
    if !rep.status.success() {
        return Err(format!(
            "perf report failed: {}",
            String::from_utf8_lossy(&rep.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&rep.stdout);
    let mut samples = 0;
    let mut symbols = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        // "# Samples: 30K of event 'cpu-clock'" and "# Event count (approx.): N"
        if let Some(rest) = line.strip_prefix("# Samples: ") {
            samples = parse_count(rest.split_whitespace().next().unwrap_or(""));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        // "37.12%  [k] bpf_prog_0123456789abcdef_stickylb"
        let mut parts = line.split_whitespace();
        let (Some(pct), Some(_kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(pct) = pct.strip_suffix('%').and_then(|p| p.parse::<f64>().ok()) else {
            continue;
        };
        let sym: Vec<&str> = parts.collect();
        symbols.push((pct, sym.join(" ")));
    }
    if symbols.is_empty() || samples == 0 {
        return Err(format!("{what}: perf recorded no samples"));
    }
    Ok(Profile {
        samples,
        symbols,
        ns_per_packet: ns,
    })
}

/// perf's "30K" or "1234".
fn parse_count(s: &str) -> u64 {
    let (num, mul) = match s.strip_suffix('K') {
        Some(n) => (n, 1_000.0),
        None => match s.strip_suffix('M') {
            Some(n) => (n, 1_000_000.0),
            None => (s, 1.0),
        },
    };
    num.parse::<f64>().map_or(0, |v| (v * mul) as u64)
}

/// The share (%) of `name` in `groups`; 0 for a group with no samples.
fn share(groups: &BTreeMap<&str, f64>, name: &str) -> f64 {
    groups.get(name).copied().unwrap_or(0.0)
}

fn groups(p: &Profile, program: &str) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    for (pct, sym) in &p.symbols {
        *out.entry(group(sym, program)).or_insert(0.0) += pct;
    }
    out
}

fn perf_available() -> Result<(), String> {
    match Command::new("perf").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(
            "perf is not installed (Debian package linux-perf; `cargo xtask bench` installs it)"
                .into(),
        ),
    }
}

pub fn run(ctx: &Ctx) -> Result<Section, String> {
    perf_available()?;
    let kallsyms = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_kallsyms")
        .map_err(err("read net.core.bpf_jit_kallsyms"))?;
    if kallsyms.trim() != "1" {
        return Err(format!(
            "net.core.bpf_jit_kallsyms is {}: BPF programs' JIT code would not show by name; set it to 1",
            kallsyms.trim()
        ));
    }
    let secs = if ctx.quick { 1 } else { 4 };
    let spec = VipSpec {
        key: VipKey::new(VIP, VIP_PORT, proto::UDP),
        id: 0,
        timeout_ns: DEFAULT_AFFINITY_TIMEOUT_NS,
    };
    let macs: Vec<[u8; 6]> = (0..4).map(backend_mac).collect();
    let frame = udp64(ROUTER_MAC, LB_MAC, client_addr(0), VIP, VIP_PORT);

    progress("profile: stickylb, affinity hit (same client)");
    let mut lb = Lb::load(1 << 16, &macs, &[spec])?;
    let f = frame.clone();
    // The first run pins the client; every later iteration is a hit.
    lb.dp.test_run(&f).map_err(err("pin the client"))?;
    let hits_before = lb.stats(0)?.affinity_hits;
    let lb = Arc::new(std::sync::Mutex::new(lb));
    let l = lb.clone();
    let hit = profile("stickylb", secs, move || {
        let (a, d) = l
            .lock()
            .unwrap()
            .dp
            .test_run_repeat(&f, REPEAT)
            .map_err(err("run stickylb"))?;
        Ok((a, d.as_nanos() as f64))
    })?;
    let hits = lb.lock().unwrap().stats(0)?.affinity_hits - hits_before;
    if hits < u64::from(REPEAT) {
        return Err(format!(
            "stickylb counted {hits} affinity hits, not every iteration's"
        ));
    }

    progress("profile: floor forwarder");
    let mut fwd = RefProgram::load(Reference::FloorFwd).map_err(err("floor-fwd"))?;
    let f = frame.clone();
    let floor = profile("floor-fwd", secs, move || {
        let (a, d) = fwd
            .test_run_repeat(&f, REPEAT)
            .map_err(err("run floor-fwd"))?;
        Ok((a, d.as_nanos() as f64))
    })?;

    let hit_groups = groups(&hit, lb_common::PROGRAM_NAME);
    let floor_groups = groups(&floor, "floor_fwd");
    let names: Vec<&str> = {
        let mut v: Vec<&str> = hit_groups
            .keys()
            .chain(floor_groups.keys())
            .copied()
            .collect();
        v.sort_unstable();
        v.dedup();
        v.sort_by(|a, b| {
            let x = share(&hit_groups, a);
            let y = share(&hit_groups, b);
            y.total_cmp(&x)
        });
        v
    };
    let ns_of = |g: &BTreeMap<&str, f64>, name: &str, ns: f64| share(g, name) * ns / 100.0;
    let summary = Table {
        title: "Where the time goes (share of the thread's samples, and that share of the ns per packet)".into(),
        headers: vec![
            "spent in".into(),
            "stickylb hit: share".into(),
            "stickylb hit: ns/packet".into(),
            "floor forwarder: share".into(),
            "floor forwarder: ns/packet".into(),
        ],
        rows: names
            .iter()
            .map(|n| {
                vec![
                    (*n).to_string(),
                    format!("{:.1} %", share(&hit_groups, n)),
                    format!("{:.1}", ns_of(&hit_groups, n, hit.ns_per_packet)),
                    format!("{:.1} %", share(&floor_groups, n)),
                    format!("{:.1}", ns_of(&floor_groups, n, floor.ns_per_packet)),
                ]
            })
            .chain(std::iter::once(vec![
                "all (ns/packet as the kernel timed it)".into(),
                "100 %".into(),
                format!("{:.1}", hit.ns_per_packet),
                "100 %".into(),
                format!("{:.1}", floor.ns_per_packet),
            ]))
            .collect(),
    };
    let top = |p: &Profile, title: &str| Table {
        title: title.into(),
        headers: vec!["share".into(), "kernel symbol".into()],
        rows: p
            .symbols
            .iter()
            .filter(|(pct, _)| *pct >= 0.5)
            .take(16)
            .map(|(pct, sym)| vec![format!("{pct:.2} %"), format!("`{sym}`")])
            .collect(),
    };
    let hash = share(&hit_groups, HASH_LOOKUPS);
    let own = share(&hit_groups, OWN_CODE);
    let clock = share(&hit_groups, CLOCK);
    let harness = share(&hit_groups, HARNESS) + share(&hit_groups, DISPATCHER);
    let headline = format!(
        "Profile of an affinity hit (perf cpu-clock of the thread running it, {:.0} ns/packet): own JIT code {own:.1} %, hash map lookups (the affinity table) {hash:.1} %, clock {clock:.1} %, test-run loop and the rest {harness:.1} %; the floor forwarder's own code {:.1} % of its {:.0} ns",
        hit.ns_per_packet,
        share(&floor_groups, OWN_CODE),
        floor.ns_per_packet,
    );
    let plot_data: Vec<(String, f64)> = names
        .iter()
        .map(|n| (n.to_string(), ns_of(&hit_groups, n, hit.ns_per_packet)))
        .collect();
    let method = format!(
        "`perf record -e cpu-clock -F {SAMPLE_HZ} -t <thread>` for {secs} s of the one thread (pinned to the last CPU) that runs BPF_PROG_TEST_RUN (repeat {REPEAT}, one 64-byte UDP frame) over and over: stickylb's real object through `Dataplane` (one UDP VIP, 4 backends, the client pinned by a first run, so that every iteration is an affinity hit of the same client; stickylb's counters must show a hit for every iteration), then the floor forwarder (tests/bench-ebpf's `floor-fwd`) for as long. `perf report --sort sym` attributes the samples; with `net.core.bpf_jit_kallsyms` = 1 a BPF program's JIT code is the symbol `bpf_prog_<tag>_<name>`, so the program's own instructions are told apart from the kernel functions it calls (the LRU hash map's lookup: `htab_map_hash`, `lookup_nulls_elem_raw`, `memcmp`; the clock) and from the test-run loop around it (`bpf_test_run`, the bottom-half enable after every iteration, …). ns/packet is the kernel's mean per iteration, the median over the runs; a group's ns is its share of that. Samples: stickylb {}, floor {}. Not timed behind the wrapper: this shows what the program is made of, the wrapper section what it costs next to the floor.",
        hit.samples, floor.samples
    );
    Ok(Section {
        title: TITLE.into(),
        method,
        tables: vec![
            summary,
            top(&hit, "stickylb, affinity hit: the hottest symbols"),
            top(&floor, "floor forwarder: the hottest symbols"),
        ],
        plots: vec![Plot {
            file: "bench-profile-hit.svg".into(),
            svg: plot::bars(
                "Affinity hit: ns per packet by where it is spent (perf)",
                "ns",
                &plot_data,
            ),
            caption: "Where an affinity hit's time goes".into(),
        }],
        json: json!({
            "seconds": secs,
            "sample_hz": SAMPLE_HZ,
            "stickylb_hit": {
                "ns_per_packet": hit.ns_per_packet,
                "samples": hit.samples,
                "groups": hit_groups,
                "symbols": hit.symbols.iter().take(30).map(|(p, s)| json!({"pct": p, "symbol": s})).collect::<Vec<_>>(),
            },
            "floor_fwd": {
                "ns_per_packet": floor.ns_per_packet,
                "samples": floor.samples,
                "groups": floor_groups,
                "symbols": floor.symbols.iter().take(30).map(|(p, s)| json!({"pct": p, "symbol": s})).collect::<Vec<_>>(),
            },
        }),
        headlines: vec![headline],
    })
}
