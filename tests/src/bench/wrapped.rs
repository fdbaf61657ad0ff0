//! Per-packet cost of every path, timed the same way: BPF_PROG_TEST_RUN
//! with a large `repeat` on tests/bench-ebpf's `wrap`, which restores the
//! frame every iteration (undoing an encapsulation's head adjustment),
//! writes the client a mode asks for (the same one, a random one of N
//! already in the table, a never-seen one) and tail-calls the program under
//! test through a program array. Every program — stickylb, the floors, an
//! XDP_PASS program — runs behind the same wrapper. The wrapper's own cost
//! (wrapper → XDP_PASS) depends on its mode (a random or a new client costs
//! it more than the same one), so each row's ratios are to the floors
//! behind the wrapper in the row's own mode: the wrapper's work is on both
//! sides and the ratios compare the programs. This replaces, for paths that change state (new clients) or
//! should miss the caches (a random client of a big table), the many
//! repeat-1 calls of `xdp_cost`, whose ~80 ns of syscall and timing
//! overhead per call hid the program's own cost.
//!
//! Rounds: every row is timed once per round, each time just after the
//! floors behind the wrapper in its mode (and the floor forwarder behind a
//! same-client wrapper: the reference this section used before, kept for
//! comparison), and its ratio is the median of the round-by-round ratios. stickylb's counters confirm every path, and
//! for new clients in a table with room the affinity table's entry count
//! must grow by exactly one per iteration.
//!
//! New clients depend on the LRU's free-list state (a fresh map hands out
//! its preallocated elements in order, a churned one scattered), so each
//! round loads a fresh stickylb and takes it through a fixed sequence:
//! fresh and empty → filled → evicting (fresh) → a whole capacity more
//! evicted → evicting (churned) → emptied → empty (churned).

use std::{collections::BTreeMap, os::fd::AsRawFd as _, time::Instant};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{ProgramFd, TestRun as _, TestRunOptions, Xdp},
    util::nr_cpus,
};
use bench_ebpf::{WRAP_FRAME_LEN, WrapConfig, map_names, program_names, wrap_mode};
use lb_common::{
    AffinityKey, AffinityValue, DEFAULT_AFFINITY_TIMEOUT_NS, ForwardingMode, VipKey, proto,
};
use serde_json::{Value, json};

use super::{
    Ctx, Plot, Section, Table, median,
    objects::{RefProgram, Reference, WRAP},
    plot, progress,
    xdp_cost::{
        Lb, VIP_PORT, VipSpec, XDP_PASS, XDP_TX, big_label, client_addr, err, on_last_cpu, udp64,
    },
};
use crate::{LB_MAC, ROUTER_MAC, VIP, backend_mac, fibnet::FibNet};

const XDP_ABORTED: u32 = 0;
const BACKENDS: u32 = 4;
/// First never-seen client of the new-client rows (11.0.0.0 upwards: well
/// clear of 100.64.0.0/10, the pre-seen clients).
const NEW_BASE: [u8; 4] = [11, 0, 0, 0];

/// The timing wrapper, loaded, with handles on its maps.
struct Wrapper {
    ebpf: Ebpf,
    cfg: Array<MapData, WrapConfig>,
    seq: PerCpuArray<MapData, u64>,
    jump: ProgramArray<MapData>,
    template: Vec<u8>,
    /// Every run as if received on this interface (of the calling thread's
    /// namespace): the tunnel modes' FIB lookup starts from it.
    ifindex: u32,
}

impl Wrapper {
    fn load(template: Vec<u8>, ifindex: u32) -> Result<Self, String> {
        if template.len() != WRAP_FRAME_LEN {
            return Err(format!(
                "wrapper: template of {} bytes, not {WRAP_FRAME_LEN}",
                template.len()
            ));
        }
        let mut ebpf = Ebpf::load(WRAP).map_err(err("load the timing wrapper"))?;
        let prog: &mut Xdp = ebpf
            .program_mut(program_names::WRAP)
            .ok_or("the wrapper object has no program xdp_wrap")?
            .try_into()
            .map_err(err("the wrapper's program"))?;
        prog.load().map_err(err("load the wrapper's program"))?;
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| format!("the wrapper has no map {name}"))
        };
        let cfg = Array::try_from(take(&mut ebpf, map_names::WRAP_CFG)?)
            .map_err(err("the wrapper's config map"))?;
        let seq = PerCpuArray::try_from(take(&mut ebpf, map_names::WRAP_SEQ)?)
            .map_err(err("the wrapper's sequence map"))?;
        let jump = ProgramArray::try_from(take(&mut ebpf, map_names::WRAP_JUMP)?)
            .map_err(err("the wrapper's program array"))?;
        Ok(Self {
            ebpf,
            cfg,
            seq,
            jump,
            template,
            ifindex,
        })
    }

    /// The program the wrapper tail-calls from now on.
    fn target(&mut self, fd: &ProgramFd) -> Result<(), String> {
        self.jump
            .set(0, fd, 0)
            .map_err(err("put the program under test in the program array"))
    }

    fn mode(&mut self, mode: u32, base: [u8; 4], clients: u32) -> Result<(), String> {
        let mut frame = [0u64; WRAP_FRAME_LEN / 8];
        for (w, c) in frame.iter_mut().zip(self.template.chunks_exact(8)) {
            *w = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
        }
        let cfg = WrapConfig {
            frame,
            mode,
            clients: clients.max(1),
            client_base: base,
            _pad: 0,
        };
        self.cfg
            .set(0, cfg, 0)
            .map_err(err("configure the wrapper"))
    }

    /// Sets every CPU's next new client to `client_base + 0`.
    fn reset_seq(&mut self) -> Result<(), String> {
        let cpus = nr_cpus().map_err(|(_, e)| format!("number of CPUs: {e}"))?;
        let zeros = PerCpuValues::try_from(vec![0u64; cpus]).map_err(err("per-CPU zeros"))?;
        self.seq
            .set(0, zeros, 0)
            .map_err(err("reset the wrapper's sequence"))
    }

    /// Every CPU's next new client, to put back with `set_seq`.
    fn seq_values(&self) -> Result<PerCpuValues<u64>, String> {
        self.seq
            .get(&0, 0)
            .map_err(err("read the wrapper's sequence"))
    }

    fn set_seq(&mut self, values: PerCpuValues<u64>) -> Result<(), String> {
        self.seq
            .set(0, values, 0)
            .map_err(err("restore the wrapper's sequence"))
    }

    /// New clients the wrapper has handed out since the last reset.
    fn seq_sum(&self) -> Result<u64, String> {
        Ok(self
            .seq
            .get(&0, 0)
            .map_err(err("read the wrapper's sequence"))?
            .iter()
            .sum())
    }

    /// One BPF_PROG_TEST_RUN of the wrapper (and through it the target)
    /// with `repeat` iterations: the last action and the mean ns.
    fn run(&mut self, repeat: u32) -> Result<(u32, f64), String> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(program_names::WRAP)
            .and_then(|p| p.try_into().ok())
            .expect("checked at load");
        // struct xdp_md: data, data_end (the frame's length), data_meta,
        // ingress_ifindex, rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, WRAP_FRAME_LEN as u32, 0, self.ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&self.template);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        let res = prog
            .test_run(opts)
            .map_err(err("BPF_PROG_TEST_RUN the wrapper"))?;
        Ok((res.return_value, res.duration.as_nanos() as f64))
    }
}

#[derive(Clone, Copy)]
struct Knobs {
    repeat: u32,
    warm: u32,
    rounds: usize,
    /// Clients of the big pre-filled table, and its capacity.
    big: u32,
    big_capacity: u32,
    /// Capacity of the new-client rounds' tables.
    new_capacity: u32,
}

impl Knobs {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                repeat: 20_000,
                warm: 1_000,
                rounds: 2,
                big: 50_000,
                big_capacity: 1 << 16,
                new_capacity: 32_768,
            }
        } else {
            Self {
                repeat: 1_000_000,
                warm: 10_000,
                // Enough rounds that the round-by-round medians hold on a
                // shared machine (single rounds vary by a third).
                rounds: 9,
                big: 1_000_000,
                big_capacity: 1 << 21,
                // Room for the warm-up and a timed run and the LRU's
                // per-CPU free lists, so that the empty rows never evict.
                new_capacity: 1_310_720,
            }
        }
    }
}

/// One row: its runs and the floors' runs just before each.
#[derive(Default)]
struct Row {
    key: &'static str,
    path: String,
    program: &'static str,
    action: &'static str,
    /// The wrapper's mode (`mode_name`), or "none" for a program run
    /// directly.
    mode: &'static str,
    runs: Vec<f64>,
    /// The floor forwarder's, behind the wrapper in the row's own mode.
    floor: Vec<f64>,
    /// The encapsulating floor's, in the row's own mode too.
    floor_encap: Vec<f64>,
    /// The floor forwarder's behind a same-client wrapper: the reference
    /// that charges the wrapper's extra work in the row's mode to the row.
    floor_same: Vec<f64>,
    /// What the counters confirmed, per round (the last kept).
    checked: String,
    /// Per round facts (entries before/after ...), for the JSON.
    facts: Vec<Value>,
}

impl Row {
    fn ns(&self) -> f64 {
        median(&mut self.runs.clone())
    }

    /// Median of the round-by-round ratios to the floor forwarder (in the
    /// row's mode).
    fn ratio(&self) -> f64 {
        ratio_to(&self.runs, &self.floor)
    }

    /// The same to the floor forwarder behind a same-client wrapper.
    fn ratio_same(&self) -> f64 {
        ratio_to(&self.runs, &self.floor_same)
    }

    fn push(&mut self, p: Paired) {
        self.floor.push(p.fwd);
        self.floor_encap.push(p.encap);
        self.floor_same.push(p.fwd_same);
        self.runs.push(p.ns);
    }

    /// The same to the encapsulating floor.
    fn ratio_encap(&self) -> f64 {
        ratio_to(&self.runs, &self.floor_encap)
    }
}

fn ratio_to(runs: &[f64], floor: &[f64]) -> f64 {
    let mut r: Vec<f64> = runs.iter().zip(floor).map(|(s, f)| s / f).collect();
    median(&mut r)
}

/// What the wrapper does in a row: `wrap_mode`, first client, clients.
type Mode = (u32, [u8; 4], u32);

const SAME: Mode = (wrap_mode::SAME, [0; 4], 1);

fn mode_name(mode: u32) -> &'static str {
    match mode {
        wrap_mode::SAME => "same",
        wrap_mode::RANDOM => "random",
        wrap_mode::NEW => "new",
        _ => "?",
    }
}

/// The wrapper → XDP_PASS row of a wrapper mode.
fn pass_key(mode: &str) -> Option<&'static str> {
    match mode {
        "same" => Some("wrap_pass"),
        "random" => Some("wrap_pass_random"),
        "new" => Some("wrap_pass_new"),
        _ => None,
    }
}

/// The rows, in report order, keyed.
#[derive(Default)]
struct Rows(BTreeMap<&'static str, Row>, Vec<&'static str>);

impl Rows {
    fn row(
        &mut self,
        key: &'static str,
        path: &str,
        program: &'static str,
        expect: u32,
        mode: &'static str,
    ) -> &mut Row {
        if !self.0.contains_key(key) {
            self.1.push(key);
        }
        self.0.entry(key).or_insert_with(|| Row {
            key,
            path: path.into(),
            program,
            action: action_name(expect),
            mode,
            ..Default::default()
        })
    }

    fn get(&self, key: &str) -> Result<&Row, String> {
        self.0.get(key).ok_or_else(|| format!("no row {key}"))
    }

    fn ordered(&self) -> impl Iterator<Item = &Row> {
        self.1.iter().map(|k| &self.0[k])
    }
}

fn action_name(a: u32) -> &'static str {
    match a {
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        _ => "?",
    }
}

/// The programs, loaded.
struct Subjects {
    pass: RefProgram,
    fwd: RefProgram,
    encap: RefProgram,
}

fn check(what: &str, ret: u32, expect: u32) -> Result<(), String> {
    if ret == expect {
        Ok(())
    } else if ret == XDP_ABORTED {
        Err(format!(
            "{what}: XDP_ABORTED (the wrapper could not restore the frame or tail-call), expected {expect}"
        ))
    } else {
        Err(format!(
            "{what}: returned {ret}, expected {expect}: not the path to measure"
        ))
    }
}

/// The two floors behind the wrapper in `mode`: (floor-fwd ns,
/// floor-encap ns). In the new-client mode the wrapper's sequence is put
/// back afterwards, so that the row timed next gets the clients it would
/// have without the floors' runs (and its count of clients handed out
/// stays its own).
fn floors(k: &Knobs, w: &mut Wrapper, s: &Subjects, mode: Mode) -> Result<(f64, f64), String> {
    let seq = if mode.0 == wrap_mode::NEW {
        Some(w.seq_values()?)
    } else {
        None
    };
    w.mode(mode.0, mode.1, mode.2)?;
    w.target(s.fwd.fd().map_err(err("floor-fwd"))?)?;
    let (ret, fwd) = w.run(k.repeat)?;
    check("floor-fwd behind the wrapper", ret, XDP_TX)?;
    w.target(s.encap.fd().map_err(err("floor-encap"))?)?;
    let (ret, encap) = w.run(k.repeat)?;
    check("floor-encap behind the wrapper", ret, XDP_TX)?;
    if let Some(seq) = seq {
        w.set_seq(seq)?;
    }
    Ok((fwd, encap))
}

/// One round's timings of a row and of its floors.
#[derive(Clone, Copy)]
struct Paired {
    /// The floors behind the wrapper in the row's mode.
    fwd: f64,
    encap: f64,
    /// The floor forwarder behind a same-client wrapper.
    fwd_same: f64,
    ns: f64,
}

/// Times the floor forwarder behind a same-client wrapper, then (unless
/// the row is same-client itself) both floors behind the wrapper in the
/// row's mode, then the row's target in that mode: the floors of a ratio
/// run just before the row, in the same wrapper mode.
#[expect(
    clippy::too_many_arguments,
    reason = "the rig (knobs, wrapper, floors) and the row's own settings"
)]
fn paired(
    k: &Knobs,
    w: &mut Wrapper,
    s: &Subjects,
    what: &str,
    target: &ProgramFd,
    mode: Mode,
    expect: u32,
    warm: bool,
) -> Result<Paired, String> {
    let (same_fwd, same_encap) = floors(k, w, s, SAME)?;
    let (fwd, encap) = if mode.0 == wrap_mode::SAME {
        (same_fwd, same_encap)
    } else {
        floors(k, w, s, mode)?
    };
    w.target(target)?;
    w.mode(mode.0, mode.1, mode.2)?;
    if warm {
        check(what, w.run(k.warm)?.0, expect)?;
    }
    let (ret, ns) = w.run(k.repeat)?;
    check(what, ret, expect)?;
    Ok(Paired {
        fwd,
        encap,
        fwd_same: same_fwd,
        ns,
    })
}

fn entries(lb: &Lb) -> Result<u64, String> {
    let reader = lb.dp.table_reader().map_err(err("a table reader"))?;
    let mut n = 0u64;
    reader
        .affinity_batches(|k: &[AffinityKey], _: &[AffinityValue]| {
            n += k.len() as u64;
            std::ops::ControlFlow::Continue(())
        })
        .map_err(err("count the affinity table"))?;
    Ok(n)
}

/// `memlock` of the affinity map's fdinfo: the kernel memory it holds.
fn memlock(lb: &Lb) -> Result<u64, String> {
    let fd = lb.dp.affinity_fd().as_raw_fd();
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .map_err(err("read the affinity map's fdinfo"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no memlock in the affinity map's fdinfo: {text}"))
}

/// stickylb with the VIP in forwarding `mode` (the tunnel settings of
/// `fibnet`, whose namespace the measuring thread is in).
fn mode_lb(capacity: u32, macs: &[[u8; 6]], mode: ForwardingMode) -> Result<Lb, String> {
    let mut lb = Lb::load(capacity, macs, &[spec()])?;
    lb.set_forwarding(&spec(), mode)?;
    lb.dp
        .set_tunnel(crate::fibnet::settings())
        .map_err(err("write the tunnel settings"))?;
    Ok(lb)
}

fn spec() -> VipSpec {
    VipSpec {
        key: VipKey::new(VIP, VIP_PORT, proto::UDP),
        id: 0,
        timeout_ns: DEFAULT_AFFINITY_TIMEOUT_NS,
    }
}

/// Fills `lb` with `n` new clients from `base` through the wrapper (the
/// program pins each as it would any client), checked by its counters and
/// the table's entry count.
fn fill(w: &mut Wrapper, lb: &Lb, base: [u8; 4], n: u32) -> Result<(), String> {
    let fd = lb.dp.program_fd().map_err(err("stickylb's fd"))?;
    w.target(fd)?;
    w.mode(wrap_mode::NEW, base, 1)?;
    w.reset_seq()?;
    let before = entries(lb)?;
    let s0 = lb.stats(0)?;
    check("fill", w.run(n)?.0, XDP_TX)?;
    let d = lb.stats(0)?.since(&s0);
    let after = entries(lb)?;
    if d.new_clients != u64::from(n)
        || after - before != u64::from(n)
        || w.seq_sum()? != u64::from(n)
    {
        return Err(format!(
            "fill of {n}: {} new clients, table {before} → {after} entries",
            d.new_clients
        ));
    }
    Ok(())
}

/// Runs `n` more new clients (continuing the sequence) through stickylb,
/// untimed, in chunks (one BPF_PROG_TEST_RUN each).
fn push_new(w: &mut Wrapper, lb: &Lb, n: u64) -> Result<(), String> {
    let fd = lb.dp.program_fd().map_err(err("stickylb's fd"))?;
    w.target(fd)?;
    w.mode(wrap_mode::NEW, NEW_BASE, 1)?;
    let s0 = lb.stats(0)?;
    let mut left = n;
    while left > 0 {
        let chunk = left.min(1 << 20) as u32;
        check("new clients (untimed)", w.run(chunk)?.0, XDP_TX)?;
        left -= u64::from(chunk);
    }
    let d = lb.stats(0)?.since(&s0);
    if d.new_clients != n {
        return Err(format!("{n} new clients pushed, {} counted", d.new_clients));
    }
    Ok(())
}

struct Measured {
    rows: Rows,
    info: serde_json::Map<String, Value>,
}

fn measure(k: &Knobs) -> Result<Measured, String> {
    let template = udp64(ROUTER_MAC, LB_MAC, client_addr(0), VIP, VIP_PORT);
    // Every run from an interface of a namespace with routes to the
    // backends (the tunnel modes' FIB lookup needs one; the others ignore
    // it): the measuring thread moves there for good.
    let net = FibNet::new()?;
    crate::netns::enter_path(&net.path());
    let mut w = Wrapper::load(template.clone(), net.ingress)?;
    let mut s = Subjects {
        pass: RefProgram::load(Reference::FloorPass).map_err(err("floor-pass"))?,
        fwd: RefProgram::load(Reference::FloorFwd).map_err(err("floor-fwd"))?,
        encap: RefProgram::load(Reference::FloorEncap).map_err(err("floor-encap"))?,
    };
    let macs: Vec<[u8; 6]> = (0..BACKENDS).map(backend_mac).collect();
    let mut info = serde_json::Map::new();

    progress("wrap: stickylb with 1k clients, and with the big table");
    let small = Lb::load(1 << 16, &macs, &[spec()])?;
    fill(&mut w, &small, client_addr(0), 1_000)?;
    // The same with SLB_VIP_INDEX kept empty: what the index saves, in
    // the same rounds.
    let mut plain = Lb::load(1 << 16, &macs, &[spec()])?;
    plain
        .dp
        .disable_vip_index()
        .map_err(err("disable the VIP index"))?;
    fill(&mut w, &plain, client_addr(0), 1_000)?;
    let big = Lb::load(k.big_capacity, &macs, &[spec()])?;
    let t = Instant::now();
    fill(&mut w, &big, client_addr(0), k.big)?;
    info.insert("big_fill_seconds".into(), json!(t.elapsed().as_secs_f64()));
    let mem = memlock(&big)?;
    info.insert(
        "memory".into(),
        json!({
            "affinity_capacity": k.big_capacity,
            "memlock_bytes": mem,
            "bytes_per_client": mem as f64 / f64::from(k.big_capacity),
            "key_plus_value_bytes": size_of::<AffinityKey>() + size_of::<AffinityValue>(),
        }),
    );

    // The tunnel modes: the same VIP in each mode, 1k clients.
    let ipip = mode_lb(1 << 16, &macs, ForwardingMode::Ipip)?;
    fill(&mut w, &ipip, client_addr(0), 1_000)?;
    let gue = mode_lb(1 << 16, &macs, ForwardingMode::Gue)?;
    fill(&mut w, &gue, client_addr(0), 1_000)?;

    let mut rows = Rows::default();
    for round in 0..k.rounds {
        progress(format!("wrap: round {} of {}", round + 1, k.rounds));
        // Without the wrapper: what the wrapper adds.
        {
            let (floor, encap) = floors(k, &mut w, &s, SAME)?;
            let (ret, d) = s
                .pass
                .test_run_repeat(&template, k.repeat)
                .map_err(err("floor-pass"))?;
            check("floor-pass alone", ret, XDP_PASS)?;
            let r = rows.row(
                "pass_direct",
                "XDP_PASS program, run directly (no wrapper)",
                "floor-pass",
                XDP_PASS,
                "none",
            );
            r.push(Paired {
                fwd: floor,
                encap,
                fwd_same: floor,
                ns: d.as_nanos() as f64,
            });
            r.checked = "return code".into();
        }
        // The wrapper's own cost in each of its modes (the random one's
        // does not depend on the number of clients: one prandom and one
        // modulo), and the floors themselves.
        for (key, path, name, expect, mode) in [
            (
                "wrap_pass",
                "wrapper → XDP_PASS program (the wrapper's own cost), same client",
                "floor-pass",
                XDP_PASS,
                SAME,
            ),
            (
                "wrap_pass_random",
                "wrapper → XDP_PASS program (the wrapper's own cost), a random one of 1k clients",
                "floor-pass",
                XDP_PASS,
                (wrap_mode::RANDOM, client_addr(0), 1_000),
            ),
            (
                "wrap_pass_new",
                "wrapper → XDP_PASS program (the wrapper's own cost), a new client every packet",
                "floor-pass",
                XDP_PASS,
                (wrap_mode::NEW, NEW_BASE, 1),
            ),
            (
                "wrap_fwd",
                "floor forwarder (Eth+IPv4, swap MACs)",
                "floor-fwd",
                XDP_TX,
                SAME,
            ),
            (
                "wrap_encap",
                "floor encapsulating forwarder (adjust_head, outer IPv4 + checksum, swap MACs)",
                "floor-encap",
                XDP_TX,
                SAME,
            ),
        ] {
            let prog = match name {
                "floor-pass" => &s.pass,
                "floor-fwd" => &s.fwd,
                _ => &s.encap,
            };
            let fd = prog.fd().map_err(err(name))?;
            let p = paired(k, &mut w, &s, path, fd, mode, expect, false)?;
            let r = rows.row(key, path, name, expect, mode_name(mode.0));
            r.push(p);
            r.checked = "return code".into();
        }

        for (key, program, path, lb, mode, clients) in [
            (
                "hit_same",
                "stickylb",
                "affinity hit, the same client every packet".to_string(),
                &small,
                wrap_mode::SAME,
                1,
            ),
            (
                "hit_1k",
                "stickylb",
                "affinity hit, a random one of 1k clients".to_string(),
                &small,
                wrap_mode::RANDOM,
                1_000,
            ),
            (
                "hit_same_no_index",
                "stickylb, no VIP index",
                "affinity hit, the same client every packet, VIP from the SLB_VIPS hash (index empty)"
                    .to_string(),
                &plain,
                wrap_mode::SAME,
                1,
            ),
            (
                "hit_1k_no_index",
                "stickylb, no VIP index",
                "affinity hit, a random one of 1k clients, VIP from the SLB_VIPS hash (index empty)"
                    .to_string(),
                &plain,
                wrap_mode::RANDOM,
                1_000,
            ),
            (
                "hit_big",
                "stickylb",
                format!("affinity hit, a random one of {} clients", big_label(k.big)),
                &big,
                wrap_mode::RANDOM,
                k.big,
            ),
            (
                "ipip_hit_same",
                "stickylb ipip",
                "ipip: affinity hit, the same client every packet".to_string(),
                &ipip,
                wrap_mode::SAME,
                1,
            ),
            (
                "ipip_hit_1k",
                "stickylb ipip",
                "ipip: affinity hit, a random one of 1k clients".to_string(),
                &ipip,
                wrap_mode::RANDOM,
                1_000,
            ),
            (
                "gue_hit_same",
                "stickylb gue",
                "gue: affinity hit, the same client every packet".to_string(),
                &gue,
                wrap_mode::SAME,
                1,
            ),
            (
                "gue_hit_1k",
                "stickylb gue",
                "gue: affinity hit, a random one of 1k clients".to_string(),
                &gue,
                wrap_mode::RANDOM,
                1_000,
            ),
        ] {
            let fd = lb.dp.program_fd().map_err(err("stickylb's fd"))?;
            let s0 = lb.stats(0)?;
            let before = entries(lb)?;
            let p = paired(
                k,
                &mut w,
                &s,
                &path,
                fd,
                (mode, client_addr(0), clients),
                XDP_TX,
                true,
            )?;
            let d = lb.stats(0)?.since(&s0);
            let packets = u64::from(k.warm + k.repeat);
            let after = entries(lb)?;
            if d.affinity_hits != packets || d.packets != packets || after != before {
                return Err(format!(
                    "{path}: of {packets} packets {} forwarded, {} hits, {} new clients; \
                     table {before} → {after} entries",
                    d.packets, d.affinity_hits, d.new_clients
                ));
            }
            let r = rows.row(key, &path, program, XDP_TX, mode_name(mode));
            r.push(p);
            r.checked = format!("{} affinity hits, 0 new clients", count(packets));
        }

        new_client_round(k, &mut w, &s, &macs, &mut rows)?;
        for (mode, key, program, path) in [
            (
                ForwardingMode::Ipip,
                "ipip_new_fresh",
                "stickylb ipip",
                "ipip: new client every packet, fresh table",
            ),
            (
                ForwardingMode::Gue,
                "gue_new_fresh",
                "stickylb gue",
                "gue: new client every packet, fresh table",
            ),
        ] {
            let lb = mode_lb(k.new_capacity, &macs, mode)?;
            w.reset_seq()?;
            new_client_row(k, &mut w, &s, &lb, &mut rows, key, program, path, true)?;
        }
    }
    Ok(Measured { rows, info })
}

/// One round of the new-client rows, on a stickylb loaded for it (a fresh
/// LRU): see the module's comment for the sequence.
fn new_client_round(
    k: &Knobs,
    w: &mut Wrapper,
    s: &Subjects,
    macs: &[[u8; 6]],
    rows: &mut Rows,
) -> Result<(), String> {
    let mut lb = Lb::load(k.new_capacity, macs, &[spec()])?;
    w.reset_seq()?;
    let cap = u64::from(k.new_capacity);
    new_client_row(
        k,
        w,
        s,
        &lb,
        rows,
        "new_fresh",
        "stickylb",
        "new client every packet, fresh table (just created)",
        true,
    )?;
    // Fill to capacity, then the first evictions.
    let have = entries(&lb)?;
    push_new(w, &lb, cap - have)?;
    new_client_row(
        k,
        w,
        s,
        &lb,
        rows,
        "new_full_fresh",
        "stickylb",
        "new client every packet, table full (evicting), filled once",
        false,
    )?;
    push_new(w, &lb, cap)?;
    new_client_row(
        k,
        w,
        s,
        &lb,
        rows,
        "new_full_churned",
        "stickylb",
        "new client every packet, table full (evicting), churned (a whole capacity more evicted first)",
        false,
    )?;
    lb.dp
        .purge_affinity(|_, _| true)
        .map_err(err("empty the affinity table"))?;
    if entries(&lb)? != 0 {
        return Err("the affinity table is not empty after the purge".into());
    }
    new_client_row(
        k,
        w,
        s,
        &lb,
        rows,
        "new_churned",
        "stickylb",
        "new client every packet, churned table emptied (scattered free list)",
        true,
    )
}

/// A new-client row's run in this round; `grows`: the table has room, so
/// it must grow by one entry per packet (else it is full and must stay so).
#[expect(
    clippy::too_many_arguments,
    reason = "the rig (knobs, wrapper, floors) and the row's own settings"
)]
fn new_client_row(
    k: &Knobs,
    w: &mut Wrapper,
    s: &Subjects,
    lb: &Lb,
    rows: &mut Rows,
    key: &'static str,
    program: &'static str,
    path: &str,
    grows: bool,
) -> Result<(), String> {
    let cap = u64::from(k.new_capacity);
    let packets = u64::from(k.warm + k.repeat);
    let fd = lb.dp.program_fd().map_err(err("stickylb's fd"))?;
    let s0 = lb.stats(0)?;
    let before = entries(lb)?;
    let seq0 = w.seq_sum()?;
    let p = paired(
        k,
        w,
        s,
        path,
        fd,
        (wrap_mode::NEW, NEW_BASE, 1),
        XDP_TX,
        true,
    )?;
    let d = lb.stats(0)?.since(&s0);
    let after = entries(lb)?;
    let handed = w.seq_sum()? - seq0;
    // Full: the LRU evicts as it inserts; its per-CPU free lists may hold
    // a few elements back, never more than a percent here.
    let table_ok = if grows {
        after == before + packets
    } else {
        after <= cap && after + cap / 100 >= cap
    };
    if d.new_clients != packets || d.packets != packets || handed != packets || !table_ok {
        return Err(format!(
            "{path}: of {packets} packets {} forwarded, {} new clients, {} hits, \
             {handed} never-seen clients written; table {before} → {after} entries \
             (capacity {cap})",
            d.packets, d.new_clients, d.affinity_hits
        ));
    }
    let r = rows.row(key, path, program, XDP_TX, mode_name(wrap_mode::NEW));
    r.push(p);
    r.checked = if grows {
        format!(
            "{} new clients; table {} → {} entries (+1 per packet)",
            count(packets),
            count(before),
            count(after)
        )
    } else {
        format!(
            "{} new clients; table full: {} → {} entries of {}",
            count(packets),
            count(before),
            count(after),
            count(cap)
        )
    };
    r.facts
        .push(json!({"entries_before": before, "entries_after": after}));
    Ok(())
}

/// `n` with thousands separators.
pub(super) fn count(n: u64) -> String {
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

pub fn run(ctx: &Ctx) -> Result<Section, String> {
    let k = Knobs::new(ctx.quick);
    let (cpu, result) = on_last_cpu(move || measure(&k))?;
    let Measured { rows, mut info } = result?;
    let wrap_pass = rows.get("wrap_pass")?.ns();
    let wrap_pass_random = rows.get("wrap_pass_random")?.ns();
    let wrap_pass_new = rows.get("wrap_pass_new")?.ns();
    let direct_pass = rows.get("pass_direct")?.ns();

    let mut table = Table {
        title: format!(
            "ns per packet behind the wrapper (median of {} rounds); × a floor: median of the round-by-round ratios \
             to that floor behind the wrapper in the row's own mode",
            k.rounds
        ),
        headers: [
            "path",
            "program",
            "wrapper mode",
            "ns/packet",
            "× floor forwarder",
            "× floor-encap",
            "minus wrapper → XDP_PASS (same mode)",
            "× floor forwarder behind a same-client wrapper",
            "action; confirmed by counters",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    let mut json_rows = Vec::new();
    for r in rows.ordered() {
        let ns = r.ns();
        let ratio = r.ratio();
        let above = pass_key(r.mode)
            .map(|key| rows.get(key).map(|p| ns - p.ns()))
            .transpose()?;
        table.rows.push(vec![
            r.path.clone(),
            r.program.into(),
            r.mode.into(),
            plot::fmt_num(ns),
            format!("{ratio:.2}×"),
            format!("{:.2}×", r.ratio_encap()),
            above.map_or_else(|| "–".into(), |a| format!("{a:+.1}")),
            format!("{:.2}×", r.ratio_same()),
            format!("{}; {}", r.action, r.checked),
        ]);
        json_rows.push(json!({
            "key": r.key,
            "path": r.path,
            "program": r.program,
            "wrapper_mode": r.mode,
            "ns_per_packet": ns,
            "runs_ns": r.runs,
            "floor_forwarder_runs_ns": r.floor,
            "ratio_to_floor_forwarder": ratio,
            "floor_encap_runs_ns": r.floor_encap,
            "ratio_to_floor_encap": r.ratio_encap(),
            "floor_forwarder_same_client_runs_ns": r.floor_same,
            "ratio_to_floor_forwarder_same_client": r.ratio_same(),
            "minus_wrapper_pass_ns": above,
            "action": r.action,
            "confirmed": r.checked,
            "rounds": r.facts,
        }));
    }
    let mem = &info["memory"];
    let per_client = mem["bytes_per_client"].as_f64().unwrap_or(0.0);
    let mut mem_table = Table {
        title: "Kernel memory per remembered client".into(),
        headers: [
            "affinity capacity",
            "map memlock (fdinfo)",
            "bytes per client (memlock ÷ capacity)",
            "key + value",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    mem_table.rows.push(vec![
        count(mem["affinity_capacity"].as_u64().unwrap_or(0)),
        format!(
            "{:.1} MiB",
            mem["memlock_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64
        ),
        format!("{per_client:.1}"),
        format!("{} bytes", mem["key_plus_value_bytes"]),
    ]);

    let ratio = |key: &str| rows.get(key).map(Row::ratio);
    let bl = big_label(k.big);
    let mut headlines = vec![
        format!(
            "XDP cost behind the timing wrapper (repeat {}, every path, ×floor forwarder behind the wrapper in the \
             row's own mode, round by round): \
             affinity hit same client {:.2}×, random of 1k {:.2}×, random of {bl} {:.2}×; \
             new client fresh table {:.2}× (churned {:.2}×), table full evicting {:.2}× (churned {:.2}×); \
             the wrapper's own cost {} ns same client, {} ns random client, {} ns new client \
             (wrapper → XDP_PASS {} / {} / {} ns, XDP_PASS alone {} ns)",
            count(u64::from(k.repeat)),
            ratio("hit_same")?,
            ratio("hit_1k")?,
            ratio("hit_big")?,
            ratio("new_fresh")?,
            ratio("new_churned")?,
            ratio("new_full_fresh")?,
            ratio("new_full_churned")?,
            plot::fmt_num(wrap_pass - direct_pass),
            plot::fmt_num(wrap_pass_random - direct_pass),
            plot::fmt_num(wrap_pass_new - direct_pass),
            plot::fmt_num(wrap_pass),
            plot::fmt_num(wrap_pass_random),
            plot::fmt_num(wrap_pass_new),
            plot::fmt_num(direct_pass),
        ),
        format!(
            "XDP cost of the tunnel modes behind the timing wrapper (×floor-encap in the row's own mode, round by round): \
             ipip affinity hit same client {:.2}×, random of 1k {:.2}×, new client fresh table {:.2}×; \
             gue {:.2}×, {:.2}×, {:.2}×",
            rows.get("ipip_hit_same")?.ratio_encap(),
            rows.get("ipip_hit_1k")?.ratio_encap(),
            rows.get("ipip_new_fresh")?.ratio_encap(),
            rows.get("gue_hit_same")?.ratio_encap(),
            rows.get("gue_hit_1k")?.ratio_encap(),
            rows.get("gue_new_fresh")?.ratio_encap(),
        ),
        format!(
            "Kernel memory per remembered client: {per_client:.1} bytes (the affinity map's memlock ÷ its capacity of {})",
            count(mem["affinity_capacity"].as_u64().unwrap_or(0))
        ),
    ];
    // Round by round, as every ratio here: a burst of other load slows
    // both sides of a pair alike.
    let with_without = |with: &str, without: &str| -> Result<(f64, f64, f64), String> {
        let (a, b) = (rows.get(with)?, rows.get(without)?);
        Ok((a.ns(), b.ns(), ratio_to(&a.runs, &b.runs)))
    };
    let (same, same_plain, same_ratio) = with_without("hit_same", "hit_same_no_index")?;
    let (rand, rand_plain, rand_ratio) = with_without("hit_1k", "hit_1k_no_index")?;
    headlines.push(format!(
        "The VIP index (SLB_VIP_INDEX) against the same program with it empty (VIP from the SLB_VIPS hash), \
         median of the round-by-round ratios: affinity hit same client {} ns vs {} ns ({:.2}×), random of 1k \
         {} vs {} ns ({:.2}×)",
        plot::fmt_num(same),
        plot::fmt_num(same_plain),
        same_ratio,
        plot::fmt_num(rand),
        plot::fmt_num(rand_plain),
        rand_ratio,
    ));
    info.insert(
        "vip_index_gain".into(),
        json!({"hit_same_ratio": same_ratio, "hit_1k_ratio": rand_ratio}),
    );
    let bars: Vec<(String, f64)> = rows
        .ordered()
        .map(|r| (short_label(r.key, &bl), r.ns()))
        .collect();
    let plots = vec![Plot {
        file: "bench-xdp-wrapped.svg".into(),
        svg: plot::bars(
            &format!(
                "XDP cost per packet behind the timing wrapper, repeat {}",
                count(u64::from(k.repeat))
            ),
            "ns",
            &bars,
        ),
        caption: "Per-packet cost of every path, each program behind the same wrapper".into(),
    }];
    let method = format!(
        "BPF_PROG_TEST_RUN with `repeat` = {rep} on tests/bench-ebpf's `wrap`, a timing harness \
         of the project's own, which tail-calls the program under test (a `BPF_MAP_TYPE_PROG_ARRAY` \
         of one slot, set to stickylb's program or to a reference program, each loaded from its \
         own object: both are XDP programs loaded by aya with the same attach type and no \
         fragments, which is what the kernel requires of a tail call's target). With `repeat` \
         the kernel runs the program again on the buffer the previous iteration left, so every \
         iteration the wrapper puts the frame back: the head moved back with `bpf_xdp_adjust_head` \
         if the program moved it (an encapsulation), the 64-byte template copied over; then it \
         writes the client the row asks for into the IPv4 source, fixing the IPv4 and UDP \
         checksums: the template's own (*same client*), `base + prandom % N` for N clients already \
         in the table (*random one of N*), or `base + n`, n a per-CPU sequence (*new client*, \
         never seen). The wrapper's own work differs by mode (a random client adds a \
         `bpf_get_prandom_u32` and a modulo, a new client a per-CPU map lookup and increment; \
         the *wrapper → XDP_PASS* rows of each mode, minus the XDP_PASS program run directly, \
         are its cost), so every ratio is to a floor timed behind the wrapper **in the row's own \
         mode**: the wrapper's work is then the same on both sides and is not charged to the \
         program under test. The column *minus wrapper → XDP_PASS (same mode)* is each row's \
         cost above the wrapper → XDP_PASS row of its mode. The column *× floor forwarder behind \
         a same-client wrapper* keeps the ratio this section gave before the floors were timed \
         in each mode: for a random or new client it charges the wrapper's extra work in that \
         mode to the row (for a same-client row the two columns are the same). stickylb: the real \
         object through `Dataplane` (no pins), one UDP VIP with {BACKENDS} backends, DSR; the \
         tables are filled through the wrapper itself (the program pins every client as it \
         would any), 1k clients in a table of 65,536, {bl} in a table of {bigcap}; the tunnel \
         modes (`ipip`, `gue`) each on a stickylb of their own, the same VIP switched to that \
         mode; *no VIP index*: a stickylb of its own with `SLB_VIP_INDEX` kept empty \
         (`Dataplane::disable_vip_index`), so that the program finds the VIP in the `SLB_VIPS` \
         hash as before the index existed, 1k clients too: what the index saves, in the same \
         rounds. Every run is given an ingress interface (`struct xdp_md`), a veth in a namespace \
         of the bench's own with forwarding on, a route to the backends' subnet and a permanent \
         neighbour for its gateway (`tests/src/fibnet.rs`), because the tunnel modes look the \
         next hop up with `bpf_fib_lookup`; the other programs ignore it. 64-byte UDP frames; \
         JIT on; the measuring thread pinned to CPU {cpu}.\n\n\
         {rounds} rounds; in each, every row runs once ({warm} iterations of warm-up, then the \
         timed run), just after the floor forwarder behind a same-client wrapper and then the \
         floor forwarder and the encapsulating floor behind the wrapper in the row's mode (a \
         same-client row: the one pair of floors), and each of its ratios is the median of the \
         round-by-round ratios, so that a burst of other load on this shared \
         machine slows both sides of a ratio alike. The floors' runs in the new-client mode put \
         the wrapper's per-CPU sequence back as they found it, so that the row timed next gets \
         the same never-seen clients as without them. Every timed run's return code is checked \
         (the wrapper returns XDP_ABORTED if it cannot restore the frame or tail-call), and \
         stickylb's VIP counters must count every packet of a row on its path (hits or new \
         clients, nothing else); a hit must leave the table's entry count as it was, and a new \
         client in a table with room must add exactly one entry per packet (counted by a walk of \
         the table before and after). *New client* rows: each round loads a fresh stickylb with \
         an affinity capacity of {newcap} and takes it through one fixed sequence, because the \
         LRU's free-list state moves the cost: *fresh table* (just created: its preallocated \
         elements handed out in order); filled to capacity (untimed); *table full, filled once* \
         (every insert evicts); a whole capacity more of new clients (untimed); *table full, \
         churned*; every entry deleted (untimed; as the daemon's purge of idle clients would); \
         *churned table emptied* (room again, but the free list scattered over memory); the \
         tunnel modes' new-client row is the fresh table's, on a stickylb loaded for it each \
         round. The \
         random hits in the {bl} table refresh each entry's last-seen time (at most once a \
         second per client: nearly every packet here), as with that many clients each sending \
         less than once a second.\n\n\
         *Kernel memory per remembered client*: `memlock` of the affinity map's \
         /proc/self/fdinfo entry (the kernel's own account of the map: preallocated elements, \
         buckets, the LRU's per-CPU lists) ÷ its capacity.",
        rep = count(u64::from(k.repeat)),
        bigcap = count(u64::from(k.big_capacity)),
        newcap = count(u64::from(k.new_capacity)),
        rounds = k.rounds,
        warm = count(u64::from(k.warm)),
    );
    Ok(Section {
        title: "Per-packet cost of every path, behind a timing wrapper".into(),
        method,
        tables: vec![table, mem_table],
        plots,
        json: json!({
            "repeat": k.repeat,
            "warm": k.warm,
            "rounds": k.rounds,
            "big_table_clients": k.big,
            "big_capacity": k.big_capacity,
            "new_client_capacity": k.new_capacity,
            "cpu": cpu,
            "rows": json_rows,
            "info": Value::Object(info),
        }),
        headlines,
    })
}

fn short_label(key: &str, big: &str) -> String {
    match key {
        "pass_direct" => "XDP_PASS, no wrapper".into(),
        "wrap_pass" => "wrapper → XDP_PASS".into(),
        "wrap_pass_random" => "wrapper (random) → XDP_PASS".into(),
        "wrap_pass_new" => "wrapper (new) → XDP_PASS".into(),
        "wrap_fwd" => "floor forwarder".into(),
        "wrap_encap" => "floor-encap".into(),
        "hit_same" => "hit, same client".into(),
        "hit_1k" => "hit, random of 1k".into(),
        "hit_same_no_index" => "hit, same client, no VIP index".into(),
        "hit_1k_no_index" => "hit, random of 1k, no VIP index".into(),
        "hit_big" => format!("hit, random of {big}"),
        "new_fresh" => "new client, fresh table".into(),
        "new_full_fresh" => "new client, full (filled once)".into(),
        "new_full_churned" => "new client, full (churned)".into(),
        "new_churned" => "new client, churned, emptied".into(),
        "ipip_hit_same" => "ipip: hit, same client".into(),
        "ipip_hit_1k" => "ipip: hit, random of 1k".into(),
        "ipip_new_fresh" => "ipip: new client, fresh".into(),
        "gue_hit_same" => "gue: hit, same client".into(),
        "gue_hit_1k" => "gue: hit, random of 1k".into(),
        "gue_new_fresh" => "gue: new client, fresh".into(),
        other => other.into(),
    }
}
