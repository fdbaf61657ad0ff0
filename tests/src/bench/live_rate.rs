//! Live forwarding rate on veth: frames generated in the kernel (BPF_PROG_TEST_RUN
//! in live-frames mode), forwarded by the XDP program under test with XDP_TX,
//! counted and dropped by a sink XDP program. stickylb and the floor forwarder
//! (tests/bench-ebpf's `floor-fwd`) run on the same wire, one after the other.
//!
//! ```text
//!   ns <id>-gen                                 ns <id>-lb
//!   g0 (sink XDP, driver) <------ veth ------>  l0 (program under test, driver)
//!    ^ live frames leave here (traffic_gen)      XDP_TX: back out of l0
//! ```
//!
//! XDP_TX transmits a frame out of the interface it arrived on, so the
//! frames the load balancer forwards come back out of l0 to g0: the backend
//! (the sink) necessarily sits on l0's peer. The sink attached there is also
//! the XDP program that the peer of an XDP_TX-ing veth needs in driver mode.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use bench_ebpf::{GenConfig, sink_counter};
use lb_common::{DEFAULT_AFFINITY_TIMEOUT_NS, VipKey, proto};
use lb_user::dataplane::AttachMode;
use serde_json::json;

use super::{
    Ctx, Plot, Section, Table,
    objects::{RefProgram, Reference},
    plot, progress,
    xdp_cost::{FRAME_LEN, Lb, VIP_PORT, VipSpec, client_addr, err, pin_to_last_cpu, udp64},
};
use crate::{
    LB_MAC, VIP,
    netns::{Netns, Reaper, wait_for},
};

/// MAC of the generator's (and sink's) interface g0.
const GEN_MAC: [u8; 6] = [0x02, 0x67, 0x65, 0x6e, 0x00, 0x01];
/// The backend's MAC: not g0's, since the program drops a frame it would
/// send back to the MAC it came from. XDP_TX on l0 delivers every frame to
/// g0 whatever its destination MAC, where the sink counts it.
const BACKEND_MAC: [u8; 6] = [0x02, 0x67, 0x65, 0x6e, 0x00, 0x02];
/// Frames per batch of the live-frames run (the kernel's default, NAPI's 64).
const BATCH: u32 = 64;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn mac_str(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

#[derive(Clone, Copy)]
struct Knobs {
    secs: f64,
    clients: &'static [u32],
    capacity: u32,
}

impl Knobs {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                secs: 1.0,
                clients: &[1_000, 100_000],
                capacity: 1 << 18,
            }
        } else {
            Self {
                secs: 3.0,
                clients: &[1_000, 100_000, 1_000_000],
                capacity: 1 << 21,
            }
        }
    }
}

/// The two namespaces and the sink. Field order is drop order: the sink is
/// detached, then the namespaces (and with them the veth pair) deleted.
struct Wire {
    sink: RefProgram,
    gen_ifindex: u32,
    lb: Netns,
    gen_ns: Netns,
    /// Removes the namespaces if this process dies without unwinding.
    _reaper: Reaper,
}

impl Wire {
    fn up() -> Result<Self, String> {
        let id = format!(
            "slbr{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let reaper = Reaper::spawn(&id, &[])?;
        let gen_ns = Netns::new(&format!("{id}-gen"))?;
        let lb = Netns::new(&format!("{id}-lb"))?;
        // No IPv6: nothing but the generated frames may reach the sink.
        for ns in [&gen_ns, &lb] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        gen_ns.ip(&[
            "link",
            "add",
            "g0",
            "address",
            &mac_str(GEN_MAC),
            "type",
            "veth",
            "peer",
            "name",
            "l0",
            "address",
            &mac_str(LB_MAC),
            "netns",
            &lb.name,
        ])?;
        gen_ns.ip(&["link", "set", "g0", "up"])?;
        lb.ip(&["link", "set", "l0", "up"])?;
        let (sink, gen_ifindex) = gen_ns.enter(|| -> Result<(RefProgram, u32), String> {
            let mut sink = RefProgram::load(Reference::Sink).map_err(err("load the sink"))?;
            sink.attach("g0", AttachMode::Driver)
                .map_err(err("attach the sink to g0 (driver mode)"))?;
            // SAFETY: a valid NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c"g0".as_ptr()) };
            if ifindex == 0 {
                return Err("g0 has no ifindex".into());
            }
            Ok((sink, ifindex))
        })?;
        Ok(Self {
            sink,
            gen_ifindex,
            lb,
            gen_ns,
            _reaper: reaper,
        })
    }

    fn sink_frames(&self) -> Result<u64, String> {
        self.sink
            .sink_counts()
            .map(|c| c[sink_counter::FRAMES as usize])
            .map_err(err("read the sink's counter"))
    }

    /// Runs the generator in live-frames mode on g0 (from a thread in the
    /// generator's namespace, pinned to one CPU): wall time of the call and
    /// the kernel's mean time per frame.
    fn generate(
        &self,
        gen_prog: RefProgram,
        frame: &[u8],
        frames: u32,
    ) -> Result<(RefProgram, Duration, Duration), String> {
        let ifindex = self.gen_ifindex;
        let frame = frame.to_vec();
        self.gen_ns.enter(move || {
            pin_to_last_cpu();
            let mut g = gen_prog;
            let t = Instant::now();
            let per_frame = g
                .run_live(&frame, ifindex, frames, BATCH)
                .map_err(err("BPF_PROG_TEST_RUN live frames on g0"))?;
            Ok((g, t.elapsed(), per_frame))
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Subject {
    Stickylb,
    Floor,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Self::Stickylb => "stickylb",
            Self::Floor => "floor forwarder",
        }
    }
}

/// The program under test, attached to l0 for as long as it lives.
enum Forwarder {
    Stickylb(Box<Lb>),
    /// Held only to keep it attached.
    Floor {
        _attached: RefProgram,
    },
}

fn attach(wire: &Wire, subject: Subject, k: &Knobs) -> Result<Forwarder, String> {
    match subject {
        Subject::Stickylb => {
            let vip = VipSpec {
                key: VipKey::new(VIP, VIP_PORT, proto::UDP),
                id: 0,
                timeout_ns: DEFAULT_AFFINITY_TIMEOUT_NS,
            };
            // One backend: the sink's interface, alive.
            let lb = Lb::load(k.capacity, &[BACKEND_MAC], &[vip])?;
            wire.lb.enter(move || {
                let mut lb = lb;
                lb.dp
                    .attach("l0", AttachMode::Driver)
                    .map_err(err("attach stickylb to l0 (driver mode)"))?;
                Ok(Forwarder::Stickylb(Box::new(lb)))
            })
        }
        Subject::Floor => wire.lb.enter(|| {
            let mut p = RefProgram::load(Reference::FloorFwd).map_err(err("load floor-fwd"))?;
            p.attach("l0", AttachMode::Driver)
                .map_err(err("attach floor-fwd to l0 (driver mode)"))?;
            Ok(Forwarder::Floor { _attached: p })
        }),
    }
}

/// One timed run.
struct Run {
    subject: Subject,
    clients: u32,
    generated: u64,
    /// stickylb's own count of frames it forwarded.
    forwarded: Option<u64>,
    /// stickylb: new clients and affinity hits during the timed run.
    new_clients: Option<u64>,
    hits: Option<u64>,
    received: u64,
    seconds: f64,
    kernel_ns_per_frame: f64,
}

impl Run {
    fn mpps(&self) -> f64 {
        self.received as f64 / self.seconds / 1e6
    }

    fn loss_pct(&self) -> f64 {
        if self.generated == 0 {
            return 0.0;
        }
        (self.generated.saturating_sub(self.received)) as f64 * 100.0 / self.generated as f64
    }
}

fn settle(wire: &Wire) -> Result<u64, String> {
    // Frames still in a veth ring are delivered within microseconds; wait
    // until the count stops moving.
    let mut last = wire.sink_frames()?;
    let mut stable = 0;
    wait_for(Duration::from_secs(2), || {
        thread::sleep(Duration::from_millis(20));
        let now = wire.sink_frames().unwrap_or(last);
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
        stable >= 3
    });
    Ok(last)
}

fn one_case(
    wire: &Wire,
    gen_prog: RefProgram,
    subject: Subject,
    clients: u32,
    k: &Knobs,
) -> Result<(RefProgram, Run), String> {
    progress(format!(
        "live: {} with {clients} clients ({} s)",
        subject.name(),
        k.secs
    ));
    let fwd = attach(wire, subject, k)?;
    let mut g = gen_prog;
    g.set_gen_config(GenConfig {
        dst_mac: LB_MAC,
        src_mac: GEN_MAC,
        client_base: client_addr(0),
        clients,
    })
    .map_err(err("configure the generator"))?;
    let frame = udp64(GEN_MAC, LB_MAC, client_addr(0), VIP, VIP_PORT);
    debug_assert_eq!(frame.len(), FRAME_LEN);

    // Warm-up: every client at least once, so that the timed run is the
    // steady state of a sticky table; then a short run in that state to
    // size the timed run.
    let (g2, _, _) = wire.generate(g, &frame, clients.max(100_000))?;
    let (g2, _, per_frame) = wire.generate(g2, &frame, 300_000)?;
    g = g2;
    let ns = (per_frame.as_nanos() as f64).max(1.0);
    let frames = (k.secs * 1e9 / ns).clamp(100_000.0, f64::from(u32::MAX / 2)) as u32;

    let s0 = settle(wire)?;
    let gen0 = g.gen_count().map_err(err("read the generator's count"))?;
    let v0 = match &fwd {
        Forwarder::Stickylb(lb) => Some(lb.stats(0)?),
        Forwarder::Floor { .. } => None,
    };
    let (g2, wall, per_frame) = wire.generate(g, &frame, frames)?;
    g = g2;
    let s1 = settle(wire)?;
    let gen1 = g.gen_count().map_err(err("read the generator's count"))?;
    let v1 = match &fwd {
        Forwarder::Stickylb(lb) => Some(lb.stats(0)?),
        Forwarder::Floor { .. } => None,
    };
    drop(fwd);
    let generated = gen1 - gen0;
    if generated != u64::from(frames) {
        return Err(format!(
            "the generator ran {generated} times for {frames} frames asked"
        ));
    }
    let d = v0.zip(v1).map(|(a, b)| {
        (
            b.packets - a.packets,
            b.new_clients - a.new_clients,
            b.affinity_hits - a.affinity_hits,
        )
    });
    Ok((
        g,
        Run {
            subject,
            clients,
            generated,
            forwarded: d.map(|d| d.0),
            new_clients: d.map(|d| d.1),
            hits: d.map(|d| d.2),
            received: s1 - s0,
            seconds: wall.as_secs_f64(),
            kernel_ns_per_frame: per_frame.as_nanos() as f64,
        },
    ))
}

fn measure(k: &Knobs) -> Result<Vec<Run>, String> {
    progress("live: building the veth pair and loading the sink");
    let wire = Wire::up()?;
    let mut g = RefProgram::load(Reference::Gen).map_err(err("load the generator"))?;
    let mut runs = Vec::new();
    for &n in k.clients {
        for subject in [Subject::Stickylb, Subject::Floor] {
            let (g2, run) = one_case(&wire, g, subject, n, k)?;
            g = g2;
            runs.push(run);
        }
    }
    Ok(runs)
}

fn clients_label(n: u32) -> String {
    if n >= 1_000_000 {
        format!("{}M", n / 1_000_000)
    } else {
        format!("{}k", n / 1_000)
    }
}

pub fn run(ctx: &Ctx) -> Result<Section, String> {
    let k = Knobs::new(ctx.quick);
    let runs = measure(&k)?;
    let get = |s: Subject, n: u32| {
        runs.iter()
            .find(|r| r.subject == s && r.clients == n)
            .ok_or_else(|| format!("no run of {} with {n} clients", s.name()))
    };

    let mut summary = Table {
        title: "Mpps received at the sink (64-byte frames)".into(),
        headers: [
            "clients",
            "stickylb Mpps",
            "floor forwarder Mpps",
            "stickylb ÷ floor",
            "stickylb's extra ns/packet",
            "stickylb loss",
            "floor loss",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    for &n in k.clients {
        let (s, f) = (get(Subject::Stickylb, n)?, get(Subject::Floor, n)?);
        summary.rows.push(vec![
            clients_label(n),
            format!("{:.2}", s.mpps()),
            format!("{:.2}", f.mpps()),
            format!("{:.2}×", s.mpps() / f.mpps()),
            format!("{:+.0}", 1e3 / s.mpps() - 1e3 / f.mpps()),
            format!("{:.2} %", s.loss_pct()),
            format!("{:.2} %", f.loss_pct()),
        ]);
    }
    let opt = |v: Option<u64>| v.map_or_else(|| "–".to_string(), |v| v.to_string());
    let mut detail = Table {
        title: "Every timed run".into(),
        headers: [
            "forwarder",
            "clients",
            "generated",
            "forwarded by stickylb",
            "new clients / affinity hits",
            "received at sink",
            "seconds",
            "Mpps",
            "loss",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    let mut json_runs = Vec::new();
    for r in &runs {
        detail.rows.push(vec![
            r.subject.name().into(),
            clients_label(r.clients),
            r.generated.to_string(),
            opt(r.forwarded),
            match (r.new_clients, r.hits) {
                (Some(n), Some(h)) => format!("{n} / {h}"),
                _ => "–".into(),
            },
            r.received.to_string(),
            format!("{:.2}", r.seconds),
            format!("{:.2}", r.mpps()),
            format!("{:.2} %", r.loss_pct()),
        ]);
        json_runs.push(json!({
            "forwarder": r.subject.name(),
            "clients": r.clients,
            "generated": r.generated,
            "forwarded_by_stickylb": r.forwarded,
            "new_clients": r.new_clients,
            "affinity_hits": r.hits,
            "received_at_sink": r.received,
            "seconds": r.seconds,
            "mpps_at_sink": r.mpps(),
            "loss_pct": r.loss_pct(),
            "kernel_ns_per_generated_frame": r.kernel_ns_per_frame,
        }));
    }

    let bars: Vec<(String, f64)> = runs
        .iter()
        .map(|r| {
            (
                format!("{}, {} clients", r.subject.name(), clients_label(r.clients)),
                r.mpps(),
            )
        })
        .collect();
    let plots = vec![Plot {
        file: "bench-live-rate.svg".into(),
        svg: plot::bars(
            "Live XDP_TX rate on veth, received at the sink",
            "Mpps",
            &bars,
        ),
        caption: "Mpps received at the sink, stickylb and the floor forwarder".into(),
    }];

    let mut headlines = Vec::new();
    if let Some(&n) = k.clients.last() {
        let (s, f) = (get(Subject::Stickylb, n)?, get(Subject::Floor, n)?);
        headlines.push(format!(
            "Live veth: stickylb forwards {:.2} Mpps from {} clients = {:.2}× the floor forwarder \
             ({:.2} Mpps) on the same wire; loss {:.2} % vs {:.2} %",
            s.mpps(),
            clients_label(n),
            s.mpps() / f.mpps(),
            f.mpps(),
            s.loss_pct(),
            f.loss_pct()
        ));
    }

    let method = format!(
        "Two network namespaces joined by one veth pair, g0 (generator side) and l0 (load \
         balancer side), IPv6 off so that nothing else crosses the wire. The program under test \
         is attached to l0 in driver mode: stickylb's real program loaded through `Dataplane` \
         (no pins, affinity capacity {cap}) with one UDP VIP and one alive backend on g0's side \
         (with a MAC of its own, not g0's: the program drops a frame it would send back to the MAC \
         it came from), its Maglev table built with `lb_common::maglev`; or the floor forwarder \
         (tests/bench-ebpf's `floor-fwd`: parse Ethernet + IPv4, swap MACs). Both answer with XDP_TX, \
         which sends a frame back out of the interface it came in on, so the forwarded frames \
         return to g0: the backend necessarily sits on l0's peer, and there a sink XDP program \
         (tests/bench-ebpf's `sink`, driver mode) counts every frame in a per-CPU array and drops it. It \
         is also the XDP program the peer of an XDP_TX-ing veth needs in driver mode.\n\n\
         Frames come from BPF_PROG_TEST_RUN in live-frames mode (aya \
         `TestRunAttrs::xdp_live_frames({BATCH})`, ingress interface g0): the kernel runs the \
         generator program (tests/bench-ebpf's `gen`) on each copy of a 64-byte UDP frame to the VIP and \
         really transmits it when it returns XDP_TX, out of g0 to l0. The generator writes the \
         MACs and a source address from a per-CPU counter modulo the number of clients \
         (1k / 100k{big} addresses from 100.64.0.0), fixing the IPv4 checksum. Each case first \
         sends every client at least once (warm-up) and 300k more frames (to size the timed \
         run), then one live-frames call of about {secs} s from a thread pinned to one CPU. \"Generated\" is the \
         call's frame count (checked against the generator's own counter), \"received\" the \
         sink's count, Mpps = received / wall time of the call, loss = generated − received.\n\n\
         On veth all of this runs in one CPU's softirq context: the generator, the program under \
         test and the sink share the CPU, so the rate is that of the three programs and two veth \
         hops together, and the difference between stickylb and the floor forwarder is the load \
         balancer's own extra cost. The wall time includes the kernel installing and removing \
         the XDP dispatcher around the call (two RCU grace periods, a few tens of ms, the same \
         for both forwarders), so the rates are slightly conservative.",
        cap = k.capacity,
        big = if k.clients.contains(&1_000_000) {
            " / 1M"
        } else {
            ""
        },
        secs = k.secs,
    );

    Ok(Section {
        title: "Live forwarding rate on veth".into(),
        method,
        tables: vec![summary, detail],
        plots,
        json: json!({
            "seconds_per_run": k.secs,
            "batch": BATCH,
            "frame_len": FRAME_LEN,
            "affinity_capacity": k.capacity,
            "runs": json_runs,
        }),
        headlines,
    })
}
